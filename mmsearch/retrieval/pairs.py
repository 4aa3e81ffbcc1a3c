"""Image–caption pair files for `train` and `eval`: CSV / JSONL / Parquet tables or a folder of
images with sidecar ``.txt`` captions."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..media.kinds import IMAGE_EXTS, is_table
from ..media.tables import CAPTION_COLUMNS, IMAGE_COLUMNS, first_column, read_table


def read_pairs(source: str, image_column: str | None = None, caption_column: str | None = None) -> pd.DataFrame:
    """Return a frame with absolute ``image`` paths and ``caption`` strings (rows whose image is
    missing are dropped). Relative paths are taken relative to the table's folder."""
    p = Path(source).expanduser()
    if p.is_dir():
        rows = [(str(img), img.with_suffix(".txt").read_text(errors="replace").strip().split("\n")[0])
                for img in sorted(p.rglob("*")) if img.suffix.lower() in IMAGE_EXTS
                and img.with_suffix(".txt").exists()]
        df = pd.DataFrame(rows, columns=["image", "caption"])
    elif p.is_file():
        if not is_table(str(p)):
            raise UserError(f"{source}: use a .csv, .tsv, .jsonl or .parquet table, or a folder of images with .txt captions")
        df = read_table(p)
        img_col = first_column(df.columns, IMAGE_COLUMNS, image_column)
        cap_col = first_column(df.columns, CAPTION_COLUMNS, caption_column)
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
