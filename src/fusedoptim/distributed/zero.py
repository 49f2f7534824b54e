"""ZeroRedundancyOptimizer: optimizer state sharded over MPI ranks (ZeRO stages 1 and 2)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from mpi4py import MPI

from .. import _kernels
from .. import _validation as v
from .._backend import FusedBackend
from .._exclusive import exclusive
from .._layout import group_arrays, parse_params
from .._validation import label
from ..flat import FlatParams
from .._gate import inv_grad_scale
from ..grad_utils import CLIP_EPS
from .._precision import ABSMAX, resolve
from .. import optim as fo_optim
from ..optim.muon import Muon, MuonWorkspace, adjusted_ratio, check_matrix_params, \
    momentum_pass, orthogonalize, update_pass
from ..optimizer import Optimizer
from ._collectives import Shards, fold, gather_parts, mpi_type, ring_reduce_scatter, \
    scale_, shard_units, sharded_norm, slices, world

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from .._typing import FloatArray, OptimizerStateDict, ParamGroup

_NONFINITE = _kernels.REDUCE_IDS["nonfinite"]
_REDUCE_NAMES = {i: k for k, i in _kernels.REDUCE_IDS.items()}
#: specs whose step is one chunk-kernel pass per element (any shard steps alone), and those
#: whose ``run`` only reduces sums with Plan.reduce between passes: LAMB's and LARS's
#: per-tensor norms, Prodigy's two global sums for its D estimate (their sums are gathered
#: across the ranks). Muon's run also needs whole matrices: _MuonShard completes them.
_GATHERED_RUNS = ("lamb", "lars", "prodigy", "muon")
#: fusedoptim classes that are not fo.Optimizer specs, and why they are not sharded
_NOT_OPTIMIZER = {
    "Adafactor": "Adafactor's factored second moment sums each whole matrix's rows and "
                 "columns, which span the shards",
    "LBFGS": "L-BFGS takes a closure and runs a line search with dot products over the whole "
             "flat param vector; run it data-parallel with allreduce_(grads) inside the "
             "closure and a plain fo.LBFGS on every rank",
    "SparseAdam": "SparseAdam steps the rows a SparseGrad touches, not a flat buffer that "
                  "can be cut into shards; allreduce_ cannot average SparseGrads either",
    "MuonWithAuxAdam": "it steps its groups with two optimizer classes (Muon and AdamW), and "
                       "ZeroRedundancyOptimizer shards one; wrap the use_muon groups in "
                       "ZeroRedundancyOptimizer(..., fo.Muon) and the others in a second "
                       "one with fo.AdamW (both shard)"}
#: element width -> (NumPy view type, MPI type) for moving params without arithmetic
_WIDTH_TYPES = {2: (np.uint16, MPI.UINT16_T), 4: (np.uint32, MPI.UINT32_T),
                8: (np.uint64, MPI.UINT64_T)}
#: the format tag of sharded_state_dict()
SHARDED_FORMAT = "fusedoptim.zero.sharded/1"


def shardable(optimizer_class: object) -> bool:
    """Whether ZeroRedundancyOptimizer can shard `optimizer_class`: a fusedoptim optimizer
    class on the fused kernels whose step is element-wise, or LAMB, LARS, Prodigy or Muon."""
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)
            and getattr(optimizer_class, "spec", None) is not None):
        return False
    spec = optimizer_class.spec
    return isinstance(optimizer_class._backend, FusedBackend) and (
        spec.run is None or spec.name in _GATHERED_RUNS)


def _empty(dtype: np.dtype[Any]) -> FloatArray:
    """A zero-size array: the stand-in param (and its grad) of a gathered-sums inner
    optimizer (see _Group.standin)."""
    return np.zeros(0, dtype=dtype)


class _Gathered:
    """The sums of one group, gathered: each rank's per-segment partials, one Allgatherv,
    folded in the single-process order (bitwise the unsharded Plan.reduce). The inner
    optimizer's last tensor is its zero-size stand-in (_Group.standin), whose row is 0."""

    def __init__(self, comm: MPI.Intracomm, shards: Shards, pieces: Sequence[tuple[int, int,
                 int]]) -> None:
        self.comm = comm
        self.shards = shards
        self.local_tensors = np.array([t for t, _, _ in pieces], dtype=np.intp)

    def combine(self, local_parts: NDArray[np.float64], reduce_id: int
                ) -> tuple[NDArray[np.float64], tuple[float, ...]]:
        sh = self.shards
        outputs = _kernels.REDUCE_OUTPUTS[_REDUCE_NAMES[reduce_id]]
        if any(how != "sum" for _, how in outputs):
            raise NotImplementedError("only summed reductions are gathered across ranks")
        counts = [sh.seg[r + 1] - sh.seg[r] for r in range(len(sh.seg) - 1)]
        # the shard's plan must hold exactly its run of the group's segments
        if local_parts.shape[0] != counts[self.comm.Get_rank()]:
            raise AssertionError(f"shard plan has {local_parts.shape[0]} segments, its run of "
                                 f"the group's unit table {counts[self.comm.Get_rank()]}")
        parts = gather_parts(self.comm, local_parts.reshape(-1, len(outputs)), counts)
        per_tensor, totals = fold(parts, sh.seg_t, sh.ntensors)
        mine = np.concatenate([per_tensor[self.local_tensors], np.zeros((1, len(outputs)))])
        return mine, tuple(float(x) for x in totals)


class _ShardPlan:
    """The inner optimizer's plan, with reduce() returning whole-tensor results: the shard's
    partials gathered and folded with every other rank's."""

    def __init__(self, plan: _kernels.Plan, gathered: _Gathered) -> None:
        self._plan = plan
        self._gathered = gathered

    def __getattr__(self, name: str) -> Any:
        return getattr(self._plan, name)

    def reduce(self, reduce_id: int, column: int = 0, stop_early: bool = False,
               num_threads: int = 0) -> tuple[NDArray[np.float64], tuple[float, ...]]:
        self._plan.reduce(reduce_id, column, stop_early, num_threads)
        return self._gathered.combine(self._plan.partials(), reduce_id)


