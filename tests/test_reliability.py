"""Faults during training: non-finite losses (skip or stop) and kills at random moments."""
import importlib.util
import math
import pathlib

import numpy as np
import pytest

from t5vae_jax import checkpoint as ckpt_lib
from t5vae_jax import train_lib
from test_train import tiny_config, _flat  # noqa: F401  (shared tiny config)

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds_rel")


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, tfds_dir):
  config = tiny_config(tfds_dir, debug_nan_steps=(2, 5), on_nonfinite="skip",
                       **{"phase1.epochs": 0.5})
  train_lib.train_and_evaluate(config, str(tmp_path), phase=1)
  rows = train_lib.read_metrics(tmp_path / "phase1" / "metrics.jsonl")
  train_rows = [r for r in rows if "train/num_skipped" in r]
  assert train_rows[-1]["train/num_skipped"] == 2
  # The rows covering the poisoned steps say so (finite < 1 on average).
  assert min(r["train/finite"] for r in train_rows) < 1.0
  params, _ = ckpt_lib.restore_params(tmp_path / "phase1")
  assert all(np.isfinite(v).all() for v in _flat(params).values())


def test_nonfinite_stop_keeps_the_last_good_checkpoint(tmp_path, tfds_dir):
  config = tiny_config(tfds_dir, debug_nan_steps=(5,), on_nonfinite="stop",
                       checkpoint_every_steps=2, **{"phase1.epochs": 0.5})
  with pytest.raises(train_lib.TrainingError,
                     match=r"non-finite loss or gradient at step 6 .* last good checkpoint is "
                           r"step 4 in .*phase1/checkpoints"):
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
  overrides = soak.DEFAULT_OVERRIDES + [f"--config.data.tfds_dir={tfds_dir}",
                                        "--config.phase1.epochs=1"]
  ok = soak.run(2, tmp_path, overrides, seed=1, log=log.append)
  assert ok, "\n".join(log)
  assert any("SIGKILL" in line for line in log), log
