"""What a mistake of the user is, and how every command shows one.

A mistake of the user (a config value, a flag, a path, a missing checkpoint, bad data) is a
``UserError`` (or a FileNotFoundError, whose message names the path); a command ends on it with
``error: <one line>`` on stderr and exit status 2, without a traceback. Anything else is a bug
and keeps its traceback. Plain Python: nothing heavy is imported here, so a command reports a
flag or config mistake in well under a second.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, NoReturn

EXIT_USER_ERROR = 2


class UserError(Exception):
  """Base of every error that means "the user asked for something impossible". Its message is
  the whole explanation: what is wrong (file, line, config key, path) and what to do. An error
  with several independent problems keeps them in ``errors``, one line each."""

  errors: list[str] = []


def one_line(message: Any) -> str:
  """``message`` (text or an exception) on one line, whitespace runs collapsed."""
  if isinstance(message, KeyError) and message.args:
    message = message.args[0]  # str(KeyError) adds quotes and escapes newlines
  text = " ".join(str(message).split())
  return text or type(message).__name__


def describe(error: BaseException, limit: int = 200) -> str:
  """``Type: message`` on one line, for an exception out of a library (orbax's and
  TensorStore's messages span pages of spec JSON): the first cause with a message, cut at
  ``limit`` characters."""
  while error.__cause__ is not None and not str(error).strip():
    error = error.__cause__
  text = " ".join(str(error).split())
  if len(text) > limit:
    text = text[:limit] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def first_line(error: BaseException) -> str:
  """The first line of an exception's message (a library's detail below it dropped), or its
  type's name when it has none."""
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def is_user_error(error: BaseException) -> bool:
  return isinstance(error, (UserError, FileNotFoundError))


def error_lines(error: BaseException) -> list[str]:
  return [one_line(e) for e in getattr(error, "errors", None) or [error]]


def fail(*lines: str) -> NoReturn:
  """Prints ``error: <line>`` for each line on stderr and exits with status 2."""
  sys.stdout.flush()
  for line in lines:
    print(f"error: {one_line(line)}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def user_errors(fn: Callable) -> Callable:
  """Decorator: a user error out of ``fn`` becomes ``error: ...`` lines and exit status 2."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except Exception as e:
      if not is_user_error(e):
        raise
      fail(*error_lines(e))

  return wrapped
