"""SQLite metadata store (through SQLAlchemy): source files, embedded items and their vectors.

The database is the source of truth: vectors live here too, so any FAISS index can be rebuilt
without re-embedding, and every change is one SQLite transaction — a killed process leaves the
last committed state. The schema version is SQLite's ``user_version``; `MIGRATIONS[i]` takes a
database from version i to i+1.
"""
from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from sqlalchemy import (
    Computed,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    create_engine,
    event,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy import (
    Index as SqlIndex,
)
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.schema import CreateIndex, CreateTable

from ..errors import UserError
from . import lexical
from .db import SCHEMA_VERSION, SQL_CHUNK, as_list, chunks, database, marks, prepare, read_only, stored_ids, uri
from .vectors import DIR as VECTORS_DIR
from .vectors import Segments, opened


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Digest(TypeDecorator):
    """A content digest: hex in Python, its 16 bytes in the database (half of 32 hex characters,
    in the row and again in its index). Anything that is not hex is stored as given."""

    impl = LargeBinary
    cache_ok = True

    @staticmethod
    def stored(value: Any) -> Any:
        if isinstance(value, str):
            try:
                return bytes.fromhex(value)
            except ValueError:
                return value
        return value

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return self.stored(value)

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return value.hex() if isinstance(value, bytes) else value


def raw_key(key: bytes, path: str) -> bytes | None:
    """What `File.raw_key` holds for a path's bytes `key` displayed as `path`: the bytes when
    they are not the display path's UTF-8 (a path that is not UTF-8), else NULL."""
    # (a path decoded without a replacement character is its bytes' UTF-8: no need to encode it)
    return None if "\ufffd" not in path or path.encode() == key else key


class File(Base):
    """One source file on disk. ``path`` is the path for display (UTF-8; a path that is not
    valid UTF-8 has replacement characters there and its exact bytes in ``raw_key``);
    ``path_key`` the exact path bytes, computed from those two (schema v5: stored once, not
    twice, and in one index, not two)."""

    __tablename__ = "files"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text, index=True)
    raw_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    path_key: Mapped[bytes] = mapped_column(LargeBinary, Computed("coalesce(raw_key, CAST(path AS BLOB))", persisted=False))
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str | None] = mapped_column(Digest)  # (indexed by its first bytes: DIGEST_INDEX)
    kind: Mapped[str] = mapped_column(String)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String, default="ok")  # ok | skipped
    error: Mapped[str | None] = mapped_column(Text)
    # capture metadata (media/capture.py), read as the file is decoded, else after embedding
    # (annotate.py); taken_from NULL: not read yet
    taken_ns: Mapped[int | None] = mapped_column(Integer)
    offset_min: Mapped[int | None] = mapped_column(Integer)
    taken_from: Mapped[str | None] = mapped_column(String)
    camera: Mapped[str | None] = mapped_column(String)
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    items: Mapped[list[Item]] = relationship(back_populates="file", cascade="all, delete-orphan", passive_deletes=True)

    @property
    def fs_path(self) -> str:
        return os.fsdecode(self.path_key)


class Item(Base):
    """One embedded unit of a file: an image, a video keyframe (timestamp and shot start/end) or
    a text passage or table row (text and offset)."""

    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String)
    timestamp: Mapped[float | None] = mapped_column(Float)
    start: Mapped[float | None] = mapped_column(Float)
    end: Mapped[float | None] = mapped_column(Float)
    text: Mapped[str | None] = mapped_column(Text)
    offset: Mapped[int | None] = mapped_column(Integer)
    #: for a caption: the image it describes (a sidecar .txt, or a table's path column)
    link_path: Mapped[str | None] = mapped_column(Text)
    #: an image's text read by OCR, as JSON [[text, [x0, y0, ... x3, y3], score], ...]; NULL: not read
    ocr: Mapped[str | None] = mapped_column(Text)
    # its vector lives in the segment files, at its id (vectors.py)
    file: Mapped[File] = relationship(back_populates="items")


class Tag(Base):
    """A zero-shot label of an image or video, with its score (`mmsearch tag`)."""

    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String, index=True)
    score: Mapped[float] = mapped_column(Float)


