"""Queries without PyTorch (issue 17): the model's text and image towers exported to ONNX in the
user cache, checked against PyTorch, shared by every index of the model, rebuilt when damaged."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from mmsearch.media.image import load_image
from mmsearch.retrieval.encoders import load_encoder
from mmsearch.retrieval.encoders.query import (
    EXPORT_FORMAT,
    META,
    QueryEncoder,
    clean_open_clip,
    model_dir,
    preload,
    preloaded,
    unit,
)
from mmsearch.retrieval.encoders.runtime import export_for_queries


def _captions(tuxpaint, n=40) -> list[str]:
    texts = [t.read_text(errors="replace").split("\n")[0].strip() for t in sorted(tuxpaint.rglob("*.txt"))[:n]]
    return [t for t in texts if t] + ["A LONG caption, with punctuation; and 42 numbers! " * 40, "x", "naïve café",
                                      "Tom &amp; Jerry don’t say “hi”", "ＦＵＬＬ width", "cafÃ© menu\x07"]


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

        rebuilt = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))  # after open_clip's own cleaning
        assert np.array_equal([e.ids for e in rebuilt.encode_batch([clean_open_clip(t) for t in texts])], enc.tokenizer(texts).numpy())
    images = [load_image(p) for p in sorted(photos.iterdir())]
    assert (query.encode_images(images) * enc.encode_images(images)).sum(1).min() >= 0.999


def test_a_text_query_imports_neither_torch_nor_sqlalchemy_and_answers_the_same(cli, tiny_clip, image_set):
    from conftest import ROOT

    from mmsearch.retrieval.index import Index
    from mmsearch.retrieval.search import search

    assert cli.json("index", str(image_set), "--model", tiny_clip)["query_export"] is True
    code = ("import json, sys\nfrom mmsearch.cli.main import main\n"
            # (a filter that every item passes: filters are read without SQLAlchemy too)
            "sys.argv = ['mmsearch', 'search', 'a cup of coffee', '--index', sys.argv[1], '-k', '5', '--type', 'image', '--json']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "assert not {'torch', 'open_clip', 'transformers'} & set(sys.modules), 'a model library was imported'\n"
            "assert 'sqlalchemy' not in sys.modules, 'SQLAlchemy was imported'\n")
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


def test_towers_are_saved_optimised_with_their_weights_apart(tiny_clip, photos, tmp_path):
    """The format sessions open fastest (issue 17): an optimised graph whose weights ONNX Runtime
    maps from `<file>.data`; one-shot (no prepacking) and prepacked sessions answer alike, and a
    folder of an older format is not read."""
    enc = load_encoder(tiny_clip)
    assert export_for_queries(enc, tmp_path)
    meta = json.loads((tmp_path / META).read_text())
    assert meta["format"] == EXPORT_FORMAT and meta["image"]["file"] == "visual.query.onnx"
    for name in (meta["text"]["file"], meta["image"]["file"]):
        graph = onnx.load(str(tmp_path / name), load_external_data=False).graph
        large = [t for t in graph.initializer if t.external_data or len(t.raw_data) >= 1024]
        assert large and all(t.external_data[0].value == f"{name}.data" for t in large)
        assert not [n for n in graph.node if n.op_type == "Constant"]  # folded: optimised already
    assert not [p.name for p in tmp_path.iterdir() if "tmp" in p.name or "traced" in p.name]  # nothing left aside
    texts, images = ["a rocket", "a cup of coffee"], [load_image(p) for p in sorted(photos.iterdir())[:3]]
    packed = QueryEncoder.load(enc.identity, tmp_path, images=True)
    one_shot = QueryEncoder.load(enc.identity, tmp_path, images=True, prepack=False)
    assert packed is not None and one_shot is not None and not one_shot.prepack
    assert np.allclose(packed.encode_texts(texts), one_shot.encode_texts(texts), atol=1e-5)
    assert np.allclose(packed.encode_images(images), one_shot.encode_images(images), atol=1e-5)
    (tmp_path / META).write_text(json.dumps({**meta, "format": "uint8-nhwc;int8-7bit;query-v1"}))
    assert QueryEncoder.read(enc.identity, tmp_path) is None


@pytest.mark.parametrize("damaged", ["text.onnx.data", "visual.query.onnx.data"])
def test_damaged_weights_are_rebuilt(damaged, tiny_clip, photos, tmp_path):
    """A truncated weights file fails to open (ONNX Runtime checks each tensor against the file's
    length, so a mapped file never ends under a session): the folder is unsealed and the next
    export writes it anew."""
    enc = load_encoder(tiny_clip)
    assert export_for_queries(enc, tmp_path)
    want = QueryEncoder.load(enc.identity, tmp_path, images=True).encode_texts(["a rocket"])
    f = tmp_path / damaged
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert QueryEncoder.load(enc.identity, tmp_path, images=True) is None and not (tmp_path / META).exists()
    assert export_for_queries(enc, tmp_path)
    query = QueryEncoder.load(enc.identity, tmp_path, images=True)
    assert query is not None and np.allclose(query.encode_texts(["a rocket"]), want, atol=1e-5)
    image = load_image(photos / "rocket.jpg")
    assert (query.encode_images([image]) * enc.encode_images([image])).sum() >= 0.999


def test_preload_embeds_the_query_ahead(cli, tiny_clip, photos, monkeypatch):
    """`search` has the query text embedded while it imports the rest: the search then finds
    the vector made, the same as one made when asked for."""
    assert cli.json("index", str(photos), "--model", tiny_clip)["query_export"] is True
    identity = load_encoder(tiny_clip).identity
    preload(str(cli.index), ahead=["a rocket"])
    query = preloaded(identity)
    assert query is not None and not query.prepack and set(query._ahead) == {"a rocket"}
    monkeypatch.setattr(query, "_tower", lambda name: pytest.fail("the text was embedded again"))
    ahead = query.encode_texts(["a rocket"])
    monkeypatch.undo()
    assert np.allclose(ahead, QueryEncoder.load(identity).encode_texts(["a rocket"]), atol=1e-5)
    assert query.encode_texts(["a rocket", "a cat"]).shape == (2, query.dim)  # not all ahead: embedded


def test_a_side_export_cancelled_or_orphaned_dies_and_leaves_the_folder_unsealed(tiny_clip, tmp_path, monkeypatch):
    """The query export a first index run makes in a forked child (side_export.py): cancelled (the
    run failed or was interrupted) it is killed at once, and the folder stays unsealed, so the
    next run makes it whole, sweeping what the killed child left; when the parent dies the child
    dies too (it would hold the index's writer lock)."""
    import time

    from mmsearch.indexer.side_export import SideExport

    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path))
    enc = load_encoder(tiny_clip)
    folder = model_dir(enc.identity)
    side = SideExport(enc)  # (`start` forks only where no other Python thread runs; pytest has some)
    side.cancel()
    assert side.process.exitcode is not None and QueryEncoder.read(enc.identity, folder) is None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f".text.onnx.{2**22 + 7}.tmp").mkdir()  # what a killed export's optimise leaves (no such pid)
    side = SideExport(enc)
    assert side.result() and QueryEncoder.read(enc.identity, folder) is not None
    assert not list(folder.glob("*.tmp*"))  # swept

    orphan = subprocess.run([sys.executable, "-c", (
        "import os, sys; from mmsearch.retrieval.encoders import load_encoder; "
        "from mmsearch.indexer.side_export import SideExport; "
        f"side = SideExport.start(load_encoder({tiny_clip!r})); print(side.process.pid, flush=True); os._exit(3)")],
        env={**os.environ, "MMSEARCH_CACHE": str(tmp_path / "orphan")}, capture_output=True, text=True, timeout=120)
    pid = int(orphan.stdout)
    for _ in range(50):  # (SIGKILL from the kernel; then reaped by init)
        try:
            if "zombie" in open(f"/proc/{pid}/status").read():
                break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the export child outlived its parent")

