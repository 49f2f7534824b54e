"""SparseAdam: against torch.optim.SparseAdam (sparse_coo grads), against its NumPy reference
twin (bitwise), across thread counts (bitwise), the functional entry, checkpoints, and bad input
that must leave everything unchanged."""

import warnings

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import SparseGrad

SHAPES = [(40,), (30, 5), (20, 3, 4)]


def _grad(rng, p, dup=True):
    """A random grad for p: sparse with duplicates, unsorted, sometimes empty; sometimes
    dense; sometimes None."""
    kind = rng.integers(10)
    if kind == 0:
        return None
    if kind == 1:
        return rng.standard_normal(p.shape).astype(p.dtype)
    rows = p.shape[0]
    nnz = 0 if kind == 2 else int(rng.integers(1, 2 * rows))
    idx = (rng.integers(0, rows, nnz) if dup else rng.permutation(rows)[:nnz]).astype(np.int64)
    return SparseGrad(idx, rng.standard_normal((nnz,) + p.shape[1:]).astype(p.dtype))


def _sample(rng):
    return dict(lr=float(10 ** rng.uniform(-3, -1)),
                betas=(float(rng.uniform(0.0, 0.99)), float(rng.uniform(0.9, 0.9999))),
                eps=float(10 ** rng.uniform(-10, -6)), maximize=bool(rng.integers(2)))


def _torch_grad(torch, g, p):
    if isinstance(g, SparseGrad):
        return torch.sparse_coo_tensor(torch.from_numpy(g.indices)[None],
                                       torch.from_numpy(g.values), p.shape)
    # a dense grad touches every row: the sparse grad of all row indices
    return torch.sparse_coo_tensor(torch.arange(p.shape[0])[None], torch.from_numpy(g),
                                   p.shape)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(3))
def test_against_torch(dtype, seed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    kw = _sample(rng)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ours = [p.copy() for p in params]
    opt = fo.SparseAdam(ours, **kw)
    tparams = [torch.tensor(p) for p in params]
    topt = torch.optim.SparseAdam(tparams, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # torch: sparse invariant checks disabled
        for _ in range(110):
            grads = [_grad(rng, p) for p in params]
            opt.step(grads)
            for tp, g, p in zip(tparams, grads, params):
                tp.grad = None if g is None else _torch_grad(torch, g, p)
            topt.step()
    # torch's sqrt (Sleef, 1 ulp) is not always correctly rounded, ours is: the results
    # differ by rounding. float64: rtol 1e-9. float32: a few ulps of a param of size ~1 per
    # step, over 110 steps of Adam-sized updates (each at most ~lr): atol 1e-5 is ~80 ulps
    # at 1.0, far below one step's change (lr >= 1e-3).
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    for i, (p, tp) in enumerate(zip(ours, tparams)):
        np.testing.assert_allclose(p, tp.numpy(), **tol)
        st, tst = opt.state[i], topt.state[tp]
        assert st["step"] == tst["step"]
        np.testing.assert_allclose(st["exp_avg"], tst["exp_avg"].numpy(), **tol)
        np.testing.assert_allclose(st["exp_avg_sq"], tst["exp_avg_sq"].numpy(), **tol)


def _run_pair(dtype, seed, steps=30, big=False):
    rng = np.random.default_rng(seed)
    kw = _sample(rng)
    shapes = [(600, 64), (50,)] if big else SHAPES
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    a = [p.copy() for p in params]
    b = [p.copy() for p in params]
    fused, ref = fo.SparseAdam(a, **kw), fo.reference.SparseAdam(b, **kw)
    for _ in range(steps):
        grads = [_grad(rng, p) for p in params]
        fused.step(grads)
        ref.step(grads)
    return fused, ref, a, b


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(3))
def test_against_the_reference_twin_bitwise(dtype, seed):
    fused, ref, a, b = _run_pair(dtype, seed, steps=100)
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i], b[i])
        if i in ref.state:
            assert fused.state[i]["step"] == ref.state[i]["step"]
            for k in ("exp_avg", "exp_avg_sq"):
                np.testing.assert_array_equal(fused.state[i][k], ref.state[i][k])


