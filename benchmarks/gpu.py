#!/usr/bin/env python3
"""Indexing on a CUDA GPU, as a user pays it: fresh `mmsearch index` processes, whole wall time.

    python benchmarks/gpu.py [--images 6000] [--cpu-images 1000] [--model SPEC|vit-b-32-random]

Makes `--images` distinct photos (JPEG, 640×480 crops, flips and tints of the scikit-image
photos: a phone-sized decode per image) and indexes them into fresh indexes, each run with an
empty model cache (a first-time user's) and again with the cache it left (exports made): `--runtime
auto` (which takes the GPU) with the default decode workers (one per CPU), then, warm, with 4 (the
CPU runtimes' default); then the CPU's own choice (the GPU hidden with
CUDA_VISIBLE_DEVICES="") on `--cpu-images` of them, first and second. Then, in this process, the
parts apart (`in_process`). Prints the GPU, the CPU's model and vector flags after the figures.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "data"), str(ROOT / "benchmarks")]

import numpy as np  # noqa: E402


def photo(args: tuple[Path, int, Path]) -> None:
    """Photo `i`: a 640×480 crop of one of the sources, flipped and tinted by `i`."""
    from PIL import Image, ImageOps

    src, i, out = args
    rng = np.random.default_rng(i)
    im = Image.open(src).convert("RGB")
    im = im.resize((max(800, im.width), max(600, im.height)))
    x, y = int(rng.integers(0, im.width - 640 + 1)), int(rng.integers(0, im.height - 480 + 1))
    im = im.crop((x, y, x + 640, y + 480))
    im = ImageOps.mirror(im) if i % 2 else im
    tint = np.asarray(im, np.float32) * rng.uniform(0.8, 1.2, 3)
    Image.fromarray(np.clip(tint, 0, 255).astype(np.uint8)).save(out / f"p{i:06d}.jpg", quality=90)


def make_photos(n: int, out: Path) -> Path:
    import fetch

    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in fetch.fetch("photos").iterdir() if p.suffix in (".png", ".jpg"))
    with ProcessPoolExecutor() as pool:
        list(pool.map(photo, [(sources[i % len(sources)], i, out) for i in range(n)], chunksize=64))
    return out


def timed(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, last line of output) of a fresh process; its RSS from wait4,
    not from /usr/bin/time as rclip_compare.timed reads it: nothing can be installed on a lent
    GPU machine, and its image's listing does not name that program."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd, text=True)
    out = p.stdout.read() if p.stdout else ""
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out}")
    return time.perf_counter() - t, usage.ru_maxrss / 1024, out.strip().splitlines()[-1]


def machine() -> str:
    """The GPU, the CPU and its vector flags (as rclip_compare.py prints them), torch's version."""
    import torch
    from rclip_compare import cpu_flags  # (imports torch: asked after the timed runs)

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{gpu}; {cpu_flags()}; torch {torch.__version__}"


def in_process(spec: str, folder: Path, workers: list[int], n: int = 3000, batch: int = 32) -> None:
    """In this process, the parts of a run apart: loading the model, the GPU copy's first batch,
    the bare GPU forward on pre-decoded uint8 batches, and the decode + embed pipeline
    (`embed.embedded`, no store) with each count of decode threads."""
    import torch

    from mmsearch.indexer.embed import embedded
    from mmsearch.indexer.options import IndexOptions
    from mmsearch.indexer.scan import Entry
    from mmsearch.media.image import load_image
    from mmsearch.retrieval.encoders import load_encoder
    from mmsearch.retrieval.encoders.runtime import cuda_encoder

    t = time.perf_counter()
    enc = load_encoder(spec)
    encode = cuda_encoder(enc)
    loaded = time.perf_counter() - t
    files = sorted(folder.iterdir())[:n]
    pixels = np.stack([enc.pixel_prep(load_image(p)) for p in files[:1024]])
    t = time.perf_counter()
    encode(pixels[:batch])
    first = time.perf_counter() - t
    encode.many([pixels[:batch]] * 4)
    torch.cuda.synchronize()
    t = time.perf_counter()
    encode.many([pixels[i : i + batch] for i in range(0, len(pixels), batch)])
    bare = len(pixels) / (time.perf_counter() - t)
    print(f"in process: model loaded in {loaded:.1f}s, first GPU batch (copy, CUDA start) {first:.1f}s, "
          f"bare GPU forward {bare:.0f} images/s (batches of {batch}, float32)", flush=True)
    todo = [(Entry(str(p), "image", p.stat().st_size, p.stat().st_mtime_ns), "") for p in files]
    for w in workers:
        t = time.perf_counter()
        for _ in embedded(todo, enc, IndexOptions(), batch_size=batch, workers=w, progress=False, encode_pixels=encode):
            pass
        rate = len(todo) / (time.perf_counter() - t)
        print(f"in process: decode + embed, {w} decode threads: {rate:.0f} images/s = {rate / bare:.2f} × the bare forward", flush=True)


