"""The two-phase trainer: freezing, sharding invariance, phase hand-over, kill and resume."""
import json
import os
import pathlib
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
    "data.synthetic.num_train": 256, "data.synthetic.num_valid": 48, "data.synthetic.num_test": 48,
    "batch_size": 16, "phase1.epochs": 1.5, "phase2.epochs": 1.0, "log_every_steps": 2,
    "eval_every_steps": 1000, "checkpoint_every_steps": 4, "progress_bar": False,
    "model.t5.d_model": 32, "model.t5.d_ff": 64, "model.t5.d_kv": 8, "model.latent_dim": 4,
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
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


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
  params = {"encoder": {"w": jnp.ones((3, 3))}, "decoder": {"w": jnp.ones((3, 3))},
            "mu": {"kernel": jnp.ones((3, 2))}, "shared": {"embedding": jnp.ones((5, 3))}}
  config = demo.get_config()
  tx = train_lib.make_optimizer(config, 1, params)
  state = tx.init(params)
  sizes = sum(x.size for x in jax.tree.leaves(state))
  # Adam keeps mu and nu for the trainable leaves only: encoder (9) and mu (6).
  assert sizes == 2 * (9 + 6) + 1  # + the step count
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  assert float(jnp.abs(updates["decoder"]["w"]).max()) == 0.0
  assert float(jnp.abs(updates["encoder"]["w"]).max()) > 0.0
  config.phase1.freeze_decoder = False
  labels = train_lib.trainable_labels(params, 1, freeze_decoder=False)
  assert labels["decoder"]["w"] == "trainable" and labels["shared"]["embedding"] == "frozen"


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


def test_same_loss_on_1_and_8_devices_with_and_without_fsdp(phase1_run):
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
  batch = {"input_ids": np.where(mask > 0, ids, 0), "attention_mask": mask,
           "example_weights": np.ones(16, np.float32)}
  results = []
  for devices, fsdp in ((jax.devices()[:1], False), (jax.devices(), False),
                        (jax.devices(), True)):
    mesh = sharding.make_mesh(devices)
    tx = train_lib.make_optimizer(config, 2, params)
    state, shardings = train_lib.create_train_state(params, tx, mesh, fsdp)
    beta_fn = train_lib.make_beta_fn(config, 2, 16, 16)
    step = train_lib.compile_train_step(setup.model, tx, beta_fn, jax.random.key(0), config,
                                        mesh, shardings)
    if fsdp and len(devices) == 8:
      specs = [s.spec for s in jax.tree.leaves(shardings.params)]
      assert any(sharding.DATA_AXIS in spec for spec in specs)  # something is really split
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
  # Only the SIGTERM save and the final one; 3 epochs leave time to send the signal mid-run.
  extra = {"checkpoint_every_steps": 1000, "phase1.epochs": 3.0}
  straight = tmp_path / "straight"
  train_lib.train_and_evaluate(tiny_config(tfds_dir, **extra), str(straight), phase=1)

  killed = tmp_path / "killed"
  cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/demo.py"),
         "--phase", "1", "--workdir", str(killed)] + flag_overrides(tfds_dir, **extra)
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  metrics = killed / "phase1" / "metrics.jsonl"
  try:
    assert _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2,
                     proc, 180), proc.communicate()[0] if proc.poll() is not None else "timeout"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 143, out
  assert "SIGTERM: saved step" in out
  saved = ckpt_lib.PhaseCheckpoints(killed / "phase1").latest_step()
  a, step_a = ckpt_lib.restore_params(straight / "phase1")
  assert 4 <= saved < step_a  # stopped mid-run, after at least two logged steps

  resumed = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming {killed / 'phase1'} at step {saved}" in resumed.stderr
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
