"""Our Flax T5 against Hugging Face's PyTorch T5 on the same weights, and checkpoint I/O."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import torch_available
from t5vae_jax import pretrained
from t5vae_jax import t5 as t5_lib

VARIANTS = ["t5_v1_0", "t5_v1_1"]
TOL = 1e-4


def _our_outputs(config, params, g):
  model = t5_lib.T5(config)
  variables = {"params": params}
  logits = model.apply(variables, g["input_ids"], g["attention_mask"], g["decoder_input_ids"])
  enc = model.apply(variables, g["input_ids"], g["attention_mask"], method=model.encode)
  prefix_logits = model.apply(
      variables,
      g["decoder_input_ids"],
      prefix_kv=jnp.asarray(g["prefix"]),
      method=model.decode_logits,
  )
  return dict(
      encoder_hidden=np.asarray(enc),
      logits=np.asarray(logits),
      prefix_logits=np.asarray(prefix_logits),
  )


def _assert_parity(ours, theirs, attention_mask):
  mask = attention_mask[..., None].astype(bool)
  # Pad positions of the encoder output are never read (masked in attention and pooling).
  enc_diff = np.abs(np.where(mask, ours["encoder_hidden"] - theirs["encoder_hidden"], 0)).max()
  assert enc_diff < TOL, enc_diff
  for key in ("logits", "prefix_logits"):
    diff = np.abs(ours[key] - theirs[key]).max()
    assert diff < TOL, (key, diff)
  # Guard against a vacuous comparison: outputs must vary across positions and examples.
  assert np.std(theirs["logits"]) > 0.1


@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_golden(variant, fixtures_dir):
  """Golden outputs written by tests/make_parity_fixtures.py with Hugging Face's PyTorch T5."""
  config, params = pretrained.load_t5(str(fixtures_dir / variant))
  g = dict(np.load(fixtures_dir / variant / "golden.npz"))
  assert config.tie_word_embeddings == (variant == "t5_v1_0")
  assert config.scale_decoder_outputs == (variant == "t5_v1_0")
  _assert_parity(_our_outputs(config, params, g), g, g["attention_mask"])


@pytest.mark.skipif(not torch_available(), reason="torch not installed")
@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_live_torch(variant, tmp_path):
  """A fresh random checkpoint (another seed), compared with Hugging Face live."""
  import make_parity_fixtures as mpf

  mpf.write_checkpoint(mpf.hf_model(variant, seed=7), tmp_path)
  hf = mpf.load_hf_model(tmp_path)
  inputs = mpf.fixed_inputs()
  theirs = mpf.hf_outputs(hf, inputs)
  config, params = pretrained.load_t5(str(tmp_path))
  _assert_parity(_our_outputs(config, params, inputs), theirs, inputs["attention_mask"])


@pytest.mark.skipif(not torch_available(), reason="torch not installed")
def test_parity_our_saved_checkpoint_loads_in_hugging_face(tiny_t5, tmp_path):
  """save_t5 writes a directory Hugging Face's PyTorch T5 loads to the same logits."""
  import make_parity_fixtures as mpf

  config, params = tiny_t5
  # Perturb so the check cannot pass by reloading the original file.
  params = jax.tree.map(lambda x: np.asarray(x) * 1.01, params)
  pretrained.save_t5(tmp_path, config, params)
  inputs = mpf.fixed_inputs()
  theirs = mpf.hf_outputs(mpf.load_hf_model(tmp_path), inputs)
  _assert_parity(_our_outputs(config, params, inputs), theirs, inputs["attention_mask"])


def _only(src, dst, names):
  dst.mkdir()
  for name in names:
    shutil.copy(src / name, dst / name)
  return dst


@pytest.mark.parametrize("variant", VARIANTS)
def test_safetensors_and_pytorch_bin_load_identically(variant, fixtures_dir, tmp_path):
  src = fixtures_dir / variant
  _, from_st = pretrained.load_t5(
      str(_only(src, tmp_path / "st", ["config.json", "model.safetensors"]))
  )
  _, from_bin = pretrained.load_t5(
      str(_only(src, tmp_path / "bin", ["config.json", "pytorch_model.bin"]))
  )
  leaves_st = jax.tree_util.tree_leaves_with_path(from_st)
  leaves_bin = jax.tree_util.tree_leaves_with_path(from_bin)
  assert [p for p, _ in leaves_st] == [p for p, _ in leaves_bin]
  for (path, a), (_, b) in zip(leaves_st, leaves_bin):
    np.testing.assert_array_equal(a, b, err_msg=str(path))


