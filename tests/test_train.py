"""The two-phase trainer: freezing, sharding invariance, phase hand-over, kill and resume."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5vae_jax import checkpoint as ckpt_lib
from t5vae_jax import sharding
from t5vae_jax import train_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import demo  # noqa: E402

TINY_OVERRIDES = {
    "data.synthetic.num_train": 256,
    "data.synthetic.num_valid": 48,
    "data.synthetic.num_test": 48,
    "batch_size": 16,
    "phase1.epochs": 1.5,
    "phase2.epochs": 1.0,
    "log_every_steps": 2,
    "eval_every_steps": 1000,
    "checkpoint_every_steps": 4,
    "progress_bar": False,
    "model.t5.d_model": 32,
    "model.t5.d_ff": 64,
    "model.t5.d_kv": 8,
    "model.latent_dim": 4,
    "mesh_devices": 1,  # whole runs on one device (fast); sharding has its own test below
    "data.bucket_lengths": (16,),  # one shape: one compilation
}


def tiny_config(tfds_dir, **extra):
  config = demo.get_config()
  for key, value in {**TINY_OVERRIDES, **extra}.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.data.tfds_dir = str(tfds_dir)
  return config


def flag_overrides(tfds_dir, **extra):
  flags = [f"--config.{k}={v}" for k, v in {**TINY_OVERRIDES, **extra}.items()]
  return flags + [f"--config.data.tfds_dir={tfds_dir}"]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def phase1_run(tmp_path_factory, tfds_dir):
  """A workdir with a finished (short) phase 1."""
  workdir = tmp_path_factory.mktemp("work")
  config = tiny_config(tfds_dir)
  result = train_lib.train_and_evaluate(config, str(workdir), phase=1)
  return workdir, config, result


def _flat(tree):
  return {
      jax.tree_util.keystr(p): np.asarray(v)
      for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def random_batch(rows=8, length=12, vocab=64, seed=0):
  """Token ids in [3, vocab) ending in EOS (1), then pad (0); lengths 3..length."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, length + 1, rows)
  ids = rng.integers(3, vocab, (rows, length)).astype(np.int32)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  ids[np.arange(rows), lengths - 1] = 1
  return {
      "input_ids": np.where(mask > 0, ids, 0),
      "attention_mask": mask,
      "example_weights": np.ones(rows, np.float32),
  }


def tiny_step(dtype="float32", phase=2, config=None):
  """(state, step_fn, batch, model): a 1-layer VAE's train state (phase 2 unless told) on one
  device and the compiled train step (compile_train_step: what the loop runs),
  step_fn(state, host_batch); ``config`` defaults to configs/demo.py's."""
  from t5vae_jax import model as model_lib
  from t5vae_jax import t5 as t5_lib

  t5_config = t5_lib.T5Config(
      vocab_size=64,
      d_model=32,
      d_kv=8,
      d_ff=64,
      num_layers=1,
      num_decoder_layers=1,
      num_heads=4,
      relative_attention_num_buckets=8,
      relative_attention_max_distance=16,
      dropout_rate=0.0,
  )
  model = model_lib.T5VAEModel(
      t5_config, vae=model_lib.VAEConfig(latent_dim=4), dtype=jnp.dtype(dtype)
  )
  params = jax.device_get(
      jax.jit(model_lib.init_params, static_argnums=0)(model, jax.random.key(0))
  )
  config = demo.get_config() if config is None else config
  tx = train_lib.make_optimizer(config, phase, params)
  mesh = sharding.make_mesh(jax.devices()[:1])
  state, shardings = train_lib.create_train_state(params, tx, mesh, fsdp=False)
  beta_fn = train_lib.make_beta_fn(config, phase, 16, 16)
  compiled = train_lib.compile_train_step(
      model, tx, beta_fn, jax.random.key(0), config, mesh, shardings
  )
  step_fn = lambda state, batch: compiled(state, sharding.global_batch(batch, mesh), None)
  return state, step_fn, random_batch(), model


