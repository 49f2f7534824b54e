"""Schedule-Free AdamW and SGD: against the schedulefree package (and Optax's mapping), the
train()/eval() swap, the mode in checkpoints, threads, and the precision rows of the swap."""

import math

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim.optim.schedule_free import schedule
from cases import _sf_adamw_sample, _sf_sgd_sample

KINDS = ["adamw", "sgd"]
SAMPLE = {"adamw": _sf_adamw_sample, "sgd": _sf_sgd_sample}
FUSED = {"adamw": fo.ScheduleFreeAdamW, "sgd": fo.ScheduleFreeSGD}
TWIN = {"adamw": fo.reference.ScheduleFreeAdamW, "sgd": fo.reference.ScheduleFreeSGD}
SHAPES = [(7,), (3, 5), (300,)]


def _params(rng, dtype, shapes=SHAPES):
    return [np.asarray(rng.standard_normal(s), dtype) for s in shapes]


def _grads(rng, params):
    return [np.asarray(rng.standard_normal(p.shape), p.dtype) for p in params]


def _plan_of_swaps(rng, steps):
    """Steps after which to go to eval mode and back (both, or eval then train later)."""
    return set(int(s) for s in rng.choice(np.arange(5, steps), size=6, replace=False))


# -- against the schedulefree package ------------------------------------------------------------

def _package_kwargs(kind, kw):
    out = {k: v for k, v in kw.items() if k != "maximize"}
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_the_schedulefree_package(kind, dtype, rng):
    """120 steps of random configurations (every option: warm-up, r, weight_lr_power, decay,
    lr changes that leave lr_max behind), with eval() / train() swaps mid-run on both and
    the eval-mode params (x) compared there. maximize is fusedoptim's: the package gets -g.
    float64: rtol 1e-9 (atol 1e-12 for elements that pass near zero, the params being O(1)).
    float32: the package's torch ops round differently (its vectorised lerp contracts to FMA,
    addcmul multiplies in another order), a few ulps per step that Adam's normalisation and
    120 steps of averaging carry along. Measured over 20 random configurations: at most
    1.2e-6 absolute (10 ulps of an O(1) param), 3e-6 relative away from zero; rtol 2e-5 and
    atol 4e-6 leave a margin for other draws. A wrong formula is off by far more."""
    torch = pytest.importorskip("torch")
    schedulefree = pytest.importorskip("schedulefree")
    cls = {"adamw": schedulefree.AdamWScheduleFree, "sgd": schedulefree.SGDScheduleFree}[kind]
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=4e-6)
    for trial in range(3):
        kw = SAMPLE[kind](rng)
        if trial == 0:
            kw.update(warmup_steps=5, r=0.5, weight_decay=0.01)   # every option on
        params = _params(rng, dtype)
        tp = [torch.tensor(p.copy()) for p in params]
        pkg = cls(tp, foreach=True, **_package_kwargs(kind, kw))
        ours = FUSED[kind](params, **kw)
        pkg.train()
        swaps = _plan_of_swaps(rng, 120)
        for step in range(1, 121):
            if step == 60:              # lower the lr: lr_max keeps the old one
                for opt in (pkg, ours):
                    opt.param_groups[0]["lr"] *= 0.5
            g = _grads(rng, params)
            for t, gi in zip(tp, g):
                t.grad = torch.tensor(-gi if kw["maximize"] else gi.copy())
            pkg.step()
            ours.step(g)
            if step in swaps:
                pkg.eval()
                ours.eval()
                for p, t in zip(params, tp):
                    np.testing.assert_allclose(p, t.numpy(), **tol, err_msg=f"x at {step}")
                pkg.train()
                ours.train()
        group = pkg.param_groups[0]
        for i, (p, t) in enumerate(zip(params, tp)):
            np.testing.assert_allclose(p, t.numpy(), **tol)
            st = ours.state[i]
            np.testing.assert_allclose(st["z"], pkg.state[t]["z"].numpy(), **tol)
            if kind == "adamw":
                np.testing.assert_allclose(st["exp_avg_sq"], pkg.state[t]["exp_avg_sq"].numpy(),
                                           rtol=tol["rtol"])
            # the schedule is computed in double by the same formulas: exactly equal
            assert (st["step"], st["weight_sum"], st["lr_max"]) == (
                group["k"], group["weight_sum"], group["lr_max"])


