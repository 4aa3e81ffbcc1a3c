"""Mark and sweep: compare what is on disk with what the store holds.

Unchanged files (same size and mtime) cost nothing. New and changed files are hashed; those whose
content the store already has (renamed, duplicated, or only touched) reuse its vectors. The rest
need decoding and embedding, as do unchanged captions whose image has moved (their link is stale).

The scan is read once, a part at a time, each part compared with the store's rows for its paths;
of what it found the plan keeps a 64-bit hash a file (what was not seen is swept) and the files
to hash and embed. A rescan of 100M unchanged files then holds ~0.8 GB, not ~43 GB of entries
and keys.

Objects under a URI root are not hashed here: that would download every new object to this
machine (at 100M objects, the archive). They are planned with no digest ("") and hashed where
their bytes are fetched for decoding (embed.decode, on this machine or a Ray node); so a renamed
object is embedded again rather than reused.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session
from tqdm import tqdm

from ..media.errors import may_pass_later, os_reason
from ..media.files import display_path, file_digest, is_uri, under
from ..media.kinds import is_table
from ..retrieval.db import SQL_CHUNK, chunks
from ..retrieval.store import DIGEST_KEY, File, Item, digest_prefix, files_by_key, stored_keys
from .scan import FOLDER, Entry


@dataclass
class Plan:
    unchanged: int = 0
    broken: list[Entry] = field(default_factory=list)  # exists but unusable (broken link, ...)
    reuse: list[tuple[Entry, str, list[Item]]] = field(default_factory=list)  # entry, digest, source items
    embed: list[tuple[Entry, str]] = field(default_factory=list)  # entry, digest
    remove: list[int] = field(default_factory=list)  # file ids gone from disk
    new_paths: set[bytes] = field(default_factory=set)  # keys not in the store before this run
    unreadable: list[tuple[Entry, str]] = field(default_factory=list)


#: scanned files compared with the store at a time: the plan holds one such part of the scan (and
#: the files to embed), never the whole of it. A part ends only where a folder does (`_parts`)
PART = SQL_CHUNK


def make_plan(session: Session, entries: Iterable[Entry], roots: list[str], workers: int, progress: bool) -> Plan:
    """The plan for the scan `entries` (read once, a part at a time) against the store."""
    plan = Plan()
    seen = _Seen()
    todo: list[Entry] = []
    unlisted: list[str] = []  # folders that could not be listed: their files are kept as they are, not swept
    captions: dict[str, list[str]] | None = None  # the stored captions' image paths by stem, read at need
    for part in _parts(entries, PART):
        keys = [e.key for e in part]
        stored = files_by_key(session, keys)
        seen.add(keys)
        texts: list[Entry] = []  # unchanged text files
        for e in part:
            row = stored.get(e.key)  # (id, size, mtime_ns, status, error)
            if e.kind == FOLDER:
                unlisted.append(e.path)
            if e.error:
                if not (row and row[3] == "skipped" and row[4] == e.error):
                    plan.broken.append(e)
                else:
                    plan.unchanged += 1
            elif row and row[1] == e.size and row[2] == e.mtime_ns and not may_pass_later(row[4]):
                plan.unchanged += 1
                if e.kind == "text" and not is_table(e.path) and not is_uri(e.path):  # (tables link by column, objects never: text.py)
                    texts.append(e)
            else:
                todo.append(e)
                if not row:
                    plan.new_paths.add(e.key)
        if texts:
            captions = _captions(session) if captions is None else captions
            for e in _relinked(texts, part, captions):
                plan.unchanged -= 1
                todo.append(e)
    plan.remove = [i for k, i in seen.unseen(stored_keys(session)) if under(k, roots) and not under(k, unlisted)]

    def digest(e: Entry) -> tuple[Entry, str | None, str | None]:
        try:
            return e, file_digest(e.path), None
        except OSError as err:
            return e, None, os_reason(err)

    objects = [e for e in todo if is_uri(e.path)]  # hashed where they are fetched (module doc)
    todo = [e for e in todo if not is_uri(e.path)] if objects else todo
    with ThreadPoolExecutor(max(1, workers)) as pool:
        hashed = list(tqdm(pool.map(digest, todo), total=len(todo), desc="hashing", unit="file", disable=not progress or not todo, leave=False))
    hashed += [(e, "", None) for e in objects]
    digests = {d for _, d, _ in hashed if d}
    sources = _items_by_digest(session, digests)
    for e, d, err in hashed:
        if err:
            plan.unreadable.append((e, err))
        elif d in sources and e.kind != "text":  # texts re-embed cheaply, and their links depend on place
            plan.reuse.append((e, d, sources[d]))
        else:
            plan.embed.append((e, d))
    return plan


def _parts(entries: Iterable[Entry], size: int) -> Iterator[list[Entry]]:
    """`entries` in lists of about `size`, each ending where a folder does (the scan lists a
    folder's files together), so that a caption and the image beside it are in one part."""
    part: list[Entry] = []
    for e in entries:
        if len(part) >= size and os.path.dirname(e.path) != os.path.dirname(part[-1].path):
            yield part
            part = []
        part.append(e)
    if part:
        yield part


class _Seen:
    """The path keys a scan found, as 64-bit hashes (Python's `hash`, seeded anew in every
    process): 8 bytes a file, where a set of the keys took ~100 and the scan's list of entries
    ~334 more (100M files: ~43 GB). A stored key that is not among them but has the hash of one
    (a chance of one in 2^64 per pair) is swept by a later run instead of this one."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

    def add(self, keys: list[bytes]) -> None:
        self.parts.append(np.fromiter(map(hash, keys), np.int64, len(keys)))

    def unseen(self, stored: Iterable[tuple[bytes, int]]) -> Iterator[tuple[bytes, int]]:
        """The (key, id) of `stored` whose key was not seen."""
        found = np.sort(np.concatenate(self.parts)) if self.parts else np.zeros(0, np.int64)
        for rows in chunks(stored, PART):
            hashes = np.fromiter((hash(k) for k, _ in rows), np.int64, len(rows))
            at = np.minimum(np.searchsorted(found, hashes), max(len(found) - 1, 0))
            hit = found[at] == hashes if len(found) else np.zeros(len(rows), bool)
            yield from (row for row, h in zip(rows, hit) if not h)


def _captions(session: Session) -> dict[str, list[str]]:
    """The image paths stored captions link to, by stem (path without extension). Read from the
    link_path index alone, never the items' rows (which hold the vectors)."""
    by_stem: dict[str, list[str]] = {}
    for p in session.scalars(select(Item.link_path).where(Item.link_path.is_not(None)).distinct()):
        if p:
            by_stem.setdefault(os.path.splitext(p)[0], []).append(p)
    return by_stem


def _relinked(texts: list[Entry], part: list[Entry], captions: dict[str, list[str]]) -> list[Entry]:
    """Unchanged caption files whose image has gone (renamed, removed) or appeared beside them:
    their items' link to it is out of date, so they are embedded again (texts are cheap). Their
    images are in `part`, beside them; `captions` as `_captions` reads them. Paths compared as
    links store them: as shown (`display_path`: a name that is not UTF-8 has replacement signs)."""
    media: dict[str, set[str]] = {}
    for e in part:
        if e.kind in ("image", "video") and not e.error:
            media.setdefault(os.path.splitext(shown := display_path(e.path))[0], set()).add(shown)
    out = []
    for e in texts:
        stem = os.path.splitext(display_path(e.path))[0]
        linked = captions.get(stem, [])
        gone = any(p not in media.get(stem, ()) and not os.path.isfile(p) for p in linked)
        if gone or (stem in media and not media[stem] & set(linked)):
            out.append(e)
    return out


def _items_by_digest(session: Session, digests: set[str]) -> dict[str, list[Item]]:
    """For each digest, the items of one stored file with that content (any one will do)."""
    out: dict[str, list[Item]] = {}
    for part in chunks(sorted(digests)):
        # (the index holds the digests' first bytes: asked by those, then compared whole, here:
        # both lists in the statement took twice the parameters SQLite allows)
        rows = session.scalars(select(File).where(DIGEST_KEY.in_([digest_prefix(d) for d in part]), File.status == "ok"))
        for f in rows:
            if f.digest in digests and f.digest not in out and f.items:
                out[f.digest] = list(f.items)
    return out
