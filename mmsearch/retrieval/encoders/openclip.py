"""Any open_clip model: a hub tag, or a local checkpoint file, with its own preprocessing and tokenizer.

Spec: ``open_clip:ARCH:TAG`` (hub weights, e.g. ``open_clip:ViT-B-32:laion2b_s34b_b79k``) or
``open_clip:ARCH:/path/to/checkpoint.pt``. ARCH may also be a path to an open_clip model-config
JSON, for custom architectures.
"""
from __future__ import annotations

import copy
import os
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ...errors import ModelLoadError
from . import identity
from .base import Encoder, TextExport
from .identity import is_local
from .openclip_import import open_clip as import_open_clip


def _resolve_arch(arch: str) -> str:
    """The open_clip model name of ARCH (registering a JSON config file with open_clip)."""
    import open_clip

    if arch.endswith(".json"):
        cfg = Path(arch).expanduser()
        if not cfg.is_file():
            raise ModelLoadError(f"model config {arch} does not exist")
        open_clip.add_model_config(cfg)
        return cfg.stem
    if arch not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown open_clip architecture {arch!r}; `python -c \"import open_clip; print(open_clip.list_models())\"` lists them"
        )
    return arch


def _hub_weights(name: str, tag: str) -> str:
    """What to pass open_clip for a hub tag: the cached file when there is one (no network at
    all), else the tag itself — after a quick check that the hub can be reached, since an offline
    machine would otherwise spend a minute in download retries before failing."""
    import socket
    from urllib.parse import urlparse

    import open_clip
    from huggingface_hub import try_to_load_from_cache

    repo = open_clip.get_pretrained_cfg(name, tag).get("hf_hub", "").strip("/")
    if repo and tag != "openai":
        for fn in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            cached = try_to_load_from_cache(repo, fn)
            if isinstance(cached, str):
                return cached
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        raise ModelLoadError(
            f"cannot download open_clip weights {name}:{tag}: {host} is unreachable (offline?). "
            f"Download the checkpoint elsewhere and pass --model open_clip:{name}:/path/to/file, or use --model lite"
        ) from None
    return tag


@contextmanager
def _no_random_init() -> Iterator[None]:
    """Build a model without drawing random initial weights, for a checkpoint to replace: drawing
    them took 0.85 s of the 1.6 s that building ViT-B-32-256 from a local checkpoint took."""
    names = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_")
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


@contextmanager
def _mapped(path: str) -> Iterator[None]:
    """torch.load maps a checkpoint file in torch's zip format meanwhile instead of reading it
    into memory, and the model copies its weights from the page cache: ViT-B-32-256 (605 MB)
    built and loaded in 1.15 s instead of 1.56. (Older pickled checkpoints cannot be mapped.)"""
    from torch.utils.serialization import config

    if not zipfile.is_zipfile(path):  # (a hub tag, safetensors, a pickled checkpoint)
        yield
        return
    before, config.load.mmap = config.load.mmap, True
    try:
        yield
    finally:
        config.load.mmap = before


class OpenClipEncoder(Encoder):
    def __init__(self, spec: str):
        parts = spec.split(":", 2)
        open_clip = import_open_clip(parts[1] if len(parts) == 3 else "", local=len(parts) == 3 and is_local(parts[2]))
        name = _resolve_arch(parts[1]) if len(parts) == 3 else ""
        self.spec, self.identity = identity.open_clip(spec)  # (a malformed spec is refused here)
        weights = self.spec.split(":", 2)[2]
        if not is_local(weights):
            known = [t for a, t in open_clip.list_pretrained() if a == name]
            if weights not in known:
                raise ModelLoadError(
                    f"open_clip has no pretrained tag {weights!r} for {name}; known tags: {', '.join(known) or 'none'}"
                )
        source = weights if is_local(weights) else _hub_weights(name, weights)
        try:
            with _no_random_init(), _mapped(source):  # (open_clip loads the checkpoint strictly: every weight is replaced)
                model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=source, device="cpu")
            self.tokenizer: Any = open_clip.get_tokenizer(name)
        except Exception as e:  # open_clip, torch and the hub raise many types; all mean "cannot load"
            detail = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if is_local(weights) and isinstance(e, (RuntimeError, AssertionError, KeyError, ValueError)):
                raise ModelLoadError(f"checkpoint {weights} does not fit architecture {name} ({detail}); pass the ARCH it was trained as") from None
            raise ModelLoadError(f"could not load {spec}: {detail}") from None
        self.model = model.eval()
        self._bf16: torch.nn.Module | None = None
        self.transform = preprocess
        size = getattr(self.model.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        with torch.inference_mode():
            self.dim = int(self.model.encode_text(self.tokenizer(["x"])).shape[-1])

    def _forward_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _forward_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts))

    def bf16_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self._bf16 is None:  # made once (0.2 s, 176 MB for ViT-B-32): `index --watch` asks each update
            self._bf16 = copy.deepcopy(self.model.visual).to(torch.bfloat16)  # (what encode_image runs)
        visual = self._bf16

        def forward(pixels: torch.Tensor) -> torch.Tensor:
            out = visual(pixels.to(torch.bfloat16))
            return (out[0] if isinstance(out, tuple) else out).float()  # (CoCa: pooled, tokens; as its encode_image)

        return forward

    def text_export(self) -> TextExport | None:
        """CLIP's own BPE tokenizer rebuilt for the `tokenizers` library (what `query.py` runs), kept
        only when it gives open_clip's token ids on every check text; other tokenizers: None."""
        from open_clip.tokenizer import SimpleTokenizer, _clean_lower

        from .query import clean_open_clip

        tk = self.tokenizer
        if not isinstance(tk, SimpleTokenizer) or tk.reduction_fn is not None or tk.clean_fn is not _clean_lower:
            return None
        rebuilt = clip_tokenizer(tk)
        from .runtime import CHECK_TEXTS

        ids = np.array([e.ids for e in rebuilt.encode_batch([clean_open_clip(t) for t in CHECK_TEXTS])])
        if not np.array_equal(ids, tk(CHECK_TEXTS).numpy()):
            return None
        return TextExport(_ClipText(self.model), ("input_ids",), rebuilt, tk.context_length, pad_id=0,
                          pad_to=tk.context_length, clean="open_clip")


class _ClipText(torch.nn.Module):
    """An open_clip model's text side on token ids (the model's own `encode_text`)."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids)


LIGATURES = {"ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st"}


def clip_tokenizer(tk: Any) -> Any:
    """open_clip's `SimpleTokenizer` as a `tokenizers.Tokenizer`: its whitespace cleaning and lower
    case, its word pattern, byte-level BPE with ``</w>`` word ends, start and end tokens, and
    truncation and zero padding to the context length."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

    merges = sorted(tk.bpe_ranks, key=tk.bpe_ranks.__getitem__)
    tok = Tokenizer(models.BPE(vocab=tk.encoder, merges=merges, end_of_word_suffix="</w>"))
    ligatures = [normalizers.Replace(a, b) for a, b in LIGATURES.items()]  # as ftfy's fix_text does
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), *ligatures, normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Strip(), normalizers.Lowercase()])
    words = Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(words, behavior="removed", invert=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    sot, eot = tk.sot_token_id, tk.eot_token_id
    tok.post_processor = processors.TemplateProcessing(single=f"{tk.decoder[sot]} $A {tk.decoder[eot]}",
                                                       special_tokens=[(tk.decoder[sot], sot), (tk.decoder[eot], eot)])
    tok.enable_truncation(tk.context_length)
    tok.enable_padding(pad_id=0, length=tk.context_length)
    return tok
