"""pytest-benchmark suite: one AdamW step over many small tensors, laid out several ways.

Run:  OMP_WAIT_POLICY=passive pytest benchmarks/test_bench_many_tensors.py \
          --benchmark-group-by=param:threads
The layouts are those of `fusedoptim bench --many-tensors` (fusedoptim.bench.many_tensor_fns):
1000 separate float32 tensors of 1000 elements, one flat 1e6 tensor, a FlatParams arena, the
bare kernel on the arena's buffers, fo.functional.adamw, and torch's fused and foreach AdamW
when torch is installed. torch shares the OpenMP runtime: set OMP_WAIT_POLICY before the run
(it is read when the runtime loads), or compare the 1-thread rows. Compare rows of one run
only: these machines are shared and noisy.
"""

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import bench

COUNT, SIZE = 1000, 1000
THREADS = sorted({1, fo.get_num_threads()})
LAYOUTS = ["fo, separate tensors", "fo, one flat tensor", "fo, FlatParams arena: step()",
           "kernel on the arena's flat buffer", "fo.functional.adamw, flat buffer",
           "torch AdamW(fused=True), separate", "torch AdamW(foreach=True), separate"]

_built = {}


def _fns(threads):
    """The step functions, built once per thread count (each holds ~16 MB of buffers)."""
    if threads not in _built:
        try:
            import torch
            torch.set_num_threads(threads)
        except ImportError:
            torch = None
        _built.clear()
        _built[threads] = bench.many_tensor_fns(COUNT, SIZE, np.float32, torch)
    return _built[threads]


@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"{t}thr")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_many_tensors(benchmark, layout, threads):
    before = fo.get_num_threads()
    fo.set_num_threads(threads)
    try:
        fns = _fns(threads)
        if layout not in fns:
            pytest.skip("torch is not installed")
        benchmark(fns[layout])
    finally:
        fo.set_num_threads(before)
