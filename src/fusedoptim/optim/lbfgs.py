"""L-BFGS with torch.optim.LBFGS's algorithm, stopping rules and strong Wolfe line search.

The algorithm (the control flow, the stopping rules and the line search, which are scalar
work) is written once, in :class:`LBFGS`; the vector work goes through an ops object:

* :class:`_FusedOps` (this module): flat buffers and fused passes on the shared driver
  (``cython_kernels/lbfgs.pxi.tp``): the gradient gathered into a flat buffer with its
  max |g| in one pass, the history pair and its three dot products in one pass, each step
  of the two-loop recursion's axpy fused with the next step's dot product, the params moved
  by one kernel over their own layout (one tensor when they tile one buffer);
* ``fusedoptim.reference._LBFGSReferenceOps``: NumPy, torch's operations one per line, the
  oracle of the twin ``fo.reference.LBFGS``. Both compute the same values in the same order:
  the twin matches bit for bit.

Scalars follow torch's types: torch keeps ``ys``, ``ro``, ``H_diag``, ``al``, ``gtd``... as
0-dim tensors of the params' dtype and mixes them with Python floats (the loss, ``lr``); here
they are NumPy scalars of the params' dtype, whose promotion with Python floats (NEP 50) is
torch's, so float32 scalar arithmetic rounds where torch's does.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .. import _kernels
from .. import _validation as v
from .._exclusive import exclusive
from .._layout import MAPPINGS, group_arrays, parse_params
from ..flat import FlatParams

if TYPE_CHECKING:
    from .._typing import FloatArray, ParamGroup, ParamsArg

_GATHER = _kernels.REDUCE_IDS["lbfgs_gather"]
_YS = _kernels.REDUCE_IDS["lbfgs_ys"]
_AXPY = _kernels.REDUCE_IDS["lbfgs_axpy"]
_DOT = _kernels.REDUCE_IDS["dot"]
_SUMABS = _kernels.REDUCE_IDS["sumabs"]
_STEP = _kernels.KERNEL_IDS["lbfgs_step"]
_NSCAL = len(_kernels.SCALARS["lbfgs_axpy"])     # mode c a h t

# lbfgs_axpy's modes (flags: from_src 1, axpy 2, scale 4, amax 8, dot_y 16, dot_src 32)
_M_LOOP = 2            # x += a*y;                 sum z.x
_M_LOOP1_FIRST = 3     # x = c*src + a*y;          sum z.x
_M_LOOP1_LAST = 23     # x = (c*src + a*y) * h;    sum y.x
_M_FIRST = 41          # x = c*src;                sum src.x, max |x|
_M_LOOP2_LAST = 42     # x += a*y;                 sum src.x, max |x|
_M_NO_HISTORY = 45     # x = c*src * h;            sum src.x, max |x|
# lbfgs_step's modes: p += t*d; x = p then p += t*d; p = x + t*d
_S_ADD, _S_SAVE, _S_FROM_X = 0, 1, 2

#: torch's _strong_wolfe defaults (LBFGS.step passes only max_ls)
C1, C2, LS_TOLERANCE_CHANGE = 1e-4, 0.9, 1e-9

STATE_KEYS = ("func_evals", "n_iter", "d", "t", "old_dirs", "old_stps", "ro", "H_diag",
              "prev_flat_grad", "prev_loss", "al")


class LBFGSHyper(NamedTuple):
    lr: float
    max_iter: int
    max_eval: int
    tolerance_grad: float
    tolerance_change: float
    history_size: int
    line_search_fn: str | None


def _int_arg(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_lbfgs(lr: object = 1, max_iter: object = 20, max_eval: object = None,
                tolerance_grad: object = 1e-7, tolerance_change: object = 1e-9,
                history_size: object = 100, line_search_fn: object = None) -> LBFGSHyper:
    """Validate LBFGS's hyperparameters; return them canonical (``max_eval=None`` becomes
    ``max_iter * 5 // 4``, as torch sets it)."""
    lr_f = v.finite_nonneg(lr, "lr")
    mi = _int_arg(max_iter, "max_iter")
    me = mi * 5 // 4 if max_eval is None else _int_arg(max_eval, "max_eval")
    tg = v.nonneg(tolerance_grad, "tolerance_grad", " (0 stops only at a zero gradient)")
    tc = v.nonneg(tolerance_change, "tolerance_change", " (0 disables the change tests)")
    hs = _int_arg(history_size, "history_size")
    if line_search_fn is not None and line_search_fn != "strong_wolfe":
        raise ValueError(f"line_search_fn must be None or 'strong_wolfe', got "
                         f"{line_search_fn!r}")
    return LBFGSHyper(lr_f, mi, me, tg, tc, hs, line_search_fn)


# -- the line search: scalar work, torch's formulas -------------------------------------------

