"""A Cloud Storage stand-in on 127.0.0.1 for the gs:// workdir tests.

``gcp-storage-emulator`` (a test requirement) serves the GCS JSON, upload and download APIs
over real HTTP, objects in memory. It runs in its own process (this file's launcher, below), so
train.py, eval.py and the test process all reach it the way they reach Cloud Storage, through
these environment variables (what :func:`client_env` returns):

- ``STORAGE_EMULATOR_HOST``: gcsfs (etils.epath's gs:// backend without TensorFlow) and
  google-cloud-storage send every request there, with anonymous credentials;
- ``TENSORSTORE_GCS_HTTP_URL``: tensorstore's gcs kvstore driver (orbax's array writes);
- ``GOOGLE_AUTH_TOKEN_FOR_TESTING``: a fixed bearer token for tensorstore, which would
  otherwise look for application default credentials and the GCE metadata server;
- ``NO_GCE_CHECK=true``: google-auth (under gcsfs) does not probe the metadata server at
  169.254.169.254 either, and gcsfs goes on to anonymous access: nothing leaves 127.0.0.1;
- ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``: gcsfs's default file system first asks the
  Storage Control gRPC API (with application default credentials) whether a bucket is zonal or
  hierarchical; no emulator serves that API. Off, gcsfs takes the path it falls back to for a
  standard bucket anyway, without a warning per call.

Where the emulator (2026.7.19) departs from Cloud Storage in a way our clients depend on, this
module's launcher (``python tests/gcs_stand_in.py --port P --bucket B``) brings it in line with
the JSON API reference (https://cloud.google.com/storage/docs/json_api/v1/objects):

- object downloads carry ``x-goog-generation`` and ``x-goog-metageneration`` headers
  (tensorstore takes an object's generation from them: without it every cached read of
  orbax's OCDBT manifest fails with "Malformed StorageGeneration");
- ``ifGenerationMatch``/``ifGenerationNotMatch`` (and the metageneration pair) are honoured on
  get, download, upload and delete: 412 Precondition Failed, or 304 Not Modified for a read
  whose ``ifGenerationNotMatch`` names the current generation (tensorstore revalidates its
  cache that way); ``ifGenerationMatch=0`` means "only if there is no such object".

    with gcs_stand_in.emulator(bucket="bucket") as env:   # env: the variables above
      subprocess.run([...], env={**os.environ, **env})
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Iterator, Optional


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def client_env(url: str) -> dict[str, str]:
  """What a process needs to send its gs:// traffic to the emulator at ``url``."""
  no_proxy = ",".join(filter(None, (os.environ.get("NO_PROXY"), "127.0.0.1")))
  return {
      "STORAGE_EMULATOR_HOST": url,
      "TENSORSTORE_GCS_HTTP_URL": url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
      "NO_GCE_CHECK": "true",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "NO_PROXY": no_proxy,
      "no_proxy": no_proxy,
  }


def _answers(url: str) -> bool:
  opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
  try:
    with opener.open(url + "/", timeout=1) as response:
      return response.status == 200
  except OSError:
    return False


def _start(bucket: str, log, timeout_s: float) -> tuple[subprocess.Popen, str]:
  """The launcher on a free port, answering; a port taken meanwhile: another one."""
  for _ in range(3):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--port", str(port), "--bucket", bucket],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and not _answers(url):
      if time.monotonic() > deadline:
        _stop(proc)
        raise RuntimeError(f"the storage emulator did not answer on {url} in {timeout_s} s")
      time.sleep(0.05)
    if proc.poll() is None:
      return proc, url
  log.seek(0)
  raise RuntimeError(
      f"the storage emulator exited with {proc.returncode}: "
      f"{log.read().decode(errors='replace')[-2000:]}"
  )


def _stop(proc: subprocess.Popen) -> None:
  proc.terminate()
  try:
    proc.wait(timeout=10)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()


@contextlib.contextmanager
def emulator(bucket: str, timeout_s: float = 30.0) -> Iterator[dict[str, str]]:
  """Runs an in-memory emulator holding ``bucket`` on a free port of 127.0.0.1; yields
  :func:`client_env` for it, and stops it on exit."""
  with tempfile.TemporaryFile() as log:
    proc, url = _start(bucket, log, timeout_s)
    try:
      yield client_env(url)
    finally:
      _stop(proc)


# --------------------------------------------------------------------------------------------
# The launcher: the emulator with Cloud Storage's generation headers and preconditions.
# --------------------------------------------------------------------------------------------
_PRECONDITIONS = (
    ("ifGenerationMatch", "generation", True),
    ("ifGenerationNotMatch", "generation", False),
    ("ifMetagenerationMatch", "metageneration", True),
    ("ifMetagenerationNotMatch", "metageneration", False),
)


def _current(storage, bucket: str, name: str):
  """The object's resource, or None when there is no such object."""
  from gcp_storage_emulator.exceptions import NotFound

  try:
    return storage.get_file_obj(bucket, name)
  except NotFound:
    return None


def _failed_precondition(query: dict, resource) -> Optional[str]:
  """The first precondition of the request that ``resource`` (None: absent) fails."""
  for param, field, must_match in _PRECONDITIONS:
    if param not in query:
      continue
    current = int(resource[field]) if resource is not None else 0
    if (int(query[param][0]) == current) != must_match:
      return param
  return None


def _guard(handler, *, read: bool, name_of):
  """``handler`` behind the preconditions; reads also get the generation headers."""
  from http import HTTPStatus

  def guarded(request, response, storage, *args, **kwargs):
    name = name_of(request)
    resource = _current(storage, request.params["bucket_name"], name) if name else None
    failed = _failed_precondition(request.query, resource) if name else None
    if failed is not None and not (read and resource is None):  # a missing object: 404 below
      if read and failed.endswith("NotMatch"):
        response.status = HTTPStatus.NOT_MODIFIED
      else:
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": f"{failed} failed for {name}"}})
      return None
    if read and resource is not None:
      response["x-goog-generation"] = str(resource["generation"])
      response["x-goog-metageneration"] = str(resource["metageneration"])
    return handler(request, response, storage, *args, **kwargs)

  return guarded


def _object_id(request) -> Optional[str]:
  return (request.params or {}).get("object_id")


def _upload_name(request) -> Optional[str]:
  if "name" in request.query:
    return request.query["name"][0]
  data = request.data
  if isinstance(data, dict) and isinstance(data.get("meta"), dict):
    return data["meta"].get("name")
  return None


def serve(host: str, port: int, bucket: str) -> None:
  from gcp_storage_emulator import server
  from gcp_storage_emulator.handlers import objects

  replacements = {
      objects.download: _guard(objects.download, read=True, name_of=_object_id),
      objects.get: _guard(objects.get, read=True, name_of=_object_id),
      objects.delete: _guard(objects.delete, read=False, name_of=_object_id),
      objects.insert: _guard(objects.insert, read=False, name_of=_upload_name),
  }
  for _, handlers in server.HANDLERS:
    for method, handler in handlers.items():
      handlers[method] = replacements.get(handler, handler)
  # The router's fallback for uploads to a bare .../o looks the handler up on the module.
  # (objects.get hands alt=media requests to objects.download itself: guarded by then.)
  objects.insert = replacements[objects.insert]
  server.create_server(host, port, in_memory=True, default_bucket=bucket).run()


def main(argv=None) -> None:
  import argparse
  import logging

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--host", default="127.0.0.1")
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--bucket", required=True)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.CRITICAL)  # the emulator logs every request otherwise
  serve(args.host, args.port, args.bucket)


if __name__ == "__main__":
  main()
