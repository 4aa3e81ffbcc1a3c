"""The query layer: turn a text or an image into a vector, search, and attach metadata."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
from sqlalchemy import select

from .errors import UserError
from .index import Index
from .store import File, Item


@dataclass
class Hit:
    path: str
    score: float
    kind: str
    item_id: int
    timestamp: float | None = None
    start: float | None = None
    end: float | None = None
    text: str | None = None
    offset: int | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def query_vector(index: Index, text: str | None = None, image: str | None = None, at: float | None = None) -> np.ndarray:
    """One unit query vector from a text, an image file, or a video's frame at `at` seconds,
    with the index's own model."""
    if (text is None) == (image is None):
        raise UserError("give a text query or --image PATH (exactly one)")
    encoder = index.encoder()
    if text is not None:
        if not text.strip():
            raise UserError("the text query is empty")
        return encoder.encode_texts([text])[0]
    from indexer.decode import DecodeError, load_image
    from indexer.scan import kind_of
    from indexer.video import frame_at

    if not os.path.isfile(image):
        raise UserError(f"query image {image} does not exist")
    try:
        img = frame_at(image, at or 0.0) if kind_of(image) == "video" else load_image(image)
    except DecodeError as e:
        raise UserError(f"cannot read query image {image}: {e}") from None
    return encoder.encode_images([img])[0]


def search(index: Index, vector: np.ndarray, k: int = 10, min_score: float | None = None,
           kinds: set[str] | None = None, per_video: int = 3) -> list[Hit]:
    """Best-first hits for a query vector.

    Video moments are grouped: one hit per shot (its best keyframe), and at most `per_video`
    moments per video. Filters are applied while fetching more candidates as needed, so `k`
    hits come back whenever `k` match."""
    total = index.vectors().ntotal
    fetch = k * 4 + 16
    while True:
        found = index.search_vector(vector, min(fetch, total))
        hits = _select(_rows(index, found), k, min_score, kinds, per_video)
        exhausted = len(found) >= total or (min_score is not None and found and found[-1][1] < min_score)
        if len(hits) >= k or exhausted:
            return hits[:k]
        fetch *= 4


def _rows(index: Index, found: list[tuple[int, float]]) -> list[tuple[Item, str, float]]:
    if not found:
        return []
    with index.session() as s:
        rows = {item.id: (item, path) for item, path in s.execute(
            select(Item, File.path).join(File).where(Item.id.in_([i for i, _ in found]))).all()}
    # an id missing from the store was removed after the FAISS snapshot was taken
    return [(*rows[i], score) for i, score in found if i in rows]


def _select(rows, k, min_score, kinds, per_video) -> list[Hit]:
    hits: list[Hit] = []
    shots_seen: set[tuple[int, float | None]] = set()
    per_file: dict[int, int] = {}
    for item, path, score in rows:
        if (min_score is not None and score < min_score) or (kinds and item.kind not in kinds):
            continue
        if item.kind == "video":
            shot = (item.file_id, item.start)
            if shot in shots_seen or per_file.get(item.file_id, 0) >= per_video:
                continue
            shots_seen.add(shot)
            per_file[item.file_id] = per_file.get(item.file_id, 0) + 1
        hits.append(Hit(path, round(score, 6), item.kind, item.id, item.timestamp, item.start, item.end, item.text, item.offset))
        if len(hits) >= k:
            break
    return hits
