"""Draws validation MI, AU, KL and rec against steps for one or more runs (the paper's
Figures 2 and 3) into a PNG.

  python -m t5vae_jax.plot runs/ptb runs/ptb_denoise --phase 1 --out phase1.png

Each argument is a workdir (its ``phase<N>/metrics.jsonl`` is read) or a phase directory.
"""

from __future__ import annotations

import argparse
import io
import sys

from etils import epath

PANELS = (
    ("val/mi", "MI (nats)"),
    ("val/au", "active units"),
    ("val/kl", "KL (nats)"),
    ("val/rec", "reconstruction (nats/sentence)"),
)


def read_curves(run_dir, phase: int) -> dict[str, list[tuple[int, float]]]:
  """{metric: [(step, value)]}, the last row per step winning (a resumed run logs again)."""
  from t5vae_jax import train_lib

  run_dir = epath.Path(run_dir)
  path = run_dir / "metrics.jsonl"
  if not path.exists():
    path = run_dir / f"phase{phase}" / "metrics.jsonl"
  if not path.exists():
    raise FileNotFoundError(f"no metrics.jsonl in {run_dir} or {run_dir / f'phase{phase}'}")
  by_step: dict[str, dict[int, float]] = {}
  for row in train_lib.read_metrics(path):
    for key, _ in PANELS:
      if key in row:
        by_step.setdefault(key, {})[row["step"]] = row[key]
  return {k: sorted(v.items()) for k, v in by_step.items()}


def plot(run_dirs, out, phase: int = 1, labels=None) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2))
  for i, run in enumerate(run_dirs):
    label = labels[i] if labels else epath.Path(run).name
    curves = read_curves(run, phase)
    for ax, (key, title) in zip(axes, PANELS):
      points = curves.get(key, [])
      if points:
        ax.plot(
            [s for s, _ in points], [v for _, v in points], marker="o", markersize=3, label=label
        )
      ax.set_title(title)
      ax.set_xlabel("step")
  axes[0].legend(fontsize=8)
  fig.suptitle(f"phase {phase}")
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=120)
  plt.close(fig)
  out = epath.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_bytes(buffer.getvalue())


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+", help="workdirs or phase directories")
  parser.add_argument("--phase", type=int, default=1, choices=(1, 2))
  parser.add_argument("--out", required=True, help="PNG file to write")
  parser.add_argument("--labels", nargs="*", help="legend labels, one per run")
  args = parser.parse_args(argv)
  if args.labels and len(args.labels) != len(args.runs):
    parser.error(f"--labels has {len(args.labels)} names for {len(args.runs)} runs")
  try:
    plot(args.runs, args.out, args.phase, args.labels)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
