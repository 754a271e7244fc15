"""The two-phase trainer (Park & Lee 2021, section 4).

Phase 1 (encoder warm-up): beta = 0; only the encoder, its final norm, ``mu`` and ``logvar``
train. The decoder, the memory projection, the LM head and the shared (tied) embedding are
frozen in the optimizer (``optax.multi_transform`` with ``optax.set_to_zero``: no Adam state).
With ``phase1.freeze_decoder=False`` (ablation) nothing is frozen, as in the released code.
Phase 2: everything trains with the KL back in (schedule, floor), starting from phase 1's
params in the same workdir with a fresh optimizer.

One jitted, sharded step ``(state, batch) -> (state, metrics)``; the step's randomness is
derived from (seed, phase, step), so a resumed run replays exactly what an uninterrupted one
would have done.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath

from t5vae_jax import accelerator
from t5vae_jax import checkpoint as ckpt_lib
from t5vae_jax import config_validation
from t5vae_jax import data as data_lib
from t5vae_jax import evaluation
from t5vae_jax import hub
from t5vae_jax import losses
from t5vae_jax import model as model_lib
from t5vae_jax import noise
from t5vae_jax import packing as packing_lib
from t5vae_jax import pretrained
from t5vae_jax import runtime
from t5vae_jax import schedules
from t5vae_jax import sharding
from t5vae_jax import t5 as t5_lib
from t5vae_jax import tokenizer as tokenizer_lib
from t5vae_jax.errors import UserError
from t5vae_jax.preemption import PreemptionFlag
from t5vae_jax.window import MetricsWindow

PHASE1_TRAINABLE = ("encoder", "mu", "logvar")


class TrainingError(UserError, RuntimeError):
  """A run cannot go on; the message says why and what to do."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: Any
  opt_state: Any
  num_skipped: jax.Array  # int32: updates skipped for a non-finite loss or gradient


# --------------------------------------------------------------------------------------------
# Optimizer and freezing
# --------------------------------------------------------------------------------------------
def trainable_labels(params, phase: int, freeze_decoder: bool = True):
  """'trainable' / 'frozen' per leaf, by top-level parameter group.

  Phase 1 with ``freeze_decoder=False`` trains every group, the shared (tied) embedding and so
  the tied LM head included: the released code then skips its freeze and the whole T5 trains.
  """
  if phase == 2 or not freeze_decoder:
    groups = set(params)
  else:
    groups = set(PHASE1_TRAINABLE)
  return {
      name: jax.tree.map(lambda _: "trainable" if name in groups else "frozen", sub)
      for name, sub in params.items()
  }


def make_optimizer(config, phase: int, params) -> optax.GradientTransformation:
  """AdamW from ``config.optimizer`` on the trainable groups of ``phase``; the frozen ones get
  zero updates (and no Adam moments: ``optax.set_to_zero`` keeps no state)."""
  opt = config.optimizer
  adamw = optax.adamw(
      opt.learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay
  )
  if opt.grad_clip_norm and opt.grad_clip_norm > 0:
    adamw = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), adamw)
  labels = trainable_labels(params, phase, config.phase1.freeze_decoder)
  return optax.multi_transform({"trainable": adamw, "frozen": optax.set_to_zero()}, labels)


def make_beta_fn(config, phase: int, steps_per_epoch: int, total_steps: int) -> Callable:
  if phase == 1:
    return schedules.make_beta_schedule("zero", steps_per_epoch=steps_per_epoch)
  b = config.beta
  return schedules.make_beta_schedule(
      b.schedule,
      steps_per_epoch=steps_per_epoch,
      value=b.value,
      epochs=b.epochs,
      total_steps=total_steps,
      n_cycles=b.n_cycles,
      ratio=b.ratio,
  )


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------
def step_rngs(base_rng: jax.Array, step) -> dict[str, jax.Array]:
  noise_rng, latent_rng, dropout_rng = jax.random.split(jax.random.fold_in(base_rng, step), 3)
  return {"noise": noise_rng, "latent": latent_rng, "dropout": dropout_rng}