def _cubic_interpolate(x1: Any, f1: Any, g1: Any, x2: Any, f2: Any, g2: Any,
                       bounds: tuple[Any, Any] | None = None) -> Any:
    """The minimizer of the cubic through (x1, f1, g1) and (x2, f2, g2), clamped to
    `bounds` (default: between x1 and x2); their midpoint when the cubic has none."""
    if bounds is not None:
        lo, hi = bounds
    else:
        lo, hi = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 * d1 - g1 * g2            # torch's d1**2 is d1 * d1
    if d2_square >= 0:
        d2 = np.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, lo), hi)
    return (lo + hi) / 2.0


#: a gradient of the line search: its flat buffer, max |g| and g.d (scalars of the dtype)
Grad = tuple[Any, Any, Any]


def _strong_wolfe(obj_func: Callable[[Any, list[Any]], tuple[float, Grad]], t: Any,
                  d_norm: Any, f: float, g: Grad, gtd: Any, c1: float = C1, c2: float = C2,
                  tolerance_change: float = LS_TOLERANCE_CHANGE, max_ls: int = 25
                  ) -> tuple[float, Grad, Any, int]:
    """torch's strong Wolfe line search (minFunc's), along d from x (both held by obj_func).

    obj_func(t, live) evaluates the loss and gradient at x + t*d; `live` lists the gradient
    buffers still referenced here, which the new gradient must not overwrite. Returns
    (loss, gradient, t, evaluations)."""
    f_new, g_new = obj_func(t, [g[0]])
    ls_func_evals = 1
    gtd_new = _gtd(g_new)
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    bracket: list[Any]
    bracket_f: list[Any]
    bracket_g: list[Grad]
    bracket_gtd: list[Any] = []
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        # interpolate
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new,
                               bounds=(min_step, max_step))
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new, gtd_new
        f_new, g_new = obj_func(t, [g[0], g_prev[0]])
        ls_func_evals += 1
        gtd_new = _gtd(g_new)
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]

    # zoom: refine the bracket until a point satisfies the conditions
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0],
                               bracket[1], bracket_f[1], bracket_gtd[1])
        # a trial too close to the bracket's ends (twice in a row, or on/outside them)
        # moves to 0.1 of the bracket's length from the nearer end
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = max(bracket) - eps
                else:
                    t = min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new, g_new = obj_func(t, [g[0]] + [b[0] for b in bracket_g])
        ls_func_evals += 1
        gtd_new = _gtd(g_new)
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            # Armijo fails, or no lower than the lowest point: the new high end
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = g_new, gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                # the old high end becomes the new low end
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos] = bracket_g[low_pos]
                bracket_gtd[high_pos] = bracket_gtd[low_pos]
            # the new point becomes the low end
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos], bracket_gtd[low_pos] = g_new, gtd_new
    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals


def _gtd(g: Any) -> Any:
    """The directional derivative g.d of a line-search gradient (its third entry)."""
    return g[2]


# -- the fused vector work ----------------------------------------------------------------------

class OpsBase:
    """What the vector work of an LBFGS knows of its params, whichever implements it (the
    fused passes here, or the NumPy twin's): the arrays, their labels for errors, the flat
    view when they tile one buffer, the dtype and its scalar type, the total size."""

    def __init__(self, params: list[FloatArray], labels: list[str],
                 flat_param: FloatArray | None) -> None:
        self.params = params
        self.labels = labels
        self.flat_param = flat_param
        self.dtype = params[0].dtype
        self.D: Any = self.dtype.type
        self.size = sum(p.size for p in params)


