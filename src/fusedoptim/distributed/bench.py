"""``fusedoptim bench --distributed``: ZeRO's memory and time per step under mpirun.

    mpirun -n 2 fusedoptim bench --distributed [--sizes 1e7] [--repeat 5]

float32 AdamW on one FlatParams arena of `size` params, random grads per rank. Rank 0 prints:

* memory: each rank's optimizer state bytes (from its state buffers) over the single-process
  AdamW's (target: at most 1/N + 1%);
* time: a ZeRO-2 step against its parts, each timed alone in the same run (the local shard
  step, the reduce-scatter, the all-gather; target: step <= 1.25x their sum), with the
  reduce-scatter both as our ring of point-to-point calls and as MPI_Reduce_scatter;
* peer: torch.distributed.optim.ZeroRedundancyOptimizer over gloo with
  torch.optim.AdamW(fused=True) on the same params (its step alone, and with the gloo
  all_reduce of the grads that a DDP step adds), when torch is installed.

Each candidate runs once per round, `repeat` rounds (torch's ZeRO in the same rounds), each
run between barriers; rank 0 prints the best and the median, and the load average. The
machine is shared: read ratios within one run, not absolute times across runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from mpi4py import MPI

from .. import _kernels
from ..flat import FlatParams
from ..optim import AdamW
from ._collectives import ring_reduce_scatter
from .zero import ZeroRedundancyOptimizer


def _interleaved(comm: MPI.Intracomm, fns: dict[str, Callable[[], object]], repeat: int
                 ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall times of each function in ms (the slowest rank's: each run between barriers),
    and CPU times (the process's, all its threads; the larger of the ranks'), taken
    round-robin (one run of each per round, the order rotated), so that a busy spell on the
    shared machine hits every candidate alike. On a loaded machine a rank gets a fraction of a core, and the
    wall time is mostly waiting for it; the CPU time is the work (MPI's polling included)."""
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    names = list(fns)
    for r in range(repeat):
        # each round starts one candidate later: what one leaves behind (torch's gloo
        # threads still burning CPU after its step, measured) falls on a different
        # candidate each round, and the medians filter it out
        for k in names[r % len(names):] + names[:r % len(names)]:
            fn = fns[k]
            comm.Barrier()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            c1 = time.process_time()
            comm.Barrier()
            wall[k].append((time.perf_counter() - t0) * 1e3)
            cpu[k].append(comm.allreduce((c1 - c0) * 1e3, op=MPI.MAX))
    return wall, cpu


def _state_bytes(state: dict[int, dict[str, Any]]) -> int:
    return sum(x.nbytes for st in state.values() for x in st.values()
               if isinstance(x, np.ndarray))


def _torch_peer(comm: MPI.Intracomm, n: int, grad: np.ndarray[Any, Any]
                ) -> tuple[dict[str, Callable[[], object]], Callable[[], None]] | None:
    """torch's ZeroRedundancyOptimizer over gloo on the same params: its step alone, and
    with the gloo all_reduce of the grads a DDP step adds; and the cleanup to call after."""
    try:
        import torch
        import torch.distributed as dist
        from torch.distributed.optim import ZeroRedundancyOptimizer as TorchZero
    except ImportError:
        return None
    port = 0
    if comm.Get_rank() == 0:
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    port = comm.bcast(port, root=0)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=comm.Get_rank(), world_size=comm.Get_size())
    torch.set_num_threads(max(1, _kernels.get_num_threads()))
    p = torch.nn.Parameter(torch.randn(n, dtype=torch.float32))
    p.grad = torch.from_numpy(grad.copy())
    opt = TorchZero([p], optimizer_class=torch.optim.AdamW, lr=1e-3, fused=True)

    def with_allreduce() -> None:
        assert p.grad is not None
        dist.all_reduce(p.grad)
        p.grad.div_(comm.Get_size())
        opt.step()
    return ({TORCH_STEP: opt.step, TORCH_BOTH: with_allreduce},
            dist.destroy_process_group)


TORCH_STEP = "torch ZeroRedundancyOptimizer step (gloo)"
TORCH_BOTH = "torch all_reduce (gloo) + that step"


