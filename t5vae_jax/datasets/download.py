"""Verified downloads: a file is fetched under a temporary name and renamed only once its hashes
match the recorded ones (checksums.CHECKSUMS), so the download directory never holds a changed,
truncated or half-written file under the real name, and a rerun after any failure starts clean.

Why our own small downloader rather than TFDS's: TFDS keys its checksums by full URL (a mirror
would need a second table), retries a dead host for minutes, and its errors do not say what to do
offline. This one keys by the path under the base URL, so a mirror is checked against the same
table, and every failure is one DataError naming the URL (see builders.DataError).

The base URL is https://raw.githubusercontent.com, or $T5VAE_DATA_BASE_URL (a mirror laid out the
same way: BASE/<owner>/<repo>/<commit>/<path>; the tests point it at a server on 127.0.0.1).
"""

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
import uuid

from absl import logging
from etils import epath

from t5vae_jax.datasets import checksums
from t5vae_jax.datasets.errors import DataError

DEFAULT_BASE_URL = "https://raw.githubusercontent.com"
BASE_URL_VARIABLE = "T5VAE_DATA_BASE_URL"
OFFLINE_HINT = (
    "offline, put train.txt, valid.txt and test.txt in a directory and pass "
    "--config.data.dir=DIR"
)
_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 30.0  # per connection attempt and per read; a stalled server fails, not hangs
_ATTEMPTS = 3  # an interrupted or refused transfer is tried again (a changed file is not)
_BACKOFF_S = 2.0  # seconds before attempt k+1: _BACKOFF_S * k


def base_url() -> str:
  """Where the files are downloaded from: $T5VAE_DATA_BASE_URL, else raw.githubusercontent.com."""
  return (os.environ.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL).rstrip("/")


def url_for(path: str) -> str:
  """The URL of `path` (a key of checksums.CHECKSUMS) under the current base URL."""
  return f"{base_url()}/{path}"


def file_digests(path: epath.PathLike) -> checksums.FileChecksum:
  """Size, sha256 and git blob id of a file, in one pass after a stat."""
  path = epath.Path(path)
  size = path.stat().length
  sha256, blob = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK_BYTES):
      sha256.update(chunk)
      blob.update(chunk)
  return checksums.FileChecksum(git_blob=blob.hexdigest(), size=size, sha256=sha256.hexdigest())


def mismatch(expected: checksums.FileChecksum, got: checksums.FileChecksum) -> str | None:
  """None when `got` has every recorded value of `expected`; else what differs, both sides."""
  if expected.sha256 is not None and (got.sha256, got.size) != (expected.sha256, expected.size):
    return (
        f"expected sha256 {expected.sha256} ({expected.size} bytes), "
        f"got sha256 {got.sha256} ({got.size} bytes)"
    )
  if expected.size is not None and got.size != expected.size:
    return f"expected {expected.size} bytes, got {got.size} bytes (sha256 {got.sha256})"
  if expected.git_blob is not None and got.git_blob != expected.git_blob:
    return (
        f"expected git blob {expected.git_blob}, got git blob {got.git_blob} "
        f"(sha256 {got.sha256}, {got.size} bytes)"
    )
  return None


