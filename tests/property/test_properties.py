"""Property-based tests (issue 16): hypothesis draws the optimizer (every registered one, from
tests/cases.py), its hyperparameters with edge values, the precision rows its kernel
registered, shapes around the driver's unit and serial threshold, group structures, None grads,
grad scales, thread counts and checkpoint points (tests/property/scenarios.py). Asserted:

* the fused step equals its NumPy reference twin bitwise (any NaN equals any NaN there: IEEE
  754 leaves a NaN's sign and payload to the implementation; LAMB and LARS in float64 and
  Muon's params at the tolerances their Cases state, which the other checks do not need);
* a rejected input raises a clear error and leaves params, grads, state and hyperparameters
  bitwise unchanged (and the optimizer steps on exactly as if it never saw it);
* a run resumed from state_dict/load_state_dict or fo.save/fo.load equals an unbroken one;
* the thread count does not change a bit.

Examples per test and their seeding: the "ci" and "long" profiles in tests/conftest.py.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile

import numpy as np
import pytest

pytest.importorskip("hypothesis")  # the test extra brings it

from hypothesis import assume, given, note, strategies as st  # noqa: E402
from threadpoolctl import threadpool_limits

import fusedoptim as fo
from fusedoptim.optim import muon as muon_mod
from scenarios import (ALL_CASES, PRECISIONS, Scenario, bitwise_diff, field_slots,
                       refused_values, same_bits, same_groups, scenarios, set_field, spec_of,
                       state_arrays, state_diff)
from test_optimizers import F64_RTOL

# NumPy warns on the overflows and invalid operations that edge values cause on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _run(sc: Scenario, opt, params, steps=None):
    with np.errstate(all="ignore"):
        for k in range(len(sc.steps) if steps is None else steps):
            sc.step(opt, k)


def _build_or_refuse(sc: Scenario, params, **extra):
    """The optimizer, or None when the drawn edge values break a rule between fields (a
    cross-field check): then the refusal must name a field and write nothing."""
    before = [p.copy() for p in params]
    try:
        return sc.build(params, **extra)
    except (ValueError, TypeError) as err:
        names = {arg for _, arg, _, _ in field_slots(sc.case)}
        assert any(n in str(err) for n in names), str(err)
        assert not bitwise_diff(params, before)
        return None


def test_every_registered_optimizer_is_drawn():
    from fusedoptim import _spec
    assert {c.fused for c in ALL_CASES} == {s.cls for s in _spec.registered()}
    # each with the precision rows its kernel registered (plain float32 at least)
    assert all(PRECISIONS[c.name] for c in ALL_CASES)


# -- 1. fused == reference twin ------------------------------------------------------------------

def _muon_tolerance(sc: Scenario, params, start) -> dict:
    """Muon's Newton-Schulz products run in BLAS, in another summation order than the twin's
    (tests/test_muon.py states the bound): per step lr * ratio * 64 eps of the update plus a
    few ulp of |p|, summed over the steps. That assumes a converging iteration, whose update
    has entries of at most about 1. Random coefficients and up to 99 iterations can make it
    diverge instead (the twin's params reached 1e69 in one case hypothesis found); then each
    iteration applies a quintic to X, which multiplies a relative error by up to its degree,
    5, so the update's rounding is bounded by 64 eps * 5^ns_steps of its own size."""
    eps = float(np.finfo(sc.precision.param_dtype).eps)
    settings = [dict(sc.kwargs, **over) for over in sc.overrides]
    lrs = [kw["lr"] for kw in settings]
    ratio = max([muon_mod.adjusted_ratio(s, sc.kwargs.get("adjust_lr_fn")) for s in sc.shapes
                 if min(s, default=0) > 0] or [1.0])

    def largest(arrays) -> float:
        return max([float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0)) for a in arrays]
                   or [0.0])
    pmax = largest(params)
    per_step = max(lrs) * ratio * 64 * eps + 8 * eps * pmax
    moved = largest([p - p0 for p, p0 in zip(params, start)])
    # a converging update's entries are at most about 1.2 (its singular values near 1)
    decay = max(kw["lr"] * kw["weight_decay"] for kw in settings)
    converging = (max(lrs) * ratio * 2 + decay * pmax) * len(sc.steps)
    if moved > converging:
        ns_steps = max(kw["ns_steps"] for kw in settings)
        per_step = moved * 64 * eps * 5.0 ** ns_steps + 8 * eps * pmax
    return dict(rtol=0, atol=len(sc.steps) * per_step, equal_nan=True)


