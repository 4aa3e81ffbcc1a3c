"""train / eval / batch search mechanics, fast, on a tiny open_clip model and real Tux Paint pairs."""
from __future__ import annotations

import csv
import json

import pytest


@pytest.fixture(scope="module")
def pairs_csv(tuxpaint, tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    rows = []
    for png in sorted(tuxpaint.rglob("*.png"))[:60]:
        cap = png.with_suffix(".txt").read_text(errors="replace").strip().splitlines()
        if cap:
            rows.append((str(png.relative_to(tuxpaint)), cap[0]))
    (d / "data").symlink_to(tuxpaint)
    with open(d / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "text"])  # alternative column names are recognised too
        w.writerows(("data/" + p, c) for p, c in rows)
    return d / "pairs.csv"


def test_train_projections_then_use_and_eval(cli, tiny_clip, pairs_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "tuned.pt"
    args = ("--data", str(pairs_csv), "--model", tiny_clip, "--out", str(out), "--epochs", "150", "--lr", "0.01", "--val-share", "0.0", "--seed", "1")
    r = json.loads(cli("train", *args, "--json").stdout)
    assert out.exists() and r["model"].endswith(str(out))
    before, after = r["val_before"]["text_to_image"], r["val_after"]["text_to_image"]
    assert after["R@1"] > before["R@1"] + 0.2, (before, after)  # it fits its training pairs

    r2 = json.loads(cli("train", *args, "--json").stdout)  # deterministic for a seed
    assert r2["val_after"] == r["val_after"]

    ev = json.loads(cli("eval", "--data", str(pairs_csv), "--model", r["model"], "--json").stdout)
    assert ev["text_to_image"]["R@1"] == pytest.approx(after["R@1"], abs=1e-3)
    assert set(ev["image_to_text"]) == {"R@1", "R@5", "R@10", "MRR"}

    lib = pairs_csv.parent / "data"
    first = next(iter(sorted(lib.rglob("*.png"))))
    s = cli.json("index", str(first.parent), "--model", r["model"])
    assert s["embedded"] > 0


def test_batch_search_prints_one_json_line_per_query(cli, tiny_clip, photos, tmp_path):
    cli("index", str(photos), "--model", tiny_clip)
    q = tmp_path / "queries.txt"
    q.write_text("a cat\n\na cup of coffee\n" + "very long query " * 200 + "\n")
    lines = cli("search", "--queries", str(q), "-k", "3").stdout.strip().splitlines()
    assert len(lines) == 3
    rows = [json.loads(line) for line in lines]
    assert rows[0]["query"] == "a cat" and len(rows[0]["results"]) == 3
    assert all({"path", "score", "kind"} <= set(h) for row in rows for h in row["results"])


def test_bad_pair_files(cli, tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    r = cli("eval", "--data", str(tmp_path / "x.csv"), ok=False)
    assert r.exit_code == 2 and "caption column" in r.stderr
    r = cli("eval", "--data", str(tmp_path / "nope.csv"), ok=False)
    assert r.exit_code == 2 and "does not exist" in r.stderr


def test_lite_head_sides_always_match_in_width():
    """Image and text vectors of one head live in one space: same width whatever the head holds."""
    import torch

    from mmsearch.retrieval.encoders.lite import project_image, project_text

    pooled, conse, text = torch.randn(2, 1280), torch.randn(2, 384), torch.randn(2, 384)
    image_map = {"img_w": torch.randn(384, 1280), "img_b": torch.zeros(384)}
    for head in ({}, image_map, {**image_map, "txt_w": torch.eye(384), "txt_b": torch.zeros(384)}):
        assert project_text(head, text).shape == project_image(head, pooled, conse).shape
