"""The scale table: which T5 sizes, as VAEs, fit on which TPU slice for phase 2 (issue #17).

  python bench/scale_table.py                       # every model, both batch shapes, 5 slices
  python bench/scale_table.py --models flan-t5-xxl --shapes ptb --workers 2
  python bench/scale_table.py --check_depth t5-small,ptb,v5e-8   # extrapolation vs full depth
  python bench/scale_table.py --models flan-t5-xxl --shapes ptb --slices v5e-16 --remat full

Each row is t5vae_jax.aot's compile of the real phase-2 train step (FSDP, bfloat16 compute,
float32 params and Adam state, dropout 0.1, padded batches) with libtpu's compile-only client.
The shapes are the published config.json values, written below (no download); each is written
to a temporary directory as config.json and read back as ``model.pretrained`` is.

Compiling a 48-layer T5 with its layers unrolled takes minutes per slice on a 2-core host, so
each row compiles the model at depth 1 and 2 (encoder and decoder layers alike) at its full
width and batch, and extrapolates every compiled quantity linearly to the real depth:
X(L) = X(1) + (L - 1) (X(2) - X(1)). Params and Adam state per device are also counted
exactly from the full-depth shapes (their sharding), and a row whose state alone exceeds the
chip's HBM is not compiled. ``--check_depth`` compiles one row at full depth to check the
extrapolation.

FLOPs: the compiler's count (extrapolated) next to the analytic matmul count (aot.py:
6 x weights x tokens on each side, plus attention); the floor is the larger of the two over
the chip's peak bf16 rate: a compute bound (no communication, no memory traffic), not a
prediction. tokens/s counts each sentence's tokens once (batch x length), as train.py's
train/tokens_per_sec.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu's default scoped VMEM limit (16 MiB) makes the compile of Yahoo's shape run for an hour
# on a small host (bench/RESULTS.md); every row of the table is compiled with it raised.
VMEM_FLAG = "--xla_tpu_scoped_vmem_limit_kib=32768"
if "xla_tpu_scoped_vmem_limit_kib" not in os.environ.get("LIBTPU_INIT_ARGS", ""):
  os.environ["LIBTPU_INIT_ARGS"] = (
      os.environ.get("LIBTPU_INIT_ARGS", "") + " " + VMEM_FLAG
  ).strip()

# config.json of each checkpoint (Hugging Face hub, the values that define the network).
MODELS = {
    "t5-small": dict(
        d_model=512, d_ff=2048, d_kv=64, num_heads=8, num_layers=6, feed_forward_proj="relu"
    ),
    "t5-base": dict(
        d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12, feed_forward_proj="relu"
    ),
    "t5-large": dict(
        d_model=1024, d_ff=4096, d_kv=64, num_heads=16, num_layers=24, feed_forward_proj="relu"
    ),
    "flan-t5-xl": dict(
        d_model=2048,
        d_ff=5120,
        d_kv=64,
        num_heads=32,
        num_layers=24,
        num_decoder_layers=24,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    ),
    "flan-t5-xxl": dict(
        d_model=4096,
        d_ff=10240,
        d_kv=64,
        num_heads=64,
        num_layers=24,
        num_decoder_layers=24,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    ),
    "t5-11b": dict(
        d_model=1024, d_ff=65536, d_kv=128, num_heads=128, num_layers=24, feed_forward_proj="relu"
    ),
}
COMMON = dict(
    model_type="t5",
    vocab_size=32128,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
# (global batch, padded length): PTB's and Yahoo's shapes.
SHAPES = {"ptb": (128, 64), "yahoo": (64, 256)}
# Slice names as Google Cloud sells them -> topologies (v4 and v5p names count TensorCores:
# two per chip, run as one megacore device).
SLICES = {
    "v5e-8": "v5e:2x4",
    "v5e-16": "v5e:4x4",
    "v4-32": "v4:2x2x4",
    "v4-64": "v4:2x4x4",
    "v5p-64": "v5p:2x4x4",
}
GIB = 2**30


@dataclasses.dataclass
class Row:
  model: str
  shape: str
  slice: str
  chips: int
  params_m: float
  fits: bool
  state_gib: float  # params + Adam state per device, exact
  total_gib: float  # extrapolated: arguments + outputs - aliased + temporaries + code
  temp_gib: float
  hbm_gib: float
  compiler_tflop: float  # per device per step
  analytic_tflop: float  # per device per step
  floor_ms: float
  tokens_per_s: float
  compile_s: float
  why: str = ""
  remat: str = "none"
  model_parallel: int = 1


def model_dir(name: str, root: pathlib.Path, depth: int | None = None) -> str:
  """A directory with ``name``'s config.json (at ``depth`` layers a side when given)."""
  values = dict(COMMON, **MODELS[name])
  if depth is not None:
    values.update(num_layers=depth, num_decoder_layers=depth)
  directory = root / f"{name}-{depth or 'full'}"
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(values))
  return str(directory)


