"""Bad input at every public entry point beyond the optimizers (tests/test_bad_input.py covers
those): schedulers, schedules, FlatParams, the gradient utilities, fusedoptim.quant,
fusedoptim.distributed's argument checks and the CLI. Each rejected call raises a clear error
naming the argument and the value (and what is accepted), and leaves everything it was given
bitwise unchanged. The sweeps take every argument from the signature, so a new argument is
swept too.
"""

import inspect
import math

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import lr_scheduler as L
from fusedoptim import schedules as S

# Values no numeric, choice, callable or flag argument accepts (with the exceptions below).
GENERIC_BAD = ["x", float("nan"), float("inf"), -1, -1.5, None, True, [1], object()]


def _rejected_is_fine(pname, default, bad):
    """The generic bad values that are in fact valid for an argument."""
    if isinstance(default, bool) and isinstance(bad, bool):
        return True                                # True for a flag
    if bad is None and default is None:
        return True                                # optional arguments
    if pname == "last_epoch" and bad == -1:
        return True                                # the default: start fresh
    if pname in ("milestones", "boundaries") and bad == [1]:
        return True
    # A schedule's values (not its lengths or rates) may be negative, as in optax.
    if pname.endswith("_value") or pname == "value":
        return (isinstance(bad, (int, float)) and not isinstance(bad, bool)
                and math.isfinite(bad))
    return False


def _label(bad):
    return "object()" if type(bad) is object else repr(bad)     # a stable test id


def _assert_names(err, pname, bad):
    msg = str(err.value)
    assert pname in msg, (pname, bad, msg)
    assert repr(bad) in msg, (pname, bad, msg)


# -- schedulers ---------------------------------------------------------------------------------

def _opt():
    a, b = np.zeros(3, np.float32), np.zeros(2, np.float32)
    return fo.SGD([{"params": [a]}, {"params": [b], "lr": 0.2}], lr=0.1, momentum=0.9)


def _groups(opt):
    """The param groups as exact text (repr keeps every bit of a float), params by identity."""
    return [{k: ([id(p) for p in v] if k == "params" else repr(v)) for k, v in g.items()}
            for g in opt.param_groups]


SCHEDULERS = {       # class -> the required arguments of a valid call
    "LambdaLR": dict(lr_lambda=lambda e: 0.9 ** e),
    "MultiplicativeLR": dict(lr_lambda=lambda e: 0.9),
    "StepLR": dict(step_size=3),
    "MultiStepLR": dict(milestones=[2, 5]),
    "ConstantLR": {},
    "LinearLR": {},
    "ExponentialLR": dict(gamma=0.9),
    "PolynomialLR": {},
    "CosineAnnealingLR": dict(T_max=10),
    "CosineAnnealingWarmRestarts": dict(T_0=5),
    "CyclicLR": dict(base_lr=0.01, max_lr=0.1),
    "OneCycleLR": dict(max_lr=0.1, total_steps=20),
    "ReduceLROnPlateau": {},
    "InverseSqrtLR": {},
    "SWALR": dict(swa_lr=0.05),
}


def test_every_scheduler_is_swept():
    combinators = {"LRScheduler", "SequentialLR", "ChainedScheduler", "WarmupLR"}
    assert set(SCHEDULERS) == set(L.__all__) - combinators


def _scheduler_cases():
    for name, base in SCHEDULERS.items():
        params = list(inspect.signature(getattr(L, name).__init__).parameters.values())[2:]
        for par in params:
            for bad in GENERIC_BAD:
                if not _rejected_is_fine(par.name, par.default, bad):
                    yield pytest.param(name, base, par.name, bad, id=f"{name}-{par.name}-{_label(bad)}")


@pytest.mark.parametrize("name,base,pname,bad", list(_scheduler_cases()))
def test_scheduler_argument_rejected_and_groups_unchanged(name, base, pname, bad):
    opt = _opt()
    before = _groups(opt)
    with pytest.raises((TypeError, ValueError)) as err:
        getattr(L, name)(opt, **{**base, pname: bad})
    _assert_names(err, pname, bad)
    assert _groups(opt) == before      # no initial_lr, momentum or lr written


