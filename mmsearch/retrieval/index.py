"""An index directory: the SQLite store plus a FAISS index rebuilt from it on demand.

The FAISS file is a cache named after the store's generation (``vectors-<gen>.faiss``): a
reader that finds no file for the current generation rebuilds it from the stored vectors, so a
crash between a database commit and a FAISS write can never leave the two out of step.
"""
from __future__ import annotations

import fcntl
import glob
import json
import math
import os
import sqlite3
import threading
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import faiss
import numpy as np

from ..errors import IndexBusy, ModelLoadError, UserError
from ..media.kinds import ITEM_KINDS
from ..paths import default_index_dir
from . import db
from .encoders import DEFAULT_MODEL, load_encoder, load_indexer
from .encoders.query import QueryEncoder, preloaded
from .policy import MIN_VECTORS, Adder, IndexPlan, build, choose_index, extend, search_params
from .vectors import DIR as VECTORS_DIR
from .vectors import Segments, opened

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

    from .encoders.base import Encoder
    from .encoders.exported import ExportedEncoder


IN_MEMORY_LIMIT = 2_000_000  # more vectors than this are built from a float16 file, not RAM
LOCK_NAME = "writer.lock"


@dataclass(frozen=True)
class Loaded:
    """A FAISS index with the plan it was built by, handed out together so that a reader never
    pairs one generation's index with another's plan."""

    file: str
    index: faiss.Index
    plan: IndexPlan


