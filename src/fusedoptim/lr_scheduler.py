"""Learning-rate schedulers with torch.optim.lr_scheduler's names, arguments and stepping.

A scheduler attaches to any optimizer whose ``param_groups`` is a list of dicts
with an ``'lr'`` entry (fusedoptim optimizers, torch optimizers with float lrs,
your own), writes each group's ``'lr'`` on every :meth:`~LRScheduler.step`, and
records ``group['initial_lr']`` like torch.  Code written against torch ports
by changing the import::

    from fusedoptim.lr_scheduler import OneCycleLR   # was torch.optim.lr_scheduler
    sched = OneCycleLR(opt, max_lr=0.1, total_steps=1000)
    for batch in data:
        opt.step(grads(batch))
        sched.step()

Stepping semantics follow torch 2.x exactly, including its two kinds of
scheduler, because they behave differently when combined:

* *Chainable* (MultiplicativeLR, StepLR, MultiStepLR, ConstantLR, LinearLR,
  ExponentialLR, PolynomialLR, CosineAnnealingLR): each step multiplies the
  group's *current* lr by a factor, so several of them compose in a
  :class:`ChainedScheduler`.  Their closed forms, used by ``step(epoch)`` and by
  :class:`SequentialLR` at a milestone, come from :mod:`fusedoptim.schedules`.
* *Closed-form* (LambdaLR, CosineAnnealingWarmRestarts, CyclicLR, OneCycleLR,
  InverseSqrtLR): the lr is the matching :mod:`fusedoptim.schedules` function
  of the step count.

Recursive factors are evaluated with the same floating-point operations as
torch, so lr sequences agree with torch to the last bit in practice.

Deliberate differences from torch: arguments are validated up front (e.g.
milestones must be sorted, ConstantLR's factor must be > 0); the optimizer's
``step`` is not monkey-patched (so there is no call-order warning);
OneCycleLR accepts ``pct_start * total_steps == 1`` (torch divides by zero);
``CosineAnnealingWarmRestarts.step(epoch)`` finds cycle boundaries exactly
(torch's ``math.log`` can be one cycle off); tensor-valued lrs are not
supported.  Extra classes: :class:`InverseSqrtLR` and :class:`WarmupLR`.
"""

from __future__ import annotations

import collections
import copy
import functools
import math
import numbers
import types
import warnings
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable as _Iterable, Mapping
from typing import (TYPE_CHECKING, Any, Callable, Iterable, Sequence, SupportsFloat, TypeVar,
                    Union)

from . import schedules as _s
from .schedules import (
    _check_bool,
    _check_choice,
    _check_int,
    _check_milestones,
    _check_real,
)

if TYPE_CHECKING:
    from ._typing import SupportsParamGroups

    #: an lr multiplier as a function of the step (LambdaLR, MultiplicativeLR)
    LRLambda = Callable[[int], float]
    #: one lr_lambda for every param group, or a list or tuple with one per group
    LRLambdas = Union[LRLambda, list[LRLambda], tuple[LRLambda, ...]]
    #: one value for every param group, or a list or tuple with one per group
    PerGroup = Union[float, list[float], tuple[float, ...]]

__all__ = [
    "LRScheduler",
    "LambdaLR",
    "MultiplicativeLR",
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "PolynomialLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "OneCycleLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "ChainedScheduler",
    "InverseSqrtLR",
    "WarmupLR",
    "SWALR",
]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

_Init = TypeVar("_Init", bound=Callable[..., None])


