"""ONNX Runtime for the image tower: exported once per model and index, faithful to PyTorch."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmsearch.media.image import load_image
from mmsearch.retrieval.encoders import exported, load_encoder
from mmsearch.retrieval.encoders import runtime as choosing
from mmsearch.retrieval.encoders.exported import AUTO_MIN_IMAGES, BF16, RUN_BATCH, threads
from mmsearch.retrieval.encoders.runtime import MIN_COSINE, pixel_encoder


def _pixels(encoder, photos) -> np.ndarray:
    prep = encoder.pixel_prep
    return np.stack([prep(load_image(p)) for p in sorted(photos.iterdir())])


def test_batch_normalisation_is_bit_identical_to_the_models_transform(tiny_clip, photos):
    """uint8 pixels normalised per batch give exactly the tensors the model's own transform gives."""
    enc = load_encoder(tiny_clip)
    images = [load_image(p) for p in sorted(photos.iterdir())]
    ours = enc.pixel_prep.normalise(_pixels(enc, photos))
    assert ours.dtype == torch.float32 and torch.equal(ours, torch.stack([enc.transform(im) for im in images]))


def test_queries_and_indexing_preprocess_alike(tiny_clip, photos):
    """encode_images (queries, training) gives exactly what uint8 batches through the model give."""
    enc = load_encoder(tiny_clip)
    ours = enc.encode_images([load_image(p) for p in sorted(photos.iterdir())])
    assert np.array_equal(ours, enc.encode_pixels(enc.pixel_prep.normalise(_pixels(enc, photos))))


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_onnx_vectors_agree_with_pytorch_on_real_photos(tiny_clip, photos, tmp_path, runtime):
    enc = load_encoder(tiny_clip)
    encode, used = pixel_encoder(enc, tmp_path, runtime)
    assert used == runtime
    pixels = _pixels(enc, photos)
    ours, ref = encode(pixels), enc.encode_pixels(enc.pixel_prep.normalise(pixels))
    assert ours.shape == ref.shape and np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    assert (ours * ref).sum(1).min() >= MIN_COSINE
    if runtime == "onnx":
        assert (ours * ref).sum(1).min() > 0.9999  # the same arithmetic, reordered
        # a batch longer than one session run is split into runs and comes back whole, in order
        many = np.concatenate([pixels] * (RUN_BATCH // len(pixels) + 2))[: 2 * RUN_BATCH + 3]
        assert np.allclose(encode(many), np.concatenate([encode(p[None]) for p in many]), atol=1e-5)
    # batches spread over the sessions sharing the cores come back in order (batch by batch:
    # dynamic int8 scales activations per batch, so other batches give slightly other vectors)
    assert encode.lanes == min(2, threads())
    batches = [pixels[i : i + 2] for i in range(0, len(pixels), 2)]
    assert np.allclose(encode.many(batches), np.concatenate([encode(b) for b in batches]), atol=1e-5)


def test_the_quantiser_makes_what_onnxruntimes_quantize_dynamic_makes(tiny_clip, photos, tmp_path):
    """Quantised straight from the traced graph (no fold first: its weights reach the products
    through Transpose nodes), against `quantize_dynamic` on the folded fp32 file: the same integer
    weights and scales, the same products quantised, the same vectors, and no float weight left
    that only the integer products read."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from mmsearch.retrieval.encoders.runtime import _image_graph, _quantise, _traced, export

    enc = load_encoder(tiny_clip)
    traced = _traced(*_image_graph(enc))
    fp32 = export(enc, tmp_path, int8=False, traced=traced)["onnx"]
    _quantise(traced, tmp_path / "ours.onnx")
    quantize_dynamic(str(fp32), str(tmp_path / "theirs.onnx"), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                     reduce_range=True, extra_options={"MatMulConstBOnly": True})
    ours, theirs = (onnx.load(str(tmp_path / f)) for f in ("ours.onnx", "theirs.onnx"))
    products = sum(n.op_type == "DynamicQuantizeMatMul" for n in ours.graph.node)
    assert products == sum(n.op_type == "MatMulInteger" for n in theirs.graph.node) >= 4  # quantised, not copied
    # every product with a weight was quantised: no float one is left whose second input is a
    # weight or a weight turned round, and every weight left is read by something
    weights_of_ours = {i.name for i in ours.graph.initializer}
    turned = {n.output[0] for n in ours.graph.node if n.op_type == "Transpose" and n.input[0] in weights_of_ours}
    assert not [n.name for n in ours.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights_of_ours | turned]
    assert weights_of_ours <= {x for n in ours.graph.node for x in n.input}

    def integers(model) -> list[bytes]:
        return sorted(onnx.numpy_helper.to_array(i).tobytes() for i in model.graph.initializer
                      if i.data_type == onnx.TensorProto.INT8 and i.dims)
    assert integers(ours) == integers(theirs) and len(integers(ours)) == products

    def scales(model) -> list[float]:
        return sorted(float(onnx.numpy_helper.to_array(i)) for i in model.graph.initializer if i.name.endswith("_scale"))
    assert scales(ours) == scales(theirs)
    pixels = np.stack([enc.pixel_prep(load_image(photos / n)) for n in ("coffee.png", "astronaut.png")])
    out = [ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]).run(None, {"input": pixels})[0]
           for f in ("ours.onnx", "theirs.onnx")]
    np.testing.assert_allclose(out[0], out[1], rtol=0, atol=1e-5)


def test_auto_measures_once_and_keeps_its_choice(tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setattr(exported, "bf16_hardware", lambda: False)  # (bfloat16: the next test)
    enc = load_encoder(tiny_clip)
    assert pixel_encoder(enc, tmp_path, "auto", images=3)[1] == "torch"  # too few images to bother
    assert not (tmp_path / "choice.json").exists()
    _, used = pixel_encoder(enc, tmp_path, "auto", images=1000)
    choice_file = tmp_path / "choice.json"
    choice = json.loads(choice_file.read_text())
    assert used == choice["runtime"] and set(choice["measured"]) == {"torch", "onnx", "onnx-int8"}
    assert choice["measured"][used]["min_cosine"] >= MIN_COSINE
    stamp = choice_file.stat().st_mtime_ns
    assert pixel_encoder(enc, tmp_path, "auto", images=3)[1] == used  # cached: no new measurement
    assert choice_file.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(("speeds", "settled"), [
    ({"onnx": 14.0, "onnx-int8": 25.0}, True),  # ViT-B-32-256 on an AVX2 CPU: int8 leads by 1.55 after its margin
    ({"onnx": 20.0, "onnx-int8": 25.0}, False),  # 1.09: timed again
    ({"onnx": 30.0, "onnx-int8": 25.0}, True),  # fp32 leads by 1.38
    ({"onnx": 25.0, "onnx-int8": 25.0}, False),
    ({"onnx": 25.0}, True),
])
def test_timing_stops_once_a_round_decides(speeds, settled):
    assert choosing._settled(speeds) is settled
    runs = {name: 0 for name in speeds}

    def encoder(name: str) -> choosing.PixelEncoder:
        def encode(batch: np.ndarray) -> np.ndarray:
            runs[name] += 1
            return np.zeros((len(batch), 4), np.float32)
        return choosing.PixelEncoder(encode, lanes=1)

    pixels = np.zeros((4, 8, 8, 3), np.uint8)
    choosing._measure({name: encoder(name) for name in speeds}, pixels, repeats=3, settled=lambda best: settled)
    assert set(runs.values()) == {1 + (1 if settled else 3)}  # (a warm-up, then the rounds)


def test_bfloat16_wins_without_exporting_anything_and_small_jobs_keep_the_query_tower(tiny_clip, tmp_path, monkeypatch):
    """Where PyTorch bf16 outruns float32 by BF16_MIN_SPEEDUP (here: made to), it is chosen for a
    job of any size with no image tower traced; a later big job runs it (loading PyTorch), a
    small one the query export's tower (no PyTorch)."""
    from mmsearch.retrieval.encoders.exported import ExportedEncoder
    from mmsearch.retrieval.encoders.query import model_dir

    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path))
    monkeypatch.setattr(exported, "bf16_hardware", lambda: True)
    monkeypatch.setattr(choosing, "BF16_MIN_SPEEDUP", 0.0)
    enc = load_encoder(tiny_clip)
    folder = model_dir(enc.identity)
    encode, used = pixel_encoder(enc, runtime="auto", images=3)
    choice = json.loads((folder / "choice.json").read_text())
    # saved as PyTorch with a dtype: an older mmsearch, which knows no torch-bf16, runs float32
    assert used == BF16 and (choice["runtime"], choice["dtype"]) == ("torch", "bfloat16")
    assert set(choice["measured"]) == {"torch", BF16}
    assert choice["measured"][BF16]["min_cosine"] >= MIN_COSINE and not list(folder.glob("visual*"))
    assert pixel_encoder(enc, runtime="auto", images=1000)[1] == BF16  # the saved choice
    assert choosing.export_for_queries(enc)
    assert ExportedEncoder.find(tiny_clip, images=AUTO_MIN_IMAGES) is None  # a big job: PyTorch bf16
    small = ExportedEncoder.find(tiny_clip, images=AUTO_MIN_IMAGES - 1)
    assert small is not None and small.runtime == "onnx" and small.visual.name == "visual.query.onnx"


