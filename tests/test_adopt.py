"""ADOPT: against optax.contrib.adopt (float64, jax x64, rtol 1e-9) and the authors' release's
rule written out (github.com/iShohei220/adopt is not on PyPI, so it cannot be imported here),
the NumPy reference twin bitwise, the first step and the clip.

The generic battery (tests/cases.py: random hyperparameters vs the twin, checkpoints, bad
input, skip_nonfinite, precision rows, ISA levels) runs too."""

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim.optim.adopt import adopt_scalars

from _threads import THREAD_COUNTS, per_thread_count
from cases import CASES

CASE = next(c for c in CASES if c.name == "ADOPT")
STEPS = 120


def _data(rng, dtype, sizes=(5, 777, 3000), steps=STEPS):
    starts = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads_seq = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(steps)]
    return starts, grads_seq


def _run_ours(starts, grads_seq, kw, **opts):
    params = [p.copy() for p in starts]
    opt = fo.ADOPT(params, **kw, **opts)
    for grads in grads_seq:
        opt.step(grads)
    return params, opt


@pytest.fixture(scope="module")
def optax_step():
    """One jitted Optax ADOPT step for every configuration: the hyperparameters are traced
    arguments, so it compiles once per dtype and param structure. Mapping:
      L2 (decouple=False):  chain(add_decayed_weights(wd), contrib.adopt(lr, b1, b2, eps))
      decouple=True:        chain(contrib.scale_by_adopt(b1, b2, eps), add_decayed_weights(wd),
                                  scale_by_learning_rate(lr))
    use_clipping=True with the default clip_value_fn count**0.25 (the release's clip), eps in
    max(sqrt(nu), eps) as in the release. One difference: Optax's decoupled decay also acts on
    the first step, which in the release only sets v; the caller passes the decoupled
    weight decay as 0 on that step."""
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    pytest.importorskip("optax.contrib")
    from optax import contrib
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)

    def update(params, grads, state, lr, b1, b2, eps, wd_l2, wd_decoupled):
        grads, _ = optax.add_decayed_weights(wd_l2).update(grads, optax.EmptyState(), params)
        updates, state = contrib.scale_by_adopt(b1, b2, eps).update(grads, state)
        updates, _ = optax.add_decayed_weights(wd_decoupled).update(updates,
                                                                    optax.EmptyState(), params)
        updates, _ = optax.scale_by_learning_rate(lr).update(updates, optax.EmptyState())
        return optax.apply_updates(params, updates), state

    jitted = jax.jit(update)

    def run(starts, grads_seq, kw):
        import jax.numpy as jnp
        b1, b2 = kw["betas"]
        wd = kw["weight_decay"]
        sign = -1.0 if kw["maximize"] else 1.0
        params = [jnp.asarray(p) for p in starts]
        state = contrib.scale_by_adopt().init(params)
        for t, grads in enumerate(grads_seq, 1):
            wd_l2 = 0.0 if kw["decouple"] else wd
            wd_dec = wd if kw["decouple"] and t > 1 else 0.0
            params, state = jitted(params, [jnp.asarray(sign * g) for g in grads], state,
                                   kw["lr"], b1, b2, kw["eps"], wd_l2, wd_dec)
        return [np.asarray(p) for p in params]

    yield run
    jax.config.update("jax_enable_x64", previous)


def test_float64_matches_optax_contrib_adopt(rng, optax_step):
    """120 steps, 8 random configurations covering L2 and decoupled decay and maximize."""
    for trial in range(8):
        kw = CASE.sample(rng)
        if trial < 2:
            kw.update(weight_decay=0.05, decouple=bool(trial))
        starts, grads_seq = _data(rng, np.float64)
        ours, _ = _run_ours(starts, grads_seq, kw)
        theirs = optax_step(starts, grads_seq, kw)
        assert theirs[0].dtype == np.float64
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
        assert any(np.abs(a - s).max() > kw["lr"] for a, s in zip(ours, starts))


def test_float32_matches_optax_contrib_adopt(rng, optax_step):
    """float32 against Optax in float64: our float32 trajectory is within float32 rounding
    of the exact one. The gradients do not depend on p, so nothing feeds back; each step
    rounds p once (half an ulp of |p|) and the update lr * m to a few ulps, |m| <= the clip.
    Stated tolerance: per step 1 ulp of max|p| + 4 ulp of lr * clip, summed over the steps."""
    eps32 = float(np.finfo(np.float32).eps)
    for trial in range(4):
        kw = CASE.sample(rng)
        starts, grads_seq = _data(rng, np.float32)
        ours, _ = _run_ours(starts, grads_seq, kw)
        theirs = optax_step([s.astype(np.float64) for s in starts],
                            [[g.astype(np.float64) for g in gs] for gs in grads_seq], kw)
        for a, b in zip(ours, theirs):
            atol = STEPS * (eps32 * np.abs(b).max() + 4 * eps32 * kw["lr"] * STEPS ** 0.25)
            np.testing.assert_allclose(a, b, rtol=0, atol=atol)


