"""Muon: against torch.optim.Muon (its iteration in the params' dtype, and its shipped
bfloat16 one), against the NumPy reference twin, checkpoints, threads, bad input, the
functional entry, and MuonWithAuxAdam. Muon takes only matrices, so it runs this battery
instead of the generic one in test_optimizers.py (see test_spec.OWN_BATTERY)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fusedoptim as fo
from cases import MUON_CASE
from fusedoptim._blas import blas_libraries
from fusedoptim.optim import muon as muon_mod

DTYPES = [np.float32, np.float64]
# Wide, tall and square, several of one shape (batched together), and one odd shape.
SHAPES = [(24, 40), (40, 24), (32, 32), (40, 24), (48, 8), (7, 13)]
EPS32 = float(np.finfo(np.float32).eps)


def _params(rng, dtype, shapes=SHAPES):
    return [np.asarray(rng.standard_normal(s), dtype) for s in shapes]


def _grads(rng, params, none_prob=0.0):
    return [None if none_prob and rng.random() < none_prob else
            np.asarray(rng.standard_normal(p.shape), p.dtype) for p in params]


_sample = MUON_CASE.sample


# -- torch ----------------------------------------------------------------------------------------

def _torch_zeropower_without_cast(torch):
    """torch's _zeropower_via_newtonschulz with its bfloat16 cast removed: the bench's
    re-implementation, operation for operation (torch's norm, clamp, div_, X @ X.T and the two
    addmm), with `grad.bfloat16()` replaced by `grad.clone()`."""
    from fusedoptim.bench import torch_zeropower_float32
    return torch_zeropower_float32(torch)


def _torch_tolerance(dtype, kw, steps):
    """float64: rtol 1e-9. float32: the products sum in another order than torch's MKL (and
    tall matrices are iterated as the transposes of torch's products), so each step's update
    X differs by a few dozen float32 roundings of |X| <= ~1.5 (5 iterations of three products
    each, each amplifying the last by at most |a| + |b| + |c| ~ 10 near convergence), and the
    param by a rounding of its own when the two sides' decayed params differ. Bound per step:
    lr * ratio * 64 eps + 2 ulp of |p| (<= 4): summed over the steps."""
    if dtype == np.float64:
        return dict(rtol=1e-9, atol=1e-12)
    ratio = max(muon_mod.adjusted_ratio(s, kw["adjust_lr_fn"]) for s in SHAPES)
    per_step = kw["lr"] * ratio * 64 * EPS32 + 2 * 4 * EPS32
    return dict(rtol=0, atol=steps * per_step)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch_with_the_cast_removed(dtype, rng, monkeypatch):
    torch = pytest.importorskip("torch")
    import torch.optim._muon as torch_muon
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz",
                        _torch_zeropower_without_cast(torch))
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    steps = 100
    for trial in range(4):
        kw = _sample(rng)
        params = _params(rng, dtype)
        tparams = [torch.tensor(p.copy(), dtype=tdtype) for p in params]
        # two groups, the second with its own lr, as torch's param groups
        opt = fo.Muon([{"params": params[:3]}, {"params": params[3:], "lr": kw["lr"] / 2}], **kw)
        topt = torch.optim.Muon([{"params": tparams[:3]},
                                 {"params": tparams[3:], "lr": kw["lr"] / 2}], **kw)
        for _ in range(steps):
            grads = _grads(rng, params)
            opt.step(grads)
            for t, g in zip(tparams, grads):
                t.grad = torch.tensor(g)
            topt.step()
        for i, (p, t) in enumerate(zip(params, tparams)):
            np.testing.assert_allclose(p, t.numpy(), **_torch_tolerance(dtype, kw, steps))
            # The buffer: torch's vectorised lerp fuses a multiply-add (one rounding where
            # fusedoptim rounds twice), an ulp of max(|g|, |buf|) < 8 per step, carried on
            # with weight `momentum` each step: at most 8 ulp(8) / (1 - momentum) in all.
            buf_tol = dict(rtol=0, atol=8 * 8 * float(np.finfo(dtype).eps)
                           / (1 - kw["momentum"]))
            np.testing.assert_allclose(opt.state[i]["momentum_buffer"],
                                       topt.state[t]["momentum_buffer"].numpy(), **buf_tol)
        assert not np.allclose(params[0], _params(np.random.default_rng(0), dtype)[0])


def test_bfloat16_iteration_matches_torchs_shipped_muon(rng):
    """ns_dtype="bfloat16" against unmodified torch.optim.Muon (its bfloat16 cast). Both
    accumulate products in float32 and round each to bfloat16, in different summation
    orders: an element of X rounds to a neighbouring bfloat16 value now and then (2^-8 of
    |X| <= ~1.5), so a param differs by lr * ratio * 2^-7 in those elements, and by nothing
    much elsewhere. Without ns_dtype, every element differs from torch by about that much."""
    torch = pytest.importorskip("torch")
    shapes = [(48, 32), (32, 48), (24, 24)]
    params = _params(rng, np.float32, shapes)
    plain = [p.copy() for p in params]
    tparams = [torch.tensor(p.copy()) for p in params]
    kw = dict(lr=0.05, weight_decay=0.1)
    opt = fo.Muon(params, ns_dtype="bfloat16", **kw)
    ref = fo.Muon(plain, **kw)
    topt = torch.optim.Muon(tparams, **kw)
    steps = 4
    for _ in range(steps):
        grads = _grads(rng, params)
        opt.step(grads)
        ref.step(grads)
        for t, g in zip(tparams, grads):
            t.grad = torch.tensor(g)
        topt.step()
    for p, q, t in zip(params, plain, tparams):
        t = t.numpy()
        ratio = muon_mod.adjusted_ratio(p.shape, None)
        bound = steps * kw["lr"] * ratio * 1.5 * 2.0 ** -7 + steps * 4 * 2 * EPS32
        assert np.abs(p - t).max() <= bound
        # ... and it is far closer to torch than the float32 iteration, which rounds X
        # differently in every element
        rms = lambda d: float(np.sqrt(np.mean(np.square(d, dtype=np.float64))))
        assert rms(p - t) <= 0.25 * rms(q - t)


# -- the reference twin -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference_twin(dtype, rng):
    """The element-wise passes bitwise (the momentum buffers never see the BLAS part); the
    params at a stated tolerance: the twin iterates each matrix as torch does (transposed
    when tall, A @ A, 2-D products), the fused step same-shape stacks (tall ones in place,
    A @ A^T) in BLAS: other summation orders, bounded as against torch."""
    for trial in range(3):
        kw = _sample(rng)
        kw["ns_dtype"] = None if trial else "bfloat16"
        if dtype == np.float64 and kw["ns_dtype"]:
            kw["ns_dtype"] = None
        params = _params(rng, dtype)
        ref_params = [p.copy() for p in params]
        opt = fo.Muon(params, **kw)
        ref = fo.reference.Muon(ref_params, **kw)
        steps = 30
        for _ in range(steps):
            grads = _grads(rng, params, none_prob=0.15)
            opt.step(grads)
            ref.step(grads)
        tol = _torch_tolerance(dtype, kw, steps)
        if dtype == np.float64:
            tol = dict(rtol=1e-11, atol=1e-13)
        if kw["ns_dtype"]:      # a rounding to another bfloat16 neighbour, now and then
            tol = dict(rtol=0, atol=steps * kw["lr"] * 2.0 * 1.5 * 2.0 ** -7)
        for i, (p, q) in enumerate(zip(params, ref_params)):
            np.testing.assert_allclose(p, q, **tol)
            assert (opt.state[i]["momentum_buffer"].tobytes()
                    == ref.state[i]["momentum_buffer"].tobytes())
            assert opt.state[i]["step"] == ref.state[i]["step"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_passes_match_the_twin_bitwise(dtype, rng):
    """With ns_steps=0 the iteration is X = U / ||U||; with grads of +-1/4 on a 4 x 4 matrix,
    momentum 0 and no Nesterov, ||U|| = 1 exactly, so the whole step is the two fused passes
    and both sides must agree bitwise, whatever the lr, decay and adjust_lr_fn."""
    for trial in range(6):
        p = np.asarray(rng.standard_normal((4, 4)), dtype)
        q = p.copy()
        kw = dict(lr=float(rng.uniform(1e-3, 0.1)), weight_decay=float(rng.uniform(0, 0.3)),
                  momentum=0.0, nesterov=False, ns_steps=0,
                  adjust_lr_fn=[None, "match_rms_adamw"][trial % 2])
        opt, ref = fo.Muon([p], **kw), fo.reference.Muon([q], **kw)
        for _ in range(5):
            g = np.asarray(rng.choice([-0.25, 0.25], size=(4, 4)), dtype)
            opt.step([g])
            ref.step([g])
        assert p.tobytes() == q.tobytes()
    # and the general momentum pass, both lerp formulas, Nesterov: the buffers bitwise
    for momentum in (0.3, 0.7, 0.95):
        params = _params(rng, dtype)
        ref_params = [x.copy() for x in params]
        opt = fo.Muon(params, momentum=momentum, ns_steps=0)
        ref = fo.reference.Muon(ref_params, momentum=momentum, ns_steps=0)
        for _ in range(4):
            grads = _grads(rng, params)
            opt.step(grads)
            ref.step(grads)
        for i in opt.state:
            assert (opt.state[i]["momentum_buffer"].tobytes()
                    == ref.state[i]["momentum_buffer"].tobytes())


def test_functional_entry_matches_the_class_bitwise_and_the_reference(rng):
    for dtype in DTYPES:
        kw = _sample(rng)
        p_cls = _params(rng, dtype)
        p_fun, p_ref = [p.copy() for p in p_cls], [p.copy() for p in p_cls]
        bufs, ref_bufs = [np.zeros_like(p) for p in p_cls], [np.zeros_like(p) for p in p_cls]
        steps, ref_steps = [0] * len(p_cls), [0] * len(p_cls)
        opt = fo.Muon(p_cls, **kw)
        for _ in range(6):
            g = _grads(rng, p_cls)
            opt.step(g)
            fo.functional.muon(p_fun, g, bufs, steps, **kw)
            fo.reference.muon(p_ref, g, ref_bufs, ref_steps, **kw)
        for a, b, c in zip(p_cls, p_fun, p_ref):
            assert a.tobytes() == b.tobytes()
            np.testing.assert_allclose(a, c, **(_torch_tolerance(dtype, kw, 6)
                                                if dtype == np.float32 else
                                                dict(rtol=1e-11, atol=1e-13)))
        assert steps == ref_steps == [6] * len(p_cls)
    # the spec's fast check is check()
    spec = fo.Muon.spec
    values = tuple(opt._caches[0].hyper)
    assert spec.check_kernel_fields(values) == spec.check(*values)


def test_batched_stacks_match_one_matrix_at_a_time(rng, monkeypatch):
    """Same-shape matrices stacked into 3-D products (here up to 64) give what one matrix at a
    time gives, up to summation order."""
    shapes = [(16, 24)] * 40 + [(24, 16)] * 24
    params = _params(rng, np.float64, shapes)
    single = [p.copy() for p in params]
    opt = fo.Muon(params, lr=0.02)
    one = fo.Muon(single, lr=0.02)
    grads = _grads(rng, params)
    opt.step(grads)                     # its work buffers: stacks of several
    monkeypatch.setattr(muon_mod, "BATCH_BYTES", 1)         # one matrix per batch
    one.step(grads)
    for _ in range(4):
        grads = _grads(rng, params)
        opt.step(grads)
        one.step(grads)
    assert max(len(b.index) for b in opt._workspaces[0].batches) > 1
    assert max(len(b.index) for b in one._workspaces[0].batches) == 1
    for p, q in zip(params, single):
        np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-14)


# -- state, threads, gates -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_state_dict_round_trip_is_bitwise(dtype, rng):
    kw = _sample(rng)
    params = _params(rng, dtype)
    opt = fo.Muon(params, **kw)
    for _ in range(3):
        opt.step(_grads(rng, params))
    saved = opt.state_dict()
    assert set(saved["state"][0]) == {"step", "momentum_buffer"}      # torch's key
    copies = [p.copy() for p in params]
    other = fo.Muon(copies, lr=0.5, momentum=0.1)
    other.load_state_dict(saved)
    assert other.param_groups[0]["lr"] == kw["lr"]
    for _ in range(3):
        g = _grads(rng, params)
        opt.step(g)
        other.step(g)
    for p, q in zip(params, copies):
        assert p.tobytes() == q.tobytes()


def test_loads_torchs_state_dict(rng):
    """torch's Muon state (momentum_buffer only, as tensors converted to arrays) loads: the
    step count starts at 0, and the next steps match torch's."""
    torch = pytest.importorskip("torch")
    params = _params(rng, np.float64, [(12, 20), (20, 12)])
    tparams = [torch.tensor(p.copy()) for p in params]
    topt = torch.optim.Muon(tparams, lr=0.03)
    import torch.optim._muon as torch_muon
    saved_fn = torch_muon._zeropower_via_newtonschulz
    torch_muon._zeropower_via_newtonschulz = _torch_zeropower_without_cast(torch)
    try:
        for _ in range(3):
            for t, g in zip(tparams, _grads(rng, params)):
                t.grad = torch.tensor(g)
            topt.step()
        sd = topt.state_dict()
        ours = {"state": {i: {k: v.numpy() for k, v in st.items()}
                          for i, st in sd["state"].items()},
                "param_groups": [{k: v for k, v in g.items()} for g in sd["param_groups"]]}
        mine = [t.detach().numpy().copy() for t in tparams]
        opt = fo.Muon(mine, lr=0.03)
        opt.load_state_dict(ours)
        assert opt.state[0]["step"] == 0
        for _ in range(3):
            grads = _grads(rng, params)
            opt.step(grads)
            for t, g in zip(tparams, grads):
                t.grad = torch.tensor(g)
            topt.step()
    finally:
        torch_muon._zeropower_via_newtonschulz = saved_fn
    for p, t in zip(mine, tparams):
        np.testing.assert_allclose(p, t.numpy(), rtol=1e-9, atol=1e-12)