def _read_plan(fn: str) -> IndexPlan | None:
    try:
        with open(fn + ".json") as f:
            return IndexPlan(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def _read_index(fn: str, flags: int = 0) -> faiss.Index | None:
    """A FAISS file, or None when another process removed it as stale since we looked."""
    try:
        return faiss.read_index(fn, flags)
    except RuntimeError:
        if os.path.exists(fn):
            raise
        return None


class Index:
    """An index folder. Queries read its database through sqlite3 (`reading`, db.py); writes and
    whatever else needs the schema go through SQLAlchemy (`session`, store.py), imported and
    connected the first time one is asked for, or at once where the database must first be
    created or migrated."""

    def __init__(self, path: str | os.PathLike | None = None, create: bool = False):
        # absolute: segment and shard folders go to Ray tasks, which may run in another directory
        self.path = os.path.abspath(Path(path or default_index_dir()).expanduser())
        exists = os.path.exists(os.path.join(self.path, db.DB_NAME))
        if not exists:
            if not create:
                raise UserError(f"no index at {self.path}; run `mmsearch index PATH...` first (or pass --index DIR)")
            os.makedirs(self.path, exist_ok=True)
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._readers = threading.local()
        try:
            current = exists and self._schema_version() == db.SCHEMA_VERSION
        except sqlite3.DatabaseError as e:  # (a damaged file, another program's, no permission)
            raise UserError(f"index {self.path}: cannot read its database {db.DB_NAME}: {e}") from None
        if not current:
            self.engine  # noqa: B018  # (created, migrated, or refused with the reason: store.open_engine)
        self._loaded: Loaded | None = None
        self._queries: dict[str, QueryEncoder] = {}  # the model's query export, once loaded
        self._lock = threading.Lock()
        # adds the vectors of an IVF build elsewhere: set by `index --ray` (indexer/distributed.py),
        # whose cluster then builds it; None: here (policy.build)
        self.adder: Adder | None = None

    def _schema_version(self) -> int:
        with self.reading() as conn:
            return db.schema_version(conn)

    @property
    def engine(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                from .store import open_engine

                self._engine = open_engine(self.path)
            return self._engine

    def session(self) -> Session:
        from sqlalchemy.orm import Session

        return Session(self.engine, expire_on_commit=False)

    def reading(self) -> AbstractContextManager[sqlite3.Connection]:
        """A sqlite3 connection to read the database with (no SQLAlchemy): this thread's, kept
        open; each statement sees the newest commit. (One opened and closed for each read made
        SQLite checkpoint and delete the WAL files at every close where no other connection
        was open: file writes in every query.)"""
        conn = getattr(self._readers, "conn", None)
        if conn is None:
            conn = self._readers.conn = db.connect(self.path)
        return nullcontext(conn)

    def segments(self) -> Segments:
        """The stored vectors."""
        with self.reading() as conn:
            meta = db.get_metas(conn, "dim", "vectors_base")
        return opened(self.path, meta.get("dim"), meta.get("vectors_base"))

    @contextmanager
    def writer(self) -> Iterator[None]:
        """Hold the index's writer lock: one indexing run at a time (two interleaved runs handed
        out the same item ids and one died with an IntegrityError). The lock is the operating
        system's, so a killed writer never leaves it behind."""
        try:
            fd = os.open(os.path.join(self.path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot write to index {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise IndexBusy(f"another process is indexing into {self.path}; run again when it has finished") from None
        try:
            yield
        finally:
            os.close(fd)  # releases the lock

    # -- model -------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        with self.reading() as conn:
            return db.get_meta(conn, key)

    def meta_list(self, key: str) -> list[str]:
        return db.as_list(self.meta(key))

    @property
    def model_spec(self) -> str | None:
        return self.meta("model_spec")

    def encoder(self) -> Encoder:
        """The index's model (`lite` for an index that has none yet), loaded once per process.
        An index whose model's weights changed since it was built is refused."""
        enc = load_encoder(self.model_spec or DEFAULT_MODEL)
        self._check(enc, None)
        return enc

    def embedder(self, images: bool = False) -> Encoder | QueryEncoder:
        """What embeds queries (texts; images too with `images`): the model's export on ONNX
        Runtime when the user cache holds one, which needs no PyTorch (a one-shot text query:
        ~6 s → under 1 s); else the model itself, which then leaves that export for next time."""
        identity = self.meta("model_identity")
        if identity:
            query = self._queries.get(identity) or preloaded(identity) or QueryEncoder.read(identity)
            if query is not None and (query.image is not None or not images) and query.open(not images, images):
                self._queries = {identity: query}
                return query
        enc = self.encoder()
        if identity:
            from .encoders.runtime import export_for_queries

            try:
                export_for_queries(enc)
            except Exception:  # the next query tries again; this one is answered either way
                pass
        return enc

    def indexer(self, runtime: str = "auto", images: int | None = None) -> Encoder | ExportedEncoder:
        """The index's model as an indexing run of `images` images with `runtime` needs it
        (`load_indexer`: its cached exports when complete, no PyTorch), refused like `encoder`
        when its weights changed."""
        enc = load_indexer(self.model_spec or DEFAULT_MODEL, runtime, images)
        self._check(enc, None)
        return enc

    def use_model(self, spec: str | None = None, reindex: bool = False, runtime: str = "auto") -> Encoder | ExportedEncoder:
        """Make `spec` (default: the index's own model) the model to embed with, and remember it;
        returned as `indexer` returns it. Another model than the index's is refused unless
        `reindex`; `reindex` forgets every stored file, so that the caller embeds everything
        afresh (skipped files are retried too)."""
        from .store import File, bump_generation, next_item_id, segments, set_meta

        enc = load_indexer(spec or self.model_spec or DEFAULT_MODEL, runtime)
        if not reindex:
            self._check(enc, spec)
        with self.session() as s, s.begin():
            if reindex:
                s.query(File).delete()
                bump_generation(s)
                # vectors of another model (perhaps another dimension) start a new store at the next id
                segments(s).clear()
                set_meta(s, "vectors_base", str(next_item_id(s)))
            set_meta(s, "model_spec", enc.spec)
            set_meta(s, "model_identity", enc.identity)
            set_meta(s, "dim", str(enc.dim))
        return enc

    def _check(self, enc: Encoder | ExportedEncoder, asked: str | None) -> None:
        stored_id = self.meta("model_identity")
        if stored_id and stored_id != enc.identity:
            what = f"--model {asked}" if asked else f"its model {self.model_spec}, whose weights changed"
            raise ModelLoadError(
                f"index {self.path} was built with {self.model_spec} ({stored_id}); cannot use {what}. "
                "Pass --reindex to re-embed everything with the new model, or pick another --index"
            )

    # -- vectors ------------------------------------------------------------------------------
    def generation(self) -> str:
        return self.meta("generation") or "0"

    def faiss_file(self) -> str:
        """The FAISS file of the current generation (built or not)."""
        return os.path.join(self.path, f"vectors-{self.generation()}.faiss")

    def faiss_index(self, rebuild: bool = False) -> Loaded:
        """The FAISS index of the current generation with its plan, loaded or built from the
        stored vectors.

        An exact (flat) index is rebuilt by whoever first needs a new generation: it is cheap.
        An approximate one is rebuilt by the indexer at the end of its run (`rebuild=True`);
        until then readers keep using the newest file there is — results stay correct, since
        candidates are re-ranked from the store and deleted items dropped."""
        with self._lock:
            fn = self.faiss_file()
            loaded = self._loaded
            if loaded and not rebuild and (loaded.file == fn or (not os.path.exists(fn) and loaded.plan.kind != "flat")):
                return loaded  # current, or still the newest built: the indexer has not finished yet
            if not os.path.exists(fn) and not rebuild:
                newest = self._newest_file()
                stale = _read_plan(newest) if newest else None
                if newest and stale and stale.kind != "flat":
                    fn = newest
            plan = _read_plan(fn) if os.path.exists(fn) and not rebuild else None
            flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if plan and plan.kind.startswith("ivf") else 0
            index = _read_index(fn, flags) if plan is not None else None
            self._loaded = Loaded(fn, index, plan) if index is not None and plan is not None else Loaded(fn, *self._build(fn))
            return self._loaded

    def _newest_file(self) -> str | None:
        """The most recently written FAISS file of any generation."""
        def mtime(path: str) -> float:
            try:
                return os.path.getmtime(path)
            except FileNotFoundError:  # removed as stale by another process since it was listed
                return -1.0

        files = [(mtime(f), f) for f in glob.glob(os.path.join(self.path, "vectors-*.faiss"))]
        newest = max((f for f in files if f[0] >= 0), default=None)
        return newest[1] if newest else None

    def _build(self, fn: str) -> tuple[faiss.Index, IndexPlan]:
        from sqlalchemy import select

        from .store import Item, load_vectors, vectors_to_file

        with self.session() as s:  # (one snapshot: the ids and their vectors)
            ids = np.array(s.scalars(select(Item.id).order_by(Item.id)).all(), np.int64)
            dim = int(self.meta("dim") or 1)
            plan = choose_index(len(ids), dim, kind=self.meta("index_type") or "auto")
            if len(ids) < MIN_VECTORS[plan.kind]:  # too few to train or tune it: exact it is
                plan = choose_index(len(ids), dim, kind="flat")
            built = self._extended(plan, ids, s)
            if built is not None:
                index, plan = built
            elif len(ids) > IN_MEMORY_LIMIT:
                scratch = os.path.join(self.path, f"build-{os.getpid()}.f16")
                try:
                    index = build(plan, *vectors_to_file(s, scratch, len(ids), dim), add=self.adder)
                finally:
                    os.remove(scratch)
            else:
                ids, vecs = load_vectors(s)
                index = build(plan, ids, vecs if len(vecs) else np.zeros((0, dim), np.float32), add=self.adder)
        try:  # a read-only index directory still answers from memory
            tmp = f"{fn}.{os.getpid()}.tmp"
            faiss.write_index(index, tmp)
            with open(tmp + ".json", "w") as f:
                json.dump(plan.as_dict(), f)
            os.replace(tmp + ".json", fn + ".json")
            os.replace(tmp, fn)
            for old in glob.glob(os.path.join(self.path, "vectors-*.faiss")):
                if old != fn:
                    for stale in (old, old + ".json"):
                        if os.path.exists(stale):
                            os.remove(stale)
        except OSError:
            pass
        return index, plan

    def search_vector(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None,
                      loaded: Loaded | None = None) -> list[tuple[int, float]]:
        """Top-k (item id, score) in `loaded` (default: the current FAISS index); `allowed` restricts
        the search to those ids inside FAISS. Approximate indexes return `plan.candidates()` × k
        candidates, re-scored exactly from the store — or, where the plan found the index's own
        scores precise enough (`rerank` 0), ranked by those, only items deleted since dropped."""
        loaded = loaded or self.faiss_index()
        index, plan = loaded.index, loaded.plan
        if index.ntotal == 0 or k <= 0 or (allowed is not None and len(allowed) == 0):
            return []
        sel = None if allowed is None else faiss.IDSelectorBatch(allowed.astype(np.int64))
        pool = index.ntotal if allowed is None else len(allowed)
        n = min(k * plan.candidates(), pool)
        if plan.param == "nprobe":  # probe lists enough to hold n of the pool twice over (filters, large k)
            nlist = faiss.extract_index_ivf(index).nlist
            plan = replace(plan, value=min(nlist, max(plan.value, math.ceil(2 * nlist * n / pool))))
        q = np.asarray(query, np.float32).reshape(1, -1)
        scores, ids = index.search(q, n, params=search_params(plan, sel))
        found = [(int(i), float(sc)) for i, sc in zip(ids[0], scores[0]) if i >= 0]
        if plan.kind == "flat":
            return found
        if len(found) < min(k, pool):  # the graph or lists came up short (a narrow filter, k near the size)
            if allowed is None:
                with self.reading() as conn:
                    allowed = np.array(db.stored_ids(conn), np.int64)
            return self._rescore(q[0], allowed.tolist())[:k]
        if plan.rerank == 0:
            with self.reading() as conn:
                live = set(db.stored_ids(conn, [i for i, _ in found]))
            return [hit for hit in found if hit[0] in live][:k]
        return self._rescore(q[0], [i for i, _ in found])[:k]

    def _rescore(self, q: np.ndarray, ids: list[int]) -> list[tuple[int, float]]:
        """(id, exact score) best first, from the stored vectors; ids no longer stored are dropped."""
        with self.reading() as conn:
            live = db.stored_ids(conn, ids)
        scores = self.segments().get(live) @ q if live else []
        return sorted(zip(live, map(float, scores)), key=lambda t: -t[1])

    def _extended(self, plan: IndexPlan, ids: np.ndarray, s: Session) -> tuple[faiss.Index, IndexPlan] | None:
        """The newest approximate index on disk, brought up to `ids` in place (policy.extend),
        when it is of the kind the policy wants now; else None and the caller rebuilds."""
        newest = self._newest_file()
        old = _read_plan(newest) if newest else None
        if newest is None or old is None or old.kind != plan.kind or plan.kind == "flat":
            return None
        index = _read_index(newest)
        if index is None:
            return None

        return (index, old) if extend(old, index, ids, self.segments().get) else None

    # -- description --------------------------------------------------------------------------
    def info(self) -> dict:
        from sqlalchemy import func, select

        from .store import File, Item, Tag

        with self.session() as s:
            counts = dict(s.execute(select(Item.kind, func.count()).group_by(Item.kind)).all())
            files = dict(s.execute(select(File.kind, func.count()).where(File.status == "ok").group_by(File.kind)).all())
            tags = dict(s.execute(select(Tag.label, func.count()).group_by(Tag.label).order_by(func.count().desc())).all())
            taken = dict(s.execute(select(File.taken_from, func.count()).where(File.status == "ok", File.kind != "text")
                                   .group_by(File.taken_from)).all())
            located = s.scalar(select(func.count()).select_from(File).where(File.lat.is_not(None))) or 0
            read = s.execute(select(func.count(Item.ocr), func.count().filter(Item.ocr.not_in(["[]"])))
                             .where(Item.kind == "image")).one()
            skipped = [
                {"path": p, "reason": e}
                for p, e in s.execute(select(File.path, File.error).where(File.status == "skipped").order_by(File.path))
            ]
        loaded = self.faiss_index()
        index = loaded.index
        sizes = {os.path.relpath(f, self.path): os.path.getsize(f) for f in glob.glob(os.path.join(self.path, "*"))
                 + glob.glob(os.path.join(self.path, VECTORS_DIR, "*")) if os.path.isfile(f)}
        return {
            "index": self.path,
            "model": self.model_spec,
            "model_identity": self.meta("model_identity"),
            "dim": int(self.meta("dim") or 0),
            "items": {k: counts.get(k, 0) for k in ITEM_KINDS},
            "files": {k: files.get(k, 0) for k in ITEM_KINDS},
            "vectors": int(index.ntotal),
            "index_type": type(faiss.downcast_index(index.index)).__name__ if hasattr(index, "index") else type(index).__name__,
            "index_plan": loaded.plan.as_dict(),
            "tags": tags,
            # photos and videos: where each capture time came from (file: modification time,
            # no capture time in the file); how many have a GPS position
            "taken_from": {k or "unread": n for k, n in taken.items()},
            "located": located,
            "ocr": {"on": self.meta("ocr") == "on", "images_read": read[0], "with_text": read[1]},
            "skipped": skipped,
            "size_bytes": sum(sizes.values()),
            "files_on_disk": sizes,
        }