def _combinator_calls():
    opt = _opt()
    a, b = L.StepLR(opt, 3), L.ExponentialLR(opt, 0.9)
    return opt, [
        (lambda: L.SequentialLR(opt, "x", [1]), "schedulers", "'x'"),
        (lambda: L.SequentialLR(opt, [a, "x"], [1]), "schedulers[1]", "str"),
        (lambda: L.SequentialLR(opt, [a, b], "x"), "milestones", "'x'"),
        (lambda: L.SequentialLR(opt, [a, b], [1.5]), "milestones", "1.5"),
        (lambda: L.SequentialLR(opt, [a, b], [2], last_epoch="x"), "last_epoch", "'x'"),
        (lambda: L.SequentialLR("x", [a, b], [2]), "optimizer", "str"),
        (lambda: L.ChainedScheduler([a, "x"]), "schedulers[1]", "str"),
        (lambda: L.ChainedScheduler([a], optimizer=_opt()), "schedulers[0]", "different"),
        (lambda: L.WarmupLR("x", 3), "scheduler", "str"),
        (lambda: L.WarmupLR(a, "x"), "warmup_steps", "'x'"),
        (lambda: L.WarmupLR(a, 3, start_factor=2.0), "start_factor", "2.0"),
        (lambda: L.WarmupLR(a, 3, start_factor=float("nan")), "start_factor", "nan"),
    ]


def test_combinator_arguments_rejected_and_groups_unchanged():
    opt, calls = _combinator_calls()
    before = _groups(opt)
    for call, name, value in calls:
        with pytest.raises((TypeError, ValueError)) as err:
            call()
        assert name in str(err.value) and value in str(err.value), str(err.value)
        assert _groups(opt) == before


def _stepped(name, **kw):
    opt = _opt()
    sched = getattr(L, name)(opt, **{**SCHEDULERS.get(name, {}), **kw})
    opt.step([np.ones(3, np.float32), np.ones(2, np.float32)])
    sched.step(0.5) if name == "ReduceLROnPlateau" else sched.step()
    return opt, sched


def _state(sched):
    return repr(sched.state_dict())


@pytest.mark.parametrize("name", ["StepLR", "CosineAnnealingWarmRestarts", "LambdaLR",
                                  "OneCycleLR", "CyclicLR"])
@pytest.mark.parametrize("epoch", ["x", -1, float("nan"), [1], None])
def test_scheduler_step_epoch_rejected_without_change(name, epoch):
    opt, sched = _stepped(name)
    before = _groups(opt), _state(sched)
    if epoch is None:      # a valid call, for contrast: it does change the state
        sched.step(None)
        assert _state(sched) != before[1]
        return
    with pytest.raises(ValueError) as err:
        sched.step(epoch)
    _assert_names(err, "epoch", epoch)
    assert (_groups(opt), _state(sched)) == before


@pytest.mark.parametrize("args,pname,bad", [
    (("x",), "metrics", "x"), (("1.5",), "metrics", "1.5"), ((None,), "metrics", None),
    (([1.0, 2.0],), "metrics", [1.0, 2.0]), ((1.0, -3), "epoch", -3),
    ((1.0, "x"), "epoch", "x"),
])
def test_plateau_step_rejected_without_change(args, pname, bad):
    opt, sched = _stepped("ReduceLROnPlateau", patience=0)
    before = _groups(opt), _state(sched)
    with pytest.raises((TypeError, ValueError)) as err:
        sched.step(*args)
    _assert_names(err, pname, bad)
    assert (_groups(opt), _state(sched)) == before
    sched.step(np.float32(2.0))           # a numpy scalar metric is fine: lr is reduced
    assert _groups(opt) != before[0]


