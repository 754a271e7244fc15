"""The ahead-of-time "will it fit" command (t5vae_jax/aot.py) on the tiny model, for real TPU
topologies through libtpu's compile-only client (no TPU needed; skipped only without libtpu)."""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# scripts/_venv.sh installs libtpu there for the tests, off the import path of other runs (and
# of the other tests: a libtpu on sys.path is an installed TPU plugin to accelerator.py).
LIBTPU_DIR = ROOT / ".venv" / "libtpu"
if not (LIBTPU_DIR / "libtpu").is_dir() and importlib.util.find_spec("libtpu") is None:
  pytest.skip(
      "libtpu (pip install 'jax[tpu]') is not installed: the TPU compile-only client is "
      "what these tests compile with",
      allow_module_level=True,
  )

from t5vae_jax import aot  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def libtpu_on_the_path():
  """libtpu importable for this module's tests only."""
  sys.path.append(str(LIBTPU_DIR))
  yield
  sys.path.remove(str(LIBTPU_DIR))


from configs import demo  # noqa: E402

# One layer each side and one bucket: a few seconds per compile.
TINY = dict(
    vocab_size=256,
    d_model=32,
    d_kv=8,
    d_ff=128,
    num_layers=1,
    num_decoder_layers=1,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
)
LATENT = 4


def tiny_config(**overrides):
  config = demo.get_config()
  config.model.t5.update(TINY)
  config.model.latent_dim = LATENT
  config.data.bucket_lengths = (16,)
  config.batch_size = 16
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def hand_param_shapes(t, latent_injection="cross_attention") -> dict[str, list[tuple[int, ...]]]:
  """The VAE's parameter shapes by group, written out from the architecture (not the code)."""
  inner = t["num_heads"] * t["d_kv"]
  d, ff = t["d_model"], t["d_ff"]
  attention = [(d, inner)] * 3 + [(inner, d)]
  bias = [(t["relative_attention_num_buckets"], t["num_heads"])]
  encoder = [(d,)]  # final norm
  for i in range(t["num_layers"]):
    encoder += attention + [(d,), (d,), (d, ff), (ff, d)] + (bias if i == 0 else [])
  # Decoder layers: self-attention; cross-attention's q and o only (the latent slot replaces
  # its keys and values, so W_k and W_v do not exist: model.py) and its norm, none of it with
  # self_prefix (the slot is a self-attention prefix); feed-forward.
  cross = [(d, inner), (inner, d), (d,)] if latent_injection == "cross_attention" else []
  decoder = [(d,)]
  for i in range(t["num_decoder_layers"]):
    decoder += attention + cross + [(d,)] * 2 + [(d, ff), (ff, d)] + (bias if i == 0 else [])
  return {
      "shared": [(t["vocab_size"], d)],
      "encoder": encoder,
      "decoder": decoder,
      "mu": [(d, LATENT)],
      "logvar": [(d, LATENT)],
      "memory_proj": [(LATENT, t["num_decoder_layers"] * inner)],
  }


def _size(shapes) -> int:
  return sum(math.prod(s) for s in shapes)


@pytest.fixture(scope="module")
def v5e_reports():
  """Both phases' train steps and the IW-NLL pass on v5e:2x2 (4 chips), params replicated."""
  return aot.run(
      tiny_config(),
      "v5e:2x2",
      eval_batch_size=16,
      num_samples=10,
      iw_chunk=5,
      out=open(os.devnull, "w"),
  )


