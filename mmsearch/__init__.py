"""mmsearch: cross-modal search over your images, videos and texts.

    from mmsearch import SearchIndex

The public API is `SearchIndex` with the typed option sets it takes (`SearchRequest`,
`IndexOptions`) and the `Hit`s it returns; `UserError` is every error that is the caller's to fix.
Layers, each importing only those before it: `media` (file kinds and decoding) → `retrieval`
(encoders, store, FAISS index, queries) → `indexer` (walk, plan, embed, commit) → `SearchIndex`
(`api.py`) → the shells in `cli` (command line, HTTP server).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# imported on first use, so that `import mmsearch.errors` (or the CLI's --help) stays cheap
_LAZY = {"SearchIndex": "api", "Hit": "retrieval.search", "SearchRequest": "retrieval.request",
         "IndexOptions": "indexer.options", "Summary": "indexer.run", "UserError": "errors"}

if TYPE_CHECKING:
    from .api import SearchIndex
    from .errors import UserError
    from .indexer.options import IndexOptions
    from .indexer.run import Summary
    from .retrieval.request import SearchRequest
    from .retrieval.search import Hit


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mmsearch' has no attribute {name!r}")


__all__ = ["Hit", "IndexOptions", "SearchIndex", "SearchRequest", "Summary", "UserError"]
