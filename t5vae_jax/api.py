"""The notebook API: load a trained phase directory and work in its latent space.

    from t5vae_jax import T5VAE
    vae = T5VAE.load("runs/ptb/phase2")            # or which="best"
    mu, logvar = vae.encode(["the cat sat ."])      # numpy (N, L)
    vae.reconstruct(["the cat sat ."])              # greedy from z = mu
    vae.sample(4, temperature=0.8, seed=1)          # z ~ N(0, I)
    vae.interpolate("a sentence .", "another one .", steps=5)   # or mode="spherical"
    vae.transfer(["a sentence ."], vae.attribute_vector(negative, positive), strength=1.0)
    vae.decode(z, method="sample", top_p=0.9)       # or beam=4 (beam search)

A phase directory carries everything (model.json, tokenizer/, config.json, checkpoints), so
nothing else is needed beside it; ``vae.save_pretrained(dir)`` / ``vae.push_to_hub("user/repo")``
write one checkpoint as a Hugging Face-style directory or hub repo that ``T5VAE.load`` reads
as well (export.py). Runs on whatever JAX finds (CPU in a notebook); params are
placed on the first device. Batches are padded to a few fixed shapes (rows to a power of two,
lengths to the training buckets), so repeated calls reuse the compiled functions.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from t5vae_jax import accelerator
from t5vae_jax import checkpoint as ckpt_lib
from t5vae_jax import data as data_lib
from t5vae_jax import decoding
from t5vae_jax import export
from t5vae_jax import model as model_lib
from t5vae_jax import sharding
from t5vae_jax import tokenizer as tokenizer_lib

_MIN_ROWS = 8


def _padded_rows(n: int) -> int:
  return max(_MIN_ROWS, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


# Keys a phase directory's config.json may lack, with the value such a run trained with.
SAVED_CONFIG_DEFAULTS = {
    "pack_tokens": False,
    "fsdp": False,
    "model_parallel": 1,
    "sharding_rules": sharding.DEFAULT_RULES,
}


def load_config(phase_dir) -> Optional[Any]:
  """The phase directory's config.json as a ConfigDict (SAVED_CONFIG_DEFAULTS filled in where
  it lacks a key), or None when absent."""
  path = epath.Path(phase_dir) / "config.json"
  if not path.exists():
    return None
  import ml_collections

  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  for key, value in SAVED_CONFIG_DEFAULTS.items():
    if key not in config:
      config[key] = value
  return config


def build_model(
    phase_dir, dtype: Optional[str] = None, devices: Optional[Sequence[jax.Device]] = None
) -> model_lib.T5VAEModel:
  """The network described by ``<phase_dir>/model.json`` (dropout off: evaluation only).

  ``dtype`` (default: the saved ``model.dtype``) "auto" resolves on ``devices`` (default: the
  first device, where T5VAE.load puts the params): float32 on a CPU, bfloat16 on TPU/GPU."""
  t5_config, vae_config, saved_dtype = ckpt_lib.read_model_spec(phase_dir)
  t5_config = dataclasses.replace(t5_config, dropout_rate=0.0)
  dtype = accelerator.compute_dtype(
      dtype or saved_dtype, jax.devices()[:1] if devices is None else devices
  )
  return model_lib.T5VAEModel(t5_config, vae=vae_config, dtype=jnp.dtype(dtype))


def restore_params(
    phase_dir,
    model: model_lib.T5VAEModel,
    which: str = "latest",
    step: Optional[int] = None,
    shardings: Any = None,
):
  """(params, step) of a phase directory, placed per ``shardings`` (a pytree or one sharding;
  default: the first device)."""
  abstract = jax.eval_shape(functools.partial(model_lib.init_params, model), jax.random.key(0))
  if shardings is None:
    shardings = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, abstract)
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # orbax warns that a read-only manager is read-only
  try:
    return ckpt_lib.restore_params(
        phase_dir, ckpt_lib.abstract_tree(abstract, shardings), which=which, step=step
    )
  finally:
    logging.set_verbosity(verbosity)


@functools.partial(jax.jit, static_argnames="model")
def _posterior(model, params, ids, mask):
  return model.apply({"params": params}, ids, mask, method=model_lib.T5VAEModel.posterior)


class T5VAE:
  """A trained T5-VAE with its tokenizer: encode, decode, reconstruct, sample, interpolate."""

  def __init__(
      self,
      model: model_lib.T5VAEModel,
      params,
      tokenizer,
      *,
      max_len: int = 64,
      bucket_lengths: Sequence[int] = (),
      path: Optional[str] = None,
      step: Optional[int] = None,
      config: Any = None,
  ):
    self.model = model
    self.params = params
    self.tokenizer = tokenizer
    self.max_len = int(max_len)
    self.bucket_lengths = tuple(
        sorted({int(b) for b in bucket_lengths if b <= max_len} | {self.max_len})
    )
    self.path = path
    self.step = step
    self.config = config

  # ------------------------------------------------------------------------------ loading
  @classmethod
  def load(
      cls, path, which: str = "latest", step: Optional[int] = None, dtype: Optional[str] = None
  ) -> "T5VAE":
    """Loads a phase directory (e.g. ``runs/ptb/phase2``) written by train.py, or a directory
    or hub repo (``"user/repo"``) written by :meth:`save_pretrained` / :meth:`push_to_hub`.

    ``which``: "latest" (the last checkpoint) or "best" (the best validation score);
    ``step``: a particular step of the latest checkpoints; ``dtype``: the compute dtype
    (default: the one it was trained with; "auto" is float32 on a CPU, bfloat16 on TPU/GPU).
    """
    if which not in ("latest", "best"):
      raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
    if export.is_saved_vae(path):
      return export.load(cls, path, which=which, step=step, dtype=dtype)
    path = epath.Path(path)
    model = build_model(path, dtype)
    params, restored_step = restore_params(path, model, which=which, step=step)
    tokenizer = tokenizer_lib.load_tokenizer(path / "tokenizer")
    config = load_config(path)
    max_len, buckets = 64, ()
    if config is not None and "data" in config:
      max_len = int(config.data.get("max_len", max_len) or max_len)
      buckets = data_lib.bucket_lengths_from_config(config.data)
    return cls(
        model,
        params,
        tokenizer,
        max_len=max_len,
        bucket_lengths=buckets,
        path=str(path),
        step=int(restored_step),
        config=config,
    )

  def save_pretrained(self, directory) -> epath.Path:
    """Writes a self-contained directory (config.json, model.safetensors with Hugging Face T5
    names, tokenizer, model card README.md) that :meth:`load` reads back; see export.py."""
    return export.save_pretrained(self, directory)

  def push_to_hub(
      self,
      repo_id: str,
      *,
      private: Optional[bool] = None,
      token: Optional[str] = None,
      commit_message: Optional[str] = None,
  ):
    """:meth:`save_pretrained`, uploaded to the Hugging Face hub repo ``repo_id`` (created if
    needed) with huggingface_hub; ``T5VAE.load(repo_id)`` loads it back."""
    return export.push_to_hub(
        self, repo_id, private=private, token=token, commit_message=commit_message
    )

  @property
  def latent_dim(self) -> int:
    return self.model.vae.latent_dim

  def __repr__(self):
    return (
        f"T5VAE(path={self.path!r}, step={self.step}, latent_dim={self.latent_dim}, "
        f"injection={self.model.vae.latent_injection!r})"
    )

  # ------------------------------------------------------------------------------ encoding
  def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
    """EOS-terminated token ids, truncated to max_len as in training."""
    ids, _ = data_lib.tokenize(list(texts), self.tokenizer, self.max_len)
    return ids

  def encode(
      self, texts: Union[str, Sequence[str]], batch_size: int = 256
  ) -> tuple[np.ndarray, np.ndarray]:
    """Posterior parameters (mu, logvar), each a float32 numpy array (N, latent_dim)."""
    if isinstance(texts, str):
      texts = [texts]
    token_ids = self.tokenize(texts)
    mus, logvars = [], []
    for start in range(0, len(token_ids), batch_size):
      chunk = token_ids[start : start + batch_size]
      longest = max(len(t) for t in chunk)
      length = next(b for b in self.bucket_lengths if b >= longest)
      rows = _padded_rows(len(chunk))
      ids = np.full((rows, length), self.model.config.pad_token_id, np.int32)
      mask = np.zeros((rows, length), np.int32)
      for i, t in enumerate(chunk):
        ids[i, : len(t)] = t
        mask[i, : len(t)] = 1
      ids[len(chunk) :, 0] = self.model.config.eos_token_id  # filler rows: a lone EOS
      mask[len(chunk) :, 0] = 1
      mu, logvar = jax.device_get(_posterior(self.model, self.params, ids, mask))
      mus.append(mu[: len(chunk)])
      logvars.append(logvar[: len(chunk)])
    if not mus:
      empty = np.zeros((0, self.latent_dim), np.float32)
      return empty, empty.copy()
    return np.concatenate(mus).astype(np.float32), np.concatenate(logvars).astype(np.float32)

  # ------------------------------------------------------------------------------ decoding
  def decode_ids(
      self,
      z,
      method: str = "greedy",
      temperature: float = 1.0,
      top_k: int = 0,
      top_p: float = 1.0,
      max_len: Optional[int] = None,
      seed: int = 0,
      use_cache: bool = True,
      beam: int = 0,
      length_penalty: float = 0.6,
  ) -> list[list[int]]:
    """Token ids (without EOS) decoded from latents z (N, latent_dim)."""
    z = np.asarray(z, np.float32)
    if z.ndim == 1:
      z = z[None]
    if z.ndim != 2 or z.shape[1] != self.latent_dim:
      raise ValueError(f"z must be (N, {self.latent_dim}), got {z.shape}")
    if method == "sample" and temperature <= 0:
      method = "greedy"
    n = z.shape[0]
    if n == 0:
      return []
    rows = _padded_rows(n)
    padded = np.zeros((rows, self.latent_dim), np.float32)
    padded[:n] = z
    cfg = self.model.config
    if beam and beam > 0:
      tokens, _ = decoding.beam_search(
          self.model,
          self.params,
          padded,
          max_len=int(max_len or self.max_len),
          beam=int(beam),
          alpha=float(length_penalty),
      )
      return decoding.strip(jax.device_get(tokens)[:n, 0], cfg.eos_token_id, cfg.pad_token_id)
    fn = decoding.decode if use_cache else decoding.decode_uncached
    tokens = fn(
        self.model,
        self.params,
        padded,
        max_len=int(max_len or self.max_len),
        method=method,
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        rng=jax.random.key(seed),
    )
    return decoding.strip(jax.device_get(tokens)[:n], cfg.eos_token_id, cfg.pad_token_id)

  def decode(
      self,
      z,
      method: str = "greedy",
      temperature: float = 1.0,
      top_k: int = 0,
      top_p: float = 1.0,
      max_len: Optional[int] = None,
      seed: int = 0,
      beam: int = 0,
      length_penalty: float = 0.6,
  ) -> list[str]:
    """Sentences decoded from latents z (N, latent_dim) (one latent (L,) gives one sentence).

    ``method``: "greedy" (argmax each step) or "sample" (from the softmax at ``temperature``,
    restricted to the ``top_k`` most likely tokens (0: all) and to the nucleus of mass
    ``top_p``). ``max_len``: most tokens per sentence, EOS included (default: training's).
    ``beam`` > 0: beam search of that width instead (``method`` is ignored), ranking finished
    sentences by log-probability / ((5 + length) / 6) ** ``length_penalty``.
    """
    ids = self.decode_ids(
        z,
        method=method,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        max_len=max_len,
        seed=seed,
        beam=beam,
        length_penalty=length_penalty,
    )
    return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]

  def reconstruct(
      self, texts: Union[str, Sequence[str]], sample_z: bool = False, seed: int = 0, **decode_kwargs
  ) -> list[str]:
    """Encode then decode: from z = mu (default) or z ~ q(z|x) with ``sample_z``."""
    mu, logvar = self.encode(texts)
    z = mu
    if sample_z:
      eps = np.random.default_rng(seed).standard_normal(mu.shape).astype(np.float32)
      z = mu + np.exp(0.5 * logvar) * eps
    return self.decode(z, seed=seed, **decode_kwargs)

  def sample(
      self, n: int, temperature: float = 1.0, seed: int = 0, method: str = "sample", **decode_kwargs
  ) -> list[str]:
    """n sentences from the prior: z ~ N(0, I), decoded by sampling at ``temperature``
    (``method="greedy"`` or temperature 0 decodes greedily)."""
    z = np.random.default_rng(seed).standard_normal((n, self.latent_dim)).astype(np.float32)
    return self.decode(z, method=method, temperature=temperature, seed=seed, **decode_kwargs)

  def interpolate(
      self, a: str, b: str, steps: int = 5, mode: str = "linear", **decode_kwargs
  ) -> list[str]:
    """Sentences along the path between the posterior means of a and b (both ends included):
    ``mode`` "linear" (a straight line) or "spherical" (slerp, see ``latent_path``)."""
    mu, _ = self.encode([a, b])
    return self.decode(latent_path(mu[0], mu[1], steps, mode), **decode_kwargs)

  def attribute_vector(self, from_texts: Sequence[str], to_texts: Sequence[str]) -> np.ndarray:
    """mean mu(to_texts) - mean mu(from_texts): the latent direction from one group to the
    other (e.g. negative to positive reviews), (latent_dim,) float32."""
    if not len(from_texts) or not len(to_texts):
      raise ValueError("attribute_vector needs at least one sentence in each group")
    return (self.encode(to_texts)[0].mean(0) - self.encode(from_texts)[0].mean(0)).astype(
        np.float32
    )

  def transfer(
      self, texts: Union[str, Sequence[str]], vector, strength: float = 1.0, **decode_kwargs
  ) -> list[str]:
    """Attribute arithmetic (Optimus-style): decodes mu(text) + strength * vector for each
    text; ``vector`` from ``attribute_vector``."""
    mu, _ = self.encode(texts)
    return self.decode(mu + float(strength) * np.asarray(vector, np.float32)[None], **decode_kwargs)


INTERPOLATION_MODES = ("linear", "spherical")


def latent_path(a, b, steps: int, mode: str = "linear") -> np.ndarray:
  """(steps, L) latents from a to b, both included. "spherical": slerp,
  sin((1 - t) w) / sin(w) a + sin(t w) / sin(w) b with w the angle between a and b (linear
  when they are (anti)parallel within 1e-6): the path keeps a norm near the ends', where a
  straight line between two typical latents dips through atypically small norms."""
  if not isinstance(steps, (int, np.integer)) or steps < 2:
    raise ValueError(f"steps must be an integer of at least 2, got {steps!r}")
  if mode not in INTERPOLATION_MODES:
    raise ValueError(f"mode={mode!r} is not one of {INTERPOLATION_MODES}")
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  t = np.linspace(0.0, 1.0, steps)[:, None]
  cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
  omega = float(np.arccos(np.clip(cos, -1.0, 1.0)))
  if mode == "linear" or np.sin(omega) < 1e-6:
    return ((1.0 - t) * a + t * b).astype(np.float32)
  return ((np.sin((1.0 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)).astype(
      np.float32
  )
