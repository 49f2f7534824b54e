"""SparseAdam: Adam on the rows a sparse gradient touches (kernel "sparse_adam").

torch.optim.SparseAdam's semantics, for embedding tables. A gradient is not shaped like its
param, so this optimizer has its own step loop rather than the dense one of
:class:`fusedoptim.Optimizer` (whose generic machinery assumes param-shaped grads): it
validates everything, creates state, then runs one gather kernel per param group on the shared
driver, parallel over the touched rows.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .. import _kernels
from .._exclusive import exclusive
from .._groups import ParamGroups
from .. import _validation as v
from .._layout import check_param_list, group_arrays, parse_params
from .._state import merged_groups as _merged_groups, saved_groups
from .._validation import label

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from .._typing import FloatArray, OptimizerStateDict, ParamGroup, ParamsArg, ParamState

_KERNEL = _kernels.KERNEL_IDS["sparse_adam"]
_NSCALARS = len(_kernels.SCALARS["sparse_adam"])
_INT64 = np.dtype(np.int64)
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class SparseGrad(NamedTuple):
    """A row-sparse gradient: ``values[k]`` is the gradient of row ``indices[k]`` of the
    param's first axis (torch's ``sparse_coo_tensor(indices[None], values, param.shape)``
    with one sparse dimension).

    Attributes:
        indices: int64 array of shape (nnz,): row indices in ``[0, param.shape[0])``, in any
            order; a row given more than once has its values summed (torch's
            ``coalesce()``), in the order they appear here.
        values: array of shape ``(nnz, *param.shape[1:])``, the param's dtype, C-contiguous.
            nnz may be 0 (nothing is updated; the step still counts, as in torch).
    """

    indices: NDArray[np.int64]
    values: FloatArray


class SparseAdamHyper(NamedTuple):
    """SparseAdam's hyperparameters, validated."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    maximize: bool


def check_sparse_adam(lr: object, beta1: object, beta2: object, eps: object,
                      maximize: object, betas: tuple[str, str] = ("betas[0]", "betas[1]")
                      ) -> SparseAdamHyper:
    """Validate SparseAdam's hyperparameters (torch refuses lr <= 0 and eps <= 0 too);
    `betas` names beta1 and beta2 in messages."""
    return SparseAdamHyper(v.positive(lr, "lr"), v.unit_interval(beta1, betas[0]),
                           v.unit_interval(beta2, betas[1]), v.positive(eps, "eps"),
                           v.flag(maximize, "maximize"))


def sparse_adam_scalars(step: int, lr: float, beta1: float, beta2: float, eps: float,
                        maximize: bool) -> tuple[float, ...]:
    """The kernel's scalars for a param at `step` (order: _kernels.SCALARS['sparse_adam'],
    without the last two, row_len and nnz, which are the gradient's)."""
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    step_size = lr * math.sqrt(bias_correction2) / bias_correction1
    return (-1.0 if maximize else 1.0, beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps,
            -step_size)


# -- gradients ----------------------------------------------------------------------------------

class _Work(NamedTuple):
    """One param's validated gradient, ready for the kernel: values as (nnz, row_len)
    rows, and the row table (see cython_kernels/sparse_adam.pxi.tp)."""

    values: FloatArray
    table: NDArray[np.int64]
    row_len: int
    nnz: int


def row_table(indices: NDArray[np.int64], nrows: int,
              out: NDArray[np.int64] | None = None) -> NDArray[np.int64] | None:
    """The kernel's row table for `indices` (1-D int64, C-contiguous) into a param of `nrows`
    rows, or None when an index is outside [0, nrows): ``head`` (the param row at each
    index's first occurrence, -1 at a repeat) and ``nxt`` (the next position with the same
    index, -1 at a run's last), 2 * nnz int64 built in O(nnz) by
    fusedoptim._checks.sparse_row_table (see cython_kernels/sparse_adam.pxi.tp), into
    `out` when given (2 * nnz int64, a buffer kept between steps)."""
    return _kernels.sparse_row_table(indices, nrows, out)


_DENSE_TABLES: dict[int, NDArray[np.int64]] = {}