def test_a_step_in_eval_mode_is_refused_as_in_the_package(rng):
    p = _params(rng, np.float64)
    opt = fo.ScheduleFreeAdamW(p)
    opt.step(_grads(rng, p))
    opt.eval()
    before = [x.copy() for x in p]
    z = [opt.state[i]["z"].copy() for i in range(len(p))]
    with pytest.raises(RuntimeError, match=r"eval mode.*optimizer\.train\(\)"):
        opt.step(_grads(rng, p))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(p, before))
    assert all(opt.state[i]["z"].tobytes() == z[i].tobytes() for i in range(len(p)))
    assert opt.state[0]["step"] == 1 and opt.train_mode is False
    opt.train()
    opt.step(_grads(rng, p))
    assert opt.state[0]["step"] == 2


def test_swaps_are_idempotent_and_invert_each_other(rng):
    p = _params(rng, np.float64)
    opt = fo.ScheduleFreeSGD(p, lr=0.1, momentum=0.8)
    opt.eval()                       # no state yet: nothing moves
    opt.train()
    for _ in range(5):
        opt.step(_grads(rng, p))
    y = [x.copy() for x in p]
    opt.train()                      # already in train mode: nothing moves
    assert all(a.tobytes() == b.tobytes() for a, b in zip(p, y))
    opt.eval()
    x = [a.copy() for a in p]
    opt.eval()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(p, x))
    for a, yy, i in zip(x, y, range(3)):      # x = (y - (1 - beta) z) / beta
        z = opt.state[i]["z"]
        np.testing.assert_allclose(a, (yy - 0.2 * z) / 0.8, rtol=1e-12, atol=1e-14)
    opt.train()
    for a, b in zip(p, y):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_first_step_starts_z_at_the_param(rng):
    """z = p at the first step whatever its buffer held (c_1 = 1: y = z - lr u)."""
    p = _params(rng, np.float64, [(50,)])
    p0 = p[0].copy()
    g = _grads(rng, p)
    opt = fo.ScheduleFreeSGD(p, lr=0.5)
    opt.step(g)
    np.testing.assert_array_equal(opt.state[0]["z"], p0 - 0.5 * g[0])
    np.testing.assert_array_equal(p[0], p0 - 0.5 * g[0])   # y = lerp(y, z, 1) + lr (0.9*0 - 1) g


def test_schedule_is_the_packages(rng):
    """Warm-up, lr_max, the weights and c_{t+1}, step by step as the package computes them."""
    lr, warm, r, power = 0.3, 4, 0.5, 2.0
    ws, lr_max = 0.0, -1.0
    for k in range(10):
        sched = (k + 1) / warm if k < warm else 1.0
        lr_k = lr * sched
        exp_max = max(lr_k, lr_max)
        weight = ((k + 1) ** r) * (exp_max ** power)
        exp_ws = ws + weight
        got = schedule(k + 1, ws, lr_max, lr, warm, r, power)
        assert got == (lr_k, weight / exp_ws, exp_ws, exp_max)
        ws, lr_max = exp_ws, exp_max
    assert schedule(1, 0.0, -1.0, 0.0, 0, 0.0, 2.0) == (0.0, 0.0, 0.0, 0.0)   # lr 0: c = 0


