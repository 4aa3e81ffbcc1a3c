"""`mmsearch index --watch`: keep an index current while files appear, change, move or go.

watchdog reports file-system events; the ones scan would care about mark the index stale, a
`Debouncer` turns each burst of them into one update, and the update is the ordinary
mark-and-sweep run over the roots (`index_paths`), which already tells created, modified, renamed
and deleted files apart and reuses the vectors of renamed content. One `Index` serves every
update, so the model is loaded once; the writer lock is held only while an update runs.
"""
from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from ..errors import IndexBusy, UserError
from ..media.files import display_path, is_uri, location, under
from ..media.kinds import kind_of
from ..retrieval.index import Index
from .options import IndexOptions
from .run import Summary, index_paths
from .scan import _excluded

#: seconds without events that end a burst: a copied folder arrives as a stream of events
#: milliseconds apart, and one update for all of it costs one scan, not one per file
QUIET = 0.5
#: the longest a continuous stream of events (a large copy) puts off an update
MAX_DELAY = 3.0
#: seconds to wait before trying again after an update could not run (another process holds
#: the writer lock) or failed on the file system
RETRY = 3.0

#: event kinds that can change what scan finds. Not "opened" and "closed_no_write": the
#: indexer's own reading of a file raises those, and an update would trigger the next forever
CHANGES = {"created", "modified", "moved", "deleted", "closed", "attrib"}


@dataclass
class Debouncer:
    """Events in, batch boundaries out, with the clock given by the caller: a batch is due once
    events have stopped for `quiet` seconds, or `max_delay` after its first event."""

    quiet: float = QUIET
    max_delay: float = MAX_DELAY
    first: float | None = None  # when the first event of the pending batch came
    last: float | None = None

    def add(self, now: float) -> None:
        if self.first is None:
            self.first = now
        self.last = now

    def due_in(self, now: float) -> float | None:
        """Seconds until the pending batch is due (0: now); None when no event is pending."""
        if self.first is None or self.last is None:
            return None
        return max(0.0, min(self.last + self.quiet, self.first + self.max_delay) - now)

    def clear(self) -> None:
        self.first = self.last = None


@dataclass
class Watched:
    """Which paths' events matter: what scan would index, or a folder it would walk, under a
    root; never the index's own folder (its writes would trigger the next update forever)."""

    roots: list[str]
    ignore: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    hidden: bool = False

    def __call__(self, path: str, folder: bool = False) -> bool:
        root = next((r for r in self.roots if under(path, [r])), None)
        if root is None or under(path, self.ignore) or not (folder or kind_of(path)):
            return False
        at = root
        for name in os.path.relpath(path, root).split(os.sep) if path != root else []:
            at = os.path.join(at, name)
            if (name.startswith(".") and not self.hidden) or _excluded(at, name, self.exclude):
                return False
        return True


class _Handler(FileSystemEventHandler):
    def __init__(self, matters: Watched, changed: threading.Event):
        self.matters, self.changed = matters, changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        # a folder's "modified" only says that its list of files changed: their own events tell more
        if event.event_type not in CHANGES or (event.is_directory and event.event_type == "modified"):
            return
        paths = [os.fsdecode(p) for p in (event.src_path, event.dest_path) if p]
        if any(self.matters(p, event.is_directory) for p in paths):
            self.changed.set()


def local_only(roots: list[str]) -> None:
    """Watching needs the file system's events: a URI root (an object store) has none."""
    if uri := next((r for r in roots if is_uri(r)), None):
        raise UserError(f"cannot watch {location(uri)}: --watch follows local folders only (name them; "
                        "run mmsearch index again to update a URI root)")


@dataclass
class Watch:
    """Watch `paths` (none: every root indexed before) and update the index once per burst of
    changes. Use as a context manager (watching runs inside it) and iterate over the updates:
    each is the run's `Summary`, or the `UserError` it ended with (watching goes on). Runs until
    interrupted (KeyboardInterrupt); an update interrupted so keeps what it committed."""

    index: Index
    paths: list[str]
    opts: IndexOptions = field(default_factory=IndexOptions)
    debounce: Debouncer = field(default_factory=Debouncer)
    roots: list[str] = field(init=False)
    _changed: threading.Event = field(init=False, default_factory=threading.Event)
    _observer: BaseObserver | None = field(init=False, default=None)
    _sweep: bool = field(init=False, default=False)  # a watched folder vanished: sweep it with the next update

    def __post_init__(self) -> None:
        # the first run chose the model and re-embedded what --reindex asked for: updates do neither
        self.opts = self.opts.model_copy(update={"model": None, "reindex": False})
        local_only(self.paths or self.index.meta_list("roots"))
        self.paths = [os.path.abspath(os.path.expanduser(p)) for p in self.paths]
        self.roots = [r for r in self.paths or self.index.meta_list("roots") if os.path.lexists(r)]

    def __enter__(self) -> Watch:
        if not self.roots:
            raise UserError("nothing to watch: none of the indexed folders exists any more")
        own = [os.path.abspath(self.index.path), os.path.realpath(self.index.path)]
        handler = _Handler(Watched(self.roots, own, self.opts.exclude, self.opts.hidden), self._changed)
        self._observer = observer = Observer()
        observer.start()
        for root in self.roots:  # scheduled after start, so that an error names its folder
            folder = os.path.isdir(root)
            try:
                observer.schedule(handler, root if folder else os.path.dirname(root), recursive=folder)
            except OSError as e:
                self.__exit__()
                hint = " (raise the limit: sysctl fs.inotify.max_user_watches)" if e.errno == errno.ENOSPC else ""
                raise UserError(f"cannot watch {display_path(root)}: {e.strerror or e}{hint}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
            self._observer = None

    def __iter__(self) -> Iterator[Summary | UserError]:
        # load the model now, while watching, not on the first change: after a first run with
        # nothing to embed, the first update of one image took 8.6 s (lite, 2 cores), later ones
        # 0.1–0.2 s. (From its exports, when they are there: no model to load; exported.py.)
        self.index.indexer(self.opts.runtime, images=1)
        while True:
            self._settle()
            for gone in [p for p in self.paths if not os.path.lexists(p)]:
                self.paths.remove(gone)
                self._sweep = True
                yield UserError(f"{display_path(gone)} is gone: no longer watching it; its files leave the index")
            try:
                # a run naming a folder that is not there fails; one over every root indexed before
                # sweeps a vanished one, as `mmsearch index` without PATH does
                summary = index_paths(self.index, [] if self._sweep else self.paths, self.opts)
            except IndexBusy:
                yield IndexBusy(f"another process is indexing into {self.index.path}; trying again in {RETRY:.0f}s")
                self._retry()
                continue
            except UserError as e:
                yield e
                continue
            except OSError as e:  # a file-system race (a search swapping the FAISS file) must not end watching
                yield UserError(f"update failed: {e}; trying again in {RETRY:.0f}s")
                self._retry()
                continue
            self._sweep = False
            yield summary

    def _retry(self) -> None:
        time.sleep(RETRY)
        self._changed.set()  # what changed is still to be indexed

    def _settle(self) -> None:
        """Wait until a burst of changes is over (or has gone on for the maximum delay). Events
        during an update mark the index stale again: the update may have scanned past them."""
        while (wait := self.debounce.due_in(time.monotonic())) != 0:
            if self._changed.wait(wait):
                self._changed.clear()
                self.debounce.add(time.monotonic())
        self.debounce.clear()
