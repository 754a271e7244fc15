"""TFDS builders for the text-VAE benchmarks: one example per line of train/valid/test.txt.

On a connected machine a builder downloads the public copy of the files; offline it reads them from
`raw_dir` (config.data.dir). Datasets are written as array_record, so `as_data_source` reads them
back with random access and without TensorFlow. The builders live in this module file because TFDS
cannot prepare a builder class defined in `__main__`.

A split whose file is missing from `raw_dir` is left out of the build (the others are built) and
recorded in the metadata, so asking for it later names the missing file.
"""

import json
import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from t5vae_jax import synthetic

_SPLIT_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}


class TextLinesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base: {"text", "label"} per non-empty line of train.txt / valid.txt / test.txt.

  Registration is skipped because TFDS's own catalogue already has an unrelated `snli`; use
  `t5vae_jax.datasets.get_builder(name)` rather than `tfds.builder(name)`.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  # Split -> URL of a public copy of its file; empty when a subclass overrides `_download`.
  URLS: dict[str, str] = {}
  HOMEPAGE = ""
  DESCRIPTION = ""
  # Whether lines are `label<TAB>text`; the label is -1 on lines without a tab.
  HAS_LABELS = False

  def __init__(self, *, raw_dir: epath.PathLike | None = None, **kwargs):
    """`raw_dir`: local directory with the split files; None downloads them instead."""
    if raw_dir and "://" not in os.fspath(raw_dir):
      raw_dir = os.path.abspath(raw_dir)  # error messages then say where the files were looked for
    self._raw_dir = epath.Path(raw_dir) if raw_dir else None
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=self._features(),
        homepage=self.HOMEPAGE,
        metadata=tfds.core.MetadataDict(),
        # Keep file order: example i of a split is its i-th non-empty line.
        disable_shuffling=True,
    )

  def _features(self) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({"text": tfds.features.Text(), "label": np.int32})

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    if self._raw_dir is not None:
      files = {split: self._raw_dir / name for split, name in _SPLIT_FILES.items()}
    else:
      files = self._download(dl_manager)
    missing = {split: os.fspath(path) for split, path in files.items() if not path.exists()}
    if len(missing) == len(files):
      raise FileNotFoundError(f"{self.name}: none of the split files exist: {sorted(missing.values())}")
    self.info.metadata["missing_files"] = missing
    self.info.metadata["num_skipped_empty"] = {}
    return {
        split: self._generate_examples(split, path)
        for split, path in files.items()
        if split not in missing
    }

  def _download(self, dl_manager: tfds.download.DownloadManager) -> dict[str, epath.Path]:
    return {split: epath.Path(path) for split, path in dl_manager.download(self.URLS).items()}

  def _generate_examples(self, split: str, path: epath.Path):
    """Yields (line number, example); counts the skipped empty lines into the metadata."""
    num_skipped_empty, line_number = 0, -1
    with path.open() as f:
      for line_number, line in enumerate(f):
        example = self._parse_line(line, path, line_number)
        if example is None:
          num_skipped_empty += 1
          continue
        yield line_number, example
    if num_skipped_empty == line_number + 1:  # TFDS would only say that no example was yielded
      raise ValueError(f"{path} has no non-empty line.")
    self.info.metadata["num_skipped_empty"][split] = num_skipped_empty

  def _parse_line(self, line: str, path: epath.Path, line_number: int) -> dict | None:
    """The bad-data hook: one line -> example, or None to skip it (counted as empty).

    Strips the spaces PTB puts around each line.
    """
    label = -1
    if self.HAS_LABELS and "\t" in line:
      label_text, line = line.split("\t", 1)
      try:
        label = int(label_text)
      except ValueError:
        raise ValueError(
            f"{path}:{line_number + 1}: expected an integer label before the tab, got {label_text!r}"
        ) from None
    text = line.strip()
    if not text:
      return None
    return {"text": text, "label": label}

  def as_data_source(self, split=None, **kwargs):
    """As TFDS's, but a split whose file was missing at build time names that file."""
    missing = dict((self.info.metadata or {}).get("missing_files", {}))
    base_split = split.split("[")[0] if isinstance(split, str) else None
    if base_split in missing:
      raise FileNotFoundError(
          f"{self.name}: split {split!r} was not built because {missing[base_split]} does not exist. "
          f"Put the file there and build again (get_builder rebuilds when it appears)."
      )
    return super().as_data_source(split, **kwargs)


