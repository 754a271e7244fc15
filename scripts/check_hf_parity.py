"""Logits of a T5 checkpoint directory in our Flax T5 and in Hugging Face's PyTorch T5.

    python scripts/check_hf_parity.py runs/t5-ptb --text ../shared/data/ptb/valid.txt

Encodes the first --lines lines of --text with the checkpoint's tokenizer, runs both models
(teacher forcing, decoder input = the shifted input) and prints the largest absolute logit
difference; exits 1 when it exceeds --tolerance (the PTB study's acceptance: 1e-4).
"""

import argparse
import sys

import jax.numpy as jnp
import numpy as np


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("checkpoint", help="a Hugging Face T5 directory (or hub id)")
  parser.add_argument("--text", required=True, help="a text file, one sentence per line")
  parser.add_argument("--lines", type=int, default=16)
  parser.add_argument("--tolerance", type=float, default=1e-4)
  args = parser.parse_args()

  import torch
  import transformers
  from t5vae_jax import pretrained
  from t5vae_jax import t5 as t5_lib

  config, params = pretrained.load_t5(args.checkpoint)
  tokenizer = pretrained.load_tokenizer(args.checkpoint)
  with open(args.text, encoding="utf-8") as f:
    lines = [line.strip() for line, _ in zip(f, range(args.lines))]
  batch = tokenizer(lines, padding=True, return_tensors="np")
  ids = batch["input_ids"].astype(np.int32)
  mask = batch["attention_mask"].astype(np.int32)
  dec = np.asarray(t5_lib.shift_right(jnp.asarray(ids), config.decoder_start_token_id))
  ours = np.asarray(t5_lib.T5(config).apply({"params": params}, ids, mask, dec))
  hf = transformers.T5ForConditionalGeneration.from_pretrained(args.checkpoint).eval()
  with torch.no_grad():
    theirs = hf(
        input_ids=torch.from_numpy(ids).long(),
        attention_mask=torch.from_numpy(mask).long(),
        decoder_input_ids=torch.from_numpy(dec).long(),
    ).logits.numpy()
  diff = float(np.abs(ours - theirs).max())
  print(
      f"{args.checkpoint}: {ids.shape[0]} sentences x {ids.shape[1]} tokens; logits max abs "
      f"diff {diff:.2e} (largest |logit| {float(np.abs(theirs).max()):.1f}); tolerance "
      f"{args.tolerance:g}: {'ok' if diff <= args.tolerance else 'FAILED'}"
  )
  sys.exit(0 if diff <= args.tolerance else 1)


if __name__ == "__main__":
  main()
