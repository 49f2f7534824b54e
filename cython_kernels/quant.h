/* quant.h: the blockwise 8-bit and 4-bit codec of fusedoptim's quantized optimizer state.
 *
 * Header only, C99, static inline. One source for every ISA level: the AVX-512 and AVX2 paths
 * (chosen by the compiler's own __AVX512F__/__AVX2__ macros) and the portable scalar path give
 * bitwise the same codes, absmax and values. The NumPy twin is fusedoptim.reference's
 * quantize_blockwise / dequantize_blockwise, and the definition is the same:
 *
 *   absmax = max |x| over the block, in float32;
 *            NaN when the block holds a NaN or an Inf;
 *            0 when it is below FLT_MIN (2^-126): a subnormal absmax is flushed to zero.
 *   a block whose absmax is 0 or NaN gets the map's "zero code" everywhere (the code that the
 *   value 0 quantizes to: the index of the code nearest 0, ties to the lower index).
 *   otherwise, per element:
 *     y = x * (1.0f / absmax)           float32 reciprocal, then float32 product
 *     y = clamp(y, -1, 1)
 *     c = argmin_k |y - code[k]|        float32 differences, ties to the lower index
 *   decode: code[c] * absmax, in float32.
 *   4-bit codes: element 2j in the high nibble of byte j, element 2j+1 in its low nibble
 *   (bitsandbytes' order); an odd count leaves the last low nibble 0.
 *
 * The nearest code is found exactly, in O(1), with one table lookup per value. The table
 * (fo_qmap.ent) is indexed by the sign, the exponent clamped to 32 slots and the top 7 mantissa
 * bits of y: with 8 exponent bits that is the top 16 bits of y, so a bucket is the set of y
 * that share their top 16 bits (slot 0, |y| < 2^-31, is one bucket per sign). fo_qmap_init
 * refuses a map where the nearest code of some bucket is not b or b+1 for one b. The nearest
 * code (argmin of the float32 distances, ties to the lower index) is monotone in y, so within a
 * bucket it steps at most once, at some value of the low 16 bits L of y. Each entry holds that
 * step: the code at L = 0, the step (+1, -1 for a negative bucket, where |y| grows with L, or
 * 0), and the threshold t: code = code0 + (L >= t ? step : 0). init finds t by bisection over
 * the same float32 comparison |y - code[b+1]| < |y - code[b]|, so the result is the argmin
 * itself, not a midpoint approximation of it (a brute-force check over every float32 in
 * [-1, 1] agrees at every ISA level). Slot 0 must not step (init refuses a map where it does).
 *
 * The absmax is a max over the bit patterns of |x| as integers: for non-negative floats the
 * integer order is the float order, Inf is above every finite value and every NaN above Inf.
 * So one integer max (which vectorises at every level, with no NaN subtleties) gives the
 * absmax and tells a non-finite block apart.
 *
 * Compile without -ffast-math (NaN/Inf must keep their meaning) and with -ffp-contract=off
 * (no FMA contraction: the scalar and SIMD paths must round the same). Needs no FTZ/DAZ.
 */
#ifndef FUSEDOPTIM_QUANT_H
#define FUSEDOPTIM_QUANT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define FO_Q_AVX512 1
#elif defined(__AVX2__)
#define FO_Q_AVX2 1
#endif

#define FO_Q_MBITS 7                          /* mantissa bits in the table key */
#define FO_Q_NSLOT 32                         /* exponent slots per sign */
#define FO_Q_EXP0 96                          /* slot = biased exponent - FO_Q_EXP0; <= 0: slot 0 */
#define FO_Q_TABLE (2 * FO_Q_NSLOT << FO_Q_MBITS)   /* 8192 entries of 4 bytes: 32 KiB */

typedef struct fo_qmap {
    float code[257];          /* the sorted map; code[ncodes] repeats the last code */
    int ncodes;               /* 16 or 256 */
    uint8_t zero_code;        /* what an all-zero (or NaN) block stores */
    /* per bucket: bits 0-15 the threshold t on y's low 16 bits, 16-23 the code at L = 0,
     * 24-31 the step as int8 (+1, -1 or 0); see the top of the file */
    uint32_t ent[FO_Q_TABLE];
} fo_qmap;

