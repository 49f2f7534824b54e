"""Adan: against optax.adan (float64, where Optax's rule is the official one), against the
official release's rule written out in NumPy (every beta2), against the reference twin
(bitwise), and its first step, checkpoints, thread counts and bad input."""

import numpy as np
import pytest

import fusedoptim as fo
from _threads import assert_same_on_every_thread_count
from conftest import make_params

DTYPES = [np.float32, np.float64]
SHAPES = [(37,), (3, 5), (40_000,)]


def _configs(rng, k, beta2=None):
    """k random configurations; no_prox and a nonzero weight_decay alternate, so both decay
    forms (and no decay) occur whatever the draw."""
    out = []
    for j in range(k):
        out.append(dict(
            lr=float(10 ** rng.uniform(-4, -1.5)),
            betas=(float(rng.uniform(0.0, 0.99)),
                   float(rng.uniform(0.0, 0.99)) if beta2 is None else beta2,
                   float(rng.uniform(0.9, 0.9999))),
            eps=float(10 ** rng.uniform(-10, -6)),
            weight_decay=0.0 if j % 3 == 2 else float(rng.uniform(0.01, 0.5)),
            no_prox=bool(j % 2)))
    return out


# -- optax.adan --------------------------------------------------------------------------------

@pytest.fixture
def jax_x64():
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield jax
    jax.config.update("jax_enable_x64", before)


_OPTAX_RUN = {}


def _optax_adan_run(jax):
    """One jitted run of optax.adan over a sequence of grads, the hyperparameters as traced
    arguments (compiled once for every configuration). prox (0 or 1): the official proximal
    decay p / (1 + lr wd), applied to optax.adan's weight-decay-free result, since Optax only
    has the no_prox form."""
    if "adan" not in _OPTAX_RUN:
        import optax

        def run(p0, grads, lr, b1, b2, b3, eps, wd, prox):
            tx = optax.adan(learning_rate=lr, b1=b1, b2=b2, b3=b3, eps=eps, eps_root=0.0,
                            weight_decay=wd * (1.0 - prox))

            def body(carry, g):
                p, state = carry
                u, state = tx.update(g, state, p)
                p = jax.tree.map(lambda x, y: (x + y) / (1.0 + lr * wd * prox), p, u)
                return (p, state), None

            (p, state), _ = jax.lax.scan(body, (p0, tx.init(p0)), grads)
            return p, state[0]
        _OPTAX_RUN["adan"] = jax.jit(run)
    return _OPTAX_RUN["adan"]


def test_matches_optax_adan_float64_where_optax_is_official(jax_x64, rng):
    """optax.adan weights the Nesterov term and the update's difference term with 1 - b2,
    the official release with beta2: the two agree exactly when beta2 = 0.5. Mapping:
    b1, b2, b3 = betas, eps=eps, eps_root=0, weight_decay=wd for no_prox=True; for the
    proximal form the division by 1 + lr wd is applied to Optax's wd=0 result."""
    run = _optax_adan_run(jax_x64)
    steps = 120
    for kw in _configs(rng, 6, beta2=0.5):
        params = make_params(rng, np.float64, SHAPES)
        start = [p.copy() for p in params]
        grads = [rng.standard_normal((steps,) + p.shape) for p in params]
        opt = fo.Adan(params, **kw)
        for t in range(steps):
            opt.step([g[t] for g in grads])
        b1, b2, b3 = kw["betas"]
        p_ox, st = run(start, grads, kw["lr"], b1, b2, b3, kw["eps"], kw["weight_decay"],
                       0.0 if kw["no_prox"] else 1.0)
        for i, p in enumerate(params):
            np.testing.assert_allclose(p, np.asarray(p_ox[i]), rtol=1e-9, atol=1e-12)
            s = opt.state[i]
            # optax's state: m, v (the difference's EMA), n, g (the last grad), t
            np.testing.assert_allclose(s["exp_avg"], np.asarray(st.m[i]), rtol=1e-9, atol=1e-15)
            np.testing.assert_allclose(s["exp_avg_diff"], np.asarray(st.v[i]), rtol=1e-9,
                                       atol=1e-15)
            np.testing.assert_allclose(s["exp_avg_sq"], np.asarray(st.n[i]), rtol=1e-9)
            assert np.array_equal(s["neg_pre_grad"], -np.asarray(st.g[i]))
        assert not np.allclose(params[2], start[2], rtol=1e-6, atol=0)


