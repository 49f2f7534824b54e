# Adam / AdamW / AMSGrad, and the notes' Adam without bias correction, in one fused pass.
#
# Buffers: 0 param (IN/OUT), 1 grad (IN), 2 exp_avg (IN/OUT), 3 exp_avg_sq (IN/OUT),
#          4 max_exp_avg_sq (IN/OUT, AMSGrad only).
# Scalars (computed once per step in double by fusedoptim.optim.adam.adam_scalars):
ADAM_SCALARS = ("sign", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2",
                "weight_decay", "decay", "eps", "step_size", "inv_bias_correction2_sqrt", "mode")
# mode bits: 1 = L2 weight decay folded into the grad, 2 = decoupled decay, 4 = AMSGrad.

from libc.math cimport sqrt, sqrtf
from cython cimport floating


cdef inline void _adam_body(floating* p, const floating* g, floating* m, floating* v,
                            floating* vmax, Py_ssize_t n, const double* hp,
                            bint l2, bint decoupled, bint amsgrad) noexcept nogil:
    # l2/decoupled/amsgrad are literal constants at each call site, so gcc emits one
    # specialised, vectorised loop per combination.
    cdef floating sign = <floating>hp[0]
    cdef floating beta1 = <floating>hp[1], omb1 = <floating>hp[2]
    cdef floating beta2 = <floating>hp[3], omb2 = <floating>hp[4]
    cdef floating wd = <floating>hp[5], decay = <floating>hp[6], eps = <floating>hp[7]
    cdef floating step_size = <floating>hp[8], inv_bc2_sqrt = <floating>hp[9]
    cdef floating gi, pi, mi, vi, vm, denom
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
        if amsgrad:
            vm = vmax[i]
            if not (vm >= vi):      # also takes a NaN vi, as torch.maximum does
                vm = vi
            vmax[i] = vm
            vi = vm
        # Multiplying by the reciprocal bias correction (not dividing) leaves one division
        # per element; the kernel is compute-bound in cache, so this is measurable.
        if floating is float:
            denom = sqrtf(vi) * inv_bc2_sqrt + eps
        else:
            denom = sqrt(vi) * inv_bc2_sqrt + eps
        p[i] = pi - step_size * mi / denom


cdef inline void _adam(floating* p, const floating* g, floating* m, floating* v,
                       floating* vmax, Py_ssize_t n, const double* hp) noexcept nogil:
    cdef int mode = <int>hp[10]
    if mode == 0:
        _adam_body(p, g, m, v, vmax, n, hp, False, False, False)
    elif mode == 1:
        _adam_body(p, g, m, v, vmax, n, hp, True, False, False)
    elif mode == 2:
        _adam_body(p, g, m, v, vmax, n, hp, False, True, False)
    elif mode == 4:
        _adam_body(p, g, m, v, vmax, n, hp, False, False, True)
    elif mode == 5:
        _adam_body(p, g, m, v, vmax, n, hp, True, False, True)
    elif mode == 6:
        _adam_body(p, g, m, v, vmax, n, hp, False, True, True)


cdef void adam_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _adam((<float*>b[0]) + s, (<float*>b[1]) + s, (<float*>b[2]) + s, (<float*>b[3]) + s,
          (<float*>b[4]) + s, n, hp)


cdef void adam_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _adam((<double*>b[0]) + s, (<double*>b[1]) + s, (<double*>b[2]) + s, (<double*>b[3]) + s,
          (<double*>b[4]) + s, n, hp)


_register("adam", adam_f32, adam_f64, ADAM_SCALARS)
