"""Errors that end a run with one line (``python -m vislight`` prints them without a traceback)."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid config value; the message names the key, the value and what is allowed."""
