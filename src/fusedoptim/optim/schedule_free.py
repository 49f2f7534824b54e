"""Schedule-Free AdamW and SGD (Defazio et al. 2024): kernels "schedule_free_adamw",
"schedule_free_sgd", and "schedule_free_swap" for ``train()`` / ``eval()``."""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, NamedTuple

import numpy as np

from .. import _kernels
from .. import _validation as v
from .._exclusive import exclusive
from .._backend import FusedBackend
from .._precision import MASTER, compute_dtype, sr_keys, stochastic_round
from .._spec import OptSpec, ScalarSlot, Slot
from .._state import build_plan
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from collections.abc import Mapping

    from typing_extensions import Unpack

    from .._precision import PrecisionOptions
    from .._typing import FloatArray, GradsArg, OptimizerStateDict, ParamsArg

_SWAP = _kernels.KERNEL_IDS["schedule_free_swap"]


def nonneg_int(value: object, name: str) -> int:
    """warmup_steps: an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0 (0: no warm-up), got {value!r}")
    return int(value)


def finite_real(value: object, name: str) -> float:
    """r: any finite real number."""
    x = v.real(value, name)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return x


def _power(x: float, y: float) -> float:
    """x ** y for x >= 0, inf where it is beyond the doubles (Python's float power raises
    OverflowError; the package's would too): a huge lr ** weight_lr_power then gives
    NaN params, as any overflow in the step does, not an exception mid-step."""
    try:
        return float(x ** y)
    except OverflowError:
        return math.inf


def schedule(step: int, weight_sum: float, lr_max: float, lr: float, warmup_steps: int,
             r: float, weight_lr_power: float) -> tuple[float, float, float, float]:
    """Step `step` (1, 2, ...) of the schedulefree package's schedule, in double as it
    computes it: (the warmed-up lr, c_{t+1}, the new weight_sum, the new lr_max)."""
    k = step - 1
    sched = (k + 1) / warmup_steps if k < warmup_steps else 1.0
    lr_t = lr * sched
    lr_max = max(lr_t, lr_max)
    weight = _power(k + 1, r) * _power(lr_max, weight_lr_power)
    weight_sum = weight_sum + weight
    ckp1 = weight / weight_sum if weight_sum != 0.0 else 0.0    # the package's ZeroDivision
    return lr_t, ckp1, weight_sum, lr_max


def _mode(weight_decay: float, ckp1: float, step: int) -> float:
    return float((1 if weight_decay != 0.0 else 0) | (2 if abs(ckp1) >= 0.5 else 0)
                 | (4 if step == 1 else 0))


# -- ScheduleFreeAdamW ----------------------------------------------------------------------------

class ScheduleFreeAdamWHyper(NamedTuple):
    """Schedule-Free AdamW's hyperparameters, validated (the functional call's, with its
    defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    beta1: Annotated[float, v.open_unit_interval]
    beta2: Annotated[float, v.unit_interval]
    eps: Annotated[float, v.positive]
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    warmup_steps: Annotated[int, nonneg_int] = 0
    r: Annotated[float, finite_real] = 0.0
    weight_lr_power: Annotated[float, v.finite_nonneg] = 2.0
    maximize: Annotated[bool, v.flag] = False


def schedule_free_adamw_scalars(step: int, weight_sum: float, lr_max: float, lr: float,
                                beta1: float, beta2: float, eps: float, weight_decay: float,
                                warmup_steps: int, r: float, weight_lr_power: float,
                                maximize: bool
                                ) -> tuple[tuple[float, ...], tuple[float, float]]:
    """(kernel scalars in SCALARS['schedule_free_adamw'] order, (weight_sum, lr_max) after
    this step), in double."""
    lr_t, ckp1, weight_sum, lr_max = schedule(step, weight_sum, lr_max, lr, warmup_steps, r,
                                              weight_lr_power)
    row = (-1.0 if maximize else 1.0, beta2, 1.0 - beta2, 1.0 / (1.0 - beta2 ** step), eps,
           weight_decay, ckp1, lr_t * (beta1 * (1.0 - ckp1) - 1.0), lr_t,
           _mode(weight_decay, ckp1, step))
    return row, (weight_sum, lr_max)


SCHEDULE_FREE_ADAMW_SPEC = OptSpec(
    "schedule_free_adamw", ScheduleFreeAdamWHyper, schedule_free_adamw_scalars,
    pairs={"betas": ("beta1", "beta2")},
    # (the docs build reads these declarations from the source: literal arguments only)
    state=(Slot("z", "zs", hint="np.empty_like(param) (its first step sets it to the param)"),
           Slot("exp_avg_sq", "exp_avg_sqs")),
    scalar_state=(ScalarSlot("weight_sum", "weight_sums", init=0.0),
                  ScalarSlot("lr_max", "lr_maxs", init=-1.0)),
    doc="""Fused Schedule-Free AdamW step over lists, in train mode: the params hold y (see
    :class:`fusedoptim.ScheduleFreeAdamW` for the rule).

    ``zs`` are read from a param's second step on (its first sets z to the param);
    ``weight_sums`` (0.0 before the first step) and ``lr_maxs`` (-1.0) are lists of floats,
    updated in place for every param that has a grad, like ``state_steps``.""")

#: Validate Schedule-Free AdamW hyperparameters (the hyper's fields, in order).
check_schedule_free_adamw = SCHEDULE_FREE_ADAMW_SPEC.check


# -- ScheduleFreeSGD ------------------------------------------------------------------------------

class ScheduleFreeSGDHyper(NamedTuple):
    """Schedule-Free SGD's hyperparameters, validated (the functional call's, with its
    defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    momentum: Annotated[float, v.open_unit_interval] = 0.9
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    warmup_steps: Annotated[int, nonneg_int] = 0
    r: Annotated[float, finite_real] = 0.0
    weight_lr_power: Annotated[float, v.finite_nonneg] = 2.0
    maximize: Annotated[bool, v.flag] = False


def schedule_free_sgd_scalars(step: int, weight_sum: float, lr_max: float, lr: float,
                              momentum: float, weight_decay: float, warmup_steps: int,
                              r: float, weight_lr_power: float, maximize: bool
                              ) -> tuple[tuple[float, ...], tuple[float, float]]:
    """(kernel scalars in SCALARS['schedule_free_sgd'] order, (weight_sum, lr_max) after
    this step), in double."""
    lr_t, ckp1, weight_sum, lr_max = schedule(step, weight_sum, lr_max, lr, warmup_steps, r,
                                              weight_lr_power)
    row = (-1.0 if maximize else 1.0, weight_decay, ckp1,
           lr_t * (momentum * (1.0 - ckp1) - 1.0), lr_t, _mode(weight_decay, ckp1, step))
    return row, (weight_sum, lr_max)


SCHEDULE_FREE_SGD_SPEC = OptSpec(
    "schedule_free_sgd", ScheduleFreeSGDHyper, schedule_free_sgd_scalars,
    state=(Slot("z", "zs", hint="np.empty_like(param) (its first step sets it to the param)"),),
    scalar_state=(ScalarSlot("weight_sum", "weight_sums", init=0.0),
                  ScalarSlot("lr_max", "lr_maxs", init=-1.0)),
    doc="""Fused Schedule-Free SGD step over lists, in train mode: the params hold y (see
    :class:`fusedoptim.ScheduleFreeSGD` for the rule).

    ``zs`` are read from a param's second step on (its first sets z to the param);
    ``weight_sums`` (0.0 before the first step) and ``lr_maxs`` (-1.0) are lists of floats,
    updated in place for every param that has a grad, like ``state_steps``.""")

#: Validate Schedule-Free SGD hyperparameters (the hyper's fields, in order).
check_schedule_free_sgd = SCHEDULE_FREE_SGD_SPEC.check


# -- train() / eval() -----------------------------------------------------------------------------

def swap_weight(beta1: float, train: bool) -> float:
    """The lerp weight toward z that moves the params from x to y (train) or y to x (eval)."""
    return 1.0 - beta1 if train else 1.0 - 1.0 / beta1


class _ScheduleFree(Optimizer):
    """What both Schedule-Free classes share: the train/eval mode and its swap."""

    #: the field that is the interpolation weight beta1 of y between x and z
    _beta1_field: ClassVar[str]

    train_mode: bool

    def __init__(self, params: ParamsArg, defaults: Mapping[str, Any], *,
                 skip_nonfinite: bool = False, **precision: Unpack[PrecisionOptions]) -> None:
        #: True (train mode: the params hold y) or False (eval mode: they hold x)
        self.train_mode = True
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, **precision)

    def step(self, grads: GradsArg = None,
             grad_scale: float | FloatArray | None = None) -> bool:
        """One fused step (see :meth:`fusedoptim.Optimizer.step`), in train mode only."""
        if not self.train_mode:
            raise RuntimeError(
                f"{type(self).__name__}.step() was called in eval mode: the params hold x, "
                f"the average, and a step must start from y. Call optimizer.train() before "
                f"training steps (and optimizer.eval() before evaluating or saving the "
                f"params); nothing was changed")
        return super().step(grads, grad_scale)

    @exclusive
    def train(self) -> None:
        """Switch to train mode: every param that has state moves from x to y,
        ``p = lerp(p, z, 1 - beta1)``, in one fused pass per group. Nothing to do when
        already in train mode."""
        self._swap(True)

    @exclusive
    def eval(self) -> None:
        """Switch to eval mode: every param that has state moves from y to x,
        ``p = lerp(p, z, 1 - 1/beta1)``, in one fused pass per group. Nothing to do when
        already in eval mode."""
        self._swap(False)

    def _swap(self, train: bool) -> None:
        if self.train_mode == train:
            return
        # Every group's hyperparameters first: a bad one raises before anything moves.
        weights = [swap_weight(getattr(self._validate_group(g, c), self._beta1_field), train)
                   for g, c in zip(self.param_groups, self._caches)]
        fused = isinstance(self._backend, FusedBackend)
        for gi, w in enumerate(weights):
            if fused:
                self._swap_fused(gi, w)
            else:
                self._swap_reference(gi, w)
        self.train_mode = train

    def _swap_fused(self, gi: int, w: float) -> None:
        sl = self._group_slices[gi]
        if all(self._state[i] is None for i in sl):
            return
        cache = self._caches[gi]
        plan = cache.plan if cache.plan is not None else build_plan(self, gi, cache)
        # The active flags say which params the last step skipped (the flat path reads them
        # to know whether the params are still in lockstep): put them back after the pass.
        active = plan.active_array.copy()
        try:
            if plan.activate_ready() == 0:
                return
            row = [0.0] * plan.nscalars
            row[0], row[1] = w, (1.0 if abs(w) >= 0.5 else 0.0)
            plan.set_scalars(tuple(row))
            keys = self._layouts[gi].sr_keys
            if keys is not None:
                sr_keys(self.seed, gi, plan.steps_array, keys)
            plan.run(_SWAP)
        finally:
            plan.active_array[...] = active

    def _swap_reference(self, gi: int, w: float) -> None:
        """The twins' swap: the NumPy function on the params (or master copies), as the
        kernel's glue reads and writes them."""
        from ..reference import schedule_free_swap
        layout = self._layouts[gi]
        prec = layout.precision
        params = self.param_groups[gi]["params"]
        compute = compute_dtype(prec.param_dtype)
        keys = None
        if prec.sr:
            plan = self._caches[gi].plan
            assert plan is not None             # a param has state, so a plan was built
            keys = np.zeros((len(params), 2), np.uint32)
            sr_keys(self.seed, gi, plan.steps_array, keys)
        for t, i in enumerate(self._group_slices[gi]):
            st = self._state[i]
            if st is None:
                continue
            p = params[t]
            z = st["z"] if st["z"].dtype == compute else st["z"].astype(compute)
            work = st[MASTER] if prec.master else p if p.dtype == compute else p.astype(compute)
            schedule_free_swap([work], [z], w)
            if keys is not None:
                p[...] = stochastic_round(work, keys[t])
            elif work is not p:
                p[...] = work                   # rounded to nearest even, as the kernel does

    # -- the mode in checkpoints --------------------------------------------------------------
    def state_dict(self, dequantize: bool = False) -> OptimizerStateDict:
        """:meth:`fusedoptim.Optimizer.state_dict`, plus ``"train_mode"`` (a bool). Save in
        eval mode to keep x, the params to evaluate, with the model (the package's advice)."""
        out = super().state_dict(dequantize)
        out["train_mode"] = self.train_mode      # type: ignore[typeddict-unknown-key]
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """:meth:`fusedoptim.Optimizer.load_state_dict`; the mode is restored from
        ``"train_mode"`` (a checkpoint without it: train mode). The params are not touched:
        they are the model's, saved in the mode the checkpoint names."""
        mode = state_dict.get("train_mode", True) if isinstance(state_dict, dict) else True
        mode = v.flag(mode, "state_dict['train_mode']")
        rest = {k: x for k, x in state_dict.items() if k != "train_mode"}
        super().load_state_dict(rest)
        self.train_mode = mode


class ScheduleFreeAdamW(_ScheduleFree):
    r"""Schedule-Free AdamW (Defazio, Yang, Mehta, Mishchenko, Khaled and Cutkosky, 2024,
    "The Road Less Scheduled"; the AlgoPerf 2024 self-tuning winner).

    No learning-rate scheduler is needed, nor a training length: the method replaces the
    schedule by an average of the iterates. Three sequences: z takes AdamW-style steps,
    x is a weighted running average of the z's, and the gradient is taken at y, an
    interpolation of the two. The param holds y in train mode (``optimizer.train()``) and x
    in eval mode (``optimizer.eval()``); z is state. For each param, at its step
    k = 1, 2, ... (with g the gradient, negated when ``maximize``)::

        lr_k     = lr * min(1, k / warmup_steps)                  (linear warm-up)
        lr_max   = max(lr_max, lr_k)
        w_k      = k^r * lr_max^weight_lr_power
        weight_sum += w_k;   c = w_k / weight_sum                 (0 when weight_sum is 0)
        v        = beta2 * v + (1 - beta2) * g * g
        u        = g / (sqrt(v * (1 / (1 - beta2^k))) + eps) + weight_decay * y
        y        = lerp(y, z, c) + lr_k * (beta1 * (1 - c) - 1) * u
        z        = z - lr_k * u

    which is x = (1 - c) x + c z and y = beta1 x + (1 - beta1) z, the x never stored. z
    starts as the param (its first step), v at 0. There is no first moment: beta1 is the
    interpolation weight instead. ``warmup_steps`` ramps the lr linearly from
    lr / warmup_steps to lr over the first warmup_steps steps; the averaging weights follow
    the lr (``lr_max^weight_lr_power``), so the early, small-lr iterates weigh little in x.
    Weight decay is computed at y and added to the normalised gradient (an L2 term in the
    update of z and y, as the package does). Every operation follows the schedulefree
    1.4.1 package's ``AdamWScheduleFree`` (its foreach path: the same scalars in double,
    torch's two-branch lerp), except that v is multiplied by the inverse of the bias
    correction (computed in double) where the package divides: a division less per element,
    at most an ulp of difference.

    **train() / eval().** As in the package, call ``optimizer.train()`` before training
    steps and ``optimizer.eval()`` before evaluating, and save checkpoints in eval mode.
    ``eval()`` moves every param with state from y to x, ``p = lerp(p, z, 1 - 1/beta1)``,
    ``train()`` back, ``p = lerp(p, z, 1 - beta1)``: one fused pass per group each. A step
    in eval mode raises RuntimeError and changes nothing. The mode is ``train_mode`` and
    is in ``state_dict()`` (``"train_mode"``).

    Differences from the package:

    * It starts in train mode (the package starts in eval mode and refuses a step before
      ``train()``): before the first step x = y = z, so the two are the same point and code
      written for the package runs unchanged; a step after ``eval()`` is refused in both.
    * The step count ``k``, ``weight_sum`` and ``lr_max`` are per param (``state[i]``:
      ``step``, ``weight_sum``, ``lr_max``; the package keeps one per group). They agree
      whenever every param of a group steps together; a param without a grad does not
      advance its own.
    * The grads are read only (the package divides ``p.grad`` in place).
    * ``maximize`` (keyword-only) is an addition.
    * beta1 must be in (0, 1): eval() divides by it.

    Optax: ``optax.contrib.schedule_free_adamw(learning_rate=lr, warmup_steps=None,
    b1=beta1, b2=beta2, eps=eps, weight_decay=weight_decay,
    weight_lr_power=weight_lr_power)`` with ``r=0``; the params Optax returns are y, and
    ``optax.contrib.schedule_free_eval_params(state, params)`` is x. It agrees when
    ``warmup_steps=0`` and ``r=0`` (Optax has no r; its warm-up schedule lags the lr of the
    z step by one step behind the averaging weight's); its eval params compute
    x = (y - (1 - b1) z) / b1 rather than torch's lerp, equal up to rounding.

    Args (the schedulefree package's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 0.0025, >= 0. May change between steps.
        betas (tuple): (beta1, beta2), default (0.9, 0.999); beta1 in (0, 1) (the
            interpolation of y between x and z), beta2 in [0, 1).
        eps (float): added to the root, default 1e-8, > 0.
        weight_decay (float): default 0, >= 0, at y.
        warmup_steps (int): linear lr warm-up length, default 0 (none), >= 0.
        r (float): polynomial weighting of the average, w_k = k^r ..., default 0, finite.
        weight_lr_power (float): the averaging weight's power of lr_max, default 2, >= 0
            (0: no lr weighting).
        maximize (bool): default False; ascend instead of descend.
        skip_nonfinite (bool): default False; skip steps whose grads are not all finite
            (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype`` (float32 or bfloat16 state),
            ``stochastic_rounding``, ``seed``: half-precision params, master weights and
            bfloat16 state (see :class:`fusedoptim.Optimizer`).

    State per param: ``step``, ``weight_sum`` (starts at 0.0), ``lr_max`` (starts at -1.0),
    ``z``, ``exp_avg_sq``.
    """

    spec = SCHEDULE_FREE_ADAMW_SPEC
    _beta1_field = "beta1"

    def __init__(self, params: ParamsArg, lr: float = 0.0025,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, *, maximize: bool = False,
                 skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      warmup_steps=warmup_steps, r=r,
                                      weight_lr_power=weight_lr_power, maximize=maximize),
                         skip_nonfinite=skip_nonfinite, **precision)


