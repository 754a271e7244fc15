"""What train.py and eval.py run: set-up common to both, and one clear line on user errors.

A mistake of the user (a config value, a flag, a path, a missing checkpoint, bad data) ends the
program with ``error: <one line>`` on stderr and exit status 2, without a traceback; anything
else is a bug and keeps its traceback. For an absl program::

    def main(argv):
      ...
    if __name__ == "__main__":
      cli.run_main(main)            # = app.run(user_errors(main), flags_parser=parse_flags)

Nothing heavy (JAX, TFDS, transformers) is imported here before it is needed, so flag and
config mistakes are reported in well under a second.
"""
from __future__ import annotations

import functools
import os
import re
import sys
from typing import Any, Callable, NoReturn, Optional, Sequence

from absl import logging

from t5vae_jax import config_validation
from t5vae_jax import hub

EXIT_USER_ERROR = 2
HUB_TIMEOUT_S = hub.HUB_TIMEOUT_S  # T5VAE_HUB_TIMEOUT, seconds

# (module, class name) of the exceptions that mean "the user asked for something impossible";
# looked up in sys.modules so that catching them imports nothing.
_USER_ERROR_CLASSES = (
    ("t5vae_jax.config_validation", "ConfigError"),
    ("t5vae_jax.train_lib", "TrainingError"),
    ("t5vae_jax.pretrained", "CheckpointError"),
    ("t5vae_jax.datasets.builders", "DataError"),
    ("t5vae_jax.pretrain", "PretrainError"),
)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def one_line(message: Any) -> str:
  if isinstance(message, KeyError) and message.args:
    message = message.args[0]  # str(KeyError) adds quotes and escapes newlines
  text = " ".join(str(message).split())
  return text or type(message).__name__


def is_user_error(error: BaseException) -> bool:
  """Our documented error types, and any FileNotFoundError (its message names the path)."""
  if isinstance(error, FileNotFoundError):
    return True
  for module_name, class_name in _USER_ERROR_CLASSES:
    cls = getattr(sys.modules.get(module_name), class_name, None)
    if cls is not None and isinstance(error, cls):
      return True
  return False


def error_lines(error: BaseException) -> list[str]:
  if isinstance(error, config_validation.ConfigError):
    return [one_line(e) for e in error.errors]
  return [one_line(error)]


