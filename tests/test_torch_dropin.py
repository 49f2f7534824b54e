"""fusedoptim.torch, the torch.optim drop-in (issue 14): real training loops against torch.optim,
checkpoints both ways through torch.save files, GradScaler, schedulers, hooks, frozen params,
torch.compile, the fused clip utilities, and the refusals."""

import io
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fusedoptim as fo  # noqa: E402
import fusedoptim.torch as fot  # noqa: E402

# Every optimizer torch.optim also has, with a configuration that turns on its options
# (amsgrad, Nesterov, centered, decoupled decay...). lr is kept where the 200-step runs
# below learn without diverging, so that float32 differences stay rounding differences.
TORCH_CONFIGS = {
    "Adam": dict(lr=2e-3, amsgrad=True, weight_decay=1e-3),
    "AdamW": dict(lr=2e-3, weight_decay=0.1),
    "Adamax": dict(lr=2e-3, weight_decay=1e-3),
    "NAdam": dict(lr=2e-3, weight_decay=1e-2, decoupled_weight_decay=True),
    "RAdam": dict(lr=2e-3, weight_decay=1e-2),
    "Rprop": dict(lr=1e-3, etas=(0.4, 1.3), step_sizes=(1e-6, 1.0)),
    "ASGD": dict(lr=1e-2, t0=50.0, lambd=1e-3),
    "SGD": dict(lr=2e-2, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "Adagrad": dict(lr=2e-2, lr_decay=1e-3, weight_decay=1e-4),
    "RMSprop": dict(lr=3e-4, momentum=0.5, centered=True, weight_decay=1e-4),
    "Adadelta": dict(lr=1.0, weight_decay=1e-4),
}
NAMES = sorted(TORCH_CONFIGS)

# Stated tolerances for the loops.
# * float64: both sides compute the same rule in different operation orders, a few ulp per
#   step: rtol 1e-9 (see _close64). Measured here: at most 2e-12 after 200 steps.
# * float32: the same few ulp per step, but at 1e-7 each they are then amplified by the
#   training dynamics themselves (how much depends on the run: measured from 1e-7 for SGD up
#   to 1e-2 for RMSprop on the MLP, whose late steps divide by a shrinking centered variance).
#   No fixed bound fits every run, so each is measured against its own sensitivity: fusedoptim's
#   float32 run must be no further from torch's float32 run than 4x torch's float32 run is from
#   torch's float64 run (the same model, data and initial weights), plus 1e-6 absolute.
#   A wrong hyperparameter or a dropped scheduler step breaks it (it moves a run by far more
#   than that run's own rounding does: checked by hand with lr off by 1%).
F32_SENSITIVITY, F32_ATOL = 4.0, 1e-6


def _close64(a, b):
    """float64: rtol 1e-9, relative to each element and, for elements near zero after
    cancellation, to the tensor's scale (1e-9 of its largest magnitude)."""
    a, b = a.detach().numpy(), b.detach().numpy()
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * float(np.abs(b).max(initial=0)))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # torch's own OpenMP pool next to ours on a loaded 2-core machine spins; the tests compare
    # numbers, not speed, so torch runs on one thread here.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _seeded(build, dtype):
    """The model `build` makes from seed 0, initialised in float32 and cast to `dtype`, so
    that the float32 and float64 runs start from the same weights."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        torch.manual_seed(0)
        return build().to(dtype)
    finally:
        torch.set_default_dtype(default)


def _mlp(dtype):
    return _seeded(lambda: torch.nn.Sequential(
        torch.nn.Linear(6, 24), torch.nn.Tanh(), torch.nn.Linear(24, 12), torch.nn.Tanh(),
        torch.nn.Linear(12, 1)), dtype)


class _Transformer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        # bias=False: the attention's key bias has an exactly zero gradient (softmax ignores
        # a shift shared by all keys), so its grads are pure rounding noise, which Adam-like
        # rules turn into lr-sized steps of random sign: no two implementations could agree.
        layer = torch.nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16,
                                                 dropout=0.0, batch_first=True, bias=False)
        self.encoder = torch.nn.TransformerEncoder(layer, num_layers=2,
                                                   enable_nested_tensor=False)
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.encoder(x).mean(dim=1))


def _transformer(dtype):
    return _seeded(_Transformer, dtype)


def _data(kind, dtype):
    """Fixed random data, drawn in float64 and cast (the float32 and float64 runs of one
    model see the same data)."""
    x, y = _data64(kind)
    return x.to(dtype), y.to(dtype)


def _data64(kind):
    dtype = torch.float64
    gen = torch.Generator().manual_seed(1)
    # Label noise keeps the loss (and the grads) away from zero: near an exact fit, the steps
    # of Adam-like rules are eps-dominated noise in which rounding differences grow.
    if kind == "mlp":
        x = torch.randn(512, 6, generator=gen, dtype=dtype)
        y = torch.sin(x.sum(dim=1, keepdim=True))
    else:
        x = torch.randn(128, 4, 8, generator=gen, dtype=dtype)
        y = torch.cos(x.sum(dim=(1, 2))).unsqueeze(1)
    return x, y + 0.3 * torch.randn(y.shape, generator=gen, dtype=dtype)


def _groups(model):
    """Two param groups with different lrs, and one frozen param (in a group, no grad)."""
    params = list(model.parameters())
    params[-1].requires_grad_(False)              # the head's bias: frozen
    lr = None
    return [{"params": params[:2], "lr_scale": 0.5}, {"params": params[2:]}], lr


def _train(kind, dtype, opt_cls, kw, steps, *, use_scaler, inf_at=None, clip=0.05, lib):
    """Train `steps` steps; return the losses and the final params. torch keeps scalar state
    (step, NAdam's mu_product, ASGD's eta and mu) in its default dtype: float64 runs set it,
    so that both sides compute those in double."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype == torch.float64 else torch.float32)
    try:
        return _train_loop(kind, dtype, opt_cls, kw, steps, use_scaler=use_scaler,
                           inf_at=inf_at, clip=clip, lib=lib)
    finally:
        torch.set_default_dtype(default)


