"""Checks a training config before anything heavy starts: one line per problem.

``validate(config, phase)`` walks the ConfigDict against ``RULES`` (every key of
``configs/default.py`` with its type and allowed values), then checks what involves several keys
(bucket lengths against max_len, ...) and the local paths the config names. Problems come back
as a ``ConfigError`` whose ``errors`` hold one line each, naming the key, the value and what is
allowed::

    config.model.pooling='avg' is not allowed; allowed: 'max', 'mean' (pooling of the encoder states)

This module imports nothing heavy (no JAX), so train.py and eval.py can run it first. The
allowed values are choices.py's, which the modules acting on them import too.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import os
import re
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from t5vae_jax import hub
from t5vae_jax.errors import UserError
from t5vae_jax.choices import (
    BAD_LINE_POLICIES,
    BEST_METRICS,
    DATASETS,
    DENOISE_MODES,
    DTYPES,
    FEED_FORWARD_PROJ,
    INJECTIONS,
    KL_THRESHOLD_MODES,
    NONFINITE_POLICIES,
    POOL_LAYERS,
    POOLINGS,
    REC_NORMALIZERS,
    TOKENIZER_MODEL_TYPES,
    BETA_SCHEDULES,
    parse_sharding_rules,
)


class ConfigError(UserError, ValueError):
  """A config value (or a flag) is not allowed. ``errors``: one line per problem."""

  def __init__(self, errors: str | Sequence[str]):
    self.errors = [errors] if isinstance(errors, str) else list(errors)
    message = self.errors[0]
    if len(self.errors) > 1:
      message += f" (and {len(self.errors) - 1} more: " + "; ".join(self.errors[1:]) + ")"
    super().__init__(message)


# --------------------------------------------------------------------------------------------
# Allowed values: declared once in choices.py, with the modules that act on them
# --------------------------------------------------------------------------------------------
SPLIT_PATTERN = re.compile(r"^(train|validation|test)(\[[^\]]*\])?$")
PHASES = (1, 2)
DEFAULT_MAX_LINE_CHARS = 20_000


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Rule:
  """What a key may hold. ``check(value)`` runs after the type check; ``allowed`` says, in
  words, what passes both."""

  kind: str  # int | float | bool | str | ints (a tuple of ints)
  allowed: str
  check: Optional[Callable[[Any], bool]] = None
  description: str = ""
  optional: bool = False  # may be absent from the config (a rare knob)
  none_ok: bool = False


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


_TYPE_CHECKS = {
    "int": (_is_int, "an integer"),
    "float": (lambda v: _is_number(v) and math.isfinite(v), "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "True or False"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "ints": (
        lambda v: isinstance(v, (tuple, list)) and all(_is_int(x) for x in v),
        "a tuple of integers",
    ),
}


def choice(values: Sequence[str], description: str = "", **kw) -> Rule:
  return Rule(
      "str",
      "one of " + ", ".join(repr(v) for v in values),
      lambda v: v in values,
      description,
      **kw,
  )


def integer(low: int, high: Optional[int] = None, description: str = "", **kw) -> Rule:
  allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
  return Rule("int", allowed, lambda v: v >= low and (high is None or v <= high), description, **kw)


def number(
    low: float,
    high: Optional[float] = None,
    *,
    low_open=False,
    high_open=False,
    description: str = "",
    **kw,
) -> Rule:
  if high is None:
    allowed = f"a number {'>' if low_open else '>='} {low:g}"
  else:
    allowed = (
        f"a number in {'(' if low_open else '['}{low:g}, {high:g}" f"{')' if high_open else ']'}"
    )

  def check(v):
    above = v > low if low_open else v >= low
    below = high is None or (v < high if high_open else v <= high)
    return above and below

  return Rule("float", allowed, check, description, **kw)


def boolean(description: str = "", **kw) -> Rule:
  return Rule("bool", "True or False", None, description, **kw)


def string(description: str = "", **kw) -> Rule:
  return Rule("str", "a string", None, description, **kw)


def _valid_sharding_rules(text: str) -> bool:
  try:
    parse_sharding_rules(text)
  except ValueError:
    return False
  return True


RULES: dict[str, Rule] = {
    "seed": integer(0, description="random seed"),
    # model
    "model.pretrained": string(
        "a Hugging Face T5 checkpoint: local directory or hub id; '' = from scratch"
    ),
    "model.t5.vocab_size": integer(3, description="vocabulary size of a scratch T5"),
    "model.t5.d_model": integer(1),
    "model.t5.d_kv": integer(1),
    "model.t5.d_ff": integer(1),
    "model.t5.num_layers": integer(1),
    "model.t5.num_decoder_layers": integer(1, none_ok=True),
    "model.t5.num_heads": integer(1),
    "model.t5.relative_attention_num_buckets": integer(1),
    "model.t5.relative_attention_max_distance": integer(1),
    "model.t5.feed_forward_proj": choice(FEED_FORWARD_PROJ),
    "model.t5.tie_word_embeddings": boolean(),
    "model.t5.layer_norm_epsilon": number(0, low_open=True, optional=True),
    "model.t5.pad_token_id": integer(0, optional=True),
    "model.t5.eos_token_id": integer(0, optional=True),
    "model.t5.decoder_start_token_id": integer(0, optional=True),
    "model.dropout_rate": number(0, 1, high_open=True),
    "model.latent_dim": integer(1, description="size of z"),
    "model.pooling": choice(POOLINGS, "pooling of the encoder states"),
    "model.pool_layers": choice(POOL_LAYERS, "which encoder layers are pooled"),
    "model.pool_padding": boolean("pool over pads too (ablation)"),
    "model.pool_dropout": boolean("pool the encoder output after its final dropout (ablation)"),
    "model.latent_injection": choice(INJECTIONS, "how z reaches the decoder"),
    "model.dtype": choice(DTYPES, "compute dtype (auto: bfloat16 on TPU/GPU, float32 on CPU)"),
    "model.remat": choice(
        ("none", "full", "dots"), "activation rematerialisation per block", optional=True
    ),
    # data
    "data.name": choice(DATASETS, "the dataset"),
    "data.dir": string("local directory with train.txt / valid.txt / test.txt; '' = download"),
    "data.tfds_dir": string("where TFDS prepares datasets; '' = ~/tensorflow_datasets"),
    "data.tokenizer": string("tokenizer directory or hub id; '' = the checkpoint's"),
    "data.max_len": integer(2, description="tokens per sentence incl. EOS"),
    "data.bucket_lengths": Rule(
        "ints",
        "increasing integers >= 1, the last one max_len, or () for the defaults",
        None,
        "padded lengths",
        none_ok=True,
    ),
    "data.train_split": Rule(
        "str",
        "train, validation or test, optionally sliced (train[:50%])",
        lambda v: bool(SPLIT_PATTERN.match(v)),
    ),
    "data.eval_split": Rule(
        "str",
        "train, validation or test, optionally sliced (test[:1000])",
        lambda v: bool(SPLIT_PATTERN.match(v)),
    ),
    "data.on_bad_line": choice(BAD_LINE_POLICIES, "what to do with an unusable line"),
    "data.max_line_chars": integer(1, description="longer lines are bad lines", optional=True),
    "data.extra_ids": integer(0, description="sentinel tokens of a scratch tokenizer"),
    "data.tokenizer_model_type": choice(TOKENIZER_MODEL_TYPES),
    "data.synthetic.num_train": integer(1),
    "data.synthetic.num_valid": integer(1),
    "data.synthetic.num_test": integer(1),
    "data.synthetic.seed": integer(0),
    # optimisation
    "batch_size": integer(1, description="global batch size"),
    "optimizer.learning_rate": number(0, low_open=True),
    "optimizer.b1": number(0, 1, high_open=True),
    "optimizer.b2": number(0, 1, high_open=True),
    "optimizer.eps": number(0, low_open=True),
    "optimizer.weight_decay": number(0),
    "optimizer.grad_clip_norm": number(0, description="0 = off"),
    "phase1.epochs": number(0, low_open=True),
    "phase1.freeze_decoder": boolean(),
    "phase2.epochs": number(0, low_open=True),
    "phase2.from_phase1": boolean(),
    # objective
    "beta.schedule": choice(BETA_SCHEDULES, "KL weight schedule of phase 2"),
    "beta.value": number(0, description="constant schedule"),
    "beta.epochs": number(0, low_open=True, description="linear ramp length"),
    "beta.n_cycles": integer(1),
    "beta.ratio": number(0, 1, low_open=True),
    "kl_floor": number(0, description="free bits per dimension; 0 = off"),
    "kl_threshold_mode": choice(KL_THRESHOLD_MODES),
    "rec_normalizer": choice(
        REC_NORMALIZERS,
        "reconstruction term of the training loss: sum "
        "over real tokens (paper) or sum / data.max_len (released code)",
        optional=True,
    ),
    "denoise_rate": number(0, 1, high_open=True, description="token deletion probability"),
    "denoise_mode": choice(DENOISE_MODES),
    # loop
    "log_every_steps": integer(1),
    "eval_every_steps": integer(1),
    "eval_max_examples": integer(0, description="0 = the whole split"),
    "eval_num_samples": integer(0, description="importance samples per sentence, 0 = none"),
    "eval_seed": integer(0),
    "checkpoint_every_steps": integer(1),
    "keep_checkpoints": integer(1),
    "best_metric": choice(BEST_METRICS, "lower is better"),
    "on_nonfinite": choice(NONFINITE_POLICIES),
    "fsdp": boolean(),
    "model_parallel": integer(1, description="devices per tensor-parallel model column"),
    "sharding_rules": Rule(
        "str",
        "comma-separated <logical axis>:<mesh axis> pairs, logical axes embed, heads, mlp, "
        "vocab and mesh axes data, model (e.g. 'heads:model,mlp:model')",
        _valid_sharding_rules,
        "which parameter axes the mesh axes split",
    ),
    "pack_tokens": boolean(),
    "mesh_devices": integer(0, description="0 = all devices"),
    "progress_bar": boolean(),
}


# --------------------------------------------------------------------------------------------
# Walking a config
# --------------------------------------------------------------------------------------------
def _is_mapping(value) -> bool:
  return isinstance(value, Mapping) or (
      hasattr(value, "items") and hasattr(value, "keys") and not isinstance(value, (str, bytes))
  )


def flatten(config, prefix: str = "") -> dict[str, Any]:
  """{"model.pooling": "max", ...}: the leaves of a ConfigDict (or nested dicts)."""
  out = {}
  for key, value in config.items():
    path = f"{prefix}{key}"
    if _is_mapping(value):
      out.update(flatten(value, path + "."))
    else:
      out[path] = value
  return out


def has_key(config, key: str) -> bool:
  node = config
  for part in key.split("."):
    if not _is_mapping(node) or part not in node:
      return False
    node = node[part]
  return True


def suggest(key: str, candidates: Iterable[str]) -> str:
  """' (did you mean 'x'?)' for the closest candidate, or ''."""
  candidates = list(candidates)
  parent, _, leaf = key.rpartition(".")
  siblings = {c.rpartition(".")[2]: c for c in candidates if c.rpartition(".")[0] == parent}
  close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
  if close:
    match = [siblings[close[0]]]
  else:  # a typo in a parent: candidates whose last part is close, by closeness of the path
    leaves = [
        c for c in candidates if difflib.get_close_matches(leaf, [c.rpartition(".")[2]], cutoff=0.6)
    ]
    match = difflib.get_close_matches(key, leaves, n=1, cutoff=0.6)
  return f" (did you mean '{match[0]}'?)" if match else ""


def _path_text(path: str) -> str:
  """A path as it is, or quoted and escaped when it holds a newline or another control
  character: an error stays one line."""
  return path if path.isprintable() else repr(path)


def _fmt(value) -> str:
  return repr(value) if not isinstance(value, tuple) or value else "()"


def check_value(key: str, value: Any, rule: Rule) -> Optional[str]:
  """The error line for ``config.<key>=value``, or None when it is allowed."""
  about = f" ({rule.description})" if rule.description else ""
  if value is None:
    return None if rule.none_ok else f"config.{key} is None; allowed: {rule.allowed}{about}"
  type_ok, type_name = _TYPE_CHECKS[rule.kind]
  if not type_ok(value):
    return (
        f"config.{key}={_fmt(value)} is {_kind_of(value)}, not {type_name}; allowed: "
        f"{rule.allowed}{about}"
    )
  if rule.check is not None and not rule.check(value):
    return f"config.{key}={_fmt(value)} is not allowed; allowed: {rule.allowed}{about}"
  return None


def _kind_of(value) -> str:
  if isinstance(value, bool):
    return "a bool"
  if _is_int(value):
    return "an integer"
  if _is_number(value):
    return "a number" if math.isfinite(value) else "not finite"
  if isinstance(value, str):
    return "a string"
  return f"a {type(value).__name__}"


_TRUE, _FALSE = ("true", "t", "1"), ("false", "f", "0")  # absl's boolean flags


def parse_override(key: str, text: str, current: Any) -> Any:
  """The value of ``--config.<key>=<text>`` for a saved config: parsed as the key's rule says
  (bool as absl's flags parse it: true/false, t/f, 1/0), else like ``current``'s type; a
  value that does not parse is a ConfigError naming the key and what is allowed."""
  import ast

  rule = RULES.get(key)
  kind = rule.kind if rule is not None else _kind_name(current)
  allowed = f"; allowed: {rule.allowed}" if rule is not None else ""
  if text == "None" and (current is None or (rule is not None and rule.none_ok)):
    return None
  try:
    if kind == "bool":
      if text.lower() not in _TRUE + _FALSE:
        raise ValueError(text)
      return text.lower() in _TRUE
    if kind == "int":
      return int(text)
    if kind == "float":
      return float(text)
    if kind == "ints":
      value = ast.literal_eval(text)
      value = (value,) if isinstance(value, int) else tuple(value)
      return list(value) if isinstance(current, list) else value
    if kind == "str":
      return text
    value = ast.literal_eval(text)
    return list(value) if isinstance(current, list) and isinstance(value, tuple) else value
  except (ValueError, SyntaxError, TypeError):
    if kind is None:
      return text
    raise ConfigError(f"--config.{key}={text}: not {_TYPE_CHECKS[kind][1]}{allowed}") from None


def _kind_name(value) -> Optional[str]:
  """The Rule kind a value of a key without a rule is parsed as (None: a Python literal)."""
  if isinstance(value, bool):
    return "bool"
  if isinstance(value, int):
    return "int"
  if isinstance(value, float):
    return "float"
  if isinstance(value, str):
    return "str"
  return None


def apply_overrides(config, overrides: Sequence[str]):
  """``key=value`` strings (eval.py's ``--config.key=value``) set on a saved config in place:
  each value parsed as its key's type (:func:`parse_override`), checked by its key's rule, and
  set with ``ConfigDict.update_from_flattened_dict``. Every problem comes back at once as one
  ConfigError, a line each. Returns config."""
  values, errors = {}, []
  flat = flatten(config)
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      errors.append(f"--config.{item}: not of the form --config.key=value")
    elif not has_key(config, key) or key not in flat:
      errors.append(f"--config.{key}: the config has no key '{key}'{suggest(key, flat)}")
    else:
      try:
        values[key] = parse_override(key, text, flat[key])
      except ConfigError as e:
        errors.extend(e.errors)
        continue
      rule = RULES.get(key)
      problem = check_value(key, values[key], rule) if rule is not None else None
      if problem:
        errors.append(problem)
  if errors:
    raise ConfigError(errors)
  config.update_from_flattened_dict(values)
  return config


def describe_key(key: str) -> str:
  """'config.<key> must be <allowed> (<description>)', for flag-parsing messages."""
  rule = RULES.get(key)
  if rule is None:
    return ""
  about = f" ({rule.description})" if rule.description else ""
  return f"config.{key} must be {rule.allowed}{about}"


def _cross_checks(values: dict[str, Any]) -> list[str]:
  errors = []
  max_len = values.get("data.max_len")
  buckets = values.get("data.bucket_lengths")
  if (
      _is_int(max_len)
      and max_len >= 2
      and buckets
      and isinstance(buckets, (tuple, list))
      and all(_is_int(b) for b in buckets)
  ):
    buckets = tuple(buckets)
    if any(b < 1 for b in buckets) or any(b >= c for b, c in zip(buckets, buckets[1:])):
      errors.append(
          f"config.data.bucket_lengths={buckets} is not allowed; allowed: strictly "
          f"increasing integers >= 1"
      )
    elif buckets[-1] > max_len:
      errors.append(
          f"config.data.bucket_lengths={buckets} has lengths above "
          f"config.data.max_len={max_len}; allowed: buckets up to max_len, the last "
          f"one max_len (set both, or --config.data.bucket_lengths='()' for the "
          f"defaults)"
      )
    elif buckets[-1] < max_len:
      errors.append(
          f"config.data.bucket_lengths={buckets} ends below config.data.max_len="
          f"{max_len}, so a sentence of max_len tokens fits no bucket; allowed: the "
          f"last bucket equal to max_len"
      )
  extra, vocab = values.get("data.extra_ids"), values.get("model.t5.vocab_size")
  if (
      _is_int(extra)
      and _is_int(vocab)
      and not values.get("model.pretrained")
      and extra >= vocab - 3
  ):
    errors.append(
        f"config.data.extra_ids={extra} leaves no room in config.model.t5.vocab_size="
        f"{vocab}; allowed: fewer than vocab_size - 3"
    )
  return errors


def _path_checks(values: dict[str, Any]) -> list[str]:
  errors = []
  data_dir = values.get("data.dir")
  if isinstance(data_dir, str) and data_dir and not hub.is_remote(data_dir):
    path = os.path.expanduser(data_dir)
    if not os.path.exists(path):
      errors.append(
          f"config.data.dir={data_dir!r}: no such directory ({_path_text(os.path.abspath(path))})"
      )
    elif not os.path.isdir(path):
      errors.append(
          f"config.data.dir={data_dir!r} is a file, not a directory with train.txt, "
          "valid.txt and test.txt"
      )
  tfds_dir = values.get("data.tfds_dir")
  if (
      isinstance(tfds_dir, str)
      and tfds_dir
      and not hub.is_remote(tfds_dir)
      and os.path.isfile(os.path.expanduser(tfds_dir))
  ):
    errors.append(f"config.data.tfds_dir={tfds_dir!r} is a file, not a directory")
  for key, what in (
      ("model.pretrained", "checkpoint directory"),
      ("data.tokenizer", "tokenizer directory"),
  ):
    name = values.get(key)
    # Hub ids and gs:// paths are left to the loaders (hub.is_hub_id: the program's one rule).
    if isinstance(name, str) and name and not hub.is_remote(name) and not hub.is_hub_id(name):
      path = hub.local_path(name)
      if not os.path.exists(path):
        errors.append(
            f"config.{key}={name!r}: no such {what} ({_path_text(os.path.abspath(path))}); give an "
            "existing directory or a Hugging Face hub id"
        )
      elif not os.path.isdir(path):
        errors.append(f"config.{key}={name!r} is a file; expected a {what}")
  return errors


def collect_errors(
    config,
    phase: Optional[int] = None,
    *,
    check_paths: bool = True,
    require_all: bool = True,
    allow_unknown: bool = False,
) -> list[str]:
  """Every problem of ``config`` (and of ``phase`` when given), one line each."""
  errors = []
  if phase is not None and (not _is_int(phase) or phase not in PHASES):
    errors.append(
        f"--phase={phase} is not allowed; allowed: 1 (encoder warm-up) or 2 "
        "(full VAE, from phase 1)"
    )
  try:
    values = flatten(config)
  except Exception as e:  # not a ConfigDict at all
    return errors + [f"the config is not a ConfigDict ({type(e).__name__}: {e})"]
  for key, value in values.items():
    rule = RULES.get(key)
    if rule is None:
      if not allow_unknown:
        errors.append(f"config has no key '{key}'{suggest(key, RULES)}")
      continue
    error = check_value(key, value, rule)
    if error:
      errors.append(error)
  if require_all:
    # A whole group replaced by a scalar (config.model=3) shows up here as missing keys.
    for key, rule in RULES.items():
      if not rule.optional and key not in values:
        errors.append(
            f"config.{key} is missing; allowed: {rule.allowed} (configs start from "
            "configs/default.py's get_config())"
        )
  errors += _cross_checks(values)
  if check_paths:
    errors += _path_checks(values)
  return errors


def validate(config, phase: Optional[int] = None, **kwargs) -> None:
  """Raises ConfigError listing every problem of ``config`` (see collect_errors)."""
  errors = collect_errors(config, phase, **kwargs)
  if errors:
    raise ConfigError(errors)


# --------------------------------------------------------------------------------------------
# Checks that need the run's environment (devices, workdir); still before anything heavy.
# --------------------------------------------------------------------------------------------
def check_devices(config, device_count: int, process_count: int = 1) -> None:
  """batch_size against the mesh that train_lib will build."""
  errors = []
  mesh_devices = config.mesh_devices
  if mesh_devices > device_count:
    errors.append(
        f"config.mesh_devices={mesh_devices} is not allowed; allowed: 0 (all) to "
        f"{device_count}, the number of devices here"
    )
    mesh_devices = device_count
  num_devices = mesh_devices or device_count
  if num_devices % config.model_parallel:
    errors.append(
        f"config.model_parallel={config.model_parallel} is not allowed; allowed: a divisor of "
        f"the number of devices ({num_devices})"
    )
  elif process_count > 1 and (device_count // process_count) % config.model_parallel:
    errors.append(
        f"config.model_parallel={config.model_parallel} is not allowed; allowed: a divisor of "
        f"the devices of one process ({device_count // process_count}): a model column stays "
        "on one host"
    )
  data_shards = max(num_devices // config.model_parallel, 1)
  problem = batch_size_problem(config.batch_size, data_shards, process_count)
  if problem:
    errors.append(f"config.batch_size={config.batch_size} is not allowed; allowed: {problem}")
  if errors:
    raise ConfigError(errors)


def batch_size_problem(batch_size: int, data_shards: int, num_processes: int) -> Optional[str]:
  """What a global batch must be on a mesh with ``data_shards`` rows ("a multiple of ..."), or
  None when it is."""
  if batch_size % data_shards:
    return f"a multiple of the number of data shards ({data_shards} devices / model_parallel)"
  if batch_size % num_processes:
    return f"a multiple of the number of processes ({num_processes})"
  return None


def no_phase1_checkpoint_message(checkpoints_dir) -> str:
  return (
      f"phase 2 starts from phase 1's params, but there is no phase 1 checkpoint in "
      f"{checkpoints_dir}; run --phase 1 with the same --workdir first, or set "
      "--config.phase2.from_phase1=False"
  )


def check_workdir(config, workdir, phase: int) -> None:
  """Phase 2 needs phase 1's checkpoint in the same workdir (unless from_phase1=False)."""
  from etils import epath

  if phase != 2 or not config.phase2.from_phase1:
    return
  checkpoints = epath.Path(workdir) / "phase1" / "checkpoints"
  steps = [p for p in checkpoints.iterdir() if p.name.isdigit()] if checkpoints.exists() else []
  if not steps:
    raise ConfigError(no_phase1_checkpoint_message(checkpoints))


# Fields of a phase directory's model.json that must equal the config's: those that set param
# shapes always; the others too when a run resumes (the directory describes one network).
SHAPE_KEYS_T5 = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_decoder_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "feed_forward_proj",
    "tie_word_embeddings",
)
OTHER_KEYS_T5 = ("relative_attention_max_distance",)
SHAPE_KEYS_VAE = ("latent_dim",)
OTHER_KEYS_VAE = ("pooling", "pool_layers", "pool_padding", "latent_injection")


def check_model_matches(
    phase_dir, t5_config, vae_config, *, pretrained: str = "", strict: bool = True
) -> None:
  """Compares ``<phase_dir>/model.json`` with the network the config builds.

  Raises ConfigError naming the file, each differing key and both values. ``strict`` (a
  resumed run) compares every architectural key; otherwise (phase 2 loading phase 1) only those
  that set parameter shapes. No model.json: nothing to compare.
  """
  from etils import epath

  path = epath.Path(phase_dir) / "model.json"
  if not path.exists():
    return
  spec = json.loads(path.read_text())
  saved_t5, saved_vae = spec.get("t5", {}), spec.get("vae", {})
  current_t5 = t5_config.to_hf_dict() if hasattr(t5_config, "to_hf_dict") else dict(t5_config)
  current_vae = (
      dataclasses.asdict(vae_config) if dataclasses.is_dataclass(vae_config) else dict(vae_config)
  )
  t5_keys = SHAPE_KEYS_T5 + (OTHER_KEYS_T5 if strict else ())
  vae_keys = SHAPE_KEYS_VAE + (OTHER_KEYS_VAE if strict else ())
  diffs = []
  for key in t5_keys:
    if key in saved_t5 and saved_t5[key] != current_t5.get(key):
      name = f"{key} of model.pretrained={pretrained!r}" if pretrained else f"config.model.t5.{key}"
      diffs.append(f"{name}={current_t5.get(key)!r} but {saved_t5[key]!r} there")
  for key in vae_keys:
    if key in saved_vae and saved_vae[key] != current_vae.get(key):
      diffs.append(f"config.model.{key}={current_vae.get(key)!r} but {saved_vae[key]!r} there")
  if diffs:
    action = (
        "resume with the settings that run was started with, or use a new --workdir"
        if strict
        else "train phase 2 with phase 1's model settings"
    )
    raise ConfigError(
        f"the checkpoint in {epath.Path(phase_dir)} is of another model than the "
        f"config ({path}): " + "; ".join(diffs) + f"; {action}"
    )


__all__ = [
    "ConfigError",
    "RULES",
    "Rule",
    "check_devices",
    "check_model_matches",
    "check_workdir",
    "collect_errors",
    "describe_key",
    "flatten",
    "suggest",
    "validate",
]
