"""Optimizer wrappers: :class:`Lookahead` (Zhang et al. 2019) and :class:`MultiSteps`
(gradient accumulation, in the spirit of ``optax.MultiSteps``).

Each wraps a fusedoptim optimizer and adds one fused pass on the shared driver
(``cython_kernels/wrappers.pxi.tp``): Lookahead's synchronisation of the slow weights every
k steps, MultiSteps' accumulation of each micro-batch's grads. Both expose the wrapped
optimizer's ``param_groups`` (the same list, so :mod:`fusedoptim.lr_scheduler` schedulers work
through them) and keep their own state in a ``state_dict`` that nests the wrapped one's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _kernels
from . import _validation as _v
from ._exclusive import exclusive
from ._groups import ParamGroups
from ._layout import grads_in_param_order
from .optimizer import Optimizer

if TYPE_CHECKING:
    from ._typing import FloatArray, ParamGroup

_LOOKAHEAD = _kernels.KERNEL_IDS["lookahead"]
_ACCUMULATE = _kernels.KERNEL_IDS["accumulate"]
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _check_wrapped(optimizer: object, who: str) -> None:
    if isinstance(optimizer, (ParamGroups, _Wrapper)):
        return
    from .optim.lbfgs import LBFGS
    if isinstance(optimizer, LBFGS):
        raise TypeError(f"{who} cannot wrap LBFGS: its step(closure) runs a line search with "
                        f"its own evaluations; wrap a first-order fusedoptim optimizer "
                        f"(fo.Adam, fo.SGD, ...) instead")
    raise TypeError(f"{who}: optimizer must be a fusedoptim optimizer (fo.Adam, fo.SGD, ..., "
                    f"or another wrapper), got {type(optimizer).__name__}")


def _check_float_params(groups: list[ParamGroup], who: str) -> None:
    for gi, g in enumerate(groups):
        for t, p in enumerate(g["params"]):
            if p.dtype not in _FLOATS:
                raise TypeError(f"{who} supports float32/float64 params; param_groups[{gi}]"
                                f"['params'][{t}] is {p.dtype}: wrap an optimizer of "
                                f"float32/float64 params (its master weights are not "
                                f"reachable from here)")


class _Wrapper:
    """What both wrappers pass through to the wrapped optimizer."""

    optimizer: Any

    @property
    def param_groups(self) -> list[ParamGroup]:
        """The wrapped optimizer's param groups (the same list: a scheduler's writes reach it)."""
        groups: list[ParamGroup] = self.optimizer.param_groups
        return groups

    @property
    def defaults(self) -> dict[str, Any]:
        defaults: dict[str, Any] = self.optimizer.defaults
        return defaults

    @property
    def state(self) -> Any:
        """The wrapped optimizer's per-param state."""
        return self.optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The wrapped optimizer's zero_grad."""
        self.optimizer.zero_grad(set_to_none)

    def _params(self) -> list[FloatArray]:
        return [p for g in self.param_groups for p in g["params"]]

    def __repr__(self) -> str:
        inner = "\n".join("    " + line for line in repr(self.optimizer).splitlines())
        return f"{type(self).__name__}({self._describe()},\n{inner}\n)"

    def _describe(self) -> str:
        raise NotImplementedError


def _plan(params: list[FloatArray], state: list[list[FloatArray | None]] | list[None],
          nstate: int, labels: list[str]) -> _kernels.Plan:
    return _kernels.Plan(params, state, nstate, 1, labels)


