"""Muon: momentum orthogonalized by Newton-Schulz (kernels "muon_momentum" + "muon").

A step is two fused passes on the driver with the Newton-Schulz iteration between them, as
matrix products in NumPy's BLAS (``fusedoptim._blas`` on threads). The passes run over a
work plan: the group's plan (param, grad, momentum_buffer) plus a fourth column, the update
(one work buffer per param, the iteration's input and output).
"""

from __future__ import annotations

import math
import numbers
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import ml_dtypes
import numpy as np

from .. import _kernels
from .. import _validation as v
from .._backend import FusedBackend
from .._blas import blas_threads
from .._exclusive import exclusive
from .._layout import group_arrays
from .._spec import OptSpec, Slot
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from numpy.typing import NDArray

    from .._typing import FloatArray, ParamsArg

_MOMENTUM = _kernels.REDUCE_IDS["muon_momentum"]
_APPLY = _kernels.KERNEL_IDS["muon"]
_NAMES = _kernels.SCALARS["muon"]
_STEP_COLUMN = _NAMES.index("step")
_MODE_COLUMN = _NAMES.index("mode")

#: Keller Jordan's coefficients and step count (torch's defaults)
NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)
NS_STEPS = 5
ADJUST_LR_FNS = ("original", "match_rms_adamw")
NS_DTYPES = ("bfloat16",)
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
#: Same-shape matrices are stacked into one 3-D matmul up to this many bytes of iteration
#: buffers per stack (2 r c + 2 m^2 elements a matrix). Measured, one float32 step at 1 thread
#: (2-core EPYC, OpenBLAS, noisy): 512 x (32, 32) took 69 ms one matrix at a time, 29 ms in
#: stacks of 16, 26 ms of 64 (this bound) or all 512; 256 x (64, 64): 93, 66 (4), 65 (16:
#: this bound), 93 ms (all 256: out of cache); 64 x (256, 256): 680 ms one at a time (this
#: bound), 807 ms as one stack of 64. Stacking saves per-call overhead, until the stack falls
#: out of cache.
BATCH_BYTES = 1 << 20


# -- validators ---------------------------------------------------------------------------------

def _coefficients(value: Any, name: str) -> tuple[float, float, float]:
    try:
        items = tuple(value)
    except TypeError:
        items = ()
    if len(items) != 3:
        raise ValueError(f"{name} must be a tuple of exactly 3 numbers (a, b, c), got "
                         f"{value!r}")
    a, b, c = (v._real(x, f"{name}[{i}]") for i, x in enumerate(items))
    for i, x in enumerate((a, b, c)):
        if not math.isfinite(x):
            raise ValueError(f"{name}[{i}] must be finite, got {items[i]!r}")
    return a, b, c


