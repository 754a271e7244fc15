"""The package as users install it: pyproject.toml against requirements*.txt, the wheel's
contents, the README's install commands, and the entry points of an installed copy.

The install is the README's own CPU command (read from its Install section, run with
``--no-deps --no-index --no-build-isolation`` added: offline) into a fresh virtualenv that sees
this environment's dependencies through a path line but not the checkout's editable install,
so an entry point that needed the checkout (its ``configs`` package, train.py) would fail here.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from _wheel import ROOT, built_wheel, normalize, pip, pyproject, read_requirements, source_copy

ENTRY_POINTS = {
    "t5vae-train": "t5vae_jax.train_command:run",
    "t5vae-eval": "t5vae_jax.eval_command:run",
    "t5vae-pretrain": "t5vae_jax.pretrain:run",
    "t5vae-latent": "t5vae_jax.latent:run",
}
EXTRAS = ("tpu", "cuda12", "test")


def readme_section(title: str) -> str:
  text = (ROOT / "README.md").read_text()
  match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
  assert match, f"README.md has no '## {title}' section"
  return match.group(1)


def install_commands() -> list[str]:
  """The ``pip install ...`` commands of the README's Install section, as written."""
  return [
      m.group(0).strip() for m in re.finditer(r"pip install [^\n#&']+", readme_section("Install"))
  ]


def jax_version() -> str:
  (pin,) = [r for r in read_requirements("requirements.txt") if normalize(r).startswith("jax==")]
  return pin.split("==")[1]


# ------------------------------------------------------------------------------ metadata
def test_pyproject_pins_what_requirements_pin():
  project = pyproject()["project"]
  assert [normalize(r) for r in project["dependencies"]] == [
      normalize(r) for r in read_requirements("requirements.txt")
  ]
  extras = project["optional-dependencies"]
  assert [normalize(r) for r in extras["test"]] == [
      normalize(r) for r in read_requirements("requirements-test.txt")
  ]
  assert extras["tpu"] == [f"jax[tpu]=={jax_version()}"]
  assert extras["cuda12"] == [f"jax[cuda12]=={jax_version()}"]
  assert project["requires-python"] == ">=3.11"
  assert project["scripts"] == ENTRY_POINTS
  assert project["urls"]["Repository"].startswith("https://github.com/")


# Other projects' repositories that the README cites (not copies of ours).
CITED_REPOSITORIES = {"seongminp/transformers-into-vaes"}  # the paper's released code


def test_every_repository_url_is_the_pyproject_one():
  """The URL is written in pyproject.toml; the README's and the notebook's copies match it."""
  url = pyproject()["project"]["urls"]["Repository"]
  owner_repo = url.removeprefix("https://github.com/")
  for path in (ROOT / "README.md", ROOT / "notebooks" / "latent_space.ipynb"):
    text = path.read_text()
    found = set(re.findall(r"github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?(?=[/\s\"'`)\\]|$)", text))
    assert found - CITED_REPOSITORIES == {owner_repo}, (path.name, found)
  # The README quotes the notebook's install command as Colab runs it (no accelerator).
  cell = json.loads((ROOT / "notebooks" / "latent_space.ipynb").read_text())["cells"][1]
  (template,) = re.findall(r"^\s*(%pip install .*)$", "".join(cell["source"]), re.M)
  command = template.format(EXTRA="", SOURCE=f"git+{url}", PIP_ARGS="").strip()
  assert f"`{command}`" in (ROOT / "README.md").read_text(), command
  colab = f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/"
  links = re.findall(re.escape(colab) + r"([\w.-]+\.ipynb)", (ROOT / "README.md").read_text())
  assert links and all((ROOT / "notebooks" / name).is_file() for name in links), links


def test_readme_install_commands_name_real_extras():
  commands = install_commands()
  assert "pip install ." in commands
  extras = set(pyproject()["project"]["optional-dependencies"])
  named = {m for c in commands for m in re.findall(r"\.\[([\w,-]+)\]", c)}
  assert {"tpu", "cuda12"} <= named <= extras, named
  section = readme_section("Install")
  tpu = [line for line in section.splitlines() if "gcloud compute tpus tpu-vm ssh" in line]
  assert tpu and "--worker=all" in tpu[0]
  assert re.search(
      r'--command=.*python3\.1[1-9] -m venv .*pip install [^\n]*"\.\[tpu\]"', section, re.S
  )


