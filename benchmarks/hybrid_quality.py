#!/usr/bin/env python3
"""Semantic vs lexical vs hybrid search on one mixed index, by query type.

    python benchmarks/hybrid_quality.py [--stamps 1000] [--n 200] [--screenshots] [--model lite] [--keep DIR]

The index holds Tux Paint stamps (PNGs only: their .txt captions are held out as descriptions)
and text images from tests/ocr_images.py, indexed with OCR. Three kinds of query, each with one
relevant image:

* name: a word of a stamp's file name found in no other indexed path or image text
  (``giraffe`` for giraffe.png) — what a file-name match should find;
* ocr: a string shown in exactly one text image — what OCR plus the lexical index should find;
* description: a stamp's caption, only where it does not contain the stamp's name words (so it
  is no name query in disguise), and no other stamp has the same caption — what the dense
  model should find.

Reports MRR@10, Recall@1 and Recall@10 per type and overall for --mode semantic, lexical and
hybrid, on a dev half and a test half of the queries (fixed by a hash of the query), so that
fusion settings tuned on dev can be checked on test. Python API (`batch_search`), one process.
Indexing with OCR dominates: 827 images took 20 min on 2 shared cores.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "data"), str(ROOT / "tests")]

import fetch  # noqa: E402
import ocr_images  # noqa: E402
from ocr_images import norm  # noqa: E402

MODES = ("semantic", "lexical", "hybrid")
TYPES = ("name", "ocr", "description")


def name_words(stem: str) -> list[str]:
    """Lower-case words of a file name, camelCase split: dinosaurSings -> dinosaur, sings."""
    return [w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", stem) if len(w) >= 3]


def build(work: Path, stamps: int, n: int, seed: int, shots: bool) -> tuple[Path, list[tuple[str, str, str]]]:
    """The library folder and its (type, query, relevant path) list."""
    lib = work / "lib"
    tux = fetch.fetch("tuxpaint")
    # letters of the alphabets are hundreds of near-identical stamps: left out
    pool = [p for p in sorted(tux.rglob("*.png")) if "alphabets" not in p.parts]
    chosen = pool[:: max(1, len(pool) // stamps)][:stamps]
    copies = {}
    for p in chosen:
        dst = lib / "stamps" / p.relative_to(tux)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dst)  # the PNG only: its caption is the held-out description
        copies[p] = dst
    fonts = fetch.fetch("fonts")
    entries = ocr_images.render_set(lib / "ocr", n, fetch.fetch("photos"), fonts, seed=seed)
    if shots:
        entries += ocr_images.screenshots(lib / "ocr" / "shots", fonts)

    # everything a lexical match could see besides the target: paths and image texts
    paths = {str(d): norm(str(d.relative_to(lib).with_suffix(""))) for d in copies.values()}
    paths.update({e["path"]: norm(Path(e["path"]).stem) for e in entries})
    texts = {e["path"]: norm("\n".join(e["lines"])) for e in entries}
    prefix = norm(str(lib))

    def unique(q: str, target: str) -> bool:
        if re.search(r"\s[+-]\s", q) or q.lstrip().startswith("@"):
            return False  # mmsearch would read it as a fused query (`a + b - c`, `@file`)
        q = norm(q)
        return q not in prefix and not any(q in t for p, t in [*paths.items(), *texts.items()] if p != target)

    queries = []
    captions = {p: p.with_suffix(".txt").read_text(encoding="utf-8", errors="replace").splitlines()[0].strip()
                for p in chosen if p.with_suffix(".txt").exists()}
    repeated = Counter(captions.values())
    for p, dst in copies.items():
        words = name_words(p.stem)
        names = sorted((w for w in words if unique(w, str(dst))), key=len, reverse=True)
        if names:
            queries.append(("name", names[0], str(dst)))
        cap = captions.get(p)
        if cap and repeated[cap] == 1 and not any(w in norm(cap) for w in words):
            queries.append(("description", cap, str(dst)))
    queries += [("ocr", q, e["path"]) for e in entries for q in e["queries"] if unique(q, e["path"])]
    return lib, queries


def split_of(kind: str, query: str) -> str:
    return "dev" if hashlib.sha1(f"{kind}\t{query}".encode()).digest()[0] % 2 == 0 else "test"


def scores(ranks: list[int | None]) -> str:
    n = len(ranks)
    mrr = sum(1 / (r + 1) for r in ranks if r is not None) / n
    return f"{mrr:5.3f} {sum(r == 0 for r in ranks) / n:5.3f} {sum(r is not None for r in ranks) / n:5.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stamps", type=int, default=1000, help="Tux Paint stamps in the index (default: all 627 that are no letters)")
    ap.add_argument("--n", type=int, default=200, help="rendered text images in the index")
    ap.add_argument("--screenshots", action="store_true", help="also the Chromium screenshots")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="lite")
    ap.add_argument("--keep", type=Path, help="work in this (new) folder and keep it")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="hybrid-quality-"))
    work.mkdir(parents=True, exist_ok=not args.keep)
    os.environ["MMSEARCH_CACHE"] = str(work / "cache")  # a first-time user's cache, not yours
    from mmsearch import SearchIndex

    try:
        lib, queries = build(work, args.stamps, args.n, args.seed, args.screenshots)
        t = time.perf_counter()
        idx = SearchIndex(work / "index", create=True)
        idx.add([str(lib)], ocr=True, model=args.model)
        files = sum(1 for p in lib.rglob("*") if p.is_file())
        print(f"indexed {files} images (model {args.model}, --ocr) in {time.perf_counter() - t:.0f} s; queries: "
              + ", ".join(f"{k} {sum(q[0] == k for q in queries)}" for k in TYPES))

        ranks = {}  # (mode, query index) -> 0-based rank of the relevant image among distinct paths, or None
        for mode in MODES:
            results = idx.batch_search([q for _, q, _ in queries], mode=mode, k=10)
            for i, ((_, _, target), hits) in enumerate(zip(queries, results)):
                paths = list(dict.fromkeys(os.path.realpath(h.path) for h in hits))  # a file may come back twice
                target = os.path.realpath(target)
                ranks[mode, i] = paths.index(target) if target in paths else None

        print(f"\n{'':22}" + " | ".join(f"{m:^17}" for m in MODES))
        print(f"{'split type':17} {'n':>4}" + " | ".join(["  MRR   R@1  R@10"] * len(MODES)))
        for split in ("dev", "test"):
            for kind in (*TYPES, "all"):
                pick = [i for i, (k, q, _) in enumerate(queries) if split_of(k, q) == split and kind in (k, "all")]
                if pick:
                    print(f"{split:5} {kind:11} {len(pick):>5} " + " | ".join(scores([ranks[m, i] for i in pick]) for m in MODES))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
