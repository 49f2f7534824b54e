"""AdEMAMix: against bitsandbytes 0.50.2 (its 32-bit CPU class, its float64-capable reference
class, its 8-bit CPU path) and optax.contrib.ademamix (float64, jax x64), the NumPy reference
twin bitwise, the warm-up schedules, threads.

The generic battery (tests/cases.py: random hyperparameters vs the twin, checkpoints, bad
input, skip_nonfinite, precision rows, ISA levels) runs too."""

import math

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim.optim.ademamix import ademamix_scalars, scheduled_alpha, scheduled_beta3

from _threads import THREAD_COUNTS, per_thread_count
from cases import CASES

CASE = next(c for c in CASES if c.name == "AdEMAMix")
STEPS = 120


def _config(rng):
    """A random configuration covering every option bitsandbytes has (and maximize)."""
    kw = CASE.sample(rng)
    kw["lr"] = float(10 ** rng.uniform(-3, -1.5))      # large enough to move p visibly
    return kw


def _bnb_kwargs(kw):
    return {k: v for k, v in kw.items() if k != "maximize"}


def _run_bnb(torch, cls, starts, grads_seq, kw, tdtype):
    tparams = [torch.nn.Parameter(torch.tensor(p, dtype=tdtype)) for p in starts]
    # One group per param: bitsandbytes' _ReferenceAdEMAMix rebinds alpha and beta3 to their
    # scheduled values inside its loop over a group's params, so with t_alpha/t_beta3 set
    # the second param of a group gets the schedule applied twice (a bug of that test class,
    # not of bnb's optimizers, which schedule per param from the group's config).
    opt = cls([{"params": [t]} for t in tparams], **_bnb_kwargs(kw))
    sign = -1.0 if kw.get("maximize") else 1.0
    for grads in grads_seq:
        for t, g in zip(tparams, grads):
            t.grad = torch.tensor(sign * g, dtype=tdtype)
        opt.step()
    return [t.detach().numpy() for t in tparams]


def _run_ours(starts, grads_seq, kw, **opts):
    params = [p.copy() for p in starts]
    opt = fo.AdEMAMix(params, **kw, **opts)
    for grads in grads_seq:
        opt.step(grads)
    return params, opt


def _data(rng, dtype, sizes=(5, 777, 5000), steps=STEPS):
    starts = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads_seq = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(steps)]
    return starts, grads_seq


def test_float32_matches_bitsandbytes_ademamix_on_cpu(rng):
    """bnb.optim.AdEMAMix (32-bit; its CPU kernel when t_alpha/t_beta3 are set, its
    Optimizer2State path otherwise) over 100 steps, 3 random configurations (every option
    bnb has, and maximize through negated grads). Stated tolerance: 2 sqrt(T) = 20 float32
    ulps of max|p|, absolute. Why: the gradients are fixed, so rounding differences do not
    feed back; the two differ per step by at most about an ulp of p (bnb divides by the bias
    corrections where we multiply by reciprocals, and torch's add/addcmul may fuse into FMAs),
    with random sign, so they add up like a random walk over T steps. Measured: at most 2.1
    ulps of max|p| over 12 configurations."""
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    eps32 = float(np.finfo(np.float32).eps)
    steps = 100
    for trial in range(3):
        kw = _config(rng)
        if trial == 0:
            kw.update(t_alpha=50, t_beta3=80, weight_decay=0.05)     # both schedulers
        if trial == 1:
            kw.update(t_alpha=None, t_beta3=None, weight_decay=0.0)  # bnb's fall-through path
        starts, grads_seq = _data(rng, np.float32, sizes=(5, 3000), steps=steps)
        ours, _ = _run_ours(starts, grads_seq, kw)
        theirs = _run_bnb(torch, bnb.optim.AdEMAMix, starts, grads_seq, kw, torch.float32)
        for a, b in zip(ours, theirs):
            atol = 2 * math.sqrt(steps) * eps32 * np.abs(b).max()
            np.testing.assert_allclose(a, b, rtol=0, atol=atol)
        assert any(np.abs(a - s).max() > 10 * kw["lr"] for a, s in zip(ours, starts))


