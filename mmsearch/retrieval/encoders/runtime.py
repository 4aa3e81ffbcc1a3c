"""Which runtime embeds images while indexing: PyTorch in float32 or bfloat16, or ONNX Runtime
in fp32 or dynamic int8, on the CPU; PyTorch in float32 on a CUDA GPU wherever PyTorch has one.

Indexing spends nearly all its time in the image tower. On CPU, ONNX Runtime with int8 weights
runs a ViT about twice as fast as PyTorch float32 (1.8–3× measured, with or without VNNI integer
instructions), and on CPUs with AMX PyTorch in bfloat16 runs it about four times as fast. The
first index run with a model measures: bfloat16 against float32 where the CPU has it (taken at
once when it wins clearly: nothing is exported), else the image forward (uint8 pixels -> raw
embedding, normalisation and head included; see pixels.py) exported to ONNX, a quantised copy,
both timed on a calibration batch; the fastest whose vectors agree with PyTorch's float32
(cosine >= `MIN_COSINE` on every calibration image) is used from then on; where int8 wins
beyond doubt (an AVX2 CPU, a transformer's tower) it is only checked for agreement. Everything
lands in the model's folder of the user cache (`query.model_dir`), with a ``choice.json`` saying
what was measured, for this core count and CPU, so the cost is paid once per model and machine; later
runs index from the ONNX files without loading the model (exported.py), or, with bfloat16
chosen and 200 images or more, load it. This module also writes the query export (text tower,
and image tower where it can; query.py), checked against PyTorch before it is sealed.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Container

import numpy as np
import torch

from ...errors import UserError
from ...media.image import geometry
from . import CUDA, exported
from .base import Encoder
from .exported import AUTO_MIN_IMAGES, BF16, CHOICE, CHOICE_VERSION, INPUT, VISUAL, onnx_encoder, saved_choice, threads
from .pixels import PixelEncoder
from .query import EXPORT_FORMAT, META, TEXT_VERSION, QueryEncoder, model_dir, unit

MIN_COSINE = 0.99
CALIBRATION_IMAGES = 8
#: of which an int8 tower taken untimed (`_int8_plain`) is checked on the first: PyTorch's
#: reference forward on them comes before anything else can use the second core (ViT-B-32-256
#: on the AMD EPYC: 8 images 0.8 s, 4 0.4 s), and the cosines sat at 0.9996 against a floor of 0.99
CHECK_IMAGES = 4
INT8_MARGIN = 1.15
#: the ONNX runtimes are timed once more only while the winner's lead, beyond the int8 margin, is
#: under this: a round on these shared cores strayed by up to ~15 %, and ViT-B-32-256 led by 1.55
#: (int8 25 images/s, fp32 14 on the AMD EPYC; ~3 with VNNI): two rounds of ~0.9 s saved
CLEAR_LEAD = 1.3
#: int8 is taken without timing float32 against it (`_int8_plain`) on a CPU with AVX2 for a tower
#: with this share of its weights or more in matrix products (ViT-B-32-256: 0.97; lite's
#: EfficientNet: 0.26, where int8 ran 1.04 × fp32 and fp32 is kept). ViT-B-32-256's int8 ran 1.8 ×
#: fp32 on the AMD EPYC with AVX2 only and 2-3 × with VNNI; timing fp32 (opening its sessions, a
#: warm-up and a round) was ~2 s of a first index of 300 images
INT8_PLAIN_SHARE = 0.9
#: PyTorch in bfloat16 is taken without exporting anything when it runs this many times as fast
#: as PyTorch in float32 on the calibration batch: more than ONNX Runtime int8 did on the same
#: CPUs. On a Xeon with AMX, ViT-B-32-256: bf16 3.3× on 8 images (4.2× at 32), int8 1.85×
#: (48 images/s against bf16's 112); then a first run of 300 images skips tracing, quantising
#: and timing the image tower
BF16_MIN_SPEEDUP = 2.5

class _ImageForward(torch.nn.Module):
    """The encoder's image forward on uint8 NHWC pixels, as a module torch.onnx can trace. Its
    networks are registered as submodules so their weights export as initializers (which the
    int8 quantiser needs), not as constants."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder, self.prep = encoder, encoder.pixel_prep
        self.towers = torch.nn.ModuleList(m for m in vars(encoder).values() if isinstance(m, torch.nn.Module))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder._forward_pixels(self.prep.normalise(pixels))


def calibration_pixels(encoder: Encoder, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Deterministic stand-ins for real images (gradients, blocks of colour, noise): preprocessed
    the model's own way so the agreement check sees realistic input statistics."""
    from PIL import Image

    rng = np.random.default_rng(0)
    size = encoder.image_size
    images = []
    for i in range(n):
        yy, xx = np.mgrid[0:size, 0:size] / size
        base = np.stack([xx, yy, (xx + yy) / 2], -1)[..., np.roll(np.arange(3), i)]
        for _ in range(4):
            y, x, h, w = rng.integers(0, size // 2, 4)
            base[y : y + h + 8, x : x + w + 8] = rng.random(3)
        base += rng.normal(0, 0.05 * (i % 3), base.shape)
        images.append(Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8)))
    prep = encoder.pixel_prep
    return np.stack([prep(im) for im in images])


