"""Adafactor: torch.optim.Adafactor's algorithm (kernels "adafactor_factors",
"adafactor_norm" and "adafactor"; see cython_kernels/adafactor.pxi.tp).

Adafactor's state is not shaped like its params (a param of two or more dimensions keeps a
row and a column factor), so it does not fit :class:`fusedoptim.Optimizer`'s one-buffer-per-
slot layout: the class here is torch-shaped on its own (``param_groups``, ``state``,
``state_dict``, ``load_state_dict``, ``add_param_group``, ``step(grads)``) and drives the
same kernels and the same parallel driver through a :class:`_GroupStep` per param group.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .. import _kernels
from .._exclusive import exclusive
from .._groups import ParamGroups
from .. import _validation as v
from .._layout import check_new_params, grads_in_param_order, group_arrays, parse_params
from .._state import merged_groups as _merged_groups, saved_groups
from .._validation import label
from ..flat import PAGE, aligned_bytes

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from .._typing import FloatArray, ParamsArg

_FACTORS = _kernels.TILE_IDS["adafactor_factors"]
_NORM = _kernels.REDUCE_IDS["adafactor_norm"]
_APPLY = _kernels.KERNEL_IDS["adafactor"]
_NAMES = _kernels.SCALARS["adafactor"]
_SIGN, _W, _EPS1SQ, _ROWS, _COLS, _DECAY, _STEP, _MODE = (
    _NAMES.index(k) for k in ("sign", "one_minus_beta2", "eps1_sq", "rows", "cols", "decay",
                              "step", "mode"))
#: the dtypes Adafactor steps (no low-precision rows: the state is kept in the param's dtype)
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_KEYS = ("lr", "beta2_decay", "eps", "d", "weight_decay", "maximize")


class AdafactorHyper(NamedTuple):
    """Adafactor's hyperparameters, validated (torch's functional names: eps1, eps2)."""

    lr: float
    beta2_decay: float
    eps1: float | None
    eps2: float
    d: float
    weight_decay: float
    maximize: bool


def check_adafactor(lr: object = 1e-2, beta2_decay: object = -0.8, eps1: object = None,
                    eps2: object = 1e-3, d: object = 1.0, weight_decay: object = 0.0,
                    maximize: object = False, *, eps_label: str = "eps") -> AdafactorHyper:
    """Validate Adafactor's hyperparameters; return them canonical. Raises TypeError or
    ValueError naming the argument, the bad value and what is accepted. ``eps_label``: how
    the messages name eps1 and eps2 (the class's ``eps[0]``, ``eps[1]``; the functional
    call's ``eps1``, ``eps2`` with eps_label="")."""
    n1, n2 = (f"{eps_label}[0]", f"{eps_label}[1]") if eps_label else ("eps1", "eps2")
    lr_ = v.finite_nonneg(lr, "lr")
    b = v.real(beta2_decay, "beta2_decay")
    if not -math.inf < b <= 0.0:
        raise ValueError(f"beta2_decay must be a finite number <= 0 (beta2_t = 1 - "
                         f"t**beta2_decay), got {beta2_decay!r}")
    e1 = None if eps1 is None else v.finite_nonneg(eps1, n1 + " (None: the dtype's eps)")
    e2 = v.finite_nonneg(eps2, n2)
    d_ = v.real(d, "d")
    if not d_ >= 1.0:        # also NaN
        raise ValueError(f"d (the clipping threshold) must be a number >= 1 (inf: no "
                         f"clipping), got {d!r}")
    wd = v.finite_nonneg(weight_decay, "weight_decay")
    return AdafactorHyper(lr_, b, e1, e2, d_, wd, v.flag(maximize, "maximize"))


def _check_group(group: Mapping[str, Any]) -> AdafactorHyper:
    eps = v.pair(group["eps"], "eps")
    return check_adafactor(group["lr"], group["beta2_decay"], eps[0], eps[1], group["d"],
                           group["weight_decay"], group["maximize"])


def factor_shapes(shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes of a param's row and column factors (torch's: the last dimension, resp.
    the one before it, kept as 1)."""
    return shape[:-1] + (1,), shape[:-2] + (1, shape[-1])


def _lerp(a: NDArray[Any], b: NDArray[Any], w: np.floating[Any],
          omw: np.floating[Any]) -> NDArray[Any]:
    # torch.lerp's formula, in the arrays' dtype (the kernels' _lerp).
    out: NDArray[Any] = a + w * (b - a) if w < 0.5 else b - (b - a) * omw
    return out


class _Mat(NamedTuple):
    t: int               # tensor index in the plan
    rows: int            # offset of its B*R row results in the plan's row results
    cols: int            # offset of its B*C column results
    B: int
    R: int
    C: int


class _GroupStep:
    """One group's step: its plan over the params and their state, and the host-side part
    (the factors' update, alpha and clipping: O(B*(R + C)) per param, in NumPy).

    ``state[t]`` is param t's [row factor, column factor] (factored) or [variance]; each a
    C-contiguous array of the param's dtype. The plan's state columns are the row factor
    (or the variance), the column factor and rmean, all passed whole to the kernels."""

    def __init__(self, params: list[FloatArray], state: list[list[FloatArray]],
                 labels: list[str], steps: Sequence[int] | None = None) -> None:
        self.params = params
        self.state = state
        self.dtype = params[0].dtype
        self.n = len(params)
        self.mats: list[_Mat] = []
        nb = sum(int(np.prod(p.shape[:-2], dtype=np.int64)) for p in params if p.ndim >= 2)
        self.rmean = np.zeros(nb, dtype=self.dtype)
        self.flat: list[tuple[FloatArray, ...]] = []   # per tensor: flat views of its state
        columns: list[list[FloatArray | None]] = []
        factored = np.zeros(self.n)
        rc = np.zeros((self.n, 2))
        ro = co = bo = 0
        for t, (p, st) in enumerate(zip(params, state)):
            if p.ndim >= 2:
                B = int(np.prod(p.shape[:-2], dtype=np.int64))
                R, C = p.shape[-2], p.shape[-1]
                rm = self.rmean[bo:bo + B]
                self.mats.append(_Mat(t, ro, co, B, R, C))
                self.flat.append((st[0].reshape(-1), st[1].reshape(-1), rm))
                columns.append([st[0], st[1], rm])
                factored[t] = 1.0
                rc[t] = R, C
                ro, co, bo = ro + B * R, co + B * C, bo + B
            else:
                self.flat.append((st[0].reshape(-1),))
                columns.append([st[0], None, None])
        self.factored = factored
        self.plan = _kernels.Plan(params, columns, 3, len(_NAMES), labels, steps)
        self.plan.hp_array[:, _ROWS] = rc[:, 0]
        self.plan.hp_array[:, _COLS] = rc[:, 1]
        nrows, ncols = self.plan.tile_shape()
        assert (nrows, ncols) == (ro, co)
        self.rows = np.zeros(nrows)
        self.cols = np.zeros(ncols)
        self.sqrt_numel = np.sqrt(np.array([max(p.size, 1) for p in params], dtype=np.float64))

    def run(self, hyper: AdafactorHyper, grads: Sequence[FloatArray | None]) -> None:
        """One step of the active tensors of the plan, bound to `grads` (everything already
        checked)."""
        plan = self.plan
        if plan.nactive == 0:
            return
        plan.advance()
        active = plan.active_array.astype(bool)
        steps = plan.steps_array
        lr, beta2_decay, eps1, eps2, d, wd, maximize = hyper
        if eps1 is None:
            eps1 = float(np.finfo(self.dtype).eps)
        # Per distinct step count (usually one), in Python floats as torch computes them.
        w = np.zeros(self.n)
        rho = np.zeros(self.n)
        for s in set(steps[active].tolist()):
            sel = active & (steps == s)
            w[sel] = float(s) ** beta2_decay
            rho[sel] = min(lr, 1.0 / float(s) ** 0.5)
        hp = plan.hp_array
        hp[:, _SIGN] = -1.0 if maximize else 1.0
        hp[:, _W] = w
        hp[:, _EPS1SQ] = eps1 * eps1
        hp[:, _DECAY] = 1.0 - lr * wd
        hp[:, _MODE] = self.factored + (2.0 if wd != 0.0 else 0.0)
        psq = np.zeros(self.n)
        if self.mats:
            per_tensor, _ = plan.reduce_tiles(_FACTORS, self.rows, self.cols)
            psq += per_tensor[:, 0]
            self._factors(active, w, eps1)
        per_tensor, _ = plan.reduce(_NORM)
        psq += per_tensor[:, 1]
        rms_p = np.sqrt(psq) / self.sqrt_numel
        # Python's max(eps2, x) and max(1, y), as torch writes them (a NaN x gives eps2).
        alpha = np.where(rms_p > eps2, rms_p, eps2) * rho
        rms_u = np.sqrt(per_tensor[:, 0]) / (self.sqrt_numel * d)
        hp[:, _STEP] = -alpha / np.where(rms_u > 1.0, rms_u, 1.0)
        plan.run(_APPLY)

    def _factors(self, active: NDArray[np.bool_], w: NDArray[np.float64], eps1: float) -> None:
        """The factors' lerp toward this step's row and column means of g^2 (from the tile
        pass, in double) and each matrix's rmean = max(mean of its row factor, eps1)."""
        dt = self.dtype.type
        e1 = dt(eps1)
        for m in self.mats:
            if not active[m.t] or m.B * m.R * m.C == 0:
                continue
            row, col, rmean = self.flat[m.t]
            wt = dt(w[m.t])
            omw = dt(1) - wt
            row[...] = _lerp(row, (self.rows[m.rows:m.rows + m.B * m.R] / m.C).astype(
                self.dtype), wt, omw)
            col[...] = _lerp(col, (self.cols[m.cols:m.cols + m.B * m.C] / m.R).astype(
                self.dtype), wt, omw)
            rmean[...] = np.maximum(
                (row.reshape(m.B, m.R).sum(axis=1, dtype=np.float64) / m.R).astype(self.dtype),
                e1)


def _check_dtype(p: FloatArray, what: str) -> None:
    if p.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{what} has dtype {p.dtype}, but Adafactor steps float32 and float64 "
                        f"params only (its factors are kept in the param's dtype; there are "
                        f"no low-precision rows); convert it, e.g. p.astype(np.float32)")


class Adafactor(ParamGroups):
    r"""Adafactor (Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear
    Memory Cost"), in torch.optim.Adafactor's variant, with its arguments and defaults.

    For each param, at step t (counted per param), with g the gradient (negated when
    ``maximize``)::

        beta2_t = 1 - t ** beta2_decay            (the lerp weight is t ** beta2_decay)
        rho_t   = min(lr, 1 / sqrt(t))            (relative step size)
        alpha_t = max(eps2, RMS(p)) * rho_t       (RMS(x) = ||x||_2 / sqrt(numel))
        p       = p * (1 - lr * weight_decay)     (decoupled weight decay)
        if p.ndim >= 2:   (factored over the last two dimensions; leading ones are a batch)
            R = lerp(R, mean(g * g, dim=-1), t ** beta2_decay)      (row factor, ... x R x 1)
            C = lerp(C, mean(g * g, dim=-2), t ** beta2_decay)      (column factor, ... x 1 x C)
            V = (R @ C) / max(mean(R, dim=-2), eps1)
        else:
            V = lerp(V, g * g, t ** beta2_decay)
        U = g / sqrt(max(V, eps1 * eps1))
        p = p - alpha_t / max(1, RMS(U) / d) * U

    As torch does (and unlike the paper): ``lr`` caps rho_t and scales the weight decay;
    eps1 guards the variance estimate and the update rather than the squared gradient; the
    factors are means of g*g rather than sums. ``eps1=None`` is the dtype's machine epsilon.
    A param with no elements only counts its step.

    Each step is three passes over a group (cython_kernels/adafactor.pxi.tp), with no
    temporary the size of a param: a tile pass (the row and column sums of g*g over the last
    two dimensions and ||p||^2, folded in a fixed order: bitwise the same for any thread
    count), the factors' update (O(rows + columns) values), a reduction of ||U||^2 (and the
    unfactored variances' update), and the fused update; U is recomputed in the last pass.

    Args (torch's):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): default 1e-2, >= 0: the cap of the relative step size, and the weight
            decay's coefficient.
        beta2_decay (float): default -0.8, <= 0.
        eps (tuple): (eps1, eps2), default (None, 1e-3): eps1 >= 0 or None (the dtype's
            eps), eps2 >= 0 (the floor of RMS(p) in alpha).
        d (float): default 1.0, >= 1 (inf: no clipping): the update clipping threshold.
        weight_decay (float): default 0.0, >= 0.
        maximize (bool): default False; ascend instead of descend.

    State per param (torch's keys): ``step``, and ``row_var`` (shape ``(*lead, R, 1)``) and
    ``col_var`` (``(*lead, 1, C)``) for a param of two or more dimensions, or ``variance``
    (the param's shape) otherwise. The low-precision options of the other optimizers
    (``master_weights``, ``state_dtype``, ...) are not supported: float32 and float64 only.
    """

    def __init__(self, params: ParamsArg, lr: float = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0,
                 weight_decay: float = 0.0, *, maximize: bool = False,
                 **precision: Any) -> None:
        if precision:
            raise TypeError(f"Adafactor does not take {', '.join(sorted(precision))}: the "
                            f"low-precision options (master_weights, state_dtype, "
                            f"min_quantized_size, stochastic_rounding, seed) are not "
                            f"supported by Adafactor, which steps float32 and float64 params "
                            f"only (supported: {', '.join(map(str, SUPPORTED_DTYPES))})")
        self.defaults: dict[str, Any] = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                                             weight_decay=weight_decay, maximize=maximize)
        _check_group(self.defaults)
        self.param_groups: list[dict[str, Any]] = []
        self._names: list[str | None] = []
        self._group_slices: list[range] = []
        self._steps: list[_GroupStep] = []
        self._pinned: list[tuple[FloatArray, ...]] = []
        self._hyper_cache: list[tuple[Any, AdafactorHyper]] = []
        self._started: list[bool] = []          # per param: has state (stepped or loaded)
        self._state_views: list[dict[str, FloatArray]] = []
        self._grad_getter: Any = None
        for group in parse_params(params):
            self._add_group(group)

    # -- construction -----------------------------------------------------------------------
    def _add_group(self, group_in: Mapping[str, Any]) -> None:
        _, names, arrays = group_arrays(group_in)
        self._check_group_keys(group_in)
        check_new_params(self, names, arrays)   # type: ignore[arg-type]
        start = len(self._names)
        for k, p in enumerate(arrays):
            _check_dtype(p, label("params", start + k, names[k]))
        group = dict(self.defaults)
        group.update({k: val for k, val in group_in.items() if k != "params"})
        hyper = _check_group(group)
        # The group's state: one buffer each for the row factors, the column factors and
        # the variances, each param's state a view of it (torch's shapes).
        dtype = arrays[0].dtype
        sizes = {"row_var": 0, "col_var": 0, "variance": 0}
        shapes: list[dict[str, tuple[int, ...]]] = []
        for p in arrays:
            if p.ndim >= 2:
                rs, cs = factor_shapes(p.shape)
                shapes.append({"row_var": rs, "col_var": cs})
            else:
                shapes.append({"variance": p.shape})
            for key, shp in shapes[-1].items():
                sizes[key] += int(np.prod(shp, dtype=np.int64))
        bufs = {key: aligned_bytes(cnt * dtype.itemsize, PAGE).view(dtype)
                for key, cnt in sizes.items()}
        at = dict.fromkeys(sizes, 0)
        views: list[dict[str, FloatArray]] = []
        for sh in shapes:
            entry: dict[str, FloatArray] = {}
            for key, shp in sh.items():
                cnt = int(np.prod(shp, dtype=np.int64))
                entry[key] = bufs[key][at[key]:at[key] + cnt].reshape(shp)
                at[key] += cnt
            views.append(entry)
        state = [[e["row_var"], e["col_var"]] if "row_var" in e else [e["variance"]]
                 for e in views]
        labels = [label("grads", start + k, names[k]) for k in range(len(arrays))]
        group["params"] = arrays
        self.param_groups.append(group)
        self._names.extend(names)
        self._group_slices.append(range(start, start + len(arrays)))
        self._steps.append(self._group_step(arrays, state, labels))
        self._pinned.append(tuple(arrays))
        self._hyper_cache.append((tuple(group[k] for k in _KEYS), hyper))
        self._started.extend([False] * len(arrays))
        self._state_views.extend(views)
        self._grad_getter = None

    #: how a group steps (the reference twin steps through NumPy)
    _group_step = _GroupStep

    def _hyper(self, gi: int) -> AdafactorHyper:
        group = self.param_groups[gi]
        key = tuple(group[k] for k in _KEYS)
        cached = self._hyper_cache[gi]
        if key != cached[0]:
            cached = self._hyper_cache[gi] = (key, _check_group(group))
        return cached[1]

    # -- the step ---------------------------------------------------------------------------
    @exclusive
    def step(self, grads: Any) -> bool:
        """One update of every param that has a grad (a grad of None skips its param).

        ``grads``: a list aligned with the params in order across groups, or a dict keyed by
        name when every param was named. Everything is checked before anything is written.
        Returns True (as fusedoptim's other optimizers do when they do not skip a step).
        """
        per_group = self._split(grads)
        hypers = [self._hyper(gi) for gi in range(len(self.param_groups))]
        for gi, group in enumerate(self.param_groups):
            if not _kernels.same_items(group["params"], self._pinned[gi]):
                raise ValueError(f"param_groups[{gi}]['params'] changed after the optimizer "
                                 f"was built; build a new optimizer for new params "
                                 f"(load_state_dict carries the state over) or add them with "
                                 f"add_param_group")
        for gi, gs in enumerate(self._steps):
            gs.plan.bind(per_group[gi])
        for gi, gs in enumerate(self._steps):
            gs.run(hypers[gi], per_group[gi])
            sl = self._group_slices[gi]
            for t, g in enumerate(per_group[gi]):
                if g is not None:
                    self._started[sl.start + t] = True
        return True

    def _split(self, grads: Any) -> list[list[Any]]:
        flat = grads_in_param_order(self, grads)
        return [list(flat[s.start:s.stop]) for s in self._group_slices]

    # -- state ------------------------------------------------------------------------------
    def _sync(self) -> list[int]:
        return [int(s) for gs in self._steps for s in gs.plan.steps_array]

    @property
    def state(self) -> dict[int, dict[str, Any]]:
        """Param index -> its state: ``step`` (a copy) and the live factor or variance
        buffers, for the params that have stepped."""
        steps = self._sync()
        return {i: {"step": steps[i], **self._state_views[i]}
                for i in range(len(self._names)) if self._started[i]}

    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters, step counts and copies of the state buffers, keyed by the flat
        param index as in torch."""
        state = {i: {k: (x.copy() if isinstance(x, np.ndarray) else x) for k, x in st.items()}
                 for i, st in self.state.items()}
        return {"state": state, "param_groups": saved_groups(self)}

    @exclusive
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint. Everything is checked first (group layout, hyperparameters,
        state keys, shapes and step counts); a rejected checkpoint changes nothing. Params
        without an entry start afresh."""
        if not isinstance(state_dict, dict) or set(state_dict) < {"state", "param_groups"}:
            raise TypeError("state_dict must be a dict with 'state' and 'param_groups', as "
                            "returned by Adafactor.state_dict()")
        merged_groups = _merged_groups(self, state_dict["param_groups"], ("foreach",))
        for gi, merged in enumerate(merged_groups):
            unknown = set(merged) - set(self.defaults) - {"params", "initial_lr"}
            if unknown:
                raise ValueError(f"state_dict param_groups[{gi}] has unknown "
                                 f"hyperparameter(s) {sorted(unknown)}")
            _check_group(merged)
        loaded: dict[int, tuple[int, dict[str, NDArray[Any]]]] = {}
        states = state_dict["state"]
        if not isinstance(states, Mapping):
            raise TypeError(f"state_dict['state'] must be a dict, got {type(states).__name__}")
        for i, st in states.items():
            if not isinstance(i, int) or not 0 <= i < len(self._names):
                raise ValueError(f"state_dict['state'] has key {i!r}; expected param indices "
                                 f"0..{len(self._names) - 1}")
            loaded[i] = self._check_entry(i, st)
        # Checked: now replace everything at once.
        for g, merged in zip(self.param_groups, merged_groups):
            g.update({k: val for k, val in merged.items() if k != "params"})
        for gi, gs in enumerate(self._steps):
            for t, i in enumerate(self._group_slices[gi]):
                step, arrays = loaded.get(i, (0, {}))
                for k, view in self._state_views[i].items():
                    view[...] = arrays[k] if k in arrays else 0
                gs.plan.steps_array[t] = step
                self._started[i] = i in loaded

    def _check_entry(self, i: int, st: Any) -> tuple[int, dict[str, NDArray[Any]]]:
        where = f"state_dict['state'][{i}]"
        views = self._state_views[i]
        expected = {"step", *views}
        if not isinstance(st, Mapping) or set(st) != expected:
            raise ValueError(f"{where} must hold exactly {sorted(expected)} for this param, "
                             f"got {sorted(st) if isinstance(st, Mapping) else st!r}")
        step = st["step"]
        if hasattr(step, "item") and getattr(step, "size", 0) == 1:
            step = step.item()          # torch saves a float tensor
        if (isinstance(step, bool) or not isinstance(step, (int, float))
                or not float(step).is_integer() or step < 0):
            raise ValueError(f"{where}['step'] must be a whole number >= 0, got {st['step']!r}")
        arrays = {}
        for k, view in views.items():
            a = st[k]
            if (not isinstance(a, np.ndarray) or a.shape != view.shape
                    or a.dtype.kind != "f"):
                raise ValueError(f"{where}[{k!r}] must be a float array of shape {view.shape}, "
                                 f"got {getattr(a, 'dtype', type(a).__name__)} of shape "
                                 f"{getattr(a, 'shape', '?')}")
            arrays[k] = a
        return int(step), arrays