def test_float64_matches_bitsandbytes_reference_class(rng):
    """bitsandbytes' own float64-capable AdEMAMix (bitsandbytes.optim.ademamix.
    _ReferenceAdEMAMix: plain torch ops, the formula of its kernels), in float64, rtol 1e-9,
    120 steps, 6 random configurations, one param group per param (see _run_bnb). It adds
    weight_decay * p to the update instead of scaling p first: the same in exact
    arithmetic."""
    torch = pytest.importorskip("torch")
    ref_mod = pytest.importorskip("bitsandbytes.optim.ademamix")
    for trial in range(6):
        kw = _config(rng)
        if trial == 0:
            kw.update(t_alpha=30, t_beta3=70, weight_decay=0.05)
        starts, grads_seq = _data(rng, np.float64, sizes=(5, 3000))
        ours, _ = _run_ours(starts, grads_seq, kw)
        theirs = _run_bnb(torch, ref_mod._ReferenceAdEMAMix, starts, grads_seq, kw,
                          torch.float64)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def optax_step():
    """One jitted optax.contrib.ademamix step for every configuration: the hyperparameters
    (this step's scheduled alpha and beta3 among them) are traced arguments, so it compiles
    once per dtype and param structure. Mapping: optax.contrib.ademamix(lr, b1, b2, b3,
    alpha, eps, eps_root=0, weight_decay=wd) with b3 and alpha the schedules evaluated at
    Optax's 0-based count + 1 (see AdEMAMix's docstring)."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax.contrib")
    import optax
    from optax import contrib
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)

    def update(params, grads, state, lr, b1, b2, b3, alpha, eps, wd):
        tx = contrib.ademamix(lr, b1=b1, b2=b2, b3=b3, alpha=alpha, eps=eps, weight_decay=wd)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    jitted = jax.jit(update)

    def run(starts, grads_seq, kw):
        import jax.numpy as jnp
        b1, b2, b3 = kw["betas"]
        sign = -1.0 if kw["maximize"] else 1.0
        params = [jnp.asarray(p) for p in starts]
        state = contrib.ademamix(1e-3).init(params)
        for t, grads in enumerate(grads_seq, 1):
            params, state = jitted(params, [jnp.asarray(sign * g) for g in grads], state,
                                   kw["lr"], b1, b2, scheduled_beta3(t, b1, b3, kw["t_beta3"]),
                                   scheduled_alpha(t, kw["alpha"], kw["t_alpha"]), kw["eps"],
                                   kw["weight_decay"])
        return [np.asarray(p) for p in params]

    yield run
    jax.config.update("jax_enable_x64", previous)


def test_float64_matches_optax_contrib_ademamix(rng, optax_step):
    """120 steps, 6 random configurations (both warm-ups on and off, decay, maximize)."""
    for trial in range(6):
        kw = _config(rng)
        if trial == 0:
            kw.update(t_alpha=40, t_beta3=90, weight_decay=0.05)
        starts, grads_seq = _data(rng, np.float64)
        ours, _ = _run_ours(starts, grads_seq, kw)
        theirs = optax_step(starts, grads_seq, kw)
        assert theirs[0].dtype == np.float64
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def _bnb_formula_float64(p, m1, m2, nu, g, t, lr, b1, b2, b3, alpha, t_alpha, t_beta3, eps, wd):
    """bitsandbytes' CPU kernel (backends/cpu/ops.py, optimizer "ademamix") and its scheduler
    (optim/ademamix.py), written out independently in float64 NumPy, in its operation order:
    divisions by the bias corrections, the decay before the update."""
    if t_alpha:
        alpha = min(t * alpha / t_alpha, alpha)
    if t_beta3:
        s = t / t_beta3
        b3 = min(math.exp(math.log(b1) * math.log(b3)
                          / ((1 - s) * math.log(b3) + s * math.log(b1))), b3)
    m1[...] = m1 * b1 + (1 - b1) * g
    m2[...] = m2 * b3 + (1 - b3) * g
    nu[...] = nu * b2 + (1 - b2) * g * g
    c1, c2 = 1 - b1 ** t, math.sqrt(1 - b2 ** t)
    if wd > 0:
        p *= 1 - lr * wd
    p -= lr * ((m1 / c1 + alpha * m2) / (np.sqrt(nu) / c2 + eps))


def test_float64_matches_bitsandbytes_formula_written_out(rng):
    for trial in range(4):
        kw = _config(rng)
        kw["maximize"] = False
        starts, grads_seq = _data(rng, np.float64, sizes=(300,))
        ours, _ = _run_ours(starts, grads_seq, kw)
        p = starts[0].copy()
        m1, m2, nu = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
        b1, b2, b3 = kw["betas"]
        for t, (g,) in enumerate(grads_seq, 1):
            _bnb_formula_float64(p, m1, m2, nu, g, t, kw["lr"], b1, b2, b3, kw["alpha"],
                                 kw["t_alpha"], kw["t_beta3"], kw["eps"], kw["weight_decay"])
        np.testing.assert_allclose(ours[0], p, rtol=1e-9, atol=1e-12)


def test_int8_state_follows_bitsandbytes_ademamix8bit(rng):
    """bnb.optim.AdEMAMix8bit's CPU path (dequantize, float32 update, requantize: the signed
    map for m1 and m2, the unsigned one for nu, blocks of 256) against state_dtype="int8",
    100 steps. Not bitwise: bitsandbytes' native CPU quantizer is not always the nearest code
    (see tests/test_quant.py; here 7% of m1's and 20% of nu's codes differ after 100 steps),
    and a differing code changes the later moments of its block. Stated bounds: the two int8
    trajectories are 4x closer to each other than to the float32-state one (measured: 9x),
    and both sit equally far from float32 state (their quantization noise has the same size:
    within 10%; measured 0.4%). The first step, whose update uses the moments before
    requantization, agrees to float32 rounding."""
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    n, steps = 10_000, 100
    kw = dict(lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha=60, t_beta3=60,
              eps=1e-8, weight_decay=0.01)
    starts, grads_seq = _data(rng, np.float32, sizes=(n,), steps=steps)
    first = _run_bnb(torch, bnb.optim.AdEMAMix8bit, starts, grads_seq[:1], kw, torch.float32)
    ours1, _ = _run_ours(starts, grads_seq[:1], kw, state_dtype="int8")
    np.testing.assert_allclose(ours1[0], first[0], rtol=0, atol=4e-7 * np.abs(first[0]).max())
    theirs = _run_bnb(torch, bnb.optim.AdEMAMix8bit, starts, grads_seq, kw, torch.float32)
    ours, opt = _run_ours(starts, grads_seq, kw, state_dtype="int8")
    assert opt.state[0]["exp_avg"].dtype == opt.state[0]["exp_avg_slow"].dtype == np.uint8
    f32, _ = _run_ours(starts, grads_seq, kw)
    d_int8 = np.abs(ours[0] - theirs[0]).mean()
    d_ours = np.abs(ours[0] - f32[0]).mean()
    d_theirs = np.abs(theirs[0] - f32[0]).mean()
    assert d_ours > 0.05 * kw["lr"]                   # int8 state really is in use
    assert d_int8 < 0.25 * d_ours, (d_int8, d_ours)
    assert abs(d_theirs / d_ours - 1) < 0.1, (d_theirs, d_ours)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_matches_reference_twin_bitwise(rng, dtype):
    """Every option, 120 steps, on 1, 2 and 3 threads: params and m1, m2, nu bitwise."""
    for trial in range(3):
        kw = _config(rng)
        starts, grads_seq = _data(rng, dtype, sizes=(7, 40_001))
        twin = [p.copy() for p in starts]
        ref = fo.reference.AdEMAMix(twin, **kw)
        for grads in grads_seq:
            ref.step(grads)
        runs = per_thread_count(lambda: _run_ours(starts, grads_seq, kw))
        for threads, (ours, opt) in zip(THREAD_COUNTS, runs):
            for a, b in zip(ours, twin):
                assert a.tobytes() == b.tobytes(), (kw, threads)
            for i in opt.state:
                for k in ("exp_avg", "exp_avg_slow", "exp_avg_sq"):
                    assert opt.state[i][k].tobytes() == ref.state[i][k].tobytes(), k


# int4 (blockwise and rank-1) and bfloat16 params: tests/test_quantized_state.py and
# tests/test_rank1_state.py list AdEMAMix and ADOPT too.
@pytest.mark.parametrize("state_dtype", ["int8"])
def test_quantized_state_matches_reference_twin_bitwise(rng, state_dtype):
    """int8/int4 state (the two EMAs signed, nu unsigned): codes, absmax and params equal the
    twin's (which dequantizes, runs the float32 reference and requantizes), on 1-3 threads."""
    kw = dict(lr=1e-2, betas=(0.8, 0.99, 0.999), alpha=3.0, t_alpha=20, t_beta3=30,
              weight_decay=0.02)
    # 33101 elements: above the driver's serial threshold (32768), so 2 and 3 threads split
    # the work; the 100-element param keeps float32 state (below min_quantized_size)
    starts, grads_seq = _data(rng, np.float32, sizes=(100, 33_001), steps=10)
    twin = [p.copy() for p in starts]
    ref = fo.reference.AdEMAMix(twin, **kw, state_dtype=state_dtype)
    for grads in grads_seq:
        ref.step(grads)
    runs = per_thread_count(lambda: _run_ours(starts, grads_seq, kw, state_dtype=state_dtype),
                            via="threadpoolctl")
    for threads, (ours, opt) in zip(THREAD_COUNTS, runs):
        for a, b in zip(ours, twin):
            assert a.tobytes() == b.tobytes(), threads
        for i in opt.state:
            for k, v in opt.state[i].items():
                if isinstance(v, np.ndarray):
                    assert v.tobytes() == ref.state[i][k].tobytes(), (k, threads)
    st = opt.state[1]
    assert opt.state[0]["exp_avg"].dtype == np.float32
    assert st["exp_avg"].dtype == st["exp_avg_slow"].dtype == st["exp_avg_sq"].dtype == np.uint8


