# Roofline kernels: the cheapest pass with a given read/write pattern, compiled with the same
# flags as the optimizers. `fusedoptim bench` times them beside each optimizer, in the same run,
# to report how close a step comes to the memory limit (DESIGN.md).
#
# Buffers: 0 .. k-1 read and written (x += g), k = the grad (read only). Scalars: none.
# "touch_rwK" reads K+1 buffers and writes K; Adam is touch_rw3 (7 transfers per element).

from cython cimport floating


cdef inline void _touch(floating** x, const floating* g, Py_ssize_t n, int k) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi
    cdef floating* a = x[0]
    cdef floating* b = x[1]
    cdef floating* c = x[2]
    cdef floating* d = x[3]
    if k == 1:
        for i in range(n):
            a[i] = a[i] + g[i]
    elif k == 2:
        for i in range(n):
            gi = g[i]
            a[i] = a[i] + gi
            b[i] = b[i] + gi
    elif k == 3:
        for i in range(n):
            gi = g[i]
            a[i] = a[i] + gi
            b[i] = b[i] + gi
            c[i] = c[i] + gi
    elif k == 4:
        for i in range(n):
            gi = g[i]
            a[i] = a[i] + gi
            b[i] = b[i] + gi
            c[i] = c[i] + gi
            d[i] = d[i] + gi


# Buffer order follows the optimizers': 0 = first written buffer (param), 1 = grad, 2.. = rest.
cdef inline void _touch_bufs(floating* p, floating* g, char** b, Py_ssize_t s, Py_ssize_t n,
                             int k) noexcept nogil:
    cdef floating* x[4]
    cdef int j
    x[0] = p + s
    for j in range(1, 4):
        x[j] = (<floating*>b[j + 1]) + s if j < k else <floating*>0
    _touch(x, g + s, n, k)


cdef void touch_rw1_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _touch_bufs(<float*>b[0], <float*>b[1], b, s, n, 1)
cdef void touch_rw1_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _touch_bufs(<double*>b[0], <double*>b[1], b, s, n, 1)
cdef void touch_rw2_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _touch_bufs(<float*>b[0], <float*>b[1], b, s, n, 2)
cdef void touch_rw2_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _touch_bufs(<double*>b[0], <double*>b[1], b, s, n, 2)
cdef void touch_rw3_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _touch_bufs(<float*>b[0], <float*>b[1], b, s, n, 3)
cdef void touch_rw3_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _touch_bufs(<double*>b[0], <double*>b[1], b, s, n, 3)
cdef void touch_rw4_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _touch_bufs(<float*>b[0], <float*>b[1], b, s, n, 4)
cdef void touch_rw4_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _touch_bufs(<double*>b[0], <double*>b[1], b, s, n, 4)

_register("touch_rw1", touch_rw1_f32, touch_rw1_f64, ())
_register("touch_rw2", touch_rw2_f32, touch_rw2_f64, ())
_register("touch_rw3", touch_rw3_f32, touch_rw3_f64, ())
_register("touch_rw4", touch_rw4_f32, touch_rw4_f64, ())
