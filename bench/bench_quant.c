/*
 * bench_quant — speed of the tensor type kernels at each SIMD level this CPU has.
 *
 *   bench_quant [--json] [--n N] [--rows R] [--ms T]
 *
 * For each weight type: vec_dot of R rows of N weights (default 128 × 1536: 120 KB of q4_1, 768 KB of f32, so the
 * rows stay in L2 and the figure is the kernel's, not the memory's) against one quantised activation row, as
 * ns per row and GB/s of weight bytes; for the activation types, from_float of one row.  Each figure is the
 * fastest pass over the rows in T ms (default 400) of alternating between the levels.  Prints a table, or with
 * --json one object:
 *   {"cpu":"avx512","n":1536,"rows":128,"results":[{"op":"vec_dot","type":"q4_1","level":"avx2",
 *    "ns":..., "gbps":...}, ...]}
 * Then, for the types with tile kernels (the matmul path, kernels/cpu/mm_tile*.c): pack + tile of the same R
 * weight rows against A = 1, 4, 16 and 64 activation rows, as ns per (weight row × activation row), which is
 * comparable with vec_dot's ns per row ("-" where a level has no tiles and matmul calls vec_dot); "op":"tile"
 * with "acts" in --json.  --acts LIST changes the A values.
 * Timings depend on the machine and its load: they are never pass/fail.
 */
#include "bench_util.h"
#include "kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int is_weight(enum dsa_type t) { return dsa_traits_ref(t) && dsa_traits_ref(t)->is_weight; }
static const char *const LEVELS[4] = {"", "generic", "avx2", "avx512"};

/* Random weights with finite f16 scales (the bytes a real model holds are no faster or slower to multiply). */
static void *make_weights(enum dsa_type t, int n, int rows) {
    const dsa_type_traits *tt = dsa_traits_ref(t);
    size_t rs = dsa_row_size(t, n), size = rs * (size_t)rows;
    uint8_t *w = malloc(size);
    for (size_t i = 0; i < size; i++) w[i] = (uint8_t)rnd();
    if (t == DSA_F32)
        for (size_t i = 0; i < size / 4; i++) ((float *)w)[i] = uniform();
    if (t == DSA_F16 || t == DSA_BF16)
        for (size_t i = 0; i < size / 2; i++) {
            uint16_t h = t == DSA_F16 ? dsa_f32_to_f16(uniform()) : (uint16_t)(0x3c00 | (rnd() & 0x807f));
            memcpy(w + 2 * i, &h, 2);
        }
    if (tt->blck > 1) {
        int doff = t == DSA_Q6_K ? 208 : 0, moff = t == DSA_Q4_1 || t == DSA_Q5_1 || t == DSA_Q4_K || t == DSA_Q5_K ? 2 : -1;
        for (size_t b = 0; b < size / tt->type_size; b++) {
            uint16_t d = dsa_f32_to_f16(0.01f * (1 + uniform())), m = dsa_f32_to_f16(-0.05f);
            memcpy(w + b * tt->type_size + doff, &d, 2);
            if (moff >= 0) memcpy(w + b * tt->type_size + moff, &m, 2);
        }
    }
    return w;
}

static volatile float g_sink;

/* The machine may be shared: time many short passes (well under a scheduler time slice) and keep the fastest,
 * which is the one nobody interrupted; and alternate between the levels in ROUNDS rounds, so that a slow spell
 * hits them all alike. */
#define ROUNDS 8

static double time_dots(const dsa_type_traits *tt, const uint8_t *w, size_t rs, int rows, int n, const void *a,
                        double min_s, double best) {
    double start = now();
    float s = 0;
    do {
        double t0 = now();
        for (int r = 0; r < rows; r++) s += tt->vec_dot(n, w + (size_t)r * rs, a);
        best = fmin(best, (now() - t0) * 1e9 / rows);
    } while (now() - start < min_s);
    g_sink = s;
    return best;
}

