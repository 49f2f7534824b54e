"""int4 state with Li et al.'s rank-1 normalization of the non-negative moments (the default
under state_dtype="int4"; cython_kernels/rank1.h): the codec against brute force, kernel vs
reference twin bitwise for every optimizer that has such a moment, thread counts, odd 2-D and
3-D shapes, NaN, the state memory, checkpoints and conversions, bad input."""

import contextlib

import ml_dtypes
import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import _kernels
from fusedoptim import reference as R
from fusedoptim.quant import dequantize_blockwise, dynamic_map, quantize_blockwise
from threadpoolctl import threadpool_limits

BF16 = np.dtype(ml_dtypes.bfloat16)
U4 = dynamic_map(False, 4)      # k/16, k = 1..16
S4 = dynamic_map(True, 4)

# Every optimizer with int4 state and a non-negative moment, with settings that use every
# state buffer (AMSGrad's max, RMSprop's centered and momentum buffers, Adagrad's initial sum).
RANK1 = [
    ("Adam", dict(lr=1e-2, weight_decay=0.01)),
    ("AdamW", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, amsgrad=True)),
    ("RMSprop", dict(lr=1e-3, centered=True, momentum=0.5)),
    ("RMSprop", dict(lr=1e-3)),
    ("Adagrad", dict(lr=1e-2, initial_accumulator_value=0.1)),
    ("Adamax", dict(lr=1e-2)),
    ("NAdam", dict(lr=1e-2)),
    ("RAdam", dict(lr=1e-2, decoupled_weight_decay=True, weight_decay=0.01)),
    ("LAMB", dict(lr=1e-2, weight_decay=0.01)),
    ("AdEMAMix", dict(lr=1e-2, t_alpha=5, t_beta3=8)),
    ("ADOPT", dict(lr=1e-2, weight_decay=0.01)),
]
IDS = [f"{n}-{'-'.join(map(str, kw.values()))}" for n, kw in RANK1]
# Odd 2-D and 3-D shapes (rows of 129 and 131 elements: tiles and work units start mid-row),
# a dimension of size 1 (left out: 2-D maxima), a 1-D param (blockwise in the same group) and
# a small one (float32 state); 57871 elements in all, so 2 and 3 threads split the work.
SHAPES = ((257, 129), (5, 7, 131), (1, 61, 83), (37, 129), (4097,), (10, 10))


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _params(rng, dtype=np.float32, shapes=SHAPES):
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _grads(rng, params, scale=1.0):
    return [(scale * rng.standard_normal(p.shape)).astype(p.dtype) for p in params]


def _run(cls, params, kw, grads_seq, threads=None):
    opt = cls(params, **kw)
    with threadpool_limits(threads) if threads else contextlib.nullcontext():
        for gs in grads_seq:
            opt.step(gs)
    return opt


def _assert_same_state(opt, ref, tag=None):
    assert opt.state.keys() == ref.state.keys()
    for i, st in opt.state.items():
        assert st.keys() == ref.state[i].keys(), (tag, i)
        for k, v in st.items():
            if isinstance(v, np.ndarray):
                assert _same(v, ref.state[i][k]), (tag, i, k)
            else:
                assert v == ref.state[i][k], (tag, i, k)


# -- the codec ----------------------------------------------------------------------------------

