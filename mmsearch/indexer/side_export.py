"""The query export of a first run, made in a child process while the parent works.

A first index run with a new model also writes the model's query export (searches without
PyTorch: runtime.export_for_queries). Made beside other work, not after it: the image tower's
ONNX export where the runtimes are measured, else a PyTorch embedding (run._embed_here); in a
child forked with the model loaded, not in a thread: tracing holds the GIL for a second or
more at a time, which stalled the embedding's Python between operators (ViT-B-32-256, 300
images on 2 cores, a thread: the embedding ran at 36 images/s beside it instead of ~100).
Fork shares the loaded model copy-on-write: no second import or load (~4 s here).
"""
from __future__ import annotations

import gc
import os
import signal
import sys
import tempfile
import threading
from typing import Any

from tqdm import tqdm

# the indexer's progress bars without tqdm's monitor thread (it only nudges a bar that stalls):
# `SideExport.start` forks only where no other Python thread runs
tqdm.monitor_interval = 0
#: seconds a query-export child may use no CPU time before it is taken as deadlocked
STALLED = 30.0


class SideExport:
    """`run._export_for_queries(encoder)` in a forked child; `result` waits for its answer."""

    @classmethod
    def start(cls, encoder: Any, after_tower: bool = False) -> SideExport | None:
        """Started, or None where a fork is not safe or not possible here: on other systems than
        Linux (macOS's frameworks are not fork-safe, Windows has none), beside other Python
        threads (a program using the API: a lock one of them held would stay locked in the
        child), in a daemonic process (a multiprocessing pool's worker may have no children), or
        when the fork fails (no memory, a process limit). The caller then exports after embedding.
        With `after_tower`, the child makes the text tower, then waits for `tower_ready` before
        the image tower: the parent is tracing it, and hands the child the graph it traced."""
        import multiprocessing

        if sys.platform != "linux" or threading.active_count() > 1 or multiprocessing.current_process().daemon:
            return None
        try:
            return cls(encoder, after_tower)
        except Exception:
            return None

    def __init__(self, encoder: Any, after_tower: bool = False):
        import multiprocessing

        self.ok: bool | None = None  # (the answer, once `result` has it)
        fork = multiprocessing.get_context("fork")
        # the image tower is traced when the parent closes its end of this pipe: the child reads
        # an end of file, then the traced graph from a file both share, unnamed (0.25 MB for
        # ViT-B-32; a pipe holds 64 KB: a write would wait for the child). (A multiprocessing
        # Event's set() waited for good on a child that had died waiting on it: killed, or a
        # SIGTERM to the process group.)
        tower = (*os.pipe(), tempfile.TemporaryFile()) if after_tower else None
        self.tower = tower[1:] if tower else None
        # the answer comes through a pipe, not the exit code: a program that ignores SIGCHLD (or
        # reaps its children itself) leaves no exit code to read, and waiting for one never ended
        self.answer, told = fork.Pipe(duplex=False)
        self.process = fork.Process(target=_child, args=(encoder, told, os.getpid(), tower), name="query-export")
        # the parent's objects are never collected in the child: one owning a thread pool (an ONNX
        # Runtime session in a cycle) blocked the child's garbage collection for good, its
        # destructor waiting on a condition variable of threads the fork did not copy. (Objects
        # the program froze itself stay frozen.) A Ctrl-C is the parent's to handle: the child is
        # born ignoring it, and the parent kills it
        frozen = gc.get_freeze_count()
        gc.freeze()
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.process.start()
        finally:
            signal.signal(signal.SIGINT, interrupt)
            if not frozen:
                gc.unfreeze()
            told.close()
            if tower:
                os.close(tower[0])  # (the child's end)

    def result(self) -> bool:
        """Whether the export is in place (False: failed or rejected; queries then load PyTorch);
        waited for once, then known.
        A child whose CPU time stands still for `STALLED` seconds is taken as deadlocked, killed,
        and the run goes on without it: a fork copies no other thread, and a lock one held stays
        locked (the cause found, a garbage collection, is prevented above; an unknown one must
        not hang `mmsearch index` for good). An export works throughout: tracing, optimising
        and writing all take CPU time."""
        from multiprocessing.connection import wait

        if self.ok is not None:
            return self.ok
        self.tower_ready()  # (never waiting for a child that waits for us)
        last, still = -1, 0.0
        while not wait([self.answer, self.process.sentinel], 1.0):
            spent = _cpu_ticks(self.process.pid or 0)  # (started: it has a pid)
            still = still + 1.0 if spent == last else 0.0
            last = spent
            if still >= STALLED:
                self.cancel()
                self.ok = False
                return False
        try:
            self.ok = bool(self.answer.recv()) if self.answer.poll() else False
        except (EOFError, OSError):  # ended without a word: killed, or died
            self.ok = False
        self.cancel()  # (reaped: it has told, or ended)
        return self.ok

    def tower_ready(self, graph: bytes | None = None) -> None:
        """The image tower is traced (`graph`, its ONNX graph without weights), or will not be (None:
        the child then traces its own)."""
        if self.tower is not None:
            end, shared = self.tower
            self.tower, graph, written = None, graph or b"", 0
            try:
                while written < len(graph):
                    written += os.pwrite(shared.fileno(), graph[written:], written)
            except OSError:  # (a full temporary folder: the child finds nothing and traces its own)
                os.ftruncate(shared.fileno(), 0)
            finally:
                os.close(end)
                shared.close()  # (the child's copy stays open)

    def cancel(self) -> None:
        """End the child at once (a failed or interrupted run): what it wrote is unsealed, and
        its half-written files are swept by the next export (runtime._sweep)."""
        self.tower_ready()  # (our end of the pipe closed)
        if self.process.exitcode is None:
            self.process.kill()  # (a child already gone, and not reaped by us: nothing to kill)
        self.process.join()
        self.answer.close()


def _cpu_ticks(pid: int) -> int:
    """CPU time (user + system, in clock ticks) process `pid` has used; -1 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()  # (after the command name, which may hold spaces)
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return -1


def _child(encoder: Any, told: Any, parent: int, tower: tuple[int, int, Any] | None) -> None:
    import ctypes

    import torch

    from .run import _export_for_queries

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: it ends with the parent, however that ends
    if os.getppid() != parent:  # (the parent ended before that was set)
        os._exit(1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # (not the program's own handler)
    torch.set_num_threads(1)  # OpenMP's threads did not survive the fork; with one, none is needed
    traced = None
    if tower is not None:
        end, parents, shared = tower
        os.close(parents)  # (its copy of the parent's end: the end of file comes once the parent closes its own)

        def traced() -> bytes | None:
            os.read(end, 1)
            return os.pread(shared.fileno(), os.fstat(shared.fileno()).st_size, 0) or None
    ok = _export_for_queries(encoder, traced)  # (an exporter failure costs the next query its speed, never the run)
    told.send(ok)
    os._exit(0)  # (no teardown: the parent's connections and files are the parent's)
