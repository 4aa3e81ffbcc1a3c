"""Vectors in append-only segment files beside the database, addressed by item id.

SQLite kept each vector in its item's row until schema v4: a 512-d float32 vector (2,048 B) took
a 4 KiB page of its own (4.4 KB per item measured) and one writer added ~3,300 rows/s — 412 GiB
and 8.5 h for 100M items. Here a vector is 4·dim bytes at a fixed place: item ids are handed out
in increasing order and never reused (indexer/run.py `_fresh_ids`), so item `id` is row
``id - base`` of the one long array that the segment files ``vectors/seg-NNNNN.f32`` cut into
pieces of SEGMENT_ROWS rows.

Crash safety: the indexer writes a batch's rows (and syncs them) *before* the SQLite transaction
that adds their items commits. The committed length is what SQLite says (`next_item_id`): rows at
or past it are a torn tail, never read — nothing refers to them — and the next batch writes over
them. Readers only ask for ids their SQLite snapshot holds. A deleted item leaves its row unused
(`info` reports the share).
"""
from __future__ import annotations

import glob
import os
import threading
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

DIR = "vectors"
#: rows per segment file: 256 MiB at 256-d, 512 MiB at 512-d; small enough to copy or sync
#: comfortably, large enough that 100M items make a few hundred files
SEGMENT_ROWS = 1 << 18


@dataclass
class Segments:
    folder: str
    dim: int
    base: int  # the item id stored in row 0
    _maps: dict[int, np.memmap] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def row_bytes(self) -> int:
        return 4 * self.dim

    def path(self, seg: int) -> str:
        return os.path.join(self.folder, f"seg-{seg:05}.f32")

    def put(self, first_id: int, vectors: np.ndarray) -> None:
        """Write rows for ids `first_id`, `first_id` + 1, ... and sync them to disk."""
        vectors = np.ascontiguousarray(vectors, np.float32).reshape(-1, self.dim)
        if first_id < self.base:
            raise ValueError(f"item id {first_id} precedes this store's first id {self.base}")
        os.makedirs(self.folder, exist_ok=True)
        row, done = first_id - self.base, 0
        while done < len(vectors):
            seg, at = divmod(row + done, SEGMENT_ROWS)
            n = min(len(vectors) - done, SEGMENT_ROWS - at)
            fd = os.open(self.path(seg), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, vectors[done : done + n].data, at * self.row_bytes)  # (not copied as bytes: ~19 ms a 40 MB batch, the GIL held)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            done += n

    def get(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """The rows of `ids` (committed ids only), in that order."""
        ids = np.asarray(ids, np.int64)
        out = np.empty((len(ids), self.dim), np.float32)
        rows = ids - self.base
        segs = rows // SEGMENT_ROWS
        for seg in np.unique(segs):
            pick = np.nonzero(segs == seg)[0]
            at = rows[pick] % SEGMENT_ROWS
            out[pick] = self._map(int(seg), int(at.max()) + 1)[at]
        return out

    def _map(self, seg: int, rows: int) -> np.memmap:
        """A read-only map of segment `seg` holding at least `rows` rows (remapped as it grows)."""
        with self._lock:
            m = self._maps.get(seg)
            if m is None or len(m) < rows:
                n = os.path.getsize(self.path(seg)) // self.row_bytes if os.path.exists(self.path(seg)) else 0
                if n < rows:
                    raise KeyError(f"vector row {rows - 1} of segment {seg} is not on disk")
                m = self._maps[seg] = np.memmap(self.path(seg), np.float32, "r", shape=(n, self.dim))
            return m

    def chunks(self, ids: np.ndarray, size: int = 1 << 16):
        """(ids, rows) a chunk at a time, for building an index without holding every vector."""
        for i in range(0, len(ids), size):
            yield ids[i : i + size], self.get(ids[i : i + size])

    def clear(self) -> None:
        """Delete every segment (the index switches to another model: every item goes)."""
        with self._lock:
            self._maps.clear()
            for f in glob.glob(os.path.join(self.folder, "seg-*.f32")):
                os.remove(f)

    def disk_bytes(self) -> int:
        return sum(os.path.getsize(f) for f in glob.glob(os.path.join(self.folder, "seg-*.f32")))


_OPENED: dict[tuple[str, int, int], Segments] = {}


def opened(index_dir: str, dim: str | None, base: str | None) -> Segments:
    """The vector store of the index at `index_dir`, with `dim` and `base` as its meta table
    holds them (None: not recorded yet). One per folder, dimension and first id, so that its
    memory maps outlive a database session."""
    key = (os.path.join(index_dir, DIR), int(dim or 0), int(base or 1))
    if key not in _OPENED:
        _OPENED[key] = Segments(*key)
    return _OPENED[key]
