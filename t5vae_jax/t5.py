"""A Flax T5 (v1.0 and v1.1) whose parameters map one to one onto Hugging Face's.

transformers 5 has no Flax models, so this is our own network. Each parameter path is
Hugging Face's PyTorch state-dict key with ``.`` -> ``/``, list indices written ``block_0``
(Flax's naming for module lists) and ``weight`` -> ``kernel`` (transposed) for linear layers
or ``embedding`` for embeddings; see :func:`hf_key_to_path`.

The decoder supports three ways of conditioning, so the VAE in ``model.py`` can reuse it:
  * ``encoder_hidden_states``: ordinary T5 cross-attention (used for Hugging Face parity);
  * ``memory_kv``: a per-layer, per-example key/value that replaces the cross-attention
    memory (the paper's eq. 5; W_k/W_v of that attention are bypassed);
  * ``prefix_kv``: a per-layer, per-example key/value slot prepended to self-attention at
    absolute position 0, tokens at 1..T (what the released PyTorch code does).
Decoding with a key/value cache uses Flax's ``cache`` collection (``decode=True``).
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
_MASK_VALUE = -1e9


@dataclasses.dataclass(frozen=True)
class T5Config:
  """The subset of Hugging Face's T5Config that defines the network."""

  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 6
  num_decoder_layers: Optional[int] = None
  num_heads: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "relu"  # "relu" (v1.0), "gated-gelu" (v1.1)
  # v1.0 ties the LM head to the shared embedding and scales the decoder output by
  # d_model**-0.5; v1.1 has its own LM head and no scaling.
  tie_word_embeddings: bool = True
  scale_decoder_outputs: bool = True
  pad_token_id: int = 0
  eos_token_id: int = 1
  decoder_start_token_id: int = 0

  def __post_init__(self):
    if self.num_decoder_layers is None:
      object.__setattr__(self, "num_decoder_layers", self.num_layers)
    act = self.feed_forward_proj.split("-")
    if len(act) > 2 or (len(act) == 2 and act[0] != "gated") or act[-1] not in _ACTIVATIONS:
      raise ValueError(
          f"feed_forward_proj={self.feed_forward_proj!r} is not supported; use 'relu', 'gelu', "
          "'gated-gelu' or 'gated-silu'"
      )

  @property
  def is_gated(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  @property
  def activation(self) -> str:
    act = self.feed_forward_proj.split("-")[-1]
    # Hugging Face maps "gated-gelu" to the tanh approximation ("gelu_new").
    return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any]) -> "T5Config":
    """Reads a Hugging Face ``config.json`` dict (any transformers version)."""
    tie = d.get("tie_word_embeddings", True) is not False
    scale = d.get("scale_decoder_outputs", tie)
    kw = {
        f.name: d[f.name]
        for f in dataclasses.fields(cls)
        if f.name in d and f.name not in ("tie_word_embeddings", "scale_decoder_outputs")
    }
    if kw.get("decoder_start_token_id") is None:
      kw["decoder_start_token_id"] = d.get("pad_token_id", 0) or 0
    for key in ("pad_token_id", "eos_token_id"):
      if isinstance(kw.get(key), list):
        kw[key] = kw[key][0]
      if kw.get(key) is None:
        kw.pop(key, None)
    return cls(tie_word_embeddings=tie, scale_decoder_outputs=bool(scale), **kw)

  def to_hf_dict(self) -> dict[str, Any]:
    """A ``config.json`` that Hugging Face's T5ForConditionalGeneration loads."""
    d = dataclasses.asdict(self)
    d.update(
        model_type="t5",
        architectures=["T5ForConditionalGeneration"],
        is_encoder_decoder=True,
        dense_act_fn=self.activation,
        is_gated_act=self.is_gated,
    )
    return d

  @classmethod
  def from_json_file(cls, path) -> "T5Config":
    from etils import epath

    return cls.from_hf_dict(json.loads(epath.Path(path).read_text()))


def _gelu_tanh(x):
  return jax.nn.gelu(x, approximate=True)


_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": _gelu_tanh,
    "silu": jax.nn.silu,
}


