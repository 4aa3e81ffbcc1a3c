#!/usr/bin/env python3
"""OCR while indexing: what it costs, and whether lexical and hybrid search find text in images.

    python benchmarks/ocr_quality.py [--n 200] [--no-screenshots] [--keep DIR] [--model lite]
    python benchmarks/ocr_quality.py --raw [--engine rapidocr_onnxruntime]   # OCR alone: time, found-rate

The set comes from tests/ocr_images.py: n rendered images (English and ~30 % Chinese text, 12-72
px, plain, gradient and photo backgrounds, some rotated) plus screenshots of web pages in headless
Chromium. Each query is a string shown in exactly one image; that image is the one relevant hit.

1. `mmsearch index` in fresh processes, without and with `--ocr` (fresh indexes, one temporary
   MMSEARCH_CACHE warmed beforehand so that model exports are not timed): wall time, slowdown,
   OCR seconds per image.
2. Every query with `--mode lexical` and `--mode hybrid`: rank-1 and MRR@10, overall and split
   English / Chinese / screenshot. Through `mmsearch search --queries FILE --mode M` when the CLI
   has --mode, else `SearchIndex(dir).search(q, mode=M, k=10)` in this process.

--raw measures OCR alone (mmsearch's call, or rapidocr_onnxruntime's defaults with --engine):
per-image time (mean, p50, p90; wall and CPU) and the share of queries found in
their image's OCR text, exactly and after `norm` (NFKC, lower case, no whitespace or punctuation:
the lexical index's matching), split by language, size, background, rotation; lists the misses.

Both take ~5 min on 2 cores (OCR ~1 s per image), plus ~1 min to build the set.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "data"), str(ROOT / "tests")]

import fetch  # noqa: E402
import numpy as np  # noqa: E402
import ocr_images  # noqa: E402
from ocr_images import norm  # noqa: E402

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8")
MODES = ("lexical", "hybrid")


def cpu_line() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    return f"CPU: {model}, {os.cpu_count()} cores, flags: {' '.join(f for f in CPU_FLAGS if f in flags) or 'none of ' + str(CPU_FLAGS)}"


def build(work: Path, n: int, seed: int, shots: bool) -> tuple[Path, list[dict]]:
    """The image folder and its manifest (also written to work/manifest.json, outside the folder)."""
    lib = work / "lib"
    fonts = fetch.fetch("fonts")
    entries = ocr_images.render_set(lib, n, fetch.fetch("photos"), fonts, seed=seed)
    if shots:
        entries += ocr_images.screenshots(lib / "shots", fonts)
    bad = ocr_images.clashes(entries)
    if bad:
        sys.exit(f"queries not unique to one image: {bad[:5]}")
    (work / "manifest.json").write_text(json.dumps(entries, ensure_ascii=False, indent=1), encoding="utf-8")
    return lib, entries


def group(e: dict) -> str:
    return "screenshot" if e["kind"] == "screenshot" else e["lang"]


def pct(xs) -> str:
    return f"{100 * sum(xs) / len(xs):5.1f} % of {len(xs)}" if xs else "-"


# -- raw RapidOCR -----------------------------------------------------------------------------
# characters RapidOCR's recogniser confuses in Latin words ("c0de", "Tab1e", "INVOlCE"): folding
# them on both sides is one possible remedy, measured here as a what-if
CONFUSABLE = str.maketrans({"0": "o", "1": "l", "i": "l"})


def ocr_engine(name: str):
    """image -> (text lines, [det, cls, rec] seconds or None). "mmsearch": what indexing runs
    (its RapidOCR settings, scaling and score filter); "rapidocr_onnxruntime": that package's
    defaults, with the time of each stage."""
    if name == "mmsearch":
        from mmsearch.media.ocr import read_text

        return lambda img: ([line.text for line in read_text(img)], None)
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR()

    def run(img):
        result, elapse = engine(np.asarray(img))
        return [r[1] for r in result or []], elapse or [0, 0, 0]
    return run


def raw(entries: list[dict], work: Path, engine_name: str) -> None:
    from PIL import Image

    engine = ocr_engine(engine_name)
    engine(Image.new("RGB", (64, 64), "white"))  # the first call loads the models: not timed
    texts, times, cpu, stages = [], [], [], []
    for e in entries:
        img = Image.open(e["path"]).convert("RGB")
        t, c = time.perf_counter(), time.process_time()
        lines, elapse = engine(img)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)  # all threads: the cost, whatever else runs on the machine
        stages.append(elapse)
        texts.append(lines)
    (work / "raw_ocr.json").write_text(json.dumps([{"path": e["path"], "ocr": t, "seconds": s} for e, t, s in zip(entries, texts, times)],
                                                  ensure_ascii=False, indent=1), encoding="utf-8")
    for kind in ("rendered", "screenshot"):
        pick = [i for i, e in enumerate(entries) if e["kind"] == kind]
        if pick:
            ts = np.array([times[i] for i in pick])
            split = "" if stages[0] is None else "; det / cls / rec {:.3f} / {:.3f} / {:.3f} s".format(
                *np.array([stages[i] for i in pick], dtype=float).mean(0))
            print(f"{engine_name} OCR per {kind} image (n={len(pick)}): wall mean {ts.mean():.3f} s, "
                  f"p50 {np.percentile(ts, 50):.3f} s, p90 {np.percentile(ts, 90):.3f} s; "
                  f"CPU {np.mean([cpu[i] for i in pick]):.3f} s{split}")

    flat = [norm("".join(t)) for t in texts]
    rows = []  # (entry, query, exact, phrase, all words, phrase with confusables folded, ambiguous)
    for i, (e, t) in enumerate(zip(entries, texts)):
        for q in e["queries"]:
            phrase = norm(q) in flat[i]
            words = all(norm(w) in flat[i] for w in q.split())  # the lexical index ANDs the words
            folded = norm(q).translate(CONFUSABLE) in flat[i].translate(CONFUSABLE)
            ambiguous = any(norm(q) in f for j, f in enumerate(flat) if j != i)
            rows.append((e, q, q in "\n".join(t), phrase, words, folded, ambiguous))
    splits = {
        "all": lambda e: "all", "group": group, "kind": lambda e: e["kind"],
        "size": lambda e: "web" if e["kind"] == "screenshot" else ("12-16" if e["size"] <= 16 else "18-24" if e["size"] <= 24 else "28-40" if e["size"] <= 40 else "48-72"),
        "background": lambda e: e["background"].split(":")[0] + ("/" + e["style"] if e["background"].startswith("photo") else ""),
        "rotated": lambda e: "rotated" if e["angle"] else "straight", "format": lambda e: e["format"],
    }
    print("\nqueries found in their image's OCR text:  exact | normalised | every word, normalised | "
          "normalised, confusables folded")
    for name, key in splits.items():
        by = defaultdict(list)
        for r in rows:
            by[key(r[0])].append(r)
        for k in sorted(by):
            print(f"  {name:10} {k:16} " + " | ".join(pct([r[c] for r in by[k]]) for c in (2, 3, 4, 5)))
    print(f"queries also found in another image's OCR text: {sum(r[6] for r in rows)}")
    print("\nmisses (normalised):")
    for e, q, _, phrase, words, _, _ in rows:
        if not phrase:
            print(f"  {Path(e['path']).name} {e['lang']} size {e.get('size', e.get('query_tags'))} {e['background']}/{e['style']} "
                  f"angle {e['angle']} {e['format']}: {q!r}{' (every word found)' if words else ''}; "
                  f"OCR: {' | '.join(texts[entries.index(e)])[:120]!r}")


# -- through mmsearch -------------------------------------------------------------------------
def mmsearch(*args: str, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "mmsearch", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode:
        sys.exit(f"mmsearch {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def timed_index(lib: Path, idx: Path, env: dict, model: str, ocr: bool) -> float:
    t = time.perf_counter()
    mmsearch("index", "--index", str(idx), "--model", model, *(["--ocr"] if ocr else []), str(lib), env=env)
    return time.perf_counter() - t


def search_paths(idx: Path, queries: list[str], mode: str, env: dict, via_cli: bool) -> list[list[str]]:
    """The hit paths of every query, best first (k=10)."""
    if via_cli:
        qfile = idx.parent / f"queries-{mode}.txt"
        qfile.write_text("\n".join(queries) + "\n", encoding="utf-8")
        out = mmsearch("search", "--index", str(idx), "--queries", str(qfile), "--mode", mode, "-k", "10", "--json", env=env)
        lines = [json.loads(ln) for ln in out.stdout.splitlines() if ln.strip()]
        assert [ln["query"] for ln in lines] == queries, "one JSON line per query, in order"
        return [[h["path"] for h in ln["results"]] for ln in lines]
    from mmsearch import SearchIndex

    index = SearchIndex(idx)
    return [[h.path for h in index.search(q, mode=mode, k=10)] for q in queries]


def rank_of(path: str, hits: list[str]) -> int | None:
    """0-based rank of `path` among the distinct hit paths (a file may come back more than once)."""
    distinct = list(dict.fromkeys(os.path.realpath(h) for h in hits))
    target = os.path.realpath(path)
    return distinct.index(target) if target in distinct else None


def through_mmsearch(work: Path, lib: Path, entries: list[dict], model: str) -> None:
    env = {**os.environ, "MMSEARCH_CACHE": str(work / "cache")}
    os.environ["MMSEARCH_CACHE"] = env["MMSEARCH_CACHE"]  # for the in-process fallback
    warm = work / "warm"
    warm.mkdir()
    shutil.copy2(entries[0]["path"], warm)
    timed_index(warm, work / "index-warm", env, model, ocr=True)  # model exports, runtime choice: cached now

    images = len(entries)
    plain = timed_index(lib, work / "index-plain", env, model, ocr=False)
    ocr = timed_index(lib, work / "index-ocr", env, model, ocr=True)
    print(f"mmsearch index, {images} images, model {model}: without OCR {plain:.1f} s, with --ocr {ocr:.1f} s "
          f"(x{ocr / plain:.1f}; OCR {(ocr - plain) / images:.2f} s per image)")

    via_cli = "--mode" in mmsearch("search", "--help", env=env).stdout
    print(f"searching through {'mmsearch search --queries' if via_cli else 'SearchIndex.search (the CLI has no --mode)'}")
    pairs = [(e, q) for e in entries for q in e["queries"]]
    for mode in MODES:
        hits = search_paths(work / "index-ocr", [q for _, q in pairs], mode, env, via_cli)
        by = defaultdict(list)
        for (e, _), h in zip(pairs, hits):
            r = rank_of(e["path"], h)
            by["all"].append(r)
            by[group(e)].append(r)
        for g in ("all", "en", "zh", "screenshot"):
            rs = by[g]
            if rs:
                print(f"  --mode {mode:8} {g:10} rank-1 {sum(r == 0 for r in rs) / len(rs):.3f}  "
                      f"MRR@10 {sum(1 / (r + 1) for r in rs if r is not None) / len(rs):.3f}  (n={len(rs)})")
        misses = [(Path(e["path"]).name, q) for (e, q), h in zip(pairs, hits) if rank_of(e["path"], h) != 0]
        print(f"  --mode {mode}: not at rank 1: {misses[:20]}{' ...' if len(misses) > 20 else ''}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="rendered images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-screenshots", action="store_true", help="skip the Chromium screenshots")
    ap.add_argument("--model", default="lite")
    ap.add_argument("--raw", action="store_true", help="only OCR on the set, no index or search")
    ap.add_argument("--engine", choices=("mmsearch", "rapidocr_onnxruntime"), default="mmsearch",
                    help="--raw: mmsearch's own OCR call, or rapidocr_onnxruntime's defaults")
    ap.add_argument("--keep", type=Path, help="work in this (new) folder and keep it: images, manifest.json, indexes")
    args = ap.parse_args()

    print(cpu_line())
    work = args.keep or Path(tempfile.mkdtemp(prefix="ocr-quality-"))
    work.mkdir(parents=True, exist_ok=False if args.keep else True)
    try:
        lib, entries = build(work, args.n, args.seed, not args.no_screenshots)
        counts = {g: sum(len(e["queries"]) for e in entries if group(e) == g) for g in ("en", "zh", "screenshot")}
        print(f"set: {sum(e['kind'] == 'rendered' for e in entries)} rendered images, "
              f"{sum(e['kind'] == 'screenshot' for e in entries)} screenshots; queries: {counts}")
        if args.raw:
            raw(entries, work, args.engine)
        else:
            through_mmsearch(work, lib, entries, args.model)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
