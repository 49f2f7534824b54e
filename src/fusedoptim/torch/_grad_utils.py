"""torch.nn.utils.clip_grad_norm_ / clip_grad_value_ for torch CPU tensors, on fusedoptim's
fused reductions (one GIL-free pass per dtype over every grad, bitwise identical for any
thread count)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .. import grad_utils as _fused
from ._tensors import NUMPY_DTYPES, as_array, device_error


def _grad_arrays(parameters: torch.Tensor | Iterable[torch.Tensor]) -> tuple[list[Any], Any]:
    """NumPy views of the grads of `parameters` (those with a grad), checked; and the first
    grad's torch dtype (None: no grads)."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    arrays = []
    first = None
    for i, p in enumerate(parameters):
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
        if first is None:
            first = g.dtype
        arrays.append(as_array(g))
    return arrays, first


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
    arrays, dtype = _grad_arrays(parameters)
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