class _FusedOps(OpsBase):
    """The flat buffers of one LBFGS and the fused passes over them.

    Buffers (1-D, the params' total size, dtype): ``d`` (the direction), ``q`` (the
    two-loop vector), ``x`` (the params before a line search; only with one), a pool of
    gradient buffers (a new gradient goes to one that nothing still references) and a pool
    of history pairs (y, s), at most ``history_size + 1`` of them (a candidate pair is
    written before ys decides whether it joins the history). Each pass runs on a plan over
    one flat tensor, cached by the buffers it names; the gather and the param step run on a
    plan over the params (one tensor when params and grads tile one buffer)."""

    def __init__(self, params: list[FloatArray], labels: list[str],
                 flat_param: FloatArray | None) -> None:
        super().__init__(params, labels, flat_param)
        self.offsets = np.concatenate([[0], np.cumsum([p.size for p in params])]).tolist()
        self.d = self._new()
        self.q = self._new()
        self.x: FloatArray | None = None
        self.grad_pool: list[FloatArray] = []
        self.free_pairs: list[tuple[FloatArray, FloatArray]] = []
        self._flat_plans: dict[tuple[Any, ...], _kernels.Plan] = {}
        self._param_plans: dict[tuple[int, bool], _kernels.Plan] = {}
        self._last_param_plan: _kernels.Plan | None = None

    def _new(self) -> FloatArray:
        from ..flat import aligned_zeros
        return aligned_zeros(self.size, self.dtype)

    def ensure_x(self) -> None:
        if self.x is None:
            self.x = self._new()
            self._param_plans.clear()

    def _views(self, buf: FloatArray | None) -> list[FloatArray | None]:
        if buf is None:
            return [None] * len(self.params)
        o = self.offsets
        return [buf[o[i]:o[i + 1]].reshape(p.shape) for i, p in enumerate(self.params)]

    # -- plans ------------------------------------------------------------------------------
    def _flat(self, kind: str, first: FloatArray, second: FloatArray,
              state: Sequence[FloatArray | None]) -> _kernels.Plan:
        key = (kind, id(first), id(second), *(id(s) for s in state))
        plan = self._flat_plans.get(key)
        if plan is None:
            plan = _kernels.Plan([first], [list(state)], len(state), _NSCAL, ["lbfgs"])
            plan.bind([second])
            self._flat_plans[key] = plan
        return plan

    def _param_plan(self, target: FloatArray, flat: bool) -> _kernels.Plan:
        key = (id(target), flat)
        plan = self._param_plans.get(key)
        if plan is None:
            if flat:
                assert self.flat_param is not None
                plan = _kernels.Plan([self.flat_param], [[target, self.d, self.x]], 3, _NSCAL,
                                     ["the closure's grads"])
            else:
                state = [list(t) for t in zip(self._views(target), self._views(self.d),
                                              self._views(self.x))]
                plan = _kernels.Plan(self.params, state, 3, _NSCAL, self.labels)
            self._param_plans[key] = plan
        return plan

    def _fresh_grad(self, live: Sequence[Any]) -> FloatArray:
        for buf in self.grad_pool:
            if not any(buf is b for b in live):
                return buf
        buf = self._new()
        self.grad_pool.append(buf)
        return buf

    # -- passes -----------------------------------------------------------------------------
    def gather(self, grads: list[FloatArray | None], flat_grad: FloatArray | None,
               live: Sequence[Any]) -> tuple[FloatArray, Any]:
        """Validate grads (the closure's, in param order) and copy them into a fresh flat
        buffer; return it and max |g|. Raises before writing anything when a grad is
        refused."""
        target = self._fresh_grad(live)
        flat = flat_grad is not None and self.flat_param is not None
        plan = self._param_plan(target, flat)
        plan.bind([flat_grad] if flat else grads)
        amax = plan.reduce(_GATHER)[1][0]
        if not flat:
            for view, g in zip(self._views(target), grads):
                if g is None:               # torch: a param without a grad counts zeros
                    assert view is not None
                    view.fill(0)
        self._last_param_plan = plan
        return target, self.D(amax)

    def sumabs(self, g: FloatArray) -> Any:
        """|g|_1, rounded to the dtype (torch's flat_grad.abs().sum())."""
        plan = self._flat("sumabs", g, self.q, ())
        return self.D(plan.reduce(_SUMABS)[1][0])

    def dot(self, x: FloatArray, y: FloatArray, c: float = 1.0) -> float:
        """x.(c*y) in double (c = +-1)."""
        plan = self._flat("dot", x, y, ())
        plan.set_scalars((c, 0.0, 0.0, 0.0, 0.0))     # the dot kernel reads c from column 0
        return float(plan.reduce(_DOT)[1][0])

    def _axpy(self, mode: int, x: FloatArray, src: FloatArray, y: FloatArray | None,
              z: FloatArray | None, c: float = 1.0, a: Any = 0.0,
              h: Any = 1.0) -> tuple[float, float]:
        plan = self._flat("axpy", x, src, (y, z))
        D = self.D
        plan.set_scalars((mode, c, float(D(a)), float(D(h)), 0.0))
        out = plan.reduce(_AXPY)[1]
        return out[0], out[1]

    def first_direction(self, g: FloatArray) -> tuple[Any, Any]:
        """d = -g; returns (g.d, max |d|)."""
        gtd, amax = self._axpy(_M_FIRST, self.d, g, None, None, c=-1.0)
        return self.D(gtd), self.D(amax)

    def pair(self, g: FloatArray, prev: FloatArray, t: Any
             ) -> tuple[Any, Any, float, FloatArray, FloatArray]:
        """y = g - prev, s = t*d into a spare pair; returns (y.s, y.y, s.(-g) in double,
        y, s)."""
        y, s = self.free_pairs.pop() if self.free_pairs else (self._new(), self._new())
        plan = self._flat("ys", g, prev, (self.d, y, s))
        plan.set_scalars((0.0, 0.0, 0.0, 0.0, float(self.D(t))))
        ys, yy, sq = plan.reduce(_YS)[1]
        return self.D(ys), self.D(yy), sq, y, s

    def release(self, y: FloatArray, s: FloatArray) -> None:
        self.free_pairs.append((y, s))

    def two_loop(self, g: FloatArray, dirs: list[FloatArray], stps: list[FloatArray],
                 ro: list[Any], H_diag: Any, al: list[Any], sq: float | None
                 ) -> tuple[Any, Any]:
        """d = the L-BFGS direction from g and the history (torch's two-loop recursion,
        al[i] written as it goes); returns (g.d, max |d|). `sq`: s_{k-1}.(-g) when the
        newest pair was just computed by pair()."""
        D = self.D
        k = len(dirs)
        if k == 0:
            gtd, amax = self._axpy(_M_NO_HISTORY, self.d, g, None, None, c=-1.0, h=H_diag)
            return D(gtd), D(amax)
        if sq is None:
            sq = self.dot(stps[k - 1], g, -1.0)
        al[k - 1] = D(sq) * ro[k - 1]
        # first loop: q = -g; q -= al[i] * y_i, with al[i-1] = ro[i-1] * s_{i-1}.q fused
        for i in range(k - 1, 0, -1):
            mode, src, c = (_M_LOOP1_FIRST, g, -1.0) if i == k - 1 else (_M_LOOP, self.d, 1.0)
            dot, _ = self._axpy(mode, self.q, src, dirs[i], stps[i - 1], c=c, a=-al[i])
            al[i - 1] = D(dot) * ro[i - 1]
        # its last step writes d = r = q * H_diag, fused with be_0 = ro[0] * y_0.r
        src, c = (g, -1.0) if k == 1 else (self.q, 1.0)
        dot, _ = self._axpy(_M_LOOP1_LAST, self.d, src, dirs[0], None, c=c, a=-al[0],
                            h=H_diag)
        be_i = D(dot) * ro[0]
        # second loop: r += (al[i] - be_i) * s_i, with be_{i+1} fused; the last pass gives
        # g.d and max |d|
        for i in range(k - 1):
            dot, _ = self._axpy(_M_LOOP, self.d, self.q, stps[i], dirs[i + 1],
                                a=al[i] - be_i)
            be_i = D(dot) * ro[i + 1]
        gtd, amax = self._axpy(_M_LOOP2_LAST, self.d, g, stps[k - 1], None,
                               a=al[k - 1] - be_i)
        return D(gtd), D(amax)

    def move(self, t: Any, mode: int) -> None:
        """The params: p += t*d (_S_ADD), x = p then p += t*d (_S_SAVE), p = x + t*d."""
        plan = self._last_param_plan
        assert plan is not None             # a gather ran first
        plan.active_array[...] = 1
        plan.set_scalars((float(mode), 0.0, 0.0, 0.0, float(self.D(t))))
        plan.run(_STEP)

    # -- state ------------------------------------------------------------------------------
    def adopt_grad(self, values: Any, live: Sequence[Any]) -> FloatArray:
        buf = self._fresh_grad(live)
        buf[...] = values
        return buf

    def adopt_pair(self, y: Any, s: Any) -> tuple[FloatArray, FloatArray]:
        yb, sb = self.free_pairs.pop() if self.free_pairs else (self._new(), self._new())
        yb[...] = y
        sb[...] = s
        return yb, sb