def _edits(good):
    first = next(iter(good))
    return [
        ("not a dict", "x", "is a str"),
        ("a key missing", {k: v for k, v in good.items() if k != first}, "has keys"),
        ("an extra key", {**good, "bogus": 1}, "has keys"),
        ("a string counter", {**good, "last_epoch": "7"}, "'last_epoch'"),
        ("another group count", {**good, "base_lrs": [0.1]}, "'base_lrs'"),
    ]


@pytest.mark.parametrize("name", ["StepLR", "LambdaLR", "CyclicLR", "OneCycleLR",
                                  "ReduceLROnPlateau", "SequentialLR", "WarmupLR"])
def test_scheduler_load_state_dict_rejected_without_change(name):
    if name in ("SequentialLR", "WarmupLR"):
        opt = _opt()
        inner = L.StepLR(opt, 3)
        sched = (L.SequentialLR(opt, [inner, L.ExponentialLR(opt, 0.9)], [2])
                 if name == "SequentialLR" else L.WarmupLR(inner, 2))
        sched.step()
    else:
        opt, sched = _stepped(name)
    good = sched.state_dict()
    before = _groups(opt), _state(sched)
    for label, bad, words in _edits(good):
        if label == "another group count" and "base_lrs" not in good:
            continue
        with pytest.raises(ValueError) as err:
            sched.load_state_dict(bad)
        assert "state_dict" in str(err.value) and words in str(err.value), (label, err.value)
        assert (_groups(opt), _state(sched)) == before, label
    if name in ("SequentialLR", "WarmupLR"):     # a sub-scheduler's state is checked too
        sub_key = "_schedulers" if name == "SequentialLR" else "scheduler"
        bad = {**good}
        sub = bad[sub_key][0] if name == "SequentialLR" else bad[sub_key]
        sub = {**sub, "bogus": 1}
        bad[sub_key] = [sub, *good[sub_key][1:]] if name == "SequentialLR" else sub
        with pytest.raises(ValueError, match="has keys"):
            sched.load_state_dict(bad)
        assert (_groups(opt), _state(sched)) == before
    sched.load_state_dict(good)


# -- schedules (the functional forms) -----------------------------------------------------------

SCHEDULES = {
    "constant": dict(value=0.1), "step_decay": dict(init_value=0.1, step_size=3),
    "multistep_decay": dict(init_value=0.1, milestones=[2, 4]),
    "exponential_decay": dict(init_value=0.1, gamma=0.9),
    "cosine_decay": dict(init_value=0.1, decay_steps=10),
    "linear_decay": dict(init_value=0.1, decay_steps=10),
    "polynomial_decay": dict(init_value=0.1, decay_steps=10),
    "inverse_sqrt": dict(init_value=0.1),
    "inverse_time_decay": dict(init_value=0.1, decay_rate=0.1),
    "piecewise_constant": dict(boundaries=[3], values=[0.1, 0.01]),
    "linear_warmup": dict(peak_value=0.1, warmup_steps=5),
    "warmup_cosine_decay": dict(peak_value=0.1, warmup_steps=5, total_steps=20),
    "cosine_warm_restarts": dict(init_value=0.1, T_0=5),
    "one_cycle": dict(max_value=0.1, total_steps=20),
    "cyclic": dict(base_value=0.01, max_value=0.1),
    "join": dict(schedules=[S.constant(1.0), S.constant(2.0)], boundaries=[3]),
}


def test_every_schedule_is_swept():
    assert set(SCHEDULES) == set(S.__all__) - {"Schedule"}


def _schedule_cases():
    for name, base in SCHEDULES.items():
        for par in inspect.signature(getattr(S, name)).parameters.values():
            for bad in GENERIC_BAD:
                if not _rejected_is_fine(par.name, par.default, bad):
                    yield pytest.param(name, base, par.name, bad, id=f"{name}-{par.name}-{_label(bad)}")


@pytest.mark.parametrize("name,base,pname,bad", list(_schedule_cases()))
def test_schedule_argument_rejected(name, base, pname, bad):
    with pytest.raises((TypeError, ValueError)) as err:
        getattr(S, name)(**{**base, pname: bad})
    msg = str(err.value)
    assert pname in msg, msg
    # a list's bad entry may be named instead of the whole list ("schedules[0] ... got 1")
    assert repr(bad) in msg or (isinstance(bad, list) and repr(bad[0]) in msg), msg