class _MuonShard:
    """Muon's step on this rank's pieces of one group (the inner optimizer's ``_run``): the
    three phases of ``fusedoptim.optim.muon.muon_run`` with communication between them.

    1. The momentum pass on the pieces writes their updates into the workspace's ``line``:
       the whole matrices this rank's shard touches, laid end to end (its shard, plus the
       rest of the first and the last matrix when other ranks own part of them). Each
       update's squared norm is folded from every rank's per-segment partials (_Gathered:
       the single-process sums).
    2. The exchange: each rank receives the parts of its line that other ranks own (at most
       the two matrices cut at its shard's ends) and sends theirs, point to point. Each rank
       then iterates Newton-Schulz on the matrices of its line (a matrix cut between ranks
       is iterated on each of them, identically: same input, same BLAS calls).
    3. The update pass on the pieces (lr times the whole matrix's adjusted ratio); the
       params are all-gathered afterwards by the ZeRO step, as for every optimizer.
    """

    #: the exchange's message tag (on the ZeRO optimizer's own communicator)
    TAG = 23

    def __init__(self, p2p: MPI.Intracomm, g: _Group, inner: Muon) -> None:
        self.p2p = p2p
        self.g = g
        self.inner = inner
        self.tensors = [t for t, _, _ in g.pieces]
        self.ws: MuonWorkspace | None = None
        self.updates: list[FloatArray] = []
        starts = np.cumsum([0] + [a.size for a in g.arrays]).tolist()

        def window(r: int) -> tuple[int, int]:
            """Rank r's line, in elements of the group laid end to end."""
            mine = g.shards.pieces[r]
            return (starts[mine[0][0]], starts[mine[-1][0] + 1]) if mine else (0, 0)
        rank = p2p.Get_rank()
        lo, hi = window(rank)
        #: (rank, start, stop) in this rank's line: what it receives from that rank, and
        #: what it sends to it
        self.receives: list[tuple[int, int, int]] = []
        self.sends: list[tuple[int, int, int]] = []
        for q in range(p2p.Get_size()):
            if q == rank:
                continue
            a, b = max(lo, g.shards.elem[q]), min(hi, g.shards.elem[q + 1])
            if a < b:
                self.receives.append((q, a - lo, b - lo))
            qlo, qhi = window(q)
            a, b = max(qlo, g.lo), min(qhi, g.hi)
            if a < b:
                self.sends.append((q, a - lo, b - lo))

    def workspace(self, bf16: bool) -> MuonWorkspace:
        """The workspace (rebuilt when ns_dtype changes), and the pieces' update views."""
        if self.ws is None or self.ws.bf16 != bf16:
            g = self.g
            # (from the first to the last tensor of the pieces: a zero-size param between
            # them has no piece, and no element in the line)
            laid = range(self.tensors[0], self.tensors[-1] + 1) if self.tensors else range(0)
            ws = MuonWorkspace([a.shape for a in g.arrays], g.dtype, bf16, line=laid)
            self.updates = (slices(ws.updates, g.pieces)
                            + ([] if g.standin is None else [_empty(g.dtype)]))
            self.ws = ws
        return self.ws

    def exchange(self, line: FloatArray) -> None:
        """Complete the cut matrices of `line` (non-blocking sends and receives, then one
        wait: no order between the pairs to deadlock on). Moved as unsigned words of the
        same width: no arithmetic happens."""
        words = line.view(_WIDTH_TYPES[line.dtype.itemsize][0])
        requests = [self.p2p.Irecv(words[a:b], source=q, tag=self.TAG)
                    for q, a, b in self.receives]
        requests += [self.p2p.Isend(words[a:b], dest=q, tag=self.TAG)
                     for q, a, b in self.sends]
        MPI.Request.Waitall(requests)

    def run(self, plan: _kernels.Plan, hyper: Any) -> None:
        g = self.g
        assert g.gathered is not None
        ws = self.workspace(hyper.ns_dtype == "bfloat16")
        wplan = ws.work_plan(plan, self.updates)
        per_piece = momentum_pass(_ShardPlan(wplan, g.gathered), plan, hyper, ws.dtype)
        assert ws.line is not None
        self.exchange(ws.line)
        k = len(self.tensors)
        sq_norms = np.zeros(len(g.arrays))
        sq_norms[self.tensors] = per_piece[:k, 0]
        wanted = np.zeros(len(g.arrays), dtype=bool)
        wanted[self.tensors] = wplan.active_array[:k] != 0
        orthogonalize(ws, sq_norms, wanted, hyper, self.inner.blas_threads)
        ratios = [adjusted_ratio(g.arrays[t].shape, hyper.adjust_lr_fn) for t in self.tensors]
        update_pass(wplan, hyper.lr, ratios + [1.0] * (len(self.updates) - k))


class _Group:
    """One param group's shard on this rank."""

    def __init__(self, arrays: list[FloatArray], arena: FlatParams | None,
                 shards: Shards, rank: int) -> None:
        self.arrays = arrays
        self.arena = arena
        self.shards = shards
        self.pieces = shards.pieces[rank]
        self.views = slices(arrays, self.pieces)
        self.flat = _kernels.tile_view(arrays) if len(arrays) > 1 else arrays[0].reshape(-1)
        self.counts = shards.counts()
        self.displs = list(shards.elem[:-1])
        self.lo, self.hi = shards.elem[rank], shards.elem[rank + 1]
        self.dtype = arrays[0].dtype
        #: the grads' dtype (ZeRO's grads are float32 or float64: float32 for half params)
        self.wire_dtype = np.dtype(np.float32) if self.dtype.itemsize == 2 else self.dtype
        self.size = shards.elem[-1]
        #: the inner optimizers stepping this rank's pieces, each with the indices (into
        #: pieces) of its own: one, or under int8/int4 state two, so that each piece is
        #: quantized as its whole param is (min_quantized_size decides by the param's size)
        self.inners: list[tuple[Optimizer, list[int]]] = []
        self.gathered: _Gathered | None = None
        #: gathered sums (LAMB, LARS, Prodigy): the inner optimizer also steps a zero-size
        #: stand-in param, always with a grad. So its run, and the collectives in it, happen
        #: on every rank at every step, also on a rank that owns no element or whose pieces
        #: have no grad this step; and a Prodigy inner updates its D with everyone's sums.
        self.standin: FloatArray | None = None
        self.grad_shard: FloatArray | None = None        # stage 2: this shard's mean grad
        self.grad_views: list[FloatArray] = []


