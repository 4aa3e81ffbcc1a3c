"""The indexing runner: scan → plan → embed (embed.py) → write, with a summary.

Each batch of finished files is committed in its own transaction, so a killed run keeps
everything up to its last batch and the next run resumes from there.
"""
from __future__ import annotations

import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from ..errors import UserError
from ..media.files import display_path, location, under
from ..retrieval import lexical
from ..retrieval.db import chunks, marks
from ..retrieval.encoders import CUDA
from ..retrieval.index import Index
from ..retrieval.store import (
    DIGEST_INDEX,
    Digest,
    File,
    Item,
    bump_generation,
    ensure_digest_index,
    get_meta,
    next_item_id,
    raw_key,
    segments,
    set_list,
    set_meta,
    sqlite_of,
)
from . import annotate
from .options import IndexOptions
from .plan import Plan, make_plan
from .scan import Entry, given_root, scan
from .side_export import SideExport


@dataclass
class Summary:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    reused: int = 0
    embedded: int = 0
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    runtime: str | None = None  # what ran the image tower, when anything was embedded
    processes: bool = False  # whether decode workers were processes
    query_export: bool = False  # whether the model's query export (no PyTorch for searches) is in place
    ocr_images: int = 0  # images whose text was read (OCR) in this run (here or on a Ray cluster)
    ocr_seconds: float = 0.0  # reading it here, after embedding (on Ray it is part of the embedding)

    def as_dict(self) -> dict:
        return {**self.__dict__, "files_per_second": round(self.embedded / self.seconds, 2) if self.seconds else 0.0}

    def line(self) -> str:
        return (
            f"{self.new} new, {self.updated} updated, {self.unchanged} unchanged, {self.removed} removed, "
            f"{self.reused} reused by content, {len(self.skipped)} skipped; embedded {self.embedded} "
            f"in {self.seconds:.1f}s" + (f" (image tower on {self.runtime})" if self.runtime and self.embedded else "")
            + (f"; read text in {self.ocr_images} image(s)" if self.ocr_images else "")
            + (f" in {self.ocr_seconds:.1f}s" if self.ocr_images and self.ocr_seconds else "")
        )


def index_paths(index: Index, roots: Iterable[str], opts: IndexOptions | None = None,
                embed: EmbedStage | None = None) -> Summary:
    """Bring the index up to date with `roots` (none: every root indexed before), holding its
    writer lock. `embed` replaces the embed stage (default: on this machine)."""
    with index.writer():
        return _update(index, roots, opts or IndexOptions(), embed)