def test_bitwise_identical_across_thread_counts_with_the_blas_threads_fixed(rng):
    """The driver passes are bitwise the same for 1, 2 and 3 OpenMP threads, and the BLAS
    part is a function of its own thread count only: hold that at 1. Sizes large enough
    that the passes go parallel (more than 32768 elements)."""
    shapes = [(200, 96), (96, 200), (64, 64), (64, 64)]
    start = _params(rng, np.float32, shapes)
    grads = [_grads(rng, start) for _ in range(3)]
    results = []
    before = fo.get_num_threads()
    try:
        for n in (1, 2, 3):
            fo.set_num_threads(n)
            params = [p.copy() for p in start]
            opt = fo.Muon(params, lr=0.02, blas_threads=1)
            for g in grads:
                opt.step(g)
            results.append(b"".join(p.tobytes() for p in params)
                           + b"".join(opt.state[i]["momentum_buffer"].tobytes() for i in opt.state))
    finally:
        fo.set_num_threads(before)
    assert results[0] == results[1] == results[2]


def test_blas_threads_are_set_for_the_iteration_and_restored(rng, monkeypatch):
    libs = blas_libraries()
    if not libs:
        pytest.skip("no BLAS library found by threadpoolctl")
    seen = []
    real = muon_mod._newton_schulz

    def spy(*args, **kwargs):
        seen.append([lib.num_threads for lib in libs])
        return real(*args, **kwargs)
    monkeypatch.setattr(muon_mod, "_newton_schulz", spy)
    before = [lib.num_threads for lib in libs]
    params = _params(rng, np.float32, [(16, 16)])
    opt = fo.Muon(params, blas_threads=1)
    opt.step(_grads(rng, params))
    assert seen and all(n == 1 for n in seen[-1])
    assert [lib.num_threads for lib in libs] == before
    opt.blas_threads = None             # default: fusedoptim's own thread count
    opt.step(_grads(rng, params))
    assert all(n == fo.get_num_threads() for n in seen[-1])
    assert [lib.num_threads for lib in libs] == before


