# Lion (evolved sign momentum), in one fused pass.
#
# Buffers: 0 param (IN/OUT), 1 grad (IN), 2 exp_avg (IN/OUT).
# Scalars (computed once per step in double by fusedoptim.optim.lion.lion_scalars):
LION_SCALARS = ("sign", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "lr",
                "decay", "mode")
# mode: 1 = decoupled weight decay (p *= 1 - lr * weight_decay).

from cython cimport floating


cdef inline void _lion_body(floating* p, const floating* g, floating* m, Py_ssize_t n,
                            const double* hp, bint decoupled) noexcept nogil:
    cdef floating sign = <floating>hp[0]
    cdef floating beta1 = <floating>hp[1], omb1 = <floating>hp[2]
    cdef floating beta2 = <floating>hp[3], omb2 = <floating>hp[4]
    cdef floating lr = <floating>hp[5], decay = <floating>hp[6]
    cdef floating gi, pi, mi, c
    cdef Py_ssize_t i
    for i in range(n):
        gi = sign * g[i]
        pi = p[i]
        mi = m[i]
        c = beta1 * mi + omb1 * gi
        if decoupled:
            pi = pi * decay
        p[i] = pi - lr * _sign(c)
        m[i] = beta2 * mi + omb2 * gi


cdef inline void _lion(floating* p, const floating* g, floating* m, Py_ssize_t n,
                       const double* hp) noexcept nogil:
    if <int>hp[7] & 1:
        _lion_body(p, g, m, n, hp, True)
    else:
        _lion_body(p, g, m, n, hp, False)


cdef void lion_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _lion((<float*>b[0]) + s, (<float*>b[1]) + s, (<float*>b[2]) + s, n, hp)


cdef void lion_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _lion((<double*>b[0]) + s, (<double*>b[1]) + s, (<double*>b[2]) + s, n, hp)


_register("lion", lion_f32, lion_f64, LION_SCALARS)
