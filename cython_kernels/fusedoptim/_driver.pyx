# cython: language_level=3
# The one parallel driver. Every optimizer step and every utility pass goes through here.
# Compiled once, with no ISA flags: it only moves pointers and calls the kernels, which the
# kernel module of the loaded ISA level registers (see the registry below).
#
# A param group is described by a Plan, built once and reused every step:
#   ptrs[t, b]     raw address of buffer b of tensor t (b=0 param, b=1 grad, b>=2 state)
#   hp[t, :]       the kernel's scalars for tensor t (a row per tensor: step counts may differ)
#   active[t]      0 when tensor t has no grad this step (torch skips it)
#   sstate[t, :]   per-tensor scalar state kept in double (e.g. NAdam's mu_product); only
#                  Python reads and writes it, to derive the next step's hp row
# The tensors are laid end to end as one virtual array and cut into work units of CHUNK elements.
# A unit is a list of segments (tensor, start, length). Unit boundaries depend only on the tensor
# sizes, never on the thread count, so every result is bitwise identical for any thread count, and
# one 10M tensor next to 500 tiny ones still splits evenly over the threads.
#
# Two kinds of kernel run on the same units, threads and rule for going parallel:
#   chunk kernels update a segment in place (every optimizer step, clipping);
#   reduce kernels read a segment (and may update it) and write partial results, in double, to
#     their own row of a per-segment table. After the pass the rows are folded in segment order,
#     which is tensor order, into per-tensor results and then a total, so a norm is bitwise the

from libc.stdint cimport uintptr_t, int64_t, uint64_t
from libc.string cimport memcmp

cimport cython

cimport numpy as cnp
import numpy as np

from fusedoptim._checks cimport check_like, check_shaped_like

