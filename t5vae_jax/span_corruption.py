"""T5's span-corruption objective and the batches of it, in numpy on the host (no JAX).

The objective (Raffel et al. 2020, sections 3.1.4 and 3.3.4): in every sequence about
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

Examples (:class:`SpanCorruptionData`): ``chunks`` (T5's recipe) concatenates the lines of the
text (reshuffled every epoch, no separator) and cuts the token stream into pieces that, once
corrupted, fit ``max_len`` exactly, so no compute goes to padding; ``lines`` keeps one line per
example (truncated to fit), as the VAE later sees sentences, padded per batch. Everything random
(line order, noise) is a function of (seed, stream, epoch, example index), so a resumed run sees
exactly the batches an uninterrupted one would have.

:func:`merge_span_corruption` is the objective's inverse, there to test it (inputs and targets
must give back the content tokens).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from etils import epath
import numpy as np

# Streams of randomness, so that line order, training noise and validation noise never share
# a random number.
STREAM_TRAIN, STREAM_VALID, _STREAM_ORDER = 0, 1, 2


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


def random_spans_noise_mask(
    length: int,
    noise_density: float,
    mean_span_length: float,
    rng: np.random.Generator,
    rotate: bool = True,
) -> np.ndarray:
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


def apply_noise_mask(
    tokens: np.ndarray,
    mask: np.ndarray,
    first_sentinel_id: int,
    eos_id: int,
    num_sentinels: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
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
    raise ValueError(
        f"{num_spans} noise spans but only {num_sentinels} sentinels; lower "
        "max_len or noise_density, or raise mean_span_length"
    )
  sentinel_of = first_sentinel_id - (np.cumsum(starts) - 1)  # valid where mask is True
  inputs = np.where(starts, sentinel_of, tokens)[~mask | starts]
  noise_positions = np.flatnonzero(mask)
  targets = np.insert(
      tokens[noise_positions], np.flatnonzero(starts[noise_positions]), sentinel_of[starts]
  )
  eos = np.array([eos_id], np.int64)
  return np.concatenate([inputs, eos]), np.concatenate([targets, eos])


def span_corruption(
    tokens: np.ndarray,
    rng: np.random.Generator,
    *,
    noise_density: float,
    mean_span_length: float,
    first_sentinel_id: int,
    eos_id: int,
    rotate: bool = True,
    num_sentinels: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
  """T5's span corruption of one sequence of content tokens (without EOS): (inputs, targets)."""
  tokens = np.asarray(tokens, np.int64)
  if eos_id in tokens:
    raise ValueError("span_corruption takes content tokens without EOS (it appends EOS itself)")
  mask = random_spans_noise_mask(len(tokens), noise_density, mean_span_length, rng, rotate)
  return apply_noise_mask(tokens, mask, first_sentinel_id, eos_id, num_sentinels)


def merge_span_corruption(
    inputs: Sequence[int],
    targets: Sequence[int],
    first_sentinel_id: int,
    eos_id: int,
    num_sentinels: int = 100,
) -> np.ndarray:
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
        raise ValueError(
            f"target sentinel {t} out of order " f"(expected {first_sentinel_id - len(spans)})"
        )
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


def corrupted_lengths(
    length: int, noise_density: float, mean_span_length: float, rotate: bool = True
) -> tuple[int, int]:
  """The longest (inputs, targets), EOS included, that span corruption can make of ``length``
  content tokens (a rotation may split one noise span in two)."""
  num_noise, num_spans = noise_counts(length, noise_density, mean_span_length)
  max_spans = num_spans + (1 if rotate and num_spans and num_noise > num_spans else 0)
  return length - num_noise + max_spans + 1, num_noise + max_spans + 1


def fit_length(
    max_len: int, noise_density: float, mean_span_length: float, rotate: bool = True
) -> tuple[int, int]:
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


