"""Trains one phase of the T5-VAE.

  python train.py --config configs/ptb.py --phase 1 --workdir runs/ptb
  python train.py --config configs/ptb.py --phase 2 --workdir runs/ptb   # from phase 1
  python train.py --config configs/ptb.py --phase 1 --config.batch_size=64
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from t5vae_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config (a configs/*.py file).",
                                lock_config=True)
flags.DEFINE_integer("phase", None, "1: encoder warm-up, 2: full VAE training.")
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and the tokenizer go.")
flags.mark_flags_as_required(["config", "phase", "workdir"])


def main(argv):
  del argv
  cli.run_training(FLAGS.config, FLAGS.workdir, FLAGS.phase)


if __name__ == "__main__":
  app.run(main)
