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


# Read-only and in-place patterns, for the gradient utilities: "touch_r1" reads buffer 0,
# "touch_r2" buffers 0 and 1, summing their bit patterns as integers (wrapping, so associative:
# gcc vectorises it freely; the cheapest possible read of every element). "touch_w1" reads and
# writes buffer 0 (a sign flip, so repeated runs keep the data bounded), the traffic of an
# in-place scale.
from libc.stdint cimport uint32_t, uint64_t


cdef inline double _touch_read(const char* x, Py_ssize_t s, Py_ssize_t n, int width) noexcept nogil:
    cdef const uint32_t* a
    cdef const uint64_t* b
    cdef uint32_t r32 = 0
    cdef uint64_t r64 = 0
    cdef Py_ssize_t i
    if width == 4:
        a = (<const uint32_t*>x) + s
        for i in range(n):
            r32 = r32 + a[i]
        return <double>r32
    b = (<const uint64_t*>x) + s
    for i in range(n):
        r64 = r64 + b[i]
    return <double>r64


cdef int touch_r1_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp,
                      double* out) noexcept nogil:
    out[0] = _touch_read(b[0], s, n, 4)
    return 0
cdef int touch_r1_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp,
                      double* out) noexcept nogil:
    out[0] = _touch_read(b[0], s, n, 8)
    return 0
cdef int touch_r2_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp,
                      double* out) noexcept nogil:
    out[0] = _touch_read(b[0], s, n, 4) + _touch_read(b[1], s, n, 4)
    return 0
cdef int touch_r2_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp,
                      double* out) noexcept nogil:
    out[0] = _touch_read(b[0], s, n, 8) + _touch_read(b[1], s, n, 8)
    return 0


cdef inline void _flip(floating* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        x[i] = -x[i]


cdef void touch_w1_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _flip((<float*>b[0]) + s, n)
cdef void touch_w1_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    _flip((<double*>b[0]) + s, n)


_register_reduce("touch_r1", touch_r1_f32, touch_r1_f64, (), (("checksum", "sum"),))
_register_reduce("touch_r2", touch_r2_f32, touch_r2_f64, (), (("checksum", "sum"),))
_register("touch_w1", touch_w1_f32, touch_w1_f64, ())