def _groups_restored_on_error(init: _Init) -> _Init:
    """Wrap a scheduler's ``__init__(self, optimizer_or_scheduler, ...)`` so that, when it
    raises, every param group of the optimizer is as it was: constructors write
    ``initial_lr``, momenta and the step-0 lr, and a rejected argument must leave nothing
    behind. (Values are replaced, never mutated in place, so a shallow copy restores them.)"""
    @functools.wraps(init)
    def wrapper(self: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        optimizer = target if hasattr(target, "param_groups") else getattr(
            target, "optimizer", None)
        groups = getattr(optimizer, "param_groups", None)
        saved = ([dict(g) for g in groups] if isinstance(groups, list)
                 and all(isinstance(g, dict) for g in groups) else None)
        try:
            init(self, target, *args, **kwargs)
        except BaseException:
            if saved is not None and groups is not None:
                for group, before in zip(groups, saved):
                    group.clear()
                    group.update(before)
            raise
    return wrapper  # type: ignore[return-value]


def _state_mismatch(saved: Any, current: Any, where: str) -> str | None:
    """Where a scheduler's saved state_dict is shaped unlike the current one (keys of dicts,
    lengths of the per-group and sub-scheduler lists, a number where a number belongs), or
    None. Used by ``load_state_dict`` and by ``fo.load`` before anything is written."""
    if isinstance(current, Mapping):
        if not isinstance(saved, Mapping):
            return f"{where} is a {type(saved).__name__}, expected a dict"
        if isinstance(current, collections.Counter):
            return None
        if set(saved) != set(current):
            return (f"{where} has keys {sorted(map(str, saved))}, expected "
                    f"{sorted(map(str, current))}")
        for k in current:
            err = _state_mismatch(saved[k], current[k], f"{where}[{k!r}]")
            if err:
                return err
    elif isinstance(current, list) and where.endswith(("'_schedulers']", "'base_lrs']",
                                                       "'_last_lr']")):
        if not isinstance(saved, list) or len(saved) != len(current):
            return (f"{where} has {len(saved) if isinstance(saved, list) else saved!r} "
                    f"entries, expected {len(current)}")
        for k, (s, c) in enumerate(zip(saved, current)):
            err = _state_mismatch(s, c, f"{where}[{k}]")
            if err:
                return err
    elif (isinstance(current, numbers.Real) and not isinstance(current, bool)
          and not (isinstance(saved, numbers.Real) and not isinstance(saved, bool))):
        return f"{where} is {saved!r}, expected a number like {current!r}"
    return None


def _check_optimizer(optimizer: object) -> None:
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise TypeError(
            "optimizer must have a param_groups list of dicts (like torch.optim "
            f"optimizers), got {type(optimizer).__name__}")
    for i, group in enumerate(groups):
        if "lr" not in group:
            raise KeyError(f"optimizer.param_groups[{i}] has no 'lr' entry")


def _per_group(name: str, value: PerGroup, optimizer: SupportsParamGroups,
               check: Callable[[str, float], float]) -> list[float]:
    """One validated value per param group, from a scalar or a list (torch semantics)."""
    n = len(optimizer.param_groups)
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(
                f"{name} must be a number or a list with one entry per param group "
                f"({n}), got {len(value)} entries: {value!r}")
        return [check(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return [check(name, value)] * n


def _nonneg(name: str, value: float) -> float:
    return _check_real(name, value, 0)


def _positive(name: str, value: float) -> float:
    return _check_real(name, value, 0, low_open=True)


def _check_momentum_groups(optimizer: SupportsParamGroups) -> None:
    for i, group in enumerate(optimizer.param_groups):
        if "betas" not in group and "momentum" not in group:
            raise ValueError(
                "cycle_momentum=True needs 'momentum' (SGD, RMSprop) or 'betas' (Adam "
                f"family) in every param group, but param_groups[{i}] has neither; "
                "pass cycle_momentum=False")


def _set_momentum(group: dict[str, Any], value: float) -> None:
    # The Adam family has no momentum; torch cycles beta1 instead.
    if "betas" in group:
        group["betas"] = (value, *tuple(group["betas"])[1:])
    else:
        group["momentum"] = value


def _check_lambdas(name: str, fn: LRLambdas,
                   optimizer: SupportsParamGroups) -> list[LRLambda]:
    n = len(optimizer.param_groups)
    if isinstance(fn, (list, tuple)):
        if len(fn) != n:
            raise ValueError(
                f"{name} must be a callable or a list with one callable per param "
                f"group ({n}), got {len(fn)} entries: {fn!r}")
        fns = list(fn)
    else:
        fns = [fn] * n
    for f in fns:
        if not callable(f):
            raise TypeError(f"{name} must be callable, got {f!r}")
    return fns


def _callable_state(fn: object) -> dict[str, Any] | None:
    """torch's convention: plain functions/lambdas are not saved, callable objects'
    attributes are."""
    if fn is None or isinstance(fn, types.FunctionType):
        return None
    return fn.__dict__.copy()


# --------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------

class LRScheduler:
    """Base class: subclasses implement :meth:`get_lr` (and optionally
    ``_get_closed_form_lr``).

    Args:
        optimizer: object with ``param_groups``, a list of dicts with ``'lr'``.
        last_epoch: index of the last step taken; ``-1`` starts fresh.  When
            resuming with ``last_epoch >= 0`` every group needs ``'initial_lr'``
            (restore the optimizer's state first).  Prefer
            :meth:`load_state_dict` for resuming.

    Constructing a scheduler performs its first step: it writes the step-0 lr.
    """

    # Attributes that are not part of the saved state.
    _not_state: tuple[str, ...] = ("optimizer",)
    _in_step = False
    _is_initial = False

    optimizer: SupportsParamGroups
    base_lrs: list[float]
    last_epoch: int
    _step_count: int
    _last_lr: list[float]

    @_groups_restored_on_error
    def __init__(self, optimizer: SupportsParamGroups, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        last_epoch = _check_int("last_epoch", last_epoch, -1)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param_groups[{i}] has no 'initial_lr', which resuming with "
                        f"last_epoch={last_epoch} needs: load the optimizer state "
                        "saved alongside the scheduler first")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self) -> None:
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self) -> list[float]:
        """Compute the lrs for ``last_epoch`` (called inside :meth:`step`).

        To read the current learning rates use :meth:`get_last_lr`.
        """
        raise NotImplementedError

    def _warn_outside_step(self) -> None:
        if not self._in_step:
            warnings.warn(
                "get_lr() computes the next learning rate and is meant to be called "
                "by step(); to read the current one use get_last_lr()",
                UserWarning, stacklevel=3)

    def _get_closed_form_lr(self) -> list[float]:
        # Schedulers without a separate closed form evaluate get_lr at last_epoch.
        return self.get_lr()

    def get_last_lr(self) -> list[float]:
        """The lr of each param group as set by the latest step."""
        return list(self._last_lr)

    def step(self, epoch: int | None = None) -> None:
        """Advance one step (call it after ``optimizer.step()``).

        ``epoch`` (discouraged, as in torch) jumps to that step using the
        closed form where the scheduler has one.
        """
        if epoch is not None:
            _s._check_step(epoch, "epoch")
        self._step_count += 1
        self._update_lr(epoch)

    def _update_lr(self, epoch: int | None = None) -> None:
        self._in_step = True
        try:
            if epoch is None:
                self.last_epoch += 1
                values = self.get_lr()
            else:
                self.last_epoch = epoch
                values = self._get_closed_form_lr()
        finally:
            self._in_step = False
        self._write_lrs(values)

    def _write_lrs(self, values: Iterable[float]) -> None:
        groups = self.optimizer.param_groups
        values = list(values)
        if len(values) != len(groups):
            raise RuntimeError(
                f"{type(self).__name__} computed {len(values)} lrs for "
                f"{len(groups)} param groups; were groups added after it was created?")
        for group, lr in zip(groups, values):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in groups]

    def _current_lrs(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as plain picklable data (not the optimizer).

        Save it together with the optimizer's state: chainable schedulers
        continue from the optimizer's current lr.
        """
        return {key: copy.deepcopy(value) for key, value in self.__dict__.items()
                if key not in self._not_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict` (of a scheduler of the same class
        and arguments). A state_dict shaped otherwise (other keys, another number of param
        groups or sub-schedulers, a non-number where a number belongs) is refused with a
        ValueError naming the difference, and the scheduler is left unchanged."""
        err = _state_mismatch(state_dict, self.state_dict(), "state_dict")
        if err:
            raise ValueError(f"{type(self).__name__}.load_state_dict: {err}; pass the "
                             f"state_dict() of a {type(self).__name__} built with the same "
                             f"arguments on the same optimizer")
        self._load_state(dict(state_dict))

    def _load_state(self, state_dict: dict[str, Any]) -> None:
        """Restore an already checked state_dict (subclasses add their extra parts)."""
        self.__dict__.update(copy.deepcopy(
            {k: v for k, v in state_dict.items() if k not in self._not_state}))


# The mixins below are LRScheduler subclasses for the type checker, plain mixins at run time.
if TYPE_CHECKING:
    _SchedulerMixinBase = LRScheduler
else:
    _SchedulerMixinBase = object


# --------------------------------------------------------------------------
# lambda-based
# --------------------------------------------------------------------------

class _LambdaState(_SchedulerMixinBase):
    """Construction and state_dict handling for schedulers that hold user callables."""

    _not_state = ("optimizer", "lr_lambdas")

    @_groups_restored_on_error
    def __init__(self, optimizer: SupportsParamGroups, lr_lambda: LRLambdas,
                 last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self.lr_lambdas = _check_lambdas("lr_lambda", lr_lambda, optimizer)
        LRScheduler.__init__(self, optimizer, last_epoch)

    def state_dict(self) -> dict[str, Any]:
        state = LRScheduler.state_dict(self)
        state["lr_lambdas"] = [_callable_state(fn) for fn in self.lr_lambdas]
        return state

    def _load_state(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        saved = state.pop("lr_lambdas", [None] * len(self.lr_lambdas))
        LRScheduler._load_state(self, state)
        for fn, attrs in zip(self.lr_lambdas, saved):
            if attrs is not None:
                fn.__dict__.update(attrs)


class LambdaLR(_LambdaState, LRScheduler):
    """``lr = initial_lr * lr_lambda(step)`` (closed form).

    ``lr_lambda`` is a callable, or a list with one per param group.  Any
    :mod:`fusedoptim.schedules` function built with ``init_value=1`` works.
    """

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        return [base * fn(self.last_epoch)
                for fn, base in zip(self.lr_lambdas, self.base_lrs)]


class MultiplicativeLR(_LambdaState, LRScheduler):
    """``lr *= lr_lambda(step)`` every step after the first (chainable)."""

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        if self._is_initial:
            return self._current_lrs()
        return [group["lr"] * fn(self.last_epoch)
                for fn, group in zip(self.lr_lambdas, self.optimizer.param_groups)]


# --------------------------------------------------------------------------
# chainable decays
# --------------------------------------------------------------------------

class StepLR(LRScheduler):
    """Multiply the lr by ``gamma`` every ``step_size`` steps (chainable).

    Closed form: :func:`fusedoptim.schedules.step_decay`.
    """

    def __init__(self, optimizer: SupportsParamGroups, step_size: int, gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        self.step_size = _check_int("step_size", step_size, 1)
        self.gamma = _check_real("gamma", gamma, 0, low_open=True)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [_s.step_decay(base, self.step_size, self.gamma)(self.last_epoch)
                for base in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the lr by ``gamma`` at each milestone step (chainable).

    ``milestones`` must be sorted; a repeated milestone applies ``gamma`` once
    per repeat.  Closed form: :func:`fusedoptim.schedules.multistep_decay`.
    """

    def __init__(self, optimizer: SupportsParamGroups, milestones: Sequence[int],
                 gamma: float = 0.1, last_epoch: int = -1) -> None:
        self.milestones = Counter(_check_milestones("milestones", milestones, strict=False))
        self.gamma = _check_real("gamma", gamma, 0, low_open=True)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        if self.last_epoch not in self.milestones:
            return self._current_lrs()
        factor = self.gamma ** self.milestones[self.last_epoch]
        return [group["lr"] * factor for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float]:
        milestones = sorted(self.milestones.elements())
        return [_s.multistep_decay(base, milestones, self.gamma)(self.last_epoch)
                for base in self.base_lrs]


class ConstantLR(LRScheduler):
    """Scale the lr by ``factor`` for the first ``total_iters`` steps (chainable).

    ``factor`` in (0, 1]; closed form:
    :func:`fusedoptim.schedules.piecewise_constant` ``([total_iters], [factor, 1])``.
    """

    def __init__(self, optimizer: SupportsParamGroups, factor: float = 1.0 / 3,
                 total_iters: int = 5, last_epoch: int = -1) -> None:
        # factor=0 would make the undo step at total_iters divide by zero.
        self.factor = _check_real("factor", factor, 0, 1, low_open=True)
        self.total_iters = _check_int("total_iters", total_iters, 1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        if self.last_epoch == 0:
            return [group["lr"] * self.factor for group in self.optimizer.param_groups]
        if self.last_epoch != self.total_iters:
            return self._current_lrs()
        return [group["lr"] * (1.0 / self.factor) for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float]:
        f = _s.piecewise_constant([self.total_iters], [self.factor, 1.0])
        return [base * f(self.last_epoch) for base in self.base_lrs]


class LinearLR(LRScheduler):
    """Scale the lr linearly from ``start_factor`` to ``end_factor`` over
    ``total_iters`` steps (chainable).

    ``start_factor`` in (0, 1], ``end_factor`` in [0, 1]; closed form:
    :func:`fusedoptim.schedules.linear_decay` ``(start_factor, total_iters, end_factor)``.
    """

    def __init__(self, optimizer: SupportsParamGroups, start_factor: float = 1.0 / 3,
                 end_factor: float = 1.0, total_iters: int = 5, last_epoch: int = -1) -> None:
        self.start_factor = _check_real("start_factor", start_factor, 0, 1, low_open=True)
        self.end_factor = _check_real("end_factor", end_factor, 0, 1)
        self.total_iters = _check_int("total_iters", total_iters, 1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        t = self.last_epoch
        if t == 0:
            return [group["lr"] * self.start_factor for group in self.optimizer.param_groups]
        if self._is_initial or t > self.total_iters:
            return self._current_lrs()
        s, e, n = self.start_factor, self.end_factor, self.total_iters
        # ratio of consecutive closed-form factors, in torch's algebraic form
        factor = 1.0 + (e - s) / (n * s + (t - 1) * (e - s))
        return [group["lr"] * factor for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float]:
        f = _s.linear_decay(self.start_factor, self.total_iters, self.end_factor)
        return [base * f(self.last_epoch) for base in self.base_lrs]


class ExponentialLR(LRScheduler):
    """Multiply the lr by ``gamma`` every step (chainable).

    Closed form: :func:`fusedoptim.schedules.exponential_decay`.
    """

    def __init__(self, optimizer: SupportsParamGroups, gamma: float,
                 last_epoch: int = -1) -> None:
        self.gamma = _check_real("gamma", gamma, 0, low_open=True)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        if self._is_initial:
            return self._current_lrs()
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [_s.exponential_decay(base, self.gamma)(self.last_epoch)
                for base in self.base_lrs]


class PolynomialLR(LRScheduler):
    """Decay the lr as ``(1 - t / total_iters) ** power`` to 0 (chainable).

    Closed form: :func:`fusedoptim.schedules.polynomial_decay`.
    """

    def __init__(self, optimizer: SupportsParamGroups, total_iters: int = 5, power: float = 1.0,
                 last_epoch: int = -1) -> None:
        self.total_iters = _check_int("total_iters", total_iters, 1)
        self.power = _check_real("power", power, 0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        t, n = self.last_epoch, self.total_iters
        if self._is_initial or t > n:
            return self._current_lrs()
        factor = ((1.0 - t / n) / (1.0 - (t - 1) / n)) ** self.power
        return [group["lr"] * factor for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [_s.polynomial_decay(base, self.total_iters, 0.0, self.power)(self.last_epoch)
                for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from the initial lr to ``eta_min`` over ``T_max`` steps.

    Chainable, as in torch: each step applies the ratio of consecutive values
    of the cosine ``(1 + cos(pi t / T_max)) / 2``, so the lr follows
    :func:`fusedoptim.schedules.cosine_decay` when used alone and composes
    with other schedulers.  Like torch it does not stop at ``T_max``: the lr
    rises back over the next ``T_max`` steps (use CosineAnnealingWarmRestarts
    for restarts).  Loshchilov & Hutter, SGDR, 2017 (arXiv:1608.03983).
    """

    def __init__(self, optimizer: SupportsParamGroups, T_max: int, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        self.T_max = _check_int("T_max", T_max, 1)
        self.eta_min = _check_real("eta_min", eta_min, 0)
        super().__init__(optimizer, last_epoch)

    def _closed(self, base: float) -> float:
        # The unclamped formula of schedules.cosine_decay (torch's continues past T_max).
        return _s._cosine(self.last_epoch, self.T_max, base, self.eta_min)

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        t, T, eta_min = self.last_epoch, self.T_max, self.eta_min
        groups = self.optimizer.param_groups
        if self._is_initial:
            return self._current_lrs()
        if self._step_count == 1 and t > 0:  # torch's first step after a resume
            return [self._closed(base) for base in self.base_lrs]
        if (t - 1 - T) % (2 * T) == 0:
            # Leaving the minimum: the ratio below would be x/0, so torch adds
            # the first increment of the rising half-wave instead.
            return [group["lr"] + (base - eta_min) * (1 - math.cos(math.pi / T)) / 2
                    for base, group in zip(self.base_lrs, groups)]
        # (1 + cos(pi t/T)) / (1 + cos(pi (t-1)/T)): the kernel's halves cancel
        # exactly, so this is torch's factor bit for bit.
        ratio = _s._cosine(t, T, 1.0, 0.0) / _s._cosine(t - 1, T, 1.0, 0.0)
        return [ratio * (group["lr"] - eta_min) + eta_min for group in groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [self._closed(base) for base in self.base_lrs]


# --------------------------------------------------------------------------
# closed-form schedulers
# --------------------------------------------------------------------------

class CosineAnnealingWarmRestarts(LRScheduler):
    """SGDR: cosine annealing to ``eta_min``, restarting after ``T_0``,
    ``T_0 * T_mult``, ... steps.

    ``T_cur`` / ``T_i`` track the position in the current cycle as in torch
    (``step(epoch)`` accepts fractional epochs); the lr is
    :func:`fusedoptim.schedules.cosine_warm_restarts`'s formula.
    """

    T_cur: float            # steps into the current cycle (fractional after step(epoch))

    def __init__(self, optimizer: SupportsParamGroups, T_0: int, T_mult: int = 1,
                 eta_min: float = 0.0, last_epoch: int = -1) -> None:
        self.T_0 = _check_int("T_0", T_0, 1)
        self.T_i = self.T_0
        self.T_mult = _check_int("T_mult", T_mult, 1)
        self.eta_min = _check_real("eta_min", eta_min, 0)
        self.T_cur = last_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        return [_s._cosine(self.T_cur, self.T_i, base, self.eta_min)
                for base in self.base_lrs]

    def step(self, epoch: float | None = None) -> None:
        """Advance one step, or jump to ``epoch`` (may be fractional, e.g.
        ``epoch + batch / n_batches``)."""
        if epoch is not None:
            _s._check_step(epoch, "epoch")
        self._step_count += 1
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        else:
            self.T_cur, self.T_i = _s._sgdr_position(epoch, self.T_0, self.T_mult)
        self.last_epoch = math.floor(epoch)
        self._in_step = True
        try:
            values = self.get_lr()
        finally:
            self._in_step = False
        self._write_lrs(values)


class CyclicLR(LRScheduler):
    """Cyclical learning rate between ``base_lr`` and ``max_lr`` (Smith, 2017,
    arXiv:1506.01186), stepped every batch.

    The lr is :func:`fusedoptim.schedules.cyclic`.  With ``cycle_momentum``
    the momentum (``group['momentum']``, or beta1 of ``group['betas']`` for
    the Adam family) cycles inversely between ``max_momentum`` and
    ``base_momentum``.  Arguments as in torch; ``base_lr``, ``max_lr`` and the
    momenta may be per-group lists.
    """

    _not_state = ("optimizer", "_scale_fn_custom")

    @_groups_restored_on_error
    def __init__(self, optimizer: SupportsParamGroups, base_lr: PerGroup,
                 max_lr: PerGroup, step_size_up: float = 2000,
                 step_size_down: float | None = None, mode: str = "triangular",
                 gamma: float = 1.0, scale_fn: Callable[[float], float] | None = None,
                 scale_mode: str = "cycle", cycle_momentum: bool = True,
                 base_momentum: PerGroup = 0.8,
                 max_momentum: PerGroup = 0.9, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        _check_int("last_epoch", last_epoch, -1)
        base_lrs = _per_group("base_lr", base_lr, optimizer, _nonneg)
        self.max_lrs = _per_group("max_lr", max_lr, optimizer, _nonneg)
        # Building one schedule validates the remaining arguments.
        _s.cyclic(0.0, 1.0, step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode)
        self.step_size_up = float(step_size_up)
        self.step_size_down = (self.step_size_up if step_size_down is None
                               else float(step_size_down))
        self.mode = mode
        self.gamma = float(gamma)
        self._scale_fn_custom = scale_fn
        if scale_fn is None:  # as torch: the mode decides what the scale sees
            scale_mode = "iterations" if mode == "exp_range" else "cycle"
        self.scale_mode = scale_mode
        self.cycle_momentum = _check_bool("cycle_momentum", cycle_momentum)
        if self.cycle_momentum:
            _check_momentum_groups(optimizer)
            self.base_momentums = _per_group("base_momentum", base_momentum, optimizer,
                                             _nonneg)
            self.max_momentums = _per_group("max_momentum", max_momentum, optimizer,
                                            _nonneg)
        if last_epoch == -1:
            for lr, group in zip(base_lrs, optimizer.param_groups):
                group["lr"] = lr
            if self.cycle_momentum:
                for mm, bm, group in zip(self.max_momentums, self.base_momentums,
                                         optimizer.param_groups):
                    _set_momentum(group, mm)
                    group["max_momentum"] = mm
                    group["base_momentum"] = bm
        super().__init__(optimizer, last_epoch)
        # torch's initial step used group['initial_lr']; from now on base_lr rules.
        self.base_lrs = base_lrs

    def _schedule(self, low: float, high: float) -> _s.Schedule:
        return _s.cyclic(low, high, self.step_size_up, self.step_size_down, self.mode,
                         self.gamma, self._scale_fn_custom, self.scale_mode)

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        t = self.last_epoch
        lrs = [self._schedule(base, peak)(t)
               for base, peak in zip(self.base_lrs, self.max_lrs)]
        if self.cycle_momentum:
            # Inverse cycle: from max_momentum towards base_momentum as lr rises.
            for group, bm, mm in zip(self.optimizer.param_groups, self.base_momentums,
                                     self.max_momentums):
                _set_momentum(group, self._schedule(mm, bm)(t))
        return lrs

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["_scale_fn_custom"] = _callable_state(self._scale_fn_custom)
        return state

    def _load_state(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        attrs = state.pop("_scale_fn_custom", None)
        super()._load_state(state)
        if attrs is not None and self._scale_fn_custom is not None:
            self._scale_fn_custom.__dict__.update(attrs)


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin, 2019, arXiv:1708.07120), stepped every batch.

    The lr goes from ``max_lr / div_factor`` up to ``max_lr`` and down to
    ``max_lr / div_factor / final_div_factor`` over ``total_steps`` (or
    ``epochs * steps_per_epoch``) steps: :func:`fusedoptim.schedules.one_cycle`.
    With ``cycle_momentum`` the momentum, or beta1 for the Adam family, moves
    inversely between ``max_momentum`` and ``base_momentum``.  As in torch the
    per-group values live in ``group['initial_lr' | 'max_lr' | 'min_lr' |
    'max_momentum' | 'base_momentum']``, and one step past ``total_steps - 1``
    is allowed; stepping further raises ValueError.
    """

    @_groups_restored_on_error
    def __init__(self, optimizer: SupportsParamGroups, max_lr: PerGroup,
                 total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", cycle_momentum: bool = True,
                 base_momentum: PerGroup = 0.85,
                 max_momentum: PerGroup = 0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        _check_int("last_epoch", last_epoch, -1)
        # torch ignores epochs and steps_per_epoch when total_steps is given; a bad one is
        # still refused here rather than silently ignored.
        if epochs is not None:
            _check_int("epochs", epochs, 1)
        if steps_per_epoch is not None:
            _check_int("steps_per_epoch", steps_per_epoch, 1)
        if total_steps is not None:
            total = total_steps
        elif epochs is not None and steps_per_epoch is not None:
            total = epochs * steps_per_epoch
        else:
            raise ValueError(
                "OneCycleLR needs total_steps, or both epochs and steps_per_epoch; got "
                f"total_steps={total_steps!r}, epochs={epochs!r}, "
                f"steps_per_epoch={steps_per_epoch!r}")
        self.total_steps, self.pct_start = _s._check_one_cycle(
            total, pct_start, anneal_strategy, three_phase)
        self.anneal_strategy = anneal_strategy
        self.three_phase = bool(three_phase)
        max_lrs = _per_group("max_lr", max_lr, optimizer, _positive)
        div_factor = _positive("div_factor", div_factor)
        final_div_factor = _positive("final_div_factor", final_div_factor)
        self.cycle_momentum = _check_bool("cycle_momentum", cycle_momentum)
        if self.cycle_momentum:
            _check_momentum_groups(optimizer)
            max_ms = _per_group("max_momentum", max_momentum, optimizer, _nonneg)
            base_ms = _per_group("base_momentum", base_momentum, optimizer, _nonneg)
        if last_epoch == -1:
            for m, group in zip(max_lrs, optimizer.param_groups):
                group["initial_lr"] = m / div_factor
                group["max_lr"] = m
                group["min_lr"] = group["initial_lr"] / final_div_factor
            if self.cycle_momentum:
                for mm, bm, group in zip(max_ms, base_ms, optimizer.param_groups):
                    _set_momentum(group, mm)
                    group["max_momentum"] = mm
                    group["base_momentum"] = bm
        super().__init__(optimizer, last_epoch)

    def _value(self, start: float, peak: float, end: float) -> float:
        # The formula behind schedules.one_cycle, reading the per-group values
        # from the group like torch, and unclamped at t == total_steps like torch.
        return _s._one_cycle(self.last_epoch, self.total_steps, self.pct_start,
                             self.anneal_strategy, self.three_phase, start, peak, end)

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        if self.last_epoch > self.total_steps:
            raise ValueError(
                f"OneCycleLR stepped to step {self.last_epoch}, past total_steps="
                f"{self.total_steps}; create it with a larger total_steps")
        lrs = []
        for group in self.optimizer.param_groups:
            lrs.append(self._value(group["initial_lr"], group["max_lr"], group["min_lr"]))
            if self.cycle_momentum:
                mm, bm = group["max_momentum"], group["base_momentum"]
                _set_momentum(group, self._value(mm, bm, mm))
        return lrs


class SWALR(LRScheduler):
    """Anneal each group's lr to its ``swa_lr`` over ``anneal_epochs`` steps, then hold it
    there: torch.optim.swa_utils.SWALR, for the averaging phase of Stochastic Weight
    Averaging (Izmailov et al., 2018, "Averaging Weights Leads to Wider Optima and Better
    Generalization", arXiv:1803.05407); pair it with
    :class:`fusedoptim.swa_utils.AveragedParams`.

    At step ``s`` (``s = 0`` on construction; ``s = max(1, s)`` when ``anneal_epochs`` is 0),
    with ``t = clamp(s / max(1, anneal_epochs), 0, 1)`` and ``alpha = f(t)``, where
    ``f(t) = (1 - cos(pi t)) / 2`` ("cos") or ``f(t) = t`` ("linear"), each group's lr becomes
    ``swa_lr * alpha + lr0 * (1 - alpha)``. ``lr0`` is recovered from the group's current lr
    and the previous step's alpha, as torch does, so the scheduler follows an lr changed
    by another scheduler before it took over (torch's example: MultiplicativeLR until
    ``swa_start``, then SWALR).

    Args (torch's):
        optimizer: object with ``param_groups`` (each with ``'lr'``); each group gets its
            ``'swa_lr'``.
        swa_lr (float or list): the lr to anneal to, one for all groups or one per group,
            each a finite number >= 0.
        anneal_epochs (int): steps of the annealing phase, default 10, >= 0.
        anneal_strategy (str): ``"cos"`` (default) or ``"linear"``.
        last_epoch (int): default -1.
    """

    @_groups_restored_on_error
    def __init__(self, optimizer: SupportsParamGroups, swa_lr: PerGroup,
                 anneal_epochs: int = 10, anneal_strategy: str = "cos",
                 last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        _check_int("last_epoch", last_epoch, -1)
        swa_lrs = _per_group("swa_lr", swa_lr, optimizer, _nonneg)
        self.anneal_strategy = _check_choice("anneal_strategy", anneal_strategy,
                                             ("cos", "linear"))
        self.anneal_epochs = _check_int("anneal_epochs", anneal_epochs, 0)
        for value, group in zip(swa_lrs, optimizer.param_groups):
            group["swa_lr"] = value
        super().__init__(optimizer, last_epoch)

    def anneal_func(self, t: float) -> float:
        """The annealing curve: (1 - cos(pi t)) / 2 for "cos", t for "linear"."""
        if self.anneal_strategy == "linear":
            return t
        return (1 - math.cos(math.pi * t)) / 2

    @staticmethod
    def _get_initial_lr(lr: float, swa_lr: float, alpha: float) -> float:
        if alpha == 1:
            return swa_lr
        return (lr - alpha * swa_lr) / (1 - alpha)

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        step = self._step_count - 1
        if self.anneal_epochs == 0:
            step = max(1, step)
        # (torch's expressions, ints and all: a clamped t is the int 0 or 1)
        prev_t = max(0, min(1, (step - 1) / max(1, self.anneal_epochs)))
        prev_alpha = self.anneal_func(prev_t)
        groups = self.optimizer.param_groups
        prev_lrs = [self._get_initial_lr(group["lr"], group["swa_lr"], prev_alpha)
                    for group in groups]
        t = max(0, min(1, step / max(1, self.anneal_epochs)))
        alpha = self.anneal_func(t)
        return [group["swa_lr"] * alpha + lr * (1 - alpha)
                for group, lr in zip(groups, prev_lrs)]


class InverseSqrtLR(LRScheduler):
    """``lr = initial_lr / sqrt(1 + t / timescale)`` (closed form, not in torch).

    :func:`fusedoptim.schedules.inverse_sqrt`.  Wrapped as
    ``WarmupLR(InverseSqrtLR(opt, timescale=w), warmup_steps=w)`` it is the
    Transformer / fairseq schedule: linear warm-up for ``w`` steps, then
    ``lr * sqrt(w / t)``.
    """

    def __init__(self, optimizer: SupportsParamGroups, timescale: float = 1.0,
                 last_epoch: int = -1) -> None:
        self.timescale = _positive("timescale", timescale)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        return [_s.inverse_sqrt(base, self.timescale)(self.last_epoch)
                for base in self.base_lrs]


# --------------------------------------------------------------------------
# plateau
# --------------------------------------------------------------------------

class ReduceLROnPlateau(LRScheduler):
    """Multiply the lr by ``factor`` when a metric stops improving.

    Call ``step(metric)`` once per evaluation.  ``mode`` 'min' (loss) or 'max'
    (accuracy); improvement means beating the best value by ``threshold``,
    relatively (``threshold_mode='rel'``) or absolutely ('abs').  After more
    than ``patience`` steps without improvement the lr is reduced (never below
    ``min_lr``, and not at all if the change would be below ``eps``), then
    ``cooldown`` steps pass before bad steps are counted again.
    """

    def __init__(self, optimizer: SupportsParamGroups, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4,
                 threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr: PerGroup = 0.0, eps: float = 1e-8) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        self.mode = _check_choice("mode", mode, ("min", "max"))
        self.threshold_mode = _check_choice("threshold_mode", threshold_mode, ("rel", "abs"))
        self.factor = _check_real("factor", factor, 0, 1, low_open=True, high_open=True)
        self.patience = _check_int("patience", patience, 0)
        self.threshold = _check_real("threshold", threshold, 0)
        self.cooldown = _check_int("cooldown", cooldown, 0)
        self.eps = _check_real("eps", eps, 0)
        if isinstance(min_lr, (list, tuple)):
            self.default_min_lr = None
            self.min_lrs = _per_group("min_lr", min_lr, optimizer, _nonneg)
        else:
            self.default_min_lr = _nonneg("min_lr", min_lr)
            self.min_lrs = [self.default_min_lr] * len(optimizer.param_groups)
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.last_epoch = 0
        self._last_lr = self._current_lrs()
        self._reset()

    def _reset(self) -> None:
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    # torch's signature, which the base class's step(epoch) does not admit: a metric first.
    def step(self, metrics: SupportsFloat,  # type: ignore[override]
             epoch: int | None = None) -> None:
        """Record one evaluation of the monitored metric (a number)."""
        try:
            if isinstance(metrics, (str, bytes)):
                raise TypeError
            current = float(metrics)
        except (TypeError, ValueError):
            raise TypeError(f"metrics must be a number (the monitored value, e.g. a "
                            f"validation loss), got {metrics!r}") from None
        if epoch is not None:
            epoch = _check_int("epoch", epoch, 0)
        self.last_epoch = self.last_epoch + 1 if epoch is None else epoch
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs during cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = self._current_lrs()

    def _reduce_lr(self) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(
                    f"the optimizer now has {len(groups)} param groups but min_lr was "
                    f"given for {len(self.min_lrs)}; update min_lrs")
            self.min_lrs = [self.default_min_lr] * len(groups)
        for group, min_lr in zip(groups, self.min_lrs):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, min_lr)
            if old_lr - new_lr > self.eps:
                group["lr"] = new_lr


# --------------------------------------------------------------------------
# combinators
# --------------------------------------------------------------------------

def _check_sub_schedulers(owner: str, schedulers: Iterable[LRScheduler],
                          optimizer: SupportsParamGroups | None) -> list[LRScheduler]:
    if isinstance(schedulers, (str, bytes, Mapping)) or not isinstance(schedulers, _Iterable):
        raise TypeError(f"schedulers must be a list of schedulers, got {schedulers!r}")
    schedulers = list(schedulers)
    if not schedulers:
        raise ValueError(f"{owner} needs at least one scheduler, got none")
    for i, sched in enumerate(schedulers):
        if not isinstance(sched, LRScheduler):
            raise TypeError(
                f"schedulers[{i}] must be a fusedoptim.lr_scheduler scheduler, got "
                f"{type(sched).__module__}.{type(sched).__name__}")
        if isinstance(sched, ReduceLROnPlateau):
            raise ValueError(
                f"schedulers[{i}] is a ReduceLROnPlateau, which {owner} cannot drive "
                "because its step() needs a metric")
        if optimizer is not None and sched.optimizer is not optimizer:
            raise ValueError(
                f"schedulers[{i}] ({type(sched).__name__}) is attached to a different "
                f"optimizer; all schedulers in {owner} must share one")
    return schedulers


class _Composite(_SchedulerMixinBase):
    """state_dict handling for schedulers that own sub-schedulers."""

    _schedulers: list[LRScheduler]

    def state_dict(self) -> dict[str, Any]:
        state = LRScheduler.state_dict(self)
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def _load_state(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        subs = state.pop("_schedulers")
        LRScheduler._load_state(self, state)
        for sched, sub in zip(self._schedulers, subs):
            sched._load_state(sub)


class SequentialLR(_Composite, LRScheduler):
    """Run ``schedulers[0]``, switching to ``schedulers[i]`` at ``milestones[i-1]``.

    As in torch, each scheduler restarts at its own step 0 (closed form) when
    its milestone is reached.  ``milestones`` must be strictly increasing.
    """

    _not_state = ("optimizer", "_schedulers")

    @_groups_restored_on_error
    def __init__(self, optimizer: SupportsParamGroups, schedulers: Iterable[LRScheduler],
                 milestones: Sequence[int], last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        schedulers = _check_sub_schedulers("SequentialLR", schedulers, optimizer)
        milestones = _check_milestones("milestones", milestones, strict=True)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                f"milestones must have len(schedulers) - 1 = {len(schedulers) - 1} "
                f"entries, got {len(milestones)}: {milestones!r}")
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = _check_int("last_epoch", last_epoch, -1) + 1
        self.optimizer = optimizer
        # Each sub-scheduler already took its initial step at construction:
        # reset the lrs and step counts, then let the active one start.
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self.recursive_undo()
        idx = bisect_right(self._milestones, 0)
        self._schedulers[idx]._initial_step()
        self._last_lr = self._schedulers[idx].get_last_lr()

    def recursive_undo(self, sched: LRScheduler | None = None) -> None:
        """Undo the construction-time step of every (nested) sub-scheduler."""
        target = self if sched is None else sched
        if hasattr(target, "_schedulers"):
            for sub in target._schedulers:
                self.recursive_undo(sub)
        elif hasattr(target, "last_epoch"):
            target.last_epoch -= 1

    # As torch's: no epoch argument, which the base class's step(epoch) takes.
    def step(self) -> None:  # type: ignore[override]
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        sched = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            sched._update_lr(0)  # start the next phase from its own step 0
        else:
            sched.step()
        self._last_lr = sched.get_last_lr()


class ChainedScheduler(_Composite, LRScheduler):
    """Step several chainable schedulers together; their factors multiply."""

    _not_state = ("optimizer", "_schedulers")

    def __init__(self, schedulers: Iterable[LRScheduler],
                 optimizer: SupportsParamGroups | None = None) -> None:
        schedulers = _check_sub_schedulers("ChainedScheduler", schedulers, None)
        if optimizer is None:
            optimizer = getattr(schedulers[0], "optimizer", None)
        schedulers = _check_sub_schedulers("ChainedScheduler", schedulers, optimizer)
        self._schedulers = schedulers
        # An LRScheduler (checked above) always has one.
        assert optimizer is not None
        self.optimizer = optimizer
        self._last_lr = self._current_lrs()

    # As torch's: no epoch argument, which the base class's step(epoch) takes.
    def step(self) -> None:  # type: ignore[override]
        for sched in self._schedulers:
            sched.step()
        self._last_lr = self._current_lrs()


class WarmupLR(LRScheduler):
    """Put a linear warm-up of ``warmup_steps`` steps in front of ``scheduler``.

    The lr ramps linearly from ``start_factor * lr0`` to ``lr0``, where ``lr0``
    is the lr ``scheduler`` starts with (its step 0), over ``warmup_steps``
    steps (:func:`fusedoptim.schedules.linear_warmup`).  At step
    ``warmup_steps`` the wrapped scheduler takes over from its own step 0, so
    its whole schedule is shifted by ``warmup_steps``; e.g.
    ``WarmupLR(CosineAnnealingLR(opt, T_max=1000), 100)`` runs 1100 steps.
    Wrap a freshly created scheduler and step the wrapper only.  Extra
    ``step()`` arguments (ReduceLROnPlateau's metric) are passed on after the
    warm-up and ignored during it.
    Goyal et al., 2017 (arXiv:1706.02677).
    """

    _not_state = ("optimizer", "scheduler")

    @_groups_restored_on_error
    def __init__(self, scheduler: LRScheduler, warmup_steps: int,
                 start_factor: float = 0.0) -> None:
        if not isinstance(scheduler, LRScheduler):
            raise TypeError(
                "scheduler must be a fusedoptim.lr_scheduler scheduler, got "
                f"{type(scheduler).__module__}.{type(scheduler).__name__}")
        self.warmup_steps = _check_int("warmup_steps", warmup_steps, 0)
        self.start_factor = _check_real("start_factor", start_factor, 0, 1)
        self.scheduler = scheduler
        self.optimizer = scheduler.optimizer
        if not isinstance(scheduler, (_Composite, ReduceLROnPlateau, WarmupLR)):
            # Put the wrapped scheduler at its own step 0 from its base lrs, as
            # SequentialLR does at a milestone: a chainable scheduler built after
            # another one on the same optimizer saw an already-scaled lr.
            scheduler._update_lr(0)
        # The ramp ends where the wrapped schedule begins; its untouched state
        # is kept so that the warm-up can be restarted (SequentialLR, step(epoch)).
        self.peak_lrs = scheduler.get_last_lr()
        self._start_state = scheduler.state_dict()
        self.last_epoch = -1
        self._initial_step()

    def _warmup_lrs(self, t: int) -> list[float]:
        return [_s.linear_warmup(peak, self.warmup_steps, self.start_factor * peak)(t)
                for peak in self.peak_lrs]

    def step(self, *args: Any, **kwargs: Any) -> None:
        self._step_count += 1
        self.last_epoch += 1
        if self.last_epoch > self.warmup_steps:
            self.scheduler.step(*args, **kwargs)
            self._last_lr = self.scheduler.get_last_lr()
        else:  # at last_epoch == warmup_steps this writes the wrapped step-0 lrs
            self._write_lrs(self._warmup_lrs(self.last_epoch))

    def _update_lr(self, epoch: int | None = None) -> None:
        if epoch is None:
            self.step()
            return
        epoch = _check_int("epoch", epoch, 0)
        # Rewind the wrapped scheduler to its step 0 and replay up to epoch.
        self.scheduler.load_state_dict(self._start_state)
        self.last_epoch = min(epoch, self.warmup_steps)
        self._write_lrs(self._warmup_lrs(self.last_epoch))
        while self.last_epoch < epoch:
            self.step()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["scheduler"] = self.scheduler.state_dict()
        return state

    def _load_state(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        inner = state.pop("scheduler")
        super()._load_state(state)
        self.scheduler._load_state(inner)
