"""The two kinds of failure the CLI reports, each with its exit code."""


class ScaffoldError(Exception):
    """A runtime failure or conflict: exit code 1."""

    exit_code = 1


class UsageError(ScaffoldError):
    """Bad input from the user: exit code 2."""

    exit_code = 2
