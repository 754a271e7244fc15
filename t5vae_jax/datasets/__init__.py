"""TFDS builders of the text-VAE benchmarks (builders.py) and a way to get one prepared."""

from etils import epath
import tensorflow_datasets as tfds

from t5vae_jax.datasets.builders import Ptb
from t5vae_jax.datasets.builders import Snli
from t5vae_jax.datasets.builders import Synthetic
from t5vae_jax.datasets.builders import SyntheticConfig
from t5vae_jax.datasets.builders import TextLinesBuilder
from t5vae_jax.datasets.builders import Yahoo
from t5vae_jax.datasets.builders import Yelp

BUILDERS = {builder.name: builder for builder in (Ptb, Snli, Yahoo, Yelp, Synthetic)}


def get_builder(
    name: str,
    *,
    data_dir: epath.PathLike | None = None,
    raw_dir: epath.PathLike | None = None,
    config: tfds.core.BuilderConfig | None = None,
) -> TextLinesBuilder:
  """The builder of dataset `name`, prepared as array_record under `data_dir`.

  `data_dir` None is TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets). `raw_dir` None
  downloads the files. A dataset prepared while a split file was missing is prepared again once
  that file exists, so adding train.txt later is enough.
  """
  if name not in BUILDERS:
    raise ValueError(f"Unknown dataset {name!r}; known: {sorted(BUILDERS)}")

  def make_builder():
    return BUILDERS[name](data_dir=data_dir, raw_dir=raw_dir, config=config, file_format="array_record")

  builder = make_builder()
  download_config = None
  if builder.is_prepared():
    missing = (builder.info.metadata or {}).get("missing_files", {})
    if any(epath.Path(path).exists() for path in missing.values()):
      download_config = tfds.download.DownloadConfig(
          download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
      )
  builder.download_and_prepare(download_config=download_config)
  return make_builder() if download_config else builder


__all__ = [
    "BUILDERS",
    "Ptb",
    "Snli",
    "Synthetic",
    "SyntheticConfig",
    "TextLinesBuilder",
    "Yahoo",
    "Yelp",
    "get_builder",
]
