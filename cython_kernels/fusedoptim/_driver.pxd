# The driver's face to the kernel modules: the kernel signatures, the storage types, and the
# registry each ISA level's kernel module fills when it is imported.

# A chunk kernel updates elements [start, start+n) of one tensor. bufs holds the tensor's buffer
# addresses (cast to the kernel's dtype inside), hp its scalars. No allocation, no Python, no checks.
ctypedef void (*chunk_kernel)(char** bufs, Py_ssize_t start, Py_ssize_t n,
                              const double* hp) noexcept nogil

# A reduce kernel reads elements [start, start+n) of one tensor (and may update them, as LAMB's
# first pass does) and writes its partial results for that segment to out[0 .. nout), in double.
# It returns nonzero to ask the driver to skip the units not yet started (all_finite's early
# stop); that is only sound for results whose answer is then already known.
ctypedef int (*reduce_kernel)(char** bufs, Py_ssize_t start, Py_ssize_t n, const double* hp,
                              double* out) noexcept nogil

# How a buffer's elements are stored. A kernel variant is registered for one (param, grad,
# state) combination; Plan.run/reduce refuse a combination nobody registered. Storages to
# come (bfloat16, float16, int8/int4 blocks) take the next numbers.
cdef enum:
    ST_F32 = 0
    ST_F64 = 1
    N_STORAGES = 2

cdef int register_chunk(str name, int param, int grad, int state, chunk_kernel kern,
                        tuple scalars) except -1
cdef int register_reduce(str name, int param, int grad, int state, reduce_kernel kern,
                         tuple scalars, tuple outputs) except -1
# The modes a kernel's body implements: hp column `column` of every active tensor must hold one
# of them, or Plan.run/reduce refuse before anything is written. Kernels without modes skip it.
cdef int register_modes(str name, bint reduce, int column, tuple modes) except -1
