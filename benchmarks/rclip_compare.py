#!/usr/bin/env python3
"""What a user pays with mmsearch and with rclip for the same jobs, with the same architecture.

    benchmarks/setup_peers.sh          # once: rclip in benchmarks/.rclip-venv
    python benchmarks/rclip_compare.py [--images 300] [--rounds 3] [FOLDER]

rclip runs ViT-B-32-256 from ONNX files in its data dir. With no network here, the script
exports them itself from a random-weight open_clip ViT-B-32-256 (speed does not depend on
weight values), in the layout and with the input/output names rclip's model_download.py and
model.py expect, plus open_clip's BPE vocabulary, so rclip never reaches for the hub (its one
download is thus done for it, as for a user who ran it once). mmsearch indexes the same folder
with the same checkpoint.

Every figure is the whole wall time of a fresh command-line process, start-up included, with
its peak resident memory:
  * first index: a new index of the folder with an empty cache (a temporary XDG_CACHE_HOME):
    mmsearch pays its one-time ONNX exports and runtime choice here, as a first-time user does;
  * second index: another new index of the folder, the cache as the first run left it;
  * text query and image query on that index (rclip: `-n`, no re-indexing).
rclip and mmsearch alternate for `--rounds` rounds, each round with fresh caches, so that the
machine's drift falls on both; the ratio is taken within each round and the median printed.
`--lite` adds mmsearch's default model (no rclip counterpart) in the same rounds. `--queries N`
then times the two queries alone for N more alternating rounds, on each side's last indexes: a
query is ~1 s, and three rounds of it measure less than the machine drifts.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "data")]

import torch  # noqa: E402

ARCH = "ViT-B-32-256"
RCLIP_MODEL_DIR = "ViT-B-32-256-datacomp_s34b_b86k"  # rclip's model_download.MODEL_SUBDIR
RCLIP = ROOT / "benchmarks" / ".rclip-venv" / "bin" / "rclip"
CACHE = Path.home() / ".cache" / "mmsearch-bench"


def random_checkpoint() -> Path:
    """A random-weight ViT-B-32-256 checkpoint, written once (seed 0)."""
    import open_clip

    ckpt = CACHE / "vit-b-32-256-random.pt"
    if not ckpt.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = open_clip.create_model(ARCH, pretrained=None)
        torch.save({"state_dict": model.state_dict()}, f"{ckpt}.tmp")
        os.replace(f"{ckpt}.tmp", ckpt)
    return ckpt


def rclip_datadir(ckpt: Path) -> Path:
    """RCLIP_DATADIR holding visual.onnx / textual.onnx (input "input", output "output") and the vocabulary."""
    import open_clip

    data = CACHE / "rclip-data"
    models = data / RCLIP_MODEL_DIR
    if (models / "textual.onnx").exists():
        return data
    models.mkdir(parents=True, exist_ok=True)
    (data / "tokenizer").mkdir(exist_ok=True)
    vocab = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    shutil.copy(vocab, data / "tokenizer" / vocab.name)
    model = open_clip.create_model(ARCH, pretrained=str(ckpt)).eval()

    class Visual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m.encode_image(x)

    class Textual(Visual):
        def forward(self, tokens):
            return self.m.encode_text(tokens)

    torch.backends.mha.set_fastpath_enabled(False)
    for module, name, example in ((Visual(), "visual", torch.randn(2, 3, 256, 256)),
                                  (Textual(), "textual", open_clip.get_tokenizer(ARCH)(["a dog", "a cat"]))):
        torch.onnx.export(module, (example,), str(models / f"{name}.onnx"), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False, opset_version=17)
    return data


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one fresh process."""
    t = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(f"{cmd[0]} failed:\n{done.stderr[-2000:]}")
    return wall, int(done.stderr.strip().splitlines()[-1]) / 1024