def test_the_codes_are_the_nearest_of_the_linear_map_ties_to_the_lower_index(rng):
    """rank1.h's arithmetic encode (ceil(16 y - 1/2)) is the float32 argmin over the map, ties
    to the lower index, that quant.h defines: on random values, every midpoint (2k+1)/32 and
    its float32 neighbours, the codes themselves, 0, tiny and subnormal values."""
    mids = np.arange(1, 33, 2, dtype=np.float32) / np.float32(32)
    special = np.concatenate([
        mids, np.nextafter(mids, np.float32(0)), np.nextafter(mids, np.float32(2)), U4,
        np.array([0.0, 1e-30, 1e-45, 0.03125, 0.0625], np.float32)])
    y = np.concatenate([special, rng.random(200_000, dtype=np.float32)]).astype(np.float32)
    y = np.minimum(y, np.float32(1))
    # Row 0 holds y, row 1 ones: every row and column maximum is 1 (y holds 1.0), so every
    # scale is exactly 1 and x / s = y.
    x = np.ones((2, y.size), np.float32)
    x[0] = y
    codes, maxima = R.quantize_rank1(x, x.shape)
    assert _same(maxima, np.ones(2 + y.size, np.float32))
    idx = np.empty(2 * codes.size, np.uint8)
    idx[0::2], idx[1::2] = codes >> 4, codes & 15
    assert _same(idx[:y.size], R._nearest_code(y, U4))


def test_scales_are_the_smallest_marginal_maximum_over_every_dimension(rng):
    """For a 3-D param each element's scale is min over its three marginal maxima (Li et al.),
    dims of size 1 are left out, and dequantization is code * scale in float32."""
    v = np.abs(rng.standard_normal((4, 1, 5, 6))).astype(np.float32)
    dims = fo._precision.rank1_dims(v.shape)
    assert dims == (4, 5, 6)
    codes, maxima = R.quantize_rank1(v, dims)
    w = v.reshape(dims)
    want = np.concatenate([w.max(axis=(1, 2)), w.max(axis=(0, 2)), w.max(axis=(0, 1))])
    assert _same(maxima, want)
    s = np.empty(dims, np.float32)
    for i in range(4):
        for j in range(5):
            for k in range(6):
                s[i, j, k] = min(want[i], want[4 + j], want[9 + k])
    assert _same(R.rank1_scales(maxima, dims), s)
    idx = np.empty(2 * codes.size, np.uint8)
    idx[0::2], idx[1::2] = codes >> 4, codes & 15
    assert _same(idx[:v.size], R._nearest_code((w / s).reshape(-1), U4))
    assert _same(R.dequantize_rank1(codes, maxima, dims, U4), (U4[idx[:v.size]]
                                                               * s.reshape(-1)))
    # Every decoded value is within half a code step (scale/32) of the original, or, below
    # the smallest code's midpoint, within the smallest code (scale/16): |v| <= scale.
    err = np.abs(R.dequantize_rank1(codes, maxima, dims, U4) - w.reshape(-1))
    sf = s.reshape(-1)
    bound = np.where(w.reshape(-1) < sf * np.float32(3 / 32), sf / 16, sf / 32)
    assert (err <= bound * (1 + 2 ** -20)).all()
    assert fo._precision.rank1_dims((7,)) is None
    assert fo._precision.rank1_dims((1, 7, 1)) is None
    assert fo._precision.rank1_dims((2,) * 9) is None         # more than RANK1_MAXDIM


# -- kernel vs twin -----------------------------------------------------------------------------

@pytest.mark.parametrize("name,kw", RANK1, ids=IDS)
def test_kernel_matches_reference_twin_bitwise(name, kw, rng):
    """Params and every state buffer (codes, absmax, rank-1 maxima) equal the NumPy twin's
    (dequantize, float32 reference, requantize with the new values' maxima) bit for bit over
    8 steps, one of them with some grads missing, with the fused steps on 1, 2 and 3 threads."""
    start = _params(rng)
    grads = [_grads(rng, start) for _ in range(8)]
    grads[4] = [None if i in (1, 4) else g for i, g in enumerate(grads[4])]
    kw = dict(kw, state_dtype="int4")
    twin = [p.copy() for p in start]
    ref = _run(getattr(R, name), twin, kw, grads)
    for threads in (1, 2, 3):
        params = [p.copy() for p in start]
        opt = _run(getattr(fo, name), params, kw, grads, threads)
        assert opt._layouts[0].precision.rank1
        assert all(_same(p, q) for p, q in zip(params, twin)), threads
        _assert_same_state(opt, ref, threads)
        for fresh in opt._layouts[0].rank1_fresh.values():        # rolled and zeroed
            assert all((f == 0).all() for f in fresh)
    slot = opt._slots[[r.endswith("+") for r in _kernels.KERNEL_ROLES[opt._kernel][2:]]
                      .index(True)]
    dims = [(257, 129), (5, 7, 131), (61, 83), (37, 129)]
    for i, d in enumerate(dims):
        assert opt.state[i][slot + "_rank1"].shape == (sum(d),)
        assert slot + "_absmax" not in opt.state[i]
    assert slot + "_absmax" in opt.state[4] and slot + "_rank1" not in opt.state[4]
    assert opt.state[5][slot].dtype == np.float32              # below min_quantized_size


