"""`SearchIndex`: the one public Python API. The CLI and the HTTP server are thin shells over it.

    from retrieval import SearchIndex

    idx = SearchIndex("~/my-index", create=True)
    idx.add(["~/Pictures", "~/Videos"])
    for hit in idx.search("a dog on a beach", k=5, kind="image"):
        print(hit.score, hit.path)

Safe for concurrent readers in one process: every call opens its own database session, the FAISS
index is swapped atomically when another process commits, and the model is loaded once.
"""
from __future__ import annotations

import io
import json
import os
from datetime import date, datetime
from typing import Iterable, Sequence

from sqlalchemy import delete, select

from .errors import UserError
from .files import under
from .index import Index
from .search import Filters, Hit, Part, fused_search, parse_compact, part_vector, search
from .store import File, Item, Tag, bump_generation, get_meta, set_meta

KINDS = ("image", "video", "text")


class SearchIndex:
    def __init__(self, path: str | os.PathLike | None = None, *, create: bool = False):
        self.index = Index(path, create=create)

    @property
    def path(self) -> str:
        return self.index.path

    # -- writing ------------------------------------------------------------------------------
    def add(self, paths: Iterable[str] = (), model: str | None = None, **options):
        """Index (or update) files and folders; no paths: update every root indexed before.
        Options: reindex, batch_size, workers, exclude, hidden, max_pixels, max_gap, text_column,
        path_column, index_type, runtime, processes, progress. Returns the run's `Summary`."""
        from indexer.run import index_paths

        return index_paths(self.index, [os.path.expanduser(p) for p in paths], model, **options)

    def remove(self, paths: Iterable[str]) -> int:
        """Forget files (and everything under folders), also for later updates of every root;
        returns how many files were removed."""
        roots = [os.path.abspath(os.path.expanduser(p)) for p in paths]
        with self.index.session() as s:
            ids = [f.id for f in s.scalars(select(File)) if under(f.path_key, roots)]
            known = json.loads(get_meta(s, "roots") or "[]")
            set_meta(s, "roots", json.dumps([r for r in known if not under(r, roots)]))
            # a removed part of a still-indexed folder stays out of later updates of that folder
            removed = set(json.loads(get_meta(s, "removed") or "[]")) | {r for r in roots if r not in known}
            set_meta(s, "removed", json.dumps(sorted(removed)))
            if ids:
                s.execute(delete(File).where(File.id.in_(ids)))
                bump_generation(s)
            s.commit()
        return len(ids)

    # -- reading ------------------------------------------------------------------------------
    def search(self, query: str | None = None, *, image: str | bytes | Sequence[str] | None = None, at: float | None = None,
               negative: Sequence[str] = (), weights: Sequence[float] = (), fusion: str = "early", k: int = 10,
               min_score: float | None = None, kind: str | None = None, path: str | None = None,
               after: str | date | None = None, before: str | date | None = None, tags: Sequence[str] = (),
               per_video: int = 3, max_pixels: int | None = None) -> list[Hit]:
        """Search by text (plain, or compact fused syntax ``2:beach + ref.jpg - people``), by an
        image (a path, several paths, or the bytes of an upload), or both; `negative` texts push away; `weights`
        apply to the positive parts in order. Filters restrict the search before ranking."""
        parts = parse_compact(query) if query is not None else []
        if isinstance(image, (bytes, bytearray)):
            parts.append(Part(pixels=self._decode_upload(image, max_pixels)))
        elif image is not None:
            parts += [Part(image=os.path.expanduser(p), at=at) for p in ([image] if isinstance(image, str) else image)]
        if not parts:
            raise UserError("give a text query or an image")
        positives = [p for p in parts if p.weight > 0]
        if len(weights) > len(positives):
            raise UserError(f"{len(weights)} weights for {len(positives)} positive parts")
        for p, w in zip(positives, weights):
            p.weight *= w
        parts += [Part(text=t, weight=-1.0) for t in negative]
        return fused_search(self.index, parts, k=k, fusion=fusion, min_score=min_score,
                            filters=self.filters(kind, path, after, before, tags), per_video=per_video)

    def batch_search(self, queries: Sequence[str], k: int = 10, batch_size: int = 64, **filters) -> list[list[Hit]]:
        """Many text queries, embedded in batches with the model loaded once."""
        encoder = self.index.encoder()
        f = self.filters(filters.pop("kind", None), filters.pop("path", None), filters.pop("after", None),
                         filters.pop("before", None), filters.pop("tags", ()))
        out = []
        for i in range(0, len(queries), batch_size):
            for vec in encoder.encode_texts(list(queries[i : i + batch_size])):
                out.append(search(self.index, vec, k=k, filters=f, **filters))
        return out

    def describe(self, image: str, k: int = 5, at: float | None = None) -> list[Hit]:
        """Captioning by retrieval: the distinct indexed texts that best match an image."""
        hits = search(self.index, part_vector(self.index, Part(image=os.path.expanduser(image), at=at)), k=k * 4,
                      filters=Filters(kinds={"text"}))
        seen: set[str] = set()
        return [h for h in hits if not (h.text in seen or seen.add(h.text))][:k]

    def tag(self, labels: Sequence[str], prompt: str = "a photo of a {}", threshold: float = 0.3,
            paths: Sequence[str] | None = None) -> list[dict]:
        from .tags import tag_files

        return tag_files(self.index, list(labels), prompt, threshold, list(paths) if paths else None)

    def item(self, item_id: int) -> dict | None:
        """Metadata of one item and its file; None if there is no such item."""
        with self.index.session() as s:
            row = s.execute(select(Item, File).join(File).where(Item.id == item_id)).one_or_none()
            if row is None:
                return None
            item, f = row
            tags = [{"label": t.label, "score": round(t.score, 4)} for t in s.scalars(select(Tag).where(Tag.file_id == f.id))]
        fields = {"id": item.id, "kind": item.kind, "path": f.path, "timestamp": item.timestamp, "start": item.start,
                  "end": item.end, "text": item.text, "offset": item.offset, "link_path": item.link_path,
                  "width": f.width, "height": f.height, "size": f.size, "mtime": f.mtime_ns / 1e9, "tags": tags}
        return {k: v for k, v in fields.items() if v is not None}

    def thumbnail(self, item_id: int, size: int = 256) -> bytes | None:
        """A JPEG thumbnail of an image item, or of a video item's keyframe; None for texts and
        missing items. Only indexed files are ever opened, by id."""
        from indexer.decode import DecodeError, load_image
        from indexer.video import frame_at

        with self.index.session() as s:
            row = s.execute(select(Item, File).join(File).where(Item.id == item_id)).one_or_none()
        if row is None or row[0].kind == "text":
            return None
        item, f = row
        try:
            img = frame_at(f.fs_path, item.timestamp or 0.0) if item.kind == "video" else load_image(f.fs_path, draft=size)
        except (DecodeError, OSError):
            return None
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=85)
        return buf.getvalue()

    def info(self) -> dict:
        return self.index.info()

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def filters(kind: str | None = None, path: str | None = None, after: str | date | None = None,
                before: str | date | None = None, tags: Sequence[str] = ()) -> Filters:
        if kind is not None and kind not in KINDS:
            raise UserError(f"type must be image, video or text, not {kind!r}")
        return Filters({kind} if kind else None, path or None, _ns(after, "after"), _ns(before, "before"), list(tags))

    def _decode_upload(self, data: bytes, max_pixels: int | None):
        from indexer.decode import DEFAULT_MAX_PIXELS, DecodeError, load_image_bytes

        try:
            return load_image_bytes(bytes(data), max_pixels or DEFAULT_MAX_PIXELS)
        except DecodeError as e:
            raise UserError(f"uploaded image: {e}") from None


def _ns(day: str | date | None, what: str) -> int | None:
    """A date (or ISO date string) as int64 nanoseconds since the epoch, as files.mtime_ns."""
    if day is None or day == "":
        return None
    try:
        when = datetime.fromisoformat(day) if isinstance(day, str) else day
    except ValueError:
        raise UserError(f"{what} wants a date like 2024-06-30, not {day!r}") from None
    if not isinstance(when, datetime):
        when = datetime(when.year, when.month, when.day)
    return min(int(when.timestamp() * 1e9), 2**63 - 1)  # int64 nanoseconds end in 2262


__all__ = ["SearchIndex", "Hit", "UserError"]
