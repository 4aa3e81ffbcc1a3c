#!/usr/bin/env python3
"""Search at scale: the index policy on clustered synthetic vectors.

    python benchmarks/ann.py [--sizes 100000 1000000] [--dim 512] [--budget-gib 20] [--kind auto]

For each size: the policy's choice, build + tuning time, index size, recall@10 against exact
search (after the exact re-ranking that `Index.search_vector` applies) and single-threaded
p50/p99 latency of one query, next to an exact flat scan's latency.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from retrieval.policy import RERANK, build, choose_index, search_params, tune  # noqa: E402


def clustered(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((1024, d)).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 500_000):
        m = min(500_000, n - s)
        x = centres[rng.integers(0, 1024, m)] + 0.8 * rng.standard_normal((m, d)).astype(np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--budget-gib", type=float, default=20)
    ap.add_argument("--kind", default="auto")
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args()
    faiss.omp_set_num_threads(2)
    rng = np.random.default_rng(0)
    for n in args.sizes:
        both = clustered(n + args.queries, args.dim, rng)  # queries from the same clusters, never indexed
        x, q = both[:n], both[n:]
        plan = choose_index(n, args.dim, int(args.budget_gib * 2**30), args.kind)
        t = time.perf_counter()
        index = build(plan, np.arange(n, dtype=np.int64), x)
        built = time.perf_counter() - t
        plan = tune(plan, index, x)
        tuned = time.perf_counter() - t - built
        size = faiss.serialize_index(index).nbytes
        exact = faiss.IndexFlatIP(args.dim)
        exact.add(x)
        truth = exact.search(q, 10)[1]
        faiss.omp_set_num_threads(1)
        lat, hits, flat_lat = [], 0, []
        for i in range(len(q)):
            t = time.perf_counter()
            ids = index.search(q[i : i + 1], 10 * RERANK[plan.kind], params=search_params(plan))[1][0]
            ids = ids[ids >= 0]
            top = ids[np.argsort(-(x[ids] @ q[i]))][:10]  # the exact re-ranking
            lat.append(time.perf_counter() - t)
            hits += len(set(top.tolist()) & set(truth[i].tolist()))
            t = time.perf_counter()
            exact.search(q[i : i + 1], 10)
            flat_lat.append(time.perf_counter() - t)
        faiss.omp_set_num_threads(2)
        p50, p99 = np.percentile(lat, 50) * 1000, np.percentile(lat, 99) * 1000
        print(f"{n:>11,} × {args.dim}: {plan.kind} ({plan.factory}, {plan.param}={plan.value}) — built {built:.1f}s, "
              f"tuned {tuned:.1f}s, {size / 2**20:.0f} MiB; recall@10 {hits / (10 * len(q)):.3f}; "
              f"p50 {p50:.2f} ms, p99 {p99:.2f} ms (exact scan p50 {np.percentile(flat_lat, 50) * 1000:.1f} ms)", flush=True)


if __name__ == "__main__":
    main()
