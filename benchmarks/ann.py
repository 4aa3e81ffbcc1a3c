#!/usr/bin/env python3
"""Search at scale: the index policy on clustered synthetic vectors, and autofaiss beside it.

    python benchmarks/ann.py [--sizes 100000 1000000 10000000] [--dim 512] [--budget-gib 8]
                             [--noise isotropic|decaying] [--kind auto] [--peers]

For each size: the policy's choice, build + tuning time, index size, peak memory, recall@10
against exact search (after the exact re-ranking that `Index.search_vector` applies) and
single-threaded p50/p99 latency of one query, next to an exact flat scan. With `--peers`, the
same collection is then indexed by autofaiss under the same memory budget (its own choice and
its own tuning for ≤ 10 ms queries) and measured the same way (no re-ranking: autofaiss has none);
then our index is measured again at autofaiss's recall (its knob doubled until it gets there).
Install autofaiss first with `benchmarks/setup_peers.sh` (numpy-2 safe, kept apart).

Vectors are written once to a float16 memory map under --scratch (10M × 512 is 10 GiB), so the
collection itself never sits in this process's memory; 1,024 Gaussian clusters, with either
isotropic noise or noise whose spectrum decays like real embeddings'.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / ".peers"))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from mmsearch.retrieval.policy import build, choose_index, exact_topk, search_params  # noqa: E402


def collection(n: int, d: int, noise: str, scratch: Path) -> np.ndarray:
    """n + queries vectors as a read-only float16 memory map, generated once and cached."""
    fn = scratch / f"clustered-{noise}-{n}x{d}.f16"
    if fn.exists() and fn.stat().st_size == n * d * 2:
        return np.memmap(fn, np.float16, "r", shape=(n, d))
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1024, d)).astype(np.float32)
    if noise == "isotropic":
        scale = np.full(d, 0.8, np.float32)
    else:  # per-dimension noise falling as a power law, same total energy as the isotropic case
        power = np.arange(1, d + 1, dtype=np.float64) ** -0.75
        scale = (0.8 * np.sqrt(d) * power / np.linalg.norm(power)).astype(np.float32)
    out = np.memmap(f"{fn}.tmp", np.float16, "w+", shape=(n, d))
    for s in range(0, n, 500_000):
        m = min(500_000, n - s)
        x = centres[rng.integers(0, 1024, m)] + scale * rng.standard_normal((m, d), np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    del out
    os.replace(f"{fn}.tmp", fn)
    return np.memmap(fn, np.float16, "r", shape=(n, d))


def measure(search, x: np.ndarray, q: np.ndarray, truth: np.ndarray, rerank: bool) -> tuple[float, float, float]:
    """recall@10, p50 and p99 ms of single queries on one thread."""
    faiss.omp_set_num_threads(1)
    lat, hits = [], 0
    for i in range(len(q)):
        t = time.perf_counter()
        ids = search(q[i : i + 1])
        ids = ids[ids >= 0]
        if rerank:
            ids = np.sort(ids)
            ids = ids[np.argsort(-(x[ids].astype(np.float32) @ q[i]))]
        lat.append(time.perf_counter() - t)
        hits += len(set(ids[:10].tolist()) & set(truth[i].tolist()))
    faiss.omp_set_num_threads(2)
    return hits / (10 * len(q)), np.percentile(lat, 50) * 1000, np.percentile(lat, 99) * 1000


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def ours(x, q, truth, budget: int, kind: str):
    """Build with the policy, print its line; returns (plan, index) for matching a peer's recall."""
    n, dim = x.shape
    plan = choose_index(n, dim, budget, kind)
    t = time.perf_counter()
    index = build(plan, np.arange(n, dtype=np.int64), x)  # tunes the plan on held-out rows too
    built = time.perf_counter() - t
    size = faiss.serialize_index(index).nbytes if n <= 2_000_000 else index_bytes(index)
    rec, p50, p99 = measure_ours(plan, index, x, q, truth)
    print(f"  mmsearch  {plan.factory} {plan.param}={plan.value}: built and tuned in {built:.0f} s "
          f"(to {plan.recall:.3f} on held-out rows), {size / 2**30:.2f} GiB, peak RSS {peak_gib():.1f} GiB; "
          f"recall@10 {rec:.3f}; p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
    return plan, index


def measure_ours(plan, index, x, q, truth):
    params = search_params(plan)
    return measure(lambda v: index.search(v, 10 * plan.candidates(), params=params)[1][0], x, q, truth,
                   plan.kind != "flat" and plan.rerank != 0)


def match(plan, index, x, q, truth, target: float) -> None:
    """Our index at the peer's recall: the knob doubled until these queries reach it."""
    if plan.param is None:
        return
    rec, p50, p99 = measure_ours(plan, index, x, q, truth)
    if rec >= target:
        print("  mmsearch  already at or above autofaiss's recall with its own setting", flush=True)
        return
    while rec < target and plan.value < 4096:
        plan.value *= 2
        rec, p50, p99 = measure_ours(plan, index, x, q, truth)
    print(f"  mmsearch  at autofaiss's recall, {plan.param}={plan.value}: recall@10 {rec:.3f}; "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)


def index_bytes(index: faiss.Index) -> int:
    """Size of a large index without serialising it (that would double its memory)."""
    fn = f"/tmp/ann-bench-{os.getpid()}.faiss"
    faiss.write_index(index, fn)
    size = os.path.getsize(fn)
    os.remove(fn)
    return size


def autofaiss_side(x, q, truth, budget: int) -> float | None:
    try:
        from autofaiss import build_index
    except ImportError:
        print("  autofaiss not installed: run benchmarks/setup_peers.sh", flush=True)
        return None
    import logging

    logging.getLogger("autofaiss").setLevel(logging.WARNING)
    t = time.perf_counter()
    # autofaiss reads numpy arrays whole; a float32 copy is what any caller would hand it
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bars
        index, info = build_index(np.asarray(x, np.float32), save_on_disk=False, metric_type="ip",
                                  max_index_memory_usage=f"{budget >> 20}M", current_memory_available="20G", verbose=40)
    built = time.perf_counter() - t
    rec, p50, p99 = measure(lambda v: index.search(v, 10)[1][0], x, q, truth, rerank=False)
    print(f"  autofaiss {info['index_key']} {info['index_param']}: built+tuned {built:.0f} s, "
          f"{info['size in bytes'] / 2**30:.2f} GiB, peak RSS {peak_gib():.1f} GiB; recall@10 {rec:.3f}; "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--budget-gib", type=float, default=8)
    ap.add_argument("--noise", choices=["isotropic", "decaying"], default="isotropic")
    ap.add_argument("--kind", default="auto")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--peers", action="store_true", help="also build with autofaiss under the same budget")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--scratch", type=Path, default=Path.home() / ".cache" / "mmsearch-bench")
    args = ap.parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)
    faiss.omp_set_num_threads(2)
    budget = int(args.budget_gib * 2**30)
    for n in args.sizes:
        both = collection(n + args.queries, args.dim, args.noise, args.scratch)
        x, q = both[:n], np.asarray(both[n:], np.float32)  # queries from the same clusters, never indexed
        t = time.perf_counter()
        truth = exact_topk(x, q, 10)
        faiss.omp_set_num_threads(1)
        flat = faiss.IndexFlatIP(args.dim)
        flat.add(np.asarray(x[: min(n, 1_000_000)], np.float32))
        t = time.perf_counter()
        for v in q[:50]:
            flat.search(v[None], 10)
        flat_ms = (time.perf_counter() - t) / 50 * 1000 * n / flat.ntotal  # scales linearly with n
        del flat
        faiss.omp_set_num_threads(2)
        print(f"{n:,} × {args.dim} ({args.noise} noise, budget {args.budget_gib:g} GiB): exact scan p50 ≈ {flat_ms:.1f} ms",
              flush=True)
        built = None if args.skip_ours else ours(x, q, truth, budget, args.kind)
        peer = autofaiss_side(x, q, truth, budget) if args.peers else None
        if built and peer:
            match(*built, x, q, truth, peer)


if __name__ == "__main__":
    main()
