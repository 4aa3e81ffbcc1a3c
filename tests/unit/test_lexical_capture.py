"""Pure functions of lexical search (retrieval/lexical.py) and capture metadata (media/capture.py)."""
from __future__ import annotations

import sqlite3
from datetime import date, datetime

import pytest

from mmsearch.errors import UserError
from mmsearch.media.capture import (
    camera_name,
    distance_km,
    exif_wall_ns,
    gps_position,
    iso_taken,
    parse_offset,
    wall_ns,
)
from mmsearch.retrieval.lexical import DDL, LexicalQuery, compact, name_text
from mmsearch.retrieval.request import SearchRequest
from mmsearch.retrieval.search import wall_day_ns


@pytest.mark.parametrize("raw, want", [
    ("INVOICE 4711", "invoice4711"),
    ("Gate B52 — closed!", "gateb52closed"),
    ("Café Crème", "cafecreme"),
    ("会议室 预订", "会议室预订"),
    ("ＡＢＣ１２３", "abc123"),  # full-width forms (NFKC)
    ("한국어", "한국어"),  # Hangul survives the decomposition
    ("", ""),
    (None, ""),
])
def test_compact(raw, want):
    assert compact(raw) == want


def test_query_terms_stopwords_phrases_and_short_words():
    q = LexicalQuery.parse('a photo of the "Gate B52" invoice 4711 on it')
    assert q.terms == ["gateb52", "invoice", "4711"]  # the phrase kept whole; a, of, the, on, it, photo dropped
    assert q.short == []
    assert LexicalQuery.parse("发票").short == ["发票"]  # a two-character Chinese word is kept
    assert LexicalQuery.parse("42").short == ["42"]
    assert not LexicalQuery.parse("a to of")  # nothing to search for
    assert LexicalQuery.parse('"the"').terms == ["the"]  # quoted: kept even when common
    assert LexicalQuery.parse("cat cat CAT").terms == ["cat"]
    assert LexicalQuery.parse("cat dog").match() == '"cat" AND "dog"'


def test_name_text():
    assert name_text("/photos/2019/Red_Car-01.JPG") == "Red_Car-01"
    assert compact(name_text("/photos/2019/Red_Car-01.JPG")) == "redcar01"


def test_trigram_table_finds_run_together_words():
    """The table as the store creates it: terms match inside run-together OCR text, every term
    is required, and deleting an item removes its row (the trigger)."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
    for ddl in DDL:
        db.execute(ddl)
    rows = {1: "INVOICE4711 paid", 2: "Invoice 4712", 3: "发票号码 4711", 4: "bored"}
    for i, body in rows.items():
        db.execute("INSERT INTO items VALUES (?)", (i,))
        db.execute("INSERT INTO lexical(rowid, name, body) VALUES (?, '', ?)", (i, compact(body)))

    def match(query: str) -> list[int]:
        q = LexicalQuery.parse(query)
        return sorted(r[0] for r in db.execute("SELECT rowid FROM lexical WHERE lexical MATCH ?", (q.match(),)))

    assert match("invoice 4711") == [1]
    assert match("invoice4711") == [1]
    assert match("4711") == [1, 3]
    assert match("发票号码") == [3]
    assert match("red bicycle") == []  # "red" is inside "bored", but "bicycle" is nowhere
    db.execute("DELETE FROM items WHERE id = 1")
    assert match("4711") == [3]


def test_exif_times():
    assert exif_wall_ns("2019:07:14 15:22:01") == wall_ns(datetime(2019, 7, 14, 15, 22, 1))
    assert exif_wall_ns("2019-07-14T15:22:01") == wall_ns(datetime(2019, 7, 14, 15, 22, 1))
    for bad in ("0000:00:00 00:00:00", "    :  :     :  :  ", "2019:13:45 99:00:00", None, b"2019", 42):
        assert exif_wall_ns(bad) is None
    assert parse_offset("+02:00") == 120
    assert parse_offset("-0530") == -330
    assert parse_offset("+25:00") is None
    assert parse_offset(None) is None
    assert iso_taken(wall_ns(datetime(2019, 7, 14, 15, 22, 1)), 120) == "2019-07-14T15:22:01+02:00"
    assert iso_taken(wall_ns(datetime(2019, 7, 14, 15, 22, 1)), -330) == "2019-07-14T15:22:01-05:30"
    assert iso_taken(wall_ns(datetime(1969, 12, 31, 23, 0, 0)), None) == "1969-12-31T23:00:00"


def test_camera_and_gps():
    assert camera_name("Canon", "Canon EOS 5D") == "Canon EOS 5D"
    assert camera_name("Apple", "iPhone 12") == "Apple iPhone 12"
    assert camera_name("NIKON CORPORATION", "NIKON D750\x00") == "NIKON D750"
    assert camera_name(None, None) is None
    assert gps_position("N", (48, 51, 29.52), "E", (2, 17, 40.2)) == (48.8582, 2.2945)
    assert gps_position("S", (33, 52, 0), "W", (151, 12, 0))[0] == pytest.approx(-33.8667, abs=1e-4)
    assert gps_position("N", (0, 0, 0), "E", (0, 0, 0)) == (None, None)  # an unset receiver
    assert gps_position("N", (95, 0, 0), "E", (0, 0, 0)) == (None, None)
    assert gps_position("N", None, "E", (2, 0, 0)) == (None, None)
    assert distance_km(48.8582, 2.2945, 48.8606, 2.3376) == pytest.approx(3.17, abs=0.05)  # Eiffel tower → Louvre
    assert distance_km(0.0, 179.9, 0.0, -179.9) == pytest.approx(22.2, abs=0.1)  # across the antimeridian


def test_near_and_taken_requests():
    r = SearchRequest.of(q="x", near="48.85, 2.35, 5", taken_after="2019-07-01", taken_before=date(2019, 8, 1))
    assert r.near == (48.85, 2.35, 5.0) and r.taken_after == date(2019, 7, 1)
    assert wall_day_ns(date(2019, 7, 1)) == wall_ns(datetime(2019, 7, 1))
    assert wall_day_ns(date(9999, 12, 31)) == 2**63 - 1  # clamped to what SQLite's integers hold
    for bad, message in [("91,0,5", "latitude"), ("1,2", "LAT,LON,KM"), ("a,b,c", "LAT,LON,KM"), ("1,2,0", "distance")]:
        with pytest.raises(UserError, match=message) as e:
            SearchRequest.of(as_flags=True, q="x", near=bad)
        assert str(e.value).startswith("--near: ")
    with pytest.raises(UserError, match="--mode"):
        SearchRequest.of(as_flags=True, q="x", mode="fuzzy")
    assert SearchRequest.from_json('{"q": "x", "near": [48.85, 2.35, 5]}').near == (48.85, 2.35, 5.0)


def test_query_work_is_bounded():
    q = LexicalQuery.parse(" ".join(f"word{i:04}" for i in range(5000)))
    assert len(q.terms) == 16