def _sweep(folder: Path) -> None:
    """Remove what exports of processes no longer running left half written (``*.<pid>.tmp*``: a
    killed first index run; an optimised ViT-B-32 image tower is 350 MB)."""
    for leftover in folder.glob("*.tmp*"):
        found = re.search(r"\.(\d+)\.tmp", leftover.name)
        if found is None or int(found[1]) == os.getpid():
            continue
        try:
            os.kill(int(found[1]), 0)
        except ProcessLookupError:  # (PermissionError: alive, another user's)
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        except (OSError, OverflowError):
            pass


def export(encoder: Encoder, folder: Path, fp32: bool = True, int8: bool = True, traced: Traced | None = None) -> dict[str, Path]:
    """The image tower's files that are asked for, made where missing from `traced` (default:
    traced now, when needed): with `fp32`, visual.onnx (its weights apart in visual.onnx.data);
    with `int8`, visual.int8.onnx (dynamic int8 weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    _sweep(folder)
    files = {name: folder / fn for name, fn in VISUAL.items() if (fp32, int8)[name == "onnx-int8"]}
    if "onnx" in files and not (files["onnx"].exists() and _weights(files["onnx"]).exists()):
        # traced without its weights and folded by ONNX Runtime, as the query towers are, but
        # into standard operators only. ViT-B-32-256 on the AMD EPYC: 5.0 s with the exporter
        # folding and serialising the weights into the file, 1.45 s to trace + 1.5 s to fold and write
        traced = traced or _traced(*_image_graph(encoder))
        optimise(traced, files["onnx"], fusions=False)
    if "onnx-int8" in files and not files["onnx-int8"].exists():
        # quantised from the traced graph, not from visual.onnx: nothing waits for a fold
        # (ViT-B-32-256: 1.2-2.0 s), and ONNX Runtime folds the rest as it loads (+0.05 s a session)
        tmp = folder / f"visual.int8.{os.getpid()}.tmp.onnx"
        _quantise(traced or _traced(*_image_graph(encoder)), tmp)
        os.replace(tmp, files["onnx-int8"])
    return files


def _quantise(traced: Traced, dst: Path) -> None:
    """`traced` with every matrix product by a weight (a MatMul, or a Gemm with a weight and a
    bias; the weight an initializer or its transpose) made ONNX Runtime's DynamicQuantizeMatMul:
    the weight in int8, 7-bit symmetric per tensor (`_int8`), the activations quantised as it
    runs. That is what `quantize_dynamic` makes (the same integer weights and scales) once ONNX
    Runtime has fused its MatMulInteger nodes on loading, made without its passes over a
    protobuf copy of the whole graph: ViT-B-32-256 on the AMD EPYC 1.3-1.5 s -> 0.6 s
    (tests/test_runtime.py compares the two). Matrix products only: they are where a
    transformer spends its time, and ONNX Runtime's integer convolutions are slower than its
    float ones on CPU. What no longer feeds an output (a transposed weight now integer) goes."""
    import onnx
    from onnx import helper, numpy_helper

    model, array = onnx.load_from_string(traced.graph), traced.weights
    weights, products, shown = _products(model.graph)
    made: dict[str, list[str]] = {}  # a weight's int8 inputs, made once however many products share it
    nodes, out = [], []
    for i, n in enumerate(model.graph.node):
        if i not in products:
            nodes.append(n)
            continue
        name, transpose = products[i]
        key = f"{name}:t" if transpose else name
        if key not in made:
            q, scale = _int8(array[name])  # (turned round after: 4 × fewer bytes to move than floats)
            q = np.ascontiguousarray(q.T) if transpose else q
            made[key] = [f"{key}_int8", f"{key}_scale", f"{key}_zero"]
            out += [numpy_helper.from_array(q, made[key][0]), numpy_helper.from_array(scale, made[key][1]),
                    numpy_helper.from_array(np.zeros((), np.int8), made[key][2])]
        bias = n.input[2:3] if n.op_type == "Gemm" else []
        nodes.append(helper.make_node("DynamicQuantizeMatMul", [n.input[0], *made[key], *bias], list(n.output),
                                      name=n.name, domain="com.microsoft"))
    needed = set(shown)  # (from the outputs back: the nodes, then the weights, something still reads)
    for n in reversed(nodes):
        if needed.intersection(n.output):
            needed.update(n.input)
    out += [numpy_helper.from_array(array[name], name) for name in weights if name in needed]
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.extend(n for n in nodes if needed.intersection(n.output))
    model.graph.initializer.extend(out)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with open(dst, "wb") as f:
        f.write(model.SerializeToString())


def _products(graph: Any) -> tuple[dict[str, Any], dict[int, tuple[str, bool]], set[str]]:
    """`graph`'s initializers by name; the matrix products by a weight that the quantiser makes
    integer, by their place among its nodes, each with its weight as `_weight` gives it; and the
    names the graph shows outside its top-level products (its inputs and outputs, what its
    subgraphs read): never dropped, nor made integer."""
    weights = {t.name: t for t in graph.initializer}
    shown = {v.name for v in (*graph.input, *graph.output)} | _subgraph_inputs(graph)
    flipped = _transposed(graph, weights)
    products = {i: w for i, n in enumerate(graph.node) if (w := _weight(n, weights, flipped, shown)) is not None}
    return weights, products, shown


def _transposed(graph: Any, weights: dict[str, Any]) -> dict[str, str]:
    """The outputs of `graph`'s Transpose nodes that turn a 2-D weight of `weights` round, each
    with that weight's name: how the exporter writes a linear layer on a batch of sequences, when
    it folds no constants (MatMul(x, Transpose(W)))."""
    from onnx import helper

    turned = {}
    for n in graph.node:
        perm = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "perm"), [1, 0])
        if n.op_type == "Transpose" and n.input[0] in weights and len(weights[n.input[0]].dims) == 2 and list(perm) == [1, 0]:
            turned[n.output[0]] = n.input[0]
    return turned


def _weight(n: Any, weights: dict[str, Any], transposed: dict[str, str], shown: Container[str]) -> tuple[str, bool] | None:
    """The weight node `n` multiplies by, as (its name in `weights`, whether the product takes it
    transposed), when `n` is a product DynamicQuantizeMatMul computes alike: a MatMul, or a Gemm
    with neither transA, alpha nor beta, whose bias (if any) has one value a column; its second
    input a 2-D weight, or one turned round (`transposed`), and not one of `shown`. Else None."""
    from onnx import helper

    if n.op_type not in ("MatMul", "Gemm") or len(n.input) < 2 or n.input[1] in shown:
        return None
    name, turned = (transposed[n.input[1]], True) if n.input[1] in transposed else (n.input[1], False)
    w = weights.get(name)
    if w is None or len(w.dims) != 2 or name in shown:
        return None
    if n.op_type == "MatMul":
        return name, turned
    options = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    turned ^= bool(options.get("transB"))
    columns = w.dims[0] if turned else w.dims[1]
    if (options.get("transA") or options.get("alpha", 1.0) != 1.0 or options.get("beta", 1.0) != 1.0
            or not all(b in weights and list(weights[b].dims) == [columns] for b in n.input[2:3])):
        return None
    return name, turned


def _subgraph_inputs(graph: Any) -> set[str]:
    """The names the nodes of `graph`'s subgraphs (an If's branches, a Loop's body) read."""
    from onnx import AttributeProto

    names: set[str] = set()
    for n in graph.node:
        for a in n.attribute:
            for g in [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs) if a.type == AttributeProto.GRAPHS else []:
                names |= {i for m in g.node for i in m.input} | _subgraph_inputs(g)
    return names


