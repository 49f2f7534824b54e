"""Fused gradient utilities: clip_grad_norm_, clip_grad_value_, global_norm, all_finite.

Each takes many arrays at once (a list or tuple, a dict whose values are used, or one array)
and makes one GIL-free pass over all of them per dtype on the optimizers' parallel driver:
arrays of one dtype are laid end to end and cut into the same fixed work units. Norms are
accumulated in double, and partial sums are combined in a fixed order, so every result is
bitwise identical for any thread count. float32, float64, bfloat16 and float16 arrays may be
mixed; each dtype's partial result is then combined with the others' in that order.
Half-precision arrays are read as they are (converted in registers, no copy); a clip writes
them back rounded to nearest even.

``None`` entries are skipped, as torch skips parameters without a gradient. Every array is
checked (ndarray, a float dtype above, C-contiguous, aligned; writeable and not sharing memory with
another where the call writes) before anything is read or written.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

import numpy as np

from . import _kernels
from . import _validation as v
from ._precision import BFLOAT16

if TYPE_CHECKING:
    from ._typing import ArraysArg, FloatArray

_SUMSQ = _kernels.REDUCE_IDS["sumsq"]
_SUMABS = _kernels.REDUCE_IDS["sumabs"]
_SUMPOW = _kernels.REDUCE_IDS["sumpow"]
_MAXABS = _kernels.REDUCE_IDS["maxabs"]
_NONFINITE = _kernels.REDUCE_IDS["nonfinite"]
_SCALE = _kernels.KERNEL_IDS["scale"]
_CLAMP = _kernels.KERNEL_IDS["clamp"]

#: the order in which arrays of mixed dtypes are reduced, one pass per dtype
DTYPE_ORDER = (np.dtype(np.float32), np.dtype(np.float64), BFLOAT16, np.dtype(np.float16))

# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing max_norm by it.
CLIP_EPS = 1e-6


def _arrays(arrays: ArraysArg, name: str,
            writeable: bool) -> tuple[list[FloatArray], int]:
    """The user's arrays as a list (None entries dropped), validated; and their dtype count."""
    keys: list[str] | None = None
    items: list[FloatArray | None]
    if isinstance(arrays, np.ndarray):
        items = [arrays]
    elif isinstance(arrays, dict):
        keys, items = list(arrays.keys()), list(arrays.values())
    elif isinstance(arrays, (list, tuple)):
        items = list(arrays)
    else:
        raise TypeError(f"{name} must be a list or tuple of arrays, a dict of them, or one "
                        f"ndarray; got {type(arrays).__name__}")
    return _kernels.check_arrays(items, name, keys, writeable)


def _plans(items: list[FloatArray], n64: int) -> list[_kernels.Plan]:
    """One plan per dtype present, in the fixed order of DTYPE_ORDER (so a result combined
    over dtypes does not depend on the arrays' order), every tensor active, two scalar
    columns."""
    if n64 == len(items) or all(a.dtype == items[0].dtype for a in items):
        groups = [items] if items else []
    else:
        groups = [g for g in ([a for a in items if a.dtype == dt] for dt in DTYPE_ORDER) if g]
    plans = []
    for group in groups:
        plan = _kernels.Plan(group, [None] * len(group), 0, 2, None)
        plan.active_array[...] = 1
        plans.append(plan)
    return plans


def _norm_type(norm_type: object) -> float:
    if isinstance(norm_type, str):       # torch takes float(norm_type): "inf" works there too
        try:
            norm_type = float(norm_type)
        except ValueError:
            raise ValueError(f"norm_type must be a number > 0 or inf, got {norm_type!r}") \
                from None
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type must be a number > 0 or inf, got {norm_type!r} "
                        f"({type(norm_type).__name__})")
    p = float(norm_type)
    if not p > 0.0:      # also NaN
        raise ValueError(f"norm_type must be a number > 0 or inf (e.g. 2.0, 1.0, "
                         f"float('inf')), got {norm_type!r}")
    return p


def _total_norm(plans: list[_kernels.Plan], p: float) -> float:
    """The p-norm of all arrays of all plans, as if concatenated, in double."""
    if p == math.inf:
        total = 0.0
        for plan in plans:
            m = plan.reduce(_MAXABS)[1][0]
            total = m if (m > total or m != m) else total
        return total
    if p == 2.0:
        rid = _SUMSQ
    elif p == 1.0:
        rid = _SUMABS
    else:
        rid = _SUMPOW
    acc = 0.0
    for plan in plans:
        plan.hp_array[:, 0] = p
        acc += plan.reduce(rid)[1][0]
    if p == 1.0:
        return acc
    if p == 2.0:
        return math.sqrt(acc)
    norm: float = acc ** (1.0 / p)     # a real root: acc >= 0 (typeshed says Any)
    return norm


