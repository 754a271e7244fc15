"""The notebook API: T5VAE.load on a phase directory alone, encode/reconstruct/sample/
interpolate/decode, and decoding with the key/value cache against the uncached reference."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _demo_checkpoint import demo_workdir, training_texts
from t5vae_jax import decoding


@pytest.fixture(scope="session")
def vae(tmp_path_factory):
  """T5VAE.load on a copy of phase2/ alone in an otherwise empty directory."""
  from t5vae_jax import T5VAE

  src = demo_workdir(tmp_path_factory) / "phase2"
  lonely = tmp_path_factory.mktemp("lonely") / "somewhere" / "phase2"
  shutil.copytree(src, lonely)
  return T5VAE.load(lonely)


@pytest.fixture(scope="session")
def train_texts(tmp_path_factory):
  return [e["text"] for e in training_texts(demo_workdir(tmp_path_factory))[:64]]


def _leaves(params):
  return [np.asarray(x) for x in jax.tree.leaves(params)]


def test_load_and_encode(vae, train_texts, tmp_path):
  assert vae.step == 800 and vae.latent_dim == 16 and vae.max_len == 16
  from t5vae_jax import T5VAE
  from t5vae_jax import checkpoint as ckpt_lib
  # A run whose best validation is not its last: best/ as the loop leaves it when step 400
  # validated better than step 800 (through the same PhaseCheckpoints.maybe_save_best).
  pdir = tmp_path / "phase2"
  shutil.copytree(vae.path, pdir, ignore=shutil.ignore_patterns("best"))
  at_400 = T5VAE.load(pdir, step=400)
  assert at_400.step == 400
  ckpts = ckpt_lib.PhaseCheckpoints(pdir)
  assert ckpts.maybe_save_best(400, at_400.params, 30.0, "val/neg_elbo")
  assert not ckpts.maybe_save_best(800, vae.params, 31.0, "val/neg_elbo")
  ckpts.wait()
  ckpts.close()
  best = T5VAE.load(pdir, which="best")
  assert best.step == 400 and T5VAE.load(pdir).step == 800
  for got, want in zip(_leaves(best.params), _leaves(at_400.params)):
    np.testing.assert_array_equal(got, want)
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(best.params), _leaves(vae.params)))
  mu, logvar = vae.encode(train_texts[:5])
  assert mu.shape == logvar.shape == (5, 16) and mu.dtype == np.float32
  assert isinstance(mu, np.ndarray) and np.all(np.isfinite(mu)) and np.all(np.isfinite(logvar))
  mu1, _ = vae.encode(train_texts[2])
  np.testing.assert_allclose(mu1[0], mu[2], rtol=1e-5, atol=1e-6)  # batching changes nothing
  assert vae.encode([])[0].shape == (0, 16)


def test_reconstruct_training_sentences(vae, train_texts):
  out = vae.reconstruct(train_texts)
  assert len(out) == len(train_texts) and all(isinstance(s, str) for s in out)
  rate = float(np.mean([a == b for a, b in zip(train_texts, out)]))
  print(f"exact-match reconstruction rate on {len(out)} training sentences: {rate:.3f}")
  assert rate > 0.5, list(zip(train_texts, out))[:10]


def test_cache_gives_the_same_tokens_as_full_recompute(vae, train_texts):
  mu, _ = vae.encode(train_texts[:32])
  z = np.concatenate([mu, np.random.default_rng(0).standard_normal((32, 16))]).astype(np.float32)
  cached = vae.decode_ids(z)
  assert cached == vae.decode_ids(z, use_cache=False)
  # Sampling draws the same tokens from the same logits (up to float ties: nearly all rows).
  kwargs = dict(method="sample", temperature=1.3, top_k=20, top_p=0.95, seed=4)
  cached = vae.decode_ids(z, **kwargs)
  full = vae.decode_ids(z, use_cache=False, **kwargs)
  assert np.mean([a == b for a, b in zip(cached, full)]) >= 0.9
  # The raw tokens: after its first EOS a row holds only pads.
  tokens = np.asarray(
      decoding.decode(
          vae.model,
          vae.params,
          z,
          max_len=16,
          method="greedy",
          temperature=1.0,
          top_k=0,
          top_p=1.0,
          rng=jax.random.key(0),
      )
  )
  eos_id, pad_id = vae.model.config.eos_token_id, vae.model.config.pad_token_id
  assert np.all(np.any(tokens == eos_id, axis=1))  # the trained model stops
  for row in tokens:
    first = np.flatnonzero(row == eos_id)[0]
    assert np.all(row[first + 1 :] == pad_id)


def test_sample_interpolate_decode(vae, train_texts):
  samples = vae.sample(5, temperature=1.0, seed=1)
  assert len(samples) == 5 and all(isinstance(s, str) for s in samples)
  assert vae.sample(5, temperature=1.0, seed=1) == samples  # seeded
  assert vae.sample(5, temperature=1.0, seed=2) != samples  # and the seed matters
  greedy = vae.sample(3, method="greedy")
  assert greedy == vae.sample(3, temperature=0.0)
  a, b = train_texts[0], train_texts[4]  # far enough apart for other sentences in between
  path = vae.interpolate(a, b, steps=5)
  ends = vae.reconstruct([a, b])
  assert len(path) == 5 and path[0] == ends[0] and path[-1] == ends[1]
  # Every point is the decoding of (1 - t) mu_a + t mu_b, t = 0, 1/4, ..., 1.
  mu, _ = vae.encode([a, b])
  t = np.arange(5, dtype=np.float64)[:, None] / 4
  assert path == vae.decode((1 - t) * mu[0] + t * mu[1])
  assert set(path[1:-1]) - {path[0], path[-1]}, path  # the path goes through other sentences
  assert vae.decode(np.zeros(16, np.float32)) == vae.decode(np.zeros((1, 16), np.float32))
  with pytest.raises(ValueError):
    vae.decode(np.zeros((1, 7)))


def test_reconstruct_with_sampled_z(vae, train_texts, monkeypatch):
  """sample_z decodes z = mu + exp(logvar / 2) eps, eps ~ N(0, I) seeded: the z it decodes,
  standardised by the encoder's mu and logvar, is standard normal; the sentences are seeded."""
  texts = train_texts[:64]
  sampled = vae.reconstruct(texts[:8], sample_z=True, seed=3)
  assert len(sampled) == 8 and sampled == vae.reconstruct(texts[:8], sample_z=True, seed=3)
  mu, logvar = vae.encode(texts)
  seen = {}

  def capture(z, **kwargs):
    seen["z"] = np.asarray(z)
    return []

  monkeypatch.setattr(vae, "decode", capture)
  vae.reconstruct(texts, sample_z=True, seed=3)
  eps = (seen.pop("z") - mu) / np.exp(0.5 * logvar)
  assert eps.shape == (64, 16)
  assert abs(eps.mean()) < 0.1 and 0.9 < eps.std() < 1.1, (eps.mean(), eps.std())
  vae.reconstruct(texts, sample_z=False)
  np.testing.assert_array_equal(seen.pop("z"), mu)
  vae.reconstruct(texts, sample_z=True, seed=4)
  assert not np.allclose((seen["z"] - mu) / np.exp(0.5 * logvar), eps)  # another seed


