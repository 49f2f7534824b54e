"""Hypothesis strategies for the property suite, built on the Cases of tests/cases.py.

A Case already knows its optimizer, its reference twin and how to sample valid
hyperparameters (`Case.sample(rng)`). The strategies here add what a Case does not say:
edge values for each hyperparameter (read off the validator its spec declares, so a new
optimizer gets them for free), the precision rows its kernel registered, shapes around the
driver's work unit and serial threshold, group structures, None grads and grad scales.

A drawn `Scenario` is plain data; `Scenario.build()` makes the optimizer (or its twin) on
fresh copies of its params, and `Scenario.grads(k)` the grads of step k, deterministically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st

import fusedoptim as fo
from fusedoptim import _driver, _kernels, _precision
from cases import ALL_CASES, Case

# The driver's work unit (16K elements) and, in _driver.pyx, SERIAL_MAX: below 32768
# elements in total a pass runs on the calling thread; above, it is split over threads.
CHUNK = _driver.CHUNK_ELEMENTS
SERIAL_MAX = 32768
BLOCK = _driver.BLOCK_ELEMENTS          # a quantization block never spans two units
assert CHUNK == 16384 and SERIAL_MAX == 2 * CHUNK

BF16, F16 = _precision.BFLOAT16, _precision.FLOAT16
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)

# -- hyperparameters: edge values per validator --------------------------------------------------

_TINY = 5e-324                          # the smallest float64 denormal
_F64_DENORMAL = 1e-310
_F32_DENORMAL = 1e-40                   # a float32 denormal (a float64 normal)
_NEAR_ONE = [1 - 1e-6, 1 - 1e-12, 1 - 2.0 ** -53]   # the last: the largest double below 1
# What each validator of fusedoptim._validation accepts at its edges. A validator not listed
# here (int fields, choices, coefficient tuples) keeps the Case's sampled value.
EDGES = {
    "finite_nonneg": [0.0, _TINY, _F64_DENORMAL, _F32_DENORMAL, 1e-30, 1e30, 1e300,
                      np.finfo(np.float64).max],
    "positive": [_TINY, _F64_DENORMAL, _F32_DENORMAL, 1e-30, 1e30, 1e300],
    "unit_interval": [0.0, _TINY, _F32_DENORMAL, 0.5, *_NEAR_ONE],
    "unit_closed": [0.0, _TINY, 0.5, *_NEAR_ONE, 1.0],
    "open_unit_interval": [_TINY, 0.5, *_NEAR_ONE],
    "positive_or_inf": [_TINY, 1e-30, math.inf],
}
# Validators with a `bound` keyword (Rprop's etaplus > 1, Prodigy's growth_rate >= 1): their
# edges and refusals relative to it.
BOUNDED_EDGES = {
    "finite_above": lambda b: [b + abs(b) * 2.0 ** -52 or _TINY, b * 1.5 or 1.0, 1e30],
    "at_least": lambda b: [b, b + abs(b) * 2.0 ** -52 or _TINY, 1e30, math.inf],
}
BOUNDED_REFUSED = {
    "finite_above": lambda b: [b, math.inf, math.nan, "2"],
    "at_least": lambda b: [b - abs(b) * 2.0 ** -53 or -_TINY, 0.0, -1.0, math.nan],
}
# Values each validator must refuse (with its field's name in the message).
REFUSED = {
    "finite_nonneg": [-1.0, -_TINY, math.nan, math.inf, "0.1", True, None],
    "positive": [0.0, -1e-8, math.nan, math.inf, "1e-8"],
    "unit_interval": [1.0, -_TINY, 1.0 + 2.0 ** -52, math.nan, math.inf, "0.9"],
    "unit_closed": [1.0 + 2.0 ** -52, -0.5, math.nan],
    "open_unit_interval": [0.0, 1.0, math.nan],
    "positive_or_inf": [0.0, -1.0, math.nan],
    "flag": [2, "yes", None, 0.5],
}


def validator_name(validator: Any) -> str:
    return getattr(validator, "func", validator).__name__


def edges_of(validator: Any, table: dict[str, Any], bounded: dict[str, Any]) -> list[Any]:
    """A validator's edge (or refused) values: from `table` by its name, or from `bounded`
    given its `bound` keyword; [] for a validator this module does not know."""
    name = validator_name(validator)
    if name in bounded:
        return list(bounded[name](validator.keywords["bound"]))
    return list(table.get(name, []))


def valid_edges(validator: Any) -> list[Any]:
    return edges_of(validator, EDGES, BOUNDED_EDGES)


def refused_values(validator: Any) -> list[Any]:
    return edges_of(validator, REFUSED, BOUNDED_REFUSED)


def spec_of(case: Case) -> Any:
    return case.fused.spec


def field_slots(case: Case) -> list[tuple[str, str, int | None, Any]]:
    """(field, constructor argument, index inside it or None, validator) for every
    hyperparameter of the case's spec, e.g. ("beta2", "betas", 1, unit_interval)."""
    spec = spec_of(case)
    where = {f: (pair, i) for pair, fields in spec.pairs.items() for i, f in enumerate(fields)}
    return [(f, *where.get(f, (f, None)), v) for f, v in zip(spec.fields, spec.validators)]


