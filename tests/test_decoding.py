"""Beam search (decoding.beam_search) against exhaustive search: a tiny random T5-VAE with a
6-token vocabulary and sentences of at most 4 tokens has few enough sequences to score every
one with the model's full (uncached) forward, log-softmax in float64 numpy. A beam as wide as
the number of prefixes must find exactly the best hypotheses under the same length penalty;
a narrow beam must report the true scores of what it returns (the cache rows follow the
beams)."""

import itertools

import jax
import numpy as np
import pytest

from t5vae_jax import decoding
from t5vae_jax import model as model_lib
from t5vae_jax import t5 as t5_lib

VOCAB, MAX_LEN, LATENT = 6, 4, 4


@pytest.fixture(scope="module")
def tiny():
  """(model, params, z): 2 decoder layers, 3 latents scaled up so the distributions are peaked
  enough for EOS to come at different lengths."""
  config = t5_lib.T5Config(
      vocab_size=VOCAB,
      d_model=16,
      d_kv=4,
      d_ff=32,
      num_layers=1,
      num_decoder_layers=2,
      num_heads=2,
      relative_attention_num_buckets=8,
      relative_attention_max_distance=16,
      dropout_rate=0.0,
  )
  model = model_lib.T5VAEModel(config, vae=model_lib.VAEConfig(latent_dim=LATENT))
  params = jax.jit(model_lib.init_params, static_argnums=0)(model, jax.random.key(3))
  z = 4.0 * np.asarray(jax.random.normal(jax.random.key(5), (3, LATENT)), np.float32)
  return model, params, z


def all_hypotheses(eos_id):
  """Every finished sequence (max_len tokens, pad-filled): EOS-terminated or max_len long."""
  out = []
  others = [t for t in range(VOCAB) if t != eos_id]
  for n in range(1, MAX_LEN + 1):
    last_tokens = range(VOCAB) if n == MAX_LEN else [eos_id]
    for prefix in itertools.product(others, repeat=n - 1):
      for last in last_tokens:
        out.append(list(prefix) + [last])
  return out


def exhaustive_scores(model, params, z, sequences, alpha):
  """(B, N) scores: log p(sequence | z) in float64 over its own tokens, / GNMT penalty."""
  cfg = model.config
  lengths = np.asarray([len(s) for s in sequences])
  tokens = np.full((len(sequences), MAX_LEN), cfg.pad_token_id, np.int32)
  for i, s in enumerate(sequences):
    tokens[i, : len(s)] = s
  inputs = np.asarray(t5_lib.shift_right(tokens, cfg.decoder_start_token_id))
  scores = []
  for row in z:
    zs = np.broadcast_to(row, (len(sequences), LATENT))
    logits = np.asarray(
        model.apply({"params": params}, zs, inputs, method=model_lib.T5VAEModel.decode_latent),
        np.float64,
    )
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
    picked = np.where(np.arange(MAX_LEN)[None] < lengths[:, None], picked, 0.0)
    scores.append(picked.sum(-1) / ((5.0 + lengths) / 6.0) ** alpha)
  return tokens, np.asarray(scores)


@pytest.mark.parametrize("alpha", [0.0, 2.0])
def test_wide_beam_equals_exhaustive_search(tiny, alpha):
  model, params, z = tiny
  sequences = all_hypotheses(model.config.eos_token_id)
  tokens, want = exhaustive_scores(model, params, z, sequences, alpha)
  beam = (VOCAB - 1) ** (MAX_LEN - 1)  # every unfinished prefix of length 3 fits in the beam
  got_tokens, got_scores = jax.device_get(
      decoding.beam_search(model, params, z, max_len=MAX_LEN, beam=beam, alpha=alpha)
  )
  assert got_tokens.shape == (3, beam, MAX_LEN) and got_scores.shape == (3, beam)
  lengths = []
  for b in range(3):
    order = np.argsort(-want[b], kind="stable")
    # The 10 best hypotheses and their scores, in order.
    np.testing.assert_allclose(got_scores[b, :10], want[b, order[:10]], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got_tokens[b, :10], tokens[order[:10]])
    lengths.append(len(sequences[order[0]]))
  print(f"alpha={alpha}: best lengths {lengths}")


def test_length_penalty_changes_the_winner(tiny):
  """The tiny case is not degenerate: the penalty changes which length wins somewhere."""
  model, params, z = tiny
  sequences = all_hypotheses(model.config.eos_token_id)
  _, plain = exhaustive_scores(model, params, z, sequences, 0.0)
  _, long = exhaustive_scores(model, params, z, sequences, 2.0)
  assert np.any(plain.argmax(1) != long.argmax(1))
  lengths = [len(sequences[i]) for i in plain.argmax(1)]
  assert len(set(lengths)) > 1 or lengths[0] < MAX_LEN, lengths


def test_narrow_beam_reports_true_scores(tiny):
  """beam 3 (prunes): each returned hypothesis scores exactly what the full forward says, the
  list is sorted, none beats the exhaustive best, and every row ends right (EOS, then pads)."""
  model, params, z = tiny
  cfg = model.config
  sequences = all_hypotheses(cfg.eos_token_id)
  tokens, want = exhaustive_scores(model, params, z, sequences, 0.6)
  index = {tuple(t): i for i, t in enumerate(tokens.tolist())}
  got_tokens, got_scores = jax.device_get(
      decoding.beam_search(model, params, z, max_len=MAX_LEN, beam=3, alpha=0.6)
  )
  for b in range(3):
    assert np.all(np.diff(got_scores[b]) <= 1e-6)
    assert got_scores[b, 0] <= want[b].max() + 1e-5
    for k in range(3):
      row = got_tokens[b, k].tolist()
      np.testing.assert_allclose(got_scores[b, k], want[b, index[tuple(row)]], rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="beam"):
    decoding.beam_search(model, params, z, max_len=MAX_LEN, beam=0)
