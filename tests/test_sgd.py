"""SGD: torch's semantics, the notes' forms (EMA momentum, form 1, look-ahead Nesterov),
every kernel path against the reference, and the functional API."""

import itertools

import numpy as np
import pytest

import fusedoptim as fo
from cases import CASES
from test_optimizers import DTYPES, check_matches_reference

CASE = next(c for c in CASES if c.name == "SGD")

# Every kernel path: plain, momentum, damped momentum, Nesterov, each form, with and without
# weight decay; maximize alternates (it only flips the gradient's sign).
_MOMENTUM_MODES = [
    dict(momentum=0.0),
    dict(momentum=0.9), dict(momentum=0.9, dampening=0.3), dict(momentum=0.9, nesterov=True),
    dict(momentum=0.8, momentum_style="ema"),
    dict(momentum=0.8, nesterov=True, momentum_style="ema"),
]
COMBOS = [dict(m, weight_decay=wd, maximize=bool(k % 2))
          for k, (m, wd) in enumerate(itertools.product(_MOMENTUM_MODES, [0.0, 0.05]))]


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_option_combination_matches_reference(dtype, rng):
    for flags in COMBOS:
        kw = {**CASE.sample(rng), "dampening": 0.0, "nesterov": False,
              "momentum_style": "torch", **flags}
        check_matches_reference(CASE, kw, dtype, rng)


def test_plain_sgd_keeps_no_momentum_buffer_and_is_exact(rng):
    p = rng.standard_normal(1000).astype(np.float32)
    p0 = p.copy()
    g = rng.standard_normal(1000).astype(np.float32)
    opt = fo.SGD([p], lr=0.1)
    opt.step([g])
    assert p.tobytes() == (p0 - np.float32(0.1) * g).tobytes()
    assert set(opt.state[0]) == {"step"}
    assert set(opt.state_dict()["state"][0]) == {"step"}


def test_first_momentum_step_is_the_undamped_gradient_as_torch(rng):
    p = np.zeros(50)
    g1, g2 = rng.standard_normal(50), rng.standard_normal(50)
    opt = fo.SGD([p], lr=0.1, momentum=0.9, dampening=0.5)
    opt.step([g1])
    assert opt.state[0]["momentum_buffer"].tobytes() == g1.tobytes()
    opt.step([g2])
    np.testing.assert_array_equal(opt.state[0]["momentum_buffer"], 0.9 * g1 + 0.5 * g2)


def test_momentum_switched_on_later_starts_its_buffer_at_that_gradient(rng):
    """torch creates the buffer when momentum first becomes non-zero, from that step's grad."""
    p = np.zeros(20)
    opt = fo.SGD([p], lr=0.1, dampening=0.5)
    opt.step([rng.standard_normal(20)])
    assert "momentum_buffer" not in opt.state[0]
    opt.param_groups[0]["momentum"] = 0.9
    g = rng.standard_normal(20)
    opt.step([g])
    assert opt.state[0]["momentum_buffer"].tobytes() == g.tobytes()
    assert opt.state[0]["step"] == 2


def test_checkpoint_without_momentum_buffer_starts_a_fresh_one(rng):
    """A checkpoint saved with momentum=0 has no buffer; enabling momentum after loading
    creates it from the next grad, as torch does with a missing momentum_buffer."""
    p = np.zeros(40_000, np.float32)
    opt = fo.SGD([p], lr=0.1)
    opt.step([np.ones_like(p)])
    saved = opt.state_dict()
    saved["param_groups"][0]["momentum"] = 0.9
    q = p.copy()
    opt2 = fo.SGD([q], lr=0.1)
    opt2.load_state_dict(saved)
    g = rng.standard_normal(q.shape).astype(np.float32)
    opt2.step([g])
    assert opt2.state[0]["momentum_buffer"].tobytes() == g.tobytes()


def _quadratic(rng, n=30):
    a = rng.standard_normal((n, n))
    hess = a @ a.T / n + 0.1 * np.eye(n)
    b = rng.standard_normal(n)
    return lambda x: hess @ x - b


