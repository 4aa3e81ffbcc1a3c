"""The rows a bulk merge builds (indexer/run.py), apart from the store."""
from __future__ import annotations

import json

import pytest

from mmsearch.indexer.run import _bodies


def test_bodies_are_text_else_ocr_text_compacted():
    ocr = json.dumps([["Gate B52", [0] * 8, 0.9], ["closed", [0] * 8, 0.8]])
    assert _bodies(["A Red Bicycle!", None, None, "x"], [None, ocr, None, ocr], 4) == ["aredbicycle", "gateb52closed", "", "x"]


def test_bodies_of_items_without_text_or_ocr_are_empty():
    assert _bodies(None, None, 3) == ["", "", ""]
    assert _bodies(["café"], None, 1) == ["cafe"]
    assert _bodies(None, [None, "[]"], 2) == ["", ""]


def test_an_interrupt_inside_a_statement_is_not_hidden_by_the_bulk_settings(tmp_path):
    """A Ctrl-C or SIGTERM landing in a statement makes SQLAlchemy close the connection; putting
    the bulk settings back then raised 'Cannot operate on a closed database' in its place (a
    traceback and exit code 1 instead of the interrupt's message and 130)."""
    from mmsearch.indexer import run
    from mmsearch.retrieval.index import Index

    with Index(tmp_path / "index", create=True).session() as s, pytest.raises(KeyboardInterrupt):
        with run._bulk(s):
            s.connection().invalidate()  # (as SQLAlchemy does then: the sqlite3 connection closed)
            raise KeyboardInterrupt