# ------------------------------------------------------------------------------ the wheel
def test_wheel_contents(tmp_path_factory):
  wheel = built_wheel(tmp_path_factory)
  with zipfile.ZipFile(wheel) as zf:
    names = zf.namelist()
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zf.read(f"{dist_info}/METADATA").decode()
    entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
  top_level = {n.split("/")[0] for n in names}
  assert top_level == {"t5vae_jax", dist_info}, top_level  # no configs/, train.py, tests/
  assert "t5vae_jax/datasets/builders.py" in names
  assert "t5vae_jax/accelerator.py" in names and "t5vae_jax/config_files.py" in names
  for name, target in ENTRY_POINTS.items():
    assert re.search(rf"^{name} = {re.escape(target)}$", entry_points, re.M), entry_points
  assert "Requires-Python: >=3.11" in metadata
  requires = re.findall(r"^Requires-Dist: (.*)$", metadata, re.M)
  plain = [normalize(r) for r in requires if ";" not in r]
  assert plain == [normalize(r) for r in read_requirements("requirements.txt")]
  for extra in EXTRAS:
    assert f"Provides-Extra: {extra}" in metadata
  assert any(
      normalize(r.split(";")[0]) == f"jax[tpu]=={jax_version()}" and 'extra == "tpu"' in r
      for r in requires
  )


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """A fresh virtualenv with the README's CPU install command run in a copy of the checkout;
  it sees this environment's packages through a path line (no .pth of theirs runs)."""
  src = source_copy(tmp_path_factory)
  venv = tmp_path_factory.mktemp("venv")
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  site = pathlib.Path(
      subprocess.check_output(
          [
              str(venv / "bin" / "python"),
              "-c",
              "import sysconfig; print(sysconfig.get_path('purelib'))",
          ],
          text=True,
      ).strip()
  )
  (site / "_t5vae_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
  (command,) = [c for c in install_commands() if c == "pip install ."]
  args = shlex.split(command)[2:]
  pip(
      "--python",
      str(venv / "bin" / "python"),
      "install",
      "-q",
      "--no-deps",
      "--no-index",
      "--no-build-isolation",
      *args,
      cwd=src,
  )
  return venv


def _run(venv, *cmd, cwd):
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
  return subprocess.run(list(cmd), capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_installed_entry_points(installed, tmp_path):
  bin_dir = installed / "bin"
  where = _run(
      installed,
      str(bin_dir / "python"),
      "-c",
      "import importlib.util as u, t5vae_jax; print(t5vae_jax.__file__, u.find_spec('configs'))",
      cwd=tmp_path,
  )
  assert where.returncode == 0, where.stderr
  module_file, configs_spec = where.stdout.split()
  assert pathlib.Path(module_file).is_relative_to(installed), module_file  # not the checkout
  assert configs_spec == "None"  # no top-level configs package installed
  for name, expected in (
      ("t5vae-train", "--workdir"),
      ("t5vae-eval", "--num_samples"),
      ("t5vae-pretrain", "--resume"),
      ("t5vae-latent", "transfer"),
  ):
    result = _run(installed, str(bin_dir / name), "--help", cwd=tmp_path)
    assert result.returncode == 0, (name, result.stderr[-2000:])
    assert expected in result.stdout, name
  # A checkout's config file through the entry point, from another directory: it loads (with
  # its sibling configs/default.py) and the bad override is reported in one line, exit 2.
  result = _run(
      installed,
      str(bin_dir / "t5vae-train"),
      f"--config={ROOT / 'configs/ptb.py'}",
      "--phase=1",
      f"--workdir={tmp_path / 'w'}",
      "--config.model.dtype=float64",
      cwd=tmp_path,
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.startswith("error: config.model.dtype='float64' is not allowed")
  assert not (tmp_path / "w").exists()


def test_venv_script_rejects_an_unknown_accelerator(tmp_path):
  env = dict(os.environ, T5VAE_ACCELERATOR="gpu")
  proc = subprocess.run(
      ["bash", str(ROOT / "scripts" / "test.sh")],
      capture_output=True,
      text=True,
      env=env,
      cwd=tmp_path,
      timeout=60,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip() == (
      "error: T5VAE_ACCELERATOR=gpu is not allowed; allowed: cpu, tpu, cuda12"
  )


# ------------------------------------------------------------------------------ what a run uses
def fake_devices(platform: str, kind: str, count: int = 4):
  """Stand-ins with the two attributes the start-up code reads from a jax.Device."""
  import types

  return [types.SimpleNamespace(platform=platform, device_kind=kind, id=i) for i in range(count)]


TPU = fake_devices("tpu", "TPU v5 lite")
GPU = fake_devices("gpu", "NVIDIA H100 80GB HBM3", 2)


def test_auto_dtype_follows_the_devices_not_the_host_backend():
  import jax
  from t5vae_jax import accelerator

  assert jax.default_backend() == "cpu"  # as under an ahead-of-time compile for a TPU
  assert accelerator.compute_dtype("auto", TPU) == "bfloat16"
  assert accelerator.compute_dtype("auto", GPU) == "bfloat16"
  assert accelerator.compute_dtype("auto", jax.devices()) == "float32"
  assert accelerator.compute_dtype("auto", iter(jax.devices())) == "float32"  # mesh.devices.flat
  assert accelerator.compute_dtype("float32", TPU) == "float32"
  assert accelerator.compute_dtype("bfloat16", jax.devices()) == "bfloat16"
  with pytest.raises(ValueError, match="one platform"):
    accelerator.compute_dtype("auto", TPU + jax.devices())


def test_auto_dtype_where_models_are_built(tmp_path, monkeypatch):
  """train_lib.build_setup on the run's devices; api.build_model (T5VAE.load, eval.py) on the
  devices it loads onto: a phase saved with "auto" computes in float32 on a CPU."""
  import jax.numpy as jnp
  from t5vae_jax import api, train_lib
  from t5vae_jax import checkpoint as ckpt_lib
  from t5vae_jax import config_files
  from t5vae_jax import model as model_lib
  from t5vae_jax import t5 as t5_lib

  config = config_files.load_module(ROOT / "configs" / "demo.py").get_config()
  assert config.model.dtype == "auto"  # the default
  monkeypatch.setattr(train_lib, "get_tokenizer", lambda config, workdir: [None] * 100)
  assert train_lib.build_setup(config, tmp_path).model.dtype == jnp.float32
  assert train_lib.build_setup(config, tmp_path, TPU).model.dtype == jnp.bfloat16
  for saved, devices, expected in (
      ("auto", None, jnp.float32),
      ("auto", TPU, jnp.bfloat16),
      ("auto", GPU, jnp.bfloat16),
      ("float32", TPU, jnp.float32),
      ("bfloat16", None, jnp.bfloat16),
  ):
    phase_dir = tmp_path / saved
    ckpt_lib.write_model_spec(
        phase_dir,
        t5_lib.T5Config(vocab_size=64, d_model=16, num_layers=1),
        model_lib.VAEConfig(latent_dim=4),
        saved,
    )
    assert api.build_model(phase_dir, devices=devices).dtype == expected, (saved, devices)
  assert api.build_model(tmp_path / "bfloat16", "float32").dtype == jnp.float32


def test_startup_line_and_the_cpu_warning(monkeypatch, capsys):
  import jax
  from t5vae_jax import accelerator

  assert (
      accelerator.startup_line(TPU, 2, "bfloat16")
      == "startup: backend tpu, 4 x TPU v5 lite, 2 processes, compute dtype bfloat16"
  )
  monkeypatch.setattr(accelerator, "installed_plugins", lambda: [])
  lines = accelerator.announce(jax.devices(), "float32")
  assert lines == [
      f"startup: backend cpu, {jax.device_count()} x cpu, 1 process, compute dtype float32"
  ]
  assert capsys.readouterr().err == lines[0] + "\n"
  monkeypatch.setattr(accelerator, "installed_plugins", lambda: ["libtpu"])
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  lines = accelerator.announce(jax.devices(), "float32")
  assert lines[1] == (
      "warning: running on the CPU although libtpu is installed (JAX found no "
      "accelerator: none on this machine, another process holds it, or its "
      "driver is missing)"
  )
  assert capsys.readouterr().err.splitlines() == lines
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert accelerator.cpu_fallback_warning(jax.devices(), ["jax-cuda12-plugin"]).endswith(
      "jax-cuda12-plugin is installed (JAX_PLATFORMS=cpu is set)"
  )
  assert accelerator.cpu_fallback_warning(TPU, ["libtpu"]) is None  # it found the TPU


def test_plugin_detection_reads_installed_distributions(monkeypatch):
  import importlib.metadata
  from t5vae_jax import accelerator

  # The venv has JAX for the CPU only (the tests' libtpu sits outside its import path; asked in
  # a fresh process: test_aot.py may have imported it into this one).
  fresh = subprocess.run(
      [
          sys.executable,
          "-c",
          "from t5vae_jax import accelerator; print(accelerator.installed_plugins())",
      ],
      capture_output=True,
      text=True,
      timeout=120,
      cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=str(ROOT)),
  )
  assert fresh.stdout.strip() == "[]", fresh.stderr[-2000:]
  real = importlib.metadata.distribution

  def distribution(name):
    return object() if name in ("libtpu", "jax-cuda12-pjrt") else real(name)

  monkeypatch.setattr(importlib.metadata, "distribution", distribution)
  assert accelerator.installed_plugins() == ["libtpu", "jax-cuda12-pjrt"]


def test_train_py_prints_the_startup_line_first(tmp_path):
  """train.py's first line of its own on stderr, before the data and the model are made."""
  cmd = [
      sys.executable,
      str(ROOT / "train.py"),
      f"--config={ROOT / 'configs/demo.py'}",
      "--phase=1",
      f"--workdir={tmp_path / 'w'}",
      f"--config.data.tfds_dir={tmp_path / 't'}",
      "--config.progress_bar=False",
  ]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.Popen(
      cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path
  )
  try:
    ours = []
    for line in proc.stderr:
      if not re.match(r"^[IWE]\d{4} |^\[transformers\]", line):  # absl / library chatter
        ours.append(line.rstrip("\n"))
        break
  finally:
    proc.kill()
    proc.wait()
  assert ours == ["startup: backend cpu, 2 x cpu, 1 process, compute dtype float32"]
