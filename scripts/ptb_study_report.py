"""The tables and examples of docs/ptb-study.md, read from the runs of scripts/ptb_study.sh.

    python scripts/ptb_study_report.py [--runs runs/ptb-study] [--examples ROW]

Prints (Markdown) the phase-2 test results of every row that has an ``eval.json``, in the
paper's column order, each with the command that reproduces it and, where the paper has the
same configuration, its PTB figure (appendix Table 2); then the phase-1 and phase-2 MI, AU and
KL at the end of each phase from the training logs. With ``--examples ROW``, also
reconstructions, samples and an interpolation from that row's phase-2 model. Nothing here is
typed in by hand except the paper's numbers.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

# Row of scripts/ptb_study.sh (whose header lists its overrides) -> (what it is, the paper's
# PTB row or None).
ROWS = {
    "a": ("phase 2 only (no phase 1), max pool", None),
    "b": ("phase 1 + phase 2, max pool", "Max pool"),
    "b_open": ("b, decoder and W_proj trainable in phase 1", None),
    "c015": ("b + denoise 0.15", "Max pool + Denoise"),
    "c04": ("b + denoise 0.4", "Max pool + Denoise"),
    "d05": ("c015 + KL threshold 0.5", None),
    "d3": ("c015 + KL threshold 3", "Max pool + Denoise + KLT"),
    "e_mean": ("b with mean pooling", None),
    "f_prefix": ("b with the released code's self-attention prefix", None),
    "r_released": ("b in the released code's regime (configs/released_recipe.py)", None),
}

# Appendix Table 2 of Park & Lee (2021), "Phase 2 results on PTB" (t5-small, 5 + 3 epochs):
# PPL, KL, -ELBO, MI, AU. Two rows lost a cell in our copy of the paper (they print four
# numbers for five columns); those cells are None.
PAPER_PTB = {
    "Max pool": (51.60, 0.09, 104.14, 0, 0),
    "Max pool + Denoise": (57.69, 3.05, 101.17, None, None),
    "Max pool + Denoise + KLT": (250.44, 41.93, 62.25, 2.17, 24),
}


def _fmt(value, spec="{:.2f}"):
  if value is None:
    return "-"
  if isinstance(value, int):
    return str(value)
  return spec.format(value)


def _read_json(path: pathlib.Path):
  return json.loads(path.read_text()) if path.exists() else None


def _last_val(phase_dir: pathlib.Path) -> dict:
  """The last validation row (val/*) of a phase's metrics.jsonl, or {}."""
  from t5vae_jax import train_lib

  rows = [r for r in train_lib.read_metrics(phase_dir / "metrics.jsonl") if "val/mi" in r]
  return rows[-1] if rows else {}


def results_table(runs: pathlib.Path, env: str) -> str:
  lines = [
      "| row | configuration | PPL | PPL (word) | KL | -ELBO | MI | AU | MI (batch) | rec | K | "
      "examples | paper PTB (PPL / KL / -ELBO / MI / AU) |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for row, (what, paper_row) in ROWS.items():
    result = _read_json(runs / row / "phase2" / "eval.json")
    paper = "-"
    if paper_row:
      paper = paper_row + ": " + " / ".join(_fmt(v) for v in PAPER_PTB[paper_row])
    if result is None:
      lines.append(f"| {row} | {what} | not run | | | | | | | | | | {paper} |")
      continue
    lines.append(
        f"| {row} | {what} | {_fmt(result.get('ppl'))} | {_fmt(result.get('ppl_word'))} | "
        f"{_fmt(result.get('kl'))} | "
        f"{_fmt(result.get('neg_elbo'))} | {_fmt(result.get('mi'))} | "
        f"{_fmt(result.get('au'))} | {_fmt(result.get('mi_batch'))} | "
        f"{_fmt(result.get('rec'))} | {result.get('num_samples', '-')} | "
        f"{result.get('num_examples', '-')} | {paper} |"
    )
  lines.append("")
  lines.append("Each row: `" + env + " bash scripts/ptb_study.sh ROW T5_DIR`.")
  return "\n".join(lines)


def phase_table(runs: pathlib.Path) -> str:
  lines = [
      "| row | phase 1 end: MI / AU / KL / rec | phase 2 end: MI / AU / KL / rec |",
      "|---|---|---|",
  ]
  for row in ROWS:
    cells = []
    for phase in (1, 2):
      v = _last_val(runs / row / f"phase{phase}")
      cells.append(
          " / ".join(
              _fmt(v.get(k), "{:.0f}" if k == "val/au" else "{:.2f}")
              for k in ("val/mi", "val/au", "val/kl", "val/rec")
          )
          if v
          else "-"
      )
    if cells != ["-", "-"]:
      lines.append(f"| {row} | {cells[0]} | {cells[1]} |")
  return "\n".join(lines)


TEST_SENTENCES = (
    "the company said it expects to report a loss for the third quarter",
    "mr. smith was named chief executive officer of the bank",
    "stock prices fell sharply in heavy trading yesterday",
    "the government is expected to announce new rules next week",
)


def examples(phase_dir: pathlib.Path) -> str:
  from t5vae_jax import T5VAE

  vae = T5VAE.load(str(phase_dir))
  out = ["Reconstructions (greedy from z = mu):", ""]
  for src, rec in zip(TEST_SENTENCES, vae.reconstruct(list(TEST_SENTENCES))):
    out += [f"- in:  {src}", f"  out: {rec}"]
  out += ["", "Samples (z ~ N(0, I), temperature 1.0, top-p 0.9, seed 0):", ""]
  out += [f"- {s}" for s in vae.sample(5, temperature=1.0, seed=0, top_p=0.9)]
  out += ["", "Interpolation (greedy), from the first to the third sentence:", ""]
  out += [
      f"{i}. {s}"
      for i, s in enumerate(vae.interpolate(TEST_SENTENCES[0], TEST_SENTENCES[2], steps=5))
  ]
  return "\n".join(out)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--runs", default="runs/ptb-study", help="where ptb_study.sh wrote the rows")
  p.add_argument("--env", default="", help="the environment the rows ran with, for the table")
  p.add_argument("--examples", default=None, help="a row: print its reconstructions etc.")
  args = p.parse_args(argv)
  runs = pathlib.Path(args.runs)
  if not runs.is_dir():
    print(f"error: {runs} is not a directory (run scripts/ptb_study.sh first)", file=sys.stderr)
    return 2
  print(results_table(runs, args.env))
  print()
  print(phase_table(runs))
  if args.examples:
    print()
    print(examples(runs / args.examples / "phase2"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
