"""The segment-file vector store (retrieval/vectors.py): rows at their ids, across segments."""
from __future__ import annotations

import numpy as np
import pytest

from mmsearch.retrieval import vectors
from mmsearch.retrieval.vectors import Segments


@pytest.fixture
def small_segments(monkeypatch):
    monkeypatch.setattr(vectors, "SEGMENT_ROWS", 5)


def test_rows_at_their_ids_across_segments(tmp_path, small_segments):
    store = Segments(str(tmp_path / "v"), dim=3, base=10)
    rng = np.random.default_rng(0)
    a, b = rng.random((7, 3), np.float32), rng.random((6, 3), np.float32)
    store.put(10, a)  # ids 10..16: segments 0 and 1
    assert np.array_equal(store.get([16, 10, 12]), a[[6, 0, 2]])
    store.put(17, b)  # ids 17..22: grows segment 1 (mapped before) and adds segment 2
    assert np.array_equal(store.get(np.arange(10, 23)), np.vstack([a, b]))
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["seg-00000.f32", "seg-00001.f32", "seg-00002.f32"]
    assert store.disk_bytes() == 13 * 3 * 4
    chunks = list(store.chunks(np.arange(10, 23), size=4))
    assert [len(ids) for ids, _ in chunks] == [4, 4, 4, 1]
    assert np.array_equal(np.vstack([rows for _, rows in chunks]), np.vstack([a, b]))


def test_torn_tail_is_overwritten_and_unwritten_rows_are_refused(tmp_path, small_segments):
    store = Segments(str(tmp_path / "v"), dim=2, base=1)
    store.put(1, np.ones((3, 2), np.float32))
    store.put(4, np.full((2, 2), 9, np.float32))  # a batch whose transaction never committed...
    store.put(4, np.full((1, 2), 2, np.float32))  # ...is written over by the next one
    assert store.get([4]).tolist() == [[2.0, 2.0]]
    with pytest.raises(KeyError):
        store.get([7])  # never written
    with pytest.raises(ValueError):
        store.put(0, np.ones((1, 2), np.float32))  # before the store's first id
    store.clear()
    assert store.disk_bytes() == 0
