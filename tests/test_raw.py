"""Camera raw photos, on a real one: a Sony ILCE-7RM3 ARW (5184 × 3464, preview JPEG 1616 × 1080)."""
from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import fetch  # data/fetch.py, on the path through conftest
import numpy as np
import pytest
from PIL import Image

SIZE = (5184, 3464)


@pytest.fixture(scope="session")
def arw() -> Path:
    return fetch.fetch("raw") / "_DSC2164.ARW"


@pytest.fixture(scope="session")
def preview(arw, tmp_path_factory) -> Path:
    """The camera's own JPEG of the scene, as embedded in the raw file."""
    import rawpy

    path = tmp_path_factory.mktemp("preview") / "preview.jpg"
    with rawpy.imread(str(arw)) as raw:
        path.write_bytes(raw.extract_thumb().data)
    return path


def turned(src: Path, dst: str | bytes | Path, orientation: int) -> None:
    """A copy whose TIFF orientation tag (IFD0, where LibRaw reads `sizes.flip` from) says `orientation`."""
    data = bytearray(src.read_bytes())
    assert data[:4] == b"II*\0"
    ifd = struct.unpack_from("<I", data, 4)[0]
    entries = [ifd + 2 + 12 * i for i in range(struct.unpack_from("<H", data, ifd)[0])]
    (entry,) = [e for e in entries if struct.unpack_from("<H", data, e)[0] == 0x0112]
    struct.pack_into("<H", data, entry + 8, orientation)
    with open(dst, "wb") as f:
        f.write(data)


def likeness(a: Image.Image, b: Image.Image) -> float:
    """Correlation of two small grey versions: the same scene in the same orientation is near 1."""
    def small(img):
        g = np.asarray(img.convert("L").resize((32, 48) if img.height > img.width else (48, 32)), float)
        return (g - g.mean()) / g.std()
    return float((small(a) * small(b)).mean())


def test_raw_extensions_are_images():
    from mmsearch.media.kinds import IMAGE_EXTS, RAW_EXTS, kind_of

    assert RAW_EXTS < IMAGE_EXTS and {".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2"} <= RAW_EXTS
    assert kind_of("a/IMG_0001.CR3") == kind_of("DSC.nef") == "image" and kind_of("dump.raw") is None


def test_rawpy_is_imported_only_to_decode_a_raw_photo():
    code = "import sys, mmsearch.media.image; assert 'rawpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("orientation, transpose", [(1, None), (6, Image.Transpose.ROTATE_270),
                                                    (8, Image.Transpose.ROTATE_90), (3, Image.Transpose.ROTATE_180)],
                         ids=["upright", "cw", "ccw", "180"])
def test_preview_and_develop_agree_in_orientation(arw, tmp_path, orientation, transpose):
    from mmsearch.media.image import load_image

    path = tmp_path / "x.arw"
    turned(arw, path, orientation)
    upright = load_image(arw, draft=256)
    fast, developed = load_image(path, draft=256), load_image(path, draft=1200)  # the preview is 1080 high
    quarter = orientation in (6, 8)
    assert fast.size == ((270, 404) if quarter else (404, 270))  # the preview, drafted to ≥ 256
    assert developed.size == ((1732, 2592) if quarter else (2592, 1732))  # sensor data at half size
    for img in (fast, developed):
        assert img.mode == "RGB" and img.info["source_size"] == (SIZE[::-1] if quarter else SIZE)
    expected = upright.transpose(transpose) if transpose is not None else upright
    assert np.array_equal(np.asarray(fast), np.asarray(expected))
    assert likeness(developed, fast) > 0.95  # measured 0.98; turned the wrong way round: -0.26
    assert likeness(developed, fast.transpose(Image.Transpose.ROTATE_180)) < 0.5