def test_flax_msgpack_checkpoint_loads(fixtures_dir, tmp_path):
  """Hugging Face Flax's tree (tests/_replicas.py: 'block'/'0'/'layer'/'0', Dense kernels
  transposed, nn.Embed 'embedding') reads as the same params, bare or under 'params'."""
  import _replicas

  src = fixtures_dir / "t5_v1_1"
  _, expected = pretrained.load_t5(str(src))
  state = pretrained.load_state_dict(src)
  for wrap in (False, True):
    d = _only(src, tmp_path / f"flax_{wrap}", ["config.json"])
    _replicas.write_flax_msgpack(d, state, wrap_params=wrap)
    _, from_flax = pretrained.load_t5(str(d))
    assert jax.tree.structure(from_flax) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(from_flax), jax.tree.leaves(expected)):
      np.testing.assert_array_equal(a, b)


def test_hf_key_mapping_is_one_to_one(fixtures_dir):
  state = pretrained.load_state_dict(fixtures_dir / "t5_v1_1")
  for key in state:
    if key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
      continue
    path, transpose = t5_lib.hf_key_to_path(key)
    assert t5_lib.path_to_hf_key(path) == (key, transpose)
  assert t5_lib.hf_key_to_path("decoder.block.2.layer.1.EncDecAttention.q.weight") == (
      ("decoder", "block_2", "layer_1", "EncDecAttention", "q", "kernel"),
      True,
  )


def test_save_and_load_roundtrip(tiny_t5, tmp_path):
  config, params = tiny_t5
  pretrained.save_t5(tmp_path, config, params)
  config2, params2 = pretrained.load_t5(str(tmp_path))
  assert config2 == config
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(a, b)


