"""The VAE objective: reconstruction, KL, KL thresholding ("free bits") and their sum.

All functions are pure and jittable. Everything is computed in float32 whatever the
dtype of the inputs (the model may run in bfloat16), because the sums below run over
thousands of terms.

Batch means take an optional `example_weights` (B,) array: 1 for a real example, 0 for
a padding example that only fills up the last batch to its static shape. A zero-weight
example then contributes exactly nothing, so a padded batch gives the same numbers as
the unpadded one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from t5vae_jax.choices import KL_THRESHOLD_MODES, REC_NORMALIZERS

Array = jax.Array


def _safe_divide(numerator: Array, denominator: Array) -> Array:
  """numerator / denominator, 0 where the denominator is 0 (and no NaN gradients)."""
  positive = denominator > 0
  return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)


def _batch_sum_and_count(values: Array, example_weights: Array | None) -> tuple[Array, Array]:
  """Weighted sum over the leading (batch) axis and the total weight."""
  values = values.astype(jnp.float32)
  if example_weights is None:
    return jnp.sum(values, axis=0), jnp.asarray(values.shape[0], jnp.float32)
  weights = jnp.asarray(example_weights, jnp.float32)  # (B,)
  weights = weights.reshape(weights.shape + (1,) * (values.ndim - 1))
  return jnp.sum(weights * values, axis=0), jnp.sum(weights)


def _batch_mean(values: Array, example_weights: Array | None) -> Array:
  """Mean over the leading (batch) axis, counting only examples of weight 1."""
  total, count = _batch_sum_and_count(values, example_weights)
  return _safe_divide(total, count)


def kl_per_dim(mu: Array, logvar: Array) -> Array:
  """KL(N(mu, exp(logvar)) || N(0, 1)) per example and latent dimension, (B, L) float32."""
  mu = mu.astype(jnp.float32)
  logvar = logvar.astype(jnp.float32)
  return -0.5 * (1.0 + logvar - jnp.square(mu) - jnp.exp(logvar))


def thresholded_kl(
    kl_per_dim: Array,
    floor: float | Array,
    mode: str = "batch",
    example_weights: Array | None = None,
) -> Array:
  """KL with a per-dimension floor lambda (free bits, paper eq. 2), a float32 scalar.

  Each latent dimension is charged at least `floor` nats, so the optimiser gains nothing
  by pushing a dimension's KL below it: dimensions are left free to carry information.

  Args:
    kl_per_dim: (B, L) KL per example and dimension, see `kl_per_dim()`.
    floor: lambda, nats per dimension. 0 gives the plain mean KL per example.
    mode: "batch": average each dimension's KL over the batch, then apply the floor
      (Kingma et al. 2016). "example": apply the floor per example and dimension, then
      average over the batch (what the released PyTorch code does); since
      mean(max(floor, kl)) >= max(floor, mean(kl)) it is never smaller than "batch".
    example_weights: optional (B,) 1/0 mask of real/padding examples.

  Returns:
    sum over dimensions of the floored KL, i.e. nats per sentence.
  """
  if mode not in KL_THRESHOLD_MODES:
    raise ValueError(f"kl_threshold_mode={mode!r} is not one of {KL_THRESHOLD_MODES}")
  kl_per_dim = kl_per_dim.astype(jnp.float32)  # (B, L)
  floor = jnp.asarray(floor, jnp.float32)
  if mode == "batch":
    kl_per_dim_mean = _batch_mean(kl_per_dim, example_weights)  # (L,)
    return jnp.sum(jnp.maximum(floor, kl_per_dim_mean))
  kl_per_example = jnp.sum(jnp.maximum(floor, kl_per_dim), axis=-1)  # (B,)
  return _batch_mean(kl_per_example, example_weights)


def token_cross_entropy(logits: Array, targets: Array) -> Array:
  """-log p(target token) at every position, (B, T) float32.

  This is log_softmax(logits)[target], written as logsumexp(logits) - logits[target] so
  that no (B, T, V) array of log-probabilities has to be materialised. bfloat16 logits
  are upcast to float32 first: the logsumexp over a 32k vocabulary loses too much in bf16.

  Args:
    logits: (B, T, V) any float dtype.
    targets: (B, T) integer token ids in [0, V); padding positions must hold a valid id
      (the pad id) and are masked out by the caller.
  """
  logits = logits.astype(jnp.float32)  # (B, T, V)
  log_normaliser = jax.nn.logsumexp(logits, axis=-1)  # (B, T)
  target_logits = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)
  return log_normaliser - target_logits[..., 0]  # (B, T)


def target_token_nll(logits: Array, targets: Array, packing=None) -> Array:
  """(B, T) -log p of each target token from the model's logits: (B, T, V), or (S, C, V) at
  the slots of ``packing`` (``t5vae_jax.packing.Packing``; zeros at padding then)."""
  if packing is None:
    return token_cross_entropy(logits, targets)
  return packing.unpack(token_cross_entropy(logits, packing.pack(targets)))


def reconstruction_loss(logits: Array, targets: Array, target_mask: Array, packing=None) -> Array:
  """-log p(x | z) per example in nats per sentence, (B,) float32.

  Summed (not averaged) over the non-pad target positions, EOS included, as the ELBO asks:
  averaging over positions, as the released code does over 256 padded positions, would
  silently rescale the KL weight; ``vae_loss(..., rec_normalizer="max_len")`` does so on purpose.
  ``packing``: logits at packed slots (``target_token_nll``).
  """
  token_nll = target_token_nll(logits, targets, packing)  # (B, T)
  return jnp.sum(token_nll * target_mask.astype(jnp.float32), axis=-1)  # (B,)


def vae_loss(
    token_nll: Array,
    target_mask: Array,
    mu: Array,
    logvar: Array,
    beta: float | Array,
    kl_floor: float | Array = 0.0,
    kl_threshold_mode: str = "batch",
    example_weights: Array | None = None,
    rec_normalizer: str = "sum",
    padded_length: int | None = None,
) -> tuple[Array, dict[str, Any]]:
  """The training objective mean_batch(rec) + beta * thresholded KL, and metrics.

  The reconstruction comes in as each target token's -log p, so that a caller with (B, T, V)
  logits passes ``token_cross_entropy(logits, targets)`` and one with packed tokens passes
  ``target_token_nll(...)`` without materialising per-example logits.

  Args:
    token_nll: (B, T) -log p of each target token (any value at padding).
    target_mask: (B, T) 1 at target tokens (EOS included), 0 at padding.
    mu, logvar: (B, L) posterior parameters.
    beta: KL weight (a Python float or a traced scalar from a schedule).
    kl_floor: free-bits floor lambda per dimension; pass 0 at evaluation.
    kl_threshold_mode: "batch" or "example", see `thresholded_kl()`.
    example_weights: optional (B,) 1/0 mask of real/padding examples.
    rec_normalizer: "sum" (default) or "max_len", see `REC_NORMALIZERS`; only `loss` changes.
    padded_length: what "max_len" divides by (the released code: 256); None: the width T.

  Returns:
    (loss, aux): the scalar loss, and float32 scalars `loss`, `rec` (nats/sentence),
    `rec_per_token` (nats/token), `kl` (nats/sentence, no floor), `kl_thresholded`,
    `neg_elbo` (= rec + kl), `elbo` (= -neg_elbo), `num_tokens`, `beta`.
  """
  if rec_normalizer not in REC_NORMALIZERS:
    raise ValueError(f"rec_normalizer={rec_normalizer!r} is not one of {REC_NORMALIZERS}")
  mask = target_mask.astype(jnp.float32)
  rec_per_example = jnp.sum(jnp.where(mask > 0, token_nll, 0.0), axis=-1)  # (B,)
  kl = kl_per_dim(mu, logvar)  # (B, L)
  tokens_per_example = jnp.sum(mask, axis=-1)  # (B,)

  rec_total, num_examples = _batch_sum_and_count(rec_per_example, example_weights)
  num_tokens, _ = _batch_sum_and_count(tokens_per_example, example_weights)
  rec = _safe_divide(rec_total, num_examples)
  kl_mean = _batch_mean(jnp.sum(kl, axis=-1), example_weights)
  kl_thresholded = thresholded_kl(kl, kl_floor, kl_threshold_mode, example_weights)
  beta = jnp.asarray(beta, jnp.float32)
  rec_in_loss = rec
  if rec_normalizer == "max_len":
    rec_in_loss = rec / float(token_nll.shape[-1] if padded_length is None else padded_length)
  loss = rec_in_loss + beta * kl_thresholded

  neg_elbo = rec + kl_mean
  aux = {
      "loss": loss,
      "rec": rec,
      "rec_per_token": _safe_divide(rec_total, num_tokens),
      "kl": kl_mean,
      "kl_thresholded": kl_thresholded,
      "neg_elbo": neg_elbo,
      "elbo": -neg_elbo,
      "num_tokens": num_tokens,
      "beta": beta,
  }
  return loss, aux