def test_schedules_follow_bitsandbytes():
    # alpha: linear from alpha / t_alpha to alpha at t_alpha, then constant
    assert scheduled_alpha(1, 5.0, 10) == 0.5 and scheduled_alpha(10, 5.0, 10) == 5.0
    assert scheduled_alpha(11, 5.0, 10) == 5.0 and scheduled_alpha(3, 5.0, None) == 5.0
    # beta3: from (just above) beta1 to beta3 at t_beta3, monotone, capped
    assert scheduled_beta3(0, 0.9, 0.9999, 100) == pytest.approx(0.9, rel=1e-15)
    b = [scheduled_beta3(t, 0.9, 0.9999, 100) for t in range(1, 150)]
    assert 0.9 < b[0] < 0.9999 and all(x <= y for x, y in zip(b, b[1:]))
    assert b[99] == pytest.approx(0.9999, rel=1e-15) and b[-1] == 0.9999
    assert scheduled_beta3(5, 0.9, 0.9999, None) == 0.9999
    # and the kernel's scalars carry them, with bnb's bias corrections
    s = ademamix_scalars(7, 1e-3, 0.9, 0.999, 0.9999, 5.0, 10, 100, 1e-8, 0.01, False)
    names = fo._kernels.SCALARS["ademamix"]
    got = dict(zip(names, s))
    assert got["alpha"] == 3.5 and got["beta3"] == scheduled_beta3(7, 0.9, 0.9999, 100)
    assert got["inv_bias_correction1"] == 1 / (1 - 0.9 ** 7)
    assert got["inv_bias_correction2_sqrt"] == 1 / math.sqrt(1 - 0.999 ** 7)
    assert got["mode"] == 1.0 and got["decay"] == 1 - 1e-5