@pytest.mark.parametrize("dtype", DTYPES)
def test_iteration_shared_out_among_worker_threads(dtype, rng, monkeypatch):
    """On 2 and 3 threads the batches are iterated on worker threads, each with BLAS at one
    thread: the same products as blas_threads=1, so the same bits. A batch that outweighs
    all the others together runs alone, in BLAS at the full count (its bits then depend on
    the BLAS, so the check there is which thread count it ran at)."""
    libs = blas_libraries()
    if not libs:
        pytest.skip("no BLAS library found by threadpoolctl")
    seen = []
    real = muon_mod._newton_schulz

    def spy(batch, *args, **kwargs):
        seen.append((batch.update.shape, libs[0].num_threads))
        return real(batch, *args, **kwargs)
    monkeypatch.setattr(muon_mod, "_newton_schulz", spy)
    # many small matrices in several batches (none outweighs the rest), then one that does
    small = [(24, 40)] * 5 + [(40, 24)] * 4 + [(32, 32)] * 3 + [(7, 13)]
    start = _params(rng, dtype, small)
    grads = [_grads(rng, start) for _ in range(4)]
    results = {}
    for n in (1, 2, 3):
        params = [p.copy() for p in start]
        opt = fo.Muon(params, lr=0.02, blas_threads=n)
        seen.clear()
        for g in grads:
            opt.step(g)
        assert seen and {threads for _, threads in seen} == {1}, (n, seen)
        results[n] = b"".join(p.tobytes() for p in params)
    assert results[1] == results[2] == results[3]
    big = _params(rng, dtype, [(160, 160)] + small[:2])
    opt = fo.Muon(big, lr=0.02, blas_threads=2)
    seen.clear()
    opt.step(_grads(rng, big))
    # the large one alone; then the small batch, now the only one left, also outweighs the
    # (no) others and runs at the full count too
    assert seen == [((1, 160, 160), 2), ((2, 24, 40), 2)], seen


