"""Which FAISS index to build, and how hard it must search — the whole policy in one place.

`choose_index` picks from the collection's size, dimension and a memory budget:
  * exact (flat inner product) while it is small enough to scan quickly;
  * HNSW over full vectors when they and the graph fit the budget (fast, high recall, no training);
  * IVF with 16-bit (float16) scalar codes, half the floats, when those fit: they rank as the
    floats do, so a search reads nothing but the FAISS file;
  * IVF with 8-bit scalar codes (a quarter of the floats) when those fit: on 512-d embeddings
    they rank almost exactly (recall@10 ≥ 0.99 after re-ranking in benchmarks/ann.py), train in
    seconds and scan fast — PQ64 codes lost 5–15 points of recall there and trained 7× slower;
  * IVF with product quantisation when only short codes fit the budget.
The coarse quantiser becomes an HNSW graph (searched with a wide beam) only past 16k lists.
Approximate results are re-ranked exactly from the stored vectors (`RERANK` candidates per hit),
unless the index's own scores reach the target recall: `tune` measures that for scalar codes
(`IndexPlan.rerank` 0), and then raises efSearch / nprobe until recall@10 against exact search
on held-out queries reaches the target, so the search is as fast as the target allows.

Why the re-rank is avoided where it can be (benchmarks/scale.py, 10M × 512, 2 cores, 24 GiB):
IVF4096,SQ8 re-ranking 80 candidates a query from the float32 segments gave recall@10 1.000 but
p50 77 ms, p99 354 ms — 20 GB of segments and a 5 GB FAISS file do not stay in a 24 GiB page
cache, so each candidate is a disk read. The FAISS scan itself is a few milliseconds. On the
same clustered vectors at the same density (2.5M items in 1,024 lists of ~2,440), ranking by the
8-bit codes alone reached only recall@10 0.924 whatever nprobe (the codes, not the probing, are
the limit), float16 codes 0.999 (1M items) at the same scan speed (1.6 ms at nprobe 16): float16
codes in RAM cost 1 KiB per vector, 8-bit codes plus the cached floats a re-rank needs 2.5 KiB.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Literal, get_args

import faiss
import numpy as np

EXACT_LIMIT = 50_000  # below this a flat scan answers in a few milliseconds
HNSW_LIMIT = 5_000_000  # beyond this HNSW's build time (single machine, 2 cores) is too long
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80  # FAISS's default 40 leaves a graph that cannot reach 0.95 at 1M × 512
# bytes of RAM the index may take: half of a modest 24 GiB machine. (A third, 8 GiB, chose 8-bit
# codes at 10M × 512, whose re-rank then needed the 20 GB of float32 segments cached as well.)
DEFAULT_BUDGET = 12 << 30
TARGET_RECALL = 0.95
IndexType = Literal["flat", "hnsw", "ivfsq", "ivfpq"]
INDEX_TYPES: tuple[str, ...] = get_args(IndexType)
MIN_VECTORS = {"flat": 0, "hnsw": 50, "ivfsq": 1_000, "ivfpq": 10_000}  # enough to train lists / PQ codebooks
# candidates fetched per hit, re-ranked exactly: at 10M × 512 neighbours sit closer together than
# 8-bit codes can tell apart (recall@10 0.87 with every list probed and 2 × k candidates)
RERANK = {"flat": 1, "hnsw": 2, "ivfsq": 8, "ivfpq": 16}
# candidates per hit when the index's own scores stand: a reader's index may still hold items
# deleted since it was built (they are dropped after the search), so a few spare
CODES_FETCH = 2
# a doubling of nprobe that gains less recall@10 than this: the codes, not the probing, are the limit
STALL = 0.005
# efSearch of an HNSW coarse quantiser. FAISS's default (16) assigns vectors to the wrong lists
# when adding: at 10M × 512 recall@10 stalled at 0.86–0.95 whatever nprobe
QUANTIZER_EF = 128
GROWTH = 2.0  # an approximate index is extended in place until the collection doubles or halves
CHUNK = 250_000  # vectors converted to float32 and added at a time (inputs may be float16 memory maps)
#: adds the vectors of `ids` (in that order) to a trained IVF index elsewhere — a Ray cluster's
#: tasks (indexer/distributed.py) — from the store's vectors as `dtype` holds them (float16: as the
#: float16 scratch file of a large build rounds them); called as (index, ids, dtype)
Adder = Callable[[faiss.Index, np.ndarray, np.dtype], None]


@dataclass
class IndexPlan:
    kind: str  # one of INDEX_TYPES
    factory: str  # faiss.index_factory string
    reason: str
    param: str | None = None  # the search-time knob tuned for recall: efSearch or nprobe
    value: int | None = None
    recall: float | None = None  # measured at build time against exact search
    trained_on: int | None = None  # vectors when built; extending stays within GROWTH of it
    # candidates per hit re-ranked exactly from the stored vectors; 0: the index's own scores
    # stand; None (plans written before this field): RERANK[kind]
    rerank: int | None = None

    def candidates(self) -> int:
        """Candidates fetched per hit: RERANK-style re-rank, or CODES_FETCH when codes stand."""
        per = RERANK[self.kind] if self.rerank is None else self.rerank
        return per or CODES_FETCH

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
    # ~√n lists of ~√n vectors; FAISS wants ≥ 39 training points per list. Fewer, longer lists
    # than FAISS's usual 4–16√n: on 2 cores an exact assignment of every vector to its list
    # stays affordable (10M to 4,096 lists: minutes), and an approximate one loses recall
    nlist = min(2 ** round(math.log2(max(16, math.sqrt(n)))), max(16, n // 39))
    coarse = f"IVF{nlist}_HNSW32" if nlist >= 16384 else f"IVF{nlist}"
    per_vector = budget // max(n, 1) - 16  # bytes left per vector after its id and list entry
    if kind == "ivfsq" or (kind == "auto" and per_vector >= dim):
        bits = 16 if per_vector >= 2 * dim else 8
        return IndexPlan("ivfsq", f"{coarse},{'SQfp16' if bits == 16 else 'SQ8'}", f"{forced}{n:,} vectors: {bits}-bit "
                         f"codes in {nlist:,} lists take {n * (bits // 8 * dim + 16) / 2**30:.2f} GiB of the "
                         f"{budget / 2**30:.1f} GiB budget", "nprobe", 16)
    # at least 4 dimensions per sub-quantiser: thinner ones train very slowly and add little
    m = next((m for m in (128, 96, 64, 48, 32, 24, 16, 8) if m <= per_vector and dim % m == 0 and dim // m >= 4), 8)
    return IndexPlan("ivfpq", f"{coarse},PQ{m}", f"{forced}{n:,} vectors: {m}-byte PQ codes in {nlist:,} lists fit the "
                     f"{budget / 2**30:.1f} GiB budget", "nprobe", 16)


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def build(plan: IndexPlan, ids: np.ndarray, vecs: np.ndarray, target: float = TARGET_RECALL,
          queries: int = 200, train_max: int = 320_000, add: Adder | None = None) -> faiss.Index:
    """The planned index, trained on a sample and holding every vector under its id, with
    `plan`'s search knob tuned in place to reach `target` recall@10. IVF indexes keep ids in
    their lists; flat and HNSW ones sit in an IndexIDMap2 (IVF must not: its removals would
    leave the map's positions out of step with the lists).

    The tuning queries are stored vectors held back until tuning is done, so they are as new to
    the index as a user's query (searching with a vector the index already holds flatters HNSW:
    0.96 measured recall where fresh queries got 0.88). `vecs` may be float16 or a memory map:
    it is added a chunk at a time, or by `add` for an IVF index (the same lists, entry for entry)."""
    dim = vecs.shape[1] if len(vecs) else 1
    inner = faiss.IndexFlatIP(dim) if plan.kind == "flat" else faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    if plan.kind == "hnsw":
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    if "_HNSW" in plan.factory:
        faiss.downcast_index(faiss.extract_index_ivf(inner).quantizer).hnsw.efSearch = QUANTIZER_EF
    if not inner.is_trained:
        sample = np.sort(np.random.default_rng(0).choice(len(vecs), min(len(vecs), train_max), replace=False))
        inner.train(_f32(vecs[sample]))
    index = inner if plan.kind.startswith("ivf") else faiss.IndexIDMap2(inner)
    held = np.zeros(0, np.int64)
    if plan.param is not None and len(ids) > 100:
        held = np.sort(np.random.default_rng(1).choice(len(ids), min(queries, len(ids) // 10), replace=False))
    plan.trained_on = len(ids)
    keep = np.ones(len(ids), bool)
    keep[held] = False
    # Only IVF is added elsewhere: its lists are independent, so copies of the trained index that
    # each add a range of ids merge by appending lists (`merge_from`) into the very index one add
    # here makes (200k × 512, IVF512,SQ8: adding 1.9 s, merging 0.17 s). An HNSW graph cannot be
    # merged (each insertion searches the graph built so far), and a flat index is a copy of the
    # vectors: nothing to compute elsewhere
    if add is not None and plan.kind.startswith("ivf"):
        add(index, ids[keep], vecs.dtype)
    else:
        for s in range(0, len(ids), CHUNK):
            index.add_with_ids(_f32(vecs[s : s + CHUNK])[keep[s : s + CHUNK]], ids[s : s + CHUNK][keep[s : s + CHUNK]])
    if len(held):
        q = _f32(vecs[held])
        tune(plan, index, ids, vecs, q, ids[exact_topk(vecs, q, 10, exclude=held)], target)
        index.add_with_ids(q, ids[held])
    else:
        plan.recall = 1.0
    return index


def extend(plan: IndexPlan, index: faiss.Index, ids: np.ndarray, load) -> bool:
    """Bring a built approximate index up to the id set `ids` in place: drop the ids it no longer
    has, add the new ones (their vectors from `load(new_ids)`). False, leaving `index` untouched,
    when a rebuild is due instead: the collection doubled or halved since training (lists and
    codebooks no longer fit it, and the policy may choose differently), or HNSW lost vectors
    (its graph cannot delete)."""
    if plan.kind == "flat" or not plan.trained_on or not 1 / GROWTH <= len(ids) / plan.trained_on <= GROWTH:
        return False
    held = held_ids(index)
    gone, new = np.setdiff1d(held, ids), np.setdiff1d(ids, held)
    if len(gone) and plan.kind == "hnsw":
        return False
    if len(gone):
        index.remove_ids(faiss.IDSelectorBatch(gone))
    for s in range(0, len(new), CHUNK):
        index.add_with_ids(_f32(load(new[s : s + CHUNK])), new[s : s + CHUNK])
    return True


def held_ids(index: faiss.Index) -> np.ndarray:
    """Every id an index built here holds."""
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map)
    lists = faiss.extract_index_ivf(index).invlists
    return np.concatenate([np.zeros(0, np.int64)] + [
        faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy() for i in range(lists.nlist) if lists.list_size(i)])


def exact_topk(vecs: np.ndarray, q: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Row numbers of the k best inner products, scanning `vecs` a chunk at a time (no copy of
    it all); rows in `exclude` are left out."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for s in range(0, len(vecs), CHUNK):
        scores = _f32(q) @ _f32(vecs[s : s + CHUNK]).T
        if exclude is not None:
            scores[:, exclude[(exclude >= s) & (exclude < s + CHUNK)] - s] = -np.inf
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], 1)
        best_i = np.concatenate([best_i, top + s], 1)
    order = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(best_i, order, 1)


def search_params(plan: IndexPlan, sel: faiss.IDSelector | None = None):
    if plan.param == "efSearch":
        return faiss.SearchParametersHNSW(efSearch=plan.value, sel=sel)
    if plan.param == "nprobe":
        return faiss.SearchParametersIVF(nprobe=plan.value, sel=sel)
    return None if sel is None else faiss.SearchParameters(sel=sel)


def recall(plan: IndexPlan, index: faiss.Index, ids: np.ndarray, vecs: np.ndarray, q: np.ndarray,
           truth: np.ndarray, k: int = 10) -> float:
    """recall@k of what `Index.search_vector` returns at the plan's setting: the index's own top k,
    or `plan.candidates()` × k candidates re-ranked exactly (`vecs[r]` is the vector of `ids[r]`),
    against the true top-k ids `truth`."""
    found = index.search(_f32(q), k * plan.candidates(), params=search_params(plan))[1]
    if plan.rerank == 0:
        return sum(len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found, truth)) / (k * len(q))
    order = np.argsort(ids, kind="stable")
    at = order[np.minimum(np.searchsorted(ids, found, sorter=order), len(order) - 1)]
    hits = 0
    for cand, qq, t in zip(np.where((found >= 0) & (ids[at] == found), at, -1), q, truth):
        rows = np.sort(cand[cand >= 0])
        hits += len(set(ids[rows[np.argsort(-(_f32(vecs[rows]) @ qq))][:k]].tolist()) & set(t.tolist()))
    return hits / (k * len(q))


def tune(plan: IndexPlan, index: faiss.Index, ids: np.ndarray, vecs: np.ndarray, q: np.ndarray,
         truth: np.ndarray, target: float = TARGET_RECALL) -> IndexPlan:
    """Smallest efSearch / nprobe (doubling from 8) whose recall@10 on queries `q` reaches `target`.
    Scalar codes are first tried on their own scores (no re-rank: a search then reads only the
    FAISS file); when more probing stops gaining below the target, with the exact re-rank."""
    limit = 1024 if plan.param == "efSearch" else faiss.extract_index_ivf(index).nlist
    for per in [0, RERANK[plan.kind]] if plan.kind == "ivfsq" else [RERANK[plan.kind]]:
        plan.rerank, plan.value, last = per, 8, -1.0
        while True:
            plan.recall = recall(plan, index, ids, vecs, q, truth)
            if plan.recall >= target:
                return plan
            if plan.value >= limit or (plan.rerank == 0 and plan.recall < last + STALL):
                break
            last, plan.value = plan.recall, plan.value * 2
    return plan
