"""Where mmsearch keeps things by default: the index, and the cache of what it can rebuild.
(A leaf module, light to import: the command line reads it before anything heavy.)"""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def default_index_dir() -> str:
    return os.environ.get("MMSEARCH_INDEX") or os.path.join(platformdirs.user_data_dir("mmsearch"), "index")


def cache_root() -> Path:
    """Model exports (models/) and training features (features/); `$MMSEARCH_CACHE` moves it."""
    return Path(os.environ.get("MMSEARCH_CACHE") or platformdirs.user_cache_dir("mmsearch"))