@pytest.mark.parametrize("precision", [
    dict(dtype=BF16), dict(dtype=np.float16, master_weights=False),
    dict(dtype=np.float16, grad=np.float32), dict(dtype=np.float32, grad=BF16)],
    ids=["bf16-master", "fp16", "fp16-master-f32grads", "f32-bf16grads"])
def test_half_params_and_grads_match_the_twin(precision, rng):
    """The scan pass reads every param storage (a copy of the param or its master) and grad
    storage the update does: AdamW's kernel vs twin on 1 and 3 threads."""
    precision = dict(precision)
    dtype = precision.pop("dtype")
    gdt = precision.pop("grad", dtype)
    start = _params(rng, dtype, SHAPES[:3])
    grads = [[g.astype(gdt) for g in _grads(rng, start)] for _ in range(5)]
    kw = dict(lr=1e-2, state_dtype="int4", **precision)
    twin = [p.copy() for p in start]
    ref = _run(R.AdamW, twin, kw, grads)
    for threads in (1, 3):
        params = [p.copy() for p in start]
        opt = _run(fo.AdamW, params, kw, grads, threads)
        assert all(_same(p, q) for p, q in zip(params, twin)), threads
        _assert_same_state(opt, ref, threads)


def test_the_group_storage_and_the_option():
    p2, p1 = np.zeros((100, 50), np.float32), np.zeros(5000, np.float32)
    assert fo.AdamW([p2], state_dtype="int4")._caches[0].plan is None
    storage = (lambda o: _kernels.STORAGE_NAMES[o._layouts[0].precision.state_storage])
    assert storage(fo.AdamW([p2, p1], state_dtype="int4")) == "int4+rank1"
    assert storage(fo.AdamW([p2], state_dtype="int4", rank1_normalization=False)) == "int4"
    assert storage(fo.AdamW([p1], state_dtype="int4")) == "int4"     # nothing 2-D
    assert storage(fo.AdamW([p2], state_dtype="int4", min_quantized_size=10_000)) == "int4"
    assert storage(fo.SGD([p2], lr=0.1, momentum=0.9, state_dtype="int4")) == "int4"
    assert storage(fo.AdamW([p2], state_dtype="int8")) == "int8"
    off = fo.AdamW([p2], state_dtype="int4", rank1_normalization=False)
    off.step([np.ones_like(p2)])
    assert "exp_avg_sq_absmax" in off.state[0] and "exp_avg_sq_rank1" not in off.state[0]
    for bad in ("yes", 1, None):
        with pytest.raises(TypeError, match=rf"rank1_normalization must be True or False .*"
                                            rf"got {bad!r}"):
            fo.AdamW([p2], state_dtype="int4", rank1_normalization=bad)