def _update(index: Index, roots: Iterable[str], opts: IndexOptions, embed: EmbedStage | None = None) -> Summary:
    start = time.perf_counter()
    known = index.meta_list("roots")
    paths = [given_root(r) for r in roots]
    removed = index.meta_list("removed")  # parts of roots taken out by SearchIndex.remove
    if paths:  # naming a folder again brings back what was removed inside it
        removed = [p for p in removed if not under(os.fsencode(p), paths)]
    else:  # rescan everything indexed before; a vanished root is swept, not an error
        if not known:
            raise UserError("nothing to index: give one or more folders or files")
        paths = known
    index_type = opts.index_type
    retype = index_type is not None and index_type != (index.meta("index_type") or "auto")
    generation = index.generation()
    # an unchanged folder must not pay for loading the model: check it eagerly only when it may differ
    lazy = not opts.reindex and index.model_spec is not None and opts.model in (None, index.model_spec)
    encoder = None if lazy else index.use_model(opts.model, reindex=opts.reindex, runtime=opts.runtime)
    summary = Summary()
    gone = [os.fsencode(p) for p in removed]  # (exact: a removed object's key may hold a "?")
    entries = (e for e in scan(paths, opts.exclude, opts.hidden) if not under(e.key, gone))  # (read by the plan, a part at a time)
    with index.session() as s:
        ensure_digest_index(s)  # (gone if a bulk run was killed: `digests_after`)
        plan = make_plan(s, entries, paths, opts.workers, opts.progress)
        summary.unchanged = plan.unchanged
        # sweep + reuse in one transaction: a rename never loses its vectors
        for ids in chunks(plan.remove):
            s.execute(delete(File).where(File.id.in_(ids)))
        _write(s, Batch.of(_reused(s, plan)))
        _skip(s, [(e, e.error or "unusable") for e in plan.broken] + plan.unreadable, summary)
        # (a URI root named again with other options replaces the one kept before)
        given = {location(p) for p in paths}
        set_list(s, "roots", {*(r for r in known if location(r) not in given), *paths})
        set_list(s, "removed", removed)
        if plan.remove or plan.reuse or plan.broken or plan.unreadable:
            bump_generation(s)
        _commit(s)
        summary.removed = len(plan.remove)
        summary.reused = len(plan.reuse)
        for e, _, _ in plan.reuse:
            _count(summary, e, plan.new_paths)
        if plan.embed:  # torch and the model load only when there is something to embed
            with digests_after(s, len(plan.embed)):
                (embed or _embed_here)(s, index, encoder, plan, opts, summary)
        annotate.captures(s, opts)
        if _ocr_on(s, opts):
            read, seconds = annotate.ocr(s, opts)  # (what an embed stage on Ray read is counted already)
            if read:
                summary.ocr_images, summary.ocr_seconds = summary.ocr_images + read, summary.ocr_seconds + seconds
    if retype and index_type:
        with index.session() as s:
            set_meta(s, "index_type", index_type)
            s.commit()
    # leave the FAISS index of this generation behind, built by the policy, so queries are fast;
    # also when it is missing though nothing changed: an earlier run's build failed (a Ray
    # cluster lost at the end), and readers would otherwise keep an older file for good. (When
    # it is there, nothing: loading it only to drop it took a rescan of 200k unchanged files
    # from 133 to 190 MB, growing with the index)
    if retype or index.generation() != generation or not os.path.exists(index.faiss_file()):
        index.faiss_index(rebuild=True)
    summary.seconds = time.perf_counter() - start
    return summary


def _embed_here(s: Session, index: Index, encoder, plan: Plan, opts: IndexOptions, summary: Summary) -> None:
    """The embed stage on this machine: decode and embed `plan.embed`, committing each batch."""
    from ..retrieval.encoders.exported import image_forward
    from .embed import embedded

    images = sum(e.kind != "text" for e, _ in plan.embed)
    # (chosen again now that the job's size is known: a loaded model is cached, exports are cheap to find)
    encoder = index.indexer(opts.runtime, images)
    summary.processes = opts.processes
    # a first run with a model loaded also makes its query export, for searches without PyTorch,
    # in a forked child (side_export.py) beside other work: the image tower's export when the
    # runtimes are measured (`runtime.choose`), else the embedding when PyTorch embeds (300
    # images, ViT-B-32-256 on PyTorch bf16, 2 cores: 13.4-13.9 s, vs 14.7-15.1 s in a thread and
    # ~20 s one after the other); after ONNX Runtime's forward, which takes every core (beside
    # it, in a thread: 27.6-28.5 s vs 26.2-27.2 s)
    side: SideExport | None = None

    def beside() -> SideExport | None:
        nonlocal side
        side = SideExport.start(encoder, after_tower=True)
        return side

    try:
        encode_pixels, summary.runtime = image_forward(encoder, opts.runtime, images, beside)
        if side is None and (summary.runtime.startswith("torch") or summary.runtime == CUDA):
            side = SideExport.start(encoder)
        for batch in embedded(plan.embed, encoder, opts, batch_size=opts.batch_size, workers=opts.decode_workers(summary.runtime),
                              progress=opts.progress, encode_pixels=encode_pixels, processes=opts.processes):
            commit_batch(s, plan, summary, Batch.of([(d.entry, d.digest, d.items(), d.size, d.error) for d in batch],
                                                    [d.capture for d in batch]))  # (read as decoded)
        summary.query_export = side.result() if side else _export_for_queries(encoder)
    finally:
        if side:
            side.cancel()


