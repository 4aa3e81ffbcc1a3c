"""Indexing on a Ray cluster (`mmsearch index --ray ADDRESS`): the embed stage of `run.index_paths`
on a pool of Ray actors; scanning, planning, the store and the FAISS index stay on this machine.

The driver writes the files to embed as a manifest under ``<index>/runs/<run id>/``, cut into
slices. A Ray Data actor pool (each actor loads the model once) decodes and embeds a slice with
mmsearch's own code (embed.py) and writes it as one parquet shard beside the manifest (a tmp file,
renamed: a shard is whole or absent). The driver reads each shard as it arrives and stores
several in one transaction (`Merger`, `commit_batch`) and removes the run folder when every file
is stored. Vectors travel
through the shared folder, not Ray's object store: a shard outlives the driver, so nothing
embedded is lost when the driver dies. Workers on other nodes read the media and write the
shards by the driver's absolute paths: the index and the media must be on a filesystem every
node mounts at the same path (docs/distributed.md); media under a URI root (`s3://…`) are fetched
by the nodes themselves, with the root's options (media/fetch.py).

Failures, as measured on Ray 2.60: one raising row aborts a whole Dataset (and
`max_errored_blocks` drops whole blocks), so a file that cannot be decoded is a skipped record in
its shard (`embed.decode` never raises). An actor killed mid-slice is restarted by Ray Data and
its slice run again: every file still came out once. A driver killed mid-run leaves its shards:
the next run first stores from the shards of earlier runs whatever its plan still needs (same
path, same content digest, same model), then embeds only the rest.

An IVF index (what the policy builds past 5M vectors, or `--index-type ivfsq|ivfpq`) is
built on the cluster too (`RayAdder`): the driver trains it on a sample, tasks add ranges of item
ids to copies of the trained index, the driver merges them and tunes, as a local build does.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.orm import Session

from ..errors import UserError
from ..media import fetch
from ..retrieval.encoders import CUDA
from ..retrieval.index import Index
from ..retrieval.policy import CHUNK
from ..retrieval.store import get_meta, segments
from ..retrieval.vectors import Segments
from .annotate import capture_fields, read_ocr
from .options import IndexOptions
from .plan import Plan
from .run import Batch, Summary, _export_for_queries, commit_batch
from .scan import Entry

#: most files in a slice (one actor call, one shard): ~6 s of embedding for `lite` on two cores,
#: small enough that a crash or a slow node loses little
SLICE_FILES = 256
#: most items the driver stores in one transaction, from as many arrived shards as they fill: a
#: transaction a shard (≤ 256 files) paid its WAL frames, FTS5 flush, meta rows and a capture
#: commit each time (benchmarks/scale.py --shards 256, 1M: 11.8k → 24.0k items/s). 50k rather
#: than 20k: each transaction dirtied most pages of the random content-digest index whatever its
#: size (1M, 2 cores: 27.7k, 31.0k → 33.7k, 32.9k items/s; 100k: 32.5k, the last commit and
#: first read no longer hidden; measured before a bulk run built that index after storing,
#: `run.digests_after`); ~100 MB of 512-d vectors held (peak RSS 1.03 → 1.31 GiB)
MERGE_ITEMS = 50_000
#: ...or what has arrived once this long has passed since the last commit, so that a slow
#: cluster's files still show in the index shard by shard
MERGE_SECONDS = 10.0
#: slices an actor gets at least, when there are files enough: a fast node takes more of them,
#: and none waits long at the end for the slowest one (300 files on 2 actors: slices of 38)
SLICES_PER_ACTOR = 4
#: CPUs an actor declares. Two: the model's two ONNX Runtime lanes (runtime.py) with two decode
#: threads, as a local run on two cores has them; a bigger node runs one actor per two CPUs
ACTOR_CPUS = 2
#: starts of one slice before the run gives up on it. Ray Data restarts a dead actor and retries
#: its task without end: a file that crashes its decoder every time would hang the run
ATTEMPTS = 3
RUNS = "runs"
#: most vectors one FAISS build task adds: its partial index (~1 KiB a 512-d vector with float16
#: codes) travels to the driver through Ray's object store, which spills what it cannot hold
BUILD_GROUP = 1_000_000
#: shard metadata key: the identity of the model that embedded it
IDENTITY = b"mmsearch.model_identity"
#: a shard: one row per file; its items' fields as JSON (OCR lines included), their vectors as one float32
#: blob, its capture metadata as JSON (None: the driver reads it)
SHARD = pa.schema([("key", pa.binary()), ("digest", pa.string()), ("error", pa.string()), ("width", pa.int32()),
                   ("height", pa.int32()), ("items", pa.string()), ("vectors", pa.binary()), ("capture", pa.string())])


@dataclass(frozen=True)
class Run:
    """One embedding job: what the driver hands every actor (pickled), in a folder named by a
    hash of the model and the manifest. (Resuming does not need the name to recur: the next run
    takes from any earlier run's shards the files its plan still needs.)"""

    folder: str
    model: str  # the spec that loads the index's model on a node
    identity: str  # what the index holds; a shard of any other model is refused
    slices: int
    images: int  # images and videos among the files: `--runtime auto` decides by it, as a local run does
    ocr: bool = False  # read the text in images too, on the actors (else the driver does, after)

    @property
    def manifest(self) -> str:
        return os.path.join(self.folder, "manifest.parquet")

    def shard(self, i: int) -> str:
        return os.path.join(self.folder, f"shard-{i:05d}.parquet")

    @classmethod
    def create(cls, runs: str, model: str, identity: str, todo: list[tuple[Entry, str]], slice_files: int,
               ocr: bool = False) -> Run:
        h = hashlib.blake2b(identity.encode(), digest_size=8)
        for e, digest in todo:
            h.update(e.key + b"\0" + digest.encode())
        run = cls(os.path.join(runs, h.hexdigest()), model, identity, -(-len(todo) // slice_files),
                  sum(e.kind != "text" for e, _ in todo), ocr)
        os.makedirs(run.folder, exist_ok=True)
        # keys, not paths: a path need not be UTF-8, a parquet string must be
        table = pa.table({"slice": [i // slice_files for i in range(len(todo))], "key": [e.key for e, _ in todo],
                          "digest": [d for _, d in todo], "kind": [e.kind for e, _ in todo],
                          "size": [e.size for e, _ in todo], "mtime_ns": [e.mtime_ns for e, _ in todo]})
        _write_atomic(table, run.manifest, row_group_size=slice_files)  # a row group a slice: each read alone
        return run


@dataclass(frozen=True)
class Actors:
    """The embedding actors a cluster runs: how many, and what each asks Ray for."""

    count: int
    cpus: int  # each decodes with this many threads
    gpus: int = 0  # 1: it embeds on its GPU (runtime cuda)

    @classmethod
    def plan(cls, nodes: Sequence[dict[str, float]], runtime: str = "auto") -> Actors:
        """For the live nodes' resources: one actor per GPU, with an equal share of its node's
        CPUs to decode on (the least any GPU node offers), where the cluster has GPUs and
        `runtime` may use them — a GPU embeds faster than any number of CPU actors, and decoding
        is what it waits for; else one actor per ACTOR_CPUS CPUs."""
        gpu_nodes = [n for n in nodes if n.get("GPU", 0) >= 1] if runtime in ("auto", CUDA) else []
        if gpu_nodes:
            share = min(int(n.get("CPU", 0)) // int(n["GPU"]) for n in gpu_nodes)
            return cls(sum(int(n["GPU"]) for n in gpu_nodes), max(1, share), 1)
        if runtime == CUDA:
            raise UserError("--runtime cuda on Ray needs a cluster with GPUs (ray status lists none)")
        return cls(max(1, sum(int(n.get("CPU", 0)) for n in nodes) // ACTOR_CPUS), ACTOR_CPUS)


@dataclass
class RayStage:
    """The embed stage (`run.EmbedStage`) on the Ray cluster at `address`, connected for the
    stage alone (an unchanged folder never starts Ray). Its fields after a run say what it did."""

    address: str = "local"  # local | auto | HOST:PORT (or any address `ray.init` takes)
    slice_files: int | None = None  # default: SLICES_PER_ACTOR slices an actor, at most SLICE_FILES files
    actors: int | None = None  # default: one per GPU of the cluster, else one per ACTOR_CPUS of its CPUs (`Actors.plan`)
    exit_once: str | None = None  # test hook: the first actor to create this file exits (os._exit) before writing its shard
    # -- what the last run did
    resumed: int = 0  # files stored from the shards of an earlier, interrupted run
    slices: int = 0  # slices embedded on the cluster
    embedded: int = 0  # files in them
    nodes: set[str] = field(default_factory=set)  # the nodes that embedded them
    seconds: float = 0.0  # connecting, embedding and storing

    def __post_init__(self) -> None:
        if importlib.util.find_spec("ray") is None:  # said before scanning, not after
            raise UserError("--ray needs Ray: pip install 'mmsearch[ray]'")
        if not self.address.strip():
            raise UserError("--ray needs an address: local, auto or HOST:PORT")

    def __call__(self, s: Session, index: Index, encoder: Any, plan: Plan, opts: IndexOptions, summary: Summary) -> None:
        start = time.perf_counter()
        identity, model = index.meta("model_identity"), index.model_spec
        assert identity and model, "index_paths records the model before embedding"
        wanted = {e.key: (e, digest) for e, digest in plan.embed}
        runs = os.path.join(index.path, RUNS)
        self.resumed = _resume(s, plan, summary, runs, identity, wanted)
        todo = [job for job in plan.embed if job[0].key in wanted]
        self.slices, self.embedded, self.nodes = 0, 0, set()
        if todo:
            with connected(self.address):
                import ray

                actors = Actors.plan([n["Resources"] for n in ray.nodes() if n.get("Alive")], opts.runtime)
                if self.actors:
                    actors = replace(actors, count=self.actors)
                if actors.gpus:  # named, not left to auto: a small job would embed from cached CPU exports beside its GPU
                    opts = opts.model_copy(update={"runtime": CUDA})
                size = self.slice_files or min(SLICE_FILES, -(-len(todo) // (SLICES_PER_ACTOR * actors.count)))
                # OCR (~0.4 s an image) is read where the images are decoded anyway; what a shard
                # lacks (an earlier run's without it) the driver reads after, as a local run does
                ocr = opts.ocr if opts.ocr is not None else get_meta(s, "ocr") == "on"
                run = Run.create(runs, model, identity, todo, size, ocr)
                runtimes = self._embed(s, run, actors, plan, opts, summary, wanted)
            if wanted:  # every slice came back, yet some file is in none: keep the shards for the next run
                raise UserError(f"{len(wanted)} file(s) came back from the Ray cluster in no shard; run again to embed them")
            shutil.rmtree(run.folder, ignore_errors=True)
            summary.runtime = f"{'/'.join(sorted(runtimes))} on Ray, {len(self.nodes)} node(s)"
        with suppress(OSError):  # no empty runs/ left behind (also when earlier shards held everything)
            os.rmdir(runs)
        if encoder is not None:  # loaded here anyway (a new index): leave its query export, as a local run does
            summary.query_export = _export_for_queries(encoder)
        self.seconds = time.perf_counter() - start

    def _embed(self, s: Session, run: Run, actors: Actors, plan: Plan, opts: IndexOptions, summary: Summary,
               wanted: dict[bytes, tuple[Entry, str]]) -> set[str]:
        """Embed `run`'s slices on `actors` actors, storing each shard as it comes; the runtimes used."""
        import ray.data
        from tqdm import tqdm

        ray.data.DataContext.get_current().enable_progress_bars = False
        # one block a slice, one slice in flight an actor: a slice is a large unit of work, and
        # queueing several on one actor left another idle at the end
        slices = ray.data.from_items([{"slice": i} for i in range(run.slices)], override_num_blocks=run.slices)
        ds = slices.map_batches(
            _SliceEmbedder, batch_size=1, fn_constructor_kwargs={"run": run, "opts": opts, "exit_once": self.exit_once,
                                                                 "roots": fetch.remembered(), "workers": actors.cpus},
            compute=ray.data.ActorPoolStrategy(size=min(actors.count, run.slices), max_tasks_in_flight_per_actor=1),
            num_cpus=actors.cpus, num_gpus=actors.gpus or None)
        runtimes: set[str] = set()
        bar = tqdm(total=len(wanted), desc="embedding on Ray", unit="file", disable=not opts.progress)
        rows = ds.iter_rows()
        try:
            with Merger(s, plan, summary, run.identity, wanted, refuse=True) as merger:
                for row in rows:
                    if row["failed"]:  # (what was read but not committed is stored from its shard by the next run)
                        raise UserError(f"{row['failed']} (what the cluster finished is kept for the next run)")
                    n = merger.add(row["shard"])
                    self.slices, self.embedded = self.slices + 1, self.embedded + n
                    self.nodes.add(row["node"])
                    runtimes.add(row["runtime"])
                    bar.update(n)
                merger.flush()
        finally:
            getattr(rows, "close", lambda: None)()  # ends the Dataset, and its actors, also on an error
            bar.close()
        return runtimes


class _SliceEmbedder:
    """A Ray Data actor: loads the model once, then turns each slice it is given into a shard."""

    def __init__(self, run: Run, opts: IndexOptions, exit_once: str | None = None, roots: list[str] | None = None,
                 workers: int = ACTOR_CPUS):
        import ray

        from ..retrieval.encoders import load_indexer
        from ..retrieval.encoders.exported import image_forward

        self.run, self.opts, self.exit_once, self.workers = run, opts, exit_once, workers
        fetch.remember(roots or [])  # the driver's URI roots: objects are fetched with their options
        self.encoder = load_indexer(run.model, opts.runtime, run.images)
        self.encode_pixels, self.runtime = image_forward(self.encoder, opts.runtime, run.images)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        slices = [int(i) for i in batch["slice"]]
        done = [self.embed(i) for i in slices]
        return {"slice": slices, "shard": [d[0] for d in done], "failed": [d[1] for d in done],
                "node": [self.node] * len(slices), "runtime": [self.runtime] * len(slices)}

    def embed(self, i: int) -> tuple[str, str | None]:
        """Slice `i` as a shard (embedded once: a retried slice whose shard exists is not redone),
        or why it was given up: told as a result, since an exception would be wrapped by Ray."""
        from .embed import embedded

        shard = self.run.shard(i)
        if os.path.exists(shard):
            return shard, None
        with open(shard + ".attempts", "ab") as f:  # one byte a start, in the shared folder: seen by every node
            f.write(b".")
            if f.tell() > ATTEMPTS:
                return shard, (f"slice {i} ended its Ray worker {ATTEMPTS} times: a file in it may crash a decoder "
                               f"(they are listed in {self.run.manifest})")
        m = pq.read_table(self.run.manifest, filters=[("slice", "=", i)]).to_pylist()
        todo = [(Entry(os.fsdecode(r["key"]), r["kind"], r["size"], r["mtime_ns"]), r["digest"]) for r in m]
        files: list[tuple[Any, list[dict]]] = []
        # decode threads: one per CPU the actor holds (the driver's --workers counts the driver's cores)
        for done in embedded(todo, self.encoder, self.opts, batch_size=self.opts.batch_size, workers=self.workers,
                             progress=False, encode_pixels=self.encode_pixels, processes=self.opts.processes):
            for d in done:
                files.append((d, d.items() if not d.error else []))
                d.units = []  # its pixels: kept, a slice held every decoded image (256 files of lite: ~52 MB)
            if self.exit_once and _claim(self.exit_once):
                os._exit(1)
        if self.run.ocr:
            self.read_text(files)
        with ThreadPoolExecutor(ACTOR_CPUS) as pool:  # capture metadata: headers, read where the files are
            captures = list(pool.map(lambda d: None if d.error else json.dumps(  # (an object's: read while fetched)
                d.capture or capture_fields(d.entry.path, d.entry.kind, d.entry.mtime_ns)), [d for d, _ in files]))
        rows = [{"key": d.entry.key, "digest": d.digest, "error": d.error,
                 "width": d.size[0] if d.size else None, "height": d.size[1] if d.size else None,
                 "items": json.dumps([{k: v for k, v in it.items() if k != "vector"} for it in items]),
                 "vectors": b"".join(np.asarray(it["vector"], np.float32).tobytes() for it in items), "capture": capture}
                for (d, items), capture in zip(files, captures)]
        meta = {IDENTITY: self.encoder.identity, "mmsearch.dim": str(self.encoder.dim), "mmsearch.node": self.node}
        _write_atomic(pa.Table.from_pylist(rows, schema=SHARD.with_metadata(meta)), shard)
        return shard, None


    def read_text(self, files: list[tuple[Any, list[dict]]]) -> None:
        """Set the OCR lines of each image item of `files`, as the driver's `annotate.ocr` would."""
        images = [(d.entry.path, it) for d, items in files for it in items if it["kind"] == "image"]
        with ThreadPoolExecutor(ACTOR_CPUS) as pool:  # as annotate.ocr: one decodes while the other reads
            for (_, it), lines in zip(images, pool.map(lambda job: read_ocr(job[0], self.opts.max_pixels), images)):
                if lines is not None:  # (an object not fetched: the driver's OCR pass tries it again)
                    it["ocr"] = json.dumps(lines, ensure_ascii=False)


@dataclass
class RayAdder:
    """Adds the vectors of `index`'s IVF build on the Ray cluster at `address` (`Index.adder`,
    policy.build's `add`; `index --ray` sets it, so the build at the end of the run goes there).
    The driver has trained the index on a sample; each task adds a contiguous range of item ids,
    in id order, to a copy of it, reading their vectors from the index's segment files on the
    shared filesystem (the driver ships only the trained index and the ids); the driver merges
    the copies in id order. `merge_from` appends each list's entries, so the lists hold what one
    add in id order leaves: the same ids, codes and order, hence the same search results and
    the same tuning. The driver then tunes and writes the file aside and renames it, as a local
    build does: a killed driver leaves the previous file, and the parts die with its tasks."""

    address: str
    index: Index
    group: int | None = None  # ids a task adds; default: SLICES_PER_ACTOR tasks a slot, at most BUILD_GROUP
    # -- what the last build did
    tasks: int = 0
    nodes: set[str] = field(default_factory=set)
    task_rss: int = 0  # the largest peak RSS of a task's worker process, bytes
    seconds: float = 0.0  # connecting, adding on the cluster and merging here
    merging: float = 0.0  # of which merging here, the one serial step (1M × 512 float16 codes, ~1 GB of parts: 1.4-1.5 s)

    def __call__(self, trained: Any, ids: np.ndarray, dtype: np.dtype) -> None:
        import faiss

        start = time.perf_counter()
        with self.index.session() as s:
            store = segments(s)
        where = (store.folder, store.dim, store.base)
        with connected(self.address):
            import ray

            slots = max(1, int(ray.cluster_resources().get("CPU", 0)) // ACTOR_CPUS)
            size = max(1, self.group or min(BUILD_GROUP, -(-len(ids) // (SLICES_PER_ACTOR * slots))))
            task = ray.remote(num_cpus=ACTOR_CPUS)(_add_range)
            copy = ray.put(faiss.serialize_index(trained))
            ranges = [ids[i : i + size] for i in range(0, len(ids), size)]
            # a bounded number ahead of the merge: finished parts (~1 GB per 1M float16 codes) wait in
            # the object stores until merged in id order, and one slow first task would hold them all
            ahead = iter(ranges[2 * slots :])
            parts = deque(task.remote(copy, where, r, dtype == np.float16) for r in ranges[: 2 * slots])
            self.tasks, self.nodes, self.task_rss, self.merging = len(ranges), set(), 0, 0.0
            while parts:  # in id order; each part let go once merged, so the object store can free it
                if (more := next(ahead, None)) is not None:
                    parts.append(task.remote(copy, where, more, dtype == np.float16))
                try:
                    data, node, rss = ray.get(parts.popleft())
                except ray.exceptions.RayError as e:
                    raise UserError(f"building the FAISS index on the Ray cluster failed: {_first_line(e)}") from None
                t = time.perf_counter()
                trained.merge_from(faiss.deserialize_index(data), 0)
                self.merging += time.perf_counter() - t
                self.nodes.add(node)
                self.task_rss = max(self.task_rss, rss)
        self.seconds = time.perf_counter() - start


def _add_range(trained: np.ndarray, where: tuple[str, int, int], ids: np.ndarray, half: bool) -> tuple[np.ndarray, str, int]:
    """A Ray task: the serialized trained index `trained` holding the vectors of `ids`, read from
    the segments at `where` (rounded through float16 where the driver's build reads them so), with
    this node's id and the worker's peak RSS."""
    import resource

    import faiss
    import ray

    faiss.omp_set_num_threads(ACTOR_CPUS)
    index = faiss.deserialize_index(trained)
    for part, rows in Segments(*where).chunks(ids, CHUNK):
        index.add_with_ids(rows.astype(np.float16).astype(np.float32) if half else rows, part)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return faiss.serialize_index(index), ray.get_runtime_context().get_node_id(), rss


class Merger:
    """Stores the files of arrived shards that are still `wanted` (same path and content digest),
    several shards a transaction: `add` reads a shard and takes its files off `wanted`; they are
    committed once MERGE_ITEMS wait or MERGE_SECONDS have passed since the last commit, and by
    `flush`. Shards stay on disk until the run ends, so what a killed driver had read but not
    committed is stored from them by the next run. A shard of another model than `identity` is
    refused (`refuse`: one of this run's nodes has other weights) or left unused (an earlier
    run's, before a --reindex with another model)."""

    def __init__(self, s: Session, plan: Plan, summary: Summary, identity: str,
                 wanted: dict[bytes, tuple[Entry, str]], refuse: bool):
        self.s, self.plan, self.summary, self.identity, self.wanted, self.refuse = s, plan, summary, identity, wanted, refuse
        self.batch = Batch(captures=[])  # (a file's capture None: the driver reads it after)
        self.items, self.last = 0, time.monotonic()
        # commits run in a thread of their own while the next shards are read (below, `_commit`)
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="mmsearch-merge")
        self.committing: Future | None = None

    def __enter__(self) -> Merger:
        return self

    def __exit__(self, error: type[BaseException] | None, *_: Any) -> None:
        """Waits for a commit under way: the session is the caller's again only after it."""
        try:
            self._wait()
        except BaseException:
            if error is None:  # (else the error already raised is the one to tell)
                raise
        finally:
            self.writer.shutdown()

    def add(self, shard: str) -> int:
        """Read `shard` (committing what waits when it is due); how many of its files were wanted."""
        n = self._read(shard)
        if self.items >= MERGE_ITEMS or time.monotonic() - self.last >= MERGE_SECONDS:
            self._commit()
        return n

    def flush(self) -> None:
        """Commit what waits, and wait for it."""
        self._commit()
        self._wait()

    def _commit(self) -> None:
        """Hand what waits to the writer thread, once the commit before it is done. Reading the
        next shards (parquet, JSON, mostly the GIL's) goes on meanwhile beside SQLite's work (its
        own, without the GIL). The session is the writer's until `_wait`: nothing else here uses
        it, and `wanted` is this thread's alone."""
        self._wait()
        if self.batch.entries or self.batch.skipped:
            self.committing = self.writer.submit(commit_batch, self.s, self.plan, self.summary, self.batch)
        self.batch, self.items, self.last = Batch(captures=[]), 0, time.monotonic()

    def _wait(self) -> None:
        """Wait for the commit under way; its error, if it failed, is raised here."""
        if self.committing is not None:
            committing, self.committing = self.committing, None
            committing.result()

    def _read(self, shard: str) -> int:
        try:
            # (one file, read whole: `pq.read_table` sets up a dataset and a thread pool, 1.04 vs
            # 0.43 ms a 256-file shard; the driver's read of 300k items 3.75 → 2.76 s)
            table = pq.ParquetFile(shard, pre_buffer=False).read(use_threads=False)
        except (OSError, pa.ArrowException):
            if self.refuse:
                raise
            return 0  # an earlier run's shard is only a cache
        theirs = (table.schema.metadata or {}).get(IDENTITY, b"").decode()
        if theirs != self.identity:
            if self.refuse:
                raise UserError(f"a Ray node embedded with model {theirs or '(unknown)'} but the index holds "
                                f"{self.identity}: install the same mmsearch and model on every node")
            return 0
        dim = int((table.schema.metadata or {}).get(b"mmsearch.dim", b"0"))
        # column by column, not a dict a row; (a shard of an earlier version has no capture column)
        names = [c for c in SHARD.names if c != "vectors"]
        columns = [table.column(c).to_pylist() if c in table.column_names else [None] * len(table) for c in names]
        vectors, starts = _vectors(table.column("vectors"), dim)
        try:  # decoded and checked before anything is taken: a bad shard leaves the batch as it was
            columns[-1] = _decoded(columns[-1])  # (each capture JSON, in one call)
            fields_of = [None if error else _fields(items) for error, items in zip(columns[2], columns[5])]
            for r, fields in enumerate(fields_of):
                if fields is not None and len(fields) != starts[r + 1] - starts[r]:
                    raise ValueError(f"{shard}: {len(fields)} item(s) of {columns[0][r]!r} but "
                                     f"{starts[r + 1] - starts[r]} vector(s)")
        except ValueError:
            if self.refuse:
                raise
            return 0
        b, taken, rows = self.batch, 0, []
        for r, (key, digest, error, width, height, items, capture) in enumerate(zip(*columns)):
            job = self.wanted.get(key)
            # stored already (a slice delivered twice), or changed since; an object under a URI root is
            # planned without a digest (hashed where fetched): taken from this run's shards alone
            # (`refuse`), as an earlier run's may hold an older version of it
            if job is None or (job[1] != digest if job[1] else not self.refuse):
                continue
            del self.wanted[key]
            taken += 1
            if error:
                b.skipped.append((job[0], error))
                self.items += 1
                continue
            fields = fields_of[r]
            assert fields is not None
            b.add(job[0], digest, (width, height) if width is not None else None, fields, capture)
            rows.append(r)
            self.items += max(1, len(fields))  # (a text file without passages is a row too)
            if '"ocr"' in items:
                self.summary.ocr_images += sum(f.get("ocr") is not None for f in fields)
        # the vectors of the rows taken, in their order (all of them, mostly)
        b.vectors.append(vectors if len(rows) == len(starts) - 1 else
                         vectors[np.concatenate([np.arange(starts[r], starts[r + 1]) for r in rows] or [np.arange(0)])])
        return taken


def _vectors(column: pa.ChunkedArray, dim: int) -> tuple[np.ndarray, list[int]]:
    """A shard's vectors column as one (n, dim) array over its buffer, and where each row's
    vectors start in it (row r: starts[r] to starts[r + 1]): no bytes object and array a row."""
    blobs = column.combine_chunks()
    _, ends, data = blobs.buffers()
    offsets = np.frombuffer(ends, np.int32)[blobs.offset : blobs.offset + len(blobs) + 1]
    data = np.frombuffer(data or b"", np.uint8)[offsets[0] : offsets[-1]]
    return data.view(np.float32).reshape(-1, dim), ((offsets - offsets[0]) // (4 * dim)).tolist()


def _decoded(texts: Sequence[str | None]) -> list[Any]:
    """Each JSON text decoded (None and empty: None), in one call: one a row cost ~2 µs more each."""
    given = [t for t in texts if t]
    found = iter(json.loads(f"[{','.join(given)}]"))
    return [next(found) if t else None for t in texts]


def _fields(items: str) -> list[dict]:
    """A shard row's item fields: short ones cached, as most files' are alike (an image:
    `[{"kind": "image"}]`; shared by their items, never changed); long ones (a text file's
    passages, OCR lines: 256 of ~1 MB each held 737 MiB) not."""
    return _alike(items) if len(items) < 256 else json.loads(items)


@functools.lru_cache(maxsize=256)
def _alike(items: str) -> list[dict]:
    return json.loads(items)


def _resume(s: Session, plan: Plan, summary: Summary, runs: str, identity: str,
            wanted: dict[bytes, tuple[Entry, str]]) -> int:
    """Store what the plan still needs from the shards of earlier runs (a driver that died while
    embedding or storing), then remove them: the writer lock is ours, so no run is using them."""
    folders = sorted(Path(runs).glob("*")) if os.path.isdir(runs) else []
    with Merger(s, plan, summary, identity, wanted, refuse=False) as merger:
        resumed = sum(merger.add(str(shard)) for folder in folders for shard in sorted(folder.glob("shard-*.parquet")))
        merger.flush()
    for folder in folders:  # only once everything taken from them is committed
        shutil.rmtree(folder, ignore_errors=True)
    return resumed


@contextmanager
def connected(address: str) -> Iterator[None]:
    """Connected to a Ray cluster for the duration: `local` starts one on this machine and stops
    it after; `auto` finds the one running here; HOST:PORT names its head. A process already
    connected (a notebook, a test) keeps its own connection, which is left open."""
    import ray

    if address != "local":
        _reachable(address)
    if ray.is_initialized():
        yield
        return
    quiet: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "error"}
    try:
        if address == "local":  # a new cluster, even where RAY_ADDRESS or `ray start` names another
            # at least 4 logical CPUs even on 2 cores: room for two actors, and a resumed run of an
            # earlier design (Ray Data reading the shards back) deadlocked with 2
            ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), **quiet)
        else:
            ray.init(address=address, **quiet)
    except ValueError:
        raise UserError(f"--ray {address}: not a Ray address (local, auto or HOST:PORT)") from None
    except (ConnectionError, RuntimeError, SystemExit) as e:  # (SystemExit: after 200 s of retries)
        raise UserError(f"cannot connect to the Ray cluster at {address} ({_first_line(e)}): is it running, and do "
                        "RAY_AUTH_MODE and RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN) match the cluster's?") from None
    try:
        yield
    finally:
        ray.shutdown()


def _reachable(address: str) -> None:
    """Fail at once when HOST:PORT refuses connections: Ray itself retries for 200 s, then exits."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # auto, or a ray:// address: left to Ray
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise UserError(f"cannot reach a Ray cluster at {address}: {e.strerror or e}") from None


def _write_atomic(table: Any, path: str, **kw: Any) -> None:
    """Write a parquet file aside, then rename it into place: readers see it whole or not at all."""
    tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"
    pq.write_table(table, tmp, **kw)
    os.replace(tmp, path)


def _claim(path: str) -> bool:
    """Whether this process is the first to create `path`."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

