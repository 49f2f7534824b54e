"""Layout: how an optimizer's params are grouped, where each group's state lives, and which
grads a step binds.

* :func:`parse_params` and :func:`group_arrays` read what the user gave (a list, a dict, a
  FlatParams, torch-style param groups) into groups of arrays.
* :class:`GroupLayout` lays out one group's state buffers and knows whether the group can
  step as one flat tensor; :func:`route_flat` decides, each step, whether it does.
* :func:`split_grads` turns a step's grads into one list per group.

Everything here reads the optimizer's structure (``_names``, ``_group_slices``, ``_layouts``)
and, to decide the flat path, its plans and state; it writes only the layouts and the
grads getter.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from . import _kernels
from ._validation import label
from ._precision import ABSMAX, FLOAT32, MASTER, RANK1, RANK1_DESC, SR_KEY, GroupPrecision
from ._state import sync_steps
from .flat import ALIGNMENT, PAGE, FlatParams, aligned_bytes

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ._typing import FloatArray, GradsArg, ParamsArg, ParamState
    from .optimizer import Optimizer, _GroupCache

#: per-group grads marker: bind the grad buffer of the group's FlatParams
ARENA = object()
MAPPINGS = (dict, MappingProxyType)


# -- params -------------------------------------------------------------------------------------

def parse_params(params: ParamsArg) -> list[Mapping[str, Any]]:
    """The param groups in `params` (a list or dict of arrays, a FlatParams, one group dict
    or a list of them), each a mapping with a ``"params"`` entry."""
    if isinstance(params, np.ndarray):
        raise TypeError("params must be a list or dict of arrays (or a list of param "
                        "groups), got a single ndarray; wrap it: [array]")
    if isinstance(params, FlatParams):
        return [{"params": params}]
    if isinstance(params, MAPPINGS):
        if "params" in params:
            return [params]
        return [{"params": params}]
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"params must be a list or dict of arrays, or a list of param "
                        f"groups, got {type(params).__name__}") from None
    if not params:
        raise ValueError("params is empty; give at least one array to optimize")
    if all(isinstance(p, dict) for p in params):
        return cast("list[Mapping[str, Any]]", params)   # all() checked: dicts
    if any(isinstance(p, dict) for p in params):
        raise TypeError("params mixes arrays and param-group dicts; use one or the other")
    return [{"params": params}]


def group_arrays(group_in: Mapping[str, Any]
                 ) -> tuple[FlatParams | None, list[str | None], list[FloatArray]]:
    """A group's FlatParams (or None), param names (None where unnamed) and arrays."""
    raw = group_in["params"]      # Any: a list, tuple or dict of arrays, or a FlatParams
    arena: FlatParams | None = None
    names: list[str | None]
    arrays: list[FloatArray]
    if isinstance(raw, FlatParams):
        arena, raw = raw, raw.params
    if isinstance(raw, np.ndarray):
        raw = [raw]
    if isinstance(raw, MAPPINGS):
        names, arrays = list(raw.keys()), list(raw.values())
    else:
        try:
            arrays = list(raw)
        except TypeError:
            raise TypeError(f"a param group's 'params' must be a list or dict of arrays, "
                            f"got {type(raw).__name__}") from None
        names = [None] * len(arrays)
    if not arrays:
        raise ValueError("params is empty; give at least one array to optimize")
    return arena, names, arrays


def check_param_list(params: Sequence[Any]) -> None:
    """The params of a functional call: each a usable param array, one dtype, no memory
    shared (what the optimizer classes check of a new group, for a bare list)."""
    for i, p in enumerate(params):
        _kernels.check_param(p, f"params[{i}]")
    if len({p.dtype for p in params}) > 1:
        raise TypeError("params have mixed dtypes; call once per dtype")
    clash = _kernels.find_overlap(list(params))
    if clash is not None:
        raise ValueError(f"params[{clash[0]}] and params[{clash[1]}] share memory; give each "
                         f"param its own buffer")