def run_distributed(size: int = 10**7, repeat: int = 5, use_torch: bool = True) -> int:
    comm = MPI.COMM_WORLD
    rank, nranks = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(rank)
    arena = FlatParams({"w": (size,)})
    arena.flat[...] = np.random.default_rng(1234).standard_normal(size, dtype=np.float32)
    arena.flat_grad[...] = rng.standard_normal(size, dtype=np.float32)
    lines = []
    zero = ZeroRedundancyOptimizer(arena, AdamW, stage=2, lr=1e-3)
    zero.step()
    mine = _state_bytes(zero.state)
    single = 2 * size * 4 + 0      # exp_avg and exp_avg_sq of float32 AdamW
    if rank == 0:
        plain = AdamW([arena.flat.copy()], lr=1e-3)
        plain.step([arena.flat_grad.copy()])
        single = _state_bytes(plain.state)
        del plain
    single = comm.bcast(single, root=0)
    everyone = comm.gather(mine, root=0)
    if rank == 0:
        assert everyone is not None
        worst = max(everyone) / single
        lines.append(f"memory: optimizer state per rank {[f'{b / 2**20:.1f}' for b in everyone]}"
                     f" MiB, single process {single / 2**20:.1f} MiB; worst rank "
                     f"{worst:.4f} of it (target <= 1/N + 1% = {1 / nranks + 0.01:.4f}: "
                     f"{'met' if worst <= 1 / nranks + 0.01 else 'MISSED'})")
    g = zero._groups[0]
    inner = g.inners[0][0] if g.inners else None
    assert g.grad_shard is not None
    shard = g.grad_shard
    scratch = zero._scratch(g, np.dtype(np.float32))
    p2p = zero._p2p
    # The step divides by N inside the kernel at a power-of-two N (ZeroRedundancyOptimizer
    # .step); the parts below do what the step does.
    fold = nranks & (nranks - 1) == 0 and nranks > 1

    def ring() -> None:
        ring_reduce_scatter(p2p, arena.flat_grad, shard, g.counts, g.displs,
                            1 if fold else nranks, scratch)

    def mpi_rs() -> None:
        comm.Reduce_scatter([arena.flat_grad, MPI.FLOAT], [shard, MPI.FLOAT], g.counts,
                            op=MPI.SUM)

    def gather() -> None:
        comm.Allgatherv(MPI.IN_PLACE, [arena.flat, (g.counts, g.displs), MPI.FLOAT])

    def local() -> None:
        if inner is not None:
            inner.step(g.grad_views, grad_scale=float(nranks) if fold else None)

    def sequence() -> None:       # the parts back to back, without the wrapper
        ring()
        local()
        gather()

    zero1 = ZeroRedundancyOptimizer(arena, AdamW, stage=1, lr=1e-3)
    zero1_mpi = ZeroRedundancyOptimizer(arena, AdamW, stage=1, lr=1e-3, reduce_scatter="mpi")
    fns: dict[str, Callable[[], object]] = {
        "ZeRO-2 step": zero.step,
        "its parts back to back, without the wrapper": sequence,
        "local shard step": local,
        "reduce-scatter (ring)": ring,
        "all-gather": gather,
        "reduce-scatter (MPI_Reduce_scatter)": mpi_rs,
        "ZeRO-1 step (ring allreduce_ + step + all-gather)": zero1.step,
        "ZeRO-1 step, reduce_scatter='mpi' (Iallreduce)": zero1_mpi.step}
    peer = _torch_peer(comm, size, arena.flat_grad) if use_torch else None
    if peer is not None:
        fns.update(peer[0])      # taken in the same rounds as ours
    load0 = os.getloadavg()[0]
    try:
        times, cpu_times = _interleaved(comm, fns, repeat)
    finally:
        if peer is not None:
            peer[1]()
    load1 = os.getloadavg()[0]
    best = {k: min(x) for k, x in times.items()}
    med = {k: float(np.median(x)) for k, x in times.items()}
    cpu = {k: float(np.median(x)) for k, x in cpu_times.items()}
    if rank == 0:
        threads = _kernels.get_num_threads()
        print(f"fusedoptim bench --distributed: float32 AdamW, {size:.0e} params, {nranks} "
              f"ranks x {threads} thread(s) (OMP_NUM_THREADS="
              f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), {repeat} rounds, every "
              f"candidate once per round; load average {load0:.1f} -> {load1:.1f} on "
              f"{os.cpu_count()} cores")
        for line in lines:
            print(line)
        print(f"  {'':48s} {'best':>9s} {'median':>9s} {'CPU':>9s} ms (wall best, wall "
              f"median, CPU time median)")
        for k in times:
            print(f"  {k:48s} {best[k]:9.2f} {med[k]:9.2f} {cpu[k]:9.2f}")
        for what, t in (("wall, best", best), ("wall, median", med), ("CPU time", cpu)):
            parts = t["local shard step"] + t["reduce-scatter (ring)"] + t["all-gather"]
            ratio = t["ZeRO-2 step"] / parts
            print(f"overhead ({what}): ZeRO-2 step / (local step + ring reduce-scatter + "
                  f"all-gather, each alone) = {ratio:.2f} (target <= 1.25: "
                  f"{'met' if ratio <= 1.25 else 'MISSED'}); / the same parts back to back "
                  f"= {t['ZeRO-2 step'] / t['its parts back to back, without the wrapper']:.2f}"
                  f" (the wrapper's own cost)")
            if peer is None:
                continue
            sp = t[TORCH_STEP] / t["ZeRO-2 step"]
            print(f"peer ({what}): torch's ZeRO step / our ZeRO-2 step = {sp:.2f}x (target "
                  f">= 2x: {'met' if sp >= 2 else 'MISSED'}); with its gradient all_reduce, "
                  f"which our step includes: {t[TORCH_BOTH] / t['ZeRO-2 step']:.2f}x")
        if peer is None:
            print("peer: torch not installed (or --no-torch): skipped")
    return 0
