"""Error types shared by every layer.

Each error carries a message meant for a person: it names the file and what
is wrong.  The CLI maps each type to a documented exit code (see README).
"""

from __future__ import annotations


class ModelwardenError(Exception):
    """Base class for every error modelwarden raises on purpose."""

    exit_code: int = 2


class UsageError(ModelwardenError):
    """The command line or an API call was wrong (exit 2)."""


class InputError(ModelwardenError):
    """An input could not be read or is malformed (exit 2).

    ``path`` names the file at fault; the message says what is wrong with it.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = str(path)
        self.reason = message


class LimitExceeded(InputError):
    """An input exceeded a safety bound (size, depth, count, ratio)."""


class PolicyError(ModelwardenError):
    """A policy file is invalid (exit 2)."""
