"""Lion: no torch twin, so it is checked against the paper's rule written out here."""

import numpy as np
import pytest

import fusedoptim as fo

DTYPES = [np.float32, np.float64]


def _paper_lion(p, m, g, lr, beta1, beta2, wd):
    """Chen et al. 2023, Program 1, in the param's dtype, as the paper states it."""
    c = beta1 * m + (1 - beta1) * g
    p -= lr * (np.sign(c) + wd * p)
    m[...] = beta2 * m + (1 - beta2) * g


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_the_paper_rule(rng, dtype):
    for trial in range(4):
        lr = float(10 ** rng.uniform(-5, -2))
        b1, b2 = float(rng.uniform(0, 0.99)), float(rng.uniform(0.9, 0.999))
        wd = float(rng.choice([0.0, rng.uniform(0, 1)]))
        p = np.asarray(rng.standard_normal(5_000), dtype)
        q, m = p.copy(), np.zeros_like(p)
        opt = fo.Lion([p], lr=lr, betas=(b1, b2), weight_decay=wd)
        for _ in range(100):
            g = np.asarray(rng.standard_normal(p.shape), dtype)
            opt.step([g])
            _paper_lion(q, m, g, lr, b1, b2, wd)
        # The same m and c (so the same signs); only the decay's rounding differs, by about
        # an ulp of |p| per step: absolute, so elements that pass near zero need an atol.
        assert opt.state[0]["exp_avg"].tobytes() == m.tobytes()
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(p, q, rtol=20 * eps, atol=20 * eps * np.abs(q).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_element_moves_by_exactly_lr_without_decay(rng, dtype):
    p = np.asarray(rng.standard_normal(1000), dtype)
    p0 = p.copy()
    g = np.asarray(rng.standard_normal(1000), dtype)
    fo.Lion([p], lr=0.25).step([g])       # a power of two: p - 0.25 * sign is exact here
    np.testing.assert_array_equal(p, p0 - np.asarray(0.25, dtype) * np.sign(g))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("maximize", [False, True])
def test_sign_of_zero_is_zero(dtype, maximize):
    """c = 0 (zero grad, zero momentum) must not move the param: sign(0) = 0, not +-1."""
    p = np.array([1.0, -2.0, 0.0, 3.0], dtype)
    g = np.array([0.0, -0.0, 0.0, 1.0], dtype)
    opt = fo.Lion([p], lr=0.1, maximize=maximize)
    opt.step([g])
    expected = np.array([1.0, -2.0, 0.0, 3.0 + (0.1 if maximize else -0.1)], dtype)
    np.testing.assert_array_equal(p, expected)
    # NaN c gives a NaN param, like torch.sign / np.sign; other elements are untouched.
    opt.step([np.array([np.nan, 0.0, 0.0, 0.0], dtype)])
    assert np.isnan(p[0]) and np.all(np.isfinite(p[1:]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_matches_class_and_reference(rng, dtype):
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.99, weight_decay=0.3, maximize=True)
    p_cls = [np.asarray(rng.standard_normal(s), dtype) for s in [(3, 3), (40_000,)]]
    p_fun, p_ref = [p.copy() for p in p_cls], [p.copy() for p in p_cls]
    st_fun = ([np.zeros_like(p) for p in p_cls], [0, 0])
    st_ref = ([np.zeros_like(p) for p in p_cls], [0, 0])
    opt = fo.Lion(p_cls, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.3, maximize=True)
    for _ in range(15):
        g = [np.asarray(rng.standard_normal(p.shape), dtype) for p in p_cls]
        fo.functional.lion(p_fun, g, *st_fun, **kw)
        fo.reference.lion(p_ref, g, *st_ref, **kw)
        opt.step(g)
    for a, b, c in zip(p_fun, p_ref, p_cls):
        assert a.tobytes() == b.tobytes() == c.tobytes()
