"""Trains one phase of the T5-VAE.

  python train.py --config configs/ptb.py --phase 1 --workdir runs/ptb
  python train.py --config configs/ptb.py --phase 2 --workdir runs/ptb   # from phase 1
  python train.py --config configs/ptb.py --phase 1 --config.batch_size=64

A mistake in the flags, the config, the paths or the data ends with one ``error: ...`` line on
stderr and exit status 2 (see t5vae_jax/cli.py).
"""

from t5vae_jax import train_command

main = train_command.main  # the command lives in the library (the t5vae-train entry point)

if __name__ == "__main__":
  train_command.run()