class Lookahead(_Wrapper):
    r"""Lookahead (Zhang et al., 2019, "Lookahead Optimizer: k steps forward, 1 step back").

    The wrapped optimizer updates the params (the fast weights) at every step. Lookahead keeps
    a copy, the slow weights (taken from the params when it is built), and after every k-th
    step that ran::

        slow = slow + alpha * (fast - slow)
        fast = slow

    in one fused pass over all params (read params and slow weights, write both). The wrapped
    optimizer's state is kept across synchronisations (the paper's default). A step that the
    wrapped optimizer skipped (``skip_nonfinite``) does not count towards k.

    Args:
        optimizer: a fusedoptim optimizer of float32/float64 params: any :class:`Optimizer`
            subclass, :class:`Adafactor`, :class:`SparseAdam`, or a :class:`MultiSteps`
            (whose skipped micro-steps do not count). :class:`LBFGS` is refused (its step runs
            a line search). Half-precision params are refused (the slow weights would have to
            follow the master weights, which the wrapper does not reach).
        k (int): synchronisation period, default 5, >= 1.
        alpha (float): slow step size, default 0.5, in [0, 1] (1 makes the slow weights
            follow the fast ones; 0 resets the fast weights to the slow ones).

    ``param_groups``, ``defaults``, ``state`` and ``zero_grad`` are the wrapped optimizer's;
    ``add_param_group`` adds to it and takes the new params' slow weights. ``step(grads,
    **kwargs)`` passes its arguments on and returns what the wrapped step returned.
    ``state_dict()`` is ``{"optimizer": <the wrapped one's>, "lookahead": {"k", "alpha",
    "step", "slow": {flat param index: copy}}}``; ``step`` counts the steps that ran.

    Optax: ``optax.lookahead(fast_optimizer, sync_period=k, slow_step_size=alpha,
    reset_state=False)`` with ``optax.LookaheadParams.init_synced(params)``, whose ``fast``
    are the params here (same sequence up to rounding: Optax folds the synchronisation into
    the update it returns).
    """

    def __init__(self, optimizer: Any, k: int = 5, alpha: float = 0.5) -> None:
        _check_wrapped(optimizer, "Lookahead")
        self.k = _v.positive_int(k, "k")
        self.alpha = _v.unit_closed(alpha, "alpha")
        _check_float_params(optimizer.param_groups, "Lookahead")
        self.optimizer = optimizer
        #: steps of the wrapped optimizer that ran (a synchronisation follows every k-th)
        self.step_count = 0
        self._slow: list[FloatArray] = []
        self._plans: list[_kernels.Plan] = []
        self._nplanned = 0
        self._sync_plans()

    def _describe(self) -> str:
        return f"k={self.k}, alpha={self.alpha}"

    def _sync_plans(self) -> None:
        """Slow weights (copies of the params) and one plan per group and dtype, for the
        params not planned yet (all of them at first; a group added since)."""
        flat = 0
        for gi, g in enumerate(self.param_groups):
            params = list(g["params"])
            start, flat = flat, flat + len(params)
            if start < self._nplanned:
                continue
            slow = [np.array(p, order="C", copy=True) for p in params]
            self._slow.extend(slow)
            for dt in _FLOATS:
                idx = [t for t, p in enumerate(params) if p.dtype == dt]
                if idx:
                    state: list[list[FloatArray | None]] = [[slow[t]] for t in idx]
                    self._plans.append(_plan([params[t] for t in idx], state, 1,
                                             [f"param_groups[{gi}]['params'][{t}]"
                                              for t in idx]))
        self._nplanned = flat
        for plan in self._plans:
            plan.active_array[...] = 1

    @exclusive
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the wrapped optimizer; its slow weights start as its params."""
        params = param_group.get("params") if isinstance(param_group, dict) else None
        if isinstance(params, dict):
            params = list(params.values())
        elif not isinstance(params, (list, tuple)):
            params = [getattr(params, "flat", None)]     # a FlatParams: its one buffer
        _check_float_params([{"params": [p for p in params if isinstance(p, np.ndarray)]}],
                            "Lookahead")
        self.optimizer.add_param_group(param_group)
        self._sync_plans()

    @exclusive
    def step(self, /, grads: Any = None, **kwargs: Any) -> bool:
        """The wrapped optimizer's step, then, after every k-th step that ran, the
        synchronisation pass. Returns what the wrapped step returned."""
        ran = bool(self.optimizer.step(grads, **kwargs))
        if ran:
            self.step_count += 1
            if self.step_count % self.k == 0:
                self._sync()
        return ran

    @exclusive
    def sync(self) -> None:
        """Synchronise now (one fused pass): slow += alpha * (fast - slow); fast = slow."""
        self._sync()

    def _sync(self) -> None:
        for plan in self._plans:
            plan.hp_array[:, 0] = self.alpha
            plan.run(_LOOKAHEAD)

    @property
    def slow_weights(self) -> list[FloatArray]:
        """The slow weights, one per param in flat order (the live arrays)."""
        return list(self._slow)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(),
                "lookahead": {"k": self.k, "alpha": self.alpha, "step": self.step_count,
                              "slow": {i: s.copy() for i, s in enumerate(self._slow)}}}

    @exclusive
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint of the same setup; everything is checked before anything
        changes (the wrapped optimizer checks its own part first too)."""
        if not isinstance(state_dict, Mapping) or "optimizer" not in state_dict or \
                not isinstance(state_dict.get("lookahead"), Mapping):
            raise TypeError("state_dict must be a dict with 'optimizer' and 'lookahead', as "
                            "returned by Lookahead.state_dict()")
        own = state_dict["lookahead"]
        try:
            k = _v.positive_int(own["k"], "state_dict['lookahead']['k']")
            alpha = _v.unit_closed(own["alpha"], "state_dict['lookahead']['alpha']")
            step = own["step"]
            slow = own["slow"]
        except KeyError as exc:
            raise ValueError(f"state_dict['lookahead'] lacks {exc.args[0]!r}") from None
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"state_dict['lookahead']['step'] must be an int >= 0, got "
                             f"{step!r}")
        params = self._params()
        if not isinstance(slow, Mapping) or set(slow) != set(range(len(params))):
            got = sorted(slow) if isinstance(slow, Mapping) else type(slow).__name__
            raise ValueError(f"state_dict['lookahead']['slow'] must map every param index "
                             f"0..{len(params) - 1} to its slow weights, got {got}")
        for i, p in enumerate(params):
            s = slow[i]
            if not isinstance(s, np.ndarray) or s.shape != p.shape or s.dtype != p.dtype:
                raise ValueError(f"state_dict['lookahead']['slow'][{i}] must be a {p.dtype} "
                                 f"array of shape {p.shape}, got "
                                 f"{getattr(s, 'dtype', type(s).__name__)} of shape "
                                 f"{getattr(s, 'shape', '?')}")
        self.optimizer.load_state_dict(state_dict["optimizer"])   # checks, then replaces
        self.k, self.alpha, self.step_count = k, alpha, int(step)
        for i, buf in enumerate(self._slow):
            buf[...] = slow[i]


