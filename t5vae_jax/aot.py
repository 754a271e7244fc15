"""Will it fit? The train step and eval.py's IW-NLL pass compiled ahead of time for a TPU slice.

  python -m t5vae_jax.aot --config configs/ptb.py --topology v5e:4x4
  python -m t5vae_jax.aot --config configs/ptb.py --topology v4:2x2x4 --phase 2 --lengths 64
  python -m t5vae_jax.aot --config configs/ptb.py --topology v4:2x4x4 --config.fsdp=True \\
      --config.model.pretrained=google/flan-t5-xl
  python -m t5vae_jax.aot --config configs/yahoo.py --topology v5e:2x4 --num_slices 2

Paying for a pod slice to learn that a model does not fit is the costly way. This command
builds, from the config alone, the very programs train.py and eval.py run (``train_lib``'s
sharded train step of the phase, with its optimizer, freezing and packing;
``evaluation.batch_statistics``, the IW-NLL pass) for the named TPU topology, and compiles
them with libtpu's compile-only client on this host: no TPU, no weights, no data. The model's
shape comes from ``model.t5`` or the ``config.json`` of ``model.pretrained`` (a local
directory, or a hub id of which only config.json is fetched); params, optimizer state and
batch are ``jax.ShapeDtypeStruct``s with the run's ``NamedSharding``s over a ``Mesh`` of the
topology's devices. XLA's TPU compiler then says, per device, what the program needs (it
refuses a program that exceeds the chip's HBM) and how many FLOPs it runs.

Printed per program (one compile per bucket length and phase): per device params, optimizer
state, batch, temporaries and the total against the chip's HBM; FLOPs per step (the
compiler's, and the analytic matmul count); the compute-bound floor (FLOPs / peak bf16: no
communication, no memory traffic, so real steps are slower) and the tokens/s at that floor.
Exit status 0 when everything fits, 1 when a program does not (the last lines name the
largest buffers), 2 for a user error (``error: <one line>``, as train.py).

Assumptions, each printed: v4 and v5p as a TPU VM runs them (megacore: one JAX device per
chip, holding the chip's whole HBM); a packed train step at its worst case (every position
of the bucket a real token, the largest capacity ``packing.capacity`` can pick);
``config.mesh_devices`` is ignored (the mesh spans the topology). Chip facts (HBM, peak bf16,
published specs) are in ``CHIPS``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import sys
import time
from typing import Optional, Sequence

from absl import flags

from t5vae_jax import cli
from t5vae_jax import errors
from t5vae_jax import runtime

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int  # per chip
  peak_bf16_flops: float  # per chip, per second
  megacore: bool = False  # two TensorCores run as one device (a TPU VM's default)


# Published specs.
CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12, megacore=True),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12, megacore=True),
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12),
}
_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")


class AotError(errors.UserError, ValueError):
  """The topology, the config or the model's config.json cannot be compiled for; one line."""


# --------------------------------------------------------------------------------------------
# Topology, model and abstract inputs
# --------------------------------------------------------------------------------------------
def chip_of(topology: str) -> Chip:
  match = _TOPOLOGY.match(topology)
  if not match:
    raise AotError(
        f"--topology={topology!r} is not <chip>:<bounds> with chip one of "
        f"{', '.join(CHIPS)} (e.g. v5e:4x4, v4:2x2x4, v5p:2x4x4)"
    )
  return CHIPS[match.group(1)]