#: what an item's fields may set in its row (its id and file are given, its vector goes to a segment)
ITEM_FIELDS = {c.name for c in Item.__table__.columns} - {"id", "file_id"}
#: an embedded file: (entry, content digest, item fields with a float32 `vector`, pixel size, error or None)
Embedded = tuple[Entry, str, list[dict], tuple[int, int] | None, str | None]


@dataclass
class Batch:
    """Files to store in one transaction, as columns: a value a file from `entries` to `captures`,
    a value an item from `owners` to `vectors`; `skipped` files are recorded without items. The
    Ray driver builds one straight from its shards' columns: it had made a dict and a vector view
    an item, taken apart again here (1M items from 256-file shards: 41.9/41.2k → 53.1/52.8k
    items/s without them)."""

    entries: list[Entry] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int] | None] = field(default_factory=list)
    #: each file's capture columns (`annotate.capture_fields`) when read already (as it was decoded),
    #: stored with its row; a file's None, or None for all: read after (`annotate.captures`)
    captures: list[dict | None] | None = None
    owners: list[int] = field(default_factory=list)  # each item's file: its place in `entries`
    fields: list[dict] = field(default_factory=list)  # each item's fields (ITEM_FIELDS are stored; never changed here)
    vectors: list[np.ndarray] = field(default_factory=list)  # the items' vectors, in order, in blocks of rows
    skipped: list[tuple[Entry, str]] = field(default_factory=list)  # (entry, why)

    @classmethod
    def of(cls, files: Sequence[Embedded], captures: Sequence[dict | None] | None = None) -> Batch:
        """A batch of embedded files (those with an error skipped) and, if read, their captures."""
        b = cls(captures=None if captures is None else [])
        for i, (e, digest, items, size, error) in enumerate(files):
            if error:
                b.skipped.append((e, error))
            else:
                b.add(e, digest, size, items, captures[i] if captures is not None else None)
                if items:
                    b.vectors.append(np.stack([it["vector"] for it in items]))
        return b

    def add(self, e: Entry, digest: str, size: tuple[int, int] | None, fields: list[dict], capture: dict | None) -> None:
        """One file and its items' fields; their vectors the caller appends to `vectors`, in order."""
        self.owners += [len(self.entries)] * len(fields)
        self.entries.append(e)
        self.digests.append(digest)
        self.sizes.append(size)
        self.fields += fields
        if self.captures is not None:
            self.captures.append(capture)


def commit_batch(s: Session, plan: Plan, summary: Summary, batch: Batch) -> None:
    """Store one batch of embedded files in one transaction, its skipped files recorded as such."""
    with _bulk(s):
        if batch.skipped:
            _skip(s, batch.skipped, summary)
        _write(s, batch)
        for e in batch.entries:
            _count(summary, e, plan.new_paths)
        summary.embedded += len(batch.entries)
        bump_generation(s)
        _commit(s)


#: an embed stage: (session, index, loaded encoder or None, plan, options, summary) → None; it
#: commits what it embeds with `commit_batch` (see `_embed_here`; indexer/distributed.py on Ray)
EmbedStage = Callable[[Session, Index, Any, Plan, IndexOptions, Summary], None]


def _ocr_on(s: Session, opts: IndexOptions) -> bool:
    """Whether this run reads text in images: as asked (and remembered), else as the index was."""
    if opts.ocr is not None:
        set_meta(s, "ocr", "on" if opts.ocr else "off")
        s.commit()
    return get_meta(s, "ocr") == "on"


def _export_for_queries(encoder, tower: Callable[[], bytes | None] | None = None) -> bool:
    from ..retrieval.encoders.exported import ExportedEncoder

    if isinstance(encoder, ExportedEncoder):  # made from the sealed export, unless it was found damaged
        from ..retrieval.encoders import load_encoder
        from ..retrieval.encoders.query import QueryEncoder

        if QueryEncoder.read(encoder.identity) is not None:
            return True
        encoder = load_encoder(encoder.spec)
    from ..retrieval.encoders.runtime import export_for_queries

    try:
        return export_for_queries(encoder, tower=tower)
    except Exception:  # an exporter failure costs the next query its speed, never the run
        return False


