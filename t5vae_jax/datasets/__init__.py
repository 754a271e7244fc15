"""TFDS builders of the text-VAE benchmarks (builders.py) and a way to get one prepared."""

import os

from etils import epath
import tensorflow_datasets as tfds

from t5vae_jax import hub
from t5vae_jax.errors import first_line
from t5vae_jax.datasets.builders import BAD_LINE_POLICIES
from t5vae_jax.datasets.builders import DEFAULT_MAX_LINE_CHARS
from t5vae_jax.datasets.builders import SKIP_REASONS
from t5vae_jax.datasets.builders import DataError
from t5vae_jax.datasets.builders import Ptb
from t5vae_jax.datasets.builders import Snli
from t5vae_jax.datasets.builders import Synthetic
from t5vae_jax.datasets.builders import SyntheticConfig
from t5vae_jax.datasets.builders import TextLinesBuilder
from t5vae_jax.datasets.builders import TextLinesConfig
from t5vae_jax.datasets.builders import _file_stamp
from t5vae_jax.datasets.builders import Yahoo
from t5vae_jax.datasets.builders import Yelp
from t5vae_jax.datasets.builders import check_reachable
from t5vae_jax.datasets.builders import download_hosts
from t5vae_jax.datasets.builders import download_urls
from t5vae_jax.datasets.builders import url_host
from t5vae_jax.datasets.builders import parse_line
from t5vae_jax.datasets.download import BASE_URL_VARIABLE

BUILDERS = {builder.name: builder for builder in (Ptb, Snli, Yahoo, Yelp, Synthetic)}
_PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
)


def get_builder(
    name: str,
    *,
    data_dir: epath.PathLike | None = None,
    raw_dir: epath.PathLike | None = None,
    config: tfds.core.BuilderConfig | None = None,
) -> TextLinesBuilder:
  """The builder of dataset `name`, prepared as array_record under `data_dir`.

  `data_dir` None is TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets). `raw_dir` None
  downloads the files. `config` (a TextLinesConfig, or a SyntheticConfig for "synthetic") sets
  the bad-line policy; None is the builder's default (skip, 20000 characters).

  A prepared dataset is prepared again when its source files changed since (a split file that
  was missing appeared, or one in `raw_dir` has another size or modification time), so adding
  or fixing train.txt is enough. Raises FileNotFoundError naming `raw_dir` when it does not
  exist, and DataError when the files would be downloaded but their host cannot be reached, or a
  download breaks off or is not the recorded file (then nothing is prepared; see download.py).
  """
  if name not in BUILDERS:
    raise ValueError(f"Unknown dataset {name!r}; known: {sorted(BUILDERS)}")

  if config is not None and any(c.name == config.name for c in BUILDERS[name].BUILDER_CONFIGS):
    config = config.name  # TFDS refuses an equal copy of a class-level config; the name says all

  def make_builder():
    return BUILDERS[name](
        data_dir=data_dir, raw_dir=raw_dir, config=config, file_format="array_record"
    )

  builder = make_builder()
  download_config = None
  if builder.is_prepared():
    if _sources_changed(builder):
      download_config = tfds.download.DownloadConfig(
          download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
      )
    else:
      return builder
  if raw_dir and not epath.Path(raw_dir).is_dir():
    raise FileNotFoundError(
        f"{name}: the data directory {hub.absolute(raw_dir)} does not exist (config.data.dir); it "
        "should hold train.txt, valid.txt and test.txt"
    )
  if not raw_dir and name != "synthetic":
    _check_download_possible(name)
  try:
    builder.download_and_prepare(download_config=download_config)
  except (DataError, FileNotFoundError):
    raise
  except OSError as e:  # requests' ConnectionError and the like, after TFDS's retries
    if raw_dir or name == "synthetic":
      raise
    raise DataError(
        f"{name}: downloading the dataset failed ({type(e).__name__}: {first_line(e)}); "
        "offline, put train.txt, valid.txt and test.txt in a directory and pass "
        "--config.data.dir=DIR"
    ) from None
  return make_builder() if download_config else builder


def _sources_changed(builder: TextLinesBuilder) -> bool:
  """Whether a missing split file appeared or a source file in raw_dir changed."""
  metadata = builder.info.metadata or {}
  if any(epath.Path(path).exists() for path in metadata.get("missing_files", {}).values()):
    return True
  if builder._raw_dir is None:  # downloaded files do not change under a fixed URL
    return False
  for stamp in metadata.get("source_files", {}).values():
    path = epath.Path(stamp["path"])
    if not path.exists():
      continue  # the raw files were removed; the prepared copy is all there is
    current = _file_stamp(path)
    if any(stamp.get(key) != current.get(key) for key in ("size", "mtime") if key in stamp):
      return True
  return False


def _check_download_possible(name: str) -> None:
  """Fails fast (instead of a download's retries) when the download host is unreachable."""
  if any(os.environ.get(variable) for variable in _PROXY_VARIABLES):
    return  # the proxy decides; connecting to the host directly proves nothing
  urls = download_urls(BUILDERS[name])
  for host in download_hosts(BUILDERS[name]):
    url = next((url for url in urls if url_host(url) == host), None)
    try:
      check_reachable(host)
    except OSError as e:
      raise DataError(
          f"{name}: config.data.dir is empty, so the files would be downloaded from {host}"
          f"{f' ({url})' if url else ''}, which cannot be reached ({type(e).__name__}: "
          f"{first_line(e)}); offline, put train.txt, valid.txt and test.txt in a directory "
          "and pass --config.data.dir=DIR"
      ) from None


__all__ = [
    "BASE_URL_VARIABLE",
    "BAD_LINE_POLICIES",
    "BUILDERS",
    "DEFAULT_MAX_LINE_CHARS",
    "DataError",
    "Ptb",
    "SKIP_REASONS",
    "Snli",
    "Synthetic",
    "SyntheticConfig",
    "TextLinesBuilder",
    "TextLinesConfig",
    "Yahoo",
    "Yelp",
    "get_builder",
    "parse_line",
]