# -- the functional entry -----------------------------------------------------------------------

def _check_lists(params: Sequence[FloatArray], grads: Sequence[FloatArray | None],
                 row_vars: Sequence[FloatArray | None], col_vars: Sequence[FloatArray | None],
                 variances: Sequence[FloatArray | None], state_steps: Any
                 ) -> list[list[FloatArray]]:
    """Check the functional call's lists; return each param's state arrays, in the order
    _GroupStep takes them."""
    n = len(params) if isinstance(params, (list, tuple)) else -1
    if n < 1:
        raise ValueError(f"params must be a non-empty list of arrays, got {params!r:.60}")
    for name, lst in (("grads", grads), ("row_vars", row_vars), ("col_vars", col_vars),
                      ("variances", variances), ("state_steps", state_steps)):
        if not isinstance(lst, (list, tuple, np.ndarray)) or len(lst) != n:
            raise ValueError(f"{name} must be a list with one entry per param ({n}), got "
                             f"{type(lst).__name__} of length "
                             f"{len(lst) if hasattr(lst, '__len__') else 'n/a'}")
    state = []
    for i, p in enumerate(params):
        _kernels.check_param(p, f"params[{i}]")
        _check_dtype(p, f"params[{i}]")
        if p.dtype != params[0].dtype:
            raise TypeError(f"params[{i}] has dtype {p.dtype}, but params[0] has "
                            f"{params[0].dtype}; pass params of one dtype per call")
        s = state_steps[i]
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise TypeError(f"state_steps[{i}] must be an int >= 0, got {s!r}")
        want: list[tuple[str, FloatArray | None, tuple[int, ...]]]
        if p.ndim >= 2:
            rs, cs = factor_shapes(p.shape)
            want = [("row_vars", row_vars[i], rs), ("col_vars", col_vars[i], cs)]
        else:
            want = [("variances", variances[i], p.shape)]
        arrays = []
        for name, a, shape in want:
            if (not isinstance(a, np.ndarray) or a.dtype != p.dtype or a.shape != shape
                    or not a.flags.c_contiguous or not a.flags.writeable):
                raise ValueError(f"{name}[{i}] must be a writeable C-contiguous {p.dtype} "
                                 f"array of shape {shape} (params[{i}] has shape {p.shape}), "
                                 f"got {getattr(a, 'dtype', type(a).__name__)} of shape "
                                 f"{getattr(a, 'shape', '?')}; start it with "
                                 f"np.zeros({shape}, {p.dtype})")
            arrays.append(a)
        state.append(arrays)
    return state