static inline uint32_t fo_q__bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float fo_q__float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* argmin_k |y - code[k]| in float32, ties to the lower k: by brute force (init only). */
static inline int fo_q__argmin(const float* code, int ncodes, float y) {
    int best = 0;
    float bd = y - code[0];
    bd = bd < 0 ? -bd : bd;
    for (int k = 1; k < ncodes; k++) {
        float d = y - code[k];
        d = d < 0 ? -d : d;
        if (d < bd) { bd = d; best = k; }
    }
    return best;
}

/* Build the lookup table for a sorted map of 16 or 256 finite float32 codes.
 * Returns 0 on success, -1 for a bad count, -2 for a map that is not strictly ascending and
 * finite, -3 for a map whose codes are too close for the table (a bucket would hold two
 * decision boundaries; every map of fusedoptim.quant.dynamic_map builds). */
static inline int fo_qmap_init(fo_qmap* q, const float* code, int ncodes) {
    if (ncodes != 16 && ncodes != 256) return -1;
    for (int k = 0; k < ncodes; k++) {
        uint32_t u = fo_q__bits(code[k]);
        if ((u & 0x7f800000u) == 0x7f800000u) return -2;
        if (k && !(code[k - 1] < code[k])) return -2;
    }
    memcpy(q->code, code, (size_t)ncodes * sizeof(float));
    q->code[ncodes] = code[ncodes - 1];
    q->ncodes = ncodes;
    q->zero_code = (uint8_t)fo_q__argmin(code, ncodes, 0.0f);
    for (int key = 0; key < FO_Q_TABLE; key++) {
        uint32_t sign = (uint32_t)(key >> (FO_Q_MBITS + 5)) << 31;
        int slot = (key >> FO_Q_MBITS) & (FO_Q_NSLOT - 1);
        uint32_t m = (uint32_t)(key & ((1 << FO_Q_MBITS) - 1));
        uint32_t lo, hi;                      /* the bucket's magnitudes, as bits */
        if (slot == 0) {
            if (m) { q->ent[key] = 0; continue; }     /* never looked up */
            lo = 0; hi = ((uint32_t)(FO_Q_EXP0 + 1) << 23) - 1;
        } else {
            lo = ((uint32_t)(FO_Q_EXP0 + slot) << 23) | (m << (23 - FO_Q_MBITS));
            hi = lo | ((1u << (23 - FO_Q_MBITS)) - 1);
        }
        int a = fo_q__argmin(code, ncodes, fo_q__float(sign | lo));
        int b = fo_q__argmin(code, ncodes, fo_q__float(sign | hi));
        if ((a > b ? a - b : b - a) > 1) return -3;
        if (a == b) { q->ent[key] = (uint32_t)a << 16; continue; }
        if (slot == 0) return -3;             /* slot 0 spans many exponents: no L threshold */
        /* the smallest L whose nearest code is b: where |y - code[j+1]| < |y - code[j]|
         * turns (true for L >= t when b = j + 1, false when b = j) */
        int j = a < b ? a : b;
        uint32_t l = 1, h = 0xffff;           /* code(L=0) = a, code(0xffff) = b */
        while (l < h) {
            uint32_t mid = l + (h - l) / 2;
            float y = fo_q__float(sign | lo | mid);
            float d0 = y - code[j], d1 = y - code[j + 1];
            d0 = d0 < 0 ? -d0 : d0;
            d1 = d1 < 0 ? -d1 : d1;
            if (j + (d1 < d0) == b) h = mid; else l = mid + 1;
        }
        q->ent[key] = l | (uint32_t)a << 16 | (uint32_t)(uint8_t)(int8_t)(b - a) << 24;
    }
    return 0;
}

/* ---- absmax ---------------------------------------------------------------------------- */

