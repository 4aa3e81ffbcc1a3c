"""Indexing without PyTorch (issue 17): once a model's runtime choice and query export are in the
user cache, an indexing run embeds from those files and never loads the model."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mmsearch.api import SearchIndex
from mmsearch.retrieval.encoders import exported, identity, load_encoder, load_indexer
from mmsearch.retrieval.encoders.exported import AUTO_MIN_IMAGES, CHOICE, VISUAL, ExportedEncoder, onnx_encoder, threads
from mmsearch.retrieval.encoders.query import META, model_dir
from mmsearch.retrieval.encoders.runtime import choose, export_for_queries

#: index a folder in a fresh process and say what it loaded and embedded with
INDEX = """import json, sys
from mmsearch.api import SearchIndex
summary = SearchIndex(sys.argv[1], create=True).add([sys.argv[2]], model=sys.argv[3])
print(json.dumps({"runtime": summary.runtime, "embedded": summary.embedded, "query_export": summary.query_export,
                  "skipped": summary.skipped, "torch": "torch" in sys.modules, "open_clip": "open_clip" in sys.modules}))
"""


@pytest.fixture(scope="module")
def cache(tiny_clip, tmp_path_factory):
    """A user cache holding the tiny model's runtime choice and query export, as a first run
    of 200 images or more leaves it."""
    path = tmp_path_factory.mktemp("exports")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMSEARCH_CACHE", str(path))
        mp.setattr(exported, "bf16_hardware", lambda: False)  # an ONNX choice, whatever the CPU
        enc = load_encoder(tiny_clip)
        choice, _ = choose(enc, model_dir(enc.identity))
        assert choice["runtime"] in VISUAL and export_for_queries(enc)
        yield path


@pytest.fixture
def folder(image_set, tuxpaint, tmp_path):
    """Images and a text file (its passages go through the text tower)."""
    d = tmp_path / "media"
    shutil.copytree(image_set, d)
    (d / "notes.txt").write_text("A red bicycle leans against a wall.\n\nMinutes of the meeting about the garden.\n")
    return d


def _vectors(index_dir) -> dict[tuple[str, str], np.ndarray]:
    from mmsearch.retrieval.index import Index
    from mmsearch.retrieval.store import File, Item, segments

    with Index(index_dir).session() as s:
        rows = s.query(Item.id, File.path, Item.text).join(File).all()
        vecs = segments(s).get([r[0] for r in rows])
    return {(path, text or ""): v for (_, path, text), v in zip(rows, vecs)}


def test_a_second_index_embeds_from_the_exports_without_torch(cache, tiny_clip, folder, tmp_path, monkeypatch):
    monkeypatch.setenv("MMSEARCH_CACHE", str(cache))
    run = subprocess.run([sys.executable, "-c", INDEX, str(tmp_path / "exported"), str(folder), tiny_clip],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    chosen = json.loads((model_dir(identity.of(tiny_clip)[1]) / CHOICE).read_text())
    assert out["runtime"] == chosen["runtime"] and out["query_export"] and not out["skipped"]
    assert not out["torch"] and not out["open_clip"], "indexing from the exports loaded the model"
    # the same vectors as a run that loads the model and embeds on PyTorch
    loaded = SearchIndex(tmp_path / "loaded", create=True).add([str(folder)], model=tiny_clip, runtime="torch")
    assert loaded.runtime == "torch" and loaded.embedded == out["embedded"]
    ours, theirs = _vectors(tmp_path / "exported"), _vectors(tmp_path / "loaded")
    assert ours.keys() == theirs.keys() and any(text for _, text in ours)
    cos = {k: float(ours[k] @ theirs[k]) for k in ours}
    texts = [c for (_, text), c in cos.items() if text]
    assert min(texts) > 0.9999  # text passages: the fp32 text tower, the same arithmetic
    # images: the chosen ONNX tower against PyTorch (int8 within the choice's own bound)
    assert min(cos.values()) >= chosen["measured"][chosen["runtime"]]["min_cosine"] - 0.01


def test_the_exports_stand_in_only_when_complete_for_this_machine(cache, tiny_clip, monkeypatch):
    monkeypatch.setenv("MMSEARCH_CACHE", str(cache))
    found = ExportedEncoder.find(tiny_clip)
    assert found is not None and found.identity == load_encoder(tiny_clip).identity
    assert ExportedEncoder.find(tiny_clip, "torch") is None  # asked for PyTorch
    other = "onnx" if found.runtime == "onnx-int8" else "onnx-int8"
    assert ExportedEncoder.find(tiny_clip, other) is None  # another runtime than the one chosen
    assert type(load_indexer(tiny_clip, "torch")).__name__ == "OpenClipEncoder"
    folder = found.visual.parent
    choice = json.loads((folder / CHOICE).read_text())
    try:
        (folder / CHOICE).write_text(json.dumps({**choice, "threads": threads() + 1}))
        fallback = ExportedEncoder.find(tiny_clip)  # chosen for another number of cores: none for this one
        assert fallback is not None and (fallback.runtime, fallback.visual.name) == ("onnx", "visual.query.onnx")
        assert ExportedEncoder.find(tiny_clip, images=AUTO_MIN_IMAGES) is None  # a job big enough to choose for
        (folder / CHOICE).write_text(json.dumps({**choice, "runtime": "torch"}))
        assert ExportedEncoder.find(tiny_clip) is None  # PyTorch was chosen (no export agreed with it)
        (folder / CHOICE).write_text(json.dumps(choice))
        found.visual.rename(folder / "aside.onnx")
        assert ExportedEncoder.find(tiny_clip) is None  # its image tower is gone
        (folder / "aside.onnx").rename(found.visual)
        seal = (folder / META).read_text()
        (folder / META).unlink()
        assert ExportedEncoder.find(tiny_clip) is None  # an unsealed export is never used
        (folder / META).write_text(seal)
        assert ExportedEncoder.find(tiny_clip) is not None
    finally:
        (folder / CHOICE).write_text(json.dumps(choice))


def test_damaged_exports_cost_speed_never_the_run(cache, tiny_clip, folder, tmp_path, monkeypatch):
    """A truncated image or text tower in the cache: the run falls back to the model, stores the
    same vectors, and leaves the query export made anew."""
    damaged = tmp_path / "cache"
    shutil.copytree(cache, damaged)
    monkeypatch.setenv("MMSEARCH_CACHE", str(damaged))
    found = ExportedEncoder.find(tiny_clip)
    assert found is not None
    for f in (found.visual, found.query.folder / found.query.text["file"]):
        f.write_bytes(f.read_bytes()[:1000])
    summary = SearchIndex(tmp_path / "index", create=True).add([str(folder)], model=tiny_clip)
    assert not summary.skipped and summary.embedded == len([p for p in folder.rglob("*") if p.is_file()])
    again = ExportedEncoder.find(tiny_clip)  # made anew: both towers whole, the export sealed again
    assert summary.query_export and again is not None and again.visual == found.visual
    onnx_encoder(again.visual)
    assert again.encode_texts(["a red bicycle"]).shape == (1, again.dim)
    reference = SearchIndex(tmp_path / "reference", create=True).add([str(folder)], model=tiny_clip, runtime="torch")
    assert reference.embedded == summary.embedded
    ours, theirs = _vectors(tmp_path / "index"), _vectors(tmp_path / "reference")
    assert ours.keys() == theirs.keys() and min(float(ours[k] @ theirs[k]) for k in ours) > 0.99
