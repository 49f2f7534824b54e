"""Load the compiled kernels built for the best instruction-set level this CPU supports.

setup.py compiles cython_kernels/_kernels.pyx once per level (baseline, avx2, avx512 on
x86-64). Every level gives bitwise identical results; higher levels are just faster. Set
FUSEDOPTIM_ISA=baseline|avx2|avx512 to force a level (for tests and comparisons).
"""

import importlib
import os

_PREFERENCE = ["native", "avx512", "avx2", "baseline"]
_REQUIRES = {"avx512": ("AVX512F", "AVX512VL", "AVX512BW", "AVX512DQ", "AVX2"),
             "avx2": ("AVX2",), "baseline": (), "native": ()}


def _cpu_supports(level):
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # pragma: no cover - very old or unusual numpy builds
        return level in ("baseline", "native")
    return all(features.get(f, False) for f in _REQUIRES[level])


def _load():
    forced = os.environ.get("FUSEDOPTIM_ISA", "").strip().lower()
    if forced and forced not in _REQUIRES:
        raise ImportError(f"FUSEDOPTIM_ISA={forced!r} is not a level; use one of "
                          f"{sorted(_REQUIRES)}")
    levels = [forced] if forced else _PREFERENCE
    errors = []
    for level in levels:
        if not forced and not _cpu_supports(level):
            continue
        try:
            return level, importlib.import_module(f"fusedoptim._kernels_{level}")
        except ImportError as exc:
            errors.append(f"{level}: {exc}")
    raise ImportError("; ".join(errors) or "no compiled kernel module found")


ISA, _module = _load()
globals().update({k: v for k, v in vars(_module).items() if not k.startswith("__")})
MODULE = _module.__name__
