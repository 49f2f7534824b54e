"""Prodigy: against the official release (prodigyopt) and Optax's contrib.prodigy, the NumPy
twin bitwise, and the generic battery run here (see test_spec.OWN_BATTERY: Prodigy's groups
share one step size, every lr equal or 0, which the generic two-lr battery cannot be)."""

import copy
import math

import numpy as np
import pytest

import fusedoptim as fo
from cases import PRODIGY_CASE

DTYPES = [np.float32, np.float64]
STEPS = 110
SHAPES = [(7,), (3, 5), (2_000,), (1,)]


_config = PRODIGY_CASE.sample


def _quadratic_grads(rng, params, targets, dtype, skip=None):
    """Grads of 0.5 |p - target|^2 plus noise: a direction D can learn (pure noise would
    leave D at d0). `skip`: the indices that get None."""
    return [None if skip is not None and i in skip else
            np.asarray((p - c) + 0.1 * rng.standard_normal(p.shape), dtype)
            for i, (p, c) in enumerate(zip(params, targets))]


def _group_overrides(rng, kw):
    """Per-group options prodigyopt reads from each group (lr: the same, or 0)."""
    return dict(weight_decay=float(rng.choice([0.0, rng.uniform(0, 0.1)])),
                eps=float(10 ** rng.uniform(-8, -5)),
                safeguard_warmup=bool(rng.integers(2)),
                # frozen (lr 0) only with momentum: with beta1 = 0 a frozen group steps by
                # g / (d eps) on its never-updated v = 0 (prodigyopt's rule), which overflows
                lr=float(rng.choice([kw["lr"], kw["lr"], 0.0 if kw["betas"][0] > 0 else
                                     kw["lr"]])))


def _groups(params, overrides):
    return [{"params": params[:2]}, {"params": params[2:], **overrides}]


# -- against the official release ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_prodigyopt_over_110_steps_two_groups(rng, dtype):
    """prodigyopt 1.1.2's Prodigy on torch tensors of the same dtype, 110 steps, random
    configurations covering every option, two groups (the second with its own weight_decay,
    eps, safeguard_warmup, and lr equal or 0), grads sometimes missing.
    float64: rtol 1e-9. float32: the D estimate's sums run in float32 in torch (torch.dot,
    then .item()) and in double here, so D differs by ~1e-6 relative and every step by as
    much: params within 2e-5 of each tensor's largest magnitude, D within rtol 1e-5 (measured:
    1.2e-6 and 3e-7 at worst over six random configurations)."""
    torch = pytest.importorskip("torch")
    prodigyopt = pytest.importorskip("prodigyopt")
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    for trial in range(3):
        kw = _config(rng)
        over = _group_overrides(rng, kw)
        params = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
        start = [p.copy() for p in params]
        tparams = [torch.tensor(p, dtype=tdtype) for p in params]
        opt = fo.Prodigy(_groups(params, over), **kw)
        topt = prodigyopt.Prodigy(_groups(tparams, over), **kw)
        targets = [rng.standard_normal(p.shape) * 3 for p in params]
        for t in range(STEPS):
            grads = _quadratic_grads(rng, params, targets, dtype,
                                     skip={i for i in range(len(params)) if (t + i) % 9 == 4})
            for tp, g in zip(tparams, grads):
                # prodigyopt adds the L2 term into p.grad in place: give it a copy
                tp.grad = None if g is None else torch.tensor(g.copy(), dtype=tdtype)
            opt.step(grads)
            topt.step()
        for p, tp, s in zip(params, tparams, start):
            e = tp.numpy()
            if dtype == np.float64:
                np.testing.assert_allclose(p, e, rtol=1e-9, atol=1e-300)
            else:
                np.testing.assert_allclose(p, e, rtol=0, atol=2e-5 * np.abs(e).max())
        assert any(not np.array_equal(p, s) for p, s in zip(params, start))
        rtol = 1e-9 if dtype == np.float64 else 1e-5
        for g, tg in zip(opt.param_groups, topt.param_groups):
            for key in ("d", "d_max", "d_numerator", "d_denom", "d_hat"):
                np.testing.assert_allclose(g[key], float(tg[key]), rtol=rtol, err_msg=key)
            assert g["k"] == tg["k"]
        assert opt.param_groups[0]["d"] > kw["d0"]          # D was learned
        for i, tp in enumerate(tparams):
            tst, st = topt.state[tp], opt.state[i]
            assert st["step"] == tst["step"]
            for key in ("exp_avg_sq", "s", "p0") + (("exp_avg",) if kw["betas"][0] > 0 else ()):
                e = tst[key].numpy()
                if dtype == np.float64:
                    if key == "p0" and e.ndim == 0:     # prodigyopt's 0-d p0 of a zero param
                        e = np.zeros_like(st[key])
                    e = e.reshape(st[key].shape)        # prodigyopt's s and p0 are flat
                    np.testing.assert_allclose(st[key], e, rtol=1e-9, atol=1e-300, err_msg=key)


