"""Span-corruption pretraining of a small T5: optimizer, jitted steps, restore-or-init, the loop.

The command (t5vae_jax/pretrain.py) reads the config and flags and calls :func:`run_pretraining`; the
objective and its batches are numpy code in t5vae_jax/span_corruption.py. This module is the
JAX side, imported at the top; only the tokenizer module (transformers) is imported where it is
used, after the command has quieted transformers' import-time warning.

Training: one jitted step over a ``jax.sharding`` mesh (batch split along the data axis,
parameters replicated, or FSDP-sharded with ``config.fsdp``), mean token cross-entropy over the target
tokens (sentinels and EOS included), AdamW (default: b1 0.9, b2 0.98, eps 1e-6, decoupled weight
decay on matrices only, global-norm clipping) or Adafactor (T5's optimizer: factored second
moments, decay 0.8, update clipping 1.0, step size relative to the parameter scale), linear
warm-up then cosine / inverse-square-root / constant learning rate.

Output directory ``OUT``: the Hugging Face T5 checkpoint at the end (pretrained.save_t5),
``OUT/pretrain_ckpt/<step>/{params,opt_state,meta}`` (orbax, resumable: training's
``checkpoint.PhaseCheckpoints`` in this layout, so a damaged newest step is skipped on
``--resume`` and a failed save ends the run in one line), ``OUT/pretrain_log.jsonl`` (metrics, one
JSON object a line) and ``OUT/pretrain_run.json`` (the settings, checked on ``--resume``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import time
from typing import Any, Optional

from etils import epath
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from t5vae_jax import accelerator
from t5vae_jax import checkpoint
from t5vae_jax import losses
from t5vae_jax import pretrained
from t5vae_jax import runtime
from t5vae_jax import sharding
from t5vae_jax import span_corruption as corruption
from t5vae_jax import t5 as t5_lib
from t5vae_jax.window import MetricsWindow
from t5vae_jax.preemption import PreemptionFlag
from t5vae_jax.pretrain import CKPT_DIR, LOG_FILE, RUN_FILE, PretrainError


# ---------------------------------------------------------------------------------------------
# Model, optimizer, steps
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  """The optimizer and learning-rate schedule (hashable: compiled steps are cached on it)."""

  optimizer: str = "adamw"
  lr: float = 1e-3
  schedule: str = "cosine"
  warmup_steps: int = 200
  final_lr_fraction: float = 0.1
  weight_decay: float = 0.01
  clip_grad_norm: float = 1.0
  embedding_lr_multiplier: float = 1.0
  total_steps: int = 5000

  @classmethod
  def from_config(cls, config) -> "OptimizerSettings":
    return cls(
        **{
            f.name: getattr(config, "steps" if f.name == "total_steps" else f.name)
            for f in dataclasses.fields(cls)
        }
    )


def make_schedule(opt: OptimizerSettings):
  """Linear warm-up (at most a tenth of the steps) to ``lr``, then cosine, rsqrt or constant."""
  total = opt.total_steps
  warmup = min(opt.warmup_steps, max(total // 10, 1)) if opt.warmup_steps else 0
  peak = opt.lr
  if opt.schedule == "constant":
    after = optax.constant_schedule(peak)
  elif opt.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, max(total - warmup, 1), alpha=opt.final_lr_fraction)
  elif opt.schedule == "rsqrt":
    w = max(warmup, 1)
    after = lambda count: peak * (w / (count + w)) ** 0.5  # noqa: E731 (count since warm-up)
  else:
    raise ValueError(f"unknown schedule {opt.schedule!r}")
  if not warmup:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_pretraining_optimizer(opt: OptimizerSettings, schedule):
  """The span-corruption optimizer (AdamW with no decay on vectors, or Adafactor), clipped, with
  the embedding's step scaled; the VAE's finetuning optimizer is ``train_lib.make_optimizer``."""
  if opt.optimizer == "adamw":
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # noqa: E731
    tx = optax.adamw(
        schedule, b1=0.9, b2=0.98, eps=1e-6, weight_decay=opt.weight_decay, mask=decay_mask
    )
  elif opt.optimizer == "adafactor":
    tx = optax.adafactor(
        schedule,
        decay_rate=0.8,
        clipping_threshold=1.0,
        multiply_by_parameter_scale=True,
        weight_decay_rate=opt.weight_decay or None,
    )
  else:
    raise ValueError(f"unknown optimizer {opt.optimizer!r}")
  if opt.embedding_lr_multiplier != 1.0:
    # T5 initialises the shared embedding at std 1 while Adam moves every entry by about lr per
    # step, so the embedding (and with it the tied output layer) barely moves at lr 1e-3.
    is_embedding = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda path, _: any(getattr(k, "key", None) == "shared" for k in path), params
    )
    tx = optax.chain(tx, optax.masked(optax.scale(opt.embedding_lr_multiplier), is_embedding))
  if opt.clip_grad_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.clip_grad_norm), tx)
  return tx


def _loss_terms(params, batch, *, model, rng, deterministic):
  decoder_input_ids = t5_lib.shift_right(batch["targets"], model.config.decoder_start_token_id)
  logits = model.apply(
      {"params": params},
      batch["input_ids"],
      batch["attention_mask"],
      decoder_input_ids,
      deterministic=deterministic,
      rngs=None if deterministic else {"dropout": rng},
  )
  ce = losses.token_cross_entropy(logits, batch["targets"])
  correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
  # All targets, and the span words alone: sentinels and EOS are easy to predict and can
  # hide a model that has not learnt to use the context (a unigram plateau).
  sums = {}
  for prefix, key in (("", "target_mask"), ("span_", "span_mask")):
    mask = batch[key].astype(jnp.float32)
    sums.update(
        {
            prefix + "ce_sum": jnp.sum(ce * mask),
            prefix + "correct": jnp.sum(correct * mask),
            prefix + "count": jnp.sum(mask),
        }
    )
  return sums


def train_step(state, batch, *, model, tx, schedule, base_rng, dropout: bool):
  rng = jax.random.fold_in(base_rng, state["step"])

  def loss_fn(params):
    sums = _loss_terms(params, batch, model=model, rng=rng, deterministic=not dropout)
    return sums["ce_sum"] / jnp.maximum(sums["count"], 1.0), sums

  (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  count, span_count = jnp.maximum(sums["count"], 1.0), jnp.maximum(sums["span_count"], 1.0)
  metrics = {
      "loss": loss,
      "accuracy": sums["correct"] / count,
      "target_tokens": sums["count"],
      "span_loss": sums["span_ce_sum"] / span_count,
      "span_accuracy": sums["span_correct"] / span_count,
      "grad_norm": optax.tree.norm(grads),
      "lr": schedule(state["step"]),
  }
  return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics


def eval_step(params, batch, *, model):
  return _loss_terms(params, batch, model=model, rng=None, deterministic=True)


@dataclasses.dataclass(frozen=True)
class Compiled:
  """The model, optimizer, shardings and jitted functions of one configuration."""

  model: Any
  schedule: Any
  tx: Any
  init_params: Any  # rng -> params (placed)
  init_opt_state: Any  # params -> opt_state (placed)
  param_shardings: Any
  opt_shardings: Any
  state_shardings: Any
  train_step: Any  # (state, batch) -> (state, metrics); state donated
  eval_step: Any  # (params, batch) -> sums


@functools.lru_cache(maxsize=2)
def compile_functions(
    t5_config, dtype: str, opt: OptimizerSettings, seed: int, dropout: bool, mesh, fsdp: bool
) -> Compiled:
  """Everything jitted, built once per configuration in a process (a resumed run in the same
  process, as in tests, reuses the compiled executables)."""
  model = t5_lib.T5(t5_config, dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
  schedule = make_schedule(opt)
  tx = make_pretraining_optimizer(opt, schedule)
  dummy = jnp.zeros((1, 2), jnp.int32)
  init = lambda rng: model.init(rng, dummy, dummy + 1, dummy)["params"]  # noqa: E731
  abstract_params = jax.eval_shape(init, jax.random.key(0))
  param_shardings = sharding.tree_shardings(abstract_params, mesh, fsdp)
  opt_shardings = sharding.tree_shardings(jax.eval_shape(tx.init, abstract_params), mesh, fsdp)
  replicated = sharding.replicated(mesh)
  state_shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings}
  step_fn = jax.jit(
      functools.partial(
          train_step,
          model=model,
          tx=tx,
          schedule=schedule,
          base_rng=jax.random.key(seed + 1),
          dropout=dropout,
      ),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, replicated),
      donate_argnums=0,
  )
  eval_fn = jax.jit(
      functools.partial(eval_step, model=model),
      in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
      out_shardings=replicated,
  )
  return Compiled(
      model=model,
      schedule=schedule,
      tx=tx,
      init_params=jax.jit(init, out_shardings=param_shardings),
      init_opt_state=jax.jit(tx.init, out_shardings=opt_shardings),
      param_shardings=param_shardings,
      opt_shardings=opt_shardings,
      state_shardings=state_shardings,
      train_step=step_fn,
      eval_step=eval_fn,
  )


# ---------------------------------------------------------------------------------------------
# Set-up: tokenizer, model config, data, the run's settings file
# ---------------------------------------------------------------------------------------------
def _prepare_tokenizer(config, out, resume: bool):
  """The tokenizer, saved in OUT (trained there, or copied from config.tokenizer / a resumed
  run)."""
  from t5vae_jax import tokenizer as tokenizer_lib

  if config.tokenizer:
    tokenizer = tokenizer_lib.load_tokenizer(config.tokenizer)
    if jax.process_index() == 0 and epath.Path(config.tokenizer).resolve() != out.resolve():
      tokenizer_lib.save_tokenizer(tokenizer, out)
      spm = epath.Path(config.tokenizer) / tokenizer_lib.SPIECE_FILE
      if spm.exists():
        (out / tokenizer_lib.SPIECE_FILE).write_bytes(spm.read_bytes())
    return tokenizer
  if resume and (out / "tokenizer_config.json").exists():
    return tokenizer_lib.load_tokenizer(out)
  if jax.process_index() == 0:
    t0 = time.perf_counter()
    try:
      tokenizer_lib.train_sentencepiece_tokenizer(
          config.text, out, config.vocab_size, extra_ids=config.extra_ids
      )
    except RuntimeError as e:  # e.g. "Vocabulary size too high (N). Please set it to <= M."
      raise PretrainError(
          f"training the tokenizer on {config.text} failed: "
          f"{str(e).splitlines()[-1]} (config.vocab_size)"
      ) from None
    runtime.info(
        f"trained a {config.vocab_size}-piece SentencePiece tokenizer (+{config.extra_ids} "
        f"sentinels) in {time.perf_counter() - t0:.1f}s"
    )
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("pretrain_tokenizer")
  return tokenizer_lib.load_tokenizer(out)


def model_config(config, vocab_size: int, pad_id: int, eos_id: int):
  return t5_lib.T5Config(
      vocab_size=vocab_size,
      d_model=config.d_model,
      d_kv=config.d_kv,
      d_ff=config.d_ff,
      num_layers=config.num_layers,
      num_decoder_layers=config.num_decoder_layers,
      num_heads=config.num_heads,
      relative_attention_num_buckets=config.relative_attention_num_buckets,
      relative_attention_max_distance=config.relative_attention_max_distance,
      dropout_rate=config.dropout_rate,
      feed_forward_proj=config.feed_forward_proj,
      tie_word_embeddings=config.tie_word_embeddings,
      scale_decoder_outputs=config.tie_word_embeddings,
      pad_token_id=pad_id,
      eos_token_id=eos_id,
      decoder_start_token_id=pad_id,
  )


def _datasets(config, tokenizer, spec):
  """(train, valid or None) span-corruption data of the command's text files."""
  kw = dict(
      mode=config.examples,
      max_len=config.max_len,
      spec=spec,
      seed=config.seed,
      pad_multiple=config.pad_multiple,
  )
  train = corruption.SpanCorruptionData(corruption.tokenize_lines(tokenizer, config.text), **kw)
  valid = None
  if config.valid:
    valid = corruption.SpanCorruptionData(
        corruption.tokenize_lines(tokenizer, config.valid),
        stream=corruption.STREAM_VALID,
        shuffle=False,
        **kw,
    )
  return train, valid


