"""End to end on real images with a small open_clip model loaded through the real loading code."""
from __future__ import annotations

import numpy as np


def test_image_to_image_finds_itself_first(cli, tiny_clip, image_set):
    # on PyTorch: the model's runtime choice is cached per model for the session, and an earlier
    # test's may be int8, whose vectors agree to ~0.9996 (tested in test_runtime), not 1e-4
    summary = cli.json("index", str(image_set), "--model", tiny_clip, "--runtime", "torch")
    images = sorted(p for p in image_set.rglob("*") if p.is_file())
    assert summary["new"] == len(images) and summary["embedded"] == len(images) and not summary["skipped"]
    for p in images:
        hits = cli.json("search", "--image", str(p), "-k", "3")
        assert hits[0]["path"] == str(p)
        assert abs(hits[0]["score"] - 1.0) < 1e-4
        assert hits[0]["kind"] == "image"
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_text_search_contract_and_info(cli, tiny_clip, image_set):
    cli("index", str(image_set), "--model", tiny_clip)
    hits = cli.json("search", "a cup of coffee", "-k", "5")
    assert len(hits) == 5
    for h in hits:
        assert {"path", "score", "kind"} <= set(h) and h["kind"] == "image"
    assert hits[2]["score"] > hits[3]["score"]
    threshold = (hits[2]["score"] + hits[3]["score"]) / 2  # the first three pass, the weaker ones not
    assert cli.json("search", "a cup of coffee", "-k", "5", "--min-score", str(threshold)) == hits[:3]
    bad = cli("search", "a cup of coffee", "--min-score", "2", ok=False)  # a cosine is at most 1
    assert bad.exit_code == 2 and bad.output.strip() == "mmsearch: error: --min-score: Input should be less than or equal to 1"
    info = cli.json("info")
    n = sum(1 for p in image_set.rglob("*") if p.is_file())
    assert info["items"]["image"] == n and info["vectors"] == n
    assert info["model"] == tiny_clip and info["dim"] == 64
    assert info["index_type"] == "IndexFlatIP" and info["size_bytes"] > 0
    human = cli("search", "a cup of coffee", "-k", "2").stdout.splitlines()
    assert len(human) == 2 and human[0].lstrip().startswith("1")


def test_encoder_vectors_are_unit_and_match_dim(tiny_clip, photos):
    from PIL import Image

    from mmsearch.retrieval.encoders import load_encoder

    enc = load_encoder(tiny_clip)
    img = enc.encode_images([Image.open(photos / "coffee.png")])
    txt = enc.encode_texts(["a cup", "x" * 5000])  # over-long text is truncated, not an error
    for v in (img, txt):
        assert v.dtype == np.float32 and v.shape[1] == enc.dim
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
