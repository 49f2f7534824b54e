"""fusedoptim.swa_utils (AveragedParams) against torch's AveragedModel(use_buffers=False) with
get_ema_multi_avg_fn / get_swa_multi_avg_fn, against its NumPy twin (bitwise) for 1, 2 and 3
threads, checkpoints and bad input; SWALR against torch.optim.swa_utils.SWALR."""

import warnings

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import lr_scheduler as L
from fusedoptim.swa_utils import AveragedParams, ReferenceAveragedParams

from test_lr_scheduler import RTOL, Stub, plain_steps, record, sgd_groups, torch_optimizer

SHAPES = [(7, 5), (13,), (3, 4, 2)]


def _torch_average(torch, params, decay, updates):
    """torch's AveragedModel over a module holding `params`, fed `updates` (lists of new
    param values): the averaged params after each of the given update counts."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, get_swa_multi_avg_fn
    module = torch.nn.ParameterList([torch.nn.Parameter(torch.from_numpy(p.copy()))
                                     for p in params])
    fn = get_swa_multi_avg_fn() if decay is None else get_ema_multi_avg_fn(decay)
    avg = AveragedModel(module, multi_avg_fn=fn, use_buffers=False)
    for values in updates:
        with torch.no_grad():
            for p, v in zip(module, values):
                p.copy_(torch.from_numpy(v))
        avg.update_parameters(module)
    return [p.detach().numpy() for p in avg.module.parameters()], int(avg.n_averaged)


def _walk(rng, params, steps):
    """A random walk of the params, like a training run's: one list of values per step."""
    cur = [p.copy() for p in params]
    out = []
    for _ in range(steps):
        cur = [c + (0.05 * rng.standard_normal(c.shape)).astype(c.dtype) for c in cur]
        out.append([c.copy() for c in cur])
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("decay", [None, 0.0, 0.5, 0.9, "random", 0.9999, 1.0])
def test_against_torch_averaged_model(dtype, decay):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(hash((str(dtype), str(decay))) % 2**32)
    if decay == "random":
        decay = float(rng.uniform(0.3, 0.999))
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    updates = _walk(rng, params, 120)
    expected, n = _torch_average(torch, params, decay, updates)
    avg = AveragedParams({f"p{i}": p for i, p in enumerate(params)}, decay=decay)
    for values in updates:
        avg.update_parameters({f"p{i}": v for i, v in enumerate(values)})
    assert avg.n_averaged == n == 120
    # torch's vectorised lerp fuses a multiply-add (one rounding fewer than ours per update).
    # float64: rtol 1e-9. float32: each update differs by <= 1 ulp of values of size ~1-3
    # (|a| < 4: ulp <= 2.4e-7); an EMA keeps a decay-weighted sum of those, SWA a mean, so
    # the gap stays about an ulp (measured <= 1.2e-7); atol 1e-6 is ~4 ulps at 4.0.
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else dict(rtol=0, atol=1e-6)
    for got, want in zip(avg.params.values(), expected):
        np.testing.assert_allclose(got, want, **tol)


def test_swa_is_the_running_mean_and_ema_copies_first():
    a = np.zeros(4)
    swa = AveragedParams([a])
    ema = AveragedParams([a], decay=0.5)
    for k in range(1, 6):
        a[...] = k
        swa.update_parameters([a])
        ema.update_parameters([a])
    # mean of 1..5 = 3 (1/(n+1) is rounded to float32, as torch does: close, not exact)
    np.testing.assert_allclose(swa.params[0], 3.0, rtol=1e-7)
    # EMA: 1 (copied), then (1+2)/2, ... : 1, 1.5, 2.25, 3.125, 4.0625
    np.testing.assert_array_equal(ema.params[0], 4.0625)
    assert a[0] == 5.0                      # the params themselves are never written


def _pair(seed, decay, dtypes=(np.float32, np.float64), big=False):
    rng = np.random.default_rng(seed)
    shapes = [(300, 200), (50,), (40, 3)] if big else SHAPES
    params = [rng.standard_normal(s).astype(dtypes[i % len(dtypes)])
              for i, s in enumerate(shapes)]
    return rng, params


@pytest.mark.parametrize("decay", [None, 0.3, 0.7, 0.999])
def test_against_the_reference_twin_bitwise_and_across_threads(decay):
    before = fo.get_num_threads()
    results = []
    try:
        for nt in (1, 2, 3):
            fo.set_num_threads(nt)
            rng, params = _pair(1, decay, big=True)    # 60K elements: runs in parallel
            fused = AveragedParams(params, decay=decay)
            ref = ReferenceAveragedParams(params, decay=decay)
            for values in _walk(rng, params, 12):
                fused.update_parameters(values)
                ref.update_parameters(values)
            for x, y in zip(fused.params, ref.params):
                np.testing.assert_array_equal(x, y)
            results.append(fused.params)
    finally:
        fo.set_num_threads(before)
    for r in results[1:]:
        for x, y in zip(results[0], r):
            np.testing.assert_array_equal(x, y)


