"""Token deletion: rates, invariants (EOS kept, subsequence, packing), jit, properties."""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5vae_jax import noise

EOS, PAD = 1, 0

delete_tokens_jit = jax.jit(
    noise.delete_tokens, static_argnames=("rate", "mode", "eos_id", "pad_id")
)


def make_inputs(seed, batch, length, min_len=1, vocab=50):
  """Random rows of real tokens ending in EOS, packed left, then PAD."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(min_len, length + 1, size=batch)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  ids = rng.integers(2, vocab, size=(batch, length)).astype(np.int32)
  ids[np.arange(batch), lengths - 1] = EOS
  return np.where(mask == 1, ids, PAD).astype(np.int32), mask


def is_subsequence(short, long):
  it = iter(long)
  return all(any(x == y for y in it) for x in short)


def check_invariants(ids, mask, new_ids, new_mask):
  """Per row in numpy: kept tokens are a subsequence of the input keeping every EOS,
  packed left, and the rest is PAD with mask 0."""
  ids, mask = np.asarray(ids), np.asarray(mask)
  new_ids, new_mask = np.asarray(new_ids), np.asarray(new_mask)
  assert new_ids.shape == ids.shape and new_ids.dtype == ids.dtype
  assert new_mask.shape == mask.shape and new_mask.dtype == mask.dtype
  for row, row_mask, new_row, new_row_mask in zip(ids, mask, new_ids, new_mask):
    original = row[row_mask == 1]
    kept_len = int(new_row_mask.sum())
    kept = new_row[:kept_len]
    np.testing.assert_array_equal(new_row_mask[:kept_len], 1)  # packed left
    np.testing.assert_array_equal(new_row_mask[kept_len:], 0)
    np.testing.assert_array_equal(new_row[kept_len:], PAD)
    assert is_subsequence(kept.tolist(), original.tolist())
    assert (kept == EOS).sum() == (original == EOS).sum()  # no EOS deleted
    if len(original):
      assert kept[-1] == EOS
    else:
      assert kept_len == 0


@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_bernoulli_deletion_rate(rate):
  ids, mask = make_inputs(seed=0, batch=1024, length=1024, min_len=512)
  num_deletable = int(mask.sum() - mask.shape[0])  # all real tokens but the EOS of each row
  assert num_deletable > 500_000
  new_ids, new_mask = delete_tokens_jit(jax.random.key(1), ids, mask, rate=rate)
  deleted_fraction = (mask.sum() - int(new_mask.sum())) / num_deletable
  # 1% relative: > 4 standard deviations at p = 0.15 with this many tokens.
  assert abs(deleted_fraction - rate) < 0.01 * rate, deleted_fraction
  # The same fixed seed on a sample of rows: the invariants hold too.
  check_invariants(ids[:32], mask[:32], new_ids[:32], new_mask[:32])


# Most tests share one shape and rate, so each mode compiles once (threefry compiles slowly
# on a CPU).
SHAPE, RATE = (2000, 30), 0.4


@pytest.mark.parametrize("mode", ["bernoulli", "uniform_count"])
def test_invariants_and_eos_in_the_middle(mode):
  ids, mask = make_inputs(seed=2, batch=SHAPE[0], length=SHAPE[1], vocab=6)
  ids = np.where((ids == 5) & (mask == 1), EOS, ids)  # extra EOS tokens inside some rows
  assert ((ids == EOS).sum(1) > 1).any()
  new_ids, new_mask = delete_tokens_jit(jax.random.key(3), ids, mask, rate=RATE, mode=mode)
  assert new_mask.sum() < mask.sum()  # something was deleted
  check_invariants(ids, mask, new_ids, new_mask)


def test_zero_rate_is_identity():
  ids, mask = make_inputs(seed=4, batch=3, length=9)
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)
  for mode in noise.DENOISE_MODES:
    new_ids, new_mask = noise.delete_tokens(jax.random.key(0), ids, mask, 0.0, mode=mode)
    assert new_ids is ids and new_mask is mask


def test_uniform_count_deletes_fewer_than_rate_times_n():
  ids, mask = make_inputs(seed=5, batch=SHAPE[0], length=SHAPE[1])
  _, new_mask = delete_tokens_jit(jax.random.key(6), ids, mask, rate=RATE, mode="uniform_count")
  num_deletable = mask.sum(1) - 1
  num_deleted = mask.sum(1) - np.asarray(new_mask).sum(1)
  bound = np.maximum(1, (RATE * num_deletable).astype(int))  # exclusive upper bound of the count
  assert np.all(num_deleted < bound)
  assert np.all((num_deleted < RATE * num_deletable) | (num_deleted == 0))
  # The count is uniform on {0, ..., bound - 1}: its mean is (bound - 1) / 2.
  expected = (bound - 1) / 2
  assert abs(num_deleted.mean() - expected.mean()) < 0.05 * expected.mean()
  assert (num_deleted == bound - 1).any() and (num_deleted == 0).any()


def test_uniform_count_positions_are_uniform():
  """Full rows of distinct tokens: every deletable position is hit about equally often."""
  batch, length = SHAPE
  ids = np.tile(np.arange(2, 2 + length, dtype=np.int32), (batch, 1))
  ids[:, -1] = EOS
  mask = np.ones_like(ids)
  new_ids, _ = delete_tokens_jit(jax.random.key(7), ids, mask, rate=RATE, mode="uniform_count")
  new_ids = np.asarray(new_ids)
  deleted_counts = np.array([(new_ids != token).all(1).sum() for token in ids[0, :-1]])
  assert deleted_counts.min() > 0.8 * deleted_counts.mean()
  assert deleted_counts.max() < 1.2 * deleted_counts.mean()


def test_in_a_jitted_step_with_a_legacy_key_and_custom_ids():
  ids, mask = make_inputs(seed=10, batch=4, length=10)
  ids = np.where(ids == EOS, 3, np.where(ids == 3, EOS, ids))  # EOS is now 3
  ids = np.where(mask == 1, ids, 7)  # and PAD is 7

  @jax.jit
  def step(rng, ids, mask):
    rng, noise_rng = jax.random.split(rng)
    return rng, *noise.delete_tokens(noise_rng, ids, mask, 0.5, eos_id=3, pad_id=7)

  _, new_ids, new_mask = step(jax.random.PRNGKey(0), ids, mask)
  new_ids, new_mask = np.asarray(new_ids), np.asarray(new_mask)
  np.testing.assert_array_equal(new_ids[new_mask == 0], 7)
  np.testing.assert_array_equal(new_ids[np.arange(4), new_mask.sum(1) - 1], 3)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan")])
def test_rate_outside_unit_interval(rate):
  ids, mask = make_inputs(seed=0, batch=2, length=4)
  with pytest.raises(ValueError, match=r"rate=.*\[0, 1\)"):
    noise.delete_tokens(jax.random.key(0), ids, mask, rate)


def test_unknown_mode():
  ids, mask = make_inputs(seed=0, batch=2, length=4)
  with pytest.raises(ValueError, match=r"'geometric'.*'bernoulli'.*'uniform_count'"):
    noise.delete_tokens(jax.random.key(0), ids, mask, 0.1, mode="geometric")


def test_traced_rate_is_refused():
  ids, mask = make_inputs(seed=0, batch=2, length=4)
  with pytest.raises(TypeError, match="static"):
    jax.jit(noise.delete_tokens)(jax.random.key(0), ids, mask, 0.1)


# One compiled function per (rate, mode); shapes stay fixed so hypothesis does not recompile.
@functools.lru_cache(maxsize=None)
def _compiled(rate, mode):
  return jax.jit(functools.partial(noise.delete_tokens, rate=rate, mode=mode))


@hypothesis.settings(max_examples=50, deadline=None, derandomize=True)
@hypothesis.given(
    lengths=st.lists(st.integers(0, 8), min_size=3, max_size=3),
    tokens=st.lists(st.integers(1, 4), min_size=24, max_size=24),
    rate=st.sampled_from([0.0, 0.9]),  # identity, and heavy deletion
    mode=st.sampled_from(noise.DENOISE_MODES),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_output_is_a_subsequence_ending_in_eos(lengths, tokens, rate, mode, seed):
  lengths = np.asarray(lengths)
  mask = (np.arange(8)[None] < lengths[:, None]).astype(np.int32)  # (3, 8); length 0 = padding row
  ids = np.asarray(tokens, np.int32).reshape(3, 8) + 1  # ids 2..5
  ids[ids == 5] = EOS  # some EOS tokens inside rows
  for row, length in enumerate(lengths):
    if length:
      ids[row, length - 1] = EOS
  ids = np.where(mask == 1, ids, PAD)
  new_ids, new_mask = _compiled(rate, mode)(jax.random.key(seed), ids, mask)
  check_invariants(ids, mask, new_ids, new_mask)
