#!/usr/bin/env python3
"""Quality of the bundled `lite` model on held-out sets it was never trained on.

    python benchmarks/lite_quality.py [--model lite|lite:/path/head.safetensors]

Prints text→image and image→text Recall@1/5/10 and MRR on the Tux Paint held-out folders and on
pysiogame, for ConSE alone (no head), the learned head alone (no ConSE), and the shipped
combination; then the encoding throughput and load time of the full model.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "data")]

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mmsearch.retrieval.encoders import load_encoder  # noqa: E402
from mmsearch.retrieval.evaluate import recall_metrics  # noqa: E402
from mmsearch.retrieval.heads import embed, head_for  # noqa: E402
from mmsearch.retrieval.train import _features  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lite")
    args = ap.parse_args()
    out = subprocess.run([sys.executable, str(ROOT / "data/prepare_pairs.py"), "test"], check=True, capture_output=True, text=True).stdout
    files = [line.split()[0] for line in out.splitlines()]
    t = time.perf_counter()
    enc = load_encoder(args.model)
    load_s = time.perf_counter() - t
    head = head_for(enc)
    variants = {
        "ConSE alone": {},
        "head alone": {**enc.head, "conse_weight": torch.tensor(0.0)},
        "shipped": dict(enc.head),
    }
    print(f"model {enc.identity}")
    for f in files:
        img, txt, caps = _features(head, f, progress=False)
        print(f"\n{Path(f).name}: {len(caps)} pairs, {len(set(caps))} distinct captions")
        for name, params in variants.items():
            if name == "head alone" and "img_w" not in params:
                continue
            if name == "ConSE alone":  # raw MiniLM space: ConSE vector vs caption embedding
                i, t_ = img[:, 1280:], txt
                m = recall_metrics(i / (1e-9 + (i**2).sum(1, keepdims=True) ** 0.5), t_, caps)
            else:
                m = recall_metrics(*embed(head, params, img, txt), caps)
            fmt = lambda d: " ".join(f"{k} {v:.3f}" for k, v in d.items())  # noqa: E731
            print(f"  {name:12} text→image {fmt(m['text_to_image'])} | image→text {fmt(m['image_to_text'])}")

    torch.set_num_threads(2)
    imgs = [Image.new("RGB", (400, 300), (i * 7 % 255, 90, 160)) for i in range(64)]
    texts = [f"a photo of thing number {i} on a table" for i in range(256)]
    enc.encode_images(imgs[:8]), enc.encode_texts(texts[:8])

    def per_second(n: int, work) -> float:
        t = time.perf_counter()
        work()
        return n / (time.perf_counter() - t)

    img_s = per_second(64, lambda: [enc.encode_images(imgs[i : i + 32]) for i in (0, 32)])
    txt_s = per_second(256, lambda: [enc.encode_texts(texts[i : i + 32]) for i in range(0, 256, 32)])
    one_ms = 1000 / per_second(20, lambda: [enc.encode_texts(["a dog on a beach"]) for _ in range(20)])
    print(f"\nthroughput (2 threads, batch 32): {img_s:.1f} images/s (incl. preprocessing), {txt_s:.0f} texts/s; "
          f"one short query {one_ms:.1f} ms; model load {load_s:.2f} s")


if __name__ == "__main__":
    main()
