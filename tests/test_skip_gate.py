"""skip_nonfinite's check inside the update pass (the plan's gate).

The first group to be written checks its grads in the same parallel region as its update: every
thread checks its units, a barrier, then the update runs only if no unit found a NaN or Inf.
These tests put the bad value in every place that could slip past such a gate (first, middle
and last work unit, the last element, another thread's units, a later group, a group after an
empty one) and require the step to leave every byte and every counter as it was.
"""

import copy

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import _kernels
from cases import CASES

CHUNK = _kernels.CHUNK_ELEMENTS
BY_NAME = {c.name: c for c in CASES}
# Kernels with per-tensor scalar state (NAdam's mu_product, ASGD's eta and mu), two-pass steps
# (LAMB: the first pass writes the moments; LARS), and plain one-pass kernels.
GATED_CASES = ["AdamW", "Adam", "NAdam", "ASGD", "LAMB", "LARS", "SGD", "Rprop"]


def _snapshot(params, opt):
    return [p.copy() for p in params], copy.deepcopy(opt.state_dict())


def _assert_unchanged(params, opt, snap):
    for a, b in zip(params, snap[0]):
        assert a.tobytes() == b.tobytes()
    now = opt.state_dict()
    assert now["state"].keys() == snap[1]["state"].keys()
    for i, st in now["state"].items():
        assert st.keys() == snap[1]["state"][i].keys()
        for k, v in st.items():
            w = snap[1]["state"][i][k]
            if isinstance(v, np.ndarray):
                assert v.tobytes() == w.tobytes(), (i, k)
            else:
                assert v == w and type(v) is type(w), (i, k, v, w)