def test_towers_are_traced_without_their_weights_and_optimised_from_memory(tiny_clip, tmp_path):
    """The traced graph carries no weights (ONNX Runtime takes them from the module's memory: no
    serialising and parsing them back, no 2 GiB protobuf limit for big towers); what it optimises
    into computes what PyTorch does, with ONNX Runtime's fused operators (the query towers) or
    with standard operators only (the fp32 runtime's visual.onnx)."""
    import onnx
    import onnxruntime as ort

    from mmsearch.retrieval.encoders import runtime

    enc = load_encoder(tiny_clip)
    module, example, axes = runtime._image_graph(enc)
    traced = runtime._traced(module, example, axes)
    graph = onnx.load_from_string(traced.graph).graph
    assert [v.name for v in graph.input] == [runtime.INPUT] and len(graph.initializer) == len(traced.weights) > 10
    assert all(t.data_location == onnx.TensorProto.EXTERNAL and not t.raw_data for t in graph.initializer)
    runtime.optimise(traced, tmp_path / "fused.onnx")
    runtime.optimise(traced, tmp_path / "plain.onnx", fusions=False)
    pixels = runtime.calibration_pixels(enc, 3)
    reference = enc.pixel_prep.torch_encoder(enc)(pixels)
    for name in ("fused.onnx", "plain.onnx"):
        out = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"]).run(None, {runtime.INPUT: pixels})[0]
        assert np.allclose(unit(out), reference, atol=1e-4), name
    fused, plain = (onnx.load(str(tmp_path / name), load_external_data=False).graph for name in ("fused.onnx", "plain.onnx"))
    assert {n.domain for n in plain.node} <= {"", "ai.onnx"} and "com.microsoft" in {n.domain for n in fused.node}
    assert not {n.op_type for n in plain.node} & {"Constant", "Identity"}  # (folded)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in plain.initializer if t.dims and np.prod(t.dims) > 256)
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob(".*"))