def topology_devices(topology: str, num_slices: int = 1) -> list:
  """The compile-only TPU devices of ``num_slices`` slices of ``topology`` (one per chip)."""
  chip = chip_of(topology)
  if num_slices < 1:
    raise AotError(f"--num_slices={num_slices} must be at least 1")
  # Without these libtpu looks for the TPU VM's metadata and prints warnings about host bounds.
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # libtpu takes a machine-wide lock (/tmp/libtpu_lockfile) that a real TPU VM needs; the
  # compile-only client touches no TPU, so several processes (pytest -n, two commands) may load it.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    import libtpu  # noqa: F401
  except ImportError:
    raise AotError(
        'libtpu is not installed: pip install "jax[tpu]" (the compile-only TPU '
        "client runs on any Linux x86-64 host, no TPU needed)"
    ) from None
  from jax.experimental import topologies

  kwargs = {"chip_config_name": "megacore"} if chip.megacore else {}
  if num_slices > 1:
    kwargs["num_slices"] = num_slices
  try:
    return list(
        topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs).devices
    )
  except Exception as e:  # JaxRuntimeError INVALID_ARGUMENT: bounds the chip does not have
    raise AotError(f"--topology={topology}: libtpu refuses it ({errors.one_line(e)})") from None


def hub_config_dir(name: str):
  """The directory holding ``config.json`` of ``model.pretrained``: a local directory as is; a
  hub id's config.json alone fetched (or read from the Hugging Face cache offline)."""
  from etils import epath
  from t5vae_jax import hub
  from t5vae_jax import pretrained

  if not hub.is_hub_id(name):
    path = epath.Path(hub.local_path(name))
    if not (path / "config.json").exists():
      raise pretrained.CheckpointError(f"{name}: no config.json there ({path})")
    return path
  import huggingface_hub

  try:
    file = huggingface_hub.hf_hub_download(name, "config.json", etag_timeout=hub.HUB_TIMEOUT_S)
  except Exception as e:
    cached = huggingface_hub.try_to_load_from_cache(name, "config.json")
    if not isinstance(cached, str):
      raise pretrained._hub_error(name, e) from None
    file = cached
  return epath.Path(file).parent


def t5_config_of(config):
  """The T5 shape of the run: model.pretrained's config.json, else model.t5 (as build_setup)."""
  import dataclasses as dc
  from t5vae_jax import pretrained
  from t5vae_jax import t5 as t5_lib

  if config.model.pretrained:
    t5_config = pretrained.load_config(hub_config_dir(config.model.pretrained))
  else:
    t5_config = t5_lib.T5Config(
        **config.model.t5.to_dict(), scale_decoder_outputs=config.model.t5.tie_word_embeddings
    )
  return dc.replace(t5_config, dropout_rate=config.model.dropout_rate)


def build_model(config, devices):
  """The run's T5VAEModel; ``model.dtype`` "auto" resolved on ``devices`` (bfloat16 on TPU)."""
  import jax.numpy as jnp
  from t5vae_jax import accelerator
  from t5vae_jax import model as model_lib
  from t5vae_jax import train_lib

  dtype = accelerator.compute_dtype(config.model.dtype, devices)
  return model_lib.T5VAEModel(
      t5_config_of(config),
      vae=train_lib.vae_config_from(config),
      dtype=jnp.dtype(dtype),
      remat=config.model.remat,
  )


def abstract_params(model):
  import jax
  from t5vae_jax import model as model_lib

  return jax.eval_shape(functools.partial(model_lib.init_params, model), jax.random.key(0))


def with_shardings(tree, shardings):
  """ShapeDtypeStructs of ``tree`` (arrays or structs) carrying ``shardings``."""
  import jax

  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


def bytes_per_device(tree) -> int:
  """Bytes of one device's shard of every leaf (ShapeDtypeStructs with shardings)."""
  import jax
  import numpy as np

  return int(
      sum(
          math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
          for x in jax.tree.leaves(tree)
      )
  )


def leaf_bytes(tree, prefix: str) -> list[tuple[int, str]]:
  """(bytes per device, path) of each leaf."""
  import jax
  import numpy as np

  out = []
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    size = math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
    out.append((int(size), prefix + jax.tree_util.keystr(path)))
  return out


