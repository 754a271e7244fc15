"""losses.py against numpy references written out here, independently of the module."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5vae_jax import losses


def loss_from_logits(logits, targets, *args, **kwargs):
  """losses.vae_loss on (B, T, V) logits, as the train step calls it (token CE first)."""
  return losses.vae_loss(losses.token_cross_entropy(logits, targets), *args, **kwargs)


# Jitted once per shape: much faster on CPU than dispatching every op eagerly.
vae_loss = jax.jit(loss_from_logits, static_argnames=("kl_threshold_mode",))
thresholded_kl = jax.jit(losses.thresholded_kl, static_argnames=("mode",))

AUX_KEYS = {
    "loss",
    "rec",
    "rec_per_token",
    "kl",
    "kl_thresholded",
    "neg_elbo",
    "elbo",
    "num_tokens",
    "beta",
}


# ---------------------------------------------------------------------------- numpy refs


def np_log_softmax(logits):
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def np_token_nll(logits, targets):
  """-log softmax(logits)[target], one position at a time."""
  logits = np.asarray(logits, np.float64)
  batch, length, _ = logits.shape
  nll = np.zeros((batch, length))
  for b in range(batch):
    for t in range(length):
      nll[b, t] = -np_log_softmax(logits[b, t])[targets[b, t]]
  return nll


def np_gaussian_kl(mu, logvar):
  """KL(N(mu, s^2) || N(0, 1)) = 0.5 (s^2 + mu^2 - 1 - log s^2), per dimension."""
  mu = np.asarray(mu, np.float64)
  var = np.exp(np.asarray(logvar, np.float64))
  return 0.5 * (var + mu**2 - 1.0 - np.log(var))


def make_batch(seed=0, batch=4, length=6, vocab=11, latent=5):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(batch, length, vocab)).astype(np.float32) * 2
  targets = rng.integers(2, vocab, size=(batch, length)).astype(np.int32)
  lengths = rng.integers(1, length + 1, size=batch)
  lengths[0] = length  # one full row
  target_mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  targets[np.arange(batch), lengths - 1] = 1  # EOS
  targets = np.where(target_mask == 1, targets, 0)  # pad
  mu = rng.normal(size=(batch, latent)).astype(np.float32)
  logvar = rng.normal(size=(batch, latent)).astype(np.float32) * 0.5
  return logits, targets, target_mask, mu, logvar


# ---------------------------------------------------------------------------- KL


def test_kl_per_dim_matches_gaussian_kl():
  _, _, _, mu, logvar = make_batch()
  kl = losses.kl_per_dim(jnp.asarray(mu), jnp.asarray(logvar))
  assert kl.shape == mu.shape and kl.dtype == jnp.float32
  np.testing.assert_allclose(kl, np_gaussian_kl(mu, logvar), rtol=1e-5, atol=1e-6)


def test_kl_per_dim_is_zero_at_prior_and_float32_for_bf16_inputs():
  zeros = jnp.zeros((2, 3), jnp.bfloat16)
  kl = losses.kl_per_dim(zeros, zeros)
  assert kl.dtype == jnp.float32
  np.testing.assert_array_equal(kl, 0.0)
  # mu = 2, var = 1: KL = mu^2 / 2 = 2.
  np.testing.assert_allclose(losses.kl_per_dim(jnp.full((1, 1), 2.0), jnp.zeros((1, 1))), [[2.0]])


def test_thresholded_kl_hand_computed():
  kl = jnp.array([[0.1, 2.0], [1.9, 0.0]])
  # batch: dim means [1.0, 1.0] -> max(1, .) = [1, 1] -> 2.0
  np.testing.assert_allclose(thresholded_kl(kl, 1.0, "batch"), 2.0, rtol=1e-6)
  # example: [[1, 2], [1.9, 1]] -> sums [3.0, 2.9] -> mean 2.95
  np.testing.assert_allclose(thresholded_kl(kl, 1.0, "example"), 2.95, rtol=1e-6)
  # no floor: mean over examples of the summed KL = (2.1 + 1.9) / 2
  for mode in ("batch", "example"):
    np.testing.assert_allclose(thresholded_kl(kl, 0.0, mode), 2.0, rtol=1e-6)


def test_thresholded_kl_modes_against_numpy():
  rng = np.random.default_rng(1)
  kl = rng.exponential(1.0, size=(8, 6)).astype(np.float32)
  floor = float(np.median(kl.mean(0)))  # binds for about half of the dimensions
  dim_means = kl.mean(0)
  assert (dim_means < floor).any() and (dim_means > floor).any()
  want_batch = np.maximum(floor, dim_means).sum()
  want_example = np.maximum(floor, kl).sum(1).mean()
  got_batch = thresholded_kl(jnp.asarray(kl), floor, "batch")
  got_example = thresholded_kl(jnp.asarray(kl), floor, "example")
  np.testing.assert_allclose(got_batch, want_batch, rtol=1e-5)
  np.testing.assert_allclose(got_example, want_example, rtol=1e-5)
  assert got_example > got_batch + 0.1  # the modes really differ here
  for mode in ("batch", "example"):
    np.testing.assert_allclose(
        thresholded_kl(jnp.asarray(kl), 0.0, mode), kl.sum(1).mean(), rtol=1e-5
    )


def test_thresholded_kl_unknown_mode():
  with pytest.raises(ValueError, match=r"'dims'.*'batch'.*'example'"):
    losses.thresholded_kl(jnp.zeros((2, 3)), 0.5, "dims")


def test_batch_floor_gives_no_gradient_to_floored_dims():
  mu = jnp.array([[0.1, 3.0], [0.2, 3.0]])  # dim 0: KL ~ 0.01 < floor; dim 1: 4.5 > floor
  logvar = jnp.zeros_like(mu)
  grad = jax.jit(jax.grad(lambda m: losses.thresholded_kl(losses.kl_per_dim(m, logvar), 1.0)))(mu)
  np.testing.assert_array_equal(grad[:, 0], 0.0)
  np.testing.assert_allclose(grad[:, 1], mu[:, 1] / 2)  # d/dmu mean(mu^2 / 2)


# ---------------------------------------------------------------------------- reconstruction


def test_token_cross_entropy_matches_numpy():
  logits, targets, _, _, _ = make_batch()
  ce = losses.token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
  assert ce.shape == targets.shape and ce.dtype == jnp.float32
  np.testing.assert_allclose(ce, np_token_nll(logits, targets), rtol=1e-5, atol=1e-5)


def test_token_cross_entropy_uniform_logits():
  ce = losses.token_cross_entropy(jnp.zeros((1, 2, 8)), jnp.array([[3, 0]]))
  np.testing.assert_allclose(ce, np.full((1, 2), np.log(8.0)), rtol=1e-6)


def test_token_cross_entropy_accepts_bfloat16_and_upcasts():
  logits, targets, _, _, _ = make_batch()
  logits_bf16 = jnp.asarray(logits, jnp.bfloat16)
  ce = losses.token_cross_entropy(logits_bf16, jnp.asarray(targets))
  assert ce.dtype == jnp.float32
  # Same as float32 on the bf16-rounded values: no bf16 arithmetic inside.
  want = np_token_nll(np.asarray(logits_bf16.astype(jnp.float32)), targets)
  np.testing.assert_allclose(ce, want, rtol=1e-5, atol=1e-5)


def test_reconstruction_loss_sums_over_real_tokens():
  logits, targets, mask, _, _ = make_batch()
  rec = losses.reconstruction_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  nll = np_token_nll(logits, targets)
  want = [sum(nll[b, t] for t in range(mask.shape[1]) if mask[b, t]) for b in range(len(mask))]
  assert rec.shape == (len(mask),) and rec.dtype == jnp.float32
  np.testing.assert_allclose(rec, want, rtol=1e-5)


# ---------------------------------------------------------------------------- vae_loss


def np_vae_loss(logits, targets, mask, mu, logvar, beta, floor, mode):
  nll = np_token_nll(logits, targets) * mask
  rec_per_example = nll.sum(1)
  kl = np_gaussian_kl(mu, logvar)
  if mode == "batch":
    kl_thr = np.maximum(floor, kl.mean(0)).sum()
  else:
    kl_thr = np.maximum(floor, kl).sum(1).mean()
  rec, kl_mean = rec_per_example.mean(), kl.sum(1).mean()
  return {
      "loss": rec + beta * kl_thr,
      "rec": rec,
      "rec_per_token": rec_per_example.sum() / mask.sum(),
      "kl": kl_mean,
      "kl_thresholded": kl_thr,
      "neg_elbo": rec + kl_mean,
      "elbo": -(rec + kl_mean),
      "num_tokens": mask.sum(),
      "beta": beta,
  }


@pytest.mark.parametrize("mode", ["batch", "example"])
def test_vae_loss_matches_numpy(mode):
  batch = make_batch(seed=2, batch=6)
  _, _, _, mu, logvar = batch
  floor = float(np.median(np_gaussian_kl(mu, logvar).mean(0)))
  loss, aux = vae_loss(*map(jnp.asarray, batch), beta=0.3, kl_floor=floor, kl_threshold_mode=mode)
  want = np_vae_loss(*batch, beta=0.3, floor=floor, mode=mode)
  assert set(aux) == AUX_KEYS
  np.testing.assert_allclose(loss, want["loss"], rtol=1e-5)
  for key in AUX_KEYS:
    assert aux[key].shape == () and aux[key].dtype == jnp.float32, key
    np.testing.assert_allclose(aux[key], want[key], rtol=1e-5, err_msg=key)
  assert aux["kl_thresholded"] > aux["kl"]  # the floor binds


def test_vae_loss_floor_modes_differ():
  batch = tuple(map(jnp.asarray, make_batch(seed=3, batch=6)))
  kl = np_gaussian_kl(batch[3], batch[4])
  floor = float(np.median(kl.mean(0)))
  loss_batch, _ = vae_loss(*batch, beta=1.0, kl_floor=floor, kl_threshold_mode="batch")
  loss_example, _ = vae_loss(*batch, beta=1.0, kl_floor=floor, kl_threshold_mode="example")
  assert loss_example > loss_batch + 1e-3


@pytest.mark.parametrize("mode", ["batch", "example"])
def test_zero_example_weight_equals_dropping_the_example(mode):
  batch = make_batch(seed=4, batch=5)
  kl = np_gaussian_kl(batch[3], batch[4])
  floor = float(np.median(kl.mean(0)))
  weights = jnp.array([1, 1, 0, 1, 0], jnp.float32)
  keep = np.array([0, 1, 3])
  kwargs = dict(beta=0.7, kl_floor=floor, kl_threshold_mode=mode)
  loss_w, aux_w = vae_loss(*map(jnp.asarray, batch), example_weights=weights, **kwargs)
  loss_d, aux_d = vae_loss(*(jnp.asarray(x[keep]) for x in batch), **kwargs)
  np.testing.assert_allclose(loss_w, loss_d, rtol=1e-6)
  for key in AUX_KEYS:
    np.testing.assert_allclose(aux_w[key], aux_d[key], rtol=1e-6, err_msg=key)
  kl_j = jnp.asarray(kl, jnp.float32)
  np.testing.assert_allclose(
      thresholded_kl(kl_j, floor, mode, weights), thresholded_kl(kl_j[keep], floor, mode), rtol=1e-6
  )


def test_all_zero_example_weights_are_finite():
  batch = tuple(map(jnp.asarray, make_batch(seed=5, batch=3)))
  weights = jnp.zeros(3)

  def loss_fn(mu):
    return loss_from_logits(*batch[:3], mu, batch[4], beta=1.0, example_weights=weights)[0]

  loss, grad = jax.jit(jax.value_and_grad(loss_fn))(batch[3])
  assert np.isfinite(loss) and np.all(np.isfinite(grad))
  np.testing.assert_array_equal(grad, 0.0)


def test_vae_loss_jit_matches_eager_and_takes_traced_beta():
  """Traced beta and floor (as the train step passes them) with a zero-weight row, under jit:
  the numpy reference on the kept rows (eager would run the same code; numpy does not)."""
  batch = make_batch(seed=6)
  jitted = jax.jit(loss_from_logits, static_argnames=("kl_threshold_mode",))
  weights = jnp.array([1, 1, 1, 0])
  keep = np.array([0, 1, 2])
  floor = float(np.median(np_gaussian_kl(batch[3][keep], batch[4][keep]).mean(0)))
  for mode in ("batch", "example"):
    want = np_vae_loss(*(x[keep] for x in batch), beta=0.25, floor=floor, mode=mode)
    assert want["kl_thresholded"] > want["kl"] + 1e-3  # the floor binds
    loss_j, aux_j = jitted(
        *map(jnp.asarray, batch),
        jnp.float32(0.25),
        kl_floor=jnp.float32(floor),
        kl_threshold_mode=mode,
        example_weights=weights,
    )
    np.testing.assert_allclose(loss_j, want["loss"], rtol=1e-5)
    for key in AUX_KEYS:
      np.testing.assert_allclose(aux_j[key], want[key], rtol=1e-5, err_msg=key)


def test_vae_loss_bfloat16_logits():
  logits, targets, mask, mu, logvar = make_batch(seed=7)
  logits_bf16 = jnp.asarray(logits, jnp.bfloat16)
  loss, aux = jax.jit(loss_from_logits)(logits_bf16, targets, mask, mu, logvar, 1.0)
  assert loss.dtype == jnp.float32
  want = np_vae_loss(
      np.asarray(logits_bf16.astype(jnp.float32)),
      targets,
      mask,
      mu,
      logvar,
      beta=1.0,
      floor=0.0,
      mode="batch",
  )
  np.testing.assert_allclose(loss, want["loss"], rtol=1e-5)
  np.testing.assert_allclose(aux["rec_per_token"], want["rec_per_token"], rtol=1e-5)


# ---------------------------------------------------------------------------- rec_normalizer
vae_loss_normalized = jax.jit(
    loss_from_logits, static_argnames=("kl_threshold_mode", "rec_normalizer", "padded_length")
)


def pad_to(batch, length, seed=0):
  """make_batch()'s batch padded to ``length`` positions: pad targets, random logits there."""
  logits, targets, mask, mu, logvar = batch
  extra = length - targets.shape[1]
  rng = np.random.default_rng(seed)
  pad_logits = rng.normal(size=(len(targets), extra, logits.shape[2])).astype(np.float32) * 2
  return (
      np.concatenate([logits, pad_logits], 1),
      np.pad(targets, ((0, 0), (0, extra))),
      np.pad(mask, ((0, 0), (0, extra))),
      mu,
      logvar,
  )


