"""Latent operations from the command line: ``python -m t5vae_jax.latent <tool> ...``.

  encode       sentences (a file, one a line) -> mu and logvar, as .npz or JSONL
  reconstruct  sentences -> encode -> decode
  sample       sentences from the prior z ~ N(0, I)
  interpolate  the path between two sentences' latents (linear or spherical)
  transfer     attribute arithmetic: mu(x) + strength * (mean mu(to group) - mean mu(from group))

Every tool reads a phase directory (``--phase_dir runs/demo/phase2``; ``--checkpoint latest |
best | <step>`` as eval.py), or a directory or hub repo id written by ``T5VAE.save_pretrained``
/ ``push_to_hub``, and writes UTF-8 lines to stdout or ``--output``. The decoding
tools share ``--method greedy|sample --temperature --top_k --top_p --beam --length_penalty
--max_len --seed`` (T5VAE.decode). As with train.py and eval.py, a mistake of the user (a
flag, a missing file or checkpoint, a bad line) ends with one ``error: <line>`` on stderr and
exit status 2; the flags are parsed, and the input files read, before JAX is imported.

argparse rather than absl: each tool has flags of its own, which absl's one global flag
registry cannot give several subcommands in one process (the tests call ``main`` in-process).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from t5vae_jax import errors
from t5vae_jax import runtime
from t5vae_jax import hub
from t5vae_jax.datasets.errors import DataError

TOOLS = ("encode", "reconstruct", "sample", "interpolate", "transfer")


class _Parser(argparse.ArgumentParser):
  """Flag mistakes end as the training CLI's do: one ``error:`` line, exit 2."""

  def error(self, message):
    errors.fail(f"{self.prog}: {message}")


# --------------------------------------------------------------------------------------------
# Flags
# --------------------------------------------------------------------------------------------
def _positive_int(text):
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
  return value


def _non_negative_int(text):
  value = int(text)
  if value < 0:
    raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
  return value


def _non_negative_float(text):
  value = float(text)
  if not value >= 0:
    raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
  return value


def _probability(text):
  value = float(text)
  if not 0.0 < value <= 1.0:
    raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
  return value


def _add_common(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
      "--phase_dir",
      required=True,
      help="A trained phase directory (e.g. runs/demo/phase2), or a directory "
      "or hub repo id of T5VAE.save_pretrained / push_to_hub.",
  )
  parser.add_argument("--checkpoint", default="latest", help="latest | best | <step>.")
  parser.add_argument("--output", default="-", help="Where the lines go (default -: stdout).")
  parser.add_argument(
      "--batch_size", type=_positive_int, default=256, help="Sentences per encoder pass."
  )


def _add_inputs(parser: argparse.ArgumentParser, what: str) -> None:
  parser.add_argument("--input", help=f"A UTF-8 file of {what}, one a line (-: stdin).")
  parser.add_argument(
      "--text",
      action="append",
      default=[],
      help=f"One of the {what} (repeatable; after those of --input).",
  )


