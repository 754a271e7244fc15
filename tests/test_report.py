"""python -m t5vae_jax.report on a copy of the shared tiny demo run (with a real eval.json and
probes from evaluate_phase): one self-contained HTML file whose tables carry what eval.json and
the T5VAE API say, rendered in headless Chromium (Debian's `chromium`) and checked not blank;
user mistakes end with one ``error:`` line."""

import base64
import html.parser
import json
import shutil
import subprocess

import numpy as np
import pytest
from _demo_checkpoint import demo_workdir

from t5vae_jax import report

CHROMIUM = next(
    (
        shutil.which(name)
        for name in ("chromium", "chromium-browser", "google-chrome")
        if shutil.which(name)
    ),
    None,
)


class _Page(html.parser.HTMLParser):
  """Tables (by id: rows of cell texts), image sources and every URL-bearing attribute."""

  def __init__(self):
    super().__init__()
    self.tables, self.images, self.urls = {}, [], []
    self._table = self._row = self._cell = None

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    self.urls += [attrs[k] for k in ("src", "href") if k in attrs]
    if tag == "table":
      self._table = self.tables.setdefault(attrs.get("id"), [])
    elif tag == "tr" and self._table is not None:
      self._row = []
      self._table.append(self._row)
    elif tag in ("td", "th") and self._row is not None:
      self._cell = []
    elif tag == "img":
      self.images.append(attrs["src"])
    elif tag in ("link", "script") and (attrs.get("src") or attrs.get("href")):
      self.urls.append(attrs.get("src") or attrs.get("href"))

  def handle_endtag(self, tag):
    if tag in ("td", "th") and self._cell is not None:
      self._row.append("".join(self._cell).strip())
      self._cell = None
    elif tag == "table":
      self._table = None

  def handle_data(self, data):
    if self._cell is not None:
      self._cell.append(data)