def test_a_side_export_that_stops_working_is_killed_and_the_run_goes_on(tiny_clip, tmp_path, monkeypatch):
    """A forked child that deadlocks (a lock some thread held at the fork, which the child does
    not have) uses no CPU time: after `STALLED` seconds of that it is killed and `result` says
    no export, rather than `mmsearch index` waiting for good."""
    import time

    from mmsearch.indexer import side_export
    from mmsearch.retrieval.encoders import runtime

    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path))
    monkeypatch.setattr(runtime, "export_for_queries", lambda encoder: time.sleep(3600))  # (as the child has it)
    monkeypatch.setattr(side_export, "STALLED", 2.0)
    side = side_export.SideExport(load_encoder(tiny_clip))
    t = time.perf_counter()
    assert side.result() is False and side.process.exitcode is not None
    assert time.perf_counter() - t < 20


def test_a_child_that_dies_waiting_for_the_image_tower_leaves_the_run_going(tiny_clip, tmp_path, monkeypatch):
    """Killed while it waits for the parent's image tower (the OOM killer, a SIGTERM to the
    process group): telling it the tower is ready returns at once, and `result` says no export.
    (A multiprocessing Event's set() waited for good on such a child.)"""
    import signal
    import threading
    import time

    from mmsearch.indexer import side_export
    from mmsearch.retrieval.encoders import runtime

    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path))
    waiting = tmp_path / "waiting"
    monkeypatch.setattr(runtime, "export_for_queries", lambda encoder, tower: waiting.touch() or tower())  # (as the child has it)
    side = side_export.SideExport(load_encoder(tiny_clip), after_tower=True)
    deadline = time.monotonic() + 60
    while not waiting.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # (in its read of the pipe)
    os.kill(side.process.pid, signal.SIGKILL)
    told = threading.Thread(target=side.tower_ready, daemon=True)
    told.start()
    told.join(10)
    assert waiting.exists() and not told.is_alive()
    assert side.result() is False


def test_a_tower_graph_that_cannot_be_handed_over_leaves_the_child_to_trace_its_own(tiny_clip, tmp_path, monkeypatch):
    """A full temporary folder when the parent hands over the traced graph: no error in the
    parent (whose runtime choice goes on), and the child reads no graph, not a part of one."""
    from mmsearch.indexer import side_export
    from mmsearch.retrieval.encoders import runtime

    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path))
    got = tmp_path / "got"
    monkeypatch.setattr(runtime, "export_for_queries", lambda encoder, tower: got.write_text(repr(tower())) > 0)
    side = side_export.SideExport(load_encoder(tiny_clip), after_tower=True)
    written = os.pwrite

    def full(fd: int, data: bytes, at: int) -> int:  # (a part written, then the disk is full)
        if at:
            raise OSError(28, "No space left on device")
        return written(fd, data[:1000], at)
    monkeypatch.setattr(side_export.os, "pwrite", full)
    side.tower_ready(b"graph " * 50_000)
    assert side.result() is True and got.read_text() == "None"


