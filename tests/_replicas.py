"""Tiny replicas of the public Hugging Face T5 checkpoints, each in its family's real layout.

The hub's checkpoints are not what transformers 5 writes, and each family
differs; a reader tested only on our own files would miss that. Each writer here produces a
directory with that family's files, key set, dtypes and config.json keys, at tiny shapes with
random weights (numpy, seeded: the same seed gives the same weights with or without torch):

  ``t5_2020``   t5-small/base/large (2020): config.json without ``feed_forward_proj``,
                ``tie_word_embeddings``, ``num_decoder_layers`` or
                ``relative_attention_max_distance``; weights with the tied copies
                ``encoder.embed_tokens.weight``, ``decoder.embed_tokens.weight`` and
                ``lm_head.weight`` and the unused
                ``decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight``;
                as model.safetensors, pytorch_model.bin and/or flax_model.msgpack.
  ``t5_v1_1``   google/t5-v1_1-*: gated-GELU, untied head, pytorch_model.bin (float32, float16
                or bfloat16 storages; optionally sharded with pytorch_model.bin.index.json) +
                flax_model.msgpack in Hugging Face Flax's module tree + tf_model.h5 (a
                placeholder that is not HDF5: reading it fails).
  ``flan_t5``   google/flan-t5-*: gated-GELU, untied head, model.safetensors (float32 or
                bfloat16), or shards with model.safetensors.index.json as the large sizes have.

Key names are written out here from Hugging Face's PyTorch and Flax module trees (modeling_t5.py,
modeling_flax_t5.py of transformers 4.x), not derived from our reader. ``torch`` is needed only
for pytorch_model.bin (written with ``torch.save`` of a real state dict).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

# Shapes: tiny, but every dimension distinct so that a transposed or swapped tensor fails.
SHAPE = dict(
    vocab_size=96,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
)
DECODER_LAYERS_V1_1 = 3  # v1.1 / flan: num_decoder_layers given (and different here)
TF_PLACEHOLDER = b"not HDF5: a stand-in for tf_model.h5, which must never be read\n"


# ----------------------------------------------------------------------------- config.json
def config_2020(vocab_size: int = SHAPE["vocab_size"]) -> dict:
  """config.json as t5-small's of 2020 (transformers 2.x): no feed_forward_proj, no
  tie_word_embeddings, no num_decoder_layers, no relative_attention_max_distance."""
  s = dict(SHAPE, vocab_size=vocab_size)
  return {
      "architectures": ["T5WithLMHeadModel"],
      "d_ff": s["d_ff"],
      "d_kv": s["d_kv"],
      "d_model": s["d_model"],
      "decoder_start_token_id": 0,
      "dropout_rate": 0.1,
      "eos_token_id": 1,
      "initializer_factor": 1.0,
      "is_encoder_decoder": True,
      "layer_norm_epsilon": 1e-06,
      "model_type": "t5",
      "n_positions": 512,
      "num_heads": s["num_heads"],
      "num_layers": s["num_layers"],
      "output_past": True,
      "pad_token_id": 0,
      "relative_attention_num_buckets": s["relative_attention_num_buckets"],
      "task_specific_params": {
          "summarization": {
              "early_stopping": True,
              "length_penalty": 2.0,
              "max_length": 200,
              "min_length": 30,
              "no_repeat_ngram_size": 3,
              "num_beams": 4,
              "prefix": "summarize: ",
          }
      },
      "vocab_size": s["vocab_size"],
  }


def config_v1_1() -> dict:
  """config.json as google/t5-v1_1-small's (transformers 4.x era)."""
  return {
      "architectures": ["T5ForConditionalGeneration"],
      "d_ff": SHAPE["d_ff"],
      "d_kv": SHAPE["d_kv"],
      "d_model": SHAPE["d_model"],
      "decoder_start_token_id": 0,
      "dropout_rate": 0.1,
      "eos_token_id": 1,
      "feed_forward_proj": "gated-gelu",
      "initializer_factor": 1.0,
      "is_encoder_decoder": True,
      "layer_norm_epsilon": 1e-06,
      "model_type": "t5",
      "num_decoder_layers": DECODER_LAYERS_V1_1,
      "num_heads": SHAPE["num_heads"],
      "num_layers": SHAPE["num_layers"],
      "output_past": True,
      "pad_token_id": 0,
      "relative_attention_num_buckets": SHAPE["relative_attention_num_buckets"],
      "tie_word_embeddings": False,
      "vocab_size": SHAPE["vocab_size"],
  }


