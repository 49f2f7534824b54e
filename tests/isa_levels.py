"""Run one script under each compiled instruction-set level and compare what it prints.

The ISA-identity tests (every level gives the same bits) share this. Each level other than
the baseline is one pytest parameter; a level this build lacks or this CPU cannot run is
skipped with the reason, so the summary (`-ra`) says which levels were left out and why.
"""

import functools
import os
import subprocess
import sys

import pytest

from fusedoptim import _kernels


def _left_out_reason(level, built, runnable):
    if "baseline" not in built:
        return f"only {', '.join(built)} is built (FUSEDOPTIM_NATIVE=1?): nothing to compare"
    if level == "native" and level not in built:
        return "native is built only by FUSEDOPTIM_NATIVE=1 (then alone)"
    if level not in built:
        return f"{level} is not built on this platform/compiler (built: {', '.join(built)})"
    if level not in runnable:
        missing = ", ".join(_kernels.missing_features(level))
        return f"this CPU cannot run {level}: it lacks {missing}"
    return None


def levels_to_compare():
    """pytest params: every level but the baseline, each compared with the baseline."""
    built, runnable = _kernels.built_levels(), _kernels.supported_levels()
    params = []
    for level in _kernels.LEVELS:
        if level == "baseline":
            continue
        reason = _left_out_reason(level, built, runnable)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(level, marks=marks, id=level))
    return params


@functools.cache
def output_at(level, code):
    """What `code` prints, run in a fresh interpreter with FUSEDOPTIM_ISA=level. The script
    must print the loaded level first; it is checked and stripped."""
    env = dict(os.environ, FUSEDOPTIM_ISA=level)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, (f"FUSEDOPTIM_ISA={level}: exit status {out.returncode}\n"
                                 f"{out.stderr}")
    isa, _, rest = out.stdout.partition(" ")
    assert isa == level, out.stdout
    return rest.strip()


def assert_same_as_baseline(level, code):
    assert output_at(level, code) == output_at("baseline", code)
