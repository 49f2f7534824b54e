"""pytest-benchmark suite for the gradient utilities and skip_nonfinite (vs NumPy, vs torch).

Run:  OMP_WAIT_POLICY=passive pytest benchmarks/test_bench_utilities.py \
          --benchmark-group-by=param:row,param:threads
Rows come from fusedoptim.bench.utility_rows: clip_grad_norm_ over 1000 tensors of 1000
float32 elements, and clip_grad_norm_/all_finite/clip_grad_value_ on one buffer (1e6 and 1e7
here; `fusedoptim bench --utilities` runs 1e8), each with its roofline. Compare rows within
one run only: these machines are shared and noisy. With torch in the same process on few
cores, use OMP_WAIT_POLICY=passive or compare the 1-thread rows.
"""

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import bench

THREADS = sorted({1, fo.get_num_threads()})


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


_ROWS = bench.utility_rows(1000, 1000, [10**6, 10**7], _torch(), reference=True)


@pytest.fixture
def threads(request):
    before = fo.get_num_threads()
    fo.set_num_threads(request.param)
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(request.param)
    yield request.param
    fo.set_num_threads(before)


rows = pytest.mark.parametrize("row", _ROWS, ids=lambda r: f"{r.label} n={r.n:.0e}")
threads_p = pytest.mark.parametrize("threads", THREADS, indirect=True,
                                    ids=lambda t: f"{t}thr")


@rows
@threads_p
def test_fused(benchmark, row, threads):
    benchmark(row.fused)


@rows
@threads_p
def test_roofline(benchmark, row, threads):
    benchmark(row.roofline)


@rows
def test_reference(benchmark, row):
    if row.reference is None or row.n > 10**6:
        pytest.skip("the NumPy reference above 1e6 takes too long for a routine run")
    benchmark(row.reference)


@rows
@threads_p
def test_torch(benchmark, row, threads):
    if row.torch is None:
        pytest.skip("torch is not installed")
    benchmark(row.torch)


@pytest.mark.parametrize("skip", [False, True], ids=["plain", "skip_nonfinite"])
@threads_p
def test_adamw_step_skip_nonfinite(benchmark, skip, threads):
    p, g = bench._data(10**6, np.float32)
    opt = fo.AdamW([p], lr=1e-3, skip_nonfinite=skip)
    opt.step([g])
    benchmark(lambda: opt.step([g]))