def load_data(config, tokenizer, spec: corruption.CorruptionSpec):
  """(train, valid or None), checked to fit the sentinels, with a line on what they hold."""
  t0 = time.perf_counter()
  try:
    train, valid = _datasets(config, tokenizer, spec)
  except ValueError as e:  # too little text for one example, max_len too short, ...
    raise PretrainError(str(e)) from None
  max_spans = max(
      corruption.noise_counts(n, spec.noise_density, spec.mean_span_length)[1]
      for n in range(train.content_len + 1)
  ) + (1 if spec.rotate else 0)
  if max_spans > config.extra_ids:
    raise PretrainError(
        f"up to {max_spans} noise spans per example but only "
        f"{config.extra_ids} sentinels; lower config.max_len or "
        "config.noise_density, or raise config.mean_span_length"
    )
  runtime.info(
      f"data: {train.num_tokens} tokens in {len(train.lines)} lines -> {train.num_examples} "
      f"{config.examples} per epoch ({train.content_len} content tokens -> <= {config.max_len} "
      f"inputs, <= {train.target_len} targets; {train.num_truncated} lines truncated); "
      f"{train.num_examples / config.batch_size:.1f} steps/epoch; tokenized in "
      f"{time.perf_counter() - t0:.1f}s"
      + (f"; valid {valid.num_examples} examples" if valid else "")
  )
  return train, valid


