/* What the CPU benchmarks share: a seeded generator (the same numbers on every run) and a monotonic clock. */
#ifndef DSA_BENCH_UTIL_H
#define DSA_BENCH_UTIL_H

#include <stdint.h>
#include <time.h>

static uint64_t g_rng = 12345;
static inline uint32_t rnd(void) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(g_rng >> 33);
}
static inline float uniform(void) { return (float)rnd() / 2147483648.0f - 1.0f; } /* [-1, 1) */

static inline double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