_FORK_STEP = """
import os, numpy as np, fusedoptim as fo
rng = np.random.default_rng(0)
ps = [rng.standard_normal((32, 48)).astype(np.float32) for _ in range(6)]
gs = [rng.standard_normal((32, 48)).astype(np.float32) for _ in range(6)]
opt = fo.Muon(ps, lr=0.02, blas_threads=2)
opt.step(gs)                                  # the parent's worker threads now exist
pid = os.fork()
if pid == 0:
    opt.step(gs)
    os._exit(0)
_, status = os.waitpid(pid, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_a_forked_child_steps_on_worker_threads_of_its_own():
    """A child forked after a step has none of the parent's worker threads; its step must not
    wait for them (it hung before the pools were reset at fork)."""
    out = subprocess.run([sys.executable, "-c", _FORK_STEP], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("dtype", DTYPES)
def test_skip_nonfinite_and_grad_scale(dtype, rng):
    params = _params(rng, dtype)
    opt = fo.Muon(params, lr=0.02, skip_nonfinite=True)
    opt.step(_grads(rng, params))
    snap = [p.copy() for p in params], [opt.state[i]["momentum_buffer"].copy() for i in opt.state]
    bad = _grads(rng, params)
    bad[3][1, 2] = np.nan
    assert opt.step(bad) is False
    assert all(p.tobytes() == q.tobytes() for p, q in zip(params, snap[0]))
    assert all(opt.state[i]["momentum_buffer"].tobytes() == b.tobytes()
               for i, b in zip(opt.state, snap[1]))
    assert opt.state[0]["step"] == 1
    # grad_scale divides inside the momentum pass: a power of two gives the same bits
    scaled = [p.copy() for p in params]
    other = fo.Muon(scaled, lr=0.02)
    other.load_state_dict(opt.state_dict())
    g = _grads(rng, params)
    opt.step(g)
    other.step([x * 8 for x in g], grad_scale=8.0)
    assert all(p.tobytes() == q.tobytes() for p, q in zip(params, scaled))


def test_params_without_grads_are_skipped(rng):
    params = _params(rng, np.float32)
    opt = fo.Muon(params, lr=0.02)
    grads = _grads(rng, params)
    grads[1] = grads[3] = None
    before = [p.copy() for p in params]
    opt.step(grads)
    assert params[1].tobytes() == before[1].tobytes()
    assert params[3].tobytes() == before[3].tobytes()
    assert 1 not in opt.state and 3 not in opt.state and opt.state[0]["step"] == 1


def test_zero_size_and_zero_grads(rng):
    """A zero gradient: ||U|| = 0 is clamped to eps, X = 0, only the decay moves the param.
    Empty matrices step (nothing to do)."""
    p = np.asarray(rng.standard_normal((8, 5)), np.float32)
    e = np.zeros((0, 4), np.float32)
    q = p.copy()
    opt = fo.Muon([p, e], lr=0.1, weight_decay=0.5)
    opt.step([np.zeros_like(p), np.zeros_like(e)])
    np.testing.assert_array_equal(p, q * np.float32(1 - 0.1 * 0.5))


# -- bad input ------------------------------------------------------------------------------------

_NAN, _INF = float("nan"), float("inf")
BAD = [
    (dict(lr=-1.0), "lr", "-1.0"), (dict(lr=_NAN), "lr", "nan"), (dict(lr="0.1"), "lr", "0.1"),
    (dict(weight_decay=-0.1), "weight_decay", "-0.1"),
    (dict(weight_decay=_INF), "weight_decay", "inf"),
    (dict(momentum=-0.5), "momentum", "-0.5"), (dict(momentum=_NAN), "momentum", "nan"),
    (dict(nesterov="yes"), "nesterov", "yes"),
    (dict(ns_coefficients=(1.0, 2.0)), "ns_coefficients", "(1.0, 2.0)"),
    (dict(ns_coefficients=(1.0, 2.0, _NAN)), "ns_coefficients[2]", "nan"),
    (dict(ns_coefficients=None), "ns_coefficients", "None"),
    (dict(ns_coefficients=(1.0, "b", 2.0)), "ns_coefficients[1]", "b"),
    (dict(eps=-1e-7), "eps", "-1e-07"), (dict(eps=_NAN), "eps", "nan"),
    (dict(ns_steps=100), "ns_steps", "100"), (dict(ns_steps=-1), "ns_steps", "-1"),
    (dict(ns_steps=2.5), "ns_steps", "2.5"), (dict(ns_steps=True), "ns_steps", "True"),
    (dict(adjust_lr_fn="sqrt"), "adjust_lr_fn", "sqrt"),
    (dict(adjust_lr_fn=1), "adjust_lr_fn", "1"),
    (dict(ns_dtype="float16"), "ns_dtype", "float16"),
    (dict(blas_threads=0), "blas_threads", "0"), (dict(blas_threads=1.5), "blas_threads", "1.5"),
]


@pytest.mark.parametrize("kw,name,value", BAD, ids=[b[1] + "=" + b[2] for b in BAD])
def test_bad_hyperparameters_are_named_and_change_nothing(kw, name, value, rng):
    params = _params(rng, np.float32, [(6, 4)])
    with pytest.raises((TypeError, ValueError)) as err:
        fo.Muon(params, **kw)
    assert name in str(err.value) and value in str(err.value)
    if name == "blas_threads":
        return                          # a constructor option, not a group's
    # the same value set on a live group: refused at the next step, nothing written
    opt = fo.Muon(params, lr=0.01)
    opt.step(_grads(rng, params))
    snap = params[0].copy(), opt.state[0]["momentum_buffer"].copy()
    opt.param_groups[0].update(kw)
    with pytest.raises((TypeError, ValueError)) as err:
        opt.step(_grads(rng, params))
    assert name in str(err.value)
    assert params[0].tobytes() == snap[0].tobytes()
    assert opt.state[0]["momentum_buffer"].tobytes() == snap[1].tobytes()
    assert opt.state[0]["step"] == 1
    with pytest.raises((TypeError, ValueError)):
        fo.functional.muon(params, _grads(rng, params), [np.zeros_like(params[0])], [0],
                           **{"lr": 0.01, **{k: v for k, v in kw.items()}})
    assert params[0].tobytes() == snap[0].tobytes()


@pytest.mark.parametrize("shape", [(10,), (2, 3, 4), ()])
def test_non_matrix_params_are_refused_as_torch_does(shape, rng):
    p = np.asarray(rng.standard_normal(shape), np.float32)
    with pytest.raises(ValueError, match=r"2-D parameters.*params\[1\] has shape"):
        fo.Muon([np.zeros((3, 3), np.float32), p])
    # add_param_group too (torch checks only in __init__), leaving the optimizer as it was
    w = np.zeros((3, 3), np.float32)
    opt = fo.Muon([w])
    with pytest.raises(ValueError, match=r"AdamW"):
        opt.add_param_group({"params": [p]})
    assert len(opt.param_groups) == 1
    opt.step([np.ones((3, 3), np.float32)])


def test_other_dtypes_and_bad_grads_are_refused(rng):
    import ml_dtypes
    for dt in (np.float16, ml_dtypes.bfloat16, np.int32):
        with pytest.raises(TypeError, match=r"float32 or float64 params.*params\[0\]"):
            fo.Muon([np.zeros((3, 3), dt)])
    p = np.asarray(rng.standard_normal((5, 6)), np.float32)
    before = p.copy()
    opt = fo.Muon([p])
    for g, word in ((np.zeros((6, 5), np.float32), "shape"),
                    (np.zeros((5, 6), np.float64), "dtype"), ([[0.0] * 6] * 5, "ndarray")):
        with pytest.raises((TypeError, ValueError), match=word):
            opt.step([g])
    assert p.tobytes() == before.tobytes() and opt.state == {}


# -- MuonWithAuxAdam ------------------------------------------------------------------------------

def _network(rng, dtype=np.float64):
    hidden = _params(rng, dtype, [(24, 16), (16, 24), (16, 16)])
    other = _params(rng, dtype, [(50, 16), (16,), (24,), (1,)])     # embedding, biases, gain
    return hidden, other


def test_hybrid_is_muon_plus_adamw_and_matches_torch(rng, monkeypatch):
    """Muon groups step as fo.Muon, the others as fo.AdamW, bitwise; and as torch's Muon
    (iteration without the cast) plus torch's AdamW, in float64 to 1e-9."""
    hidden, other = _network(rng)
    h2, o2 = [p.copy() for p in hidden], [p.copy() for p in other]
    opt = fo.MuonWithAuxAdam([dict(params=other[:1], use_muon=False, lr=0.01),
                              dict(params=hidden, use_muon=True, lr=0.05, weight_decay=0.01),
                              dict(params=other[1:], use_muon=False, betas=(0.8, 0.95))])
    muon = fo.Muon(h2, lr=0.05, momentum=0.95, weight_decay=0.01)
    adam = fo.AdamW([dict(params=o2[:1], lr=0.01), dict(params=o2[1:], betas=(0.8, 0.95))],
                    lr=3e-4, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.0)
    assert [g["use_muon"] for g in opt.param_groups] == [False, True, False]
    assert opt.param_groups[1]["lr"] == 0.05 and opt.param_groups[2]["lr"] == 3e-4
    torch = pytest.importorskip("torch")
    import torch.optim._muon as torch_muon
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz",
                        _torch_zeropower_without_cast(torch))
    th = [torch.tensor(p.copy()) for p in hidden]
    to = [torch.tensor(p.copy()) for p in other]
    tm = torch.optim.Muon(th, lr=0.05, momentum=0.95, weight_decay=0.01)
    ta = torch.optim.AdamW([dict(params=to[:1], lr=0.01), dict(params=to[1:], betas=(0.8, 0.95))],
                           lr=3e-4, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.0)
    for _ in range(20):
        gh, go = _grads(rng, hidden), _grads(rng, other)
        opt.step(go[:1] + gh + go[1:])       # param order across the groups
        muon.step(gh)
        adam.step(go)
        for t, g in zip(th + to, gh + go):
            t.grad = torch.tensor(g)
        tm.step()
        ta.step()
    for p, q in zip(hidden + other, h2 + o2):
        assert p.tobytes() == q.tobytes()
    for p, t in zip(hidden + other, th + to):
        np.testing.assert_allclose(p, t.numpy(), rtol=1e-9, atol=1e-12)
    st = opt.state
    assert set(st[1]) == {"step", "momentum_buffer"} and "exp_avg" in st[0]