def _ns_steps(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or not 0 <= int(value) < 100:
        raise ValueError(f"{name} must be an integer in [0, 99] (torch refuses 100 or more), "
                         f"got {value!r}")
    return int(value)


def _adjust_lr_fn(value: Any, name: str) -> str | None:
    if value is not None and (not isinstance(value, str) or value not in ADJUST_LR_FNS):
        raise ValueError(f"{name} must be None, 'original' or 'match_rms_adamw', got "
                         f"{value!r}")
    return value


def _ns_dtype(value: Any, name: str) -> str | None:
    if value is not None and (not isinstance(value, str) or value not in NS_DTYPES):
        raise ValueError(f"{name} must be None (iterate in the params' dtype) or 'bfloat16' "
                         f"(torch's numerics), got {value!r}")
    return value


class MuonHyper(NamedTuple):
    """Muon's hyperparameters, validated (the functional call's, with its defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    weight_decay: Annotated[float, v.finite_nonneg] = 0.1
    momentum: Annotated[float, v.finite_nonneg] = 0.95
    nesterov: Annotated[bool, v.flag] = True
    # NS_COEFFICIENTS and NS_STEPS spelled out: the docs build reads these defaults as text
    ns_coefficients: Annotated[tuple[float, float, float], _coefficients] = (3.4445, -4.775,
                                                                            2.0315)
    eps: Annotated[float, v.finite_nonneg] = 1e-7
    ns_steps: Annotated[int, _ns_steps] = 5
    adjust_lr_fn: Annotated[str | None, _adjust_lr_fn] = None
    ns_dtype: Annotated[str | None, _ns_dtype] = None


def muon_scalars(step: int, lr: float, weight_decay: float, momentum: float, nesterov: bool,
                 ns_coefficients: tuple[float, float, float], eps: float, ns_steps: int,
                 adjust_lr_fn: str | None, ns_dtype: str | None) -> tuple[float, ...]:
    """The kernels' scalars (order: _kernels.SCALARS['muon']); independent of the step. The
    per-tensor "step" (lr times the shape's adjustment) and the lerp bits of "mode" are set
    by muon_run, which knows the shapes and the dtype."""
    return (1.0, momentum, 1.0 - momentum, 1.0 - lr * weight_decay, lr,
            1.0 if nesterov else 0.0)


def adjusted_ratio(shape: Sequence[int], adjust_lr_fn: str | None) -> float:
    """torch's lr adjustment for a (A, B) param: sqrt(max(1, A / B)) ("original", None), or
    0.2 * sqrt(max(A, B)) ("match_rms_adamw"). 1 for a param with no columns (it has no
    elements; torch divides by zero there)."""
    a, b = shape[0], shape[1]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(a, b))
    if b == 0:
        return 1.0
    return math.sqrt(max(1, a / b))


def lerp_mode(dtype: np.dtype[Any], momentum: float, nesterov: bool) -> int:
    """The momentum pass's mode: Nesterov (1), and which of torch's two lerp formulas each
    lerp takes (2, 4: weight not "small", |w| >= 0.5), decided on the weight rounded to the
    params' dtype, as torch decides on its opmath value."""
    t = np.float64 if dtype == np.float64 else np.float32
    big1 = not abs(float(t(1.0 - momentum))) < 0.5
    big2 = not abs(float(t(momentum))) < 0.5
    return (1 if nesterov else 0) | (2 if big1 else 0) | (4 if big2 and nesterov else 0)


# -- the Newton-Schulz iteration ------------------------------------------------------------------

def _round_bf16(x: NDArray[np.float32]) -> None:
    """Round float32 values to bfloat16 (nearest even), in place."""
    x[...] = x.astype(BFLOAT16)


class _Batch:
    """Same-shape updates stacked as one 3-D array, iterated together: a slice of its shape's
    stack, its tensor indices and the iteration's buffers (shared by the batches of a shape).
    A tall update (rows > columns) is iterated as it lies: torch transposes it to wide and
    back; here the products are the transposes of torch's (A = Y^T Y, Y <- a Y + Y B), so
    the buffers stay C-contiguous and nothing is copied."""

    __slots__ = ("index", "update", "tall", "other", "gram", "gram2", "work")

    def __init__(self, index: Sequence[int] | NDArray[np.intp], update: FloatArray, tall: bool,
                 bufs: tuple[FloatArray, FloatArray, FloatArray, FloatArray | None]) -> None:
        self.index = np.asarray(index, dtype=np.intp)
        self.update = update
        self.tall = tall
        self.other, self.gram, self.gram2, self.work = bufs

    def part(self, lo: int, hi: int) -> _Batch:
        """Matrices lo..hi-1 of the batch, on slices of its buffers. Each matrix's products
        are BLAS calls of their own (NumPy's matmul loops over the stack), so a matrix's
        result does not depend on which batch it is iterated in."""
        if lo == 0 and hi == len(self.index):
            return self
        work = None if self.work is None else self.work[lo:hi]
        return _Batch(self.index[lo:hi], self.update[lo:hi], self.tall,
                      (self.other[lo:hi], self.gram[lo:hi], self.gram2[lo:hi], work))


class MuonWorkspace:
    """A group's update buffers (one per param), the iteration's buffers (allocated once per
    shape and reused every step) and the work plan over them.

    By default same-shape updates are stacked wherever their params sit in the group (the
    plain optimizer). ``line``, a run of consecutive param indices, keeps the updates of
    those params only, laid end to end in param order in one buffer (``self.line``), and
    stacks runs of consecutive same-shape params: ZeroRedundancyOptimizer's layout (the
    params a rank's shard touches, whose pieces it exchanges with the ranks that own the
    rest); the other params have no update buffer and are never iterated."""

    def __init__(self, shapes: Sequence[tuple[int, ...]], dtype: np.dtype[Any], bf16: bool,
                 line: Sequence[int] | None = None) -> None:
        self.dtype = np.dtype(dtype)
        self.bf16 = bf16
        self.shapes = [tuple(s) for s in shapes]
        self.updates: list[FloatArray] = [np.empty(0, dtype)] * len(shapes)
        self.batches: list[_Batch] = []
        self.line: FloatArray | None = None
        stacks: list[tuple[list[int], FloatArray]] = []
        if line is not None:
            laid = list(line)
            assert laid == list(range(laid[0], laid[0] + len(laid)) if laid else []), laid
            ends = np.cumsum([0] + [math.prod(self.shapes[t]) for t in laid]).tolist()
            self.line = np.zeros(ends[-1], self.dtype)
            j = 0
            while j < len(laid):
                run = j + 1
                while run < len(laid) and self.shapes[laid[run]] == self.shapes[laid[j]]:
                    run += 1
                r, c = self.shapes[laid[j]]
                stacks.append((laid[j:run],
                               self.line[ends[j]:ends[run]].reshape(run - j, r, c)))
                j = run
        else:
            classes: dict[tuple[int, ...], list[int]] = {}
            for t, s in enumerate(self.shapes):
                classes.setdefault(s, []).append(t)
            stacks = [(index, np.zeros((len(index), *s), dtype)) for s, index in classes.items()]
        work_dtype = np.dtype(np.float32) if bf16 else self.dtype
        shared: dict[tuple[int, int, int], tuple[Any, ...]] = {}
        for index, stack in stacks:
            for j, t in enumerate(index):
                self.updates[t] = stack[j]
            r, c = stack.shape[1:]
            if r == 0 or c == 0:
                continue            # nothing to iterate; the step scales nothing
            m = min(r, c)
            per = (2 * r * c + 2 * m * m) * work_dtype.itemsize
            k = max(1, min(len(index), BATCH_BYTES // per))
            for lo in range(0, len(index), k):
                n = min(k, len(index) - lo)
                key = (n, r, c)
                bufs = shared.get(key)
                if bufs is None:
                    bufs = shared[key] = (
                        np.zeros((n, r, c), work_dtype), np.zeros((n, m, m), work_dtype),
                        np.zeros((n, m, m), work_dtype),
                        np.zeros((n, r, c), work_dtype) if bf16 else None)
                self.batches.append(_Batch(index[lo:lo + n], stack[lo:lo + n], r > c, bufs))
        self.plan: _kernels.Plan | None = None
        self._of: _kernels.Plan | None = None
        self._work_dtype = work_dtype
        # (worker, n, rows, cols) -> that worker's own iteration buffers (orthogonalize)
        self._private: dict[tuple[int, int, int, int], tuple[Any, ...]] = {}

    def on_worker(self, batch: _Batch, worker: int) -> _Batch:
        """`batch` with iteration buffers of worker `worker`'s own (the workspace's are
        shared by the batches of a shape, so two batches cannot run at once on them)."""
        k, r, c = batch.update.shape
        key = (worker, k, r, c)
        bufs = self._private.get(key)
        if bufs is None:
            m, dt = min(r, c), self._work_dtype
            bufs = self._private[key] = (
                np.zeros((k, r, c), dt), np.zeros((k, m, m), dt), np.zeros((k, m, m), dt),
                np.zeros((k, r, c), dt) if self.bf16 else None)
        return _Batch(batch.index, batch.update, batch.tall, bufs)

    def work_plan(self, plan: _kernels.Plan, updates: Sequence[FloatArray] | None = None
                  ) -> _kernels.Plan:
        """The work plan for group plan `plan` (rebuilt when the group's plan was): its
        columns and, as the fourth, `updates` (one per param of `plan`; default: this
        workspace's, one per param of the group)."""
        if self._of is not plan or self.plan is None:
            cols = self.updates if updates is None else updates
            bufs = plan.column(2)
            state = [None if b is None else [b, u] for b, u in zip(bufs, cols)]
            self.plan = _kernels.Plan(list(plan.params), state, 2, len(_NAMES),
                                      list(plan.labels or []), required=(0, 1))
            self._of = plan
        return self.plan


def _newton_schulz(batch: _Batch, scale: NDArray[Any], a: float, b: float, c: float,
                   steps: int, bf16: bool) -> None:
    """Orthogonalize the batch's updates in place: X0 = U / scale, then `steps` times
    A = X X^T, B = b A + c A A, X = a X + B X, torch's iteration, with two changes of
    rounding only: A A is computed as A A^T (the same matrix: A is exactly symmetric), which
    BLAS computes as a symmetric product (OpenBLAS on one core: 0.69x a general product's
    time at 1024 x 1024, 0.83x at 256 x 256), and a X + B X as (B + a I) X, which saves two
    passes over X per iteration."""
    u, q, gram, gram2 = batch.update, batch.other, batch.gram, batch.gram2
    x0 = u if not bf16 else batch.work
    assert x0 is not None
    k, m = gram.shape[0], gram.shape[1]
    diagonal = gram2.reshape(k, m * m)[:, ::m + 1]
    # Ping-pong between x0 and q, ending in x0: start in q when the step count is odd.
    cur, nxt = (q, x0) if steps % 2 else (x0, q)
    if bf16:
        # torch: the update cast to bfloat16, its norm (in bfloat16) clamped, divided.
        np.copyto(x0, u, casting="unsafe")
        _round_bf16(x0)
        np.divide(x0, scale[:, None, None], out=cur)
        _round_bf16(cur)
    else:
        np.divide(u, scale[:, None, None], out=cur)
    tall = batch.tall
    for _ in range(steps):
        ct = cur.transpose(0, 2, 1)
        if tall:
            np.matmul(ct, cur, out=gram)            # (X X^T with X = Y^T)
        else:
            np.matmul(cur, ct, out=gram)
        if bf16:
            _round_bf16(gram)
        np.matmul(gram, gram.transpose(0, 2, 1), out=gram2)
        np.multiply(gram2, c, out=gram2)
        np.multiply(gram, b, out=gram)
        np.add(gram2, gram, out=gram2)              # B = b A + c A A
        if bf16:
            _round_bf16(gram2)
        np.add(diagonal, a, out=diagonal)           # B + a I
        if tall:
            np.matmul(cur, gram2, out=nxt)          # Y (B + a I)^T = (a X + B X)^T
        else:
            np.matmul(gram2, cur, out=nxt)          # a X + B X
        if bf16:
            _round_bf16(nxt)
        cur, nxt = nxt, cur
    if bf16:
        np.copyto(u, x0, casting="unsafe")


def momentum_pass(wplan: Any, plan: _kernels.Plan, hyper: MuonHyper,
                  dtype: np.dtype[Any]) -> NDArray[np.float64]:
    """Phase 1: the momentum pass over work plan `wplan` (of group plan `plan`, bound, its
    scalars set) writes each update; returns each update's squared norm (per_tensor[:, 0]).
    `wplan` may be a plan whose reduce() gathers its sums across ranks (ZeRO)."""
    missing = wplan.bind(plan.column(1))
    assert missing == 0, "every param that steps has its momentum buffer by now"
    hp = wplan.hp_array
    hp[...] = plan.hp_array
    hp[:, _MODE_COLUMN] = lerp_mode(dtype, hyper.momentum, hyper.nesterov)
    per_tensor: NDArray[np.float64] = wplan.reduce(_MOMENTUM)[0]
    return per_tensor


def orthogonalize(ws: MuonWorkspace, sq_norms: NDArray[np.float64], wanted: NDArray[Any],
                  hyper: MuonHyper, threads: int | None = None) -> None:
    """Phase 2: the Newton-Schulz iteration, in place, on the workspace's updates of the
    params where `wanted` is true (`sq_norms`: each update's squared norm; both indexed by
    the workspace's params), on `threads` cores (default: fusedoptim's thread count).

    On more than one thread, the batches (and the runs of matrices of a batch that is the
    only one) are shared out among `threads` worker threads, each iterating its own on
    buffers of its own with BLAS at one thread (NumPy releases the GIL in its products and
    element-wise passes), largest first onto the least loaded worker. A batch that outweighs
    all the others together (one large matrix) runs alone first, in BLAS at `threads`
    threads. Why (measured on the 2-core AMD EPYC family 25 model 17, AVX-512 level, NumPy's
    OpenBLAS 0.3.31; 64 x (256, 256)): 2-thread BLAS ran the step only 1.26x faster than one
    thread, and it leaves BLAS workers spinning after the step: OpenBLAS's idle workers spin
    for a while after each call, and took the cores from the torch products that ran next
    (20 matmuls of 512 x 512 took 55 ms after a step instead of 32). Each matrix's products
    are BLAS calls of their own, so sharing the work out does not change which products a
    matrix gets; OpenBLAS's products gave the same bits at 1 and 2 threads for every shape
    tested (not a BLAS guarantee).
    """
    a, b, c = hyper.ns_coefficients
    dt = np.float32 if ws.dtype == np.float32 else np.float64
    if ws.bf16:
        dt = BFLOAT16.type
    eps = dt(hyper.eps)
    n = _kernels.get_num_threads() if threads is None else threads
    jobs: list[tuple[_Batch, NDArray[Any]]] = []
    with np.errstate(all="ignore"):
        for whole in ws.batches:
            want = wanted[whole.index]
            if not want.any():
                continue
            hits = np.flatnonzero(want)
            batch = whole.part(int(hits[0]), int(hits[-1]) + 1)
            if ws.bf16:
                # the norm of the update rounded to bfloat16, rounded to bfloat16
                rounded = batch.update.astype(BFLOAT16).astype(np.float64)
                norms = np.sqrt(np.einsum("kij,kij->k", rounded, rounded))
            else:
                norms = np.sqrt(sq_norms[batch.index])
            scale = np.maximum(norms.astype(dt), eps)
            if ws.bf16:
                scale = scale.astype(np.float32)
            jobs.append((batch, scale))

    def iterate(batch: _Batch, scale: NDArray[Any]) -> None:
        with np.errstate(all="ignore"):       # errstate is per thread
            _newton_schulz(batch, scale, a, b, c, hyper.ns_steps, ws.bf16)
    if n > 1 and len(jobs) == 1 and len(jobs[0][0].index) >= n:
        batch, scale = jobs[0]                # the only batch: n runs of its matrices
        ends = np.linspace(0, len(batch.index), n + 1).round().astype(int).tolist()
        jobs = [(batch.part(lo, hi), scale[lo:hi]) for lo, hi in zip(ends, ends[1:])]
    costs = [_flops(batch) for batch, _ in jobs]
    order = sorted(range(len(jobs)), key=lambda j: -costs[j])
    rest = sum(costs)
    alone = 0
    while alone < len(order) and (n <= 1 or costs[order[alone]] * 2 > rest):
        rest -= costs[order[alone]]
        alone += 1
    if alone:
        with blas_threads(n):
            for j in order[:alone]:
                iterate(*jobs[j])
    if alone == len(order):
        return
    loads = [0] * n
    lists: list[list[tuple[_Batch, NDArray[Any]]]] = [[] for _ in range(n)]
    for j in order[alone:]:
        w = loads.index(min(loads))
        loads[w] += costs[j]
        lists[w].append((ws.on_worker(jobs[j][0], w), jobs[j][1]))

    def run_list(items: list[tuple[_Batch, NDArray[Any]]]) -> None:
        for batch, scale in items:
            iterate(batch, scale)
    with blas_threads(1):
        for done in [_workers(n).submit(run_list, items) for items in lists if items]:
            done.result()


def _flops(batch: _Batch) -> int:
    """The iteration's multiply-adds for the batch, up to a constant factor."""
    k, r, c = (int(d) for d in batch.update.shape)
    return k * r * c * min(r, c)


_POOLS: dict[int, ThreadPoolExecutor] = {}
# A forked child has none of the parent's worker threads: it makes its own pools.
os.register_at_fork(after_in_child=_POOLS.clear)


def _workers(n: int) -> ThreadPoolExecutor:
    """The worker threads of orthogonalize's split batches: n of them, made on first use and
    kept (idle, they wait on a queue without spinning)."""
    pool = _POOLS.get(n)
    if pool is None:
        pool = _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="fusedoptim-muon")
    return pool


def update_pass(wplan: _kernels.Plan, lr: float, ratios: Sequence[float]) -> None:
    """Phase 3: decoupled weight decay and the update, lr times each param's adjusted
    ratio (``ratios``, one per param of `wplan`) times its orthogonalized update."""
    wplan.hp_array[:, _STEP_COLUMN] = lr * np.asarray(ratios, dtype=np.float64)
    wplan.run(_APPLY)


def muon_run(plan: _kernels.Plan, hyper: MuonHyper, ws: MuonWorkspace | None = None,
             threads: int | None = None) -> None:
    """A Muon step over a bound group plan whose scalars are set: the momentum pass (and
    each update's squared norm), the iteration per batch of same-shape updates in BLAS at
    `threads` threads (default: fusedoptim's thread count), then the update pass.
    (ZeroRedundancyOptimizer runs the same three phases on a shard, with collectives
    between them: fusedoptim.distributed.zero._MuonShard.)"""
    params = plan.params
    if ws is None:
        ws = MuonWorkspace([p.shape for p in params], params[0].dtype,
                           hyper.ns_dtype == "bfloat16")
    wplan = ws.work_plan(plan)
    per_tensor = momentum_pass(wplan, plan, hyper, ws.dtype)
    orthogonalize(ws, per_tensor[:, 0], wplan.active_array, hyper, threads)
    update_pass(wplan, hyper.lr, [adjusted_ratio(s, hyper.adjust_lr_fn) for s in ws.shapes])


def _muon_step(plan: _kernels.Plan, hyper: MuonHyper) -> None:
    """The functional entry's step: work buffers allocated for the call."""
    muon_run(plan, hyper)


MUON_SPEC = OptSpec(
    "muon", MuonHyper, muon_scalars, run=_muon_step, per_tensor=True,
    state=(Slot("momentum_buffer", "muon_momentum_bufs"),),
    doc="""Fused Muon step over lists of 2-D arrays (see :class:`fusedoptim.Muon` for the
    rule): the momentum pass, the Newton-Schulz iteration in BLAS, the update pass. Its work
    buffers are allocated per call (the class keeps them).""")

#: Validate Muon hyperparameters (MuonHyper's fields, in order); return them canonical.
check_muon = MUON_SPEC.check


class _MuonBackend(FusedBackend):
    """The fused backend, with the skip_nonfinite check in a read-only pass before the step
    (the step's passes run on the work plan, not the group's)."""

    flat_plans = False
    gate_in_pass = False


def check_matrix_params(owner: str, group_in: Mapping[str, Any], start: int) -> None:
    """Raise unless every param of the group is a 2-D float32/float64 array (torch: "Muon
    only supports 2D parameters")."""
    _, names, arrays = group_arrays(group_in)
    for i, p in enumerate(arrays):
        where = v.label("params", start + i, names[i])
        ndim = getattr(p, "ndim", None)
        if ndim is not None and ndim != 2:
            raise ValueError(f"{owner} only supports 2-D parameters, but {where} has shape "
                             f"{tuple(p.shape)}; optimize biases, norms and other non-matrix "
                             f"params with AdamW (fusedoptim.MuonWithAuxAdam takes both in "
                             f"one optimizer), and reshape convolution kernels to 2-D views")
        dtype = getattr(p, "dtype", None)
        if dtype is not None and dtype not in (np.float32, np.float64):
            raise TypeError(f"{owner} takes float32 or float64 params, but {where} is "
                            f"{dtype}; convert it with p.astype(np.float32)")


class Muon(Optimizer):
    r"""Muon (Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural networks";
    Liu et al., 2025, "Muon is Scalable for LLM Training"), with torch.optim.Muon's semantics.

    For each 2-D param of shape (A, B), with g its gradient and B_buf its momentum buffer::

        B_buf = lerp(B_buf, g, 1 - momentum)        (= momentum * B_buf + (1 - momentum) * g)
        U = lerp(g, B_buf, momentum) if nesterov else B_buf
        X = U / max(||U||_F, eps)                   (transposed when A > B: X is wide)
        ns_steps times:  S = X X^T;  X = a X + (b S + c S S) X     (a, b, c = ns_coefficients)
        p = p * (1 - lr * weight_decay)             (decoupled weight decay)
        p = p - lr * ratio * X                      (X transposed back)

    where ratio is ``sqrt(max(1, A / B))`` for ``adjust_lr_fn=None`` or ``"original"``
    (Keller Jordan's), and ``0.2 * sqrt(max(A, B))`` for ``"match_rms_adamw"`` (Moonshot's:
    the update's RMS matches AdamW's, so AdamW's lr and weight decay carry over). lerp is
    torch's, with its two formulas (ATen's ``lerp``: ``start + w * (end - start)`` for
    ``|w| < 0.5``, else ``end - (end - start) * (1 - w)``).

    The Newton-Schulz iteration runs in the params' dtype (float32 or float64), where
    torch.optim.Muon casts it to bfloat16, as the GPU reference implementation does: on a CPU
    that makes a 1024 x 1024 step take seconds. ``ns_dtype="bfloat16"`` reproduces torch's
    numerics instead (each product, and the iteration's input, rounded to bfloat16 as torch
    rounds them; the products accumulate in float32), still in float32 BLAS.

    How it runs: the momentum (and each update's squared norm, in double) is one fused pass
    on fusedoptim's driver over all params of a group; the iteration is matrix products in
    NumPy's BLAS, with buffers allocated once per shape and reused every step, same-shape
    params stacked into 3-D products in batches that fit in cache (``A A`` is computed as
    ``A A^T``, which BLAS computes as a symmetric product at 0.7-0.8x a general product's
    time); the weight decay and update are a second fused pass. The iteration runs on
    ``blas_threads`` cores while the OpenMP threads wait: on more than one, the batches are
    shared out among worker threads, each calling BLAS at one thread (and a matrix that
    outweighs all the others together runs alone in BLAS at ``blas_threads`` threads), so
    no BLAS workers are left spinning after the step (see ``orthogonalize`` in
    ``fusedoptim.optim.muon``, and ``fusedoptim._blas``). Results are bitwise identical for any
    fusedoptim thread count when ``blas_threads`` is held fixed, and the shared-out batches
    give ``blas_threads=1``'s bits; BLAS itself may round differently at another thread
    count. Memory: one work buffer the size of the params (the updates), plus the
    iteration's buffers per batch shape (and per worker thread).

    For a whole network, use :class:`fusedoptim.MuonWithAuxAdam` (Muon for the hidden
    matrices, AdamW for the rest, in one optimizer), or two optimizers as torch's docs do.

    Args (torch.optim.Muon's names and defaults):
        params: list or dict of 2-D float32/float64 C-contiguous arrays, or param groups.
            Other params are refused (torch's error): optimize them with AdamW.
        lr (float): learning rate, default 1e-3, >= 0. May change between steps.
        weight_decay (float): decoupled weight decay, default 0.1, >= 0.
        momentum (float): default 0.95, >= 0.
        nesterov (bool): default True; the Nesterov form of the update.
        ns_coefficients (tuple): (a, b, c) of the quintic iteration, default
            (3.4445, -4.775, 2.0315).
        eps (float): default 1e-7, >= 0; the norm's floor.
        ns_steps (int): Newton-Schulz iterations, default 5, in [0, 99].
        adjust_lr_fn (str or None): None (= "original") or "match_rms_adamw".
        ns_dtype (str or None): None (the params' dtype) or "bfloat16" (torch's numerics).
            Not in torch.
        blas_threads (int or None): cores for the iteration (worker threads, or BLAS
            threads for one large matrix); None (default): the fusedoptim thread count at
            each step (``fo.set_num_threads``). May be changed between steps
            (``opt.blas_threads``). Not in torch.
        skip_nonfinite (bool): default False; skip steps whose grads are not all finite
            (see :class:`fusedoptim.Optimizer`).

    State per param: ``step`` (torch's Muon keeps none; loading torch's state_dict starts
    it at 0), ``momentum_buffer``.
    """


    spec = MUON_SPEC
    _backend = _MuonBackend()

    def __init__(self, params: ParamsArg, lr: float = 1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                 eps: float = 1e-7, ns_steps: int = NS_STEPS, adjust_lr_fn: str | None = None,
                 *, ns_dtype: str | None = None, blas_threads: int | None = None,
                 skip_nonfinite: bool = False) -> None:
        self.blas_threads = _check_blas_threads(blas_threads)
        self._workspaces: dict[int, MuonWorkspace] = {}
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      nesterov=nesterov, ns_coefficients=ns_coefficients,
                                      eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
                                      ns_dtype=ns_dtype),
                         skip_nonfinite=skip_nonfinite)

    #: refuse params that are not 2-D (off in ZeroRedundancyOptimizer's inner optimizer,
    #: which steps 1-D pieces of matrices checked whole)
    _matrices_only = True

    def _add_group(self, group_in: Mapping[str, Any]) -> None:
        if self._matrices_only:
            check_matrix_params(type(self).__name__, group_in, len(self._names))
        super()._add_group(group_in)

    def _run(self, plan: _kernels.Plan, hyper: Any) -> None:
        gi = next(k for k, c in enumerate(self._caches) if c.plan is plan)
        bf16 = hyper.ns_dtype == "bfloat16"
        ws = self._workspaces.get(gi)
        if ws is None or ws.bf16 != bf16:
            params = self.param_groups[gi]["params"]
            ws = self._workspaces[gi] = MuonWorkspace([p.shape for p in params],
                                                      params[0].dtype, bf16)
        muon_run(plan, hyper, ws, _check_blas_threads(self.blas_threads))


def _check_blas_threads(value: Any) -> int | None:
    if value is None:
        return None
    return v.positive_int(value, "blas_threads")


# -- Muon for the hidden matrices, AdamW for the rest, in one optimizer ---------------------------

#: Keller Jordan's defaults in MuonWithAuxAdam (github.com/KellerJordan/Muon, muon.py)
AUX_MUON_DEFAULTS: dict[str, Any] = dict(lr=0.02, momentum=0.95, weight_decay=0.0)
AUX_ADAM_DEFAULTS: dict[str, Any] = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-10,
                                         weight_decay=0.0)


