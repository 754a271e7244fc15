"""Pretrain a small T5 from scratch with span corruption, and save it as a Hugging Face checkpoint.

Hub weights cannot be downloaded everywhere, so for studies on small data (PTB) we pretrain a small
T5 ourselves and then finetune it into a VAE exactly as one would finetune ``t5-small``::

    python -m t5vae_jax.pretrain --text data/ptb/train.txt --valid data/ptb/valid.txt \\
        --out runs/t5-ptb-small --steps 2000 --max_minutes 60

``OUT`` ends up a Hugging Face T5 directory (config.json, model.safetensors, tokenizer files) that
``pretrained.load_t5`` and ``transformers.T5ForConditionalGeneration.from_pretrained`` both load;
``OUT/pretrain_ckpt`` holds the resumable orbax checkpoints, ``OUT/pretrain_log.jsonl`` the
metrics and ``OUT/pretrain_run.json`` the settings of the run (checked on ``--resume``).

The objective is T5's span corruption (Raffel et al. 2020, sections 3.1.4 and 3.3.4): in every sequence about
``noise_density`` of the tokens are chosen as noise, in spans of mean length
``mean_span_length``; the encoder input keeps the other tokens and puts one sentinel in place of
each noise span (``<extra_id_0>``, ``<extra_id_1>``, ... from left to right, i.e. descending ids),
and the target lists each sentinel followed by the tokens of its span; both end with EOS::

    tokens   a b c d e f g h            (noise: c d, g)
    inputs   a b <extra_id_0> e f <extra_id_1> h </s>
    targets  <extra_id_0> c d <extra_id_1> g </s>

As in T5, the number of noise tokens is round(length * noise_density) and the noise and non-noise
stretches are random partitions of their token counts into the same number of spans, interleaved.
T5's original mask always starts with kept tokens and always ends with noise; here the
interleaved pattern is read as a circle and cut at a uniformly random point (what seqio's
``random_roll`` option does), so every position is noise with the same probability. A cut inside a
noise span makes one more (shorter) span; lengths below allow for it.

Examples (``--examples``): ``chunks`` (default, T5's recipe) concatenates the lines of the text
(reshuffled every epoch, no separator) and cuts the token stream into pieces that, once
corrupted, fit ``max_len`` exactly, so no compute goes to padding; ``lines`` keeps one line per
example (truncated to fit), as the VAE later sees sentences, padded per batch. Everything random
(line order, noise) is a function of (seed, epoch, example index), so a resumed run sees exactly
the batches an uninterrupted one would have.

Training: one jitted step over a ``jax.sharding`` mesh (batch split along the data axis,
parameters replicated, or FSDP-sharded with ``--fsdp``), mean token cross-entropy over the target
tokens (sentinels and EOS included), AdamW (default: b1 0.9, b2 0.98, eps 1e-6, decoupled weight
decay on matrices only, global-norm clipping) or Adafactor (T5's optimizer: factored second
moments, decay 0.8, update clipping 1.0, step size relative to the parameter scale), linear
warm-up then cosine / inverse-square-root / constant learning rate.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np

RUN_FILE = "pretrain_run.json"
LOG_FILE = "pretrain_log.jsonl"
CKPT_DIR = "pretrain_ckpt"
# Streams of randomness, so that line order, training noise and validation noise never share
# a random number.
_STREAM_TRAIN, _STREAM_VALID, _STREAM_ORDER = 0, 1, 2


class PretrainError(ValueError):
  """A mistake in the command (flags, files, a run to resume); the message says what to do."""


# ---------------------------------------------------------------------------------------------
# Span corruption (numpy, on the host)
# ---------------------------------------------------------------------------------------------
def noise_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
  """(number of noise tokens, number of noise spans) for a sequence of ``length`` tokens.

  T5's rule: round(length * density) noise tokens, at least 1 and at most length - 1 (so some
  token is kept) when the density is positive; round(noise / mean span length) spans, at least
  1, and no more than there are noise tokens or kept tokens (every span is at least one token
  long and the kept stretches between spans too). Sequences under 2 tokens get no noise.
  """
  if length < 2 or noise_density <= 0:
    return 0, 0
  num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
  num_spans = max(int(round(num_noise / mean_span_length)), 1)
  num_spans = min(num_spans, num_noise, length - num_noise)
  return num_noise, num_spans


def _random_partition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
  """``total`` split into ``parts`` positive integers, uniformly over all such compositions."""
  if parts == 1:
    return np.array([total], np.int64)
  cuts = np.sort(rng.choice(total - 1, parts - 1, replace=False) + 1)
  return np.diff(np.concatenate([[0], cuts, [total]]))


def random_spans_noise_mask(length: int, noise_density: float, mean_span_length: float,
                            rng: np.random.Generator, rotate: bool = True) -> np.ndarray:
  """A (length,) boolean mask, True at noise tokens, grouped in spans.

  Kept and noise stretches alternate (kept first); their lengths are random partitions of the
  counts from :func:`noise_counts`. With ``rotate`` (default) the pattern is rotated by a random
  offset, as if read on a circle, so the first and last tokens are noise as often as any other;
  ``rotate=False`` is T5's original mask (first token kept, last token noise).
  """
  num_noise, num_spans = noise_counts(length, noise_density, mean_span_length)
  if num_spans == 0:
    return np.zeros((length,), bool)
  noise_lengths = _random_partition(num_noise, num_spans, rng)
  kept_lengths = _random_partition(length - num_noise, num_spans, rng)
  interleaved = np.stack([kept_lengths, noise_lengths], axis=1).reshape(-1)
  is_noise = np.tile([False, True], num_spans)
  mask = np.repeat(is_noise, interleaved)
  if rotate:
    mask = np.roll(mask, int(rng.integers(length)))
  return mask


def apply_noise_mask(tokens: np.ndarray, mask: np.ndarray, first_sentinel_id: int,
                     eos_id: int, num_sentinels: int = 100) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets) of span corruption for content ``tokens`` (no EOS) and a noise mask.

  Each run of True in ``mask`` is one span; span i (from the left) gets the sentinel id
  ``first_sentinel_id - i`` (T5's <extra_id_i>, which count down from the top of the
  vocabulary). Both outputs end with ``eos_id``.
  """
  tokens = np.asarray(tokens, np.int64)
  mask = np.asarray(mask, bool)
  if tokens.shape != mask.shape or tokens.ndim != 1:
    raise ValueError(f"tokens {tokens.shape} and mask {mask.shape} must be equal 1-D shapes")
  previous = np.concatenate([[False], mask[:-1]])
  starts = mask & ~previous
  num_spans = int(starts.sum())
  if num_spans > num_sentinels:
    raise ValueError(f"{num_spans} noise spans but only {num_sentinels} sentinels; lower "
                     "max_len or noise_density, or raise mean_span_length")
  sentinel_of = first_sentinel_id - (np.cumsum(starts) - 1)  # valid where mask is True
  inputs = np.where(starts, sentinel_of, tokens)[~mask | starts]
  noise_positions = np.flatnonzero(mask)
  targets = np.insert(tokens[noise_positions], np.flatnonzero(starts[noise_positions]),
                      sentinel_of[starts])
  eos = np.array([eos_id], np.int64)
  return np.concatenate([inputs, eos]), np.concatenate([targets, eos])