def cpu_flags() -> str:
    flags = set(Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split())
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return f"{model}; {os.cpu_count()} cpus; " + " ".join(f for f in wanted if f in flags)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", nargs="?")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3, help="rclip and mmsearch alternate; medians are reported")
    ap.add_argument("--lite", action="store_true", help="also mmsearch's default model, lite")
    ap.add_argument("--queries", type=int, default=0, metavar="N",
                    help="then N more rounds of the two queries alone, on the last round's indexes")
    args = ap.parse_args()
    if not RCLIP.exists():
        raise SystemExit("rclip is not installed: run benchmarks/setup_peers.sh")
    ckpt = random_checkpoint()
    spec = f"open_clip:{ARCH}:{ckpt}"
    data = rclip_datadir(ckpt)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.folder:
            source = sorted(p for p in Path(args.folder).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        else:
            import fetch

            source = sorted(fetch.fetch("tuxpaint").rglob("*.png"))
        folder = tmp / "images"
        folder.mkdir()
        for p in source[: args.images]:
            shutil.copy2(p, folder / f"{p.parent.name}-{p.name}")
        photo = folder / sorted(os.listdir(folder))[0]
        runs = iter(range(1000))
        base_env = {k: v for k, v in os.environ.items() if k not in ("MMSEARCH_CACHE", "MMSEARCH_INDEX")}
        base_env["HF_HUB_OFFLINE"] = "1"

        def rclip_jobs() -> dict[str, tuple[float, float]]:
            rdata = tmp / f"rclip-data-{next(runs)}"  # a fresh rclip database, the exported model linked in
            (rdata / RCLIP_MODEL_DIR).mkdir(parents=True)
            for f in (data / RCLIP_MODEL_DIR).iterdir():
                (rdata / RCLIP_MODEL_DIR / f.name).symlink_to(f)
            (rdata / "tokenizer").symlink_to(data / "tokenizer")
            env = {**base_env, "RCLIP_DATADIR": str(rdata)}
            first = timed([str(RCLIP), "-f", "-t", "1", "a dog"], folder, env)
            (rdata / "db.sqlite3").unlink(missing_ok=True)  # a second new database: rclip keeps no other cache
            second = timed([str(RCLIP), "-f", "-t", "1", "a dog"], folder, env)
            again["rclip"] = lambda: {"text query": timed([str(RCLIP), "-n", "-f", "-t", "5", "a photo"], folder, env),
                                      "image query": timed([str(RCLIP), "-n", "-f", "-t", "5", str(photo)], folder, env)}
            return {"first index": first, "second index": second, **again["rclip"]()}

        def ours(name: str, model: str) -> dict[str, tuple[float, float]]:
            env = {**base_env, "XDG_CACHE_HOME": str(tmp / f"cache-{next(runs)}")}  # empty, as a first-time user's
            mm = [sys.executable, "-m", "mmsearch"]
            out = {}
            for job in ("first index", "second index"):
                index = str(tmp / f"index-{next(runs)}")
                out[job] = timed([*mm, "index", str(folder), "--index", index, "--model", model], ROOT, env)
            again[name] = lambda: {
                "text query": timed([*mm, "search", "a photo", "--index", index, "-k", "5"], ROOT, env),
                "image query": timed([*mm, "search", "--image", str(photo), "--index", index, "-k", "5"], ROOT, env)}
            return {**out, **again[name]()}

        print(f"{len(os.listdir(folder))} images, {ARCH} (random weights); {cpu_flags()}")
        sides = {"rclip": rclip_jobs, "mmsearch": lambda: ours("mmsearch", spec)}
        if args.lite:
            sides["mmsearch lite"] = lambda: ours("mmsearch lite", "lite")
        again: dict[str, Callable[[], dict[str, tuple[float, float]]]] = {}  # each side's queries on its last indexes
        report(sides, args.rounds)
        if args.queries:
            report(again, args.queries)


def report(sides: dict[str, Callable[[], dict[str, tuple[float, float]]]], rounds: int) -> None:
    """Run the sides' jobs alternating, round after round, and print their medians."""
    results: dict[str, list[dict]] = {k: [] for k in sides}
    for r in range(rounds):
        for name, run in sides.items():
            results[name].append(run())
        line = "; ".join(f"{job} rclip {results['rclip'][-1][job][0]:.2f} s, mmsearch {results['mmsearch'][-1][job][0]:.2f} s"
                         for job in results["rclip"][-1])
        print(f"round {r + 1}: {line}", flush=True)
    print(f"median of {rounds} rounds (wall s / peak RSS MB; ratio = rclip's wall / mmsearch's, >1: mmsearch faster):")
    for job in results["rclip"][0]:
        cells = []
        for name in sides:
            walls = [x[job][0] for x in results[name]]
            cells.append(f"{name} {statistics.median(walls):6.2f} s / {statistics.median(x[job][1] for x in results[name]):5.0f} MB")
        ratios = [a[job][0] / b[job][0] for a, b in zip(results["rclip"], results["mmsearch"])]
        print(f"  {job:13s} " + "  ".join(cells) + f"  ratio {statistics.median(ratios):.2f} "
              f"(rounds {', '.join(f'{x:.2f}' for x in ratios)})", flush=True)


if __name__ == "__main__":
    main()
