"""Does a pretrained T5 fill masked spans from their context? A check before finetuning a VAE.

    python scripts/check_context_use.py runs/t5-ptb --text ../shared/data/ptb/valid.txt

Span-corrupts the first --lines lines of --text (T5's objective, --noise_density) and prints the
loss on the masked words, split into the first word of each span and the later ones, for two
encoder inputs: the sentence's own and another sentence's (rows rolled by one); next to them,
the unigram loss of those words under --text's own token frequencies. A model that
uses its encoder loses clearly more with another sentence's input; one that sits at the
unigram loss has learnt nothing beyond word frequencies.
"""

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("checkpoint", help="a Hugging Face T5 directory (or hub id)")
  parser.add_argument("--text", required=True, help="a text file, one sentence per line")
  parser.add_argument("--lines", type=int, default=512)
  parser.add_argument("--noise_density", type=float, default=0.15)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  import jax
  from t5vae_jax import losses
  from t5vae_jax import span_corruption as corruption
  from t5vae_jax import pretrained
  from t5vae_jax import t5 as t5_lib

  config, params = pretrained.load_t5(args.checkpoint)
  tokenizer = pretrained.load_tokenizer(args.checkpoint)
  lines = corruption.tokenize_lines(tokenizer, args.text)
  spec = corruption.CorruptionSpec(
      noise_density=args.noise_density,
      first_sentinel_id=corruption.sentinel_ids(tokenizer, 100),
      eos_id=tokenizer.eos_token_id,
      pad_id=tokenizer.pad_token_id,
  )
  data = corruption.SpanCorruptionData(
      lines[: args.lines], mode="lines", max_len=128, spec=spec, seed=args.seed, shuffle=False
  )
  batch = data.batch_from(range(data.num_examples))
  model = t5_lib.T5(config)

  @jax.jit
  def token_losses(input_ids, attention_mask):
    dec = t5_lib.shift_right(batch["targets"], config.decoder_start_token_id)
    logits = model.apply({"params": params}, input_ids, attention_mask, dec)
    return losses.token_cross_entropy(logits, batch["targets"])

  span = batch["span_mask"] > 0
  first = span & np.concatenate([np.ones_like(span[:, :1]), ~span[:, :-1]], axis=1)
  later = span & ~first
  own = np.asarray(token_losses(batch["input_ids"], batch["attention_mask"]))
  other = np.asarray(
      token_losses(
          np.roll(batch["input_ids"], 1, axis=0), np.roll(batch["attention_mask"], 1, axis=0)
      )
  )
  unigram = corruption.unigram_neg_log_probs(
      np.concatenate(lines), batch["targets"], config.vocab_size
  )
  print(
      f"{args.checkpoint}: {data.num_examples} lines of {args.text}, noise "
      f"{args.noise_density:g}; loss (nats) on the masked words"
  )
  print(f"{'words':<14}{'count':>7}{'own input':>11}{'other input':>13}{'unigram':>9}")
  for name, sel in (("first of span", first), ("later in span", later), ("all", span)):
    print(
        f"{name:<14}{int(sel.sum()):>7}{own[sel].mean():>11.3f}{other[sel].mean():>13.3f}"
        f"{unigram[sel].mean():>9.3f}"
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