def _parse(text: str) -> _Page:
  page = _Page()
  page.feed(text)
  return page


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(a copy of the demo run with phase2/eval.json from eval (probes too), its report.html)."""
  import jax

  from t5vae_jax import evaluation, sharding

  workdir = tmp_path_factory.mktemp("report") / "demo"
  shutil.copytree(demo_workdir(tmp_path_factory), workdir)
  evaluation.evaluate_phase(
      workdir / "phase2",
      num_samples=4,
      iw_chunk=4,
      batch_size=32,
      mi_batch_size=32,
      progress=False,
      mesh=sharding.make_mesh(jax.devices()[:1]),
      probe_labels="auto",
      config_overrides=["data.bucket_lengths=(16,)"],
  )
  out = workdir / "out" / "report.html"
  report.main([str(workdir), "--output", str(out)])
  return workdir, out


def test_the_page_is_self_contained_and_says_what_eval_and_the_api_say(run, capsys):
  workdir, out = run
  text = out.read_text(encoding="utf-8")
  page = _parse(text)
  # Self-contained: every URL is an embedded PNG, and each decodes as one.
  assert page.urls and all(u.startswith("data:image/png;base64,") for u in page.urls), [
      u[:40] for u in page.urls
  ]
  assert len(page.images) == 2  # the curves, the latent map of phase 2
  for src in page.images:
    assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
  # The eval table is eval.json's row (with the probe column), the probe table its probes.
  saved = json.loads((workdir / "phase2" / "eval.json").read_text())
  header, row = page.tables["eval-table"]
  assert row == [c.strip() for c in saved["row"].strip().strip("|").split("|")]
  assert header[-1] == "probe acc. (majority)" and len(header) == len(row)
  probes = {r[1]: r for r in page.tables["probe-table"][1:]}
  assert (
      set(probes)
      == set(saved["probes"])
      == {"subject", "number", "verb", "tense", "object", "place"}
  )
  assert probes["tense"][3] == f"{saved['probes']['tense']['accuracy']:.3f}"
  # Decoding: 5 reconstructions, 5 samples, 7 interpolation steps; the path starts at mu of
  # its first sentence, so its first step is that sentence's reconstruction.
  reconstructions = page.tables["reconstructions"][1:]
  assert len(reconstructions) == 5 and len(page.tables["samples"]) == 6
  interpolation = page.tables["interpolation"][1:]
  assert [r[0] for r in interpolation] == [f"{i / 6:.2f}" for i in range(7)]
  assert interpolation[0][1] == reconstructions[0][1]
  assert sum(r[2] == "yes" for r in reconstructions) >= 3  # the demo VAE reconstructs most
  from t5vae_jax import api

  vae = api.T5VAE.load(workdir / "phase2")
  assert vae.reconstruct([r[0] for r in reconstructions]) == [r[1] for r in reconstructions]


def _screenshot(html_path, png_path):
  proc = subprocess.run(
      [
          CHROMIUM,
          "--headless",
          "--no-sandbox",
          "--disable-gpu",
          "--hide-scrollbars",
          "--window-size=1200,1800",
          f"--screenshot={png_path}",
          html_path.as_uri(),
      ],
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
  )
  assert proc.returncode == 0 and png_path.exists(), proc.stderr[-2000:]
  from matplotlib import image

  return image.imread(str(png_path))[..., :3]


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium binary on PATH (Debian: apt-get "
    "install -y chromium); the report is not rendered",
)
def test_it_renders_in_headless_chromium(run, tmp_path):
  _, out = run
  pixels = _screenshot(out, tmp_path / "report.png")
  # The check itself: an empty page renders as one flat colour.
  (tmp_path / "blank.html").write_text("<!DOCTYPE html><html><body></body></html>")
  blank = _screenshot(tmp_path / "blank.html", tmp_path / "blank.png")
  assert float(np.var(blank)) == 0.0
  assert float(np.var(pixels)) > 1e-3
  # The figures drew: many distinct colours (text alone is black on white, anti-aliased).
  colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
  assert len(colours) > 200, len(colours)
  dom = subprocess.run(
      [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", out.as_uri()],
      capture_output=True,
      text=True,
      timeout=120,
      check=True,
  ).stdout
  tables = _parse(dom).tables
  for table_id in ("eval-table", "probe-table", "reconstructions", "samples", "interpolation"):
    assert len(tables.get(table_id, [])) >= 2, table_id


def test_user_mistakes_are_one_error_line(tmp_path, capsys):
  def error(*argv):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
      report.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]

  assert "no such workdir" in error(str(tmp_path / "missing"))
  assert "has no phase1/ or phase2/" in error(str(tmp_path))
  assert "expected latest, best or a step number" in error(str(tmp_path), "--checkpoint", "new")
  assert "--split" in error(str(tmp_path), "--split", "train")


def test_pca_against_numpy_covariance():
  rng = np.random.default_rng(0)
  points = rng.normal(size=(300, 4)) * [5.0, 2.0, 1.0, 0.1] + 3.0
  coords, share = report.pca_2d(points)
  eigenvalues, eigenvectors = np.linalg.eigh(np.cov(points.T))
  top = eigenvectors[:, ::-1][:, :2]
  centred = points - points.mean(0)
  np.testing.assert_allclose(np.abs(coords), np.abs(centred @ top), atol=1e-8)
  np.testing.assert_allclose(share, eigenvalues[::-1][:2] / eigenvalues.sum(), rtol=1e-10)


def test_latent_map_without_labels_and_with_unlabelled_points():
  rng = np.random.default_rng(1)
  points = rng.normal(size=(40, 3))
  for columns in ({}, {"label": np.where(np.arange(40) % 4, np.arange(40) % 3, -1)}):
    uri = report.latent_map_figure(points, columns, "phase2 @ 1")
    assert base64.b64decode(uri.split(",", 1)[1])[:4] == b"\x89PNG"