def _count(summary: Summary, e: Entry, new_paths: set[bytes]) -> None:
    if e.key in new_paths:
        summary.new += 1
    else:
        summary.updated += 1


def _reused(s: Session, plan: Plan) -> list[Embedded]:
    """The files whose content the store holds, with copies of its items and vectors. Read from
    the segments directly: a renamed file's source rows were swept in this very transaction, and
    rows on disk are never overwritten while an id may still refer to them."""
    sources = [item for _, _, items in plan.reuse for item in items]
    vecs = dict(zip((i.id for i in sources), segments(s).get([i.id for i in sources]))) if sources else {}
    return [(e, digest, [_copy(i, vecs[i.id]) for i in items], None, None) for e, digest, items in plan.reuse]


def _copy(item: Item, vector) -> dict:
    return dict(kind=item.kind, timestamp=item.timestamp, start=item.start, end=item.end, text=item.text,
                offset=item.offset, link_path=item.link_path, ocr=item.ocr, vector=vector)


def _file_ids(s: Session, entries: list[Entry], status: str, digests: list, errors: list[str | None],
              sizes: list[tuple[int, int] | None], captures: Sequence[dict | None] | None = None) -> list[int]:
    """Each entry's file id: its row, found by path or added, set to size, mtime, `status` and the
    entry's digest (as stored), error and pixel size (None leaves a found row's size as it was),
    and capture metadata (None: read later, annotate.py), with its old items gone. A batch in a
    few bulk statements, no ORM objects: the ORM's unit of work held a bulk merge to ~2,300 files/s."""
    if not entries:
        return []
    # looked up by display path (indexed), then matched by exact bytes (schema v5: the bytes of a
    # UTF-8 path are not stored apart, nor indexed)
    keys = [e.key for e in entries]
    shown = [k.decode("utf-8", errors="replace") for k in keys]  # (display_path, from the key)
    wanted, found = set(keys), dict[bytes, int]()
    dbapi = sqlite_of(s)
    for paths in chunks(sorted(set(shown))):  # (through sqlite3: SQLAlchemy's IN took 0.3 s per 200k)
        sql = f"SELECT path_key, id FROM files WHERE path IN ({marks(paths)})"
        found |= {key: i for key, i in dbapi.execute(sql, paths) if key in wanted}
    for ids in chunks(list(found.values())):
        s.execute(delete(Item).where(Item.file_id.in_(ids)))
    next_id = (s.scalar(select(func.max(File.id))) or 0) + 1
    out, added, changed = [], [], []
    for i, key in enumerate(keys):
        if (file_id := found.get(key)) is None:
            file_id = found[key] = next_id
            next_id += 1
            added.append(i)
        else:
            size, capture = sizes[i], captures[i] if captures else None
            changed.append({"id": file_id, "size": entries[i].size, "mtime_ns": entries[i].mtime_ns, "taken_from": None,
                            "digest": digests[i], "status": status, "error": errors[i],
                            **({"width": size[0], "height": size[1]} if size else {}),
                            **({c: capture.get(c) for c in annotate.CAPTURE} if capture is not None else {})})
        out.append(file_id)
    if added:  # as columns: rows of tuples built in Python cost more than SQLite's inserts (_insert)
        pick = (lambda col: col) if len(added) == len(keys) else (lambda col: [col[i] for i in added])
        new, sized = pick(entries), pick(sizes)
        _insert(s, "files", {"id": pick(out), "path": pick(shown), "kind": [e.kind for e in new],
                             "raw_key": [raw_key(k, p) for k, p in zip(pick(keys), pick(shown))],
                             "size": [e.size for e in new], "mtime_ns": [e.mtime_ns for e in new],
                             "digest": pick(digests), "status": [status] * len(added), "error": pick(errors),
                             "width": [z and z[0] for z in sized], "height": [z and z[1] for z in sized],
                             **_capture_columns(pick(captures) if captures else [None] * len(added))})
    if changed:
        s.execute(update(File), changed)
    return out