def compute_loss(
    params,
    batch,
    rngs,
    *,
    model: model_lib.T5VAEModel,
    beta,
    config,
    train: bool,
    capacity: Optional[int] = None,
    num_shards: int = 1,
):
  """The VAE loss of one batch; denoising and the KL floor only when ``train``.

  With ``capacity`` (static; ``packing.capacity`` of the batch's mask) the per-token layers
  and the output layer run on the real tokens only, ``num_shards`` packs per data shard; the
  loss is the same, ``out["logits"]`` then holds the packed slots.
  """
  ids, mask = batch["input_ids"], batch["attention_mask"]
  enc_ids, enc_mask = ids, mask
  if train and config.denoise_rate > 0:
    enc_ids, enc_mask = noise.delete_tokens(
        rngs["noise"],
        ids,
        mask,
        config.denoise_rate,
        config.denoise_mode,
        eos_id=model.config.eos_token_id,
        pad_id=model.config.pad_token_id,
    )
  decoder_input_ids = t5_lib.shift_right(ids, model.config.decoder_start_token_id)
  packing = enc_packing = None
  if capacity is not None:
    packing = packing_lib.make_packing(mask, capacity, num_shards)
    # Denoising only deletes tokens: the clean batch's capacity holds the noised one too.
    enc_packing = (
        packing if enc_mask is mask else packing_lib.make_packing(enc_mask, capacity, num_shards)
    )
  out = model.apply(
      {"params": params},
      ids,
      mask,
      decoder_input_ids,
      deterministic=not train,
      encoder_input_ids=enc_ids,
      encoder_attention_mask=enc_mask,
      packing=packing,
      encoder_packing=enc_packing,
      rngs={"latent": rngs["latent"], "dropout": rngs["dropout"]},
  )
  token_nll = losses.target_token_nll(out["logits"], ids, packing)
  rec_normalizer = config.rec_normalizer
  loss, aux = losses.vae_loss(
      token_nll,
      mask,
      out["mu"],
      out["logvar"],
      beta,
      kl_floor=config.kl_floor if train else 0.0,
      kl_threshold_mode=config.kl_threshold_mode,
      example_weights=batch["example_weights"],
      rec_normalizer=rec_normalizer,
      padded_length=config.data.max_len if rec_normalizer == "max_len" else None,
  )
  return loss, (aux, out)


def train_step(
    state: TrainState,
    batch,
    *,
    model,
    tx,
    beta_fn,
    base_rng,
    config,
    capacity: Optional[int] = None,
    num_shards: int = 1,
):
  """One AdamW step (skipped when the loss or gradient is not finite). ``capacity`` and
  ``num_shards``: token packing, see ``compute_loss``."""
  rngs = step_rngs(base_rng, state.step)
  beta = beta_fn(state.step)

  def loss_fn(params):
    loss, (aux, _) = compute_loss(
        params,
        batch,
        rngs,
        model=model,
        beta=beta,
        config=config,
        train=True,
        capacity=capacity,
        num_shards=num_shards,
    )
    return loss, aux

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  # A NaN or inf anywhere in the gradients makes their norm non-finite: one pass, no
  # per-leaf checks (a finite gradient whose norm overflows float32, > ~1.8e19, is skipped
  # too). lax.cond (not jnp.where over every leaf) keeps the skip free when unused.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def apply_update(state):
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(params=optax.apply_updates(state.params, updates), opt_state=new_opt_state)

  new_state = jax.lax.cond(finite, apply_update, lambda state: state, state)
  new_state = new_state.replace(
      step=state.step + 1, num_skipped=state.num_skipped + (1 - finite.astype(jnp.int32))
  )
  aux = dict(aux, finite=finite.astype(jnp.float32), grad_norm=grad_norm)
  return new_state, aux


# --------------------------------------------------------------------------------------------
# Building model, tokenizer and data from a config
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Setup:
  model: model_lib.T5VAEModel
  t5_config: t5_lib.T5Config
  vae_config: model_lib.VAEConfig
  tokenizer: Any
  pretrained_params: Optional[dict]


def vae_config_from(config) -> model_lib.VAEConfig:
  m = config.model
  return model_lib.VAEConfig(
      latent_dim=m.latent_dim,
      pooling=m.pooling,
      pool_layers=m.pool_layers,
      pool_padding=m.pool_padding,
      pool_dropout=m.pool_dropout,
      latent_injection=m.latent_injection,
  )


