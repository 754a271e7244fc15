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

``beam_search`` keeps the ``beam`` most probable unfinished prefixes of each row (B * beam rows
through the cached decoder; the cache rows follow their beams) and the ``beam`` best finished
hypotheses. A hypothesis is finished when it emits EOS or reaches ``max_len`` tokens; its score
is its log-probability divided by the GNMT length penalty ((5 + n) / 6) ** alpha, n = its
token count (EOS included), so alpha = 0 ranks by log-probability alone and a larger alpha
favours longer sentences. With ``beam`` at least the number of prefixes the search is
exhaustive (tests/test_decoding.py checks it against enumerating every sequence).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from t5vae_jax import model as model_lib

METHODS = ("greedy", "sample")


def filter_logits(
    logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> jax.Array:
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


def init_cache(model: model_lib.T5VAEModel, batch_size: int, max_len: int, latent_dim: int) -> Any:
  """An empty decoding cache (zeros, index 0) for ``batch_size`` rows of ``max_len`` tokens."""
  dmodel = model.clone(decode=True)
  shapes = jax.eval_shape(
      lambda: dmodel.init(
          jax.random.key(0),
          jnp.zeros((batch_size, latent_dim), jnp.float32),
          jnp.zeros((batch_size, max_len), jnp.int32),
          method=model_lib.T5VAEModel.decode_latent,
      )
  )["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@functools.partial(jax.jit, static_argnames=("model", "max_len", "method", "top_k", "top_p"))
def decode(
    model: model_lib.T5VAEModel,
    params,
    z,
    *,
    max_len: int,
    method: str = "greedy",
    temperature=1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    rng=None,
) -> jax.Array:
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
    logits, mutated = dmodel.apply(
        {"params": params, "cache": cache},
        z,
        previous[:, None],
        method=model_lib.T5VAEModel.decode_latent,
        mutable=("cache",),
    )
    nxt = _choose(logits[:, 0], rng, step, method, temperature, top_k, top_p)
    nxt = jnp.where(done, cfg.pad_token_id, nxt)
    tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, step))
    done = done | (nxt == cfg.eos_token_id)
    return step + 1, tokens, nxt, done, mutated["cache"]

  state = (
      jnp.asarray(0, jnp.int32),
      jnp.full((batch, max_len), cfg.pad_token_id, jnp.int32),
      jnp.full((batch,), cfg.decoder_start_token_id, jnp.int32),
      jnp.zeros((batch,), bool),
      cache,
  )
  return jax.lax.while_loop(cond, body, state)[1]


@functools.partial(jax.jit, static_argnames=("model", "max_len", "method", "top_k", "top_p"))
def decode_uncached(
    model: model_lib.T5VAEModel,
    params,
    z,
    *,
    max_len: int,
    method: str = "greedy",
    temperature=1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    rng=None,
) -> jax.Array:
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
    logits = model.apply(
        {"params": params}, z, inputs, method=model_lib.T5VAEModel.decode_latent
    )  # (B, max_len, V)
    current = jax.lax.dynamic_index_in_dim(logits, step, axis=1, keepdims=False)
    nxt = _choose(current, rng, step, method, temperature, top_k, top_p)
    nxt = jnp.where(done, cfg.pad_token_id, nxt)
    tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, step))
    # The decoder input at position step + 1 is the token chosen at step (shift right).
    inputs = jax.lax.dynamic_update_slice(
        inputs, nxt[:, None], (0, jnp.minimum(step + 1, max_len - 1))
    )
    done = done | (nxt == cfg.eos_token_id)
    return step + 1, tokens, inputs, done

  inputs = jnp.full((batch, max_len), cfg.pad_token_id, jnp.int32)
  inputs = inputs.at[:, 0].set(cfg.decoder_start_token_id)
  state = (
      jnp.asarray(0, jnp.int32),
      jnp.full((batch, max_len), cfg.pad_token_id, jnp.int32),
      inputs,
      jnp.zeros((batch,), bool),
  )
  return jax.lax.while_loop(cond, body, state)[1]


def length_penalty(length, alpha: float) -> jax.Array:
  """GNMT's ((5 + n) / 6) ** alpha (Wu et al. 2016) for n tokens, EOS included."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** jnp.asarray(alpha, jnp.float32)


_NEG = -1e9  # the score of an empty beam slot: below any real log-probability, and no NaN


def _gather_beams(tree, beam_index, batch, beam):
  """Reorders the cached keys/values (B * beam, ...) so that row (b, i) holds the cache of
  beam ``beam_index[b, i]`` of row b; the cache's position counters are shared, kept."""

  def gather(path, leaf):
    if getattr(path[-1], "key", None) not in ("cached_key", "cached_value"):
      return leaf
    leaf = leaf.reshape((batch, beam) + leaf.shape[1:])
    index = beam_index.reshape((batch, beam) + (1,) * (leaf.ndim - 2))
    return jnp.take_along_axis(leaf, index, axis=1).reshape((batch * beam,) + leaf.shape[2:])

  return jax.tree_util.tree_map_with_path(gather, tree)


