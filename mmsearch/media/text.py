"""Text items: plain-text and Markdown files (split into passages), caption tables, sidecar captions.

A ``photo.txt`` beside ``photo.jpg`` is that image's caption: its item links to the image, which
is how search results show captions and how `describe` finds them. Table rows link to the file
named in the path column, when there is one. Under a URI root a table's links are URIs beside
it; a ``.txt`` there links to no image (finding one would cost a request per image extension).
"""
from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass

from .errors import DecodeError, regular_size
from .files import display_path, is_uri
from .kinds import IMAGE_EXTS, VIDEO_EXTS, is_table
from .tables import CAPTION_COLUMNS, IMAGE_COLUMNS, first_column, read_table

PASSAGE_CHARS = 500  # about what the text towers read (MiniLM: 128 tokens)
MAX_TEXT_BYTES = 20 << 20
#: a sentence of at most PASSAGE_CHARS (ending at . ! or ?), or PASSAGE_CHARS of one that is longer
SENTENCE = rf".{{1,{PASSAGE_CHARS}}}?(?:[.!?](?=\s)|$)|.{{{PASSAGE_CHARS}}}"


@dataclass
class TextOptions:
    text_column: str | None = None
    path_column: str | None = None


def text_units(path: str, opts: TextOptions = TextOptions(), origin: str | None = None) -> list[dict]:
    """Item fields (kind, text, offset, link_path) for one text or table file; `origin`: where
    it is, which links are relative to, when `path` is a local copy (of an object: a URI)."""
    origin = origin or path
    if regular_size(path) > MAX_TEXT_BYTES:
        raise DecodeError(f"text file larger than {MAX_TEXT_BYTES >> 20} MiB")
    if is_table(path):
        return _table(path, opts, origin)
    with open(path, "rb") as f:
        body = f.read().decode("utf-8", errors="replace")
    # (the image's path as files' paths are shown: one that is not UTF-8 could not be stored)
    link = None if is_uri(origin) or (beside := sidecar_of(origin)) is None else display_path(beside)
    units = [{"kind": "text", "text": t, "offset": off, "link_path": link} for off, t in passages(body)]
    if not units:
        raise DecodeError("no text")
    return units


def sidecar_of(path: str) -> str | None:
    """The image or video a ``.txt`` caption file sits beside (same name), if any."""
    stem = os.path.splitext(path)[0]
    for ext in (*IMAGE_EXTS, *VIDEO_EXTS):
        for candidate in (stem + ext, stem + ext.upper()):
            if os.path.isfile(candidate):
                return os.path.abspath(candidate)
    return None


def _beside(origin: str, link: str) -> str:
    """A link of a table at `origin` as a path: relative to the table's folder (its "folder" in a
    URI); an absolute one, or a URI, as given."""
    if not is_uri(origin):
        return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(origin)), link))
    if is_uri(link) or link.startswith("/"):
        return link
    scheme, _, rest = origin.partition("://")
    return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), link))}"


def passages(body: str) -> list[tuple[int, str]]:
    """(character offset, passage) pairs: a short text whole, a long one cut at paragraph and
    then sentence boundaries into pieces of about PASSAGE_CHARS."""
    out: list[tuple[int, str]] = []
    start, buf = 0, ""
    for m in re.finditer(r"[^\n]+(?:\n(?!\s*\n)[^\n]+)*|(?<=\n)\s*\n", body):  # paragraphs
        sentences = re.finditer(SENTENCE, m.group(0), re.S)
        for s in sentences:  # sentences; one longer than a passage is cut at PASSAGE_CHARS
            piece = s.group(0)
            if buf and len(buf) + len(piece) > PASSAGE_CHARS:
                out.append((start, buf.strip()))
                buf = ""
            if not buf.strip():  # the passage starts at this piece's first non-space character
                start = m.start() + s.start() + (len(piece) - len(piece.lstrip()))
            buf += piece
    if buf.strip():
        out.append((start, buf.strip()))
    return [(o, t) for o, t in out if t]


def _table(path: str, opts: TextOptions, origin: str) -> list[dict]:
    try:
        df = read_table(path)
    except Exception as e:  # pandas raises many types for malformed tables
        raise DecodeError(f"unreadable table: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    text_col = first_column(df.columns, CAPTION_COLUMNS, opts.text_column)
    if text_col not in df.columns:
        raise DecodeError(f"no text column ({'/'.join(CAPTION_COLUMNS)}); pass --text-column")
    path_col = first_column(df.columns, IMAGE_COLUMNS, opts.path_column)
    if opts.path_column and path_col not in df.columns:
        raise DecodeError(f"no column {opts.path_column!r}")
    units = []
    for row, (_, r) in enumerate(df.iterrows()):
        txt = r[text_col]
        if not isinstance(txt, str) or not txt.strip():
            continue
        link = r[path_col] if path_col in df.columns and isinstance(r[path_col], str) else None
        if link:
            link = _beside(origin, link)
        units.append({"kind": "text", "text": txt.strip(), "offset": row, "link_path": link})
    if not units:
        raise DecodeError("no text in the table")
    return units
