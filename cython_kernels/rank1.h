/* rank1.h: rank-1 normalization of non-negative 4-bit optimizer state (Li et al. 2023,
 * "Memory Efficient Optimizers with 4-bit States", section 4.2), fusedoptim's "int4+rank1" state
 * storage for the "state+" buffers of a kernel (kernelgen.py; the signed ones stay blockwise).
 *
 * A tensor of effective shape (d_0, ..., d_{k-1}) (its shape without the dimensions of size 1,
 * 2 <= k <= FO_R1_MAXDIM) keeps, besides its packed 4-bit codes, the maximum of |v| along
 * every dimension: M_a[i] = max |v[..., i, ...]| over every element whose index in dimension a
 * is i. That is sum(d_a) float32 values (for an (m, n) matrix: the m row maxima, then the n
 * column maxima). Element x's scale is the smallest of its marginal maxima,
 *
 *   s(x) = min_a M_a[i_a(x)]             (NaN if any of them is NaN)
 *
 * which is >= |v(x)| (each maximum is taken over a set holding x) and is exactly Li et al.'s
 * min over the dimensions' maxima. The map is the zero-free linear map code[c] = (c+1)/16:
 *
 *   encode: valid = s > 0 (not 0, not NaN); y = v / s (float32 division, so y <= 1);
 *           c = clamp(ceil(16 y - 1/2), 1, 16) - 1, or c = 0 where not valid
 *           (16 y is exact and so is 16 y - 1/2 where it matters: c is the nearest code, ties to
 *           the lower index, the float32 argmin of |y - code[c]| that quant.h defines; the
 *           differences are exact near every midpoint, by Sterbenz)
 *   decode: v = code[c] * s, in float32 ((c+1) * 0.0625 is code[c] exactly)
 *
 * The maxima are those of the values being encoded, so a step needs them before it writes a
 * code: the tensor's descriptor points at two sets, `old` (what the codes were written with)
 * and `fresh` (the maxima of the updated values, as uint32 bit patterns). A scan pass runs the
 * kernel's body on copies and max-accumulates |v| into `fresh` (fo_r1_scan: integer max on the
 * bits of |v|: for non-negative floats the integer order is the float order, +Inf above every
 * finite value and every NaN above +Inf, so a NaN wins, exactly and in any order: the result
 * does not depend on the thread count). The update pass decodes with `old` and encodes with
 * `fresh`; then the driver rolls fresh into old (an Inf or NaN maximum becomes NaN, as a
 * blockwise absmax does) and zeroes fresh (_driver.pyx, Plan.run). A maximum read for a scale
 * is taken through the same rule (Inf or NaN -> NaN).
 *
 * The descriptor is FO_R1_WORDS int64 words, filled by the Python layer (fusedoptim._layout):
 *   [0] k, the effective number of dimensions (0: this tensor's buffer is blockwise int4,
 *       word 1 is its absmax array: a 1-D param in an int4+rank1 group)
 *   [1] address of old (float32, sum(d_a) values, dimension 0's first)
 *   [2] address of fresh (uint32, the same layout)
 *   [3 ..] d_0, ..., d_{k-1}
 * A NULL descriptor: the tensor keeps float32 state (below min_quantized_size).
 */
#ifndef FUSEDOPTIM_RANK1_H
#define FUSEDOPTIM_RANK1_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "quant.h"

#define FO_R1_MAXDIM 8
#define FO_R1_WORDS (3 + FO_R1_MAXDIM)

/* The bits of a maximum as the scale it stands for: Inf and NaN bits are NaN. */
static inline float fo_r1__scale_of(uint32_t u) {
    return u >= 0x7f800000u ? fo_q__float(0x7fc00000u) : fo_q__float(u);
}

/* min(a, b), NaN if either is NaN. */
static inline float fo_r1__min(float a, float b) { return (a < b || a != a) ? a : b; }