def test_alpha_zero_is_adamw(rng):
    """With alpha = 0 the slow EMA drops out: the step is AdamW's (same corrections)."""
    p = rng.standard_normal(1000)
    q = p.copy()
    a = fo.AdEMAMix([p], lr=1e-2, alpha=0.0, weight_decay=0.1)
    b = fo.AdamW([q], lr=1e-2, weight_decay=0.1)
    for _ in range(30):
        g = rng.standard_normal(1000)
        a.step([g])
        b.step([g])
    np.testing.assert_allclose(p, q, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_functional_matches_class_and_reference(rng, dtype):
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.99, beta3=0.999, alpha=4.0, t_alpha=5, t_beta3=9,
              eps=1e-8, weight_decay=0.02, maximize=True)
    p_cls = [np.asarray(rng.standard_normal(s), dtype) for s in [(3, 3), (40_000,)]]
    p_fun, p_ref = [p.copy() for p in p_cls], [p.copy() for p in p_cls]
    zeros = lambda: [np.zeros_like(p) for p in p_cls]
    st_fun, st_ref = (zeros(), zeros(), zeros(), [0, 0]), (zeros(), zeros(), zeros(), [0, 0])
    opt = fo.AdEMAMix(p_cls, lr=1e-3, betas=(0.9, 0.99, 0.999), alpha=4.0, t_alpha=5,
                      t_beta3=9, weight_decay=0.02, maximize=True)
    for _ in range(15):
        g = [np.asarray(rng.standard_normal(p.shape), dtype) for p in p_cls]
        fo.functional.ademamix(p_fun, g, *st_fun, **kw)
        fo.reference.ademamix(p_ref, g, *st_ref, **kw)
        opt.step(g)
    for a, b, c in zip(p_fun, p_ref, p_cls):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    assert st_fun[3] == [15, 15]


