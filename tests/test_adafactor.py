"""Adafactor: against torch.optim.Adafactor, the NumPy twin, thread counts, checkpoints, the
driver's tile reduction, and bad input."""

import math

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import _kernels, reference
from fusedoptim.optim.adafactor import factor_shapes

DTYPES = [np.float32, np.float64]
# 1-D, 2-D and 3-D, a 0-d param, and an odd 2-D one
SHAPES = [(37,), (9, 13), (3, 5, 7), (), (1, 6)]
# Several work units and tiles, a matrix wider than the tile width (4096), a batch of
# matrices whose rows do not divide the 16K-element units: the parallel paths.
BIG_SHAPES = [(40_000,), (300, 257), (3, 9000), (5, 70, 130), (2, 2, 3, 4100)]


def _random_config(rng):
    return dict(lr=float(rng.choice([1e-2, 10 ** rng.uniform(-3, 0)])),
                beta2_decay=float(rng.choice([-0.8, 0.0, rng.uniform(-1.5, 0)])),
                eps=(None if rng.random() < 0.5 else float(10 ** rng.uniform(-30, -2)),
                     float(rng.choice([0.0, 1e-3, 10 ** rng.uniform(-4, 0)]))),
                d=float(rng.choice([1.0, rng.uniform(1, 3)])),
                weight_decay=float(rng.choice([0.0, rng.uniform(0, 0.5)])),
                maximize=bool(rng.random() < 0.5))


def _snapshot(opt):
    return ([p.tobytes() for g in opt.param_groups for p in g["params"]],
            {i: {k: (x.tobytes() if isinstance(x, np.ndarray) else x) for k, x in st.items()}
             for i, st in opt.state.items()})


# -- against torch --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch_over_100_steps(rng, dtype):
    torch = pytest.importorskip("torch")
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    for trial in range(6):
        cfg = _random_config(rng)
        ps = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
        tps = [torch.tensor(p.copy(), requires_grad=True) for p in ps]
        opt = fo.Adafactor(ps, **cfg)
        topt = torch.optim.Adafactor(tps, **cfg)
        for it in range(100):
            grads = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
            # now and then a param without a grad: its step count falls behind (per-param t)
            if it % 7 == 3:
                grads[int(rng.integers(len(grads)))] = None
            for t, g in zip(tps, grads):
                t.grad = None if g is None else torch.tensor(g, dtype=tdtype)
            opt.step(grads)
            topt.step()
        for i, (p, t) in enumerate(zip(ps, tps)):
            want = t.detach().numpy()
            if dtype == np.float64:
                np.testing.assert_allclose(p, want, rtol=1e-9, atol=1e-12, err_msg=f"{cfg}")
            else:
                # torch's float32 step rounds differently in three places: its lerp and its
                # add with alpha use fused multiply-adds (one rounding where the kernels, built
                # without FMA contraction so every ISA level gives the same bits, have two),
                # and its norms and means accumulate in float32 where ours do in double. Each
                # is an ulp or so per step, which Adafactor's normalised update does not
                # amplify: after 100 steps the params agreed to within 4e-7 of their scale
                # (worst of 20 random configurations, measured); 5e-6 leaves ~10x margin.
                np.testing.assert_allclose(p, want, rtol=5e-6, atol=5e-6 * np.abs(want).max(),
                                           err_msg=f"{cfg}")
            tst = topt.state[tps[i]]
            st = opt.state[i]
            assert st["step"] == int(tst["step"].item())
            keys = ("row_var", "col_var") if p.ndim >= 2 else ("variance",)
            assert set(st) == {"step", *keys}
            for k in keys:
                assert st[k].shape == tuple(tst[k].shape)
                rtol = 1e-9 if dtype == np.float64 else 5e-6
                np.testing.assert_allclose(st[k], tst[k].numpy(), rtol=rtol, atol=0)