def test_zero_grads_are_not_a_step_as_in_prodigyopt(rng):
    """sum |s| == 0 (all grads zero, or every lr 0): moments move, params do not, no step is
    counted, D stays; as prodigyopt."""
    torch = pytest.importorskip("torch")
    prodigyopt = pytest.importorskip("prodigyopt")
    p = [rng.standard_normal(5)]
    tp = [torch.tensor(p[0])]
    opt, topt = fo.Prodigy(p, weight_decay=0.1), prodigyopt.Prodigy(tp, weight_decay=0.1)
    before = p[0].copy()
    for _ in range(2):
        opt.step([np.zeros(5)])
        tp[0].grad = torch.zeros(5, dtype=torch.float64)
        topt.step()
    assert p[0].tobytes() == before.tobytes()
    np.testing.assert_array_equal(tp[0].numpy(), before)
    assert opt.state[0]["step"] == topt.state[tp[0]]["step"] == 0
    assert opt.param_groups[0]["k"] == topt.param_groups[0]["k"] == 0
    assert opt.param_groups[0]["d"] == 1e-6
    for t in range(5):                       # then it learns as prodigyopt does
        g = p[0] - 3.0 + 0.1 * rng.standard_normal(5)
        opt.step([g])
        tp[0].grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(p[0], tp[0].numpy(), rtol=1e-12)
    np.testing.assert_allclose(opt.param_groups[0]["d"], topt.param_groups[0]["d"], rtol=1e-12)


def test_matches_optax_contrib_prodigy_with_the_mapping(rng):
    """optax.contrib.prodigy under jax_enable_x64, 110 steps: the stated mapping
    (use_bias_correction=True, growth_rate=inf, beta1 > 0; decouple=False as
    add_decayed_weights before it, with Optax's weight_decay 0), float64 rtol 1e-9."""
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    optax = pytest.importorskip("optax")
    jax.config.update("jax_enable_x64", True)

    def run(params, grads, lr, b1, b2, b3, eps, d0, d_coef, wd, l2, safeguard):
        tx = optax.chain(optax.add_decayed_weights(l2),
                         optax.contrib.prodigy(lr, betas=(b1, b2), beta3=b3, eps=eps,
                                               estim_lr0=d0, estim_lr_coef=d_coef,
                                               weight_decay=wd, safeguard_warmup=safeguard))

        def body(carry, g):
            p, state = carry
            updates, state = tx.update(g, state, p)
            return (optax.apply_updates(p, updates), state), None
        (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), grads)
        return params
    # safeguard_warmup is a Python flag in Optax: one compile, for the value drawn here
    safeguard = bool(rng.integers(2))
    jitted = {safeguard: jax.jit(lambda *a: run(*a, safeguard=safeguard))}
    for trial in range(3):
        kw = _config(rng)
        kw.update(use_bias_correction=True, growth_rate=math.inf, safeguard_warmup=safeguard)
        if kw["betas"][0] == 0:     # Optax's m = d g uses the old d there (see the docstring)
            kw["betas"] = (0.9, kw["betas"][1])
        b3 = kw["beta3"] if kw["beta3"] is not None else math.sqrt(kw["betas"][1])
        wd, l2 = ((kw["weight_decay"], 0.0) if kw["decouple"] else (0.0, kw["weight_decay"]))
        params = [rng.standard_normal(s) for s in SHAPES]
        # a fixed gradient field with a direction (Optax's scan cannot take our params'
        # feedback): a constant pull plus noise, so that D grows
        grads = [0.5 + rng.standard_normal((STEPS, *p.shape)) for p in params]
        expected = jitted[kw["safeguard_warmup"]](
            [jnp.asarray(p) for p in params], [jnp.asarray(g) for g in grads], kw["lr"],
            kw["betas"][0], kw["betas"][1], b3, kw["eps"], kw["d0"], kw["d_coef"], wd, l2)
        opt = fo.Prodigy(params, **kw)
        for t in range(STEPS):
            opt.step([g[t] for g in grads])
        for p, e in zip(params, expected):
            np.testing.assert_allclose(p, np.asarray(e), rtol=1e-9, atol=1e-300)


