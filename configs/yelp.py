"""Yelp (Shen et al. 2017; lines may be ``label<TAB>text``), the paper's recipe on t5-small."""
from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "yelp"
  config.data.max_len = 256
  config.data.bucket_lengths = (32, 64, 128, 192, 256)
  return config
