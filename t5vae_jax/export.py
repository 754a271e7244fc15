"""Sharing a trained T5-VAE: a self-contained Hugging Face-style directory, the hub upload, and
loading either back (``T5VAE.save_pretrained``, ``T5VAE.push_to_hub``, ``T5VAE.load``).

A phase directory (orbax checkpoints, model.json, the training config) is what train.py needs
to resume; someone who only wants the model needs one checkpoint in files any tool reads. So a
saved T5-VAE is a directory of:

  config.json        the T5 config in Hugging Face's format (``T5Config.to_hf_dict``) plus a
                     "t5vae" section: the VAE settings, the compute dtype, max_len and bucket
                     lengths, the step, the training config and the eval.json result (if any)
  model.safetensors  float32 tensors: the T5 part under Hugging Face's T5 names (those
                     pretrained.load_t5 reads; ``shared.weight`` once, the head only when
                     untied), so transformers' T5EncoderModel / T5ForConditionalGeneration load
                     it; plus the bottleneck and memory projection under ``VAE_KEYS``, laid out
                     as torch Linear weights (out_features, in_features)
  tokenizer files    tokenizer.json, tokenizer_config.json (spiece.model where there is one)
  README.md          a model card: YAML front matter (library_name, tags, datasets, base_model)
                     for the hub, the eval row, how to load, the training config

What Hugging Face's T5ForConditionalGeneration finds missing: the decoder's cross-attention k/v
(the latent's one-slot memory replaces them; a VAE trained from scratch never had them) and, in
``self_prefix`` mode, all of the cross-attention. It reports the ``t5vae.*`` tensors as
unexpected. The encoder loads whole (T5EncoderModel): tests/test_export.py compares its hidden
states with ours.

A hub id (``hub.is_hub_id``: the program's one local-vs-hub rule) is downloaded by
pretrained.resolve (config.json, the tokenizer files and model.safetensors; offline, from the
Hugging Face cache). The upload is huggingface_hub's HfApi.create_repo + upload_folder, with
the token from the usual places (``token=``, HF_TOKEN, ``hf auth login``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, Optional

import numpy as np
from etils import epath

from t5vae_jax import errors
from t5vae_jax import hub
from t5vae_jax import pretrained
from t5vae_jax import t5 as t5_lib
from t5vae_jax.pretrained import CheckpointError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
SECTION = "t5vae"  # config.json's section that makes a T5 checkpoint a saved T5-VAE
FORMAT_VERSION = 1
# The VAE's own parameters (Flax module name -> safetensors key); the kernel (in, out) is stored
# transposed, as torch.nn.Linear's weight (out, in): mu/logvar (L, d_model), memory_proj
# (decoder layers * heads * d_kv, L), reshaped per example to (layers, heads, 1, d_kv).
VAE_KEYS = {
    "mu": "t5vae.mu.weight",
    "logvar": "t5vae.logvar.weight",
    "memory_proj": "t5vae.memory_proj.weight",
}
LIBRARY_NAME = "t5vae-jax"
# What of Hugging Face's T5 the model card says the VAE does not have, per latent injection.
_UNUSED = {
    "cross_attention": "The decoder's cross-attention keys and values are not part of the "
    "model: the projected latent is the one key and value it attends to.",
    "self_prefix": "The decoder's cross-attention is not part of the model: the projected "
    "latent is a one-slot prefix of each decoder layer's self-attention.",
}
PROJECT_URL = "https://github.com/t5vae-jax/t5vae-jax"


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def state_dict(params: dict) -> dict[str, np.ndarray]:
  """The flat float32 tensors of model.safetensors: Hugging Face T5 names for the T5 part,
  ``VAE_KEYS`` for the rest."""
  t5_params = {k: v for k, v in params.items() if k not in VAE_KEYS}
  state = t5_lib.hf_state_dict_from_params(t5_params)
  for name, key in VAE_KEYS.items():
    state[key] = np.ascontiguousarray(np.asarray(params[name]["kernel"], np.float32).T)
  return state


def save_pretrained(vae, directory) -> epath.Path:
  """Writes ``vae`` (an api.T5VAE) to ``directory`` (created; files of the same names are
  replaced) and returns it. Local or any epath (gs://...)."""
  import jax
  from t5vae_jax import tokenizer as tokenizer_lib

  directory = epath.Path(hub.local_path(os.fspath(directory)))
  directory.mkdir(parents=True, exist_ok=True)
  config = _hf_config(vae)
  (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
  state = state_dict(jax.device_get(vae.params))
  metadata = {"format": "pt"}  # transformers' from_pretrained asks for it
  from safetensors import numpy as safetensors_numpy

  if hub.is_remote(directory):
    (directory / WEIGHTS_FILE).write_bytes(safetensors_numpy.save(state, metadata=metadata))
  else:
    safetensors_numpy.save_file(state, os.fspath(directory / WEIGHTS_FILE), metadata=metadata)
  tokenizer_lib.save_tokenizer(vae.tokenizer, directory)
  spiece = _source_file(vae, tokenizer_lib.SPIECE_FILE)
  if spiece is not None:  # a converted fast tokenizer does not write its SentencePiece model
    (directory / tokenizer_lib.SPIECE_FILE).write_bytes(spiece.read_bytes())
  (directory / CARD_FILE).write_text(model_card(config), encoding="utf-8")
  return directory


def _hf_config(vae) -> dict[str, Any]:
  """config.json: Hugging Face's T5 keys (with the training dropout, not the 0 that loading
  for inference sets) and the "t5vae" section."""
  training = _training_config(vae)
  t5_config = vae.model.config
  dropout = _get(training, "model", "dropout_rate")
  if dropout is not None:
    t5_config = dataclasses.replace(t5_config, dropout_rate=float(dropout))
  config = t5_config.to_hf_dict()
  config[SECTION] = {
      "format_version": FORMAT_VERSION,
      "vae": dataclasses.asdict(vae.model.vae),
      "dtype": str(_get(training, "model", "dtype") or np.dtype(vae.model.dtype).name),
      "max_len": vae.max_len,
      "bucket_lengths": list(vae.bucket_lengths),
      "step": vae.step,
      "eval": eval_result(vae),
      "training_config": training,
  }
  return config


def _training_config(vae) -> Optional[dict]:
  """The training config (an ml_collections.ConfigDict) as plain JSON values, or None."""
  return None if vae.config is None else json.loads(vae.config.to_json_best_effort())


def _get(tree: Optional[dict], *keys):
  for key in keys:
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def _source_file(vae, name: str) -> Optional[epath.Path]:
  """A file of the directory ``vae`` was loaded from: ``tokenizer/<name>`` of a phase directory
  or ``<name>`` of a saved T5-VAE."""
  if not vae.path:
    return None
  for candidate in (epath.Path(vae.path) / "tokenizer" / name, epath.Path(vae.path) / name):
    if candidate.exists():
      return candidate
  return None


def eval_result(vae) -> Optional[dict]:
  """What eval.py wrote for the checkpoint ``vae`` holds: ``<phase_dir>/eval.json``, or the
  "eval" a saved T5-VAE carries; None when there is none, or when it is of another step."""
  result = None
  eval_file = _source_file(vae, "eval.json")
  if eval_file is not None:
    result = json.loads(eval_file.read_text())
  else:
    config_file = _source_file(vae, CONFIG_FILE)
    if config_file is not None:
      result = _get(json.loads(config_file.read_text()), SECTION, "eval")
  if not isinstance(result, dict) or result.get("step") != vae.step:
    return None
  return result


def model_card(config: dict) -> str:
  """README.md: YAML metadata for the hub, then what the model is, its eval row and how to
  load it."""
  from huggingface_hub import ModelCardData
  from t5vae_jax import evaluation

  section = config[SECTION]
  training = section["training_config"]
  data_name = _get(training, "data", "name")
  base_model = _get(training, "model", "pretrained")
  metadata = ModelCardData(
      library_name=LIBRARY_NAME,
      tags=[LIBRARY_NAME, "t5", "vae", "text-vae", "jax", "flax"],
      datasets=[str(data_name)] if data_name else None,
      base_model=base_model if base_model and hub.is_hub_id(base_model) else None,
  )
  vae_settings = section["vae"]
  lines = [
      "---",
      metadata.to_yaml(),
      "---",
      "",
      "# T5-VAE" + (f" on {data_name}" if data_name else ""),
      "",
      f"A text VAE built on T5 (Park & Lee 2021), trained with [t5vae-jax]: latent dimension "
      f"{vae_settings['latent_dim']}, {vae_settings['pooling']} pooling, latent injection "
      f"`{vae_settings['latent_injection']}`; T5 of d_model {config['d_model']}, "
      f"{config['num_layers']}+{config['num_decoder_layers']} layers, vocabulary "
      f"{config['vocab_size']}"
      + (
          f", finetuned from `{base_model}`"
          if base_model
          else ", trained from scratch"
          if training
          else ""
      )
      + (f"; step {section['step']}." if section["step"] is not None else "."),
      "",
  ]
  result = section["eval"]
  if result:
    lines += [
        f"Evaluation (`eval.py`, {result.get('split', 'test')} split, per-sentence nats):",
        "",
        evaluation.markdown_header(),
        result["row"],
        "",
    ]
  lines += [
      "## Use",
      "",
      "```python",
      "from t5vae_jax import T5VAE",
      'vae = T5VAE.load("<this repo id or directory>")',
      'mu, logvar = vae.encode(["a sentence ."])',
      'vae.reconstruct(["a sentence ."])',
      "vae.sample(4, temperature=0.8)",
      "```",
      "",
      (
          "or from the command line: `python -m t5vae_jax.latent sample --phase_dir <repo id> "
          "--n 4`."
      ),
      "",
      f"`{WEIGHTS_FILE}` holds the T5 part under Hugging Face's T5 names (transformers' "
      "`T5EncoderModel` loads the encoder as is) and the VAE's "
      + ", ".join(f"`{key}`" for key in VAE_KEYS.values())
      + " as torch Linear weights (out, in). "
      + _UNUSED[vae_settings["latent_injection"]],
      "",
  ]
  if training:
    lines += [
        "## Training config",
        "",
        "<details>",
        "",
        "```json",
        json.dumps(training, indent=2),
        "```",
        "",
        "</details>",
        "",
    ]
  lines += [f"[t5vae-jax]: {PROJECT_URL}", ""]
  return "\n".join(lines)


def push_to_hub(
    vae,
    repo_id: str,
    *,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    commit_message: Optional[str] = None,
):
  """save_pretrained into a temporary directory, then HfApi.create_repo (an existing repo is
  fine) and upload_folder; returns huggingface_hub's CommitInfo. Hub refusals (no token, no
  write access) raise CheckpointError, one line naming the repo."""
  import huggingface_hub
  from huggingface_hub import errors as hf_errors

  api = huggingface_hub.HfApi(token=token)
  with tempfile.TemporaryDirectory(prefix="t5vae_push_") as folder:
    save_pretrained(vae, folder)
    try:
      api.create_repo(repo_id, private=private, exist_ok=True)
      return api.upload_folder(
          repo_id=repo_id,
          folder_path=folder,
          commit_message=commit_message or f"Upload T5-VAE (step {vae.step})",
      )
    except hf_errors.HfHubHTTPError as e:
      response = getattr(e, "response", None)
      status = getattr(response, "status_code", None)
      raise CheckpointError(
          f"{repo_id}: the hub ({api.endpoint}) refused the upload (HTTP {status}: "
          f"{errors.first_line(e)}); log in with a write token (`hf auth login` or "
          "HF_TOKEN)"
      ) from None


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def is_saved_vae(name_or_path) -> bool:
  """Whether T5VAE.load should read ``name_or_path`` as a saved T5-VAE rather than a phase
  directory: a hub id, or a directory with config.json and no model.json."""
  name = os.fspath(name_or_path)
  if hub.is_hub_id(name):
    return True
  path = epath.Path(hub.local_path(name))
  return (path / CONFIG_FILE).exists() and not (path / "model.json").exists()


def load(
    cls,
    name_or_path,
    which: str = "latest",
    step: Optional[int] = None,
    dtype: Optional[str] = None,
):
  """A ``cls`` (api.T5VAE) from a directory or hub repo written by save_pretrained /
  push_to_hub; params on the first device, compute ``dtype`` as in T5VAE.load."""
  import jax
  import jax.numpy as jnp
  import ml_collections
  from t5vae_jax import accelerator
  from t5vae_jax import model as model_lib
  from t5vae_jax import tokenizer as tokenizer_lib

  directory = pretrained.resolve(os.fspath(name_or_path))
  config_file = directory / CONFIG_FILE
  try:
    raw = json.loads(config_file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{config_file}: not valid JSON ({e})") from None
  section = raw.get(SECTION)
  if not isinstance(section, dict):
    raise CheckpointError(
        f'{config_file}: no "{SECTION}" section: not a saved T5-VAE (nor a '
        "phase directory: no model.json)"
    )
  if which != "latest" or step is not None:
    raise CheckpointError(
        f"{name_or_path}: a saved T5-VAE holds one checkpoint (step "
        f"{section.get('step')}); which= and step= choose among a phase "
        "directory's checkpoints"
    )
  try:
    t5_config = dataclasses.replace(t5_lib.T5Config.from_hf_dict(raw), dropout_rate=0.0)
    vae_config = model_lib.VAEConfig(**section["vae"])
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(
        f"{config_file}: bad model settings ({type(e).__name__}: " f"{errors.first_line(e)})"
    ) from None
  devices = jax.devices()[:1]
  compute = accelerator.compute_dtype(dtype or section.get("dtype", "float32"), devices)
  model = model_lib.T5VAEModel(t5_config, vae=vae_config, dtype=jnp.dtype(compute))
  params = _read_params(directory / WEIGHTS_FILE, model)
  params = jax.device_put(params, jax.sharding.SingleDeviceSharding(devices[0]))
  tokenizer = tokenizer_lib.load_tokenizer(directory)
  training = section.get("training_config")
  return cls(
      model,
      params,
      tokenizer,
      max_len=int(section.get("max_len", 64)),
      bucket_lengths=section.get("bucket_lengths", ()),
      path=str(directory),
      step=section.get("step"),
      config=ml_collections.ConfigDict(training) if training else None,
  )


def _read_params(file: epath.Path, model) -> dict:
  """model.safetensors -> the params tree of ``model``; a missing or misshapen tensor is a
  CheckpointError naming the file and the key. Tensors of the T5 the model does not use (a
  pretrained T5's cross-attention k/v) are kept, as a phase directory's restore keeps them;
  a tensor Hugging Face's T5 of this config would not have is an error."""
  import functools
  import jax
  from t5vae_jax import model as model_lib

  if not file.exists():
    raise CheckpointError(f"{file}: missing (a saved T5-VAE holds its weights there)")
  state = pretrained.read_safetensors(file)
  for key in pretrained.HF_TIED_COPIES:  # written by some tools beside shared.weight
    state.pop(key, None)
  params: dict = {}
  for name, key in VAE_KEYS.items():
    if key not in state:
      raise CheckpointError(f"{file}: no tensor {key} (the VAE's {name} projection)")
    params[name] = {"kernel": np.ascontiguousarray(state.pop(key).T)}
  if model.config.tie_word_embeddings:
    state.pop("lm_head.weight", None)
  ids = np.zeros((1, 2), np.int32)
  t5_tree = jax.eval_shape(lambda: t5_lib.T5(model.config).init(jax.random.key(0), ids, ids, ids))
  t5_keys = {
      t5_lib.path_to_hf_key(tuple(k.key for k in path))[0]
      for path, _ in jax.tree_util.tree_flatten_with_path(t5_tree["params"])[0]
  }
  unexpected = sorted(set(state) - t5_keys)
  if unexpected:
    raise CheckpointError(
        f"{file}: unexpected tensor {unexpected[0]}"
        + (f" ({len(unexpected)} in all)" if len(unexpected) > 1 else "")
    )
  params.update(t5_lib.params_from_hf_state_dict(state, model.config))
  expected = jax.eval_shape(functools.partial(model_lib.init_params, model), jax.random.key(0))
  got = {
      tuple(k.key for k in path): value.shape
      for path, value in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  for path, leaf in jax.tree_util.tree_flatten_with_path(expected)[0]:
    names = tuple(k.key for k in path)
    key, transposed = (
        (VAE_KEYS[names[0]], True) if names[0] in VAE_KEYS else t5_lib.path_to_hf_key(names)
    )
    if names not in got:
      raise CheckpointError(f"{file}: no tensor {key}, which config.json's model needs")
    if tuple(got[names]) != tuple(leaf.shape):
      step = -1 if transposed else 1  # as in the file: torch Linear weights are (out, in)
      raise CheckpointError(
          f"{file}: tensor {key} has shape {list(got[names][::step])}, "
          f"config.json implies {list(leaf.shape[::step])}"
      )
  return params
