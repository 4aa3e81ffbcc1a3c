"""Indexing without PyTorch: a model as its cached exports, when they hold everything indexing needs.

A run embeds images through the ONNX image tower the runtime choice picked (runtime.py), and
text passages through the text tower queries use (query.py); both live in the model's cache
folder, and the sealed query export also says how the model shapes a picture (without
torchvision). When all of it is there, for this machine's thread count, an indexing run never
loads the model: for open_clip ViT-B-32-256 that was ~5 s of a 9.8 s run of 300 images
(importing torch and open_clip, building the model, hashing nothing more than the checkpoint's
samples). Everything is checked against PyTorch once, when it is exported; this module only
reads. Torch-free by design: importing it, or running what it returns, loads no torch.
"""
from __future__ import annotations

import functools
import json
import os
import queue
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ...media.image import geometry
from . import RUNTIMES, identity
from .pixels import PixelEncoder, PixelPrep
from .query import META, QueryEncoder, model_dir, unit

if TYPE_CHECKING:
    from .base import Encoder

#: ONNX Runtime sessions that share the cores, each with its own threads (see `PixelEncoder`):
#: on 2 cores two one-thread sessions embedded ~10% more images/s than one two-thread session
LANES = 2
#: images per session run: a run's activations live in the session's memory arena, which at 32
#: images grew to ~1 GB for `lite` and took ~1 s of page faults to warm; at 8 the arena is a
#: quarter and the throughput the same (measured on 2 cores)
RUN_BATCH = 8
#: the exported image graph's input name
INPUT = "input"
#: the image tower files of each ONNX runtime, in a model's cache folder
VISUAL = {"onnx": "visual.onnx", "onnx-int8": "visual.int8.onnx"}
CHOICE = "choice.json"
#: the runtime that is PyTorch with the image tower in bfloat16 (runtime.py)
BF16 = "torch-bf16"
#: choice.json's format: 2 from when bf16 is a contender, saved as PyTorch with a dtype (an older
#: mmsearch, which knows no torch-bf16, then runs float32 rather than fail)
CHOICE_VERSION = 2
#: fewer images to embed than this: not worth a first export and runtime choice (runtime.py)
AUTO_MIN_IMAGES = 200


def threads() -> int:
    """Threads the image tower may use: ``OMP_NUM_THREADS`` when set, else the physical cores
    among the CPUs this process may run on (as PyTorch counts by default: hyperthread siblings
    share one core's arithmetic units). The runtime choice is recorded with it and reused only
    on the same count."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        pass
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:  # (no sysfs: count the CPU as a core)
            cores.add(str(cpu))
    return max(1, len(cores))


def session(path: Path, n_threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = n_threads
    # decode workers share the cores: threads that spin while waiting would take their time
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_encoder(path: Path) -> PixelEncoder:
    """Up to `LANES` sessions of the image tower at `path` splitting the threads; a call runs on
    whichever is free."""
    lanes = max(1, min(LANES, threads()))
    free: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(lanes):
        free.put(session(path, threads() // lanes))

    def encode(pixels: np.ndarray) -> np.ndarray:
        s = free.get()
        try:
            out = np.concatenate([s.run(None, {INPUT: pixels[i : i + RUN_BATCH]})[0] for i in range(0, len(pixels), RUN_BATCH)])
        finally:
            free.put(s)
        return unit(out)

    return PixelEncoder(encode, lanes)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's flags as Linux lists them (none elsewhere); read once a process."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split("\nflags", 1)[1].split("\n", 1)[0].split())
    except (OSError, IndexError):
        return frozenset()


def bf16_hardware() -> bool:
    """Whether the CPU has bfloat16 arithmetic (AMX, or AVX-512 BF16): elsewhere PyTorch emulates
    it, 5-10 × slower than float32 (ViT-B-32 with oneDNN held to AVX-512 VNNI: 7 vs 38 images/s)."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def int8_hardware() -> bool:
    """Whether the CPU multiplies 8-bit integers faster than float32 by design: x86 with AVX2,
    where ONNX Runtime's integer products do 32 multiply-adds an instruction (an FMA does 8 in
    float32); AVX-512 VNNI does more."""
    return "avx2" in cpu_flags()


