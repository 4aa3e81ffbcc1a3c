"""Image–caption pair files for `train` and `eval`: CSV / JSONL / Parquet tables or a folder of
images with sidecar ``.txt`` captions."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .errors import UserError

IMAGE_COLUMNS = ("image", "path", "file", "filepath", "image_path")
CAPTION_COLUMNS = ("caption", "text", "title", "description")
TABLE_READERS = {".csv": pd.read_csv, ".tsv": lambda f: pd.read_csv(f, sep="\t"), ".parquet": pd.read_parquet,
                 ".jsonl": lambda f: pd.read_json(f, lines=True), ".json": pd.read_json}


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A caption table by its extension (one of TABLE_READERS)."""
    return TABLE_READERS[os.path.splitext(str(path))[1].lower()](path)


def read_pairs(source: str, image_column: str | None = None, caption_column: str | None = None) -> pd.DataFrame:
    """Return a frame with absolute ``image`` paths and ``caption`` strings (rows whose image is
    missing are dropped). Relative paths are taken relative to the table's folder."""
    p = Path(source).expanduser()
    if p.is_dir():
        rows = [(str(img), img.with_suffix(".txt").read_text(errors="replace").strip().split("\n")[0])
                for img in sorted(p.rglob("*")) if img.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
                and img.with_suffix(".txt").exists()]
        df = pd.DataFrame(rows, columns=["image", "caption"])
    elif p.is_file():
        if p.suffix.lower() not in TABLE_READERS:
            raise UserError(f"{source}: use a .csv, .tsv, .jsonl or .parquet table, or a folder of images with .txt captions")
        df = read_table(p)
        img_col = image_column or next((c for c in IMAGE_COLUMNS if c in df.columns), None)
        cap_col = caption_column or next((c for c in CAPTION_COLUMNS if c in df.columns), None)
        if img_col not in df.columns or cap_col not in df.columns:
            raise UserError(f"{source}: need an image column ({'/'.join(IMAGE_COLUMNS)}) and a caption column "
                            f"({'/'.join(CAPTION_COLUMNS)}); found {list(df.columns)}")
        df = df[[img_col, cap_col]].rename(columns={img_col: "image", cap_col: "caption"})
        df["image"] = [str(x) if os.path.isabs(str(x)) else str(p.parent / str(x)) for x in df["image"]]
    else:
        raise UserError(f"{source} does not exist")
    df = df.dropna()
    df["caption"] = df["caption"].astype(str).str.strip()
    df = df[(df["caption"] != "") & df["image"].map(os.path.isfile)].reset_index(drop=True)
    if df.empty:
        raise UserError(f"{source}: no usable image–caption pairs")
    return df
