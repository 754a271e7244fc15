"""The training command: ``python train.py`` in a checkout, ``t5vae-train`` when installed.

  t5vae-train --config configs/ptb.py --phase 1 --workdir runs/ptb
  t5vae-train --config configs/ptb.py --phase 2 --workdir runs/ptb   # from phase 1
  t5vae-train --config configs/ptb.py --phase 1 --config.batch_size=64

``--config`` is a config file's path (the checkout's ``configs/*.py`` or one of your own). A
mistake in the flags, the config, the paths or the data ends with one ``error: ...`` line on
stderr and exit status 2 (see t5vae_jax/cli.py).
"""
from absl import flags

from t5vae_jax import cli

FLAGS = flags.FLAGS
cli.define_training_flags(FLAGS)


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
  cli.run_training(FLAGS.config, FLAGS.workdir, FLAGS.phase)


def run() -> None:
  cli.show_in_help(["config", "phase", "workdir"], __doc__)
  cli.run_main(main)
