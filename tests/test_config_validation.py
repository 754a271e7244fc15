"""Config validation: every key's type and allowed values, cross-key rules, paths, the phase 1
checkpoint that phase 2 needs, and model.json against the config."""

import dataclasses
import json
import pathlib
import sys

import pytest

from t5vae_jax import config_validation as cv

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import default, demo, ptb, snli, yahoo, yelp  # noqa: E402


def config_with(**overrides):
  """configs/default.py with dotted overrides, types unchecked (as a config file could)."""
  config = default.get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    with node.ignore_type():
      node[leaf] = value
  return config


def errors_of(config, phase=1, **kwargs):
  with pytest.raises(cv.ConfigError) as info:
    cv.validate(config, phase, **kwargs)
  return info.value.errors


@pytest.mark.parametrize("module", [default, demo, ptb, snli, yahoo, yelp])
def test_shipped_configs_are_valid(module):
  cv.validate(module.get_config(), 1)
  cv.validate(module.get_config(), 2)


def test_rules_cover_every_key_of_the_default_config():
  keys = set(cv.flatten(default.get_config()))
  assert keys - set(cv.RULES) == set(), "add these keys to config_validation.RULES"
  required = {k for k, rule in cv.RULES.items() if not rule.optional}
  assert required - keys == set(), "RULES requires keys that configs/default.py lacks"


def test_every_allowed_dataset_has_a_builder():
  from t5vae_jax import datasets

  assert set(cv.DATASETS) == set(datasets.BUILDERS)
  assert cv.DEFAULT_MAX_LINE_CHARS == datasets.DEFAULT_MAX_LINE_CHARS


BAD_VALUES = [
    ("model.pooling", "avg", "one of 'max', 'mean'"),
    ("model.pool_layers", "first", "one of 'last', 'all'"),
    ("model.latent_injection", "prefix", "one of 'cross_attention', 'self_prefix'"),
    ("model.dtype", "float64", "one of 'float32', 'bfloat16', 'float16'"),
    ("model.latent_dim", 0, "an integer >= 1"),
    ("model.latent_dim", 2.5, "not an integer"),
    ("model.t5.feed_forward_proj", "swish", "'gated-gelu'"),
    ("model.dropout_rate", 1.0, "[0, 1)"),
    ("denoise_rate", 1.5, "a number in [0, 1)"),
    ("denoise_rate", -0.1, "a number in [0, 1)"),
    ("denoise_rate", float("nan"), "not finite"),
    ("denoise_mode", "gaussian", "one of 'bernoulli', 'uniform_count'"),
    ("kl_threshold_mode", "dataset", "one of 'batch', 'example'"),
    ("kl_floor", -1.0, "a number >= 0"),
    ("beta.schedule", "cosine", "one of 'constant', 'linear', 'cyclical'"),
    ("beta.ratio", 0.0, "a number in (0, 1]"),
    ("beta.n_cycles", 0, "an integer >= 1"),
    ("on_nonfinite", "ignore", "one of 'skip', 'stop'"),
    ("data.on_bad_line", "warn", "one of 'skip', 'fail'"),
    ("data.name", "wikitext", "one of 'ptb', 'snli', 'yahoo', 'yelp', 'synthetic'"),
    ("data.max_len", 1, "an integer >= 2"),
    ("data.train_split", "training", "train, validation or test"),
    ("batch_size", 0, "an integer >= 1"),
    ("batch_size", "8", "is a string, not an integer"),
    ("batch_size", True, "is a bool, not an integer"),
    ("phase1.epochs", 0.0, "a number > 0"),
    ("phase2.epochs", -1.0, "a number > 0"),
    ("phase2.from_phase1", "yes", "True or False"),
    ("optimizer.learning_rate", 0.0, "a number > 0"),
    ("optimizer.b2", 1.0, "[0, 1)"),
    ("best_metric", "val/mi", "'val/neg_elbo'"),
    ("log_every_steps", 0, "an integer >= 1"),
    ("mesh_devices", -1, "an integer >= 0"),
    ("model_parallel", 0, "an integer >= 1"),
    ("sharding_rules", "heads:modle", "comma-separated <logical axis>:<mesh axis> pairs"),
    ("sharding_rules", "ffn:model", "logical axes embed, heads, mlp"),
]


@pytest.mark.parametrize(
    "key,value,allowed", BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES]
)
def test_a_bad_value_gives_one_line_naming_key_value_and_what_is_allowed(key, value, allowed):
  errors = errors_of(config_with(**{key: value}))
  assert len(errors) == 1, errors
  assert errors[0].startswith(f"config.{key}={value!r} ")
  assert allowed in errors[0] and "allowed: " in errors[0]
  assert "\n" not in errors[0]


def test_unknown_and_missing_keys():
  config = default.get_config()
  config.unlock()
  config.batch_sise = 8
  config.model.polling = "mean"
  assert errors_of(config) == [
      "config has no key 'batch_sise' (did you mean 'batch_size'?)",
      "config has no key 'model.polling' (did you mean 'model.pooling'?)",
  ]
  cv.validate(config, 1, allow_unknown=True)
  del config["batch_sise"], config.model["polling"], config.model["pooling"]
  assert errors_of(config) == [
      "config.model.pooling is missing; allowed: one of 'max', 'mean' "
      "(configs start from configs/default.py's get_config())"
  ]


