"""The public Hugging Face T5 checkpoints as they are really laid out load, and match Hugging
Face's PyTorch T5 on them: 2020 t5-*, t5-v1_1 and flan-t5 replicas (tests/_replicas.py) in
every weight format and dtype they come in; keys Hugging Face ignores are dropped, others are
errors; a checkpoint without tokenizer files stops before training."""

import json
import logging
import os
import pathlib
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

import _replicas
import make_parity_fixtures as mpf
from conftest import torch_available
from t5vae_jax import pretrained
from t5vae_jax import t5 as t5_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GOLDEN = pathlib.Path(__file__).parent / "fixtures" / "replicas" / "golden.npz"
LEGACY_BIAS = "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"

# name: (family, writer keywords, golden entry); "bin" replicas need torch to be written.
VARIANTS = {
    "t5_2020_safetensors": ("t5_2020", dict(weights=("safetensors",)), "t5_2020/float32"),
    "t5_2020_msgpack": (
        "t5_2020",
        dict(weights=("msgpack",), other_formats=True),
        "t5_2020/float32",
    ),
    "t5_2020_bin": ("t5_2020", dict(weights=("bin",)), "t5_2020/float32"),
    "t5_v1_1_bin": ("t5_v1_1", dict(), "t5_v1_1/float32"),
    "t5_v1_1_bin_float16": ("t5_v1_1", dict(bin_dtype="float16"), "t5_v1_1/float16"),
    "t5_v1_1_bin_bfloat16_sharded": (
        "t5_v1_1",
        dict(bin_dtype="bfloat16", bin_shards=3),
        "t5_v1_1/bfloat16",
    ),
    "t5_v1_1_msgpack": ("t5_v1_1", dict(files=("msgpack",)), "t5_v1_1/float32"),
    "t5_v1_1_msgpack_wrapped": (
        "t5_v1_1",
        dict(files=("msgpack",), wrap_params=True),
        "t5_v1_1/float32",
    ),
    "flan_t5_safetensors": ("flan_t5", dict(), "flan_t5/float32"),
    "flan_t5_bfloat16_sharded": ("flan_t5", dict(dtype="bfloat16", shards=2), "flan_t5/bfloat16"),
}
_NEEDS_TORCH = {
    name
    for name, (family, kw, _) in VARIANTS.items()
    if "bin" in kw.get("weights", ())
    or (family == "t5_v1_1" and "bin" in kw.get("files", ("bin",)))
}
_FORWARD = {}


def _logits(config, params, inputs):
  """Our T5's logits; one compilation per config (the families share two)."""
  if config not in _FORWARD:
    model = t5_lib.T5(config)
    _FORWARD[config] = jax.jit(lambda p, a, m, d: model.apply({"params": p}, a, m, d))
  return np.asarray(
      _FORWARD[config](
          params, inputs["input_ids"], inputs["attention_mask"], inputs["decoder_input_ids"]
      )
  )


def _assert_close(ours, theirs):
  scale = np.abs(theirs).max()
  assert scale > 1.0 and np.std(theirs) > 0.1  # not a vacuous comparison
  assert np.abs(ours - theirs).max() < 1e-4 * scale, np.abs(ours - theirs).max() / scale


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
  """name -> replica directory, written once per module."""
  root = tmp_path_factory.mktemp("replicas")
  out = {}
  for name, (family, kwargs, _) in VARIANTS.items():
    if name in _NEEDS_TORCH and not torch_available():
      continue
    out[name] = _replicas.FAMILIES[family](root / name, **kwargs)
  return out


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_replica_matches_hugging_face_golden(name, replicas):
  """Our logits on each replica against Hugging Face's, kept in fixtures/replicas/golden.npz."""
  if name not in replicas:
    pytest.skip("writing pytorch_model.bin needs torch")
  family, _, entry = VARIANTS[name]
  golden = np.load(GOLDEN)
  dtype = entry.split("/")[1]
  weights_sum = sum(
      np.abs(v).astype(np.float64).sum()
      for v in _replicas.reference_state(family, dtype=dtype).values()
  )
  np.testing.assert_allclose(
      weights_sum,
      golden[f"{entry}/weights_sum"],
      rtol=1e-9,
      err_msg="the replica's weights changed: rerun make_parity_fixtures",
  )
  config, params = pretrained.load_t5(str(replicas[name]))
  inputs = {k: golden[k] for k in ("input_ids", "attention_mask", "decoder_input_ids")}
  _assert_close(_logits(config, params, inputs), golden[f"{entry}/logits"])


