"""A model spec's identity (architecture + weights), worked out without loading the model.

The identity keys everything derived from a model: an index's vectors, and the exports in the
user cache (`query.model_dir`). Working it out needs only a file's digest, not PyTorch, so an
indexing run can find a model's cached ONNX export before deciding whether to load the model at
all (exported.py). The encoders take their identity from here too, so both always agree.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import ModelLoadError
from ...media.files import file_digest

#: lite's shipped head, and the backbone its identity names (lite.py loads both)
LITE_HEAD = Path(__file__).parent / "weights" / "lite-head.safetensors"
LITE_BACKBONE = "tf_efficientnet_lite2"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def lite(spec: str) -> tuple[str, str, Path | None]:
    """(spec as stored, identity, head file or None) of ``lite`` or ``lite:/path/to/head.safetensors``."""
    head = Path(spec.split(":", 1)[1]).expanduser() if ":" in spec else LITE_HEAD
    stored = f"lite:{head.resolve()}" if ":" in spec else "lite"
    if head.is_file():
        return stored, f"lite:{LITE_BACKBONE}+minilm-l6:head-{file_digest(head)[:16]}", head
    if ":" in spec:
        raise ModelLoadError(f"lite head {head} does not exist")
    return stored, f"lite:{LITE_BACKBONE}+minilm-l6:conse", None


def is_local(weights: str) -> bool:
    """Whether an open_clip spec's weights name a file rather than a hub tag."""
    import os

    return os.sep in weights or weights.endswith(CHECKPOINT_SUFFIXES) or os.path.exists(weights)


def open_clip(spec: str) -> tuple[str, str]:
    """(spec as stored, identity) of ``open_clip:ARCH:TAG`` or ``open_clip:ARCH:/path/to/checkpoint``,
    where ARCH may be a model-config JSON file. Whether the architecture and tag exist is for
    open_clip to say (openclip.py); this only names them."""
    try:
        _, arch, weights = spec.split(":", 2)
    except ValueError:
        raise ModelLoadError(
            f"bad model spec {spec!r}: use open_clip:ARCH:TAG or open_clip:ARCH:/path/to/checkpoint.pt"
        ) from None
    arch_id = arch
    if arch.endswith(".json"):
        cfg = Path(arch).expanduser()
        if not cfg.is_file():
            raise ModelLoadError(f"model config {arch} does not exist")
        arch_id = f"{cfg.stem}@{file_digest(cfg)[:12]}"
    if not is_local(weights):
        return spec, f"open_clip:{arch_id}:{weights}"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {weights} does not exist")
    return f"open_clip:{arch}:{path.resolve()}", f"open_clip:{arch_id}:file-{file_digest(path)[:16]}"


def of(spec: str) -> tuple[str, str]:
    """(spec as stored, identity) of any model spec `load_encoder` takes."""
    if spec == "lite" or spec.startswith("lite:"):
        return lite(spec)[:2]
    if spec.startswith("open_clip:"):
        return open_clip(spec)
    raise ModelLoadError(f"unknown model {spec!r}: use 'lite' (default, offline) or open_clip:ARCH:TAG or open_clip:ARCH:/path/to/checkpoint.pt")