def test_uploaded_raw_decodes_and_plain_tiff_still_does(arw, photos):
    from mmsearch.media.image import load_image_bytes

    img = load_image_bytes(arw.read_bytes())
    assert img.size == (1616, 1080) and img.info["source_size"] == SIZE
    tiff = io.BytesIO()
    Image.open(photos / "coffee.png").save(tiff, "TIFF")  # the same magic bytes as most raw formats
    assert load_image_bytes(tiff.getvalue()).size == Image.open(photos / "coffee.png").size


def test_raw_photos_index_find_their_jpeg_and_thumbnail(cli, tiny_clip, arw, preview, photos, tmp_path):
    from mmsearch import SearchIndex

    d = tmp_path / "camera"
    d.mkdir()
    shutil.copyfile(arw, d / "concert.arw")
    turned(arw, os.fsencode(d) + b"/turned-\xe9.ARW", 6)  # upright by its tag; a non-UTF-8 name
    for name in ("coffee.png", "chelsea.png"):
        (d / name).write_bytes((photos / name).read_bytes())
    s = cli.json("index", str(d), "--model", tiny_clip, "--runtime", "torch")
    assert s["new"] == 4 and not s["skipped"], s

    index = SearchIndex(cli.index)
    upright = cli.json("search", "--image", str(preview), "-k", "1")[0]
    assert upright["path"] == str(d / "concert.arw") and upright["kind"] == "image" and upright["score"] > 0.98
    itself = cli.json("search", "--image", str(d / "concert.arw"), "-k", "1")[0]  # a raw photo as the query
    assert itself["path"] == str(d / "concert.arw") and itself["score"] > 0.98
    portrait = tmp_path / "portrait.jpg"
    Image.open(preview).transpose(Image.Transpose.ROTATE_270).save(portrait, quality=95)
    hit = cli.json("search", "--image", str(portrait), "-k", "1")[0]
    assert hit["path"].endswith("turned-\ufffd.ARW") and hit["score"] > 0.98, hit
    for h, size, thumb in ((upright, SIZE, (64, 43)), (hit, SIZE[::-1], (43, 64))):
        item = index.item(h["item_id"])
        assert item is not None and (item["width"], item["height"]) == size
        data = index.thumbnail(h["item_id"], 64)
        assert data is not None and Image.open(io.BytesIO(data)).size == thumb


def test_bad_raw_files_are_skipped_with_their_reason(cli, tiny_clip, arw, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    data = arw.read_bytes()
    (d / "good.arw").write_bytes(data)
    (d / "truncated.arw").write_bytes(data[:16384])  # the header's directories point past the end
    (d / "notes.nef").write_text("a text file with a raw photo's extension\n")
    (d / "noise.cr2").write_bytes(np.random.default_rng(0).bytes(100_000))
    s = cli.json("index", str(d), "--model", tiny_clip)
    reasons = {os.path.basename(x["path"]): x["reason"] for x in s["skipped"]}
    assert s["new"] == 1 and reasons == {
        "truncated.arw": "not a readable raw photo: input/output error (truncated, or not a raw file)",
        "notes.nef": "not a readable raw photo: input/output error (truncated, or not a raw file)",
        "noise.cr2": "not a readable raw photo: unsupported file format or not a raw file",
    }


def test_pixel_limit_applies_before_developing(arw):
    from mmsearch.media.errors import DecodeError
    from mmsearch.media.image import load_image

    with pytest.raises(DecodeError, match="too many pixels: 5184x3464"):
        load_image(arw, max_pixels=10_000_000, draft=1200)


def test_capture_metadata_of_a_raw_photo(arw):
    """A TIFF-based RAW that Pillow cannot open still gives its EXIF: time, offset, camera."""
    from mmsearch.media.capture import iso_taken, read_capture

    cap = read_capture(str(arw), "image")
    assert (cap.taken_from, cap.camera) == ("exif", "SONY ILCE-7RM3")
    assert iso_taken(cap.taken_ns, cap.offset_min) == "2018-07-11T01:18:47+00:00"