def _train_loop(kind, dtype, opt_cls, kw, steps, *, use_scaler, inf_at, clip, lib):
    model = _mlp(dtype) if kind == "mlp" else _transformer(dtype)
    x, y = _data(kind, dtype)
    groups, _ = _groups(model)
    groups = [{"params": g["params"], **({"lr": kw["lr"] * g["lr_scale"]}
                                         if "lr_scale" in g else {})} for g in groups]
    opt = opt_cls(groups, **kw)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=0.5)
    scaler = (torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=25)
              if use_scaler else None)
    clip_fn = fot.clip_grad_norm_ if lib == "fot" else torch.nn.utils.clip_grad_norm_
    losses = []
    for step in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        if step == inf_at:
            loss = loss * float("inf")            # every grad non-finite: a skipped step
        opt.zero_grad(set_to_none=bool(step % 2))  # both kinds of zero_grad
        if scaler is None:
            loss.backward()
            clip_fn(model.parameters(), clip)
            opt.step()
        else:
            scaler.scale(loss).backward()
            if step % 3 == 0:
                # unscale first (clipping needs true grads): the optimizer then gets none
                scaler.unscale_(opt)
                clip_fn(model.parameters(), clip)
            scaler.step(opt)                       # otherwise unscaled inside the kernel
            scaler.update()
        sched.step()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in model.parameters()], opt


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
@pytest.mark.parametrize("name", NAMES)
def test_training_loop_matches_torch_optim(name, kind):
    """200 steps with param groups of different lrs, a frozen param, StepLR and
    clip_grad_norm_: fot.X against torch.optim.X, in float64 and float32."""
    kw = TORCH_CONFIGS[name]
    runs = {}
    for lib, cls in (("torch", getattr(torch.optim, name)), ("fot", getattr(fot, name))):
        for dtype in (torch.float64, torch.float32):
            runs[lib, dtype] = _train(kind, dtype, cls, kw, 200, use_scaler=False, lib=lib)
    losses, params, opt = runs["fot", torch.float64]
    ref_losses, ref_params, _ = runs["torch", torch.float64]
    assert isinstance(opt, torch.optim.Optimizer)
    assert losses[-1] < losses[0]                 # it trained
    model = _mlp(torch.float64) if kind == "mlp" else _transformer(torch.float64)
    assert torch.equal(params[-1], list(model.parameters())[-1])   # the frozen param
    for a, b in zip(params, ref_params):
        _close64(a, b)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)
    for f32, t32, t64 in zip(runs["fot", torch.float32][1], runs["torch", torch.float32][1],
                             ref_params):
        sensitivity = (t32.double() - t64).abs().max().item()
        diff = (f32 - t32).abs().max().item()
        assert diff <= F32_SENSITIVITY * sensitivity + F32_ATOL, (diff, sensitivity)