def _add_decoding(parser: argparse.ArgumentParser, method: str = "greedy") -> None:
  parser.add_argument(
      "--method",
      choices=("greedy", "sample"),
      default=method,
      help=f"Token choice (default {method}).",
  )
  parser.add_argument(
      "--temperature",
      type=_non_negative_float,
      default=1.0,
      help="Sampling temperature (0: greedy).",
  )
  parser.add_argument(
      "--top_k",
      type=_non_negative_int,
      default=0,
      help="Sample among the k most likely tokens (0: all).",
  )
  parser.add_argument(
      "--top_p",
      type=_probability,
      default=1.0,
      help="Sample within the nucleus of this probability mass.",
  )
  parser.add_argument(
      "--beam",
      type=_non_negative_int,
      default=0,
      help="Beam search of this width instead of --method (0: off).",
  )
  parser.add_argument(
      "--length_penalty",
      type=float,
      default=0.6,
      help="Beam search ranks by log p / ((5 + length) / 6) ** this.",
  )
  parser.add_argument(
      "--max_len",
      type=_positive_int,
      default=None,
      help="Most tokens per sentence, EOS included (default: training's).",
  )
  parser.add_argument("--seed", type=int, default=0, help="Seed of the latent and token draws.")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="python -m t5vae_jax.latent",
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  tools = parser.add_subparsers(dest="tool", metavar="TOOL", parser_class=_Parser)
  tools.required = True

  encode = tools.add_parser("encode", help="sentences -> mu, logvar (.npz or JSONL)")
  _add_common(encode)
  _add_inputs(encode, "sentences")
  encode.add_argument(
      "--progress",
      action=argparse.BooleanOptionalAction,
      default=True,
      help="Show a progress bar on stderr.",
  )
  encode.add_argument(
      "--noprogress", dest="progress", action="store_false", help=argparse.SUPPRESS
  )  # absl's spelling, as eval.py's --noprogress

  reconstruct = tools.add_parser("reconstruct", help="sentences -> encode -> decode")
  _add_common(reconstruct)
  _add_inputs(reconstruct, "sentences")
  reconstruct.add_argument(
      "--sample_z", action="store_true", help="Decode z ~ q(z|x) instead of z = mu."
  )
  _add_decoding(reconstruct)

  sample = tools.add_parser("sample", help="sentences from the prior")
  _add_common(sample)
  sample.add_argument("--n", type=_positive_int, default=10, help="How many sentences.")
  _add_decoding(sample, method="sample")

  interpolate = tools.add_parser("interpolate", help="the path between two sentences")
  _add_common(interpolate)
  interpolate.add_argument("--a", help="The first sentence.")
  interpolate.add_argument("--b", help="The second sentence.")
  interpolate.add_argument("--input", help="A file whose --lines are the two sentences.")
  interpolate.add_argument(
      "--lines", default="1,2", help="The two (1-based) line numbers of --input (default 1,2)."
  )
  interpolate.add_argument(
      "--steps", type=int, default=5, help="Points on the path, both ends included (at least 2)."
  )
  interpolate.add_argument(
      "--mode",
      choices=("linear", "spherical"),
      default="linear",
      help="A straight line or slerp between the two posterior means.",
  )
  _add_decoding(interpolate)

  transfer = tools.add_parser("transfer", help="add an attribute direction to sentences")
  _add_common(transfer)
  _add_inputs(transfer, "sentences to change")
  transfer.add_argument(
      "--labelled",
      help="A file of label<TAB>text lines (Yelp's format) holding both "
      "groups; with --from_label and --to_label.",
  )
  transfer.add_argument("--from_label", help="The label of the group to move away from.")
  transfer.add_argument("--to_label", help="The label of the group to move towards.")
  transfer.add_argument("--from_file", help="The group to move away from, one a line.")
  transfer.add_argument("--to_file", help="The group to move towards, one a line.")
  transfer.add_argument(
      "--strength",
      type=float,
      default=1.0,
      help="z = mu(x) + strength * (mean mu(to) - mean mu(from)).",
  )
  _add_decoding(transfer)
  return parser


# --------------------------------------------------------------------------------------------
# Input and output
# --------------------------------------------------------------------------------------------
def read_lines(path: str, flag: str) -> list[str]:
  """The lines of a UTF-8 file (- : stdin), without their line ends."""
  if path == "-":
    return sys.stdin.read().splitlines()
  if os.path.isdir(path):
    raise DataError(f"{flag}={path} is a directory, not a file of sentences")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{flag}={path}: no such file")
  with open(path, "rb") as f:
    data = f.read()
  lines = data.split(b"\n")
  if lines and lines[-1] == b"":
    lines.pop()
  out = []
  for number, line in enumerate(lines, 1):
    try:
      out.append(line.decode("utf-8").rstrip("\r"))
    except UnicodeDecodeError as e:
      raise DataError(f"{path}:{number} is not UTF-8 ({e.reason} at byte {e.start})") from None
  return out