def test_bitwise_identical_for_1_2_3_threads():
    before = fo.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            fo.set_num_threads(n)
            rng = np.random.default_rng(7)
            p = rng.standard_normal((3000, 48)).astype(np.float32)
            opt = fo.SparseAdam([p], lr=1e-2)
            for _ in range(4):
                # ~2000 draws over 3000 rows: many duplicates, well over the serial cut-off
                idx = rng.integers(0, 3000, 2000).astype(np.int64)
                opt.step([SparseGrad(idx, rng.standard_normal((2000, 48)).astype(np.float32))])
            results.append((p, opt.state[0]["exp_avg"], opt.state[0]["exp_avg_sq"]))
    finally:
        fo.set_num_threads(before)
    for r in results[1:]:
        for x, y in zip(results[0], r):
            np.testing.assert_array_equal(x, y)


def test_duplicates_are_summed_in_their_order_and_only_touched_rows_change():
    p = np.ones((6, 2))
    q = p.copy()
    idx = np.array([4, 1, 4, 4], np.int64)
    vals = np.array([[1e16, 1.0], [2.0, 2.0], [1.0, -1e16], [-1e16, 3.0]])
    opt = fo.SparseAdam([p])
    opt.step([SparseGrad(idx, vals)])
    coalesced = fo.SparseAdam([q])
    # row 4 summed left to right: (1e16 + 1) - 1e16 = 0 (not 1), (1 - 1e16) + 3 = -1e16 + 4
    s4 = [(1e16 + 1.0) + -1e16, (1.0 + -1e16) + 3.0]
    coalesced.step([SparseGrad(np.array([1, 4], np.int64), np.array([[2.0, 2.0], s4]))])
    np.testing.assert_array_equal(p, q)
    untouched = [0, 2, 3, 5]
    assert (p[untouched] == 1.0).all() and (opt.state[0]["exp_avg"][untouched] == 0).all()


def test_empty_index_set_counts_the_step_and_changes_nothing():
    rng = np.random.default_rng(0)
    p = rng.standard_normal((5, 3))
    opt = fo.SparseAdam([p])
    opt.step([SparseGrad(np.array([2], np.int64), np.ones((1, 3)))])
    snap = (p.copy(), opt.state[0]["exp_avg"].copy(), opt.state[0]["exp_avg_sq"].copy())
    opt.step([SparseGrad(np.zeros(0, np.int64), np.zeros((0, 3)))])
    assert opt.state[0]["step"] == 2
    for x, y in zip(snap, (p, opt.state[0]["exp_avg"], opt.state[0]["exp_avg_sq"])):
        np.testing.assert_array_equal(x, y)


def test_functional_entry_matches_the_class():
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(s) for s in SHAPES]
    a = [p.copy() for p in params]
    opt = fo.SparseAdam(a, lr=0.01, betas=(0.8, 0.99), eps=1e-7, maximize=True)
    b = [p.copy() for p in params]
    ms, vs, steps = [np.zeros_like(p) for p in b], [np.zeros_like(p) for p in b], [0] * 3
    r = [p.copy() for p in params]
    rms, rvs, rsteps = [np.zeros_like(p) for p in r], [np.zeros_like(p) for p in r], [0] * 3
    for _ in range(20):
        grads = [_grad(rng, p) for p in params]
        opt.step(grads)
        kw = dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-7, maximize=True)
        fo.functional.sparse_adam(b, grads, ms, vs, steps, **kw)
        fo.reference.sparse_adam(r, grads, rms, rvs, rsteps, **kw)
    for i in range(3):
        np.testing.assert_array_equal(a[i], b[i])
        np.testing.assert_array_equal(a[i], r[i])
        if i in opt.state:
            assert steps[i] == rsteps[i] == opt.state[i]["step"]
            np.testing.assert_array_equal(ms[i], opt.state[i]["exp_avg"])
            np.testing.assert_array_equal(vs[i], opt.state[i]["exp_avg_sq"])


