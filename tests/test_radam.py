"""RAdam specifics: the rho_t <= 5 branch, chosen per step."""

import math

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim.optim.radam import radam_scalars


def _rho(t, beta2):
    rho_inf = 2 / (1 - beta2) - 1
    return rho_inf - 2 * t * beta2 ** t / (1 - beta2 ** t)


@pytest.mark.parametrize("beta2", [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999])
def test_branch_follows_rho_t(beta2):
    for t in range(1, 60):
        rectified = int(radam_scalars(t, 1e-3, 0.9, beta2, 1e-8, 0.0, False, False)[-1]) & 4
        assert bool(rectified) == (_rho(t, beta2) > 5), t


def test_first_steps_are_plain_momentum_then_rectified(rng):
    """Written out in float64: while rho_t <= 5, p -= lr/(1-beta1^t) m; after, the
    rectified Adam step. beta2=0.999 switches between steps 5 and 6."""
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    assert _rho(5, b2) <= 5 < _rho(6, b2)
    p = rng.standard_normal(30)
    q, m, v = p.copy(), np.zeros(30), np.zeros(30)
    opt = fo.RAdam([p], lr=lr, betas=(b1, b2), eps=eps)
    for t in range(1, 9):
        g = rng.standard_normal(30)
        opt.step([g])
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        rho_t, rho_inf = _rho(t, b2), 2 / (1 - b2) - 1
        if rho_t > 5:
            r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                          / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            q = q - lr * m_hat * r * math.sqrt(1 - b2 ** t) / (np.sqrt(v) + eps)
        else:
            q = q - lr * m_hat
        np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-15)


def test_small_beta2_is_never_rectified(rng):
    p = rng.standard_normal(10)
    q, m = p.copy(), np.zeros(10)
    opt = fo.RAdam([p], lr=0.1, betas=(0.5, 0.5))
    for t in range(1, 30):
        g = rng.standard_normal(10)
        opt.step([g])
        m = 0.5 * m + 0.5 * g
        q = q - 0.1 / (1 - 0.5 ** t) * m
    np.testing.assert_allclose(p, q, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_functional_matches_class_and_reference(rng, dtype):
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.02,
              decoupled_weight_decay=True, maximize=False)
    p_cls = [np.asarray(rng.standard_normal(s), dtype) for s in [(7,), (30_000,)]]
    p_fun, p_ref = [p.copy() for p in p_cls], [p.copy() for p in p_cls]
    zeros = lambda: [np.zeros_like(p) for p in p_cls]
    st_fun, st_ref = (zeros(), zeros(), [0, 0]), (zeros(), zeros(), [0, 0])
    opt = fo.RAdam(p_cls, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.02,
                   decoupled_weight_decay=True)
    for _ in range(25):      # rho_t crosses 5 at step 7 for beta2 = 0.99
        g = [np.asarray(rng.standard_normal(p.shape), dtype) for p in p_cls]
        fo.functional.radam(p_fun, g, *st_fun, **kw)
        fo.reference.radam(p_ref, g, *st_ref, **kw)
        opt.step(g)
    for a, b, c in zip(p_fun, p_ref, p_cls):
        assert a.tobytes() == b.tobytes() == c.tobytes()