def get_tokenizer(config, workdir: epath.Path):
  """The configured tokenizer, the pretrained checkpoint's, or (scratch models) one trained on
  the training split once and kept in ``<workdir>/tokenizer``."""
  if config.data.tokenizer:
    return tokenizer_lib.load_tokenizer(config.data.tokenizer)
  if config.model.pretrained:
    return pretrained.load_tokenizer(config.model.pretrained)
  path = workdir / "tokenizer"
  if (path / "tokenizer_config.json").exists():
    return tokenizer_lib.load_tokenizer(path)
  examples, _ = data_lib.read_split(config.data, config.data.train_split)
  vocab = config.model.t5.vocab_size - config.data.extra_ids
  return tokenizer_lib.train_sentencepiece_tokenizer(
      [e["text"] for e in examples],
      path,
      vocab_size=vocab,
      extra_ids=config.data.extra_ids,
      model_type=config.data.tokenizer_model_type,
      hard_vocab_limit=False,
  )  # small corpora (the demo's grammar) have fewer pieces


def build_setup(config, workdir, devices: Optional[Sequence[jax.Device]] = None) -> Setup:
  """The model, its configs, tokenizer and pretrained params; ``model.dtype`` "auto" resolves
  on ``devices`` (the run's mesh; default: all devices)."""
  workdir = epath.Path(workdir)
  tokenizer = get_tokenizer(config, workdir)
  if config.model.pretrained:
    t5_config, params = pretrained.load_t5(config.model.pretrained)
  else:
    t5_config = t5_lib.T5Config(
        **config.model.t5.to_dict(), scale_decoder_outputs=config.model.t5.tie_word_embeddings
    )
    params = None
  t5_config = dataclasses.replace(t5_config, dropout_rate=config.model.dropout_rate)
  if len(tokenizer) > t5_config.vocab_size:
    if config.model.pretrained:
      raise pretrained.CheckpointError(
          f"the tokenizer has {len(tokenizer)} ids but {config.model.pretrained} has "
          f"{t5_config.vocab_size} embedding rows; pass a tokenizer of at most "
          f"{t5_config.vocab_size} ids (--config.data.tokenizer=DIR)"
      )
    raise TrainingError(
        f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size "
        f"is {t5_config.vocab_size} (config.model.t5.vocab_size)"
    )
  vae_config = vae_config_from(config)
  dtype = accelerator.compute_dtype(
      config.model.dtype, jax.devices() if devices is None else devices
  )
  model = model_lib.T5VAEModel(
      t5_config, vae=vae_config, dtype=jnp.dtype(dtype), remat=config.model.remat
  )
  return Setup(model, t5_config, vae_config, tokenizer, params)


# --------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------
class MetricLogger:
  """metrics.jsonl in the phase directory, TensorBoard event files, and the console.

  Cloud Storage objects cannot be appended to (gcsfs opens mode "a" as "w" with a warning),
  so in a gs:// workdir metrics.jsonl is rewritten whole at each write, with the rows of an
  earlier (preempted) run of the phase read once at the start. tensorboardX writes gs://
  event files itself (through google-cloud-storage, a gcsfs dependency), also whole per flush.
  """

  def __init__(self, phase_dir: epath.Path, enabled: bool):
    self.enabled = enabled
    self.path = phase_dir / "metrics.jsonl"
    self._remote_text = None  # metrics.jsonl as written so far, in a remote workdir
    self.tb = None
    if enabled:
      try:
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(logdir=str(phase_dir / "tensorboard"))
      except Exception as e:  # TensorBoard is a convenience; never fail a run for it.
        logging.warning("TensorBoard disabled: %s", e)

  def write(self, step: int, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: float(v) for k, v in values.items()}}
    self._append(json.dumps(row) + "\n")
    if self.tb is not None:
      for k, v in values.items():
        self.tb.add_scalar(k, float(v), int(step))
      self.tb.flush()

  def _append(self, text: str) -> None:
    if not hub.is_remote(self.path):
      with self.path.open("a") as f:
        f.write(text)
      return
    if self._remote_text is None:
      self._remote_text = self.path.read_text() if self.path.exists() else ""
    self._remote_text += text
    self.path.write_text(self._remote_text)

  def close(self):
    if self.tb is not None:
      self.tb.close()
      self.tb = None


