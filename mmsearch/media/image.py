"""Image decoding with the guards a crawler of other people's folders needs.

Every failure becomes a `DecodeError` whose message is the reason recorded for the file.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import pillow_heif
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import DecodeError, check_pixels, os_reason, regular_size

#: default pixel limit (width × height) above which an image is treated as a decompression bomb.
DEFAULT_MAX_PIXELS = 100_000_000
#: default size limit (bytes) of an uploaded image (`mmsearch serve --max-upload`)
DEFAULT_MAX_UPLOAD = 20 << 20
#: an uploaded image is reduced to no less than this many pixels on its short side (models read 224–384)
UPLOAD_SIDE = 1024

Image.MAX_IMAGE_PIXELS = None  # we enforce our own, configurable limit before decoding
pillow_heif.register_heif_opener()  # HEIC/HEIF (phone photos) open like any other image
ImageFile.LOAD_TRUNCATED_IMAGES = False


def load_image(path: str | bytes | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int | None = None) -> Image.Image:
    """Open, bound-check, decode, apply EXIF orientation and flatten transparency onto white.

    `draft` lets JPEG decode straight at a reduced scale (≥ that many pixels on the short side),
    which is most of the decode cost for large photos. ``img.info["source_size"]`` keeps the
    full-resolution (oriented) size."""
    if regular_size(path) == 0:
        raise DecodeError("empty file")
    return _decode(path, max_pixels, draft)


def load_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The same guarded decoding for an uploaded image, shrunk (integer box reduction) to no less
    than UPLOAD_SIDE pixels on the short side before the conversions that copy it: a 388 KB PNG of
    10,000 × 10,000 transparent pixels otherwise took 1.7 GB."""
    if not data:
        raise DecodeError("empty file")
    return _decode(io.BytesIO(data), max_pixels, UPLOAD_SIDE, shrink=True)


def _decode(path, max_pixels: int, draft: int | None, shrink: bool = False) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opened = Image.open(path)
            w, h = opened.size
            check_pixels(w, h, max_pixels)
            if draft and opened.format == "JPEG":
                opened.draft("RGB", (draft, draft))
            opened.load()
            decoded: Image.Image = opened
            if shrink and draft and min(opened.size) >= 2 * draft:
                decoded = opened.reduce(min(opened.size) // draft)
            img = to_rgb(ImageOps.exif_transpose(decoded))
            rotated = img.size[0] != img.size[1] and (img.size[0] > img.size[1]) != (w > h)
            img.info["source_size"] = (h, w) if rotated else (w, h)
            return img
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not a recognised image format") from None
    except PermissionError as e:
        raise DecodeError(os_reason(e)) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        msg = str(e).split("\n")[0] or type(e).__name__
        raise DecodeError(f"corrupt or truncated image: {msg}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")


@dataclass(frozen=True)
class ResizeCrop:
    """Resize the short side to `resize`, then centre-crop `crop` × `crop` — as one resampling of
    just the cropped region (Pillow's ``box``), not a full resize whose border is then thrown
    away. The same picture as torchvision's Resize + CenterCrop to within a level or two (more at
    the very edge of tiny images; `lite` embeddings agree to cosine 0.9996 at worst, 0.99998 on
    average), in about half the time (Tux Paint stamps: 1.1–1.5 vs 2.5–2.8 ms), which on a few
    cores is time taken from the model. For `lite`, whose preprocessing is ours to define;
    open_clip models keep their makers' transform exactly."""
    resize: int
    crop: int

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        # torchvision's arithmetic: the long side is truncated, the crop offset rounded
        nw, nh = (self.resize, int(self.resize * h / w)) if w <= h else (int(self.resize * w / h), self.resize)
        left, top = round((nw - self.crop) / 2), round((nh - self.crop) / 2)
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy)
        return image.resize((self.crop, self.crop), Image.Resampling.BICUBIC, box=box)


@dataclass(frozen=True)
class ResizeCenterCrop:
    """torchvision's Resize (short side) then CenterCrop on a PIL image, without torchvision: the
    same arithmetic and the same PIL resampling, so the same pixels (open_clip's usual transform;
    queries use it to run without PyTorch)."""
    resize: int
    crop: int
    resample: int = Image.Resampling.BICUBIC

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        nw, nh = (self.resize, int(self.resize * h / w)) if w <= h else (int(self.resize * w / h), self.resize)
        image = image.resize((nw, nh), self.resample)
        left, top = int(round((nw - self.crop) / 2.0)), int(round((nh - self.crop) / 2.0))
        return image.crop((left, top, left + self.crop, top + self.crop))


def geometry(spec: dict):
    """The picture geometry a query export names (`kind`: resize-crop or resize-center-crop)."""
    if spec["kind"] == "resize-crop":
        return ResizeCrop(spec["resize"], spec["crop"])
    return ResizeCenterCrop(spec["resize"], spec["crop"], spec.get("resample", Image.Resampling.BICUBIC))
