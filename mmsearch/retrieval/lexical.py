"""Lexical search: words in file names, text files, captions and text read from images (OCR).

One SQLite FTS5 table, `lexical`, one row per item (rowid = item id): `name` (the file name, on
a file's first item only) and `body` (a passage's or caption's text, or an image's OCR text).
Both are stored *compact*: NFKC, lower case, accents dropped from Latin letters, and everything
that is not a letter or a digit removed. FTS5's trigram tokenizer then matches any substring of
three or more characters. That is what OCR needs: it runs words together ("INVOICE4711",
"GateB52closed" measured with RapidOCR) or splits them, and a query "invoice 4711" or
"invoice4711" compacts to terms found either way. Chinese has no spaces to split on, and a
trigram index finds a phrase of Chinese characters as it finds any other substring.

A query's words must all match (AND): a substring index matches short words inside longer ones
("red" in "bored"), and requiring every word keeps descriptive queries ("a red bicycle") from
matching noise. A quoted phrase must match as written, up to spaces and punctuation. Common
English words and Latin words shorter than three letters are dropped from unquoted text;
shorter CJK words and digits are kept and matched with LIKE (a scan) when nothing longer is left.
Ranked by BM25.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (writers only: a query searches through sqlite3, db.py)
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

DDL = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS lexical USING fts5(name, body, tokenize='trigram')",
    # items go by cascade from files: their rows here go with them, whoever deletes
    "CREATE TRIGGER IF NOT EXISTS lexical_gone AFTER DELETE ON items BEGIN "
    "DELETE FROM lexical WHERE rowid = old.id; END",
]

TRIGRAM = 3
_NOT_ALNUM = re.compile(r"[^0-9a-z]+")
#: words of a query looked up (the rest ignored), and its characters read: bounded work per request
MAX_TERMS = 16
MAX_QUERY_CHARS = 4096
#: rows a query of only one- or two-character words reads (the trigram index cannot serve those):
#: 0.9 s on 2 cores (another job running); in a larger index such a query sees only the first this many items
MAX_SCAN = 1_000_000
STOPWORDS = frozenset(
    "the and for with from this that these those are was were has have had not but you your our its his her "
    "their them they she him who what which when where how why all any can could would should will into onto "
    "over under about than then there here very also just some such only out off photo picture image".split()
)


def compact(value: str | None) -> str:
    """The searchable form of a text (see the module doc)."""
    if not value:
        return ""
    if value.isascii():  # the common case, ~10× faster (NFKC and accents change nothing there)
        return _NOT_ALNUM.sub("", value.lower())
    out, base = [], ""
    for c in unicodedata.normalize("NFKD", value.lower()):
        if unicodedata.combining(c):
            if base and ord(base) < 0x250:  # an accent on a Latin letter: café → cafe
                continue
            out.append(c)
        elif unicodedata.category(c)[0] in "LN":
            out.append(c)
            base = c
    return unicodedata.normalize("NFC", "".join(out))


def name_text(path: str) -> str:
    """What of a path is searchable by name: the file name without its extension."""
    return os.path.splitext(os.path.basename(path))[0]


def _cjk(term: str) -> bool:
    return any(unicodedata.east_asian_width(c) in "WF" for c in term)


@dataclass
class LexicalQuery:
    terms: list[str] = field(default_factory=list)  # compact terms, all required
    short: list[str] = field(default_factory=list)  # terms too short for the trigram index

    @classmethod
    def parse(cls, query: str) -> LexicalQuery:
        q = cls()
        query = query[:MAX_QUERY_CHARS]
        phrases = re.findall(r'"([^"]*)"', query)
        rest = re.sub(r'"[^"]*"', " ", query)
        for p in phrases:
            q._add(compact(p), quoted=True)
        for word in re.findall(r"\w+", rest):
            q._add(compact(word), quoted=False)
        return q

    def _add(self, term: str, quoted: bool) -> None:
        if not term or term in self.terms or term in self.short or len(self.terms) + len(self.short) >= MAX_TERMS:
            return
        if len(term) >= TRIGRAM:
            if quoted or term not in STOPWORDS:
                self.terms.append(term)
        elif quoted or _cjk(term) or term.isdigit():
            self.short.append(term)

    def __bool__(self) -> bool:
        return bool(self.terms or self.short)

    def match(self) -> str:
        """The FTS5 MATCH expression: every term as a quoted string (compact terms hold only
        letters and digits, so nothing needs escaping)."""
        return " AND ".join(f'"{t}"' for t in self.terms)


def search(conn: sqlite3.Connection, query: str, limit: int, allowed: set[int] | None = None) -> list[tuple[int, float]]:
    """Item ids matching every term of `query`, best first, with a score (higher is better:
    BM25 negated); at most `limit`, within `allowed` ids when given."""
    q = LexicalQuery.parse(query)
    if not q:
        return []
    likes = " AND ".join(f"(name || ' ' || body) LIKE :s{i}" for i in range(len(q.short)))
    params: dict = {f"s{i}": f"%{t}%" for i, t in enumerate(q.short)}
    if q.terms:
        sql = "SELECT rowid, -bm25(lexical) FROM lexical WHERE lexical MATCH :m" + (f" AND {likes}" if likes else "")
        params["m"] = q.match()
        sql += " ORDER BY bm25(lexical)"
    else:  # only short terms: a scan (of at most MAX_SCAN rows: bounded work), shortest texts first
        sql = (f"SELECT rowid, 1.0 / (1 + length(name) + length(body)) FROM "
               f"(SELECT rowid, name, body FROM lexical LIMIT {MAX_SCAN}) WHERE {likes} ORDER BY 2 DESC")
    out: list[tuple[int, float]] = []
    for rowid, score in conn.execute(sql, params):
        if allowed is None or rowid in allowed:
            out.append((int(rowid), float(score)))
            if len(out) >= limit:
                break
    return out


def add_rows(conn: Connection | Session, rows: list[tuple[int, str, str]]) -> None:
    """Index (item id, name, body) rows; the texts are compacted here."""
    from sqlalchemy import text

    if rows:
        conn.execute(text("INSERT OR REPLACE INTO lexical(rowid, name, body) VALUES (:i, :n, :b)"),
                     [{"i": i, "n": compact(n), "b": compact(b)} for i, n, b in rows])


def ocr_text(lines: list | str | None) -> str:
    """The recognised lines of an OCR record (a list, or its JSON) as one text, a line each."""
    if isinstance(lines, str):
        lines = json.loads(lines)
    return "\n".join(line[0] for line in lines or [])


def set_body(session: Session, item_id: int, body: str) -> None:
    from sqlalchemy import text

    session.execute(text("UPDATE lexical SET body = :b WHERE rowid = :i"), {"i": item_id, "b": compact(body)})
