"""The T5-VAE on top of T5: pooling, bottleneck, per-example injection, pretrained loading."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5vae_jax import model as model_lib
from t5vae_jax import t5 as t5_lib

INJECTIONS = ["cross_attention", "self_prefix"]


def jit_apply(model):
  """model.apply, jitted (eager Flax dispatch is slow on 2 cores); ``method`` is static."""
  return jax.jit(model.apply, static_argnames=("method", "sample_latent", "mutable"))


def _batch(vocab, batch=4, length=10, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, length + 1, batch)
  ids = rng.integers(2, vocab, (batch, length))
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  ids[np.arange(batch), lengths - 1] = 1
  ids = np.where(mask > 0, ids, 0).astype(np.int32)
  return jnp.asarray(ids), jnp.asarray(mask)


@pytest.fixture(scope="module")
def vae_factory(tiny_t5):
  """Builds a T5-VAE on the tiny pretrained checkpoint; bottleneck random, scaled up so that
  different inputs give clearly different latents."""
  config, t5_params = tiny_t5

  def build(**vae_kwargs):
    vae = model_lib.VAEConfig(latent_dim=6, **vae_kwargs)
    model = model_lib.T5VAEModel(config, vae=vae)
    params = jax.jit(model_lib.init_params, static_argnums=0)(model, jax.random.key(1))
    params = model_lib.merge_pretrained(params, t5_params)
    params["memory_proj"]["kernel"] = params["memory_proj"]["kernel"] * 4.0
    return model, params

  return build


def test_vae_contains_t5_params_unchanged(vae_factory, tiny_t5, fixtures_dir):
  """The T5 part of the VAE is exactly the checkpoint: its seq2seq forward equals HF's golden."""
  model, params = vae_factory()
  assert set(params) == {"shared", "encoder", "decoder", "mu", "logvar", "memory_proj"}
  g = dict(np.load(fixtures_dir / "t5_v1_0" / "golden.npz"))
  logits = jit_apply(model)(
      {"params": params},
      g["input_ids"],
      g["attention_mask"],
      g["decoder_input_ids"],
      method=t5_lib.T5.__call__,
  )
  np.testing.assert_allclose(logits, g["logits"], atol=1e-4)


@pytest.mark.parametrize("injection", INJECTIONS)
def test_no_batch_mixing(vae_factory, injection):
  """Permuting the examples of a batch permutes the logits exactly the same way."""
  model, params = vae_factory(latent_injection=injection)
  ids, mask = _batch(model.config.vocab_size, batch=5)
  dec = t5_lib.shift_right(ids, 0)
  perm = np.array([3, 0, 4, 1, 2])
  out = jit_apply(model)({"params": params}, ids, mask, dec, sample_latent=False)
  out_p = jit_apply(model)(
      {"params": params}, ids[perm], mask[perm], dec[perm], sample_latent=False
  )
  np.testing.assert_allclose(out_p["logits"], out["logits"][perm], atol=1e-5)
  # Each example's logits must depend on its own z: a batch of one gives the same answer.
  single = jit_apply(model)({"params": params}, ids[2:3], mask[2:3], dec[2:3], sample_latent=False)
  np.testing.assert_allclose(single["logits"][0], out["logits"][2], atol=1e-5)
  # ... and different examples' latents really differ (the test would be vacuous otherwise).
  z_other = out["mu"][::-1]
  swapped = jit_apply(model)(
      {"params": params}, z_other, dec, method=model_lib.T5VAEModel.decode_latent
  )
  assert np.abs(swapped - out["logits"]).max() > 1e-3


