"""retrieval/search.py without an index: compact queries, fusion, filters and their SQL, dates."""
from __future__ import annotations

import os
import time
from datetime import date

import numpy as np
import pytest
from PIL import Image

from mmsearch.errors import UserError
from mmsearch.retrieval.request import SearchRequest
from mmsearch.retrieval.search import (
    MAX_PARTS,
    Filters,
    Part,
    day_ns,
    early_fusion,
    parse_compact,
    path_pattern,
    query_parts,
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# --- parse_compact -------------------------------------------------------------------------------


def _summary(parts: list[Part]) -> list[tuple]:
    return [(p.text, p.image, p.weight) for p in parts]


@pytest.mark.parametrize("query", ["a dog on a beach", "a t-shirt", "well-known 2:1 ratio", "x+y", "a -b", "c- d",
                                   "2:beach", " spaced  "])
def test_plain_text_is_one_part(query):
    assert _summary(parse_compact(query)) == [(query, None, 1.0)]


def test_weights_and_signs():
    assert _summary(parse_compact("2:beach + 0.5:sunset - people")) == [
        ("beach", None, 2.0), ("sunset", None, 0.5), ("people", None, -1.0)]


def test_sign_carries_to_the_next_part_only():
    assert _summary(parse_compact("a - b + c - 3:d")) == [
        ("a", None, 1.0), ("b", None, -1.0), ("c", None, 1.0), ("d", None, -3.0)]


def test_hyphen_inside_a_word_is_not_a_separator():
    assert _summary(parse_compact("a t-shirt - stains")) == [("a t-shirt", None, 1.0), ("stains", None, -1.0)]


def test_empty_parts_dropped():
    assert _summary(parse_compact("beach + 2: ")) == [("beach", None, 1.0)]


def test_at_sign_marks_an_image_part(tmp_path):
    ref = tmp_path / "ref.jpg"
    ref.write_bytes(b"x")
    missing = tmp_path / "missing.jpg"
    # decided by syntax, not by the disk: an existing file without @ stays text, a missing one with @ is an image
    assert _summary(parse_compact(f"2:beach + {ref} - 0.5:@{missing}")) == [
        ("beach", None, 2.0), (str(ref), None, 1.0), (None, str(missing), -0.5)]


def test_query_starting_with_at_sign_is_one_image_part():
    assert _summary(parse_compact("@photos/ref.jpg")) == [(None, "photos/ref.jpg", 1.0)]
    assert _summary(parse_compact("  @ a b.jpg ")) == [(None, "a b.jpg", 1.0)]
    assert _summary(parse_compact("mail me@example.com")) == [("mail me@example.com", None, 1.0)]


def test_home_relative_image_part(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _summary(parse_compact("sky + 3:@~/ref.png")) == [("sky", None, 1.0), (None, str(tmp_path / "ref.png"), 3.0)]


# --- early_fusion --------------------------------------------------------------------------------


def test_early_fusion_is_a_normalised_weighted_sum():
    e1, e2 = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    v = early_fusion([e1, e2], [1.0, 1.0])
    assert v.dtype == np.float32
    np.testing.assert_allclose(v, [2**-0.5, 2**-0.5, 0.0], rtol=1e-6)
    np.testing.assert_allclose(early_fusion([e1, e2], [2.0, -1.0]), np.array([2.0, -1.0, 0.0]) / 5**0.5, rtol=1e-6)
    np.testing.assert_allclose(early_fusion([e2], [3.0]), e2, rtol=1e-6)


def test_early_fusion_weight_scale_does_not_matter_but_ratio_does():
    rng = np.random.default_rng(0)
    a, b = (x / np.linalg.norm(x) for x in rng.normal(size=(2, 8)))
    np.testing.assert_allclose(early_fusion([a, b], [1, 2]), early_fusion([a, b], [10, 20]), rtol=1e-5)
    assert np.linalg.norm(early_fusion([a, b], [1, 2]) - early_fusion([a, b], [2, 1])) > 0.1


@pytest.mark.parametrize("weights", [[1.0, -1.0], [2.0, -2.0], [0.0, 0.0]])
def test_cancelling_parts_refused(weights):
    e = np.array([0.6, 0.8])
    with pytest.raises(UserError, match="cancel each other out"):
        early_fusion([e, e], weights)


# --- path_pattern, day_ns ------------------------------------------------------------------------


@pytest.mark.parametrize("glob, pattern", [
    ("*.png", "*.png"), ("*/2024/*", "*/2024/*"), ("/home/me/*", "/home/me/*"),
    ("2024/*", "*/2024/*"), ("photo.jpg", "*/photo.jpg"), ("?.jpg", "*/?.jpg"),
])
def test_path_pattern(glob, pattern):
    assert path_pattern(glob) == pattern


@pytest.fixture
def tz():
    """Set the local time zone (POSIX TZ strings: no tz database needed) for the test's duration."""
    old = os.environ.get("TZ")

    def set_tz(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    yield set_tz
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_day_ns_is_local_midnight(tz):
    tz("UTC0")
    assert day_ns(None) is None
    assert day_ns(date(1970, 1, 1)) == 0
    assert day_ns(date(2024, 6, 30)) == 1_719_705_600 * 10**9
    tz("XYZ-2")  # two hours east of UTC: local midnight is 22:00 UTC the day before
    assert day_ns(date(2024, 6, 30)) == (1_719_705_600 - 7_200) * 10**9
    assert day_ns(date(1970, 1, 1)) == -7_200 * 10**9
    tz("XYZ+5")
    assert day_ns(date(2024, 6, 30)) == (1_719_705_600 + 18_000) * 10**9


def test_day_ns_before_1970_is_negative(tz):
    tz("UTC0")
    assert day_ns(date(1969, 12, 31)) == -86_400 * 10**9
    assert day_ns(date(1900, 1, 1)) == -2_208_988_800 * 10**9


@pytest.mark.parametrize("zone", ["UTC0", "XYZ-14", "XYZ+12"])
def test_day_ns_clamped_to_int64(tz, zone):
    tz(zone)
    assert day_ns(date(1, 1, 1)) == INT64_MIN
    assert day_ns(date(9999, 12, 31)) == INT64_MAX
    assert day_ns(date(1677, 9, 20)) == INT64_MIN
    assert day_ns(date(2262, 4, 13)) == INT64_MAX
    for d in (date(1, 1, 1), date(1677, 9, 20), date(2262, 4, 13), date(9999, 12, 31)):
        np.int64(day_ns(d))  # fits: would raise OverflowError otherwise


def test_day_ns_edges_of_int64_in_utc(tz):
    tz("UTC0")
    assert day_ns(date(1677, 9, 21)) == INT64_MIN  # int64's first instant is 1677-09-21 00:12:43 UTC
    assert day_ns(date(1677, 9, 22)) == -9_223_286_400 * 10**9
    assert day_ns(date(2262, 4, 11)) == 9_223_286_400 * 10**9  # its last is 2262-04-11 23:47:16 UTC
    assert day_ns(date(2262, 4, 12)) == INT64_MAX


# --- Filters -------------------------------------------------------------------------------------


@pytest.mark.parametrize("filters, active", [
    (Filters(), False),
    (Filters(kinds=set(), path_glob="", tags=[]), False),
    (Filters(after_ns=0), True),
    (Filters(before_ns=0), True),
    (Filters(after_ns=-5), True),
    (Filters(kinds={"image"}), True),
    (Filters(path_glob="*.png"), True),
    (Filters(tags=["beach"]), True),
])
def test_filters_active(filters, active):
    assert filters.active() is active


def test_filters_of_request_at_the_epoch_is_active(tz):
    tz("UTC0")
    f = Filters.of(SearchRequest.of(after="1970-01-01"))
    assert f.after_ns == 0 and f.before_ns is None and f.active()
    f = Filters.of(SearchRequest.of(kind="video", path="2024/*", before=date(2024, 6, 30), tags=["a", "b"]))
    assert (f.kinds, f.path_glob, f.after_ns, f.before_ns, f.tags) == (
        {"video"}, "2024/*", None, 1_719_705_600 * 10**9, ["a", "b"])
    assert not Filters.of(SearchRequest.of(q="x", path="")).active()


@pytest.fixture
def files_db(tmp_path):
    """A real index database (store.py's schema) holding four files, an item each, some tags and places."""
    import sqlite3

    from mmsearch.retrieval.store import open_engine

    open_engine(str(tmp_path)).dispose()
    conn = sqlite3.connect(tmp_path / "mmsearch.db")
    files = [(1, "/p/2024/a.jpg", 5, "image", 0.0, 179.9), (2, "/p/old2024/b.jpg", 15, "image", 0.0, -179.9),
             (3, "/abs/c.jpg", 0, "video", 0.0, 0.0), (4, "/p/2024/d.txt", -10**14, "text", None, None)]
    conn.executemany("INSERT INTO files (id, path, size, mtime_ns, kind, status, lat, lon) VALUES (?, ?, 0, ?, ?, 'ok', ?, ?)", files)
    conn.executemany("INSERT INTO items (id, file_id, kind) VALUES (?, ?, ?)", [(10 + f[0], f[0], f[3]) for f in files])
    conn.executemany("INSERT INTO tags (file_id, label, score) VALUES (?, ?, 1)", [(1, "a"), (1, "b"), (2, "a"), (3, "it's")])
    conn.commit()
    yield conn
    conn.close()


@pytest.mark.parametrize("filters, ids", [
    (Filters(), [11, 12, 13, 14]),
    (Filters(kinds={"image"}, path_glob="2024/*", after_ns=0, before_ns=10, tags=["a", "b"]), [11]),
    (Filters(tags=["a"]), [11, 12]),
    (Filters(tags=["a", "b"]), [11]),
    (Filters(tags=["it's"]), [13]),  # (a parameter, not spliced into the SQL)
    (Filters(path_glob="2024/*"), [11, 14]),  # whole trailing components: not old2024/
    (Filters(after_ns=5), [11, 12]),
    (Filters(before_ns=-86_400 * 10**9), [14]),
    (Filters(path_glob="/abs/*.jpg", kinds={"text", "video"}), [13]),
    (Filters(kinds={"text", "video"}), [13, 14]),
    (Filters(near=(0.0, 179.95, 50)), [11, 12]),  # the box across the antimeridian
    (Filters(near=(0.0, 0.2, 50)), [13]),
])
def test_filter_sql_selects_what_passes(files_db, filters, ids):
    assert sorted(row[0] for row in files_db.execute(*filters.query())) == ids


# --- query_parts ---------------------------------------------------------------------------------


def _parts(**kw) -> list[tuple]:
    return [(p.text, p.image, p.pixels is not None, p.weight) for p in query_parts(SearchRequest.of(**kw))]


def test_text_only():
    assert _parts(q="a dog") == [("a dog", None, False, 1.0)]


def test_weights_apply_to_positives_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _parts(q="a + b - c", image=["x.jpg", "~/y.jpg"], weights=[2, 3, 4]) == [
        ("a", None, False, 2.0), ("b", None, False, 3.0), ("c", None, False, -1.0),
        (None, "x.jpg", False, 4.0), (None, str(tmp_path / "y.jpg"), False, 1.0)]


def test_weights_multiply_compact_weights():
    assert _parts(q="2:a + 0.5:b", weights=[3]) == [("a", None, False, 6.0), ("b", None, False, 0.5)]


def test_negatives_appended_with_weight_minus_one():
    assert _parts(q="sea", negative=["boats", "people"], weights=[2]) == [
        ("sea", None, False, 2.0), ("boats", None, False, -1.0), ("people", None, False, -1.0)]


def test_pixels_come_after_text_before_images():
    px = Image.new("RGB", (2, 2))
    parts = query_parts(SearchRequest.of(q="cat", image="a.jpg", at=1.5, weights=[1, 2, 3]), pixels=px)
    assert [(p.text, p.image, p.weight) for p in parts] == [("cat", None, 1.0), (None, None, 2.0), (None, "a.jpg", 3.0)]
    assert parts[1].pixels is px
    assert parts[2].at == 1.5 and parts[0].at is None


def test_pixels_alone():
    px = Image.new("RGB", (1, 1))
    parts = query_parts(SearchRequest.of(), pixels=px)
    assert len(parts) == 1 and parts[0].pixels is px and parts[0].weight == 1.0


def test_too_many_weights():
    with pytest.raises(UserError, match="^3 weights for 2 positive parts$"):
        query_parts(SearchRequest.of(q="a - b", image=["x.jpg"], weights=[1, 2, 3]))


def test_at_most_max_parts():
    assert len(query_parts(SearchRequest.of(q=" + ".join(f"w{i}" for i in range(MAX_PARTS - 2)),
                                            image=["a.jpg"], negative=["n"]))) == MAX_PARTS
    with pytest.raises(UserError, match=f"^a query has at most {MAX_PARTS} parts, not {MAX_PARTS + 1}$"):
        query_parts(SearchRequest.of(q=" + ".join(f"w{i}" for i in range(MAX_PARTS - 1)), image=["a.jpg"],
                                     negative=["n"]))
    with pytest.raises(UserError, match=f"^negative: List should have at most {MAX_PARTS} items"):
        SearchRequest.of(q="x", negative=[str(i) for i in range(MAX_PARTS + 2)])  # refused before any work


@pytest.mark.parametrize("kw", [{}, {"negative": ["x"]}, {"weights": [1.0]}, {"at": 2.0}])
def test_nothing_to_search(kw):
    with pytest.raises(UserError, match="^give a text query or an image$"):
        query_parts(SearchRequest.of(**kw))


def test_a_bare_file_mark_is_an_error():
    with pytest.raises(UserError, match="needs a file name"):
        parse_compact("beach + @")


def test_plain_ascii_skips_ftfy_and_cleans_as_it_would():
    import html
    import random
    import string

    import ftfy

    from mmsearch.retrieval.encoders.query import clean_open_clip

    rng = random.Random(0)
    texts = ["  a dog on a beach ", "say \"hi\" <b>1/2</b>", "x"] + [
        "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 30))) for _ in range(3000)]
    texts += ["Tom &amp; Jerry", "don’t", "ＦＵＬＬ", "line\r\nbreak", "bell\x07"]  # (these take ftfy's path)
    for t in texts:
        assert clean_open_clip(t) == html.unescape(html.unescape(ftfy.fix_text(t))).strip(), repr(t)
