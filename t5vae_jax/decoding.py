"""Decoding sentences from latents: jitted, batched, with the decoder's key/value cache.

``decode(model, params, z, ...)`` runs one ``lax.while_loop`` over at most ``max_len`` steps
(a static bound). Each step feeds only the newest token through the decoder, whose
self-attention keys/values of the earlier tokens live in Flax's ``cache`` collection
(``model.clone(decode=True)``), so a step costs O(t) attention and no recompute of the prefix.
The loop stops as soon as every row has produced EOS. Token choice: greedy (argmax) or
sampling with a temperature, top-k and top-p (nucleus) filtering.

``decode_uncached`` is the reference: the same loop, but each step runs the full decoder over
the whole (B, max_len) buffer of tokens chosen so far and reads the logits at the current
position. It exists to test that the cache changes nothing.

Both return (B, max_len) int32 tokens: the chosen tokens up to and including the first EOS,
then the pad id. Randomness: step t draws with ``jax.random.fold_in(rng, t)``, so the cached
and uncached decoders sample the same tokens from the same logits.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from t5vae_jax import model as model_lib

METHODS = ("greedy", "sample")


def filter_logits(logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """(B, V) logits -> scaled logits with the tokens outside top-k / top-p set to -inf.

  top_k = 0 and top_p = 1.0 disable the filters. Top-p keeps the smallest set of most likely
  tokens whose probability reaches top_p (at least one token).
  """
  logits = logits.astype(jnp.float32) / jnp.maximum(jnp.asarray(temperature, jnp.float32), 1e-6)
  neg_inf = jnp.asarray(-jnp.inf, jnp.float32)
  if top_k and top_k > 0:
    k = min(int(top_k), logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][:, -1:]
    logits = jnp.where(logits < kth, neg_inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
    keep = before < top_p
    keep = keep.at[:, 0].set(True)
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, neg_inf, logits)
  return logits


def _choose(logits, rng, step, method, temperature, top_k, top_p):
  if method == "greedy":
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
  return jax.random.categorical(jax.random.fold_in(rng, step), filtered, axis=-1).astype(jnp.int32)


def _check(method, max_len):
  if method not in METHODS:
    raise ValueError(f"method={method!r} is not one of {METHODS}")
  if not isinstance(max_len, (int, np.integer)) or max_len < 1:
    raise ValueError(f"max_len must be a positive integer, got {max_len!r}")


def init_cache(model: model_lib.T5VAEModel, batch_size: int, max_len: int,
               latent_dim: int) -> Any:
  """An empty decoding cache (zeros, index 0) for ``batch_size`` rows of ``max_len`` tokens."""
  dmodel = model.clone(decode=True)
  shapes = jax.eval_shape(
      lambda: dmodel.init(jax.random.key(0), jnp.zeros((batch_size, latent_dim), jnp.float32),
                          jnp.zeros((batch_size, max_len), jnp.int32),
                          method=model_lib.T5VAEModel.decode_latent))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@functools.partial(jax.jit, static_argnames=("model", "max_len", "method", "top_k", "top_p"))
def decode(model: model_lib.T5VAEModel, params, z, *, max_len: int, method: str = "greedy",
           temperature=1.0, top_k: int = 0, top_p: float = 1.0, rng=None) -> jax.Array:
  """Tokens (B, max_len) int32 decoded from latents z (B, L) with the key/value cache."""
  _check(method, max_len)
  cfg = model.config
  z = jnp.asarray(z, jnp.float32)
  batch = z.shape[0]
  rng = jax.random.key(0) if rng is None else rng
  dmodel = model.clone(decode=True)
  cache = init_cache(model, batch, max_len, z.shape[-1])

  def cond(state):
    step, _, _, done, _ = state
    return (step < max_len) & ~jnp.all(done)

  def body(state):
    step, tokens, previous, done, cache = state
    logits, mutated = dmodel.apply({"params": params, "cache": cache}, z, previous[:, None],
                                   method=model_lib.T5VAEModel.decode_latent, mutable=("cache",))
    nxt = _choose(logits[:, 0], rng, step, method, temperature, top_k, top_p)
    nxt = jnp.where(done, cfg.pad_token_id, nxt)
    tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, step))
    done = done | (nxt == cfg.eos_token_id)
    return step + 1, tokens, nxt, done, mutated["cache"]

  state = (jnp.asarray(0, jnp.int32), jnp.full((batch, max_len), cfg.pad_token_id, jnp.int32),
           jnp.full((batch,), cfg.decoder_start_token_id, jnp.int32),
           jnp.zeros((batch,), bool), cache)
  return jax.lax.while_loop(cond, body, state)[1]


@functools.partial(jax.jit, static_argnames=("model", "max_len", "method", "top_k", "top_p"))
def decode_uncached(model: model_lib.T5VAEModel, params, z, *, max_len: int,
                    method: str = "greedy", temperature=1.0, top_k: int = 0, top_p: float = 1.0,
                    rng=None) -> jax.Array:
  """The reference decoder: a full decoder forward over the whole prefix at every step."""
  _check(method, max_len)
  cfg = model.config
  z = jnp.asarray(z, jnp.float32)
  batch = z.shape[0]
  rng = jax.random.key(0) if rng is None else rng

  def cond(state):
    step, _, _, done = state
    return (step < max_len) & ~jnp.all(done)

  def body(state):
    step, tokens, inputs, done = state
    logits = model.apply({"params": params}, z, inputs,
                         method=model_lib.T5VAEModel.decode_latent)  # (B, max_len, V)
    current = jax.lax.dynamic_index_in_dim(logits, step, axis=1, keepdims=False)
    nxt = _choose(current, rng, step, method, temperature, top_k, top_p)
    nxt = jnp.where(done, cfg.pad_token_id, nxt)
    tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, step))
    # The decoder input at position step + 1 is the token chosen at step (shift right).
    inputs = jax.lax.dynamic_update_slice(inputs, nxt[:, None],
                                          (0, jnp.minimum(step + 1, max_len - 1)))
    done = done | (nxt == cfg.eos_token_id)
    return step + 1, tokens, inputs, done

  inputs = jnp.full((batch, max_len), cfg.pad_token_id, jnp.int32)
  inputs = inputs.at[:, 0].set(cfg.decoder_start_token_id)
  state = (jnp.asarray(0, jnp.int32), jnp.full((batch, max_len), cfg.pad_token_id, jnp.int32),
           inputs, jnp.zeros((batch,), bool))
  return jax.lax.while_loop(cond, body, state)[1]


def strip(tokens: np.ndarray, eos_id: int, pad_id: int) -> list[list[int]]:
  """Each row's ids before its first EOS (pads dropped)."""
  out = []
  for row in np.asarray(tokens):
    ids = []
    for t in row.tolist():
      if t == eos_id:
        break
      if t != pad_id:
        ids.append(t)
    out.append(ids)
  return out