def _dense_table(nrows: int) -> NDArray[np.int64]:
    """The row table of every row once, in order (a dense grad), cached per row count (the
    kernel only reads it)."""
    table = _DENSE_TABLES.get(nrows)
    if table is None:
        table = np.empty(2 * nrows, dtype=np.int64)
        table[:nrows] = np.arange(nrows)
        table[nrows:] = -1
        table.flags.writeable = False
        if len(_DENSE_TABLES) >= 8:
            _DENSE_TABLES.pop(next(iter(_DENSE_TABLES)))
        _DENSE_TABLES[nrows] = table
    return table


def check_grad(grad: object, param: FloatArray, where: str,
               scratch: NDArray[np.int64] | None = None) -> _Work | None:
    """Validate one param's gradient (a SparseGrad or a dense array of the param's shape);
    return its work, or None when it touches nothing (no rows, or rows of no elements).
    Raises TypeError/ValueError naming `where` (``grads[0]``), the bad value and the fix.
    `scratch`: the row table of an earlier step, rewritten when its size fits."""
    rows = param.shape[0]
    row_len = param.size // rows if rows else 0
    if isinstance(grad, np.ndarray):
        _kernels.check_buffer(grad, param, where, False)
        if grad.size == 0:
            return None
        return _Work(grad.reshape(rows, row_len), _dense_table(rows), row_len, rows)
    if not isinstance(grad, SparseGrad):
        raise TypeError(f"{where} must be a fusedoptim.SparseGrad(indices, values) or an "
                        f"ndarray of its param's shape {param.shape}, got "
                        f"{type(grad).__name__}")
    idx, vals = grad.indices, grad.values
    if not isinstance(idx, np.ndarray):
        raise TypeError(f"{where}.indices must be an int64 ndarray, got {type(idx).__name__}; "
                        f"convert it with np.asarray(indices, dtype=np.int64)")
    if idx.dtype != _INT64:
        raise TypeError(f"{where}.indices has dtype {idx.dtype}; it must be int64 (native "
                        f"byte order); convert it with indices.astype(np.int64)")
    if idx.ndim != 1:
        raise ValueError(f"{where}.indices has shape {idx.shape}; it must be 1-D (row "
                         f"indices into the param's first axis); torch's (1, nnz) indices "
                         f"become indices[0]")
    nnz = idx.shape[0]
    want = (nnz,) + param.shape[1:]
    if not isinstance(vals, np.ndarray):
        raise TypeError(f"{where}.values must be an ndarray of shape {want} and dtype "
                        f"{param.dtype}, got {type(vals).__name__}")
    if vals.dtype != param.dtype:
        raise TypeError(f"{where}.values has dtype {vals.dtype}; it must be its param's "
                        f"{param.dtype}; convert it with values.astype(np.{param.dtype})")
    if vals.shape != want:
        raise ValueError(f"{where}.values has shape {vals.shape}; it must be (len(indices), "
                         f"*param.shape[1:]) = {want}")
    if not (vals.flags.c_contiguous and vals.flags.aligned):
        raise ValueError(f"{where}.values is not C-contiguous; pass "
                         f"np.ascontiguousarray(values)")
    if not (idx.flags.c_contiguous and idx.flags.aligned):
        idx = np.ascontiguousarray(idx)
    out = scratch if scratch is not None and scratch.shape[0] == 2 * nnz else None
    table = row_table(idx, rows, out)       # checks the range too, in the same pass
    if table is None:
        lo, hi = int(idx.min()), int(idx.max())
        bad = lo if lo < 0 else hi
        raise ValueError(f"{where}.indices holds {bad}, out of range for a param of "
                         f"{rows} rows; indices must be in [0, {rows})")
    if nnz == 0 or row_len == 0:
        return None
    return _Work(vals.reshape(nnz, row_len), table, row_len, nnz)