def read_metrics(path) -> list[dict]:
  path = epath.Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# Validation: eval.py's evaluator at the config's K and seed
# --------------------------------------------------------------------------------------------
# What a validation row reports (val/<key>), in the order the progress line prints them.
VALIDATION_LINE = ("rec", "kl", "neg_elbo", "nll", "ppl", "ppl_word", "mi", "mi_batch", "au")


def validation_metrics(
    params, examples, *, model, config, mesh, batch_size: int
) -> dict[str, float]:
  """evaluation.evaluate (what eval.py runs) with K = config.eval_num_samples importance samples
  and seed config.eval_seed: val/* at step N equals eval.py's numbers for step N's checkpoint
  on the same split, K and seed, whatever the batch size, packing or number of devices."""
  result = evaluation.evaluate(
      params,
      examples,
      model=model,
      mesh=mesh,
      batch_size=batch_size,
      bucket_lengths=data_lib.bucket_lengths_from_config(config.data),
      num_samples=config.eval_num_samples,
      seed=config.eval_seed,
      pack_tokens=bool(config.pack_tokens),
      progress=False,
  )
  return {
      k: float(result[k]) if k != "au" else int(result[k])
      for k in evaluation.METRICS
      if result.get(k) is not None
  }


def _model_inputs(batch: dict) -> dict:
  return {k: batch[k] for k in ("input_ids", "attention_mask", "example_weights")}


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def train_state_shardings(
    params, tx, mesh, fsdp: bool, rules: str = sharding.DEFAULT_RULES
) -> TrainState:
  """The shardings (a TrainState of NamedShardings) of the train state of ``params`` (arrays or
  ShapeDtypeStructs: the ahead-of-time compile in aot.py has no arrays) on ``mesh``, by the
  rule table ``rules`` (config.sharding_rules) and FSDP."""
  replicated = sharding.replicated(mesh)
  return TrainState(
      step=replicated,
      params=sharding.tree_shardings(params, mesh, fsdp, rules),
      opt_state=sharding.tree_shardings(jax.eval_shape(tx.init, params), mesh, fsdp, rules),
      num_skipped=replicated,
  )


def create_train_state(
    params, tx, mesh, fsdp: bool, rules: str = sharding.DEFAULT_RULES
) -> tuple[TrainState, TrainState]:
  """The initial state placed on ``mesh`` (params split as ``train_state_shardings`` says),
  and its shardings (a TrainState of NamedShardings)."""
  shardings = train_state_shardings(params, tx, mesh, fsdp, rules)
  params = jax.device_put(params, shardings.params)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  # Two distinct buffers: the step donates the state, and a buffer may be donated only once.
  step, num_skipped = (jax.device_put(jnp.zeros((), jnp.int32), shardings.step) for _ in range(2))
  state = TrainState(step=step, params=params, opt_state=opt_state, num_skipped=num_skipped)
  return state, shardings


def compile_train_step(model, tx, beta_fn, base_rng, config, mesh, state_shardings):
  """``train_step`` jitted over ``mesh``: batch split on the data axis, state donated.

  Call it as ``step_fn(state, batch, capacity)``: ``capacity`` (static, positional: jit takes
  no keyword arguments beside ``in_shardings``) from ``packing_capacity``, or None (no
  packing); one compilation per distinct capacity and padded length. aot.py lowers the same
  function on abstract inputs.
  """
  num_shards = mesh.shape[sharding.DATA_AXIS]

  def step_fn(state, batch, capacity):
    return train_step(
        state,
        batch,
        model=model,
        tx=tx,
        beta_fn=beta_fn,
        base_rng=base_rng,
        config=config,
        capacity=capacity,
        num_shards=num_shards,
    )

  return jax.jit(
      step_fn,
      static_argnums=2,
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=0,
  )


def packing_capacity(config, local_mask: np.ndarray, mesh) -> Optional[int]:
  """Packed slots per data shard for this step's batch (None when ``pack_tokens`` is off).

  Each process sees its own rows (its shards); the capacity is the largest over processes so
  that every process runs the same program.
  """
  if not config.pack_tokens:
    return None
  return packing_lib.capacity_on_mesh(local_mask, mesh)


