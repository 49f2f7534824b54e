"""State: each param's optimizer state, the plan tables that mirror it, and checkpoints.

``opt._state[i]`` is param i's state dict (None before its first step): its buffers (views
of the group's buffers, see :class:`fusedoptim._layout.GroupLayout`), its ``step`` and its
scalar state. While a plan runs, the step counts and scalar state live in the plan (C-level
arrays, advanced by the kernel driver); :func:`sync_steps` copies them back into the dicts
before anything reads or rebuilds them. State is created lazily, at a param's first step,
and only on a step that is not skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _kernels
from . import _validation as _v
from ._precision import ABSMAX, FLOAT32, MASTER, QMAP, RANK1, RANK1_DESC, SR_KEY, \
    RANK1_MAXDIM, check_rounding, fill_quantized, fill_rank1, qmap, rank1_dims
from ._validation import label

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ._layout import GroupLayout
    from ._typing import FloatArray, OptimizerStateDict, ParamGroup, ParamState
    from .optimizer import Optimizer, _GroupCache


def sync_steps(opt: Optimizer, gi: int) -> None:
    """Copy group `gi`'s plan step counts and scalar state into the state dicts (before a
    rebuild or a save)."""
    plan = opt._caches[gi].plan
    if plan is None:
        return
    names = opt._scalar_state
    one = opt._layouts[gi].use_flat            # the flat plan's one row is every param's
    for t, i in enumerate(opt._group_slices[gi]):
        st = opt._state[i]
        if st is not None:
            r = 0 if one else t
            st["step"] = int(plan.steps_array[r])
            for j, k in enumerate(names):
                st[k] = float(plan.sstate_array[r, j])


def build_plan(opt: Optimizer, gi: int, cache: _GroupCache) -> _kernels.Plan:
    """Group `gi`'s plan: pointer tables over its params and state, its step counts and
    scalar state (kept in cache.plan until state is created or replaced)."""
    sl = opt._group_slices[gi]
    layout = opt._layouts[gi]
    adopt_state(opt, gi, layout)
    entries = [opt._state[i] for i in sl]
    params = opt.param_groups[gi]["params"]
    labels = [label("grads", i, opt._names[i]) for i in sl]
    if layout.use_flat:
        # One tensor. The params are in lockstep (checked by route_flat), so the first
        # one's entry, pointed at the group's buffers, stands for them all.
        first = entries[0]
        entries = [None if first is None else
                   {**first, **{s: layout.buffers[s] for s in layout.slots if s in first}}]
        params = [layout.flat_param]
        labels = [f"grads of param group {gi} (bound as one flat buffer)"]
    columns = layout.plan_slots
    keys = layout.sr_keys
    state = [None if st is None else
             [None if s is None else keys[t] if s == SR_KEY and keys is not None else
              layout.rank1_descriptor(s[:-len(RANK1_DESC)], t, st)
              if s.endswith(RANK1_DESC) else st.get(s)
              for s in columns]
             for t, st in enumerate(entries)]
    steps = [0 if st is None else st["step"] for st in entries]
    if cache.slots_in_use is None:
        cache.slots_in_use = cache.wanted      # validated when the group was added
    required = [columns.index(s) for s in _slots_needed(layout, cache)]
    names = opt._scalar_state
    scalar_state: list[list[float]] | None = None
    if names:
        scalar_state = [[0.0] * len(names) if st is None else [st[k] for k in names]
                        for st in entries]
    prec = layout.precision
    cache.plan = _kernels.Plan(params, state, len(columns), len(_kernels.SCALARS[opt._kernel]),
                               labels, steps, scalar_state, required,
                               (prec.param_storage, prec.state_storage), prec.grad_dtypes)
    return cache.plan


def _slots_needed(layout: GroupLayout, cache: _GroupCache) -> tuple[str, ...]:
    """The state buffers a step of this configuration reads: the configuration's slots,
    and the master copy when the group keeps one."""
    assert cache.slots_in_use is not None
    return cache.slots_in_use + ((MASTER,) if layout.precision.master else ())


def adopt_state(opt: Optimizer, gi: int, layout: GroupLayout) -> None:
    """Copy every state buffer that is not yet a view of the group's buffers (one loaded
    by load_state_dict) into its place there. O(n) Python, only when a plan is built."""
    for t, i in enumerate(opt._group_slices[gi]):
        st = opt._state[i]
        if st is None:
            continue
        for s in layout.slots:
            buf = st.get(s)
            if buf is not None:
                view = layout.slot_views(s)[t]
                if buf is not view:
                    view[...] = buf
                    st[s] = view


def ensure_state(opt: Optimizer, gi: int, cache: _GroupCache, grads: list[FloatArray | None]
                 ) -> tuple[_kernels.Plan, dict[int, tuple[str, ...]]]:
    """Create state for params stepping for the first time (or a slot they lack, e.g.
    amsgrad switched on, or one missing from a checkpoint), filled with its initial value
    (the spec's ``init``, zero by default; the master copy: the param, exactly), then
    rebuild the group's plan. Returns the plan and {tensor index in the group: names of the
    buffers created}."""
    sync_steps(opt, gi)
    hyper = cache.hyper
    assert cache.slots_in_use is not None                # step() set them
    initial = opt.spec.initial
    layout = opt._layouts[gi]
    prec = layout.precision
    slots = _slots_needed(layout, cache)
    params = opt.param_groups[gi]["params"]
    one = layout.use_flat                       # grads is [flat grad]: every param steps
    fresh = {}
    for t, i in enumerate(opt._group_slices[gi]):
        if not one and grads[t] is None:
            continue
        st = opt._state[i]
        if st is None:
            st = opt._state[i] = {"step": 0}
            for k in opt._scalar_state:
                st[k] = initial(k, hyper)
        new = tuple(s for s in slots if s not in st)
        for s in new:
            st[s] = layout.slot_views(s)[t]     # its place in the group's buffer
            if s == MASTER:
                st[s][...] = params[t]          # float16/bfloat16 -> float32 is exact
            elif layout.rank1_dims(s, params[t].shape):
                maxima = st[s + RANK1] = layout.slot_views(s + RANK1)[t]
                fill_rank1(st[s], maxima, initial(s, hyper), params[t].size)
            elif prec.quantized(params[t].size):
                absmax = st[s + ABSMAX] = layout.slot_views(s + ABSMAX)[t]
                assert prec.quant is not None
                fill_quantized(st[s], absmax, initial(s, hyper), params[t].size,
                               qmap(opt._kernel, opt._slots.index(s), prec.quant[0]),
                               prec.quant)
            else:
                st[s].fill(initial(s, hyper))
        if new:
            fresh[t] = tuple(s for s in new if s != MASTER)
    if one and fresh:
        fresh = {0: fresh[0]}   # in lockstep, every param got the same new buffers
    plan = build_plan(opt, gi, cache)
    plan.bind(grads)
    return plan, fresh


# -- what the user sees -------------------------------------------------------------------------

def state_view(opt: Optimizer) -> dict[int, ParamState]:
    """``opt.state``: flat param index -> its state dict, for the params that have stepped."""
    for gi in range(len(opt.param_groups)):
        sync_steps(opt, gi)
    return {i: st for i, st in enumerate(opt._state) if st is not None}


def state_dict(opt: Optimizer, dequantize: bool = False) -> OptimizerStateDict:
    state = {}
    for i, st in state_view(opt).items():
        gi, p = _param_of(opt, i)
        layout = opt._layouts[gi]
        entry = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
        for k, slot in enumerate(opt._slots):
            absmax = st.get(slot + ABSMAX)
            maxima = st.get(slot + RANK1)
            if maxima is not None:
                code = _slot_qmap(opt, layout, k)
                if dequantize:
                    entry[slot] = _dequantize_rank1(st[slot], maxima, code, p)
                    del entry[slot + RANK1]
                else:
                    entry[slot + QMAP] = code.copy()
            elif absmax is not None:
                code = _slot_qmap(opt, layout, k)
                if dequantize:
                    entry[slot] = _dequantize(layout, st[slot], absmax, code, p)
                    del entry[slot + ABSMAX]
                else:
                    entry[slot + QMAP] = code.copy()
            elif dequantize and slot in entry and entry[slot].dtype != FLOAT32:
                entry[slot] = entry[slot].astype(FLOAT32)
        state[i] = entry
    out: OptimizerStateDict = {"state": state, "param_groups": saved_groups(opt)}
    if opt.stochastic_rounding:
        out["seed"] = opt.seed          # the rounding stream goes on where it was
    return out


def _param_of(opt: Optimizer, i: int) -> tuple[int, FloatArray]:
    gi = next(k for k, sl in enumerate(opt._group_slices) if i in sl)
    return gi, opt.param_groups[gi]["params"][i - opt._group_slices[gi].start]


def _slot_qmap(opt: Optimizer, layout: GroupLayout, k: int) -> NDArray[np.float32]:
    assert layout.precision.quant is not None
    return qmap(opt._kernel, k, layout.precision.quant[0])


def _dequantize(layout: GroupLayout, codes: NDArray[Any], absmax: NDArray[Any],
                code: NDArray[np.float32], p: FloatArray) -> NDArray[np.float32]:
    from .quant import dequantize_blockwise
    assert layout.precision.quant is not None
    bits, block = layout.precision.quant
    out: NDArray[np.float32] = dequantize_blockwise(
        codes, absmax, code, block, bits=bits, n=p.size).reshape(p.shape)
    return out


def _rank1_dims(p: FloatArray) -> tuple[int, ...]:
    dims = rank1_dims(p.shape)
    if dims is None:
        raise ValueError(f"rank-1 normalized state needs a param with 2 to {RANK1_MAXDIM} "
                         f"dimensions of size > 1; this one has shape {p.shape}")
    return dims


def _dequantize_rank1(codes: NDArray[Any], maxima: NDArray[Any], code: NDArray[np.float32],
                      p: FloatArray) -> NDArray[np.float32]:
    from .reference import dequantize_rank1
    out: NDArray[np.float32] = dequantize_rank1(codes, maxima, _rank1_dims(p), code
                                                ).reshape(p.shape)
    return out


def saved_groups(opt: Any) -> list[dict[str, Any]]:
    """The param groups as a state_dict holds them, torch's way: the hyperparameters, the
    params as their flat indices, and ``param_names`` where params were named. `opt` has
    ``param_groups``, ``_group_slices`` and ``_names`` (every torch-shaped optimizer class)."""
    groups = []
    for gi, g in enumerate(opt.param_groups):
        entry = {k: v for k, v in g.items() if k != "params"}
        sl = opt._group_slices[gi]
        entry["params"] = list(sl)
        if any(opt._names[i] is not None for i in sl):
            entry["param_names"] = [opt._names[i] for i in sl]
        groups.append(entry)
    return groups


def merged_groups(opt: Any, saved: Any, ignore: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Each of the optimizer's groups with a checkpoint's saved hyperparameters over it (not
    yet validated), after checking that the checkpoint has the same groups of the same params
    (by flat index). Saved keys in `ignore` (say, torch's ``foreach``) are dropped. `opt` has
    ``param_groups`` and ``_group_slices``."""
    if not isinstance(saved, (list, tuple)) or len(saved) != len(opt.param_groups):
        count = len(saved) if isinstance(saved, (list, tuple)) else repr(saved)
        raise ValueError(f"state_dict has {count} param groups, this optimizer has "
                         f"{len(opt.param_groups)}")
    out = []
    for gi, (sg, g) in enumerate(zip(saved, opt.param_groups)):
        sl = opt._group_slices[gi]
        if not isinstance(sg, Mapping) or list(sg.get("params", [])) != list(sl):
            got = sg.get("params") if isinstance(sg, Mapping) else sg
            raise ValueError(f"state_dict param_groups[{gi}]['params'] is {got!r}, expected "
                             f"{list(sl)}: the checkpoint was saved from a different param "
                             f"layout")
        merged = dict(g)
        merged.update({k: v for k, v in sg.items()
                       if k not in ("params", "param_names") + ignore})
        out.append(merged)
    return out


