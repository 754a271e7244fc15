"""Whether a checkpoint name is a Hugging Face hub id or a path: one rule for the whole program.

train.py checks the config (config_validation), asks whether the hub answers (runtime.check_hub) and
then loads the checkpoint (pretrained.resolve). All three read ``model.pretrained`` and
``data.tokenizer`` with ``is_hub_id`` below, so a mistyped local path is reported as a missing
directory everywhere instead of becoming a hub lookup in one place. Only the standard library is
imported: config_validation and cli run this before JAX or huggingface_hub start.
"""

from __future__ import annotations

import os
import re
from typing import Optional

# Seconds to wait for the Hugging Face hub to answer before treating it as unreachable.
HUB_TIMEOUT_S = float(os.environ.get("T5VAE_HUB_TIMEOUT", "10"))
# Why huggingface_hub is offline, when runtime.check_hub put it there (None: HF_HUB_OFFLINE was set
# by the user); pretrained's error for a hub id missing from the cache says it.
offline_reason: Optional[str] = None

# huggingface_hub's repo id grammar (utils/_validators.py): "[namespace/]name", each part of
# ASCII letters, digits, '_', '-' and '.', starting and ending with a letter, digit or '_'; no
# "--" or "..", no ".git" ending; at most 96 characters.
_PART = r"\w(?:[\w.-]*\w)?"
_REPO_ID = re.compile(rf"(?:{_PART}/)?{_PART}", re.ASCII)
_REPO_ID_MAX_LEN = 96


def is_hub_id(name) -> bool:
  """True for ``org/name`` or ``name`` that is no local path; False for a path.

  A path: ``~...`` (expanded: ``~/ckpt/t5-small`` is local), any ``scheme://...`` (gs://),
  anything that exists here, anything starting with ``/``, ``./`` or ``../``, and anything
  with more than one ``/`` or characters a hub id cannot hold. "" (no checkpoint) is neither:
  False.
  """
  name = str(name)
  if not name or is_remote(name) or name.startswith("~"):
    return False
  if name in (".", "..") or name.startswith(("/", "./", "../")) or os.path.exists(name):
    return False
  return (
      len(name) <= _REPO_ID_MAX_LEN
      and _REPO_ID.fullmatch(name) is not None
      and "--" not in name
      and ".." not in name
      and not name.endswith(".git")
  )


def is_remote(path) -> bool:
  """Whether ``path`` is a URL (gs://, s3://...) rather than a local path."""
  return "://" in os.fspath(path)


def absolute(path) -> str:
  """A local path made absolute (orbax and TFDS want absolute paths); gs:// etc. left alone."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def local_path(name) -> str:
  """``name`` with ``~`` expanded; URLs (gs://...) unchanged."""
  name = str(name)
  return name if is_remote(name) else os.path.expanduser(name)