def test_form1_equals_torch_form_at_constant_lr_and_bakes_old_lrs_into_v(rng):
    """The notes' form 1, v = mu*v - lr*g; x += v, visits the same points as torch's form at a
    constant lr (tolerance: float64 rounding, rtol 1e-10). After an lr change they part,
    because form 1's v carries the old lr; rescaling v by new_lr/old_lr at the change
    reconciles them exactly, which is the whole difference."""
    grad = _quadratic(rng)
    mu, lr = 0.9, 0.05
    x0 = rng.standard_normal(30)

    def form1(steps, lr_at, rescale):
        x, v = x0.copy(), np.zeros_like(x0)
        for t in range(steps):
            if rescale and t > 0 and lr_at(t) != lr_at(t - 1):
                v *= lr_at(t) / lr_at(t - 1)
            v = mu * v - lr_at(t) * grad(x)
            x = x + v
        return x

    def torch_form(steps, lr_at):
        x = x0.copy()
        opt = fo.SGD([x], lr=lr, momentum=mu)
        path = []
        for t in range(steps):
            opt.param_groups[0]["lr"] = lr_at(t)
            opt.step([grad(x)])
            path.append(x.copy())
        return path[-1]

    constant = lambda t: lr
    np.testing.assert_allclose(torch_form(150, constant), form1(150, constant, False),
                               rtol=1e-10, atol=1e-12)
    drop = lambda t: lr if t < 20 else lr / 10
    np.testing.assert_allclose(torch_form(60, drop), form1(60, drop, True),
                               rtol=1e-10, atol=1e-12)
    assert np.abs(torch_form(60, drop) - form1(60, drop, False)).max() > 1e-3


@pytest.mark.parametrize("weight_decay", [0.0, 0.02])
def test_nesterov_lookahead_form_visits_the_same_points(rng, weight_decay):
    """Sutskever et al.'s look-ahead Nesterov, v = mu*v - lr*grad(theta + mu*v); theta += v,
    against fo.SGD(nesterov=True) on a quadratic: torch's param is the look-ahead point,
    p_t == theta_t + mu*v_t at every step (float64, rtol 1e-10, atol 1e-12)."""
    grad = _quadratic(rng)
    full_grad = lambda x: grad(x) + weight_decay * x
    mu, lr = 0.9, 0.05
    theta = rng.standard_normal(30)
    v = np.zeros_like(theta)
    p = theta.copy()
    opt = fo.SGD([p], lr=lr, momentum=mu, nesterov=True, weight_decay=weight_decay)
    gap = []
    for _ in range(400):
        v = mu * v - lr * full_grad(theta + mu * v)
        theta = theta + v
        opt.step([grad(p)])          # the optimizer adds weight_decay * p itself
        np.testing.assert_allclose(p, theta + mu * v, rtol=1e-10, atol=1e-12)
        gap.append(np.abs(p - theta).max())
    # The variables differ (by mu*v) while moving, and meet at the minimum.
    assert max(gap) > 1e-2 and gap[-1] < 1e-6 * max(gap)
    np.testing.assert_allclose(full_grad(p), 0, atol=1e-8)


@pytest.mark.parametrize("nesterov", [False, True])
def test_ema_style_is_torch_form_with_lr_scaled_by_one_minus_beta(rng, nesterov):
    """v = (1-beta) * b, so "ema" at lr is torch's form at lr*(1-beta), for any lr schedule
    (float64, rtol 1e-12)."""
    beta = 0.8
    p_ema = rng.standard_normal(100)
    p_torch = p_ema.copy()
    ema = fo.SGD([p_ema], lr=0.1, momentum=beta, nesterov=nesterov, weight_decay=0.01,
                 momentum_style="ema")
    tor = fo.SGD([p_torch], lr=0.1 * (1 - beta), momentum=beta, nesterov=nesterov,
                 weight_decay=0.01)
    for t in range(100):
        if t == 50:
            ema.param_groups[0]["lr"] = 0.03
            tor.param_groups[0]["lr"] = 0.03 * (1 - beta)
        g = rng.standard_normal(100)
        ema.step([g])
        tor.step([g])
    np.testing.assert_allclose(p_ema, p_torch, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ema.state[0]["momentum_buffer"],
                               (1 - beta) * tor.state[0]["momentum_buffer"], rtol=1e-12)


