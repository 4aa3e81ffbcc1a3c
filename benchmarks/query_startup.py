#!/usr/bin/env python3
"""What a one-shot query costs from the command line, beside rclip's (issue 17).

    benchmarks/setup_peers.sh                    # once: rclip in benchmarks/.rclip-venv
    python benchmarks/query_startup.py [--rounds 7] [--images 100] [--cold] [--also old=/path/to/tree] [--keep DIR]
    python benchmarks/query_startup.py --sessions [--rounds 5] [--cold]

Indexes a folder of Tux Paint stamps once with open_clip ViT-B-32-256 (the random-weight
checkpoint of rclip_compare.py) and with `lite` (a fresh cache, so the query exports are made
as a first run makes them), and rclip indexes it once. Then, in rounds, each query runs in a
fresh process, one after another, so that the machine's drift falls on all alike: rclip's text
query, mmsearch's text and image (`--image`) queries for both models, and the same for every
`--also NAME=TREE` (another checkout of mmsearch, run from its own folder; an older one reads
the exports of its own format). Whole wall time and peak RSS (`/usr/bin/time`), medians
printed, with the CPU flags and the load average before and after.

`--cold` drops the page cache before every timed process (root only): imports and model files
are read from disk then. `--sessions` instead times, in fresh processes, opening each file layout
of ViT-B-32-256's towers and their first run: one .onnx with its weights inline (the layout
before query-v2), ONNX Runtime's own format, and the export as it is (weights apart), with and
without prepacking.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

from rclip_compare import ARCH, RCLIP, RCLIP_MODEL_DIR, ROOT, cpu_flags, random_checkpoint, rclip_datadir, timed

TEXT = "a cup of coffee"

#: opens one tower file with the options named in argv and runs it once: prints create and first-run seconds, peak RSS
SESSION = """
import json, sys, time
import numpy as np, onnxruntime as ort
path, *flags = sys.argv[1:]
o = ort.SessionOptions()
o.log_severity_level = 3
if "optimised" in flags:
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
if "noprepack" in flags:
    o.add_session_config_entry("session.disable_prepacking", "1")
if "direct" in flags:
    o.add_session_config_entry("session.use_ort_model_bytes_directly", "1")
    o.add_session_config_entry("session.use_ort_model_bytes_for_initializers", "1")
