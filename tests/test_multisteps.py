"""fo.MultiSteps: against plain NumPy (bitwise) and optax.MultiSteps (float64); the window
dropped on a non-finite micro-batch; checkpoints mid-window; thread counts; no allocation per
call; bad input."""

import tracemalloc

import numpy as np
import pytest

import fusedoptim as fo
from _threads import assert_same_on_every_thread_count

SHAPES = [(40, 30), (7,), (50_000,)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("every_k", [1, 2, 3, 4])
def test_matches_numpy_and_the_reference_bitwise(rng, dtype, every_k):
    """The sum of the window's grads, then the reference twin's step on it with
    grad_scale=every_k: (1/every_k in the dtype) * sum, as the fused kernel computes it. And
    plain SGD written out."""
    params = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
    twin = [p.copy() for p in params]
    sgd_twin = [p.copy() for p in params]
    ms = fo.MultiSteps(fo.Adam(params, lr=1e-2, weight_decay=0.1), every_k=every_k)
    ref = fo.reference.Adam(twin, lr=1e-2, weight_decay=0.1)
    sgd = fo.MultiSteps(fo.SGD(sgd_p := [p.copy() for p in params], lr=0.1), every_k=every_k)
    acc = None
    for call in range(1, 4 * every_k + 3):
        grads = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
        acc = [g.copy() for g in grads] if acc is None else [a + g for a, g in zip(acc, grads)]
        ran = ms.step(grads)
        assert sgd.step(grads) is ran
        assert ran is (call % every_k == 0)
        if ran:
            ref.step(acc, grad_scale=float(every_k))
            for p, a in zip(sgd_twin, acc):
                p[...] = p - dtype(0.1) * (dtype(1 / every_k) * a)
            acc = None
        assert ms.count == call % every_k
    for a, b in zip(params, twin):
        assert a.tobytes() == b.tobytes()
    for a, b in zip(sgd_p, sgd_twin):
        assert a.tobytes() == b.tobytes()


def test_matches_optax_multisteps_float64(rng):
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jax.config.update("jax_enable_x64", True)
    try:
        import jax.numpy as jnp
        shapes = [(6, 5), (40,)]
        for every_k in (2, 3, 5):
            lr, b1, b2, eps = 1e-2, 0.9, 0.99, 1e-8
            # Optax accumulates in float32 unless told (even under x64): the mapping for
            # float64 params names the accumulator's dtype.
            tx = optax.MultiSteps(optax.adam(lr, b1=b1, b2=b2, eps=eps),
                                  every_k_schedule=every_k,
                                  accumulator_dtype=jnp.float64).gradient_transformation()
            params = [rng.standard_normal(s) for s in shapes]
            grads_seq = [rng.standard_normal((110,) + s) for s in shapes]

            @jax.jit
            def run(p, gs):
                def body(carry, g):
                    p, st = carry
                    u, st = tx.update(g, st, p)
                    return (optax.apply_updates(p, u), st), None
                (p, _), _ = jax.lax.scan(body, (p, tx.init(p)), gs)
                return p

            theirs = run([jnp.asarray(p) for p in params], [jnp.asarray(g) for g in grads_seq])
            ours = [p.copy() for p in params]
            ms = fo.MultiSteps(fo.Adam(ours, lr=lr, betas=(b1, b2), eps=eps), every_k)
            for t in range(110):
                ms.step([g[t] for g in grads_seq])
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(a, np.asarray(b), rtol=1e-9, atol=1e-12)
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_nonfinite_micro_batch_drops_the_window(rng, bad):
    """With skip_nonfinite on the wrapped optimizer the accumulated window is dropped: the
    step at its end returns False and writes nothing; the next window starts clean and the run
    goes on as if the dropped window had never been."""
    p = rng.standard_normal(1000)
    twin = p.copy()
    ms = fo.MultiSteps(fo.Adam([p], lr=1e-2, skip_nonfinite=True), every_k=3)
    clean = fo.MultiSteps(fo.Adam([twin], lr=1e-2, skip_nonfinite=True), every_k=3)
    good = [[rng.standard_normal(1000)] for _ in range(6)]
    poisoned = [rng.standard_normal(1000) for _ in range(3)]
    poisoned[1][17] = bad
    for g in good[:3]:
        ms.step(g)
        clean.step(g)
    before = (p.copy(), ms.state[0]["exp_avg"].copy(), ms.state[0]["step"])
    assert [ms.step([g]) for g in poisoned] == [False, False, False]
    assert ms.optimizer.skipped_steps == 1 and ms.count == 0
    assert p.tobytes() == before[0].tobytes()
    assert ms.state[0]["exp_avg"].tobytes() == before[1].tobytes()
    assert ms.state[0]["step"] == before[2]
    for g in good[3:]:
        ms.step(g)
        clean.step(g)
    assert p.tobytes() == twin.tobytes()


def test_none_grads_add_nothing_and_an_absent_param_is_not_stepped(rng):
    p, q = rng.standard_normal(4), rng.standard_normal(3)
    p0, q0 = p.copy(), q.copy()
    ms = fo.MultiSteps(fo.SGD([p, q], lr=0.5), every_k=2)
    g1 = rng.standard_normal(4)
    ms.step([None, None])
    assert ms.step([g1, None]) is True
    np.testing.assert_array_equal(p, p0 - 0.5 * (0.5 * g1))
    assert q.tobytes() == q0.tobytes() and 1 not in ms.state
    # a param without a grad in the window's first micro-batch starts its sum later
    g2, g3 = rng.standard_normal(3), rng.standard_normal(4)
    ms.step([None, g2])
    ms.step([g3, g2])
    np.testing.assert_array_equal(q, q0 - 0.5 * (0.5 * (g2 + g2)))


def test_state_dict_round_trip_mid_window(rng):
    params = [rng.standard_normal(s) for s in SHAPES]
    a = fo.MultiSteps(fo.Adam(params, lr=1e-2), every_k=4)
    for _ in range(6):                          # a step, then two micro-batches in
        a.step([rng.standard_normal(s) for s in SHAPES])
    sd = a.state_dict()
    assert sd["multisteps"]["count"] == 2 and set(sd["multisteps"]["acc"]) == {0, 1, 2}
    twin = [p.copy() for p in params]
    b = fo.MultiSteps(fo.Adam(twin, lr=0.3), every_k=4)
    b.load_state_dict(sd)
    assert b.count == 2 and b.param_groups[0]["lr"] == 1e-2
    for _ in range(7):
        g = [rng.standard_normal(s) for s in SHAPES]
        assert a.step(g) is b.step(g)
    for x, y in zip(params, twin):
        assert x.tobytes() == y.tobytes()
    # a checkpoint taken right after a step holds no accumulated grads
    for _ in range(3):
        a.step([rng.standard_normal(s) for s in SHAPES])
    assert a.count == 0 and a.state_dict()["multisteps"]["acc"] == {}


def test_bitwise_identical_across_thread_counts(rng):
    base = [rng.standard_normal(s).astype(np.float32) for s in [(300_000,), (17,)]]
    grads_seq = [[rng.standard_normal(p.shape).astype(np.float32) for p in base]
                 for _ in range(7)]

    def run():
        params = [p.copy() for p in base]
        ms = fo.MultiSteps(fo.Adam(params, lr=1e-2), every_k=3)
        for g in grads_seq:
            ms.step(g)
        return b"".join(p.tobytes() for p in params + ms._acc)
    assert_same_on_every_thread_count(run)


def test_no_allocation_per_call(rng):
    n = 1_000_000
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    ms = fo.MultiSteps(fo.SGD([p], lr=1e-3, momentum=0.9), every_k=4)
    for _ in range(8):                          # state created, plans built
        ms.step([g])
    tracemalloc.start()
    try:
        for _ in range(8):
            ms.step([g])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024                     # far below one 4 MB buffer


def test_a_scheduler_works_through_the_wrapper(rng):
    p = rng.standard_normal(6)
    ms = fo.MultiSteps(fo.SGD([p], lr=0.1), every_k=2)
    sched = fo.lr_scheduler.ExponentialLR(ms, gamma=0.5)
    sched.step()
    assert ms.optimizer.param_groups[0]["lr"] == 0.05


@pytest.mark.parametrize("every_k", [0, -2, 2.0, True, "3", None])
def test_bad_every_k(rng, every_k):
    with pytest.raises((TypeError, ValueError), match="every_k") as info:
        fo.MultiSteps(fo.SGD([rng.standard_normal(3)], lr=0.1), every_k)
    assert repr(every_k) in str(info.value)


def test_bad_optimizers(rng):
    w = rng.standard_normal((4, 3)).astype(np.float32)
    with pytest.raises(TypeError, match="grad_scale"):
        fo.MultiSteps(fo.Adafactor([w]), 2)
    with pytest.raises(TypeError, match="grad_scale"):
        fo.MultiSteps(fo.SparseAdam([w]), 2)
    with pytest.raises(TypeError, match="LBFGS"):
        fo.MultiSteps(fo.LBFGS([w]), 2)
    with pytest.raises(TypeError, match="optimizer must be a fusedoptim optimizer"):
        fo.MultiSteps(object(), 2)


def test_bad_grads_change_nothing(rng):
    params = [rng.standard_normal(s) for s in SHAPES]
    ms = fo.MultiSteps(fo.SGD(params, lr=0.1), every_k=3)
    ms.step([rng.standard_normal(s) for s in SHAPES])
    acc = [a.copy() for a in ms._acc]
    has = ms._has.copy()
    bad_cases = [
        ([rng.standard_normal(s) for s in SHAPES[:2]], ValueError),          # too few
        ([rng.standard_normal(s) for s in SHAPES[:2]] + [np.ones(3)], ValueError),  # shape
        ([rng.standard_normal(s) for s in SHAPES[:2]]
         + [np.ones(SHAPES[2], np.float32)], (TypeError, ValueError)),      # dtype
        (None, TypeError),
    ]
    for grads, exc in bad_cases:
        with pytest.raises(exc):
            ms.step(grads)
        assert ms.count == 1 and np.array_equal(ms._has, has)
        for a, b in zip(ms._acc, acc):
            assert a.tobytes() == b.tobytes()
    sd = ms.state_dict()
    sd["multisteps"]["count"] = 3
    with pytest.raises(ValueError, match="count"):
        ms.load_state_dict(sd)
    assert ms.count == 1
