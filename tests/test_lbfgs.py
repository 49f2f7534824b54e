"""LBFGS: against torch.optim.LBFGS (trajectories, iteration and evaluation counts), against
its NumPy twin bit for bit, across thread counts, checkpoints, and bad input."""

import math

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim.optim.lbfgs import STATE_KEYS

DTYPES = [np.float32, np.float64]


# -- problems: f(x) and its gradient in float64, from params of either dtype -------------------

def rosenbrock(x):
    """The chained Rosenbrock function sum 100 (x[i+1] - x[i]^2)^2 + (1 - x[i])^2."""
    a, b = x[:-1], x[1:]
    r = b - a * a
    f = float(np.sum(100.0 * r * r + (1.0 - a) ** 2))
    g = np.zeros_like(x)
    g[:-1] = -400.0 * a * r - 2.0 * (1.0 - a)
    g[1:] += 200.0 * r
    return f, g


class LeastSquares:
    """0.5 |A x - b|^2 with A of condition number `cond` (a random rotation of a spread
    spectrum)."""

    def __init__(self, rng, m, n, cond):
        u, _ = np.linalg.qr(rng.standard_normal((m, n)))
        v, _ = np.linalg.qr(rng.standard_normal((n, n)))
        self.A = (u * np.geomspace(1.0, 1.0 / cond, n)) @ v.T
        self.b = rng.standard_normal(m)

    def __call__(self, x):
        r = self.A @ x - self.b
        return 0.5 * float(r @ r), self.A.T @ r


def split(x, shapes):
    out, at = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(x[at:at + n].reshape(s))
        at += n
    return out


class Model:
    """A problem over params of several shapes (a list, a dict or a FlatParams): the
    closure flattens them, evaluates in float64 and returns the grads in their structure."""

    def __init__(self, fn, x0, dtype, shapes, kind):
        self.fn, self.dtype, self.kind = fn, dtype, kind
        self.names = [f"w{i}" for i in range(len(shapes))]
        parts = split(np.asarray(x0, dtype), shapes)
        if kind == "flat":
            self.arena = fo.FlatParams.from_arrays(dict(zip(self.names, parts)))
            self.arrays = list(self.arena.params.values())
            self.params = self.arena
        else:
            self.arrays = [p.copy() for p in parts]
            self.params = (dict(zip(self.names, self.arrays)) if kind == "dict"
                           else self.arrays)
        self.evals = 0

    def flat(self):
        return np.concatenate([a.reshape(-1) for a in self.arrays])

    def closure(self):
        self.evals += 1
        f, g = self.fn(self.flat().astype(np.float64))
        gs = [x.astype(self.dtype) for x in split(g, [a.shape for a in self.arrays])]
        if self.kind == "flat":
            for view, x in zip(self.arena.grads.values(), gs):
                view[...] = x
            return f, self.arena.grads
        return f, dict(zip(self.names, gs)) if self.kind == "dict" else gs


def torch_run(fn, x0, dtype, kw, calls):
    """torch.optim.LBFGS on one flat tensor with the same closure values; per call: the
    params after it, its returned loss, n_iter and func_evals."""
    torch = pytest.importorskip("torch")
    xt = torch.tensor(np.asarray(x0, dtype))
    xt.requires_grad_(True)
    opt = torch.optim.LBFGS([xt], **kw)

    def closure():
        f, g = fn(xt.detach().numpy().astype(np.float64))
        xt.grad = torch.from_numpy(g.astype(dtype))
        return f

    out = []
    for _ in range(calls):
        loss = opt.step(closure)
        st = opt.state[xt]
        out.append((xt.detach().numpy().copy(), float(loss), st["n_iter"], st["func_evals"]))
    return out