def phase_dir(workdir, phase: int) -> epath.Path:
  return epath.Path(workdir) / f"phase{phase}"


def initial_params(setup: Setup, config, workdir, phase: int) -> dict:
  """Random VAE params with the pretrained T5 inside; for phase 2, phase 1's params."""
  rng = jax.random.fold_in(jax.random.key(config.seed), 0)
  params = jax.jit(model_lib.init_params, static_argnums=0)(setup.model, rng)
  params = jax.device_get(params)
  if setup.pretrained_params is not None:
    params = model_lib.merge_pretrained(params, setup.pretrained_params)
  if phase == 2 and config.phase2.from_phase1:
    p1 = phase_dir(workdir, 1)
    config_validation.check_model_matches(
        p1, setup.t5_config, setup.vae_config, pretrained=config.model.pretrained, strict=False
    )
    try:
      restored, p1_step = ckpt_lib.restore_params(p1, ckpt_lib.abstract_tree(params))
    except ckpt_lib.CheckpointNotFoundError:
      raise TrainingError(
          config_validation.no_phase1_checkpoint_message(p1 / "checkpoints")
      ) from None
    runtime.info(f"phase 2 starts from phase 1 params (step {p1_step})")
    params = restored
  return params


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, phase: int, max_steps: Optional[int] = None
) -> dict[str, float]:
  """Runs (or resumes) one phase in ``<workdir>/phase<phase>``; returns the last validation.

  ``max_steps`` stops early (tests); the schedule still follows the configured epochs.
  SIGTERM (or a first Ctrl-C), from the start on and on any process, saves a checkpoint at a
  step every process agrees on and exits with 143 (130); see ``preemption``.
  """
  with PreemptionFlag() as preemption:
    return _run_phase(config, workdir, phase, max_steps, preemption)


@dataclasses.dataclass
class _Phase:
  """One phase's run as ``_prepare_phase`` builds it: what the loop, validation and saves read."""

  config: ml_collections.ConfigDict
  phase: int
  pdir: epath.Path
  model: model_lib.T5VAEModel
  mesh: Any
  iterator: data_lib.BatchIterator
  eval_examples: list
  eval_batch: int
  ckpts: ckpt_lib.PhaseCheckpoints
  logger: MetricLogger
  steps_per_epoch: int
  total_steps: int


def _run_phase(config, workdir, phase: int, max_steps: Optional[int], preemption: "PreemptionFlag"):
  run, state, step_fn = _prepare_phase(config, epath.Path(workdir), phase)
  stop_at = run.total_steps if max_steps is None else min(run.total_steps, max_steps)
  return _train_loop(run, state, step_fn, stop_at, preemption)


def _prepare_phase(config, workdir: epath.Path, phase: int):
  """(run, state, step_fn): data, model, the train state restored or initialised, the step."""
  if phase not in (1, 2):
    raise TrainingError(f"--phase must be 1 or 2, got {phase}")
  pdir = phase_dir(workdir, phase)
  devices = jax.devices()[: config.mesh_devices] if config.mesh_devices else None
  mesh = sharding.make_mesh(devices, config.model_parallel)
  sharding.check_batch_size(config.batch_size, mesh)

  accelerator.announce(
      mesh.devices.flat, accelerator.compute_dtype(config.model.dtype, mesh.devices.flat)
  )
  setup = build_setup(config, workdir, mesh.devices.flat)
  train_examples, train_stats = data_lib.load_split(
      config.data, config.data.train_split, setup.tokenizer
  )
  eval_examples, eval_stats = data_lib.load_split(
      config.data, config.data.eval_split, setup.tokenizer
  )
  if config.eval_max_examples:
    eval_examples = eval_examples[: config.eval_max_examples]
  runtime.info(f"data: train {_fmt(train_stats)}; eval {_fmt(eval_stats)}")
  iterator = data_lib.BatchIterator(
      train_examples,
      bucket_lengths=data_lib.bucket_lengths_from_config(config.data),
      batch_size=config.batch_size,
      seed=config.seed + 7919 * phase,
      shuffle=True,
      drop_remainder=True,
      pad_id=setup.t5_config.pad_token_id,
      eos_id=setup.t5_config.eos_token_id,
  )
  steps_per_epoch = iterator.num_batches_per_epoch
  epochs = config.phase1.epochs if phase == 1 else config.phase2.epochs
  total_steps = max(1, int(math.ceil(epochs * steps_per_epoch)))
  eval_batch = max(config.batch_size, 8 * mesh.size)
  run = _Phase(
      config=config,
      phase=phase,
      pdir=pdir,
      model=setup.model,
      mesh=mesh,
      iterator=iterator,
      eval_examples=eval_examples,
      eval_batch=eval_batch - eval_batch % mesh.size,
      ckpts=ckpt_lib.PhaseCheckpoints(pdir, keep=config.keep_checkpoints),
      logger=MetricLogger(pdir, jax.process_index() == 0),
      steps_per_epoch=steps_per_epoch,
      total_steps=total_steps,
  )

  params = initial_params(setup, config, workdir, phase)
  tx = make_optimizer(config, phase, params)
  state, state_shardings = create_train_state(params, tx, mesh, config.fsdp, config.sharding_rules)
  state = _restore_or_initialize(run, state, state_shardings, setup)
  beta_fn = make_beta_fn(config, phase, steps_per_epoch, total_steps)
  base_rng = jax.random.fold_in(jax.random.key(config.seed), phase)
  step_fn = compile_train_step(setup.model, tx, beta_fn, base_rng, config, mesh, state_shardings)
  return run, state, step_fn