def global_norm(arrays: ArraysArg) -> float:
    """The L2 norm of all arrays together, as if concatenated: ``sqrt(sum of x^2)``.

    Accumulated in double, returned as a Python float (NaN/Inf when an element is). Read only:
    the arrays need not be writeable.
    """
    items, n64 = _arrays(arrays, "arrays", False)
    return _total_norm(_plans(items, n64), 2.0)


def all_finite(arrays: ArraysArg) -> bool:
    """True when no element of any array is NaN or +-Inf.

    One read-only pass that stops early: once a work unit finds a non-finite value, the
    units not yet started are skipped. The answer is the same for any thread count.
    """
    items, n64 = _arrays(arrays, "arrays", False)
    for plan in _plans(items, n64):
        if plan.reduce(_NONFINITE, 0, True)[1][0] != 0.0:
            return False
    return True


def clip_grad_norm_(grads: ArraysArg, max_norm: float, norm_type: float | str = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    """Scale all grads in place so that their total norm is at most ``max_norm``.

    Semantics of ``torch.nn.utils.clip_grad_norm_``, on the arrays themselves:

        total = norm_type-norm of all grads together (as if concatenated)
        coef  = min(max_norm / (total + 1e-6), 1)
        grads *= coef                                  (in place; skipped when coef == 1)

    norm_type may be any number > 0 or ``inf`` (the largest ``|x|``, NaN if any is NaN).
    ``max_norm=inf`` only measures. When ``total`` is NaN or Inf, torch's arithmetic is kept:
    an Inf norm gives coef 0 (Inf elements become NaN), a NaN norm makes every grad NaN. With
    ``error_if_nonfinite=True`` that case raises RuntimeError instead, before writing anything.

    Each array's coefficient is ``coef`` rounded to its dtype, as torch multiplies by a
    tensor of the grads' dtype. Returns ``total`` as a Python float, accumulated in double
    (torch returns a tensor accumulated in the grads' dtype).
    """
    items, n64 = _arrays(grads, "grads", True)
    return clip_planned(_plans(items, n64), max_norm, norm_type, error_if_nonfinite)


def clip_planned(plans: list[_kernels.Plan], max_norm: float, norm_type: float | str = 2.0,
                 error_if_nonfinite: bool = False) -> float:
    """clip_grad_norm_ over grads already checked and planned (``_plans``): what a caller
    that keeps the plans of the same grads across steps (fusedoptim.torch) runs."""
    p = _norm_type(norm_type)
    max_norm_f = v.nonneg(max_norm, "max_norm", " (inf only measures the norm)")
    error_if_nonfinite = v.flag(error_if_nonfinite, "error_if_nonfinite")
    total = _total_norm(plans, p)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {p} of the gradients is non-finite "
                           f"({total}), so they cannot be clipped; no gradient was changed. "
                           f"Check the gradients with fusedoptim.all_finite, or pass "
                           f"error_if_nonfinite=False to scale them by the non-finite norm as "
                           f"torch does")
    coef = max_norm_f / (total + CLIP_EPS)
    # coef >= 1 leaves every value as it is (x * 1 == x), so that pass is skipped; a NaN
    # coef is applied, as torch's clamp(coef, max=1) keeps NaN.
    if not coef >= 1.0:
        for plan in plans:
            plan.hp_array[:, 0] = coef
            plan.run(_SCALE)
    return total


def clip_grad_value_(grads: ArraysArg, clip_value: float) -> None:
    """Clamp every grad element into ``[-clip_value, clip_value]``, in place (NaN stays NaN).

    As ``torch.nn.utils.clip_grad_value_``; the bounds are rounded to each array's dtype.
    clip_value must be >= 0 (``inf`` changes nothing). Returns None.
    """
    c = v.nonneg(clip_value, "clip_value", " (inf clips nothing)")
    items, n64 = _arrays(grads, "grads", True)
    if c == math.inf:
        return None
    for plan in _plans(items, n64):
        plan.hp_array[:, 0] = -c
        plan.hp_array[:, 1] = c
        plan.run(_CLAMP)
    return None