t = time.perf_counter()
s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
create = time.perf_counter() - t
name = s.get_inputs()[0].name
x = np.ones((1, 77), np.int64) if name == "input_ids" else np.full((1, 256, 256, 3), 128, np.uint8)
t = time.perf_counter()
s.run(None, {name: x})
run = time.perf_counter() - t
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps([create, run, peak / 1024]))  # (ru_maxrss would start at the forking parent's)
"""


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def session_layouts(export: Path, tmp: Path) -> dict[str, tuple[Path, list[str]]]:
    """Each tower in each layout: (file, options for SESSION)."""
    import onnx
    import onnxruntime as ort

    layouts = {}
    for tower, name in (("text", "text.onnx"), ("image", "visual.query.onnx")):
        inline = tmp / f"{tower}.inline.onnx"
        onnx.save(onnx.load(str(export / name)), str(inline))  # weights back inside the protobuf
        ort_file = tmp / f"{tower}.ort"
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(ort_file)
        opts.add_session_config_entry("session.save_model_format", "ORT")
        opts.log_severity_level = 3
        ort.InferenceSession(str(inline), opts, providers=["CPUExecutionProvider"])
        layouts |= {f"{tower}: one .onnx, optimised at load (before)": (inline, []),
                    f"{tower}: ORT format, bytes used directly": (ort_file, ["optimised", "direct"]),
                    f"{tower}: weights apart, prepacked (server)": (export / name, ["optimised"]),
                    f"{tower}: weights apart, no prepacking (one-shot)": (export / name, ["optimised", "noprepack"])}
    return layouts


def sessions(export: Path, tmp: Path, rounds: int, cold: bool) -> None:
    layouts = session_layouts(export, tmp)
    got: dict[str, list[list[float]]] = {k: [] for k in layouts}
    for _ in range(rounds):
        for label, (path, flags) in layouts.items():
            if cold:
                drop_caches()
            out = subprocess.run([sys.executable, "-c", SESSION, str(path), *flags], capture_output=True, text=True, check=True)
            got[label].append(json.loads(out.stdout))
    print(f"median of {rounds} fresh processes{' (page cache dropped before each)' if cold else ''}: "
          "create s / first run s / together s / peak RSS MB")
    for label, runs in got.items():
        c, r, m = (statistics.median(x[i] for x in runs) for i in range(3))
        print(f"  {label:52s} {c:6.3f} {r:6.3f} {statistics.median(x[0] + x[1] for x in runs):6.3f} {m:5.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--cold", action="store_true", help="drop the page cache before every timed process (root)")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=TREE", help="another mmsearch checkout, timed alike")
    ap.add_argument("--sessions", action="store_true", help="time opening each file layout of the towers instead")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it: a later run reuses its indexes and exports")
    args = ap.parse_args()
    if not RCLIP.exists() and not args.sessions:
        raise SystemExit("rclip is not installed: run benchmarks/setup_peers.sh")
    ckpt = random_checkpoint()
    spec = f"open_clip:{ARCH}:{ckpt}"
    data = rclip_datadir(ckpt)
    print(f"{cpu_flags()}; {load()}", flush=True)
    with tempfile.TemporaryDirectory() if args.keep is None else nullcontext(args.keep) as tmp_name:
        tmp = Path(tmp_name)
        import fetch

        folder = tmp / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for p in sorted(fetch.fetch("tuxpaint").rglob("*.png"))[: args.images]:
            shutil.copy2(p, folder / f"{p.parent.name}-{p.name}")
        photo = folder / sorted(os.listdir(folder))[0]
        env = {k: v for k, v in os.environ.items() if k not in ("MMSEARCH_INDEX", "XDG_CACHE_HOME")}
        env |= {"HF_HUB_OFFLINE": "1", "MMSEARCH_CACHE": str(tmp / "cache")}
        models = {"vit": spec} if args.sessions else {"vit": spec, "lite": "lite"}
        trees = {"mmsearch": ROOT} | {name: Path(path) for name, path in (a.split("=", 1) for a in args.also)}
        for tree, path in trees.items():  # each its own indexes (schemas differ); the first run makes the exports
            for name, model in models.items():
                subprocess.run([sys.executable, "-m", "mmsearch", "index", str(folder), "--index", str(tmp / tree / name),
                                "--model", model], cwd=path, env=env, check=True, capture_output=True)
        if args.sessions:
            from mmsearch.retrieval.encoders.query import EXPORT_FORMAT

            seals = [(p, json.loads(p.read_text())) for p in (tmp / "cache" / "models").glob("*/meta.json")]
            seal = next(p for p, m in seals if m["identity"].startswith(f"open_clip:{ARCH}:") and m["format"] == EXPORT_FORMAT)
            sessions(seal.parent, tmp, args.rounds, args.cold)
            print(load())
            return

        rdata = tmp / "rclip-data"  # rclip's database of the same folder, the exported model linked in
        (rdata / RCLIP_MODEL_DIR).mkdir(parents=True, exist_ok=True)
        for link, f in [(rdata / RCLIP_MODEL_DIR / f.name, f) for f in (data / RCLIP_MODEL_DIR).iterdir()] + [
                (rdata / "tokenizer", data / "tokenizer")]:
            if not link.is_symlink():
                link.symlink_to(f)
        renv = {**env, "RCLIP_DATADIR": str(rdata)}
        timed([str(RCLIP), "-f", "-t", "1", "a dog"], folder, renv)  # indexes

        jobs = {"rclip text": ([str(RCLIP), "-n", "-f", "-t", "5", TEXT], folder, renv)}
        for tree, path in trees.items():
            for name in models:
                mm = [sys.executable, "-m", "mmsearch", "search", "--index", str(tmp / tree / name), "-k", "5"]
                jobs[f"{tree} {name} text"] = ([*mm, TEXT], path, env)
                jobs[f"{tree} {name} image"] = ([*mm, "--image", str(photo)], path, env)
        for cmd, cwd, e in jobs.values():  # once each, untimed: first-query work
            timed(cmd, cwd, e)
        got: dict[str, list[tuple[float, float]]] = {k: [] for k in jobs}
        for r in range(args.rounds):
            for job, (cmd, cwd, e) in jobs.items():
                if args.cold:
                    drop_caches()
                got[job].append(timed(cmd, cwd, e))
            print(f"round {r + 1}: " + ", ".join(f"{job} {got[job][-1][0]:.2f}" for job in jobs), flush=True)
        print(f"median of {args.rounds} rounds{' (page cache dropped before each)' if args.cold else ''}, {load()}; "
              "wall s / peak RSS MB / rclip's text wall ÷ this wall (> 1: faster than rclip)")
        for job, runs in got.items():
            ratio = statistics.median(a[0] / b[0] for a, b in zip(got["rclip text"], runs))
            print(f"  {job:22s} {statistics.median(w for w, _ in runs):5.2f} s  {statistics.median(m for _, m in runs):5.0f} MB"
                  f"  {ratio:5.2f}")


if __name__ == "__main__":
    main()