static inline int fo_r1_active(const char* desc) {
    return desc != NULL && ((const int64_t*)desc)[0] >= 2;
}

/* Where row r (the flat index over every dimension but the last) finds its marginal maxima
 * in a set laid out as the descriptor says: the smallest of the leading dimensions' maxima
 * (as scales), or with `bits`, the addresses to max-accumulate into (pos[a], a < k - 1). */
static inline void fo_r1__row_pos(const int64_t* d, int64_t r, int64_t* pos) {
    int64_t k = d[0], off = 0;
    for (int64_t a = 0; a < k - 1; a++) off += d[3 + a];
    /* dimension a's index is r's digit in the mixed radix d_0 .. d_{k-2}, last fastest */
    for (int64_t a = k - 2; a >= 0; a--) {
        int64_t da = d[3 + a];
        off -= da;
        pos[a] = off + r % da;
        r /= da;
    }
}

static inline float fo_r1__row_scale_old(const int64_t* d, int64_t r) {
    const float* old = (const float*)(uintptr_t)d[1];
    int64_t pos[FO_R1_MAXDIM];
    fo_r1__row_pos(d, r, pos);
    float s = old[pos[0]];
    for (int64_t a = 1; a < d[0] - 1; a++) s = fo_r1__min(s, old[pos[a]]);
    return s;
}

static inline float fo_r1__row_scale_fresh(const int64_t* d, int64_t r) {
    const uint32_t* fresh = (const uint32_t*)(uintptr_t)d[2];
    int64_t pos[FO_R1_MAXDIM];
    fo_r1__row_pos(d, r, pos);
    float s = fo_r1__scale_of(fresh[pos[0]]);
    for (int64_t a = 1; a < d[0] - 1; a++) s = fo_r1__min(s, fo_r1__scale_of(fresh[pos[a]]));
    return s;
}

/* Offset of the last dimension's maxima in a set. */
static inline int64_t fo_r1__col_off(const int64_t* d) {
    int64_t off = 0;
    for (int64_t a = 0; a < d[0] - 1; a++) off += d[3 + a];
    return off;
}

/* ---- decode and encode one run of a row ----------------------------------------------------
 * Written so that gcc vectorizes them at every level (branch-free selects; a NaN row scale,
 * which makes the whole run NaN or invalid, is taken apart first). */

static inline void fo_r1__decode_run(const uint8_t* idx, const float* col, float rs, float* out,
                                     ptrdiff_t len) {
    if (rs != rs) {                           /* a NaN row: every scale is NaN */
        for (ptrdiff_t k = 0; k < len; k++) out[k] = ((float)(idx[k] + 1) * 0.0625f) * rs;
        return;
    }
    for (ptrdiff_t k = 0; k < len; k++) {
        float c = col[k];
        float s = rs < c ? rs : c;            /* min(rs, c), NaN when c is NaN */
        out[k] = ((float)(idx[k] + 1) * 0.0625f) * s;
    }
}

/* col: the fresh maxima's bits (below 2^31: bits of |v|); rs: the row's scale, not NaN. */
static inline void fo_r1__encode_run(const float* x, const uint32_t* col, float rs, uint8_t* idx,
                                     ptrdiff_t len) {
    for (ptrdiff_t k = 0; k < len; k++) {
        int32_t u = (int32_t)col[k];
        float cf;
        memcpy(&cf, &u, 4);
        float s = cf < rs ? cf : rs;
        float t = (x[k] / s) * 16.0f;
        float c = ceilf(t - 0.5f);
        c = c > 1.0f ? c : 1.0f;              /* (a NaN t gives 1: masked below anyway) */
        c = c < 16.0f ? c : 16.0f;
        /* valid: the column's maximum finite (an Inf or NaN one is a NaN scale) and s > 0 */
        int ok = (u < 0x7f800000) & (s > 0.0f);
        idx[k] = (uint8_t)(ok ? (int)c - 1 : 0);
    }
}

