"""Model registry: turn a user's ``--model`` spec into an `Encoder`."""
from __future__ import annotations

import threading
from functools import lru_cache
from typing import TYPE_CHECKING, Literal, get_args

from ...errors import ModelLoadError

if TYPE_CHECKING:  # torch loads only with a model: a no-op `mmsearch index` stays fast
    from .base import Encoder
    from .exported import ExportedEncoder

DEFAULT_MODEL = "lite"
#: `lite`: weight of the ImageNet-class (ConSE) block mixed in beside the learned one, at use and
#: as `train --conse-weight`'s default (defined here, not in lite.py, so reading it loads no torch)
DEFAULT_CONSE_WEIGHT = 0.7
#: characters of a text that reach a tokenizer: comfortably more than the 77 (CLIP) to 256 tokens
#: text towers read, at a few characters a token
MAX_TEXT_CHARS = 4096
#: what runs the image tower while indexing (see runtime.py)
Runtime = Literal["auto", "torch", "torch-bf16", "onnx", "onnx-int8", "cuda"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)
#: the runtime that is PyTorch with the image tower in float32 on a CUDA GPU (runtime.py)
CUDA = "cuda"


#: one model load at a time: concurrent first loads (a server's first requests) raced inside the
#: libraries' lazy imports ("cannot import name 'AutoModel'": three of four parallel searches failed)
_LOADING = threading.Lock()


def load_encoder(spec: str | None = None) -> Encoder:
    """Load (once per process) the model a spec names: ``lite`` or ``open_clip:ARCH:TAG|PATH``."""
    with _LOADING:
        return _load(spec or DEFAULT_MODEL)


def load_indexer(spec: str | None = None, runtime: str = "auto", images: int | None = None) -> Encoder | ExportedEncoder:
    """The model as an indexing run of `images` images (None: not known yet) needs it: its
    cached exports when they hold everything for `runtime` on this machine (exported.py; no
    PyTorch), else the model itself."""
    from .exported import ExportedEncoder

    found = ExportedEncoder.find(spec or DEFAULT_MODEL, runtime, images) if runtime != "torch" else None
    return found or load_encoder(spec)


@lru_cache(maxsize=4)
def _load(spec: str) -> Encoder:
    if spec == "lite" or spec.startswith("lite:"):
        from .lite import LiteEncoder

        return LiteEncoder(spec)
    if spec.startswith("open_clip:"):
        from .openclip import OpenClipEncoder

        return OpenClipEncoder(spec)
    raise ModelLoadError(f"unknown model {spec!r}: use 'lite' (default, offline) or open_clip:ARCH:TAG or open_clip:ARCH:/path/to/checkpoint.pt")


def __getattr__(name: str):
    if name == "Encoder":
        from .base import Encoder

        return Encoder
    raise AttributeError(name)


__all__ = ["DEFAULT_CONSE_WEIGHT", "DEFAULT_MODEL", "RUNTIMES", "Encoder", "ModelLoadError", "load_encoder", "load_indexer"]
