"""SearchRequest and IndexOptions: aliases, coercions, strict JSON, and errors that name the field."""
from __future__ import annotations

import json
import os
from datetime import date, datetime

import pytest
from pydantic import ValidationError

from mmsearch.errors import UserError
from mmsearch.indexer.options import IndexOptions
from mmsearch.retrieval.request import DEFAULT_PER_VIDEO, MAX_GLOB, REPEATABLE, SearchRequest


def _error(fn, *args, **kw) -> str:
    with pytest.raises(UserError) as e:
        fn(*args, **kw)
    return str(e.value)


# --- SearchRequest.of ----------------------------------------------------------------------------


def test_defaults():
    r = SearchRequest.of()
    assert (r.q, r.image, r.at, r.negative, r.weights, r.fusion, r.k, r.min_score, r.kind, r.path, r.after,
            r.before, r.tags, r.per_video) == (None, [], None, [], [], "early", 10, None, None, None, None, None, [],
                                               DEFAULT_PER_VIDEO)
    assert SearchRequest.default("k") == 10 and SearchRequest.default("image") == []
    assert "How many hits" in SearchRequest.help("k")


def test_aliases():
    r = SearchRequest.of(type="image", **{"not": ["blue", "red"]}, tag=["x"], weight=[2, 0.5])
    assert (r.kind, r.negative, r.tags, r.weights) == ("image", ["blue", "red"], ["x"], [2.0, 0.5])
    r = SearchRequest.of(kind="text", negative=["n"], tags=["t"], weights=[1])
    assert (r.kind, r.negative, r.tags, r.weights) == ("text", ["n"], ["t"], [1.0])


def test_a_field_under_two_names_is_refused():
    """As a repeated query parameter is (before, the alias won silently)."""
    assert _error(SearchRequest.from_json, b'{"q": "x", "kind": "image", "type": "video"}') == \
        "request: kind given twice: as kind and as type"
    assert "negative given twice" in _error(SearchRequest.of, q="x", negative=["a"], **{"not": ["b"]})
    assert "tags given twice" in _error(SearchRequest.of, tag=["a"], tags=["b"])


def test_single_string_becomes_a_list_of_one():
    r = SearchRequest.of(image="a.jpg", **{"not": "blue"}, tag="beach")
    assert (r.image, r.negative, r.tags) == (["a.jpg"], ["blue"], ["beach"])


def test_repeatable_fields_include_aliases():
    assert REPEATABLE == {"image", "negative", "not", "weights", "weight", "tags", "tag"}


@pytest.mark.parametrize("value, day", [
    ("2024-06-30", date(2024, 6, 30)),
    ("2024-06-30T23:59:59", date(2024, 6, 30)),
    (datetime(2024, 6, 30, 15, 30), date(2024, 6, 30)),
    (date(1969, 7, 20), date(1969, 7, 20)),
    ("", None),
    (None, None),
])
def test_dates(value, day):
    r = SearchRequest.of(after=value, before=value)
    assert r.after == day and r.before == day
    assert type(r.after) is (date if day else type(None))  # a day, not a datetime


@pytest.mark.parametrize("value", ["2024-13-01", "yesterday", "30/06/2024"])
def test_bad_date_named(value):
    assert _error(SearchRequest.of, before=value) == f"before: wants a date like 2024-06-30, not {value!r}"


def test_lax_python_values():
    r = SearchRequest.of(k="5", min_score="0.5", at="2", per_video="1")
    assert (r.k, r.min_score, r.at, r.per_video) == (5, 0.5, 2.0, 1)


@pytest.mark.parametrize("kw, message", [
    ({"k": 0}, "k: Input should be greater than or equal to 1"),
    ({"per_video": 0}, "per_video: Input should be greater than or equal to 1"),
    ({"min_score": 1.5}, "min_score: Input should be less than or equal to 1"),
    ({"min_score": -1.01}, "min_score: Input should be greater than or equal to -1"),
    ({"min_score": float("nan")}, "min_score: Input should be a finite number"),
    ({"at": float("inf")}, "at: Input should be a finite number"),
    ({"at": -1}, "at: Input should be greater than or equal to 0"),
    ({"weights": [1, float("-inf")]}, "weights.1: Input should be a finite number"),
    ({"fusion": "mid"}, "fusion: Input should be 'early' or 'late'"),
    ({"kind": "audio"}, "kind: Input should be 'image', 'video' or 'text'"),
    ({"unknown": 1}, "unknown: Extra inputs are not permitted"),
    ({"path": "x" * (MAX_GLOB + 1)}, f"path: String should have at most {MAX_GLOB} characters"),
])
def test_bad_values_named(kw, message):
    assert _error(SearchRequest.of, **kw) == message


def test_limits_are_inclusive():
    assert SearchRequest.of(min_score=-1).min_score == -1.0
    assert SearchRequest.of(min_score=1).min_score == 1.0
    assert SearchRequest.of(k=1, at=0, per_video=1).k == 1
    assert SearchRequest.of(path="x" * MAX_GLOB).path == "x" * MAX_GLOB


def test_several_errors_in_one_line():
    msg = _error(SearchRequest.of, k=0, fusion="x")
    # in the order the fields are declared
    assert msg == "fusion: Input should be 'early' or 'late'; k: Input should be greater than or equal to 1"
    assert "\n" not in msg


