"""A ZeRO-2 Muon step at N ranks against a plain fo.Muon step on one process, interleaved:

    OMPI_MCA_mpi_yield_when_idle=1 OMP_NUM_THREADS=1 \
        mpirun -n 2 python -m mpi4py benchmarks/zero_muon_step.py [COUNT ROWS COLS [REPEAT]]

float32, COUNT matrices of (ROWS, COLS) (default 16 x (512, 512)), random grads per rank.
Candidates, one run of each per round (fusedoptim.distributed.bench's round-robin), each
between barriers: the ZeRO-2 step on every rank (1 thread each, BLAS included), the
exchange of the matrices cut between ranks that Muon adds to it (timed alone; nothing to
move when no matrix is cut, e.g. 16 x (512, 512) at 2 ranks; 15 of them cut one), and the
plain step on rank 0 alone at 1 thread and at one per core (BLAS too) while the other ranks
wait at the barrier. Open MPI yields the core there with the setting above, but still polls
between yields: that slows the plain step at one thread per core, so take those figures
from a run at `-n 1` (the ZeRO row is then one rank's whole step). Rank 0 prints wall (best,
median) and CPU time (median; the busiest rank's, all its threads) in ms, and the load
average before and after.
"""

import os
import sys

import numpy as np
from mpi4py import MPI

import fusedoptim as fo
from fusedoptim.distributed import ZeroRedundancyOptimizer
from fusedoptim.distributed.bench import _interleaved

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
args = [int(a) for a in sys.argv[1:]]
count, rows, cols = args[:3] if len(args) >= 3 else (16, 512, 512)
repeat = args[3] if len(args) > 3 else 10

rng = np.random.default_rng(0)
start = [rng.standard_normal((rows, cols)).astype(np.float32) for _ in range(count)]
grads = [np.random.default_rng([rank, k]).standard_normal((rows, cols)).astype(np.float32)
         for k in range(count)]
zero = ZeroRedundancyOptimizer([p.copy() for p in start], fo.Muon, stage=2, lr=0.02,
                               blas_threads=1)
plain = {n: fo.Muon([p.copy() for p in start], lr=0.02, blas_threads=n)
         for n in sorted({1, os.cpu_count() or 1})}


def plain_step(n):
    def run():
        if rank == 0:
            before = fo.get_num_threads()
            fo.set_num_threads(n)
            try:
                plain[n].step(grads)
            finally:
                fo.set_num_threads(before)
    return run


zero.step(grads)               # (builds the workspace)
shard = zero._groups[0].inners[0][0]._run.__self__     # the group's _MuonShard
cut = comm.allreduce(sum(b - a for _, a, b in shard.receives))
fns = {f"ZeRO-2 fo.Muon, {size} ranks x 1 thread": lambda: zero.step(grads),
       f"  its exchange of cut matrices ({cut * 4 / 2**20:.1f} MiB)":
       lambda: shard.exchange(shard.ws.line)}
fns.update({f"fo.Muon, 1 process x {n} thread{'s' if n > 1 else ''}": plain_step(n)
            for n in plain})
load0 = os.getloadavg()[0]
wall, cpu = _interleaved(comm, fns, repeat)
load1 = os.getloadavg()[0]
if rank == 0:
    print(f"Muon step, float32, {count} x ({rows}, {cols}); {repeat} rounds, interleaved; "
          f"load average {load0:.1f} -> {load1:.1f}")
    print(f"  {'':42s} {'wall best':>10s} {'wall med':>10s} {'CPU med':>10s} ms")
    for k in fns:
        print(f"  {k:42s} {min(wall[k]):10.1f} {np.median(wall[k]):10.1f} "
              f"{np.median(cpu[k]):10.1f}")
