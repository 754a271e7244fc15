"""Reading and writing Hugging Face T5 checkpoints (config.json + weights + tokenizer).

A checkpoint is a local directory or a hub id. Weights are read from, in this order,
``model.safetensors`` (or its sharded index), ``pytorch_model.bin`` (or its index; read without
torch: the zip/pickle format is parsed directly) or ``flax_model.msgpack`` (Hugging Face Flax's
layout); ``tf_model.h5`` is never read. Hub ids (``hub.is_hub_id``) are downloaded into the
Hugging Face cache on a connected machine: config, tokenizer and one weight format (``resolve``).

The public checkpoints are not laid out the way transformers 5 writes them, and each family
differs: the 2020 ``t5-small/base/large`` carry a cross-attention
``relative_attention_bias`` that Hugging Face's T5 ignores, plus tied copies of the embedding;
``google/t5-v1_1-*`` hold no safetensors; ``google/flan-t5-*`` hold bfloat16 shards. So the
readers here take every dtype (bfloat16 included: ``safetensors.numpy`` cannot), read
safetensors tensor by tensor from a memory map rather than whole files, and drop exactly the
keys Hugging Face drops (one log line says which); any other unknown or missing key is an error.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import pickle
import zipfile
from typing import Any

import numpy as np
from absl import logging
from etils import epath

from t5vae_jax import hub
from t5vae_jax import t5 as t5_lib
from t5vae_jax import errors
from t5vae_jax.errors import UserError

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "flax_model.msgpack",
)


class CheckpointError(UserError, ValueError):
  """A checkpoint cannot be found or read; the message names the path and what is missing."""


# What resolve() fetches of a hub repo: config.json, generation_config.json and the tokenizer
# files that the repo has, and ONE weight format, the first of these the repo has: safetensors
# (single or sharded), flax_model.msgpack, pytorch_model.bin (single or sharded); both of the
# first two hold no pickle. tf_model.h5, rust_model.ot and onnx/ are never fetched (the 2020
# t5-small repo holds all of them: six copies of the same weights).
_HUB_WEIGHT_CHOICES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "flax_model.msgpack",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_HUB_SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "spiece.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
_HUB_SHARD_DOWNLOADS = 8  # shards fetched at once, as huggingface_hub's snapshot_download


def resolve(name_or_path: str) -> epath.Path:
  """A local directory as is (``~`` expanded, gs:// through etils); a hub id (``hub.is_hub_id``)
  downloaded into the Hugging Face cache (see ``_HUB_WEIGHT_CHOICES``) and its snapshot folder
  returned. Offline (HF_HUB_OFFLINE=1, or a hub that does not answer) a hub id is read from the
  cache."""
  name = str(name_or_path)
  if hub.is_hub_id(name):
    return _download_from_hub(name)
  local = hub.local_path(name)
  path = epath.Path(local)
  if not path.exists():
    where = "" if hub.is_remote(local) else f" ({os.path.abspath(local)})"
    raise CheckpointError(f"{name}: no such checkpoint directory{where}")
  if not path.is_dir():
    raise CheckpointError(f"{name}: expected a checkpoint directory, found a file")
  return path


def hub_weight_file(repo: str, repo_files) -> str:
  """The one weight file (or shard index) of ``repo`` to fetch: the first of
  ``_HUB_WEIGHT_CHOICES`` among ``repo_files``."""
  present = set(repo_files)
  for name in _HUB_WEIGHT_CHOICES:
    if name in present:
      return name
  raise CheckpointError(
      f"{repo}: the hub repo holds none of the weight files this loader reads "
      f"({', '.join(_HUB_WEIGHT_CHOICES)}); it holds "
      f"{', '.join(sorted(present)) or 'no files'}"
  )


def _download_from_hub(repo: str) -> epath.Path:
  import concurrent.futures
  import huggingface_hub

  try:
    info = huggingface_hub.HfApi().model_info(repo, timeout=hub.HUB_TIMEOUT_S)
  except Exception as e:  # offline, no answer, unknown or private repo...: _hub_error sorts
    if _hub_unreachable(e):
      return _from_hub_cache(repo, e)
    raise _hub_error(repo, e) from None
  repo_files = [sibling.rfilename for sibling in info.siblings or ()]
  weights = hub_weight_file(repo, repo_files)
  if "config.json" not in repo_files:
    raise CheckpointError(
        f"{repo}: the hub repo has no config.json; it holds " f"{', '.join(sorted(repo_files))}"
    )

  def fetch(filename: str) -> str:
    return huggingface_hub.hf_hub_download(repo, filename, etag_timeout=hub.HUB_TIMEOUT_S)

  try:
    fetched = [fetch(name) for name in _HUB_SIDE_FILES if name in repo_files] + [fetch(weights)]
    if weights.endswith(".index.json"):
      shards = _index_shards(repo, fetched[-1], repo_files)
      with concurrent.futures.ThreadPoolExecutor(_HUB_SHARD_DOWNLOADS) as pool:
        fetched += list(pool.map(fetch, shards))
  except CheckpointError:
    raise
  except Exception as e:  # gated, a connection lost midway...
    raise _hub_error(repo, e) from None
  snapshots = {os.path.dirname(file) for file in fetched}
  if len(snapshots) != 1:  # each file is stored under the commit the hub named for it
    raise CheckpointError(f"{repo}: the repo changed on the hub during the download; run again")
  return epath.Path(snapshots.pop())


def _index_shards(repo: str, index_file: str, repo_files) -> list[str]:
  """The shard files a ``*.index.json`` names; all must be in the repo."""
  index_name = os.path.basename(index_file)
  try:
    shards = sorted(set(json.loads(epath.Path(index_file).read_text())["weight_map"].values()))
  except Exception as e:  # not JSON, no weight_map
    raise CheckpointError(
        f"{repo}: {index_name} is not a shard index "
        f"({type(e).__name__}: {errors.first_line(e)})"
    ) from None
  missing = [shard for shard in shards if shard not in repo_files]
  if missing:
    raise CheckpointError(
        f"{repo}: {index_name} names {len(missing)} shard(s) the hub repo "
        f"lacks: {', '.join(missing)}"
    )
  return shards


def _from_hub_cache(repo: str, error: Exception) -> epath.Path:
  """The cached snapshot of ``repo`` (what ``resolve`` fetched before) when the hub cannot be
  asked; ``error`` (why not) in the message when the cache does not hold it complete."""
  import huggingface_hub

  config = huggingface_hub.try_to_load_from_cache(repo, "config.json")
  if isinstance(config, str):
    snapshot = os.path.dirname(config)
    try:
      weights = hub_weight_file(repo, os.listdir(snapshot))
      shards = (
          [weights]
          if not weights.endswith(".index.json")
          else _index_shards(repo, os.path.join(snapshot, weights), os.listdir(snapshot))
      )
      if all(os.path.exists(os.path.join(snapshot, shard)) for shard in shards):
        return epath.Path(snapshot)
    except CheckpointError:
      pass
  raise _hub_error(repo, error) from None


def _hub_unreachable(error: Exception) -> bool:
  """Offline mode, or no (timely) answer: the cases where the cache may stand in."""
  import httpx2  # huggingface_hub's HTTP client
  from huggingface_hub import errors as hf_errors

  return isinstance(error, (hf_errors.OfflineModeIsEnabled, httpx2.TransportError))


def _hub_error(repo: str, error: Exception) -> CheckpointError:
  """One line for a failed hub look-up or download of ``repo``: what the hub said, what to do."""
  import httpx2
  from huggingface_hub import constants
  from huggingface_hub import errors as hf_errors

  endpoint = constants.ENDPOINT
  response = getattr(error, "response", None)
  status = getattr(response, "status_code", None)
  code = response.headers.get("X-Error-Code") if response is not None else None
  said = f"HTTP {status}" + (f" {code}" if code else "")
  local = "pass a local checkpoint directory (config.json, weights, tokenizer files)"
  not_cached = (
      f"; it is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) either: "
      f"download it once on a connected machine with the same HF_HOME, or {local}"
  )
  if isinstance(error, hf_errors.OfflineModeIsEnabled):
    why = (hub.offline_reason or "the hub is not asked (HF_HUB_OFFLINE=1)") + not_cached
  elif isinstance(error, httpx2.TimeoutException):
    why = (
        f"the hub ({endpoint}) did not answer within {hub.HUB_TIMEOUT_S:g} s "
        f"(T5VAE_HUB_TIMEOUT)" + not_cached
    )
  elif isinstance(error, httpx2.TransportError):
    why = (
        f"the hub ({endpoint}) cannot be reached ({type(error).__name__}: "
        f"{errors.first_line(error)})" + not_cached
    )
  elif isinstance(error, hf_errors.GatedRepoError):
    why = (
        f"the hub repo is gated ({said}): accept its terms on {endpoint}/{repo} and log in "
        f"(`hf auth login` or HF_TOKEN), or {local}"
    )
  elif isinstance(error, hf_errors.RepositoryNotFoundError):
    why = (
        f"the hub ({endpoint}) has no model {repo} that this machine may read ({said}: a "
        "missing repo, or a private one without a token: `hf auth login` or HF_TOKEN); check "
        f"the id, or {local}"
    )
  elif isinstance(error, hf_errors.HfHubHTTPError):
    why = f"the hub answered {said} ({errors.first_line(error)}); {local}"
  else:
    why = f"the hub download failed ({type(error).__name__}: {errors.first_line(error)}); {local}"
  return CheckpointError(f"{repo}: not a local directory, and {why}")


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
  """The flat Hugging Face state dict (numpy; floats as float32) from the first weight file
  found, all shards of it when it is an index."""
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
  if file.name.endswith(".safetensors"):
    return read_safetensors(file)
  if file.name.endswith(".bin"):
    with file.open("rb") as f:  # zipfile seeks: only the pickle and each storage are read
      return read_torch_zip(f)
  if file.name.endswith(".msgpack"):
    return _flax_msgpack_to_state_dict(file.read_bytes())
  raise CheckpointError(f"{file}: unknown weight format")


# Keys that Hugging Face's T5ForConditionalGeneration drops on load (transformers 5.x,
# models/t5/modeling_t5.py): ``_keys_to_ignore_on_load_unexpected`` (the 2020 t5-* checkpoints'
# unused decoder cross-attention bias, transformers issue #2334) and ``_tied_weights_keys``, copies
# of ``shared.weight`` it re-ties. ``lm_head.weight`` is tied only when it equals ``shared.weight``.
HF_IGNORED_UNEXPECTED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
HF_TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def load_t5(name_or_path: str) -> tuple[t5_lib.T5Config, dict]:
  """(config, params) of a Hugging Face T5 checkpoint, params as float32 numpy."""
  directory = resolve(name_or_path)
  config = load_config(directory)
  state = load_state_dict(directory)
  if "shared.weight" not in state:
    raise CheckpointError(
        f"{directory}: weights do not match config.json: missing "
        "shared.weight (the token embedding)"
    )
  # transformers 5 writes tie_word_embeddings=True even for untied models; an lm_head that
  # differs from the shared embedding means the head is untied, whatever the config says.
  head = state.get("lm_head.weight")
  untied = head is not None and not np.array_equal(head, state["shared.weight"])
  config = dataclasses.replace(config, tie_word_embeddings=not untied)
  dropped = [k for k in HF_IGNORED_UNEXPECTED + HF_TIED_COPIES if k in state]
  if head is not None and not untied:
    dropped.append("lm_head.weight")
  for key in dropped:
    del state[key]
  if dropped:
    logging.info(
        "%s: dropped %d keys that Hugging Face's T5 also drops on load: %s",
        directory,
        len(dropped),
        ", ".join(dropped),
    )
  unknown = []
  for key in state:
    try:
      t5_lib.hf_key_to_path(key)
    except ValueError:
      unknown.append(key)
  if unknown:
    raise CheckpointError(
        f"{directory}: weights do not match config.json: unexpected "
        f"{len(unknown)} (e.g. {unknown[0]})"
    )
  params = t5_lib.params_from_hf_state_dict(state, config)
  check_params(params, config, str(directory))
  return config, params


def check_params(params: dict, config: t5_lib.T5Config, where: str) -> None:
  """Compares param shapes with what ``config`` implies; names both on a mismatch."""
  import jax

  expected = jax.eval_shape(
      lambda: t5_lib.T5(config).init(
          jax.random.key(0),
          np.zeros((1, 2), np.int32),
          np.ones((1, 2), np.int32),
          np.zeros((1, 2), np.int32),
      )
  )
  exp = {
      tuple(k.key for k in p): v.shape
      for p, v in jax.tree_util.tree_flatten_with_path(expected["params"])[0]
  }
  got = {
      tuple(k.key for k in p): v.shape for p, v in jax.tree_util.tree_flatten_with_path(params)[0]
  }
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
      parts.append(
          f"{len(wrong)} with wrong shape (e.g. {t5_lib.path_to_hf_key(k)[0]}: "
          f"checkpoint {got[k]}, config.json implies {exp[k]})"
      )
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


TOKENIZER_FILES = ("spiece.model", "tokenizer.json")


def load_tokenizer(name_or_path):
  """The checkpoint's tokenizer through transformers (T5TokenizerFast / sentencepiece).

  A directory without tokenizer files is an error: transformers 5's AutoTokenizer would build
  an empty 104-token T5 tokenizer from config.json alone, and training would see only <unk>."""
  directory = resolve(str(name_or_path))
  if not any((directory / name).exists() for name in TOKENIZER_FILES):
    raise CheckpointError(
        f"{directory}: no tokenizer files in the checkpoint (expected "
        f"{' or '.join(TOKENIZER_FILES)}); pass a tokenizer directory with "
        "--config.data.tokenizer=DIR"
    )
  try:
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(directory))
  except Exception as e:
    raise CheckpointError(
        f"{directory}: cannot load a tokenizer ({type(e).__name__}: {e}); "
        "expected spiece.model or tokenizer.json"
    ) from None


# --------------------------------------------------------------------------------------------
# pytorch_model.bin without torch: a zip holding ``<name>/data.pkl`` (the pickled state dict,
# tensors as persistent references to storages) and ``<name>/data/<key>`` (raw storage bytes).
# --------------------------------------------------------------------------------------------
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:

  def __init__(self, name):
    self.name = name


def _rebuild_tensor(storage, offset, size, stride, *args):
  (array,) = storage
  if not size:
    return array[offset : offset + 1].reshape(())
  itemsize = array.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      array[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
  )
  return np.array(view)


def _bfloat16_to_float32(raw: bytes) -> np.ndarray:
  bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
  return bits.view(np.float32)


class _TorchUnpickler(pickle.Unpickler):

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive, self._prefix = archive, prefix
    self._storages: dict = {}

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
    if kind != "storage":
      raise pickle.UnpicklingError(f"unsupported persistent id {kind!r} in pytorch_model.bin")
    if key not in self._storages:  # tied tensors share one storage: read it once
      raw = self._archive.read(f"{self._prefix}/data/{key}")
      dtype = _STORAGE_DTYPES[storage_type.name]
      self._storages[key] = (
          _bfloat16_to_float32(raw) if dtype == "bfloat16" else np.frombuffer(raw, dtype),
      )
    return self._storages[key]


def read_torch_zip(data) -> dict[str, np.ndarray]:
  """Reads a state dict saved by ``torch.save`` (zip format, torch >= 1.6) into numpy, floats
  as float32. ``data``: the file's bytes or a seekable binary file (read storage by storage)."""
  if not zipfile.is_zipfile(io.BytesIO(data) if isinstance(data, bytes) else data):
    raise ValueError(
        "not a torch zip checkpoint; the legacy (pre-1.6) format needs torch: "
        "re-save it with torch.save or as model.safetensors"
    )
  archive = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
  pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")]
  if not pkl:
    raise ValueError("not a torch zip checkpoint (no data.pkl); legacy formats need torch")
  prefix = pkl[0][: -len("/data.pkl")]
  state = _TorchUnpickler(io.BytesIO(archive.read(pkl[0])), archive, prefix).load()
  return {k: _float32_if_float(np.asarray(v)) for k, v in state.items()}


def _float32_if_float(array: np.ndarray) -> np.ndarray:
  return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array


# --------------------------------------------------------------------------------------------
# safetensors without safetensors.numpy (which has no bfloat16): an 8-byte little-endian header
# length, a JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": ...}
# and the raw little-endian tensor bytes, offsets relative to the end of the header.
# --------------------------------------------------------------------------------------------
_SAFETENSORS_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}


