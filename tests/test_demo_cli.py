"""``fusedoptim compare`` and ``fusedoptim landscape`` end to end, on the real fused optimizers.

Runs are parametrised over the optimizers this build provides (the demo never fakes a missing
one), so the suite grows by itself as SGD, RMSprop, ... land.
"""

import io
import json
import subprocess
import sys

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim.demo import DEFAULT_OPTIMIZERS, OPTIMIZERS, DemoError, parse_optimizer_names
from fusedoptim.demo.cli import main
from fusedoptim.demo.compare import REF_ATOL, REF_RTOL, CompareConfig, run_compare
from fusedoptim.demo.landscape import FUNCTIONS, LandscapeConfig, run_landscape

AVAILABLE = [n for n, spec in OPTIMIZERS.items() if hasattr(fo, spec.cls)]
_REFERENCE = getattr(fo, "reference", None)
WITH_REFERENCE = [n for n in AVAILABLE if hasattr(_REFERENCE, OPTIMIZERS[n].cls)]
# landscape runs the optimizers it has tuned learning rates for on every function.
ON_LANDSCAPE = [n for n in AVAILABLE if all(n in fn.lrs for fn in FUNCTIONS.values())]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --plot/--out paths must not land in the repo


def test_this_build_has_optimizers_to_demo():
    assert AVAILABLE, "fusedoptim exposes none of the optimizers in the demo table"


def test_default_set_is_the_notes_and_all_is_every_optimizer():
    assert parse_optimizer_names(None) == (DEFAULT_OPTIMIZERS, False)
    assert parse_optimizer_names("ALL") == (list(OPTIMIZERS), False)
    assert parse_optimizer_names("adam, sgd") == (["adam", "sgd"], True)
    assert set(DEFAULT_OPTIMIZERS) <= set(OPTIMIZERS)
    assert CompareConfig().optimizers == DEFAULT_OPTIMIZERS
    assert LandscapeConfig().optimizers == DEFAULT_OPTIMIZERS
    with pytest.raises(DemoError, match="unknown optimizer 'adamz'"):
        parse_optimizer_names("adamz")


