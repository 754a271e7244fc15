"""Reading and writing Hugging Face T5 checkpoints (config.json + weights + tokenizer).

A checkpoint is a local directory or a hub id. Weights are read from, in this order,
``model.safetensors`` (or its sharded index), ``pytorch_model.bin`` (read without torch: the
zip/pickle format is parsed directly) or ``flax_model.msgpack``. Hub ids are downloaded with
``huggingface_hub.snapshot_download`` on a connected machine.
"""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from typing import Any

import numpy as np
from etils import epath

from t5vae_jax import t5 as t5_lib

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "flax_model.msgpack")
_HUB_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json", "*.json",
                 "spiece.model", "tokenizer*"]


class CheckpointError(ValueError):
  """A checkpoint cannot be found or read; the message names the path and what is missing."""


def resolve(name_or_path: str) -> epath.Path:
  """A local directory as is; otherwise a hub id, downloaded (config, weights, tokenizer)."""
  path = epath.Path(name_or_path)
  if path.exists():
    if not path.is_dir():
      raise CheckpointError(f"{name_or_path}: expected a checkpoint directory, found a file")
    return path
  if str(name_or_path).startswith(("/", ".", "gs://")) or str(name_or_path).count("/") > 1:
    raise CheckpointError(f"{name_or_path}: no such checkpoint directory")
  try:
    import huggingface_hub
    local = huggingface_hub.snapshot_download(repo_id=str(name_or_path),
                                              allow_patterns=_HUB_PATTERNS)
  except Exception as e:  # offline, unknown repo, auth...
    raise CheckpointError(
        f"{name_or_path}: not a local directory, and the hub download failed "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
        "Offline, pass a local checkpoint directory (config.json + model.safetensors "
        "or pytorch_model.bin + tokenizer files).") from None
  return epath.Path(local)


