"""Learning-rate schedules as pure functions of the step.

Every factory here validates its arguments eagerly and returns a
:class:`Schedule`: a picklable ``step -> float`` callable with no hidden state,
so the same object can drive a fusedoptim optimizer, a torch optimizer, a JAX
training loop or a plot.  ``step`` counts optimizer updates from 0.

Conventions
-----------
* Where the usual formula counts epochs from 1 (``e``), the schedule is written
  with ``e = step + 1`` so that ``schedule(0)`` is always the initial value,
  e.g. exponential decay ``a0 * gamma**(e - 1) == a0 * gamma**step``.
* Decays that reach their end value hold it afterwards (no wrap-around).
* Bad arguments raise ``ValueError`` (``TypeError`` for a non-callable) whose
  message names the argument, the value received and what is accepted.

The classes in :mod:`fusedoptim.lr_scheduler` reuse these formulas, so a
torch-style scheduler and the matching function agree to rounding error.

Example::

    >>> from fusedoptim import schedules
    >>> lr = schedules.warmup_cosine_decay(0.1, warmup_steps=100, total_steps=1000)
    >>> [round(lr(t), 4) for t in (0, 50, 100, 1000)]
    [0.0, 0.05, 0.1, 0.0]
"""

from __future__ import annotations

import math
import numbers
from bisect import bisect_right
from typing import Any, Callable, Iterable, Sequence

import numpy as np

__all__ = [
    "Schedule",
    "constant",
    "step_decay",
    "multistep_decay",
    "exponential_decay",
    "cosine_decay",
    "linear_decay",
    "polynomial_decay",
    "inverse_sqrt",
    "inverse_time_decay",
    "piecewise_constant",
    "linear_warmup",
    "warmup_cosine_decay",
    "cosine_warm_restarts",
    "one_cycle",
    "cyclic",
    "join",
]


# --------------------------------------------------------------------------
# Argument validation (shared with fusedoptim.lr_scheduler)
# --------------------------------------------------------------------------

def _is_int(value: object) -> bool:
    # bool is an int subclass, but True as a step count is always a mistake.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_int(name: str, value: int, minimum: int = 0) -> int:
    if not _is_int(value) or value < minimum:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}")
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def _check_real(name: str, value: float, low: float | None = None, high: float | None = None,
                *, low_open: bool = False, high_open: bool = False) -> float:
    """Check a finite real in an interval; ``None`` bounds are unbounded."""
    ok = _is_real(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is None and high is None:
            what = "a finite real number"
        elif high is None:
            what = f"a real number {'>' if low_open else '>='} {low}"
        elif low is None:
            what = f"a real number {'<' if high_open else '<='} {high}"
        else:
            what = (f"a real number in {'(' if low_open else '['}{low}, "
                    f"{high}{')' if high_open else ']'}")
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)


def _check_bool(name: str, value: bool) -> bool:
    # A flag given as a string or a number ("False", 0.5) would silently read as truthy.
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        accepted = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {accepted}, got {value!r}")
    return value


def _check_milestones(name: str, values: Iterable[int], *, strict: bool) -> list[int]:
    """Non-negative integer step indices, increasing (``strict``) or non-decreasing."""
    try:
        values = list(values)
    except TypeError:
        raise ValueError(
            f"{name} must be a sequence of non-negative integers, got {values!r}"
        ) from None
    for v in values:
        if not _is_int(v) or v < 0:
            raise ValueError(
                f"{name} must contain non-negative integers, got {v!r} in {values!r}")
    for a, b in zip(values, values[1:]):
        if b < a or (strict and b == a):
            order = "strictly increasing" if strict else "sorted (non-decreasing)"
            raise ValueError(f"{name} must be {order}, got {values!r}")
    return [int(v) for v in values]


def _check_step(step: float, name: str = "step") -> None:
    # ``not step >= 0`` also rejects NaN.
    if not _is_real(step) or not step >= 0:
        raise ValueError(f"{name} must be a non-negative number, got {step!r}")


# --------------------------------------------------------------------------
# The callable returned by every factory
# --------------------------------------------------------------------------