def fo_run(cls, fn, x0, dtype, kw, calls, shapes=None, kind="list"):
    shapes = shapes or [(len(x0),)]
    model = Model(fn, x0, dtype, shapes, kind)
    opt = cls(model.params, **kw)
    out = []
    for _ in range(calls):
        loss = opt.step(model.closure)
        st = opt._st
        out.append((model.flat(), float(loss), st["n_iter"], st["func_evals"]))
    return out, opt, model


def random_config(rng, line_search):
    """A configuration drawn over every option."""
    kw = {"lr": float(rng.choice([1.0, 0.5, 0.2])),
          "max_iter": int(rng.choice([1, 2, 3, 5, 8])),
          "history_size": int(rng.choice([1, 2, 3, 5, 100])),
          "tolerance_grad": float(rng.choice([1e-7, 1e-5, 0.0])),
          "tolerance_change": float(rng.choice([1e-9, 1e-7, 0.0])),
          "line_search_fn": line_search}
    if rng.random() < 0.5:
        kw["max_eval"] = int(kw["max_iter"] + rng.integers(0, 4))
    if line_search:
        kw["lr"] = float(rng.choice([1.0, 0.5]))
    return kw


# -- against torch --------------------------------------------------------------------------

def to_torch_state(st, dtype):
    """fo's LBFGS state as torch keeps it: vectors as tensors, the dtype's scalars as 0-dim
    tensors (ro, al, H_diag, t: torch's are tensors), Python numbers as they are."""
    torch = pytest.importorskip("torch")

    def conv(v):
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, np.ndarray):
            return torch.from_numpy(v.copy())
        if isinstance(v, np.generic):
            return torch.tensor(v.item(), dtype=torch.float32 if dtype == np.float32
                                else torch.float64)
        return v
    return {k: conv(v) for k, v in st.items()}


def shadow_torch(fn, x0, dtype, kw, calls, rtol):
    """Step fo.LBFGS `calls` times; before each call, put torch.optim.LBFGS at fo's params
    and state (converted), make the same call, and compare: the params after it, the loss
    it returns, n_iter and func_evals. Comparing call by call from the same state keeps
    the rounding differences of earlier calls (which an ill-conditioned problem such as
    Rosenbrock's valley amplifies: torch started from x0 perturbed by 1e-16 drifts 1e-9 to
    1e-3 from itself over 25 calls) out of each comparison, while every call still runs
    torch's full algorithm (up to max_iter iterations and a line search) on both sides."""
    torch = pytest.importorskip("torch")
    x = np.array(x0, dtype)
    opt = fo.LBFGS([x], **kw)

    def closure():
        f, g = fn(x.astype(np.float64))
        return f, [g.astype(dtype)]

    xt = torch.zeros(len(x0), dtype=torch.float32 if dtype == np.float32 else torch.float64)
    xt.requires_grad_(True)
    topt = torch.optim.LBFGS([xt], **kw)

    def tclosure():
        f, g = fn(xt.detach().numpy().astype(np.float64))
        xt.grad = torch.from_numpy(g.astype(dtype))
        return f

    for k in range(calls):
        with torch.no_grad():
            xt.copy_(torch.from_numpy(x))
        topt.state[xt] = to_torch_state(opt.state_dict()["state"].get(0, {}), dtype)
        loss_t = topt.step(tclosure)
        loss = opt.step(closure)
        where = f"{kw} call {k}"
        st, tst = opt._st, topt.state[xt]
        assert (st["n_iter"], st["func_evals"]) == (tst["n_iter"], tst["func_evals"]), where
        want = xt.detach().numpy()
        np.testing.assert_allclose(x, want, rtol=rtol, atol=rtol * np.abs(want).max(),
                                   err_msg=where)
        assert loss == pytest.approx(float(loss_t), rel=rtol), where


ROSEN_X0 = np.array([-1.2, 1.0, -0.5, 0.8, 1.1, 0.3])


