"""MADGRAD against the official release (the ``madgrad`` package, torch) and Optax's
``optax.contrib.madgrad``; its cube root; the x0 buffer's life (fresh, momentum switched on).

The generic battery (tests/cases.py: the reference twin bitwise over random configurations,
checkpoints, thread counts, bad input, skip_nonfinite, grad_scale, ISA levels) covers the rest.
"""

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim.reference import madgrad_cbrt

SHAPES = [(7, 5), (300,), (1,)]


def _config(rng, momentum_zero_eps_zero=False):
    while True:
        momentum = float(rng.choice([0.0, rng.uniform(0.0, 0.99), 0.9]))
        eps = float(rng.choice([1e-6, 0.0, 10 ** rng.uniform(-8, -3)]))
        if momentum == 0.0 and eps == 0.0 and not momentum_zero_eps_zero:
            continue        # the release's recomputed x0 is 0/0 there (test below)
        return dict(lr=float(rng.choice([0.0, 10 ** rng.uniform(-4, -1)])), momentum=momentum,
                    weight_decay=float(rng.choice([0.0, rng.uniform(0, 0.1)])), eps=eps,
                    decouple_decay=bool(rng.integers(2)), maximize=bool(rng.integers(2)))


def _run_official(madgrad, torch, params, grads_seq, kw, dtype):
    tp = [torch.tensor(p.copy()) for p in params]
    kw = dict(kw)
    maximize = kw.pop("maximize")
    opt = madgrad.MADGRAD(tp, **kw)
    for grads in grads_seq:
        for t, g in zip(tp, grads):
            t.grad = torch.tensor(-g if maximize else g.copy())
        opt.step()
    return [t.numpy() for t in tp]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_the_official_release(rng, dtype):
    """120 steps of random configurations covering every option against madgrad.MADGRAD
    (maximize, which the release lacks, as its negated grads)."""
    madgrad = pytest.importorskip("madgrad")
    torch = pytest.importorskip("torch")
    for trial in range(8):
        kw = _config(rng)
        params = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
        grads_seq = [[np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
                     for _ in range(120)]
        ours = [p.copy() for p in params]
        opt = fo.MADGRAD(ours, **kw)
        for grads in grads_seq:
            opt.step(grads)
        theirs = _run_official(madgrad, torch, params, grads_seq, kw, dtype)
        for a, b in zip(ours, theirs):
            if dtype == np.float64:
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=str(kw))
            else:
                # float32: the release's cube root is pow(x, 1/3 rounded to float32), which
                # differs from the true root by up to |ln x| * 1e-8 relative (~3e-7 here),
                # and torch fuses a*x + y in its vectorised adds; over 120 steps of a
                # recursive update these few-ulp differences compound to ~1e-5 relative.
                np.testing.assert_allclose(a, b, rtol=5e-5, atol=5e-5, err_msg=str(kw))


def test_momentum_zero_eps_zero_stays_finite_where_the_release_gives_nan(rng):
    """The one documented difference in the update: without momentum and eps == 0 the
    release recomputes x0 = p + s / cbrt(0) = 0/0 = NaN; here s / rms is 0 where rms == 0."""
    madgrad = pytest.importorskip("madgrad")
    torch = pytest.importorskip("torch")
    kw = dict(lr=0.01, momentum=0.0, weight_decay=0.0, eps=0.0, decouple_decay=False,
              maximize=False)
    p = rng.standard_normal(50)
    grads_seq = [[rng.standard_normal(50)] for _ in range(3)]
    ours = [p.copy()]
    opt = fo.MADGRAD(ours, **kw)
    for g in grads_seq:
        opt.step(g)
    theirs = _run_official(madgrad, torch, [p], grads_seq, kw, np.float64)
    assert np.all(np.isnan(theirs[0])) and np.all(np.isfinite(ours[0]))


