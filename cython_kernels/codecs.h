/* fusedoptim storage codecs: how a buffer's elements are read into the compute type (float or
 * double) and written back. One load/store pair per storage; the kernel bodies never see a
 * storage, only compute-type values (cython_kernels/kernelgen.py binds bodies to codecs).
 *
 *   f32, f64   the identity. The generated glue hands these buffers to the body as plain
 *              pointers, so the compiler sees p[i] and vectorises as before; the pair below is
 *              the reference, and what a tile path would use.
 *   bf16       (issue 11) load: the 16 bits into float32's high half. store: round to nearest
 *              even, a NaN stays a (quiet) NaN of the same sign.
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

#endif
