"""The non-finite gate (``skip_nonfinite``) and gradient scaling (``grad_scale``) of a step.

With ``skip_nonfinite``, a step whose grads hold a NaN or Inf writes nothing. Every group's
grads are checked before anything is written, stopping at the first non-finite work unit:
the first group that writes is checked inside its own update pass (:func:`gated_group`,
:func:`apply_gated`), the others in a read-only pass before it (:func:`grads_finite`).
``grad_scale`` is folded into every group's kernel scalar 0, the grad's multiplier
(:func:`inv_grad_scale` checks it). See :class:`fusedoptim.Optimizer` for the contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import _kernels
from . import _validation as _v
from ._precision import compute_dtype

if TYPE_CHECKING:
    from ._typing import FloatArray, ParamGroup
    from .optimizer import Optimizer, _GroupCache

NONFINITE = _kernels.REDUCE_IDS["nonfinite"]


def gated_group(caches: Sequence[_GroupCache], pending: Sequence[int], in_pass: bool) -> int:
    """The group whose finiteness check runs inside its update pass, or -1.

    A separate check pass costs a read of the grads plus a second fork/join and Python
    call (on a 1e6 AdamW step at 2 threads with a passive OpenMP wait policy: +41-64%,
    against +15-29% in one region). So the first group that writes gets its check in the
    same parallel region, just before the update, and only the groups after it are
    checked up front. Not on a step that creates state (no state may appear on a skipped
    step), nor when the backend's step does not go through the plan's passes (`in_pass`
    False: the NumPy reference)."""
    if not in_pass or any(pending):
        return -1
    for gi, cache in enumerate(caches):
        assert cache.plan is not None       # step() bound every group's plan
        if cache.plan.nactive and cache.plan.total:
            return gi
    return -1


def grads_finite(caches: Sequence[_GroupCache], but: int = -1) -> bool:
    """True when every bound grad of every group (except group `but`) is finite: the grad
    column of each group's plan, read once, stopping at the first non-finite work unit."""
    for gi, cache in enumerate(caches):
        assert cache.plan is not None       # step() bound every group's plan
        if gi != but and cache.plan.nactive and \
                cache.plan.reduce(NONFINITE, 1, True)[1][0] != 0.0:
            return False
    return True


def apply_gated(opt: Optimizer, gi: int, plan: _kernels.Plan, cache: _GroupCache,
                grads: list[FloatArray | None], fresh: dict[int, tuple[str, ...]] | None,
                inv_scale: float | None) -> bool:
    """Apply group `gi`'s step with its finiteness check armed in the plan's first pass.
    The other groups were checked before, so a veto leaves every buffer untouched and only
    the step counts and scalar state to put back. Returns False when the check tripped."""
    plan.arm_gate(NONFINITE)
    try:
        opt._backend.apply(opt, gi, plan, cache, grads, fresh, inv_scale)
    finally:
        outcome = plan.disarm_gate()
    if outcome == "tripped":
        plan.undo_advance()
        return False
    if outcome == "unused":
        raise RuntimeError(f"{type(opt).__name__}: the skip_nonfinite check did not "
                           f"run (a _run override that drives no pass?)")
    return True


def inv_grad_scale(grad_scale: object, param_groups: Sequence[ParamGroup]) -> float:
    """1 / grad_scale, after checking that it is usable in every group's dtype."""
    s = _v.scalar_state(grad_scale, "grad_scale")    # a number or a 1-element array
    s = _v.positive(s, "grad_scale")
    inv = 1.0 / s
    for g in param_groups:
        # The kernels compute in float64 for float64 params, else in float32.
        info = np.finfo(compute_dtype(g["params"][0].dtype))
        if not float(info.tiny) <= inv <= float(info.max):
            raise ValueError(f"grad_scale={grad_scale!r} is out of range for "
                             f"{g['params'][0].dtype} params: 1/grad_scale must be a normal "
                             f"{info.dtype} number, i.e. grad_scale in "
                             f"[{1 / float(info.max):.3g}, {1 / float(info.tiny):.3g}]")
    return inv
