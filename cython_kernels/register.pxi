# How a kernel family joins the driver's registry (fusedoptim._driver, compiled once). This
# module is compiled once per ISA level and only one level is imported, so its variants are
# the ones registered. The registration lines themselves are generated (kernelgen.py) from each
# family's {{chunk(...)}} / {{reduce(...)}} declaration and the whitelist table VARIANTS there.

from libc.math cimport NAN
from fusedoptim._driver cimport (chunk_kernel, reduce_kernel, register_chunk, register_reduce,
                                 register_modes, register_tile, register_rank1, ST_F32, ST_F64,
                                 ST_BF16, ST_F16, ST_BF16M, ST_F16M, ST_BF16SR, ST_Q8, ST_Q4,
                                 ST_Q4R1, MASTER_COL, SR_COL, R1_WORDS)
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from cython cimport floating

# The storage codecs: the tiled glue kernelgen.py generates converts half-precision buffers to
# and from float tiles of FO_TILE elements with these.
cdef extern from "codecs.h":
    enum: FO_TILE
    void fo_bf16_decode(const uint16_t* src, float* dst, Py_ssize_t n) noexcept nogil
    void fo_bf16_encode(const float* src, uint16_t* dst, Py_ssize_t n) noexcept nogil
    void fo_f16_decode(const uint16_t* src, float* dst, Py_ssize_t n) noexcept nogil
    void fo_f16_encode(const float* src, uint16_t* dst, Py_ssize_t n) noexcept nogil
    void fo_bf16_encode_sr(const float* src, uint16_t* dst, Py_ssize_t n, const uint32_t* key,
                           Py_ssize_t start) noexcept nogil


# The blockwise codec of int8/int4 state (quant.h), and the four maps it quantizes with: the
# signed and unsigned 8-bit dynamic maps and the two 4-bit maps (fusedoptim.quant). set_qmaps
# fills them from fusedoptim.quant.dynamic_map before any quantized state exists.
cdef extern from "quant.h":
    ctypedef struct fo_qmap:
        int ncodes
    int fo_qmap_init(fo_qmap* q, const float* code, int ncodes) noexcept nogil
    void fo_q8_decode(const uint8_t* codes, float absmax, const fo_qmap* q, float* out,
                      Py_ssize_t n) noexcept nogil
    float fo_q8_encode(const float* x, Py_ssize_t n, const fo_qmap* q,
                       uint8_t* codes) noexcept nogil
    void fo_q4_decode(const uint8_t* codes, float absmax, const fo_qmap* q, float* out,
                      Py_ssize_t n) noexcept nogil
    float fo_q4_encode(const float* x, Py_ssize_t n, const fo_qmap* q,
                       uint8_t* codes) noexcept nogil
    # The glue's tiles (a tensor without absmax keeps float32 state: see quant.h).
    float* _fo_q8_tile_in "fo_q8_tile_in" (char* codes, char* absmax, Py_ssize_t at,
                                           Py_ssize_t m, const fo_qmap* q,
                                           float* tile) noexcept nogil
    void _fo_q8_tile_out "fo_q8_tile_out" (char* codes, char* absmax, Py_ssize_t at,
                                           Py_ssize_t m, const fo_qmap* q,
                                           const float* tile) noexcept nogil
    float* _fo_q4_tile_in "fo_q4_tile_in" (char* codes, char* absmax, Py_ssize_t at,
                                           Py_ssize_t m, const fo_qmap* q,
                                           float* tile) noexcept nogil
    void _fo_q4_tile_out "fo_q4_tile_out" (char* codes, char* absmax, Py_ssize_t at,
                                           Py_ssize_t m, const fo_qmap* q,
                                           const float* tile) noexcept nogil

cdef fo_qmap _fo_qmap_s8, _fo_qmap_u8, _fo_qmap_s4, _fo_qmap_u4

#: kernel name -> its buffer roles as declared ("param", "grad", "state", "state+" for a
#: state buffer that is never negative: quantized with the unsigned map, "-" unused)
KERNEL_ROLES = {}