def span_corruption(tokens: np.ndarray, rng: np.random.Generator, *, noise_density: float,
                    mean_span_length: float, first_sentinel_id: int, eos_id: int,
                    rotate: bool = True, num_sentinels: int = 100
                    ) -> tuple[np.ndarray, np.ndarray]:
  """T5's span corruption of one sequence of content tokens (without EOS): (inputs, targets)."""
  tokens = np.asarray(tokens, np.int64)
  if eos_id in tokens:
    raise ValueError("span_corruption takes content tokens without EOS (it appends EOS itself)")
  mask = random_spans_noise_mask(len(tokens), noise_density, mean_span_length, rng, rotate)
  return apply_noise_mask(tokens, mask, first_sentinel_id, eos_id, num_sentinels)


def merge_span_corruption(inputs: Sequence[int], targets: Sequence[int], first_sentinel_id: int,
                          eos_id: int, num_sentinels: int = 100) -> np.ndarray:
  """Undoes span corruption: the original content tokens (no EOS) from inputs and targets.

  Raises ValueError when the two do not fit together (sentinels out of order, missing, or
  EOS not last).
  """
  inputs, targets = list(map(int, inputs)), list(map(int, targets))
  for name, seq in (("inputs", inputs), ("targets", targets)):
    if not seq or seq[-1] != eos_id or eos_id in seq[:-1]:
      raise ValueError(f"{name} must end with exactly one EOS: {seq}")
  inputs, targets = inputs[:-1], targets[:-1]

  def is_sentinel(t):
    return first_sentinel_id - num_sentinels < t <= first_sentinel_id

  spans: list[list[int]] = []
  for t in targets:
    if is_sentinel(t):
      if first_sentinel_id - t != len(spans):
        raise ValueError(f"target sentinel {t} out of order (expected {first_sentinel_id - len(spans)})")
      spans.append([])
    elif not spans:
      raise ValueError("targets must start with a sentinel")
    else:
      spans[-1].append(t)
  out: list[int] = []
  seen = 0
  for t in inputs:
    if is_sentinel(t):
      if first_sentinel_id - t != seen or seen >= len(spans):
        raise ValueError(f"input sentinel {t} out of order or without a target span")
      out.extend(spans[seen])
      seen += 1
    else:
      out.append(t)
  if seen != len(spans):
    raise ValueError(f"{len(spans)} target spans but {seen} input sentinels")
  return np.asarray(out, np.int64)


def corrupted_lengths(length: int, noise_density: float, mean_span_length: float,
                      rotate: bool = True) -> tuple[int, int]:
  """The longest (inputs, targets), EOS included, that span corruption can make of ``length``
  content tokens (a rotation may split one noise span in two)."""
  num_noise, num_spans = noise_counts(length, noise_density, mean_span_length)
  max_spans = num_spans + (1 if rotate and num_spans and num_noise > num_spans else 0)
  return length - num_noise + max_spans + 1, num_noise + max_spans + 1


def fit_length(max_len: int, noise_density: float, mean_span_length: float,
               rotate: bool = True) -> tuple[int, int]:
  """(content length, target length): the most content tokens such that no sequence of that
  length or shorter corrupts to more than ``max_len`` input tokens, and the longest target
  those lengths can give."""
  best, longest_target = 0, 1
  for length in range(1, 4 * max_len + 8):
    inputs_len, targets_len = corrupted_lengths(length, noise_density, mean_span_length, rotate)
    if inputs_len > max_len:
      break
    best, longest_target = length, max(longest_target, targets_len)
  if best == 0:
    raise ValueError(f"max_len={max_len} is too short for span corruption")
  return best, longest_target


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _example_rng(seed: int, stream: int, epoch: int, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, stream, epoch, index])


# ---------------------------------------------------------------------------------------------
# Examples and batches
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CorruptionSpec:
  noise_density: float = 0.15
  mean_span_length: float = 3.0
  first_sentinel_id: int = 0
  num_sentinels: int = 100
  eos_id: int = 1
  pad_id: int = 0
  rotate: bool = True