def test_matches_optax_contrib_madgrad_float64(rng):
    """optax.contrib.madgrad(learning_rate=lr, momentum, weight_decay, eps) is the same update
    for lr > 0 without decouple_decay (Optax adds eps to the lr also at lr == 0); one jitted
    run, the hyperparameters passed as arguments.

    One difference in Optax 0.2.8: its lamb = (lr + eps) * sqrt(count + 1) takes the square
    root of its int32 step count in float32, even under jax_enable_x64 (checked first), so its
    lamb is off by up to 3e-8 relative, which reaches the params at 1e-8 to 1e-5 (elements
    near zero). The test hands Optax a learning-rate schedule that cancels that rounding
    exactly, ``(lr + eps) * sqrt64(count + 1) / sqrt32(count + 1) - eps``, and holds the rest
    of the mapping to rtol 1e-9."""
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jax.config.update("jax_enable_x64", True)
    try:
        import jax.numpy as jnp
        assert jnp.sqrt(jnp.zeros([], jnp.int32) + 1).dtype == jnp.float32

        @jax.jit
        def run(params, grads_seq, lr, momentum, weight_decay, eps):
            def learning_rate(count):
                exact = jnp.sqrt((count + 1).astype(jnp.float64))
                return (lr + eps) * exact / jnp.sqrt(count + 1) - eps
            tx = optax.contrib.madgrad(learning_rate=learning_rate, momentum=momentum,
                                       weight_decay=weight_decay, eps=eps)

            def body(carry, g):
                p, st = carry
                u, st = tx.update(g, st, p)
                return (optax.apply_updates(p, u), st), None

            (p, _), _ = jax.lax.scan(body, (params, tx.init(params)), grads_seq)
            return p

        for trial in range(6):
            kw = _config(rng)
            kw.update(lr=float(10 ** rng.uniform(-4, -1)), decouple_decay=False,
                      maximize=False)
            params = [rng.standard_normal(s) for s in SHAPES]
            grads_seq = [rng.standard_normal((110,) + s) for s in SHAPES]
            ours = [p.copy() for p in params]
            opt = fo.MADGRAD(ours, **kw)
            for k in range(110):
                opt.step([g[k] for g in grads_seq])
            theirs = run([jnp.asarray(p) for p in params], [jnp.asarray(g) for g in grads_seq],
                         kw["lr"], kw["momentum"], kw["weight_decay"], kw["eps"])
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(a, np.asarray(b), rtol=1e-9, atol=1e-12,
                                           err_msg=str(kw))
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cube_root_is_within_one_ulp(rng, dtype):
    """The kernels' cube root (its NumPy twin, which the battery holds bitwise to the kernel)
    against the exact root (np.cbrt in long double, rounded), over the whole range:
    subnormals, the largest values, 0, inf and NaN."""
    info = np.finfo(dtype)
    x = np.concatenate([
        10 ** rng.uniform(np.log10(info.smallest_subnormal), np.log10(info.max), 20_000),
        rng.uniform(0, 10, 2000), [info.smallest_subnormal, info.tiny, info.max, 1.0, 8.0]])
    x = np.asarray(x, dtype)
    exact = np.cbrt(x.astype(np.longdouble)).astype(dtype)
    ours = madgrad_cbrt(x)
    assert ours.dtype == dtype
    ulps = np.abs(ours.view(np.int64 if dtype == np.float64 else np.int32).astype(np.int64)
                  - exact.view(np.int64 if dtype == np.float64 else np.int32).astype(np.int64))
    assert ulps.max() <= 1
    assert np.mean(ulps == 0) > 0.85          # mostly exactly rounded (92% measured)
    special = np.array([0.0, np.inf, np.nan], dtype)
    out = madgrad_cbrt(special)
    assert out[0] == 0 and out[1] == np.inf and np.isnan(out[2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cube_root_in_the_kernel_matches_the_twin_on_extremes(dtype):
    """grad_sum_sq values from subnormal to huge reach the kernel's _cbrt: one step from zero
    state with lamb = 1 puts g*g in grad_sum_sq, and eps = 0 makes p = x0 - g / cbrt(g*g)."""
    info = np.finfo(dtype)
    g = np.sqrt(np.asarray([info.smallest_subnormal * 7, info.tiny * 3, 1e-30, 0.5, 3.0, 1e30,
                            float(info.max) / 4, 0.0], dtype))
    p = np.zeros_like(g)
    q = p.copy()
    # lr' = lr + eps = 1 with eps = 0: lamb = 1 at the first step; no momentum
    fo.MADGRAD([p], lr=1.0, momentum=0.0, eps=0.0).step([g])
    fo.reference.MADGRAD([q], lr=1.0, momentum=0.0, eps=0.0).step([g])
    assert p.tobytes() == q.tobytes()
    # and it is -g / cbrt(g^2) = -cbrt(g) to within a few ulp where g*g did not underflow
    ok = (g * g > 0) & np.isfinite(g * g)
    np.testing.assert_allclose(p[ok], -np.cbrt(g[ok].astype(np.float64)), rtol=8 * info.eps)
    assert p[-1] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_x0_is_the_first_param_and_momentum_switched_on_recomputes_it(rng, dtype):
    p = np.asarray(rng.standard_normal(100), dtype)
    p0 = p.copy()
    opt = fo.MADGRAD([p], lr=0.05, momentum=0.0)
    ref_p = p.copy()
    ref = fo.reference.MADGRAD([ref_p], lr=0.05, momentum=0.0)
    for _ in range(5):
        g = np.asarray(rng.standard_normal(100), dtype)
        opt.step([g])
        ref.step([g])
    assert "x0" not in opt.state[0]
    # Switch momentum on: the new x0 is p + s / rms from the state before the step, which is
    # the anchor the momentum-free steps were using (x0 of the very first step: p0).
    opt.param_groups[0]["momentum"] = 0.9
    ref.param_groups[0]["momentum"] = 0.9
    g = np.asarray(rng.standard_normal(100), dtype)
    opt.step([g])
    ref.step([g])
    x0 = opt.state[0]["x0"]
    np.testing.assert_allclose(x0, p0, rtol=20 * np.finfo(dtype).eps,
                               atol=20 * np.finfo(dtype).eps)
    assert p.tobytes() == ref_p.tobytes()
    assert x0.tobytes() == ref.state[0]["x0"].tobytes()
    # A fresh optimizer with momentum: x0 is the param exactly.
    p2 = np.asarray(rng.standard_normal(100), dtype)
    first = p2.copy()
    opt2 = fo.MADGRAD([p2], lr=0.05)
    opt2.step([np.asarray(rng.standard_normal(100), dtype)])
    assert opt2.state[0]["x0"].tobytes() == first.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_functional_matches_class_and_reference(rng, dtype):
    kw = dict(lr=1e-2, momentum=0.9, weight_decay=0.01, eps=1e-6, decouple_decay=True,
              maximize=True)
    p_cls = [np.asarray(rng.standard_normal(s), dtype) for s in [(7,), (30_000,)]]
    p_fun, p_ref = [p.copy() for p in p_cls], [p.copy() for p in p_cls]
    zeros = lambda: [np.zeros_like(p) for p in p_cls]
    st_fun = (zeros(), zeros(), [None, None], [0, 0])
    st_ref = (zeros(), zeros(), [None, None], [0, 0])
    opt = fo.MADGRAD(p_cls, **kw)
    for _ in range(20):
        g = [np.asarray(rng.standard_normal(p.shape), dtype) for p in p_cls]
        fo.functional.madgrad(p_fun, g, *st_fun, **kw)
        fo.reference.madgrad(p_ref, g, *st_ref, **kw)
        opt.step(g)
    for a, b, c in zip(p_fun, p_ref, p_cls):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    for a, b, c in zip(st_fun[2], st_ref[2], [opt.state[i]["x0"] for i in range(2)]):
        assert a.tobytes() == b.tobytes() == c.tobytes()


def test_state_dict_round_trip_mid_run(rng):
    params = [rng.standard_normal(s) for s in SHAPES]
    twin = [p.copy() for p in params]
    a = fo.MADGRAD(params, lr=0.02, weight_decay=0.01)
    for _ in range(7):
        a.step([rng.standard_normal(s) for s in SHAPES])
    sd = a.state_dict()
    assert set(sd["state"][0]) == {"step", "grad_sum_sq", "s", "x0"}
    for t, p in zip(twin, params):
        t[...] = p
    b = fo.MADGRAD(twin, lr=0.5)
    b.load_state_dict(sd)
    assert b.param_groups[0]["lr"] == 0.02
    for _ in range(5):
        g = [rng.standard_normal(s) for s in SHAPES]
        a.step(g)
        b.step(g)
    for x, y in zip(params, twin):
        assert x.tobytes() == y.tobytes()