def random_vit(folder: Path) -> str:
    """A random-weight ViT-B-32-256 checkpoint (seed 0), written by a child: this process stays
    small, for the peak RSS of the runs it forks (`ru_maxrss` counts a child from its fork)."""
    ckpt = folder / "vit-b-32-256-random.pt"
    subprocess.run([sys.executable, "-c", "import open_clip, sys, torch; torch.manual_seed(0); torch.save({'state_dict': "
                    "open_clip.create_model('ViT-B-32-256', pretrained=None).state_dict()}, sys.argv[1])", str(ckpt)], check=True)
    return f"open_clip:ViT-B-32-256:{ckpt}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--cpu-images", type=int, default=1000, help="0: no CPU runs")
    ap.add_argument("--model", default="vit-b-32-random")
    ap.add_argument("--threads", action=argparse.BooleanOptionalAction, default=True, help="the warm GPU run with 4 decode threads")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = random_vit(root) if args.model == "vit-b-32-random" else args.model
        t = time.perf_counter()
        photos = make_photos(args.images, root / "photos")
        print(f"{args.images} photos made in {time.perf_counter() - t:.1f}s", flush=True)
        few = root / "few"
        few.mkdir()
        for p in sorted(photos.iterdir())[: args.cpu_images]:
            os.link(p, few / p.name)
        cpus = os.cpu_count() or 1
        hidden = {"CUDA_VISIBLE_DEVICES": ""}
        # (name, folder, extra arguments, environment, cache: a new one empty, else the last one's)
        runs: list[tuple[str, Path, list[str], dict[str, str], str]] = [
            ("GPU first index", photos, [], {}, "new"), ("GPU second index", photos, [], {}, "last")]
        if args.threads:
            runs.append(("GPU second index, 4 decode threads", photos, ["--workers", "4"], {}, "last"))
        if args.cpu_images:
            runs += [("CPU first index (GPU hidden)", few, [], hidden, "new"), ("CPU second index (GPU hidden)", few, [], hidden, "last")]
        cache = root / "cache"
        for i, (name, folder, extra, env, fresh) in enumerate(runs):
            n = len(os.listdir(folder))
            cache = root / f"cache-{i}" if fresh == "new" else cache
            cmd = [sys.executable, "-m", "mmsearch", "index", str(folder), "--index", str(root / f"ix-{i}"), "--model", spec, *extra]
            wall, rss, last = timed(cmd, {**os.environ, "MMSEARCH_CACHE": str(cache), **env})
            print(f"{name}: {n} images in {wall:.1f}s wall = {n / wall:.0f} images/s, peak RSS {rss:.0f} MB | {last}", flush=True)
        if os.environ.get("PROFILE_OUT"):  # the warm GPU run once more, under py-spy (its time is py-spy's, not reported)
            cmd = [sys.executable, "-m", "mmsearch", "index", str(photos), "--index", str(root / "ix-profiled"), "--model", spec]
            subprocess.run(["py-spy", "record", "--nonblocking", "--threads", "-f", "raw", "-r", "100",
                            "-o", os.environ["PROFILE_OUT"], "--", *cmd], env={**os.environ, "MMSEARCH_CACHE": str(root / "cache-0")})
        in_process(spec, photos, [4, cpus])
        print(machine())


if __name__ == "__main__":
    main()
