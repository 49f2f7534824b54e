"""The Optimizer base class: param groups, lazy state, state_dict, and the fused step.

A subclass is declarative: it binds an :class:`~fusedoptim._spec.OptSpec` (``spec = ...``),
which names its chunk kernel, its state slots (their initial values; per-tensor scalar state
kept in double, like NAdam's mu_product; a distinct first update of new state, like torch's
SGD momentum buffer), its hyperparameters with their validators, and its scalars function.
Everything else (structure checks, buffer checks, lazy state, step counts, scalar state,
checkpoints, the one GIL-free call per group) lives here, once.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np

from . import _kernels
from . import _validation as _v
from ._spec import OptSpec, register
from .flat import FlatParams, GroupLayout

if TYPE_CHECKING:
    from ._typing import (FloatArray, GradsArg, Hyper, OptimizerStateDict, ParamGroup,
                          ParamsArg, ParamState)

_required = object()
_ARENA = object()      # per-group grads marker: bind the group's FlatParams grad buffer
_MAPPINGS = (dict, MappingProxyType)
_NONFINITE = _kernels.REDUCE_IDS["nonfinite"]


class _GroupCache:
    """What a group needs per step, rebuilt only when its hyperparameters, param set or
    state change."""

    __slots__ = ("plan", "slots_in_use", "key", "hyper", "args", "wanted")

    plan: _kernels.Plan | None
    slots_in_use: tuple[str, ...] | None
    key: object
    hyper: Hyper
    args: tuple[Any, ...]
    wanted: tuple[str, ...]

    def __init__(self) -> None:
        self.plan = None
        self.slots_in_use = None    # the slots the plan and state were built for
        self.key = None             # the raw hyperparameter values last validated
        self.hyper = ()             # their validated, canonical form (the spec's NamedTuple)
        self.args = ()              # the scalars function's hyperparameter arguments
        self.wanted = ()            # the slots that configuration uses


def _one_key(key: str) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    return lambda group: (group[key],)


class Optimizer:
    """Base class, shaped like ``torch.optim.Optimizer``.

    Params may be a list of arrays, a dict name -> array, a :class:`FlatParams`, or a list
    of param-group dicts (each with ``"params"``: a list or dict of arrays or a FlatParams,
    plus hyperparameter overrides). ``step(grads)`` takes a flat list aligned with the params
    in order across groups, or a dict keyed by name when every param was named. A grad of
    ``None`` skips that param. ``step()`` with no grads reads the FlatParams' grad buffer.

    A group keeps one buffer per state slot, each param's state a view of it. A group
    whose params tile one buffer (a FlatParams, or views laid end to end in order) steps as
    one tensor while every param steps together; a step that skips some params runs per
    param on the same buffers (see README).

    ``state`` maps the flat param index to its buffers, ``step`` and any scalar state;
    buffers are the live arrays, ``step`` and scalar state are copies. Non-finite gradient
    values are not input errors: they propagate into params and state, as in torch.

    Non-finite steps and gradient scaling (every optimizer, handled here):

    * ``skip_nonfinite=True`` (a constructor option, not a param-group hyperparameter: it is
      about the data, not the schedule, so schedulers never see it; ``opt.skip_nonfinite`` may
      be changed between steps) makes every step check all grads of all groups before it
      writes anything, stopping at the first non-finite unit. The first group to be updated
      is checked inside its own update pass (same threads, one fork/join, each thread
      checking the units it then updates), the others in a read-only pass before it. If any
      element is NaN or +-Inf the step is skipped:
      params and state stay bitwise untouched, no step count advances, no state is created,
      ``opt.skipped_steps`` is incremented and ``step()`` returns False. This is what torch's
      fused optimizers do with GradScaler's ``found_inf``. ``skipped_steps`` counts skips since
      the optimizer was built; it is not part of ``state_dict()``.
    * ``step(grads, grad_scale=s)`` divides the grads by ``s`` inside the fused kernel (torch's
      fused ``grad_scale``), so a mixed-precision loss-scaling loop needs no extra unscale pass.
      ``1/s`` is folded into the kernel's first scalar, the grad's multiplier (``-1`` under
      ``maximize``): the kernel computes ``(1/s rounded to the dtype) * g``. For a power of two
      ``s`` (GradScaler only uses those) that equals ``g / s`` exactly; otherwise it may differ
      from the division by 1 ulp. ``s`` must be finite and > 0, with ``1/s`` a normal number
      in every group's dtype. Norms computed by LAMB and LARS see the unscaled grads.

    ``step()`` returns True whenever it did not skip (including when no param had a grad), and
    False only when ``skip_nonfinite`` skipped it.
    """

    #: the optimizer's declaration (kernel, state, hyperparameters, scalars); every subclass
    #: binds one, which also registers it (functional entry, reference twin)
    spec: ClassVar[OptSpec[Any]]

    # From the spec (set when a subclass binds one):
    #: name of the registered chunk kernel
    _kernel: ClassVar[str]
    #: state buffer names, in the kernel's buffer order (columns 2, 3, ...)
    _slots: ClassVar[tuple[str, ...]] = ()
    #: group keys whose values form the hyperparameters, in order
    _hyper_keys: ClassVar[tuple[str, ...]] = ()
    #: names of per-tensor scalar state (Python floats in ``state``; doubles in the plan)
    _scalar_state: ClassVar[tuple[str, ...]] = ()

    #: whether a group whose params tile one buffer may step as one flat tensor (the NumPy
    #: reference twins step per param, so they set this False)
    _flat_plans: ClassVar[bool] = True

    #: whether every step runs through the plan's passes, so the skip_nonfinite check can
    #: run inside the first one (the NumPy reference twins step in NumPy: they set this False)
    _check_in_pass: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        spec = cls.__dict__.get("spec")
        if spec is None:
            return                  # e.g. AdamW's twin: the spec of the class it extends
        if not isinstance(spec, OptSpec):
            raise TypeError(f"{cls.__name__}.spec must be an OptSpec, got {spec!r}")
        register(spec, cls)
        cls._kernel = spec.kernel
        cls._slots = spec.slot_names
        cls._hyper_keys = spec.group_keys
        cls._scalar_state = spec.scalar_names

    # -- construction -----------------------------------------------------------------------
    def __init__(self, params: ParamsArg, defaults: Mapping[str, Any], *,
                 skip_nonfinite: bool = False) -> None:
        if getattr(type(self), "spec", None) is None:
            raise TypeError(f"{type(self).__name__} has no spec: Optimizer is a base class, "
                            f"and each optimizer binds an OptSpec (spec = ...)")
        # grad_scale is folded into the kernel's scalar 0, which every kernel applies to the
        # raw grad and to nothing else: refuse a kernel laid out otherwise.
        names = _kernels.SCALARS[self._kernel]
        if not names or names[0] != "sign":
            raise TypeError(f"{type(self).__name__}: kernel {self._kernel!r} must take the "
                            f"grad's multiplier 'sign' as its scalar 0, got {names[:1]}")
        self.skip_nonfinite = _v.flag(skip_nonfinite, "skip_nonfinite")
        self.skipped_steps = 0
        self.defaults = dict(defaults)
        keys = self._hyper_keys
        # the raw values of a group's hyperparameters, in C (one key: a 1-tuple all the same)
        self._hyper_get: Callable[[Mapping[str, Any]], tuple[Any, ...]]
        if len(keys) > 1:
            self._hyper_get = operator.itemgetter(*keys)
        else:
            self._hyper_get = _one_key(keys[0])
        self._kernel_id = _kernels.KERNEL_IDS[self._kernel]
        self.param_groups: list[ParamGroup] = []
        self._names: list[str | None] = []    # flat list of names (None for unnamed params)
        self._group_slices: list[range] = []  # flat index range of each group
        # flat list: dict slot -> array, or None before first grad
        self._state: list[ParamState | None] = []
        self._caches: list[_GroupCache] = []
        self._layouts: list[GroupLayout] = []  # per group: GroupLayout (state buffers, flat view)
        self._pinned: list[tuple[FloatArray, ...]] = []  # per group: the arrays the plans point at
        self._arena_grads: object = None      # FlatParams.grads that step() may bind in O(1)
        # picks a dict of grads in param order (C-level)
        self._grad_getter: Callable[..., Sequence[Any]] | None = None
        groups = self._parse_params(params)
        for group in groups:
            self._add_group(group)

    def _parse_params(self, params: ParamsArg) -> list[Mapping[str, Any]]:
        if isinstance(params, np.ndarray):
            raise TypeError("params must be a list or dict of arrays (or a list of param "
                            "groups), got a single ndarray; wrap it: [array]")
        if isinstance(params, FlatParams):
            return [{"params": params}]
        if isinstance(params, _MAPPINGS):
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

    def add_param_group(self, param_group: ParamGroup) -> None:
        """Add a group, as in torch. Its unset hyperparameters take the defaults."""
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError(f"param_group must be a dict with a 'params' entry, got "
                            f"{type(param_group).__name__}")
        self._add_group(param_group)

    def _add_group(self, group_in: Mapping[str, Any]) -> None:
        raw = group_in["params"]      # Any: a list, tuple or dict of arrays, or a FlatParams
        arena: FlatParams | None = None
        names: list[str | None]
        arrays: list[FloatArray]
        if isinstance(raw, FlatParams):
            arena, raw = raw, raw.params
        if isinstance(raw, np.ndarray):
            raw = [raw]
        if isinstance(raw, _MAPPINGS):
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
        unknown = set(group_in) - set(self.defaults) - {"params", "initial_lr"}
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)} in a param group; "
                             f"accepted: {sorted(self.defaults)}")
        start = len(self._names)
        all_names = self._names + names
        labels = [self._label("params", start + i, names[i]) for i in range(len(arrays))]
        for a, label in zip(arrays, labels):
            _kernels.check_param(a, label)
        dtypes = {a.dtype for a in arrays}
        if len(dtypes) > 1:
            raise TypeError(f"params of one group have mixed dtypes {sorted(map(str, dtypes))}; "
                            f"put float32 and float64 params in separate param groups")
        named = [n for n in all_names if n is not None]
        if len(set(named)) != len(named):
            raise ValueError("param names must be unique across groups")
        everything = [p for g in self.param_groups for p in g["params"]] + arrays
        clash = _kernels.find_overlap(everything)
        if clash is not None:
            i, j = clash
            raise ValueError(
                f"{self._label('params', i, all_names[i])} and "
                f"{self._label('params', j, all_names[j])} share memory (the same array "
                f"given twice, or overlapping views); give each param its own buffer")
        group = dict(self.defaults)
        group.update({k: v for k, v in group_in.items() if k != "params"})
        cache = _GroupCache()
        self._validate_group(group, cache)
        # Params that tile one buffer (always those of a FlatParams) can step as one tensor.
        flat_param = (_kernels.tile_view(arrays) if arena is not None or len(arrays) > 1
                      else None)
        group["params"] = arrays
        self.param_groups.append(group)
        self._names.extend(names)
        self._group_slices.append(range(start, start + len(arrays)))
        self._state.extend([None] * len(arrays))
        self._caches.append(cache)
        # (unless the step needs each tensor's own norms: LAMB, LARS)
        flat_ok = self._flat_plans and not self.spec.per_tensor
        self._layouts.append(GroupLayout(arrays, flat_param, arena, flat_ok))
        self._pinned.append(tuple(arrays))
        first = self._layouts[0]
        self._arena_grads = (first.arena.grads if len(self._layouts) == 1
                             and first.arena is not None else None)
        self._grad_getter = None

    @staticmethod
    def _label(what: str, index: int, name: str | None) -> str:
        return f"{what}[{name!r}]" if name is not None else f"{what}[{index}]"

    def _validate_group(self, group: Mapping[str, Any], cache: _GroupCache) -> Hyper:
        """The group's hyperparameters, validated by the spec when their values changed."""
        key = self._hyper_get(group)
        if key != cache.key:        # (a new cache's key is None: never a group's)
            spec = self.spec
            hyper = cache.hyper = spec.check_group(key)
            cache.key = key
            cache.args = spec.args(hyper)
            cache.wanted = spec.slots_in_use(hyper)
        return cache.hyper

    # -- per-step ---------------------------------------------------------------------------
    def _split_grads(self, grads: GradsArg) -> list[Any]:
        """Turn the user's grads into one list per group, or raise. A group built from a
        FlatParams gets the _ARENA marker for ``step()`` and ``step(arena.grads)``. So each
        entry is a list of grads (an array or None per param) or _ARENA."""
        if grads is None or grads is self._arena_grads:
            return self._arena_marks()
        n = len(self._names)
        if isinstance(grads, _MAPPINGS):
            names = self._names
            getter = self._grad_getter
            if getter is None:
                if any(k is None for k in names):
                    raise TypeError("grads is a dict, but the params were not named; pass a "
                                    "list of grads in param order")
                # itemgetter looks all names up in C: no Python loop per tensor per step.
                getter = self._grad_getter = (operator.itemgetter(*names) if n > 1 else
                                              lambda d, k=names[0]: (d[k],))
            flat: Sequence[FloatArray | None] | None = None
            if len(grads) == n:
                try:
                    flat = list(getter(grads))  # n names found among n keys: same key set
                except KeyError:
                    pass
            if flat is None:
                missing = [k for k in names if k not in grads]
                extra = [k for k in grads if k not in set(names)]
                raise ValueError(f"grads keys do not match the params: missing {missing}, "
                                 f"unexpected {extra}")
        elif isinstance(grads, (list, tuple)):
            if len(grads) != n:
                raise ValueError(f"grads has {len(grads)} entries but there are {n} params; "
                                 f"pass one grad (or None) per param, in param order")
            flat = grads
        elif isinstance(grads, np.ndarray) and n == 1:
            flat = [grads]
        else:
            raise TypeError(f"grads must be a list of arrays (or a dict keyed by param name), "
                            f"got {type(grads).__name__}")
        if len(self.param_groups) == 1:
            return [flat if isinstance(flat, list) else list(flat)]
        return [list(flat[s.start:s.stop]) for s in self._group_slices]

    def _arena_marks(self) -> list[object]:
        for gi, layout in enumerate(self._layouts):
            if layout.arena is None:
                raise TypeError(f"step() without grads reads them from the FlatParams the "
                                f"optimizer was built from, but param group {gi} was not "
                                f"built from one; pass grads: a list of arrays in param "
                                f"order (or a dict keyed by param name)")
        return [_ARENA] * len(self._layouts)

    def _plan(self, gi: int, cache: _GroupCache) -> _kernels.Plan:
        params = self.param_groups[gi]["params"]
        # The plan points at these arrays: a param swapped in later would be ignored (and the
        # old one, if freed, written after its release). One C-level pass per step.
        if not _kernels.same_items(params, self._pinned[gi]):
            raise ValueError(f"param_groups[{gi}]['params'] changed after the optimizer was "
                             f"built; fusedoptim keeps pointer tables per group, so build a "
                             f"new optimizer for new params (load_state_dict carries the "
                             f"state over) or add them with add_param_group")
        if cache.plan is None:
            sl = self._group_slices[gi]
            layout = self._layouts[gi]
            self._adopt_state(gi, layout)
            entries = [self._state[i] for i in sl]
            labels = [self._label("grads", i, self._names[i]) for i in sl]
            if layout.use_flat:
                # One tensor. The params are in lockstep (checked by _route_flat), so the
                # first one's entry, pointed at the group's buffers, stands for them all.
                first = entries[0]
                entries = [None if first is None else
                           {**first, **{s: layout.buffers[s] for s in self._slots if s in first}}]
                params = [layout.flat_param]
                labels = [f"grads of param group {gi} (bound as one flat buffer)"]
            state = [None if st is None else [st.get(s) for s in self._slots] for st in entries]
            steps = [0 if st is None else st["step"] for st in entries]
            if cache.slots_in_use is None:
                cache.slots_in_use = cache.wanted      # validated when the group was added
            required = [self._slots.index(s) for s in cache.slots_in_use]
            names = self._scalar_state
            scalar_state: list[list[float]] | None = None
            if names:
                scalar_state = [[0.0] * len(names) if st is None else [st[k] for k in names]
                                for st in entries]
            cache.plan = _kernels.Plan(params, state, len(self._slots),
                                       len(_kernels.SCALARS[self._kernel]), labels, steps,
                                       scalar_state, required)
        return cache.plan

    # -- groups whose params tile one buffer ------------------------------------------------
    def _route_flat(self, gi: int, cache: _GroupCache, layout: GroupLayout,
                    grads: list[FloatArray | None] | list[FloatArray]
                    ) -> list[FloatArray | None] | list[FloatArray]:
        """The grads to bind for a group whose params tile one buffer: [one flat grad] when
        every param has a grad, the grads tile one buffer the same way, and the params are in
        lockstep; else the per-param list. Changing path syncs the step counts through the
        state dicts and rebuilds the plan: O(n) Python, only when the path changes."""
        flat_grad: FloatArray | None
        if grads is _ARENA:
            # _ARENA marks only groups built from a FlatParams
            assert layout.arena is not None and layout.grad_views is not None
            flat_grad, grads = layout.arena.flat_grad, layout.grad_views
        else:
            flat_grad = _kernels.tile_view(grads, layout.params) if layout.enabled else None
        use = (layout.enabled and flat_grad is not None
               and self._flat_lockstep(gi, cache, layout))
        if use != layout.use_flat:
            self._sync_steps(gi)
            cache.plan = None
            layout.use_flat = use
        return [flat_grad] if use else grads

    def _flat_lockstep(self, gi: int, cache: _GroupCache, layout: GroupLayout) -> bool:
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
            self._sync_steps(gi)
            entries = [self._state[i] for i in self._group_slices[gi]]
            names = self._scalar_state

            # bitwise for the floats: -0.0 and NaN never pass for equal
            def key(st: ParamState | None) -> tuple[list[str], int, list[str]] | None:
                return (None if st is None else
                        (sorted(st), st["step"], [float(st[k]).hex() for k in names]))
            first = key(entries[0])
            layout.lockstep = all(key(st) == first for st in entries)
        return layout.lockstep

    def _adopt_state(self, gi: int, layout: GroupLayout) -> None:
        """Copy every state buffer that is not yet a view of the group's buffers (one loaded
        by load_state_dict) into its place there. O(n) Python, only when a plan is built."""
        for t, i in enumerate(self._group_slices[gi]):
            st = self._state[i]
            if st is None:
                continue
            for s in self._slots:
                buf = st.get(s)
                if buf is not None:
                    view = layout.slot_views(s)[t]
                    if buf is not view:
                        view[...] = buf
                        st[s] = view

    def _sync_steps(self, gi: int) -> None:
        """Copy the plan's step counts and scalar state into the state dicts (before a
        rebuild or a save)."""
        plan = self._caches[gi].plan
        if plan is None:
            return
        names = self._scalar_state
        one = self._layouts[gi].use_flat            # the flat plan's one row is every param's
        for t, i in enumerate(self._group_slices[gi]):
            st = self._state[i]
            if st is not None:
                r = 0 if one else t
                st["step"] = int(plan.steps_array[r])
                for j, k in enumerate(names):
                    st[k] = float(plan.sstate_array[r, j])

    def _ensure_state(self, gi: int, cache: _GroupCache, grads: list[FloatArray | None]
                      ) -> tuple[_kernels.Plan, dict[int, tuple[str, ...]]]:
        """Create state for params stepping for the first time (or a slot they lack, e.g.
        amsgrad switched on, or one missing from a checkpoint), filled with its initial value
        (the spec's ``init``, zero by default), then rebuild the group's plan. Returns the plan
        and {tensor index in the group: names of the buffers created}."""
        self._sync_steps(gi)
        slots = cache.slots_in_use
        hyper = cache.hyper
        assert slots is not None                # step() set them
        initial = self.spec.initial
        layout = self._layouts[gi]
        one = layout.use_flat                       # grads is [flat grad]: every param steps
        fresh = {}
        for t, i in enumerate(self._group_slices[gi]):
            if not one and grads[t] is None:
                continue
            st = self._state[i]
            if st is None:
                st = self._state[i] = {"step": 0}
                for k in self._scalar_state:
                    st[k] = initial(k, hyper)
            new = tuple(s for s in slots if s not in st)
            for s in new:
                st[s] = layout.slot_views(s)[t]     # its place in the group's buffer
                st[s].fill(initial(s, hyper))
            if new:
                fresh[t] = new
        if one and fresh:
            fresh = {0: fresh[0]}   # in lockstep, every param got the same new buffers
        cache.plan = None
        plan = self._plan(gi, cache)
        plan.bind(grads)
        return plan, fresh

    def step(self, grads: GradsArg = None,
             grad_scale: float | FloatArray | None = None) -> bool:
        """One fused, in-place update of every param that has a grad.

        Everything (grads structure, each grad's type, dtype, shape, layout and aliasing,
        every group's hyperparameters, grad_scale) is checked before anything is written.
        Without grads, each group reads the grad buffer of the FlatParams it was built from.
        ``grad_scale``: the grads are divided by it inside the kernel (see the class doc).
        Returns False when ``skip_nonfinite`` skipped the step, else True.
        """
        per_group = self._split_grads(grads)
        inv_scale = None if grad_scale is None else self._inv_grad_scale(grad_scale)
        groups = self.param_groups
        caches = self._caches
        pending = []
        plan: _kernels.Plan | None
        fresh: dict[int, tuple[str, ...]] | None
        for gi in range(len(groups)):
            cache = caches[gi]
            self._validate_group(groups[gi], cache)
            layout = self._layouts[gi]
            if layout.flat_param is not None:
                per_group[gi] = self._route_flat(gi, cache, layout, per_group[gi])
            plan = self._plan(gi, cache)
            missing = plan.bind(per_group[gi])
            if cache.wanted != cache.slots_in_use:
                cache.slots_in_use = cache.wanted
                missing = 1
            pending.append(missing)
        gated = -1
        if self.skip_nonfinite:
            gated = self._gated_group(pending)
            if not self._grads_finite(but=gated):
                self.skipped_steps += 1
                return False
        for gi in range(len(groups)):
            cache = caches[gi]
            plan, fresh = cache.plan, None
            if pending[gi]:
                plan, fresh = self._ensure_state(gi, cache, per_group[gi])
            assert plan is not None         # bound by the loop above
            if gi != gated:
                self._apply(gi, plan, cache, per_group[gi], fresh, inv_scale)
                continue
            # The first group to write checks its own grads inside its own pass (see
            # _gated_group); the others were checked above, so a veto here leaves every
            # buffer untouched and only the step counts and scalar state to put back.
            plan.arm_gate(_NONFINITE)
            try:
                self._apply(gi, plan, cache, per_group[gi], fresh, inv_scale)
            finally:
                outcome = plan.disarm_gate()
            if outcome == "tripped":
                plan.undo_advance()
                self.skipped_steps += 1
                return False
            if outcome == "unused":
                raise RuntimeError(f"{type(self).__name__}: the skip_nonfinite check did not "
                                   f"run (a _run override that drives no pass?)")
        return True

    def _gated_group(self, pending: list[int]) -> int:
        """The group whose finiteness check runs inside its update pass, or -1.

        A separate check pass costs a read of the grads plus a second fork/join and Python
        call (on a 1e6 AdamW step at 2 threads with a passive OpenMP wait policy: +41-64%,
        against +15-29% in one region). So the first group that writes gets its check in the
        same parallel region, just before the update, and only the groups after it are
        checked up front. Not on a step that creates state (no state may appear on a skipped step),
        nor for classes whose step does not go through the plan's passes (the references)."""
        if not self._check_in_pass or any(pending):
            return -1
        for gi, cache in enumerate(self._caches):
            assert cache.plan is not None       # step() bound every group's plan
            if cache.plan.nactive and cache.plan.total:
                return gi
        return -1

    def _grads_finite(self, but: int = -1) -> bool:
        """True when every bound grad of every group (except group `but`) is finite: the grad
        column of each group's plan, read once, stopping at the first non-finite work unit."""
        for gi, cache in enumerate(self._caches):
            assert cache.plan is not None       # step() bound every group's plan
            if gi != but and cache.plan.nactive and \
                    cache.plan.reduce(_NONFINITE, 1, True)[1][0] != 0.0:
                return False
        return True

    def _inv_grad_scale(self, grad_scale: object) -> float:
        """1 / grad_scale, after checking that it is usable in every group's dtype."""
        s = _v.scalar_state(grad_scale, "grad_scale")    # a number or a 1-element array
        s = _v.positive(s, "grad_scale")
        inv = 1.0 / s
        for g in self.param_groups:
            info = np.finfo(g["params"][0].dtype)
            if not float(info.tiny) <= inv <= float(info.max):
                raise ValueError(f"grad_scale={grad_scale!r} is out of range for "
                                 f"{info.dtype} params: 1/grad_scale must be a normal "
                                 f"{info.dtype} number, i.e. grad_scale in "
                                 f"[{1 / float(info.max):.3g}, {1 / float(info.tiny):.3g}]")
        return inv

    def _apply(self, gi: int, plan: _kernels.Plan, cache: _GroupCache,
               grads: list[FloatArray | None],
               fresh: dict[int, tuple[str, ...]] | None = None,
               inv_scale: float | None = None) -> None:
        spec = self.spec
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
        self._run(plan, cache.hyper)

    def _run(self, plan: _kernels.Plan, hyper: Hyper) -> None:
        """Run the step's kernel(s) over the bound plan, its scalars set: the spec's ``run``
        (LAMB, LARS: a reduction pass, then the update), else one pass of its kernel."""
        run = self.spec.run
        if run is None:
            plan.run(self._kernel_id)
        else:
            run(plan, hyper)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the grad buffer of every FlatParams the optimizer was built from (a loop that
        accumulates into it needs that; a grad cannot be "set to None" there). Other grads
        are owned by the caller: for them this does nothing, kept for torch compatibility."""
        for layout in self._layouts:
            if layout.arena is not None:
                layout.arena.zero_grad()

    # -- state ------------------------------------------------------------------------------
    @property
    def state(self) -> dict[int, ParamState]:
        for gi in range(len(self.param_groups)):
            self._sync_steps(gi)
        return {i: st for i, st in enumerate(self._state) if st is not None}

    def state_dict(self) -> OptimizerStateDict:
        """Hyperparameters, step counts and copies of every state buffer, keyed by the flat
        param index as in torch. Copies, so later steps do not change a saved checkpoint."""
        state = {i: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
                 for i, st in self.state.items()}
        groups = []
        for gi, g in enumerate(self.param_groups):
            entry = {k: v for k, v in g.items() if k != "params"}
            sl = self._group_slices[gi]
            entry["params"] = list(sl)
            if any(self._names[i] is not None for i in sl):
                entry["param_names"] = [self._names[i] for i in sl]
            groups.append(entry)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint. Everything is checked first (group layout, hyperparameters,
        buffer shapes and dtypes); a rejected checkpoint leaves the optimizer untouched."""
        if not isinstance(state_dict, dict) or set(state_dict) < {"state", "param_groups"}:
            raise TypeError("state_dict must be a dict with 'state' and 'param_groups', as "
                            "returned by Optimizer.state_dict()")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(saved_groups)} param groups, this "
                             f"optimizer has {len(self.param_groups)}")
        new_groups: list[ParamGroup] = []
        new_state: list[ParamState | None] = [None] * len(self._state)
        for gi, (sg, g) in enumerate(zip(saved_groups, self.param_groups)):
            sl = self._group_slices[gi]
            if list(sg.get("params", [])) != list(sl):
                raise ValueError(f"state_dict param_groups[{gi}]['params'] is "
                                 f"{sg.get('params')!r}, expected {list(sl)}: the checkpoint "
                                 f"was saved from a different param layout")
            merged = dict(g)
            merged.update({k: v for k, v in sg.items() if k not in ("params", "param_names")})
            self._validate_group(merged, _GroupCache())
            new_groups.append(merged)
        slots = set(self._slots)
        scalar_names = self._scalar_state
        for i, st in state_dict["state"].items():
            if not isinstance(i, int) or not 0 <= i < len(self._state):
                raise ValueError(f"state_dict['state'] has key {i!r}; expected param indices "
                                 f"0..{len(self._state) - 1}")
            gi = next(k for k, sl in enumerate(self._group_slices) if i in sl)
            p = self.param_groups[gi]["params"][i - self._group_slices[gi].start]
            step = st.get("step", 0)
            if isinstance(step, np.ndarray) and step.size == 1:
                step = step.item()
            if isinstance(step, float) and step.is_integer():
                step = int(step)
            if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
                raise ValueError(f"state_dict['state'][{i}]['step'] must be an integer >= 0, "
                                 f"got {step!r}")
            entry: ParamState = {"step": int(step)}
            for k, v in st.items():
                if k == "step":
                    continue
                if k in scalar_names:
                    entry[k] = _v.scalar_state(v, f"state_dict['state'][{i}][{k!r}]")
                    continue
                if k not in slots:
                    raise ValueError(f"state_dict['state'][{i}] has unknown buffer {k!r}; "
                                     f"{type(self).__name__} keeps "
                                     f"{sorted(slots | set(scalar_names))}")
                if not isinstance(v, np.ndarray):
                    raise TypeError(f"state_dict['state'][{i}][{k!r}] must be an ndarray, "
                                    f"got {type(v).__name__}")
                if v.shape != p.shape or v.dtype != p.dtype:
                    raise ValueError(f"state_dict['state'][{i}][{k!r}] has shape {v.shape} "
                                     f"and dtype {v.dtype}; its param has shape {p.shape} "
                                     f"and dtype {p.dtype}")
                entry[k] = np.array(v, dtype=p.dtype, order="C", copy=True)
            absent = [k for k in scalar_names if k not in entry]
            if absent:
                raise ValueError(f"state_dict['state'][{i}] lacks {absent}; "
                                 f"{type(self).__name__} keeps {list(scalar_names)} for every "
                                 f"param that has stepped")
            new_state[i] = entry
        # Checked: now replace everything at once.
        for g, merged in zip(self.param_groups, new_groups):
            g.update({k: v for k, v in merged.items() if k != "params"})
        self._state = new_state
        self._caches = [_GroupCache() for _ in self.param_groups]
        for layout in self._layouts:
            layout.reset_state()
        for g, c in zip(self.param_groups, self._caches):
            self._validate_group(g, c)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)
