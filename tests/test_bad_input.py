"""Every rejected call names the argument and the value, and leaves every buffer unchanged."""

import numpy as np
import pytest

import fusedoptim as fo


def _setup(dtype=np.float32):
    params = {"W": np.arange(12, dtype=dtype).reshape(3, 4) / 7, "b": np.ones(4, dtype)}
    opt = fo.AdamW(params, lr=1e-2, amsgrad=True)
    grads = {"W": np.full((3, 4), 0.1, dtype), "b": np.full(4, -0.2, dtype)}
    opt.step(grads)     # state exists, so we can check it is left alone too
    return params, opt, grads


def _snapshot(params, opt):
    return ({k: v.copy() for k, v in params.items()}, opt.state_dict())


def _assert_unchanged(params, opt, snap):
    before_params, before_sd = snap
    for k in params:
        assert params[k].tobytes() == before_params[k].tobytes(), k
    after = opt.state_dict()
    assert after["param_groups"] == before_sd["param_groups"]
    for i, st in before_sd["state"].items():
        assert after["state"][i]["step"] == st["step"]
        for k, v in st.items():
            if isinstance(v, np.ndarray):
                assert after["state"][i][k].tobytes() == v.tobytes()


def _assert_still_usable(params, opt, grads):
    before = params["W"].copy()
    opt.step(grads)
    assert not np.array_equal(before, params["W"])


BAD_GRADS = [
    # (mutation of the good grads, exception type, words the message must contain)
    (lambda g: g.update(W=g["W"].astype(np.float64)), TypeError, ["grads['W']", "float64"]),
    (lambda g: g.update(W=g["W"].tolist()), TypeError, ["grads['W']", "list", "ndarray"]),
    (lambda g: g.update(W=np.ones((4, 3), np.float32)), ValueError, ["grads['W']", "(4, 3)", "(3, 4)"]),
    (lambda g: g.update(W=np.ones((3, 8), np.float32)[:, ::2]), ValueError, ["grads['W']", "contiguous"]),
    (lambda g: g.update(b=np.ones(5, np.float32)), ValueError, ["grads['b']", "(5,)"]),
    (lambda g: g.pop("b"), ValueError, ["missing", "'b'"]),
    (lambda g: g.update(c=np.ones(4, np.float32)), ValueError, ["unexpected", "'c'"]),
]


@pytest.mark.parametrize("mutate,exc,words", BAD_GRADS)
def test_bad_grads_rejected_without_writes(mutate, exc, words):
    params, opt, grads = _setup()
    bad = dict(grads)
    mutate(bad)
    snap = _snapshot(params, opt)
    with pytest.raises(exc) as err:
        opt.step(bad)
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    _assert_unchanged(params, opt, snap)
    _assert_still_usable(params, opt, grads)


def test_grad_that_is_or_overlaps_its_param():
    params, opt, grads = _setup()
    snap = _snapshot(params, opt)
    for g in (params["W"], params["W"].reshape(-1)[:12].reshape(3, 4)):
        with pytest.raises(ValueError, match=r"grads\['W'\] shares memory with its param"):
            opt.step({"W": g, "b": grads["b"]})
    _assert_unchanged(params, opt, snap)
    with pytest.raises(ValueError, match="optimizer state"):
        opt.step({"W": opt.state[0]["exp_avg"], "b": grads["b"]})
    _assert_unchanged(params, opt, snap)
    _assert_still_usable(params, opt, grads)


def test_grads_structure_errors_for_lists():
    a, b = np.zeros(3, np.float32), np.zeros(2, np.float32)
    opt = fo.Adam([a, b])
    g = [np.ones(3, np.float32), np.ones(2, np.float32)]
    with pytest.raises(ValueError, match="grads has 1 entries but there are 2 params"):
        opt.step(g[:1])
    with pytest.raises(ValueError, match="grads has 3 entries"):
        opt.step(g + [np.ones(1, np.float32)])
    with pytest.raises(TypeError, match="grads must be a list"):
        opt.step(42)
    with pytest.raises(TypeError, match="not named"):
        opt.step({"a": g[0], "b": g[1]})
    assert not a.any() and not b.any()
    assert opt.state == {}
    opt.step(g)
    assert a.any()


@pytest.mark.parametrize("params,exc,words", [
    ([], ValueError, ["empty"]),
    ({}, ValueError, ["empty"]),
    ([[1.0, 2.0]], TypeError, ["params[0]", "list", "ndarray"]),
    ([np.zeros(3, np.int32)], TypeError, ["params[0]", "int32", "float32"]),
    ([np.zeros((3, 4), np.float32).T], ValueError, ["params[0]", "C-contiguous"]),
    ([np.zeros(3, np.float32), np.zeros(2, np.float64)], TypeError, ["mixed dtypes"]),
    (np.zeros(3, np.float32), TypeError, ["single ndarray"]),
])
def test_bad_params_rejected(params, exc, words):
    with pytest.raises(exc) as err:
        fo.Adam(params)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_read_only_param_rejected():
    p = np.zeros(3, np.float32)
    p.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[0\] is read-only"):
        fo.Adam([p])


def test_same_array_twice_or_overlapping_params():
    p = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
        fo.Adam([p, p])
    with pytest.raises(ValueError, match=r"params\['a'\] and params\['b'\] share memory"):
        fo.Adam({"a": p[:6], "b": p[4:]})
    with pytest.raises(ValueError, match="share memory"):
        fo.Adam([{"params": [p[:5]]}, {"params": [p[3:]]}])
    fo.Adam({"a": p[:5], "b": p[5:]})   # adjacent, not overlapping: fine


