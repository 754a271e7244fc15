"""Our jitted VAE train step against Hugging Face's PyTorch T5 doing the same work.

Both sides: phase 2 (everything trains), float32, ``latent_injection="self_prefix"`` (the
released code's model), batch 32 x (64 source + 64 target) tokens, targets = inputs, lengths
uniform in [16, 64], dropout on both, token CE summed per example + KL (beta 1), AdamW lr 1e-3
eps 1e-3. Before timing, both sides get the same weights and must agree on the deterministic
loss (z = mu, no dropout), on every gradient and on one AdamW update.

    python bench/train_step.py --size tiny     # d_model 128, 2+2 layers, vocab 4000
    python bench/train_step.py --size small    # t5-small's shape, vocab 32128

Steps alternate ours / torch so that load from other processes hits both alike; medians are
reported with the load average before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from t5vae_jax import losses
from t5vae_jax import model as model_lib
from t5vae_jax import packing as packing_lib
from t5vae_jax import t5 as t5_lib
from t5vae_jax import train_lib

SIZES = {
    "tiny": dict(
        vocab_size=4000,
        d_model=128,
        d_kv=32,
        d_ff=512,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
    ),
    "small": dict(
        vocab_size=32128,
        d_model=512,
        d_kv=64,
        d_ff=2048,
        num_layers=6,
        num_decoder_layers=6,
        num_heads=8,
    ),
}
DEFAULT_STEPS = {"tiny": 20, "small": 5}


# ----------------------------------------------------------------------------- our side
def make_config(
    shape: dict, *, dropout: float = 0.1, latent_dim: int = 32, pack_tokens: bool = True
):
  """configs/default.py with a scratch model of ``shape``, self_prefix, constant beta 1."""
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  from configs import default

  config = default.get_config()
  config.model.pretrained = ""
  t5 = dict(config.model.t5.to_dict())
  t5.update(shape)
  config.model.t5 = t5
  config.model.dropout_rate = dropout
  config.model.latent_dim = latent_dim
  config.model.latent_injection = "self_prefix"
  config.model.dtype = "float32"
  config.beta.schedule = "constant"
  config.beta.value = 1.0
  config.kl_floor = 0.0
  config.denoise_rate = 0.0
  config.pack_tokens = pack_tokens
  return config


def build_ours(config, seed: int = 0):
  """(model, t5_config, params, tx, step_fn) as train_lib.train_and_evaluate builds them.

  ``step_fn(state, batch)`` packs the real tokens (``config.pack_tokens``, the default) with
  the batch's capacity, as the training loop does: one compilation per distinct capacity.
  """
  t5_config = t5_lib.T5Config(
      **config.model.t5.to_dict(), scale_decoder_outputs=config.model.t5.tie_word_embeddings
  )
  t5_config = dataclasses.replace(t5_config, dropout_rate=config.model.dropout_rate)
  model = model_lib.T5VAEModel(
      t5_config, vae=train_lib.vae_config_from(config), dtype=jnp.dtype(config.model.dtype)
  )
  rng = jax.random.fold_in(jax.random.key(seed), 0)
  params = jax.device_get(jax.jit(model_lib.init_params, static_argnums=0)(model, rng))
  tx = train_lib.make_optimizer(config, 2, params)
  beta_fn = train_lib.make_beta_fn(config, 2, steps_per_epoch=1000, total_steps=1000)
  base_rng = jax.random.fold_in(jax.random.key(seed), 2)
  jitted = {}

  def step_fn(state, batch):
    capacity = (
        packing_lib.capacity(np.asarray(batch["attention_mask"])) if config.pack_tokens else None
    )
    if capacity not in jitted:
      jitted[capacity] = jax.jit(
          functools.partial(
              train_lib.train_step,
              model=model,
              tx=tx,
              beta_fn=beta_fn,
              base_rng=base_rng,
              config=config,
              capacity=capacity,
          ),
          donate_argnums=0,
      )
    return jitted[capacity](state, batch)

  step_fn.num_compiled = lambda: len(jitted)
  return model, t5_config, params, tx, step_fn


def new_state(params, tx) -> train_lib.TrainState:
  params = jax.device_put(params)
  opt_state = jax.jit(tx.init)(params)
  return train_lib.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=opt_state,
      num_skipped=jnp.zeros((), jnp.int32),
  )


# ----------------------------------------------------------------------------- data
def make_batches(
    n: int, batch: int, length: int, vocab: int, seed: int = 0, min_len: int = 16
) -> list[dict[str, np.ndarray]]:
  """Random sentences of lengths uniform in [min_len, length], EOS-terminated, pad 0."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    lengths = rng.integers(min_len, length + 1, batch)
    ids = rng.integers(3, vocab, (batch, length)).astype(np.int32)
    ids[np.arange(batch), lengths - 1] = 1  # EOS
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    out.append(
        {
            "input_ids": np.where(mask > 0, ids, 0).astype(np.int32),
            "attention_mask": mask,
            "example_weights": np.ones((batch,), np.float32),
        }
    )
  return out


