/*
 * bench_dsa — speed of the CPU's DeepSeek Sparse Attention kernels, on one thread, at each SIMD level this CPU has.
 *
 *   bench_dsa [--json] [--n N] [--heads H] [--dim D] [--topk K] [--ms T]
 *
 * The kernels a long-context DSA step adds per layer (docs/perf.md):
 *   scores  dsa_indexer_scores over N FP8 keys (default 8192 × 64 bytes, the shipped indexer's 4 heads × 64),
 *           as ns per key and GB/s of key bytes (the keys, 512 KB, stay in L2: the figure is the kernel's);
 *   rows4   dsa_indexer_scores_rows for 4 consecutive prefill rows over the same keys, as ns per (row, key);
 *   topk    dsa_topk of K (default 512) out of N scores shaped like the indexer's (mostly small, a few high).
 * Each figure is the fastest of repeated calls in T ms (default 300) of alternating between the levels.  Prints a
 * table, or with --json one object:
 *   {"cpu":"avx512","n":8192,"heads":4,"dim":64,"topk":512,
 *    "results":[{"op":"scores","level":"avx2","us":...,"ns_per_key":...,"gbps":...}, ...]}
 * (for rows4, "us" and "ns_per_key" are per row).
 * Timings depend on the machine and its load: they are never pass/fail.
 */
#include "bench_util.h"
#include "kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const LEVELS[4] = {"", "generic", "avx2", "avx512"};

int main(int argc, char **argv) {
    int json = 0, n = 8192, H = 4, d = 64, k = 512;
    double ms = 300;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--n") && i + 1 < argc) n = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--heads") && i + 1 < argc) H = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--dim") && i + 1 < argc) d = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--topk") && i + 1 < argc) k = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ms") && i + 1 < argc) ms = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_dsa [--json] [--n N] [--heads H] [--dim D] [--topk K] [--ms T]\n");
            return 2;
        }
    }
    if (n < 1 || H < 1 || H > 64 || d < 8 || d > 256 || d % 8 || k < 1) {
        fprintf(stderr, "bench_dsa: want N ≥ 1, 1 ≤ H ≤ 64, D a multiple of 8 in [8, 256], K ≥ 1\n");
        return 2;
    }
    dsa_kernels_init(0);
    const char *cpu = dsa_cpu_name();
    int top = !strcmp(cpu, "avx512") ? 3 : !strcmp(cpu, "avx2") ? 2 : 1;

    uint8_t *K8 = malloc((size_t)n * d);
    float *ks = malloc((size_t)n * sizeof *ks), *q = malloc((size_t)H * d * sizeof *q), *w = malloc((size_t)H * sizeof *w);
    float *sc = malloc((size_t)n * sizeof *sc), *row = malloc((size_t)d * sizeof *row);
    float *q4 = malloc((size_t)4 * H * d * sizeof *q4), *w4 = malloc((size_t)4 * H * sizeof *w4);
    float *sc4 = malloc((size_t)4 * n * sizeof *sc4);
    int lens4[4] = {n, n > 1 ? n - 1 : 1, n > 2 ? n - 2 : 1, n > 3 ? n - 3 : 1};
    uint64_t *scratch = malloc((size_t)n * sizeof *scratch);
    int32_t *idx = malloc((size_t)(k < n ? k : n) * sizeof *idx);
    if (!K8 || !ks || !q || !w || !sc || !row || !scratch || !idx || !q4 || !w4 || !sc4) {
        fprintf(stderr, "bench_dsa: out of memory\n");
        return 1;
    }
    for (int s = 0; s < n; s++) {
        for (int i = 0; i < d; i++) row[i] = uniform();
        dsa_fp8_quant_row(d, row, K8 + (size_t)s * d, &ks[s]);
    }
    for (int i = 0; i < H * d; i++) q[i] = uniform();
    for (int j = 0; j < H; j++) w[j] = uniform();
    for (int i = 0; i < 4 * H * d; i++) q4[i] = uniform();
    for (int j = 0; j < 4 * H; j++) w4[j] = uniform();
    /* top-k input: the indexer's scores are mostly near zero with a tail of high ones */
    float *tsc = malloc((size_t)n * sizeof *tsc);
    for (int s = 0; s < n; s++) tsc[s] = (rnd() % 16 == 0) ? 4 + uniform() : 0.1f * uniform();

    double best[4][3];
    for (int l = 0; l < 4; l++) best[l][0] = best[l][1] = best[l][2] = 1e30;
    double t_end = now() + ms / 1000.0;
    volatile float sink = 0;
    do {
        for (int l = 1; l <= top; l++) {
            dsa_kernels_init(l);
            double t0 = now();
            dsa_indexer_scores(n, H, d, K8, ks, q, w, sc);
            double t1 = now();
            int m = dsa_topk(n, tsc, k, idx, scratch);
            double t2 = now();
            dsa_indexer_scores_rows(4, lens4, H, d, K8, ks, q4, w4, sc4, (size_t)n);
            double t3 = now();
            sink += sc[n - 1] + (float)m + sc4[n - 1];
            if (t1 - t0 < best[l][0]) best[l][0] = t1 - t0;
            if (t2 - t1 < best[l][1]) best[l][1] = t2 - t1;
            if (t3 - t2 < best[l][2]) best[l][2] = (t3 - t2) / 4; /* per row */
        }
    } while (now() < t_end);
    (void)sink;

    if (json) printf("{\"cpu\":\"%s\",\"n\":%d,\"heads\":%d,\"dim\":%d,\"topk\":%d,\"results\":[", cpu, n, H, d, k);
    else printf("%-8s %-8s %10s %12s %8s\n", "op", "level", "us", "ns/key", "GB/s");
    int first = 1;
    for (int l = 1; l <= top; l++)
        for (int op = 0; op < 3; op++) {
            double us = best[l][op] * 1e6, nsk = best[l][op] * 1e9 / n;
            double gbps = op != 1 ? (double)n * (d + 4) / best[l][op] / 1e9 : (double)n * 4 / best[l][op] / 1e9;
            const char *name = op == 0 ? "scores" : op == 1 ? "topk" : "rows4";
            if (json)
                printf("%s{\"op\":\"%s\",\"level\":\"%s\",\"us\":%.2f,\"ns_per_key\":%.3f,\"gbps\":%.2f}", first ? "" : ",",
                       name, LEVELS[l], us, nsk, gbps);
            else printf("%-8s %-8s %10.2f %12.3f %8.2f\n", name, LEVELS[l], us, nsk, gbps);
            first = 0;
        }
    if (json) printf("]}\n");
    free(K8), free(ks), free(q), free(w), free(sc), free(row), free(scratch), free(idx), free(tsc);
    free(q4), free(w4), free(sc4);
    return 0;
}
