"""AdaBelief: against the official adabelief-pytorch 0.2.1 (every option, float64 and float32),
against optax.adabelief where Optax has the rule, against the reference twin (bitwise), and
its branches, checkpoints, thread counts and bad input."""

import contextlib
import io
import itertools

import numpy as np
import pytest

import fusedoptim as fo
from _threads import assert_same_on_every_thread_count
from conftest import make_params

DTYPES = [np.float32, np.float64]
SHAPES = [(3, 5), (2_000,)]
FLAGS = ("amsgrad", "weight_decouple", "fixed_decay", "rectify", "degenerated_to_sgd")


def _config(rng, **flags):
    # beta2 below 0.6 keeps N_max <= 5 (never rectified: the SGD-style step or none on every
    # step); otherwise N_t < 5 for the first steps, then the rectified step.
    beta2 = float(rng.uniform(0.9, 0.9999) if rng.integers(4) else rng.uniform(0.0, 0.6))
    kw = dict(lr=float(10 ** rng.uniform(-4, -1.5)),
              betas=(float(rng.uniform(0.0, 0.99)), beta2),
              eps=float(rng.choice([1e-16, 1e-8, 10 ** rng.uniform(-16, -6)])),
              weight_decay=float(rng.uniform(0.0, 0.1)) if rng.integers(4) else 0.0)
    kw.update({f: bool(rng.integers(2)) for f in FLAGS})
    kw.update(flags)
    return kw


def _every_flag_combination(rng, half=False):
    """The 32 flag combinations, each with random continuous hyperparameters; `half`: the 16
    of the half fraction degenerated_to_sgd = xor of the others, which still has every flag
    both ways and every pair of flags in all four combinations."""
    out = []
    for bits in itertools.product([False, True], repeat=len(FLAGS) - 1):
        lasts = [sum(bits) % 2 == 1] if half else [False, True]
        out += [_config(rng, **dict(zip(FLAGS, bits + (last,)))) for last in lasts]
    return out


# -- adabelief-pytorch -------------------------------------------------------------------------

def _official(torch, params, kw):
    import adabelief_pytorch
    # print_change_log=False drops the banner; the flag lines it prints regardless go too
    with contextlib.redirect_stdout(io.StringIO()):
        return adabelief_pytorch.AdaBelief(params, print_change_log=False, **kw)


def _run_both(torch, rng, kw, dtype, steps):
    params = make_params(rng, dtype, SHAPES)
    tparams = [torch.tensor(p.copy()) for p in params]
    groups = [{"params": params[:1]}, {"params": params[1:], "lr": kw["lr"] * 0.5}]
    tgroups = [{"params": tparams[:1]}, {"params": tparams[1:], "lr": kw["lr"] * 0.5}]
    opt = fo.AdaBelief(groups, **kw)
    official = _official(torch, tgroups, kw)
    for _ in range(steps):
        grads = [np.asarray(rng.standard_normal(p.shape), dtype) for p in params]
        opt.step(grads)
        for t, g in zip(tparams, grads):
            t.grad = torch.tensor(g.copy())     # the L2 form adds to p.grad in place there
        official.step()
    return params, tparams, opt, official


