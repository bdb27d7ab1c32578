"""The base of every error a user can cause and fix (bad data, a bad file, a bad setting): command-line entry
points report these in one line (see :mod:`experiment.cli`); anything else is a bug and keeps its traceback."""
from __future__ import annotations


class UserError(Exception):
    """An expected error caused by an input or a setting; its message names the input and the problem."""


class ConfigError(UserError, ValueError):
    """A configuration value that cannot work (non-positive epochs, a fold out of range, an unsupported size)."""
