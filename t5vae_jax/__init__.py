"""t5vae-jax: turn a pretrained T5 into a text VAE by finetuning (Park & Lee 2021).

    from t5vae_jax import T5VAE
    vae = T5VAE.load("runs/ptb/phase2")

``T5VAE`` is imported on first use, so ``import t5vae_jax`` stays light (no JAX import).
"""

__all__ = ["T5VAE"]


def __getattr__(name):
  if name == "T5VAE":
    from t5vae_jax.api import T5VAE

    return T5VAE
  raise AttributeError(f"module 't5vae_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)