def check_new_params(opt: Optimizer, names: list[str | None], arrays: list[FloatArray]) -> None:
    """Raise unless `arrays` can join `opt` as a new group: each a usable param, one dtype,
    names unique across groups, no memory shared with any param."""
    start = len(opt._names)
    all_names = opt._names + names
    for i, a in enumerate(arrays):
        _kernels.check_param(a, label("params", start + i, names[i]))
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) > 1:
        raise TypeError(f"params of one group have mixed dtypes {sorted(map(str, dtypes))}; "
                        f"put params of each dtype in a param group of their own")
    named = [n for n in all_names if n is not None]
    if len(set(named)) != len(named):
        raise ValueError("param names must be unique across groups")
    everything = [p for g in opt.param_groups for p in g["params"]] + arrays
    clash = _kernels.find_overlap(everything)
    if clash is not None:
        i, j = clash
        raise ValueError(
            f"{label('params', i, all_names[i])} and {label('params', j, all_names[j])} "
            f"share memory (the same array given twice, or overlapping views); give each "
            f"param its own buffer")


# -- a group's memory ---------------------------------------------------------------------------

class GroupLayout:
    """Where a param group's state lives, and whether the group can step as one tensor.

    Every group keeps one buffer per state slot for all its params, each param's state a
    view in it, in param order, for two measured reasons (float32 AdamW, one thread):

    * the kernel streams the state from one run of memory instead of many small
      allocations: 1000 tensors of 1000 elements stepped ~25% faster;
    * where a view starts relative to its param matters. With the state 64 to 128 bytes
      past the param modulo 4096 (the same cache line offset, so no misalignment), a 1e6
      element step ran 15-30% slower; at the same offset modulo 4096 (as np.zeros_like
      gives for large arrays), or 16 or 512 bytes off, it did not. So each view starts at
      its param's address modulo 4096, or modulo 64 under 64 KiB where the padding would
      cost more memory than the stream is long (at most 4 KiB a large param, 60 B a
      small one).

    A group whose params tile one buffer (a FlatParams, or views laid end to end) can step
    as one tensor: ``flat_param`` is then the 1-D view over its params, else None; its
    views then need no padding, and ``buffers[slot]`` is the 1-D state over the group.
    Buffers are allocated at a slot's first use. Whether a step takes the flat path is
    :func:`route_flat`'s decision, kept here in ``use_flat`` and ``lockstep``.
    """

    __slots__ = ("params", "flat_param", "shapes", "offsets", "nbytes", "dtype", "arena",
                 "grad_views", "enabled", "buffers", "views", "use_flat", "lockstep",
                 "precision", "slots", "plan_slots", "_layouts", "sr_keys", "rank1_slots",
                 "rank1_fresh", "rank1_desc")

    params: list[FloatArray]
    flat_param: FloatArray | None
    shapes: list[tuple[int, ...]]
    offsets: list[int]
    nbytes: int
    dtype: np.dtype[Any]
    arena: FlatParams | None
    grad_views: list[FloatArray] | None
    enabled: bool
    # slot -> the 1-D state over the group's params when they tile one buffer, else the
    # raw bytes holding the slot's per-param views
    buffers: dict[str, NDArray[Any]]
    views: dict[str, list[FloatArray]]
    use_flat: bool
    lockstep: bool | None
    precision: GroupPrecision
    #: the group's state buffers: the optimizer's slots, then the master copy if kept
    slots: tuple[str, ...]
    #: the plan's state columns (2, 3, ...): the optimizer's slots, then, under master
    #: weights, empty columns up to the driver's MASTER_COL and the master copy there
    plan_slots: tuple[str | None, ...]
    _layouts: dict[int, tuple[list[int], int]]
    #: stochastic rounding: each param's two uint32 step keys (the plan's SR_COL)
    sr_keys: NDArray[np.uint32] | None
    #: int4+rank1: the non-negative slots (rank-1 normalized where the param allows)
    rank1_slots: tuple[str, ...]
    #: per rank-1 slot: each param's fresh maxima (uint32 bits; the scan pass's, see rank1.h),
    #: and the descriptors the plan points at, a row of R1_WORDS int64 per param
    rank1_fresh: dict[str, list[NDArray[np.uint32]]]
    rank1_desc: dict[str, NDArray[np.int64]]

    def __init__(self, params: Sequence[FloatArray], flat_param: FloatArray | None,
                 arena: FlatParams | None, enabled: bool, precision: GroupPrecision,
                 opt_slots: tuple[str, ...], rank1_slots: tuple[str, ...] = ()) -> None:
        self.params = list(params)
        self.flat_param = flat_param
        self.shapes = [p.shape for p in params]
        self.dtype = params[0].dtype
        self.precision = precision
        self.rank1_slots = rank1_slots if precision.rank1 else ()
        absmax = tuple(s + ABSMAX for s in opt_slots) if precision.quant else ()
        self.slots = (opt_slots + ((MASTER,) if precision.master else ()) + absmax
                      + tuple(s + RANK1 for s in self.rank1_slots))
        self.plan_slots = opt_slots
        if precision.master or precision.quant:
            # the driver's columns: MASTER_COL, then ABSMAX_COL + i for the kernel's buffer i
            # (the optimizer's slot k is buffer 2 + k)
            pad = _kernels.MASTER_COL - 2 - len(opt_slots)
            assert pad >= 0, "more state slots than the driver's columns before the master"
            self.plan_slots = (opt_slots + (None,) * pad
                               + ((MASTER,) if precision.master else (None,)))
            if precision.quant:
                # a rank-1 slot's column holds each param's descriptor (rank1.h), which
                # points at its maxima or, for a blockwise param, at its absmax
                self.plan_slots += (None, None) + tuple(
                    s + (RANK1_DESC if s in self.rank1_slots else ABSMAX) for s in opt_slots)
        self.sr_keys = None
        if precision.sr:
            pad = _kernels.SR_COL - 2 - len(self.plan_slots)
            self.plan_slots = self.plan_slots + (None,) * pad + (SR_KEY,)
            self.sr_keys = np.zeros((len(self.params), 2), np.uint32)
        self._layouts = {}
        self.offsets, self.nbytes = self._layout(self.dtype.itemsize)
        self.arena = arena
        self.grad_views = None if arena is None else list(arena._grad_views)
        self.enabled = enabled and flat_param is not None   # False: always per param
        self.reset_state()

    def _layout(self, itemsize: int) -> tuple[list[int], int]:
        """Byte offsets of each param's view in a page-aligned buffer of elements of
        `itemsize` bytes, each matching its param's address (above), and the buffer's size.
        Params that tile one buffer are one stream: the run matches as a whole, unpadded."""
        found = self._layouts.get(itemsize)
        if found is None:
            offsets, at = [], 0
            flat_bytes = (None if self.flat_param is None
                          else self.flat_param.size * itemsize)
            for p in self.params:
                nbytes = p.size * itemsize
                # A tiled run is padded before its first byte only: with another itemsize
                # than the params' (master copy, bfloat16 state), matching each param's
                # address would pad between views and break the flat buffer's element order.
                if nbytes and (flat_bytes is None or at == 0):
                    big = (flat_bytes if flat_bytes is not None else nbytes) >= 16 * PAGE
                    at += (p.ctypes.data - at) % (PAGE if big else ALIGNMENT)
                offsets.append(at)
                at += nbytes
            found = self._layouts[itemsize] = (offsets, at)
        return found

    def reset_state(self) -> None:
        """Forget the state buffers (after load_state_dict: a user's reference to an old
        state view must not see the loaded values written into it)."""
        self.buffers = {}           # slot -> the group's buffer
        self.views = {}             # slot -> its per-param views
        self.rank1_fresh = {}
        self.rank1_desc = {}
        self.use_flat = False       # the group's current plan is the flat one
        self.lockstep = None        # every param at the same step/state: True, False, None=unknown

    def slot_views(self, slot: str) -> list[FloatArray]:
        """The per-param views of the group's buffer for `slot` (of the slot's dtype: the
        state dtype, float32 for the master copy), allocated on first use."""
        views = self.views.get(slot)
        if views is None and self.precision.quant and slot != MASTER:
            views = self.views[slot] = self._quantized_views(slot)
        if views is None:
            dtype = self.precision.slot_dtype(slot)
            offsets, nbytes = self._layout(dtype.itemsize)
            raw = aligned_bytes(nbytes, PAGE)
            views = self.views[slot] = [
                raw[o:o + int(np.prod(s, dtype=np.int64)) * dtype.itemsize]
                .view(dtype).reshape(s) for o, s in zip(offsets, self.shapes)]
            if self.flat_param is not None:     # no padding: one run from the first view
                start = next((o for o, p in zip(offsets, self.params) if p.nbytes), 0)
                self.buffers[slot] = raw[start:start + self.flat_param.size
                                         * dtype.itemsize].view(dtype)
            else:
                self.buffers[slot] = raw
        return views


    def _quantized_views(self, slot: str) -> list[FloatArray]:
        """A quantized slot's views: per param, its codes (uint8: the param's shape for int8,
        two codes per byte for int4), or float32 state of its shape for a param smaller than
        min_quantized_size; an absmax slot's: one float32 per block, or an empty array where
        the param keeps float32 state (the plan then passes no absmax: see kernelgen.py)."""
        prec = self.precision
        assert prec.quant is not None
        bits, block = prec.quant
        specs: list[tuple[np.dtype[Any], tuple[int, ...]]] = []
        for p in self.params:
            q = prec.quantized(p.size)
            if slot.endswith(RANK1):
                dims = self.rank1_dims(slot[:-len(RANK1)], p.shape)
                specs.append((FLOAT32, (sum(dims) if dims else 0,)))
            elif slot.endswith(ABSMAX):
                if self.rank1_dims(slot[:-len(ABSMAX)], p.shape):
                    q = False                   # rank-1 maxima instead
                specs.append((FLOAT32, (-(-p.size // block) if q else 0,)))
            elif not q:
                specs.append((FLOAT32, p.shape))
            else:
                specs.append((np.dtype(np.uint8), p.shape if bits == 8 else ((p.size + 1) // 2,)))
        offsets, at = [], 0
        for dt, shape in specs:
            at += -at % ALIGNMENT
            offsets.append(at)
            at += int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        raw = aligned_bytes(at, PAGE)
        self.buffers[slot] = raw
        return [raw[o:o + int(np.prod(shape, dtype=np.int64)) * dt.itemsize].view(dt)
                .reshape(shape) for o, (dt, shape) in zip(offsets, specs)]

    # -- rank-1 normalized int4 state (cython_kernels/rank1.h) ------------------------------

    def rank1_dims(self, slot: str, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The maxima dimensions of `slot` for a param of `shape`, or None (not rank-1)."""
        if slot not in self.rank1_slots:
            return None
        return self.precision.rank1_of(shape)

    def rank1_descriptor(self, slot: str, t: int, st: ParamState) -> NDArray[np.int64] | None:
        """Param t's descriptor for rank-1 slot `slot` (rank1.h), pointing at its state in
        `st` (its maxima and fresh maxima; or, blockwise, its absmax), or None where it has
        no quantized state in that slot (float32 state, or the slot not in use)."""
        from ._kernels import R1_WORDS
        codes = st.get(slot)
        if codes is None:
            return None
        desc = self.rank1_desc.get(slot)
        if desc is None:
            desc = self.rank1_desc[slot] = np.zeros((len(self.params), R1_WORDS), np.int64)
        row: NDArray[np.int64] = desc[t]
        row[:] = 0
        dims = self.rank1_dims(slot, self.shapes[t])
        if dims is not None and slot + RANK1 in st:
            fresh = self.rank1_fresh.get(slot)
            if fresh is None:
                sizes = [sum(self.rank1_dims(slot, sh) or ()) for sh in self.shapes]
                raw = np.zeros(sum(sizes), np.uint32)
                ends = np.cumsum(sizes)
                fresh = self.rank1_fresh[slot] = [raw[e - n:e] for n, e in zip(sizes, ends)]
            row[0] = len(dims)
            row[1] = st[slot + RANK1].ctypes.data
            row[2] = fresh[t].ctypes.data
            row[3:3 + len(dims)] = dims
            return row
        absmax = st.get(slot + ABSMAX)
        if absmax is None:
            return None                         # float32 state: no descriptor (NULL)
        row[1] = absmax.ctypes.data             # blockwise int4 (a 1-D param)
        return row


# -- grads --------------------------------------------------------------------------------------

def split_grads(opt: Optimizer, grads: GradsArg) -> list[Any]:
    """Turn the user's grads into one list per group, or raise. A group built from a
    FlatParams gets the ARENA marker for ``step()`` and ``step(arena.grads)``. So each
    entry is a list of grads (an array or None per param) or ARENA."""
    if grads is None or grads is opt._arena_grads:
        return arena_marks(opt)
    flat = grads_in_param_order(opt, grads)
    if len(opt._group_slices) == 1:
        return [flat if isinstance(flat, list) else list(flat)]
    return [list(flat[s.start:s.stop]) for s in opt._group_slices]


def grads_in_param_order(opt: Any, grads: Any) -> Sequence[Any]:
    """The user's grads (a list or tuple in param order, a dict keyed by param name, or one
    array for one param) as one sequence in param order, or a clear error. `opt` has the
    params' ``_names`` and caches its name lookup in ``_grad_getter``; every optimizer
    class with a torch-shaped ``step(grads)`` shares this."""
    names = opt._names
    n = len(names)
    if isinstance(grads, MAPPINGS):
        getter = opt._grad_getter
        if getter is None:
            if any(k is None for k in names):
                raise TypeError("grads is a dict, but the params were not named; pass a "
                                "list of grads in param order")
            # itemgetter looks all names up in C: no Python loop per tensor per step.
            getter = opt._grad_getter = (operator.itemgetter(*names) if n > 1 else
                                         lambda d, k=names[0]: (d[k],))
        if len(grads) == n:
            try:
                return list(getter(grads))  # n names found among n keys: same key set
            except KeyError:
                pass
        missing = [k for k in names if k not in grads]
        extra = [k for k in grads if k not in set(names)]
        raise ValueError(f"grads keys do not match the params: missing {missing}, "
                         f"unexpected {extra}")
    if isinstance(grads, (list, tuple)):
        if len(grads) != n:
            raise ValueError(f"grads has {len(grads)} entries but there are {n} params; "
                             f"pass one grad (or None) per param, in param order")
        return grads
    if isinstance(grads, np.ndarray) and n == 1:
        return [grads]
    raise TypeError(f"grads must be a list of arrays (or a dict keyed by param name), "
                    f"got {type(grads).__name__}")


def arena_marks(opt: Optimizer) -> list[object]:
    for gi, layout in enumerate(opt._layouts):
        if layout.arena is None:
            raise TypeError(f"step() without grads reads them from the FlatParams the "
                            f"optimizer was built from, but param group {gi} was not "
                            f"built from one; pass grads: a list of arrays in param "
                            f"order (or a dict keyed by param name)")
    return [ARENA] * len(opt._layouts)


# -- the flat path ------------------------------------------------------------------------------

def route_flat(opt: Optimizer, gi: int, cache: _GroupCache, layout: GroupLayout,
               grads: list[FloatArray | None] | list[FloatArray]
               ) -> list[FloatArray | None] | list[FloatArray]:
    """The grads to bind for a group whose params tile one buffer: [one flat grad] when
    every param has a grad, the grads tile one buffer the same way, and the params are in
    lockstep; else the per-param list. Changing path syncs the step counts through the
    state dicts and rebuilds the plan: O(n) Python, only when the path changes."""
    flat_grad: FloatArray | None
    if grads is ARENA:
        # ARENA marks only groups built from a FlatParams
        assert layout.arena is not None and layout.grad_views is not None
        flat_grad, grads = layout.arena.flat_grad, layout.grad_views
    else:
        flat_grad = _kernels.tile_view(grads, layout.params) if layout.enabled else None
    use = layout.enabled and flat_grad is not None and _lockstep(opt, gi, cache, layout)
    if use != layout.use_flat:
        sync_steps(opt, gi)
        cache.plan = None
        layout.use_flat = use
    return [flat_grad] if use else grads


def _lockstep(opt: Optimizer, gi: int, cache: _GroupCache, layout: GroupLayout) -> bool:
    """Whether every param of the group has the same step count, scalar state and state
    buffers (or none has state yet), so that one flat tensor can stand for them all."""
    plan = cache.plan
    if plan is not None:
        if layout.use_flat:
            return True         # the flat plan steps every param together
        # The per-param plan ran since the last look: a param it skipped broke the
        # lockstep; equal counts (C-level checks) may mean it is back.
        if layout.lockstep and not plan.active_array.all():
            layout.lockstep = False
        if layout.lockstep is False:
            steps, sstate = plan.steps_array, plan.sstate_array
            if (steps == steps[0]).all() and (sstate == sstate[0]).all():
                layout.lockstep = None
    if layout.lockstep is None:
        sync_steps(opt, gi)
        entries = [opt._state[i] for i in opt._group_slices[gi]]
        names = opt._scalar_state

        # bitwise for the floats: -0.0 and NaN never pass for equal
        def key(st: ParamState | None) -> tuple[list[str], int, list[str]] | None:
            return (None if st is None else
                    (sorted(st), st["step"], [float(st[k]).hex() for k in names]))
        first = key(entries[0])
        layout.lockstep = all(key(st) == first for st in entries)
    return layout.lockstep
