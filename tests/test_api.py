"""The Python API around the kernels: functional calls, threads, config, CLI, groups, None grads."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fusedoptim as fo
from conftest import make_params
import isa_levels


def test_issue_example_dict_params_and_checkpoint(rng):
    params = {"W": rng.standard_normal((784, 128)).astype(np.float32),
              "b": np.zeros(128, np.float32)}
    opt = fo.AdamW(params, lr=1e-3, weight_decay=1e-2)
    w0 = params["W"].copy()
    for _ in range(3):
        opt.step({k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()})
    assert not np.array_equal(w0, params["W"])
    sd = opt.state_dict()
    opt2 = fo.AdamW(params)
    opt2.load_state_dict(sd)
    assert opt2.state[0]["step"] == 3 and opt2.param_groups[0]["weight_decay"] == 1e-2
    assert sd["param_groups"][0]["param_names"] == ["W", "b"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_functional_matches_class_and_reference(rng, dtype, amsgrad):
    kw = dict(lr=3e-3, beta1=0.8, beta2=0.99, eps=1e-7, weight_decay=0.05, amsgrad=amsgrad,
              decoupled_weight_decay=True)
    p_fun = make_params(rng, dtype)
    p_ref = [p.copy() for p in p_fun]
    p_cls = [p.copy() for p in p_fun]
    zeros = lambda ps: [np.zeros_like(p) for p in ps]
    st_fun = (zeros(p_fun), zeros(p_fun), zeros(p_fun) if amsgrad else None, [0] * len(p_fun))
    st_ref = (zeros(p_ref), zeros(p_ref), zeros(p_ref) if amsgrad else None, [0] * len(p_ref))
    opt = fo.AdamW(p_cls, lr=3e-3, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.05,
                   amsgrad=amsgrad)
    for _ in range(25):
        g = [np.asarray(rng.standard_normal(p.shape), dtype) for p in p_fun]
        fo.functional.adam(p_fun, g, *st_fun, **kw)
        fo.reference.adam(p_ref, g, *st_ref, **kw)
        opt.step(g)
    for a, b, c in zip(p_fun, p_ref, p_cls):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    assert st_fun[3] == [25] * len(p_fun) == st_ref[3]


def test_functional_validates_before_writing():
    p = [np.zeros(4, np.float32)]
    g = [np.ones(4, np.float32)]
    m, v = [np.zeros(4, np.float32)], [np.zeros(4, np.float32)]
    steps = [0]
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
    with pytest.raises(ValueError, match="exp_avgs must be a list with one entry per param"):
        fo.functional.adam(p, g, m * 2, v, None, steps, **kw)
    with pytest.raises(ValueError, match=r"max_exp_avg_sqs\[0\] is None"):
        fo.functional.adam(p, g, m, v, [None], steps, amsgrad=True, **kw)
    with pytest.raises(TypeError, match=r"exp_avg_sqs\[0\] has dtype float64"):
        fo.functional.adam(p, g, m, [np.zeros(4)], None, steps, **kw)
    with pytest.raises(ValueError, match=r"state_steps\[0\] must be an integer >= 0, got -1"):
        fo.functional.adam(p, g, m, v, None, [-1], **kw)
    with pytest.raises(ValueError, match="betas\\[1\\]"):
        fo.functional.adam(p, g, m, v, None, steps, **{**kw, "beta2": 1.5})
    assert not p[0].any() and not m[0].any() and steps == [0]
    fo.functional.adam(p, g, m, v, None, steps, **kw)
    assert p[0].all() and steps == [1]


def test_none_grad_skips_param_and_its_step_count():
    a, b = np.zeros(3, np.float32), np.zeros(3, np.float32)
    opt = fo.Adam([a, b], lr=0.1)
    opt.step([np.ones(3, np.float32), None])
    assert a.any() and not b.any()
    assert 1 not in opt.state                     # no state before its first grad
    opt.step([np.ones(3, np.float32), np.ones(3, np.float32)])
    assert opt.state[0]["step"] == 2 and opt.state[1]["step"] == 1
    # b's first step uses step=1 bias correction: Adam's first step is exactly -lr*sign(g)
    np.testing.assert_allclose(b, -0.1, rtol=1e-6)


def test_a_bad_hyperparameter_in_a_state_dict_is_named_there(rng):
    """The message names where the value is (found by tests/property: it read 'lr must be a
    finite number >= 0', like a constructor argument), and nothing changes."""
    p = [rng.standard_normal(3), rng.standard_normal(4)]
    opt = fo.SGD([{"params": p[:1]}, {"params": p[1:]}], lr=0.1, momentum=0.9)
    opt.step([np.ones(3), np.ones(4)])
    sd = opt.state_dict()
    bad = {**sd, "param_groups": [sd["param_groups"][0], {**sd["param_groups"][1], "lr": -1.0}]}
    before = [x.copy() for x in p], opt.state_dict()
    with pytest.raises(ValueError, match=r"^state_dict\['param_groups'\]\[1\]: lr must be a "
                                         r"finite number >= 0, got -1.0$"):
        opt.load_state_dict(bad)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(p, before[0]))
    assert opt.state_dict()["param_groups"] == before[1]["param_groups"]
    assert all(opt.state[i]["momentum_buffer"].tobytes() ==
               before[1]["state"][i]["momentum_buffer"].tobytes() for i in range(2))


