"""fusedoptim.quant: the code maps, the blockwise codec and its NumPy reference.

Every check is exact (bitwise) equality unless a comment states a tolerance.
"""

import ml_dtypes
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from fusedoptim import quant, reference
from fusedoptim import reference as _ref

MAPS = [(True, 8), (False, 8), (True, 4), (False, 4)]


def bits_of(a):
    return np.asarray(a, np.float32).view(np.uint32)


def brute_nearest(y, code):
    """argmin_k |y - code[k]| in float32, first minimum (the documented definition)."""
    return np.argmin(np.abs(y[:, None] - code[None, :]), axis=1).astype(np.uint8)


def unpack4(codes, n):
    idx = np.empty(2 * codes.size, np.uint8)
    idx[0::2] = codes >> 4
    idx[1::2] = codes & 15
    return idx[:n]


# -- maps ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("signed,bits", MAPS)
def test_map_shape_dtype_sorted(signed, bits):
    m = quant.dynamic_map(signed, bits)
    assert m.dtype == np.float32 and m.shape == (2 ** bits,)
    assert np.all(m[1:] > m[:-1])
    assert m[-1] == 1.0 and m[0] >= -1.0
    assert m.flags.writeable
    m[0] = 5                                   # a copy: the cache is not touched
    assert quant.dynamic_map(signed, bits)[0] != 5


def test_map_4bit_values():
    s = quant.dynamic_map(True, 4)
    pos = np.array([0.0055, 0.0325, 0.0775, 0.2125, 0.4375, 0.6625, 0.8875], np.float32)
    # the 4-bit dynamic map: 0, +-pos and 1; float32 products of float32 midpoints, so
    # compared with the rounded decimals to 2 ulp (the construction is checked bitwise below)
    np.testing.assert_array_max_ulp(s, np.concatenate([-pos[::-1], [0], pos, [1]]).astype(np.float32), 2)
    u = quant.dynamic_map(False, 4)
    assert np.array_equal(u, np.arange(1, 17, dtype=np.float32) / 16)
    assert not np.any(u == 0)                  # zero-free (Li et al. 2023)


def _torch_capability(torch):
    try:
        return torch.backends.cpu.get_cpu_capability()
    except AttributeError:                     # pragma: no cover
        return "unknown"


@pytest.mark.parametrize("signed", [True, False])
def test_map_equals_bitsandbytes(signed):
    torch = pytest.importorskip("torch")
    bf = pytest.importorskip("bitsandbytes.functional")
    if _torch_capability(torch) == "DEFAULT":
        pytest.skip("torch runs its no-FMA DEFAULT kernels here: its float32 linspace then "
                    "rounds differently and bitsandbytes' map differs in the last bit "
                    "(documented in fusedoptim.quant.dynamic_map)")
    theirs = bf.create_dynamic_map(signed=signed).numpy()
    assert np.array_equal(bits_of(quant.dynamic_map(signed, 8)), bits_of(theirs))


def test_map_4bit_signed_equals_bitsandbytes_construction():
    """torchao's 4-bit map is bitsandbytes' construction with 3 exponent bits and 4 total bits
    (bitsandbytes pads it with zeros to 256 values: drop the padding)."""
    torch = pytest.importorskip("torch")
    bf = pytest.importorskip("bitsandbytes.functional")
    if _torch_capability(torch) == "DEFAULT":
        pytest.skip("torch's no-FMA DEFAULT kernels: see test_map_equals_bitsandbytes")
    theirs = np.unique(bf.create_dynamic_map(signed=True, max_exponent_bits=3, total_bits=4).numpy())
    assert np.array_equal(bits_of(quant.dynamic_map(True, 4)), bits_of(theirs))


def test_linspace_matches_torch():
    torch = pytest.importorskip("torch")
    if _torch_capability(torch) == "DEFAULT":
        pytest.skip("torch's no-FMA DEFAULT kernels round linspace differently")
    for steps in [2, 3, 5, 9, 17, 33, 65, 129, 7, 100, 257]:
        ours = reference._torch_linspace_f32(0.1, 1.0, steps)
        theirs = torch.linspace(0.1, 1, steps, dtype=torch.float32).numpy()
        assert np.array_equal(bits_of(ours), bits_of(theirs)), steps


