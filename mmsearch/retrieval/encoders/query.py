"""Queries without PyTorch: a model's text tower (and, where its preprocessing allows, its image
tower) run by ONNX Runtime from exports kept in the user's cache, one folder per model identity,
shared by every index that uses the model.

A one-shot `mmsearch search` spent ~6 s of its ~6 s importing torch, torchvision and transformers
and loading the model (1 GB resident) to embed one short text. With an export here it imports
onnxruntime and tokenizers and loads only the text tower. `runtime.export_for_queries` writes a
folder (the indexer does after a run, a slow query does when it finds none) and checks it against
PyTorch before `meta.json`, the folder's seal, is written: a folder without a valid seal, or
whose files fail to load, is never used, and is written anew.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import platformdirs
from PIL import Image

from ...media.image import geometry
from . import MAX_TEXT_CHARS

#: changes whenever the exported graphs' inputs, outputs or quantisation change, so older exports
#: are not reused (they live in another folder)
EXPORT_FORMAT = "uint8-nhwc;int8-7bit;query-v1"
META = "meta.json"


def cache_root() -> Path:
    """Where mmsearch keeps what it can rebuild: model exports (models/), training features."""
    return Path(os.environ.get("MMSEARCH_CACHE") or platformdirs.user_cache_dir("mmsearch"))


def model_dir(identity: str) -> Path:
    """The cache folder of one model identity (architecture + weights) and export format."""
    return cache_root() / "models" / hashlib.sha1(f"{identity}:{EXPORT_FORMAT}".encode()).hexdigest()[:16]


def _session(path: Path, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # 0: one per core
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), np.float32)


@dataclass
class QueryEncoder:
    """`encode_texts` and `encode_images` as the model's `Encoder` answers them, on ONNX Runtime."""

    folder: Path
    identity: str
    dim: int
    text: dict
    image: dict | None = None
    _sessions: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, identity: str, folder: Path | None = None, images: bool = False) -> QueryEncoder | None:
        """The sealed export of `identity` with its text session open (and its image session,
        with `images`), or None: no export, another model's, or one whose files do not load,
        which is unsealed so that the next export writes it anew."""
        folder = folder or model_dir(identity)
        try:
            meta = json.loads((folder / META).read_text())
        except (OSError, ValueError):
            return None
        if meta.get("identity") != identity or meta.get("format") != EXPORT_FORMAT or "text" not in meta:
            return None
        query = cls(folder, identity, int(meta["dim"]), meta["text"], meta.get("image"))
        try:
            query._get("tokenizer", query._tokenizer)
            query._get("text", lambda: _session(folder / query.text["file"]))
            if images and query.image is not None:
                query._get("image", lambda: _session(folder / query.image["file"]))
        except Exception:  # a damaged or truncated file (ONNX Runtime and tokenizers raise their own types)
            (folder / META).unlink(missing_ok=True)
            return None
        return query

    def _get(self, name: str, make) -> Any:
        if name not in self._sessions:
            self._sessions[name] = make()
        return self._sessions[name]

    def _tokenizer(self):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(self.folder / self.text["tokenizer"]))
        tok.enable_truncation(self.text["max_length"])
        if self.text.get("pad_to"):  # towers that read a fixed context (CLIP)
            tok.enable_padding(pad_id=self.text["pad_id"], length=self.text["pad_to"])
        else:
            tok.enable_padding(pad_id=self.text["pad_id"])
        return tok

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        tok = self._get("tokenizer", self._tokenizer)
        session = self._get("text", lambda: _session(self.folder / self.text["file"]))
        enc = tok.encode_batch([t[:MAX_TEXT_CHARS] for t in texts])
        feeds = {"input_ids": np.array([e.ids for e in enc], np.int64)}
        if "attention_mask" in self.text["inputs"]:
            feeds["attention_mask"] = np.array([e.attention_mask for e in enc], np.int64)
        return unit(session.run(None, feeds)[0])

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Images as the model preprocesses them (only for models whose geometry needs no
        torchvision: `image` is set then)."""
        if self.image is None:
            raise RuntimeError("this model's image queries need PyTorch")
        shape = geometry(self.image)
        image = self.image
        session = self._get("image", lambda: _session(self.folder / image["file"]))
        pixels = np.stack([np.asarray(shape(im.convert("RGB")), np.uint8) for im in images])
        return unit(session.run(None, {"input": pixels})[0])