def test_phase1_freezes_decoder_side_bit_identically(phase1_run):
  workdir, config, result = phase1_run
  setup = train_lib.build_setup(config, workdir)
  initial = _flat(train_lib.initial_params(setup, config, workdir, phase=1))
  trained, step = ckpt_lib.restore_params(workdir / "phase1")
  trained = _flat(trained)
  rows = train_lib.read_metrics(workdir / "phase1" / "metrics.jsonl")
  last_train = [r for r in rows if "train/epoch" in r][-1]
  assert last_train["step"] == step and 1.5 <= last_train["train/epoch"] < 1.6  # 1.5 epochs
  assert initial.keys() == trained.keys()
  frozen = [k for k in initial if k.split("'")[1] in ("shared", "decoder", "memory_proj")]
  trainable = [k for k in initial if k.split("'")[1] in ("encoder", "mu", "logvar")]
  assert frozen and trainable and len(frozen) + len(trainable) == len(initial)
  for k in frozen:
    np.testing.assert_array_equal(trained[k], initial[k], err_msg=k)
  changed = [k for k in trainable if not np.array_equal(trained[k], initial[k])]
  assert changed == trainable
  assert np.isfinite(result["rec"]) and result["au"] >= 0


def test_frozen_leaves_hold_no_adam_state():
  """The optimizer that make_optimizer builds from the config: Adam state (mu, nu) and a
  non-zero update for exactly the trainable groups: the encoder side in phase 1 with
  freeze_decoder on; everything (the shared embedding too) with it off, and in phase 2."""
  groups = ("encoder", "mu", "logvar", "decoder", "memory_proj", "lm_head", "shared")
  params = {g: {"w": jnp.ones((i + 2, 3))} for i, g in enumerate(groups)}
  expected = {
      (1, True): {"encoder", "mu", "logvar"},
      (1, False): set(groups),
      (2, True): set(groups),
  }
  grads = jax.tree.map(jnp.ones_like, params)
  for (phase, freeze), trainable in expected.items():
    config = demo.get_config()
    config.phase1.freeze_decoder = freeze
    tx = train_lib.make_optimizer(config, phase, params)

    def init_and_update(params, grads):
      state = tx.init(params)
      return state, tx.update(grads, state, params)[0]

    state, updates = jax.jit(init_and_update)(params, grads)  # one compilation: fast on CPU
    adam_size = {g: 0 for g in groups}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
      for g in groups:
        if f"['{g}']" in jax.tree_util.keystr(path):
          adam_size[g] += leaf.size
    want = {g: 2 * params[g]["w"].size if g in trainable else 0 for g in groups}  # mu and nu
    assert adam_size == want, (phase, freeze)
    moved = {g for g in groups if float(jnp.abs(updates[g]["w"]).max()) > 0}
    assert moved == trainable, (phase, freeze)


def test_phase1_without_decoder_freeze_trains_every_parameter():
  """phase1.freeze_decoder=False: three phase-1 steps (beta 0) move every leaf, the shared
  (tied) embedding, decoder and memory projection included, except the cross-attention query
  and its pre-norm: attention over the one-slot latent memory has softmax weight 1 whatever
  the query, so they get no gradient by construction. Weight decay off, so a leaf moves only
  if its gradient reached the optimizer and the optimizer trains it."""
  config = demo.get_config()
  config.phase1.freeze_decoder = False
  config.optimizer.weight_decay = 0.0
  state, step_fn, batch, _ = tiny_step(phase=1, config=config)
  initial = _flat(jax.device_get(state.params))
  assert {k.split("'")[1] for k in initial} >= {"shared", "decoder", "memory_proj", "encoder"}
  for _ in range(3):
    state, metrics = step_fn(state, batch)
  trained = _flat(jax.device_get(state.params))
  assert int(state.num_skipped) == 0
  unchanged = {k for k in initial if np.array_equal(trained[k], initial[k])}
  no_gradient = {
      "['decoder']['block_0']['layer_1']['EncDecAttention']['q']['kernel']",
      "['decoder']['block_0']['layer_1']['layer_norm']['weight']",
  }
  assert no_gradient <= initial.keys() and unchanged == no_gradient


