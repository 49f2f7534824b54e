# SGD: plain, heavy-ball momentum (torch's form and the notes' EMA form) and Nesterov, in one
# fused pass.
#
# Buffers: 0 param (IN/OUT), 1 grad (IN), 2 momentum_buffer (IN/OUT; momentum modes only).
# Scalars (computed once per step in double by fusedoptim.optim.sgd.sgd_scalars):
SGD_SCALARS = ("sign", "lr", "weight_decay", "momentum", "grad_weight", "nesterov_grad_weight",
               "mode")
# grad_weight is 1 - dampening (torch) or 1 - momentum (EMA form); nesterov_grad_weight is 1
# (torch) or 1 - momentum (EMA form).
# mode bits: 1 = L2 weight decay folded into the grad, 2 = momentum, 4 = Nesterov,
#            8 = first update of a new momentum buffer (torch starts it at the gradient).

from cython cimport floating


cdef inline void _sgd_body(floating* p, const floating* g, floating* buf, Py_ssize_t n,
                           const double* hp, bint l2, bint momentum, bint nesterov,
                           bint first) noexcept nogil:
    # The flags are literal constants at each call site: one specialised loop per combination.
    cdef floating sign = <floating>hp[0], lr = <floating>hp[1], wd = <floating>hp[2]
    cdef floating mu = <floating>hp[3], gw = <floating>hp[4], nw = <floating>hp[5]
    cdef floating gi, pi, bi, di
    cdef Py_ssize_t i
    for i in range(n):
        gi = sign * g[i]
        pi = p[i]
        if l2:
            gi = gi + wd * pi
        if momentum:
            if first:
                bi = gi
            else:
                bi = mu * buf[i] + gw * gi
            buf[i] = bi
            if nesterov:
                di = nw * gi + mu * bi
            else:
                di = bi
        else:
            di = gi
        p[i] = pi - lr * di


cdef inline void _sgd(floating* p, const floating* g, floating* buf, Py_ssize_t n,
                      const double* hp) noexcept nogil:
    cdef int mode = <int>hp[6]
    if mode == 0:
        _sgd_body(p, g, buf, n, hp, False, False, False, False)
    elif mode == 1:
        _sgd_body(p, g, buf, n, hp, True, False, False, False)
    elif mode == 2:
        _sgd_body(p, g, buf, n, hp, False, True, False, False)
    elif mode == 3:
        _sgd_body(p, g, buf, n, hp, True, True, False, False)
    elif mode == 6:
        _sgd_body(p, g, buf, n, hp, False, True, True, False)
    elif mode == 7:
        _sgd_body(p, g, buf, n, hp, True, True, True, False)
    elif mode == 10:
        _sgd_body(p, g, buf, n, hp, False, True, False, True)
    elif mode == 11:
        _sgd_body(p, g, buf, n, hp, True, True, False, True)
    elif mode == 14:
        _sgd_body(p, g, buf, n, hp, False, True, True, True)
    elif mode == 15:
        _sgd_body(p, g, buf, n, hp, True, True, True, True)


cdef void sgd_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _sgd((<float*>b[0]) + s, (<float*>b[1]) + s, (<float*>b[2]) + s, n, hp)


cdef void sgd_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _sgd((<double*>b[0]) + s, (<double*>b[1]) + s, (<double*>b[2]) + s, n, hp)


_register("sgd", sgd_f32, sgd_f64, SGD_SCALARS)
