"""Indexing on Ray (`index --ray`, indexer/distributed.py), on real images with the real `lite`
model: the same items and vectors as a local run, resumed after a driver crash, and neither lost
nor doubled when an actor dies mid-slice. One in-process cluster (4 logical CPUs) serves the
module; the `--ray local` run starts and stops its own, in a process of its own."""
from __future__ import annotations

import faulthandler
import importlib.util
import json
import math
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_mmsearch, s3_client, stored_items
from sqlalchemy import select

from mmsearch.errors import UserError
from mmsearch.indexer import distributed
from mmsearch.indexer.distributed import RayStage
from mmsearch.indexer.options import IndexOptions
from mmsearch.indexer.run import index_paths
from mmsearch.indexer.scan import Entry
from mmsearch.media.files import file_digest
from mmsearch.retrieval import index as index_module
from mmsearch.retrieval import policy
from mmsearch.retrieval.index import Index
from mmsearch.retrieval.store import File, Item, set_meta, vectors_by_id

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the ray extra")

SLICE = 8  # files per slice: the folder's 28 files make 4 slices
QUERIES = ["a cat", "a cup of coffee", "a rocket", "a horse"]


@pytest.fixture(autouse=True)
def bounded():
    """No wait on Ray may hang the suite: past 240 s a test dumps every thread's stack and ends the run."""
    faulthandler.dump_traceback_later(240, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module", autouse=True)
def auth(tmp_path_factory):
    """Token authentication with a token of these tests' own, set before anything imports Ray (it
    reads the mode then): driver and clusters agree, and ~/.ray/auth_token is never written."""
    token = tmp_path_factory.mktemp("ray") / "token"
    token.write_text(secrets.token_hex(32))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        yield


@pytest.fixture(scope="module")
def cluster():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="error")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(image_set, tmp_path_factory) -> Path:
    """26 real images (photos, Tux Paint stamps), a corrupt image and a text file."""
    d = tmp_path_factory.mktemp("media")
    shutil.copytree(image_set, d, dirs_exist_ok=True)
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (d / "note.txt").write_text("A red bicycle leans against a brick wall.")
    return d


@pytest.fixture(scope="module")
def local(folder, tmp_path_factory) -> Path:
    """The same folder indexed on this machine: the reference."""
    path = tmp_path_factory.mktemp("local") / "index"
    summary = index_paths(Index(path, create=True), [str(folder)], IndexOptions())
    assert summary.embedded == 27 and len(summary.skipped) == 1
    return path


def _files(path: Path) -> dict[str, tuple]:
    with Index(path).session() as s:
        return {p: rest for p, *rest in s.execute(select(File.path, File.status, File.error, File.width, File.height))}


def _same_as_local(path: Path, local: Path) -> None:
    ours, theirs = stored_items(path), stored_items(local)
    assert ours.keys() == theirs.keys()
    assert min(float(ours[k] @ theirs[k]) for k in ours) >= 0.9999
    assert _files(path) == _files(local)


def _fresh(tmp_path: Path) -> Index:
    return Index(tmp_path / "index", create=True)


def test_user_mistakes_are_one_line(cli, folder, monkeypatch):
    r = cli("index", str(folder), "--ray", "127.0.0.1:1", ok=False)  # nothing listens on port 1
    assert r.exit_code == 2 and r.stderr.strip() == "mmsearch: error: cannot reach a Ray cluster at 127.0.0.1:1: Connection refused"
    r = cli("index", str(folder), "--ray", "local", "--watch", ok=False)
    assert r.exit_code == 2 and "--ray cannot be combined with --watch" in r.stderr
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: None)  # as without the extra
    r = cli("index", str(folder), "--ray", "local", ok=False)
    assert r.exit_code == 2 and r.stderr.strip() == "mmsearch: error: --ray needs Ray: pip install 'mmsearch[ray]'"


