/* The tiled glue's buffer access (kernelgen.py): how one tile of at most FO_TILE elements of a
 * buffer of a given storage reaches a float body, and how what the body wrote goes back. One
 * function per role, switching on the row's storage number, so each kernel has one glue for
 * all its rows instead of one per row (the build time).
 *
 *   *_in   returns the float array the body gets: the buffer itself (float32), the float32
 *          master (master storages), or `tile` filled by decoding (bfloat16, float16, int8/int4
 *          blocks: codecs.h, quant.h)
 *   *_out  writes back what the body changed: encodes the tile, rounds the param from its
 *          master (to nearest even, or stochastically), or requantizes the block(s)
 *
 * `at` is the tile's first element in its tensor, a multiple of the 256-element block (the
 * driver cuts tensors there). The storage numbers are _driver.pxd's (checked at import by
 * register.pxi).
 */
#ifndef FUSEDOPTIM_TILES_H
#define FUSEDOPTIM_TILES_H

#include "codecs.h"
#include "quant.h"
#include "rank1.h"

#define FO_ST_F32 0
#define FO_ST_BF16 2
#define FO_ST_F16 3
#define FO_ST_BF16M 4
#define FO_ST_F16M 5
#define FO_ST_Q8 6
#define FO_ST_Q4 7
#define FO_ST_BF16SR 8
#define FO_ST_Q4R1 9
#define FO_MASTER_COL 6
#define FO_SR_COL 13

FO_TILE_FN float* fo_param_in(char** b, int col, int st, ptrdiff_t at, ptrdiff_t m,
                              float* tile) {
    switch (st) {
    case FO_ST_BF16: case FO_ST_BF16SR:
        fo_bf16_decode((const uint16_t*)b[col] + at, tile, m);
        return tile;
    case FO_ST_F16:
        fo_f16_decode((const uint16_t*)b[col] + at, tile, m);
        return tile;
    case FO_ST_BF16M: case FO_ST_F16M:
        return (float*)b[FO_MASTER_COL] + at;
    default:                                    /* float32 */
        return (float*)b[col] + at;
    }
}

/* The param as a float tile the body may write without touching the param (the scan pass of
 * rank1.h): always a copy, of the param or of its float32 master. */
FO_TILE_FN float* fo_param_copy(char** b, int col, int st, ptrdiff_t at, ptrdiff_t m,
                                float* tile) {
    switch (st) {
    case FO_ST_BF16: case FO_ST_BF16SR: case FO_ST_F16:
        return fo_param_in(b, col, st, at, m, tile);
    case FO_ST_BF16M: case FO_ST_F16M:
        memcpy(tile, (const float*)b[FO_MASTER_COL] + at, (size_t)m * sizeof(float));
        return tile;
    default:
        memcpy(tile, (const float*)b[col] + at, (size_t)m * sizeof(float));
        return tile;
    }
}

FO_TILE_FN void fo_param_out(char** b, int col, int st, ptrdiff_t at, ptrdiff_t m,
                             const float* tile) {
    switch (st) {
    case FO_ST_BF16: fo_bf16_encode(tile, (uint16_t*)b[col] + at, m); break;
    case FO_ST_F16: fo_f16_encode(tile, (uint16_t*)b[col] + at, m); break;
    case FO_ST_BF16M:
        fo_bf16_encode((const float*)b[FO_MASTER_COL] + at, (uint16_t*)b[col] + at, m);
        break;
    case FO_ST_F16M:
        fo_f16_encode((const float*)b[FO_MASTER_COL] + at, (uint16_t*)b[col] + at, m);
        break;
    case FO_ST_BF16SR:
        fo_bf16_encode_sr(tile, (uint16_t*)b[col] + at, m, (const uint32_t*)b[FO_SR_COL], at);
        break;
    default: break;                             /* float32: updated in place */
    }
}

FO_TILE_FN const float* fo_grad_in(char* g, int st, ptrdiff_t at, ptrdiff_t m, float* tile) {
    switch (st) {
    case FO_ST_BF16: fo_bf16_decode((const uint16_t*)g + at, tile, m); return tile;
    case FO_ST_F16: fo_f16_decode((const uint16_t*)g + at, tile, m); return tile;
    default: return (const float*)g + at;       /* float32 */
    }
}

/* A state buffer (absent: NULL, never read by the body). q8/q4: the row's map for it.
 * FO_ST_Q4R1 is the storage of a non-negative ("state+") buffer of an int4+rank1 row (rank1.h,
 * `absmax` is then the tensor's descriptor); the glue passes FO_ST_Q4 for its signed buffers. */
FO_TILE_FN float* fo_state_in(char* s, char* absmax, int st, ptrdiff_t at, ptrdiff_t m,
                              const fo_qmap* q8, const fo_qmap* q4, float* tile) {
    if (s == NULL) return tile;
    switch (st) {
    case FO_ST_BF16: fo_bf16_decode((const uint16_t*)s + at, tile, m); return tile;
    case FO_ST_F16: fo_f16_decode((const uint16_t*)s + at, tile, m); return tile;
    case FO_ST_Q8: return fo_q8_tile_in(s, absmax, at, m, q8, tile);
    case FO_ST_Q4: return fo_q4_tile_in(s, absmax, at, m, q4, tile);
    case FO_ST_Q4R1: return fo_r1_tile_in(s, absmax, at, m, q4, tile);
    default: return (float*)s + at;             /* float32 */
    }
}

/* A state buffer the body only writes (quantized): where to write, nothing decoded. */
FO_TILE_FN float* fo_state_wptr(char* s, char* absmax, int st, ptrdiff_t at, ptrdiff_t m,
                                const fo_qmap* q8, const fo_qmap* q4, float* tile) {
    (void)m; (void)q8; (void)q4;
    if (s == NULL) return tile;
    if ((st == FO_ST_Q8 || st == FO_ST_Q4 || st == FO_ST_Q4R1) && absmax != NULL) return tile;
    return (float*)s + at;
}

FO_TILE_FN void fo_state_out(char* s, char* absmax, int st, ptrdiff_t at, ptrdiff_t m,
                             const fo_qmap* q8, const fo_qmap* q4, const float* tile) {
    if (s == NULL) return;
    switch (st) {
    case FO_ST_BF16: fo_bf16_encode(tile, (uint16_t*)s + at, m); break;
    case FO_ST_F16: fo_f16_encode(tile, (uint16_t*)s + at, m); break;
    case FO_ST_Q8: fo_q8_tile_out(s, absmax, at, m, q8, tile); break;
    case FO_ST_Q4: fo_q4_tile_out(s, absmax, at, m, q4, tile); break;
    case FO_ST_Q4R1: fo_r1_tile_out(s, absmax, at, m, q4, tile); break;
    default: break;                             /* float32: updated in place */
    }
}

#endif