def test_v5e_both_phases_and_eval_fit_with_real_numbers(v5e_reports):
  phase1, phase2, iw = v5e_reports
  assert [r.program for r in v5e_reports] == [
      "train phase 1",
      "train phase 2",
      "eval IW-NLL (K=10, 5 per pass)",
  ]
  shapes = hand_param_shapes(TINY)
  total = 4 * sum(_size(s) for s in shapes.values())
  for r in v5e_reports:
    assert r.fits and r.num_devices == 4 and r.chip.name == "TPU v5e"
    assert r.params_bytes == total  # replicated: every device holds all params
    assert r.compiler_flops > 0
    # The compiler's arguments hold at least the state and the batch (more: TPU tile padding).
    assert r.argument_bytes >= r.params_bytes + r.opt_state_bytes + r.batch_bytes
    assert r.total_bytes < r.chip.hbm_bytes
  # Adam's two moments of every trainable leaf (+ int32 step counts); phase 1 trains only the
  # encoder, mu and logvar: the frozen decoder side has no Adam state (optax.set_to_zero).
  trainable1 = 4 * sum(_size(shapes[g]) for g in ("encoder", "mu", "logvar"))
  assert 2 * total <= phase2.opt_state_bytes <= 2 * total + 64
  assert 2 * trainable1 <= phase1.opt_state_bytes <= 2 * trainable1 + 64
  assert iw.opt_state_bytes == 0
  # The analytic count of a train step: 6 x weights each token passes x tokens (+ attention).
  t = TINY
  inner = t["num_heads"] * t["d_kv"]
  per_layer = 4 * t["d_model"] * inner + 2 * t["d_model"] * t["d_ff"]
  weights = 2 * per_layer + t["vocab_size"] * t["d_model"]
  expected = 16 * (6 * 16 * weights + 12 * 16 * 16 * inner * 2)
  assert phase2.analytic_flops == expected
  assert phase2.floor_s == pytest.approx(phase2.flops_per_device / 197e12)
  assert phase2.tokens_per_s == pytest.approx(16 * 16 / phase2.floor_s)


def test_v4_fsdp_shards_params_and_adam_state_over_devices():
  """v4:2x2x2 (8 chips, megacore: one device each); FSDP puts 1/8 of each big leaf on a device."""
  reports = aot.run(
      tiny_config(fsdp=True),
      "v4:2x2x2",
      eval_batch_size=16,
      num_samples=10,
      iw_chunk=5,
      out=open(os.devnull, "w"),
  )
  assert [r.program.split(" (")[0] for r in reports] == [
      "train phase 1",
      "train phase 2",
      "eval IW-NLL",
  ]
  shapes = [s for group in hand_param_shapes(TINY).values() for s in group]
  # sharding.fsdp_spec: leaves of >= 4096 elements with an axis divisible by 8 are split 8 ways,
  # smaller ones stay whole on every device.
  split = [s for s in shapes if math.prod(s) >= 4096 and any(n % 8 == 0 for n in s)]
  whole = [s for s in shapes if s not in split]
  assert split  # the embedding and the feed-forward kernels at least
  expected = 4 * (_size(split) // 8 + _size(whole))
  total = 4 * _size(shapes)
  for r in reports:
    assert r.fits and r.num_devices == 8 and r.chip.name == "TPU v4"
    assert r.params_bytes == expected
    assert total / 8 <= r.params_bytes < total / 8 + 4 * _size(whole)
  phase2 = reports[1]
  assert 2 * expected <= phase2.opt_state_bytes <= 2 * expected + 64


def _tensor_parallel_bytes(groups) -> int:
  """Per-device float32 bytes when the embedding and every 2-D kernel of the encoder and decoder
  but the relative position biases are halved over a model axis of 2 (the latent layers stay
  whole)."""
  bias = (TINY["relative_attention_num_buckets"], TINY["num_heads"])
  halved = groups["shared"] + [
      s for side in ("encoder", "decoder") for s in groups[side] if len(s) == 2 and s != bias
  ]
  whole = [s for group in groups.values() for s in group]
  for s in halved:
    whole.remove(s)
  return 4 * (_size(halved) // 2 + _size(whole))


def test_tensor_parallel_splits_heads_d_ff_and_vocabulary_over_the_model_axis():
  """v5e:2x2 as a 2 x 2 (data, model) mesh: per device, each attention and feed-forward kernel
  and the embedding hold half their entries (the default rule table); norms, the relative
  position biases and the latent layers stay whole. Both phases and eval compile."""
  config = tiny_config(model_parallel=2, pack_tokens=True)  # the packed step (demo: off)
  reports = aot.run(
      config, "v5e:2x2", eval_batch_size=16, num_samples=10, iw_chunk=5, out=open(os.devnull, "w")
  )
  expected = _tensor_parallel_bytes(hand_param_shapes(TINY))
  assert [r.program.split(" (")[0] for r in reports] == [
      "train phase 1",
      "train phase 2",
      "eval IW-NLL",
  ]
  for r in reports:
    assert r.fits and r.num_devices == 4
    assert r.params_bytes == expected, (r.program, r.params_bytes, expected)
  # The released code's injection (the slot a self-attention prefix, no cross-attention), heads
  # split the same way: phase 2's step compiles.
  prefix = tiny_config(model_parallel=2, **{"model.latent_injection": "self_prefix"})
  report = aot.compile_train(
      prefix, 2, aot.topology_devices("v5e:2x2"), aot.chip_of("v5e:2x2"), length=16
  )
  expected = _tensor_parallel_bytes(hand_param_shapes(TINY, "self_prefix"))
  assert report.fits and report.params_bytes == expected, (report.params_bytes, expected)


def _run_command(*flags, env=None):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(LIBTPU_DIR)]), **(env or {}))
  if "HF_ENDPOINT" in env:  # a hub stand-in: online for this command (the tests run offline)
    env.pop("HF_HUB_OFFLINE", None)
  return subprocess.run(
      [sys.executable, "-m", "t5vae_jax.aot", *flags],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )


