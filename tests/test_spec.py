"""The optimizer specs (fusedoptim._spec): every registered spec has its class, functional entry
and reference twin, and they agree; a bad spec is refused when it is made; a new optimizer
declared in a module of its own goes the whole path (discovered, functional entry, twin)."""

import inspect
import sys
import textwrap
from functools import partial
from typing import Annotated, NamedTuple

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import _kernels, _spec
from fusedoptim import _validation as v
from fusedoptim._backend import FusedBackend, ReferenceBackend
from fusedoptim._spec import OptSpec, ScalarSlot, Slot
from cases import CASES
from conftest import make_params
from test_optimizers import assert_close_to_reference

SPECS = _spec.registered()
spec_ids = [s.name for s in SPECS]
CASE_OF = {c.fused: c for c in CASES}
# Optimizers whose params the generic battery cannot use (it steps 1-D arrays; Muon takes only
# matrices, and its BLAS part is compared at a stated tolerance, not ulps). Each runs the same
# battery in its own module, including this module's checks that need a Case (the functional
# entry against the class and the reference, and its fast check).
# Prodigy shares one step size across groups (every lr equal or 0), which the generic
# battery's two-lr groups cannot be: test_prodigy.py runs the battery for it.
OWN_BATTERY = {"muon": "test_muon.py", "prodigy": "test_prodigy.py"}
CASED = [s for s in SPECS if s.name not in OWN_BATTERY]
cased_ids = [s.name for s in CASED]


def _params(kind):
    return [p for p in inspect.signature(kind).parameters.values()]


# -- the registry -------------------------------------------------------------------------------

def test_every_optimizer_class_is_registered_and_exported():
    classes = {s.cls for s in SPECS}
    assert None not in classes and len(classes) == len(SPECS)
    for s in SPECS:
        assert getattr(fo, s.cls.__name__) is s.cls
        assert getattr(fo.optim, s.cls.__name__) is s.cls
        assert s.cls.__name__ in fo.__all__ and s.cls.__name__ in fo.optim.__all__
        assert s.cls.spec is s and s.cls._kernel == s.kernel
    # today's fourteen, by their public names
    assert {s.cls.__name__ for s in SPECS} >= {
        "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Lion", "Rprop", "ASGD", "SGD", "Adagrad",
        "RMSprop", "Adadelta", "LAMB", "LARS"}


@pytest.mark.parametrize("spec", SPECS, ids=spec_ids)
def test_every_spec_has_a_functional_entry_a_reference_function_and_a_twin(spec):
    entry = getattr(fo.functional, spec.name)
    assert entry.__module__ == "fusedoptim.functional" and entry.__doc__ == spec.doc
    ref_fn = getattr(fo.reference, spec.name)
    twin = getattr(fo.reference, spec.cls.__name__)
    assert issubclass(twin, spec.cls) and twin is not spec.cls
    assert isinstance(twin._backend, ReferenceBackend)
    assert twin._backend.fn is getattr(fo.reference, (spec.base or spec).name)
    assert isinstance(spec.cls._backend, FusedBackend)
    assert callable(ref_fn)


@pytest.mark.parametrize("spec", SPECS, ids=spec_ids)
def test_every_spec_is_covered_by_a_case(spec):
    """tests/cases.py runs the generic battery (reference, torch, checkpoints, bad input,
    skip_nonfinite, grad_scale, every ISA level) for each Case: a new optimizer needs one,
    or a module of its own that runs the battery (OWN_BATTERY)."""
    if spec.name in OWN_BATTERY:
        import os
        assert os.path.exists(os.path.join(os.path.dirname(__file__), OWN_BATTERY[spec.name]))
        assert spec.cls not in CASE_OF
        return
    assert spec.cls in CASE_OF, f"add a Case for {spec.cls.__name__} to tests/cases.py"


@pytest.mark.parametrize("spec", SPECS, ids=spec_ids)
def test_the_functional_entry_has_the_reference_functions_signature(spec):
    """The entry is generated; the NumPy function is written by hand: same names, kinds and
    defaults (annotations differ: the reference reads what it is given). The reference may
    take private keyword hooks for its twin (lamb's _store); the public ones must agree."""
    entry, ref = getattr(fo.functional, spec.name), getattr(fo.reference, spec.name)
    shape = lambda fn: [(p.name, p.kind, p.default) for p in _params(fn)
                        if not p.name.startswith("_")]
    assert shape(entry) == shape(ref)


@pytest.mark.parametrize("spec", SPECS, ids=spec_ids)
def test_the_functional_entry_is_the_spec(spec):
    params = _params(getattr(fo.functional, spec.name))
    lists = [s.list_name for s in spec.state] + [s.list_name for s in spec.scalar_state]
    assert [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD] == \
        ["params", "grads", *lists, "state_steps"]
    keywords = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    assert list(keywords) == list(spec.functional_fields)
    for name, default in keywords.items():
        assert default == spec.defaults.get(name, inspect.Parameter.empty)


