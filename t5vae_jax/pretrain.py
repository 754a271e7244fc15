"""Pretrain a small T5 from scratch with span corruption, and save it as a Hugging Face checkpoint.

Hub weights cannot be downloaded everywhere, so for studies on small data (PTB) we pretrain a small
T5 ourselves and then finetune it into a VAE exactly as one would finetune ``t5-small``::

    python -m t5vae_jax.pretrain --config configs/pretrain.py --out runs/t5-ptb-small \\
        --config.text=data/ptb/train.txt --config.valid=data/ptb/valid.txt \\
        --config.steps=2000 --config.max_minutes=60
    python -m t5vae_jax.pretrain --config configs/pretrain.py --out runs/t5-ptb-small --resume

The settings are a config file like training's (``configs/pretrain.py`` lists every key with
its default; ``--config.key=value`` overrides one). ``--out`` ends up a Hugging Face T5
directory (config.json, model.safetensors, tokenizer files) that ``pretrained.load_t5`` and
``transformers.T5ForConditionalGeneration.from_pretrained`` both load; ``OUT/pretrain_ckpt``
holds the resumable orbax checkpoints, ``OUT/pretrain_log.jsonl`` the metrics and
``OUT/pretrain_run.json`` the settings of the run (checked on ``--resume``).

This module is the command: its flags and the config's checks, its user error and the names of
the files it writes. It imports no JAX, so ``--help`` and a config mistake answer at once;
:func:`run_command` then calls t5vae_jax/pretrain_lib.py (optimizer, steps, checkpoints, the
loop), which builds its batches with t5vae_jax/span_corruption.py (numpy).
"""

from __future__ import annotations

import time
from typing import Any, Optional

from etils import epath

from t5vae_jax.errors import UserError

RUN_FILE = "pretrain_run.json"
LOG_FILE = "pretrain_log.jsonl"
CKPT_DIR = "pretrain_ckpt"
# key: allowed values
CHOICES = {
    "examples": ("chunks", "lines"),
    "feed_forward_proj": ("relu", "gated-gelu"),
    "dtype": ("auto", "float32", "bfloat16"),
    "optimizer": ("adamw", "adafactor"),
    "schedule": ("cosine", "rsqrt", "constant"),
}


class PretrainError(UserError, ValueError):
  """A mistake in the command (flags, files, a run to resume); the message says what to do."""


def check_config(config) -> None:
  """Raises PretrainError for settings no run can use, naming the config key."""
  if not config.text:
    raise PretrainError("config.text is required: the training text, one example per line")
  for key, allowed in CHOICES.items():
    if config[key] not in allowed:
      raise PretrainError(
          f"config.{key}={config[key]!r} is not allowed; allowed: {', '.join(allowed)}"
      )
  if not 0.0 < config.noise_density < 1.0:
    raise PretrainError(f"config.noise_density={config.noise_density} must lie in (0, 1)")
  if config.stop_at_step is not None and config.stop_at_step < 1:
    raise PretrainError(f"config.stop_at_step={config.stop_at_step} must be at least 1")
  if config.mean_span_length < 1.0:
    raise PretrainError(f"config.mean_span_length={config.mean_span_length} must be at least 1")
  for key in ("text", "valid"):
    if config[key] is not None and not epath.Path(config[key]).is_file():
      raise PretrainError(f"config.{key}={config[key]}: no such file")


def run_command(
    config, out: str, resume: bool = False, t_start: Optional[float] = None
) -> dict[str, Any]:
  """The command after its flags: checks ``config`` (a copy gets the default learning rate of
  its optimizer), pretrains into ``out``; returns a summary (final step, losses, timings)."""
  t_start = time.perf_counter() if t_start is None else t_start
  config = config.copy_and_resolve_references()
  if config.lr is None:
    config.lr = 1e-2 if config.optimizer == "adafactor" else 1e-3
  check_config(config)
  from t5vae_jax import pretrain_lib  # JAX: only once the settings are known to be good

  return pretrain_lib.run_pretraining(config, out, resume, t_start)


def define_flags(flag_values=None) -> None:
  """--config (configs/pretrain.py or a file of your own, with --config.key=value), --out,
  --resume."""
  from absl import flags
  from ml_collections import config_flags

  flag_values = flags.FLAGS if flag_values is None else flag_values
  config_flags.DEFINE_config_file(
      "config",
      None,
      "Pretraining config (configs/pretrain.py lists every key).",
      flag_values=flag_values,
      lock_config=True,
  )
  flags.DEFINE_string(
      "out",
      None,
      f"Output directory: the Hugging Face checkpoint at the end, plus {CKPT_DIR}/ (orbax), "
      f"{LOG_FILE} and {RUN_FILE}.",
      flag_values=flag_values,
  )
  flags.DEFINE_bool(
      "resume",
      False,
      f"Continue from the latest checkpoint in OUT/{CKPT_DIR} (same settings; config.steps "
      "and config.max_minutes may change).",
      flag_values=flag_values,
  )
  flags.mark_flags_as_required(["config", "out"], flag_values=flag_values)


def run() -> None:
  """The command (``python -m t5vae_jax.pretrain``, the ``t5vae-pretrain`` entry point)."""
  from absl import flags

  from t5vae_jax import cli
  from t5vae_jax import errors

  t_start = time.perf_counter()
  define_flags()
  cli.show_in_help(["config", "out", "resume"], __doc__)

  def main(argv):
    if len(argv) > 1:
      errors.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
    FLAGS = flags.FLAGS
    run_command(FLAGS.config, FLAGS.out, FLAGS.resume, t_start)

  cli.run_main(main)  # a user error: one line, no traceback, exit 2


if __name__ == "__main__":
  # The package's own copy of this module, not a second one as __main__: pretrain_lib imports
  # PretrainError and the file names from t5vae_jax.pretrain.
  from t5vae_jax import pretrain

  pretrain.run()