def test_phase2_starts_from_phase1_params(phase1_run):
  workdir, config, _ = phase1_run
  setup = train_lib.build_setup(config, workdir)
  p2_init = _flat(train_lib.initial_params(setup, config, workdir, phase=2))
  p1, _ = ckpt_lib.restore_params(workdir / "phase1")
  for k, v in _flat(p1).items():
    np.testing.assert_array_equal(p2_init[k], v, err_msg=k)


def test_phase2_without_phase1_names_the_directory(tmp_path, tfds_dir):
  config = tiny_config(tfds_dir)
  with pytest.raises(train_lib.TrainingError, match=str(tmp_path / "phase1" / "checkpoints")):
    train_lib.train_and_evaluate(config, str(tmp_path), phase=2)


def test_same_loss_on_1_and_8_devices_with_fsdp_and_tensor_parallelism(phase1_run):
  """One device; 8 data shards; a 2 x 4 mesh with FSDP over the 2 and heads / d_ff /
  vocabulary split over the 4: the same losses and updated params."""
  workdir, config, _ = phase1_run
  assert jax.device_count() == 8
  config = tiny_config(config.data.tfds_dir, denoise_rate=0.15, kl_floor=0.1, pack_tokens=True)
  setup = train_lib.build_setup(config, workdir)
  # Host copies: the compiled step donates (deletes) the device buffers it is given.
  params = jax.device_get(train_lib.initial_params(setup, config, workdir, phase=2))
  rng = np.random.default_rng(0)
  lengths = rng.integers(3, 12, 16)
  ids = rng.integers(3, 30, (16, 12)).astype(np.int32)
  mask = (np.arange(12)[None] < lengths[:, None]).astype(np.int32)
  ids[np.arange(16), lengths - 1] = 1
  batch = {
      "input_ids": np.where(mask > 0, ids, 0),
      "attention_mask": mask,
      "example_weights": np.ones(16, np.float32),
  }
  results = []
  layouts = [(jax.devices()[:1], False, 1)] + [(jax.devices(), f, m) for f, m in LAYOUTS_OF_8]
  for devices, fsdp, model_parallel in layouts:
    mesh = sharding.make_mesh(devices, model_parallel)
    tx = train_lib.make_optimizer(config, 2, params)
    state, shardings = train_lib.create_train_state(params, tx, mesh, fsdp)
    beta_fn = train_lib.make_beta_fn(config, 2, 16, 16)
    step = train_lib.compile_train_step(
        setup.model, tx, beta_fn, jax.random.key(0), config, mesh, shardings
    )
    specs = {
        jax.tree_util.keystr(path): s.spec
        for path, s in jax.tree_util.tree_flatten_with_path(shardings.params)[0]
    }
    if fsdp and len(devices) == 8:
      assert any(sharding.DATA_AXIS in spec for spec in specs.values())  # really split
    if model_parallel > 1:  # heads, d_ff and vocabulary columns split over the model axis
      split = [p for p in specs if re.search(r"\['(q|wi|o|wo)'\]\['kernel'\]$", p)]
      assert len(split) >= 4 * config.model.t5.num_layers  # each layer's, both sides
      for path, spec in specs.items():
        if path.endswith("['q']['kernel']") or path.endswith("['wi']['kernel']"):
          assert spec[1] == sharding.MODEL_AXIS, (path, spec)
        if path.endswith("['o']['kernel']") or path.endswith("['wo']['kernel']"):
          assert spec[0] == sharding.MODEL_AXIS, (path, spec)
      assert specs["['shared']['embedding']"][0] == sharding.MODEL_AXIS
      opt_specs = [s.spec for s in jax.tree.leaves(shardings.opt_state)]
      assert any(sharding.MODEL_AXIS in spec for spec in opt_specs)  # Adam state split too
    losses = []
    # Token packing per data shard: 1 shard of 16 rows, or 8 of 2 rows (other capacities).
    capacity = train_lib.packing_capacity(config, batch["attention_mask"], mesh)
    assert capacity < 16 * 12 or len(devices) > 1  # something to skip on one shard
    for _ in range(2):
      state, aux = step(state, sharding.global_batch(batch, mesh), capacity)
      losses.append(float(aux["loss"]))
    results.append((losses, _flat(jax.device_get(state.params))))
  (l1, p1), *others = results
  for l8, p8 in others:
    np.testing.assert_allclose(l1, l8, rtol=1e-5, atol=1e-5)
    for k in p1:
      np.testing.assert_allclose(p1[k], p8[k], atol=1e-5, err_msg=k)


