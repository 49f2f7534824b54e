"""The kernel registry: keyed by (kernel, param storage, grad storage, state storage), with only
the combinations a kernel module registered. Anything else is an error, never a no-op."""

import numpy as np
import pytest

from fusedoptim import _kernels


def _plan(dtype, n=100):
    p = np.zeros(n, dtype)
    return _kernels.Plan([p], [None], 0, 0, ["p"]), p


@pytest.mark.parametrize("name", sorted(set(_kernels.KERNEL_IDS) - {"_thread_id_f32_only"})
                         + sorted(_kernels.REDUCE_IDS))
def test_every_kernel_registers_exactly_the_float32_and_float64_rows(name):
    assert _kernels.registered_variants(name) == [("float32", "float32", "float32"),
                                                  ("float64", "float64", "float64")]


def test_an_unregistered_combination_is_refused_before_anything_runs():
    kid = _kernels.KERNEL_IDS["_thread_id_f32_only"]
    assert _kernels.registered_variants("_thread_id_f32_only") == [
        ("float32", "float32", "float32")]
    plan, p = _plan(np.float64)
    plan.bind([np.zeros_like(p)])
    p[:] = -1.0
    with pytest.raises(TypeError, match=r"kernel '_thread_id_f32_only' has no variant for "
                                        r"params float64, grads float64, state float64 "
                                        r"\(registered: float32, float32, float32\)"):
        plan.run(kid)
    assert (p == -1.0).all()                # nothing written
    plan32, p32 = _plan(np.float32)
    plan32.bind([np.zeros_like(p32)])
    p32[:] = -1.0
    plan32.run(kid, 1)
    assert (p32 == 0.0).all()               # the registered row runs: thread 0 wrote 0s


def test_an_empty_plan_still_refuses_an_unregistered_kernel():
    """A plan with nothing to do must not turn a missing variant into a silent success."""
    plan, p = _plan(np.float64, n=0)
    plan.bind([np.zeros_like(p)])
    with pytest.raises(TypeError, match="no variant"):
        plan.run(_kernels.KERNEL_IDS["_thread_id_f32_only"])


def test_unknown_names_and_ids():
    with pytest.raises(KeyError, match="no kernel named 'nope'"):
        _kernels.registered_variants("nope")
    plan, p = _plan(np.float32)
    with pytest.raises(ValueError, match="unknown kernel id"):
        plan.run(10_000)
    with pytest.raises(ValueError, match="unknown reduce kernel id"):
        plan.reduce(10_000)


def test_a_second_isa_levels_kernels_cannot_register_over_the_first():
    """Only one level's kernel module may fill the registry; a second one is refused loudly
    (in a fresh interpreter: this process keeps its registry)."""
    import subprocess
    import sys
    others = [lv for lv in _kernels.supported_levels() if lv != _kernels.ISA]
    if not others:
        pytest.skip(f"this CPU and build run only {_kernels.ISA}: no second level to import")
    code = (f"import fusedoptim\n"
            f"try:\n    import fusedoptim._kernels_{others[0]}\n"
            f"except RuntimeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "registered twice for params float32, grads float32, state float32" in out.stdout
