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
import sqlite3
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ...media.image import geometry
from ...paths import cache_root
from . import MAX_TEXT_CHARS

#: changes whenever the exported graphs' inputs, outputs or quantisation change, so older exports
#: are not reused (they live in another folder)
EXPORT_FORMAT = "uint8-nhwc;int8-7bit;query-v1"
META = "meta.json"


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
    def read(cls, identity: str, folder: Path | None = None) -> QueryEncoder | None:
        """The sealed export of `identity`, its sessions not open yet; None: no export, or
        another model's, or another format's."""
        folder = folder or model_dir(identity)
        try:
            meta = json.loads((folder / META).read_text())
        except (OSError, ValueError):
            return None
        if meta.get("identity") != identity or meta.get("format") != EXPORT_FORMAT or "text" not in meta:
            return None
        return cls(folder, identity, int(meta["dim"]), meta["text"], meta.get("image"))

    @classmethod
    def load(cls, identity: str, folder: Path | None = None, texts: bool = True,
             images: bool = False) -> QueryEncoder | None:
        """`read`, with the sessions for texts and/or images open."""
        query = cls.read(identity, folder)
        return query if query is not None and query.open(texts, images) else None

    def open(self, texts: bool = True, images: bool = False) -> bool:
        """Open the sessions that texts and/or images need (those open already stay). False when a
        file does not load (damaged, truncated): the folder is unsealed then, so that the next
        export writes it anew."""
        folder = self.folder
        try:
            if texts:
                self._get("tokenizer", self._tokenizer)
                self._get("text", lambda: _session(folder / self.text["file"]))
            if images and self.image is not None:
                image = self.image
                self._get("image", lambda: _session(folder / image["file"]))
        except Exception:  # ONNX Runtime and tokenizers raise their own types
            (folder / META).unlink(missing_ok=True)
            return False
        return True

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


_PRELOADING: dict[str, Future] = {}


def preload(index_dir: str, texts: bool = True, images: bool = False) -> None:
    """Start opening the query export of the model of the index at `index_dir` in a thread, so
    that its session loads (~0.5 s for ViT-B-32's text tower; ONNX Runtime releases the GIL)
    while the caller imports the rest (~0.4 s). Reads the index's model with sqlite3 alone: this
    runs before SQLAlchemy is imported. Does nothing when anything is missing."""
    try:
        db = Path(index_dir).expanduser() / "mmsearch.db"  # retrieval.store.DB_NAME, its `meta` table
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'model_identity'").fetchone()
    except sqlite3.Error:
        return
    if row and row[0] not in _PRELOADING:
        _PRELOADING[row[0]] = ThreadPoolExecutor(1).submit(QueryEncoder.load, row[0], None, texts, images)


def preloaded(identity: str) -> QueryEncoder | None:
    """What `preload` opened for `identity` (waiting for it to finish), if it ran."""
    future = _PRELOADING.pop(identity, None)
    return future.result() if future is not None else None