def test_amsgrad_switched_on_mid_training_gets_fresh_max_buffer():
    p = np.zeros(3, np.float32)
    opt = fo.Adam([p])
    opt.step([np.ones(3, np.float32)])
    assert "max_exp_avg_sq" not in opt.state[0]
    opt.param_groups[0]["amsgrad"] = True
    opt.step([np.ones(3, np.float32)])
    np.testing.assert_array_equal(opt.state[0]["max_exp_avg_sq"], opt.state[0]["exp_avg_sq"])


def test_set_and_get_num_threads():
    before = fo.get_num_threads()
    try:
        fo.set_num_threads(1)
        assert fo.get_num_threads() == 1
        for bad in (0, -2):
            with pytest.raises(ValueError, match=f"got {bad}"):
                fo.set_num_threads(bad)
        with pytest.raises(TypeError, match="2.5"):
            fo.set_num_threads(2.5)
    finally:
        fo.set_num_threads(before)


def _run_python(code, **env):
    full_env = dict(os.environ)
    full_env.pop("OMP_NUM_THREADS", None)
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, timeout=120)


@pytest.mark.skipif(not fo._kernels.openmp_enabled(), reason="built without OpenMP")
def test_default_threads_follow_affinity_and_omp_num_threads():
    out = _run_python("import fusedoptim as fo; print(fo.get_num_threads())")
    assert int(out.stdout) == len(os.sched_getaffinity(0))
    out = _run_python("import fusedoptim as fo; print(fo.get_num_threads())",
                      OMP_NUM_THREADS="3")
    assert int(out.stdout) == 3


def test_show_config_reports_build(capsys):
    fo.show_config()
    text = capsys.readouterr().out
    assert fo.__version__ in text
    assert "-fno-math-errno" in text and "-ffast-math" not in text
    assert f"openmp         {fo._kernels.openmp_enabled()}" in text
    assert f"num_threads    {fo.get_num_threads()}" in text