def input_texts(args, required: bool = True) -> list[str]:
  texts = (read_lines(args.input, "--input") if args.input else []) + list(args.text)
  if required and not texts:
    raise DataError("no sentences: give --input FILE (one a line) or --text SENTENCE")
  return texts


def read_labelled(path: str, from_label: str, to_label: str) -> tuple[list[str], list[str]]:
  """The texts of the two groups of a label<TAB>text file."""
  groups: dict[str, list[str]] = {from_label: [], to_label: []}
  for number, line in enumerate(read_lines(path, "--labelled"), 1):
    if not line.strip():
      continue
    label, tab, text = line.partition("\t")
    if not tab:
      raise DataError(f"{path}:{number} has no tab: expected label<TAB>text lines")
    if label in groups:
      groups[label].append(text)
  for label, texts in groups.items():
    if not texts:
      raise DataError(f"{path} has no line labelled {label!r}")
  return groups[from_label], groups[to_label]


class _Output:
  """stdout or a UTF-8 file (its directory made), line by line."""

  def __init__(self, path: str):
    self.path = path
    self.file = None

  def __enter__(self):
    if self.path == "-":
      if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(encoding="utf-8")
      self.file = sys.stdout
    else:
      os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
      self.file = open(self.path, "w", encoding="utf-8")
    return self

  def write_lines(self, lines: Sequence[str]) -> None:
    for line in lines:
      self.file.write(line + "\n")
    self.file.flush()

  def __exit__(self, *exc):
    if self.file is not sys.stdout:
      self.file.close()


def _load(args):
  runtime.setup_runtime()  # imports JAX: only once the flags and inputs are known to be good
  from t5vae_jax import api

  checkpoint = args.checkpoint
  if checkpoint in ("latest", "best"):
    return api.T5VAE.load(args.phase_dir, which=checkpoint)
  if not checkpoint.isdigit():
    raise DataError(f"--checkpoint={checkpoint}: expected latest, best or a step number")
  return api.T5VAE.load(args.phase_dir, step=int(checkpoint))


def decode_kwargs(args) -> dict:
  return dict(
      method=args.method,
      temperature=args.temperature,
      top_k=args.top_k,
      top_p=args.top_p,
      beam=args.beam,
      length_penalty=args.length_penalty,
      max_len=args.max_len,
      seed=args.seed,
  )


# --------------------------------------------------------------------------------------------
# The tools
# --------------------------------------------------------------------------------------------
def encode(args) -> None:
  texts = input_texts(args)
  fmt = "npz" if args.output.endswith(".npz") else "jsonl"
  if args.output != "-" and not args.output.endswith((".npz", ".jsonl")):
    raise DataError(f"--output={args.output}: name a .npz or .jsonl file (or - for stdout)")
  vae = _load(args)
  import numpy as np

  bar = None
  if args.progress:
    from tqdm import tqdm

    bar = tqdm(total=len(texts), desc="encode", unit="sentence", file=sys.stderr)
  mus, logvars = [], []
  for start in range(0, len(texts), args.batch_size):
    mu, logvar = vae.encode(texts[start : start + args.batch_size], batch_size=args.batch_size)
    mus.append(mu)
    logvars.append(logvar)
    if bar is not None:
      bar.update(len(mu))
  if bar is not None:
    bar.close()
  mu, logvar = np.concatenate(mus), np.concatenate(logvars)
  if fmt == "npz":
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    np.savez(args.output, mu=mu, logvar=logvar, text=np.asarray(texts, dtype=str))
    print(f"wrote {args.output}: mu and logvar ({len(texts)}, {mu.shape[1]})", file=sys.stderr)
    return
  with _Output(args.output) as out:
    out.write_lines(
        json.dumps({"text": t, "mu": m.tolist(), "logvar": v.tolist()}, ensure_ascii=False)
        for t, m, v in zip(texts, mu, logvar)
    )


def reconstruct(args) -> None:
  texts = input_texts(args)
  vae = _load(args)
  lines = vae.reconstruct(texts, sample_z=args.sample_z, **decode_kwargs(args))
  with _Output(args.output) as out:
    out.write_lines(lines)