def test_errors_as_flags():
    assert _error(SearchRequest.of, as_flags=True, min_score=2, per_video=0) == (
        "--min-score: Input should be less than or equal to 1; --per-video: Input should be greater than or equal to 1")
    assert _error(SearchRequest.of, as_flags=True, q=5) == "QUERY: Input should be a valid string"
    assert _error(SearchRequest.of, as_flags=True, foo_bar=1) == "--foo-bar: Extra inputs are not permitted"
    assert _error(SearchRequest.of, as_flags=True, k=0) == "--k: Input should be greater than or equal to 1"


def test_frozen():
    r = SearchRequest.of(k=3)
    with pytest.raises(ValidationError):
        r.k = 4
    assert r.k == 3


# --- SearchRequest.from_json ---------------------------------------------------------------------


def test_json_with_aliases_and_dates():
    r = SearchRequest.from_json(json.dumps({"q": "x", "not": "blue", "type": "video", "after": "2024-06-30",
                                            "tag": ["a", "b"], "weight": [2], "k": 5, "min_score": 0.5,
                                            "fusion": "late", "image": "a.jpg", "before": ""}))
    assert (r.q, r.negative, r.kind, r.after, r.tags, r.weights, r.k, r.min_score, r.fusion, r.image, r.before) == (
        "x", ["blue"], "video", date(2024, 6, 30), ["a", "b"], [2.0], 5, 0.5, "late", ["a.jpg"], None)


def test_json_accepts_bytes_and_ints_for_floats():
    r = SearchRequest.from_json(b'{"min_score": 0, "at": 3, "weights": [1, 2.5]}')
    assert (r.min_score, r.at, r.weights) == (0.0, 3.0, [1.0, 2.5])


@pytest.mark.parametrize("body, message", [
    ('{"k": "5"}', "k: Input should be a valid integer"),
    ('{"k": 5.0}', "k: Input should be a valid integer"),
    ('{"k": true}', "k: Input should be a valid integer"),
    ('{"k": 0}', "k: Input should be greater than or equal to 1"),
    ('{"path": 123}', "path: Input should be a valid string"),
    ('{"q": ["a"]}', "q: Input should be a valid string"),
    ('{"before": true}', "before: Input should be a valid date"),
    ('{"after": "junk"}', "after: wants a date like 2024-06-30, not 'junk'"),
    ('{"min_score": "0.5"}', "min_score: Input should be a valid number"),
    ('{"min_score": NaN}', "min_score: Input should be a finite number"),
    ('{"at": Infinity}', "at: Input should be a finite number"),
    ('{"min_score": -1.5}', "min_score: Input should be greater than or equal to -1"),
    ('{"min_score": 1.0001}', "min_score: Input should be less than or equal to 1"),
    ('{"fusion": "mid"}', "fusion: Input should be 'early' or 'late'"),
    ('{"fusion": "EARLY"}', "fusion: Input should be 'early' or 'late'"),
    ('{"foo": 1}', "foo: Extra inputs are not permitted"),
    ('{"image": [1]}', "image.0: Input should be a valid string"),
    ('[1]', "request: Input should be an object"),
])
def test_strict_json_refusals_named(body, message):
    assert _error(SearchRequest.from_json, body) == message


def test_malformed_json():
    assert _error(SearchRequest.from_json, "{").startswith("request: Invalid JSON")


# --- IndexOptions --------------------------------------------------------------------------------


def test_index_option_defaults(monkeypatch):
    o = IndexOptions.of()
    assert 1 <= o.workers <= 4
    assert (o.model, o.reindex, o.batch_size, o.processes, o.exclude, o.hidden, o.index_type, o.runtime,
            o.text_column, o.path_column, o.progress) == (None, False, 32, False, [], False, None, "auto", None, None,
                                                          False)


@pytest.mark.parametrize("cores, workers", [(1, 1), (2, 2), (4, 4), (64, 4), (None, 1)])
def test_default_workers_follow_the_cores(monkeypatch, cores, workers):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert IndexOptions.of().workers == workers


def test_index_options_values():
    o = IndexOptions.of(index_type="auto", runtime="onnx-int8", exclude=["*.tmp"], workers=8, batch_size=4096)
    assert (o.index_type, o.runtime, o.exclude, o.workers, o.batch_size) == ("auto", "onnx-int8", ["*.tmp"], 8, 4096)
    assert IndexOptions.of(index_type="ivfpq").index_type == "ivfpq"


@pytest.mark.parametrize("kw, message", [
    ({"runtime": "gpu"}, "runtime: Input should be 'auto', 'torch', 'torch-bf16', 'onnx', 'onnx-int8' or 'cuda'"),
    ({"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
    ({"batch_size": 4097}, "batch_size: Input should be less than or equal to 4096"),
    ({"workers": 0}, "workers: Input should be greater than or equal to 1"),
    ({"max_gap": 0.05}, "max_gap: Input should be greater than or equal to 0.1"),
    ({"max_pixels": float("inf")}, "max_pixels: Input should be a finite number"),
    ({"fast": True}, "fast: Extra inputs are not permitted"),
])
def test_bad_index_options_named(kw, message):
    assert _error(IndexOptions.of, **kw) == message


def test_bad_index_type_named():
    msg = _error(IndexOptions.of, index_type="annoy")
    assert msg.startswith("index_type")
    assert "'flat', 'hnsw', 'ivfsq' or 'ivfpq'" in msg
    flags = _error(IndexOptions.of, as_flags=True, index_type="annoy")
    assert flags.startswith("--index-type: ") and "index_type" not in flags
