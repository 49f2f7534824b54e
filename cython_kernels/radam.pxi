# RAdam: Adam with the variance of the adaptive learning rate rectified, in one fused pass.
#
# Buffers: 0 param (IN/OUT), 1 grad (IN), 2 exp_avg (IN/OUT), 3 exp_avg_sq (IN/OUT).
# Scalars (computed once per step in double by fusedoptim.optim.radam.radam_scalars, which
# also picks the branch: while rho_t <= 5 the update is the un-rectified momentum step):
RADAM_SCALARS = ("sign", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2",
                 "weight_decay", "decay", "eps", "step_size", "mode")
# step_size = lr r_t sqrt(1 - beta2^t) / (1 - beta1^t) when rectified, else lr / (1 - beta1^t).
# mode bits: 1 = L2 weight decay folded into the grad, 2 = decoupled decay, 4 = rectified.

from cython cimport floating


cdef inline void _radam_body(floating* p, const floating* g, floating* m, floating* v,
                             Py_ssize_t n, const double* hp, bint l2, bint decoupled,
                             bint rectified) noexcept nogil:
    cdef floating sign = <floating>hp[0]
    cdef floating beta1 = <floating>hp[1], omb1 = <floating>hp[2]
    cdef floating beta2 = <floating>hp[3], omb2 = <floating>hp[4]
    cdef floating wd = <floating>hp[5], decay = <floating>hp[6], eps = <floating>hp[7]
    cdef floating step_size = <floating>hp[8]
    cdef floating gi, pi, mi, vi
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
        if rectified:
            p[i] = pi - step_size * mi / (_sqrt(vi) + eps)
        else:
            p[i] = pi - step_size * mi


cdef inline void _radam(floating* p, const floating* g, floating* m, floating* v,
                        Py_ssize_t n, const double* hp) noexcept nogil:
    cdef int mode = <int>hp[9]
    if mode == 0:
        _radam_body(p, g, m, v, n, hp, False, False, False)
    elif mode == 1:
        _radam_body(p, g, m, v, n, hp, True, False, False)
    elif mode == 2:
        _radam_body(p, g, m, v, n, hp, False, True, False)
    elif mode == 4:
        _radam_body(p, g, m, v, n, hp, False, False, True)
    elif mode == 5:
        _radam_body(p, g, m, v, n, hp, True, False, True)
    elif mode == 6:
        _radam_body(p, g, m, v, n, hp, False, True, True)


cdef void radam_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _radam((<float*>b[0]) + s, (<float*>b[1]) + s, (<float*>b[2]) + s, (<float*>b[3]) + s,
           n, hp)


cdef void radam_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _radam((<double*>b[0]) + s, (<double*>b[1]) + s, (<double*>b[2]) + s,
           (<double*>b[3]) + s, n, hp)


_register("radam", radam_f32, radam_f64, RADAM_SCALARS)