@pytest.mark.parametrize("phase", [0, 3, "1", None])
def test_phase_must_be_1_or_2(phase):
  if phase is None:
    cv.validate(default.get_config(), None)  # no phase: config only (eval)
    return
  assert errors_of(default.get_config(), phase) == [
      f"--phase={phase} is not allowed; allowed: 1 (encoder warm-up) or 2 (full VAE, from "
      "phase 1)"
  ]


@pytest.mark.parametrize(
    "buckets,max_len,message",
    [
        ((16, 16, 64), 64, "strictly increasing"),
        ((32, 16, 64), 64, "strictly increasing"),
        ((0, 64), 64, "strictly increasing integers >= 1"),
        ((16, 32, 128), 64, "has lengths above config.data.max_len=64"),
        ((16, 32), 64, "ends below config.data.max_len=64"),
        ((16, "32"), 32, "not a tuple of integers"),
    ],
)
def test_bucket_lengths_against_max_len(buckets, max_len, message):
  errors = errors_of(config_with(**{"data.bucket_lengths": buckets, "data.max_len": max_len}))
  assert len(errors) == 1 and errors[0].startswith("config.data.bucket_lengths=")
  assert message in errors[0]


def test_empty_buckets_mean_the_defaults():
  from t5vae_jax import data as data_lib

  empty = config_with(**{"data.bucket_lengths": (), "data.max_len": 100})
  cv.validate(empty, 1)
  # Powers of two and their midpoints, multiples of 8, below max_len; then max_len.
  assert data_lib.bucket_lengths_from_config(empty.data) == (8, 16, 24, 32, 48, 64, 96, 100)
  given = config_with(**{"data.bucket_lengths": (8, 100), "data.max_len": 100})
  cv.validate(given, 1)
  assert data_lib.bucket_lengths_from_config(given.data) == (8, 100)


def test_every_error_is_reported_one_per_line():
  errors = errors_of(
      config_with(**{"model.pooling": "avg", "batch_size": 0, "denoise_rate": 1.5}), phase=3
  )
  assert len(errors) == 4
  assert errors[0].startswith("--phase=3 ")
  assert sorted(e.split("=")[0] for e in errors[1:]) == [
      "config.batch_size",
      "config.denoise_rate",
      "config.model.pooling",
  ]
  assert str(cv.ConfigError(errors)).startswith(errors[0] + " (and 3 more: ")


def test_paths_named_by_the_config_must_exist(tmp_path):
  missing = tmp_path / "no_such_dir"
  assert errors_of(config_with(**{"data.dir": str(missing)})) == [
      f"config.data.dir={str(missing)!r}: no such directory ({missing})"
  ]
  (tmp_path / "file.txt").write_text("x")
  assert "is a file" in errors_of(config_with(**{"data.dir": str(tmp_path / "file.txt")}))[0]
  (error,) = errors_of(config_with(**{"model.pretrained": str(missing)}))
  assert error.startswith(
      f"config.model.pretrained={str(missing)!r}: no such checkpoint " f"directory ({missing})"
  )
  (error,) = errors_of(config_with(**{"data.tokenizer": "./tokenizers/nope"}))
  assert "config.data.tokenizer='./tokenizers/nope': no such tokenizer directory" in error
  # Hub ids and bucket paths are left to the loaders.
  cv.validate(
      config_with(**{"model.pretrained": "google/t5-v1_1-small", "data.dir": "gs://bucket/ptb"}), 1
  )
  cv.validate(config_with(**{"data.dir": str(missing)}), 1, check_paths=False)


def test_extra_ids_must_leave_room_in_a_scratch_vocabulary():
  (error,) = errors_of(
      config_with(**{"model.pretrained": "", "model.t5.vocab_size": 64, "data.extra_ids": 61})
  )
  assert error.startswith("config.data.extra_ids=61 leaves no room")


def test_batch_size_against_devices():
  config = default.get_config()
  cv.check_devices(config, device_count=8)
  with pytest.raises(
      cv.ConfigError,
      match=r"config\.batch_size=32 is not allowed; allowed: a "
      r"multiple of the number of data shards \(3 devices / model_parallel\)",
  ):
    cv.check_devices(config, device_count=3)
  config.model_parallel = 4  # 8 devices: 2 data shards x 4, and 32 rows split in 2
  cv.check_devices(config, device_count=8)
  with pytest.raises(cv.ConfigError, match=r"model_parallel=4 is not allowed; allowed: a divisor"):
    cv.check_devices(config, device_count=6)
  with pytest.raises(cv.ConfigError, match=r"devices of one process \(2\)"):
    cv.check_devices(config, device_count=8, process_count=4)
  config.model_parallel = 1
  config.mesh_devices = 16
  with pytest.raises(
      cv.ConfigError, match=r"config\.mesh_devices=16 is not allowed; allowed: " r"0 \(all\) to 8"
  ):
    cv.check_devices(config, device_count=8)
  config.mesh_devices = 1
  with pytest.raises(cv.ConfigError, match=r"number of processes \(3\)"):
    cv.check_devices(config, device_count=8, process_count=3)