class Ptb(TextLinesBuilder, skip_registration=True):
  """Penn Treebank as preprocessed by Mikolov et al. (2010): 42k/3.4k/3.8k sentences."""

  name = "ptb"
  HOMEPAGE = "https://www.fit.vutbr.cz/~imikolov/rnnlm/"
  DESCRIPTION = "Mikolov's Penn Treebank: lowercase, digits as N, 10k vocabulary with <unk>."
  _ARCHIVE_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
  _ARCHIVE_MEMBERS = {
      "train": "simple-examples/data/ptb.train.txt",
      "validation": "simple-examples/data/ptb.valid.txt",
      "test": "simple-examples/data/ptb.test.txt",
  }

  def _download(self, dl_manager):
    archive_dir = epath.Path(dl_manager.download_and_extract(self._ARCHIVE_URL))
    return {split: archive_dir / member for split, member in self._ARCHIVE_MEMBERS.items()}


class Snli(TextLinesBuilder, skip_registration=True):
  """SNLI sentences as used by Li et al. (2019) / Optimus: 100k/10k/10k."""

  name = "snli"
  HOMEPAGE = "https://nlp.stanford.edu/projects/snli/"
  DESCRIPTION = "SNLI premises/hypotheses, lowercase and tokenized, one sentence per line."
  _BASE = "https://raw.githubusercontent.com/Egojr/optagan/8091498e0199a3953015ae039693bd6450da3abd/data/snli_data/"
  URLS = {"train": _BASE + "train.txt", "validation": _BASE + "valid.txt", "test": _BASE + "test.txt"}


class Yahoo(TextLinesBuilder, skip_registration=True):
  """Yahoo Answers 100k/10k/10k (Yang et al. 2017), as redistributed by Kim et al. (2018)."""

  name = "yahoo"
  HOMEPAGE = "https://github.com/harvardnlp/sa-vae"
  DESCRIPTION = "Yahoo Answers documents (question + answer), lowercase and tokenized, _UNK for OOV."
  _BASE = "https://raw.githubusercontent.com/harvardnlp/DeepLatentNLP/7fa2d61beea8a3e9497d5931e2d3fe73dec7cfb6/data/yahoo/"
  URLS = {"train": _BASE + "train.txt", "validation": _BASE + "val.txt", "test": _BASE + "test.txt"}


class Yelp(TextLinesBuilder, skip_registration=True):
  """Yelp15 100k/10k/10k reviews (Yang et al. 2017); lines are `label<TAB>text`."""

  name = "yelp"
  HOMEPAGE = "https://github.com/fangleai/Implicit-LVM"
  DESCRIPTION = "Yelp reviews with their star rating as label, lowercase and tokenized."
  HAS_LABELS = True
  _BASE = "https://raw.githubusercontent.com/fangleai/Implicit-LVM/ad5d138ba9f01bf4fca1ff6e85aaa042b6c785a0/lang_model_yelp/data/"
  URLS = {
      "train": _BASE + "yelp.train.txt",
      "validation": _BASE + "yelp.valid.txt",
      "test": _BASE + "yelp.test.txt",
  }


class SyntheticConfig(tfds.core.BuilderConfig):
  """How much synthetic data to generate, and from which seed; the name says both."""

  def __init__(self, *, num_train: int = 10_000, num_valid: int = 1_000, num_test: int = 1_000, seed: int = 0):
    super().__init__(
        name=f"n{num_train}_{num_valid}_{num_test}_seed{seed}",
        version=TextLinesBuilder.VERSION,
        description="Sentences of t5vae_jax.synthetic's grammar.",
    )
    self.num_train, self.num_valid, self.num_test, self.seed = num_train, num_valid, num_test, seed


class Synthetic(TextLinesBuilder, skip_registration=True):
  """`t5vae_jax.synthetic` sentences with their attributes, through the same files as PTB.

  With `raw_dir`, reads files written by `synthetic.write_splits`; without, writes them under the
  download directory from the config (the config decides, so two configs never share files).
  """

  name = "synthetic"
  BUILDER_CONFIGS = [SyntheticConfig()]
  DESCRIPTION = __doc__

  def _features(self):
    attributes = {name: np.int32 for name in synthetic.ATTRIBUTES}
    return tfds.features.FeaturesDict(
        {"text": tfds.features.Text(), "label": np.int32, "attributes": attributes}
    )

  def _download(self, dl_manager):
    config = self.builder_config
    directory = epath.Path(dl_manager.download_dir) / "synthetic" / config.name
    return synthetic.write_splits(directory, config.num_train, config.num_valid, config.num_test, config.seed)

  def _generate_examples(self, split, path):
    attributes_path = path.parent / synthetic.attributes_file_name(path.name)
    with attributes_path.open() as f:
      attributes = [json.loads(line) for line in f]
    for line_number, example in super()._generate_examples(split, path):
      yield line_number, {**example, "attributes": attributes[line_number]}