def test_loads_torch_state_dict_and_continues_like_torch(rng):
    """A torch checkpoint (state converted to NumPy, step a float) loads, and the next steps
    match torch's."""
    torch = pytest.importorskip("torch")
    shapes = [(6,), (4, 5), (2, 3, 4)]
    ps = [rng.standard_normal(s) for s in shapes]
    tps = [torch.tensor(p.copy(), requires_grad=True) for p in ps]
    topt = torch.optim.Adafactor(tps, lr=0.05, weight_decay=0.1)
    for _ in range(5):
        for t in tps:
            t.grad = torch.randn(t.shape, dtype=torch.float64)
        topt.step()
    tsd = topt.state_dict()
    sd = {"state": {i: {k: (v.item() if k == "step" else v.numpy().copy())
                        for k, v in st.items()} for i, st in tsd["state"].items()},
          "param_groups": [{k: v for k, v in g.items()} for g in tsd["param_groups"]]}
    mine = [t.detach().numpy().copy() for t in tps]
    opt = fo.Adafactor(mine, lr=0.05, weight_decay=0.1)
    opt.load_state_dict(sd)
    for _ in range(5):
        grads = [rng.standard_normal(s) for s in shapes]
        for t, g in zip(tps, grads):
            t.grad = torch.tensor(g)
        topt.step()
        opt.step(grads)
    for p, t in zip(mine, tps):
        np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-9, atol=1e-12)


# -- against the NumPy twin -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_equal_to_the_twin_where_elementwise(rng, dtype):
    """With integer grads every row and column sum of g^2 is exact in any order, and with
    d = inf and eps2 above RMS(p) neither norm reaches the update: what is left is
    element-wise (the factors' lerp, the estimate, the update, the decay), which must equal
    the NumPy twin bit for bit, over many steps, every option."""
    shapes = SHAPES + BIG_SHAPES
    for cfg in (dict(maximize=True, weight_decay=0.1, eps=(None, 1e3)),
                dict(beta2_decay=-0.5, eps=(1e-3, 1e3), lr=0.05),
                dict(beta2_decay=0.0, eps=(0.0, 1e3), weight_decay=0.01, lr=0.02)):
        ps = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
        qs = [p.copy() for p in ps]
        opt = fo.Adafactor(ps, d=math.inf, **cfg)
        twin = reference.Adafactor(qs, d=math.inf, **cfg)
        for it in range(12):
            # nonzero integers: no 0 * inf where eps1 = 0
            grads = [np.asarray(rng.integers(1, 9, s) * rng.choice([-1, 1], s), dtype)
                     for s in shapes]
            if it == 5:
                grads[1] = None
            opt.step(grads)
            twin.step(grads)
        assert _snapshot(opt) == _snapshot(twin), cfg
        # the premise: RMS(p) stayed below eps2, so alpha = eps2 * rho throughout
        assert all(np.sqrt(np.mean(np.square(p, dtype=np.float64))) < 1e3 for p in ps if p.size)


@pytest.mark.parametrize("dtype", DTYPES)
def test_close_to_the_twin(rng, dtype):
    """Random grads: the norms' and sums' order of addition differs from NumPy's, in double."""
    shapes = SHAPES + BIG_SHAPES[:3]
    cfg = _random_config(rng)
    ps = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
    qs = [p.copy() for p in ps]
    opt, twin = fo.Adafactor(ps, **cfg), reference.Adafactor(qs, **cfg)
    for _ in range(10):
        grads = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
        opt.step(grads)
        twin.step(grads)
    for p, q in zip(ps, qs):
        # double-precision sums in another order: a last-bit difference in alpha / denom
        # now and then, so an ulp or two of the param per step
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(p, q, rtol=40 * eps, atol=40 * eps * np.abs(q).max())


def test_functional_matches_the_class_bitwise(rng):
    shapes = [(5,), (4, 6), (2, 3, 5)]
    ps = [rng.standard_normal(s) for s in shapes]
    qs = [p.copy() for p in ps]
    opt = fo.Adafactor(ps, lr=0.03, weight_decay=0.2, maximize=True, eps=(1e-20, 1e-3))
    rows = [np.zeros(factor_shapes(s)[0]) if len(s) >= 2 else None for s in shapes]
    cols = [np.zeros(factor_shapes(s)[1]) if len(s) >= 2 else None for s in shapes]
    var = [np.zeros(s) if len(s) < 2 else None for s in shapes]
    steps = [0, 0, 0]
    for _ in range(4):
        grads = [rng.standard_normal(s) for s in shapes]
        opt.step(grads)
        fo.functional.adafactor(qs, grads, rows, cols, var, steps, lr=0.03, weight_decay=0.2,
                                maximize=True, eps1=1e-20, eps2=1e-3)
    assert steps == [4, 4, 4]
    for p, q in zip(ps, qs):
        assert p.tobytes() == q.tobytes()
    assert opt.state[1]["row_var"].tobytes() == rows[1].tobytes()
    assert opt.state[2]["col_var"].tobytes() == cols[2].tobytes()
    assert opt.state[0]["variance"].tobytes() == var[0].tobytes()