/* ---- tiles of the generated glue -------------------------------------------------------------
 * A tile is m <= 256 elements starting at element `at` (even: a multiple of the block) of its
 * tensor. Out of line, as quant.h's. */

FO_Q_TILE_FN float* fo_r1_tile_in(char* codes, char* desc, ptrdiff_t at, ptrdiff_t m,
                                  const fo_qmap* q, float* tile) {
    if (desc == NULL) return (float*)codes + at;
    const int64_t* d = (const int64_t*)desc;
    if (d[0] < 2) return fo_q4_tile_in(codes, (char*)(uintptr_t)d[1], at, m, q, tile);
    uint8_t idx[FO_Q4_CHUNK];
    const uint8_t* src = (const uint8_t*)codes + at / 2;
    ptrdiff_t nb = (m + 1) / 2;
    for (ptrdiff_t j = 0; j < nb; j++) {
        idx[2 * j] = (uint8_t)(src[j] >> 4);
        idx[2 * j + 1] = (uint8_t)(src[j] & 15);
    }
    const float* col = (const float*)(uintptr_t)d[1] + fo_r1__col_off(d);
    int64_t ncols = d[3 + d[0] - 1];
    int64_t r = at / ncols, j = at % ncols;
    for (ptrdiff_t k = 0; k < m; r++, j = 0) {
        ptrdiff_t len = ncols - j < m - k ? (ptrdiff_t)(ncols - j) : m - k;
        fo_r1__decode_run(idx + k, col + j, fo_r1__row_scale_old(d, r), tile + k, len);
        k += len;
    }
    return tile;
}

FO_Q_TILE_FN void fo_r1_tile_out(char* codes, char* desc, ptrdiff_t at, ptrdiff_t m,
                                 const fo_qmap* q, const float* tile) {
    if (desc == NULL) return;
    const int64_t* d = (const int64_t*)desc;
    if (d[0] < 2) {
        fo_q4_tile_out(codes, (char*)(uintptr_t)d[1], at, m, q, tile);
        return;
    }
    uint8_t idx[FO_Q4_CHUNK];
    const uint32_t* col = (const uint32_t*)(uintptr_t)d[2] + fo_r1__col_off(d);
    int64_t ncols = d[3 + d[0] - 1];
    int64_t r = at / ncols, j = at % ncols;
    for (ptrdiff_t k = 0; k < m; r++, j = 0) {
        ptrdiff_t len = ncols - j < m - k ? (ptrdiff_t)(ncols - j) : m - k;
        float rs = fo_r1__row_scale_fresh(d, r);
        if (rs != rs)
            memset(idx + k, 0, (size_t)len);  /* a NaN row scale: no element is valid */
        else
            fo_r1__encode_run(tile + k, col + j, rs, idx + k, len);
        k += len;
    }
    if (m & 1) idx[m] = 0;                    /* the padding nibble */
    uint8_t* dst = (uint8_t*)codes + at / 2;
    ptrdiff_t nb = (m + 1) / 2;
    for (ptrdiff_t b = 0; b < nb; b++) dst[b] = (uint8_t)((idx[2 * b] << 4) | idx[2 * b + 1]);
}

/* ---- the scan pass ----------------------------------------------------------------------------- */

