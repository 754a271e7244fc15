"""Token packing: run the per-token layers on the real tokens of a padded batch only.

A (B, T) batch of sentences of different lengths is mostly padding at the tail of each row (a
third of it for lengths uniform in [T/4, T]). Every projection, feed-forward layer, the output
layer and the loss work on one token at a time, so they can run on a packed (S, C) array of the
real tokens instead of (B, T); only attention needs the sentence layout, and gets it back by a
gather (``unpack``). The result equals the padded computation at every real token.

S is the number of data shards: each shard packs its own B/S rows, so packing never moves a
token across devices and the batch sharding on the leading axis stays as it is. C, the slots per
shard, is a static shape chosen on the host from the batch's mask (``capacity``), rounded up to
a multiple of an eighth of the shard's B/S*T positions, so a few capacities (one compilation
each) cover all batches of one padded length.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from t5vae_jax import sharding

Array = jax.Array

CAPACITY_STEPS = 8  # capacities are multiples of 1/CAPACITY_STEPS of a shard's positions


@flax.struct.dataclass
class Packing:
  """Where each real token of a (B, T) batch sits in the packed (S, C) layout."""

  gather_index: Array  # (S, C) int32: position in the shard's flattened (B/S * T) rows per slot
  valid: Array  # (S, C) bool: the slot holds a real token (the rest repeat pad positions)
  scatter_index: Array  # (S, B/S * T) int32: slot of each position; C (a zero row) at padding
  batch: int = flax.struct.field(pytree_node=False)
  length: int = flax.struct.field(pytree_node=False)

  @property
  def num_shards(self) -> int:
    return self.gather_index.shape[0]

  @property
  def capacity(self) -> int:
    return self.gather_index.shape[1]

  def pack(self, x: Array) -> Array:
    """(B, T, ...) -> (S, C, ...)."""
    shards = x.reshape((self.num_shards, -1) + x.shape[2:])
    return jax.vmap(lambda rows, index: rows[index])(shards, self.gather_index)

  def unpack(self, packed: Array) -> Array:
    """(S, C, ...) -> (B, T, ...), zeros at padding."""
    zero = jnp.zeros((self.num_shards, 1) + packed.shape[2:], packed.dtype)
    padded = jnp.concatenate([packed, zero], axis=1)
    rows = jax.vmap(lambda slots, index: slots[index])(padded, self.scatter_index)
    return rows.reshape((self.batch, self.length) + packed.shape[2:])

  def example_index(self) -> Array:
    """(S, C) int32: the batch row of each slot's token."""
    rows_per_shard = self.batch // self.num_shards
    shard = jnp.arange(self.num_shards, dtype=jnp.int32)[:, None]
    return shard * rows_per_shard + self.gather_index // self.length


def make_packing(mask: Array, capacity: int, num_shards: int = 1) -> Packing:
  """The packing of ``mask`` (B, T) into ``num_shards`` x ``capacity`` slots.

  Real tokens keep their order (row by row). ``capacity`` must hold every shard's real tokens
  (``capacity()`` on the host); tokens beyond it would be dropped, so it is checked there.
  """
  batch, length = mask.shape
  if batch % num_shards:
    raise ValueError(f"batch of {batch} rows does not split into {num_shards} shards")
  positions = batch // num_shards * length
  if not 0 < capacity <= positions:
    raise ValueError(f"capacity {capacity} outside [1, {positions}] (positions per shard)")
  real = mask.reshape(num_shards, positions) > 0
  # Real positions first, each group in its original order: a stable sort on "is padding".
  order = jnp.argsort(jnp.logical_not(real), axis=1, stable=True).astype(jnp.int32)
  gather_index = order[:, :capacity]
  valid = jnp.take_along_axis(real, gather_index, axis=1)
  slot = jnp.cumsum(real, axis=1, dtype=jnp.int32) - 1
  scatter_index = jnp.where(real, slot, capacity).astype(jnp.int32)
  return Packing(
      gather_index=gather_index,
      valid=valid,
      scatter_index=scatter_index,
      batch=batch,
      length=length,
  )


def capacity(mask: np.ndarray, num_shards: int = 1) -> int:
  """Host side: slots per shard for ``mask`` (B, T): the largest shard's real-token count,
  rounded up to a multiple of 1/CAPACITY_STEPS of the shard's positions."""
  mask = np.asarray(mask)
  batch, length = mask.shape
  if batch % num_shards:
    raise ValueError(f"batch of {batch} rows does not split into {num_shards} shards")
  positions = batch // num_shards * length
  most = int((mask.reshape(num_shards, positions) > 0).sum(axis=1).max())
  step = max(1, math.ceil(positions / CAPACITY_STEPS))
  return int(min(positions, max(step, math.ceil(most / step) * step)))


def capacity_on_mesh(local_mask: np.ndarray, mesh) -> int:
  """``capacity`` of this process's rows ``local_mask`` over its data shards of ``mesh``; on
  several hosts the largest over processes, so that every process runs the same program."""
  local_shards = max(1, mesh.shape[sharding.DATA_AXIS] // jax.process_count())
  slots = capacity(local_mask, local_shards)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    slots = int(np.max(multihost_utils.process_allgather(np.asarray(slots))))
  return slots
