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


def query_vector(index: Index, text: str | None = None, image: str | None = None) -> np.ndarray:
    """One unit query vector from a text or an image file, with the index's own model."""
    if (text is None) == (image is None):
        raise UserError("give a text query or --image PATH (exactly one)")
    encoder = index.encoder()
    if text is not None:
        if not text.strip():
            raise UserError("the text query is empty")
        return encoder.encode_texts([text])[0]
    from indexer.decode import DecodeError, load_image

    if not os.path.isfile(image):
        raise UserError(f"query image {image} does not exist")
    try:
        img = load_image(image)
    except DecodeError as e:
        raise UserError(f"cannot read query image {image}: {e}") from None
    return encoder.encode_images([img])[0]


def search(index: Index, vector: np.ndarray, k: int = 10, min_score: float | None = None) -> list[Hit]:
    """Best-first hits for a query vector."""
    found = index.search_vector(vector, k)
    if min_score is not None:
        found = [(i, sc) for i, sc in found if sc >= min_score]
    if not found:
        return []
    with index.session() as s:
        rows = {
            item.id: (item, path)
            for item, path in s.execute(
                select(Item, File.path).join(File).where(Item.id.in_([i for i, _ in found]))
            ).all()
        }
    hits = []
    for item_id, score in found:
        if item_id not in rows:  # removed since the FAISS snapshot was taken
            continue
        item, path = rows[item_id]
        hits.append(Hit(path, round(score, 6), item.kind, item_id, item.timestamp, item.start, item.end, item.text, item.offset))
    return hits