@pytest.mark.parametrize("line_search", [None, "strong_wolfe"])
@pytest.mark.parametrize("problem", ["rosenbrock", "least_squares"])
def test_matches_torch_float64(rng, problem, line_search):
    """float64, rtol 1e-9: 25 step(closure) calls per configuration, call by call."""
    pytest.importorskip("torch")
    for trial in range(4):
        kw = random_config(rng, line_search)
        if problem == "rosenbrock":
            n = (2, 6)[trial % 2]
            fn, x0 = rosenbrock, ROSEN_X0[:n] + 0.1 * rng.standard_normal(n)
        else:
            fn = LeastSquares(rng, 40, 30, 30.0)
            x0 = rng.standard_normal(30)
        shadow_torch(fn, x0, np.float64, kw, 25, rtol=1e-9)


@pytest.mark.parametrize("line_search", [None, "strong_wolfe"])
def test_matches_torch_float32(rng, line_search):
    """float32, rtol 1e-4, call by call on the least-squares problem. torch's float32 dot
    products accumulate in float32 (BLAS order), ours in double, so every scalar of the
    two-loop recursion (al, be, ro, H_diag, gtd) differs by up to ~1e-7 relative, and up to
    8 iterations a call compound it on a problem of condition 30 (measured worst: 2.5e-5,
    history_size=1 with 8 iterations; 74 other random configurations stayed within
    1e-5). Rosenbrock's valley is left to
    the float64 test: float32 directions there are too ill-conditioned (a y = g - g_prev of
    a few float32 ulps), and torch itself moves by 5e-3 with its dots' rounding."""
    pytest.importorskip("torch")
    for trial in range(4):
        kw = random_config(rng, line_search)
        fn = LeastSquares(rng, 40, 30, 30.0)
        shadow_torch(fn, rng.standard_normal(30), np.float32, kw, 25, rtol=1e-4)


# -- against the NumPy twin, across thread counts, layouts and checkpoints -------------------

class Separable:
    """A large cheap problem (several driver units): 0.5 sum w (x - c)^2 + 0.25 sum x^4 / n
    plus a rank-2 coupling, so directions mix every element."""

    def __init__(self, rng, n):
        self.w = rng.uniform(0.5, 5.0, n)
        self.c = rng.standard_normal(n)
        self.u = rng.standard_normal((2, n)) / math.sqrt(n)

    def __call__(self, x):
        r = x - self.c
        ux = self.u @ x
        f = 0.5 * float(np.sum(self.w * r * r)) + 0.25 * float(np.sum(x ** 4)) / x.size \
            + 0.5 * float(ux @ ux)
        return f, self.w * r + x ** 3 / x.size + self.u.T @ ux


SHAPES = [(300, 100), (7,), (3, 5), (40_000,)]     # 70022 elements: five work units


def bits(run):
    return [(x.tobytes(), loss, n, e) for x, loss, n, e in run]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("line_search", [None, "strong_wolfe"])
def test_fused_matches_twin_bitwise_on_any_thread_count(rng, dtype, line_search):
    fn = Separable(rng, 70_022)
    x0 = rng.standard_normal(70_022)
    kw = dict(lr=1.0 if line_search else 0.5, max_iter=4, history_size=3,
              line_search_fn=line_search)
    want, ref_opt, _ = fo_run(fo.reference.LBFGS, fn, x0, dtype, kw, 4, SHAPES, "list")
    assert ref_opt._st["n_iter"] >= 10             # (it did not stop early)
    before = fo.get_num_threads()
    try:
        for threads, kind in ((1, "list"), (2, "flat"), (3, "dict"), (2, "list")):
            fo.set_num_threads(threads)
            if True:
                got, opt, _ = fo_run(fo.LBFGS, fn, x0, dtype, kw, 4, SHAPES, kind)
                assert bits(got) == bits(want), (threads, kind)
                for k in ("d", "prev_flat_grad"):
                    assert opt._st[k].tobytes() == ref_opt._st[k].tobytes(), (threads, kind, k)
                assert [a.tobytes() for a in opt._st["old_dirs"]] == \
                    [a.tobytes() for a in ref_opt._st["old_dirs"]]
                assert opt._st["ro"] == ref_opt._st["ro"]
    finally:
        fo.set_num_threads(before)