def _capture_columns(captures: Sequence[dict | None]) -> dict[str, list]:
    """The capture columns of new rows, as `_insert` takes them: a file without (None) has
    taken_from NULL, so that annotate.py reads it later. Written with the row, not updated after:
    the Ray driver's separate update by id, committed apart, cost ~17 % of its merge (200k files)."""
    return {c: [None if cap is None else cap.get(c) for cap in captures] for c in annotate.CAPTURE}


def _write(s: Session, b: Batch) -> None:
    """Store each file of `b` (its error unread: None) with its items and capture metadata (None:
    read later), replacing what it had."""
    if not b.entries:
        return
    # digests as stored (`Digest`): the rows of new files bypass SQLAlchemy's types (`_insert`)
    file_ids = _file_ids(s, b.entries, "ok", [Digest.stored(d) for d in b.digests], [None] * len(b.entries), b.sizes,
                         b.captures)
    if not b.owners:  # (a file may have no items, e.g. a text file without passages)
        return
    first = _fresh_ids(s, len(b.owners))
    ids = range(first, first + len(b.owners))
    owners = [file_ids[i] for i in b.owners]
    # vectors first, synced, then the rows that refer to them (retrieval/vectors.py): written by a
    # thread while SQLite inserts the rows (writing and syncing leave the GIL), joined before the
    # commit. The thread has the segment store, not the session (a session is not thread-safe)
    store = segments(s)
    with ThreadPoolExecutor(1) as pool:
        synced = pool.submit(lambda: store.put(first, np.concatenate(b.vectors)))  # (rows of its dim: `put`)
        # (the items table's own fields only: a shard from another mmsearch may carry others)
        columns = {c: [f.get(c) for f in b.fields] for c in sorted(set().union(*b.fields) & ITEM_FIELDS)}
        _insert(s, "items", {"id": ids, "file_id": owners, **columns})
        # searchable words: the file's name on its first item, each item's text or OCR text
        named = {file_id: lexical.compact(lexical.name_text(e.path)) for file_id, e in zip(file_ids, b.entries)}
        names = [named.pop(file_id, "") for file_id in owners]
        # (item ids are fresh, never reused: a plain INSERT; OR REPLACE looked each rowid up first,
        # +0.9 µs an item, 300k FTS5 rows 0.72 → 0.98 s)
        _many(s, "INSERT INTO lexical (rowid, name, body) VALUES (?, ?, ?)",
              zip(ids, names, _bodies(columns.get("text"), columns.get("ocr"), len(ids))))
        synced.result()


def _bodies(texts: list[str | None] | None, ocr: list[str | None] | None, n: int) -> list[str]:
    """The lexical body of each of `n` items: its text, else its OCR text, compacted."""
    if texts is None and ocr is None:
        return [""] * n  # (images not read by OCR: the bulk of a merge)
    texts, ocr = texts or [None] * n, ocr or [None] * n
    return [lexical.compact(t or lexical.ocr_text(o)) if t or o else "" for t, o in zip(texts, ocr)]


def _insert(s: Session, table: str, columns: dict[str, Sequence]) -> None:
    """Bulk insert of rows given as columns (equal lengths), on the session's own connection (its
    transaction), through sqlite3 directly: SQLAlchemy's per-row parameter handling cost more than
    SQLite's work (a bulk merge of new files went from ~12k to ~15k items/s, run.py's whole commit
    path from ~2,300 with ORM objects). A column that is None in every row is written as a NULL in
    the statement, not bound: sqlite3 binds None (and bytes) through its adapter lookup."""
    names = list(columns)
    bound = [c for c in names if columns[c].count(None) != len(columns[c])]
    values = ", ".join("?" if c in bound else "NULL" for c in names)
    _many(s, f"INSERT INTO {table} ({', '.join(f'[{c}]' for c in names)}) VALUES ({values})",
          zip(*(columns[c] for c in bound)))


