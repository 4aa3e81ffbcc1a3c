"""Image decoding with the guards a crawler of other people's folders needs.

Every failure becomes a `DecodeError` whose message is the reason recorded for the file.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import pillow_heif
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import DecodeError, check_pixels, os_reason, regular_size
from .kinds import RAW_EXTS, extension

#: default pixel limit (width × height) above which an image is treated as a decompression bomb.
DEFAULT_MAX_PIXELS = 100_000_000
#: default size limit (bytes) of an uploaded image (`mmsearch serve --max-upload`)
DEFAULT_MAX_UPLOAD = 20 << 20
#: an uploaded image is reduced to no less than this many pixels on its short side (models read 224–384)
UPLOAD_SIDE = 1024
#: a raw photo's embedded preview serves a caller that asked for no `draft` when its short side is
#: at least this (the largest input side of the models we run); a smaller one is a mere thumbnail
RAW_PREVIEW_MIN = 384
#: how raw photos begin, for uploads (no name): TIFF containers (DNG, NEF, CR2, ARW, PEF…),
#: Olympus, Panasonic, Fujifilm, Minolta, Sigma; and Canon's CR3, ISO media of brand "crx "
RAW_MAGIC = (b"II*\0", b"MM\0*", b"IIRO", b"IIRS", b"MMOR", b"IIU\0", b"FUJIFILM", b"\0MRM", b"FOVb")
#: LibRaw's `sizes.flip` as a Pillow transpose: 3 = 180°, 5 = 90° counter-clockwise, 6 = 90° clockwise
RAW_TURNS = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}

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
    name = os.fsdecode(path)
    if extension(name) in RAW_EXTS:
        img = _decode_raw(name, max_pixels, draft)
        if img is None:
            raise DecodeError("not a readable raw photo: unsupported file format or not a raw file")
        return img
    return _decode(path, max_pixels, draft)


def load_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The same guarded decoding for an uploaded image, shrunk (integer box reduction) to no less
    than UPLOAD_SIDE pixels on the short side before the conversions that copy it: a 388 KB PNG of
    10,000 × 10,000 transparent pixels otherwise took 1.7 GB."""
    if not data:
        raise DecodeError("empty file")
    if data.startswith(RAW_MAGIC) or data[4:12] == b"ftypcrx ":
        img = _decode_raw(io.BytesIO(data), max_pixels, UPLOAD_SIDE)
        if img is not None:
            return img  # else a plain TIFF, for Pillow
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
                try:
                    decoded = opened.reduce(min(opened.size) // draft)
                except ValueError:  # a mode Pillow cannot reduce (palette, 1-bit, 16-bit grey): converted
                    # first, here, where decoding is bounded (a 12 KB 1-bit PNG of 10,000² was
                    # otherwise held as 400 MB of RGB while it waited for the model); 1-bit to
                    # grey, a byte a pixel as it is held, not RGB's four
                    wider = opened.convert("L") if opened.mode == "1" else to_rgb(opened)
                    decoded = wider.reduce(min(opened.size) // draft)
            ImageOps.exif_transpose(decoded, in_place=True)  # (else a copy, also when nothing turns)
            img = to_rgb(decoded)
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
    except MemoryError:
        raise DecodeError("too large to decode in the memory free") from None


def _decode_raw(src: str | io.BytesIO, max_pixels: int, draft: int | None) -> Image.Image | None:
    """A camera raw photo through LibRaw: its embedded preview JPEG where that is large enough, else
    the developed sensor data; None when LibRaw does not know the format. On a Sony ILCE-7RM3 ARW
    (5184 × 3464, 18.6 MB, preview 1616 × 1080), in ms on two cores: the preview 0.7 to extract and
    8 to decode (6 at draft 448); developing at half size 220, at full size 900."""
    import rawpy  # here, not at the top: 80 ms that only folders with raw photos should pay

    try:
        with _open_raw(rawpy, src) as raw:
            s = raw.sizes
            check_pixels(s.width, s.height, max_pixels)
            img = _raw_preview(raw, rawpy, max_pixels, draft) or _develop(raw, draft)
    except rawpy.LibRawFileUnsupportedError:
        return None
    except OSError as e:
        raise DecodeError(os_reason(e)) from None
    except rawpy.LibRawIOError:  # what LibRaw says of a file that ends inside its header
        raise DecodeError("not a readable raw photo: input/output error (truncated, or not a raw file)") from None
    except rawpy.LibRawError as e:
        msg = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise DecodeError(f"not a readable raw photo: {msg or type(e).__name__}") from None
    img.info["source_size"] = (s.height, s.width) if s.flip in (5, 6) else (s.width, s.height)
    return img


def _open_raw(rawpy, src: str | io.BytesIO):
    if isinstance(src, str):
        try:
            return rawpy.imread(src)  # from a path LibRaw reads what it needs: 0.8 ms vs 4.3 for the ARW's bytes
        except UnicodeEncodeError:  # rawpy passes a path on as UTF-8, which a non-UTF-8 file name is not
            with open(src, "rb") as f:
                src = io.BytesIO(f.read())
    return rawpy.imread(src)


def _raw_preview(raw, rawpy, max_pixels: int, draft: int | None) -> Image.Image | None:
    """The camera's own rendering, oriented, if it is a JPEG of at least `draft` (or RAW_PREVIEW_MIN) pixels
    on its short side; a broken one is left for `_develop`."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format != rawpy.ThumbFormat.JPEG:
        return None  # a bitmap: only old cameras embed one, and a small one
    try:
        head = Image.open(io.BytesIO(thumb.data))
        if min(head.size) < (draft or RAW_PREVIEW_MIN):
            return None
        tagged = head.getexif().get(ExifTags.Base.Orientation, 1) != 1
        img = _decode(io.BytesIO(thumb.data), max_pixels, draft)
    except (DecodeError, OSError, SyntaxError, ValueError):
        return None
    s = raw.sizes
    # exif_transpose has turned a preview that says how to; turn one that does not (a 90° turn only
    # if it is not already upright, as some cameras store it)
    if s.flip in RAW_TURNS and not tagged and (s.flip == 3 or (img.width > img.height) == (s.width > s.height)):
        img = img.transpose(RAW_TURNS[s.flip])
    return img


def _develop(raw, draft: int | None) -> Image.Image:
    """Demosaic the sensor data, oriented by LibRaw; at half size (a quarter of the time) unless the
    caller wants more, then reduced as JPEG's draft would (to ≥ `draft` on the short side). LibRaw's
    rendering is darker than the camera's: `lite` embeds it at cosine 0.945 to the ARW's preview
    (unrelated photos: 0.19–0.35); auto white balance instead of the camera's made it 0.895."""
    s = raw.sizes
    half = not draft or min(s.width, s.height) >= 2 * draft
    img = Image.fromarray(raw.postprocess(half_size=half, use_camera_wb=True, output_bps=8))
    if draft and min(img.size) >= 2 * draft:
        img = img.reduce(min(img.size) // draft)
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img if img.mode == "RGB" else img.convert("RGB")  # (convert copies even an RGB image)


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