def test_a_model_that_cannot_fit_exits_nonzero_naming_the_largest_buffers():
  # A 2^20 x 4096 embedding: 16 GiB of float32 params alone, replicated on 16 GiB v5e chips.
  result = _run_command(
      "--config",
      "configs/demo.py",
      "--topology",
      "v5e:2x2",
      "--phase",
      "2",
      "--eval=false",
      "--config.model.t5.vocab_size=1048576",
      "--config.model.t5.d_model=4096",
      "--config.model.t5.num_layers=1",
      "--config.model.t5.num_decoder_layers=1",
      "--config.data.bucket_lengths=(16,)",
  )
  output = result.stdout + result.stderr
  assert result.returncode == 1, output
  assert "DOES NOT FIT" in output and "does not fit: train phase 2 at length 16" in output
  assert "params['shared']['embedding']" in output  # named, with its size per device
  assert "16.00 GiB  params['shared']['embedding']" in output


def test_bad_topology_is_one_error_line():
  result = _run_command("--config", "configs/demo.py", "--topology", "v5e:3x3")
  assert result.returncode == 2
  assert (
      result.stderr.strip()
      .splitlines()[-1]
      .startswith("error: --topology=v5e:3x3: libtpu refuses it")
  )


def test_a_hub_id_needs_only_its_config_json(tmp_path):
  """model.pretrained as a hub id: the command fetches config.json (through huggingface_hub,
  from the hub stand-in on 127.0.0.1) and nothing else, and compiles that shape."""
  sys.path.insert(0, str(ROOT / "tests"))
  import _replicas
  from hub_stand_in import HubStandIn, Repo

  repo_id = "google/flan-t5-tiny"
  config_json = _replicas.config_flan()
  files = {
      "config.json": json.dumps(config_json).encode(),
      "model.safetensors": b"weights: never to be fetched by the AOT command\n",
      "spiece.model": b"tokenizer: never to be fetched\n",
      "tokenizer.json": b"{}",
  }
  with HubStandIn({repo_id: Repo(files)}) as stand_in:
    result = _run_command(
        "--config",
        "configs/demo.py",
        "--topology",
        "v5e:2x2",
        "--phase",
        "2",
        "--eval=false",
        f"--config.model.pretrained={repo_id}",
        f"--config.model.latent_dim={LATENT}",
        "--config.data.bucket_lengths=(16,)",
        env={"HF_ENDPOINT": stand_in.endpoint, "HF_HOME": str(tmp_path / "hf_home")},
    )
    requested = stand_in.requested(repo_id)
  output = result.stdout + result.stderr
  assert result.returncode == 0, output
  assert requested == {"config.json"}
  # The shape came from that config.json: flan's gated feed-forward (two input kernels) and
  # untied LM head, counted by hand.
  t = config_json
  d, ff = t["d_model"], t["d_ff"]
  by_group = hand_param_shapes(t)
  gated = (t["num_layers"] + t["num_decoder_layers"]) * d * ff  # each layer's second wi
  want = sum(_size(shapes) for shapes in by_group.values()) + gated + t["vocab_size"] * d
  assert f"model {repo_id}: {want / 1e6:,.1f}M params" in output, output
  assert "train phase 2" in output