@pytest.mark.parametrize("kw,words", [
    (dict(momentum=0.0, nesterov=True), ["nesterov=True", "momentum > 0", "0.0"]),
    (dict(momentum=0.9, dampening=0.1, nesterov=True), ["nesterov=True", "dampening=0.1"]),
])
def test_nesterov_needs_momentum_and_no_dampening_as_torch(kw, words):
    with pytest.raises(ValueError) as err:
        fo.SGD([np.zeros(3)], **kw)
    for w in words:
        assert w in str(err.value)
    with pytest.raises(ValueError) as err:
        fo.functional.sgd([np.zeros(3)], [np.ones(3)], [None], lr=0.1, **kw)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("style", ["torch", "ema"])
def test_functional_creates_missing_buffers_and_matches_class_and_reference(rng, dtype, style):
    kw = dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True, momentum_style=style)
    shapes = [(7,), (3, 5), (40_000,)]
    p_fun = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
    p_ref, p_cls = [p.copy() for p in p_fun], [p.copy() for p in p_fun]
    bufs_fun, bufs_ref = [None] * 3, [None] * 3
    steps = [0, 0, 0]
    opt = fo.SGD(p_cls, **kw)
    for t in range(20):
        g = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
        if t == 0:
            g[1] = None             # its buffer is created a step later
        fo.functional.sgd(p_fun, g, bufs_fun, steps, **kw)
        fo.reference.sgd(p_ref, g, bufs_ref, **kw)
        opt.step(g)
        if t == 0:
            assert bufs_fun[1] is None and bufs_fun[0] is not None
    for a, b, c in zip(p_fun, p_ref, p_cls):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    for i in range(3):
        assert bufs_fun[i].tobytes() == bufs_ref[i].tobytes()
        assert bufs_fun[i].tobytes() == opt.state[i]["momentum_buffer"].tobytes()
    assert steps == [20, 19, 20]


def test_functional_without_momentum_needs_no_buffers_or_steps():
    p = [np.zeros(4, np.float32)]
    fo.functional.sgd(p, [np.ones(4, np.float32)], None, lr=0.5)
    assert (p[0] == -0.5).all()


def test_functional_rejects_before_creating_buffers():
    p, bufs = [np.zeros(4, np.float32)], [None]
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype float64"):
        fo.functional.sgd(p, [np.ones(4)], bufs, lr=0.1, momentum=0.9)
    assert bufs == [None] and not p[0].any()
    with pytest.raises(ValueError, match="momentum_buffer_list is None"):
        fo.functional.sgd(p, [np.ones(4, np.float32)], None, lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match="pass a list"):
        fo.functional.sgd(p, [np.ones(4, np.float32)], (None,), lr=0.1, momentum=0.9)
    assert not p[0].any()


@pytest.mark.parametrize("name,kw", [("SGD", dict(momentum=0.9, nesterov=True)),
                                     ("RMSprop", dict(momentum=0.9, centered=True))])
def test_one_cycle_lr_cycling_momentum_every_step_matches_torch(rng, name, kw):
    """OneCycleLR rewrites lr and momentum in the param group every step; the fused step
    follows the new values at once, as torch does (float64, rtol 1e-10)."""
    torch = pytest.importorskip("torch")
    from fusedoptim.lr_scheduler import OneCycleLR
    p = rng.standard_normal(300)
    tp = torch.tensor(p.copy())
    opt = getattr(fo, name)([p], lr=0.01, **kw)
    topt = getattr(torch.optim, name)([tp], lr=0.01, **kw)
    sched = OneCycleLR(opt, max_lr=0.05, total_steps=60)
    tsched = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=0.05, total_steps=60)
    for _ in range(60):
        g = rng.standard_normal(300)
        opt.step([g])
        tp.grad = torch.tensor(g)
        topt.step()
        sched.step()
        tsched.step()
        assert opt.param_groups[0]["momentum"] == pytest.approx(topt.param_groups[0]["momentum"])
    np.testing.assert_allclose(p, tp.numpy(), rtol=1e-10, atol=1e-12)
