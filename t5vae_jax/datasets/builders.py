"""TFDS builders for the text-VAE benchmarks: one example per line of train/valid/test.txt.

On a connected machine a builder downloads the public copy of the files, each from a commit-pinned
URL and verified against its recorded hashes (download.py, checksums.py); offline it reads them
from `raw_dir` (config.data.dir). Datasets are written as array_record, so `as_data_source` reads them
back with random access and without TensorFlow. The builders live in this module file because TFDS
cannot prepare a builder class defined in `__main__`.

A split whose file is missing from `raw_dir` is left out of the build (the others are built) and
recorded in the metadata, so asking for it later names the missing file.

Bad lines. A line is unusable when it is empty, is not UTF-8, has a label column where the dataset
has none (a TAB in a PTB/SNLI/Yahoo line), or is longer than `max_line_chars` characters. The
builder config's `on_bad_line` decides: "skip" leaves it out and counts it by reason (metadata
"num_skipped": {split: {reason: n}}, the first few logged with file and line), "fail" raises
DataError naming the file and line. Policy and limit are part of the builder config's name, so a
dataset prepared under one policy is never read back under the other. (A Yelp label that is not
an integer always fails: it means the file is not what the builder expects.)
"""

import collections
import json
import os
import socket
import urllib.parse

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from t5vae_jax import synthetic
from t5vae_jax.datasets import checksums
from t5vae_jax.datasets import download
from t5vae_jax.datasets.errors import DataError
from t5vae_jax.choices import BAD_LINE_POLICIES

_SPLIT_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}

# Why a line was skipped, in the order they are checked.
SKIP_REASONS = ("too_long", "non_utf8", "empty", "unexpected_label")
_REASON_TEXT = {
    "too_long": "is longer than max_line_chars={limit} characters",
    "non_utf8": "is not valid UTF-8",
    "empty": "is empty",
    "unexpected_label": "has a TAB (a label column?) but {name} lines are plain text",
}
DEFAULT_MAX_LINE_CHARS = 20_000
_LOGGED_PER_REASON = 3
_VERSION = tfds.core.Version("1.1.0")


def parse_line(
    raw: bytes, *, has_labels: bool, max_line_chars: int, first_line: bool = False
) -> dict | str:
  """One line of a split file (bytes, newline included or not) -> {"text", "label"}, or the
  reason (one of SKIP_REASONS) it cannot be used.

  Strips the spaces PTB puts around each line (and a UTF-8 byte-order mark on the first line).
  With `has_labels`, `label<TAB>text` gives an integer label (-1 without a TAB); a label that is
  not an integer raises ValueError.
  """
  if len(raw) > 4 * max_line_chars + 2:  # more bytes than max_line_chars characters can take
    return "too_long"
  try:
    line = raw.decode("utf-8-sig" if first_line else "utf-8")
  except UnicodeDecodeError:
    return "non_utf8"
  if not line.strip():
    return "empty"
  label = -1
  if has_labels and "\t" in line:
    label_text, line = line.split("\t", 1)
    try:
      label = int(label_text)
    except ValueError:
      raise ValueError(f"expected an integer label before the tab, got {label_text!r}") from None
  text = line.strip()
  if not text:
    return "empty"
  if not has_labels and "\t" in text:
    return "unexpected_label"
  if len(text) > max_line_chars:
    return "too_long"
  return {"text": text, "label": label}


def iter_raw_lines(f, max_bytes: int):
  """Lines of a binary file, as bytes without the newline; a line of more than `max_bytes`
  bytes comes back cut to max_bytes + 1 bytes (enough to know it is too long) without ever
  holding the whole of it in memory."""
  while True:
    chunk = f.readline(max_bytes + 1)
    if not chunk:
      return
    if len(chunk) > max_bytes and not chunk.endswith(b"\n"):
      while True:  # skip the rest of the over-long line
        rest = f.readline(1 << 20)
        if not rest or rest.endswith(b"\n"):
          break
    yield chunk.rstrip(b"\n").rstrip(b"\r")


class TextLinesConfig(tfds.core.BuilderConfig):
  """What to do with bad lines; the name says it, so each policy has its own prepared copy."""

  def __init__(
      self,
      *,
      on_bad_line: str = "skip",
      max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
      name: str | None = None,
      description: str | None = None,
  ):
    if on_bad_line not in BAD_LINE_POLICIES:
      raise ValueError(f"on_bad_line={on_bad_line!r} is not one of {BAD_LINE_POLICIES}")
    if not isinstance(max_line_chars, int) or max_line_chars < 1:
      raise ValueError(f"max_line_chars={max_line_chars!r} must be a positive integer")
    policy = f"{on_bad_line}_max{max_line_chars}"
    super().__init__(
        name=f"{name}_{policy}" if name else policy,
        version=_VERSION,
        description=description or f"Bad lines: {on_bad_line}; lines up to {max_line_chars} chars.",
    )
    self.on_bad_line, self.max_line_chars = on_bad_line, max_line_chars


class TextLinesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base: {"text", "label"} per non-empty line of train.txt / valid.txt / test.txt.

  Registration is skipped because TFDS's own catalogue already has an unrelated `snli`; use
  `t5vae_jax.datasets.get_builder(name)` rather than `tfds.builder(name)`.
  """

  VERSION = _VERSION
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": "Bad-line policy (skip and count by reason, or fail) in the builder config.",
  }
  # Split -> its file's path under the download base URL (download.url_for), a key of
  # checksums.CHECKSUMS; empty when a subclass overrides `_download`.
  FILES: dict[str, str] = {}
  HOMEPAGE = ""
  DESCRIPTION = ""
  # Whether lines are `label<TAB>text`; the label is -1 on lines without a tab.
  HAS_LABELS = False
  BUILDER_CONFIGS = [TextLinesConfig()]

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
      raise FileNotFoundError(
          f"{self.name}: none of the split files exist: {sorted(missing.values())}"
      )
    self.info.metadata["missing_files"] = missing
    self.info.metadata["source_files"] = {
        split: _file_stamp(path) for split, path in files.items() if split not in missing
    }
    self.info.metadata["num_skipped_empty"] = {}
    self.info.metadata["num_skipped"] = {}
    return {
        split: self._generate_examples(split, path)
        for split, path in files.items()
        if split not in missing
    }

  def _download(self, dl_manager: tfds.download.DownloadManager) -> dict[str, epath.Path]:
    """Fetches and verifies every split file (DataError on a mismatch, before anything is built);
    the dataset's metadata records what each was verified as."""
    destination = epath.Path(dl_manager.download_dir) / "t5vae_jax"
    files, verified = {}, {}
    for split, path in self.FILES.items():
      files[split], verified[split] = download.fetch(path, destination)
    self.info.metadata["downloads"] = verified
    return files

  @property
  def _policy(self) -> tuple[str, int]:
    config = self.builder_config
    return (
        getattr(config, "on_bad_line", "skip"),
        getattr(config, "max_line_chars", DEFAULT_MAX_LINE_CHARS),
    )

  def _generate_examples(self, split: str, path: epath.Path):
    """Yields (line index, example); skips (and counts) or fails on bad lines, by the config."""
    on_bad_line, max_line_chars = self._policy
    counts = collections.Counter()
    num_lines = 0
    with path.open("rb") as f:
      for index, raw in enumerate(iter_raw_lines(f, 4 * max_line_chars + 2)):
        num_lines += 1
        try:
          example = self._parse_line(raw, index)
        except ValueError as e:
          raise DataError(f"{path}:{index + 1}: {e}") from None
        if isinstance(example, dict):
          yield index, example
          continue
        counts[example] += 1
        why = _REASON_TEXT[example].format(limit=max_line_chars, name=self.name)
        if on_bad_line == "fail":
          raise DataError(
              f"{path}:{index + 1}: the line {why} (data.on_bad_line=fail; "
              "--config.data.on_bad_line=skip skips and counts such lines)"
          )
        if counts[example] <= _LOGGED_PER_REASON:
          logging.warning("%s:%d: skipped, the line %s", path, index + 1, why)
    if sum(counts.values()) == num_lines:  # TFDS would only say that no example was yielded
      if counts["empty"] == num_lines:
        raise DataError(f"{path} has no non-empty line.")
      raise DataError(
          f"{path} has no usable line: {num_lines} lines, all skipped " f"({_fmt_counts(counts)})."
      )
    if counts:
      logging.warning(
          "%s: skipped %d of %d lines (%s)",
          path,
          sum(counts.values()),
          num_lines,
          _fmt_counts(counts),
      )
    self.info.metadata.setdefault("num_skipped_empty", {})[split] = counts["empty"]
    self.info.metadata.setdefault("num_skipped", {})[split] = {r: counts[r] for r in SKIP_REASONS}

  def _parse_line(self, raw: bytes, index: int) -> dict | str:
    """The bad-data hook: one line -> example, or the reason to skip it (see parse_line)."""
    return parse_line(
        raw, has_labels=self.HAS_LABELS, max_line_chars=self._policy[1], first_line=index == 0
    )

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


def _fmt_counts(counts) -> str:
  return ", ".join(f"{reason}: {counts[reason]}" for reason in SKIP_REASONS if counts[reason])


def _file_stamp(path: epath.Path) -> dict:
  """What identifies a source file's content cheaply: its path, size and modification time."""
  try:
    stat = path.stat()
    return {"path": os.fspath(path), "size": int(stat.length), "mtime": float(stat.mtime)}
  except Exception:  # some file systems cannot stat; then only the path is compared
    return {"path": os.fspath(path)}