def _release_rule(p, m, v, g, step, lr, b1, b2, eps, wd, decouple):
    """The authors' release (adopt.py, _single_tensor_adopt, default clip_lambda) written out
    in float64: `step` is its 0-based count before the increment."""
    if wd != 0 and not decouple:
        g = g + wd * p
    if step == 0:
        v += g * g
        return
    if wd != 0 and decouple:
        p += -lr * wd * p
    normed = np.clip(g / np.maximum(np.sqrt(v), eps), -step ** 0.25, step ** 0.25)
    m += (1 - b1) * (normed - m)            # torch.lerp(m, normed, 1 - b1)
    p -= lr * m
    v *= b2
    v += (1 - b2) * g * g


def test_float64_matches_the_release_rule(rng):
    for trial in range(6):
        kw = CASE.sample(rng)
        kw["maximize"] = False
        if trial < 2:
            kw.update(weight_decay=0.05, decouple=bool(trial))
        starts, grads_seq = _data(rng, np.float64, sizes=(400,))
        ours, _ = _run_ours(starts, grads_seq, kw)
        p = starts[0].copy()
        m, v = np.zeros_like(p), np.zeros_like(p)
        for step, (g,) in enumerate(grads_seq):
            _release_rule(p, m, v, g, step, kw["lr"], *kw["betas"], kw["eps"],
                          kw["weight_decay"], kw["decouple"])
        np.testing.assert_allclose(ours[0], p, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("decouple", [False, True])
def test_first_step_only_sets_v(rng, decouple):
    p = rng.standard_normal(100)
    p0 = p.copy()
    g = rng.standard_normal(100)
    opt = fo.ADOPT([p], lr=0.1, weight_decay=0.1, decouple=decouple)
    opt.step([g])
    assert p.tobytes() == p0.tobytes()              # no update, no decoupled decay
    assert not opt.state[0]["exp_avg"].any()
    g_l2 = g if decouple else g + 0.1 * p0
    assert opt.state[0]["exp_avg_sq"].tobytes() == (g_l2 * g_l2).tobytes()
    opt.step([g])                                   # the second step moves p by <= lr
    assert 0 < np.abs(p - p0).max() <= 0.1 * (1 + 0.1 * np.abs(p0).max())


def test_clip_is_the_release_step_quarter_power():
    names = fo._kernels.SCALARS["adopt"]
    for t in (1, 2, 3, 17, 10_001):
        s = dict(zip(names, adopt_scalars(t, 1e-3, 0.9, 0.9999, 1e-6, 0.0, False, False)))
        assert s["clip"] == (t - 1) ** 0.25
        assert s["mode"] == (4.0 if t == 1 else 0.0)
    # decoupled decay: never on the first step; L2: on every step
    assert adopt_scalars(1, 1e-3, 0.9, 0.9, 1e-6, 0.1, True, False)[-1] == 4.0
    assert adopt_scalars(2, 1e-3, 0.9, 0.9, 1e-6, 0.1, True, False)[-1] == 2.0
    assert adopt_scalars(1, 1e-3, 0.9, 0.9, 1e-6, 0.1, False, False)[-1] == 5.0


def test_clip_bounds_the_normalised_gradient():
    """A gradient 1e6 times its predecessor: normalised by the previous v it is 1e6, clipped
    to (t-1)^0.25, so m and the step stay bounded."""
    p = np.zeros(4)
    opt = fo.ADOPT([p], lr=1.0, betas=(0.0, 0.5))
    opt.step([np.full(4, 1e-3)])
    opt.step([np.full(4, 1e3)])                     # t = 2: clip = 1
    np.testing.assert_array_equal(p, -np.ones(4))
    np.testing.assert_array_equal(opt.state[0]["exp_avg"], np.ones(4))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_matches_reference_twin_bitwise(rng, dtype):
    """Every option, 120 steps, on 1, 2 and 3 threads: params, m and v bitwise."""
    for trial in range(3):
        kw = CASE.sample(rng)
        starts, grads_seq = _data(rng, dtype, sizes=(7, 40_001))
        twin = [p.copy() for p in starts]
        ref = fo.reference.ADOPT(twin, **kw)
        for grads in grads_seq:
            ref.step(grads)
        runs = per_thread_count(lambda: _run_ours(starts, grads_seq, kw))
        for threads, (ours, opt) in zip(THREAD_COUNTS, runs):
            for a, b in zip(ours, twin):
                assert a.tobytes() == b.tobytes(), (kw, threads)
            for i in opt.state:
                for k in ("exp_avg", "exp_avg_sq"):
                    assert opt.state[i][k].tobytes() == ref.state[i][k].tobytes(), k


# int4 (blockwise and rank-1) and bfloat16 params: tests/test_quantized_state.py and
# tests/test_rank1_state.py list AdEMAMix and ADOPT too.
@pytest.mark.parametrize("state_dtype", ["int8"])
def test_quantized_state_matches_reference_twin_bitwise(rng, state_dtype):
    kw = dict(lr=1e-2, betas=(0.9, 0.999), weight_decay=0.02, decouple=True)
    # 33101 elements: above the driver's serial threshold (32768), so 2 and 3 threads split
    # the work; the 100-element param keeps float32 state (below min_quantized_size)
    starts, grads_seq = _data(rng, np.float32, sizes=(100, 33_001), steps=10)
    twin = [p.copy() for p in starts]
    ref = fo.reference.ADOPT(twin, **kw, state_dtype=state_dtype)
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
    assert opt.state[1]["exp_avg_sq"].dtype == np.uint8


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_functional_matches_class_and_reference(rng, dtype):
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-6, weight_decay=0.02, decouple=True,
              maximize=True)
    p_cls = [np.asarray(rng.standard_normal(s), dtype) for s in [(3, 3), (40_000,)]]
    p_fun, p_ref = [p.copy() for p in p_cls], [p.copy() for p in p_cls]
    zeros = lambda: [np.zeros_like(p) for p in p_cls]
    st_fun, st_ref = (zeros(), zeros(), [0, 0]), (zeros(), zeros(), [0, 0])
    opt = fo.ADOPT(p_cls, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.02, decouple=True,
                   maximize=True)
    for _ in range(15):
        g = [np.asarray(rng.standard_normal(p.shape), dtype) for p in p_cls]
        fo.functional.adopt(p_fun, g, *st_fun, **kw)
        fo.reference.adopt(p_ref, g, *st_ref, **kw)
        opt.step(g)
    for a, b, c in zip(p_fun, p_ref, p_cls):
        assert a.tobytes() == b.tobytes() == c.tobytes()


