"""Generic correctness tests run for every optimizer Case in cases.py."""

import copy

import numpy as np
import pytest

import fusedoptim as fo
from cases import CASES
from conftest import SHAPES, make_params, ulp_distance
import isa_levels

DTYPES = [np.float32, np.float64]
STEPS = 120
# Stated tolerances. The reference mirrors each kernel's operation order in the param's
# dtype, so on the default build they agree bitwise; we allow 4 ulp (float32) and 1e-12
# relative (float64) so that a compiler reordering one rounding does not fail the suite.
F32_MAX_ULP = 4
F64_RTOL = 1e-12

case_ids = [c.name for c in CASES]


def _grads(rng, params, scale=1.0, none_prob=0.0):
    out = []
    for p in params:
        if none_prob and rng.random() < none_prob:
            out.append(None)
        else:
            out.append(np.asarray(rng.standard_normal(p.shape) * scale, dtype=p.dtype))
    return out


def assert_close_to_reference(actual, expected, tensor_norms=False):
    """Stated tolerances (above). With `tensor_norms` (Case.tensor_norms) float64 elements
    may also differ by F64_RTOL of their tensor's largest magnitude."""
    for a, e in zip(actual, expected):
        if a.dtype == np.float32:
            assert ulp_distance(a, e).max(initial=0) <= F32_MAX_ULP
        else:
            atol = F64_RTOL * float(np.max(np.abs(e), initial=0.0)) if tensor_norms else 0.0
            np.testing.assert_allclose(a, e, rtol=F64_RTOL, atol=max(atol, 1e-300))