@pytest.mark.parametrize("injection", INJECTIONS)
def test_decoder_sees_only_z(vae_factory, injection):
  """With z held fixed, the encoder input does not change the decoder's logits."""
  model, params = vae_factory(latent_injection=injection)
  ids_a, mask_a = _batch(model.config.vocab_size, seed=1)
  ids_b, mask_b = _batch(model.config.vocab_size, seed=2)
  dec = t5_lib.shift_right(ids_a, 0)
  z = jnp.asarray(np.random.default_rng(0).normal(size=(ids_a.shape[0], 6)), jnp.float32)

  def logits_with_fixed_z(ids, mask):
    def force_z(next_fun, args, kwargs, context):
      if context.method_name == "latent_memory":
        args = (z,)
      return next_fun(*args, **kwargs)

    with jax.disable_jit(), __import__("flax").linen.intercept_methods(force_z):
      return model.apply({"params": params}, ids, mask, dec, sample_latent=False)

  a, b = logits_with_fixed_z(ids_a, mask_a), logits_with_fixed_z(ids_b, mask_b)
  assert np.abs(a["mu"] - b["mu"]).max() > 1e-3  # the encoders did see different inputs
  np.testing.assert_array_equal(a["logits"], b["logits"])
  # Eager against jitted: float32 summation order differs (1.2e-6 seen at logits ~0.2).
  direct = jit_apply(model)({"params": params}, z, dec, method=model_lib.T5VAEModel.decode_latent)
  np.testing.assert_allclose(a["logits"], direct, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pooling", ["max", "mean"])
@pytest.mark.parametrize("pool_layers", ["last", "all"])
def test_padding_changes_neither_mu_nor_logvar(vae_factory, pooling, pool_layers):
  model, params = vae_factory(pooling=pooling, pool_layers=pool_layers)
  ids, mask = _batch(model.config.vocab_size, length=8)
  pad = 5
  ids_p = jnp.pad(ids, ((0, 0), (0, pad)))
  mask_p = jnp.pad(mask, ((0, 0), (0, pad)))
  mu, logvar = jit_apply(model)(
      {"params": params}, ids, mask, method=model_lib.T5VAEModel.posterior
  )
  mu_p, logvar_p = jit_apply(model)(
      {"params": params}, ids_p, mask_p, method=model_lib.T5VAEModel.posterior
  )
  np.testing.assert_allclose(mu_p, mu, atol=1e-5)
  np.testing.assert_allclose(logvar_p, logvar, atol=1e-5)


def test_pool_padding_ablation_does_see_pads(vae_factory):
  """The released code's pooling over pad positions changes mu when pads are appended."""
  model, params = vae_factory(pooling="mean", pool_padding=True)
  ids, mask = _batch(model.config.vocab_size, length=8)
  mu, _ = jit_apply(model)({"params": params}, ids, mask, method=model_lib.T5VAEModel.posterior)
  mu_p, _ = jit_apply(model)(
      {"params": params},
      jnp.pad(ids, ((0, 0), (0, 4))),
      jnp.pad(mask, ((0, 0), (0, 4))),
      method=model_lib.T5VAEModel.posterior,
  )
  assert np.abs(mu_p - mu).max() > 1e-4


def test_pool_states_against_numpy():
  rng = np.random.default_rng(0)
  states = rng.normal(size=(3, 2, 5, 4)).astype(np.float32)  # (B, layers, T, D)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], np.int32)
  for b in range(3):
    n = mask[b].sum()
    want_max = states[b, :, :n].reshape(-1, 4).max(0)
    want_mean = states[b, :, :n].reshape(-1, 4).mean(0)
    np.testing.assert_allclose(
        model_lib.pool_states(states, mask, "max", False)[b], want_max, rtol=1e-6
    )
    np.testing.assert_allclose(
        model_lib.pool_states(states, mask, "mean", False)[b], want_mean, rtol=1e-5
    )
    np.testing.assert_allclose(
        model_lib.pool_states(states[:, -1], mask, "mean", True)[b],
        states[b, -1].mean(0),
        rtol=1e-5,
    )


def test_reparameterised_sampling(vae_factory):
  model, params = vae_factory()
  ids, mask = _batch(model.config.vocab_size, batch=2)
  dec = t5_lib.shift_right(ids, 0)
  det = jit_apply(model)({"params": params}, ids, mask, dec, sample_latent=False)
  np.testing.assert_array_equal(det["z"], det["mu"])
  apply = jit_apply(model)
  draws = [
      apply({"params": params}, ids, mask, dec, rngs={"latent": jax.random.key(s)})
      for s in range(100)
  ]
  eps = np.stack([(d["z"] - d["mu"]) / np.exp(0.5 * d["logvar"]) for d in draws])
  assert abs(eps.mean()) < 0.1 and abs(eps.std() - 1.0) < 0.1, (eps.mean(), eps.std())
  same = apply({"params": params}, ids, mask, dec, rngs={"latent": jax.random.key(0)})
  np.testing.assert_array_equal(same["z"], draws[0]["z"])


@pytest.mark.parametrize("injection", INJECTIONS)
def test_vae_decode_cache_matches_full(vae_factory, injection):
  model, params = vae_factory(latent_injection=injection)
  ids, mask = _batch(model.config.vocab_size, batch=2)
  dec = t5_lib.shift_right(ids, 0)
  z = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6)), jnp.float32)
  full = jit_apply(model)({"params": params}, z, dec, method=model_lib.T5VAEModel.decode_latent)
  dmodel = model.clone(decode=True)
  cache = dmodel.init(jax.random.key(0), z, dec, method=dmodel.decode_latent)["cache"]
  step = jit_apply(dmodel)
  steps = []
  for t in range(dec.shape[1]):
    logits, mut = step(
        {"params": params, "cache": cache},
        z,
        dec[:, t : t + 1],
        method=model_lib.T5VAEModel.decode_latent,
        mutable=("cache",),
    )
    cache = mut["cache"]
    steps.append(logits[:, 0])
  np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-5)


