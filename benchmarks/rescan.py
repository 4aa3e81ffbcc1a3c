#!/usr/bin/env python3
"""A run over an indexed folder where nothing changed: what the scan and plan cost.

    python benchmarks/rescan.py --files 1000000 [--rounds 3] [--dir /big/disk/tmp] [--old TREE]

Makes `--files` empty .jpg files (1,000 a folder) and an index holding them all (8-d vectors and
capture metadata, stored through `commit_batch`, so nothing is embedded or read), then times `mmsearch index FOLDER` on it
in fresh processes: whole wall time and peak RSS. With `--old TREE` (a checkout of another
mmsearch, e.g. `git archive REV mmsearch | tar -x -C TREE`), both are timed, alternated in
rounds, each on an index its own code made. CPU flags printed beside the figures.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gpu  # (its timed: wall, peak RSS and output of a fresh process)
from scale import cpu

ROOT = Path(__file__).resolve().parents[1]

#: made in a process of the tree measured (its own store code): the files' rows and 8-d vectors
SETUP = """
import sys, numpy as np
from mmsearch.indexer.plan import Plan
from mmsearch.indexer.run import Batch, Summary, commit_batch
from mmsearch.indexer.scan import scan
from mmsearch.media.capture import Capture
from mmsearch.retrieval.index import Index
from mmsearch.retrieval.store import set_list, set_meta
root, path = sys.argv[1], sys.argv[2]
idx = Index(path, create=True)
with idx.session() as s:
    for k, v in {"model_spec": "synthetic", "model_identity": "synthetic-8", "dim": "8"}.items():
        set_meta(s, k, v)
    set_list(s, "roots", [root])
    s.commit()
    entries, vec = list(scan([root])), np.ones(8, np.float32) / 8 ** 0.5
    for i in range(0, len(entries), 20_000):
        part = entries[i : i + 20_000]
        files = [(e, f"{hash(e.path) & (2**128 - 1):032x}", [{"kind": "image", "vector": vec}], (8, 8), None) for e in part]
        commit_batch(s, Plan(), Summary(), Batch.of(files, [Capture().with_fallback(e.mtime_ns).__dict__ for e in part]))
idx.faiss_index()
"""


def make_files(root: Path, n: int) -> None:
    for k in range(n):
        folder = root / f"{k // 1000:05}"
        if k % 1000 == 0:
            folder.mkdir(parents=True)
        (folder / f"IMG_{k:08}.jpg").touch()


def timed(tree: Path, *args: str) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, last line of output) of `python -m mmsearch ARGS` run from `tree`."""
    return gpu.timed([sys.executable, "-m", "mmsearch", *args], cwd=tree)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--old", default=None, help="another mmsearch tree to time beside this one")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(dir=a.dir))
    try:
        root = work / "photos"
        t = time.perf_counter()
        make_files(root, a.files)
        trees = {"this": ROOT, **({"old": Path(a.old).resolve()} if a.old else {})}
        for name, tree in trees.items():
            subprocess.run([sys.executable, "-c", SETUP, str(root), str(work / f"index-{name}")], cwd=tree, check=True)
            timed(tree, "index", str(root), "--index", str(work / f"index-{name}"))  # (untimed: the first after the setup)
        print(f"CPU: {cpu()}; {a.files:,} unchanged files (made and indexed in {time.perf_counter() - t:.0f} s)")
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in trees}
        for _ in range(a.rounds):
            for name, tree in trees.items():
                wall, rss, out = timed(tree, "index", str(root), "--index", str(work / f"index-{name}"), "--json")
                summary = json.loads(out)
                assert summary["unchanged"] == a.files and summary["embedded"] == 0, summary
                results[name].append((wall, rss))
                print(f"  {name}: {wall:.2f} s, peak RSS {rss:.0f} MiB", flush=True)
        for name, runs in results.items():
            print(f"{name}: median {statistics.median(w for w, _ in runs):.2f} s, peak RSS {max(r for _, r in runs):.0f} MiB")
        if a.old:
            print("ratios old/this, by round:", [round(o[0] / n[0], 2) for o, n in zip(results["old"], results["this"])])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
