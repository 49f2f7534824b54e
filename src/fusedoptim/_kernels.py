"""Load the compiled kernels built for the best instruction-set level this CPU runs.

setup.py compiles cython_kernels/_kernels.pyx once per level (baseline everywhere; avx2 and
avx512 on x86-64). Every level gives bitwise identical results; higher levels are faster.
Which levels this CPU can run is asked of the CPU itself (fusedoptim._cpu, compiled with no
ISA flags): a level is loaded only when the CPU has every feature its compiler flags allow.
Set FUSEDOPTIM_ISA=baseline|avx2|avx512 to force a level (for tests and comparisons); forcing
one the CPU cannot run is an ImportError that says what is missing, never SIGILL.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import ml_dtypes
import numpy as np
from collections.abc import Mapping, Sequence

# Best first. "native" (FUSEDOPTIM_NATIVE=1 builds) targets the build machine itself.
LEVELS = ("native", "avx512", "avx2", "baseline")

# The CPU features each level's flags let the compiler use (setup.py's ISA_LEVELS): -mavx2
# implies AVX; the avx512 level is built with -mavx512f/vl/bw/dq, -mavx2 and -mf16c.
REQUIRES: dict[str, tuple[str, ...]] = {
    "native": (),
    "avx512": ("AVX", "F16C", "AVX2", "AVX512F", "AVX512VL", "AVX512BW", "AVX512DQ"),
    "avx2": ("AVX", "F16C", "AVX2"),
    "baseline": (),
}


class UnsupportedISAError(ImportError):
    """FUSEDOPTIM_ISA names a level that this CPU, or this build, cannot run."""


def cpu_features() -> dict[str, bool]:
    """The CPU features this CPU and its OS support, by NumPy's names (see fusedoptim._cpu)."""
    # import_module, not `from . import`: a missing module is then ModuleNotFoundError,
    # which fusedoptim/__init__.py turns into "the kernels are not built".
    features: dict[str, bool] = importlib.import_module("fusedoptim._cpu").cpu_features()
    return features


def built_levels() -> list[str]:
    """The levels compiled into this installation, best first."""
    return [level for level in LEVELS
            if importlib.util.find_spec(f"fusedoptim._kernels_{level}") is not None]


def missing_features(level: str,
                     features: Mapping[str, bool] | None = None) -> list[str]:
    """The features `level` needs that this CPU (or `features`) lacks, in REQUIRES order."""
    features = cpu_features() if features is None else features
    return [f for f in REQUIRES[level] if not features.get(f, False)]


def supported_levels(features: Mapping[str, bool] | None = None,
                     built: Sequence[str] | None = None) -> list[str]:
    """The built levels this CPU (or `features`) can run, best first."""
    features = cpu_features() if features is None else features
    built = built_levels() if built is None else built
    return [level for level in LEVELS if level in built and not missing_features(level, features)]


def select_level(forced: str, features: Mapping[str, bool] | None = None,
                 built: Sequence[str] | None = None) -> str:
    """The level to load: `forced` (a FUSEDOPTIM_ISA value, or "" for none) when this CPU and
    build can run it, else the best supported one. Raises UnsupportedISAError otherwise."""
    features = cpu_features() if features is None else features
    built = built_levels() if built is None else built
    runnable = supported_levels(features, built)
    if not built:
        raise ModuleNotFoundError("no compiled kernel module (fusedoptim._kernels_<level>)")
    if not forced:
        if not runnable:
            raise ImportError(f"no compiled fusedoptim kernel module runs on this CPU "
                              f"(built levels: {', '.join(built)})")
        return runnable[0]
    if forced not in REQUIRES:
        raise UnsupportedISAError(
            f"FUSEDOPTIM_ISA={forced!r} is not a level; use one of {', '.join(LEVELS)}, "
            f"or unset it to load the best level this CPU runs")
    if forced not in built:
        raise UnsupportedISAError(
            f"FUSEDOPTIM_ISA={forced!r}: this installation has no {forced} build (built "
            f"levels: {', '.join(built) or 'none'}). Set FUSEDOPTIM_ISA to one of "
            f"{', '.join(runnable) or 'none'}, or unset it.")
    missing = missing_features(forced, features)
    if missing:
        raise UnsupportedISAError(
            f"FUSEDOPTIM_ISA={forced!r}: this CPU cannot run the {forced} kernels; it lacks "
            f"{', '.join(missing)} (absent, or not enabled by the OS). Levels this CPU can "
            f"run: {', '.join(runnable) or 'none'}. Set FUSEDOPTIM_ISA to one of those, or "
            f"unset it to load the best.")
    return forced


ISA = select_level(os.environ.get("FUSEDOPTIM_ISA", "").strip().lower())
# The driver and the checks are compiled once; importing the level's kernel module registers
# its kernels with the driver. This module is the one face of all three.
_driver = importlib.import_module("fusedoptim._driver")
_checks = importlib.import_module("fusedoptim._checks")
_module = importlib.import_module(f"fusedoptim._kernels_{ISA}")
# bfloat16 arrays are ml_dtypes' (a user-defined NumPy dtype): tell the driver its number.
_driver.register_bfloat16(np.dtype(ml_dtypes.bfloat16).num)
_checks.register_bfloat16(np.dtype(ml_dtypes.bfloat16).num)
for _part in (_checks, _driver, _module):
    globals().update({k: v for k, v in vars(_part).items() if not k.startswith("__")})
MODULE = _module.__name__