/* max over the block of the bits of |x| (see the top of the file). Vectorises at every level:
 * values are <= 0x7fffffff, so a signed max is the unsigned one. */
static inline uint32_t fo_q__absmax_bits(const float* x, ptrdiff_t n) {
    int32_t mb = 0;
#if defined(_OPENMP)
#pragma omp simd reduction(max:mb)
#endif
    for (ptrdiff_t i = 0; i < n; i++) {
        int32_t u;
        memcpy(&u, x + i, 4);
        u &= 0x7fffffff;
        mb = u > mb ? u : mb;
    }
    return (uint32_t)mb;
}

/* The absmax the codec stores for these bits: NaN if non-finite, 0 if below FLT_MIN. */
static inline float fo_q__absmax_of(uint32_t mb) {
    if (mb >= 0x7f800000u) return fo_q__float(0x7fc00000u);
    if (mb < 0x00800000u) return 0.0f;
    return fo_q__float(mb);
}

/* ---- nearest code of n scaled values ----------------------------------------------------- */

static inline int fo_q__key(float y) {
    uint32_t u = fo_q__bits(y);
    int s = (int)(u >> 31);
    int t = (int)((u >> 23) & 0xff) - FO_Q_EXP0;
    int m = (int)((u >> (23 - FO_Q_MBITS)) & ((1 << FO_Q_MBITS) - 1));
    int pos = t > 0;
    return (s << (FO_Q_MBITS + 5)) | (pos ? (t << FO_Q_MBITS) | m : 0);
}

static inline uint8_t fo_q__nearest1(const fo_qmap* q, float xi, float inv) {
    float y = xi * inv;
    y = y < -1.0f ? -1.0f : y;
    y = y > 1.0f ? 1.0f : y;
    uint32_t e = q->ent[fo_q__key(y)];
    uint32_t step = (fo_q__bits(y) & 0xffffu) >= (e & 0xffffu) ? e >> 24 : 0;
    return (uint8_t)((e >> 16) + step);
}

/* codes[i] = nearest code of clamp(x[i] * inv, -1, 1), for any n. */
static inline void fo_q__encode_scaled(const float* x, ptrdiff_t n, float inv, const fo_qmap* q,
                                       uint8_t* codes) {
    ptrdiff_t i = 0;
#if defined(FO_Q_AVX512)
    const __m512 vinv = _mm512_set1_ps(inv), one = _mm512_set1_ps(1.0f), mone = _mm512_set1_ps(-1.0f);
    const __m512i low = _mm512_set1_epi32(0xffff), mag = _mm512_set1_epi32(0x7fff);
    const __m512i k0 = _mm512_set1_epi32(FO_Q_EXP0 << FO_Q_MBITS);
    const __m512i kmax0 = _mm512_set1_epi32((1 << FO_Q_MBITS) - 1);
    for (; i + 16 <= n; i += 16) {
        __m512 y = _mm512_mul_ps(_mm512_loadu_ps(x + i), vinv);
        y = _mm512_min_ps(_mm512_max_ps(y, mone), one);
        __m512i u = _mm512_castps_si512(y);
        /* key = sign << 12 | (exponent - EXP0) << 7 | top 7 mantissa bits, or sign << 12 in
         * slot 0: the same key as fo_q__key */
        __m512i s = _mm512_slli_epi32(_mm512_srli_epi32(u, 31), FO_Q_MBITS + 5);
        __m512i k = _mm512_sub_epi32(_mm512_and_si512(_mm512_srli_epi32(u, 16), mag), k0);
        __mmask16 pos = _mm512_cmpgt_epi32_mask(k, kmax0);
        __m512i key = _mm512_mask_or_epi32(s, pos, s, k);
        __m512i e = _mm512_i32gather_epi32(key, (const void*)q->ent, 4);
        __mmask16 ge = _mm512_cmpge_epi32_mask(_mm512_and_si512(u, low), _mm512_and_si512(e, low));
        __m512i c = _mm512_srli_epi32(e, 16);
        __m512i r = _mm512_mask_add_epi32(c, ge, c, _mm512_srai_epi32(e, 24));
        _mm_storeu_si128((__m128i*)(codes + i), _mm512_cvtepi32_epi8(r));
    }
#elif defined(FO_Q_AVX2)
    const __m256 vinv = _mm256_set1_ps(inv), one = _mm256_set1_ps(1.0f), mone = _mm256_set1_ps(-1.0f);
    const __m256i low = _mm256_set1_epi32(0xffff), mag = _mm256_set1_epi32(0x7fff);
    const __m256i k0 = _mm256_set1_epi32(FO_Q_EXP0 << FO_Q_MBITS);
    const __m256i kmax0 = _mm256_set1_epi32((1 << FO_Q_MBITS) - 1);
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    for (; i + 8 <= n; i += 8) {
        __m256 y = _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv);
        y = _mm256_min_ps(_mm256_max_ps(y, mone), one);
        __m256i u = _mm256_castps_si256(y);
        __m256i s = _mm256_slli_epi32(_mm256_srli_epi32(u, 31), FO_Q_MBITS + 5);
        __m256i k = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(u, 16), mag), k0);
        __m256i pos = _mm256_cmpgt_epi32(k, kmax0);
        __m256i key = _mm256_or_si256(s, _mm256_and_si256(pos, k));
        __m256i e = _mm256_i32gather_epi32((const int*)(const void*)q->ent, key, 4);
        /* lt: L < t (both below 2^16: the signed compare is the unsigned one) */
        __m256i lt = _mm256_cmpgt_epi32(_mm256_and_si256(e, low), _mm256_and_si256(u, low));
        __m256i r = _mm256_add_epi32(_mm256_srli_epi32(e, 16),
                                     _mm256_andnot_si256(lt, _mm256_srai_epi32(e, 24)));
        r = _mm256_shuffle_epi8(r, pick);
        __m128i r8 = _mm_unpacklo_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
        _mm_storel_epi64((__m128i*)(codes + i), r8);
    }