# -- the twin, threads, the functional entry ------------------------------------------------------

def _run_pair(rng, dtype, kw, over, steps, shapes=((3, 3), (40_000,), (5,), (70_001,))):
    params = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
    ref_params = [p.copy() for p in params]
    opt = fo.Prodigy(_groups(params, over), **kw)
    ref = fo.reference.Prodigy(_groups(ref_params, over), **kw)
    targets = [rng.standard_normal(p.shape) * 3 for p in params]
    for t in range(steps):
        g = _quadratic_grads(rng, params, targets, dtype,
                             skip={i for i in range(len(params)) if (t + i) % 7 == 3})
        opt.step(g)
        ref.step(g)
    return opt, ref, params, ref_params


@pytest.mark.parametrize("dtype", DTYPES)
def test_twin_matches_bitwise(rng, dtype):
    """Two groups, every option, grads sometimes missing: params, every state buffer and
    the D state bitwise (the twin folds the driver's segments in the same order)."""
    for trial in range(3):
        kw = _config(rng)
        opt, ref, params, ref_params = _run_pair(rng, dtype, kw, _group_overrides(rng, kw), 25)
        for a, b in zip(params, ref_params):
            assert a.tobytes() == b.tobytes()
        for i in opt.state:
            for k, val in opt.state[i].items():
                other = ref.state[i][k]
                assert (val.tobytes() == other.tobytes() if isinstance(val, np.ndarray)
                        else val == other), k
        assert opt.param_groups[0]["d"] > kw["d0"]
        for g, rg in zip(opt.param_groups, ref.param_groups):
            assert {k: v for k, v in g.items() if k != "params"} == \
                {k: v for k, v in rg.items() if k != "params"}


def test_bitwise_identical_across_thread_counts(rng):
    kw = _config(rng)
    over = _group_overrides(rng, kw)
    start = [np.asarray(rng.standard_normal(n), np.float32) for n in (200_003, 17, 65_536)]
    grads = [[np.asarray(0.5 + rng.standard_normal(p.shape), np.float32) for p in start]
             for _ in range(5)]
    before = fo.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            fo.set_num_threads(n)
            params = [p.copy() for p in start]
            opt = fo.Prodigy(_groups(params, over), **kw)
            for g in grads:
                opt.step(g)
            results.append((params, opt.param_groups[0]["d"], opt.param_groups[0]["d_denom"]))
    finally:
        fo.set_num_threads(before)
    for params, d, denom in results[1:]:
        assert d == results[0][1] and denom == results[0][2]
        for a, b in zip(results[0][0], params):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_matches_class_bitwise_and_reference(rng, dtype):
    kw = _config(rng)
    hyper = dict(kw)
    hyper["beta1"], hyper["beta2"] = hyper.pop("betas")
    shapes = [(3, 3), (40_000,), (5,)]
    p_cls = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
    p_fun, p_ref = [p.copy() for p in p_cls], [p.copy() for p in p_cls]

    def state():
        n = len(shapes)
        return ([np.zeros_like(p) for p in p_cls], [np.zeros_like(p) for p in p_cls],
                [np.zeros_like(p) for p in p_cls], [np.zeros_like(p) for p in p_cls],
                [kw["d0"]] * n, [kw["d0"]] * n, [0.0] * n, [0.0] * n, [0] * n)
    st_fun, st_ref = state(), state()
    opt = fo.Prodigy(p_cls, **kw)
    for t in range(20):
        g = [np.asarray(0.5 + rng.standard_normal(p.shape), dtype) for p in p_cls]
        if t == 0:
            g = [np.zeros_like(x) for x in g]              # the zero-sum exit too
        opt.step(g)
        fo.functional.prodigy(p_fun, g, *st_fun, **hyper)
        fo.reference.prodigy(p_ref, g, *st_ref, **hyper)
    for a, b in zip(p_cls, p_fun):
        assert a.tobytes() == b.tobytes()
    tol = dict(rtol=1e-12) if dtype == np.float64 else dict(rtol=1e-5)
    for a, b in zip(p_fun, p_ref):
        np.testing.assert_allclose(a, b, atol=tol["rtol"] * np.abs(b).max(), rtol=0)
    # the zero first step is the zero-sum exit unless an L2 term makes the grads nonzero
    steps = 19 if kw["weight_decay"] == 0 or kw["decouple"] else 20
    assert st_fun[-1] == [steps] * 3 and st_ref[-1] == [steps] * 3
    assert st_fun[4] == [opt.param_groups[0]["d"]] * 3
    assert st_fun[7] == [float(steps)] * 3 and opt.param_groups[0]["k"] == steps
    for i, st in opt.state.items():
        for k, lst in zip(("exp_avg", "exp_avg_sq", "s", "p0"), st_fun[:4]):
            assert st[k].tobytes() == lst[i].tobytes(), k
        assert (st["d"], st["d_max"], st["d_numerator"], st["k"]) == \
            (st_fun[4][i], st_fun[5][i], st_fun[6][i], st_fun[7][i])