def check_or_write_run_file(config, out, t5_config, resume: bool) -> None:
  """With --resume, the settings must equal those in OUT/pretrain_run.json; else writes it."""
  run_info = {
      "t5": t5_config.to_hf_dict(),
      "examples": config.examples,
      "max_len": config.max_len,
      "noise_density": config.noise_density,
      "mean_span_length": config.mean_span_length,
      "rotate": config.rotate,
      "seed": config.seed,
      "batch_size": config.batch_size,
      "optimizer": config.optimizer,
      "dtype": config.dtype,
  }
  run_file = out / RUN_FILE
  if resume and run_file.exists():
    stored = json.loads(run_file.read_text())
    diff = sorted(k for k in run_info if stored.get(k) != run_info[k])
    if diff:
      raise PretrainError(
          f"--resume with settings that differ from the run in {out}: "
          + ", ".join(f"{k} (was {stored.get(k)!r}, now {run_info[k]!r})" for k in diff)
      )
  elif jax.process_index() == 0:
    run_file.write_text(json.dumps({**run_info, "config": config.to_dict()}, indent=2))


# ---------------------------------------------------------------------------------------------
# Checkpoints: OUT/pretrain_ckpt/<step>/{params,opt_state,meta}
# ---------------------------------------------------------------------------------------------
def open_checkpoints(out, keep: int) -> checkpoint.PhaseCheckpoints:
  """``OUT/pretrain_ckpt/<step>``: training's checkpoints (saves, failed-save errors, the
  fall-back past a damaged newest step) in pretraining's layout, without a best."""
  return checkpoint.PhaseCheckpoints(out, keep, checkpoints=CKPT_DIR, best=False)