#endif
    for (; i < n; i++) codes[i] = fo_q__nearest1(q, x[i], inv);
}

/* The absmax of x[0:n] and, for a block that is not 0/NaN, its codes; else the zero code. */
static inline float fo_q__encode_idx(const float* x, ptrdiff_t n, const fo_qmap* q, uint8_t* idx) {
    uint32_t mb = fo_q__absmax_bits(x, n);
    float absmax = fo_q__absmax_of(mb);
    if (!(absmax > 0.0f)) {                   /* 0 or NaN */
        memset(idx, q->zero_code, (size_t)n);
        return absmax;
    }
    fo_q__encode_scaled(x, n, 1.0f / absmax, q, idx);
    return absmax;
}

/* ---- 8-bit ------------------------------------------------------------------------------- */

/* Quantize one block of n elements (any n; the state uses 256): codes[0:n], returns absmax. */
static inline float fo_q8_encode(const float* x, ptrdiff_t n, const fo_qmap* q, uint8_t* codes) {
    return fo_q__encode_idx(x, n, q, codes);
}

/* out[i] = code[codes[i]] * absmax, for one block of n elements. */
static inline void fo_q8_decode(const uint8_t* codes, float absmax, const fo_qmap* q, float* out,
                                ptrdiff_t n) {
    ptrdiff_t i = 0;
#if defined(FO_Q_AVX512)
    /* The 256 codes in 16 registers: 8 two-register permutes (index bits 0-4) and a select
     * by bits 5, 6, 7, instead of a gather (slow on the AMD cores this was measured on). */
    const __m512 va = _mm512_set1_ps(absmax);
    if (n >= 64) {
        __m512 t[16];
        for (int k = 0; k < 16; k++) t[k] = _mm512_loadu_ps(q->code + 16 * k);
        const __m512i b5 = _mm512_set1_epi32(32), b6 = _mm512_set1_epi32(64),
                      b7 = _mm512_set1_epi32(128);
        for (; i + 16 <= n; i += 16) {
            __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(codes + i)));
            __m512 v0 = _mm512_permutex2var_ps(t[0], c, t[1]);
            __m512 v1 = _mm512_permutex2var_ps(t[2], c, t[3]);
            __m512 v2 = _mm512_permutex2var_ps(t[4], c, t[5]);
            __m512 v3 = _mm512_permutex2var_ps(t[6], c, t[7]);
            __m512 v4 = _mm512_permutex2var_ps(t[8], c, t[9]);
            __m512 v5 = _mm512_permutex2var_ps(t[10], c, t[11]);
            __m512 v6 = _mm512_permutex2var_ps(t[12], c, t[13]);
            __m512 v7 = _mm512_permutex2var_ps(t[14], c, t[15]);
            __mmask16 m5 = _mm512_test_epi32_mask(c, b5), m6 = _mm512_test_epi32_mask(c, b6),
                      m7 = _mm512_test_epi32_mask(c, b7);
            v0 = _mm512_mask_mov_ps(v0, m5, v1);
            v2 = _mm512_mask_mov_ps(v2, m5, v3);
            v4 = _mm512_mask_mov_ps(v4, m5, v5);
            v6 = _mm512_mask_mov_ps(v6, m5, v7);
            v0 = _mm512_mask_mov_ps(v0, m6, v2);
            v4 = _mm512_mask_mov_ps(v4, m6, v6);
            v0 = _mm512_mask_mov_ps(v0, m7, v4);
            _mm512_storeu_ps(out + i, _mm512_mul_ps(v0, va));
        }
    }