# ----------------------------------------------------------------------------- parity
def parity_check(model, config, params, tx, torch_model, torch_opt, batch, *, verbose=True):
  """Same weights, same batch, z = mu, no dropout: the loss, every gradient, and one AdamW update.

  Gradients are compared per tensor by relative L2 norm: float32 sums over 2048 tokens differ in
  the last bits, and where two positions nearly tie for a max-pooled feature that noise can move
  the argmax, so single entries may differ more than whole tensors. The optimizers are compared
  on the same (torch's) gradients, so that check is exact up to rounding.
  Raises SystemExit beyond tolerance: a benchmark of different work is worthless.
  """
  import optax
  import torch
  import torch_reference as tr

  ids, mask = batch["input_ids"], batch["attention_mask"]
  capacity = packing_lib.capacity(mask) if config.pack_tokens else None

  def det_loss(p):  # our train step's loss (packed as configured), deterministic
    dec_ids = t5_lib.shift_right(ids, model.config.decoder_start_token_id)
    packing = None if capacity is None else packing_lib.make_packing(mask, capacity)
    out = model.apply(
        {"params": p},
        ids,
        mask,
        dec_ids,
        deterministic=True,
        sample_latent=False,
        packing=packing,
        encoder_packing=packing,
    )
    token_nll = losses.target_token_nll(out["logits"], ids, packing)
    loss, aux = losses.vae_loss(
        token_nll, mask, out["mu"], out["logvar"], 1.0, example_weights=batch["example_weights"]
    )
    return loss, aux

  (our_loss, _), our_grads = jax.jit(jax.value_and_grad(det_loss, has_aux=True))(params)
  our_loss = float(our_loss)

  torch_model.eval()
  t_ids, t_mask = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
  loss, _, _ = torch_model(t_ids, t_mask, eps=None, beta=1.0)
  torch_opt.zero_grad(set_to_none=True)
  loss.backward()
  torch_loss = float(loss.detach())
  torch_grads = torch_model.grads_as_hf()
  torch_opt.step()
  torch_new = torch_model.params_as_hf()
  # Back to the starting weights and a fresh optimizer for the timed steps, like ours.
  torch_model.load_jax_params(params)
  torch_opt.zero_grad(set_to_none=True)
  torch_opt.state.clear()
  torch_model.train()

  loss_diff = abs(our_loss - torch_loss) / abs(torch_loss)
  grad_l2, grad_l2_at = tr.rel_diff(tr.flat_hf(jax.device_get(our_grads)), torch_grads, "l2")
  grad_max, grad_max_at = tr.rel_diff(tr.flat_hf(jax.device_get(our_grads)), torch_grads, "max")
  same_grads = jax.tree.map(np.asarray, tr.tree_from_flat(torch_grads, model.config))
  updates, _ = jax.jit(tx.update)(same_grads, jax.jit(tx.init)(params), params)
  our_new = tr.flat_hf(jax.device_get(optax.apply_updates(params, updates)))
  upd_max, upd_at = tr.rel_diff(our_new, torch_new, "max")
  result = dict(
      loss_ours=our_loss,
      loss_torch=torch_loss,
      loss_rel_diff=loss_diff,
      grad_rel_l2=grad_l2,
      grad_rel_l2_at=grad_l2_at,
      grad_rel_max=grad_max,
      grad_rel_max_at=grad_max_at,
      adamw_rel_max=upd_max,
      adamw_rel_max_at=upd_at,
  )
  if verbose:
    print(
        f"parity (same weights, z = mu, no dropout): loss ours {our_loss:.6f} torch "
        f"{torch_loss:.6f} (rel {loss_diff:.1e}); grads: worst tensor rel L2 {grad_l2:.1e} "
        f"[{grad_l2_at}], worst entry rel {grad_max:.1e} [{grad_max_at}]; AdamW step on the "
        f"same grads: params rel {upd_max:.1e} [{upd_at}]"
    )
  if not (loss_diff < 1e-4 and grad_l2 < 1e-2 and upd_max < 1e-5):
    raise SystemExit(f"PARITY FAILED, not timing different work: {result}")
  return result