class SpanCorruptionData:
  """Deterministic batches of span-corrupted examples from tokenized lines.

  Global example g (= step * batch_size + row) is example g % N of epoch g // N. In "chunks"
  mode the epoch's line order is a permutation drawn from (seed, epoch), its tokens are
  concatenated and cut into N pieces of ``content_len`` (the remainder is dropped); in "lines"
  mode the N examples are the lines, in an order drawn from (seed, epoch). The noise of an
  example is drawn from (seed, stream, epoch, index), so any batch can be rebuilt from its step.
  """

  def __init__(self, lines: Sequence[Sequence[int]], *, mode: str, max_len: int,
               spec: CorruptionSpec, seed: int, stream: int = _STREAM_TRAIN,
               shuffle: bool = True, pad_multiple: int = 32):
    if mode not in ("chunks", "lines"):
      raise ValueError(f"examples mode must be 'chunks' or 'lines', got {mode!r}")
    self.mode, self.spec, self.seed, self.stream, self.shuffle = mode, spec, seed, stream, shuffle
    self.max_len = max_len
    self.content_len, longest_target = fit_length(max_len, spec.noise_density,
                                                  spec.mean_span_length, spec.rotate)
    self.target_len = _round_up(longest_target, 8)
    self.pad_multiple = pad_multiple
    lines = [np.asarray(x, np.int64) for x in lines]
    self.num_truncated = 0
    if mode == "lines":
      kept = []
      for x in lines:
        if len(x) > self.content_len:
          self.num_truncated += 1
          x = x[:self.content_len]
        if len(x) >= 2:
          kept.append(x)
      lines = kept
    else:
      lines = [x for x in lines if len(x)]
    if not lines:
      raise ValueError("no usable lines (each needs at least 2 tokens)")
    self.lines = lines
    self.lengths = np.array([len(x) for x in lines])
    self.flat = np.concatenate(lines)
    self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
    if mode == "chunks":
      self.num_examples = len(self.flat) // self.content_len
      if self.num_examples == 0:
        raise ValueError(f"the text has {len(self.flat)} tokens, less than one example of "
                         f"{self.content_len}; lower max_len")
    else:
      self.num_examples = len(lines)
    self._epoch_cache: tuple[int, np.ndarray] | None = None
    self._order_cache: tuple[int, np.ndarray] | None = None

  @property
  def num_tokens(self) -> int:
    return int(len(self.flat))

  def _order(self, epoch: int) -> np.ndarray:
    if self._order_cache is None or self._order_cache[0] != epoch:
      n = len(self.lines)
      order = (np.random.default_rng([self.seed, _STREAM_ORDER, self.stream, epoch]).permutation(n)
               if self.shuffle else np.arange(n))
      self._order_cache = (epoch, order)
    return self._order_cache[1]

  def _epoch_stream(self, epoch: int) -> np.ndarray:
    if self._epoch_cache is None or self._epoch_cache[0] != epoch:
      order = self._order(epoch)
      starts, lengths = self.offsets[order], self.lengths[order]
      # Gather the permuted lines in one fancy-index: position -> source index.
      index = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
      index += np.arange(len(index))
      self._epoch_cache = (epoch, self.flat[index])
    return self._epoch_cache[1]

  def content(self, g: int) -> tuple[np.ndarray, int, int]:
    """(content tokens, epoch, index) of global example ``g``."""
    epoch, index = divmod(int(g), self.num_examples)
    if self.mode == "chunks":
      stream = self._epoch_stream(epoch)
      return stream[index * self.content_len:(index + 1) * self.content_len], epoch, index
    return self.lines[self._order(epoch)[index]], epoch, index

  def example(self, g: int) -> tuple[np.ndarray, np.ndarray]:
    tokens, epoch, index = self.content(g)
    s = self.spec
    return span_corruption(tokens, _example_rng(self.seed, self.stream, epoch, index),
                           noise_density=s.noise_density, mean_span_length=s.mean_span_length,
                           first_sentinel_id=s.first_sentinel_id, eos_id=s.eos_id,
                           rotate=s.rotate, num_sentinels=s.num_sentinels)

  def batch_from(self, indices: Sequence[int], rows: Optional[int] = None
                 ) -> dict[str, np.ndarray]:
    """Padded arrays of the given global examples; ``rows`` pads with empty rows (mask 0)."""
    pairs = [self.example(g) for g in indices]
    rows = len(pairs) if rows is None else rows
    if self.mode == "chunks":
      in_len, tgt_len = self.max_len, self.target_len
    else:
      in_len = min(self.max_len, _round_up(max(len(i) for i, _ in pairs), self.pad_multiple))
      tgt_len = min(self.target_len, _round_up(max(len(t) for _, t in pairs), 8))
    pad = self.spec.pad_id
    out = {"input_ids": np.full((rows, in_len), pad, np.int32),
           "attention_mask": np.zeros((rows, in_len), np.int32),
           "targets": np.full((rows, tgt_len), pad, np.int32),
           "target_mask": np.zeros((rows, tgt_len), np.int32)}
    for r, (inputs, targets) in enumerate(pairs):
      assert len(inputs) <= in_len and len(targets) <= tgt_len, (len(inputs), len(targets))
      out["input_ids"][r, :len(inputs)] = inputs
      out["attention_mask"][r, :len(inputs)] = 1
      out["targets"][r, :len(targets)] = targets
      out["target_mask"][r, :len(targets)] = 1
    out["span_mask"] = out["target_mask"] * ~self.is_marker(out["targets"])
    return out

  def is_marker(self, ids: np.ndarray) -> np.ndarray:
    """True at sentinels and EOS: the target tokens that carry no word of the text."""
    s = self.spec
    return (((ids <= s.first_sentinel_id) & (ids > s.first_sentinel_id - s.num_sentinels))
            | (ids == s.eos_id))

  def train_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    return self.batch_from(range(step * batch_size, (step + 1) * batch_size))

  def epoch_batches(self, batch_size: int, max_batches: Optional[int] = None):
    """One pass over epoch 0 (validation), the last batch filled with empty rows."""
    n = self.num_examples
    if max_batches:
      n = min(n, max_batches * batch_size)
    for start in range(0, n, batch_size):
      yield self.batch_from(range(start, min(start + batch_size, n)), rows=batch_size)


def tokenize_lines(tokenizer, path) -> list[list[int]]:
  """Content token ids (no EOS) of every non-empty line of a text file."""
  from etils import epath
  lines = [line.strip() for line in epath.Path(path).read_text().splitlines()]
  lines = [line for line in lines if line]
  ids: list[list[int]] = []
  for start in range(0, len(lines), 4096):
    ids.extend(tokenizer(lines[start:start + 4096], add_special_tokens=False)["input_ids"])
  return ids


def sentinel_ids(tokenizer, count: int) -> int:
  """The id of <extra_id_0>, after checking that <extra_id_i> = that id - i for i < count."""
  names = [f"<extra_id_{i}>" for i in range(count)]
  ids = tokenizer.convert_tokens_to_ids(names)
  first = ids[0] if ids else None
  if first is None or first == tokenizer.unk_token_id or ids != [first - i for i in range(count)]:
    raise ValueError(f"the tokenizer lacks T5 sentinels <extra_id_0>..<extra_id_{count - 1}> "
                     "with descending ids; train it with extra_ids (T5 convention)")
  return int(first)


