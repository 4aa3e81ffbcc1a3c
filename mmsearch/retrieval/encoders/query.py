"""Queries without PyTorch: a model's text tower (and, where its preprocessing allows, its image
tower) run by ONNX Runtime from exports kept in the user's cache, one folder per model identity,
shared by every index that uses the model.

A one-shot `mmsearch search` spent ~6 s of its ~6 s importing torch, torchvision and transformers
and loading the model (1 GB resident) to embed one short text. With an export here it imports
onnxruntime and tokenizers and loads only the text tower. `runtime.export_for_queries` writes a
folder (the indexer does after a run, a slow query does when it finds none) and checks it against
PyTorch before `meta.json`, the folder's seal, is written: a folder without a valid seal, or
whose files fail to load, is never used, and is written anew.

Each tower is kept as ONNX Runtime optimises it, its weights apart in `<file>.data`: a session
then maps the weights instead of parsing them out of a protobuf, and skips graph optimisation.
ViT-B-32-256's text tower (254 MB) opened in 0.58 s as one plain .onnx (0.35 s of it parsing,
the rest optimising and repacking weights), in 0.04 s so (create + first run 0.67 → 0.17 s,
RSS 401 → 210 MB: only the pages it reads are resident); its image tower (352 MB) 0.94 →
0.04 s (+ first run 1.14 → 0.33 s). Saving in ONNX Runtime's own format instead measured no
faster (0.58 s: the whole file is read and copied) and used more memory (641 MB).
"""
from __future__ import annotations

import hashlib
import json
import os
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
from ..db import connect, get_meta
from . import MAX_TEXT_CHARS

#: changes whenever the exported graphs' inputs, outputs, quantisation or files change, so older
#: exports are not reused (they live in another folder); query-v2: optimised graphs, weights apart
EXPORT_FORMAT = "uint8-nhwc;int8-7bit;query-v2"
META = "meta.json"
#: the sealed text export's version, checked apart from the format so that a change here remakes
#: only the query export, not the indexer's image towers in the same folder. 2: texts cleaned as
#: open_clip cleans them (`clean_open_clip`) before its rebuilt tokenizer
TEXT_VERSION = 2


def clean_open_clip(text: str) -> str:
    """What open_clip's tokenizer does to a text before its BPE and that a `tokenizers` normaliser
    cannot: ftfy's repairs (curly quotes, full-width letters, mojibake, control characters) and
    HTML entities, unescaped twice. Without it "don’t" or "Tom &amp; Jerry" got other token ids,
    and vectors at cosine 0.5–0.8 to the model's own (tiny test model). Printable ASCII without
    "&" has nothing to repair or unescape: returned stripped, without importing ftfy (0.03 s on
    the Xeon, 0.15 s of a 1.3 s one-shot query on the AMD EPYC)."""
    if text.isascii() and text.isprintable() and "&" not in text:
        return text.strip()
    import html

    import ftfy

    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


#: the cleaning a text export names (`TextExport.clean`)
CLEANERS = {"open_clip": clean_open_clip}


def model_dir(identity: str) -> Path:
    """The cache folder of one model identity (architecture + weights) and export format."""
    return cache_root() / "models" / hashlib.sha1(f"{identity}:{EXPORT_FORMAT}".encode()).hexdigest()[:16]


