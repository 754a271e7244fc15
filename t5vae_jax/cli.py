"""The commands' flags: absl flags and ml_collections config files, every mistake in one line.

A mistake in the flags (an unknown flag or ``--config.key``, a value of the wrong type, a config
file that is missing or fails) ends the program with ``error: <one line>`` on stderr and exit
status 2, naming the flag, the key (and what it allows) or the file and line; so do the
commands' user errors (``errors.UserError``). For an absl program::

    def main(argv):
      ...
    if __name__ == "__main__":
      cli.run_main(main)        # = app.run(errors.user_errors(main), flags_parser=parse_flags)

Nothing heavy (JAX, TFDS, transformers) is imported here, so flag and config mistakes are
reported in well under a second.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import Callable, NoReturn, Optional, Sequence

from t5vae_jax import config_validation
from t5vae_jax import errors
from t5vae_jax import runtime


def run_main(main: Callable, argv: Optional[Sequence[str]] = None, flag_values=None) -> NoReturn:
  """``app.run(main)`` with flag mistakes and our errors reported as one line, exit 2."""
  runtime.quiet_known_noise()
  from absl import app
  from absl import flags

  flag_values = flags.FLAGS if flag_values is None else flag_values
  try:
    app.run(
        errors.user_errors(main),
        argv=list(argv) if argv is not None else None,
        flags_parser=functools.partial(parse_flags, flag_values=flag_values),
    )
  except SystemExit as e:  # absl exits 1 after printing --help; asking for help succeeded
    args = list(sys.argv if argv is None else argv)[1:]
    flags_given = args[: args.index("--")] if "--" in args else args
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
def define_config_flag(flag_values=None, sys_argv: Optional[Sequence[str]] = None) -> None:
  """--config: a training config file (``configs/*.py``), with --config.x=y overrides."""
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
      "config",
      None,
      "Training config (a configs/*.py file).",
      flag_values=flags.FLAGS if flag_values is None else flag_values,
      lock_config=True,
      sys_argv=None if sys_argv is None else list(sys_argv),
  )


def define_training_flags(flag_values=None, sys_argv: Optional[Sequence[str]] = None) -> None:
  """train.py's flags: --config (with --config.x=y overrides), --phase, --workdir."""
  from absl import flags

  flag_values = flags.FLAGS if flag_values is None else flag_values
  define_config_flag(flag_values, sys_argv)
  flags.DEFINE_integer(
      "phase", None, "1: encoder warm-up, 2: full VAE training.", flag_values=flag_values
  )
  flags.DEFINE_string(
      "workdir", None, "Where checkpoints, logs and the tokenizer go.", flag_values=flag_values
  )
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
    errors.fail(explain_flag_error(e, flag_values))
  except Exception as e:
    if config_flag not in flag_values:
      raise
    errors.fail(explain_config_flag_error(e, argv, config_flag))


def explain_flag_error(error, flag_values=None) -> str:
  """absl's message, plus what the config key allows when the flag is --config.<key>, or the
  closest flag name of an unknown one."""
  from absl import flags

  message = errors.one_line(error)
  if (
      isinstance(error, flags.UnrecognizedFlagError)
      and flag_values is not None
      and "did you mean" not in message.lower()
  ):
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
        return arg[len(prefix) :]
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
    raise FileNotFoundError(
        f"no such config file: {path}"
        if not os.path.isdir(path)
        else f"{path} is a directory, not a config file"
    )
  from t5vae_jax import config_files

  return config_files.load_module(path).get_config(*([arg] if arg else []))


def _where_in(error: BaseException, path: str) -> str:
  """' (<path>:<line>)' of the innermost frame of ``error`` in ``path``."""
  import traceback

  if isinstance(error, SyntaxError) and error.lineno:
    return f" ({error.filename}:{error.lineno})"
  frames = [
      f
      for f in traceback.extract_tb(error.__traceback__)
      if os.path.abspath(f.filename) == os.path.abspath(path)
  ]
  return f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def explain_config_flag_error(
    error: BaseException, argv: Sequence[str], name: str = "config"
) -> str:
  """One line for an exception out of ml_collections' config flag: which file or override."""
  spec = _flag_value(argv, name)
  if spec is None:
    return f"--{name}: {type(error).__name__}: {errors.one_line(error)}"
  path = spec.partition(":")[0]
  try:
    config = load_config_file(spec)
  except FileNotFoundError as e:
    return f"--{name}={spec}: {errors.one_line(e)}"
  except Exception as e:
    return (
        f"--{name}={spec}: the config file failed{_where_in(e, path)}: "
        f"{type(e).__name__}: {errors.one_line(e)}"
    )
  keys = config_validation.flatten(config) if config is not None else {}
  for key, arg in _config_overrides(argv, name):
    if not config_validation.has_key(config, key):
      return f"{arg}: the config has no key '{key}'" f"{config_validation.suggest(key, keys)}"
  return f"--{name}={spec}: {type(error).__name__}: {errors.one_line(error)}"