@pytest.mark.parametrize("kind", ["ScheduleFreeSGD", "ScheduleFreeAdamW"])
def test_a_weight_beyond_the_doubles_is_inf_not_an_exception(kind):
    """lr_max ** weight_lr_power past the doubles (lr 1e300, power 2) raised OverflowError
    mid-step (found by tests/property). It is inf, as any overflow in the step: the weight
    sum is inf, c = inf / inf is NaN, and the params turn NaN, in the class and the twin."""
    assert schedule(1, 0.0, 0.0, 1e300, 0, 0.0, 2.0)[2] == math.inf
    results = []
    for cls in (getattr(fo, kind), getattr(fo.reference, kind)):
        p = np.ones(5)
        opt = cls([p], lr=1e300)
        opt.step([np.ones(5)])
        assert opt.state[0]["weight_sum"] == math.inf and np.isnan(p).all()
        results.append(p)
    assert np.isnan(results[1]).all()


# -- against Optax's mapping -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_optax_mapping(kind, rng):
    """optax.contrib.schedule_free_adamw / schedule_free_sgd with warmup_steps=None and r=0
    (Optax has no r, and its warm-up lags by a step), float64: the params (y) and
    schedule_free_eval_params (x) after every step, rtol 1e-9. One jitted run per kind, the
    hyperparameters passed as arguments."""
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    steps, n = 100, 40

    def run(p0, grads, lr, b1, b2, eps, wd, power):
        if kind == "adamw":
            tx = optax.contrib.schedule_free_adamw(lr, None, b1, b2, eps, wd, power)
        else:
            tx = optax.contrib.schedule_free_sgd(lr, None, b1, wd, power)

        def body(carry, g):
            p, s = carry
            u, s = tx.update(g, s, p)
            p = optax.apply_updates(p, u)
            return (p, s), (p, optax.contrib.schedule_free_eval_params(s, p))
        return jax.lax.scan(body, (p0, tx.init(p0)), grads)[1]

    jitted = jax.jit(run)
    for trial in range(3):
        kw = SAMPLE[kind](rng)
        kw.update(warmup_steps=0, r=0.0, maximize=False)
        if kind == "adamw":
            b1, b2 = kw["betas"]
            eps = kw["eps"]
        else:
            b1, b2, eps = kw["momentum"], 0.0, 0.0
        p = rng.standard_normal(n)
        grads = rng.standard_normal((steps, n))
        ys, xs = jitted(jnp.asarray(p), jnp.asarray(grads), kw["lr"], b1, b2, eps,
                        kw["weight_decay"], kw["weight_lr_power"])
        opt = FUSED[kind]([p], **kw)
        for t in range(steps):
            opt.step([grads[t]])
            np.testing.assert_allclose(p, np.asarray(ys[t]), rtol=1e-9, atol=1e-12)
            if t % 25 == 24:
                opt.eval()
                np.testing.assert_allclose(p, np.asarray(xs[t]), rtol=1e-9, atol=1e-12)
                opt.train()


# -- the reference twin, bitwise, with swaps and every precision row ------------------------------

PRECISIONS = [
    ("float32", {}), ("float64", {}),
    ("bfloat16", dict(master_weights=True)), ("float16", dict(master_weights=True)),
    ("bfloat16", dict(master_weights=False)), ("float16", dict(master_weights=False)),
    ("float32", dict(state_dtype="bfloat16")),
    ("bfloat16", dict(master_weights=False, stochastic_rounding=True, seed=3)),
]


@pytest.mark.parametrize("dtype,options", PRECISIONS,
                         ids=[f"{d}-{'-'.join(f'{k}={v}' for k, v in o.items())}"
                              for d, o in PRECISIONS])
