"""Yogi: against Optax's yogi (no official PyTorch release is on PyPI), and the NumPy twin
bitwise. The generic battery (cases.py: reference, checkpoints, threads, bad input,
skip_nonfinite, grad_scale, ISA levels) covers the rest."""

import numpy as np
import pytest

import fusedoptim as fo

DTYPES = [np.float32, np.float64]
STEPS = 120
SHAPES = [(7,), (3, 5), (2_000,)]


def _config(rng):
    return dict(lr=float(10 ** rng.uniform(-4, -1)),
                betas=(float(rng.uniform(0.0, 0.99)), float(rng.uniform(0.9, 0.9999))),
                eps=float(rng.choice([1e-3, 10 ** rng.uniform(-8, -2)])),
                initial_accumulator=float(rng.choice([1e-6, 0.0, 10 ** rng.uniform(-4, -1)])),
                weight_decay=float(rng.choice([0.0, rng.uniform(0, 0.1)])))


_OPTAX_RUN = {}


def _optax_run():
    """One jitted function for every configuration: the hyperparameters are arguments, the
    steps a lax.scan. Yogi's weight_decay is an L2 term, which Optax writes as
    add_decayed_weights before the scaling (the mapping stated in fo.Yogi's docstring)."""
    if "run" not in _OPTAX_RUN:
        jax = pytest.importorskip("jax")
        optax = pytest.importorskip("optax")
        jax.config.update("jax_enable_x64", True)

        def run(params, grads, lr, b1, b2, eps, init, wd):
            tx = optax.chain(optax.add_decayed_weights(wd),
                             optax.scale_by_yogi(b1=b1, b2=b2, eps=eps,
                                                 initial_accumulator_value=init),
                             optax.scale_by_learning_rate(lr))

            def body(carry, g):
                p, state = carry
                updates, state = tx.update(g, state, p)
                return (optax.apply_updates(p, updates), state), None
            (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), grads)
            return params
        _OPTAX_RUN["run"] = jax.jit(run)
    return _OPTAX_RUN["run"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_optax_yogi_over_120_steps(rng, dtype):
    """Optax's yogi (float64 under jax_enable_x64), 120 steps, random configurations that
    cover every option (weight decay through the stated add_decayed_weights mapping).
    float64: rtol 1e-9. float32: within 4e-6 of each tensor's largest magnitude (measured:
    2.7e-7 at worst over eight random configurations). Both sides round differently (Optax
    divides by the corrections, we fold them into scalars in double), by an ulp or so per
    step, and an element whose v sits next to g^2 could take the other sign(v - g^2)."""
    jnp = pytest.importorskip("jax.numpy")
    run = _optax_run()
    for trial in range(4):
        kw = _config(rng)
        params = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
        start = [p.copy() for p in params]
        grads = [np.asarray(rng.standard_normal((STEPS, *p.shape)), dtype) for p in params]
        expected = run([jnp.asarray(p) for p in params], [jnp.asarray(g) for g in grads],
                       kw["lr"], kw["betas"][0], kw["betas"][1], kw["eps"],
                       kw["initial_accumulator"], kw["weight_decay"])
        opt = fo.Yogi(params, **kw)
        for t in range(STEPS):
            opt.step([g[t] for g in grads])
        for p, e in zip(params, expected):
            e = np.asarray(e)
            assert e.dtype == dtype
            if dtype == np.float64:
                np.testing.assert_allclose(p, e, rtol=1e-9, atol=1e-300)
            else:
                np.testing.assert_allclose(p, e, rtol=0, atol=4e-6 * np.abs(e).max())
        assert not np.array_equal(params[2], start[2])     # the trajectory moved


@pytest.mark.parametrize("dtype", DTYPES)
def test_twin_matches_bitwise_with_two_groups_and_skipped_grads(rng, dtype):
    kw = _config(rng)
    kw["weight_decay"] = 0.05
    params = [np.asarray(rng.standard_normal(s), dtype) for s in [(3, 3), (40_000,), (5,)]]
    ref_params = [p.copy() for p in params]
    opt = fo.Yogi([{"params": params[:2]}, {"params": params[2:], "lr": 0.5 * kw["lr"]}], **kw)
    ref = fo.reference.Yogi([{"params": ref_params[:2]},
                             {"params": ref_params[2:], "lr": 0.5 * kw["lr"]}], **kw)
    start = [p.copy() for p in params]
    for t in range(40):
        g = [None if (t + i) % 7 == 0 else np.asarray(rng.standard_normal(p.shape), dtype)
             for i, p in enumerate(params)]
        opt.step(g)
        ref.step(g)
    for a, b, s in zip(params, ref_params, start):
        assert a.tobytes() == b.tobytes() and not np.array_equal(a, s)
    for i in opt.state:
        for k in ("exp_avg", "exp_avg_sq"):
            assert opt.state[i][k].tobytes() == ref.state[i][k].tobytes()


def test_moments_start_at_initial_accumulator_and_first_step_by_hand():
    p = np.array([1.0, -2.0, 0.5], np.float64)
    g = np.array([0.1, 0.0, -3.0], np.float64)
    init, lr, b1, b2, eps = 0.01, 0.1, 0.9, 0.999, 1e-3
    opt = fo.Yogi([p], lr=lr, betas=(b1, b2), eps=eps, initial_accumulator=init)
    opt.step([g.copy()])
    m = b1 * init + (1 - b1) * g
    v = init - (1 - b2) * np.sign(init - g * g) * g * g
    expected = np.array([1.0, -2.0, 0.5]) - lr / (1 - b1) * m / (np.sqrt(v) / np.sqrt(1 - b2)
                                                                  + eps)
    np.testing.assert_allclose(opt.state[0]["exp_avg"], m, rtol=1e-15)
    np.testing.assert_allclose(opt.state[0]["exp_avg_sq"], v, rtol=1e-15)
    np.testing.assert_allclose(p, expected, rtol=1e-14)
    # sign(v - g^2) = 0 leaves v as it is: g^2 == v exactly
    q = np.array([1.0], np.float64)
    opt = fo.Yogi([q], initial_accumulator=0.25)
    opt.step([np.array([0.5])])
    assert opt.state[0]["exp_avg_sq"][0] == 0.25


@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_matches_class_and_reference(rng, dtype):
    kw = dict(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-3, weight_decay=0.01)
    p_cls = [np.asarray(rng.standard_normal(s), dtype) for s in [(3, 3), (40_000,)]]
    p_fun, p_ref = [p.copy() for p in p_cls], [p.copy() for p in p_cls]
    st_fun = ([np.full_like(p, 1e-6) for p in p_cls], [np.full_like(p, 1e-6) for p in p_cls],
              [0, 0])
    st_ref = ([np.full_like(p, 1e-6) for p in p_cls], [np.full_like(p, 1e-6) for p in p_cls],
              [0, 0])
    opt = fo.Yogi(p_cls, lr=1e-2, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.01)
    for _ in range(15):
        g = [np.asarray(rng.standard_normal(p.shape), dtype) for p in p_cls]
        fo.functional.yogi(p_fun, g, *st_fun, **kw)
        fo.reference.yogi(p_ref, g, *st_ref, **kw)
        opt.step(g)
    for a, b, c in zip(p_fun, p_ref, p_cls):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    assert st_fun[2] == [15, 15]


def test_bad_arguments_name_the_argument_the_value_and_leave_buffers_unchanged():
    p = [np.ones(4, np.float32)]
    opt = fo.Yogi(p)
    opt.step([np.full(4, 0.5, np.float32)])
    before = (p[0].copy(), opt.state[0]["exp_avg"].copy(), opt.state[0]["exp_avg_sq"].copy())
    for key, bad, words in [("lr", -1.0, "lr must be a finite number >= 0, got -1.0"),
                            ("eps", float("inf"), "eps must be a finite number >= 0, got inf"),
                            ("betas", (0.9, 1.0), "betas[1] must be in [0, 1), got 1.0"),
                            ("weight_decay", -0.5, "weight_decay must be a finite number >= 0"),
                            ("initial_accumulator", -1.0, "initial_accumulator must be a "
                                                          "finite number >= 0, got -1.0")]:
        with pytest.raises(ValueError, match=None) as err:
            fo.Yogi([np.ones(3)], **{key: bad})
        assert words in str(err.value)
        saved = opt.param_groups[0][key]
        opt.param_groups[0][key] = bad
        with pytest.raises(ValueError) as err:
            opt.step([np.full(4, 0.5, np.float32)])
        assert words in str(err.value)
        opt.param_groups[0][key] = saved
        after = (p[0], opt.state[0]["exp_avg"], opt.state[0]["exp_avg_sq"])
        assert all(a.tobytes() == b.tobytes() for a, b in zip(before, after))
    with pytest.raises(ValueError, match=r"exp_avgs\[0\] is None .*np.full_like"):
        fo.functional.yogi([np.ones(3)], [np.ones(3)], [None], [np.ones(3)], [0], lr=0.1,
                           beta1=0.9, beta2=0.999, eps=1e-3)