@pytest.mark.skipif(not torch_available(), reason="torch not installed")
def test_replicas_match_hugging_face_live(replicas, tmp_path):
  """Hugging Face's PyTorch T5 loads every replica with no missing key and only the keys it
  documents as ignored; our logits match its logits on the same directory."""
  import torch
  import transformers

  inputs = mpf.replica_inputs()
  for name, directory in replicas.items():
    family, kwargs, entry = VARIANTS[name]
    hf_dir = directory
    if "msgpack" in name:  # transformers 5 has no Flax: the same weights in torch's format
      hf_dir = (
          _replicas.t5_2020(tmp_path / name)
          if family == "t5_2020"
          else _replicas.t5_v1_1(tmp_path / name, files=("bin",))
      )
    model, info = transformers.T5ForConditionalGeneration.from_pretrained(
        hf_dir, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"], (name, info)
    assert set(info["unexpected_keys"]) <= {LEGACY_BIAS}, (name, info)
    with torch.no_grad():
      theirs = model.eval()(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()
    config, params = pretrained.load_t5(str(directory))
    _assert_close(_logits(config, params, inputs), theirs)
    assert config.scale_decoder_outputs == model.config.scale_decoder_outputs, name


def test_2020_layout_drops_what_hugging_face_drops_in_one_log_line(replicas, caplog):
  directory = replicas["t5_2020_safetensors"]
  # absl's logger, by name: a train.py run in this process (runtime.setup_runtime) may have set
  # its verbosity to WARNING.
  with caplog.at_level(logging.INFO, logger="absl"):
    config, params = pretrained.load_t5(str(directory))
  lines = [r.getMessage() for r in caplog.records if "drops on load" in r.getMessage()]
  assert len(lines) == 1, lines
  for key in (
      LEGACY_BIAS,
      "encoder.embed_tokens.weight",
      "decoder.embed_tokens.weight",
      "lm_head.weight",
  ):
    assert key in lines[0]
  assert str(directory) in lines[0]
  assert config.tie_word_embeddings and "lm_head" not in params
  # The legacy config.json: Hugging Face T5Config's defaults.
  assert (
      config.feed_forward_proj,
      config.num_decoder_layers,
      config.scale_decoder_outputs,
      config.relative_attention_max_distance,
  ) == ("relu", 2, True, 128)


def test_legacy_config_defaults_are_hugging_faces():
  import transformers

  raw = _replicas.config_2020()
  assert not {"feed_forward_proj", "tie_word_embeddings", "num_decoder_layers"} & set(raw)
  ours = t5_lib.T5Config.from_hf_dict(raw)
  theirs = transformers.T5Config(**raw)
  for field in (
      "feed_forward_proj",
      "num_decoder_layers",
      "num_layers",
      "d_ff",
      "relative_attention_max_distance",
      "scale_decoder_outputs",
      "decoder_start_token_id",
  ):
    assert getattr(ours, field) == getattr(theirs, field), field
  assert ours.tie_word_embeddings and ours.activation == theirs.dense_act_fn


def _rewrite(directory, tmp_path, edit):
  """A copy of a safetensors replica with its state dict edited."""
  state = pretrained.read_safetensors(directory / "model.safetensors")
  edit(state)
  out = tmp_path / "edited"
  out.mkdir()
  (out / "config.json").write_text((directory / "config.json").read_text())
  _replicas.write_safetensors(out, state)
  return out


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda s: s.update(
                {"encoder.block.0.layer.0.SelfAttention.q.bias": np.zeros(32, np.float32)}
            ),
            "unexpected 1 (e.g. encoder.block.0.layer.0.SelfAttention.q.bias)",
        ),
        (
            lambda s: s.update(
                {
                    "decoder.block.1.layer.1.EncDecAttention.relative_attention_bias.weight": np.zeros(
                        (8, 4), np.float32
                    )
                }
            ),
            "unexpected 1 (e.g. decoder.block.1.layer.1.EncDecAttention.relative_attention_bias.weight)",
        ),
        (
            lambda s: s.pop("decoder.final_layer_norm.weight"),
            "missing 1 (e.g. decoder.final_layer_norm.weight)",
        ),
        (lambda s: s.pop("shared.weight"), "missing shared.weight"),
    ],
)
def test_other_unexpected_or_missing_keys_stay_errors(replicas, tmp_path, edit, message):
  directory = _rewrite(replicas["t5_2020_safetensors"], tmp_path, edit)
  with pytest.raises(pretrained.CheckpointError) as info:
    pretrained.load_t5(str(directory))
  assert message in str(info.value) and str(directory) in str(info.value)


