"""What train.py and eval.py run: set-up common to both, and one clear line on user errors."""
from __future__ import annotations

import os
import sys

from absl import logging


def setup_runtime() -> None:
  """Multi-process initialisation when launched that way; quieter logs from other processes."""
  import jax
  if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("T5VAE_NUM_PROCESSES"):
    jax.distributed.initialize(
        coordinator_address=os.environ.get("JAX_COORDINATOR_ADDRESS"),
        num_processes=int(os.environ["T5VAE_NUM_PROCESSES"])
        if "T5VAE_NUM_PROCESSES" in os.environ else None,
        process_id=int(os.environ["T5VAE_PROCESS_ID"])
        if "T5VAE_PROCESS_ID" in os.environ else None)
  # orbax and jax log every save at INFO; keep the console to our progress bar and summaries
  # (pass --verbosity=0 to see them).
  if logging.get_verbosity() == logging.INFO and "--verbosity" not in " ".join(sys.argv):
    logging.set_verbosity(logging.WARNING)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.ERROR)


def run_training(config, workdir: str, phase: int):
  from t5vae_jax import train_lib
  setup_runtime()
  return train_lib.train_and_evaluate(config, workdir, phase)