def test_fma32_single_rounding():
    rng = np.random.default_rng(1)
    a = rng.standard_normal(2000).astype(np.float32)
    b = rng.standard_normal(2000).astype(np.float32)
    c = rng.standard_normal(2000).astype(np.float32)
    from fractions import Fraction
    got = reference._fma32(a, b, c)
    for i in range(0, 2000, 7):
        exact = Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i]))
        g = got[i]
        lo, hi = np.nextafter(g, np.float32(-np.inf)), np.nextafter(g, np.float32(np.inf))
        # correctly rounded: no neighbour is nearer the exact value
        assert abs(Fraction(float(g)) - exact) <= abs(Fraction(float(lo)) - exact)
        assert abs(Fraction(float(g)) - exact) <= abs(Fraction(float(hi)) - exact)


def test_dynamic_map_bad_input():
    with pytest.raises(ValueError, match=r"bits must be 8 or 4, got 3"):
        quant.dynamic_map(True, 3)
    with pytest.raises(ValueError, match=r"bits must be 8 or 4, got True"):
        quant.dynamic_map(True, True)
    with pytest.raises(TypeError, match=r"signed must be a bool, got 1"):
        quant.dynamic_map(1)


# -- the codec: definition ---------------------------------------------------------------------

def _ref_codes(x, code, bs):
    """The definition, written independently of the reference's blocking."""
    xf = x.reshape(-1).astype(np.float32)
    out = np.empty(xf.size, np.uint8)
    absmax = []
    for s in range(0, xf.size, bs):
        blk = xf[s:s + bs]
        if not np.all(np.isfinite(blk)):
            a = np.float32(np.nan)
        else:
            a = np.max(np.abs(blk))
            if a < np.finfo(np.float32).tiny:
                a = np.float32(0)
        absmax.append(a)
        if a > 0:
            y = np.clip(blk * (np.float32(1) / a), np.float32(-1), np.float32(1))
        else:
            y = np.zeros(blk.size, np.float32)
        out[s:s + bs] = brute_nearest(y, code)
    return out, np.array(absmax, np.float32)