# ---------------------------------------------------------------------------------------------
# Model, optimizer, steps
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  """The optimizer and learning-rate schedule (hashable: compiled steps are cached on it)."""
  optimizer: str = "adamw"
  lr: float = 1e-3
  schedule: str = "cosine"
  warmup_steps: int = 200
  final_lr_fraction: float = 0.1
  weight_decay: float = 0.01
  clip_grad_norm: float = 1.0
  embedding_lr_multiplier: float = 1.0
  total_steps: int = 5000

  @classmethod
  def from_args(cls, args) -> "OptimizerSettings":
    return cls(**{f.name: getattr(args, "steps" if f.name == "total_steps" else f.name)
                  for f in dataclasses.fields(cls)})


def make_schedule(opt: OptimizerSettings):
  """Linear warm-up (at most a tenth of the steps) to ``lr``, then cosine, rsqrt or constant."""
  import optax
  total = opt.total_steps
  warmup = min(opt.warmup_steps, max(total // 10, 1)) if opt.warmup_steps else 0
  peak = opt.lr
  if opt.schedule == "constant":
    after = optax.constant_schedule(peak)
  elif opt.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, max(total - warmup, 1), alpha=opt.final_lr_fraction)
  elif opt.schedule == "rsqrt":
    w = max(warmup, 1)
    after = lambda count: peak * (w / (count + w)) ** 0.5  # noqa: E731 (count since warm-up)
  else:
    raise ValueError(f"unknown schedule {opt.schedule!r}")
  if not warmup:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(opt: OptimizerSettings, schedule):
  import jax
  import optax
  if opt.optimizer == "adamw":
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # noqa: E731
    tx = optax.adamw(schedule, b1=0.9, b2=0.98, eps=1e-6, weight_decay=opt.weight_decay,
                     mask=decay_mask)
  elif opt.optimizer == "adafactor":
    tx = optax.adafactor(schedule, decay_rate=0.8, clipping_threshold=1.0,
                         multiply_by_parameter_scale=True,
                         weight_decay_rate=opt.weight_decay or None)
  else:
    raise ValueError(f"unknown optimizer {opt.optimizer!r}")
  if opt.embedding_lr_multiplier != 1.0:
    # T5 initialises the shared embedding at std 1 while Adam moves every entry by about lr per
    # step, so the embedding (and with it the tied output layer) barely moves at lr 1e-3.
    is_embedding = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda path, _: any(getattr(k, "key", None) == "shared" for k in path), params)
    tx = optax.chain(tx, optax.masked(optax.scale(opt.embedding_lr_multiplier), is_embedding))
  if opt.clip_grad_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.clip_grad_norm), tx)
  return tx


def _loss_terms(params, batch, *, model, rng, deterministic):
  import jax.numpy as jnp
  from t5vae_jax import losses
  from t5vae_jax import t5 as t5_lib
  decoder_input_ids = t5_lib.shift_right(batch["targets"], model.config.decoder_start_token_id)
  logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                       decoder_input_ids, deterministic=deterministic,
                       rngs=None if deterministic else {"dropout": rng})
  ce = losses.token_cross_entropy(logits, batch["targets"])
  correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
  # All targets, and the span words alone: sentinels and EOS are easy to predict and can
  # hide a model that has not learnt to use the context (a unigram plateau).
  sums = {}
  for prefix, key in (("", "target_mask"), ("span_", "span_mask")):
    mask = batch[key].astype(jnp.float32)
    sums.update({prefix + "ce_sum": jnp.sum(ce * mask), prefix + "correct": jnp.sum(correct * mask),
                 prefix + "count": jnp.sum(mask)})
  return sums


def train_step(state, batch, *, model, tx, schedule, base_rng, dropout: bool):
  import jax
  import jax.numpy as jnp
  import optax
  rng = jax.random.fold_in(base_rng, state["step"])

  def loss_fn(params):
    sums = _loss_terms(params, batch, model=model, rng=rng, deterministic=not dropout)
    return sums["ce_sum"] / jnp.maximum(sums["count"], 1.0), sums

  (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  count, span_count = jnp.maximum(sums["count"], 1.0), jnp.maximum(sums["span_count"], 1.0)
  metrics = {"loss": loss, "accuracy": sums["correct"] / count, "target_tokens": sums["count"],
             "span_loss": sums["span_ce_sum"] / span_count,
             "span_accuracy": sums["span_correct"] / span_count,
             "grad_norm": optax.tree.norm(grads), "lr": schedule(state["step"])}
  return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics


def eval_step(params, batch, *, model):
  return _loss_terms(params, batch, model=model, rng=None, deterministic=True)


@dataclasses.dataclass(frozen=True)
class Compiled:
  """The model, optimizer, shardings and jitted functions of one configuration."""
  model: Any
  schedule: Any
  tx: Any
  init_params: Any  # rng -> params (placed)
  init_opt_state: Any  # params -> opt_state (placed)
  param_shardings: Any
  opt_shardings: Any
  state_shardings: Any
  train_step: Any  # (state, batch) -> (state, metrics); state donated
  eval_step: Any  # (params, batch) -> sums


@functools.lru_cache(maxsize=2)
def compile_functions(config, dtype: str, opt: OptimizerSettings, seed: int, dropout: bool,
                      mesh, fsdp: bool) -> Compiled:
  """Everything jitted, built once per configuration in a process (a resumed run in the same
  process, as in tests, reuses the compiled executables)."""
  import jax
  import jax.numpy as jnp
  from t5vae_jax import sharding
  from t5vae_jax import t5 as t5_lib
  model = t5_lib.T5(config, dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
  schedule = make_schedule(opt)
  tx = make_optimizer(opt, schedule)
  dummy = jnp.zeros((1, 2), jnp.int32)
  init = lambda rng: model.init(rng, dummy, dummy + 1, dummy)["params"]  # noqa: E731
  abstract_params = jax.eval_shape(init, jax.random.key(0))
  param_shardings = sharding.tree_shardings(abstract_params, mesh, fsdp)
  opt_shardings = sharding.tree_shardings(jax.eval_shape(tx.init, abstract_params), mesh, fsdp)
  replicated = sharding.replicated(mesh)
  state_shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings}
  step_fn = jax.jit(
      functools.partial(train_step, model=model, tx=tx, schedule=schedule,
                        base_rng=jax.random.key(seed + 1), dropout=dropout),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, replicated), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(eval_step, model=model),
                    in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                    out_shardings=replicated)
  return Compiled(model=model, schedule=schedule, tx=tx,
                  init_params=jax.jit(init, out_shardings=param_shardings),
                  init_opt_state=jax.jit(tx.init, out_shardings=opt_shardings),
                  param_shardings=param_shardings, opt_shardings=opt_shardings,
                  state_shardings=state_shardings, train_step=step_fn, eval_step=eval_fn)


