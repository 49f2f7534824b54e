# cython: language_level=3
"""Buffer checks and the flat-arena helpers: compiled once, with no ISA flags.

Shared by the optimizer classes, the functional API and the gradient utilities. The driver
(fusedoptim._driver) cimports check_like to validate grads in Plan.bind.
"""

from libc.stdint cimport uintptr_t, uint64_t, int64_t
from libc.string cimport memset
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.ref cimport PyObject

cimport numpy as cnp
import numpy as np

cnp.import_array()

# ---------------------------------------------------------------------------------------------
# Buffer checks shared by the optimizer classes and the functional API

cdef inline bint _ranges_overlap(cnp.ndarray a, cnp.ndarray b):
    cdef uintptr_t a0 = <uintptr_t>cnp.PyArray_DATA(a)
    cdef uintptr_t b0 = <uintptr_t>cnp.PyArray_DATA(b)
    cdef uintptr_t a1 = a0 + <uintptr_t>cnp.PyArray_NBYTES(a)
    cdef uintptr_t b1 = b0 + <uintptr_t>cnp.PyArray_NBYTES(b)
    return a0 < b1 and b0 < a1


cdef str _dtype_name(cnp.ndarray param):
    # NumPy has no bfloat16: name ml_dtypes' (np.bfloat16 would raise AttributeError)
    return ("ml_dtypes.bfloat16" if param.dtype.name == "bfloat16"
            else f"np.{param.dtype}")


cdef int check_like(object obj, cnp.ndarray param, str label, bint writeable) except -1:
    """Raise unless obj can stand beside param in a kernel: ndarray, same dtype and shape,
    C-contiguous, aligned, writeable when the kernel writes it, not overlapping param."""
    if not cnp.PyArray_Check(obj):
        raise TypeError(f"{label} must be a numpy.ndarray, got {type(obj).__name__}; "
                        f"convert it with np.asarray(x, dtype={_dtype_name(param)})")
    if cnp.PyArray_TYPE(<cnp.ndarray>obj) != cnp.PyArray_TYPE(param):
        name = _dtype_name(param)
        raise TypeError(f"{label} has dtype {obj.dtype} but its param has dtype "
                        f"{param.dtype}; pass it as {param.dtype}, e.g. "
                        f"x.astype({name})")
    return check_shaped_like(obj, param, label, writeable)


cdef int check_shaped_like(object obj, cnp.ndarray param, str label, bint writeable) except -1:
    """check_like without the dtype: for a buffer whose dtype the caller has checked (a grad
    of lower precision than its param)."""
    cdef cnp.ndarray a
    cdef int k
    if not cnp.PyArray_Check(obj):
        raise TypeError(f"{label} must be a numpy.ndarray, got {type(obj).__name__}")
    a = <cnp.ndarray>obj
    if not cnp.PyArray_ISNOTSWAPPED(a):     # same type number, foreign byte order: garbage
        raise TypeError(f"{label} has non-native byte order ({a.dtype.str}); convert it with "
                        f"x.astype(x.dtype.newbyteorder('='))")
    if cnp.PyArray_NDIM(a) != cnp.PyArray_NDIM(param):
        raise ValueError(f"{label} has shape {obj.shape} but its param has shape {(<object>param).shape}; "
                         f"pass an array of shape {(<object>param).shape}")
    for k in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_DIM(a, k) != cnp.PyArray_DIM(param, k):
            raise ValueError(f"{label} has shape {obj.shape} but its param has shape "
                             f"{(<object>param).shape}; pass an array of shape {(<object>param).shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{label} is not a C-contiguous aligned array; "
                         f"pass np.ascontiguousarray(x)")
    if writeable and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{label} is read-only; the step writes it in place, "
                         f"pass a writeable array")
    if a is param or (cnp.PyArray_NBYTES(a) > 0 and _ranges_overlap(a, param)):
        raise ValueError(f"{label} shares memory with its param; pass a separate array")
    return 0


