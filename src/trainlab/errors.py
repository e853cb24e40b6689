"""The two kinds of failure a user can cause, and the exit code each maps to.

Library code raises these with one sentence that says what is wrong and what to do;
the CLI prints that sentence (no traceback) and exits with `exit_code`.
"""


class TrainlabError(Exception):
    """A failure the user can act on (missing data, corrupt file, full disk...). Exit 1."""

    exit_code = 1


class ConfigError(TrainlabError, ValueError):
    """A bad command line, config file or value, caught before any work starts. Exit 2."""

    exit_code = 2


class DataError(TrainlabError):
    """The data could not be found, read or trusted."""


class StoreError(TrainlabError):
    """A file could not be written, locked or read back (full or read-only disk, a busy run)."""
