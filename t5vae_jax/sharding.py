"""Device mesh and shardings: data parallel over every device, optional FSDP-style params.

One 1-D mesh axis, ``data``, spans all devices of all processes. Batches are split along it.
With ``fsdp=True`` each parameter (and its optimizer state) is also split along it, on its
largest axis that the device count divides; small or indivisible leaves stay replicated.
The same code runs on 1 CPU, 8 simulated CPU devices, a GPU or a multi-host TPU slice.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], num_shards: int, min_size: int = 2**12) -> P:
  """Split the largest axis divisible by ``num_shards``; replicate small leaves."""
  if num_shards == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % num_shards == 0:
      spec = [None] * len(shape)
      spec[axis] = DATA_AXIS
      return P(*spec)
  return P()


def tree_shardings(tree: Any, mesh: Mesh, fsdp: bool) -> Any:
  """A NamedSharding per leaf of ``tree`` (arrays or ShapeDtypeStructs)."""
  n = mesh.shape[DATA_AXIS]

  def one(leaf):
    shape = getattr(leaf, "shape", ())
    if not fsdp or len(shape) == 0:
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, fsdp_spec(tuple(shape), n))

  return jax.tree.map(one, tree)


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
