"""Device mesh and shardings: data parallel, FSDP-style params, and tensor parallelism.

A 2-D mesh: ``data`` (the batch is split along it) x ``model`` (``config.model_parallel``
devices, 1 by default). Each parameter gets a PartitionSpec from two tables:

* ``PARAM_LOGICAL_AXES``: the logical axes of each parameter (T5X-style names: ``embed``,
  ``heads``, ``mlp``, ``vocab``), by the end of its path. Optimizer state mirrors the params'
  paths (Adam's mu and nu end with the same keys), so it is split as its parameter is.
* the rule table ``config.sharding_rules`` ("heads:model,mlp:model,vocab:model" by default):
  which logical axis goes to which mesh axis. A dimension that the mesh axis does not divide
  stays whole, and a mesh axis of size 1 splits nothing, so ``model_parallel=1`` gives the specs
  of a 1-D data-parallel mesh.

With ``fsdp=True`` each parameter (and its optimizer state) is also split along ``data``, on
its largest dimension not already split that the data axis divides; small leaves stay whole.
The same code runs on 1 CPU, 8 simulated CPU devices, a GPU or a multi-host TPU slice; XLA's
SPMD partitioner places the activations (heads and feed-forward columns split over ``model``).
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from t5vae_jax import choices

DATA_AXIS, MODEL_AXIS = choices.MESH_AXES

# (pattern on the end of a parameter's path, its logical axes); the first match decides, and a
# parameter that matches none has no logical axes (split by FSDP only).
PARAM_LOGICAL_AXES = (
    (r"\['(q|k|v)'\]\['kernel'\]$", ("embed", "heads")),  # attention projections in
    (r"\['o'\]\['kernel'\]$", ("heads", "embed")),  # attention output
    (r"\['wi(_0|_1)?'\]\['kernel'\]$", ("embed", "mlp")),  # feed-forward in (gated: two)
    (r"\['wo'\]\['kernel'\]$", ("mlp", "embed")),  # feed-forward out
    (r"\['shared'\]\['embedding'\]$", ("vocab", "embed")),
    (r"\['lm_head'\]\['kernel'\]$", ("embed", "vocab")),  # untied output layer (T5 v1.1)
)
DEFAULT_RULES = "heads:model,mlp:model,vocab:model"


parse_rules = choices.parse_sharding_rules


def make_mesh(devices: Optional[Sequence[jax.Device]] = None, model_parallel: int = 1) -> Mesh:
  """``devices`` (default: all) as a (data, model) mesh with ``model_parallel`` columns."""
  devices = np.asarray(jax.devices() if devices is None else list(devices))
  if model_parallel < 1 or devices.size % model_parallel:
    raise ValueError(
        f"model_parallel={model_parallel} must divide the number of devices ({devices.size})"
    )
  return Mesh(devices.reshape(-1, model_parallel), choices.MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis (whole on each model column)."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_axes(path: str) -> tuple[Optional[str], ...]:
  """The logical axes of the parameter (or optimizer-state leaf) at ``path`` (jax keystr)."""
  for pattern, axes in PARAM_LOGICAL_AXES:
    if re.search(pattern, path):
      return axes
  return ()


def param_spec(
    path: str,
    shape: tuple[int, ...],
    mesh_shape: dict[str, int],
    fsdp: bool,
    rules: Sequence[tuple[str, str]] = parse_rules(DEFAULT_RULES),
    min_fsdp_size: int = 2**12,
) -> P:
  """The PartitionSpec of one leaf: the rule table on its logical axes, then FSDP."""
  spec: list[Optional[str]] = [None] * len(shape)
  rule = dict(rules)
  axes = logical_axes(path)
  if len(axes) == len(shape):
    for dim, logical in enumerate(axes):
      mesh_axis = rule.get(logical)
      size = mesh_shape.get(mesh_axis, 1)
      if size > 1 and shape[dim] % size == 0 and mesh_axis not in spec:
        spec[dim] = mesh_axis
  num_shards = mesh_shape[DATA_AXIS]
  if (
      fsdp
      and num_shards > 1
      and DATA_AXIS not in spec
      and int(np.prod(shape, dtype=np.int64)) >= min_fsdp_size
  ):
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
      if spec[dim] is None and shape[dim] % num_shards == 0:
        spec[dim] = DATA_AXIS
        break
  return P(*spec) if any(spec) else P()


def tree_shardings(tree: Any, mesh: Mesh, fsdp: bool, rules: str = DEFAULT_RULES) -> Any:
  """A NamedSharding per leaf of ``tree`` (arrays or ShapeDtypeStructs) on ``mesh``, by the
  rule table ``rules`` (``config.sharding_rules``, parsed once here) and FSDP."""
  mesh_shape = dict(mesh.shape)
  rule_table = parse_rules(rules)

  def one(path, leaf):
    shape = tuple(getattr(leaf, "shape", ()))
    spec = param_spec(jax.tree_util.keystr(path), shape, mesh_shape, fsdp, rule_table)
    return NamedSharding(mesh, spec)

  return jax.tree_util.tree_map_with_path(one, tree)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows -> one global array per key, split along the data axis.

  Every process passes its own (B / process_count, ...) slice; on one process that is the
  whole batch.
  """
  sharding = batch_sharding(mesh)
  return {
      k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
      for k, v in local_batch.items()
  }


def to_host(tree: Any) -> Any:
  """Global (possibly sharded, multi-process) arrays -> numpy on every host."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(tree, tiled=True)


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  from t5vae_jax import config_validation

  problem = config_validation.batch_size_problem(
      batch_size, mesh.shape[DATA_AXIS], jax.process_count()
  )
  if problem:
    raise ValueError(f"batch_size={batch_size} must be {problem}")
