"""The T5-VAE: T5 with a latent bottleneck between encoder and decoder (Park & Lee 2021).

Encoder states are pooled (max or mean, padding masked) into h; ``mu = h W_mu`` and
``logvar = h W_logvar``; ``z = mu + exp(logvar / 2) * eps``. A memory projection maps z to one
key/value slot per decoder layer and head, **per example** (the released code's reshape mixes
examples across the batch; here the batch axis is never touched):

  * ``latent_injection="cross_attention"`` (the paper, eq. 5): the slot is the sole key and value
    of each decoder layer's encoder-decoder attention; the decoder never sees encoder states.
  * ``latent_injection="self_prefix"`` (the released code): the slot is prepended to each
    decoder layer's self-attention at position 0; cross-attention is skipped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from t5vae_jax import t5 as t5_lib
from t5vae_jax.choices import INJECTIONS, POOL_LAYERS, POOLINGS  # noqa: F401 (re-exported)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  latent_dim: int = 32
  pooling: str = "max"
  pool_layers: str = "last"
  pool_padding: bool = False  # ablation only: the released code pools over pad positions
  # Ablation only: the released code pools the encoder output *after* T5's final dropout. A max
  # over dropped-out states is biased (a feature negative everywhere pools to the 0 of a dropped
  # position in training, to its true max in evaluation), so eval-time z is off-distribution.
  pool_dropout: bool = False
  latent_injection: str = "cross_attention"

  def __post_init__(self):
    for name, allowed in (
        ("pooling", POOLINGS),
        ("pool_layers", POOL_LAYERS),
        ("latent_injection", INJECTIONS),
    ):
      if getattr(self, name) not in allowed:
        raise ValueError(f"model.{name}={getattr(self, name)!r} is not one of {allowed}")
    if not isinstance(self.latent_dim, int) or self.latent_dim < 1:
      raise ValueError(f"model.latent_dim={self.latent_dim!r} must be a positive integer")


def pool_states(states: jax.Array, mask: jax.Array, pooling: str, include_padding: bool):
  """(B, [layers,] T, D) states, (B, T) mask -> (B, D); pads never win a max or count in a mean."""
  if states.ndim == 3:
    states = states[:, None]
  states = states.astype(jnp.float32)
  m = jnp.ones_like(mask) if include_padding else mask
  m = m[:, None, :, None].astype(bool)  # (B, 1, T, 1)
  if pooling == "max":
    return jnp.max(jnp.where(m, states, -jnp.inf), axis=(1, 2))
  count = jnp.sum(m, axis=(2, 3)) * states.shape[1]  # (B, 1)
  return jnp.sum(jnp.where(m, states, 0.0), axis=(1, 2)) / jnp.maximum(count, 1)


class T5VAEModel(t5_lib.T5):
  """T5 plus the bottleneck (``mu``, ``logvar``) and the memory projection (``memory_proj``).

  Parameters ``shared``, ``encoder``, ``decoder`` (and ``lm_head`` when untied) are exactly
  T5's, so a pretrained checkpoint loads into them unchanged.
  """

  vae: VAEConfig = VAEConfig()

  def setup(self):
    super().setup()
    cfg, L = self.config, self.vae.latent_dim
    init = nn.initializers.normal(cfg.d_model**-0.5)
    self.mu = nn.Dense(L, use_bias=False, kernel_init=init, param_dtype=jnp.float32)
    self.logvar = nn.Dense(L, use_bias=False, kernel_init=init, param_dtype=jnp.float32)
    self.memory_proj = nn.Dense(
        cfg.num_decoder_layers * cfg.num_heads * cfg.d_kv,
        use_bias=False,
        kernel_init=nn.initializers.normal(L**-0.5),
        param_dtype=jnp.float32,
        dtype=self.dtype,
    )

  def posterior(self, input_ids, attention_mask, deterministic=True, packing=None):
    """(B, T) -> mu, logvar: (B, L) float32. ``packing`` (of ``attention_mask``) runs the
    encoder's per-token layers on the real tokens only."""
    if self.vae.pool_padding:
      packing = None  # this ablation pools the pad positions' states, which packing skips
    all_layers = self.vae.pool_layers != "last"
    ids = input_ids if packing is None else packing.pack(input_ids)
    states = self.encoder(
        self.shared(ids),
        attention_mask=attention_mask,
        deterministic=deterministic,
        return_all_hidden=all_layers,
        final_dropout=self.vae.pool_dropout,
        packing=packing,
    )
    if self.vae.pool_layers == "all":
      states = self._normalised_layers(states, deterministic)
    if packing is not None:  # back to (B, [layers,] T, D) for pooling; pads are masked there
      states = (
          jnp.moveaxis(packing.unpack(jnp.moveaxis(states, 1, 2)), 2, 1)
          if all_layers
          else packing.unpack(states)
      )
    pooled = pool_states(states, attention_mask, self.vae.pooling, self.vae.pool_padding)
    return self.mu(pooled), self.logvar(pooled)

  def _normalised_layers(self, states, deterministic):
    """(N, layers, T, D) with raw intermediate layers -> every layer through the encoder's
    final norm (and final dropout with ``pool_dropout``), as the last one already is."""
    inner = self.encoder.final_layer_norm(states[:, :-1])
    if self.vae.pool_dropout:
      inner = self.encoder.dropout(inner, deterministic=deterministic)
    return jnp.concatenate([inner.astype(states.dtype), states[:, -1:]], axis=1)

  def latent_memory(self, z):
    """(B, L) -> (B, decoder layers, heads, 1, d_kv): one key/value slot per layer and head."""
    cfg = self.config
    memory = self.memory_proj(z.astype(self.dtype))
    return memory.reshape(z.shape[0], cfg.num_decoder_layers, cfg.num_heads, 1, cfg.d_kv)

  def decode_latent(self, z, decoder_input_ids, deterministic=True, packing=None):
    """Decoder logits (B, T, vocab) given latents z (B, L); (S, C, vocab) with ``packing``."""
    memory = self.latent_memory(z)
    if self.vae.latent_injection == "cross_attention":
      return self.decode_logits(
          decoder_input_ids, memory_kv=memory, deterministic=deterministic, packing=packing
      )
    return self.decode_logits(
        decoder_input_ids, prefix_kv=memory, deterministic=deterministic, packing=packing
    )

  def __call__(
      self,
      input_ids,
      attention_mask,
      decoder_input_ids,
      deterministic=True,
      sample_latent=True,
      encoder_input_ids=None,
      encoder_attention_mask=None,
      packing=None,
      encoder_packing=None,
  ):
    """Autoencodes; returns dict(logits, mu, logvar, z).

    ``encoder_input_ids``/``encoder_attention_mask`` (a noised copy of the input) replace what
    the encoder sees when given; the decoder always reconstructs the clean targets.
    ``sample_latent`` draws z with the 'latent' rng; otherwise z = mu.
    ``packing`` (of ``attention_mask``) and ``encoder_packing`` (of the encoder's mask) run the
    decoder's and the encoder's per-token layers on real tokens only (``packing.py``); the
    logits are then (S, C, vocab) at the decoder's packed slots.
    """
    enc_ids = input_ids if encoder_input_ids is None else encoder_input_ids
    enc_mask = attention_mask if encoder_attention_mask is None else encoder_attention_mask
    mu, logvar = self.posterior(enc_ids, enc_mask, deterministic, packing=encoder_packing)
    if sample_latent:
      eps = jax.random.normal(self.make_rng("latent"), mu.shape, mu.dtype)
      z = mu + jnp.exp(0.5 * logvar) * eps
    else:
      z = mu
    logits = self.decode_latent(z, decoder_input_ids, deterministic, packing=packing)
    slots = decoder_input_ids.shape if packing is None else packing.gather_index.shape
    chex.assert_shape(logits, slots + (self.config.vocab_size,))
    return dict(logits=logits, mu=mu, logvar=logvar, z=z)


def init_params(model: T5VAEModel, rng: jax.Array, seq_len: int = 8) -> Any:
  """Random params for ``model`` (float32)."""
  ids = jnp.ones((1, seq_len), jnp.int32)
  variables = model.init({"params": rng, "latent": rng, "dropout": rng}, ids, ids, ids)
  return variables["params"]


def merge_pretrained(params: dict, pretrained: dict) -> dict:
  """Replaces the T5 part of the VAE's params with a checkpoint's; bottleneck stays random."""
  params = dict(params)
  for key, value in pretrained.items():
    if key not in params:
      raise ValueError(f"pretrained parameter group {key!r} has no place in the VAE")
    params[key] = value
  return params
