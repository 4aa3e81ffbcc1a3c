"""After embedding: what is read from files besides their vectors. Capture metadata (when, which
camera, where) for every file, and, when the index has OCR on, the text in its images.

Both run on whatever lacks them (a NULL column), so new files, changed files, and indexes made
before these existed are filled the same way, and content reused from a renamed file brings its
OCR text along. Each batch commits alone: a killed run keeps what it read.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from tqdm import tqdm

from ..media import fetch
from ..media.capture import Capture, read_capture
from ..media.errors import DecodeError
from ..media.image import load_image
from ..retrieval import lexical
from ..retrieval.db import chunks
from ..retrieval.store import File, Item, get_list
from .options import IndexOptions

BATCH = 64
#: a file's capture columns (`File.taken_ns` ...), as `capture_fields` gives them
CAPTURE = [f.name for f in dataclasses.fields(Capture)]


def captures(s: Session, opts: IndexOptions) -> int:
    """Read the capture metadata of every file that lacks it; returns how many were read."""
    rows = s.execute(select(File.id, File.path_key, File.kind, File.mtime_ns)
                     .where(File.status == "ok", File.taken_from.is_(None))).all()

    def read(row) -> dict:
        file_id, key, kind, mtime_ns = row
        return {"id": file_id, **capture_fields(os.fsdecode(key), kind, mtime_ns)}

    with ThreadPoolExecutor(opts.workers) as pool:
        for part in chunks(rows, BATCH):
            s.execute(update(File), list(pool.map(read, part)))
            s.commit()
    return len(rows)


def capture_fields(path: str, kind: str, mtime_ns: int) -> dict:
    """The capture columns of one file (`File.taken_ns` ...), the file time where it has none."""
    cap = read_capture(path, kind) if kind != "text" else Capture()
    return cap.with_fallback(mtime_ns).__dict__


def ocr(s: Session, opts: IndexOptions) -> tuple[int, float]:
    """Read the text in every image that has not been read; returns (images read, seconds)."""
    rows = s.execute(select(Item.id, File.path_key).join(File)
                     .where(Item.kind == "image", Item.ocr.is_(None), File.status == "ok")).all()
    start = time.perf_counter()
    # objects are fetched with their roots' options, also those of roots this run did not name
    fetch.remember(get_list(s, "roots"))

    def read(row) -> tuple[int, list | None]:
        item_id, key = row
        return item_id, read_ocr(os.fsdecode(key), opts.max_pixels)

    read_now = 0
    bar = tqdm(total=len(rows), desc="reading text", unit="image", disable=not opts.progress or not rows)
    # two threads: one decodes and runs Python glue while the other's ONNX sessions compute
    with ThreadPoolExecutor(2) as pool:
        for part in chunks(rows, BATCH):
            found = [(i, lines) for i, lines in pool.map(read, part) if lines is not None]
            if found:
                s.execute(update(Item), [{"id": i, "ocr": json.dumps(lines, ensure_ascii=False)} for i, lines in found])
            for i, lines in found:
                lexical.set_body(s, i, lexical.ocr_text(lines))
            s.commit()
            read_now += len(found)
            bar.update(len(part))
    bar.close()
    return read_now, time.perf_counter() - start


def read_ocr(path: str, max_pixels: int) -> list | None:
    """The text lines read in the image at `path` (an object's URI: fetched again, media/fetch.py),
    as stored (`Line.as_list`); none when it can no longer be decoded (changed or gone since it
    was embedded: the next run sees it); None when an object could not be fetched (the store
    down, the network): left unread, so that the next run tries again."""
    from ..media.ocr import MAX_SIDE, read_text

    try:
        with fetch.fetched(path) as local:
            try:
                img = load_image(local, max_pixels, draft=MAX_SIDE // 2)
            except DecodeError:
                return []
    except DecodeError:  # (raised by the fetch itself)
        return None
    return [line.as_list() for line in read_text(img)]
