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
 * The nearest code is found exactly, in O(1), by a table (fo_qmap.base) indexed by the sign,
 * the exponent clamped to 32 slots and the top 7 mantissa bits of y. Each entry is an index b
 * such that the nearest code of every y in that bucket is b or b+1 (fo_qmap_init refuses a
 * map where that does not hold). The two float32 distances |y - code[b]| and |y - code[b+1]|
 * are then compared exactly as argmin compares them (strictly less moves up: ties go to the
 * lower index), so the result is the argmin, not a midpoint approximation of it.
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
#define FO_Q_TABLE (2 * FO_Q_NSLOT << FO_Q_MBITS)   /* 8192 entries, one byte each */

typedef struct fo_qmap {
    float code[257];          /* the sorted map; code[ncodes] repeats the last code */
    int ncodes;               /* 16 or 256 */
    uint8_t zero_code;        /* what an all-zero (or NaN) block stores */
    uint8_t base[FO_Q_TABLE + 4];   /* +4: the SIMD paths gather 4 bytes at a byte offset */
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
            if (m) { q->base[key] = 0; continue; }    /* never looked up */
            lo = 0; hi = ((uint32_t)(FO_Q_EXP0 + 1) << 23) - 1;
        } else {
            lo = ((uint32_t)(FO_Q_EXP0 + slot) << 23) | (m << (23 - FO_Q_MBITS));
            hi = lo | ((1u << (23 - FO_Q_MBITS)) - 1);
        }
        int a = fo_q__argmin(code, ncodes, fo_q__float(sign | lo));
        int b = fo_q__argmin(code, ncodes, fo_q__float(sign | hi));
        int j = a < b ? a : b;
        if ((a > b ? a - b : b - a) > 1) return -3;
        if (j > ncodes - 2) j = ncodes - 2;
        q->base[key] = (uint8_t)j;
    }
    memset(q->base + FO_Q_TABLE, 0, 4);
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
    int b = q->base[fo_q__key(y)];
    float d0 = y - q->code[b];
    float d1 = y - q->code[b + 1];
    d0 = d0 < 0 ? -d0 : d0;
    d1 = d1 < 0 ? -d1 : d1;
    return (uint8_t)(b + (d1 < d0));
}

/* codes[i] = nearest code of clamp(x[i] * inv, -1, 1), for any n. */
static inline void fo_q__encode_scaled(const float* x, ptrdiff_t n, float inv, const fo_qmap* q,
                                       uint8_t* codes) {
    ptrdiff_t i = 0;
#if defined(FO_Q_AVX512)
    const __m512 vinv = _mm512_set1_ps(inv), one = _mm512_set1_ps(1.0f), mone = _mm512_set1_ps(-1.0f);
    const __m512i absm = _mm512_set1_epi32(0x7fffffff), ff = _mm512_set1_epi32(0xff);
    const __m512i e0 = _mm512_set1_epi32(FO_Q_EXP0), mm = _mm512_set1_epi32((1 << FO_Q_MBITS) - 1);
    const __m512i ione = _mm512_set1_epi32(1);
    for (; i + 16 <= n; i += 16) {
        __m512 y = _mm512_mul_ps(_mm512_loadu_ps(x + i), vinv);
        y = _mm512_min_ps(_mm512_max_ps(y, mone), one);
        __m512i u = _mm512_castps_si512(y);
        __m512i s = _mm512_slli_epi32(_mm512_srli_epi32(u, 31), FO_Q_MBITS + 5);
        __m512i t = _mm512_sub_epi32(_mm512_and_si512(_mm512_srli_epi32(u, 23), ff), e0);
        __m512i m = _mm512_and_si512(_mm512_srli_epi32(u, 23 - FO_Q_MBITS), mm);
        __mmask16 pos = _mm512_cmpgt_epi32_mask(t, _mm512_setzero_si512());
        __m512i key = _mm512_mask_or_epi32(s, pos, s,
                                           _mm512_or_si512(_mm512_slli_epi32(t, FO_Q_MBITS), m));
        __m512i b = _mm512_and_si512(_mm512_i32gather_epi32(key, (const void*)q->base, 1), ff);
        __m512 c0 = _mm512_i32gather_ps(b, q->code, 4);
        __m512 c1 = _mm512_i32gather_ps(_mm512_add_epi32(b, ione), q->code, 4);
        __m512 d0 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(_mm512_sub_ps(y, c0)), absm));
        __m512 d1 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(_mm512_sub_ps(y, c1)), absm));
        __mmask16 up = _mm512_cmp_ps_mask(d1, d0, _CMP_LT_OQ);
        __m512i r = _mm512_mask_add_epi32(b, up, b, ione);
        _mm_storeu_si128((__m128i*)(codes + i), _mm512_cvtepi32_epi8(r));
    }
#elif defined(FO_Q_AVX2)
    const __m256 vinv = _mm256_set1_ps(inv), one = _mm256_set1_ps(1.0f), mone = _mm256_set1_ps(-1.0f);
    const __m256i absm = _mm256_set1_epi32(0x7fffffff), ff = _mm256_set1_epi32(0xff);
    const __m256i e0 = _mm256_set1_epi32(FO_Q_EXP0), mm = _mm256_set1_epi32((1 << FO_Q_MBITS) - 1);
    const __m256i ione = _mm256_set1_epi32(1);
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    for (; i + 8 <= n; i += 8) {
        __m256 y = _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv);
        y = _mm256_min_ps(_mm256_max_ps(y, mone), one);
        __m256i u = _mm256_castps_si256(y);
        __m256i s = _mm256_slli_epi32(_mm256_srli_epi32(u, 31), FO_Q_MBITS + 5);
        __m256i t = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(u, 23), ff), e0);
        __m256i m = _mm256_and_si256(_mm256_srli_epi32(u, 23 - FO_Q_MBITS), mm);
        __m256i pos = _mm256_cmpgt_epi32(t, _mm256_setzero_si256());
        __m256i key = _mm256_or_si256(s, _mm256_and_si256(pos,
                                      _mm256_or_si256(_mm256_slli_epi32(t, FO_Q_MBITS), m)));
        __m256i b = _mm256_and_si256(_mm256_i32gather_epi32((const int*)(const void*)q->base, key, 1), ff);
        __m256 c0 = _mm256_i32gather_ps(q->code, b, 4);
        __m256 c1 = _mm256_i32gather_ps(q->code, _mm256_add_epi32(b, ione), 4);
        __m256 d0 = _mm256_castsi256_ps(_mm256_and_si256(_mm256_castps_si256(_mm256_sub_ps(y, c0)), absm));
        __m256 d1 = _mm256_castsi256_ps(_mm256_and_si256(_mm256_castps_si256(_mm256_sub_ps(y, c1)), absm));
        __m256i up = _mm256_castps_si256(_mm256_cmp_ps(d1, d0, _CMP_LT_OQ));   /* -1 where up */
        __m256i r = _mm256_shuffle_epi8(_mm256_sub_epi32(b, up), pick);
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
    const __m512 va = _mm512_set1_ps(absmax);
    for (; i + 16 <= n; i += 16) {
        __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(codes + i)));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_i32gather_ps(c, q->code, 4), va));
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

#endif /* FUSEDOPTIM_QUANT_H */
