"""The one interface every model speaks: images and texts in, unit vectors out.

The indexer splits image encoding into preprocessing (CPU, runs in decode workers; see
`pixels.py`) and `encode_pixels` (the model forward), so decoding overlaps with the model. Everything
else — search, training, eval — only needs `encode_images` and `encode_texts`, which preprocess
the same way.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from PIL import Image

from .pixels import PixelPrep

#: characters of a text that reach a tokenizer: comfortably more than the 77 (CLIP) to 256 tokens
#: text towers read, at a few characters a token
MAX_TEXT_CHARS = 4096

if TYPE_CHECKING:
    from torchvision.transforms import Compose


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

    @abstractmethod
    def _forward_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Batch of preprocessed images -> raw embeddings."""

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
