"""The store since schema v4: vectors in segment files, SQLite for metadata. An index of the
earlier layout (vectors in the items' rows) migrates with identical vectors and results."""
from __future__ import annotations

import shutil
import sqlite3

import numpy as np

from mmsearch import SearchIndex
from mmsearch.retrieval.store import vectors_by_id


def _vectors(idx: SearchIndex) -> dict[int, np.ndarray]:
    with idx.index.session() as s:
        from sqlalchemy import select

        from mmsearch.retrieval.store import Item

        return vectors_by_id(s, list(s.scalars(select(Item.id))))


def test_index_with_vectors_in_rows_migrates(image_set, tmp_path):
    idx = SearchIndex(tmp_path / "index", create=True)
    idx.add([str(image_set)])
    assert idx.remove([str(image_set / "coffee.png")]) == 1  # a gap in the ids
    before = _vectors(idx)
    hits = [(h.path, h.score) for h in idx.search("a rocket launch", k=5)]
    assert len(before) >= 20
    # the v3 layout: each vector a BLOB in its item's row, no segment files
    db = sqlite3.connect(tmp_path / "index" / "mmsearch.db")
    db.execute("ALTER TABLE items ADD COLUMN vector BLOB")
    db.executemany("UPDATE items SET vector = ? WHERE id = ?", [(v.tobytes(), i) for i, v in before.items()])
    db.execute("DELETE FROM meta WHERE key = 'vectors_base'")
    db.execute("PRAGMA user_version=3")
    db.commit()
    db.close()
    shutil.rmtree(tmp_path / "index" / "vectors")
    for f in (tmp_path / "index").glob("vectors-*.faiss*"):
        f.unlink()  # the FAISS index is rebuilt from the migrated store

    old = SearchIndex(tmp_path / "index")
    after = _vectors(old)
    assert after.keys() == before.keys() and all(np.array_equal(after[i], before[i]) for i in before)
    assert [(h.path, h.score) for h in old.search("a rocket launch", k=5)] == hits
    columns = {r[1] for r in sqlite3.connect(tmp_path / "index" / "mmsearch.db").execute("PRAGMA table_info(items)")}
    assert "vector" not in columns
    # and it keeps indexing: a new file's vector lands after the migrated ones
    shutil.copy2(image_set / "rocket.jpg", image_set / "rocket_copy.jpg")
    try:
        assert old.add([]).reused == 1
        assert old.search(image=[str(image_set / "rocket.jpg")], k=2)[1].score > 0.999
    finally:
        (image_set / "rocket_copy.jpg").unlink()


def test_store_bytes_per_item(image_set, tmp_path):
    """Vectors take 4·dim bytes each on disk, not a SQLite page."""
    idx = SearchIndex(tmp_path / "index", create=True)
    idx.add([str(image_set)])
    info = idx.info()
    n, dim = sum(info["items"].values()), info["dim"]
    segs = sum(size for name, size in info["files_on_disk"].items() if name.startswith("vectors/seg-"))
    assert segs == n * dim * 4


# the files table as schema v4 had it: the path twice (text and bytes, each indexed), hex digests
V4_FILES = [
    "CREATE TABLE files_v4 (id INTEGER PRIMARY KEY, path_key BLOB UNIQUE, path TEXT, size INTEGER, mtime_ns INTEGER,"
    " digest VARCHAR, kind VARCHAR, width INTEGER, height INTEGER, status VARCHAR, error TEXT, taken_ns INTEGER,"
    " offset_min INTEGER, taken_from VARCHAR, camera VARCHAR, lat FLOAT, lon FLOAT)",
    "INSERT INTO files_v4 SELECT id, path_key, path, size, mtime_ns, CASE WHEN digest IS NULL THEN NULL"
    " ELSE lower(hex(digest)) END, kind, width, height, status, error, taken_ns, offset_min, taken_from, camera, lat, lon"
    " FROM files",
    "DROP TABLE files",
    "ALTER TABLE files_v4 RENAME TO files",
    "CREATE INDEX ix_files_path ON files (path)",
    "CREATE INDEX ix_files_digest ON files (digest)",
    "CREATE INDEX ix_files_taken_ns ON files (taken_ns)",
    "CREATE INDEX ix_files_lat ON files (lat) WHERE lat IS NOT NULL",
    "CREATE INDEX ix_files_unread ON files (id) WHERE taken_from IS NULL",
    "PRAGMA user_version=4",
]


