"""Latent-quality metrics: MI, active units, importance-weighted NLL, perplexity.

Pure, jitted functions over whole evaluation sets. Shapes: N examples, L latent
dims, B a batch, K importance samples. Everything is computed in float32.

Mutual information (Hoffman & Johnson 2016) needs the aggregate posterior
q(z) = 1/N sum_m q(z|x_m) evaluated at one sample per example, an N x N
interaction. It is computed blockwise (a scan over key blocks inside a map over
query blocks), so memory is O(block_size^2 + N L): neither an N x N x L tensor
nor an N x N matrix is ever materialised. The squared Mahalanobis distances of
each block come from a single matrix multiplication (see
`_log_aggregate_posterior`).

Importance-weighted NLL with many samples is meant to be chunked over K by the
caller, who owns the decoder:

    acc = jnp.full((B,), -jnp.inf)
    for chunk in range(K // k):
      z = sample_latents(rngs[chunk], mu, logvar, k)                 # (B, k, L)
      log_px_given_z = ...decoder log-likelihood of x at each z...   # (B, k)
      acc = logsumexp_merge(acc, iw_log_weights(log_px_given_z, z, mu, logvar))
    log_px = acc - jnp.log(K)                                          # (B,)
"""

import functools
import math

import jax
from jax import lax
import jax.numpy as jnp

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_density(z, mu, logvar):
  """log N(z; mu, diag(exp(logvar))), summed over the last axis (broadcasts)."""
  z, mu, logvar = (jnp.asarray(a, jnp.float32) for a in (z, mu, logvar))
  return -0.5 * jnp.sum(
      jnp.square(z - mu) * jnp.exp(-logvar) + logvar + _LOG_2PI, axis=-1)


def standard_normal_log_density(z):
  """log N(z; 0, I), summed over the last axis."""
  z = jnp.asarray(z, jnp.float32)
  return -0.5 * jnp.sum(jnp.square(z) + _LOG_2PI, axis=-1)


@functools.partial(jax.jit, static_argnames="num_samples")
def sample_latents(rng, mu, logvar, num_samples):
  """K reparameterised draws z = mu + exp(logvar / 2) * eps per example.

  Args: mu, logvar: (B, L). Returns (B, K, L).
  """
  mu = jnp.asarray(mu, jnp.float32)
  logvar = jnp.asarray(logvar, jnp.float32)
  eps = jax.random.normal(rng, (mu.shape[0], num_samples, mu.shape[-1]))
  return mu[:, None, :] + jnp.exp(0.5 * logvar)[:, None, :] * eps


# ----------------------------------------------------------------------------
# Mutual information.
# ----------------------------------------------------------------------------


def _log_aggregate_posterior(z, mu, logvar, log_q_self, valid, block_size):
  """log q(z_n) = logsumexp_m log q(z_n | x_m) - log(#valid) over one set.

  The set is padded: `valid` marks real rows, and the length is a multiple of
  `block_size`. Per block the distances come from one matmul,

    sum_l (z_nl - mu_ml)^2 / v_ml
        = [z_n^2, z_n] . [1/v_m, -2 mu_m / v_m] + sum_l mu_ml^2 / v_ml,

  so the work is a (b, 2L) x (2L, b) product plus a fused elementwise pass.
  That expansion loses precision when mu^2 / v is large, so: mu is centred
  first (the density is translation invariant), distances are clamped at 0,
  and the self term q(z_n | x_n), which dominates when posteriors barely
  overlap, is replaced by `log_q_self`, computed directly.

  Args:
    z, mu, logvar: (M, L) with M a multiple of block_size.
    log_q_self: (M,) log q(z_n | x_n).
    valid: (M,) bool.
    block_size: rows and columns per block.

  Returns:
    (M,) log q(z_n); rows where valid is False are meaningless.
  """
  num_rows, latent_dim = z.shape
  num_blocks = num_rows // block_size
  count = jnp.sum(valid).astype(jnp.float32)

  centre = jnp.sum(jnp.where(valid[:, None], mu, 0.0), 0) / jnp.maximum(count, 1)
  z = jnp.where(valid[:, None], z - centre, 0.0)
  mu = jnp.where(valid[:, None], mu - centre, 0.0)
  logvar = jnp.where(valid[:, None], logvar, 0.0)
  precision = jnp.exp(-logvar)

  blocks = lambda x: x.reshape((num_blocks, block_size) + x.shape[1:])
  query_features = blocks(jnp.concatenate([z * z, z], -1))  # (nb, b, 2L)
  key_features = blocks(
      jnp.concatenate([precision, -2.0 * mu * precision], -1))  # (nb, b, 2L)
  key_sq_norm = blocks(jnp.sum(mu * mu * precision, -1))  # (nb, b)
  key_log_norm = blocks(jnp.where(  # (nb, b); -inf drops padded keys.
      valid, -0.5 * (jnp.sum(logvar, -1) + latent_dim * _LOG_2PI), -jnp.inf))
  is_diagonal = jnp.eye(block_size, dtype=bool)  # (b, b)

  def query_block(args):
    query_index, query, self_term = args  # (), (b, 2L), (b,)

    def key_block(carry, args):
      running_max, running_sum = carry  # (b,), (b,)
      key_index, key, sq_norm, log_norm = args  # (), (b, 2L), (b,), (b,)
      distance = jnp.matmul(query, key.T, precision=lax.Precision.HIGHEST)
      distance = jnp.maximum(distance + sq_norm, 0.0)  # (b, b)
      log_q = log_norm - 0.5 * distance
      log_q = jnp.where(is_diagonal & (query_index == key_index),
                        self_term[:, None], log_q)
      new_max = jnp.maximum(running_max, jnp.max(log_q, axis=1))
      shift = jnp.where(jnp.isneginf(new_max), 0.0, new_max)  # No -inf - -inf.
      running_sum = (running_sum * jnp.exp(running_max - shift) +
                     jnp.sum(jnp.exp(log_q - shift[:, None]), axis=1))
      return (new_max, running_sum), None

    init = (jnp.full((block_size,), -jnp.inf), jnp.zeros((block_size,)))
    (row_max, row_sum), _ = lax.scan(
        key_block, init,
        (jnp.arange(num_blocks), key_features, key_sq_norm, key_log_norm))
    return row_max + jnp.log(row_sum)  # (b,)

  log_sum = lax.map(query_block, (jnp.arange(num_blocks), query_features,
                                  blocks(log_q_self)))  # (nb, b)
  return log_sum.reshape(num_rows) - jnp.log(count)


