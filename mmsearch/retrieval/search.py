"""The query layer: queries (text, image, video frame, or a fused mix) become vectors, filters
become an id set that FAISS searches within, and hits get their metadata."""
from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import date, datetime

import numpy as np
from PIL import Image

from ..errors import UserError
from ..media.capture import FILE_TIME, distance_km, iso_taken, wall_ns
from ..media.errors import DecodeError
from ..media.files import is_uri
from ..media.image import load_image
from ..media.kinds import kind_of
from ..media.video import frame_at
from . import lexical
from .db import Found, found, marks
from .index import Index
from .request import DEFAULT_PER_VIDEO, MAX_PARTS, MAX_WEIGHT, SearchRequest

RRF_K = 60  # reciprocal-rank fusion constant (Cormack et al.)
#: a lexical match's rank credit against a semantic one's in hybrid search
LEXICAL_WEIGHT = 1.0
FILE_MARK = "@"  # a compact query part naming a file: ``@photo.jpg``



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
    link_path: str | None = None
    ocr: str | None = None  # text read in the image (OCR), when the index reads text
    taken: str | None = None  # capture time, ISO 8601 (with its UTC offset when known)
    camera: str | None = None
    lat: float | None = None
    lon: float | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Filters:
    """Restrictions applied before ranking, so `k` hits come back whenever `k` match."""

    kinds: set[str] | None = None
    path_glob: str | None = None
    after_ns: int | None = None  # file modification time
    before_ns: int | None = None
    tags: list[str] = field(default_factory=list)
    taken_after_ns: int | None = None  # capture time, wall clock where taken (media/capture.py)
    taken_before_ns: int | None = None
    near: tuple[float, float, float] | None = None  # lat, lon, km

    @classmethod
    def of(cls, request: SearchRequest) -> Filters:
        return cls({request.kind} if request.kind else None, request.path or None, day_ns(request.after),
                   day_ns(request.before), list(request.tags), wall_day_ns(request.taken_after),
                   wall_day_ns(request.taken_before), request.near)

    def active(self) -> bool:
        bounds = (self.after_ns, self.before_ns, self.taken_after_ns, self.taken_before_ns, self.near)
        return bool(self.kinds or self.path_glob or self.tags) or any(b is not None for b in bounds)

    def query(self) -> tuple[str, list]:
        """The ids of the items that pass every filter (with their files' lat and lon under
        `near`), as SQL and its parameters."""
        where: list[str] = []
        params: list = []

        def cond(sql: str, *values) -> None:
            where.append(sql)
            params.extend(values)

        if self.kinds:
            cond(f"items.kind IN ({marks(self.kinds)})", *sorted(self.kinds))
        if self.path_glob:
            cond("files.path GLOB ?", path_pattern(self.path_glob))
        if self.after_ns is not None:
            cond("files.mtime_ns >= ?", self.after_ns)
        if self.before_ns is not None:
            cond("files.mtime_ns < ?", self.before_ns)
        for tag in self.tags:
            cond("files.id IN (SELECT file_id FROM tags WHERE label = ?)", tag)
        if self.taken_after_ns is not None:
            cond("files.taken_ns >= ?", self.taken_after_ns)
        if self.taken_before_ns is not None:
            cond("files.taken_ns < ?", self.taken_before_ns)
        if self.near is not None:  # a box around the circle in SQL; the circle itself in `allowed_ids`
            lat, lon, km = self.near
            dlat = km / 111.0
            dlon = km / (111.32 * max(math.cos(math.radians(lat)), 1e-6))
            cond("files.lat BETWEEN ? AND ?", lat - dlat, lat + dlat)
            if dlon < 180:  # (a box wider than the globe, or near a pole: every longitude)
                lo, hi = lon - dlon, lon + dlon  # (or across the antimeridian)
                cond("(files.lon BETWEEN ? AND ? OR files.lon >= ? OR files.lon <= ?)", lo, hi, lo + 360, hi - 360)
        columns = "items.id, files.lat, files.lon" if self.near is not None else "items.id"
        sql = f"SELECT {columns} FROM items JOIN files ON files.id = items.file_id"
        return (f"{sql} WHERE {' AND '.join(where)}" if where else sql), params

    def allowed_ids(self, index: Index) -> np.ndarray | None:
        if not self.active():
            return None
        with index.reading() as conn:
            if self.near is None:
                return np.fromiter((row[0] for row in conn.execute(*self.query())), np.int64)
            rows = conn.execute(*self.query()).fetchall()
        if not rows:
            return np.zeros(0, np.int64)
        ids, lats, lons = (np.array(c) for c in zip(*rows))
        lat, lon, km = self.near
        return ids[distance_km(lat, lon, lats.astype(float), lons.astype(float)) <= km].astype(np.int64)