# -- threads ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_identical_for_1_2_3_threads(rng, dtype):
    cfg = dict(lr=0.05, weight_decay=0.05, maximize=True)
    p0 = [np.asarray(rng.standard_normal(s), dtype) for s in BIG_SHAPES]
    grads = [[np.asarray(rng.standard_normal(s), dtype) for s in BIG_SHAPES] for _ in range(3)]
    results = []
    before = fo.get_num_threads()
    try:
        for n in (1, 2, 3):
            fo.set_num_threads(n)
            ps = [p.copy() for p in p0]
            opt = fo.Adafactor(ps, **cfg)
            for g in grads:
                opt.step(g)
            results.append(_snapshot(opt))
    finally:
        fo.set_num_threads(before)
    assert results[0] == results[1] == results[2]


# -- the driver's tile reduction ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_reduce_tiles_gives_row_and_column_sums(rng, dtype):
    """Plan.reduce_tiles over tensors of every kind (vectors are not visited, empty matrices
    give zeros), against NumPy, and bitwise the same for 1, 2 and 3 threads."""
    shapes = [(300, 257), (11,), (0, 4), (3, 9000), (2, 3, 4, 5), (70_000, 2), (1, 1)]
    params = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
    grads = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
    fid = _kernels.TILE_IDS["adafactor_factors"]
    plan = _kernels.Plan(params, [[None] * 3 for _ in shapes], 3,
                         len(_kernels.SCALARS["adafactor_factors"]),
                         [f"grads[{i}]" for i in range(len(shapes))])
    plan.bind(grads)
    nr, nc = plan.tile_shape()
    mats = [g for g in grads if g.ndim >= 2]
    assert nr == sum(math.prod(g.shape[:-1]) for g in mats)
    assert nc == sum(math.prod(g.shape[:-2]) * g.shape[-1] for g in mats)
    outs = []
    for n in (1, 2, 3):
        rows, cols = np.full(nr, np.nan), np.full(nc, np.nan)
        per_tensor, total = plan.reduce_tiles(fid, rows, cols, num_threads=n)
        outs.append((rows.tobytes(), cols.tobytes(), per_tensor.tobytes()))
    assert outs[0] == outs[1] == outs[2]
    ro = co = 0
    for t, g in enumerate(grads):
        g2 = np.square(g, dtype=np.float64)
        if g.ndim < 2:
            assert per_tensor[t, 0] == 0.0
            continue
        want_r = g2.sum(axis=-1).reshape(-1)
        want_c = g2.sum(axis=-2).reshape(-1)
        np.testing.assert_allclose(rows[ro:ro + want_r.size], want_r, rtol=1e-13)
        np.testing.assert_allclose(cols[co:co + want_c.size], want_c, rtol=1e-13)
        np.testing.assert_allclose(per_tensor[t, 0], np.square(params[t], dtype=np.float64).sum(),
                                   rtol=1e-13)
        ro += want_r.size
        co += want_c.size
    with pytest.raises(ValueError, match="rows of"):
        plan.reduce_tiles(fid, np.zeros(nr + 1), np.zeros(nc))


# -- edge cases -----------------------------------------------------------------------------------

def test_empty_params_only_count_their_step(rng):
    ps = [np.zeros((0,)), np.zeros((0, 3)), np.zeros((2, 0, 3)), rng.standard_normal((2, 3))]
    opt = fo.Adafactor(ps)
    opt.step([np.zeros_like(p) for p in ps[:3]] + [rng.standard_normal((2, 3))])
    assert [opt.state[i]["step"] for i in range(4)] == [1, 1, 1, 1]
    assert opt.state[1]["col_var"].shape == (1, 3)


def test_first_step_factors_are_the_means(rng):
    """At t = 1 the lerp weight is 1: the factors are the row and column means of g^2."""
    p = rng.standard_normal((4, 5))
    g = rng.standard_normal((4, 5))
    opt = fo.Adafactor([p])
    opt.step([g])
    np.testing.assert_allclose(opt.state[0]["row_var"], (g * g).mean(-1, keepdims=True),
                               rtol=1e-15)
    np.testing.assert_allclose(opt.state[0]["col_var"], (g * g).mean(-2, keepdims=True),
                               rtol=1e-15)


