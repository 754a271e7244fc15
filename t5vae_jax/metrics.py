"""Latent-quality metrics: MI, active units, the pieces of the importance-weighted NLL.

Pure, jitted functions over whole evaluation sets. Shapes: N examples, L latent
dims, B a batch, K importance samples. Everything is computed in float32.

Mutual information (Hoffman & Johnson 2016) needs the aggregate posterior
q(z) = 1/N sum_m q(z|x_m) evaluated at one sample per example, an N x N
interaction. It is computed blockwise (a scan over key blocks inside a map over
query blocks), so memory is O(block_size^2 + N L): neither an N x N x L tensor
nor an N x N matrix is ever materialised. The squared Mahalanobis distances of
each block come from matrix multiplications with a certified error bound; the
rows where that bound is too loose (peaked posteriors of repeated sentences)
are recomputed with the direct formula, so the result is exact to float32
rounding for any posterior width (see `_log_aggregate_posterior`).

The importance-weighted NLL is chunked over K by its caller, who owns the decoder
(evaluation.batch_statistics): each chunk's k draws z (B, k, L) give log weights
`iw_log_weights(log p(x|z), z, mu, logvar)`, folded into a running logsumexp by
`logsumexp_merge` (start from -inf); log p(x) ~ that logsumexp - log K.
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
  return -0.5 * jnp.sum(jnp.square(z - mu) * jnp.exp(-logvar) + logvar + _LOG_2PI, axis=-1)


def standard_normal_log_density(z):
  """log N(z; 0, I), summed over the last axis."""
  z = jnp.asarray(z, jnp.float32)
  return -0.5 * jnp.sum(jnp.square(z) + _LOG_2PI, axis=-1)


# ----------------------------------------------------------------------------
# Mutual information.
# ----------------------------------------------------------------------------


# Distance error budget. The matmul expansion's rounding error is at most
# _ERROR_ULPS_PER_DIM * L + _ERROR_ULPS_EXTRA float32 epsilons times
# sum_l (z_nl^2 + mu_ml^2) / v_ml (IEEE float32 products and sums in any
# summation order, as matmuls at Precision.HIGHEST on CPU and GPU; TPU's
# HIGHEST emulates float32 to about the same accuracy). A row whose certified
# log error exceeds _ROW_LOG_TOLERANCE (nats), or that has a non-negligible pair
# with a distance error above 1, is recomputed with the direct formula. Pairs
# more than _NEGLIGIBLE_NATS below the self term weigh less than e^-60 of it.
_ERROR_ULPS_PER_DIM = 1.0
_ERROR_ULPS_EXTRA = 8.0
_ROW_LOG_TOLERANCE = 2e-4
_NEGLIGIBLE_NATS = 60.0
_EXACT_ROWS = 128  # Rows per chunk of the direct recomputation.


def _logsumexp_update(running_max, running_sum, log_q):
  """Folds a (rows, keys) block of log terms into a running (max, sum).

  Returns (new max, new sum, the block's sum, shift): the sums are on the scale
  exp(-shift), shift being the new max (0 where it is -inf).
  """
  new_max = jnp.maximum(running_max, jnp.max(log_q, axis=1))
  shift = jnp.where(jnp.isneginf(new_max), 0.0, new_max)  # No -inf - -inf.
  rescale = jnp.exp(running_max - shift)
  block_sum = jnp.sum(jnp.exp(log_q - shift[:, None]), axis=1)
  return new_max, running_sum * rescale + block_sum, block_sum, shift


def _log_aggregate_posterior(z, mu, logvar, log_q_self, valid, block_size):
  """log q(z_n) = logsumexp_m log q(z_n | x_m) - log(#valid) over one set.

  The set is padded: `valid` marks real rows, and the length is a multiple of
  `block_size`. Exact to float32 rounding for any posterior width, in two
  passes over (query block, key block) pairs:

  1. Fast: the squared Mahalanobis distances of a block come from matmuls,

       d_nm = sum_l (z_nl - mu_ml)^2 / v_ml = Q_nm - 2 C_nm + S_m,
       Q = [z^2] . [1/v],  C = [z] . [mu / v],  S_m = sum_l mu_ml^2 / v_ml,

     which cancels catastrophically when v is tiny next to (z - mu)^2 (peaked
     posteriors, phase 1 with beta = 0: logvar -20): each term is ~1e10, the
     difference O(1). Its rounding error is at most (L + 8) eps (Q_nm + S_m);
     per query row n and key block K it is bounded by
     beta_nK = (L + 8) eps (|z_n^2|_2 max_K |1/v_m|_2 + max_K S_m)
     (Cauchy-Schwarz on Q: no per-pair work), and each row carries the
     certified bound on its log-sum error, sum_K beta_nK W_nK / sum_m w_nm,
     W_nK the weight of block K's keys other than n (blocks with beta <= 1),
     plus a flag for a block with beta > 1 whose densities might come within
     _NEGLIGIBLE_NATS of the self term (a repeated sentence).
     The self term q(z_n | x_n) is `log_q_self`, computed directly.
  2. Exact: the rows whose bound exceeds _ROW_LOG_TOLERANCE or that are
     flagged are recomputed directly, sum_l (z_nl - mu_ml)^2 / v_ml summed
     one dimension at a time over (_EXACT_ROWS, block) tiles, in a loop over
     chunks of those rows.
     Typical posteriors flag few or no rows, so this costs little; peaked ones
     flag the repeated rows only.

  Memory is O(block_size^2 + M L).

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

  # Centring (the density is translation invariant) shrinks the fast pass's
  # error bound (it is lossy, so the exact pass uses the raw z and mu: z - mu
  # of a repeated row is then exact).
  raw_z, raw_mu = z, mu
  centre = jnp.sum(jnp.where(valid[:, None], mu, 0.0), 0) / jnp.maximum(count, 1)
  z = jnp.where(valid[:, None], z - centre, 0.0)
  mu = jnp.where(valid[:, None], mu - centre, 0.0)
  logvar = jnp.where(valid[:, None], logvar, 0.0)
  precision = jnp.exp(-logvar)
  log_norm = jnp.where(  # (M,); -inf drops padded keys.
      valid, -0.5 * (jnp.sum(logvar, -1) + latent_dim * _LOG_2PI), -jnp.inf
  )
  error_scale = (_ERROR_ULPS_PER_DIM * latent_dim + _ERROR_ULPS_EXTRA) * float(
      jnp.finfo(jnp.float32).eps
  )

  blocks = lambda x: x.reshape((num_blocks, block_size) + x.shape[1:])
  key_sq_norm = jnp.sum(mu * mu * precision, -1)  # (M,)
  key_blocks = (
      jnp.arange(num_blocks),
      blocks(jnp.concatenate([precision, -2.0 * mu * precision], -1)),  # (nb, b, 2L)
      blocks(key_sq_norm),
      blocks(log_norm),
      # Per key block, for the error bound: max_m |1/v_m|_2 and max_m S_m.
      jnp.max(blocks(jnp.sqrt(jnp.sum(precision * precision, -1))), 1),
      jnp.max(blocks(key_sq_norm), 1),
  )
  is_diagonal = jnp.eye(block_size, dtype=bool)  # (b, b)

  def fast_query_block(args):
    query_index, query_z, self_term = args  # (), (b, L), (b,)
    query = jnp.concatenate([query_z * query_z, query_z], -1)  # (b, 2L)
    # Q_nm <= |z_n^2|_2 |1/v_m|_2 (Cauchy-Schwarz).
    query_sq_norm = jnp.sqrt(jnp.sum(jnp.square(query_z * query_z), -1))  # (b,)

    def key_block(carry, args):
      key_index, key, key_sq, key_log_norm, key_precision_norm, key_sq_max = args
      distance = jnp.matmul(query, key.T, precision=lax.Precision.HIGHEST)
      distance = jnp.maximum(distance + key_sq, 0.0)  # (b, b)
      on_diagonal = query_index == key_index
      self_pair = is_diagonal & on_diagonal
      others = jnp.where(self_pair, -jnp.inf, key_log_norm - 0.5 * distance)
      log_q = jnp.where(self_pair, self_term[:, None], others)
      # The bound on this block's distance errors, per query row (b,).
      error = error_scale * (query_sq_norm * key_precision_norm + key_sq_max)
      running_max, running_sum, running_error, risky = carry
      new_max, new_sum, block_sum, shift = _logsumexp_update(running_max, running_sum, log_q)
      others_sum = jnp.maximum(
          block_sum - jnp.where(on_diagonal, jnp.exp(self_term - shift), 0.0), 0.0
      )
      # |w - w~| <= w~ (e^(beta/2) - 1) <= w~ beta for beta <= 1; a pair with
      # a larger error that might matter flags the row.
      risky = risky | (
          (error > 1.0) & (jnp.max(others, axis=1) + 0.5 * error > self_term - _NEGLIGIBLE_NATS)
      )
      return (
          new_max,
          new_sum,
          running_error * jnp.exp(running_max - shift) + others_sum * jnp.minimum(error, 1.0),
          risky,
      ), None

    init = (
        jnp.full((block_size,), -jnp.inf),
        jnp.zeros((block_size,)),
        jnp.zeros((block_size,)),
        jnp.zeros((block_size,), bool),
    )
    (row_max, row_sum, row_error, risky), _ = lax.scan(key_block, init, key_blocks)
    needs_exact = risky | (row_error > _ROW_LOG_TOLERANCE * row_sum)
    return row_max + jnp.log(row_sum), needs_exact  # (b,), (b,)

  log_sum, needs_exact = lax.map(
      fast_query_block, (jnp.arange(num_blocks), blocks(z), blocks(log_q_self))
  )
  log_sum = log_sum.reshape(num_rows)
  needs_exact = needs_exact.reshape(num_rows) & valid

  transposed_blocks = lambda x: jnp.swapaxes(blocks(x), 1, 2)  # (nb, L, b)

  def exact_rows(row_ids):  # (R,) indices, num_rows for none -> (R,)
    query_z = jnp.take(raw_z, row_ids, axis=0, mode="clip")  # (R, L)
    self_term = jnp.take(log_q_self, row_ids, mode="clip")

    def key_block(carry, args):
      key_index, key_precision, key_mu, key_log_norm = args  # (L, b) x 2, (b,)

      def add_dim(dim, distance):  # A loop over L: (R, b) at a time, fast.
        return distance + jnp.square(query_z[:, dim, None] - key_mu[dim][None]) * (
            key_precision[dim][None]
        )

      distance = lax.fori_loop(0, latent_dim, add_dim, jnp.zeros((row_ids.shape[0], block_size)))
      key_ids = key_index * block_size + jnp.arange(block_size)
      log_q = jnp.where(
          row_ids[:, None] == key_ids[None], self_term[:, None], key_log_norm - 0.5 * distance
      )
      return _logsumexp_update(*carry, log_q)[:2], None

    init = (jnp.full(row_ids.shape, -jnp.inf), jnp.zeros(row_ids.shape))
    (row_max, row_sum), _ = lax.scan(
        key_block,
        init,
        (
            jnp.arange(num_blocks),
            transposed_blocks(precision),
            transposed_blocks(raw_mu),
            blocks(log_norm),
        ),
    )
    return row_max + jnp.log(row_sum)

  # Flagged rows first; a loop over chunks of them (none: no iteration).
  num_exact = jnp.sum(needs_exact)
  order = jnp.argsort(~needs_exact, stable=True)
  order = jnp.pad(order, (0, _EXACT_ROWS))

  def exact_chunk(chunk, log_sum):
    positions = chunk * _EXACT_ROWS + jnp.arange(_EXACT_ROWS)
    row_ids = jnp.where(
        positions < num_exact,
        lax.dynamic_slice(order, (chunk * _EXACT_ROWS,), (_EXACT_ROWS,)),
        num_rows,
    )
    return log_sum.at[row_ids].set(exact_rows(row_ids), mode="drop")

  log_sum = lax.fori_loop(0, (num_exact + _EXACT_ROWS - 1) // _EXACT_ROWS, exact_chunk, log_sum)
  return log_sum - jnp.log(count)


def _pad_rows(x, rows):
  pad = [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
  return jnp.pad(x, pad)


def mutual_information_from_samples(
    mu, logvar, z, batch_size=None, block_size=1024, entropy="sample"
):
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
    raise ValueError(f"expected (N, L) arrays, got {mu.shape}, {logvar.shape}, " f"{z.shape}")
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
  group_size = num_examples if batch_size is None else min(batch_size, num_examples)
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
      (grouped(z), grouped(mu), grouped(logvar), grouped(log_q_self), valid),
  )
  log_q_z = log_q_z[:, :group_size].reshape(-1)[:num_examples]  # (N,)
  return jnp.mean(neg_entropy - log_q_z)


@jax.jit
def _reparameterize(rng, mu, logvar):
  """One draw per example: (N, L) -> (N, L)."""
  return mu + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape)


def mutual_information(mu, logvar, rng, batch_size=None, block_size=1024, entropy="sample"):
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
      latents. `batch_mutual_information` is the reference estimator (analytic
      entropy, batches of 256).
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
      mu, logvar, z, batch_size=batch_size, block_size=block_size, entropy=entropy
  )


REFERENCE_MI_BATCH_SIZE = 256


def batch_mutual_information(mu, logvar, rng, batch_size=REFERENCE_MI_BATCH_SIZE):
  """The per-batch MI exactly as the released code computes it (`mi_batch`).

  He et al.'s `calc_mi` (vae-lagging-encoder), which Li et al. and the paper's
  released code use: consecutive batches of `batch_size` examples in the
  order given (pass the split's order), per batch

    mean_n [-0.5 L log(2 pi e) - 0.5 sum_l logvar_nl]
        - mean_n log(1/b sum_m q(z_n | x_m)),  z_n ~ q(z | x_n),

  (the analytic entropy), averaged over batches weighted by their size (the
  last one may be short). Capped near log(batch_size).

  Args: mu, logvar: (N, L); rng: the key of the one draw per example.
  Returns: scalar float32, in nats.
  """
  return mutual_information(
      mu, logvar, rng, batch_size=min(batch_size, len(mu)), entropy="analytic"
  )


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
# Importance weights of the IW log-likelihood, word perplexity.
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


def word_count(text):
  """Words of a raw line as the benchmark files count them: whitespace-separated tokens."""
  return len(text.split())


def word_perplexity(total_nll, total_words, num_sentences):
  """exp(total NLL / (words + sentences)): per word, one EOS per sentence (Li et al.).

  Plain Python floats (the sums are float64); capped at exp(700) instead of inf.
  """
  return math.exp(min(float(total_nll) / (total_words + num_sentences), 700.0))