def path_pattern(glob: str) -> str:
    """A `--path` glob as matched against whole stored paths: one that is not absolute (nor a URI)
    matches whole trailing components (``2024/*`` matches ``/photos/2024/a.jpg``, not ``/photos/old2024/``)."""
    return glob if glob.startswith(("/", "*")) or is_uri(glob) else "*/" + glob


def wall_day_ns(day: date | None) -> int | None:
    """Midnight starting `day` as a wall-clock reading (how capture times are stored)."""
    return None if day is None else max(-(2**63), min(wall_ns(datetime(day.year, day.month, day.day)), 2**63 - 1))


def day_ns(day: date | None) -> int | None:
    """Local midnight starting `day` in int64 nanoseconds since the epoch (as files.mtime_ns),
    clamped to what int64 holds (years 1677–2262)."""
    if day is None:
        return None
    try:
        ns = int(datetime(day.year, day.month, day.day).timestamp()) * 10**9
    except (OverflowError, OSError, ValueError):
        ns = -(2**63) if day.year < 1970 else 2**63 - 1
    return max(-(2**63), min(ns, 2**63 - 1))


@dataclass
class Part:
    """One part of a (possibly fused) query: a text or a media file, with a signed weight."""

    text: str | None = None
    image: str | None = None
    at: float | None = None
    weight: float = 1.0
    pixels: Image.Image | None = None  # an already decoded image (an upload)


def parse_compact(query: str) -> list[Part]:
    """``2:beach + @ref.jpg - people`` → parts, each with an optional ``weight:`` and a sign. A part
    written ``@path`` is an image (or video) file; every other part is text. Decided by syntax
    alone, never by looking at the disk, so the answer to a query never tells whether a file
    exists. Only a query with `` + `` or `` - `` between parts is compact (or one that starts
    with ``@``): plain text stays one part."""
    if not re.search(r"\s[+-]\s", query) and not query.lstrip().startswith(FILE_MARK):
        return [Part(text=query)]
    # split no further than one part too many: a 20 MB query of "a + a + ..." must not become
    # millions of parts (it held a server's event loop for 21 s) before it is refused
    tokens = re.split(r"\s([+-])\s", query, maxsplit=MAX_PARTS)
    if len(tokens) > 2 * MAX_PARTS:
        raise UserError(f"a query has at most {MAX_PARTS} parts")
    parts, sign = [], 1.0
    for token in tokens:
        if token in ("+", "-"):
            sign = 1.0 if token == "+" else -1.0
            continue
        m = re.match(r"^\s*(\d+(?:\.\d+)?):(.*)$", token)
        weight, body = (float(m.group(1)), m.group(2).strip()) if m else (1.0, token.strip())
        if not weight <= MAX_WEIGHT:
            raise UserError(f"a part's weight is at most {MAX_WEIGHT:g}, not {m.group(1)[:20] if m else weight}")
        if body.startswith(FILE_MARK):
            if not body[1:].strip():
                raise UserError(f"{FILE_MARK} needs a file name after it, as in {FILE_MARK}photo.jpg")
            parts.append(Part(image=os.path.expanduser(body[1:].strip()), weight=sign * weight))
        elif body:
            parts.append(Part(text=body, weight=sign * weight))
    return parts