@pytest.mark.parametrize("kind", KINDS)
def test_fused_matches_the_twin_bitwise_with_swaps(kind, dtype, options, rng):
    from fusedoptim._precision import BFLOAT16
    dt = BFLOAT16 if dtype == "bfloat16" else np.dtype(dtype)
    gdt = dt if dt != np.float64 else np.float64
    start = [np.asarray(rng.standard_normal(s), np.float32).astype(dt)
             for s in [(7,), (3, 5), (20_000,)]]
    a, b = [x.copy() for x in start], [x.copy() for x in start]
    kw = SAMPLE[kind](rng)
    fused, twin = FUSED[kind](a, **kw, **options), TWIN[kind](b, **kw, **options)
    swaps = _plan_of_swaps(rng, 30)
    for step in range(30):
        g = [np.asarray(rng.standard_normal(x.shape), np.float32).astype(gdt) for x in start]
        if step == 10:
            g[1] = None                 # a param without a grad: it keeps its own count
        fused.step(g)
        twin.step(g)
        if step in swaps:
            fused.eval()
            twin.eval()
            assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b)), step
            fused.train()
            twin.train()
        assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b)), step
    fs, ts = fused.state_dict(), twin.state_dict()
    for i in fs["state"]:
        for k, val in fs["state"][i].items():
            other = ts["state"][i][k]
            if isinstance(val, np.ndarray):
                assert val.tobytes() == other.tobytes(), (i, k)
            else:
                assert val == other, (i, k)


# -- checkpoints, threads, drop-in --------------------------------------------------------------

@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_mid_run(kind, mode, rng):
    kw = SAMPLE[kind](rng)
    p = _params(rng, np.float32)
    opt = FUSED[kind](p, **kw)
    for _ in range(17):
        opt.step(_grads(rng, p))
    if mode == "eval":
        opt.eval()
    sd = opt.state_dict()
    assert sd["train_mode"] is (mode == "train")
    for i in range(len(p)):
        assert {"step", "weight_sum", "lr_max", "z"} <= set(sd["state"][i])
        assert sd["state"][i]["weight_sum"] > 0 and sd["state"][i]["lr_max"] == opt.state[i][
            "lr_max"]
    q = [x.copy() for x in p]
    other = FUSED[kind](q, **kw)
    other.load_state_dict(sd)
    assert other.train_mode is (mode == "train")
    for o in (opt, other):
        o.train()
    for _ in range(9):
        g = _grads(rng, p)
        opt.step(g)
        other.step(g)
    opt.eval()
    other.eval()
    assert all(x.tobytes() == y.tobytes() for x, y in zip(p, q))
    with pytest.raises(TypeError, match="train_mode"):
        other.load_state_dict(dict(sd, train_mode="yes"))
    assert other.train_mode is False


def test_bitwise_identical_for_1_2_and_3_threads(rng):
    before = fo.get_num_threads()
    start = _params(rng, np.float32, [(130_001,), (5,)])
    grads = [_grads(rng, start) for _ in range(6)]
    results = []
    try:
        for n in (1, 2, 3):
            fo.set_num_threads(n)
            for kind in KINDS:
                p = [x.copy() for x in start]
                opt = FUSED[kind](p, **SAMPLE[kind](np.random.default_rng(7)))
                for s, g in enumerate(grads):
                    opt.step(g)
                    if s == 3:
                        opt.eval()
                        opt.train()
                opt.eval()
                results.append((n, kind, b"".join(x.tobytes() for x in p)))
    finally:
        fo.set_num_threads(before)
    for kind in KINDS:
        got = [r for _, k, r in results if k == kind]
        assert got[0] == got[1] == got[2]


def test_a_bad_group_refuses_the_swap_and_moves_nothing(rng):
    p = _params(rng, np.float64)
    opt = fo.ScheduleFreeAdamW([{"params": p[:2]}, {"params": p[2:]}])
    opt.step(_grads(rng, p))
    before = [x.copy() for x in p]
    opt.param_groups[1]["betas"] = (0.0, 0.999)
    with pytest.raises(ValueError, match=r"betas\[0\]"):
        opt.eval()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(p, before))
    assert opt.train_mode is True