def _bad_positions(n):
    """Flat indices in a tensor of n elements: first/middle/last unit, the very last element."""
    units = -(-n // CHUNK)
    return [0, (units // 2) * CHUNK + 17, (units - 1) * CHUNK + 3, n - 1]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("name", GATED_CASES)
def test_gate_vetoes_a_bad_value_in_any_unit(name, threads, rng):
    """One 7-unit tensor beside small ones (parallel path for threads > 1): a NaN/Inf in any
    unit, on any thread's share, vetoes the whole step; clean steps in between give exactly
    the trajectory of an optimizer that never saw the bad ones."""
    case = BY_NAME[name]
    kw = case.sample(rng)
    n = 7 * CHUNK - 5
    start = [rng.standard_normal(s).astype(np.float32) for s in ((3, 4), (n,), (9,))]
    params = [p.copy() for p in start]
    clean_params = [p.copy() for p in start]
    saved = fo.get_num_threads()
    fo.set_num_threads(threads)
    try:
        opt = case.fused(params, skip_nonfinite=True, **kw)
        clean = case.fused(clean_params, **kw)
        g0 = [rng.standard_normal(p.shape).astype(np.float32) for p in start]
        assert opt.step(g0) is True           # state exists: later steps are gated in-pass
        clean.step(g0)
        skipped = 0
        for k, pos in enumerate(_bad_positions(n)):
            g = [rng.standard_normal(p.shape).astype(np.float32) for p in start]
            bad = [x.copy() for x in g]
            bad[1][pos] = [np.nan, np.inf, -np.inf][k % 3]
            snap = _snapshot(params, opt)
            assert opt.step(bad) is False
            skipped += 1
            assert opt.skipped_steps == skipped
            _assert_unchanged(params, opt, snap)
            assert opt.step(g) is True
            clean.step(g)
        for a, b in zip(params, clean_params):
            assert a.tobytes() == b.tobytes()
    finally:
        fo.set_num_threads(saved)


@pytest.mark.parametrize("bad_group", [1, 2])
def test_groups_checked_up_front_and_in_pass(bad_group, rng):
    """Group 0 has no grads, so group 1 is checked inside its pass and group 2 before it. A bad
    value in either vetoes the step, and group 1's step count is put back."""
    params = [rng.standard_normal(s).astype(np.float32) for s in ((5,), (3 * CHUNK,), (7,))]
    groups = [{"params": [params[0]]}, {"params": [params[1]]}, {"params": [params[2]]}]
    opt = fo.NAdam(groups, lr=1e-2, skip_nonfinite=True)
    g = [None, rng.standard_normal(3 * CHUNK).astype(np.float32),
         rng.standard_normal(7).astype(np.float32)]
    assert opt.step(g) is True
    bad = [None, g[1].copy(), g[2].copy()]
    bad[bad_group][-1] = np.nan
    snap = _snapshot(params, opt)
    assert opt.step(bad) is False
    _assert_unchanged(params, opt, snap)
    assert opt.state[1]["step"] == 1 and opt.state[1]["mu_product"] == snap[1]["state"][1]["mu_product"]
    assert opt.step(g) is True
    assert opt.state[1]["step"] == 2 and opt.state[2]["step"] == 2


def test_reference_twins_still_skip(rng):
    """The NumPy twins step in NumPy (no plan passes): their check runs before the step."""
    params = [rng.standard_normal(40).astype(np.float64)]
    opt = fo.reference.AdamW(params, lr=1e-2, skip_nonfinite=True)
    g = [rng.standard_normal(40)]
    assert opt.step(g) is True
    bad = [g[0].copy()]
    bad[0][7] = np.inf
    snap = _snapshot(params, opt)
    assert opt.step(bad) is False
    _assert_unchanged(params, opt, snap)


def test_a_run_override_that_drives_no_pass_fails_loudly(rng):
    """A subclass whose step bypasses the plan would leave the in-pass check unrun: refuse."""
    class Bypass(fo.SGD):
        def _run(self, plan, hyper):
            pass
    params = [rng.standard_normal(10).astype(np.float32)]
    opt = Bypass(params, lr=0.1, skip_nonfinite=True)
    g = [np.ones(10, np.float32)]
    opt.step(g)                   # first step creates no state for plain SGD: nothing pending
    with pytest.raises(RuntimeError, match="skip_nonfinite"):
        opt.step(g)


def test_plan_gate_outcomes(rng):
    """The Plan-level contract: unused / passed / tripped, later passes vetoed after a trip,
    and a gated pass cannot also stop early."""
    params = [rng.standard_normal(3 * CHUNK).astype(np.float32)]
    opt = fo.SGD(params, lr=0.5)
    g = [np.ones(3 * CHUNK, np.float32)]
    opt.step(g)
    plan = opt._caches[0].plan
    nonfinite = _kernels.REDUCE_IDS["nonfinite"]
    sgd = _kernels.KERNEL_IDS["sgd"]
    plan.arm_gate(nonfinite)
    assert plan.disarm_gate() == "unused"
    before = params[0].copy()
    plan.arm_gate(nonfinite)
    plan.run(sgd)
    assert plan.disarm_gate() == "passed"
    assert not np.array_equal(params[0], before)
    g[0][-1] = np.nan
    plan.bind(g)
    before = params[0].copy()
    plan.arm_gate(nonfinite)
    plan.run(sgd)
    plan.run(sgd)                 # a later pass of the vetoed step: also nothing
    assert plan.disarm_gate() == "tripped"
    assert params[0].tobytes() == before.tobytes()
    # A gated job's own nonzero returns are results, not vetoes: NaN params, finite grads.
    g[0][-1] = 1.0
    plan.bind(g)
    params[0][5] = np.nan
    plan.arm_gate(nonfinite)
    assert plan.reduce(nonfinite, 0)[1][0] == 1.0
    assert plan.disarm_gate() == "passed"
    plan.arm_gate(nonfinite)
    with pytest.raises(ValueError, match="stop early"):
        plan.reduce(nonfinite, 1, True)
    plan.disarm_gate()
    with pytest.raises(ValueError, match="unknown reduce kernel"):
        plan.arm_gate(10_000)


def test_undo_advance_restores_steps_and_scalar_state(rng):
    params = [rng.standard_normal(5).astype(np.float32) for _ in range(3)]
    opt = fo.NAdam(params, lr=1e-2)
    opt.step([np.ones(5, np.float32)] * 3)
    plan = opt._caches[0].plan
    steps, sstate = plan.steps_array.copy(), plan.sstate_array.copy()
    plan.arm_gate(_kernels.REDUCE_IDS["nonfinite"])
    plan.advance()
    plan.sstate_array[:] = 42.0
    plan.undo_advance()
    plan.disarm_gate()
    assert np.array_equal(plan.steps_array, steps)
    assert plan.sstate_array.tobytes() == sstate.tobytes()
