"""The data error type, in a module of its own so that builders.py and download.py can both raise
it (builders.DataError is this class; the CLI turns it into one `error:` line and exit 2)."""


class DataError(ValueError):
  """The data cannot be used as it is; the message names the file (and line) and what to do."""
