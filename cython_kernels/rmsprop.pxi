# RMSprop (plain, centered, with momentum) and the notes' bias-corrected RMSProp, in one fused
# pass. Bias correction is only defined without centering (checked in Python).
#
# Buffers: 0 param (IN/OUT), 1 grad (IN), 2 square_avg (IN/OUT), 3 grad_avg (IN/OUT, centered
#          only), 4 momentum_buffer (IN/OUT, momentum only).
# Scalars (computed once per step in double by fusedoptim.optim.rmsprop.rmsprop_scalars):
RMSPROP_SCALARS = ("sign", "weight_decay", "alpha", "one_minus_alpha", "eps", "lr", "momentum",
                   "bias_correction", "mode")
# bias_correction = 1 - alpha^t (1 when off). mode bits: 1 = L2 weight decay folded into the
# grad, 2 = centered, 4 = momentum, 8 = bias correction.

from cython cimport floating


cdef inline void _rmsprop_body(floating* p, const floating* g, floating* sq, floating* ga,
                               floating* buf, Py_ssize_t n, const double* hp, bint l2,
                               bint centered, bint momentum, bint bias_corr) noexcept nogil:
    # The flags are literal constants at each call site: one specialised loop per combination.
    cdef floating sign = <floating>hp[0], wd = <floating>hp[1]
    cdef floating alpha = <floating>hp[2], oma = <floating>hp[3], eps = <floating>hp[4]
    cdef floating lr = <floating>hp[5], mu = <floating>hp[6]
    cdef floating bc = <floating>hp[7]
    cdef floating gi, pi, vi, ai, avg, bi
    cdef Py_ssize_t i
    for i in range(n):
        gi = sign * g[i]
        pi = p[i]
        if l2:
            gi = gi + wd * pi
        vi = alpha * sq[i] + oma * gi * gi
        sq[i] = vi
        if bias_corr:
            vi = vi / bc
        if centered:
            ai = ga[i]
            ai = ai + oma * (gi - ai)
            ga[i] = ai
            vi = vi - ai * ai
        avg = _sqrt(vi) + eps
        if momentum:
            bi = mu * buf[i] + gi / avg
            buf[i] = bi
            p[i] = pi - lr * bi
        else:
            p[i] = pi - lr * gi / avg


cdef inline void _rmsprop(floating* p, const floating* g, floating* sq, floating* ga,
                          floating* buf, Py_ssize_t n, const double* hp) noexcept nogil:
    # Arguments after hp: l2, centered, momentum, bias correction.
    cdef int mode = <int>hp[8]
    if mode == 0:
        _rmsprop_body(p, g, sq, ga, buf, n, hp, False, False, False, False)
    elif mode == 1:
        _rmsprop_body(p, g, sq, ga, buf, n, hp, True, False, False, False)
    elif mode == 2:
        _rmsprop_body(p, g, sq, ga, buf, n, hp, False, True, False, False)
    elif mode == 3:
        _rmsprop_body(p, g, sq, ga, buf, n, hp, True, True, False, False)
    elif mode == 4:
        _rmsprop_body(p, g, sq, ga, buf, n, hp, False, False, True, False)
    elif mode == 5:
        _rmsprop_body(p, g, sq, ga, buf, n, hp, True, False, True, False)
    elif mode == 6:
        _rmsprop_body(p, g, sq, ga, buf, n, hp, False, True, True, False)
    elif mode == 7:
        _rmsprop_body(p, g, sq, ga, buf, n, hp, True, True, True, False)
    elif mode == 8:
        _rmsprop_body(p, g, sq, ga, buf, n, hp, False, False, False, True)
    elif mode == 9:
        _rmsprop_body(p, g, sq, ga, buf, n, hp, True, False, False, True)
    elif mode == 12:
        _rmsprop_body(p, g, sq, ga, buf, n, hp, False, False, True, True)
    elif mode == 13:
        _rmsprop_body(p, g, sq, ga, buf, n, hp, True, False, True, True)


cdef void rmsprop_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _rmsprop((<float*>b[0]) + s, (<float*>b[1]) + s, (<float*>b[2]) + s, (<float*>b[3]) + s,
             (<float*>b[4]) + s, n, hp)


cdef void rmsprop_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _rmsprop((<double*>b[0]) + s, (<double*>b[1]) + s, (<double*>b[2]) + s, (<double*>b[3]) + s,
             (<double*>b[4]) + s, n, hp)


_register("rmsprop", rmsprop_f32, rmsprop_f64, RMSPROP_SCALARS)