def fail(*lines: str) -> NoReturn:
  """Prints ``error: <line>`` for each line on stderr and exits with status 2."""
  sys.stdout.flush()
  for line in lines:
    print(f"error: {one_line(line)}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def user_errors(fn: Callable) -> Callable:
  """Decorator: our documented errors out of ``fn`` become ``error: ...`` lines, exit 2."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except Exception as e:
      if not is_user_error(e):
        raise
      fail(*error_lines(e))
  return wrapped


def run_main(main: Callable, argv: Optional[Sequence[str]] = None,
             flag_values=None) -> NoReturn:
  """``app.run(main)`` with flag mistakes and our errors reported as one line, exit 2."""
  quiet_known_noise()
  from absl import app
  from absl import flags
  flag_values = flags.FLAGS if flag_values is None else flag_values
  try:
    app.run(user_errors(main), argv=list(argv) if argv is not None else None,
            flags_parser=functools.partial(parse_flags, flag_values=flag_values))
  except SystemExit as e:  # absl exits 1 after printing --help; asking for help succeeded
    args = list(sys.argv if argv is None else argv)[1:]
    flags_given = args[:args.index("--")] if "--" in args else args
    if e.code == 1 and any(a in _HELP_FLAGS for a in flags_given):
      sys.exit(0)
    raise


_HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def show_in_help(flag_names: Sequence[str], doc: Optional[str], flag_values=None) -> None:
  """absl's --help prints the running script's docstring and the flags that script defined;
  a command whose flags are defined in the library (an entry point, a thin train.py) lists
  ``flag_names`` and prints ``doc`` where the script has no docstring."""
  from absl import flags
  flag_values = flags.FLAGS if flag_values is None else flag_values
  for name in flag_names:
    flag_values.register_key_flag_for_module(sys.argv[0], flag_values[name])
  main_module = sys.modules.get("__main__")
  if main_module is not None and not main_module.__doc__:
    main_module.__doc__ = doc


# --------------------------------------------------------------------------------------------
# Flags
# --------------------------------------------------------------------------------------------
def define_training_flags(flag_values=None, sys_argv: Optional[Sequence[str]] = None) -> None:
  """train.py's flags: --config (with --config.x=y overrides), --phase, --workdir."""
  from absl import flags
  from ml_collections import config_flags
  flag_values = flags.FLAGS if flag_values is None else flag_values
  config_flags.DEFINE_config_file("config", None, "Training config (a configs/*.py file).",
                                  flag_values=flag_values, lock_config=True,
                                  sys_argv=None if sys_argv is None else list(sys_argv))
  flags.DEFINE_integer("phase", None, "1: encoder warm-up, 2: full VAE training.",
                       flag_values=flag_values)
  flags.DEFINE_string("workdir", None, "Where checkpoints, logs and the tokenizer go.",
                      flag_values=flag_values)
  flags.mark_flags_as_required(["config", "phase", "workdir"], flag_values=flag_values)


def parse_flags(argv: Sequence[str], flag_values=None, config_flag: str = "config"):
  """An absl ``flags_parser``: any mistake in the flags (an unknown ``--config.key``, a value
  of the wrong type, a config file that is missing or fails) ends with one line, exit 2."""
  from absl import flags
  flag_values = flags.FLAGS if flag_values is None else flag_values
  argv = list(argv)
  try:
    remaining = flag_values(argv)
    if config_flag in flag_values and flag_values[config_flag].value is not None:
      flag_values[config_flag].value.keys()  # a config file that failed to load raises here
    return remaining
  except flags.Error as e:
    fail(explain_flag_error(e, flag_values))
  except Exception as e:
    if config_flag not in flag_values:
      raise
    fail(explain_config_flag_error(e, argv, config_flag))


def explain_flag_error(error, flag_values=None) -> str:
  """absl's message, plus what the config key allows when the flag is --config.<key>, or the
  closest flag name of an unknown one."""
  from absl import flags
  message = one_line(error)
  if (isinstance(error, flags.UnrecognizedFlagError) and flag_values is not None
      and "did you mean" not in message.lower()):
    names = [n for n in flag_values if "." not in n]
    message += config_validation.suggest(str(error.flagname), names)
  match = re.search(r"--config\.([\w.]+)", message)
  if match and config_validation.describe_key(match.group(1)):
    message += f"; {config_validation.describe_key(match.group(1))}"
  return message


def _flag_value(argv: Sequence[str], name: str) -> Optional[str]:
  for i, arg in enumerate(argv):
    for prefix in (f"--{name}=", f"-{name}="):
      if arg.startswith(prefix):
        return arg[len(prefix):]
    if arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _config_overrides(argv: Sequence[str], name: str) -> list[tuple[str, str]]:
  """(key, the argument as given) of each --<name>.key[=value]."""
  out = []
  for arg in argv:
    match = re.match(rf"^--?{re.escape(name)}\.([^=]+)(=.*)?$", arg)
    if match:
      out.append((match.group(1), arg))
  return out


def load_config_file(spec: str):
  """get_config() of a config file ``path[:arg]``, as ml_collections' config_flags runs it."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no such config file: {path}" if not os.path.isdir(path)
                            else f"{path} is a directory, not a config file")
  from t5vae_jax import config_files
  return config_files.load_module(path).get_config(*([arg] if arg else []))


def _where_in(error: BaseException, path: str) -> str:
  """' (<path>:<line>)' of the innermost frame of ``error`` in ``path``."""
  import traceback
  if isinstance(error, SyntaxError) and error.lineno:
    return f" ({error.filename}:{error.lineno})"
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if os.path.abspath(f.filename) == os.path.abspath(path)]
  return f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def explain_config_flag_error(error: BaseException, argv: Sequence[str],
                              name: str = "config") -> str:
  """One line for an exception out of ml_collections' config flag: which file or override."""
  spec = _flag_value(argv, name)
  if spec is None:
    return f"--{name}: {type(error).__name__}: {one_line(error)}"
  path = spec.partition(":")[0]
  try:
    config = load_config_file(spec)
  except FileNotFoundError as e:
    return f"--{name}={spec}: {one_line(e)}"
  except Exception as e:
    return (f"--{name}={spec}: the config file failed{_where_in(e, path)}: "
            f"{type(e).__name__}: {one_line(e)}")
  keys = config_validation.flatten(config) if config is not None else {}
  for key, arg in _config_overrides(argv, name):
    if not config_validation.has_key(config, key):
      return (f"{arg}: the config has no key '{key}'"
              f"{config_validation.suggest(key, keys)}")
  return f"--{name}={spec}: {type(error).__name__}: {one_line(error)}"


# --------------------------------------------------------------------------------------------
# Runtime
# --------------------------------------------------------------------------------------------
def check_hub(names: Sequence[str], timeout_s: float = HUB_TIMEOUT_S) -> bool:
  """Whether the Hugging Face hub answers, asked only when one of ``names`` is a hub id.

  huggingface_hub's calls wait without a timeout unless given one, so on a machine whose
  firewall drops packets ``snapshot_download`` waits forever (measured: over 5 minutes,
  silently); pretrained.resolve gives each of its requests T5VAE_HUB_TIMEOUT, and each loader
  call asks again. One HEAD request with a timeout first: when it gets no answer,
  huggingface_hub is put in offline mode (``hub.offline_reason`` says why), so a model in the
  local cache still loads and any other fails at once with pretrained.CheckpointError (pass a
  local directory). HF_HUB_OFFLINE=1 skips the check.
  """
  import urllib.error
  import urllib.request
  if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
    return False
  if not any(hub.is_hub_id(name) for name in names if name):
    return True
  endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
  try:
    urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout_s)
    return True
  except urllib.error.HTTPError:
    return True  # it answered
  except Exception as e:
    reason = getattr(e, "reason", e)
    # Not printed: a cached model then loads as usual, and a missing one fails with one line.
    logging.info("the Hugging Face hub (%s) does not answer (%s: %s); using the local cache "
                 "only (HF_HUB_OFFLINE=1)", endpoint, type(reason).__name__, one_line(reason))
    hub.offline_reason = (
        f"the hub ({endpoint}) did not answer within {timeout_s:g} s (T5VAE_HUB_TIMEOUT)"
        if isinstance(reason, TimeoutError) else
        f"the hub ({endpoint}) cannot be reached ({type(reason).__name__}: {one_line(reason)})")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
      constants.HF_HUB_OFFLINE = True
    return False


