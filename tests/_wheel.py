"""The project's wheel, built once per test session from a copy of the checkout, offline.

Built with ``pip wheel --no-deps --no-build-isolation --no-index`` (the setuptools of this
environment, no download) from a copy of the files the build reads, so the checkout gets no
build/ or egg-info and tests running at the same time never see a half-built tree. Shared by
tests/test_install.py (contents, entry points) and tests/test_notebook.py (the install cell).

    from _wheel import ROOT, built_wheel, read_requirements, pyproject
    wheel = built_wheel(tmp_path_factory)        # <tmp>/dist/t5vae_jax-<version>-py3-none-any.whl
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
import time
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# What setuptools reads to build the wheel (pyproject.toml, its readme, the package), and the
# checkout's other Python at the top level, which a wrong package list would pick up.
BUILD_INPUTS = ("pyproject.toml", "README.md", "t5vae_jax", "configs", "train.py", "eval.py")

_CACHE: dict[str, pathlib.Path] = {}


def pyproject() -> dict:
  return tomllib.loads((ROOT / "pyproject.toml").read_text())


def read_requirements(name: str) -> list[str]:
  """The requirement lines of a requirements file (comments, blanks and ``-r`` dropped)."""
  lines = []
  for line in (ROOT / name).read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line and not line.startswith("-"):
      lines.append(line)
  return lines


def normalize(requirement: str) -> str:
  """``name==1.0`` with the name normalised as PEP 503 does (ml_collections: ml-collections)."""
  match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*", requirement)
  assert match, requirement
  name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
  return f"{name}{match.group(2) or ''}{match.group(3).replace(' ', '')}"


def copy_sources(dest: pathlib.Path) -> pathlib.Path:
  dest.mkdir(parents=True, exist_ok=True)
  for name in BUILD_INPUTS:
    src = ROOT / name
    if src.is_dir():
      shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
      shutil.copy2(src, dest / name)
  return dest


def pip(*args: str, cwd=None, timeout: int = 300) -> subprocess.CompletedProcess:
  """This environment's pip, offline (--no-index)."""
  cmd = [sys.executable, "-m", "pip", *args]
  proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return proc


def built_wheel(tmp_path_factory) -> pathlib.Path:
  """The wheel (cached for the session)."""
  if "wheel" not in _CACHE:
    root = tmp_path_factory.mktemp("wheel")
    src = copy_sources(root / "src")
    start = time.perf_counter()
    pip(
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-w",
        str(root / "dist"),
        str(src),
    )
    wheels = sorted((root / "dist").glob("t5vae_jax-*.whl"))
    assert len(wheels) == 1, wheels
    print(f"\n[wheel built in {time.perf_counter() - start:.1f} s: {wheels[0].name}]")
    _CACHE["wheel"] = wheels[0]
    _CACHE["src"] = src
  return _CACHE["wheel"]


def source_copy(tmp_path_factory) -> pathlib.Path:
  """The copy of the checkout that the wheel was built from."""
  built_wheel(tmp_path_factory)
  return _CACHE["src"]