def restore_or_initialize(
    ckpts: checkpoint.PhaseCheckpoints, fns: Compiled, mesh, seed: int, resume: bool
) -> tuple[int, dict]:
  """(step, state): the newest checkpoint that restores, with ``resume`` (when there is one),
  else step 0 and freshly initialised params and optimizer state."""
  replicated = sharding.replicated(mesh)
  params = fns.init_params(jax.random.key(seed))
  state = {
      "step": jax.device_put(jnp.zeros((), jnp.int32), replicated),
      "params": params,
      "opt_state": fns.init_opt_state(params),
  }
  if not resume:
    return 0, state
  restored = ckpts.restore_newest(
      checkpoint.abstract_tree(params, fns.param_shardings),
      checkpoint.abstract_tree(state["opt_state"], fns.opt_shardings),
      warn=runtime.info,
  )
  directory = ckpts.latest.directory
  if restored is None:
    runtime.info(f"--resume: no checkpoint in {directory}; starting from scratch")
    return 0, state
  step, params, opt_state, _ = restored
  runtime.info(f"resumed from {directory} at step {step}")
  return step, {
      "step": jax.device_put(jnp.asarray(step, jnp.int32), replicated),
      "params": params,
      "opt_state": opt_state,
  }


def save(ckpts: checkpoint.PhaseCheckpoints, step: int, state: dict, t_start: float) -> None:
  ckpts.save(
      step,
      state["params"],
      state["opt_state"],
      {"step": step, "elapsed_s": time.perf_counter() - t_start},
  )