def test_ray_local_run_matches_a_local_run(folder, local, tmp_path):
    """`--ray local` as a user runs it: a process that starts a cluster, embeds on it, stops it."""
    r = run_mmsearch("index", "--index", str(tmp_path / "index"), "--ray", "local", str(folder), "--json", timeout=200)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["new"], summary["embedded"]) == (28 - 1, 27) and "on Ray, 1 node(s)" in summary["runtime"]
    assert summary["skipped"] == [{"path": str(folder / "corrupt.jpg"), "reason": _files(local)[str(folder / "corrupt.jpg")][1]}]
    _same_as_local(tmp_path / "index", local)
    assert not (tmp_path / "index" / distributed.RUNS).exists()  # the run's shards are gone once stored
    from mmsearch.api import SearchIndex

    for q in QUERIES:
        ours, theirs = SearchIndex(tmp_path / "index").search(q, k=3), SearchIndex(local).search(q, k=3)
        assert [h.path for h in ours] == [h.path for h in theirs]
        assert np.allclose([h.score for h in ours], [h.score for h in theirs], atol=1e-4)


def test_resume_after_a_driver_crash_embeds_only_the_rest(cluster, folder, local, tmp_path, monkeypatch):
    index = _fresh(tmp_path)

    def crash(*args):  # the driver dies committing its first transaction, before it is stored
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(distributed, "commit_batch", crash)
        mp.setattr(distributed, "MERGE_ITEMS", 2 * SLICE)  # a transaction of two shards
        mp.setattr(distributed, "MERGE_SECONDS", math.inf)
        with pytest.raises(KeyboardInterrupt):
            index_paths(index, [str(folder)], IndexOptions(), embed=RayStage(slice_files=SLICE))
    left = list((tmp_path / "index" / distributed.RUNS).glob("*/shard-*.parquet"))
    assert left  # at least the shard that came back

    stage = RayStage(slice_files=SLICE)
    summary = index_paths(index, [str(folder)], IndexOptions(), embed=stage)
    assert 2 * SLICE <= stage.resumed and stage.resumed + stage.embedded == 28  # each file from one place
    assert stage.slices == math.ceil(stage.embedded / SLICE)  # only the missing files went to the cluster
    assert summary.embedded == 27 and len(summary.skipped) == 1
    _same_as_local(tmp_path / "index", local)
    assert not (tmp_path / "index" / distributed.RUNS).exists()


def test_an_actor_killed_mid_slice_loses_and_doubles_nothing(cluster, folder, local, tmp_path):
    flag = tmp_path / "exited"
    stage = RayStage(slice_files=SLICE, exit_once=str(flag))
    summary = index_paths(_fresh(tmp_path), [str(folder)], IndexOptions(), embed=stage)
    assert flag.exists()  # an actor did exit, after embedding part of its slice
    assert summary.embedded == 27 and stage.slices == 4 and stage.embedded == 28
    _same_as_local(tmp_path / "index", local)


def test_a_shard_of_another_model_is_refused(cluster, folder, tmp_path):
    index = _fresh(tmp_path)
    index_paths(index, [str(folder / "coffee.png")], IndexOptions())  # the index's model, on this machine
    with index.session() as s:  # as if the nodes had other weights than the index was built with
        set_meta(s, "model_identity", "lite:other-weights")
        s.commit()
    with pytest.raises(UserError, match=r"a Ray node embedded with model lite:\S+ but the index holds lite:other-weights"):
        index_paths(index, [str(folder)], IndexOptions(), embed=RayStage(slice_files=SLICE))
    assert set(_files(tmp_path / "index")) == {str(folder / "coffee.png")}  # nothing of theirs was stored