def adafactor(params: Sequence[FloatArray], grads: Sequence[FloatArray | None],
              row_vars: Sequence[FloatArray | None], col_vars: Sequence[FloatArray | None],
              variances: Sequence[FloatArray | None], state_steps: Any, *, d: float = 1.0,
              lr: float = 1e-2, beta2_decay: float = -0.8, weight_decay: float = 0.0,
              eps1: float | None = None, eps2: float = 1e-3, maximize: bool = False) -> None:
    """Fused Adafactor step over lists, torch.optim.adafactor's functional signature (see
    :class:`fusedoptim.Adafactor` for the rule). A param of two or more dimensions needs its
    ``row_vars``/``col_vars`` entries (shapes ``(*lead, R, 1)`` and ``(*lead, 1, C)``), one of
    fewer its ``variances`` entry (the param's shape); the other lists' entries are not looked
    at (None is fine). ``state_steps``: ints (or an int64 array), each with a grad
    incremented. Everything is checked before anything is written."""
    hyper = check_adafactor(lr, beta2_decay, eps1, eps2, d, weight_decay, maximize,
                            eps_label="")
    state = _check_lists(params, grads, row_vars, col_vars, variances, state_steps)
    gs = _GroupStep(list(params), state, [f"grads[{i}]" for i in range(len(params))],
                    [int(s) for s in state_steps])
    grads = list(grads)
    gs.plan.bind(grads)
    gs.run(hyper, grads)
    for i, g in enumerate(grads):
        if g is not None:
            state_steps[i] = int(gs.plan.steps_array[i])