@functools.partial(jax.jit, static_argnames=("model", "max_len", "beam"))
def beam_search(
    model: model_lib.T5VAEModel, params, z, *, max_len: int, beam: int, alpha=0.6
) -> tuple[jax.Array, jax.Array]:
  """Beam search from latents z (B, L) with the key/value cache.

  Returns tokens (B, beam, max_len) int32 (each hypothesis up to and including its EOS, then
  pads), best first, and their scores (B, beam) float32: log p(tokens | z) / length_penalty.
  Slots without a hypothesis (beam larger than the number of sequences) score about -1e9.
  """
  if not isinstance(beam, (int, np.integer)) or beam < 1:
    raise ValueError(f"beam must be a positive integer, got {beam!r}")
  _check("greedy", max_len)
  cfg = model.config
  z = jnp.asarray(z, jnp.float32)
  batch, vocab = z.shape[0], cfg.vocab_size
  rows = batch * beam
  dmodel = model.clone(decode=True)
  cache = init_cache(model, rows, max_len, z.shape[-1])
  z_rows = jnp.repeat(z, beam, axis=0)  # row b * beam + i: beam i of example b
  pad = jnp.asarray(cfg.pad_token_id, jnp.int32)
  max_penalty = length_penalty(max_len, alpha)

  def cond(state):
    step, _, alive_logp, _, finished_scores, _ = state
    # An alive prefix only loses log-probability; with alpha >= 0 its best possible score is
    # its log-probability over the largest penalty (alpha < 0: over the next length's).
    penalty = jnp.maximum(max_penalty, length_penalty(step + 1, alpha))
    best_alive = jnp.max(alive_logp, axis=1) / penalty
    return (step < max_len) & jnp.any(best_alive > finished_scores[:, -1])

  def body(state):
    step, alive_tokens, alive_logp, finished_tokens, finished_scores, cache = state
    previous = jnp.where(
        step == 0,
        cfg.decoder_start_token_id,
        jax.lax.dynamic_index_in_dim(
            alive_tokens.reshape(rows, max_len), jnp.maximum(step - 1, 0), axis=1, keepdims=False
        ),
    )
    previous = jnp.broadcast_to(previous, (rows,))
    logits, mutated = dmodel.apply(
        {"params": params, "cache": cache},
        z_rows,
        previous[:, None],
        method=model_lib.T5VAEModel.decode_latent,
        mutable=("cache",),
    )
    logp = jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1).reshape(batch, beam, vocab)
    total = alive_logp[:, :, None] + logp  # (B, beam, V)
    last = step == max_len - 1
    # Hypotheses finished at this step: ending in EOS, or any token at the last step.
    ends = jnp.zeros((vocab,), bool).at[cfg.eos_token_id].set(True)
    ends = ends | last
    new_scores = jnp.where(ends, total / length_penalty(step + 1, alpha), _NEG)
    new_scores = new_scores.reshape(batch, beam * vocab)
    candidates = jnp.concatenate([finished_scores, new_scores], axis=1)
    top_scores, top_index = jax.lax.top_k(candidates, beam)
    new_beam, new_token = (top_index - beam) // vocab, (top_index - beam) % vocab
    from_new = top_index >= beam
    extended = jnp.take_along_axis(alive_tokens, jnp.maximum(new_beam, 0)[:, :, None], axis=1)
    extended = jax.vmap(
        jax.vmap(lambda seq, tok: jax.lax.dynamic_update_slice(seq, tok[None], (step,)))
    )(extended, new_token.astype(jnp.int32))
    kept = jnp.take_along_axis(
        finished_tokens, jnp.minimum(top_index, beam - 1)[:, :, None], axis=1
    )
    finished_tokens = jnp.where(from_new[:, :, None], extended, kept)
    finished_scores = top_scores
    # The unfinished prefixes: the beam most probable continuations other than EOS.
    grow = jnp.where(ends, _NEG, total).reshape(batch, beam * vocab)
    alive_logp, grow_index = jax.lax.top_k(grow, beam)
    parent, token = grow_index // vocab, (grow_index % vocab).astype(jnp.int32)
    alive_tokens = jnp.take_along_axis(alive_tokens, parent[:, :, None], axis=1)
    alive_tokens = jax.vmap(
        jax.vmap(lambda seq, tok: jax.lax.dynamic_update_slice(seq, tok[None], (step,)))
    )(alive_tokens, token)
    alive_logp = jnp.maximum(alive_logp, _NEG)  # empty slots stay empty, never -inf
    cache = _gather_beams(mutated["cache"], parent, batch, beam)
    return step + 1, alive_tokens, alive_logp, finished_tokens, finished_scores, cache

  # One live beam per row at the start (the others empty), so no hypothesis appears twice.
  alive_logp = jnp.tile(jnp.where(jnp.arange(beam) == 0, 0.0, _NEG)[None], (batch, 1))
  state = (
      jnp.asarray(0, jnp.int32),
      jnp.full((batch, beam, max_len), pad, jnp.int32),
      alive_logp.astype(jnp.float32),
      jnp.full((batch, beam, max_len), pad, jnp.int32),
      jnp.full((batch, beam), 2 * _NEG, jnp.float32),
      cache,
  )
  _, _, _, tokens, scores, _ = jax.lax.while_loop(cond, body, state)
  return tokens, scores


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
