"""Tests for t5vae_jax.metrics: analytic values and float64 numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5vae_jax import metrics

LOG_2PI = math.log(2 * math.pi)


# ----------------------------------------------------------------------------
# Straightforward float64 numpy references of the same formulas.
# ----------------------------------------------------------------------------


def np_logsumexp(x, axis):
  top = np.max(x, axis=axis, keepdims=True)
  return np.squeeze(top, axis) + np.log(np.sum(np.exp(x - top), axis=axis))


def np_gaussian_log_density(z, mu, logvar):
  return -0.5 * np.sum((z - mu) ** 2 / np.exp(logvar) + logvar + LOG_2PI, -1)


def np_mutual_information(mu, logvar, z, batch_size=None, entropy="sample"):
  """Full pairwise matrix per batch, python loop over batches."""
  mu, logvar, z = (np.asarray(a, np.float64) for a in (mu, logvar, z))
  n = len(mu)
  size = n if batch_size is None else batch_size
  total = 0.0
  for start in range(0, n, size):
    m, lv, zz = mu[start : start + size], logvar[start : start + size], z[start : start + size]
    log_q = np_gaussian_log_density(zz[:, None, :], m[None], lv[None])  # (n, m)
    log_q_z = np_logsumexp(log_q, axis=1) - np.log(len(m))
    if entropy == "sample":
      neg_entropy = np.diag(log_q)
    else:
      neg_entropy = -0.5 * np.sum(1 + lv + LOG_2PI, -1)
    total += np.sum(neg_entropy - log_q_z)
  return total / n


def random_posteriors(seed, n, latent_dim, scale=1.0):
  rng = np.random.default_rng(seed)
  mu = (scale * rng.standard_normal((n, latent_dim))).astype(np.float32)
  logvar = rng.uniform(-3.0, 1.0, (n, latent_dim)).astype(np.float32)
  z = (mu + np.exp(0.5 * logvar) * rng.standard_normal((n, latent_dim))).astype(np.float32)
  return mu, logvar, z


def isotropic_set(n, latent_dim, prior_var, posterior_var, seed=0):
  """mu_n ~ N(0, s2 I), logvar = log v: MI -> L/2 log((s2 + v) / v) as N -> inf."""
  rng = np.random.default_rng(seed)
  mu = math.sqrt(prior_var) * rng.standard_normal((n, latent_dim))
  logvar = np.full((n, latent_dim), math.log(posterior_var))
  analytic = 0.5 * latent_dim * math.log((prior_var + posterior_var) / posterior_var)
  return jnp.asarray(mu, jnp.float32), jnp.asarray(logvar, jnp.float32), analytic


# ----------------------------------------------------------------------------
# Densities and sampling.
# ----------------------------------------------------------------------------


def test_log_densities_match_numpy_and_broadcast():
  mu, logvar, z = random_posteriors(0, 6, 3)
  got = metrics.gaussian_log_density(z[:, None, :], mu[None], logvar[None])  # (6, 6)
  want = np_gaussian_log_density(z[:, None, :].astype(np.float64), mu[None], logvar[None])
  assert got.shape == (6, 6) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(
      metrics.standard_normal_log_density(z),
      np_gaussian_log_density(z.astype(np.float64), 0.0, 0.0),
      rtol=1e-5,
  )


# ----------------------------------------------------------------------------
# Mutual information.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("entropy", ["sample", "analytic"])
def test_mi_matches_analytic_value(entropy):
  mu, logvar, analytic = isotropic_set(4000, 4, prior_var=1.0, posterior_var=0.25)
  mi = metrics.mutual_information(mu, logvar, jax.random.PRNGKey(1), entropy=entropy)
  assert analytic == pytest.approx(2 * math.log(5))
  assert abs(float(mi) - analytic) < 0.1


def test_per_batch_mi_is_capped_at_log_batch_size():
  # Analytic MI = 2 log 26 = 6.5 nats > log 256 = 5.55 (and < log N = 8.3).
  mu, logvar, analytic = isotropic_set(4000, 4, prior_var=1.0, posterior_var=0.04)
  rng = jax.random.PRNGKey(2)
  whole = float(metrics.mutual_information(mu, logvar, rng))
  per_batch = float(metrics.mutual_information(mu, logvar, rng, batch_size=256))
  assert analytic > math.log(256) + 0.5
  assert whole > math.log(256) + 0.5
  assert whole < math.log(4000)
  assert per_batch <= math.log(256) + 1e-5
  assert per_batch > math.log(256) - 0.5  # Saturated, not broken.


# Shapes and static options shared by the next three tests reuse compilations.
REFERENCE_CASES = [  # (batch_size, entropy, block_size); N = 301 is no multiple.
    (None, "sample", 7),
    (None, "sample", 64),
    (None, "sample", 1024),
    (None, "analytic", 64),
    (100, "sample", 7),
    (100, "sample", 1024),
    (500, "analytic", 64),
]


@pytest.mark.parametrize("batch_size, entropy, block_size", REFERENCE_CASES)
def test_mi_matches_numpy_reference(batch_size, entropy, block_size):
  mu, logvar, z = random_posteriors(3, 301, 5, scale=1.5)
  got = metrics.mutual_information_from_samples(
      mu, logvar, z, batch_size=batch_size, block_size=block_size, entropy=entropy
  )
  want = np_mutual_information(mu, logvar, z, batch_size, entropy)
  np.testing.assert_allclose(float(got), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch_size, blocks", [(None, (7, 64, 1024)), (100, (7, 1024))])
def test_mi_does_not_depend_on_block_size(batch_size, blocks):
  mu, logvar, z = random_posteriors(4, 301, 5)
  results = [
      float(
          metrics.mutual_information_from_samples(
              mu, logvar, z, batch_size=batch_size, block_size=block
          )
      )
      for block in blocks
  ]
  np.testing.assert_allclose(results, results[0], rtol=1e-5, atol=1e-6)


def test_mi_uses_one_reparameterised_draw_per_example():
  mu, logvar, _ = random_posteriors(5, 4000, 4)  # The draw compiles per shape: reuse one.
  rng = jax.random.PRNGKey(7)
  z = mu + np.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape)
  np.testing.assert_allclose(
      metrics.mutual_information(mu, logvar, rng),
      metrics.mutual_information_from_samples(mu, logvar, z),
      rtol=1e-6,
  )


def test_mi_accurate_for_narrow_offset_posteriors():
  """Regimes where the matmul expansion of the distance cancels badly."""
  n, latent_dim = 301, 5
  rng = np.random.default_rng(6)
  eps = rng.standard_normal((n, latent_dim))
  # Phase-1-like: posteriors far from 0, tiny and separated; MI -> log N.
  mu = 50.0 + 3.0 * rng.standard_normal((n, latent_dim))
  logvar = np.full((n, latent_dim), -14.0)
  z = mu + np.exp(0.5 * logvar) * eps
  got = metrics.mutual_information_from_samples(
      *(a.astype(np.float32) for a in (mu, logvar, z)), block_size=64
  )
  want = np_mutual_information(mu, logvar, z)
  assert want == pytest.approx(math.log(n), abs=1e-6)
  assert float(got) == pytest.approx(want, abs=1e-4)
  # Large common offset with overlapping posteriors: helped by centring.
  mu = 100.0 + 0.01 * rng.standard_normal((n, latent_dim))
  logvar = np.full((n, latent_dim), math.log(1e-4))
  z = mu + np.exp(0.5 * logvar) * eps
  mu32, logvar32, z32 = (a.astype(np.float32) for a in (mu, logvar, z))
  got = metrics.mutual_information_from_samples(mu32, logvar32, z32, block_size=64)
  want = np_mutual_information(mu32, logvar32, z32)  # Same float32 inputs.
  assert float(got) == pytest.approx(want, abs=2e-3)


def test_mi_is_zero_when_all_posteriors_are_equal():
  mu = jnp.full((4000, 4), 0.3)
  logvar = jnp.full((4000, 4), -0.5)
  mi = metrics.mutual_information(mu, logvar, jax.random.PRNGKey(0))
  assert abs(float(mi)) < 1e-5


def test_mi_sample_and_analytic_entropy_agree():
  mu, logvar, _ = isotropic_set(4000, 4, prior_var=1.0, posterior_var=0.25, seed=8)
  rng = jax.random.PRNGKey(3)
  sample = metrics.mutual_information(mu, logvar, rng, entropy="sample")
  analytic = metrics.mutual_information(mu, logvar, rng, entropy="analytic")
  # They differ only by mean(log q(z_n|x_n)) - E[...]: -0.5 (sum eps^2 - L), std ~ 0.02.
  assert abs(float(sample) - float(analytic)) < 0.1


def test_mi_never_materialises_n_by_n():
  n = 4096
  mu = jnp.zeros((n, 8))
  compiled = (
      jax.jit(lambda mu: metrics.mutual_information_from_samples(mu, mu, mu, block_size=256))
      .lower(mu)
      .compile()
  )
  temp_bytes = compiled.memory_analysis().temp_size_in_bytes
  assert temp_bytes < n * n * 4 // 16, temp_bytes  # N x N floats would be 64 MiB.


# ----------------------------------------------------------------------------
# Active units.
# ----------------------------------------------------------------------------


def test_active_units_exact_around_threshold():
  n = 1000
  signs = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)[:, None]  # mean 0
  target = np.array([0.005, 0.0099, 0.0101, 0.5])
  amplitude = np.sqrt(target * (n - 1) / n)  # ddof=1 variance == target
  mu = (3.0 + signs * amplitude).astype(np.float32)
  np.testing.assert_allclose(metrics.active_unit_variances(mu), target, rtol=1e-4)
  assert int(metrics.active_units(mu)) == 2
  assert int(metrics.active_units(mu, threshold=0.001)) == 4


def test_active_units_use_n_minus_one_normalisation():
  mu = np.array([[0.0], [0.18]], np.float32)  # ddof=1: 0.0162, ddof=0: 0.0081
  assert int(metrics.active_units(mu)) == 1


def test_active_units_match_numpy_and_are_stable_under_offset():
  rng = np.random.default_rng(9)
  mu = 1000.0 + rng.standard_normal((5000, 32)) * np.geomspace(1e-3, 1.0, 32)
  want = np.var(mu, axis=0, ddof=1)
  got = metrics.active_unit_variances(mu.astype(np.float32))
  np.testing.assert_allclose(got[16:], want[16:], rtol=1e-2)  # float32 resolution of 1000
  assert int(metrics.active_units(mu.astype(np.float32))) == int(np.sum(want > 0.01))


# ----------------------------------------------------------------------------
# Importance weights of the IW log-likelihood.
# ----------------------------------------------------------------------------


def iw_inputs(seed, batch, num_samples, latent_dim):
  rng = np.random.default_rng(seed)
  mu = rng.standard_normal((batch, latent_dim)).astype(np.float32)
  logvar = rng.uniform(-2, 0.5, (batch, latent_dim)).astype(np.float32)
  eps = rng.standard_normal((batch, num_samples, latent_dim))
  z = (mu[:, None] + np.exp(0.5 * logvar[:, None]) * eps).astype(np.float32)
  log_px_given_z = (-30.0 + rng.standard_normal((batch, num_samples))).astype(np.float32)
  return log_px_given_z, z, mu, logvar


def iw_log_likelihood(log_px_given_z, z, mu, logvar):
  """log p(x) of all K samples in one chunk, as evaluation.batch_statistics folds them."""
  acc = metrics.logsumexp_merge(
      jnp.full(mu.shape[:1], -jnp.inf), metrics.iw_log_weights(log_px_given_z, z, mu, logvar)
  )
  return acc - jnp.log(float(z.shape[1]))


def test_iw_single_sample_is_the_elbo_term():
  log_px_given_z, z, mu, logvar = iw_inputs(0, 5, 1, 4)
  got = iw_log_likelihood(log_px_given_z, z, mu, logvar)
  want = (
      log_px_given_z[:, 0]
      + metrics.standard_normal_log_density(z[:, 0])
      - metrics.gaussian_log_density(z[:, 0], mu, logvar)
  )
  assert got.shape == (5,)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_iw_matches_numpy_reference():
  log_px_given_z, z, mu, logvar = iw_inputs(1, 4, 50, 6)
  z64 = z.astype(np.float64)
  log_w = (
      log_px_given_z
      + np_gaussian_log_density(z64, 0.0, 0.0)
      - np_gaussian_log_density(z64, mu[:, None].astype(np.float64), logvar[:, None])
  )
  want = np_logsumexp(log_w, axis=1) - np.log(50)
  np.testing.assert_allclose(iw_log_likelihood(log_px_given_z, z, mu, logvar), want, rtol=1e-5)


def test_iw_chunked_merge_equals_one_shot():
  log_px_given_z, z, mu, logvar = iw_inputs(2, 3, 60, 4)
  acc = jnp.full((3,), -jnp.inf)
  for start in range(0, 60, 16):  # Uneven last chunk.
    chunk = slice(start, start + 16)
    acc = metrics.logsumexp_merge(
        acc, metrics.iw_log_weights(log_px_given_z[:, chunk], z[:, chunk], mu, logvar)
    )
  np.testing.assert_allclose(
      acc - jnp.log(60.0), iw_log_likelihood(log_px_given_z, z, mu, logvar), rtol=1e-6
  )


def test_iw_is_exact_with_the_true_posterior():
  # p(z) = N(0, I), p(x|z) = N(x; z, s2 I): with q = the exact posterior every
  # importance weight equals p(x) = N(x; 0, (1 + s2) I).
  s2 = 0.5
  x = np.array([[0.3, -1.2, 2.0], [0.0, 0.5, -0.1]])
  mu = x / (1 + s2)
  logvar = np.log(np.full_like(x, s2 / (1 + s2)))
  z = mu[:, None] + np.exp(0.5 * logvar[:, None]) * np.random.default_rng(0).standard_normal(
      (2, 7, 3)
  )
  log_px_given_z = np_gaussian_log_density(x[:, None], z, math.log(s2))
  got = iw_log_likelihood(log_px_given_z, z, mu, logvar)
  np.testing.assert_allclose(got, np_gaussian_log_density(x, 0.0, math.log(1 + s2)), rtol=1e-5)


# ----------------------------------------------------------------------------
# Exact MI for peaked posteriors of repeated sentences.
# ----------------------------------------------------------------------------


def repeated_posteriors(logvar, offset, n=400, repeats=60, latent_dim=32, seed=0):
  """Means near `offset`, the last `repeats` rows exact copies of earlier ones (a
  test split's repeated lines), one draw each; all float32 (the reference sees
  the same float32 numbers in float64)."""
  rng = np.random.default_rng(seed)
  mu = offset + rng.standard_normal((n, latent_dim))
  mu[n - repeats :] = mu[rng.choice(n - repeats, repeats)]
  logvar = np.broadcast_to(logvar, (n, latent_dim)).astype(np.float32)
  mu = mu.astype(np.float32)
  z = mu + np.exp(0.5 * logvar) * rng.standard_normal((n, latent_dim))
  return mu, logvar, z.astype(np.float32)


@pytest.mark.parametrize("offset", [3.0, 100.0])
@pytest.mark.parametrize("logvar", [2.0, -5.0, -15.0, -20.0, -30.0])
def test_mi_exact_for_peaked_repeated_posteriors(logvar, offset):
  """Where a plain matmul expansion of the distances reads 2.28 nats against 5.65 (logvar -20,
  repeated rows, off-centre means)."""
  mu, lv, z = repeated_posteriors(logvar, offset)
  got = metrics.mutual_information_from_samples(mu, lv, z, block_size=64)
  want = np_mutual_information(mu, lv, z)
  assert float(got) == pytest.approx(want, abs=1e-3)


def test_mi_exact_for_mixed_widths_and_all_rows_repeated():
  """Per-element logvar from +2 to -30; every row twice (400 rows to recompute,
  several chunks of the direct pass); and the per-batch variant."""
  rng = np.random.default_rng(1)
  mu, _, _ = repeated_posteriors(0.0, 3.0, seed=1)
  mu[200:] = mu[:200]
  logvar = rng.uniform(-30.0, 2.0, mu.shape).astype(np.float32)
  logvar[200:] = logvar[:200]
  z = (mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape)).astype(np.float32)
  got = metrics.mutual_information_from_samples(mu, logvar, z, block_size=64)
  assert float(got) == pytest.approx(np_mutual_information(mu, logvar, z), abs=1e-3)
  got = metrics.mutual_information_from_samples(
      mu, logvar, z, batch_size=150, block_size=64, entropy="analytic"
  )
  want = np_mutual_information(mu, logvar, z, 150, "analytic")
  assert float(got) == pytest.approx(want, abs=1e-3)


# ----------------------------------------------------------------------------
# The per-batch MI of the released code; per-word perplexity.
# ----------------------------------------------------------------------------


def he_et_al_calc_mi(mu, logvar, z, batch_size=256):
  """vae-lagging-encoder's calc_mi over a split, in float64: per batch of
  consecutive examples, the analytic negative entropy minus the mean log
  aggregate posterior of the batch; batches weighted by their size."""
  mu, logvar, z = (np.asarray(a, np.float64) for a in (mu, logvar, z))
  total, count = 0.0, 0
  for start in range(0, len(mu), batch_size):
    m, lv, zz = (a[start : start + batch_size] for a in (mu, logvar, z))
    b, nz = m.shape
    neg_entropy = np.mean(-0.5 * nz * LOG_2PI - 0.5 * np.sum(1 + lv, -1))
    dev = zz[:, None, :] - m[None]  # (z_batch, x_batch, nz)
    log_density = (
        -0.5 * np.sum(dev**2 / np.exp(lv)[None], -1) - 0.5 * (nz * LOG_2PI + np.sum(lv, -1))[None]
    )
    top = log_density.max(1, keepdims=True)
    log_qz = top[:, 0] + np.log(np.exp(log_density - top).sum(1)) - math.log(b)
    total += (neg_entropy - log_qz.mean()) * b
    count += b
  return total / count


def test_batch_mi_is_he_et_al_calc_mi_in_split_order():
  mu, logvar, _ = random_posteriors(9, 600, 16, scale=0.7)  # batches 256, 256, 88
  rng = jax.random.PRNGKey(4)
  z = np.asarray(mu + np.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape))
  got = float(metrics.batch_mutual_information(mu, logvar, rng))
  want = he_et_al_calc_mi(mu, logvar, z)
  assert got == pytest.approx(want, abs=1e-5)
  # Consecutive batches of the given order: another order groups other rows.
  assert he_et_al_calc_mi(mu[::-1], logvar[::-1], z[::-1]) != pytest.approx(want, abs=1e-3)


def test_word_perplexity_by_hand():
  # PTB lines as in the files: spaces around, <unk> and N are words.
  lines = [" the <unk> rose N % ", "a  dog\tbarked"]
  assert [metrics.word_count(line) for line in lines] == [5, 3]
  # 12 nats over 8 words + 2 EOS.
  assert metrics.word_perplexity(12.0, 8, 2) == pytest.approx(math.exp(1.2), rel=1e-12)
  assert metrics.word_perplexity(1e6, 1, 0) == pytest.approx(math.exp(700.0))