# (logger, where the message comes from, how its format string starts): third-party warnings
# that every run would print and that say nothing the user can act on; quiet_known_noise says
# why each is so.
KNOWN_HARMLESS_MESSAGES = (
    ("absl", "tensorflow_datasets/", "Using custom data configuration"),
    ("absl", "tensorflow_datasets/", "Variant folder %s has no %s"),
    ("absl", "orbax/checkpoint/", "Given directory is read only"),
    ("absl", "orbax/checkpoint/", "CheckpointManagerOptions.read_only=True"),
    ("transformers", "transformers/", "PyTorch was not found"),
)


class _KnownNoiseFilter:
  """A logging filter that drops the records of KNOWN_HARMLESS_MESSAGES and keeps all others."""

  def filter(self, record) -> bool:
    source = record.pathname.replace("\\", "/")
    message = str(record.msg)  # before the % arguments: "Variant folder %s has no %s"
    return not any(record.name == name and f"/{origin}" in source and message.startswith(start)
                   for name, origin, start in KNOWN_HARMLESS_MESSAGES)


_KNOWN_NOISE_FILTER = _KnownNoiseFilter()


def quiet_known_noise() -> None:
  """Drops the known-harmless third-party warnings from the console; every other warning (of
  these libraries, of ours, Python's ``warnings``) still prints. Called first by every command
  (run_main, setup_runtime, pretrain.run); calling it again does nothing.

  Silenced, each by its logger, the file it comes from and how the message starts:

  * TFDS's ``Using custom data configuration: ...`` (several per run): our builders
    (t5vae_jax/datasets) make a BuilderConfig per data setting by design, so that a changed
    setting prepares its own copy; TFDS warns whenever a config is not one of a builder's
    predefined ones. And ``Variant folder <dir> has no dataset_info.json``, on the first run of
    a data setting: TFDS looks for a prepared copy before it prepares one (its own "Downloading
    and preparing" line and bars follow, and stay: a real one-time wait).
  * orbax's ``Given directory is read only=...`` and ``CheckpointManagerOptions.read_only=True,
    setting save_interval_steps=0``: phase 2, eval.py and the latent tools open the phase 1 /
    evaluated checkpoints read-only on purpose, to restore them. orbax's warnings that a save or
    a delete was *skipped* because a directory is read-only are kept.
  * transformers' ``PyTorch was not found. Models won't be available ...`` (once per process,
    at import): we use only its tokenizers and config/file utilities, which need no PyTorch.

  The setuptools ``Editable installation`` banner is a warning of pip's build subprocess, so
  scripts/_venv.sh quiets it on its ``pip install -e`` lines (PYTHONWARNINGS).
  """
  import logging as std_logging
  for name in {name for name, _, _ in KNOWN_HARMLESS_MESSAGES}:
    logger = std_logging.getLogger(name)  # logged on these loggers themselves, not children
    if _KNOWN_NOISE_FILTER not in logger.filters:
      logger.addFilter(_KNOWN_NOISE_FILTER)


