"""PTB (Mikolov's preprocessed Penn Treebank), the paper's appendix recipe on t5-small."""
from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "ptb"
  config.data.max_len = 64
  return config
