"""A clean console: the known-harmless third-party warnings (runtime.KNOWN_HARMLESS_MESSAGES) stay
off it, real warnings still get through. One tiny train.py run on fresh data (TFDS prepares it)
with PyTorch hidden, as a torch-less install sees it; orbax's read-only restore (phase 2, eval)
and the filter itself are checked in this process."""

import logging
import os
import pathlib
import subprocess
import sys
import warnings

from absl import logging as absl_logging
import pytest

from t5vae_jax import runtime

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

NOISE = (
    "Using custom data configuration",
    "Variant folder",
    "Given directory is read only",
    "CheckpointManagerOptions.read_only=True",
    "PyTorch was not found",
    "Editable installation",
)

# train.py as run by a Python without torch: transformers then warns at import.
WITHOUT_TORCH = (
    "import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def test_train_py_prints_no_known_noise(tmp_path):
  from test_train import flag_overrides

  result = subprocess.run(
      [
          sys.executable,
          "-c",
          WITHOUT_TORCH,
          str(ROOT / "train.py"),
          f"--config={ROOT / 'configs/demo.py'}",
          "--phase=1",
          f"--workdir={tmp_path / 'w'}",
          *flag_overrides(tmp_path / "tfds", **{"phase1.epochs": 0.2}),
      ],
      cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=str(ROOT)),
      capture_output=True,
      text=True,
      timeout=300,
  )
  out = result.stdout + result.stderr
  assert result.returncode == 0, out[-3000:]
  assert "startup: backend cpu" in out and "data: train num_examples=256" in out, out
  assert [m for m in NOISE if m in out] == [], out


@pytest.fixture
def quiet(caplog):
  """quiet_known_noise() in this process, undone afterwards; caplog sees what gets through."""
  runtime.quiet_known_noise()
  runtime.quiet_known_noise()  # twice: one filter per logger
  yield caplog
  for name in {name for name, _, _ in runtime.KNOWN_HARMLESS_MESSAGES}:
    logging.getLogger(name).removeFilter(runtime._KNOWN_NOISE_FILTER)


def emit(logger_name, pathname, msg, *args):
  """A WARNING record as `logger_name` logs it from the file `pathname`."""
  logger = logging.getLogger(logger_name)
  logger.handle(logger.makeRecord(logger_name, logging.WARNING, pathname, 1, msg, args, None))


def test_real_warnings_get_through(quiet):
  assert sum(f is runtime._KNOWN_NOISE_FILTER for f in logging.getLogger("absl").filters) == 1
  site = "/venv/lib/python3.11/site-packages"
  emit(
      "absl",
      f"{site}/tensorflow_datasets/core/dataset_builder.py",
      "Using custom data configuration: %s",
      "SyntheticConfig(name='n8')",
  )
  emit("transformers", f"{site}/transformers/__init__.py", "PyTorch was not found. Models ...")
  absl_logging.warning("a real warning of ours: %d lines skipped", 3)
  # The same words from another library, or from our code, are not the known noise.
  emit("absl", f"{site}/other_lib/x.py", "Using custom data configuration: %s", "mine")
  emit(
      "absl",
      f"{site}/orbax/checkpoint/checkpoint_manager.py",
      "%s is read only, save will be skipped",
      "/runs/x",
  )
  emit(
      "transformers.tokenization_utils_base",
      f"{site}/transformers/tokenization_utils_base.py",
      "Token indices sequence length is longer than the specified maximum",
  )
  assert [r.getMessage() for r in quiet.records] == [
      "a real warning of ours: 3 lines skipped",
      "Using custom data configuration: mine",
      "/runs/x is read only, save will be skipped",
      "Token indices sequence length is longer than the specified maximum",
  ]
  for category in (UserWarning, DeprecationWarning, RuntimeWarning):
    with pytest.warns(category, match="still shown"):
      warnings.warn("still shown", category)


def test_restoring_a_checkpoint_read_only_is_quiet(quiet, tmp_path):
  import numpy as np
  from t5vae_jax import checkpoint as ckpt_lib

  absl_logging.set_verbosity(absl_logging.WARNING)
  ckpts = ckpt_lib.PhaseCheckpoints(tmp_path, keep=1, asynchronous=False)
  ckpts.save(3, {"w": np.zeros(2, np.float32)}, {"m": np.zeros(2, np.float32)}, {"step": 3})
  ckpts.close()
  quiet.clear()
  params, step = ckpt_lib.restore_params(tmp_path)  # as phase 2 and eval.py open phase 1
  assert step == 3 and params["w"].shape == (2,)
  assert [r.getMessage() for r in quiet.records if r.levelno >= logging.WARNING] == []
