"""Many tensors: tables built once, per-step Python work that does not grow with the tensor
count, and work units that balance over threads whatever the tensor sizes."""

import numpy as np

import fusedoptim as fo
from fusedoptim import _kernels

CHUNK = _kernels.CHUNK_ELEMENTS


def _threads_per_element(params, num_threads):
    """Run the driver's diagnostic kernel, which writes into each element the number of the
    OpenMP thread that ran it; return the concatenated result."""
    for p in params:
        p.fill(-1)
    plan = _kernels.Plan(params, [None] * len(params), 0, 0,
                         [f"g{i}" for i in range(len(params))])
    plan.bind([np.zeros_like(p) for p in params])     # calloc'd and never read: no memory
    plan.run(_kernels.KERNEL_IDS["_thread_id"], num_threads)
    return plan, np.concatenate([p.ravel() for p in params])


def test_one_big_tensor_and_500_tiny_ones_split_evenly():
    rng = np.random.default_rng(0)
    tiny = [np.zeros(int(k), np.float32) for k in rng.integers(1, 40, size=500)]
    params = [np.zeros(10_000_000, np.float32)] + tiny
    plan, who = _threads_per_element(params, 2)
    units = plan.unit_sizes()
    total = sum(p.size for p in params)
    # The unit table: fixed CHUNK-element units over the tensors laid end to end, whatever
    # their sizes (the tiny ones share units with the big one's tail and with each other).
    assert units.sum() == total
    assert (units[:-1] == CHUNK).all() and 0 < units[-1] <= CHUNK
    assert plan.nunits == -(-total // CHUNK)
    # What the driver did with it: every element ran, and every thread got an equal share
    # to within one unit (schedule(static) over equal units).
    assert (who >= 0).all()
    if fo._kernels.openmp_enabled():
        for nt in (2, 3):
            _, who = _threads_per_element(params, nt)
            counts = np.bincount(who.astype(np.int64), minlength=nt)
            assert len(counts) == nt and (abs(counts - total / nt) <= CHUNK).all(), counts

