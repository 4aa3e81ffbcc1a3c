"""`mmsearch train`: fit a model's head on image–caption pairs with a symmetric InfoNCE loss.

The fine-tuning half of pretrain→fine-tune: the towers stay frozen, their features are cached
(retrieval/features.py), and only the head learns, so training takes seconds per epoch on a CPU.
A validation split (by caption, so a caption never sits on both sides) measures recall before
and after. Deterministic for a given ``seed``; an interrupted run resumes from its last epoch.
"""
from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .encoders import DEFAULT_CONSE_WEIGHT, load_encoder
from .evaluate import recall_metrics
from .heads import embed, head_for
from .pairs import read_pairs


def _features(head, data: str, progress: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Tower features of a pair file, without the pairs whose image cannot be decoded."""
    pairs = read_pairs(data)
    img, txt = head.features(pairs["image"].tolist(), pairs["caption"].tolist(), progress)
    ok = ~np.isnan(img).any(axis=1)
    return img[ok], txt[ok], [c for c, keep in zip(pairs["caption"], ok) if keep]


def split(captions: list[str], val_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    h = np.array([int(hashlib.sha1(f"{seed}:{c.lower()}".encode()).hexdigest(), 16) % 10000 for c in captions])
    val = h < val_share * 10000
    return np.flatnonzero(~val), np.flatnonzero(val)


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; pairs sharing a caption are all positives for each other."""
    logits = scale.exp() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    target = (groups[:, None] == groups[None, :]).float()
    target = target / target.sum(1, keepdim=True)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def train(spec: str | None, data: str, out: str, *, epochs: int = 15, batch_size: int = 256, lr: float = 1e-3,
          weight_decay: float = 0.05, dropout: float = 0.2, val_share: float = 0.1, seed: int = 0,
          conse_weight: float = DEFAULT_CONSE_WEIGHT, what: str = "projections", progress: bool = True) -> dict:
    head = head_for(load_encoder(spec), what, conse_weight)
    img, txt, captions = _features(head, data, progress)
    tr, va = split(captions, val_share, seed)
    if len(va) == 0:
        va = tr
    groups = torch.from_numpy(np.unique(captions, return_inverse=True)[1])
    before = recall_metrics(*embed(head, head.current_params(), img[va], txt[va]), [captions[i] for i in va])

    params = head.init_params(seed)
    scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    opt = torch.optim.AdamW([*params.values(), scale], lr=lr, weight_decay=weight_decay)
    torch.manual_seed(seed)  # dropout draws from the global generator: seed it here, after model loading
    state_file, start_epoch = out + ".state.pt", 0
    if os.path.exists(state_file):  # resume an interrupted run of the same recipe
        st = torch.load(state_file, weights_only=False)
        if st["recipe"] == (data, spec, seed, epochs, batch_size, lr):
            for k, v in st["params"].items():
                params[k].data.copy_(v)
            scale.data.copy_(st["scale"])
            opt.load_state_dict(st["opt"])
            torch.set_rng_state(st["rng"])
            start_epoch = st["epoch"]
    img_t, txt_t = torch.from_numpy(img), torch.from_numpy(txt)
    g = torch.Generator().manual_seed(seed)
    for _ in range(start_epoch):
        torch.randperm(len(tr), generator=g)  # keep the shuffle sequence identical on resume
    t0 = time.perf_counter()
    for epoch in tqdm(range(start_epoch, epochs), desc="training", unit="epoch", disable=not progress):
        order = torch.from_numpy(tr)[torch.randperm(len(tr), generator=g)]
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            if len(idx) < 2:
                continue
            img_e, txt_e = head.trained_pair(params, head.dropout(img_t[idx], dropout), txt_t[idx])
            loss = contrastive_loss(img_e, txt_e, scale, groups[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                scale.clamp_(0, np.log(100))
        torch.save({"recipe": (data, spec, seed, epochs, batch_size, lr), "epoch": epoch + 1, "opt": opt.state_dict(),
                    "params": {k: v.detach() for k, v in params.items()}, "scale": scale.detach(),
                    "rng": torch.get_rng_state()}, state_file)
    after = recall_metrics(*embed(head, params, img[va], txt[va]), [captions[i] for i in va])
    recipe = dict(data=os.path.basename(data), model=spec or "lite", epochs=epochs, batch_size=batch_size, lr=lr,
                  weight_decay=weight_decay, dropout=dropout, val_share=val_share, seed=seed, conse_weight=conse_weight)
    new_spec = head.save(params, out, {"recipe": recipe, "val_before": before, "val_after": after})
    os.remove(state_file)
    return {"model": new_spec, "train_pairs": len(tr), "val_pairs": len(va), "val_before": before, "val_after": after,
            "train_seconds": round(time.perf_counter() - t0, 1)}


def evaluate(spec: str | None, data: str, progress: bool = True) -> dict:
    """Recall@1/5/10 and MRR of a model on a pair file (using cached tower features)."""
    encoder = load_encoder(spec)
    head = head_for(encoder)
    img, txt, captions = _features(head, data, progress)
    return {"model": encoder.spec, **recall_metrics(*embed(head, head.current_params(), img, txt), captions)}
