"""Thread control and build information."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from . import _kernels

if TYPE_CHECKING:
    from ._typing import BuildConfig

get_num_threads = _kernels.get_num_threads


def set_num_threads(n: int) -> None:
    """Set the number of OpenMP threads every fused call uses.

    The default is the number of CPUs this process may use, or OMP_NUM_THREADS when set.
    Results are bitwise identical for any thread count. Like OpenMP's own setting (and
    threadpoolctl's, which acts on the same knob), it applies to the calling thread.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be a positive int, got {n!r}")
    _kernels.set_num_threads(n)


def build_config() -> BuildConfig:
    """How the kernels were compiled, as a dict."""
    try:
        from . import _build_config as bc
        flags, compiler, levels = list(bc.COMPILE_FLAGS), bc.COMPILER, list(bc.ISA_LEVELS)
    except ImportError:
        flags, compiler, levels = ["unknown"], "unknown", [_kernels.ISA]
    from . import __version__
    return {
        "version": __version__,
        "compiler": compiler,
        "compile_flags": flags,
        "openmp": _kernels.openmp_enabled(),
        "isa": _kernels.ISA,
        "isa_levels": levels,
        "isa_runnable": _kernels.supported_levels(),
        "num_threads": _kernels.get_num_threads(),
        "chunk_elements": _kernels.CHUNK_ELEMENTS,
        "kernels": sorted(k for k in _kernels.KERNEL_IDS if not k.startswith(("touch_", "_"))),
    }


def show_config(file: TextIO | None = None) -> None:
    """Print the version, compiler flags, OpenMP status and thread count."""
    cfg = build_config()
    out = file or sys.stdout
    import numpy as np
    print(f"fusedoptim {cfg['version']}", file=out)
    print(f"  numpy          {np.__version__}", file=out)
    print(f"  compiler       {cfg['compiler']}", file=out)
    print(f"  compile flags  {' '.join(cfg['compile_flags'])}", file=out)
    print(f"  openmp         {cfg['openmp']}", file=out)
    print(f"  isa level      {cfg['isa']} (built: {', '.join(cfg['isa_levels'])}; this CPU "
          f"runs: {', '.join(cfg['isa_runnable'])})", file=out)
    print(f"  num_threads    {cfg['num_threads']}", file=out)
    print(f"  chunk elements {cfg['chunk_elements']}", file=out)
    print(f"  kernels        {', '.join(cfg['kernels'])}", file=out)