def load_state_dict(opt: Optimizer, state_dict: Mapping[str, Any]) -> None:
    """Check everything in `state_dict`, then replace the optimizer's hyperparameters and
    state at once (see Optimizer.load_state_dict)."""
    from .optimizer import _GroupCache     # (optimizer.py imports this module)
    if not isinstance(state_dict, dict) or set(state_dict) < {"state", "param_groups"}:
        raise TypeError("state_dict must be a dict with 'state' and 'param_groups', as "
                        "returned by Optimizer.state_dict()")
    new_groups: list[ParamGroup] = merged_groups(opt, state_dict["param_groups"])
    new_state: list[ParamState | None] = [None] * len(opt._state)
    for gi, merged in enumerate(new_groups):
        try:
            opt._validate_group(merged, _GroupCache())
        except (ValueError, TypeError) as exc:
            # name where the bad value is: the checkpoint, not a constructor argument
            raise type(exc)(f"state_dict['param_groups'][{gi}]: {exc}") from exc
    scalar_names = opt._scalar_state
    for i, st in state_dict["state"].items():
        if not isinstance(i, int) or not 0 <= i < len(opt._state):
            raise ValueError(f"state_dict['state'] has key {i!r}; expected param indices "
                             f"0..{len(opt._state) - 1}")
        gi = next(k for k, sl in enumerate(opt._group_slices) if i in sl)
        p = opt.param_groups[gi]["params"][i - opt._group_slices[gi].start]
        new_state[i] = _load_entry(opt, i, st, p, opt._layouts[gi], scalar_names)
    seed = opt.seed
    if "seed" in state_dict:
        seed = check_rounding(opt.stochastic_rounding, state_dict["seed"])[1]
    # Checked: now replace everything at once.
    opt.seed = seed
    for g, merged in zip(opt.param_groups, new_groups):
        g.update({k: v for k, v in merged.items() if k != "params"})
    opt._state = new_state
    opt._caches = [_GroupCache() for _ in opt.param_groups]
    for layout in opt._layouts:
        layout.reset_state()
    for g, c in zip(opt.param_groups, opt._caches):
        opt._validate_group(g, c)


