# Adamax: Adam with an exponentially weighted infinity norm, in one fused pass.
#
# Buffers: 0 param (IN/OUT), 1 grad (IN), 2 exp_avg (IN/OUT), 3 exp_inf (IN/OUT).
# Scalars (computed once per step in double by fusedoptim.optim.adamax.adamax_scalars):
ADAMAX_SCALARS = ("sign", "beta1", "one_minus_beta1", "beta2", "weight_decay", "eps",
                  "step_size", "mode")
# mode: 1 = L2 weight decay folded into the grad.

from cython cimport floating


cdef inline void _adamax_body(floating* p, const floating* g, floating* m, floating* u,
                              Py_ssize_t n, const double* hp, bint l2) noexcept nogil:
    # l2 is a literal constant at each call site: one specialised, vectorised loop per value.
    cdef floating sign = <floating>hp[0]
    cdef floating beta1 = <floating>hp[1], omb1 = <floating>hp[2], beta2 = <floating>hp[3]
    cdef floating wd = <floating>hp[4], eps = <floating>hp[5], step_size = <floating>hp[6]
    cdef floating gi, pi, mi, ui
    cdef Py_ssize_t i
    for i in range(n):
        gi = sign * g[i]
        pi = p[i]
        if l2:
            gi = gi + wd * pi
        mi = beta1 * m[i] + omb1 * gi
        ui = _maximum(beta2 * u[i], _abs(gi) + eps)
        m[i] = mi
        u[i] = ui
        p[i] = pi - step_size * mi / ui


cdef inline void _adamax(floating* p, const floating* g, floating* m, floating* u,
                         Py_ssize_t n, const double* hp) noexcept nogil:
    if <int>hp[7] & 1:
        _adamax_body(p, g, m, u, n, hp, True)
    else:
        _adamax_body(p, g, m, u, n, hp, False)


cdef void adamax_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _adamax((<float*>b[0]) + s, (<float*>b[1]) + s, (<float*>b[2]) + s, (<float*>b[3]) + s,
            n, hp)


cdef void adamax_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _adamax((<double*>b[0]) + s, (<double*>b[1]) + s, (<double*>b[2]) + s,
            (<double*>b[3]) + s, n, hp)


_register("adamax", adamax_f32, adamax_f64, ADAMAX_SCALARS)