def test_hyperparameters_are_named():
    opt = fo.AdamW([np.zeros(3, np.float32)], lr=0.1, amsgrad=True)
    hyper = opt._caches[0].hyper
    assert type(hyper) is fo.optim.adam.AdamHyper
    assert hyper.amsgrad is True and hyper.lr == 0.1 and hyper.decoupled_weight_decay is True
    assert hyper.beta1 == 0.9 and hyper.weight_decay == 1e-2
    assert opt._caches[0].wanted == ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


# -- class, functional entry and reference function agree, for every spec --------------------

def _functional_state(spec, hyper, params):
    lists = []
    for slot in spec.state:
        used = slot.used is None or getattr(hyper, slot.used)
        if not used:
            lists.append(None)
        elif slot.fresh:
            lists.append([None] * len(params))          # the functional call creates them
        else:
            lists.append([np.full_like(p, spec.initial(slot.name, hyper)) for p in params])
    scalars = [[spec.initial(s.name, hyper)] * len(params) for s in spec.scalar_state]
    return lists, scalars


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", CASED, ids=cased_ids)
def test_functional_entry_matches_the_class_bitwise_and_the_reference(spec, dtype, rng):
    case = CASE_OF[spec.cls]
    kw = case.sample(rng)
    start = make_params(rng, dtype)
    p_cls, p_fun, p_ref = ([p.copy() for p in start] for _ in range(3))
    opt = spec.cls(p_cls, **kw)
    hyper = opt._caches[0].hyper
    fkw = spec.functional_kwargs(hyper)
    lists, scalars = _functional_state(spec, hyper, p_fun)
    ref_lists, ref_scalars = _functional_state(spec, hyper, p_ref)
    steps, ref_steps = [0] * len(start), [0] * len(start)
    entry, ref = getattr(fo.functional, spec.name), getattr(fo.reference, spec.name)
    for _ in range(12):
        g = [np.asarray(rng.standard_normal(p.shape), dtype) for p in start]
        opt.step(g)
        entry(p_fun, g, *lists, *scalars, steps, **fkw)
        ref(p_ref, g, *ref_lists, *ref_scalars, ref_steps, **fkw)
    for a, b in zip(p_cls, p_fun):
        assert a.tobytes() == b.tobytes()
    assert_close_to_reference(p_fun, p_ref, case.tensor_norms)
    assert steps == ref_steps == [12] * len(start)
    for i, st in opt.state.items():
        for slot, lst in zip(spec.state, lists):
            if slot.name in st:
                assert st[slot.name].tobytes() == lst[i].tobytes()
        for s, values in zip(spec.scalar_state, scalars):
            assert st[s.name] == values[i]


# -- bad specs are refused when they are made ---------------------------------------------------

def _adam_like(**changes):
    class H(NamedTuple):
        lr: Annotated[float, v.finite_nonneg]
        maximize: Annotated[bool, v.flag] = False

    def scalars(step, lr, maximize):
        return (-1.0 if maximize else 1.0,)
    args = dict(name="toy", hyper=H, scalars=scalars, kernel="lion")
    args.update(changes)
    return OptSpec(args.pop("name"), args.pop("hyper"), args.pop("scalars"), **args)


def test_a_well_formed_spec_is_accepted_and_not_registered_until_bound():
    spec = _adam_like(state=(Slot("m", "ms", used="maximize"),))
    assert spec.group_keys == ("lr", "maximize") and spec.slot_names == ("m",)
    assert spec.check(0.5).lr == 0.5 and spec.check(lr=1, maximize=1) == (1.0, True)
    assert _spec.get("toy") is None


@pytest.mark.parametrize("annotation,exc,words", [
    ("float", TypeError, "Annotated[type, validator]"),                 # no validator
    ("Annotated[float, 'not callable']", TypeError, "one callable validator"),
    ("Annotated[float, v.positive]", ValueError, "refuses its default 0.0"),
    ("Annotated[float, lambda x, name: 1.0]", ValueError, "does not return its default"),
    ("Annotated[float, undefined_name]", TypeError, "do not evaluate"),
])
def test_a_spec_with_a_bad_validator_is_refused(annotation, exc, words):
    # evaluated by the spec, in this module's namespace (as a spec's, in its module's)
    namespace = {"NamedTuple": NamedTuple, "__name__": __name__}
    exec(textwrap.dedent(f"""
        from __future__ import annotations
        class H(NamedTuple):
            lr: Annotated[float, v.finite_nonneg]
            weight_decay: {annotation} = 0.0
    """), namespace)

    def scalars(step, lr, weight_decay):
        return (1.0,)
    with pytest.raises(exc) as err:
        _adam_like(hyper=namespace["H"], scalars=scalars)
    assert "OptSpec 'toy'" in str(err.value) and words in str(err.value)