def _pad_rows(x, rows):
  pad = [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
  return jnp.pad(x, pad)


def mutual_information_from_samples(mu, logvar, z, batch_size=None,
                                    block_size=1024, entropy="sample"):
  """`mutual_information` at given samples z_n ~ q(z | x_n) (N, L).

  Exposed so the estimate can be checked against other implementations at the
  same draws. Arguments as in `mutual_information`.
  """
  # Positional static arguments: one compilation however the options are spelt.
  return _mutual_information(mu, logvar, z, batch_size, block_size, entropy)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _mutual_information(mu, logvar, z, batch_size, block_size, entropy):
  """Jitted body of `mutual_information_from_samples`."""
  mu, logvar, z = (jnp.asarray(a, jnp.float32) for a in (mu, logvar, z))
  if mu.ndim != 2 or logvar.shape != mu.shape or z.shape != mu.shape:
    raise ValueError(f"expected (N, L) arrays, got {mu.shape}, {logvar.shape}, "
                     f"{z.shape}")
  if batch_size is not None and batch_size < 1 or block_size < 1:
    raise ValueError(f"bad batch_size={batch_size} or block_size={block_size}")
  num_examples = mu.shape[0]
  log_q_self = gaussian_log_density(z, mu, logvar)  # (N,)
  if entropy == "sample":
    neg_entropy = log_q_self
  elif entropy == "analytic":
    neg_entropy = -0.5 * jnp.sum(1.0 + logvar + _LOG_2PI, -1)
  else:
    raise ValueError(f"entropy must be 'sample' or 'analytic', got {entropy!r}")

  # One aggregate posterior per group of consecutive examples: the whole set,
  # or batches of batch_size (the last one may be short). Each group is padded
  # to a multiple of the block.
  group_size = num_examples if batch_size is None else min(batch_size,
                                                           num_examples)
  num_groups = -(-num_examples // group_size)
  block = min(block_size, group_size)
  padded_group = -(-group_size // block) * block

  def grouped(x):  # (N, ...) -> (G, padded_group, ...)
    x = _pad_rows(x, num_groups * group_size)
    x = x.reshape((num_groups, group_size) + x.shape[1:])
    pad = [(0, 0), (0, padded_group - group_size)] + [(0, 0)] * (x.ndim - 2)
    return jnp.pad(x, pad)

  valid = grouped(jnp.ones((num_examples,), bool))  # (G, P)
  log_q_z = lax.map(
      lambda args: _log_aggregate_posterior(*args, block_size=block),
      (grouped(z), grouped(mu), grouped(logvar), grouped(log_q_self), valid))
  log_q_z = log_q_z[:, :group_size].reshape(-1)[:num_examples]  # (N,)
  return jnp.mean(neg_entropy - log_q_z)


@jax.jit
def _reparameterize(rng, mu, logvar):
  """One draw per example: (N, L) -> (N, L)."""
  return mu + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape)


def mutual_information(mu, logvar, rng, batch_size=None, block_size=1024,
                       entropy="sample"):
  """I_q(x; z) = E_x E_q(z|x)[log q(z|x)] - E_x E_q(z|x)[log q(z)].

  Hoffman & Johnson (2016), with q(z) = 1/N sum_m q(z|x_m) the aggregate
  posterior of the whole set and one draw z_n ~ q(z|x_n) per example. Like
  any estimate from N examples it is at most log N, so it saturates when
  exp(MI) approaches N. Callable under an outer jit (options are static).

  Args:
    mu, logvar: (N, L) posterior parameters of the evaluation set.
    rng: PRNG key for the draws.
    batch_size: None for the whole-set estimate. An int b gives the estimate of
      the released code (Li et al., He et al.): the aggregate posterior of each
      run of b consecutive examples only, averaged over batches weighted by
      their size. It can never exceed log(b) (with entropy="sample"; with
      "analytic" only up to sampling noise), so it saturates for informative
      latents.
    block_size: rows/columns per block; memory is O(block_size^2 + N L).
    entropy: how E_q(z|x)[log q(z|x)] is estimated. "sample" (default): at the
      same draw, log q(z_n|x_n). The self term then cancels against its part
      of log q(z_n), giving lower variance and an exact cap at log N (log b).
      "analytic": the closed-form negative entropy
      -0.5 * sum_l (1 + log 2 pi + logvar_l), as the released code does; equal
      in expectation.

  Returns:
    Scalar float32, in nats.
  """
  # Two jitted pieces (traceable under an outer jit too): the draw compiles
  # once per shape, whatever the static options.
  mu = jnp.asarray(mu, jnp.float32)
  logvar = jnp.asarray(logvar, jnp.float32)
  z = _reparameterize(rng, mu, logvar)
  return mutual_information_from_samples(
      mu, logvar, z, batch_size=batch_size, block_size=block_size,
      entropy=entropy)


# ----------------------------------------------------------------------------
# Active units.
# ----------------------------------------------------------------------------


@jax.jit
def active_unit_variances(mu):
  """Per-dimension variance of mu over the set, ddof=1, two-pass. (N, L) -> (L,)."""
  mu = jnp.asarray(mu, jnp.float32)
  centred = mu - jnp.mean(mu, axis=0)
  return jnp.sum(jnp.square(centred), axis=0) / (mu.shape[0] - 1)


@jax.jit
def active_units(mu, threshold=0.01):
  """Number of dims whose Var_x(E_q[z_i | x]) exceeds threshold (Burda et al. 2016).

  Args: mu: (N, L). Returns an int32 scalar (call int() for JSON).
  """
  return jnp.sum(active_unit_variances(mu) > threshold).astype(jnp.int32)


# ----------------------------------------------------------------------------
# Importance-weighted log-likelihood and perplexity.
# ----------------------------------------------------------------------------


@jax.jit
def iw_log_weights(log_px_given_z, z, mu, logvar):
  """log p(x|z_k) + log p(z_k) - log q(z_k|x) for each sample.

  Args:
    log_px_given_z: (B, K) decoder log-likelihood of x at each z_k.
    z: (B, K, L) samples from q(z|x).
    mu, logvar: (B, L) posterior parameters.

  Returns:
    (B, K) log importance weights.
  """
  log_px_given_z = jnp.asarray(log_px_given_z, jnp.float32)
  log_q = gaussian_log_density(z, mu[:, None, :], logvar[:, None, :])
  return log_px_given_z + standard_normal_log_density(z) - log_q


@jax.jit
def logsumexp_merge(acc, log_weights):
  """Folds a chunk of log weights (B, k) into a running logsumexp acc (B,).

  Start from acc = -inf; after all chunks, log p(x) ~ acc - log(total K).
  """
  return jnp.logaddexp(acc, jax.nn.logsumexp(log_weights, axis=-1))


@jax.jit
def iw_log_likelihood(log_px_given_z, z, mu, logvar):
  """log p(x) ~ logsumexp_k[log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K.

  Args as in `iw_log_weights`. Returns (B,). Consistent (and a lower bound in
  expectation) for K -> inf; K = 1 is the single-sample ELBO.
  """
  log_weights = iw_log_weights(log_px_given_z, z, mu, logvar)
  return (jax.nn.logsumexp(log_weights, axis=-1) -
          jnp.log(log_weights.shape[-1]).astype(jnp.float32))


def perplexity(total_nll, total_tokens):
  """exp(total NLL in nats / number of target tokens, EOS included)."""
  return jnp.exp(jnp.asarray(total_nll, jnp.float32) / total_tokens)