def test_missing_and_broken_checkpoints_name_the_path(fixtures_dir, tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(pretrained.CheckpointError, match="config.json is missing"):
    pretrained.load_t5(str(empty))
  no_weights = _only(fixtures_dir / "t5_v1_0", tmp_path / "noweights", ["config.json"])
  with pytest.raises(pretrained.CheckpointError, match=r"noweights: no weights found"):
    pretrained.load_t5(str(no_weights))
  with pytest.raises(pretrained.CheckpointError, match="no such checkpoint directory"):
    pretrained.load_t5(str(tmp_path / "nope"))
  # A config that disagrees with the weights names the parameter and both shapes.
  wrong = _only(fixtures_dir / "t5_v1_0", tmp_path / "wrong", ["config.json", "model.safetensors"])
  cfg = json.loads((wrong / "config.json").read_text())
  cfg["d_ff"] = 64
  (wrong / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(
      pretrained.CheckpointError,
      match=r"DenseReluDense.wi.weight: checkpoint " r"\(32, 48\), config.json implies \(32, 64\)",
  ):
    pretrained.load_t5(str(wrong))
  bad = _only(fixtures_dir / "t5_v1_0", tmp_path / "bad", ["config.json"])
  (bad / "model.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(pretrained.CheckpointError, match=r"bad/model.safetensors: cannot read"):
    pretrained.load_t5(str(bad))


def test_hub_id_offline_says_to_pass_a_local_directory(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(pretrained.CheckpointError, match="pass a local checkpoint directory"):
    pretrained.resolve("t5vae-jax-tests/not-a-real-model")


def test_relative_position_bucket_matches_reference():
  """Against a direct transcription of the Mesh TensorFlow rule in plain Python."""
  import math

  def ref(rel, bidirectional, num_buckets, max_distance):
    ret = 0
    if bidirectional:
      num_buckets //= 2
      ret += num_buckets if rel > 0 else 0
      n = abs(rel)
    else:
      n = max(-rel, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
      return ret + n
    large = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    return ret + min(large, num_buckets - 1)

  rel = np.arange(-300, 301)
  for bidirectional in (True, False):
    got = np.asarray(t5_lib.relative_position_bucket(jnp.asarray(rel), bidirectional, 32, 128))
    want = np.array([ref(int(r), bidirectional, 32, 128) for r in rel])
    np.testing.assert_array_equal(got, want)


def test_bfloat16_compute_stays_close(tiny_t5, fixtures_dir):
  config, params = tiny_t5
  g = dict(np.load(fixtures_dir / "t5_v1_0" / "golden.npz"))
  logits = t5_lib.T5(config, dtype=jnp.bfloat16).apply(
      {"params": params}, g["input_ids"], g["attention_mask"], g["decoder_input_ids"]
  )
  assert logits.dtype == jnp.float32
  assert jax.tree.leaves(params)[0].dtype == np.float32
  rel = np.abs(np.asarray(logits) - g["logits"]).max() / np.abs(g["logits"]).max()
  assert rel < 0.05, rel


def test_decode_cache_matches_full_forward(tiny_t5, fixtures_dir):
  """Step-by-step decoding with the key/value cache reproduces the full forward pass."""
  config, params = tiny_t5
  g = dict(np.load(fixtures_dir / "t5_v1_0" / "golden.npz"))
  dec_ids = jnp.asarray(g["decoder_input_ids"])
  prefix = jnp.asarray(g["prefix"])
  full = t5_lib.T5(config).apply(
      {"params": params}, dec_ids, prefix_kv=prefix, method=t5_lib.T5.decode_logits
  )
  model = t5_lib.T5(config, decode=True)
  cache = model.init(jax.random.key(0), dec_ids, prefix_kv=prefix, method=t5_lib.T5.decode_logits)[
      "cache"
  ]
  steps = []
  for t in range(dec_ids.shape[1]):
    logits, mutated = model.apply(
        {"params": params, "cache": cache},
        dec_ids[:, t : t + 1],
        prefix_kv=prefix,
        method=t5_lib.T5.decode_logits,
        mutable=["cache"],
    )
    cache = mutated["cache"]
    steps.append(logits[:, 0])
  np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-5)


def test_config_roundtrip_and_validation():
  cfg = t5_lib.T5Config(
      vocab_size=10,
      d_model=8,
      num_layers=1,
      feed_forward_proj="gated-gelu",
      tie_word_embeddings=False,
      scale_decoder_outputs=False,
  )
  assert t5_lib.T5Config.from_hf_dict(cfg.to_hf_dict()) == cfg
  assert cfg.num_decoder_layers == 1 and cfg.activation == "gelu_new"
  with pytest.raises(ValueError, match="feed_forward_proj='swish-relu'"):
    dataclasses.replace(cfg, feed_forward_proj="swish-relu")


def test_one_slot_memory_fast_path_equals_general_attention(fixtures_dir):
  """A one-slot memory skips the softmax (its weight is 1); two copies of the slot go through
  the general attention path (weights 1/2 each) and must give the same logits."""
  config, params = pretrained.load_t5(str(fixtures_dir / "t5_v1_1"))
  rng = np.random.default_rng(0)
  memory = jnp.asarray(
      rng.normal(size=(3, config.num_decoder_layers, config.num_heads, 1, config.d_kv)), jnp.float32
  )
  dec = jnp.asarray(rng.integers(2, config.vocab_size, (3, 7)))
  model = t5_lib.T5(config)
  one = model.apply({"params": params}, dec, memory_kv=memory, method=model.decode_logits)
  two = model.apply(
      {"params": params},
      dec,
      memory_kv=jnp.concatenate([memory, memory], 3),
      method=model.decode_logits,
  )
  np.testing.assert_allclose(one, two, atol=1e-5)
  assert np.abs(np.asarray(one[0]) - np.asarray(one[1])).max() > 1e-3  # per example


@pytest.mark.parametrize("shapes", [((3, 5, 8), (8, 16)), ((3, 5, 16), (16, 4))])
def test_matmul_gradients_equal_plain_dot(shapes):
  """The CPU matmul's custom backward (both transpose branches) against jnp.dot's autodiff."""
  x_shape, w_shape = shapes
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
  g = jnp.asarray(rng.normal(size=x_shape[:-1] + w_shape[-1:]), jnp.float32)
  ours = jax.jit(jax.grad(lambda x, w: jnp.sum(t5_lib.matmul(x, w) * g), argnums=(0, 1)))(x, w)
  x64, w64, g64 = (np.asarray(a, np.float64) for a in (x, w, g))
  np.testing.assert_allclose(t5_lib.matmul(x, w), x64 @ w64, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ours[0], g64 @ w64.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ours[1], np.einsum("btk,btn->kn", x64, g64), rtol=1e-5, atol=1e-5)


def test_hash_dropout_statistics():
  """Keep rate, scaling, determinism per key, and no correlation between neighbours or keys."""
  rate = 0.1
  drop = t5_lib.Dropout(rate)
  x = jnp.ones((64, 128, 32), jnp.float32)
  apply = jax.jit(lambda key: drop.apply({}, x, deterministic=False, rngs={"dropout": key}))
  a, a_again, b = apply(jax.random.key(0)), apply(jax.random.key(0)), apply(jax.random.key(1))
  np.testing.assert_array_equal(a, a_again)
  np.testing.assert_allclose(np.unique(np.asarray(a)), [0.0, 1 / (1 - rate)], rtol=1e-6)
  keep_a, keep_b = np.asarray(a) > 0, np.asarray(b) > 0
  n = keep_a.size  # 262144: the standard error of a rate is about 6e-4
  assert abs(keep_a.mean() - (1 - rate)) < 4e-3
  assert abs(keep_b.mean() - (1 - rate)) < 4e-3
  assert (keep_a != keep_b).mean() > 0.1  # different keys, different masks

  def corr(u, v):
    u, v = u.astype(np.float64).ravel(), v.astype(np.float64).ravel()
    return np.corrcoef(u, v)[0, 1]

  flat = keep_a.ravel()
  assert abs(corr(flat[:-1], flat[1:])) < 4 / np.sqrt(n)  # neighbouring positions
  assert abs(corr(keep_a, keep_b)) < 4 / np.sqrt(n)  # two keys
  np.testing.assert_array_equal(drop.apply({}, x, deterministic=True), x)


def test_remat_keeps_the_loss_gradients_and_parameter_paths(policy="full"):
  """model.remat recomputes activations in the backward pass: same params tree, same loss and
  gradients (dropout on, so the recomputed masks must be the same draws). "dots" differs only
  in the policy that jax.checkpoint gets."""
  from t5vae_jax import model as model_lib

  cfg = t5_lib.T5Config(
      vocab_size=64,
      d_model=16,
      d_kv=4,
      d_ff=32,
      num_layers=1,
      num_decoder_layers=1,
      num_heads=2,
      relative_attention_num_buckets=8,
      relative_attention_max_distance=16,
      dropout_rate=0.2,
  )
  vae = model_lib.VAEConfig(latent_dim=4)
  plain, remat = (model_lib.T5VAEModel(cfg, vae=vae, remat=r) for r in ("none", policy))
  params = jax.jit(model_lib.init_params, static_argnums=0)(plain, jax.random.key(0))
  assert jax.tree.structure(
      jax.eval_shape(lambda k: model_lib.init_params(remat, k), jax.random.key(0))
  ) == jax.tree.structure(params)
  ids = jax.random.randint(jax.random.key(1), (4, 10), 2, 64)
  mask = jnp.ones_like(ids)
  rngs = {"latent": jax.random.key(2), "dropout": jax.random.key(3)}

  def loss(model, p):
    out = model.apply(
        {"params": p}, ids, mask, t5_lib.shift_right(ids, 0), deterministic=False, rngs=rngs
    )
    return jnp.sum(jax.nn.log_softmax(out["logits"])[..., 5]) + jnp.sum(out["mu"] ** 2)

  value, grads = jax.jit(jax.value_and_grad(lambda p: loss(plain, p)))(params)
  value_remat, grads_remat = jax.jit(jax.value_and_grad(lambda p: loss(remat, p)))(params)
  np.testing.assert_allclose(value_remat, value, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_remat), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
