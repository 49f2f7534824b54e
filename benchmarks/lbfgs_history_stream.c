/* How fast can any exact L-BFGS stream its history here? (README, "EMA and L-BFGS".)
 *
 *   gcc -O3 -march=native -ffp-contract=off -fopenmp benchmarks/lbfgs_history_stream.c \
 *       -o /tmp/lbfgs_history_stream && OMP_WAIT_POLICY=passive /tmp/lbfgs_history_stream
 *
 * With k history pairs of n = 1e6 float32 elements (8 MB a pair, far more than the L3 cache
 * for k >= 4), every iteration reads each history vector twice, in either form:
 *
 *   the two-loop recursion (torch's, and fusedoptim's fused version): 2k passes, each an axpy
 *     on q (4 MB, which stays in cache) fused with the next step's dot product, reading two
 *     history vectors;
 *   the compact representation (Byrd, Nocedal and Schnabel 1994): all 2k dot products with g
 *     in one sweep, then the direction as one combination of all 2k vectors.
 *
 * This times both access patterns in plain C, dot products in double over 32 lanes as the
 * kernels do, on 16384-element units as the driver cuts them: ms and GB/s per history vector
 * read. If the compact form's sweep reads history no faster than the two-loop's passes, it
 * cannot make an iteration faster, whatever its pass count.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <omp.h>

#define LANES 32
#define UNIT 16384
#define N (62 * UNIT)           /* 1,015,808 elements: 1e6 rounded up to whole units */
#define POOL 48                 /* history vectors: 194 MB, six times the L3 cache */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* The two-loop pass over one unit: q -= a * y, then w . q (double lanes). */
static double axpy_dot(float* q, const float* y, const float* w, long n) {
    double acc[LANES] = {0};
    for (long i = 0; i < n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            float v = q[i + j] - 1e-6f * y[i + j];
            q[i + j] = v;
            acc[j] += (double)w[i + j] * (double)v;
        }
    double s = 0;
    for (int j = 0; j < LANES; j++) s += acc[j];
    return s;
}

/* The compact form's sweep over one unit: g . h_k for G history vectors at once. */
static void multi_dot(const float* g, float* const* h, int G, long at, long n, double* out) {
    double acc[8][LANES] = {{0}};
    for (long i = 0; i < n; i += LANES)
        for (int k = 0; k < G; k++)
            for (int j = 0; j < LANES; j++)
                acc[k][j] += (double)h[k][at + i + j] * (double)g[at + i + j];
    for (int k = 0; k < G; k++) {
        double s = 0;
        for (int j = 0; j < LANES; j++) s += acc[k][j];
        out[k] += s;
    }
}

int main(void) {
    float* q = aligned_alloc(64, N * sizeof(float));
    float* h[POOL];
    double sink = 0, part[N / UNIT];
    for (long i = 0; i < N; i++) q[i] = 1e-3f;
    for (int k = 0; k < POOL; k++) {
        h[k] = aligned_alloc(64, N * sizeof(float));
        for (long i = 0; i < N; i++) h[k][i] = 1e-4f * (float)(k + 1);
    }
    for (int nt = 1; nt <= 2; nt++) {
        double best = 1e9;
        for (int rep = 0; rep < 5; rep++) {
            double t = now();
            for (int k = 0; k + 1 < POOL; k++) {
                #pragma omp parallel for num_threads(nt) schedule(static)
                for (long u = 0; u < N / UNIT; u++)
                    part[u] = axpy_dot(q + u * UNIT, h[k] + u * UNIT, h[k + 1] + u * UNIT, UNIT);
                for (long u = 0; u < N / UNIT; u++) sink += part[u];
            }
            t = (now() - t) / (2.0 * (POOL - 1));        /* two vectors read per pass */
            if (t < best) best = t;
        }
        printf("two-loop pass, %d thread(s):   %.3f ms per history vector (%.1f GB/s)\n", nt,
               best * 1e3, N * 4.0 / best / 1e9);
        for (int G = 2; G <= 8; G *= 2) {
            best = 1e9;
            for (int rep = 0; rep < 5; rep++) {
                double t = now();
                for (int k = 0; k + G <= POOL; k += G) {
                    #pragma omp parallel for num_threads(nt) schedule(static) reduction(+:sink)
                    for (long u = 0; u < N / UNIT; u++) {
                        double mine[8] = {0};
                        multi_dot(q, h + k, G, u * UNIT, UNIT, mine);
                        sink += mine[0];
                    }
                }
                t = (now() - t) / (POOL / G * G);
                if (t < best) best = t;
            }
            printf("compact sweep, %d vectors at once, %d thread(s): %.3f ms per history vector "
                   "(%.1f GB/s)\n", G, nt, best * 1e3, N * 4.0 / best / 1e9);
        }
    }
    printf("(checksum %g)\n", sink);
    return 0;
}
