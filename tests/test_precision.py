"""Low precision (issue 11): bfloat16/float16 params and grads, float32 master weights,
bfloat16 state, and the half-precision codecs under them.

What is bitwise and what has a tolerance, and why, is stated next to each test. In short:

* the codecs (float32 -> bfloat16/float16 round to nearest even, the exact widening back)
  are checked bitwise against NumPy/ml_dtypes casts on every one of the 65536 bit patterns,
  under every instruction-set level this build has (float16 uses F16C above the baseline and
  portable C in it); NaNs are checked for NaN-ness and sign only, since ml_dtypes
  canonicalises NaN payloads while the codecs keep the top payload bits;
* master weights: the float32 master copy is bitwise the float32 optimizer's trajectory and
  the half param bitwise its round-to-nearest-even, for every Case, 1 and 2 threads;
* the kernels against their NumPy reference twins (which run the float32 reference on
  float32 copies and round back with NumPy casts): bitwise for every Case (see
  TWIN_MAX_ULP for the one stated exception).
"""

import copy
import math
import os

import ml_dtypes
import numpy as np
import pytest

import fusedoptim as fo
from cases import CASES
from conftest import make_params
import isa_levels
from test_optimizers import _assert_same_state
from _threads import num_threads as threads

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
HALVES = [BF16, F16]
# NumPy warns when it casts NaN/Inf or overflows, which these tests do on purpose.
pytestmark = [pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")]
half_ids = ["bfloat16", "float16"]
case_ids = [c.name for c in CASES]

# Odd sizes; 70001 puts the total above the driver's 32768-element serial threshold
# (SERIAL_MAX in _driver.pyx), so two threads really split the work.
SIZES = [(1,), (255,), (257,), (25, 40), (70001,)]
STEPS = 16
SERIAL_MAX = 32768
assert sum(int(np.prod(s)) for s in SIZES) > SERIAL_MAX


def uint_view(a):
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_bitwise(actual, expected, what=""):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    if actual.tobytes() != expected.tobytes():
        bad = np.flatnonzero(uint_view(actual).ravel() != uint_view(expected).ravel())
        i = bad[0]
        raise AssertionError(
            f"{what}: {bad.size} of {actual.size} elements differ, first at {i}: "
            f"{actual.ravel()[i]!r} ({int(uint_view(actual).ravel()[i]):#x}) vs "
            f"{expected.ravel()[i]!r} ({int(uint_view(expected).ravel()[i]):#x})")


def half_ulps(a, b):
    """Elementwise distance in units in the last place of the half dtype of a and b (the
    sign-magnitude bit patterns mapped onto a monotone integer line)."""
    ai = uint_view(a).astype(np.int64)
    bi = uint_view(b).astype(np.int64)
    ai = np.where(ai >= 0x8000, 0x8000 - ai, ai)
    bi = np.where(bi >= 0x8000, 0x8000 - bi, bi)
    return np.abs(ai - bi)


def is_nan(a):
    return np.isnan(a.astype(F32))


def sign_bit(a):
    return (uint_view(a) >> (8 * a.dtype.itemsize - 1)).astype(bool)


def all_patterns(dtype):
    """Every one of the 65536 bit patterns of a half dtype, as an array of that dtype."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dtype)


def finite_max(dtype):
    return float(ml_dtypes.finfo(dtype).max)


# -- 1. the codecs, bitwise ---------------------------------------------------------------------

def check_round_trip(dtype):
    """clip_grad_value_ at the dtype's largest finite value: every finite value is decoded to
    float32 and encoded back unchanged, +-Inf becomes +-max, a NaN stays a NaN of its sign
    (quiet: the codecs set the quiet bit, keeping the top payload bits)."""
    x = all_patterns(dtype)
    y = x.copy()
    big = finite_max(dtype)
    fo.clip_grad_value_(y, big)
    nan = is_nan(x)
    expected = np.where(np.isinf(x.astype(F32)), np.sign(x.astype(F32)) * big,
                        x.astype(F32)).astype(dtype)
    assert_bitwise(y[~nan], expected[~nan], f"{dtype} round trip")
    assert is_nan(y[nan]).all() and (sign_bit(y[nan]) == sign_bit(x[nan])).all()
    quiet = 0x0040 if dtype == BF16 else 0x0200
    assert (uint_view(y[nan]) & quiet).all()
    assert nan.sum() == (254 if dtype == BF16 else 2046)    # the test saw every NaN


def scale_coefs(dtype):
    # exact halving (subnormal ties), x * 3/4 (two extra bits: ties among normal values),
    # 1 - 2^-24 (rounds back up), then arbitrary ones (2^-24 underflows most of float16).
    return [0.5, 0.75, 1.0 - 2.0 ** -24, 0.1, 0.3371, 2.0 ** -24, 1e-3]


def ties(prod, dtype):
    """Where a float32 value lies exactly halfway between two neighbours of `dtype`."""
    r = prod.astype(dtype)
    mag = (uint_view(r) & 0x7fff).astype(np.int64)
    sign = uint_view(r) & 0x8000
    up = np.abs(prod.astype(F64)) > np.abs(r.astype(F64))
    other = ((mag + np.where(up, 1, -1)).clip(0, 0x7fff).astype(np.uint16) | sign).view(dtype)
    p64, r64, o64 = prod.astype(F64), r.astype(F64), other.astype(F64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(r64) & np.isfinite(o64) & (p64 != r64) & \
            (np.abs(p64 - r64) == np.abs(o64 - p64))


def subnormals(a):
    exp = 0x7f80 if a.dtype == BF16 else 0x7c00
    u = uint_view(a)
    return ((u & exp) == 0) & ((u & 0x7fff) != 0)


def check_scale(dtype):
    """clip_grad_norm_ scales by coef = max_norm / (total + 1e-6) in float32 and rounds the
    product to nearest even: bitwise (x.astype(float32) * float32(coef)).astype(dtype) on
    every finite bit pattern. Also asserts that exact ties and subnormal results occurred,
    and that every tie went to the even neighbour."""
    x = all_patterns(dtype)
    x = x[np.isfinite(x.astype(F32))]
    total = fo.global_norm([x])
    n_ties = n_sub = 0
    for c in scale_coefs(dtype):
        max_norm = c * (total + fo.grad_utils.CLIP_EPS)
        coef = max_norm / (total + fo.grad_utils.CLIP_EPS)      # what clip_grad_norm_ computes
        assert coef < 1.0
        y = x.copy()
        assert fo.clip_grad_norm_([y], max_norm) == total
        prod = x.astype(F32) * np.float32(coef)
        assert_bitwise(y, prod.astype(dtype), f"{dtype} scaled by {coef!r}")
        tie = ties(prod, dtype)
        assert not (uint_view(y[tie]) & 1).any()          # to even
        n_ties += int(tie.sum())
        n_sub += int(subnormals(y).sum())
    assert n_ties > 100 and n_sub > 100


def encoder_values(dtype, rng):
    """float32 values to push through the encoder: every float32 of the form (pattern of the
    dtype) + {0, just below half an ulp, exactly half (a tie), just above, almost one ulp},
    around the overflow threshold, below the smallest subnormal, and random bits."""
    if dtype == BF16:
        top = np.arange(1 << 16, dtype=np.uint32) << 16
        low = np.array([0, 0x7fff, 0x8000, 0x8001, 0xffff], np.uint32)
        v = (top[:, None] | low[None, :]).ravel()
    else:
        h = all_patterns(F16)
        h = h[np.isfinite(h.astype(F32))]
        a = h.astype(F32)
        nxt = np.nextafter(h, np.float16(np.inf)).astype(F32)
        mid = a + (nxt - a) / 2                  # exact in float32: the tie
        v32 = np.concatenate([a, mid, np.nextafter(mid, np.float32(-np.inf)),
                              np.nextafter(mid, np.float32(np.inf)),
                              np.float32([65504, 65519.996, 65520, 65520.004, 1e5, 3e38,
                                          2.0 ** -25, 2.0 ** -25 * 1.0000001, 2.0 ** -26,
                                          1e-30, 1.4e-45])])
        v32 = np.concatenate([v32, -v32])
        v = uint_view(v32.astype(F32))
    v = np.concatenate([v, rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32)])
    return v.view(np.float32)


def check_encoder_via_master_weights(dtype, rng):
    """Plain SGD with lr=1 from zero params moves the float32 master to exactly -grad; the
    param written in the same pass must be bitwise master.astype(dtype) (NaN: NaN, same
    sign). Covers ties to even, overflow to inf (also 65520 -> float16 inf), subnormals."""
    v = encoder_values(dtype, rng)
    p = np.zeros(v.shape, dtype)
    opt = fo.SGD([p], lr=1.0)
    opt.step([-v])
    master = opt.state[0]["master_param"]
    ok = ~np.isnan(v)
    assert_bitwise(master[ok & (v != 0)], v[ok & (v != 0)], "master = -grad")
    nan = np.isnan(master)
    expected = master.astype(dtype)
    assert_bitwise(p[~nan], expected[~nan], f"float32 -> {dtype}")
    assert is_nan(p[nan]).all() and (sign_bit(p[nan]) == sign_bit(master[nan])).all()
    assert np.isinf(p.astype(F32)).sum() > 4 and nan.sum() > 4
    return p


@pytest.mark.parametrize("dtype", HALVES, ids=half_ids)
def test_codec_round_trip_every_bit_pattern(dtype):
    for n in (1, 2):
        with threads(n):
            check_round_trip(dtype)


@pytest.mark.parametrize("dtype", HALVES, ids=half_ids)
def test_scale_rounds_to_nearest_even_every_bit_pattern(dtype):
    check_scale(dtype)


@pytest.mark.parametrize("dtype", HALVES, ids=half_ids)
def test_encoder_rounds_float32_to_nearest_even(dtype, rng):
    with threads(2):
        p2 = check_encoder_via_master_weights(dtype, np.random.default_rng(5))
    with threads(1):
        p1 = check_encoder_via_master_weights(dtype, np.random.default_rng(5))
    assert p1.tobytes() == p2.tobytes()


def test_encoder_edges_named():
    """The cases a reader would look for, spelled out (expected bits from IEEE 754)."""
    def through(dtype, values):
        v = np.float32(values)
        p = np.zeros(v.shape, dtype)
        fo.SGD([p], lr=1.0).step([-v])
        return [int(b) for b in uint_view(p)]
    # bfloat16: 1 + 2^-8 is a tie between 1 (even) and 1 + 2^-7: down; 1 + 3 * 2^-8: up to
    # the even 1 + 2^-6; max + half an ulp: a tie, to the even neighbour: inf. Subnormals
    # (ulp 2^-133): half an ulp ties down to 0, one and a half up to 2 ulps, 3/4 to 1 ulp.
    assert through(BF16, [1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.3961775e38, -3.3961775e38,
                          2.0 ** -133, 2.0 ** -134, 3 * 2.0 ** -134, 3 * 2.0 ** -135]) == \
        [0x3f80, 0x3f82, 0x7f80, 0xff80, 0x0001, 0x0000, 0x0002, 0x0001]
    # float16: 65520 is the tie between 65504 (odd) and 65536 (inf): inf; just below: 65504;
    # 2^-25 is the tie between 0 (even) and the smallest subnormal: 0; just above: 2^-24.
    assert through(F16, [65520.0, 65519.996, 2.0 ** -25, 2.0 ** -25 * (1 + 2 ** -23),
                         1 + 2 ** -11, 1 + 3 * 2 ** -11]) == \
        [0x7c00, 0x7bff, 0x0000, 0x0001, 0x3c00, 0x3c02]


_ISA_CODECS = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
import test_precision as t
from fusedoptim import _kernels
for dt in t.HALVES:
    t.check_round_trip(dt)
    t.check_scale(dt)
    t.check_encoder_via_master_weights(dt, np.random.default_rng(5))
print(_kernels.ISA, "ok")
"""


def _all_levels():
    built, runnable = fo._kernels.built_levels(), fo._kernels.supported_levels()
    out = []
    for level in fo._kernels.LEVELS:
        reason = None if level in built and level in runnable else \
            f"{level} is not built or not runnable here"
        out.append(pytest.param(level, id=level,
                                marks=[pytest.mark.skip(reason=reason)] if reason else []))
    return out


@pytest.mark.parametrize("level", _all_levels())
def test_codecs_at_every_isa_level(level):
    """The same bitwise checks in a fresh interpreter at each compiled level: float16 goes
    through F16C at avx2/avx512 and through the portable C conversion at the baseline."""
    code = _ISA_CODECS.format(tests=os.path.dirname(os.path.abspath(__file__)))
    assert isa_levels.output_at(level, code) == "ok"


def _fsum_norm(arrays, p=2.0):
    xs = [a.astype(F64).ravel() for a in arrays if a is not None]
    if p == math.inf:
        return max((float(np.abs(x).max(initial=0.0)) for x in xs), default=0.0)
    return math.fsum(math.fsum(np.abs(x) ** p) for x in xs) ** (1.0 / p)


def _half_arrays(rng, dtype, sizes=(1, 255, 70001)):
    # magnitudes over many binades, subnormals included
    return [(rng.standard_normal(n) * 2.0 ** rng.integers(-30 if dtype == F16 else -140,
                                                           12 if dtype == F16 else 100, n)
             ).astype(dtype) for n in sizes]


@pytest.mark.parametrize("dtype", HALVES, ids=half_ids)
def test_norms_and_finiteness_of_half_arrays(dtype, rng):
    """global_norm, and clip_grad_norm_'s norms of order 1, 2, inf (max_norm=inf measures
    only), against float64 NumPy with exact sums (math.fsum; squares of half values are
    exact in double). Tolerance: rtol = n * 2^-53, the bound of a sum of n >= 0 terms
    accumulated in double (the inf-norm: exact). all_finite sees every Inf and NaN."""
    xs = _half_arrays(rng, dtype)
    n = sum(x.size for x in xs)
    rtol = n * 2.0 ** -53
    for nt in (1, 2):
        with threads(nt):
            assert math.isclose(fo.global_norm(xs), _fsum_norm(xs), rel_tol=rtol)
            for p in (1.0, 2.0, math.inf):
                ys = [x.copy() for x in xs]
                total = fo.clip_grad_norm_(ys, math.inf, norm_type=p)
                if p == math.inf:
                    assert total == _fsum_norm(xs, p)
                else:
                    assert math.isclose(total, _fsum_norm(xs, p), rel_tol=rtol)
                assert all(x.tobytes() == y.tobytes() for x, y in zip(xs, ys))
            assert fo.all_finite(xs)
            for bad in (np.inf, -np.inf, np.nan):
                for k, x in enumerate(xs):
                    for pos in (0, x.size // 2, x.size - 1):
                        ys = list(xs)
                        ys[k] = x.copy()
                        ys[k][pos] = bad
                        assert not fo.all_finite(ys)
                        norm = fo.global_norm(ys)
                        assert (math.isnan(norm) if bad != bad else norm == math.inf)
    # the largest finite values: squares overflow float32 but not the double accumulator
    big = np.full(1000, finite_max(dtype), dtype)
    assert math.isclose(fo.global_norm([big]), finite_max(dtype) * math.sqrt(1000),
                        rel_tol=1e-15)


def test_mixed_dtype_lists(rng):
    """float32, float64, bfloat16 and float16 arrays (and None) in one call: one norm as if
    concatenated (rtol n * 2^-53, as above), and each array clipped with the coefficient
    rounded to its compute dtype, then to its own dtype: bitwise."""
    xs = [rng.standard_normal(300).astype(F32), None, rng.standard_normal(70001).astype(BF16),
          rng.standard_normal(7).astype(F64), rng.standard_normal(40000).astype(F16),
          rng.standard_normal(33).astype(BF16)]
    n = sum(x.size for x in xs if x is not None)
    total = fo.global_norm(xs)
    assert math.isclose(total, _fsum_norm(xs), rel_tol=n * 2.0 ** -53)
    # the order of the list does not change a bit (one pass per dtype, in a fixed order)
    assert fo.global_norm(xs[::-1]) == total
    ys = [None if x is None else x.copy() for x in xs]
    max_norm = 0.37 * total
    assert fo.clip_grad_norm_(ys, max_norm) == total
    coef = max_norm / (total + fo.grad_utils.CLIP_EPS)
    for x, y in zip(xs, ys):
        if x is None:
            assert y is None
        elif x.dtype == F64:
            assert_bitwise(y, x * coef)
        else:
            assert_bitwise(y, (x.astype(F32) * np.float32(coef)).astype(x.dtype))
    assert fo.all_finite(xs)
    for k in (2, 4):
        zs = list(xs)
        zs[k] = xs[k].copy()
        zs[k][-1] = np.inf
        assert not fo.all_finite(zs)
    # clip_grad_value_ on a mixed list: the bounds in float32 for half arrays, rounded with
    # the clamped value (the same as clamping with bounds rounded to the half dtype)
    ys = [None if x is None else x.copy() for x in xs]
    fo.clip_grad_value_(ys, 0.3)
    for x, y in zip(xs, ys):
        if x is None:
            continue
        c = x.dtype.type(0.3) if x.dtype in (F32, F64) else np.float32(0.3)
        cdt = x.dtype if x.dtype in (F32, F64) else F32
        assert_bitwise(y, np.clip(x.astype(cdt), -c, c).astype(x.dtype))
        if x.dtype in HALVES:
            b = np.float32(x.dtype.type(0.3))
            assert_bitwise(y, np.clip(x.astype(F32), -b, b).astype(x.dtype))


# -- 2. master weights: bitwise the float32 optimizer ---------------------------------------------

def _grad_steps(rng, shapes, steps, none_prob=0.1):
    """float32 grads per step; a param's grad is None with probability none_prob (never
    all None)."""
    out = []
    for _ in range(steps):
        gs = [None if rng.random() < none_prob else rng.standard_normal(s).astype(F32)
              for s in shapes]
        if all(g is None for g in gs):
            gs[-1] = rng.standard_normal(shapes[-1]).astype(F32)
        out.append(gs)
    return out


def _cast(grads, dtype):
    return [None if g is None else g.astype(dtype) for g in grads]


def _buffers(opt):
    return {(i, k): v for i, st in opt.state.items() for k, v in st.items()
            if isinstance(v, np.ndarray)}


@pytest.mark.parametrize("dtype", HALVES, ids=half_ids)
@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_master_weights_follow_the_float32_trajectory_bitwise(case, dtype, rng):
    """Half params with master weights (the default) vs the same optimizer on float32 params
    that start from the half params converted to float32, with random hyperparameters:
    * float32 grads: the master is bitwise the float32 param after every step, and the half
      param bitwise master.astype(dtype);
    * bfloat16 or float16 grads: the same, the float32 optimizer fed grad.astype(float32).
    Every other state buffer, step count and scalar state: bitwise the float32 optimizer's.
    1 and 2 threads; a grad is None now and then (per-tensor step counts)."""
    start = make_params(rng, dtype, SIZES)
    seq = _grad_steps(rng, SIZES, STEPS)
    for nt in (1, 2):
        for gdt in (F32, BF16, F16):
            kw = case.sample(rng)
            params = [p.copy() for p in start]
            f32 = [p.astype(F32) for p in start]
            groups = [{"params": params[:2]}, {"params": params[2:], "lr": kw["lr"] * 0.5}]
            groups32 = [{"params": f32[:2]}, {"params": f32[2:], "lr": kw["lr"] * 0.5}]
            with threads(nt):
                opt = case.fused(groups, **kw)
                o32 = case.fused(groups32, **kw)
                for k, g in enumerate(seq):
                    g = _cast(g, gdt)
                    opt.step(g)
                    o32.step(_cast(g, F32))
                    st = opt.state
                    for i, (p, q) in enumerate(zip(params, f32)):
                        what = f"{case.name} {gdt} grads, {nt} threads, step {k}, param {i}"
                        if i in st:
                            assert_bitwise(st[i]["master_param"], q, what)
                        assert_bitwise(p, q.astype(dtype), what)
            a, b = opt.state_dict(), o32.state_dict()
            for i in b["state"]:
                assert a["state"][i].pop("master_param").tobytes() == f32[i].tobytes()
            _assert_same_state(a, b)
            # the trajectory moved (a small lr need not move the half params)
            assert sum(int((q != s.astype(F32)).sum()) for q, s in zip(f32, start)) > 1000


# -- 3. without master weights, and bfloat16 state: the kernels vs their reference twins ----------

# (id, param dtype, constructor options, grad dtypes the configuration accepts)
TWIN_CONFIGS = [
    ("bf16-nomaster-bf16state", BF16, dict(master_weights=False), (BF16,)),
    ("bf16-nomaster-f32state", BF16, dict(master_weights=False, state_dtype="float32"), (BF16,)),
    ("f16-nomaster-f16state", F16, dict(master_weights=False), (F16,)),
    ("f16-nomaster-f32state", F16, dict(master_weights=False, state_dtype="float32"), (F16,)),
    ("f32-bf16state", F32, dict(state_dtype="bfloat16"), (F32, BF16, F16)),
    ("bf16-master-bf16state", BF16, dict(state_dtype="bfloat16"), (F32, BF16, F16)),
    ("f16-master-bf16state", F16, dict(state_dtype="bfloat16"), (F32, F16)),
]
TWIN_STEPS = 12


def run_against_twin(case, pdtype, opts, gdt, rng, nt, steps=TWIN_STEPS):
    """The fused optimizer and its reference twin, same options, same grads (of dtype gdt),
    two groups; returns (params, twin params, opt, twin)."""
    kw = case.sample(rng)
    start = make_params(rng, pdtype, SIZES)
    seq = _grad_steps(rng, SIZES, steps)
    params = [p.copy() for p in start]
    twin_params = [p.copy() for p in start]
    opt = case.fused([{"params": params[:2]}, {"params": params[2:], "lr": kw["lr"] * 0.5}],
                     **opts, **kw)
    twin = case.reference([{"params": twin_params[:2]},
                           {"params": twin_params[2:], "lr": kw["lr"] * 0.5}], **opts, **kw)
    with threads(nt):
        for g in seq:
            g = _cast(g, gdt)
            opt.step(g)
            twin.step(g)
    return params, twin_params, opt, twin


def _half_state(opts, pdtype):
    return opts.get("state_dtype") == "bfloat16" or (
        pdtype in HALVES and opts.get("master_weights") is False and "state_dtype" not in opts)


def _twin_params():
    out = []
    for case in CASES:
        for cid, pdtype, opts, gdts in TWIN_CONFIGS:
            out.append(pytest.param(case, pdtype, opts, gdts, id=f"{case.name}-{cid}"))
    return out


def _state_buffers_bitwise(opt, twin):
    a, b = opt.state_dict()["state"], twin.state_dict()["state"]
    assert a.keys() == b.keys()
    for i in a:
        assert a[i].keys() == b[i].keys()
        for k, v in a[i].items():
            if isinstance(v, np.ndarray):
                assert v.dtype == b[i][k].dtype
                assert_bitwise(v, b[i][k], f"state[{i}][{k!r}]")
            else:
                assert np.float64(v).tobytes() == np.float64(b[i][k]).tobytes(), k


@pytest.mark.parametrize("case, pdtype, opts, gdts", _twin_params())
def test_kernel_matches_reference_twin_bitwise(case, pdtype, opts, gdts, rng):
    """Half params without master weights (state in their dtype or float32), float32 params
    with bfloat16 state, master weights with bfloat16 state: the fused step against the
    reference twin (the float32 NumPy reference on float32 copies of params and state,
    rounded back with NumPy/ml_dtypes casts), every accepted grad dtype, 1 and 2 threads,
    random hyperparameters, TWIN_STEPS steps, grads None now and then.

    Bitwise: params, every state buffer (the master included), step counts and scalar
    state. (LAMB with half state stores its moments first and uses them as stored, in the
    norm and the update; its twin does the same.)"""
    for gdt in gdts:
        for nt in (1, 2):
            params, twin_params, opt, twin = run_against_twin(case, pdtype, opts, gdt, rng, nt)
            for i, (a, b) in enumerate(zip(params, twin_params)):
                assert_bitwise(a, b, f"{gdt} grads, {nt} threads, param {i}")
            _state_buffers_bitwise(opt, twin)
            # the configuration is the one asked for
            st = opt.state[len(params) - 1]
            want = {"bfloat16": BF16, "float32": F32}.get(opts.get("state_dtype"))
            master = pdtype in HALVES and opts.get("master_weights", True)
            for k, v in st.items():
                if isinstance(v, np.ndarray):
                    assert v.dtype == (F32 if k == "master_param" else
                                       want or (F32 if master else pdtype)), k
            assert ("master_param" in st) == master


# -- 4. checkpoints ------------------------------------------------------------------------------

CKPT_CONFIGS = [
    ("bf16-master", BF16, {}, BF16),
    ("f16-master-bf16state", F16, dict(state_dtype="bfloat16"), F32),
    ("f32-bf16state", F32, dict(state_dtype="bfloat16"), BF16),
    ("bf16-nomaster", BF16, dict(master_weights=False), BF16),
]



@pytest.mark.parametrize("cid, pdtype, opts, gdt", CKPT_CONFIGS,
                         ids=[c[0] for c in CKPT_CONFIGS])
@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_state_dict_round_trip_is_bitwise(case, cid, pdtype, opts, gdt, rng):
    """N steps, save, load into a fresh optimizer over the saved params, M more: bitwise N+M
    steps straight (params, master copies, half state, step counts, scalar state). The
    checkpoint holds the master as float32 and the state in its own dtype."""
    kw = case.sample(rng)
    start = make_params(rng, pdtype, SIZES)
    seq = [_cast(g, gdt) for g in _grad_steps(rng, SIZES, 10)]
    straight = [p.copy() for p in start]
    opt = case.fused(straight, **opts, **kw)
    for g in seq:
        opt.step(g)
    first = [p.copy() for p in start]
    o1 = case.fused(first, **opts, **kw)
    for g in seq[:6]:
        o1.step(g)
    saved = o1.state_dict()
    saved_params = [p.copy() for p in first]
    for g in seq[6:8]:                       # must not leak into the checkpoint
        o1.step(g)
    master = pdtype in HALVES and opts.get("master_weights", True)
    sdt = BF16 if opts.get("state_dtype") == "bfloat16" else (F32 if master else pdtype)
    for i, st in saved["state"].items():
        assert ("master_param" in st) == master
        for k, v in st.items():
            if isinstance(v, np.ndarray):
                assert v.dtype == (F32 if k == "master_param" else sdt), k
    o2 = case.fused(saved_params, **opts, **kw)
    o2.load_state_dict(saved)
    for g in seq[6:]:
        o2.step(g)
    for i, (a, b) in enumerate(zip(straight, saved_params)):
        assert_bitwise(b, a, f"param {i}")
    _assert_same_state(opt.state_dict(), o2.state_dict())


def _snapshot(opt, params):
    return [p.copy() for p in params], copy.deepcopy(opt.state_dict())


def _assert_untouched(opt, params, snap):
    assert all(a.tobytes() == b.tobytes() for a, b in zip(params, snap[0]))
    _assert_same_state(opt.state_dict(), snap[1])


def test_load_state_dict_refuses_wrong_buffer_dtypes(rng):
    """A checkpoint whose buffer has the wrong dtype is refused with a message naming the
    buffer, its dtype and the one expected; the optimizer is left untouched (and steps on as
    if nothing happened)."""
    tested = set()
    for case in CASES:
        for pdtype, opts, key, wrong in [
                (BF16, {}, "master_param", F64), (BF16, {}, "master_param", BF16),
                (F32, dict(state_dtype="bfloat16"), None, F32),
                (BF16, dict(state_dtype="bfloat16"), None, F16),
                (F16, dict(master_weights=False), None, F32)]:
            kw = case.sample(rng)
            params = make_params(rng, pdtype, [(3,), (300,)])
            clean = [p.copy() for p in params]
            grads = [_cast(g, pdtype) for g in _grad_steps(rng, [(3,), (300,)], 3, 0.0)]
            opt = case.fused(params, **opts, **kw)
            ref = case.fused(clean, **opts, **kw)
            for o in (opt, ref):
                o.step(grads[0])
            sd = opt.state_dict()
            k = key or next((n for n, v in sd["state"][1].items()
                             if isinstance(v, np.ndarray) and n != "master_param"), None)
            if k is None:
                continue                 # this configuration keeps no state buffer
            tested.add((case.name, k))
            good_dtype = sd["state"][1][k].dtype
            sd["state"][1][k] = sd["state"][1][k].astype(wrong)
            snap = _snapshot(opt, params)
            with pytest.raises(ValueError) as err:
                opt.load_state_dict(sd)
            msg = str(err.value)
            assert repr(k) in msg and str(wrong) in msg and str(good_dtype) in msg, msg
            _assert_untouched(opt, params, snap)
            for g in grads[1:]:
                opt.step(g)
                ref.step(g)
            assert all(a.tobytes() == b.tobytes() for a, b in zip(params, clean))
    assert len(tested) > len(CASES)


def test_master_checkpoint_needs_master_weights_and_vice_versa(rng):
    """A checkpoint with master copies does not load into an optimizer without them (an
    unknown buffer), nor one without master copies into an optimizer that keeps them; both
    are refused naming 'master_param', nothing modified."""
    for case in CASES:
        kw = case.sample(rng)
        shapes = [(5,), (64,)]
        g = [_cast(x, BF16) for x in _grad_steps(rng, shapes, 1, 0.0)[0:1]][0]
        p_m = make_params(rng, BF16, shapes)
        p_n = [p.copy() for p in p_m]
        with_m = case.fused(p_m, **kw)
        without = case.fused(p_n, master_weights=False, state_dtype="float32", **kw)
        with_m.step(g)
        without.step(g)
        for opt, params, other in ((with_m, p_m, without), (without, p_n, with_m)):
            if opt is with_m and len(other.state_dict()["state"][0]) == 1:
                # only step counts (SGD without momentum...): the master is made from the
                # param at the next step, as for a fresh optimizer
                continue
            snap = _snapshot(opt, params)
            with pytest.raises(ValueError, match="master_param"):
                opt.load_state_dict(other.state_dict())
            _assert_untouched(opt, params, snap)


@pytest.mark.parametrize("dtype", HALVES, ids=half_ids)
@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_float32_checkpoint_continues_under_master_weights(case, dtype, rng):
    """A float32 optimizer's checkpoint, with its params added as the float32 master copies,
    loads into the same optimizer over half params (master weights) and continues the
    float32 trajectory bitwise: the master is the float32 param after every step, the half
    param its rounding."""
    kw = case.sample(rng)
    start = make_params(rng, F32, SIZES)
    seq = _grad_steps(rng, SIZES, 10)
    f32 = [p.copy() for p in start]
    o32 = case.fused(f32, **kw)
    for g in seq[:5]:
        o32.step(g)
    sd = o32.state_dict()
    for i, st in sd["state"].items():
        st["master_param"] = f32[i].copy()
    half = [p.astype(dtype) for p in f32]
    opt = case.fused(half, **kw)
    opt.load_state_dict(sd)
    for g in seq[5:]:
        o32.step(g)
        opt.step(g)
        st = opt.state
        for i, (p, q) in enumerate(zip(half, f32)):
            if i in st:
                assert_bitwise(st[i]["master_param"], q, f"master {i}")
            assert_bitwise(p, q.astype(dtype), f"param {i}")


# -- 5. bad input: a clear error, nothing modified -------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_bad_precision_options_are_refused(case):
    p32 = [np.ones(3, np.float32)]
    for kw, exc, words in [
            (dict(state_dtype="float64"), ValueError, ["state_dtype", "'float64'", "bfloat16"]),
            (dict(state_dtype="int2"), ValueError, ["state_dtype", "'int2'"]),
            (dict(state_dtype=3), ValueError, ["state_dtype", "3"]),
            (dict(master_weights="yes"), TypeError, ["master_weights", "'yes'"]),
            (dict(master_weights=1), TypeError, ["master_weights"])]:
        with pytest.raises(exc) as err:
            case.fused(p32, **kw)
        assert all(w in str(err.value) for w in words), str(err.value)
    with pytest.raises(ValueError) as err:
        case.fused(p32, master_weights=True)
    assert all(w in str(err.value) for w in (case.name, "master_weights", "float16",
                                             "bfloat16", "float32")), str(err.value)
    with pytest.raises(ValueError) as err:
        case.fused([np.ones(3)], state_dtype="bfloat16")
    assert all(w in str(err.value) for w in (case.name, "'bfloat16'", "float64")), \
        str(err.value)
    # a group added later is refused the same way, and leaves the optimizer as it was
    opt = case.fused([np.ones(3, np.float32)], state_dtype="bfloat16")
    with pytest.raises(ValueError, match="float64"):
        opt.add_param_group({"params": [np.ones(4)]})
    assert len(opt.param_groups) == 1 and opt.step([np.ones(3, np.float32)]) is True


def _refused_step(opt, params, grads, exc, words):
    snap = _snapshot(opt, params)
    with pytest.raises(exc) as err:
        opt.step(grads)
    msg = str(err.value)
    assert all(w in msg for w in words), msg
    _assert_untouched(opt, params, snap)


@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_bad_grads_are_refused_and_nothing_is_modified(case, rng):
    """Each refused step names what is wrong and writes nothing (params, state, step
    counts); a later good step goes on exactly as an optimizer that never saw it."""
    kw = case.sample(rng)
    shapes = [(5,), (70001,)]

    def grads(dtype):
        return [rng.standard_normal(s).astype(dtype) for s in shapes]

    # float32 params (after a first step, so there is state to protect)
    p32 = make_params(rng, F32, shapes)
    c32 = [p.copy() for p in p32]
    opt, clean = case.fused(p32, **kw), case.fused(c32, **kw)
    g = grads(F32)
    opt.step(g)
    clean.step(g)
    _refused_step(opt, p32, grads(F64), TypeError, ["float64", "float32", "higher precision"])
    _refused_step(opt, p32, [grads(BF16)[0], grads(F32)[1]], TypeError,
                  ["grads[1]", "float32", "one dtype per step"])
    _refused_step(opt, p32, [grads(F32)[0], np.ones(70001, np.uint16)], TypeError,
                  ["grads[1]", "uint16"])
    g = grads(BF16)
    opt.step(g)
    clean.step(g)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(p32, c32))

    # bfloat16 params without master weights: grads of their own dtype only
    pb = make_params(rng, BF16, shapes)
    optb = case.fused(pb, master_weights=False, **kw)
    optb.step(grads(BF16))
    _refused_step(optb, pb, grads(F32), TypeError, ["grads[0]", "float32", "bfloat16",
                                                    "ml_dtypes.bfloat16"])
    _refused_step(optb, pb, grads(F16), TypeError, ["grads[0]", "float16", "bfloat16"])
    _refused_step(optb, pb, [np.ones(5, np.uint16), grads(BF16)[1]], TypeError,
                  ["grads[0]", "uint16"])

    # bfloat16 params with master weights: any of the three, one dtype per step
    pm = make_params(rng, BF16, shapes)
    optm = case.fused(pm, **kw)
    optm.step(grads(F16))
    _refused_step(optm, pm, grads(F64), TypeError, ["float64", "higher precision"])
    _refused_step(optm, pm, [grads(F32)[0], grads(BF16)[1]], TypeError,
                  ["grads[1]", "one dtype per step"])


def test_bfloat16_lookalikes_are_refused():
    """uint16 arrays holding bfloat16 bits are not bfloat16: refused as params, grads and
    by the gradient utilities, naming the dtype, nothing written."""
    fake = np.ones(8, ml_dtypes.bfloat16).view(np.uint16)
    for case in CASES:
        with pytest.raises(TypeError, match="uint16"):
            case.fused([fake.copy()])
    for f in (fo.global_norm, fo.all_finite, lambda a: fo.clip_grad_norm_(a, 0.1),
              lambda a: fo.clip_grad_value_(a, 0.1)):
        x = fake.copy()
        with pytest.raises(TypeError, match="uint16"):
            f([np.ones(3, BF16), x])
        assert x.tobytes() == fake.tobytes()


# -- 6. skip_nonfinite and grad_scale with half grads ---------------------------------------------

@pytest.mark.parametrize("config", ["bf16-master", "f32-params"])
@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_skip_nonfinite_with_bfloat16_grads(case, config, rng):
    """bfloat16 grads holding a NaN or +-Inf skip the whole step (bitwise: params, master
    copies, state, step counts; no state created on a skipped first step); the trajectory is
    that of an optimizer that never saw the bad steps."""
    kw = case.sample(rng)
    pdtype = BF16 if config == "bf16-master" else F32
    start = make_params(rng, pdtype, SIZES)
    seq = [_cast(g, BF16) for g in _grad_steps(rng, SIZES, 9)]
    params, clean_params = [p.copy() for p in start], [p.copy() for p in start]
    opt = case.fused(params, skip_nonfinite=True, **kw)
    clean = case.fused(clean_params, **kw)
    skipped = 0
    for k, g in enumerate(seq):
        if k % 2 == 0:
            bad = [None if x is None else x.copy() for x in g]
            targets = [i for i, x in enumerate(bad) if x is not None]
            t = targets[rng.integers(len(targets))]
            bad[t].flat[rng.integers(bad[t].size)] = [np.nan, np.inf, -np.inf][k % 3]
            snap = _snapshot(opt, params)
            assert opt.step(bad) is False
            skipped += 1
            assert opt.skipped_steps == skipped
            _assert_untouched(opt, params, snap)
            if k == 0:
                assert opt.state == {}
        assert opt.step(g) is True
        clean.step(g)
    for a, b in zip(params, clean_params):
        assert_bitwise(a, b)
    _assert_same_state(opt.state_dict(), clean.state_dict())


@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_grad_scale_with_half_grads(case, rng):
    """step(g * s, grad_scale=s) with bfloat16/float16 grads (float32 params, and bfloat16
    params under master weights): bitwise the reference twin's explicit unscale (grad read
    as float32, times 1/s rounded to float32) for any s; for powers of two also bitwise
    step(g) (scaling a half value by 2^k is exact while it stays normal)."""
    kw = case.sample(rng)
    for pdtype, gdt in ((F32, BF16), (F32, F16), (BF16, F16), (BF16, BF16)):
        start = make_params(rng, pdtype, SIZES)
        seq = _grad_steps(rng, SIZES, 6)
        plain, pow2, anys, ref = ([p.copy() for p in start] for _ in range(4))
        o_plain, o_pow2, o_any = (case.fused(x, **kw) for x in (plain, pow2, anys))
        o_ref = case.reference(ref, **kw)
        for k, g in enumerate(seq):
            s2 = 2.0 ** [8, 3, 0, 10, 5, 1][k]
            s = [3.0, 1000.0, 0.37, 65.5, 7.0, 0.9][k]
            gh = _cast(g, gdt)
            o_plain.step(gh)
            # scaling a half value up by 2^k is exact (no overflow at these sizes)
            assert o_pow2.step([None if x is None else (x.astype(F32) * np.float32(s2)
                                                        ).astype(gdt) for x in gh],
                               grad_scale=s2)
            scaled = [None if x is None else (x * np.float32(s)).astype(gdt) for x in g]
            o_any.step(scaled, grad_scale=s)
            o_ref.step(scaled, grad_scale=s)
        for a, b, c in zip(plain, pow2, anys):
            assert_bitwise(b, a, f"{pdtype} params, {gdt} grads, pow2")
        for a, b in zip(anys, ref):
            assert_bitwise(a, b, f"{pdtype} params, {gdt} grads, vs twin")
        _assert_same_state(o_any.state_dict(), o_ref.state_dict())


# -- 7. params that tile one half buffer; FlatParams ------------------------------------------

@pytest.mark.parametrize("dtype", HALVES, ids=half_ids)
@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_half_params_tiling_one_buffer_step_as_one_tensor(case, dtype, rng):
    """Half params that are views laid end to end in one buffer (the flat path: one tensor,
    flat master and state), with master weights and grads (tiling one buffer too) of float32
    or the params' dtype, some steps
    skipping a param (then per param on the same buffers): bitwise the same optimizer over
    separate arrays, and the master bitwise the float32 trajectory."""
    kw = case.sample(rng)
    sizes = [int(np.prod(s)) for s in SIZES]
    buf = make_params(rng, dtype, [(sum(sizes),)])[0]
    offs = np.concatenate([[0], np.cumsum(sizes)])
    views = [buf[a:b].reshape(s) for a, b, s in zip(offs[:-1], offs[1:], SIZES)]
    separate = [v.copy() for v in views]
    f32 = [v.astype(F32) for v in views]
    opt = case.fused(views, **kw)
    sep = case.fused(separate, **kw)
    o32 = case.fused(f32, **kw)
    seq = _grad_steps(rng, SIZES, 8, none_prob=0.0)
    # off the flat path for two steps: param 1 skips step 3, the others step 4 (after which
    # every param has the same step count again)
    seq[3][1] = None
    seq[4] = [g if i == 1 else None for i, g in enumerate(seq[4])]
    paths = []
    for k, g in enumerate(seq):
        # grads that tile one buffer the same way (the flat path needs both)
        flat = np.empty(sum(sizes), dtype if k % 2 else F32)
        g = [None if x is None else flat[a:b].reshape(x.shape)
             for x, a, b in zip(g, offs[:-1], offs[1:])]
        for x, y in zip(g, seq[k]):
            if x is not None:
                x[...] = y
        opt.step(g)
        sep.step(g)
        o32.step(_cast(g, F32))
        paths.append(opt._layouts[0].use_flat)
    # One flat tensor with grads of the params' dtype (odd steps), except at the step that
    # skips a param (LAMB, LARS: per tensor always). float32 grads for half params (even
    # steps) run per param today (tile_view wants the grads in the params' dtype); either
    # path is bitwise the same, so that is not asserted.
    assert [paths[k] for k in (1, 3, 5, 7)] == ([False] * 4 if not case.flat_steps else
                                                [True, False, True, True]), paths
    for v, s, q in zip(views, separate, f32):
        assert_bitwise(v, s)
        assert_bitwise(v, q.astype(dtype))
    _assert_same_state(opt.state_dict(), sep.state_dict())
    assert opt._layouts[0].flat_param is not None      # the group does tile one buffer


@pytest.mark.parametrize("dtype", HALVES, ids=half_ids)
def test_flat_params_half_arena(dtype, rng):
    arena = fo.FlatParams({"W": (7, 5), "b": (70001,)}, dtype=dtype)
    assert arena.flat.dtype == dtype
    for v in arena.params.values():
        v[...] = rng.standard_normal(v.shape).astype(dtype)
    f32 = {k: v.astype(F32) for k, v in arena.params.items()}
    opt = fo.AdamW(arena)
    o32 = fo.AdamW(list(f32.values()))
    for _ in range(3):
        for v in arena.grads.values():
            v[...] = rng.standard_normal(v.shape).astype(dtype)
        opt.step()
        o32.step([v.astype(F32) for v in arena.grads.values()])
    for k, v in arena.params.items():
        assert_bitwise(v, f32[k].astype(dtype))


@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_flat_params_float32_with_bfloat16_state(case, rng):
    """A float32 FlatParams with state_dtype="bfloat16" (the state's itemsize is not the
    params'): the flat state buffer and the per-param state views must hold the same
    elements, so checkpoints and steps that leave the flat path (a None grad) are bitwise
    those of separate arrays. (Regression: the per-param views used to be padded apart.)"""
    kw = case.sample(rng)
    shapes = {"a": (255,), "s": (), "e": (0,), "b": (70001,), "c": (3, 7)}
    arena = fo.FlatParams(shapes)
    for v in arena.params.values():
        v[...] = rng.standard_normal(v.shape)
    sep = [v.copy() for v in arena.params.values()]
    opt = case.fused(arena, state_dtype="bfloat16", **kw)
    o2 = case.fused(sep, state_dtype="bfloat16", **kw)
    for k in range(6):
        for v in arena.grads.values():
            v[...] = rng.standard_normal(v.shape)
        g = [v.copy() for v in arena.grads.values()]
        if k in (2, 3):
            g[3 - k] = None                # each of a, s skips one step: per param, then flat
            opt.step(g)
        else:
            opt.step()
        o2.step(g)
    for a, b in zip(arena.params.values(), sep):
        assert_bitwise(a, b)
    _assert_same_state(opt.state_dict(), o2.state_dict(), ignore_hparams=True)  # (names)