# ----------------------------------------------------------------------------- reporting
def machine_info() -> dict[str, str]:
  cpu = "?"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  import flax
  import jaxlib
  import torch
  import transformers

  return {
      "nproc": str(os.cpu_count()),
      "cpu": cpu,
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "flax": flax.__version__,
      "torch": torch.__version__,
      "transformers": transformers.__version__,
      "XLA_FLAGS": os.environ.get("XLA_FLAGS", "(unset: XLA default)"),
      "torch_threads": str(torch.get_num_threads()),
      "torch_interop_threads": str(torch.get_num_interop_threads()),
  }


def loadavg() -> str:
  return "/".join(f"{x:.2f}" for x in os.getloadavg())


class OtherLoad:
  """CPU time used by *other* processes while timing, in cores (0 .. nproc).

  /proc/stat's busy jiffies of the whole machine minus this process's own (/proc/self/stat),
  over the wall time between start() and stop(). On a 2-core machine, 1.0 means another
  process kept one core busy all along: timings are then pessimistic, and PyTorch's
  barrier-synchronised OpenMP threads suffer more from it than XLA's work-stealing pool.
  """

  def __init__(self):
    self.start()

  @staticmethod
  def _read():
    try:
      with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
      busy = sum(cpu) - cpu[3] - (cpu[4] if len(cpu) > 4 else 0)  # minus idle and iowait
      with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      own = int(fields[11]) + int(fields[12])  # utime + stime, all threads
      return busy, own, time.perf_counter()
    except (OSError, ValueError, IndexError):
      return None

  def start(self):
    self._t0 = self._read()

  def stop(self) -> float:
    t1 = self._read()
    if self._t0 is None or t1 is None or t1[2] <= self._t0[2]:
      return float("nan")
    hz = os.sysconf("SC_CLK_TCK")
    other = (t1[0] - self._t0[0]) - (t1[1] - self._t0[1])
    return max(0.0, other / hz / (t1[2] - self._t0[2]))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
  parser.add_argument("--steps", type=int, default=None, help="timed steps per side")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--dropout", type=float, default=0.1)
  parser.add_argument(
      "--threads",
      type=int,
      default=os.cpu_count(),
      help="torch.set_num_threads (XLA keeps its default)",
  )
  parser.add_argument(
      "--pack-tokens",
      choices=("on", "off"),
      default="on",
      help="config.pack_tokens of our step (on: the default config)",
  )
  parser.add_argument("--skip-parity", action="store_true")
  parser.add_argument(
      "--max-other",
      type=float,
      default=0.2,
      help="set aside step pairs while other processes use more cores than this",
  )
  parser.add_argument(
      "--budget",
      type=float,
      default=None,
      help="seconds of timing before settling for noisy pairs (default: tiny 120, small 150)",
  )
  args = parser.parse_args()
  steps = args.steps or DEFAULT_STEPS[args.size]
  if args.budget is None:
    args.budget = {"tiny": 120.0, "small": 150.0}[args.size]

  import torch
  import torch_reference as tr

  torch.set_num_threads(args.threads)
  torch.manual_seed(0)

  info = machine_info()
  print(" ".join(f"{k}={v}" for k, v in info.items()))
  print(
      f"size={args.size} batch={args.batch_size} length={args.length}+{args.length} "
      f"dropout={args.dropout} steps={steps} warmup={args.warmup} "
      f"pack_tokens={args.pack_tokens} load={loadavg()}"
  )

  config = make_config(SIZES[args.size], dropout=args.dropout, pack_tokens=args.pack_tokens == "on")
  model, t5_config, params, tx, step_fn = build_ours(config)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  print(
      f"model: {t5_config.d_model=} layers={t5_config.num_layers}+{t5_config.num_decoder_layers}"
      f" heads={t5_config.num_heads} d_ff={t5_config.d_ff} vocab={t5_config.vocab_size} "
      f"params={n_params / 1e6:.2f}M"
  )

  torch_model = tr.TorchT5VAE(t5_config, config.model.latent_dim)
  torch_model.load_jax_params(params)
  torch_opt = tr.make_optimizer(
      torch_model,
      lr=config.optimizer.learning_rate,
      b1=config.optimizer.b1,
      b2=config.optimizer.b2,
      eps=config.optimizer.eps,
      weight_decay=config.optimizer.weight_decay,
  )
  print(f"torch attention implementation: {torch_model.t5.config._attn_implementation}")

  batches = make_batches(4, args.batch_size, args.length, t5_config.vocab_size)
  if not args.skip_parity:
    t0 = time.perf_counter()
    parity_check(model, config, params, tx, torch_model, torch_opt, batches[0])
    print(f"parity check took {time.perf_counter() - t0:.1f} s")
  torch_model.train()

  state = new_state(params, tx)
  t0 = time.perf_counter()
  for b in batches:  # compile every capacity these batches need before timing
    state, aux = step_fn(state, b)
    jax.block_until_ready((state, aux))
  print(
      f"ours: {len(batches)} first steps, compiling {step_fn.num_compiled()} program(s): "
      f"{time.perf_counter() - t0:.1f} s"
  )
  torch_batches = [
      (torch.from_numpy(b["input_ids"]).long(), torch.from_numpy(b["attention_mask"]).long())
      for b in batches
  ]

  # Pairs of steps (ours, then torch); a pair during which other processes kept more than
  # --max-other cores busy is set aside and another one run, within --budget seconds.
  ours_t, torch_t, other_t, kept = [], [], [], []
  our_losses, torch_losses = [], []
  budget_end = time.perf_counter() + args.budget
  i = 0
  while True:
    b = batches[i % len(batches)]
    other = OtherLoad()
    t0 = time.perf_counter()
    state, aux = step_fn(state, b)
    jax.block_until_ready((state, aux))
    t1 = time.perf_counter()
    loss = tr.train_step(torch_model, torch_opt, *torch_batches[i % len(batches)])
    t2 = time.perf_counter()
    busy = other.stop()
    our_losses.append(float(aux["loss"]))
    torch_losses.append(float(loss))
    i += 1
    if i > args.warmup:
      ours_t.append(t1 - t0)
      torch_t.append(t2 - t1)
      other_t.append(busy)
      kept.append(busy <= args.max_other)
      if sum(kept) >= steps or (len(kept) >= steps and time.perf_counter() > budget_end):
        break

  n_clean = sum(kept)
  use_clean = n_clean >= min(5, steps)

  def summary(times):
    clean = [t for t, k in zip(times, kept) if k] if use_clean else times
    return 1e3 * statistics.median(clean), 1e3 * min(times), 1e3 * statistics.median(times)

  ours_ms, ours_min, ours_all = summary(ours_t)
  torch_ms, torch_min, torch_all = summary(torch_t)
  padded = args.batch_size * 2 * args.length
  real = 2 * float(np.mean([b["attention_mask"].sum() for b in batches]))
  print(
      f"losses ({'dropout, ' if args.dropout else ''}sampled z; should fall alike): ours "
      f"{our_losses[0]:.2f} -> {our_losses[-1]:.2f}, torch {torch_losses[0]:.2f} -> "
      f"{torch_losses[-1]:.2f}"
  )
  print(
      f"step pairs timed: {len(kept)}; quiet (other processes <= {args.max_other} cores): "
      f"{n_clean}; others' use per pair: median {statistics.median(other_t):.2f}, max "
      f"{max(other_t):.2f} cores; load {loadavg()}"
      + (
          ""
          if n_clean >= steps
          else f"\n  WARNING: only {n_clean} quiet pairs of {steps} wanted within --budget; medians "
          f"below are over {'the quiet pairs' if use_clean else 'all pairs'}"
      )
  )
  for name, ms, mn, al in (
      ("ours ", ours_ms, ours_min, ours_all),
      ("torch", torch_ms, torch_min, torch_all),
  ):
    print(
        f"{name}: {ms:8.1f} ms/step (min {mn:.1f}, median of all pairs {al:.1f})  "
        f"{padded / ms * 1e3:8.0f} tokens/s  {real / ms * 1e3:8.0f} real tokens/s"
    )
  print(f"ratio of mins = {torch_min / ours_min:.3f}")
  print(f"ratio = torch_time / our_time = {torch_ms / ours_ms:.3f}")


if __name__ == "__main__":
  main()