def config_flan(torch_dtype: str = "float32") -> dict:
  """config.json as google/flan-t5-small's (transformers 4.23)."""
  return dict(
      config_v1_1(),
      dense_act_fn="gelu_new",
      is_gated_act=True,
      n_positions=512,
      relative_attention_max_distance=128,
      torch_dtype=torch_dtype,
      transformers_version="4.23.1",
      use_cache=True,
  )


# ----------------------------------------------------------------------------- state dicts
def _linear(rng, out_features, in_features):
  return rng.normal(0, in_features**-0.5, (out_features, in_features)).astype(np.float32)


def _norm(rng, d):
  return (1.0 + 0.2 * rng.normal(size=(d,))).astype(np.float32)


def torch_state_dict(
    config: dict, seed: int, *, legacy_cross_bias: bool, embed_copies: bool = True
) -> dict[str, np.ndarray]:
  """Hugging Face PyTorch T5 keys (T5ForConditionalGeneration.state_dict()), float32 numpy."""
  rng = np.random.default_rng(seed)
  d, dkv, h, ff = config["d_model"], config["d_kv"], config["num_heads"], config["d_ff"]
  inner, buckets = h * dkv, config["relative_attention_num_buckets"]
  gated = config.get("feed_forward_proj", "relu").startswith("gated")
  tied = config.get("tie_word_embeddings", True) is not False
  state = {"shared.weight": rng.normal(0, 1.0, (config["vocab_size"], d)).astype(np.float32)}
  layers = {
      "encoder": config["num_layers"],
      "decoder": config.get("num_decoder_layers") or config["num_layers"],
  }
  for stack, n in layers.items():
    if embed_copies:
      state[f"{stack}.embed_tokens.weight"] = state["shared.weight"]
    for i in range(n):
      b = f"{stack}.block.{i}.layer"
      attentions = [("0", "SelfAttention")] + (
          [("1", "EncDecAttention")] if stack == "decoder" else []
      )
      for j, name in attentions:
        for proj in ("q", "k", "v"):
          state[f"{b}.{j}.{name}.{proj}.weight"] = _linear(rng, inner, d)
        state[f"{b}.{j}.{name}.o.weight"] = _linear(rng, d, inner)
        if i == 0 and (name == "SelfAttention" or legacy_cross_bias):
          state[f"{b}.{j}.{name}.relative_attention_bias.weight"] = rng.normal(
              0, 0.5, (buckets, h)
          ).astype(np.float32)
        state[f"{b}.{j}.layer_norm.weight"] = _norm(rng, d)
      f = str(len(attentions))
      if gated:
        state[f"{b}.{f}.DenseReluDense.wi_0.weight"] = _linear(rng, ff, d)
        state[f"{b}.{f}.DenseReluDense.wi_1.weight"] = _linear(rng, ff, d)
      else:
        state[f"{b}.{f}.DenseReluDense.wi.weight"] = _linear(rng, ff, d)
      state[f"{b}.{f}.DenseReluDense.wo.weight"] = _linear(rng, d, ff)
      state[f"{b}.{f}.layer_norm.weight"] = _norm(rng, d)
    state[f"{stack}.final_layer_norm.weight"] = _norm(rng, d)
  state["lm_head.weight"] = (
      state["shared.weight"]
      if tied
      else rng.normal(0, d**-0.5, (config["vocab_size"], d)).astype(np.float32)
  )
  return state


