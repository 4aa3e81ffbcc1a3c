"""`SearchIndex`: the one public Python API, above the retrieval core and the indexer. The CLI
and the HTTP server are thin shells over it.

    from mmsearch import SearchIndex

    idx = SearchIndex("~/my-index", create=True)
    idx.add(["~/Pictures", "~/Videos"])
    for hit in idx.search("a dog on a beach", k=5, kind="image"):
        print(hit.score, hit.path)

Options come as typed, validated sets: `search` takes a `SearchRequest` (or its fields as
keywords), `add` an `IndexOptions` (or its fields as keywords). Safe for concurrent readers in one
process: every call opens its own database session, the FAISS index is swapped atomically when
another process commits, and the model is loaded once.
"""
from __future__ import annotations

import json
import os
import threading
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from .errors import UserError
from .indexer.options import IndexOptions
from .media import fetch
from .media.capture import iso_taken
from .media.errors import DecodeError
from .media.files import is_uri, location, under
from .media.image import DEFAULT_MAX_PIXELS, load_image, load_image_bytes
from .media.thumbnails import SIDES, Thumbnails, jpeg, scaled
from .media.video import frame_at
from .retrieval.index import Index
from .retrieval.request import SearchRequest
from .retrieval.search import Filters, Hit, Part, fusion_depth, hybrid, lexical_search, part_vector, run, search

if TYPE_CHECKING:
    from .retrieval.store import File, Item

#: item ids are SQLite integers; a larger number names no item (and must not overflow a query)
MAX_ITEM_ID = 2**63 - 1


