# Adagrad in one fused pass.
#
# Buffers: 0 param (IN/OUT), 1 grad (IN), 2 sum (IN/OUT).
# Scalars (computed once per step in double by fusedoptim.optim.adagrad.adagrad_scalars):
ADAGRAD_SCALARS = ("sign", "weight_decay", "clr", "eps", "mode")
# clr = lr / (1 + (step - 1) * lr_decay). mode bits: 1 = L2 weight decay folded into the grad.

from cython cimport floating


cdef inline void _adagrad_body(floating* p, const floating* g, floating* acc, Py_ssize_t n,
                               const double* hp, bint l2) noexcept nogil:
    cdef floating sign = <floating>hp[0], wd = <floating>hp[1], clr = <floating>hp[2]
    cdef floating eps = <floating>hp[3]
    cdef floating gi, pi, si, std
    cdef Py_ssize_t i
    for i in range(n):
        gi = sign * g[i]
        pi = p[i]
        if l2:
            gi = gi + wd * pi
        si = acc[i] + gi * gi
        acc[i] = si
        std = _sqrt(si) + eps
        p[i] = pi - clr * gi / std


cdef inline void _adagrad(floating* p, const floating* g, floating* acc, Py_ssize_t n,
                          const double* hp) noexcept nogil:
    if <int>hp[4] & 1:
        _adagrad_body(p, g, acc, n, hp, True)
    else:
        _adagrad_body(p, g, acc, n, hp, False)


cdef void adagrad_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _adagrad((<float*>b[0]) + s, (<float*>b[1]) + s, (<float*>b[2]) + s, n, hp)


cdef void adagrad_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _adagrad((<double*>b[0]) + s, (<double*>b[1]) + s, (<double*>b[2]) + s, n, hp)


_register("adagrad", adagrad_f32, adagrad_f64, ADAGRAD_SCALARS)
