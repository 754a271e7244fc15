"""notebooks/latent_space.ipynb runs top to bottom (on the tiny demo checkpoint, no training)."""
import os

import pytest

from _demo_checkpoint import ROOT, demo_workdir

NOTEBOOK = ROOT / "notebooks" / "latent_space.ipynb"


def test_notebook_runs(tmp_path_factory, tmp_path):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  checkpoint = demo_workdir(tmp_path_factory) / "phase2"
  nb = nbformat.read(NOTEBOOK, as_version=4)
  env = {"T5VAE_CHECKPOINT": str(checkpoint), "T5VAE_WORKDIR": str(tmp_path / "unused"),
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  saved = {k: os.environ.get(k) for k in [*env, "MPLBACKEND"]}
  os.environ.update(env)  # the kernel inherits this process's environment
  os.environ.pop("MPLBACKEND", None)  # the notebook's inline backend draws the figure
  try:
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
  assert f"checkpoint: {checkpoint}" in text
  assert "exact reconstructions:" in text and "sampled (temperature 0.8" in text
  assert "1.00  " in text  # the interpolation's last step
  assert any("image/png" in o.get("data", {}) for o in outputs), "no PCA figure"
  assert not (tmp_path / "unused").exists()  # loaded, not trained