def _int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`w` as int8 in [-64, 64] and its float32 scale, symmetric per tensor, rounded half to even,
    as onnxruntime's quantiser makes them with `reduce_range`: 7-bit weights, because on CPUs
    without VNNI the u8×s8 products are summed in pairs into int16 and saturate with full 8-bit
    ones (ViT-B-32 cosine to PyTorch 0.983 on an AMD EPYC without VNNI, 0.9996 with 7 bits, same
    speed)."""
    w = w.astype(np.float32, copy=False)
    absmax = max(-float(w.min()), float(w.max()), 0.0)
    scale = np.float32(2 * absmax / 128)  # (a range of 128 steps, computed in float64 as theirs is)
    if scale < np.finfo(np.float32).tiny:
        scale = np.float32(1.0)
    return np.clip((w / scale).round(), -128, 127).astype(np.int8), np.array(scale, np.float32)


#: one trace at a time: concurrent torch.onnx.export calls trip over the exporter's global state
#: (an assertion on GLOBALS.in_onnx_export; the MHA fastpath flag restored wrongly)
_TRACING = threading.Lock()


def _image_graph(encoder: Encoder) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], dict]:
    """What `_traced` traces for the image tower: the module, an example batch, its dynamic axes."""
    return _ImageForward(encoder), (torch.from_numpy(calibration_pixels(encoder, 2)),), {INPUT: {0: "batch"}}


def _exporter() -> Callable[..., None] | None:
    """torch's TorchScript ONNX exporter as `torch.onnx.export` calls it, which can leave out its
    shape inference (the public call cannot): the exporter infers each node's shapes as it adds
    it, for annotations ONNX Runtime infers again as it loads, and for the types of Python numbers
    (`_typed` checks those; some symbolics fail without them, and the public call then traces
    again). ViT-B-32-256 traced in 0.7-0.9 s instead of 1.7-2.2, its text tower in 0.7 instead of
    1.4, the optimised and quantised towers computing bit-identical vectors as fast. None where
    this torch has it elsewhere."""
    import importlib
    import inspect

    for where in ("torch.onnx._internal.torchscript_exporter.utils", "torch.onnx.utils"):  # (its place now; before)
        try:
            export = importlib.import_module(where)._export
            if "onnx_shape_inference" in inspect.signature(export).parameters:
                return export
        except (ImportError, AttributeError, TypeError, ValueError):
            continue
    return None


def _typed(graph: bytes) -> Any:
    """`graph` (an ONNX model) parsed, when its operators' types agree (ONNX's own shape inference,
    strict: 2-35 ms), else None. Traced without the exporter's shape inference, a Python number
    in a product stays a double beside float tensors (MiniLM's attention scale), which ONNX
    Runtime refuses to load."""
    import onnx

    model = onnx.load_from_string(graph)
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception:  # (onnx raises its InferenceError, or a ValidationError)
        return None
    return model


@dataclass
class Traced:
    """A module traced for `optimise`: its ONNX graph, each weight declared as an initializer with
    external data, and the weights themselves (numpy views of the module's tensors) by name."""
    graph: bytes
    weights: dict[str, np.ndarray]

    @classmethod
    def of(cls, graph: bytes, module: torch.nn.Module) -> Traced:
        """`graph`, traced from `module` or from a copy of it (a forked child's), with `module`'s
        weights, by the names its initializers give."""
        import onnx

        state = module.state_dict()
        return cls(graph, {t.name: _array(state[t.name]) for t in onnx.load_from_string(graph).graph.initializer})


def _array(weight: torch.Tensor) -> np.ndarray:
    return weight.detach().contiguous().numpy()


def _traced(module: torch.nn.Module, example: tuple[torch.Tensor, ...], axes: dict) -> Traced:
    """`module` traced to ONNX without its weights, which ONNX Runtime takes from memory when it
    optimises (and folds constants: the exporter does not here); `axes` names each input's
    dynamic dimensions, the output's first dimension is the batch. The exporter serialising the
    weights into the graph and ONNX Runtime parsing them back were most of an export (ViT-B-32-256,
    2 cores: 2.8 + 1.1 of 11.1 s; text and image towers 4.7 and 5.5 s → 2.7 and 4.0 s), and a
    graph without weights never meets protobuf's 2 GiB limit (ViT-H-14's image tower went
    through a scratch file)."""
    import onnx

    with _TRACING:
        fastpath = torch.backends.mha.get_fastpath_enabled()
        try:  # the tracer cannot export fused attention kernels
            torch.backends.mha.set_fastpath_enabled(False)
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
                options = dict(input_names=list(axes), output_names=["output"], dynamic_axes={**axes, "output": {0: "batch"}},
                               opset_version=17, do_constant_folding=False, export_params=False,
                               keep_initializers_as_inputs=True)
                model = None
                if (exporter := _exporter()) is not None:
                    out = io.BytesIO()
                    try:
                        exporter(module.eval(), example, out, onnx_shape_inference=False, **options)
                        model = _typed(out.getvalue())
                    except Exception:  # a symbolic that needs the shapes (repeat_interleave in CoCa's text tower)
                        model = None
                if model is None:
                    out = io.BytesIO()
                    torch.onnx.export(module.eval(), example, out, dynamo=False, **options)  # type: ignore[arg-type]  # (a file object works)
                    model = onnx.load_from_string(out.getvalue())
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    state, weights = module.state_dict(), {}
    for value in model.graph.input:
        if value.name in axes:
            continue
        if value.name not in state:
            raise ValueError(f"traced graph input {value.name!r} is neither an input nor a weight")
        array = weights[value.name] = _array(state[value.name])
        tensor = onnx.TensorProto(name=value.name, data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype),
                                  dims=array.shape, data_location=onnx.TensorProto.EXTERNAL)
        for key, v in (("location", "memory"), ("offset", "0"), ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=v)
        model.graph.initializer.append(tensor)
    inputs = [v for v in model.graph.input if v.name in axes]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    return Traced(model.SerializeToString(), weights)


def _measure(encoders: dict[str, PixelEncoder], pixels: np.ndarray, repeats: int = 3,
             others: list[float] | None = None,
             settled: Callable[[dict[str, float]], bool] | None = None) -> dict[str, tuple[float, np.ndarray]]:
    """(images/s, vectors) of each encoder on the calibration batch, split across its lanes,
    after a warm-up: the best of `repeats` timings, taken in turns, one runtime after another, so
    that the machine's drift falls on all of them alike (timed in blocks, a runtime that was no
    faster won by over the int8 margin in 1 of 4 choices on these shared cores), or fewer once
    `settled` says the speeds so far decide. Appends to `others` how busy other processes kept
    this process's CPUs meanwhile, in cores per thread of the model's."""
    for encode in encoders.values():
        encode.many([pixels[:2]] * encode.lanes)
    best, out = dict.fromkeys(encoders, 0.0), {}
    start = _usage()
    for _ in range(repeats):
        for name, encode in encoders.items():
            t = time.perf_counter()
            out[name] = encode.many(np.array_split(pixels, encode.lanes))
            best[name] = max(best[name], len(pixels) / (time.perf_counter() - t))
        if settled is not None and settled(best):
            break
    if others is not None and start is not None and (end := _usage()) is not None:
        wall, busy, ours = (b - a for a, b in zip(start, end))
        # as a share of the cores the model's threads want (not of every logical CPU: on 8 of them
        # with 4 threads, one busy loop read 0.125 yet took a core from the forward)
        if wall >= 0.3:  # (/proc/stat counts 10 ms ticks: a tiny model's 30 ms of timing read 0.3 busy)
            others.append(min(1.0, max(0.0, (busy - ours) / (wall * threads()))))
    return {name: (best[name], out[name]) for name in encoders}


def _usage() -> tuple[float, float, float] | None:
    """(wall clock, CPU seconds all processes spent on this process's CPUs, CPU seconds of this
    process), from /proc/stat (None where there is none: the choice is then taken as timed)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    try:
        with open("/proc/stat") as f:
            ticks = 0
            for line in f:
                name, *values = line.split()
                if name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in cpus:
                    v = [int(x) for x in values]
                    ticks += v[0] + v[1] + v[2] + sum(v[5:8])  # user nice system irq softirq steal (not idle, iowait)
    except (OSError, ValueError, IndexError):
        return None
    return time.perf_counter(), ticks / os.sysconf("SC_CLK_TCK"), time.process_time()


def choose(encoder: Encoder, folder: Path, onnx: bool = True,
           beside: Callable[[], Any] | None = None) -> tuple[dict | None, PixelEncoder | None]:
    """Measure the runtimes once; the fastest whose vectors agree with PyTorch's float32 wins
    (PyTorch itself when none does). Returns the choice, as saved, and the winner's forward,
    ready (None: PyTorch float32). PyTorch bfloat16 goes first where the CPU has bfloat16
    arithmetic, and when it wins by `BF16_MIN_SPEEDUP` nothing is exported; else the ONNX
    runtimes are exported and timed — unless not `onnx` (a small job): then (None, None) and
    nothing is saved — or, where int8 wins beyond doubt (`_int8_plain`), int8 is taken once it
    agrees, untimed. PyTorch float32 is the reference, not a contender: ONNX Runtime fp32 does
    the same arithmetic and was never slower (lite 41 vs 10 images/s, ViT-B-32 15.6 vs 8.2), and
    timing it took two thirds of the choice (ViT-B-32: 12 of 18 s); it is timed only to judge
    bfloat16 (8 images). `beside`, when given, is called as the image tower's export begins,
    to start other work (the query export, in a child process: side_export.py) on the cores it
    leaves idle; what it returns, unless None, has `tower_ready(graph)`, called once the tower
    is traced (None: failed), and `result()`, awaited before the ONNX runtimes are timed
    so that nothing else runs on the CPUs meanwhile (untimed, it goes on beside the embedding)."""
    measured: dict[str, dict] = {"torch": {"min_cosine": 1.0, "role": "reference"}}
    others: list[float] = []  # (how busy other processes kept the CPUs while timing: `_chosen`)
    bf16 = None
    if exported.bf16_hardware():
        try:
            bf16 = bf16_encoder(encoder)
        except Exception as e:  # a tower whose bf16 copy fails: the other runtimes still compete
            measured[BF16] = {"error": f"{type(e).__name__}: {e}"[:300]}
    if bf16 is None and not onnx:
        return None, None
    pixels = calibration_pixels(encoder)
    torch_forward = encoder.pixel_prep.torch_encoder(encoder)
    timed = {}
    if bf16 is not None:
        try:
            timed = _measure({"torch": torch_forward, BF16: bf16}, pixels, repeats=2, others=others)
        except Exception as e:
            measured[BF16], bf16 = {"error": f"{type(e).__name__}: {e}"[:300]}, None
    if timed:
        reference = timed["torch"][1]
        measured["torch"]["images_per_s"] = round(timed["torch"][0], 2)
        measured[BF16] = _judged(*timed[BF16], reference)
        if measured[BF16]["min_cosine"] >= MIN_COSINE and timed[BF16][0] >= BF16_MIN_SPEEDUP * timed["torch"][0]:
            return _chosen(encoder, folder, measured, BF16, others), bf16
    if not onnx:
        return None, None
    if not timed:
        reference = torch_forward(pixels[:CHECK_IMAGES])  # (the rest where the runtimes are timed)
    # `beside` makes and checks its text tower while this traces the image tower, quantises it
    # and opens its sessions, each on a core of its own; then its query image tower from the
    # graph traced here (ViT-B-32-256 on the AMD EPYC: tracing 1.5 s, quantising 0.5)
    running = beside() if beside is not None else None
    traced = None
    try:
        traced = _traced(*_image_graph(encoder))
    finally:
        if running is not None:
            running.tower_ready(traced.graph if traced else None)
    if bf16 is None and _int8_plain(traced):  # (the query export goes on beside the embedding)
        int8 = onnx_encoder(export(encoder, folder, fp32=False, traced=traced)["onnx-int8"])
        measured["onnx-int8"] = {"min_cosine": _cosine(int8.many(np.array_split(pixels[:len(reference)], int8.lanes)), reference)}
        if measured["onnx-int8"]["min_cosine"] >= MIN_COSINE:
            measured["onnx"] = {"not timed": "int8 wins with AVX2 on a tower of matrix products"}
            return _chosen(encoder, folder, measured, "onnx-int8", []), int8
    encoders = {name: onnx_encoder(path) for name, path in export(encoder, folder, traced=traced).items()}
    if running is not None:
        running.result()
    if len(reference) < len(pixels):
        reference = np.concatenate([reference, torch_forward(pixels[len(reference):])])
    timed = _measure(encoders, pixels, others=others, settled=_settled)
    measured |= {name: _judged(speed, out, reference) for name, (speed, out) in timed.items()}
    if bf16 is not None:
        encoders[BF16] = bf16
    ok = {k: v for k, v in measured.items() if k != "torch" and v.get("min_cosine", 0) >= MIN_COSINE}
    # int8 must win clearly to be worth its small loss of precision (a tie is timing noise)
    runtime = max(ok, key=lambda k: ok[k]["images_per_s"] / (INT8_MARGIN if k == "onnx-int8" else 1)) if ok else "torch"
    return _chosen(encoder, folder, measured, runtime, others), encoders.get(runtime)


def _settled(speeds: dict[str, float]) -> bool:
    """Whether the fastest ONNX runtime, int8 after its margin, leads the next by `CLEAR_LEAD`."""
    fair = sorted(v / (INT8_MARGIN if k == "onnx-int8" else 1) for k, v in speeds.items())
    return len(fair) < 2 or fair[-1] >= CLEAR_LEAD * fair[-2]


def _int8_plain(traced: Traced) -> bool:
    """Whether ONNX Runtime's int8 image tower outruns its float32 one here beyond doubt, so that
    only its agreement is checked: a CPU whose integer products do more per instruction than its
    float ones (`exported.int8_hardware`), and a tower (`traced`) whose weights are mostly in the
    matrix products the quantiser makes integer (`_weight`, `INT8_PLAIN_SHARE`)."""
    if not exported.int8_hardware():
        return False
    import onnx

    weights, products, _ = _products(onnx.load_from_string(traced.graph).graph)
    sizes = {name: int(np.prod(t.dims)) for name, t in weights.items()}
    integer = {name for name, _ in products.values()}
    return sum(sizes[w] for w in integer) >= INT8_PLAIN_SHARE * sum(sizes.values()) > 0


def _cosine(vectors: np.ndarray, reference: np.ndarray) -> float:
    """The least cosine between `vectors` and `reference`, row by row (unit vectors both)."""
    return round(float((vectors * reference).sum(1).min()), 5)


def _judged(speed: float, vectors: np.ndarray, reference: np.ndarray) -> dict:
    return {"images_per_s": round(speed, 2), "min_cosine": _cosine(vectors, reference)}


def _chosen(encoder: Encoder, folder: Path, measured: dict, runtime: str, others: list[float]) -> dict:
    """The choice of `runtime`, saved; with the most of its CPUs other processes kept busy while
    it was timed and, when that was too much (`exported.MAX_OTHERS`), how many times in a row it
    was measured so."""
    busy = round(max(others, default=0.0), 2)
    choice = {"version": CHOICE_VERSION, "model": encoder.identity, "threads": threads(), "measured": measured,
              "runtime": runtime, "others": busy}
    if busy > exported.MAX_OTHERS:
        try:
            before = json.loads((folder / CHOICE).read_text())
        except (OSError, ValueError):
            before = {}
        choice["measures"] = before.get("measures", 0) + 1 if isinstance(before, dict) else 1
    # bf16 saved as PyTorch with a dtype (exported.CHOICE_VERSION): an older mmsearch runs float32
    _write_choice(folder, {**choice, "runtime": "torch", "dtype": "bfloat16"} if runtime == BF16 else choice)
    return choice


def bf16_encoder(encoder: Encoder) -> PixelEncoder | None:
    """The encoder's bfloat16 image forward (`Encoder.bf16_forward`) on uint8 batches, or None."""
    forward = encoder.bf16_forward()
    if forward is None:
        return None
    prep = encoder.pixel_prep

    @torch.inference_mode()
    def encode(batch: np.ndarray) -> np.ndarray:
        return unit(forward(prep.normalise(batch)).numpy())

    return PixelEncoder(encode)


def cuda_ready() -> bool:
    """Whether PyTorch can run on a CUDA GPU here (asked only where a GPU's driver is present)."""
    return exported.gpu_present() and torch.cuda.is_available()


def cuda_encoder(encoder: Encoder) -> PixelEncoder:
    """The encoder's image forward in float32 on the current CUDA GPU, uint8 batches in (4 × less
    to copy than floats; normalised there). The GPU copy of its weights is made at the first
    batch, not here: a first run forks its query-export child before embedding (side_export.py),
    and a child of a process that has started CUDA must not touch it. Two lanes: one batch is
    copied and finished while the GPU runs the next."""
    made: list[Encoder] = []
    lock = threading.Lock()

    @torch.inference_mode()
    def encode(batch: np.ndarray) -> np.ndarray:
        with lock:
            if not made:
                made.append(encoder.on_device(CUDA))
        pixels = torch.from_numpy(batch).to(CUDA, non_blocking=True)
        return unit(made[0]._forward_pixels(encoder.pixel_prep.normalise(pixels)).float().cpu().numpy())

    return PixelEncoder(encode, lanes=2)


def _write_choice(folder: Path, choice: dict) -> None:
    """`choice.json`, written aside and renamed: a reader (another run) sees it whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{CHOICE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(choice, indent=1))
    os.replace(tmp, folder / CHOICE)


def _auto(encoder: Encoder, folder: Path, images: int, beside: Callable[[], Any] | None) -> tuple[str, PixelEncoder | None]:
    """The runtime `auto` means here, with its forward when it is ready already: a CUDA GPU
    where PyTorch has one, else the cached choice, else a fresh measurement (the ONNX part of it
    only for a job worth it; torch, recorded with its reason, when the model cannot be exported)."""
    if cuda_ready():  # (nothing to measure: a GPU outruns every CPU runtime, and the decoders get the cores)
        return CUDA, None
    if (saved := saved_choice(folder)) is not None:
        return saved, None
    try:
        choice, winner = choose(encoder, folder, onnx=images >= AUTO_MIN_IMAGES, beside=beside)
        return (choice["runtime"] if choice else "torch"), winner
    except Exception as e:  # an architecture the exporter cannot trace still indexes, on PyTorch
        _write_choice(folder, {"version": CHOICE_VERSION, "runtime": "torch", "threads": threads(),
                               "error": f"{type(e).__name__}: {e}"[:500]})
        return "torch", None


def pixel_encoder(encoder: Encoder, folder: Path | None = None, runtime: str = "auto",
                  images: int = AUTO_MIN_IMAGES, beside: Callable[[], Any] | None = None) -> tuple[PixelEncoder, str]:
    """The fastest faithful image forward (uint8 NHWC batches -> unit vectors) for indexing
    `images` images with `encoder` (or the one `runtime` names), and that runtime's name. Exports
    and the measured choice live in `folder` (default: the model's folder in the user cache);
    `beside` as `choose` takes it."""
    auto = runtime == "auto"
    if runtime == CUDA and not cuda_ready():
        raise UserError("--runtime cuda needs a CUDA GPU that PyTorch can use (torch.cuda.is_available() is False here)")
    if runtime not in ("torch", BF16, CUDA):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            if not auto:
                raise UserError(f"--runtime {runtime} needs `pip install onnxruntime onnx`") from None
            runtime = "torch"
    folder = folder or model_dir(encoder.identity)
    opened = None
    if runtime == "auto":
        runtime, opened = _auto(encoder, folder, images, beside)
    on_torch = encoder.pixel_prep.torch_encoder(encoder), "torch"
    if runtime == BF16:
        bf16 = opened or bf16_encoder(encoder)
        return (bf16, BF16) if bf16 is not None else on_torch
    if runtime == "torch":
        return on_torch
    if runtime == CUDA:
        return cuda_encoder(encoder), CUDA
    def made() -> Path:
        return export(encoder, folder, fp32=runtime == "onnx", int8=runtime == "onnx-int8")[runtime]

    try:
        return opened or onnx_encoder(made()), runtime
    except Exception:  # a damaged cached file: made anew (once), else PyTorch rather than fail
        for damaged in (folder / VISUAL[runtime], _weights(folder / VISUAL[runtime])):
            damaged.unlink(missing_ok=True)
        try:
            return onnx_encoder(made()), runtime
        except Exception:
            if not auto:
                raise
            return on_torch


#: texts the text export is checked on against PyTorch before it is sealed
CHECK_TEXTS = ["a dog on a beach", "a cup of coffee", "x", "Ein Fahrrad lehnt an einer Wand, 2019.",
               "a very long caption " * 60, "émoji 🙂 and symbols #42 & co.",
               "Tom &amp; Jerry don’t say “hi” in ＦＵＬＬ width, cafÃ©\x07 ﬁne"]
QUERY_MIN_COSINE = 0.999


def export_for_queries(encoder: Encoder, folder: Path | None = None, tower: Callable[[], bytes | None] | None = None) -> bool:
    """Write and seal the model's query export (text tower, and image tower where its geometry
    allows) in `folder` (default: its folder in the user cache), unless a sealed one is there.
    False when the model has no text export or its export does not agree with PyTorch.
    `tower`, if given, is waited for once the text tower is made and checked: the image tower's
    graph as the indexer traced it (`choose`), or None when it was not (then traced here)."""
    folder = folder or model_dir(encoder.identity)
    if QueryEncoder.read(encoder.identity, folder) is not None:  # (whether its files load, a query finds out)
        return True
    if _sealed(folder, encoder).get("rejected") is not None:  # decided once: queries stay on PyTorch
        return False
    spec = encoder.text_export()
    folder.mkdir(parents=True, exist_ok=True)
    _sweep(folder)
    if spec is None:  # sealed as rejected too: building and checking a tokenizer costs ~1 s a query
        _seal(folder, {"identity": encoder.identity, "format": EXPORT_FORMAT,
                       "rejected": "no text export (its tokenizer has no `tokenizers` equivalent)"})
        return False
    (folder / META).unlink(missing_ok=True)  # unsealed while it is written
    text: dict[str, Any] = {"file": "text.onnx", "tokenizer": "tokenizer.json", "inputs": list(spec.inputs),
                            "max_length": spec.max_length, "pad_id": spec.pad_id, "pad_to": spec.pad_to, "clean": spec.clean}
    if isinstance(spec.tokenizer, Path):
        shutil.copyfile(spec.tokenizer, folder / text["tokenizer"])
    else:
        spec.tokenizer.save(str(folder / text["tokenizer"]))
    example = tuple(torch.ones((2, spec.pad_to or 8), dtype=torch.int64) for _ in spec.inputs)
    axes = {name: {0: "batch", 1: "tokens"} for name in spec.inputs}
    optimise(_traced(spec.module, example, axes), folder / text["file"])
    query = QueryEncoder(folder, encoder.identity, encoder.dim, text, None, prepack=False)  # (one run)
    agree = float((query.encode_texts(CHECK_TEXTS) * encoder.encode_texts(CHECK_TEXTS)).sum(1).min())
    seal = {"identity": encoder.identity, "format": EXPORT_FORMAT, "text_version": TEXT_VERSION, "min_cosine": round(agree, 6)}
    if agree < QUERY_MIN_COSINE:  # sealed as rejected, so that it is not measured again
        seal["rejected"] = f"vectors disagree with PyTorch's (cosine {agree:.4f} < {QUERY_MIN_COSINE})"
    else:
        seal |= {"dim": encoder.dim, "text": text, "image": _image_export(encoder, folder, tower() if tower else None)}
    _seal(folder, seal)
    return "rejected" not in seal


def optimise(src: Path | Traced, dst: Path, fusions: bool = True) -> None:
    """`src` (a file, or a traced module) as ONNX Runtime optimises it, saved as `dst` with its
    weights apart in `_weights(dst)`, for `query._session` to map. With `fusions`, into ONNX
    Runtime's own fused operators; without, constants folded and standard operators only (what
    the int8 quantiser reads). Written in a folder of its own, then renamed into place, the
    weights first (the graph names them; concurrent exports write the same bytes)."""
    import onnxruntime as ort

    tmp = dst.parent / f".{dst.name}.{os.getpid()}.tmp"
    tmp.mkdir(exist_ok=True)
    opts = ort.SessionOptions()
    # EXTENDED, not ALL: ALL adds layouts for this very CPU, which a cache folder may outlive
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if fusions else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(tmp / dst.name)
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", _weights(dst).name)
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    opts.log_severity_level = 3
    # the session only writes the file: its kernels' packed copies of the weights are never used
    # (ViT-B-32-256 image tower: 0.3 of 1.4 s, and 350 MB)
    opts.add_session_config_entry("session.disable_prepacking", "1")
    if isinstance(src, Traced):  # (copied into the session before it optimises: the arrays may go after)
        opts.add_external_initializers(list(src.weights), [ort.OrtValue.ortvalue_from_numpy(a) for a in src.weights.values()])
    try:
        ort.InferenceSession(src.graph if isinstance(src, Traced) else str(src), opts, providers=["CPUExecutionProvider"])
        os.replace(tmp / _weights(dst).name, _weights(dst))
        os.replace(tmp / dst.name, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _weights(graph: Path) -> Path:
    """The file beside an optimised graph that holds its weights."""
    return graph.with_name(f"{graph.name}.data")


def _seal(folder: Path, seal: dict) -> None:
    (folder / f"{META}.tmp").write_text(json.dumps(seal, indent=1))
    os.replace(folder / f"{META}.tmp", folder / META)


def _image_export(encoder: Encoder, folder: Path, graph: bytes | None = None) -> dict | None:
    """The image side of the query export: its geometry and the fp32 image tower, optimised from
    `graph` (the indexer's trace of it, with this process's copy of the weights) or else traced
    here, when PIL makes the model's very pixels (checked on odd-sized pictures) and the tower
    agrees with PyTorch on them."""
    from PIL import Image

    image = encoder.query_geometry()
    if image is None:
        return None
    pictures = [Image.fromarray(p).resize((331 - 40 * i, 217 + 50 * i)) for i, p in enumerate(calibration_pixels(encoder, 2))]
    shape = geometry(image)
    if not all(np.array_equal(np.asarray(shape(p.convert("RGB"))), encoder.pixel_prep(p)) for p in pictures):
        return None
    image["file"] = "visual.query.onnx"  # (ViT-B-32: 352 MB)
    module, example, axes = _image_graph(encoder)
    optimise(Traced.of(graph, module) if graph else _traced(module, example, axes), folder / image["file"])
    tower = QueryEncoder(folder, encoder.identity, encoder.dim, {}, image, prepack=False)
    measured = float((tower.encode_images(pictures) * encoder.encode_images(pictures)).sum(1).min())
    return image if measured >= QUERY_MIN_COSINE else None


def _sealed(folder: Path, encoder: Encoder) -> dict:
    """The folder's seal when it is this model's in this format, else {}."""
    try:
        seal = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return {}
    return seal if seal.get("identity") == encoder.identity and seal.get("format") == EXPORT_FORMAT else {}