def load_config(directory) -> t5_lib.T5Config:
  directory = epath.Path(directory)
  cfg_file = directory / "config.json"
  if not cfg_file.exists():
    raise CheckpointError(f"{directory}: config.json is missing")
  try:
    raw = json.loads(cfg_file.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
  if raw.get("model_type", "t5") not in ("t5", "mt5"):
    raise CheckpointError(f"{cfg_file}: model_type {raw.get('model_type')!r} is not a T5")
  return t5_lib.T5Config.from_hf_dict(raw)


def load_state_dict(directory) -> dict[str, np.ndarray]:
  """The flat Hugging Face state dict (numpy) from the first weight file found."""
  directory = epath.Path(directory)
  for name in WEIGHT_FILES:
    file = directory / name
    if not file.exists():
      continue
    try:
      if name.endswith(".index.json"):
        shards = sorted(set(json.loads(file.read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
          state.update(_read_weight_file(directory / shard))
        return state
      return _read_weight_file(file)
    except CheckpointError:
      raise
    except Exception as e:
      raise CheckpointError(f"{file}: cannot read weights ({type(e).__name__}: {e})") from None
  raise CheckpointError(f"{directory}: no weights found; expected one of {', '.join(WEIGHT_FILES)}")


def _read_weight_file(file: epath.Path) -> dict[str, np.ndarray]:
  if not file.exists():
    raise CheckpointError(f"{file}: weight shard is missing")
  data = file.read_bytes()
  if file.name.endswith(".safetensors"):
    from safetensors.numpy import load
    return dict(load(data))
  if file.name.endswith(".bin"):
    return read_torch_zip(data)
  if file.name.endswith(".msgpack"):
    return _flax_msgpack_to_state_dict(data)
  raise CheckpointError(f"{file}: unknown weight format")


def load_t5(name_or_path: str) -> tuple[t5_lib.T5Config, dict]:
  """(config, params) of a Hugging Face T5 checkpoint, params as float32 numpy."""
  directory = resolve(name_or_path)
  config = load_config(directory)
  state = load_state_dict(directory)
  # transformers 5 writes tie_word_embeddings=True even for untied models; an lm_head that
  # differs from the shared embedding means the head is untied, whatever the config says.
  head = state.get("lm_head.weight")
  untied = head is not None and not np.array_equal(head, state["shared.weight"])
  import dataclasses
  config = dataclasses.replace(config, tie_word_embeddings=not untied)
  params = t5_lib.params_from_hf_state_dict(state, config)
  check_params(params, config, str(directory))
  return config, params


def check_params(params: dict, config: t5_lib.T5Config, where: str) -> None:
  """Compares param shapes with what ``config`` implies; names both on a mismatch."""
  import jax
  expected = jax.eval_shape(
      lambda: t5_lib.T5(config).init(jax.random.key(0), np.zeros((1, 2), np.int32),
                                     np.ones((1, 2), np.int32), np.zeros((1, 2), np.int32)))
  exp = {tuple(k.key for k in p): v.shape
         for p, v in jax.tree_util.tree_flatten_with_path(expected["params"])[0]}
  got = {tuple(k.key for k in p): v.shape
         for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  missing = sorted(set(exp) - set(got))
  unexpected = sorted(set(got) - set(exp))
  wrong = sorted(k for k in set(exp) & set(got) if exp[k] != got[k])
  if missing or unexpected or wrong:
    parts = []
    if missing:
      parts.append(f"missing {len(missing)} (e.g. {t5_lib.path_to_hf_key(missing[0])[0]})")
    if unexpected:
      parts.append(f"unexpected {len(unexpected)} (e.g. {t5_lib.path_to_hf_key(unexpected[0])[0]})")
    if wrong:
      k = wrong[0]
      parts.append(f"{len(wrong)} with wrong shape (e.g. {t5_lib.path_to_hf_key(k)[0]}: "
                   f"checkpoint {got[k]}, config.json implies {exp[k]})")
    raise CheckpointError(f"{where}: weights do not match config.json: " + "; ".join(parts))


def save_t5(directory, config: t5_lib.T5Config, params: dict, tokenizer=None) -> None:
  """Writes a Hugging Face-format directory: config.json, model.safetensors, tokenizer."""
  from safetensors.numpy import save
  directory = epath.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  state = t5_lib.hf_state_dict_from_params(params)
  if config.tie_word_embeddings:
    state.pop("lm_head.weight", None)
  hf = config.to_hf_dict()
  (directory / "config.json").write_text(json.dumps(hf, indent=2))
  (directory / "model.safetensors").write_bytes(save(state, metadata={"format": "pt"}))
  if tokenizer is not None:
    tokenizer.save_pretrained(str(directory))


def load_tokenizer(name_or_path):
  """The checkpoint's tokenizer through transformers (T5TokenizerFast / sentencepiece)."""
  directory = resolve(str(name_or_path))
  try:
    import transformers
    return transformers.AutoTokenizer.from_pretrained(str(directory))
  except Exception as e:
    raise CheckpointError(f"{directory}: cannot load a tokenizer ({type(e).__name__}: {e}); "
                          "expected spiece.model or tokenizer.json") from None


# --------------------------------------------------------------------------------------------
# pytorch_model.bin without torch: a zip holding ``<name>/data.pkl`` (the pickled state dict,
# tensors as persistent references to storages) and ``<name>/data/<key>`` (raw storage bytes).
# --------------------------------------------------------------------------------------------
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
  def __init__(self, name):
    self.name = name


def _rebuild_tensor(storage, offset, size, stride, *args):
  array, = storage
  if not size:
    return array[offset:offset + 1].reshape(())
  itemsize = array.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(array[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride))
  return np.array(view)


def _bfloat16_to_float32(raw: bytes) -> np.ndarray:
  bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
  return bits.view(np.float32)


class _TorchUnpickler(pickle.Unpickler):
  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive, self._prefix = archive, prefix

  def find_class(self, module, name):
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if module == "collections" and name == "OrderedDict":
      import collections
      return collections.OrderedDict
    if module == "torch._utils" and name == "_rebuild_parameter":
      return lambda data, requires_grad, hooks: data
    raise pickle.UnpicklingError(f"unsupported object {module}.{name} in pytorch_model.bin")

  def persistent_load(self, pid):
    kind, storage_type, key, _location, _numel = pid
    assert kind == "storage"
    raw = self._archive.read(f"{self._prefix}/data/{key}")
    dtype = _STORAGE_DTYPES[storage_type.name]
    if dtype == "bfloat16":
      return (_bfloat16_to_float32(raw),)
    return (np.frombuffer(raw, dtype),)


def read_torch_zip(data: bytes) -> dict[str, np.ndarray]:
  """Reads a state dict saved by ``torch.save`` (zip format, torch >= 1.6) into numpy."""
  archive = zipfile.ZipFile(io.BytesIO(data))
  pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")]
  if not pkl:
    raise CheckpointError("not a torch zip checkpoint (no data.pkl); legacy formats need torch")
  prefix = pkl[0][: -len("/data.pkl")]
  state = _TorchUnpickler(io.BytesIO(archive.read(pkl[0])), archive, prefix).load()
  return {k: np.asarray(v) for k, v in state.items()}


def _flax_msgpack_to_state_dict(data: bytes) -> dict[str, np.ndarray]:
  """Hugging Face's Flax T5 params (nested, 'block'/'0'/'layer'/'0') -> flat state dict."""
  from flax import serialization
  tree: Any = serialization.msgpack_restore(data)
  if "params" in tree and "shared" not in tree:
    tree = tree["params"]
  out = {}

  def walk(node, path):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(v, path + [k])
      return
    leaf = path[-1]
    value = np.asarray(node, np.float32)
    if leaf == "kernel":
      value = value.T
    out[".".join(path[:-1] + ["weight"])] = value
  walk(tree, [])
  return out
