"""NAdam specifics: mu_product is per-param state, as in torch, and survives checkpoints."""

import math

import numpy as np
import pytest

import fusedoptim as fo


def _mu(t, beta1, psi):
    return beta1 * (1.0 - 0.5 * 0.96 ** (t * psi))


def test_mu_product_is_per_param_state(rng):
    p = [rng.standard_normal(10), rng.standard_normal(10)]
    opt = fo.NAdam(p, betas=(0.9, 0.999), momentum_decay=4e-3)
    g = [np.ones(10), np.ones(10)]
    for _ in range(5):
        opt.step(g)
    opt.step([g[0], None])          # param 1 skips: its step and mu_product stay behind
    expected = [math.prod(_mu(t, 0.9, 4e-3) for t in range(1, n + 1)) for n in (6, 5)]
    for i in (0, 1):
        assert isinstance(opt.state[i]["mu_product"], float)
        assert opt.state[i]["mu_product"] == pytest.approx(expected[i], rel=1e-15)
    assert opt.state_dict()["state"][1]["mu_product"] == opt.state[1]["mu_product"]


def test_same_step_different_mu_product_are_stepped_separately(rng):
    """momentum_decay changes between the two params' second steps, so at their third
    (shared) step their mu_products differ: one hp row per step count would be wrong for
    one of them."""
    kw = dict(lr=1e-2, betas=(0.9, 0.99), momentum_decay=0.05)
    p = [rng.standard_normal(8), rng.standard_normal(8)]
    q = [x.copy() for x in p]
    opt, ref = fo.NAdam(p, **kw), fo.reference.NAdam(q, **kw)
    g = lambda: [rng.standard_normal(8), rng.standard_normal(8)]
    plan = [g(), g(), g()]
    for o in (opt, ref):
        o.step(plan[0])                      # steps (1, 1)
        o.step([plan[1][0], None])           # (2, 1)
        o.param_groups[0]["momentum_decay"] = 0.5
        o.step([None, plan[1][1]])           # (2, 2), param 1's mu_2 uses the new value
        o.step(plan[2])                      # (3, 3)
    st = opt.state
    assert st[0]["step"] == st[1]["step"] == 3
    assert st[0]["mu_product"] != st[1]["mu_product"]
    for a, b in zip(p, q):
        assert a.tobytes() == b.tobytes()
    assert [s["mu_product"] for s in opt.state.values()] == \
           [s["mu_product"] for s in ref.state.values()]


def test_checkpoint_mu_product_is_validated():
    opt = fo.NAdam([np.ones(3)])
    opt.step([np.ones(3)])
    sd = opt.state_dict()
    fresh = fo.NAdam([np.ones(3)])
    bad = {**sd, "state": {0: {**sd["state"][0], "mu_product": "0.9"}}}
    with pytest.raises(TypeError, match=r"\['mu_product'\] must be a real number"):
        fresh.load_state_dict(bad)
    missing = {**sd, "state": {0: {k: v for k, v in sd["state"][0].items()
                                   if k != "mu_product"}}}
    with pytest.raises(ValueError, match="lacks \\['mu_product'\\]"):
        fresh.load_state_dict(missing)
    assert fresh.state == {}
    as_array = {**sd, "state": {0: {**sd["state"][0],
                                    "mu_product": np.array(sd["state"][0]["mu_product"])}}}
    fresh.load_state_dict(as_array)   # a 0-d array (e.g. a converted torch tensor) is fine
    assert fresh.state[0]["mu_product"] == sd["state"][0]["mu_product"]


def test_mu_product_matches_torch(rng):
    torch = pytest.importorskip("torch")
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        p = rng.standard_normal(100)
        t = torch.tensor(p.copy())
        opt = fo.NAdam([p], lr=1e-2, momentum_decay=0.02, weight_decay=0.1,
                       decoupled_weight_decay=True)
        topt = torch.optim.NAdam([t], lr=1e-2, momentum_decay=0.02, weight_decay=0.1,
                                 decoupled_weight_decay=True)
        for _ in range(30):
            g = rng.standard_normal(100)
            opt.step([g])
            t.grad = torch.tensor(g)
            topt.step()
        assert opt.state[0]["mu_product"] == pytest.approx(
            topt.state[t]["mu_product"].item(), rel=1e-14)
        np.testing.assert_allclose(p, t.numpy(), rtol=1e-10, atol=1e-13)
    finally:
        torch.set_default_dtype(default)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_functional_updates_mu_products_in_place(rng, dtype):
    kw = dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
              momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False)
    p_cls = [np.asarray(rng.standard_normal(s), dtype) for s in [(5,), (20_000,)]]
    p_fun, p_ref = [p.copy() for p in p_cls], [p.copy() for p in p_cls]
    zeros = lambda: [np.zeros_like(p) for p in p_cls]
    st_fun = (zeros(), zeros(), [1.0, 1.0], [0, 0])
    st_ref = (zeros(), zeros(), [1.0, 1.0], [0, 0])
    opt = fo.NAdam(p_cls, weight_decay=0.01)
    for k in range(12):
        g = [np.asarray(rng.standard_normal(p.shape), dtype) for p in p_cls]
        if k % 3 == 2:
            g[1] = None
        fo.functional.nadam(p_fun, g, *st_fun, **kw)
        fo.reference.nadam(p_ref, g, *st_ref, **kw)
        opt.step(g)
    for a, b, c in zip(p_fun, p_ref, p_cls):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    assert st_fun[2] == st_ref[2] == [opt.state[0]["mu_product"], opt.state[1]["mu_product"]]
    assert st_fun[3] == [12, 8]
    with pytest.raises(TypeError, match=r"mu_products\[0\] must be a real number"):
        fo.functional.nadam(p_fun, g, zeros(), zeros(), [None, 1.0], [0, 0], **kw)
