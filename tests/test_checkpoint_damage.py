"""When things go wrong with checkpoints: a damaged newest checkpoint, failed saves, and how
soon SIGTERM is honoured.

The damage is done to orbax-checkpoint's real on-disk layout (a step directory holds
``params/``, ``opt_state/`` (each ``_METADATA``, ``manifest.ocdbt`` and the array data under
``ocdbt.process_0/d/``) and ``meta/metadata``, the JSON of step and data position); the failed
saves come from patching the filesystem call orbax makes (tests run as root, whom chmod does
not stop).
"""

import json
import shutil

import numpy as np
import pytest

from t5vae_jax import checkpoint as ckpt_lib
from t5vae_jax import train_lib
from test_train import tiny_config, _flat  # noqa: F401  (shared tiny config)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds_damage")


def _config(tfds_dir, **extra):
  return tiny_config(tfds_dir, checkpoint_every_steps=2, keep_checkpoints=10, **extra)


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, tfds_dir):
  """A workdir whose phase 1 has checkpoints 2 and 4, and step 4's params (flattened)."""
  workdir = tmp_path_factory.mktemp("two_ckpts")
  train_lib.train_and_evaluate(_config(tfds_dir), str(workdir), phase=1, max_steps=4)
  params, step = ckpt_lib.restore_params(workdir / "phase1")
  assert step == 4
  return workdir, _flat(params)