def test_the_torch_drop_in_trains_and_evaluates(rng):
    torch = pytest.importorskip("torch")
    schedulefree = pytest.importorskip("schedulefree")
    import fusedoptim.torch as fot
    init = torch.randn(4, 3, dtype=torch.float64)
    a = torch.nn.Parameter(init.clone())
    b = torch.nn.Parameter(init.clone())
    ours = fot.ScheduleFreeAdamW([a], lr=0.01, warmup_steps=3)
    pkg = schedulefree.AdamWScheduleFree([b], lr=0.01, warmup_steps=3)
    ours.train()
    pkg.train()
    for step in range(8):
        g = torch.randn(4, 3, dtype=torch.float64)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        pkg.step()
        if step == 4:
            ours.eval()
            pkg.eval()
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-9, atol=1e-12)
            ours.train()
            pkg.train()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-9, atol=1e-12)
    ours.eval()
    with pytest.raises(RuntimeError, match="eval mode"):
        ours.step()
    sd = ours.state_dict()          # the mode in torch's groups, as the package keeps it
    assert sd["param_groups"][0]["train_mode"] is False
    c = torch.nn.Parameter(a.detach().clone())
    other = fot.ScheduleFreeAdamW([c], lr=0.01, warmup_steps=3)
    other.load_state_dict(sd)
    assert other._fused.train_mode is False
    other.train()
    ours.train()
    torch.testing.assert_close(a.detach(), c.detach(), rtol=0, atol=0)


def test_a_package_checkpoint_loads_into_the_drop_in_and_continues(rng):
    """The package keeps k, weight_sum and lr_max per group: each param takes its group's."""
    torch = pytest.importorskip("torch")
    schedulefree = pytest.importorskip("schedulefree")
    import fusedoptim.torch as fot
    init = torch.randn(6, 5, dtype=torch.float64)
    a = torch.nn.Parameter(init.clone())
    pkg = schedulefree.SGDScheduleFree([a], lr=0.3, momentum=0.7, warmup_steps=4, r=1.0)
    pkg.train()
    grads = [torch.randn(6, 5, dtype=torch.float64) for _ in range(20)]
    for g in grads[:10]:
        a.grad = g.clone()
        pkg.step()
    pkg.eval()
    sd = pkg.state_dict()
    b = torch.nn.Parameter(a.detach().clone())
    ours = fot.ScheduleFreeSGD([b], lr=0.3, momentum=0.7, warmup_steps=4, r=1.0)
    ours.load_state_dict(sd)
    assert ours._fused.train_mode is False and ours._fused.state[0]["step"] == 10
    pkg.train()
    ours.train()
    for g in grads[10:]:
        a.grad, b.grad = g.clone(), g.clone()
        pkg.step()
        ours.step()
    torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_flat_params_swap_as_one_tensor_and_per_param(kind, rng):
    """A FlatParams group steps (and swaps) as one flat tensor; after a step that skips a
    param it runs per param on the same buffers. Both agree with the twin bitwise."""
    src = {"W": rng.standard_normal((40, 30)), "b": rng.standard_normal(30),
           "c": rng.standard_normal(5)}
    a = fo.FlatParams.from_arrays(src, dtype=np.float32)
    b = {k: np.asarray(v, np.float32) for k, v in src.items()}
    kw = SAMPLE[kind](rng)
    fused, twin = FUSED[kind](a, **kw), TWIN[kind](b, **kw)
    for step in range(12):
        g = {k: np.asarray(rng.standard_normal(v.shape), np.float32) for k, v in src.items()}
        if step == 6:
            g["c"] = None
        a.flat_grad[...] = np.concatenate([(np.zeros(v.size, np.float32) if g[k] is None
                                            else g[k].reshape(-1)) for k, v in src.items()])
        fused.step(g if step == 6 else None)
        twin.step(g)
        if step in (0, 6):              # flat, then per param
            assert fused._caches[0].plan.ntensors == (1 if step == 0 else 3), step
        if step in (3, 6, 9):
            fused.eval()
            twin.eval()
            assert all(a.params[k].tobytes() == b[k].tobytes() for k in src), step
            fused.train()
            twin.train()
    assert all(a.params[k].tobytes() == b[k].tobytes() for k in src)
