/* Where the int8 AdamW step's time goes, and why its encode keeps the gather (issue 11).
 *
 * Times, on one thread over 1e5 elements (in L2), the pieces the tiled glue runs per
 * 256-element block for AdamW with int8 exp_avg and exp_avg_sq (cython_kernels/tiles.h):
 * decode both moments (quant.h's fo_q8_decode), the float32 AdamW body, the two absmax scans,
 * the two encodes (quant.h's table + gather), and the whole pipeline. It also times an exact
 * alternative encode without a gather -- an 8-level branchless binary search over the 255
 * exact float32 decision thresholds, the tables held in zmm registers and read by permutes --
 * and, with --exhaustive, checks that it gives quant.h's code for every float32 in [-1, 1]
 * under both maps (4.3e9 values, about 40 s).
 *
 * Build and run with benchmarks/int8_step_components.sh (it writes the two maps from
 * fusedoptim.quant.dynamic_map and compiles this file with the avx512 level's flags).
 * AVX-512 only: the question it answers is about that level's encode.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include "quant.h"

#if !defined(FO_Q_AVX512)
#error "build with the avx512 level's flags (see int8_step_components.sh)"
#endif

#define N 100000
#define BLOCK 256

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* ---- the rejected alternative: exact thresholds, binary search by permutes ---------------- */

typedef struct {
    /* level tables of the search, concatenated: the 1 threshold tested first, then the 2 of
     * the second level, ..., the 128 of the last (255 in all; [255] unused) */
    float lv[256];
} thresholds;

static float ordered_float(int32_t k) {      /* the float at position k of the float order */
    return k >= 0 ? fo_q__float((uint32_t)k) : -fo_q__float((uint32_t)-k);
}

/* t[k] = the smallest float32 y in [-1, 1] whose nearest code (quant.h's argmin, ties to the
 * lower index) is above k: the code of y is then the number of thresholds <= y. */
static void thresholds_init(thresholds* T, const fo_qmap* q) {
    float t[256];
    for (int k = 0; k < 255; k++) {
        int32_t lo = -0x3f800000, hi = 0x3f800001;
        while (lo < hi) {
            int32_t mid = lo + (hi - lo) / 2;
            if (fo_q__argmin(q->code, 256, ordered_float(mid)) > k) hi = mid; else lo = mid + 1;
        }
        t[k] = ordered_float(lo);
    }
    int pos = 0;
    for (int b = 128; b >= 1; b /= 2)
        for (int c = 0; c < 256; c += 2 * b) T->lv[pos++] = t[c + b - 1];
}

#define STEP(t) j = _mm512_mask_add_epi32(_mm512_add_epi32(j, j), \
                                         _mm512_cmp_ps_mask(y, (t), _CMP_GE_OQ), \
                                         _mm512_add_epi32(j, j), one_i)

