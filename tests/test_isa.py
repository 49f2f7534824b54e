"""Instruction-set levels: which one loads, and that a level the CPU cannot run is refused.

A machine without AVX2 (or one with AVX-512) cannot always be had, so besides asking the real
CPU these tests replace the CPU probe (fusedoptim._cpu) with a fake in a fresh interpreter
and check what the loader then does.
"""

import os
import subprocess
import sys

import pytest

from fusedoptim import _cpu, _kernels

# A CPU with everything up to AVX2 and no AVX-512 (the AMD EPYC the issue saw), and one with
# nothing beyond SSE2 (simulating a machine older than AVX2).
AVX2_ONLY = dict.fromkeys(_cpu.FEATURES, False) | {"SSE2": True, "AVX": True, "F16C": True,
                                                    "FMA3": True, "AVX2": True}
SSE2_ONLY = dict.fromkeys(_cpu.FEATURES, False) | {"SSE2": True}

_WITH_FAKE_PROBE = """
import sys, types
fake = types.ModuleType("fusedoptim._cpu")
fake.FEATURES = {features!r}
fake.cpu_features = lambda: dict({features!r})
sys.modules["fusedoptim._cpu"] = fake
import numpy as np, fusedoptim as fo
from fusedoptim import _kernels
p = np.ones(5, np.float32)
fo.Adam([p]).step([np.ones(5, np.float32)])
print(_kernels.ISA)
"""


def _python(code, isa=None):
    env = {k: v for k, v in os.environ.items() if k != "FUSEDOPTIM_ISA"}
    if isa is not None:
        env["FUSEDOPTIM_ISA"] = isa
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)