/* pack + tile of all the rows against nact activation rows: ns per (weight row × activation row) */
static double time_tiles(const dsa_type_traits *tt, const uint8_t *w, size_t rs, int rows, int n, const void *a,
                         size_t as, const int32_t *sums, int nact, void *panel, float *y, double min_s, double best) {
    double start = now();
    do {
        double t0 = now();
        for (int i0 = 0; i0 < rows; i0 += tt->mm_nr) {
            int nr = rows - i0 < tt->mm_nr ? rows - i0 : tt->mm_nr;
            if (nact == 1 && tt->mm_gemv && nr == tt->mm_nr) { /* what dsa_matmul runs for decode */
                tt->mm_gemv(n, w + (size_t)i0 * rs, rs, a, sums, y + i0);
                continue;
            }
            tt->mm_pack(n, w + (size_t)i0 * rs, rs, nr, panel);
            tt->mm_tile(n, panel, a, as, sums, nact, y + i0, (size_t)rows, nr);
        }
        best = fmin(best, (now() - t0) * 1e9 / rows / nact);
    } while (now() - start < min_s);
    g_sink = y[0];
    return best;
}

static double time_quantize(const dsa_type_traits *at, const float *x, void *y, int n, double min_s, double best) {
    double start = now();
    do {
        double t0 = now();
        for (int k = 0; k < 16; k++) at->from_float(x, y, n);
        best = fmin(best, (now() - t0) * 1e9 / 16);
    } while (now() - start < min_s);
    return best;
}