def flax_params(state: dict[str, np.ndarray]) -> dict:
  """The same weights in Hugging Face Flax T5's tree (FlaxT5ForConditionalGenerationModule):
  nn.Dense ``kernel`` = torch weight transposed, nn.Embed ``embedding``, layer norm ``weight``;
  no embed_tokens copies (the stacks share the ``shared`` module), no unused cross bias."""
  tree: dict = {}
  for key, value in state.items():
    if key.endswith("embed_tokens.weight") or "EncDecAttention.relative_attention_bias" in key:
      continue
    *path, owner, _ = key.split(".")
    if owner in ("shared", "relative_attention_bias"):
      leaf, value = "embedding", value
    elif owner in ("q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1", "lm_head"):
      leaf, value = "kernel", np.ascontiguousarray(value.T)
    else:  # layer_norm, final_layer_norm
      leaf = "weight"
    node = tree
    for p in path + [owner]:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def round_to(state: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
  """The weights as a checkpoint of ``dtype`` holds them, back in float32 (for references)."""
  if dtype == "float32":
    return state
  import ml_dtypes

  np_dtype = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
  return {k: v.astype(np_dtype).astype(np.float32) for k, v in state.items()}


# ----------------------------------------------------------------------------- file writers
def _safetensors_bytes(state: dict[str, np.ndarray], dtype: str) -> bytes:
  """A safetensors file written by hand (safetensors.numpy has no bfloat16): F32 or BF16."""
  header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
  for name, value in state.items():
    if dtype == "bfloat16":
      import ml_dtypes

      raw, code = np.ascontiguousarray(value.astype(ml_dtypes.bfloat16)).tobytes(), "BF16"
    else:
      raw, code = np.ascontiguousarray(value.astype("<f4")).tobytes(), "F32"
    header[name] = {
        "dtype": code,
        "shape": list(value.shape),
        "data_offsets": [offset, offset + len(raw)],
    }
    chunks.append(raw)
    offset += len(raw)
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
  return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def _split(state: dict, shards: int) -> list[dict]:
  keys = list(state)
  size = -(-len(keys) // shards)
  return [{k: state[k] for k in keys[i : i + size]} for i in range(0, len(keys), size)]


def write_safetensors(
    directory: pathlib.Path, state: dict, *, dtype="float32", shards: int = 1
) -> None:
  """model.safetensors, or ``model-0000i-of-0000n.safetensors`` + model.safetensors.index.json."""
  if shards == 1:
    (directory / "model.safetensors").write_bytes(_safetensors_bytes(state, dtype))
    return
  weight_map = {}
  parts = _split(state, shards)
  for i, part in enumerate(parts, 1):
    name = f"model-{i:05d}-of-{len(parts):05d}.safetensors"
    (directory / name).write_bytes(_safetensors_bytes(part, dtype))
    weight_map.update({k: name for k in part})
  size = sum(v.size for v in state.values()) * (2 if dtype == "bfloat16" else 4)
  (directory / "model.safetensors.index.json").write_text(
      json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}, indent=2)
  )


def write_pytorch_bin(
    directory: pathlib.Path, state: dict, *, dtype="float32", shards: int = 1
) -> None:
  """pytorch_model.bin with torch.save (tied keys share one storage, as in a real save), or
  ``pytorch_model-0000i-of-0000n.bin`` + pytorch_model.bin.index.json."""
  import torch

  torch_dtype = getattr(torch, dtype)
  tensors: dict = {}
  by_id: dict = {}
  for name, value in state.items():
    if id(value) not in by_id:
      by_id[id(value)] = torch.from_numpy(np.array(value)).to(torch_dtype)
    tensors[name] = by_id[id(value)]
  if shards == 1:
    torch.save(tensors, directory / "pytorch_model.bin")
    return
  weight_map = {}
  parts = _split(tensors, shards)
  for i, part in enumerate(parts, 1):
    name = f"pytorch_model-{i:05d}-of-{len(parts):05d}.bin"
    torch.save(part, directory / name)
    weight_map.update({k: name for k in part})
  (directory / "pytorch_model.bin.index.json").write_text(
      json.dumps(
          {
              "metadata": {"total_size": sum(t.numel() * t.element_size() for t in by_id.values())},
              "weight_map": weight_map,
          },
          indent=2,
      )
  )


def write_flax_msgpack(directory: pathlib.Path, state: dict, *, wrap_params=False) -> None:
  """flax_model.msgpack as Hugging Face's FlaxPreTrainedModel.save_pretrained wrote it
  (``flax.serialization.to_bytes`` of the bare params), or wrapped in {"params": ...}."""
  from flax import serialization

  tree = flax_params(state)
  if wrap_params:
    tree = {"params": tree}
  (directory / "flax_model.msgpack").write_bytes(serialization.to_bytes(tree))


def _write_config(directory: pathlib.Path, config: dict) -> pathlib.Path:
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(config, indent=2))
  return directory