def setup_runtime() -> None:
  """Joins a multi-process job when launched as one; quieter logs from other processes.

  TPU pod slices (and SLURM / Open MPI GPU clusters) are detected by
  ``jax.distributed.initialize()`` itself: set ``T5VAE_DISTRIBUTED=1``. Elsewhere (several GPU
  nodes, or processes on one machine) name the job explicitly with
  ``T5VAE_COORDINATOR_ADDRESS=host:port``, ``T5VAE_NUM_PROCESSES`` and ``T5VAE_PROCESS_ID``.
  """
  quiet_known_noise()
  import jax
  env = os.environ
  explicit = "T5VAE_COORDINATOR_ADDRESS" in env
  if explicit or env.get("T5VAE_DISTRIBUTED") == "1":
    if jax.config.jax_platforms in (None, "", "cpu") and explicit:
      # CPU-only processes (tests, debugging) need a collectives backend across processes.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if explicit:
      kwargs = dict(coordinator_address=env["T5VAE_COORDINATOR_ADDRESS"],
                    num_processes=int(env["T5VAE_NUM_PROCESSES"]),
                    process_id=int(env["T5VAE_PROCESS_ID"]))
    jax.distributed.initialize(**kwargs)
  # orbax and jax log every save at INFO; keep the console to our progress bar and summaries
  # (pass --verbosity=0 to see them).
  if logging.get_verbosity() == logging.INFO and "--verbosity" not in " ".join(sys.argv):
    logging.set_verbosity(logging.WARNING)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.ERROR)


def check_training_run(config, workdir: str, phase: int) -> None:
  """Everything about a run that can be checked before JAX starts: the config (every key,
  its type and allowed values, the paths it names) and phase 2's phase 1 checkpoint."""
  config_validation.validate(config, phase)
  config_validation.check_workdir(config, workdir, phase)


def run_training(config, workdir: str, phase: int):
  check_training_run(config, workdir, phase)
  setup_runtime()
  check_hub([config.model.pretrained, config.data.tokenizer])
  import jax
  config_validation.check_devices(config, jax.device_count(), jax.process_count())
  from t5vae_jax import train_lib
  return train_lib.train_and_evaluate(config, workdir, phase)
