"""Model registry: turn a user's ``--model`` spec into an `Encoder`."""
from __future__ import annotations

from functools import lru_cache

from .base import Encoder, ModelLoadError

DEFAULT_MODEL = "lite"


@lru_cache(maxsize=4)
def load_encoder(spec: str | None = None) -> Encoder:
    """Load (once per process) the model a spec names: ``lite`` or ``open_clip:ARCH:TAG|PATH``."""
    spec = spec or DEFAULT_MODEL
    if spec == "lite" or spec.startswith("lite:"):
        from .lite import LiteEncoder

        return LiteEncoder(spec)
    if spec.startswith("open_clip:"):
        from .openclip import OpenClipEncoder

        return OpenClipEncoder(spec)
    raise ModelLoadError(f"unknown model {spec!r}: use 'lite' (default, offline) or open_clip:ARCH:TAG or open_clip:ARCH:/path/to/checkpoint.pt")


__all__ = ["DEFAULT_MODEL", "Encoder", "ModelLoadError", "load_encoder"]