def test_a_failing_bfloat16_forward_leaves_the_onnx_runtimes_to_compete(tiny_clip, tmp_path, monkeypatch):
    """(CoCa's tower returned a tuple the bf16 forward did not expect: the whole choice fell to
    PyTorch float32, for good.)"""
    monkeypatch.setattr(exported, "bf16_hardware", lambda: True)
    enc = load_encoder(tiny_clip)

    def broken(pixels):
        raise AttributeError("'tuple' object has no attribute 'float'")

    monkeypatch.setattr(enc, "bf16_forward", lambda: broken)
    assert pixel_encoder(enc, tmp_path, "auto", images=3)[1] == "torch"  # a small job: nothing saved
    assert not (tmp_path / "choice.json").exists()
    _, used = pixel_encoder(enc, tmp_path, "auto", images=1000)
    choice = json.loads((tmp_path / "choice.json").read_text())
    assert used == choice["runtime"] in ("onnx", "onnx-int8") and "AttributeError" in choice["measured"][BF16]["error"]


def test_bfloat16_vectors_agree_with_float32_on_real_photos(tiny_clip, photos, tmp_path):
    enc = load_encoder(tiny_clip)
    encode, used = pixel_encoder(enc, tmp_path, BF16)
    pixels = _pixels(enc, photos)
    ours, ref = encode(pixels), enc.encode_pixels(enc.pixel_prep.normalise(pixels))
    assert used == BF16 and ours.dtype == np.float32 and np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    cos = (ours * ref).sum(1)
    assert cos.min() >= MIN_COSINE and cos.min() < 1 - 1e-7  # faithful, and really another arithmetic
    assert not list(tmp_path.iterdir())  # nothing exported


