"""configs/released_recipe.py: the released PyTorch code's regime as one config.

Checks that every departure is an existing key set to the released code's value, that the
training loss in that regime is the released code's formula (numpy, written out here from its
``reconstruction_loss`` / ``regularization_loss``: token CE with ``ignore_index=pad`` averaged over
all B x 256 positions, plus beta times the per-example floored KL), and that train.py runs both
phases with it.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from t5vae_jax import cli, config_files
from t5vae_jax import config_validation as cv
from t5vae_jax import model as model_lib
from t5vae_jax import t5 as t5_lib
from t5vae_jax import train_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPE_FILE = ROOT / "configs" / "released_recipe.py"
recipe = config_files.load_module(RECIPE_FILE)
default = config_files.load_module(ROOT / "configs" / "default.py")

# A d_model-32 model on a few synthetic sentences, every batch still padded to 256 positions.
TINY = {
    "data.synthetic.num_train": 64,
    "data.synthetic.num_valid": 16,
    "data.synthetic.num_test": 16,
    "batch_size": 8,
    "phase1.epochs": 0.25,
    "phase2.epochs": 0.25,
    "log_every_steps": 1,
    "eval_every_steps": 1000,
    "checkpoint_every_steps": 1000,
    "progress_bar": False,
    "model.t5.d_model": 32,
    "model.t5.d_ff": 64,
    "model.t5.d_kv": 8,
    "model.t5.num_layers": 1,
    "model.t5.num_decoder_layers": 1,
    "model.latent_dim": 4,
    "mesh_devices": 1,
    "kl_floor": 0.2,
    "beta.schedule": "constant",
    "beta.value": 0.3,
    "eval_num_samples": 0,  # validations without IW-NLL passes: rec, KL and -ELBO are checked
}


def set_keys(config, values):
  for key, value in values.items():
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def np_token_ce(logits, targets):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return -np.take_along_axis(log_probs, targets[..., None].astype(np.int64), -1)[..., 0]


def np_released_loss(logits, targets, mu, logvar, beta, floor, pad_id=0):
  """The released code's training loss: CE with ignore_index=pad (0 at pads), mean over all
  B x T positions; + beta * batch mean of sum_d max(floor, KL_d) per example."""
  ce = np.where(targets != pad_id, np_token_ce(logits, targets), 0.0)
  mu, logvar = np.asarray(mu, np.float64), np.asarray(logvar, np.float64)
  kl = -0.5 * (1 + logvar - mu**2 - np.exp(logvar))
  return ce.mean() + beta * np.maximum(floor, kl).sum(-1).mean()


# ----------------------------------------------------------------------------- the config


def test_every_departure_is_an_existing_key_and_the_rest_is_the_base_config():
  plain = cv.flatten(default.get_config())
  assert set(recipe.RELEASED_CODE) <= set(plain)  # apply() adds no key
  for base in ("ptb", "snli", "yahoo", "yelp", "demo"):
    base_config = config_files.load_module(ROOT / "configs" / f"{base}.py").get_config()
    config = recipe.get_config(base)
    cv.validate(config, 1, check_paths=False)
    values, base_values = cv.flatten(config), cv.flatten(base_config)
    assert values.keys() == base_values.keys()
    for key, value in values.items():
      want = recipe.RELEASED_CODE[key][0] if key in recipe.RELEASED_CODE else base_values[key]
      assert value == want, (base, key)
  assert recipe.get_config().data.name == "ptb"
  ours = default.get_config()
  assert ours.rec_normalizer == "sum" and ours.model.latent_injection == "cross_attention"
  with pytest.raises(ValueError, match="no config 'ptbb'.*allowed: default, demo, ptb"):
    recipe.get_config("ptbb")


def test_rec_normalizer_rule():
  config = recipe.get_config()
  config.rec_normalizer = "mean"
  with pytest.raises(
      cv.ConfigError,
      match=r"config.rec_normalizer='mean' is not allowed; " r"allowed: one of 'sum', 'max_len'",
  ):
    cv.validate(config, 1, check_paths=False)
  del config["rec_normalizer"]  # a config from before the key: the paper's sum
  cv.validate(config, 1, check_paths=False)


# ----------------------------------------------------------------------------- the loss


def test_recipe_loss_is_the_released_formula_on_a_fixed_batch():
  """train_lib.compute_loss (dropout, sampled z, per-example floor, self-attention prefix) on
  a 256-padded batch equals the released formula on the model's own logits, mu and logvar;
  bucketed to 16 positions, another loss (z pools over the pads)."""
  config = set_keys(recipe.get_config("demo"), TINY)
  t5_config = t5_lib.T5Config(**config.model.t5.to_dict(), dropout_rate=0.1)
  model = model_lib.T5VAEModel(t5_config, vae=train_lib.vae_config_from(config))
  assert model.vae.latent_injection == "self_prefix" and model.vae.pool_padding
  params = jax.jit(model_lib.init_params, static_argnums=0)(model, jax.random.key(0))
  rng = np.random.default_rng(0)
  rows, length = 4, config.data.max_len
  lengths = np.array([16, 9, 5, 12])
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  ids = rng.integers(3, t5_config.vocab_size, (rows, length)).astype(np.int32)
  ids[np.arange(rows), lengths - 1] = 1  # EOS
  ids = np.where(mask > 0, ids, 0)
  batch = {"input_ids": ids, "attention_mask": mask, "example_weights": np.ones(rows, np.float32)}
  rngs = train_lib.step_rngs(jax.random.key(1), 0)

  def loss_of(batch, train=True):
    return jax.jit(
        lambda p, b, r: train_lib.compute_loss(
            p, b, r, model=model, beta=0.3, config=config, train=train
        )
    )(params, batch, rngs)

  loss, (aux, out) = loss_of(batch)
  assert out["logits"].shape == (rows, 256, t5_config.vocab_size)
  want = np_released_loss(out["logits"], ids, out["mu"], out["logvar"], beta=0.3, floor=0.2)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(aux["rec"] / 256 + 0.3 * aux["kl_thresholded"], want, rtol=1e-5)
  assert aux["rec"] > 100 * (loss - 0.3 * aux["kl_thresholded"])  # logged rec: per sentence
  # Without dropout (its masks depend on the layout), the same sentences bucketed to 16:
  # model.pool_padding pools over the pads' states, so z depends on the padded length: why
  # the recipe pads every batch to 256 (data.bucket_lengths) as the released code does.
  padded = loss_of(batch, train=False)[0]
  bucketed = loss_of({k: (v[:, :16] if v.ndim == 2 else v) for k, v in batch.items()}, train=False)[
      0
  ]
  assert abs(bucketed - padded) > 1e-4 * abs(padded)


# ----------------------------------------------------------------------------- train.py


def test_train_py_runs_both_phases_in_the_recipe(tmp_path):
  """Phase 1 through train.py itself (``--config configs/released_recipe.py:demo``), phase 2
  in-process from the same config file; every logged step's loss is rec / 256 + beta * KL."""
  overrides = {**TINY, "data.tfds_dir": str(tmp_path / "tfds")}
  spec = f"{RECIPE_FILE}:demo"
  flags = [f"--config.{k}={v}" for k, v in overrides.items()]
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  result = subprocess.run(
      [
          sys.executable,
          str(ROOT / "train.py"),
          f"--config={spec}",
          "--phase=1",
          f"--workdir={tmp_path}",
          *flags,
      ],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  config = set_keys(cli.load_config_file(spec), overrides)
  train_lib.train_and_evaluate(config, str(tmp_path), phase=2)
  for phase, beta in ((1, 0.0), (2, 0.3)):
    saved = json.loads((tmp_path / f"phase{phase}" / "config.json").read_text())
    assert saved["rec_normalizer"] == "max_len" and saved["data"]["bucket_lengths"] == [256]
    rows = [
        r
        for r in train_lib.read_metrics(tmp_path / f"phase{phase}" / "metrics.jsonl")
        if "train/loss" in r
    ]
    assert len(rows) == 2, rows
    for row in rows:
      np.testing.assert_allclose(row["train/beta"], beta, rtol=1e-6)
      np.testing.assert_allclose(
          row["train/loss"], row["train/rec"] / 256 + beta * row["train/kl_thresholded"], rtol=1e-4
      )
    assert any(
        np.isfinite(r.get("val/neg_elbo", np.nan))
        for r in train_lib.read_metrics(tmp_path / f"phase{phase}" / "metrics.jsonl")
    )