def sample(args) -> None:
  vae = _load(args)
  kwargs = decode_kwargs(args)
  kwargs.pop("temperature")
  method = kwargs.pop("method")
  lines = vae.sample(args.n, temperature=args.temperature, method=method, **kwargs)
  with _Output(args.output) as out:
    out.write_lines(lines)


def _two_lines(path: str, spec: str) -> tuple[str, str]:
  try:
    numbers = [int(x) for x in spec.split(",")]
  except ValueError:
    numbers = []
  if len(numbers) != 2 or min(numbers) < 1:
    raise DataError(f"--lines={spec}: expected two 1-based line numbers, e.g. --lines 1,2")
  lines = read_lines(path, "--input")
  if max(numbers) > len(lines):
    raise DataError(f"--lines={spec}: {path} has only {len(lines)} lines")
  return lines[numbers[0] - 1], lines[numbers[1] - 1]


def interpolate(args) -> None:
  if args.steps < 2:
    raise DataError(f"--steps={args.steps}: the path needs at least 2 points")
  if args.input is not None:
    if args.a is not None or args.b is not None:
      raise DataError("give either --a and --b or --input (with --lines), not both")
    a, b = _two_lines(args.input, args.lines)
  elif args.a is None or args.b is None:
    raise DataError("give the two sentences: --a TEXT --b TEXT, or --input FILE --lines I,J")
  else:
    a, b = args.a, args.b
  vae = _load(args)
  lines = vae.interpolate(a, b, steps=args.steps, mode=args.mode, **decode_kwargs(args))
  with _Output(args.output) as out:
    out.write_lines(lines)


def transfer(args) -> None:
  by_label = args.labelled is not None
  by_file = args.from_file is not None or args.to_file is not None
  if by_label == by_file:
    raise DataError(
        "name the two groups: --labelled FILE --from_label A --to_label B, "
        "or --from_file A.txt --to_file B.txt"
    )
  if by_label:
    if args.from_label is None or args.to_label is None:
      raise DataError("--labelled needs --from_label and --to_label")
    if args.from_label == args.to_label:
      raise DataError(f"--from_label and --to_label are both {args.from_label!r}")
    from_texts, to_texts = read_labelled(args.labelled, args.from_label, args.to_label)
  else:
    if args.from_file is None or args.to_file is None:
      raise DataError("--from_file and --to_file go together")
    from_texts = [t for t in read_lines(args.from_file, "--from_file") if t.strip()]
    to_texts = [t for t in read_lines(args.to_file, "--to_file") if t.strip()]
    for flag, path, texts in (
        ("--from_file", args.from_file, from_texts),
        ("--to_file", args.to_file, to_texts),
    ):
      if not texts:
        raise DataError(f"{flag}={path} has no sentences")
  texts = input_texts(args)
  vae = _load(args)
  vector = vae.attribute_vector(from_texts, to_texts)
  print(
      f"attribute vector: {len(from_texts)} -> {len(to_texts)} sentences, "
      f"norm {float((vector ** 2).sum()) ** 0.5:.3f}, strength {args.strength:g}",
      file=sys.stderr,
  )
  lines = vae.transfer(texts, vector, strength=args.strength, **decode_kwargs(args))
  with _Output(args.output) as out:
    out.write_lines(lines)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> None:
  """Runs one tool; ``argv`` without the program name (default: sys.argv[1:])."""
  args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
  try:
    if not (
        os.path.isdir(args.phase_dir)
        or hub.is_remote(args.phase_dir)
        or hub.is_hub_id(args.phase_dir)
    ):  # a hub id: a T5VAE.push_to_hub repo
      raise FileNotFoundError(f"--phase_dir={args.phase_dir}: no such directory")
    globals()[args.tool](args)
  except Exception as e:
    if not (isinstance(e, DataError) or errors.is_user_error(e)):
      raise
    errors.fail(*errors.error_lines(e))


def run() -> None:
  """The console entry point (proposed: ``t5vae-latent = t5vae_jax.latent:run``)."""
  main()


if __name__ == "__main__":
  run()
