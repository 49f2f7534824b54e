"""RMSprop: every kernel path against the reference, the notes' bias-corrected form, the
state each configuration keeps, and the functional API."""

import itertools

import numpy as np
import pytest

import fusedoptim as fo
from cases import CASES
from test_optimizers import DTYPES, check_matches_reference

CASE = next(c for c in CASES if c.name == "RMSprop")

# Every kernel path (weight decay x centered x momentum x bias correction, the last only
# without centering); maximize alternates (it only flips the gradient's sign).
COMBOS = [dict(weight_decay=wd, centered=c, momentum=m, bias_correction=bc,
               maximize=bool(k % 2))
          for k, (wd, c, m, bc) in enumerate(
              (wd, c, m, bc) for wd, c, m, bc in itertools.product(
                  [0.0, 0.05], [False, True], [0.0, 0.9], [False, True]) if not (c and bc))]


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_option_combination_matches_reference(dtype, rng):
    assert len(COMBOS) == 12
    for flags in COMBOS:
        check_matches_reference(CASE, {**CASE.sample(rng), **flags}, dtype, rng)


def test_bias_corrected_form_is_the_notes_rmsprop(rng):
    """v = alpha*v + (1-alpha)*g^2; v_hat = v / (1 - alpha^t); p -= lr*g/(sqrt(v_hat)+eps),
    written out independently in float64 (rtol 1e-12). Its first step is lr*g/(|g|+eps)."""
    alpha, lr, eps = 0.9, 0.01, 1e-8
    p = rng.standard_normal(50)
    x, v = p.copy(), np.zeros(50)
    opt = fo.RMSprop([p], lr=lr, alpha=alpha, eps=eps, bias_correction=True)
    for t in range(1, 31):
        g = rng.standard_normal(50)
        v = alpha * v + (1 - alpha) * g ** 2
        x_before = x
        x = x - lr * g / (np.sqrt(v / (1 - alpha ** t)) + eps)
        opt.step([g])
        if t == 1:
            np.testing.assert_allclose(x_before - x, lr * g / (np.abs(g) + eps), rtol=1e-12)
        np.testing.assert_allclose(p, x, rtol=1e-12)
    np.testing.assert_allclose(opt.state[0]["square_avg"], v, rtol=1e-14)   # raw average kept


@pytest.mark.parametrize("centered,momentum,slots", [
    (False, 0.0, {"square_avg"}), (True, 0.0, {"square_avg", "grad_avg"}),
    (False, 0.9, {"square_avg", "momentum_buffer"}),
    (True, 0.9, {"square_avg", "grad_avg", "momentum_buffer"}),
])
def test_state_holds_only_the_buffers_the_configuration_uses(centered, momentum, slots):
    opt = fo.RMSprop([np.zeros(3)], centered=centered, momentum=momentum)
    opt.step([np.ones(3)])
    assert set(opt.state[0]) == slots | {"step"}


def test_centered_with_bias_correction_is_rejected():
    with pytest.raises(ValueError, match="bias_correction=True .* centered=True"):
        fo.RMSprop([np.zeros(3)], centered=True, bias_correction=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("centered,momentum", [(False, 0.0), (True, 0.9)])
def test_functional_matches_class_and_reference(rng, dtype, centered, momentum):
    kw = dict(lr=0.01, alpha=0.95, eps=1e-6, weight_decay=0.01, momentum=momentum,
              centered=centered)
    shapes = [(7,), (3, 5), (40_000,)]
    p_fun = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
    p_ref, p_cls = [p.copy() for p in p_fun], [p.copy() for p in p_fun]
    zeros = lambda used: [np.zeros_like(p) for p in p_fun] if used else None
    st_fun = (zeros(True), zeros(centered), zeros(momentum > 0), [0] * 3)
    st_ref = (zeros(True), zeros(centered), zeros(momentum > 0), [0] * 3)
    opt = fo.RMSprop(p_cls, **kw)
    for _ in range(20):
        g = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
        fo.functional.rmsprop(p_fun, g, *st_fun, **kw)
        fo.reference.rmsprop(p_ref, g, *st_ref, **kw)
        opt.step(g)
    for a, b, c in zip(p_fun, p_ref, p_cls):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    assert st_fun[3] == st_ref[3] == [20] * 3
    if not centered:
        with pytest.raises(ValueError, match=r"grad_avgs\[0\] is None"):
            fo.functional.rmsprop(p_fun, g, st_fun[0], None, None, st_fun[3],
                                  **{**kw, "centered": True})