@given(scenarios())
def test_fused_step_equals_its_reference_twin(sc: Scenario):
    note(repr(sc))
    start = sc.start()
    params, twin_params = [p.copy() for p in start], [p.copy() for p in start]
    opt = _build_or_refuse(sc, params)
    if opt is None:
        with pytest.raises((ValueError, TypeError)):
            sc.build(twin_params, twin=True)
        return
    twin = sc.build(twin_params, twin=True)
    with np.errstate(all="ignore"):
        for k in range(len(sc.steps)):
            assert sc.step(opt, k) == sc.step(twin, k)
    if sc.case.tensor_norms and sc.precision.param_dtype == np.float64:
        # LAMB, LARS in float64: the kernel sums each tensor's norm in double in another
        # order than NumPy, so the trust ratios, and with them params and moments, differ by
        # rounding (Case.tensor_norms); in float32 and below the double sums round to the
        # same float and everything agrees bitwise.
        a, b = state_arrays(opt), state_arrays(twin)
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], np.ndarray):
                _assert_close_to_tensor_scale(a[key], b[key])
            else:
                assert same_bits(a[key], b[key], nan_equal=True), key
        for p, q in zip(params, twin_params):
            _assert_close_to_tensor_scale(p, q)
        return
    assert state_diff(opt, twin, nan_equal=True) == []
    if sc.case.blas_step:
        for p, q in zip(params, twin_params):
            np.testing.assert_allclose(p, q, **_muon_tolerance(sc, twin_params, start))
    else:
        assert bitwise_diff(params, twin_params, nan_equal=True) == []


