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