# -- FlatParams ---------------------------------------------------------------------------------

@pytest.mark.parametrize("call,exc,words", [
    (lambda: fo.FlatParams({"W": (2**40, 2**40)}), ValueError,
     ["shapes['W']", "(1099511627776, 1099511627776)", "smaller shape"]),
    (lambda: fo.FlatParams({"a": (2**61,), "b": (2**61,), "c": (2**61,)}), ValueError,
     ["in all", "smaller shapes"]),
    (lambda: fo.FlatParams({"W": (2.5,)}), ValueError, ["shapes['W']", "(2.5,)", "integers"]),
    (lambda: fo.FlatParams({"W": (True,)}), ValueError, ["shapes['W']", "(True,)"]),
    (lambda: fo.FlatParams({"W": None}), ValueError, ["shapes['W']", "None"]),
    (lambda: fo.FlatParams({3: (2,)}), TypeError, ["shapes keys", "3", "str"]),
    (lambda: fo.FlatParams({"W": 2}, dtype=None), TypeError, ["dtype", "None", "np.float32"]),
    (lambda: fo.FlatParams({"W": 2}, dtype="floatx"), TypeError, ["dtype", "'floatx'"]),
    (lambda: fo.FlatParams({"W": 2}, dtype=[1]), TypeError, ["dtype", "[1]"]),
    (lambda: fo.FlatParams.from_arrays({1: np.zeros(2)}), TypeError, ["arrays keys", "1"]),
    (lambda: fo.FlatParams.from_arrays(x for x in [np.zeros(2)]), TypeError,
     ["arrays", "generator"]),
    (lambda: fo.FlatParams.from_arrays([np.zeros(2, np.float16)]), TypeError,
     ["float16", "dtype=np.float32"]),
    (lambda: fo.FlatParams.from_arrays([np.zeros(2, np.float32)], dtype=np.int8), TypeError,
     ["dtype", "int8"]),
    (lambda: fo.FlatParams.from_arrays(["a", "b"], dtype=np.float32), TypeError,
     ["arrays[0]", "<U1", "floating-point"]),
])
def test_flat_params_bad_input(call, exc, words):
    with pytest.raises(exc) as err:
        call()
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_flat_params_from_arrays_leaves_its_inputs_alone():
    src = {"W": np.arange(6, dtype=np.float64).reshape(2, 3), "b": np.ones(3, np.complex64)}
    before = {k: v.tobytes() for k, v in src.items()}
    with pytest.raises(TypeError, match=r"arrays\['b'\] has dtype complex64"):
        fo.FlatParams.from_arrays(src, dtype=np.float32)
    assert {k: v.tobytes() for k, v in src.items()} == before


# -- gradient utilities (what tests/test_grad_utils.py does not already sweep) --------------------

@pytest.mark.parametrize("call,exc,words", [
    (lambda g: fo.clip_grad_norm_([np.float32(1.0), g], 1.0), TypeError,
     ["grads[0]", "float32", "np.asarray"]),
    (lambda g: fo.clip_grad_norm_([g], np.array([1.0, 2.0])), TypeError,
     ["max_norm", "array([1., 2.])"]),
    (lambda g: fo.clip_grad_norm_([g], True), TypeError, ["max_norm", "True"]),
    (lambda g: fo.clip_grad_norm_([g], 1.0, None), TypeError, ["norm_type", "None"]),
    (lambda g: fo.clip_grad_norm_([g], 1.0, -math.inf), ValueError, ["norm_type", "-inf"]),
    (lambda g: fo.clip_grad_norm_([[g]], 1.0), TypeError, ["grads[0]", "list"]),
    (lambda g: fo.clip_grad_norm_([np.array([1.0], object)], 1.0), TypeError,
     ["grads[0]", "object"]),
    (lambda g: fo.clip_grad_value_([g], "x"), TypeError, ["clip_value", "'x'"]),
    (lambda g: fo.clip_grad_value_([g], float("nan")), ValueError, ["clip_value", "nan"]),
    (lambda g: fo.clip_grad_value_({"w": g}, np.array([1.0, 2.0])), TypeError,
     ["clip_value", "array"]),
    (lambda g: fo.global_norm(None), TypeError, ["arrays", "NoneType"]),
    (lambda g: fo.all_finite(3), TypeError, ["arrays", "int"]),
])
def test_grad_utilities_bad_input_leaves_grads_unchanged(call, exc, words):
    g = np.linspace(-3, 3, 50, dtype=np.float32)
    before = g.tobytes()
    with pytest.raises(exc) as err:
        call(g)
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    assert g.tobytes() == before


