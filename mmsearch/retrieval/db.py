"""The index's SQLite database through the standard library alone: how it is opened (its pragmas,
its read-only rules) and the reads a query makes (meta values, the hits' rows, which ids are
still stored). A one-shot query reads through this module only: SQLAlchemy (store.py: the
schema, the writes, the migrations), with its ORM, costs ~0.3 s of imports, a third of a text
query on 2 cores. The schema itself is declared once, in store.py; the columns read here are
named in `FOUND`.
"""
from __future__ import annotations

import json
import os
import sqlite3
from itertools import islice
from typing import Iterable, Iterator, NamedTuple, Sequence, TypeVar
from urllib.parse import quote

DB_NAME = "mmsearch.db"
#: the schema this release reads and writes (SQLite's ``user_version``; store.MIGRATIONS reach it)
SCHEMA_VERSION = 5
#: how long a connection waits for a lock before it fails: every connection sets it
BUSY = "PRAGMA busy_timeout=30000"
#: every writing connection's (store.open_engine): WAL, so that readers never block the
#: indexer, and vice versa. A reading connection sets only `BUSY`
PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON", BUSY)
#: most parameters in one statement (`IN (...)` lists are cut to this): SQLite allows 32,766
#: since 3.32 and 999 before
SQL_CHUNK = 30_000 if sqlite3.sqlite_version_info >= (3, 32) else 900


def database(index_dir: str) -> str:
    return os.path.join(index_dir, DB_NAME)


def read_only(index_dir: str) -> bool:
    """Whether the index is in a folder we may not write (a read-only mount, someone else's copy)."""
    return os.path.exists(database(index_dir)) and not os.access(index_dir, os.W_OK)


def uri(index_dir: str) -> str:
    """The index's database as a ``file:`` URI (sqlite3 with ``uri=True``) that never creates it:
    read-write, or read-only where `read_only`. SQLite cannot create WAL's files there: with them
    present it reads through them; without them the database file holds every commit, and it is
    opened immutable (else it could not be opened at all). The path is quoted: a ``#``, ``?`` or
    ``%`` in it would end or change the URI (``/data/ro#1`` opened ``/data/ro``)."""
    path = database(index_dir)
    if not read_only(index_dir):
        return f"file:{quote(path)}?mode=rw"
    wal = all(os.path.exists(path + suffix) for suffix in ("-wal", "-shm"))
    return f"file:{quote(path)}?mode=ro{'' if wal else '&immutable=1'}"


def connect(index_dir: str) -> sqlite3.Connection:
    """A connection to read the index at `index_dir` with (`sqlite3.Error` where it has no
    database), for the thread that opens it."""
    conn = sqlite3.connect(uri(index_dir), uri=True)
    conn.execute(BUSY)
    return conn


def prepare(conn: sqlite3.Connection) -> None:
    """Set `PRAGMAS` on a new writing connection."""
    for pragma in PRAGMAS:
        conn.execute(pragma)


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def get_metas(conn: sqlite3.Connection, *keys: str) -> dict[str, str]:
    """Several meta values read at once (one snapshot); absent keys are absent."""
    return dict(conn.execute(f"SELECT key, value FROM meta WHERE key IN ({marks(keys)})", keys).fetchall())


def as_list(value: str | None) -> list[str]:
    """A meta value that is a list of strings (JSON): "roots" (as the user gave them, a URI's
    options included), "removed" (parts of roots taken out by `SearchIndex.remove`)."""
    return json.loads(value or "[]")


T = TypeVar("T")


def chunks(items: Iterable[T], size: int = SQL_CHUNK) -> Iterator[list[T]]:
    """`items` in lists small enough to be the parameters of one statement (a stream is read a
    list at a time)."""
    it = iter(items)
    while part := list(islice(it, size)):
        yield part


def marks(values: Sequence | set) -> str:
    """The parameter marks of an ``IN (...)`` list of `values`: ``?, ?, ?``."""
    return ", ".join("?" * len(values))


class Found(NamedTuple):
    """An item as a hit shows it, with its file's path and capture metadata."""

    id: int
    file_id: int
    kind: str
    timestamp: float | None
    start: float | None
    end: float | None
    text: str | None
    offset: int | None
    link_path: str | None
    ocr: str | None
    path: str
    taken_ns: int | None
    offset_min: int | None
    taken_from: str | None
    camera: str | None
    lat: float | None
    lon: float | None


#: the table of each of `Found`'s columns (the rest: items)
_FILE_COLUMNS = {"path", "taken_ns", "offset_min", "taken_from", "camera", "lat", "lon"}
FOUND = ", ".join(f'{"files" if c in _FILE_COLUMNS else "items"}."{c}"' for c in Found._fields)


def found(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, Found]:
    """The rows of those of items `ids` still stored, by id."""
    out: dict[int, Found] = {}
    for part in chunks(ids):
        sql = f"SELECT {FOUND} FROM items JOIN files ON files.id = items.file_id WHERE items.id IN ({marks(part)})"
        out |= {row[0]: Found(*row) for row in conn.execute(sql, part)}
    return out


def stored_ids(conn: sqlite3.Connection, ids: Sequence[int] | None = None) -> list[int]:
    """Those of `ids` (default: all) whose items are still stored, in id order for all."""
    if ids is None:
        return [row[0] for row in conn.execute("SELECT id FROM items ORDER BY id")]
    live: list[int] = []
    for part in chunks(ids):
        live += (row[0] for row in conn.execute(f"SELECT id FROM items WHERE id IN ({marks(part)})", part))
    return live
