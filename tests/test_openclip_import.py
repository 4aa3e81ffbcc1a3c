"""open_clip imported with only what a model needs (encoders/openclip_import.py): what each of
open_clip's own configs asks for, and, in a fresh interpreter, that a plain CLIP from a local
checkpoint leaves transformers, timm, torch._dynamo and huggingface_hub unimported yet a later
model that needs them gets them."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmsearch.retrieval.encoders.openclip_import import OPTIONAL, needs


@pytest.mark.parametrize(("arch", "wanted"), [
    ("ViT-B-32", set()),
    ("ViT-B-32-256", set()),
    ("RN50", set()),
    ("roberta-ViT-B-32", {"transformers"}),  # a Hugging Face text tower
    ("coca_ViT-B-32", {"transformers"}),  # caption generation
    ("ViT-B-16-SigLIP", {"timm", "huggingface_hub"}),  # a timm image tower (timm binds the hub as it is imported)
    ("no-such-architecture", set(OPTIONAL)),  # unknown: nothing left out
])
def test_needs_of_packaged_configs(arch, wanted):
    assert needs(arch) == wanted


def test_weights_from_the_hub_need_its_package():
    assert needs("ViT-B-32", local=False) == {"huggingface_hub"}
    assert needs("roberta-ViT-B-32", local=False) == {"huggingface_hub", "transformers"}


def test_needs_of_a_config_file(tmp_path):
    cfg = tmp_path / "mine.json"
    cfg.write_text(json.dumps({"embed_dim": 8, "vision_cfg": {"timm_model_name": "x"}, "text_cfg": {"hf_model_name": "y"}}))
    assert needs(str(cfg)) == {"timm", "transformers", "huggingface_hub"}
    cfg.write_text(json.dumps({"embed_dim": 8, "vision_cfg": {"width": 8}, "text_cfg": {"width": 8}}))
    assert needs(str(cfg)) == set()
    cfg.write_text("{not json")
    assert needs(str(cfg)) == set(OPTIONAL)


PROBE = """
import sys
from mmsearch.retrieval.encoders import openclip_import
from mmsearch.retrieval.encoders.openclip_import import open_clip

openclip_import.LEAVE_OUT = True  # (as the command line sets it)

left_out = ("transformers", "timm", "torch._dynamo", "huggingface_hub")
oc = open_clip("ViT-B-32", local=True)  # (weights from a checkpoint file: no hub)
assert not [m for m in left_out if m in sys.modules], [m for m in left_out if m in sys.modules]
model = oc.create_model("ViT-B-32-256", pretrained=None)  # (built without them)

import torch, torchvision
boxes = torch.tensor([[0, 0, 0, 4, 4.0]])
assert torchvision.ops.roi_align(torch.rand(1, 1, 8, 8), boxes, 2).shape == (1, 1, 2, 2)
assert "torch._dynamo" not in sys.modules
assert sys.modules["torchvision.ops.roi_align"].is_compile_supported("cpu") in (True, False)  # (what it took)
assert type(sys.modules["torch._dynamo"]).__name__ == "module"  # the real one, at first use
assert torch._dynamo.is_compiling() is False

assert oc.pretrained.hf_hub_download is None and not oc.pretrained._has_hf_hub
assert open_clip("ViT-B-32") is oc and "huggingface_hub" in sys.modules  # (a pretrained tag: downloaded from the hub)
assert oc.pretrained.hf_hub_download is not None and oc.pretrained._has_hf_hub

assert oc.hf_model.transformers is None
assert open_clip("roberta-ViT-B-32") is oc and oc.hf_model.transformers is not None  # reloaded for it
assert oc.timm_model.timm is None
open_clip("ViT-B-16-SigLIP")
assert oc.timm_model.timm is not None
print("ok")
"""


def test_a_plain_clip_imports_less_and_later_models_get_the_rest():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_a_program_that_imports_mmsearch_gets_open_clip_whole():
    probe = ("import sys; from mmsearch.retrieval.encoders.openclip_import import open_clip; oc = open_clip('ViT-B-32'); "
             "print(oc.timm_model.timm is not None, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180)
    assert out.stdout.split() == ["True", "True"], out.stderr[-3000:]


def test_a_checkpoint_in_torchs_zip_format_is_mapped_while_it_loads(tmp_path):
    import torch
    from torch.utils.serialization import config

    from mmsearch.retrieval.encoders.openclip import _mapped

    torch.save({"w": torch.ones(2)}, tmp_path / "zip.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "pickled.pt", _use_new_zipfile_serialization=False)
    before = config.load.mmap
    with _mapped(str(tmp_path / "zip.pt")):
        assert config.load.mmap is True
        assert float(torch.load(tmp_path / "zip.pt")["w"].sum()) == 2.0
    assert config.load.mmap == before
    for other in (tmp_path / "pickled.pt", "laion2b_s34b_b79k"):  # (mapping a pickled one fails)
        with _mapped(str(other)):
            assert config.load.mmap == before
    assert float(torch.load(tmp_path / "pickled.pt")["w"].sum()) == 2.0
