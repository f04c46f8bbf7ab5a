"""Exceptions with a meaning for the command line (kept apart so `python -m` works)."""


class UsageError(Exception):
    """Bad arguments or configuration: the command exits with status 2."""