def _agree(comm: MPI.Intracomm, description: str, error: BaseException | None,
           what: str) -> None:
    """One allgather, so that a rank whose layout or options differ (or are invalid) makes
    every rank raise, instead of a hang in the next collective."""
    seen = comm.allgather((description, None if error is None else
                           f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    failed = [(r, e) for r, (_, e) in enumerate(seen) if e is not None]
    if failed:
        raise ValueError(f"ZeroRedundancyOptimizer: {what} failed on rank(s) "
                         + "; ".join(f"{r}: {e}" for r, e in failed))
    differ = [r for r, (d, _) in enumerate(seen) if d != seen[0][0]]
    if differ:
        raise ValueError(
            f"ZeroRedundancyOptimizer ({what}): the ranks disagree on the params or options; "
            f"every rank must give the same param groups (shapes, dtypes, names, order) and "
            f"options. Rank 0 has {seen[0][0]}; rank(s) {differ} differ, e.g. rank "
            f"{differ[0]} has {seen[differ[0]][0]}")


def _describe(optimizer_class: type, stage: int, defaults: Mapping[str, Any],
              groups: list[tuple[list[FloatArray], list[str | None], dict[str, Any]]]) -> str:
    parts = [f"{optimizer_class.__module__}.{optimizer_class.__qualname__}", f"stage={stage}",
             f"defaults={sorted((k, repr(x)) for k, x in defaults.items())}"]
    for gi, (arrays, names, over) in enumerate(groups):
        parts.append(f"group {gi}: dtype={arrays[0].dtype} shapes={[a.shape for a in arrays]}"
                     f" names={names} options={sorted((k, repr(x)) for k, x in over.items())}")
    return "; ".join(parts)


class ZeroRedundancyOptimizer:
    """Optimizer state sharded over the ranks of an MPI communicator (ZeRO; torch's
    ``torch.distributed.optim.ZeroRedundancyOptimizer``, on mpi4py).

    ``ZeroRedundancyOptimizer(params, optimizer_class, *, comm=None, stage=1, **defaults)``
    wraps a fusedoptim optimizer class (``fo.AdamW`` ...), with its hyperparameters and
    constructor options in ``defaults``. Every rank builds it with the same params layout
    (checked: one allgather of a layout description at construction; a mismatch raises
    ValueError on every rank). ``comm=None`` is ``MPI.COMM_WORLD``.

    Each param group's params, laid end to end, are split into one contiguous shard per
    rank on the driver's work units (16K elements), balanced by elements. Each rank keeps
    optimizer state for its shard only and steps it with the usual fused kernel, on views of
    its slices of the params (no copies). ``step(grads)`` takes this rank's local grads:

    * stage 1: the grads are averaged across ranks in place (``allreduce_``), this rank
      steps its shard, and the params are all-gathered;
    * stage 2: the grads are reduce-scattered, so this rank receives only its shard's mean
      (into a buffer of the shard's size; the grads passed in are only read), then it steps
      and the params are all-gathered. ``reduce_scatter="ring"`` (default) runs the ring
      algorithm on MPI point-to-point calls, which measured 6-8x faster than
      ``MPI_Reduce_scatter`` on Open MPI's shared-memory transport here; ``"mpi"`` calls
      ``Ireduce_scatter`` (docs/distributed.md has the numbers). The same choice picks stage
      1's allreduce (``allreduce_(..., algorithm=...)``: the ring, or ``Iallreduce``).

    When a group's params tile one buffer (a :class:`~fusedoptim.FlatParams`, or views laid
    end to end) the reduce-scatter reads and the all-gather writes that buffer in place;
    otherwise the grads and params are packed into a contiguous buffer (one copy each way).

    Since each shard's step is the single-process computation on those elements (element-wise
    kernels; LAMB's and LARS's per-tensor norms, Prodigy's two sums for its D estimate and
    Muon's update norms are folded from every rank's per-segment partial sums in the
    single-process order), the
    params equal a single process stepping
    the mean gradient: bitwise with 2 ranks, and with more whenever the sum of the ranks'
    grads is exact, whatever its order (the all-gather makes the params bitwise the same on
    every rank in any case).

    Also kept, with global meaning: ``param_groups`` (the whole params; schedulers work;
    ``add_param_group`` is a collective),
    ``step(grads, *, grad_scale=None, max_grad_norm=None)`` (clip the mean grad by its global
    L2 norm first; ``last_grad_norm`` holds the norm), ``skip_nonfinite`` (checked on every
    shard, one allreduce: every rank skips together), ``grad_scale``, grads of None (the
    param is skipped, as in torch; it must be None on every rank, which one small Allreduce
    per step checks, overlapped with the grads' reduction: otherwise ValueError on every
    rank, with no param or state changed).

    ``state_dtype="int8"``, and ``"int4"`` with ``rank1_normalization=False``: each piece
    is quantized as its whole param is (``min_quantized_size`` decides by the param's size,
    and pieces start on quantization blocks), so the state is bitwise the single-process
    one. With LAMB and LARS, each param group's params must all be on one side of
    ``min_quantized_size`` (e.g. ``min_quantized_size=0``, or small params in a group of
    their own). Prodigy: one param group (its D is shared by all groups).

    Checkpoints: ``consolidate_state_dict(to=0)`` (a collective), then ``state_dict()`` on
    that rank, give the single-process format; ``load_state_dict`` takes that format at any
    world size; ``sharded_state_dict()`` / ``load_sharded_state_dict(parts)`` save each
    rank's part and reshard from any world size.

    Muon (``fo.Muon``): its momentum buffer is sharded like any state, and the momentum pass
    runs on the shard; each update's norm is folded from every rank's partial sums; the
    ranks exchange the parts of the matrices cut between them (point to point, at most two
    matrices per rank), each rank iterates Newton-Schulz on the matrices its shard touches
    (a cut matrix on each of its ranks), and steps its shard. Bitwise the single process as
    above, at the same BLAS thread count (``blas_threads``).

    Not supported: MuonWithAuxAdam (two optimizer classes: wrap its Muon groups and its
    AdamW groups in one ZeroRedundancyOptimizer each), int4 state with rank-1 normalization
    (whole matrices' row and column maxima), stochastic rounding (its stream is keyed by
    each param's own element indices).
    """

    def __init__(self, params: Any, optimizer_class: type[Optimizer], *, comm: Any = None,
                 stage: int = 1, reduce_scatter: str = "ring", **defaults: Any) -> None:
        c = self.comm = world(comm)
        self.rank, self.world_size = c.Get_rank(), c.Get_size()
        error: BaseException | None = None
        description = ""
        try:
            if reduce_scatter not in ("ring", "mpi"):
                raise ValueError(f"reduce_scatter must be 'ring' (point-to-point ring, the "
                                 f"default) or 'mpi' (MPI_Reduce_scatter and Iallreduce), got "
                                 f"{reduce_scatter!r}")
            self.reduce_scatter = reduce_scatter
            description = self._check_local(params, optimizer_class, stage, defaults)
            description += f"; reduce_scatter={reduce_scatter}"
        except Exception as e:      # any failure here is reported on every rank below
            error = e
        _agree(c, description, error, "construction")
        # The ring's point-to-point messages go over a communicator of their own, so they
        # never match the caller's messages on `comm`.
        self._p2p = c.Dup()
        self._ring_buffers: dict[np.dtype[Any], list[FloatArray]] = {}
        self._build()

    # -- construction -----------------------------------------------------------------------
    def _check_local(self, params: Any, optimizer_class: type[Optimizer], stage: int,
                     defaults: dict[str, Any]) -> str:
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)
                and getattr(optimizer_class, "spec", None) is not None):
            name = getattr(optimizer_class, "__name__", "")
            if name in _NOT_OPTIMIZER and getattr(fo_optim, name, None) is optimizer_class:
                raise TypeError(f"optimizer_class={name} cannot be sharded by "
                                f"ZeroRedundancyOptimizer: {_NOT_OPTIMIZER[name]}")
            raise TypeError(f"optimizer_class must be a fusedoptim optimizer class such as "
                            f"fo.AdamW, got {optimizer_class!r}")
        if not shardable(optimizer_class):
            raise TypeError(f"optimizer_class={optimizer_class.__name__} cannot be sharded by "
                            f"ZeroRedundancyOptimizer: its step needs whole tensors at once, "
                            f"which a shard of the params cannot give. It takes the "
                            f"element-wise optimizers, LAMB, LARS, Prodigy and Muon")
        if isinstance(stage, bool) or stage not in (1, 2):
            raise ValueError(f"stage must be 1 (shard the optimizer state) or 2 (also "
                             f"reduce-scatter the grads), got {stage!r}")
        defaults = dict(defaults)
        self.skip_nonfinite = v.flag(defaults.pop("skip_nonfinite", False), "skip_nonfinite")
        if defaults.get("stochastic_rounding"):
            raise ValueError("stochastic_rounding=True is not supported by "
                             "ZeroRedundancyOptimizer yet (its rounding stream is keyed by "
                             "each param's own element indices); use master_weights")
        self.optimizer_class = optimizer_class
        self._inner_class = _inner_class(optimizer_class)
        self.stage = stage
        self._options = defaults
        groups_in = parse_params(params)
        parsed = []
        everything: list[FloatArray] = []
        all_names: list[str | None] = []
        for group_in in groups_in:
            if not isinstance(group_in, Mapping) or "params" not in group_in:
                raise TypeError("each param group must be a dict with a 'params' entry")
            arena, names, arrays = group_arrays(group_in)
            self._check_whole_params(group_in, arrays, names, len(everything))
            if len({a.dtype for a in arrays}) > 1:
                raise TypeError("params of one group have mixed dtypes; put params of each "
                                "dtype in a param group of their own")
            everything += arrays
            all_names += names
            over = {k: x for k, x in group_in.items() if k != "params"}
            parsed.append((arrays, names, over, arena))
        named = [n for n in all_names if n is not None]
        if len(set(named)) != len(named):
            raise ValueError("param names must be unique across groups")
        self._check_one_group(optimizer_class, len(parsed))
        clash = _kernels.find_overlap(everything)
        if clash is not None:
            raise ValueError(f"params[{clash[0]}] and params[{clash[1]}] share memory; give "
                             f"each param its own buffer")
        # The plain optimizer on one tiny param: checks the options and hyperparameters, and
        # gives the group defaults as the class fills them in.
        probe = self._inner_class([{"params": [np.zeros(1, dtype=a[0].dtype)], **o}
                                   for a, _, o, _ in parsed], **defaults)
        self.defaults = probe.defaults
        self.min_quantized_size = probe.min_quantized_size
        for arrays, _, _, _ in parsed:
            self._check_quantized_split(probe, arrays)
        if probe.state_dtype == "int4" and probe.rank1_normalization:
            # The plain optimizer would rank-1 normalize these params' non-negative moments
            # (row and column maxima of whole matrices); a rank's 1-D pieces would not.
            whole = resolve(optimizer_class.__name__, probe._kernel, everything[0].dtype,
                            probe.master_weights, "int4", probe.min_quantized_size,
                            False, tuple(a.shape for a in everything))
            if whole.rank1:
                raise ValueError("state_dtype='int4' with rank1_normalization=True (the "
                                 "default) is not supported by ZeroRedundancyOptimizer: "
                                 "rank-1 normalization scales each matrix by its row and "
                                 "column maxima, which span the shards; pass "
                                 "rank1_normalization=False (blockwise int4, as torchao) or "
                                 "state_dtype='int8'")
        quant = probe._layouts[0].precision.quant
        #: elements per absmax of quantized state (None: no quantized state)
        self._block = None if quant is None else quant[1]
        #: elements per byte of quantized codes (int4: two)
        self._per_code = 2 if quant is not None and quant[0] == 4 else 1
        self._probe_groups = [{k: x for k, x in g.items() if k != "params"}
                              for g in probe.param_groups]
        self._parsed = parsed
        self._names = all_names
        return _describe(optimizer_class, stage, {**defaults,
                                                  "skip_nonfinite": self.skip_nonfinite},
                         [(a, n, o) for a, n, o, _ in parsed])

    def _build(self) -> None:
        self.param_groups: list[ParamGroup] = []
        self._groups: list[_Group] = []
        self._group_slices: list[range] = []
        self.skipped_steps = 0
        self.last_grad_norm: float | None = None
        self._consolidated: OptimizerStateDict | None = None
        self._checked: list[tuple[Any, ...] | None] = [None] * len(self._parsed)
        for (arrays, _, _, arena), hyper in zip(self._parsed, self._probe_groups):
            self._add_group(arrays, arena, hyper)
        del self._parsed, self._probe_groups

    def _add_group(self, arrays: list[FloatArray], arena: FlatParams | None,
                   hyper: dict[str, Any]) -> None:
        """Shard a checked group and build its inner optimizer(s)."""
        start = self._group_slices[-1].stop if self._group_slices else 0
        g = _Group(arrays, arena, shard_units(arrays, self.world_size), self.rank)
        group: ParamGroup = dict(hyper)
        group["params"] = arrays
        self.param_groups.append(group)
        self._groups.append(g)
        self._group_slices.append(range(start, start + len(arrays)))
        if len(self._checked) < len(self._groups):
            self._checked.append(None)
        if self.optimizer_class.spec.run is not None:
            g.gathered = _Gathered(self.comm, g.shards, g.pieces)
            g.standin = _empty(g.dtype)
        for options, idx in self._inner_split(g):
            inner = self._inner_class([{"params": self._inner_params(g, idx), **hyper}],
                                      **options)
            if isinstance(inner, Muon):
                inner._run = _MuonShard(self._p2p, g, inner).run  # type: ignore[method-assign]
            elif g.gathered is not None:
                self._gather_sums(inner, g.gathered)
            g.inners.append((inner, idx))
        if self.stage == 2:
            g.grad_shard = np.empty(g.hi - g.lo, dtype=g.dtype)
            g.grad_views = [g.grad_shard[a - g.lo:b - g.lo] for a, b in
                            self._local_offsets(g)]

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a param group (torch's ``add_param_group``), sharded like the others. A
        collective: every rank adds the same group, which is checked as the constructor
        checks its groups (one allgather; a mismatch or a bad group raises on every rank)."""
        error: BaseException | None = None
        description = ""
        try:
            if not isinstance(param_group, Mapping) or "params" not in param_group:
                raise TypeError("param_group must be a dict with a 'params' entry")
            arena, names, arrays = group_arrays(param_group)
            self._check_whole_params(param_group, arrays, names, len(self._names))
            if len({a.dtype for a in arrays}) > 1:
                raise TypeError("params of one group have mixed dtypes; put params of each "
                                "dtype in a param group of their own")
            named = [n for n in self._names + names if n is not None]
            if len(set(named)) != len(named):
                raise ValueError("param names must be unique across groups")
            clash = _kernels.find_overlap([p for g in self._groups for p in g.arrays]
                                          + arrays)
            if clash is not None:
                raise ValueError(f"params[{clash[0]}] and params[{clash[1]}] share memory; "
                                 f"give each param its own buffer")
            self._check_one_group(self.optimizer_class, len(self.param_groups) + 1)
            over = {k: x for k, x in param_group.items() if k != "params"}
            probe = self._inner_class(
                [{"params": [np.zeros(1, dtype=arrays[0].dtype)], **over}], **self._options)
            self._check_quantized_split(probe, arrays)
            hyper = {k: x for k, x in probe.param_groups[0].items() if k != "params"}
            description = _describe(self.optimizer_class, self.stage, {},
                                    [(arrays, names, over)])
        except Exception as e:      # reported on every rank by _agree
            error = e
        _agree(self.comm, description, error, "add_param_group")
        self._names.extend(names)
        self._add_group(arrays, arena, hyper)
        self._consolidated = None

    def _check_quantized_split(self, probe: Optimizer, arrays: list[FloatArray]) -> None:
        """Quantized state with gathered sums (LAMB, LARS): a piece is quantized by its
        whole param's size, so a rank's pieces of params on both sides of
        min_quantized_size go to two inner optimizers (_inner_split); their plans cut the
        work units differently from the group's, and the gathered sums would not fold in
        the single-process order. So a group's params must be on one side."""
        limit = probe.min_quantized_size
        if (probe.state_dtype in ("int8", "int4") and self.optimizer_class.spec.run is not None
                and any(a.size >= limit for a in arrays)
                and any(a.size < limit for a in arrays)):
            raise ValueError(
                f"state_dtype={probe.state_dtype!r} with {self.optimizer_class.__name__} under "
                f"ZeroRedundancyOptimizer needs each param group's params on one side of "
                f"min_quantized_size={limit} (this group's range from "
                f"{min(a.size for a in arrays)} to {max(a.size for a in arrays)} elements): "
                f"pass min_quantized_size=0 (quantize every param's state), or put the "
                f"small params in a param group of their own, or use state_dtype='bfloat16'")

    def _check_whole_params(self, group_in: Mapping[str, Any], arrays: list[FloatArray],
                            names: list[str | None], start: int) -> None:
        """Check a group's params as the plain optimizer would (its inner optimizer sees
        1-D pieces only): fusedoptim's param checks, and Muon's 2-D check (its own error)."""
        for i, a in enumerate(arrays):
            _kernels.check_param(a, label("params", start + i, names[i]))
        if issubclass(self.optimizer_class, Muon):
            check_matrix_params(self.optimizer_class.__name__, group_in, start)

    @staticmethod
    def _check_one_group(optimizer_class: type[Optimizer], ngroups: int) -> None:
        """Prodigy's D is shared by all param groups, and each group here steps through an
        inner optimizer of its own, with a D of its own: one group only."""
        if optimizer_class.spec.name == "prodigy" and ngroups > 1:
            raise ValueError(f"ZeroRedundancyOptimizer with Prodigy takes one param group, "
                             f"got {ngroups}: Prodigy's D estimate is shared by all groups, "
                             f"and the sharded step keeps one D per group; put the params in "
                             f"one group")

    def _inner_split(self, g: _Group) -> list[tuple[dict[str, Any], list[int]]]:
        """The inner optimizers' options and pieces. Quantized state: a piece of a param
        that is quantized whole (size >= min_quantized_size) is quantized however small the
        piece (min_quantized_size=1), the pieces of smaller params keep float32 state."""
        idx = list(range(len(g.pieces)))
        if not idx:
            # gathered sums: the stand-in takes part in them on a rank owning no element
            return [] if g.standin is None else [(self._options, idx)]
        if self._options.get("state_dtype") not in ("int8", "int4"):
            return [(self._options, idx)]
        limit = self.min_quantized_size
        big = [j for j in idx if g.arrays[g.pieces[j][0]].size >= limit]
        small = [j for j in idx if g.arrays[g.pieces[j][0]].size < limit]
        out = []
        if big:
            out.append(({**self._options, "min_quantized_size": 1}, big))
        if small:
            out.append(({**self._options, "min_quantized_size": 1 << 62}, small))
        return out

    @staticmethod
    def _local_offsets(g: _Group) -> list[tuple[int, int]]:
        """Each piece's place among the group's elements laid end to end."""
        starts = np.concatenate([[0], np.cumsum([a.size for a in g.arrays])]).tolist()
        return [(int(starts[t]) + a, int(starts[t]) + b) for t, a, b in g.pieces]

    @staticmethod
    def _inner_params(g: _Group, idx: list[int]) -> list[FloatArray]:
        """An inner optimizer's params: views of its pieces, and the stand-in, if any."""
        return [g.views[j] for j in idx] + ([] if g.standin is None else [g.standin])

    @staticmethod
    def _gather_sums(inner: Optimizer, gathered: _Gathered) -> None:
        """Make the inner optimizer's reductions return the whole group's sums."""
        run = inner._run

        def shard_run(plan: _kernels.Plan, *args: Any) -> None:
            run(_ShardPlan(plan, gathered), *args)   # type: ignore[arg-type]
        inner._run = shard_run  # type: ignore[method-assign, assignment]

    # -- the step ---------------------------------------------------------------------------
    def _grad_list(self, grads: Any) -> list[list[FloatArray | None]]:
        """The grads per group, checked against the params (None: no grad this step)."""
        if grads is None:
            if any(g.arena is None for g in self._groups):
                raise ValueError("step() without grads needs every group built from a "
                                 "FlatParams; pass the grads")
            return [list(g.arena.grads.values()) if isinstance(g.arena.grads, Mapping)
                    else list(g.arena.grads) for g in self._groups if g.arena is not None]
        if isinstance(grads, FlatParams):
            grads = grads.grads
        if isinstance(grads, Mapping):
            if any(n is None for n in self._names):
                raise TypeError("grads is a dict, but the params were not named; pass a list "
                                "of grads in param order")
            missing = [n for n in self._names if n not in grads]
            if missing or len(grads) != len(self._names):
                raise ValueError(f"grads must have one entry per param name; missing "
                                 f"{missing[:5]}, extra "
                                 f"{[k for k in grads if k not in self._names][:5]}")
            flat = [grads[n] for n in self._names]
        elif isinstance(grads, (list, tuple)):
            flat = list(grads)
        elif isinstance(grads, np.ndarray) and len(self._names) == 1:
            flat = [grads]
        else:
            raise TypeError(f"grads must be a list of arrays in param order, a dict keyed "
                            f"by param name or a FlatParams, got {type(grads).__name__}")
        if len(flat) != len(self._names):
            raise ValueError(f"expected {len(self._names)} grads (one per param), got "
                             f"{len(flat)}")
        out = []
        for gi, g in enumerate(self._groups):
            sl = self._group_slices[gi]
            mine = flat[sl.start:sl.stop]
            for k, (gr, p) in enumerate(zip(mine, g.arrays)):
                if gr is None:
                    continue
                lab = label("grads", sl.start + k, self._names[sl.start + k])
                if not isinstance(gr, np.ndarray):
                    raise TypeError(f"{lab} must be a numpy.ndarray or None, got "
                                    f"{type(gr).__name__}")
                if gr.shape != p.shape:
                    raise ValueError(f"{lab} has shape {gr.shape}, its param {p.shape}")
                mpi_type(gr.dtype, lab)
                if not gr.flags.c_contiguous:
                    raise ValueError(f"{lab} must be C-contiguous; pass "
                                     f"np.ascontiguousarray(grad)")
                if self.stage == 1 and not gr.flags.writeable:
                    raise ValueError(f"{lab} is read-only; stage 1 averages the grads in "
                                     f"place: pass a writeable array (or use stage=2, which "
                                     f"only reads them)")
            out.append(list(mine))
        return out

    def _post_none_flags(self, per_group: list[list[FloatArray | None]]
                         ) -> tuple[MPI.Request, NDArray[np.uint8]]:
        """Start one small non-blocking Allreduce: MAX of each param's "has no grad" flag
        and of its complement, i.e. the OR and the AND over the ranks (_check_none_flags
        reads them). Non-blocking, so that it completes during the grads' reduction
        instead of adding a synchronization of its own: measured at 3 ranks on 2 shared
        cores, a blocking one made a small model's step 30% slower."""
        none = np.array([gr is None for grads in per_group for gr in grads], dtype=np.uint8)
        flags = np.concatenate([none, 1 - none])
        return self.comm.Iallreduce(MPI.IN_PLACE, flags, op=MPI.MAX), flags

    def _check_none_flags(self, request: MPI.Request, flags: NDArray[np.uint8],
                          per_group: list[list[FloatArray | None]]) -> None:
        """Every rank skips the same params: a param whose grad is None on some ranks only
        raises ValueError on every rank, before any param or state changes (a DDP-style
        average with zeros would change the result silently)."""
        request.Wait()
        n = flags.size // 2
        split = np.flatnonzero(flags[:n] & flags[n:])   # None somewhere, an array elsewhere
        if split.size:
            none = bytes(gr is None for grads in per_group for gr in grads)
            seen = self.comm.allgather(none)
            names = [label("grads", int(i), self._names[int(i)]) for i in split[:5]]
            where = {r: [i for i in split[:5].tolist() if m[i]] for r, m in enumerate(seen)}
            raise ValueError(
                f"ZeroRedundancyOptimizer.step: {', '.join(names)} "
                f"{'is' if split.size == 1 else 'are'} None on rank(s) "
                f"{sorted(r for r, ix in where.items() if ix)} and an array on the others "
                f"({split.size} param(s) in all). A param is skipped only when its grad is "
                f"None on every rank; pass zeros where a rank has no gradient for it, or None "
                f"everywhere to skip it. No param or state was changed"
                f"{' (stage 1 has averaged the grads in place)' if self.stage == 1 else ''}.")

    @exclusive      # refused before the first collective, not half-way into one
    def step(self, grads: Any = None, *, grad_scale: float | None = None,
             max_grad_norm: float | None = None) -> bool:
        """Average this rank's `grads` with every other rank's, step this rank's shard, and
        all-gather the params (see the class doc). `grads`: a list in param order, a dict by
        name, or None/a FlatParams for groups built from FlatParams. A grad of None skips its
        param, as in torch, and must be None on every rank (ValueError on every rank
        otherwise, before anything changes). ``grad_scale``: divide
        the grads by it inside the kernel, as the plain optimizers do. ``max_grad_norm``:
        clip the mean grad by its global L2 norm first (torch's clip_grad_norm_ rule;
        ``last_grad_norm`` keeps the norm, of the grads divided by ``grad_scale``). Returns
        False when ``skip_nonfinite`` skipped the step on every rank, else True. Under
        stage 1 the grads passed in hold the mean afterwards (clipped on this rank's shard
        only). Every argument and hyperparameter is checked before the first collective."""
        max_norm = None if max_grad_norm is None else v.nonneg(
            max_grad_norm, "max_grad_norm", " (None: no clipping)")
        scale = None
        if grad_scale is not None:
            # the plain optimizers' check (1/grad_scale normal in every group's dtype), here
            # before any collective: a rank owning no element must raise with the others
            scale = 1.0 / inv_grad_scale(grad_scale, self.param_groups)
        per_group = self._grad_list(grads)
        spec = self.optimizer_class.spec
        for gi, group in enumerate(self.param_groups):
            # Hyperparameters (a scheduler may have changed them), checked on every rank
            # before any collective, as above.
            key = tuple(group[k] for k in spec.group_keys)
            if key != self._checked[gi]:
                spec.check_group(key)
                self._checked[gi] = key
        none_check = self._post_none_flags(per_group)
        for gi, g in enumerate(self._groups):
            for inner, _ in g.inners:
                inner_group = inner.param_groups[0]
                for k, x in self.param_groups[gi].items():
                    if k != "params":
                        inner_group[k] = x
        n = self.world_size
        # Stage 2 without clipping or a grad_scale, at a power-of-two world size: the kernel
        # divides the summed grads by n as it reads them (grad_scale=n: its multiplier 1/n
        # is exact, so g * (1/n) is bitwise g / n), which saves a pass over the shard.
        fold_mean = (self.stage == 2 and n > 1 and n & (n - 1) == 0 and max_norm is None
                     and scale is None)
        shard_grads = self._reduce_grads(per_group, divide=not fold_mean)
        self._check_none_flags(*none_check, per_group)
        present = [[x for x in sg if x is not None] for sg in shard_grads]
        if self.skip_nonfinite and not self._all_finite(present):
            self.skipped_steps += 1
            return False
        if max_norm is not None:
            norm = self._shard_norm(shard_grads)
            if scale is not None:
                norm /= scale
            self.last_grad_norm = norm
            coef = max_norm / (norm + CLIP_EPS)
            if not coef >= 1.0:
                for kept in present:
                    if kept:
                        scale_(kept, coef)
        for gi, g in enumerate(self._groups):
            for inner, idx in g.inners:
                sg = shard_grads[gi]
                mine = sg if len(idx) == len(sg) else [sg[j] for j in idx]
                if g.standin is not None:
                    # its grad: another empty array (a grad may not share its param's
                    # memory), in the dtype of the other grads (one per group)
                    kinds = [x.dtype for x in mine if x is not None]
                    mine = mine + [_empty(kinds[0] if kinds else g.wire_dtype)]
                inner.step(mine, grad_scale=float(n) if fold_mean else scale)
                # state kept in the param group (Prodigy's D), the same on every rank
                for k in inner.group_state_keys:
                    if k in inner.param_groups[0]:
                        self.param_groups[gi][k] = inner.param_groups[0][k]
        self._gather_params()
        return True

    def _reduce_grads(self, per_group: list[list[FloatArray | None]], divide: bool = True
                      ) -> list[list[FloatArray | None]]:
        """Each group's mean grads over this rank's pieces (views; None for a param
        without a grad); their sums under stage 2 with ``divide=False``."""
        c = self.comm
        n = self.world_size
        out: list[list[FloatArray | None]] = []
        if self.stage == 1:
            from ._collectives import allreduce_
            # a param without a grad is reduced as zeros: the same messages on every rank,
            # before the ranks are known to agree on which params have none
            allreduce_([np.zeros(p.size, g.wire_dtype) if gr is None else gr
                        for g, grads in zip(self._groups, per_group)
                        for gr, p in zip(grads, g.arrays)], c, algorithm=self.reduce_scatter)
            for g, grads in zip(self._groups, per_group):
                out.append([None if gr is None else gr.reshape(-1)[a:b]
                            for gr, (_, a, b) in zip((grads[t] for t, _, _ in g.pieces),
                                                     g.pieces)])
            return out
        requests = []
        ring = self.reduce_scatter == "ring"
        for g, grads in zip(self._groups, per_group):
            whole = [gr for gr in grads if gr is not None]
            flat = None
            if len(whole) == len(grads):
                flat = _kernels.tile_view(whole) if len(whole) > 1 else whole[0].reshape(-1)
            if flat is None:
                # pack: one copy (a param without a grad sends zeros: the same messages on
                # every rank, and its mean is never read)
                flat = np.concatenate([np.zeros(p.size, g.wire_dtype) if gr is None
                                       else gr.reshape(-1) for gr, p in zip(grads, g.arrays)])
            assert g.grad_shard is not None
            mt = mpi_type(flat.dtype, "grads")
            if g.grad_shard.dtype != flat.dtype:
                g.grad_shard = np.empty(g.hi - g.lo, dtype=flat.dtype)
                g.grad_views = [g.grad_shard[a - g.lo:b - g.lo] for a, b in
                                self._local_offsets(g)]
            if ring:
                ring_reduce_scatter(self._p2p, flat, g.grad_shard, g.counts, g.displs,
                                    n if divide else 1,
                                    self._scratch(g, flat.dtype))
            else:
                requests.append(c.Ireduce_scatter([flat, mt], [g.grad_shard, mt], g.counts,
                                                  op=MPI.SUM))
        MPI.Request.Waitall(requests)
        for g, grads in zip(self._groups, per_group):
            assert g.grad_shard is not None
            if n != 1 and not ring and divide:
                np.divide(g.grad_shard, n, out=g.grad_shard)
            out.append([None if grads[t] is None else view
                        for (t, _, _), view in zip(g.pieces, g.grad_views)])
        return out

    def _scratch(self, g: _Group, dtype: np.dtype[Any]) -> list[FloatArray]:
        """The ring's two running-sum buffers (only with 3 or more ranks: with 2 the one step
        receives straight into the shard's grad buffer), shared by the groups."""
        if self.world_size <= 2:
            return []
        need = max(g.counts)
        have = self._ring_buffers.get(dtype)
        if have is None or have[0].size < need:
            have = self._ring_buffers[dtype] = [np.empty(need, dtype=dtype) for _ in (0, 1)]
        return have

    def _all_finite(self, shard_grads: list[list[FloatArray]]) -> bool:
        bad = 0
        for sg in shard_grads:
            if sg:
                plan = _kernels.Plan(sg, [None] * len(sg), 0, 1, None)
                plan.active_array[...] = 1
                if plan.reduce(_NONFINITE, 0, True)[1][0] != 0.0:
                    bad = 1
                    break
        flag = np.array([bad], dtype=np.int32)
        self.comm.Allreduce(MPI.IN_PLACE, flag, op=MPI.MAX)
        return not bool(flag[0])

    def _shard_norm(self, shard_grads: list[list[FloatArray | None]]) -> float:
        planned: list[tuple[_kernels.Plan | None, Shards, int]] = []
        for g, sg in zip(self._groups, shard_grads):
            plan = None
            if sg:
                # every piece keeps its segments (sharded_norm folds the group's unit table);
                # a piece without a grad is inactive: its param view is never read
                plan = _kernels.Plan([g.views[k] if x is None else x for k, x in enumerate(sg)],
                                     [None] * len(sg), 0, 2, None)
                plan.active_array[...] = [x is not None for x in sg]
            planned.append((plan, g.shards, 0))
        return sharded_norm(self.comm, planned, 2.0)

    def _gather_params(self) -> None:
        """Every rank's shard of the params to every rank: one in-place Allgatherv per group
        (blocking: Open MPI's tuned Allgatherv measured faster here than the non-blocking
        one). Counted in elements of an unsigned type of the params' width (no arithmetic
        happens), so half-precision params go too and counts stay 4x below bytes."""
        for g in self._groups:
            flat = g.flat
            packed = flat is None
            if flat is None:
                flat = np.empty(g.size, dtype=g.dtype)
                if g.views:
                    flat[g.lo:g.hi] = np.concatenate(g.views)
            width = _WIDTH_TYPES[flat.dtype.itemsize]
            self.comm.Allgatherv(MPI.IN_PLACE, [flat.view(width[0]), (g.counts, g.displs),
                                                width[1]])
            if packed:
                pos = 0
                for a in g.arrays:
                    a.reshape(-1)[...] = flat[pos:pos + a.size]
                    pos += a.size

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the grad buffer of every FlatParams the optimizer was built from."""
        for g in self._groups:
            if g.arena is not None:
                g.arena.zero_grad()

    # -- state and checkpoints --------------------------------------------------------------
    @property
    def state(self) -> dict[int, dict[str, Any]]:
        """This rank's state: global param index -> the inner optimizer's state for the
        param's piece on this rank (its buffers are 1-D slices' state)."""
        out = {}
        for gi, g in enumerate(self._groups):
            for inner, idx in g.inners:
                for j, st in inner.state.items():
                    if j < len(idx):        # not the stand-in
                        out[self._group_slices[gi].start + g.pieces[idx[j]][0]] = st
        return out

    def _pieces(self) -> list[tuple[int, int, int, dict[str, Any]]]:
        """This rank's state as (global param index, start, stop, entry) pieces."""
        out = []
        for gi, g in enumerate(self._groups):
            for inner, idx in g.inners:
                for j, entry in inner.state_dict()["state"].items():
                    if j >= len(idx):       # the stand-in
                        continue
                    t, a, b = g.pieces[idx[j]]
                    out.append((self._group_slices[gi].start + t, a, b, entry))
        return out

    def _saved_groups(self) -> list[dict[str, Any]]:
        groups = []
        for gi, group in enumerate(self.param_groups):
            entry = {k: x for k, x in group.items() if k != "params"}
            sl = self._group_slices[gi]
            entry["params"] = list(sl)
            if any(self._names[i] is not None for i in sl):
                entry["param_names"] = [self._names[i] for i in sl]
            groups.append(entry)
        return groups

    def _param(self, i: int) -> FloatArray:
        gi = next(k for k, sl in enumerate(self._group_slices) if i in sl)
        return self._groups[gi].arrays[i - self._group_slices[gi].start]

    def consolidate_state_dict(self, to: int = 0) -> None:
        """Gather every rank's state on rank `to` (a collective: call it on every rank), so
        that ``state_dict()`` there returns the single-process format, which a plain
        optimizer of the same class loads."""
        if isinstance(to, bool) or not isinstance(to, int) or not 0 <= to < self.world_size:
            raise ValueError(f"to must be a rank in 0..{self.world_size - 1}, got {to!r}")
        everything = self.comm.gather(self._pieces(), root=to)
        if self.rank != to:
            self._consolidated = None
            return
        assert everything is not None
        pieces = [p for ps in everything for p in ps]
        state: dict[int, Any] = {}
        for i in sorted({p[0] for p in pieces}):
            p = self._param(i)
            state[i] = _assemble([x for x in pieces if x[0] == i], 0, p.size, p.shape,
                                 self._block,
                                 self._per_code)
        self._consolidated = {"state": state, "param_groups": self._saved_groups()}

    def state_dict(self) -> OptimizerStateDict:
        """The state gathered by the last ``consolidate_state_dict(to=this rank)``, in the
        single-process format (param indices, whole buffers); RuntimeError elsewhere."""
        if self._consolidated is None:
            raise RuntimeError(f"rank {self.rank} holds no consolidated state: call "
                               f"consolidate_state_dict(to={self.rank}) on every rank first "
                               f"(or save each rank's part with sharded_state_dict())")
        return self._consolidated

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a single-process checkpoint (a plain optimizer's ``state_dict()``, or this
        one's consolidated) on every rank: each keeps its shard's part. Not a collective."""
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(
                state_dict):
            raise TypeError("state_dict must be a dict with 'state' and 'param_groups', as "
                            "returned by Optimizer.state_dict()")
        pieces = []
        for i, entry in state_dict["state"].items():
            if not isinstance(i, int) or not 0 <= i < len(self._names):
                raise ValueError(f"state_dict['state'] has key {i!r}; expected param "
                                 f"indices 0..{len(self._names) - 1}")
            p = self._param(i)
            pieces.append((i, 0, p.size, _flattened(entry, p.size)))
        self._load_pieces(state_dict["param_groups"], pieces)

    def sharded_state_dict(self) -> dict[str, Any]:
        """This rank's part of the state, without gathering: save one file per rank. Any
        world size loads a full set of them (``load_sharded_state_dict``)."""
        return {"format": SHARDED_FORMAT, "rank": self.rank, "world_size": self.world_size,
                "sizes": [a.size for g in self._groups for a in g.arrays],
                "param_groups": self._saved_groups(), "pieces": self._pieces()}

    def load_sharded_state_dict(self, shards: Sequence[Mapping[str, Any]]) -> None:
        """Load the parts saved by ``sharded_state_dict()`` on every rank of a run of any
        world size M (a list of all M of them, in any order): each rank takes what overlaps
        its shard here, so a run of N ranks resumes from M. Not a collective."""
        if isinstance(shards, Mapping):
            shards = [shards]
        shards = list(shards)
        if not shards or not all(isinstance(s, Mapping) and s.get("format") == SHARDED_FORMAT
                                 for s in shards):
            raise TypeError("shards must be a list of sharded_state_dict() results")
        sizes = [a.size for g in self._groups for a in g.arrays]
        m = shards[0]["world_size"]
        have = sorted(s["rank"] for s in shards)
        if have != list(range(m)):
            raise ValueError(f"shards must hold the parts of all {m} ranks of the save, got "
                             f"ranks {have}")
        for s in shards:
            if list(s["sizes"]) != sizes:
                raise ValueError("the sharded checkpoint was saved from a different param "
                                 "layout (param sizes differ)")
        pieces = [p for s in shards for p in s["pieces"]]
        self._load_pieces(shards[0]["param_groups"], pieces)

    def _load_pieces(self, saved_groups: Any,
                     pieces: list[tuple[int, int, int, dict[str, Any]]]) -> None:
        if not isinstance(saved_groups, (list, tuple)) or len(saved_groups) != len(
                self.param_groups):
            raise ValueError(f"the checkpoint has {len(saved_groups)} param groups, this "
                             f"optimizer {len(self.param_groups)}")
        for gi, sg in enumerate(saved_groups):
            if list(sg.get("params", [])) != list(self._group_slices[gi]):
                raise ValueError(f"checkpoint param_groups[{gi}]['params'] is "
                                 f"{sg.get('params')!r}, expected "
                                 f"{list(self._group_slices[gi])}: a different param layout")
        staged: list[tuple[int, dict[str, Any], list[dict[str, Any]]]] = []
        for gi, g in enumerate(self._groups):
            sg = saved_groups[gi]
            hyper = {k: x for k, x in sg.items() if k not in ("params", "param_names")}
            start = self._group_slices[gi].start
            parts = []
            for _, idx in g.inners:
                state = {}
                for j, pj in enumerate(idx):
                    t, a, b = g.pieces[pj]
                    mine = [x for x in pieces if x[0] == start + t and x[1] < b and x[2] > a]
                    if mine:
                        state[j] = _assemble(mine, a, b, (b - a,), self._block,
                                             self._per_code)
                nparams = len(idx) + (g.standin is not None)
                parts.append({"state": state, "param_groups": [
                    {**hyper, "params": list(range(nparams))}]})
            staged.append((gi, hyper, parts))
        # Every inner optimizer checks its part (on a stand-in of its shape) before any
        # state is changed, so a rejected checkpoint leaves this optimizer as it was.
        for gi, hyper, parts in staged:
            g = self._groups[gi]
            for (options, idx), part in zip(self._inner_split(g), parts):
                stand = [] if g.standin is None else [_empty(g.dtype)]
                # state a step adds to the group (Prodigy's d_denom, d_hat) is loaded, not
                # constructed
                made = {k: x for k, x in hyper.items() if k in self.defaults
                        or k not in self.optimizer_class.group_state_keys}
                trial = self._inner_class(
                    [{"params": [np.zeros(g.pieces[j][2] - g.pieces[j][1], dtype=g.dtype)
                                 for j in idx] + stand, **made}], **options)
                trial.load_state_dict(part)
        for gi, hyper, parts in staged:
            g = self._groups[gi]
            self.param_groups[gi].update(hyper)
            for (inner, _), part in zip(g.inners, parts):
                inner.load_state_dict(part)
        self._consolidated = None


def _inner_class(optimizer_class: type[Optimizer]) -> type[Optimizer]:
    """The class of the inner optimizers, which step 1-D pieces of the params: the class
    itself, or for Muon a subclass without its 2-D check (the whole params were checked:
    ZeroRedundancyOptimizer._check_whole_params). Same name, so its errors read as Muon's."""
    if not issubclass(optimizer_class, Muon):
        return optimizer_class
    return type(optimizer_class.__name__, (optimizer_class,), {"_matrices_only": False})


def _flattened(entry: Mapping[str, Any], n: int) -> dict[str, Any]:
    """A single-process state entry with its per-element buffers flattened."""
    return {k: (x.reshape(-1) if isinstance(x, np.ndarray) and x.size == n and x.ndim >= 1
                else x) for k, x in entry.items()}


def _assemble(pieces: list[tuple[int, int, int, dict[str, Any]]], lo: int, hi: int,
              shape: tuple[int, ...], block: int | None, per_code: int = 1) -> dict[str, Any]:
    """One param's state entry for its elements [lo, hi), from pieces that cover them: the
    per-element buffers shaped `shape`, quantized state's absmax (one per `block` elements;
    every piece starts on a block boundary) cut by blocks, int4 codes (`per_code` = 2
    elements per byte, kept 1-D) by bytes, the rest (step, scalar state, the quantization
    map) taken from the first piece."""
    pieces = sorted(pieces, key=lambda x: x[1])
    first = pieces[0][3]
    out: dict[str, Any] = {}
    for k, x in first.items():
        a0, b0 = pieces[0][1], pieces[0][2]
        per_block = (block is not None and k.endswith(ABSMAX) and isinstance(x, np.ndarray)
                     and x.size == -(-(b0 - a0) // block))
        packed = (per_code > 1 and block is not None and not k.endswith(ABSMAX)
                  and isinstance(x, np.ndarray) and x.dtype == np.uint8
                  and x.size == -(-(b0 - a0) // per_code))
        if per_block or packed or (isinstance(x, np.ndarray) and x.ndim >= 1
                                   and x.size == b0 - a0):
            unit = block if per_block and block is not None else per_code if packed else 1
            ulo, uhi = lo // unit, -(-hi // unit)
            buf = np.empty(uhi - ulo, dtype=x.dtype)
            covered = 0
            for _, a, b, entry in pieces:
                s, e = max(a // unit, ulo), min(-(-b // unit), uhi)
                if s < e:
                    buf[s - ulo:e - ulo] = entry[k].reshape(-1)[s - a // unit:e - a // unit]
                    covered += e - s
            if covered != uhi - ulo:
                raise ValueError(f"the checkpoint's pieces do not cover elements {lo}..{hi} "
                                 f"of a param's {k!r}")
            out[k] = buf if per_block or packed else buf.reshape(shape)
        elif isinstance(x, np.ndarray):
            out[k] = x.copy()
        else:
            out[k] = x
    return out
