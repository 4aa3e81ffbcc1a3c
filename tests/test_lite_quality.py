"""The bundled `lite` model with its real packaged weights, on real data."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image

pytestmark = pytest.mark.quality

NAMED_PHOTOS = {
    "a cat": "chelsea.png", "a cup of coffee": "coffee.png", "a rocket": "rocket.jpg",
    "a motorcycle": "motorcycle_left.png", "a horse": "horse.png", "an astronaut": "astronaut.png",
    "a camera": "camera.png", "coins": "coins.png",
}


@pytest.fixture(scope="module")
def lite():
    from mmsearch.retrieval.encoders import load_encoder

    return load_encoder("lite")


@pytest.fixture(scope="module")
def pairs():
    out = subprocess.run([sys.executable, str(ROOT / "data" / "prepare_pairs.py"), "test"], check=True,
                         capture_output=True, text=True).stdout
    return {line.split("/")[-1].split()[0]: line.split()[0] for line in out.splitlines()}


def test_lite_is_offline_and_its_head_ships(lite):
    assert lite.identity.startswith("lite:") and "head-" in lite.identity  # the trained head, not the fallback
    assert lite.dim == 768  # learned block + ConSE block


def test_batchnorm_folding_changes_nothing(lite):
    from mmsearch.retrieval.encoders.lite import load_image_tower

    x = torch.randn(2, 3, 260, 260)
    with torch.inference_mode():
        a, b = load_image_tower(fold=False)(x), lite.image_tower(x)
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_photos_are_found_by_their_plain_name(cli, photos, tmp_path):
    lib = tmp_path / "photos"
    lib.mkdir()
    for name in NAMED_PHOTOS.values():
        (lib / name).symlink_to(photos / name)
    cli("index", str(lib))  # default model: lite
    q = tmp_path / "queries.txt"
    q.write_text("\n".join(NAMED_PHOTOS))
    rows = [json.loads(line) for line in cli("search", "--queries", str(q), "-k", "3").stdout.splitlines()]
    ranked = {r["query"]: [h["path"].split("/")[-1] for h in r["results"]] for r in rows}
    # measured: 7 of 8 first; "an astronaut" ranks the rocket first and the astronaut third
    # (before the emoji training data "coins" was the one missed: ImageNet has no coin class)
    assert sum(ranked[q][0] == name for q, name in NAMED_PHOTOS.items()) >= 7, ranked
    assert all(name in ranked[q] for q, name in NAMED_PHOTOS.items()), ranked


def test_colour_words_rank_solid_colours(lite):
    colours = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220)}
    imgs = lite.encode_images([Image.new("RGB", (256, 256), c) for c in colours.values()])
    txt = lite.encode_texts([f"a {c} square" for c in colours])
    assert (np.argmax(txt @ imgs.T, axis=1) == np.arange(3)).all()


@pytest.mark.parametrize("name, t2i_r10", [("tux_test.csv", 0.6), ("pysio_test.csv", 0.15)])  # measured 0.663, 0.179
def test_held_out_recall(cli, pairs, name, t2i_r10):
    r = json.loads(cli("eval", "--data", pairs[name], "--json").stdout)
    assert r["text_to_image"]["R@10"] >= t2i_r10, r
    assert r["image_to_text"]["R@10"] >= t2i_r10 * 0.8, r
