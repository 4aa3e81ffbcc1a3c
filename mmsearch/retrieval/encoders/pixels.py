"""Image preprocessing split where it is cheapest for indexing: geometry in the decode workers,
arithmetic in the model.

A model's transform is resize → crop → to-tensor → normalise. The first two must run per image
on a PIL image; the last two are per-pixel arithmetic that costs about as much as the resize
when done image by image in Python (measured on Tux Paint stamps: 1.3 ms of ~4.3 ms decode work),
while inside the model's batch forward it is a vectorised pass over the batch. So decode workers
hand over uint8 HWC arrays (also 4× less to move between processes) and `PixelPrep.normalise`, or
the exported ONNX graph itself, turns a batch into the model's float input — the same operations
in the same order as torchvision's ToTensor + Normalize, so the vectors are bit-identical. Every
image the models see (indexing, queries, training features) goes through here.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # (torch loads only where a batch is normalised: indexing from exports needs none)
    import torch

    from .base import Encoder


@dataclass(frozen=True)
class PixelPrep:
    """An encoder's preprocessing as (picklable) PIL geometry plus the normalisation constants."""
    geometry: Callable[[Image.Image], Image.Image]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int

    @classmethod
    def of(cls, encoder: Encoder) -> PixelPrep:
        """Split the encoder's torchvision transform at its to-tensor step (an RGB conversion
        there is dropped: `__call__` converts first)."""
        from torchvision import transforms as T

        steps = list(encoder.transform.transforms)
        cut = next(i for i, s in enumerate(steps) if type(s).__name__ in ("ToTensor", "MaybeToTensor"))
        geometry = [s for s in steps[:cut] if not _to_rgb(s)]
        (norm,) = [s for s in steps[cut + 1 :] if isinstance(s, T.Normalize)]
        return cls(T.Compose(geometry), tuple(map(float, norm.mean)), tuple(map(float, norm.std)), encoder.image_size)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """PIL image -> uint8 HWC array of the model's input size."""
        return np.asarray(self.geometry(image if image.mode == "RGB" else image.convert("RGB")), dtype=np.uint8)

    def normalise(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 NHWC batch -> the float NCHW tensor the model's forward takes, on the batch's
        device (also traced into the ONNX export, so every runtime shares this one definition)."""
        import torch

        if isinstance(batch, np.ndarray) and not batch.flags.writeable:
            batch = batch.copy()  # torch cannot share read-only memory (it warned on every run)
        x = torch.as_tensor(batch).permute(0, 3, 1, 2).contiguous().float().div(255)
        mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (self.mean, self.std))
        return x.sub(mean).div(std)

    def torch_encoder(self, encoder: Encoder) -> PixelEncoder:
        """The encoder's PyTorch forward on uint8 batches (one at a time: it uses every core)."""
        return PixelEncoder(lambda batch: encoder.encode_pixels(self.normalise(batch)))


@dataclass(frozen=True)
class PixelEncoder:
    """An image forward on uint8 NHWC batches (what `PixelPrep` makes) -> unit vectors.

    `lanes` batches may run at once, from different threads: a runtime that splits the cores
    between independent sessions (see runtime.py) keeps every core busy without the per-layer
    hand-offs of one multi-threaded session, which on a few shared cores wait for whichever
    thread a decode worker has just pre-empted."""
    forward: Callable[[np.ndarray], np.ndarray]
    lanes: int = 1

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch)

    def many(self, batches: list[np.ndarray]) -> np.ndarray:
        """Every batch's vectors, in order, `lanes` batches at a time."""
        if self.lanes == 1:
            return np.concatenate([self(b) for b in batches])
        with ThreadPoolExecutor(self.lanes) as pool:
            return np.concatenate(list(pool.map(self, batches)))


def _to_rgb(step) -> bool:
    """Whether a transform step is open_clip's conversion to RGB (a class now, a function before)."""
    if type(step).__name__ == "MaybeConvertMode":
        return getattr(step, "mode", None) == "RGB"
    return getattr(step, "__name__", "") == "_convert_to_rgb"