def test_state_dict_round_trip():
    rng = np.random.default_rng(5)
    params = {"emb": rng.standard_normal((30, 4)), "bias": rng.standard_normal(7)}
    a = {k: v.copy() for k, v in params.items()}
    b = {k: v.copy() for k, v in params.items()}
    opt = fo.SparseAdam([{"params": {"emb": a["emb"]}}, {"params": {"bias": a["bias"]},
                                                         "lr": 0.05}])
    for _ in range(10):
        opt.step({k: _grad(rng, params[k]) for k in params})
    sd = opt.state_dict()
    other = fo.SparseAdam([{"params": {"emb": b["emb"]}}, {"params": {"bias": b["bias"]}}])
    for k in a:
        b[k][...] = a[k]
    other.load_state_dict(sd)
    assert other.param_groups[1]["lr"] == 0.05
    for _ in range(10):
        grads = {k: _grad(rng, params[k]) for k in params}
        opt.step(grads)
        other.step(grads)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # the checkpoint holds copies
    assert not np.shares_memory(sd["state"][0]["exp_avg"], opt.state[0]["exp_avg"])


def _snapshot(opt, params):
    return ([p.copy() for p in params],
            {i: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
             for i, st in opt.state.items()})


def _assert_unchanged(opt, params, snap):
    ps, states = snap
    for p, q in zip(params, ps):
        np.testing.assert_array_equal(p, q)
    assert set(opt.state) == set(states)
    for i, st in states.items():
        for k, v in st.items():
            np.testing.assert_array_equal(opt.state[i][k], v)


def _bad_grads(params, state):
    emb = params[0]
    ok = SparseGrad(np.array([1], np.int64), np.ones((1, 4)))
    return [
        ([SparseGrad(np.array([0, 10], np.int64), np.ones((2, 4))), None],
         ValueError, r"grads\[0\]\.indices holds 10, out of range .* \[0, 10\)"),
        ([SparseGrad(np.array([-1], np.int64), np.ones((1, 4))), None],
         ValueError, r"grads\[0\]\.indices holds -1"),
        ([SparseGrad(np.array([1], np.int32), np.ones((1, 4))), None],
         TypeError, r"grads\[0\]\.indices has dtype int32; it must be int64"),
        ([SparseGrad(np.array([1.0]), np.ones((1, 4))), None],
         TypeError, r"grads\[0\]\.indices has dtype float64"),
        ([SparseGrad(np.array([1], ">i8"), np.ones((1, 4))), None],
         TypeError, r"indices has dtype >i8"),
        ([SparseGrad([1], np.ones((1, 4))), None], TypeError, r"indices must be an int64 nd"),
        ([SparseGrad(np.array([[1]], np.int64), np.ones((1, 4))), None],
         ValueError, r"indices has shape \(1, 1\); it must be 1-D"),
        ([SparseGrad(np.array([1], np.int64), np.ones((1, 5))), None],
         ValueError, r"grads\[0\]\.values has shape \(1, 5\); it must be .* \(1, 4\)"),
        ([SparseGrad(np.array([1, 2], np.int64), np.ones((1, 4))), None],
         ValueError, r"values has shape \(1, 4\); .* \(2, 4\)"),
        ([SparseGrad(np.array([1], np.int64), np.ones((1, 4), np.float32)), None],
         TypeError, r"grads\[0\]\.values has dtype float32; it must be its param's float64"),
        ([SparseGrad(np.array([1, 2], np.int64), np.ones((4, 2)).T), None],
         ValueError, r"values is not C-contiguous"),
        ([SparseGrad(np.array([1], np.int64), emb[2:3]), None],
         ValueError, r"grads\[0\] shares memory with params\[0\]"),
        ([SparseGrad(np.array([1], np.int64), state["exp_avg"][:1]), None],
         ValueError, r"grads\[0\] shares memory with the state of params\[0\]"),
        ([np.ones((10, 3)), None], ValueError, r"grads\[0\]"),
        ([(np.array([1]), np.ones((1, 4))), None], TypeError, r"grads\[0\] must be a fusedopt"),
        ([ok], ValueError, r"grads must be a list with one .* \(2\)"),
        # a valid grad first: the second's error must still leave the first unapplied
        ([ok, SparseGrad(np.array([5], np.int64), np.ones(1))], ValueError,
         r"grads\[1\]\.indices holds 5, out of range for a param of 3 rows"),
    ]


