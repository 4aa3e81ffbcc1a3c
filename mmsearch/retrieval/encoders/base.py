"""The one interface every model speaks: images and texts in, unit vectors out.

The indexer splits image encoding into preprocessing (CPU, runs in decode workers; see
`pixels.py`) and `encode_pixels` (the model forward), so decoding overlaps with the model. Everything
else — search, training, eval — only needs `encode_images` and `encode_texts`, which preprocess
the same way.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ...media.image import ResizeCrop
from . import MAX_TEXT_CHARS
from .pixels import PixelPrep

if TYPE_CHECKING:
    from torchvision.transforms import Compose


@dataclass
class TextExport:
    """What it takes to run a model's text side without PyTorch: the module to export (token ids
    and mask in, raw embedding out) and a `tokenizers` file that tokenizes as the model does."""

    module: torch.nn.Module
    inputs: tuple[str, ...]  # input_ids[, attention_mask]
    tokenizer: Any  # a tokenizers JSON file (a Path), or a `tokenizers.Tokenizer`
    max_length: int
    pad_id: int = 0
    pad_to: int | None = None  # pad every text to this many tokens (a tower that reads a fixed context)
    clean: str | None = None  # cleaning before the tokenizer (`query.CLEANERS`): what it cannot express


class Encoder(ABC):
    #: stable identity of architecture + weights; the index stores it and refuses mixing.
    identity: str
    #: the user-facing spec that reloads this model (e.g. ``lite``, ``open_clip:ViT-B-32:laion2b_s34b_b79k``).
    spec: str
    dim: int
    #: input side length; lets the decoder shrink large JPEGs while decoding.
    image_size: int = 224
    #: the model's torchvision transform (resize, crop, to-tensor, normalise); images go through
    #: `pixel_prep`, which splits it so that indexing can normalise whole batches at once
    transform: Compose

    @cached_property
    def pixel_prep(self) -> PixelPrep:
        """This model's preprocessing, split for batches (made once per loaded model)."""
        return PixelPrep.of(self)

    def text_export(self) -> TextExport | None:
        """The text side as an ONNX-exportable module with its tokenizer; None: queries need PyTorch."""
        return None

    def query_geometry(self) -> dict | None:
        """The image preprocessing as plain parameters (`media.image.geometry` makes it again
        without torchvision): one `ResizeCrop`, or torchvision's Resize of the short side then
        CenterCrop; None when image queries need the model's own transform."""
        from torchvision import transforms as T
        from torchvision.transforms.functional import InterpolationMode, pil_modes_mapping

        steps = getattr(self.pixel_prep.geometry, "transforms", [])
        if len(steps) == 1 and isinstance(steps[0], ResizeCrop):
            return {"kind": "resize-crop", "resize": steps[0].resize, "crop": steps[0].crop}
        if (len(steps) == 2 and isinstance(steps[0], T.Resize) and isinstance(steps[1], T.CenterCrop)
                and isinstance(steps[0].interpolation, InterpolationMode) and steps[0].max_size is None):
            size, crop = steps[0].size, steps[1].size
            size = size[0] if isinstance(size, (list, tuple)) and len(size) == 1 else size
            if isinstance(size, int) and len(crop) == 2 and crop[0] == crop[1]:
                return {"kind": "resize-center-crop", "resize": size, "crop": int(crop[0]),
                        "resample": int(pil_modes_mapping[steps[0].interpolation])}
        return None

    @abstractmethod
    def _forward_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Batch of preprocessed images -> raw embeddings."""

    def bf16_forward(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """`_forward_pixels` with the image tower's weights in bfloat16 (a copy: the model keeps
        its float32 weights for queries and exports), float32 in and out; None: not offered. On
        CPUs with AMX it ran ViT-B-32 4.2× as fast as float32 (runtime.py: when it is used).
        `lite` offers none: its ConSE block follows the top ImageNet classes, which bfloat16's
        rounding reorders (cosine to float32 0.92 on calibration images, 0.977 on a photo)."""
        return None

    def on_device(self, device: str | torch.device) -> Encoder:
        """A copy of this encoder whose modules and tensors (and dicts of tensors: `lite`'s head)
        live on `device`, for `_forward_pixels` there; this one keeps its own on the CPU.
        Scalars stay: PyTorch mixes a CPU scalar into any device's arithmetic, and reading one
        (`float(head["conse_weight"])`) then waits for no GPU."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device) if t.dim() else t

        moved = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, torch.nn.Module):
                setattr(moved, name, copy.deepcopy(value).to(device))
            elif isinstance(value, torch.Tensor):
                setattr(moved, name, move(value))
            elif isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
                setattr(moved, name, {k: move(v) for k, v in value.items()})
        return moved

    @abstractmethod
    def _forward_texts(self, texts: list[str]) -> torch.Tensor:
        """Batch of strings -> raw embeddings (long texts truncated, never an error)."""

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        return _normalise(self._forward_pixels(pixels))

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        prep = self.pixel_prep
        return prep.torch_encoder(self)(np.stack([prep(im) for im in images]))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of texts. Each is cut to MAX_TEXT_CHARS before tokenizing: the towers read
        at most a few hundred tokens, and tokenizing a 6 MB query whole took 9 s and 1.8 GB."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return _normalise(self._forward_texts([t[:MAX_TEXT_CHARS] for t in texts]))


def _normalise(x: torch.Tensor) -> np.ndarray:
    x = torch.nn.functional.normalize(x.float(), dim=-1)
    return np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)
