"""The PyTorch side of the benchmarks: the released T5-VAE code's model on Hugging Face's T5.

Shared by ``bench/train_step.py`` and ``bench/throughput.py``; torch is needed only here.

The model is what the released code runs, with its two bugs (z mixed across a batch's
examples in ``build_past``, ids and mask swapped by its denoising) left out, so that it does
the same work as ours:

  T5 encoder -> max-pool over the final states (pads masked) -> mu / logvar (Linear, no bias)
  -> z = mu + exp(logvar / 2) * eps -> memory projection (Linear, no bias) reshaped **per
  example** to (B, layers, heads, 1, d_kv) -> one self-attention prefix slot per decoder layer
  through ``DynamicCache`` / ``EncoderDecoderCache`` (cross-attention skipped) -> decoder output
  scaled by d_model^-0.5 (tied head) -> LM head -> token cross-entropy summed per example over the
  non-pad targets + beta * KL, averaged over the batch -> AdamW.

Weights can be copied from our Flax params (``load_jax_params``) so both sides start equal, and
the loss, gradients and one optimizer update can be compared (``parity_report``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from t5vae_jax import t5 as t5_lib


def hf_config(t5_config: t5_lib.T5Config) -> transformers.T5Config:
  """Hugging Face's T5Config for our T5Config (same shape, dropout, tying)."""
  d = t5_config.to_hf_dict()
  for key in ("architectures", "model_type"):
    d.pop(key, None)
  return transformers.T5Config(**d)


class TorchT5VAE(torch.nn.Module):
  """Hugging Face's T5ForConditionalGeneration plus the bottleneck, as the released code."""

  def __init__(self, t5_config: t5_lib.T5Config, latent_dim: int):
    super().__init__()
    self.cfg = t5_config
    self.latent_dim = latent_dim
    self.t5 = transformers.T5ForConditionalGeneration(hf_config(t5_config))
    d, n_dec = t5_config.d_model, t5_config.num_decoder_layers
    self.mu = torch.nn.Linear(d, latent_dim, bias=False)
    self.logvar = torch.nn.Linear(d, latent_dim, bias=False)
    self.memory_proj = torch.nn.Linear(
        latent_dim, n_dec * t5_config.num_heads * t5_config.d_kv, bias=False
    )

  # ---------------------------------------------------------------------------------------
  def posterior(self, input_ids, attention_mask):
    states = self.t5.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    keep = attention_mask[:, :, None].bool()
    pooled = states.masked_fill(~keep, float("-inf")).amax(dim=1)  # pads never win the max
    return self.mu(pooled), self.logvar(pooled)

  def decode(self, z, decoder_input_ids):
    cfg = self.cfg
    batch = z.shape[0]
    memory = self.memory_proj(z).view(batch, cfg.num_decoder_layers, cfg.num_heads, 1, cfg.d_kv)
    self_cache = DynamicCache()
    for layer in range(cfg.num_decoder_layers):
      kv = memory[:, layer]  # (B, H, 1, d_kv), per example
      self_cache.update(kv, kv, layer)
    cache = EncoderDecoderCache(self_cache, DynamicCache())
    h = self.t5.decoder(
        input_ids=decoder_input_ids, cache=cache, use_cache=True, encoder_hidden_states=None
    ).last_hidden_state
    if cfg.scale_decoder_outputs:
      h = h * (cfg.d_model**-0.5)
    return self.t5.lm_head(h)

  def forward(self, input_ids, attention_mask, eps=None, beta: float = 1.0):
    """Returns (loss, rec, kl). ``eps`` None: z = mu (deterministic)."""
    mu, logvar = self.posterior(input_ids, attention_mask)
    z = mu if eps is None else mu + torch.exp(0.5 * logvar) * eps
    start = torch.full_like(input_ids[:, :1], self.cfg.decoder_start_token_id)
    decoder_input_ids = torch.cat([start, input_ids[:, :-1]], dim=1)
    logits = self.decode(z, decoder_input_ids)
    token_nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), input_ids.reshape(-1), reduction="none"
    ).view(input_ids.shape)
    rec = (token_nll * attention_mask.to(token_nll.dtype)).sum(dim=1).mean()
    kl = (-0.5 * (1.0 + logvar - mu.square() - logvar.exp())).sum(dim=1).mean()
    return rec + beta * kl, rec, kl

  # ---------------------------------------------------------------------------------------
  def load_jax_params(self, params) -> None:
    """Copies our Flax VAE params (T5 part through ``hf_state_dict_from_params``)."""
    t5_params = {k: v for k, v in params.items() if k not in ("mu", "logvar", "memory_proj")}
    state = {
        k: torch.from_numpy(np.array(v, np.float32))
        for k, v in t5_lib.hf_state_dict_from_params(t5_params).items()
    }
    missing, unexpected = self.t5.load_state_dict(state, strict=False)
    tied = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}
    # Our self_prefix model never calls cross-attention, so it has no params for it; here they
    # exist but get no gradient (AdamW skips them).
    unused = {k for k in missing if _is_cross_attention(k)}
    if unexpected or set(missing) - tied - unused:
      raise AssertionError(f"weights do not map: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
      for name in ("mu", "logvar", "memory_proj"):
        kernel = np.asarray(params[name]["kernel"], np.float32)  # (in, out)
        getattr(self, name).weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.T)))
    if self.cfg.tie_word_embeddings:
      assert self.t5.lm_head.weight.data_ptr() == self.t5.shared.weight.data_ptr(), "head not tied"

  def grads_as_hf(self) -> dict[str, np.ndarray]:
    """Gradients keyed like ``hf_state_dict_from_params`` of our grads (bottleneck included)."""
    out = {}
    for name, p in self.named_parameters():
      if p.grad is None:
        continue
      key = name.removeprefix("t5.")
      if key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        continue
      out[key] = p.grad.detach().numpy().copy()
    return out

  def params_as_hf(self) -> dict[str, np.ndarray]:
    out = {}
    for name, p in self.named_parameters():
      key = name.removeprefix("t5.")
      if _is_cross_attention(key):
        continue
      if key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        continue
      out[key] = p.detach().numpy().copy()
    return out


