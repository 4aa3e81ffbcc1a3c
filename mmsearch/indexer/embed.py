"""Decode and embed stage: files in, per-file item vectors out.

Decoding (an image, a video's keyframes, a text file's passages) and preprocessing run in
workers a few batches ahead of the model, which embeds units from several files per forward
pass. A file comes out only when all its units are embedded, so the writer can commit it whole.
Workers do the per-image geometry (resize, crop) and hand over uint8 arrays; the model's batch
forward normalises them (retrieval/encoders/pixels.py). Workers are threads, or processes
(`processes=True`) so that Python-level work in decoding does not contend for the GIL with the
model loop; they receive only the picklable `PixelPrep`, never the model.

A file's capture metadata is read as it is decoded (`Decoded.capture`). An object under a URI
root is fetched to a temporary file for its decoders (media/fetch.py) and, while it is there,
hashed too (`Decoded.digest`): the driver's plan does not, so that it never downloads objects.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
from tqdm import tqdm

from ..media import fetch
from ..media.errors import DecodeError
from ..media.files import file_digest, is_uri
from ..media.image import load_image
from ..media.text import TextOptions, text_units
from ..media.video import keyframes
from ..retrieval.encoders.pixels import PixelEncoder, PixelPrep
from .annotate import capture_fields
from .options import IndexOptions
from .scan import Entry

if TYPE_CHECKING:  # (indexing from a model's exports loads no torch: exported.py)
    from ..retrieval.encoders import Encoder
    from ..retrieval.encoders.exported import ExportedEncoder

#: consecutive keyframes of one video closer than this (cosine) add nothing: the later one is dropped
DEDUPE_SIMILARITY = 0.95


@dataclass
class Decoded:
    entry: Entry
    digest: str
    size: tuple[int, int] | None = None
    units: list[tuple[dict, Any]] = field(default_factory=list)  # (item fields, uint8 pixels or text)
    error: str | None = None
    vectors: np.ndarray | None = None
    capture: dict | None = None  # its capture columns (None: read after, annotate.py)

    def items(self) -> list[dict]:
        """Item rows to store, near-duplicate consecutive video keyframes dropped."""
        assert self.vectors is not None, "embedded first"
        rows, last = [], None
        for (meta, _), vec in zip(self.units, self.vectors):
            if meta["kind"] == "video" and last is not None and float(vec @ last) > DEDUPE_SIMILARITY:
                continue
            rows.append({**meta, "vector": vec})
            last = vec
        return rows


def decode(entry: Entry, digest: str, prep: PixelPrep, opts: IndexOptions) -> Decoded:
    """One file's units ready for the model: pixels preprocessed by `prep`, or texts."""
    d = Decoded(entry, digest)
    try:
        with fetch.fetched(entry.path, entry.size) as path:
            if is_uri(entry.path):
                d.digest = file_digest(path)
            # (while the file is at hand, in a worker: read after the embedding, in the main thread,
            # it was 0.2-0.3 s more of a first index of 300 stamps)
            d.capture = capture_fields(path, entry.kind, entry.mtime_ns)
            if entry.kind == "text":
                d.units = [(u, u["text"]) for u in text_units(path, TextOptions(opts.text_column, opts.path_column), entry.path)]
            elif entry.kind == "video":
                frames = keyframes(path, max_gap=opts.max_gap, max_pixels=opts.max_pixels)
                d.size = frames[0].image.size
                d.units = [({"kind": "video", "timestamp": k.timestamp, "start": k.start, "end": k.end},
                            prep(k.image)) for k in frames]
            else:
                img = load_image(path, opts.max_pixels, draft=2 * prep.image_size)
                d.size, d.units = img.info["source_size"], [({"kind": "image"}, prep(img))]
    except DecodeError as err:
        d.error = str(err)
    except Exception as err:  # a decoder bug on one odd file must not end the run
        d.error = f"decode failed: {type(err).__name__}: {err}"
    return d


def _embed_units(done: list[Decoded], encoder: Encoder | ExportedEncoder, encode_pixels: PixelEncoder,
                 batch_size: int) -> None:
    """Fill each file's vectors: pixels through the image tower, strings through the text tower."""
    units = [u for d in done for _, u in d.units]
    pix = [i for i, u in enumerate(units) if not isinstance(u, str)]
    txt = [i for i, u in enumerate(units) if isinstance(u, str)]
    vecs = np.zeros((len(units), encoder.dim), np.float32)
    for i in range(0, len(pix), batch_size):
        idx = pix[i : i + batch_size]
        vecs[idx] = encode_pixels(np.stack([units[j] for j in idx]))
    for i in range(0, len(txt), batch_size * 2):
        idx = txt[i : i + batch_size * 2]
        vecs[idx] = encoder.encode_texts([units[j] for j in idx])
    start = 0
    for d in done:
        d.vectors = vecs[start : start + len(d.units)]
        start += len(d.units)


def embedded(todo: list[tuple[Entry, str]], encoder: Encoder | ExportedEncoder, opts: IndexOptions, *, batch_size: int, workers: int,
             progress: bool, encode_pixels: PixelEncoder, processes: bool = False) -> Iterator[list[Decoded]]:
    """Yield lists of finished files (vectors filled, or error set), about one batch at a time.
    `encode_pixels` runs the image tower on uint8 batches (`exported.image_forward`)."""
    prep = encoder.pixel_prep
    bar = tqdm(total=len(todo), desc="embedding", unit="file", disable=not progress or not todo)
    # forkserver, not fork: a child forked from a process running torch's thread pools can hang
    # (a worker process opens objects with this one's URI roots' options: media/fetch.py)
    pool = (ProcessPoolExecutor(workers, mp_context=get_context("forkserver"), initializer=fetch.remember,
                                initargs=(fetch.remembered(),)) if processes else ThreadPoolExecutor(workers))
    # the model runs ahead of the caller, in its own threads (one per lane of the image forward):
    # while it embeds the next batches (native code, GIL released) the caller commits this one
    with pool, ThreadPoolExecutor(encode_pixels.lanes) as model:
        try:
            jobs = iter(todo)
            pending: deque[Future] = deque()

            def refill() -> None:
                while len(pending) < max(2 * batch_size, 4 * workers) and (job := next(jobs, None)) is not None:
                    pending.append(pool.submit(decode, *job, prep, opts))

            refill()
            embedding: deque[tuple[list[Decoded], Future]] = deque()
            left = len(todo)  # files not yet in a batch
            while pending or embedding:
                if pending:
                    # the last batches shrink (halving) so that every lane has work until the end, rather
                    # than one lane embedding a whole last batch while the others sit idle
                    target = min(batch_size, -(-left // encode_pixels.lanes))
                    done: list[Decoded] = []
                    while pending and sum(len(d.units) for d in done) < target:
                        done.append(pending.popleft().result())
                        refill()
                    left -= len(done)
                    embedding.append((done, model.submit(_embed_units, done, encoder, encode_pixels, batch_size)))
                if len(embedding) > encode_pixels.lanes or not pending:
                    done, future = embedding.popleft()
                    future.result()
                    yield done
                    bar.update(len(done))
        except BaseException:  # interrupted or failed: decoding not begun is dropped, not waited for
            pool.shutdown(wait=False, cancel_futures=True)
            model.shutdown(wait=False, cancel_futures=True)
            raise
    bar.close()