# -- checkpoints, bad input, skip_nonfinite, grad_scale, memory -----------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_state_dict_round_trip_is_bitwise(rng, dtype):
    kw = _config(rng)
    over = _group_overrides(rng, kw)
    over["lr"] = kw["lr"]
    start = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
    grads = [[np.asarray(0.5 + rng.standard_normal(p.shape), dtype) for p in start] for _ in range(30)]
    straight = [p.copy() for p in start]
    opt = fo.Prodigy(_groups(straight, over), **kw)
    for g in grads:
        opt.step(g)
    first_params = [p.copy() for p in start]
    first = fo.Prodigy(_groups(first_params, over), **kw)
    for g in grads[:17]:
        first.step(g)
    saved = first.state_dict()
    assert saved["param_groups"][0]["d"] == first.param_groups[0]["d"] > kw["d0"]
    assert {"d", "d_max", "d_numerator", "k", "d_denom", "d_hat"} <= set(saved["param_groups"][1])
    saved_params = [p.copy() for p in first_params]
    for g in grads[17:20]:
        first.step(g)
    second = fo.Prodigy(_groups(saved_params, over), **kw)
    second.load_state_dict(saved)
    for g in grads[17:]:
        second.step(g)
    for a, b in zip(straight, saved_params):
        assert a.tobytes() == b.tobytes()
    a, b = opt.state_dict(), second.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for k, val in a["state"][i].items():
            other = b["state"][i][k]
            assert (val.tobytes() == other.tobytes() if isinstance(val, np.ndarray)
                    else val == other)


_BAD = [
    (dict(lr=-1.0), "lr must be a finite number >= 0, got -1.0"),
    (dict(lr=float("nan")), "lr must be a finite number >= 0, got nan"),
    (dict(betas=(1.0, 0.999)), "betas[0] must be in [0, 1), got 1.0"),
    (dict(betas=(0.9, -0.1)), "betas[1] must be in [0, 1), got -0.1"),
    (dict(betas=(0.9,)), "betas"),
    (dict(beta3=1.5), "beta3 must be in [0, 1), got 1.5"),
    (dict(beta3="0.9"), "beta3 must be a real number, got '0.9'"),
    (dict(eps=0.0), "eps must be a finite number > 0, got 0.0"),
    (dict(weight_decay=-0.1), "weight_decay must be a finite number >= 0, got -0.1"),
    (dict(decouple=2), "decouple"),
    (dict(use_bias_correction="yes"), "use_bias_correction"),
    (dict(safeguard_warmup=None), "safeguard_warmup"),
    (dict(d0=0.0), "d0 must be a finite number > 0, got 0.0"),
    (dict(d_coef=-1.0), "d_coef must be a finite number >= 0, got -1.0"),
    (dict(growth_rate=0.0), "growth_rate must be a number >= 1.0 (inf: unrestricted), got 0.0"),
    # below 1 D would shrink every step, to 0 (found by tests/property)
    (dict(growth_rate=0.5), "growth_rate must be a number >= 1.0 (inf: unrestricted), got 0.5"),
    (dict(growth_rate=float("nan")), "growth_rate"),
]