def test_a_side_export_answers_where_the_program_ignores_sigchld(tiny_clip, tmp_path, monkeypatch):
    """A program that ignores SIGCHLD (children reaped by the kernel) leaves no exit code to
    read: the answer comes through a pipe, and `result` returns (it waited for good)."""
    import signal
    import time

    from mmsearch.indexer.side_export import SideExport

    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path))
    enc = load_encoder(tiny_clip)
    before = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        t = time.perf_counter()
        side = SideExport(enc)
        assert side.result() is True and time.perf_counter() - t < 60
    finally:
        signal.signal(signal.SIGCHLD, before)
    assert QueryEncoder.read(enc.identity, model_dir(enc.identity)) is not None


def test_a_side_export_that_cannot_start_leaves_the_export_to_after_the_embedding(tiny_clip, monkeypatch):
    """No fork in a daemonic process (a multiprocessing pool's worker) nor when fork fails: None,
    and the run exports after embedding instead of failing."""
    import multiprocessing

    from mmsearch.indexer import side_export

    enc = load_encoder(tiny_clip)
    monkeypatch.setattr(side_export.threading, "active_count", lambda: 1)
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    assert side_export.SideExport.start(enc) is None
    monkeypatch.undo()
    monkeypatch.setattr(side_export.threading, "active_count", lambda: 1)

    def no_fork():
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(os, "fork", no_fork)
    assert side_export.SideExport.start(enc) is None


def test_the_query_export_runs_beside_the_image_towers_export_and_is_over_before_timing(tiny_clip, tmp_path, monkeypatch):
    """A first run that measures the runtimes starts its query export (a forked child) as the
    image tower's export begins: the child makes the text tower meanwhile and its image tower
    from the graph the parent traced (not tracing it again), while the tower is quantised; it is
    waited for before anything is timed: nothing else runs on the CPUs while the runtimes are timed."""
    import time

    from mmsearch.indexer.side_export import SideExport
    from mmsearch.retrieval.encoders import exported, runtime

    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path))
    monkeypatch.setattr(exported, "bf16_hardware", lambda: False)  # (bfloat16 would be timed before any export)
    enc = load_encoder(tiny_clip)
    folder = model_dir(enc.identity)
    sides: list[SideExport] = []

    def beside() -> SideExport:
        assert not (folder / exported.VISUAL["onnx"]).exists()  # as the export begins
        sides.append(SideExport(enc, after_tower=True))  # (`start` forks only where no other Python thread runs; pytest has some)
        return sides[-1]

    parent, trace, traces = os.getpid(), runtime._traced, tmp_path / "traces"

    def traced(module, *a):  # (the parent's tracing slowed: the child must wait for it)
        with traces.open("a") as f:
            f.write(f"{'parent' if os.getpid() == parent else 'child'} {type(module).__name__}\n")
        if os.getpid() == parent:
            time.sleep(2)
        return trace(module, *a)
    monkeypatch.setattr(runtime, "_traced", traced)

    timed = []
    measure = runtime._measure
    monkeypatch.setattr(runtime, "_measure", lambda *a, **k: timed.append(sides[0].process.exitcode) or measure(*a, **k))
    choice, _ = runtime.choose(enc, folder, beside=beside)
    assert len(sides) == 1 and timed == [0]  # the child had ended, without error, before the timing
    assert sorted(traces.read_text().splitlines()) == ["child _ClipText", "parent _ImageForward"]
    assert sides[0].result() and QueryEncoder.read(enc.identity, folder) is not None  # (known: asked again)
    assert choice["runtime"] in exported.VISUAL and choice["others"] < exported.MAX_OTHERS