@pytest.mark.parametrize("shape", [(0, 3), (3, 0, 5)])
def test_an_empty_matrix_keeps_blockwise_state_and_matches_the_twin(shape):
    """A param with a dimension of size 0 has no maxima to normalize by: blockwise int4 (no
    blocks), in the class and the twin alike. (Found by tests/property: the twin's rank-1
    maxima of an empty (0, 3) param, quantized with min_quantized_size=0, raised ValueError
    from NumPy's max of nothing.)"""
    states = []
    for cls in (fo.AdamW, fo.reference.AdamW):
        params = [np.zeros(shape, np.float32), np.ones((70, 80), np.float32)]
        opt = cls(params, state_dtype="int4", min_quantized_size=0)
        opt.step([np.ones_like(p) for p in params])
        assert "exp_avg_sq_absmax" in opt.state[0] and "exp_avg_sq_rank1" not in opt.state[0]
        assert "exp_avg_sq_rank1" in opt.state[1]
        states.append((params, opt.state_dict()["state"]))
    (pa, sa), (pb, sb) = states
    assert all(a.tobytes() == b.tobytes() for a, b in zip(pa, pb))
    for i in sa:
        for k, v in sa[i].items():
            w = sb[i][k]
            assert (v.tobytes() == w.tobytes()) if isinstance(v, np.ndarray) else v == w, k


# -- NaN, skip_nonfinite ------------------------------------------------------------------------

def test_nan_in_a_grad_spreads_over_its_row_and_column_and_skip_nonfinite_protects(rng):
    shape = (64, 100)
    p = rng.standard_normal(shape).astype(np.float32)
    opt = fo.AdamW([p], lr=1e-2, state_dtype="int4")
    opt.step([rng.standard_normal(shape).astype(np.float32)])
    g = rng.standard_normal(shape).astype(np.float32)
    g[3, 7] = np.nan
    opt.step([g])
    m = opt.state[0]["exp_avg_sq_rank1"]
    nan = np.isnan(m)
    assert nan[3] and nan[64 + 7] and nan.sum() == 2    # row 3's maximum, column 7's
    # This step's update used the moments before requantization: only (3, 7) is NaN.
    assert np.isnan(p[3, 7]) and np.isnan(p).sum() == 1
    opt.step([rng.standard_normal(shape).astype(np.float32)])
    # Now v decodes to NaN on row 3 and column 7, and the signed moment (blockwise, 128) is
    # NaN on the block holding element 307.
    want = np.zeros(shape, bool)
    want[3, :] = want[:, 7] = True
    want.reshape(-1)[256:384] = True
    assert _same(np.isnan(p), want)

    q = rng.standard_normal(shape).astype(np.float32)
    guarded = fo.AdamW([q], lr=1e-2, state_dtype="int4", skip_nonfinite=True)
    twin_q = q.copy()
    twin = R.AdamW([twin_q], lr=1e-2, state_dtype="int4", skip_nonfinite=True)
    g0 = rng.standard_normal(shape).astype(np.float32)
    for o in (guarded, twin):
        o.step([g0])
    before = {k: np.copy(v) for k, v in guarded.state[0].items()}
    q0 = q.copy()
    g[3, 7] = np.inf
    assert guarded.step([g]) is False and twin.step([g]) is False
    assert _same(q, q0)
    assert all(_same(guarded.state[0][k], v) for k, v in before.items())
    assert all((f == 0).all() for f in guarded._layouts[0].rank1_fresh["exp_avg_sq"])
    g1 = rng.standard_normal(shape).astype(np.float32)
    guarded.step([g1])
    twin.step([g1])
    assert _same(q, twin_q)
    _assert_same_state(guarded, twin)


# -- memory -------------------------------------------------------------------------------------

