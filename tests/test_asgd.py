"""ASGD specifics: eta and mu are per-param state; ax averages the iterates after t0."""

import numpy as np
import pytest

import fusedoptim as fo


def test_eta_mu_schedule_in_state_and_checkpoint():
    lr, lambd, alpha, t0 = 0.05, 0.01, 0.6, 3.0
    opt = fo.ASGD([np.ones(4)], lr=lr, lambd=lambd, alpha=alpha, t0=t0)
    for t in range(1, 8):
        opt.step([np.ones(4)])
        st = opt.state[0]
        assert st["eta"] == lr / ((1 + lambd * lr * t) ** alpha)
        assert st["mu"] == 1 / max(1, t - t0)
    sd = opt.state_dict()["state"][0]
    assert isinstance(sd["eta"], float) and isinstance(sd["mu"], float)
    bad = fo.ASGD([np.ones(4)])
    with pytest.raises(ValueError, match=r"lacks \['eta'\]"):
        bad.load_state_dict({"state": {0: {k: v for k, v in sd.items() if k != "eta"}},
                             "param_groups": opt.state_dict()["param_groups"]})


def test_ax_is_the_average_of_the_iterates_after_t0(rng):
    """lambd = 0 keeps eta = lr. The mu used at step t was set at step t - 1, to
    1 / max(1, t - 1 - t0): with t0 = 2 it is 1 up to step 4 (ax = p) and 1/(t - 3) after,
    so ax after step T is the mean of the iterates of steps 4..T."""
    p = rng.standard_normal(6)
    opt = fo.ASGD([p], lr=0.1, lambd=0.0, t0=2.0)
    iterates = []
    for _ in range(12):
        opt.step([rng.standard_normal(6)])
        iterates.append(p.copy())
    np.testing.assert_allclose(opt.state[0]["ax"], np.mean(iterates[3:], axis=0), rtol=1e-13)


def test_lr_change_reaches_eta_one_step_later():
    p = np.zeros(1)
    opt = fo.ASGD([p], lr=0.1, lambd=0.0)
    opt.step([np.ones(1)])
    opt.param_groups[0]["lr"] = 1.0
    opt.step([np.ones(1)])          # still uses eta = 0.1 from the previous step, as torch
    np.testing.assert_allclose(p, [-0.2], rtol=1e-15)
    opt.step([np.ones(1)])
    np.testing.assert_allclose(p, [-1.2], rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ax_eta_mu_match_torch(rng, dtype):
    torch = pytest.importorskip("torch")
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32 if dtype == np.float32 else torch.float64)
    try:
        p = rng.standard_normal(500).astype(dtype)
        t = torch.tensor(p.copy())
        kw = dict(lr=0.02, lambd=1e-3, alpha=0.7, t0=10.0, weight_decay=0.01)
        opt, topt = fo.ASGD([p], **kw), torch.optim.ASGD([t], **kw)
        for _ in range(40):
            g = rng.standard_normal(500).astype(dtype)
            opt.step([g])
            t.grad = torch.tensor(g)
            topt.step()
        st, tst = opt.state[0], topt.state[t]
        rtol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(st["ax"], tst["ax"].numpy(), rtol=rtol, atol=rtol)
        np.testing.assert_allclose(p, t.numpy(), rtol=rtol, atol=rtol)
        assert st["eta"] == pytest.approx(tst["eta"].item(), rel=rtol)
        assert st["mu"] == pytest.approx(tst["mu"].item(), rel=rtol)
    finally:
        torch.set_default_dtype(default)


def test_an_eta_power_beyond_the_doubles_makes_eta_zero(rng):
    """(1 + lambd lr t) ** alpha overflows for large lambd and alpha: Python's float power
    raised OverflowError mid-step (found by tests/property; torch's default path raises it
    too, its capturable one computes the power in tensors: inf, so eta = lr / inf = 0). eta
    is then 0 and the param stays where the step with the last finite eta left it: the
    class, the twin and the functional entry alike."""
    kw = dict(lr=0.02, lambd=1e30, alpha=1e30, t0=0.0)
    start = rng.standard_normal(7)
    grads = [rng.standard_normal(7) for _ in range(3)]
    results = []
    for cls in (fo.ASGD, fo.reference.ASGD):
        p = start.copy()
        opt = cls([p], **kw)
        opt.step([grads[0]])                     # eta = lr here; the next eta overflows
        after_first = p.copy()
        assert opt.state[0]["eta"] == 0.0
        for g in grads[1:]:
            opt.step([g])
        assert opt.state[0]["eta"] == 0.0
        # eta = 0: p * (1 - lambd * 0) - 0 * g leaves p as it was
        assert p.tobytes() == after_first.tobytes()
        results.append(p)
    assert results[0].tobytes() == results[1].tobytes()
    etas, mus, p = [0.02], [1.0], start.copy()
    fo.functional.asgd([p], [grads[0]], [start.copy()], mus, etas, [0], **kw)
    assert etas == [0.0] and p.tobytes() == results[0].tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_functional_updates_mus_and_etas_in_place(rng, dtype):
    kw = dict(lr=0.01, lambd=1e-3, alpha=0.75, t0=4.0, weight_decay=0.0, maximize=True)
    p_cls = [np.asarray(rng.standard_normal(s), dtype) for s in [(5,), (20_000,)]]
    p_fun, p_ref = [p.copy() for p in p_cls], [p.copy() for p in p_cls]
    st_fun = ([np.zeros_like(p) for p in p_cls], [1.0, 1.0], [0.01, 0.01], [0, 0])
    st_ref = ([np.zeros_like(p) for p in p_cls], [1.0, 1.0], [0.01, 0.01], [0, 0])
    opt = fo.ASGD(p_cls, lr=0.01, lambd=1e-3, t0=4.0, maximize=True)
    for k in range(10):
        g = [np.asarray(rng.standard_normal(p.shape), dtype) for p in p_cls]
        if k % 4 == 1:
            g[0] = None
        fo.functional.asgd(p_fun, g, *st_fun, **kw)
        fo.reference.asgd(p_ref, g, *st_ref, **kw)
        opt.step(g)
    for a, b, c in zip(p_fun, p_ref, p_cls):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    assert st_fun[1] == st_ref[1] == [opt.state[i]["mu"] for i in (0, 1)]
    assert st_fun[2] == st_ref[2] == [opt.state[i]["eta"] for i in (0, 1)]
    assert st_fun[0][1].tobytes() == opt.state[1]["ax"].tobytes()
