"""The training command: ``python train.py`` in a checkout, ``t5vae-train`` when installed.

  t5vae-train --config configs/ptb.py --phase 1 --workdir runs/ptb
  t5vae-train --config configs/ptb.py --phase 2 --workdir runs/ptb   # from phase 1
  t5vae-train --config configs/ptb.py --phase 1 --config.batch_size=64

``--config`` is a config file's path (the checkout's ``configs/*.py`` or one of your own). A
mistake in the flags, the config, the paths or the data ends with one ``error: ...`` line on
stderr and exit status 2 (t5vae_jax/errors.py).
"""

from absl import flags

from t5vae_jax import cli
from t5vae_jax import config_validation
from t5vae_jax import errors
from t5vae_jax import runtime

FLAGS = flags.FLAGS
cli.define_training_flags(FLAGS)


def main(argv):
  if len(argv) > 1:
    errors.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
  run_training(FLAGS.config, FLAGS.workdir, FLAGS.phase)


def run() -> None:
  cli.show_in_help(["config", "phase", "workdir"], __doc__)
  cli.run_main(main)


def check_training_run(config, workdir: str, phase: int) -> None:
  """Everything about a run that can be checked before JAX starts: the config (every key,
  its type and allowed values, the paths it names) and phase 2's phase 1 checkpoint."""
  config_validation.validate(config, phase)
  config_validation.check_workdir(config, workdir, phase)


def run_training(config, workdir: str, phase: int):
  """train.py's body after its flags: check, start the runtime, train the phase."""
  check_training_run(config, workdir, phase)
  runtime.setup_runtime()
  runtime.check_hub([config.model.pretrained, config.data.tokenizer])
  import jax

  config_validation.check_devices(config, jax.device_count(), jax.process_count())
  from t5vae_jax import train_lib

  return train_lib.train_and_evaluate(config, workdir, phase)
