# A diagnostic kernel, not an optimizer: it writes into each element of the param the number
# of the OpenMP thread that ran it. The tests use it to see what the one driver really did
# (which threads took part, how many elements each got) under set_num_threads and
# threadpoolctl, instead of trusting the thread count reported beforehand.
#
# Buffers: 0 param (OUT), 1 grad (unused). Scalars: none.

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fo_thread_num(void) { return omp_get_thread_num(); }
    #else
    static int fo_thread_num(void) { return 0; }
    #endif
    """
    int fo_thread_num() noexcept nogil


cdef void thread_id_f32(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    cdef float* p = (<float*>b[0]) + s
    cdef float v = <float>fo_thread_num()
    cdef Py_ssize_t i
    for i in range(n):
        p[i] = v


cdef void thread_id_f64(char** b, Py_ssize_t s, Py_ssize_t n, const double* hp) noexcept nogil:
    cdef double* p = (<double*>b[0]) + s
    cdef double v = <double>fo_thread_num()
    cdef Py_ssize_t i
    for i in range(n):
        p[i] = v


# The leading underscore keeps it out of show_config()'s list of optimizer kernels.
_register("_thread_id", thread_id_f32, thread_id_f64, ())
# The same kernel registered for float32 only: the tests ask a float64 plan for it, to see the
# registry refuse a combination nobody registered.
register_chunk("_thread_id_f32_only", ST_F32, ST_F32, ST_F32, thread_id_f32, ())