@pytest.mark.parametrize("kw, words", _BAD, ids=[str(k) for k, _ in _BAD])
def test_bad_arguments_are_named_and_leave_every_buffer_unchanged(kw, words):
    with pytest.raises((ValueError, TypeError)) as err:
        fo.Prodigy([np.ones(3)], **kw)
    assert words in str(err.value)
    p = [np.linspace(-1, 1, 4)]
    opt = fo.Prodigy(p, weight_decay=0.1)
    for _ in range(3):
        opt.step([np.linspace(0.5, -0.2, 4)])
    snapshot = (p[0].copy(), copy.deepcopy(opt.state_dict()))
    if "d0" in kw:
        # the class checks d0 up front; in a group it is checked at the step
        opt.param_groups[0]["d0"] = kw["d0"]
    else:
        opt.param_groups[0].update(kw)
    with pytest.raises((ValueError, TypeError)) as err:
        opt.step([np.linspace(0.5, -0.2, 4)])
    assert words.split(" must")[0] in str(err.value)
    assert p[0].tobytes() == snapshot[0].tobytes()
    _assert_same_state(opt.state_dict()["state"], snapshot[1]["state"])


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for i in a:
        for k, val in a[i].items():
            other = b[i][k]
            assert (val.tobytes() == other.tobytes() if isinstance(val, np.ndarray)
                    else val == other)