def test_index_on_onnx_runtime_searches_with_pytorch_queries(cli, tiny_clip, image_set):
    out = cli("index", str(image_set), "--model", tiny_clip, "--runtime", "onnx-int8").stdout
    assert "image tower on onnx-int8" in out
    for p in sorted(image_set.glob("*.png"))[:4]:  # queries embed with PyTorch, the index with int8
        hit = cli.json("search", "--image", str(p), "-k", "1")[0]
        assert hit["path"] == str(p) and hit["score"] > MIN_COSINE


def test_unknown_runtime_is_a_one_line_error(cli, image_set):
    r = cli("index", str(image_set), "--runtime", "tensorrt", ok=False)
    assert r.exit_code != 0 and "--runtime: Input should be 'auto', 'torch', 'torch-bf16', 'onnx', 'onnx-int8' or 'cuda'" in r.output and "Traceback" not in r.output


@pytest.mark.quality
def test_lite_on_onnx_agrees_with_pytorch(photos, tmp_path):
    enc = load_encoder("lite")
    for runtime in ("onnx", "onnx-int8"):
        encode, _ = pixel_encoder(enc, tmp_path, runtime)
        pixels = _pixels(enc, photos)
        ref = enc.encode_pixels(enc.pixel_prep.normalise(pixels))
        assert (encode(pixels) * ref).sum(1).min() >= MIN_COSINE
    assert pixel_encoder(enc, tmp_path, BF16)[1] == "torch"  # lite has no bfloat16 forward (base.py)


