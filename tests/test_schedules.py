"""fusedoptim.schedules: each function against its closed form from the notes.

The notes count epochs from 1 (``e``); schedules count steps from 0, so
``e = t + 1``.  Expected values are computed here independently, in the notes'
algebraic form, which differs from the implementation's operation order.
Tolerance: rtol 1e-12 plus an absolute 8 ulp of the schedule's scale, because
two algebraic forms of a sum of terms of size ``a0`` can differ by a few
ulp(a0) where the value itself approaches 0.
"""

import math
import pickle

import numpy as np
import pytest

from fusedoptim import schedules as S

T_RANGE = range(0, 400)


def assert_formula(schedule, formula, scale, steps=T_RANGE):
    got = np.array([schedule(t) for t in steps])
    expected = np.array([formula(t) for t in steps])
    np.testing.assert_allclose(got, expected, rtol=1e-12,
                               atol=8 * np.finfo(float).eps * abs(scale))
    return got


@pytest.fixture(params=range(4))
def rng(request):
    return np.random.default_rng(request.param)


def test_constant():
    assert_formula(S.constant(0.3), lambda t: 0.3, 0.3)


def test_step_decay_x01_at_30_60_90(rng):
    """The notes' recipe: x0.1 at epochs 30, 60 and 90."""
    a0 = float(rng.uniform(0.01, 1))
    got = assert_formula(S.multistep_decay(a0, [30, 60, 90], 0.1),
                         lambda t: a0 * 0.1 ** sum(t >= m for m in (30, 60, 90)), a0)
    assert got[29] == a0 and got[30] == pytest.approx(a0 / 10, rel=1e-15)
    assert_formula(S.step_decay(a0, 30, 0.1), lambda t: a0 * 0.1 ** (t // 30), a0)


def test_step_decay_random(rng):
    a0, k, gamma = float(rng.uniform(0.01, 1)), int(rng.integers(1, 60)), float(rng.uniform(0.1, 1))
    assert_formula(S.step_decay(a0, k, gamma), lambda t: a0 * gamma ** math.floor(t / k), a0)


def test_multistep_repeated_milestone_applies_gamma_twice():
    f = S.multistep_decay(1.0, [5, 5, 9], 0.5)
    assert [f(4), f(5), f(9)] == [1.0, 0.25, 0.125]


def test_exponential_decay(rng):
    """a0 * gamma^(e-1), with e = t + 1."""
    a0, gamma = float(rng.uniform(0.01, 1)), float(rng.uniform(0.95, 1))
    assert_formula(S.exponential_decay(a0, gamma), lambda t: a0 * gamma ** ((t + 1) - 1), a0)
    k = int(rng.integers(2, 30))
    assert_formula(S.exponential_decay(a0, gamma, transition_steps=k),
                   lambda t: a0 * gamma ** (t / k), a0)
    assert_formula(S.exponential_decay(a0, gamma, transition_steps=k, staircase=True),
                   lambda t: a0 * gamma ** (t // k), a0)


def test_cosine_decay(rng):
    """a0/2 * (1 + cos(t pi / T)) until T, then held; with a floor."""
    a0, T = float(rng.uniform(0.01, 1)), int(rng.integers(1, 350))
    assert_formula(S.cosine_decay(a0, T),
                   lambda t: a0 / 2 * (1 + math.cos(min(t, T) * math.pi / T)), a0)
    floor = a0 * float(rng.uniform(0, 0.5))
    got = assert_formula(
        S.cosine_decay(a0, T, end_value=floor),
        lambda t: floor + (a0 - floor) / 2 * (1 + math.cos(min(t, T) * math.pi / T)), a0)
    assert got.min() == pytest.approx(floor, rel=1e-15) and np.ptp(got[T:]) == 0


def test_linear_decay(rng):
    """a0 * (1 - t/T), held at the end value."""
    a0, T = float(rng.uniform(0.01, 1)), int(rng.integers(1, 350))
    got = assert_formula(S.linear_decay(a0, T), lambda t: a0 * (1 - min(t, T) / T), a0)
    assert (got[T:] == 0).all()
    end = float(rng.uniform(0, 2)) * a0  # also a ramp up when end > a0
    got = assert_formula(S.linear_decay(a0, T, end),
                         lambda t: a0 + (end - a0) * min(t, T) / T, a0 + end)
    assert (got[T:] == end).all()


def test_polynomial_decay(rng):
    a0, T, p = float(rng.uniform(0.01, 1)), int(rng.integers(1, 350)), float(rng.uniform(0.2, 4))
    end = float(rng.choice([0.0, a0 / 10]))
    assert_formula(S.polynomial_decay(a0, T, end, p),
                   lambda t: (a0 - end) * (1 - min(t, T) / T) ** p + end, a0)


def test_inverse_sqrt(rng):
    """a0 / sqrt(e), with e = t + 1; a timescale stretches it."""
    a0 = float(rng.uniform(0.01, 1))
    assert_formula(S.inverse_sqrt(a0), lambda t: a0 / math.sqrt(t + 1), a0)
    tau = float(rng.uniform(1, 100))
    assert_formula(S.inverse_sqrt(a0, tau), lambda t: a0 * math.sqrt(tau / (tau + t)), a0)


def test_inverse_time_decay(rng):
    """Time-based decay a0 (1 + delta) / (1 + delta e), with e = t + 1."""
    a0, delta = float(rng.uniform(0.01, 1)), float(rng.uniform(0, 0.5))
    got = assert_formula(S.inverse_time_decay(a0, delta),
                         lambda t: a0 * (1 + delta) / (1 + delta * (t + 1)), a0)
    assert got[0] == pytest.approx(a0, rel=1e-15)


def test_piecewise_constant(rng):
    boundaries = sorted(int(b) for b in rng.choice(np.arange(1, 400), 4, replace=False))
    values = [float(v) for v in rng.uniform(0, 1, 5)]

    def formula(t):
        for b, v in zip(boundaries, values):
            if t < b:
                return v
        return values[-1]

    assert_formula(S.piecewise_constant(boundaries, values), formula, 1.0)


def test_linear_warmup_from_zero(rng):
    a0, w = float(rng.uniform(0.01, 1)), int(rng.integers(1, 200))
    got = assert_formula(S.linear_warmup(a0, w), lambda t: a0 * t / w if t < w else a0, a0)
    assert got[0] == 0.0 and (got[w:] == a0).all()  # exactly the peak from step w on
    start = a0 / 10
    assert_formula(S.linear_warmup(a0, w, start),
                   lambda t: start + (a0 - start) * min(t, w) / w, a0)
    assert S.linear_warmup(a0, 0)(0) == a0  # no warm-up


def test_warmup_cosine_decay(rng):
    a0, w = float(rng.uniform(0.01, 1)), int(rng.integers(0, 100))
    total = w + int(rng.integers(1, 250))

    def formula(t):
        if t < w:
            return a0 * t / w
        return a0 / 2 * (1 + math.cos(math.pi * min(t - w, total - w) / (total - w)))

    got = assert_formula(S.warmup_cosine_decay(a0, w, total), formula, a0)
    assert got.max() == pytest.approx(a0, rel=1e-15) and got[total] == 0


def test_cosine_warm_restarts(rng):
    a0, T_0, T_mult = float(rng.uniform(0.01, 1)), int(rng.integers(1, 40)), int(rng.integers(1, 4))
    floor = float(rng.uniform(0, a0 / 2))
    starts, length, t = [], T_0, 0
    while t < 1000:  # explicit list of (cycle start, cycle length)
        starts.append((t, length))
        t, length = t + length, length * T_mult

    def formula(t):
        start, length = max(s for s in starts if s[0] <= t)
        return floor + (a0 - floor) / 2 * (1 + math.cos(math.pi * (t - start) / length))

    got = assert_formula(S.cosine_warm_restarts(a0, T_0, T_mult, floor), formula, a0,
                         steps=range(1000))
    for start, _ in starts:  # every restart is back at exactly the initial value
        assert got[start] == a0


def _one_cycle_formula(max_v, T, pct, anneal, div, final_div, three_phase):
    """1cycle written out phase by phase (phase i ends at step e_i)."""
    lo = max_v / div
    end_v = lo / final_div
    e1 = pct * T - 1
    if three_phase:
        e2 = 2 * pct * T - 2
        phases = [(0, e1, lo, max_v), (e1, e2, max_v, lo), (e2, T - 1, lo, end_v)]
    else:
        phases = [(0, e1, lo, max_v), (e1, T - 1, max_v, end_v)]

    def f(t):
        t = min(t, T - 1)
        for i, (a, b, v0, v1) in enumerate(phases):
            if t <= b or i == len(phases) - 1:
                p = (t - a) / (b - a)
                if anneal == "cos":
                    return v1 + (v0 - v1) * (1 + math.cos(math.pi * p)) / 2
                return v0 + (v1 - v0) * p
    return f


@pytest.mark.parametrize("anneal", ["cos", "linear"])
@pytest.mark.parametrize("three_phase", [False, True])
def test_one_cycle(rng, anneal, three_phase):
    max_v, T = float(rng.uniform(0.01, 1)), int(rng.integers(50, 400))
    pct = float(rng.uniform(0.1, 0.5))
    div, final_div = float(rng.uniform(5, 50)), float(rng.uniform(10, 1e4))
    got = assert_formula(S.one_cycle(max_v, T, pct, anneal, div, final_div, three_phase),
                         _one_cycle_formula(max_v, T, pct, anneal, div, final_div, three_phase),
                         max_v)
    assert got[0] == pytest.approx(max_v / div, rel=1e-14)
    assert got.max() <= max_v * (1 + 1e-15)
    assert got[T - 1:] == pytest.approx(max_v / div / final_div, rel=1e-12)  # held after the end


def test_one_cycle_zero_length_warmup_does_not_divide_by_zero():
    # pct_start * total_steps == 1: the ramp-up phase ends at step 0 (torch raises
    # ZeroDivisionError here); step 0 is then the peak.
    f = S.one_cycle(1.0, 10, pct_start=0.1)
    assert f(0) == 1.0
    assert f(9) == pytest.approx(1.0 / 25 / 1e4, rel=1e-12)


def _smith_triangular(base, top, s, t, scale=1.0):
    """Smith (2017), symmetric cycles: cycle = floor(1 + t / 2s), x = |t/s - 2 cycle + 1|."""
    cycle = math.floor(1 + t / (2 * s))
    x = abs(t / s - 2 * cycle + 1)
    return base + (top - base) * max(0.0, 1 - x) * scale


def test_cyclic_modes_follow_smiths_formulas(rng):
    base, top = float(rng.uniform(0.001, 0.01)), float(rng.uniform(0.02, 0.1))
    s = int(rng.integers(1, 60))
    gamma = float(rng.uniform(0.99, 1))
    assert_formula(S.cyclic(base, top, s), lambda t: _smith_triangular(base, top, s, t), top)
    assert_formula(S.cyclic(base, top, s, mode="triangular2"),
                   lambda t: _smith_triangular(base, top, s, t,
                                               1 / 2 ** (math.floor(1 + t / (2 * s)) - 1)), top)
    assert_formula(S.cyclic(base, top, s, mode="exp_range", gamma=gamma),
                   lambda t: _smith_triangular(base, top, s, t, gamma ** t), top)


def test_cyclic_asymmetric_and_inverted():
    f = S.cyclic(0.0, 1.0, step_size_up=3, step_size_down=1)
    assert [f(t) for t in range(9)] == pytest.approx([0, 1 / 3, 2 / 3, 1, 0, 1 / 3, 2 / 3, 1, 0],
                                                     abs=1e-15)
    # base > max gives the mirror image, as used for momentum
    g = S.cyclic(0.95, 0.85, step_size_up=4)
    assert [g(0), g(4), g(8)] == pytest.approx([0.95, 0.85, 0.95], abs=1e-15)
    h = S.cyclic(0.0, 1.0, 5, scale_fn=lambda c: 1 / c, scale_mode="cycle")
    assert h(15) == pytest.approx(0.5, abs=1e-15)  # second cycle's peak


def test_join_runs_each_schedule_from_its_own_step_zero():
    warm = S.linear_warmup(1.0, 10)
    decay = S.exponential_decay(1.0, 0.9)
    f = S.join([warm, decay, S.constant(0.01)], [10, 50])
    assert [f(t) for t in (0, 5, 10, 11, 49, 50, 1000)] == [
        0.0, 0.5, 1.0, 0.9, decay(39), 0.01, 0.01]


# --------------------------------------------------------------------------
# The callable objects
# --------------------------------------------------------------------------

ALL = [
    S.constant(0.1), S.step_decay(0.1, 10), S.multistep_decay(0.1, [5, 10]),
    S.exponential_decay(0.1, 0.9), S.cosine_decay(0.1, 50, 0.001), S.linear_decay(0.1, 50),
    S.polynomial_decay(0.1, 50, power=2.0), S.inverse_sqrt(0.1), S.inverse_time_decay(0.1, 0.1),
    S.piecewise_constant([10], [0.1, 0.01]), S.linear_warmup(0.1, 10),
    S.warmup_cosine_decay(0.1, 10, 100), S.cosine_warm_restarts(0.1, 10, 2),
    S.one_cycle(0.1, 100), S.cyclic(0.01, 0.1, 10, mode="exp_range", gamma=0.99),
    S.join([S.linear_warmup(0.1, 10), S.cosine_decay(0.1, 90)], [10]),
]


@pytest.mark.parametrize("schedule", ALL, ids=lambda s: repr(s).split("(")[0])
def test_schedule_objects_are_plain_picklable_functions(schedule):
    steps = [0, 1, 7, 10, 55, 99, 150, np.int64(3), 2.5]
    values = [schedule(t) for t in steps]
    assert all(type(v) is float for v in values)
    clone = pickle.loads(pickle.dumps(schedule))
    assert [clone(t) for t in steps] == values
    assert repr(clone) == repr(schedule) and "=" in repr(schedule)
    with pytest.raises(ValueError, match="step must be a non-negative number, got -1"):
        schedule(-1)


# --------------------------------------------------------------------------
# Eager validation: the message names the argument, the value and what is accepted
# --------------------------------------------------------------------------

BAD = [
    (lambda: S.cosine_decay(0.1, 0), "decay_steps must be a positive integer, got 0"),
    (lambda: S.cosine_decay(0.1, 10.5), "decay_steps must be a positive integer, got 10.5"),
    (lambda: S.cosine_decay(0.1, 100, end_value=float("nan")),
     "end_value must be a finite real number, got nan"),
    (lambda: S.step_decay(0.1, True), "step_size must be a positive integer, got True"),
    (lambda: S.step_decay(0.1, 10, gamma=0.0), "gamma must be a real number > 0, got 0.0"),
    (lambda: S.exponential_decay(0.1, -0.9), "gamma must be a real number > 0, got -0.9"),
    (lambda: S.multistep_decay(0.1, [10, -30]),
     "milestones must contain non-negative integers, got -30"),
    (lambda: S.multistep_decay(0.1, [60, 30, 90]),
     "milestones must be sorted (non-decreasing), got [60, 30, 90]"),
    (lambda: S.multistep_decay(0.1, 30),
     "milestones must be a sequence of non-negative integers, got 30"),
    (lambda: S.linear_warmup(0.1, -1), "warmup_steps must be a non-negative integer, got -1"),
    (lambda: S.warmup_cosine_decay(0.1, -5, 100),
     "warmup_steps must be a non-negative integer, got -5"),
    (lambda: S.warmup_cosine_decay(0.1, 100, 100),
     "total_steps must be greater than warmup_steps=100, got 100"),
    (lambda: S.polynomial_decay(0.1, 10, power=-2.0), "power must be a real number >= 0, got -2.0"),
    (lambda: S.inverse_sqrt(0.1, timescale=0.0), "timescale must be a real number > 0, got 0.0"),
    (lambda: S.inverse_time_decay(0.1, -0.1), "decay_rate must be a real number >= 0, got -0.1"),
    (lambda: S.piecewise_constant([10, 10], [1, 2, 3]),
     "boundaries must be strictly increasing, got [10, 10]"),
    (lambda: S.piecewise_constant([10], [1.0]),
     "values must have len(boundaries) + 1 = 2 entries, got 1"),
    (lambda: S.cosine_warm_restarts(0.1, 0), "T_0 must be a positive integer, got 0"),
    (lambda: S.cosine_warm_restarts(0.1, 10, T_mult=0), "T_mult must be a positive integer, got 0"),
    (lambda: S.one_cycle(0.1, 0), "total_steps must be a positive integer, got 0"),
    (lambda: S.one_cycle(0.1, 100, pct_start=-0.1),
     "pct_start must be a real number in [0, 1], got -0.1"),
    (lambda: S.one_cycle(0.1, 100, pct_start=0.7, three_phase=True),
     "pct_start must be <= 0.5 when three_phase=True"),
    (lambda: S.one_cycle(0.1, 100, anneal_strategy="cosine"),
     "anneal_strategy must be one of 'cos', 'linear', got 'cosine'"),
    (lambda: S.one_cycle(0.1, 100, div_factor=0), "div_factor must be a real number > 0, got 0"),
    (lambda: S.cyclic(0.01, 0.1, mode="triangle"),
     "mode must be one of 'triangular', 'triangular2', 'exp_range', got 'triangle'"),
    (lambda: S.cyclic(0.01, 0.1, step_size_up=0), "step_size_up must be a real number > 0, got 0"),
    (lambda: S.cyclic(0.01, 0.1, scale_mode="epoch", scale_fn=abs),
     "scale_mode must be one of 'cycle', 'iterations', got 'epoch'"),
    (lambda: S.cyclic(0.01, 0.1, scale_fn=3), "scale_fn must be callable or None, got 3"),
    (lambda: S.join([S.constant(1.0), S.constant(2.0)], []),
     "boundaries must have len(schedules) - 1 = 1 entries, got 0"),
    (lambda: S.join([S.constant(1.0), 2.0], [5]), "schedules[1] must be callable, got 2.0"),
    (lambda: S.constant("0.1"), "value must be a finite real number, got '0.1'"),
]


@pytest.mark.parametrize("build, message", BAD, ids=[m.split(" ")[0] for _, m in BAD])
def test_bad_arguments_fail_eagerly_with_a_clear_message(build, message):
    with pytest.raises((ValueError, TypeError)) as info:
        build()
    assert message in str(info.value)