/* *p = max(*p, v) on uint32 bits, atomically. A plain load first: once the maximum is reached
 * (after a few rows) nearly every call is one load and one compare. Relaxed order suffices:
 * the driver's barrier after the pass publishes the results. */
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
static inline uint32_t fo_r1__load(uint32_t* p) { return *(volatile uint32_t*)p; }
static inline void fo_r1__atomic_max(uint32_t* p, uint32_t v) {
    uint32_t cur = *(volatile uint32_t*)p;
    while (v > cur) {
        uint32_t seen = (uint32_t)_InterlockedCompareExchange((volatile long*)p, (long)v,
                                                              (long)cur);
        if (seen == cur) break;
        cur = seen;
    }
}
#else
static inline uint32_t fo_r1__load(uint32_t* p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void fo_r1__atomic_max(uint32_t* p, uint32_t v) {
    uint32_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (v > cur &&
           !__atomic_compare_exchange_n(p, &cur, v, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}
#endif

/* Whether some u[h] > max[h], h < w <= 16, where max[] may be raised by other threads
 * meanwhile. The SIMD levels read max[] with one plain vector load, which another thread's
 * compare-and-swap may race with: it is only a hint. A maximum only grows, and an aligned
 * 4-byte lane is read whole, so a lane reads some value the maximum had, never more than
 * it has now: "not above" stays true, and a stale "above" only costs a compare-and-swap
 * that finds nothing to do. (Bits of |v| are below 2^31: signed compares are unsigned.) */
static inline int fo_r1__any_above(const uint32_t* u, uint32_t* max, ptrdiff_t w) {
#if defined(FO_Q_AVX512)
    __mmask16 lanes = (__mmask16)((1u << w) - 1u);
    __m512i a = _mm512_maskz_loadu_epi32(lanes, u);
    __m512i b = _mm512_maskz_loadu_epi32(lanes, max);
    return _mm512_mask_cmpgt_epi32_mask(lanes, a, b) != 0;
#elif defined(FO_Q_AVX2)
    if (w == 16) {
        __m256i g0 = _mm256_cmpgt_epi32(_mm256_loadu_si256((const __m256i*)u),
                                        _mm256_loadu_si256((const __m256i*)max));
        __m256i g1 = _mm256_cmpgt_epi32(_mm256_loadu_si256((const __m256i*)(u + 8)),
                                        _mm256_loadu_si256((const __m256i*)(max + 8)));
        return !_mm256_testz_si256(_mm256_or_si256(g0, g1), _mm256_or_si256(g0, g1));
    }
#endif
    int any = 0;
    for (ptrdiff_t h = 0; h < w; h++) any |= u[h] > fo_r1__load(max + h);
    return any;
}

/* Max-accumulate |x| of one tile into the tensor's fresh maxima. */
FO_Q_TILE_FN void fo_r1_scan(const char* desc, ptrdiff_t at, ptrdiff_t m, const float* x) {
    if (!fo_r1_active(desc)) return;
    const int64_t* d = (const int64_t*)desc;
    uint32_t* fresh = (uint32_t*)(uintptr_t)d[2];
    uint32_t* col = fresh + fo_r1__col_off(d);
    int64_t ncols = d[3 + d[0] - 1];
    int64_t r = at / ncols, j = at % ncols;
    uint32_t u[FO_Q4_CHUNK];
    for (ptrdiff_t k = 0; k < m; k++) {
        uint32_t b;
        memcpy(&b, x + k, 4);
        u[k] = b & 0x7fffffffu;
    }
    for (ptrdiff_t k = 0; k < m; r++, j = 0) {
        ptrdiff_t len = ncols - j < m - k ? (ptrdiff_t)(ncols - j) : m - k;
        uint32_t rmax = fo_q__absmax_bits(x + k, len);
        int64_t pos[FO_R1_MAXDIM];
        fo_r1__row_pos(d, r, pos);
        for (int64_t a = 0; a < d[0] - 1; a++) fo_r1__atomic_max(fresh + pos[a], rmax);
        /* Columns: 16 at a time, one look at whether any value is larger than its column's
         * maximum so far; only then the compare-and-swaps. */
        for (ptrdiff_t e = 0; e < len; e += 16) {
            ptrdiff_t w = len - e < 16 ? len - e : 16;
            uint32_t* cp = col + j + e;
            const uint32_t* up = u + k + e;
            if (fo_r1__any_above(up, cp, w))
                for (ptrdiff_t h = 0; h < w; h++) fo_r1__atomic_max(cp + h, up[h]);
        }
        k += len;
    }
}

#endif /* FUSEDOPTIM_RANK1_H */