cdef int _init_qmap(fo_qmap* q, object codes, int n) except -1:
    cdef const float[::1] c = codes
    if c.shape[0] != n or fo_qmap_init(q, &c[0], n) != 0:
        raise ValueError(f"fusedoptim: a quantization map of {n} codes was refused")
    return 0


def set_qmaps(signed8, unsigned8, signed4, unsigned4):
    """Load the quantization maps (float32 arrays of 256, 256, 16, 16 sorted codes). The
    unsigned 4-bit map must be k/16, k = 1..16: rank1.h encodes and decodes it by arithmetic."""
    cdef int k
    cdef const float[::1] u4 = unsigned4
    for k in range(16):
        if u4.shape[0] != 16 or u4[k] != (k + 1) / 16.0:
            raise ValueError("fusedoptim: the unsigned 4-bit map must be k/16, k = 1..16")
    _init_qmap(&_fo_qmap_s8, signed8, 256)
    _init_qmap(&_fo_qmap_u8, unsigned8, 256)
    _init_qmap(&_fo_qmap_s4, signed4, 16)
    _init_qmap(&_fo_qmap_u4, unsigned4, 16)


def qmaps_loaded():
    return _fo_qmap_s8.ncodes == 256 and _fo_qmap_u4.ncodes == 16


# The tiled glue's buffer access per role (tiles.h), switching on the row's storage numbers.
cdef extern from "tiles.h":
    int FO_ST_F32, FO_ST_BF16, FO_ST_F16, FO_ST_BF16M, FO_ST_F16M, FO_ST_Q8, FO_ST_Q4
    int FO_ST_BF16SR, FO_ST_Q4R1, FO_MASTER_COL, FO_SR_COL, FO_R1_WORDS
    float* fo_param_in(char** b, int col, int st, Py_ssize_t at, Py_ssize_t m,
                       float* tile) noexcept nogil
    float* fo_param_copy(char** b, int col, int st, Py_ssize_t at, Py_ssize_t m,
                         float* tile) noexcept nogil
    void fo_param_out(char** b, int col, int st, Py_ssize_t at, Py_ssize_t m,
                      const float* tile) noexcept nogil
    const float* fo_grad_in(char* g, int st, Py_ssize_t at, Py_ssize_t m,
                            float* tile) noexcept nogil
    float* fo_state_in(char* s, char* absmax, int st, Py_ssize_t at, Py_ssize_t m,
                       const fo_qmap* q8, const fo_qmap* q4, float* tile) noexcept nogil
    float* fo_state_wptr(char* s, char* absmax, int st, Py_ssize_t at, Py_ssize_t m,
                         const fo_qmap* q8, const fo_qmap* q4, float* tile) noexcept nogil
    void fo_state_out(char* s, char* absmax, int st, Py_ssize_t at, Py_ssize_t m,
                      const fo_qmap* q8, const fo_qmap* q4, const float* tile) noexcept nogil
    # rank-1 normalized int4 state (rank1.h): the scan pass's max-accumulation
    bint fo_r1_active(const char* desc) noexcept nogil
    void fo_r1_scan(const char* desc, Py_ssize_t at, Py_ssize_t m, const float* x) noexcept nogil


cdef int _check_tile_storages() except -1:
    # tiles.h restates _driver.pxd's storage numbers and columns in C: they must agree.
    if (FO_ST_F32, FO_ST_BF16, FO_ST_F16, FO_ST_BF16M, FO_ST_F16M, FO_ST_Q8, FO_ST_Q4,
            FO_ST_BF16SR, FO_ST_Q4R1, FO_MASTER_COL, FO_SR_COL, FO_R1_WORDS) != (
            ST_F32, ST_BF16, ST_F16, ST_BF16M, ST_F16M, ST_Q8, ST_Q4, ST_BF16SR, ST_Q4R1,
            MASTER_COL, SR_COL, R1_WORDS):
        raise RuntimeError("fusedoptim: tiles.h and _driver.pxd disagree on storage numbers")
    return 0


_check_tile_storages()


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