# -- fusedoptim.quant (what tests/test_quant.py does not already sweep) ---------------------------

def _quant_inputs():
    from fusedoptim import quant
    x = np.linspace(-1, 1, 300).astype(np.float32)
    codes, absmax = quant.quantize_blockwise(x)
    read_only = np.zeros(300, np.float32)
    read_only.flags.writeable = False
    return quant, x, codes, absmax, read_only


@pytest.mark.parametrize("case", [
    "x byte-swapped", "absmax byte-swapped", "out read-only", "out[1] read-only",
    "out strided", "dtype None", "dynamic_map signed", "dynamic_map bits", "n str",
])
def test_quant_bad_input_nothing_modified(case):
    quant, x, codes, absmax, read_only = _quant_inputs()
    out = np.full(300, 7.0, np.float32)
    strided = np.full(600, 7.0, np.float32)[::2]
    call, exc, words = {
        "x byte-swapped": (lambda: quant.quantize_blockwise(x.astype(">f4")), TypeError,
                           ["x", ">f4", "newbyteorder"]),
        "absmax byte-swapped": (lambda: quant.dequantize_blockwise(codes, absmax.astype(">f4"),
                                                                   out=out),
                                TypeError, ["absmax", ">f4"]),
        "out read-only": (lambda: quant.dequantize_blockwise(codes, absmax, out=read_only),
                          ValueError, ["out", "read-only", "writeable"]),
        "out[1] read-only": (lambda: quant.quantize_blockwise(
            x, out=(np.zeros(300, np.uint8), read_only[:2])), ValueError,
            ["out[1] (absmax)", "read-only"]),
        "out strided": (lambda: quant.dequantize_blockwise(codes, absmax, out=strided),
                        ValueError, ["out", "C-contiguous"]),
        "dtype None": (lambda: quant.dequantize_blockwise(codes, absmax, dtype=None), TypeError,
                       ["dtype", "None", "float32"]),
        "dynamic_map signed": (lambda: quant.dynamic_map("x"), TypeError, ["signed", "'x'"]),
        "dynamic_map bits": (lambda: quant.dynamic_map(True, "8"), ValueError, ["bits", "'8'"]),
        "n str": (lambda: quant.dequantize_blockwise(codes, absmax, n="3", out=out), TypeError,
                  ["n", "'3'"]),
    }[case]
    before = [a.tobytes() for a in (x, codes, absmax, out, strided)]
    with pytest.raises(exc) as err:
        call()
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    assert [a.tobytes() for a in (x, codes, absmax, out, strided)] == before


@pytest.mark.parametrize("bits", [8, 4])
def test_quant_block_larger_than_the_array_is_one_block(bits):
    """A huge block_size used to make the reference pad the array to the block (numpy's
    "array is too big" for 2**40); it is one block, the same as the smallest one that holds
    the whole array."""
    quant, x, *_ = _quant_inputs()
    x = x[:301] if x.size > 301 else np.concatenate([x, x[:1]])    # odd: a padding nibble
    huge = quant.quantize_blockwise(x, bits=bits, block_size=2**40)
    whole = quant.quantize_blockwise(x, bits=bits, block_size=302)
    assert huge[1].shape == (1,)
    assert huge[0].tobytes() == whole[0].tobytes() and huge[1].tobytes() == whole[1].tobytes()
    back = quant.dequantize_blockwise(*huge, bits=bits, block_size=2**40, n=x.size)
    assert back.tobytes() == quant.dequantize_blockwise(*whole, bits=bits, block_size=302,
                                                        n=x.size).tobytes()


