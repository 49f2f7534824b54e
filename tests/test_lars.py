"""LARS: no torch twin, so it is checked against the paper's Algorithm 1 written out here.

Tolerance: float64; the paper keeps lr inside the velocity (v = lr * b at a constant lr) and
NumPy's norms sum in another order. After 30 steps they agree to 1e-10 relative (atol 1e-10 of
the tensor's scale for elements passing near zero).
"""

import numpy as np
import pytest

import fusedoptim as fo

SHAPES = [(7,), (3, 5), (30_000,), (1,)]


def _local_lr(w, g, eta, beta, eps):
    """The paper's local LR, eta * ||w|| / (||g|| + beta ||w||) (+ eps), 1 if a norm is 0."""
    w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
    if w_norm > 0 and g_norm > 0:
        return eta * w_norm / (g_norm + beta * w_norm + eps)
    return 1.0


def _paper_lars(w, v, g, lr, m, beta, eta, eps):
    """You, Gitman & Ginsburg 2017, Algorithm 1: v = m v + gamma lambda (g + beta w);
    w = w - v."""
    lam = _local_lr(w, g, eta, beta, eps)
    v[...] = m * v + lr * lam * (g + beta * w)
    w -= v


@pytest.mark.parametrize("kw", [
    dict(),
    dict(lr=2.0, momentum=0.95, weight_decay=5e-4),
    dict(lr=0.5, momentum=0.0, weight_decay=1e-3, trust_coefficient=0.02, eps=0.0),
    dict(lr=1.0, maximize=True, trust_coefficient=0.01),
])
def test_matches_the_paper_rule_at_a_constant_lr(rng, kw):
    full = dict(lr=1.0, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001, eps=1e-8)
    full.update({k: kw[k] for k in full if k in kw})
    params = [rng.standard_normal(s) for s in SHAPES] + [np.zeros(9)]   # a zero "bias"
    paper = [p.copy() for p in params]
    vs = [np.zeros_like(p) for p in params]
    opt = fo.LARS(params, **kw)
    for _ in range(30):
        grads = [rng.standard_normal(p.shape) for p in params]
        opt.step(grads)
        for w, v, g in zip(paper, vs, grads):
            _paper_lars(w, v, -g if kw.get("maximize") else g, full["lr"], full["momentum"],
                        full["weight_decay"], full["trust_coefficient"], full["eps"])
    for p, q in zip(params, paper):
        np.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-10 * np.abs(q).max())
    assert np.any(params[-1] != 0)       # the zero tensor moved: ratio 1


def test_nesterov_matches_the_look_ahead_rule(rng):
    """Nesterov momentum on the LARS-scaled gradient d, torch's form (as SGD's)."""
    lr, mu, wd, eta = 0.7, 0.9, 1e-4, 0.005
    params = [rng.standard_normal(s) for s in SHAPES]
    ref = [p.copy() for p in params]
    bufs = [np.zeros_like(p) for p in params]
    opt = fo.LARS(params, lr=lr, momentum=mu, weight_decay=wd, trust_coefficient=eta,
                  nesterov=True)
    for _ in range(20):
        grads = [rng.standard_normal(p.shape) for p in params]
        opt.step(grads)
        for w, b, g in zip(ref, bufs, grads):
            d = _local_lr(w, g, eta, wd, 1e-8) * (g + wd * w)
            b[...] = mu * b + d
            w -= lr * (d + mu * b)
    for p, q in zip(params, ref):
        np.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-10 * np.abs(q).max())


def test_grad_scale_reaches_the_norms(rng):
    """The trust ratio sees the unscaled gradient: scaling g by s with grad_scale=s (a power
    of two) gives bitwise the same step, although ||g|| enters the ratio."""
    a = [rng.standard_normal(1000).astype(np.float32)]
    b = [a[0].copy()]
    oa, ob = fo.LARS(a, weight_decay=1e-3), fo.LARS(b, weight_decay=1e-3)
    for _ in range(5):
        g = rng.standard_normal(1000).astype(np.float32)
        oa.step([g])
        ob.step([g * np.float32(2.0 ** 14)], grad_scale=2.0 ** 14)
    assert a[0].tobytes() == b[0].tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_functional_matches_class_and_reference(rng, dtype, momentum):
    kw = dict(lr=0.3, momentum=momentum, weight_decay=1e-3, trust_coefficient=0.01)
    start = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
    p_fun, p_ref, p_cls = ([p.copy() for p in start] for _ in range(3))
    b_fun = [np.zeros_like(p) for p in start] if momentum else None
    b_ref = [np.zeros_like(p) for p in start] if momentum else None
    steps = [0] * len(start)
    opt = fo.LARS(p_cls, **kw)
    for _ in range(10):
        g = [np.asarray(rng.standard_normal(p.shape), dtype) for p in start]
        fo.functional.lars(p_fun, g, b_fun, steps, **kw)
        fo.reference.lars(p_ref, g, b_ref, None, **kw)
        opt.step(g)
    for a, c in zip(p_fun, p_cls):
        assert a.tobytes() == c.tobytes()
    tol = dict(rtol=1e-6) if dtype == np.float32 else dict(rtol=1e-12)
    for a, b in zip(p_fun, p_ref):
        np.testing.assert_allclose(a, b, **tol)
    assert steps == [10] * len(start)
    if momentum == 0.0:
        assert "momentum_buffer" not in opt.state[0]
