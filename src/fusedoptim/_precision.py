"""Precision: what one param group stores, reads and computes in (issue 11).

Every optimizer takes two constructor options, handled here once:

* ``master_weights`` (default: True for float16/bfloat16 params, False otherwise). The
  optimizer keeps a float32 copy of each param in its state (``"master_param"``); each step
  updates that copy and writes the param rounded to nearest even, in the same pass.
* ``state_dtype``: ``None`` (the params' dtype, or float32 under master weights),
  ``"float32"`` or ``"bfloat16"``.

What a group may do is read off the kernel registry, never restated: a combination is
accepted when its kernel registered the (param, grad, state) storage row for it, and the
grads a group accepts are the grad storages registered beside its param and state storage.
Today that means (kernelgen.py's "opt" rows): float32 params with float32, bfloat16 or
float16 grads; float16/bfloat16 params with grads of their own dtype, or, under master
weights, any of those three; state float32 or bfloat16, or the half params' own dtype.
A grad of higher precision than its param is refused (the step would round it silently),
except under master weights, where the update runs in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

import ml_dtypes
import numpy as np

from . import _kernels

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

#: numpy dtype of ml_dtypes.bfloat16 (what JAX uses for bfloat16 in NumPy)
BFLOAT16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
FLOAT16: np.dtype[Any] = np.dtype(np.float16)
FLOAT32: np.dtype[Any] = np.dtype(np.float32)
HALF_DTYPES = (BFLOAT16, FLOAT16)
#: the state_dtype strings and the dtypes they name
STATE_DTYPES: dict[str, np.dtype[Any]] = {"float32": FLOAT32, "bfloat16": BFLOAT16}
#: the state slot of the float32 master copy of a half-precision param
MASTER = "master_param"


class PrecisionOptions(TypedDict, total=False):
    """The precision keywords every optimizer constructor takes (see the module doc)."""

    master_weights: bool | None
    state_dtype: str | None


def check_options(master_weights: object = None, state_dtype: object = None
                  ) -> tuple[bool | None, str | None]:
    """The constructor options, type-checked (what they allow depends on each group's dtype:
    :func:`resolve`)."""
    if master_weights is not None and not isinstance(master_weights, (bool, np.bool_)):
        raise TypeError(f"master_weights must be True, False or None (the default: True "
                        f"for float16/bfloat16 params), got {master_weights!r}")
    if state_dtype is not None:
        if not isinstance(state_dtype, str) or state_dtype not in STATE_DTYPES:
            raise ValueError(f"state_dtype must be None (the params' dtype, float32 under "
                             f"master weights) or one of {sorted(STATE_DTYPES)}, got "
                             f"{state_dtype!r}")
    return (None if master_weights is None else bool(master_weights)), state_dtype


def compute_dtype(dtype: DTypeLike) -> np.dtype[Any]:
    """What the kernels compute in for arrays of `dtype`: float64 for float64, else float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else FLOAT32


def storage_name(dtype: DTypeLike, master: bool = False) -> str:
    """The driver's storage name for arrays of `dtype` (with a float32 master copy)."""
    name = str(np.dtype(dtype))
    return name + "+master" if master else name


@dataclass(frozen=True)
class GroupPrecision:
    """One param group's storages, as the plan and the state buffers need them."""

    param_dtype: np.dtype[Any]
    master: bool
    state_dtype: np.dtype[Any]
    #: the grad dtypes a step accepts, the params' own first
    grad_dtypes: tuple[np.dtype[Any], ...]
    param_storage: int
    state_storage: int

    @property
    def default(self) -> bool:
        """The float32/float64 case: everything in the params' dtype."""
        return not self.master and self.state_dtype == self.param_dtype

    def slot_dtype(self, slot: str) -> np.dtype[Any]:
        return FLOAT32 if slot == MASTER else self.state_dtype


def resolve(owner: str, kernel: str, param_dtype: np.dtype[Any], master_weights: bool | None,
            state_dtype: str | None) -> GroupPrecision:
    """A group's precision for params of `param_dtype`, or a ValueError naming what the
    optimizer `owner` accepts for such params."""
    half = param_dtype in HALF_DTYPES
    master = half if master_weights is None else master_weights
    if master and not half:
        raise ValueError(f"{owner}: master_weights=True needs float16 or bfloat16 params; "
                         f"these are {param_dtype}, which the step updates in place "
                         f"already (leave master_weights unset)")
    if state_dtype is None:
        sdt = FLOAT32 if master else param_dtype
    else:
        sdt = STATE_DTYPES[state_dtype]
    pname, sname = storage_name(param_dtype, master), storage_name(sdt)
    rows = _kernels.registered_variants(kernel)
    grads = [g for p, g, s in rows if p == pname and s == sname]
    if not grads:
        accepted = sorted({s for p, _, s in rows if p == pname})
        how = "with master weights" if master else "without master weights"
        raise ValueError(f"{owner}: state_dtype={state_dtype!r} is not available for "
                         f"{param_dtype} params {how}; the state may be "
                         f"{', '.join(accepted) or 'nothing'} here (state_dtype=None picks "
                         f"{'float32' if master else param_dtype})")
    own = str(param_dtype)
    grads.sort(key=lambda g: (g != own, g))
    gdt = tuple(BFLOAT16 if g == "bfloat16" else np.dtype(g) for g in grads)
    return GroupPrecision(param_dtype, master, sdt, gdt,
                          _kernels.STORAGE_NAMES.index(pname),
                          _kernels.STORAGE_NAMES.index(sname))