cdef int _check_array(object obj, str name, object key, bint writeable) except -1:
    """Raise unless obj is a float32/float64, C-contiguous, aligned ndarray (and writeable when
    `writeable`). The label, `name` or `name[key]`, is only formatted on error: the gradient
    utilities check every array of a model on every call."""
    cdef cnp.ndarray a
    if not cnp.PyArray_Check(obj):
        raise TypeError(f"{_label(name, key)} must be a numpy.ndarray, got "
                        f"{type(obj).__name__}; convert it with np.asarray(x, dtype=np.float32)")
    a = <cnp.ndarray>obj
    if not is_float_type(cnp.PyArray_TYPE(a)):
        raise TypeError(f"{_label(name, key)} has dtype {a.dtype}; fusedoptim supports float32, "
                        f"float64, float16 and bfloat16 (ml_dtypes.bfloat16), convert it with "
                        f"x.astype(np.float32)")
    if not cnp.PyArray_ISNOTSWAPPED(a):     # same type number, foreign byte order: garbage
        raise TypeError(f"{_label(name, key)} has non-native byte order ({a.dtype.str}); "
                        f"convert it with x.astype(x.dtype.newbyteorder('='))")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISALIGNED(a):
        if writeable:
            raise ValueError(f"{_label(name, key)} is not a C-contiguous aligned array; it is "
                             f"updated in place, so pass a C-contiguous array "
                             f"(np.ascontiguousarray makes a copy that you must then keep "
                             f"using)")
        raise ValueError(f"{_label(name, key)} is not a C-contiguous aligned array; pass "
                         f"np.ascontiguousarray(x)")
    if writeable and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{_label(name, key)} is read-only; it is updated in place, pass a "
                         f"writeable array")
    return 0


# ml_dtypes' bfloat16 is a user-defined NumPy dtype: its type number is only known at run
# time (fusedoptim._kernels registers it at import).
cdef int _bfloat16_typenum = -1


def register_bfloat16(int typenum):
    """Tell the checks the type number of ml_dtypes.bfloat16 in this process."""
    global _bfloat16_typenum
    _bfloat16_typenum = typenum


cdef bint is_float_type(int typenum) noexcept:
    return (typenum == cnp.NPY_FLOAT32 or typenum == cnp.NPY_FLOAT64
            or typenum == cnp.NPY_FLOAT16 or (typenum == _bfloat16_typenum and typenum >= 0))


cdef str _label(str name, object key):
    return name if key is None else f"{name}[{key!r}]"


def check_param(object obj, str label):
    """Validate one parameter array; returns it. Used when an optimizer is built."""
    _check_array(obj, label, None, True)
    return obj


def check_arrays(list arrays, str name, list keys=None, bint writeable=True):
    """Validate every array (labelled ``name[i]``, or ``name[keys[i]]``), skipping None
    entries, and, when they are written, that no two share memory. Returns (the arrays
    without the Nones, how many of them are float64)."""
    cdef Py_ssize_t k, n = len(arrays), n64 = 0
    cdef list kept = []
    cdef object a
    for k in range(n):
        a = arrays[k]
        if a is None:
            continue
        _check_array(a, name, k if keys is None else keys[k], writeable)
        n64 += cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_FLOAT64
        kept.append(a)
    if writeable and len(kept) > 1:
        clash = find_overlap(kept)
        if clash is not None:
            # Back to the caller's positions for the message.
            where = [k for k in range(n) if arrays[k] is not None]
            i, j = where[clash[0]], where[clash[1]]
            raise ValueError(f"{_label(name, i if keys is None else keys[i])} and "
                             f"{_label(name, j if keys is None else keys[j])} share memory (the "
                             f"same array given twice, or overlapping views); they are updated "
                             f"in place, so give each its own buffer")
    return kept, n64


def find_overlap(list arrays):
    """Return (i, j) for the first two arrays whose memory overlaps, else None. O(n log n)."""
    cdef Py_ssize_t n = len(arrays), k, m = 0, i, owner = -1
    starts_a = np.empty(n, dtype=np.uint64)
    index_a = np.empty(n, dtype=np.intp)
    cdef uint64_t[::1] starts = starts_a
    cdef Py_ssize_t[::1] index = index_a
    for k in range(n):
        if cnp.PyArray_NBYTES(<cnp.ndarray>arrays[k]) > 0:
            starts[m] = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>arrays[k])
            index[m] = k
            m += 1
    # A stable sort by start address: ties keep index order.
    cdef Py_ssize_t[::1] order = np.argsort(starts_a[:m], kind="stable").astype(np.intp)
    cdef uint64_t end = 0, s
    for k in range(m):
        s = starts[order[k]]
        i = index[order[k]]
        if owner >= 0 and s < end:
            return (owner, i) if owner < i else (i, owner)
        if s + <uint64_t>cnp.PyArray_NBYTES(<cnp.ndarray>arrays[i]) > end:
            end = s + <uint64_t>cnp.PyArray_NBYTES(<cnp.ndarray>arrays[i])
            owner = i
    return None


def check_buffer(object obj, object param, str label, bint writeable=True):
    """Validate an optimizer-state array against its param (functional API); returns it."""
    check_like(obj, <cnp.ndarray?>param, label, writeable)
    return obj



# ---------------------------------------------------------------------------------------------
# Buffers laid end to end (the flat parameter arena)