# -- checkpoints ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_state_dict_round_trip(rng, dtype):
    ps = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
    opt = fo.Adafactor(ps, lr=0.03, weight_decay=0.1)
    for _ in range(3):
        opt.step([np.asarray(rng.standard_normal(s), dtype) for s in SHAPES])
    sd = opt.state_dict()
    assert set(sd["state"][1]) == {"step", "row_var", "col_var"}
    assert set(sd["state"][0]) == {"step", "variance"}
    assert sd["param_groups"][0]["eps"] == (None, 1e-3)
    qs = [p.copy() for p in ps]
    other = fo.Adafactor(qs, lr=0.5)
    other.load_state_dict(sd)
    assert other.param_groups[0]["lr"] == 0.03
    # saved copies: stepping the original does not change the checkpoint
    grads = [[np.asarray(rng.standard_normal(s), dtype) for s in SHAPES] for _ in range(3)]
    for g in grads:
        opt.step(g)
        other.step(g)
    assert _snapshot(opt) == _snapshot(other)
    assert sd["state"][1]["step"] == 3


# -- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(lr=-1.0), ValueError, r"lr must be a finite number >= 0, got -1\.0"),
    (dict(lr=float("nan")), ValueError, "lr must be"),
    (dict(lr="0.1"), TypeError, "lr must be a real number"),
    (dict(beta2_decay=0.5), ValueError, r"beta2_decay must be a finite number <= 0.*0\.5"),
    (dict(beta2_decay=float("-inf")), ValueError, "beta2_decay"),
    (dict(eps=(-1.0, 1e-3)), ValueError, r"eps\[0\].*>= 0, got -1\.0"),
    (dict(eps=(None, -1e-3)), ValueError, r"eps\[1\] must be a finite number >= 0"),
    (dict(eps=1e-3), ValueError, "eps must be a pair"),
    (dict(eps=("a", 1e-3)), TypeError, r"eps\[0\].*real number"),
    (dict(d=0.5), ValueError, r"d \(the clipping threshold\) must be a number >= 1.*0\.5"),
    (dict(d=float("nan")), ValueError, "d "),
    (dict(weight_decay=-0.1), ValueError, "weight_decay must be a finite number >= 0"),
    (dict(maximize="yes"), TypeError, "maximize must be True or False"),
    (dict(state_dtype="bfloat16"), TypeError, "state_dtype.*not supported.*float32, float64"),
    (dict(master_weights=True), TypeError, "master_weights.*not supported"),
])
def test_bad_hyperparameters(rng, kwargs, exc, match):
    p = rng.standard_normal((3, 4))
    before = p.copy()
    with pytest.raises(exc, match=match):
        fo.Adafactor([p], **kwargs)
    assert p.tobytes() == before.tobytes()


@pytest.mark.parametrize("dtype, match", [
    (np.float16, "float16.*float32 and float64 params only"),
    (np.int32, "params\\[0\\]"),
])
def test_bad_param_dtype(dtype, match):
    with pytest.raises(TypeError, match=match):
        fo.Adafactor([np.zeros((3, 4), dtype)])


def _opt_and_snapshot(rng):
    ps = [rng.standard_normal(s) for s in [(5,), (3, 4), (2, 3, 4)]]
    opt = fo.Adafactor(ps)
    opt.step([rng.standard_normal(p.shape) for p in ps])
    return opt, ps, _snapshot(opt)


def test_bad_grads_change_nothing(rng):
    opt, ps, snap = _opt_and_snapshot(rng)
    good = [rng.standard_normal(p.shape) for p in ps]
    cases = [
        (good[:2], ValueError, "grads has 2 entries but there are 3 params"),
        (good[:2] + [np.zeros((2, 4, 3))], ValueError, r"grads\[2\].*shape"),
        (good[:2] + [np.zeros((2, 3, 4), np.float32)], TypeError, r"grads\[2\].*dtype"),
        (good[:2] + [ps[2]], ValueError, r"grads\[2\] shares memory"),
        ("grads", TypeError, "grads must be a list"),
        ({"a": good[0]}, TypeError, "params were not named"),
    ]
    for grads, exc, match in cases:
        with pytest.raises(exc, match=match):
            opt.step(grads)
        assert _snapshot(opt) == snap
    # a grad aliasing optimizer state
    bad = [good[0], good[1], good[2]]
    bad[0] = opt.state[0]["variance"]
    with pytest.raises(ValueError, match=r"grads\[0\] shares memory with the optimizer state"):
        opt.step(bad)
    assert _snapshot(opt) == snap
    # a bad hyperparameter set between steps (a scheduler's bug): refused before any write
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr must be"):
        opt.step(good)
    assert _snapshot(opt) == snap


