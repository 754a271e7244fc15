"""What a run computes on: the start-up line, an accelerator left unused, ``model.dtype="auto"``.

Every command (train.py / t5vae-train, eval.py / t5vae-eval, t5vae_jax.pretrain / t5vae-pretrain)
prints one line before anything heavy starts::

    startup: backend tpu, 4 x TPU v5 lite, 1 process, compute dtype bfloat16

because the costly mistake is silent: a TPU VM or GPU box whose JAX has no accelerator plugin
(``pip install jax`` without the ``tpu`` / ``cuda12`` extra) trains on the host CPU, a hundred
times slower, and says nothing. When the devices are CPUs although an accelerator plugin
(libtpu, jax-cuda12-plugin / jax-cuda12-pjrt) is installed, a second line warns.

``model.dtype = "auto"`` computes in bfloat16 on TPUs and GPUs and in float32 on CPUs, keyed on
the devices the computation runs on (a run's mesh), never on ``jax.default_backend()``: a
program compiled ahead of time for TPU devices on a CPU host sees "cpu" there.
"auto" is what a phase directory's config.json and model.json keep, so a checkpoint trained in
bfloat16 on a TPU computes in float32 when loaded on a notebook's CPU; an explicit "float32" or
"bfloat16" is kept everywhere.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from typing import Iterable

AUTO = "auto"
# jax.Device.platform values of accelerators (the CPU's is "cpu").
ACCELERATOR_PLATFORMS = frozenset({"tpu", "gpu", "cuda", "rocm"})
# (distribution, module) of the accelerator plugins that jax[tpu] / jax[cuda12] install.
ACCELERATOR_PLUGINS = (
    ("libtpu", "libtpu"),
    ("jax-cuda12-plugin", "jax_cuda12_plugin"),
    ("jax-cuda12-pjrt", "jax_plugins.xla_cuda12"),
)


def _distribution_installed(name: str) -> bool:
  try:
    importlib.metadata.distribution(name)
    return True
  except importlib.metadata.PackageNotFoundError:
    return False


def _module_importable(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):  # a parent package that is missing or broken
    return False


def installed_plugins() -> list[str]:
  """The accelerator plugins installed in this environment (distribution names)."""
  return [
      dist
      for dist, module in ACCELERATOR_PLUGINS
      if _distribution_installed(dist) or _module_importable(module)
  ]


def platform_of(devices: Iterable) -> str:
  """The platform ("cpu", "tpu", "gpu") of the devices a computation runs on."""
  platforms = sorted({d.platform for d in devices})  # devices: any iterable (mesh.devices.flat)
  if len(platforms) != 1:
    raise ValueError(f"expected devices of one platform, got {platforms or 'none'}")
  return platforms[0]


def compute_dtype(name: str, devices: Iterable) -> str:
  """``model.dtype`` resolved for ``devices``: "auto" is bfloat16 on TPU/GPU, float32 on CPU;
  any other name is returned as it is."""
  if name != AUTO:
    return name
  return "bfloat16" if platform_of(devices) in ACCELERATOR_PLATFORMS else "float32"


def startup_line(devices: Iterable, process_count: int, dtype: str) -> str:
  """``startup: backend <platform>, <count> x <device kind>, <n> process(es), compute dtype
  <dtype>``."""
  devices = list(devices)
  kinds = ", ".join(sorted({str(d.device_kind) for d in devices}))
  processes = f"{process_count} process" + ("" if process_count == 1 else "es")
  return (
      f"startup: backend {platform_of(devices)}, {len(devices)} x {kinds}, {processes}, "
      f"compute dtype {dtype}"
  )


def cpu_fallback_warning(devices: Iterable, plugins: Iterable[str]) -> str | None:
  """A warning line when the devices are CPUs although an accelerator plugin is installed."""
  plugins = list(plugins)
  if not plugins or platform_of(devices) != "cpu":
    return None
  forced = os.environ.get("JAX_PLATFORMS", "")
  cause = (
      f"JAX_PLATFORMS={forced} is set"
      if forced
      else "JAX found no accelerator: none on this machine, another process holds it, or its "
      "driver is missing"
  )
  return (
      f"warning: running on the CPU although {' and '.join(plugins)} "
      f"{'is' if len(plugins) == 1 else 'are'} installed ({cause})"
  )


def announce(devices: Iterable, dtype: str, file=None) -> list[str]:
  """Prints the start-up line (and the CPU warning) on the lead process; returns the lines."""
  import jax

  devices = list(devices)
  lines = [startup_line(devices, jax.process_count(), dtype)]
  warning = cpu_fallback_warning(devices, installed_plugins())
  if warning:
    lines.append(warning)
  if jax.process_index() == 0:
    for line in lines:
      print(line, file=file or sys.stderr, flush=True)
  return lines
