#!/usr/bin/env python3
"""Measured reliability: kill the indexer at random moments, feed it mutated files, soak the server.

    python benchmarks/torture.py kill   [--rounds 100] [--finish-every 10] [--share 0.5] [--runtime torch]
    python benchmarks/torture.py mutate [--files 1000] [--runtime torch]
    python benchmarks/torture.py soak   [--seconds 600] [--clients 8] [--images 200] [--warm-up 60]

Every part works on real data (`data/fetch.py photos tuxpaint videos`, cached) copied into a
temporary folder under /tmp, uses the model `lite` (offline; `--model` for another) and only
loopback, is bounded in rounds, files or seconds, stops by itself, and stops every process it
started by that process's pid. Each part prints the machine's CPU (model, avx2 / avx512 / VNNI
flags) first, then its figures; `--seed` makes the random choices repeatable.

1. kill — about 330 files (Tux Paint stamps and scikit-image photos, three clips, Tux Paint's own
   caption files beside some stamps, a small .csv caption table). A clean run into a scratch index
   gives the start-up time S (until its first batch is committed) and the whole duration D. Then,
   round after round, `mmsearch index DIR --index IX` runs as a subprocess into one index and is
   SIGKILLed at a moment drawn uniformly from [0, S + 1.2 (D - S) p], p being the share of files
   it has left to do; every `--finish-every`-th round (and the last) runs to the end. Whenever a
   run finished, the folder changes ("churn": a `--share` of the images get new bytes, clips are
   touched, captions and the table edited, a few files renamed, a few set aside and those set aside
   before brought back) so that the next round has embedding to do. After every round:
     * invariants, read with sqlite3: every item's vector is on disk (segment files) with unit
       length, every item has its lexical row and no lexical row outlives its item, no item without its
       file row, no skipped file with items, no file with status 'ok' and zero items (texts
       included: a text without passages is skipped as "no text", media/text.py), every ok file has
       a digest, no item id at or past `next_item_id`, PRAGMA integrity_check / foreign_key_check;
       through `SearchIndex`: info()["vectors"] equals the item count, and a search answers with
       min(k, images) hits that all exist. Goal: 0 inconsistent states.
     * lost commits: a file that was committed before the run (and is still on disk) is not
       committed after the kill, or the number committed went down. Goal: 0.
     * where the kill landed: before the run committed its first new embedding, mid-embedding
       (some committed, work left), or after its last batch (FAISS build, exit).
   At the end the index is compared with a clean uninterrupted run into a fresh index over the
   final folder: the same (path, kind, item count), links and texts, and per path vectors within
   1e-5 (else cosine >= 0.9999 is reported). Both sides use `--runtime torch` (the automatic
   choice may pick another runtime on each side).
2. mutate — `--files` copies of real files of every supported type (png, jpg, gif, webp, bmp,
   tiff; mp4, webm, mkv, mov, avi; txt, md, csv, tsv, jsonl, parquet), each damaged one way: bit
   flips anywhere or in the header, truncation, another format's first bytes on its body, another
   type's file under its extension, zero length, random bytes, huge declared dimensions (png, jpg,
   gif, bmp), decompression bombs, an oversized text; a few left intact as a control. One
   `mmsearch index` run over all of them. Goals: exit 0 and no traceback; indexed + skipped ==
   files, each skipped file with a reason (counted by the words before its first colon); intact
   copies all indexed; a second run embeds nothing.
3. soak — `mmsearch serve` on 127.0.0.1 (a free port) over an index of `--images` real images and
   a few captions; `--clients` threads for `--seconds` do GET /search (varied texts, kinds, path
   globs, dates, min_score, late fusion), POST /search (JSON, and multipart with small uploaded
   images), GET /thumb/{id} and /items/{id} of hits, while another thread loops `mmsearch index`
   adding 20 files, deleting 10, deleting the rest the next time. Prints requests, status codes
   and p50/p99 latency per route, and the server's VmRSS (/proc/PID/status) every 5 s. Goals: no
   5xx; 4xx only where an item's file was deleted meanwhile (counted apart); RSS growth from
   "start" (after the first `--warm-up` seconds of full load: one-client warm-up is not enough,
   concurrency grows the allocator's arenas) to the end <= 10 %; every search hit's file exists,
   or was deleted after that search started (strictly: not swept by an index run that had
   finished before the search started).
"""
from __future__ import annotations

import argparse
import binascii
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "data")]

import fetch  # noqa: E402  (data/fetch.py)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import mmsearch as package  # noqa: E402
from mmsearch.media.kinds import kind_of  # noqa: E402

DB = "mmsearch.db"
QUERIES = ["a dog", "a red apple", "a cup of coffee", "a rocket", "coins", "a cat", "a tree with leaves",
           "a musical instrument", "a car", "a house", "the moon at night", "a horse", "a bird", "food on a plate",
           "a person wearing a hat", "a flag", "a boat on water", "a flower", "a tool", "a toy"]


