"""indexer/watch.py's pure parts: the debouncer (time given, nothing sleeps) and which paths' events matter."""
from __future__ import annotations

import pytest

from mmsearch.indexer.watch import Debouncer, Watched


def test_nothing_pending_is_never_due():
    assert Debouncer().due_in(100.0) is None


def test_a_burst_is_due_after_the_quiet_period():
    d = Debouncer(quiet=0.5, max_delay=3.0)
    for t in (10.0, 10.1, 10.2):
        d.add(t)
    assert d.due_in(10.3) == pytest.approx(0.4)  # quiet since 10.2: wait until 10.7
    assert d.due_in(10.7) == 0.0
    d.clear()
    assert d.due_in(11.0) is None


def test_a_continuous_stream_is_cut_at_the_maximum_delay():
    d = Debouncer(quiet=0.5, max_delay=3.0)
    t = 0.0
    while d.due_in(t) != 0:  # an event every 0.2 s: never quiet for 0.5 s
        d.add(t)
        t = round(t + 0.2, 1)
    assert t == 3.0


def test_due_in_never_negative():
    d = Debouncer(quiet=0.5, max_delay=3.0)
    d.add(1.0)
    assert d.due_in(60.0) == 0.0


def test_what_matters(tmp_path):
    root, index = str(tmp_path / "lib"), str(tmp_path / "lib" / "idx")
    w = Watched([root], ignore=[index], exclude=["thumbs", "*.gif"])
    assert w(f"{root}/a.jpg") and w(f"{root}/sub/b.mp4") and w(f"{root}/notes.txt")
    assert w(f"{root}/sub", folder=True)  # a folder moved or deleted takes its files with it
    assert not w(f"{root}/notes.pdf")  # not a media kind
    assert not w(f"{root}/.a.jpg") and not w(f"{root}/.cache/a.jpg")  # hidden
    assert not w(f"{root}/thumbs/a.jpg") and not w(f"{root}/c.gif")  # excluded by name, like scan
    assert not w(f"{index}/vectors-3.faiss") and not w(f"{index}/x.jpg")  # the index's own writes
    assert not w(str(tmp_path / "elsewhere.jpg"))  # outside every root
    assert Watched([root], hidden=True)(f"{root}/.cache/a.jpg")


def test_a_file_root_is_watched_alone(tmp_path):
    w = Watched([str(tmp_path / "one.jpg")])
    assert w(str(tmp_path / "one.jpg")) and not w(str(tmp_path / "two.jpg"))
