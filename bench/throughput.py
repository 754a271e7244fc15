"""End-to-end real (non-pad) tokens per second on a text file: our pipeline vs the released recipe.

    python bench/throughput.py --data /work/shared/data/ptb/train.txt --steps 40

Ours: a SentencePiece tokenizer (trained on the file, or ``--tokenizer DIR``), data.tokenize
(EOS appended, truncated to max_len, as data.load_split does), data.BatchIterator with length
bucketing (config.data.bucket_lengths), our jitted phase-2 train step (self_prefix, float32,
with `config.pack_tokens` (on by default; `--pack-tokens off` to compare)).
Released recipe: the same token ids, shuffled, every sequence padded to 256, batch 32, Hugging
Face's PyTorch T5 with the z prefix (bench/torch_reference.py), AdamW.
Same model shape on both sides (tiny by default: d_model 128, 2+2 layers; vocab = the
tokenizer's). Each side runs --steps steps after warm-up (ours: one compilation per length and
packed capacity, reported separately), in alternating chunks so that load from other processes
hits both alike.
Tokens counted are each sentence's tokens with EOS, once per step (input = target).

Not a test and not imported by tests: the data path is an argument.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time

import jax
import numpy as np

import train_step as bench_step  # bench/train_step.py: our side's config and step
from t5vae_jax import data as data_lib
from t5vae_jax import packing as packing_lib
from t5vae_jax import tokenizer as tokenizer_lib


def read_lines(path: str) -> list[str]:
  with open(path, encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip()]


def get_tokenizer(args, texts):
  if args.tokenizer:
    return tokenizer_lib.load_tokenizer(args.tokenizer), "loaded"
  digest = hashlib.sha1(open(args.data, "rb").read()).hexdigest()[:12]
  path = os.path.join(args.tokenizer_cache, f"spm_{digest}_{args.vocab_size}")
  if os.path.exists(os.path.join(path, "tokenizer_config.json")):
    return tokenizer_lib.load_tokenizer(path), f"cached in {path}"
  tok = tokenizer_lib.train_sentencepiece_tokenizer(
      texts, path, vocab_size=args.vocab_size, extra_ids=0, hard_vocab_limit=False
  )
  return tok, f"trained, saved to {path}"


class PaddedBatches:
  """The released recipe's loader: shuffle, batches of 32, every row padded to ``length``."""

  def __init__(self, token_ids, batch_size: int, length: int, seed: int = 0, pad_id: int = 0):
    self.token_ids, self.batch_size, self.length, self.pad_id = (
        token_ids,
        batch_size,
        length,
        pad_id,
    )
    self.rng = np.random.default_rng(seed)
    self.order, self.pos = self.rng.permutation(len(token_ids)), 0

  def __next__(self):
    if self.pos + self.batch_size > len(self.order):
      self.order, self.pos = self.rng.permutation(len(self.token_ids)), 0
    rows = self.order[self.pos : self.pos + self.batch_size]
    self.pos += self.batch_size
    ids = np.full((self.batch_size, self.length), self.pad_id, np.int64)
    for r, i in enumerate(rows):
      seq = self.token_ids[i][: self.length]
      ids[r, : len(seq)] = seq
    return ids, (ids != self.pad_id).astype(np.int64)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True, help="one sentence per line (e.g. PTB train.txt)")
  parser.add_argument("--steps", type=int, default=40, help="timed steps per side")
  parser.add_argument("--chunk", type=int, default=5, help="steps per side between switches")
  parser.add_argument(
      "--max-other",
      type=float,
      default=0.2,
      help="set aside rounds while other processes use more cores than this",
  )
  parser.add_argument(
      "--budget",
      type=float,
      default=240.0,
      help="seconds of timing before settling for noisy rounds",
  )
  parser.add_argument("--tokenizer", default="", help="a tokenizer directory (else trained)")
  parser.add_argument("--tokenizer-cache", default="/tmp/t5vae_bench_tokenizers")
  parser.add_argument("--vocab-size", type=int, default=4000, help="when training a tokenizer")
  parser.add_argument(
      "--size",
      choices=sorted(bench_step.SIZES),
      default="tiny",
      help="model shape; the vocab always comes from the tokenizer",
  )
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument(
      "--max-len",
      type=int,
      default=64,
      help="ours: truncation and largest bucket (config.data.max_len)",
  )
  parser.add_argument(
      "--bucket-lengths",
      default="16,32,48,64",
      help="ours: padded lengths (config.data.bucket_lengths); '' = library default",
  )
  parser.add_argument("--torch-length", type=int, default=256, help="released recipe: pad to this")
  parser.add_argument("--dropout", type=float, default=0.1)
  parser.add_argument(
      "--pack-tokens",
      choices=("on", "off"),
      default="on",
      help="config.pack_tokens of our step (on: the default config)",
  )
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  import torch
  import torch_reference as tr

  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  info = bench_step.machine_info()
  print(" ".join(f"{k}={v}" for k, v in info.items()))
  print(
      f"data={args.data} steps={args.steps} chunk={args.chunk} batch={args.batch_size} "
      f"load={bench_step.loadavg()}"
  )

  # ---- data: one tokenization shared by both sides -------------------------------------------
  t0 = time.perf_counter()
  texts = read_lines(args.data)
  tokenizer, how = get_tokenizer(args, texts)
  t_tok = time.perf_counter() - t0
  t0 = time.perf_counter()
  token_ids, num_truncated = data_lib.tokenize(
      texts, tokenizer, max(args.max_len, args.torch_length)
  )
  lengths = np.array([len(x) for x in token_ids])
  t_enc = time.perf_counter() - t0
  print(
      f"tokenizer: {how} ({t_tok:.1f} s), {len(tokenizer)} tokens; tokenized {len(texts)} "
      f"lines in {t_enc:.1f} s: mean {lengths.mean():.1f} tokens/sentence (EOS incl.), "
      f"max {lengths.max()}, > {args.max_len}: {int((lengths > args.max_len).sum())}, "
      f"> {args.torch_length}: {int((lengths > args.torch_length).sum())}"
  )
  if (lengths > args.max_len).any():
    # Same work on both sides: both see every sentence cut at the smaller limit.
    token_ids, _ = data_lib.tokenize(texts, tokenizer, min(args.max_len, args.torch_length))
    lengths = np.array([len(x) for x in token_ids])
    print(f"both sides truncate to {min(args.max_len, args.torch_length)} tokens")

  # ---- our side ------------------------------------------------------------------------------
  shape = dict(bench_step.SIZES[args.size], vocab_size=len(tokenizer))
  config = bench_step.make_config(shape, dropout=args.dropout, pack_tokens=args.pack_tokens == "on")
  config.data.max_len = args.max_len
  config.data.bucket_lengths = tuple(int(x) for x in args.bucket_lengths.split(",") if x)
  buckets = data_lib.bucket_lengths_from_config(config.data)
  model, t5_config, params, tx, step_fn = bench_step.build_ours(config, seed=args.seed)
  iterator = data_lib.BatchIterator(
      token_ids,
      bucket_lengths=buckets,
      batch_size=args.batch_size,
      seed=args.seed,
      shuffle=True,
      drop_remainder=True,
      pad_id=t5_config.pad_token_id,
      eos_id=t5_config.eos_token_id,
  )
  inputs = lambda b: {k: b[k] for k in ("input_ids", "attention_mask", "example_weights")}
  state = bench_step.new_state(params, tx)
  t0 = time.perf_counter()
  # One compilation per padded length and packed capacity, before timing: a batch of each
  # (length, capacity) among the next batches the timing can use, read from a saved position.
  position = iterator.get_state()
  warm = {}
  for _ in range(4 * args.steps):
    batch = next(iterator)
    capacity = packing_lib.capacity(batch["attention_mask"]) if config.pack_tokens else None
    warm.setdefault((batch["input_ids"].shape[1], capacity), batch)
  iterator.set_state(position)
  for batch in warm.values():
    state, aux = step_fn(state, inputs(batch))
    jax.block_until_ready((state, aux))
  t_compile = time.perf_counter() - t0
  print(
      f"ours: buckets {buckets}, pack_tokens={config.pack_tokens}: compile + 1 step for each "
      f"of {len(warm)} (length, capacity) shapes: {t_compile:.1f} s"
  )

  # ---- released recipe -------------------------------------------------------------------------
  torch_model = tr.TorchT5VAE(t5_config, config.model.latent_dim)
  torch_model.load_jax_params(params)
  torch_model.train()
  opt = tr.make_optimizer(
      torch_model,
      lr=config.optimizer.learning_rate,
      b1=config.optimizer.b1,
      b2=config.optimizer.b2,
      eps=config.optimizer.eps,
      weight_decay=config.optimizer.weight_decay,
  )
  padded = PaddedBatches(
      token_ids, args.batch_size, args.torch_length, seed=args.seed, pad_id=t5_config.pad_token_id
  )
  t0 = time.perf_counter()
  for _ in range(2):
    ids, mask = next(padded)
    tr.train_step(torch_model, opt, torch.from_numpy(ids), torch.from_numpy(mask))
  t_torch_warm = time.perf_counter() - t0
  print(f"torch: warm-up 2 steps: {t_torch_warm:.1f} s")

  # ---- timed, alternating chunks ---------------------------------------------------------------
  # A round is --chunk steps of ours then --chunk steps of torch. Rounds during which other
  # processes kept more than --max-other cores busy are set aside and more run, within --budget.
  rounds = []
  budget_end = time.perf_counter() + args.budget
  loss = aux = None
  while True:
    other = bench_step.OtherLoad()
    r = dict(
        ours_time=0.0, ours_tokens=0, ours_padded=0, torch_time=0.0, torch_tokens=0, torch_padded=0
    )
    t0 = time.perf_counter()
    for _ in range(args.chunk):
      batch = next(iterator)
      r["ours_tokens"] += int(batch["attention_mask"].sum())
      r["ours_padded"] += batch["attention_mask"].size
      state, aux = step_fn(state, inputs(batch))
    jax.block_until_ready((state, aux))
    r["ours_time"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.chunk):
      ids, mask = next(padded)
      r["torch_tokens"] += int(mask.sum())
      r["torch_padded"] += mask.size
      loss = tr.train_step(torch_model, opt, torch.from_numpy(ids), torch.from_numpy(mask))
    r["torch_time"] = time.perf_counter() - t0
    r["other"] = other.stop()
    rounds.append(r)
    quiet = [x for x in rounds if x["other"] <= args.max_other]
    if len(quiet) * args.chunk >= args.steps or (
        len(rounds) * args.chunk >= args.steps and time.perf_counter() > budget_end
    ):
      break

  use = quiet if len(quiet) * args.chunk >= args.steps / 2 else rounds
  others = sorted(x["other"] for x in rounds)
  print(
      f"rounds of {args.chunk}+{args.chunk} steps: {len(rounds)}, quiet (other processes <= "
      f"{args.max_other} cores): {len(quiet)}; others' use per round: median "
      f"{others[len(others) // 2]:.2f}, max {others[-1]:.2f} cores; load {bench_step.loadavg()}"
  )
  if use is rounds and len(quiet) < len(rounds):
    print("  WARNING: too few quiet rounds within --budget; the figures below include noisy ones")
  rates = {}
  for name, key in (("ours ", "ours"), ("torch", "torch")):
    t = sum(x[f"{key}_time"] for x in use)
    tokens = sum(x[f"{key}_tokens"] for x in use)
    padded_tokens = sum(x[f"{key}_padded"] for x in use)
    steps = len(use) * args.chunk
    rates[key] = tokens / t
    print(
        f"{name}: {steps} steps in {t:.1f} s = {1e3 * t / steps:.1f} ms/step; {tokens} real "
        f"tokens ({100 * tokens / padded_tokens:.0f}% of {padded_tokens} padded): "
        f"{tokens / t:.0f} real tokens/s"
    )
  print(f"last losses: ours {float(aux['loss']):.2f}, torch {float(loss):.2f}")
  print(f"ratio = our real tokens/s / torch real tokens/s = {rates['ours'] / rates['torch']:.2f}")


if __name__ == "__main__":
  main()
