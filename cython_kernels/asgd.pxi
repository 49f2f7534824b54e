# ASGD: SGD with a decaying step size and a running average of the iterates, in one pass.
#
# Buffers: 0 param (IN/OUT), 1 grad (IN), 2 ax (IN/OUT; only written while not averaging).
# Scalars (fusedoptim.optim.asgd.asgd_scalars, from the per-tensor eta and mu that the
# previous step left in state; the eta/mu schedule itself never reaches the kernel):
ASGD_SCALARS = ("sign", "weight_decay", "decay", "eta", "mu", "mode")
# decay = 1 - lambd * eta.
# mode bits: 1 = L2 weight decay folded into the grad, 2 = averaging (mu != 1; else ax = p).

from cython cimport floating


cdef inline void _asgd_body(floating* p, const floating* g, floating* ax, Py_ssize_t n,
                            const double* hp, bint l2, bint average) noexcept nogil:
    cdef floating sign = <floating>hp[0], wd = <floating>hp[1], decay = <floating>hp[2]
    cdef floating eta = <floating>hp[3], mu = <floating>hp[4]
    cdef floating gi, pi
    cdef Py_ssize_t i
    for i in range(n):
        gi = sign * g[i]
        pi = p[i]
        if l2:
            gi = gi + wd * pi
        pi = pi * decay
        pi = pi - eta * gi
        p[i] = pi
        if average:
            ax[i] = ax[i] + (pi - ax[i]) * mu
        else:
            ax[i] = pi


cdef inline void _asgd(floating* p, const floating* g, floating* ax, Py_ssize_t n,
                       const double* hp) noexcept nogil:
    cdef int mode = <int>hp[5]
    if mode == 0:
        _asgd_body(p, g, ax, n, hp, False, False)
    elif mode == 1:
        _asgd_body(p, g, ax, n, hp, True, False)
    elif mode == 2:
        _asgd_body(p, g, ax, n, hp, False, True)
    elif mode == 3:
        _asgd_body(p, g, ax, n, hp, True, True)


cdef void asgd_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _asgd((<float*>b[0]) + s, (<float*>b[1]) + s, (<float*>b[2]) + s, n, hp)


cdef void asgd_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _asgd((<double*>b[0]) + s, (<double*>b[1]) + s, (<double*>b[2]) + s, n, hp)


_register("asgd", asgd_f32, asgd_f64, ASGD_SCALARS)