def _restore_or_initialize(run: _Phase, state: TrainState, shardings: TrainState, setup: Setup):
  """The newest checkpoint of the phase that restores (the data position set on the iterator),
  or ``state`` as it is with the run's config, model spec and tokenizer written for a fresh
  start."""

  def check_meta(step, meta):  # a damaged data position fails here, not as a wrong resume
    if meta.get("step") != step:
      raise ValueError(f"meta says step {meta.get('step')!r}")
    int(meta.get("num_skipped", 0))
    run.iterator.set_state(meta["data"])

  config = run.config
  if run.ckpts.has_checkpoints():  # before the restore: a mismatch is no damaged checkpoint
    config_validation.check_model_matches(
        run.pdir, setup.t5_config, setup.vae_config, pretrained=config.model.pretrained
    )
  restored = run.ckpts.restore_newest(
      ckpt_lib.abstract_tree(state.params, shardings.params),
      ckpt_lib.abstract_tree(state.opt_state, shardings.opt_state),
      check_meta=check_meta,
      warn=runtime.info,
  )
  if restored is not None:
    start_step, params, opt_state, meta = restored
    counters = {"step": meta["step"], "num_skipped": meta.get("num_skipped", 0)}
    counters = {
        k: jax.device_put(jnp.asarray(v, jnp.int32), shardings.step) for k, v in counters.items()
    }
    runtime.info(f"resuming {run.pdir} at step {start_step}")
    return TrainState(params=params, opt_state=opt_state, **counters)
  if jax.process_index() == 0:
    ckpt_lib.write_config(run.pdir, config)
    ckpt_lib.write_model_spec(run.pdir, setup.t5_config, setup.vae_config, config.model.dtype)
    tokenizer_lib.save_tokenizer(setup.tokenizer, run.pdir / "tokenizer")
  return state


def _validate(run: _Phase, step: int, params) -> dict[str, float]:
  """A validation row (eval.py's evaluator), logged; best/ saved when it improves."""
  config = run.config
  result = validation_metrics(
      params,
      run.eval_examples,
      model=run.model,
      config=config,
      mesh=run.mesh,
      batch_size=run.eval_batch,
  )
  run.logger.write(step, {f"val/{k}": v for k, v in result.items()})
  metric = result.get(config.best_metric.removeprefix("val/"))
  if metric is not None:
    run.ckpts.maybe_save_best(step, params, float(metric), config.best_metric)
  runtime.info(
      f"step {step} validation: {_fmt({k: result[k] for k in VALIDATION_LINE if k in result})}"
  )
  return result


