"""cli/main.py's output helpers, and a guard that the unit layer's modules never import torch."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mmsearch.cli.main import _clock, _printable


@pytest.mark.parametrize("name, shown", [
    ("/photos/a.jpg", "/photos/a.jpg"),
    ("/photos/my holiday.jpg", "/photos/my holiday.jpg"),
    ("/photos/café 日本 🐕.jpg", "/photos/café 日本 🐕.jpg"),
    ("/photos/a\nb.jpg", "/photos/a\\nb.jpg"),
    ("/photos/a\r\tb.jpg", "/photos/a\\r\\tb.jpg"),
    ("/photos/\x1b[31mred.jpg", "/photos/\\x1b[31mred.jpg"),
    ("/photos/a\u2028b.jpg", "/photos/a\\u2028b.jpg"),
    (os.fsdecode(b"/photos/caf\xe9.jpg"), "/photos/caf\\udce9.jpg"),
])
def test_printable(name, shown):
    assert _printable(name) == shown
    assert len(_printable(name).splitlines()) == 1


@pytest.mark.parametrize("seconds, shown", [
    (0, "00:00:00"), (0.99, "00:00:00"), (59.9, "00:00:59"), (217, "00:03:37"), (3600, "01:00:00"),
    (3661.5, "01:01:01"), (86399, "23:59:59"), (360_000, "100:00:00"),
])
def test_clock(seconds, shown):
    assert _clock(seconds) == shown


def test_unit_modules_do_not_import_torch():
    """The modules this layer tests must stay importable without torch (a fast, weightless suite)."""
    code = ("import sys\n"
            "import mmsearch.cli.main, mmsearch.indexer.options, mmsearch.indexer.scan, mmsearch.media.text, "
            "mmsearch.retrieval.policy, mmsearch.retrieval.request, mmsearch.retrieval.search\n"
            "heavy = sorted(m for m in ('torch', 'open_clip', 'transformers', 'onnxruntime') if m in sys.modules)\n"
            "print(','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