def test_unbuilt_source_tree_gives_a_clear_import_error(tmp_path):
    pkg = os.path.dirname(fo.__file__)
    dest = tmp_path / "fusedoptim"
    shutil.copytree(pkg, dest, ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    out = subprocess.run([sys.executable, "-c", "import fusedoptim"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=60)
    assert out.returncode != 0
    assert "are not built" in out.stderr and "pip install ." in out.stderr


def test_bench_cli_runs_and_prints_a_row():
    out = subprocess.run([sys.executable, "-m", "fusedoptim", "bench", "--sizes", "2000",
                          "--threads", "1", "--repeat", "1", "--min-time", "0.01",
                          "--optimizers", "AdamW"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("AdamW ")]
    assert len(rows) == 1 and "2e+03" in rows[0] and "%" in rows[0]


_PRECISION_SMOKE = ["bench", "--precision", "--sizes", "4096,16384", "--threads", "1",
                    "--repeat", "1", "--min-time", "0.005"]


def test_bench_precision_smoke():
    """`fusedoptim bench --precision` at tiny sizes: every section prints, with the ratios,
    the 4 GB/s model and the state bytes of a (1000, 1000) AdamW."""
    out = subprocess.run([sys.executable, "-m", "fusedoptim", *_PRECISION_SMOKE],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in ("[1] 4e+03 float32 params, 1 thread", "[2] compute bound", "[3] 2e+04",
                   "roofline: touch_q8", "roofline: touch_bf16m", "int8 step, % of touch_q8",
                   "model, per core at 4 GB/s", "[5] AdamW state per param"):
        assert needle in text, (needle, text)
    line = text.split("[5] AdamW state per param")[1].splitlines()[1]
    assert "float32 8.0000 B" in line and "bfloat16 4.0000 B" in line
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        assert "bitsandbytes columns skipped" in text
    else:
        assert "bnb AdamW8bit (CPU)" in text and "torch.uint8" in text


def test_bench_precision_without_bitsandbytes_skips_its_rows():
    """bitsandbytes not importable: its rows are left out and the reason is printed."""
    code = ("import sys; sys.modules['bitsandbytes'] = None\n"
            "from fusedoptim.__main__ import main\n"
            f"raise SystemExit(main({_PRECISION_SMOKE!r}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "bitsandbytes columns skipped: bitsandbytes is not importable" in out.stdout
    assert "bnb AdamW" not in out.stdout and "int8 / bnb" not in out.stdout
    assert "fo AdamW int8" in out.stdout


def test_bench_muon_rows_run_blas_at_the_rows_thread_count(monkeypatch):
    """`bench --muon`: the fused step and its NumPy twin both run BLAS at the row's thread
    count (the twin used to run at BLAS's default, every core, against a 1-thread fused
    step). Each row's step is called once; the BLAS pool size is read where each side
    starts its Newton-Schulz products."""
    from fusedoptim import bench, reference
    from fusedoptim._blas import blas_libraries
    from fusedoptim.optim import muon as muon_mod
    if not blas_libraries():
        pytest.skip("threadpoolctl finds no BLAS library to set")
    seen: list[int] = []

    def recording(real):
        def wrapper(*args, **kwargs):
            seen.append(blas_libraries()[0].num_threads)
            return real(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(muon_mod, "_newton_schulz", recording(muon_mod._newton_schulz))
    monkeypatch.setattr(reference, "zeropower_via_newtonschulz",
                        recording(reference.zeropower_via_newtonschulz))
    fns = bench.muon_fns(3, (16, 8), 1, torch=None, reference=True)
    assert set(fns) == {"fo.Muon", "fo.reference.Muon"}
    for label, fn in fns.items():
        seen.clear()
        fn()
        assert seen and set(seen) == {1}, (label, seen)


def test_bench_cli_rejects_unknown_optimizer():
    out = subprocess.run([sys.executable, "-m", "fusedoptim", "bench", "--optimizers", "Nope"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "unknown optimizer" in out.stderr
    assert "Traceback" not in out.stderr


_ISA_ADAM = (
    "import numpy as np, fusedoptim as fo, hashlib\n"
    "rng = np.random.default_rng(7)\n"
    "ps = [rng.standard_normal(n).astype(dt) for n in (1, 33, 70_001) for dt in (np.float32,)]\n"
    "qs = [p.astype(np.float64) for p in ps]\n"
    "o = fo.AdamW(ps, lr=1e-2, amsgrad=True); o2 = fo.Adam(qs, lr=1e-2, weight_decay=0.1)\n"
    "for _ in range(30):\n"
    "    g = [rng.standard_normal(p.shape).astype(np.float32) for p in ps]\n"
    "    o.step(g); o2.step([x.astype(np.float64) for x in g])\n"
    "h = hashlib.sha256(b''.join(p.tobytes() for p in ps + qs)).hexdigest()\n"
    "from fusedoptim import _kernels; print(_kernels.ISA, h)\n")


@pytest.mark.parametrize("level", isa_levels.levels_to_compare())
def test_every_isa_level_gives_identical_bits(level):
    """Each compiled instruction-set level runs the same 30-step AMSGrad/AdamW trajectory."""
    isa_levels.assert_same_as_baseline(level, _ISA_ADAM)
