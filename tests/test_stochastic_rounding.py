"""stochastic_rounding=True (issue 11): bfloat16 params without master weights, the update
computed in float32 and rounded stochastically with a counter-based hash of (seed, param
group, param index, step, element index)."""

import math

import ml_dtypes
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fusedoptim as fo
from cases import CASES
from fusedoptim._precision import stochastic_round

BF16 = np.dtype(ml_dtypes.bfloat16)
SIZES = (5, 255, 70001)        # the last is split between threads (above 32768 elements)


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint16)


def _run(cls, params, kw, grads, threads=None):
    opt = cls(params, **kw)
    for gs in grads:
        if threads is None:
            opt.step(gs)
        else:
            with threadpool_limits(threads):
                opt.step(gs)
    return opt


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kernel_matches_the_twin_bitwise_for_1_2_3_threads(case, rng):
    """Every optimizer: params and state bitwise the reference twin's (float32 reference on
    float32 copies, then the NumPy twin of the rounding), for 1, 2 and 3 threads, grads
    None now and then."""
    kw = dict(case.sample(rng), stochastic_rounding=True, seed=12345)
    start = [rng.standard_normal(n).astype(BF16) for n in SIZES]
    grads = [[None if rng.random() < 0.1 else rng.standard_normal(n).astype(BF16)
              for n in SIZES] for _ in range(8)]
    twin_params = [p.copy() for p in start]
    twin = _run(case.reference, twin_params, kw, grads)
    for threads in (1, 2, 3):
        params = [p.copy() for p in start]
        opt = _run(case.fused, params, kw, grads, threads)
        for a, b in zip(params, twin_params):
            assert np.array_equal(_bits(a), _bits(b)), threads
        sa, sb = opt.state_dict(), twin.state_dict()
        assert sa["seed"] == sb["seed"] == 12345
        for i, st in sa["state"].items():
            for k, v in st.items():
                if isinstance(v, np.ndarray):
                    assert v.tobytes() == sb["state"][i][k].tobytes(), (threads, i, k)
    assert any(not np.array_equal(_bits(a), _bits(b)) for a, b in zip(start, twin_params))


def test_rounding_is_unbiased(rng):
    """p = 1 + 2^-9 lies a quarter of a bfloat16 ulp (2^-7) above 1: it rounds up with
    probability 1/4. Over 2e5 elements the fraction is within 5 standard deviations
    (5 * sqrt(p(1-p)/n) ~ 0.005) of 0.25, and the mean of the rounded values is the exact
    value within the same bound; round to nearest would give 1 everywhere."""
    n = 200_000
    p = np.full(n, 1.0, BF16)
    fo.SGD([p], lr=1.0, stochastic_rounding=True, seed=3).step([np.full(n, -2.0 ** -9, BF16)])
    up = float((p.astype(np.float32) > 1).mean())
    sd = math.sqrt(0.25 * 0.75 / n)
    assert abs(up - 0.25) < 5 * sd
    assert set(np.unique(p.astype(np.float32))) == {1.0, 1.0 + 2.0 ** -7}
    assert abs(float(p.astype(np.float64).mean()) - (1 + 2.0 ** -9)) < 5 * sd * 2.0 ** -7


def test_seeds_and_steps_give_different_streams_and_a_reload_continues_bitwise(rng):
    start = rng.standard_normal(70001).astype(BF16)
    grads = [[rng.standard_normal(70001).astype(BF16)] for _ in range(6)]
    a, b = [start.copy()], [start.copy()]
    oa = _run(fo.AdamW, a, dict(stochastic_rounding=True, seed=1), grads[:3])
    _run(fo.AdamW, b, dict(stochastic_rounding=True, seed=2), grads[:3])
    assert not np.array_equal(_bits(a[0]), _bits(b[0]))
    # save after 3 steps, load into a fresh optimizer built with another seed, go on
    c = [a[0].copy()]
    oc = fo.AdamW(c, stochastic_rounding=True, seed=99)
    oc.load_state_dict(oa.state_dict())
    assert oc.seed == 1
    for gs in grads[3:]:
        oa.step(gs)
        oc.step(gs)
    assert np.array_equal(_bits(a[0]), _bits(c[0]))


def test_special_values_keep_their_meaning():
    """Inf and NaN are rounded to nearest (stay Inf/NaN); +-0 stays; exact bfloat16 values
    are unchanged whatever the random bits."""
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1.5, -3.0, 2.0 ** -130], np.float32)
    for key in (np.array([0, 0], np.uint32), np.array([0xFFFFFFFF, 12345], np.uint32)):
        y = stochastic_round(x, key).astype(np.float32)
        assert np.isposinf(y[0]) and np.isneginf(y[1]) and np.isnan(y[2])
        assert y[3] == 0 and not np.signbit(y[3]) and y[4] == 0 and np.signbit(y[4])
        assert y[5] == 1.5 and y[6] == -3.0
    p = np.array([np.inf, np.nan, 1.0], BF16)
    fo.SGD([p], lr=0.0, stochastic_rounding=True).step([np.ones(3, BF16)])
    assert np.isposinf(p[0].astype(np.float32)) and np.isnan(p[1].astype(np.float32))
    assert p[2] == 1


def test_bad_options_are_refused():
    p32, pb = [np.zeros(4, np.float32)], [np.zeros(4, BF16)]
    with pytest.raises(ValueError, match=r"stochastic_rounding=True rounds bfloat16 params "
                                         r"kept without master weights; these are float32"):
        fo.Adam(p32, stochastic_rounding=True)
    with pytest.raises(ValueError, match="with master_weights=True"):
        fo.Adam(pb, stochastic_rounding=True, master_weights=True)
    with pytest.raises(ValueError, match="these are float16"):
        fo.Adam([np.zeros(4, np.float16)], stochastic_rounding=True)
    with pytest.raises(TypeError, match="stochastic_rounding must be True or False"):
        fo.Adam(pb, stochastic_rounding="yes")
    for seed in (-1, 2 ** 64, 1.5, True):
        with pytest.raises(ValueError, match="seed must be an integer in"):
            fo.Adam(pb, stochastic_rounding=True, seed=seed)
    opt = fo.Adam(pb, stochastic_rounding=True)
    assert opt._layouts[0].precision.master is False      # SR means no master copy
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype float32 but its param has dtype "
                                        r"bfloat16"):
        opt.step([np.ones(4, np.float32)])