def read_safetensors(file) -> dict[str, np.ndarray]:
  """A safetensors file as numpy, floats (F64/F32/F16/BF16) as float32, tensor by tensor.

  Local files are memory-mapped, so only one tensor at a time is in memory besides the result;
  other paths (gs://...) are read whole. Every array returned owns its memory (a later write to
  the file cannot change or invalidate it)."""
  file = epath.Path(file)
  if hub.is_remote(file):
    buffer = np.frombuffer(file.read_bytes(), np.uint8)
  else:
    buffer = np.memmap(os.fspath(file), dtype=np.uint8, mode="r")
  if buffer.size < 8:
    raise CheckpointError(
        f"{file}: cannot read weights: not a safetensors file " f"({buffer.size} bytes)"
    )
  header_size = int(np.frombuffer(buffer[:8].tobytes(), "<u8")[0])
  if header_size > buffer.size - 8:
    raise CheckpointError(
        f"{file}: cannot read weights: not a safetensors file (header of "
        f"{header_size} bytes, file of {buffer.size})"
    )
  try:
    header = json.loads(buffer[8 : 8 + header_size].tobytes())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(
        f"{file}: cannot read weights: not a safetensors file (header: {e})"
    ) from None
  data = buffer[8 + header_size :]
  state = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
    if dtype is None:
      raise CheckpointError(
          f"{file}: cannot read weights: tensor {name} has dtype "
          f"{info.get('dtype')}, which is not supported (supported: "
          f"{', '.join(_SAFETENSORS_DTYPES)})"
      )
    shape = tuple(info["shape"])
    begin, end = info["data_offsets"]
    if end - begin != np.dtype(dtype).itemsize * math.prod(shape) or end > data.size:
      raise CheckpointError(
          f"{file}: cannot read weights: tensor {name} ({info['dtype']} "
          f"{list(shape)}) has {end - begin} bytes at {begin}..{end} of "
          f"{data.size}"
      )
    raw = data[begin:end].view(dtype).reshape(shape)
    if info["dtype"] == "BF16":
      state[name] = (raw.astype(np.uint32) << 16).view(np.float32)
    elif raw.dtype.kind == "f":
      state[name] = raw.astype(np.float32)
    else:
      state[name] = raw.astype(raw.dtype.newbyteorder("="))
  del data, buffer
  return state