def set_field(kwargs: dict[str, Any], arg: str, index: int | None, value: Any) -> None:
    if index is None:
        kwargs[arg] = value
    else:
        group = list(kwargs[arg])
        group[index] = value
        kwargs[arg] = tuple(group)


@st.composite
def hyperparameters(draw, case: Case) -> dict[str, Any]:
    """The Case's random sample, with some fields moved to an edge of their valid range."""
    kwargs = case.sample(np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1))))
    for name, arg, index, validator in field_slots(case):
        edges = valid_edges(validator)
        if edges and (arg in kwargs or name in kwargs) and draw(st.integers(0, 3)) == 0:
            set_field(kwargs, arg, index, draw(st.sampled_from(edges)))
    return kwargs


# -- precision: the rows each kernel registered ---------------------------------------------------

# (param dtype, constructor options): every combination the optimizers take somewhere. A case
# gets those its kernel registered, as fusedoptim._precision.resolve (the constructor's own
# check) reads them off the kernel registry.
PRECISION_CANDIDATES: list[tuple[np.dtype[Any], dict[str, Any]]] = [
    (F32, {}), (F64, {}),
    (F32, {"state_dtype": "bfloat16"}), (F32, {"state_dtype": "int8"}),
    (F32, {"state_dtype": "int4"}),
    *[(half, opts) for half in (BF16, F16) for opts in (
        {}, {"state_dtype": "bfloat16"}, {"state_dtype": "int8"}, {"state_dtype": "int4"},
        {"master_weights": False}, {"master_weights": False, "state_dtype": "float32"},
        {"master_weights": False, "state_dtype": "int8"})],
    (BF16, {"stochastic_rounding": True}),
    (BF16, {"stochastic_rounding": True, "state_dtype": "float32"}),
]


@dataclass(frozen=True)
class Precision:
    param_dtype: np.dtype[Any]
    options: dict[str, Any]
    grad_dtypes: tuple[np.dtype[Any], ...]

    @property
    def quantized(self) -> bool:
        return self.options.get("state_dtype") in ("int8", "int4")

    def __repr__(self) -> str:
        return f"Precision({self.param_dtype}, {self.options})"


def precisions_of(case: Case) -> list[Precision]:
    out = []
    for pdtype, opts in PRECISION_CANDIDATES:
        try:
            gp = _precision.resolve(case.name, spec_of(case).kernel, pdtype,
                                    opts.get("master_weights"), opts.get("state_dtype"),
                                    stochastic_rounding=opts.get("stochastic_rounding", False))
        except ValueError:
            continue
        out.append(Precision(pdtype, opts, gp.grad_dtypes))
    return out


PRECISIONS = {case.name: precisions_of(case) for case in ALL_CASES}
assert all(any(p.param_dtype == F32 and not p.options for p in ps) for ps in PRECISIONS.values())


@st.composite
def precisions(draw, case: Case, low_precision: bool = True) -> tuple[Precision, dict[str, Any],
                                                                       np.dtype[Any]]:
    """(precision, its constructor options, the grads' dtype). Half of the draws are plain
    float32/float64; the others any row the case's kernel registered."""
    rows = PRECISIONS[case.name]
    plain = [p for p in rows if not p.options]
    pick = draw(st.sampled_from(rows if low_precision and draw(st.booleans()) else plain))
    opts = dict(pick.options)
    if pick.quantized:
        # small thresholds quantize small tensors too (0: even a 0-d or empty one)
        opts["min_quantized_size"] = draw(st.sampled_from([0, 1, BLOCK, 4096]))
        if opts["state_dtype"] == "int4":
            opts["rank1_normalization"] = draw(st.booleans())
    if opts.get("stochastic_rounding"):
        opts["seed"] = draw(st.sampled_from([0, 1, 2 ** 64 - 1]))
    return pick, opts, draw(st.sampled_from(pick.grad_dtypes))


# -- shapes -------------------------------------------------------------------------------------

# 1-D sizes at and around the unit and the serial threshold, and one that spans several units
# with a ragged end (a quantization block and a tensor both end inside a unit).
AROUND_UNITS = [CHUNK - 1, CHUNK, CHUNK + 1, SERIAL_MAX - 1, SERIAL_MAX, SERIAL_MAX + 1,
                CHUNK + BLOCK + 3, 3 * CHUNK + 77]
