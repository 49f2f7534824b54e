# How a kernel family joins the driver's registry (fusedoptim._driver, compiled once). This
# module is compiled once per ISA level and only one level is imported, so its variants are
# the ones registered. The registration lines themselves are generated (kernelgen.py) from each
# family's {{chunk(...)}} / {{reduce(...)}} declaration and the whitelist table VARIANTS there.

from libc.math cimport NAN
from fusedoptim._driver cimport (chunk_kernel, reduce_kernel, register_chunk, register_reduce,
                                 register_modes, ST_F32, ST_F64, ST_BF16, ST_F16,
                                 ST_BF16M, ST_F16M)
from libc.stdint cimport uint16_t
from cython cimport floating

# The storage codecs: the tiled glue kernelgen.py generates converts half-precision buffers to
# and from float tiles of FO_TILE elements with these.
cdef extern from "codecs.h":
    enum: FO_TILE
    void fo_bf16_decode(const uint16_t* src, float* dst, Py_ssize_t n) noexcept nogil
    void fo_bf16_encode(const float* src, uint16_t* dst, Py_ssize_t n) noexcept nogil
    void fo_f16_decode(const uint16_t* src, float* dst, Py_ssize_t n) noexcept nogil
    void fo_f16_encode(const float* src, uint16_t* dst, Py_ssize_t n) noexcept nogil


# How the tiled glue folds a reduce kernel's per-tile partials (as the driver folds segments).
cdef inline double _fo_fold_sum(double a, double b) noexcept nogil:
    return a + b


cdef inline double _fo_fold_max(double a, double b) noexcept nogil:
    return a if (a > b or a != a) else b


cdef int _check_scalars_struct(str family, size_t size, Py_ssize_t count) except -1:
    # The body reads an hp row through the family's struct of doubles: it must be the row.
    if size != <size_t>count * sizeof(double):
        raise RuntimeError(f"fusedoptim: {family}_scalars is {size} bytes, not {count} doubles")
    return 0


# The final else of every generated mode ladder. Plan.run/reduce refuse a mode the kernel did not
# register before anything is written, so these are unreachable; if one is ever reached anyway,
# the result is loud and defined instead of a silent no-op: the segment's params (buffer 0)
# become NaN, or a reduce kernel's outputs are NaN.
cdef inline void _fo_bad_mode(floating* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        p[i] = <floating>NAN


cdef inline int _fo_bad_mode_out(double* out, int nout) noexcept nogil:
    cdef int k
    for k in range(nout):
        out[k] = NAN
    return 0