class _Written:
    """The buffers a step writes (params and state), sorted by address, to refuse gradient
    values that share memory with any of them (the kernel reads the values while other
    threads write the rows)."""

    def __init__(self, buffers: Sequence[tuple[NDArray[Any], str]]) -> None:
        spans = []
        for a, what in buffers:
            if a.nbytes:
                lo = a.__array_interface__["data"][0]
                spans.append((lo, lo + a.nbytes, what))
        spans.sort()
        self.lo = [s[0] for s in spans]
        self.spans = spans

    def check(self, a: NDArray[Any], where: str) -> None:
        if not a.nbytes:
            return
        lo = a.__array_interface__["data"][0]
        hi = lo + a.nbytes
        k = bisect.bisect_left(self.lo, hi)
        if k > 0 and self.spans[k - 1][1] > lo:
            raise ValueError(f"{where} shares memory with {self.spans[k - 1][2]}, which the "
                             f"step writes; pass a separate array (e.g. values.copy())")


def run_fused(params: Sequence[FloatArray], works: Sequence[_Work | None],
              exp_avgs: Sequence[FloatArray], exp_avg_sqs: Sequence[FloatArray],
              steps: Sequence[int], hyper: SparseAdamHyper,
              cache: dict[tuple[Any, ...], _kernels.Plan] | None = None) -> None:
    """One pass of the kernel over every param whose work is not None (checked already).
    `cache` keeps the plan between steps (one entry): while the params, their state buffers,
    their row tables and the values' sizes stay the same, a step only points the plan at the
    new values (Plan.rebase) and writes the scalars."""
    todo = [t for t, w in enumerate(works) if w is not None]
    if not todo:
        return
    values: list[FloatArray] = []
    rows = []
    key: list[Any] = []
    for t in todo:
        w = works[t]
        assert w is not None
        values.append(w.values)
        rows.append(sparse_adam_scalars(steps[t], *hyper) + (float(w.row_len), float(w.nnz)))
        # the plan holds every array named here, so no id is reused while it is cached
        key.append((t, id(params[t]), id(exp_avgs[t]), id(exp_avg_sqs[t]), id(w.table),
                    w.values.size))
    k = tuple(key)
    plan = None if cache is None else cache.get(k)
    if plan is None:
        state: list[list[Any] | None] = []
        for t in todo:
            w = works[t]
            assert w is not None
            state.append([params[t], exp_avgs[t], exp_avg_sqs[t], w.table])
        plan = _kernels.Plan(values, state, 4, _NSCALARS, [f"grads[{t}]" for t in todo])
        plan.active_array[...] = 1
        if cache is not None:
            cache.clear()
            cache[k] = plan
    else:
        plan.rebase(values)
    plan.hp_array[...] = rows
    plan.run(_KERNEL)


def sparse_adam(params: Sequence[FloatArray], grads: Sequence[SparseGrad | FloatArray | None],
                exp_avgs: Sequence[FloatArray], exp_avg_sqs: Sequence[FloatArray],
                state_steps: list[int], *, lr: float = 1e-3, beta1: float = 0.9,
                beta2: float = 0.999, eps: float = 1e-8, maximize: bool = False) -> None:
    """Fused SparseAdam step over lists, as ``torch.optim._functional.sparse_adam`` (see
    :class:`fusedoptim.SparseAdam` for the rule). ``grads[i]`` is a
    :class:`fusedoptim.SparseGrad`, a dense array of the param's shape (every row touched),
    or None (param i does not step). ``state_steps[i]`` is incremented for each param with a
    grad, before its update, as torch's SparseAdam.step does before calling its functional
    form. Everything is checked before anything is written."""
    hyper = check_sparse_adam(lr, beta1, beta2, eps, maximize, ("beta1", "beta2"))
    works, new_steps = _check_functional(params, grads, exp_avgs, exp_avg_sqs, state_steps)
    for i, s in new_steps.items():
        state_steps[i] = s
    run_fused(params, works, exp_avgs, exp_avg_sqs,
              [new_steps.get(i, 0) for i in range(len(params))], hyper)


