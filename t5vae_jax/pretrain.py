"""Pretrain a small T5 from scratch with span corruption, and save it as a Hugging Face checkpoint.

Hub weights cannot be downloaded everywhere, so for studies on small data (PTB) we pretrain a small
T5 ourselves and then finetune it into a VAE exactly as one would finetune ``t5-small``::

    python -m t5vae_jax.pretrain --text data/ptb/train.txt --valid data/ptb/valid.txt \\
        --out runs/t5-ptb-small --steps 2000 --max_minutes 60

``OUT`` ends up a Hugging Face T5 directory (config.json, model.safetensors, tokenizer files) that
``pretrained.load_t5`` and ``transformers.T5ForConditionalGeneration.from_pretrained`` both load;
``OUT/pretrain_ckpt`` holds the resumable orbax checkpoints, ``OUT/pretrain_log.jsonl`` the
metrics and ``OUT/pretrain_run.json`` the settings of the run (checked on ``--resume``).

This module is the command: its flags (argparse) and their checks, its user error and the names
of the files it writes, and :func:`run`. It imports no JAX, so ``--help`` and a flag mistake
answer at once; :func:`main` then calls t5vae_jax/pretrain_lib.py (optimizer, steps,
checkpoints, the loop), which builds its batches with t5vae_jax/span_corruption.py (numpy).
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Optional, Sequence

from etils import epath

from t5vae_jax.errors import UserError

RUN_FILE = "pretrain_run.json"
LOG_FILE = "pretrain_log.jsonl"
CKPT_DIR = "pretrain_ckpt"


class PretrainError(UserError, ValueError):
  """A mistake in the command (flags, files, a run to resume); the message says what to do."""


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m t5vae_jax.pretrain",
      description="Pretrain a small T5 with span corruption on a text file (one example per "
      "line) and write OUT as a Hugging Face T5 checkpoint directory (config.json, "
      "model.safetensors, tokenizer) that loads like t5-small.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  g = p.add_argument_group("data and output")
  g.add_argument("--text", required=True, help="training text, one example per line")
  g.add_argument("--valid", default=None, help="validation text; its loss is logged")
  g.add_argument(
      "--out",
      required=True,
      help="output directory: the Hugging Face checkpoint at the end, plus "
      f"{CKPT_DIR}/ (orbax), {LOG_FILE} and {RUN_FILE}",
  )
  g.add_argument(
      "--tokenizer",
      default=None,
      help="directory of an existing T5 tokenizer (with <extra_id_*> sentinels); "
      "default: train a SentencePiece unigram tokenizer on --text into OUT",
  )
  g.add_argument(
      "--vocab_size",
      type=int,
      default=8000,
      help="SentencePiece vocabulary of a trained tokenizer, before sentinels",
  )
  g.add_argument("--extra_ids", type=int, default=100, help="number of sentinel tokens")
  g.add_argument(
      "--vocab_multiple",
      type=int,
      default=128,
      help="the model's vocab_size is len(tokenizer) rounded up to this multiple "
      "(t5-small: 32100 tokens, vocab_size 32128); 1 = no rounding",
  )
  g.add_argument(
      "--examples",
      choices=("chunks", "lines"),
      default="chunks",
      help="chunks: concatenate lines (reshuffled per epoch) and cut to fit max_len "
      "(T5's recipe, no padding); lines: one line per example, padded per batch",
  )
  g.add_argument(
      "--pad_multiple",
      type=int,
      default=32,
      help="lines: inputs are padded to a multiple of this (each new length "
      "compiles the step once)",
  )
  g.add_argument(
      "--max_len", type=int, default=128, help="encoder input length after corruption, EOS included"
  )
  g.add_argument("--noise_density", type=float, default=0.15, help="fraction of tokens masked")
  g.add_argument("--mean_span_length", type=float, default=3.0, help="mean noise span length")
  g.add_argument(
      "--no_rotate",
      action="store_true",
      help="T5's original mask (first token never noise, last always) instead of a "
      "randomly rotated one",
  )
  g = p.add_argument_group("model (T5 v1.0 style by default: ReLU, tied, scaled output)")
  g.add_argument("--d_model", type=int, default=256)
  g.add_argument("--num_layers", type=int, default=4, help="encoder layers")
  g.add_argument("--num_decoder_layers", type=int, default=None, help="default: num_layers")
  g.add_argument("--num_heads", type=int, default=4)
  g.add_argument("--d_kv", type=int, default=64)
  g.add_argument("--d_ff", type=int, default=1024)
  g.add_argument(
      "--feed_forward_proj",
      default="relu",
      help="relu (T5 v1.0) or gated-gelu (v1.1; then also --untied)",
  )
  g.add_argument(
      "--untied",
      action="store_true",
      help="separate LM head, no d_model**-0.5 output scaling (T5 v1.1)",
  )
  g.add_argument("--relative_attention_num_buckets", type=int, default=32)
  g.add_argument("--relative_attention_max_distance", type=int, default=128)
  g.add_argument(
      "--dropout_rate",
      type=float,
      default=0.0,
      help="dropout during this pretraining (T5 v1.1 pretrained without)",
  )
  g.add_argument(
      "--save_dropout_rate",
      type=float,
      default=0.1,
      help="dropout_rate written to config.json, the default for finetuning (t5-small's is 0.1)",
  )
  g.add_argument(
      "--dtype",
      choices=("auto", "float32", "bfloat16"),
      default="auto",
      help="compute dtype (params stay float32); auto: bfloat16 on TPU/GPU, float32 on CPU",
  )
  g = p.add_argument_group("optimization")
  g.add_argument("--steps", type=int, default=5000, help="training steps (schedule length)")
  g.add_argument("--batch_size", type=int, default=64, help="global batch (examples)")
  g.add_argument("--optimizer", choices=("adamw", "adafactor"), default="adamw")
  g.add_argument(
      "--lr",
      type=float,
      default=None,
      help="peak learning rate; default 1e-3 (adamw), 1e-2 (adafactor)",
  )
  g.add_argument(
      "--schedule",
      choices=("cosine", "rsqrt", "constant"),
      default="cosine",
      help="after linear warm-up",
  )
  g.add_argument(
      "--warmup_steps", type=int, default=200, help="linear warm-up (at most a tenth of --steps)"
  )
  g.add_argument(
      "--final_lr_fraction",
      type=float,
      default=0.1,
      help="cosine: learning rate at the last step / peak",
  )
  g.add_argument(
      "--weight_decay",
      type=float,
      default=0.01,
      help="decoupled weight decay on matrices (adamw); adafactor's decay rate",
  )
  g.add_argument("--clip_grad_norm", type=float, default=1.0, help="0 = no clipping")
  g.add_argument(
      "--embedding_lr_multiplier",
      type=float,
      default=1.0,
      help="the shared embedding's step is this many times the others' (its init "
      "std is 1, so a plain Adam step moves it relatively little)",
  )
  g.add_argument("--seed", type=int, default=0)
  g.add_argument(
      "--num_devices",
      type=int,
      default=None,
      help="use the first N devices (default: all devices of all processes)",
  )
  g.add_argument(
      "--fsdp", action="store_true", help="shard params and optimizer state over the data axis"
  )
  g = p.add_argument_group("logging, checkpoints, budget")
  g.add_argument("--log_every", type=int, default=50)
  g.add_argument("--eval_every", type=int, default=500, help="validation every N steps")
  g.add_argument("--valid_max_batches", type=int, default=20)
  g.add_argument("--save_every", type=int, default=500, help="orbax checkpoint every N steps")
  g.add_argument("--keep_checkpoints", type=int, default=2)
  g.add_argument(
      "--resume",
      action="store_true",
      help=f"continue from the latest checkpoint in OUT/{CKPT_DIR} (same settings; "
      "--steps and --max_minutes may change)",
  )
  g.add_argument(
      "--max_minutes",
      type=float,
      default=None,
      help="wall-clock budget of the whole command: stop training in time, then "
      "save, validate and write OUT as usual",
  )
  g.add_argument(
      "--stop_at_step",
      type=int,
      default=None,
      help="stop after this step as --max_minutes would (save, validate, write OUT), "
      "while the schedule still runs over --steps: a budget that reproduces "
      "exactly, e.g. a run that --max_minutes once stopped",
  )
  return p


def check_flags(args) -> None:
  """Raises PretrainError for flag values no run can use."""
  if not 0.0 < args.noise_density < 1.0:
    raise PretrainError(f"--noise_density {args.noise_density} must lie in (0, 1)")
  if args.stop_at_step is not None and args.stop_at_step < 1:
    raise PretrainError(f"--stop_at_step {args.stop_at_step} must be at least 1")
  if args.mean_span_length < 1.0:
    raise PretrainError(f"--mean_span_length {args.mean_span_length} must be at least 1")
  for flag, path in (("--text", args.text), ("--valid", args.valid)):
    if path is not None and not epath.Path(path).is_file():
      raise PretrainError(f"{flag} {path}: no such file")


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Runs the command; returns a summary (final step, losses, timings, paths)."""
  t_start = time.perf_counter()
  args = build_parser().parse_args(argv)
  if args.lr is None:
    args.lr = 1e-2 if args.optimizer == "adafactor" else 1e-3
  check_flags(args)
  from t5vae_jax import pretrain_lib  # JAX: only once the flags are known to be good

  return pretrain_lib.run_pretraining(args, t_start)


def run() -> None:
  """The command (``python -m t5vae_jax.pretrain``, the ``t5vae-pretrain`` entry point)."""
  from t5vae_jax import errors
  from t5vae_jax import runtime

  runtime.quiet_known_noise()  # no TFDS/orbax/transformers noise (runtime.py says which)
  errors.user_errors(main)()  # a user error: one line, no traceback, exit 2


if __name__ == "__main__":
  # The package's own copy of this module, not a second one as __main__: pretrain_lib imports
  # PretrainError and the file names from t5vae_jax.pretrain.
  from t5vae_jax import pretrain

  pretrain.run()
