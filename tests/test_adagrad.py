"""Adagrad: every option against the reference, the accumulator's start value, lr decay, and
the functional API."""

import itertools

import numpy as np
import pytest

import fusedoptim as fo
from cases import CASES
from test_optimizers import DTYPES, check_matches_reference

CASE = next(c for c in CASES if c.name == "Adagrad")

COMBOS = [dict(weight_decay=wd, lr_decay=lrd, initial_accumulator_value=init,
               maximize=bool(k % 2))
          for k, (wd, lrd, init) in enumerate(itertools.product([0.0, 0.05], [0.0, 0.01],
                                                                [0.0, 0.3]))]


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_option_combination_matches_reference(dtype, rng):
    for flags in COMBOS:
        check_matches_reference(CASE, {**CASE.sample(rng), **flags}, dtype, rng)


def test_sum_starts_at_each_groups_initial_accumulator_value(rng):
    a, b = np.zeros(5), np.zeros(5)
    opt = fo.Adagrad([{"params": [a]}, {"params": [b], "initial_accumulator_value": 0.5}],
                     lr=0.1)
    g = rng.standard_normal(5)
    opt.step([g, g])
    np.testing.assert_array_equal(opt.state[0]["sum"], g * g)
    np.testing.assert_array_equal(opt.state[1]["sum"], 0.5 + g * g)
    np.testing.assert_allclose(a, -0.1 * g / (np.abs(g) + 1e-10))
    np.testing.assert_allclose(b, -0.1 * g / (np.sqrt(0.5 + g * g) + 1e-10))


def test_lr_decay_divides_lr_by_one_plus_decay_times_steps_before(rng):
    p = np.zeros(3)
    opt = fo.Adagrad([p], lr=1.0, lr_decay=0.5, eps=1e-300)
    g = np.array([1.0, -2.0, 4.0])
    moves = []
    for _ in range(3):
        before = p.copy()
        opt.step([g])
        moves.append(p - before)
    # |g| / sqrt(t * g^2) = 1/sqrt(t); clr_t = 1 / (1 + (t-1) * 0.5)
    for t, m in enumerate(moves, start=1):
        np.testing.assert_allclose(m, -np.sign(g) / (1 + (t - 1) * 0.5) / np.sqrt(t))


@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_matches_class_and_reference(rng, dtype):
    kw = dict(lr=0.05, lr_decay=0.01, weight_decay=0.02, eps=1e-8, maximize=True)
    shapes = [(7,), (3, 5), (40_000,)]
    p_fun = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
    p_ref, p_cls = [p.copy() for p in p_fun], [p.copy() for p in p_fun]
    s_fun = [np.full_like(p, 0.1) for p in p_fun]
    s_ref = [np.full_like(p, 0.1) for p in p_fun]
    steps_fun, steps_ref = [0] * 3, [0] * 3
    opt = fo.Adagrad(p_cls, initial_accumulator_value=0.1, **kw)
    for _ in range(20):
        g = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
        fo.functional.adagrad(p_fun, g, s_fun, steps_fun, **kw)
        fo.reference.adagrad(p_ref, g, s_ref, steps_ref, **kw)
        opt.step(g)
    for a, b, c in zip(p_fun, p_ref, p_cls):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    assert steps_fun == steps_ref == [20] * 3
    with pytest.raises(ValueError, match=r"state_sums\[0\] is None"):
        fo.functional.adagrad(p_fun, g, [None] * 3, steps_fun, lr=0.1)