def test_bad_state_dict_changes_nothing(rng):
    opt, ps, snap = _opt_and_snapshot(rng)
    sd = opt.state_dict()

    def edited(fn):
        d = {"state": {i: dict(st) for i, st in sd["state"].items()},
             "param_groups": [dict(g) for g in sd["param_groups"]]}
        fn(d)
        return d

    cases = [
        (edited(lambda d: d["state"][1].pop("col_var")), ValueError,
         r"\[1\] must hold exactly \['col_var', 'row_var', 'step'\]"),
        (edited(lambda d: d["state"][1].__setitem__("row_var", np.zeros((3, 4)))), ValueError,
         r"\['row_var'\] must be a float array of shape \(3, 1\)"),
        (edited(lambda d: d["state"][0].__setitem__("step", -1)), ValueError,
         r"\['step'\] must be a whole number >= 0"),
        (edited(lambda d: d["state"].__setitem__(7, {})), ValueError, "has key 7"),
        (edited(lambda d: d["param_groups"][0].__setitem__("d", 0.0)), ValueError, "d "),
        (edited(lambda d: d["param_groups"][0].__setitem__("params", [0, 1])), ValueError,
         "different param layout"),
        ({"state": {}}, TypeError, "state_dict must be a dict with"),
    ]
    for bad, exc, match in cases:
        with pytest.raises(exc, match=match):
            opt.load_state_dict(bad)
        assert _snapshot(opt) == snap
        assert opt.param_groups[0]["d"] == 1.0


def test_bad_functional_lists_change_nothing(rng):
    shapes = [(5,), (3, 4)]
    ps = [rng.standard_normal(s) for s in shapes]
    grads = [rng.standard_normal(s) for s in shapes]
    rows, cols, var = [None, np.zeros((3, 1))], [None, np.zeros((1, 4))], [np.zeros(5), None]
    before = [p.copy() for p in ps] + [rows[1].copy(), cols[1].copy(), var[0].copy()]

    def unchanged():
        now = ps + [rows[1], cols[1], var[0]]
        return all(a.tobytes() == b.tobytes() for a, b in zip(now, before))

    cases = [
        (dict(row_vars=[None, np.zeros((1, 3))]), ValueError,
         r"row_vars\[1\] must be a writeable C-contiguous float64 array of shape \(3, 1\)"),
        (dict(variances=[None, None]), ValueError, r"variances\[0\]"),
        (dict(col_vars=[None, np.zeros((1, 4), np.float32)]), ValueError, r"col_vars\[1\]"),
        (dict(state_steps=[0, -1]), TypeError, r"state_steps\[1\] must be an int >= 0"),
        (dict(state_steps=[0]), ValueError, "state_steps must be a list with one entry"),
        (dict(lr=-1.0), ValueError, "lr must be"),
        (dict(eps1=-1.0), ValueError, "eps1"),
        (dict(eps2=float("nan")), ValueError, "eps2"),
        (dict(d=0.0), ValueError, "d "),
        (dict(beta2_decay=1.0), ValueError, "beta2_decay"),
        (dict(weight_decay=-1.0), ValueError, "weight_decay"),
        (dict(maximize=2), TypeError, "maximize"),
        (dict(grads=[grads[0], np.zeros((4, 3))]), ValueError, r"grads\[1\]"),
    ]
    for change, exc, match in cases:
        args = dict(grads=grads, row_vars=rows, col_vars=cols, variances=var,
                    state_steps=[0, 0])
        kw = {k: change.pop(k) for k in list(change) if k not in args}
        args.update(change)
        with pytest.raises(exc, match=match):
            fo.functional.adafactor(ps, args["grads"], args["row_vars"], args["col_vars"],
                                    args["variances"], args["state_steps"], **kw)
        assert unchanged()