def _assert_close_to_tensor_scale(actual, expected):
    """test_optimizers' float64 tensor_norms tolerance (F64_RTOL of each element and of its
    tensor's largest finite magnitude), with NaN and Inf in the same places."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    scale = float(np.max(np.abs(expected[np.isfinite(expected)]), initial=0.0))
    np.testing.assert_allclose(actual, expected, rtol=F64_RTOL,
                               atol=max(F64_RTOL * scale, 1e-300), equal_nan=True)


# -- 2. a rejected input changes nothing ---------------------------------------------------------

BAD_GRADS = ["count", "shape", "dtype", "layout", "type", "alias"]
BAD_SCALES = [0.0, -2.0, math.nan, math.inf, "2", np.array([1.0, 2.0])]
# (A slot missing from a param's entry is not bad input: load_state_dict fills it with its
# initial value, by design, as when amsgrad is switched on; fusedoptim._state.ensure_state.)
BAD_STATE = ["shape", "dtype", "step", "groups", "hyper"]


def _bad_grads(sc: Scenario, params, grads, draw):
    """A copy of valid grads with one thing wrong, and the word the error must contain."""
    grads = list(grads)
    i = draw(st.integers(0, len(params) - 1))
    p = params[i]
    kind = draw(st.sampled_from(BAD_GRADS))
    if kind == "count":
        grads = grads + [grads[-1]] if draw(st.booleans()) or len(grads) == 1 else grads[:-1]
        return grads, "grads"
    if kind == "shape":
        grads[i] = np.zeros(p.shape + (2,), sc.grad_dtype)
    elif kind == "dtype":
        accepted = set(sc.precision.grad_dtypes)
        others = [d for d in (np.dtype(np.int32), np.dtype(np.complex64), np.dtype(np.float64),
                              np.dtype(np.float32), np.dtype(np.float16)) if d not in accepted]
        grads[i] = np.zeros(p.shape, draw(st.sampled_from(others)))
    elif kind == "layout":
        assume(p.size > 1)
        grads[i] = np.zeros((p.size * 2,), sc.grad_dtype)[::2].reshape(p.shape) \
            if p.ndim <= 1 else np.asfortranarray(np.zeros(p.shape, sc.grad_dtype))
        assume(not grads[i].flags.c_contiguous)
    elif kind == "type":
        grads[i] = np.zeros(p.shape).tolist()
    else:
        assume(p.size > 0 and p.dtype in sc.precision.grad_dtypes)
        grads[i] = p                                       # the param as its own grad
    return grads, "grads"


def _refusable_fields(case):
    """The fields a param group holds whose validator has values to refuse."""
    return [f for f in field_slots(case) if refused_values(f[3])
            and f[1] in spec_of(case).group_keys]


def _bad_state_dict(sc: Scenario, opt, draw):
    sd = copy.deepcopy(opt.state_dict())
    kind = draw(st.sampled_from(BAD_STATE))
    arrays = [(i, k) for i, s in sd["state"].items() for k, v in s.items()
              if isinstance(v, np.ndarray) and v.size > 0]
    if kind in ("shape", "dtype", "step") and not arrays:
        kind = "hyper"
    if kind == "groups" and len(sd["param_groups"]) == 1:
        kind = "hyper"
    if kind == "shape":
        i, k = draw(st.sampled_from(arrays))
        sd["state"][i][k] = np.zeros(sd["state"][i][k].size + 1, sd["state"][i][k].dtype)
    elif kind == "dtype":
        i, k = draw(st.sampled_from(arrays))
        v = sd["state"][i][k]
        sd["state"][i][k] = v.astype(np.float64 if v.dtype != np.float64 else np.float32)
    elif kind == "step":
        i = draw(st.sampled_from(sorted({i for i, _ in arrays})))
        sd["state"][i]["step"] = draw(st.sampled_from([-1, 1.5, math.nan, "3", None]))
    elif kind == "groups":
        del sd["param_groups"][-1]
    else:
        name, arg, index, validator = draw(st.sampled_from(_refusable_fields(sc.case)))
        g = sd["param_groups"][draw(st.integers(0, len(sd["param_groups"]) - 1))]
        set_field(g, arg, index, draw(st.sampled_from(refused_values(validator))))
    note(f"bad state_dict: {kind}")
    return sd


def _snapshot(opt, params, extra_arrays):
    return ([p.copy() for p in params], copy.deepcopy(opt.state_dict()),
            [None if a is None else np.array(a, copy=True) if isinstance(a, np.ndarray)
             else copy.deepcopy(a) for a in extra_arrays])


@given(scenarios(max_steps=3), st.sampled_from(["hyper", "grads", "grad_scale",
                                                "load_state_dict", "fo.load"]), st.data())
def test_a_rejected_input_changes_nothing(sc: Scenario, kind: str, data):
    """After some valid steps, one bad input of `kind`: it raises a ValueError or TypeError
    whose message names what is wrong, and params, the grads passed, the state and every
    hyperparameter stay bitwise as they were; then the optimizer steps on exactly as a twin
    that never saw the bad input."""
    note(repr(sc))
    params, control_params = sc.start(), sc.start()
    opt = _build_or_refuse(sc, params)
    assume(opt is not None)
    control = sc.build(control_params)
    done = data.draw(st.integers(0, len(sc.steps) - 1))
    _run(sc, opt, params, done)
    _run(sc, control, control_params, done)
    grads = sc.grads(done)
    before = _snapshot(opt, params, [])
    restore = None
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "hyper":
            name, arg, index, validator = data.draw(st.sampled_from(_refusable_fields(sc.case)))
            group = opt.param_groups[data.draw(st.integers(0, len(opt.param_groups) - 1))]
            restore = (group, arg, group[arg])
            set_field(group, arg, index, data.draw(st.sampled_from(refused_values(validator))))
            word, call = arg, lambda: opt.step(grads)
        elif kind == "grads":
            bad, word = _bad_grads(sc, params, grads, data.draw)
            grads = bad
            call = lambda: opt.step(bad)
        elif kind == "grad_scale":
            scale = data.draw(st.sampled_from(BAD_SCALES))
            word, call = "grad_scale", lambda: opt.step(grads, grad_scale=scale)
        elif kind == "load_state_dict":
            sd = _bad_state_dict(sc, opt, data.draw)
            word, call = "state_dict", lambda: opt.load_state_dict(sd)
        else:
            # a checkpoint of the same optimizer over other shapes (one more row)
            other = [np.zeros((p.shape[0] + 1, *p.shape[1:]) if p.ndim else (1,), p.dtype)
                     for p in params]
            other_sc = copy.copy(sc)
            other_sc.shapes = [o.shape for o in other]
            path = os.path.join(tmp, "other.safetensors")
            fo.save(path, _build_or_refuse(other_sc, other) or pytest.skip("unreachable"))
            word, call = path, lambda: fo.load(path, opt)      # the message names the file
        grads_before = _snapshot(opt, params, grads)[2]
        with np.errstate(all="ignore"):
            with pytest.raises((ValueError, TypeError)) as err:
                call()
    assert word in str(err.value) and len(str(err.value)) > 20, str(err.value)
    if restore is not None:
        group, arg, value = restore
        group[arg] = value
    assert bitwise_diff(params, before[0]) == []
    assert bitwise_diff(grads, grads_before) == []
    assert same_groups(opt.state_dict()["param_groups"], before[1]["param_groups"])
    assert state_diff(opt, control) == []
    # and it steps on as the control that never saw the bad input
    with np.errstate(all="ignore"):
        for k in range(done, len(sc.steps)):
            sc.step(opt, k)
            sc.step(control, k)
    assert bitwise_diff(params, control_params) == []
    assert state_diff(opt, control) == []


# -- 3. a resumed run equals an unbroken one -----------------------------------------------------

SCHEDULERS = {
    None: None,
    "StepLR": lambda o: fo.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "CosineAnnealingLR": lambda o: fo.lr_scheduler.CosineAnnealingLR(o, T_max=5),
    "LinearLR": lambda o: fo.lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=3),
}


@given(scenarios(min_steps=2, max_steps=7), st.sampled_from(sorted(SCHEDULERS, key=str)),
       st.data())
def test_a_resumed_run_equals_an_unbroken_one(sc: Scenario, sched_name, data):
    """Checkpoints at random steps, each by state_dict/load_state_dict (into an optimizer
    built afresh on copies of the params) or by fo.save/fo.load (params, optimizer and
    scheduler through a file, into arrays of garbage), then on to the end: params, state,
    hyperparameters and the scheduler's lr bitwise those of the run never interrupted."""
    note(repr(sc))
    make_sched = SCHEDULERS[sched_name]
    params = sc.start()
    opt = _build_or_refuse(sc, params)
    assume(opt is not None)
    sched = make_sched(opt) if make_sched else None
    cuts = data.draw(st.lists(st.tuples(st.integers(1, len(sc.steps) - 1),
                                        st.sampled_from(["state_dict", "file"])),
                              min_size=1, max_size=3, unique_by=lambda c: c[0]))
    cuts = dict(cuts)
    unbroken_params = sc.start()
    unbroken = sc.build(unbroken_params)
    unbroken_sched = make_sched(unbroken) if make_sched else None
    with np.errstate(all="ignore"), tempfile.TemporaryDirectory() as tmp:
        for k in range(len(sc.steps)):
            if k in cuts:
                names = {f"p{i}": p for i, p in enumerate(params)}
                if cuts[k] == "state_dict":
                    saved = (opt.state_dict(), sched.state_dict() if sched else None)
                    new_params = [p.copy() for p in params]
                    sc.step(opt, k)      # a step after saving must not reach the checkpoint
                else:
                    path = os.path.join(tmp, f"ckpt{k}.safetensors")
                    fo.save(path, opt, scheduler=sched, params=names)
                    new_params = [np.full_like(p, np.nan) for p in params]
                params = new_params
                opt = sc.build(params)
                sched = make_sched(opt) if make_sched else None
                if cuts[k] == "state_dict":
                    opt.load_state_dict(saved[0])
                    if sched:
                        sched.load_state_dict(saved[1])
                else:
                    fo.load(path, opt, scheduler=sched,
                            params={f"p{i}": p for i, p in enumerate(params)})
            for o, s in ((opt, sched), (unbroken, unbroken_sched)):
                sc.step(o, k)
                if s:
                    s.step()
    assert bitwise_diff(params, unbroken_params) == []
    assert state_diff(opt, unbroken) == []
    if sched:
        assert sched.get_last_lr() == unbroken_sched.get_last_lr()


