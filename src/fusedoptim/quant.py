"""Blockwise 8-bit and 4-bit quantization: the code maps and the codec of quantized state.

A tensor is cut into blocks of ``block_size`` elements (the last may be short). Each block
stores one float32 ``absmax`` and one code per element: the index of the nearest value of a
sorted map of 256 (8-bit) or 16 (4-bit, two codes per byte) float32 values in [-1, 1].

Exact semantics (the same in fusedoptim.reference, and bitwise in the C codec quant.h):

- ``absmax`` = max |x| over the block, in float32.
  - A block holding a NaN or an Inf gets ``absmax = NaN``, so the whole block dequantizes to
    NaN, as a float32 state would propagate it. Its codes are the zero code (below).
  - An absmax below the smallest normal float32 (2**-126) is flushed to 0 (its reciprocal
    could overflow). A block with ``absmax == 0`` stores the *zero code* everywhere: the index
    of the code nearest 0 (ties to the lower index), so it dequantizes to exactly 0.
- Otherwise ``y = clip(x * (1/absmax), -1, 1)``: a float32 reciprocal, then a float32
  product (as bitsandbytes' reference backend does).
- The code is ``argmin_k |y - code[k]|`` with each difference computed in float32; **ties go
  to the lower index**. This is exactly the nearest code, never an approximation of it.
- Dequantization is ``code[c] * absmax`` in float32, then a cast to the requested dtype.
- 4-bit codes are packed as bitsandbytes packs them: element 2j in the high nibble of byte j,
  element 2j+1 in the low nibble; an odd count leaves the last low nibble 0.

Against bitsandbytes 0.50.2: codes equal those of its reference ("default") backend, which
finds the nearest code; its native CPU quantizer (what ``quantize_blockwise`` runs on CPU)
uses a lookup table and is not always nearest. Where they differ by design: bitsandbytes'
default backend divides the last partial block by its absmax instead of multiplying by the
reciprocal, stores ``1e-38`` (not 0) as that block's absmax when it is all zero, and gives an
Inf block ``absmax = inf``; its 4-bit packing pads with the code of 0.0, not a 0 nibble.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

__all__ = ["dynamic_map", "quantize_blockwise", "dequantize_blockwise"]

_INPUT_DTYPES = ("float32", "float16", "bfloat16")
_OUTPUT_DTYPES = ("float32", "float64", "float16", "bfloat16")


@functools.lru_cache(maxsize=None)
def _cached_map(signed: bool, bits: int) -> NDArray[np.float32]:
    from . import reference
    m: NDArray[np.float32] = reference.dynamic_map(signed, bits)
    m.flags.writeable = False
    return m


def dynamic_map(signed: bool, bits: int = 8) -> NDArray[np.float32]:
    """The code map for quantized optimizer state: float32, ``2**bits`` values, ascending.

    - ``bits=8``: Dettmers' dynamic map (Dettmers et al. 2022, "8-bit Optimizers via
      Block-wise Quantization"), value for value equal to bitsandbytes'
      ``create_dynamic_map(signed=signed)``. Signed: 127 negative values, 0 and 128 positive
      values up to 1, spread over 7 decades (1e-6 to 1) with more values per decade near 1.
      Unsigned (for non-negative state such as Adam's ``exp_avg_sq``): 0, 254 positive values
      over the same decades, and 1. Equal maps let state move between the two libraries.
    - ``bits=4, signed=True``: the 4-bit dynamic map (3 decades, 1e-2 to 1) that Li et al.
      2023 ("Memory Efficient Optimizers with 4-bit States") use for the first moment, as
      torchao builds it (``create_dynamic_map(True, 3, 4)``): 7 negative values, 0, 0.0055,
      0.0325, 0.0775, 0.2125, 0.4375, 0.6625, 0.8875 and 1.
    - ``bits=4, signed=False``: the *zero-free linear* map ``k/16, k = 1..16`` that Li et al.
      use for the second moment (torchao: ``linspace(0, 1, 17)[1:]``). It is not a dynamic
      map, and deliberately has no 0. Their finding: with a map containing 0, small entries
      of the second moment v quantize to exactly 0, and the Adam update m / (sqrt(v) + eps)
      then divides by eps alone, a huge step in those coordinates, which is what makes naive
      4-bit Adam diverge. With no zero code, every v dequantizes to at least absmax/16.
      (Li et al. also normalize 2-D second moments by rank-1 statistics instead of blocks,
      as fusedoptim's int4 optimizer state does by default (``rank1_normalization``); that
      is a choice of the optimizer, not of the map.)

    bitsandbytes builds its map from ``torch.linspace`` in float32. torch's CPU kernel
    computes each linspace point with a fused multiply-add in its AVX2 and AVX-512 builds (the
    ones x86-64 CPUs since 2013 run), and this map equals that result. torch's no-FMA DEFAULT
    build (``ATEN_CPU_CAPABILITY=default``) rounds twice, and bitsandbytes then gives a map
    differing in the last bit of 42 (signed) and 31 (unsigned) of its values.

    Returns a new writeable array on every call.
    """
    if not isinstance(signed, (bool, np.bool_)):
        raise TypeError(f"dynamic_map: signed must be a bool, got {signed!r}")
    bits = _check_bits(bits)
    m: NDArray[np.float32] = _cached_map(bool(signed), bits).copy()
    return m


# -- validation --------------------------------------------------------------------------------

def _check_bits(bits: Any) -> int:
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)) \
            or int(bits) not in (4, 8):
        raise ValueError(f"bits must be 8 or 4, got {bits!r}")
    return int(bits)


def _check_block_size(block_size: Any, bits: int) -> int:
    if isinstance(block_size, (bool, np.bool_)) or not isinstance(block_size, (int, np.integer)):
        raise TypeError(f"block_size must be a positive int, got {block_size!r} "
                        f"({type(block_size).__name__})")
    bs = int(block_size)
    if bs <= 0:
        raise ValueError(f"block_size must be a positive int, got {bs}")
    if bits == 4 and bs % 2:
        raise ValueError(f"block_size must be even for bits=4 (two codes per byte, so every "
                         f"block starts on a byte), got {bs}; the 4-bit state uses 128")
    return bs


def _check_code(code: Any, bits: int, signed_default: bool = True) -> NDArray[np.float32]:
    if code is None:
        return _cached_map(signed_default, bits)
    if not isinstance(code, np.ndarray):
        raise TypeError(f"code must be a float32 numpy array of {2 ** bits} sorted values "
                        f"(e.g. fusedoptim.quant.dynamic_map(True, {bits})), got "
                        f"{type(code).__name__}")
    if code.dtype != np.float32:
        raise TypeError(f"code must have dtype float32, got {code.dtype}; pass "
                        f"code.astype(np.float32) if its values are float32 values")
    if code.shape != (2 ** bits,):
        raise ValueError(f"code must be 1-D with {2 ** bits} values for bits={bits}, got shape "
                         f"{code.shape}")
    if not np.all(np.isfinite(code)):
        raise ValueError("code must hold finite values, got NaN or Inf at index "
                         f"{int(np.flatnonzero(~np.isfinite(code))[0])}")
    if not np.all(code[1:] > code[:-1]):
        k = int(np.flatnonzero(~(code[1:] > code[:-1]))[0])
        raise ValueError(f"code must be strictly ascending, got code[{k}]={code[k]!r} >= "
                         f"code[{k + 1}]={code[k + 1]!r}; sort it (np.sort) and remove "
                         f"duplicates")
    return code


def _check_array(a: Any, name: str, dtypes: tuple[str, ...]) -> NDArray[Any]:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of dtype {' / '.join(dtypes)}, got "
                        f"{type(a).__name__}")
    if a.dtype.name not in dtypes:
        hint = " (bfloat16 is ml_dtypes.bfloat16)" if "bfloat16" in dtypes else ""
        raise TypeError(f"{name} must have dtype {' / '.join(dtypes)}{hint}, got {a.dtype}")
    if not a.dtype.isnative:     # '>f4' is named float32, but its bytes would be misread
        raise TypeError(f"{name} has non-native byte order ({a.dtype.str}); convert it with "
                        f"{name}.astype({name}.dtype.newbyteorder('='))")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous, got a strided array of shape {a.shape}; "
                         f"pass np.ascontiguousarray({name})")
    return a


def _check_out(a: Any, name: str, dtype: np.dtype[Any], size: int) -> NDArray[Any]:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {a.dtype}")
    if a.size != size:
        raise ValueError(f"{name} must have {size} elements, got shape {a.shape} "
                         f"({a.size} elements)")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous, got a strided array of shape "
                         f"{a.shape}; pass a new np.empty array")
    if not a.flags.writeable:
        raise ValueError(f"{name} is read-only; pass a writeable array")
    return a


# -- the codec ---------------------------------------------------------------------------------
# The dynamic maps at their state block sizes (8-bit: 256, 4-bit: 128) run the fused kernels
# (the optimizers' own codec, quant.h, on the driver's work units: multithreaded, bitwise the
# same for any thread count); any other map or block size runs the NumPy reference, which
# gives the same bits.

_STATE_BLOCK = {8: 256, 4: 128}


def _kernel_for(code: NDArray[np.float32], block_size: int, bits: int, what: str) -> int | None:
    """The kernel id for this map and block size, or None (then the reference runs)."""
    if block_size != _STATE_BLOCK[bits]:
        return None
    for signed in (True, False):
        if np.array_equal(code.view(np.uint32), _cached_map(signed, bits).view(np.uint32)):
            from . import _kernels
            from ._precision import load_qmaps
            load_qmaps()
            name = f"{what}_{'signed' if signed else 'unsigned'}"
            return _kernels.KERNEL_IDS[name]
    return None


def _codec_plan(values: NDArray[Any], codes: NDArray[np.uint8], absmax: NDArray[np.float32],
                bits: int) -> Any:
    """A one-tensor plan over the flat values, with the codes in column 2 and their absmax
    in the absmax column of buffer 2 (kernelgen.py's layout)."""
    from . import _kernels
    state: list[Any] = [None] * (_kernels.ABSMAX_COL + 2 - 1)
    state[0] = codes
    state[_kernels.ABSMAX_COL] = absmax
    storages = (_kernels.storage_of(values.dtype),
                _kernels.STORAGE_NAMES.index("int8" if bits == 8 else "int4"))
    return _kernels.Plan([values], [state], len(state), 0, ["values"], None, None, None,
                         storages)


def _one_block_if_larger(block_size: int, n: int, bits: int) -> int:
    """A block size larger than the array means one block: use the (even) element count
    instead, so the reference does not pad the array to a huge block (the codes and the one
    absmax are the same)."""
    if block_size > n and block_size > _STATE_BLOCK[bits]:
        return max(2, n + (n & 1))
    return block_size


def _quantize_into(x: NDArray[Any], code: NDArray[np.float32], block_size: int, bits: int,
                   codes_out: NDArray[np.uint8], absmax_out: NDArray[np.float32]) -> None:
    """Quantize validated x into the validated, flat-sized outputs."""
    kernel = _kernel_for(code, block_size, bits, "quantize") if x.size else None
    if kernel is not None:
        plan = _codec_plan(x.reshape(-1), codes_out.reshape(-1), absmax_out.reshape(-1), bits)
        plan.alias_grads()
        plan.run(kernel)
        return
    from . import reference
    c, a = reference.quantize_blockwise(x, code, block_size, bits)
    codes_out.reshape(-1)[...] = c
    absmax_out.reshape(-1)[...] = a


def _dequantize_into(codes: NDArray[np.uint8], absmax: NDArray[np.float32],
                     code: NDArray[np.float32], block_size: int, bits: int, n: int,
                     out: NDArray[Any]) -> None:
    """Dequantize validated codes into the validated out (n elements, its own dtype)."""
    kernel = (_kernel_for(code, block_size, bits, "dequantize")
              if n and out.dtype != np.float64 else None)
    if kernel is not None:
        flat = out.reshape(-1)
        plan = _codec_plan(flat, np.ascontiguousarray(codes).reshape(-1),
                           np.ascontiguousarray(absmax, np.float32).reshape(-1), bits)
        plan.active_array[...] = 1
        plan.run(kernel)
        return
    from . import reference
    out.reshape(-1)[...] = reference.dequantize_blockwise(codes, absmax, code, block_size,
                                                          bits, n, out.dtype)


# -- the public codec ------------------------------------------------------------------------

def quantize_blockwise(x: NDArray[Any], code: NDArray[np.float32] | None = None,
                       block_size: int = 256, *, bits: int = 8,
                       out: tuple[NDArray[np.uint8], NDArray[np.float32]] | None = None,
                       ) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """Quantize ``x`` blockwise to the nearest codes of ``code``; see the module docstring.

    x: float32, float16 or ml_dtypes.bfloat16, any C-contiguous shape (read flat, as float32).
    code: the sorted float32 map, ``2**bits`` values; default ``dynamic_map(True, bits)``.
    block_size: elements per block (bitsandbytes' 8-bit state: 256; 4-bit state: 128). Even
      when bits=4.
    bits: 8 (one code per byte) or 4 (two per byte, high nibble first).
    out: optional ``(codes, absmax)`` arrays to write: uint8 of n (bits=8) or ceil(n/2)
      (bits=4) elements and float32 of ceil(n/block_size) elements, C-contiguous, any shape.

    Returns ``(codes, absmax)``: 1-D unless ``out`` was given (then ``out`` itself). On any
    error nothing is written.
    """
    bits = _check_bits(bits)
    x = _check_array(x, "x", _INPUT_DTYPES)
    bs = _check_block_size(block_size, bits)
    code = _check_code(code, bits)
    n = x.size
    ncodes = n if bits == 8 else (n + 1) // 2
    nblocks = -(-n // bs)
    if out is None:
        codes_out = np.empty(ncodes, np.uint8)
        absmax_out = np.empty(nblocks, np.float32)
    else:
        if not isinstance(out, tuple) or len(out) != 2:
            raise TypeError(f"out must be a (codes, absmax) tuple of two arrays, got "
                            f"{type(out).__name__}")
        codes_out = _check_out(out[0], "out[0] (codes)", np.dtype(np.uint8), ncodes)
        absmax_out = _check_out(out[1], "out[1] (absmax)", np.dtype(np.float32), nblocks)
        if np.shares_memory(codes_out, absmax_out) or np.shares_memory(codes_out, x) \
                or np.shares_memory(absmax_out, x):
            raise ValueError("out[0], out[1] and x must not overlap")
    _quantize_into(x, code, _one_block_if_larger(bs, n, bits), bits, codes_out, absmax_out)
    return codes_out, absmax_out


def dequantize_blockwise(codes: NDArray[np.uint8], absmax: NDArray[np.float32],
                         code: NDArray[np.float32] | None = None, block_size: int = 256, *,
                         bits: int = 8, n: int | None = None, out: NDArray[Any] | None = None,
                         dtype: DTypeLike = np.float32) -> NDArray[Any]:
    """Dequantize: ``code[c] * absmax`` of the element's block, in float32, then cast to dtype.

    codes: uint8, C-contiguous (read flat). absmax: float32, C-contiguous, ceil(n/block_size)
      elements. code, block_size, bits: as given to quantize_blockwise.
    n: the element count. bits=8: must equal codes.size (the default). bits=4: codes.size*2
      (the default) or codes.size*2 - 1 (an odd count: the last low nibble is padding).
    dtype: float32 (default), float64, float16 or ml_dtypes.bfloat16 (rounded to nearest even).
    out: optional C-contiguous writeable array of n elements (any shape) of dtype ``dtype``.

    Returns ``out``, or a new 1-D array of n elements. On any error nothing is written.
    """
    bits = _check_bits(bits)
    codes = _check_array(codes, "codes", ("uint8",))
    absmax = _check_array(absmax, "absmax", ("float32",))
    bs = _check_block_size(block_size, bits)
    code = _check_code(code, bits)
    if n is None:
        n = codes.size if bits == 8 else 2 * codes.size
    elif isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {n!r}")
    n = operator.index(n)
    allowed = (codes.size,) if bits == 8 else (2 * codes.size - 1, 2 * codes.size)
    if n not in allowed or n < 0:
        raise ValueError(f"n={n} does not fit codes of {codes.size} bytes at bits={bits}; "
                         f"expected n in {[a for a in allowed if a >= 0]}")
    nblocks = -(-n // bs)
    if absmax.size != nblocks:
        raise ValueError(f"absmax must have ceil(n/block_size) = ceil({n}/{bs}) = {nblocks} "
                         f"elements, got {absmax.size}; was block_size {bs} the one used "
                         f"to quantize?")
    try:
        # np.dtype(None) is float64: a None here is a mistake, not a request for float64
        dt = np.dtype(dtype) if dtype is not None else None
        if dt is None:
            raise TypeError
    except TypeError:
        raise TypeError(f"dtype must be one of {', '.join(_OUTPUT_DTYPES)}, got {dtype!r}") from None
    if dt.name not in _OUTPUT_DTYPES:
        raise TypeError(f"dtype must be one of {', '.join(_OUTPUT_DTYPES)}, got {dt}")
    if out is None:
        out = np.empty(n, dt)
    else:
        out = _check_out(out, "out", dt, n)
        if np.shares_memory(out, codes) or np.shares_memory(out, absmax):
            raise ValueError("out must not overlap codes or absmax")
    _dequantize_into(codes, absmax, code, _one_block_if_larger(bs, n, bits), bits, n, out)
    return out