class SearchIndex:
    def __init__(self, path: str | os.PathLike | None = None, *, create: bool = False):
        self.index = Index(path, create=create)
        self._thumbnails = Thumbnails()

    @property
    def path(self) -> str:
        return self.index.path

    # -- writing ------------------------------------------------------------------------------
    def add(self, paths: Iterable[str] = (), options: IndexOptions | None = None, **fields: Any):
        """Index (or update) files and folders; no paths: update every root indexed before.
        `options` (or its fields as keywords: model, reindex, batch_size, ...) say how. Returns
        the run's `Summary`."""
        from .indexer.run import index_paths

        opts = options or IndexOptions.of(**fields)
        return index_paths(self.index, [os.path.expanduser(p) for p in paths], opts)

    def remove(self, paths: Iterable[str]) -> int:
        """Forget files (and everything under folders), also for later updates of every root;
        returns how many files were removed."""
        from sqlalchemy import delete, select

        from .retrieval.db import chunks
        from .retrieval.store import File, bump_generation, get_list, set_list

        with self.index.session() as s:
            known = get_list(s, "roots")
            # a URI's query is options only where it names a root: else a "?" is part of a key
            roots = [p if is_uri(p) and "?" in p and p not in known else location(p) for p in map(os.path.expanduser, paths)]
            keys = [os.fsencode(r) for r in roots]  # (compared exactly: `under`)
            ids = [f.id for f in s.scalars(select(File)) if under(f.path_key, keys)]
            set_list(s, "roots", [r for r in known if not under(r, keys)])
            # a removed part of a still-indexed folder stays out of later updates of that folder
            set_list(s, "removed", {*get_list(s, "removed"), *(r for r in roots if r not in map(location, known))})
            for part in chunks(ids):
                s.execute(delete(File).where(File.id.in_(part)))
            if ids:
                bump_generation(s)
            s.commit()
        return len(ids)

    # -- reading ------------------------------------------------------------------------------
    def search(self, query: str | SearchRequest | None = None, *, upload: bytes | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, **fields: Any) -> list[Hit]:
        """Search by text (plain, or compact fused syntax ``2:beach + ref.jpg - people``), by
        example images (``image=[paths]``), by the bytes of an uploaded image, or all at once.
        `query` is the text or a whole `SearchRequest`; keywords are `SearchRequest` fields (k,
        kind, path, after, before, taken_after, taken_before, near, tags, mode, negative, weights,
        fusion, min_score, per_video, at)."""
        request = query if isinstance(query, SearchRequest) else SearchRequest.of(q=query, **fields)
        pixels = None if upload is None else _decode_upload(upload, max_pixels)
        return run(self.index, request, pixels)

    def batch_search(self, queries: Sequence[str], request: SearchRequest | None = None, batch_size: int = 64,
                     **fields: Any) -> list[list[Hit]]:
        """Many text queries with one request's k, filters and limits, embedded in batches with
        the model loaded once."""
        request = request or SearchRequest.of(**fields)
        if request.mode == "lexical":
            return [lexical_search(self.index, q, request) for q in queries]
        encoder, filters = self.index.embedder(), Filters.of(request)
        depth = request.k if request.mode == "semantic" else fusion_depth(request)
        out = []
        for i in range(0, len(queries), batch_size):
            chunk = list(queries[i : i + batch_size])
            for q, vec in zip(chunk, encoder.encode_texts(chunk)):
                dense = search(self.index, vec, depth, min_score=request.min_score, filters=filters,
                               per_video=request.per_video)
                out.append(dense if request.mode == "semantic" else hybrid(self.index, dense, q, request))
        return out

    def describe(self, image: str, k: int = 5, at: float | None = None) -> list[Hit]:
        """Captioning by retrieval: the distinct indexed texts that best match an image."""
        hits = search(self.index, part_vector(self.index, Part(image=os.path.expanduser(image), at=at)), k=k * 4,
                      filters=Filters(kinds={"text"}))
        distinct = {h.text: h for h in reversed(hits)}  # the best hit of each text (dicts keep order)
        return sorted(distinct.values(), key=lambda h: -h.score)[:k]

    def tag(self, labels: Sequence[str], prompt: str = "a photo of a {}", threshold: float = 0.3,
            paths: Sequence[str] | None = None) -> list[dict]:
        from .retrieval.tags import tag_files

        return tag_files(self.index, list(labels), prompt, threshold, list(paths) if paths else None)

    def item(self, item_id: int) -> dict | None:
        """Metadata of one item and its file; None if there is no such item."""
        if not 0 <= item_id <= MAX_ITEM_ID:
            return None
        from sqlalchemy import select

        from .retrieval.store import File, Item, Tag

        with self.index.session() as s:
            row = s.execute(select(Item, File).join(File).where(Item.id == item_id)).one_or_none()
            if row is None:
                return None
            item, f = row
            tags = [{"label": t.label, "score": round(t.score, 4)} for t in s.scalars(select(Tag).where(Tag.file_id == f.id))]
        fields = {"id": item.id, "kind": item.kind, "path": f.path, "timestamp": item.timestamp, "start": item.start,
                  "end": item.end, "text": item.text, "offset": item.offset, "link_path": item.link_path,
                  "width": f.width, "height": f.height, "size": f.size, "mtime": f.mtime_ns / 1e9, "tags": tags,
                  # capture metadata, and the lines read by OCR with their boxes ([text, [x0, y0, ... x3, y3], score])
                  "taken": iso_taken(f.taken_ns, f.offset_min) if f.taken_ns is not None else None,
                  "taken_from": f.taken_from, "camera": f.camera, "lat": f.lat, "lon": f.lon,
                  "ocr": json.loads(item.ocr) if item.ocr else None}
        return {k: v for k, v in fields.items() if v is not None}

    def thumbnail(self, item_id: int, size: int = 256) -> bytes | None:
        """A JPEG thumbnail of an image item, or of a video item's keyframe; None for texts and
        missing items. Only indexed files are ever opened, by id."""
        if not 0 <= item_id <= MAX_ITEM_ID:
            return None
        from sqlalchemy import select

        from .retrieval.store import File, Item

        with self.index.session() as s:
            row = s.execute(select(Item, File).join(File).where(Item.id == item_id)).one_or_none()
        if row is None or row[0].kind == "text":
            return None
        item, f = row
        file = (item_id, f.path_key, f.size, f.mtime_ns)  # (the file as indexed: a changed one is drawn anew)
        side = next((side for side in SIDES if side >= size), size)
        drawn = self._thumbnails.get((*file, side), lambda: self._draw(item, f, side), source=file)
        if drawn is None or side == size:
            return drawn
        return self._thumbnails.get((*file, size), lambda: scaled(drawn, size))

    def _draw(self, item: Item, f: File, size: int) -> bytes | None:
        remote = is_uri(f.fs_path)
        if remote:  # fetched with its root's options (media/fetch.py)
            fetch.remember(self.index.meta_list("roots"))
        try:
            # (objects: a few fetches at once, so that a burst of requests holds a bounded disk and network)
            with _FETCHING if remote else nullcontext(), fetch.fetched(f.fs_path, f.size, fetch.MAX_THUMBNAIL_FETCH) as path:
                with _DECODING:  # (a 100 M-pixel PNG takes ~1 GB: 40 drawn at once peaked at 8.6 GB)
                    img = frame_at(path, item.timestamp or 0.0) if item.kind == "video" else load_image(path, draft=size)
                    img.thumbnail((size, size))  # (the full-size pixels freed inside the turn, encoded after it)
        except (DecodeError, OSError):
            return None
        return jpeg(img, size)

    def info(self) -> dict:
        return self.index.info()


#: images decoding at once (uploads, thumbnails): one at the pixel limit can take over a GB
_DECODING = threading.BoundedSemaphore(2)
#: objects fetched at once for thumbnails: each up to fetch.MAX_THUMBNAIL_FETCH on disk (30
#: requests for a 55 MiB object at once held 1.35 GiB of temporary files)
_FETCHING = threading.BoundedSemaphore(4)


def _decode_upload(data: bytes, max_pixels: int):
    with _DECODING:
        try:
            return load_image_bytes(bytes(data), max_pixels)
        except DecodeError as e:
            raise UserError(f"uploaded image: {e}") from None


__all__ = ["Hit", "IndexOptions", "SearchIndex", "SearchRequest", "UserError"]