def download_urls(builder_cls) -> list[str]:
  """The URLs the builder downloads from, under the current base URL."""
  return [download.url_for(path) for path in getattr(builder_cls, "FILES", {}).values()]


def url_host(url: str) -> str | None:
  """`host` of an https URL on the default port, else `host:port`; None for file:// and the like."""
  parsed = urllib.parse.urlparse(url)
  if parsed.scheme not in ("http", "https") or not parsed.hostname:
    return None
  port = parsed.port or (443 if parsed.scheme == "https" else 80)
  return parsed.hostname if port == 443 else f"{parsed.hostname}:{port}"


def download_hosts(builder_cls) -> list[str]:
  """The hosts (`host` or `host:port`, as url_host) the builder downloads from."""
  return sorted({host for host in map(url_host, download_urls(builder_cls)) if host})


def check_reachable(host: str, port: int = 443, timeout_s: float = 10.0) -> None:
  """Raises OSError when `host` (`host` or `host:port`) cannot be resolved or connected to within
  `timeout_s`."""
  name, _, port_text = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
  with socket.create_connection(
      (name, int(port_text)) if port_text else (host, port), timeout=timeout_s
  ):
    pass


class Ptb(TextLinesBuilder, skip_registration=True):
  """Penn Treebank as preprocessed by Mikolov et al. (2010): 42k/3.4k/3.8k sentences."""

  name = "ptb"
  HOMEPAGE = "https://www.fit.vutbr.cz/~imikolov/rnnlm/"
  DESCRIPTION = "Mikolov's Penn Treebank: lowercase, digits as N, 10k vocabulary with <unk>."
  # The ptb.*.txt of Mikolov's simple-examples.tgz, as committed to Zaremba's lstm repository.
  FILES = {
      "train": checksums.PTB_DIR + "ptb.train.txt",
      "validation": checksums.PTB_DIR + "ptb.valid.txt",
      "test": checksums.PTB_DIR + "ptb.test.txt",
  }


class Snli(TextLinesBuilder, skip_registration=True):
  """SNLI sentences as used by Li et al. (2019) / Optimus: 100k/10k/10k."""

  name = "snli"
  HOMEPAGE = "https://nlp.stanford.edu/projects/snli/"
  DESCRIPTION = "SNLI premises/hypotheses, lowercase and tokenized, one sentence per line."
  FILES = {
      split: checksums.SNLI_DIR + name
      for split, name in (("train", "train.txt"), ("validation", "valid.txt"), ("test", "test.txt"))
  }


class Yahoo(TextLinesBuilder, skip_registration=True):
  """Yahoo Answers 100k/10k/10k (Yang et al. 2017), as redistributed by Kim et al. (2018)."""

  name = "yahoo"
  HOMEPAGE = "https://github.com/harvardnlp/sa-vae"
  DESCRIPTION = (
      "Yahoo Answers documents (question + answer), lowercase and tokenized, _UNK for OOV."
  )
  FILES = {
      split: checksums.YAHOO_DIR + name
      for split, name in (("train", "train.txt"), ("validation", "val.txt"), ("test", "test.txt"))
  }


class Yelp(TextLinesBuilder, skip_registration=True):
  """Yelp15 100k/10k/10k reviews (Yang et al. 2017); lines are `label<TAB>text`."""

  name = "yelp"
  HOMEPAGE = "https://github.com/fangleai/Implicit-LVM"
  DESCRIPTION = "Yelp reviews with their star rating as label, lowercase and tokenized."
  HAS_LABELS = True
  FILES = {
      split: checksums.YELP_DIR + name
      for split, name in (
          ("train", "yelp.train.txt"),
          ("validation", "yelp.valid.txt"),
          ("test", "yelp.test.txt"),
      )
  }


class SyntheticConfig(TextLinesConfig):
  """How much synthetic data to generate, from which seed, and the bad-line policy (for files
  given in raw_dir); the name says all of it."""

  def __init__(
      self,
      *,
      num_train: int = 10_000,
      num_valid: int = 1_000,
      num_test: int = 1_000,
      seed: int = 0,
      on_bad_line: str = "skip",
      max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
  ):
    super().__init__(
        name=f"n{num_train}_{num_valid}_{num_test}_seed{seed}",
        on_bad_line=on_bad_line,
        max_line_chars=max_line_chars,
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
    return synthetic.write_splits(
        directory, config.num_train, config.num_valid, config.num_test, config.seed
    )

  def _generate_examples(self, split, path):
    attributes_path = path.parent / synthetic.attributes_file_name(path.name)
    with attributes_path.open() as f:
      attributes = [json.loads(line) for line in f]
    for line_number, example in super()._generate_examples(split, path):
      yield line_number, {**example, "attributes": attributes[line_number]}
