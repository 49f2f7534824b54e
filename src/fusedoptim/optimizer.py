"""The Optimizer base class: the torch-shaped API and the step loop.

A subclass is declarative: it binds an :class:`~fusedoptim._spec.OptSpec` (``spec = ...``),
which names its kernel, its state, its hyperparameters with their validators and its scalars
function, and it writes ``__init__`` with torch's signature and a docstring. The rest lives
here, once, split by concern:

* this module: construction, ``add_param_group``, the step loop, ``zero_grad``, and the
  public ``state`` / ``state_dict`` / ``load_state_dict``;
* ``fusedoptim._layout``: params and grads structure, each group's state memory, the
  flat path for groups whose params tile one buffer;
* ``fusedoptim._state``: lazy state, the plan tables that mirror it, checkpoints;
* ``fusedoptim._gate``: ``skip_nonfinite`` and ``grad_scale``;
* ``fusedoptim._backend``: what runs a group's step (the fused kernels, or the NumPy
  reference for the twins in :mod:`fusedoptim.reference`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from . import _kernels, _state
from ._groups import ParamGroups
from . import _validation as _v
from ._backend import FUSED, Backend
from ._exclusive import BUSY, concurrent_error, exclusive
from ._gate import apply_gated, grads_finite, gated_group, inv_grad_scale
from ._layout import GroupLayout, check_new_params, group_arrays, parse_params, route_flat, \
    split_grads
from ._precision import MIN_QUANTIZED_SIZE, check_options, check_rank1, check_rounding, \
    resolve
from ._spec import OptSpec, register
from ._state import build_plan, ensure_state

if TYPE_CHECKING:
    from ._typing import (FloatArray, GradsArg, Hyper, OptimizerStateDict, ParamGroup,
                          ParamsArg, ParamState)


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


class Optimizer(ParamGroups):
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

    Low precision (every optimizer; docs/precision.md): params may be float16 or
    ``ml_dtypes.bfloat16`` as well as float32/float64, and grads of lower precision than their
    params. The constructor options, handled here once:

    * ``master_weights`` (default True for half params): a float32 copy of each param in its
      state (``"master_param"``), updated by the step, which writes the param rounded to
      nearest even in the same pass.
    * ``state_dtype``: ``None`` (the params' dtype; float32 under master weights),
      ``"float32"``, ``"bfloat16"``, ``"int8"`` or ``"int4"`` (blockwise quantized moments,
      as in bitsandbytes and Li et al. 2023); ``min_quantized_size`` (default 4096): smaller params
      keep float32 state; ``rank1_normalization`` (default True): under int4, the
      non-negative moments of params with two or more dimensions (of size > 1) are scaled by
      Li et al.'s rank-1 statistics (for a matrix, min(row max, column max)) instead of a
      blockwise absmax; False keeps them blockwise.
    * ``stochastic_rounding`` and ``seed``: bfloat16 params without master weights rounded
      stochastically, reproducibly for any thread count.

    ``step()`` returns True whenever it did not skip (including when no param had a grad), and
    False only when ``skip_nonfinite`` skipped it.
    """

    #: the optimizer's declaration (kernel, state, hyperparameters, scalars); every subclass
    #: binds one, which also registers it (functional entry, reference twin)
    spec: ClassVar[OptSpec[Any]]
    #: what runs a group's step: the fused kernels (the reference twins: NumPy)
    _backend: ClassVar[Backend] = FUSED

    # From the spec (set when a subclass binds one):
    #: name of the registered chunk kernel
    _kernel: ClassVar[str]
    #: state buffer names, in the kernel's buffer order (columns 2, 3, ...)
    _slots: ClassVar[tuple[str, ...]] = ()
    #: group keys whose values form the hyperparameters, in order
    _hyper_keys: ClassVar[tuple[str, ...]] = ()
    #: names of per-tensor scalar state (Python floats in ``state``; doubles in the plan)
    _scalar_state: ClassVar[tuple[str, ...]] = ()
    #: param-group entries that the step itself writes (Prodigy's shared D state), which a
    #: wrapper that keeps its own copy of the groups (fusedoptim.torch) must read back
    group_state_keys: ClassVar[tuple[str, ...]] = ()

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
                 skip_nonfinite: bool = False, master_weights: bool | None = None,
                 state_dtype: str | None = None,
                 min_quantized_size: int = MIN_QUANTIZED_SIZE,
                 rank1_normalization: bool = True,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
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
        #: the precision options (fusedoptim._precision); each group resolves them for its
        #: params' dtype when it is added
        self.master_weights, self.state_dtype, self.min_quantized_size = check_options(
            master_weights, state_dtype, min_quantized_size)
        #: int4 state: rank-1 normalized non-negative moments (fusedoptim._precision)
        self.rank1_normalization = check_rank1(rank1_normalization)
        self.stochastic_rounding, self.seed = check_rounding(stochastic_rounding, seed)
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
        for group in parse_params(params):
            self._add_group(group)

    def _add_group(self, group_in: Mapping[str, Any]) -> None:
        arena, names, arrays = group_arrays(group_in)
        self._check_group_keys(group_in)
        check_new_params(self, names, arrays)
        precision = resolve(type(self).__name__, self._kernel, arrays[0].dtype,
                            self.master_weights, self.state_dtype, self.min_quantized_size,
                            self.stochastic_rounding,
                            tuple(a.shape for a in arrays) if self.rank1_normalization
                            else ())
        group = dict(self.defaults)
        group.update({k: v for k, v in group_in.items() if k != "params"})
        cache = _GroupCache()
        self._validate_group(group, cache)
        # Params that tile one buffer (always those of a FlatParams) can step as one tensor,
        # unless the step needs each tensor's own norms or the backend steps per tensor.
        flat_param = (_kernels.tile_view(arrays) if arena is not None or len(arrays) > 1
                      else None)
        # Quantized state is blockwise per param: a flat plan would put blocks across params.
        # Stochastic rounding hashes each param's own element indices, whatever the layout.
        flat_ok = (not self.spec.per_tensor and self._backend.flat_plans
                   and precision.quant is None and not precision.sr)
        start = len(self._names)
        group["params"] = arrays
        self.param_groups.append(group)
        self._names.extend(names)
        self._group_slices.append(range(start, start + len(arrays)))
        self._state.extend([None] * len(arrays))
        self._caches.append(cache)
        roles = _kernels.KERNEL_ROLES[self._kernel]
        rank1_slots = tuple(s for k, s in enumerate(self._slots) if roles[2 + k].endswith("+"))
        self._layouts.append(GroupLayout(arrays, flat_param, arena, flat_ok, precision,
                                         self._slots, rank1_slots))
        self._pinned.append(tuple(arrays))
        first = self._layouts[0]
        self._arena_grads = (first.arena.grads if len(self._layouts) == 1
                             and first.arena is not None else None)
        self._grad_getter = None

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

    # -- the step ---------------------------------------------------------------------------
    def step(self, grads: GradsArg = None,
             grad_scale: float | FloatArray | None = None) -> bool:
        """One fused, in-place update of every param that has a grad.

        Everything (grads structure, each grad's type, dtype, shape, layout and aliasing,
        every group's hyperparameters, grad_scale) is checked before anything is written.
        Without grads, each group reads the grad buffer of the FlatParams it was built from.
        ``grad_scale``: the grads are divided by it inside the kernel (see the class doc).
        Returns False when ``skip_nonfinite`` skipped the step, else True.

        One call at a time per optimizer: a call while another is running on the same
        optimizer (another thread) raises RuntimeError before touching anything (see the
        getting-started guide).
        """
        # One call at a time (fusedoptim._exclusive), inline: this is the hot path.
        d = self.__dict__
        token: list[Any] = []
        if d.setdefault(BUSY, token) is not token:
            raise concurrent_error(self, "step")
        try:
            per_group = split_grads(self, grads)
            inv_scale = None if grad_scale is None else inv_grad_scale(grad_scale,
                                                                       self.param_groups)
            groups = self.param_groups
            caches = self._caches
            pending = []
            for gi in range(len(groups)):
                cache = caches[gi]
                self._validate_group(groups[gi], cache)
                layout = self._layouts[gi]
                if layout.flat_param is not None:
                    per_group[gi] = route_flat(self, gi, cache, layout, per_group[gi])
                # The plan points at these arrays: a param swapped in later would be ignored (and
                # the old one, if freed, written after its release). One C-level pass per step.
                if not _kernels.same_items(groups[gi]["params"], self._pinned[gi]):
                    raise ValueError(f"param_groups[{gi}]['params'] changed after the optimizer "
                                     f"was built; fusedoptim keeps pointer tables per group, so "
                                     f"build a new optimizer for new params (load_state_dict "
                                     f"carries the state over) or add them with add_param_group")
                plan = cache.plan
                if plan is None:
                    plan = build_plan(self, gi, cache)
                missing = plan.bind(per_group[gi])
                if cache.wanted != cache.slots_in_use:
                    cache.slots_in_use = cache.wanted
                    missing = 1
                pending.append(missing)
            gated = -1
            if self.skip_nonfinite:
                gated = gated_group(caches, pending, self._backend.gate_in_pass)
                if not grads_finite(caches, but=gated):
                    self.skipped_steps += 1
                    return False
            apply = self._backend.apply
            # The groups before the gated one write no buffer (gated_group picks the first
            # that does: these hold only empty params or none with a grad), but they count
            # the step: their counts and scalar state, to put back if the gate vetoes it.
            # (no list unless some group precedes the gated one: the step's hot path)
            counted: list[tuple[_kernels.Plan, Any, Any]] | None = [] if gated > 0 else None
            for gi in range(len(groups)):
                cache = caches[gi]
                plan, fresh = cache.plan, None
                if pending[gi]:
                    plan, fresh = ensure_state(self, gi, cache, per_group[gi])
                assert plan is not None        # bound by the loop above
                if gi != gated:
                    if counted is not None and gi < gated:
                        counted.append((plan, plan.steps_array.copy(),
                                        plan.sstate_array.copy()))
                    apply(self, gi, plan, cache, per_group[gi], fresh, inv_scale)
                elif not apply_gated(self, gi, plan, cache, per_group[gi], fresh, inv_scale):
                    for earlier, steps, sstate in counted or ():
                        earlier.steps_array[:] = steps
                        earlier.sstate_array[:] = sstate
                    self.skipped_steps += 1
                    return False
            return True
        finally:
            del d[BUSY]

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
        """Param index -> its state: the live buffers, and copies of ``step`` and any
        scalar state (see the class doc)."""
        return _state.state_view(self)

    def state_dict(self, dequantize: bool = False) -> OptimizerStateDict:
        """Hyperparameters, step counts and copies of every state buffer, keyed by the flat
        param index as in torch. Copies, so later steps do not change a saved checkpoint.

        int8/int4 state is saved as it is kept (codes, ``<slot>_absmax``) with the map it
        was quantized with (``<slot>_qmap``), so it round-trips bitwise. With
        ``dequantize=True`` every state buffer is float32 (quantized and bfloat16 state
        decoded), which any float32 optimizer of the same class loads."""
        return _state.state_dict(self, dequantize)

    @exclusive
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint. Everything is checked first (group layout, hyperparameters,
        buffer shapes and dtypes); a rejected checkpoint leaves the optimizer untouched.

        Under int8/int4 state, float state of the param's shape is quantized, and quantized
        state saved with another map is requantized to this one's; bitsandbytes' 8-bit
        optimizer state (``state1``/``state2``, ``absmax1``/``absmax2``, ``qmap1``/``qmap2``,
        ``step``, as NumPy arrays) loads as the first and second slot. A quantized checkpoint
        loads into float32 state dequantized."""
        _state.load_state_dict(self, state_dict)
