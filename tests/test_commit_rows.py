"""The rows a bulk merge builds (indexer/run.py), apart from the store."""
from __future__ import annotations

import json

from mmsearch.indexer.run import _bodies


def test_bodies_are_text_else_ocr_text_compacted():
    ocr = json.dumps([["Gate B52", [0] * 8, 0.9], ["closed", [0] * 8, 0.8]])
    assert _bodies(["A Red Bicycle!", None, None, "x"], [None, ocr, None, ocr], 4) == ["aredbicycle", "gateb52closed", "", "x"]


def test_bodies_of_items_without_text_or_ocr_are_empty():
    assert _bodies(None, None, 3) == ["", "", ""]
    assert _bodies(["café"], None, 1) == ["cafe"]
    assert _bodies(None, [None, "[]"], 2) == ["", ""]
