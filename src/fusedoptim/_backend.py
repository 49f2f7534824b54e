"""Backends: what runs one param group's step once the step loop has everything ready.

The step loop (:meth:`fusedoptim.Optimizer.step`) validates, binds the grads into the
group's plan, creates missing state, then hands the group to ``opt._backend.apply``:

* :class:`FusedBackend` (every optimizer class): fills the plan's scalars from the spec's
  scalars function (once per distinct step count) and runs the kernel(s) through
  ``opt._run``, in one GIL-free call.
* :class:`ReferenceBackend` (the twins in :mod:`fusedoptim.reference`): steps the same
  params and state through the optimizer's NumPy reference function, one tensor at a time.

A backend also says what the step loop may assume about it: ``flat_plans`` (a group whose
params tile one buffer may step as one flat tensor) and ``gate_in_pass`` (the
``skip_nonfinite`` check may run inside the group's first kernel pass).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np

from ._precision import ABSMAX, MASTER, RANK1, GroupPrecision, compute_dtype, qmap, \
    rank1_dims, sr_keys, stochastic_round

if TYPE_CHECKING:
    from . import _kernels
    from ._typing import FloatArray, ParamState
    from .optimizer import Optimizer, _GroupCache


class Backend:
    """Runs a group's step: ``apply(opt, gi, plan, cache, grads, fresh, inv_scale)``.

    ``plan`` is group `gi`'s plan with the grads bound; ``cache`` holds the validated
    hyperparameters (``cache.hyper``, and ``cache.args``, the scalars function's);
    ``fresh`` maps a tensor of the plan to the state buffers created for it this step;
    ``inv_scale`` is 1/grad_scale or None. The step counts advance here."""

    #: a group whose params tile one buffer may step as one flat tensor
    flat_plans: ClassVar[bool] = True
    #: every step runs through the plan's passes, so skip_nonfinite may check in the first
    gate_in_pass: ClassVar[bool] = True

    def apply(self, opt: Optimizer, gi: int, plan: _kernels.Plan, cache: _GroupCache,
              grads: list[FloatArray | None], fresh: dict[int, tuple[str, ...]] | None,
              inv_scale: float | None) -> None:
        raise NotImplementedError


class FusedBackend(Backend):
    """The compiled kernels: scalars per distinct step count, then ``opt._run(plan, hyper)``."""

    def apply(self, opt: Optimizer, gi: int, plan: _kernels.Plan, cache: _GroupCache,
              grads: list[FloatArray | None], fresh: dict[int, tuple[str, ...]] | None,
              inv_scale: float | None) -> None:
        spec = opt.spec
        scalars = spec.scalars
        args = cache.args
        step = plan.advance()
        if step != 0 and spec.scalar_state:
            # One hp row and next scalar state per distinct (step, scalar state); usually one.
            for k, (s, *current) in enumerate(plan.group_active()):
                row, new_state = scalars(s, *current, *args)
                plan.set_group(k, row, tuple(new_state))
        elif step > 0:
            plan.set_scalars(scalars(step, *args))
        elif step == -1:
            for s in plan.distinct_active_steps():
                plan.set_scalars(scalars(s, *args), s)
        else:
            return  # no param of this group has a grad
        if fresh and spec.fresh:
            for t in fresh:
                s = int(plan.steps_array[t])
                plan.set_scalars(scalars(s, *args, fresh=True), s, t)
        if inv_scale is not None:
            # Every active row was just rewritten, so this scales each sign exactly once.
            plan.hp_array[:, 0] *= inv_scale
        keys = opt._layouts[gi].sr_keys
        if keys is not None:
            sr_keys(opt.seed, gi, plan.steps_array, keys)
        opt._run(plan, cache.hyper)


class ReferenceBackend(Backend):
    """The NumPy reference function `fn` (the functional signature), one tensor at a time,
    on the optimizer's own params and state: the tests' oracle for the fused step."""

    # one tensor at a time, even when the params tile one buffer
    flat_plans = False
    # the step runs in NumPy: skip_nonfinite checks before it
    gate_in_pass = False

    def __init__(self, fn: Callable[..., None]) -> None:
        self.fn = fn

    def apply(self, opt: Optimizer, gi: int, plan: _kernels.Plan, cache: _GroupCache,
              grads: list[FloatArray | None], fresh: dict[int, tuple[str, ...]] | None,
              inv_scale: float | None) -> None:
        active = [t for t, g in enumerate(grads) if g is not None]
        if not active:
            return
        prec = opt._layouts[gi].precision
        # The function runs in the kernels' compute dtype (float32 for half precision):
        # half grads are read as float32 (exact), as the kernel's glue reads them.
        compute = compute_dtype(prec.param_dtype)
        grads = [g if g is None or g.dtype == compute else g.astype(compute)
                 for g in grads]
        if inv_scale is not None:
            # The fused kernels fold 1/grad_scale into the grad's multiplier: (1/s in the
            # compute dtype) * g, negated under maximize. Negation is exact, so unscaling
            # here first and letting the function negate gives the same bits.
            grads = [None if g is None else g * g.dtype.type(inv_scale) for g in grads]
        spec = opt.spec
        start = opt._group_slices[gi].start
        params = opt.param_groups[gi]["params"]
        # Every param that steps has state by now (ensure_state).
        states = cast("list[ParamState]", [opt._state[start + t] for t in active])
        # The params the function updates: the float32 master copies under master weights,
        # float32 copies of half params otherwise (rounded back below), else the params.
        if prec.master:
            work = [st[MASTER] for st in states]
        elif params[0].dtype != compute:
            work = [params[t].astype(compute) for t in active]
        else:
            work = [params[t] for t in active]
        # For a fresh slot the function gets None for a buffer created this step and
        # creates it itself, as torch's functional API does.
        new = (fresh or {}) if spec.fresh else {}
        convert = prec.state_dtype != compute
        buffers = [[None if slot in new.get(t, ()) else
                    self._state_in(opt, prec, st, k, params[t], compute, convert)
                    for t, st in zip(active, states)] for k, slot in enumerate(opt._slots)]
        # Per-tensor scalar state (e.g. mu_product) goes in as lists of floats, updated in place.
        scalars = [[float(plan.sstate_array[t, j]) for t in active]
                   for j in range(len(opt._scalar_state))]
        steps = [int(plan.steps_array[t]) for t in active]
        # A variant (AdamW) steps through its base's function with every kernel field, so
        # the twin follows the group's values as the fused step does.
        base = spec.base if spec.base is not None else spec
        extra: dict[str, Any] = {}
        stored: set[int] = set()
        if getattr(self.fn, "takes_store", False) and prec.state_dtype != compute:
            # LAMB with state stored inexactly: the moments are stored mid-step and used as
            # stored (lamb.pxi.tp); they are not stored again below.
            extra["_store"] = self._storer(opt, prec, states, [params[t] for t in active],
                                           compute, stored)
        self.fn(work, [grads[t] for t in active],
                *buffers, *scalars, steps, **base.functional_kwargs(cache.hyper), **extra)
        for t, s in zip(active, steps):
            plan.steps_array[t] = s
        for j, values in enumerate(scalars):
            for t, x in zip(active, values):
                plan.sstate_array[t, j] = x
        for k, (slot, lst) in enumerate(zip(opt._slots, buffers)):
            for j, (t, st, buf) in enumerate(zip(active, states, lst)):
                if j in stored:
                    continue
                if buf is not None and (slot + ABSMAX in st or slot + RANK1 in st):
                    # quantized: requantize the updated moment, as the kernel's glue does
                    self._quantize_into(opt, prec, st, k, buf)
                elif buf is not None and buf is not st.get(slot):
                    # created by the function, or a compute-dtype copy: write it back,
                    # rounded to nearest even into the state dtype, in the same array
                    st[slot][...] = buf
        if prec.sr:
            keys = np.zeros((len(params), 2), np.uint32)
            sr_keys(opt.seed, gi, plan.steps_array, keys)
            for t, w in zip(active, work):
                params[t][...] = stochastic_round(w, keys[t])
        elif work[0] is not params[active[0]]:
            for t, w in zip(active, work):
                params[t][...] = w          # rounded to nearest even, as the kernel does


    @staticmethod
    def _storer(opt: Optimizer, prec: GroupPrecision, states: list[ParamState],
                params: list[FloatArray], compute: Any, stored: set[int]
                ) -> Callable[[int, FloatArray, FloatArray], tuple[FloatArray, FloatArray]]:
        """The hook that stores param i's first two slots mid-step and returns them as
        stored (quantized and decoded, or rounded to bfloat16 and read back)."""
        def store(i: int, *values: FloatArray) -> tuple[FloatArray, FloatArray]:
            st, p = states[i], params[i]
            out = []
            for k, x in enumerate(values):
                slot = opt._slots[k]
                if slot + ABSMAX in st or slot + RANK1 in st:
                    ReferenceBackend._quantize_into(opt, prec, st, k, x)
                    out.append(ReferenceBackend._state_in(opt, prec, st, k, p, compute, True))
                else:
                    st[slot][...] = x
                    out.append(st[slot].astype(compute))
            stored.add(i)
            return out[0], out[1]
        return store

    @staticmethod
    def _quantize_into(opt: Optimizer, prec: GroupPrecision, st: ParamState, k: int,
                       x: FloatArray) -> None:
        """Quantize float values x into slot k's codes and absmax (or rank-1 maxima), as
        the kernels' glue does (the NumPy reference of the codec: the same bits)."""
        from .reference import quantize_blockwise, quantize_rank1
        assert prec.quant is not None
        bits, block = prec.quant
        slot = opt._slots[k]
        if slot + RANK1 in st:
            dims = rank1_dims(x.shape)
            assert dims is not None
            codes, maxima = quantize_rank1(x, dims)
            st[slot].reshape(-1)[...] = codes
            st[slot + RANK1][...] = maxima
            return
        codes, absmax = quantize_blockwise(x, qmap(opt._kernel, k, bits), block, bits)
        st[slot].reshape(-1)[...] = codes
        st[slot + ABSMAX][...] = absmax

    @staticmethod
    def _state_in(opt: Optimizer, prec: GroupPrecision, st: ParamState, k: int,
                  param: FloatArray, compute: Any, convert: bool) -> Any:
        """Slot k's state as the function gets it: the buffer itself, or a compute-dtype
        copy (half state, or quantized state dequantized)."""
        slot = opt._slots[k]
        buf = st.get(slot)
        if buf is None:
            return None
        if slot + RANK1 in st:
            from .reference import dequantize_rank1
            dims = rank1_dims(param.shape)
            assert dims is not None
            return dequantize_rank1(buf, st[slot + RANK1], dims,
                                    qmap(opt._kernel, k, 4)).reshape(param.shape)
        if slot + ABSMAX in st:
            assert prec.quant is not None
            from .reference import dequantize_blockwise
            bits, block = prec.quant
            return dequantize_blockwise(buf, st[slot + ABSMAX], qmap(opt._kernel, k, bits),
                                        block, bits, n=param.size).reshape(param.shape)
        if not convert or buf.dtype == compute:
            return buf
        return buf.astype(compute)


#: the backend of every optimizer class
FUSED = FusedBackend()
