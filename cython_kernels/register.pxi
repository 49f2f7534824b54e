# How a kernel family joins the driver's registry (fusedoptim._driver, compiled once). This
# module is compiled once per ISA level and only one level is imported, so its variants are
# the ones registered. The registration lines themselves are generated (kernelgen.py) from each
# family's {{chunk(...)}} / {{reduce(...)}} declaration and the whitelist table VARIANTS there.

from libc.math cimport NAN
from fusedoptim._driver cimport (chunk_kernel, reduce_kernel, register_chunk, register_reduce,
                                 register_modes, ST_F32, ST_F64)
from cython cimport floating

# The storage codecs (load/store per storage; the identity for float32 and float64).
cdef extern from "codecs.h":
    float fo_f32_load(const float* p, Py_ssize_t i) noexcept nogil
    void fo_f32_store(float* p, Py_ssize_t i, float x) noexcept nogil
    double fo_f64_load(const double* p, Py_ssize_t i) noexcept nogil
    void fo_f64_store(double* p, Py_ssize_t i, double x) noexcept nogil


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