def test_v4_files_table_migrates_to_one_path_and_byte_digests(image_set, tmp_path):
    import os

    lib = tmp_path / "lib"
    shutil.copytree(image_set, lib)
    odd = os.fsencode(lib) + b"/caf\xe9-\xff.jpg"  # not UTF-8: its bytes must survive
    shutil.copy2(lib / "rocket.jpg", odd)
    (lib / "empty.png").write_bytes(b"")  # a skipped file: no digest
    idx = SearchIndex(tmp_path / "index", create=True)
    idx.add([str(lib)])
    db = tmp_path / "index" / "mmsearch.db"

    def files() -> list[tuple]:
        with sqlite3.connect(db) as c:
            return c.execute("SELECT id, path_key, path, size, mtime_ns, status, error FROM files ORDER BY id").fetchall()

    before, vectors = files(), _vectors(idx)
    digests = dict(sqlite3.connect(db).execute("SELECT id, digest FROM files"))
    hits = [(h.path, h.score) for h in idx.search("a rocket launch", k=5)]
    assert odd in [r[1] for r in before] and None in digests.values()
    c = sqlite3.connect(db)
    c.execute("PRAGMA foreign_keys=OFF")
    for sql in V4_FILES:
        c.execute(sql)
    c.commit()
    c.close()

    old = SearchIndex(tmp_path / "index")
    after = _vectors(old)
    assert files() == before and after.keys() == vectors.keys()
    assert all(np.array_equal(after[i], v) for i, v in vectors.items())
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == 5
        assert dict(c.execute("SELECT id, digest FROM files")) == digests  # 16 bytes, as before in hex
        assert c.execute("SELECT path_key FROM files WHERE raw_key IS NOT NULL").fetchall() == [(odd,)]
        assert "sqlite_autoindex_files_1" not in {r[1] for r in c.execute("PRAGMA index_list(files)")}
    assert [(h.path, h.score) for h in old.search("a rocket launch", k=5)] == hits
    again = old.add([])
    assert again.unchanged == len(before) and again.new == again.updated == 0  # every file found by its bytes
    shutil.copy2(lib / "rocket.jpg", lib / "rocket_copy.jpg")
    assert old.add([]).reused == 1  # found by its digest
    assert old.remove([os.fsdecode(odd)]) == 1  # and its items go with it: foreign keys are on again
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM items WHERE file_id NOT IN (SELECT id FROM files)").fetchone()[0] == 0


def test_bulk_settings_are_put_back_after_a_batch(tmp_path):
    """commit_batch's bulk-merge cache and checkpoint interval stay with its batch: the pooled
    connection a later session reads through has SQLite's own again."""
    from mmsearch.indexer.plan import Plan
    from mmsearch.indexer.run import Batch, Summary, commit_batch
    from mmsearch.indexer.scan import Entry
    from mmsearch.retrieval.index import Index
    from mmsearch.retrieval.store import set_meta

    idx = Index(str(tmp_path / "ix"), create=True)

    def pragmas() -> tuple:
        with idx.session() as s:
            dbapi = s.connection().connection.driver_connection
            return tuple(dbapi.execute(f"PRAGMA {p}").fetchone()[0] for p in ("cache_size", "wal_autocheckpoint"))

    before = pragmas()
    with idx.session() as s:
        set_meta(s, "dim", "4")
        commit_batch(s, Plan(), Summary(), Batch.of([(Entry("/x/a.jpg", "image", 1, 1), "d" * 32, [{"kind": "image", "vector": np.ones(4, np.float32)}], None, None)]))
    assert pragmas() == before != (-262144, 20000)


def test_content_is_found_by_digest_within_sqlites_parameter_limit(tmp_path):
    """The plan asks for stored content by the digests' first 8 bytes (the index holds those) and
    compares them whole itself: a plan of 20k new files stays within SQLite's default limit of
    32,766 parameters a statement (asked by both lists, it bound 40,001; Debian's SQLite allows
    250,000, python.org's builds the default)."""
    import hashlib

    from sqlalchemy import text

    from mmsearch.indexer.plan import _items_by_digest
    from mmsearch.retrieval.index import Index
    from mmsearch.retrieval.store import ensure_digest_index

    index = Index(tmp_path / "index", create=True)
    with index.session() as s:
        ensure_digest_index(s)
        dbapi = s.connection().connection.driver_connection
        if not hasattr(dbapi, "setlimit"):  # (Python < 3.11)
            return
        dbapi.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32766)
        s.execute(text("INSERT INTO files (id, path, size, mtime_ns, digest, kind, status) VALUES "
                       "(1, '/a.png', 1, 1, :d, 'image', 'ok')"), {"d": hashlib.blake2b(b"0", digest_size=16).digest()})
        s.execute(text("INSERT INTO items (id, file_id, kind) VALUES (1, 1, 'image')"))
        digests = {hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest() for i in range(20_000)}
        found = _items_by_digest(s, digests | {"f" * 32})
        assert list(found) == [hashlib.blake2b(b"0", digest_size=16).hexdigest()] and found[next(iter(found))][0].id == 1
