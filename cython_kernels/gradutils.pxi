# Gradient utilities: norms, finiteness, clipping (fusedoptim.clip_grad_norm_ and friends).
#
# They run on the same driver and work units as the optimizers. The reduce kernels read
# buffer 0 (the arrays handed to the utility, or an optimizer plan's grad column) and write
# one partial per segment in double; the driver folds them in a fixed order.
#
#   sumsq      sum x^2                      (L2 norm, norm_type=2)
#   sumabs     sum |x|                      (norm_type=1)
#   sumpow     sum |x|^p, p = hp[0]         (any other finite norm_type > 0)
#   maxabs     max |x|, NaN if any NaN      (norm_type=inf)
#   nonfinite  1 if any x is NaN or +-Inf   (all_finite, skip_nonfinite; stops early)
# Chunk kernels (in place on buffer 0):
#   scale      x = coef * x                 (clip_grad_norm_)
#   clamp      x = min(max(x, lo), hi)      (clip_grad_value_; NaN stays NaN)

from libc.math cimport fabs, pow
from libc.stdint cimport uint32_t, uint64_t, int64_t
from libc.string cimport memcpy
from cython cimport floating


cdef int sumsq_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp,
                   double* out) noexcept nogil:
    out[0] = _sumsq((<const float*>b[0]) + s, n)
    return 0
cdef int sumsq_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp,
                   double* out) noexcept nogil:
    out[0] = _sumsq((<const double*>b[0]) + s, n)
    return 0


cdef inline double _sumabs(const floating* x, Py_ssize_t n) noexcept nogil:
    cdef double acc[LANES]
    cdef Py_ssize_t i = 0
    _lanes_zero(acc)
    while i + LANES <= n:
        _lanes_add_abs(acc, x + i, LANES)
        i += LANES
    _lanes_add_abs(acc, x + i, n - i)
    return _lanes_total(acc)



cdef int sumabs_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp,
                    double* out) noexcept nogil:
    out[0] = _sumabs((<const float*>b[0]) + s, n)
    return 0
cdef int sumabs_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp,
                    double* out) noexcept nogil:
    out[0] = _sumabs((<const double*>b[0]) + s, n)
    return 0


cdef inline double _sumpow(const floating* x, Py_ssize_t n, double p) noexcept nogil:
    # One libm pow per element: the general p is the slow path (p = 1, 2, inf have their own).
    cdef double acc[LANES]
    cdef Py_ssize_t i = 0, j, m
    _lanes_zero(acc)
    while i < n:
        m = LANES if n - i >= LANES else n - i
        for j in range(m):
            acc[j] = acc[j] + pow(fabs(<double>x[i + j]), p)
        i += m
    return _lanes_total(acc)


cdef int sumpow_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp,
                    double* out) noexcept nogil:
    out[0] = _sumpow((<const float*>b[0]) + s, n, hp[0])
    return 0
cdef int sumpow_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp,
                    double* out) noexcept nogil:
    out[0] = _sumpow((<const double*>b[0]) + s, n, hp[0])
    return 0


# max |x| on the bit patterns: with the sign bit cleared, IEEE order is integer order, and
# every NaN pattern lies above +Inf. An integer max is associative, so gcc vectorises it at
# every ISA level, and the result is exact: the largest |x|, or a NaN when any x is NaN.
cdef inline uint32_t _maxabs_bits32(const float* x, Py_ssize_t n) noexcept nogil:
    cdef const uint32_t* u = <const uint32_t*>x
    cdef uint32_t m = 0, v
    cdef Py_ssize_t i
    for i in range(n):
        v = u[i] & 0x7fffffffu
        m = v if v > m else m
    return m


cdef inline int64_t _maxabs_bits64(const double* x, Py_ssize_t n) noexcept nogil:
    # Signed compares (the values are >= 0): AVX2 has a 64-bit signed compare, no unsigned one.
    cdef const int64_t* u = <const int64_t*>x
    cdef int64_t m = 0, v
    cdef Py_ssize_t i
    for i in range(n):
        v = u[i] & 0x7fffffffffffffffLL
        m = v if v > m else m
    return m


cdef int maxabs_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp,
                    double* out) noexcept nogil:
    cdef uint32_t m = _maxabs_bits32((<const float*>b[0]) + s, n)
    cdef float f
    memcpy(&f, &m, 4)
    out[0] = f
    return 0
cdef int maxabs_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp,
                    double* out) noexcept nogil:
    cdef int64_t m = _maxabs_bits64((<const double*>b[0]) + s, n)
    cdef double f
    memcpy(&f, &m, 8)
    out[0] = f
    return 0


# Non-finite: the exponent bits are all ones (|x| >= +Inf as a bit pattern). Returns 1 to stop
# the pass early: one non-finite value settles the answer.
cdef int nonfinite_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp,
                       double* out) noexcept nogil:
    cdef int found = _maxabs_bits32((<const float*>b[0]) + s, n) >= 0x7f800000u
    out[0] = found
    return found
cdef int nonfinite_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp,
                       double* out) noexcept nogil:
    cdef int found = _maxabs_bits64((<const double*>b[0]) + s, n) >= 0x7ff0000000000000LL
    out[0] = found
    return found


cdef inline void _scale(floating* x, Py_ssize_t n, const double* hp) noexcept nogil:
    # The coefficient in the array's dtype, as torch multiplies by a tensor of that dtype.
    cdef floating c = <floating>hp[0]
    cdef Py_ssize_t i
    for i in range(n):
        x[i] = c * x[i]


cdef void scale_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _scale((<float*>b[0]) + s, n, hp)
cdef void scale_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _scale((<double*>b[0]) + s, n, hp)


cdef inline void _clamp(floating* x, Py_ssize_t n, const double* hp) noexcept nogil:
    # torch's clamp_min_ then clamp_max_: a NaN fails both compares and stays NaN.
    cdef floating lo = <floating>hp[0], hi = <floating>hp[1], xi
    cdef Py_ssize_t i
    for i in range(n):
        xi = x[i]
        xi = lo if xi < lo else xi
        xi = hi if xi > hi else xi
        x[i] = xi


cdef void clamp_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _clamp((<float*>b[0]) + s, n, hp)
cdef void clamp_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _clamp((<double*>b[0]) + s, n, hp)


_register_reduce("sumsq", sumsq_f32, sumsq_f64, (), (("sumsq", "sum"),))
_register_reduce("sumabs", sumabs_f32, sumabs_f64, (), (("sumabs", "sum"),))
_register_reduce("sumpow", sumpow_f32, sumpow_f64, ("p",), (("sumpow", "sum"),))
_register_reduce("maxabs", maxabs_f32, maxabs_f64, (), (("maxabs", "max"),))
_register_reduce("nonfinite", nonfinite_f32, nonfinite_f64, (), (("found", "max"),))
_register("scale", scale_f32, scale_f64, ("coef",))
_register("clamp", clamp_f32, clamp_f64, ("lo", "hi"))