# --------------------------------------------------------------------------------------------
# Analytic FLOPs
# --------------------------------------------------------------------------------------------
def matmul_params(t5_config, latent_injection: str) -> tuple[int, int]:
  """(weights each encoder token multiplies, weights each decoder token multiplies).

  The encoder: q, k, v, o and the feed-forward of each layer. The decoder: self-attention and
  feed-forward of each layer and the LM head. No per-token cross-attention weights in either
  latent injection: with cross_attention the one latent slot replaces keys and values and W_o
  runs once per example (model.py), with self_prefix cross-attention is skipped.
  """
  c = t5_config
  inner = c.num_heads * c.d_kv
  attention = 4 * c.d_model * inner
  ff = (3 if c.is_gated else 2) * c.d_model * c.d_ff
  encoder = c.num_layers * (attention + ff)
  decoder = c.num_decoder_layers * (attention + ff) + c.vocab_size * c.d_model
  del latent_injection  # the same count for both (see above)
  return encoder, decoder


def analytic_train_flops(t5_config, latent_injection: str, batch: int, length: int) -> float:
  """Matmul FLOPs of one train step, whole batch: 6 x weights x tokens (forward 2, backward
  4) on each side, plus attention's scores and weighted sums (12 x T^2 x inner per layer)."""
  encoder, decoder = matmul_params(t5_config, latent_injection)
  c = t5_config
  inner = c.num_heads * c.d_kv
  attention = 12 * length * length * inner * (c.num_layers + c.num_decoder_layers)
  return float(batch * (6 * length * (encoder + decoder) + attention))


def analytic_eval_flops(
    t5_config, latent_injection: str, batch: int, length: int, num_samples: int
) -> float:
  """Forward-only FLOPs of one IW-NLL batch: the encoder once, the decoder 1 + K times."""
  encoder, decoder = matmul_params(t5_config, latent_injection)
  c = t5_config
  inner = c.num_heads * c.d_kv
  enc = 2 * length * encoder + 4 * length * length * inner * c.num_layers
  dec = 2 * length * decoder + 4 * length * length * inner * c.num_decoder_layers
  return float(batch * (enc + (1 + num_samples) * dec))


# --------------------------------------------------------------------------------------------
# Compiling and reporting
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Report:
  """What one compiled program needs per device, and its compute floor."""

  program: str  # "train phase 2" | "eval IW-NLL"
  batch: int
  length: int
  num_devices: int
  chip: Chip
  compile_s: float
  fits: bool
  params_bytes: int = 0
  opt_state_bytes: int = 0
  batch_bytes: int = 0
  argument_bytes: int = 0
  output_bytes: int = 0
  alias_bytes: int = 0
  temp_bytes: int = 0
  code_bytes: int = 0
  compiler_flops: float = 0.0  # per device, as cost_analysis() reports
  analytic_flops: float = 0.0  # whole step, all devices
  tokens: int = 0  # sentence tokens per step (batch x length)
  error: str = ""
  largest: list = dataclasses.field(default_factory=list)  # (bytes per device, what)

  @property
  def total_bytes(self) -> int:
    """Arguments + outputs not aliased to (donated) arguments + temporaries + code."""
    return (
        self.argument_bytes
        + self.output_bytes
        - self.alias_bytes
        + self.temp_bytes
        + self.code_bytes
    )

  @property
  def flops_per_device(self) -> float:
    """The larger of the compiler's count and the analytic matmul count (both are work this
    program does, so the larger gives the tighter floor)."""
    return max(self.compiler_flops, self.analytic_flops / self.num_devices)

  @property
  def floor_s(self) -> float:
    return self.flops_per_device / self.chip.peak_bf16_flops

  @property
  def tokens_per_s(self) -> float:
    return self.tokens / self.floor_s if self.floor_s else 0.0

  def as_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["chip"] = self.chip.name
    d.update(
        total_bytes=self.total_bytes,
        hbm_bytes=self.chip.hbm_bytes,
        flops_per_device=self.flops_per_device,
        floor_s=self.floor_s,
        tokens_per_s=self.tokens_per_s,
    )
    return d