def test_tf_h5_is_never_read(replicas, tmp_path):
  """A t5-v1_1 directory whose only weights are tf_model.h5 says which files it looks for."""
  directory = tmp_path / "tf_only"
  directory.mkdir()
  src = replicas["t5_v1_1_msgpack"]
  for name in ("config.json", "tf_model.h5"):
    (directory / name).write_bytes((src / name).read_bytes())
  with pytest.raises(
      pretrained.CheckpointError,
      match="no weights found; expected one of model.safetensors, .*flax_model.msgpack",
  ):
    pretrained.load_t5(str(directory))


# ----------------------------------------------------------------------------- readers
def test_safetensors_reader_every_dtype_lazily(tmp_path, monkeypatch):
  """Each dtype of the format (bfloat16 too), floats as float32; read from a memory map (not
  read_bytes), and the arrays do not depend on the file afterwards."""
  import ml_dtypes
  from safetensors.numpy import save_file

  rng = np.random.default_rng(0)
  plain = {
      "f64": rng.normal(size=(3, 5)),
      "f32": rng.normal(size=(7,)).astype(np.float32),
      "f16": rng.normal(size=(2, 3, 4)).astype(np.float16),
      "i64": rng.integers(-9, 9, (4,)),
      "i32": rng.integers(-9, 9, (2, 2)).astype(np.int32),
      "i16": np.arange(5, dtype=np.int16),
      "i8": np.arange(-3, 3, dtype=np.int8),
      "u8": np.arange(6, dtype=np.uint8).reshape(2, 3),
      "bool": np.array([True, False, True]),
      "scalar": np.array(2.5, np.float32),
  }
  save_file(plain, tmp_path / "plain.safetensors")  # the safetensors package's own writer
  bf16 = rng.normal(size=(5, 3)).astype(np.float32)
  (tmp_path / "bf16.safetensors").write_bytes(_replicas._safetensors_bytes({"w": bf16}, "bfloat16"))
  monkeypatch.setattr(
      type(pretrained.epath.Path(tmp_path)), "read_bytes", lambda self: pytest.fail("read whole")
  )
  got = pretrained.read_safetensors(tmp_path / "plain.safetensors")
  assert set(got) == set(plain)
  for name, value in plain.items():
    expected = value.astype(np.float32) if value.dtype.kind == "f" else value
    assert got[name].dtype == expected.dtype, name
    np.testing.assert_array_equal(got[name], expected, err_msg=name)
    assert got[name].flags.owndata or not isinstance(got[name].base, np.memmap), name
  got_bf16 = pretrained.read_safetensors(tmp_path / "bf16.safetensors")["w"]
  assert got_bf16.dtype == np.float32
  np.testing.assert_array_equal(got_bf16, bf16.astype(ml_dtypes.bfloat16).astype(np.float32))
  assert np.abs(got_bf16 - bf16).max() > 0  # rounded, so the comparison above is not trivial
  if torch_available():  # and torch's bfloat16 bytes are read as torch reads them
    import torch
    from safetensors.torch import save_file as torch_save_file

    t = torch.randn(4, 6, dtype=torch.bfloat16)
    torch_save_file({"t": t}, tmp_path / "torch.safetensors")
    np.testing.assert_array_equal(
        pretrained.read_safetensors(tmp_path / "torch.safetensors")["t"], t.float().numpy()
    )
  # The file changes afterwards: what was read does not.
  before = got["f32"].copy()
  size = (tmp_path / "plain.safetensors").stat().st_size
  with (tmp_path / "plain.safetensors").open("r+b") as f:
    f.write(b"\0" * size)
  np.testing.assert_array_equal(got["f32"], before)


