#!/usr/bin/env python3
"""HTTP search throughput and latency on a large index, next to the bare text encoding.

    python benchmarks/server.py [--items 100000] [--seconds 8]

Builds an index of N synthetic items (random unit vectors in the `lite` space, so real text
queries run through the real model), starts `mmsearch serve` on a loopback port, and drives
`GET /search` with 1, 4 and 16 concurrent clients for a few seconds each. Prints queries/s and
p50/p99 latency per level, and the bare single-query text-encode time.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from mmsearch.retrieval.encoders import load_encoder  # noqa: E402
from mmsearch.retrieval.index import Index  # noqa: E402
from mmsearch.retrieval.store import File, Item, bump_generation, put_vectors, set_meta  # noqa: E402

QUERIES = ["a dog on a beach", "a red car at night", "two people shaking hands", "a bowl of fruit",
           "snow on the mountains", "a cat sleeping on a sofa", "an old map", "a rocket launch"]


def build(path: Path, n: int) -> None:
    idx = Index(path, create=True)
    enc = idx.use_model("lite")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((256, enc.dim)).astype(np.float32)
    with idx.session() as s:
        for start in range(0, n, 20000):
            m = min(20000, n - start)
            v = centres[rng.integers(0, 256, m)] + 0.5 * rng.standard_normal((m, enc.dim)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            s.execute(insert(File), [dict(id=start + i + 1, path=f"/synthetic/{start + i}.jpg", size=1, mtime_ns=0, kind="image",
                                         status="ok") for i in range(m)])
            put_vectors(s, start + 1, v)  # item ids = file ids here: vectors at their ids
            s.execute(insert(Item), [dict(id=start + i + 1, file_id=start + i + 1, kind="image") for i in range(m)])
        set_meta(s, "next_item_id", str(n + 1))
        bump_generation(s)
        s.commit()
    idx.faiss_index()


def drive(url: str, clients: int, seconds: float) -> tuple[float, float, float]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    def worker(i: int) -> None:
        with httpx.Client(timeout=60) as c:
            j = i
            while time.perf_counter() < stop:
                t = time.perf_counter()
                r = c.get(url, params={"q": QUERIES[j % len(QUERIES)], "k": 10})
                r.raise_for_status()
                latencies.append(time.perf_counter() - t)
                j += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return len(latencies) / wall, q[49] * 1000, q[98] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    enc = load_encoder("lite")
    for q in QUERIES:
        enc.encode_texts([q])
    t = time.perf_counter()
    for _ in range(3):
        for q in QUERIES:
            enc.encode_texts([q])
    encode_ms = (time.perf_counter() - t) / (3 * len(QUERIES)) * 1000
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        build(Path(tmp) / "ix", args.items)
        print(f"index of {args.items:,} synthetic items built in {time.perf_counter() - t:.1f}s")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "mmsearch", "serve", "--index", str(Path(tmp) / "ix"),
                                   "--port", str(port)], cwd=ROOT, stderr=subprocess.DEVNULL, env={**os.environ})
        try:
            url = f"http://127.0.0.1:{port}/search"
            for _ in range(600):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            httpx.get(url, params={"q": "warm up"}, timeout=120)
            print(f"bare text encode (1 query, in-process): {encode_ms:.1f} ms")
            for clients in (1, 4, 16):
                qps, p50, p99 = drive(url, clients, args.seconds)
                print(f"{clients:>2} clients: {qps:6.1f} queries/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
