"""Yahoo Answers (Yang et al. 2017 split), the paper's appendix recipe on t5-small."""

from t5vae_jax import config_files

default = config_files.sibling(__file__, "default")


def get_config():
  config = default.get_config()
  config.data.name = "yahoo"
  config.data.max_len = 256
  config.data.bucket_lengths = (32, 64, 128, 192, 256)
  return config