def round_up(n: int, multiple: int) -> int:
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

  def __init__(
      self,
      lines: Sequence[Sequence[int]],
      *,
      mode: str,
      max_len: int,
      spec: CorruptionSpec,
      seed: int,
      stream: int = STREAM_TRAIN,
      shuffle: bool = True,
      pad_multiple: int = 32,
  ):
    if mode not in ("chunks", "lines"):
      raise ValueError(f"examples mode must be 'chunks' or 'lines', got {mode!r}")
    self.mode, self.spec, self.seed, self.stream, self.shuffle = mode, spec, seed, stream, shuffle
    self.max_len = max_len
    self.content_len, longest_target = fit_length(
        max_len, spec.noise_density, spec.mean_span_length, spec.rotate
    )
    self.target_len = round_up(longest_target, 8)
    self.pad_multiple = pad_multiple
    lines = [np.asarray(x, np.int64) for x in lines]
    self.num_truncated = 0
    if mode == "lines":
      kept = []
      for x in lines:
        if len(x) > self.content_len:
          self.num_truncated += 1
          x = x[: self.content_len]
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
        raise ValueError(
            f"the text has {len(self.flat)} tokens, less than one example of "
            f"{self.content_len}; lower max_len"
        )
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
      order = (
          np.random.default_rng([self.seed, _STREAM_ORDER, self.stream, epoch]).permutation(n)
          if self.shuffle
          else np.arange(n)
      )
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
      return stream[index * self.content_len : (index + 1) * self.content_len], epoch, index
    return self.lines[self._order(epoch)[index]], epoch, index

  def example(self, g: int) -> tuple[np.ndarray, np.ndarray]:
    tokens, epoch, index = self.content(g)
    s = self.spec
    return span_corruption(
        tokens,
        _example_rng(self.seed, self.stream, epoch, index),
        noise_density=s.noise_density,
        mean_span_length=s.mean_span_length,
        first_sentinel_id=s.first_sentinel_id,
        eos_id=s.eos_id,
        rotate=s.rotate,
        num_sentinels=s.num_sentinels,
    )

  def batch_from(self, indices: Sequence[int], rows: Optional[int] = None) -> dict[str, np.ndarray]:
    """Padded arrays of the given global examples; ``rows`` pads with empty rows (mask 0)."""
    pairs = [self.example(g) for g in indices]
    rows = len(pairs) if rows is None else rows
    if self.mode == "chunks":
      in_len, tgt_len = self.max_len, self.target_len
    else:
      in_len = min(self.max_len, round_up(max(len(i) for i, _ in pairs), self.pad_multiple))
      tgt_len = min(self.target_len, round_up(max(len(t) for _, t in pairs), 8))
    pad = self.spec.pad_id
    out = {
        "input_ids": np.full((rows, in_len), pad, np.int32),
        "attention_mask": np.zeros((rows, in_len), np.int32),
        "targets": np.full((rows, tgt_len), pad, np.int32),
        "target_mask": np.zeros((rows, tgt_len), np.int32),
    }
    for r, (inputs, targets) in enumerate(pairs):
      assert len(inputs) <= in_len and len(targets) <= tgt_len, (len(inputs), len(targets))
      out["input_ids"][r, : len(inputs)] = inputs
      out["attention_mask"][r, : len(inputs)] = 1
      out["targets"][r, : len(targets)] = targets
      out["target_mask"][r, : len(targets)] = 1
    out["span_mask"] = out["target_mask"] * ~self.is_marker(out["targets"])
    return out

  def is_marker(self, ids: np.ndarray) -> np.ndarray:
    """True at sentinels and EOS: the target tokens that carry no word of the text."""
    s = self.spec
    return ((ids <= s.first_sentinel_id) & (ids > s.first_sentinel_id - s.num_sentinels)) | (
        ids == s.eos_id
    )

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
  lines = [line.strip() for line in epath.Path(path).read_text().splitlines()]
  lines = [line for line in lines if line]
  ids: list[list[int]] = []
  for start in range(0, len(lines), 4096):
    ids.extend(tokenizer(lines[start : start + 4096], add_special_tokens=False)["input_ids"])
  return ids


def sentinel_ids(tokenizer, count: int) -> int:
  """The id of <extra_id_0>, after checking that <extra_id_i> = that id - i for i < count."""
  names = [f"<extra_id_{i}>" for i in range(count)]
  ids = tokenizer.convert_tokens_to_ids(names)
  first = ids[0] if ids else None
  if first is None or first == tokenizer.unk_token_id or ids != [first - i for i in range(count)]:
    raise ValueError(
        f"the tokenizer lacks T5 sentinels <extra_id_0>..<extra_id_{count - 1}> "
        "with descending ids; train it with extra_ids (T5 convention)"
    )
  return int(first)


def unigram_neg_log_probs(
    train_tokens: np.ndarray, tokens: np.ndarray, vocab_size: int, smoothing: float = 0.1
) -> np.ndarray:
  """-log p(token) of each of ``tokens`` under the (add-``smoothing``) unigram distribution
  of ``train_tokens``."""
  counts = np.bincount(train_tokens, minlength=vocab_size)[:vocab_size] + smoothing
  return -np.log(counts[tokens] / counts.sum())


def unigram_cross_entropy(
    train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int, smoothing: float = 0.1
) -> float:
  """Mean unigram -log p of ``eval_tokens``: what span-word loss a model reaches without
  using any context."""
  return float(np.mean(unigram_neg_log_probs(train_tokens, eval_tokens, vocab_size, smoothing)))
