"""Verified downloads over real HTTP: a threaded stdlib server on 127.0.0.1 stands in for
raw.githubusercontent.com (the same <owner>/<repo>/<commit>/<path> layout, Content-Length on every
answer) and serves tiny files; the builders reach it through T5VAE_DATA_BASE_URL, and the checksum
table is swapped for one of the tiny files (the real table is only checked for completeness)."""

import contextlib
import hashlib
import http.server
import re
import socket
import threading
import time

import pytest

from t5vae_jax import datasets
from t5vae_jax.datasets import checksums
from t5vae_jax.datasets import download

PTB_FILES = {
    checksums.PTB_DIR + "ptb.train.txt": b" no it was n't black monday \n the N <unk> fell \n",
    checksums.PTB_DIR + "ptb.valid.txt": b" a b c \n d e f g \n",
    checksums.PTB_DIR + "ptb.test.txt": b" h i \n j k l \n m \n",
}
YELP_FILES = {
    checksums.YELP_DIR + "yelp.train.txt": b"3\tthe food was great .\n1\tbad service\n",
    checksums.YELP_DIR + "yelp.valid.txt": b"5\tok\n",
    checksums.YELP_DIR + "yelp.test.txt": b"4\tfine\n",
}
# The files whose sha256 is not recorded (they are verified by git blob id alone).
SHA256_UNKNOWN = {
    checksums.SNLI_DIR + "train.txt",
    checksums.YAHOO_DIR + "train.txt",
    *(checksums.YELP_DIR + f"yelp.{split}.txt" for split in ("train", "valid", "test")),
}


def recorded(body: bytes, *, sha256: bool = True) -> checksums.FileChecksum:
  """The table entry of `body`, computed here from the definitions (not with download.py)."""
  blob = hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()
  if not sha256:
    return checksums.FileChecksum(git_blob=blob)
  return checksums.FileChecksum(
      git_blob=blob, size=len(body), sha256=hashlib.sha256(body).hexdigest()
  )


class MirrorServer(http.server.ThreadingHTTPServer):
  """Serves `files` ({path: bytes}) at /path. `interruptions[path] = n`: the next n answers for
  path announce the whole length, send half the body and close the connection."""

  daemon_threads = True

  def __init__(self, files):
    super().__init__(("127.0.0.1", 0), MirrorHandler)
    self.files, self.interruptions, self.requests = dict(files), {}, []

  @property
  def url(self):
    return f"http://127.0.0.1:{self.server_address[1]}"