def test_optax_differs_from_the_official_rule_away_from_beta2_half(jax_x64, rng):
    """The documented difference is real: at the default beta2 = 0.92, Optax's trajectory
    leaves the official one (so the mapping above must pin beta2 = 0.5)."""
    run = _optax_adan_run(jax_x64)
    p = [rng.standard_normal(500)]
    grads = [rng.standard_normal((20, 500))]
    ours = [p[0].copy()]
    opt = fo.Adan(ours, lr=1e-2)
    for t in range(20):
        opt.step([grads[0][t]])
    p_ox, _ = run(p, grads, 1e-2, 0.98, 0.92, 0.99, 1e-8, 0.0, 1.0)
    assert not np.allclose(ours[0], np.asarray(p_ox[0]), rtol=1e-3, atol=0)


# -- the official release's rule, written out ----------------------------------------------------

def _official_adan(p, g, state, t, lr, betas, eps, weight_decay, no_prox):
    """github.com/sail-sg/Adan adan.py, _single_tensor_adan, one step, as its operations
    run (in the array's dtype): neg_pre_grad starts at -g on step 1; each beta weights the
    old value; two separate addcdivs; a division by sqrt(1 - beta3^t)."""
    b1, b2, b3 = betas
    if t == 1:
        state["neg_pre_grad"] = -g
    m, n, d = state["exp_avg"], state["exp_avg_sq"], state["exp_avg_diff"]
    diff = state["neg_pre_grad"] + g
    m[...] = m * b1 + g * (1 - b1)
    d[...] = d * b2 + diff * (1 - b2)
    nt = diff * b2 + g
    n[...] = n * b3 + nt * nt * (1 - b3)
    denom = np.sqrt(n) / np.sqrt(1 - b3 ** t) + eps
    if no_prox:
        p *= 1 - lr * weight_decay
    p -= lr / (1 - b1 ** t) * (m / denom)
    p -= lr * b2 / (1 - b2 ** t) * (d / denom)
    if not no_prox:
        p /= 1 + lr * weight_decay
    state["neg_pre_grad"] = -g


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_the_official_rule_for_every_beta2(rng, dtype):
    """Where Optax cannot check (beta2 != 0.5). float64: rtol 1e-9. float32: the official
    release's separate roundings (two addcdivs, a division by sqrt(bc3)) against the fused
    order, a few float32 ulps per step, grown over 120 steps by the eps-sized denominators
    on a sign change of m: rtol 1e-4 with an atol of 1e-5 of the param scale."""
    steps = 120
    for kw in _configs(rng, 6):
        params = make_params(rng, dtype, SHAPES)
        mine = [p.copy() for p in params]
        states = [{k: np.zeros_like(p) for k in ("exp_avg", "exp_avg_sq", "exp_avg_diff")}
                  for p in params]
        opt = fo.Adan(mine, **kw)
        for t in range(1, steps + 1):
            grads = [np.asarray(rng.standard_normal(p.shape), dtype) for p in params]
            opt.step(grads)
            for p, g, st in zip(params, grads, states):
                _official_adan(p, g, st, t, **kw)
        for i, (a, b) in enumerate(zip(mine, params)):
            if dtype == np.float64:
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
                for k in ("exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad"):
                    np.testing.assert_allclose(opt.state[i][k], states[i][k], rtol=1e-9,
                                               atol=1e-15)
            else:
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# -- the reference twin, the functional entry ----------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_class_functional_and_reference_agree_bitwise(rng, dtype):
    for kw in _configs(rng, 4):
        p_cls = make_params(rng, dtype, SHAPES)
        p_fun, p_ref = [p.copy() for p in p_cls], [p.copy() for p in p_cls]
        zeros = lambda: [np.zeros_like(p) for p in p_cls]
        st_fun = [zeros() for _ in range(4)] + [[0] * len(p_cls)]
        st_ref = [zeros() for _ in range(4)] + [[0] * len(p_cls)]
        opt = fo.Adan(p_cls, **kw)
        ref = fo.reference.Adan([p.copy() for p in p_cls], **kw)
        fkw = {k: v for k, v in kw.items()}
        for _ in range(30):
            g = [np.asarray(rng.standard_normal(p.shape), dtype) for p in p_cls]
            fo.functional.adan(p_fun, g, *st_fun, **fkw)
            fo.reference.adan(p_ref, g, *st_ref, **fkw)
            opt.step(g)
            ref.step(g)
        for a, b, c, d in zip(p_fun, p_ref, p_cls, ref.param_groups[0]["params"]):
            assert a.tobytes() == b.tobytes() == c.tobytes() == d.tobytes()
        for k, name in enumerate(("exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad")):
            for i in range(len(p_cls)):
                assert opt.state[i][name].tobytes() == st_ref[k][i].tobytes() \
                    == ref.state[i][name].tobytes()