def test_matches_adabelief_pytorch_float64_every_option(rng):
    """16 flag combinations (every flag both ways, every pair of flags in all four
    combinations), 120 steps each, two groups (the second with its own lr). float64: rtol
    1e-9 on params and state."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("adabelief_pytorch")
    for kw in _every_flag_combination(rng, half=True):
        params, tparams, opt, official = _run_both(torch, rng, kw, np.float64, 120)
        for i, (p, t) in enumerate(zip(params, tparams)):
            np.testing.assert_allclose(p, t.numpy(), rtol=1e-9, atol=1e-12, err_msg=str(kw))
            ost = official.state[t]
            assert opt.state[i]["step"] == ost["step"]
            keys = ["exp_avg", "exp_avg_var"] + (["max_exp_avg_var"] if kw["amsgrad"] else [])
            for k in keys:
                np.testing.assert_allclose(opt.state[i][k], ost[k].numpy(), rtol=1e-9,
                                           atol=1e-300, err_msg=f"{k} {kw}")


def test_matches_adabelief_pytorch_float32(rng):
    """float32, 100 steps, random configurations covering every flag. adabelief-pytorch
    rounds in another order (addcdiv's m / denom first, a division by sqrt(1 - beta2^t)):
    a few ulps per step, amplified when m changes sign over an eps-sized denominator; so
    rtol 1e-4 with an atol of 1e-5 (params are O(1))."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("adabelief_pytorch")
    configs = _every_flag_combination(rng, half=True)
    for kw in [configs[k] for k in (0, 1, 6, 7, 10, 11, 12, 13)]:     # each flag both ways
        params, tparams, opt, official = _run_both(torch, rng, kw, np.float32, 100)
        for p, t in zip(params, tparams):
            np.testing.assert_allclose(p, t.numpy(), rtol=1e-4, atol=1e-5, err_msg=str(kw))


def test_torch_drop_in_matches_adabelief_pytorch_on_a_model():
    """fusedoptim.torch.AdaBelief in a torch training loop, against the official class."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("adabelief_pytorch")
    import fusedoptim.torch as fot
    torch.manual_seed(0)
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)
    models = []
    for make in (lambda ps: fot.AdaBelief(ps, lr=1e-2, weight_decay=1e-2, amsgrad=True),
                 lambda ps: _official(torch, ps, dict(lr=1e-2, weight_decay=1e-2,
                                                      amsgrad=True))):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(),
                                    torch.nn.Linear(8, 1)).double()
        opt = make(list(model.parameters()))
        for _ in range(30):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-9,
                                   atol=1e-12)


# -- optax.adabelief ---------------------------------------------------------------------------

@pytest.fixture
def jax_x64():
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield jax
    jax.config.update("jax_enable_x64", before)


_OPTAX_RUN = {}


def _optax_adabelief_run(jax):
    """One jitted run over a sequence of grads, hyperparameters as traced arguments (compiled
    once). wd_l2 = 0 and wd_decoupled = 0 is optax.adabelief itself; the decays are Optax's
    add_decayed_weights before (L2) or after (decoupled) its scale_by_belief. adabelief with
    learning_rate=1 negates the update (exactly); add_decayed_weights(-wd) then scale(lr)
    make p - lr (u + wd p)."""
    if "adabelief" not in _OPTAX_RUN:
        import optax

        def run(p0, grads, lr, b1, b2, eps, wd_l2, wd_decoupled):
            tx = optax.chain(optax.add_decayed_weights(wd_l2),
                             optax.adabelief(learning_rate=1.0, b1=b1, b2=b2, eps=eps,
                                             eps_root=eps),
                             optax.add_decayed_weights(-wd_decoupled),
                             optax.scale(lr))

            def body(carry, g):
                p, state = carry
                u, state = tx.update(g, state, p)
                return (optax.apply_updates(p, u), state), None

            (p, _), _ = jax.lax.scan(body, (p0, tx.init(p0)), grads)
            return p
        _OPTAX_RUN["adabelief"] = jax.jit(run)
    return _OPTAX_RUN["adabelief"]


def test_matches_optax_adabelief_float64_where_optax_has_the_rule(jax_x64, rng):
    """rectify=False, amsgrad=False: optax.adabelief(lr, b1, b2, eps=eps, eps_root=eps), with
    weight_decay=0 as it is, and the three decay forms through add_decayed_weights (decoupled:
    wd after scale_by_belief; fixed_decay: wd / lr there; L2: wd before). float64, 120
    steps, rtol 1e-9."""
    run = _optax_adabelief_run(jax_x64)
    steps = 120
    forms = [dict(weight_decay=0.0), dict(weight_decouple=True), dict(weight_decouple=False),
             dict(weight_decouple=True, fixed_decay=True)]
    for form in forms * 2:
        kw = _config(rng, amsgrad=False, rectify=False, **form)
        if "weight_decay" not in form:
            kw["weight_decay"] = float(rng.uniform(0.01, 0.1))
        params = make_params(rng, np.float64, SHAPES)
        start = [p.copy() for p in params]
        grads = [rng.standard_normal((steps,) + p.shape) for p in params]
        opt = fo.AdaBelief(params, **kw)
        for t in range(steps):
            opt.step([g[t] for g in grads])
        wd, lr = kw["weight_decay"], kw["lr"]
        wd_l2 = 0.0 if kw["weight_decouple"] else wd
        wd_dec = (wd / lr if kw["fixed_decay"] else wd) if kw["weight_decouple"] else 0.0
        p_ox = run(start, grads, lr, *kw["betas"], kw["eps"], wd_l2, wd_dec)
        for p, q in zip(params, p_ox):
            np.testing.assert_allclose(p, np.asarray(q), rtol=1e-9, atol=1e-12,
                                       err_msg=str(kw))
        assert not np.allclose(params[1], start[1], rtol=1e-6, atol=0)


# -- the reference twin, the functional entry, the branches --------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_class_functional_and_reference_agree_bitwise(rng, dtype):
    """Every flag combination, 12 steps each (crossing N_t = 5 for beta2 near 0.999)."""
    for kw in _every_flag_combination(rng):
        p_cls = make_params(rng, dtype, SHAPES)
        p_fun, p_ref = [p.copy() for p in p_cls], [p.copy() for p in p_cls]
        zeros = lambda: [np.zeros_like(p) for p in p_cls]
        st_fun = [zeros() for _ in range(3)] + [[0] * len(p_cls)]
        st_ref = [zeros() for _ in range(3)] + [[0] * len(p_cls)]
        opt = fo.AdaBelief(p_cls, **kw)
        ref = fo.reference.AdaBelief([p.copy() for p in p_cls], **kw)
        fkw = dict(kw)
        fkw["beta1"], fkw["beta2"] = fkw.pop("betas")
        for _ in range(12):
            g = [np.asarray(rng.standard_normal(p.shape), dtype) for p in p_cls]
            fo.functional.adabelief(p_fun, g, *st_fun, **fkw)
            fo.reference.adabelief(p_ref, g, *st_ref, **fkw)
            opt.step(g)
            ref.step(g)
        for a, b, c, d in zip(p_fun, p_ref, p_cls, ref.param_groups[0]["params"]):
            assert a.tobytes() == b.tobytes() == c.tobytes() == d.tobytes(), kw
        names = ("exp_avg", "exp_avg_var") + (("max_exp_avg_var",) if kw["amsgrad"] else ())
        for k, name in enumerate(names):
            for i in range(len(p_cls)):
                assert opt.state[i][name].tobytes() == st_ref[k][i].tobytes() \
                    == ref.state[i][name].tobytes()


def test_eps_is_inside_s_and_in_the_denominator():
    """One unrectified step of a zero grad: m = 0, r = 0, s = eps exactly; the param moves
    only by the decay."""
    p = np.ones(3)
    opt = fo.AdaBelief([p], lr=0.1, eps=1e-8, rectify=False, weight_decay=0.0)
    opt.step([np.zeros(3)])
    np.testing.assert_array_equal(opt.state[0]["exp_avg_var"], 1e-8)
    np.testing.assert_array_equal(p, 1.0)
    g = np.array([1.0, -2.0, 0.5])
    opt.step([g])
    m = 0.1 * g
    s = 0.999 * 1e-8 + 0.001 * (g - m) ** 2 + 1e-8
    np.testing.assert_allclose(opt.state[0]["exp_avg_var"], s, rtol=1e-15)
    expected = 1.0 - 0.1 / (1 - 0.9 ** 2) * m / (np.sqrt(s) / np.sqrt(1 - 0.999 ** 2) + 1e-8)
    np.testing.assert_allclose(p, expected, rtol=1e-14)


@pytest.mark.parametrize("degenerated", [False, True])
def test_below_the_rectification_threshold(rng, degenerated):
    """beta2 = 0.5: N_max = 3 < 5 on every step. degenerated_to_sgd: p -= lr m / (1 -
    beta1^t); otherwise the param only decays (the moments still update)."""
    p = rng.standard_normal(20)
    q, m = p.copy(), np.zeros(20)
    opt = fo.AdaBelief([p], lr=0.05, betas=(0.8, 0.5), weight_decay=0.1,
                       degenerated_to_sgd=degenerated)
    for t in range(1, 6):
        g = rng.standard_normal(20)
        opt.step([g])
        q = q * (1 - 0.05 * 0.1)
        m = 0.8 * m + 0.2 * g
        if degenerated:
            q = q - 0.05 / (1 - 0.8 ** t) * m
        np.testing.assert_allclose(p, q, rtol=1e-13)
    np.testing.assert_allclose(opt.state[0]["exp_avg"], m, rtol=1e-13)


def test_rectified_amsgrad_keeps_the_max_but_divides_by_s(rng):
    """As adabelief-pytorch: once rectified (N_t >= 5), amsgrad's running max is kept but not
    used; so with rectify the amsgrad run equals the plain one while N_t >= 5 on every step."""
    p = rng.standard_normal(30)
    q = p.copy()
    kw = dict(lr=1e-2, betas=(0.9, 0.9), degenerated_to_sgd=True)     # N_t >= 5 from t = 6
    a = fo.AdaBelief([p], amsgrad=True, **kw)
    b = fo.AdaBelief([q], amsgrad=False, **kw)
    for _ in range(20):
        g = rng.standard_normal(30) * rng.uniform(0.1, 10)
        a.step([g])
        b.step([g])
    assert p.tobytes() == q.tobytes()
    assert np.all(a.state[0]["max_exp_avg_var"] >= a.state[0]["exp_avg_var"])
    assert np.any(a.state[0]["max_exp_avg_var"] > a.state[0]["exp_avg_var"])


# -- checkpoints, threads, bad input -------------------------------------------------------------

def test_checkpoint_mid_run_continues_bitwise(rng):
    kw = dict(lr=3e-3, weight_decay=0.05, amsgrad=True)
    a = make_params(rng, np.float32, SHAPES)
    b = [p.copy() for p in a]
    grads = [[np.asarray(rng.standard_normal(p.shape), np.float32) for p in a]
             for _ in range(10)]
    opt_a, opt_b = fo.AdaBelief(a, **kw), fo.AdaBelief(b, **kw)
    for g in grads[:5]:         # inside N_t < 5, then past it after the reload
        opt_a.step(g)
        opt_b.step(g)
    sd = opt_a.state_dict()
    opt_c = fo.AdaBelief(b, **kw)
    opt_c.load_state_dict(sd)
    for g in grads[5:]:
        opt_a.step(g)
        opt_c.step(g)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()
    assert sorted(sd["state"][0]) == ["exp_avg", "exp_avg_var", "max_exp_avg_var", "step"]


def test_every_update_is_bitwise_identical_across_thread_counts(rng):
    start = make_params(rng, np.float32, [(200_003,), (17,), (65_536,)])
    seq = [[np.asarray(rng.standard_normal(p.shape), np.float32) for p in start]
           for _ in range(7)]
    configs = [dict(amsgrad=True, weight_decay=0.1),                    # SGD-style, rectified
               dict(amsgrad=True, rectify=False, weight_decouple=False, weight_decay=0.1),
               dict(degenerated_to_sgd=False, fixed_decay=True, weight_decay=0.01)]
    for kw in configs:
        def run():
            params = [p.copy() for p in start]
            opt = fo.AdaBelief(params, lr=1e-2, **kw)
            for g in seq:
                opt.step(g)
            return b"".join(p.tobytes() for p in params)
        assert_same_on_every_thread_count(run, what=kw)


@pytest.mark.parametrize("bad, name, shown", [
    (dict(beta1=1.0), r"betas\[0\]", "1.0"), (dict(beta2=-0.5), r"betas\[1\]", "-0.5"),
    (dict(eps=-1.0), "eps", "-1.0"), (dict(lr=float("inf")), "lr", "inf"),
    (dict(weight_decay=float("nan")), "weight_decay", "nan"),
    (dict(amsgrad="yes"), "amsgrad", "'yes'"), (dict(weight_decouple=2), "weight_decouple", "2"),
    (dict(fixed_decay=None), "fixed_decay", "None"), (dict(rectify=0.5), "rectify", "0.5"),
    (dict(degenerated_to_sgd="no"), "degenerated_to_sgd", "'no'")])
def test_functional_bad_input_names_it_and_changes_nothing(rng, bad, name, shown):
    p = [rng.standard_normal(10)]
    bufs = [[rng.standard_normal(10)] for _ in range(3)]
    steps = [3]
    snapshot = [p[0].copy()] + [b[0].copy() for b in bufs]
    kw = dict(lr=1e-3, amsgrad=True)
    kw.update(bad)
    with pytest.raises((TypeError, ValueError), match=name) as err:
        fo.functional.adabelief(p, [rng.standard_normal(10)], *bufs, steps, **kw)
    assert shown in str(err.value)
    for a, b in zip([p[0]] + [b[0] for b in bufs], snapshot):
        assert a.tobytes() == b.tobytes()
    assert steps == [3]
