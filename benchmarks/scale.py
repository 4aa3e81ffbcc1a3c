#!/usr/bin/env python3
"""The store and index at scale: N synthetic items merged, indexed and searched.

    python benchmarks/scale.py --items 10000000 [--dim 512] [--batch 20000] [--dir /big/disk/tmp]
    python benchmarks/scale.py --items 1000000 --index-type ivfsq --build local,ray [--ray ADDRESS]
    python benchmarks/scale.py --items 1000000 --merge-only --shards 256 [--merge-items 1]

Items are merged through `commit_batch` (indexer/run.py), the path by which a run's embedded
batches — local, or shards from a Ray cluster — enter the store: file rows, item rows, lexical
rows (file names) in SQLite, vectors in segment files; as a run storing N files does, the merge
drops the content-digest index first and builds it after (`run.digests_after`), which its time
includes. Vectors are clustered (random centres plus
noise, unit length), so approximate search is as hard as on real collections rather than on
uniform noise. Then the FAISS index is built by the index policy (the kind it chooses for N),
and searched with new vectors from the same distribution.

Reports: merge wall time and items/s; FAISS build wall time and kind; bytes on disk (SQLite,
segments, FAISS) and per item; peak RSS; search p50/p99 over `--queries` queries through
`Index.search_vector` (FAISS, plus the exact re-rank from the segments where the plan needs it),
and recall@10 against an exact scan of every stored vector. CPU flags printed beside the figures.

`--shards FILES` merges as the Ray driver does instead (indexer/distributed.py `Merger`): the
items are written as parquet shards of FILES files each (a shard as an actor writes it, capture
metadata included) and stored by the driver's own loop, several shards a transaction
(`--merge-items 1`: one a shard, as before 43f7391). The rate counts the driver's reading and
storing by the wall clock, not the making and writing of the shards (made a million items at a
time, before the loop reads them).

`--build local,ray` builds the FAISS index twice from the same store, each in a fresh process
(its own peak RSS): on this machine, and as `index --ray` does (indexer/distributed.py
`RayAdder`: trained here, vectors added by Ray tasks, merged here); the two must hold the same
lists (ids and codes, in order), the same plan and the same top-10 for the queries. The Ray
build reports its cluster's start apart (`--ray local` starts one; `auto` / HOST:PORT join one).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmsearch.indexer.plan import Plan  # noqa: E402
from mmsearch.indexer.run import Batch, Summary, commit_batch, digests_after  # noqa: E402
from mmsearch.indexer.scan import Entry  # noqa: E402
from mmsearch.retrieval.index import Index  # noqa: E402
from mmsearch.retrieval.store import bump_generation, segments, set_meta  # noqa: E402


def cpu() -> str:
    flags = set(open("/proc/cpuinfo").read().split())
    return f"{os.cpu_count()} cores; " + ", ".join(f"{f} {'yes' if f in flags else 'no'}"
                                                  for f in ("avx2", "avx512f", "avx512_vnni", "amx_bf16"))


def vectors(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    v = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.standard_normal((n, centres.shape[1])).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def synthetic_file(k: int) -> tuple[Entry, str]:
    """The `k`-th synthetic photo: its entry and content digest. The digest is random, as a real one
    (blake2b) is: its index takes each new file on a random page (counting digests, appended in
    order, flattered the merge)."""
    e = Entry(f"/archive/{k // 100_000:04}/{k // 1000 % 100:02}/IMG_{k:08}.jpg", "image", 2_000_000 + k % 1000,
              1_600_000_000_000_000_000 + k)
    return e, hashlib.blake2b(k.to_bytes(8, "little"), digest_size=16).hexdigest()


def merge(idx: Index, n: int, dim: int, batch: int, centres: np.ndarray, index_type: str | None) -> tuple[float, float]:
    """(wall seconds of the whole loop, seconds inside `commit_batch`): the loop also makes the
    synthetic vectors and file rows, which a real merge reads from shards instead."""
    with idx.session() as s:
        set_meta(s, "model_spec", "synthetic")
        set_meta(s, "model_identity", f"synthetic-{dim}")
        set_meta(s, "dim", str(dim))
        if index_type:
            set_meta(s, "index_type", index_type)
        s.commit()
    rng = np.random.default_rng(1)
    plan, summary = Plan(), Summary()
    start, committing = time.perf_counter(), 0.0
    t = time.perf_counter()
    with idx.session() as s, digests_after(s, n):  # (as a run storing `n` files: its rebuild is timed)
        committing += time.perf_counter() - t
        for first in range(0, n, batch):
            m = min(batch, n - first)
            v = vectors(rng, centres, m)
            files = []
            for i in range(m):
                e, digest = synthetic_file(first + i)
                files.append((e, digest, [{"kind": "image", "vector": v[i]}], (4032, 3024), None))
            t = time.perf_counter()
            commit_batch(s, plan, summary, Batch.of(files))
            committing += time.perf_counter() - t
            if (first // batch) % 25 == 0:
                print(f"  merged {first + m:,} ({(first + m) / committing:,.0f} items/s in commit_batch)", flush=True)
        bump_generation(s)
        s.commit()
        t = time.perf_counter()
    committing += time.perf_counter() - t
    return time.perf_counter() - start, committing


#: items whose shards are written before the driver's loop reads them (~2 GB at 512-d): the loop
#: is timed alone, by the wall clock, including a commit still under way at the round's end
ROUND = 1_000_000


def merge_shards(idx: Index, n: int, dim: int, shard_files: int, centres: np.ndarray) -> tuple[float, float]:
    """(wall seconds of the whole loop, seconds of the driver's `Merger`): `n` one-image files
    written as shards of `shard_files`, ROUND items at a time, then stored as the driver stores
    them as they arrive (and removed: the Merger has read them whole). Each round ends with a
    flush, so no work of the Merger's runs while the next round's shards are made."""
    import pyarrow as pa

    from mmsearch.indexer import distributed
    from mmsearch.media.capture import Capture

    identity = f"synthetic-{dim}"
    with idx.session() as s:
        for k, v in (("model_spec", "synthetic"), ("model_identity", identity), ("dim", str(dim))):
            set_meta(s, k, v)
        s.commit()
    rng, folder = np.random.default_rng(1), Path(idx.path) / "runs" / "bench"
    folder.mkdir(parents=True)
    meta = {distributed.IDENTITY: identity, "mmsearch.dim": str(dim), "mmsearch.node": "bench"}
    wanted: dict[bytes, tuple[Entry, str]] = {}
    start, storing = time.perf_counter(), 0.0
    t = time.perf_counter()
    with idx.session() as s, digests_after(s, n):  # (as a run storing `n` files: its rebuild is timed)
        storing += time.perf_counter() - t
        merger = distributed.Merger(s, Plan(), Summary(), identity, wanted, refuse=True)
        for at in range(0, n, ROUND):
            shards = []
            for first in range(at, min(at + ROUND, n), shard_files):
                m = min(shard_files, n - first)
                v = vectors(rng, centres, m)
                rows = []
                for i in range(m):
                    e, digest = synthetic_file(first + i)
                    wanted[e.key] = (e, digest)
                    rows.append({"key": e.key, "digest": digest, "error": None, "width": 4032, "height": 3024,
                                 "items": json.dumps([{"kind": "image"}]), "vectors": v[i].tobytes(),
                                 "capture": json.dumps(Capture().with_fallback(e.mtime_ns).__dict__)})
                shards.append(str(folder / f"shard-{first // shard_files:06d}.parquet"))
                distributed._write_atomic(pa.Table.from_pylist(rows, schema=distributed.SHARD.with_metadata(meta)), shards[-1])
            t = time.perf_counter()
            for shard in shards:
                merger.add(shard)
            merger.flush()
            storing += time.perf_counter() - t
            for shard in shards:
                os.unlink(shard)
            print(f"  stored {min(at + ROUND, n):,} ({min(at + ROUND, n) / storing:,.0f} items/s in the Merger)", flush=True)
        t = time.perf_counter()
    storing += time.perf_counter() - t
    return time.perf_counter() - start, storing


def exact_top(idx: Index, queries: np.ndarray, n: int, k: int = 10) -> np.ndarray:
    """The true top-k ids of each query, by one pass over every stored vector."""
    with idx.session() as s:
        store = segments(s)
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    ids = np.arange(store.base, store.base + n, dtype=np.int64)  # every id lives: nothing was deleted
    for chunk_ids, rows in store.chunks(ids, 1 << 18):
        sc = queries @ rows.T
        top = np.argpartition(-sc, k, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(sc, top, 1)], 1)
        cand_i = np.concatenate([best_i, chunk_ids[top]], 1)
        order = np.argsort(-cand_s, 1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build_here(path: Path, where: str, address: str, queries: np.ndarray) -> dict:
    """The policy's FAISS build of the index at `path` in this (fresh) process: `local`, or with
    its vectors added on the Ray cluster at `address`. What it took, and what it built."""
    import faiss

    from mmsearch.indexer.distributed import RayAdder, connected

    idx = Index(path)
    adder = idx.adder = RayAdder(address, idx) if where == "ray" else None
    t = time.perf_counter()
    with connected(address) if adder else nullcontext():  # (the adder keeps the connection it finds)
        out: dict = {"cluster_s": time.perf_counter() - t}  # starting a local cluster, or joining one
        t = time.perf_counter()
        loaded = idx.faiss_index(rebuild=True)
        out["build_s"] = time.perf_counter() - t
    if adder:
        out |= {"tasks": adder.tasks, "nodes": len(adder.nodes), "task_rss_gib": adder.task_rss / 2**30,
                "adding_s": adder.seconds, "merging_s": adder.merging}
    lists = faiss.extract_index_ivf(loaded.index).invlists if loaded.plan.kind.startswith("ivf") else None
    h = hashlib.blake2b(faiss.serialize_index(loaded.index).tobytes() if lists is None else b"")
    for i in range(lists.nlist if lists else 0):
        n = lists.list_size(i)
        h.update(faiss.rev_swig_ptr(lists.get_ids(i), n).tobytes() + faiss.rev_swig_ptr(lists.get_codes(i), n * lists.code_size).tobytes())
    top = [[i for i, _ in idx.search_vector(q, 10, loaded=loaded)] for q in queries]
    return out | {"rss_gib": rss_gib(), "plan": loaded.plan.as_dict(), "digest": h.hexdigest(), "top": top}


def builds(path: Path, how: list[str], address: str, queries: np.ndarray) -> None:
    """Each build of `how` in a fresh process from the same store, compared; the last one's file stays."""
    np.save(path.parent / "queries.npy", queries)
    results = []
    for where in how:
        for f in path.glob("vectors-*.faiss*"):
            f.unlink()
        r = subprocess.run([sys.executable, __file__, "--build-in", str(path), "--build", where, "--ray", address],
                           capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{where} build failed:\n{r.stderr[-3000:]}")
        res = json.loads(r.stdout.splitlines()[-1])
        results.append(res)
        plan = res["plan"]
        extra = (f" (of which adding on the cluster and merging {res['adding_s']:.1f} s, merging alone "
                 f"{res['merging_s']:.2f} s); cluster start {res['cluster_s']:.1f} s, {res['tasks']} tasks on "
                 f"{res['nodes']} node(s), a task's worker peak RSS {res['task_rss_gib']:.2f} GiB") if where == "ray" else ""
        print(f"FAISS build ({where}): {res['build_s']:.1f} s, driver peak RSS {res['rss_gib']:.2f} GiB{extra}; "
              f"{plan['factory']} {plan['param']}={plan['value']} recall@10 {plan['recall']} [{cpu()}]", flush=True)
    if len(results) > 1:
        first, *rest = results
        same = all((r["digest"], r["plan"], r["top"]) == (first["digest"], first["plan"], first["top"]) for r in rest)
        print(f"builds {', '.join(how)}: {'the same lists, plan and top-10' if same else 'DIFFER'} "
              f"({len(queries)} queries)")
        if not same:
            sys.exit(1)



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--recall-queries", type=int, default=50)
    ap.add_argument("--dir", default=None, help="where the index is built (needs ~2.6 KB per item)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--index-type", default=None, help="force a FAISS index kind (default: the policy's choice for N)")
    ap.add_argument("--build", default="local", help="FAISS builds to make and compare, each in a fresh process: local, ray or local,ray")
    ap.add_argument("--ray", default="local", help="the Ray cluster of a `ray` build: local, auto or HOST:PORT")
    ap.add_argument("--build-in", default=None, help=argparse.SUPPRESS)  # (a build's own process)
    ap.add_argument("--merge-only", action="store_true", help="stop after the merge (its rate, without the FAISS build)")
    ap.add_argument("--shards", type=int, default=0, help="merge as the Ray driver does, from shards of this many files")
    ap.add_argument("--merge-items", type=int, default=0, help="with --shards: items a transaction (default: the driver's)")
    a = ap.parse_args()
    if a.build_in:
        queries = np.load(Path(a.build_in).parent / "queries.npy")
        print(json.dumps(build_here(Path(a.build_in), a.build, a.ray, queries)))
        return
    print(f"CPU: {cpu()}; {a.items:,} items of {a.dim}-d")
    path = Path(tempfile.mkdtemp(dir=a.dir)) / "index"
    idx = Index(path, create=True)
    centres = np.random.default_rng(0).standard_normal((4096, a.dim)).astype(np.float32)

    if a.shards:
        from mmsearch.indexer import distributed

        distributed.MERGE_ITEMS = a.merge_items or distributed.MERGE_ITEMS
        merge_s, commit_s = merge_shards(idx, a.items, a.dim, a.shards, centres)
        print(f"merge from {a.shards}-file shards, {distributed.MERGE_ITEMS:,} items a transaction: "
              f"{a.items / commit_s:,.0f} items/s in the driver's Merger ({commit_s:.0f} s; {merge_s:.0f} s with "
              f"making the shards) [{cpu()}]")
    else:
        merge_s, commit_s = merge(idx, a.items, a.dim, a.batch, centres, a.index_type)
        print(f"merge: {merge_s:.0f} s, {a.items / merge_s:,.0f} items/s with making the items; in commit_batch "
              f"{commit_s:.0f} s, {a.items / commit_s:,.0f} items/s")
    print(f"merge peak RSS {rss_gib():.2f} GiB")
    if a.merge_only:
        shutil.rmtree(path.parent)
        return
    rng = np.random.default_rng(2)
    queries = vectors(rng, centres, a.queries)
    builds(path, a.build.split(","), a.ray, queries[: a.recall_queries])
    loaded = idx.faiss_index()
    plan = loaded.plan
    print(f"FAISS: {plan.factory} ({plan.reason}); {plan.param}={plan.value}, tuned recall@10 "
          f"{plan.recall}, {'ranked by its codes alone' if plan.rerank == 0 else 'exact re-rank from the segments'}")

    with idx.session() as s:  # the write-ahead log folded into the database, as it is at rest
        s.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    sizes = {"sqlite": sum(f.stat().st_size for f in path.glob("mmsearch.db*")),
             "segments": sum(f.stat().st_size for f in (path / "vectors").glob("seg-*")),
             "faiss": sum(f.stat().st_size for f in path.glob("vectors-*.faiss"))}
    for name, size in sizes.items():
        print(f"  {name:9} {size / 2**30:7.2f} GiB  {size / a.items:7.0f} B/item")
    print(f"peak RSS of this process (merge, search; each build's above): {rss_gib():.2f} GiB")

    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        found.append([i for i, _ in idx.search_vector(q, 10)])
        times.append(time.perf_counter() - t)
    ms = np.array(times[5:]) * 1000  # the first few map the index and segments in
    print(f"search (k=10, {'codes alone' if plan.rerank == 0 else 'exact re-rank'}): p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms")
    r = a.recall_queries
    truth = exact_top(idx, queries[:r], a.items)
    recall = np.mean([len(set(found[i]) & set(truth[i].tolist())) / 10 for i in range(r)])
    print(f"recall@10 over {r} queries: {recall:.3f}")
    if a.keep:
        print(f"kept {path}")
    else:
        shutil.rmtree(path.parent)


if __name__ == "__main__":
    main()