def test_a_spec_whose_scalars_do_not_take_its_fields_in_order_is_refused():
    with pytest.raises(TypeError, match=r"scalars must take \['step', 'lr', 'maximize'\]"):
        _adam_like(scalars=lambda step, maximize, lr: (1.0,))
    with pytest.raises(TypeError, match="and fresh="):
        _adam_like(state=(Slot("m", "ms", fresh=True),))
    with pytest.raises(TypeError, match=r"\['step', 'mu', 'lr', 'maximize'\]"):
        _adam_like(scalar_state=(ScalarSlot("mu", "mus", init=1.0),))


@pytest.mark.parametrize("changes,exc,words", [
    (dict(kernel="no_such_kernel"), ValueError, "kernel 'no_such_kernel' is not registered"),
    (dict(name="not a name"), ValueError, "identifier"),
    (dict(hyper=tuple), TypeError, "NamedTuple"),
    (dict(pairs={"betas": ("lr", "nope")}), ValueError, "two adjacent fields"),
    (dict(class_only=("lr",)), ValueError, "must be the last fields"),
    (dict(state=(Slot("m", "ms", used="momentum"),)), ValueError, "'momentum', which is not"),
    (dict(state=(Slot("m", "ms", init="beta"),)), ValueError, "'beta', which is not"),
    (dict(state=(Slot("m", "lr"),)), ValueError, "list name 'lr'"),
    (dict(state=(Slot("m", "grads"),)), ValueError, "list name 'grads'"),
    (dict(state=(Slot("m", "ms"), Slot("m", "ns"))), ValueError, "duplicate state name"),
    (dict(state=(Slot("step", "ms"),)), ValueError, "duplicate state name"),
    (dict(fixed={"nope": 1}), ValueError, "fixed field 'nope'"),
    (dict(defaults={"nope": 1}), ValueError, "unknown fields ['nope']"),
    (dict(defaults={"maximize": "yes"}), ValueError, "refuses its default 'yes'"),
])
def test_a_malformed_spec_is_refused(changes, exc, words):
    with pytest.raises(exc) as err:
        _adam_like(**changes)
    assert words in str(err.value)


def test_a_name_belongs_to_one_class():
    spec = _adam_like()
    try:
        class Toy(fo.Optimizer):
            pass
        Toy.spec = spec             # bound by hand: only a class body registers
        _spec.register(spec, Toy)
        with pytest.raises(ValueError, match="already bound to .*Toy"):
            class Other(fo.Optimizer):
                spec = _adam_like()
    finally:
        _spec.unregister("toy")


def test_the_base_class_and_a_non_spec_are_refused():
    with pytest.raises(TypeError, match="has no spec"):
        fo.Optimizer([np.zeros(3, np.float32)], {})
    with pytest.raises(TypeError, match="must be an OptSpec"):
        class Bad(fo.Optimizer):
            spec = "adam"


# -- a new optimizer, declared in a module of its own -------------------------------------------

_TOY_MODULE = '''
"""ToySGD: plain SGD, declared as a new optimizer would be, on the registered "sgd" kernel."""

from typing import Annotated, NamedTuple

from fusedoptim import _validation as v
from fusedoptim._spec import OptSpec
from fusedoptim.optimizer import Optimizer


class ToyHyper(NamedTuple):
    lr: Annotated[float, v.finite_nonneg]
    maximize: Annotated[bool, v.flag] = False


def toysgd_scalars(step, lr, maximize):
    # sgd's scalars: sign, lr, weight_decay, momentum, grad_weight, nesterov_weight, mode
    return (-1.0 if maximize else 1.0, lr, 0.0, 0.0, 1.0, 1.0, 0.0)


TOY_SPEC = OptSpec("toysgd", ToyHyper, toysgd_scalars, kernel="sgd",
                   doc="Fused ToySGD step over lists.")


class ToySGD(Optimizer):
    """p = p - lr * g."""

    spec = TOY_SPEC

    def __init__(self, params, lr=0.1, *, maximize=False, skip_nonfinite=False):
        super().__init__(params, dict(lr=lr, maximize=maximize), skip_nonfinite=skip_nonfinite)
'''