def test_vae_config_validation():
  with pytest.raises(ValueError, match=r"model.pooling='avg' is not one of \('max', 'mean'\)"):
    model_lib.VAEConfig(pooling="avg")
  with pytest.raises(ValueError, match="model.latent_dim=0"):
    model_lib.VAEConfig(latent_dim=0)
  with pytest.raises(ValueError, match="latent_injection"):
    dataclasses.replace(model_lib.VAEConfig(), latent_injection="prefix")


def test_finetuned_checkpoint_restores_into_a_fresh_model(vae_factory, tmp_path):
  """A VAE finetuned from a Hugging Face T5 keeps that T5's cross-attention k/v (z's memory
  replaces them), which a freshly initialised VAE has no leaf for: eval.py and T5VAE.load
  build the model fresh and must still restore the checkpoint, extra leaves and all."""
  from t5vae_jax import checkpoint as ckpt_lib

  model, params = vae_factory()
  fresh = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0)))
  extra = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  known = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(fresh)[0]}
  assert any("EncDecAttention" in k and k not in known for k in extra)  # the case at hand
  ckpts = ckpt_lib.PhaseCheckpoints(tmp_path / "phase2", keep=1, asynchronous=False)
  ckpts.save(7, params, {"count": jnp.zeros(())}, {"step": 7})
  ckpts.close()
  restored, step = ckpt_lib.restore_params(tmp_path / "phase2", ckpt_lib.abstract_tree(fresh))
  assert step == 7
  jax.tree.map(np.testing.assert_array_equal, restored, jax.device_get(params))
  # A leaf the model needs but the checkpoint lacks is still an error that names it.
  del params["mu"]
  ckpts = ckpt_lib.PhaseCheckpoints(tmp_path / "other", keep=1, asynchronous=False)
  ckpts.save(1, params, {"count": jnp.zeros(())}, {"step": 1})
  ckpts.close()
  with pytest.raises(ValueError, match="no parameter 'mu'"):
    ckpt_lib.restore_params(tmp_path / "other", ckpt_lib.abstract_tree(fresh))


def test_pooled_encoder_output_skips_the_final_dropout(tiny_t5):
  """With mu = the pooled states (identity kernel), a training-mode max pool over T5's final
  dropout yields many exact zeros (a dropped position wins every feature that is negative at
  all others); pooling before that dropout (the default) leaves far fewer (only where every
  dropout inside the few tiny layers hit one coordinate). The released code's placement,
  ``pool_dropout=True``, stays as an ablation. Evaluation mode is the same for both."""
  config, t5_params = tiny_t5
  config = dataclasses.replace(config, dropout_rate=0.5)
  ids, mask = _batch(config.vocab_size, batch=8)
  zeros, mu_eval = {}, {}
  for pool_dropout in (False, True):
    vae = model_lib.VAEConfig(latent_dim=config.d_model, pool_dropout=pool_dropout)
    model = model_lib.T5VAEModel(config, vae=vae)
    params = model_lib.merge_pretrained(
        jax.jit(model_lib.init_params, static_argnums=0)(model, jax.random.key(1)), t5_params
    )
    params["mu"]["kernel"] = jnp.eye(config.d_model)
    mu_train = model.apply(
        {"params": params},
        ids,
        mask,
        False,
        method=model_lib.T5VAEModel.posterior,
        rngs={"dropout": jax.random.key(3)},
    )[0]
    zeros[pool_dropout] = float(np.mean(np.asarray(mu_train) == 0.0))
    mu_eval[pool_dropout] = np.asarray(
        model.apply({"params": params}, ids, mask, True, method=model_lib.T5VAEModel.posterior)[0]
    )
  assert zeros[True] > 0.2 and zeros[False] < zeros[True] / 5, zeros
  np.testing.assert_array_equal(mu_eval[False], mu_eval[True])


