"""Faults during training: non-finite losses and gradients (skip or stop) and kills at random
moments.

The faults are injected from here, not by the trainer: ``poisoned_train_step`` wraps
``train_lib.train_step`` (monkeypatched, so the real loop and the real compiled step run) with
a model whose loss is NaN at some steps (the gradient stays finite: the NaN logits pass none
back, the KL term its usual one) or whose gradient is NaN at others (the loss stays finite).
"""

import importlib.util
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5vae_jax import checkpoint as ckpt_lib
from t5vae_jax import train_lib
from test_train import tiny_config, _flat  # noqa: F401  (shared tiny config)

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds_rel")


@jax.custom_vjp
def _nan_gradient(x, hit):
  return x


def _nan_gradient_fwd(x, hit):
  return x, hit


def _nan_gradient_bwd(hit, g):
  return jnp.where(hit, jnp.nan, g), None


_nan_gradient.defvjp(_nan_gradient_fwd, _nan_gradient_bwd)


class _PoisonedModel:
  """The model, with NaN logits (forward only) or a NaN gradient of mu at the given steps."""

  def __init__(self, model, step, loss_steps, grad_steps):
    self.model, self.config = model, model.config
    self.loss_hit = jnp.isin(step, jnp.asarray(loss_steps or (-1,)))
    self.grad_hit = jnp.isin(step, jnp.asarray(grad_steps or (-1,)))

  def apply(self, *args, **kwargs):
    out = dict(self.model.apply(*args, **kwargs))
    # jnp.where's gradient to the unselected branch is 0: a NaN loss with a finite gradient.
    out["logits"] = jnp.where(self.loss_hit, jnp.nan, out["logits"])
    out["mu"] = _nan_gradient(out["mu"], self.grad_hit)
    return out


def poisoned_train_step(loss_steps=(), grad_steps=()):
  """``train_lib.train_step`` with NaN losses at ``loss_steps`` and NaN gradients at
  ``grad_steps`` (0-based step numbers: the state's step before the update)."""
  real = train_lib.train_step

  def step(state, batch, *, model, **kwargs):
    return real(
        state, batch, model=_PoisonedModel(model, state.step, loss_steps, grad_steps), **kwargs
    )

  return step


def _saved_state(phase_dir, step):
  """(params, opt_state) of a checkpoint, flattened to numpy: what a skipped step must not
  change."""
  import orbax.checkpoint as ocp

  path = ckpt_lib.absolute(phase_dir) / "checkpoints" / str(step)
  with ocp.StandardCheckpointer() as checkpointer:
    return _flat({k: checkpointer.restore(path / k) for k in ("params", "opt_state")})


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, tfds_dir, monkeypatch):
  """A NaN loss (its gradient finite) at step 2 and a NaN gradient (loss finite) at step 5
  (1-based, as logged): each update is skipped, so params and Adam state are bit-identical
  across it (the checkpoints before and after), and counted; the other steps do update (Adam
  momentum alone would move the params under a zero gradient)."""
  monkeypatch.setattr(train_lib, "train_step", poisoned_train_step((1,), (4,)))
  config = tiny_config(
      tfds_dir,
      on_nonfinite="skip",
      log_every_steps=1,
      checkpoint_every_steps=1,
      keep_checkpoints=100,
      **{"phase1.epochs": 6 / 16},
  )  # 6 steps of 16 rows out of 256
  train_lib.train_and_evaluate(config, str(tmp_path), phase=1)
  pdir = tmp_path / "phase1"
  rows = {
      r["step"]: r
      for r in train_lib.read_metrics(pdir / "metrics.jsonl")
      if "train/num_skipped" in r
  }
  assert sorted(rows) == list(range(1, 7))
  assert [rows[s]["train/num_skipped"] for s in rows] == [0, 1, 1, 1, 2, 2]
  assert [rows[s]["train/finite"] for s in rows] == [1, 0, 1, 1, 0, 1]
  assert math.isnan(rows[2]["train/loss"]) and math.isfinite(rows[2]["train/grad_norm"])
  assert math.isfinite(rows[5]["train/loss"]) and not math.isfinite(rows[5]["train/grad_norm"])
  saved = {s: _saved_state(pdir, s) for s in range(1, 7)}
  for step in range(2, 7):
    before, after = saved[step - 1], saved[step]
    assert before.keys() == after.keys()
    if step in (2, 5):
      for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=f"step {step}: {k}")
    else:
      assert any(not np.array_equal(after[k], before[k]) for k in before), step
  assert all(np.isfinite(v).all() for v in saved[6].values())


def test_nonfinite_stop_keeps_the_last_good_checkpoint(tmp_path, tfds_dir, monkeypatch):
  monkeypatch.setattr(train_lib, "train_step", poisoned_train_step((5,)))
  config = tiny_config(
      tfds_dir, on_nonfinite="stop", checkpoint_every_steps=2, **{"phase1.epochs": 0.5}
  )
  with pytest.raises(
      train_lib.TrainingError,
      match=r"non-finite loss or gradient at step 6 .* last good checkpoint is "
      r"step 4 in .*phase1/checkpoints",
  ):
    train_lib.train_and_evaluate(config, str(tmp_path), phase=1)
  params, step = ckpt_lib.restore_params(tmp_path / "phase1")
  assert step == 4
  assert all(np.isfinite(v).all() for v in _flat(params).values())


def test_sigkill_at_random_moments_then_resume_gives_identical_params(tmp_path, tfds_dir):
  """A short version of scripts/kill_resume_soak.py (the 20-kill run is recorded on the issue)."""
  spec = importlib.util.spec_from_file_location("soak", ROOT / "scripts" / "kill_resume_soak.py")
  soak = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(soak)
  log = []
  overrides = soak.DEFAULT_OVERRIDES + [
      f"--config.data.tfds_dir={tfds_dir}",
      "--config.phase1.epochs=1",
  ]
  ok = soak.run(1, tmp_path, overrides, seed=1, log=log.append)
  assert ok, "\n".join(log)
  # The kill came after a completed checkpoint: the final run resumed from it.
  kills = [line for line in log if line.startswith("kill ")]
  assert len(kills) == 1 and "SIGKILL" in kills[0], log
  assert any(line.startswith("final run:") and "resumed at step" in line for line in log), log
  assert log[-1].endswith("params identical: True"), log