def copy_tokenizer(directory, tokenizer_dir) -> pathlib.Path:
  """Puts the tokenizer files of ``tokenizer_dir`` (spiece.model, tokenizer.json, ...) in."""
  directory = pathlib.Path(directory)
  for file in pathlib.Path(tokenizer_dir).iterdir():
    if file.is_file():
      (directory / file.name).write_bytes(file.read_bytes())
  return directory


# ----------------------------------------------------------------------------- families
def t5_2020(
    directory,
    *,
    weights=("safetensors",),
    seed: int = 0,
    vocab_size: int = SHAPE["vocab_size"],
    other_formats: bool = False,
    tokenizer_dir=None,
) -> pathlib.Path:
  """t5-small's 2020 layout: ``weights`` any of "safetensors", "bin", "msgpack" (Hugging Face
  Flax's tree); ``other_formats``: also tf_model.h5 and rust_model.ot placeholders (the hub repo
  holds both; no reader may touch them). Returns the directory."""
  config = config_2020(vocab_size)
  directory = _write_config(directory, config)
  state = torch_state_dict(config, seed, legacy_cross_bias=True)
  if "safetensors" in weights:
    # safetensors cannot hold shared storages: the hub's conversion wrote the copies out.
    write_safetensors(directory, {k: np.array(v) for k, v in state.items()})
  if "bin" in weights:
    write_pytorch_bin(directory, state)
  if "msgpack" in weights:
    write_flax_msgpack(directory, state)
  if other_formats:
    (directory / "tf_model.h5").write_bytes(TF_PLACEHOLDER)
    (directory / "rust_model.ot").write_bytes(b"not a rust-bert file: must never be read\n")
  if tokenizer_dir is not None:
    copy_tokenizer(directory, tokenizer_dir)
  return directory


def t5_v1_1(
    directory,
    *,
    seed: int = 1,
    bin_dtype: str = "float32",
    bin_shards: int = 1,
    files=("bin", "msgpack"),
    wrap_params: bool = False,
    tokenizer_dir=None,
) -> pathlib.Path:
  """google/t5-v1_1-*'s layout: pytorch_model.bin (+ index when sharded), flax_model.msgpack,
  tf_model.h5 placeholder. ``files`` picks which of "bin", "msgpack" to write."""
  config = config_v1_1()
  directory = _write_config(directory, config)
  state = torch_state_dict(config, seed, legacy_cross_bias=False)
  if "bin" in files:
    write_pytorch_bin(directory, state, dtype=bin_dtype, shards=bin_shards)
  if "msgpack" in files:
    write_flax_msgpack(directory, round_to(state, bin_dtype), wrap_params=wrap_params)
  (directory / "tf_model.h5").write_bytes(TF_PLACEHOLDER)
  if tokenizer_dir is not None:
    copy_tokenizer(directory, tokenizer_dir)
  return directory


def flan_t5(
    directory, *, seed: int = 2, dtype: str = "float32", shards: int = 1, tokenizer_dir=None
) -> pathlib.Path:
  """google/flan-t5-*'s layout: model.safetensors (``dtype`` float32 or bfloat16), sharded with
  model.safetensors.index.json when ``shards`` > 1."""
  config = config_flan(dtype)
  directory = _write_config(directory, config)
  state = torch_state_dict(config, seed, legacy_cross_bias=False)
  write_safetensors(directory, state, dtype=dtype, shards=shards)
  if tokenizer_dir is not None:
    copy_tokenizer(directory, tokenizer_dir)
  return directory


def reference_state(family: str, *, dtype: str = "float32", seed=None) -> dict[str, np.ndarray]:
  """The float32 weights a replica of ``family`` holds (after rounding to ``dtype``)."""
  config = {"t5_2020": config_2020, "t5_v1_1": config_v1_1, "flan_t5": config_flan}[family]()
  seed = {"t5_2020": 0, "t5_v1_1": 1, "flan_t5": 2}[family] if seed is None else seed
  state = torch_state_dict(config, seed, legacy_cross_bias=family == "t5_2020")
  return round_to(state, dtype)


FAMILIES = {"t5_2020": t5_2020, "t5_v1_1": t5_v1_1, "flan_t5": flan_t5}
