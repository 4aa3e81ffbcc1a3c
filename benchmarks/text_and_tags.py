#!/usr/bin/env python3
"""Image→text recall, zero-shot tag accuracy, and early vs late fusion, with a given model.

    python benchmarks/text_and_tags.py [--model lite]

1. Image→text: the Tux Paint held-out stamps are indexed with their captions as sidecar .txt
   files; each image searches `--type text`; a hit is a text equal to its own caption.
2. Tags: pysiogame's 585 drawings are tagged with its 12 category names; accuracy of the top tag.
3. Fusion: two-part queries for pysiogame drawings (the drawing's name + its category, both
   describing the same target): Recall@1/5/10 of each part alone, early and late fusion.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "data")]

import pandas as pd  # noqa: E402

from mmsearch.indexer.options import IndexOptions  # noqa: E402
from mmsearch.indexer.run import index_paths  # noqa: E402
from mmsearch.retrieval.index import Index  # noqa: E402
from mmsearch.retrieval.request import SearchRequest  # noqa: E402
from mmsearch.retrieval.search import Filters, Part, fused_search, search  # noqa: E402
from mmsearch.retrieval.tags import tag_files  # noqa: E402


def recall(ranks: list[int | None], ks=(1, 5, 10)) -> str:
    return " ".join(f"R@{k} {sum(r is not None and r < k for r in ranks) / len(ranks):.3f}" for k in ks)


def image_to_text(model: str, tmp: Path, pairs: pd.DataFrame) -> None:
    lib = tmp / "tux"
    lib.mkdir()
    for i, (img, cap) in enumerate(zip(pairs["image"], pairs["caption"])):
        (lib / f"{i:04}.png").symlink_to(img)
        (lib / f"{i:04}.txt").write_text(cap + "\n")
    idx = Index(tmp / "tux-index", create=True)
    index_paths(idx, [str(lib)], IndexOptions(model=model))
    enc = idx.encoder()
    ranks = []
    for i, cap in enumerate(pairs["caption"]):
        from mmsearch.media.image import load_image

        v = enc.encode_images([load_image(lib / f"{i:04}.png")])[0]
        texts = [h.text for h in search(idx, v, k=10, filters=Filters(kinds={"text"}))]
        ranks.append(texts.index(cap) if cap in texts else None)
    print(f"image→text on {len(ranks)} held-out Tux Paint stamps (captions as sidecar texts): {recall(ranks)}")


def tags_and_fusion(model: str, tmp: Path, pysio: pd.DataFrame) -> None:
    root = Path(pysio["image"][0]).parents[1]
    idx = Index(tmp / "pysio-index", create=True)
    index_paths(idx, [str(root)], IndexOptions(model=model))
    categories = sorted(p.name for p in root.iterdir() if p.is_dir())
    labels = [c.replace("_n_", " and ").replace("_", " ") for c in categories]
    result = tag_files(idx, labels, prompt="a drawing of {}", threshold=1.0)
    truth = {str(p): labels[categories.index(Path(p).parent.name)] for p in pysio["image"]}
    hits = sum(r["tags"][0]["label"] == truth[r["path"]] for r in result if r["path"] in truth)
    print(f"zero-shot tags: top tag = pysiogame category for {hits}/{len(result)} drawings "
          f"({hits / len(result):.3f}; chance {1 / len(labels):.3f})")

    runs = {"name alone": [], "category alone": [], "early": [], "late": []}
    for img, cap in zip(pysio["image"], pysio["caption"]):
        name = Part(text=cap)
        cat = Part(text=f"a drawing of {truth[img]}")
        for key, parts, fusion in (("name alone", [name], "early"), ("category alone", [cat], "early"),
                                   ("early", [name, cat], "early"), ("late", [name, cat], "late")):
            paths = [h.path for h in fused_search(idx, parts, SearchRequest(k=10, fusion=fusion, kind="image"))]
            runs[key].append(paths.index(img) if img in paths else None)
    for key, ranks in runs.items():
        print(f"  two-part queries, {key:15} {recall(ranks)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lite")
    args = ap.parse_args()
    out = subprocess.run([sys.executable, str(ROOT / "data/prepare_pairs.py"), "test"], check=True, capture_output=True, text=True).stdout
    files = {Path(line.split()[0]).name: line.split()[0] for line in out.splitlines()}
    with tempfile.TemporaryDirectory() as tmp:
        image_to_text(args.model, Path(tmp), pd.read_csv(files["tux_test.csv"]))
        tags_and_fusion(args.model, Path(tmp), pd.read_csv(files["pysio_test.csv"]))


if __name__ == "__main__":
    main()
