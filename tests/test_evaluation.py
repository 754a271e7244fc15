"""Evaluation on a trained tiny model: IW-NLL, MI and AU against independent numpy code, the
same numbers on 1 and 8 devices, and eval.py end to end."""

import functools
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _demo_checkpoint import ROOT, demo_workdir
from t5vae_jax import api
from t5vae_jax import data as data_lib
from t5vae_jax import evaluation
from t5vae_jax import packing as packing_lib
from t5vae_jax import sharding
from t5vae_jax import t5 as t5_lib
from t5vae_jax import tokenizer as tokenizer_lib

LOG_2PI = math.log(2 * math.pi)


CLI_ARGS = [
    "--num_samples=16",
    "--iw_chunk=4",
    "--batch_size=24",
    "--mi_batch_size=16",
    "--max_examples=40",
    "--noprogress",
    "--config.data.bucket_lengths=(16,)",
    "--output=eval_cli.json",
    "--config.pack_tokens=True",
]


@pytest.fixture(scope="session")
def eval_cli(tmp_path_factory):
  """eval.py over the 8 simulated devices, started in the background as soon as the checkpoint
  exists (it overlaps with the in-process tests); yields the Popen."""
  workdir = demo_workdir(tmp_path_factory)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.Popen(
      [sys.executable, str(ROOT / "eval.py"), f"--workdir={workdir}", *CLI_ARGS],
      env=env,
      cwd=str(ROOT),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  yield proc
  if proc.poll() is None:
    proc.kill()
  proc.communicate()


@pytest.fixture(scope="session")
def trained(tmp_path_factory, eval_cli):
  """(phase2 dir, model, params on device 0, test examples)."""
  pdir = demo_workdir(tmp_path_factory) / "phase2"
  model = api.build_model(pdir)
  params, _ = api.restore_params(pdir, model)
  config = api.load_config(pdir)
  tokenizer = tokenizer_lib.load_tokenizer(pdir / "tokenizer")
  examples, _ = data_lib.load_split(config.data, "test", tokenizer)
  return pdir, model, params, examples


def _batch(examples, length=16):
  ids = np.zeros((len(examples), length), np.int32)
  mask = np.zeros_like(ids)
  for i, e in enumerate(examples):
    ids[i, : len(e["input_ids"])] = e["input_ids"]
    mask[i, : len(e["input_ids"])] = 1
  return {
      "input_ids": ids,
      "attention_mask": mask,
      "example_ids": np.arange(len(examples), dtype=np.int32),
  }


def _np_gauss(z, mu, logvar):
  return -0.5 * np.sum((z - mu) ** 2 * np.exp(-logvar) + logvar + LOG_2PI, -1)


def _np_log_softmax(logits):
  logits = logits.astype(np.float64)
  m = logits.max(-1, keepdims=True)
  return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


@functools.partial(jax.jit, static_argnames="model")
def _decoder_logits(model, params, z, decoder_input_ids):
  return model.apply({"params": params}, z, decoder_input_ids, method=type(model).decode_latent)


def _np_rec(model, params, batch, z):
  """-log p(x|z) in numpy from the decoder's logits at z (B, L)."""
  dec = t5_lib.shift_right(jnp.asarray(batch["input_ids"]), model.config.decoder_start_token_id)
  logits = np.asarray(_decoder_logits(model, params, jnp.asarray(z, jnp.float32), dec))
  logp = _np_log_softmax(logits)
  token = np.take_along_axis(logp, batch["input_ids"][..., None], -1)[..., 0]
  return -(token * batch["attention_mask"]).sum(-1)


def test_iw_nll_matches_numpy_and_k1_is_the_single_sample_elbo(trained):
  """K = 1: nll = rec + log q(z|x) - log p(z) at the same draw z (the Monte Carlo -ELBO);
  K = 4 (4 chunks of 1): numpy's logsumexp of the 4 log weights minus log 4; the same with
  token packing."""
  _, model, params, examples = trained
  batch = _batch(examples[:16])
  rng = jax.random.key(3)
  fn = evaluation.compiled_batch_statistics(model, 1)
  out1 = jax.device_get(fn(params, batch, rng, jnp.int32(1)))
  out4 = jax.device_get(fn(params, batch, rng, jnp.int32(4)))
  mu, logvar = out1["mu"].astype(np.float64), out1["logvar"].astype(np.float64)
  log_w = []
  for c in range(4):
    z = np.asarray(
        evaluation.iw_latents(rng, batch["example_ids"], out1["mu"], out1["logvar"], c, 1)
    )[:, 0]
    eps = (z - mu) / np.exp(0.5 * logvar)
    assert np.all(np.abs(eps) < 6)
    rec = _np_rec(model, params, batch, z)
    log_w.append(-rec + _np_gauss(z, 0.0, 0.0) - _np_gauss(z, mu, logvar))
    if c == 0:
      mc_neg_elbo = rec + _np_gauss(z, mu, logvar) - _np_gauss(z, 0.0, 0.0)
      np.testing.assert_allclose(out1["nll"], mc_neg_elbo, rtol=1e-4, atol=1e-3)
  log_w = np.stack(log_w, 1)
  m = log_w.max(1)
  expected = -(m + np.log(np.exp(log_w - m[:, None]).sum(1)) - np.log(4))
  np.testing.assert_allclose(out4["nll"], expected, rtol=1e-4, atol=1e-3)
  # rec at its own draw and the analytic KL.
  z0 = np.asarray(evaluation.elbo_latents(rng, batch["example_ids"], out1["mu"], out1["logvar"]))
  np.testing.assert_allclose(out1["rec"], _np_rec(model, params, batch, z0), rtol=1e-4, atol=1e-3)
  kl = 0.5 * np.sum(mu**2 + np.exp(logvar) - 1 - logvar, -1)
  np.testing.assert_allclose(out1["kl"], kl, rtol=1e-4, atol=1e-4)

  # Token packing (2 data shards, 2 samples per decoder pass: the tiled copies are packed too)
  # gives the same numbers at the same draws.
  capacity = packing_lib.capacity(batch["attention_mask"], 2)
  assert capacity < 8 * 16  # the batch has padding to skip
  packed = jax.device_get(
      evaluation.compiled_batch_statistics(model, 2, capacity, 2)(params, batch, rng, jnp.int32(2))
  )
  for key in ("mu", "logvar", "rec", "kl", "num_tokens"):
    np.testing.assert_allclose(packed[key], out1[key], rtol=1e-5, atol=1e-5, err_msg=key)
  np.testing.assert_allclose(packed["nll"], out4["nll"], rtol=1e-5, atol=1e-4)


def test_iw_nll_tightens_with_k(trained):
  """On a trained model the bound tightens with K: mean NLL(K=1) > NLL(8) > NLL(64), and the
  IW estimate lies below the analytic -ELBO (64 sentences, the same draws nested)."""
  _, model, params, examples = trained
  fn = evaluation.compiled_batch_statistics(model, 1)
  rng = jax.random.key(0)
  nll = {1: [], 8: [], 64: []}
  neg_elbo = []
  for start in range(0, 64, 16):
    batch = _batch(examples[start : start + 16])
    batch["example_ids"] += start
    for k in nll:
      out = jax.device_get(fn(params, batch, rng, jnp.int32(k)))
      nll[k].append(out["nll"])
    neg_elbo.append(out["rec"] + out["kl"])
  means = [float(np.mean(np.concatenate(v))) for v in nll.values()]
  neg_elbo = float(np.mean(np.concatenate(neg_elbo)))
  print("mean NLL at K=1, 8, 64:", means, "-ELBO:", neg_elbo)
  assert means[0] > means[1] > means[2], means
  assert means[2] < neg_elbo


def test_eval_same_on_1_and_8_devices_cli_and_independent_mi_au(trained, eval_cli):
  """evaluate() on a 1-device mesh, in this process (token packing off), and eval.py over all
  8 simulated devices (packing on by a --config flag: the demo's config has it off; another
  chunking of the K samples; batches of 24, not 16) give the same numbers; eval.py writes eval.json and prints the Markdown row; AU and MI equal
  numpy's on the gathered posteriors (at the same draw for MI), and mu equals encode's."""
  pdir, model, params, examples = trained
  examples = examples[:40]  # 3 batches of 16, the last one partly filler
  mesh = sharding.make_mesh(jax.devices()[:1])
  one = evaluation.evaluate(
      jax.device_put(params, sharding.replicated(mesh)),
      examples,
      model=model,
      mesh=mesh,
      batch_size=16,
      bucket_lengths=(16,),
      num_samples=16,
      iw_chunk=8,
      mi_batch_size=16,
      pack_tokens=False,
      progress=False,
      return_arrays=True,
  )
  assert one["num_examples"] == 40 and one["num_devices"] == 1 and one["iw_chunks"] == [8]
  assert one["nll"] < one["neg_elbo"]
  assert one["neg_elbo"] == pytest.approx(one["rec"] + one["kl"], rel=1e-12)
  np.testing.assert_allclose(one["ppl"], math.exp(one["nll"] * 40 / one["num_tokens"]), rtol=1e-6)
  # Per word of the raw lines, plus one EOS per sentence.
  words = sum(len(e["text"].split()) for e in examples)
  assert one["num_words"] == words
  np.testing.assert_allclose(one["ppl_word"], math.exp(one["nll"] * 40 / (words + 40)), rtol=1e-9)
  np.testing.assert_allclose(
      one["ppl_word_elbo"], math.exp(one["neg_elbo"] * 40 / (words + 40)), rtol=1e-9
  )

  # eval.py on 8 devices (started by the fixture).
  stdout, stderr = eval_cli.communicate(timeout=300)
  assert eval_cli.returncode == 0, stderr[-3000:]
  eight = json.loads((pdir / "eval_cli.json").read_text())
  assert eight["num_devices"] == 8 and eight["split"] == "test" and eight["num_samples"] == 16
  assert eight["iw_chunks"] == [4] and eight["pack_tokens"] is True and one["pack_tokens"] is False
  for key in (
      "rec",
      "kl",
      "neg_elbo",
      "nll",
      "ppl",
      "ppl_elbo",
      "mi",
      "mi_batch",
      "ppl_word",
      "rec_per_token",
      "kl_per_token",
      "nll_per_token",
      "neg_elbo_per_token",
  ):
    np.testing.assert_allclose(one[key], eight[key], rtol=2e-5, err_msg=key)
  assert one["au"] == eight["au"] and one["num_tokens"] == eight["num_tokens"]
  lines = stdout.strip().splitlines()
  assert lines[0].startswith("| run | PPL | KL | -ELBO | MI | AU |")
  assert lines[-1] == eight["row"] and len(lines) == 3  # header, rule, phase 2's row
  cells = [c.strip() for c in lines[-1].strip("|").split("|")]
  assert float(cells[1]) == pytest.approx(eight["ppl"], abs=0.01)
  assert float(cells[3]) == pytest.approx(eight["neg_elbo"], abs=0.01)
  assert int(cells[5]) == eight["au"] and cells[9] == "16"
  assert float(cells[10]) == pytest.approx(eight["ppl_word"], abs=0.01)

  arrays = one["arrays"]
  mu, logvar = arrays["mu"].astype(np.float64), arrays["logvar"].astype(np.float64)
  vae = api.T5VAE(model, params, tokenizer_lib.load_tokenizer(pdir / "tokenizer"), max_len=16)
  enc_mu, enc_logvar = vae.encode([e["text"] for e in examples])
  np.testing.assert_allclose(enc_mu, mu, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(enc_logvar, logvar, rtol=1e-4, atol=1e-5)
  # AU: variance of the means over the set (N - 1) above 0.01.
  assert one["au"] == int(np.sum(np.var(mu, axis=0, ddof=1) > 0.01))
  # MI at the same draw: mean_n [log q(z_n|x_n) - log (1/N sum_m q(z_n|x_m))].
  eps = np.asarray(jax.random.normal(evaluation.mi_key(0), mu.shape), np.float64)
  z = mu + np.exp(0.5 * logvar) * eps

  def np_mi(idx):
    pair = _np_gauss(z[idx, None], mu[None, idx], logvar[None, idx])  # (n, n)
    m = pair.max(1)
    log_agg = m + np.log(np.exp(pair - m[:, None]).sum(1)) - np.log(len(idx))
    return np.sum(_np_gauss(z[idx], mu[idx], logvar[idx]) - log_agg)

  np.testing.assert_allclose(one["mi"], np_mi(np.arange(40)) / 40, rtol=1e-4)
  batches = [np.arange(i, min(i + 16, 40)) for i in range(0, 40, 16)]

  # The per-batch MI as the released code: the analytic entropy, consecutive batches.
  def np_mi_analytic(idx):
    neg_entropy = -0.5 * np.sum(1 + logvar[idx] + LOG_2PI, -1)
    return np_mi(idx) + np.sum(neg_entropy - _np_gauss(z[idx], mu[idx], logvar[idx]))

  np.testing.assert_allclose(
      one["mi_batch"], sum(np_mi_analytic(b) for b in batches) / 40, rtol=1e-4
  )


def test_helpers():
  assert evaluation.chunk_size_for(500, 50, 64, 16, 128, max_rows=1 << 16) == 50
  assert evaluation.chunk_size_for(500, 50, 64, 16, 128, max_rows=512) == 5  # 8 -> divisor 5
  # 64 rows x 64 tokens x 32128 vocab x 4 bytes = 526 MB per sample: 1 GiB holds 2.
  assert evaluation.chunk_size_for(500, 50, 64, 64, 32128, max_rows=1 << 16) == 2
  assert evaluation.chunk_size_for(7, 50, 1, 1, 1, max_rows=1 << 16) == 7
  assert evaluation.parse_checkpoint("best") == ("best", None)
  assert evaluation.parse_checkpoint("120") == ("latest", 120)
  with pytest.raises(ValueError):
    evaluation.parse_checkpoint("last")
  row = evaluation.markdown_row(
      "r",
      {
          "ppl": 2.5,
          "kl": 1.0,
          "neg_elbo": 3.0,
          "mi": 0.5,
          "au": 3,
          "rec": 2.0,
          "mi_batch": 0.4,
          "ppl_elbo": 2.9e12,
          "num_samples": 500,
          "ppl_word": 7.254,
      },
  )
  assert row == "| r | 2.50 | 1.00 | 3.00 | 0.50 | 3 | 2.00 | 0.40 | 2.9e+12 | 500 | 7.25 |"


def test_eval_cli_on_a_checkpoint_step_equals_training_validation(tmp_path_factory):
  """One evaluator: eval.py --checkpoint 400 --split validation at training's K
  (eval_num_samples) and seed gives every figure training's validation logged at step 400
  (eval.py on one device at batch size 24, training at its own batch size and devices), and
  other figures than the final step's."""
  workdir = demo_workdir(tmp_path_factory)
  pdir = workdir / "phase2"
  config = api.load_config(pdir)
  assert config.eval_num_samples > 0  # val/nll and val/ppl are there to compare
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run(
      [
          sys.executable,
          str(ROOT / "eval.py"),
          f"--workdir={workdir}",
          "--phase=2",
          "--checkpoint=400",
          "--split=validation",
          f"--num_samples={config.eval_num_samples}",
          f"--seed={config.eval_seed}",
          "--batch_size=24",
          "--noprogress",
          "--output=eval_step400.json",
      ],
      env=env,
      cwd=str(ROOT),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((pdir / "eval_step400.json").read_text())
  assert result["step"] == 400 and result["checkpoint"] == "latest"
  assert result["split"] == "validation" and result["num_examples"] == 64
  assert proc.stdout.strip().splitlines()[-1] == result["row"] and "@400 |" in result["row"]
  from t5vae_jax import train_lib

  logged = {r["step"]: r for r in train_lib.read_metrics(pdir / "metrics.jsonl") if "val/kl" in r}
  for key in evaluation.METRICS:
    assert logged[400][f"val/{key}"] == pytest.approx(result[key], rel=2e-5), key
  assert result["kl"] != pytest.approx(logged[800]["val/kl"], rel=1e-3)


def test_validation_mi_batch_is_calc_mi_in_split_order_and_word_ppl(trained):
  """train_lib.validation_metrics (training's validation rows) over two bucket lengths, so its
  batches come in another order than the split's: mi_batch equals He et al.'s calc_mi
  (analytic entropy, consecutive lines of the split) at the same draws, and ppl_word_elbo is
  the -ELBO per word of the raw lines plus one EOS each."""
  from t5vae_jax import train_lib

  pdir, model, params, examples = trained
  examples = examples[:40]
  config = api.load_config(pdir)
  config.data.bucket_lengths = (12, 16)
  config.eval_seed = 5
  iterator = data_lib.BatchIterator(
      examples, bucket_lengths=(12, 16), batch_size=16, shuffle=False, num_epochs=1
  )
  batch_order = np.concatenate([b["example_ids"][b["example_ids"] >= 0] for b in iterator])
  assert not np.array_equal(batch_order, np.arange(40))  # the test needs a reordering
  mesh = sharding.make_mesh(jax.devices()[:1])
  result = train_lib.validation_metrics(
      jax.device_put(params, sharding.replicated(mesh)),
      examples,
      model=model,
      config=config,
      mesh=mesh,
      batch_size=16,
  )
  vae = api.T5VAE(model, params, tokenizer_lib.load_tokenizer(pdir / "tokenizer"), max_len=16)
  mu, logvar = (np.asarray(a, np.float64) for a in vae.encode([e["text"] for e in examples]))
  eps = np.asarray(jax.random.normal(evaluation.mi_key(5), mu.shape), np.float64)
  z = mu + np.exp(0.5 * logvar) * eps
  # calc_mi of one batch (40 < 256 lines), written out in float64.
  log_density = -0.5 * np.sum(
      (z[:, None] - mu[None]) ** 2 / np.exp(logvar)[None] + logvar[None] + LOG_2PI, -1
  )  # (z, x)
  top = log_density.max(1, keepdims=True)
  log_qz = top[:, 0] + np.log(np.exp(log_density - top).sum(1)) - math.log(40)
  neg_entropy = np.mean(-0.5 * mu.shape[1] * LOG_2PI - 0.5 * np.sum(1 + logvar, -1))
  assert result["mi_batch"] == pytest.approx(neg_entropy - log_qz.mean(), abs=2e-4)
  words = sum(len(e["text"].split()) for e in examples)
  assert result["ppl_word_elbo"] == pytest.approx(
      math.exp(result["neg_elbo"] * 40 / (words + 40)), rel=1e-9
  )