# indexes of columns that are mostly NULL hold only their other rows (10 B an item saved each)
SqlIndex("ix_files_lat", File.lat, sqlite_where=File.lat.is_not(None))
SqlIndex("ix_items_link_path", Item.link_path, sqlite_where=Item.link_path.is_not(None))
# the files whose capture metadata is still to be read: every run asks (annotate.py), and without
# this a watch update read the whole files table to find the few it had just written
SqlIndex("ix_files_unread", File.id, sqlite_where=File.taken_from.is_(None))
# (text files have no capture time; range filters imply NOT NULL, so SQLite still uses it)
SqlIndex("ix_files_taken_ns", File.taken_ns, sqlite_where=File.taken_ns.is_not(None))
#: the content digests' index. Only a run's plan reads it (content stored already is reused), and
#: digests are random: each new file lands on a random page of it, which a transaction dirties and
#: writes again. A bulk merge builds it after storing instead (`run.digests_after`; 3M files
#: through `commit_batch`: 49.6k → 73.6k items/s, its 2.0 s rebuild included); a run killed
#: meanwhile leaves it missing, and the next run's plan makes it first (`ensure_digest_index`).
#: It holds a digest's first 8 bytes, not all 16: it only finds candidates, which the plan then
#: compares whole (another file's content matching the 8 bytes is a chance in 2^64), and it took
#: 25.2 B an item of the ~300 (1M files, `dbstat`; 8 bytes: ~17)
DIGEST_PREFIX = 8
#: (literal numbers: SQLite uses an index on an expression only for that very expression, and
#: `substr(digest, ?, ?)` is another one)
DIGEST_KEY = func.substr(File.digest, literal_column("1"), literal_column(str(DIGEST_PREFIX)))
DIGEST_INDEX = SqlIndex("ix_files_digest8", DIGEST_KEY)


def digest_prefix(digest: str) -> bytes | str:
    """What DIGEST_INDEX holds for `digest` (hex, as `Digest` takes it)."""
    return Digest.stored(digest)[:DIGEST_PREFIX]


def ensure_digest_index(session: Session) -> None:
    conn = session.connection()
    conn.execute(text("DROP INDEX IF EXISTS ix_files_digest"))  # all 16 bytes, as indexes before 2026-12-05 had it
    conn.execute(CreateIndex(DIGEST_INDEX, if_not_exists=True))  # (SQLAlchemy sees no index on an expression)


def _v1(conn: Connection) -> None:
    Base.metadata.create_all(conn)  # creates the current schema; later steps skip what exists


def _v2(conn: Connection) -> None:
    """Captions linked to images, and zero-shot tags."""
    columns = {row[1] for row in conn.execute(text("PRAGMA table_info(items)"))}
    if "link_path" not in columns:
        conn.execute(text("ALTER TABLE items ADD COLUMN link_path TEXT"))
    Base.metadata.tables["tags"].create(conn, checkfirst=True)