def _check_functional(params: Sequence[FloatArray], grads: Sequence[object],
                      exp_avgs: Sequence[object], exp_avg_sqs: Sequence[object],
                      state_steps: Sequence[object]
                      ) -> tuple[list[_Work | None], dict[int, int]]:
    n = len(params) if isinstance(params, (list, tuple)) else -1
    if n < 1:
        raise ValueError(f"params must be a non-empty list of arrays, got {params!r:.60}")
    for name, lst in (("grads", grads), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs),
                      ("state_steps", state_steps)):
        if not isinstance(lst, (list, tuple, np.ndarray)) or len(lst) != n:
            raise ValueError(f"{name} must be a list with one entry per param ({n}), got "
                             f"{type(lst).__name__}")
    check_param_list(params)
    works: list[_Work | None] = []
    steps: dict[int, int] = {}
    written: list[tuple[Any, str]] = []
    for i, p in enumerate(params):
        written.append((p, f"params[{i}]"))
        if grads[i] is None:
            continue
        for name, lst in (("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
            _kernels.check_buffer(lst[i], p, f"{name}[{i}]")
            written.append((lst[i], f"{name}[{i}]"))
        s = state_steps[i]
        if isinstance(s, np.ndarray) and s.size == 1:
            s = s.item()
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"state_steps[{i}] must be an integer >= 0, got {s!r}")
        steps[i] = int(s) + 1
    clash = _kernels.find_overlap([a for a, _ in written])
    if clash is not None:
        raise ValueError(f"{written[clash[0]][1]} and {written[clash[1]][1]} share memory; "
                         f"give every param and state buffer its own memory")
    index = _Written(written)
    for i, p in enumerate(params):
        g = grads[i]
        work = None if g is None else check_grad(g, p, f"grads[{i}]")
        if work is not None:
            index.check(work.values, f"grads[{i}]")
        works.append(work)
    return works, steps


def check_param(p: object, where: str) -> None:
    """A SparseAdam param: a float32/float64 C-contiguous writeable array of >= 1 dimension
    (its rows are its first axis)."""
    _kernels.check_param(p, where)
    assert isinstance(p, np.ndarray)
    if p.dtype not in _FLOATS:
        raise TypeError(f"{where} has dtype {p.dtype}; SparseAdam takes float32 or float64 "
                        f"params; convert it with p.astype(np.float32)")
    if p.ndim == 0:
        raise ValueError(f"{where} is 0-d; SparseAdam updates rows of a param's first axis; "
                         f"give it one with p.reshape(1)")


# -- the class ----------------------------------------------------------------------------------

class SparseAdam(ParamGroups):
    r"""SparseAdam: Adam on the rows a sparse gradient touches (torch.optim.SparseAdam;
    Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization", masked as in torch).

    Each param's gradient is a :class:`fusedoptim.SparseGrad` ``(indices, values)``: rows
    ``indices`` of the param's first axis, with ``values`` of shape
    ``(len(indices), *param.shape[1:])``; a row given more than once has its values summed
    (torch's ``coalesce()``), in the order they are given, so the result does not depend on
    the thread count. Or a dense array of the param's shape, which touches every row (it is
    the SparseGrad of all row indices; torch refuses dense grads here). For each touched row,
    with g its summed gradient (negated when ``maximize``) and m, v its moments::

        step = step + 1                          (per param, on every step it has a grad)
        mu = (g - m) * (1 - beta1);  m = m + mu
        vu = (g * g - v) * (1 - beta2);  v = v + vu
        step_size = lr * sqrt(1 - beta2^step) / (1 - beta1^step)
        p = p - step_size * m / (sqrt(v) + eps)

    (in torch's order of operations, term by term). Rows not touched are neither read nor
    written, and keep their moments as they are: the bias correction uses the param's step
    count, shared by all its rows, however long a row went untouched, exactly as torch does.
    A gradient with no rows (or rows of zero elements) updates nothing, but its step counts.

    The step is one fused, GIL-free pass per param group on the shared driver, parallel over
    the touched rows' elements, with no temporary the size of a param: the only temporary is
    an O(nnz) row table (each index's first occurrence and its repeats, found by hashing,
    without a sort), kept between steps with the step's plan.

    Args (torch.optim.SparseAdam's):
        params: list or dict of float32/float64 C-contiguous arrays of >= 1 dimension, or
            param groups (dicts with ``"params"`` and overrides).
        lr (float): learning rate, default 1e-3, > 0. May change between steps.
        betas (tuple): (beta1, beta2), default (0.9, 0.999), each in [0, 1).
        eps (float): added to the denominator, default 1e-8, > 0.
        maximize (bool): default False; ascend instead of descend.

    ``step(grads)`` takes a list with one SparseGrad, dense array or None per param, or a
    dict keyed by param name. State per param: ``step``, ``exp_avg`` (m), ``exp_avg_sq``
    (v); ``state_dict()``/``load_state_dict()`` as in torch.
    """

    #: steps a param group's params: the fused kernel (the reference twin: NumPy)
    _reference: Callable[..., None] | None = None

    def __init__(self, params: ParamsArg, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, *,
                 maximize: bool = False) -> None:
        self.defaults: dict[str, Any] = dict(lr=lr, betas=betas, eps=eps, maximize=maximize)
        self._check_group(self.defaults)
        self.param_groups: list[ParamGroup] = []
        self._names: list[str | None] = []
        self._group_slices: list[range] = []
        self._state: list[ParamState | None] = []
        # Kept between steps, never part of the state: each param's last row table (rewritten
        # when its size fits), each group's plan (run_fused's cache), each group's validated
        # hyperparameters with the objects they came from, and the index of the buffers a
        # step writes with the arrays it was built from.
        self._tables: list[NDArray[np.int64] | None] = []
        self._plans: list[dict[tuple[Any, ...], _kernels.Plan]] = []
        self._hypers: list[tuple[tuple[Any, ...], SparseAdamHyper] | None] = []
        self._written: tuple[list[Any], _Written] | None = None
        for group in parse_params(params):
            self._add_group(group)

    # -- groups -----------------------------------------------------------------------------
    @staticmethod
    def _check_group(group: Mapping[str, Any]) -> SparseAdamHyper:
        b1, b2 = v.pair(group["betas"], "betas")
        return check_sparse_adam(group["lr"], b1, b2, group["eps"], group["maximize"])

    def _add_group(self, group_in: Mapping[str, Any]) -> None:
        arena, names, arrays = group_arrays(group_in)
        if arena is not None:
            raise TypeError("SparseAdam takes arrays (a list or dict), not a FlatParams: its "
                            "gradients are sparse, not a flat buffer")
        self._check_group_keys(group_in)
        start = len(self._names)
        for i, a in enumerate(arrays):
            check_param(a, label("params", start + i, names[i]))
        if len({a.dtype for a in arrays}) > 1:
            raise TypeError(f"params of one group have mixed dtypes "
                            f"{sorted({str(a.dtype) for a in arrays})}; put params of each "
                            f"dtype in a param group of their own")
        named = [n for n in self._names + names if n is not None]
        if len(set(named)) != len(named):
            raise ValueError("param names must be unique across groups")
        everything = [p for g in self.param_groups for p in g["params"]] + arrays
        clash = _kernels.find_overlap(everything)
        if clash is not None:
            all_names = self._names + names
            raise ValueError(f"{label('params', clash[0], all_names[clash[0]])} and "
                             f"{label('params', clash[1], all_names[clash[1]])} share memory "
                             f"(the same array given twice, or overlapping views); give each "
                             f"param its own buffer")
        group = dict(self.defaults)
        group.update({k: val for k, val in group_in.items() if k != "params"})
        self._check_group(group)
        group["params"] = arrays
        self.param_groups.append(group)
        self._names.extend(names)
        self._group_slices.append(range(start, start + len(arrays)))
        self._state.extend([None] * len(arrays))
        self._tables.extend([None] * len(arrays))
        self._plans.append({})
        self._hypers.append(None)

    # -- the step ---------------------------------------------------------------------------
    def _grads_list(self, grads: object) -> list[object]:
        n = len(self._names)
        if isinstance(grads, Mapping):
            if any(name is None for name in self._names):
                raise TypeError("grads is a dict, but not every param was given a name; pass "
                                "a list with one grad per param, in order")
            extra = set(grads) - set(self._names)
            if extra:
                raise ValueError(f"grads has keys {sorted(map(str, extra))} that name no "
                                 f"param; the params are {self._names}")
            return [grads.get(name) for name in self._names]
        if isinstance(grads, (np.ndarray, SparseGrad)) and n == 1:
            return [grads]
        if not isinstance(grads, (list, tuple)) or len(grads) != n:
            raise ValueError(f"grads must be a list with one SparseGrad, array or None per "
                             f"param ({n}), or a dict keyed by param name; got "
                             f"{type(grads).__name__}"
                             f"{f' of length {len(grads)}' if hasattr(grads, '__len__') else ''}")
        return list(grads)

    @exclusive
    def step(self, grads: object) -> bool:
        """One update of every param that has a grad (see the class doc). Everything
        (structure, each grad's type, indices, values, aliasing, every group's
        hyperparameters) is checked before anything is written. Returns True."""
        flat = self._grads_list(grads)
        hypers = [self._group_hyper(gi) for gi in range(len(self.param_groups))]
        index = self._written_index()
        works: list[list[_Work | None]] = []
        for gi, group in enumerate(self.param_groups):
            row: list[_Work | None] = []
            for t, i in enumerate(self._group_slices[gi]):
                g = flat[i]
                if g is None:
                    row.append(None)
                    continue
                where = label("grads", i, self._names[i])
                work = check_grad(g, group["params"][t], where, self._tables[i])
                if work is not None:
                    index.check(work.values, where)
                    if work.table.flags.writeable:      # not the shared dense table
                        self._tables[i] = work.table
                row.append(work)
            works.append(row)
        # Checked: create state, count the step, update.
        for gi, group in enumerate(self.param_groups):
            params = group["params"]
            sl = self._group_slices[gi]
            stepping = [t for t, i in enumerate(sl) if flat[i] is not None]
            if not stepping:
                continue
            for t in stepping:
                i = sl[t]
                st = self._state[i]
                if st is None:
                    st = self._state[i] = {"step": 0,
                                           "exp_avg": np.zeros_like(params[t]),
                                           "exp_avg_sq": np.zeros_like(params[t])}
                st["step"] += 1
            states = [self._state[i] for i in sl]
            exp_avgs = [None if st is None else st["exp_avg"] for st in states]
            exp_avg_sqs = [None if st is None else st["exp_avg_sq"] for st in states]
            steps = [0 if st is None else st["step"] for st in states]
            if self._reference is None:
                run_fused(params, works[gi], exp_avgs, exp_avg_sqs, steps,  # type: ignore[arg-type]
                          hypers[gi], self._plans[gi])
            else:
                h = hypers[gi]
                before = [s - 1 for s in steps]
                self._reference([params[t] for t in stepping], [flat[sl[t]] for t in stepping],
                                [exp_avgs[t] for t in stepping],
                                [exp_avg_sqs[t] for t in stepping],
                                [before[t] for t in stepping], lr=h.lr, beta1=h.beta1,
                                beta2=h.beta2, eps=h.eps, maximize=h.maximize)
        return True

    def _group_hyper(self, gi: int) -> SparseAdamHyper:
        """Group gi's validated hyperparameters; validated again only when one of them is
        another object than last step (kept only for plain floats, a tuple of them, a bool)."""
        g = self.param_groups[gi]
        key = (g["lr"], g["betas"], g["eps"], g["maximize"])
        cached = self._hypers[gi]
        if cached is not None and all(a is b for a, b in zip(cached[0], key)):
            return cached[1]
        hyper = self._check_group(g)
        betas = key[1]
        plain = (type(key[0]) is float and type(key[2]) is float and type(key[3]) is bool
                 and type(betas) is tuple and all(type(b) is float for b in betas))
        self._hypers[gi] = (key, hyper) if plain else None
        return hyper

    def _written_index(self) -> _Written:
        """The buffers a step writes (every param and state buffer), indexed by address;
        rebuilt only when one of them is another array than last step."""
        arrays: list[Any] = []
        for group in self.param_groups:
            arrays += group["params"]
        for st in self._state:
            if st is not None:
                arrays += (st["exp_avg"], st["exp_avg_sq"])
        cached = self._written
        if (cached is not None and len(cached[0]) == len(arrays)
                and all(a is b for a, b in zip(cached[0], arrays))):
            return cached[1]
        written = []
        for gi, group in enumerate(self.param_groups):
            for t, i in enumerate(self._group_slices[gi]):
                written.append((group["params"][t], label("params", i, self._names[i])))
                st = self._state[i]
                if st is not None:
                    written += [(st[k], f"the state of {label('params', i, self._names[i])}")
                                for k in ("exp_avg", "exp_avg_sq")]
        index = _Written(written)
        self._written = (arrays, index)     # holds the arrays: their ids stay theirs
        return index

    # -- state ------------------------------------------------------------------------------
    @property
    def state(self) -> dict[int, ParamState]:
        """Param index -> its state (``step``, and the live ``exp_avg``/``exp_avg_sq``)."""
        return {i: st for i, st in enumerate(self._state) if st is not None}

    def state_dict(self) -> OptimizerStateDict:
        """Hyperparameters, step counts and copies of every state buffer, keyed by the flat
        param index as in torch."""
        state = {i: {k: (val.copy() if isinstance(val, np.ndarray) else val)
                     for k, val in st.items()} for i, st in self.state.items()}
        return {"state": state, "param_groups": saved_groups(self)}

    @exclusive
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint. Everything is checked first (group layout, hyperparameters,
        buffer shapes and dtypes); a rejected checkpoint leaves the optimizer untouched."""
        if not isinstance(state_dict, dict) or set(state_dict) < {"state", "param_groups"}:
            raise TypeError("state_dict must be a dict with 'state' and 'param_groups', as "
                            "returned by SparseAdam.state_dict()")
        merged_groups = _merged_groups(self, state_dict["param_groups"])
        for merged in merged_groups:
            self._check_group(merged)
        new_state: list[ParamState | None] = [None] * len(self._state)
        for i, st in state_dict["state"].items():
            if not isinstance(i, int) or not 0 <= i < len(self._state):
                raise ValueError(f"state_dict['state'] has key {i!r}; expected param indices "
                                 f"0..{len(self._state) - 1}")
            gi = next(k for k, sl in enumerate(self._group_slices) if i in sl)
            p = self.param_groups[gi]["params"][i - self._group_slices[gi].start]
            new_state[i] = _load_entry(i, st, p)
        for g, merged in zip(self.param_groups, merged_groups):
            g.update({k: val for k, val in merged.items() if k != "params"})
        self._state = new_state
        for plans in self._plans:       # they hold the replaced state buffers
            plans.clear()
        self._written = None



def _load_entry(i: int, st: object, p: FloatArray) -> ParamState:
    where = f"state_dict['state'][{i}]"
    if not isinstance(st, Mapping):
        raise TypeError(f"{where} must be a dict, got {type(st).__name__}")
    unknown = set(st) - {"step", "exp_avg", "exp_avg_sq"}
    missing = {"step", "exp_avg", "exp_avg_sq"} - set(st)
    if unknown or missing:
        raise ValueError(f"{where} has keys {sorted(st)}; SparseAdam keeps exactly 'step', "
                         f"'exp_avg' and 'exp_avg_sq'")
    step = st["step"]
    if isinstance(step, np.ndarray) and step.size == 1:
        step = step.item()
    if isinstance(step, float) and step.is_integer():
        step = int(step)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"{where}['step'] must be an integer >= 0, got {step!r}")
    entry: ParamState = {"step": int(step)}
    for k in ("exp_avg", "exp_avg_sq"):
        buf = st[k]
        if not isinstance(buf, np.ndarray):
            raise TypeError(f"{where}[{k!r}] must be an ndarray, got {type(buf).__name__}")
        if buf.shape != p.shape or buf.dtype != p.dtype:
            raise ValueError(f"{where}[{k!r}] has shape {buf.shape} and dtype {buf.dtype}; it "
                             f"must have its param's shape {p.shape} and dtype {p.dtype}")
        entry[k] = np.array(buf, dtype=p.dtype, order="C", copy=True)
    return entry