class Schedule:
    """A validated, stateless ``step -> value`` function.

    Calling it with a non-negative ``int`` (or ``float``) step returns a Python
    float.  It pickles (unless it wraps a user lambda) and its ``repr`` shows
    the arguments it was built with.
    """

    def __init__(self, name: str, kernel: Callable[..., float], **params: Any) -> None:
        self._name = name
        self._kernel = kernel  # module-level function, so the object pickles
        self._params = params

    def __call__(self, step: float) -> float:
        _check_step(step)
        return float(self._kernel(step, **self._params))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"{self._name}({args})"


# --------------------------------------------------------------------------
# Formula kernels.  Kept module-level (picklable) and written with the same
# operation order as torch.optim.lr_scheduler, so that lr_scheduler classes
# built on them reproduce torch's floats exactly.
# --------------------------------------------------------------------------

def _constant(step: float, value: float) -> float:
    return value


def _step_decay(step: float, init_value: float, step_size: int, gamma: float) -> float:
    # gamma > 0: a real power (typeshed types float ** float as Any)
    value: float = init_value * gamma ** (step // step_size)
    return value


def _multistep_decay(step: float, init_value: float, milestones: Sequence[int],
                     gamma: float) -> float:
    return init_value * gamma ** bisect_right(milestones, step)


def _exponential_decay(step: float, init_value: float, gamma: float, transition_steps: int,
                       staircase: bool) -> float:
    exponent = step / transition_steps
    if staircase:
        exponent = math.floor(exponent)
    value: float = init_value * gamma ** exponent      # gamma > 0: a real power
    return value


def _cosine(step: float, decay_steps: float, init_value: float, end_value: float) -> float:
    """Cosine annealing, *not* clamped: past decay_steps it rises again, as torch's
    CosineAnnealingLR does.  The public cosine_decay clamps."""
    return end_value + (init_value - end_value) * (
        1 + math.cos(math.pi * step / decay_steps)) / 2


def _cosine_decay(step: float, init_value: float, decay_steps: int, end_value: float) -> float:
    return _cosine(min(step, decay_steps), decay_steps, init_value, end_value)


def _linear(step: float, steps: int, init_value: float, end_value: float) -> float:
    if step >= steps:  # hold exactly end_value (also for a zero-length ramp)
        return end_value
    return init_value + (end_value - init_value) * min(step, steps) / steps


def _linear_decay(step: float, init_value: float, decay_steps: int, end_value: float) -> float:
    return _linear(step, decay_steps, init_value, end_value)


def _polynomial_decay(step: float, init_value: float, decay_steps: int, end_value: float,
                      power: float) -> float:
    frac = 1.0 - min(step, decay_steps) / decay_steps
    value: float = (init_value - end_value) * frac ** power + end_value     # frac >= 0
    return value


def _inverse_sqrt(step: float, init_value: float, timescale: float) -> float:
    return init_value / math.sqrt(1.0 + step / timescale)


def _inverse_time_decay(step: float, init_value: float, decay_rate: float) -> float:
    epoch = step + 1  # the notes count epochs from 1
    return init_value * (1 + decay_rate) / (1 + decay_rate * epoch)


def _piecewise_constant(step: float, boundaries: Sequence[int],
                        values: Sequence[float]) -> float:
    return values[bisect_right(boundaries, step)]


def _linear_warmup(step: float, peak_value: float, warmup_steps: int,
                   init_value: float) -> float:
    return _linear(step, warmup_steps, init_value, peak_value)


def _warmup_cosine_decay(step: float, peak_value: float, warmup_steps: int, total_steps: int,
                         init_value: float, end_value: float) -> float:
    if step < warmup_steps:
        return _linear(step, warmup_steps, init_value, peak_value)
    return _cosine_decay(step - warmup_steps, peak_value, total_steps - warmup_steps,
                         end_value)


def _sgdr_position(step: float, T_0: int, T_mult: int) -> tuple[float, int]:
    """Return (T_cur, T_i): steps into the current SGDR cycle and its length.

    Walks the cycles with exact arithmetic; torch's closed form via math.log
    can land one cycle short at cycle boundaries (e.g. T_0=1, T_mult=3, 121).
    """
    if T_mult == 1:
        return step % T_0, T_0
    T_cur, T_i = step, T_0
    while T_cur >= T_i:
        T_cur -= T_i
        T_i *= T_mult
    return T_cur, T_i


def _cosine_warm_restarts(step: float, init_value: float, T_0: int, T_mult: int,
                          end_value: float) -> float:
    T_cur, T_i = _sgdr_position(step, T_0, T_mult)
    return _cosine(T_cur, T_i, init_value, end_value)


def _anneal_cos(start: float, end: float, pct: float) -> float:
    cos_out = math.cos(math.pi * pct) + 1
    return end + (start - end) / 2.0 * cos_out


def _anneal_linear(start: float, end: float, pct: float) -> float:
    return (end - start) * pct + start


_ANNEAL = {"cos": _anneal_cos, "linear": _anneal_linear}


def _one_cycle(step: float, total_steps: int, pct_start: float, anneal_strategy: str,
               three_phase: bool, start: float, peak: float, end: float) -> float:
    """1cycle with torch's phase boundaries, unclamped (torch allows one step
    past total_steps - 1).  Momentum uses it with (start, peak, end) =
    (max_momentum, base_momentum, max_momentum)."""
    up_end = float(pct_start * total_steps) - 1
    phases: tuple[tuple[float, float, float], ...]
    if three_phase:
        phases = ((up_end, start, peak),
                  (float(2 * pct_start * total_steps) - 2, peak, start),
                  (total_steps - 1, start, end))
    else:
        phases = ((up_end, start, peak), (total_steps - 1, peak, end))
    anneal = _ANNEAL[anneal_strategy]
    phase_start = 0.0
    last = len(phases) - 1
    for i, (phase_end, a, b) in enumerate(phases):
        if step <= phase_end or i == last:
            span = phase_end - phase_start
            # A zero-length phase is already complete (torch divides by zero here).
            pct = (step - phase_start) / span if span != 0 else 1.0
            return anneal(a, b, pct)
        phase_start = phase_end
    raise AssertionError("unreachable: the last phase always matches")


def _one_cycle_clamped(step: float, max_value: float, total_steps: int, pct_start: float,
                       anneal_strategy: str, div_factor: float, final_div_factor: float,
                       three_phase: bool) -> float:
    initial = max_value / div_factor
    return _one_cycle(min(step, total_steps - 1), total_steps, pct_start,
                      anneal_strategy, three_phase, initial, max_value,
                      initial / final_div_factor)


def _cyclic(step: float, base_value: float, max_value: float, step_size_up: float,
            step_size_down: float, mode: str, gamma: float,
            scale_fn: Callable[[float], float] | None, scale_mode: str) -> float:
    total_size = step_size_up + step_size_down
    step_ratio = step_size_up / total_size
    cycle = math.floor(1 + step / total_size)
    x = 1.0 + step / total_size - cycle  # position inside the cycle, in [0, 1)
    if x <= step_ratio:
        scale_factor = x / step_ratio
    else:
        scale_factor = (x - 1) / (step_ratio - 1)
    if scale_fn is not None:
        scale = scale_fn(cycle if scale_mode == "cycle" else step)
    elif mode == "triangular":
        scale = 1.0
    elif mode == "triangular2":
        scale = 1 / 2.0 ** (cycle - 1)
    else:  # exp_range shrinks the amplitude every step, not every cycle
        scale = gamma ** step
    height = (max_value - base_value) * scale_factor
    return base_value + height * scale


def _join(step: float, schedules: Sequence[Callable[[float], float]],
          boundaries: Sequence[int]) -> float:
    i = bisect_right(boundaries, step)
    return schedules[i](step - boundaries[i - 1] if i else step)


# --------------------------------------------------------------------------
# Public factories
# --------------------------------------------------------------------------

def constant(value: float) -> Schedule:
    """``value`` at every step."""
    return Schedule("constant", _constant, value=_check_real("value", value))


def step_decay(init_value: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """Multiply by ``gamma`` every ``step_size`` steps.

    ``a_t = init_value * gamma ** floor(t / step_size)``.  The classic ResNet
    recipe (He et al., 2016, arXiv:1512.03385) is ``step_size=30, gamma=0.1``
    with epochs as steps: x0.1 at epochs 30, 60, 90.
    """
    return Schedule("step_decay", _step_decay,
                    init_value=_check_real("init_value", init_value),
                    step_size=_check_int("step_size", step_size, 1),
                    gamma=_check_real("gamma", gamma, 0, low_open=True))


def multistep_decay(init_value: float, milestones: Sequence[int],
                    gamma: float = 0.1) -> Schedule:
    """Multiply by ``gamma`` at each milestone.

    ``a_t = init_value * gamma ** (number of milestones <= t)``.  Milestones are
    sorted step indices; a repeated milestone applies ``gamma`` once per
    occurrence (as torch's MultiStepLR does).
    """
    return Schedule("multistep_decay", _multistep_decay,
                    init_value=_check_real("init_value", init_value),
                    milestones=tuple(_check_milestones("milestones", milestones,
                                                       strict=False)),
                    gamma=_check_real("gamma", gamma, 0, low_open=True))


def exponential_decay(init_value: float, gamma: float, transition_steps: int = 1,
                      staircase: bool = False) -> Schedule:
    """Exponential decay ``a_t = init_value * gamma ** (t / transition_steps)``.

    With the notes' epochs counted from 1 this is ``a0 * gamma ** (e - 1)``.
    ``staircase=True`` floors the exponent, decaying in discrete jumps.
    """
    return Schedule("exponential_decay", _exponential_decay,
                    init_value=_check_real("init_value", init_value),
                    gamma=_check_real("gamma", gamma, 0, low_open=True),
                    transition_steps=_check_int("transition_steps", transition_steps, 1),
                    staircase=_check_bool("staircase", staircase))


def cosine_decay(init_value: float, decay_steps: int, end_value: float = 0.0) -> Schedule:
    """Half-cosine from ``init_value`` down to the floor ``end_value``.

    ``a_t = end + (init - end) * (1 + cos(pi * t / T)) / 2`` for ``t <= T``,
    then ``end``.  With ``end = 0`` this is the notes' ``a0/2 (1 + cos(t pi/T))``.
    Loshchilov & Hutter, "SGDR", 2017 (arXiv:1608.03983).
    """
    return Schedule("cosine_decay", _cosine_decay,
                    init_value=_check_real("init_value", init_value),
                    decay_steps=_check_int("decay_steps", decay_steps, 1),
                    end_value=_check_real("end_value", end_value))


def linear_decay(init_value: float, decay_steps: int, end_value: float = 0.0) -> Schedule:
    """Straight line from ``init_value`` to ``end_value`` over ``decay_steps``, then hold.

    ``a_t = init + (end - init) * min(t, T) / T``; with ``end = 0`` this is the
    notes' ``a0 * (1 - t/T)``.  ``end_value > init_value`` gives a ramp up.
    """
    return Schedule("linear_decay", _linear_decay,
                    init_value=_check_real("init_value", init_value),
                    decay_steps=_check_int("decay_steps", decay_steps, 1),
                    end_value=_check_real("end_value", end_value))


def polynomial_decay(init_value: float, decay_steps: int, end_value: float = 0.0,
                     power: float = 1.0) -> Schedule:
    """``a_t = (init - end) * (1 - min(t, T) / T) ** power + end``.

    ``power=1`` is linear decay; ``power=0.9`` is the "poly" policy of DeepLab
    (Chen et al., 2017, arXiv:1606.00915).
    """
    return Schedule("polynomial_decay", _polynomial_decay,
                    init_value=_check_real("init_value", init_value),
                    decay_steps=_check_int("decay_steps", decay_steps, 1),
                    end_value=_check_real("end_value", end_value),
                    power=_check_real("power", power, 0))


def inverse_sqrt(init_value: float, timescale: float = 1.0) -> Schedule:
    """Inverse square-root decay ``a_t = init_value / sqrt(1 + t / timescale)``.

    With ``timescale=1`` this is the notes' ``a0 / sqrt(e)`` for epochs counted
    from 1; a larger timescale keeps the rate near ``init_value`` longer.  Used
    after warm-up by the Transformer (Vaswani et al., 2017, arXiv:1706.03762).
    """
    return Schedule("inverse_sqrt", _inverse_sqrt,
                    init_value=_check_real("init_value", init_value),
                    timescale=_check_real("timescale", timescale, 0, low_open=True))


def inverse_time_decay(init_value: float, decay_rate: float) -> Schedule:
    """Time-based decay ``a_t = a0 * (1 + delta) / (1 + delta * e)`` with ``e = t + 1``.

    Equivalent to ``a0 / (1 + delta * t / (1 + delta))``: the ``1/t`` family
    of Robbins-Monro step sizes (see Bottou, "Stochastic Gradient Descent
    Tricks", 2012).  ``decay_rate=0`` is constant.
    """
    return Schedule("inverse_time_decay", _inverse_time_decay,
                    init_value=_check_real("init_value", init_value),
                    decay_rate=_check_real("decay_rate", decay_rate, 0))


def piecewise_constant(boundaries: Sequence[int], values: Sequence[float]) -> Schedule:
    """``values[i]`` for ``boundaries[i-1] <= t < boundaries[i]``.

    ``values`` has one more entry than ``boundaries``; the value changes *at*
    each boundary step, like torch's milestones.
    """
    boundaries = _check_milestones("boundaries", boundaries, strict=True)
    try:
        values = list(values)
    except TypeError:
        raise ValueError(f"values must be a sequence of numbers, got {values!r}") from None
    if len(values) != len(boundaries) + 1:
        raise ValueError(
            f"values must have len(boundaries) + 1 = {len(boundaries) + 1} entries, "
            f"got {len(values)}: {values!r}")
    values = [_check_real(f"values[{i}]", v) for i, v in enumerate(values)]
    return Schedule("piecewise_constant", _piecewise_constant,
                    boundaries=tuple(boundaries), values=tuple(values))


def linear_warmup(peak_value: float, warmup_steps: int, init_value: float = 0.0) -> Schedule:
    """Linear ramp from ``init_value`` (default 0) to ``peak_value``, then hold.

    ``a_t = init + (peak - init) * min(t, w) / w``; ``warmup_steps=0`` means no
    warm-up.  Goyal et al., "Accurate, Large Minibatch SGD", 2017
    (arXiv:1706.02677).
    """
    return Schedule("linear_warmup", _linear_warmup,
                    peak_value=_check_real("peak_value", peak_value),
                    warmup_steps=_check_int("warmup_steps", warmup_steps, 0),
                    init_value=_check_real("init_value", init_value))


def warmup_cosine_decay(peak_value: float, warmup_steps: int, total_steps: int,
                        init_value: float = 0.0, end_value: float = 0.0) -> Schedule:
    """Linear warm-up to ``peak_value``, then cosine decay to ``end_value``.

    ``total_steps`` includes the warm-up: the cosine runs over
    ``total_steps - warmup_steps`` steps.  Goyal et al. 2017 + SGDR 2017.
    """
    warmup_steps = _check_int("warmup_steps", warmup_steps, 0)
    total_steps = _check_int("total_steps", total_steps, 1)
    if total_steps <= warmup_steps:
        raise ValueError(
            f"total_steps must be greater than warmup_steps={warmup_steps}, "
            f"got {total_steps}")
    return Schedule("warmup_cosine_decay", _warmup_cosine_decay,
                    peak_value=_check_real("peak_value", peak_value),
                    warmup_steps=warmup_steps, total_steps=total_steps,
                    init_value=_check_real("init_value", init_value),
                    end_value=_check_real("end_value", end_value))


def cosine_warm_restarts(init_value: float, T_0: int, T_mult: int = 1,
                         end_value: float = 0.0) -> Schedule:
    """SGDR: cosine decay restarted every cycle, cycles growing by ``T_mult``.

    ``a_t = end + (init - end) * (1 + cos(pi * T_cur / T_i)) / 2`` where cycle
    ``i`` lasts ``T_i = T_0 * T_mult**i`` steps and ``T_cur`` counts steps since
    the last restart.  Loshchilov & Hutter, 2017 (arXiv:1608.03983).
    """
    return Schedule("cosine_warm_restarts", _cosine_warm_restarts,
                    init_value=_check_real("init_value", init_value),
                    T_0=_check_int("T_0", T_0, 1),
                    T_mult=_check_int("T_mult", T_mult, 1),
                    end_value=_check_real("end_value", end_value))


def _check_one_cycle(total_steps: int, pct_start: float, anneal_strategy: str,
                     three_phase: bool) -> tuple[int, float]:
    total_steps = _check_int("total_steps", total_steps, 1)
    pct_start = _check_real("pct_start", pct_start, 0, 1)
    if _check_bool("three_phase", three_phase) and pct_start > 0.5:
        raise ValueError(
            "pct_start must be <= 0.5 when three_phase=True (the ramp up and the "
            f"ramp down each take pct_start of the steps), got {pct_start!r}")
    _check_choice("anneal_strategy", anneal_strategy, ("cos", "linear"))
    return total_steps, pct_start


def one_cycle(max_value: float, total_steps: int, pct_start: float = 0.3,
              anneal_strategy: str = "cos", div_factor: float = 25.0,
              final_div_factor: float = 1e4, three_phase: bool = False) -> Schedule:
    """The 1cycle policy (Smith & Topin, "Super-Convergence", 2019, arXiv:1708.07120).

    Anneals from ``max_value / div_factor`` up to ``max_value`` over the first
    ``pct_start`` of the steps, then down to ``max_value / div_factor /
    final_div_factor`` at step ``total_steps - 1`` (held afterwards).
    ``three_phase=True`` comes back down to the initial value symmetrically
    before the final annihilation.  Annealing is ``anneal_strategy`` 'cos'
    (``end + (start - end) (1 + cos(pi p)) / 2``) or 'linear'.  Phase boundaries
    are those of torch's OneCycleLR.
    """
    total_steps, pct_start = _check_one_cycle(total_steps, pct_start, anneal_strategy,
                                              three_phase)
    return Schedule("one_cycle", _one_cycle_clamped,
                    max_value=_check_real("max_value", max_value),
                    total_steps=total_steps, pct_start=pct_start,
                    anneal_strategy=anneal_strategy,
                    div_factor=_check_real("div_factor", div_factor, 0, low_open=True),
                    final_div_factor=_check_real("final_div_factor", final_div_factor, 0,
                                                 low_open=True),
                    three_phase=bool(three_phase))


def cyclic(base_value: float, max_value: float, step_size_up: float = 2000,
           step_size_down: float | None = None, mode: str = "triangular",
           gamma: float = 1.0, scale_fn: Callable[[float], float] | None = None,
           scale_mode: str = "cycle") -> Schedule:
    """Cyclical learning rate (Smith, 2017, arXiv:1506.01186).

    Goes linearly from ``base_value`` to ``max_value`` in ``step_size_up``
    steps and back in ``step_size_down`` (default: same), forever.  The
    amplitude is scaled per cycle ``c`` (1-based) by ``mode``:
    'triangular' 1, 'triangular2' ``1 / 2**(c - 1)``, 'exp_range'
    ``gamma**t`` (per step).  A custom ``scale_fn`` overrides ``mode`` and is
    called with the cycle number or the step, per ``scale_mode``.
    ``max_value < base_value`` gives the inverted cycle used for momentum.
    """
    step_size_up = _check_real("step_size_up", step_size_up, 0, low_open=True)
    step_size_down = (step_size_up if step_size_down is None
                      else _check_real("step_size_down", step_size_down, 0))
    if scale_fn is None:
        _check_choice("mode", mode, ("triangular", "triangular2", "exp_range"))
    elif not callable(scale_fn):
        raise TypeError(f"scale_fn must be callable or None, got {scale_fn!r}")
    return Schedule("cyclic", _cyclic,
                    base_value=_check_real("base_value", base_value),
                    max_value=_check_real("max_value", max_value),
                    step_size_up=step_size_up, step_size_down=step_size_down,
                    mode=mode, gamma=_check_real("gamma", gamma, 0, low_open=True),
                    scale_fn=scale_fn,
                    scale_mode=_check_choice("scale_mode", scale_mode,
                                             ("cycle", "iterations")))


def join(schedules: Sequence[Callable[[int], float]], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules[0]`` until ``boundaries[0]``, then ``schedules[1]``, ...

    Each schedule sees the step relative to its own start:
    ``schedules[i](t - boundaries[i-1])``.
    """
    if not isinstance(schedules, (list, tuple)):
        raise TypeError(f"schedules must be a list of schedules (callables of the step), got "
                        f"{schedules!r}")
    schedules = list(schedules)
    if not schedules:
        raise ValueError("schedules must contain at least one schedule, got []")
    for i, s in enumerate(schedules):
        if not callable(s):
            raise TypeError(f"schedules[{i}] must be callable, got {s!r}")
    boundaries = _check_milestones("boundaries", boundaries, strict=True)
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"boundaries must have len(schedules) - 1 = {len(schedules) - 1} entries, "
            f"got {len(boundaries)}: {boundaries!r}")
    return Schedule("join", _join, schedules=tuple(schedules), boundaries=tuple(boundaries))
