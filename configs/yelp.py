"""Yelp15 of Yang, Hu, Salakhutdinov & Berg-Kirkpatrick 2017 ("Improved variational autoencoders
for text modeling using dilated convolutions": 100k/10k/10k reviews; lines may be
``label<TAB>text``), the paper's recipe on t5-small."""

from t5vae_jax import config_files

default = config_files.sibling(__file__, "default")


def get_config():
  config = default.get_config()
  config.data.name = "yelp"
  config.data.max_len = 256
  config.data.bucket_lengths = (32, 64, 128, 192, 256)
  return config