@pytest.mark.parametrize("name", NAMES)
def test_grad_scaler_unscales_inside_the_step_and_skips_nonfinite_steps(name):
    """torch.amp.GradScaler("cpu") with a power-of-two scale that grows and backs off, an
    Inf step that must be skipped by both, and unscale_ + clip on every third step."""
    kw = TORCH_CONFIGS[name]
    dtype = torch.float64
    ref_losses, ref_params, ref_opt = _train("mlp", dtype, getattr(torch.optim, name), kw, 80,
                                             use_scaler=True, inf_at=37, lib="torch")
    losses, params, opt = _train("mlp", dtype, getattr(fot, name), kw, 80, use_scaler=True,
                                 inf_at=37, lib="fot")
    for a, b in zip(params, ref_params):
        _close64(a, b)
    # The skipped step changed no step count (those that keep one in torch's format).
    t_state = ref_opt.state_dict()["state"]
    f_state = opt.state_dict()["state"]
    # torch's Adagrad creates the state of every param in its constructor, the frozen one
    # included (step 0); fusedoptim creates state at a param's first step, as the others do.
    assert set(f_state) == {i for i in t_state if t_state[i].get("step", 1) != 0}
    for i in f_state:
        if "step" in t_state[i]:
            assert f_state[i]["step"].item() == t_state[i]["step"].item()