def test_safetensors_reader_names_the_file_and_tensor(tmp_path):
  good = _replicas._safetensors_bytes({"a": np.zeros((4, 4), np.float32)}, "float32")
  (tmp_path / "short.safetensors").write_bytes(good[:-8])
  with pytest.raises(
      pretrained.CheckpointError,
      match=r"short.safetensors: cannot read weights: " r"tensor a \(F32 \[4, 4\]\)",
  ):
    pretrained.read_safetensors(tmp_path / "short.safetensors")
  header = json.dumps({"a": {"dtype": "F8_E5M2", "shape": [1], "data_offsets": [0, 1]}}).encode()
  (tmp_path / "f8.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0")
  with pytest.raises(pretrained.CheckpointError, match="f8.safetensors: .*dtype F8_E5M2"):
    pretrained.read_safetensors(tmp_path / "f8.safetensors")


@pytest.mark.skipif(not torch_available(), reason="torch not installed")
def test_torch_bin_reader_storages_and_views(tmp_path):
  """HalfStorage, BFloat16Storage, ints; views with storage offsets and strides; shared storage."""
  import torch

  base = torch.randn(6, 8)
  state = {
      "f16": torch.randn(3, 4).half(),
      "bf16": torch.randn(5, 2).bfloat16(),
      "i64": torch.arange(7),
      "transposed": base.t(),
      "offset_slice": base[2:4, 1:5],
      "shared_a": base,
      "f64": torch.randn(2, 2, dtype=torch.float64),
  }
  torch.save(state, tmp_path / "x.bin")
  got = pretrained.read_torch_zip((tmp_path / "x.bin").read_bytes())
  for name, tensor in state.items():
    expected = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    assert got[name].dtype == expected.dtype, name
    np.testing.assert_array_equal(got[name], expected, err_msg=name)


def test_unreadable_bin_and_msgpack_name_the_file(tmp_path):
  from flax import serialization

  tree = {
      "shared": {"embedding": np.zeros((4, 2), np.float32)},
      "encoder": {"final_layer_norm": {"scale": np.ones(2, np.float32)}},
  }
  (tmp_path / "flax_model.msgpack").write_bytes(serialization.to_bytes(tree))
  with pytest.raises(
      pretrained.CheckpointError,
      match="flax_model.msgpack: cannot read weights .*encoder/final_layer_norm/scale",
  ):
    pretrained.load_state_dict(tmp_path)
  (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"a": 1}))  # torch < 1.6 style
  with pytest.raises(
      pretrained.CheckpointError,
      match="pytorch_model.bin: cannot read weights .*not a torch zip checkpoint",
  ):
    pretrained.load_state_dict(tmp_path)


# ----------------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def ptb_like(tmp_path_factory):
  """Tiny train/valid/test.txt in PTB's style and a real SentencePiece tokenizer of them."""
  from t5vae_jax import tokenizer as tokenizer_lib

  root = tmp_path_factory.mktemp("ptb")
  words = (
      "the company said it expects sales to rise in the third quarter <unk> N "
      "investors were n't sure how much the market would fall"
  ).split()
  rng = np.random.default_rng(0)
  lines = [" ".join(rng.choice(words, rng.integers(4, 10))) for _ in range(60)]
  data = root / "data"
  data.mkdir()
  (data / "train.txt").write_text("\n".join(" " + line + " " for line in lines[:40]) + "\n")
  (data / "valid.txt").write_text("\n".join(lines[40:50]) + "\n")
  (data / "test.txt").write_text("\n".join(lines[50:]) + "\n")
  tokenizer = tokenizer_lib.train_sentencepiece_tokenizer(
      lines, root / "tokenizer", vocab_size=40, extra_ids=4, hard_vocab_limit=False
  )
  return data, root / "tokenizer", len(tokenizer)


