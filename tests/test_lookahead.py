"""fo.Lookahead: against plain NumPy (bitwise) and optax.lookahead (float64); schedulers through
it; checkpoints mid-cycle; thread counts; bad input."""

import numpy as np
import pytest

import fusedoptim as fo
from _threads import assert_same_on_every_thread_count

SHAPES = [(40, 30), (7,), (50_000,)]


def _numpy_lookahead_sgd(params, grads_seq, lrs, k, alpha):
    """SGD (p -= lr * g) with Lookahead written out, in the params' dtype."""
    slow = [p.copy() for p in params]
    for step, (grads, lr) in enumerate(zip(grads_seq, lrs), start=1):
        for p, g in zip(params, grads):
            p[...] = p - p.dtype.type(lr) * g
        if step % k == 0:
            for p, s in zip(params, slow):
                s[...] = s + p.dtype.type(alpha) * (p - s)
                p[...] = s
    return slow


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_numpy_bitwise(rng, dtype):
    for k, alpha in [(1, 0.5), (5, 0.5), (3, 0.8), (4, 0.0), (2, 1.0)]:
        params = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
        twin = [p.copy() for p in params]
        la = fo.Lookahead(fo.SGD(params, lr=0.01), k=k, alpha=alpha)
        grads_seq = [[np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
                     for _ in range(23)]
        for grads in grads_seq:
            assert la.step(grads) is True
        slow = _numpy_lookahead_sgd(twin, grads_seq, [0.01] * 23, k, alpha)
        for a, b in zip(params, twin):
            assert a.tobytes() == b.tobytes()
        for a, b in zip(la.slow_weights, slow):
            assert a.tobytes() == b.tobytes()
        assert la.step_count == 23


def test_matches_optax_lookahead_float64(rng):
    """optax.lookahead(optax.adam(...), sync_period=k, slow_step_size=alpha) on
    LookaheadParams.init_synced(params): its fast params are the params here."""
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jax.config.update("jax_enable_x64", True)
    try:
        import jax.numpy as jnp
        shapes = [(6, 5), (40,)]
        for k, alpha in [(5, 0.5), (3, 0.25), (1, 0.7)]:
            lr, b1, b2, eps = 1e-2, 0.9, 0.99, 1e-8
            tx = optax.lookahead(optax.adam(lr, b1=b1, b2=b2, eps=eps), sync_period=k,
                                 slow_step_size=alpha)
            params = [rng.standard_normal(s) for s in shapes]
            grads_seq = [rng.standard_normal((120,) + s) for s in shapes]

            @jax.jit
            def run(lp, gs):
                def body(carry, g):
                    lp, st = carry
                    u, st = tx.update(g, st, lp)
                    return (optax.apply_updates(lp, u), st), None
                (lp, _), _ = jax.lax.scan(body, (lp, tx.init(lp)), gs)
                return lp

            lp = run(optax.LookaheadParams.init_synced([jnp.asarray(p) for p in params]),
                     [jnp.asarray(g) for g in grads_seq])
            ours = [p.copy() for p in params]
            la = fo.Lookahead(fo.Adam(ours, lr=lr, betas=(b1, b2), eps=eps), k=k, alpha=alpha)
            for t in range(120):
                la.step([g[t] for g in grads_seq])
            for a, b in zip(ours, lp.fast):
                np.testing.assert_allclose(a, np.asarray(b), rtol=1e-9, atol=1e-12)
            for a, b in zip(la.slow_weights, lp.slow):
                np.testing.assert_allclose(a, np.asarray(b), rtol=1e-9, atol=1e-12)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_a_scheduler_works_through_the_wrapper(rng):
    params = [rng.standard_normal(s) for s in SHAPES]
    twin = [p.copy() for p in params]
    la = fo.Lookahead(fo.SGD(params, lr=0.1), k=3, alpha=0.5)
    assert la.param_groups is la.optimizer.param_groups
    sched = fo.lr_scheduler.StepLR(la, step_size=2, gamma=0.5)
    lrs, grads_seq = [], []
    for _ in range(11):
        lrs.append(la.param_groups[0]["lr"])
        grads = [rng.standard_normal(s) for s in SHAPES]
        grads_seq.append(grads)
        la.step(grads)
        sched.step()
    assert lrs == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125, 0.00625, 0.00625,
                   0.003125]
    _numpy_lookahead_sgd(twin, grads_seq, lrs, 3, 0.5)
    for a, b in zip(params, twin):
        assert a.tobytes() == b.tobytes()