def _need_built(*levels):
    missing = [lv for lv in levels if lv not in _kernels.built_levels()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not built here (built: "
                    f"{', '.join(_kernels.built_levels())})")


# -- the probe and the choice on this real CPU ---------------------------------------------------

def test_probe_agrees_with_numpys_dispatcher():
    """NumPy's __cpu_features__ asks CPUID and the OS-enabled register state (XCR0) too: for
    every feature we report, both must say the same."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as numpy_features
    except ImportError:
        pytest.skip("this NumPy does not expose __cpu_features__")
    for var in ("NPY_DISABLE_CPU_FEATURES", "NPY_ENABLE_CPU_FEATURES"):
        if os.environ.get(var):
            pytest.skip(f"{var} is set, so NumPy's view differs from the CPU's on purpose")
    ours = _cpu.cpu_features()
    assert set(ours) == set(_cpu.FEATURES)
    theirs = {name: bool(numpy_features.get(name, False)) for name in ours}
    assert ours == theirs


def test_default_level_is_the_best_this_cpu_supports():
    """Unforced, the loader picks the first built level (best first) whose every required
    feature NumPy also reports, i.e. the one the CPU's own dispatcher would allow."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as numpy_features
    except ImportError:
        numpy_features = _cpu.cpu_features()
    built = _kernels.built_levels()
    expected = next(lv for lv in _kernels.LEVELS if lv in built
                    and all(numpy_features.get(f, False) for f in _kernels.REQUIRES[lv]))
    out = _python("from fusedoptim import _kernels; print(_kernels.ISA)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
    assert _kernels.supported_levels()[0] == expected


@pytest.mark.parametrize("level", ["avx512", "avx2"])
def test_forcing_a_level_this_cpu_cannot_run_is_an_import_error(level):
    """On the real CPU: a built level it lacks features for fails with a message, not SIGILL."""
    _need_built(level)
    missing = _kernels.missing_features(level)
    if not missing:
        pytest.skip(f"this CPU runs {level}; the fake-probe tests below cover the refusal")
    out = _python("import fusedoptim", isa=level)
    assert out.returncode == 1, (out.returncode, out.stderr)   # not -4 (SIGILL)
    assert "UnsupportedISAError" in out.stderr and level in out.stderr
    assert all(f in out.stderr for f in missing)


@pytest.mark.parametrize("level", [lv for lv in _kernels.LEVELS if lv != "native"])
def test_forcing_a_level_this_cpu_runs_loads_it(level):
    _need_built(level)
    if _kernels.missing_features(level):
        pytest.skip(f"this CPU lacks {', '.join(_kernels.missing_features(level))}")
    out = _python(_WITH_FAKE_PROBE.format(features=_cpu.cpu_features()), isa=level)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == level


# -- a simulated CPU: the probe replaced ---------------------------------------------------------

def test_avx2_only_cpu_loads_avx2_by_default():
    _need_built("avx2")
    out = _python(_WITH_FAKE_PROBE.format(features=AVX2_ONLY))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "avx2"


def test_avx2_only_cpu_refuses_forced_avx512_with_a_clear_message():
    """The issue's crash: FUSEDOPTIM_ISA=avx512 on an AVX2-only EPYC died of SIGILL."""
    _need_built("avx512", "avx2")
    out = _python(_WITH_FAKE_PROBE.format(features=AVX2_ONLY), isa="avx512")
    assert out.returncode == 1, (out.returncode, out.stderr)
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("fusedoptim._kernels.UnsupportedISAError: FUSEDOPTIM_ISA='avx512'")
    assert "lacks AVX512F, AVX512VL, AVX512BW, AVX512DQ" in last
    assert "Levels this CPU can run: avx2, baseline" in last


def test_sse2_only_cpu_loads_baseline_and_refuses_avx2():
    _need_built("avx2")
    out = _python(_WITH_FAKE_PROBE.format(features=SSE2_ONLY))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "baseline"
    out = _python(_WITH_FAKE_PROBE.format(features=SSE2_ONLY), isa="avx2")
    assert out.returncode == 1
    assert "lacks AVX, F16C, AVX2" in out.stderr and "can run: baseline." in out.stderr


def test_os_without_avx512_state_counts_as_no_avx512():
    """CPUID may say AVX512F while the OS leaves the ZMM state off (XCR0): the probe then
    reports no AVX512*, and the loader treats the CPU as AVX2-only. Checked on the rule."""
    assert _kernels.missing_features("avx512", AVX2_ONLY) == [
        "AVX512F", "AVX512VL", "AVX512BW", "AVX512DQ"]
    assert _kernels.supported_levels(AVX2_ONLY, ["avx512", "avx2", "baseline"]) == [
        "avx2", "baseline"]


# -- the choice itself, on given features and builds ---------------------------------------------

def test_select_level_names_the_level_the_missing_features_and_the_alternatives():
    built = ["avx512", "avx2", "baseline"]
    with pytest.raises(_kernels.UnsupportedISAError) as err:
        _kernels.select_level("avx2", SSE2_ONLY, built)
    msg = str(err.value)
    assert "FUSEDOPTIM_ISA='avx2'" in msg and "lacks AVX, F16C, AVX2" in msg
    assert "Levels this CPU can run: baseline." in msg
    assert isinstance(err.value, ImportError)


def test_select_level_refuses_unknown_and_unbuilt_levels():
    with pytest.raises(ImportError, match=r"FUSEDOPTIM_ISA='sse9' is not a level; use one of "
                                          r"native, avx512, avx2, baseline"):
        _kernels.select_level("sse9", AVX2_ONLY, ["avx2", "baseline"])
    with pytest.raises(ImportError, match=r"has no avx512 build \(built levels: baseline\)"):
        _kernels.select_level("avx512", AVX2_ONLY | {f: True for f in _cpu.FEATURES},
                              ["baseline"])


def test_select_level_without_forcing_picks_the_best_runnable():
    built = ["avx512", "avx2", "baseline"]
    everything = dict.fromkeys(_cpu.FEATURES, True)
    assert _kernels.select_level("", everything, built) == "avx512"
    assert _kernels.select_level("", AVX2_ONLY, built) == "avx2"
    assert _kernels.select_level("", SSE2_ONLY, built) == "baseline"
    assert _kernels.select_level("", SSE2_ONLY, ["baseline"]) == "baseline"   # e.g. aarch64
    assert _kernels.select_level("", everything, ["native"]) == "native"
