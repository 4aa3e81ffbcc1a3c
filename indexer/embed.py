"""Decode and embed stage: files in, per-file item vectors out.

Decoding (images, or a video's keyframes) and preprocessing run in worker threads a few batches
ahead of the model, which embeds units from several files per forward pass. A file comes out
only when all its units are embedded, so the writer can commit it whole.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from retrieval.encoders import Encoder

from .decode import DecodeError, load_image
from .scan import Entry
from .video import keyframes

#: consecutive keyframes of one video closer than this (cosine) add nothing: the later one is dropped
DEDUPE_SIMILARITY = 0.95


@dataclass
class Decoded:
    entry: Entry
    digest: str
    size: tuple[int, int] | None = None
    units: list[tuple[dict, torch.Tensor]] = field(default_factory=list)  # (item fields, pixels)
    error: str | None = None
    vectors: np.ndarray | None = None

    def items(self) -> list[dict]:
        """Item rows to store, near-duplicate consecutive video keyframes dropped."""
        rows, last = [], None
        for (meta, _), vec in zip(self.units, self.vectors):
            if meta["kind"] == "video" and last is not None and float(vec @ last) > DEDUPE_SIMILARITY:
                continue
            rows.append({**meta, "vector": vec})
            last = vec
        return rows


def decode(entry: Entry, digest: str, encoder: Encoder, max_pixels: int, max_gap: float) -> Decoded:
    d = Decoded(entry, digest)
    try:
        if entry.kind == "video":
            frames = keyframes(entry.path, max_gap=max_gap, max_pixels=max_pixels)
            d.size = frames[0].image.size
            d.units = [({"kind": "video", "timestamp": k.timestamp, "start": k.start, "end": k.end},
                        encoder.preprocess(k.image.convert("RGB"))) for k in frames]
        else:
            img = load_image(entry.path, max_pixels, draft=2 * encoder.image_size)
            d.size, d.units = img.info["source_size"], [({"kind": "image"}, encoder.preprocess(img))]
    except DecodeError as err:
        d.error = str(err)
    except Exception as err:  # a decoder bug on one odd file must not end the run
        d.error = f"decode failed: {type(err).__name__}: {err}"
    return d


def embedded(todo: list[tuple[Entry, str]], encoder: Encoder, *, batch_size: int, workers: int, max_pixels: int,
             max_gap: float, progress: bool) -> Iterator[list[Decoded]]:
    """Yield lists of finished files (vectors filled, or error set), about one batch at a time."""
    bar = tqdm(total=len(todo), desc="embedding", unit="file", disable=not progress or not todo)
    with ThreadPoolExecutor(workers) as pool:
        jobs = iter(todo)
        pending: deque[Future] = deque()

        def refill() -> None:
            while len(pending) < batch_size * 2 and (job := next(jobs, None)) is not None:
                pending.append(pool.submit(decode, *job, encoder, max_pixels, max_gap))

        refill()
        while pending:
            done: list[Decoded] = []
            while pending and sum(len(d.units) for d in done) < batch_size:
                done.append(pending.popleft().result())
                refill()
            pixels = [px for d in done for _, px in d.units]
            vecs = np.concatenate([encoder.encode_pixels(torch.stack(pixels[i : i + batch_size]))
                                   for i in range(0, len(pixels), batch_size)]) if pixels else None
            start = 0
            for d in done:
                if d.error is None:
                    d.vectors = vecs[start : start + len(d.units)]
                    start += len(d.units)
            yield done
            bar.update(len(done))
    bar.close()