def test_a_slice_is_a_shard_and_one_that_keeps_ending_its_actor_is_given_up(cluster, folder, local, tmp_path):
    """The actor's own work, in this process: a slice becomes one parquet shard that names its
    model; a slice that has ended its worker ATTEMPTS times is not started again."""
    with Index(local).session() as s:
        entries = {f.path_key: f for f in s.scalars(select(File))}
    todo = [(Entry(os.fsdecode(k), f.kind, f.size, f.mtime_ns), f.digest or "") for k, f in sorted(entries.items())]
    run = distributed.Run.create(str(tmp_path), "lite", Index(local).meta("model_identity") or "", todo, SLICE)
    actor = distributed._SliceEmbedder(run, IndexOptions())
    path, failed = actor.embed(0)
    shard = pq.read_table(path)
    assert failed is None and shard.schema.metadata[distributed.IDENTITY].decode() == run.identity
    assert shard.column("key").to_pylist() == [e.key for e, _ in todo[:SLICE]]
    Path(run.shard(1) + ".attempts").write_bytes(b"." * distributed.ATTEMPTS)  # three starts, each ended by a crash
    assert actor.embed(1)[1].startswith("slice 1 ended its Ray worker 3 times: a file in it may crash a decoder")


def test_text_and_capture_metadata_are_read_on_the_actors(cluster, photos, tmp_path, monkeypatch):
    """The actors read capture metadata, and with OCR on the text in images, where they decode
    the files (the driver reads nothing after), and what they read is what a local run reads."""
    from PIL import Image, ImageDraw, ImageFont

    sys.path.insert(0, str(Path(__file__).parent))
    import fetch

    font = ImageFont.truetype(str(fetch.fetch("fonts") / "DejaVuSans-Bold.ttf"), 40)
    d = tmp_path / "scans"
    d.mkdir()
    for name, words in (("scan_001.png", "INVOICE 4711 paid"), ("scan_002.png", "Gate B52 closed")):
        img = Image.new("RGB", (640, 360), "white")
        ImageDraw.Draw(img).text((30, 150), words, font=font, fill="black")
        img.save(d / name)
    exif = Image.Exif()
    exif[271], exif[272] = "Canon", "Canon EOS 5D"
    exif.get_ifd(0x8769).update({36867: "2019:07:14 15:22:01", 36881: "+02:00"})
    Image.open(photos / "coffee.png").convert("RGB").save(d / "coffee.jpg", exif=exif)
    with monkeypatch.context() as mp:  # nothing is left for the driver to read
        mp.setattr("mmsearch.indexer.annotate.read_capture", lambda *a: pytest.fail("the driver read capture metadata"))
        stage = RayStage(slice_files=2)
        summary = index_paths(_fresh(tmp_path), [str(d)], IndexOptions(ocr=True), embed=stage)
    assert stage.embedded == 3 and summary.ocr_images == 3 and summary.ocr_seconds == 0  # the driver read none after
    local = Index(tmp_path / "local", create=True)
    assert index_paths(local, [str(d)], IndexOptions(ocr=True)).ocr_images == 3

    def read(path: Path) -> dict[str, tuple]:
        with Index(path).session() as s:
            return {p: rest for p, *rest in s.execute(select(File.path, Item.ocr, File.taken_ns, File.offset_min, File.taken_from,
                                                             File.camera).join(File))}

    ours = read(tmp_path / "index")
    assert ours == read(tmp_path / "local") and "4711" in ours[str(d / "scan_001.png")][0]
    assert list(ours[str(d / "coffee.jpg")][2:]) == [120, "exif", "Canon EOS 5D"]
    from mmsearch.api import SearchIndex

    assert SearchIndex(tmp_path / "index").search("INVOICE 4711", k=1)[0].path == str(d / "scan_001.png")