def _checkpoint_roundtrip(name, src_cls, dst_cls, dtype=torch.float64):
    """Train 15 steps with src, save through a torch.save file, load into a fresh dst on a
    copy of the model, then run 15 more steps on both: dst must continue src's trajectory."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return _roundtrip(name, src_cls, dst_cls, dtype)
    finally:
        torch.set_default_dtype(default)


def _roundtrip(name, src_cls, dst_cls, dtype):
    kw = TORCH_CONFIGS[name]
    model = _mlp(dtype)
    x, y = _data("mlp", dtype)
    opt = src_cls(model.parameters(), **kw)

    def run(m, o, n):
        for _ in range(n):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()

    run(model, opt, 15)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2 = _mlp(dtype)
    model2.load_state_dict(ckpt["model"])
    opt2 = dst_cls(model2.parameters(), **kw)
    opt2.load_state_dict(ckpt["opt"])
    run(model, opt, 15)
    run(model2, opt2, 15)
    for a, b in zip(model.parameters(), model2.parameters()):
        _close64(a, b)
    return opt, opt2


@pytest.mark.parametrize("name", NAMES)
def test_torch_checkpoint_loads_into_fot_and_continues(name):
    _checkpoint_roundtrip(name, getattr(torch.optim, name), getattr(fot, name))


@pytest.mark.parametrize("name", NAMES)
def test_fot_checkpoint_loads_into_torch_and_continues(name):
    _checkpoint_roundtrip(name, getattr(fot, name), getattr(torch.optim, name))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_has_torchs_keys_and_dtypes(name):
    kw = TORCH_CONFIGS[name]
    states = {}
    for lib, cls in (("torch", getattr(torch.optim, name)), ("fot", getattr(fot, name))):
        model = _mlp(torch.float32)
        x, y = _data("mlp", torch.float32)
        opt = cls(model.parameters(), **kw)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        states[lib] = opt.state_dict()
    t, f = states["torch"], states["fot"]
    assert set(t["state"]) == set(f["state"])
    for i in t["state"]:
        assert set(t["state"][i]) == set(f["state"][i]), (i, t["state"][i].keys())
        for k, tv in t["state"][i].items():
            fv = f["state"][i][k]
            assert isinstance(fv, torch.Tensor) and fv.dtype == tv.dtype
            assert fv.shape == tv.shape, k
    assert [g["params"] for g in t["param_groups"]] == [g["params"] for g in f["param_groups"]]


def test_state_buffers_share_memory_with_the_kernels():
    model = _mlp(torch.float32)
    x, y = _data("mlp", torch.float32)
    opt = fot.AdamW(model.parameters(), lr=1e-3)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    p = next(model.parameters())
    exp_avg = opt.state[p]["exp_avg"]
    inner = opt.fused_optimizer.state[0]["exp_avg"]
    assert exp_avg.data_ptr() == inner.ctypes.data
    before = exp_avg.clone()
    opt.step()                                   # the same grads again
    assert not torch.equal(exp_avg, before)      # the tensor we hold saw the step
    assert opt.state[p]["step"].item() == 2.0


def test_hooks_run_as_in_torch():
    model = _mlp(torch.float32)
    x, y = _data("mlp", torch.float32)
    opt = fot.SGD(model.parameters(), lr=0.1, momentum=0.9)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    opt.register_state_dict_pre_hook(lambda o: calls.append("sd_pre"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("sd_post"))
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load_pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load_post"))
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    sd = opt.state_dict()
    opt.load_state_dict(sd)
    assert calls == ["pre", "post", "sd_pre", "sd_post", "load_pre", "load_post"]
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    handle = register_optimizer_step_pre_hook(
        lambda o, a, k: calls.append("global"))
    try:
        opt.step()
    finally:
        handle.remove()
    assert calls[-3:] == ["global", "pre", "post"]


def test_step_with_closure_returns_its_loss():
    model = _mlp(torch.float64)
    x, y = _data("mlp", torch.float64)
    opt = fot.Adam(model.parameters(), lr=1e-2)
    ref = _mlp(torch.float64)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)

    def closure(m, o):
        def f():
            o.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            loss.backward()
            return loss
        return f

    for _ in range(10):
        loss = opt.step(closure(model, opt))
        ref_loss = ref_opt.step(closure(ref, ref_opt))
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    assert opt.step() is None


def test_torch_schedulers_and_swa_drive_the_fused_lr():
    """A scheduler writes group["lr"]; the next step must use it (SGD without momentum:
    each step moves the params by exactly lr * grad)."""
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = fot.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.1)
    moved = []
    for _ in range(6):
        before = p.detach().clone()
        p.grad = torch.ones(4, dtype=torch.float64)
        opt.step()
        moved.append((before - p.detach())[0].item())
        sched.step()
    np.testing.assert_allclose(moved, [1.0, 1.0, 0.1, 0.1, 0.01, 0.01], rtol=1e-12)
    swa = torch.optim.swa_utils.SWALR(opt, swa_lr=0.5, anneal_epochs=2)
    swa.step()
    p.grad = torch.ones(4, dtype=torch.float64)
    before = p.detach().clone()
    opt.step()
    assert (before - p.detach())[0].item() == pytest.approx(opt.param_groups[0]["lr"])


def test_onecycle_with_tensor_free_momentum_cycling():
    """OneCycleLR cycles betas[0] of Adam-style groups; the fused side must follow."""
    kw = dict(lr=1e-3, weight_decay=0.01)
    results = []
    for cls in (torch.optim.AdamW, fot.AdamW):
        model = _mlp(torch.float64)
        x, y = _data("mlp", torch.float64)
        opt = cls(model.parameters(), **kw)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=30)
        for _ in range(30):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            sched.step()
        results.append([q.detach().clone() for q in model.parameters()])
    for a, b in zip(*results):
        _close64(a, b)


def test_params_without_grads_and_frozen_models():
    model = _mlp(torch.float32)
    for q in list(model.parameters())[:2]:
        q.requires_grad_(False)                  # a partly frozen model, all params given
    x, y = _data("mlp", torch.float32)
    opt = fot.AdamW(model.parameters())
    frozen = [q.detach().clone() for q in model.parameters()]
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    now = list(model.parameters())
    assert torch.equal(now[0], frozen[0]) and torch.equal(now[1], frozen[1])
    assert not torch.equal(now[2], frozen[2])
    assert set(opt.state_dict()["state"]) == {2, 3, 4, 5}


def test_add_param_group_reaches_the_fused_optimizer():
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(5))
    opt = fot.SGD([a], lr=0.1)
    opt.add_param_group({"params": [b], "lr": 0.5})
    a.grad = torch.ones(3)
    b.grad = torch.ones(5)
    opt.step()
    assert torch.allclose(a, torch.full((3,), 0.9))
    assert torch.allclose(b, torch.full((5,), 0.5))
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "lr": -1.0})
    assert len(opt.param_groups) == 2 and len(opt.fused_optimizer.param_groups) == 2


def test_named_parameters_are_accepted():
    model = _mlp(torch.float32)
    opt = fot.Adam(model.named_parameters(), lr=1e-3)
    assert opt.param_groups[0]["param_names"][0] == "0.weight"
    x, y = _data("mlp", torch.float32)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    assert len(opt.state_dict()["state"]) == 6


def test_torch_compile_model_steps_its_params():
    """A compiled model's params are the model's own Parameters: the optimizer (not compiled)
    steps them, and the compiled and eager models agree."""
    dtype = torch.float64
    x, y = _data("mlp", dtype)
    eager, compiled_base = _mlp(dtype), _mlp(dtype)
    # aot_eager: dynamo graph capture and AOT autograd without a C++ compile (fast in CI)
    compiled = torch.compile(compiled_base, backend="aot_eager")
    opts = [fot.AdamW(eager.parameters(), lr=1e-2), fot.AdamW(compiled.parameters(), lr=1e-2)]
    for _ in range(10):
        for m, o in zip((eager, compiled), opts):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    for a, b in zip(eager.parameters(), compiled_base.parameters()):
        _close64(a, b)
    assert not torch.equal(next(eager.parameters()), next(_mlp(dtype).parameters()))


# ---------------------------------------------------------------------------- low precision
def test_bfloat16_model_uses_float32_master_weights():
    model = _mlp(torch.bfloat16)
    x, y = _data("mlp", torch.bfloat16)
    opt = fot.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x).float(), y.float())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    p = next(model.parameters())
    st = opt.state[p]
    assert st["master_param"].dtype == torch.float32
    assert st["exp_avg"].dtype == torch.float32
    # the bfloat16 param is its master copy rounded to nearest even, bitwise
    assert torch.equal(st["master_param"].to(torch.bfloat16), p.detach())
    # a torch bfloat16 checkpoint (no master copy, bfloat16 moments) loads: the master
    # copy starts from the param
    ref_model = _mlp(torch.bfloat16)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)
    opt.zero_grad()
    ref.zero_grad()
    torch.nn.functional.mse_loss(ref_model(x).float(), y.float()).backward()
    ref.step()
    opt2 = fot.AdamW(ref_model.parameters(), lr=1e-2)
    opt2.load_state_dict(ref.state_dict())
    q = next(ref_model.parameters())
    assert torch.equal(opt2.state[q]["master_param"], q.detach().float())
    assert torch.equal(opt2.state[q]["exp_avg"], ref.state[q]["exp_avg"].float())


def test_int8_state_through_the_drop_in():
    model = torch.nn.Linear(128, 64)
    opt = fot.AdamW(model.parameters(), lr=1e-3, state_dtype="int8", min_quantized_size=1024)
    x = torch.randn(32, 128)
    model(x).square().mean().backward()
    opt.step()
    st = opt.state[model.weight]
    assert st["exp_avg"].dtype == torch.uint8 and st["exp_avg_absmax"].dtype == torch.float32
    sd = opt.state_dict()
    opt2 = fot.AdamW(model.parameters(), lr=1e-3, state_dtype="int8", min_quantized_size=1024)
    opt2.load_state_dict(sd)
    assert torch.equal(opt2.state[model.weight]["exp_avg"], st["exp_avg"])


# ---------------------------------------------------------------------------- clip utilities
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
def test_clip_grad_norm_matches_torch(norm_type):
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(s, generator=gen) * 3 for s in [(7,), (30, 20), (1000,)]]
    ps = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    qs = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, q, g in zip(ps, qs, grads):
        p.grad, q.grad = g.clone(), g.clone()
    ps.append(torch.nn.Parameter(torch.zeros(3)))        # no grad: skipped
    total = fot.clip_grad_norm_(ps, 1.5, norm_type)
    ref = torch.nn.utils.clip_grad_norm_(qs, 1.5, norm_type)
    assert total.dtype == ref.dtype and total.shape == ref.shape
    # the norm is accumulated in double here, in float32 by torch
    assert total.item() == pytest.approx(ref.item(), rel=1e-6)
    for p, q in zip(ps, qs):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=2e-6, atol=1e-7)
    assert fot.clip_grad_norm_([torch.nn.Parameter(torch.zeros(2))], 1.0).item() == 0.0
    with pytest.raises(RuntimeError, match="non-finite"):
        bad = torch.nn.Parameter(torch.zeros(2))
        bad.grad = torch.tensor([1.0, float("nan")])
        fot.clip_grad_norm_([bad], 1.0, error_if_nonfinite=True)
    assert torch.isnan(bad.grad[1]) and bad.grad[0].item() == 1.0   # nothing changed


def test_clip_grad_norm_over_an_optimizers_params_shares_its_grad_views():
    """Over exactly the params of a drop-in optimizer, the clip reuses the optimizer's grad
    views (and keeps its plans while the grads stay the same tensors): new grad tensors and
    grads scaled in place between calls must still be seen."""
    model, ref = _mlp(torch.float32), _mlp(torch.float32)
    x, y = _data("mlp", torch.float32)
    opt = fot.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for step in range(6):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad(set_to_none=bool(step % 2))
            torch.nn.functional.mse_loss(m(x), y).backward()
        if step == 4:
            for q in model.parameters():
                q.grad.mul_(3.0)             # in place: the cached views see it
            for q in ref.parameters():
                q.grad.mul_(3.0)
        params = opt.param_groups[0]["params"]
        total = fot.clip_grad_norm_(params, 0.05)
        ref_total = torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 0.05)
        assert total.item() == pytest.approx(ref_total.item(), rel=1e-5)
        for q, r in zip(model.parameters(), ref.parameters()):
            np.testing.assert_allclose(q.grad.numpy(), r.grad.numpy(), rtol=1e-5, atol=1e-8)
        opt.step()
        ref_opt.step()


def test_step_hooks_and_profiler_record_the_step():
    model = _mlp(torch.float32)
    x, y = _data("mlp", torch.float32)
    opt = fot.Adam(model.parameters())
    torch.nn.functional.mse_loss(model(x), y).backward()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    names = [e.name for e in prof.events()]
    assert "Optimizer.step#Adam.step" in names


def test_clip_grad_value_matches_torch():
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(s, generator=gen) * 3 for s in [(7,), (30, 20)]]
    ps = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    qs = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, q, g in zip(ps, qs, grads):
        p.grad, q.grad = g.clone(), g.clone()
    assert fot.clip_grad_value_(ps, 0.7) is None
    torch.nn.utils.clip_grad_value_(qs, 0.7)
    for p, q in zip(ps, qs):
        assert torch.equal(p.grad, q.grad)
    with pytest.raises(ValueError, match="clip_value"):
        fot.clip_grad_value_(ps, -1.0)


# ---------------------------------------------------------------------------- refusals
def _snapshot(opt, params):
    return ([p.detach().clone() for p in params],
            {i: {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in st.items()}
             for i, st in opt.state_dict()["state"].items()})


def _assert_unchanged(opt, params, snap):
    now = _snapshot(opt, params)
    for a, b in zip(now[0], snap[0]):
        assert torch.equal(a, b)
    assert now[1].keys() == snap[1].keys()
    for i in now[1]:
        for k in now[1][i]:
            assert torch.equal(now[1][i][k], snap[1][i][k])


def _stepped_opt():
    ps = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]
    opt = fot.AdamW(ps, lr=1e-2)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    return ps, opt


# torch itself refuses a grad of another shape or device than its param, and of another dtype
# unless the param's grad_dtype is None: those the step never sees. What it lets through:
@pytest.mark.parametrize("make_grad, match", [
    (lambda p: torch.randn(p.shape, dtype=torch.float64), "float64"),
    (lambda p: torch.randn(p.shape).to(torch.int32), "dtype"),
    (lambda p: torch.randn(p.shape[::-1]).t(), "contiguous"),
    (lambda p: torch.randn(p.shape).to_sparse(), "sparse"),
], ids=["float64-grad-for-float32", "int-grad", "non-contiguous", "sparse"])
def test_bad_grads_are_refused_and_change_nothing(make_grad, match):
    ps, opt = _stepped_opt()
    snap = _snapshot(opt, ps)
    ps[1].grad = torch.randn(5)
    ps[0].grad_dtype = None                  # let torch accept a grad of another dtype
    ps[0].grad = make_grad(ps[0])
    with pytest.raises((ValueError, TypeError), match=match):
        opt.step()
    _assert_unchanged(opt, ps, snap)


def test_bad_params_are_refused():
    with pytest.raises(ValueError, match="torch.optim's fused"):
        fot.AdamW([torch.nn.Parameter(torch.zeros(3, device="meta"))])
    with pytest.raises(ValueError, match="contiguous"):
        fot.AdamW([torch.nn.Parameter(torch.zeros(4, 3)).t()])
    with pytest.raises(TypeError, match="dtype"):
        fot.AdamW([torch.zeros(3, dtype=torch.int64)])
    base = torch.zeros(10)
    with pytest.raises(ValueError, match="share memory"):
        fot.AdamW([base[:6], base[4:]])
    with pytest.raises(ValueError, match="more than one parameter group"):
        p = torch.nn.Parameter(torch.zeros(3))
        fot.AdamW([{"params": [p]}, {"params": [torch.nn.Parameter(torch.zeros(2))]}])\
            .add_param_group({"params": [p]})
    with pytest.raises(ValueError, match="lr"):
        fot.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=-1.0)
    with pytest.raises(ValueError, match="empty"):
        fot.AdamW([])
    with pytest.raises(TypeError, match="base class"):
        fot.Optimizer([torch.nn.Parameter(torch.zeros(3))])


def test_replaced_param_memory_is_refused():
    model = torch.nn.Linear(3, 2)
    opt = fot.SGD(model.parameters(), lr=0.1)
    model.weight.data = model.weight.data.clone()    # as model.to(...) would do
    model.weight.grad = torch.ones(2, 3)
    with pytest.raises(ValueError, match="other memory"):
        opt.step()


def test_bad_checkpoints_are_refused_and_change_nothing():
    ps, opt = _stepped_opt()
    snap = _snapshot(opt, ps)
    good = opt.state_dict()
    bad_shape = {"state": {0: dict(good["state"][0], exp_avg=torch.zeros(7))},
                 "param_groups": good["param_groups"]}
    bad_key = {"state": {0: dict(good["state"][0], bogus=torch.zeros(4, 3))},
               "param_groups": good["param_groups"]}
    wrong_groups = {"state": {}, "param_groups": good["param_groups"] * 2}
    bad_lr = {"state": good["state"],
              "param_groups": [dict(good["param_groups"][0], lr=-1.0)]}
    for sd, match in [(bad_shape, "shape"), (bad_key, "bogus"), (wrong_groups, "groups"),
                      (bad_lr, "lr")]:
        with pytest.raises((ValueError, TypeError), match=match):
            opt.load_state_dict(sd)
        _assert_unchanged(opt, ps, snap)
        assert opt.param_groups[0]["lr"] == 1e-2


def test_pickling_is_refused_with_the_way_out():
    _, opt = _stepped_opt()
    import pickle
    with pytest.raises(TypeError, match="state_dict"):
        pickle.dumps(opt)


def test_every_fusedoptim_optimizer_is_here_under_its_name():
    for name in fo.optim.__all__:
        if name == "SparseGrad":
            continue
        cls = getattr(fot, name)
        assert issubclass(cls, torch.optim.Optimizer) and issubclass(cls, fot.Optimizer)
        assert cls._fused_class is getattr(fo, name)
    for name in itertools.chain(NAMES, ["LAMB", "LARS", "Lion", "SignSGD", "SparseAdam",
                                        "Adafactor", "LBFGS", "Muon", "MuonWithAuxAdam"]):
        assert name in fot.__all__


# ------------------------------------------------------ the optimizers that are not spec-built
def _with_default_dtype(dtype, fn):
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return fn()
    finally:
        torch.set_default_dtype(default)


def _adafactor_params(values=None):
    """A (24, 6) matrix, a (24,) vector and a (2, 3, 4) tensor: every kind of Adafactor state."""
    torch.manual_seed(0)
    init = values or [torch.randn(24, 6), torch.randn(24), torch.randn(2, 3, 4)]
    return [torch.nn.Parameter(v.detach().clone().double()) for v in init]


def _adafactor_steps(params, opt, steps):
    w, b, k = params
    x, y = _data("mlp", torch.float64)
    for _ in range(steps):
        opt.zero_grad()
        ((torch.tanh(x @ w.t() + b).sum(1, keepdim=True) * k.sum() - y) ** 2).mean().backward()
        opt.step()


def test_adafactor_matches_torch_and_checkpoints_move_both_ways():
    def check():
        kw = dict(lr=1e-2, weight_decay=0.01)
        runs = {}
        for name, cls in (("torch", torch.optim.Adafactor), ("fot", fot.Adafactor)):
            params = _adafactor_params()
            opt = cls(params, **kw)
            _adafactor_steps(params, opt, 20)
            runs[name] = params, opt
        for a, b in zip(runs["fot"][0], runs["torch"][0]):
            _close64(a, b)
        # each side's checkpoint (through a torch.save file) into the other, 10 more steps
        for src, dst_cls in (("fot", torch.optim.Adafactor), ("torch", fot.Adafactor)):
            params, opt = runs[src]
            buf = io.BytesIO()
            torch.save(opt.state_dict(), buf)
            buf.seek(0)
            sd = torch.load(buf, weights_only=True)
            assert set(sd["state"][0]) == {"step", "row_var", "col_var"}
            assert sd["state"][0]["step"].dtype == torch.float64   # torch's scalar dtype
            twin = _adafactor_params(params)
            dst = dst_cls(twin, **kw)
            dst.load_state_dict(sd)
            _adafactor_steps(params, opt, 10)
            _adafactor_steps(twin, dst, 10)
            for a, b in zip(twin, params):
                _close64(a, b)
        return True
    assert _with_default_dtype(torch.float64, check)


def test_sparse_adam_on_a_sparse_embedding_matches_torch():
    def run(cls, steps=40):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(50, 8, sparse=True, dtype=torch.float64)
        opt = cls(emb.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(3)
        for _ in range(steps):
            idx = torch.randint(0, 50, (16,), generator=gen)   # duplicates included
            opt.zero_grad()
            emb(idx).square().sum().backward()
            opt.step()
        return emb.weight, opt

    ref, topt = run(torch.optim.SparseAdam)
    got, fopt = run(fot.SparseAdam)
    _close64(got, ref)
    tsd, fsd = topt.state_dict(), fopt.state_dict()
    assert set(tsd["state"][0]) == set(fsd["state"][0])
    assert fsd["state"][0]["step"] == tsd["state"][0]["step"]
    emb = torch.nn.Embedding(4, 3, dtype=torch.float64)        # a dense grad: refused
    opt = fot.SparseAdam(emb.parameters())
    emb(torch.tensor([1])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match="dense gradients"):
        opt.step()
    assert torch.equal(emb.weight, before)


def test_lbfgs_with_torchs_closure_matches_torch():
    def run(cls, line_search):
        x0 = torch.tensor([-1.2, 1.0, 0.5, -0.3], dtype=torch.float64)
        p = torch.nn.Parameter(x0.clone())
        opt = cls([p], lr=1, max_iter=10, history_size=5, line_search_fn=line_search)

        def closure():
            opt.zero_grad()
            loss = (100 * (p[1:] - p[:-1] ** 2) ** 2 + (1 - p[:-1]) ** 2).sum()
            loss.backward()
            return loss

        losses = [opt.step(closure).item() for _ in range(3)]
        return p, losses, opt

    for ls in (None, "strong_wolfe"):
        ref, ref_losses, topt = run(torch.optim.LBFGS, ls)
        got, losses, fopt = run(fot.LBFGS, ls)
        # 3 calls of 10 iterations on Rosenbrock: torch against itself drifts ~1e-9 here
        # (test_lbfgs compares call by call at 1e-9); the first losses are the same numbers
        np.testing.assert_allclose(losses[0], ref_losses[0], rtol=1e-12)
        np.testing.assert_allclose(got.detach().numpy(), ref.detach().numpy(), rtol=1e-6)
        assert fopt.state_dict()["state"][0]["n_iter"] == topt.state_dict()["state"][0]["n_iter"]
    with pytest.raises(RuntimeError, match="closure"):
        fopt.step()


def test_muon_and_the_hybrid_step_torch_models():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x, y = _data("mlp", torch.float32)
    hidden = [model[0].weight]
    rest = [model[0].bias, model[2].weight, model[2].bias]
    opt = fot.MuonWithAuxAdam([dict(params=hidden, use_muon=True, lr=0.02),
                               dict(params=rest, use_muon=False, lr=3e-3)])
    # the same steps through fusedoptim on NumPy views: the drop-in adds nothing to the math
    twin_model = _seeded(lambda: torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                                                    torch.nn.Linear(16, 1)), torch.float32)
    torch.manual_seed(0)
    twin_model.load_state_dict(model.state_dict())
    views = [q.detach().numpy() for q in twin_model.parameters()]
    twin = fo.MuonWithAuxAdam([dict(params=views[:1], use_muon=True, lr=0.02),
                               dict(params=views[1:], use_muon=False, lr=3e-3)])
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        twin_model.zero_grad()
        torch.nn.functional.mse_loss(twin_model(x), y).backward()
        twin.step([q.grad.numpy() for q in twin_model.parameters()])
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for a, b in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(a, b)
    assert opt.param_groups[0]["momentum"] == 0.95        # the hybrid's defaults, shown
    with pytest.raises(ValueError, match="2-D"):
        fot.Muon([torch.nn.Parameter(torch.zeros(3))])


def test_import_without_torch_says_what_to_install():
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n    import fusedoptim.torch\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert 'pip install "fusedoptim[torch]"' in out


@pytest.mark.parametrize("first", ["torch", "fusedoptim"])
def test_torch_and_the_fused_step_share_one_thread_pool(first):
    """No oversubscription: after torch's parallel matmul, a fused step on 2 threads starts
    no OpenMP threads of its own (one runtime, one pool), and the thread-count setting is
    shared. A source build links libgomp.so.1, the soname torch's copy has, so that holds in
    either import order. The manylinux wheel vendors its libgomp under a hashed name
    (auditwheel), so there it holds only with torch imported first, as docs/torch.md says;
    imported the other way round there are two runtimes, and this test checks that the
    documentation's account of it is still true."""
    import subprocess
    import sys
    second = "fusedoptim" if first == "torch" else "torch"
    code = f"""
import os, re
import {first}, {second}
import torch, fusedoptim as fo, fusedoptim.torch as fot
torch.set_num_threads(2)
a = torch.randn(512, 512)
for _ in range(3):
    torch.mm(a, a)
after_torch = len(os.listdir("/proc/self/task"))
p = torch.nn.Parameter(torch.randn(2_000_000))
p.grad = torch.randn(2_000_000)
opt = fot.AdamW([p])
for _ in range(3):
    opt.step()
torch.mm(a, a)
gomps = sorted(set(re.findall(r"/\\S*libgomp\\S*", open("/proc/self/maps").read())))
print(after_torch, len(os.listdir("/proc/self/task")), fo.get_num_threads(), *gomps)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    before, after, threads, gomps = int(out[0]), int(out[1]), int(out[2]), out[3:]
    vendored = any("fusedoptim.libs" in g for g in gomps)
    if vendored and first == "fusedoptim":
        assert after > before, out          # two runtimes, two pools: the documented case
        return
    # (with the wheel and torch first, the vendored copy is mapped too, but torch's libgomp,
    # loaded into the global scope, is the one whose symbols the kernels bind to)
    assert after == before, out
    assert threads == 2, out