# -- the CLI: every option of every command ------------------------------------------------------
# (argv, exit status, words the one stderr line must hold: the option and the value). The
# compare/landscape cases tests/test_demo_cli.py already has are not repeated here.

CLI_BAD = [
    ([], 2, ["fusedoptim", "command"]),
    (["nope"], 2, ["invalid choice", "'nope'"]),
    (["--bogus"], 2, ["unrecognized arguments", "--bogus"]),
    (["config", "x"], 2, ["unrecognized arguments", "x"]),
    (["inspect"], 2, ["path", "required"]),
    (["inspect", "a", "b"], 2, ["unrecognized arguments", "b"]),
    (["inspect", "/nonexistent/ckpt.safetensors"], 1, ["/nonexistent/ckpt.safetensors",
                                                       "no such file"]),
    (["inspect", "/"], 1, ["/", "directory"]),
    (["inspect", __file__], 1, [__file__, "not a readable checkpoint"]),
    (["bench", "--bogus"], 2, ["unrecognized arguments", "--bogus"]),
    (["bench", "--optimizers", "Nope"], 1, ["unknown optimizer", "Nope"]),
    (["bench", "--optimizers", ""], 1, ["--optimizers", "''"]),
    (["bench", "--sizes", "abc"], 1, ["--sizes", "'abc'", "1e5,1e6"]),
    (["bench", "--sizes", "inf"], 1, ["--sizes", "'inf'"]),
    (["bench", "--sizes", "0"], 1, ["--sizes", "'0'"]),
    (["bench", "--sizes", "1.5"], 1, ["--sizes", "'1.5'"]),
    (["bench", "--sizes", ""], 1, ["--sizes", "''"]),
    (["bench", "--dtypes", "foo"], 1, ["--dtypes", "'foo'", "float32"]),
    (["bench", "--dtypes", "int32"], 1, ["--dtypes", "'int32'", "float32"]),
    (["bench", "--threads", "x"], 1, ["--threads", "'x'", ">= 1"]),
    (["bench", "--threads", "0"], 1, ["--threads", "'0'"]),
    (["bench", "--repeat", "x"], 2, ["--repeat", "'x'"]),
    (["bench", "--repeat", "0"], 1, ["--repeat", "0", ">= 1"]),
    (["bench", "--min-time", "x"], 2, ["--min-time", "'x'"]),
    (["bench", "--min-time", "nan"], 1, ["--min-time", "nan", ">= 0"]),
    (["bench", "--min-time", "-1"], 1, ["--min-time", "-1"]),
    (["bench", "--many-tensors", "10"], 1, ["--many-tensors", "'10'", "COUNTxSIZE"]),
    (["bench", "--sparse-adam", "x"], 1, ["--sparse-adam", "'x'", "ROWSxDIM:NNZ"]),
    (["bench", "--ema", "1x"], 1, ["--ema", "'1x'", "COUNTxSIZE"]),
    (["bench", "--adafactor", "0x3"], 1, ["--adafactor", "'0x3'"]),
    (["bench", "--distributed", "--sizes", "1,2"], 1, ["--distributed", "'1,2'"]),
    (["compare", "--batch-size", "-1"], 2, ["--batch-size", "'-1'"]),
    (["compare", "--lr", "nan"], 2, ["--lr", "'nan'", "positive"]),
    (["compare", "--lr", "adamz=0.1"], 2, ["--lr", "'adamz'"]),
    (["compare", "--ema", "x"], 2, ["--ema", "'x'"]),
    (["compare", "--dataset", "x"], 2, ["--dataset", "'x'", "spirals"]),
    (["compare", "--data", "/nonexistent/d.npz", "--no-plot"], 2, ["/nonexistent/d.npz"]),
    (["compare", "--val-frac", "1"], 2, ["--val-frac", "'1'", "between 0 and 1"]),
    (["compare", "--seed", "-1"], 2, ["--seed", "'-1'"]),
    (["compare", "--hidden", "a,b"], 2, ["--hidden", "'a,b'"]),
    (["compare", "--activation", "x"], 2, ["--activation", "'x'", "relu"]),
    (["compare", "--elu-alpha", "0"], 2, ["--elu-alpha", "'0'"]),
    (["compare", "--output", "x"], 2, ["--output", "'x'", "softmax"]),
    (["compare", "--loss", "x"], 2, ["--loss", "'x'", "cce"]),
    (["compare", "--dtype", "int8"], 2, ["--dtype", "'int8'", "float32"]),
    (["compare", "--plot", "/nonexistent/dir/x.png", "--dataset", "spirals", "--quiet"], 2,
     ["--plot", "/nonexistent/dir"]),
    (["compare", "--json", "/nonexistent/dir/x.json", "--dataset", "spirals", "--no-plot"], 2,
     ["--json", "/nonexistent/dir"]),
    (["compare", "--zero", "3"], 2, ["--zero", "3"]),
    (["compare", "--zero", "1", "--no-plot"], 2, ["--zero", "--distributed"]),
    (["landscape", "--start", "nan,1", "--no-plot"], 2, ["--start", "'nan,1'"]),
    (["landscape", "--lr", "x"], 2, ["--lr", "'x'"]),
    (["landscape", "--frames", "0"], 2, ["--frames", "'0'"]),
    (["landscape", "--out", "/nonexistent/dir/x.png"], 2, ["--out", "/nonexistent/dir"]),
    (["landscape", "--animate", "x.gif", "--no-plot"], 2, ["--animate", "--no-plot"]),
    (["landscape", "--function", ""], 2, ["--function", "empty"]),
    (["landscape", "--optimizers", ""], 2, ["--optimizers", "empty"]),
]