def _largest_from_error(message: str) -> list[tuple[int, str]]:
  """XLA's 'Largest program allocations in hbm' lines -> (bytes, what)."""
  units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
  out = []
  for block in re.split(r"\n\s*\d+\. ", message)[1:]:
    size = re.search(r"Size: ([\d.]+)([KMGT])?", block)
    what = re.search(r"Operator: (.*)", block)
    shape = re.search(r"Shape: (\S+)", block)
    if size:
      n = float(size.group(1)) * units.get(size.group(2) or "", 1)
      label = " ".join(
          x
          for x in ((what.group(1).strip() if what else ""), (shape.group(1) if shape else ""))
          if x
      )
      out.append((int(n), label or block.splitlines()[0]))
  return out


def _new_report(program: str, batch_size: int, length: int, devices, chip: Chip, **sizes) -> Report:
  """The report of a program before it is compiled: its shape, argument sizes and FLOPs."""
  return Report(
      program=program,
      batch=batch_size,
      length=length,
      num_devices=len(devices),
      chip=chip,
      compile_s=0.0,
      fits=False,
      tokens=batch_size * length,
      **sizes,
  )


def compile_program(jitted, args, *, report: Report, argument_leaves, static_kwargs=None) -> Report:
  """Lowers ``jitted`` on ``args`` (ShapeDtypeStructs) and its static keyword arguments,
  compiles for the TPU, fills ``report``."""
  from t5vae_jax import t5 as t5_lib

  token = t5_lib.target_platform.set("tpu")  # the TPU program's matmul, not the CPU one
  start = time.perf_counter()
  try:
    lowered = jitted.lower(*args)
    compiled = lowered.compile()
  except Exception as e:
    message = str(e)
    if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
      raise
    report.compile_s = time.perf_counter() - start
    report.fits = False
    report.error = errors.one_line(message.split("\n")[0])
    report.largest = sorted(_largest_from_error(message) + argument_leaves, reverse=True)[:8]
    return report
  finally:
    t5_lib.target_platform.reset(token)
  report.compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  report.argument_bytes = int(memory.argument_size_in_bytes)
  report.output_bytes = int(memory.output_size_in_bytes)
  report.alias_bytes = int(memory.alias_size_in_bytes)
  report.temp_bytes = int(memory.temp_size_in_bytes)
  report.code_bytes = int(memory.generated_code_size_in_bytes)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  report.compiler_flops = float((cost or {}).get("flops", 0.0))
  report.fits = report.total_bytes <= report.chip.hbm_bytes
  if not report.fits:
    report.error = (
        f"{report.total_bytes / GIB:.2f} GiB per device exceeds the chip's "
        f"{report.chip.hbm_bytes / GIB:.2f} GiB of HBM"
    )
    report.largest = sorted(
        [(report.temp_bytes, "temporaries (activations, gradients)")] + argument_leaves,
        reverse=True,
    )[:8]
  return report


def compile_train(
    config, phase: int, devices, chip: Chip, length: int, model=None, params=None
) -> Report:
  """The phase's real train step (train_lib.compile_train_step) for batches of ``length``."""
  import jax
  import jax.numpy as jnp
  from t5vae_jax import sharding
  from t5vae_jax import train_lib

  mesh = sharding.make_mesh(devices, config.model_parallel)
  model = build_model(config, devices) if model is None else model
  params = abstract_params(model) if params is None else params
  tx = train_lib.make_optimizer(config, phase, params)
  state_shardings = train_lib.train_state_shardings(
      params, tx, mesh, config.fsdp, config.sharding_rules
  )
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  state = with_shardings(
      train_lib.TrainState(
          step=scalar, params=params, opt_state=jax.eval_shape(tx.init, params), num_skipped=scalar
      ),
      state_shardings,
  )
  batch_size = config.batch_size
  batch_sharding = sharding.batch_sharding(mesh)
  batch = {
      "input_ids": jax.ShapeDtypeStruct((batch_size, length), jnp.int32, sharding=batch_sharding),
      "attention_mask": jax.ShapeDtypeStruct(
          (batch_size, length), jnp.int32, sharding=batch_sharding
      ),
      "example_weights": jax.ShapeDtypeStruct((batch_size,), jnp.float32, sharding=batch_sharding),
  }
  num_shards = mesh.shape[sharding.DATA_AXIS]
  # Worst case of packing.capacity: every position of a shard's rows is a real token.
  capacity = batch_size // num_shards * length if config.pack_tokens else None
  beta_fn = train_lib.make_beta_fn(config, phase, steps_per_epoch=1000, total_steps=1000)
  jitted = train_lib.compile_train_step(
      model, tx, beta_fn, jax.random.key(config.seed), config, mesh, state_shardings
  )
  report = _new_report(
      f"train phase {phase}",
      batch_size,
      length,
      devices,
      chip,
      params_bytes=bytes_per_device(state.params),
      opt_state_bytes=bytes_per_device(state.opt_state),
      batch_bytes=bytes_per_device(batch),
      analytic_flops=analytic_train_flops(
          model.config, model.vae.latent_injection, batch_size, length
      ),
  )
  leaves = leaf_bytes(state.params, "params") + leaf_bytes(state.opt_state, "opt_state")
  return compile_program(jitted, (state, batch, capacity), report=report, argument_leaves=leaves)


