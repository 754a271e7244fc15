"""An HTML report of a training workdir: ``python -m t5vae_jax.report runs/ptb``.

  python -m t5vae_jax.report runs/demo                          # -> runs/demo/report.html
  python -m t5vae_jax.report runs/ptb --output ptb.html --split validation --max_points 2000

One self-contained file (the figures are base64 PNGs inside it, the styles inline), to open
in a browser, mail or attach to a paper's supplement, with:
  - the evaluation table: each phase's eval.json (from eval.py; its Markdown row, probes too);
  - the training curves of each phase (validation MI, AU, KL and rec against steps, the
    training KL and rec beside them; metrics.jsonl via train_lib.read_metrics);
  - a 2-D PCA map of each phase's posterior means on the split (``--max_points`` sentences),
    coloured by each label the data has (Yelp's label column, the synthetic grammar's
    attributes), and how much variance the two axes hold;
  - from the last phase (through the T5VAE API): reconstructions of the first sentences (greedy
    from z = mu), samples (z ~ N(0, I), greedy) and a linear interpolation between two of them.
A section that cannot be made (no eval.json yet, the data files not reachable) says why in the
page rather than stopping the report; a workdir without any phase is an ``error:`` line, exit 2.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import html
import io
import json
import sys
from collections.abc import Sequence
from typing import Any

from etils import epath

from t5vae_jax import errors
from t5vae_jax import runtime

NUM_SENTENCES = 5
INTERPOLATION_STEPS = 7
DEFAULT_MAX_POINTS = 1000
MAX_MAP_PANELS = 6  # labels coloured in the latent map (the synthetic grammar has 6)
# (panel title, validation key, training key) of the curves.
CURVE_PANELS = (
    ("MI (nats)", "val/mi", None),
    ("active units", "val/au", None),
    ("KL (nats/sentence)", "val/kl", "train/kl"),
    ("rec (nats/sentence)", "val/rec", "train/rec"),
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222;
       background: #fff; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; }
th, td { border: 1px solid #bbb; padding: .25em .6em; text-align: left; }
th { background: #eef2f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } .note { color: #8a4b00; } .meta { color: #666; font-size: .9em; }
"""


# --------------------------------------------------------------------------------------------
# HTML pieces
# --------------------------------------------------------------------------------------------
def _e(text: Any) -> str:
  return html.escape(str(text))


def png_data_uri(fig) -> str:
  """A matplotlib figure as a data: URI of its PNG (the figure is closed)."""
  import matplotlib.pyplot as plt

  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str) -> str:
  """A <table> of escaped cells; cells that read as numbers are right-aligned."""

  def cell(value):
    text = str(value)
    numeric = text.replace(".", "", 1).replace("-", "", 1).isdigit()
    return f'<td class="num">{_e(text)}</td>' if numeric else f"<td>{_e(text)}</td>"

  head = "".join(f"<th>{_e(h)}</th>" for h in header)
  body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>\n" for row in rows)
  return f'<table id="{table_id}"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table>'


def _note(text: str) -> str:
  return f'<p class="note">{_e(text)}</p>'


def _markdown_cells(line: str) -> list[str]:
  return [cell.strip() for cell in line.strip().strip("|").split("|")]


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------
def eval_section(pdirs: Sequence[epath.Path]) -> str:
  """The eval.json rows of the phases (eval.py's Markdown columns), then their probes."""
  from t5vae_jax import evaluation

  results = {}
  for pdir in pdirs:
    path = pdir / "eval.json"
    if path.exists():
      results[pdir.name] = json.loads(path.read_text())
  if not results:
    return _note("No eval.json in any phase yet: run eval.py --workdir on this workdir.")
  probes = any(r.get("probes") for r in results.values())
  header = _markdown_cells(evaluation.markdown_header(probes=probes).splitlines()[0])
  rows = []
  for result in results.values():
    row = result.get("row") or evaluation.markdown_row(result.get("run", "?"), result)
    cells = _markdown_cells(row)
    rows.append(cells + ["-"] * (len(header) - len(cells)))
  parts = [html_table(header, rows, "eval-table")]
  parts.append(
      '<p class="meta">'
      + "; ".join(
          f"{_e(name)}: {_e(r.get('split'))} split, {_e(r.get('num_examples'))} sentences, "
          f"checkpoint {_e(r.get('checkpoint'))} (step {_e(r.get('step'))})"
          for name, r in results.items()
      )
      + ". Per-sentence nats; PPL per T5 token.</p>"
  )
  if probes:
    probe_rows = []
    for name, result in results.items():
      for target, r in (result.get("probes") or {}).items():
        probe_rows.append(
            [
                name,
                target,
                r["num_classes"],
                f"{r['accuracy']:.3f}",
                f"{r['majority']:.3f}",
                r["num_train"],
                r["num_heldout"],
            ]
        )
    parts.append("<h3>Linear probes on mu</h3>")
    parts.append(
        html_table(
            [
                "phase",
                "label",
                "classes",
                "held-out accuracy",
                "majority baseline",
                "fitted on",
                "held out",
            ],
            probe_rows,
            "probe-table",
        )
    )
  return "\n".join(parts)


