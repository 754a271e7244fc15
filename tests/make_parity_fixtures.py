"""Writes the golden parity fixtures: tiny random Hugging Face T5 checkpoints and their outputs.

Run with torch installed (``pip install -r requirements-test.txt``):

    python tests/make_parity_fixtures.py            # writes tests/fixtures/

For each variant (``t5_v1_0``: ReLU, tied head, scaled decoder output; ``t5_v1_1``: gated-GELU,
untied head, no scaling) it saves the checkpoint as Hugging Face does (config.json +
model.safetensors, and pytorch_model.bin) and ``golden.npz`` with what Hugging Face's PyTorch
T5 computes on fixed padded inputs:
  encoder_hidden: final encoder states;  logits: LM logits with ordinary cross-attention;
  prefix_logits: LM logits of the decoder alone with a one-slot self-attention prefix per layer
  (the released T5-VAE code's injection), built with a DynamicCache holding one key/value slot per layer.
The live tests in ``tests/test_t5.py`` recompute the same numbers with torch when it is installed.

``replicas/golden.npz`` holds Hugging Face's logits for the hub-layout replicas of
``tests/_replicas.py`` (one entry per family and dtype; the replicas themselves are rebuilt from
their seeds by the tests), so ``tests/test_pretrained.py`` checks them without torch too::

    python tests/make_parity_fixtures.py replicas   # writes only tests/fixtures/replicas/
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

FIXTURES = pathlib.Path(__file__).parent / "fixtures"

VARIANTS = {
    "t5_v1_0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "t5_v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}
TINY = dict(
    vocab_size=96,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=2,
    num_decoder_layers=3,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
    dropout_rate=0.0,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)


def fixed_inputs():
  """Padded encoder inputs, targets and a prefix; deterministic, no torch needed."""
  rng = np.random.default_rng(1234)
  batch, src_len, tgt_len = 3, 21, 19
  lengths = np.array([21, 13, 6])
  input_ids = rng.integers(2, TINY["vocab_size"], (batch, src_len)).astype(np.int64)
  attention_mask = (np.arange(src_len)[None] < lengths[:, None]).astype(np.int64)
  input_ids[np.arange(batch), lengths - 1] = 1  # EOS
  input_ids = np.where(attention_mask > 0, input_ids, 0)
  targets = rng.integers(2, TINY["vocab_size"], (batch, tgt_len)).astype(np.int64)
  decoder_input_ids = np.concatenate([np.zeros((batch, 1), np.int64), targets[:, :-1]], 1)
  n_dec = TINY["num_decoder_layers"]
  prefix = rng.normal(size=(batch, n_dec, TINY["num_heads"], 1, TINY["d_kv"])).astype(np.float32)
  return dict(
      input_ids=input_ids,
      attention_mask=attention_mask,
      decoder_input_ids=decoder_input_ids,
      prefix=prefix,
  )


def hf_model(variant: str, seed: int = 0):
  import torch
  import transformers

  torch.manual_seed(seed)
  cfg = transformers.T5Config(**TINY, **VARIANTS[variant])
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  if not VARIANTS[variant]["tie_word_embeddings"]:
    # transformers 5 ties the head at init; a real v1.1 checkpoint has its own lm_head.
    with torch.no_grad():
      model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * 0.5)
  return model


def load_hf_model(directory):
  import transformers

  return transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()


def hf_outputs(model, inputs) -> dict[str, np.ndarray]:
  """What Hugging Face's PyTorch T5 computes on ``inputs`` (float32, eval mode)."""
  import torch
  from transformers.cache_utils import DynamicCache, EncoderDecoderCache

  t = {k: torch.from_numpy(v) for k, v in inputs.items()}
  with torch.no_grad():
    out = model(
        input_ids=t["input_ids"],
        attention_mask=t["attention_mask"],
        decoder_input_ids=t["decoder_input_ids"],
    )
    encoder_hidden = model.encoder(
        input_ids=t["input_ids"], attention_mask=t["attention_mask"]
    ).last_hidden_state
    self_cache = DynamicCache()
    for layer in range(t["prefix"].shape[1]):
      kv = t["prefix"][:, layer]  # (B, H, 1, d_kv)
      self_cache.update(kv, kv, layer)
    cache = EncoderDecoderCache(self_cache, DynamicCache())
    dec = model.decoder(
        input_ids=t["decoder_input_ids"], cache=cache, use_cache=True, encoder_hidden_states=None
    ).last_hidden_state
    if model.config.scale_decoder_outputs:
      dec = dec * model.config.d_model**-0.5
    prefix_logits = model.lm_head(dec)
  return dict(
      encoder_hidden=encoder_hidden.numpy(),
      logits=out.logits.numpy(),
      prefix_logits=prefix_logits.numpy(),
  )


