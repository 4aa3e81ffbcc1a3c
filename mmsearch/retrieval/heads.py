"""Trainable heads over frozen towers: what `mmsearch train` fits for each kind of model.

* lite: the linear image head and the text-side map, trained through a lighter ConSE mix than
  the one they are used with (see encoders/lite.py and `LiteHead.trained_pair`);
* open_clip (``--train projections``): the image and text projection matrices.
Each exposes frozen features, the head's parameters, the embedding functions and how to save
the result as a file that ``--model`` accepts.
"""
from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .encoders import DEFAULT_CONSE_WEIGHT, Encoder
from .encoders.lite import TRAIN_CONSE_WEIGHT, LiteEncoder, project_image, project_text
from .encoders.openclip import OpenClipEncoder
from .features import image_features, text_features


class LiteHead:
    def __init__(self, encoder: LiteEncoder, conse_weight: float = DEFAULT_CONSE_WEIGHT):
        self.encoder = encoder
        self.conse_weight = conse_weight
        # the version changes with the tower's preprocessing (v2: resize and crop fused)
        self.feature_id = "lite-effnet-lite2-pooled+conse-v2"

    def features(self, images: list[str], texts: list[str], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        enc = self.encoder

        def forward(pixels):
            pooled, conse = enc.image_features(pixels)
            return torch.cat([pooled, conse], dim=1)

        return (image_features(images, self.feature_id, enc.pixel_prep, forward, progress=progress),
                text_features(texts, enc.text_tower))

    def current_params(self) -> dict:
        return dict(self.encoder.head)

    def init_params(self, seed: int) -> dict[str, torch.nn.Parameter]:
        g = torch.Generator().manual_seed(seed)
        return {
            "img_w": torch.nn.Parameter(torch.randn(384, 1280, generator=g) * 0.02),
            "img_b": torch.nn.Parameter(torch.zeros(384)),
            "txt_w": torch.nn.Parameter(torch.eye(384)),
            "txt_b": torch.nn.Parameter(torch.zeros(384)),
        }

    def dropout(self, feats: torch.Tensor, p: float) -> torch.Tensor:
        """Training noise on the pooled features only; the ConSE block has nothing to learn."""
        return torch.cat([F.dropout(feats[:, :1280], p), feats[:, 1280:]], dim=1)

    def embed_images(self, params: dict, feats: torch.Tensor) -> torch.Tensor:
        return project_image(self._with_weight(params), feats[:, :1280], feats[:, 1280:])

    def embed_texts(self, params: dict, feats: torch.Tensor) -> torch.Tensor:
        return project_text(self._with_weight(params), feats)

    def trained_pair(self, params: dict, img: torch.Tensor, txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the contrastive loss compares: the embeddings with ConSE mixed in at
        TRAIN_CONSE_WEIGHT, lighter than the weight the head is used with. Trained through the
        full mix, the learned block leans on ConSE; trained alone, its text map drifts from
        MiniLM's space and text↔text ranking suffers. Measured with the shipped recipe,
        mixed at 0.7 when used: trained through 0.7 → Tux/pysiogame text→image R@10 0.624/0.161,
        through 0.5 → 0.663/0.179."""
        mix = {**params, "conse_weight": torch.tensor(TRAIN_CONSE_WEIGHT)}
        return self.embed_images(mix, img), self.embed_texts(mix, txt)

    def _with_weight(self, params: dict) -> dict:
        return params if "conse_weight" in params else {**params, "conse_weight": torch.tensor(self.conse_weight)}

    def save(self, params: dict, out: str, meta: dict) -> str:
        from safetensors.torch import save_file

        tensors = {k: v.detach().float().contiguous() for k, v in params.items()}
        tensors["conse_weight"] = torch.tensor(self.conse_weight)
        tensors["classes"] = self.encoder.class_texts.float().contiguous()
        save_file(tensors, out, metadata={"mmsearch": json.dumps(meta)})
        return f"lite:{out}"


class ProjectionHead:
    """open_clip models with ``visual.proj`` and ``text_projection``: features are the pooled
    tower outputs before projection, so only the two matrices train."""

    def __init__(self, encoder: OpenClipEncoder):
        m = encoder.model
        if getattr(m.visual, "proj", None) is None or getattr(m, "text_projection", None) is None:
            raise UserError(f"{encoder.spec}: --train projections needs a model with visual.proj and text_projection")
        self.encoder = encoder
        self.feature_id = f"openclip-preproj-{encoder.identity}"

    def features(self, images: list[str], texts: list[str], progress: bool = True):
        m = self.encoder.model
        vproj, tproj = m.visual.proj, m.text_projection
        m.visual.proj, m.text_projection = None, None
        try:
            img = image_features(images, self.feature_id, self.encoder.pixel_prep, m.encode_image, progress=progress)
            txt = text_features(texts, lambda t: m.encode_text(self.encoder.tokenizer(t)))
        finally:
            m.visual.proj, m.text_projection = vproj, tproj
        return img, txt

    def current_params(self) -> dict:
        return self.init_params(0)

    def init_params(self, seed: int) -> dict[str, torch.nn.Parameter]:
        m = self.encoder.model
        return {"visual.proj": torch.nn.Parameter(m.visual.proj.detach().clone()),
                "text_projection": torch.nn.Parameter(m.text_projection.detach().clone())}

    def dropout(self, feats: torch.Tensor, p: float) -> torch.Tensor:
        return F.dropout(feats, p)

    def embed_images(self, params: dict, feats: torch.Tensor) -> torch.Tensor:
        return feats @ params["visual.proj"]

    def embed_texts(self, params: dict, feats: torch.Tensor) -> torch.Tensor:
        return feats @ params["text_projection"]

    def trained_pair(self, params: dict, img: torch.Tensor, txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_images(params, img), self.embed_texts(params, txt)

    def save(self, params: dict, out: str, meta: dict) -> str:
        sd = self.encoder.model.state_dict()
        sd.update({k: v.detach() for k, v in params.items()})
        torch.save({"state_dict": sd, "mmsearch": meta}, out)
        arch = self.encoder.spec.split(":")[1]
        return f"open_clip:{arch}:{out}"


def head_for(encoder: Encoder, what: str = "projections",
             conse_weight: float = DEFAULT_CONSE_WEIGHT) -> LiteHead | ProjectionHead:
    if isinstance(encoder, LiteEncoder):
        return LiteHead(encoder, conse_weight)
    if what == "projections" and isinstance(encoder, OpenClipEncoder):
        return ProjectionHead(encoder)
    raise UserError(f"--train {what} is not supported; use --train projections")


def embed(head, params: dict, img: np.ndarray, txt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        i = F.normalize(head.embed_images(params, torch.from_numpy(img)), dim=-1).numpy()
        t = F.normalize(head.embed_texts(params, torch.from_numpy(txt)), dim=-1).numpy()
    return i, t
