"""Caption tables (.csv, .tsv, .jsonl, .parquet): read by extension, columns found by name."""
from __future__ import annotations

import os
from typing import Callable

import pandas as pd

from .kinds import TABLE_EXTS, extension

#: column names tried, in order, for the image a row describes and for its text
IMAGE_COLUMNS = ("image", "path", "file", "filepath", "image_path")
CAPTION_COLUMNS = ("caption", "text", "title", "description")

READERS: dict[str, Callable[[str], pd.DataFrame]] = {
    ".csv": pd.read_csv,
    ".tsv": lambda f: pd.read_csv(f, sep="\t"),
    ".parquet": pd.read_parquet,
    ".jsonl": lambda f: pd.read_json(f, lines=True),
}
assert set(READERS) == TABLE_EXTS


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A caption table by its extension (one of `kinds.TABLE_EXTS`)."""
    return READERS[extension(str(path))](str(path))


def first_column(columns, names: tuple[str, ...], given: str | None = None) -> str | None:
    """`given` when set, else the first of `names` the table has."""
    return given or next((c for c in names if c in columns), None)