cdef PyObject* _owner(cnp.ndarray a):
    # The object that owns a's memory. NumPy points a view of a view at the owner, so this
    # is at most a hop or two.
    cdef PyObject* o = <PyObject*>a
    cdef PyObject* b = cnp.PyArray_BASE(a)
    while b != NULL:
        o = b
        if not cnp.PyArray_Check(<object>b):
            break
        b = cnp.PyArray_BASE(<cnp.ndarray>b)
    return o


def tile_view(list arrays, list like=None):
    """A 1-D array over the memory of `arrays` when they tile one buffer: all C-contiguous
    ndarrays of one dtype, each starting where the previous one ends (empty arrays aside),
    all views of the same owner. Otherwise None. With `like`, each array must also have the
    dtype and shape of like[k] (the params), so a flat grad lines up with the flat param.
    The result keeps the owner alive and is writeable only when every array is.

    C-level checks only: a step can afford this on a thousand grads.
    """
    cdef Py_ssize_t k, n = len(arrays), total = 0
    cdef int typenum = -1, d
    cdef bint writeable = True
    cdef char* start = NULL
    cdef char* end = NULL
    cdef PyObject* owner = NULL
    cdef object o
    cdef cnp.ndarray a, p
    cdef cnp.npy_intp dims[1]
    if n == 0 or (like is not None and len(like) != n):
        return None
    for k in range(n):
        o = arrays[k]
        if not cnp.PyArray_Check(o):
            return None
        a = <cnp.ndarray>o
        if like is not None:
            p = <cnp.ndarray?>like[k]
            if (cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(p)
                    or cnp.PyArray_NDIM(a) != cnp.PyArray_NDIM(p)):
                return None
            for d in range(cnp.PyArray_NDIM(a)):
                if cnp.PyArray_DIM(a, d) != cnp.PyArray_DIM(p, d):
                    return None
        if typenum < 0:
            typenum = cnp.PyArray_TYPE(a)
        elif cnp.PyArray_TYPE(a) != typenum:
            return None
        if (not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISALIGNED(a)
                or not cnp.PyArray_ISNOTSWAPPED(a)):
            return None
        if cnp.PyArray_SIZE(a) == 0:
            continue
        if start == NULL:
            start = <char*>cnp.PyArray_DATA(a)
            owner = _owner(a)
        elif <char*>cnp.PyArray_DATA(a) != end or _owner(a) != owner:
            return None
        end = <char*>cnp.PyArray_DATA(a) + cnp.PyArray_NBYTES(a)
        total += cnp.PyArray_SIZE(a)
        writeable = writeable and cnp.PyArray_ISWRITEABLE(a)
    if start == NULL:
        return np.empty(0, dtype=(<object>arrays[0]).dtype)
    dims[0] = total
    view = cnp.PyArray_SimpleNewFromData(1, dims, typenum, start)
    cnp.set_array_base(view, <object>owner)
    if not writeable:
        cnp.PyArray_CLEARFLAGS(view, cnp.NPY_ARRAY_WRITEABLE)
    return view


def same_items(object live, tuple pinned):
    """True when `live` is a list holding exactly the objects of `pinned`, in order."""
    cdef Py_ssize_t k
    if type(live) is not list or len(<list>live) != len(pinned):
        return False
    for k in range(len(pinned)):
        if (<list>live)[k] is not pinned[k]:
            return False
    return True



def views_at(list templates, list addresses, list typenums, list owners):
    """NumPy views of foreign memory (torch tensors' data), without a Python-level call per
    array: view k has the shape of ndarray templates[k], dtype number typenums[k], its data at
    addresses[k], and keeps owners[k] alive as its base. The caller has checked that each
    address holds a C-contiguous run of templates[k].size elements of that dtype (what
    fusedoptim.torch checks of a grad before asking for its view)."""
    cdef Py_ssize_t k, n = len(templates)
    cdef cnp.ndarray t
    cdef list out = [None] * n
    if len(addresses) != n or len(typenums) != n or len(owners) != n:
        raise ValueError("views_at: templates, addresses, typenums and owners must have "
                         "one entry each per view")
    for k in range(n):
        t = <cnp.ndarray?>templates[k]
        view = cnp.PyArray_SimpleNewFromData(cnp.PyArray_NDIM(t), cnp.PyArray_DIMS(t),
                                             <int>typenums[k],
                                             <void*><uintptr_t>(<object>addresses[k]))
        cnp.set_array_base(view, owners[k])
        out[k] = view
    return out


def flat_views_at(list sizes, list addresses, list typenums, list owners):
    """Like views_at, but view k is 1-D of sizes[k] elements (for reductions, where the shape
    does not matter)."""
    cdef Py_ssize_t k, n = len(sizes)
    cdef cnp.npy_intp dims[1]
    cdef list out = [None] * n
    if len(addresses) != n or len(typenums) != n or len(owners) != n:
        raise ValueError("flat_views_at: sizes, addresses, typenums and owners must have "
                         "one entry each per view")
    for k in range(n):
        dims[0] = <cnp.npy_intp>sizes[k]
        view = cnp.PyArray_SimpleNewFromData(1, dims, <int>typenums[k],
                                             <void*><uintptr_t>(<object>addresses[k]))
        cnp.set_array_base(view, owners[k])
        out[k] = view
    return out


