"""The flat parameter arena: every param of a model in one aligned buffer, every grad in another.

An optimizer given a :class:`FlatParams` (or any list of views that tile one buffer, in order)
steps the whole model as one tensor: its state buffers are flat too, a step binds one grad
pointer, and the driver cuts one long run into work units. ``state_dict`` still reports one
entry per param, so checkpoints do not depend on the layout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, SupportsIndex, Union

import ml_dtypes
import numpy as np

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, DTypeLike, NDArray
    from typing_extensions import Self, TypeAlias

    from ._typing import ArrayViews, FloatArray

    #: A shape as FlatParams takes it: a tuple or list of integers >= 0, or one integer.
    ShapeLike: TypeAlias = Union[SupportsIndex, Sequence[SupportsIndex]]

#: Alignment of every arena buffer: a cache line, and one AVX-512 vector, so the first work
#: unit starts on a vector boundary and no two buffers share a cache line.
ALIGNMENT = 64
PAGE = 4096

_MAPPINGS = (dict, MappingProxyType)
_MAX_ELEMENTS = 2**62      # elements of one arena, in bytes of float64 well inside int64


def aligned_bytes(nbytes: int, align: int = ALIGNMENT) -> NDArray[np.uint8]:
    """A zeroed uint8 array of nbytes starting on an `align` boundary.

    Over-allocates and slices; np.zeros gets its pages zeroed by the OS, so this costs no
    pass over the memory, and pages never written are never committed.
    """
    raw = np.zeros(nbytes + align, dtype=np.uint8)
    skip = -raw.ctypes.data % align
    return raw[skip:skip + nbytes]


def aligned_zeros(n: int, dtype: DTypeLike) -> FloatArray:
    """A zeroed, C-contiguous 1-D array of n elements starting on an ALIGNMENT boundary."""
    dtype = np.dtype(dtype)
    return aligned_bytes(n * dtype.itemsize).view(dtype)


def _carve(flat: FloatArray, shapes: Sequence[tuple[int, ...]],
           offsets: Sequence[int]) -> list[FloatArray]:
    """Views of `flat`, one per shape, at the given element offsets."""
    return [flat[o:o + int(np.prod(s, dtype=np.int64))].reshape(s)
            for o, s in zip(offsets, shapes)]


BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def _check_dtype(dtype: DTypeLike) -> np.dtype[Any]:
    try:
        # np.dtype(None) is float64: a None here is a mistake, not a request for float64
        dt = None if dtype is None else np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt not in (np.float32, np.float64, np.float16, BFLOAT16):
        raise TypeError(f"dtype must be np.float32, np.float64, np.float16 or "
                        f"ml_dtypes.bfloat16, got {dtype!r}")
    return dt


def _check_shape(shape: object, label: str) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0
            for d in shape):
        raise ValueError(f"{label} must be a shape: a tuple of integers >= 0 (or one integer), "
                         f"got {shape!r}")
    dims = tuple(int(d) for d in shape)
    if math.prod(dims) > _MAX_ELEMENTS:      # would wrap around in the int64 size arithmetic
        raise ValueError(f"{label} = {shape!r} has {math.prod(dims)} elements, more than any "
                         f"buffer can hold ({_MAX_ELEMENTS}); give a smaller shape")
    return dims


def _check_names(names: Sequence[object], label: str) -> None:
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{label} keys must be str names (as in a model's state_dict), "
                            f"got {name!r} ({type(name).__name__})")


class FlatParams:
    """One 64-byte-aligned contiguous buffer for all params and one for all grads.

    ``FlatParams(shapes, dtype=np.float32)`` with ``shapes`` a dict name -> shape allocates
    zeroed buffers and lays the params end to end in the dict's order.

    * ``params[name]`` / ``grads[name]``: writeable views of the two buffers (a read-only
      mapping: the views are fixed, write into them). ``flat`` and ``flat_grad`` are the
      whole buffers, 1-D. From a list (:meth:`from_arrays`), ``params`` and ``grads`` are
      tuples instead.
    * Give it to an optimizer, ``fo.AdamW(arena)``: the model steps as one tensor, and
      ``opt.step()`` (no argument) reads ``flat_grad``. ``opt.step(arena.grads)`` is the same
      call; other grads are checked and bound per param.
    * ``zero_grad()`` zeroes ``flat_grad`` (one memset), for loops that accumulate grads.
    """

    dtype: np.dtype[Any]
    names: tuple[str, ...] | None
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    size: int
    flat: FloatArray
    flat_grad: FloatArray
    _param_views: list[FloatArray]
    _grad_views: list[FloatArray]
    # A read-only mapping name -> view (MappingProxyType) when built from a dict, a tuple
    # when from a list; ArrayViews types what both offer.
    params: ArrayViews
    grads: ArrayViews

    def __init__(self, shapes: Mapping[str, ShapeLike], dtype: DTypeLike = np.float32) -> None:
        if not isinstance(shapes, _MAPPINGS):
            raise TypeError(f"shapes must be a dict name -> shape, e.g. {{'W': (784, 128), "
                            f"'b': (128,)}}, got {type(shapes).__name__}; to copy existing "
                            f"arrays use FlatParams.from_arrays(arrays)")
        if not shapes:
            raise ValueError("shapes is empty; give at least one name -> shape")
        names = list(shapes)
        _check_names(names, "shapes")
        self._build(names, [_check_shape(shapes[k], f"shapes[{k!r}]") for k in names],
                    _check_dtype(dtype))

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, ArrayLike] | Sequence[ArrayLike],
                    dtype: DTypeLike | None = None) -> Self:
        """A new arena holding copies of `arrays` (a dict name -> array, or a list).

        ``dtype`` defaults to the arrays' own, which must be float32 or float64 and shared by
        all; pass it to convert. The originals are not used afterwards: keep using
        ``arena.params``.
        """
        names: list[str] | None
        values: list[ArrayLike] | list[NDArray[Any]]
        if isinstance(arrays, _MAPPINGS):
            names, values = list(arrays), list(arrays.values())
            _check_names(names, "arrays")
        elif isinstance(arrays, (list, tuple)):
            names, values = None, list(arrays)
        else:
            raise TypeError(f"arrays must be a dict name -> array or a list of arrays, got "
                            f"{type(arrays).__name__}")
        if not values:
            raise ValueError("arrays is empty; give at least one array")
        labels = ([f"arrays[{k!r}]" for k in names] if names is not None
                  else [f"arrays[{i}]" for i in range(len(values))])
        values = [np.asarray(v) for v in values]
        if dtype is None:
            found = {v.dtype for v in values}
            if len(found) > 1:
                raise TypeError(f"arrays have mixed dtypes {sorted(map(str, found))}; pass "
                                f"dtype=np.float32 (or np.float64) to convert them")
            dtype = found.pop()
            if dtype not in (np.float32, np.float64):
                raise TypeError(f"arrays have dtype {dtype}; pass dtype=np.float32 (or "
                                f"np.float64) to convert them")
        dtype = _check_dtype(dtype)
        for v, label in zip(values, labels):
            if not np.can_cast(v.dtype, dtype, casting="same_kind"):
                raise TypeError(f"{label} has dtype {v.dtype}, which does not convert to "
                                f"{dtype}; pass floating-point arrays")
        self = cls.__new__(cls)
        self._build(names, [v.shape for v in values], dtype)
        for view, v in zip(self._param_views, values):
            view[...] = v
        return self

    def _build(self, names: Sequence[str] | None, shapes: Sequence[tuple[int, ...]],
               dtype: np.dtype[Any]) -> None:
        sizes = [math.prod(s) for s in shapes]
        if sum(sizes) > _MAX_ELEMENTS:
            raise ValueError(f"the shapes hold {sum(sizes)} elements in all, more than any "
                             f"buffer can hold ({_MAX_ELEMENTS}); give smaller shapes")
        offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).tolist()
        self.dtype = dtype
        self.names = None if names is None else tuple(names)
        self.shapes = tuple(shapes)
        self.offsets = tuple(offsets[:-1])
        self.size = offsets[-1]
        self.flat = aligned_zeros(self.size, dtype)
        self.flat_grad = aligned_zeros(self.size, dtype)
        self._param_views = _carve(self.flat, shapes, self.offsets)
        self._grad_views = _carve(self.flat_grad, shapes, self.offsets)
        if names is None:
            self.params = tuple(self._param_views)
            self.grads = tuple(self._grad_views)
        else:
            # Read-only mappings: replacing an entry would silently detach it from the buffer
            # the optimizer steps, so the views are fixed; write into them instead.
            self.params = MappingProxyType(dict(zip(names, self._param_views)))
            self.grads = MappingProxyType(dict(zip(names, self._grad_views)))

    @property
    def nbytes(self) -> int:
        return self.flat.nbytes

    def zero_grad(self) -> None:
        """Zero every grad (one pass over ``flat_grad``)."""
        self.flat_grad.fill(0)

    def __len__(self) -> int:
        return len(self.shapes)

    def __repr__(self) -> str:
        what = (", ".join(f"{k!r}: {s}" for k, s in zip(self.names, self.shapes))
                if self.names is not None else ", ".join(map(str, self.shapes)))
        return f"FlatParams({{{what}}}, dtype={self.dtype}, size={self.size})"