def test_state_dict_round_trip():
    rng, params = _pair(2, 0.9)
    a = AveragedParams(params, decay=0.9)
    updates = _walk(rng, params, 20)
    for v in updates[:10]:
        a.update_parameters(v)
    sd = a.state_dict()
    b = AveragedParams([p * 0 for p in params], decay=0.9)
    b.load_state_dict(sd)
    assert b.n_averaged == 10
    for v in updates[10:]:
        a.update_parameters(v)
        b.update_parameters(v)
    for x, y in zip(a.params, b.params):
        np.testing.assert_array_equal(x, y)
    assert not np.shares_memory(sd["params"][0], a.params[0])


def _unchanged(avg, snap, n):
    assert avg.n_averaged == n
    for x, y in zip(avg.params.values() if isinstance(avg.params, dict) else avg.params, snap):
        np.testing.assert_array_equal(x, y)


def test_bad_updates_change_nothing():
    p = {"w": np.ones((3, 2)), "b": np.ones(2, np.float32)}
    avg = AveragedParams(p, decay=0.9)
    avg.update_parameters(p)
    snap = [x.copy() for x in avg.params.values()]
    live = avg.params
    cases = [
        ([p["w"], p["b"]], TypeError, "params is a list, but .* dict"),
        ({"w": p["w"]}, ValueError, r"missing \['b'\]"),
        ({"w": p["w"], "b": p["b"], "c": p["b"]}, ValueError, r"unknown \['c'\]"),
        ({"w": np.ones((2, 3)), "b": p["b"]}, ValueError, r"params\['w'\]"),
        ({"w": p["w"], "b": np.ones(2)}, TypeError, r"params\['b'\] has dtype float64"),
        ({"w": p["w"], "b": None}, ValueError, r"params\['b'\] is None"),
        ({"w": live["w"], "b": p["b"]}, ValueError, r"params\['w'\] shares memory"),
        ({"w": np.ones((2, 3)).T, "b": p["b"]}, ValueError, r"params\['w'\]"),
        ({"w": p["w"].tolist(), "b": p["b"]}, TypeError, r"params\['w'\]"),
        (p["w"], TypeError, "params must be a list or dict of arrays"),
    ]
    for arg, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            avg.update_parameters(arg)
        _unchanged(avg, snap, 1)


@pytest.mark.parametrize("args, kw, exc, msg", [
    (([np.ones(2)],), dict(decay=1.5), ValueError, r"decay must be in \[0, 1\].*got 1\.5"),
    (([np.ones(2)],), dict(decay=-0.1), ValueError, "decay must be in"),
    (([np.ones(2)],), dict(decay=float("nan")), ValueError, "decay must be in"),
    (([np.ones(2)],), dict(decay="0.9"), TypeError, "decay must be None .* or a real"),
    (([np.ones(2)],), dict(decay=True), TypeError, "decay must be None"),
    (([],), {}, ValueError, "params is empty"),
    (([np.ones(2, np.float16)],), {}, TypeError, r"params\[0\] has dtype float16"),
    (([np.ones(2, np.int64)],), {}, TypeError, r"params\[0\]"),
    ((np.ones(2),), {}, TypeError, "params must be a list or dict"),
    ((["x"],), {}, TypeError, r"params\[0\]"),
])
def test_bad_construction(args, kw, exc, msg):
    with pytest.raises(exc, match=msg):
        AveragedParams(*args, **kw)


def test_shared_memory_params_are_refused():
    a = np.ones(6)
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
        AveragedParams([a[:4], a[2:]])


def test_bad_state_dicts_change_nothing():
    p = [np.ones((3, 2)), np.ones(4)]
    avg = AveragedParams(p)
    avg.update_parameters(p)
    snap = [x.copy() for x in avg.params]
    good = avg.state_dict()
    for edit, exc, msg in [
            (lambda sd: sd.update(n_averaged=-1), ValueError, r"'n_averaged'\] must be"),
            (lambda sd: sd.update(n_averaged=1.5), ValueError, r"'n_averaged'\] must be"),
            (lambda sd: sd.pop("params"), TypeError, "exactly 'n_averaged' and 'params'"),
            (lambda sd: sd["params"].pop(), ValueError, "params has 1 arrays"),
            (lambda sd: sd["params"].__setitem__(1, np.ones(5)), ValueError,
             r"\['params'\]\[1\] has shape \(5,\)"),
            (lambda sd: sd["params"].__setitem__(0, np.ones((3, 2), np.float32)), ValueError,
             r"dtype float32; it must have shape \(3, 2\) and dtype float64")]:
        sd = {"n_averaged": good["n_averaged"], "params": list(good["params"])}
        sd["params"][0] = sd["params"][0] + 5       # would change the averages if loaded
        edit(sd)
        with pytest.raises(exc, match=msg):
            avg.load_state_dict(sd)
        _unchanged(avg, snap, 1)


