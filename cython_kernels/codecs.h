/* fusedoptim storage codecs: how a buffer's elements are read into the compute type (float or
 * double) and written back. One load/store pair per storage; the kernel bodies never see a
 * storage, only compute-type values (cython_kernels/kernelgen.py binds bodies to codecs).
 *
 *   f32, f64   the identity. The generated glue hands these buffers to the body as plain
 *              pointers, so the compiler sees p[i] and vectorises as before; the pair below is
 *              the reference, and what a tile path would use.
 *   bf16       load: the 16 bits into float32's high half. store: round to nearest even, a NaN
 *              stays a (quiet) NaN of the same sign. Scalar reference, not registered yet.
 *   f16        (issue 11) F16C's _cvtph_ps/_cvtps_ph where the ISA has it, scalar otherwise.
 *   int8/int4  (issue 11) blockwise: one absmax per 256-element block (FO_BLOCK); the driver
 *              cuts work units only at multiples of FO_BLOCK inside a tensor, so a block is
 *              decoded, updated and encoded by one thread. Interface to come:
 *                  fo_<st>_decode(view, start, n, T* tile)   n <= FO_BLOCK, start % FO_BLOCK == 0
 *                  fo_<st>_encode(view, start, n, const T* tile)   (absmax first, then codes)
 */
#ifndef FUSEDOPTIM_CODECS_H
#define FUSEDOPTIM_CODECS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FO_BLOCK 256

/* -- f32, f64: the identity --------------------------------------------------------------- */
static inline float fo_f32_load(const float* p, ptrdiff_t i) { return p[i]; }
static inline void fo_f32_store(float* p, ptrdiff_t i, float x) { p[i] = x; }
static inline double fo_f64_load(const double* p, ptrdiff_t i) { return p[i]; }
static inline void fo_f64_store(double* p, ptrdiff_t i, double x) { p[i] = x; }

/* -- bf16: scalar reference ----------------------------------------------------------------- */
static inline float fo_bf16_load(const uint16_t* p, ptrdiff_t i) {
    uint32_t u = (uint32_t)p[i] << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

static inline uint16_t fo_bf16_from_f32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)          /* NaN: keep sign and top payload, quiet */
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);              /* round to nearest, ties to even */
    return (uint16_t)(u >> 16);
}

static inline void fo_bf16_store(uint16_t* p, ptrdiff_t i, float x) { p[i] = fo_bf16_from_f32(x); }

#endif