def test_groups_may_use_different_dtypes():
    a, b = np.zeros(3, np.float32), np.zeros(3, np.float64)
    opt = fo.Adam([{"params": [a]}, {"params": [b], "lr": 0.1}])
    opt.step([np.ones(3, np.float32), np.ones(3, np.float64)])
    assert a[0] < 0 and b[0] < a[0]      # larger lr moved b further


def test_unknown_group_hyperparameter():
    with pytest.raises(ValueError, match="unknown hyperparameter.*'momentum'"):
        fo.Adam([{"params": [np.zeros(2)], "momentum": 0.9}])


def _state_dict_with(opt, i, key, value):
    sd = opt.state_dict()
    sd["state"][i][key] = value
    return sd


@pytest.mark.parametrize("edit,words", [
    (lambda opt: _state_dict_with(opt, 0, "exp_avg", np.zeros((4, 3), np.float32)),
     ["exp_avg", "(4, 3)", "(3, 4)"]),
    (lambda opt: _state_dict_with(opt, 1, "exp_avg_sq", np.zeros(4, np.float64)),
     ["exp_avg_sq", "float64", "float32"]),
    (lambda opt: _state_dict_with(opt, 1, "step", -3), ["step", "-3"]),
    (lambda opt: _state_dict_with(opt, 1, "bogus", np.zeros(4, np.float32)), ["bogus"]),
    (lambda opt: {**opt.state_dict(), "param_groups": []}, ["0 param groups"]),
    (lambda opt: {"state": {}, "param_groups": [{**opt.state_dict()["param_groups"][0],
                                                 "lr": -1.0}]}, ["lr", "-1.0"]),
    (lambda opt: {"state": {7: {}}, "param_groups": opt.state_dict()["param_groups"]}, ["7"]),
])
def test_load_state_dict_rejects_and_keeps_optimizer(edit, words):
    params, opt, grads = _setup()
    bad = edit(opt)
    snap = _snapshot(params, opt)
    with pytest.raises((ValueError, TypeError)) as err:
        opt.load_state_dict(bad)
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    _assert_unchanged(params, opt, snap)
    _assert_still_usable(params, opt, grads)


def test_nonfinite_gradient_propagates_like_torch():
    """A NaN/Inf gradient is data, not an input error: it flows into param and state."""
    p = np.zeros(3, np.float32)
    opt = fo.Adam([p])
    opt.step([np.array([np.nan, np.inf, 1.0], np.float32)])
    assert np.isnan(p[0]) and np.isnan(p[1]) and np.isfinite(p[2])


def test_bad_grad_in_second_group_leaves_first_group_untouched():
    a, b = np.zeros(3, np.float32), np.zeros(3, np.float64)
    opt = fo.Adam([{"params": [a]}, {"params": [b]}])
    with pytest.raises(TypeError, match=r"grads\[1\]"):
        opt.step([np.ones(3, np.float32), np.ones(3, np.float32)])
    assert not a.any() and opt.state == {}


def test_grad_aliasing_another_params_buffers_is_rejected():
    """A grad that is another param (or its state) would be read while the kernel writes it."""
    a, b = np.zeros(4, np.float32), np.ones(4, np.float32)
    opt = fo.Adam({"a": a, "b": b}, lr=0.1)
    opt.step({"a": np.ones(4, np.float32), "b": np.ones(4, np.float32)})
    before = (a.copy(), b.copy())
    with pytest.raises(ValueError, match=r"grads\['a'\] shares memory with the param updated "
                                         r"for grads\['b'\]"):
        opt.step({"a": b, "b": np.ones(4, np.float32)})
    with pytest.raises(ValueError, match=r"grads\['b'\] shares memory with the optimizer state "
                                         r"updated for grads\['a'\]"):
        opt.step({"a": np.ones(4, np.float32), "b": opt.state[0]["exp_avg_sq"]})
    assert a.tobytes() == before[0].tobytes() and b.tobytes() == before[1].tobytes()
    shared = np.ones(4, np.float32)        # one read-only grad for two params is fine
    opt.step({"a": shared, "b": shared})
    assert a[0] != before[0][0]


def test_functional_state_aliasing_another_param_is_rejected():
    p = [np.zeros(4, np.float32), np.zeros(4, np.float32)]
    g = [np.ones(4, np.float32)] * 2
    m = [p[1], np.zeros(4, np.float32)]          # exp_avgs[0] is params[1]: would race
    v = [np.zeros(4, np.float32), np.zeros(4, np.float32)]
    with pytest.raises(ValueError, match="share memory"):
        fo.functional.adam(p, g, m, v, None, [0, 0], lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
    assert not p[0].any() and not p[1].any()


def test_non_native_byte_order_is_rejected():
    """'>f4' has float32's type number; reading it as native floats would give garbage."""
    swapped = np.ones(4, np.dtype(np.float32).newbyteorder())
    with pytest.raises(TypeError, match=r"params\[0\] has non-native byte order"):
        fo.SGD([swapped], lr=0.5)
    p = np.ones(4, np.float32)
    opt = fo.SGD([p], lr=0.5)
    with pytest.raises(TypeError, match=r"grads\[0\] has non-native byte order"):
        opt.step([np.ones(4, np.dtype(np.float32).newbyteorder())])
    with pytest.raises(TypeError, match="non-native byte order"):
        fo.global_norm([swapped])
    assert p.tolist() == [1.0] * 4
    opt.step([np.ones(4, np.float32)])
    assert p.tolist() == [0.5] * 4