# ------------------------------------------------------------------------------ compare
@pytest.fixture(scope="module")
def spirals_run(tmp_path_factory):
    """One short spirals run for every available optimizer, through the CLI, with its JSON."""
    out = tmp_path_factory.mktemp("spirals") / "run.json"
    rc = main(["compare", "--dataset", "spirals", "--epochs", "15", "--schedule", "none",
               "--optimizers", ",".join(AVAILABLE), "--no-plot", "--quiet", "--json", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


def test_json_has_one_entry_per_optimizer(spirals_run):
    assert list(spirals_run["optimizers"]) == AVAILABLE
    for rec in spirals_run["optimizers"].values():
        assert len(rec["history"]["train_loss"]) == 16  # epoch 0 plus 15 epochs
        assert rec["step_s"] > 0 and rec["wall_s"] >= rec["step_s"]
        assert rec["steps"] == 15 * int(np.ceil(720 / 64))


@pytest.mark.parametrize("name", AVAILABLE)
def test_every_optimizer_learns_spirals(spirals_run, name):
    rec = spirals_run["optimizers"][name]
    # Every run starts from the same weights, so the same starting loss.
    first = spirals_run["optimizers"][AVAILABLE[0]]
    assert rec["initial_train_loss"] == first["initial_train_loss"]
    assert rec["status"] == "ok"
    # "Clearly below": at most 60% of the starting loss (torch-equivalent runs reach 12-51%).
    assert rec["final_train_loss"] < 0.6 * rec["initial_train_loss"]
    assert rec["final_val_acc"] > 0.40  # chance is 1/3


@pytest.mark.parametrize("name", WITH_REFERENCE)
def test_fused_and_reference_trajectories_agree(name):
    # Tolerance: |p_fused - p_ref| <= 1e-6 + 1e-4 * |p_ref| for every parameter at every epoch
    # (REF_ATOL/REF_RTOL): float32 rounding differences stay orders of magnitude inside it.
    assert (REF_RTOL, REF_ATOL) == (1e-4, 1e-6)
    cfg = CompareConfig(optimizers=[name], explicit=True, dataset="spirals", epochs=5,
                        reference=True, progress=False)
    rec = run_compare(cfg)["optimizers"][name]["reference"]
    assert rec["agree"], rec
    assert rec["allclose_ratio"] <= 1.0
    assert len(rec["history"]["max_abs_diff"]) == 6 and rec["step_s"] > 0


@pytest.mark.skipif(not WITH_REFERENCE, reason="no reference optimizer in this build")
def test_agreement_check_catches_a_wrong_reference(monkeypatch, capsys):
    name = WITH_REFERENCE[0]
    real = getattr(fo.reference, OPTIMIZERS[name].cls)

    class OffByOnePercent(real):
        def step(self, grads):
            for group in self.param_groups:
                group["lr"] *= 1.01
            return super().step(grads)

    monkeypatch.setattr(fo.reference, OPTIMIZERS[name].cls, OffByOnePercent)
    result = run_compare(CompareConfig(optimizers=[name], explicit=True, dataset="spirals",
                                       epochs=3, reference=True, progress=False))
    assert not result["optimizers"][name]["reference"]["agree"]
    assert " NO" in capsys.readouterr().out


def test_digits_default_dataset_and_png(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    png, js = tmp_path / "c.png", tmp_path / "c.json"
    rc = main(["compare", "--epochs", "2", "--optimizers", ",".join(AVAILABLE[:3]), "--quiet",
               "--plot", str(png), "--json", str(js), "--schedule", "onecycle"])
    assert rc == 0
    data = json.loads(js.read_text())
    assert data["dataset"]["n_features"] == 64 and data["dataset"]["n_outputs"] == 10
    _assert_valid_image(png)


def _assert_valid_image(path, min_size=200):
    assert path.read_bytes()[:8] == PNG_MAGIC
    from matplotlib.image import imread

    img = imread(path)
    assert img.ndim == 3 and img.shape[0] >= min_size and img.shape[1] >= min_size
    assert img[..., :3].std() > 0.05  # not a blank canvas


# ------------------------------------------------------------------------------ bad input
def _write(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


BAD_COMPARE = {
    "unknown optimizer": (lambda p: ["--optimizers", "adam,sgdd"], "unknown optimizer 'sgdd'"),
    "epochs zero": (lambda p: ["--epochs", "0"], "--epochs: must be a positive integer"),
    "epochs negative": (lambda p: ["--epochs", "-2"], "--epochs: must be a positive integer"),
    "epochs text": (lambda p: ["--epochs", "ten"], "--epochs: must be a positive integer"),
    "missing file": (lambda p: ["--data", str(p / "nope.npz")], "data file not found"),
    "not an npz": (lambda p: ["--data", str(_text(p))], "is not an .npz archive"),
    "npz without y": (lambda p: ["--data", _write(p, "a.npz", X=np.zeros((5, 2)))], "no array 'y'"),
    "mismatched X/y": (lambda p: ["--data", _write(p, "m.npz", X=np.zeros((5, 2)), y=np.arange(4))],
                       "X has 5 samples but y has 4"),
    "bad learning rate": (lambda p: ["--lr", "adam=fast"], "must be a positive number"),
    "bad schedule": (lambda p: ["--schedule", "linear"], "invalid choice"),
    "bad hidden": (lambda p: ["--hidden", "64,0"], "positive layer widths"),
    "unknown flag": (lambda p: ["--learning-rate", "3"], "unrecognized arguments"),
}


def _text(tmp_path):
    path = tmp_path / "x.npz"
    path.write_text("X,y\n1,2\n")
    return path


@pytest.mark.parametrize("case", list(BAD_COMPARE))
def test_compare_rejects_bad_input_in_one_line(case, tmp_path, capsys):
    make_args, message = BAD_COMPARE[case]
    rc = main(["compare", "--no-plot", "--quiet", *make_args(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert message in err and "Traceback" not in err + out


BAD_LANDSCAPE = {
    "unknown function": (["--function", "himmelblau"], "unknown function"),
    "bad start": (["--start", "1"], "--start must be two numbers"),
    "zero steps": (["--steps", "0"], "--steps: must be a positive integer"),
    "unknown optimizer": (["--optimizers", "adamm"], "unknown optimizer"),
    "gif suffix": (["--animate", "paths.mp4"], "ending in .gif"),
}


@pytest.mark.parametrize("case", list(BAD_LANDSCAPE))
def test_landscape_rejects_bad_input_in_one_line(case, capsys):
    args, message = BAD_LANDSCAPE[case]
    rc = main(["landscape", *args])
    out, err = capsys.readouterr()
    assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert "Traceback" not in err + out


def test_optimizer_missing_from_the_build_is_reported_not_faked(monkeypatch, capsys):
    name = AVAILABLE[0]
    monkeypatch.delattr(fo, OPTIMIZERS[name].cls)
    rc = main(["compare", "--dataset", "spirals", "--no-plot", "--optimizers", name])
    err = capsys.readouterr().err
    assert rc == 2
    cls = OPTIMIZERS[name].cls
    assert f"optimizer {name} (fusedoptim.{cls}) is not available in this build" in err
    # With the default "all", missing optimizers are skipped with a notice instead.
    if len({OPTIMIZERS[n].cls for n in AVAILABLE}) > 1:
        rc = main(["compare", "--dataset", "spirals", "--no-plot", "--epochs", "1", "--quiet"])
        assert rc == 0 and "skipping (not available in this build)" in capsys.readouterr().err


def test_python_dash_m_fusedoptim_mounts_both_commands(tmp_path):
    """The real console entry point: one-line error, exit status 2, no traceback."""
    for args, message in [(["compare", "--epochs", "0"], "--epochs"),
                          (["compare", "--data", str(tmp_path / "missing.npz"), "--no-plot"],
                           "data file not found"),
                          (["compare", "--bogus"], "unrecognized arguments: --bogus"),
                          (["landscape", "--function", "nope"], "unknown function")]:
        proc = subprocess.run([sys.executable, "-m", "fusedoptim", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
        assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------ optional deps
def _block(monkeypatch, *modules):
    for mod in modules:
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import mod` raise ImportError


def test_without_the_demo_extra_spirals_no_plot_still_works(monkeypatch, capsys):
    _block(monkeypatch, "matplotlib", "sklearn", "sklearn.datasets", "tqdm")
    rc = main(["compare", "--dataset", "spirals", "--no-plot", "--epochs", "2",
               "--optimizers", AVAILABLE[0]])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert AVAILABLE[0] in out and "val acc" in out


@pytest.mark.parametrize("args, needs", [
    (["compare"], ['"matplotlib>=3.7" "scikit-learn>=1.3"']),  # both named in one message
    (["compare", "--no-plot"], ["digits dataset", "needs scikit-learn"]),
    (["compare", "--dataset", "spirals"], ["--plot", "needs matplotlib", "--no-plot"]),
    (["landscape"], ["needs matplotlib", "--no-plot"]),
])
def test_without_the_demo_extra_the_message_says_what_to_install(monkeypatch, capsys, args, needs):
    _block(monkeypatch, "matplotlib", "sklearn", "sklearn.datasets", "tqdm")
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert 'pip install "fusedoptim[demo]"' in err
    for text in needs:
        assert text in err


# ------------------------------------------------------------------------------ landscape
@pytest.fixture(scope="module")
def landscape_paths():
    return run_landscape(LandscapeConfig(optimizers=ON_LANDSCAPE, explicit=True, out=None))


@pytest.mark.parametrize("function", list(FUNCTIONS))
def test_every_optimizer_descends_every_function(landscape_paths, function):
    fn = FUNCTIONS[function]
    f0 = fn.f(*fn.start)
    for name, run in landscape_paths[function].items():
        assert not run["diverged"], name
        assert run["steps"] == fn.steps and run["path"].shape == (fn.steps + 1, 2)
        assert run["f"] < f0 - 0.25 * abs(f0), (name, run["f"], f0)


def test_landscape_without_a_tuned_lr_skips_or_asks_for_one(monkeypatch, capsys):
    name = ON_LANDSCAPE[0]
    monkeypatch.delitem(FUNCTIONS["rosenbrock"].lrs, name)
    cfg = dict(functions=["rosenbrock"], optimizers=[name, ON_LANDSCAPE[-1]], steps=5, out=None)
    with pytest.raises(DemoError, match=f"no tuned learning rate for {name} on rosenbrock; "
                                        f"give one with --lr {name}=VALUE"):
        run_landscape(LandscapeConfig(explicit=True, **cfg))
    result = run_landscape(LandscapeConfig(explicit=False, **cfg))
    assert name not in result["rosenbrock"] and ON_LANDSCAPE[-1] in result["rosenbrock"]
    assert f"skipping {name} on rosenbrock" in capsys.readouterr().err
    result = run_landscape(LandscapeConfig(explicit=True, lr_per={name: 1e-3}, **cfg))
    assert result["rosenbrock"][name]["lr"] == 1e-3


def test_landscape_steps_the_public_class_in_place():
    # The same numbers as a hand-written loop over the public class: no special 2-D path.
    fn, name = FUNCTIONS["rosenbrock"], AVAILABLE[0]
    spec, lr = OPTIMIZERS[name], FUNCTIONS["rosenbrock"].lrs[name]
    xy = np.array(fn.start)
    opt = getattr(fo, spec.cls)({"xy": xy}, lr=lr, **spec.kwargs)
    for _ in range(25):
        opt.step({"xy": np.array(fn.grad(*xy))})
    result = run_landscape(LandscapeConfig(functions=["rosenbrock"], optimizers=[name],
                                           explicit=True, steps=25, out=None))
    np.testing.assert_array_equal(result["rosenbrock"][name]["path"][-1], xy)


def test_landscape_png_and_gif(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png, gif = tmp_path / "l.png", tmp_path / "l.gif"
    rc = main(["landscape", "--steps", "30", "--optimizers", ",".join(AVAILABLE[:3]),
               "--out", str(png), "--animate", str(gif), "--frames", "6", "--start=-1,1.5",
               "--lr", "0.05"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "rosenbrock" in out and "saddle" in out
    _assert_valid_image(png)
    from PIL import Image

    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 6


# ------------------------------------------------------------------------------ progress
class _TTY(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream_cls", [io.StringIO, _TTY], ids=["plain-lines", "tqdm-bar"])
def test_progress_shows_the_current_loss(stream_cls):
    if stream_cls is _TTY:
        pytest.importorskip("tqdm")
    err, out = stream_cls(), io.StringIO()
    run_compare(CompareConfig(optimizers=AVAILABLE[:1], explicit=True, dataset="spirals",
                              epochs=4), out=out, err=err)
    text = err.getvalue()
    assert f"[1/1] {AVAILABLE[0]}" in text and "loss " in text and "val acc" in text
    if stream_cls is _TTY:
        assert "4/4" in text and "ep/s" in text  # a tqdm bar, not plain lines
    else:
        assert "epoch   4/4" in text


# ------------------------------------------------------------------------------ precision
def _expected_state_bytes(shapes, slots, state_dtype, master):
    """What the state of AdamW's `slots` moments per param must occupy, from the documented
    layouts: float32 4 B and bfloat16 2 B per element; int8 one code byte per element plus a
    float32 absmax per 256-element block; int4 two codes a byte plus a float32 absmax per 128,
    except the second moment of a param with two dimensions of size > 1, which keeps a float32
    maximum per row and per column instead (rank-1 normalization, the default)."""
    total = 0
    for shape in shapes:
        n = int(np.prod(shape))
        dims = [d for d in shape if d != 1]
        for k in range(slots):
            if state_dtype == "int8":
                per_slot = n + 4 * -(-n // 256)
            elif state_dtype == "int4" and k == 1 and len(dims) >= 2:
                per_slot = -(-n // 2) + 4 * sum(dims)
            elif state_dtype == "int4":
                per_slot = -(-n // 2) + 4 * -(-n // 128)
            else:
                per_slot = n * {"float32": 4, "bfloat16": 2}[state_dtype]
            total += per_slot
        total += 4 * n if master else 0
    return total


def _spirals_json(tmp_path, *flags, optimizers="adamw"):
    js = tmp_path / "p.json"
    rc = main(["compare", "--dataset", "spirals", "--epochs", "2", "--no-plot", "--quiet",
               "--optimizers", optimizers, "--json", str(js), *flags])
    assert rc == 0
    return json.loads(js.read_text())


def _param_shapes(result):
    s = result["model"]["sizes"]
    return [shape for a, b in zip(s, s[1:]) for shape in ((a, b), (b,))]


def _param_sizes(result):
    return [int(np.prod(shape)) for shape in _param_shapes(result)]


@pytest.mark.parametrize("precision, state_dtype", [
    (None, None), ("bf16", None), ("fp16", "bfloat16"), ("bf16", "int8"), (None, "int4"),
    ("fp32", "int8")])
def test_state_mb_is_the_nbytes_of_every_state_buffer(tmp_path, capsys, precision, state_dtype):
    flags = ["--min-quantized-size", "0"]  # the spirals MLP has no tensor of 4096 elements
    if precision:
        flags += ["--precision", precision]
    if state_dtype:
        flags += ["--state-dtype", state_dtype]
    result = _spirals_json(tmp_path, *flags, optimizers="adamw,sgd")
    out = capsys.readouterr().out
    half = precision in ("bf16", "fp16")
    expected = _expected_state_bytes(_param_shapes(result), 2, state_dtype or "float32", half)
    rec = result["optimizers"]["adamw"]
    assert rec["state_bytes"] == expected == sum(rec["state_bytes_by_slot"].values())
    assert rec["state_mb"] == pytest.approx(expected / 1e6)
    assert ("master_param" in rec["state_bytes_by_slot"]) == half
    quantized = state_dtype in ("int8", "int4")
    assert ("exp_avg_sq_absmax" in rec["state_bytes_by_slot"]) == quantized
    # Plain SGD has no moment: only the master copy, if any.
    sgd = result["optimizers"]["sgd"]["state_bytes"]
    assert sgd == (4 * sum(_param_sizes(result)) if half else 0)
    assert "state MB" in out and f"{expected / 1e6:.4f}" in out
    assert "state MB: nbytes of every array in the optimizer state" in out
    p = result["precision"]
    assert p["master_weights"] == half and p["state_dtype"] == (
        state_dtype or "float32")
    assert p["params"] == {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")


def test_without_the_flags_the_optimizers_get_no_precision_keywords(tmp_path):
    result = _spirals_json(tmp_path)
    assert result["precision"]["optimizer_kwargs"] == {}
    assert result["config"]["precision"] is None and result["config"]["state_dtype"] is None
    assert result["unsupported"] == {}


def test_low_precision_params_and_grads_reach_the_optimizer(monkeypatch):
    import ml_dtypes

    seen = []

    class Recording(fo.AdamW):
        def step(self, grads):
            seen.append({(k, grads[k].dtype, self.param_groups[0]["params"][i].dtype)
                         for i, k in enumerate(grads)})
            return super().step(grads)

    monkeypatch.setattr(fo, "AdamW", Recording)
    for precision, dt in [("bf16", np.dtype(ml_dtypes.bfloat16)), ("fp16", np.dtype(np.float16))]:
        seen.clear()
        result = run_compare(CompareConfig(optimizers=["adamw"], explicit=True, epochs=3,
                                           dataset="spirals", precision=precision,
                                           progress=False), out=io.StringIO())
        assert seen and all(dtypes == {(k, dt, dt) for k, _, _ in dtypes} for dtypes in seen)
        rec = result["optimizers"]["adamw"]
        assert rec["status"] == "ok" and rec["final_train_loss"] < rec["initial_train_loss"]


def test_unsupported_state_dtype_is_skipped_with_a_note_when_not_named(tmp_path, capsys):
    if "adadelta" not in AVAILABLE:
        pytest.skip("no Adadelta in this build")
    js = tmp_path / "s.json"
    rc = main(["compare", "--dataset", "spirals", "--epochs", "1", "--no-plot", "--quiet",
               "--state-dtype", "int8", "--json", str(js)])
    err = capsys.readouterr().err
    assert rc == 0
    assert "skipping (--state-dtype int8 not supported): adadelta" in err
    result = json.loads(js.read_text())
    assert "adadelta" not in result["optimizers"] and "adam" in result["optimizers"]
    assert "Adadelta" in result["unsupported"]["adadelta"]


def test_unsupported_state_dtype_is_an_error_when_named(capsys):
    if "adadelta" not in AVAILABLE:
        pytest.skip("no Adadelta in this build")
    rc = main(["compare", "--dataset", "spirals", "--no-plot", "--optimizers", "adam,adadelta",
               "--state-dtype", "int4"])
    out, err = capsys.readouterr()
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "--state-dtype int4: optimizer adadelta does not support it" in err
    assert "quantized state is supported by" in err  # the library's own list
    assert out == ""  # refused before any training


@pytest.mark.parametrize("args, message", [
    (["--precision", "bf16", "--dtype", "float64"], "cannot be combined with --dtype float64"),
    (["--precision", "fp8"], "invalid choice"),
    (["--state-dtype", "int2"], "invalid choice"),
    (["--min-quantized-size", "-1"], "must be a non-negative integer"),
])
def test_precision_flags_reject_bad_input_in_one_line(capsys, args, message):
    rc = main(["compare", "--dataset", "spirals", "--no-plot", "--quiet", *args])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err, err


# ------------------------------------------------------------------------------ --ema
def test_ema_reports_the_averaged_weights_accuracy(tmp_path, capsys):
    """--ema DECAY keeps fusedoptim.swa_utils.AveragedParams beside each run and reports the
    averaged weights' validation accuracy: a column, the JSON, and the averaged weights are
    really the EMA of the trained weights (decay 0: the EMA is the weights themselves)."""
    js = tmp_path / "ema.json"
    rc = main(["compare", "--dataset", "spirals", "--epochs", "4", "--schedule", "none",
               "--optimizers", "adamw", "--ema", "0.9", "--no-plot", "--quiet",
               "--json", str(js)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "EMA val acc" in out and "decay 0.9" in out
    rec = json.loads(js.read_text())["optimizers"]["adamw"]
    assert rec["ema"]["decay"] == 0.9 and 0.0 <= rec["ema"]["final_val_acc"] <= 1.0
    assert len(rec["history"]["ema_val_acc"]) == 5 and rec["ema"]["update_us"] > 0
    # with decay 0 the average is the latest weights: the same accuracy every epoch
    result = run_compare(CompareConfig(optimizers=["adamw"], explicit=True, dataset="spirals",
                                       epochs=2, ema=0.0, progress=False), out=io.StringIO())
    r = result["optimizers"]["adamw"]
    assert r["history"]["ema_val_acc"][1:] == r["history"]["val_acc"][1:]


@pytest.mark.parametrize("argv, msg", [
    (["--ema", "1.5"], r"--ema must be a decay in \[0, 1\]"),
    (["--ema", "0.9", "--precision", "bf16"], "--ema averages float32/float64 weights"),
])
def test_bad_ema_is_one_error_line(argv, msg, capsys):
    rc = main(["compare", "--dataset", "spirals", "--epochs", "1", "--no-plot", "--quiet",
               "--optimizers", "adamw", *argv])
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1
    assert __import__("re").search(msg, err)


@pytest.mark.skipif("schedulefree-adamw" not in AVAILABLE, reason="no ScheduleFreeAdamW")
def test_schedule_free_runs_unscheduled_and_is_measured_at_x(monkeypatch):
    # Schedule-Free replaces the schedule (whatever --schedule says) and is evaluated at its x
    # sequence: eval() before each measurement, train() after, for the fused and the
    # reference optimizer alike.
    calls = []
    owner = next(k for k in fo.ScheduleFreeAdamW.__mro__ if "eval" in k.__dict__)
    for method in ("eval", "train"):
        real = owner.__dict__[method]
        monkeypatch.setattr(owner, method, lambda self, _r=real, _m=method: (calls.append(
            ("reference" if type(self).__module__ == "fusedoptim.reference" else "fused", _m)),
            _r(self))[1])
    cfg = CompareConfig(optimizers=["schedulefree-adamw", "adam"], explicit=True,
                        dataset="spirals", epochs=3, schedule="cosine", reference=True,
                        progress=False)
    out = io.StringIO()
    result = run_compare(cfg, out=out)
    sf, adam = result["optimizers"]["schedulefree-adamw"], result["optimizers"]["adam"]
    assert sf["schedule"] == "none" and adam["schedule"] == "cosine"
    assert len(set(sf["history"]["lr"])) == 1       # no scheduler touched its lr
    assert len(set(adam["history"]["lr"])) > 1
    # 4 measurements (epoch 0 and 3 epochs), each eval then train, on both optimizers
    assert sorted(calls) == sorted([(w, m) for _ in range(4) for w in ("fused", "reference")
                                    for m in ("eval", "train")])
    assert calls[:2] == [("fused", "eval"), ("reference", "eval")]
    assert sf["reference"]["agree"]
    assert "schedule none for schedulefree-adamw" in out.getvalue()