def part_vector(index: Index, part: Part) -> np.ndarray:
    """One unit vector for a text, an image file, or a video's frame at `part.at` seconds."""
    if part.text is not None:
        if not part.text.strip():
            raise UserError("the text query is empty")
        return index.embedder().encode_texts([part.text])[0]
    img = part.pixels
    if img is None:
        path = part.image or ""
        if not os.path.isfile(path):
            raise UserError(f"query image {path} does not exist")
        try:
            img = frame_at(path, part.at or 0.0) if kind_of(path) == "video" else load_image(path)
        except DecodeError as e:
            raise UserError(f"cannot read query image {path}: {e}") from None
    return index.embedder(images=True).encode_images([img])[0]


def early_fusion(vectors: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Weighted sum of unit query vectors (negatives subtract), renormalised."""
    v = np.sum([w * x for w, x in zip(weights, vectors)], axis=0)
    norm = np.linalg.norm(v)
    if norm < 1e-6:
        raise UserError("the query parts cancel each other out")
    return (v / norm).astype(np.float32)


def query_parts(request: SearchRequest, pixels: Image.Image | None = None) -> list[Part]:
    """The weighted parts of a request: its text (compact syntax split), an uploaded image's
    `pixels`, its example images, then its negative texts; `weights` scale the positives in order."""
    parts = parse_compact(request.q) if request.q is not None else []
    if pixels is not None:
        parts.append(Part(pixels=pixels))
    parts += [Part(image=os.path.expanduser(p), at=request.at) for p in request.image]
    if not parts:
        raise UserError("give a text query or an image")
    positives = [p for p in parts if p.weight > 0]
    if len(request.weights) > len(positives):
        raise UserError(f"{len(request.weights)} weights for {len(positives)} positive parts")
    for p, w in zip(positives, request.weights):
        p.weight *= w
    parts += [Part(text=t, weight=-1.0) for t in request.negative]
    if len(parts) > MAX_PARTS:
        raise UserError(f"a query has at most {MAX_PARTS} parts, not {len(parts)}")
    return parts


def run(index: Index, request: SearchRequest, pixels: Image.Image | None = None) -> list[Hit]:
    """Answer a search request (with an uploaded image's decoded `pixels`, if any)."""
    parts = query_parts(request, pixels)
    words = lexical_text(parts)
    if request.mode == "lexical":
        if words is None:
            raise UserError("lexical search needs a plain text query (no images, no + or - parts)")
        return lexical_search(index, words, request)
    dense = fused_search(index, parts, request, depth=fusion_depth(request) if words is not None and request.mode == "hybrid" else None)
    if words is None or request.mode == "semantic":
        return dense
    return hybrid(index, dense, words, request)


def lexical_text(parts: list[Part]) -> str | None:
    """The text a lexical search looks for: a query of one plain text part, else None."""
    return parts[0].text if len(parts) == 1 and parts[0].text is not None and parts[0].weight > 0 else None


def fusion_depth(request: SearchRequest) -> int:
    """How many of each ranking a rank fusion merges."""
    return max(100, request.k * 10)


def lexical_search(index: Index, words: str, request: SearchRequest, depth: int | None = None) -> list[Hit]:
    """Hits whose file name, text or text in the image contains every word of `words`."""
    filters = Filters.of(request)
    allowed = filters.allowed_ids(index)
    with index.reading() as conn:
        matched = lexical.search(conn, words, depth or request.k * 4 + 16, None if allowed is None else set(allowed.tolist()))
    return _group(_rows(index, matched), depth or request.k, None, request.per_video)


def hybrid(index: Index, dense: list[Hit], words: str, request: SearchRequest) -> list[Hit]:
    """The semantic and lexical rankings merged by reciprocal rank; the semantic ranking alone
    when no words match. An item in both lists sums both credits; a tie goes to the lexical
    match (it contains the very words asked for)."""
    matched = lexical_search(index, words, request, fusion_depth(request))
    if not matched:
        return dense[: request.k]
    score: dict[int, float] = {}
    for rank, h in enumerate(matched):
        score[h.item_id] = LEXICAL_WEIGHT / (RRF_K + rank + 1)
    for rank, h in enumerate(dense):
        score[h.item_id] = score.get(h.item_id, 0.0) + 1.0 / (RRF_K + rank + 1)
    best = sorted(score, key=lambda i: -score[i])  # stable: on a tie the lexical match, entered first, leads
    return _group(_rows(index, [(i, score[i]) for i in best]), request.k, None, request.per_video)


def fused_search(index: Index, parts: list[Part], request: SearchRequest, depth: int | None = None) -> list[Hit]:
    """Search with several weighted parts, with the request's k (or `depth` hits, for a rank
    fusion), fusion, filters and limits. early: one search with the fused vector. late: each
    part searched alone, lists merged by reciprocal-rank fusion; negative parts subtract their
    own RRF credit."""
    if not any(p.weight > 0 for p in parts):
        raise UserError("a query needs at least one positive part")
    vectors = [part_vector(index, p) for p in parts]
    filters = Filters.of(request)
    k = depth or request.k
    if request.fusion == "early" or len(parts) == 1:
        return search(index, early_fusion(vectors, [p.weight for p in parts]), k,
                      min_score=request.min_score, filters=filters, per_video=request.per_video)
    score: dict[int, float] = {}
    for p, v in zip(parts, vectors):
        for rank, h in enumerate(search(index, v, fusion_depth(request), filters=filters, per_video=request.per_video)):
            score[h.item_id] = score.get(h.item_id, 0.0) + p.weight / (RRF_K + rank + 1)
    best = sorted((i for i in score if score[i] > 0), key=lambda i: -score[i])
    return _group(_rows(index, [(i, score[i]) for i in best]), k, None, request.per_video)


def search(index: Index, vector: np.ndarray, k: int, *, min_score: float | None = None,
           filters: Filters | None = None, per_video: int = DEFAULT_PER_VIDEO) -> list[Hit]:
    """Best-first hits for a query vector.

    Video moments are grouped: one hit per shot (its best keyframe), at most `per_video` per
    video. Filters restrict FAISS to the matching ids; more candidates are fetched while
    grouping leaves fewer than `k`."""
    allowed = (filters or Filters()).allowed_ids(index)
    loaded = index.faiss_index()
    total = loaded.index.ntotal if allowed is None else len(allowed)
    fetch = k * 4 + 16
    while True:
        n = min(fetch, total)
        found = index.search_vector(vector, n, allowed, loaded)
        hits = _group(_rows(index, found), k, min_score, per_video)
        exhausted = n >= total or (min_score is not None and found and found[-1][1] < min_score)
        if len(hits) >= k or exhausted:
            return hits[:k]
        fetch *= 4


def _rows(index: Index, ranked: list[tuple[int, float]]) -> list[tuple[Found, float]]:
    if not ranked:
        return []
    with index.reading() as conn:
        rows = found(conn, [i for i, _ in ranked])
    # an id missing from the store was removed after the FAISS snapshot was taken
    return [(rows[i], score) for i, score in ranked if i in rows]


def _hit(row: Found, score: float) -> Hit:
    # a capture time from the file's own clock is no capture time: only metadata is shown
    taken = iso_taken(row.taken_ns, row.offset_min) if row.taken_ns is not None and row.taken_from not in (None, FILE_TIME) else None
    return Hit(row.path, round(score, 6), row.kind, row.id, row.timestamp, row.start, row.end, row.text,
               row.offset, row.link_path, lexical.ocr_text(row.ocr) or None, taken, row.camera, row.lat, row.lon)


def _group(rows: list[tuple[Found, float]], k: int, min_score: float | None, per_video: int) -> list[Hit]:
    hits: list[Hit] = []
    shots_seen: set[tuple[int, float | None]] = set()
    per_file: dict[int, int] = {}
    for row, score in rows:
        if min_score is not None and score < min_score:
            continue
        if row.kind == "video":
            shot = (row.file_id, row.start)
            if shot in shots_seen or per_file.get(row.file_id, 0) >= per_video:
                continue
            shots_seen.add(shot)
            per_file[row.file_id] = per_file.get(row.file_id, 0) + 1
        hits.append(_hit(row, score))
        if len(hits) >= k:
            break
    return hits