# -- the optimizer ------------------------------------------------------------------------------

class LBFGS:
    r"""L-BFGS (Liu & Nocedal, 1989, "On the limited memory BFGS method for large scale
    optimization"; Nocedal & Wright, "Numerical Optimization", Algorithms 7.4-7.5), with the
    algorithm, stopping rules and line search of ``torch.optim.LBFGS`` (after minFunc).

    ``step(closure)`` runs up to ``max_iter`` iterations. ``closure()`` evaluates the model
    at the current params and returns ``(loss, grads)``: grads in the structure ``step``
    takes for this optimizer's params (a list in param order, a dict keyed by name, the
    FlatParams' ``grads``, or None for a FlatParams' grad buffer); a None entry counts as
    zeros, as torch counts a param without ``.grad``. Per iteration, with g the flat
    gradient and k the pairs in history (oldest first)::

        first iteration:  d = -g,  H = 1
        else:             y = g - g_prev,  s = t_prev * d
                          if y.s > 1e-10: add (y, s) (dropping the oldest beyond
                              history_size), ro = 1 / y.s, H = y.s / y.y
                          q = -g;  for i = k-1 .. 0:  al_i = ro_i * s_i.q;  q -= al_i y_i
                          d = H q; for i = 0 .. k-1:  be = ro_i * y_i.d;   d += (al_i - be) s_i
        t = min(1, 1/|g|_1) * lr on the very first iteration, else lr
        stop when g.d > -tolerance_change; then
        without a line search: params += t*d and re-evaluate (except on the last iteration)
        with "strong_wolfe":  t from torch's strong Wolfe search (c1=1e-4, c2=0.9, cubic
                              interpolation and zoom, at most max_eval - evaluations so far
                              trials); params += t*d
        stop after max_iter iterations or max_eval evaluations, or when max|g| <=
        tolerance_grad, max|t*d| <= tolerance_change or |loss - prev_loss| <
        tolerance_change.

    The step also stops before any iteration when max|g| <= tolerance_grad at the start.
    It returns the first evaluation's loss, as the closure returned it.

    The vector work runs fused on the shared driver over flat buffers (see
    ``cython_kernels/lbfgs.pxi.tp``): dot products in double, bitwise the same for any
    thread count; the NumPy twin ``fo.reference.LBFGS`` matches it bit for bit. Params
    that tile one buffer (a :class:`FlatParams`) are moved as one tensor.

    Args:
        params: float32 or float64 C-contiguous arrays: a list, a dict name -> array, a
            FlatParams, or one param group (a dict with ``"params"``; torch's LBFGS takes
            one group only).
        lr (float): learning rate, default 1, finite and >= 0.
        max_iter (int): iterations per ``step``, default 20, >= 1.
        max_eval (int): closure evaluations per ``step``, default ``max_iter * 5 // 4``.
        tolerance_grad (float): stop at max|g| <= this, default 1e-7, >= 0.
        tolerance_change (float): stop when the step or the loss changes less, default 1e-9,
            >= 0 (the line search keeps torch's own 1e-9, as torch does).
        history_size (int): pairs kept, default 100, >= 1.
        line_search_fn (str): None (a fixed step ``t``) or ``"strong_wolfe"``.

    State (``state_dict()["state"][0]``, torch's keys; vectors flat): ``func_evals``,
    ``n_iter``, ``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``,
    ``prev_flat_grad``, ``prev_loss``, ``al``. Memory: about ``2 * history_size + 5``
    vectors of the params' size (torch: ``2 * history_size`` plus temporaries).

    If a closure call after the first raises, or returns grads that are refused, the error
    propagates with the params moved by that iteration's step (torch's state on an error is
    as partial); the first call's grads are checked before anything is written.
    """

    _ops_type: Callable[..., Any] = _FusedOps

    def __init__(self, params: ParamsArg, lr: float = 1, max_iter: int = 20,
                 max_eval: int | None = None, tolerance_grad: float = 1e-7,
                 tolerance_change: float = 1e-9, history_size: int = 100,
                 line_search_fn: str | None = None) -> None:
        hyper = check_lbfgs(lr, max_iter, max_eval, tolerance_grad, tolerance_change,
                            history_size, line_search_fn)
        self.defaults: dict[str, Any] = hyper._asdict()
        groups = parse_params(params)
        if len(groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter "
                             f"groups); got {len(groups)} groups, pass one list or dict of "
                             f"arrays")
        arena, names, arrays = group_arrays(groups[0])
        unknown = set(groups[0]) - set(self.defaults) - {"params", "initial_lr"}
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)} in the param group; "
                             f"accepted: {sorted(self.defaults)}")
        labels = [v.label("params", i, n) for i, n in enumerate(names)]
        for a, lab in zip(arrays, labels):
            _kernels.check_param(a, lab)
            if a.dtype not in (np.float32, np.float64):
                raise TypeError(f"{lab} has dtype {a.dtype}; LBFGS takes float32 or float64 "
                                f"params, convert it with x.astype(np.float32)")
        if len({a.dtype for a in arrays}) > 1:
            raise TypeError(f"params have mixed dtypes {sorted({str(a.dtype) for a in arrays})}; "
                            f"LBFGS steps one dtype, convert them to one")
        named = [n for n in names if n is not None]
        if len(set(named)) != len(named):
            raise ValueError("param names must be unique")
        clash = _kernels.find_overlap(list(arrays))
        if clash is not None:
            raise ValueError(f"{labels[clash[0]]} and {labels[clash[1]]} share memory (the same "
                             f"array given twice, or overlapping views); give each param its "
                             f"own buffer")
        group = dict(self.defaults)
        group.update({k: val for k, val in groups[0].items() if k != "params"})
        if "max_eval" not in groups[0] and "max_iter" in groups[0]:
            group["max_eval"] = None            # from the group's own max_iter
        self._check_group(group)
        group["params"] = arrays
        self.param_groups: list[ParamGroup] = [group]
        self._arena = arena
        self._names = names
        self._arrays = tuple(arrays)
        self._grad_labels = [v.label("the closure's grads", i, n) for i, n in enumerate(names)]
        flat_param = (_kernels.tile_view(list(arrays)) if arena is not None or len(arrays) > 1
                      else arrays[0].reshape(-1))
        self._ops = self._ops_type(list(arrays), self._grad_labels, flat_param)
        self._st: dict[str, Any] = {}
        self._getter: Callable[[Mapping[str, Any]], Sequence[Any]] | None = None

    @staticmethod
    def _check_group(group: Mapping[str, Any]) -> LBFGSHyper:
        return check_lbfgs(group["lr"], group["max_iter"], group["max_eval"],
                           group["tolerance_grad"], group["tolerance_change"],
                           group["history_size"], group["line_search_fn"])

    @exclusive
    def add_param_group(self, param_group: ParamGroup) -> None:
        raise ValueError("LBFGS doesn't support per-parameter options (parameter groups); "
                         "build it with all params in one list or dict")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the FlatParams' grad buffer when built from one; otherwise the grads are
        the closure's, and this does nothing (kept for torch compatibility)."""
        if self._arena is not None:
            self._arena.zero_grad()

    # -- the closure's grads ----------------------------------------------------------------
    def _grads(self, grads: Any) -> tuple[list[Any], FloatArray | None]:
        """The closure's grads as a list in param order, and the flat grad when they tile
        one buffer like the params (then the list is not read). Raises on a bad structure;
        each array is checked when bound."""
        n = len(self._arrays)
        arena = self._arena
        if grads is None or (arena is not None and grads is arena.grads):
            if arena is None:
                raise TypeError("the closure returned grads=None, but the params are not a "
                                "FlatParams; return (loss, grads) with grads a list of "
                                "arrays in param order (or a dict keyed by param name)")
            return list(arena._grad_views), arena.flat_grad
        if isinstance(grads, MAPPINGS):
            if any(k is None for k in self._names):
                raise TypeError("the closure returned grads as a dict, but the params were "
                                "not named; return a list of grads in param order")
            keys = [k for k in self._names if k is not None]
            if len(grads) != n or any(k not in grads for k in keys):
                missing = [k for k in keys if k not in grads]
                extra = [k for k in grads if k not in set(keys)]
                raise ValueError(f"the closure's grads keys do not match the params: missing "
                                 f"{missing}, unexpected {extra}")
            flat = [grads[k] for k in keys]
        elif isinstance(grads, (list, tuple)):
            if len(grads) != n:
                raise ValueError(f"the closure returned {len(grads)} grads but there are {n} "
                                 f"params; return one grad (or None) per param, in order")
            flat = list(grads)
        elif isinstance(grads, np.ndarray) and n == 1:
            flat = [grads]
        else:
            raise TypeError(f"the closure's grads must be a list of arrays (or a dict keyed "
                            f"by param name), got {type(grads).__name__}")
        fg = (_kernels.tile_view(flat, list(self._arrays))
              if self._ops.flat_param is not None and all(g is not None for g in flat) else None)
        return flat, fg

    def _evaluate(self, closure: Callable[[], Any], live: Sequence[Any]
                  ) -> tuple[Any, float, FloatArray, Any]:
        """Call the closure; return (its loss as returned, as a float, the gathered flat
        gradient, its max |g|)."""
        out = closure()
        if not isinstance(out, tuple) or len(out) != 2:
            raise TypeError(f"closure() must return a tuple (loss, grads), got "
                            f"{type(out).__name__}{'' if not isinstance(out, tuple) else f' of length {len(out)}'}")
        raw, grads = out
        try:
            loss = float(raw)
        except (TypeError, ValueError):
            raise TypeError(f"the closure's loss must be a real number (or a 1-element "
                            f"array), got {raw!r}") from None
        flat, fg = self._grads(grads)
        g, amax = self._ops.gather(flat, fg, live)
        return raw, loss, g, amax

    # -- the step ---------------------------------------------------------------------------
    @exclusive
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Run up to ``max_iter`` L-BFGS iterations; return the first evaluation's loss."""
        if closure is None:
            raise TypeError("LBFGS.step needs a closure: step(closure), where closure() "
                            "evaluates the model and returns (loss, grads)")
        if not callable(closure):
            raise TypeError(f"closure must be callable (a function returning (loss, grads)), "
                            f"got {type(closure).__name__}")
        group = self.param_groups[0]
        if not _kernels.same_items(group["params"], self._arrays):
            raise ValueError("param_groups[0]['params'] changed after the optimizer was "
                             "built; build a new LBFGS for new params")
        h = self._check_group(group)
        ops = self._ops
        D = ops.D
        st = self._st
        if h.line_search_fn is not None:
            ops.ensure_x()
        lr, max_iter, max_eval = h.lr, h.max_iter, h.max_eval
        tolerance_grad, tolerance_change = h.tolerance_grad, h.tolerance_change
        history_size = h.history_size

        prev_flat_grad = st.get("prev_flat_grad")
        orig_loss, loss, g, gmax = self._evaluate(closure, [prev_flat_grad])
        st.setdefault("func_evals", 0)
        st.setdefault("n_iter", 0)
        current_evals = 1
        st["func_evals"] += 1
        if gmax <= tolerance_grad:
            return orig_loss

        t = st.get("t")
        old_dirs: list[FloatArray] = st.get("old_dirs", [])
        old_stps: list[FloatArray] = st.get("old_stps", [])
        ro: list[Any] = st.get("ro", [])
        H_diag = st.get("H_diag")
        prev_loss = st.get("prev_loss")
        n_iter = 0
        with np.errstate(all="ignore"):     # IEEE results, as torch's tensors give
            while n_iter < max_iter:
                n_iter += 1
                st["n_iter"] += 1
                # -- the direction
                if st["n_iter"] == 1:
                    gtd, dmax = ops.first_direction(g)
                    for pair in zip(old_dirs, old_stps):
                        ops.release(*pair)
                    old_dirs, old_stps, ro = [], [], []
                    H_diag = 1
                else:
                    assert prev_flat_grad is not None
                    ys, yy, sq, y, s = ops.pair(g, prev_flat_grad, t)
                    fresh = bool(ys > 1e-10)
                    if fresh:
                        if len(old_dirs) >= history_size:
                            while len(old_dirs) >= history_size:   # (a smaller size loaded)
                                ops.release(old_dirs.pop(0), old_stps.pop(0))
                                ro.pop(0)
                        old_dirs.append(y)
                        old_stps.append(s)
                        ro.append(1.0 / ys)
                        H_diag = ys / yy
                    else:
                        ops.release(y, s)
                    al = st.setdefault("al", [None] * history_size)
                    if len(al) < len(old_dirs):
                        al.extend([None] * (len(old_dirs) - len(al)))
                    gtd, dmax = ops.two_loop(g, old_dirs, old_stps, ro, H_diag, al,
                                             sq if fresh else None)
                prev_flat_grad = g
                prev_loss = loss
                # -- the step length
                if st["n_iter"] == 1:
                    t = min(1.0, 1.0 / ops.sumabs(g)) * lr
                else:
                    t = lr
                if gtd > -tolerance_change:
                    break
                ls_func_evals = 0
                if h.line_search_fn is not None:
                    first = [True]

                    def obj_func(tt: Any, live: list[Any]) -> tuple[float, Grad]:
                        ops.move(tt, _S_SAVE if first[0] else _S_FROM_X)
                        first[0] = False
                        _, f_new, g_new, m_new = self._evaluate(closure, live)
                        return f_new, (g_new, m_new, D(ops.dot(g_new, ops.d)))

                    loss, (g, gmax, _), t, ls_func_evals = _strong_wolfe(
                        obj_func, t, dmax, loss, (g, gmax, gtd), gtd,
                        max_ls=max_eval - current_evals)
                    ops.move(t, _S_FROM_X)
                    opt_cond = gmax <= tolerance_grad
                else:
                    ops.move(t, _S_ADD)
                    opt_cond = False
                    if n_iter != max_iter:
                        _, loss, g, gmax = self._evaluate(closure, [prev_flat_grad])
                        opt_cond = gmax <= tolerance_grad
                        ls_func_evals = 1
                current_evals += ls_func_evals
                st["func_evals"] += ls_func_evals
                # -- the stopping rules
                if n_iter == max_iter:
                    break
                if current_evals >= max_eval:
                    break
                if opt_cond:
                    break
                if D(abs(D(t)) * dmax) <= tolerance_change:    # max |t*d|
                    break
                if abs(loss - prev_loss) < tolerance_change:
                    break
        st["d"] = ops.d
        st["t"] = t
        st["old_dirs"] = old_dirs
        st["old_stps"] = old_stps
        st["ro"] = ro
        st["H_diag"] = H_diag
        st["prev_flat_grad"] = prev_flat_grad
        st["prev_loss"] = prev_loss
        return orig_loss

    # -- state ------------------------------------------------------------------------------
    @property
    def state(self) -> dict[int, dict[str, Any]]:
        """``{0: state}`` after the first step (torch keeps LBFGS's state under its first
        param), else ``{}``; copies, as in :meth:`state_dict`."""
        state: dict[int, dict[str, Any]] = self.state_dict()["state"]
        return state

    def state_dict(self) -> dict[str, Any]:
        """The hyperparameters and copies of the state, torch's keys (flat vectors)."""
        group = {k: val for k, val in self.param_groups[0].items() if k != "params"}
        group["params"] = list(range(len(self._arrays)))
        state: dict[int, dict[str, Any]] = {}
        if self._st:
            state[0] = {k: _copied(val) for k, val in self._st.items()}
        return {"state": state, "param_groups": [group]}

    @exclusive
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint of :meth:`state_dict` (NumPy arrays, or anything np.asarray
        takes, such as torch.optim.LBFGS's CPU tensors). Everything is checked first; a
        refused checkpoint leaves the optimizer as it was."""
        if not isinstance(state_dict, Mapping) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError("state_dict must be a dict with keys 'state' and 'param_groups' "
                             "(from LBFGS.state_dict())")
        groups = state_dict["param_groups"]
        if not isinstance(groups, (list, tuple)) or len(groups) != 1 \
                or not isinstance(groups[0], Mapping):
            raise ValueError("state_dict['param_groups'] must hold one param group (LBFGS "
                             "has one)")
        saved = groups[0]
        n = len(self._arrays)
        if len(saved.get("params", ())) != n:
            raise ValueError(f"state_dict's param group has {len(saved.get('params', ()))} "
                             f"params, this optimizer {n}")
        group = {k: val for k, val in saved.items() if k != "params"}
        missing = [k for k in self.defaults if k not in group]
        if missing:
            raise ValueError(f"state_dict's param group lacks {missing}")
        self._check_group(group)
        entries = state_dict["state"]
        if not isinstance(entries, Mapping) or set(entries) - {0}:
            raise ValueError(f"state_dict['state'] must be empty or {{0: state}}, got keys "
                             f"{sorted(map(repr, entries)) if isinstance(entries, Mapping) else type(entries).__name__}")
        st = self._parse_state(entries.get(0))
        # -- checked: now write
        ops = self._ops
        for pair in zip(self._st.get("old_dirs", []), self._st.get("old_stps", [])):
            ops.release(*pair)
        new_st = dict(st)
        if "d" in st:
            ops.d[...] = st["d"]
            new_st["d"] = ops.d
        if st.get("prev_flat_grad") is not None:
            new_st["prev_flat_grad"] = ops.adopt_grad(st["prev_flat_grad"], [])
        if "old_dirs" in st:
            pairs = [ops.adopt_pair(y, s) for y, s in zip(st["old_dirs"], st["old_stps"])]
            new_st["old_dirs"] = [y for y, _ in pairs]
            new_st["old_stps"] = [s for _, s in pairs]
        self._st = new_st
        self.param_groups[0].update(group)

    def _parse_state(self, entry: Any) -> dict[str, Any]:
        """A checkpoint's state entry, checked and converted (vectors to flat arrays of the
        params' dtype, tensor-like scalars to scalars of that dtype)."""
        if entry is None:
            return {}
        if not isinstance(entry, Mapping):
            raise ValueError(f"state_dict['state'][0] must be a dict, got "
                             f"{type(entry).__name__}")
        unknown = set(entry) - set(STATE_KEYS)
        if unknown:
            raise ValueError(f"state_dict['state'][0] has unknown keys {sorted(unknown)}; "
                             f"LBFGS's are {STATE_KEYS}")
        ops = self._ops
        D = ops.D
        out: dict[str, Any] = {}
        for k in ("func_evals", "n_iter"):
            val = entry.get(k)
            if isinstance(val, bool) or not isinstance(val, numbers.Integral) or val < 0:
                raise ValueError(f"state_dict['state'][0][{k!r}] must be an integer >= 0, got "
                                 f"{val!r}")
            out[k] = int(val)

        def vector(val: Any, label: str) -> FloatArray:
            arr = np.asarray(val)
            if arr.dtype.kind != "f" or arr.size != ops.size:
                raise ValueError(f"state_dict['state'][0]{label} must be a float array of "
                                 f"{ops.size} elements (the params' total size), got "
                                 f"dtype {arr.dtype}, {arr.size} elements")
            return arr.reshape(-1).astype(ops.dtype)

        def scalar(val: Any, label: str) -> Any:
            if isinstance(val, bool):
                raise ValueError(f"state_dict['state'][0]{label} must be a number, got {val!r}")
            if isinstance(val, (int, float)) and not isinstance(val, np.generic):
                return val                      # a Python number stays one, as in torch
            arr = np.asarray(val)
            if arr.size != 1 or arr.dtype.kind not in "fiu":
                raise ValueError(f"state_dict['state'][0]{label} must be a number, got {val!r}")
            return D(arr.reshape(-1)[0])

        for k in ("d", "prev_flat_grad"):
            if entry.get(k) is not None:
                out[k] = vector(entry[k], f"[{k!r}]")
        for k in ("t", "H_diag"):
            if entry.get(k) is not None:
                out[k] = scalar(entry[k], f"[{k!r}]")
        if entry.get("prev_loss") is not None:
            out["prev_loss"] = float(scalar(entry["prev_loss"], "['prev_loss']"))
        lists = [k for k in ("old_dirs", "old_stps", "ro") if entry.get(k) is not None]
        if lists:
            if len(lists) != 3:
                raise ValueError("state_dict['state'][0] must hold old_dirs, old_stps and ro "
                                 "together")
            lens = {len(entry[k]) for k in lists}
            if len(lens) != 1:
                raise ValueError(f"state_dict['state'][0]: old_dirs, old_stps and ro must be "
                                 f"as long as each other, got {[len(entry[k]) for k in lists]}")
            out["old_dirs"] = [vector(y, f"['old_dirs'][{i}]")
                               for i, y in enumerate(entry["old_dirs"])]
            out["old_stps"] = [vector(s, f"['old_stps'][{i}]")
                               for i, s in enumerate(entry["old_stps"])]
            out["ro"] = [D(scalar(r, f"['ro'][{i}]")) for i, r in enumerate(entry["ro"])]
        if entry.get("al") is not None:
            out["al"] = [None if a is None else D(scalar(a, f"['al'][{i}]"))
                         for i, a in enumerate(entry["al"])]
        if out["n_iter"] > 0 and ("d" not in out or "prev_flat_grad" not in out
                                  or "old_dirs" not in out or "t" not in out):
            raise ValueError("state_dict['state'][0] has n_iter > 0 but lacks d, t, "
                             "prev_flat_grad or old_dirs/old_stps/ro")
        return out


def _copied(val: Any) -> Any:
    if isinstance(val, np.ndarray):
        return val.copy()
    if isinstance(val, list):
        return [_copied(x) for x in val]
    return val
