"""Photo libraries on real files: capture time, camera and place (EXIF in JPEG and HEIC, video
metadata, file time as the fallback) and their filters; text read in images (OCR, English and
Chinese); lexical and hybrid search over it, file names and text files; an index of the schema
before all this, migrated."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
from datetime import datetime
from pathlib import Path

import pillow_heif
import pytest
from PIL import Image, ImageDraw, ImageFont

from mmsearch import SearchIndex

sys.path.insert(0, str(Path(__file__).parent))
import fetch  # noqa: E402  (data/fetch.py, on the path through conftest)
from videos import write_video  # noqa: E402

pillow_heif.register_heif_opener()

PARIS = (48.8582, 2.2945)  # the Eiffel tower
SYDNEY = (-33.8568, 151.2153)  # the opera house


def exif(when: str, offset: str | None, make: str, model: str, where: tuple[float, float] | None) -> Image.Exif:
    e = Image.Exif()
    e[271], e[272] = make, model
    e.get_ifd(0x8769)[36867] = when
    if offset:
        e.get_ifd(0x8769)[36881] = offset
    if where:
        def dms(v: float) -> tuple[float, float, float]:
            v = abs(v)
            return float(int(v)), float(int(v * 60 % 60)), round(v * 3600 % 60, 4)
        e.get_ifd(0x8825).update({1: "N" if where[0] >= 0 else "S", 2: dms(where[0]),
                                  3: "E" if where[1] >= 0 else "W", 4: dms(where[1])})
    return e


def sign(text: str, font: ImageFont.FreeTypeFont, background: Image.Image | None = None, fill="black") -> Image.Image:
    """A picture with a line of text on it: on white, or over a real photo."""
    img = background.convert("RGB").resize((640, 360)) if background else Image.new("RGB", (640, 360), "white")
    draw = ImageDraw.Draw(img)
    if background:  # a light band behind the words, as on a real sign or label
        draw.rectangle((10, 130, 630, 230), fill=(250, 245, 230))
    draw.text((30, 150), text, font=font, fill=fill)
    return img


@pytest.fixture(scope="module")
def library(photos, tmp_path_factory) -> tuple[SearchIndex, Path]:
    fonts = fetch.fetch("fonts")
    latin = ImageFont.truetype(str(fonts / "DejaVuSans-Bold.ttf"), 40)
    chinese = ImageFont.truetype(str(fonts / "wqy-microhei.ttc"), 44)
    d = tmp_path_factory.mktemp("library")
    Image.open(photos / "coffee.png").convert("RGB").save(
        d / "coffee_cup.jpg", exif=exif("2019:07:14 15:22:01", "+02:00", "Canon", "Canon EOS 5D", PARIS))
    Image.open(photos / "astronaut.png").convert("RGB").save(
        d / "astronaut.heic", exif=exif("2021:01:02 08:00:00", None, "Apple", "iPhone 12", SYDNEY))
    shutil.copy2(photos / "rocket.jpg", d / "rocket.jpg")  # no capture time: its file time counts
    old = datetime(2015, 5, 5, 12).timestamp()
    os.utime(d / "rocket.jpg", (old, old))
    write_video(d / "clip.mp4", [(Image.open(photos / "horse.png"), 1.0)],
                metadata={"creation_time": "2020-03-03T12:00:00.000000Z", "location": "+48.8582+002.2945/"})
    sign("INVOICE 4711 paid", latin).save(d / "scan_001.png")
    sign("Gate B52 closed", latin, Image.open(photos / "chelsea.png"), fill=(20, 40, 120)).save(d / "IMG_0002.jpg")
    sign("会议室预订成功", chinese).save(d / "screenshot_3.png")
    sign("发票号码 8852", chinese, Image.open(photos / "motorcycle_left.png")).save(d / "IMG_0004.jpg")
    (d / "notes.txt").write_text("The quarterly report mentions zeppelin maintenance at the hangar.\n")
    idx = SearchIndex(tmp_path_factory.mktemp("index"), create=True)
    summary = idx.add([str(d)], ocr=True)
    assert not summary.skipped and summary.ocr_images == 7  # every image, the HEIC too; not the video
    return idx, d


def names(hits) -> list[str]:
    return [os.path.basename(h.path) for h in hits]


def test_capture_metadata_in_hits_and_info(library):
    idx, d = library
    hit = {h.path: h for h in idx.search("a cup of coffee", k=20)}
    coffee, heic = hit[str(d / "coffee_cup.jpg")], hit[str(d / "astronaut.heic")]
    assert (coffee.taken, coffee.camera, coffee.lat, coffee.lon) == ("2019-07-14T15:22:01+02:00", "Canon EOS 5D", *PARIS)
    assert (heic.taken, heic.camera) == ("2021-01-02T08:00:00", "Apple iPhone 12")  # no offset written: none shown
    assert heic.lat == pytest.approx(SYDNEY[0], abs=1e-4) and heic.lon == pytest.approx(SYDNEY[1], abs=1e-4)
    assert hit[str(d / "rocket.jpg")].taken is None  # a file time is not shown as a capture time
    info = idx.info()
    assert info["taken_from"] == {"exif": 2, "metadata": 1, "file": 5}  # 8 images and videos
    assert info["located"] == 3
    assert info["ocr"] == {"on": True, "images_read": 7, "with_text": info["ocr"]["with_text"]}
    assert info["ocr"]["with_text"] >= 4


def test_a_files_capture_is_read_as_it_is_decoded(library, tmp_path, monkeypatch):
    """In the decode workers, beside the model, and stored with the file's row: the pass after
    the embedding (annotate.captures) finds none left to read."""
    from mmsearch.indexer import annotate

    _, d = library
    for name in ("coffee_cup.jpg", "clip.mp4", "rocket.jpg"):
        shutil.copy2(d / name, tmp_path / name)
    left: list[int] = []
    monkeypatch.setattr(annotate, "captures", lambda *a, _read=annotate.captures: left.append(_read(*a)) or left[-1])
    idx = SearchIndex(tmp_path / "index", create=True)
    idx.add([str(tmp_path)])
    assert left == [0] and idx.info()["taken_from"] == {"exif": 1, "metadata": 1, "file": 1}


def test_capture_filters(library):
    idx, d = library

    def found(**filters) -> set[str]:
        return set(names(idx.search("a picture", k=50, mode="semantic", **filters)))

    assert found(taken_after="2019-07-14", taken_before="2019-07-15") == {"coffee_cup.jpg"}
    assert found(taken_after="2020-03-02", taken_before="2020-03-05") == {"clip.mp4"}
    assert found(taken_before="2016-01-01") == {"rocket.jpg"}  # its file time, for want of EXIF
    assert found(near=(*PARIS, 5)) == {"coffee_cup.jpg", "clip.mp4"}
    assert found(near=(SYDNEY[0], SYDNEY[1] + 0.05, 10)) == {"astronaut.heic"}  # 4.6 km away
    assert found(near=(SYDNEY[0], SYDNEY[1] + 0.05, 4)) == set()
    assert found(near=(*PARIS, 5), taken_after="2020-01-01") == {"clip.mp4"}


def test_words_in_images_names_and_texts(library):
    idx, _ = library

    def first(q: str, mode: str = "lexical") -> str | None:
        hits = idx.search(q, mode=mode, k=3)
        return names(hits)[0] if hits else None

    assert first("invoice 4711") == "scan_001.png"
    assert first("INVOICE4711") == "scan_001.png"  # spaces and case do not matter
    assert first("gate b52") == "IMG_0002.jpg"  # text over a real photo
    assert first('"gate b52"') == "IMG_0002.jpg"
    assert first('"b52 gate"') is None  # a phrase matches in its order only
    assert first("会议室") == "screenshot_3.png"  # Chinese, inside a longer run of characters
    assert first("发票") == "IMG_0004.jpg"  # a two-character word
    assert first("8852") == "IMG_0004.jpg"
    assert first("zeppelin") == "notes.txt"  # a text file's passage
    assert first("coffee cup") == "coffee_cup.jpg"  # a file name
    assert first("invoice 9999") is None  # every word must match
    hit = idx.search("invoice 4711", mode="lexical", k=1)[0]
    assert "INVOICE 4711" in (hit.ocr or "").upper()


def test_hybrid_takes_the_best_of_both(library):
    idx, _ = library
    # words only OCR can see: the lexical match ranks first
    assert names(idx.search("invoice 4711", k=3))[0] == "scan_001.png"
    # a description no text contains: hybrid is the semantic ranking, scores and all
    semantic = idx.search("an astronaut in a space suit", mode="semantic", k=5)
    assert idx.search("an astronaut in a space suit", k=5) == semantic
    # fused queries and image queries are semantic only; lexical mode says why it cannot run them
    from mmsearch import UserError

    with pytest.raises(UserError, match="plain text"):
        idx.search("coffee + rocket", mode="lexical")


def test_cli_json_and_filters(library, run_cli):
    idx, d = library
    hits = run_cli("search", "--index", idx.path, "gate b52", "--json")
    assert hits[0]["path"] == str(d / "IMG_0002.jpg") and "B52" in hits[0]["ocr"].replace(" ", "")
    near = run_cli("search", "--index", idx.path, "a picture", "--near", "48.8582,2.2945,5", "--json")
    assert {os.path.basename(h["path"]) for h in near} == {"coffee_cup.jpg", "clip.mp4"}
    coffee = next(h for h in near if h["kind"] == "image")
    assert coffee["taken"] == "2019-07-14T15:22:01+02:00" and coffee["camera"] == "Canon EOS 5D"


def test_ocr_is_remembered_then_turned_off(library, tmp_path, photos):
    idx, d = library
    fonts = fetch.fetch("fonts")
    font = ImageFont.truetype(str(fonts / "DejaVuSans-Bold.ttf"), 40)
    sign("Parcel ZX-9031 delivered", font).save(d / "label.png")
    summary = idx.add([])  # no --ocr: the index remembers it
    assert summary.ocr_images == 1
    assert names(idx.search("zx9031", mode="lexical")) == ["label.png"]
    sign("Platform 77 departure", font).save(d / "platform.png")
    assert idx.add([], ocr=False).ocr_images == 0
    assert idx.search("platform 77", mode="lexical") == []
    assert idx.info()["ocr"]["on"] is False
    # a deleted file's words go with it
    (d / "label.png").unlink()
    (d / "platform.png").unlink()
    idx.add([])
    assert idx.search("zx9031", mode="lexical") == []


def test_index_before_this_schema_is_migrated(photos, tmp_path):
    """An index of schema v2 (no capture columns, no OCR column, no lexical table) opens, gets
    its lexical rows from what it holds, and its capture times on the next update."""
    d = tmp_path / "photos"
    d.mkdir()
    for name in ("coffee.png", "rocket.jpg"):
        shutil.copy2(photos / name, d / name)
    (d / "readme.txt").write_text("A note about the zeppelin.\n")
    idx = SearchIndex(tmp_path / "index", create=True)
    idx.add([str(d)])
    db = sqlite3.connect(tmp_path / "index" / "mmsearch.db")
    db.executescript("DROP TRIGGER lexical_gone; DROP TABLE lexical; DROP INDEX ix_files_taken_ns; DROP INDEX ix_files_lat; "
                     "DROP INDEX ix_files_unread;")
    for table, column in [("files", "taken_ns"), ("files", "offset_min"), ("files", "taken_from"), ("files", "camera"),
                          ("files", "lat"), ("files", "lon"), ("items", "ocr")]:
        db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    old = SearchIndex(tmp_path / "index")
    assert names(old.search("rocket", mode="lexical")) == ["rocket.jpg"]
    assert names(old.search("zeppelin", mode="lexical")) == ["readme.txt"]
    assert old.info()["taken_from"] == {"unread": 2}
    summary = old.add([])
    assert summary.embedded == 0 and old.info()["taken_from"] == {"file": 2}


@pytest.fixture
def run_cli():
    from conftest import run_mmsearch

    def call(*args: str):
        r = run_mmsearch(*args)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    return call


def test_http_modes_and_capture_filters(library):
    from fastapi.testclient import TestClient

    from mmsearch.cli.server import create_app

    idx, d = library
    client = TestClient(create_app(idx), base_url="http://localhost")
    r = client.get("/search", params={"q": "会议室", "mode": "lexical"})
    assert r.status_code == 200 and r.json()[0]["path"] == str(d / "screenshot_3.png")
    r = client.get("/search", params={"q": "a picture", "near": "48.8582,2.2945,5", "taken_after": "2020-01-01"})
    assert [h["path"] for h in r.json()] == [str(d / "clip.mp4")]
    r = client.post("/search", json={"q": "a picture", "near": [48.8582, 2.2945, 5], "taken_before": "2020-01-01"})
    assert [h["path"] for h in r.json()] == [str(d / "coffee_cup.jpg")]
    for bad in ({"near": "1,2"}, {"near": "91,0,5"}, {"mode": "fuzzy"}, {"taken_after": "July"}):
        r = client.get("/search", params={"q": "x", **bad})
        assert r.status_code == 400 and next(iter(bad)) in r.json()["error"]
    r = client.get("/search", params={"q": " ".join(["ab"] * 3000), "mode": "lexical"})
    assert r.status_code == 200  # thousands of short words: a bounded lookup, not an error


def test_item_has_ocr_boxes_and_capture(library):
    idx, d = library
    hit = idx.search("invoice 4711", mode="lexical", k=1)[0]
    item = idx.item(hit.item_id)
    text, box, score = item["ocr"][0]
    assert "INVOICE" in text.upper() and len(box) == 8 and 0.6 <= score <= 1
    x = box[0::2]
    assert 0 <= min(x) < max(x) <= 640  # in the image's own pixels
    coffee = next(h for h in idx.search("a picture", k=20, mode="semantic") if h.path.endswith("coffee_cup.jpg"))
    item = idx.item(coffee.item_id)
    assert (item["taken"], item["taken_from"], item["camera"]) == ("2019-07-14T15:22:01+02:00", "exif", "Canon EOS 5D")