def _many(s: Session, sql: str, rows: Iterable[tuple]) -> None:
    """`sql` once per row, on the session's own connection (its transaction), through sqlite3."""
    sqlite_of(s).executemany(sql, rows)


@contextmanager
def _bulk(s: Session) -> Iterator[None]:
    """Settings of the writing connection for bulk merges; neither touches what a commit makes
    durable (journal and synchronous stay as `db.PRAGMAS` set them). Content digests are
    random: each new file's digest lands on a random page of their index (~290 MB at 10M files),
    and with SQLite's default 2 MB cache a 20k-file batch spilled dirty pages mid-transaction and
    read them back. A 256 MiB cache (allocated as pages are used) and a WAL checkpoint every
    ~80 MB instead of ~4 MB (a page written by several batches is copied back once): 1M files,
    37k → 44k items/s. Both are put back after the batch: the connection returns to the pool, and
    a session that later only read (a watch run's plan, a search) kept the big cache (+60 MiB on
    a 110 MB store) and the ~80 MB WAL."""
    dbapi = sqlite_of(s)
    settings = {"cache_size": "-262144", "wal_autocheckpoint": "20000"}
    saved = {name: dbapi.execute(f"PRAGMA {name}").fetchone()[0] for name in settings}
    for name, value in settings.items():
        dbapi.execute(f"PRAGMA {name}={value}")
    try:
        yield
    finally:  # (a smaller cache_size releases the pages beyond it)
        # a Ctrl-C or SIGTERM inside a statement makes SQLAlchemy close the connection: nothing to
        # put back then, and the error raised here hid the interrupt (a traceback, exit code 1)
        with suppress(sqlite3.ProgrammingError):
            for name, value in saved.items():
                dbapi.execute(f"PRAGMA {name}={int(value)}")


def _fresh_ids(s: Session, n: int) -> int:
    """The first of `n` item ids never used before. SQLite would hand out a deleted maximum again;
    never reusing ids lets a FAISS index be extended by comparing id sets (an id it holds always
    means the same vector). Counted in the session, stored by `_commit`."""
    if "next_item_id" not in s.info:
        s.info["next_item_id"] = next_item_id(s)
    first = s.info["next_item_id"]
    s.info["next_item_id"] = first + n
    return first


#: a run storing at least this many files, and at least a quarter of what the index then holds,
#: builds the digest index after them (store.DIGEST_INDEX): the build costs ~0.7 µs a file held
#: (3M: 2.0 s), keeping it up as they are stored ~2 µs a new file at 1M held and ~7 at 3M
BULK_FILES = 50_000


@contextmanager
def digests_after(s: Session, files: int) -> Iterator[None]:
    """Store `files` new or changed files without the digest index when building it after costs
    less. A run that fails or is killed meanwhile leaves it to the next run (`ensure_digest_index`
    before its plan, the only reader)."""
    held = s.scalar(select(func.max(File.id))) or 0
    bulk = files >= BULK_FILES and 4 * files >= held + files
    if bulk:
        DIGEST_INDEX.drop(s.connection())
        s.commit()
    yield
    if bulk:
        DIGEST_INDEX.create(s.connection())
        s.commit()


def _commit(s: Session) -> None:
    if "next_item_id" in s.info:
        set_meta(s, "next_item_id", str(s.info["next_item_id"]))
    s.commit()


def _skip(s: Session, skipped: list[tuple[Entry, str]], summary: Summary) -> None:
    """Record each (entry, reason) as skipped, without items."""
    _file_ids(s, [e for e, _ in skipped], "skipped", [None] * len(skipped), [reason for _, reason in skipped],
              [None] * len(skipped))
    summary.skipped += [{"path": display_path(e.path), "reason": reason} for e, reason in skipped]