def test_state_dict_round_trip_mid_cycle(rng):
    params = [rng.standard_normal(s) for s in SHAPES]
    a = fo.Lookahead(fo.Adam(params, lr=1e-2), k=5, alpha=0.5)
    for _ in range(7):                      # two steps into the second cycle
        a.step([rng.standard_normal(s) for s in SHAPES])
    sd = a.state_dict()
    assert sd["lookahead"]["step"] == 7 and set(sd["lookahead"]["slow"]) == {0, 1, 2}
    assert sd["optimizer"]["state"][0]["step"] == 7
    twin = [p.copy() for p in params]
    b = fo.Lookahead(fo.Adam(twin, lr=0.5), k=2, alpha=0.9)
    b.load_state_dict(sd)
    assert (b.k, b.alpha, b.step_count) == (5, 0.5, 7)
    assert b.param_groups[0]["lr"] == 1e-2
    sd["lookahead"]["slow"][0][...] = 123.0      # a copy: the loaded one is not tied to it
    for _ in range(8):                      # crosses the sync at step 10 and 15
        g = [rng.standard_normal(s) for s in SHAPES]
        a.step(g)
        b.step(g)
    for x, y in zip(params + a.slow_weights, twin + b.slow_weights):
        assert x.tobytes() == y.tobytes()


def test_bitwise_identical_across_thread_counts(rng):
    base = [rng.standard_normal(s).astype(np.float32) for s in [(300_000,), (17,)]]
    grads_seq = [[rng.standard_normal(p.shape).astype(np.float32) for p in base]
                 for _ in range(6)]

    def run():
        params = [p.copy() for p in base]
        la = fo.Lookahead(fo.Adam(params, lr=1e-2), k=2, alpha=0.3)
        for g in grads_seq:
            la.step(g)
        return b"".join(p.tobytes() for p in params + la.slow_weights)
    assert_same_on_every_thread_count(run)


def test_skipped_steps_do_not_count(rng):
    p = rng.standard_normal(10)
    la = fo.Lookahead(fo.SGD([p], lr=0.1, skip_nonfinite=True), k=2, alpha=0.5)
    la.step([rng.standard_normal(10)])
    before = (p.copy(), la.slow_weights[0].copy())
    assert la.step([np.full(10, np.nan)]) is False
    assert la.step_count == 1
    assert p.tobytes() == before[0].tobytes()
    assert la.slow_weights[0].tobytes() == before[1].tobytes()
    la.step([rng.standard_normal(10)])      # the second step that ran: synchronises
    assert la.step_count == 2 and p.tobytes() == la.slow_weights[0].tobytes()


def test_wraps_adafactor_sparse_adam_and_multisteps(rng):
    w = rng.standard_normal((8, 6)).astype(np.float32)
    la = fo.Lookahead(fo.Adafactor([w], lr=1e-2), k=2, alpha=0.5)
    w0 = w.copy()
    la.step([rng.standard_normal((8, 6)).astype(np.float32)])
    assert not np.array_equal(w, w0)
    la.step([rng.standard_normal((8, 6)).astype(np.float32)])
    assert w.tobytes() == la.slow_weights[0].tobytes()
    # Over MultiSteps: only the micro-batches that stepped count.
    p = rng.standard_normal(5)
    la2 = fo.Lookahead(fo.MultiSteps(fo.SGD([p], lr=0.1), every_k=3), k=2)
    for _ in range(5):
        la2.step([rng.standard_normal(5)])
    assert la2.step_count == 1
    e = rng.standard_normal((20, 4)).astype(np.float32)
    la3 = fo.Lookahead(fo.SparseAdam([e], lr=1e-2), k=1)
    la3.step([fo.SparseGrad(np.array([1, 3]), np.ones((2, 4), np.float32))])
    assert e.tobytes() == la3.slow_weights[0].tobytes()


