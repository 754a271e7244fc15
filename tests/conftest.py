"""Test setup: 8 simulated CPU devices (for sharding tests) before JAX is imported anywhere."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# One compilation cache for this session and the train.py / eval.py subprocesses it starts:
# a program compiled once (same shapes, same devices) is loaded, not compiled again.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile

  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="t5vae_jax_cache_")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pathlib

import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def parse_training_flags(*args):
  """cli.parse_flags over train.py's flags on a fresh FlagValues: (exit status, stderr) of a
  flag mistake, else the parsed FlagValues."""
  import contextlib
  import io

  from absl import flags

  from t5vae_jax import cli

  argv = ["train.py", *args]
  flag_values = flags.FlagValues()
  cli.define_training_flags(flag_values, sys_argv=argv)
  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err):
      cli.parse_flags(argv, flag_values)
  except SystemExit as e:
    return e.code, err.getvalue()
  return flag_values


def torch_available() -> bool:
  try:
    import torch  # noqa: F401

    return True
  except ImportError:
    return False


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  return FIXTURES


@pytest.fixture(scope="session")
def tiny_t5():
  """(config, params) of the tiny random v1.0 Hugging Face checkpoint in tests/fixtures."""
  from t5vae_jax import pretrained

  return pretrained.load_t5(str(FIXTURES / "t5_v1_0"))