static void encode_search(const float* x, ptrdiff_t n, float inv, const thresholds* T,
                          uint8_t* codes) {
    const __m512 vinv = _mm512_set1_ps(inv), one = _mm512_set1_ps(1.0f), mone = _mm512_set1_ps(-1.0f);
    const __m512i one_i = _mm512_set1_epi32(1), b32 = _mm512_set1_epi32(32),
                  b64 = _mm512_set1_epi32(64);
    const float* L = T->lv;
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 y = _mm512_mul_ps(_mm512_loadu_ps(x + i), vinv);
        y = _mm512_min_ps(_mm512_max_ps(y, mone), one);
        __m512i j = _mm512_setzero_si512();
        STEP(_mm512_set1_ps(L[0]));
        STEP(_mm512_permutexvar_ps(j, _mm512_loadu_ps(L + 1)));
        STEP(_mm512_permutexvar_ps(j, _mm512_loadu_ps(L + 3)));
        STEP(_mm512_permutexvar_ps(j, _mm512_loadu_ps(L + 7)));
        STEP(_mm512_permutexvar_ps(j, _mm512_loadu_ps(L + 15)));
        STEP(_mm512_permutex2var_ps(_mm512_loadu_ps(L + 31), j, _mm512_loadu_ps(L + 47)));
        {
            __m512 a = _mm512_permutex2var_ps(_mm512_loadu_ps(L + 63), j, _mm512_loadu_ps(L + 79));
            __m512 b = _mm512_permutex2var_ps(_mm512_loadu_ps(L + 95), j, _mm512_loadu_ps(L + 111));
            STEP(_mm512_mask_mov_ps(a, _mm512_test_epi32_mask(j, b32), b));
        }
        {
            __m512 a = _mm512_permutex2var_ps(_mm512_loadu_ps(L + 127), j, _mm512_loadu_ps(L + 143));
            __m512 b = _mm512_permutex2var_ps(_mm512_loadu_ps(L + 159), j, _mm512_loadu_ps(L + 175));
            __m512 c = _mm512_permutex2var_ps(_mm512_loadu_ps(L + 191), j, _mm512_loadu_ps(L + 207));
            __m512 d = _mm512_permutex2var_ps(_mm512_loadu_ps(L + 223), j, _mm512_loadu_ps(L + 239));
            __mmask16 m32 = _mm512_test_epi32_mask(j, b32), m64 = _mm512_test_epi32_mask(j, b64);
            a = _mm512_mask_mov_ps(a, m32, b);
            c = _mm512_mask_mov_ps(c, m32, d);
            STEP(_mm512_mask_mov_ps(a, m64, c));
        }
        _mm_storeu_si128((__m128i*)(codes + i), _mm512_cvtepi32_epi8(j));
    }
    for (; i < n; i++) {
        float y = x[i] * inv;
        y = y < -1.0f ? -1.0f : (y > 1.0f ? 1.0f : y);
        int c = 0, pos = 0;
        for (int len = 1; len <= 128; len *= 2) { c = 2 * c + (y >= L[pos + c]); pos += len; }
        codes[i] = (uint8_t)c;
    }
}

/* ---- the AdamW body (float32, decoupled decay; as adam.pxi.tp's loop) ---------------------- */

static void adamw_body(float* restrict p, const float* restrict g, float* restrict m,
                       float* restrict v, ptrdiff_t n) {
    const float b1 = 0.9f, o1 = 0.1f, b2 = 0.999f, o2 = 0.001f, decay = 0.9999f, eps = 1e-8f,
                step = 1e-3f, inv_bc2 = 1.1f;
    for (ptrdiff_t i = 0; i < n; i++) {
        float gi = g[i], pi = p[i] * decay;
        float mi = b1 * m[i] + o1 * gi, vi = b2 * v[i] + o2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - step * mi / (sqrtf(vi) * inv_bc2 + eps);
    }
}

static void load_map(const char* path, float* code) {
    FILE* f = fopen(path, "rb");
    if (!f || fread(code, 4, 256, f) != 256) { fprintf(stderr, "cannot read %s\n", path); exit(2); }
    fclose(f);
}

static long exhaustive(const fo_qmap* q, const thresholds* T) {
    enum { C = 1 << 16 };
    static float x[C];
    static uint8_t a[C], b[C];
    long bad = 0;
    for (uint64_t u = 0; u <= 0x3f800000u; u += C) {
        int m = 0;
        for (uint64_t w = u; w < u + C && w <= 0x3f800000u; w++) x[m++] = fo_q__float((uint32_t)w);
        for (int s = 0; s < 2; s++) {
            if (s) for (int k = 0; k < m; k++) x[k] = -x[k];
            fo_q__encode_scaled(x, m, 1.0f, q, a);
            encode_search(x, m, 1.0f, T, b);
            for (int k = 0; k < m; k++) bad += a[k] != b[k];
        }
    }
    return bad;
}