def test_hybrid_state_dict_round_trip_scheduler_and_skip(rng):
    hidden, other = _network(rng, np.float32)
    groups = lambda h, o: [dict(params=h, use_muon=True), dict(params=o, use_muon=False)]
    opt = fo.MuonWithAuxAdam(groups(hidden, other), skip_nonfinite=True)
    sched = fo.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        opt.step(_grads(rng, hidden + other))
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.02 * 0.125 and opt.muon.param_groups[0]["lr"] == 0.0025
    saved = opt.state_dict()
    assert sorted(saved["state"]) == list(range(7))
    assert [g["params"] for g in saved["param_groups"]] == [[0, 1, 2], [3, 4, 5, 6]]
    h2, o2 = [p.copy() for p in hidden], [p.copy() for p in other]
    again = fo.MuonWithAuxAdam(groups(h2, o2))
    again.load_state_dict(saved)
    g = _grads(rng, hidden + other)
    opt.step(g)
    again.step(g)
    assert all(p.tobytes() == q.tobytes() for p, q in zip(hidden + other, h2 + o2))
    # skip_nonfinite: a NaN in an AdamW grad stops the Muon part too
    snap = [p.copy() for p in hidden + other]
    bad = _grads(rng, hidden + other)
    bad[5][0] = np.nan
    assert opt.step(bad) is False and opt.skipped_steps == 1
    assert all(p.tobytes() == q.tobytes() for p, q in zip(hidden + other, snap))
    # a checkpoint of another layout is refused, leaving both parts as they were
    broken = opt.state_dict()
    broken["state"][5] = {"step": 1, "exp_avg": np.zeros(3, np.float32)}
    with pytest.raises(ValueError):
        again.load_state_dict(broken)
    opt.step(g)
    again.step(g)
    assert all(p.tobytes() == q.tobytes() for p, q in zip(hidden + other, h2 + o2))


def test_hybrid_bad_input(rng):
    hidden, other = _network(rng, np.float32)
    with pytest.raises(ValueError, match="use_muon"):
        fo.MuonWithAuxAdam([dict(params=hidden)])
    with pytest.raises(TypeError, match="use_muon"):
        fo.MuonWithAuxAdam([dict(params=hidden, use_muon="yes")])
    with pytest.raises(ValueError, match=r"2-D parameters.*AdamW"):
        fo.MuonWithAuxAdam([dict(params=other, use_muon=True)])
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        fo.MuonWithAuxAdam([dict(params=hidden, use_muon=True, betas=(0.9, 0.95))])
    with pytest.raises(TypeError, match="list of param group dicts"):
        fo.MuonWithAuxAdam(hidden)
    opt = fo.MuonWithAuxAdam([dict(params=hidden, use_muon=True),
                              dict(params=other, use_muon=False)])
    with pytest.raises(ValueError, match="7 params"):
        opt.step(_grads(rng, hidden))