# (fsdp, model_parallel) on the 8 simulated devices, after the one-device reference.
LAYOUTS_OF_8 = ((False, 1), (True, 4))


def _wait_for(predicate, proc, timeout):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.2)
  return False


def test_sigterm_saves_and_resume_matches_uninterrupted(tmp_path, tfds_dir):
  """Kill phase 1 with SIGTERM mid-run, resume it: final params equal an uninterrupted run's."""
  # Only the SIGTERM save and the final one.
  extra = {"checkpoint_every_steps": 1000, "phase1.epochs": 2.0}
  straight = tmp_path / "straight"
  train_lib.train_and_evaluate(tiny_config(tfds_dir, **extra), str(straight), phase=1)

  killed = tmp_path / "killed"
  flags = [
      "--config",
      str(ROOT / "configs/demo.py"),
      "--phase",
      "1",
      "--workdir",
      str(killed),
  ] + flag_overrides(tfds_dir, **extra)
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  gate = tmp_path / "at_gate"
  gate_step = 6  # the loop waits there for the signal (tests/_gated_train.py)
  proc = subprocess.Popen(
      [sys.executable, str(ROOT / "tests/_gated_train.py")] + flags,
      env=dict(env, GATE_STEP=str(gate_step), GATE_FILE=str(gate)),
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  try:
    assert _wait_for(gate.exists, proc, 180), (
        proc.communicate()[0] if proc.poll() is not None else "timeout"
    )
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 143, out
  assert f"SIGTERM: saved step {gate_step}" in out
  assert ckpt_lib.PhaseCheckpoints(killed / "phase1").latest_step() == gate_step
  a, step_a = ckpt_lib.restore_params(straight / "phase1")
  assert gate_step < step_a

  cmd = [sys.executable, str(ROOT / "train.py")] + flags
  resumed = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming {killed / 'phase1'} at step {gate_step}" in resumed.stderr
  b, step_b = ckpt_lib.restore_params(killed / "phase1")
  assert step_a == step_b
  fa, fb = _flat(a), _flat(b)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_plot_writes_a_png_of_the_validation_curves(phase1_run, tmp_path):
  from t5vae_jax import plot

  workdir, _, _ = phase1_run
  out = tmp_path / "curves.png"
  assert plot.main([str(workdir), "--phase", "1", "--out", str(out)]) == 0
  data = out.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
  curves = plot.read_curves(workdir, 1)
  assert {"val/mi", "val/au", "val/kl", "val/rec"} <= set(curves)
  assert plot.main([str(tmp_path / "nothing"), "--out", str(out)]) == 1


def test_relative_workdir_checkpoints_save_and_restore(tmp_path, monkeypatch):
  """`--workdir runs/demo` is relative; orbax only takes absolute paths."""
  monkeypatch.chdir(tmp_path)
  ckpts = ckpt_lib.PhaseCheckpoints("runs/demo/phase1", keep=2)
  params = {"w": jnp.arange(6.0).reshape(2, 3)}
  opt_state = {"m": jnp.ones(3)}
  ckpts.save(5, params, opt_state, {"step": 5})
  ckpts.wait()
  ckpts.close()
  restored, step = ckpt_lib.restore_params("runs/demo/phase1")
  assert step == 5
  np.testing.assert_array_equal(restored["w"], params["w"])
  assert (tmp_path / "runs" / "demo" / "phase1" / "checkpoints" / "5").is_dir()


class _RecordingModel:
  """Stands in for the VAE in compute_loss: records what each part of the network is given
  and returns fixed logits, mu and logvar (so the loss can be recomputed in numpy)."""

  def __init__(self, vocab=16, latent=4):
    from t5vae_jax import t5 as t5_lib

    self.config = t5_lib.T5Config(
        vocab_size=vocab, d_model=8, d_kv=2, d_ff=8, num_layers=1, num_heads=1
    )
    self.latent, self.calls = latent, []

  def apply(self, variables, input_ids, attention_mask, decoder_input_ids, **kwargs):
    self.calls.append(
        dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            **kwargs,
        )
    )
    batch, length = input_ids.shape
    rng = np.random.default_rng(0)
    return dict(
        logits=jnp.asarray(rng.normal(size=(batch, length, self.config.vocab_size)), jnp.float32),
        mu=jnp.asarray(0.1 * rng.normal(size=(batch, self.latent)), jnp.float32),
        logvar=jnp.zeros((batch, self.latent), jnp.float32),
    )


