"""Errors that are the user's to fix: the CLI prints their message on one line, no traceback."""


class UserError(Exception):
    pass


class ModelLoadError(UserError):
    """A model could not be loaded; the message says what to do about it."""