def test_bad_grads_are_refused_and_nothing_is_modified():
    rng = np.random.default_rng(0)
    params = [rng.standard_normal((10, 4)), rng.standard_normal(3)]
    opt = fo.SparseAdam(params)
    opt.step([SparseGrad(np.array([0, 3], np.int64), np.ones((2, 4))), np.ones(3)])
    for grads, exc, msg in _bad_grads(params, opt.state[0]):
        snap = _snapshot(opt, params)
        with pytest.raises(exc, match=msg):
            opt.step(grads)
        _assert_unchanged(opt, params, snap)


@pytest.mark.parametrize("kw, exc, msg", [
    (dict(lr=0.0), ValueError, r"lr must be a finite number > 0, got 0\.0"),
    (dict(lr=-1e-3), ValueError, r"lr must be"), (dict(lr=float("nan")), ValueError, "lr"),
    (dict(lr="0.1"), TypeError, "lr must be a real number"),
    (dict(eps=0.0), ValueError, r"eps must be a finite number > 0"),
    (dict(betas=(1.0, 0.9)), ValueError, r"betas\[0\] must be in \[0, 1\), got 1\.0"),
    (dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
    (dict(betas=(0.9,)), ValueError, r"betas must be a pair"),
    (dict(maximize="yes"), TypeError, r"maximize must be True or False"),
])
def test_bad_hyperparameters(kw, exc, msg):
    p = np.zeros((3, 2))
    with pytest.raises(exc, match=msg):
        fo.SparseAdam([p], **kw)
    # the same value set on a group later is refused at the step, before anything is written
    opt = fo.SparseAdam([p])
    key = next(iter(kw))
    opt.param_groups[0][key] = kw[key]
    with pytest.raises(exc, match=msg):
        opt.step([SparseGrad(np.array([1], np.int64), np.ones((1, 2)))])
    assert (p == 0).all() and opt.state == {}
    if "betas" in kw and len(kw["betas"]) != 2:
        return                              # the functional call takes beta1 and beta2
    fkw = {k: v for k, v in kw.items() if k != "betas"}
    if "betas" in kw:
        fkw["beta1"], fkw["beta2"] = kw["betas"]
    with pytest.raises(exc, match=msg.replace(r"betas\[0\]", "beta1").replace(
            r"betas\[1\]", "beta2")):
        fo.functional.sparse_adam([p], [np.ones((3, 2))], [np.zeros((3, 2))],
                                  [np.zeros((3, 2))], [0], **fkw)
    assert (p == 0).all()


@pytest.mark.parametrize("params, exc, msg", [
    ([np.zeros(())], ValueError, r"params\[0\] is 0-d"),
    ([np.zeros(3, np.float16)], TypeError, r"params\[0\] has dtype float16"),
    ([np.zeros((4, 2))[:, 0]], ValueError, r"params\[0\]"),
    ([np.zeros(3), np.zeros(3, np.float32)], TypeError, "mixed dtypes"),
    (lambda a=np.zeros((4, 2)): [a, a[1:]], ValueError, r"params\[0\] and params\[1\] share"),
])
def test_bad_params(params, exc, msg):
    params = params() if callable(params) else params
    with pytest.raises(exc, match=msg):
        fo.SparseAdam(params)


def test_bad_functional_lists_modify_nothing():
    p = np.zeros((3, 2))
    g = [SparseGrad(np.array([1], np.int64), np.ones((1, 2)))]
    m = np.zeros((3, 2))
    for lists, msg in [(([m], [np.zeros((3, 1))], [0]), r"exp_avg_sqs\[0\]"),
                       (([m], [np.zeros((3, 2))], [-1]), r"state_steps\[0\] must be"),
                       (([m], [m], [0]), r"share memory"),
                       (([m], [np.zeros((3, 2))], [0, 0]), r"state_steps must be a list")]:
        steps = lists[2]
        with pytest.raises((TypeError, ValueError), match=msg):
            fo.functional.sparse_adam([p], g, *lists)
        assert (p == 0).all() and (m == 0).all() and steps[0] in (0, -1)


def test_load_state_dict_refuses_bad_checkpoints_and_keeps_its_state():
    p = np.zeros((4, 2))
    opt = fo.SparseAdam([p])
    opt.step([SparseGrad(np.array([1], np.int64), np.ones((1, 2)))])
    good = opt.state_dict()
    for edit, msg in [(lambda sd: sd["state"][0].update(step=-1), r"\['step'\] must be"),
                      (lambda sd: sd["state"][0].update(exp_avg=np.zeros((4, 3))),
                       r"\['exp_avg'\] has shape \(4, 3\)"),
                      (lambda sd: sd["state"][0].pop("exp_avg_sq"), "keeps exactly"),
                      (lambda sd: sd["param_groups"][0].update(lr=-1.0), "lr must be"),
                      (lambda sd: sd["param_groups"].append({}), "2 param groups")]:
        sd = opt.state_dict()
        edit(sd)
        with pytest.raises((TypeError, ValueError), match=msg):
            opt.load_state_dict(sd)
        after = opt.state_dict()
        assert after["param_groups"] == good["param_groups"]
        np.testing.assert_array_equal(after["state"][0]["exp_avg"], good["state"][0]["exp_avg"])
        assert after["state"][0]["step"] == 1


def _numpy_row_table(idx):
    """The row table from its definition, the slow way: head = the index at its first
    occurrence (-1 at a repeat), nxt = the next position holding the same index (-1)."""
    n = len(idx)
    head, nxt = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    seen = {}
    for j, k in enumerate(idx.tolist()):
        if k in seen:
            nxt[seen[k]] = j
        else:
            head[j] = k
        seen[k] = j
    return np.concatenate([head, nxt])


@pytest.mark.parametrize("case", ["empty", "one", "sorted", "sorted_dups", "unsorted",
                                  "dups", "collide"])
def test_row_table_matches_its_definition(case):
    from fusedoptim.optim.sparse_adam import row_table
    rng = np.random.default_rng(1)
    rows = 1 << 40
    idx = {"empty": np.zeros(0, np.int64), "one": np.array([7]),
           "sorted": np.sort(rng.choice(5000, 700, replace=False)),
           "sorted_dups": np.sort(rng.integers(0, 300, 700)),
           "unsorted": rng.choice(5000, 700, replace=False),
           "dups": rng.integers(0, 300, 2000),
           # multiples of 2^34 (and 0, rows - 1): keys that differ only in high bits
           "collide": np.concatenate([np.arange(64) << 34, [0, rows - 1, 5 << 34]])[::-1]
           }[case].astype(np.int64)
    np.testing.assert_array_equal(row_table(idx, rows), _numpy_row_table(idx))
    for bad in ([-1], [rows], [0, 1, rows + 5], [3, 2, -(1 << 62)]):
        assert row_table(np.array(list(idx[:3]) + bad, np.int64), rows) is None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_wide_rows_with_duplicates_and_strided_indices_match_the_twin(dtype):
    # rows of 300 elements: a duplicated row is summed in tiles of 256 columns; indices
    # given as a strided view
    rng = np.random.default_rng(5)
    p = rng.standard_normal((40, 3, 100)).astype(dtype)
    a, b = p.copy(), p.copy()
    fused, ref = fo.SparseAdam([a], lr=0.01), fo.reference.SparseAdam([b], lr=0.01)
    for _ in range(5):
        idx = rng.integers(0, 40, 120).astype(np.int64)[::2]
        g = SparseGrad(idx, rng.standard_normal((60, 3, 100)).astype(dtype))
        fused.step([g])
        ref.step([g])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fused.state[0]["exp_avg_sq"], ref.state[0]["exp_avg_sq"])


