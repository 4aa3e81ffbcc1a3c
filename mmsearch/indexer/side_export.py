"""The query export of a first run, made in a child process while the parent embeds.

A first index run with a new model on PyTorch also writes the model's query export (searches
without PyTorch: runtime.export_for_queries). Made beside the embedding, not after it; in a
child forked with the model loaded, not in a thread: tracing holds the GIL for a second or
more at a time, which stalled the embedding's Python between operators (ViT-B-32-256, 300
images on 2 cores, a thread: the embedding ran at 36 images/s beside it instead of ~100).
Fork shares the loaded model copy-on-write: no second import or load (~4 s here).
"""
from __future__ import annotations

import gc
import os
import sys
import threading
from typing import Any

from tqdm import tqdm

# the indexer's progress bars without tqdm's monitor thread (it only nudges a bar that stalls):
# `SideExport.start` forks only where no other Python thread runs
tqdm.monitor_interval = 0
#: seconds a query-export child may use no CPU time before it is taken as deadlocked
STALLED = 30.0


class SideExport:
    """`export_for_queries(encoder)` running in a forked child; `result` waits for it."""

    @classmethod
    def start(cls, encoder: Any) -> SideExport | None:
        """Started, or None where a fork is not safe here: on other systems than Linux (macOS's
        frameworks are not fork-safe, Windows has none), and beside other Python threads (a
        program using the API): a lock one of them held would stay locked in the child. The
        caller then exports after embedding."""
        return cls(encoder) if sys.platform == "linux" and threading.active_count() == 1 else None

    def __init__(self, encoder: Any):
        import multiprocessing

        self.process = multiprocessing.get_context("fork").Process(target=_child, args=(encoder,), name="query-export")
        # the parent's objects are never collected in the child: one owning a thread pool (an ONNX
        # Runtime session in a cycle) blocked the child's garbage collection for good, its
        # destructor waiting on a condition variable of threads the fork did not copy
        gc.freeze()
        try:
            self.process.start()
        finally:
            gc.unfreeze()

    def result(self) -> bool:
        """Whether the export is in place (False: failed or rejected; queries then load PyTorch).
        A child whose CPU time stands still for `STALLED` seconds is taken as deadlocked, killed,
        and the run goes on without it: a fork copies no other thread, and a lock one held stays
        locked (the cause found, a garbage collection, is prevented above; an unknown one must
        not hang `mmsearch index` for good). An export works throughout: tracing, optimising
        and writing all take CPU time."""
        last, still = -1, 0.0
        while self.process.exitcode is None:
            self.process.join(1.0)
            spent = _cpu_ticks(self.process.pid or 0)  # (started: it has a pid)
            still = still + 1.0 if spent == last else 0.0
            last = spent
            if still >= STALLED:
                self.cancel()
        return self.process.exitcode == 0

    def cancel(self) -> None:
        """End the child at once (a failed or interrupted run): what it wrote is unsealed, and
        its half-written files are swept by the next export (runtime._sweep)."""
        if self.process.exitcode is None:
            self.process.kill()
        self.process.join()


def _cpu_ticks(pid: int) -> int:
    """CPU time (user + system, in clock ticks) process `pid` has used; -1 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()  # (after the command name, which may hold spaces)
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return -1


def _child(encoder: Any) -> None:
    import ctypes
    import signal

    import torch

    from ..retrieval.encoders.runtime import export_for_queries

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the parent's to handle: it kills this one
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: it ends with the parent, however that ends
    torch.set_num_threads(1)  # OpenMP's threads did not survive the fork; with one, none is needed
    try:
        ok = export_for_queries(encoder)
    except Exception:  # an exporter failure costs the next query its speed, never the run
        ok = False
    os._exit(0 if ok else 1)  # (no teardown: the parent's connections and files are the parent's)