#elif defined(FO_Q_AVX2)
    const __m256 va = _mm256_set1_ps(absmax);
    for (; i + 8 <= n; i += 8) {
        __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(codes + i)));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_i32gather_ps(q->code, c, 4), va));
    }
#endif
    for (; i < n; i++) out[i] = q->code[codes[i]] * absmax;
}

/* ---- 4-bit ------------------------------------------------------------------------------- */

#define FO_Q4_CHUNK 256                       /* elements unpacked/packed per pass (even) */

/* out[i] = code[nibble i] * absmax, for one block of n elements (any n; the state uses 128);
 * codes points at the block's first byte (a block starts at an even element). */
static inline void fo_q4_decode(const uint8_t* codes, float absmax, const fo_qmap* q, float* out,
                                ptrdiff_t n) {
    uint8_t idx[FO_Q4_CHUNK];
    for (ptrdiff_t s = 0; s < n; s += FO_Q4_CHUNK) {
        ptrdiff_t len = n - s < FO_Q4_CHUNK ? n - s : FO_Q4_CHUNK;
        ptrdiff_t nb = (len + 1) / 2;
        const uint8_t* src = codes + s / 2;
        for (ptrdiff_t j = 0; j < nb; j++) {
            idx[2 * j] = (uint8_t)(src[j] >> 4);
            idx[2 * j + 1] = (uint8_t)(src[j] & 15);
        }
        float* dst = out + s;
        ptrdiff_t i = 0;
#if defined(FO_Q_AVX512)
        const __m512 va = _mm512_set1_ps(absmax);
        const __m512 map = _mm512_loadu_ps(q->code);
        for (; i + 16 <= len; i += 16) {
            __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(idx + i)));
            _mm512_storeu_ps(dst + i, _mm512_mul_ps(_mm512_permutexvar_ps(c, map), va));
        }
#elif defined(FO_Q_AVX2)
        const __m256 va = _mm256_set1_ps(absmax);
        const __m256 lo = _mm256_loadu_ps(q->code), hi = _mm256_loadu_ps(q->code + 8);
        const __m256i seven = _mm256_set1_epi32(7);
        for (; i + 8 <= len; i += 8) {
            __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(idx + i)));
            __m256 vl = _mm256_permutevar8x32_ps(lo, c);
            __m256 vh = _mm256_permutevar8x32_ps(hi, c);
            __m256 sel = _mm256_castsi256_ps(_mm256_cmpgt_epi32(c, seven));
            _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_blendv_ps(vl, vh, sel), va));
        }
