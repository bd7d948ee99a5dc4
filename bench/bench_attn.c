/*
 * bench_attn — the CPU's attention over an f16 KV cache, one thread, the way a decode step of the default model
 * calls it: every layer, every KV head, its query heads together (dsa_attn_heads_f16).
 *
 *   bench_attn [--json] [--ctx N] [--topk K] [--layers L] [--reps R]
 *
 * The cache holds L layers (default 30) of N positions (default 4096) × 3 KV heads × 64 dims, K and V: 94 MB at
 * the defaults, more than the CPU's caches, so the rows come from memory as they do in a long conversation.
 *   selected  K of the N rows per layer (default 512, a random ascending set: DSA's selection), gathered;
 *   dense     all N rows, in order (attention without DSA).
 * Each figure is the fastest of R passes (default 15) over all the layers, in µs per decode step, and the K/V
 * bytes it read over that time.  Prints a table, or with --json one object:
 *   {"cpu":"avx512","ctx":4096,"topk":512,"layers":30,"results":[{"op":"selected","us":...,"gbps":...}, ...]}
 * Timings depend on the machine and its load: they are never pass/fail.
 */
#include "bench_util.h"
#include "kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { KVH = 3, G = 3, D = 64 };

int main(int argc, char **argv) {
    int json = 0, N = 4096, k = 512, L = 30, reps = 15;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--ctx") && i + 1 < argc) N = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--topk") && i + 1 < argc) k = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--layers") && i + 1 < argc) L = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_attn [--json] [--ctx N] [--topk K] [--layers L] [--reps R]\n");
            return 2;
        }
    }
    if (N < 1 || k < 1 || k > N || L < 1 || reps < 1) {
        fprintf(stderr, "bench_attn: need 1 <= topk <= ctx, layers >= 1, reps >= 1\n");
        return 2;
    }
    dsa_kernels_init(0);
    size_t stride = (size_t)KVH * D, per = (size_t)N * stride;
    uint16_t *K = malloc(per * L * sizeof *K), *V = malloc(per * L * sizeof *V);
    int32_t *idx = malloc((size_t)k * L * sizeof *idx);
    float *q = malloc((size_t)KVH * G * D * sizeof *q), *o = malloc((size_t)KVH * G * D * sizeof *o);
    float *p = malloc((size_t)G * N * sizeof *p);
    if (!K || !V || !idx || !q || !o || !p) {
        fprintf(stderr, "bench_attn: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < per * L; i++) {
        K[i] = dsa_f32_to_f16(uniform());
        V[i] = dsa_f32_to_f16(uniform());
    }
    for (int i = 0; i < KVH * G * D; i++) q[i] = uniform();
    for (int l = 0; l < L; l++) /* k of N, ascending, each row as likely as any other (selection sampling) */
        for (int s = 0, c = 0; s < N && c < k; s++)
            if ((int)(rnd() % (uint32_t)(N - s)) < k - c) idx[(size_t)l * k + c++] = s;

    double best[2] = {1e30, 1e30};
    volatile float sink = 0;
    for (int r = 0; r < reps; r++)
        for (int op = 0; op < 2; op++) { /* alternating, so a slow spell of a shared machine hits both */
            double t0 = now();
            for (int l = 0; l < L; l++)
                for (int h = 0; h < KVH; h++)
                    dsa_attn_heads_f16(G, op ? N : k, D, K + per * l + h * D, V + per * l + h * D, stride,
                                       op ? NULL : idx + (size_t)l * k, q + h * G * D, 0.125f, p, (size_t)N,
                                       o + h * G * D);
            double t = now() - t0;
            sink += o[0];
            if (t < best[op]) best[op] = t;
        }
    (void)sink;
    if (json) printf("{\"cpu\":\"%s\",\"ctx\":%d,\"topk\":%d,\"layers\":%d,\"results\":[", dsa_cpu_name(), N, k, L);
    else printf("%-9s %10s %8s   (%s, %d layers, ctx %d, k %d)\n", "op", "us/step", "GB/s", dsa_cpu_name(), L, N, k);
    for (int op = 0; op < 2; op++) {
        double bytes = 2.0 * (op ? N : k) * KVH * D * sizeof(uint16_t) * L, us = best[op] * 1e6;
        const char *name = op ? "dense" : "selected";
        double gbps = bytes / best[op] / 1e9;
        if (json) printf("%s{\"op\":\"%s\",\"us\":%.1f,\"gbps\":%.2f}", op ? "," : "", name, us, gbps);
        else printf("%-9s %10.1f %8.2f\n", name, us, gbps);
    }
    if (json) printf("]}\n");
    free(K), free(V), free(idx), free(q), free(o), free(p);
    return 0;
}