def _synthetic(path: Path, n: int, kind: str) -> np.ndarray:
    """An index of `n` clustered 64-d vectors stored by `commit_batch` (as shards are), every
    tenth file removed again so that the item ids have gaps, `kind` forced; its vectors."""
    from mmsearch.indexer.plan import Plan
    from mmsearch.indexer.run import Batch, Summary, commit_batch
    from mmsearch.retrieval.store import bump_generation

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 64)).astype(np.float32)[rng.integers(0, 64, n)] + 0.5 * rng.standard_normal((n, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with Index(path, create=True).session() as s:
        for key, value in [("model_spec", "synthetic"), ("model_identity", "synthetic-64"), ("dim", "64"), ("index_type", kind)]:
            set_meta(s, key, value)
        commit_batch(s, Plan(), Summary(), Batch.of([(Entry(f"/lib/{i:05}.jpg", "image", 1, 1), f"{i:032x}",
                                                      [{"kind": "image", "vector": v}], None, None) for i, v in enumerate(x)]))
        s.execute(File.__table__.delete().where(File.id % 10 == 0))
        bump_generation(s)
        s.commit()
    return x


def _lists(index) -> list[tuple[bytes, bytes]]:
    """Each inverted list's ids and codes, in order."""
    import faiss

    lists = faiss.extract_index_ivf(index).invlists
    return [(faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).tobytes(),
             faiss.rev_swig_ptr(lists.get_codes(i), lists.list_size(i) * lists.code_size).tobytes()) for i in range(lists.nlist)]


@pytest.mark.parametrize("in_memory", [True, False])
def test_an_ivf_index_built_on_the_cluster_is_the_local_build(cluster, tmp_path, monkeypatch, in_memory):
    """The driver trains, tasks add ranges of item ids, the driver merges: the same lists (ids,
    codes, order), plan (tuned nprobe, recall, re-rank) and top-10 as the build on this machine —
    from vectors in RAM, and rounded through float16 as a large build reads them. (IVF-PQ merges
    alike, but training its codebooks takes 14 s here: left to benchmarks/scale.py.)"""
    n, kind = 5_000, "ivfsq"
    if not in_memory:
        monkeypatch.setattr(index_module, "IN_MEMORY_LIMIT", 100)
    x = _synthetic(tmp_path / "local", n, kind)
    shutil.copytree(tmp_path / "local", tmp_path / "ray")
    here, there = Index(tmp_path / "local"), Index(tmp_path / "ray")
    there.adder = adder = distributed.RayAdder("local", there, group=700)
    ours, theirs = there.faiss_index(rebuild=True), here.faiss_index(rebuild=True)
    assert ours.plan.kind == kind and ours.plan == theirs.plan
    assert adder.tasks == math.ceil((ours.index.ntotal - 200) / 700)  # all but the 200 tuning queries, 700 a task
    assert _lists(ours.index) == _lists(theirs.index)
    for q in x[1::n // 20]:
        assert there.search_vector(q, 10, loaded=ours) == here.search_vector(q, 10, loaded=theirs)
    assert sorted(p.name for p in (tmp_path / "ray").iterdir() if "faiss" in p.name or p.suffix == ".f16") == [
        f"vectors-{there.generation()}.faiss", f"vectors-{there.generation()}.faiss.json"]  # written aside, renamed


def test_index_ray_builds_its_ivf_index_on_the_cluster(cluster, cli, folder, local, monkeypatch):
    """`index --ray` hands its IVF build to the cluster, also when nothing is embedded (here: a
    change of --index-type on an indexed folder); the results are a local index's."""
    shutil.copytree(local, cli.index)
    monkeypatch.setitem(policy.MIN_VECTORS, "ivfsq", 10)  # the folder's 27 items make an IVF index
    calls = []
    add = distributed.RayAdder.__call__
    monkeypatch.setattr(distributed.RayAdder, "__call__", lambda self, *a: (calls.append(self), add(self, *a)))
    cli("index", str(folder), "--ray", "local", "--index-type", "ivfsq")
    assert len(calls) == 1 and calls[0].tasks >= 1
    from mmsearch.api import SearchIndex

    assert SearchIndex(cli.index).index.faiss_index().plan.kind == "ivfsq"
    for q in QUERIES:
        assert [h.path for h in SearchIndex(cli.index).search(q, k=3)] == [h.path for h in SearchIndex(local).search(q, k=3)]


def _shard(path: Path, identity: str, files: list[tuple[str, str, dict | None]], dim: int = 4, items: int = 1) -> str:
    """A shard as an actor writes it: `items` images a file (path, digest, capture fields or
    None), the j-th vector of the i-th file all i + j / 10."""
    import pyarrow as pa

    rows = [{"key": os.fsencode(p), "digest": digest, "error": None, "width": 8, "height": 6,
             "items": json.dumps([{"kind": "image", "offset": j} for j in range(items)]),
             "vectors": b"".join(np.full(dim, i + j / 10, np.float32).tobytes() for j in range(items)),
             "capture": None if cap is None else json.dumps(cap)} for i, (p, digest, cap) in enumerate(files)]
    meta = {distributed.IDENTITY: identity, "mmsearch.dim": str(dim), "mmsearch.node": "test"}
    distributed._write_atomic(pa.Table.from_pylist(rows, schema=distributed.SHARD.with_metadata(meta)), str(path))
    return str(path)


def _merge(index: Index, shards: list[str], files: list[tuple[str, str]], commit=None) -> None:
    """The driver's Merger storing `shards`, which it wants `files` (path, digest) from."""
    from mmsearch.indexer.plan import Plan
    from mmsearch.indexer.run import Summary

    wanted = {os.fsencode(p): (Entry(p, "image", 1, 1), d) for p, d in files}
    with index.session() as s:
        if commit:
            s.commit = commit(s.commit)  # type: ignore[method-assign]
        with distributed.Merger(s, Plan(), Summary(), "synthetic-4", wanted, refuse=True) as merger:
            for shard in shards:
                merger.add(shard)
            merger.flush()


def _synthetic_index(tmp_path: Path) -> Index:
    index = _fresh(tmp_path)
    with index.session() as s:
        for key, value in [("model_spec", "synthetic"), ("model_identity", "synthetic-4"), ("dim", "4")]:
            set_meta(s, key, value)
        s.commit()
    return index


def test_capture_metadata_is_stored_with_its_files_in_one_commit(tmp_path):
    """The shards' capture metadata goes into the files' rows in their transaction: a driver killed
    after that commit leaves no file without it (a second commit for it did). A file stored again
    gets the new metadata; one whose shard has none is left for the driver to read (NULL)."""
    index = _synthetic_index(tmp_path)
    cap = {"taken_ns": 5, "offset_min": 60, "taken_from": "exif", "camera": "Canon", "lat": 1.5, "lon": -2.5}
    first = [("/p/a.jpg", "a" * 32, cap), ("/p/b.jpg", "b" * 32, {**cap, "camera": None}), ("/p/c.jpg", "c" * 32, None)]

    def one_commit(commit):
        def only_once():  # the process dies at a second commit
            assert not calls, "a second commit"
            calls.append(1)
            commit()
        calls: list[int] = []
        return only_once

    _merge(index, [_shard(tmp_path / "s1.parquet", "synthetic-4", first)], [f[:2] for f in first], one_commit)

    def stored() -> dict[str, tuple]:
        with index.session() as s:
            return {p: tuple(r) for p, *r in s.execute(select(File.path, File.taken_ns, File.offset_min, File.taken_from,
                                                               File.camera, File.lat, File.lon))}

    assert stored() == {"/p/a.jpg": (5, 60, "exif", "Canon", 1.5, -2.5), "/p/b.jpg": (5, 60, "exif", None, 1.5, -2.5),
                        "/p/c.jpg": (None, None, None, None, None, None)}
    again = [("/p/a.jpg", "d" * 32, {**cap, "taken_ns": 7, "camera": "Nikon"})]  # changed since: its row is updated
    _merge(index, [_shard(tmp_path / "s2.parquet", "synthetic-4", again)], [f[:2] for f in again])
    assert stored()["/p/a.jpg"] == (7, 60, "exif", "Nikon", 1.5, -2.5)


def test_shard_vectors_are_stored_with_their_items_in_order(tmp_path):
    """A shard's vectors column is read as one array (not a bytes object a row): each file gets its
    own rows, also when a shard's rows are skipped (not wanted) and files hold several items."""
    index = _synthetic_index(tmp_path)
    files = [(f"/p/{i}.jpg", f"{i:032x}", None) for i in range(5)]
    shard = _shard(tmp_path / "s.parquet", "synthetic-4", files, items=3)
    _merge(index, [shard], [f[:2] for f in files if f[0] != "/p/1.jpg"])  # (/p/1.jpg: stored already, say)
    with index.session() as s:
        rows = s.execute(select(Item.id, File.path, Item.offset).join(File).order_by(Item.id)).all()
        vectors = vectors_by_id(s, [r[0] for r in rows])
    assert [(p, o) for _, p, o in rows] == [(f"/p/{i}.jpg", j) for i in (0, 2, 3, 4) for j in range(3)]
    for item_id, p, offset in rows:
        assert np.array_equal(vectors[item_id], np.full(4, int(p[3]) + offset / 10, np.float32))


def test_a_shard_whose_items_and_vectors_disagree_takes_nothing(tmp_path):
    """A shard is checked whole before any of its files is taken: one bad row leaves the batch and
    the files still wanted as they were (this run's shard: an error; an earlier run's: unused)."""
    import pyarrow as pa

    from mmsearch.indexer.plan import Plan
    from mmsearch.indexer.run import Summary

    index = _synthetic_index(tmp_path)
    files = [(f"/p/{i}.jpg", f"{i:032x}", None) for i in range(3)]
    path = _shard(tmp_path / "s.parquet", "synthetic-4", files)
    table = pq.read_table(path)
    items = table.column("items").to_pylist()
    items[2] = json.dumps([{"kind": "image"}] * 2)  # the last row claims two items, with one vector
    pq.write_table(table.set_column(table.schema.get_field_index("items"), "items", pa.array(items, pa.string())), path)
    for refuse in (True, False):
        wanted = {os.fsencode(p): (Entry(p, "image", 1, 1), d) for p, d, _ in files}
        with index.session() as s, distributed.Merger(s, Plan(), Summary(), "synthetic-4", wanted, refuse=refuse) as merger:
            if refuse:
                with pytest.raises(ValueError, match="2 item"):
                    merger.add(path)
            else:
                assert merger.add(path) == 0
            assert len(wanted) == 3 and not merger.batch.entries and not merger.batch.vectors
            merger.flush()
    assert _files(tmp_path / "index") == {}


def test_the_driver_reads_shards_while_its_last_batch_commits(tmp_path, monkeypatch):
    """A batch commits in the Merger's writer thread while the next shards are read; its error
    comes out of the next call, and leaving the Merger (an error, Ctrl-C) waits for the commit
    under way, so the session is never used by two threads."""
    index = _synthetic_index(tmp_path)
    shards = [_shard(tmp_path / f"s{k}.parquet", "synthetic-4", [(f"/p/{k}.jpg", f"{k:032x}", None)]) for k in range(3)]
    wanted = [(f"/p/{k}.jpg", f"{k:032x}") for k in range(3)]
    read, log = distributed.Merger._read, []
    commit = distributed.commit_batch

    def slow_commit(*args):
        log.append("commit starts")
        time.sleep(0.5)
        commit(*args)
        log.append("commit ends")

    monkeypatch.setattr(distributed.Merger, "_read", lambda self, shard: (log.append(f"read {Path(shard).stem}"), read(self, shard))[1])
    monkeypatch.setattr(distributed, "commit_batch", slow_commit)
    monkeypatch.setattr(distributed, "MERGE_ITEMS", 1)  # a transaction a shard
    _merge(index, shards, wanted)
    assert log.index("read s1") < log.index("commit ends")  # s1 was read while s0 committed
    assert log[-1] == "commit ends" and log.count("commit ends") == 3
    assert len(_files(tmp_path / "index")) == 3

    log.clear()

    def failing(*args):
        time.sleep(0.3)
        log.append("failed")
        raise RuntimeError("disk full")

    monkeypatch.setattr(distributed, "commit_batch", failing)
    more = [_shard(tmp_path / f"t{k}.parquet", "synthetic-4", [(f"/q/{k}.jpg", f"{k:032x}", None)]) for k in range(2)]
    with pytest.raises(RuntimeError, match="disk full"):  # raised by the next add, which waits for it
        _merge(index, more, [(f"/q/{k}.jpg", f"{k:032x}") for k in range(2)])
    log.clear()
    with pytest.raises(KeyboardInterrupt), index.session() as s:
        from mmsearch.indexer.plan import Plan
        from mmsearch.indexer.run import Summary

        with distributed.Merger(s, Plan(), Summary(), "synthetic-4", {os.fsencode("/q/0.jpg"): (Entry("/q/0.jpg", "image", 1, 1), f"{0:032x}")},
                                refuse=True) as merger:
            merger.add(more[0])  # its commit starts...
            raise KeyboardInterrupt  # ...and a Ctrl-C comes: leaving waits for the commit, and tells the Ctrl-C
    assert log == ["read t0", "failed"]  # (its error is not the one told: the Ctrl-C is)


def test_an_s3_prefix_embedded_on_the_cluster_is_a_local_run(cluster, s3_server, photos, tmp_path):
    """Objects under a URI root are fetched and hashed by the actors, with the root's options
    (an endpoint, and credentials in the URI: the cluster's workers may lack the test's AWS
    environment); the items, vectors, digests and skipped files are a local run's."""
    client = s3_client(s3_server)
    client.create_bucket(Bucket="cluster")
    for name in ["coffee.png", "horse.png", "rocket.jpg", "chelsea.png", "camera.png", "coins.png"]:
        client.upload_file(str(photos / name), "cluster", f"lib/{name}")
    client.put_object(Bucket="cluster", Key="lib/corrupt.jpg", Body=b"\xff\xd8\xff\xe0 not really a JPEG")
    client.put_object(Bucket="cluster", Key="lib/note.txt", Body=b"A red bicycle leans against a brick wall.")
    root = f"s3://testing:testing@cluster/lib?endpoint_override={s3_server}&scheme=http&region=us-east-1"
    local = index_paths(Index(tmp_path / "local", create=True), [root], IndexOptions())
    stage = RayStage(slice_files=4)
    summary = index_paths(_fresh(tmp_path), [root], IndexOptions(), embed=stage)
    assert (stage.slices, stage.embedded, summary.embedded) == (2, 8, 7)
    assert summary.skipped == local.skipped and summary.skipped[0]["path"] == "s3://cluster/lib/corrupt.jpg"
    _same_as_local(tmp_path / "index", tmp_path / "local")

    def digests(path: Path) -> dict[str, str | None]:
        with Index(path).session() as s:
            return dict(s.execute(select(File.path, File.digest)).all())

    assert digests(tmp_path / "index") == digests(tmp_path / "local")
    assert digests(tmp_path / "index")["s3://cluster/lib/coffee.png"] == file_digest(photos / "coffee.png")


def test_an_object_is_taken_from_this_runs_shards_alone(tmp_path):
    """An object under a URI root is planned without a digest (hashed where it is fetched): its
    shard row is stored from this run's shards (with the digest the actor found), never from an
    earlier run's, which may hold an older version of it; a file's by its digest, as ever."""
    from mmsearch.indexer.plan import Plan
    from mmsearch.indexer.run import Summary

    index = _synthetic_index(tmp_path)
    shard = _shard(tmp_path / "s.parquet", "synthetic-4", [("s3://m/a.jpg", "a" * 32, None), ("/p/b.jpg", "b" * 32, None)])
    for this_run, stored in [(False, {"/p/b.jpg"}), (True, {"/p/b.jpg", "s3://m/a.jpg"})]:
        wanted = {os.fsencode(p): (Entry(p, "image", 1, 1), d) for p, d in [("s3://m/a.jpg", ""), ("/p/b.jpg", "b" * 32)]}
        with index.session() as s, distributed.Merger(s, Plan(), Summary(), "synthetic-4", wanted, refuse=this_run) as merger:
            merger.add(shard)
            merger.flush()
        assert set(_files(tmp_path / "index")) == stored
    with index.session() as s:
        assert s.scalar(select(File.digest).where(File.path == "s3://m/a.jpg")) == "a" * 32


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