def test_tokenizer_less_checkpoint_is_an_error(replicas, ptb_like):
  directory = replicas["flan_t5_safetensors"]
  with pytest.raises(pretrained.CheckpointError) as info:
    pretrained.load_tokenizer(str(directory))
  message = str(info.value)
  assert str(directory) in message and "spiece.model or tokenizer.json" in message
  assert "--config.data.tokenizer" in message and "\n" not in message
  # The same directory given as --config.data.tokenizer: the same trap, the same stop.
  from t5vae_jax import tokenizer as tokenizer_lib

  with pytest.raises(
      FileNotFoundError,
      match=f"{directory}: no tokenizer files .*spiece.model or tokenizer.json",
  ):
    tokenizer_lib.load_tokenizer(directory)


def test_tokenizer_with_more_ids_than_embedding_rows_is_an_error(tmp_path, ptb_like):
  from configs import ptb
  from t5vae_jax import train_lib

  _, tokenizer_dir, tokenizer_size = ptb_like
  directory = _replicas.t5_2020(
      tmp_path / "small", vocab_size=tokenizer_size - 1, tokenizer_dir=tokenizer_dir
  )
  config = ptb.get_config()
  config.model.pretrained = str(directory)
  with pytest.raises(
      pretrained.CheckpointError,
      match=f"the tokenizer has {tokenizer_size} ids "
      f"but {directory} has {tokenizer_size - 1} embedding rows",
  ):
    train_lib.build_setup(config, tmp_path / "work")


def _train_py(tmp_path, pretrained_dir, data_dir):
  args = [
      f"--config={ROOT / 'configs/ptb.py'}",
      "--phase=1",
      f"--workdir={tmp_path / 'work'}",
      f"--config.model.pretrained={pretrained_dir}",
      f"--config.data.dir={data_dir}",
      f"--config.data.tfds_dir={tmp_path / 'tfds'}",
      "--config.batch_size=8",
      "--config.phase1.epochs=1",
      "--config.model.latent_dim=4",
      "--config.data.max_len=16",
      "--config.data.bucket_lengths=(16,)",
      "--config.mesh_devices=1",
      "--config.progress_bar=False",
      "--config.eval_max_examples=8",
      "--config.log_every_steps=1",
      "--config.pack_tokens=False",
  ]  # one train-step compilation instead of two
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  return subprocess.run(
      [sys.executable, str(ROOT / "train.py"), *args],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )


def test_train_py_on_the_2020_layout_and_without_tokenizer(tmp_path, ptb_like):
  """Acceptance: phase 1 of configs/ptb.py trains on a t5-small-2020-layout directory with its
  SentencePiece tokenizer; without tokenizer files it stops with one error line."""
  data, tokenizer_dir, tokenizer_size = ptb_like
  bare = _replicas.t5_2020(
      tmp_path / "bare",
      weights=("safetensors", "bin") if torch_available() else ("safetensors",),
      vocab_size=tokenizer_size + 8,
  )
  result = _train_py(tmp_path / "no_tok", bare, data)
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert str(bare) in errors[0] and "spiece.model or tokenizer.json" in errors[0]
  assert "--config.data.tokenizer" in errors[0]
  full = _replicas.copy_tokenizer(bare, tokenizer_dir)
  result = _train_py(tmp_path / "ok", full, data)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / "ok" / "work" / "phase1").is_dir()


def test_weights_on_gs_are_read_whole_not_memory_mapped(replicas, monkeypatch):
  """A non-local path (gs://, through the Cloud Storage stand-in on 127.0.0.1) falls back to
  reading each file: the sharded bfloat16 flan-t5 replica reads as it does locally."""
  import gcs_stand_in

  local = replicas["flan_t5_bfloat16_sharded"]
  expected = pretrained.load_state_dict(local)
  with gcs_stand_in.emulator(bucket="weights") as env:
    for key, value in env.items():
      monkeypatch.setenv(key, value)
    remote = pretrained.epath.Path("gs://weights/flan")
    for file in local.iterdir():
      (remote / file.name).write_bytes(file.read_bytes())
    monkeypatch.setattr(np, "memmap", lambda *a, **k: pytest.fail("memory-mapped gs://"))
    got = pretrained.load_state_dict(remote)
  assert set(got) == set(expected)
  for key, value in expected.items():
    assert got[key].dtype == np.float32
    np.testing.assert_array_equal(got[key], value, err_msg=key)
