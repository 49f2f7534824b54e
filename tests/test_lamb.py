"""LAMB: no torch twin, so it is checked against the paper's Algorithm 2 written out here.

Tolerance: the paper's rule is evaluated in float64 with NumPy's norms and true divisions by
the bias corrections; the kernel multiplies by reciprocals and sums its norms in another order.
After 30 steps they agree to 1e-10 relative (atol 1e-10 of the tensor's scale for elements
passing near zero).
"""

import math

import numpy as np
import pytest

import fusedoptim as fo

SHAPES = [(7,), (3, 5), (30_000,), (1,)]


def _paper_lamb(x, m, v, g, t, lr, beta1, beta2, eps, wd, gamma_u, bias_correction):
    """You et al. 2019, Algorithm 2, for one layer, with phi(z) = min(z, gamma_u); the trust
    ratio is 1 when ||x|| or ||r + wd x|| is 0."""
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g ** 2
    m_hat = m / (1 - beta1 ** t) if bias_correction else m
    v_hat = v / (1 - beta2 ** t) if bias_correction else v
    r = m_hat / (np.sqrt(v_hat) + eps)
    update = r + wd * x
    x_norm, u_norm = np.linalg.norm(x), np.linalg.norm(update)
    ratio = min(x_norm, gamma_u) / u_norm if x_norm > 0 and u_norm > 0 else 1.0
    x -= lr * ratio * update


@pytest.mark.parametrize("kw", [
    dict(),
    dict(lr=1e-2, weight_decay=0.05),
    dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-4, clamp_value=0.5, weight_decay=0.01),
    dict(lr=1e-3, clamp_value=math.inf, bias_correction=False, maximize=True),
])
def test_matches_the_paper_rule(rng, kw):
    full = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, clamp_value=10.0,
                bias_correction=True, maximize=False)
    full.update(kw)
    params = [rng.standard_normal(s) * 3 for s in SHAPES] + [np.zeros(9)]   # a zero "bias"
    paper = [p.copy() for p in params]
    ms = [np.zeros_like(p) for p in params]
    vs = [np.zeros_like(p) for p in params]
    opt = fo.LAMB(params, **kw)
    for t in range(1, 31):
        grads = [rng.standard_normal(p.shape) for p in params]
        opt.step(grads)
        for x, m, v, g in zip(paper, ms, vs, grads):
            _paper_lamb(x, m, v, -g if full["maximize"] else g, t, full["lr"], *full["betas"],
                        full["eps"], full["weight_decay"], full["clamp_value"],
                        full["bias_correction"])
    for p, q in zip(params, paper):
        np.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-10 * np.abs(q).max())
    assert np.any(params[-1] != 0)       # the zero tensor moved: ratio 1, not 0


def test_trust_ratio_scales_each_tensor_to_its_own_norm(rng):
    """First step, no decay, no clamp, tiny eps: |u| = 1 elementwise, so every tensor moves
    by lr * ||p|| / sqrt(n) per element, whatever the gradient's scale."""
    params = [rng.standard_normal(400) * 5.0, rng.standard_normal(100) * 0.01]
    before = [p.copy() for p in params]
    opt = fo.LAMB(params, lr=0.1, eps=1e-15, clamp_value=math.inf)
    opt.step([rng.standard_normal(400) * 1e3, rng.standard_normal(100) * 1e-3])
    for p, b in zip(params, before):
        step = np.linalg.norm(b) * 0.1 / math.sqrt(b.size)
        np.testing.assert_allclose(np.abs(p - b), step, rtol=1e-3)
    # The update's total norm is lr * ||p||: the trust ratio's definition.
    for p, b in zip(params, before):
        np.testing.assert_allclose(np.linalg.norm(p - b), 0.1 * np.linalg.norm(b), rtol=1e-12)


def test_zero_grads_and_zero_params(rng):
    p = [np.zeros(5, np.float32), rng.standard_normal(5).astype(np.float32)]
    before = [x.copy() for x in p]
    opt = fo.LAMB(p, lr=0.1)
    opt.step([np.zeros(5, np.float32), np.zeros(5, np.float32)])
    # u = 0: ||u|| = 0 gives ratio 1 and a zero update, never a NaN.
    assert all(x.tobytes() == b.tobytes() for x, b in zip(p, before))
    opt.step([np.ones(5, np.float32), np.zeros(5, np.float32)])
    assert np.all(np.isfinite(p[0])) and np.all(p[0] < 0)     # the zero tensor moves


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_functional_matches_class_and_reference(rng, dtype):
    kw = dict(lr=2e-3, beta1=0.85, beta2=0.99, eps=1e-6, weight_decay=0.02, clamp_value=1.0)
    start = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
    p_fun, p_ref, p_cls = ([p.copy() for p in start] for _ in range(3))
    state = lambda ps: ([np.zeros_like(p) for p in ps], [np.zeros_like(p) for p in ps],
                        [0] * len(ps))
    s_fun, s_ref = state(p_fun), state(p_ref)
    opt = fo.LAMB(p_cls, lr=2e-3, betas=(0.85, 0.99), weight_decay=0.02, clamp_value=1.0)
    for _ in range(10):
        g = [np.asarray(rng.standard_normal(p.shape), dtype) for p in start]
        fo.functional.lamb(p_fun, g, *s_fun, **kw)
        fo.reference.lamb(p_ref, g, *s_ref, **kw)
        opt.step(g)
    for a, c in zip(p_fun, p_cls):
        assert a.tobytes() == c.tobytes()
    tol = dict(rtol=1e-6) if dtype == np.float32 else dict(rtol=1e-12)
    for a, b in zip(p_fun, p_ref):
        np.testing.assert_allclose(a, b, **tol)
    assert s_fun[2] == [10] * len(start) == s_ref[2]