def test_cache_matches_full_recompute_with_self_prefix():
  """The released code's injection (z as a self-attention prefix slot) through the cache too
  (a random tiny model; the trained demo uses cross-attention). Sampled, not greedy: the
  random model's greedy rows are all pad or one token repeated, which would hardly look at
  the cache; sampled rows differ at every position."""
  from t5vae_jax import model as model_lib
  from t5vae_jax import t5 as t5_lib

  config = t5_lib.T5Config(
      vocab_size=64,
      d_model=32,
      d_kv=8,
      d_ff=64,
      num_layers=1,
      num_decoder_layers=2,
      num_heads=4,
      relative_attention_num_buckets=8,
      relative_attention_max_distance=16,
      dropout_rate=0.0,
  )
  model = model_lib.T5VAEModel(
      config, vae=model_lib.VAEConfig(latent_dim=4, latent_injection="self_prefix")
  )
  params = jax.jit(model_lib.init_params, static_argnums=0)(model, jax.random.key(0))
  z = 3.0 * jax.random.normal(jax.random.key(1), (8, 4))
  kwargs = dict(
      max_len=10, method="sample", temperature=1.0, top_k=0, top_p=1.0, rng=jax.random.key(0)
  )
  cached = np.asarray(decoding.decode(model, params, z, **kwargs))
  np.testing.assert_array_equal(cached, decoding.decode_uncached(model, params, z, **kwargs))
  rows = [tuple(r) for r in cached]
  assert len(set(rows)) == 8 and all(len(set(r[:5])) >= 3 for r in rows), cached


def test_filter_logits():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))
  kept = lambda x: np.isfinite(np.asarray(x))
  np.testing.assert_array_equal(
      kept(decoding.filter_logits(logits, top_k=2)), [[1, 1, 0, 0], [0, 0, 1, 1]]
  )
  np.testing.assert_array_equal(
      kept(decoding.filter_logits(logits, top_p=0.7)), [[1, 1, 0, 0], [0, 0, 1, 1]]
  )
  np.testing.assert_array_equal(
      kept(decoding.filter_logits(logits, top_p=0.81)), [[1, 1, 1, 0], [0, 1, 1, 1]]
  )
  np.testing.assert_array_equal(
      kept(decoding.filter_logits(logits, top_p=0.01)), [[1, 0, 0, 0], [0, 0, 0, 1]]
  )
  np.testing.assert_allclose(
      decoding.filter_logits(logits, temperature=2.0), logits / 2.0, rtol=1e-6
  )
