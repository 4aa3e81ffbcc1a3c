"""Bad files are skipped with a recorded reason; the run goes on and nothing indexed is lost."""
from __future__ import annotations

import io
import json
import os
import shutil

import pytest
from PIL import Image


@pytest.fixture
def messy(photos, tmp_path):
    d = tmp_path / "messy"
    d.mkdir()
    shutil.copy2(photos / "coffee.png", d / "good one.png")  # spaces are fine
    shutil.copy2(photos / "chelsea.png", os.fsencode(d) + b"/caf\xe9-\xff.png")  # not UTF-8
    (d / "empty.jpg").write_bytes(b"")
    jpeg = io.BytesIO()
    Image.open(photos / "astronaut.png").convert("RGB").save(jpeg, "JPEG")
    (d / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    png = (photos / "coffee.png").read_bytes()
    mid = len(png) // 2
    (d / "corrupt.png").write_bytes(png[:mid] + bytes(b ^ 0x5A for b in png[mid : mid + 4096]) + png[mid + 4096 :])
    (d / "notes.jpg").write_text("this is a text file with an image extension\n")
    Image.new("L", (4000, 3000), 128).save(d / "bomb.png")  # 12 Mpx vs a 5 Mpx limit below
    os.symlink(d / "missing-target.png", d / "broken.png")
    os.mkfifo(d / "pipe.jpg")
    shutil.copy2(photos / "horse.png", d / "locked.png")  # readable once it is unlocked
    (d / ".hidden.png").write_bytes((d / "good one.png").read_bytes())
    return d


EXPECTED = {
    "empty.jpg": "empty file",
    "truncated.jpg": "truncated",
    "corrupt.png": "corrupt",
    "notes.jpg": "not a recognised image",
    "bomb.png": "too many pixels",
    "broken.png": "broken symlink",
    "pipe.jpg": "not a regular file",
    "locked.png": "permission denied",
}


def test_every_bad_file_is_skipped_with_its_reason(cli, tiny_clip, photos, messy, monkeypatch):
    from mmsearch.indexer import plan

    real_digest = plan.file_digest

    def digest(path):  # tests run as root, where chmod 000 does not stop reads: fail like EACCES
        if os.fspath(path).endswith("locked.png"):
            raise PermissionError(13, "Permission denied")
        return real_digest(path)

    monkeypatch.setattr(plan, "file_digest", digest)
    keep = messy.parent / "keep"
    keep.mkdir()
    shutil.copy2(photos / "rocket.jpg", keep / "rocket.jpg")
    cli("index", str(keep), "--model", tiny_clip)

    r = cli("index", str(messy), "--max-pixels", "5000000", "--json")
    assert r.exit_code == 0
    summary = json.loads(r.stdout)
    reasons = {os.path.basename(s["path"]): s["reason"] for s in summary["skipped"]}
    assert set(reasons) == set(EXPECTED), reasons
    for name, why in EXPECTED.items():
        assert why in reasons[name], (name, reasons[name])
    assert summary["new"] == 2  # the two good images, one of them with a non-UTF-8 name

    info = cli.json("info")
    assert info["items"]["image"] == 3  # rocket from the first run is still there
    assert {os.path.basename(s["path"]) for s in info["skipped"]} == set(EXPECTED)
    hit = cli.json("search", "--image", str(photos / "chelsea.png"), "-k", "1")[0]
    assert hit["path"].endswith("caf\ufffd-\ufffd.png") and hit["score"] > 0.9999
    assert cli.json("search", "--image", str(keep / "rocket.jpg"), "-k", "1")[0]["path"] == str(keep / "rocket.jpg")

    # a second run retries only what may read fine now (permissions change no mtime)
    again = cli.json("index", str(messy), "--max-pixels", "5000000")
    assert again["embedded"] == 0 and again["skipped"] == [{"path": str(messy / "locked.png"), "reason": "permission denied"}]
    monkeypatch.setattr(plan, "file_digest", real_digest)  # `chmod 644 locked.png`
    unlocked = cli.json("index", str(messy), "--max-pixels", "5000000")
    assert unlocked["embedded"] == 1 and unlocked["skipped"] == [] and unlocked["updated"] == 1
    assert "locked.png" not in {os.path.basename(s["path"]) for s in cli.json("info")["skipped"]}


def test_a_caption_beside_an_image_whose_name_is_not_utf8(cli, tiny_clip, photos, tmp_path):
    """Its link is stored as paths are shown (replacement signs): storing the name's undecodable
    bytes as text ended the whole run with a UnicodeEncodeError. Settled after one run."""
    d = tmp_path / "odd"
    d.mkdir()
    shutil.copy2(photos / "coffee.png", os.fsencode(d) + b"/caf\xe9.png")
    with open(os.fsencode(d) + b"/caf\xe9.txt", "w") as f:
        f.write("A cup of coffee.\n")
    s = cli.json("index", str(d), "--model", tiny_clip)
    assert (s["new"], s["skipped"]) == (2, [])
    hit = cli.json("search", "coffee", "--type", "text", "-k", "1")[0]
    assert hit["link_path"] == str(d / "caf\ufffd.png") and hit["path"] == str(d / "caf\ufffd.txt")
    assert cli.json("index", str(d))["embedded"] == 0


def test_symlink_loops_are_followed_once(cli, tiny_clip, photos, tmp_path):
    d = tmp_path / "loop"
    (d / "sub").mkdir(parents=True)
    shutil.copy2(photos / "coins.png", d / "sub" / "coins.png")
    os.symlink(d, d / "sub" / "back-to-top")
    s = cli.json("index", str(d), "--model", tiny_clip)
    assert s["new"] == 1 and not s["skipped"]


def test_exif_orientation_is_applied(photos, tmp_path):
    from mmsearch.media.image import load_image

    img = Image.open(photos / "rocket.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    loaded = load_image(tmp_path / "rot.jpg")
    assert loaded.size == (img.height, img.width) and loaded.info["source_size"] == (img.height, img.width)


def test_transparent_images_are_flattened_on_white(tmp_path):
    from mmsearch.media.image import load_image

    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("ext", ["avif", "heic"])
def test_phone_formats_index_and_find_their_originals(cli, tiny_clip, photos, tmp_path, ext):
    """AVIF (Pillow itself) and HEIC (pillow-heif): real photos converted index, thumbnail, and embed
    close to their originals."""
    import mmsearch.media.image  # noqa: F401  (registers the HEIF opener with Pillow)
    from mmsearch import SearchIndex

    d = tmp_path / ext
    d.mkdir()
    for name in ("coffee.png", "chelsea.png", "rocket.jpg"):
        Image.open(photos / name).convert("RGB").save(d / f"{name.rsplit('.', 1)[0]}.{ext}", quality=90)
    s = cli.json("index", str(d), "--model", tiny_clip, "--runtime", "torch")
    assert s["new"] == 3 and not s["skipped"], s
    for name in ("coffee.png", "chelsea.png", "rocket.jpg"):
        hit = cli.json("search", "--image", str(photos / name), "-k", "1")[0]
        assert hit["path"] == str(d / f"{name.rsplit('.', 1)[0]}.{ext}") and hit["score"] > 0.98, (name, hit)
    thumb = SearchIndex(cli.index).thumbnail(hit["item_id"], 64)
    assert thumb is not None and max(Image.open(io.BytesIO(thumb)).size) == 64
