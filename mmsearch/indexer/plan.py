"""Mark and sweep: compare what is on disk with what the store holds.

Unchanged files (same size and mtime) cost nothing. New and changed files are hashed; those whose
content the store already has (renamed, duplicated, or only touched) reuse its vectors. The rest
need decoding and embedding, as do unchanged captions whose image has moved (their link is stale).

Objects under a URI root are not hashed here: that would download every new object to this
machine (at 100M objects, the archive). They are planned with no digest ("") and hashed where
their bytes are fetched for decoding (embed.decode, on this machine or a Ray node); so a renamed
object is embedded again rather than reused.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session
from tqdm import tqdm

from ..media.errors import may_pass_later, os_reason
from ..media.files import file_digest, is_uri, under
from ..media.kinds import is_table
from ..retrieval.db import chunks
from ..retrieval.store import File, Item, files_by_key, stored_keys
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


def make_plan(session: Session, entries: list[Entry], roots: list[str], workers: int, progress: bool) -> Plan:
    plan = Plan()
    seen: set[bytes] = set()
    todo: list[Entry] = []
    texts: list[Entry] = []  # unchanged text files
    for part in chunks(entries):  # the stored rows of a chunk of the scan at a time
        stored = files_by_key(session, [e.key for e in part])
        for e in part:
            seen.add(e.key)
            row = stored.get(e.key)  # (id, size, mtime_ns, status, error)
            if e.error:
                if not (row and row[3] == "skipped" and row[4] == e.error):
                    plan.broken.append(e)
                else:
                    plan.unchanged += 1
            elif row and row[1] == e.size and row[2] == e.mtime_ns and not may_pass_later(row[4]):
                plan.unchanged += 1
                if e.kind == "text":
                    texts.append(e)
            else:
                todo.append(e)
                if not row:
                    plan.new_paths.add(e.key)
    for e in _relinked(session, texts, entries):
        plan.unchanged -= 1
        todo.append(e)
    # files under a folder that could not be listed are kept as they are, not swept
    unlisted = [e.path for e in entries if e.kind == FOLDER]
    plan.remove = [i for k, i in stored_keys(session) if k not in seen and under(k, roots) and not under(k, unlisted)]

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


def _relinked(session: Session, texts: list[Entry], entries: list[Entry]) -> list[Entry]:
    """Unchanged caption files whose image has gone (renamed, removed) or appeared beside them:
    their items' link to it is out of date, so they are embedded again (texts are cheap). Read
    from the link_path index alone, never the items' rows (which hold the vectors)."""
    texts = [e for e in texts if not is_table(e.path) and not is_uri(e.path)]  # tables link by column; objects never (text.py)
    if not texts:
        return []
    media: dict[str, set[str]] = {}
    for e in entries:
        if e.kind in ("image", "video") and not e.error:
            media.setdefault(os.path.splitext(e.path)[0], set()).add(e.path)
    linked = {p for p in session.scalars(select(Item.link_path).where(Item.link_path.is_not(None)).distinct()) if p}
    scanned = set().union(*media.values())
    gone = {os.path.splitext(p)[0] for p in linked - scanned if not os.path.isfile(p)}
    return [e for e in texts if (stem := os.path.splitext(e.path)[0]) in gone
            or (stem in media and not media[stem] & linked)]


def _items_by_digest(session: Session, digests: set[str]) -> dict[str, list[Item]]:
    """For each digest, the items of one stored file with that content (any one will do)."""
    out: dict[str, list[Item]] = {}
    for part in chunks(sorted(digests)):
        rows = session.scalars(select(File).where(File.digest.in_(part), File.status == "ok"))
        for f in rows:
            if f.digest and f.digest not in out and f.items:
                out[f.digest] = list(f.items)
    return out