def read_curves(pdir: epath.Path) -> dict[str, list[tuple[int, float]]]:
  """{metric: [(step, value)]} of a phase's metrics.jsonl, the last row per step winning."""
  from t5vae_jax import train_lib

  by_step: dict[str, dict[int, float]] = {}
  wanted = {key for _, *keys in CURVE_PANELS for key in keys if key}
  for row in train_lib.read_metrics(pdir / "metrics.jsonl"):
    for key in wanted & set(row):
      by_step.setdefault(key, {})[int(row["step"])] = float(row[key])
  return {key: sorted(points.items()) for key, points in by_step.items()}


def curves_figure(pdirs: Sequence[epath.Path]) -> str | None:
  """One row of panels per phase; None when no phase has logged anything."""
  curves = {pdir.name: read_curves(pdir) for pdir in pdirs}
  curves = {name: c for name, c in curves.items() if c}
  if not curves:
    return None
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(
      len(curves),
      len(CURVE_PANELS),
      squeeze=False,
      figsize=(3.6 * len(CURVE_PANELS), 2.7 * len(curves)),
  )
  for row, (name, phase_curves) in zip(axes, curves.items()):
    for ax, (title, val_key, train_key) in zip(row, CURVE_PANELS):
      if train_key and phase_curves.get(train_key):
        steps, values = zip(*phase_curves[train_key])
        ax.plot(steps, values, color="#bbbbbb", linewidth=1, label="train")
      if phase_curves.get(val_key):
        steps, values = zip(*phase_curves[val_key])
        ax.plot(steps, values, marker="o", markersize=3, color="#1f77b4", label="validation")
      ax.set_title(f"{name}: {title}", fontsize=9)
      ax.set_xlabel("step", fontsize=8)
      ax.tick_params(labelsize=7)
      ax.ticklabel_format(axis="y", useOffset=False)
    row[-1].legend(fontsize=7)
  fig.tight_layout()
  return png_data_uri(fig)


def pca_2d(points) -> tuple[Any, Any]:
  """(N, 2) coordinates on the first two principal axes, and the variance share of each."""
  import numpy as np

  x = np.asarray(points, np.float64)
  x = x - x.mean(axis=0)
  _, singular, vt = np.linalg.svd(x, full_matrices=False)
  total = float(np.sum(singular**2)) or 1.0
  axes = vt[:2] if vt.shape[0] >= 2 else np.vstack([vt, np.zeros_like(vt)])[:2]
  share = np.zeros(2)
  share[: min(2, len(singular))] = singular[:2] ** 2 / total
  return x @ axes.T, share


def value_names(target: str) -> dict[int, str]:
  """Readable names of a label's values (the synthetic attributes'); else the numbers."""
  from t5vae_jax import synthetic

  values = synthetic.ATTRIBUTES.get(target)
  return dict(enumerate(values)) if values else {}


