"""The errors a user can fix: the command-line programs show their message, not a traceback.

Every error rein-d2 raises on purpose (a missing dataset, a weights file that does not fit,
a config value out of range, ...) derives from `ReinD2Error` and says what is wrong, where,
and how to fix it. Each also derives from the built-in type a caller would expect
(ValueError, FileNotFoundError, ...), so `except ValueError` keeps working.
"""
from __future__ import annotations


class ReinD2Error(Exception):
    """Base of the errors whose message is meant for the user."""

    def __str__(self) -> str:
        # KeyError quotes its message (repr); a user-facing message is shown as written.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ConfigError(ReinD2Error, ValueError):
    """A config key that does not exist, or a value the code cannot honour."""


class ConfigKeyError(ReinD2Error, KeyError):
    """A name in the config that no registry knows (backbone, decoder, refinement, ...)."""
