"""File fingerprints and path encoding shared by the indexer and the encoders."""
from __future__ import annotations

import hashlib
import os
import re

_CHUNK = 1 << 20
#: files above this are fingerprinted from sampled chunks + size (videos, big checkpoints).
FULL_HASH_LIMIT = 64 << 20


def file_digest(path: str | os.PathLike | bytes) -> str:
    """Content hash used to recognise renamed and duplicate files.

    Small files are hashed whole; large ones from their size and evenly spaced 1 MiB samples,
    which is enough to tell real files apart at a tiny fraction of the I/O.
    """
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= FULL_HASH_LIMIT:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            for i in range(16):
                f.seek((size - _CHUNK) * i // 15)
                h.update(f.read(_CHUNK))
    return h.hexdigest()


#: a URI's scheme (`s3://`, `file://`, `gs://`): a root so written is listed and fetched through
#: pyarrow.fs (media/fetch.py), not walked and opened as a path
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path: str | bytes) -> bool:
    return _SCHEME.match(os.fsdecode(path)) is not None


def location(path: str) -> str:
    """Where a root lies, as the stored paths of its files begin: a local path made absolute; a
    URI without what is the filesystem's options, never the object's name (media/fetch.py): its
    query, credentials (``s3://KEY:SECRET@bucket``) and trailing slash."""
    if not is_uri(path):
        return os.path.abspath(path)
    scheme, _, rest = path.partition("?")[0].partition("://")
    authority, slash, rest = rest.partition("/")
    rest = authority.rpartition("@")[2] + slash + rest
    return f"{scheme}://{rest.rstrip('/') if rest.strip('/') else rest}"


def under(path: str | bytes, roots) -> bool:
    """Whether a path is one of `roots` or lies inside one (compared as bytes, like the store's
    keys; a URI by its `location`). A root given as bytes is taken exactly: a stored object's key
    may hold a `?` that `location` would take for the start of a root's options."""
    key = path if isinstance(path, bytes) else os.fsencode(location(path) if is_uri(path) else path)
    for root in roots:
        r = root if isinstance(root, bytes) else os.fsencode(location(root))
        if key == r or key.startswith(r.rstrip(b"/") + b"/"):
            return True
    return False


def display_path(path: str) -> str:
    """A printable form of a path whose bytes may not be valid UTF-8."""
    return os.fsencode(path).decode("utf-8", errors="replace")
