"""Zero-shot tags: score indexed images and videos against label prompts in the shared space.

An image's scores are a softmax over the labels of its similarity to each prompt; a video's are
the share of its keyframes whose best label each one is — which classifies whole videos.
"""
from __future__ import annotations

import os

import numpy as np
from sqlalchemy import delete, select

from ..errors import UserError
from ..media.files import under
from .index import Index
from .store import File, Item, Tag, segments

TEMPERATURE = 100.0  # as CLIP's logit scale: turns cosine gaps of a few hundredths into decisions


def read_labels(spec: str) -> list[str]:
    """Labels from a file (one per line) or a comma-separated list."""
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8", errors="replace") as f:
            labels = [line.strip() for line in f]
    else:
        labels = [x.strip() for x in spec.split(",")]
    labels = list(dict.fromkeys(label for label in labels if label))
    if len(labels) < 2:
        raise UserError("give at least two labels (a file with one per line, or \"cat,dog,car\")")
    return labels


def tag_files(index: Index, labels: list[str], prompt: str = "a photo of a {}", threshold: float = 0.3,
              paths: list[str] | None = None) -> list[dict]:
    """Score, store and return the tags of every indexed image and video (under `paths` if given).
    A file keeps each label scoring at least `threshold`, and always its best one."""
    if "{}" not in prompt:
        raise UserError("--prompt needs a {} where the label goes, e.g. \"a photo of a {}\"")
    label_vecs = index.embedder().encode_texts([prompt.format(label) for label in labels])
    out = []
    with index.session() as s:
        files = s.scalars(select(File).where(File.status == "ok", File.kind.in_(["image", "video"])).order_by(File.path))
        for f in files:
            if paths and not under(f.path_key, paths):
                continue
            ids = s.scalars(select(Item.id).where(Item.file_id == f.id)).all()
            if not ids:
                continue
            scores = _scores(segments(s).get(ids) @ label_vecs.T, f.kind)
            order = np.argsort(-scores)
            keep = [i for i in order if scores[i] >= threshold] or [order[0]]
            s.execute(delete(Tag).where(Tag.file_id == f.id))
            s.add_all(Tag(file_id=f.id, label=labels[i], score=float(scores[i])) for i in keep)
            out.append({"path": f.path, "kind": f.kind, "tags": [{"label": labels[i], "score": round(float(scores[i]), 4)} for i in keep]})
        s.commit()
    return out


def _scores(sims: np.ndarray, kind: str) -> np.ndarray:
    if kind == "video":  # share of keyframes voting for each label
        return np.bincount(sims.argmax(1), minlength=sims.shape[1]) / len(sims)
    z = TEMPERATURE * sims[0]
    p = np.exp(z - z.max())
    return p / p.sum()
