"""signSGD and Signum: no torch class, so checked against the paper's rules written out here
(Bernstein et al. 2018, Algorithm 1, signSGD, and Algorithm 3, Signum). The generic battery
(fused vs reference, random hyperparameters, both dtypes, checkpoints, bad input,
skip_nonfinite, grad_scale, every ISA level) runs through its Case in cases.py."""

import numpy as np
import pytest

import fusedoptim as fo

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_signsgd_is_the_papers_algorithm_1(rng, dtype):
    """x <- x - lr * sign(g), exactly: with lr a power of two every step is exact."""
    p = np.asarray(rng.standard_normal(3000), dtype)
    q = p.copy()
    opt = fo.SignSGD([p], lr=2.0 ** -7)
    for _ in range(50):
        g = np.asarray(rng.standard_normal(p.shape), dtype)
        opt.step([g])
        q -= np.asarray(2.0 ** -7, dtype) * np.sign(g)
    assert p.tobytes() == q.tobytes()
    assert "momentum_buffer" not in opt.state[0]


def _paper_signum(p, m, g, lr, beta, wd, first):
    """Algorithm 3 with the weight decay of the authors' release (L2, into the gradient) and
    its first buffer, the gradient itself; in the param's dtype, as the paper states it."""
    g = g + wd * p
    m[...] = g if first else beta * m + (1 - beta) * g
    p -= lr * np.sign(m)


@pytest.mark.parametrize("dtype", DTYPES)
def test_signum_with_dampening_equal_to_momentum_is_the_papers_algorithm_3(rng, dtype):
    for trial in range(4):
        lr = float(10 ** rng.uniform(-4, -2))
        beta = float(rng.uniform(0.5, 0.99))
        wd = float(rng.choice([0.0, rng.uniform(0, 0.1)]))
        p = np.asarray(rng.standard_normal(5000), dtype)
        q, m = p.copy(), np.zeros_like(p)
        opt = fo.SignSGD([p], lr=lr, momentum=beta, dampening=beta, weight_decay=wd)
        for k in range(100):
            g = np.asarray(rng.standard_normal(p.shape), dtype)
            opt.step([g])
            _paper_signum(q, m, g, dtype(lr), dtype(beta), dtype(wd), k == 0)
        # Same buffer bits (the kernel computes beta*m + (1-beta)*g in the same order, with
        # 1 - beta rounded once in double first: an ulp of m at most), so the same signs, and
        # p moves by the same lr each step; only lr's rounding into the dtype can differ.
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(opt.state[0]["momentum_buffer"], m, rtol=4 * eps,
                                   atol=4 * eps * np.abs(m).max())
        np.testing.assert_allclose(p, q, rtol=0, atol=200 * eps * max(1.0, np.abs(q).max()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_style_buffer_starts_at_the_gradient(rng, dtype):
    p = np.zeros(4, dtype)
    opt = fo.SignSGD([p], lr=0.5, momentum=0.9)
    opt.step([np.array([2.0, -3.0, 0.0, 0.5], dtype)])
    np.testing.assert_array_equal(opt.state[0]["momentum_buffer"], [2.0, -3.0, 0.0, 0.5])
    np.testing.assert_array_equal(p, [-0.5, 0.5, 0.0, -0.5])
    b1, g2 = opt.state[0]["momentum_buffer"].copy(), np.array([-4.0, 1.0, 1.0, -1.0], dtype)
    opt.step([g2])                                            # b = 0.9 b + g (dampening 0)
    assert opt.state[0]["momentum_buffer"].tobytes() == (np.asarray(0.9, dtype) * b1
                                                         + g2).tobytes()
    np.testing.assert_array_equal(p, [0.0, 1.0, -0.5, 0.0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sign_of_zero_is_zero_and_nan_stays_nan(dtype, momentum):
    p = np.array([1.0, -2.0, 0.0, 3.0], dtype)
    opt = fo.SignSGD([p], lr=0.1, momentum=momentum, maximize=True)
    opt.step([np.array([0.0, -0.0, 0.0, 1.0], dtype)])
    np.testing.assert_array_equal(p, np.array([1.0, -2.0, 0.0, 3.1], dtype))
    p[:] = [1.0, 2.0, 3.0, 4.0]
    opt.step([np.array([np.nan, 0.0, 0.0, 0.0], dtype)])
    assert np.isnan(p[0]) and np.all(np.isfinite(p[1:]))


def test_functional_entry_matches_the_class(rng):
    p = rng.standard_normal(1000).astype(np.float32)
    q = p.copy()
    bufs, steps = [None], [0]
    opt = fo.SignSGD([p], lr=1e-2, momentum=0.8, dampening=0.8, weight_decay=0.01)
    for _ in range(20):
        g = rng.standard_normal(1000).astype(np.float32)
        opt.step([g])
        fo.functional.signsgd([q], [g], bufs, steps, lr=1e-2, momentum=0.8, dampening=0.8,
                              weight_decay=0.01)
    assert p.tobytes() == q.tobytes() and steps == [20]
    assert bufs[0].tobytes() == opt.state[0]["momentum_buffer"].tobytes()