def fetch(tree):
  """Host numpy copy of (possibly multi-process, sharded) global arrays."""
  import jax
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m t5vae_jax.pretrain",
      description="Pretrain a small T5 with span corruption on a text file (one example per "
                  "line) and write OUT as a Hugging Face T5 checkpoint directory (config.json, "
                  "model.safetensors, tokenizer) that loads like t5-small.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  g = p.add_argument_group("data and output")
  g.add_argument("--text", required=True, help="training text, one example per line")
  g.add_argument("--valid", default=None, help="validation text; its loss is logged")
  g.add_argument("--out", required=True,
                 help="output directory: the Hugging Face checkpoint at the end, plus "
                      f"{CKPT_DIR}/ (orbax), {LOG_FILE} and {RUN_FILE}")
  g.add_argument("--tokenizer", default=None,
                 help="directory of an existing T5 tokenizer (with <extra_id_*> sentinels); "
                      "default: train a SentencePiece unigram tokenizer on --text into OUT")
  g.add_argument("--vocab_size", type=int, default=8000,
                 help="SentencePiece vocabulary of a trained tokenizer, before sentinels")
  g.add_argument("--extra_ids", type=int, default=100, help="number of sentinel tokens")
  g.add_argument("--vocab_multiple", type=int, default=128,
                 help="the model's vocab_size is len(tokenizer) rounded up to this multiple "
                      "(t5-small: 32100 tokens, vocab_size 32128); 1 = no rounding")
  g.add_argument("--examples", choices=("chunks", "lines"), default="chunks",
                 help="chunks: concatenate lines (reshuffled per epoch) and cut to fit max_len "
                      "(T5's recipe, no padding); lines: one line per example, padded per batch")
  g.add_argument("--pad_multiple", type=int, default=32,
                 help="lines: inputs are padded to a multiple of this (each new length "
                      "compiles the step once)")
  g.add_argument("--max_len", type=int, default=128,
                 help="encoder input length after corruption, EOS included")
  g.add_argument("--noise_density", type=float, default=0.15, help="fraction of tokens masked")
  g.add_argument("--mean_span_length", type=float, default=3.0, help="mean noise span length")
  g.add_argument("--no_rotate", action="store_true",
                 help="T5's original mask (first token never noise, last always) instead of a "
                      "randomly rotated one")
  g = p.add_argument_group("model (T5 v1.0 style by default: ReLU, tied, scaled output)")
  g.add_argument("--d_model", type=int, default=256)
  g.add_argument("--num_layers", type=int, default=4, help="encoder layers")
  g.add_argument("--num_decoder_layers", type=int, default=None, help="default: num_layers")
  g.add_argument("--num_heads", type=int, default=4)
  g.add_argument("--d_kv", type=int, default=64)
  g.add_argument("--d_ff", type=int, default=1024)
  g.add_argument("--feed_forward_proj", default="relu",
                 help="relu (T5 v1.0) or gated-gelu (v1.1; then also --untied)")
  g.add_argument("--untied", action="store_true",
                 help="separate LM head, no d_model**-0.5 output scaling (T5 v1.1)")
  g.add_argument("--relative_attention_num_buckets", type=int, default=32)
  g.add_argument("--relative_attention_max_distance", type=int, default=128)
  g.add_argument("--dropout_rate", type=float, default=0.0,
                 help="dropout during this pretraining (T5 v1.1 pretrained without)")
  g.add_argument("--save_dropout_rate", type=float, default=0.1,
                 help="dropout_rate written to config.json, the default for finetuning "
                      "(t5-small's is 0.1)")
  g.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                 help="compute dtype (params stay float32); auto: bfloat16 on TPU/GPU, "
                 "float32 on CPU")
  g = p.add_argument_group("optimization")
  g.add_argument("--steps", type=int, default=5000, help="training steps (schedule length)")
  g.add_argument("--batch_size", type=int, default=64, help="global batch (examples)")
  g.add_argument("--optimizer", choices=("adamw", "adafactor"), default="adamw")
  g.add_argument("--lr", type=float, default=None,
                 help="peak learning rate; default 1e-3 (adamw), 1e-2 (adafactor)")
  g.add_argument("--schedule", choices=("cosine", "rsqrt", "constant"), default="cosine",
                 help="after linear warm-up")
  g.add_argument("--warmup_steps", type=int, default=200,
                 help="linear warm-up (at most a tenth of --steps)")
  g.add_argument("--final_lr_fraction", type=float, default=0.1,
                 help="cosine: learning rate at the last step / peak")
  g.add_argument("--weight_decay", type=float, default=0.01,
                 help="decoupled weight decay on matrices (adamw); adafactor's decay rate")
  g.add_argument("--clip_grad_norm", type=float, default=1.0, help="0 = no clipping")
  g.add_argument("--embedding_lr_multiplier", type=float, default=1.0,
                 help="the shared embedding's step is this many times the others' (its init "
                      "std is 1, so a plain Adam step moves it relatively little)")
  g.add_argument("--seed", type=int, default=0)
  g.add_argument("--num_devices", type=int, default=None,
                 help="use the first N devices (default: all devices of all processes)")
  g.add_argument("--fsdp", action="store_true",
                 help="shard params and optimizer state over the data axis")
  g = p.add_argument_group("logging, checkpoints, budget")
  g.add_argument("--log_every", type=int, default=50)
  g.add_argument("--eval_every", type=int, default=500, help="validation every N steps")
  g.add_argument("--valid_max_batches", type=int, default=20)
  g.add_argument("--save_every", type=int, default=500, help="orbax checkpoint every N steps")
  g.add_argument("--keep_checkpoints", type=int, default=2)
  g.add_argument("--resume", action="store_true",
                 help=f"continue from the latest checkpoint in OUT/{CKPT_DIR} (same settings; "
                      "--steps and --max_minutes may change)")
  g.add_argument("--max_minutes", type=float, default=None,
                 help="wall-clock budget of the whole command: stop training in time, then "
                      "save, validate and write OUT as usual")
  g.add_argument("--stop_at_step", type=int, default=None,
                 help="stop after this step as --max_minutes would (save, validate, write OUT), "
                      "while the schedule still runs over --steps: a budget that reproduces "
                      "exactly, e.g. a run that --max_minutes once stopped")
  return p


