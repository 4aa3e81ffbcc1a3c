"""mmsearch's retrieval core: encoders, the index, the query layer, and `SearchIndex`, its API."""
from __future__ import annotations


def __getattr__(name: str):
    # lazy, so `import retrieval.errors` stays cheap for the CLI's fast paths
    if name in ("SearchIndex", "Hit"):
        from . import api

        return getattr(api, name)
    if name == "UserError":
        from .errors import UserError

        return UserError
    raise AttributeError(name)


__all__ = ["SearchIndex", "Hit", "UserError"]
