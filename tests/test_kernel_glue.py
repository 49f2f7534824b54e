"""The generated kernel glue (cython_kernels/kernelgen.py): named scalars, the storage whitelist,
and mode whitelists that the driver enforces before anything is written."""

import math

import numpy as np
import pytest

from fusedoptim import _kernels

# State buffers each moded kernel reads (buffers 2 ..).
NSTATE = {"adam": 3, "adamax": 2, "nadam": 2, "radam": 2, "lion": 1, "asgd": 1, "sgd": 1,
          "adagrad": 1, "rmsprop": 3, "adadelta": 2, "lamb": 2, "lars": 1, "lamb_moments": 2,
          "lamb_norms": 2,
          "signsgd": 1, "average": 0, "adafactor": 3, "adafactor_norm": 3,
          "lbfgs_axpy": 2, "lbfgs_step": 3,
          "muon_momentum": 2, "schedule_free_adamw": 2, "schedule_free_sgd": 1,
          "schedule_free_swap": 1, "ademamix": 3, "adopt": 2, "madgrad": 3, "accumulate": 0,
          "yogi": 2, "prodigy": 4, "prodigy_stats": 4, "adan": 4, "adabelief": 3}


def test_every_kernel_that_branches_on_a_mode_registers_its_modes():
    # A rank-1 scan kernel (int4+rank1 rows only: tests/test_rank1_state.py) takes its
    # kernel's scalars and modes (the driver checks that at registration; so does this).
    scans = set(_kernels.RANK1_SCANS.values())
    for kernel, scan in _kernels.RANK1_SCANS.items():
        assert scan == kernel + ".scan"
        assert _kernels.SCALARS[scan] == _kernels.SCALARS[kernel]
        assert _kernels.MODES.get(scan) == _kernels.MODES.get(kernel)
    assert set(_kernels.MODES) - scans == set(NSTATE), "give a new moded kernel its NSTATE entry"
    for name, modes in _kernels.MODES.items():
        assert "mode" in _kernels.SCALARS[name]
        assert modes and all(0 <= m < 64 for m in modes)
    # The modes the Python layer produces today (optim/*.py).
    assert _kernels.MODES["adam"] == (0, 1, 2, 4, 5, 6)
    assert _kernels.MODES["sgd"] == (0, 1, 2, 3, 6, 7, 10, 11, 14, 15)
    assert _kernels.MODES["rmsprop"] == (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13)


def test_one_scalars_declaration_gives_the_tuple_every_user_registers():
    """{{scalars(family, ...)}} makes FAMILY_SCALARS and the C struct; each kernel of the family
    registers that very tuple, so SCALARS[kernel] cannot drift from the body's field names."""
    users = {"ADAM": ["adam"], "ADAMAX": ["adamax"], "NADAM": ["nadam"], "RADAM": ["radam"],
             "LION": ["lion"], "RPROP": ["rprop"], "ASGD": ["asgd"], "SGD": ["sgd"],
             "ADAGRAD": ["adagrad"], "RMSPROP": ["rmsprop"], "ADADELTA": ["adadelta"],
             "LAMB": ["lamb", "lamb_moments", "lamb_store_moments", "lamb_norms"], "LARS": ["lars", "lars_norms"],
             "SUMPOW": ["sumpow"], "SCALE": ["scale"], "CLAMP": ["clamp"],
             "SIGNSGD": ["signsgd"], "MUON": ["muon", "muon_momentum"], "MADGRAD": ["madgrad"],
             "YOGI": ["yogi"], "PRODIGY": ["prodigy", "prodigy_stats"], "ADAN": ["adan"],
             "ADABELIEF": ["adabelief"]}
    for family, kernels in users.items():
        names = getattr(_kernels, family + "_SCALARS")
        assert names[0] == "sign" or family in ("SUMPOW", "SCALE", "CLAMP")
        for k in kernels:
            assert _kernels.SCALARS[k] == names, k
    assert _kernels.SCALARS["sumpow"] == ("p",)
    assert _kernels.SCALARS["clamp"] == ("lo", "hi")


def _plan(name, dtype, n=1000, ntensors=2):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(n).astype(dtype) for _ in range(ntensors)]
    state = [[np.abs(rng.standard_normal(n)).astype(dtype) for _ in range(NSTATE[name])]
             for _ in range(ntensors)]
    nscal = len(_kernels.SCALARS[name])
    plan = _kernels.Plan(params, state, NSTATE[name], nscal, [f"t{i}" for i in range(ntensors)])
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(ntensors)]
    plan.bind(grads)
    row = [0.5] * nscal
    if "sign" in _kernels.SCALARS[name]:        # (swa_utils' "average" and L-BFGS's kernels have none)
        row[_kernels.SCALARS[name].index("sign")] = 1.0
    return plan, params, state, row


def _bad_modes(name):
    allowed = _kernels.MODES[name]
    return [min(set(range(65)) - set(allowed)), 64, -1, 1.5, math.nan, 1e300]


def _run(plan, name):
    if name in _kernels.KERNEL_IDS:
        plan.run(_kernels.KERNEL_IDS[name])
    else:
        plan.reduce(_kernels.REDUCE_IDS[name])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(NSTATE))
def test_a_mode_the_kernel_does_not_implement_is_refused_and_nothing_changes(name, dtype):
    col = _kernels.SCALARS[name].index("mode")
    for bad in _bad_modes(name):
        plan, params, state, row = _plan(name, dtype)
        before = [a.copy() for a in params] + [a.copy() for s in state for a in s]
        row[col] = float(_kernels.MODES[name][0])
        plan.set_scalars(tuple(row))
        plan.set_scalars(tuple(row[:col] + [bad] + row[col + 1:]), tensor=1)
        allowed = ", ".join(map(str, _kernels.MODES[name]))
        with pytest.raises(ValueError, match=rf"kernel '{name}' has no mode .* \(tensor 1\); "
                                             rf"its modes are \({allowed}\)"):
            _run(plan, name)
        after = params + [a for s in state for a in s]
        for a, b in zip(before, after):
            assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("name", sorted(NSTATE))
def test_every_allowed_mode_runs_and_inactive_tensors_are_not_checked(name):
    col = _kernels.SCALARS[name].index("mode")
    for mode in _kernels.MODES[name]:
        plan, params, state, row = _plan(name, np.float32)
        row[col] = float(mode)
        plan.set_scalars(tuple(row))
        _run(plan, name)
    # A tensor without a grad in this step is not run, so its stale mode is not checked.
    plan, params, state, row = _plan(name, np.float32)
    row[col] = float(_kernels.MODES[name][0])
    plan.set_scalars(tuple(row))
    plan.hp_array[1, col] = 63.0 if 63 not in _kernels.MODES[name] else -1.0
    plan.bind([np.ones_like(params[0]), None])
    before = params[1].copy()
    _run(plan, name)
    assert np.array_equal(params[1], before)


def test_a_plan_too_narrow_for_the_mode_column_is_refused():
    p = np.zeros(10, np.float32)
    plan = _kernels.Plan([p], [[np.zeros_like(p)]], 1, 2, ["p"])
    plan.bind([np.zeros_like(p)])
    with pytest.raises(ValueError, match="reads its mode from scalar 6, but this plan has 2"):
        plan.run(_kernels.KERNEL_IDS["sgd"])
