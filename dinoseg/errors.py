"""The one exception type for bad user input.

`UserError` means "the user gave something that cannot work" (a missing or corrupt file, a wrong
config value, a busy port, a workdir in use): the CLI prints its message as one line and exits
with status 2, never a traceback. Everything else is a bug in dinoseg: the CLI lets it propagate
(traceback, exit status 1). Raise `UserError` (or a subclass) only where the cause is the input.

The subclasses below are also the built-in exception that fits, so code (and tests) that catch
`ValueError` / `FileNotFoundError` keep working where a raise site becomes a user error.
"""


class UserError(Exception):
  """Bad user input: the message is shown as one line (whitespace collapsed), exit status 2."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))


class UserValueError(UserError, ValueError):
  """A value the user gave (a flag, a config setting, a file's content) that cannot work."""


class UserFileNotFoundError(UserError, FileNotFoundError):
  """A file or directory the user named does not exist."""


__all__ = ["UserError", "UserValueError", "UserFileNotFoundError"]
