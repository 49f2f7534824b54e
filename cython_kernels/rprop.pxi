# Rprop: per-element step sizes adapted by the sign agreement of successive gradients.
#
# Buffers: 0 param (IN/OUT), 1 grad (IN), 2 prev (IN/OUT), 3 step_size (IN/OUT).
# Scalars (fusedoptim.optim.rprop.rprop_scalars; independent of the step count):
RPROP_SCALARS = ("sign", "etaminus", "etaplus", "step_size_min", "step_size_max")

from cython cimport floating


cdef inline void _rprop(floating* p, const floating* g, floating* prev, floating* step,
                        Py_ssize_t n, const double* hp) noexcept nogil:
    cdef floating sign = <floating>hp[0]
    cdef floating etaminus = <floating>hp[1], etaplus = <floating>hp[2]
    cdef floating lo = <floating>hp[3], hi = <floating>hp[4]
    cdef floating gi, agree, factor, ss
    cdef Py_ssize_t i
    for i in range(n):
        gi = sign * g[i]
        agree = gi * prev[i]
        # etaplus on agreement, etaminus on a sign change, 1 when either is zero;
        # a NaN product gives a NaN step size, as torch's sign()-then-mul does.
        factor = etaplus if agree > 0 else (
            etaminus if agree < 0 else (1 if agree == 0 else agree))
        ss = step[i] * factor
        ss = lo if ss < lo else ss          # clamp; NaN passes through both
        ss = hi if ss > hi else ss
        gi = 0 if agree < 0 else gi         # after a sign change: no move, no memory
        p[i] = p[i] - _sign(gi) * ss
        prev[i] = gi
        step[i] = ss


cdef void rprop_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _rprop((<float*>b[0]) + s, (<float*>b[1]) + s, (<float*>b[2]) + s, (<float*>b[3]) + s,
           n, hp)


cdef void rprop_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _rprop((<double*>b[0]) + s, (<double*>b[1]) + s, (<double*>b[2]) + s,
           (<double*>b[3]) + s, n, hp)


_register("rprop", rprop_f32, rprop_f64, RPROP_SCALARS)
