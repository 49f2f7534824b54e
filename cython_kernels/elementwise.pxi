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