@pytest.mark.parametrize("signed,bits", MAPS)
@pytest.mark.parametrize("n", [0, 1, 7, 128, 255, 256, 257, 1000])
def test_quantize_matches_definition(signed, bits, n, rng):
    code = quant.dynamic_map(signed, bits)
    bs = 256 if bits == 8 else 128
    x = rng.standard_normal(n).astype(np.float32)
    if not signed:
        x = np.abs(x)
    x[rng.random(n) < 0.02] *= 1000                        # outliers
    codes, absmax = quant.quantize_blockwise(x, code, bs, bits=bits)
    want, want_absmax = _ref_codes(x, code, bs)
    assert absmax.dtype == np.float32 and absmax.shape == (-(-n // bs),)
    assert np.array_equal(bits_of(absmax), bits_of(want_absmax))
    got = codes if bits == 8 else unpack4(codes, n)
    assert codes.dtype == np.uint8 and codes.shape == ((n if bits == 8 else (n + 1) // 2),)
    assert np.array_equal(got, want)
    # dequantize: code[c] * absmax in float32
    y = quant.dequantize_blockwise(codes, absmax, code, bs, bits=bits, n=n)
    blk = np.repeat(absmax, bs)[:n]
    assert np.array_equal(bits_of(y), bits_of(code[want] * blk))


@pytest.mark.parametrize("signed,bits", MAPS)
def test_ties_go_to_lower_index(signed, bits):
    """Values with equal float32 distance to two neighbouring codes take the lower one."""
    code = quant.dynamic_map(signed, bits)
    ys, want = [], []
    for k in range(code.size - 1):
        mid = (code[k] + code[k + 1]) / np.float32(2)
        for y in (np.nextafter(mid, np.float32(-1)), mid, np.nextafter(mid, np.float32(2))):
            d0, d1 = abs(y - code[k]), abs(y - code[k + 1])     # float32
            if d0 == d1:
                ys.append(y)
                want.append(k)
    assert len(ys) >= code.size // 2                           # plenty of exact ties exist
    bs = 2
    # blocks of (1.0, y): absmax 1, so the scaled value is y itself
    x = np.array([[1.0, y] for y in ys], np.float32).reshape(-1)
    codes, absmax = quant.quantize_blockwise(x, code, bs, bits=bits)
    got = codes if bits == 8 else unpack4(codes, x.size)
    assert np.all(absmax == 1)
    assert np.array_equal(got[1::2], np.array(want, np.uint8))


@pytest.mark.parametrize("signed,bits", MAPS)
def test_zero_and_subnormal_blocks(signed, bits):
    code = quant.dynamic_map(signed, bits)
    zero_code = int(np.argmin(np.abs(code)))
    bs = 4
    tiny = np.finfo(np.float32).tiny
    x = np.array([0, -0.0, 0, 0,                      # all zero (with -0)
                  tiny / 4, -tiny / 8, 0, 0,          # subnormal absmax: flushed to 0
                  tiny, 0, 0, 0], np.float32)         # smallest normal: a real block
    codes, absmax = quant.quantize_blockwise(x, code, bs, bits=bits)
    got = codes if bits == 8 else unpack4(codes, x.size)
    assert np.array_equal(bits_of(absmax), bits_of(np.array([0, 0, tiny], np.float32)))
    assert np.all(got[:8] == zero_code)
    assert got[8] == int(np.argmin(np.abs(np.float32(1) - code)))
    y = quant.dequantize_blockwise(codes, absmax, code, bs, bits=bits, n=x.size)
    assert np.all(y[:8] == 0)


@pytest.mark.parametrize("signed,bits", MAPS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_block_is_nan(signed, bits, bad):
    code = quant.dynamic_map(signed, bits)
    zero_code = int(np.argmin(np.abs(code)))
    x = np.array([0.5, 0.25, bad, 0.1, 0.3, 0.2, 0.1, 0.0], np.float32)
    codes, absmax = quant.quantize_blockwise(x, code, 4, bits=bits)
    got = codes if bits == 8 else unpack4(codes, x.size)
    assert np.isnan(absmax[0]) and absmax[1] == np.float32(0.3)
    assert np.all(got[:4] == zero_code)                 # documented: the zero code
    y = quant.dequantize_blockwise(codes, absmax, code, 4, bits=bits)
    assert np.all(np.isnan(y[:4])) and np.all(np.isfinite(y[4:]))


def test_4bit_packing_and_round_trip(rng):
    code = quant.dynamic_map(True, 4)
    for n in [1, 2, 3, 127, 128, 129, 301]:
        x = rng.standard_normal(n).astype(np.float32)
        codes, absmax = quant.quantize_blockwise(x, code, 128, bits=4)
        idx = _ref_codes(x, code, 128)[0]
        padded = np.append(idx, 0) if n % 2 else idx
        assert np.array_equal(codes, (padded[0::2] << 4) | padded[1::2])   # high nibble first
        if n % 2:
            assert codes[-1] & 15 == 0                                   # padding nibble 0
        y = quant.dequantize_blockwise(codes, absmax, code, 128, bits=4, n=n)
        assert y.shape == (n,)
        assert np.array_equal(bits_of(y), bits_of(code[idx] * np.repeat(absmax, 128)[:n]))
        # for non-negative x, re-quantizing the dequantized values gives the same codes and
        # absmax (each block's max dequantizes to code 1.0 * absmax = absmax exactly)
        for m in (code, quant.dynamic_map(False, 4)):
            c1, a1 = quant.quantize_blockwise(np.abs(x), m, 128, bits=4)
            y1 = quant.dequantize_blockwise(c1, a1, m, 128, bits=4, n=n)
            c2, a2 = quant.quantize_blockwise(y1, m, 128, bits=4)
            assert np.array_equal(a2, a1) and np.array_equal(c2, c1)


def test_8bit_round_trip_error_bound(rng):
    # (the worst case is the clamp at -1: the signed map's lowest code is -0.99297)
    """Dequantize(quantize(x)) is within the map's worst case times absmax (tolerance: the
    larger of half the widest gap and the distance from -1 to code[0], times absmax, plus
    2 ulp of absmax for the float32 rounding of the product and of the difference)."""
    code = quant.dynamic_map(True, 8)
    x = rng.standard_normal(4096).astype(np.float32)
    codes, absmax = quant.quantize_blockwise(x, code)
    y = quant.dequantize_blockwise(codes, absmax, code)
    worst = max(np.max(np.diff(code)) / 2, code[0] + 1)
    a = np.repeat(absmax, 256)
    assert np.all(np.abs(y - x) <= worst * a + 2 * np.spacing(a))


def test_shapes_and_out(rng):
    code = quant.dynamic_map(True)
    x = rng.standard_normal((3, 100)).astype(np.float32)
    codes, absmax = quant.quantize_blockwise(x)
    assert codes.shape == (300,) and absmax.shape == (2,)
    c_out = np.full((3, 100), 7, np.uint8)
    a_out = np.zeros(2, np.float32)
    r = quant.quantize_blockwise(x, out=(c_out, a_out))
    assert r[0] is c_out and r[1] is a_out
    assert np.array_equal(c_out.reshape(-1), codes) and np.array_equal(a_out, absmax)
    o = np.empty((3, 100), np.float32)
    assert quant.dequantize_blockwise(c_out, a_out, code, out=o) is o
    assert np.array_equal(o.reshape(-1), quant.dequantize_blockwise(codes, absmax))
    assert quant.dequantize_blockwise(codes, absmax, dtype=np.float64).dtype == np.float64


# -- float16 and bfloat16 -----------------------------------------------------------------------

@pytest.mark.parametrize("bits", [8, 4])
def test_half_inputs(bits, rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    for dt in (np.float16, ml_dtypes.bfloat16):
        x = (rng.standard_normal(700) * 3).astype(dt)
        codes, absmax = quant.quantize_blockwise(x, bits=bits, block_size=128)
        c32, a32 = quant.quantize_blockwise(x.astype(np.float32), bits=bits, block_size=128)
        assert np.array_equal(codes, c32) and np.array_equal(bits_of(absmax), bits_of(a32))
        y = quant.dequantize_blockwise(codes, absmax, bits=bits, block_size=128, n=700, dtype=dt)
        assert y.dtype == np.dtype(dt)
        y32 = quant.dequantize_blockwise(codes, absmax, bits=bits, block_size=128, n=700)
        assert np.array_equal(y.view(np.uint16), y32.astype(dt).view(np.uint16))


# -- against bitsandbytes -------------------------------------------------------------------------

def _bnb_default_quantize(torch, x, code, bs):
    """bitsandbytes' reference ("default", CompositeExplicitAutograd) quantize_blockwise,
    bypassing the native CPU kernel that bitsandbytes.functional would dispatch to."""
    op = torch.ops.bitsandbytes.quantize_blockwise.default
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    q, a = op.redispatch(keys, torch.from_numpy(x), torch.from_numpy(code), bs)
    return q.numpy().reshape(-1), a.numpy()


@pytest.mark.parametrize("signed", [True, False])
def test_codes_equal_bitsandbytes_default_backend(signed, rng):
    torch = pytest.importorskip("torch")
    pytest.importorskip("bitsandbytes")
    code = quant.dynamic_map(signed)
    bs = 256
    x = rng.standard_normal(256 * 300).astype(np.float32)
    if not signed:
        x = np.abs(x)
    x[rng.random(x.size) < 0.01] *= 1000                   # outliers
    theirs_q, theirs_a = _bnb_default_quantize(torch, x, code, bs)
    ours_q, ours_a = quant.quantize_blockwise(x, code, bs)
    assert np.array_equal(bits_of(ours_a), bits_of(theirs_a))
    # bitsandbytes compares y with float32 midpoints (code[k] + code[k+1]) / 2; at a y equal to
    # a midpoint that rounded up, that picks the farther code (an exhaustive scan of all
    # float32 y in [-1, 1] finds 53 such y for the signed map, 43 for the unsigned one).
    # Ours is the float32 argmin there. Everywhere else the two agree exactly.
    y = np.clip(x.reshape(-1, bs) * (np.float32(1) / ours_a[:, None]), np.float32(-1), np.float32(1)).reshape(-1)
    bucketize = np.searchsorted((code[:-1] + code[1:]) / np.float32(2), y, side="left")
    rounded_mid = bucketize != brute_nearest(y, code)
    assert np.array_equal(theirs_q, bucketize)
    assert np.array_equal(ours_q[~rounded_mid], theirs_q[~rounded_mid])
    # and at those few y, ours is the true nearest: its float32 distance is strictly smaller
    k = theirs_q[rounded_mid]
    assert np.all(np.abs(y[rounded_mid] - code[ours_q[rounded_mid]]) < np.abs(y[rounded_mid] - code[k]))


def test_rounded_midpoints_vs_bitsandbytes():
    """The scaled values where a float32 midpoint rounds across: bitsandbytes' reference
    backend takes the farther code, ours the nearer (found by the exhaustive C scan)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("bitsandbytes")
    code = quant.dynamic_map(True)
    ys = np.array([float.fromhex(h) for h in ("0x1.e68a0cp-17", "0x1.10a138p-15", "0x1.a3d70cp-7")], np.float32)
    x = np.concatenate([[np.float32(1)], ys]).astype(np.float32)   # absmax 1: y = x
    theirs_q, _ = _bnb_default_quantize(torch, x, code, 4)
    ours_q, _ = quant.quantize_blockwise(x, code, 4)
    assert list(ours_q[1:]) == [131, 132, 160]
    assert list(theirs_q[1:]) == [130, 131, 159]


def test_partial_block_vs_bitsandbytes_default(rng):
    """bitsandbytes' default backend divides the last partial block by its absmax instead of
    multiplying by the reciprocal; codes may then differ only where the two float32 scaled
    values differ (and there by at most one code)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("bitsandbytes")
    code = quant.dynamic_map(True)
    x = rng.standard_normal(256 * 40 + 77).astype(np.float32)
    theirs_q, theirs_a = _bnb_default_quantize(torch, x, code, 256)
    ours_q, ours_a = quant.quantize_blockwise(x, code, 256)
    assert np.array_equal(bits_of(ours_a), bits_of(theirs_a))
    tail = x[256 * 40:]
    a = ours_a[-1]
    same_scaled = (tail / a) == (tail * (np.float32(1) / a))
    diff = ours_q[256 * 40:] != theirs_q[256 * 40:]
    assert np.array_equal(ours_q[:256 * 40], theirs_q[:256 * 40])
    assert not np.any(diff & same_scaled)
    assert np.all(np.abs(ours_q[256 * 40:].astype(int) - theirs_q[256 * 40:]) <= 1)


def test_absmax_and_dequantize_equal_bitsandbytes_native(rng):
    """The native CPU quantizer (what bitsandbytes.functional runs on CPU) is not always
    nearest, so only its absmax is compared; its dequantize of our codes equals ours."""
    torch = pytest.importorskip("torch")
    bf = pytest.importorskip("bitsandbytes.functional")
    code = quant.dynamic_map(True)
    x = rng.standard_normal(256 * 50).astype(np.float32)
    x[rng.random(x.size) < 0.01] *= 1000
    _, state = bf.quantize_blockwise(torch.from_numpy(x), code=torch.from_numpy(code), blocksize=256)
    ours_q, ours_a = quant.quantize_blockwise(x, code, 256)
    assert np.array_equal(bits_of(state.absmax.numpy()), bits_of(ours_a))
    state.absmax = torch.from_numpy(ours_a)
    theirs = bf.dequantize_blockwise(torch.from_numpy(ours_q), state).numpy()
    ours = quant.dequantize_blockwise(ours_q, ours_a, code, 256)
    assert np.array_equal(bits_of(theirs), bits_of(ours))


# -- bad input ----------------------------------------------------------------------------------

def _bad_quantize_cases():
    x = np.ones(10, np.float32)
    code = quant.dynamic_map(True)
    return [
        (dict(x=np.ones(10)), TypeError, r"x must have dtype float32 / float16 / bfloat16.*got float64"),
        (dict(x=[1.0, 2.0]), TypeError, r"x must be a numpy array.*got list"),
        (dict(x=np.ones((4, 4), np.float32)[:, ::2]), ValueError, r"x must be C-contiguous.*ascontiguousarray"),
        (dict(x=x, block_size=0), ValueError, r"block_size must be a positive int, got 0"),
        (dict(x=x, block_size=2.0), TypeError, r"block_size must be a positive int, got 2.0"),
        (dict(x=x, block_size=7, bits=4), ValueError, r"block_size must be even for bits=4.*got 7"),
        (dict(x=x, bits=2), ValueError, r"bits must be 8 or 4, got 2"),
        (dict(x=x, code=code[::-1].copy()), ValueError, r"code must be strictly ascending"),
        (dict(x=x, code=code[:16].copy()), ValueError, r"code must be 1-D with 256 values for bits=8, got shape \(16,\)"),
        (dict(x=x, code=code, bits=4), ValueError, r"code must be 1-D with 16 values for bits=4, got shape \(256,\)"),
        (dict(x=x, code=code.astype(np.float64)), TypeError, r"code must have dtype float32, got float64"),
        (dict(x=x, code=np.where(code == 1, np.nan, code).astype(np.float32)), ValueError, r"code must hold finite values.*index 255"),
        (dict(x=x, out=(np.zeros(9, np.uint8), np.zeros(1, np.float32))), ValueError, r"out\[0\] \(codes\) must have 10 elements, got shape \(9,\)"),
        (dict(x=x, out=(np.zeros(10, np.int8), np.zeros(1, np.float32))), TypeError, r"out\[0\] \(codes\) must have dtype uint8, got int8"),
        (dict(x=x, out=(np.zeros(10, np.uint8), np.zeros(2, np.float32))), ValueError, r"out\[1\] \(absmax\) must have 1 elements, got shape \(2,\)"),
        (dict(x=x, out=np.zeros(10, np.uint8)), TypeError, r"out must be a \(codes, absmax\) tuple"),
    ]


@pytest.mark.parametrize("case", range(16))
def test_quantize_bad_input_nothing_modified(case):
    kwargs, exc, msg = _bad_quantize_cases()[case]
    snap = {k: (v.copy() if isinstance(v, np.ndarray) else
                tuple(a.copy() for a in v) if isinstance(v, tuple) else v)
            for k, v in kwargs.items()}
    with pytest.raises(exc, match=msg):
        quant.quantize_blockwise(**kwargs)
    for k, v in kwargs.items():
        if isinstance(v, np.ndarray):
            assert np.array_equal(v, snap[k], equal_nan=True)
        elif isinstance(v, tuple):
            assert all(np.array_equal(a, b) for a, b in zip(v, snap[k]))


def test_dequantize_bad_input_nothing_modified():
    code = quant.dynamic_map(True)
    codes, absmax = quant.quantize_blockwise(np.arange(300, dtype=np.float32))
    out = np.full(300, 3.0, np.float32)
    cases = [
        (dict(absmax=absmax[:1]), ValueError, r"absmax must have ceil\(n/block_size\) = ceil\(300/256\) = 2 elements, got 1"),
        (dict(absmax=absmax.astype(np.float64)), TypeError, r"absmax must have dtype float32, got float64"),
        (dict(codes=codes.astype(np.int16)), TypeError, r"codes must have dtype uint8, got int16"),
        (dict(codes=np.zeros((2, 300), np.uint8)[:, 0]), ValueError, r"codes must be C-contiguous"),
        (dict(n=299), ValueError, r"n=299 does not fit codes of 300 bytes at bits=8; expected n in \[300\]"),
        (dict(out=np.zeros(299, np.float32)), ValueError, r"out must have 300 elements, got shape \(299,\)"),
        (dict(out=out, dtype=np.float64), TypeError, r"out must have dtype float64, got float32"),
        (dict(dtype=np.int32), TypeError, r"dtype must be one of float32, float64, float16, bfloat16, got int32"),
        (dict(block_size=-1), ValueError, r"block_size must be a positive int, got -1"),
        (dict(bits=4), ValueError, r"code must be 1-D with 16 values for bits=4"),
    ]
    for kw, exc, msg in cases:
        args = dict(codes=codes, absmax=absmax, code=code, out=out)
        args.update(kw)
        snap = [a.copy() for a in (codes, absmax, out)]
        with pytest.raises(exc, match=msg):
            quant.dequantize_blockwise(args.pop("codes"), args.pop("absmax"), **args)
        assert all(np.array_equal(a, b) for a, b in zip((codes, absmax, out), snap))


def test_4bit_n_validation():
    codes, absmax = quant.quantize_blockwise(np.ones(5, np.float32), bits=4, block_size=4)
    assert codes.size == 3
    with pytest.raises(ValueError, match=r"n=4 does not fit codes of 3 bytes at bits=4; expected n in \[5, 6\]"):
        quant.dequantize_blockwise(codes, absmax, bits=4, block_size=4, n=4)
    with pytest.raises(ValueError, match=r"absmax must have ceil\(n/block_size\) = ceil\(6/4\) = 2"):
        quant.dequantize_blockwise(codes, absmax[:1], bits=4, block_size=4)


# -- the fused codec (the dynamic maps at the state block sizes run the kernels) --------------

def _hard_values(rng, n, dtype):
    x = rng.standard_normal(n).astype(np.float32)
    x[rng.integers(0, n, n // 50)] *= 1000.0                # outliers
    x[rng.integers(0, n, n // 100)] = 0.0
    x[rng.integers(0, n, n // 200)] *= 1e-30                 # tiny, some subnormal
    x[:256] = 0.0                                           # an all-zero block
    if n > 1000:
        x[700] = np.nan                                     # a NaN block
        x[900] = -np.inf                                    # an Inf block
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16],
                         ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("bits", [8, 4])
def test_fused_codec_matches_the_reference_bitwise_for_any_thread_count(bits, signed, dtype,
                                                                         rng):
    """quantize_blockwise/dequantize_blockwise with a dynamic map at its state block size run
    the fused kernels: codes, absmax and values are bitwise the NumPy reference's, for 1, 2
    and 3 threads, at sizes that are odd, not a multiple of the block, and split between
    threads (> 32768)."""
    block = 256 if bits == 8 else 128
    code = quant.dynamic_map(signed, bits)
    for n in (1, 129, 255, 70001):
        x = _hard_values(rng, n, dtype)
        if not signed:
            x = np.abs(x.astype(np.float32)).astype(dtype)
        want_c, want_a = _ref.quantize_blockwise(x, code, block, bits)
        for threads in (1, 2, 3):
            with threadpool_limits(threads):
                c, a = quant.quantize_blockwise(x, code, block, bits=bits)
                assert c.tobytes() == want_c.tobytes() and a.tobytes() == want_a.tobytes()
                for out_dtype in (np.float32, np.float16, ml_dtypes.bfloat16):
                    y = quant.dequantize_blockwise(c, a, code, block, bits=bits, n=n,
                                                   dtype=out_dtype)
                    want = _ref.dequantize_blockwise(c, a, code, block, bits, n, out_dtype)
                    assert y.tobytes() == want.tobytes()


def test_the_kernel_path_is_taken_for_dynamic_maps_only(monkeypatch, rng):
    """The fused path runs for the dynamic maps at the state block sizes; a custom map or
    block size runs the reference (the same bits, checked by the tests above)."""
    calls = []
    real = _ref.quantize_blockwise
    monkeypatch.setattr(_ref, "quantize_blockwise",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    x = rng.standard_normal(1000).astype(np.float32)
    quant.quantize_blockwise(x)
    quant.quantize_blockwise(x, quant.dynamic_map(False, 4), 128, bits=4)
    assert calls == []
    quant.quantize_blockwise(x, block_size=64)
    quant.quantize_blockwise(x, np.linspace(-1, 1, 256, dtype=np.float32))
    assert len(calls) == 2
