"""Gradient utilities (clip_grad_norm_, clip_grad_value_, global_norm, all_finite) and the
optimizers' grad_scale / skip_nonfinite against torch.

Tolerances. The utilities accumulate in double; torch accumulates a float32 norm in float32.
Totals: float32 grads 1e-5 relative to torch (its float32 sum of up to 1e5 terms), float64 1e-12.
Clipped grads: the coefficient differs by those roundings, so the same tolerances apply. Values
that do not depend on a sum (clip_grad_value_, maxima, unclipped grads) are compared bitwise.
"""

import copy
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import fusedoptim as fo
from conftest import SHAPES, make_params
import isa_levels

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
NORM_TYPES = [2.0, 1.0, math.inf, 3.0, 0.5]


def _torch_grads(torch, arrays):
    params = []
    for a in arrays:
        p = torch.nn.Parameter(torch.zeros(a.shape, dtype=torch.from_numpy(a).dtype))
        p.grad = torch.tensor(a.copy())
        params.append(p)
    return params


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_clip_grad_norm_matches_torch(dtype, norm_type, rng):
    torch = pytest.importorskip("torch")
    # torch's foreach inf-norm rejects empty tensors; every other norm takes them.
    shapes = [s for s in SHAPES if norm_type != math.inf or s != (0,)] + [(1000,)] * 5
    for max_norm_factor in (0.3, 3.0):          # clips / leaves the grads as they are
        grads = make_params(rng, dtype, shapes)
        tparams = _torch_grads(torch, grads)
        before = [g.copy() for g in grads]
        expected = torch.nn.utils.clip_grad_norm_(tparams, 1.0, norm_type).item()
        max_norm = max_norm_factor * expected
        grads = [g.copy() for g in before]
        tparams = _torch_grads(torch, before)
        t_total = torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type, foreach=True)
        total = fo.clip_grad_norm_(grads, max_norm, norm_type)
        assert isinstance(total, float)
        np.testing.assert_allclose(total, t_total.item(), rtol=RTOL[dtype])
        for g, p, b in zip(grads, tparams, before):
            if max_norm_factor > 1:
                assert g.tobytes() == b.tobytes()      # coefficient 1: untouched
            else:
                np.testing.assert_allclose(g, p.grad.numpy(), rtol=RTOL[dtype], atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_norms_match_the_reference(dtype, rng):
    grads = make_params(rng, dtype, SHAPES + [(70_001,)])
    for p in NORM_TYPES:
        a, b = [g.copy() for g in grads], [g.copy() for g in grads]
        total = fo.clip_grad_norm_(a, 0.5, p)
        ref_total = fo.reference.clip_grad_norm_(b, 0.5, p)
        np.testing.assert_allclose(total, ref_total, rtol=1e-13)   # double vs double sums
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(fo.global_norm(grads), fo.reference.global_norm(grads),
                               rtol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grad_value_matches_torch_bitwise(dtype, rng):
    torch = pytest.importorskip("torch")
    grads = make_params(rng, dtype, SHAPES + [(40_000,)], scale=2.0)
    grads[-1][:4] = [np.nan, np.inf, -np.inf, -0.0]
    tparams = _torch_grads(torch, grads)
    ref = [g.copy() for g in grads]
    assert fo.clip_grad_value_(grads, 0.7) is None
    torch.nn.utils.clip_grad_value_(tparams, 0.7)
    fo.reference.clip_grad_value_(ref, 0.7)
    for g, p, r in zip(grads, tparams, ref):
        assert g.tobytes() == p.grad.numpy().tobytes() == r.tobytes()


def test_nonfinite_norms_follow_torch_or_raise(rng):
    torch = pytest.importorskip("torch")
    for bad in (np.nan, np.inf):
        grads = make_params(rng, np.float32, [(5,), (40_000,)])
        grads[1][123] = bad
        before = [g.copy() for g in grads]
        with pytest.raises(RuntimeError, match="non-finite"):
            fo.clip_grad_norm_(grads, 1.0, error_if_nonfinite=True)
        assert all(g.tobytes() == b.tobytes() for g, b in zip(grads, before))
        # Without the error: torch's arithmetic (Inf norm -> coef 0; NaN norm -> NaN grads).
        tparams = _torch_grads(torch, before)
        t_total = torch.nn.utils.clip_grad_norm_(tparams, 1.0).item()
        total = fo.clip_grad_norm_(grads, 1.0)
        assert (math.isnan(total) and math.isnan(t_total)) or total == t_total
        for g, p in zip(grads, tparams):
            np.testing.assert_array_equal(g, p.grad.numpy())    # NaN == NaN here


def test_inputs_list_tuple_dict_array_none_and_mixed_dtypes(rng):
    a = rng.standard_normal(300).astype(np.float32)
    b = rng.standard_normal((20, 30))
    expected = math.sqrt(np.sum(a.astype(np.float64) ** 2) + np.sum(b ** 2))
    for arrays in ([a, None, b], (a, b), {"a": a, "b": b, "none": None}):
        np.testing.assert_allclose(fo.global_norm(arrays), expected, rtol=1e-13)
    assert fo.global_norm(a) == fo.global_norm([a])
    assert fo.global_norm([]) == 0.0 and fo.all_finite([]) and fo.all_finite({})
    a2, b2 = a.copy(), b.copy()
    total = fo.clip_grad_norm_({"a": a2, "b": b2}, 1.0)
    np.testing.assert_allclose(total, expected, rtol=1e-13)
    coef = 1.0 / (expected + 1e-6)
    assert a2.tobytes() == (a * np.float32(coef)).tobytes()
    assert b2.tobytes() == (b * coef).tobytes()


def test_all_finite_finds_every_position_and_kind(rng):
    big = [rng.standard_normal(n).astype(np.float32) for n in (3, 100_000, 17)]
    assert fo.all_finite(big)
    edge = [np.array([np.finfo(np.float32).max, -np.finfo(np.float32).max,
                      np.finfo(np.float32).smallest_subnormal, -0.0], np.float32),
            np.array([np.finfo(np.float64).max, 5e-324])]
    assert fo.all_finite(edge)
    for value in (np.nan, np.inf, -np.inf, -np.nan):
        for t, pos in ((0, 0), (1, 0), (1, 54_321), (1, 99_999), (2, 16)):
            arrays = [x.copy() for x in big]
            arrays[t][pos] = value
            assert not fo.all_finite(arrays)
            assert not fo.all_finite([x.astype(np.float64) for x in arrays])


def test_results_are_bitwise_identical_across_thread_counts(rng):
    sizes = list(rng.integers(0, 3000, 400)) + [200_003, 65_536, 1]
    start = [rng.standard_normal(int(n)).astype(np.float32) for n in sizes]
    results = []
    before = fo.get_num_threads()
    try:
        for nt in (1, 2, 3):
            fo.set_num_threads(nt)
            grads = [g.copy() for g in start]
            totals = [fo.clip_grad_norm_(grads, 10.0, p) for p in NORM_TYPES]
            totals.append(fo.global_norm(grads))
            poisoned = [g.copy() for g in start]
            poisoned[400][150_000] = np.inf
            results.append((np.float64(totals).tobytes(), b"".join(g.tobytes() for g in grads),
                            fo.all_finite(start), fo.all_finite(poisoned)))
    finally:
        fo.set_num_threads(before)
    assert results[0][2] is True and results[0][3] is False
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("call", ["clip_grad_norm_", "clip_grad_value_", "global_norm",
                                  "all_finite"])
def test_bad_arrays_are_rejected_before_anything_is_written(call, rng):
    fn = {"clip_grad_norm_": lambda g: fo.clip_grad_norm_(g, 1e-3),
          "clip_grad_value_": lambda g: fo.clip_grad_value_(g, 1e-3),
          "global_norm": fo.global_norm, "all_finite": fo.all_finite}[call]
    writes = call.startswith("clip")
    good = rng.standard_normal(50).astype(np.float32)
    ro = rng.standard_normal(50).astype(np.float32)
    ro.setflags(write=False)
    strided = rng.standard_normal(100).astype(np.float32)[::2]
    bad_inputs = [
        ([good, [1.0, 2.0]], TypeError, "[1]", "list"),
        ([good, np.arange(3)], TypeError, "[1]", "int64"),
        ([good, strided], ValueError, "[1]", "C-contiguous"),
        ({"w": good, "b": np.ones(3, np.complex64)}, TypeError, "['b']", "complex64"),
        ("not arrays", TypeError, "", "str"),
    ]
    if writes:
        bad_inputs += [([good, ro], ValueError, "[1]", "read-only"),
                       ([good, good], ValueError, "[0]", "share memory")]
    for arrays, exc, where, what in bad_inputs:
        snapshot = good.copy()
        with pytest.raises(exc) as err:
            fn(arrays)
        assert where in str(err.value) and what in str(err.value), str(err.value)
        assert good.tobytes() == snapshot.tobytes()
    if not writes:
        assert fn([good, ro]) is not None       # read-only arrays are fine to read
        assert fn([good, good]) is not None     # and so is one array twice


def test_bad_scalars_are_named_with_their_value(rng):
    g = rng.standard_normal(10).astype(np.float32)
    snapshot = g.copy()
    cases = [
        (lambda: fo.clip_grad_norm_([g], -1.0), "max_norm", "-1.0"),
        (lambda: fo.clip_grad_norm_([g], float("nan")), "max_norm", "nan"),
        (lambda: fo.clip_grad_norm_([g], "1"), "max_norm", "'1'"),
        (lambda: fo.clip_grad_norm_([g], 1.0, 0), "norm_type", "0"),
        (lambda: fo.clip_grad_norm_([g], 1.0, -2.0), "norm_type", "-2.0"),
        (lambda: fo.clip_grad_norm_([g], 1.0, "fro"), "norm_type", "'fro'"),
        (lambda: fo.clip_grad_norm_([g], 1.0, float("nan")), "norm_type", "nan"),
        (lambda: fo.clip_grad_norm_([g], 1.0, error_if_nonfinite="no"), "error_if_nonfinite",
         "'no'"),
        (lambda: fo.clip_grad_value_([g], -0.5), "clip_value", "-0.5"),
        (lambda: fo.clip_grad_value_([g], None), "clip_value", "None"),
    ]
    for call, name, value in cases:
        with pytest.raises((TypeError, ValueError)) as err:
            call()
        assert name in str(err.value) and value in str(err.value), str(err.value)
        assert g.tobytes() == snapshot.tobytes()
    assert fo.clip_grad_norm_([g], math.inf, "inf") == np.max(np.abs(g))   # inf: measure only
    fo.clip_grad_value_([g], math.inf)
    assert g.tobytes() == snapshot.tobytes()


def test_clip_makes_no_temporaries(rng):
    tracemalloc = pytest.importorskip("tracemalloc")
    n = 1 << 20
    grads = [rng.standard_normal(n).astype(np.float32)]
    fo.clip_grad_norm_(grads, 1.0)
    tracemalloc.start()
    try:
        fo.clip_grad_norm_(grads, 0.5)
        fo.clip_grad_value_(grads, 1e-4)
        fo.all_finite(grads)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < n, f"allocated {peak} bytes for a {4 * n}-byte grad"


_ISA_UTILS = """
import hashlib, numpy as np, fusedoptim as fo
from fusedoptim import _kernels
rng = np.random.default_rng(5)
h = hashlib.sha256()
for dtype in (np.float32, np.float64):
    grads = [rng.standard_normal(n).astype(dtype) for n in (1, 33, 40_003, 1000)]
    for p in (2.0, 1.0, 3.0, float("inf")):
        h.update(np.float64(fo.clip_grad_norm_(grads, 0.9, p)).tobytes())
    h.update(b"".join(g.tobytes() for g in grads))
print(_kernels.ISA, h.hexdigest())
"""


@pytest.mark.parametrize("level", isa_levels.levels_to_compare())
def test_every_isa_level_gives_identical_norms(level):
    """The lane accumulators are plain loops: every ISA level sums in the same order."""
    isa_levels.assert_same_as_baseline(level, _ISA_UTILS)


# -- optimizers: grad_scale and skip_nonfinite vs torch's fused grad_scale / found_inf ---------

@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_scale_and_skips_match_torch_fused_adamw(dtype, rng):
    """GradScaler's protocol with torch's fused AdamW (optimizer.grad_scale/found_inf) against
    step(g * s, grad_scale=s) with skip_nonfinite: same params, same step counts. Scales are
    powers of two as GradScaler's; one step uses 3000 (the reciprocal then differs from
    torch's division by up to 1 ulp per grad element, within the tolerance)."""
    torch = pytest.importorskip("torch")
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    params = make_params(rng, dtype, [(7,), (3, 5), (20_000,)])
    tparams = [torch.tensor(p.copy()) for p in params]
    opt = fo.AdamW(params, lr=1e-2, weight_decay=0.1, skip_nonfinite=True)
    topt = torch.optim.AdamW(tparams, lr=1e-2, weight_decay=0.1, fused=True)
    for k in range(40):
        s = 3000.0 if k == 5 else 2.0 ** int(rng.integers(8, 17))
        grads = [np.asarray(rng.standard_normal(p.shape) * s, dtype) for p in params]
        inf_step = k in (0, 7, 8, 31)
        if inf_step:
            grads[k % 3].flat[0] = np.inf if k % 2 else np.nan
        assert opt.step(grads, grad_scale=s) is (not inf_step)
        for t, g in zip(tparams, grads):
            t.grad = torch.tensor(g)
        topt.grad_scale = torch.tensor(s, dtype=torch.float32)
        topt.found_inf = torch.tensor(1.0 if inf_step else 0.0, dtype=torch.float32)
        topt.step()
    assert opt.skipped_steps == 4
    rtol = 1e-9 if dtype == np.float64 else 2e-5
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p, t.numpy(), rtol=rtol, atol=rtol)
    for i, t in enumerate(tparams):
        assert opt.state[i]["step"] == int(topt.state[t]["step"].item()) == 36


def test_grad_scale_is_validated_before_anything_changes(rng):
    params = [rng.standard_normal(10).astype(np.float32)]
    opt = fo.Adam(params)
    g = [np.ones(10, np.float32)]
    opt.step(g)
    snapshot = (params[0].copy(), copy.deepcopy(opt.state_dict()))
    for bad, exc in [(0.0, ValueError), (-2.0, ValueError), (float("nan"), ValueError),
                     (float("inf"), ValueError), ("2", TypeError), (1e-300, ValueError),
                     (1e300, ValueError)]:
        with pytest.raises(exc) as err:
            opt.step(g, grad_scale=bad)
        assert "grad_scale" in str(err.value) and repr(bad) in str(err.value)
    assert params[0].tobytes() == snapshot[0].tobytes()
    assert opt.state[0]["step"] == 1
    # GradScaler-style inputs: numpy scalars and 1-element arrays.
    assert opt.step(g, grad_scale=np.float32(1024.0)) is True
    assert opt.step(g, grad_scale=np.array([512.0])) is True
    with pytest.raises(TypeError, match="skip_nonfinite"):
        fo.Adam(params, skip_nonfinite="yes")


def test_a_kernel_without_sign_first_is_refused():
    """grad_scale relies on scalar 0 being the grad's multiplier; a class whose kernel is laid
    out otherwise must fail loudly at construction, not scale the wrong scalar."""
    class Bad(fo.SGD):
        _kernel = "clamp"       # scalars ("lo", "hi")
    with pytest.raises(TypeError, match="'sign'"):
        Bad([np.zeros(3, np.float32)])


def test_nonfinite_grads_propagate_without_skip_nonfinite():
    params = [np.ones(4, np.float32)]
    opt = fo.SGD(params, lr=0.1)
    assert opt.step([np.array([1.0, np.nan, np.inf, 0.0], np.float32)]) is True
    assert opt.skipped_steps == 0
    assert np.isnan(params[0][1]) and np.isinf(params[0][2]) and params[0][3] == 1.0


def test_bench_utilities_section_and_two_pass_rooflines():
    from fusedoptim import bench
    out = subprocess.run([sys.executable, "-m", "fusedoptim", "bench", "--utilities", "--sizes",
                          "2e4", "--threads", "1", "--repeat", "1", "--min-time", "0.005"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for label in ("clip_grad_norm_ 1000x1000 (clips)", "all_finite", "clip_grad_value_",
                  "with skip_nonfinite"):
        assert label in out.stdout, out.stdout
    for case in bench.BENCH_CASES:
        if case.extra_roofline:
            bench.roofline_fn(case, 1000, np.float32)()
            bench.fused_step_fn(case, 1000, np.float32)()
            assert case.transfers() > 2 * case.rw_buffers + 1


def test_skip_and_grad_scale_on_a_flat_arena(rng):
    """The arena's one flat grad is checked and unscaled like separate grads."""
    shapes = {"W": (30, 20), "b": (20,), "s": ()}
    arena = fo.FlatParams(shapes)
    arena.flat[:] = rng.standard_normal(arena.size)
    separate = {k: v.copy() for k, v in arena.params.items()}
    opt = fo.AdamW(arena, lr=1e-2, skip_nonfinite=True)
    ref = fo.AdamW(separate, lr=1e-2)
    for k in range(6):
        g = {n: np.asarray(rng.standard_normal(s), np.float32) for n, s in shapes.items()}
        for n in shapes:
            arena.grads[n][...] = g[n] * np.float32(256.0)
        if k == 2:
            arena.grads["b"][3] = np.nan
            before = arena.flat.copy()
            assert opt.step(grad_scale=256.0) is False
            assert arena.flat.tobytes() == before.tobytes()
            continue
        assert opt.step(grad_scale=256.0) is True
        ref.step(g)
    assert opt._caches[0].plan.ntensors == 1          # stepped as one flat tensor
    for n in shapes:
        assert arena.params[n].tobytes() == separate[n].tobytes()
    assert opt.skipped_steps == 1 and opt.state[0]["step"] == 5