def row_config(model_path: str, shape: str, remat: str = "none", model_parallel: int = 1):
  from configs import ptb

  config = ptb.get_config()
  batch, length = SHAPES[shape]
  config.model.pretrained = model_path
  config.batch_size = batch
  config.data.max_len = length
  config.data.bucket_lengths = (length,)
  config.fsdp = True
  config.pack_tokens = False  # padded: the batch shape as stated
  config.model.remat = remat
  config.model_parallel = model_parallel
  return config


def one_row(
    name: str,
    shape: str,
    slice_name: str,
    root: pathlib.Path,
    remat: str = "none",
    model_parallel: int = 1,
) -> Row:
  from t5vae_jax import aot
  from t5vae_jax import sharding
  from t5vae_jax import train_lib
  import jax

  topology = SLICES[slice_name]
  chip = aot.chip_of(topology)
  devices = aot.topology_devices(topology)
  batch, length = SHAPES[shape]
  start = time.perf_counter()
  # Exact state per device at full depth, from the shapes and their shardings.
  full = row_config(model_dir(name, root), shape, remat, model_parallel)
  model = aot.build_model(full, devices)
  params = aot.abstract_params(model)
  mesh = sharding.make_mesh(devices, model_parallel)
  tx = train_lib.make_optimizer(full, 2, params)
  shardings = train_lib.train_state_shardings(params, tx, mesh, True, full.sharding_rules)
  param_bytes = aot.bytes_per_device(aot.with_shardings(params, shardings.params))
  state_bytes = param_bytes + aot.bytes_per_device(
      aot.with_shardings(jax.eval_shape(tx.init, params), shardings.opt_state)
  )
  analytic = aot.analytic_train_flops(
      model.config, model.vae.latent_injection, batch, length
  ) / len(devices)
  depth = model.config.num_layers
  assert model.config.num_decoder_layers == depth
  row = Row(
      name,
      shape,
      slice_name,
      len(devices),
      aot.param_count(params) / 1e6,
      False,
      state_bytes / GIB,
      0.0,
      0.0,
      chip.hbm_bytes / GIB,
      0.0,
      analytic / 1e12,
      0.0,
      0.0,
      0.0,
      remat=remat,
      model_parallel=model_parallel,
  )
  # At the update, params, both Adam moments and the float32 gradients (sharded as the params)
  # are all live: a lower bound on what the step needs, known without compiling.
  if state_bytes + param_bytes > chip.hbm_bytes:
    row.why = (
        f"params + Adam state + gradients alone need "
        f"{(state_bytes + param_bytes) / GIB:.1f} GiB"
    )
    row.floor_ms = 1e3 * analytic / chip.peak_bf16_flops
    row.tokens_per_s = batch * length / (analytic / chip.peak_bf16_flops)
    row.compile_s = time.perf_counter() - start
    return row
  reports = []
  for d in (1, 2):
    config = row_config(model_dir(name, root, d), shape, remat, model_parallel)
    reports.append(aot.compile_train(config, 2, devices, chip, length))
  row.compile_s = time.perf_counter() - start
  r1, r2 = reports
  if not r2.fits and not r2.total_bytes:
    row.why = "the compiler refuses depth 2: " + r2.error
    return row

  def at_depth(field):
    a, b = getattr(r1, field), getattr(r2, field)
    return a + (depth - 1) * (b - a)

  total = at_depth("total_bytes")
  row.temp_gib = at_depth("temp_bytes") / GIB
  row.total_gib = total / GIB
  row.compiler_tflop = at_depth("compiler_flops") / 1e12
  flops = max(row.compiler_tflop, row.analytic_tflop) * 1e12
  row.floor_ms = 1e3 * flops / chip.peak_bf16_flops
  row.tokens_per_s = batch * length / (flops / chip.peak_bf16_flops)
  row.fits = total <= chip.hbm_bytes
  if not row.fits:
    row.why = f"needs {total / GIB:.1f} GiB per device"
  return row