def _save(run: _Phase, step: int, state: TrainState) -> None:
  """A checkpoint of ``state`` at ``step`` with the data position (saved in the background)."""
  run.ckpts.save(
      step,
      state.params,
      state.opt_state,
      {
          "step": step,
          "data": run.iterator.get_state(),
          "num_skipped": int(jax.device_get(state.num_skipped)),
          "phase": run.phase,
          "total_steps": run.total_steps,
      },
  )


def _train_loop(run: _Phase, state: TrainState, step_fn, stop_at: int, preemption) -> dict:
  """Steps from the state's step to ``stop_at`` with logging, validation, checkpoints and the
  preemption stop; returns the last validation."""
  config, ckpts, mesh = run.config, run.ckpts, run.mesh
  step = int(jax.device_get(state.step))
  last_val: dict[str, float] = {}
  progress = _Progress(config, jax.process_index() == 0, step, stop_at, run.phase)
  window = MetricsWindow()
  previous_aux = None
  while step < stop_at:
    batch = next(run.iterator)
    capacity = packing_capacity(config, batch["attention_mask"], mesh)
    state, aux = step_fn(state, sharding.global_batch(_model_inputs(batch), mesh), capacity)
    step += 1
    window.add(aux, int(batch["attention_mask"].sum()) * jax.process_count())
    # At most two steps in flight: step n-1 has finished before n+1 is dispatched, so a SIGTERM
    # save waits for about one step, not for every step queued since the last log.
    if previous_aux is not None:
      jax.block_until_ready(previous_aux)
    previous_aux = aux
    ckpts.check_for_errors()  # a failed background save ends the run now, in one line
    if config.on_nonfinite == "stop" and not bool(jax.device_get(aux["finite"])):
      ckpts.wait()
      raise TrainingError(
          f"non-finite loss or gradient at step {step} (on_nonfinite=stop); the last good "
          f"checkpoint is step {ckpts.latest_step()} in {run.pdir / 'checkpoints'}"
      )
    if step % config.log_every_steps == 0 or step == stop_at:
      row = {f"train/{k}": v for k, v in window.means().items()}
      row["train/tokens_per_sec"] = window.tokens_per_second()
      row["train/num_skipped"] = float(jax.device_get(state.num_skipped))
      row["train/epoch"] = step / run.steps_per_epoch
      run.logger.write(step, row)
      progress.update(step, row)
      window.reset()
    if step % config.eval_every_steps == 0 and step != stop_at:
      last_val = _validate(run, step, state.params)
    stop_now = preemption.should_stop(step)  # the same step on every process
    if step % config.checkpoint_every_steps == 0 or stop_now:
      _save(run, step, state)
    if stop_now:
      ckpts.wait()
      runtime.info(
          f"{preemption.description}: saved step {step} in {run.pdir}; rerun the same command "
          "to resume"
      )
      progress.close()
      run.logger.close()  # the last TensorBoard events (a gs:// event file is uploaded on close)
      raise SystemExit(preemption.exit_code)
  # A SIGTERM from here on only means the run is ending anyway: the final save below happens.
  # The final params are always validated (the loop's validations stop short of stop_at),
  # also when the last step was a checkpoint step: best/ must see them.
  if step == stop_at:
    last_val = _validate(run, step, state.params)
    if ckpts.latest_step() != step:
      _save(run, step, state)
  ckpts.wait()
  ckpts.close()
  progress.close()
  run.logger.close()
  return last_val


def _fmt(values: dict) -> str:
  return ", ".join(
      f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
  )


class _Progress:
  """A tqdm bar with step, loss, rec, KL, beta and tokens/s (lead process only)."""

  def __init__(self, config, enabled, start, total, phase):
    self.bar = None
    if enabled and config.progress_bar:
      from tqdm import tqdm

      self.bar = tqdm(total=total, initial=start, desc=f"phase {phase}", dynamic_ncols=True)
    self.last = start

  def update(self, step, row):
    if self.bar is None:
      return
    self.bar.update(step - self.last)
    self.last = step
    self.bar.set_postfix(
        loss=f"{row['train/loss']:.3f}",
        rec=f"{row['train/rec']:.3f}",
        kl=f"{row['train/kl']:.3f}",
        beta=f"{row['train/beta']:.3f}",
        tok_s=f"{row['train/tokens_per_sec']:.0f}",
    )

  def close(self):
    if self.bar is not None:
      self.bar.close()