class MuonWithAuxAdam:
    """Muon for the hidden weight matrices and AdamW for every other param, in one optimizer:
    the interface of the Muon reference implementation's ``MuonWithAuxAdam`` (Keller Jordan,
    github.com/KellerJordan/Muon), which is what torch users write for a whole network
    (torch's own docs step a ``torch.optim.Muon`` and a ``torch.optim.AdamW`` side by side
    instead; that works here too, with :class:`Muon` and :class:`fusedoptim.AdamW`).

    ``param_groups`` is a list of dicts, each with ``"params"`` and ``"use_muon"``:

    * ``use_muon=True``: 2-D params stepped by :class:`Muon` (torch's semantics); any of its
      hyperparameters, with the reference's defaults ``lr=0.02, momentum=0.95,
      weight_decay=0`` and :class:`Muon`'s for the rest (``nesterov=True``, ...).
    * ``use_muon=False``: any params, stepped by :class:`fusedoptim.AdamW`; any of its
      hyperparameters, with the reference's defaults ``lr=3e-4, betas=(0.9, 0.95),
      eps=1e-10, weight_decay=0``.

    Example, as in the reference's README::

        hidden = [W1, W2, W3]                  # 2-D weights of the hidden layers
        other = [embedding, head, b1, b2]      # embeddings, the head, biases and gains
        opt = fo.MuonWithAuxAdam([dict(params=hidden, use_muon=True, lr=0.02),
                                  dict(params=other, use_muon=False, lr=3e-4)])
        opt.step(grads)                        # grads in param order, across the groups

    ``param_groups`` lists the groups in the given order (each dict is the inner optimizer's
    own group, so schedulers and edits reach it; ``use_muon`` stays in it); ``step(grads)``
    takes a list in param order across groups (or a dict by name when every param is named);
    ``state`` and ``state_dict()`` index params in that order, as torch would.
    ``skip_nonfinite`` checks every grad of both parts before either steps.
    """

    def __init__(self, param_groups: Sequence[Mapping[str, Any]], *,
                 skip_nonfinite: bool = False, blas_threads: int | None = None) -> None:
        from .adam import AdamW
        if isinstance(param_groups, dict) or not all(isinstance(g, dict) for g in param_groups):
            raise TypeError("MuonWithAuxAdam takes a list of param group dicts, each with "
                            "'params' and 'use_muon' (True: Muon, False: AdamW)")
        self.skip_nonfinite = v.flag(skip_nonfinite, "skip_nonfinite")
        self.skipped_steps = 0
        muon_groups: list[dict[str, Any]] = []
        adam_groups: list[dict[str, Any]] = []
        self._route: list[tuple[bool, int]] = []
        for i, group in enumerate(param_groups):
            if "use_muon" not in group:
                raise ValueError(f"param_groups[{i}] has no 'use_muon' entry; set it to True "
                                 f"(Muon, for 2-D hidden weights) or False (AdamW)")
            use = v.flag(group["use_muon"], f"param_groups[{i}]['use_muon']")
            body = {k: val for k, val in group.items() if k != "use_muon"}
            defaults = AUX_MUON_DEFAULTS if use else AUX_ADAM_DEFAULTS
            inner = {**defaults, **body}
            target = muon_groups if use else adam_groups
            self._route.append((use, len(target)))
            target.append(inner)
        self.muon: Muon | None = (Muon(muon_groups, blas_threads=blas_threads)
                                  if muon_groups else None)
        self.adam: Optimizer | None = AdamW(adam_groups) if adam_groups else None
        self.param_groups: list[dict[str, Any]] = []
        # per param, in order: (use_muon, flat index in its inner optimizer)
        self._params: list[tuple[bool, int]] = []
        names: list[str | None] = []
        for use, k in self._route:
            inner_opt = self.muon if use else self.adam
            assert inner_opt is not None
            g = inner_opt.param_groups[k]
            g["use_muon"] = use
            self.param_groups.append(g)
            sl = inner_opt._group_slices[k]
            self._params.extend((use, j) for j in sl)
            names.extend(inner_opt._names[j] for j in sl)
        self._names = names

    def _inner(self, use: bool) -> Optimizer:
        opt = self.muon if use else self.adam
        assert opt is not None
        return opt

    @exclusive
    def step(self, grads: Any = None, grad_scale: float | None = None) -> bool:
        """One step of every param that has a grad: Muon's groups, then AdamW's. Returns
        False when skip_nonfinite skipped it (nothing written)."""
        n = len(self._params)
        if isinstance(grads, dict):
            if any(k is None for k in self._names):
                raise TypeError("grads is a dict, but the params were not named; pass a "
                                "list of grads in param order")
            missing = [k for k in self._names if k not in grads]
            if missing or len(grads) != n:
                raise ValueError(f"grads keys do not match the params: missing {missing}")
            flat = [grads[k] for k in self._names]
        elif isinstance(grads, (list, tuple)):
            if len(grads) != n:
                raise ValueError(f"grads has {len(grads)} entries but there are {n} params; "
                                 f"pass one grad (or None) per param, in param order")
            flat = list(grads)
        else:
            raise TypeError(f"grads must be a list of arrays in param order (or a dict keyed "
                            f"by param name), got {type(grads).__name__}")
        parts: dict[bool, list[Any]] = {True: [], False: []}
        for (use, _), g in zip(self._params, flat):
            parts[use].append(g)
        if self.skip_nonfinite:
            from ..grad_utils import all_finite
            present = [g for g in flat if g is not None]
            if present and not all_finite(present):
                self.skipped_steps += 1
                return False
        if self.muon is not None:
            self.muon.step(parts[True], grad_scale=grad_scale)
        if self.adam is not None:
            self.adam.step(parts[False], grad_scale=grad_scale)
        return True

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in (self.muon, self.adam):
            if opt is not None:
                opt.zero_grad(set_to_none)

    @property
    def state(self) -> dict[int, Any]:
        """Param index (in order across the groups) -> its state (the inner optimizer's)."""
        inner = {True: self.muon.state if self.muon is not None else {},
                 False: self.adam.state if self.adam is not None else {}}
        return {i: inner[use][j] for i, (use, j) in enumerate(self._params)
                if j in inner[use]}

    def state_dict(self) -> dict[str, Any]:
        """torch's layout: state by param index across the groups, the groups in order (each
        with its ``use_muon``)."""
        inner: dict[bool, Any] = {
            use: (opt.state_dict() if opt is not None else {"state": {}, "param_groups": []})
            for use, opt in ((True, self.muon), (False, self.adam))}
        state = {}
        for i, (use, j) in enumerate(self._params):
            if j in inner[use]["state"]:
                state[i] = inner[use]["state"][j]
        groups = []
        at = 0
        for use, k in self._route:
            g = dict(inner[use]["param_groups"][k])
            count = len(g["params"])
            g["params"] = list(range(at, at + count))
            at += count
            g.pop("param_names", None)
            groups.append(g)
        return {"state": state, "param_groups": groups}

    @exclusive
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint of this layout; a rejected one leaves both parts untouched."""
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise TypeError("state_dict must be a dict with 'state' and 'param_groups', as "
                            "returned by MuonWithAuxAdam.state_dict()")
        groups = state_dict["param_groups"]
        if len(groups) != len(self._route):
            raise ValueError(f"state_dict has {len(groups)} param groups, this optimizer has "
                             f"{len(self._route)}")
        split: dict[bool, dict[str, Any]] = {True: {"state": {}, "param_groups": []},
                                             False: {"state": {}, "param_groups": []}}
        for i, (use, k) in enumerate(self._route):
            g = dict(groups[i])
            if g.get("use_muon", use) != use:
                raise ValueError(f"state_dict param_groups[{i}] has use_muon="
                                 f"{g.get('use_muon')!r}, this optimizer's has {use}")
            inner_opt = self._inner(use)
            g["params"] = list(inner_opt._group_slices[k])
            split[use]["param_groups"].append(g)
        for i, st in state_dict["state"].items():
            if not isinstance(i, int) or not 0 <= i < len(self._params):
                raise ValueError(f"state_dict['state'] has key {i!r}; expected param indices "
                                 f"0..{len(self._params) - 1}")
            use, j = self._params[i]
            split[use]["state"][j] = st
        loaded: list[tuple[Optimizer, Any]] = []
        try:
            for use in (True, False):
                opt = self.muon if use else self.adam
                if opt is not None:
                    loaded.append((opt, opt.state_dict()))
                    opt.load_state_dict(split[use])
        except Exception:
            for opt, saved in loaded[:-1]:     # the last one refused: it is unchanged
                opt.load_state_dict(saved)
            raise
