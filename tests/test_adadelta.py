"""Adadelta: every option against the reference, the paper's accumulator of squared updates,
and the functional API."""

import itertools

import numpy as np
import pytest

import fusedoptim as fo
from cases import CASES
from test_optimizers import DTYPES, check_matches_reference

CASE = next(c for c in CASES if c.name == "Adadelta")

# Weight decay on/off, maximize on/off, and the ends of rho's range [0, 1].
COMBOS = [dict(weight_decay=wd, maximize=mx) for wd, mx in itertools.product([0.0, 0.05],
                                                                           [False, True])]
COMBOS += [dict(rho=0.0), dict(rho=1.0, weight_decay=0.05)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_option_combination_matches_reference(dtype, rng):
    for flags in COMBOS:
        check_matches_reference(CASE, {**CASE.sample(rng), **flags}, dtype, rng)


def test_accumulates_the_squared_update_as_in_the_paper(rng):
    """Zeiler (2012), Algorithm 1: E[dx^2] averages the squared *update*, not theta^2."""
    rho, eps, lr = 0.9, 1e-6, 1.0
    p = rng.standard_normal(20)
    p0 = p.copy()
    g = rng.standard_normal(20)
    opt = fo.Adadelta([p], lr=lr, rho=rho, eps=eps)
    opt.step([g])
    dx = np.sqrt(eps) / np.sqrt((1 - rho) * g * g + eps) * g
    np.testing.assert_allclose(p0 - p, lr * dx, rtol=1e-12)
    np.testing.assert_allclose(opt.state[0]["acc_delta"], (1 - rho) * dx * dx, rtol=1e-12)
    assert not np.allclose(opt.state[0]["acc_delta"], (1 - rho) * p * p)


@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_matches_class_and_reference(rng, dtype):
    kw = dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.01, maximize=True)
    shapes = [(7,), (3, 5), (40_000,)]
    p_fun = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
    p_ref, p_cls = [p.copy() for p in p_fun], [p.copy() for p in p_fun]
    st_fun = ([np.zeros_like(p) for p in p_fun], [np.zeros_like(p) for p in p_fun], [0] * 3)
    st_ref = ([np.zeros_like(p) for p in p_fun], [np.zeros_like(p) for p in p_fun], [0] * 3)
    opt = fo.Adadelta(p_cls, **kw)
    for _ in range(20):
        g = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
        fo.functional.adadelta(p_fun, g, *st_fun, **kw)
        fo.reference.adadelta(p_ref, g, *st_ref, **kw)
        opt.step(g)
    for a, b, c in zip(p_fun, p_ref, p_cls):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    assert st_fun[2] == st_ref[2] == [20] * 3
