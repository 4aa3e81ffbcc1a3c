"""Which FAISS index to build, and how hard it must search — the whole policy in one place.

`choose_index` picks from the collection's size, dimension and a memory budget:
  * exact (flat inner product) while it is small enough to scan quickly;
  * HNSW over full vectors when they fit the budget (fast, high recall, no training);
  * IVF with product quantisation (an HNSW coarse quantiser for many lists) when only compressed
    codes fit — results are then re-ranked exactly from the stored vectors, which recovers what
    the quantisation loses (so OPQ's long training buys little here).
`tune` then raises efSearch / nprobe until recall@10 against exact search on held-out queries
reaches the target, so the search is as fast as the target allows.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import faiss
import numpy as np

EXACT_LIMIT = 50_000  # below this a flat scan answers in a few milliseconds
HNSW_LIMIT = 5_000_000  # beyond this HNSW's build time (single machine, 2 cores) is too long
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80  # FAISS's default 40 leaves a graph that cannot reach 0.95 at 1M × 512
DEFAULT_BUDGET = 8 << 30  # bytes of RAM the vectors may take; the machines here have 24 GiB
TARGET_RECALL = 0.95
MIN_VECTORS = {"flat": 0, "hnsw": 50, "ivfpq": 10_000}  # PQ codebooks need 256 × 39 training points
RERANK = {"flat": 1, "hnsw": 2, "ivfpq": 16}  # candidates fetched per hit, re-ranked exactly from stored vectors


@dataclass
class IndexPlan:
    kind: str  # flat | hnsw | ivfpq
    factory: str  # faiss.index_factory string
    reason: str
    param: str | None = None  # the search-time knob tuned for recall: efSearch or nprobe
    value: int | None = None
    recall: float | None = None  # measured at build time against exact search

    def as_dict(self) -> dict:
        return asdict(self)


def choose_index(n: int, dim: int, budget: int = DEFAULT_BUDGET, kind: str = "auto") -> IndexPlan:
    """The index for `n` vectors of `dim` floats within `budget` bytes (`kind` forces a family)."""
    full = n * (dim * 4 + HNSW_M * 2 * 4)  # vectors plus HNSW's graph links
    forced = "chosen by --index-type; " if kind != "auto" else ""
    if kind == "flat" or (kind == "auto" and n < EXACT_LIMIT):
        return IndexPlan("flat", "Flat", f"{forced}{n:,} vectors: an exact scan is fast enough")
    if kind == "hnsw" or (kind == "auto" and full <= budget and n <= HNSW_LIMIT):
        return IndexPlan("hnsw", f"HNSW{HNSW_M},Flat", f"{forced}{n:,} vectors take {full / 2**30:.2f} GiB with an HNSW graph",
                         "efSearch", 64)
    nlist = 2 ** round(math.log2(max(16, 4 * math.sqrt(n))))
    nlist = min(nlist, max(16, n // 39))  # FAISS wants ~39 training points per list
    per_vector = max(8, budget // max(n, 1) - 16)  # bytes left per vector after ids and lists
    # at least 4 dimensions per sub-quantiser: thinner ones train very slowly and add little
    m = next((m for m in (64, 48, 32, 24, 16, 8) if m <= per_vector and dim % m == 0 and dim // m >= 4), 8)
    coarse = f"IVF{nlist}_HNSW32" if nlist >= 16384 else f"IVF{nlist}"
    return IndexPlan("ivfpq", f"{coarse},PQ{m}", f"{forced}{n:,} vectors: {m}-byte PQ codes in {nlist:,} lists fit the "
                     f"{budget / 2**30:.1f} GiB budget", "nprobe", 16)


def build(plan: IndexPlan, ids: np.ndarray, vecs: np.ndarray, train_max: int = 200_000) -> faiss.Index:
    """An IndexIDMap2 over the planned index, trained on a sample and holding every vector."""
    dim = vecs.shape[1] if len(vecs) else 1
    inner = faiss.IndexFlatIP(dim) if plan.kind == "flat" else faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    if plan.kind == "hnsw":
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    if not inner.is_trained:
        sample = vecs[np.random.default_rng(0).choice(len(vecs), min(len(vecs), train_max), replace=False)]
        inner.train(sample)
    index = faiss.IndexIDMap2(inner)
    if len(ids):
        index.add_with_ids(vecs, ids)
    return index


def search_params(plan: IndexPlan, sel: faiss.IDSelector | None = None):
    if plan.param == "efSearch":
        return faiss.SearchParametersHNSW(efSearch=plan.value, sel=sel)
    if plan.param == "nprobe":
        return faiss.SearchParametersIVF(nprobe=plan.value, sel=sel)
    return None if sel is None else faiss.SearchParameters(sel=sel)


def tune(plan: IndexPlan, index: faiss.Index, vecs: np.ndarray, target: float = TARGET_RECALL,
         queries: int = 200, k: int = 10) -> IndexPlan:
    """Smallest efSearch / nprobe whose recall@k against exact search reaches `target`, measured
    on held-out queries: stored vectors searched as new ones (their own entry left out), which
    is how a query near the collection behaves."""
    if plan.param is None or len(vecs) <= k + 1:
        plan.recall = 1.0
        return plan
    rng = np.random.default_rng(1)
    rows_q = rng.choice(len(vecs), min(queries, len(vecs)), replace=False)
    q = vecs[rows_q]
    exact = faiss.IndexFlatIP(vecs.shape[1])
    exact.add(vecs)
    truth = [[t for t in row if t != self][:k] for row, self in zip(exact.search(q, k + 1)[1], rows_q)]
    id_map = faiss.vector_to_array(index.id_map)
    limit = 1024 if plan.param == "efSearch" else faiss.extract_index_ivf(index.index).nlist
    value = 8
    while True:
        plan.value = value
        found = index.search(q, (k + 1) * RERANK[plan.kind], params=search_params(plan))[1]
        # map external ids back to row numbers (build() adds rows in order)
        pos = {int(i): r for r, i in enumerate(id_map)}
        rows = [[pos.get(int(i), -1) for i in f] for f in found]
        # what Index.search_vector returns: candidates re-ranked exactly
        rows = [sorted((r for r in rr if r >= 0 and r != self), key=lambda r: -float(vecs[r] @ qq))[:k]
                for rr, qq, self in zip(rows, q, rows_q)]
        plan.recall = float(np.mean([len(set(r[:k]) & set(t)) / k for r, t in zip(rows, truth)]))
        if plan.recall >= target or value >= limit:
            return plan
        value *= 2

