"""retrieval/policy.py: which FAISS index `choose_index` plans, at its boundaries, and search params."""
from __future__ import annotations

import math
import re

import faiss
import pytest

from mmsearch.retrieval.policy import (
    DEFAULT_BUDGET,
    EXACT_LIMIT,
    HNSW_LIMIT,
    HNSW_M,
    INDEX_TYPES,
    IndexPlan,
    choose_index,
    search_params,
)

HUGE = 1 << 50


def _full(n: int, dim: int) -> int:
    return n * (dim * 4 + HNSW_M * 2 * 4)


def _nlist(plan: IndexPlan) -> int:
    return int(re.match(r"IVF(\d+)", plan.factory).group(1))


def test_flat_below_exact_limit():
    for n in (0, 1, EXACT_LIMIT - 1):
        p = choose_index(n, 512)
        assert (p.kind, p.factory, p.param, p.value) == ("flat", "Flat", None, None)
    assert choose_index(EXACT_LIMIT - 1, 512).reason == "49,999 vectors: an exact scan is fast enough"


def test_hnsw_from_exact_limit():
    p = choose_index(EXACT_LIMIT, 512)
    assert (p.kind, p.factory, p.param, p.value) == ("hnsw", f"HNSW{HNSW_M},Flat", "efSearch", 64)
    assert p.reason.startswith("50,000 vectors take 0.11 GiB")


def test_hnsw_up_to_its_limit_when_it_fits():
    assert choose_index(HNSW_LIMIT, 512, budget=HUGE).kind == "hnsw"
    assert choose_index(HNSW_LIMIT + 1, 512, budget=HUGE).kind == "ivfsq"


def test_hnsw_budget_boundary():
    n, dim = 1_000_000, 512
    assert choose_index(n, dim, budget=_full(n, dim)).kind == "hnsw"
    assert choose_index(n, dim, budget=_full(n, dim) - 1).kind == "ivfsq"


def test_ivfsq_when_scalar_codes_fit():
    n, dim = 10_000_000, 512
    p = choose_index(n, dim)  # 23 GB with a graph: over 12 GiB; 10 GB as float16 codes: fits
    assert _full(n, dim) > DEFAULT_BUDGET
    assert (p.kind, p.factory, p.param, p.value) == ("ivfsq", "IVF4096,SQfp16", "nprobe", 16)
    assert p.reason == "10,000,000 vectors: 16-bit codes in 4,096 lists take 9.69 GiB of the 12.0 GiB budget"
    # float16 codes exactly fit → them; a byte less → 8-bit codes
    assert choose_index(n, dim, budget=n * (2 * dim + 16)).factory == "IVF4096,SQfp16"
    p = choose_index(n, dim, budget=n * (2 * dim + 16) - 1)
    assert p.factory == "IVF4096,SQ8" and p.reason.startswith("10,000,000 vectors: 8-bit codes in 4,096 lists take 4.92 GiB")


def test_ivfsq_pq_boundary():
    n, dim = 1_000_000, 512
    # bytes per vector left after 16 of overhead: exactly dim → ivfsq, one less → ivfpq
    assert choose_index(n, dim, budget=n * (dim + 16)).kind == "ivfsq"
    p = choose_index(n, dim, budget=n * (dim + 16) - 1)
    assert (p.kind, p.factory, p.param) == ("ivfpq", "IVF1024,PQ128", "nprobe")


@pytest.mark.parametrize("dim, per_vector, m", [
    (512, 200, 128),  # 512 / 128 = 4 dims per sub-quantiser: allowed
    (512, 100, 64),   # 96 does not divide 512
    (384, 200, 96),   # 128 would leave 3 dims per sub-quantiser
    (512, 40, 32),
    (512, 8, 8),
    (512, 3, 8),      # nothing fits: the smallest
    (64, 40, 16),     # 32 would leave 2 dims per sub-quantiser, 24 does not divide 64
])
def test_pq_code_size(dim, per_vector, m):
    n = 1_000_000
    p = choose_index(n, dim, budget=n * (per_vector + 16))
    assert p.kind == "ivfpq"
    assert p.factory.endswith(f",PQ{m}")


@pytest.mark.parametrize("n, nlist", [
    (50_000, 256), (1_000_000, 1024), (10_000_000, 4096), (100_000_000, 8192),
])
def test_nlist_about_sqrt_n(n, nlist):
    assert _nlist(choose_index(n, 512, kind="ivfsq")) == nlist


@pytest.mark.parametrize("n", [1_248, 2_500, 10_000, 50_000, 123_457, 1_000_000, 7_777_777, 10_000_000])
def test_nlist_power_of_two_with_enough_training_points(n):
    nlist = _nlist(choose_index(n, 512, kind="ivfsq"))
    assert nlist & (nlist - 1) == 0
    assert n / nlist >= 39
    assert nlist <= 2 * 2 ** math.log2(math.sqrt(n))


@pytest.mark.parametrize("n", [1_000, 1_100, 1_247])
def test_nlist_has_enough_training_points_at_the_ivf_minimum(n):
    assert n / _nlist(choose_index(n, 512, kind="ivfsq")) >= 39


def test_hnsw_coarse_quantiser_past_16k_lists():
    assert choose_index(200_000_000, 512, kind="ivfsq").factory == "IVF16384_HNSW32,SQ8"
    assert choose_index(100_000_000, 512, kind="ivfsq").factory == "IVF8192,SQ8"


@pytest.mark.parametrize("kind", INDEX_TYPES)
def test_forced_kinds(kind):
    for n in (60_000, 2_000_000):
        p = choose_index(n, 512, kind=kind)
        assert p.kind == kind
        assert p.reason.startswith("chosen by --index-type; ")
    assert not choose_index(60_000, 512).reason.startswith("chosen")


def test_forced_flat_for_a_huge_collection():
    assert choose_index(10**9, 512, kind="flat").factory == "Flat"


def test_search_params():
    hnsw = search_params(IndexPlan("hnsw", "HNSW32,Flat", "", "efSearch", 80))
    assert isinstance(hnsw, faiss.SearchParametersHNSW) and hnsw.efSearch == 80
    ivf = search_params(IndexPlan("ivfsq", "IVF256,SQ8", "", "nprobe", 32))
    assert isinstance(ivf, faiss.SearchParametersIVF) and ivf.nprobe == 32
    assert search_params(IndexPlan("flat", "Flat", "")) is None
    sel = faiss.IDSelectorRange(0, 10)
    flat = search_params(IndexPlan("flat", "Flat", ""), sel)
    assert type(flat) is faiss.SearchParameters and flat.sel is not None
    assert search_params(IndexPlan("hnsw", "HNSW32,Flat", "", "efSearch", 64), sel).sel is not None
    assert search_params(IndexPlan("hnsw", "HNSW32,Flat", "", "efSearch", 64)).sel is None
