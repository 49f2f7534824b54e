"""Precision: what one param group stores, reads and computes in (issue 11).

Every optimizer takes two constructor options, handled here once:

* ``master_weights`` (default: True for float16/bfloat16 params, False otherwise). The
  optimizer keeps a float32 copy of each param in its state (``"master_param"``); each step
  updates that copy and writes the param rounded to nearest even, in the same pass.
* ``state_dtype``: ``None`` (the params' dtype, or float32 under master weights),
  ``"float32"``, ``"bfloat16"``, ``"int8"`` or ``"int4"``.
* ``stochastic_rounding`` (default False; bfloat16 params without master weights): the
  update is computed in float32 and rounded stochastically to bfloat16, with 16 random bits
  per element from a stateless hash of (``seed``, the param's step, its index in the group,
  the element's index). A step is then reproducible and bitwise the same for any thread
  count. ``seed`` (default 0) is kept in ``state_dict()``.
* ``min_quantized_size`` (default 4096, bitsandbytes' ``min_8bit_size``): under int8/int4
  state, params with fewer elements keep float32 state.

int8 state is blockwise dynamic quantization as in bitsandbytes (Dettmers et al. 2022): blocks
of 256 elements, each with one float32 absmax; a moment that may be negative is quantized with
the signed dynamic map, a non-negative one (a second moment, Adagrad's sum) with the unsigned
one (fusedoptim.quant.dynamic_map). Each step decodes a block into registers, updates it, and
encodes it back, in the one pass: no float32 copy of a moment ever exists in memory, and the
param update uses the freshly updated moments, before they are requantized, as bitsandbytes
does. int4 state (Li et al. 2023, "Memory Efficient Optimizers with 4-bit States") uses blocks
of 128 and two codes per byte: the signed 4-bit dynamic map for signed moments, and for the
non-negative ones the zero-free linear map k/16, k = 1..16. Their finding: a second moment
that quantizes to zero makes the update m / (sqrt(0) + eps) blow up, which is what breaks
naive 4-bit Adam; with no zero in the map every v decodes to at least absmax/16. A quantized
slot keeps its codes under the slot's name and its absmaxes under ``<slot>_absmax``.

``rank1_normalization`` (default True; int4 only): Li et al.'s rank-1 normalization of the
non-negative moments (the kernel's "state+" buffers: Adam's ``exp_avg_sq`` and
``max_exp_avg_sq``, RMSprop's ``square_avg``, Adagrad's ``sum``, Adamax's ``exp_inf``, NAdam's,
RAdam's and LAMB's ``exp_avg_sq``) of every param with at least two dimensions of size > 1
(and at most RANK1_MAXDIM of them) and at least min_quantized_size elements: instead of an
absmax per 128-element block, each element is scaled by the smallest of its marginal maxima
(for a matrix: min(row max, column max) of |v|), kept as ``<slot>_rank1`` (float32, the
maxima along each dimension of size > 1 in turn: an (m, n) param's m row maxima, then its n
column maxima). Signed moments stay blockwise. On a (1000, 1000) AdamW param that takes the
state from 1.0625 to 1.039 B/param (1.047 counting the scan's second set of maxima).
``rank1_normalization=False`` keeps every int4 moment blockwise (torchao's layout). See
cython_kernels/rank1.h for the codec and docs/precision.md for why every dimension's maxima.

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
    from numpy.typing import DTypeLike, NDArray

#: numpy dtype of ml_dtypes.bfloat16 (what JAX uses for bfloat16 in NumPy)
BFLOAT16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
FLOAT16: np.dtype[Any] = np.dtype(np.float16)
FLOAT32: np.dtype[Any] = np.dtype(np.float32)
HALF_DTYPES = (BFLOAT16, FLOAT16)
#: the state_dtype strings and the dtypes they name (the quantized ones: their codes' dtype)
STATE_DTYPES: dict[str, np.dtype[Any]] = {"float32": FLOAT32, "bfloat16": BFLOAT16,
                                          "int8": np.dtype(np.uint8), "int4": np.dtype(np.uint8)}
#: quantized state: state_dtype -> (bits, block size)
QUANTIZED = {"int8": (8, 256), "int4": (4, 128)}
#: bitsandbytes' min_8bit_size: smaller params keep float32 state under int8/int4
MIN_QUANTIZED_SIZE = 4096
ABSMAX = "_absmax"
#: the plan column marker of a stochastic-rounding group's step keys (not a state buffer)
SR_KEY = "<step keys>"
#: state_dict() saves the map of a quantized slot under <slot>_qmap
QMAP = "_qmap"
#: the state slot of the float32 master copy of a half-precision param
MASTER = "master_param"
#: a rank-1 normalized int4 slot keeps its marginal maxima under <slot>_rank1
RANK1 = "_rank1"
#: the plan column marker of a rank-1 slot's descriptor (rank1.h; never a state entry)
RANK1_DESC = "_rank1_descriptor"
#: rank1.h's FO_R1_MAXDIM: params with more dimensions of size > 1 stay blockwise
RANK1_MAXDIM = 8


class PrecisionOptions(TypedDict, total=False):
    """The precision keywords every optimizer constructor takes (see the module doc)."""

    master_weights: bool | None
    state_dtype: str | None
    min_quantized_size: int
    rank1_normalization: bool
    stochastic_rounding: bool
    seed: int


def check_options(master_weights: object = None, state_dtype: object = None,
                  min_quantized_size: object = MIN_QUANTIZED_SIZE
                  ) -> tuple[bool | None, str | None, int]:
    """The constructor options, type-checked (what they allow depends on each group's dtype:
    :func:`resolve`)."""
    if (isinstance(min_quantized_size, bool)
            or not isinstance(min_quantized_size, (int, np.integer)) or min_quantized_size < 0):
        raise ValueError(f"min_quantized_size must be an integer >= 0 (params with fewer "
                         f"elements keep float32 state), got {min_quantized_size!r}")
    if master_weights is not None and not isinstance(master_weights, (bool, np.bool_)):
        raise TypeError(f"master_weights must be True, False or None (the default: True "
                        f"for float16/bfloat16 params), got {master_weights!r}")
    if state_dtype is not None:
        if not isinstance(state_dtype, str) or state_dtype not in STATE_DTYPES:
            raise ValueError(f"state_dtype must be None (the params' dtype, float32 under "
                             f"master weights) or one of {sorted(STATE_DTYPES)}, got "
                             f"{state_dtype!r}")
    return ((None if master_weights is None else bool(master_weights)), state_dtype,
            int(min_quantized_size))


def check_rank1(rank1_normalization: object) -> bool:
    if not isinstance(rank1_normalization, (bool, np.bool_)):
        raise TypeError(f"rank1_normalization must be True or False (int4 state: normalize "
                        f"the non-negative moments of 2-D and larger params by rank-1 "
                        f"statistics), got {rank1_normalization!r}")
    return bool(rank1_normalization)


def rank1_dims(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The dimensions a rank-1 normalized buffer of a param of `shape` keeps maxima along
    (its dimensions of size > 1), or None when it stays blockwise (fewer than 2 such
    dimensions, or more than RANK1_MAXDIM). Leaving out a dimension of size 1 changes no
    scale: its one maximum is the tensor's, never below any other marginal maximum. An empty
    param (a dimension of size 0) has no maxima to keep: blockwise, with no blocks."""
    dims = tuple(int(d) for d in shape if d != 1)
    return dims if 2 <= len(dims) <= RANK1_MAXDIM and 0 not in dims else None


