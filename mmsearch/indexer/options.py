"""How to index: every option of an indexing run with its default, limits and help, in one place
(the Python API takes an `IndexOptions`, the CLI reads its defaults and help from here)."""
from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from ..media.image import DEFAULT_MAX_PIXELS
from ..media.video import DEFAULT_MAX_GAP
from ..retrieval.encoders import CUDA, Runtime
from ..retrieval.policy import IndexType
from ..validated import Validated


def default_workers(limit: int = 4) -> int:
    """One decode worker per core, up to `limit`."""
    return max(1, min(limit, os.cpu_count() or 1))


#: decode workers by default when a GPU embeds: the cores are the decoders' (PIL's decode and
#: resize to ViT-B-32-256's input, 640×480 JPEGs: ~8 ms of a core an image, the GPU ~0.4 ms)
GPU_WORKERS = 32


class IndexOptions(Validated):
    model: str | None = Field(None, description="lite (default, offline) | open_clip:ARCH:TAG | "
                              "open_clip:ARCH:/path/ckpt.pt. Default: the index's model, or lite for a new index.")
    reindex: bool = Field(False, description="Re-embed everything: files skipped before are retried, and an "
                          "existing index can switch to another --model.")
    batch_size: int = Field(32, ge=1, le=4096, description="Images per model forward.")
    workers: int = Field(default_factory=default_workers, ge=1, le=256,
                         description="Decode threads (or processes); default: one per core, up to 4 (one per CPU, "
                         "up to 32, when a GPU embeds).")
    processes: bool = Field(False, description="Decode in worker processes instead of threads: for many-core "
                            "machines where decoding is the bottleneck (on 2 cores threads measured faster).")
    exclude: list[str] = Field([], description="Glob on file or folder names/paths to skip; repeatable.")
    hidden: bool = Field(False, description="Also index hidden files and folders.")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Skip images and videos with more pixels per "
                            "frame than this (decompression bombs).")
    max_gap: float = Field(DEFAULT_MAX_GAP, ge=0.1, description="Videos: longest stretch of a shot without a keyframe, in seconds.")
    text_column: str | None = Field(None, description="Caption tables (.csv/.tsv/.jsonl/.parquet): the text column "
                                    "(default: caption/text/title/description).")
    path_column: str | None = Field(None, description="Caption tables: a column naming the image each caption describes.")
    index_type: Literal["auto"] | IndexType | None = Field(None, description="FAISS index: auto (by size and memory), "
                                                           "flat (exact), hnsw, ivfsq (8-bit codes) or ivfpq (PQ codes); remembered.")
    runtime: Runtime = Field("auto", description="Image tower while indexing: auto (a CUDA GPU where PyTorch has one, else the "
                             "fastest of PyTorch bf16 / ONNX Runtime fp32 / int8 whose vectors agree with PyTorch's, measured "
                             "once per model), torch, torch-bf16, onnx, onnx-int8 or cuda.")
    ocr: bool | None = Field(None, description="Read text in images (OCR, English and Chinese) so that words in "
                             "screenshots, signs and scans are searchable; costs ~0.5-1.5 s per image on 2 cores. "
                             "Remembered by the index; default: as before (off for a new index).")
    progress: bool = Field(False, description="Progress bars on stderr.")

    def decode_workers(self, runtime: str) -> int:
        """`workers` where it was given, else its default for the runtime that embeds."""
        if runtime != CUDA or "workers" in self.model_fields_set:
            return self.workers
        return default_workers(GPU_WORKERS)
