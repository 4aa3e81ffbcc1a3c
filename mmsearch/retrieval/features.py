"""Frozen-tower features for training and evaluating heads, cached on disk by image content.

Only the small head on top of the frozen towers is trained, so each image and caption goes
through its tower once; epochs then run on cached features in seconds.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from ..media.errors import DecodeError
from ..media.files import file_digest
from ..media.image import load_image
from ..paths import cache_root
from .encoders.pixels import PixelPrep


def cache_dir() -> str:
    return str(cache_root() / "features")


class FeatureCache:
    """digest -> feature row, one .npz per feature extractor, saved as it grows (resumable)."""

    def __init__(self, feature_id: str):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in feature_id)
        self.path = os.path.join(cache_dir(), f"{safe}.npz")
        self.rows: dict[str, np.ndarray] = {}
        if os.path.exists(self.path):
            with np.load(self.path) as z:
                self.rows = dict(zip(z["keys"].tolist(), z["values"]))

    def save(self) -> None:
        if not self.rows:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp.npz"
        np.savez(tmp, keys=np.array(list(self.rows)), values=np.stack(list(self.rows.values())))
        os.replace(tmp, self.path)


def image_features(paths: list[str], feature_id: str, prep: PixelPrep, forward, batch_size: int = 32, workers: int = 4,
                   progress: bool = True) -> np.ndarray:
    """Features for each image path (rows in order), computing only what the cache lacks.
    Rows of images that cannot be decoded are NaN; callers drop them. Worker threads decode and
    resize the next batch while the model runs on this one; they hand over uint8 pixels and the
    batch is normalised here, so no torch work runs in the workers (per-image torch ops in four
    threads beside the model's own thread pool spent more time in the kernel than computing)."""
    digests = [file_digest(p) for p in paths]
    cache = FeatureCache(feature_id)
    todo = sorted({d: p for d, p in zip(digests, paths) if d not in cache.rows}.items())
    bar = tqdm(total=len(todo), desc="image features", unit="img", disable=not progress or not todo)

    def decoded(item):
        try:
            return item[0], prep(load_image(item[1]))
        except DecodeError:
            return item[0], None

    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    with ThreadPoolExecutor(workers) as pool:
        ahead = [pool.submit(decoded, item) for item in batches[0]] if batches else []
        for n, following in enumerate(batches[1:] + [[]]):
            current, ahead = ahead, [pool.submit(decoded, item) for item in following]
            batch = [b for b in (f.result() for f in current) if b[1] is not None]
            if not batch:
                continue
            with torch.inference_mode():
                feats = forward(prep.normalise(np.stack([b[1] for b in batch]))).float().numpy()
            cache.rows.update(zip([b[0] for b in batch], feats))
            bar.update(len(batch))
            if n % 20 == 19:
                cache.save()
    bar.close()
    cache.save()
    dim = len(next(iter(cache.rows.values()))) if cache.rows else 1
    missing = np.full(dim, np.nan, np.float32)
    return np.stack([cache.rows.get(d, missing) for d in digests])


def text_features(texts: list[str], forward, batch_size: int = 128) -> np.ndarray:
    uniq = sorted(set(texts))
    out: dict[str, np.ndarray] = {}
    for i in range(0, len(uniq), batch_size):
        with torch.inference_mode():
            out.update(zip(uniq[i : i + batch_size], forward(uniq[i : i + batch_size]).float().numpy()))
    return np.stack([out[t] for t in texts])