small_shapes = st.one_of(
    st.just(()),                                                  # 0-d
    st.sampled_from([(0,), (0, 3), (2, 0, 4)]),                   # empty
    st.tuples(st.integers(1, 300)),                               # odd sizes
    st.tuples(st.integers(1, 9), st.integers(1, 40)),
    st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 7)))
unit_shapes = st.one_of(st.sampled_from(AROUND_UNITS).map(lambda n: (n,)),
                        st.sampled_from([(128, 129), (64, 256), (181, 181)]))  # ~16K, 2-D
small_matrices = st.tuples(st.integers(1, 24), st.integers(1, 24))
unit_matrices = st.sampled_from([(128, 129), (257, 64), (181, 182)])


def shape_lists(case: Case, big: bool | None = None) -> st.SearchStrategy[list[tuple[int, ...]]]:
    """1 to 4 param shapes; `big`: True puts the total above SERIAL_MAX (so threads split the
    work), False keeps every tensor small, None draws either."""
    small, unit = (small_matrices, unit_matrices) if case.matrices_only else \
        (small_shapes, unit_shapes)
    if big is False:
        return st.lists(small, min_size=1, max_size=4)
    any_shape = st.one_of(small, small, small, unit) if big is None else st.one_of(small, unit)
    lists = st.lists(any_shape, min_size=1, max_size=4)
    if not big:
        return lists
    # one more tensor just past the threshold where the drawn ones stay below it
    past = (181, 182) if case.matrices_only else (SERIAL_MAX + 1,)
    return lists.map(lambda shapes: shapes if sum(map(math.prod, shapes)) > SERIAL_MAX
                     else shapes + [past])


# -- a whole scenario ---------------------------------------------------------------------------

# Grad magnitudes: typical, zero, float32 and float64 denormals, huge (float32's max is 3.4e38).
GRAD_SCALES = [1.0, 1.0, 1.0, 0.0, 1e-40, 1e-310, 1e20, 1e38]


@dataclass
class Scenario:
    case: Case
    kwargs: dict[str, Any]
    precision: Precision
    options: dict[str, Any]
    grad_dtype: np.dtype[Any]
    shapes: list[tuple[int, ...]]
    # group k holds params bounds[k]:bounds[k+1], with overrides[k] on top of kwargs
    bounds: list[int]
    overrides: list[dict[str, Any]]
    seed: int
    # per step: (grad magnitude, which params get None, grad_scale or None, a NaN or Inf put
    # in one grad element, or None)
    steps: list[tuple[float, tuple[bool, ...], float | None, float | None]] = \
        field(default_factory=list)

    def start(self) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        return [np.asarray(rng.standard_normal(s), self.precision.param_dtype)
                for s in self.shapes]

    def groups(self, params: list[np.ndarray]) -> list[dict[str, Any]]:
        return [{"params": params[a:b], **over} for a, b, over in
                zip(self.bounds, self.bounds[1:], self.overrides)]

    def build(self, params: list[np.ndarray], twin: bool = False, **extra: Any) -> Any:
        cls = self.case.reference if twin else self.case.fused
        return cls(self.groups(params), **self.kwargs, **self.options, **extra)

    def grads(self, k: int) -> list[np.ndarray | None]:
        scale, nones, _, poison = self.steps[k]
        rng = np.random.default_rng((self.seed, k))
        out: list[np.ndarray | None] = []
        for shape, none in zip(self.shapes, nones):
            g = rng.standard_normal(shape) * scale
            out.append(None if none else np.asarray(g, self.grad_dtype))
        targets = [g for g in out if g is not None and g.size]
        if poison is not None and targets:
            g = targets[int(rng.integers(len(targets)))]
            g.flat[int(rng.integers(g.size))] = poison
        return out

    def step(self, opt: Any, k: int) -> Any:
        return opt.step(self.grads(k), grad_scale=self.steps[k][2])


def _group_bounds(draw, n: int) -> list[int]:
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=2))) if n > 1 else []
    return [0, *cuts, n]


