"""The kernel registry: keyed by (kernel, param storage, grad storage, state storage), with only
the combinations a kernel module registered. Anything else is an error, never a no-op."""

import numpy as np
import pytest

from fusedoptim import _kernels


def _plan(dtype, n=100):
    p = np.zeros(n, dtype)
    return _kernels.Plan([p], [None], 0, 0, ["p"]), p


FLOAT_ROWS = {("float32", "float32", "float32"), ("float64", "float64", "float64")}
# Issue 11: what the Python layer can request of an optimizer kernel. float32 params take
# float32, bfloat16 or float16 grads; half params without master weights take grads of their
# own dtype; half params with float32 master weights take any of the three; state is float32
# or bfloat16 (or, without master weights, the params' own half dtype).
HALVES = ("bfloat16", "float16")
GRADS = ("float32",) + HALVES
OPTIMIZER_ROWS = FLOAT_ROWS | {
    ("float32", g, s) for g in GRADS for s in ("float32", "bfloat16")} | {
    (h, h, s) for h in HALVES for s in (h, "float32")} | {
    (h + "+master", g, s) for h in HALVES for g in GRADS for s in ("float32", "bfloat16")} | {
    ("bfloat16+sr", "bfloat16", s) for s in ("bfloat16", "float32")}
# int8/int4 state (blockwise) for the optimizers issue 11 names: float32 params with float32 or
# bfloat16 grads, half params with their own grads, and with master weights (float32 grads or
# their own).
QUANTIZED_ROWS = {(p, g, q) for q in ("int8", "int4") for p, g in (
    ("float32", "float32"), ("float32", "bfloat16"), ("bfloat16", "bfloat16"),
    ("float16", "float16"), ("bfloat16+master", "bfloat16"), ("bfloat16+master", "float32"),
    ("float16+master", "float16"), ("float16+master", "float32"))}
QUANTIZED_KERNELS = {"adam", "sgd", "lion", "rmsprop", "adagrad", "adamax", "nadam", "radam",
                     "lars", "lars_norms", "lamb", "lamb_store_moments", "lamb_norms",
                     "ademamix", "adopt"}
# int4 with rank-1 normalized non-negative moments (Li et al. 2023): the same rows, for the
# kernels with a "state+" buffer; those that write one also register a scan kernel.
RANK1_ROWS = {(p, g, "int4+rank1") for p, g, q in QUANTIZED_ROWS if q == "int4"}
RANK1_KERNELS = {"adam", "rmsprop", "adagrad", "adamax", "nadam", "radam", "lamb",
                 "lamb_store_moments", "lamb_norms", "ademamix", "adopt"}
RANK1_SCANS = {"adam", "rmsprop", "adagrad", "adamax", "nadam", "radam", "lamb_store_moments",
               "ademamix", "adopt"}
CODEC_KERNELS = {"quantize_signed", "quantize_unsigned", "dequantize_signed",
                 "dequantize_unsigned"}
# The gradient utilities read arrays (or a plan's grads) of any of the four dtypes.
GRAD_UTILITY_ROWS = FLOAT_ROWS | {(h, h, h) for h in HALVES}
GRAD_UTILITIES = {"sumsq", "sumabs", "sumpow", "maxabs", "nonfinite", "scale", "clamp"}
# Hand-made rooflines of the mixed-storage steps (roofline.pxi.tp): one row each.
MIXED_ROOFLINES = {"touch_q8": {("float32", "float32", "int8")},
                   "touch_bf16m": {("bfloat16+master", "bfloat16", "float32")}}
OPTIMIZER_KERNELS = {"adadelta", "adagrad", "adam", "adamax", "asgd", "lamb", "lamb_moments",
                     "lamb_store_moments", "lamb_norms",
                     "lars", "lars_norms", "lion", "nadam", "radam", "rmsprop", "rprop", "sgd",
                     "signsgd", "schedule_free_adamw", "schedule_free_sgd",
                     "schedule_free_swap", "ademamix", "adopt", "madgrad", "yogi", "adan",
                     "adabelief"}
# The optimizer wrappers' passes (fusedoptim.wrappers): float32 and float64 params only.
WRAPPER_KERNELS = {"lookahead", "accumulate"}
# Muon (its element-wise passes around BLAS): float32 and float64 only, as its iteration is.
# Prodigy's two passes: float32 and float64 (its twin folds the driver's segments itself).
FLOAT_OPTIMIZER_KERNELS = {"muon", "muon_momentum", "prodigy", "prodigy_stats"}


@pytest.mark.parametrize("name", sorted(set(_kernels.KERNEL_IDS) - {"_thread_id_f32_only"})
                         + sorted(_kernels.REDUCE_IDS))
def test_every_kernel_registers_exactly_its_rows(name):
    rows = _kernels.registered_variants(name)
    assert len(rows) == len(set(rows))
    if name.endswith(".scan"):
        assert name[:-len(".scan")] in RANK1_SCANS
        assert _kernels.RANK1_SCANS[name[:-len(".scan")]] == name
        assert set(rows) == RANK1_ROWS
    elif name in QUANTIZED_KERNELS:
        assert set(rows) == OPTIMIZER_ROWS | QUANTIZED_ROWS | (
            RANK1_ROWS if name in RANK1_KERNELS else set())
    elif name == "lamb_moments":            # LAMB's fused two passes: exact state only
        assert set(rows) == {r for r in OPTIMIZER_ROWS if r[2] in ("float32", "float64")}
    elif name in OPTIMIZER_KERNELS:
        assert set(rows) == OPTIMIZER_ROWS
    elif name in FLOAT_OPTIMIZER_KERNELS or name in WRAPPER_KERNELS:
        assert set(rows) == FLOAT_ROWS
    elif name in GRAD_UTILITIES:
        assert set(rows) == GRAD_UTILITY_ROWS
    elif name in MIXED_ROOFLINES:
        assert set(rows) == MIXED_ROOFLINES[name]
    elif name in CODEC_KERNELS:             # fusedoptim.quant's fused codec
        assert set(rows) == {(x, x, q) for x in ("float32", "bfloat16", "float16")
                             for q in ("int8", "int4")}
    else:                                   # the roofline and probe kernels
        assert set(rows) == FLOAT_ROWS


def test_the_kernels_with_a_rank1_scan():
    assert set(_kernels.RANK1_SCANS) == RANK1_SCANS


def test_every_optimizer_kernel_is_listed_here():
    """A new optimizer kernel must say which rows it registers (add it above)."""
    from fusedoptim._spec import registered
    kernels = {spec.kernel for spec in registered()}
    assert kernels <= OPTIMIZER_KERNELS | FLOAT_OPTIMIZER_KERNELS


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
