"""Token packing: the layout against numpy, and the packed model and loss against the padded."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from t5vae_jax import model as model_lib
from t5vae_jax import packing as packing_lib
from t5vae_jax import t5 as t5_lib
from t5vae_jax import train_lib


def _mask(batch, length, seed, min_len=1):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(min_len, length + 1, batch)
  return (np.arange(length)[None] < lengths[:, None]).astype(np.int32)


@pytest.mark.parametrize("num_shards", [1, 2, 4])
def test_pack_and_unpack_against_numpy(num_shards):
  mask = _mask(8, 7, seed=num_shards)
  mask[3] = 0  # an empty row
  x = np.random.default_rng(0).normal(size=(8, 7, 3)).astype(np.float32)
  capacity = packing_lib.capacity(mask, num_shards)
  p = jax.jit(packing_lib.make_packing, static_argnums=(1, 2))(
      jnp.asarray(mask), capacity, num_shards
  )
  packed = np.asarray(p.pack(jnp.asarray(x)))
  assert packed.shape == (num_shards, capacity, 3)
  rows = 8 // num_shards
  for s in range(num_shards):
    shard_mask = mask[s * rows : (s + 1) * rows]
    expected = x[s * rows : (s + 1) * rows][shard_mask > 0]  # real tokens, row by row
    n = len(expected)
    np.testing.assert_array_equal(packed[s, :n], expected)
    np.testing.assert_array_equal(np.asarray(p.valid[s]), np.arange(capacity) < n)
    np.testing.assert_array_equal(
        np.asarray(p.example_index())[s, :n], s * rows + np.nonzero(shard_mask)[0]
    )
  np.testing.assert_array_equal(np.asarray(p.unpack(jnp.asarray(packed))), x * mask[..., None])


def test_capacity_rounds_up_within_bounds():
  mask = np.zeros((4, 16), np.int32)  # 64 positions, steps of 8
  mask[0, :9] = 1
  assert packing_lib.capacity(mask) == 16
  mask[1, :16] = mask[2, :16] = mask[3, :16] = 1  # 57 real
  assert packing_lib.capacity(mask) == 64
  assert packing_lib.capacity(np.zeros((4, 16), np.int32)) == 8  # never 0
  half = np.zeros((4, 16), np.int32)
  half[2:, :] = 1  # shard 0 empty, shard 1 full: the largest shard decides
  assert packing_lib.capacity(half, num_shards=2) == 32
  with pytest.raises(ValueError, match="shards"):
    packing_lib.capacity(mask, num_shards=3)
  with pytest.raises(ValueError, match="capacity"):
    packing_lib.make_packing(jnp.asarray(mask), 65)


@pytest.fixture(scope="module")
def no_dropout_t5(tiny_t5):
  config, params = tiny_t5
  return dataclasses.replace(config, dropout_rate=0.0), params


def _vae(t5, **vae_kwargs):
  config, t5_params = t5
  model = model_lib.T5VAEModel(config, vae=model_lib.VAEConfig(latent_dim=6, **vae_kwargs))
  params = jax.jit(model_lib.init_params, static_argnums=0)(model, jax.random.key(1))
  params = model_lib.merge_pretrained(params, t5_params)
  params["memory_proj"]["kernel"] = params["memory_proj"]["kernel"] * 4.0
  return model, params


def _batch(vocab, batch=4, length=12, seed=0):
  mask = _mask(batch, length, seed, min_len=2)
  ids = np.random.default_rng(seed).integers(3, vocab, (batch, length))
  ids[np.arange(batch), mask.sum(1) - 1] = 1
  return jnp.asarray(np.where(mask > 0, ids, 0).astype(np.int32)), jnp.asarray(mask)


@pytest.mark.parametrize(
    "vae_kwargs",
    [
        dict(latent_injection="cross_attention"),
        dict(latent_injection="self_prefix", pooling="mean", pool_layers="all"),
        dict(pool_padding=True),
    ],
)  # pools pad positions: the encoder must not pack
def test_packed_model_equals_padded(no_dropout_t5, vae_kwargs):
  """Same params and z: mu, logvar and the logits at every real token are the padded ones."""
  model, params = _vae(no_dropout_t5, **vae_kwargs)
  ids, mask = _batch(model.config.vocab_size)
  dec = t5_lib.shift_right(ids, 0)

  @jax.jit
  def both(params):
    padded = model.apply({"params": params}, ids, mask, dec, sample_latent=False)
    p = packing_lib.make_packing(mask, packing_lib.capacity(np.asarray(mask), 2), 2)
    packed = model.apply(
        {"params": params}, ids, mask, dec, sample_latent=False, packing=p, encoder_packing=p
    )
    return padded, packed, p.unpack(packed["logits"])

  padded, packed, unpacked = both(params)
  np.testing.assert_allclose(packed["mu"], padded["mu"], atol=1e-5)
  np.testing.assert_allclose(packed["logvar"], padded["logvar"], atol=1e-5)
  real = np.asarray(mask) > 0
  np.testing.assert_allclose(
      np.asarray(unpacked)[real], np.asarray(padded["logits"])[real], atol=2e-5
  )
  assert np.std(np.asarray(padded["logits"])[real]) > 0.1


@pytest.mark.parametrize("num_shards", [1, 2])
def test_packed_loss_and_gradients_equal_padded(no_dropout_t5, num_shards):
  """compute_loss with packing, denoising on (so the encoder packs a different mask): the same
  loss, metrics and gradients as without."""
  model, params = _vae(no_dropout_t5)
  ids, mask = _batch(model.config.vocab_size, batch=4, length=12, seed=3)
  config = ml_collections.ConfigDict(
      dict(
          denoise_rate=0.3,
          denoise_mode="bernoulli",
          kl_floor=0.1,
          kl_threshold_mode="batch",
          rec_normalizer="sum",
      )
  )
  batch = dict(input_ids=ids, attention_mask=mask, example_weights=jnp.ones((4,)))
  rngs = train_lib.step_rngs(jax.random.key(0), 5)
  capacity = packing_lib.capacity(np.asarray(mask), num_shards)
  assert capacity < mask.size // num_shards  # the test packs something away

  def loss(params, capacity):
    value, (aux, _) = train_lib.compute_loss(
        params,
        batch,
        rngs,
        model=model,
        beta=0.5,
        config=config,
        train=True,
        capacity=capacity,
        num_shards=num_shards,
    )
    return value, aux

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (padded, padded_aux), padded_grads = grad_fn(params, None)
  (packed, packed_aux), packed_grads = grad_fn(params, capacity)
  np.testing.assert_allclose(packed, padded, rtol=1e-5)
  for key in ("rec", "kl", "num_tokens"):
    np.testing.assert_allclose(packed_aux[key], padded_aux[key], rtol=1e-5)
  for path, a, b in zip(
      jax.tree_util.tree_leaves_with_path(padded_grads),
      jax.tree.leaves(padded_grads),
      jax.tree.leaves(packed_grads),
  ):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=str(path[0]))