cnp.import_array()

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fo_max_threads(void) { return omp_get_max_threads(); }
    static void fo_set_threads(int n) { omp_set_num_threads(n); }
    static int fo_have_openmp(void) { return 1; }
    #else
    static int fo_max_threads(void) { return 1; }
    static void fo_set_threads(int n) { (void)n; }
    static int fo_have_openmp(void) { return 0; }
    #endif

    /* The one parallel region. Units [0, nunits) are split into contiguous per-thread blocks
       (OpenMP's static schedule), and each thread runs phase 0, 1, ... on its own block, with
       a barrier between phases: a pass whose writes must wait for a check of every unit (the
       skip_nonfinite gate) then costs one fork/join, and each thread's phases touch the same
       memory. Written in C because Cython's prange has no barrier. */
    typedef void (*fo_phase_fn)(void* ctx, int phase, Py_ssize_t lo, Py_ssize_t hi);

    /* ThreadSanitizer builds only (FUSEDOPTIM_SANITIZE=thread): gcc's libgomp is not built for
       TSan, so the fork, barriers and join of the region below, which it does with its own
       futexes and atomics, are invisible, and every read of what the calling thread wrote
       before the region (or a worker in the phase before) would be reported as a race. These
       calls state exactly those happens-before edges, as an instrumented OpenMP runtime would.
       The sync objects are this call's own stack variables, never globals: two regions run
       from two Python threads at once get no edge between them, so a race between them is
       still reported. The barriers alternate two objects: a thread that has released for
       barrier k+1 cannot be acquired by one still leaving barrier k. */
    #if defined(__SANITIZE_THREAD__)
    #define FO_TSAN 1
    #elif defined(__has_feature)
    #if __has_feature(thread_sanitizer)
    #define FO_TSAN 1
    #endif
    #endif
    #ifdef FO_TSAN
    void __tsan_acquire(void* addr);
    void __tsan_release(void* addr);
    #define FO_TSAN_ACQUIRE(p) __tsan_acquire(p)
    #define FO_TSAN_RELEASE(p) __tsan_release(p)
    #else
    #define FO_TSAN_ACQUIRE(p) ((void)0)
    #define FO_TSAN_RELEASE(p) ((void)0)
    #endif

    static void fo_run_phases(fo_phase_fn fn, void* ctx, int nphases, Py_ssize_t nunits,
                              int nthreads) {
        int ph;
    #ifdef _OPENMP
        if (nthreads > 1) {
    #ifdef FO_TSAN
            char fork_edge, join_edge, barrier_edge[2];      /* only their addresses are used */
    #endif
            FO_TSAN_RELEASE(&fork_edge);
            #pragma omp parallel num_threads(nthreads) private(ph)
            {
                Py_ssize_t t = omp_get_thread_num(), nt = omp_get_num_threads();
                Py_ssize_t lo = nunits * t / nt, hi = nunits * (t + 1) / nt;
                FO_TSAN_ACQUIRE(&fork_edge);
                for (ph = 0; ph < nphases; ph++) {
                    if (ph > 0) {
                        FO_TSAN_RELEASE(&barrier_edge[ph & 1]);
                        #pragma omp barrier
                        FO_TSAN_ACQUIRE(&barrier_edge[ph & 1]);
                    }
                    fn(ctx, ph, lo, hi);
                }
                FO_TSAN_RELEASE(&join_edge);
            }
            FO_TSAN_ACQUIRE(&join_edge);
            return;
        }
    #endif
        for (ph = 0; ph < nphases; ph++)
            fn(ctx, ph, 0, nunits);
    }
    """
    int fo_max_threads() noexcept nogil
    void fo_set_threads(int n) noexcept nogil
    int fo_have_openmp() noexcept nogil
    ctypedef void (*fo_phase_fn)(void* ctx, int phase, Py_ssize_t lo,
                                 Py_ssize_t hi) noexcept nogil
    void fo_run_phases(fo_phase_fn fn, void* ctx, int nphases, Py_ssize_t nunits,
                       int nthreads) noexcept nogil

cdef extern from *:
    """
    /* The early-stop flag of a reduction: threads only ever raise it, and it is read before each
       work unit. Relaxed atomics suffice (no data is published through it) and keep the race
       well defined. */
    #if defined(__GNUC__) || defined(__clang__)
    static int fo_flag_get(int* f) { return __atomic_load_n(f, __ATOMIC_RELAXED); }
    static void fo_flag_raise(int* f) { __atomic_store_n(f, 1, __ATOMIC_RELAXED); }
    #else
    static int fo_flag_get(int* f) { return *(volatile int*)f; }
    static void fo_flag_raise(int* f) { *(volatile int*)f = 1; }
    #endif
    """
    int fo_flag_get(int* f) noexcept nogil
    void fo_flag_raise(int* f) noexcept nogil

cdef extern from *:
    """
    /* After a pass that wrote rank-1 normalized int4 state (cython_kernels/rank1.h, whose
       descriptor layout this restates: R1_WORDS int64 words, [0] the number of dimensions k,
       [1] the address of the old float32 maxima, [2] of the fresh uint32 ones, [3..3+k) the
       dimensions): for every active tensor and every such buffer (bit c of `columns`: the
       descriptor is in column ABSMAX_COL + c), old = fresh, an Inf or NaN maximum becoming
       NaN, and fresh = 0. Serial: sum(d_a) values per tensor and buffer. */
    #include <stdint.h>
    #include <string.h>
    static void fo_roll_rank1(char** ptrs, Py_ssize_t nbufs, const unsigned char* active,
                              Py_ssize_t ntensors, int columns, int absmax_col) {
        for (Py_ssize_t t = 0; t < ntensors; t++) {
            if (!active[t]) continue;
            for (int c = 0; columns >> c; c++) {
                if (!((columns >> c) & 1)) continue;
                const int64_t* d = (const int64_t*)ptrs[t * nbufs + absmax_col + c];
                if (d == NULL || d[0] < 2) continue;
                float* old = (float*)(uintptr_t)d[1];
                uint32_t* fresh = (uint32_t*)(uintptr_t)d[2];
                int64_t total = 0;
                for (int64_t a = 0; a < d[0]; a++) total += d[3 + a];
                for (int64_t k = 0; k < total; k++) {
                    uint32_t u = fresh[k] >= 0x7f800000u ? 0x7fc00000u : fresh[k];
                    memcpy(old + k, &u, 4);
                    fresh[k] = 0;
                }
            }
        }
    }
    """
    void fo_roll_rank1(char** ptrs, Py_ssize_t nbufs, const unsigned char* active,
                       Py_ssize_t ntensors, int columns, int absmax_col) noexcept nogil


cdef inline void _roll_rank1(char** ptrs, Py_ssize_t nbufs, const unsigned char* active,
                             Py_ssize_t ntensors, int columns) noexcept nogil:
    fo_roll_rank1(ptrs, nbufs, active, ntensors, columns, ABSMAX_COL)


# 16K elements: 64 KiB of float32 per buffer, so a unit's buffers stay in L2 while it runs.
DEF_CHUNK = 16384
cdef Py_ssize_t CHUNK = DEF_CHUNK
# Below this many elements a fork/join costs more than it saves: run on the calling thread.
cdef Py_ssize_t SERIAL_MAX = 32768

CHUNK_ELEMENTS = DEF_CHUNK
# A tensor that spans a unit boundary starts on a 256-element boundary of the unit table (CHUNK
# is a multiple), so its segments start at multiples of BLOCK: a quantization block (int8/int4
# state keeps one absmax per 256 elements) never spans two units, hence never two threads.
DEF_BLOCK = 256
cdef Py_ssize_t BLOCK = DEF_BLOCK
BLOCK_ELEMENTS = DEF_BLOCK


# ---------------------------------------------------------------------------------------------
# Kernel registry, keyed by (kernel, param storage, grad storage, state storage). The kernel
# module of the loaded ISA level registers its variants when it is imported; only registered
# combinations exist, and asking a Plan for any other is an error, never a silent no-op.
cdef enum:
    MAX_KERNELS = 64
    MAX_REDUCE_KERNELS = 32
    MAX_OUTPUTS = 4
cdef enum:
    GATE_OFF = 0
    GATE_ARMED = 1
    GATE_PASSED = 2
    GATE_TRIPPED = 3
cdef enum:
    COMBINE_SUM = 0
    COMBINE_MAX = 1     # NaN-propagating max

# by storage number (_driver.pxd)
STORAGE_NAMES = ("float32", "float64", "bfloat16", "float16", "bfloat16+master",
                 "float16+master", "int8", "int4", "bfloat16+sr", "int4+rank1")

cdef chunk_kernel _chunk_table[MAX_KERNELS][N_STORAGES][N_STORAGES][N_STORAGES]
cdef int _n_kernels = 0
KERNEL_IDS = {}
SCALARS = {}     # kernel name -> names of its per-tensor scalars, in hp column order

# Reduce kernels have their own registry: the id spaces differ, so a reduce id can never be
# handed to Plan.run or a chunk id to Plan.reduce.
cdef reduce_kernel _reduce_table[MAX_REDUCE_KERNELS][N_STORAGES][N_STORAGES][N_STORAGES]
cdef int _rnout[MAX_REDUCE_KERNELS]
cdef int _rcombine[MAX_REDUCE_KERNELS][MAX_OUTPUTS]
cdef int _n_rkernels = 0
REDUCE_IDS = {}
REDUCE_OUTPUTS = {}   # reduce kernel name -> ((output name, "sum" or "max"), ...)
_NAMES = {}           # (chunk or reduce, id) -> name, for messages

# Tile kernels (per-row and per-column reductions over the last two dimensions: see
# Plan.reduce_tiles) have a registry of their own too.
cdef enum:
    MAX_TILE_KERNELS = 8
cdef tile_kernel _tile_table[MAX_TILE_KERNELS][N_STORAGES][N_STORAGES][N_STORAGES]
cdef int _tnout[MAX_TILE_KERNELS]
cdef int _n_tkernels = 0
TILE_IDS = {}
TILE_OUTPUTS = {}     # tile kernel name -> ((output name, "sum"), ...)

# Modes: a kernel whose body branches on a "mode" scalar registers the modes it implements.
# A bit mask per kernel (modes are 0 .. 63; 0 = no modes registered, nothing checked) and the
# hp column that holds the mode.
MODES = {}            # kernel name -> its allowed modes
cdef uint64_t _chunk_modes[MAX_KERNELS]
cdef int _chunk_mode_col[MAX_KERNELS]
cdef uint64_t _reduce_modes[MAX_REDUCE_KERNELS]
cdef int _reduce_mode_col[MAX_REDUCE_KERNELS]

# Rank-1 normalized int4 state (register_rank1): per chunk kernel, its scan kernel's id + 1
# (0: none) and the bit mask of its buffers that are rank-1 normalized.
cdef int _chunk_scan[MAX_KERNELS]
cdef int _chunk_r1cols[MAX_KERNELS]
RANK1_SCANS = {}      # kernel name -> its scan kernel's name


cdef int _check_storages(str name, int param, int grad, int state) except -1:
    if not (0 <= param < N_STORAGES and 0 <= grad < N_STORAGES and 0 <= state < N_STORAGES):
        raise ValueError(f"fusedoptim: kernel {name!r} registered for unknown storages "
                         f"({param}, {grad}, {state})")
    return 0


cdef int register_chunk(str name, int param, int grad, int state, chunk_kernel kern,
                        tuple scalars) except -1:
    global _n_kernels
    _check_storages(name, param, grad, state)
    kid = KERNEL_IDS.get(name)
    if kid is None:
        if _n_kernels >= MAX_KERNELS:
            raise RuntimeError("fusedoptim: raise MAX_KERNELS in _driver.pyx")
        kid = KERNEL_IDS[name] = _n_kernels
        SCALARS[name] = scalars
        _NAMES["chunk", kid] = name
        _n_kernels += 1
    elif SCALARS[name] != scalars:
        raise RuntimeError(f"fusedoptim: kernel {name!r} registered with scalars {scalars}, "
                           f"before with {SCALARS[name]}")
    if _chunk_table[kid][param][grad][state] != NULL:
        raise _registered_twice("kernel", name, param, grad, state)
    _chunk_table[kid][param][grad][state] = kern
    return 0


cdef int register_reduce(str name, int param, int grad, int state, reduce_kernel kern,
                         tuple scalars, tuple outputs) except -1:
    global _n_rkernels
    cdef int k
    _check_storages(name, param, grad, state)
    rid = REDUCE_IDS.get(name)
    if rid is None:
        if _n_rkernels >= MAX_REDUCE_KERNELS or len(outputs) > MAX_OUTPUTS or not outputs:
            raise RuntimeError("fusedoptim: raise MAX_REDUCE_KERNELS/MAX_OUTPUTS in _driver.pyx")
        for k in range(len(outputs)):
            if outputs[k][1] not in ("sum", "max"):
                raise RuntimeError(f"fusedoptim: output {outputs[k]!r} of {name} must combine "
                                   f"by 'sum' or 'max'")
            _rcombine[_n_rkernels][k] = COMBINE_SUM if outputs[k][1] == "sum" else COMBINE_MAX
        rid = REDUCE_IDS[name] = _n_rkernels
        _rnout[rid] = len(outputs)
        REDUCE_OUTPUTS[name] = outputs
        SCALARS[name] = scalars
        _NAMES["reduce", rid] = name
        _n_rkernels += 1
    elif SCALARS[name] != scalars or REDUCE_OUTPUTS[name] != outputs:
        raise RuntimeError(f"fusedoptim: reduce kernel {name!r} registered twice with "
                           f"different scalars or outputs")
    if _reduce_table[rid][param][grad][state] != NULL:
        raise _registered_twice("reduce kernel", name, param, grad, state)
    _reduce_table[rid][param][grad][state] = kern
    return 0


cdef int register_tile(str name, int param, int grad, int state, tile_kernel kern,
                       tuple scalars, tuple outputs) except -1:
    global _n_tkernels
    cdef int k
    _check_storages(name, param, grad, state)
    tid = TILE_IDS.get(name)
    if tid is None:
        if _n_tkernels >= MAX_TILE_KERNELS or len(outputs) > MAX_OUTPUTS:
            raise RuntimeError("fusedoptim: raise MAX_TILE_KERNELS/MAX_OUTPUTS in _driver.pyx")
        for k in range(len(outputs)):
            if outputs[k][1] != "sum":
                raise RuntimeError(f"fusedoptim: output {outputs[k]!r} of tile kernel {name} "
                                   f"must combine by 'sum'")
        tid = TILE_IDS[name] = _n_tkernels
        _tnout[tid] = len(outputs)
        TILE_OUTPUTS[name] = outputs
        SCALARS[name] = scalars
        _NAMES["tile", tid] = name
        _n_tkernels += 1
    elif SCALARS[name] != scalars or TILE_OUTPUTS[name] != outputs:
        raise RuntimeError(f"fusedoptim: tile kernel {name!r} registered twice with "
                           f"different scalars or outputs")
    if _tile_table[tid][param][grad][state] != NULL:
        raise _registered_twice("tile kernel", name, param, grad, state)
    _tile_table[tid][param][grad][state] = kern
    return 0


cdef int register_modes(str name, bint reduce, int column, tuple modes) except -1:
    cdef uint64_t mask = 0
    cdef int m
    kid = (REDUCE_IDS if reduce else KERNEL_IDS).get(name)
    if kid is None:
        raise RuntimeError(f"fusedoptim: modes for {name!r} registered before the kernel")
    if not modes or not (0 <= column < len(SCALARS[name])):
        raise RuntimeError(f"fusedoptim: bad modes {modes!r} or mode column {column} for {name!r}")
    for m in modes:
        if not 0 <= m < 64:
            raise RuntimeError(f"fusedoptim: mode {m} of {name!r} is not in 0 .. 63")
        mask |= (<uint64_t>1) << m
    if MODES.get(name, modes) != modes:
        raise RuntimeError(f"fusedoptim: {name!r} registered with modes {modes}, before with "
                           f"{MODES[name]}")
    MODES[name] = modes
    if reduce:
        _reduce_modes[<int>kid] = mask
        _reduce_mode_col[<int>kid] = column
    else:
        _chunk_modes[<int>kid] = mask
        _chunk_mode_col[<int>kid] = column
    return 0


cdef int register_rank1(str name, str scan, int columns) except -1:
    kid = KERNEL_IDS.get(name)
    sid = KERNEL_IDS.get(scan)
    if kid is None or sid is None or not 0 < columns < (1 << MAX_BUFFERS):
        raise RuntimeError(f"fusedoptim: rank-1 kernel {name!r} with scan {scan!r} and "
                           f"columns {columns} registered before them, or bad columns")
    if SCALARS[name] != SCALARS[scan] or MODES.get(name) != MODES.get(scan):
        raise RuntimeError(f"fusedoptim: the scan {scan!r} must take {name!r}'s scalars and "
                           f"modes")
    _chunk_scan[<int>kid] = <int>sid + 1
    _chunk_r1cols[<int>kid] = columns
    RANK1_SCANS[name] = scan
    return 0


cdef object _registered_twice(str kind, str name, int param, int grad, int state):
    return RuntimeError(f"fusedoptim: {kind} {name!r} registered twice for "
                        f"{_storage_text(param, grad, state)} (two ISA levels' kernel modules "
                        f"imported into one process?)")


cdef str _storage_text(int param, int grad, int state):
    return (f"params {STORAGE_NAMES[param]}, grads {STORAGE_NAMES[grad]}, state "
            f"{STORAGE_NAMES[state]}")


# ml_dtypes' bfloat16 is a user-defined NumPy dtype: its type number is only known at run
# time (fusedoptim._kernels registers it at import).
cdef int _bfloat16_typenum = -1


def register_bfloat16(int typenum):
    """Tell the driver the type number of ml_dtypes.bfloat16 in this process."""
    global _bfloat16_typenum
    _bfloat16_typenum = typenum


cdef int _storage_of(int typenum) except -1:
    if typenum == cnp.NPY_FLOAT32:
        return ST_F32
    if typenum == cnp.NPY_FLOAT64:
        return ST_F64
    if typenum == cnp.NPY_FLOAT16:
        return ST_F16
    if typenum == _bfloat16_typenum and typenum >= 0:
        return ST_BF16
    raise TypeError(f"no kernel storage for dtype number {typenum}")


def storage_of(dtype):
    """The storage number of arrays of `dtype` (float32, float64, float16, bfloat16)."""
    return _storage_of(np.dtype(dtype).num)


def registered_variants(str name):
    """The (param, grad, state) storage names a kernel (chunk or reduce) is registered for."""
    cdef int p, g, s
    found = []
    kid = KERNEL_IDS.get(name)
    rid = REDUCE_IDS.get(name)
    tid = TILE_IDS.get(name)
    if kid is None and rid is None and tid is None:
        raise KeyError(f"no kernel named {name!r}")
    for p in range(N_STORAGES):
        for g in range(N_STORAGES):
            for s in range(N_STORAGES):
                if ((kid is not None and _chunk_table[<int>kid][p][g][s] != NULL)
                        or (rid is not None and _reduce_table[<int>rid][p][g][s] != NULL)
                        or (tid is not None and _tile_table[<int>tid][p][g][s] != NULL)):
                    found.append((STORAGE_NAMES[p], STORAGE_NAMES[g], STORAGE_NAMES[s]))
    return found


cdef str _unregistered(str kind, int kid, int param, int grad, int state):
    name = _NAMES[kind, kid]
    have = "; ".join(", ".join(v) for v in registered_variants(name)) or "none"
    return (f"kernel {name!r} has no variant for {_storage_text(param, grad, state)} "
            f"(registered: {have})")


def set_num_threads(int n):
    """Set the OpenMP thread count used by every fused call (like torch.set_num_threads).

    It sets OpenMP's nthreads-var, the same knob OMP_NUM_THREADS and threadpoolctl use, so
    ``threadpool_limits`` also applies. The setting is per calling thread, as in OpenMP.
    """
    if n < 1:
        raise ValueError(f"num_threads must be a positive integer, got {n}")
    fo_set_threads(n)


def get_num_threads():
    """The thread count the next fused call will use (1 when built without OpenMP)."""
    return fo_max_threads()


def openmp_enabled():
    return bool(fo_have_openmp())


# ---------------------------------------------------------------------------------------------
# The driver loop

cdef struct Job:
    # One pass over a plan: exactly one of kern (chunk) and rkern (reduce) is set.
    chunk_kernel kern
    reduce_kernel rkern
    char** ptrs                  # ptrs[t * nbufs + col] is the kernel's buffer 0 for tensor t
    Py_ssize_t nbufs, col
    const double* hp
    Py_ssize_t nscal
    const unsigned char* active
    const Py_ssize_t* seg_t
    const Py_ssize_t* seg_start
    const Py_ssize_t* seg_len
    const Py_ssize_t* unit_begin
    double* partials             # reduce: nout doubles per segment
    Py_ssize_t nout
    int* stop                    # skip the units not yet started once *stop is set, or NULL
    int* raise_to                # reduce: flag a nonzero return sets (early stop), or NULL


cdef inline void _run_unit(const Job* j, Py_ssize_t u) noexcept nogil:
    cdef Py_ssize_t s, t
    if j.stop != NULL and fo_flag_get(j.stop):
        return
    for s in range(j.unit_begin[u], j.unit_begin[u + 1]):
        t = j.seg_t[s]
        if not j.active[t]:
            continue
        if j.rkern != NULL:
            if j.rkern(j.ptrs + t * j.nbufs + j.col, j.seg_start[s], j.seg_len[s],
                       j.hp + t * j.nscal, j.partials + s * j.nout) and j.raise_to != NULL:
                fo_flag_raise(j.raise_to)
        else:
            j.kern(j.ptrs + t * j.nbufs + j.col, j.seg_start[s], j.seg_len[s],
                   j.hp + t * j.nscal)


cdef struct Pass:
    # What one parallel region runs, one phase per job, with a barrier between phases:
    # optionally a gate over every unit, optionally a scan (the rank-1 maxima a kernel's
    # encode needs), then the job. The gate is a reduce job; the others share its stop flag,
    # so once the gate raises it (say, a non-finite grad), every unit of the later phases is
    # skipped and nothing is written.
    const Job* jobs[3]


cdef void _run_phase(void* ctx, int phase, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef const Pass* p = <const Pass*>ctx
    cdef Py_ssize_t u
    for u in range(lo, hi):
        _run_unit(p.jobs[phase], u)


cdef void _drive(const Job* j, const Job* gate, Py_ssize_t nunits, Py_ssize_t total,
                 int num_threads, const Job* pre=NULL) noexcept nogil:
    # The one thread-count rule, for every kind of pass. With a gate, j.stop (and pre.stop)
    # must be the gate's stop flag.
    cdef Pass p
    cdef int nphases = 0
    if gate != NULL:
        p.jobs[nphases] = gate
        nphases += 1
    if pre != NULL:
        p.jobs[nphases] = pre
        nphases += 1
    p.jobs[nphases] = j
    nphases += 1
    if num_threads <= 1 or nunits <= 1 or total <= SERIAL_MAX:
        num_threads = 1
    elif num_threads > nunits:
        num_threads = <int>nunits
    fo_run_phases(_run_phase, &p, nphases, nunits, num_threads)


# ---------------------------------------------------------------------------------------------
# Tiles: per-row and per-column reductions over the last two dimensions.
#
# A tensor of two or more dimensions is a batch of B = prod(shape[:-2]) matrices of R rows and
# C columns. Its tiles are blocks of H whole rows (C <= TILE_WMAX) or of H rows by W =
# TILE_W columns (wider matrices), with H = TILE_ELEMS // W, so a tile holds about TILE_ELEMS
# elements and a column block's pieces of rows are contiguous runs of W elements. A tile
# writes its rows' and its columns' partial results to its own slots: row partials are kept
# per column block, column partials per row block. After the pass they are folded in block
# order (a row's over its column blocks left to right, a column's over its row blocks top to
# bottom), so the results depend only on the shapes, never on the thread count. Consecutive
# tiles are grouped into work units of at least TILE_ELEMS elements (many small matrices
# share a unit), spread over the threads by the same rule as every other pass.
# The partials take about numel / H + numel / W doubles (1/64 of the elements for a
# 1024 x 1024 matrix), plus the results: never a temporary the size of the tensor.
DEF TILE_ELEMS = 65536
DEF TILE_WMAX = 4096
DEF TILE_W = 2048
TILE_ELEMENTS = TILE_ELEMS


cdef struct TileJob:
    tile_kernel kern
    char** ptrs
    Py_ssize_t nbufs
    const double* hp
    Py_ssize_t nscal
    const unsigned char* active
    const Py_ssize_t* tt          # per tile: tensor, first element, rows, columns, row length,
    const Py_ssize_t* tstart      # and the offsets of its row and column partial slots
    const Py_ssize_t* tnr
    const Py_ssize_t* tnc
    const Py_ssize_t* tld
    const Py_ssize_t* trp
    const Py_ssize_t* tcp
    const Py_ssize_t* unit_begin
    double* rpart
    double* cpart
    double* partials              # nout doubles per tile
    Py_ssize_t nout


cdef void _run_tiles(void* ctx, int phase, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef const TileJob* j = <const TileJob*>ctx
    cdef Py_ssize_t u, k, t
    for u in range(lo, hi):
        for k in range(j.unit_begin[u], j.unit_begin[u + 1]):
            t = j.tt[k]
            if j.active[t]:
                j.kern(j.ptrs + t * j.nbufs, j.tstart[k], j.tnr[k], j.tnc[k], j.tld[k],
                       j.hp + t * j.nscal, j.rpart + j.trp[k], j.cpart + j.tcp[k],
                       j.partials + k * j.nout)


@cython.final
cdef class _TileTable:
    """A plan's tiles (built on its first reduce_tiles), their partial slots and the fold."""
    cdef Py_ssize_t[::1] tt, tstart, tnr, tnc, tld, trp, tcp, unit_begin
    # per matrix tensor: tensor, B*R, column blocks, row partial base, row result offset,
    #                    B*C, row blocks, column partial base, column result offset,
    #                    first tile, end tile
    cdef Py_ssize_t[:, ::1] mats
    cdef readonly Py_ssize_t nrows, ncols, ntiles, nunits, total
    cdef object rpart_array, cpart_array, partials_array
    cdef double[::1] rpart, cpart, partials

    def __init__(self, list params):
        cdef Py_ssize_t t, b, rb, cb, B, R, C, W, H, nrb, ncb, rbase, cbase, first, acc
        tiles = []
        mats = []
        rbase = cbase = 0
        roff = coff = 0
        for t in range(len(params)):
            shape = tuple(params[t].shape)
            if len(shape) < 2:
                continue
            # (indices from the front: this module is compiled with wraparound=False)
            R, C = shape[len(shape) - 2], shape[len(shape) - 1]
            B = 1
            for x in shape[:len(shape) - 2]:
                B *= x
            if B * R * C == 0:
                mats.append((t, B * R, 0, rbase, roff, B * C, 0, cbase, coff, len(tiles),
                             len(tiles)))
                roff += B * R
                coff += B * C
                continue
            W = C if C <= TILE_WMAX else TILE_W
            H = max(1, TILE_ELEMS // W)
            ncb = (C + W - 1) // W
            nrb = (R + H - 1) // H
            first = len(tiles)
            for b in range(B):
                for rb in range(nrb):
                    for cb in range(ncb):
                        tiles.append((t, b * R * C + rb * H * C + cb * W,
                                      min(H, R - rb * H), min(W, C - cb * W), C,
                                      rbase + cb * B * R + b * R + rb * H,
                                      cbase + rb * B * C + b * C + cb * W))
            mats.append((t, B * R, ncb, rbase, roff, B * C, nrb, cbase, coff, first,
                         len(tiles)))
            rbase += ncb * B * R
            cbase += nrb * B * C
            roff += B * R
            coff += B * C
        arr = np.array(tiles, dtype=np.intp).reshape(-1, 7)
        self.tt, self.tstart, self.tnr, self.tnc, self.tld, self.trp, self.tcp = [
            np.ascontiguousarray(arr[:, k]) for k in range(7)]
        self.mats = np.array(mats, dtype=np.intp).reshape(-1, 11)
        self.ntiles = arr.shape[0]
        self.nrows, self.ncols = roff, coff
        # Work units: consecutive tiles until TILE_ELEMS elements (or the end).
        ub = [0]
        acc = 0
        self.total = 0
        for k in range(self.ntiles):
            acc += self.tnr[k] * self.tnc[k]
            if acc >= TILE_ELEMS:
                ub.append(k + 1)
                self.total += acc
                acc = 0
        if ub[len(ub) - 1] != self.ntiles:
            ub.append(self.ntiles)
            self.total += acc
        self.unit_begin = np.array(ub, dtype=np.intp)
        self.nunits = len(ub) - 1
        self.rpart_array = np.zeros(max(rbase, 1), dtype=np.float64)
        self.cpart_array = np.zeros(max(cbase, 1), dtype=np.float64)
        self.partials_array = np.zeros(max(self.ntiles * MAX_OUTPUTS, 1), dtype=np.float64)
        self.rpart = self.rpart_array
        self.cpart = self.cpart_array
        self.partials = self.partials_array

    cdef void fold(self, const unsigned char* active, Py_ssize_t nout, double* rows,
                   double* cols, double* pt) noexcept nogil:
        """Rows over their column blocks, columns over their row blocks, scalars over the
        tensor's tiles: each in block order. pt: (ntensors x nout), zero on entry."""
        cdef Py_ssize_t m, t, x, k, blk, n, base, off
        for m in range(self.mats.shape[0]):
            t = self.mats[m, 0]
            if not active[t]:
                continue
            n, base, off = self.mats[m, 1], self.mats[m, 3], self.mats[m, 4]
            if self.mats[m, 2] == 0:
                for x in range(n):
                    rows[off + x] = 0.0
            else:
                for x in range(n):
                    rows[off + x] = self.rpart[base + x]
                for blk in range(1, self.mats[m, 2]):
                    for x in range(n):
                        rows[off + x] = rows[off + x] + self.rpart[base + blk * n + x]
            n, base, off = self.mats[m, 5], self.mats[m, 7], self.mats[m, 8]
            if self.mats[m, 6] == 0:
                for x in range(n):
                    cols[off + x] = 0.0
            else:
                for x in range(n):
                    cols[off + x] = self.cpart[base + x]
                for blk in range(1, self.mats[m, 6]):
                    for x in range(n):
                        cols[off + x] = cols[off + x] + self.cpart[base + blk * n + x]
            for x in range(self.mats[m, 9], self.mats[m, 10]):
                for k in range(nout):
                    pt[t * nout + k] = pt[t * nout + k] + self.partials[x * nout + k]


# ---------------------------------------------------------------------------------------------

cdef tuple _cut_units(list params):
    """Work units: lay the tensors end to end and cut that line every CHUNK positions. A
    tensor that would be cut starts on a BLOCK boundary (the gap before it is padding that no
    kernel sees), so every cut inside a tensor falls on one of its block boundaries.

    Returns (seg_t, seg_start, seg_len, unit_begin, total elements): segment s is elements
    [seg_start[s], seg_start[s] + seg_len[s]) of tensor seg_t[s], and seg_start[s] is a
    multiple of BLOCK; unit u is segments [unit_begin[u], unit_begin[u + 1]). Plain C loops
    into preallocated arrays: the gradient utilities build a plan on every call, for any
    number of tensors."""
    cdef Py_ssize_t nt = len(params), t, n, b, cut, pos = 0, total = 0, line = 0
    cdef Py_ssize_t ns = 0, nu = 0
    for t in range(nt):
        n = cnp.PyArray_SIZE(<cnp.ndarray>params[t])
        total += n
        line += n + BLOCK - 1          # an upper bound on the padded line's length
    # A segment ends at a tensor's end or a unit boundary: at most nt + line / CHUNK of them.
    seg_t = np.empty(nt + line // CHUNK + 1, dtype=np.intp)
    seg_start = np.empty_like(seg_t)
    seg_len = np.empty_like(seg_t)
    unit_begin = np.empty(line // CHUNK + 2, dtype=np.intp)
    cdef Py_ssize_t[::1] st = seg_t, ss = seg_start, sl = seg_len, ub = unit_begin
    ub[0] = 0
    for t in range(nt):
        n = cnp.PyArray_SIZE(<cnp.ndarray>params[t])
        if n == 0:
            continue
        # A tensor that fits in what is left of the unit is never cut: no padding, so many
        # small tensors still pack densely. One that will be cut starts on a BLOCK boundary.
        if pos % BLOCK and pos % CHUNK + n > CHUNK:
            pos += BLOCK - pos % BLOCK
            if pos % CHUNK == 0 and ub[nu] != ns:      # the padding ended a unit
                nu += 1
                ub[nu] = ns
        b = 0
        while b < n:
            cut = min(n - b, CHUNK - pos % CHUNK)
            st[ns] = t
            ss[ns] = b
            sl[ns] = cut
            ns += 1
            b += cut
            pos += cut
            if pos % CHUNK == 0:
                nu += 1
                ub[nu] = ns
    if ub[nu] != ns:
        nu += 1
        ub[nu] = ns
    return seg_t[:ns], seg_start[:ns], seg_len[:ns], unit_begin[:nu + 1], total

@cython.final
cdef class Plan:
    """Pointer, scalar and work-unit tables for one group of tensors of one dtype.

    Built once per param set; per step only the grad column and the active flags change.
    Buffer column 0 is the param, 1 the grad, 2.. the state buffers named by the optimizer.

    A tensor is ready to step when it has state and every `required` state column (default:
    none beyond having state) holds a buffer; bind() counts the active tensors that are not,
    so the kernel never sees a null pointer. `scalar_state` (ntensors x k, double) is
    per-tensor scalar state; group_active()/set_group() turn it and the step counts into hp
    rows and write its next values.
    """
    cdef readonly list params
    cdef readonly list labels
    cdef list state                 # state[t]: list of state arrays, or None (not created yet)
    cdef list _grads                # keeps the bound grads alive until the next bind
    cdef readonly Py_ssize_t ntensors, nbufs, nscalars, total, nunits
    # the row length of ptrs: nbufs, padded with NULL columns (see __init__)
    cdef Py_ssize_t _stride
    cdef readonly int typenum
    cdef int st_param, st_grad, st_state   # the registry key of the kernels this plan runs
    cdef tuple _grad_dtypes         # the dtypes bind() accepts for grads (all of one per bind)
    cdef int _grad_types[8]         # their type numbers
    cdef int _n_grad_types
    cdef int _grad_type_bound       # the type number of grad_dtype (-1 before any bind)
    cdef readonly object grad_dtype # the dtype of the grads bound last (None before)
    cdef readonly object hp_array, steps_array, active_array
    cdef uintptr_t[:, ::1] ptrs
    cdef double[:, ::1] hp
    cdef unsigned char[::1] active
    cdef int64_t[::1] steps
    cdef Py_ssize_t[::1] seg_t, seg_start, seg_len, unit_begin
    cdef readonly Py_ssize_t missing_state, nsstate
    cdef readonly Py_ssize_t nactive        # tensors with a grad in the last bind()
    cdef readonly object sstate_array
    cdef double[:, ::1] sstate
    cdef unsigned char[::1] ready
    cdef Py_ssize_t[::1] key_of, key_rep
    # Every buffer the kernel writes (params and state), sorted by address, so bind() can
    # reject a grad that aliases any of them in O(log n): the kernel would read it while
    # another unit (maybe on another thread) writes it.
    cdef uintptr_t[::1] w_lo, w_hi
    cdef Py_ssize_t[::1] w_owner, w_kind
    cdef bint _written_indexed      # the four arrays above are built (by the first bind)
    cdef object _partials           # reduce(): per-segment partial results, reused
    cdef Py_ssize_t _last_nout      # outputs per segment of the last reduce() (0: none yet)
    cdef _TileTable _tiles          # reduce_tiles(): the tiles, built on first use
    # The gate (arm_gate): a reduce kernel run over the grads in the same parallel region as
    # the next pass, before it; a nonzero return from any unit vetoes that pass and every
    # later one until disarm_gate(). skip_nonfinite's check costs no extra fork/join this way.
    cdef int _gate_state, _gate_kernel
    cdef object _gate_partials
    # advance() saves the step counts and scalar state here, so a vetoed step can be undone.
    cdef int64_t[::1] _steps_before
    cdef double[:, ::1] _sstate_before

    def __init__(self, list params, list state, Py_ssize_t nstate, Py_ssize_t nscalars,
                 list labels, steps=None, scalar_state=None, required=None, storages=None,
                 grad_dtypes=None):
        """`storages`: (param, state) storage numbers; default: both the params' dtype's.
        `grad_dtypes`: the grad dtypes bind() accepts; default: the params' dtype."""
        cdef Py_ssize_t t, b
        cdef bint ok
        cdef cnp.ndarray p
        self.params = params
        self.labels = labels
        self.state = state
        self._grads = None
        self.ntensors = len(params)
        self.nbufs = 2 + nstate
        # A kernel's tiled glue (any row with a half or quantized buffer, which the grads'
        # dtype can select at bind time) reads the absmax column ABSMAX_COL + i of each of its
        # buffers i, counted from the column it starts at, whether or not the plan has it.
        # Rows padded with NULL columns to hold every such column (and SR_COL) keep those
        # reads inside the table: an AddressSanitizer build found the last tensor's reading
        # past its end (a bfloat16 AdamW with master weights).
        self._stride = max(self.nbufs + ABSMAX_COL, SR_COL + 1)
        self.nscalars = nscalars
        self.typenum = cnp.PyArray_TYPE(<cnp.ndarray>params[0]) if params else cnp.NPY_FLOAT32
        if storages is None:
            self.st_param = self.st_state = _storage_of(self.typenum)
        else:
            self.st_param, self.st_state = storages
            if not (0 <= self.st_param < N_STORAGES and 0 <= self.st_state < N_STORAGES):
                raise ValueError(f"unknown storages {storages!r}")
            if self.st_param in (ST_BF16M, ST_F16M) and self.nbufs <= MASTER_COL:
                raise ValueError(f"a master-weight plan needs buffer column {MASTER_COL} "
                                 f"(nstate >= {MASTER_COL - 1}), got nstate={nstate}")
            if self.st_param == ST_BF16SR and self.nbufs <= SR_COL:
                raise ValueError(f"a stochastic-rounding plan needs buffer column {SR_COL} "
                                 f"(nstate >= {SR_COL - 1}), got nstate={nstate}")
        self._grad_dtypes = (((<object>params[0]).dtype if params else np.dtype(np.float32),)
                             if grad_dtypes is None else tuple(grad_dtypes))
        if not 0 < len(self._grad_dtypes) <= 8:
            raise ValueError(f"grad_dtypes must name 1 to 8 dtypes, got {grad_dtypes!r}")
        self._n_grad_types = len(self._grad_dtypes)
        for t in range(self._n_grad_types):
            self._grad_types[t] = np.dtype(self._grad_dtypes[t]).num
        # Until the first bind, the grads are taken to be of the first accepted dtype.
        self.st_grad = _storage_of(self._grad_dtypes[0].num)
        self.grad_dtype = None
        self._grad_type_bound = -1
        self.ptrs = np.zeros((self.ntensors, self._stride), dtype=np.uintp)
        self.hp_array = np.zeros((self.ntensors, max(nscalars, 1)), dtype=np.float64)
        self.hp = self.hp_array
        self.active_array = np.zeros(self.ntensors, dtype=np.uint8)
        self.active = self.active_array
        self.steps_array = (np.zeros(self.ntensors, dtype=np.int64) if steps is None
                            else np.ascontiguousarray(steps, dtype=np.int64).copy())
        self.steps = self.steps_array
        if scalar_state is None:
            self.nsstate = 0
            self.sstate_array = np.zeros((self.ntensors, 1), dtype=np.float64)
        else:
            self.sstate_array = np.array(scalar_state, dtype=np.float64, order="C", ndmin=2)
            if self.sstate_array.shape[0] != self.ntensors:
                raise ValueError(f"scalar_state needs one row per tensor ({self.ntensors}), "
                                 f"got shape {self.sstate_array.shape}")
            self.nsstate = self.sstate_array.shape[1]
            if self.nsstate == 0:
                self.sstate_array = np.zeros((self.ntensors, 1), dtype=np.float64)
        self.sstate = self.sstate_array
        self._steps_before = np.zeros(self.ntensors, dtype=np.int64)
        self._sstate_before = np.zeros_like(self.sstate_array)
        self._gate_state = GATE_OFF
        self.ready = np.zeros(self.ntensors, dtype=np.uint8)
        self.key_of = np.full(self.ntensors, -1, dtype=np.intp)
        self.key_rep = np.zeros(max(self.ntensors, 1), dtype=np.intp)
        required = () if required is None else tuple(required)
        self.missing_state = 0
        for t in range(self.ntensors):
            p = <cnp.ndarray>params[t]
            self.ptrs[t, 0] = <uintptr_t>cnp.PyArray_DATA(p)
            if state[t] is None:
                self.missing_state += 1
            else:
                for b in range(nstate):
                    if state[t][b] is not None:
                        self.ptrs[t, 2 + b] = <uintptr_t>cnp.PyArray_DATA(
                            <cnp.ndarray>state[t][b])
                ok = True
                for b in required:
                    if state[t][b] is None:
                        ok = False
                self.ready[t] = ok
                if not ok:
                    self.missing_state += 1
        self.seg_t, self.seg_start, self.seg_len, self.unit_begin, self.total = \
            _cut_units(params)
        self.nunits = self.unit_begin.shape[0] - 1

    def _index_written(self, list state, Py_ssize_t nstate):
        cdef Py_ssize_t t, b, k
        cdef cnp.ndarray a
        spans = []
        for t in range(self.ntensors):
            bufs = [(self.params[t], 0)]
            if state[t] is not None:
                bufs += [(state[t][b], 1) for b in range(nstate) if state[t][b] is not None]
            for a_obj, kind in bufs:
                a = <cnp.ndarray>a_obj
                if cnp.PyArray_NBYTES(a) > 0:
                    lo = <uintptr_t>cnp.PyArray_DATA(a)
                    spans.append((lo, lo + <uintptr_t>cnp.PyArray_NBYTES(a), t, kind))
        spans.sort()
        for k in range(1, len(spans)):
            if spans[k][0] < spans[k - 1][1]:
                raise ValueError(f"the buffers updated for {self.labels[spans[k - 1][2]]} and "
                                 f"{self.labels[spans[k][2]]} (params or optimizer state) "
                                 f"share memory; give every param and state buffer its own "
                                 f"memory")
        self.w_lo = np.array([x[0] for x in spans], dtype=np.uintp)
        self.w_hi = np.array([x[1] for x in spans], dtype=np.uintp)
        self.w_owner = np.array([x[2] for x in spans], dtype=np.intp)
        self.w_kind = np.array([x[3] for x in spans], dtype=np.intp)

    cdef Py_ssize_t _written_overlap(self, uintptr_t lo, uintptr_t hi):
        """Index of the written buffer that [lo, hi) overlaps, or -1. The spans are sorted
        and disjoint, so only the last one starting below hi can reach past lo."""
        cdef Py_ssize_t a = 0, b = self.w_lo.shape[0], mid
        while a < b:                       # first span with start >= hi
            mid = (a + b) // 2
            if self.w_lo[mid] < hi:
                a = mid + 1
            else:
                b = mid
        if a > 0 and self.w_hi[a - 1] > lo:
            return a - 1
        return -1

    def bind(self, list grads):
        """Validate grads against the params and point column 1 at them. None skips a tensor.

        Writes nothing but this plan's grad pointers and active flags, so a rejected call
        leaves every buffer as it was. Returns the number of tensors that will step but are
        not ready (no state, or a required buffer missing): the caller creates it and rebuilds
        the plan, so the kernel never reads a null pointer.
        """
        cdef Py_ssize_t t, b, k, owner, missing = 0
        cdef uintptr_t lo
        if not self._written_indexed:
            # Indexed on first use, not in __init__: only plans that take grads need it, and
            # the gradient utilities build a plan on every call, over up to thousands of
            # arrays that they only read (duplicates allowed) or have checked themselves.
            self._index_written(self.state, self.nbufs - 2)
            self._written_indexed = True
        cdef object g
        cdef cnp.ndarray p
        if len(grads) != self.ntensors:
            raise ValueError(f"expected {self.ntensors} grads, got {len(grads)}")
        cdef int gtype = -1
        cdef Py_ssize_t gfirst = -1
        for t in range(self.ntensors):
            g = grads[t]
            if g is None:
                continue
            p = <cnp.ndarray>self.params[t]
            if self._n_grad_types == 1:
                check_like(g, p, self.labels[t], False)
            else:
                self._check_grad_dtype(g, p, t, gtype)
                check_shaped_like(g, p, self.labels[t], False)
            if gfirst == -1:
                gfirst = t
                gtype = cnp.PyArray_TYPE(<cnp.ndarray>g)
            if cnp.PyArray_NBYTES(<cnp.ndarray>g) == 0:
                continue
            lo = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>g)
            if lo == self.ptrs[t, 1]:
                # The grad bound last time, at the same address with the same size (its shape
                # is its param's): the written buffers are fixed for the plan's life, so the
                # search below already passed. Grads kept in fixed arrays skip it every step.
                continue
            k = self._written_overlap(lo, lo + <uintptr_t>cnp.PyArray_NBYTES(<cnp.ndarray>g))
            if k >= 0:
                owner = self.w_owner[k]
                if owner == t:
                    raise ValueError(f"{self.labels[t]} shares memory with the optimizer "
                                     f"state of its param; pass a separate array")
                what = "param" if self.w_kind[k] == 0 else "optimizer state"
                raise ValueError(f"{self.labels[t]} shares memory with the {what} updated "
                                 f"for {self.labels[owner]}; pass a separate array")
        # All grads are valid: only now touch the tables.
        if gfirst != -1 and gtype != self._grad_type_bound:
            self._grad_type_bound = gtype
            self.grad_dtype = grads[gfirst].dtype
            self.st_grad = _storage_of(gtype)
        self.nactive = 0
        for t in range(self.ntensors):
            g = grads[t]
            if g is None:
                self.active[t] = 0
                self.ptrs[t, 1] = 0
            else:
                self.active[t] = 1
                self.nactive += 1
                self.ptrs[t, 1] = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>g)
                if not self.ready[t]:
                    missing += 1
        self._grads = grads
        return missing

    cdef int _check_grad_dtype(self, object g, cnp.ndarray p, Py_ssize_t t,
                               int first) except -1:
        """Raise unless grad g has one of the accepted dtypes, and `first`'s (the type number
        of the grads before it, or -1). C comparisons only: bind runs it per tensor."""
        cdef int k, typenum
        if not cnp.PyArray_Check(g):
            raise TypeError(f"{self.labels[t]} must be a numpy.ndarray, got "
                            f"{type(g).__name__}; convert it with np.asarray(x, "
                            f"dtype={p.dtype})")
        typenum = cnp.PyArray_TYPE(<cnp.ndarray>g)
        for k in range(self._n_grad_types):
            if typenum == self._grad_types[k]:
                break
        else:
            self._bad_grad_dtype(g, p, t)
        if not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>g):
            self._bad_grad_dtype(g, p, t)
        if first != -1 and typenum != first:
            raise TypeError(f"{self.labels[t]} has dtype {g.dtype}, but the grads before it "
                            f"in this step have another; give all of a group's grads one "
                            f"dtype per step (any of "
                            f"{', '.join(map(str, self._grad_dtypes))})")
        return 0

    cdef int _bad_grad_dtype(self, object g, cnp.ndarray p, Py_ssize_t t) except -1:
        dt = g.dtype
        if not dt.isnative:
            raise TypeError(f"{self.labels[t]} has non-native byte order ({dt.str}); convert "
                            f"it with x.astype(x.dtype.newbyteorder('='))")
        names = ", ".join(map(str, self._grad_dtypes))
        higher = dt.kind == "f" and dt.itemsize > p.dtype.itemsize
        why = (" (a grad of higher precision than its param is refused: the step would "
               "round it silently)" if higher else "")
        raise TypeError(f"{self.labels[t]} has dtype {dt}, but grads for these {p.dtype} "
                        f"params must be {names}{why}; convert it, e.g. "
                        f"g.astype({self._grad_dtypes[0]})")

    def advance(self):
        """Count one more step for every active tensor. Returns the step they all share,
        or -1 when active tensors are at different steps (then fill hp per step value).
        With the gate armed, the counts and scalar state from before are kept for
        undo_advance() (only a gated step can be vetoed, so only it pays for the copy)."""
        cdef Py_ssize_t t
        cdef int64_t common = -2, s
        if self._gate_state == GATE_ARMED:
            self._steps_before[:] = self.steps
            self._sstate_before[:, :] = self.sstate
        for t in range(self.ntensors):
            if self.active[t]:
                self.steps[t] += 1
                s = self.steps[t]
                if common == -2:
                    common = s
                elif common != s:
                    common = -1
        return 0 if common == -2 else common

    def undo_advance(self):
        """Put back the step counts and scalar state of the last advance() made with the
        gate armed (a vetoed step)."""
        self.steps[:] = self._steps_before
        self.sstate[:, :] = self._sstate_before

    def arm_gate(self, int reduce_id):
        """Make the next pass (run or reduce) first run reduce kernel `reduce_id` over the
        grads, in the same parallel region: if it returns nonzero on any unit, that pass and
        every later pass write nothing until disarm_gate(). See gate_tripped."""
        if reduce_id < 0 or reduce_id >= _n_rkernels:
            raise ValueError(f"unknown reduce kernel id {reduce_id}")
        self._reduce_kernel(reduce_id, 1)       # refuse an unregistered variant now
        self._gate_kernel = reduce_id
        self._gate_state = GATE_ARMED

    def disarm_gate(self):
        """End the gated step. Returns 'tripped' (the gate vetoed the passes), 'passed', or
        'unused' (no pass ran since arm_gate)."""
        cdef int was = self._gate_state
        self._gate_state = GATE_OFF
        return "tripped" if was == GATE_TRIPPED else "passed" if was == GATE_PASSED \
            else "unused"

    cdef int _drive_gated(self, Job* j, int num_threads, Job* pre=NULL) except -1:
        """Drive job j (after job `pre`, if any) under the gate's rules: vetoed -> nothing;
        armed -> gate, then pre, then j."""
        cdef Job g
        cdef int stop = 0
        cdef Py_ssize_t nseg = self.seg_t.shape[0]
        cdef double[::1] gpart
        if self._gate_state == GATE_TRIPPED:
            return 0
        if self._gate_state == GATE_ARMED:
            self._check_modes("reduce", self._gate_kernel, _reduce_modes[self._gate_kernel],
                              _reduce_mode_col[self._gate_kernel])
        if self._gate_state != GATE_ARMED:
            with nogil:
                _drive(j, NULL, self.nunits, self.total, num_threads, pre)
            return 0
        if self._gate_partials is None or self._gate_partials.shape[0] < nseg:
            self._gate_partials = np.zeros(max(nseg, 1), dtype=np.float64)
        gpart = self._gate_partials
        self._job(&g, 1)
        g.rkern = self._reduce_kernel(self._gate_kernel, 1)
        g.partials = &gpart[0]
        g.nout = 1
        g.stop = &stop
        g.raise_to = &stop
        # The job reads the gate's flag; one that stops early on its own flag cannot.
        if j.stop != NULL or (pre != NULL and pre.stop != NULL):
            raise ValueError("a gated pass cannot also stop early")
        j.stop = &stop
        if pre != NULL:
            pre.stop = &stop
        with nogil:
            _drive(j, &g, self.nunits, self.total, num_threads, pre)
        j.stop = NULL
        self._gate_state = GATE_TRIPPED if stop else GATE_PASSED
        return 0

    def distinct_active_steps(self):
        return sorted({int(self.steps[t]) for t in range(self.ntensors) if self.active[t]})

    def set_scalars(self, tuple row, int64_t step=-1, Py_ssize_t tensor=-1):
        """Copy row into hp for active tensors (only those at `step` when step >= 0, only
        tensor number `tensor` when tensor >= 0)."""
        cdef Py_ssize_t t, k, m = len(row)
        cdef double buf[64]
        if m != self.nscalars or m > 64:
            raise ValueError(f"kernel expects {self.nscalars} scalars, got {m}")
        if tensor >= self.ntensors:
            raise IndexError(f"tensor {tensor} out of range ({self.ntensors} tensors)")
        for k in range(m):
            buf[k] = row[k]
        for t in range(self.ntensors):
            if (self.active[t] and (step < 0 or self.steps[t] == step)
                    and (tensor < 0 or t == tensor)):
                for k in range(m):
                    self.hp[t, k] = buf[k]

    cdef inline bint _same_key(self, Py_ssize_t a, Py_ssize_t b) noexcept:
        # Bitwise equality of the scalar state, so -0.0/0.0 and NaNs are never merged.
        return (self.steps[a] == self.steps[b] and
                memcmp(&self.sstate[a, 0], &self.sstate[b, 0],
                       <size_t>self.nsstate * sizeof(double)) == 0)

    def group_active(self):
        """Group the active tensors by (step, scalar state row). Returns the distinct keys,
        each a tuple (step, s_0, s_1, ...) of an int and Python floats, and remembers each
        tensor's group for set_group(). Usually every tensor shares one key."""
        cdef Py_ssize_t t, r, k, last = -1, nk = 0
        for t in range(self.ntensors):
            if not self.active[t]:
                self.key_of[t] = -1
                continue
            if last >= 0 and self._same_key(t, self.key_rep[last]):
                k = last
            else:
                k = -1
                for r in range(nk):
                    if self._same_key(t, self.key_rep[r]):
                        k = r
                        break
                if k < 0:
                    self.key_rep[nk] = t
                    k = nk
                    nk += 1
            self.key_of[t] = k
            last = k
        return [(int(self.steps[self.key_rep[r]]),)
                + tuple(self.sstate_array[self.key_rep[r], :self.nsstate].tolist())
                for r in range(nk)]

    def set_group(self, Py_ssize_t k, tuple row, tuple new_state=()):
        """For the tensors of key k (from the last group_active()): copy row into hp and
        new_state into the scalar state. Keys are fixed first, so writing the new state of
        one group never moves a tensor into another."""
        cdef Py_ssize_t t, j, m = len(row)
        cdef double buf[64]
        cdef double nxt[16]
        if m != self.nscalars or m > 64:
            raise ValueError(f"kernel expects {self.nscalars} scalars, got {m}")
        if len(new_state) != self.nsstate or self.nsstate > 16:
            raise ValueError(f"expected {self.nsstate} scalar state values, got "
                             f"{len(new_state)}")
        for j in range(m):
            buf[j] = row[j]
        for j in range(self.nsstate):
            nxt[j] = new_state[j]
        for t in range(self.ntensors):
            if self.key_of[t] == k:
                for j in range(m):
                    self.hp[t, j] = buf[j]
                for j in range(self.nsstate):
                    self.sstate[t, j] = nxt[j]

    def segments(self):
        """The unit table as arrays (copies): (tensor, start, length) per segment, and each
        unit's first segment (plus the end)."""
        return (np.array(self.seg_t), np.array(self.seg_start), np.array(self.seg_len),
                np.array(self.unit_begin))

    @property
    def storages(self):
        """The (param, grad, state) storage names of the kernels this plan runs."""
        return (STORAGE_NAMES[self.st_param], STORAGE_NAMES[self.st_grad],
                STORAGE_NAMES[self.st_state])

    def alias_grads(self):
        """Point the grad column at the params and make every tensor active: for passes
        that read the arrays a plan was built over through the grad column (fusedoptim.quant's
        quantize). Nothing is checked: the caller owns the arrays and writes none of them
        through columns 0 and 1."""
        cdef Py_ssize_t t
        for t in range(self.ntensors):
            self.ptrs[t, 1] = self.ptrs[t, 0]
            self.active[t] = 1
        self.st_grad = self.st_param
        self.nactive = self.ntensors

    def activate_ready(self):
        """Make active exactly the tensors that have their state (ready), with no grad bound
        (column 1 null): for a pass over the params and state that reads no grad
        (Schedule-Free's train()/eval() swap). Returns how many are active. The next bind()
        sets the flags and grads anew."""
        cdef Py_ssize_t t
        self.nactive = 0
        for t in range(self.ntensors):
            self.ptrs[t, 1] = 0
            self.active[t] = self.ready[t]
            self.nactive += self.ready[t]
        self._grads = None
        return self.nactive

    def rebase(self, list params):
        """Point column 0 at `params`: one C-contiguous, aligned, native-order array per
        tensor, of the plan's dtype and of that tensor's size, so the work units stay valid.
        For a gather kernel whose column 0 is a per-step input (SparseAdam's gradient
        values): its plan then outlives a step. The new arrays are read through column 0;
        the caller has checked that nothing the kernel writes overlaps them. A rejected call
        changes nothing."""
        cdef Py_ssize_t t
        cdef object a
        if len(params) != self.ntensors:
            raise ValueError(f"expected {self.ntensors} arrays, got {len(params)}")
        for t in range(self.ntensors):
            a = params[t]
            if not (cnp.PyArray_Check(a)
                    and cnp.PyArray_TYPE(<cnp.ndarray>a) == self.typenum
                    and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a)
                    and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
                    and cnp.PyArray_ISALIGNED(<cnp.ndarray>a)
                    and cnp.PyArray_SIZE(<cnp.ndarray>a)
                    == cnp.PyArray_SIZE(<cnp.ndarray>self.params[t])):
                raise ValueError(f"rebase: array {t} must be a C-contiguous aligned array of "
                                 f"the plan's dtype and {(<object>self.params[t]).size} "
                                 f"elements")
        for t in range(self.ntensors):
            self.ptrs[t, 0] = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>params[t])
        self.params = list(params)
        self._written_indexed = False

    def column(self, Py_ssize_t b):
        """The arrays of buffer column `b`, one per tensor: 0 the params, 1 the grads bound
        last (None for a tensor skipped, and before any bind), 2.. the state buffers (None
        where absent). For a step that runs passes over a second plan of the same arrays
        (Muon's work plan); the lists are new, the arrays the plan's own."""
        cdef Py_ssize_t t
        if b < 0 or b >= self.nbufs:
            raise ValueError(f"column {b} out of range ({self.nbufs} buffer columns)")
        if b == 0:
            return list(self.params)
        if b == 1:
            if self._grads is None:
                return [None] * self.ntensors
            return [self._grads[t] if self.active[t] else None for t in range(self.ntensors)]
        return [None if self.state[t] is None else self.state[t][b - 2]
                for t in range(self.ntensors)]

    def unit_sizes(self):
        """Elements in each work unit, in order: the driver hands whole units to threads."""
        cdef Py_ssize_t u, s
        out = np.zeros(self.nunits, dtype=np.intp)
        cdef Py_ssize_t[::1] o = out
        for u in range(self.nunits):
            for s in range(self.unit_begin[u], self.unit_begin[u + 1]):
                o[u] += self.seg_len[s]
        return out

    cdef inline void _job(self, Job* j, Py_ssize_t column) noexcept:
        j.kern = NULL
        j.rkern = NULL
        j.ptrs = <char**>&self.ptrs[0, 0]
        j.nbufs = self._stride
        j.col = column
        j.hp = &self.hp[0, 0]
        j.nscal = self.nscalars
        j.active = &self.active[0]
        j.seg_t = &self.seg_t[0]
        j.seg_start = &self.seg_start[0]
        j.seg_len = &self.seg_len[0]
        j.unit_begin = &self.unit_begin[0]
        j.partials = NULL
        j.nout = 0
        j.stop = NULL
        j.raise_to = NULL

    cdef int _check_modes(self, str kind, int kid, uint64_t mask, int col) except -1:
        """Refuse to run a kernel on an active tensor whose hp mode column holds a mode the
        kernel does not implement. About a nanosecond per tensor; nothing is written first."""
        cdef Py_ssize_t t
        cdef double m
        if mask == 0:
            return 0
        if col >= self.nscalars:
            raise ValueError(f"fusedoptim: kernel {_NAMES[kind, kid]!r} reads its mode from "
                             f"scalar {col}, but this plan has {self.nscalars} scalars")
        for t in range(self.ntensors):
            if self.active[t]:
                m = self.hp[t, col]
                if not (0.0 <= m < 64.0 and m == <double>(<int>m)
                        and (mask >> (<int>m)) & 1):
                    name = _NAMES[kind, kid]
                    raise ValueError(f"fusedoptim: kernel {name!r} has no mode {m!r} (tensor "
                                     f"{t}); its modes are {MODES[name]}")
        return 0

    def run(self, int kernel_id, int num_threads=0):
        """Run a registered kernel over every active tensor, without the GIL.

        On an int4+rank1 plan, a kernel that writes rank-1 normalized buffers runs in two
        phases of one parallel region: its scan kernel (the new values' marginal maxima,
        max-accumulated into each tensor's fresh maxima), then the kernel (decode with the
        old maxima, encode with the fresh ones); then, unless the gate vetoed the pass, each
        active tensor's fresh maxima become its old ones and fresh is zeroed (rank1.h)."""
        cdef Job j, scan
        cdef int sid
        cdef chunk_kernel skern = NULL
        if kernel_id < 0 or kernel_id >= _n_kernels:
            raise ValueError(f"unknown kernel id {kernel_id}")
        cdef chunk_kernel kern = _chunk_table[kernel_id][self.st_param][self.st_grad][self.st_state]
        if kern == NULL:
            raise TypeError(_unregistered("chunk", kernel_id, self.st_param, self.st_grad,
                                          self.st_state))
        self._check_modes("chunk", kernel_id, _chunk_modes[kernel_id], _chunk_mode_col[kernel_id])
        if self.st_state == ST_Q4R1 and _chunk_scan[kernel_id]:
            sid = _chunk_scan[kernel_id] - 1
            skern = _chunk_table[sid][self.st_param][self.st_grad][self.st_state]
            if skern == NULL:
                raise TypeError(_unregistered("chunk", sid, self.st_param, self.st_grad,
                                              self.st_state))
        if num_threads <= 0:
            num_threads = fo_max_threads()
        if self.total == 0:
            return
        self._job(&j, 0)
        j.kern = kern
        if skern == NULL:
            self._drive_gated(&j, num_threads)
            return
        self._job(&scan, 0)
        scan.kern = skern
        self._drive_gated(&j, num_threads, &scan)
        if self._gate_state != GATE_TRIPPED:
            with nogil:
                _roll_rank1(<char**>&self.ptrs[0, 0], self._stride, &self.active[0],
                            self.ntensors, _chunk_r1cols[kernel_id])

    cdef reduce_kernel _reduce_kernel(self, int reduce_id, Py_ssize_t column=0) except NULL:
        # Over the grad column alone (the gate, the gradient utilities' views), the grads'
        # storage is every role's; otherwise the plan's (param, grad, state) key.
        cdef int sp = self.st_grad if column == 1 else self.st_param
        cdef int ss = self.st_grad if column == 1 else self.st_state
        cdef reduce_kernel kern = _reduce_table[reduce_id][sp][self.st_grad][ss]
        if kern == NULL:
            raise TypeError(_unregistered("reduce", reduce_id, sp, self.st_grad, ss))
        return kern

    def reduce(self, int reduce_id, Py_ssize_t column=0, bint stop_early=False,
               int num_threads=0):
        """Run a registered reduce kernel over every active tensor, without the GIL.

        The kernel sees buffer column `column` as its buffer 0 (0: the params, 1: the grads).
        Returns (per_tensor, totals): a float64 array (ntensors x nout) of per-tensor results
        (0 for inactive tensors) and a tuple of nout floats over all tensors. Both are folded
        from per-segment partials in segment order (tensor by tensor, front to back), so they
        do not depend on the thread count. With `stop_early`, a kernel's nonzero return skips
        the units not yet started; the totals are then only meaningful as far as the kernel
        defines (all_finite's "found one" stays exact, counts would not).
        """
        cdef Job j
        cdef int stop = 0
        cdef Py_ssize_t nseg = self.seg_t.shape[0], nout, s, t, k
        cdef double a, b
        if reduce_id < 0 or reduce_id >= _n_rkernels:
            raise ValueError(f"unknown reduce kernel id {reduce_id}")
        cdef reduce_kernel kern = self._reduce_kernel(reduce_id, column)
        self._check_modes("reduce", reduce_id, _reduce_modes[reduce_id],
                          _reduce_mode_col[reduce_id])
        if column < 0 or column >= self.nbufs:
            raise ValueError(f"column {column} out of range ({self.nbufs} buffer columns)")
        if num_threads <= 0:
            num_threads = fo_max_threads()
        nout = _rnout[reduce_id]
        if self._partials is None or self._partials.shape[0] < nseg * nout:
            self._partials = np.zeros(max(nseg * MAX_OUTPUTS, 1), dtype=np.float64)
        cdef double[::1] part = self._partials
        # 0 is the identity of every output: sums, and maxima of values that are >= 0.
        part[:nseg * nout] = 0.0
        per_tensor = np.zeros((self.ntensors, nout), dtype=np.float64)
        cdef double[:, ::1] pt = per_tensor
        cdef double tot[MAX_OUTPUTS]
        cdef const int* comb = &_rcombine[reduce_id][0]
        if self.total > 0:
            self._job(&j, column)
            j.rkern = kern
            j.partials = &part[0]
            j.nout = nout
            j.stop = &stop if stop_early else NULL
            j.raise_to = j.stop
            self._drive_gated(&j, num_threads)
        self._last_nout = nout
        # The fixed-order fold: segments into their tensor, then tensors into the total.
        for k in range(nout):
            tot[k] = 0.0
        for s in range(nseg):
            t = self.seg_t[s]
            for k in range(nout):
                pt[t, k] = _combine(comb[k], pt[t, k], part[s * nout + k])
        for t in range(self.ntensors):
            for k in range(nout):
                tot[k] = _combine(comb[k], tot[k], pt[t, k])
        return per_tensor, tuple([tot[k] for k in range(nout)])


    def partials(self):
        """The per-segment partial results of the last reduce(): a float64 copy of shape
        (segments, outputs), in the order of segments(). For a caller that folds the
        segments of several plans in one fixed order: fusedoptim.distributed, where each
        rank's plan holds a run of the whole group's segments, and folding every rank's runs
        in segment order gives the single-process result bitwise."""
        if self._last_nout <= 0:
            raise ValueError("partials() needs a reduce() on this plan first")
        nseg = self.seg_t.shape[0]
        return np.array(self._partials[:nseg * self._last_nout]).reshape(
            nseg, self._last_nout)

    def tile_shape(self):
        """(rows, cols): the lengths of the row and column results of reduce_tiles, over the
        tensors of two or more dimensions in order (B * R and B * C each, for a tensor of
        B = prod(shape[:-2]) matrices of R x C)."""
        if self._tiles is None:
            self._tiles = _TileTable(self.params)
        return self._tiles.nrows, self._tiles.ncols

    def reduce_tiles(self, int tile_id, double[::1] rows, double[::1] cols, int num_threads=0):
        """Run a registered tile kernel over every active tensor of two or more dimensions,
        without the GIL: per-row and per-column results over its last two dimensions.

        `rows` and `cols` (float64, of the lengths tile_shape() gives) receive each such
        tensor's row results (row i of matrix b at its offset + b * R + i) and column results
        (b * C + j); entries of inactive tensors are left as they were. Returns (per_tensor,
        totals) of the kernel's scalar outputs, as reduce() does. Every result is folded from
        per-tile partials in a fixed block order (see _TileTable), so it is bitwise the same
        for any thread count. Tensors of fewer than two dimensions are not visited.
        """
        cdef TileJob j
        cdef _TileTable tb
        cdef Py_ssize_t nout, t, k, nthreads
        if tile_id < 0 or tile_id >= _n_tkernels:
            raise ValueError(f"unknown tile kernel id {tile_id}")
        cdef tile_kernel kern = _tile_table[tile_id][self.st_param][self.st_grad][self.st_state]
        if kern == NULL:
            raise TypeError(_unregistered("tile", tile_id, self.st_param, self.st_grad,
                                          self.st_state))
        if self._gate_state != GATE_OFF:
            raise ValueError("reduce_tiles cannot run under an armed gate")
        if self._tiles is None:
            self._tiles = _TileTable(self.params)
        tb = self._tiles
        if rows.shape[0] != tb.nrows or cols.shape[0] != tb.ncols:
            raise ValueError(f"reduce_tiles needs rows of {tb.nrows} and cols of {tb.ncols} "
                             f"elements, got {rows.shape[0]} and {cols.shape[0]}")
        if num_threads <= 0:
            num_threads = fo_max_threads()
        nout = _tnout[tile_id]
        per_tensor = np.zeros((self.ntensors, nout), dtype=np.float64)
        cdef double[:, ::1] pt = per_tensor
        cdef double dummy = 0.0
        cdef double* rp = &rows[0] if rows.shape[0] else &dummy
        cdef double* cp = &cols[0] if cols.shape[0] else &dummy
        if tb.ntiles:
            j.kern = kern
            j.ptrs = <char**>&self.ptrs[0, 0]
            j.nbufs = self._stride
            j.hp = &self.hp[0, 0]
            j.nscal = self.nscalars
            j.active = &self.active[0]
            j.tt = &tb.tt[0]
            j.tstart = &tb.tstart[0]
            j.tnr = &tb.tnr[0]
            j.tnc = &tb.tnc[0]
            j.tld = &tb.tld[0]
            j.trp = &tb.trp[0]
            j.tcp = &tb.tcp[0]
            j.unit_begin = &tb.unit_begin[0]
            j.rpart = &tb.rpart[0]
            j.cpart = &tb.cpart[0]
            j.partials = &tb.partials[0]
            j.nout = nout
            nthreads = num_threads
            if nthreads <= 1 or tb.nunits <= 1 or tb.total <= SERIAL_MAX:
                nthreads = 1
            elif nthreads > tb.nunits:
                nthreads = tb.nunits
            with nogil:
                fo_run_phases(_run_tiles, &j, 1, tb.nunits, <int>nthreads)
                tb.fold(&self.active[0], nout, rp, cp, &pt[0, 0] if self.ntensors else &dummy)
        tot = [0.0] * nout
        for t in range(self.ntensors):
            for k in range(nout):
                tot[k] = tot[k] + pt[t, k]
        return per_tensor, tuple(tot)


cdef inline double _combine(int op, double a, double b) noexcept nogil:
    if op == COMBINE_SUM:
        return a + b
    return a if (a > b or a != a) else b     # max; a NaN on either side wins