def test_state_memory_per_param_is_at_most_1_05_bytes():
    """AdamW on a (1000, 1000) param (issue 11: at most 1.05 B/param for int4). The state
    the user sees (state_dict): 2 x 500000 code bytes, 7813 absmax floats of exp_avg, 2000
    maxima of exp_avg_sq = 1.0393 B. Everything the optimizer holds for it (the scan's
    fresh maxima, the descriptor, the page-aligned buffers): 1.0473 B."""
    p = np.zeros((1000, 1000), np.float32)
    opt = fo.AdamW([p], state_dtype="int4")
    opt.step([np.ones_like(p)])
    visible = sum(v.nbytes for v in opt.state[0].values() if isinstance(v, np.ndarray))
    assert visible == 2 * 500_000 + 4 * 7813 + 4 * 2000
    layout = opt._layouts[0]
    held = (sum(v.nbytes for v in layout.buffers.values())
            + sum(f.nbytes for fs in layout.rank1_fresh.values() for f in fs)
            + sum(d.nbytes for d in layout.rank1_desc.values()))
    assert visible / p.size <= held / p.size <= 1.05, held / p.size
    blockwise = fo.AdamW([np.zeros_like(p)], state_dtype="int4", rank1_normalization=False)
    blockwise.step([np.ones_like(p)])
    assert sum(v.nbytes for v in blockwise.state[0].values()
               if isinstance(v, np.ndarray)) / p.size == 1.062504


# -- checkpoints --------------------------------------------------------------------------------

def _stepped(rng, kw=None, steps=4):
    params = _params(rng, shapes=SHAPES[:2] + SHAPES[4:5])
    kw = dict(lr=1e-2, state_dtype="int4", **(kw or {}))
    opt = _run(fo.AdamW, params, kw, [_grads(rng, params) for _ in range(steps)])
    return opt, params, kw


def test_state_dict_round_trips_bitwise_and_continues(rng):
    opt, params, kw = _stepped(rng)
    sd = opt.state_dict()
    st = sd["state"][1]
    assert set(st) == {"step", "exp_avg", "exp_avg_absmax", "exp_avg_qmap", "exp_avg_sq",
                       "exp_avg_sq_rank1", "exp_avg_sq_qmap"}
    assert st["exp_avg_sq"].dtype == np.uint8 and st["exp_avg_sq"].size == (5 * 7 * 131 + 1) // 2
    assert st["exp_avg_sq_rank1"].dtype == np.float32 and st["exp_avg_sq_rank1"].size == 143
    assert _same(st["exp_avg_sq_qmap"], U4) and _same(st["exp_avg_qmap"], S4)
    copies = [p.copy() for p in params]
    other = fo.AdamW(copies, **kw)
    other.load_state_dict(sd)
    _assert_same_state(other, opt)
    for gs in [_grads(rng, params) for _ in range(3)]:
        opt.step(gs)
        other.step(gs)
    assert all(_same(p, q) for p, q in zip(params, copies))
    _assert_same_state(other, opt)


def test_dequantized_state_dict_and_float_state_loaded_into_rank1(rng):
    opt, params, kw = _stepped(rng)
    sd = opt.state_dict(dequantize=True)
    live = opt.state[0]
    dims = (257, 129)
    st = sd["state"][0]
    assert set(st) == {"step", "exp_avg", "exp_avg_sq"}
    want = R.dequantize_rank1(live["exp_avg_sq"], live["exp_avg_sq_rank1"], dims, U4)
    assert _same(st["exp_avg_sq"], want.reshape(dims))
    f32 = fo.AdamW([p.copy() for p in params], lr=1e-2)
    f32.load_state_dict(sd)
    assert _same(f32.state[0]["exp_avg_sq"], st["exp_avg_sq"])
    # A float32 state_dict loads into a rank-1 optimizer: quantized with rank-1 scales, which
    # here are those the values were decoded with, so the codes come back bitwise.
    back = fo.AdamW([p.copy() for p in params], **kw)
    back.load_state_dict(f32.state_dict())
    codes, maxima = R.quantize_rank1(st["exp_avg_sq"], dims)
    assert _same(back.state[0]["exp_avg_sq"], codes)
    assert _same(back.state[0]["exp_avg_sq_rank1"], maxima)
    assert _same(back.state[0]["exp_avg_sq"], live["exp_avg_sq"])