def test_pool_all_layers_against_hugging_face_hidden_states(tiny_t5, fixtures_dir):
  """What ``pool_layers`` pools, against numpy float64 on Hugging Face's PyTorch encoder
  hidden states (``hidden_states[1:]``: every block's output, the last after the final norm).
  "all": each intermediate layer through the final RMS norm (its weight and epsilon), then one
  masked max / mean over layers and positions; "all_raw": the raw intermediates as they are.
  mu is the pooled vector itself (identity kernel)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config, t5_params = tiny_t5
  ids, mask = _batch(config.vocab_size, batch=4, length=10, seed=3)
  hf = transformers.T5ForConditionalGeneration.from_pretrained(str(fixtures_dir / "t5_v1_0")).eval()
  # A final-norm weight far from 1 on both sides, so that a norm applied twice, or without its
  # weight, shows.
  norm_weight = np.random.default_rng(4).uniform(0.3, 3.0, config.d_model).astype(np.float32)
  t5_params = jax.tree.map(lambda x: x, t5_params)
  t5_params["encoder"]["final_layer_norm"]["weight"] = jnp.asarray(norm_weight)
  with torch.no_grad():
    hf.encoder.final_layer_norm.weight.copy_(torch.tensor(norm_weight))
    out = hf.encoder(
        input_ids=torch.tensor(np.asarray(ids), dtype=torch.long),
        attention_mask=torch.tensor(np.asarray(mask)),
        output_hidden_states=True,
    )
  layers = [h.numpy().astype(np.float64) for h in out.hidden_states[1:]]  # last one normed
  assert len(layers) == config.num_layers >= 2
  weight = norm_weight.astype(np.float64)
  eps = hf.config.layer_norm_epsilon

  def rms_norm(x):
    return weight * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)

  readings = {
      "all": np.stack([rms_norm(h) for h in layers[:-1]] + [layers[-1]], axis=1),
      "all_raw": np.stack(layers, axis=1),
  }  # (B, layers, T, D)
  m = np.asarray(mask).astype(bool)

  def reference(states, pooling):
    rows = [states[b][:, m[b]].reshape(-1, states.shape[-1]) for b in range(states.shape[0])]
    return np.stack([r.max(0) if pooling == "max" else r.mean(0) for r in rows])

  got, params = {}, None
  for pool_layers, pooling in (("all", "max"), ("all", "mean"), ("all_raw", "max")):
    vae = model_lib.VAEConfig(latent_dim=config.d_model, pooling=pooling, pool_layers=pool_layers)
    model = model_lib.T5VAEModel(config, vae=vae)
    if params is None:  # the pooling options leave the parameter tree as it is
      params = model_lib.merge_pretrained(
          jax.jit(model_lib.init_params, static_argnums=0)(model, jax.random.key(1)), t5_params
      )
      params["mu"]["kernel"] = jnp.eye(config.d_model)
    got[pool_layers, pooling] = np.asarray(
        jit_apply(model)({"params": params}, ids, mask, method=model_lib.T5VAEModel.posterior)[0]
    )
    np.testing.assert_allclose(
        got[pool_layers, pooling],
        reference(readings[pool_layers], pooling),
        rtol=1e-4,
        atol=1e-5,
        err_msg=f"{pool_layers}/{pooling}",
    )
  assert np.abs(got["all", "max"] - got["all_raw", "max"]).max() > 1e-2  # the readings differ
