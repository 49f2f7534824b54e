"""pytest-benchmark suite: fused vs NumPy reference (vs torch when installed).

Run:  pytest benchmarks/ --benchmark-group-by=param:case,param:n,param:dtype,param:threads
      (add -k "1e+05 and float32" to narrow it; --benchmark-only skips nothing else here).
Every optimizer in fusedoptim.bench.BENCH_CASES appears automatically. Sizes 1e3 to 1e7, both
dtypes, 1 thread and all threads; the reference is skipped at 1e7 to keep the run short.
Compare rows within one run only: these machines are shared and noisy.
"""

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import bench

SIZES = [10**3, 10**4, 10**5, 10**6, 10**7]
DTYPES = ["float32", "float64"]
THREADS = sorted({1, fo.get_num_threads()})


@pytest.fixture
def threads(request):
    before = fo.get_num_threads()
    fo.set_num_threads(request.param)
    yield request.param
    fo.set_num_threads(before)


params = pytest.mark.parametrize
cases = params("case", bench.BENCH_CASES, ids=lambda c: c.name)
sizes = params("n", SIZES, ids=lambda n: f"{n:.0e}")
dtypes = params("dtype", DTYPES)
threads_p = params("threads", THREADS, indirect=True, ids=lambda t: f"{t}thr")


@cases
@sizes
@dtypes
@threads_p
def test_fused(benchmark, case, n, dtype, threads):
    benchmark(bench.fused_step_fn(case, n, np.dtype(dtype)))


@cases
@sizes
@dtypes
@threads_p
def test_roofline(benchmark, case, n, dtype, threads):
    benchmark(bench.roofline_fn(case, n, np.dtype(dtype)))


@cases
@sizes
@dtypes
def test_reference(benchmark, case, n, dtype):
    if n > 10**6:
        pytest.skip("the NumPy reference at 1e7 takes too long for a routine run")
    benchmark(bench.fused_step_fn(case, n, np.dtype(dtype), reference=True))


@cases
@sizes
@dtypes
@threads_p
def test_torch(benchmark, case, n, dtype, threads):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(threads)
    fn, path = bench.torch_step_fn(case, n, np.dtype(dtype), torch)
    if fn is None:
        pytest.skip(f"torch has no {case.name}")
    benchmark.extra_info["torch_path"] = path
    benchmark(fn)