def compile_eval(
    config,
    devices,
    chip: Chip,
    length: int,
    batch_size: int,
    num_samples: int,
    iw_chunk: int,
    model=None,
    params=None,
) -> Report:
  """evaluation.batch_statistics (eval.py's IW-NLL pass) for batches of ``length``."""
  import jax
  import jax.numpy as jnp
  from t5vae_jax import evaluation
  from t5vae_jax import sharding

  mesh = sharding.make_mesh(devices, config.model_parallel)
  model = build_model(config, devices) if model is None else model
  params = abstract_params(model) if params is None else params
  shardings = sharding.tree_shardings(params, mesh, config.fsdp, config.sharding_rules)
  params = with_shardings(params, shardings)
  batch_sharding = sharding.batch_sharding(mesh)
  batch = {
      "input_ids": jax.ShapeDtypeStruct((batch_size, length), jnp.int32, sharding=batch_sharding),
      "attention_mask": jax.ShapeDtypeStruct(
          (batch_size, length), jnp.int32, sharding=batch_sharding
      ),
      "example_ids": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=batch_sharding),
  }
  replicated = sharding.replicated(mesh)
  rng = jax.eval_shape(lambda: jax.random.key(0))
  rng = jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=replicated)
  num_chunks = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
  # As eval.py on an accelerator: large decoder passes (evaluation.default_max_rows off CPU).
  chunk = evaluation.chunk_size_for(
      num_samples, iw_chunk, batch_size, length, model.config.vocab_size, max_rows=1 << 16
  )
  num_shards = mesh.shape[sharding.DATA_AXIS]
  capacity = batch_size // num_shards * length if config.pack_tokens else None
  jitted = jax.jit(
      functools.partial(
          evaluation.batch_statistics,
          model=model,
          chunk_size=chunk,
          capacity=capacity,
          num_shards=num_shards,
      )
  )
  report = _new_report(
      f"eval IW-NLL (K={num_samples}, {chunk} per pass)",
      batch_size,
      length,
      devices,
      chip,
      params_bytes=bytes_per_device(params),
      batch_bytes=bytes_per_device(batch),
      analytic_flops=analytic_eval_flops(
          model.config, model.vae.latent_injection, batch_size, length, num_samples
      ),
  )
  return compile_program(
      jitted,
      (params, batch, rng, num_chunks),
      report=report,
      argument_leaves=leaf_bytes(params, "params"),
  )


def param_count(params) -> int:
  import jax

  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------
def _gib(n: float) -> str:
  """Bytes in GiB, or in MiB below 1 GiB."""
  return f"{n / GIB:.2f} GiB" if abs(n) >= GIB else f"{n / 2 ** 20:.1f} MiB"