def test_unequal_group_lrs_and_bad_d_state_are_refused_before_any_write():
    p = [np.linspace(-1, 1, 4), np.linspace(1, 2, 3)]
    opt = fo.Prodigy([{"params": [p[0]]}, {"params": [p[1]]}])
    opt.step([np.ones(4), np.ones(3)])
    snapshot = ([x.copy() for x in p], copy.deepcopy(opt.state_dict()))
    opt.param_groups[1]["lr"] = 0.5
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['lr'\] is 0.5 and another "
                                         r"group's is 1.0: .*the same, or 0"):
        opt.step([np.ones(4), np.ones(3)])
    opt.param_groups[1]["lr"] = 1.0
    for key, bad in (("d", 0.0), ("d_max", float("nan")), ("d_numerator", "0.5"),
                     ("k", -1), ("k", 1.5)):
        saved = opt.param_groups[0][key]
        opt.param_groups[0][key] = bad
        with pytest.raises(ValueError, match=rf"param_groups\[0\]\['{key}'\] must be .*got "
                                             rf"{bad!r}"):
            opt.step([np.ones(4), np.ones(3)])
        opt.param_groups[0][key] = saved
        bad_dict = copy.deepcopy(snapshot[1])
        bad_dict["param_groups"][1][key] = bad
        with pytest.raises(ValueError, match=rf"state_dict\['param_groups'\]\[1\]\['{key}'\]"):
            opt.load_state_dict(bad_dict)
    for a, b in zip(p, snapshot[0]):
        assert a.tobytes() == b.tobytes()
    _assert_same_state(opt.state_dict()["state"], snapshot[1]["state"])
    assert opt.state_dict()["param_groups"] == snapshot[1]["param_groups"]
    # a frozen group (lr 0) is allowed, as in prodigyopt
    opt.param_groups[1]["lr"] = 0.0
    opt.step([np.ones(4), np.ones(3)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_skip_nonfinite_skips_the_whole_step_bitwise(rng, dtype):
    kw = _config(rng)
    params = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
    opt = fo.Prodigy(_groups(params, dict(lr=kw["lr"])), skip_nonfinite=True, **kw)
    for _ in range(3):
        assert opt.step([np.asarray(rng.standard_normal(p.shape), dtype) for p in params])
    snapshot = ([p.copy() for p in params], copy.deepcopy(opt.state_dict()))
    for bad in (0, 3):
        g = [np.asarray(rng.standard_normal(p.shape), dtype) for p in params]
        g[bad].reshape(-1)[-1] = np.nan
        assert opt.step(g) is False
        for a, b in zip(params, snapshot[0]):
            assert a.tobytes() == b.tobytes()
        _assert_same_state(opt.state_dict()["state"], snapshot[1]["state"])
        assert opt.state_dict()["param_groups"] == snapshot[1]["param_groups"]
    assert opt.skipped_steps == 2


@pytest.mark.parametrize("lr", [0.0, 1.0])
def test_skip_nonfinite_with_every_group_frozen_or_not(rng, lr):
    """A group at lr 0 (frozen: pass 1 drives no statistics) with skip_nonfinite: its armed
    check runs in a reduce pass. That pass asked to stop early on its own flag, which the
    driver refuses under an armed gate: every step raised ValueError (found by the property
    suite). It steps as without skip_nonfinite, the twin's trajectory, and skips a NaN."""
    kw = dict(lr=lr, betas=(0.9, 0.999))
    start = [np.asarray(rng.standard_normal(s), np.float32) for s in SHAPES]
    grads = [[np.asarray(rng.standard_normal(p.shape), np.float32) for p in start]
             for _ in range(4)]
    runs = []
    for cls, opts in ((fo.Prodigy, dict(skip_nonfinite=True)), (fo.Prodigy, {}),
                      (fo.reference.Prodigy, dict(skip_nonfinite=True))):
        params = [p.copy() for p in start]
        opt = cls(params, **kw, **opts)
        for g in grads:
            assert opt.step(g) is True
        runs.append((params, opt))
    for params, opt in runs[1:]:
        assert all(a.tobytes() == b.tobytes() for a, b in zip(runs[0][0], params))
        assert opt.param_groups[0]["d"] == runs[0][1].param_groups[0]["d"]
    params, opt = runs[0]
    before = [p.copy() for p in params]
    bad = [g.copy() for g in grads[0]]
    bad[1].reshape(-1)[0] = np.nan
    assert opt.step(bad) is False and opt.skipped_steps == 1
    assert all(a.tobytes() == b.tobytes() for a, b in zip(params, before))


def test_grad_scale_unscales_inside_the_kernel(rng):
    kw = _config(rng)
    a = [np.asarray(rng.standard_normal(s), np.float32) for s in SHAPES]
    b = [p.copy() for p in a]
    oa, ob = fo.Prodigy(a, **kw), fo.Prodigy(b, **kw)
    for _ in range(5):
        g = [np.asarray(0.5 + rng.standard_normal(p.shape), np.float32) for p in a]
        oa.step(g)
        ob.step([x * np.float32(1024.0) for x in g], grad_scale=1024.0)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()


def test_step_makes_no_param_sized_temporaries(rng):
    import tracemalloc
    n = 1 << 20
    params = [np.zeros(n, np.float32)]
    grads = [np.asarray(rng.standard_normal(n), np.float32)]
    for _ in range(4):
        opt = fo.Prodigy(params, **_config(rng))
        opt.step(grads)
        tracemalloc.start()
        try:
            opt.step(grads)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < n, f"step() allocated {peak} bytes for a {4 * n}-byte param"


def test_first_step_keeps_p0_and_frozen_group_moves_only_by_decay(rng):
    p = [rng.standard_normal(6), rng.standard_normal(4)]
    start = [x.copy() for x in p]
    opt = fo.Prodigy([{"params": [p[0]]}, {"params": [p[1]], "lr": 0.0}], weight_decay=0.1)
    opt.step([rng.standard_normal(6), rng.standard_normal(4)])
    assert opt.state[0]["p0"].tobytes() == start[0].tobytes()
    assert opt.state[1]["p0"].tobytes() == start[1].tobytes()
    # frozen: its moments stay zero, the decoupled decay (with the shared dlr) moves it
    assert not opt.state[1]["exp_avg"].any() and not opt.state[1]["s"].any()
    dlr = 1e-6 * 1.0
    np.testing.assert_array_equal(p[1], start[1] + (-0.1 * dlr) * start[1])


def test_torch_drop_in_matches_prodigyopt_and_keeps_d_in_its_groups():
    """fusedoptim.torch.Prodigy on a torch model against prodigyopt: the drop-in copies its
    groups' values to the inner optimizer at each step, and reads back the D state the step
    writes (or D would restart at d0 every step)."""
    torch = pytest.importorskip("torch")
    prodigyopt = pytest.importorskip("prodigyopt")
    fot = pytest.importorskip("fusedoptim.torch")
    torch.manual_seed(0)
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)
    models = [torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(),
                                  torch.nn.Linear(8, 1)).double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    kw = dict(weight_decay=0.01, use_bias_correction=True, d_coef=1.5)
    opts = [fot.Prodigy(models[0].parameters(), **kw),
            prodigyopt.Prodigy(models[1].parameters(), **kw)]
    for _ in range(30):
        for model, opt in zip(models, opts):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-9)
    g, tg = opts[0].param_groups[0], opts[1].param_groups[0]
    assert g["d"] > 1e-6 and g["k"] == tg["k"] == 30
    np.testing.assert_allclose(g["d"], tg["d"], rtol=1e-9)
    saved = opts[0].state_dict()
    assert saved["param_groups"][0]["d"] == g["d"]