int main(int argc, char** argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s signed.bin unsigned.bin [--exhaustive]\n", argv[0]); return 2; }
    static fo_qmap qs, qu;
    static thresholds ts, tu;
    float cs[256], cu[256];
    load_map(argv[1], cs);
    load_map(argv[2], cu);
    if (fo_qmap_init(&qs, cs, 256) || fo_qmap_init(&qu, cu, 256)) { puts("map refused"); return 1; }
    thresholds_init(&ts, &qs);
    thresholds_init(&tu, &qu);
    if (argc > 3 && !strcmp(argv[3], "--exhaustive")) {
        long bs = exhaustive(&qs, &ts), bu = exhaustive(&qu, &tu);
        printf("binary search vs quant.h over every float32 in [-1, 1]: %ld (signed map) and "
               "%ld (unsigned map) codes differ\n", bs, bu);
        if (bs || bu) return 1;
    }
    static float p[N], g[N], tm[BLOCK], tv[BLOCK];
    static float fm[N], fv[N];      /* float32 moments: the float32 step's state */
    static uint8_t cm[N], cv[N];
    static float am[N / BLOCK + 1], av[N / BLOCK + 1];
    srand(1);
    for (int i = 0; i < N; i++) {
        p[i] = rand() / (float)RAND_MAX - 0.5f;
        g[i] = (rand() / (float)RAND_MAX - 0.5f) * 1e-2f;
    }
    for (ptrdiff_t at = 0; at < N; at += BLOCK) {
        ptrdiff_t m = N - at < BLOCK ? N - at : BLOCK;
        for (ptrdiff_t i = 0; i < m; i++) {
            fm[at + i] = tm[i] = g[at + i];
            fv[at + i] = tv[i] = g[at + i] * g[at + i];
        }
        am[at / BLOCK] = fo_q8_encode(tm, m, &qs, cm + at);
        av[at / BLOCK] = fo_q8_encode(tv, m, &qu, cv + at);
    }
    enum { PARTS = 7 };
    const char* names[PARTS] = {"decode, both moments", "AdamW body (float32)",
                                "absmax, both moments", "encode, both (table + gather)",
                                "encode, both (binary search)", "whole int8 step",
                                "float32 step (body on float32 state)"};
    double best[PARTS];
    for (int k = 0; k < PARTS; k++) best[k] = 1e9;
    volatile uint32_t sink = 0;
    for (int rep = 0; rep < 300; rep++) {
        double t[PARTS + 1];
        ptrdiff_t at, m;
#define BLOCKS for (at = 0; at < N; at += BLOCK) if ((m = N - at < BLOCK ? N - at : BLOCK), 1)
        t[0] = now();
        BLOCKS { fo_q8_decode(cm + at, am[at / BLOCK], &qs, tm, m);
                 fo_q8_decode(cv + at, av[at / BLOCK], &qu, tv, m); }
        t[1] = now();
        BLOCKS adamw_body(p + at, g + at, tm, tv, m);
        t[2] = now();
        BLOCKS { sink += fo_q__absmax_bits(fm + at, m) + fo_q__absmax_bits(fv + at, m); }
        t[3] = now();
        BLOCKS { fo_q__encode_scaled(tm, m, 100.0f, &qs, cm + at);
                 fo_q__encode_scaled(tv, m, 1e4f, &qu, cv + at); }
        t[4] = now();
        BLOCKS { encode_search(tm, m, 100.0f, &ts, cm + at);
                 encode_search(tv, m, 1e4f, &tu, cv + at); }
        t[5] = now();
        BLOCKS { fo_q8_decode(cm + at, am[at / BLOCK], &qs, tm, m);
                 fo_q8_decode(cv + at, av[at / BLOCK], &qu, tv, m);
                 adamw_body(p + at, g + at, tm, tv, m);
                 am[at / BLOCK] = fo_q8_encode(tm, m, &qs, cm + at);
                 av[at / BLOCK] = fo_q8_encode(tv, m, &qu, cv + at); }
        t[6] = now();
        BLOCKS adamw_body(p + at, g + at, fm + at, fv + at, m);
        t[7] = now();
        for (int k = 0; k < PARTS; k++) if (t[k + 1] - t[k] < best[k]) best[k] = t[k + 1] - t[k];
    }
    printf("1 thread, %d elements, blocks of %d, best of 300:\n", N, BLOCK);
    for (int k = 0; k < PARTS; k++)
        printf("  %-38s %8.1f us  %6.3f ns/element\n", names[k], best[k] * 1e6, best[k] * 1e9 / N);
    return 0;
}