def _toysgd_reference(params, grads, state_steps, *, lr, maximize=False):
    for i, p in enumerate(params):
        if grads[i] is not None:
            state_steps[i] += 1
            g = -grads[i] if maximize else grads[i]
            p[...] = p - lr * g


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """A package `toyoptim` holding one optimizer module, as fusedoptim/optim would."""
    pkg = tmp_path / "toyoptim"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "toysgd.py").write_text(_TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    # the NumPy reference function, as reference.py would hold it
    monkeypatch.setattr(fo.reference, "toysgd", _toysgd_reference, raising=False)
    yield pkg
    _spec.unregister("toysgd")
    fo.functional.__dict__.pop("toysgd", None)
    for name in ("toyoptim", "toyoptim.toysgd"):
        sys.modules.pop(name, None)


def test_a_new_optimizer_module_goes_the_whole_path(toy_package, rng):
    found = _spec.discover("toyoptim", [str(toy_package)])
    assert list(found) == ["ToySGD"]
    ToySGD = found["ToySGD"]
    spec = _spec.get("toysgd")
    assert spec is ToySGD.spec and spec.kernel in _kernels.KERNEL_IDS
    entry = fo.functional.toysgd             # generated on first use (a late spec)
    assert str(inspect.signature(entry)) == (
        "(params: 'Sequence[FloatArray]', grads: 'BufferList', state_steps: 'StepList', *, "
        "lr: 'float', maximize: 'bool' = False) -> 'None'")
    Twin = fo.reference._twin(spec)
    assert issubclass(Twin, ToySGD) and Twin._backend.fn is _toysgd_reference
    start = make_params(rng, np.float32)
    p_cls, p_fun, p_twin = ([p.copy() for p in start] for _ in range(3))
    opt, twin = ToySGD(p_cls, lr=0.05, maximize=True), Twin(p_twin, lr=0.05, maximize=True)
    steps = [0] * len(start)
    for _ in range(5):
        g = [np.asarray(rng.standard_normal(p.shape), np.float32) for p in start]
        opt.step(g)
        twin.step(g)
        entry(p_fun, g, steps, lr=0.05, maximize=True)
    for a, b, c in zip(p_cls, p_fun, p_twin):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    assert steps == [5] * len(start) and opt.state[0]["step"] == 5
    with pytest.raises(ValueError, match="lr must be a finite number >= 0, got -1"):
        entry(p_fun, g, steps, lr=-1)
    with pytest.raises(TypeError, match="maximize must be True or False"):
        ToySGD(p_cls, maximize="yes")


def test_a_spec_without_its_reference_function_has_no_twin(toy_package, monkeypatch):
    found = _spec.discover("toyoptim", [str(toy_package)])
    monkeypatch.delattr(fo.reference, "toysgd")
    with pytest.raises(ImportError, match="no function 'toysgd' for ToySGD"):
        fo.reference._twin(found["ToySGD"].spec)


def test_validator_partials_and_pairs_label_the_messages():
    """Rprop: a validator with a bound argument, two pairs, a class-only field, a relation."""
    spec = fo.Rprop.spec
    assert spec.group_keys == ("step_sizes", "etas", "maximize", "lr")
    assert spec.labels[:4] == ("step_sizes[0]", "step_sizes[1]", "etas[0]", "etas[1]")
    assert spec.functional_fields == ("step_size_min", "step_size_max", "etaminus", "etaplus",
                                      "maximize")
    assert isinstance(spec.validators[3], partial)
    with pytest.raises(ValueError, match=r"etas\[1\] must be a finite number > 1.0, got 1.0"):
        spec.check_group(((1e-6, 50), (0.5, 1.0), False, 0.01))
    with pytest.raises(ValueError, match=r"step_sizes must be \(min, max\) with min <= max, "
                                         r"got \(1, 0.5\)"):
        spec.check_group(([1, 0.5], (0.5, 1.2), False, 0.01))


@pytest.mark.parametrize("spec", CASED, ids=cased_ids)
def test_the_functional_entries_fast_check_is_check(spec, rng):
    """check_kernel_fields (positional, what the generated entries call) gives exactly
    check()'s result, and refuses what check() refuses with the same message."""
    case = CASE_OF[spec.cls]
    for _ in range(5):
        opt = spec.cls([np.zeros(3, np.float32)], **case.sample(rng))
        hyper = spec.check_group([opt.param_groups[0][k] for k in spec.group_keys])
        values = tuple(hyper)[:len(spec.kernel_fields)]
        fast = spec.check_kernel_fields(values)
        # class-only fields (Adagrad's initial_accumulator_value, Rprop's lr) take their
        # defaults in both: the functional entries do not have them
        assert fast == spec.check(*values) and tuple(fast)[:len(values)] == values
    values = list(tuple(hyper)[:len(spec.kernel_fields)])
    values[0] = "bad"                   # no validator takes a string for a first field
    with pytest.raises((TypeError, ValueError)) as fast:
        spec.check_kernel_fields(tuple(values))
    with pytest.raises((TypeError, ValueError)) as slow:
        spec.check(*values)
    assert str(fast.value) == str(slow.value) and type(fast.value) is type(slow.value)