def test_defaults_are_bitsandbytes():
    import inspect
    sig = inspect.signature(fo.AdEMAMix)
    assert list(sig.parameters)[:8] == ["params", "lr", "betas", "alpha", "t_alpha", "t_beta3",
                                        "eps", "weight_decay"]
    defaults = {k: v.default for k, v in sig.parameters.items()}
    assert defaults["lr"] == 1e-3 and defaults["betas"] == (0.9, 0.999, 0.9999)
    assert defaults["alpha"] == 5.0 and defaults["t_alpha"] is None
    assert defaults["t_beta3"] is None and defaults["eps"] == 1e-8
    assert defaults["weight_decay"] == 0.01
    opt = fo.AdEMAMix([np.zeros(3)])
    assert opt.param_groups[0]["betas"] == (0.9, 0.999, 0.9999)


def _mlp_loop(torch, opt_cls, kw, steps=60):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                                torch.nn.Linear(16, 1)).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 6, generator=gen, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True)) + 0.3 * torch.randn(256, 1, generator=gen,
                                                                dtype=torch.float64)
    # one group per param: see _run_bnb
    opt = opt_cls([{"params": [p]} for p in model.parameters()], **kw)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in model.parameters()]


def test_torch_drop_in_trains_as_bitsandbytes_reference(rng):
    """fusedoptim.torch.AdEMAMix in a float64 training loop (grads depend on the params)
    against bitsandbytes' float64-capable reference class: rtol 1e-9 over 60 steps."""
    torch = pytest.importorskip("torch")
    ref_mod = pytest.importorskip("bitsandbytes.optim.ademamix")
    import fusedoptim.torch as fot
    kw = dict(lr=3e-3, betas=(0.9, 0.999, 0.999), alpha=4.0, t_alpha=20, t_beta3=30,
              weight_decay=0.01)
    ours, p_ours = _mlp_loop(torch, fot.AdEMAMix, kw)
    theirs, p_theirs = _mlp_loop(torch, ref_mod._ReferenceAdEMAMix, kw)
    assert ours[-1] < ours[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)
    for a, b in zip(p_ours, p_theirs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bad, name", [
    (dict(t_alpha=0), "t_alpha"), (dict(t_beta3=2.5), "t_beta3"), (dict(beta3=1.0), "betas[2]"),
    (dict(alpha=-1.0), "alpha"), (dict(t_beta3=10, beta1=0.0), "betas[0]"),
    (dict(t_beta3=10, beta3=0.5), "betas[2]"), (dict(eps=0.0), "eps")])
def test_functional_refuses_bad_hyperparameters_and_writes_nothing(rng, bad, name):
    p = rng.standard_normal(50)
    state = [np.full(50, 0.5), np.full(50, 0.25), np.full(50, 0.125)]
    before = [p.copy()] + [s.copy() for s in state]
    steps = [3]
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, beta3=0.9999)
    kw.update(bad)
    with pytest.raises((TypeError, ValueError)) as err:
        fo.functional.ademamix([p], [rng.standard_normal(50)], [state[0]], [state[1]],
                               [state[2]], steps, **kw)
    assert name in str(err.value)      # beta_k is labelled betas[k-1], as in the class
    assert steps == [3]
    for a, b in zip([p] + state, before):
        assert a.tobytes() == b.tobytes()