def compute_dtype(dtype: DTypeLike) -> np.dtype[Any]:
    """What the kernels compute in for arrays of `dtype`: float64 for float64, else float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else FLOAT32


def check_rounding(stochastic_rounding: object, seed: object) -> tuple[bool, int]:
    if not isinstance(stochastic_rounding, (bool, np.bool_)):
        raise TypeError(f"stochastic_rounding must be True or False, got "
                        f"{stochastic_rounding!r}")
    if (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
            or not 0 <= seed < 2 ** 64):
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return bool(stochastic_rounding), int(seed)


def storage_name(dtype: DTypeLike, master: bool = False, sr: bool = False) -> str:
    """The driver's storage name for arrays of `dtype` (with a float32 master copy, or
    written with stochastic rounding)."""
    name = str(np.dtype(dtype))
    return name + "+master" if master else name + "+sr" if sr else name


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
    #: int8/int4 state: (bits, block size), else None
    quant: tuple[int, int] | None = None
    min_quantized_size: int = MIN_QUANTIZED_SIZE
    #: bfloat16 params written with stochastic rounding
    sr: bool = False
    #: int4 state with rank-1 normalized non-negative moments (storage "int4+rank1")
    rank1: bool = False

    @property
    def default(self) -> bool:
        """The float32/float64 case: everything in the params' dtype."""
        return (not self.master and self.state_dtype == self.param_dtype and not self.quant
                and not self.sr)

    def slot_dtype(self, slot: str) -> np.dtype[Any]:
        return FLOAT32 if slot == MASTER else self.state_dtype

    def quantized(self, size: int) -> bool:
        """Whether a param of `size` elements keeps quantized state."""
        return self.quant is not None and size >= self.min_quantized_size

    def rank1_of(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The maxima dimensions of a param of `shape` whose non-negative moments are rank-1
        normalized here, or None (blockwise, or float32 state)."""
        if not self.rank1 or not self.quantized(int(np.prod(shape, dtype=np.int64))):
            return None
        return rank1_dims(shape)


def resolve(owner: str, kernel: str, param_dtype: np.dtype[Any], master_weights: bool | None,
            state_dtype: str | None, min_quantized_size: int = MIN_QUANTIZED_SIZE,
            stochastic_rounding: bool = False,
            shapes: tuple[tuple[int, ...], ...] = ()) -> GroupPrecision:
    """A group's precision for params of `param_dtype`, or a ValueError naming what the
    optimizer `owner` accepts for such params. `shapes`: the group's param shapes when
    rank-1 normalization is on (int4 state then takes the "int4+rank1" rows, where the
    kernel has them, for a group with a param that has rank-1 state); empty when it is off."""
    half = param_dtype in HALF_DTYPES
    if stochastic_rounding:
        if param_dtype != BFLOAT16 or master_weights:
            raise ValueError(f"{owner}: stochastic_rounding=True rounds bfloat16 params kept "
                             f"without master weights; these are {param_dtype} params"
                             f"{' with master_weights=True' if master_weights else ''} (use "
                             f"bfloat16 params and leave master_weights unset or False)")
        master_weights = False
    master = half if master_weights is None else master_weights
    if master and not half:
        raise ValueError(f"{owner}: master_weights=True needs float16 or bfloat16 params; "
                         f"these are {param_dtype}, which the step updates in place "
                         f"already (leave master_weights unset)")
    if state_dtype is None:
        sdt = FLOAT32 if master else param_dtype
    else:
        sdt = STATE_DTYPES[state_dtype]
    pname = storage_name(param_dtype, master, stochastic_rounding)
    quant = QUANTIZED.get(state_dtype or "")
    sname = state_dtype if quant else storage_name(sdt)
    rows = _kernels.registered_variants(kernel)
    if quant and not any(s == sname for _, _, s in rows):
        raise ValueError(f"{owner}: state_dtype={state_dtype!r} is not supported by "
                         f"{owner}; quantized state is supported by "
                         f"{', '.join(quantized_optimizers())}")
    grads = [g for p, g, s in rows if p == pname and s == sname]
    if not grads:
        accepted = sorted({s for p, _, s in rows if p == pname})
        how = "with master weights" if master else "without master weights"
        what = (f"state_dtype={state_dtype!r}" if state_dtype is not None else
                f"state_dtype=None ({sname} state, the default here)")
        raise ValueError(f"{owner}: {what} is not available for {param_dtype} params {how}; "
                         f"the state may be {', '.join(accepted) or 'nothing'} here: pass "
                         f"state_dtype={accepted[0] if accepted else None!r}")
    own = str(param_dtype)
    grads.sort(key=lambda g: (g != own, g))
    gdt = tuple(BFLOAT16 if g == "bfloat16" else np.dtype(g) for g in grads)
    rank1 = False
    if state_dtype == "int4" and any(
            rank1_dims(s) is not None and int(np.prod(s, dtype=np.int64)) >= min_quantized_size
            for s in shapes):
        r1_grads = [g for p, g, s in rows if p == pname and s == "int4+rank1"]
        # kernels without a non-negative moment have nothing to normalize (SGD, Lion, LARS)
        if r1_grads:
            assert sorted(r1_grads) == sorted(grads), "int4+rank1 rows differ from int4's"
            rank1, sname = True, "int4+rank1"
    if quant:
        load_qmaps()
    return GroupPrecision(param_dtype, master, sdt, gdt,
                          _kernels.STORAGE_NAMES.index(pname),
                          _kernels.STORAGE_NAMES.index(sname), quant, min_quantized_size,
                          stochastic_rounding, rank1)


def _mix32(x: NDArray[np.uint32]) -> NDArray[np.uint32]:
    """codecs.h's fo_mix32, elementwise (uint32 arithmetic wraps as in C)."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    out: NDArray[np.uint32] = x ^ (x >> np.uint32(16))
    return out


def sr_keys(seed: int, group: int, steps: NDArray[np.int64], out: NDArray[np.uint32]) -> None:
    """Each param's two 32-bit stochastic-rounding keys for its step (out: (n, 2)): a hash
    of (seed, param group, the param's index in it, its step count)."""
    n = steps.shape[0]
    with np.errstate(over="ignore"):
        t = np.arange(n, dtype=np.uint32)
        s = steps.astype(np.uint64)
        lo = np.uint32(seed & 0xFFFFFFFF) ^ _mix32((s & np.uint64(0xFFFFFFFF)).astype(np.uint32)
                                                 ^ np.uint32(0x9E3779B9))
        hi = np.uint32(seed >> 32) ^ _mix32((s >> np.uint64(32)).astype(np.uint32)
                                           ^ np.uint32(group) * np.uint32(0x85EBCA6B))
        out[:, 0] = _mix32(lo ^ _mix32(t ^ np.uint32(0xC2B2AE35)))
        out[:, 1] = _mix32(hi ^ out[:, 0])


def stochastic_round(x: NDArray[np.float32], key: NDArray[np.uint32]) -> NDArray[Any]:
    """codecs.h's fo_bf16_encode_sr on a whole tensor (element i of x is index i): float32
    to bfloat16 with stochastic rounding, the reference twins' and the tests' oracle."""
    u = np.ascontiguousarray(x, np.float32).reshape(-1).view(np.uint32)
    idx = np.arange(u.size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        r = _mix32(_mix32(idx.astype(np.uint32) ^ key[0]) ^ key[1]
                   ^ (idx >> np.uint64(32)).astype(np.uint32))
        up = ((u + (r & np.uint32(0xFFFF))) >> np.uint32(16)).astype(np.uint16)
    nearest = u.view(np.float32).astype(BFLOAT16).view(np.uint16)
    special = (u & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
    return np.where(special, nearest, up).view(BFLOAT16).reshape(np.shape(x))


def quantized_optimizers() -> list[str]:
    """The optimizer classes whose kernel has int8 state rows."""
    from ._spec import registered
    return [spec.cls.__name__ for spec in registered() if spec.cls is not None
            and spec.cls.__module__.startswith("fusedoptim.optim.")
            and any(s == "int8" for _, _, s in _kernels.registered_variants(spec.kernel))]


def qmap(kernel: str, slot_index: int, bits: int) -> NDArray[np.float32]:
    """The map a kernel's state slot (its index among the optimizer's slots) is quantized
    with: unsigned for a buffer declared non-negative ("state+"), else signed."""
    from .quant import dynamic_map
    return dynamic_map(not _kernels.KERNEL_ROLES[kernel][2 + slot_index].endswith("+"), bits)


def load_qmaps() -> None:
    """Give the kernels their maps (once per process, before any quantized state exists)."""
    if not _kernels.qmaps_loaded():
        from .quant import dynamic_map
        _kernels.set_qmaps(dynamic_map(True, 8), dynamic_map(False, 8), dynamic_map(True, 4),
                           dynamic_map(False, 4))


def fill_quantized(codes: NDArray[np.uint8], absmax: NDArray[np.float32], value: float,
                   n: int, code: NDArray[np.float32], quant: tuple[int, int]) -> None:
    """Set the quantized state of a param of n elements to a constant (its initial value),
    exactly as the kernels would quantize that constant."""
    bits, block = quant
    if value == 0.0:
        # Zero blocks: absmax 0 and the map's zero code (what 0 quantizes to: the code
        # nearest 0, ties to the lower index) everywhere; 4-bit padding nibbles are 0.
        zero = int(np.argmin(np.abs(code)))
        if bits == 8:
            codes.fill(zero)
        else:
            codes.fill(zero << 4 | zero)
            if n % 2:
                codes.reshape(-1)[-1] = zero << 4
        absmax.fill(0.0)
        return
    from .quant import quantize_blockwise
    quantize_blockwise(np.full(n, value, np.float32), code, block, bits=bits,
                       out=(codes.reshape(-1), absmax))


def fill_rank1(codes: NDArray[np.uint8], maxima: NDArray[np.float32], value: float,
               n: int) -> None:
    """Set the rank-1 normalized int4 state of a param of n elements to a constant (its
    initial value), exactly as the kernels would quantize that constant: every maximum is
    the value (NaN if it is not finite), every code the one of value / value (rank1.h)."""
    from .reference import quantize_rank1
    c, m = quantize_rank1(np.full(2, value, np.float32), (2, 1))
    maxima.fill(m[0])
    code = int(c[0]) >> 4
    codes.fill(code << 4 | code)
    if n % 2:
        codes.reshape(-1)[-1] = code << 4
