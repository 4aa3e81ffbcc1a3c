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


@pytest.mark.parametrize(("share", "measures", "taken"), [
    (0.95, None, "onnx-int8"),
    (0.60, 1, None),  # timed while other work had the cores: measured again...
    (0.60, 2, None),
    (0.60, 3, "onnx-int8"),  # ... but a machine always busy is not measured at every run
])
def test_a_choice_timed_on_a_busy_machine_is_measured_again(share, measures, taken, tmp_path):
    saved = {"version": 2, "runtime": "onnx-int8", "threads": threads(), "cpu_share": share}
    (tmp_path / CHOICE).write_text(json.dumps(saved | ({"measures": measures} if measures else {})))
    assert exported.saved_choice(tmp_path) == taken


def test_busy_measurements_are_counted(tmp_path):
    """`runtime._chosen` saves the least share of its cores the timings had, and counts the
    measurements made on a busy machine in a row; a quiet one settles the choice."""
    from types import SimpleNamespace

    from mmsearch.retrieval.encoders import runtime

    model = SimpleNamespace(identity="m")
    for n in (1, 2):
        choice = runtime._chosen(model, tmp_path, {}, "onnx", [0.9, 0.5])  # type: ignore[arg-type]
        assert choice["cpu_share"] == 0.5 and choice["measures"] == n
        assert json.loads((tmp_path / CHOICE).read_text())["measures"] == n
    choice = runtime._chosen(model, tmp_path, {}, "onnx", [0.97])  # type: ignore[arg-type]
    assert "measures" not in choice and exported.saved_choice(tmp_path) == "onnx"
