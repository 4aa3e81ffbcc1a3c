"""Caption tables (.csv, .tsv, .jsonl, .parquet): read by extension, columns found by name."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .kinds import TABLE_EXTS, extension

if TYPE_CHECKING:
    import pandas as pd

#: column names tried, in order, for the image a row describes and for its text
IMAGE_COLUMNS = ("image", "path", "file", "filepath", "image_path")
CAPTION_COLUMNS = ("caption", "text", "title", "description")

#: pandas' reader of each table extension, with its keywords
READERS: dict[str, tuple[str, dict]] = {
    ".csv": ("read_csv", {}),
    ".tsv": ("read_csv", {"sep": "\t"}),
    ".parquet": ("read_parquet", {}),
    ".jsonl": ("read_json", {"lines": True}),
}
assert set(READERS) == TABLE_EXTS


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A caption table by its extension (one of `kinds.TABLE_EXTS`). pandas is imported here,
    not with the module: every run that embeds imports this one, and pandas cost ~0.5 s of
    start-up on the AMD EPYC whether or not the folders hold a table."""
    import pandas as pd

    reader, keywords = READERS[extension(str(path))]
    return getattr(pd, reader)(str(path), **keywords)


def first_column(columns, names: tuple[str, ...], given: str | None = None) -> str | None:
    """`given` when set, else the first of `names` the table has."""
    return given or next((c for c in names if c in columns), None)