def test_decode_in_worker_processes_gives_the_same_index(tiny_clip, image_set, tmp_path):
    from mmsearch import SearchIndex

    vectors = {}
    for processes in (False, True):
        idx = SearchIndex(tmp_path / f"ix-{processes}", create=True)
        summary = idx.add([str(image_set)], model=tiny_clip, processes=processes, runtime="torch", progress=False)
        assert summary.processes == processes and not summary.skipped
        with idx.index.session() as s:
            from sqlalchemy import select

            from mmsearch.retrieval.store import File, Item, vectors_by_id

            paths = dict(s.execute(select(Item.id, File.path).join(File)).all())
            vectors[processes] = {paths[i]: v for i, v in vectors_by_id(s, list(paths)).items()}
    assert vectors[True].keys() == vectors[False].keys() and len(vectors[True]) >= 10
    assert all(np.allclose(vectors[True][p], vectors[False][p], atol=1e-5) for p in vectors[True])


def test_last_batches_shrink_so_every_lane_works_to_the_end(tiny_clip, image_set):
    """The batch that ends a run is not left to one lane: batches halve as the files run out, and
    every file still comes out once, in order, with its own vectors."""
    from mmsearch.indexer.embed import decode, embedded
    from mmsearch.indexer.options import IndexOptions
    from mmsearch.indexer.scan import scan
    from mmsearch.retrieval.encoders.pixels import PixelEncoder

    enc = load_encoder(tiny_clip)
    forward = enc.pixel_prep.torch_encoder(enc)
    todo = [(e, str(i)) for i, e in enumerate(sorted(scan([str(image_set)]), key=lambda e: e.path))]
    assert len(todo) >= 18
    batches = list(embedded(todo, enc, IndexOptions(), batch_size=8, workers=1, progress=False,
                            encode_pixels=PixelEncoder(forward, lanes=2)))
    sizes = [len(b) for b in batches]  # yielded in the order they were formed
    left = np.cumsum(sizes[::-1])[::-1]  # files not yet in a batch when each was formed
    assert sizes[0] == 8 and all(n <= -(-rest // 2) for n, rest in zip(sizes, left))  # at most a lane's share
    out = [d for b in batches for d in b]
    assert [d.digest for d in out] == [str(i) for i in range(len(todo))] and not any(d.error for d in out)
    single = np.concatenate([forward(decode(d.entry, d.digest, enc.pixel_prep, IndexOptions()).units[0][1][None])
                             for d in out])
    assert np.allclose(np.concatenate([d.vectors for d in out]), single, atol=1e-5)


def test_an_interrupted_embed_stage_drops_the_decoding_it_has_not_begun(tiny_clip, image_set, monkeypatch):
    """A Ctrl-C (here: the caller stopping) does not wait for the files queued ahead to decode."""
    from mmsearch.indexer import embed
    from mmsearch.indexer.options import IndexOptions
    from mmsearch.indexer.scan import scan

    calls, decode = [], embed.decode
    monkeypatch.setattr(embed, "decode", lambda *a: calls.append(1) or decode(*a))
    enc = load_encoder(tiny_clip)
    todo = [(e, str(i)) for i, e in enumerate(scan([str(image_set)]))]
    run = embed.embedded(todo, enc, IndexOptions(), batch_size=4, workers=1, progress=False,
                         encode_pixels=enc.pixel_prep.torch_encoder(enc))
    next(run)
    begun = len(calls)
    run.close()
    assert len(calls) <= begun + 1 < len(todo)  # at most the one decoding when it stopped


@pytest.mark.quality
def test_lite_fused_resize_crop_matches_timms_transform(photos, tuxpaint):
    """lite resizes and crops in one resampling (`ResizeCrop`): the picture timm's evaluation
    transform for the tower makes, to within rounding, and all but the same embeddings."""
    import timm.data

    enc = load_encoder("lite")
    cfg = timm.data.resolve_data_config({}, model=enc.image_tower)
    timms = timm.data.create_transform(**{**cfg, "input_size": (3, enc.image_size, enc.image_size)})
    stamps = sorted(tuxpaint.rglob("*.png"))[::40]  # from 32-pixel icons (upscaled) to large drawings
    images = [load_image(p) for p in [*sorted(photos.iterdir()), *stamps]]
    assert min(min(im.size) for im in images) < 100 < 500 < max(max(im.size) for im in images)
    ours, theirs = torch.stack([enc.transform(im) for im in images]), torch.stack([timms(im) for im in images])
    assert ours.shape == theirs.shape == (len(images), 3, enc.image_size, enc.image_size)
    level = 2 / 255  # one uint8 level after normalising with std 0.5
    assert (ours - theirs).abs().mean() < 0.1 * level
    cosine = (enc.encode_pixels(ours) * enc.encode_pixels(theirs)).sum(1)
    assert cosine.min() > 0.999 and cosine.mean() > 0.9999  # measured: 0.99955 (a brick texture), mean 0.99998


def test_int8_is_taken_untimed_where_it_wins_beyond_doubt(tiny_clip, tmp_path, monkeypatch):
    """An AVX2 CPU and a tower of matrix products (the tiny model's share, ~0.66, made to count
    here): int8 is checked against PyTorch (on `CHECK_IMAGES`) and taken without timing float32
    against it; a CPU without AVX2, or a tower under the share, has both timed (and judged on
    every calibration image)."""
    monkeypatch.setattr(exported, "bf16_hardware", lambda: False)
    enc = load_encoder(tiny_clip)
    timings: list[set[str]] = []
    measure = choosing._measure
    monkeypatch.setattr(choosing, "_measure", lambda encoders, *a, **k: timings.append(set(encoders)) or measure(encoders, *a, **k))

    monkeypatch.setattr(exported, "int8_hardware", lambda: True)
    monkeypatch.setattr(choosing, "INT8_PLAIN_SHARE", 0.5)
    choice, forward = choosing.choose(enc, tmp_path / "plain")
    assert choice["runtime"] == "onnx-int8" and "not timed" in choice["measured"]["onnx"] and timings == []
    assert choice["measured"]["onnx-int8"]["min_cosine"] >= MIN_COSINE
    assert not (tmp_path / "plain" / exported.VISUAL["onnx"]).exists()  # (no fp32 tower made: none is timed)
    assert exported.saved_choice(tmp_path / "plain") == "onnx-int8"
    pixels = choosing.calibration_pixels(enc, 2)
    assert float((forward(pixels) * enc.pixel_prep.torch_encoder(enc)(pixels)).sum(1).min()) >= MIN_COSINE

    monkeypatch.setattr(choosing, "INT8_PLAIN_SHARE", 0.9)  # (the tiny tower's share is under it)
    choice, _ = choosing.choose(enc, tmp_path / "share")
    assert timings == [{"onnx", "onnx-int8"}] and "images_per_s" in choice["measured"]["onnx"]
    monkeypatch.setattr(choosing, "INT8_PLAIN_SHARE", 0.5)
    monkeypatch.setattr(exported, "int8_hardware", lambda: False)
    choosing.choose(enc, tmp_path / "cpu")
    assert timings == [{"onnx", "onnx-int8"}] * 2


def test_the_quantiser_keeps_what_the_graph_still_needs(tmp_path):
    """Hand-made graphs the exports do not make: a Gemm whose bias broadcasts (left float), a
    weight that is also an output (kept), one read in an If's branch (kept)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from mmsearch.retrieval.encoders.runtime import Traced, _quantise

    def traced(model) -> Traced:
        return Traced(model.SerializeToString(), {t.name: numpy_helper.to_array(t) for t in model.graph.initializer})

    rng = np.random.default_rng(0)
    w1, w2, w3 = (rng.normal(size=s).astype(np.float32) for s in ((64, 32), (32, 32), (32, 32)))
    branch = helper.make_graph([helper.make_node("Identity", ["w3"], ["picked"])], "b", [],
                               [helper.make_tensor_value_info("picked", TensorProto.FLOAT, [32, 32])])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Gemm", ["h", "w2", "one"], ["y"], transB=1),  # (a bias of 1: broadcast)
             helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in (("y", [2, 32]), ("z", [32, 32]),
                                                                                                   ("w1", [64, 32]))],
                              [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"),
                                                                          (np.ones(1, np.float32), "one"))]
                              + [numpy_helper.from_array(np.array(True), "cond")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(size=(2, 64)).astype(np.float32)

    def run(source, outputs=None) -> list[np.ndarray]:
        return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(outputs, {"x": x})

    expected = run(model.SerializeToString())
    _quantise(traced(model), tmp_path / "q.onnx")
    q = onnx.load(str(tmp_path / "q.onnx"))
    onnx.checker.check_model(q)
    assert [n.op_type for n in q.graph.node] == ["MatMul", "Gemm", "If"]  # w1 is an output, w2's bias broadcasts
    for a, b in zip(expected, run(str(tmp_path / "q.onnx"))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    model.graph.node.pop(1)  # a bias per column and w1 no output: both products made integer
    model.graph.node.insert(1, helper.make_node("Gemm", ["h", "w2", "bias"], ["y"], transB=1))
    model.graph.initializer.append(numpy_helper.from_array(np.ones(32, np.float32), "bias"))
    del model.graph.output[2]
    y = run(model.SerializeToString(), ["y"])[0]
    _quantise(traced(model), tmp_path / "q2.onnx")
    q = onnx.load(str(tmp_path / "q2.onnx"))
    assert [n.op_type for n in q.graph.node] == ["DynamicQuantizeMatMul", "DynamicQuantizeMatMul", "If"]
    y_int8 = run(str(tmp_path / "q2.onnx"), ["y"])[0]
    assert float((y * y_int8).sum() / np.linalg.norm(y) / np.linalg.norm(y_int8)) > 0.99


def test_a_trace_whose_types_disagree_is_traced_again_with_the_exporters_shape_inference(monkeypatch):
    """Traced without the exporter's shape inference (twice as fast), attention with a given
    scale (as MiniLM's) squares a double beside float tensors: ONNX's strict inference finds it
    (`_typed`), and `_traced` traces again with the exporter's own, whose graph ONNX Runtime
    loads and which computes what PyTorch does; as it does where the export fails without the
    shapes (repeat_interleave, in CoCa's text tower)."""
    import io
    import warnings

    import onnxruntime as ort
    import torch

    from mmsearch.retrieval.encoders.runtime import _exporter, _traced, _typed

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.linear(x)
            return torch.nn.functional.scaled_dot_product_attention(h, h, h, scale=0.5)

    module, x = Attention().eval(), torch.randn(1, 2, 3, 4)
    options = dict(input_names=["x"], output_names=["output"], dynamic_axes={"x": {0: "batch"}, "output": {0: "batch"}},
                   opset_version=17, do_constant_folding=False, export_params=False, keep_initializers_as_inputs=True)
    exporter, out = _exporter(), io.BytesIO()
    assert exporter is not None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exporter(module, (x,), out, onnx_shape_inference=False, **options)
    assert _typed(out.getvalue()) is None
    traced = _traced(module, (x,), {"x": {0: "batch"}})
    assert _typed(traced.graph) is not None
    session = ort.SessionOptions()
    session.add_external_initializers(list(traced.weights), [ort.OrtValue.ortvalue_from_numpy(a) for a in traced.weights.values()])
    got = ort.InferenceSession(traced.graph, session, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, module(x).detach().numpy(), rtol=1e-5, atol=1e-6)

    def public(*a, **k):
        raise AssertionError("traced twice")
    with monkeypatch.context() as m:
        m.setattr(torch.onnx, "export", public)  # a graph whose types agree is traced once, fast
        assert _typed(_traced(module.linear, (x,), {"x": {0: "batch"}}).graph) is not None

    class Repeated(torch.nn.Module):  # a symbolic that fails without the shapes (as in CoCa's text tower)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.repeat_interleave(x, 2, dim=1)

    with pytest.raises(TypeError), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exporter(Repeated(), (x,), io.BytesIO(), onnx_shape_inference=False, **options)
    traced = _traced(Repeated(), (x,), {"x": {0: "batch"}})  # (by the public call)
    got = ort.InferenceSession(traced.graph, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_array_equal(got, torch.repeat_interleave(x, 2, dim=1).numpy())