def test_defaults_are_the_release():
    import inspect
    sig = inspect.signature(fo.ADOPT)
    assert list(sig.parameters)[:7] == ["params", "lr", "betas", "eps", "weight_decay",
                                        "decouple", "maximize"]
    d = {k: v.default for k, v in sig.parameters.items()}
    assert (d["lr"], d["betas"], d["eps"], d["weight_decay"], d["decouple"]) == (
        1e-3, (0.9, 0.9999), 1e-6, 0.0, False)


class _ReleaseRule:
    """The release's rule (_release_rule above) as a minimal torch optimizer, for loops."""

    def __init__(self, torch, params, lr, betas, eps=1e-6, weight_decay=0.0, decouple=False):
        self.params = list(params)
        self.kw = (lr, *betas, eps, weight_decay, decouple)
        self.state = [(np.zeros(p.shape), np.zeros(p.shape)) for p in self.params]
        self.step_count = 0

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        for p, (m, v) in zip(self.params, self.state):
            _release_rule(p.data.numpy(), m, v, p.grad.numpy(), self.step_count, *self.kw)
        self.step_count += 1


def test_torch_drop_in_trains_as_the_release_rule():
    """fusedoptim.torch.ADOPT in a float64 training loop (grads depend on the params) against
    the release's rule: rtol 1e-9 over 60 steps, L2 and decoupled decay."""
    torch = pytest.importorskip("torch")
    import fusedoptim.torch as fot

    def loop(make, steps=60):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                                    torch.nn.Linear(16, 1)).double()
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(256, 6, generator=gen, dtype=torch.float64)
        y = torch.sin(x.sum(1, keepdim=True)) + 0.3 * torch.randn(256, 1, generator=gen,
                                                                    dtype=torch.float64)
        opt = make(model.parameters())
        losses = []
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            with torch.no_grad():
                opt.step()
            losses.append(loss.item())
        return losses, [p.detach().clone() for p in model.parameters()]

    for decouple in (False, True):
        kw = dict(lr=1e-2, betas=(0.9, 0.999), weight_decay=0.01, decouple=decouple)
        ours, p_ours = loop(lambda ps: fot.ADOPT(ps, **kw))
        theirs, p_theirs = loop(lambda ps: _ReleaseRule(torch, ps, **kw))
        assert ours[-1] < ours[0]
        np.testing.assert_allclose(ours, theirs, rtol=1e-9)
        for a, b in zip(p_ours, p_theirs):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bad, name", [
    (dict(eps=0.0), "eps"), (dict(beta2=1.0), "betas[1]"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(decouple="no"), "decouple"), (dict(lr=float("nan")), "lr")])
def test_functional_refuses_bad_hyperparameters_and_writes_nothing(rng, bad, name):
    p = rng.standard_normal(50)
    m, v = np.full(50, 0.5), np.full(50, 0.25)
    before = [p.copy(), m.copy(), v.copy()]
    steps = [3]
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.9999)
    kw.update(bad)
    with pytest.raises((TypeError, ValueError)) as err:
        fo.functional.adopt([p], [rng.standard_normal(50)], [m], [v], steps, **kw)
    assert name in str(err.value)
    assert steps == [3]
    for a, b in zip([p, m, v], before):
        assert a.tobytes() == b.tobytes()