def _v3(conn: Connection) -> None:
    """Capture metadata, OCR text, and the lexical index (filled from the items already stored)."""
    for table, column, kind in [("files", "taken_ns", "INTEGER"), ("files", "offset_min", "INTEGER"),
                                ("files", "taken_from", "VARCHAR"), ("files", "camera", "VARCHAR"),
                                ("files", "lat", "FLOAT"), ("files", "lon", "FLOAT"), ("items", "ocr", "TEXT")]:
        if column not in {row[1] for row in conn.execute(text(f"PRAGMA table_info({table})"))}:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_files_taken_ns ON files (taken_ns)"))
    for ddl in lexical.DDL:
        conn.execute(text(ddl))
    rows = conn.execute(select(Item.id, Item.file_id, Item.text, File.path).join(File).order_by(Item.file_id, Item.id))
    last = None
    for part in rows.partitions(SQL_CHUNK // 3):
        batch = []
        for item_id, file_id, body, path in part:
            batch.append((item_id, lexical.name_text(path) if file_id != last else "", body or ""))
            last = file_id
        lexical.add_rows(conn, batch)


def _v4(conn: Connection) -> None:
    """Vectors leave the items' rows for segment files (vectors.py), in id order."""
    for name, table, column in [("ix_files_lat", "files", "lat"), ("ix_items_link_path", "items", "link_path")]:
        conn.execute(text(f"DROP INDEX IF EXISTS {name}"))
        conn.execute(text(f"CREATE INDEX {name} ON {table} ({column}) WHERE {column} IS NOT NULL"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_files_unread ON files (id) WHERE taken_from IS NULL"))
    if "vector" not in {row[1] for row in conn.execute(text("PRAGMA table_info(items)"))}:
        return  # a database created at v4
    dim = conn.execute(text("SELECT value FROM meta WHERE key = 'dim'")).scalar()
    first = conn.execute(text("SELECT min(id) FROM items")).scalar()
    if first is not None:
        store = Segments(os.path.join(_folder(conn.engine), VECTORS_DIR), int(dim or 0), int(first))
        store.clear()  # (what an interrupted earlier attempt left)
        rows = conn.execute(text("SELECT id, vector FROM items ORDER BY id"))
        for part in rows.partitions(50_000):
            ids = np.array([r[0] for r in part], np.int64)
            vecs = np.frombuffer(b"".join(r[1] for r in part), np.float32).reshape(len(part), -1)
            if store.dim == 0:
                store.dim = vecs.shape[1]
            # rows in runs of consecutive ids (deleted items leave gaps)
            breaks = np.nonzero(np.diff(ids) != 1)[0] + 1
            for run_ids, run in zip(np.split(ids, breaks), np.split(vecs, breaks)):
                store.put(int(run_ids[0]), run)
        conn.execute(text("INSERT OR REPLACE INTO meta (key, value) VALUES ('vectors_base', :b)"), {"b": str(first)})
    conn.execute(text("ALTER TABLE items DROP COLUMN vector"))


def _v5(conn: Connection) -> None:
    """Metadata per item from ~404 to under 300 bytes (10M items): the files table rebuilt with the
    path stored once (``path_key`` computed from it: it was stored twice, as text and as bytes,
    each with its own index), digests as 16 bytes instead of 32 hex characters, and capture times
    indexed only where there is one. SQLite cannot change a column in place; the new table is
    filled from the old, which is then dropped. Foreign keys are off meanwhile, else dropping the
    old table would delete every item by cascade; `open_engine` discards the connection after."""
    if "raw_key" in {row[1] for row in conn.execute(text("PRAGMA table_info(files)"))}:
        return  # a database created at v5
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    if dbapi.in_transaction:  # the earlier steps, each with its user_version: a consistent state
        dbapi.commit()
    dbapi.execute("PRAGMA foreign_keys=OFF")
    if dbapi.execute("PRAGMA foreign_keys").fetchone()[0]:
        raise RuntimeError("cannot turn foreign keys off to migrate the files table")
    dbapi.execute("BEGIN")
    dbapi.create_function("mm_digest", 1, Digest.stored, deterministic=True)
    conn.execute(text("DROP TABLE IF EXISTS files_v5"))
    table = Base.metadata.tables["files"]
    conn.execute(text(str(CreateTable(table).compile(conn)).replace("CREATE TABLE files", "CREATE TABLE files_v5", 1)))
    same = [c.name for c in table.columns if c.name not in ("raw_key", "path_key", "digest")]
    conn.execute(text(f"INSERT INTO files_v5 ({', '.join(same)}, raw_key, digest) SELECT {', '.join(same)}, "
                      "CASE WHEN CAST(path AS BLOB) = path_key THEN NULL ELSE path_key END, mm_digest(digest) FROM files"))
    conn.execute(text("DROP TABLE files"))
    conn.execute(text("ALTER TABLE files_v5 RENAME TO files"))
    for index in table.indexes:
        index.create(conn)
    if conn.execute(text("PRAGMA foreign_key_check")).first() is not None:
        raise RuntimeError("the files table lost rows its items refer to")


MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2, _v3, _v4, _v5]
assert len(MIGRATIONS) == SCHEMA_VERSION


def open_engine(index_dir: str) -> Engine:
    """The index's database, migrated to this release's schema; read-only where `db.read_only`
    says so (connected through `db.uri`)."""
    writable = not read_only(index_dir)
    url = URL.create("sqlite", database=database(index_dir))  # (not parsed: a '?' or '#' in the path is the path's)
    if writable:
        engine = create_engine(url)
        event.listen(engine, "connect", lambda dbapi_conn, _: prepare(dbapi_conn))
    else:
        engine = create_engine(url, creator=lambda: sqlite3.connect(uri(index_dir), uri=True, check_same_thread=False))

    with engine.begin() as conn:
        version = conn.execute(text("PRAGMA user_version")).scalar_one()
        if version > SCHEMA_VERSION:
            raise UserError(f"index schema v{version} is newer than this mmsearch (v{SCHEMA_VERSION}); upgrade mmsearch")
        if version < SCHEMA_VERSION and not writable:
            raise UserError(f"index {index_dir} is read-only and needs an upgrade to schema v{SCHEMA_VERSION}: "
                            "open it once where it is writable")
        for v in range(version, SCHEMA_VERSION):
            MIGRATIONS[v](conn)
            conn.execute(text(f"PRAGMA user_version={v + 1}"))
    if version < SCHEMA_VERSION:
        engine.dispose()  # (a migration may have left its connection with foreign keys off)
    return engine


def get_meta(session: Session, key: str) -> str | None:
    row = session.get(Meta, key)
    return row.value if row else None


def set_meta(session: Session, key: str, value: str) -> None:
    session.merge(Meta(key=key, value=value))


def get_list(session: Session, key: str) -> list[str]:
    return as_list(get_meta(session, key))


def set_list(session: Session, key: str, values: Iterable[str]) -> None:
    set_meta(session, key, json.dumps(sorted(values)))


def next_item_id(session: Session) -> int:
    """The first item id never handed out (committed), from the meta table, or past the largest
    stored id in an index older than that record."""
    return int(get_meta(session, "next_item_id") or (session.scalar(select(func.max(Item.id))) or 0) + 1)


def bump_generation(session: Session) -> None:
    """Mark that the item set changed; cached FAISS files of older generations are stale."""
    set_meta(session, "generation", str(int(get_meta(session, "generation") or 0) + 1))


def _folder(bind: Engine | Connection) -> str:
    """The index folder of a database connection."""
    engine = bind.engine if isinstance(bind, Connection) else bind
    return os.path.dirname(str(engine.url.database))


def segments(session: Session) -> Segments:
    """The vector store of the session's index."""
    return opened(_folder(session.get_bind()), get_meta(session, "dim"), get_meta(session, "vectors_base"))


def put_vectors(session: Session, first_id: int, vectors: np.ndarray) -> None:
    """Store the vectors of items `first_id`, `first_id` + 1, ... (before their rows commit)."""
    segments(session).put(first_id, vectors)


def load_vectors(session: Session) -> tuple[np.ndarray, np.ndarray]:
    """All (ids, vectors) in the store, for building a FAISS index."""
    ids = np.array(session.scalars(select(Item.id).order_by(Item.id)).all(), np.int64)
    if not len(ids):
        return ids, np.zeros((0, 0), np.float32)
    return ids, segments(session).get(ids)


def vectors_by_id(session: Session, ids: list[int]) -> dict[int, np.ndarray]:
    """The stored vectors of `ids` (ids no longer stored are absent)."""
    live = stored_ids(sqlite_of(session), ids)
    return dict(zip(live, segments(session).get(live))) if live else {}


def vectors_to_file(session: Session, path: str, n: int, dim: int, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """All (ids, vectors) with the vectors in a float16 memory map at `path`, written a chunk at
    a time: building a large index must not hold the collection in RAM (10M × 512 floats are
    20 GiB). Float16 is plenty to place vectors in lists and graphs; scores are re-ranked from
    the stored float32."""
    ids = np.array(session.scalars(select(Item.id).order_by(Item.id)).all()[:n], np.int64)
    vecs = np.memmap(path, np.float16, "w+", shape=(max(len(ids), 1), dim))
    for i, (_, rows) in enumerate(segments(session).chunks(ids, chunk)):
        vecs[i * chunk : i * chunk + len(rows)] = rows
    vecs.flush()
    return ids, vecs[: len(ids)]


def sqlite_of(session: Session) -> sqlite3.Connection:
    """The sqlite3 connection under `session`, in its transaction (plain tuples, no statement
    compiling: bulk reads and writes)."""
    dbapi = session.connection().connection.driver_connection
    assert dbapi is not None
    return dbapi


def files_by_key(session: Session, keys: Sequence[bytes]) -> dict[bytes, tuple[int, int, int, str, str | None]]:
    """What the file plan compares with the disk, for the files at path keys `keys`: (id, size,
    mtime_ns, status, error) by path key, found by display path (indexed). Asked a chunk of the
    scan at a time, so that the plan never holds every stored row: it did, ~440 B a file (1M
    files: 440 → 59 MiB). Plain tuples through sqlite3: SQLAlchemy rows and its handling of 30k
    parameters doubled the plan's time."""
    wanted: set[bytes] = set(keys)
    out: dict[bytes, tuple[int, int, int, str, str | None]] = {}
    dbapi = sqlite_of(session)
    for part in chunks(sorted({k.decode("utf-8", errors="replace") for k in wanted})):
        sql = f"SELECT path_key, id, size, mtime_ns, status, error FROM files WHERE path IN ({marks(part)})"
        out |= {r[0]: r[1:] for r in dbapi.execute(sql, part) if r[0] in wanted}
    return out


def stored_keys(session: Session) -> Iterator[tuple[bytes, int]]:
    """Every stored file's (path key, id), streamed."""
    yield from sqlite_of(session).execute("SELECT path_key, id FROM files")