@st.composite
def scenarios(draw, cases: list[Case] = ALL_CASES, min_steps: int = 1, max_steps: int = 4,
              big: bool | None = None, low_precision: bool = True,
              edge_values: bool = True) -> Scenario:
    case = draw(st.sampled_from(cases))
    kwargs = draw(hyperparameters(case)) if edge_values else \
        case.sample(np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1))))
    precision, options, grad_dtype = draw(precisions(case, low_precision))
    shapes = draw(shape_lists(case, big))
    bounds = _group_bounds(draw, len(shapes))
    overrides = []
    for _ in bounds[1:]:
        kind = draw(st.sampled_from(["none", "lr", "sample"]))
        if kind == "lr" and not case.one_lr:
            overrides.append({"lr": kwargs["lr"] * draw(st.sampled_from([0.5, 0.0, 3.0]))})
        elif kind == "sample":
            # a whole second sample (its fields are consistent with each other), lr excepted
            # where the groups share one
            other = case.sample(np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1))))
            keys = [k for k in spec_of(case).group_keys if k in other
                    and not (case.one_lr and k == "lr")]
            overrides.append({k: other[k] for k in keys})
        else:
            overrides.append({})
    n_steps = draw(st.integers(min_steps, max_steps))
    steps = []
    for _ in range(n_steps):
        scale = draw(st.sampled_from(GRAD_SCALES))
        # a param without a grad now and then (a quarter of the time each)
        nones = tuple(draw(st.booleans()) and draw(st.booleans()) for _ in shapes)
        grad_scale = draw(st.sampled_from([None, None, None, 2.0 ** 16, 3.0, 0.37]))
        poison = draw(st.sampled_from([None] * 6 + [math.nan, math.inf, -math.inf]))
        steps.append((scale, nones, grad_scale, poison))
    if draw(st.integers(0, 3)) == 0:
        # a step whose grads hold a NaN or Inf changes nothing (the twin's rule too)
        options["skip_nonfinite"] = True
    return Scenario(case, kwargs, precision, options, grad_dtype, shapes, bounds, overrides,
                    draw(st.integers(0, 2 ** 32 - 1)), steps)


# -- comparisons ------------------------------------------------------------------------------

def state_arrays(opt: Any) -> dict[tuple[Any, str], Any]:
    """Every state entry, keyed (param index, name): arrays as arrays, the rest as given."""
    return {(i, k): v for i, st_ in opt.state_dict()["state"].items() for k, v in st_.items()}


def _nan_canonical(a: np.ndarray) -> np.ndarray:
    """`a` with every NaN replaced by one NaN (float arrays; others as they are)."""
    if a.dtype.kind == "f" or a.dtype == BF16:
        a = a.copy()
        a[np.isnan(a.astype(np.float64))] = np.nan
    return a


def same_bits(a: Any, b: Any, nan_equal: bool = False) -> bool:
    """Bitwise equality of arrays (dtype and shape too) or scalars. `nan_equal`: any NaN
    equals any NaN. IEEE 754 leaves a NaN's sign and payload to the implementation, and
    NumPy's order of operations and the compiled kernel's pick different ones (x86 makes the
    negative "default NaN" on an invalid operation; a later negation or subtraction flips
    or keeps it). The fused-versus-twin comparisons allow that and nothing else."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if nan_equal and a.dtype == b.dtype:
            a, b = _nan_canonical(a), _nan_canonical(b)
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, float) or isinstance(b, float):
        if nan_equal and type(a) is type(b) and math.isnan(a) and math.isnan(b):
            return True
        return type(a) is type(b) and np.float64(a).tobytes() == np.float64(b).tobytes()
    return bool(type(a) is type(b) and a == b)


def bitwise_diff(a: list[Any], b: list[Any], nan_equal: bool = False) -> list[int]:
    """Indices where two lists of arrays differ in any bit (dtype and shape included)."""
    assert len(a) == len(b)
    return [i for i, (x, y) in enumerate(zip(a, b)) if not same_bits(x, y, nan_equal)]


def state_diff(a: Any, b: Any, nan_equal: bool = False) -> list[Any]:
    """Keys of two optimizers' state that differ in any bit, plus param group differences."""
    sa, sb = state_arrays(a), state_arrays(b)
    out: list[Any] = sorted(set(sa) ^ set(sb), key=repr)
    out += [k for k in sa.keys() & sb.keys() if not same_bits(sa[k], sb[k], nan_equal)]
    ga, gb = a.state_dict()["param_groups"], b.state_dict()["param_groups"]
    if not same_groups(ga, gb, nan_equal):
        out.append(("param_groups", ga, gb))
    return out


def same_groups(ga: list[dict[str, Any]], gb: list[dict[str, Any]],
                nan_equal: bool = False) -> bool:
    """Param groups (of state_dict()) equal key by key, floats bitwise (so a NaN that a
    diverged run wrote, Prodigy's d say, equals itself)."""
    def same(x: Any, y: Any) -> bool:
        if isinstance(x, (tuple, list)) and isinstance(y, (tuple, list)):
            return type(x) is type(y) and len(x) == len(y) and all(map(same, x, y))
        return same_bits(x, y, nan_equal)
    return len(ga) == len(gb) and all(
        x.keys() == y.keys() and all(same(x[k], y[k]) for k in x) for x, y in zip(ga, gb))
