"""indexer/scan.py on a small real tree: kinds, hidden and excluded names, symlink loops, odd files."""
from __future__ import annotations

import os

import pytest

from mmsearch.indexer.scan import Entry, scan


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "skipme").mkdir()
    (root / ".hid").mkdir()
    (root / "a.jpg").write_bytes(b"12345")
    (root / "b.PNG").write_bytes(b"x")
    (root / "notes.pdf").write_bytes(b"x")  # not a media kind
    (root / ".hidden.jpg").write_bytes(b"x")
    (root / ".hid" / "x.jpg").write_bytes(b"x")
    (root / "sub" / "c.mp4").write_bytes(b"x")
    (root / "sub" / "d.txt").write_text("x")
    (root / "skipme" / "e.jpg").write_bytes(b"x")
    os.symlink(root, root / "sub" / "loop")  # back to the top: must not be walked again
    os.symlink(root / "nowhere.png", root / "dead.png")
    os.mkfifo(root / "pipe.jpg")
    return root


def _rel(root, entries: list[Entry]) -> list[tuple[str, str, str | None]]:
    return [(os.path.relpath(e.path, root), e.kind, e.error) for e in entries]


def test_scan_tree(tree):
    assert _rel(tree, list(scan([str(tree)]))) == [
        ("a.jpg", "image", None),
        ("b.PNG", "image", None),
        ("dead.png", "image", "broken symlink"),
        ("pipe.jpg", "image", "not a regular file"),
        ("skipme/e.jpg", "image", None),
        ("sub/c.mp4", "video", None),
        ("sub/d.txt", "text", None),
    ]


def test_entry_fields(tree):
    entries = {os.path.basename(e.path): e for e in scan([str(tree)])}
    a = entries["a.jpg"]
    st = os.stat(tree / "a.jpg")
    assert (a.path, a.size, a.mtime_ns, a.error) == (str(tree / "a.jpg"), 5, st.st_mtime_ns, None)
    assert a.key == os.fsencode(str(tree / "a.jpg"))
    assert (entries["dead.png"].size, entries["dead.png"].mtime_ns) == (0, 0)


def test_hidden(tree):
    rel = [r for r, _, _ in _rel(tree, list(scan([str(tree)], hidden=True)))]
    assert ".hidden.jpg" in rel and ".hid/x.jpg" in rel
    assert len(rel) == 9


def test_exclude_names_and_paths(tree):
    rel = [r for r, _, _ in _rel(tree, list(scan([str(tree)], exclude=["skipme", "*.PNG", f"{tree}/sub/*.txt"])))]
    assert rel == ["a.jpg", "dead.png", "pipe.jpg", "sub/c.mp4"]
    # fnmatch on POSIX is case-sensitive: *.png does not exclude b.PNG
    rel = [r for r, _, _ in _rel(tree, list(scan([str(tree)], exclude=["*.png"])))]
    assert "b.PNG" in rel and "dead.png" not in rel
    # a folder excluded by its path prunes everything below it
    assert all(not r.startswith("sub/") for r, _, _ in _rel(tree, list(scan([str(tree)], exclude=[str(tree / "sub")]))))


def test_symlink_loop_visited_once(tree):
    rel = [r for r, _, _ in _rel(tree, list(scan([str(tree)])))]
    assert len(rel) == len(set(rel)) == 7
    assert not any("loop" in r for r in rel)
    # entered through the link first, the loop is walked once under the link's name, then stops
    rel = [r for r, _, _ in _rel(tree / "sub", list(scan([str(tree / "sub")])))]
    assert rel == ["c.mp4", "d.txt", "loop/a.jpg", "loop/b.PNG", "loop/dead.png", "loop/pipe.jpg",
                   "loop/skipme/e.jpg"]


def test_symlinked_folder_keeps_the_name_the_user_sees(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "p.jpg").write_bytes(b"x")
    top = tmp_path / "top"
    top.mkdir()
    os.symlink(real, top / "alias")
    assert [e.path for e in scan([str(top)])] == [str(top / "alias" / "p.jpg")]
    # the same folder twice (as itself and through a link) is walked once
    assert [e.path for e in scan([str(real), str(top)])] == [str(real / "p.jpg")]


def test_file_and_missing_roots(tree, tmp_path):
    assert _rel(tree, list(scan([str(tree / "a.jpg")]))) == [("a.jpg", "image", None)]
    assert list(scan([str(tree / "notes.pdf")])) == []
    assert list(scan([str(tmp_path / "gone")])) == []
    assert _rel(tree, list(scan([str(tree / "dead.png")]))) == [("dead.png", "image", "broken symlink")]


def test_relative_root_gives_absolute_paths(tree, monkeypatch):
    monkeypatch.chdir(tree.parent)
    assert [e.path for e in scan(["root/skipme"])] == [str(tree / "skipme" / "e.jpg")]


def test_non_utf8_name(tmp_path):
    name = os.path.join(os.fsencode(str(tmp_path)), b"caf\xe9.jpg")
    with open(name, "wb") as f:
        f.write(b"x")
    (entry,) = scan([str(tmp_path)])
    assert entry.key == name and entry.error is None and entry.kind == "image"


def test_plan_parts_end_where_a_folder_does():
    """The plan reads the scan in parts of about a given size, never splitting a folder (a caption
    and its image are compared together), and loses or reorders nothing."""
    from mmsearch.indexer.plan import _parts
    from mmsearch.indexer.scan import Entry

    entries = [Entry(f"/r/{d}/{i}.jpg", "image") for d, n in (("a", 3), ("b", 1), ("c", 4), ("d", 2)) for i in range(n)]
    parts = list(_parts(iter(entries), 2))
    assert [e for p in parts for e in p] == entries
    folders = [sorted({os.path.basename(os.path.dirname(e.path)) for e in p}) for p in parts]
    assert folders == [["a"], ["b", "c"], ["d"]]  # (b alone is under the size: c joins it)
    assert [len(p) for p in _parts(entries, 4)] == [4, 4, 2]  # a+b, c, d: at least the size, then the folder's end
    assert list(_parts([], 2)) == []


def test_plan_finds_what_the_scan_did_not_see():
    from mmsearch.indexer.plan import _Seen

    seen = _Seen()
    assert list(seen.unseen([(b"/x", 1)])) == [(b"/x", 1)]  # nothing seen: everything stored is unseen
    seen.add([b"/a", b"/c"])
    seen.add([b"/e"])
    stored = [(b"/a", 1), (b"/b", 2), (b"/c", 3), (b"/d", 4), (b"/e", 5), (b"/\xff", 6)]
    assert list(seen.unseen(iter(stored))) == [(b"/b", 2), (b"/d", 4), (b"/\xff", 6)]
