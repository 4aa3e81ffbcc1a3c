#!/usr/bin/env python3
"""mmsearch and rclip indexing the same image folder with the same architecture, side by side.

    benchmarks/setup_peers.sh          # once: rclip in benchmarks/.rclip-venv
    python benchmarks/rclip_compare.py [--small 128] [--images 640] [FOLDER]

rclip runs ViT-B-32-256 from ONNX files in its data dir. With no network here, the script
exports them itself from a random-weight open_clip ViT-B-32-256 (speed does not depend on
weight values), in the layout and with the input/output names rclip's model_download.py and
model.py expect, plus open_clip's BPE vocabulary, so rclip never reaches for the hub. mmsearch
indexes the same folder with the same checkpoint, once per image-tower runtime.

Both tools are timed the same way, as fresh command-line runs over a small and a large folder
(the first --small and --images stamps): images/s = (large − small) / (wall time difference),
so start-up, imports, model load and rclip's query cancel out and only indexing is left. They
alternate for `--rounds` rounds; the median rate and the median within-round ratio are printed.
mmsearch's one-time ONNX export and runtime measurement (cached per index; here shared through
a template index directory) is done before timing and reported separately.
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


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{cmd[0]} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - t


def marginal_rate(run, small: Path, large: Path) -> float:
    """Images/s from two fresh runs: the extra images of `large` over the extra seconds."""
    extra = len(list(large.iterdir())) - len(list(small.iterdir()))
    return extra / (run(large) - run(small))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", nargs="?")
    ap.add_argument("--images", type=int, default=640)
    ap.add_argument("--small", type=int, default=128)
    ap.add_argument("--runtimes", nargs="+", default=["auto", "torch"])
    ap.add_argument("--rounds", type=int, default=3, help="rclip and mmsearch alternate; the median is reported")
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
        folders = {}
        for name, n in (("small", args.small), ("large", args.images)):
            folders[name] = tmp / name
            folders[name].mkdir()
            for p in source[:n]:
                shutil.copy2(p, folders[name] / f"{p.parent.name}-{p.name}")
        runs = iter(range(1000))

        def rclip(folder: Path) -> float:
            rdata = tmp / f"rclip-data-{next(runs)}"  # a fresh rclip database, the exported model linked in
            (rdata / RCLIP_MODEL_DIR).mkdir(parents=True)
            for f in (data / RCLIP_MODEL_DIR).iterdir():
                (rdata / RCLIP_MODEL_DIR / f.name).symlink_to(f)
            (rdata / "tokenizer").symlink_to(data / "tokenizer")
            env = {**os.environ, "RCLIP_DATADIR": str(rdata), "HF_HUB_OFFLINE": "1"}
            return timed([str(RCLIP), "-f", "-t", "1", "a dog"], folder, env)

        template = tmp / "template"  # an index holding only the one-time ONNX export and choice
        t = time.perf_counter()
        from mmsearch.retrieval.encoders import load_encoder
        from mmsearch.retrieval.encoders.runtime import pixel_encoder
        from mmsearch.retrieval.index import Index

        Index(template, create=True)
        chosen = pixel_encoder(load_encoder(spec), template, "auto", images=args.images)[1]
        print(f"{args.small} and {args.images} images, {ARCH} (random weights), {os.cpu_count()} cpus")
        print(f"mmsearch one-time ONNX export + runtime choice: {time.perf_counter() - t:.1f} s -> {chosen}")

        def ours(runtime: str):
            def run(folder: Path) -> float:
                index = tmp / f"index-{next(runs)}"
                shutil.copytree(template / "onnx", index / "onnx")
                cmd = [sys.executable, "-m", "mmsearch", "index", str(folder), "--index", str(index), "--model", spec,
                       "--runtime", runtime]
                return timed(cmd, ROOT, {**os.environ, "HF_HUB_OFFLINE": "1"})
            return run

        # rclip and each runtime of ours alternate, round after round, so that the machine's drift
        # (±10 % within minutes) falls on all of them alike; each round's ratio is taken within it
        rates: dict[str, list[float]] = {"rclip": [], **{r: [] for r in args.runtimes}}
        for r in range(args.rounds):
            rates["rclip"].append(marginal_rate(rclip, folders["small"], folders["large"]))
            for runtime in args.runtimes:
                rates[runtime].append(marginal_rate(ours(runtime), folders["small"], folders["large"]))
            print(f"round {r + 1}: rclip {rates['rclip'][-1]:.1f}, "
                  + ", ".join(f"mmsearch {k} {rates[k][-1]:.1f} ({rates[k][-1] / rates['rclip'][-1]:.2f}x)"
                              for k in args.runtimes) + " images/s", flush=True)
        print(f"median of {args.rounds} rounds:")
        print(f"rclip 3.3 (ONNX Runtime fp32)       {statistics.median(rates['rclip']):7.1f} images/s")
        for runtime in args.runtimes:
            ratios = [a / b for a, b in zip(rates[runtime], rates["rclip"])]
            print(f"mmsearch --runtime {runtime:10s}       {statistics.median(rates[runtime]):7.1f} images/s  "
                  f"= {statistics.median(ratios):.2f}x rclip (rounds: {', '.join(f'{x:.2f}' for x in ratios)})")


if __name__ == "__main__":
    main()
