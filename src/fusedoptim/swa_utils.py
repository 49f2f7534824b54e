"""Weight averaging: an averaged copy of the params, updated in one fused pass.

The NumPy counterpart of ``torch.optim.swa_utils``: :class:`AveragedParams` plays
``AveragedModel(model, multi_avg_fn=..., use_buffers=False)`` over arrays instead of a module,
with torch's two averages:

* ``decay=None``: Stochastic Weight Averaging's running mean (``get_swa_multi_avg_fn``;
  Izmailov et al., 2018, "Averaging Weights Leads to Wider Optima and Better Generalization",
  arXiv:1803.05407);
* ``decay=d``: an exponential moving average (``get_ema_multi_avg_fn(d)``; Polyak &
  Juditsky, 1992; the "EMA of weights" of most modern training recipes).

The learning-rate side of SWA is :class:`fusedoptim.lr_scheduler.SWALR`.

This module is a room of its own: it imports the core (the kernels and their driver), and the
core never imports it. Its NumPy reference twin is :class:`ReferenceAveragedParams`, here too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _kernels
from ._exclusive import exclusive
from ._validation import label

if TYPE_CHECKING:
    from ._typing import FloatArray

__all__ = ["AveragedParams", "ReferenceAveragedParams"]

_KERNEL = _kernels.KERNEL_IDS["average"]
_NSCALARS = len(_kernels.SCALARS["average"])
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# the kernel's modes (cython_kernels/swa.pxi.tp)
_SMALL, _LARGE, _COPY = 0, 1, 2


def _check_decay(decay: object) -> float | None:
    if decay is None:
        return None
    if isinstance(decay, bool) or not isinstance(decay, (int, float, np.floating,
                                                         np.integer)):
        raise TypeError(f"decay must be None (SWA's running mean) or a real number in "
                        f"[0, 1] (an EMA), got {decay!r} ({type(decay).__name__})")
    d = float(decay)
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"decay must be in [0, 1] (torch's get_ema_multi_avg_fn range), or "
                         f"None for SWA's running mean; got {decay!r}")
    return d


def averaging_weight(decay: float | None, n_averaged: int, dtype: Any) -> float:
    """The lerp weight of an update after `n_averaged` earlier ones, as torch computes it:
    ``1 - decay`` (EMA), or ``1 / (n_averaged + 1)`` computed in float32 (SWA: torch divides
    its int64 counter in the default dtype, float32, whatever the params' dtype); then
    rounded to `dtype`, the precision torch's lerp computes in."""
    if decay is not None:
        w = 1.0 - decay
    else:
        w = float(np.float32(1.0) / np.float32(n_averaged + 1))
    return float(np.dtype(dtype).type(w))


class AveragedParams:
    """An averaged copy of arrays, updated in one fused multi-tensor pass per dtype
    (torch.optim.swa_utils.AveragedModel with ``use_buffers=False``).

    The copy starts as a copy of `params` (torch deep-copies the model). Each
    :meth:`update_parameters` call moves it toward the arrays it is given; the first copies
    them, as torch's does. With ``a`` an averaged array, ``p`` its param and ``n`` the
    updates so far (``n_averaged``)::

        n == 0:                a = p
        EMA (decay=d):         a = lerp(a, p, 1 - d)          (get_ema_multi_avg_fn(d))
        SWA (decay=None):      a = lerp(a, p, 1 / (n + 1))    (get_swa_multi_avg_fn)
        n = n + 1

    where ``lerp(a, p, w)`` is torch's: ``a + w * (p - a)`` for ``|w| < 0.5``, else
    ``p - (p - a) * (1 - w)``, in the arrays' dtype. SWA's ``1 / (n + 1)`` is computed in
    float32, as torch computes it from its int64 counter. (torch's vectorised lerp fuses the
    multiply-add; this kernel rounds each operation, identically on every ISA level and for
    any thread count, so results can differ from torch's by an ulp.)

    Args:
        params: a list (or tuple) or a dict of float32/float64 C-contiguous arrays, no two
            sharing memory; dtypes may be mixed.
        decay (float or None): None (default) for SWA's running mean; a number in [0, 1]
            for an EMA with that decay (torch's default in get_ema_multi_avg_fn is 0.999).

    Attributes:
        params: the averaged arrays, in the structure given (a list, or a dict with the
            same keys); live arrays, updated in place.
        n_averaged (int): the number of updates so far.
    """

    _fused = True

    def __init__(self, params: Sequence[FloatArray] | Mapping[str, FloatArray], *,
                 decay: float | None = None) -> None:
        self.decay = _check_decay(decay)
        keys, arrays = self._structure(params, "params")
        if not arrays:
            raise ValueError("params is empty; give at least one array to average")
        labels = [label("params", i, None if keys is None else keys[i])
                  for i in range(len(arrays))]
        for a, where in zip(arrays, labels):
            _kernels.check_param(a, where)
            if a.dtype not in _FLOATS:
                raise TypeError(f"{where} has dtype {a.dtype}; AveragedParams takes float32 "
                                f"or float64 arrays; convert it with a.astype(np.float32)")
        clash = _kernels.find_overlap(list(arrays))
        if clash is not None:
            raise ValueError(f"{labels[clash[0]]} and {labels[clash[1]]} share memory; give "
                             f"each param its own buffer")
        self._keys = keys
        self._avg: list[FloatArray] = [np.array(a, order="C", copy=True) for a in arrays]
        self.n_averaged = 0
        # one plan per dtype, float32 first: (indices into the params, its plan)
        self._plans: list[tuple[list[int], _kernels.Plan]] = []
        for dt in _FLOATS:
            idx = [i for i, a in enumerate(self._avg) if a.dtype == dt]
            if idx:
                plan = _kernels.Plan([self._avg[i] for i in idx], [None] * len(idx), 0,
                                     _NSCALARS,
                                     [label("params", i, None if keys is None else keys[i])
                                      for i in idx])
                self._plans.append((idx, plan))

    @staticmethod
    def _structure(params: object, name: str) -> tuple[list[str] | None, list[Any]]:
        if isinstance(params, Mapping):
            return list(params.keys()), list(params.values())
        if isinstance(params, np.ndarray) or not isinstance(params, (list, tuple)):
            raise TypeError(f"{name} must be a list or dict of arrays, got "
                            f"{type(params).__name__}")
        return None, list(params)

    def _arrays_like(self, params: object) -> list[Any]:
        """The arrays of an update_parameters call, in our order (structure checked)."""
        keys, arrays = self._structure(params, "params")
        if self._keys is None:
            if keys is not None:
                raise TypeError("params is a dict, but the averaged params were given as a "
                                "list; pass a list in the same order")
            if len(arrays) != len(self._avg):
                raise ValueError(f"params has {len(arrays)} arrays; the averaged params have "
                                 f"{len(self._avg)}: pass the same arrays, in the same order")
            return arrays
        if keys is None:
            raise TypeError("params is a list, but the averaged params were given as a dict; "
                            "pass a dict with the same keys")
        if set(keys) != set(self._keys):
            missing = sorted(set(self._keys) - set(keys))
            extra = sorted(set(keys) - set(self._keys))
            raise ValueError(f"params has keys that differ from the averaged params' "
                             f"(missing {missing}, unknown {extra}); pass the same keys")
        got = dict(zip(keys, arrays))
        return [got[k] for k in self._keys]

    def _label(self, i: int) -> str:
        return label("params", i, None if self._keys is None else self._keys[i])

    @property
    def params(self) -> list[FloatArray] | dict[str, FloatArray]:
        if self._keys is None:
            return list(self._avg)
        return dict(zip(self._keys, self._avg))

    @exclusive
    def update_parameters(self, params: Sequence[FloatArray] | Mapping[str, FloatArray]
                          ) -> None:
        """Move the averages toward `params` (the same structure, shapes and dtypes as at
        construction): one fused pass per dtype. Everything is checked before anything is
        written."""
        arrays = self._arrays_like(params)
        for i, a in enumerate(arrays):
            if a is None:
                raise ValueError(f"{self._label(i)} is None; every averaged array needs its "
                                 f"param")
        for idx, plan in self._plans:
            plan.bind([arrays[i] for i in idx])     # checks; writes only the plan's tables
        for idx, plan in self._plans:
            dt = self._avg[idx[0]].dtype
            if self.n_averaged == 0:
                row = (0.0, float(_COPY))
            else:
                w = averaging_weight(self.decay, self.n_averaged, dt)
                row = (w, float(_SMALL if abs(w) < 0.5 else _LARGE))
            if self._fused:
                plan.hp_array[:, :] = row
                plan.run(_KERNEL)
            else:
                for i in idx:
                    reference_update(self._avg[i], arrays[i], row[0], int(row[1]))
        self.n_averaged += 1

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"n_averaged": int, "params": copies of the averaged arrays}`` (the structure
        given: a list or a dict). The decay is a constructor setting, not state (as torch's
        avg functions are not in AveragedModel's state_dict)."""
        copies = [a.copy() for a in self._avg]
        return {"n_averaged": self.n_averaged,
                "params": copies if self._keys is None else dict(zip(self._keys, copies))}

    @exclusive
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict`. Everything is checked first; a rejected one leaves the
        averages untouched."""
        if not isinstance(state_dict, Mapping) or set(state_dict) != {"n_averaged", "params"}:
            raise TypeError("state_dict must be a dict with exactly 'n_averaged' and "
                            "'params', as returned by AveragedParams.state_dict()")
        n = state_dict["n_averaged"]
        if isinstance(n, np.ndarray) and n.size == 1:
            n = n.item()
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"state_dict['n_averaged'] must be an integer >= 0, got {n!r}")
        arrays = self._arrays_like(state_dict["params"])
        for i, (a, avg) in enumerate(zip(arrays, self._avg)):
            where = f"state_dict['params'][{i if self._keys is None else repr(self._keys[i])}]"
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{where} must be an ndarray, got {type(a).__name__}")
            if a.shape != avg.shape or a.dtype != avg.dtype:
                raise ValueError(f"{where} has shape {a.shape} and dtype {a.dtype}; it must "
                                 f"have shape {avg.shape} and dtype {avg.dtype}")
        for a, avg in zip(arrays, self._avg):
            avg[...] = a
        self.n_averaged = int(n)

    def __repr__(self) -> str:
        what = "SWA" if self.decay is None else f"EMA, decay={self.decay}"
        return (f"{type(self).__name__}({len(self._avg)} arrays, {what}, "
                f"n_averaged={self.n_averaged})")


def reference_update(avg: FloatArray, p: FloatArray, weight: float, mode: int) -> None:
    """The NumPy reference of the kernel (cython_kernels/swa.pxi.tp), one array: `weight`
    and `mode` as AveragedParams computes them."""
    dt = avg.dtype.type
    w = dt(weight)
    if mode == _COPY:
        avg[...] = p
    elif mode == _LARGE:
        avg[...] = p - (p - avg) * (dt(1) - w)
    else:
        avg[...] = avg + w * (p - avg)


class ReferenceAveragedParams(AveragedParams):
    """NumPy reference twin of :class:`AveragedParams`: the same API, checks and weights,
    updating one array at a time in NumPy (the tests' oracle)."""

    _fused = False