def _is_cross_attention(key: str) -> bool:
  """The decoder's cross-attention sub-layer (layer.1), unused with the prefix injection."""
  return key.startswith("decoder.") and ".layer.1." in key


def make_optimizer(model: torch.nn.Module, lr=1e-3, b1=0.9, b2=0.999, eps=1e-3, weight_decay=0.0):
  # foreach=True is torch's default multi-tensor path on CPU; say it explicitly.
  return torch.optim.AdamW(
      model.parameters(), lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay, foreach=True
  )


def train_step(model: TorchT5VAE, opt, input_ids, attention_mask, beta: float = 1.0):
  """One forward/backward/AdamW step with a fresh eps, like the released training loop."""
  eps = torch.randn(input_ids.shape[0], model.latent_dim)
  loss, _, _ = model(input_ids, attention_mask, eps=eps, beta=beta)
  opt.zero_grad(set_to_none=True)
  loss.backward()
  opt.step()
  return loss.detach()


def flat_hf(tree) -> dict[str, np.ndarray]:
  """Our VAE params/grads tree -> the same flat Hugging Face keys as ``TorchT5VAE``."""
  t5_part = {k: v for k, v in tree.items() if k not in ("mu", "logvar", "memory_proj")}
  out = t5_lib.hf_state_dict_from_params(t5_part)
  for name in ("mu", "logvar", "memory_proj"):
    out[f"{name}.weight"] = np.ascontiguousarray(np.asarray(tree[name]["kernel"], np.float32).T)
  return out


def tree_from_flat(flat: dict[str, np.ndarray], t5_config: t5_lib.T5Config) -> dict:
  """Inverse of ``flat_hf``: flat Hugging Face keys -> our VAE params tree."""
  t5_part = {
      k: v for k, v in flat.items() if k.split(".")[0] not in ("mu", "logvar", "memory_proj")
  }
  tree = t5_lib.params_from_hf_state_dict(t5_part, t5_config)
  for name in ("mu", "logvar", "memory_proj"):
    tree[name] = {"kernel": np.ascontiguousarray(np.asarray(flat[f"{name}.weight"], np.float32).T)}
  return tree


def rel_diff(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], norm: str = "l2"):
  """Worst per-tensor relative difference and where: ||a - b|| / ||b|| ("l2") or
  max|a - b| / max|b| ("max"). Both dicts must have the same keys."""
  if set(ours) != set(theirs):
    raise AssertionError(f"key mismatch: {sorted(set(ours) ^ set(theirs))}")
  worst, where = 0.0, ""
  for key in ours:
    a, b = np.asarray(ours[key], np.float64), np.asarray(theirs[key], np.float64)
    if norm == "l2":
      d = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
    else:
      d = float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
    if d > worst:
      worst, where = d, key
  return worst, where