# -- SWALR ------------------------------------------------------------------------------------

def _swalr(torch_module=None, **kw):
    def make(M, o):
        import torch
        if M is torch.optim.lr_scheduler:
            return torch.optim.swa_utils.SWALR(o, **kw)
        return M.SWALR(o, **kw)
    return make


@pytest.mark.parametrize("strategy", ["cos", "linear"])
@pytest.mark.parametrize("seed", range(3))
def test_swalr_matches_torch(strategy, seed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    groups = sgd_groups(rng)
    anneal = [0, 1, int(rng.integers(2, 60))][seed]
    swa_lr = ([float(10 ** rng.uniform(-4, -1)) for _ in groups] if seed % 2
              else float(10 ** rng.uniform(-4, -1)))
    make = _swalr(swa_lr=swa_lr, anneal_epochs=anneal, anneal_strategy=strategy)
    t_opt = torch_optimizer(torch, groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = record(t_opt, make(torch.optim.lr_scheduler, t_opt), plain_steps(120))
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # ours must not warn on normal use
        ours = Stub(groups)
        got = record(ours, make(L, ours), plain_steps(120))
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=0)
    # not vacuous: every group ends at its swa_lr, away from where it started
    targets = swa_lr if isinstance(swa_lr, list) else [swa_lr] * len(groups)
    for k, (g, target) in enumerate(zip(groups, targets)):
        assert got[-1, 3 * k] == target != g["lr"]
        assert (got[:, 3 * k] == target).sum() <= 120 - anneal + 2


@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_swalr_after_another_scheduler_matches_torch(strategy):
    """torch's example: MultiplicativeLR until swa_start, then SWALR from the lr it left."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    groups = sgd_groups(rng)
    swa_start = 37

    def run(M, swa_M, o):
        first = M.MultiplicativeLR(o, lambda epoch: 0.97)
        second = swa_M.SWALR(o, swa_lr=0.005, anneal_epochs=15, anneal_strategy=strategy)
        rows = []
        for i in range(100):
            (second if i > swa_start else first).step()
            rows.append([g["lr"] for g in o.param_groups] + second.get_last_lr())
        return np.array(rows)

    t_opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], **g}
                             for g in groups])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = run(torch.optim.lr_scheduler, torch.optim.swa_utils, t_opt)
    got = run(L, L, Stub(groups))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert np.ptp(got[swa_start:, 0]) > 0


def test_swalr_state_dict_resumes():
    o1, o2 = Stub([{"lr": 0.1}]), Stub([{"lr": 0.1}])
    s1 = L.SWALR(o1, swa_lr=0.01, anneal_epochs=20)
    for _ in range(7):
        s1.step()
    s2 = L.SWALR(o2, swa_lr=0.5, anneal_epochs=3, anneal_strategy="linear")
    o2.param_groups[0].update(o1.param_groups[0])
    s2.load_state_dict(s1.state_dict())
    for _ in range(30):
        s1.step()
        s2.step()
        assert o1.param_groups[0]["lr"] == o2.param_groups[0]["lr"]


@pytest.mark.parametrize("kw, exc, msg", [
    (dict(swa_lr=-0.1), ValueError, r"swa_lr must be a real number >= 0, got -0\.1"),
    (dict(swa_lr=[0.1, 0.2]), ValueError, r"swa_lr must be a number or a list .* \(1\)"),
    (dict(swa_lr=0.1, anneal_epochs=-1), ValueError, "anneal_epochs must be a non-negative"),
    (dict(swa_lr=0.1, anneal_epochs=2.5), ValueError, "anneal_epochs must be"),
    (dict(swa_lr=0.1, anneal_strategy="exp"), ValueError, "anneal_strategy must be"),
])
def test_swalr_bad_input(kw, exc, msg):
    o = Stub([{"lr": 0.1}])
    with pytest.raises(exc, match=msg):
        L.SWALR(o, **kw)
    assert o.param_groups == [{"lr": 0.1}]          # nothing written