def test_blockwise_and_rank1_checkpoints_convert_through_float(rng):
    """Blockwise int4 state loads into a rank-1 optimizer (decoded, then rank-1 quantized),
    and rank-1 state into a blockwise one (decoded, then blockwise quantized); the signed
    moment and 1-D params are blockwise in both and load as they are."""
    blk, params, kw = _stepped(rng, dict(rank1_normalization=False))
    r1, _, kw1 = _stepped(rng)
    sd_blk, sd_r1 = blk.state_dict(), r1.state_dict()
    dims = (257, 129)

    into_r1 = fo.AdamW([p.copy() for p in params], **kw1)
    into_r1.load_state_dict(sd_blk)
    st = sd_blk["state"][0]
    x = dequantize_blockwise(st["exp_avg_sq"], st["exp_avg_sq_absmax"], U4, 128, bits=4,
                             n=257 * 129)
    codes, maxima = R.quantize_rank1(x, dims)
    assert _same(into_r1.state[0]["exp_avg_sq"], codes)
    assert _same(into_r1.state[0]["exp_avg_sq_rank1"], maxima)
    assert "exp_avg_sq_absmax" not in into_r1.state[0]
    assert _same(into_r1.state[0]["exp_avg"], st["exp_avg"])
    assert _same(into_r1.state[2]["exp_avg_sq"], sd_blk["state"][2]["exp_avg_sq"])

    into_blk = fo.AdamW([p.copy() for p in params], **kw)
    into_blk.load_state_dict(sd_r1)
    st = sd_r1["state"][0]
    x = R.dequantize_rank1(st["exp_avg_sq"], st["exp_avg_sq_rank1"], dims, U4)
    codes, absmax = quantize_blockwise(x, U4, 128, bits=4)
    assert _same(into_blk.state[0]["exp_avg_sq"], codes)
    assert _same(into_blk.state[0]["exp_avg_sq_absmax"], absmax)
    assert "exp_avg_sq_rank1" not in into_blk.state[0]
    # ... and both step on.
    gs = _grads(rng, params)
    into_r1.step(gs)
    into_blk.step(gs)


def test_bad_rank1_checkpoints_are_refused_and_change_nothing(rng):
    opt, params, kw = _stepped(rng)
    sd = opt.state_dict()
    before = opt.state_dict()
    st = sd["state"][0]

    def load(**changes):
        bad = {"state": {**sd["state"], 0: dict(st, **changes)},
               "param_groups": sd["param_groups"]}
        opt.load_state_dict(bad)

    with pytest.raises(ValueError, match=r"\['exp_avg_sq_rank1'\] must be float32 with the "
                                         r"maxima along each dimension .* \(386 values\), got "
                                         r"float32 of size 3"):
        load(exp_avg_sq_rank1=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"\['exp_avg_sq'\] must be the uint8 codes of 16577 "
                                         r"bytes"):
        load(exp_avg_sq=st["exp_avg_sq"][:10])
    with pytest.raises(ValueError, match=r"\['exp_avg_sq_qmap'\] must be a float32 map of 16"):
        load(exp_avg_sq_qmap=np.zeros(8, np.float32))
    int8 = fo.AdamW([p.copy() for p in params], lr=1e-2, state_dtype="int8")
    only_v = {"state": {0: {k: v for k, v in st.items() if k.startswith("exp_avg_sq")}
                        | {"step": st["step"]}}, "param_groups": sd["param_groups"]}
    with pytest.raises(ValueError, match=r"holds rank-1 normalized int4 'exp_avg_sq' .* keeps "
                                         r"state_dtype='int8' state; build it with "
                                         r"state_dtype='int4'"):
        int8.load_state_dict(only_v)
    flat = fo.AdamW([np.zeros(257 * 129, np.float32)] + [p.copy() for p in params[1:]], **kw)
    with pytest.raises(ValueError, match=r"a param of shape \(33153,\) has no rank-1"):
        flat.load_state_dict(sd)
    after = opt.state_dict()
    for i in before["state"]:
        for k, v in before["state"][i].items():
            assert _same(np.asarray(v), np.asarray(after["state"][i][k]))