def model_config(args, vocab_size: int, pad_id: int, eos_id: int):
  from t5vae_jax import t5 as t5_lib
  return t5_lib.T5Config(
      vocab_size=vocab_size, d_model=args.d_model, d_kv=args.d_kv, d_ff=args.d_ff,
      num_layers=args.num_layers, num_decoder_layers=args.num_decoder_layers,
      num_heads=args.num_heads,
      relative_attention_num_buckets=args.relative_attention_num_buckets,
      relative_attention_max_distance=args.relative_attention_max_distance,
      dropout_rate=args.dropout_rate, feed_forward_proj=args.feed_forward_proj,
      tie_word_embeddings=not args.untied, scale_decoder_outputs=not args.untied,
      pad_token_id=pad_id, eos_token_id=eos_id, decoder_start_token_id=pad_id)


def _info(message: str) -> None:
  import jax
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


def _prepare_tokenizer(args, out):
  """The tokenizer, saved in OUT (trained there, or copied from --tokenizer / a resumed run)."""
  from etils import epath
  from t5vae_jax import tokenizer as tokenizer_lib
  import jax
  if args.tokenizer:
    tokenizer = tokenizer_lib.load_tokenizer(args.tokenizer)
    if jax.process_index() == 0 and epath.Path(args.tokenizer).resolve() != out.resolve():
      tokenizer_lib.save_tokenizer(tokenizer, out)
      spm = epath.Path(args.tokenizer) / tokenizer_lib.SPIECE_FILE
      if spm.exists():
        (out / tokenizer_lib.SPIECE_FILE).write_bytes(spm.read_bytes())
    return tokenizer
  if args.resume and (out / "tokenizer_config.json").exists():
    return tokenizer_lib.load_tokenizer(out)
  if jax.process_index() == 0:
    t0 = time.perf_counter()
    try:
      tokenizer_lib.train_sentencepiece_tokenizer(args.text, out, args.vocab_size,
                                                  extra_ids=args.extra_ids)
    except RuntimeError as e:  # e.g. "Vocabulary size too high (N). Please set it to <= M."
      raise PretrainError(f"training the tokenizer on {args.text} failed: "
                       f"{str(e).splitlines()[-1]} (--vocab_size)") from None
    _info(f"trained a {args.vocab_size}-piece SentencePiece tokenizer (+{args.extra_ids} "
          f"sentinels) in {time.perf_counter() - t0:.1f}s")
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("pretrain_tokenizer")
  return tokenizer_lib.load_tokenizer(out)


def unigram_neg_log_probs(train_tokens: np.ndarray, tokens: np.ndarray, vocab_size: int,
                          smoothing: float = 0.1) -> np.ndarray:
  """-log p(token) of each of ``tokens`` under the (add-``smoothing``) unigram distribution
  of ``train_tokens``."""
  counts = np.bincount(train_tokens, minlength=vocab_size)[:vocab_size] + smoothing
  return -np.log(counts[tokens] / counts.sum())


def unigram_cross_entropy(train_tokens: np.ndarray, eval_tokens: np.ndarray,
                          vocab_size: int, smoothing: float = 0.1) -> float:
  """Mean unigram -log p of ``eval_tokens``: what span-word loss a model reaches without
  using any context."""
  return float(np.mean(unigram_neg_log_probs(train_tokens, eval_tokens, vocab_size, smoothing)))


