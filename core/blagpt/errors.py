"""The one exception family the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations


class BlagptError(Exception):
    """A user-facing error: its message is one line naming what was wrong and what was expected."""

    exit_code = 1


class ConfigError(BlagptError):
    """Bad configuration: a field path, what was expected and what was given. Exit code 2."""

    exit_code = 2


class DataError(BlagptError):
    """A data file that is missing, truncated or of the wrong format; the message names the file."""