def test_twin_dot_is_the_drivers_sum(rng):
    """reference.lbfgs_dot adds in the driver's order: bitwise the fused dot's."""
    from fusedoptim import _kernels
    from fusedoptim.reference import lbfgs_dot
    assert _kernels.CHUNK_ELEMENTS == 16384
    for dtype in DTYPES:
        for n in (0, 1, 31, 33, 16384, 50_001):
            x = np.asarray(rng.standard_normal(n), dtype)
            y = np.asarray(rng.standard_normal(n), dtype)
            plan = _kernels.Plan([x], [[]], 0, 1, ["x"])
            plan.bind([y])
            plan.set_scalars((1.0,))
            assert plan.reduce(_kernels.REDUCE_IDS["dot"])[1][0] == lbfgs_dot(x, y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("line_search", [None, "strong_wolfe"])
def test_state_dict_round_trip_continues_the_same_trajectory(rng, dtype, line_search):
    fn = LeastSquares(rng, 40, 30, 30.0)
    x0 = rng.standard_normal(30)
    kw = dict(max_iter=3, history_size=4, line_search_fn=line_search)
    model = Model(fn, x0, dtype, [(30,)], "list")
    opt = fo.LBFGS(model.params, **kw)
    for _ in range(3):
        opt.step(model.closure)
    sd = opt.state_dict()
    assert set(sd["state"][0]) == set(STATE_KEYS)
    assert sd["param_groups"][0]["params"] == [0]
    assert sd["state"][0]["d"] is not opt._st["d"]               # copies
    # a second optimizer from the checkpoint, on a copy of the params
    model2 = Model(fn, model.flat(), dtype, [(30,)], "list")
    opt2 = fo.LBFGS(model2.params, lr=0.3, max_iter=9)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["max_iter"] == 3
    for _ in range(4):
        assert opt.step(model.closure) == opt2.step(model2.closure)
        assert model.flat().tobytes() == model2.flat().tobytes()
    sd1, sd2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    for k in STATE_KEYS:
        a, b = sd1[k], sd2[k]
        if isinstance(a, np.ndarray):
            assert a.tobytes() == b.tobytes(), k
        elif isinstance(a, list):
            assert [x.tobytes() if isinstance(x, np.ndarray) else x for x in a] == \
                [x.tobytes() if isinstance(x, np.ndarray) else x for x in b], k
        else:
            assert a == b and type(a) is type(b), k


def test_loads_torch_state_dict(rng):
    """torch's state (tensors) loads and continues as torch continues."""
    torch = pytest.importorskip("torch")
    fn = LeastSquares(rng, 40, 30, 30.0)
    x0 = rng.standard_normal(30)
    xt = torch.tensor(x0, requires_grad=True)
    topt = torch.optim.LBFGS([xt], max_iter=3, history_size=4)

    def tclosure():
        f, g = fn(xt.detach().numpy())
        xt.grad = torch.from_numpy(g)
        return f
    for _ in range(3):
        topt.step(tclosure)
    x = xt.detach().numpy().copy()
    opt = fo.LBFGS([x])
    opt.load_state_dict(topt.state_dict())
    topt.step(tclosure)
    opt.step(lambda: (fn(x)[0], [fn(x)[1]]))
    np.testing.assert_allclose(x, xt.detach().numpy(), rtol=1e-9)


def test_none_grad_counts_zeros_and_flatparams_reads_its_buffer(rng):
    fn = LeastSquares(rng, 20, 12, 10.0)
    x0 = rng.standard_normal(12)
    shapes = [(4,), (8,)]
    # a param whose grad is None steps as if its grad were zero (torch: p.grad None)
    a, b = split(x0.copy(), shapes)
    ref_a, ref_b = a.copy(), b.copy()
    opt, ref = fo.LBFGS([a, b], max_iter=5), fo.reference.LBFGS([ref_a, ref_b], max_iter=5)

    def closure(p, q):
        return lambda: (fn(np.concatenate([p, q]))[0], [None, fn(np.concatenate([p, q]))[1][4:]])
    opt.step(closure(a, b))
    ref.step(closure(ref_a, ref_b))
    np.testing.assert_array_equal(a, x0[:4])
    assert b.tobytes() == ref_b.tobytes()
    # a FlatParams closure may return None: its grad buffer
    arena = fo.FlatParams.from_arrays({"a": x0[:4], "b": x0[4:]})
    opt = fo.LBFGS(arena, max_iter=5)

    def closure_arena():
        f, g = fn(arena.flat)
        arena.flat_grad[...] = g
        return f, None
    model = Model(fn, x0, np.float64, shapes, "list")
    twin = fo.reference.LBFGS(model.params, max_iter=5)
    for _ in range(3):
        opt.step(closure_arena)
        twin.step(model.closure)
    assert arena.flat.tobytes() == model.flat().tobytes()


def test_stops_at_once_when_the_gradient_is_small():
    x = np.array([1.0, 2.0])
    opt = fo.LBFGS([x], tolerance_grad=1e-3)
    calls = []

    def closure():
        calls.append(1)
        return np.float64(5.0), [np.array([1e-4, -1e-3])]
    assert opt.step(closure) == 5.0 and len(calls) == 1
    np.testing.assert_array_equal(x, [1.0, 2.0])
    assert opt.state_dict()["state"] == {0: {"func_evals": 1, "n_iter": 0}}


def test_defaults_are_torchs():
    opt = fo.LBFGS([np.zeros(3)])
    g = opt.param_groups[0]
    assert (g["lr"], g["max_iter"], g["max_eval"], g["tolerance_grad"], g["tolerance_change"],
            g["history_size"], g["line_search_fn"]) == (1, 20, 25, 1e-7, 1e-9, 100, None)
    assert fo.LBFGS([np.zeros(3)], max_iter=7).param_groups[0]["max_eval"] == 8


# -- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, exc, words", [
    (dict(lr=-1.0), ValueError, ["lr", "-1.0"]),
    (dict(lr=math.nan), ValueError, ["lr", "nan"]),
    (dict(lr="1"), TypeError, ["lr", "'1'"]),
    (dict(max_iter=0), ValueError, ["max_iter", "0", ">= 1"]),
    (dict(max_iter=2.5), ValueError, ["max_iter", "2.5"]),
    (dict(max_eval=0), ValueError, ["max_eval", "0"]),
    (dict(max_eval=True), ValueError, ["max_eval", "True"]),
    (dict(tolerance_grad=-1e-7), ValueError, ["tolerance_grad", "-1e-07", ">= 0"]),
    (dict(tolerance_change=math.nan), ValueError, ["tolerance_change", "nan"]),
    (dict(tolerance_change=None), TypeError, ["tolerance_change", "None"]),
    (dict(history_size=0), ValueError, ["history_size", "0"]),
    (dict(line_search_fn="wolfe"), ValueError, ["line_search_fn", "'wolfe'", "strong_wolfe"]),
])
def test_bad_arguments(kw, exc, words):
    with pytest.raises(exc) as info:
        fo.LBFGS([np.zeros(3)], **kw)
    for w in words:
        assert w in str(info.value)


