# Adadelta (Zeiler 2012, as torch) in one fused pass.
#
# Buffers: 0 param (IN/OUT), 1 grad (IN), 2 square_avg (IN/OUT), 3 acc_delta (IN/OUT).
# Scalars (computed once per step in double by fusedoptim.optim.adadelta.adadelta_scalars):
ADADELTA_SCALARS = ("sign", "weight_decay", "rho", "one_minus_rho", "eps", "lr", "mode")
# mode bits: 1 = L2 weight decay folded into the grad.

from cython cimport floating


cdef inline void _adadelta_body(floating* p, const floating* g, floating* sq, floating* acc,
                                Py_ssize_t n, const double* hp, bint l2) noexcept nogil:
    cdef floating sign = <floating>hp[0], wd = <floating>hp[1]
    cdef floating rho = <floating>hp[2], omr = <floating>hp[3], eps = <floating>hp[4]
    cdef floating lr = <floating>hp[5]
    cdef floating gi, pi, vi, ui, std, di
    cdef Py_ssize_t i
    for i in range(n):
        gi = sign * g[i]
        pi = p[i]
        if l2:
            gi = gi + wd * pi
        vi = rho * sq[i] + omr * gi * gi
        sq[i] = vi
        std = _sqrt(vi + eps)
        ui = acc[i]
        di = _sqrt(ui + eps) / std * gi
        acc[i] = rho * ui + omr * di * di
        p[i] = pi - lr * di


cdef inline void _adadelta(floating* p, const floating* g, floating* sq, floating* acc,
                           Py_ssize_t n, const double* hp) noexcept nogil:
    if <int>hp[6] & 1:
        _adadelta_body(p, g, sq, acc, n, hp, True)
    else:
        _adadelta_body(p, g, sq, acc, n, hp, False)


cdef void adadelta_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _adadelta((<float*>b[0]) + s, (<float*>b[1]) + s, (<float*>b[2]) + s, (<float*>b[3]) + s,
              n, hp)


cdef void adadelta_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _adadelta((<double*>b[0]) + s, (<double*>b[1]) + s, (<double*>b[2]) + s,
              (<double*>b[3]) + s, n, hp)


_register("adadelta", adadelta_f32, adadelta_f64, ADADELTA_SCALARS)
