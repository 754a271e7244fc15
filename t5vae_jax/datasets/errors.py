"""The data error type, in a module of its own so that builders.py and download.py can both raise
it (builders.DataError is this class; every command shows it as one `error:` line, exit 2)."""

from t5vae_jax.errors import UserError


class DataError(UserError, ValueError):
  """The data cannot be used as it is; the message names the file (and line) and what to do."""