def test_bad_params():
    with pytest.raises(ValueError, match="parameter groups"):
        fo.LBFGS([{"params": [np.zeros(2)]}, {"params": [np.zeros(2)]}])
    with pytest.raises(TypeError, match="float32 or float64"):
        fo.LBFGS([np.zeros(3, np.float16)])
    with pytest.raises(TypeError, match="mixed dtypes"):
        fo.LBFGS([np.zeros(3), np.zeros(3, np.float32)])
    x = np.zeros(4)
    with pytest.raises(ValueError, match="share memory"):
        fo.LBFGS([x, x])
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        fo.LBFGS([{"params": [np.zeros(2)], "momentum": 0.9}])
    with pytest.raises(ValueError, match="parameter groups"):
        fo.LBFGS([np.zeros(2)]).add_param_group({"params": [np.zeros(2)]})


def _bad_closures(p):
    g = np.ones_like(p)
    return [
        (None, TypeError, "needs a closure"),
        ("f", TypeError, "closure must be callable"),
        (lambda: 1.0, TypeError, "(loss, grads)"),
        (lambda: (1.0, g, 2), TypeError, "length 3"),
        (lambda: ("x", [g]), TypeError, "loss must be a real number"),
        (lambda: (1.0, [g, g]), ValueError, "2 grads but there are 1"),
        (lambda: (1.0, {"w": g}), TypeError, "not named"),
        (lambda: (1.0, None), TypeError, "not a FlatParams"),
        (lambda: (1.0, 5), TypeError, "got int"),
        (lambda: (1.0, [g[:-1]]), ValueError, "shape"),
        (lambda: (1.0, [g.astype(np.float32)]), TypeError, "dtype float32"),
        (lambda: (1.0, [np.ones((2, 3))[:, 0]]), ValueError, "shape"),
        (lambda: (1.0, [[1.0] * p.size]), TypeError, "numpy.ndarray"),
        (lambda: (1.0, [p]), ValueError, "shares memory"),
        (lambda: (1.0, [np.ones(2 * p.size)[::2]]), ValueError, "C-contiguous"),
    ]


