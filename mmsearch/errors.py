"""Errors that are the user's to fix: the CLI prints their message on one line (exit 2, no
traceback) and the HTTP server answers 400 with it."""
from __future__ import annotations


class UserError(Exception):
    pass


class ModelLoadError(UserError):
    """A model could not be loaded; the message says what to do about it."""


class IndexBusy(UserError):
    """Another process is writing to the index (the command line exits with its own code, 3)."""

