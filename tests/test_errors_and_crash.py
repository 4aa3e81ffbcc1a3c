"""User mistakes give one-line errors (never a traceback); a killed indexer loses nothing committed."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, run_mmsearch
from PIL import Image


def _one_line_error(r) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmsearch: error:"), r.stderr
    return lines[0]


def test_usage_mistakes_are_one_line_too(tmp_path):
    msg = _one_line_error(run_mmsearch("search", "- a cat", "--index", str(tmp_path)))
    assert "no such option" in msg.lower()
    msg = _one_line_error(run_mmsearch("search", "x", "-k", "zero", "--index", str(tmp_path)))
    assert "-k" in msg
    _one_line_error(run_mmsearch("frobnicate"))
    r = run_mmsearch("--help")
    assert r.returncode == 0 and "index" in r.stdout and "search" in r.stdout


def test_missing_index_is_a_clean_error(tmp_path):
    msg = _one_line_error(run_mmsearch("search", "a cat", "--index", str(tmp_path / "nope")))
    assert "no index" in msg
    msg = _one_line_error(run_mmsearch("info", env={"MMSEARCH_INDEX": str(tmp_path / "nope2")}))
    assert str(tmp_path / "nope2") in msg


def test_a_damaged_database_is_a_clean_error(tmp_path):
    (tmp_path / "mmsearch.db").write_bytes(b"not a database, " * 512)
    for command in (("search", "a cat"), ("info",), ("index", str(tmp_path))):
        msg = _one_line_error(run_mmsearch(*command, "--index", str(tmp_path)))
        assert "cannot read its database" in msg and "not a database" in msg


def test_damaged_pages_are_a_clean_error_too(tmp_path):
    """A database whose header is whole but whose pages are not fails at its first read."""
    from mmsearch.retrieval.store import open_engine

    open_engine(str(tmp_path)).dispose()
    with sqlite3.connect(tmp_path / "mmsearch.db") as c:
        c.executemany("INSERT INTO meta VALUES (?, ?)", [(f"k{i}", "v" * 500) for i in range(40)])
    c.close()
    data = bytearray((tmp_path / "mmsearch.db").read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = b"\xff" * (len(data) - page)  # every page but the first (the header and the schema)
    (tmp_path / "mmsearch.db").write_bytes(bytes(data))
    for command in (("search", "a cat"), ("info",)):
        msg = _one_line_error(run_mmsearch(*command, "--index", str(tmp_path)))
        assert msg.startswith("mmsearch: error: the index database: ") and "malformed" in msg, msg


@pytest.mark.parametrize(
    "spec, words",
    [
        ("nonsense", "unknown model"),
        ("open_clip:ViT-B-32:/no/such/file.pt", "does not exist"),
        ("open_clip:NoSuchArch:whatever", "unknown open_clip architecture"),
        ("open_clip:ViT-B-32:no_such_tag", "no pretrained tag"),
    ],
)
def test_bad_model_specs(cli, photos, spec, words):
    r = cli("index", str(photos / "coffee.png"), "--model", spec, ok=False)
    assert r.exit_code == 2 and words in r.stderr and "Traceback" not in r.stderr


def test_checkpoint_of_another_architecture(cli, tiny_clip, photos):
    ckpt = tiny_clip.rsplit(":", 1)[1]
    r = cli("index", str(photos / "coffee.png"), "--model", f"open_clip:ViT-S-32:{ckpt}", ok=False)
    assert r.exit_code == 2 and "does not fit architecture" in r.stderr


def test_model_switch_needs_reindex(cli, tiny_clip, photos, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy2(photos / "coffee.png", lib / "coffee.png")
    cli("index", str(lib), "--model", tiny_clip)
    other = tmp_path / "other.pt"
    import torch

    sd = torch.load(tiny_clip.rsplit(":", 1)[1], weights_only=True)
    torch.save({"state_dict": {k: v + 0.01 for k, v in sd["state_dict"].items()}}, other)
    spec2 = tiny_clip.rsplit(":", 1)[0] + f":{other}"
    r = cli("index", str(lib), "--model", spec2, ok=False)
    assert r.exit_code == 2 and "--reindex" in r.stderr
    s = cli.json("index", str(lib), "--model", spec2, "--reindex")
    assert s["embedded"] == 1
    assert cli.json("info")["model"] == spec2


def test_search_argument_mistakes(cli, tiny_clip, photos):
    cli("index", str(photos / "coffee.png"), "--model", tiny_clip)
    mistakes = {
        ("search",): "give a text query or an image",
        ("search", "--not", "x"): "give a text query or an image",
        ("search", "  "): "the text query is empty",
        ("search", "--image", "/no/such.jpg"): "query image /no/such.jpg does not exist",
        ("search", "x", "--fusion", "sideways", "--image", str(photos / "coffee.png")): "--fusion: Input should be 'early' or 'late'",
        ("search", "x", "--type", "sound"): "--type: Input should be 'image', 'video' or 'text'",
        ("search", "x", "--after", "yesterday"): "--after: wants a date like 2024-06-30, not 'yesterday'",
        ("search", "x", "--weight", "1", "--weight", "2"): "2 weights for 1 positive parts",
        ("search", "x", "--k", "0"): "--k: Input should be greater than or equal to 1",
        ("search", "x", "--weight", "nan"): "--weight: Input should be a finite number",
        ("search", "x", "--before", "0001-01-01", "--json"): None,  # a date long before the epoch is fine
    }
    for args, message in mistakes.items():
        r = cli(*args, ok=message is None)
        if message is not None:
            assert r.exit_code == 2 and r.stderr == f"mmsearch: error: {message}\n", (args, r.stderr)
        else:
            assert r.exit_code == 0 and json.loads(r.stdout) == [], (args, r.stdout)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_indexer_leaves_a_working_index_and_resumes(tiny_clip, photos, tmp_path, sig):
    """Killed outright, or stopped by SIGTERM (as Ctrl-C stops it: a message, exit code 130)."""
    lib, index = tmp_path / "lib", tmp_path / "index"
    lib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(120):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(lib / f"noise{i:03}.png")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmsearch", "index", str(lib), "--index", str(index), "--model", tiny_clip,
         "--batch-size", "1", "--workers", "1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp_path / "stderr").open("w"),  # (a file: a pipe could fill)
    )
    db = index / "mmsearch.db"
    deadline = time.time() + 120
    count = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db) as c:
                    count = c.execute("select count(*) from items").fetchone()[0]
            except sqlite3.Error:
                pass
        if count >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "indexer finished before it could be killed"
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    if sig == signal.SIGTERM:
        stderr = (tmp_path / "stderr").read_text()
        assert proc.returncode == 130 and "mmsearch: interrupted (everything committed so far is kept)" in stderr, stderr

    info = json.loads(run_mmsearch("info", "--json", "--index", str(index)).stdout)
    assert 5 <= info["items"]["image"] < 120 and info["vectors"] == info["items"]["image"]
    hits = json.loads(run_mmsearch("search", "noise", "--json", "--index", str(index)).stdout)
    assert hits and all(h["kind"] == "image" for h in hits)

    s = json.loads(run_mmsearch("index", str(lib), "--json", "--index", str(index)).stdout)
    assert s["unchanged"] == info["items"]["image"] and s["embedded"] == 120 - s["unchanged"]
    with sqlite3.connect(index / "mmsearch.db") as c:
        paths = [r[0] for r in c.execute("select path from files join items on items.file_id = files.id")]
    assert sorted(paths) == sorted(str(p) for p in lib.iterdir())  # every file exactly once
