"""Errors the user must fix: a path, a flag, a config field, a file.

Entry points (`nwt_jax.train`, `nwt_jax.tokenize`, `nwt_jax.generate`) print a `UserError` as one
`error: ...` line and exit 1, without a traceback; any other exception is a bug and keeps its
traceback. The two concrete classes also subclass the builtin a caller would expect, so
`except ValueError` / `except FileNotFoundError` keep working.
"""


class UserError(Exception):
  """Input the user must fix; the message says what is wrong and what to do."""


class InvalidInput(UserError, ValueError):
  """A value (flag, config field, file content) that cannot be used."""


class MissingInput(UserError, FileNotFoundError):
  """A path the job needs does not exist."""


class GenerateError(UserError, ValueError):
  """Input the generator cannot use (a control, an audio file, a pair of workdirs)."""