def test_kept_plans_tables_and_hyperparameters_follow_every_change():
    # nnz fixed, so the plan, the row tables, the checked hyperparameters and the write
    # index are reused between steps; each of them must follow what changes: new values
    # arrays (or the same one refilled), lr set between steps, betas as a list mutated in
    # place, a dense grad in between, a checkpoint loaded mid-run, a group added. The oracle
    # is the reference functional form with its own state and the hyperparameters spelled
    # out (the class's twin shares the class's step logic, caches included).
    rng = np.random.default_rng(11)
    shapes = [(50, 6), (30,)]
    params = [rng.standard_normal(s) for s in shapes]
    a, b = [p.copy() for p in params], [p.copy() for p in params]
    fused = fo.SparseAdam(a, lr=0.01)
    ms, vs, steps = [np.zeros_like(p) for p in b], [np.zeros_like(p) for p in b], [0, 0]
    hyper = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)
    reused = np.zeros((40, 6))
    for k in range(24):
        grads = []
        for p in params:
            # param 0 at steps 4 and 6: as many indices as rows, the dense grad's size
            nnz = 50 if p.ndim == 2 and k in (4, 6) else 40
            idx = rng.integers(0, p.shape[0], nnz).astype(np.int64)
            vals = rng.standard_normal((nnz,) + p.shape[1:])
            if p.ndim == 2 and k % 2 and nnz == 40:
                reused[...] = vals
                vals = reused
            grads.append(SparseGrad(idx, vals))
        if k == 5:
            grads[0] = rng.standard_normal(shapes[0])
        if k == 8:
            fused.param_groups[0]["lr"] = hyper["lr"] = 0.003
        if k == 11:
            fused.param_groups[0]["betas"] = [0.5, 0.9]
            hyper.update(beta1=0.5, beta2=0.9)
        if k == 12:
            fused.param_groups[0]["betas"][0] = hyper["beta1"] = 0.7
        if k == 14:
            # new state buffers (copies): a kept plan must not go on writing the old ones
            old = fused.state[0]["exp_avg"]
            fused.load_state_dict(fused.state_dict())
            assert fused.state[0]["exp_avg"] is not old
        if k in (3, 14):
            if k == 3:      # a state buffer replaced in place of the live state
                fused.state[0]["exp_avg"] = fused.state[0]["exp_avg"].copy()
                ms[0] = ms[0].copy()
            # the new buffers are known as written: values inside one are refused
            for i, key in ((0, "exp_avg"), (1, "exp_avg_sq")):
                buf = fused.state[i][key]
                bad = list(grads)
                bad[i] = SparseGrad(np.arange(buf.shape[0], dtype=np.int64), buf)
                with pytest.raises(ValueError, match="shares memory with the state"):
                    fused.step(bad)
        if k == 17:
            extra = rng.standard_normal((20, 2))
            fused.add_param_group({"params": [extra.copy()], "lr": 0.02})
            b.append(extra.copy())
            ms.append(np.zeros_like(extra))
            vs.append(np.zeros_like(extra))
            steps.append(0)
        if k >= 17:
            grads.append(SparseGrad(rng.integers(0, 20, 40).astype(np.int64),
                                    rng.standard_normal((40, 2))))
        fused.step(grads)
        n = 2
        fo.reference.sparse_adam(b[:n], grads[:n], ms[:n], vs[:n], steps, **hyper)
        if k >= 17:
            tail = steps[n:]
            fo.reference.sparse_adam(b[n:], grads[n:], ms[n:], vs[n:], tail,
                                     lr=0.02)      # the new group: the defaults but lr
            steps[n:] = tail
        ours = a + fused.param_groups[-1]["params"] if k >= 17 else a
        for x, y in zip(ours, b):
            np.testing.assert_array_equal(x, y)
    for i, (m, v) in enumerate(zip(ms, vs)):
        np.testing.assert_array_equal(fused.state[i]["exp_avg"], m)
        np.testing.assert_array_equal(fused.state[i]["exp_avg_sq"], v)


def test_plan_rebase_refuses_arrays_that_do_not_fit():
    from fusedoptim import _kernels
    p = np.zeros((4, 3), np.float32)
    plan = _kernels.Plan([p], [None], 0, 1, ["p"])
    for bad in (np.zeros((4, 3)), np.zeros((5, 3), np.float32),
                np.zeros((3, 4), np.float32).T, [np.zeros((4, 3), np.float32)]):
        with pytest.raises(ValueError, match="rebase: array 0 must be"):
            plan.rebase([bad])
    with pytest.raises(ValueError, match="expected 1 arrays"):
        plan.rebase([])
    q = np.ones(12, np.float32)
    plan.rebase([q])
    assert plan.params[0] is q