def np_released_loss(logits, targets, mu, logvar, beta, floor, pad_id=0):
  """The released code's training loss, written as it computes it: token CE with
  ignore_index=pad (0 at pads), mean over all B x T positions; plus beta times the batch mean
  of the KL summed over dimensions, each (example, dimension) floored at ``floor``."""
  nll = np.where(targets != pad_id, np_token_nll(logits, targets), 0.0)  # (B, T)
  kl = np.maximum(floor, np_gaussian_kl(mu, logvar))  # (B, L)
  return nll.mean() + beta * kl.sum(1).mean()


def test_max_len_normalizer_is_the_released_codes_mean_over_padded_positions():
  """rec_normalizer="max_len" on a batch padded to 256 positions is the released code's
  formula; the logged rec / kl / neg_elbo stay per sentence, as with "sum"."""
  batch = pad_to(make_batch(seed=8, batch=4), 256)
  _, targets, _, mu, logvar = batch
  floor = float(np.median(np_gaussian_kl(mu, logvar)))
  loss, aux = vae_loss_normalized(
      *map(jnp.asarray, batch),
      beta=0.3,
      kl_floor=floor,
      kl_threshold_mode="example",
      rec_normalizer="max_len",
  )
  want = np_released_loss(batch[0], targets, mu, logvar, beta=0.3, floor=floor)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  per_sentence = np_vae_loss(*batch, beta=0.3, floor=floor, mode="example")
  np.testing.assert_allclose(
      loss, per_sentence["rec"] / 256 + 0.3 * per_sentence["kl_thresholded"], rtol=1e-5
  )
  for key in AUX_KEYS - {"loss"}:
    np.testing.assert_allclose(aux[key], per_sentence[key], rtol=1e-5, err_msg=key)


def test_max_len_normalizer_divides_by_padded_length_not_the_batch_width():
  """A bucketed batch (width 6) with padded_length=256 gives the loss of the same sentences
  padded to 256: pads add nothing, so the loss does not depend on the bucketing."""
  batch = make_batch(seed=9, batch=4)
  kwargs = dict(beta=0.7, kl_floor=0.1, kl_threshold_mode="example", rec_normalizer="max_len")
  bucketed, _ = vae_loss_normalized(*map(jnp.asarray, batch), padded_length=256, **kwargs)
  padded, _ = vae_loss_normalized(*map(jnp.asarray, pad_to(batch, 256)), **kwargs)
  np.testing.assert_allclose(bucketed, padded, rtol=1e-6)
  summed, _ = vae_loss_normalized(*map(jnp.asarray, batch), **{**kwargs, "rec_normalizer": "sum"})
  assert summed > bucketed


def test_unknown_rec_normalizer():
  with pytest.raises(ValueError, match="rec_normalizer='mean' is not one of"):
    losses.vae_loss(
        jnp.zeros((1, 2)),
        jnp.ones((1, 2)),
        jnp.zeros((1, 1)),
        jnp.zeros((1, 1)),
        beta=1.0,
        rec_normalizer="mean",
    )
