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
