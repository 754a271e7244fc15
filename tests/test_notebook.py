"""notebooks/latent_space.ipynb runs top to bottom: its install cell against the freshly built
wheel, then on a checkpoint of non-synthetic data (no attributes: the PCA is coloured by length),
loaded, not trained. The attribute colouring of the synthetic grammar runs on its own below."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from _demo_checkpoint import ROOT, demo_workdir
from _wheel import built_wheel

NOTEBOOK = ROOT / "notebooks" / "latent_space.ipynb"


def ptb_like_checkpoint(demo_phase_dir, root):
  """A copy of the demo's phase directory whose config names PTB-format files (train.txt,
  valid.txt, test.txt: text only, no attributes), as a checkpoint trained on PTB would."""
  from t5vae_jax import synthetic

  phase_dir = root / "ptb_run" / "phase2"
  shutil.copytree(demo_phase_dir, phase_dir)
  data_dir = root / "ptb"
  data_dir.mkdir()
  for i, name in enumerate(("train.txt", "valid.txt", "test.txt")):
    lines = [r["text"] for r in synthetic.generate(40, (99, i))]
    (data_dir / name).write_text("\n".join(lines) + "\n")
  config = json.loads((phase_dir / "config.json").read_text())
  config["data"].update(name="ptb", dir=str(data_dir), tfds_dir=str(root / "tfds"))
  (phase_dir / "config.json").write_text(json.dumps(config, indent=2))
  return phase_dir


def test_notebook_runs(tmp_path_factory, tmp_path):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  checkpoint = ptb_like_checkpoint(demo_workdir(tmp_path_factory) / "phase2", tmp_path)
  wheel = built_wheel(tmp_path_factory)
  site = tmp_path / "site"
  nb = nbformat.read(NOTEBOOK, as_version=4)
  env = {
      "T5VAE_CHECKPOINT": str(checkpoint),
      "T5VAE_WORKDIR": str(tmp_path / "unused"),
      "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
      # The install cell's source: the wheel instead of the repository, offline, no deps.
      "T5VAE_INSTALL_FROM": wheel.as_uri(),
      "T5VAE_PIP_ARGS": f"--no-deps --no-index --target {site}",
  }
  saved = {k: os.environ.get(k) for k in [*env, "MPLBACKEND"]}
  os.environ.update(env)  # the kernel inherits this process's environment
  os.environ.pop("MPLBACKEND", None)  # the notebook's inline backend draws the figure
  try:
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  # The install cell installed the wheel, and the package imports from where it went.
  assert (site / "t5vae_jax" / "api.py").is_file()
  assert not (site / "configs").exists()
  imported = subprocess.run(
      [sys.executable, "-c", "import t5vae_jax; print(t5vae_jax.__file__)"],
      cwd=tmp_path,
      env=dict(os.environ, PYTHONPATH=str(site)),
      capture_output=True,
      text=True,
      timeout=60,
  )
  assert imported.returncode == 0, imported.stderr
  assert imported.stdout.strip() == str(site / "t5vae_jax" / "__init__.py")

  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
  assert f"checkpoint: {checkpoint}" in text
  assert "computes in float32" in text  # model.dtype "auto" on a CPU
  assert "not readable here" not in text  # it read the PTB-format test split
  assert "exact reconstructions:" in text and "of 40 test sentences" in text
  assert "sampled (temperature 0.8" in text
  assert "1.00  " in text  # the interpolation's last step
  assert "explained by each attribute" not in text  # no attributes in this data
  assert any("image/png" in o.get("data", {}) for o in outputs), "no PCA figure"
  assert not (tmp_path / "unused").exists()  # loaded, not trained


def test_pca_cell_colours_by_the_grammar_attributes(capsys):
  """The PCA cell on records that carry attributes (the synthetic grammar's): a panel for each
  of the two attributes that separate best, one scatter per value of each."""
  nbformat = pytest.importorskip("nbformat")
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from t5vae_jax import synthetic

  cell = next(
      c
      for c in nbformat.read(NOTEBOOK, as_version=4).cells
      if c.cell_type == "code" and "np.linalg.svd" in c.source
  )
  source = "\n".join(line for line in cell.source.splitlines() if not line.startswith("%"))
  records = synthetic.generate(200, 0)
  # A code in which the subject's number moves z along one axis: the PCA must find it.
  rng = np.random.default_rng(0)
  mu = rng.normal(size=(200, 8)) * 0.1
  mu[:, 0] += 3 * np.array([r["attributes"]["number"] for r in records])
  namespace = {"np": np, "mu": mu, "records": records, "texts": [r["text"] for r in records]}
  plt.close("all")
  exec(compile(source, "pca cell", "exec"), namespace)
  assert "explained by each attribute" in capsys.readouterr().out
  assert namespace["attributes"][0] == "number"
  axes = plt.gcf().axes
  assert len(axes) == 2 and "coloured by number" in axes[0].get_title()
  assert len(axes[0].collections) == len(synthetic.ATTRIBUTES["number"])
  plt.close("all")