def _flops(n: float) -> str:
  for scale, unit in ((1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP")):
    if n >= scale:
      return f"{n / scale:.3g} {unit}"
  return f"{n / 1e6:.3g} MFLOP"


def _duration(s: float) -> str:
  return f"{s:.3g} s" if s >= 1 else f"{1e3 * s:.3g} ms" if s >= 1e-3 else f"{1e6 * s:.3g} us"


def format_report(r: Report) -> list[str]:
  shape = (
      f"{r.batch} x ({r.length} + {r.length})"
      if r.program.startswith("train")
      else f"{r.batch} x {r.length}"
  )
  head = f"{r.program}, global batch {shape}: compiled in {r.compile_s:.1f} s"
  if r.error and not r.total_bytes:
    lines = [
        head,
        (
            f"  per device: params {_gib(r.params_bytes)}, optimizer state "
            f"{_gib(r.opt_state_bytes)}, batch {_gib(r.batch_bytes)}; the compiler "
            "refuses the program"
        ),
    ]
  else:
    other = r.argument_bytes - r.params_bytes - r.opt_state_bytes - r.batch_bytes
    lines = [
        head,
        f"  per device: params {_gib(r.params_bytes)}, optimizer state {_gib(r.opt_state_bytes)}"
        f", batch {_gib(r.batch_bytes)}, other arguments {_gib(other)}, temporaries "
        f"{_gib(r.temp_bytes)}, outputs not donated {_gib(r.output_bytes - r.alias_bytes)}, code "
        f"{_gib(r.code_bytes)}: total {_gib(r.total_bytes)} of {_gib(r.chip.hbm_bytes)} HBM "
        f"({100 * r.total_bytes / r.chip.hbm_bytes:.0f}%): "
        + ("fits" if r.fits else "DOES NOT FIT"),
        (
            f"  FLOPs per step per device: {_flops(r.compiler_flops)} (compiler), "
            f"{_flops(r.analytic_flops / r.num_devices)} (analytic matmul count); floor "
            f"{_duration(r.floor_s)} at {r.chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16 "
            f"(a compute bound: no communication, no memory traffic), "
            f"{r.tokens_per_s:,.0f} tokens/s at the floor"
        ),
    ]
  if not r.fits:
    lines.append("  DOES NOT FIT: " + r.error)
    lines += [f"    {_gib(size)}  {what}" for size, what in r.largest]
  return lines


def run(
    config,
    topology: str,
    phases: Sequence[int] = (1, 2),
    num_slices: int = 1,
    lengths: Optional[Sequence[int]] = None,
    eval_pass: bool = True,
    eval_batch_size: int = 64,
    num_samples: int = 500,
    iw_chunk: int = 50,
    out=sys.stdout,
) -> list[Report]:
  """Compiles every (phase, bucket length) train step and each length's IW-NLL pass."""
  from t5vae_jax import config_validation
  from t5vae_jax import data as data_lib

  for phase in phases:
    config_validation.validate(config, phase, check_paths=False)
  chip = chip_of(topology)
  devices = topology_devices(topology, num_slices)
  config_validation.check_devices(_without_mesh_devices(config), len(devices))
  if eval_pass and eval_batch_size % len(devices):
    raise AotError(
        f"--eval_batch_size={eval_batch_size} must be a multiple of the number of "
        f"devices ({len(devices)})"
    )
  model = build_model(config, devices)
  params = abstract_params(model)
  lengths = data_lib.bucket_lengths_from_config(config.data) if lengths is None else tuple(lengths)
  n = param_count(params)
  print(
      f"aot: {topology} x {num_slices} slice(s): {len(devices)} x {chip.name} devices "
      f"({'megacore, ' if chip.megacore else ''}one per chip, {_gib(chip.hbm_bytes)} HBM, "
      f"{chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16 each); model "
      f"{config.model.pretrained or 'config.model.t5'}: {n / 1e6:,.1f}M params as a VAE, "
      f"compute {model.dtype.name}, mesh {len(devices) // config.model_parallel} x "
      f"{config.model_parallel} (data x model), fsdp {'on' if config.fsdp else 'off'}, packing "
      f"{'on (worst case: every position a real token)' if config.pack_tokens else 'off'}",
      file=out,
      flush=True,
  )
  reports = []
  for length in lengths:
    for phase in phases:
      reports.append(compile_train(config, phase, devices, chip, length, model, params))
      print("\n".join(format_report(reports[-1])), file=out, flush=True)
    if eval_pass:
      reports.append(
          compile_eval(
              config, devices, chip, length, eval_batch_size, num_samples, iw_chunk, model, params
          )
      )
      print("\n".join(format_report(reports[-1])), file=out, flush=True)
  return reports


def _without_mesh_devices(config):
  """A copy of the config with mesh_devices 0: the compile spans the whole topology."""
  import copy

  config = copy.deepcopy(config)
  config.mesh_devices = 0
  return config


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------
FLAGS = flags.FLAGS


def define_flags(flag_values=None) -> None:
  """The command's flags: train.py's --config (and --config.x=y), the topology, what to compile."""
  flag_values = flags.FLAGS if flag_values is None else flag_values
  cli.define_config_flag(flag_values)
  flags.DEFINE_string(
      "topology",
      None,
      "TPU topology, <chip>:<bounds>: v5e:2x4 (v5e-8), "
      "v5e:4x4 (v5e-16), v4:2x2x4 (v4-32), v4:2x4x4 (v4-64), v5p:2x4x4 "
      "(v5p-64), v6e:2x2 ...",
      flag_values=flag_values,
  )
  flags.DEFINE_integer(
      "num_slices",
      1,
      "Slices of that topology (multi-slice, data parallel across them).",
      flag_values=flag_values,
  )
  flags.DEFINE_integer("phase", None, "1 or 2; default: both.", flag_values=flag_values)
  flags.DEFINE_list(
      "lengths",
      None,
      "Padded lengths to compile; default: every bucket of config.data.",
      flag_values=flag_values,
  )
  flags.DEFINE_bool("eval", True, "Also compile eval.py's IW-NLL pass.", flag_values=flag_values)
  flags.DEFINE_integer("eval_batch_size", 64, "eval.py's --batch_size.", flag_values=flag_values)
  flags.DEFINE_integer("num_samples", 500, "eval.py's --num_samples (K).", flag_values=flag_values)
  flags.DEFINE_integer("iw_chunk", 50, "eval.py's --iw_chunk.", flag_values=flag_values)
  flags.DEFINE_string(
      "json", None, "Also write the reports to this JSON file.", flag_values=flag_values
  )
  flags.mark_flags_as_required(["config", "topology"], flag_values=flag_values)


def main(argv):
  if len(argv) > 1:
    errors.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
  if FLAGS.phase is not None and FLAGS.phase not in (1, 2):
    errors.fail(f"--phase={FLAGS.phase} is not allowed; allowed: 1 or 2 (default: both)")
  try:
    lengths = None if FLAGS.lengths is None else [int(x) for x in FLAGS.lengths]
  except ValueError:
    errors.fail(f"--lengths={','.join(FLAGS.lengths)} must be integers")
  runtime.quiet_known_noise()
  try:
    reports = run(
        FLAGS.config,
        FLAGS.topology,
        phases=(1, 2) if FLAGS.phase is None else (FLAGS.phase,),
        num_slices=FLAGS.num_slices,
        lengths=lengths,
        eval_pass=FLAGS.eval,
        eval_batch_size=FLAGS.eval_batch_size,
        num_samples=FLAGS.num_samples,
        iw_chunk=FLAGS.iw_chunk,
    )
  except AotError as e:
    errors.fail(str(e))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump([r.as_dict() for r in reports], f, indent=2)
  failed = [r for r in reports if not r.fits]
  if failed:
    print(
        f"does not fit: {', '.join(f'{r.program} at length {r.length}' for r in failed)}",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(1)


if __name__ == "__main__":
  # The host computes nothing: without this JAX would try (and fail) to start a TPU backend.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  define_flags()
  cli.show_in_help(
      [
          "config",
          "topology",
          "num_slices",
          "phase",
          "lengths",
          "eval",
          "eval_batch_size",
          "num_samples",
          "iw_chunk",
          "json",
      ],
      __doc__,
  )
  cli.run_main(main)
