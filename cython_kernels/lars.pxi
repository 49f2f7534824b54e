# LARS (You et al. 2017): SGD with momentum whose step is rescaled per tensor by a trust
# ratio, in two passes and no temporary the size of the model.
#
# Buffers: 0 param (IN/OUT), 1 grad (IN), 2 momentum_buffer (IN/OUT; momentum modes only).
# Scalars (fusedoptim.optim.lars: lars_scalars; "trust_ratio" per tensor, by lars_run):
LARS_SCALARS = ("sign", "weight_decay", "momentum", "lr", "trust_ratio", "mode")
# mode bits: 1 = weight decay, 2 = momentum, 4 = Nesterov.
#
#   pass 1, reduce "lars_norms": per segment ||p||^2 and ||g||^2 in double (g = sign * grad,
#           i.e. unscaled and negated for maximize, as the update sees it). Reads only.
#   Python: trust ratio per tensor from the folded norms                  (hp "trust_ratio")
#   pass 2, chunk "lars": d = ratio * (g + wd * p); b = mu * b + d; d = d + mu * b (Nesterov)
#           or b; p -= lr * d.
# 2 + 5 transfers per element with momentum (SGD with momentum: 5).

from cython cimport floating


cdef inline void _lars_block(const floating* p, const floating* g, Py_ssize_t k,
                             floating sign, double* acc_p, double* acc_g) noexcept nogil:
    cdef floating gs[LANES]
    cdef Py_ssize_t j
    for j in range(k):
        gs[j] = sign * g[j]
    _lanes_add_sq(acc_p, p, k)
    _lanes_add_sq(acc_g, gs, k)


cdef inline void _lars_norms(const floating* p, const floating* g, Py_ssize_t n,
                             const double* hp, double* out) noexcept nogil:
    cdef double acc_p[LANES]
    cdef double acc_g[LANES]
    cdef floating sign = <floating>hp[0]
    cdef Py_ssize_t i = 0
    _lanes_zero(acc_p)
    _lanes_zero(acc_g)
    while i + LANES <= n:
        _lars_block(p + i, g + i, LANES, sign, acc_p, acc_g)
        i += LANES
    _lars_block(p + i, g + i, n - i, sign, acc_p, acc_g)
    out[0] = _lanes_total(acc_p)
    out[1] = _lanes_total(acc_g)


cdef int lars_norms_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp,
                        double* out) noexcept nogil:
    _lars_norms((<const float*>b[0]) + s, (<const float*>b[1]) + s, n, hp, out)
    return 0


cdef int lars_norms_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp,
                        double* out) noexcept nogil:
    _lars_norms((<const double*>b[0]) + s, (<const double*>b[1]) + s, n, hp, out)
    return 0


cdef inline void _lars_body(floating* p, const floating* g, floating* buf, Py_ssize_t n,
                            const double* hp, bint decay, bint momentum,
                            bint nesterov) noexcept nogil:
    # The flags are literal constants at each call site: one specialised loop per combination.
    cdef floating sign = <floating>hp[0], wd = <floating>hp[1], mu = <floating>hp[2]
    cdef floating lr = <floating>hp[3], ratio = <floating>hp[4]
    cdef floating d, pi, bi
    cdef Py_ssize_t i
    for i in range(n):
        pi = p[i]
        d = sign * g[i]
        if decay:
            d = d + wd * pi
        d = ratio * d
        if momentum:
            bi = mu * buf[i] + d
            buf[i] = bi
            if nesterov:
                d = d + mu * bi
            else:
                d = bi
        p[i] = pi - lr * d


cdef inline void _lars(floating* p, const floating* g, floating* buf, Py_ssize_t n,
                       const double* hp) noexcept nogil:
    cdef int mode = <int>hp[5]
    if mode == 0:
        _lars_body(p, g, buf, n, hp, False, False, False)
    elif mode == 1:
        _lars_body(p, g, buf, n, hp, True, False, False)
    elif mode == 2:
        _lars_body(p, g, buf, n, hp, False, True, False)
    elif mode == 3:
        _lars_body(p, g, buf, n, hp, True, True, False)
    elif mode == 6:
        _lars_body(p, g, buf, n, hp, False, True, True)
    elif mode == 7:
        _lars_body(p, g, buf, n, hp, True, True, True)


cdef void lars_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _lars((<float*>b[0]) + s, (<float*>b[1]) + s, (<float*>b[2]) + s, n, hp)


cdef void lars_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _lars((<double*>b[0]) + s, (<double*>b[1]) + s, (<double*>b[2]) + s, n, hp)


_register("lars", lars_f32, lars_f64, LARS_SCALARS)
_register_reduce("lars_norms", lars_norms_f32, lars_norms_f64, LARS_SCALARS,
                 (("param_sumsq", "sum"), ("grad_sumsq", "sum")))