def test_add_param_group_takes_its_slow_weights(rng):
    p, q = rng.standard_normal(4), rng.standard_normal(3)
    la = fo.Lookahead(fo.SGD([p], lr=0.1), k=1, alpha=0.5)
    la.step([np.ones(4)])
    la.add_param_group({"params": [q], "lr": 0.2})
    q0 = q.copy()
    la.step([np.ones(4), np.ones(3)])
    np.testing.assert_array_equal(q, q0 + 0.5 * ((q0 - 0.2) - q0))
    assert len(la.slow_weights) == 2 and len(la.state_dict()["lookahead"]["slow"]) == 2


@pytest.mark.parametrize("kw, name", [
    (dict(k=0), "k"), (dict(k=-1), "k"), (dict(k=2.5), "k"), (dict(k=True), "k"),
    (dict(alpha=-0.1), "alpha"), (dict(alpha=1.5), "alpha"), (dict(alpha=float("nan")), "alpha"),
    (dict(alpha="0.5"), "alpha"),
])
def test_bad_arguments(rng, kw, name):
    p = rng.standard_normal(5)
    before = p.copy()
    with pytest.raises((TypeError, ValueError), match=name) as info:
        fo.Lookahead(fo.SGD([p], lr=0.1), **kw)
    assert repr(list(kw.values())[0])[:3] in str(info.value)
    assert p.tobytes() == before.tobytes()


def test_bad_optimizers(rng):
    with pytest.raises(TypeError, match="optimizer must be a fusedoptim optimizer"):
        fo.Lookahead("adam")
    with pytest.raises(TypeError, match="LBFGS"):
        fo.Lookahead(fo.LBFGS([rng.standard_normal(3)]))
    import ml_dtypes
    h = np.zeros(4, ml_dtypes.bfloat16)
    with pytest.raises(TypeError, match="float32/float64 params"):
        fo.Lookahead(fo.Adam([h], lr=1e-3))
    la = fo.Lookahead(fo.Adam([rng.standard_normal(3)], lr=1e-3))
    with pytest.raises(TypeError, match="float32/float64 params"):
        la.add_param_group({"params": {"h": h}})
    assert len(la.param_groups) == 1 and len(la.slow_weights) == 1


def test_a_bad_checkpoint_changes_nothing(rng):
    params = [rng.standard_normal(s) for s in SHAPES]
    la = fo.Lookahead(fo.Adam(params, lr=1e-2), k=3)
    la.step([rng.standard_normal(s) for s in SHAPES])
    good = la.state_dict()
    snapshot = la.state_dict()
    for mutate, match in [
        (lambda sd: sd["lookahead"].update(k=0), "k"),
        (lambda sd: sd["lookahead"].update(alpha=2.0), "alpha"),
        (lambda sd: sd["lookahead"].update(step=-1), "step"),
        (lambda sd: sd["lookahead"]["slow"].pop(1), "slow"),
        (lambda sd: sd["lookahead"]["slow"].update({0: np.zeros(3)}), "slow"),
        (lambda sd: sd["optimizer"]["param_groups"][0].update(lr=-1.0), "lr"),
        (lambda sd: sd.pop("lookahead"), "lookahead"),
    ]:
        sd = la.state_dict()
        mutate(sd)
        la.step_count = 1
        with pytest.raises((TypeError, ValueError), match=match):
            la.load_state_dict(sd)
        now = la.state_dict()
        assert now["lookahead"]["step"] == snapshot["lookahead"]["step"]
        assert (la.k, la.alpha) == (3, 0.5)
        for i in range(3):
            assert now["lookahead"]["slow"][i].tobytes() == \
                snapshot["lookahead"]["slow"][i].tobytes()
            assert now["optimizer"]["state"][i]["exp_avg"].tobytes() == \
                good["optimizer"]["state"][i]["exp_avg"].tobytes()
        assert now["optimizer"]["param_groups"][0]["lr"] == 1e-2
