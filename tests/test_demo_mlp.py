"""The demo's hand-written math: MLP backward pass, 2-D test-function gradients, schedules, data.

Every analytic derivative is checked against central finite differences in float64.
Tolerance: rtol=1e-5, atol=1e-8 (central differences with h=1e-6 are accurate to about 1e-9 here;
a wrong term in a derivative is off by far more).
"""

import math
import zlib

import numpy as np
import pytest

from fusedoptim.demo import DemoError
from fusedoptim.demo.compare import lr_trace
from fusedoptim.demo.data import check_arrays, load_dataset, load_npz, make_spirals
from fusedoptim.demo.landscape import FUNCTIONS
from fusedoptim.demo.mlp import ACTIVATIONS, LOSSES, MLP, OUTPUTS

FD_STEP = 1e-6
RTOL, ATOL = 1e-5, 1e-8


def _numeric_grad(fn, params):
    grads = {}
    for name, p in params.items():
        g = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + FD_STEP
            up = fn()
            p[i] = old - FD_STEP
            down = fn()
            p[i] = old
            g[i] = (up - down) / (2 * FD_STEP)
        grads[name] = g
    return grads


def _batch(rng, n, d, k, loss):
    X = rng.normal(size=(n, d))
    labels = rng.integers(0, k, size=n)
    Y = np.eye(k)[labels]
    if loss == "bce":
        Y = rng.uniform(0.05, 0.95, size=(n, k))  # soft targets exercise both log terms
    return X, Y


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backward_matches_finite_differences(activation, output, loss):
    rng = np.random.default_rng(zlib.crc32(f"{activation}-{output}-{loss}".encode()))
    # Two hidden layers so the chain rule through a hidden activation is exercised twice;
    # elu_alpha != 1 makes the ELU derivative's alpha term matter.
    model = MLP([3, 5, 4, 3], activation, output, loss, elu_alpha=0.7, dtype=np.float64)
    params = model.init_params(seed=1)
    for name in params:  # non-zero biases, so no pre-activation sits exactly on ReLU's kink
        if name.startswith("b"):
            params[name] += rng.normal(scale=0.3, size=params[name].shape)
    X, Y = _batch(rng, 6, 3, 3, loss)
    loss_value, grads = model.loss_and_grad(params, X, Y)
    assert loss_value == pytest.approx(model.loss(params, X, Y), rel=1e-12)
    numeric = _numeric_grad(lambda: model.loss(params, X, Y), params)
    assert grads.keys() == params.keys()
    for name in params:
        np.testing.assert_allclose(grads[name], numeric[name], rtol=RTOL, atol=ATOL, err_msg=name)


def test_gradients_have_the_layout_the_optimizers_need():
    model = MLP([4, 8, 3], dtype=np.float32)
    params = model.init_params(0)
    X = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    _, grads = model.loss_and_grad(params, X, np.eye(3, dtype=np.float32)[np.arange(10) % 3])
    for name, p in params.items():
        g = grads[name]
        assert g.shape == p.shape and g.dtype == np.float32 and g.flags.c_contiguous, name
        assert p.dtype == np.float32 and p.flags.c_contiguous, name


def test_loss_values_match_their_textbook_formulas():
    model = MLP([2, 3], activation="tanh", output="softmax", loss="cce", dtype=np.float64)
    params = model.init_params(0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 2))
    Y = np.eye(3)[[0, 1, 2, 1, 0]]
    z = X @ params["W1"] + params["b1"]
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    assert model.loss(params, X, Y) == pytest.approx(-np.sum(Y * np.log(p)) / 5, rel=1e-12)
    for loss, expected in [("mse", np.mean((p - Y) ** 2)), ("mae", np.mean(np.abs(p - Y)))]:
        model.loss_name = loss
        assert model.loss(params, X, Y) == pytest.approx(expected, rel=1e-12)
    model.output, model.loss_name = "sigmoid", "bce"
    s = 1 / (1 + np.exp(-z))
    bce = -np.mean(Y * np.log(s) + (1 - Y) * np.log(1 - s))
    assert model.loss(params, X, Y) == pytest.approx(bce, rel=1e-12)


def test_extreme_logits_stay_finite():
    model = MLP([1, 2], output="sigmoid", loss="bce", dtype=np.float32)
    params = {"W1": np.array([[500.0, -500.0]], np.float32), "b1": np.zeros(2, np.float32)}
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # underflow is harmless
        loss, grads = model.loss_and_grad(params, np.ones((2, 1), np.float32),
                                          np.array([[0, 1], [1, 0]], np.float32))
    assert math.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_test_function_gradients(name):
    fn = FUNCTIONS[name]
    rng = np.random.default_rng(3)
    for x, y in [fn.start, *rng.uniform(-1.5, 1.5, size=(5, 2))]:
        gx, gy = fn.grad(x, y)
        nx = (fn.f(x + FD_STEP, y) - fn.f(x - FD_STEP, y)) / (2 * FD_STEP)
        ny = (fn.f(x, y + FD_STEP) - fn.f(x, y - FD_STEP)) / (2 * FD_STEP)
        np.testing.assert_allclose([gx, gy], [nx, ny], rtol=RTOL, atol=1e-6)
    for mx, my in fn.minima:
        np.testing.assert_allclose(fn.grad(mx, my), [0.0, 0.0], atol=1e-12)


# ------------------------------------------------------------------------------- schedules
def _factors(name, epochs=6, steps_per_epoch=10):
    return lr_trace(name, 1.0, epochs, steps_per_epoch)