# ---------------------------------------------------------------------------------------------
# SparseAdam's row table (cython_kernels/sparse_adam.pxi.tp reads it)

def sparse_row_table(cnp.ndarray indices, Py_ssize_t nrows, cnp.ndarray out=None):
    """The SparseAdam kernel's row table for `indices` (1-D C-contiguous int64, as
    fusedoptim.optim.sparse_adam checks them): an int64 array of 2 * nnz,

        head[j] = table[j]        indices[j] if position j is its index's first occurrence,
                                  else -1
        nxt[j]  = table[nnz + j]  the next position with the same index, or -1

    so each distinct row is updated once, by its first occurrence, which sums the values of
    its chain in the order given (a fixed order: the sum is the same for any thread count,
    and the same as NumPy's coalesce in fusedoptim.reference). None when an index is outside
    [0, nrows): nothing else is done, and the caller says which.

    O(nnz) time and memory: one pass checks the range and whether the indices strictly
    increase (then every position is its own run); otherwise an open-addressing hash table
    of >= 2 * nnz slots finds each index's first occurrence, and the chain's tail for the
    next one. No sort. `out`: an int64 C-contiguous array of 2 * nnz to write the table
    into (a buffer kept between steps), else a new one."""
    if (cnp.PyArray_TYPE(indices) != cnp.NPY_INT64 or cnp.PyArray_NDIM(indices) != 1
            or not cnp.PyArray_IS_C_CONTIGUOUS(indices)
            or not cnp.PyArray_ISNOTSWAPPED(indices)):
        raise TypeError("indices must be a 1-D C-contiguous native int64 array")
    cdef Py_ssize_t n = cnp.PyArray_DIM(indices, 0)
    if out is None:
        table = np.empty(2 * n, dtype=np.int64)
    elif (cnp.PyArray_TYPE(out) != cnp.NPY_INT64 or cnp.PyArray_NDIM(out) != 1
            or cnp.PyArray_DIM(out, 0) != 2 * n or not cnp.PyArray_IS_C_CONTIGUOUS(out)
            or not cnp.PyArray_ISWRITEABLE(out) or not cnp.PyArray_ISNOTSWAPPED(out)):
        raise ValueError(f"out must be a writeable C-contiguous int64 array of {2 * n}")
    else:
        table = out
    cdef const int64_t* idx = <const int64_t*>cnp.PyArray_DATA(indices)
    cdef int64_t* head = <int64_t*>cnp.PyArray_DATA(<cnp.ndarray>table)
    cdef int64_t* nxt = head + n
    cdef Py_ssize_t j, cap, h, f
    cdef uint64_t bad = 0, unsorted = 0, limit = <uint64_t>nrows
    cdef int shift
    cdef int64_t k
    cdef int64_t* slots
    cdef int64_t* tail
    with nogil:
        for j in range(n):          # no branches: vectorizes
            bad |= <uint64_t>idx[j] >= limit
        for j in range(1, n):
            unsorted |= idx[j] <= idx[j - 1]
    if bad:
        return None
    if not unsorted:
        with nogil:
            for j in range(n):
                head[j] = idx[j]
                nxt[j] = -1
        return table
    cap = 16
    shift = 60
    while cap < 2 * n:
        cap *= 2
        shift -= 1
    slots = <int64_t*>PyMem_Malloc(cap * sizeof(int64_t))
    tail = <int64_t*>PyMem_Malloc(n * sizeof(int64_t))
    if slots == NULL or tail == NULL:
        PyMem_Free(slots)
        PyMem_Free(tail)
        raise MemoryError()
    with nogil:
        memset(slots, 0xff, cap * sizeof(int64_t))          # every slot -1: empty
        for j in range(n):
            k = idx[j]
            h = <Py_ssize_t>((<uint64_t>k * <uint64_t>0x9E3779B97F4A7C15ULL) >> shift)
            while True:
                f = slots[h]
                if f < 0:                   # first occurrence: a new run
                    slots[h] = j
                    head[j] = k
                    tail[j] = j
                    break
                if idx[f] == k:             # a repeat: append to its run's chain
                    head[j] = -1
                    nxt[tail[f]] = j
                    tail[f] = j
                    break
                h = (h + 1) & (cap - 1)
            nxt[j] = -1
    PyMem_Free(slots)
    PyMem_Free(tail)
    return table
