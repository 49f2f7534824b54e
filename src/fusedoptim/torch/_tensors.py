"""Zero-copy views between torch CPU tensors and NumPy arrays, and the checks that make them
safe: a view of a tensor fusedoptim cannot write through (CUDA, sparse, strided, an unsupported
dtype) is refused with the param's name and the fix, before anything is built or written."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import torch

#: torch dtype -> the NumPy dtype the kernels see (bfloat16: ml_dtypes', as in fusedoptim)
NUMPY_DTYPES: dict[torch.dtype, np.dtype[Any]] = {
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.float16: np.dtype(np.float16),
    torch.bfloat16: np.dtype(ml_dtypes.bfloat16),
}
_BF16 = np.dtype(ml_dtypes.bfloat16)


def device_error(t: torch.Tensor, what: str) -> str | None:
    """Why `t` cannot be stepped on the CPU in place (None: it can)."""
    if t.device.type != "cpu":
        return (f"{what} is on device {t.device}; fusedoptim.torch steps CPU tensors only: "
                f"for {t.device.type} tensors use torch.optim's fused optimizers "
                f"(fused=True), e.g. the fused CUDA optimizers")
    if t.layout is not torch.strided:
        return (f"{what} has layout {t.layout}; only dense (torch.strided) tensors are "
                f"stepped: make it dense with .to_dense()")
    return None


def param_array(p: Any, what: str) -> np.ndarray[Any, Any]:
    """The NumPy view of param `p` (sharing its memory), or a clear error."""
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(p).__name__}")
    err = device_error(p, what)
    if err is not None:
        raise ValueError(err)
    if p.dtype not in NUMPY_DTYPES:
        raise TypeError(f"{what} has dtype {p.dtype}; fusedoptim.torch steps float32, "
                        f"float64, bfloat16 and float16 params: convert the model, e.g. "
                        f"model.float()")
    if not p.is_contiguous():
        raise ValueError(f"{what} is not contiguous (shape {tuple(p.shape)}, strides "
                         f"{p.stride()}); the fused kernels step contiguous memory: make it "
                         f"contiguous before building the optimizer, e.g. "
                         f"p.data = p.data.contiguous()")
    return as_array(p)


def as_array(t: torch.Tensor) -> np.ndarray[Any, Any]:
    """A NumPy array sharing `t`'s memory (t: CPU, strided, one of NUMPY_DTYPES)."""
    t = t.detach()
    if t.dtype is torch.bfloat16:
        return t.view(torch.int16).numpy().view(_BF16)
    return t.numpy()


def as_tensor(a: np.ndarray[Any, Any]) -> torch.Tensor:
    """A torch tensor sharing `a`'s memory (bfloat16 arrays give bfloat16 tensors)."""
    if a.dtype == _BF16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def scalar_dtype() -> torch.dtype:
    """The dtype torch.optim keeps ``step`` and other scalar state in (its
    ``_get_scalar_dtype``): float64 under a float64 default dtype, else float32."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
