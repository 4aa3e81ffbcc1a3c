"""The one table of file kinds: which extensions are images, videos, texts and caption tables."""
from __future__ import annotations

import os

#: camera raw photos, decoded by LibRaw (rawpy's build includes Sigma's X3F) in media/image.py.
#: Not ".raw": other programs' dumps carry it too (the cameras that wrote it also wrote .rw2/.rwl)
RAW_EXTS = frozenset({".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".rwl",
                      ".raf", ".pef", ".ptx", ".srw", ".3fr", ".fff", ".erf", ".kdc", ".dcr", ".mrw", ".mef", ".mos",
                      ".x3f", ".iiq"})
#: (.avif: Pillow decodes AVIF itself since version 11.2; .heic/.heif, every iPhone photo, through
#: pillow-heif, registered with Pillow in media/image.py: the primary image of a multi-image file)
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".heif"}) | RAW_EXTS
VIDEO_EXTS = frozenset({".mp4", ".mkv", ".webm", ".mov", ".avi", ".ogv", ".m4v"})
#: caption tables: one text item per row (`media.tables`)
TABLE_EXTS = frozenset({".csv", ".tsv", ".jsonl", ".parquet"})
TEXT_EXTS = frozenset({".txt", ".md"}) | TABLE_EXTS
#: the kinds of item an index holds (and a search can be restricted to)
ITEM_KINDS = ("image", "video", "text")
KIND_BY_EXT = {**dict.fromkeys(IMAGE_EXTS, "image"), **dict.fromkeys(VIDEO_EXTS, "video"),
               **dict.fromkeys(TEXT_EXTS, "text")}


def extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def kind_of(path: str) -> str | None:
    """image, video or text by the file's extension; None for anything else."""
    return KIND_BY_EXT.get(extension(path))


def is_table(path: str) -> bool:
    return extension(path) in TABLE_EXTS