def fetch(
    path: str, destination: epath.PathLike, table: dict[str, checksums.FileChecksum] | None = None
) -> tuple[epath.Path, dict]:
  """Downloads `path` (a key of `table`, default checksums.CHECKSUMS) to destination/path.

  Returns the local file and what it was verified as ({"url", "size", "sha256", "git_blob"}).
  A file already there is verified again and reused (downloaded afresh when it does not match).
  Raises DataError naming the URL when the path has no recorded checksum, the host cannot be
  reached, the transfer breaks off (after _ATTEMPTS tries), or the bytes are not the recorded ones
  (both hashes named); in every case nothing is left under the final name or a temporary one.
  """
  table = checksums.CHECKSUMS if table is None else table
  url = url_for(path)
  expected = table.get(path)
  if expected is None or (expected.sha256 is None and expected.git_blob is None):
    raise DataError(
        f"{url}: no checksum is recorded for this file in "
        "t5vae_jax/datasets/checksums.py, so it is not downloaded; " + OFFLINE_HINT
    )
  final = epath.Path(destination) / path
  if final.exists():
    got = file_digests(final)
    if mismatch(expected, got) is None:
      return final, _record(url, got)
    logging.warning(
        "%s does not match its checksum (%s); downloading it again", final, mismatch(expected, got)
    )
    final.unlink()
  final.parent.mkdir(parents=True, exist_ok=True)
  temporary = final.parent / f"{final.name}.incomplete-{uuid.uuid4().hex}"
  try:
    _download_with_retries(url, temporary, expected.size)
    got = file_digests(temporary)
    problem = mismatch(expected, got)
    if problem:
      raise DataError(
          f"{url}: the downloaded file is not the recorded one: {problem}. The host or "
          f"a mirror ({BASE_URL_VARIABLE}) serves other bytes; " + OFFLINE_HINT
      )
    temporary.replace(final)
  finally:
    if temporary.exists():
      temporary.unlink()
  if expected.sha256 is None:
    logging.warning(
        "%s: verified by its git blob id %s; its sha256 is %s (%d bytes), which "
        "t5vae_jax/datasets/checksums.py does not record yet",
        url,
        got.git_blob,
        got.sha256,
        got.size,
    )
  return final, _record(url, got)


def _record(url: str, got: checksums.FileChecksum) -> dict:
  return {"url": url, "size": got.size, "sha256": got.sha256, "git_blob": got.git_blob}


class _Interrupted(Exception):
  """The transfer broke off; worth another try."""


def _download_with_retries(url: str, temporary: epath.Path, expected_size: int | None) -> None:
  for attempt in range(1, _ATTEMPTS + 1):
    try:
      _download_once(url, temporary, expected_size)
      return
    except _Interrupted as e:
      if attempt == _ATTEMPTS:
        raise DataError(
            f"{url}: the download failed {_ATTEMPTS} times, last: {e}; rerun to try "
            "again, or " + OFFLINE_HINT
        ) from None
      logging.warning("%s: %s; trying again (%d of %d)", url, e, attempt + 1, _ATTEMPTS)
      time.sleep(_BACKOFF_S * attempt)


def _download_once(url: str, temporary: epath.Path, expected_size: int | None) -> None:
  """One transfer into `temporary`; _Interrupted when it may succeed on another try."""
  received = 0
  try:
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
      announced = response.headers.get("Content-Length")
      with temporary.open("wb") as f:
        while chunk := response.read(_CHUNK_BYTES):
          received += len(chunk)
          f.write(chunk)
          if expected_size is not None and received > expected_size:
            return  # longer than the recorded file: the checksum comparison says so
  except urllib.error.HTTPError as e:
    if e.code >= 500 or e.code == 429:
      raise _Interrupted(f"HTTP {e.code} {e.reason}") from None
    mirror = (
        f" (is {BASE_URL_VARIABLE}={base_url()} a mirror laid out like {DEFAULT_BASE_URL}?)"
        if base_url() != DEFAULT_BASE_URL
        else ""
    )
    raise DataError(f"{url}: HTTP {e.code} {e.reason}{mirror}; " + OFFLINE_HINT) from None
  except (
      OSError,
      http.client.HTTPException,
  ) as e:  # URLError, refused, reset, timeout, IncompleteRead
    reason = getattr(e, "reason", None) or e
    raise _Interrupted(f"{type(reason).__name__}: {reason} after {received} bytes") from None
  if announced is not None and announced.isdigit() and received < int(announced):
    # http.client returns a short body without complaint when the server closes early.
    raise _Interrupted(f"the connection closed after {received} of {announced} bytes")