# Leaf names of Hugging Face's Flax T5 (transformers 4.x modeling_flax_t5.py): nn.Dense
# ``kernel`` (in, out) is the transposed torch ``weight``; nn.Embed ``embedding`` (num, features)
# and the layer norms' ``weight`` are laid out as in torch.
_FLAX_LEAF_TRANSPOSED = {"kernel": True, "embedding": False, "weight": False}


def _flax_msgpack_to_state_dict(data: bytes) -> dict[str, np.ndarray]:
  """Hugging Face's Flax T5 params -> flat torch state dict.

  The Flax module tree is ``shared/embedding``, ``{encoder,decoder}/block/<i>/layer/<j>/
  {SelfAttention,EncDecAttention,DenseReluDense}/<q,k,v,o,wi,wo,wi_0,wi_1>/kernel``,
  ``.../SelfAttention/relative_attention_bias/embedding`` (block 0), ``.../layer_norm/weight``,
  ``{encoder,decoder}/final_layer_norm/weight`` and (untied heads) ``lm_head/kernel``; Hugging
  Face's ``save_pretrained`` writes it bare, ``flax.serialization.to_bytes`` of a whole
  variables dict wraps it in {"params": ...}: both are read."""
  from flax import serialization

  tree: Any = serialization.msgpack_restore(data)
  if isinstance(tree, dict) and set(tree) == {"params"}:
    tree = tree["params"]
  out = {}

  def walk(node, path):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(v, path + [str(k)])
      return
    leaf = path[-1]
    if leaf not in _FLAX_LEAF_TRANSPOSED:
      raise ValueError(
          f"unexpected Flax T5 parameter {'/'.join(path)} (leaves are "
          f"{', '.join(_FLAX_LEAF_TRANSPOSED)})"
      )
    value = _float32_if_float(np.asarray(node))
    if _FLAX_LEAF_TRANSPOSED[leaf]:
      value = np.ascontiguousarray(value.T)
    out[".".join(path[:-1] + ["weight"])] = value

  walk(tree, [])
  return out