def test_denoising_goes_to_the_encoder_only_and_only_in_training():
  """compute_loss: the encoder gets the noised ids and mask (noise.delete_tokens with the
  step's noise rng), the decoder's inputs (shifted) and the loss's targets stay clean; with
  train=False neither the noise nor the KL floor applies and dropout is off."""
  from t5vae_jax import noise

  model = _RecordingModel()
  config = demo.get_config()
  config.denoise_rate, config.kl_floor = 0.5, 1.0
  batch = random_batch(rows=8, length=12, vocab=16, seed=3)
  ids, mask = batch["input_ids"], batch["attention_mask"]
  rngs = train_lib.step_rngs(jax.random.key(0), 7)
  want_ids, want_mask = jax.jit(noise.delete_tokens, static_argnums=(3, 4))(
      rngs["noise"], ids, mask, 0.5, config.denoise_mode
  )
  assert model.config.eos_token_id == 1 and model.config.pad_token_id == 0
  assert not np.array_equal(want_ids, ids)  # the noise deletes something here
  clean_decoder_ids = np.concatenate([np.zeros((8, 1), np.int32), ids[:, :-1]], axis=1)

  results = {}
  for train in (True, False):

    def loss_and_inputs(batch, rngs):
      _, (aux, out) = train_lib.compute_loss(
          {}, batch, rngs, model=model, beta=1.0, config=config, train=train
      )
      call = {k: v for k, v in model.calls[-1].items() if isinstance(v, jax.Array)}
      return aux, out, call

    aux, out, call = jax.jit(loss_and_inputs)(batch, rngs)  # one compilation: fast on CPU
    call["deterministic"] = model.calls[-1]["deterministic"]
    np.testing.assert_array_equal(call["input_ids"], ids)
    np.testing.assert_array_equal(call["attention_mask"], mask)
    np.testing.assert_array_equal(call["decoder_input_ids"], clean_decoder_ids)
    assert call["deterministic"] is (not train)
    enc_ids, enc_mask = (want_ids, want_mask) if train else (ids, mask)
    np.testing.assert_array_equal(call["encoder_input_ids"], enc_ids)
    np.testing.assert_array_equal(call["encoder_attention_mask"], enc_mask)
    # The reconstruction targets are the clean ids (numpy: -log softmax at each real token).
    logits = np.asarray(out["logits"], np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    rec = -(np.take_along_axis(logp, ids[..., None], -1)[..., 0] * mask).sum(-1).mean()
    np.testing.assert_allclose(aux["rec"], rec, rtol=1e-5)
    results[train] = aux
  # KL of mu ~ 0.1 is far below the floor of 1 nat per dimension (4 dims): floored in training
  # only.
  assert float(results[True]["kl"]) < 0.5
  np.testing.assert_allclose(results[True]["kl_thresholded"], 4.0, rtol=1e-6)
  np.testing.assert_allclose(results[False]["kl_thresholded"], results[False]["kl"], rtol=1e-6)


def test_bfloat16_train_step_keeps_params_adam_state_loss_and_kl_float32():
  """The dtype contract: with model.dtype bfloat16 the network computes in bf16 (its layers'
  outputs are bf16; the logits are cast up) while params, Adam state, loss and KL stay float32
  through a compiled step."""
  state, step_fn, batch, model = tiny_step("bfloat16")
  _, inter = jax.eval_shape(
      lambda p: model.apply(
          {"params": p},
          batch["input_ids"],
          batch["attention_mask"],
          batch["input_ids"],
          rngs={"latent": jax.random.key(0)},
          capture_intermediates=True,
          mutable=["intermediates"],
      ),
      state.params,
  )
  layer_dtypes = {
      jax.tree_util.keystr(k): v.dtype for k, v in jax.tree_util.tree_flatten_with_path(inter)[0]
  }
  encoder_ffn = [k for k in layer_dtypes if "encoder" in k and "DenseReluDense" in k]
  assert encoder_ffn and all(layer_dtypes[k] == jnp.bfloat16 for k in encoder_ffn), layer_dtypes
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
  before = _flat(jax.device_get(state.params))
  state, aux = step_fn(state, batch)
  aux = jax.device_get(aux)
  for key in ("loss", "rec", "kl", "kl_thresholded", "grad_norm"):
    assert aux[key].dtype == np.float32 and np.isfinite(aux[key]), key
  assert aux["finite"] == 1.0
  floats = [
      l
      for l in jax.tree.leaves((state.params, state.opt_state))
      if jnp.issubdtype(l.dtype, jnp.floating)
  ]
  assert floats and all(l.dtype == jnp.float32 for l in floats)
  after = _flat(jax.device_get(state.params))
  assert all(after[k].dtype == np.float32 for k in after)
  assert any(not np.array_equal(after[k], before[k]) for k in before)  # it trained


def test_phase1_trains_with_beta_zero(phase1_run):
  """The KL weight the phase 1 step used, as logged (mean over each logging window): 0."""
  workdir, _, _ = phase1_run
  rows = [
      r for r in train_lib.read_metrics(workdir / "phase1" / "metrics.jsonl") if "train/beta" in r
  ]
  assert len(rows) >= 10 and all(r["train/beta"] == 0.0 for r in rows)
  assert any(r["train/kl"] > 0 for r in rows)  # a KL there was, just not weighted


def test_phase2_beta_follows_the_configured_schedule(tmp_path_factory):
  """The KL weight the phase 2 step used at each step, as logged (the mean over each window of
  log_every_steps) by the shared demo run: linear from 0 at step 0 to 1 over beta.epochs
  epochs of steps_per_epoch = num_train // batch_size batches (one bucket), then 1."""
  from _demo_checkpoint import demo_workdir

  pdir = demo_workdir(tmp_path_factory) / "phase2"
  config = json.loads((pdir / "config.json").read_text())
  assert config["beta"]["schedule"] == "linear" and config["data"]["bucket_lengths"] == [16]
  steps_per_epoch = config["data"]["synthetic"]["num_train"] // config["batch_size"]
  ramp = steps_per_epoch * config["beta"]["epochs"]  # 62 * 2 = 124 steps
  every = config["log_every_steps"]
  rows = [r for r in train_lib.read_metrics(pdir / "metrics.jsonl") if "train/beta" in r]
  assert [r["step"] for r in rows] == list(range(every, 801, every))
  for row in rows:
    window = np.arange(row["step"] - every, row["step"], dtype=np.float64)  # steps before update
    want = np.mean(np.minimum(window / ramp, 1.0))
    np.testing.assert_allclose(row["train/beta"], want, rtol=1e-6, err_msg=str(row["step"]))
  assert rows[0]["train/beta"] < 0.5 and rows[-1]["train/beta"] == 1.0
