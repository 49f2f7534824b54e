/* fusedoptim storage codecs: how a buffer's elements are read into the compute type (float or
 * double) and written back. The kernel bodies never see a storage, only compute-type values;
 * cython_kernels/kernelgen.py binds bodies to codecs.
 *
 *   f32, f64   the identity. The generated glue hands these buffers to the body as plain
 *              pointers, so the compiler sees p[i]; the pair below is the reference.
 *   bf16       decode: the 16 bits become float32's high half (exact). encode: round to
 *              nearest even; a NaN stays a quiet NaN of the same sign (ml_dtypes and torch
 *              give the same bits).
 *   f16        IEEE binary16. F16C's vcvtph2ps/vcvtps2ph (round to nearest even) where the ISA
 *              level has it (__F16C__), the same conversion in portable C otherwise: every
 *              finite value and infinity gives the same bits on both paths; a NaN stays a NaN.
 *   int8/int4  blockwise (quant.h): decoded into a float tile per block by the generated glue.
 *
 * The tile functions convert n elements between a storage buffer and a float array; the glue
 * decodes a tile of at most FO_TILE elements, runs the body on it and encodes it back.
 */
#ifndef FUSEDOPTIM_CODECS_H
#define FUSEDOPTIM_CODECS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif

#define FO_BLOCK 256
#define FO_TILE 256

/* The tile converters are called once per tile by every generated row's glue: kept out of
 * line, each is compiled once per ISA level instead of once per row (the build time), at the
 * cost of a call per 256 elements. */
#if defined(_MSC_VER)
#define FO_TILE_FN static __declspec(noinline)
#else
#define FO_TILE_FN static __attribute__((noinline))
#endif

/* -- f32, f64: the identity --------------------------------------------------------------- */
static inline float fo_f32_load(const float* p, ptrdiff_t i) { return p[i]; }
static inline void fo_f32_store(float* p, ptrdiff_t i, float x) { p[i] = x; }
static inline double fo_f64_load(const double* p, ptrdiff_t i) { return p[i]; }
static inline void fo_f64_store(double* p, ptrdiff_t i, double x) { p[i] = x; }

/* -- bf16 ----------------------------------------------------------------------------------- */
static inline float fo_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t fo_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    /* Round to nearest even: add 0x7fff plus the lowest kept bit, then truncate. A NaN would
     * carry into the exponent (or become Inf), so it keeps its top bits with the quiet bit. */
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = (u >> 16) | 0x40u;
    return (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u) ? nan : rounded);
}

FO_TILE_FN void fo_bf16_decode(const uint16_t* src, float* dst, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) dst[i] = fo_bf16_to_f32(src[i]);
}

FO_TILE_FN void fo_bf16_encode(const float* src, uint16_t* dst, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) dst[i] = fo_f32_to_bf16(src[i]);
}

/* bf16 with stochastic rounding: round up with probability equal to the fraction of a bf16
 * ulp the value lies above the bf16 below it. The 16 random bits come from a stateless hash of
 * (the tensor's step key, the element index), so a step is reproducible and the same for any
 * thread count. Inf and NaN round to nearest (stay Inf and NaN); a finite value just below
 * the largest bf16 may round up to Inf, as rounding up means there. */
static inline uint32_t fo_mix32(uint32_t x) {
    x ^= x >> 16; x *= 0x7feb352du;
    x ^= x >> 15; x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

static inline uint16_t fo_f32_to_bf16_sr(float f, uint32_t random16) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t up = (uint16_t)((u + random16) >> 16);
    return ((u & 0x7f800000u) == 0x7f800000u) ? fo_f32_to_bf16(f) : up;
}

/* key: the tensor's two 32-bit step keys; start: the index of src[0] in the tensor. */
FO_TILE_FN void fo_bf16_encode_sr(const float* src, uint16_t* dst, ptrdiff_t n,
                                     const uint32_t* key, ptrdiff_t start) {
    const uint32_t k0 = key[0], k1 = key[1];
    for (ptrdiff_t i = 0; i < n; i++) {
        uint64_t idx = (uint64_t)(start + i);
        uint32_t r = fo_mix32(fo_mix32((uint32_t)idx ^ k0) ^ k1 ^ (uint32_t)(idx >> 32));
        dst[i] = fo_f32_to_bf16_sr(src[i], r & 0xffffu);
    }
}

/* -- f16 ------------------------------------------------------------------------------------ */
static inline float fo_f16_to_f32_portable(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0x1fu) {
        u = sign | 0x7f800000u | (man << 13) | (man ? 0x00400000u : 0u);   /* Inf; NaN quieted */
    } else if (exp != 0) {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        u = sign;
    } else {                                   /* subnormal: value = man * 2^-24, exact */
        float f = (float)man * 5.9604644775390625e-08f;
        memcpy(&u, &f, 4);
        u |= sign;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t fo_f32_to_f16_portable(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u)                        /* NaN: keep the top payload bits, quiet */
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u)                       /* rounds to >= 65520: Inf */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) {                      /* below 2^-14: subnormal or zero */
        if (a < 0x33000000u)                    /* below 2^-25: rounds to zero (ties too) */
            return (uint16_t)sign;
        uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e;              /* 14 .. 24 */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        q += (rem > half) || (rem == half && (q & 1u));
        return (uint16_t)(sign | q);
    }
    uint32_t r = a - 0x38000000u;               /* rebias the exponent by 112 */
    r = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;  /* round to nearest even (may carry up) */
    return (uint16_t)(sign | r);
}

FO_TILE_FN void fo_f16_decode(const uint16_t* src, float* dst, ptrdiff_t n) {
    ptrdiff_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + i))));
#endif
    for (; i < n; i++) dst[i] = fo_f16_to_f32_portable(src[i]);
}

FO_TILE_FN void fo_f16_encode(const float* src, uint16_t* dst, ptrdiff_t n) {
    ptrdiff_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i*)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++) dst[i] = fo_f32_to_f16_portable(src[i]);
}

#endif
