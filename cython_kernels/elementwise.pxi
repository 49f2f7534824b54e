# Inline elementwise helpers shared by the chunk kernels. Each is a branch-free select or a
# single libm call, so loops that use them still vectorise. NaN propagates as in torch and
# NumPy: a NaN input gives a NaN result, never a silently chosen other operand.

from libc.math cimport sqrt, sqrtf, fabs, fabsf
from cython cimport floating


cdef inline floating _sqrt(floating x) noexcept nogil:
    # sqrtf for float: sqrt would promote to double and halve the speed (DESIGN.md).
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating _abs(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline floating _maximum(floating a, floating b) noexcept nogil:
    # torch.maximum / np.maximum: NaN if either operand is NaN. `|`, not `or`: Cython turns
    # `or` into a goto, which stops gcc from if-converting (and so vectorising) the loop.
    return a if ((a > b) | (a != a)) else b


cdef inline floating _sign(floating x) noexcept nogil:
    # torch.sign / np.sign: 1, -1, +0 for either zero (x - x), NaN for NaN (x - x).
    return 1 if x > 0 else (-1 if x < 0 else x - x)


# -- Reductions in double, in a fixed order --------------------------------------------------
# A plain `s += x[i]` loop is one long dependency chain: gcc may not reorder a floating-point
# sum (that needs -ffast-math), so it runs at one add per add-latency. Instead every reduction
# keeps LANES independent double accumulators, lane j taking the elements j, j + LANES, ... of
# its segment, and adds the lanes up in one fixed tree at the end. The inner loops below are
# plain loops over those LANES, which gcc vectorises at any ISA level without changing a single
# rounding, so the bits depend only on the data and the segment boundaries: never on the ISA
# level or the thread count.

cdef enum:
    LANES = 32


cdef inline void _lanes_zero(double* acc) noexcept nogil:
    cdef int j
    for j in range(LANES):
        acc[j] = 0.0


cdef inline double _lanes_total(double* acc) noexcept nogil:
    # Pairwise tree in a fixed order (it also keeps the rounding error of the fold small).
    cdef int w = LANES // 2, j
    while w >= 1:
        for j in range(w):
            acc[j] = acc[j] + acc[j + w]
        w = w // 2
    return acc[0]


cdef inline void _lanes_add_sq(double* acc, const floating* x, Py_ssize_t n) noexcept nogil:
    # acc[j] += x[j]^2 in double, for j < n <= LANES.
    cdef Py_ssize_t j
    cdef double xj
    for j in range(n):
        xj = <double>x[j]
        acc[j] = acc[j] + xj * xj


cdef inline void _lanes_add_abs(double* acc, const floating* x, Py_ssize_t n) noexcept nogil:
    # acc[j] += |x[j]| in double, for j < n <= LANES.
    cdef Py_ssize_t j
    for j in range(n):
        acc[j] = acc[j] + fabs(<double>x[j])


cdef inline double _sumsq(const floating* x, Py_ssize_t n) noexcept nogil:
    """Sum of squares of x[0 .. n) in double."""
    cdef double acc[LANES]
    cdef Py_ssize_t i = 0
    _lanes_zero(acc)
    while i + LANES <= n:
        _lanes_add_sq(acc, x + i, LANES)
        i += LANES
    _lanes_add_sq(acc, x + i, n - i)
    return _lanes_total(acc)
