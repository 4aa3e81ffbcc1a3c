#!/usr/bin/env python3
"""Indexing throughput of the whole pipeline vs the bare model forward on the same images.

    python benchmarks/indexing.py [--model SPEC|vit-b-32-random] [--images N] [--runtime auto] [FOLDER]

Default folder: the first N Tux Paint stamps (fetched by data/fetch.py). Prints images/s of
(a) the model forward alone on pre-decoded, pre-processed (uint8) batches, on PyTorch and on the
runtime indexing uses (`--runtime`, chosen and cached before timing), (b) `index_paths` end to
end (scan, hash, decode, preprocess, embed, commit, build the FAISS index) in a fresh index, and
its steady rate: the difference from a run on a quarter of the images, which pays the same
start-up (sessions' first runs, the first batch's decoding) — the rate a large collection sees;
both as ratios to the bare forward of the same runtime, the mean of forwards measured right
before and right after them (these machines drift by ±10% within minutes; the bracket cancels a
steady drift), for `--rounds` rounds, and the median round is reported; (c) the cost of a
second run over the unchanged folder. Same process, same loaded model. `vit-b-32-random` is an
open_clip ViT-B-32-256 with random weights (speed does not depend on weight values).
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

from mmsearch.indexer.options import IndexOptions  # noqa: E402
from mmsearch.indexer.run import index_paths  # noqa: E402
from mmsearch.media.image import load_image  # noqa: E402
from mmsearch.retrieval.encoders import load_encoder  # noqa: E402
from mmsearch.retrieval.encoders.pixels import PixelEncoder  # noqa: E402
from mmsearch.retrieval.encoders.runtime import export_for_queries, pixel_encoder  # noqa: E402
from mmsearch.retrieval.index import Index  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", nargs="?")
    ap.add_argument("--model", default="lite")
    ap.add_argument("--images", type=int, default=768)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--runtime", default="auto")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--processes", action="store_true", help="decode workers in processes, not threads")
    ap.add_argument("--rounds", type=int, default=5, help="forward + pipeline measurements; the median is reported")
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
        t = time.perf_counter()  # the runtime is chosen once, in the model's cache folder
        encode, runtime = pixel_encoder(enc, runtime=args.runtime, images=len(files))
        choose_s = time.perf_counter() - t
        export_for_queries(enc)  # one-time too: index runs find it sealed
        prep = enc.pixel_prep
        t = time.perf_counter()
        images = [load_image(p, draft=2 * enc.image_size) for p in files]
        decode_ms = (time.perf_counter() - t) / len(files) * 1000
        t = time.perf_counter()
        pixels = np.stack([prep(im) for im in images])  # uint8, as decode workers hand them over
        geometry_ms = (time.perf_counter() - t) / len(files) * 1000
        t = time.perf_counter()
        [enc.transform(im) for im in images]
        transform_ms = (time.perf_counter() - t) / len(files) * 1000

        def forward(encode: PixelEncoder, n: int = len(pixels)) -> float:
            batches = [pixels[i : min(i + args.batch_size, n)] for i in range(0, n, args.batch_size)]
            encode.many(batches[: encode.lanes])  # warm-up, every lane
            t = time.perf_counter()
            encode.many(batches)
            return n / (time.perf_counter() - t)

        def pipeline(root: Path, name: str):
            """index_paths on `root` in a fresh index, on the runtime chosen above: named, not
            `auto`, since `auto` embeds a job under 200 images on another runtime when bf16 is
            chosen (the quarter run then measured the query export's fp32 tower)."""
            index = Index(Path(tmp) / name, create=True)
            index.use_model(args.model)
            opts = IndexOptions.of(model=args.model, batch_size=args.batch_size, runtime=runtime,
                                   processes=args.processes, **({"workers": args.workers} if args.workers else {}))
            return index_paths(index, [str(root)], opts)

        torch_fwd = forward(prep.torch_encoder(enc), min(len(pixels), 128))  # a reference: it is slow
        part = Path(tmp) / "part"  # a quarter of the images
        part.mkdir()
        for p in files[: len(files) // 4]:
            shutil.copy2(p, part / f"{len(os.listdir(part))}{p.suffix}")
        rounds = []
        bare = [forward(encode) if runtime != "torch" else torch_fwd]
        for r in range(args.rounds):  # pipelines between two forwards, round after round: these machines drift
            s, s_part = pipeline(folder, f"full{r}"), pipeline(part, f"part{r}")
            bare.append(forward(encode) if runtime != "torch" else torch_fwd)
            fwd = (bare[-2] + bare[-1]) / 2  # the forward rate at the pipelines' time, to first order
            rate, steady = s.embedded / s.seconds, (s.embedded - s_part.embedded) / (s.seconds - s_part.seconds)
            rounds.append((fwd, rate, steady, s, s_part))
        fwd, rate, steady, s, s_part = sorted(rounds, key=lambda x: x[2] / x[0])[len(rounds) // 2]  # the median round
        s2 = index_paths(Index(Path(tmp) / "full0"), [str(folder)], IndexOptions())
        from rclip_compare import cpu_flags

        print(f"model {enc.identity}, {len(files)} images, torch threads {torch.get_num_threads()}; {cpu_flags()}")
        print(f"model load                 {load_s:8.2f} s  (+ {choose_s:.1f} s choosing the runtime: {runtime})")
        print(f"decode + resize/crop       {decode_ms:8.2f} + {geometry_ms:.2f} ms an image, one thread "
              f"(the model's own transform per image: geometry, to-tensor, normalise: {transform_ms:.2f} ms)")
        print(f"bare forward, PyTorch      {torch_fwd:8.1f} images/s")
        for i, (f, r, st, _, _) in enumerate(rounds):
            print(f"round {i + 1}: forward {f:5.1f} (mean of before and after), pipeline {r:5.1f} ({r / f:.2f} ×), steady {st:5.1f} ({st / f:.2f} ×) images/s")
        print("median round (by steady ratio):")
        print(f"bare forward, {runtime:12s} {fwd:8.1f} images/s  ({encode.lanes} batches at a time)")
        print(f"index pipeline             {rate:8.1f} images/s  ({s.embedded} embedded in {s.seconds:.1f} s on {s.runtime}, "
              f"decode workers: {'processes' if s.processes else 'threads'})")
        print(f"  steady rate              {steady:8.1f} images/s  (less a run on {s_part.embedded} of them: {s_part.seconds:.1f} s)")
        print(f"pipeline / forward         {rate / fwd:8.2f}  end to end, {steady / fwd:.2f} steady "
              f"(/ PyTorch forward: {rate / torch_fwd:.2f}, {steady / torch_fwd:.2f})")
        print(f"second run, unchanged      {s2.seconds:8.2f} s  ({s2.unchanged} unchanged, {s2.embedded} embedded)")


if __name__ == "__main__":
    main()