def latent_map_figure(mu, columns: dict[str, Any], title: str) -> str:
  """PCA scatter of mu, one panel per label column (unlabelled points grey), or one panel."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  coords, share = pca_2d(mu)
  panels = list(columns.items())[:MAX_MAP_PANELS] or [(None, None)]
  num_columns = min(len(panels), 3)
  num_rows = -(-len(panels) // num_columns)
  fig, axes = plt.subplots(
      num_rows, num_columns, squeeze=False, figsize=(3.4 * num_columns, 3.0 * num_rows)
  )
  for ax in axes.flat[len(panels) :]:
    ax.axis("off")
  for ax, (target, labels) in zip(axes.flat, panels):
    if labels is None:
      ax.scatter(coords[:, 0], coords[:, 1], s=6, color="#1f77b4", alpha=0.6)
      ax.set_title(title, fontsize=9)
    else:
      names = value_names(target)
      colours = plt.get_cmap("tab10")
      ax.scatter(*coords[labels < 0].T, s=4, color="#cccccc")
      for i, value in enumerate(np.unique(labels[labels >= 0])):
        mask = labels == value
        ax.scatter(
            coords[mask, 0],
            coords[mask, 1],
            s=6,
            alpha=0.7,
            color=colours(i % 10),
            label=names.get(int(value), str(value)),
        )
      ax.set_title(f"{title}: {target}", fontsize=9)
      ax.legend(fontsize=6, markerscale=1.5, loc="best", framealpha=0.6)
    ax.set_xlabel(f"PC1 ({share[0]:.0%})", fontsize=8)
    ax.set_ylabel(f"PC2 ({share[1]:.0%})", fontsize=8)
    ax.tick_params(labelsize=7)
  fig.tight_layout()
  return png_data_uri(fig)


def _load_vae(pdir: epath.Path, checkpoint: str):
  from t5vae_jax import api

  if checkpoint in ("latest", "best"):
    return api.T5VAE.load(pdir, which=checkpoint)
  return api.T5VAE.load(pdir, step=int(checkpoint))


def _split_examples(pdir: epath.Path, split: str, data_dir, tfds_dir) -> list[dict]:
  """The split's examples as the phase's saved config reads them (data_dir/tfds_dir
  override the saved paths)."""
  from t5vae_jax import api
  from t5vae_jax import data as data_lib

  config = api.load_config(pdir)
  if config is None:
    raise FileNotFoundError(f"{pdir / 'config.json'} is missing")
  if data_dir is not None:
    config.data.dir = data_dir
  if tfds_dir is not None:
    config.data.tfds_dir = tfds_dir
  examples, _ = data_lib.read_split(config.data, split)
  return examples


def latent_sections(
    pdirs: Sequence[epath.Path],
    *,
    split: str,
    checkpoint: str,
    max_points: int,
    data_dir=None,
    tfds_dir=None,
) -> tuple[str, str]:
  """(the PCA maps of every phase, the decoding examples of the last phase) as HTML."""
  from t5vae_jax import probe as probe_lib

  maps, decoding = [], ""
  for index, pdir in enumerate(pdirs):
    try:
      examples = _split_examples(pdir, split, data_dir, tfds_dir)[:max_points]
      vae = _load_vae(pdir, checkpoint)
    except Exception as e:  # a report shows what it can: say why this part is missing
      if not (errors.is_user_error(e) or isinstance(e, OSError)):
        raise
      print(f"report: {pdir.name}: no latents ({errors.one_line(e)})", file=sys.stderr)
      maps.append(_note(f"{pdir.name}: latents not available: {errors.one_line(e)}"))
      continue
    texts = [e["text"] for e in examples]
    mu, _ = vae.encode(texts)
    columns = (
        probe_lib.targets(examples, probe_lib.AUTO) if probe_lib.available_targets(examples) else {}
    )
    maps.append(
        f'<img alt="PCA of {_e(pdir.name)} latents" '
        f"src=\"{latent_map_figure(mu, columns, f'{pdir.name} @ {vae.step}')}\">"
    )
    maps.append(
        f'<p class="meta">{_e(pdir.name)}: posterior means of the first {len(texts)} '
        f"sentences of the {_e(split)} split, checkpoint {_e(checkpoint)} (step "
        f"{vae.step}), projected on their first two principal axes.</p>"
    )
    if index == len(pdirs) - 1:
      decoding = decoding_section(vae, texts, pdir.name)
  return "\n".join(maps), decoding


def decoding_section(vae, texts: Sequence[str], name: str) -> str:
  """Reconstructions, samples and an interpolation (greedy decoding) as three tables."""
  originals = list(texts[:NUM_SENTENCES])
  parts = [f'<p class="meta">{_e(name)}, step {vae.step}; greedy decoding throughout.</p>']
  if originals:
    reconstructions = vae.reconstruct(originals)
    rows = [
        [o, r, "yes" if o.strip() == r.strip() else "no"]
        for o, r in zip(originals, reconstructions)
    ]
    parts += [
        "<h3>Reconstructions (z = mu)</h3>",
        html_table(["input", "reconstruction", "exact"], rows, "reconstructions"),
    ]
  samples = vae.sample(NUM_SENTENCES, method="greedy", seed=0)
  parts += [
      "<h3>Samples (z ~ N(0, I))</h3>",
      html_table(["#", "sample"], [[i + 1, s] for i, s in enumerate(samples)], "samples"),
  ]
  ends = [t for i, t in enumerate(texts) if t != texts[0] or i == 0][:2]
  if len(ends) == 2:
    path = vae.interpolate(ends[0], ends[1], steps=INTERPOLATION_STEPS)
    rows = [[f"{i / (INTERPOLATION_STEPS - 1):.2f}", s] for i, s in enumerate(path)]
    parts += [
        (
            f"<h3>Interpolation (linear, from mu of &ldquo;{_e(ends[0])}&rdquo; to mu of "
            f"&ldquo;{_e(ends[1])}&rdquo;)</h3>"
        ),
        html_table(["t", "sentence"], rows, "interpolation"),
    ]
  return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------
def build_report(
    workdir,
    *,
    split: str = "test",
    checkpoint: str = "latest",
    max_points: int = DEFAULT_MAX_POINTS,
    data_dir=None,
    tfds_dir=None,
    phases: Sequence[int] | None = None,
) -> str:
  """The report of a workdir (the phases present, or ``phases``) as one HTML string."""
  from t5vae_jax import evaluation

  workdir = epath.Path(workdir)
  pdirs = evaluation.phase_dirs(workdir, phases)
  curves = curves_figure(pdirs)
  maps, decoding = latent_sections(
      pdirs,
      split=split,
      checkpoint=checkpoint,
      max_points=max_points,
      data_dir=data_dir,
      tfds_dir=tfds_dir,
  )
  created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
  sections = [
      ("Evaluation", eval_section(pdirs)),
      (
          "Training curves",
          f'<img alt="training curves" src="{curves}">'
          if curves
          else _note("No metrics.jsonl rows in any phase."),
      ),
      ("Latent space", maps),
      ("Decoding", decoding or _note("No phase could be loaded for decoding.")),
  ]
  body = "\n".join(f"<h2>{_e(title)}</h2>\n{content}" for title, content in sections)
  return (
      f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
      f"<title>t5vae-jax report: {_e(workdir.name)}</title>\n<style>{_STYLE}</style>"
      f"</head>\n<body>\n<h1>T5-VAE report: {_e(workdir)}</h1>\n"
      f"<p class=\"meta\">Phases: {_e(', '.join(p.name for p in pdirs))}. Written {created} "
      f"by python -m t5vae_jax.report.</p>\n{body}\n</body></html>\n"
  )


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    errors.fail(f"{self.prog}: {message}")


def main(argv: Sequence[str] | None = None) -> None:
  parser = _Parser(prog="python -m t5vae_jax.report", description=__doc__.splitlines()[0])
  parser.add_argument("workdir", help="the training workdir (holds phase1/, phase2/)")
  parser.add_argument("--output", help="the HTML file to write (default: WORKDIR/report.html)")
  parser.add_argument(
      "--phase",
      type=int,
      action="append",
      choices=(1, 2),
      help="only this phase (repeatable); default: each present",
  )
  parser.add_argument("--split", default="test", choices=("validation", "test"))
  parser.add_argument("--checkpoint", default="latest", help="latest | best | <step>")
  parser.add_argument(
      "--max_points", type=int, default=DEFAULT_MAX_POINTS, help="sentences in the latent map"
  )
  parser.add_argument("--data_dir", help="overrides config.data.dir (the raw dataset files)")
  parser.add_argument("--tfds_dir", help="overrides config.data.tfds_dir")
  args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
  if args.checkpoint not in ("latest", "best") and not args.checkpoint.isdigit():
    errors.fail(f"--checkpoint={args.checkpoint}: expected latest, best or a step number")
  if args.max_points < 2:
    errors.fail(f"--max_points={args.max_points}: must be at least 2")
  output = epath.Path(args.output) if args.output else epath.Path(args.workdir) / "report.html"
  try:
    if not epath.Path(args.workdir).exists():
      raise FileNotFoundError(f"{args.workdir}: no such workdir")
    runtime.setup_runtime()
    page = build_report(
        args.workdir,
        split=args.split,
        checkpoint=args.checkpoint,
        max_points=args.max_points,
        data_dir=args.data_dir,
        tfds_dir=args.tfds_dir,
        phases=args.phase,
    )
  except Exception as e:
    if not errors.is_user_error(e):
      raise
    errors.fail(*errors.error_lines(e))
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(page, encoding="utf-8")
  print(f"wrote {output} ({len(page) / 1024:.0f} KiB)")


if __name__ == "__main__":
  main()