@dataclasses.dataclass(frozen=True)
class PretrainRun:
  """What stays fixed while the loop runs (the loop's state is passed and returned)."""

  config: Any  # the command's ConfigDict (configs/pretrain.py)
  out: Any  # epath.Path of OUT
  train: corruption.SpanCorruptionData
  valid: Optional[corruption.SpanCorruptionData]
  unigram_ce: Optional[float]  # valid span words under the train text's unigram distribution
  fns: Compiled
  mesh: Any
  ckpts: checkpoint.PhaseCheckpoints
  t_start: float  # time.perf_counter() when the command started (for the budget)

  @property
  def num_valid_batches(self) -> int:
    if self.valid is None:
      return 0
    return min(
        -(-self.valid.num_examples // self.config.batch_size),
        self.config.valid_max_batches or 10**9,
    )


def local_batch(batch: dict, mesh, batch_size: int) -> dict:
  """This process's rows of a global host batch, as global arrays over ``mesh``."""
  lo = jax.process_index() * batch_size // jax.process_count()
  hi = (jax.process_index() + 1) * batch_size // jax.process_count()
  return sharding.global_batch({k: v[lo:hi] for k, v in batch.items()}, mesh)


def append_log(out, row: dict) -> None:
  if jax.process_index() == 0:
    with (out / LOG_FILE).open("a") as f:
      f.write(json.dumps(row) + "\n")


def validate(run: PretrainRun, params, step: int) -> Optional[dict]:
  """The validation row (logged and printed) of ``params`` at ``step``; None without config.valid."""
  if run.valid is None:
    return None
  t = time.perf_counter()
  sums = collections.Counter()
  for batch in run.valid.epoch_batches(run.config.batch_size, run.config.valid_max_batches):
    res = sharding.to_host(
        run.fns.eval_step(params, local_batch(batch, run.mesh, run.config.batch_size))
    )
    sums.update({k: float(v) for k, v in res.items()})
  loss = sums["ce_sum"] / max(sums["count"], 1)
  span = max(sums["span_count"], 1)
  row = {
      "step": step,
      "valid_loss": loss,
      "valid_accuracy": sums["correct"] / max(sums["count"], 1),
      "valid_span_loss": sums["span_ce_sum"] / span,
      "valid_span_accuracy": sums["span_correct"] / span,
      "unigram_span_loss": run.unigram_ce,
      "valid_seconds": time.perf_counter() - t,
  }
  append_log(run.out, row)
  runtime.info(
      f"step {step}: valid loss {loss:.4f} acc {row['valid_accuracy']:.3f}; span words: "
      f"loss {row['valid_span_loss']:.4f} acc {row['valid_span_accuracy']:.3f} "
      f"({row['valid_seconds']:.1f}s)"
  )
  return row


def window_row(window: MetricsWindow) -> dict:
  """Mean training metrics of the steps since the last log line (the last step's lr), and their
  speed."""
  return {
      **window.means(("loss", "accuracy", "span_loss", "span_accuracy", "grad_norm")),
      "lr": window.last("lr"),
      "steps_per_s": window.steps_per_second(),
      "tokens_per_s": window.tokens_per_second(),
  }


def out_of_time(
    elapsed_s: float,
    budget_s: float,
    step_times: list[float],
    valid_seconds: float,
    num_valid_batches: int,
) -> bool:
  """Whether one more step and the final validation would overrun ``budget_s``. Before a
  validation has run, it is guessed at a forward pass per batch, about a third of a training
  step, say a half."""
  per_step = float(np.median(step_times[-20:])) if step_times else 0.0
  valid_estimate = valid_seconds or num_valid_batches * per_step / 2
  return elapsed_s + 2 * per_step + valid_estimate > budget_s


@dataclasses.dataclass
class LoopResult:
  state: dict
  step: int
  stopped_by: str  # "steps", "max_minutes", "stop_at_step" or the preemption's signal
  first_loss: Optional[float]
  last_loss: Optional[float]
  valid_loss: Optional[float]  # of the last validation in the loop
  step_times: list[float]  # seconds of each step after the first (which compiles)
  train_seconds: float


def train_loop(run: PretrainRun, state: dict, step: int) -> LoopResult:
  """Steps from ``step`` to config.steps, logging, validating and saving on the way; stops
  early on SIGTERM/Ctrl-C, config.max_minutes or config.stop_at_step."""
  config, train = run.config, run.train
  budget_s = None if config.max_minutes is None else config.max_minutes * 60.0
  start_step, stopped_by = step, "steps"
  first_loss = last_loss = valid_loss = None
  last_valid_seconds = 0.0
  window = MetricsWindow()
  t_loop = time.perf_counter()
  step_times: list[float] = []
  batch = train.train_batch(step, config.batch_size) if step < config.steps else None
  with PreemptionFlag() as stop:  # SIGTERM/Ctrl-C on any process: stop at one step, save, export
    while step < config.steps:
      t_step = time.perf_counter()
      tokens = int(batch["attention_mask"].sum() + batch["target_mask"].sum())
      state, metrics = run.fns.train_step(state, local_batch(batch, run.mesh, config.batch_size))
      step += 1
      # The next batch is built on the host while the device runs this step.
      batch = train.train_batch(step, config.batch_size) if step < config.steps else None
      metrics = jax.device_get(metrics)
      now = time.perf_counter()
      if step > start_step + 1:  # the first step includes compilation
        step_times.append(now - t_step)
      window.add(metrics, tokens)
      if step - start_step <= 2 or step % config.log_every == 0 or step == config.steps:
        row = {
            "step": step,
            **window_row(window),
            "epoch": step * config.batch_size / train.num_examples,
            "elapsed_s": now - run.t_start,
        }
        first_loss = row["loss"] if first_loss is None else first_loss
        last_loss = row["loss"]
        append_log(run.out, row)
        runtime.info(
            f"step {step}/{config.steps} loss {row['loss']:.4f} acc {row['accuracy']:.3f} "
            f"(span words {row['span_loss']:.3f} / {row['span_accuracy']:.3f}) "
            f"lr {row['lr']:.2e} gnorm {row['grad_norm']:.2f} "
            f"{row['steps_per_s']:.2f} steps/s {row['tokens_per_s']:.0f} tok/s "
            f"epoch {row['epoch']:.2f} ({row['elapsed_s']:.0f}s)"
        )
        window.reset()
      if run.valid is not None and step % config.eval_every == 0 and step != config.steps:
        valid_row = validate(run, state["params"], step)
        valid_loss, last_valid_seconds = valid_row["valid_loss"], valid_row["valid_seconds"]
        window.restart_clock()
      if step % config.save_every == 0 and step != config.steps:
        save(run.ckpts, step, state, run.t_start)
      preempted = stop.should_stop(step)  # the same step on every process
      over_budget = budget_s is not None and out_of_time(
          time.perf_counter() - run.t_start,
          budget_s,
          step_times,
          last_valid_seconds,
          run.num_valid_batches,
      )
      if jax.process_count() > 1:
        over_budget = bool(multihost_utils.broadcast_one_to_all(np.asarray(over_budget)))
      at_stop_step = config.stop_at_step is not None and step >= config.stop_at_step
      if (over_budget or preempted or at_stop_step) and step < config.steps:
        stopped_by = (
            stop.description if preempted else "max_minutes" if over_budget else "stop_at_step"
        )
        runtime.info(f"stopping at step {step} ({stopped_by})")
        break
  if len(window):  # steps since the last log line
    last_loss = window.means(("loss",))["loss"]
    first_loss = last_loss if first_loss is None else first_loss
  return LoopResult(
      state=state,
      step=step,
      stopped_by=stopped_by,
      first_loss=first_loss,
      last_loss=last_loss,
      valid_loss=valid_loss,
      step_times=step_times,
      train_seconds=time.perf_counter() - t_loop,
  )


# ---------------------------------------------------------------------------------------------
# The run: set up, train, save, validate, export
# ---------------------------------------------------------------------------------------------
def run_pretraining(
    config, out: str, resume: bool = False, t_start: Optional[float] = None
) -> dict[str, Any]:
  """Pretrains as ``config`` (configs/pretrain.py's ConfigDict) says and writes ``out``; with
  ``resume``, continues the run there. Returns a summary (final step, losses, timings, paths).
  ``t_start``: when the command started (default: now)."""
  t_start = time.perf_counter() if t_start is None else t_start
  out = checkpoint.absolute(out)  # orbax wants absolute paths; `--out runs/t5` is relative
  ckpt_dir = out / CKPT_DIR
  if not resume and ckpt_dir.exists() and any(ckpt_dir.iterdir()):
    raise PretrainError(
        f"{ckpt_dir} already holds checkpoints; pass --resume to continue "
        "that run, or choose another --out"
    )
  out.mkdir(parents=True, exist_ok=True)

  mesh = sharding.make_mesh(jax.devices()[: config.num_devices] if config.num_devices else None)
  sharding.check_batch_size(config.batch_size, mesh)
  config.dtype = accelerator.compute_dtype(config.dtype, mesh.devices.flat)  # run.json: resolved
  accelerator.announce(mesh.devices.flat, config.dtype)

  tokenizer = _prepare_tokenizer(config, out, resume)
  pad_id, eos_id = int(tokenizer.pad_token_id), int(tokenizer.eos_token_id)
  first_sentinel = corruption.sentinel_ids(tokenizer, config.extra_ids)
  vocab = corruption.round_up(len(tokenizer), max(config.vocab_multiple, 1))
  t5_config = model_config(config, vocab, pad_id, eos_id)
  spec = corruption.CorruptionSpec(
      noise_density=config.noise_density,
      mean_span_length=config.mean_span_length,
      first_sentinel_id=first_sentinel,
      num_sentinels=config.extra_ids,
      eos_id=eos_id,
      pad_id=pad_id,
      rotate=config.rotate,
  )
  train, valid = load_data(config, tokenizer, spec)
  unigram_ce = None
  if valid is not None:
    unigram_ce = corruption.unigram_cross_entropy(train.flat, valid.flat, vocab)
    runtime.info(
        f"valid span words under the training text's unigram distribution: loss "
        f"{unigram_ce:.3f} (a model below it uses context)"
    )
  check_or_write_run_file(config, out, t5_config, resume)

  fns = compile_functions(
      t5_config,
      config.dtype,
      OptimizerSettings.from_config(config),
      config.seed,
      config.dropout_rate > 0,
      mesh,
      config.fsdp,
  )
  ckpts = open_checkpoints(out, config.keep_checkpoints)
  start_step, state = restore_or_initialize(ckpts, fns, mesh, config.seed, resume)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
  runtime.info(
      f"model: {num_params / 1e6:.2f}M params, vocab {vocab}, d_model {t5_config.d_model}, "
      f"{t5_config.num_layers}+{t5_config.num_decoder_layers} layers, "
      f"{t5_config.feed_forward_proj}; "
      f"{mesh.size} device(s); {config.optimizer} lr {config.lr:g} {config.schedule}; "
      f"steps {start_step} -> {config.steps}"
  )
  run = PretrainRun(
      config=config,
      out=out,
      train=train,
      valid=valid,
      unigram_ce=unigram_ce,
      fns=fns,
      mesh=mesh,
      ckpts=ckpts,
      t_start=t_start,
  )
  result = train_loop(run, state, start_step)

  step, valid_loss = result.step, result.valid_loss
  if ckpts.latest_step() != step and step > start_step:
    save(ckpts, step, result.state, t_start)
  if (step > start_step or valid_loss is None) and not result.stopped_by.startswith("SIG"):
    # (skipped on SIGTERM: a preempted job has seconds left)
    valid_row = validate(run, result.state["params"], step)
    valid_loss = None if valid_row is None else valid_row["valid_loss"]
  ckpts.wait()
  ckpts.close()

  params_host = sharding.to_host(result.state["params"])
  if jax.process_index() == 0:
    pretrained.save_t5(
        out, dataclasses.replace(t5_config, dropout_rate=config.save_dropout_rate), params_host
    )
  summary = {
      "step": step,
      "stopped_by": result.stopped_by,
      "first_loss": result.first_loss,
      "last_loss": result.last_loss,
      "valid_loss": valid_loss,
      "num_params": num_params,
      "train_seconds": result.train_seconds,
      "seconds_per_step": (float(np.median(result.step_times)) if result.step_times else None),
      "total_seconds": time.perf_counter() - t_start,
      "out": str(out),
  }
  append_log(out, {"summary": summary})
  runtime.info(
      f"wrote {out} (Hugging Face T5): step {step}, train loss {result.last_loss}, valid "
      f"loss {valid_loss}, {summary['total_seconds']:.0f}s in all"
  )
  return summary
