"""Image decoding with the guards a crawler of other people's folders needs.

Every failure becomes a `DecodeError` whose message is the reason recorded for the file.
"""
from __future__ import annotations

import io
import os
import warnings

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import DecodeError, check_pixels, os_reason, regular_size

#: default pixel limit (width × height) above which an image is treated as a decompression bomb.
DEFAULT_MAX_PIXELS = 100_000_000
#: default size limit (bytes) of an uploaded image (`mmsearch serve --max-upload`)
DEFAULT_MAX_UPLOAD = 20 << 20

Image.MAX_IMAGE_PIXELS = None  # we enforce our own, configurable limit before decoding
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
    """The same guarded decoding for an uploaded image."""
    if not data:
        raise DecodeError("empty file")
    return _decode(io.BytesIO(data), max_pixels, None)


def _decode(path, max_pixels: int, draft: int | None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opened = Image.open(path)
            w, h = opened.size
            check_pixels(w, h, max_pixels)
            if draft and opened.format == "JPEG":
                opened.draft("RGB", (draft, draft))
            opened.load()
            img = to_rgb(ImageOps.exif_transpose(opened))
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