def _datasets(args, tokenizer, spec):
  """(train, valid or None) span-corruption data of the command's text files."""
  kw = dict(mode=args.examples, max_len=args.max_len, spec=spec, seed=args.seed,
            pad_multiple=args.pad_multiple)
  train = SpanCorruptionData(tokenize_lines(tokenizer, args.text), **kw)
  valid = None
  if args.valid:
    valid = SpanCorruptionData(tokenize_lines(tokenizer, args.valid), stream=_STREAM_VALID,
                               shuffle=False, **kw)
  return train, valid


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Runs the command; returns a summary (final step, losses, timings, paths)."""
  t_start = time.perf_counter()
  args = build_parser().parse_args(argv)
  if args.lr is None:
    args.lr = 1e-2 if args.optimizer == "adafactor" else 1e-3

  import jax
  import jax.numpy as jnp
  import orbax.checkpoint as ocp
  from etils import epath
  from t5vae_jax import pretrained
  from t5vae_jax import sharding

  if not 0.0 < args.noise_density < 1.0:
    raise PretrainError(f"--noise_density {args.noise_density} must lie in (0, 1)")
  if args.stop_at_step is not None and args.stop_at_step < 1:
    raise PretrainError(f"--stop_at_step {args.stop_at_step} must be at least 1")
  if args.mean_span_length < 1.0:
    raise PretrainError(f"--mean_span_length {args.mean_span_length} must be at least 1")
  for flag, path in (("--text", args.text), ("--valid", args.valid)):
    if path is not None and not epath.Path(path).is_file():
      raise PretrainError(f"{flag} {path}: no such file")
  from t5vae_jax.checkpoint import absolute
  out = absolute(args.out)  # orbax wants absolute paths; `--out runs/t5` is relative
  ckpt_dir = out / CKPT_DIR
  is_lead = jax.process_index() == 0
  if not args.resume and ckpt_dir.exists() and any(ckpt_dir.iterdir()):
    raise PretrainError(f"{ckpt_dir} already holds checkpoints; pass --resume to continue "
                     "that run, or choose another --out")
  out.mkdir(parents=True, exist_ok=True)

  mesh = sharding.make_mesh(jax.devices()[:args.num_devices] if args.num_devices else None)
  sharding.check_batch_size(args.batch_size, mesh)
  from t5vae_jax import accelerator
  args.dtype = accelerator.compute_dtype(args.dtype, mesh.devices.flat)  # run.json: resolved
  accelerator.announce(mesh.devices.flat, args.dtype)

  tokenizer = _prepare_tokenizer(args, out)
  pad_id, eos_id = int(tokenizer.pad_token_id), int(tokenizer.eos_token_id)
  first_sentinel = sentinel_ids(tokenizer, args.extra_ids)
  vocab = _round_up(len(tokenizer), max(args.vocab_multiple, 1))
  config = model_config(args, vocab, pad_id, eos_id)
  spec = CorruptionSpec(noise_density=args.noise_density,
                        mean_span_length=args.mean_span_length,
                        first_sentinel_id=first_sentinel, num_sentinels=args.extra_ids,
                        eos_id=eos_id, pad_id=pad_id, rotate=not args.no_rotate)

  t0 = time.perf_counter()
  try:
    train, valid = _datasets(args, tokenizer, spec)
  except ValueError as e:  # too little text for one example, max_len too short, ...
    raise PretrainError(str(e)) from None
  max_spans = max(noise_counts(n, spec.noise_density, spec.mean_span_length)[1]
                  for n in range(train.content_len + 1)) + (1 if spec.rotate else 0)
  if max_spans > args.extra_ids:
    raise PretrainError(f"up to {max_spans} noise spans per example but only "
                     f"{args.extra_ids} sentinels; lower --max_len or --noise_density, or raise "
                     "--mean_span_length")
  _info(f"data: {train.num_tokens} tokens in {len(train.lines)} lines -> {train.num_examples} "
        f"{args.examples} per epoch ({train.content_len} content tokens -> <= {args.max_len} "
        f"inputs, <= {train.target_len} targets; {train.num_truncated} lines truncated); "
        f"{train.num_examples / args.batch_size:.1f} steps/epoch; tokenized in "
        f"{time.perf_counter() - t0:.1f}s" + (f"; valid {valid.num_examples} examples"
                                                if valid else ""))
  unigram_ce = None
  if valid is not None:
    unigram_ce = unigram_cross_entropy(train.flat, valid.flat, vocab)
    _info(f"valid span words under the training text's unigram distribution: loss "
          f"{unigram_ce:.3f} (a model below it uses context)")

  run_info = {"t5": config.to_hf_dict(), "examples": args.examples, "max_len": args.max_len,
              "noise_density": args.noise_density, "mean_span_length": args.mean_span_length,
              "rotate": not args.no_rotate, "seed": args.seed, "batch_size": args.batch_size,
              "optimizer": args.optimizer, "dtype": args.dtype}
  run_file = out / RUN_FILE
  if args.resume and run_file.exists():
    stored = json.loads(run_file.read_text())
    diff = sorted(k for k in run_info if stored.get(k) != run_info[k])
    if diff:
      raise PretrainError(f"--resume with settings that differ from the run in {out}: "
                       + ", ".join(f"{k} (was {stored.get(k)!r}, now {run_info[k]!r})"
                                   for k in diff))
  elif is_lead:
    run_file.write_text(json.dumps({**run_info, "args": vars(args)}, indent=2))

  fns = compile_functions(config, args.dtype, OptimizerSettings.from_args(args), args.seed,
                          args.dropout_rate > 0, mesh, args.fsdp)
  param_shardings, opt_shardings = fns.param_shardings, fns.opt_shardings
  params = fns.init_params(jax.random.key(args.seed))
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  replicated = sharding.replicated(mesh)
  state = {"step": jax.device_put(jnp.zeros((), jnp.int32), replicated), "params": params,
           "opt_state": fns.init_opt_state(params)}

  manager = ocp.CheckpointManager(
      ckpt_dir, options=ocp.CheckpointManagerOptions(max_to_keep=args.keep_checkpoints,
                                                     create=True),
      item_names=("params", "opt_state", "meta"))
  step = 0
  if args.resume and manager.latest_step() is not None:
    latest = manager.latest_step()
    abstract = lambda tree, shard: jax.tree.map(  # noqa: E731
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shard)
    restored = manager.restore(latest, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract(state["params"], param_shardings)),
        opt_state=ocp.args.StandardRestore(abstract(state["opt_state"], opt_shardings)),
        meta=ocp.args.JsonRestore()))
    step = int(restored["meta"]["step"])
    state = {"step": jax.device_put(jnp.asarray(step, jnp.int32), replicated),
             "params": restored["params"], "opt_state": restored["opt_state"]}
    _info(f"resumed from {ckpt_dir} at step {step}")
  elif args.resume:
    _info(f"--resume: no checkpoint in {ckpt_dir}; starting from scratch")

  step_fn, eval_fn = fns.train_step, fns.eval_step
  lo = jax.process_index() * args.batch_size // jax.process_count()
  hi = (jax.process_index() + 1) * args.batch_size // jax.process_count()

  def local(batch):
    return sharding.global_batch({k: v[lo:hi] for k, v in batch.items()}, mesh)

  def log(row):
    if is_lead:
      with (out / LOG_FILE).open("a") as f:
        f.write(json.dumps(row) + "\n")

  last_valid_seconds = [0.0]
  num_valid_batches = 0 if valid is None else min(
      -(-valid.num_examples // args.batch_size), args.valid_max_batches or 10 ** 9)

  def validate(at_step):
    if valid is None:
      return None
    t = time.perf_counter()
    sums = collections.Counter()
    for batch in valid.epoch_batches(args.batch_size, args.valid_max_batches):
      res = fetch(eval_fn(state["params"], local(batch)))
      sums.update({k: float(v) for k, v in res.items()})
    loss = sums["ce_sum"] / max(sums["count"], 1)
    span = max(sums["span_count"], 1)
    row = {"step": at_step, "valid_loss": loss, "valid_accuracy": sums["correct"] /
           max(sums["count"], 1), "valid_span_loss": sums["span_ce_sum"] / span,
           "valid_span_accuracy": sums["span_correct"] / span, "unigram_span_loss": unigram_ce,
           "valid_seconds": time.perf_counter() - t}
    last_valid_seconds[0] = row["valid_seconds"]
    log(row)
    _info(f"step {at_step}: valid loss {loss:.4f} acc {row['valid_accuracy']:.3f}; span words: "
          f"loss {row['valid_span_loss']:.4f} acc {row['valid_span_accuracy']:.3f} "
          f"({row['valid_seconds']:.1f}s)")
    return loss

  def save(at_step):
    manager.save(at_step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state["params"]),
        opt_state=ocp.args.StandardSave(state["opt_state"]),
        meta=ocp.args.JsonSave({"step": at_step, "elapsed_s": time.perf_counter() - t_start})),
        force=True)

  _info(f"model: {num_params / 1e6:.2f}M params, vocab {vocab}, d_model {config.d_model}, "
        f"{config.num_layers}+{config.num_decoder_layers} layers, {config.feed_forward_proj}; "
        f"{mesh.size} device(s); {args.optimizer} lr {args.lr:g} {args.schedule}; "
        f"steps {step} -> {args.steps}")
  budget_s = None if args.max_minutes is None else args.max_minutes * 60.0
  first_loss = last_loss = valid_loss = None
  window, window_tokens = [], 0
  t_window = t_loop = time.perf_counter()
  step_times: list[float] = []
  start_step = step
  stopped_by = "steps"
  batch = train.train_batch(step, args.batch_size) if step < args.steps else None
  from t5vae_jax.train_lib import PreemptionFlag
  with PreemptionFlag() as stop:  # SIGTERM: stop after the step, save, export
    while step < args.steps:
      t_step = time.perf_counter()
      tokens = int(batch["attention_mask"].sum() + batch["target_mask"].sum())
      state, metrics = step_fn(state, local(batch))
      step += 1
      # The next batch is built on the host while the device runs this step.
      batch = train.train_batch(step, args.batch_size) if step < args.steps else None
      metrics = jax.device_get(metrics)
      now = time.perf_counter()
      if step > start_step + 1:  # the first step includes compilation
        step_times.append(now - t_step)
      window.append(metrics)
      window_tokens += tokens
      if step - start_step <= 2 or step % args.log_every == 0 or step == args.steps:
        loss = float(np.mean([h["loss"] for h in window]))
        first_loss = loss if first_loss is None else first_loss
        last_loss = loss
        row = {"step": step, "loss": loss,
               "accuracy": float(np.mean([h["accuracy"] for h in window])),
               "span_loss": float(np.mean([h["span_loss"] for h in window])),
               "span_accuracy": float(np.mean([h["span_accuracy"] for h in window])),
               "grad_norm": float(np.mean([h["grad_norm"] for h in window])),
               "lr": float(window[-1]["lr"]), "steps_per_s": len(window) / (now - t_window),
               "tokens_per_s": window_tokens / (now - t_window),
               "epoch": step * args.batch_size / train.num_examples,
               "elapsed_s": now - t_start}
        log(row)
        _info(f"step {step}/{args.steps} loss {loss:.4f} acc {row['accuracy']:.3f} "
              f"(span words {row['span_loss']:.3f} / {row['span_accuracy']:.3f}) "
              f"lr {row['lr']:.2e} gnorm {row['grad_norm']:.2f} "
              f"{row['steps_per_s']:.2f} steps/s {row['tokens_per_s']:.0f} tok/s "
              f"epoch {row['epoch']:.2f} ({row['elapsed_s']:.0f}s)")
        window, window_tokens, t_window = [], 0, time.perf_counter()
      if valid is not None and step % args.eval_every == 0 and step != args.steps:
        valid_loss = validate(step)
        t_window = time.perf_counter()
      if step % args.save_every == 0 and step != args.steps:
        save(step)
      stop_now = stop.requested
      if budget_s is not None:
        # Leave time for one more step and the final validation (before one has run: a
        # forward pass per validation batch, about a third of a training step, say a half).
        per_step = float(np.median(step_times[-20:])) if step_times else 0.0
        valid_estimate = last_valid_seconds[0] or num_valid_batches * per_step / 2
        reserve = 2 * per_step + valid_estimate
        stop_now = stop_now or (time.perf_counter() - t_start + reserve > budget_s)
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        stop_now = bool(multihost_utils.broadcast_one_to_all(np.asarray(stop_now)))
      at_stop_step = args.stop_at_step is not None and step >= args.stop_at_step
      if (stop_now or at_stop_step) and step < args.steps:
        stopped_by = ("SIGTERM" if stop.requested else
                      "max_minutes" if stop_now else "stop_at_step")
        _info(f"stopping at step {step} ({stopped_by})")
        break
  if window:  # steps since the last log line
    last_loss = float(np.mean([h["loss"] for h in window]))
    first_loss = last_loss if first_loss is None else first_loss
  train_seconds = time.perf_counter() - t_loop
  if manager.latest_step() != step and step > start_step:
    save(step)
  if (step > start_step or valid_loss is None) and stopped_by != "SIGTERM":
    valid_loss = validate(step)  # skipped on SIGTERM: a preempted job has seconds left
  manager.wait_until_finished()
  manager.close()

  final_config = dataclasses.replace(config, dropout_rate=args.save_dropout_rate)
  params_host = fetch(state["params"])
  if is_lead:
    pretrained.save_t5(out, final_config, params_host)
  summary = {"step": step, "stopped_by": stopped_by, "first_loss": first_loss,
             "last_loss": last_loss, "valid_loss": valid_loss, "num_params": num_params,
             "train_seconds": train_seconds,
             "seconds_per_step": float(np.median(step_times)) if step_times else None,
             "total_seconds": time.perf_counter() - t_start, "out": str(out)}
  log({"summary": summary})
  _info(f"wrote {out} (Hugging Face T5): step {step}, train loss {last_loss}, valid loss "
        f"{valid_loss}, {summary['total_seconds']:.0f}s in all")
  return summary


def run() -> None:
  """The command (``python -m t5vae_jax.pretrain``, the ``t5vae-pretrain`` entry point)."""
  from t5vae_jax import cli
  cli.quiet_known_noise()  # no TFDS/orbax/transformers noise on the console (cli.py says which)
  try:
    main()
  except PretrainError as e:  # a user error: one line, no traceback (as train.py and eval.py)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  run()
