"""PTB (Mikolov's preprocessed Penn Treebank), the paper's appendix recipe on t5-small."""

from t5vae_jax import config_files

default = config_files.sibling(__file__, "default")


def get_config():
  config = default.get_config()
  config.data.name = "ptb"
  config.data.max_len = 64
  return config