def _truncate_an_array_file(step_dir):
  biggest = max(
      (step_dir / "params" / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size
  )
  with open(biggest, "r+b") as f:
    f.truncate(biggest.stat().st_size // 3)


def _delete_the_metadata(step_dir):
  (step_dir / "params" / "_METADATA").unlink()


def _delete_the_meta_item(step_dir):
  (step_dir / "meta" / "metadata").unlink()


def _corrupt_the_data_position(step_dir):
  path = step_dir / "meta" / "metadata"
  meta = json.loads(path.read_text())
  meta["data"]["batch_in_epoch"] = 1000  # past the end of an epoch of 16 batches
  path.write_text(json.dumps(meta))


DAMAGES = {
    "truncated array file": (_truncate_an_array_file, "Exception: "),
    "missing metadata": (_delete_the_metadata, "params/_METADATA is missing"),
    "missing meta item": (_delete_the_meta_item, ""),
    "corrupt data position": (_corrupt_the_data_position, "Invalid iterator state"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_resume_falls_back_past_a_damaged_newest_checkpoint(
    two_checkpoints, tfds_dir, tmp_path, capsys, damage
):
  """Step 4 damaged: one warning line names it and why, the run resumes at step 2, the damaged
  step is moved to damaged/4, and the rerun of steps 3-4 ends with bit-identical params."""
  source, params_4 = two_checkpoints
  workdir = tmp_path / "work"
  shutil.copytree(source, workdir)
  pdir = workdir / "phase1"
  damage_fn, reason = DAMAGES[damage]
  damage_fn(pdir / "checkpoints" / "4")
  capsys.readouterr()
  train_lib.train_and_evaluate(_config(tfds_dir), str(workdir), phase=1, max_steps=4)
  err = capsys.readouterr().err
  warnings = [line for line in err.splitlines() if line.startswith("warning: checkpoint")]
  assert len(warnings) == 1, err
  assert warnings[0].startswith(
      f"warning: checkpoint step 4 in {pdir / 'checkpoints'} does " f"not restore, skipping it: "
  )
  assert reason in warnings[0], warnings[0]
  assert f"resuming {pdir} at step 2" in err
  assert (pdir / "damaged" / "4" / "params" / "manifest.ocdbt").exists()
  params, step = ckpt_lib.restore_params(pdir)
  assert step == 4
  resumed = _flat(params)
  for k in params_4:
    np.testing.assert_array_equal(resumed[k], params_4[k], err_msg=k)


def test_no_checkpoint_restores_is_an_error_naming_each_step(two_checkpoints, tfds_dir, tmp_path):
  """Every step damaged: an error naming each step and why; nothing moved, no fresh start."""
  source, _ = two_checkpoints
  workdir = tmp_path / "work"
  shutil.copytree(source, workdir)
  pdir = workdir / "phase1"
  _delete_the_metadata(pdir / "checkpoints" / "4")
  _corrupt_the_data_position(pdir / "checkpoints" / "2")
  with pytest.raises(
      ckpt_lib.CheckpointDamagedError,
      match=r"no checkpoint in .*phase1/checkpoints restores \(tried step 4: .*; "
      r"step 2: ValueError: Invalid iterator state",
  ):
    train_lib.train_and_evaluate(_config(tfds_dir), str(workdir), phase=1, max_steps=4)
  assert sorted(p.name for p in (pdir / "checkpoints").iterdir()) == ["2", "4"]
  assert not (pdir / "damaged").exists()


# --------------------------------------------------------------------------------------------
# Failed saves: the filesystem calls orbax's local backend makes, failing as a read-only
# directory (EACCES) or a full disk (ENOSPC) make them fail.
# --------------------------------------------------------------------------------------------
def _fail_under(monkeypatch, root, *, deny_dirs=False, full_disk=False):
  import errno
  import os
  from etils.epath import backend

  real_makedirs, real_open = backend._OsPathBackend.makedirs, backend._OsPathBackend.open

  def makedirs(self, path, **kwargs):
    if deny_dirs and os.fspath(path).startswith(os.fspath(root)):
      raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
    return real_makedirs(self, path, **kwargs)

  def open_(self, path, mode):
    if full_disk and os.fspath(path).startswith(os.fspath(root)) and set(mode) & set("wa"):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
    return real_open(self, path, mode)

  monkeypatch.setattr(backend._OsPathBackend, "makedirs", makedirs)
  monkeypatch.setattr(backend._OsPathBackend, "open", open_)


def _tree(value):
  import jax.numpy as jnp

  return {"w": jnp.full((2, 3), float(value))}


@pytest.mark.parametrize("fault", ["read-only", "disk full"])
@pytest.mark.parametrize("which", ["latest", "best"])
def test_a_failed_save_is_one_line_naming_path_and_step(
    tmp_path, monkeypatch, caplog, fault, which
):
  """Save 1 succeeds, save 2 fails: CheckpointSaveError (a SystemExit: status 1) whose code is
  one line naming the step directory, the step and the OS error, and no traceback is logged
  from orbax's threads; step 1 still restores."""
  ckpts = ckpt_lib.PhaseCheckpoints(tmp_path, keep=3)

  def save(step):
    if which == "latest":
      ckpts.save(step, _tree(step), _tree(-step), {"step": step})
    else:
      ckpts.maybe_save_best(step, _tree(step), -float(step), "val/neg_elbo")

  save(1)
  ckpts.wait()
  sub = {"latest": "checkpoints", "best": "best"}[which]
  _fail_under(
      monkeypatch, tmp_path / sub, deny_dirs=fault == "read-only", full_disk=fault == "disk full"
  )
  with pytest.raises(ckpt_lib.CheckpointSaveError) as caught:
    save(2)
    ckpts.wait()
  why = (
      "PermissionError: [Errno 13] Permission denied"
      if fault == "read-only"
      else "OSError: [Errno 28] No space left on device"
  )
  assert caught.value.code.startswith(
      f"error: saving step 2 to {ckpt_lib.absolute(tmp_path) / sub / '2'} failed: {why}: "
  )
  assert "\n" not in caught.value.code
  assert not [r.getMessage() for r in caplog.records if r.exc_info]
  monkeypatch.undo()
  params, step = ckpt_lib.restore_params(tmp_path, which=which)
  assert step == 1
  np.testing.assert_array_equal(params["w"], _tree(1)["w"])


def test_a_failed_eval_json_write_keeps_the_previous_file(tmp_path, monkeypatch):
  path = tmp_path / "eval.json"
  ckpt_lib.write_text_atomically(path, '{"old": 1}\n')
  _fail_under(monkeypatch, tmp_path, full_disk=True)
  with pytest.raises(
      ckpt_lib.CheckpointSaveError,
      match=rf"^error: writing {path} failed: OSError: \[Errno 28\] No space",
  ):
    ckpt_lib.write_text_atomically(path, '{"new": 2}\n')
  assert path.read_text() == '{"old": 1}\n'
  assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


# --------------------------------------------------------------------------------------------
# train.py end to end: the one-line exit on a failed save, and how soon SIGTERM is honoured.
# --------------------------------------------------------------------------------------------
def slow_matmuls(step, n):
  """``step``, after ``n`` dependent 512x512 matmuls (a step of known device time)."""
  import jax
  import jax.numpy as jnp

  def body(i, x):
    return jnp.tanh(x @ x * 1e-3 + step.astype(jnp.float32))

  x = jax.lax.fori_loop(0, n, body, jnp.ones((512, 512)))
  return step + (x[0, 0] * 0).astype(step.dtype)


_FAULTY_TRAIN = """
import errno, os, sys, time
import jax, jax.numpy as jnp
from test_checkpoint_damage import slow_matmuls
from etils.epath import backend
from t5vae_jax import train_command, train_lib
deny = os.environ.get("DENY_MKDIR")  # a path fragment: its directories are "read-only"
real_makedirs = backend._OsPathBackend.makedirs
def makedirs(self, path, **kwargs):
  if deny and deny in os.fspath(path):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
  return real_makedirs(self, path, **kwargs)
backend._OsPathBackend.makedirs = makedirs
slow_n = int(os.environ.get("SLOW_MATMULS", "0"))
if slow_n:  # a slow step: its new step counter depends on slow_n 512x512 matmuls (no host
  real_step = train_lib.train_step  # callback: CPU runs those synchronously, not queued)
  def train_step(state, batch, **kwargs):
    state, aux = real_step(state, batch, **kwargs)
    return state.replace(step=slow_matmuls(state.step, slow_n)), aux
  train_lib.train_step = train_step
sys.argv[0] = "train.py"
train_command.run()
"""


def _faulty_train(tmp_path, tfds_dir, workdir, env_extra, **extra):
  import os
  import subprocess
  import sys
  from test_train import ROOT, flag_overrides

  script = tmp_path / "faulty_train.py"
  script.write_text(_FAULTY_TRAIN)
  cmd = [
      sys.executable,
      str(script),
      "--config",
      str(ROOT / "configs/demo.py"),
      "--phase",
      "1",
      "--workdir",
      str(workdir),
  ] + flag_overrides(tfds_dir, **extra)
  env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", **env_extra)
  return subprocess.Popen(
      cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )


def test_train_py_exits_1_with_one_line_when_a_save_fails(tmp_path, tfds_dir):
  """Step 4's directory cannot be made: exit status 1, the last line names step and path, no
  traceback; step 2 (saved before) is intact and the run stopped there."""
  workdir = tmp_path / "work"
  proc = _faulty_train(
      tmp_path, tfds_dir, workdir, {"DENY_MKDIR": "/checkpoints/4."}, checkpoint_every_steps=2
  )
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 1, err[-3000:]
  ckpt_dir = workdir / "phase1" / "checkpoints"
  assert err.splitlines()[-1].startswith(
      f"error: saving step 4 to {ckpt_dir / '4'} failed: PermissionError: [Errno 13] "
      f"Permission denied: '{ckpt_dir}/4.orbax-checkpoint-tmp"
  ), err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  assert sorted(p.name for p in ckpt_dir.iterdir()) == ["2"]
  assert ckpt_lib.restore_params(workdir / "phase1")[1] == 2
  steps = [r["step"] for r in train_lib.read_metrics(workdir / "phase1" / "metrics.jsonl")]
  assert max(steps) <= 4, steps


def test_sigterm_is_honoured_within_a_few_step_times(tmp_path, tfds_dir):
  """With ~1.5 s steps and nothing syncing the loop (no logging, no checkpoint until the end),
  SIGTERM mid-run ends it (status 143, a checkpoint saved) within 3 step times plus the save,
  not after the 20-odd steps a free-running loop would have queued."""
  import signal
  import time
  import jax
  import jax.numpy as jnp

  slow = jax.jit(slow_matmuls, static_argnums=1)
  slow(jnp.int32(0), 200).block_until_ready()
  t = time.perf_counter()
  slow(jnp.int32(0), 200).block_until_ready()
  n = max(200, int(200 * 1.5 / (time.perf_counter() - t)))
  t = time.perf_counter()
  slow(jnp.int32(0), n).block_until_ready()
  step_s = max(1.0, time.perf_counter() - t)
  workdir = tmp_path / "work"
  proc = _faulty_train(
      tmp_path,
      tfds_dir,
      workdir,
      {"SLOW_MATMULS": str(n)},
      log_every_steps=1000,
      checkpoint_every_steps=1000,
      **{"phase1.epochs": 2.0},
  )  # 32 steps
  lines = []
  try:
    for line in proc.stderr:
      lines.append(line)
      if line.startswith("data: "):
        break
    time.sleep(15)  # compiled and some steps in: a free-running loop has queued them all
    assert proc.poll() is None, "".join(lines)[-3000:]
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    took = time.perf_counter() - sent
  finally:
    if proc.poll() is None:
      proc.kill()
  err = "".join(lines) + rest
  assert proc.returncode == 143, err[-3000:]
  saved = ckpt_lib.PhaseCheckpoints(workdir / "phase1").latest_step()
  assert f"SIGTERM: saved step {saved} in" in rest
  save_allowance_s = 5.0  # the save of the tiny model and the process's exit
  print(f"SIGTERM to exit: {took:.2f} s (step {step_s:.2f} s, {n} matmuls), saved step {saved}")
  assert took < 3 * step_s + save_allowance_s, (took, step_s, err[-3000:])