def header() -> str:
  return (
      "| model | params (M) | batch x (src + tgt) | slice (chips) | fits | HBM per device "
      "(state + rest) of chip | TFLOP per device per step: compiler / analytic | floor "
      "| tokens/s at floor |\n|---|---|---|---|---|---|---|---|---|"
  )


def format_row(r: Row) -> str:
  batch, length = SHAPES[r.shape]
  fits = "yes" if r.fits else f"**no**: {r.why}"
  hbm = (
      f"{r.total_gib:.2f} ({r.state_gib:.2f} + {r.total_gib - r.state_gib:.2f}) of "
      f"{r.hbm_gib:.0f}"
      if r.total_gib
      else f"state {r.state_gib:.2f} of {r.hbm_gib:.0f}"
  )
  compiler = f"{r.compiler_tflop:.3g}" if r.compiler_tflop else "-"
  setup = "".join(
      [f", model_parallel={r.model_parallel}" if r.model_parallel > 1 else ""]
      + [f", remat={r.remat}" if r.remat != "none" else ""]
  )
  return (
      f"| {r.model} | {r.params_m:,.0f} | {batch} x ({length} + {length}) | {r.slice} "
      f"({r.chips}){setup} | {fits} | {hbm} | {compiler} / {r.analytic_tflop:.3g} | "
      f"{r.floor_ms:.3g} ms | {r.tokens_per_s:,.0f} |"
  )


def smallest_fits(rows) -> list[str]:
  order = list(SLICES)
  lines = []
  for name, shape in dict.fromkeys((r.model, r.shape) for r in rows):
    fitting = sorted(
        (r for r in rows if r.model == name and r.shape == shape and r.fits),
        key=lambda r: (r.chips * r.hbm_gib, order.index(r.slice)),
    )
    lines.append(
        f"- {name}, {shape}: " + (f"{fitting[0].slice}" if fitting else "none of those compiled")
    )
  return lines


def _worker(args):
  name, shape, slice_name, root, remat, model_parallel = args
  return one_row(name, shape, slice_name, pathlib.Path(root), remat, model_parallel)


def check_depth(spec: str, root: pathlib.Path) -> None:
  """Compiles one row at full depth and prints it next to the extrapolation."""
  from t5vae_jax import aot

  name, shape, slice_name = spec.split(",")
  row = one_row(name, shape, slice_name, root)
  topology = SLICES[slice_name]
  devices = aot.topology_devices(topology)
  config = row_config(model_dir(name, root), shape)
  report = aot.compile_train(config, 2, devices, aot.chip_of(topology), SHAPES[shape][1])
  print(
      f"{spec}: extrapolated total {row.total_gib:.3f} GiB, temporaries {row.temp_gib:.3f} "
      f"GiB, compiler {row.compiler_tflop:.4f} TFLOP per device ({row.compile_s:.0f} s); full "
      f"depth total {report.total_bytes / GIB:.3f} GiB, temporaries "
      f"{report.temp_bytes / GIB:.3f} GiB, compiler {report.compiler_flops / 1e12:.4f} TFLOP "
      f"({report.compile_s:.0f} s)",
      flush=True,
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--shapes", default=",".join(SHAPES))
  parser.add_argument("--slices", default=",".join(SLICES))
  parser.add_argument("--workers", type=int, default=2, help="compiles at once (processes)")
  parser.add_argument("--remat", default="none", help="config.model.remat of every row")
  parser.add_argument(
      "--model_parallel", type=int, default=1, help="config.model_parallel of every row"
  )
  parser.add_argument("--json", default=None, help="also write the rows here")
  parser.add_argument("--check_depth", default=None, help="model,shape,slice")
  args = parser.parse_args()
  root = pathlib.Path(tempfile.mkdtemp(prefix="t5vae_scale_"))
  if args.check_depth:
    check_depth(args.check_depth, root)
    return
  jobs = [
      (m, s, sl, str(root), args.remat, args.model_parallel)
      for m in args.models.split(",")
      for s in args.shapes.split(",")
      for sl in args.slices.split(",")
  ]
  start = time.perf_counter()
  print(header(), flush=True)
  rows = []
  with concurrent.futures.ProcessPoolExecutor(args.workers) as pool:
    for row in pool.map(_worker, jobs):
      rows.append(row)
      print(format_row(row), flush=True)
      if args.json:
        pathlib.Path(args.json).write_text(
            json.dumps([dataclasses.asdict(r) for r in rows], indent=1)
        )
  print("\nSmallest listed slice on which each fits (fewest chips x HBM):")
  print("\n".join(smallest_fits(rows)))
  print(f"\n{len(rows)} rows in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
  main()