def _session(path: Path, prepack: bool = True):
    """A session of an exported tower, saved optimised already (`runtime.optimise`). Without
    `prepack` the weights are not copied into the matrix kernels' layout when it opens but packed
    on the fly at each run: for one run (a one-shot query) that measured 0.67 → 0.17 s
    (create + run) for ViT-B-32-256's text tower; later runs are ~30 % slower (0.10 → 0.13 s)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # done at export
    opts.add_session_config_entry("session.disable_prepacking", "0" if prepack else "1")
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
    #: False for a one-shot query: one run each, see `_session`
    prepack: bool = True
    _sessions: dict[str, Any] = field(default_factory=dict, repr=False)
    #: vectors of texts embedded ahead of being asked for (`preload`)
    _ahead: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, identity: str, folder: Path | None = None, prepack: bool = True) -> QueryEncoder | None:
        """The sealed export of `identity`, its sessions not open yet; None: no export, or
        another model's, or another format's."""
        folder = folder or model_dir(identity)
        try:
            meta = json.loads((folder / META).read_text())
        except (OSError, ValueError):
            return None
        if (meta.get("identity") != identity or meta.get("format") != EXPORT_FORMAT or "text" not in meta
                or meta.get("text_version") != TEXT_VERSION):
            return None
        return cls(folder, identity, int(meta["dim"]), meta["text"], meta.get("image"), prepack)

    @classmethod
    def load(cls, identity: str, folder: Path | None = None, texts: bool = True,
             images: bool = False, prepack: bool = True) -> QueryEncoder | None:
        """`read`, with the sessions for texts and/or images open."""
        query = cls.read(identity, folder, prepack)
        return query if query is not None and query.open(texts, images) else None

    def open(self, texts: bool = True, images: bool = False) -> bool:
        """Open the sessions that texts and/or images need (those open already stay). False when a
        file does not load (damaged, truncated): the folder is unsealed then, so that the next
        export writes it anew."""
        try:
            if texts:
                self._get("tokenizer", self._tokenizer)
                self._tower("text")
            if images and self.image is not None:
                self._tower("image")
        except Exception:  # ONNX Runtime and tokenizers raise their own types
            (self.folder / META).unlink(missing_ok=True)
            return False
        return True

    def _get(self, name: str, make) -> Any:
        if name not in self._sessions:
            self._sessions[name] = make()
        return self._sessions[name]

    def _tower(self, name: str) -> Any:
        spec = self.text if name == "text" else self.image
        assert spec is not None
        return self._get(name, lambda: _session(self.folder / spec["file"], self.prepack))

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
        if all(t in self._ahead for t in texts):
            return np.stack([self._ahead[t] for t in texts])
        tok = self._get("tokenizer", self._tokenizer)
        session = self._tower("text")
        clean = CLEANERS[self.text["clean"]] if self.text.get("clean") else (lambda t: t)
        enc = tok.encode_batch([clean(t[:MAX_TEXT_CHARS]) for t in texts])
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
        session = self._tower("image")
        pixels = np.stack([np.asarray(shape(im.convert("RGB")), np.uint8) for im in images])
        return unit(session.run(None, {"input": pixels})[0])


_PRELOADING: dict[str, Future] = {}


def preload(index_dir: str, texts: bool = True, images: bool = False, ahead: Sequence[str] = ()) -> None:
    """Start opening the query export of the model of the index at `index_dir` in a thread, for
    one-shot use (no prepacking), and embedding the texts `ahead`, while the caller imports the
    rest (~0.4 s). For ViT-B-32-256 the thread's work is ~0.25 s: tokenizer 0.10 s (holding the
    GIL), session 0.05 s, one text 0.06–0.11 s (ONNX Runtime releases the GIL), so the text is
    ready when the search asks for it. Reads the index's model with sqlite3 alone: this runs
    before the rest is imported. Does nothing when anything is missing."""
    try:
        with closing(connect(os.path.expanduser(index_dir))) as conn:
            identity = get_meta(conn, "model_identity")
    except sqlite3.Error:
        return
    if identity and identity not in _PRELOADING:
        _PRELOADING[identity] = ThreadPoolExecutor(1).submit(_open, identity, texts, images, list(ahead))


def _open(identity: str, texts: bool, images: bool, ahead: list[str]) -> QueryEncoder | None:
    query = QueryEncoder.load(identity, None, texts, images, prepack=False)
    if query is not None and texts and ahead:
        try:
            query._ahead = dict(zip(ahead, query.encode_texts(ahead)))
        except Exception:  # asked again when needed, and failing there if it must
            pass
    return query


def preloaded(identity: str) -> QueryEncoder | None:
    """What `preload` opened for `identity` (waiting for it to finish), if it ran."""
    future = _PRELOADING.pop(identity, None)
    return future.result() if future is not None else None