def write_checkpoint(model, directory: pathlib.Path) -> None:
  """config.json + model.safetensors (Hugging Face's own writer) + pytorch_model.bin."""
  import torch

  directory.mkdir(parents=True, exist_ok=True)
  model.save_pretrained(directory)  # safetensors
  state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
  torch.save(state, directory / "pytorch_model.bin")
  config = json.loads((directory / "config.json").read_text())
  if not model.config.scale_decoder_outputs:
    # Write the config as the hub's v1.1 checkpoints have it (transformers 4.x era): untied,
    # no ``scale_decoder_outputs`` key. Both libraries must infer "no scaling" from it.
    config["tie_word_embeddings"] = False
    config.pop("scale_decoder_outputs", None)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
  print(
      f"{directory.name}: tie_word_embeddings={config.get('tie_word_embeddings')} "
      f"scale_decoder_outputs={config.get('scale_decoder_outputs')}"
  )


def main(out_dir: pathlib.Path = FIXTURES) -> None:
  inputs = fixed_inputs()
  for variant in VARIANTS:
    directory = out_dir / variant
    write_checkpoint(hf_model(variant), directory)
    model = load_hf_model(directory)  # outputs of the checkpoint as written, reloaded
    np.savez(directory / "golden.npz", **inputs, **hf_outputs(model, inputs))
    print(f"wrote {directory}")


# (family, dtype) of the replicas whose Hugging Face logits are kept; writer keywords for each.
REPLICA_GOLDEN = {
    "t5_2020/float32": ("t5_2020", dict(weights=("safetensors",))),
    "t5_v1_1/float32": ("t5_v1_1", dict(files=("bin",))),
    "t5_v1_1/float16": ("t5_v1_1", dict(files=("bin",), bin_dtype="float16")),
    "t5_v1_1/bfloat16": ("t5_v1_1", dict(files=("bin",), bin_dtype="bfloat16")),
    "flan_t5/float32": ("flan_t5", dict()),
    "flan_t5/bfloat16": ("flan_t5", dict(dtype="bfloat16")),
}


def replica_inputs() -> dict[str, np.ndarray]:
  """Small padded inputs for the replicas (ids below their vocab_size)."""
  rng = np.random.default_rng(99)
  lengths = np.array([9, 5])
  input_ids = rng.integers(2, 96, (2, 9)).astype(np.int64)
  attention_mask = (np.arange(9)[None] < lengths[:, None]).astype(np.int64)
  input_ids[np.arange(2), lengths - 1] = 1
  input_ids = np.where(attention_mask > 0, input_ids, 0)
  decoder_input_ids = np.concatenate([np.zeros((2, 1), np.int64), rng.integers(2, 96, (2, 6))], 1)
  return dict(
      input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids
  )


def hf_replica_logits(directory, inputs) -> np.ndarray:
  """Hugging Face's float32 logits for a replica directory (bfloat16/float16 files upcast)."""
  import torch
  import transformers

  model = transformers.T5ForConditionalGeneration.from_pretrained(
      directory, dtype=torch.float32
  ).eval()
  with torch.no_grad():
    out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
  return out.logits.numpy()


def write_replica_golden(out_dir: pathlib.Path = FIXTURES / "replicas") -> None:
  import tempfile
  import _replicas

  inputs = replica_inputs()
  golden = dict(inputs)
  with tempfile.TemporaryDirectory() as tmp:
    for name, (family, kwargs) in REPLICA_GOLDEN.items():
      directory = _replicas.FAMILIES[family](pathlib.Path(tmp) / name.replace("/", "_"), **kwargs)
      golden[f"{name}/logits"] = hf_replica_logits(directory, inputs)
      dtype = name.split("/")[1]
      # Fingerprint of the weights: regenerated replicas must hold what these logits came from.
      golden[f"{name}/weights_sum"] = np.float64(
          sum(
              np.abs(v).astype(np.float64).sum()
              for v in _replicas.reference_state(family, dtype=dtype).values()
          )
      )
  out_dir.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(out_dir / "golden.npz", **golden)
  print(f"wrote {out_dir / 'golden.npz'}")


if __name__ == "__main__":
  sys.path.insert(0, str(pathlib.Path(__file__).parent))
  if sys.argv[1:] == ["replicas"]:
    write_replica_golden()
  else:
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURES)
    write_replica_golden(
        pathlib.Path(sys.argv[1]) / "replicas" if len(sys.argv) > 1 else FIXTURES / "replicas"
    )
