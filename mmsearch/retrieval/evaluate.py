"""Retrieval metrics where identical captions count as several right answers."""
from __future__ import annotations

from typing import Any

import numpy as np


def recall_metrics(img: np.ndarray, txt: np.ndarray, captions: list[str], ks=(1, 5, 10)) -> dict:
    """text→image and image→text Recall@k and MRR. `img[i]` and `txt[i]` belong to pair i; texts
    are deduplicated so a repeated caption is one query whose right answers are all its images."""
    uniq = sorted(set(captions))
    cid = np.array([uniq.index(c) for c in captions]) if len(uniq) < 2000 else np.unique(captions, return_inverse=True)[1]
    first = {c: i for i, c in reversed(list(enumerate(cid)))}
    t = txt[[first[c] for c in range(len(uniq))]]
    sim = t @ img.T  # (texts, images)
    right = cid[None, :] == np.arange(len(uniq))[:, None]
    out: dict[str, Any] = {}
    for name, s, r in (("text_to_image", sim, right), ("image_to_text", sim.T, right.T)):
        order = np.argsort(-s, axis=1)
        hit = np.take_along_axis(r, order, axis=1)
        rank = hit.argmax(axis=1)  # 0-based rank of the first right answer
        out[name] = {f"R@{k}": round(float((rank < k).mean()), 4) for k in ks}
        out[name]["MRR"] = round(float((1.0 / (rank + 1)).mean()), 4)
    out["pairs"], out["unique_captions"] = len(captions), len(uniq)
    return out
