# LAMB (You et al. 2019): Adam's direction, rescaled per tensor by a trust ratio, in two passes
# and no temporary the size of the model.
#
# Buffers: 0 param (IN/OUT), 1 grad (IN), 2 exp_avg (IN/OUT), 3 exp_avg_sq (IN/OUT).
# Scalars (fusedoptim.optim.lamb: lamb_scalars per step count; "step" per tensor, by lamb_run):
LAMB_SCALARS = ("sign", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2",
                "weight_decay", "eps", "inv_bias_correction1", "inv_bias_correction2_sqrt",
                "step", "mode")
# mode bits: 1 = weight decay term wd * p in the update.
#
#   pass 1, reduce "lamb_moments": m, v updated; per segment ||p||^2 and ||u||^2 in double,
#           u = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps) + wd * p
#   Python: trust ratio per tensor from the folded norms, step = lr * ratio  (hp column "step")
#   pass 2, chunk "lamb": u recomputed from the stored m, v and the unchanged p by the same
#           expression in the same dtype (so it is bitwise the u of pass 1), p -= step * u.
# Pass 1 moves 6 buffers per element, pass 2 four: 10 transfers, against Adam's 7, instead of
# the 2 more a stored update would cost in both passes.

from cython cimport floating


cdef inline floating _lamb_u(floating mi, floating vi, floating pi, floating ibc1,
                             floating ibc2s, floating eps, floating wd, bint decay) noexcept nogil:
    cdef floating r = (mi * ibc1) / (_sqrt(vi) * ibc2s + eps)
    if decay:
        r = r + wd * pi
    return r


cdef inline void _lamb_block(floating* p, const floating* g, floating* m, floating* v,
                             Py_ssize_t k, const double* hp, double* acc_p, double* acc_u,
                             bint decay) noexcept nogil:
    # k <= LANES elements: moments, then this block's squares into the lane accumulators.
    cdef floating sign = <floating>hp[0]
    cdef floating beta1 = <floating>hp[1], omb1 = <floating>hp[2]
    cdef floating beta2 = <floating>hp[3], omb2 = <floating>hp[4]
    cdef floating wd = <floating>hp[5], eps = <floating>hp[6]
    cdef floating ibc1 = <floating>hp[7], ibc2s = <floating>hp[8]
    cdef floating u[LANES]
    cdef floating gi, mi, vi
    cdef Py_ssize_t j
    for j in range(k):
        gi = sign * g[j]
        mi = beta1 * m[j] + omb1 * gi
        vi = beta2 * v[j] + omb2 * gi * gi
        m[j] = mi
        v[j] = vi
        u[j] = _lamb_u(mi, vi, p[j], ibc1, ibc2s, eps, wd, decay)
    _lanes_add_sq(acc_p, p, k)
    _lanes_add_sq(acc_u, u, k)


cdef inline void _lamb_moments(floating* p, const floating* g, floating* m, floating* v,
                               Py_ssize_t n, const double* hp, double* out,
                               bint decay) noexcept nogil:
    cdef double acc_p[LANES]
    cdef double acc_u[LANES]
    cdef Py_ssize_t i = 0
    _lanes_zero(acc_p)
    _lanes_zero(acc_u)
    while i + LANES <= n:
        _lamb_block(p + i, g + i, m + i, v + i, LANES, hp, acc_p, acc_u, decay)
        i += LANES
    _lamb_block(p + i, g + i, m + i, v + i, n - i, hp, acc_p, acc_u, decay)
    out[0] = _lanes_total(acc_p)
    out[1] = _lanes_total(acc_u)


cdef int lamb_moments_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp,
                          double* out) noexcept nogil:
    cdef float* p = (<float*>b[0]) + s
    cdef const float* g = (<const float*>b[1]) + s
    if <int>hp[10] & 1:
        _lamb_moments(p, g, (<float*>b[2]) + s, (<float*>b[3]) + s, n, hp, out, True)
    else:
        _lamb_moments(p, g, (<float*>b[2]) + s, (<float*>b[3]) + s, n, hp, out, False)
    return 0


cdef int lamb_moments_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp,
                          double* out) noexcept nogil:
    cdef double* p = (<double*>b[0]) + s
    cdef const double* g = (<const double*>b[1]) + s
    if <int>hp[10] & 1:
        _lamb_moments(p, g, (<double*>b[2]) + s, (<double*>b[3]) + s, n, hp, out, True)
    else:
        _lamb_moments(p, g, (<double*>b[2]) + s, (<double*>b[3]) + s, n, hp, out, False)
    return 0


cdef inline void _lamb_apply(floating* p, const floating* m, const floating* v, Py_ssize_t n,
                             const double* hp, bint decay) noexcept nogil:
    cdef floating wd = <floating>hp[5], eps = <floating>hp[6]
    cdef floating ibc1 = <floating>hp[7], ibc2s = <floating>hp[8], step = <floating>hp[9]
    cdef floating pi
    cdef Py_ssize_t i
    for i in range(n):
        pi = p[i]
        p[i] = pi - step * _lamb_u(m[i], v[i], pi, ibc1, ibc2s, eps, wd, decay)


cdef void lamb_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    if <int>hp[10] & 1:
        _lamb_apply((<float*>b[0]) + s, (<float*>b[2]) + s, (<float*>b[3]) + s, n, hp, True)
    else:
        _lamb_apply((<float*>b[0]) + s, (<float*>b[2]) + s, (<float*>b[3]) + s, n, hp, False)


cdef void lamb_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    if <int>hp[10] & 1:
        _lamb_apply((<double*>b[0]) + s, (<double*>b[2]) + s, (<double*>b[3]) + s, n, hp, True)
    else:
        _lamb_apply((<double*>b[0]) + s, (<double*>b[2]) + s, (<double*>b[3]) + s, n, hp,
                    False)


_register("lamb", lamb_f32, lamb_f64, LAMB_SCALARS)
_register_reduce("lamb_moments", lamb_moments_f32, lamb_moments_f64, LAMB_SCALARS,
                 (("param_sumsq", "sum"), ("update_sumsq", "sum")))