class MirrorHandler(http.server.BaseHTTPRequestHandler):

  def do_GET(self):
    path = self.path.lstrip("/")
    self.server.requests.append(path)
    body = self.server.files.get(path)
    if body is None:
      self.send_error(404)
      return
    self.send_response(200)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if self.server.interruptions.get(path, 0) > 0:
      self.server.interruptions[path] -= 1
      self.wfile.write(body[: len(body) // 2])
      self.wfile.flush()
      self.connection.shutdown(socket.SHUT_RDWR)
      self.close_connection = True
      return
    self.wfile.write(body)

  def log_message(self, *args):
    pass


@contextlib.contextmanager
def serving(files):
  server = MirrorServer(files)
  thread = threading.Thread(
      target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
  )
  thread.start()
  try:
    yield server
  finally:
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def mirror(monkeypatch):
  """The server with the tiny PTB and Yelp files, the base URL on it and their checksum table."""
  for variable in datasets._PROXY_VARIABLES:
    monkeypatch.delenv(variable, raising=False)
  monkeypatch.setattr(download, "_BACKOFF_S", 0.0)
  table = {path: recorded(body) for path, body in PTB_FILES.items()}
  table.update({path: recorded(body, sha256=False) for path, body in YELP_FILES.items()})
  monkeypatch.setattr(checksums, "CHECKSUMS", table)
  with serving({**PTB_FILES, **YELP_FILES}) as server:
    monkeypatch.setenv(download.BASE_URL_VARIABLE, server.url + "/")
    yield server


def texts(builder, split):
  return [(r["text"].decode(), int(r["label"])) for r in builder.as_data_source(split)]


def assert_nothing_built_or_left(tfds_dir):
  """No prepared dataset, no TFDS work directory and no partial download under tfds_dir."""
  leftovers = [p for p in tfds_dir.rglob("*") if "incomplete" in p.name or "tmp" in p.name]
  assert not leftovers
  assert not list(tfds_dir.rglob("dataset_info.json"))


def test_download_builds_a_verified_dataset_and_reuses_it(mirror, tmp_path):
  builder = datasets.get_builder("ptb", data_dir=tmp_path / "tfds")
  assert texts(builder, "train") == [("no it was n't black monday", -1), ("the N <unk> fell", -1)]
  assert texts(builder, "test") == [("h i", -1), ("j k l", -1), ("m", -1)]
  valid_path = checksums.PTB_DIR + "ptb.valid.txt"
  assert builder.info.metadata["downloads"]["validation"] == {
      "url": f"{mirror.url}/{valid_path}",
      "size": len(PTB_FILES[valid_path]),
      "sha256": hashlib.sha256(PTB_FILES[valid_path]).hexdigest(),
      "git_blob": checksums.CHECKSUMS[valid_path].git_blob,
  }
  assert sorted(mirror.requests) == sorted(PTB_FILES)
  again = datasets.get_builder("ptb", data_dir=tmp_path / "tfds")
  assert texts(again, "validation") == [("a b c", -1), ("d e f g", -1)]
  assert len(mirror.requests) == 3  # prepared: nothing is downloaded again


def test_a_file_recorded_by_git_blob_only_is_verified_by_it(mirror, tmp_path):
  builder = datasets.get_builder("yelp", data_dir=tmp_path / "tfds")
  assert texts(builder, "train") == [("the food was great .", 3), ("bad service", 1)]
  changed, bad = checksums.YELP_DIR + "yelp.test.txt", b"1\tfine\n"
  mirror.files[changed] = bad
  with pytest.raises(datasets.DataError) as error:
    datasets.get_builder("yelp", data_dir=tmp_path / "tfds2")
  assert str(error.value).startswith(
      f"{mirror.url}/{changed}: the downloaded file is not the recorded one: expected git blob "
      f"{recorded(YELP_FILES[changed]).git_blob}, got git blob {recorded(bad).git_blob} "
      f"(sha256 {recorded(bad).sha256}, {len(bad)} bytes)"
  )
  assert_nothing_built_or_left(tmp_path / "tfds2")


@pytest.mark.parametrize("how", ["changed", "truncated"])
def test_a_changed_or_truncated_file_is_refused_and_nothing_is_built(mirror, tmp_path, how):
  path = checksums.PTB_DIR + "ptb.valid.txt"
  good = PTB_FILES[path]
  bad = good.replace(b"a b c", b"a b x") if how == "changed" else good[:-5]
  mirror.files[path] = bad
  with pytest.raises(datasets.DataError) as error:
    datasets.get_builder("ptb", data_dir=tmp_path / "tfds")
  expected, got = recorded(good), recorded(bad)
  assert str(error.value).startswith(
      f"{mirror.url}/{path}: the downloaded file is not the recorded one: expected sha256 "
      f"{expected.sha256} ({len(good)} bytes), got sha256 {got.sha256} ({len(bad)} bytes)"
  )
  assert "--config.data.dir=DIR" in str(error.value)
  assert_nothing_built_or_left(tmp_path / "tfds")
  assert not (tmp_path / "tfds" / "downloads" / "t5vae_jax" / path).exists()


def test_a_server_that_is_down_is_one_error_naming_the_url(monkeypatch, tmp_path):
  for variable in datasets._PROXY_VARIABLES:
    monkeypatch.delenv(variable, raising=False)
  with socket.socket() as closed:  # a port that nobody listens on
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
  monkeypatch.setenv(download.BASE_URL_VARIABLE, f"http://127.0.0.1:{port}")
  start = time.perf_counter()
  with pytest.raises(datasets.DataError) as error:
    datasets.get_builder("snli", data_dir=tmp_path / "tfds")
  assert time.perf_counter() - start < 10
  url = f"http://127.0.0.1:{port}/{checksums.SNLI_DIR}train.txt"
  assert re.fullmatch(
      rf"snli: config\.data\.dir is empty, so the files would be downloaded from 127\.0\.0\.1:{port} "
      rf"\({re.escape(url)}\), which cannot be reached \(ConnectionRefusedError: .*\); offline, put "
      r"train\.txt, valid\.txt and test\.txt in a directory and pass --config\.data\.dir=DIR",
      str(error.value),
  )
  assert_nothing_built_or_left(tmp_path / "tfds")


def test_an_interrupted_download_is_retried_and_a_rerun_succeeds(mirror, tmp_path):
  path = checksums.PTB_DIR + "ptb.valid.txt"
  size = len(PTB_FILES[path])
  # Every try of the first run is cut off; the rerun's first try too, its second gets through.
  mirror.interruptions[path] = download._ATTEMPTS + 1
  with pytest.raises(datasets.DataError) as error:
    datasets.get_builder("ptb", data_dir=tmp_path / "tfds")
  assert str(error.value).startswith(
      f"{mirror.url}/{path}: the download failed {download._ATTEMPTS} times, last: the "
      f"connection closed after {size // 2} of {size} bytes; rerun to try again, or offline"
  )
  assert_nothing_built_or_left(tmp_path / "tfds")
  builder = datasets.get_builder("ptb", data_dir=tmp_path / "tfds")
  assert texts(builder, "validation") == [("a b c", -1), ("d e f g", -1)]
  train_path = checksums.PTB_DIR + "ptb.train.txt"
  # train.txt was verified and kept by the first run; valid.txt took 3 + 2 tries.
  assert mirror.requests.count(train_path) == 1
  assert mirror.requests.count(path) == download._ATTEMPTS + 2


def test_a_kept_download_is_verified_again_before_it_is_used(mirror, tmp_path):
  path = checksums.PTB_DIR + "ptb.test.txt"
  local, _ = download.fetch(path, tmp_path)
  local.write_bytes(b" h i \n j k x \n m \n")  # same size, other bytes
  assert download.fetch(path, tmp_path)[0].read_bytes() == PTB_FILES[path]
  assert mirror.requests == [path, path]


def test_a_file_without_a_recorded_checksum_is_not_downloaded(mirror, tmp_path):
  with pytest.raises(
      datasets.DataError,
      match=r"^http://127\.0\.0\.1:\d+/some/repo/" r"0{40}/x\.txt: no checksum is recorded",
  ):
    download.fetch("some/repo/" + "0" * 40 + "/x.txt", tmp_path, table={})
  assert mirror.requests == []


def test_git_blob_ids_are_gits(tmp_path):
  (tmp_path / "empty").write_bytes(b"")
  (tmp_path / "hello").write_bytes(b"hello world\n")
  assert (
      download.file_digests(tmp_path / "empty").git_blob
      == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
  )
  assert (
      download.file_digests(tmp_path / "hello").git_blob
      == "3b18e512dba79e4c8300dd08aeb37f8e728b8dad"
  )


def test_every_file_a_builder_downloads_has_a_recorded_checksum(monkeypatch):
  monkeypatch.delenv(download.BASE_URL_VARIABLE, raising=False)
  fetched = set()
  for name, builder in datasets.BUILDERS.items():
    for path, url in zip(builder.FILES.values(), datasets.download_urls(builder)):
      fetched.add(path)
      # https, on GitHub's raw host, at a full commit id.
      assert re.fullmatch(
          r"https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/[0-9a-f]{40}/.+", url
      )
      entry = checksums.CHECKSUMS[path]
      assert re.fullmatch(r"[0-9a-f]{40}", entry.git_blob), path
      if path in SHA256_UNKNOWN:
        assert entry.sha256 is None and entry.size is None, path
      else:
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256) and entry.size > 0, path
    assert len(builder.FILES) == (0 if name == "synthetic" else 3)
  assert fetched == set(checksums.CHECKSUMS)  # and the table holds nothing else
