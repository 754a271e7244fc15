"""A Hugging Face hub on 127.0.0.1 for tests: the endpoints huggingface_hub 2.4 calls, answered
the way huggingface.co answers them, so pretrained.resolve() runs its real download code offline.

Read from huggingface_hub 2.4.0 (hf_api.py, file_download.py, utils/_http.py):

  GET  /api/models/{repo}[/revision/{rev}]     model_info: {"id", "sha", "siblings": [...]}
  GET  /api/models/{repo}/tree/{rev}[/{dir}]    list_repo_tree / list_repo_files (snapshot_download)
  HEAD /{repo}/resolve/{rev}/{file}             hf_hub_download's metadata request, then a GET of
  GET                                           the location it ends at:
    a git file (config.json ...): 307 to /api/resolve-cache/models/{repo}/{sha}/{file} (same
      origin: followed), which answers 200 with ETag (the git blob sha1), X-Repo-Commit and
      Content-Length;
    an LFS file (*.safetensors, *.bin, *.model ... as the hub's default .gitattributes): 302 to
      a CDN on another origin (here: another port), carrying X-Linked-Etag (the sha256),
      X-Linked-Size and X-Repo-Commit; the CDN serves the bytes (Range too).
  HEAD /                                        what runtime.check_hub asks.
  GET  /api/agent-harnesses                     huggingface_hub's telemetry registry (empty).

Errors as the hub sends them, with X-Error-Code / X-Error-Message (hf_raise_for_status reads
them): an unknown or private repo 401 RepoNotFound without a token (404 with one), a gated
repo's file 401 GatedRepo, a missing file 404 EntryNotFound, an unknown revision 404
RevisionNotFound. A renamed repo (t5-small is google-t5/t5-small since 2024) answers 307 to its
new name. A repo in ``hang`` accepts the connection and never answers (a firewall dropping
replies); with ``silent`` every request does. Every request is logged in ``requests`` with the
repo file it concerns.

Uploads, as huggingface_hub 2.4 makes them without hf_xet (HfApi.create_repo and upload_folder
-> create_commit; hf_api.py, _commit_api.py, lfs.py), each needing a token of ``tokens``
(``Authorization: Bearer <token>``; none: 401, a namespace not the token's user: 403):

  POST /api/repos/create                       {"name", "organization", "visibility"}: a repo
                                               holding the default .gitattributes (its first
                                               commit); 409 with its url when it exists
  POST /api/validate-yaml                      the README's front matter: 400 on bad YAML
  POST /api/models/{repo}/preupload/{rev}      {"files": [{path, sample, size}]} -> uploadMode
                                               "lfs" (a .gitattributes suffix, a binary sample,
                                               over 10 MiB) or "regular", and the file's oid
  POST /{repo}.git/info/lfs/objects/batch      the git-lfs batch API: a "basic" upload action
                                               (a presigned PUT on the CDN's origin) and a
                                               verify action per object not yet stored
  PUT  (CDN) /lfs-upload/{sha256}?...          the bytes; 400 BadDigest unless they hash to it
  POST /{repo}.git/info/lfs/objects/verify     {"oid", "size"} of an uploaded object
  POST /api/models/{repo}/commit/{rev}         ndjson: a header, then file (base64), lfsFile
                                               (an uploaded oid), deletedFile, deletedFolder
                                               lines; the repo's files and sha change, and the
                                               commit is logged in ``commits``
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import pathlib
import re
import threading
import time
import urllib.parse
from typing import Optional

# The hub's default .gitattributes stores these in LFS (the rest are plain git files).
DEFAULT_TOKENS = {"hf_stand_in_write_token": "someone"}  # token -> user name
LFS_SUFFIXES = (
    ".bin",
    ".safetensors",
    ".msgpack",
    ".h5",
    ".ot",
    ".onnx",
    ".model",
    ".pt",
    ".pth",
    ".pb",
    ".tflite",
    ".npz",
)


@dataclasses.dataclass
class Repo:
  files: dict[str, bytes]
  private: bool = False
  gated: bool = False

  @classmethod
  def from_dir(cls, directory, **kwargs) -> "Repo":
    directory = pathlib.Path(directory)
    return cls(
        {
            p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*"))
            if p.is_file()
        },
        **kwargs,
    )

  @property
  def sha(self) -> str:
    digest = hashlib.sha1()
    for name in sorted(self.files):
      digest.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
    return digest.hexdigest()


def is_lfs(filename: str) -> bool:
  return filename.endswith(LFS_SUFFIXES)


def git_blob_sha1(data: bytes) -> str:
  return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
  return (
      f"version https://git-lfs.github.com/spec/v1\noid sha256:"
      f"{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n"
  ).encode()


class HubStandIn:
  """``with HubStandIn({"org/name": Repo(...)}) as hub: ... hub.endpoint ... hub.requests``."""

  def __init__(
      self,
      repos: Optional[dict[str, Repo]] = None,
      renamed: Optional[dict[str, str]] = None,
      hang: tuple[str, ...] = (),
      silent: bool = False,
      tokens: Optional[dict[str, str]] = None,
  ):
    self.tokens = dict(DEFAULT_TOKENS if tokens is None else tokens)
    self.commits: list[dict] = []  # {"repo", "summary", "files"} per commit
    self._uploads: dict[str, bytes] = {}  # LFS objects PUT to the CDN, by sha256
    self.repos, self.renamed, self.hang = dict(repos or {}), dict(renamed or {}), tuple(hang)
    self.silent = silent  # accept every connection and never answer
    self.requests: list[dict] = []
    self._stop = threading.Event()
    self._blobs = {
        hashlib.sha256(data).hexdigest(): (repo_id, name, data)
        for repo_id, repo in self.repos.items()
        for name, data in repo.files.items()
    }
    self._hub = self._server(_HubHandler)
    self._cdn = self._server(_CdnHandler)
    self.endpoint = f"http://127.0.0.1:{self._hub.server_address[1]}"
    self.cdn = f"http://127.0.0.1:{self._cdn.server_address[1]}"

  def _server(self, handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.stand_in = self
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self):
    self._stop.set()
    for server in (self._hub, self._cdn):
      server.shutdown()
      server.server_close()

  def requested(self, repo_id: str) -> set[str]:
    """The files of ``repo_id`` that were asked for (resolve, resolve-cache or CDN)."""
    return {r["file"] for r in self.requests if r["repo"] == repo_id and r["file"]}


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"

  def log_message(self, *args):  # quiet
    pass

  @property
  def hub(self) -> HubStandIn:
    return self.server.stand_in

  def log(self, repo=None, file=None):
    self.hub.requests.append(
        dict(
            server=type(self).__name__,
            method=self.command,
            path=self.path,
            repo=repo,
            file=file,
            time=time.time(),
        )
    )

  def reply(
      self,
      status: int,
      body: bytes = b"",
      headers: Optional[dict] = None,
      content_type: str = "application/json; charset=utf-8",
  ):
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def error(self, status: int, code: Optional[str], message: str):
    headers = {"X-Error-Message": message}
    if code:
      headers["X-Error-Code"] = code
    self.reply(status, json.dumps({"error": message}).encode(), headers)


class _HubHandler(_Handler):

  def do_HEAD(self):
    self.route()

  def do_GET(self):
    self.route()

  def route(self):
    path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
    if self.hub.silent:
      return self.never_answer()
    if path in ("", "/"):
      self.log()
      return self.reply(200, b"<html>hub stand-in</html>", content_type="text/html")
    if path == "/api/agent-harnesses":  # huggingface_hub's user-agent telemetry, once a day
      self.log()
      return self.reply(200, json.dumps({"standardEnvVars": [], "harnesses": {}}).encode())
    match = re.fullmatch(r"/api/models/(.+)", path) or re.fullmatch(
        r"/api/resolve-cache/models/(.+)", path
    )
    api = path.startswith("/api/models/")
    cache = path.startswith("/api/resolve-cache/")
    rest = match.group(1) if match else path.lstrip("/")
    repo_id, tail = self.split_repo(rest)
    if repo_id in self.hub.hang:
      return self.never_answer(repo_id)
    if repo_id in self.hub.renamed:
      self.log(repo_id)
      prefix = "/api/models/" if api else "/api/resolve-cache/models/" if cache else "/"
      location = prefix + self.hub.renamed[repo_id] + tail
      query = urllib.parse.urlsplit(self.path).query
      return self.reply(307, b"", {"Location": location + (f"?{query}" if query else "")})
    repo = self.hub.repos.get(repo_id)
    authorized = "authorization" in {k.lower() for k in self.headers.keys()}
    if repo is None or repo.private:
      self.log(repo_id)
      if authorized and repo is None:
        return self.error(404, "RepoNotFound", "Repository not found")
      return self.error(401, "RepoNotFound", "Invalid username or password.")
    if api:
      return self.api(repo_id, repo, tail)
    if cache:  # /{sha}/{file}
      sha, _, filename = tail.lstrip("/").partition("/")
      return self.resolve(repo_id, repo, sha, filename, cached=True)
    match = re.fullmatch(r"/resolve/([^/]+)/(.+)", tail)
    if not match:
      self.log(repo_id)
      return self.error(404, None, "Sorry, we can't find the page you are looking for.")
    return self.resolve(repo_id, repo, match.group(1), match.group(2), cached=False)

  def never_answer(self, repo_id=None):
    self.log(repo_id)
    self.hub._stop.wait()  # until the stand-in closes
    self.close_connection = True

  def split_repo(self, rest: str) -> tuple[str, str]:
    """(repo id, the rest of the path): a known id when one matches, else 'org/name'."""
    known = sorted(
        set(self.hub.repos) | set(self.hub.renamed) | set(self.hub.hang), key=len, reverse=True
    )
    for repo_id in known:
      if rest == repo_id or rest.startswith(repo_id + "/"):
        return repo_id, rest[len(repo_id) :]
    parts = rest.split("/")
    if len(parts) >= 3 and parts[1] in ("resolve", "tree", "revision", "blob"):
      return parts[0], "/" + "/".join(parts[1:])
    return "/".join(parts[:2]), "/" + "/".join(parts[2:]) if len(parts) > 2 else ""

  def api(self, repo_id: str, repo: Repo, tail: str):
    self.log(repo_id)
    match = re.fullmatch(r"(?:/revision/([^/]+))?", tail)
    if match:
      if match.group(1) not in (None, "main", repo.sha):
        return self.error(404, "RevisionNotFound", "Invalid rev id: " + match.group(1))
      info = {
          "_id": repo.sha[:24],
          "id": repo_id,
          "modelId": repo_id,
          "sha": repo.sha,
          "private": False,
          "disabled": False,
          "gated": "manual" if repo.gated else False,
          "downloads": 0,
          "likes": 0,
          "library_name": "transformers",
          "tags": ["transformers", "t5", "text2text-generation"],
          "pipeline_tag": "text2text-generation",
          "lastModified": "2023-01-24T16:52:39.000Z",
          "createdAt": "2022-03-02T23:29:04.000Z",
          "siblings": [{"rfilename": name} for name in sorted(repo.files)],
      }
      return self.reply(200, json.dumps(info).encode())
    match = re.fullmatch(r"/tree/([^/]+)(/.*)?", tail)
    if match:
      if match.group(1) not in ("main", repo.sha):
        return self.error(404, "RevisionNotFound", "Invalid rev id: " + match.group(1))
      return self.reply(200, json.dumps(self.tree(repo, match.group(2) or "")).encode())
    return self.error(404, None, "Sorry, we can't find the page you are looking for.")

  def tree(self, repo: Repo, under: str) -> list[dict]:
    recursive = "recursive=true" in urllib.parse.urlsplit(self.path).query.lower()
    prefix = under.strip("/") + "/" if under.strip("/") else ""
    entries, dirs = [], set()
    for name, data in sorted(repo.files.items()):
      if not name.startswith(prefix):
        continue
      rel = name[len(prefix) :]
      if "/" in rel and not recursive:
        dirs.add(prefix + rel.split("/")[0])
        continue
      if recursive:
        for i in range(1, name.count("/") + 1):
          dirs.add("/".join(name.split("/")[:i]))
      entry = {
          "type": "file",
          "path": name,
          "size": len(data),
          "oid": git_blob_sha1(lfs_pointer(data) if is_lfs(name) else data),
      }
      if is_lfs(name):
        entry["lfs"] = {
            "oid": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "pointerSize": len(lfs_pointer(data)),
        }
      entries.append(entry)
    return [
        {"type": "directory", "path": d, "oid": "0" * 40, "size": 0}
        for d in sorted(dirs)
        if d.startswith(prefix)
    ] + entries

  def resolve(self, repo_id: str, repo: Repo, revision: str, filename: str, cached: bool):
    self.log(repo_id, filename)
    if revision not in ("main", repo.sha):
      return self.error(404, "RevisionNotFound", "Invalid rev id: " + revision)
    if repo.gated:
      return self.error(
          401,
          "GatedRepo",
          f"Access to model {repo_id} is restricted. You must "
          "have access to it and be authenticated to access it. Please log in.",
      )
    if filename not in repo.files:
      return self.error(404, "EntryNotFound", "Entry not found")
    data = repo.files[filename]
    headers = {"X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
    if is_lfs(filename):
      sha256 = hashlib.sha256(data).hexdigest()
      headers.update(
          {
              "ETag": f'"{git_blob_sha1(lfs_pointer(data))}"',
              "X-Linked-Etag": f'"{sha256}"',
              "X-Linked-Size": str(len(data)),
              "Location": f"{self.hub.cdn}/repos/{sha256[:2]}/{sha256[2:4]}/{sha256}?"
              f"response-content-disposition=attachment%3B+filename%3D%22"
              f"{urllib.parse.quote(filename.split('/')[-1])}%22&X-Amz-Signature=0",
          }
      )
      return self.reply(
          302,
          b"Found. Redirecting to " + headers["Location"].encode(),
          headers,
          content_type="text/plain; charset=utf-8",
      )
    headers["ETag"] = f'"{git_blob_sha1(data)}"'
    if not cached:
      headers["Location"] = f"/api/resolve-cache/models/{repo_id}/{repo.sha}/{filename}"
      return self.reply(307, b"", headers)
    return self.reply(200, data, headers, content_type="application/octet-stream")

  # ---------------------------------------------------------------------------- uploads
  def do_POST(self):
    body = read_body(self)
    path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
    if self.hub.silent:
      return self.never_answer()
    if path == "/api/validate-yaml":
      self.log()
      return self.validate_yaml(json.loads(body))
    user = self.writer()
    if user is None:
      return
    if path == "/api/repos/create":
      return self.create_repo(user, json.loads(body))
    match = re.fullmatch(r"/api/models/(.+)/(preupload|commit)/([^/]+)", path)
    lfs = re.fullmatch(r"/(.+)\.git/info/lfs/objects/(batch|verify)", path)
    repo_id = match.group(1) if match else lfs.group(1) if lfs else None
    self.log(repo_id)
    repo = self.hub.repos.get(repo_id)
    if repo_id is None:
      return self.error(404, None, "Sorry, we can't find the page you are looking for.")
    if repo is None:
      return self.error(404, "RepoNotFound", "Repository not found")
    if repo_id.split("/")[0] != user:
      return self.error(403, None, f"You don't have the rights to write to {repo_id}")
    if match and match.group(3) not in ("main", repo.sha):
      return self.error(404, "RevisionNotFound", "Invalid rev id: " + match.group(3))
    if match and match.group(2) == "preupload":
      return self.preupload(repo, json.loads(body))
    if match:
      return self.commit(repo_id, repo, body)
    if lfs.group(2) == "batch":
      return self.lfs_batch(repo_id, json.loads(body))
    request = json.loads(body)
    data = self.hub._uploads.get(request.get("oid"))
    if data is None or len(data) != request.get("size"):
      return self.error(404, None, "Object not found or of another size")
    return self.reply(200, json.dumps({"success": True}).encode())

  def writer(self) -> Optional[str]:
    """The user of the request's token; None after answering 401 when there is no valid one."""
    header = self.headers.get("Authorization", "")
    user = self.hub.tokens.get(header[len("Bearer ") :]) if header.startswith("Bearer ") else None
    if user is None:
      self.log()
      self.error(
          401,
          None,
          "Invalid credentials in Authorization header"
          if header
          else "Invalid username or password.",
      )
    return user

  def validate_yaml(self, request: dict):
    import yaml

    content = request.get("content", "")
    match = re.match(r"---\r?\n(.*?)\r?\n---\r?\n", content, re.DOTALL)
    if not match:
      warning = {"message": "empty or missing yaml metadata in repo card"}
      return self.reply(200, json.dumps({"errors": [], "warnings": [warning]}).encode())
    try:
      metadata = yaml.safe_load(match.group(1))
      problem = None if isinstance(metadata, dict) else "the metadata is not a mapping"
    except yaml.YAMLError as e:
      problem = str(e)
    if problem:
      errors = [{"message": f"Invalid YAML in README.md: {problem}"}]
      return self.reply(
          400,
          json.dumps({"errors": errors, "warnings": []}).encode(),
          {"X-Error-Message": "Invalid metadata in README.md"},
      )
    return self.reply(200, json.dumps({"errors": [], "warnings": []}).encode())

  def create_repo(self, user: str, request: dict):
    namespace = request.get("organization") or user
    repo_id = f"{namespace}/{request['name']}"
    self.log(repo_id)
    url = f"{self.hub.endpoint}/{repo_id}"
    if namespace != user:
      return self.error(
          403,
          None,
          f"You don't have the rights to create a model under the " f'namespace "{namespace}"',
      )
    if repo_id in self.hub.repos:
      return self.reply(
          409,
          json.dumps({"error": "You already created this model repo", "url": url}).encode(),
          {"X-Error-Message": "You already created this model repo"},
      )
    repo = Repo(
        {".gitattributes": DEFAULT_GITATTRIBUTES},
        private=request.get("visibility") == "private" or bool(request.get("private")),
    )
    self.hub.repos[repo_id] = repo
    return self.reply(200, json.dumps({"url": url, "name": repo_id, "id": repo.sha[:24]}).encode())

  def preupload(self, repo: Repo, request: dict):
    import base64

    files = []
    for entry in request["files"]:
      path, size = entry["path"], int(entry["size"])
      mode = upload_mode(path, base64.b64decode(entry["sample"]), size)
      data = repo.files.get(path)
      oid = (
          None
          if data is None
          else (hashlib.sha256(data).hexdigest() if mode == "lfs" else git_blob_sha1(data))
      )
      files.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
    return self.reply(200, json.dumps({"files": files, "commitOid": repo.sha}).encode())

  def lfs_batch(self, repo_id: str, request: dict):
    objects = []
    for obj in request["objects"]:
      oid, size = obj["oid"], int(obj["size"])
      entry = {"oid": oid, "size": size, "authenticated": True}
      if oid not in self.hub._uploads and oid not in self.hub._blobs:
        entry["actions"] = {
            "upload": {
                "href": f"{self.hub.cdn}/lfs-upload/{oid}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                "&X-Amz-Signature=0",
                "expires_in": 86400,
            },
            "verify": {"href": f"{self.hub.endpoint}/{repo_id}.git/info/lfs/objects/verify"},
        }
      objects.append(entry)
    return self.reply(
        200,
        json.dumps({"transfer": "basic", "objects": objects}).encode(),
        content_type="application/vnd.git-lfs+json",
    )

  def commit(self, repo_id: str, repo: Repo, body: bytes):
    import base64

    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    if not lines or lines[0].get("key") != "header":
      return self.error(400, None, "The first line of the commit payload must be its header")
    header = lines[0]["value"]
    if header.get("parentCommit") not in (None, repo.sha):
      return self.error(412, None, "A commit has happened since. Please refresh and try again.")
    files = dict(repo.files)
    for line in lines[1:]:
      key, value = line["key"], line["value"]
      path = value["path"]
      if key == "file":
        files[path] = base64.b64decode(value["content"])
      elif key == "lfsFile":
        data = (
            self.hub._uploads.get(value["oid"])
            or (self.hub._blobs.get(value["oid"]) or (None, None, None))[2]
        )
        if data is None or ("size" in value and len(data) != value["size"]):
          return self.error(
              400,
              None,
              f"Your push was rejected because an LFS pointer pointed to "
              f"a file that does not exist ({path})",
          )
        files[path] = data
      elif key == "deletedFile":
        if path not in files:
          return self.error(404, "EntryNotFound", "A file with this name doesn't exist")
        del files[path]
      elif key == "deletedFolder":
        files = {
            name: data
            for name, data in files.items()
            if not name.startswith(path.rstrip("/") + "/")
        }
      else:
        return self.error(400, None, f"Unknown operation {key!r}")
    repo.files = files
    for name, data in files.items():
      self.hub._blobs.setdefault(hashlib.sha256(data).hexdigest(), (repo_id, name, data))
    self.hub.commits.append(
        {"repo": repo_id, "summary": header.get("summary"), "files": sorted(path for path in files)}
    )
    return self.reply(
        200,
        json.dumps(
            {
                "success": True,
                "commitOid": repo.sha,
                "hookOutput": "",
                "commitUrl": f"{self.hub.endpoint}/{repo_id}/commit/{repo.sha}",
            }
        ).encode(),
    )


