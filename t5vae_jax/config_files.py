"""How the run configs (``configs/*.py``) reach each other: by path, not as a package.

A run config is a file of the checkout that ml_collections loads by path
(``--config configs/ptb.py``). The configs are not installed: a top-level package named
``configs`` in site-packages would be a generic name that any other project could shadow or
clash with. A config that builds on another (each on ``configs/default.py``) therefore loads
its sibling file by path::

    from t5vae_jax import config_files
    default = config_files.sibling(__file__, "default")

which works from any working directory, with ``python train.py``, with the ``t5vae-train``
entry point of an installed package, and for a config file kept outside the checkout that
names the checkout's ``configs/default.py`` with ``load_module``.
"""

from __future__ import annotations

import importlib.util
import pathlib
import types
from typing import Union


def load_module(path: Union[str, pathlib.Path]) -> types.ModuleType:
  """The Python file at ``path``, executed as a fresh module (not entered in sys.modules)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no such config file: {path}")
  spec = importlib.util.spec_from_file_location(f"_t5vae_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sibling(config_file: str, name: str) -> types.ModuleType:
  """The config ``<name>.py`` in the directory of ``config_file`` (pass ``__file__``)."""
  return load_module(pathlib.Path(config_file).resolve().with_name(f"{name}.py"))