def relative_position_bucket(
    relative_position: Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
  """T5's bucketing of (key position - query position): exact when near, log-spaced when far."""
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets = buckets + (relative_position > 0).astype(relative_position.dtype) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  # Guard log(0); those positions take the exact branch anyway.
  safe = jnp.maximum(distance, 1).astype(jnp.float32)
  large = max_exact + (
      jnp.log(safe / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(relative_position.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(is_small, distance, large)


# ----------------------------------------------------------------------------- fast pieces
# Two changes to stock Flax layers that make the train step about twice as fast on CPU (see
# bench/RESULTS.md): a matmul whose weight gradient multiplies an explicitly transposed operand
# (XLA:CPU is slow at dots that contract over the leading axis of both operands, which is what
# x^T g is), and dropout bits from a cheap counter hash instead of a threefry draw per element.


@jax.custom_vjp
def _matmul_cpu(x: Array, w: Array) -> Array:
  return jnp.dot(x, w)


def _matmul_cpu_fwd(x, w):
  return jnp.dot(x, w), (x, w)


def _matmul_cpu_bwd(residuals, g):
  x, w = residuals
  dx = jnp.dot(g, w.T)
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  # dW = x^T g. Transpose the smaller operand into a real (row-major) array first; the barrier
  # stops XLA from folding the transpose back into the dot.
  if x2.shape[1] <= g2.shape[1]:
    dw = jnp.dot(jax.lax.optimization_barrier(x2.T), g2)
  else:
    dw = jnp.dot(jax.lax.optimization_barrier(g2.T), x2).T
  return dx, dw.astype(w.dtype)


_matmul_cpu.defvjp(_matmul_cpu_fwd, _matmul_cpu_bwd)


# The platform of the program being traced when it is not the host's: aot.py compiles for TPU
# devices on a CPU host, where jax.default_backend() is still "cpu". None: the host's.
target_platform: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "t5_target_platform", default=None
)


def matmul(x: Array, w: Array) -> Array:
  """x (..., K) @ w (K, N); same value and gradients as ``jnp.dot``, faster backward on CPU."""
  if (target_platform.get() or jax.default_backend()) == "cpu":
    return _matmul_cpu(x, w)
  return jnp.dot(x, w)


class Dense(nn.Module):
  """A bias-free linear layer with ``nn.Dense``'s parameter layout (``kernel``: (in, out))."""

  features: int
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    return matmul(x.astype(self.dtype), kernel.astype(self.dtype))


def _lowbias32(x: Array) -> Array:
  """A 32-bit integer hash with good avalanche (Wellons' lowbias32)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def hash_bits(key: Array, shape: tuple[int, ...]) -> Array:
  """uint32 bits that are a function of (key, position) only, like ``jax.random.bits``.

  Two words from one threefry draw seed a double lowbias32 hash of the flat position. Costs
  a few integer ops per element instead of a threefry block, which dominates a CPU train step.
  """
  seed = jax.random.bits(key, (2,), jnp.uint32)
  position = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
  return _lowbias32(_lowbias32(position + seed[0]) ^ seed[1])


class Dropout(nn.Module):
  """Inverted dropout drawing from the ``dropout`` rng stream, with ``hash_bits``."""

  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    threshold = jnp.uint32(min(int(round(self.rate * 2**32)), 2**32 - 1))
    keep = hash_bits(self.make_rng("dropout"), x.shape) >= threshold
    return jnp.where(
        keep, x * jnp.asarray(1.0 / (1.0 - self.rate), x.dtype), jnp.zeros((), x.dtype)
    )


def _dense(features: int, name: str, std: float, dtype) -> Dense:
  return Dense(features, kernel_init=nn.initializers.normal(std), dtype=dtype, name=name)


class LayerNorm(nn.Module):
  """T5's RMS norm: no mean subtraction, no bias; statistics in float32."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    weight = self.param("weight", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    x32 = x32 * jax.lax.rsqrt(variance + self.epsilon)
    return (weight * x32).astype(self.dtype)


class DenseReluDense(nn.Module):
  """The feed-forward block: act(x W_i) W_o, or act(x W_i0) * (x W_i1) W_o when gated."""

  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool):
    cfg = self.config
    act = _ACTIVATIONS[cfg.activation]
    std_in, std_out = cfg.d_model**-0.5, cfg.d_ff**-0.5
    if cfg.is_gated:
      h = act(_dense(cfg.d_ff, "wi_0", std_in, self.dtype)(x)) * _dense(
          cfg.d_ff, "wi_1", std_in, self.dtype
      )(x)
    else:
      h = act(_dense(cfg.d_ff, "wi", std_in, self.dtype)(x))
    h = Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    return _dense(cfg.d_model, "wo", std_out, self.dtype)(h)


class KVCache(nn.Module):
  """Self-attention keys/values of the tokens decoded so far, (B, S, H, d_kv) each."""

  @nn.compact
  def __call__(self, k, v, cache_index):
    """Writes this step's k/v at ``cache_index``; returns the whole cache.

    ``cache_index`` None is the init call: it shapes the cache to the full length.
    """
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    if cache_index is None:
      return k, v
    idx = (0, cache_index, 0, 0)
    cached_k.value = jax.lax.dynamic_update_slice(
        cached_k.value, k.astype(cached_k.value.dtype), idx
    )
    cached_v.value = jax.lax.dynamic_update_slice(
        cached_v.value, v.astype(cached_v.value.dtype), idx
    )
    return cached_k.value, cached_v.value


class Attention(nn.Module):
  """Multi-head attention without the 1/sqrt(d) scaling (T5 folds it into the init).

  Keys/values come from ``kv_input`` (or x itself), optionally preceded by ``prefix_kv``,
  or are replaced entirely by ``memory_kv``. ``bias`` is the additive position bias and mask,
  shaped (B or 1, H, Tq, Tk) over the final key axis.
  """

  config: T5Config
  has_relative_attention_bias: bool = False
  bidirectional: bool = True
  decode: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.config
    inner = cfg.num_heads * cfg.d_kv
    self.q = _dense(inner, "q", (cfg.d_model * cfg.d_kv) ** -0.5, self.dtype)
    self.k = _dense(inner, "k", cfg.d_model**-0.5, self.dtype)
    self.v = _dense(inner, "v", cfg.d_model**-0.5, self.dtype)
    self.o = _dense(cfg.d_model, "o", inner**-0.5, self.dtype)
    if self.has_relative_attention_bias:
      self.relative_attention_bias = nn.Embed(
          cfg.relative_attention_num_buckets,
          cfg.num_heads,
          param_dtype=jnp.float32,
          embedding_init=nn.initializers.normal(cfg.d_model**-0.5),
      )
    self.dropout = Dropout(cfg.dropout_rate)
    if self.decode:
      self.kv_cache = KVCache()

  def compute_bias(self, query_positions: Array, key_positions: Array) -> Array:
    """(Tq,), (Tk,) absolute positions -> (1, H, Tq, Tk) float32 learned bias."""
    cfg = self.config
    rel = key_positions[None, :] - query_positions[:, None]
    buckets = relative_position_bucket(
        rel,
        self.bidirectional,
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance,
    )
    values = self.relative_attention_bias(buckets)  # (Tq, Tk, H)
    return jnp.transpose(values, (2, 0, 1))[None].astype(jnp.float32)

  def _heads(self, x):
    return x.reshape(x.shape[:-1] + (self.config.num_heads, self.config.d_kv))

  def __call__(
      self,
      x,
      bias,
      *,
      kv_input=None,
      prefix_kv=None,
      memory_kv=None,
      cache_index=None,
      deterministic=True,
      packing=None,
  ):
    """x: (B, Tq, D), or (shards, slots, D) with ``packing`` (see ``packing.py``: projections
    run on the real tokens only, the attention itself on the (B, T) layout).
    prefix_kv / memory_kv: (B, H, S, d_kv). Returns x's shape."""
    cfg = self.config
    if memory_kv is not None and memory_kv.shape[2] == 1:
      return self._one_slot_memory(x, memory_kv, deterministic, packing)
    if packing is not None and (kv_input is not None or self.decode):
      raise ValueError("packed tokens support self-attention and latent memory only")
    unpack = (lambda t: t) if packing is None else packing.unpack
    q = self._heads(unpack(self.q(x)))  # (B, Tq, H, dk)
    if memory_kv is not None:
      k = v = jnp.swapaxes(memory_kv, 1, 2).astype(self.dtype)  # (B, S, H, dk)
    else:
      src = x if kv_input is None else kv_input
      k, v = self._heads(unpack(self.k(src))), self._heads(unpack(self.v(src)))
      if self.decode:
        k, v = self.kv_cache(k, v, cache_index)
      if prefix_kv is not None:
        prefix = jnp.swapaxes(prefix_kv, 1, 2).astype(self.dtype)
        k = jnp.concatenate([prefix, k], axis=1)
        v = jnp.concatenate([prefix, v], axis=1)
    # (B, H, T, dk) operands: XLA:CPU runs batched dots faster with the batch axes leading.
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    if bias is not None:
      scores = scores + bias
    weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    weights = self.dropout(weights, deterministic=deterministic)
    out = jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", weights, v), 1, 2)
    out = out.reshape(out.shape[:2] + (cfg.num_heads * cfg.d_kv,))
    return self.o(out if packing is None else packing.pack(out))

  def _one_slot_memory(self, x, memory_kv, deterministic, packing=None):
    """Attention over a single key: the softmax weight is exactly 1 at every position, so the
    output is W_o(v) per example, the same for every query position (no query projection, no
    scores). Attention dropout still applies to that weight, as in the general path."""
    cfg = self.config
    if self.is_initializing():
      self.q(x)  # create W_q so the params keep Hugging Face's layout (it gets no gradient)
    batch = memory_kv.shape[0]
    inner = cfg.num_heads * cfg.d_kv
    v = memory_kv[:, :, 0, :].astype(self.dtype)  # (B, H, dk)
    # Which example each query position belongs to: (B, T) rows, or packed (S, C) slots.
    rows = None if packing is None else packing.example_index()
    if deterministic or cfg.dropout_rate == 0.0:
      out = self.o(v.reshape(batch, 1, inner))  # (B, 1, D)
      if rows is None:
        return jnp.broadcast_to(out, x.shape[:2] + out.shape[-1:])
      return out[rows, 0]  # (S, C, D)
    if rows is None:
      batch, length = x.shape[:2]
      weights = self.dropout(
          jnp.ones((batch, cfg.num_heads, length, 1), self.dtype), deterministic=False
      )
      per_head = weights[..., 0].transpose(0, 2, 1)[..., None] * v[:, None]  # (B, T, H, dk)
    else:
      weights = self.dropout(
          jnp.ones(x.shape[:2] + (cfg.num_heads,), self.dtype), deterministic=False
      )  # (S, C, H)
      per_head = weights[..., None] * v[rows]  # (S, C, H, dk)
    return self.o(per_head.reshape(x.shape[:2] + (inner,)))


class LayerSelfAttention(nn.Module):
  config: T5Config
  has_relative_attention_bias: bool
  bidirectional: bool
  decode: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    self.SelfAttention = Attention(
        self.config, self.has_relative_attention_bias, self.bidirectional, self.decode, self.dtype
    )
    self.layer_norm = LayerNorm(self.config.layer_norm_epsilon, self.dtype)
    self.dropout = Dropout(self.config.dropout_rate)

  def __call__(
      self, x, bias, *, prefix_kv=None, cache_index=None, deterministic=True, packing=None
  ):
    h = self.SelfAttention(
        self.layer_norm(x),
        bias,
        prefix_kv=prefix_kv,
        cache_index=cache_index,
        deterministic=deterministic,
        packing=packing,
    )
    return x + self.dropout(h, deterministic=deterministic)


class LayerCrossAttention(nn.Module):
  config: T5Config
  dtype: Any = jnp.float32

  def setup(self):
    self.EncDecAttention = Attention(self.config, False, True, False, self.dtype)
    self.layer_norm = LayerNorm(self.config.layer_norm_epsilon, self.dtype)
    self.dropout = Dropout(self.config.dropout_rate)

  def __call__(self, x, bias, *, kv_input=None, memory_kv=None, deterministic=True, packing=None):
    h = self.EncDecAttention(
        self.layer_norm(x),
        bias,
        kv_input=kv_input,
        memory_kv=memory_kv,
        deterministic=deterministic,
        packing=packing,
    )
    return x + self.dropout(h, deterministic=deterministic)


class LayerFF(nn.Module):
  config: T5Config
  dtype: Any = jnp.float32

  def setup(self):
    self.DenseReluDense = DenseReluDense(self.config, self.dtype)
    self.layer_norm = LayerNorm(self.config.layer_norm_epsilon, self.dtype)
    self.dropout = Dropout(self.config.dropout_rate)

  def __call__(self, x, deterministic=True):
    h = self.DenseReluDense(self.layer_norm(x), deterministic)
    return x + self.dropout(h, deterministic=deterministic)


class Block(nn.Module):
  """One encoder or decoder layer, with Hugging Face's sub-layer numbering."""

  config: T5Config
  is_decoder: bool
  has_relative_attention_bias: bool
  decode: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.config
    layers = [
        LayerSelfAttention(
            cfg, self.has_relative_attention_bias, not self.is_decoder, self.decode, self.dtype
        )
    ]
    if self.is_decoder:
      layers.append(LayerCrossAttention(cfg, self.dtype))
    layers.append(LayerFF(cfg, self.dtype))
    self.layer = layers

  def __call__(
      self,
      x,
      self_bias,
      deterministic=True,
      *,
      cross_bias=None,
      encoder_hidden_states=None,
      memory_kv=None,
      prefix_kv=None,
      cache_index=None,
      packing=None,
  ):
    """``deterministic`` is positional: ``nn.remat`` keeps it static (``REMAT_POLICIES``)."""
    x = self.layer[0](
        x,
        self_bias,
        prefix_kv=prefix_kv,
        cache_index=cache_index,
        deterministic=deterministic,
        packing=packing,
    )
    if self.is_decoder and (encoder_hidden_states is not None or memory_kv is not None):
      x = self.layer[1](
          x,
          cross_bias,
          kv_input=encoder_hidden_states,
          memory_kv=memory_kv,
          deterministic=deterministic,
          packing=packing,
      )
    return self.layer[-1](x, deterministic)


class DecodePosition(nn.Module):
  """Where incremental decoding stands: the cache index and the number of cache slots.

  The init call (full length) only shapes the caches and returns (None, length); each later
  call returns the index its tokens are written at, and advances it.
  """

  @nn.compact
  def __call__(self, length: int):
    is_init = not self.has_variable("cache", "cache_index")
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    slots = self.variable("cache", "cache_slots", jnp.zeros, (length,), jnp.int8)
    if is_init:
      return None, length
    current = index.value
    index.value = current + length
    return current, slots.value.shape[0]


# Activation rematerialisation of each block in training (``model.remat``): "none" keeps every
# activation for the backward pass; "full" keeps only each block's input and recomputes the rest;
# "dots" keeps the matmul outputs (no batch dimensions) and recomputes the cheap elementwise ops.
REMAT_POLICIES = {
    "none": None,
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Stack(nn.Module):
  """The encoder or decoder stack; the position bias is computed by block 0 and shared."""

  config: T5Config
  is_decoder: bool
  decode: bool = False
  dtype: Any = jnp.float32
  remat: str = "none"  # a key of REMAT_POLICIES

  def setup(self):
    cfg = self.config
    n = cfg.num_decoder_layers if self.is_decoder else cfg.num_layers
    block = Block
    if self.remat != "none" and not self.decode:  # parameter paths stay block_<i>/...
      block = nn.remat(Block, static_argnums=(3,), policy=REMAT_POLICIES[self.remat])
    self.block = [block(cfg, self.is_decoder, i == 0, self.decode, self.dtype) for i in range(n)]
    self.final_layer_norm = LayerNorm(cfg.layer_norm_epsilon, self.dtype)
    self.dropout = Dropout(cfg.dropout_rate)
    if self.decode and self.is_decoder:
      self.decode_position = DecodePosition()

  def __call__(
      self,
      embeddings,
      *,
      attention_mask=None,
      encoder_hidden_states=None,
      encoder_attention_mask=None,
      memory_kv=None,
      prefix_kv=None,
      deterministic=True,
      return_all_hidden=False,
      final_dropout=True,
      packing=None,
  ):
    """embeddings: (B, T, D). memory_kv / prefix_kv: (B, layers, H, S, d_kv) or None.

    Returns (B, T, D) final states, or with ``return_all_hidden`` (B, layers, T, D): every
    block's output, the last one after the final norm (Hugging Face's ``hidden_states[1:]``).
    With ``packing`` (``packing.py``), embeddings and the result are packed: (S, C, D), or
    (S, layers, C, D) with ``return_all_hidden``; attention masks padding by ``attention_mask``
    (encoder) and causality as usual.
    """
    length = embeddings.shape[1] if packing is None else packing.length
    rel_bias = self.block[0].layer[0].SelfAttention.compute_bias
    cache_index = None
    if not self.is_decoder:
      positions = jnp.arange(length)
      bias = rel_bias(positions, positions)
      if attention_mask is not None:
        bias = bias + _key_mask_bias(attention_mask)
    else:
      offset = 0 if prefix_kv is None else 1  # the prefix slot sits at position 0
      if self.decode:
        # The init call (full length) only shapes the caches; each later call writes its
        # tokens at cache_index. Keys are then the whole cache: slots past the current step
        # hold future positions and are masked by causality below.
        cache_index, num_slots = self.decode_position(length)
        if cache_index is None:
          query_positions = key_positions = offset + jnp.arange(length)
        else:
          query_positions = offset + cache_index + jnp.arange(length)
          key_positions = offset + jnp.arange(num_slots)
      else:
        query_positions = key_positions = offset + jnp.arange(length)
      if prefix_kv is not None:
        key_positions = jnp.concatenate([jnp.zeros((1,), key_positions.dtype), key_positions])
      bias = rel_bias(query_positions, key_positions)
      causal = key_positions[None, :] <= query_positions[:, None]
      bias = bias + jnp.where(causal, 0.0, _MASK_VALUE)[None, None]
    cross_bias = None
    if encoder_hidden_states is not None and encoder_attention_mask is not None:
      cross_bias = _key_mask_bias(encoder_attention_mask)

    x = self.dropout(embeddings, deterministic=deterministic)
    hidden = []
    for i, block in enumerate(self.block):
      x = block(
          x,
          bias,
          deterministic,
          cross_bias=cross_bias,
          encoder_hidden_states=encoder_hidden_states,
          memory_kv=None if memory_kv is None else memory_kv[:, i],
          prefix_kv=None if prefix_kv is None else prefix_kv[:, i],
          cache_index=cache_index,
          packing=packing,
      )
      hidden.append(x)
    x = self.final_layer_norm(x)
    if final_dropout:
      x = self.dropout(x, deterministic=deterministic)
    if return_all_hidden:
      return jnp.stack(hidden[:-1] + [x], axis=1)
    return x


def _key_mask_bias(mask: Array) -> Array:
  """(B, Tk) {0,1} -> (B, 1, 1, Tk) additive bias."""
  return jnp.where(mask[:, None, None, :] > 0, 0.0, _MASK_VALUE).astype(jnp.float32)


class T5(nn.Module):
  """T5ForConditionalGeneration. Subclassed by the VAE in ``model.py``."""

  config: T5Config
  dtype: Any = jnp.float32
  decode: bool = False
  remat: str = "none"  # activation rematerialisation per block: a key of REMAT_POLICIES

  def setup(self):
    cfg = self.config
    self.shared = nn.Embed(
        cfg.vocab_size,
        cfg.d_model,
        param_dtype=jnp.float32,
        dtype=self.dtype,
        embedding_init=nn.initializers.normal(1.0),
    )
    self.encoder = Stack(cfg, is_decoder=False, dtype=self.dtype, remat=self.remat)
    self.decoder = Stack(
        cfg, is_decoder=True, decode=self.decode, dtype=self.dtype, remat=self.remat
    )
    if not cfg.tie_word_embeddings:
      self.lm_head = _dense(cfg.vocab_size, "lm_head", 1.0, self.dtype)

  def encode(self, input_ids, attention_mask, deterministic=True):
    """(B, T) ids and mask -> (B, T, D) final encoder states."""
    return self.encoder(
        self.shared(input_ids), attention_mask=attention_mask, deterministic=deterministic
    )

  def decode_logits(
      self,
      decoder_input_ids,
      *,
      encoder_hidden_states=None,
      encoder_attention_mask=None,
      memory_kv=None,
      prefix_kv=None,
      deterministic=True,
      packing=None,
  ):
    """(B, T) decoder input ids -> (B, T, vocab) float32 logits; (S, C, vocab) at the packed
    slots with ``packing`` (the output layer then runs on real tokens only)."""
    ids = decoder_input_ids if packing is None else packing.pack(decoder_input_ids)
    h = self.decoder(
        self.shared(ids),
        encoder_hidden_states=encoder_hidden_states,
        encoder_attention_mask=encoder_attention_mask,
        memory_kv=memory_kv,
        prefix_kv=prefix_kv,
        deterministic=deterministic,
        packing=packing,
    )
    if self.config.scale_decoder_outputs:
      h = h * (self.config.d_model**-0.5)
    if self.config.tie_word_embeddings:
      logits = matmul(h, self.shared.embedding.astype(self.dtype).T)
    else:
      logits = self.lm_head(h)
    return logits.astype(jnp.float32)

  def __call__(self, input_ids, attention_mask, decoder_input_ids, deterministic=True):
    enc = self.encode(input_ids, attention_mask, deterministic)
    return self.decode_logits(
        decoder_input_ids,
        encoder_hidden_states=enc,
        encoder_attention_mask=attention_mask,
        deterministic=deterministic,
    )


def shift_right(targets: Array, start_id: int) -> Array:
  """Decoder inputs: targets shifted right by one with the start (pad) id in front."""
  start = jnp.full(targets.shape[:-1] + (1,), start_id, targets.dtype)
  return jnp.concatenate([start, targets[..., :-1]], axis=-1)


# --------------------------------------------------------------------------------------------
# Parameter names: Hugging Face state-dict keys <-> Flax paths.
# --------------------------------------------------------------------------------------------
_LINEAR_NAMES = {"q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1", "lm_head"}
_EMBED_NAMES = {"shared", "relative_attention_bias"}
# Keys Hugging Face stores as copies of ``shared.weight``.
_TIED_COPIES = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}


def hf_key_to_path(key: str) -> tuple[tuple[str, ...], bool]:
  """'encoder.block.0.layer.1.DenseReluDense.wi.weight' ->
  (('encoder','block_0','layer_1','DenseReluDense','wi','kernel'), transpose=True)."""
  parts = key.split(".")
  out = []
  i = 0
  while i < len(parts):
    if parts[i] in ("block", "layer") and i + 1 < len(parts) and parts[i + 1].isdigit():
      out.append(f"{parts[i]}_{parts[i + 1]}")
      i += 2
    else:
      out.append(parts[i])
      i += 1
  if out[-1] != "weight":
    raise ValueError(f"unexpected T5 parameter {key!r}")
  owner = out[-2]
  if owner in _LINEAR_NAMES:
    return tuple(out[:-1]) + ("kernel",), True
  if owner in _EMBED_NAMES:
    return tuple(out[:-1]) + ("embedding",), False
  return tuple(out), False  # layer norms keep "weight"


def path_to_hf_key(path: tuple[str, ...]) -> tuple[str, bool]:
  """Inverse of :func:`hf_key_to_path`."""
  parts = []
  for p in path[:-1]:
    head, _, idx = p.rpartition("_")
    if head in ("block", "layer") and idx.isdigit():
      parts += [head, idx]
    else:
      parts.append(p)
  leaf = path[-1]
  return ".".join(parts + ["weight"]), leaf == "kernel"


def params_from_hf_state_dict(state_dict: dict[str, np.ndarray], config: T5Config) -> dict:
  """Builds our nested float32 params from a flat Hugging Face state dict (numpy arrays)."""
  params: dict = {}
  for key, value in state_dict.items():
    if key in _TIED_COPIES:
      continue
    if key == "lm_head.weight" and config.tie_word_embeddings:
      continue
    path, transpose = hf_key_to_path(key)
    value = np.asarray(value, dtype=np.float32)
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = value.T if transpose else value
  return params


def hf_state_dict_from_params(params: dict) -> dict[str, np.ndarray]:
  """Flat Hugging Face state dict (numpy float32) from our T5 params."""
  flat = {}
  for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = tuple(p.key for p in path)
    key, transpose = path_to_hf_key(names)
    value = np.asarray(value, dtype=np.float32)
    flat[key] = np.ascontiguousarray(value.T if transpose else value)
  return flat
