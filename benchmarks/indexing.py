#!/usr/bin/env python3
"""Indexing throughput of the whole pipeline vs the bare model forward on the same images.

    python benchmarks/indexing.py [--model SPEC] [--images N] [FOLDER]

Default folder: the first N Tux Paint stamps (fetched by data/fetch.py). Prints images/s of
(a) the model forward alone on pre-decoded, pre-processed batches, (b) `index_paths` end to end
(scan, hash, decode, preprocess, embed, commit) in a fresh index, their ratio, and (c) the cost
of a second run over the unchanged folder. Same process, same loaded model, back to back.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "data")]

import torch  # noqa: E402

from indexer.decode import load_image  # noqa: E402
from indexer.run import index_paths  # noqa: E402
from retrieval.encoders import load_encoder  # noqa: E402
from retrieval.index import Index  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", nargs="?")
    ap.add_argument("--model", default="lite")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.folder:
            folder = Path(args.folder)
        else:
            import fetch

            folder = Path(tmp) / "images"
            folder.mkdir()
            for p in sorted(fetch.fetch("tuxpaint").rglob("*.png"))[: args.images]:
                shutil.copy2(p, folder / f"{p.parent.name}-{p.name}")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        t = time.perf_counter()
        enc = load_encoder(args.model)
        load_s = time.perf_counter() - t
        pixels = [enc.preprocess(load_image(p)) for p in files]
        enc.encode_pixels(torch.stack(pixels[: args.batch_size]))  # warm-up
        t = time.perf_counter()
        for i in range(0, len(pixels), args.batch_size):
            enc.encode_pixels(torch.stack(pixels[i : i + args.batch_size]))
        forward = len(pixels) / (time.perf_counter() - t)

        idx = Index(Path(tmp) / "index", create=True)
        s = index_paths(idx, [str(folder)], args.model, batch_size=args.batch_size, progress=False)
        pipeline = s.embedded / s.seconds
        s2 = index_paths(idx, [str(folder)], progress=False)
        print(f"model {enc.identity}, {len(files)} images, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
        print(f"model load                 {load_s:8.2f} s")
        print(f"bare forward               {forward:8.1f} images/s")
        print(f"index pipeline             {pipeline:8.1f} images/s  ({s.embedded} embedded in {s.seconds:.1f} s)")
        print(f"pipeline / forward         {pipeline / forward:8.2f}")
        print(f"second run, unchanged      {s2.seconds:8.2f} s  ({s2.unchanged} unchanged, {s2.embedded} embedded)")


if __name__ == "__main__":
    main()