# bitsandbytes' 8-bit optimizer state names -> the optimizer's first two slots
_BNB = (("state1", 0, ""), ("state2", 1, ""), ("absmax1", 0, ABSMAX), ("absmax2", 1, ABSMAX),
        ("qmap1", 0, QMAP), ("qmap2", 1, QMAP))


def _bitsandbytes_names(opt: Optimizer, i: int, st: Mapping[str, Any]) -> Mapping[str, Any]:
    """A state entry of bitsandbytes' 8-bit optimizers (state1/state2, absmax1/absmax2,
    qmap1/qmap2, step; as NumPy arrays) under the optimizer's slot names: bitsandbytes'
    state1 is the first moment (exp_avg, momentum_buffer), state2 the second."""
    if "state1" not in st:
        return st
    out = {k: v for k, v in st.items() if k not in {name for name, _, _ in _BNB}}
    for name, k, suffix in _BNB:
        if name in st:
            if k >= len(opt._slots):
                raise ValueError(f"state_dict['state'][{i}] has bitsandbytes' {name!r}, but "
                                 f"{type(opt).__name__} keeps only {list(opt._slots)}")
            out[opt._slots[k] + suffix] = st[name]
    return out


def _checked_codes(opt: Optimizer, layout: GroupLayout, i: int, k: str, codes: NDArray[Any],
                   absmax: Any, code: Any, p: FloatArray
                   ) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """Slot k's quantized state from a checkpoint, checked, in this optimizer's map."""
    prec = layout.precision
    where = f"state_dict['state'][{i}]"
    if prec.quant is None:
        raise ValueError(f"{where} holds quantized {k!r} ({k + ABSMAX!r}), but this optimizer "
                         f"keeps {prec.state_dtype} state; build it with the checkpoint's "
                         f"state_dtype, or save with state_dict(dequantize=True)")
    bits, block = prec.quant
    n = p.size
    ncodes = n if bits == 8 else (n + 1) // 2
    nblocks = -(-n // block)
    if (not isinstance(codes, np.ndarray) or codes.dtype != np.uint8 or codes.size != ncodes):
        raise ValueError(f"{where}[{k!r}] must be the uint8 codes of {ncodes} bytes "
                         f"(int{bits} state of a {n}-element param), got "
                         f"{getattr(codes, 'dtype', type(codes).__name__)} of size "
                         f"{getattr(codes, 'size', '?')}")
    if (not isinstance(absmax, np.ndarray) or absmax.dtype != np.float32
            or absmax.size != nblocks):
        raise ValueError(f"{where}[{k + ABSMAX!r}] must be float32 with one absmax per "
                         f"{block}-element block ({nblocks}), got "
                         f"{getattr(absmax, 'dtype', type(absmax).__name__)} of size "
                         f"{getattr(absmax, 'size', '?')}")
    ours = _slot_qmap(opt, layout, opt._slots.index(k))
    c = np.array(codes, dtype=np.uint8, order="C").reshape(-1)
    a = np.array(absmax, dtype=np.float32, order="C").reshape(-1)
    if code is not None:
        code = np.asarray(code)
        if code.dtype != np.float32 or code.shape != ours.shape:
            raise ValueError(f"{where}[{k + QMAP!r}] must be a float32 map of {ours.size} "
                             f"codes, got {code.dtype} of shape {code.shape}")
        if not np.array_equal(code.view(np.uint32), ours.view(np.uint32)):
            # Another map (say, bitsandbytes' built by a torch without FMA): carry the
            # values over, requantized to the nearest codes of ours.
            from .quant import dequantize_blockwise, quantize_blockwise
            x = dequantize_blockwise(c, a, code, block, bits=bits, n=n)
            c, a = quantize_blockwise(x, ours, block, bits=bits)
    if bits == 8 and not prec.quantized(n):
        return c, a
    return c.reshape(p.shape) if bits == 8 else c, a


@dataclass(frozen=True)
class _Rank1Codes:
    """Rank-1 normalized int4 state from a checkpoint, checked, in this optimizer's map."""

    codes: NDArray[np.uint8]
    maxima: NDArray[np.float32]


def _checked_rank1(opt: Optimizer, layout: GroupLayout, i: int, k: str, codes: NDArray[Any],
                   maxima: Any, code: Any, p: FloatArray
                   ) -> _Rank1Codes | NDArray[np.float32]:
    """Slot k's rank-1 normalized state from a checkpoint, checked: as it is where this
    optimizer keeps the param's slot rank-1 normalized with the same map, else decoded to
    float32 (to be quantized as this optimizer keeps it)."""
    from ._precision import QUANTIZED
    prec = layout.precision
    where = f"state_dict['state'][{i}]"
    if prec.quant != QUANTIZED["int4"]:
        keeps = (f"state_dtype={opt.state_dtype!r}" if opt.state_dtype is not None
                 else f"{prec.state_dtype}")
        raise ValueError(f"{where} holds rank-1 normalized int4 {k!r} ({k + RANK1!r}), but "
                         f"this optimizer keeps {keeps} state; build it with "
                         f"state_dtype='int4', or save with state_dict(dequantize=True)")
    dims = rank1_dims(p.shape)
    if dims is None:
        raise ValueError(f"{where}[{k + RANK1!r}]: a param of shape {p.shape} has no rank-1 "
                         f"normalized state (it needs 2 to {RANK1_MAXDIM} dimensions of "
                         f"size > 1)")
    ncodes = (p.size + 1) // 2
    if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8 or codes.size != ncodes:
        raise ValueError(f"{where}[{k!r}] must be the uint8 codes of {ncodes} bytes (int4 "
                         f"state of a {p.size}-element param), got "
                         f"{getattr(codes, 'dtype', type(codes).__name__)} of size "
                         f"{getattr(codes, 'size', '?')}")
    if (not isinstance(maxima, np.ndarray) or maxima.dtype != np.float32
            or maxima.size != sum(dims)):
        raise ValueError(f"{where}[{k + RANK1!r}] must be float32 with the maxima along each "
                         f"dimension of size > 1 of {p.shape} ({sum(dims)} values), got "
                         f"{getattr(maxima, 'dtype', type(maxima).__name__)} of size "
                         f"{getattr(maxima, 'size', '?')}")
    ours = _slot_qmap(opt, layout, opt._slots.index(k))
    c = np.array(codes, dtype=np.uint8, order="C").reshape(-1)
    m = np.array(maxima, dtype=np.float32, order="C").reshape(-1)
    theirs = ours
    if code is not None:
        code = np.asarray(code)
        if code.dtype != np.float32 or code.shape != ours.shape:
            raise ValueError(f"{where}[{k + QMAP!r}] must be a float32 map of {ours.size} "
                             f"codes, got {code.dtype} of shape {code.shape}")
        theirs = code
    if (layout.rank1_dims(k, p.shape) is not None
            and np.array_equal(theirs.view(np.uint32), ours.view(np.uint32))):
        return _Rank1Codes(c, m)
    return _dequantize_rank1(c, m, theirs, p)


def _float_like(v: NDArray[Any], p: FloatArray, where: str, layout: GroupLayout
                ) -> NDArray[np.float32]:
    """A float state buffer of the param's shape, read as float32 (to be quantized)."""
    if v.shape != p.shape or v.dtype.kind != "f":
        raise ValueError(f"{where} has shape {v.shape} and dtype {v.dtype}; it must be a "
                         f"float buffer of its param's shape {p.shape} (quantized here to "
                         f"{layout.precision.state_dtype} codes), or codes with "
                         f"their absmax")
    return np.asarray(v, dtype=np.float32)


def _quantize_float(layout: GroupLayout, v: NDArray[np.float32], code: NDArray[np.float32],
                    p: FloatArray) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    from .quant import quantize_blockwise
    assert layout.precision.quant is not None
    bits, block = layout.precision.quant
    c, a = quantize_blockwise(v, code, block, bits=bits)
    return (c.reshape(p.shape) if bits == 8 else c), a


def _with(layout: GroupLayout) -> str:
    prec = layout.precision
    if prec.default:
        return ""
    return (f" (state_dtype {prec.state_dtype}, "
            f"{'with' if prec.master else 'without'} master weights)")


def _load_entry(opt: Optimizer, i: int, st: Mapping[str, Any], p: FloatArray,
                layout: GroupLayout, scalar_names: tuple[str, ...]) -> ParamState:
    """Param i's checked state from a checkpoint's entry `st` (buffers copied)."""
    step = st.get("step", 0)
    if isinstance(step, np.ndarray) and step.size == 1:
        step = step.item()
    if isinstance(step, float) and step.is_integer():
        step = int(step)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"state_dict['state'][{i}]['step'] must be an integer >= 0, "
                         f"got {step!r}")
    entry: ParamState = {"step": int(step)}
    st = _bitsandbytes_names(opt, i, st)
    prec = layout.precision
    for k, v in st.items():
        if k == "step" or k.endswith(ABSMAX) or k.endswith(QMAP) or k.endswith(RANK1):
            continue           # (read with their slot below)
        if k in scalar_names:
            entry[k] = _v.scalar_state(v, f"state_dict['state'][{i}][{k!r}]")
            continue
        if k not in layout.slots:
            raise ValueError(f"state_dict['state'][{i}] has unknown buffer {k!r}; "
                             f"{type(opt).__name__} keeps "
                             f"{sorted(set(layout.slots) | set(scalar_names))} for "
                             f"{p.dtype} params{_with(layout)}")
        where = f"state_dict['state'][{i}][{k!r}]"
        if not isinstance(v, np.ndarray):
            raise TypeError(f"{where} must be an ndarray, got {type(v).__name__}")
        absmax = st.get(k + ABSMAX)
        maxima = st.get(k + RANK1)
        if maxima is not None and k != MASTER:
            # Rank-1 normalized in the checkpoint: checked; kept where this param is rank-1
            # normalized here in the same map, else decoded (and quantized as it is here).
            v = _checked_rank1(opt, layout, i, k, v, maxima, st.get(k + QMAP), p)
        elif absmax is not None:
            # Quantized in the checkpoint: check codes, absmax and map, then keep the codes
            # (our map) or requantize (another map), or dequantize for float state here.
            v = _checked_codes(opt, layout, i, k, v, absmax, st.get(k + QMAP), p)
        if k != MASTER and prec.quantized(p.size):
            kq = opt._slots.index(k)
            code = _slot_qmap(opt, layout, kq)
            dims = layout.rank1_dims(k, p.shape)
            if isinstance(v, _Rank1Codes):
                entry[k], entry[k + RANK1] = v.codes, v.maxima
                continue
            if isinstance(v, tuple) and dims is not None:     # blockwise -> rank-1
                v = _dequantize(layout, v[0], v[1], code, p)
            if dims is not None:
                from .reference import quantize_rank1
                entry[k], entry[k + RANK1] = quantize_rank1(
                    _float_like(v, p, where, layout), dims)
            elif isinstance(v, tuple):
                entry[k], entry[k + ABSMAX] = v
            else:
                entry[k], entry[k + ABSMAX] = _quantize_float(
                    layout, _float_like(v, p, where, layout), code, p)
            continue
        if isinstance(v, _Rank1Codes):            # (only returned for rank-1 state here)
            raise AssertionError("rank-1 codes for a param kept otherwise")
        if isinstance(v, tuple):                  # quantized checkpoint, float state here
            v = _dequantize(layout, v[0], v[1], _slot_qmap(opt, layout,
                                                          opt._slots.index(k)), p)
            if prec.quant is not None:            # a small param: float32 state
                entry[k] = v
                continue
            v = v.astype(prec.slot_dtype(k))
        want = FLOAT32 if (k != MASTER and prec.quant is not None) else prec.slot_dtype(k)
        if v.shape != p.shape or v.dtype != want:
            raise ValueError(f"{where} has shape {v.shape} and dtype {v.dtype}; it must have "
                             f"its param's shape {p.shape} and dtype {want}{_with(layout)}")
        entry[k] = np.array(v, dtype=want, order="C", copy=True)
    if layout.precision.master and MASTER not in entry and len(entry) > 1:
        raise ValueError(f"state_dict['state'][{i}] lacks {MASTER!r}: this optimizer keeps a "
                         f"float32 master copy of each {p.dtype} param (master_weights); load "
                         f"a checkpoint saved with master weights, or build the optimizer "
                         f"with master_weights=False")
    absent = [k for k in scalar_names if k not in entry]
    if absent:
        raise ValueError(f"state_dict['state'][{i}] lacks {absent}; "
                         f"{type(opt).__name__} keeps {list(scalar_names)} for every "
                         f"param that has stepped")
    return entry
