"""Token-deletion noise on the encoder input (Shen et al. 2020), jittable with static shapes.

Deleting input tokens forces the encoder to summarise a sentence rather than copy it, which
the paper finds helps against posterior collapse. Only the encoder input is noised: the
targets the decoder reconstructs stay intact, and EOS is never deleted, so the noised input
still ends the way the encoder saw it in pretraining.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from t5vae_jax.choices import DENOISE_MODES

Array = jax.Array


def _static_rate(rate) -> float:
  try:
    rate = float(rate)
  except (TypeError, jax.errors.ConcretizationTypeError) as e:
    raise TypeError(
        f"rate must be a static Python float (it sets shapes of the computation), got {rate!r}"
    ) from e
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"rate={rate!r} is not allowed: the deletion rate must be in [0, 1)")
  return rate


def _uniform_count_deletions(rng: Array, deletable: Array, rate: float) -> Array:
  """Per row, deletes `count` distinct deletable positions chosen uniformly at random,
  count ~ Uniform{0, ..., max(1, int(rate * n)) - 1} with n the row's deletable tokens."""
  batch_size, seq_len = deletable.shape
  num_deletable = jnp.sum(deletable, axis=-1)  # (B,)
  # max(1, int(rate * n)) for every possible n, in float64 on the host, so that the
  # rounding is exactly Python's (rate and seq_len are static).
  count_bound_table = np.maximum(1, (rate * np.arange(seq_len + 1)).astype(np.int64))
  count_bound = jnp.asarray(count_bound_table, jnp.int32)[num_deletable]  # (B,)
  # One uniform draw serves both the count (column 0) and a random ranking of the
  # positions (columns 1..T): one RNG call is cheaper to compile than two.
  uniforms = jax.random.uniform(rng, (batch_size, seq_len + 1))  # (B, T + 1)
  count = jnp.floor(uniforms[:, 0] * count_bound).astype(jnp.int32)  # (B,) in [0, bound)
  count = jnp.minimum(count, count_bound - 1)  # guards float rounding at u -> 1
  # Deletable positions in random order; the others rank last.
  scores = jnp.where(deletable, uniforms[:, 1:], 2.0)  # (B, T)
  rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)  # (B, T)
  return deletable & (rank < count[:, None])


def delete_tokens(
    rng: Array,
    input_ids: Array,
    attention_mask: Array,
    rate: float,
    mode: str = "bernoulli",
    eos_id: int = 1,
    pad_id: int = 0,
) -> tuple[Array, Array]:
  """Deletes random tokens of the encoder input and packs the rest to the left.

  Args:
    rng: a PRNG key.
    input_ids: (B, T) int token ids; real tokens packed left, the last real one EOS.
    attention_mask: (B, T) 1 at real tokens, 0 at padding.
    rate: p, a static Python float in [0, 1). 0 returns the inputs themselves.
    mode: "bernoulli": every deletable token is deleted independently with probability p
      (expected fraction deleted = p). "uniform_count": the released PyTorch code's
      scheme: per row, with n deletable tokens, a count is drawn uniformly from
      {0, ..., max(1, int(p * n)) - 1} and that many distinct deletable positions,
      chosen uniformly, are deleted (so always fewer than p * n, about p / 2 on average,
      and none at all in rows with p * n < 2).
    eos_id: tokens equal to it are never deleted (wherever they occur).
    pad_id: written to the positions freed at the end of each row.

  Returns:
    (new_ids, new_mask) of the input shapes and dtypes: each row the kept tokens in their
    original order, then pad_id; new_mask is 1 exactly at the kept tokens. Pad positions
    are never "deleted", so rows only get shorter.
  """
  if mode not in DENOISE_MODES:
    raise ValueError(f"denoise mode={mode!r} is not one of {DENOISE_MODES}")
  rate = _static_rate(rate)
  if rate == 0.0:
    return input_ids, attention_mask

  is_token = attention_mask.astype(bool)  # (B, T)
  deletable = is_token & (input_ids != eos_id)  # (B, T)
  if mode == "bernoulli":
    delete = deletable & jax.random.bernoulli(rng, rate, deletable.shape)
  else:
    delete = _uniform_count_deletions(rng, deletable, rate)
  keep = is_token & ~delete  # (B, T)

  # Stable sort on "not kept" moves the kept tokens to the front in their original order.
  order = jnp.argsort((~keep).astype(jnp.int8), axis=-1, stable=True)  # (B, T)
  packed_ids = jnp.take_along_axis(input_ids, order, axis=-1)  # (B, T)
  num_kept = jnp.sum(keep, axis=-1, keepdims=True)  # (B, 1)
  new_mask = jnp.arange(input_ids.shape[-1])[None, :] < num_kept  # (B, T)
  new_ids = jnp.where(new_mask, packed_ids, jnp.asarray(pad_id, input_ids.dtype))
  return new_ids, new_mask.astype(attention_mask.dtype)
