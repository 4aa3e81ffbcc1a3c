"""Embedding on a GPU: the `cuda` runtime, the probe that finds a GPU without PyTorch, and the
Ray actors' resources. What needs a GPU runs where PyTorch has one (skipped elsewhere); the rest
checks the same code on the CPU, with PyTorch's `meta` device standing in for a GPU: a tensor
left behind on the CPU fails there as it would on CUDA."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_mmsearch, stored_items

from mmsearch.errors import UserError
from mmsearch.indexer.distributed import ACTOR_CPUS, Actors
from mmsearch.retrieval.encoders import exported, load_encoder
from mmsearch.retrieval.encoders.runtime import calibration_pixels, cuda_encoder, cuda_ready, pixel_encoder

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("which", ["lite", "tiny_clip"])
def test_on_device_moves_all_the_image_forward_reads(which, request):
    encoder = load_encoder("lite" if which == "lite" else request.getfixturevalue("tiny_clip"))
    moved = encoder.on_device("meta")
    pixels = torch.from_numpy(calibration_pixels(encoder, 2)).to("meta")
    out = moved._forward_pixels(encoder.pixel_prep.normalise(pixels))
    assert out.device.type == "meta" and tuple(out.shape) == (2, encoder.dim)
    # the original keeps its CPU weights (queries and the ONNX exports use it)
    assert {p.device.type for m in vars(encoder).values() if isinstance(m, torch.nn.Module) for p in m.parameters()} == {"cpu"}
    if which == "lite":  # and what it left behind fails, as on a GPU
        moved.head = encoder.head
        with pytest.raises(RuntimeError, match="device"):
            moved._forward_pixels(encoder.pixel_prep.normalise(pixels))


def test_gpu_probe_reads_the_driver_and_honours_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(exported.os.path, "exists", lambda p: p == "/dev/nvidiactl")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert exported.gpu_present()
    for hidden in ("", "-1"):  # (Ray sets it empty in an actor that asked for no GPU)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert not exported.gpu_present()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert exported.gpu_present()
    monkeypatch.setattr(exported.os.path, "exists", lambda p: False)
    assert not exported.gpu_present()


def test_ray_actors_one_per_gpu_with_its_share_of_cpus_else_per_two_cpus():
    assert Actors.plan([{"CPU": 16, "GPU": 1}]) == Actors(1, 16, 1)
    # a CPU-only node beside GPU nodes does not enlarge a GPU actor's share (it could not be placed)
    assert Actors.plan([{"CPU": 16, "GPU": 2}, {"CPU": 8, "GPU": 1}, {"CPU": 64}]) == Actors(3, 8, 1)
    assert Actors.plan([{"CPU": 16, "GPU": 2}], "onnx-int8") == Actors(8, ACTOR_CPUS)  # a CPU runtime asked for
    assert Actors.plan([{"CPU": 4}, {"CPU": 3}]) == Actors(3, ACTOR_CPUS)
    with pytest.raises(UserError, match="needs a cluster with GPUs"):
        Actors.plan([{"CPU": 4}], "cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_runtime_cuda_without_a_gpu_is_a_one_line_error(tmp_path, image_set):
    assert not cuda_ready()
    r = run_mmsearch("index", str(image_set), "--index", str(tmp_path / "ix"), "--runtime", "cuda")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--runtime cuda needs a CUDA GPU" in r.stderr


@GPU
@pytest.mark.parametrize("which", ["lite", "tiny_clip"])
def test_cuda_vectors_agree_with_the_cpu(which, request, image_set):
    from PIL import Image

    encoder = load_encoder("lite" if which == "lite" else request.getfixturevalue("tiny_clip"))
    prep = encoder.pixel_prep
    pixels = np.stack([prep(Image.open(p)) for p in sorted(image_set.rglob("*.png"))[:16]])
    cpu = prep.torch_encoder(encoder)(pixels)
    gpu = cuda_encoder(encoder).many(np.array_split(pixels, 2))
    assert float((cpu * gpu).sum(1).min()) >= 0.999
    assert pixel_encoder(encoder, runtime="auto")[1] == "cuda"


@GPU
def test_an_index_run_embeds_on_the_gpu_what_a_cpu_run_embeds(tmp_path, image_set, tiny_clip):
    from mmsearch.indexer.options import IndexOptions
    from mmsearch.indexer.run import index_paths
    from mmsearch.retrieval.index import Index

    runs = {}
    for runtime in ("auto", "torch"):
        summary = index_paths(Index(tmp_path / runtime, create=True), [str(image_set)],
                              IndexOptions(model=tiny_clip, runtime=runtime))
        assert summary.runtime == ("cuda" if runtime == "auto" else "torch") and summary.embedded >= 20
        runs[runtime] = stored_items(tmp_path / runtime)
    assert runs["auto"].keys() == runs["torch"].keys()
    assert min(float(runs["auto"][k] @ runs["torch"][k]) for k in runs["torch"]) >= 0.999
