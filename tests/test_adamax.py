"""Adamax specifics: the infinity-norm rule, NaN through the max, the functional API."""

import numpy as np
import pytest

import fusedoptim as fo


def test_infinity_norm_rule_written_out(rng):
    """Three steps against the update written out by hand in float64 (torch's form)."""
    lr, b1, b2, eps, wd = 0.01, 0.8, 0.95, 1e-3, 0.1
    p = rng.standard_normal(50)
    grads = [rng.standard_normal(50) for _ in range(3)]
    q, m, u = p.copy(), np.zeros(50), np.zeros(50)
    opt = fo.Adamax([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    for t, g in enumerate(grads, start=1):
        opt.step([g])
        g = g + wd * q
        m = b1 * m + (1 - b1) * g
        u = np.maximum(b2 * u, np.abs(g) + eps)
        q = q - lr / (1 - b1 ** t) * m / u
    np.testing.assert_allclose(p, q, rtol=1e-13, atol=0)
    np.testing.assert_allclose(opt.state[0]["exp_inf"], u, rtol=1e-13, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_stays_in_exp_inf_like_torch_maximum(dtype):
    """A NaN grad poisons that element's exp_inf for good (torch.maximum propagates NaN);
    a max that dropped the NaN operand would let later finite grads 'heal' it."""
    p = np.zeros(4, dtype)
    opt = fo.Adamax([p], lr=0.1)
    opt.step([np.array([1.0, np.nan, -1.0, 0.5], dtype)])
    for _ in range(3):
        opt.step([np.ones(4, dtype)])
    u = opt.state[0]["exp_inf"]
    assert np.isnan(u[1]) and np.isnan(p[1])
    assert np.all(np.isfinite(np.delete(u, 1))) and np.all(np.isfinite(np.delete(p, 1)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_functional_matches_class_and_reference(rng, dtype):
    kw = dict(lr=3e-3, beta1=0.85, beta2=0.99, eps=1e-7, weight_decay=0.05, maximize=True)
    shapes = [(3, 4), (40_000,), (1,)]
    p_cls = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
    p_fun, p_ref = [p.copy() for p in p_cls], [p.copy() for p in p_cls]
    zeros = lambda: [np.zeros_like(p) for p in p_cls]
    st_fun, st_ref = (zeros(), zeros(), [0] * 3), (zeros(), zeros(), [0] * 3)
    opt = fo.Adamax(p_cls, lr=3e-3, betas=(0.85, 0.99), eps=1e-7, weight_decay=0.05,
                    maximize=True)
    for _ in range(20):
        g = [np.asarray(rng.standard_normal(p.shape), dtype) for p in p_cls]
        fo.functional.adamax(p_fun, g, *st_fun, **kw)
        fo.reference.adamax(p_ref, g, *st_ref, **kw)
        opt.step(g)
    for a, b, c in zip(p_fun, p_ref, p_cls):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    assert st_fun[2] == st_ref[2] == [20] * 3