@pytest.mark.parametrize("case", range(15))
def test_bad_closure_leaves_everything_unchanged(case):
    p = np.arange(3.0)
    opt = fo.LBFGS([p], line_search_fn="strong_wolfe")
    good = lambda: (float(p @ p), [2 * p])     # noqa: E731
    opt.step(good)
    before, state = p.copy(), opt.state_dict()
    closure, exc, words = _bad_closures(p)[case]
    with pytest.raises(exc) as info:
        opt.step(closure)
    assert words in str(info.value)
    assert p.tobytes() == before.tobytes()
    after = opt.state_dict()
    assert after["state"][0].keys() == state["state"][0].keys()
    for k, v in state["state"][0].items():
        w = after["state"][0][k]
        if isinstance(v, np.ndarray):
            assert v.tobytes() == w.tobytes()
        elif not isinstance(v, list):
            assert v == w


def test_bad_dict_grads_and_state_dicts():
    p = {"a": np.zeros(2), "b": np.ones(3)}
    opt = fo.LBFGS(p)
    with pytest.raises(ValueError, match=r"missing \['b'\], unexpected \['c'\]"):
        opt.step(lambda: (0.0, {"a": np.ones(2), "c": np.ones(3)}))
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        opt.load_state_dict({"state": {}})
    sd = opt.state_dict()
    sd["param_groups"][0]["history_size"] = 0
    with pytest.raises(ValueError, match="history_size"):
        opt.load_state_dict(sd)
    opt.step(lambda: (1.0, {"a": np.ones(2), "b": np.ones(3)}))
    sd = opt.state_dict()
    sd["state"][0]["d"] = np.zeros(4)
    with pytest.raises(ValueError, match=r"\['d'\] must be a float array of 5 elements"):
        opt.load_state_dict(sd)
    sd = opt.state_dict()
    sd["state"][0]["ro"] = [1.0]
    with pytest.raises(ValueError, match="as long as each other"):
        opt.load_state_dict(sd)
    sd = opt.state_dict()
    sd["state"][0]["n_iter"] = -1
    with pytest.raises(ValueError, match="n_iter"):
        opt.load_state_dict(sd)