def test_schedules_have_their_defining_shapes():
    cos = _factors("cosine")
    assert cos[0] == 1.0 and cos[-1] < 0.01 and all(a >= b for a, b in zip(cos, cos[1:]))
    assert _factors("none") == [1.0] * 60
    step = _factors("step")  # 6 epochs -> a drop every 2 epochs
    assert step[0] == step[19] == 1.0
    assert step[20] == pytest.approx(0.3) and step[40] == pytest.approx(0.09)
    one = _factors("onecycle")
    assert one[0] == pytest.approx(1 / 25) and max(one) == pytest.approx(1.0)
    assert int(np.argmax(one)) == 17 and one[-1] == pytest.approx(1 / 25 / 1e4)
    warm = _factors("warmup-cosine")
    assert warm[0] == pytest.approx(1 / 6) and warm[6] == 1.0 and warm[-1] < 0.01
    assert all(a < b for a, b in zip(warm[:6], warm[1:7]))


def test_schedules_match_torch():
    """The table promises torch semantics; check the lr sequences against torch itself."""
    torch = pytest.importorskip("torch")
    epochs, spe = 6, 10
    total = epochs * spe

    def torch_lrs(make, per_epoch=False):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = make(opt)
        lrs = []
        for t in range(total):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            if not per_epoch or (t + 1) % spe == 0:
                sched.step()
        return lrs

    S = torch.optim.lr_scheduler
    expected = {
        "cosine": torch_lrs(lambda o: S.CosineAnnealingLR(o, total)),
        "step": torch_lrs(lambda o: S.StepLR(o, epochs // 3, 0.3), per_epoch=True),
        "onecycle": torch_lrs(lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=total,
                                                     cycle_momentum=False)),
        "warmup-cosine": torch_lrs(lambda o: S.SequentialLR(
            o, [S.LinearLR(o, start_factor=1 / 6, total_iters=6),
                S.CosineAnnealingLR(o, total - 6)], milestones=[6])),
    }
    for name, lrs in expected.items():
        np.testing.assert_allclose(_factors(name), lrs, rtol=1e-12, atol=1e-15, err_msg=name)


# ------------------------------------------------------------------------------- data
def test_spirals_and_split_are_fixed_by_seed():
    a = load_dataset("spirals", seed=3)
    b = load_dataset("spirals", seed=3)
    c = load_dataset("spirals", seed=4)
    np.testing.assert_array_equal(a.X_train, b.X_train)
    np.testing.assert_array_equal(a.y_val, b.y_val)
    assert not np.array_equal(a.X_train, c.X_train)
    assert len(a.X_val) == round(0.2 * 900) and a.n_outputs == 3 and a.X_train.dtype == np.float32
    # Standardised with train statistics.
    np.testing.assert_allclose(a.X_train.mean(axis=0), 0.0, atol=1e-5)
    X, y = make_spirals(n_per_class=10, seed=0)
    assert X.shape == (30, 2) and np.bincount(y).tolist() == [10, 10, 10]


def test_npz_round_trip_with_string_labels_and_images(tmp_path):
    path = tmp_path / "d.npz"
    X = np.arange(40, dtype=np.float64).reshape(10, 2, 2)  # images get flattened
    np.savez(path, X=X, y=np.array(["cat", "dog"] * 5))
    Xs, labels = load_npz(str(path))
    assert Xs.shape == (10, 4) and labels.tolist() == [0, 1] * 5
    ds = load_dataset(path=str(path), seed=0)
    assert ds.n_features == 4 and ds.n_outputs == 2 and len(ds.X_train) + len(ds.X_val) == 10


@pytest.mark.parametrize("X, y, message", [
    (np.zeros((4, 2)), np.arange(3), "X has 4 samples but y has 3"),
    (np.zeros((4, 2)), np.zeros(4), "only one class"),
    (np.full((4, 2), np.nan), np.arange(4), "NaN"),
    (np.zeros((4, 2)), np.array([0.5, 1, 0, 1]), "non-integer"),
    (np.array(["a", "b"]), np.arange(2), "numeric"),
    (np.zeros((1, 2)), np.zeros(1), "at least 2 samples"),
])
def test_bad_arrays_are_rejected(X, y, message):
    with pytest.raises(DemoError, match=message):
        check_arrays(X, y)


@pytest.mark.parametrize("half", ["bfloat16", "float16"])
def test_half_params_compute_in_float32_and_get_half_grads(half):
    import ml_dtypes

    dt = np.dtype(ml_dtypes.bfloat16) if half == "bfloat16" else np.dtype(np.float16)
    full = MLP([4, 8, 3], dtype=np.float32)
    low = MLP([4, 8, 3], dtype=np.float32, param_dtype=dt)
    p32, p16 = full.init_params(1), low.init_params(1)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10, 4)).astype(np.float32)
    Y = np.eye(3, dtype=np.float32)[np.arange(10) % 3]
    for k in p32:  # the half params are the rounded float32 ones
        assert p16[k].dtype == dt and np.array_equal(p16[k], p32[k].astype(dt))
    widened = {k: v.astype(np.float32) for k, v in p16.items()}
    loss16, g16 = low.loss_and_grad(p16, X, Y)
    loss32, g32 = full.loss_and_grad(widened, X, Y)  # float32 math at the rounded params
    assert loss16 == loss32
    for k in g32:
        assert g16[k].dtype == dt and np.array_equal(g16[k], g32[k].astype(dt))
    with pytest.raises(ValueError, match="compute in float32"):
        MLP([4, 3], dtype=np.float64, param_dtype=dt)