def check_matches_reference(case, kw, dtype, rng, steps=STEPS):
    """`steps` steps of case.fused(**kw) vs case.reference(**kw): two groups (second overrides
    lr), grads sometimes None, lr changed midway. Also used by the per-optimizer tests."""
    params = make_params(rng, dtype)
    ref_params = [p.copy() for p in params]
    groups = [{"params": params[:3]}, {"params": params[3:], "lr": kw["lr"] * 0.5}]
    ref_groups = [{"params": ref_params[:3]}, {"params": ref_params[3:], "lr": kw["lr"] * 0.5}]
    opt = case.fused(groups, **kw)
    ref = case.reference(ref_groups, **kw)
    for step in range(steps):
        grads = _grads(rng, params, none_prob=0.1)
        opt.step(grads)
        ref.step(grads)
        if step == steps // 2:
            for o in (opt, ref):
                o.param_groups[0]["lr"] *= 0.3
    assert_close_to_reference(params, ref_params, case.tensor_norms)
    st, rst = opt.state, ref.state
    assert st.keys() == rst.keys()
    for i in st:
        assert st[i].keys() == rst[i].keys()
        buffers = [k for k in sorted(st[i]) if isinstance(st[i][k], np.ndarray)]
        assert_close_to_reference([st[i][k] for k in buffers], [rst[i][k] for k in buffers],
                                  case.tensor_norms)
        # step and per-tensor scalar state (mu_product, eta...): the same double formulas
        for k in set(st[i]) - set(buffers):
            assert st[i][k] == rst[i][k], k
    # The trajectory moved: the test is not comparing two untouched copies.
    assert any(np.any(p != q) for p, q in zip(params, make_params(np.random.default_rng(0), dtype)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_matches_reference_random_hparams(case, dtype, rng):
    for trial in range(4):
        check_matches_reference(case, case.sample(rng), dtype, rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [c for c in CASES if c.torch_name], ids=lambda c: c.name)
def test_matches_torch(case, dtype, rng):
    torch = pytest.importorskip("torch")
    torch_cls = getattr(torch.optim, case.torch_name)
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    # torch keeps scalar state (step, NAdam's mu_product, ASGD's eta and mu) in its default
    # dtype; fusedoptim keeps it in double. Match them for float64 runs.
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(tdtype)
    try:
        compared = _compare_with_torch(case, dtype, rng, torch, torch_cls, tdtype)
    finally:
        torch.set_default_dtype(default_dtype)
    assert compared >= 3


def _compare_with_torch(case, dtype, rng, torch, torch_cls, tdtype):
    compared = 0
    for trial in range(12):
        kw = case.sample(rng)
        tkw = case.to_torch(kw)
        if tkw is None:
            continue
        compared += 1
        params = make_params(rng, dtype, shapes=[(5,), (4, 6), (20_000,)])
        tparams = [torch.tensor(p.copy(), dtype=tdtype) for p in params]
        opt = case.fused(params, **kw)
        topt = torch_cls(tparams, **tkw)
        for _ in range(100):
            grads = _grads(rng, params)
            opt.step(grads)
            for t, g in zip(tparams, grads):
                t.grad = torch.tensor(g)
            topt.step()
        for p, t in zip(params, tparams):
            # Different but equally valid operation orders: float64 agrees to ~1e-10 after
            # 100 steps, float32 to a few float32 roundings amplified by the eps-sized denominators.
            if dtype == np.float64:
                np.testing.assert_allclose(p, t.numpy(), rtol=1e-9, atol=1e-12)
            else:
                np.testing.assert_allclose(p, t.numpy(), rtol=2e-5, atol=2e-5)
    return compared


@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_bitwise_identical_across_thread_counts(case, rng):
    kw = case.sample(rng)
    start = make_params(rng, np.float32, shapes=[(200_003,), (17,), (65_536,)])
    grads_seq = [_grads(rng, start) for _ in range(5)]
    results = []
    before = fo.get_num_threads()
    try:
        for n in (1, 2, 3):
            fo.set_num_threads(n)
            params = [p.copy() for p in start]
            opt = case.fused(params, **kw)
            for g in grads_seq:
                opt.step(g)
            results.append(params)
    finally:
        fo.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_state_dict_round_trip_is_bitwise(case, dtype, rng):
    """N steps, save, load into a fresh optimizer, M more == N+M steps straight, bitwise."""
    kw = case.sample(rng)
    start = make_params(rng, dtype)
    grads_seq = [_grads(rng, start, none_prob=0.1) for _ in range(30)]
    straight = [p.copy() for p in start]
    opt = case.fused(straight, **kw)
    for g in grads_seq:
        opt.step(g)

    first_params = [p.copy() for p in start]
    first = case.fused(first_params, **kw)
    for g in grads_seq[:17]:
        first.step(g)
    saved = first.state_dict()
    saved_params = [p.copy() for p in first_params]
    for g in grads_seq[17:20]:      # steps after saving must not leak into the checkpoint
        first.step(g)
    second = case.fused(saved_params, **kw)
    second.load_state_dict(saved)
    for g in grads_seq[17:]:
        second.step(g)
    for a, b in zip(straight, saved_params):
        assert a.tobytes() == b.tobytes()
    # Every state entry too: buffers, step counts and per-tensor scalar state (mu_product,
    # eta, mu...), which a lossy checkpoint could drop without changing the params.
    _assert_same_state(opt.state_dict(), second.state_dict())


@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_bad_hyperparameters_are_rejected_and_named(case):
    params = [np.ones(3, np.float32)]
    for kw, name in case.bad:
        with pytest.raises((ValueError, TypeError)) as err:
            case.fused(params, **kw)
        assert name in str(err.value), (kw, str(err.value))
    # Changed in a param group after construction: caught at step, nothing written.
    for kw, name in case.bad:
        p = [np.ones(3, np.float32)]
        opt = case.fused(p)
        opt.step([np.full(3, 0.5, np.float32)])
        snapshot = (p[0].copy(), copy.deepcopy(opt.state_dict()))
        opt.param_groups[0].update(kw)
        with pytest.raises((ValueError, TypeError)) as err:
            opt.step([np.full(3, 0.5, np.float32)])
        assert name in str(err.value)
        assert p[0].tobytes() == snapshot[0].tobytes()
        _assert_same_state(opt.state_dict(), snapshot[1], ignore_hparams=True)


@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_bad_hyperparameter_messages_name_the_value(case):
    params = [np.ones(3, np.float32)]
    for kw, name in case.bad:
        with pytest.raises((ValueError, TypeError)) as err:
            case.fused(params, **kw)
        if name in kw and not isinstance(kw[name], (tuple, list)):
            assert repr(kw[name]) in str(err.value), (kw, str(err.value))


@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_step_makes_no_param_sized_temporaries(case, rng):
    """The fast path is one kernel call: no NumPy fallback allocating arrays per step."""
    tracemalloc = pytest.importorskip("tracemalloc")
    n = 1 << 20
    params = [np.zeros(n, np.float32)]
    grads = [np.asarray(rng.standard_normal(n), np.float32)]
    for _ in range(8):      # any configuration: every option drawn at random
        opt = case.fused(params, **case.sample(rng))
        opt.step(grads)     # creates the state
        tracemalloc.start()
        try:
            opt.step(grads)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < n, f"step() allocated {peak} bytes for a {4 * n}-byte param"


def _assert_same_state(a, b, ignore_hparams=False):
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert a["state"][i].keys() == b["state"][i].keys()
        for k, v in a["state"][i].items():
            w = b["state"][i][k]
            if isinstance(v, np.ndarray):
                assert v.tobytes() == w.tobytes() and v.shape == w.shape
            else:   # step and scalar state, bitwise
                assert type(v) is type(w) and np.float64(v).tobytes() == np.float64(w).tobytes()
    if not ignore_hparams:
        assert a["param_groups"] == b["param_groups"]


_ISA_TRAJECTORY = """
import hashlib, sys, numpy as np
sys.path.insert(0, {tests!r})
from cases import CASES
from fusedoptim import _kernels
h = hashlib.sha256()
for k, case in enumerate(CASES):
    rng = np.random.default_rng(k)
    kw = case.sample(rng)
    for dtype in (np.float32, np.float64):
        ps = [rng.standard_normal(n).astype(dtype) for n in (1, 33, 40_003)]
        opt = case.fused(ps, **kw)
        for _ in range(20):
            opt.step([rng.standard_normal(p.shape).astype(dtype) for p in ps])
        h.update(b"".join(p.tobytes() for p in ps))
print(_kernels.ISA, h.hexdigest())
"""


@pytest.mark.parametrize("level", isa_levels.levels_to_compare())
def test_every_isa_level_gives_identical_bits_for_every_case(level):
    """Each compiled instruction-set level runs the same trajectory for every Case (both
    dtypes, random hyperparameters), so no kernel depends on the level's vector width."""
    import os
    code = _ISA_TRAJECTORY.format(tests=os.path.dirname(os.path.abspath(__file__)))
    isa_levels.assert_same_as_baseline(level, code)


# -- non-finite steps and gradient scaling, for every optimizer ---------------------------------

@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_every_kernel_takes_the_grad_multiplier_as_scalar_0(case):
    """grad_scale is folded into scalar 0 generically; each kernel applies it to the raw
    grad (and the base class refuses a kernel laid out otherwise)."""
    from fusedoptim import _kernels
    assert _kernels.SCALARS[case.fused._kernel][0] == "sign"


def _two_groups(params, lr):
    return [{"params": params[:3]}, {"params": params[3:], "lr": lr * 0.5}]


def _poison(rng, grads, value):
    """A copy of grads with one element of one non-empty grad set to `value`."""
    targets = [i for i, g in enumerate(grads) if g is not None and g.size > 0]
    out = [None if g is None else g.copy() for g in grads]
    t = targets[rng.integers(len(targets))]
    out[t].flat[rng.integers(out[t].size)] = value
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_skip_nonfinite_skips_the_whole_step_bitwise(case, dtype, rng):
    """A step whose grads hold a NaN or Inf (in either group) changes nothing: params, state
    buffers, step counts and scalar state stay bitwise the same, and no state is created on
    a skipped first step. Afterwards the trajectory is that of an optimizer that never saw
    the bad steps."""
    kw = case.sample(rng)
    start = make_params(rng, dtype)
    seq = [_grads(rng, start, none_prob=0.1) for _ in range(9)]
    clean_params = [p.copy() for p in start]
    clean = case.fused(_two_groups(clean_params, kw["lr"]), **kw)
    params = [p.copy() for p in start]
    opt = case.fused(_two_groups(params, kw["lr"]), skip_nonfinite=True, **kw)
    skipped = 0
    for k, g in enumerate(seq):
        if k % 2 == 0:          # k = 0: the very first step is skipped
            bad = _poison(rng, g, [np.nan, np.inf, -np.inf][k % 3])
            before = ([p.copy() for p in params], copy.deepcopy(opt.state_dict()))
            assert opt.step(bad) is False
            skipped += 1
            assert opt.skipped_steps == skipped
            assert all(a.tobytes() == b.tobytes() for a, b in zip(params, before[0]))
            _assert_same_state(opt.state_dict(), before[1])
        assert opt.step(g) is True
        clean.step(g)
    for a, b in zip(params, clean_params):
        assert a.tobytes() == b.tobytes()
    _assert_same_state(opt.state_dict(), clean.state_dict())


@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_grad_scale_unscales_inside_the_kernel(case, rng):
    """step(g * s, grad_scale=s): for powers of two (GradScaler's scales) bitwise the same as
    step(g); for any s, the reference twin's explicit multiply by 1/s (stated tolerances)."""
    kw = case.sample(rng)
    for dtype in DTYPES:
        start = make_params(rng, dtype)
        seq = [_grads(rng, start, none_prob=0.1) for _ in range(8)]
        scaled = lambda g, s: [None if x is None else np.asarray(x * x.dtype.type(s)) for x in g]
        plain, by_pow2, by_any, ref = ([p.copy() for p in start] for _ in range(4))
        o_plain = case.fused(plain, **kw)
        o_pow2 = case.fused(by_pow2, **kw)
        o_any = case.fused(by_any, **kw)
        o_ref = case.reference(ref, **kw)
        for k, g in enumerate(seq):
            s2 = 2.0 ** [16, -3, 10, 0, 24, 7, 1, 12][k]
            s = [3.0, 1000.0, 0.37, 65537.0][k % 4]
            o_plain.step(g)
            assert o_pow2.step(scaled(g, s2), grad_scale=s2) is True
            o_any.step(scaled(g, s), grad_scale=s)
            o_ref.step(scaled(g, s), grad_scale=s)
        for a, b in zip(plain, by_pow2):
            assert a.tobytes() == b.tobytes()
        assert_close_to_reference(by_any, ref, case.tensor_norms)
