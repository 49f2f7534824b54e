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

# A tile kernel reads an nr x nc block of one tensor that is viewed as a batch of matrices
# (the last two dimensions; rows of `ld` elements): its buffers point at the block's first
# element. It writes each of the block's rows' results to rows[0 .. nr), each of its columns'
# to cols[0 .. nc) and its scalar results to out[0 .. nout), in double; Plan.reduce_tiles folds
# them in block order. Used for per-row and per-column reductions (Adafactor's factors).
ctypedef int (*tile_kernel)(char** bufs, Py_ssize_t start, Py_ssize_t nr, Py_ssize_t nc,
                            Py_ssize_t ld, const double* hp, double* rows, double* cols,
                            double* out) noexcept nogil

# How a buffer's elements are stored. A kernel variant is registered for one (param, grad,
# state) combination; Plan.run/reduce refuse a combination nobody registered.
#   ST_BF16M / ST_F16M: a half-precision param with a float32 master copy in column
#   MASTER_COL; the kernel updates the master and writes the rounded param (param storage only).
#   ST_Q8 / ST_Q4: blockwise int8/int4 state (codes; absmax of buffer i in ABSMAX_COL + i).
#   ST_BF16SR: bfloat16 params written with stochastic rounding, keyed by column SR_COL.
#   ST_Q4R1: int4 state whose non-negative buffers are normalized by rank-1 statistics (Li et
#   al. 2023; cython_kernels/rank1.h): column ABSMAX_COL + i of such a buffer i holds the
#   tensor's descriptor of R1_WORDS int64 words; its signed buffers are blockwise ST_Q4.
cdef enum:
    ST_F32 = 0
    ST_F64 = 1
    ST_BF16 = 2
    ST_F16 = 3
    ST_BF16M = 4
    ST_F16M = 5
    ST_Q8 = 6
    ST_Q4 = 7
    ST_BF16SR = 8
    ST_Q4R1 = 9
    N_STORAGES = 10

# A kernel has at most MAX_BUFFERS buffer columns of its own; the master param, when the param
# storage has one, is column MASTER_COL of the plan, and the absmax of a quantized state buffer
# i is column ABSMAX_COL + i (kernelgen.py generates the same numbers).
cpdef enum:
    MAX_BUFFERS = 6
    MASTER_COL = 6
    ABSMAX_COL = 7
    SR_COL = 13
    R1_WORDS = 11

cdef int register_chunk(str name, int param, int grad, int state, chunk_kernel kern,
                        tuple scalars) except -1
cdef int register_reduce(str name, int param, int grad, int state, reduce_kernel kern,
                         tuple scalars, tuple outputs) except -1
cdef int register_tile(str name, int param, int grad, int state, tile_kernel kern,
                       tuple scalars, tuple outputs) except -1
# The modes a kernel's body implements: hp column `column` of every active tensor must hold one
# of them, or Plan.run/reduce refuse before anything is written. Kernels without modes skip it.
cdef int register_modes(str name, bint reduce, int column, tuple modes) except -1
# A chunk kernel that writes rank-1 normalized buffers (the bits of `columns`: its buffer
# indices) and its scan kernel: on an ST_Q4R1 plan, Plan.run runs the scan first, in the same
# parallel region, then the kernel, then rolls each active tensor's fresh maxima into its old.
cdef int register_rank1(str name, str scan, int columns) except -1