def test_first_step_has_no_difference_and_stores_minus_the_grad(rng):
    p = rng.standard_normal(100)
    g = rng.standard_normal(100)
    opt = fo.Adan([p], lr=1e-2, betas=(0.9, 0.8, 0.95), eps=1e-8)
    opt.step([g])
    st = opt.state[0]
    assert np.all(st["exp_avg_diff"] == 0)
    assert np.array_equal(st["neg_pre_grad"], -g)
    np.testing.assert_array_equal(st["exp_avg_sq"], (1 - 0.95) * g * g)
    # step 2: the difference is g2 - g1
    g2 = rng.standard_normal(100)
    opt.step([g2])
    np.testing.assert_array_equal(st["exp_avg_diff"], (1 - 0.8) * (g2 - g))
    assert np.array_equal(st["neg_pre_grad"], -g2)


def test_decay_forms(rng):
    """Zero grads after the first step leave only the decay visible where the moments are
    tiny: no_prox multiplies by 1 - lr wd before the update, prox divides by 1 + lr wd after."""
    for no_prox in (False, True):
        p = np.ones(4)
        opt = fo.Adan([p], lr=0.1, weight_decay=0.5, no_prox=no_prox)
        opt.step([np.zeros(4)])         # zero grad, zero moments: only the decay acts
        expected = 1 - 0.1 * 0.5 if no_prox else 1 / (1 + 0.1 * 0.5)
        np.testing.assert_allclose(p, expected, rtol=1e-15)


def test_grad_scale_unscales_the_stored_previous_grad(rng):
    p = rng.standard_normal(50)
    q = p.copy()
    g = [rng.standard_normal(50) for _ in range(3)]
    a = fo.Adan([p], lr=1e-2)
    b = fo.Adan([q], lr=1e-2)
    for x in g:
        a.step([x * 8.0], grad_scale=8.0)
        b.step([x])
    assert p.tobytes() == q.tobytes()
    assert np.array_equal(a.state[0]["neg_pre_grad"], -g[-1])


# -- checkpoints, threads, bad input -------------------------------------------------------------

def test_checkpoint_mid_run_continues_bitwise(rng):
    kw = dict(lr=3e-3, betas=(0.9, 0.9, 0.99), weight_decay=0.05)
    a = make_params(rng, np.float32, SHAPES)
    b = [p.copy() for p in a]
    grads = [[np.asarray(rng.standard_normal(p.shape), np.float32) for p in a]
             for _ in range(8)]
    opt_a = fo.Adan(a, **kw)
    opt_b = fo.Adan(b, **kw)
    for g in grads[:4]:
        opt_a.step(g)
        opt_b.step(g)
    sd = opt_a.state_dict()
    opt_c = fo.Adan(b, **kw)
    opt_c.load_state_dict(sd)
    for g in grads[4:]:
        opt_a.step(g)
        opt_c.step(g)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()
    assert sorted(sd["state"][0]) == ["exp_avg", "exp_avg_diff", "exp_avg_sq", "neg_pre_grad",
                                      "step"]


@pytest.mark.parametrize("no_prox", [False, True])
def test_every_mode_is_bitwise_identical_across_thread_counts(rng, no_prox):
    start = make_params(rng, np.float32, [(200_003,), (17,), (65_536,)])
    seq = [[np.asarray(rng.standard_normal(p.shape), np.float32) for p in start]
           for _ in range(3)]

    def run():
        params = [p.copy() for p in start]
        opt = fo.Adan(params, lr=1e-2, weight_decay=0.1, no_prox=no_prox)
        for g in seq:        # step 1 (first-step mode), then the general one
            opt.step(g)
        return (b"".join(p.tobytes() for p in params)
                + b"".join(opt.state[i]["neg_pre_grad"].tobytes() for i in range(3)))
    assert_same_on_every_thread_count(run)


@pytest.mark.parametrize("bad, name, shown", [
    (dict(betas=(0.98, 0.92)), "betas", "(0.98, 0.92)"),
    (dict(betas=(0.98, 0.92, 1.0)), "betas[2]", "1.0"),
    (dict(betas=(0.98, "x", 0.99)), "betas[1]", "'x'"), (dict(eps=-1.0), "eps", "-1.0"),
    (dict(lr=float("nan")), "lr", "nan"), (dict(weight_decay=-1.0), "weight_decay", "-1.0"),
    (dict(no_prox=3), "no_prox", "3")])
def test_functional_bad_input_names_it_and_changes_nothing(rng, bad, name, shown):
    p = [rng.standard_normal(10)]
    bufs = [[rng.standard_normal(10)] for _ in range(4)]
    steps = [3]
    snapshot = [p[0].copy()] + [b[0].copy() for b in bufs]
    kw = dict(lr=1e-3)
    kw.update(bad)
    with pytest.raises((TypeError, ValueError), match=name.replace("[", r"\[")) as err:
        fo.functional.adan(p, [rng.standard_normal(10)], *bufs, steps, **kw)
    assert shown in str(err.value)
    for a, b in zip([p[0]] + [b[0] for b in bufs], snapshot):
        assert a.tobytes() == b.tobytes()
    assert steps == [3]