#endif
        for (; i < len; i++) dst[i] = q->code[idx[i]] * absmax;
    }
}

/* Quantize one block of n elements to packed 4-bit codes (ceil(n/2) bytes), returns absmax. */
static inline float fo_q4_encode(const float* x, ptrdiff_t n, const fo_qmap* q, uint8_t* codes) {
    uint8_t idx[FO_Q4_CHUNK];
    uint32_t mb = fo_q__absmax_bits(x, n);
    float absmax = fo_q__absmax_of(mb);
    int valid = absmax > 0.0f;
    float inv = valid ? 1.0f / absmax : 0.0f;
    for (ptrdiff_t s = 0; s < n; s += FO_Q4_CHUNK) {
        ptrdiff_t len = n - s < FO_Q4_CHUNK ? n - s : FO_Q4_CHUNK;
        if (valid)
            fo_q__encode_scaled(x + s, len, inv, q, idx);
        else
            memset(idx, q->zero_code, (size_t)len);
        if (len & 1) idx[len] = 0;            /* the padding nibble */
        uint8_t* dst = codes + s / 2;
        ptrdiff_t nb = (len + 1) / 2;
        for (ptrdiff_t j = 0; j < nb; j++)
            dst[j] = (uint8_t)((idx[2 * j] << 4) | idx[2 * j + 1]);
    }
    return absmax;
}

/* ---- tiles of the generated glue (kernelgen.py) ---------------------------------------------
 * A tile is at most 256 elements starting at element `at` of its tensor, a multiple of the
 * block (the driver cuts tensors at multiples of 256). A tensor without an absmax buffer keeps
 * float32 state: tile_in then returns the state itself (the body works on it in place) and
 * tile_out does nothing. Out of line: every row's glue calls them once per tile. */
#if defined(_MSC_VER)
#define FO_Q_TILE_FN static __declspec(noinline)
#else
#define FO_Q_TILE_FN static __attribute__((noinline))
#endif

FO_Q_TILE_FN float* fo_q8_tile_in(char* codes, char* absmax, ptrdiff_t at, ptrdiff_t m,
                                  const fo_qmap* q, float* tile) {
    if (absmax == NULL) return (float*)codes + at;
    fo_q8_decode((const uint8_t*)codes + at, ((const float*)absmax)[at >> 8], q, tile, m);
    return tile;
}

FO_Q_TILE_FN void fo_q8_tile_out(char* codes, char* absmax, ptrdiff_t at, ptrdiff_t m,
                                 const fo_qmap* q, const float* tile) {
    if (absmax != NULL)
        ((float*)absmax)[at >> 8] = fo_q8_encode(tile, m, q, (uint8_t*)codes + at);
}

/* 4-bit blocks are 128 elements: a tile holds up to two. Codes pack two to a byte. */
FO_Q_TILE_FN float* fo_q4_tile_in(char* codes, char* absmax, ptrdiff_t at, ptrdiff_t m,
                                  const fo_qmap* q, float* tile) {
    if (absmax == NULL) return (float*)codes + at;
    for (ptrdiff_t h = 0; h < m; h += 128) {
        ptrdiff_t k = m - h < 128 ? m - h : 128;
        fo_q4_decode((const uint8_t*)codes + ((at + h) >> 1), ((const float*)absmax)[(at + h) >> 7],
                     q, tile + h, k);
    }
    return tile;
}

FO_Q_TILE_FN void fo_q4_tile_out(char* codes, char* absmax, ptrdiff_t at, ptrdiff_t m,
                                 const fo_qmap* q, const float* tile) {
    if (absmax == NULL) return;
    for (ptrdiff_t h = 0; h < m; h += 128) {
        ptrdiff_t k = m - h < 128 ? m - h : 128;
        ((float*)absmax)[(at + h) >> 7] = fo_q4_encode(tile + h, k, q,
                                                       (uint8_t*)codes + ((at + h) >> 1));
    }
}

#endif /* FUSEDOPTIM_QUANT_H */