# -- shared -------------------------------------------------------------------------------------
def machine() -> None:
    """The CPU and the flags that decide which kernels run, and the code measured."""
    text = Path("/proc/cpuinfo").read_text()
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    shown = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"))
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    mem = next((ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")), "0")
    print(f"CPU: {model}, {os.cpu_count()} cores, {int(mem) / 2**20:.0f} GiB; {shown}")
    print(f"mmsearch {package.__version__} ({commit or 'not a git checkout'}) from {Path(package.__file__).parent}, "
          f"Python {sys.version.split()[0]}")


def mmsearch(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmsearch", *args]


def stop(proc: subprocess.Popen, grace: float = 15) -> None:
    """Stop a process this script started, by its pid: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Run:
    seconds: float
    rc: int | None
    killed: bool = False  # by us, at the moment asked
    hung: bool = False  # killed because it overran its time limit
    stdout: str = ""
    stderr: str = ""


def run_index(root: Path, ix: Path, args: argparse.Namespace, kill_at: float | None = None,
              limit: float = 3600, extra: tuple[str, ...] = ()) -> Run:
    """`mmsearch index ROOT --index IX`, SIGKILLed after `kill_at` seconds (or when over `limit`)."""
    cmd = mmsearch("index", str(root), "--index", str(ix), "--runtime", args.runtime, *extra)
    if args.model:
        cmd += ["--model", args.model]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err)
        run = Run(0.0, None)
        try:
            proc.wait(kill_at if kill_at is not None else limit)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            run.killed, run.hung = kill_at is not None, kill_at is None
        run.seconds, run.rc = time.monotonic() - t0, proc.returncode
        out.seek(0)
        err.seek(0)
        run.stdout, run.stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return run


def connect(ix: Path) -> sqlite3.Connection:
    con = sqlite3.connect(ix / DB, timeout=60)
    con.execute("PRAGMA busy_timeout=60000")
    return con


def disk_files(root: Path) -> dict[bytes, tuple[int, int]]:
    """Every file under `root` the indexer would take: path key -> (size, mtime_ns)."""
    out = {}
    for dirpath, dirnames, names in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for n in names:
            if kind_of(n) and not n.startswith("."):
                p = os.path.join(dirpath, n)
                st = os.stat(p)
                out[os.fsencode(p)] = (st.st_size, st.st_mtime_ns)
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def first_words(reason: str) -> str:
    """A skip reason's family: the words before its first colon, at most eight."""
    return " ".join(reason.split(":", 1)[0].split()[:8]) or "(empty)"


# -- data -----------------------------------------------------------------------------------
def stamps() -> list[Path]:
    return sorted(fetch.fetch("tuxpaint").rglob("*.png"))


def english_caption(txt: Path) -> str:
    """The first line of a Tux Paint caption file: its English description."""
    return txt.read_text(encoding="utf-8", errors="replace").splitlines()[0].strip()


def copy_stamp(src: Path, dst_root: Path) -> Path:
    tux = fetch.fetch("tuxpaint")
    dst = dst_root / src.relative_to(tux)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    return dst


# ===============================================================================================
# 1. kill
# ===============================================================================================
def kill_set(dst: Path, rng: random.Random, n_stamps: int = 270) -> None:
    """~330 real files: stamps (30 with their caption file beside), photos, clips, a caption table."""
    picked = rng.sample(stamps(), n_stamps)
    copied = [copy_stamp(p, dst / "stamps") for p in picked]
    for src, png in list(zip(picked, copied))[:30]:
        if src.with_suffix(".txt").exists():
            shutil.copy2(src.with_suffix(".txt"), png.with_suffix(".txt"))
    shutil.copytree(fetch.fetch("photos"), dst / "photos")
    shutil.copytree(fetch.fetch("videos"), dst / "videos")
    rows = [(png.relative_to(dst).as_posix(), english_caption(src.with_suffix(".txt")))
            for src, png in list(zip(picked, copied))[30:55] if src.with_suffix(".txt").exists()]
    import pandas as pd

    pd.DataFrame(rows, columns=["image", "caption"]).to_csv(dst / "captions.csv", index=False)


def mark_image(p: Path, cycle: int) -> None:
    """New bytes, same pixels: a PNG text chunk or a JPEG comment naming the cycle."""
    data = p.read_bytes()
    note = f"torture cycle {cycle}".encode()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        body = b"tEXt" + b"Comment\x00" + note
        chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", binascii.crc32(body))
        data = data[:33] + chunk + data[33:]  # right after IHDR
    elif data[:2] == b"\xff\xd8":
        data = data[:2] + b"\xff\xfe" + struct.pack(">H", len(note) + 2) + note + data[2:]
    p.write_bytes(data)


def churn(root: Path, trash: Path, rng: random.Random, cycle: int, share: float) -> str:
    """Change the folder so the next run has work: new bytes for a share of the images, clips
    touched (same content: reused), captions and table edited, renames, files set aside and back."""
    back = [p for p in trash.rglob("*") if p.is_file()]
    for p in back:
        dst = root / p.relative_to(trash)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(p, dst)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    images = [p for p in files if kind_of(p.name) == "image"]
    marked = [p for p in images if rng.random() < share]
    for p in marked:
        mark_image(p, cycle)
    for p in files:
        if kind_of(p.name) == "video":
            os.utime(p)
        elif p.suffix == ".txt" and rng.random() < share:
            with open(p, "a", encoding="utf-8") as f:
                f.write(f"\nEdited in torture cycle {cycle}.\n")
    edit_table(root / "captions.csv", rng, cycle)
    moved = rng.sample([p for p in files if p.suffix in (".png", ".txt")], max(1, len(files) // 30))
    for p in moved:
        dst = trash / p.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(p, dst)
    renamed = rng.sample([p for p in images if p.exists()], max(1, len(images) // 50))
    for p in renamed:
        p.rename(p.with_name(f"{p.stem}-r{cycle}{p.suffix}"))
    return (f"churn {cycle}: {len(marked)} images new bytes, {len(moved)} set aside, {len(back)} back, "
            f"{len(renamed)} renamed, clips touched")


def edit_table(path: Path, rng: random.Random, cycle: int) -> None:
    import pandas as pd

    table = pd.read_csv(path)
    row = rng.randrange(len(table))
    table.loc[row, "caption"] = f"{table.loc[row, 'caption']} (cycle {cycle})"
    table.to_csv(path, index=False)


@dataclass
class State:
    """What the store holds, read with sqlite3: path key -> (size, mtime_ns, status, digest, items)."""

    rows: dict[bytes, tuple[int, int, str, str | None, int]] = field(default_factory=dict)

    @classmethod
    def read(cls, ix: Path) -> State:
        if not (ix / DB).exists():
            return cls()
        con = connect(ix)
        try:
            rows = con.execute("SELECT f.path_key, f.size, f.mtime_ns, f.status, f.digest, "
                               "(SELECT count(*) FROM items i WHERE i.file_id = f.id) FROM files f").fetchall()
        except sqlite3.OperationalError:  # killed before the schema existed
            rows = []
        finally:
            con.close()
        return cls({bytes(r[0]): tuple(r[1:]) for r in rows})

    def committed(self, on_disk: dict) -> set[bytes]:
        """Files on disk whose row is ok with items (whatever version of them)."""
        return {k for k, r in self.rows.items() if k in on_disk and r[2] == "ok" and r[4] > 0}

    def pending(self, on_disk: dict) -> int:
        """Files the next run has to embed or sweep (captions to relink not counted)."""
        todo = sum(1 for k, (size, mtime) in on_disk.items()
                   if (r := self.rows.get(k)) is None or r[:2] != (size, mtime) or r[2] != "ok")
        return todo + sum(1 for k in self.rows if k not in on_disk)

    def digests(self) -> set[str]:
        return {r[3] for r in self.rows.values() if r[3]}


def invariants(ix: Path) -> list[str]:
    """Every broken rule of a consistent index, read directly and through SearchIndex."""
    if not (ix / DB).exists():
        return []
    con = connect(ix)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"files", "items", "meta"} <= tables:
            return [] if not tables else [f"schema incomplete: {sorted(tables)}"]
        problems = _sql_problems(con, ix)
        n_items = con.execute("SELECT count(*) FROM items").fetchone()[0]
        n_images = con.execute("SELECT count(*) FROM items WHERE kind='image'").fetchone()[0]
        ids = {r[0] for r in con.execute("SELECT id FROM items")}
        has_model = con.execute("SELECT count(*) FROM meta WHERE key='model_spec'").fetchone()[0]
    finally:
        con.close()
    if not has_model:
        return problems + ([f"{n_items} items but no model_spec"] if n_items else [])
    return problems + _api_problems(ix, n_items, n_images, ids)


def _sql_problems(con: sqlite3.Connection, ix: Path) -> list[str]:
    meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    dim = int(meta.get("dim") or 0)
    checks = {
        # (every item's vector is read from the segment files below: a missing row is a finding)
        "lexical rows without an item": "SELECT count(*) FROM lexical WHERE rowid NOT IN (SELECT id FROM items)",
        "items without a lexical row": "SELECT count(*) FROM items WHERE id NOT IN (SELECT rowid FROM lexical)",
        "items without a file row": "SELECT count(*) FROM items WHERE file_id NOT IN (SELECT id FROM files)",
        "ok files with zero items": "SELECT count(*) FROM files f WHERE status='ok' AND NOT EXISTS "
                                    "(SELECT 1 FROM items i WHERE i.file_id = f.id)",
        "skipped files with items": "SELECT count(*) FROM files f WHERE status='skipped' AND EXISTS "
                                    "(SELECT 1 FROM items i WHERE i.file_id = f.id)",
        "ok files without a digest": "SELECT count(*) FROM files WHERE status='ok' AND digest IS NULL",
        "item ids at or past next_item_id": "SELECT count(*) FROM items WHERE id >= "
                                            "(SELECT CAST(value AS INTEGER) FROM meta WHERE key='next_item_id')",
    }
    problems = [f"{n} {what}" for what, sql in checks.items() if (n := con.execute(sql).fetchone()[0])]
    if (ok := con.execute("PRAGMA integrity_check").fetchone()[0]) != "ok":
        problems.append(f"integrity_check: {ok}")
    if fk := con.execute("PRAGMA foreign_key_check").fetchall():
        problems.append(f"{len(fk)} foreign key violations")
    if dim:
        ids = [i for (i,) in con.execute("SELECT id FROM items")]
        try:
            vecs = list(_store_vectors(ix, ids).values())
        except (KeyError, OSError, ValueError) as e:  # a committed item whose vector is not on disk
            return [*problems, f"vectors unreadable: {type(e).__name__}: {e}"]
        norms = np.linalg.norm(np.stack(vecs), axis=1) if vecs else np.ones(1)
        if not np.isfinite(norms).all() or np.abs(norms - 1).max() > 1e-3:
            problems.append(f"vectors not finite unit length (norms {norms.min():.4f}..{norms.max():.4f})")
    return problems


def _store_vectors(ix: Path, ids: list[int]) -> dict:
    """Vectors by item id, read through mmsearch's own store (segment files since schema v4)."""
    from mmsearch.retrieval.index import Index
    from mmsearch.retrieval.store import vectors_by_id

    with Index(ix).session() as s:
        return vectors_by_id(s, ids)


def _api_problems(ix: Path, n_items: int, n_images: int, ids: set[int]) -> list[str]:
    from mmsearch import SearchIndex

    problems = []
    try:
        si = SearchIndex(ix)
        info = si.info()
        if info["vectors"] != n_items:
            problems.append(f"FAISS holds {info['vectors']} vectors, store {n_items} items")
        if sum(info["items"].values()) != n_items:
            problems.append(f"info counts {sum(info['items'].values())} items, store {n_items}")
        hits = si.search("a red apple", k=10, kind="image")
        if len(hits) != min(10, n_images):
            problems.append(f"image search returned {len(hits)} hits of {min(10, n_images)}")
        if missing := [h.item_id for h in hits if h.item_id not in ids]:
            problems.append(f"search returned unknown items {missing}")
    except Exception as e:  # a broken index is a finding, not the end of the torture
        problems.append(f"SearchIndex failed: {type(e).__name__}: {e}")
    return problems


def contents(ix: Path) -> dict[str, list[tuple]]:
    """path -> its items as (kind, timestamp, offset, link, text, vector), in a stable order."""
    con = connect(ix)
    rows = con.execute("SELECT f.path, f.kind, i.timestamp, i.offset, i.link_path, i.text, i.id FROM items i "
                       "JOIN files f ON f.id = i.file_id WHERE f.status='ok'").fetchall()
    con.close()
    vectors = _store_vectors(ix, [r[-1] for r in rows])
    out: dict[str, list[tuple]] = defaultdict(list)
    for path, kind, ts, off, link, txt, item_id in rows:
        out[path].append((kind, ts or 0.0, off or 0, link, txt, vectors[item_id]))
    return {p: sorted(items, key=lambda t: (t[1], t[2])) for p, items in out.items()}


def compare(a: dict[str, list[tuple]], b: dict[str, list[tuple]]) -> dict:
    """Differences between two indexes' contents (a: tortured, b: clean)."""
    diff = {"paths": len(b), "only_tortured": sorted(set(a) - set(b)), "only_clean": sorted(set(b) - set(a)),
            "kind_or_count": [], "links_or_texts": [], "max_abs": 0.0, "min_cos": 1.0, "beyond_1e-5": 0}
    for p in sorted(set(a) & set(b)):
        x, y = a[p], b[p]
        if [t[0] for t in x] != [t[0] for t in y]:
            diff["kind_or_count"].append(f"{p}: {len(x)} vs {len(y)} items")
            continue
        if [(t[3], t[4]) for t in x] != [(t[3], t[4]) for t in y]:
            diff["links_or_texts"].append(p)
        for u, v in zip(x, y):
            gap = float(np.abs(u[5] - v[5]).max())
            diff["max_abs"] = max(diff["max_abs"], gap)
            diff["min_cos"] = min(diff["min_cos"], float(u[5] @ v[5] / np.linalg.norm(u[5]) / np.linalg.norm(v[5])))
            diff["beyond_1e-5"] += gap > 1e-5
    return diff


def calibrate(root: Path, ix: Path, args: argparse.Namespace) -> tuple[float, float]:
    """A clean run: seconds until its first batch is committed (S), and in all (D)."""
    cmd = mmsearch("index", str(root), "--index", str(ix), "--runtime", args.runtime, *(["--model", args.model] if args.model else []))
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    while proc.poll() is None:
        if first is None and (ix / DB).exists():
            try:
                con = connect(ix)
                if con.execute("SELECT count(*) FROM items").fetchone()[0]:
                    first = time.monotonic() - t0
                con.close()
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    total = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"the clean calibration run failed (exit {proc.returncode})")
    return first or total, total


@dataclass
class Tally:
    """What the kill rounds found."""

    landed: Counter = field(default_factory=Counter)  # where each run ended
    inconsistent: int = 0
    lost: int = 0  # files committed before a kill and not after it
    decreases: int = 0  # rounds after which fewer files were committed
    bad_exits: list[str] = field(default_factory=list)


def kill_round(r: int, root: Path, ix: Path, kill_at: float | None, bound: float, tally: Tally,
               args: argparse.Namespace, limit: float) -> bool:
    """One run, killed at `kill_at` (None: to the end), checked; prints a line and returns whether
    the folder is now fully indexed (the next round needs a churn)."""
    on_disk = disk_files(root)
    before = State.read(ix)
    run = run_index(root, ix, args, kill_at, limit=limit)
    after, before_digests = State.read(ix), before.digests()
    problems = invariants(ix)
    was, now = before.committed(on_disk), after.committed(on_disk)
    lost = was - now
    tally.lost += len(lost)
    tally.decreases += len(now) < len(was)
    tally.inconsistent += bool(problems)
    embedded = sum(1 for row in after.rows.values() if row[2] == "ok" and row[3] not in before_digests)
    left = after.pending(on_disk)
    if run.killed:
        where = "after its last batch" if left == 0 else "mid-embedding" if embedded else "before its first batch"
    elif run.hung:
        where = "hung"
    else:
        where = "finished"
        if run.rc != 0:
            tally.bad_exits.append(f"round {r}: exit {run.rc}: {run.stderr.strip()[-300:]}")
    tally.landed[where] += 1
    when = f"killed at {kill_at:5.1f}s of {bound:5.1f}s" if run.killed else f"ran {run.seconds:5.1f}s, exit {run.rc}{'':4}"
    print(f"round {r:3d}  {when}  {where:<22}  committed {len(was):3d} -> {len(now):3d}, pending "
          f"{before.pending(on_disk):3d} -> {left:3d}, embedded {embedded:3d}" + (f"  LOST {len(lost)}" if lost else "")
          + ("  PROBLEMS: " + "; ".join(problems) if problems else ""), flush=True)
    return left == 0


def kill(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="torture-kill-") as tmp:
        tmp_p = Path(tmp)
        root, trash, ix = tmp_p / "media", tmp_p / "set-aside", tmp_p / "index"
        kill_set(root, rng)
        trash.mkdir()
        s, d = calibrate(root, tmp_p / "calibration", args)
        shutil.rmtree(tmp_p / "calibration")
        print(f"{len(disk_files(root))} files; clean run: first batch committed at S = {s:.1f}s, done at D = "
              f"{d:.1f}s (--runtime {args.runtime}, model {args.model or 'lite'})")
        tally, cycle, done = Tally(), 0, False
        for r in range(1, args.rounds + 1):
            if done:
                cycle += 1
                print("          " + churn(root, trash, rng, cycle, args.share))
            on_disk = disk_files(root)
            share = max(0.05, min(1.0, State.read(ix).pending(on_disk) / len(on_disk)))
            bound = s + 1.2 * (d - s) * share
            finish = r % args.finish_every == 0 or r == args.rounds
            kill_at = None if finish else rng.uniform(0, bound)
            done = kill_round(r, root, ix, kill_at, bound, tally, args, limit=max(300.0, 10 * d))
        leftovers = sorted(p.name for p in ix.iterdir() if p.name.endswith((".tmp", ".f16", ".tmp.json")))
        clean = run_index(root, tmp_p / "clean", args)
        diff = compare(contents(ix), contents(tmp_p / "clean"))
        report_kill(args.rounds, cycle, time.monotonic() - t_start, tally, leftovers, clean, diff)


def report_kill(rounds: int, cycles: int, wall: float, tally: Tally, leftovers: list[str], clean: Run, diff: dict) -> None:
    landed = tally.landed
    kills = rounds - landed["finished"] - landed["hung"]
    print()
    print(f"rounds: {rounds} ({kills} killed, {landed['finished']} ran to the end, {landed['hung']} hung), "
          f"{cycles} churn cycles, wall time {wall:.0f}s")
    print(f"kills that landed: mid-embedding {landed['mid-embedding']}, before the run's first batch "
          f"{landed['before its first batch']}, after its last batch {landed['after its last batch']}")
    print(f"inconsistent states: {tally.inconsistent}   lost commits: {tally.lost} files ({tally.decreases} rounds "
          f"with fewer committed files)   unclean exits of finished runs: {len(tally.bad_exits)}")
    for line in tally.bad_exits[:5]:
        print("   ", line)
    print(f"files left in the index folder by killed runs: {len(leftovers)} {leftovers[:5]}")
    print(f"final state vs a clean run (exit {clean.rc}, {clean.seconds:.1f}s) over the final folder, "
          f"{diff['paths']} indexed paths: only tortured {len(diff['only_tortured'])}, only clean "
          f"{len(diff['only_clean'])}, kind/item-count differences {len(diff['kind_or_count'])}, "
          f"link/text differences {len(diff['links_or_texts'])}")
    print(f"  vectors: max |difference| {diff['max_abs']:.2e}, {diff['beyond_1e-5']} beyond 1e-5, "
          f"min cosine {diff['min_cos']:.6f}")
    for what in ("only_tortured", "only_clean", "kind_or_count", "links_or_texts"):
        for p in diff[what][:5]:
            print(f"    {what}: {p}")


# ===============================================================================================
# 2. mutate
# ===============================================================================================
TYPES = {"png": 150, "jpg": 120, "gif": 70, "webp": 70, "bmp": 60, "tiff": 60, "mp4": 80, "webm": 40, "mkv": 40,
         "mov": 15, "avi": 15, "txt": 80, "md": 50, "csv": 60, "tsv": 20, "jsonl": 40, "parquet": 30}
MUTATIONS = {"intact": 5, "bitflip": 22, "headflip": 10, "truncate": 18, "truncate-head": 5, "swap-header": 12,
             "wrong-ext": 10, "empty": 3, "garbage": 5, "huge-dims": 10}
HUGE_DIMS = ("png", "jpg", "gif", "bmp")


def transcode(src: Path, dst: Path, codec: str, seconds: float = 3.0) -> None:
    """The first seconds of a real clip, re-encoded (webm, mkv, mov, avi bases)."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        rate = int(round(vin.average_rate or 25))
        vout = out.add_stream(codec, rate=rate)
        vout.width, vout.height, vout.pix_fmt = vin.width // 2 * 2, vin.height // 2 * 2, "yuv420p"
        for i, frame in enumerate(inp.decode(vin)):
            if frame.time is not None and frame.time > seconds:
                break
            img = frame.reformat(width=vout.width, height=vout.height, format="yuv420p")
            img.pts, img.time_base = i, Fraction(1, rate)
            for packet in vout.encode(img):
                out.mux(packet)
        for packet in vout.encode():
            out.mux(packet)


def base_files(work: Path, rng: random.Random) -> dict[str, list[bytes]]:
    """Real originals of every type: the sets' own files, and their pictures and clips re-encoded."""
    import pandas as pd

    photos, videos, tux = fetch.fetch("photos"), fetch.fetch("videos"), stamps()
    pics = [Image.open(p) for p in sorted(photos.glob("*"))[:8]] + [Image.open(p) for p in rng.sample(tux, 8)]
    pics = [p.convert("RGBA" if p.mode in ("RGBA", "P", "LA") else "RGB") for p in pics]
    for p in pics:
        p.thumbnail((512, 512))

    def encoded(fmt: str) -> list[bytes]:
        out = []
        for p in pics:
            buf = io.BytesIO()
            (p.convert("RGB") if fmt in ("JPEG", "BMP") else p).save(buf, fmt)
            out.append(buf.getvalue())
        return out

    bases: dict[str, list[bytes]] = {
        "png": [p.read_bytes() for p in rng.sample(tux, 12)] + [p.read_bytes() for p in photos.glob("*.png")][:6],
        "jpg": [p.read_bytes() for p in photos.glob("*.jpg")] + encoded("JPEG")[:8],
        "gif": encoded("GIF"), "webp": encoded("WEBP"), "bmp": encoded("BMP"), "tiff": encoded("TIFF"),
        "mp4": [(videos / n).read_bytes() for n in ("carphone_pristine.mp4", "bikes.mp4", "bigbuckbunny.mp4")],
    }
    for ext, codec in (("webm", "libvpx"), ("mkv", "libx264"), ("mov", "mpeg4"), ("avi", "mpeg4")):
        bases[ext] = []
        for name in ("carphone_pristine.mp4", "bikes.mp4"):
            dst = work / f"base-{name}.{ext}"
            transcode(videos / name, dst, codec)
            bases[ext].append(dst.read_bytes())
    txts = rng.sample(sorted(fetch.fetch("tuxpaint").rglob("*.txt")), 40)
    bases["txt"] = [p.read_bytes() for p in txts[:12]]
    bases["md"] = [p.read_bytes() for p in (ROOT / "README.md", ROOT / "docs/design.md", ROOT / "docs/performance.md")]
    table = pd.DataFrame({"image": [p.with_suffix(".png").name for p in txts],
                          "caption": [english_caption(p) for p in txts]})
    parts = [table.iloc[i : i + 10] for i in range(0, 40, 10)]
    bases["csv"] = [t.to_csv(index=False).encode() for t in parts]
    bases["tsv"] = [t.to_csv(index=False, sep="\t").encode() for t in parts]
    bases["jsonl"] = [t.to_json(orient="records", lines=True).encode() for t in parts]
    bases["parquet"] = []
    for t in parts:
        buf = io.BytesIO()
        t.to_parquet(buf)
        bases["parquet"].append(buf.getvalue())
    return bases


def huge_dims(data: bytes, ext: str, w: int, h: int) -> bytes | None:
    """The same file declaring a w x h picture in its header (None: no such header found)."""
    b = bytearray(data)
    if ext == "png" and b[12:16] == b"IHDR":
        b[16:24] = struct.pack(">II", w, h)
        b[29:33] = struct.pack(">I", binascii.crc32(bytes(b[12:29])))
    elif ext == "gif" and b[:3] == b"GIF":
        b[6:10] = struct.pack("<HH", min(w, 65535), min(h, 65535))
    elif ext == "bmp" and b[:2] == b"BM":
        b[18:26] = struct.pack("<ii", w, h)
    elif ext == "jpg" and (m := re.search(rb"\xff[\xc0\xc1\xc2]", data)):
        b[m.start() + 5 : m.start() + 9] = struct.pack(">HH", min(h, 65535), min(w, 65535))
    else:
        return None
    return bytes(b)


def mutated(data: bytes, ext: str, how: str, rng: random.Random, bases: dict[str, list[bytes]]) -> tuple[bytes, str]:
    """`data` damaged one way; returns (bytes, what was done)."""
    other_ext = rng.choice([e for e in bases if e != ext])
    other = rng.choice(bases[other_ext])
    b = bytearray(data)
    if how == "bitflip" or how == "headflip":
        span = len(b) if how == "bitflip" else min(len(b), 64)
        for _ in range(rng.randint(1, 32)):
            b[rng.randrange(span)] ^= 1 << rng.randrange(8)
        return bytes(b), how
    if how == "truncate":
        return data[: rng.randrange(1, len(data))], how
    if how == "truncate-head":
        return data[: rng.randrange(1, min(len(data), 100))], how
    if how == "swap-header":
        n = min(len(other), len(data), rng.choice([4, 8, 16, 32, 64, 512]))
        return other[:n] + data[n:], f"swap-header:{other_ext}"
    if how == "wrong-ext":
        return other, f"wrong-ext:{other_ext}"
    if how == "empty":
        return b"", how
    if how == "garbage":
        return rng.randbytes(rng.randrange(1, 100_000)), how
    if how == "huge-dims":
        w, h = rng.choice([(60_000, 60_000), (65_535, 1), (9_000, 9_000), (0, 0)])
        if (out := huge_dims(data, ext, w, h)) is not None:
            return out, f"huge-dims:{w}x{h}"
        return mutated(data, ext, "headflip", rng, bases)
    return data, "intact"


def extras(folder: Path) -> list[tuple[Path, str, str]]:
    """Two decompression bombs (tiny PNGs of 144 Mpx) and an oversized text file."""
    out = []
    for i in range(2):
        p = folder / "png" / f"bomb{i}.png"
        Image.new("L", (12_000, 12_000)).save(p, optimize=False)
        out.append((p, "png", "bomb:12000x12000"))
    p = folder / "txt" / "oversized.txt"
    line = "A line of caption text, repeated until the file is larger than the 20 MiB a text may have."
    p.write_text((line + "\n") * (21 * 2**20 // (len(line) + 1) + 1))
    out.append((p, "txt", "oversized:21MiB"))
    return out


def make_mutants(folder: Path, n: int, rng: random.Random) -> list[tuple[Path, str, str]]:
    """`n` damaged copies (path, type, mutation), types and mutations in the weights above."""
    bases = base_files(folder.parent, rng)
    types = rng.choices(list(TYPES), weights=list(TYPES.values()), k=n - 3)  # 3: extras()
    out = []
    for ext in TYPES:
        (folder / ext).mkdir(parents=True)
    for i, ext in enumerate(types):
        how = rng.choices(list(MUTATIONS), weights=list(MUTATIONS.values()))[0]
        if how == "huge-dims" and ext not in HUGE_DIMS:
            how = "headflip"
        data, done = mutated(rng.choice(bases[ext]), ext, how, rng, bases)
        p = folder / ext / f"{i:04d}-{done.replace(':', '-')}.{ext}"
        p.write_bytes(data)
        out.append((p, ext, done))
    out += extras(folder)
    return out


def index_report(ix: Path) -> dict[str, tuple[str, str | None, int]]:
    """path -> (status, reason, items)."""
    con = connect(ix)
    rows = con.execute("SELECT f.path, f.status, f.error, (SELECT count(*) FROM items i WHERE i.file_id = f.id) "
                       "FROM files f").fetchall()
    con.close()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def mutate(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="torture-mutate-") as tmp:
        folder, ix = Path(tmp) / "mutants", Path(tmp) / "index"
        t = time.monotonic()
        files = make_mutants(folder, args.files, rng)
        print(f"{len(files)} mutated files written in {time.monotonic() - t:.0f}s "
              f"({', '.join(f'{e} {c}' for e, c in Counter(e for _, e, _ in files).most_common())})")
        first = run_index(folder, ix, args, limit=args.limit, extra=("--json",))
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        second = run_index(folder, ix, args, limit=args.limit, extra=("--json",))
        report_mutate(files, ix, first, second, peak)


def report_mutate(files: list[tuple[Path, str, str]], ix: Path, first: Run, second: Run, peak_gib: float) -> None:
    crashed = first.rc != 0 or first.hung or "Traceback" in first.stderr
    print(f"first run: exit {first.rc}{' (HUNG, killed)' if first.hung else ''}, {first.seconds:.0f}s, peak RSS "
          f"{peak_gib:.2f} GiB, traceback on stderr: {'yes' if 'Traceback' in first.stderr else 'no'}")
    print(f"crashes: {int(crashed)}")
    if crashed:
        print(first.stderr[-3000:])
        return
    rows = index_report(ix)
    by_path = {str(p): (ext, how.split(":")[0]) for p, ext, how in files}
    ok = {p for p, r in rows.items() if r[0] == "ok"}
    skipped = {p: r[1] for p, r in rows.items() if r[0] == "skipped"}
    unknown = set(rows) - set(by_path)
    missing = set(by_path) - set(rows)
    print(f"files {len(files)}: indexed {len(ok)}, skipped {len(skipped)}, indexed + skipped == files: "
          f"{len(ok) + len(skipped) == len(files) and not missing}; not in the index {len(missing)}, "
          f"in the index but not written by us {len(unknown)}")
    print(f"skipped without a reason: {sum(1 for r in skipped.values() if not (r or '').strip())}; "
          f"indexed with zero items: {sum(1 for p in ok if rows[p][2] == 0)}")
    summary = json.loads(first.stdout.strip().splitlines()[-1]) if first.stdout.strip() else {}
    print(f"summary line: new {summary.get('new')}, skipped {len(summary.get('skipped', []))}, "
          f"embedded {summary.get('embedded')}, runtime {summary.get('runtime')}")
    intact = [p for p, (_, how) in by_path.items() if how == "intact"]
    print(f"intact controls: {len(intact)}, skipped {sum(1 for p in intact if p in skipped)} "
          f"{[(Path(p).name, skipped[p]) for p in intact if p in skipped][:3]}")
    print("skip reasons (words before the first colon):")
    for reason, n in Counter(first_words(r or "") for r in skipped.values()).most_common():
        print(f"  {n:4d}  {reason}")
    for label, key in (("type", 0), ("mutation", 1)):
        table: dict[str, Counter] = defaultdict(Counter)
        for p, tags in by_path.items():
            table[tags[key]]["ok" if p in ok else "skipped" if p in skipped else "missing"] += 1
        print(f"by {label}: " + ", ".join(f"{k} {c['ok']}/{c['ok'] + c['skipped'] + c['missing']}"
                                          for k, c in sorted(table.items())) + "  (indexed/files)")
    odd = [(Path(p).name, r) for p, r in skipped.items() if (r or "").startswith("decode failed")]
    if odd:
        print(f"'decode failed' (an exception no decoder turned into a reason): {len(odd)}")
        for name, r in odd[:10]:
            print(f"    {name}: {r}")
    again = json.loads(second.stdout.strip().splitlines()[-1]) if second.stdout.strip() else {}
    print(f"second run: exit {second.rc}, {second.seconds:.1f}s, embedded {again.get('embedded')}, new "
          f"{again.get('new')}, updated {again.get('updated')}, unchanged {again.get('unchanged')}, skipped "
          f"{len(again.get('skipped', []))}, traceback: {'yes' if 'Traceback' in second.stderr else 'no'}")
    if again.get("skipped"):
        retried = Counter(first_words(s["reason"]) for s in again["skipped"])
        print(f"  decoded again (skipped again) in the second run, by reason: {dict(retried)}")


# ===============================================================================================
# 3. soak
# ===============================================================================================
@dataclass
class Soak:
    """Shared between the client threads, the indexer thread and the report."""

    base: str
    stop_at: float
    lat: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    codes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    errors: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    hits: deque = field(default_factory=lambda: deque(maxlen=500))  # (item id, path, kind) of recent hits
    deleted: dict[str, list[float | None]] = field(default_factory=dict)  # path -> [deleted at, swept by]
    hit_checks: Counter = field(default_factory=Counter)
    index_runs: list[tuple[float, int | None]] = field(default_factory=list)
    expected_404: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, route: str, status: int, seconds: float, body: str = "") -> None:
        with self.lock:
            self.lat[route].append(seconds)
            self.codes[route][status] += 1
            if status >= 500 or (status >= 400 and route not in ("thumb", "items")):
                self.examples.setdefault(f"{route} {status}", body[:300])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_rss(pid: int) -> int:
    """Resident memory of a process, in KiB (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def soak_set(root: Path, pool: Path, rng: random.Random, n_images: int) -> list[Path]:
    """`n_images` real images (photos and stamps, 20 with a one-line caption beside) in `root`;
    returns other stamps in `pool`, for the indexer thread to add and remove."""
    shutil.copytree(fetch.fetch("photos"), root / "photos")
    tux = stamps()
    picked = rng.sample(tux, n_images - len(list((root / "photos").iterdir())) + 100)
    for i, src in enumerate(picked[: len(picked) - 100]):
        dst = copy_stamp(src, root / "stamps")
        if i < 20 and src.with_suffix(".txt").exists():
            dst.with_suffix(".txt").write_text(english_caption(src.with_suffix(".txt")) + "\n")
    pool.mkdir()
    out = []
    for i, src in enumerate(picked[-100:]):
        out.append(pool / f"{i:03d}-{src.name}")
        shutil.copy2(src, out[-1])
    return out


def uploads(pool: list[Path]) -> list[tuple[str, bytes, str]]:
    """Small uploads: pool stamps shrunk to at most 96 px, as PNG or JPEG."""
    out = []
    for i, p in enumerate(pool[:20]):
        img = Image.open(p).convert("RGBA").convert("RGB")
        img.thumbnail((96, 96))
        buf = io.BytesIO()
        fmt = "PNG" if i % 2 else "JPEG"
        img.save(buf, fmt)
        out.append((f"up{i}.{fmt.lower()}", buf.getvalue(), f"image/{fmt.lower()}"))
    return out


def search_params(rng: random.Random) -> dict:
    """A varied GET /search query: texts, compact fused queries, kinds, globs, dates, scores."""
    q, other, negative = rng.sample(QUERIES, 3)  # distinct: equal parts cancel out (a 400)
    params: dict = {"q": q, "k": rng.choice([1, 5, 10, 20, 50])}
    roll = rng.random()
    if roll < 0.15:
        params["q"] = f"2:{q} + {other} - {negative}"
        params["fusion"] = rng.choice(["early", "late"])
    elif roll < 0.3:
        params["type"] = rng.choice(["image", "text", "video"])
    elif roll < 0.45:
        params["path"] = rng.choice(["*/photos/*", "*.png", "*/churn/*", "*/stamps/animals/*", "*.jpg"])
    elif roll < 0.55:
        params["after"] = rng.choice(["2000-01-01", time.strftime("%Y-%m-%d")])
    elif roll < 0.65:
        params["min_score"] = rng.choice([0.05, 0.1, 0.2, 0.3])
    elif roll < 0.7:
        params["not"] = negative
    return params


def check_hits(st: Soak, hits: list[dict], started: float) -> None:
    """Every hit's file exists, or was deleted after the search started (its sweep ended later)."""
    for h in hits:
        path = h.get("path", "")
        with st.lock:
            st.hits.append((h["item_id"], path, h.get("kind")))
            if os.path.exists(path):
                st.hit_checks["present"] += 1
            elif path in st.deleted and (st.deleted[path][1] is None or started < st.deleted[path][1]):
                st.hit_checks["deleted meanwhile"] += 1
            else:
                st.hit_checks["VIOLATION"] += 1
                st.examples.setdefault("hit violation", f"{path}: {st.deleted.get(path)} search at {started}")


def client(st: Soak, seed: int, ups: list[tuple[str, bytes, str]]) -> None:
    import httpx

    rng = random.Random(seed)
    with httpx.Client(base_url=st.base, timeout=120) as c:
        while time.monotonic() < st.stop_at:
            roll = rng.random()
            t0 = time.monotonic()
            try:
                if roll < 0.4:
                    route, r = "GET /search", c.get("/search", params=search_params(rng))
                elif roll < 0.55:
                    q, negative = rng.sample(QUERIES, 2)
                    body = {"q": q, "k": rng.choice([3, 10, 30])}
                    if rng.random() < 0.5:
                        body["not"] = [negative]
                    if rng.random() < 0.3:
                        body["type"] = "image"
                    route, r = "POST /search json", c.post("/search", json=body)
                elif roll < 0.7:
                    name, data, mime = rng.choice(ups)
                    form = {"query": json.dumps({"k": rng.choice([5, 10]), "type": "image"})} if rng.random() < 0.5 else {}
                    route, r = "POST /search upload", c.post("/search", files={"image": (name, data, mime)}, data=form)
                else:
                    thumb = roll < 0.85
                    with st.lock:  # texts have no thumbnail
                        recent = [h for h in list(st.hits)[-100:] if not thumb or h[2] != "text"]
                    if not recent:
                        continue
                    item, path, _ = rng.choice(recent)
                    if thumb:
                        route, r = "thumb", c.get(f"/thumb/{item}", params={"size": rng.choice([64, 128, 256])})
                    else:
                        route, r = "items", c.get(f"/items/{item}")
                    if r.status_code == 404:
                        with st.lock:
                            st.expected_404[route if path in st.deleted else f"{route} (file not deleted)"] += 1
            except httpx.HTTPError as e:
                with st.lock:
                    st.errors[type(e).__name__] += 1
                continue
            st.record(route, r.status_code, time.monotonic() - t0, r.text if r.status_code >= 400 else "")
            if route.startswith(("GET /search", "POST /search")) and r.status_code == 200:
                check_hits(st, r.json(), t0)


def indexer(st: Soak, root: Path, ix: Path, pool: list[Path], args: argparse.Namespace) -> None:
    """Add 20 pool files, index, delete 10, index; the next cycle deletes the other 10 first."""
    churn_dir = root / "churn"
    churn_dir.mkdir()
    rng = random.Random(args.seed + 1)
    rest: list[Path] = []
    cycle = 0

    def index_now() -> None:
        t0 = time.monotonic()
        run = run_index(root, ix, args, limit=600)
        with st.lock:
            st.index_runs.append((run.seconds, run.rc))
            for entry in st.deleted.values():
                if entry[1] is None and entry[0] < t0:
                    entry[1] = time.monotonic()  # swept by a run that began after the deletion

    def delete(paths: list[Path]) -> None:
        for p in paths:
            with st.lock:
                st.deleted[str(p)] = [time.monotonic(), None]
            p.unlink()

    while time.monotonic() < st.stop_at:
        delete(rest)
        added = []
        for src in rng.sample(pool, 20):
            dst = churn_dir / f"c{cycle:03d}-{src.name}"
            shutil.copy2(src, dst)
            added.append(dst)
        index_now()
        if time.monotonic() >= st.stop_at:
            break
        delete(added[:10])
        rest = added[10:]
        index_now()
        cycle += 1


def warm_up(st: Soak, ups: list[tuple[str, bytes, str]]) -> None:
    import httpx

    with httpx.Client(base_url=st.base, timeout=300) as c:
        for q in QUERIES[:5]:
            hits = c.get("/search", params={"q": q}).json()
            for h in hits[:2]:
                c.get(f"/thumb/{h['item_id']}")
                c.get(f"/items/{h['item_id']}")
        for name, data, mime in ups[:4]:
            c.post("/search", files={"image": (name, data, mime)})
        c.post("/search", json={"q": "warm up", "not": ["cold"]})


def start_server(ix: Path, log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen(mmsearch("serve", "--index", str(ix), "--host", "127.0.0.1", "--port", str(port)),
                            cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(base + "/health").status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    stop(proc)
    sys.exit("the server did not come up")


def soak(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="torture-soak-") as tmp:
        root, ix, log = Path(tmp) / "media", Path(tmp) / "index", Path(tmp) / "server.log"
        pool = soak_set(root, Path(tmp) / "pool", rng, args.images)
        first = run_index(root, ix, args)
        print(f"index of {len(disk_files(root))} files built in {first.seconds:.0f}s (exit {first.rc})")
        server, base = start_server(ix, log)
        try:
            ups = uploads(pool)
            st = Soak(base, 0.0)
            warm_up(st, ups)
            rss = [(0.0, vm_rss(server.pid))]
            st.stop_at = time.monotonic() + args.seconds
            t0 = time.monotonic()
            threads = [threading.Thread(target=client, args=(st, args.seed * 100 + i, ups)) for i in range(args.clients)]
            threads.append(threading.Thread(target=indexer, args=(st, root, ix, pool, args)))
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads[:-1]):
                time.sleep(5)
                rss.append((time.monotonic() - t0, vm_rss(server.pid)))
            threads[-1].join()
            rss.append((time.monotonic() - t0, vm_rss(server.pid)))
            wall = time.monotonic() - t0
        finally:
            stop(server)
        report_soak(st, rss, wall, log.read_text(errors="replace"), args.warm_up)


def report_soak(st: Soak, rss: list[tuple[float, int]], wall: float, log: str, warm: float) -> None:
    total = sum(len(v) for v in st.lat.values())
    five = sum(n for c in st.codes.values() for code, n in c.items() if code >= 500)
    print(f"{total} requests in {wall:.0f}s ({total / wall:.1f}/s); 5xx: {five}; transport errors: {dict(st.errors)}")
    for route in sorted(st.lat):
        lat = [x * 1000 for x in st.lat[route]]
        fours = {code: n for code, n in st.codes[route].items() if 400 <= code < 500}
        print(f"  {route:<20} {len(lat):6d} requests  p50 {pct(lat, 50):7.1f} ms  p99 {pct(lat, 99):7.1f} ms  "
              f"max {max(lat):7.1f} ms  4xx {fours or 0}")
    print(f"404s of thumbs/items: {dict(st.expected_404) or 0} (those of files the indexer deleted are fine)")
    runs = st.index_runs
    print(f"indexer thread: {len(runs)} index runs, exit codes {dict(Counter(rc for _, rc in runs))}, "
          f"median {statistics.median([s for s, _ in runs]) if runs else 0:.1f}s, {len(st.deleted)} files deleted")
    print(f"search hits checked: {sum(st.hit_checks.values())}: {dict(st.hit_checks)}")
    t_start, start = next(((t, r) for t, r in rss if t >= warm), rss[-1])
    end = rss[-1][1]
    print(f"server RSS (MiB): {rss[0][1] / 1024:.0f} after the one-client warm-up, {start / 1024:.0f} after "
          f"{t_start:.0f}s of full load (start), {end / 1024:.0f} at end: {(end - start) / max(start, 1) * 100:+.1f} % "
          f"from start; max {max(r for _, r in rss) / 1024:.0f}")
    print("  samples (s:MiB): " + " ".join(f"{t:.0f}:{r / 1024:.0f}" for t, r in rss[:: max(1, len(rss) // 15)]))
    print(f"server log: {log.count('Traceback')} tracebacks, {len(log.splitlines())} lines")
    for k, v in list(st.examples.items())[:8]:
        print(f"  example {k}: {v}")


# -- command line -------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["kill", "mutate", "soak"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="model of new indexes (default lite)")
    ap.add_argument("--runtime", default="torch", help="image tower while indexing (torch compares like with like)")
    ap.add_argument("--rounds", type=int, default=100, help="kill: rounds")
    ap.add_argument("--finish-every", type=int, default=10, help="kill: every Nth round runs to the end")
    ap.add_argument("--share", type=float, default=0.5, help="kill: share of images given new bytes after a finished run")
    ap.add_argument("--files", type=int, default=1000, help="mutate: mutated files")
    ap.add_argument("--limit", type=float, default=3600, help="mutate: seconds before an index run counts as hung")
    ap.add_argument("--seconds", type=float, default=600, help="soak: seconds of load")
    ap.add_argument("--clients", type=int, default=8, help="soak: client threads")
    ap.add_argument("--warm-up", type=float, default=60, help="soak: seconds of full load before the start RSS")
    ap.add_argument("--images", type=int, default=200, help="soak: images in the served index")
    args = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # the checks load the model here too
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    machine()
    {"kill": kill, "mutate": mutate, "soak": soak}[args.part](args)


if __name__ == "__main__":
    main()
