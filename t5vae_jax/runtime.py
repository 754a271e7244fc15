"""Start-up of a command's process: the multi-process job, log levels, the hub probe, and
third-party warnings that say nothing the user can act on.

Nothing heavy is imported at module level; JAX is imported by ``setup_runtime`` itself.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import logging

from t5vae_jax import errors
from t5vae_jax import hub

HUB_TIMEOUT_S = hub.HUB_TIMEOUT_S  # T5VAE_HUB_TIMEOUT, seconds


def info(message: str) -> None:
  """A line for the user on stderr, from the lead process only (absl INFO is left to the
  libraries' chatter)."""
  import jax

  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


def setup_runtime() -> None:
  """Joins a multi-process job when launched as one; quieter logs from other processes.

  TPU pod slices (and SLURM / Open MPI GPU clusters) are detected by
  ``jax.distributed.initialize()`` itself: set ``T5VAE_DISTRIBUTED=1``. Elsewhere (several GPU
  nodes, or processes on one machine) name the job explicitly with
  ``T5VAE_COORDINATOR_ADDRESS=host:port``, ``T5VAE_NUM_PROCESSES`` and ``T5VAE_PROCESS_ID``.
  """
  quiet_known_noise()
  import jax

  env = os.environ
  explicit = "T5VAE_COORDINATOR_ADDRESS" in env
  if explicit or env.get("T5VAE_DISTRIBUTED") == "1":
    if jax.config.jax_platforms in (None, "", "cpu") and explicit:
      # CPU-only processes (tests, debugging) need a collectives backend across processes.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if explicit:
      kwargs = dict(
          coordinator_address=env["T5VAE_COORDINATOR_ADDRESS"],
          num_processes=int(env["T5VAE_NUM_PROCESSES"]),
          process_id=int(env["T5VAE_PROCESS_ID"]),
      )
    jax.distributed.initialize(**kwargs)
  # orbax and jax log every save at INFO; keep the console to our progress bar and summaries
  # (pass --verbosity=0 to see them).
  if logging.get_verbosity() == logging.INFO and "--verbosity" not in " ".join(sys.argv):
    logging.set_verbosity(logging.WARNING)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.ERROR)


def check_hub(names: Sequence[str], timeout_s: float = HUB_TIMEOUT_S) -> bool:
  """Whether the Hugging Face hub answers, asked only when one of ``names`` is a hub id.

  huggingface_hub's calls wait without a timeout unless given one, so on a machine whose
  firewall drops packets ``snapshot_download`` waits forever (measured: over 5 minutes,
  silently); pretrained.resolve gives each of its requests T5VAE_HUB_TIMEOUT, and each loader
  call asks again. One HEAD request with a timeout first: when it gets no answer,
  huggingface_hub is put in offline mode (``hub.offline_reason`` says why), so a model in the
  local cache still loads and any other fails at once with pretrained.CheckpointError (pass a
  local directory). HF_HUB_OFFLINE=1 skips the check.
  """
  import urllib.error
  import urllib.request

  if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
    return False
  if not any(hub.is_hub_id(name) for name in names if name):
    return True
  endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
  try:
    urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout_s)
    return True
  except urllib.error.HTTPError:
    return True  # it answered
  except Exception as e:
    reason = getattr(e, "reason", e)
    # Not printed: a cached model then loads as usual, and a missing one fails with one line.
    logging.info(
        "the Hugging Face hub (%s) does not answer (%s: %s); using the local cache "
        "only (HF_HUB_OFFLINE=1)",
        endpoint,
        type(reason).__name__,
        errors.one_line(reason),
    )
    hub.offline_reason = (
        f"the hub ({endpoint}) did not answer within {timeout_s:g} s (T5VAE_HUB_TIMEOUT)"
        if isinstance(reason, TimeoutError)
        else f"the hub ({endpoint}) cannot be reached ({type(reason).__name__}: {errors.one_line(reason)})"
    )
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
      constants.HF_HUB_OFFLINE = True
    return False


# (logger, where the message comes from, how its format string starts): third-party warnings
# that every run would print and that say nothing the user can act on; quiet_known_noise says
# why each is so.
KNOWN_HARMLESS_MESSAGES = (
    ("absl", "tensorflow_datasets/", "Using custom data configuration"),
    ("absl", "tensorflow_datasets/", "Variant folder %s has no %s"),
    ("absl", "orbax/checkpoint/", "Given directory is read only"),
    ("absl", "orbax/checkpoint/", "CheckpointManagerOptions.read_only=True"),
    ("transformers", "transformers/", "PyTorch was not found"),
)


class _KnownNoiseFilter:
  """A logging filter that drops the records of KNOWN_HARMLESS_MESSAGES and keeps all others."""

  def filter(self, record) -> bool:
    source = record.pathname.replace("\\", "/")
    message = str(record.msg)  # before the % arguments: "Variant folder %s has no %s"
    return not any(
        record.name == name and f"/{origin}" in source and message.startswith(start)
        for name, origin, start in KNOWN_HARMLESS_MESSAGES
    )


_KNOWN_NOISE_FILTER = _KnownNoiseFilter()


def quiet_known_noise() -> None:
  """Drops the known-harmless third-party warnings from the console; every other warning (of
  these libraries, of ours, Python's ``warnings``) still prints. Called first by every command
  (run_main, setup_runtime, pretrain.run); calling it again does nothing.

  Silenced, each by its logger, the file it comes from and how the message starts:

  * TFDS's ``Using custom data configuration: ...`` (several per run): our builders
    (t5vae_jax/datasets) make a BuilderConfig per data setting by design, so that a changed
    setting prepares its own copy; TFDS warns whenever a config is not one of a builder's
    predefined ones. And ``Variant folder <dir> has no dataset_info.json``, on the first run of
    a data setting: TFDS looks for a prepared copy before it prepares one (its own "Downloading
    and preparing" line and bars follow, and stay: a real one-time wait).
  * orbax's ``Given directory is read only=...`` and ``CheckpointManagerOptions.read_only=True,
    setting save_interval_steps=0``: phase 2, eval.py and the latent tools open the phase 1 /
    evaluated checkpoints read-only on purpose, to restore them. orbax's warnings that a save or
    a delete was *skipped* because a directory is read-only are kept.
  * transformers' ``PyTorch was not found. Models won't be available ...`` (once per process,
    at import): we use only its tokenizers and config/file utilities, which need no PyTorch.

  The setuptools ``Editable installation`` banner is a warning of pip's build subprocess, so
  scripts/_venv.sh quiets it on its ``pip install -e`` lines (PYTHONWARNINGS).
  """
  import logging as std_logging

  for name in {name for name, _, _ in KNOWN_HARMLESS_MESSAGES}:
    logger = std_logging.getLogger(name)  # logged on these loggers themselves, not children
    if _KNOWN_NOISE_FILTER not in logger.filters:
      logger.addFilter(_KNOWN_NOISE_FILTER)