# -- 4. thread counts do not change bits ---------------------------------------------------------

@given(scenarios(big=True, max_steps=3), st.integers(2, 4),
       st.sampled_from(["fo.set_num_threads", "threadpoolctl"]))
def test_thread_counts_do_not_change_bits(sc: Scenario, threads: int, how: str):
    """More than 32768 elements (the driver's serial threshold), so the passes split over
    threads: 2-4 threads, set by fusedoptim's own setting or threadpoolctl's (the same
    OpenMP knob), give the bits of 1 thread. Muon's BLAS threads are held at 1 (its
    iteration's products are a function of the BLAS thread count, not of ours)."""
    note(repr(sc))
    extra = {"blas_threads": 1} if sc.case.blas_step else {}
    results = []
    before = fo.get_num_threads()
    for n in (1, threads):
        params = sc.start()
        opt = _build_or_refuse(sc, params, **extra)
        assume(opt is not None)
        try:
            if how == "threadpoolctl":
                with threadpool_limits(n):
                    _run(sc, opt, params)
            else:
                fo.set_num_threads(n)
                _run(sc, opt, params)
        finally:
            fo.set_num_threads(before)
        results.append((params, opt))
    (p1, o1), (pn, on) = results
    assert bitwise_diff(p1, pn) == []
    assert state_diff(o1, on) == []


@pytest.mark.parametrize("name", ["Adam", "ASGD", "ScheduleFreeAdamW"])
def test_a_skipped_step_leaves_the_step_count_of_an_empty_param_in_another_group(name):
    # Found by the long profile: the gate put back the gated group's step counts only, and a
    # group before it (only empty params: it writes nothing, so it is not the gated one)
    # kept its advanced count (and, with ASGD or Schedule-Free, its scalar state).
    states = []
    for cls in (getattr(fo, name), getattr(fo.reference, name)):
        p = [np.zeros((0,)), np.ones(()), np.ones(())]
        opt = cls([{"params": p[:1]}, {"params": p[1:]}], skip_nonfinite=True)
        assert opt.step([np.zeros((0,)), np.ones(()), np.ones(())]) is True
        assert opt.step([np.zeros((0,)), np.array(np.nan), np.ones(())]) is False
        states.append([{k: float(np.asarray(v).sum()) if k != "step" else v
                        for k, v in opt.state[i].items()} for i in range(3)])
    assert [s["step"] for s in states[0]] == [1, 1, 1]
    assert states[0] == states[1]
