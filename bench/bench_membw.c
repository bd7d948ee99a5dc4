/*
 * bench_membw: this machine's memory read bandwidth, the floor under a decode step (every weight byte is read once
 * per token).  Threads sum disjoint slices of a buffer far larger than the caches; the best of several passes.
 *
 *   bench_membw [--threads N] [--mib M] [--json]
 */
#include "bench_util.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
} slice;

static void *reader(void *a) {
    slice *s = a;
    uint64_t x0 = 0, x1 = 0, x2 = 0, x3 = 0;
    for (size_t i = 0; i + 4 <= s->n; i += 4) x0 += s->p[i], x1 += s->p[i + 1], x2 += s->p[i + 2], x3 += s->p[i + 3];
    s->sum = x0 ^ x1 ^ x2 ^ x3;
    return NULL;
}

int main(int argc, char **argv) {
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN), mib = 1024, json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--mib") && i + 1 < argc) mib = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json")) json = 1;
        else {
            fprintf(stderr, "usage: bench_membw [--threads N] [--mib M] [--json]\n");
            return 2;
        }
    }
    if (threads < 1 || threads > 256 || mib < 64) {
        fprintf(stderr, "bench_membw: --threads 1..256, --mib >= 64\n");
        return 2;
    }
    size_t n = (size_t)mib << 17; /* uint64 words */
    uint64_t *buf = malloc(n * sizeof *buf);
    if (!buf) {
        fprintf(stderr, "bench_membw: cannot allocate %d MiB\n", mib);
        return 1;
    }
    for (size_t i = 0; i < n; i++) buf[i] = i * 0x9E3779B97F4A7C15ull; /* touched and non-zero */
    pthread_t th[256];
    slice sl[256];
    double best = 0;
    uint64_t guard = 0;
    for (int pass = 0; pass < 7; pass++) {
        size_t per = n / (size_t)threads;
        double t0 = now();
        for (int t = 0; t < threads; t++) {
            sl[t] = (slice){buf + (size_t)t * per, per, 0};
            pthread_create(&th[t], NULL, reader, &sl[t]);
        }
        for (int t = 0; t < threads; t++) pthread_join(th[t], NULL), guard ^= sl[t].sum;
        double gbs = (double)per * threads * 8 / (now() - t0) / 1e9;
        if (gbs > best) best = gbs;
    }
    if (json) printf("{\"threads\":%d,\"mib\":%d,\"read_GBps\":%.2f,\"checksum\":%llu}\n", threads, mib, best,
                     (unsigned long long)(guard & 0xFFFF));
    else printf("memory read bandwidth: %.2f GB/s (%d threads, %d MiB, best of 7)\n", best, threads, mib);
    free(buf);
    return 0;
}