int main(int argc, char **argv) {
    int json = 0, n = 1536, rows = 128, nacts = 4;
    int acts[8] = {1, 4, 16, 64};
    double ms = 400;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--n") && i + 1 < argc) n = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ms") && i + 1 < argc) ms = atof(argv[++i]);
        else if (!strcmp(argv[i], "--acts") && i + 1 < argc) {
            nacts = 0;
            for (char *tok = strtok(argv[++i], ","); tok && nacts < 8; tok = strtok(NULL, ",")) acts[nacts++] = atoi(tok);
        }
        else {
            fprintf(stderr, "usage: bench_quant [--json] [--n N] [--rows R] [--ms T] [--acts A1,A2,..]\n");
            return 2;
        }
    }
    int max_act = 1;
    for (int k = 0; k < nacts; k++) max_act = acts[k] > max_act ? acts[k] : max_act;
    if (n <= 0 || n % 32 || rows <= 0 || ms <= 0 || nacts == 0 || acts[0] <= 0 || max_act > 4096) {
        fprintf(stderr, "bench_quant: --n must be a positive multiple of 32, --rows and --ms positive\n");
        return 2;
    }
    dsa_kernels_init(0);
    int max_level = 1;
    const char *cpu = dsa_cpu_name();
    for (int l = 1; l <= 3; l++)
        if (!strcmp(cpu, LEVELS[l])) max_level = l;

    float *x = malloc(sizeof(float) * (size_t)n);
    for (int i = 0; i < n; i++) x[i] = uniform();
    void *act = malloc(dsa_row_size(DSA_Q8_1, n) + dsa_row_size(DSA_Q8_K, n) + sizeof(float) * (size_t)n);

    if (json) printf("{\"cpu\":\"%s\",\"n\":%d,\"rows\":%d,\"results\":[", cpu, n, rows);
    else printf("n = %d, %d rows; ns per row (GB/s of weights)\n%-6s %20s %20s %20s\n", n, rows, "type",
                LEVELS[1], LEVELS[2], LEVELS[3]);
    int first = 1;
    for (int k = 0; k < DSA_TYPE_COUNT; k++) {
        enum dsa_type t = (enum dsa_type)k;
        if (!is_weight(t)) continue;
        const dsa_type_traits *rt = dsa_traits_ref(t);
        if (n % rt->blck) continue;
        size_t rs = dsa_row_size(t, n);
        uint8_t *w = make_weights(t, n, rows);
        dsa_traits_ref(rt->act)->from_float(x, act, n);
        if (!json) printf("%-6s", rt->name);
        double best[4] = {INFINITY, INFINITY, INFINITY, INFINITY};
        for (int round = 0; round < ROUNDS; round++)
            for (int l = 1; l <= max_level; l++) {
                dsa_kernels_init(l);
                best[l] = time_dots(dsa_traits(t), w, rs, rows, n, act, ms * 1e-3 / ROUNDS, best[l]);
            }
        for (int l = 1; l <= max_level; l++) {
            double gbps = (double)rs / best[l];
            if (json)
                printf("%s{\"op\":\"vec_dot\",\"type\":\"%s\",\"level\":\"%s\",\"ns\":%.2f,\"gbps\":%.3f}",
                       first ? "" : ",", rt->name, LEVELS[l], best[l], gbps), first = 0;
            else printf(" %11.1f (%5.1f)", best[l], gbps);
        }
        if (!json) printf("\n");
        free(w);
    }
    const enum dsa_type act_types[] = {DSA_Q8_1, DSA_Q8_K};
    for (size_t k = 0; k < 2; k++) {
        const dsa_type_traits *at = dsa_traits_ref(act_types[k]);
        if (n % at->blck) continue;
        if (!json) printf("%-6s", at->name);
        double best[4] = {INFINITY, INFINITY, INFINITY, INFINITY};
        for (int round = 0; round < ROUNDS; round++)
            for (int l = 1; l <= max_level; l++) {
                dsa_kernels_init(l);
                best[l] = time_quantize(dsa_traits(act_types[k]), x, act, n, ms * 1e-3 / ROUNDS, best[l]);
            }
        for (int l = 1; l <= max_level; l++) {
            if (json)
                printf("%s{\"op\":\"from_float\",\"type\":\"%s\",\"level\":\"%s\",\"ns\":%.2f,\"gbps\":%.3f}",
                       first ? "" : ",", at->name, LEVELS[l], best[l], 4.0 * n / best[l]), first = 0;
            else printf(" %11.1f (%5.1f)", best[l], 4.0 * n / best[l]);
        }
        if (!json) printf("   (from_float; GB/s of floats)\n");
    }
    /* tiles */
    float *xs = malloc(sizeof(float) * (size_t)n * max_act);
    for (size_t i = 0; i < (size_t)n * max_act; i++) xs[i] = uniform();
    void *as_buf = malloc(dsa_row_size(DSA_Q8_K, n) * (size_t)max_act + dsa_row_size(DSA_Q8_1, n) * (size_t)max_act);
    int32_t *sums = malloc(sizeof(int32_t) * (size_t)(n / 32) * max_act);
    float *y = malloc(sizeof(float) * (size_t)rows * max_act);
    if (!json) printf("tiles: pack + tile (A=1: the fused mm_gemv where a level has one), ns per weight row per "
                      "activation row\n");
    for (int k = 0; k < DSA_TYPE_COUNT; k++) {
        enum dsa_type t = (enum dsa_type)k;
        if (!is_weight(t)) continue;
        const dsa_type_traits *rt = dsa_traits_ref(t);
        if (n % rt->blck || !rt->mm_tile) continue;
        size_t rs = dsa_row_size(t, n), as = dsa_row_size(rt->act, n);
        uint8_t *w = make_weights(t, n, rows);
        for (int c = 0; c < max_act; c++) {
            dsa_traits_ref(rt->act)->from_float(xs + (size_t)c * n, (char *)as_buf + (size_t)c * as, n);
            if (rt->act == DSA_Q8_1) dsa_q8_1_sums((char *)as_buf + (size_t)c * as, n, sums + (size_t)c * (n / 32));
        }
        size_t psize = (size_t)(n / rt->blck) * rt->mm_panel_blk;
        for (int l = 1; l <= max_level; l++) {
            dsa_kernels_init(l);
            size_t p = (size_t)(n / rt->blck) * dsa_traits(t)->mm_panel_blk;
            psize = p > psize ? p : psize;
        }
        void *panel = aligned_alloc(64, (psize + 63) / 64 * 64);
        for (int ai = 0; ai < nacts; ai++) {
            int na = acts[ai];
            if (!json) printf("%-6s A=%-3d", rt->name, na);
            double best[4] = {INFINITY, INFINITY, INFINITY, INFINITY};
            for (int round = 0; round < ROUNDS; round++)
                for (int l = 1; l <= max_level; l++) {
                    dsa_kernels_init(l);
                    if (dsa_traits(t)->mm_tile)
                        best[l] = time_tiles(dsa_traits(t), w, rs, rows, n, as_buf, as, sums, na, panel, y,
                                             ms * 1e-3 / ROUNDS / nacts, best[l]);
                }
            for (int l = 1; l <= max_level; l++) {
                if (isinf(best[l])) { /* no tiles at this level: matmul calls vec_dot */
                    if (!json) printf(" %20s", "-");
                    continue;
                }
                if (json)
                    printf("%s{\"op\":\"tile\",\"type\":\"%s\",\"level\":\"%s\",\"acts\":%d,\"ns\":%.2f}", first ? "" : ",",
                           rt->name, LEVELS[l], na, best[l]), first = 0;
                else printf(" %20.1f", best[l]);
            }
            if (!json) printf("\n");
        }
        free(panel);
        free(w);
    }
    if (json) printf("]}\n");
    free(xs), free(as_buf), free(sums), free(y);
    free(x), free(act);
    return 0;
}
