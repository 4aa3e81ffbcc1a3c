#!/usr/bin/env python3
"""Indexing throughput of the whole pipeline vs the bare model forward on the same images.

    python benchmarks/indexing.py [--model SPEC|vit-b-32-random] [--images N] [--runtime auto] [FOLDER]

Default folder: the first N Tux Paint stamps (fetched by data/fetch.py). Prints images/s of
(a) the model forward alone on pre-decoded, pre-processed (uint8) batches, on PyTorch and on the
runtime indexing uses (`--runtime`, chosen and cached before timing), (b) `index_paths` end to
end (scan, hash, decode, preprocess, embed, commit) in a fresh index, its ratio to the bare
forward of the same runtime, and (c) the cost of a second run over the unchanged folder. Same
process, same loaded model, back to back. `vit-b-32-random` is an open_clip ViT-B-32-256 with
random weights (speed does not depend on weight values).
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
sys.path[:0] = [str(ROOT), str(ROOT / "data"), str(ROOT / "benchmarks")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from indexer.decode import load_image  # noqa: E402
from indexer.run import index_paths  # noqa: E402
from retrieval.encoders import load_encoder  # noqa: E402
from retrieval.encoders.pixels import PixelPrep  # noqa: E402
from retrieval.encoders.runtime import pixel_encoder  # noqa: E402
from retrieval.index import Index  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", nargs="?")
    ap.add_argument("--model", default="lite")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--runtime", default="auto")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--processes", action="store_true", help="decode workers in processes, not threads")
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
        if args.model == "vit-b-32-random":
            from rclip_compare import ARCH, random_checkpoint

            args.model = f"open_clip:{ARCH}:{random_checkpoint()}"
        t = time.perf_counter()
        enc = load_encoder(args.model)
        load_s = time.perf_counter() - t
        idx = Index(Path(tmp) / "index", create=True)
        idx.encoder(args.model)
        t = time.perf_counter()
        encode, runtime = pixel_encoder(enc, idx.path, args.runtime, images=len(files))
        choose_s = time.perf_counter() - t
        prep = PixelPrep.of(enc)
        t = time.perf_counter()
        images = [load_image(p, draft=2 * enc.image_size) for p in files]
        decode_ms = (time.perf_counter() - t) / len(files) * 1000
        t = time.perf_counter()
        pixels = np.stack([prep(im) for im in images])  # uint8, as decode workers hand them over
        geometry_ms = (time.perf_counter() - t) / len(files) * 1000
        t = time.perf_counter()
        [enc.preprocess(im) for im in images]
        transform_ms = (time.perf_counter() - t) / len(files) * 1000

        def forward(fn) -> float:
            fn(pixels[: args.batch_size])  # warm-up
            t = time.perf_counter()
            for i in range(0, len(pixels), args.batch_size):
                fn(pixels[i : i + args.batch_size])
            return len(pixels) / (time.perf_counter() - t)

        torch_fwd = forward(prep.torch_encoder(enc))
        fwd = forward(encode) if runtime != "torch" else torch_fwd
        s = index_paths(idx, [str(folder)], args.model, batch_size=args.batch_size, runtime=args.runtime,
                        processes=args.processes, workers=args.workers, progress=False)
        pipeline = s.embedded / s.seconds
        s2 = index_paths(idx, [str(folder)], progress=False)
        print(f"model {enc.identity}, {len(files)} images, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
        print(f"model load                 {load_s:8.2f} s  (+ {choose_s:.1f} s choosing the runtime: {runtime})")
        print(f"decode + resize/crop       {decode_ms:8.2f} + {geometry_ms:.2f} ms an image, one thread "
              f"(the model's whole transform per image, as before batch normalisation: {transform_ms:.2f} ms)")
        print(f"bare forward, PyTorch      {torch_fwd:8.1f} images/s")
        print(f"bare forward, {runtime:12s} {fwd:8.1f} images/s")
        print(f"index pipeline             {pipeline:8.1f} images/s  ({s.embedded} embedded in {s.seconds:.1f} s on {s.runtime}, "
              f"decode workers: {'processes' if s.processes else 'threads'})")
        print(f"pipeline / forward         {pipeline / fwd:8.2f}  (/ PyTorch forward: {pipeline / torch_fwd:.2f})")
        print(f"second run, unchanged      {s2.seconds:8.2f} s  ({s2.unchanged} unchanged, {s2.embedded} embedded)")


if __name__ == "__main__":
    main()
