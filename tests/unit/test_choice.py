"""Which saved runtime choice a run takes (exported.saved_choice): the cache folder can be shared
between mmsearch versions and machines."""
from __future__ import annotations

import json
import os

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


@pytest.mark.parametrize(("others", "measures", "taken"), [
    (0.02, None, "onnx-int8"),
    (0.50, 1, None),  # timed while other work had the CPUs: measured again...
    (0.50, 2, None),
    (0.50, 3, "onnx-int8"),  # ... but a machine always busy is not measured at every run
])
def test_a_choice_timed_on_a_busy_machine_is_measured_again(others, measures, taken, tmp_path):
    saved = {"version": 2, "runtime": "onnx-int8", "threads": threads(), "others": others}
    (tmp_path / CHOICE).write_text(json.dumps(saved | ({"measures": measures} if measures else {})))
    assert exported.saved_choice(tmp_path) == taken


def test_busy_measurements_are_counted(tmp_path):
    """`runtime._chosen` saves the most of its CPUs other processes kept busy while timing, and
    counts the measurements made on a busy machine in a row; a quiet one settles the choice."""
    from types import SimpleNamespace

    from mmsearch.retrieval.encoders import runtime

    model = SimpleNamespace(identity="m")
    for n in (1, 2):
        choice = runtime._chosen(model, tmp_path, {}, "onnx", [0.1, 0.5])  # type: ignore[arg-type]
        assert choice["others"] == 0.5 and choice["measures"] == n
        assert json.loads((tmp_path / CHOICE).read_text())["measures"] == n
    choice = runtime._chosen(model, tmp_path, {}, "onnx", [0.01])  # type: ignore[arg-type]
    assert "measures" not in choice and exported.saved_choice(tmp_path) == "onnx"


def test_the_timing_sees_other_processes_busy(tmp_path):
    """`runtime._measure` tells how busy other processes kept this process's CPUs: a busy loop on
    each of them is seen (this process's own work is not counted)."""
    import subprocess
    import sys

    import numpy as np

    from mmsearch.retrieval.encoders import runtime
    from mmsearch.retrieval.encoders.pixels import PixelEncoder

    def work(batch):
        end = __import__("time").perf_counter() + 0.1
        while __import__("time").perf_counter() < end:
            pass
        return np.zeros((len(batch), 4), np.float32)

    encoders = {"a": PixelEncoder(work)}
    quiet: list[float] = []
    runtime._measure(encoders, np.zeros((4, 2, 2, 3), np.uint8), repeats=5, others=quiet)
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in os.sched_getaffinity(0)]
    try:
        busy: list[float] = []
        runtime._measure(encoders, np.zeros((4, 2, 2, 3), np.uint8), repeats=5, others=busy)
    finally:
        for p in loops:
            p.kill()
            p.wait()
    assert busy[0] > runtime.exported.MAX_OTHERS and busy[0] > quiet[0] + 0.2