def _takes_grad_scale(optimizer: Any) -> bool:
    while isinstance(optimizer, Lookahead):
        optimizer = optimizer.optimizer
    return isinstance(optimizer, Optimizer)


def _base(optimizer: Any) -> Optimizer:
    while isinstance(optimizer, _Wrapper):
        optimizer = optimizer.optimizer
    assert isinstance(optimizer, Optimizer)
    return optimizer


class MultiSteps(_Wrapper):
    r"""Gradient accumulation over ``every_k`` micro-batches, in the spirit of
    ``optax.MultiSteps``.

    ``step(grads)`` adds the micro-batch's grads into an accumulation buffer (one fused pass,
    no allocation). Every ``every_k``-th call it then steps the wrapped optimizer on the mean,
    ``acc / every_k``, and starts a new window. Returns True when the wrapped step ran, else
    False (also when the wrapped optimizer skipped a non-finite window, below).

    How it is fused: the mean is never formed. The wrapped optimizer reads the buffer as its
    grads with ``grad_scale=every_k`` (folded into its kernel's grad multiplier: it computes
    ``(1/every_k rounded to the dtype) * acc``; for a power-of-two every_k that is exactly
    ``acc / every_k``, otherwise it may differ from the division by 1 ulp). The buffer is not
    zeroed either: the first micro-batch of the next window writes ``acc = g`` instead of
    ``acc = acc + g``. So a window of k micro-batches costs k accumulation passes (the first
    reads g and writes acc; the others read acc and g and write acc) and the wrapped step,
    whose traffic is that of an unwrapped step: no pass of its own for the mean or the zeroing.
    ``every_k == 1`` passes the grads straight through.

    A ``None`` grad adds nothing for that param. A param with no grad in any micro-batch of
    a window is not stepped (the wrapped optimizer sees ``None``); otherwise its mean is the
    sum of its grads over the window divided by every_k.

    Non-finite grads: with ``skip_nonfinite=True`` on the wrapped optimizer, a NaN or Inf in
    any micro-batch reaches the accumulated sum, the wrapped optimizer's check then skips the
    step at the end of the window, and the window is dropped: params and state are untouched,
    the next call starts a new window, and ``step`` returns False. Without it, the NaN/Inf
    propagates into the params, as an unwrapped step would.

    Args:
        optimizer: a fusedoptim :class:`Optimizer` subclass of float32/float64 params (grads of
            the same dtype), or a :class:`Lookahead` over one. :class:`Adafactor` and
            :class:`LBFGS` are refused (their steps take no ``grad_scale``); so is
            :class:`SparseAdam` (its grads are sparse rows, not a dense sum).
        every_k (int): micro-batches per step, >= 1.

    ``param_groups``, ``defaults``, ``state`` and ``zero_grad`` are the wrapped optimizer's.
    ``state_dict()`` is ``{"optimizer": <the wrapped one's>, "multisteps": {"every_k",
    "count", "acc": {flat param index: copy}}}``, ``count`` the micro-batches of the current
    window and ``acc`` the accumulated sums of the params that had a grad in it.

    Optax: ``optax.MultiSteps(opt, every_k_schedule=every_k, accumulator_dtype=<the params'
    dtype>)`` (its ``gradient_transformation()``). Optax keeps a running mean instead of the
    sum (the same up to rounding), and by default accumulates in float32, even for float64
    params under ``jax_enable_x64``: hence the explicit ``accumulator_dtype``; the buffer here
    always has the params' dtype.
    """

    def __init__(self, optimizer: Any, every_k: int) -> None:
        _check_wrapped(optimizer, "MultiSteps")
        if not _takes_grad_scale(optimizer):
            raise TypeError(f"MultiSteps: cannot wrap {type(optimizer).__name__}: the mean is "
                            f"taken by the wrapped step's grad_scale, which only the "
                            f"fo.Optimizer subclasses (fo.Adam, fo.SGD, ...; also under "
                            f"Lookahead) have; accumulate by hand for this one")
        self.every_k = _v.positive_int(every_k, "every_k")
        _check_float_params(optimizer.param_groups, "MultiSteps")
        self.optimizer = optimizer
        self._base = _base(optimizer)
        #: micro-batches accumulated in the current window
        self.count = 0
        params = self._params()
        self._acc = [np.zeros_like(p, order="C") for p in params]
        self._has = np.zeros(len(params), dtype=bool)     # a grad arrived in this window
        self._plans: list[tuple[_kernels.Plan, list[int]]] = []
        start = 0
        for gi, g in enumerate(self.param_groups):
            n = len(g["params"])
            for dt in _FLOATS:
                idx = [start + t for t, p in enumerate(g["params"]) if p.dtype == dt]
                if idx:
                    plan = _plan([self._acc[i] for i in idx], [None] * len(idx), 0,
                                 [f"grads[{i}]" for i in idx])
                    self._plans.append((plan, idx))
            start += n

    def _describe(self) -> str:
        return f"every_k={self.every_k}"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise TypeError("MultiSteps.add_param_group: add the group to the wrapped optimizer "
                        "before wrapping it (a new group mid-window would have no "
                        "accumulated grads)")

    @exclusive
    def step(self, grads: Any) -> bool:
        """Accumulate one micro-batch's grads (a list in param order, or a dict by name);
        every every_k-th call, step the wrapped optimizer on the mean. Returns True when the
        wrapped step ran."""
        if self.every_k == 1:
            return bool(self.optimizer.step(grads))
        if grads is None:
            raise TypeError("MultiSteps.step needs the micro-batch's grads (a list in param "
                            "order, or a dict by name)")
        flat = grads_in_param_order(self._base, grads)
        bound = []
        for plan, idx in self._plans:          # every grad checked before anything is written
            sub = [flat[i] for i in idx]
            plan.bind(sub)
            bound.append((plan, idx, sub))
        has = self._has
        for plan, idx, sub in bound:
            if not any(g is not None for g in sub):
                continue
            for t, i in enumerate(idx):
                plan.hp_array[t, 0] = 0.0 if has[i] else 1.0     # the window's first: acc = g
            plan.run(_ACCUMULATE)
            for t, i in enumerate(idx):
                if sub[t] is not None:
                    has[i] = True
        self.count += 1
        if self.count < self.every_k:
            return False
        inner = [a if h else None for a, h in zip(self._acc, has)]
        self.count = 0
        self._has[...] = False
        return bool(self.optimizer.step(inner, grad_scale=float(self.every_k)))

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(),
                "multisteps": {"every_k": self.every_k, "count": self.count,
                               "acc": {i: a.copy() for i, a in enumerate(self._acc)
                                       if self._has[i]}}}

    @exclusive
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint of the same setup; everything is checked before anything
        changes."""
        if not isinstance(state_dict, Mapping) or "optimizer" not in state_dict or \
                not isinstance(state_dict.get("multisteps"), Mapping):
            raise TypeError("state_dict must be a dict with 'optimizer' and 'multisteps', as "
                            "returned by MultiSteps.state_dict()")
        own = state_dict["multisteps"]
        try:
            every_k = _v.positive_int(own["every_k"], "state_dict['multisteps']['every_k']")
            count, acc = own["count"], own["acc"]
        except KeyError as exc:
            raise ValueError(f"state_dict['multisteps'] lacks {exc.args[0]!r}") from None
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or \
                not 0 <= count < every_k:
            raise ValueError(f"state_dict['multisteps']['count'] must be an int in "
                             f"[0, every_k={every_k}), got {count!r}")
        if not isinstance(acc, Mapping) or not set(acc) <= set(range(len(self._acc))):
            got = sorted(acc) if isinstance(acc, Mapping) else type(acc).__name__
            raise ValueError(f"state_dict['multisteps']['acc'] must map param indices "
                             f"0..{len(self._acc) - 1} to accumulated grads, got {got}")
        for i, a in acc.items():
            p = self._acc[i]
            if not isinstance(a, np.ndarray) or a.shape != p.shape or a.dtype != p.dtype:
                raise ValueError(f"state_dict['multisteps']['acc'][{i}] must be a {p.dtype} "
                                 f"array of shape {p.shape}, got "
                                 f"{getattr(a, 'dtype', type(a).__name__)} of shape "
                                 f"{getattr(a, 'shape', '?')}")
        self.optimizer.load_state_dict(state_dict["optimizer"])   # checks, then replaces
        self.every_k, self.count = every_k, int(count)
        self._has[...] = False
        for i, a in acc.items():
            self._acc[i][...] = a
            self._has[i] = True