class ScheduleFreeSGD(_ScheduleFree):
    r"""Schedule-Free SGD (Defazio, Yang, Mehta, Mishchenko, Khaled and Cutkosky, 2024,
    "The Road Less Scheduled").

    No learning-rate scheduler is needed, nor a training length: the schedule is replaced
    by an average of the iterates (see :class:`fusedoptim.ScheduleFreeAdamW` for the three
    sequences and the modes). For each param, at its step k = 1, 2, ... (with g the
    gradient, negated when ``maximize``)::

        lr_k     = lr * min(1, k / warmup_steps)                  (linear warm-up)
        lr_max   = max(lr_max, lr_k)
        w_k      = k^r * lr_max^weight_lr_power
        weight_sum += w_k;   c = w_k / weight_sum                 (0 when weight_sum is 0)
        u        = g + weight_decay * y
        y        = lerp(y, z, c) + lr_k * (momentum * (1 - c) - 1) * u
        z        = z - lr_k * u

    z starts as the param. ``momentum`` is the interpolation weight of y between x and z
    (the paper's beta). ``warmup_steps`` ramps the lr linearly over the first warmup_steps
    steps, and the averaging weights follow it (``lr_max^weight_lr_power``). Every
    operation follows the schedulefree 1.4.1 package's ``SGDScheduleFree`` (foreach path).
    ``train()`` (``p = lerp(p, z, 1 - momentum)``) and ``eval()``
    (``p = lerp(p, z, 1 - 1/momentum)``) swap the params between y and x in one fused pass
    per group; a step in eval mode raises RuntimeError; the mode is in ``state_dict()``.
    Differences from the package: as for :class:`fusedoptim.ScheduleFreeAdamW` (it starts in
    train mode; step, weight_sum and lr_max per param; grads read only; ``maximize``).

    Optax: ``optax.contrib.schedule_free_sgd(learning_rate=lr, warmup_steps=None,
    b1=momentum, weight_decay=weight_decay or None, weight_lr_power=weight_lr_power)``,
    with ``r=0``; ``optax.contrib.schedule_free_eval_params`` gives x. It agrees when
    ``warmup_steps=0`` and ``r=0`` (as for ScheduleFreeAdamW).

    Args (the schedulefree package's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 1.0, >= 0. May change between steps.
        momentum (float): default 0.9, in (0, 1) (as the package requires).
        weight_decay (float): default 0, >= 0, at y.
        warmup_steps (int): linear lr warm-up length, default 0 (none), >= 0.
        r (float): polynomial weighting of the average, default 0, finite.
        weight_lr_power (float): the averaging weight's power of lr_max, default 2, >= 0.
        maximize (bool): default False; ascend instead of descend.
        skip_nonfinite (bool): default False; skip steps whose grads are not all finite
            (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype`` (float32 or bfloat16 state),
            ``stochastic_rounding``, ``seed`` (see :class:`fusedoptim.Optimizer`).

    State per param: ``step``, ``weight_sum`` (starts at 0.0), ``lr_max`` (starts at -1.0),
    ``z``.
    """

    spec = SCHEDULE_FREE_SGD_SPEC
    _beta1_field = "momentum"

    def __init__(self, params: ParamsArg, lr: float = 1.0, momentum: float = 0.9,
                 weight_decay: float = 0.0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, *, maximize: bool = False,
                 skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      warmup_steps=warmup_steps, r=r,
                                      weight_lr_power=weight_lr_power, maximize=maximize),
                         skip_nonfinite=skip_nonfinite, **precision)
