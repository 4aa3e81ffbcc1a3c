"""The indexer under faults a careless user or a hostile folder brings: unreadable folders, two
writers, FIFOs swapped in for media, names that would forge output lines, `--reindex`."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest


@pytest.fixture
def lib(photos, tmp_path):
    d = tmp_path / "lib"
    (d / "sub").mkdir(parents=True)
    shutil.copy2(photos / "coffee.png", d / "coffee.png")
    shutil.copy2(photos / "rocket.jpg", d / "sub" / "rocket.jpg")
    shutil.copy2(photos / "horse.png", d / "sub" / "horse.png")
    return d


def _unlistable(monkeypatch, *folders):
    """Make os.walk fail to list `folders` as it does without read permission (tests run as root,
    where chmod 000 stops nothing)."""
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) in {str(f) for f in folders}:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_an_unreadable_folder_keeps_its_items_and_says_why(cli, tiny_clip, lib, monkeypatch):
    assert cli.json("index", str(lib), "--model", tiny_clip)["new"] == 3
    _unlistable(monkeypatch, lib / "sub")
    s = cli.json("index", str(lib))
    assert s["removed"] == 0 and s["skipped"] == [{"path": str(lib / "sub"), "reason": "permission denied"}]
    info = cli.json("info")
    assert info["items"]["image"] == 3 and info["skipped"] == s["skipped"]
    assert cli.json("search", "--image", str(lib / "sub" / "horse.png"), "-k", "1")[0]["path"] == str(lib / "sub" / "horse.png")
    monkeypatch.undo()  # readable again: nothing to embed, and the folder is no longer skipped
    s = cli.json("index", str(lib))
    assert s["embedded"] == 0 and s["removed"] == 1 and cli.json("info")["skipped"] == []  # (the folder's record)
    assert cli.json("info")["items"]["image"] == 3


def test_an_unreadable_root_is_reported_not_silent(cli, tiny_clip, lib, monkeypatch):
    cli("index", str(lib), "--model", tiny_clip)
    _unlistable(monkeypatch, lib)
    r = cli("index", str(lib))
    assert r.exit_code == 0 and f"skipped {lib}: permission denied" in r.stdout
    assert cli.json("info")["items"]["image"] == 3


def test_reindex_re_embeds_everything(cli, tiny_clip, lib):
    cli("index", str(lib), "--model", tiny_clip)
    assert cli.json("index", str(lib))["embedded"] == 0
    s = cli.json("index", str(lib), "--reindex")
    assert s["embedded"] == 3 and s["new"] == 3 and cli.json("info")["items"]["image"] == 3


def test_a_second_writer_exits_with_its_own_code(cli, tiny_clip, lib):
    from mmsearch.retrieval.index import Index

    cli("index", str(lib), "--model", tiny_clip)
    holding, done = threading.Event(), threading.Event()

    def hold():
        with Index(cli.index).writer():
            holding.set()
            done.wait(60)

    t = threading.Thread(target=hold)
    t.start()
    assert holding.wait(30)
    try:
        r = cli("index", str(lib), ok=False)
    finally:
        done.set()
        t.join()
    assert r.exit_code == 3 and r.stderr == f"mmsearch: error: another process is indexing into {cli.index}; run again when it has finished\n"
    assert cli("index", str(lib)).exit_code == 0  # the lock goes with its holder


def test_fifos_never_block_a_decoder(tmp_path):
    """A FIFO swapped in for an indexed file: opening it would wait for a writer forever."""
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    code = ("import sys\nfrom mmsearch.media.errors import DecodeError\nfrom mmsearch.media.image import load_image\n"
            "from mmsearch.media.text import text_units\nfrom mmsearch.media.video import frame_at, keyframes\n"
            "for f in (load_image, keyframes, text_units, lambda p: frame_at(p, 1.0)):\n"
            "    try:\n        f(sys.argv[1])\n    except DecodeError as e:\n        print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60)
    assert r.stdout.splitlines() == ["not a regular file"] * 4, r.stderr


def test_a_newline_in_a_name_cannot_forge_output_lines(cli, tiny_clip, photos, tmp_path):
    d = tmp_path / "odd"
    d.mkdir()
    shutil.copy2(photos / "coffee.png", d / "a\n  2   0.999  forged.png")
    shutil.copy2(photos / "rocket.jpg", d / "plain.jpg")
    cli("index", str(d), "--model", tiny_clip)
    lines = cli("search", "a cup of coffee", "-k", "2").stdout.splitlines()
    assert len(lines) == 2 and any("a\\n  2   0.999  forged.png" in line for line in lines), lines
    hits = cli.json("search", "a cup of coffee", "-k", "2")  # JSON keeps the real name
    assert str(d / "a\n  2   0.999  forged.png") in {h["path"] for h in hits}


def test_a_read_only_index_answers_and_refuses_writes(cli, tiny_clip, lib):
    """A read-only mount of an index (as root, chmod would not stop writes: a mount namespace does)."""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare -m (mount namespaces)")
    cli("index", str(lib), "--model", tiny_clip)
    ix = str(cli.index)
    mm = f"{sys.executable} -m mmsearch"
    script = (f"mount --bind {ix} {ix} && mount -o remount,bind,ro {ix} && "
              f"{mm} search --index {ix} --image {lib / 'coffee.png'} -k 1 --json && {mm} info --index {ix} --json "
              f"&& {mm} index --index {ix} {lib}")
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    out = r.stdout.splitlines()
    assert len(out) == 2, (r.stdout, r.stderr)
    assert json.loads(out[0])[0]["path"] == str(lib / "coffee.png") and json.loads(out[1])["items"]["image"] == 3
    assert r.returncode == 2 and r.stderr == f"mmsearch: error: cannot write to index {ix}: Read-only file system\n"


def test_an_index_whose_path_holds_uri_characters_opens_writable_and_read_only(tiny_clip, lib, tmp_path):
    """Queries open the database as a ``file:`` URI: a '#', '?' or '%' in the index's path is
    quoted (unquoted, a read-only index at .../ro#1 opened .../ro, creating it)."""
    from conftest import Cli

    cli = Cli(tmp_path / "ro#1 %41?x")
    cli("index", str(lib), "--model", tiny_clip)
    found = ["search", "--image", str(lib / "coffee.png"), "-k", "1", "--json"]
    assert json.loads(cli(*found).stdout)[0]["path"] == str(lib / "coffee.png")
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0:  # (else: writable only)
        ix = shlex.quote(str(cli.index))
        script = (f"mount --bind {ix} {ix} && mount -o remount,bind,ro {ix} && "
                  f"{sys.executable} -m mmsearch {shlex.join(found)} --index {ix}")
        r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and json.loads(r.stdout)[0]["path"] == str(lib / "coffee.png"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib", "ro#1 %41?x"]


def test_an_empty_token_is_refused_not_served_open(cli):
    r = cli("serve", "--token", " ", ok=False)
    assert r.exit_code == 2 and r.stderr.startswith("mmsearch: error: --token (or MMSEARCH_TOKEN) is empty")


def test_long_texts_are_cut_before_the_tokenizer(tiny_clip, tmp_path):
    """A 6 MB query took 9 s and 1.8 GB in the tokenizer before it was truncated to the tower's
    tokens: both the PyTorch and the ONNX path cut texts to MAX_TEXT_CHARS first."""
    from mmsearch.retrieval.encoders import MAX_TEXT_CHARS, load_encoder
    from mmsearch.retrieval.encoders.query import QueryEncoder
    from mmsearch.retrieval.encoders.runtime import export_for_queries

    enc = load_encoder(tiny_clip)
    seen: list[int] = []
    real = enc._forward_texts
    enc._forward_texts = lambda texts: (seen.extend(map(len, texts)), real(texts))[1]
    try:
        enc.encode_texts(["x" * 6_000_000, "short"])
    finally:
        del enc._forward_texts
    assert seen == [MAX_TEXT_CHARS, 5]
    assert export_for_queries(enc, tmp_path)
    query = QueryEncoder.load(enc.identity, tmp_path)
    tok = query._sessions["tokenizer"]
    lengths: list[int] = []

    class Spy:
        def encode_batch(self, texts):
            lengths.extend(map(len, texts))
            return tok.encode_batch(texts)

    query._sessions["tokenizer"] = Spy()
    huge = query.encode_texts(["x" * 6_000_000])
    assert lengths == [MAX_TEXT_CHARS] and np.allclose(huge, query.encode_texts(["x" * MAX_TEXT_CHARS]))


def test_concurrent_first_loads_of_a_model_all_succeed(tmp_path):
    """Four parallel first requests of a fresh server: three failed inside transformers' lazy
    imports ("cannot import name 'AutoModel'") before model loading took a lock."""
    code = ("from concurrent.futures import ThreadPoolExecutor\n"
            "from mmsearch.retrieval.encoders import load_encoder\n"
            "with ThreadPoolExecutor(4) as pool:\n"
            "    models = list(pool.map(lambda _: load_encoder('lite'), range(4)))\n"
            "assert all(m is models[0] for m in models)\nprint('ok', models[0].dim)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.split() == ["ok", "768"], r.stderr[-2000:]