class _CdnHandler(_Handler):
  """Serves LFS objects by sha256, without asking for credentials (the URL is signed)."""

  def do_GET(self):
    sha256 = urllib.parse.urlsplit(self.path).path.rsplit("/", 1)[-1]
    blob = self.hub._blobs.get(sha256)
    self.log(*(blob[:2] if blob else (None, None)))
    if blob is None:
      return self.reply(404, b"NoSuchKey", content_type="application/xml")
    data = blob[2]
    headers = {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"}
    match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
    if match and int(match.group(1)) < len(data):
      start = int(match.group(1))
      headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
      return self.reply(206, data[start:], headers, content_type="application/octet-stream")
    return self.reply(200, data, headers, content_type="application/octet-stream")

  do_HEAD = do_GET

  def do_PUT(self):
    """A presigned S3 PUT of one LFS object."""
    body = read_body(self)
    oid = urllib.parse.urlsplit(self.path).path.rsplit("/", 1)[-1]
    self.log()
    if hashlib.sha256(body).hexdigest() != oid:
      return self.reply(
          400, b"<Error><Code>BadDigest</Code></Error>", content_type="application/xml"
      )
    self.hub._uploads[oid] = body
    return self.reply(200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})


# --------------------------------------------------------------------------------------------
# Uploads (see the module docstring): the hub's write API and the CDN's presigned PUT.
# --------------------------------------------------------------------------------------------
MAX_REGULAR_FILE = 10 * 1024 * 1024  # the hub stores larger files in LFS whatever their name
DEFAULT_GITATTRIBUTES = "".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES
).encode()


def read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes:
  """The request body, sent with Content-Length or chunked (a streamed file upload)."""
  if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
    chunks = []
    while True:
      size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
      if size == 0:
        while handler.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
          pass
        return b"".join(chunks)
      chunks.append(handler.rfile.read(size))
      handler.rfile.readline()  # the CRLF after each chunk
  return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def upload_mode(path: str, sample: bytes, size: int) -> str:
  return "lfs" if is_lfs(path) or b"\0" in sample or size > MAX_REGULAR_FILE else "regular"
