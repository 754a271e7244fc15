"""Evaluation of a trained T5-VAE: rec, KL, -ELBO, importance-weighted NLL and PPL, MI, AU.

Everything per batch is one jitted, sharded call (:func:`batch_statistics`): the encoder runs
once, the decoder once at a single draw z ~ q(z|x) (rec, hence the Monte Carlo -ELBO with the
analytic KL), then K more times for the importance-weighted log-likelihood

    log p(x) ~ logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K,

in chunks of k samples: the batch is tiled k times along the batch axis (rows b*k .. b*k+k-1
are example b), and a jitted loop over the K / k chunks folds each chunk's log weights into a
running logsumexp, so memory is that of one (B*k, T, vocab) decoder pass whatever K is.

Randomness is per example and sample: draw s of example i comes from
``fold_in(fold_in(rng, i), s)`` (i its index in the split), so the numbers depend neither on
the batch size, nor on the chunk size k, nor on the number of devices.

Whole-set metrics (MI over the aggregate posterior of the whole set, per-batch MI at batch
size 256 as the released code computes it, AU) are computed from the gathered posterior means
and log-variances, in split order.

Reported (``eval.json``), in nats:
  rec, kl, neg_elbo, nll                per sentence (mean over examples)
  *_per_token                           divided by the number of target tokens (EOS included)
  ppl = exp(sum nll / tokens)           from the importance-weighted NLL, per T5 subword
  ppl_word = exp(sum nll / (words + N)) per word of the raw lines (whitespace-separated) plus
                                        one EOS per sentence, as Li et al.'s baselines;
                                        ppl_word_elbo the same from the -ELBO
  ppl_elbo = exp(sum -ELBO / tokens)    an upper bound on it in expectation (what the released
                                        code reports, there from |rec - KL|)
  mi, mi_batch, au                      see t5vae_jax.metrics
  probes                                with probe_labels: linear probes on mu, t5vae_jax.probe
The -ELBO is rec + KL (the released code prints |rec - KL|, a sign error).
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from t5vae_jax import config_validation
from t5vae_jax import api
from t5vae_jax import checkpoint as ckpt_lib
from t5vae_jax import data as data_lib
from t5vae_jax import losses
from t5vae_jax import metrics as metrics_lib
from t5vae_jax import model as model_lib
from t5vae_jax import packing as packing_lib
from t5vae_jax import probe as probe_lib
from t5vae_jax import sharding
from t5vae_jax import t5 as t5_lib

DEFAULT_NUM_SAMPLES = 500
DEFAULT_IW_CHUNK = 50
DEFAULT_MI_BATCH_SIZE = 256
# Upper bound on the float32 logits of one decoder pass of a chunk (B * k * T * vocab * 4).
DEFAULT_MAX_LOGITS_BYTES = 1 << 30
_ELBO_STREAM, _IW_STREAM, _MI_STREAM = 0, 1, 2
# The figures of :func:`evaluate` (training's validation rows log each as val/<key>).
METRICS = (
    "rec",
    "kl",
    "neg_elbo",
    "nll",
    "rec_per_token",
    "kl_per_token",
    "neg_elbo_per_token",
    "nll_per_token",
    "ppl",
    "ppl_elbo",
    "ppl_word",
    "ppl_word_elbo",
    "mi",
    "mi_batch",
    "au",
    "num_examples",
    "num_tokens",
)


# --------------------------------------------------------------------------------------------
# Per batch: jitted
# --------------------------------------------------------------------------------------------
def draw_latents(rng, example_ids, sample_ids, mu, logvar):
  """z = mu + exp(logvar / 2) eps for each example and sample index.

  eps of (example i, sample s) comes from fold_in(fold_in(rng, i), s): it depends neither on
  the batch, nor on how the samples are chunked, nor on the devices.

  Args: example_ids (B,) int; sample_ids (k,) int; mu, logvar (B, L). Returns (B, k, L).
  """
  mu = jnp.asarray(mu, jnp.float32)
  logvar = jnp.asarray(logvar, jnp.float32)
  latent_dim = mu.shape[-1]

  def per_example(example_id):
    key = jax.random.fold_in(rng, example_id)
    return jax.vmap(lambda s: jax.random.normal(jax.random.fold_in(key, s), (latent_dim,)))(
        sample_ids
    )

  eps = jax.vmap(per_example)(jnp.maximum(example_ids, 0))
  return mu[:, None, :] + jnp.exp(0.5 * logvar)[:, None, :] * eps


def iw_latents(rng, example_ids, mu, logvar, chunk_index, chunk_size: int):
  """The latents (B, k, L) of importance samples chunk_index * k .. chunk_index * k + k - 1."""
  sample_ids = chunk_index * chunk_size + jnp.arange(chunk_size)
  return draw_latents(jax.random.fold_in(rng, _IW_STREAM), example_ids, sample_ids, mu, logvar)


def elbo_latents(rng, example_ids, mu, logvar):
  """The single draw (B, L) at which evaluation measures rec (the Monte Carlo -ELBO)."""
  return draw_latents(
      jax.random.fold_in(rng, _ELBO_STREAM), example_ids, jnp.arange(1), mu, logvar
  )[:, 0]


def reconstruction_at(
    params,
    ids,
    mask,
    z,
    *,
    model: model_lib.T5VAEModel,
    capacity: Optional[int] = None,
    num_shards: int = 1,
):
  """-log p(x|z_k) for each example and sample: ids, mask (B, T), z (B, k, L) -> (B, k).

  ``capacity`` (static, slots per data shard for the (B, T) batch; ``packing.capacity``)
  packs the k tiled copies' real tokens into k * capacity slots per shard, so the decoder's
  per-token layers skip the padding (``packing.py``); the result is the same.
  """
  batch, k, latent_dim = z.shape
  tiled_ids = jnp.repeat(ids, k, axis=0)  # rows b*k .. b*k+k-1 are example b
  tiled_mask = jnp.repeat(mask, k, axis=0)
  # A shard's B/S examples become its B*k/S tiled rows: packing stays within the shard.
  packing = (
      None if capacity is None else packing_lib.make_packing(tiled_mask, k * capacity, num_shards)
  )
  decoder_inputs = t5_lib.shift_right(tiled_ids, model.config.decoder_start_token_id)
  logits = model.apply(
      {"params": params},
      z.reshape(batch * k, latent_dim),
      decoder_inputs,
      packing=packing,
      method=model_lib.T5VAEModel.decode_latent,
  )
  return losses.reconstruction_loss(logits, tiled_ids, tiled_mask, packing).reshape(batch, k)


def batch_statistics(
    params,
    batch,
    rng,
    num_chunks,
    *,
    model: model_lib.T5VAEModel,
    chunk_size: int,
    capacity: Optional[int] = None,
    num_shards: int = 1,
) -> dict[str, jax.Array]:
  """Per example: rec, kl, nll, num_tokens, mu, logvar (and example_ids, passed through).

  ``batch``: input_ids, attention_mask (B, T), example_ids (B,). The importance-weighted nll
  uses K = num_chunks * chunk_size samples; ``num_chunks`` is traced (a loop bound), so every
  K with the same chunk size shares one compilation. K = 0 gives nll = NaN. ``capacity``
  (static; ``packing.capacity_on_mesh`` of the mask) runs the encoder's and the decoder's
  per-token layers on the real tokens only, ``num_shards`` packing per data shard.
  """
  ids, mask = batch["input_ids"], batch["attention_mask"]
  example_ids = batch["example_ids"]
  encoder_packing = (
      None if capacity is None else packing_lib.make_packing(mask, capacity, num_shards)
  )
  mu, logvar = model.apply(
      {"params": params}, ids, mask, packing=encoder_packing, method=model_lib.T5VAEModel.posterior
  )
  mu, logvar = mu.astype(jnp.float32), logvar.astype(jnp.float32)
  rec_fn = functools.partial(
      reconstruction_at, params, ids, mask, model=model, capacity=capacity, num_shards=num_shards
  )
  z = elbo_latents(rng, example_ids, mu, logvar)
  rec = rec_fn(z[:, None])[:, 0]
  kl = jnp.sum(losses.kl_per_dim(mu, logvar), axis=-1)

  def one_chunk(chunk_index, acc):
    zk = iw_latents(rng, example_ids, mu, logvar, chunk_index, chunk_size)
    log_weights = metrics_lib.iw_log_weights(-rec_fn(zk), zk, mu, logvar)
    return metrics_lib.logsumexp_merge(acc, log_weights)

  acc = jax.lax.fori_loop(0, num_chunks, one_chunk, jnp.full(mu.shape[:1], -jnp.inf, jnp.float32))
  num_samples = (num_chunks * chunk_size).astype(jnp.float32)
  nll = jnp.where(num_samples > 0, -(acc - jnp.log(jnp.maximum(num_samples, 1.0))), jnp.nan)
  return dict(
      rec=rec,
      kl=kl,
      nll=nll,
      mu=mu,
      logvar=logvar,
      example_ids=example_ids,
      num_tokens=jnp.sum(mask, axis=-1).astype(jnp.float32),
  )


@functools.lru_cache(maxsize=None)
def compiled_batch_statistics(
    model: model_lib.T5VAEModel,
    chunk_size: int,
    capacity: Optional[int] = None,
    num_shards: int = 1,
):
  """``batch_statistics`` jitted, one per (model, chunk size, packing capacity and shards):
  (params, batch, rng, num_chunks)."""
  return jax.jit(
      functools.partial(
          batch_statistics,
          model=model,
          chunk_size=chunk_size,
          capacity=capacity,
          num_shards=num_shards,
      )
  )


def default_max_rows() -> int:
  """Rows (batch * k) per decoder pass: small on CPU, where a pass that outgrows the caches
  runs up to 3x slower per sample (measured on the demo model), large on accelerators."""
  return 512 if jax.default_backend() == "cpu" else 1 << 16


def chunk_size_for(
    num_samples: int,
    requested: int,
    rows: int,
    length: int,
    vocab: int,
    max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES,
    max_rows: Optional[int] = None,
) -> int:
  """k, the samples per decoder pass: the largest divisor of num_samples that is at most
  ``requested``, keeps one pass's logits (rows * k * length * vocab float32) under
  ``max_logits_bytes`` and its rows (rows * k) under ``max_rows`` (default: by backend).
  The numbers do not depend on k, only the speed and the memory."""
  if num_samples <= 0:
    return 1
  max_rows = default_max_rows() if max_rows is None else max_rows
  per_sample = max(1, rows * length * vocab * 4)
  limit = max(
      1, min(requested, num_samples, max_logits_bytes // per_sample, max_rows // max(rows, 1))
  )
  return max(k for k in range(1, limit + 1) if num_samples % k == 0)


# --------------------------------------------------------------------------------------------
# Over a split
# --------------------------------------------------------------------------------------------
def evaluate(
    params,
    examples: Sequence,
    *,
    model: model_lib.T5VAEModel,
    mesh,
    batch_size: int = 64,
    bucket_lengths: Sequence[int] = (16, 32, 48, 64),
    num_samples: int = DEFAULT_NUM_SAMPLES,
    iw_chunk: int = DEFAULT_IW_CHUNK,
    mi_batch_size: int = DEFAULT_MI_BATCH_SIZE,
    seed: int = 0,
    max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES,
    max_rows: Optional[int] = None,
    pack_tokens: bool = True,
    progress: bool = True,
    return_arrays: bool = False,
) -> dict[str, Any]:
  """All metrics of ``examples`` (dicts with "input_ids", as data.load_split gives).

  ``batch_size`` is global (a multiple of the mesh's devices); params should already be placed
  on ``mesh`` (replicated or FSDP-sharded). ``pack_tokens``: the per-token layers run on the
  real tokens only (same numbers up to float rounding; one compilation per packed capacity).
  ``return_arrays`` adds "arrays": the per-example rec, kl, nll, num_tokens, mu and logvar in
  the order of ``examples`` (numpy).
  """
  sharding.check_batch_size(batch_size, mesh)
  cfg = model.config
  iterator = data_lib.BatchIterator(
      examples,
      bucket_lengths=bucket_lengths,
      batch_size=batch_size,
      shuffle=False,
      drop_remainder=False,
      num_epochs=1,
      seed=0,
      pad_id=cfg.pad_token_id,
      eos_id=cfg.eos_token_id,
  )
  rng = jax.random.key(seed)
  chunks_used: set[int] = set()
  num = len(examples)
  latent_dim = model.vae.latent_dim
  per_example = {k: np.zeros(num, np.float64) for k in ("rec", "kl", "nll", "num_tokens")}
  mu_all = np.zeros((num, latent_dim), np.float32)
  logvar_all = np.zeros((num, latent_dim), np.float32)
  seen = np.zeros(num, bool)
  bar = None
  if progress and jax.process_index() == 0:
    from tqdm import tqdm

    bar = tqdm(
        total=iterator.num_batches_per_epoch,
        desc="eval",
        unit="batch",
        dynamic_ncols=True,
        file=sys.stderr,
    )
  start = time.perf_counter()
  for batch in iterator:
    length = batch["input_ids"].shape[1]
    chunk = chunk_size_for(
        num_samples, iw_chunk, batch_size, length, cfg.vocab_size, max_logits_bytes, max_rows
    )
    chunks_used.add(chunk)
    device_batch = sharding.global_batch(
        {k: batch[k] for k in ("input_ids", "attention_mask", "example_ids")}, mesh
    )
    num_chunks = jnp.asarray(num_samples // chunk if num_samples else 0, jnp.int32)
    capacity = packing_lib.capacity_on_mesh(batch["attention_mask"], mesh) if pack_tokens else None
    statistics_fn = compiled_batch_statistics(
        model, chunk, capacity, mesh.shape[sharding.DATA_AXIS]
    )
    out = sharding.to_host(statistics_fn(params, device_batch, rng, num_chunks))
    ids = np.asarray(out["example_ids"])
    real = ids >= 0
    for key in per_example:
      per_example[key][ids[real]] = out[key][real]
    mu_all[ids[real]] = out["mu"][real]
    logvar_all[ids[real]] = out["logvar"][real]
    seen[ids[real]] = True
    if bar is not None:
      bar.update(1)
      bar.set_postfix(
          nll=f"{np.mean(out['nll'][real]):.3f}", rec=f"{np.mean(out['rec'][real]):.3f}"
      )
  if bar is not None:
    bar.close()
  if not seen.all():
    raise AssertionError(f"{int((~seen).sum())} examples were not evaluated")
  elapsed = time.perf_counter() - start

  tokens = float(per_example["num_tokens"].sum())
  rec_sum, kl_sum = float(per_example["rec"].sum()), float(per_example["kl"].sum())
  neg_elbo_sum = rec_sum + kl_sum
  result: dict[str, Any] = {
      "num_examples": num,
      "num_tokens": tokens,
      "rec": rec_sum / num,
      "kl": kl_sum / num,
      "neg_elbo": neg_elbo_sum / num,
      "rec_per_token": rec_sum / tokens,
      "kl_per_token": kl_sum / tokens,
      "neg_elbo_per_token": neg_elbo_sum / tokens,
      "ppl_elbo": _safe_exp(neg_elbo_sum / tokens),
  }
  # Per word (Li et al.'s baselines): the raw lines' whitespace words plus one EOS each.
  words = (
      float(sum(metrics_lib.word_count(e["text"]) for e in examples))
      if all(isinstance(e, dict) and "text" in e for e in examples)
      else None
  )
  result.update(
      num_words=words,
      ppl_word_elbo=None
      if words is None
      else metrics_lib.word_perplexity(neg_elbo_sum, words, num),
  )
  if num_samples:
    nll_sum = float(per_example["nll"].sum())
    result.update(
        nll=nll_sum / num,
        nll_per_token=nll_sum / tokens,
        ppl=_safe_exp(nll_sum / tokens),
        ppl_word=None if words is None else metrics_lib.word_perplexity(nll_sum, words, num),
    )
  else:
    result.update(nll=None, nll_per_token=None, ppl=None, ppl_word=None)
  mi_rng = mi_key(seed)
  result["mi"] = float(metrics_lib.mutual_information(mu_all, logvar_all, mi_rng))
  if num >= 2:
    result["mi_batch"] = float(
        metrics_lib.batch_mutual_information(mu_all, logvar_all, mi_rng, batch_size=mi_batch_size)
    )
    variances = np.asarray(metrics_lib.active_unit_variances(mu_all))
    result["au"] = int(metrics_lib.active_units(mu_all))
    result["au_variances"] = [float(v) for v in variances]
  else:
    result.update(mi_batch=None, au=None, au_variances=None)
  result.update(
      num_samples=int(num_samples),
      iw_chunks=sorted(chunks_used),
      mi_batch_size=int(mi_batch_size),
      batch_size=int(batch_size),
      seed=int(seed),
      pack_tokens=bool(pack_tokens),
      num_devices=int(mesh.devices.size),
      seconds=elapsed,
  )
  if return_arrays:
    result["arrays"] = dict(per_example, mu=mu_all, logvar=logvar_all)
  return result


def mi_key(seed: int = 0):
  """The key of the one draw per example that the MI estimates of ``evaluate`` use."""
  return jax.random.fold_in(jax.random.key(seed), _MI_STREAM)


def _safe_exp(x: float) -> float:
  return math.exp(min(x, 700.0))


# --------------------------------------------------------------------------------------------
# A phase directory: what eval.py runs
# --------------------------------------------------------------------------------------------
def parse_checkpoint(checkpoint) -> tuple[str, Optional[int]]:
  """'latest' | 'best' | '<step>' -> (which, step)."""
  text = str(checkpoint)
  if text in ("latest", "best"):
    return text, None
  if text.isdigit():
    return "latest", int(text)
  raise ValueError(f"--checkpoint must be latest, best or a step number, got {checkpoint!r}")


def markdown_header(probes: bool = False) -> str:
  """The table's header; ``probes`` adds the linear-probe column (eval.py --probe_labels)."""
  names = [
      "run",
      "PPL",
      "KL",
      "-ELBO",
      "MI",
      "AU",
      "rec",
      "MI (batch)",
      "PPL (ELBO)",
      "K",
      "PPL (word)",
  ] + (["probe acc. (majority)"] if probes else [])
  return f"| {' | '.join(names)} |\n|{'---|' * len(names)}"


def markdown_row(name: str, result: dict) -> str:
  """The paper's columns (PPL, KL, -ELBO, MI, AU), then rec, per-batch MI, PPL from the ELBO,
  K and the per-word PPL (the baselines' unit). Per-sentence nats, as the paper's tables."""

  def f(key, fmt="{:.2f}"):
    value = result.get(key)
    if value is None:
      return "-"
    if isinstance(value, float) and abs(value) >= 1e5:
      return f"{value:.3g}"
    return fmt.format(value)

  return (
      f"| {name} | {f('ppl')} | {f('kl')} | {f('neg_elbo')} | {f('mi')} | "
      f"{f('au', '{:d}')} | {f('rec')} | {f('mi_batch')} | {f('ppl_elbo')} | "
      f"{result.get('num_samples', '-')} | {f('ppl_word')} |"
      + (f" {probe_lib.markdown_cell(result['probes'])} |" if result.get("probes") else "")
  )


def evaluate_phase(
    phase_dir,
    *,
    checkpoint="latest",
    split: str = "test",
    num_samples: int = DEFAULT_NUM_SAMPLES,
    iw_chunk: int = DEFAULT_IW_CHUNK,
    batch_size: int = 64,
    mi_batch_size: int = DEFAULT_MI_BATCH_SIZE,
    seed: int = 0,
    max_examples: int = 0,
    data_dir: Optional[str] = None,
    tfds_dir: Optional[str] = None,
    config_overrides: Sequence[str] = (),
    mesh=None,
    max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES,
    max_rows: Optional[int] = None,
    output: Optional[str] = "eval.json",
    progress: bool = True,
    run_name: Optional[str] = None,
    probe_labels: Union[str, Sequence[str]] = (),
) -> dict[str, Any]:
  """Evaluates one phase directory (config.json, model.json, tokenizer/, checkpoints) on a split;
  writes ``<phase_dir>/<output>`` (unless output is None) and returns the result, whose
  "row" is the Markdown table row. ``probe_labels`` ("auto", "label", "tense,number", ...):
  linear probes on mu (t5vae_jax.probe), as result["probes"] and a last column of the row."""
  phase_dir = epath.Path(phase_dir)
  config = api.load_config(phase_dir)
  if config is None:
    raise FileNotFoundError(f"{phase_dir / 'config.json'} is missing: not a phase directory")
  config_validation.apply_overrides(config, config_overrides)
  if data_dir is not None:
    config.data.dir = data_dir
  if tfds_dir is not None:
    config.data.tfds_dir = tfds_dir
  mesh = sharding.make_mesh(model_parallel=config.model_parallel) if mesh is None else mesh
  which, step = parse_checkpoint(checkpoint)

  model = api.build_model(phase_dir, config.model.get("dtype"), devices=mesh.devices.flat)
  abstract = jax.eval_shape(functools.partial(model_lib.init_params, model), jax.random.key(0))
  shardings = sharding.tree_shardings(abstract, mesh, config.fsdp, config.sharding_rules)
  params, restored_step = api.restore_params(
      phase_dir, model, which=which, step=step, shardings=shardings
  )
  from t5vae_jax import tokenizer as tokenizer_lib

  tokenizer = tokenizer_lib.load_tokenizer(phase_dir / "tokenizer")
  examples, stats = data_lib.load_split(config.data, split, tokenizer)
  if max_examples:
    examples = examples[:max_examples]
  probe_columns = (
      probe_lib.targets(examples, probe_labels, f"the {config.data.get('name')} {split} split")
      if probe_labels
      else None
  )
  result = evaluate(
      params,
      examples,
      model=model,
      mesh=mesh,
      batch_size=batch_size,
      bucket_lengths=data_lib.bucket_lengths_from_config(config.data),
      num_samples=num_samples,
      iw_chunk=iw_chunk,
      mi_batch_size=mi_batch_size,
      seed=seed,
      max_logits_bytes=max_logits_bytes,
      max_rows=max_rows,
      pack_tokens=bool(config.pack_tokens),
      progress=progress,
      return_arrays=probe_columns is not None,
  )
  arrays = result.pop("arrays", None)
  if probe_columns is not None:
    result["probes"] = probe_lib.run_probes(arrays["mu"], probe_columns)
  name = run_name or f"{phase_dir.parent.name}/{phase_dir.name}"
  result = {
      "run": name,
      "phase_dir": str(phase_dir),
      "checkpoint": which,
      "step": int(restored_step),
      "split": split,
      "data": config.data.get("name"),
      "num_truncated": stats["num_truncated"],
      **result,
  }
  result["row"] = markdown_row(f"{name}@{restored_step}", result)
  if output and jax.process_index() == 0:
    ckpt_lib.write_text_atomically(phase_dir / output, json.dumps(result, indent=2) + "\n")
  return result


def phase_dirs(workdir, phases: Optional[Sequence[int]] = None) -> list[epath.Path]:
  """The phase directories of a workdir to evaluate: the given phases, else each present."""
  workdir = epath.Path(workdir)
  candidates = [1, 2] if phases is None else list(phases)
  found = [
      workdir / f"phase{p}" for p in candidates if (workdir / f"phase{p}" / "model.json").exists()
  ]
  if phases is not None and len(found) != len(candidates):
    missing = [p for p in candidates if not (workdir / f"phase{p}" / "model.json").exists()]
    raise FileNotFoundError(f"no phase {missing} in {workdir} (expected phase<N>/model.json)")
  if not found:
    raise FileNotFoundError(f"{workdir} has no phase1/ or phase2/ directory from train.py")
  return found
