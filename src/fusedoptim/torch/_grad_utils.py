"""torch.nn.utils.clip_grad_norm_ / clip_grad_value_ for torch CPU tensors, on fusedoptim's
fused reductions (one GIL-free pass per dtype over every grad, bitwise identical for any
thread count)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .. import _kernels
from .. import grad_utils as _fused
from ._optimizer import shared_grad_plans
from ._tensors import NUMPY_DTYPES, device_error

_TYPENUMS = {t: d.num for t, d in NUMPY_DTYPES.items()}


def _grad_arrays(parameters: torch.Tensor | Iterable[torch.Tensor]) -> tuple[list[Any], Any]:
    """NumPy views of the grads of `parameters` (those with a grad), checked; and the first
    grad's torch dtype (None: no grads)."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    params = parameters if type(parameters) is list else list(parameters)
    grads = [p.grad if isinstance(p, torch.Tensor) else p for p in params]
    present = [g for g in grads if g is not None]
    # The common case checked in one expression per grad and viewed in one C call (as the
    # optimizer's step does); anything else is examined one by one for the precise error.
    nums = [_TYPENUMS.get(g.dtype) if isinstance(g, torch.Tensor) else None for g in present]
    if all(num is not None and g.is_cpu and g.layout is torch.strided and g.is_contiguous()
           for g, num in zip(present, nums)):
        arrays = _kernels.flat_views_at([g.numel() for g in present],
                                        [g.data_ptr() for g in present], nums, present)
        return arrays, (present[0].dtype if present else None)
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"parameters[{i}] must be a torch.Tensor, got {type(p).__name__}")
        g = p.grad
        if g is None:
            continue
        what = f"the grad of parameters[{i}]"
        err = device_error(g, what)
        if err is not None:
            raise ValueError(err)
        if g.dtype not in NUMPY_DTYPES:
            raise TypeError(f"{what} has dtype {g.dtype}; float32, float64, bfloat16 and "
                            f"float16 grads are supported")
        if not g.is_contiguous():
            raise ValueError(f"{what} is not contiguous (strides {g.stride()}); make it "
                             f"contiguous: p.grad = p.grad.contiguous()")
    raise AssertionError("unreachable: a grad failed the fast check but none the slow one")


def clip_grad_norm_(parameters: torch.Tensor | Iterable[torch.Tensor], max_norm: float,
                    norm_type: float | str = 2.0, error_if_nonfinite: bool = False,
                    foreach: bool | None = None) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` on the fused reductions: scale the grads of
    `parameters` in place so that their total ``norm_type``-norm is at most `max_norm`, and
    return that total norm (before clipping) as a 0-d tensor of the grads' dtype.

    Semantics are torch's (coef = min(max_norm / (total + 1e-6), 1); a non-finite norm scales
    by it, or raises with ``error_if_nonfinite=True`` before changing anything). The norm is
    accumulated in double (torch: in the grads' dtype), so it may differ from torch's in the
    last bits. ``foreach`` is accepted for torch compatibility and ignored: this is always one
    fused pass. With no grads, returns ``tensor(0.)`` as torch does.
    """
    params = parameters if type(parameters) is list else (
        [parameters] if isinstance(parameters, torch.Tensor) else list(parameters))
    shared = shared_grad_plans(params)
    if shared is not None:
        # the params of a drop-in optimizer: its grad views and their plans
        plans, dtype = shared
        if dtype is None:
            return torch.tensor(0.0)
        total = _fused.clip_planned(plans, max_norm, norm_type, error_if_nonfinite)
        return torch.tensor(total, dtype=dtype)
    arrays, dtype = _grad_arrays(params)
    if not arrays:
        return torch.tensor(0.0)
    total = _fused.clip_grad_norm_(arrays, max_norm, norm_type, error_if_nonfinite)
    return torch.tensor(total, dtype=dtype)


def clip_grad_value_(parameters: torch.Tensor | Iterable[torch.Tensor], clip_value: float,
                     foreach: bool | None = None) -> None:
    """``torch.nn.utils.clip_grad_value_`` on the fused kernels: clamp every grad element of
    `parameters` into ``[-clip_value, clip_value]`` in place. ``foreach`` is ignored."""
    arrays, _ = _grad_arrays(parameters)
    _fused.clip_grad_value_(arrays, clip_value)
