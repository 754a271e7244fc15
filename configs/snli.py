"""SNLI sentences (the text-VAE benchmark version), the paper's appendix recipe on t5-small."""

from t5vae_jax import config_files

default = config_files.sibling(__file__, "default")


def get_config():
  config = default.get_config()
  config.data.name = "snli"
  config.data.max_len = 48
  config.data.bucket_lengths = (16, 32, 48)
  return config