def test_phase2_needs_a_phase1_checkpoint(tmp_path):
  config = default.get_config()
  cv.check_workdir(config, tmp_path, 1)
  with pytest.raises(
      cv.ConfigError,
      match=rf"no phase 1 checkpoint in {tmp_path}/phase1/"
      r"checkpoints; run --phase 1 with the same --workdir",
  ):
    cv.check_workdir(config, tmp_path, 2)
  (tmp_path / "phase1" / "checkpoints" / "120.orbax-checkpoint-tmp-3").mkdir(parents=True)
  with pytest.raises(cv.ConfigError):  # an unfinished save is no checkpoint
    cv.check_workdir(config, tmp_path, 2)
  (tmp_path / "phase1" / "checkpoints" / "100").mkdir()
  cv.check_workdir(config, tmp_path, 2)
  config.phase2.from_phase1 = False
  cv.check_workdir(config, tmp_path / "elsewhere", 2)


def test_model_json_must_match_the_config(tmp_path):
  from t5vae_jax import model as model_lib
  from t5vae_jax import t5 as t5_lib

  t5 = t5_lib.T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
  vae = model_lib.VAEConfig(latent_dim=16)
  (tmp_path / "model.json").write_text(
      json.dumps({"t5": t5.to_hf_dict(), "vae": dataclasses.asdict(vae), "dtype": "float32"})
  )
  cv.check_model_matches(tmp_path, t5, vae)
  cv.check_model_matches(tmp_path / "absent", t5, dataclasses.replace(vae, latent_dim=4))
  other = dataclasses.replace(t5, d_model=64)
  with pytest.raises(cv.ConfigError) as info:
    cv.check_model_matches(tmp_path, other, dataclasses.replace(vae, latent_dim=8))
  message = str(info.value)
  assert message.startswith(
      f"the checkpoint in {tmp_path} is of another model than the config "
      f"({tmp_path / 'model.json'}): "
  )
  assert "config.model.t5.d_model=64 but 32 there" in message
  assert "config.model.latent_dim=8 but 16 there" in message
  assert "use a new --workdir" in message
  with pytest.raises(cv.ConfigError, match=r"d_model of model.pretrained='t5-small'=64 but 32"):
    cv.check_model_matches(tmp_path, other, vae, pretrained="t5-small")
  # Pooling does not change shapes: phase 2 may load phase 1 with it changed, a resume may not.
  mean = dataclasses.replace(vae, pooling="mean")
  cv.check_model_matches(tmp_path, t5, mean, strict=False)
  with pytest.raises(cv.ConfigError, match=r"config\.model\.pooling='mean' but 'max' there"):
    cv.check_model_matches(tmp_path, t5, mean)


# ----------------------------------------------------------------------------- eval.py's overrides


def test_eval_overrides_parse_as_the_key_and_are_checked_by_its_rule():
  """eval.py's --config.key=value on a saved config: parsed as train.py's flags parse them
  (the key's type; bools as absl's), checked by the same rules, all problems in one error."""
  import ml_collections

  config = ml_collections.ConfigDict(default.get_config().to_dict())
  config.data.bucket_lengths = [16, 32]  # as config.json gives it back
  cv.apply_overrides(
      config,
      [
          "data.max_len=32",
          "data.dir=/x/y",
          "pack_tokens=false",
          "optimizer.learning_rate=1",
          "data.bucket_lengths=(8, 16)",
          "model.pooling=mean",
      ],
  )
  assert config.data.max_len == 32 and config.data.dir == "/x/y" and config.pack_tokens is False
  assert config.optimizer.learning_rate == 1.0 and isinstance(config.optimizer.learning_rate, float)
  assert list(config.data.bucket_lengths) == [8, 16] and config.model.pooling == "mean"
  with pytest.raises(cv.ConfigError) as info:
    cv.apply_overrides(
        config,
        ["data.max_lne=3", "pack_tokens=yes", "model.pooling=avg", "batch_size=many", "seed"],
    )
  lines = info.value.errors
  assert len(lines) == 5
  assert "no key 'data.max_lne'" in lines[0] and "did you mean 'data.max_len'" in lines[0]
  assert lines[1].startswith("--config.pack_tokens=yes: not True or False")
  assert "config.model.pooling='avg' is not allowed; allowed: one of 'max', 'mean'" in lines[2]
  assert lines[3].startswith("--config.batch_size=many: not an integer")
  assert "not of the form --config.key=value" in lines[4]
  assert config.model.pooling == "mean" and config.pack_tokens is False  # nothing half-applied


def test_a_saved_config_without_a_newer_key_loads_with_the_value_it_trained_with(tmp_path):
  import json
  from t5vae_jax import api

  saved = default.get_config().to_dict()
  del saved["pack_tokens"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config = api.load_config(tmp_path)
  assert config.pack_tokens is False  # such a run trained unpacked
  cv.apply_overrides(config, ["pack_tokens=True"])
  assert config.pack_tokens is True
