"""Hyperparameter checks shared by the optimizer classes and the functional API.

Every message names the argument, the bad value and what would be accepted. All checks run
before any buffer is written, so a rejected call changes nothing.

Every check takes the caller's raw value (any object) and returns it in canonical form.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any


def _real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} "
                        f"({type(value).__name__})")
    return float(value)


def real(value: object, name: str) -> float:
    """Any real number, as a float (a field whose range another field decides)."""
    return _real(value, name)


def finite_nonneg(value: object, name: str) -> float:
    """lr, weight_decay, momentum and friends: a finite float >= 0."""
    v = _real(value, name)
    if not (0.0 <= v < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def nonneg(value: object, name: str, note: str = "") -> float:
    """max_norm, clip_value: a float >= 0, where inf is meaningful (no limit)."""
    v = _real(value, name)
    if not v >= 0.0:    # also NaN
        raise ValueError(f"{name} must be a number >= 0{note}, got {value!r}")
    return v


def positive(value: object, name: str) -> float:
    """eps and friends: a finite float > 0."""
    v = _real(value, name)
    if not (0.0 < v < math.inf):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def positive_or_inf(value: object, name: str, note: str = "") -> float:
    """LAMB's clamp_value: a float > 0, where inf means no bound."""
    v = _real(value, name)
    if not v > 0.0:    # also NaN
        raise ValueError(f"{name} must be a number > 0{note}, got {value!r}")
    return v


def at_least(value: object, name: str, bound: float, note: str = "") -> float:
    """Prodigy's growth_rate (>= 1): a float >= `bound`, where inf is meaningful (no limit)."""
    v = _real(value, name)
    if not v >= bound:    # also NaN
        raise ValueError(f"{name} must be a number >= {bound}{note}, got {value!r}")
    return v


def unit_interval(value: object, name: str) -> float:
    """betas, rho, alpha: a float in [0, 1)."""
    v = _real(value, name)
    if not (0.0 <= v < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return v


def open_unit_interval(value: object, name: str) -> float:
    """Rprop's etaminus: a float in (0, 1)."""
    v = _real(value, name)
    if not (0.0 < v < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return v


def finite_above(value: object, name: str, bound: float) -> float:
    """Rprop's etaplus (> 1) and friends: a finite float strictly above `bound`."""
    v = _real(value, name)
    if not (bound < v < math.inf):
        raise ValueError(f"{name} must be a finite number > {bound}, got {value!r}")
    return v


def ordered_pair(value: object, name: str) -> tuple[float, float]:
    """A (low, high) pair of finite floats >= 0 with low <= high, e.g. Rprop's step_sizes."""
    a, b = pair(value, name)
    lo, hi = finite_nonneg(a, f"{name}[0]"), finite_nonneg(b, f"{name}[1]")
    if lo > hi:
        raise ValueError(f"{name} must be (min, max) with min <= max, got {value!r}")
    return lo, hi


def unit_closed(value: object, name: str) -> float:
    """Adadelta's rho, SGD's dampening: a float in [0, 1]."""
    v = _real(value, name)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def choice(value: object, name: str, options: Sequence[str]) -> str:
    """A string option such as momentum_style: one of `options`."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, "
                         f"got {value!r}")
    return value


def pair(value: Any, name: str) -> tuple[object, object]:
    # Any: whatever the caller passed; unpacking it is the check.
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers, got {value!r}") from None
    return a, b


def group_of(value: Any, name: str, n: int) -> tuple[object, ...]:
    """pair() for n values (a class argument that holds n fields, like AdEMAMix's betas)."""
    if n == 2:
        return pair(value, name)
    try:
        values = tuple(value)
    except TypeError:
        values = ()
    if len(values) != n:
        raise ValueError(f"{name} must be a tuple of {n} numbers, got {value!r}")
    return values


def betas(value: object, name: str = "betas") -> tuple[float, float]:
    b1, b2 = pair(value, name)
    return unit_interval(b1, f"{name}[0]"), unit_interval(b2, f"{name}[1]")


def scalar_state(value: object, name: str) -> float:
    """Per-tensor scalar state (a step-dependent product, a learning rate...) from a
    checkpoint or a functional call: a real number or a 1-element array, as a float."""
    if hasattr(value, "size") and hasattr(value, "item") and value.size == 1:
        value = value.item()
    return _real(value, name)


def flag(value: object, name: str) -> bool:
    if not isinstance(value, (bool, int)) or value not in (0, 1):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def label(what: str, index: int, name: str | None) -> str:
    """How messages name a param or grad: ``params['W']``, or ``params[3]`` when unnamed."""
    return f"{what}[{name!r}]" if name is not None else f"{what}[{index}]"