def _run_cli(argv, capsys):
    """The package's CLI in-process, as the interpreter would end it: (status, stdout,
    stderr). SystemExit("message") prints the message and exits 1."""
    from fusedoptim.__main__ import main
    try:
        status = main(argv)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=__import__("sys").stderr)
            status = 1
        else:
            status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("argv,status,words", CLI_BAD, ids=[" ".join(a) or "(none)"
                                                          for a, _, _ in CLI_BAD])
def test_cli_bad_option_is_one_line_naming_option_and_value(argv, status, words, capsys):
    got, out, err = _run_cli(argv, capsys)
    assert got == status, (got, err)
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in out + err
    for w in words:
        assert w in err, (w, err)
    assert out == ""                     # refused before any work


def test_cli_table_covers_every_option():
    """Every option that takes a value, of every command, has a bad-value case above (or in
    tests/test_demo_cli.py for compare and landscape), so a new option needs one."""
    from fusedoptim.__main__ import build_parser
    covered = {(a[0], w) for a, _, _ in CLI_BAD if a for w in a if w.startswith("--")}
    elsewhere = {("compare", o) for o in ("--optimizers", "--epochs", "--schedule", "--data",
                                          "--precision", "--state-dtype", "--min-quantized-size")}
    elsewhere |= {("landscape", o) for o in ("--function", "--steps")}
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    missing = []
    for command, parser in sub.choices.items():
        for action in parser._actions:
            takes_value = action.nargs != 0 and action.option_strings
            for option in action.option_strings if takes_value else ():
                if option.startswith("--") and (command, option) not in covered | elsewhere:
                    missing.append((command, option))
    assert not missing


def test_cli_bad_option_in_a_real_process_has_no_traceback():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "fusedoptim", "bench", "--dtypes", "foo"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "fusedoptim bench: error: --dtypes takes a comma-separated list of float32 and/or "
        "float64, got 'foo'"]
