"""Queries without PyTorch (issue 17): the model's text and image towers exported to ONNX in the
user cache, checked against PyTorch, shared by every index of the model, rebuilt when damaged."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmsearch.media.image import load_image
from mmsearch.retrieval.encoders import load_encoder
from mmsearch.retrieval.encoders.query import META, QueryEncoder, model_dir
from mmsearch.retrieval.encoders.runtime import export_for_queries


def _captions(tuxpaint, n=40) -> list[str]:
    texts = [t.read_text(errors="replace").split("\n")[0].strip() for t in sorted(tuxpaint.rglob("*.txt"))[:n]]
    return [t for t in texts if t] + ["A LONG caption, with punctuation; and 42 numbers! " * 40, "x", "naïve café"]


@pytest.mark.parametrize("spec", ["tiny", "lite"])
def test_the_export_agrees_with_pytorch(spec, tiny_clip, photos, tuxpaint, tmp_path):
    enc = load_encoder(tiny_clip if spec == "tiny" else "lite")
    assert export_for_queries(enc, tmp_path)
    query = QueryEncoder.load(enc.identity, tmp_path, images=True)
    assert query is not None and query.dim == enc.dim and query.image is not None
    texts = _captions(tuxpaint)
    assert len(texts) >= 30
    ours, ref = query.encode_texts(texts), enc.encode_texts(texts)
    assert ours.shape == ref.shape and (ours * ref).sum(1).min() >= 0.999
    if spec == "tiny":  # CLIP's tokenizer, rebuilt for the tokenizers library: the same ids
        from tokenizers import Tokenizer

        rebuilt = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
        assert np.array_equal([e.ids for e in rebuilt.encode_batch(texts)], enc.tokenizer(texts).numpy())
    images = [load_image(p) for p in sorted(photos.iterdir())]
    assert (query.encode_images(images) * enc.encode_images(images)).sum(1).min() >= 0.999


def test_a_text_query_imports_no_torch_and_answers_the_same(cli, tiny_clip, image_set):
    from conftest import ROOT

    from mmsearch.retrieval.index import Index
    from mmsearch.retrieval.search import search

    assert cli.json("index", str(image_set), "--model", tiny_clip)["query_export"] is True
    code = ("import json, sys\nfrom mmsearch.cli.main import main\n"
            "sys.argv = ['mmsearch', 'search', 'a cup of coffee', '--index', sys.argv[1], '-k', '5', '--json']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "assert not {'torch', 'open_clip', 'transformers'} & set(sys.modules), 'a model library was imported'\n")
    r = subprocess.run([sys.executable, "-c", code, str(cli.index)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    idx = Index(cli.index)
    on_torch = search(idx, idx.encoder().encode_texts(["a cup of coffee"])[0], 5)
    hits = json.loads(r.stdout)
    assert [h["path"] for h in hits] == [h.path for h in on_torch]
    assert np.allclose([h["score"] for h in hits], [h.score for h in on_torch], atol=1e-3)


def test_exports_are_shared_by_indexes_and_rebuilt_when_damaged(cli, tiny_clip, photos, tmp_path):
    from conftest import Cli

    enc = load_encoder(tiny_clip)
    folder = model_dir(enc.identity)
    cli("index", str(photos), "--model", tiny_clip)
    text = folder / "text.onnx"
    stamp = text.stat().st_mtime_ns
    other = Cli(tmp_path / "other-index")
    assert other.json("index", str(photos), "--model", tiny_clip)["query_export"] is True
    assert text.stat().st_mtime_ns == stamp  # the second index reuses the first one's export
    want = [h["path"] for h in other.json("search", "a rocket", "-k", "3")]

    text.write_bytes(text.read_bytes()[:1000])  # damaged: the next query answers on PyTorch and rebuilds it
    assert QueryEncoder.load(enc.identity) is None and not (folder / META).exists()
    assert [h["path"] for h in other.json("search", "a rocket", "-k", "3")] == want
    assert QueryEncoder.load(enc.identity) is not None and text.stat().st_size > 1000

    seal = json.loads((folder / META).read_text())  # stale: another model's seal is never used
    (folder / META).write_text(json.dumps({**seal, "identity": "open_clip:other"}))
    assert QueryEncoder.load(enc.identity) is None
    assert [h["path"] for h in other.json("search", "--image", str(photos / "rocket.jpg"), "-k", "3")][0] == str(photos / "rocket.jpg")
    assert json.loads((folder / META).read_text())["identity"] == enc.identity


def test_an_export_that_disagrees_is_sealed_as_rejected(tiny_clip, tmp_path, monkeypatch):
    enc = load_encoder(tiny_clip)
    monkeypatch.setattr("mmsearch.retrieval.encoders.runtime.QUERY_MIN_COSINE", 1.5)  # nothing can agree
    assert not export_for_queries(enc, tmp_path)
    assert "rejected" in json.loads((tmp_path / META).read_text())
    assert QueryEncoder.load(enc.identity, tmp_path) is None
    stamp = (tmp_path / "text.onnx").stat().st_mtime_ns
    assert not export_for_queries(enc, tmp_path) and (tmp_path / "text.onnx").stat().st_mtime_ns == stamp  # not again


def test_resize_center_crop_gives_torchvisions_pixels(photos):
    from torchvision import transforms as T

    from mmsearch.media.image import ResizeCenterCrop

    ours = ResizeCenterCrop(224, 224)
    theirs = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)])
    for p in sorted(photos.iterdir()):
        img = Image.open(p).convert("RGB")
        assert np.array_equal(np.asarray(ours(img)), np.asarray(theirs(img))), p.name


def test_a_model_without_a_text_export_is_decided_once(tiny_clip, tmp_path, monkeypatch):
    """A tokenizer with no `tokenizers` equivalent: sealed as rejected, so that every later query
    does not build and check it again (~1 s each)."""
    enc = load_encoder(tiny_clip)
    calls = []
    monkeypatch.setattr(type(enc), "text_export", lambda self: calls.append(1))
    assert not export_for_queries(enc, tmp_path) and not export_for_queries(enc, tmp_path)
    assert calls == [1] and "no text export" in json.loads((tmp_path / META).read_text())["rejected"]
