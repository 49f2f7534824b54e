# NAdam: Adam with Nesterov momentum and a momentum-decay schedule, in one fused pass.
#
# Buffers: 0 param (IN/OUT), 1 grad (IN), 2 exp_avg (IN/OUT), 3 exp_avg_sq (IN/OUT).
# Scalars (computed once per step and mu_product in double by
# fusedoptim.optim.nadam.nadam_scalars; the mu schedule never reaches the kernel):
NADAM_SCALARS = ("sign", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2",
                 "weight_decay", "decay", "eps", "inv_bias_correction2", "grad_coef",
                 "avg_coef", "mode")
# grad_coef = -lr (1 - mu_t) / (1 - prod_{i<=t} mu_i);
# avg_coef  = -lr mu_{t+1} / (1 - prod_{i<=t+1} mu_i).
# mode: 1 = L2 weight decay folded into the grad, 2 = decoupled decay.
# torch applies the two terms as two addcdiv calls; here they share one division (and the
# bias correction is a multiplication), so the loop costs one sqrt and one division per
# element, like Adam's. Only the rounding differs.

from cython cimport floating


cdef inline void _nadam_body(floating* p, const floating* g, floating* m, floating* v,
                             Py_ssize_t n, const double* hp, bint l2,
                             bint decoupled) noexcept nogil:
    cdef floating sign = <floating>hp[0]
    cdef floating beta1 = <floating>hp[1], omb1 = <floating>hp[2]
    cdef floating beta2 = <floating>hp[3], omb2 = <floating>hp[4]
    cdef floating wd = <floating>hp[5], decay = <floating>hp[6], eps = <floating>hp[7]
    cdef floating inv_bc2 = <floating>hp[8], cg = <floating>hp[9], cm = <floating>hp[10]
    cdef floating gi, pi, mi, vi, denom
    cdef Py_ssize_t i
    for i in range(n):
        gi = sign * g[i]
        pi = p[i]
        if l2:
            gi = gi + wd * pi
        if decoupled:
            pi = pi * decay
        mi = beta1 * m[i] + omb1 * gi
        vi = beta2 * v[i] + omb2 * gi * gi
        m[i] = mi
        v[i] = vi
        denom = _sqrt(vi * inv_bc2) + eps
        p[i] = pi + (cg * gi + cm * mi) / denom


cdef inline void _nadam(floating* p, const floating* g, floating* m, floating* v,
                        Py_ssize_t n, const double* hp) noexcept nogil:
    cdef int mode = <int>hp[11]
    if mode == 1:
        _nadam_body(p, g, m, v, n, hp, True, False)
    elif mode == 2:
        _nadam_body(p, g, m, v, n, hp, False, True)
    else:
        _nadam_body(p, g, m, v, n, hp, False, False)


cdef void nadam_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _nadam((<float*>b[0]) + s, (<float*>b[1]) + s, (<float*>b[2]) + s, (<float*>b[3]) + s,
           n, hp)


cdef void nadam_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _nadam((<double*>b[0]) + s, (<double*>b[1]) + s, (<double*>b[2]) + s,
           (<double*>b[3]) + s, n, hp)


_register("nadam", nadam_f32, nadam_f64, NADAM_SCALARS)