def gpu_present() -> bool:
    """Whether an NVIDIA GPU may serve this process, judged without loading PyTorch (which
    confirms: `runtime.cuda_ready`): the driver's control device is there, and CUDA_VISIBLE_DEVICES
    does not hide every GPU (Ray sets it empty in an actor that asked for none)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidiactl")


#: a runtime choice timed while other processes kept more than this share of our CPUs busy is
#: measured again by the next run, up to `MEASURES` times: under load PyTorch's OpenMP threads
#: lose far more than ONNX Runtime's lanes (float32 3.9-8.5, bf16 5.8-19 images/s against int8
#: 48-100 beside a test suite), and a first run on a busy machine kept a runtime 2 × slower for
#: good (ViT-B-32-256 beside one busy loop: int8 chosen, others 0.4; quiet: bf16, 0.0)
MAX_OTHERS = 0.25
MEASURES = 3


def saved_choice(folder: Path) -> str | None:
    """The runtime the choice saved in `folder` picked for this thread count and CPU, if any.
    A cache folder can be shared (a home directory on NFS, a cache volume, Ray nodes): a bf16
    choice is not taken on a CPU without bf16, nor a choice made before bf16 was a contender
    (version 1) on one with it; either is measured again, as is one timed on a busy machine
    (`MAX_OTHERS`)."""
    try:
        saved = json.loads((folder / CHOICE).read_text())
        if saved.get("threads") != threads():
            return None
        if saved.get("others", 0.0) > MAX_OTHERS and saved.get("measures", 1) < MEASURES:
            return None
        runtime = BF16 if saved.get("dtype") == "bfloat16" and saved["runtime"] == "torch" else saved["runtime"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if runtime == BF16 and not bf16_hardware():
        return None
    if saved.get("version", 1) < CHOICE_VERSION and runtime != BF16 and bf16_hardware():
        return None
    return runtime if runtime in RUNTIMES and runtime != "auto" else None


@dataclass
class ExportedEncoder:
    """What an indexing run asks of an `Encoder` (identity, dim, `pixel_prep`, `encode_texts`),
    answered from the model's cache folder, plus the image tower the runtime choice picked."""

    spec: str
    identity: str
    dim: int
    pixel_prep: PixelPrep
    runtime: str
    visual: Path
    query: QueryEncoder

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if self.query.open(texts=True):
            return self.query.encode_texts(texts)
        # a damaged text tower (unsealed by `open`; the run's end makes it anew): the model's own
        from . import load_encoder

        return load_encoder(self.spec).encode_texts(texts)

    @classmethod
    def find(cls, spec: str, runtime: str = "auto", images: int | None = None) -> ExportedEncoder | None:
        """The model `spec` names as its exports, when its cache folder holds a sealed query
        export with the model's picture geometry, and an image tower that is there: the one the
        runtime choice for this machine named, else, for a job of fewer `images` than a choice
        is made for (None: not known yet) or where PyTorch bfloat16 was chosen, the query export's own
        fp32 tower, which was never slower than PyTorch's float32 forward (`lite` 41 vs 10
        images/s). `runtime`: auto, or that very runtime. None where PyTorch was chosen for a
        bigger job, a GPU may take a bigger job (`gpu_present`), a choice is still to be made,
        or anything is missing."""
        if runtime == "auto" and images is not None and images >= AUTO_MIN_IMAGES and gpu_present():
            return None
        stored, ident = identity.of(spec)
        folder = model_dir(ident)
        query = QueryEncoder.read(ident, folder)
        if query is None or query.image is None:
            return None
        chosen = saved_choice(folder)
        if chosen in (None, BF16) and (images is None or images < AUTO_MIN_IMAGES):
            # a small job: PyTorch's start-up (~6 s for ViT-B-32-256) would cost more than bf16 saves
            chosen, visual = "onnx", folder / query.image["file"]
        elif chosen in VISUAL:
            visual = folder / VISUAL[chosen]
        else:
            return None
        if runtime not in ("auto", chosen) or not visual.is_file():
            return None
        # the sealed geometry makes the model's very pixels (checked at export); the model's input
        # side is its crop, which the decoder is also told (draft decoding), as with the model
        prep = PixelPrep(geometry(query.image), (), (), int(query.image["crop"]))
        return cls(stored, ident, query.dim, prep, chosen, visual, query)


def image_forward(encoder: Encoder | ExportedEncoder, runtime: str, images: int,
                  beside: Callable[[], Any] | None = None) -> tuple[PixelEncoder, str]:
    """The image forward an indexing run of `images` images uses, and its runtime's name: the
    exported encoder's own, else the one `runtime.pixel_encoder` picks (loading PyTorch;
    `beside` as `runtime.choose` takes it)."""
    if isinstance(encoder, ExportedEncoder):
        try:
            return onnx_encoder(encoder.visual), encoder.runtime
        except Exception:  # a damaged file: removed (a query tower unsealed), for the model to make anew
            from . import load_encoder

            encoder.visual.unlink(missing_ok=True)
            if encoder.visual.name == (encoder.query.image or {}).get("file"):
                (encoder.query.folder / META).unlink(missing_ok=True)
            encoder = load_encoder(encoder.spec)
    from .runtime import pixel_encoder

    return pixel_encoder(encoder, runtime=runtime, images=images, beside=beside)
