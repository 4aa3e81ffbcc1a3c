"""Which saved runtime choice a run takes (exported.saved_choice): the cache folder can be shared
between mmsearch versions and machines."""
from __future__ import annotations

import json

import pytest

from mmsearch.retrieval.encoders import exported
from mmsearch.retrieval.encoders.exported import BF16, CHOICE, threads


@pytest.mark.parametrize(("saved", "bf16_cpu", "taken"), [
    ({"version": 2, "runtime": "torch", "dtype": "bfloat16"}, True, BF16),
    ({"version": 2, "runtime": "torch", "dtype": "bfloat16"}, False, None),  # a shared cache, a CPU without bf16
    ({"version": 2, "runtime": "onnx-int8"}, True, "onnx-int8"),
    ({"runtime": "onnx-int8"}, False, "onnx-int8"),  # made before bf16 was a contender: kept where it cannot win
    ({"runtime": "onnx-int8"}, True, None),  # ... and measured again where it may
    ({"version": 2, "runtime": "torch"}, True, "torch"),
    ({"version": 2, "runtime": "tensorrt"}, False, None),  # a newer mmsearch's runtime: measured again
    ({"version": 2, "runtime": "auto"}, False, None),
])
def test_saved_choice(saved, bf16_cpu, taken, tmp_path, monkeypatch):
    monkeypatch.setattr(exported, "bf16_hardware", lambda: bf16_cpu)
    (tmp_path / CHOICE).write_text(json.dumps({**saved, "threads": threads()}))
    assert exported.saved_choice(tmp_path) == taken
    (tmp_path / CHOICE).write_text(json.dumps({**saved, "threads": threads() + 1}))
    assert exported.saved_choice(tmp_path) is None  # measured for another core count


def test_unreadable_choice_is_no_choice(tmp_path):
    assert exported.saved_choice(tmp_path) is None
    (tmp_path / CHOICE).write_text("{not json")
    assert exported.saved_choice(tmp_path) is None
