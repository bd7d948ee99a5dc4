/*
 * Attention ops over an f16 cache (kernels/cpu/ops.c): at every kernel level, scores and the weighted V sum
 * equal a float64 computation within float rounding, and a row's result does not depend on how many rows the
 * call covered (the header promises it; prefill and decode rely on it); softmax equals float64 within float rounding.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "testutil.h"

static uint64_t rng = 88172645463325252ull;
static double urand(void) { /* xorshift64, uniform in [-1, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1.0p-52 - 1.0;
}

static void check_softmax(const char *name);
static void check_swiglu(const char *name);

static void check_level(int level, const char *name) {
    dsa_kernels_init(level);
    static const int dims[] = {64, 128, 80, 32, 20, 8};
    const int n = 300;
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        int d = dims[di];
        size_t stride = (size_t)d * 3 + 8; /* rows of a [pos][kv_head][dim] cache: not contiguous */
        uint16_t *K = malloc((size_t)n * stride * sizeof *K), *V = malloc((size_t)n * stride * sizeof *V);
        float *q = malloc((size_t)d * sizeof *q), *sc = malloc((size_t)n * sizeof *sc);
        float *sc5 = malloc(5 * sizeof *sc5), *o = malloc((size_t)d * sizeof *o), *o5 = malloc((size_t)d * sizeof *o5);
        float *w = malloc((size_t)n * sizeof *w);
        if (!K || !V || !q || !sc || !sc5 || !o || !o5 || !w) abort();
        for (size_t i = 0; i < (size_t)n * stride; i++) {
            K[i] = dsa_f32_to_f16((float)(urand() * 4));
            V[i] = dsa_f32_to_f16((float)urand());
        }
        for (int i = 0; i < d; i++) q[i] = (float)(urand() * 3);
        for (int s = 0; s < n; s++) w[s] = (float)((urand() + 1) / n);
        float scale = 1.0f / sqrtf((float)d);

        dsa_attn_scores_f16(n, d, K, stride, q, scale, sc);
        double worst = 0;
        for (int s = 0; s < n; s++) {
            double ref = 0, mag = 0;
            for (int i = 0; i < d; i++) {
                double t = (double)dsa_f16_to_f32(K[(size_t)s * stride + i]) * q[i];
                ref += t;
                mag += fabs(t);
            }
            ref *= scale;
            double err = fabs(sc[s] - ref) / ((mag * scale) * 0x1.0p-24 * (d + 2));
            if (err > worst) worst = err;
        }
        CHECK(worst <= 1.0, "%s d=%d: scores off by %.2f of the float bound", name, d, worst);
        dsa_attn_scores_f16(5, d, K, stride, q, scale, sc5);
        CHECK(memcmp(sc, sc5, 5 * sizeof *sc) == 0, "%s d=%d: a score depends on how many rows were scored", name, d);

        dsa_attn_sum_f16(n, d, w, V, stride, o);
        worst = 0;
        for (int i = 0; i < d; i++) {
            double ref = 0, mag = 0;
            for (int s = 0; s < n; s++) {
                double t = (double)w[s] * dsa_f16_to_f32(V[(size_t)s * stride + i]);
                ref += t;
                mag += fabs(t);
            }
            double err = fabs(o[i] - ref) / (mag * 0x1.0p-24 * (n + 2));
            if (err > worst) worst = err;
        }
        CHECK(worst <= 1.0, "%s d=%d: weighted sum off by %.2f of the float bound", name, d, worst);
        /* o is overwritten, not accumulated into */
        for (int i = 0; i < d; i++) o5[i] = 1e30f;
        dsa_attn_sum_f16(5, d, w, V, stride, o5);
        double ref0 = 0;
        for (int s = 0; s < 5; s++) ref0 += (double)w[s] * dsa_f16_to_f32(V[(size_t)s * stride]);
        CHECK(fabs(o5[0] - ref0) < 1e-5, "%s d=%d: sum of 5 rows %g, want %g", name, d, o5[0], ref0);
        /* G query heads sharing this KV head at once: each head the bits of its own three calls */
        for (int G = 1; G <= 4; G++)
            for (int sparse = 0; sparse < 2; sparse++) {
                int m = sparse ? 77 : n;
                int32_t idx[77];
                for (int i = 0; i < 77; i++) idx[i] = (int32_t)((i * 37 + 5) % n);
                float *qg = malloc((size_t)G * d * sizeof *qg), *pg = malloc((size_t)G * (n + 3) * sizeof *pg);
                float *og = malloc((size_t)G * d * sizeof *og), *p1 = malloc((size_t)n * sizeof *p1);
                float *o1 = malloc((size_t)d * sizeof *o1);
                if (!qg || !pg || !og || !p1 || !o1) abort();
                for (int i = 0; i < G * d; i++) qg[i] = (float)(urand() * 3);
                dsa_attn_heads_f16(G, m, d, K, V, stride, sparse ? idx : NULL, qg, scale, pg, (size_t)n + 3, og);
                int diff = 0;
                for (int g = 0; g < G; g++) {
                    if (sparse) dsa_attn_scores_f16_idx(m, d, K, stride, idx, qg + (size_t)g * d, scale, p1);
                    else dsa_attn_scores_f16(m, d, K, stride, qg + (size_t)g * d, scale, p1);
                    dsa_softmax(m, p1);
                    if (sparse) dsa_attn_sum_f16_idx(m, d, p1, V, stride, idx, o1);
                    else dsa_attn_sum_f16(m, d, p1, V, stride, o1);
                    diff += memcmp(p1, pg + (size_t)g * (n + 3), (size_t)m * sizeof *p1) != 0;
                    diff += memcmp(o1, og + (size_t)g * d, (size_t)d * sizeof *o1) != 0;
                }
                CHECK(diff == 0, "%s d=%d: %d heads at once%s differ from one head at a time (%d)", name, d, G,
                      sparse ? " (selected rows)" : "", diff);
                /* a decode step splits these over threads: the scores in slices of positions, the sum in slices
                 * of 8·k dims (output rows of stride d + 5); each piece must give the whole call's bits */
                float *ps = malloc((size_t)G * (n + 3) * sizeof *ps), *os = malloc((size_t)G * (d + 5) * sizeof *os);
                if (!ps || !os) abort();
                for (int s0 = 0, sl = 1; s0 < m; s0 += sl, sl = sl * 3 % 41 + 1)
                    dsa_attn_scores_f16_g(G, s0 + sl < m ? sl : m - s0, d, sparse ? K : K + (size_t)s0 * stride, stride,
                                          sparse ? idx + s0 : NULL, qg, scale, ps + s0, (size_t)n + 3);
                for (int g = 0; g < G; g++) dsa_softmax(m, ps + (size_t)g * (n + 3));
                diff = 0;
                for (int g = 0; g < G; g++)
                    diff += memcmp(ps + (size_t)g * (n + 3), pg + (size_t)g * (n + 3), (size_t)m * sizeof *ps) != 0;
                for (int i0 = 0, w8 = d % 8 ? d : 8; i0 < d; i0 += w8, w8 = w8 == 8 ? 32 : 8) {
                    int wd = i0 + w8 <= d ? w8 : d - i0; /* (slices of a multiple of 8 dims, as the contract says) */
                    dsa_attn_sum_f16_g(G, m, wd, ps, (size_t)n + 3, V + i0, stride, sparse ? idx : NULL, os + i0,
                                       (size_t)d + 5);
                }
                for (int g = 0; g < G; g++)
                    diff += memcmp(os + (size_t)g * (d + 5), og + (size_t)g * d, (size_t)d * sizeof *os) != 0;
                CHECK(diff == 0, "%s d=%d G=%d%s: attention in slices differs from one call (%d)", name, d, G,
                      sparse ? " (selected rows)" : "", diff);
                free(ps), free(os);
                free(qg), free(pg), free(og), free(p1), free(o1);
            }
        free(K), free(V), free(q), free(sc), free(sc5), free(o), free(o5), free(w);
    }
    check_softmax(name);
    check_swiglu(name);
}

/* softmax against float64, in two parts that hold whatever the summation order: each probability's ratio to the
 * largest one is e^(x - max) (with x - max as float computes it) within 6·2^-24 relative (or 1e-37 absolute, where
 * it is below float's normal range), and the probabilities add up to 1 within (n + 8)·2^-24.  Lengths around the
 * vector width, spreads up to where e^x underflows. */
static void check_softmax(const char *name) {
    static const int ns[] = {1, 2, 7, 8, 9, 15, 16, 17, 31, 100, 513, 4099};
    static const double spread[] = {0, 1, 30, 200};
    float *x = malloc(4099 * sizeof *x), *y = malloc(4099 * sizeof *y);
    if (!x || !y) abort();
    double worst = 0;
    int bad = 0, cases = 0;
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
        for (size_t si = 0; si < sizeof spread / sizeof spread[0]; si++) {
            int n = ns[ni], im = 0;
            for (int i = 0; i < n; i++) x[i] = (float)(urand() * spread[si] + 7);
            for (int i = 0; i < n; i++) im = x[i] > x[im] ? i : im;
            memcpy(y, x, (size_t)n * sizeof *x);
            dsa_softmax(n, y);
            cases++;
            int off = 0;
            double sum = 0;
            for (int i = 0; i < n; i++) {
                double ref = exp((double)(x[i] - x[im])), got = (double)y[i] / y[im], err = fabs(got - ref);
                sum += y[i];
                if (ref > 0x1p-126 && err / ref > worst) worst = err / ref;
                if (!(err <= 6 * 0x1p-24 * ref || err <= 1e-37)) off++;
            }
            if (!(fabs(sum - 1) <= (n + 8) * 0x1p-24)) off++;
            if (off && bad++ < 3)
                CHECK(0, "%s: softmax n=%d spread %g: %d probabilities off float64 (sum %.9g)", name, n, spread[si],
                      off, sum);
            float y2[8];
            if (n >= 8) { /* the same values give the same bits */
                memcpy(y2, x, sizeof y2);
                dsa_softmax(8, y2);
                memcpy(y, x, 8 * sizeof *x);
                dsa_softmax(8, y);
                CHECK(memcmp(y, y2, sizeof y2) == 0, "%s: softmax of the same 8 values differs", name);
            }
        }
    CHECK(bad == 0, "%s: softmax: %d of %d cases off (worst relative error %.3g)", name, bad, cases, worst);
    float one[1] = {-1e30f};
    dsa_softmax(1, one);
    CHECK(one[0] == 1.0f, "%s: softmax of one value is %g", name, one[0]);
    free(x), free(y);
}

/* SwiGLU's gate against float64: x·σ(x)·u within 8·2^-24 relative (or, where e^-|x| underflows, absolute), at ±0,
 * for NaN; and each element's bits do not depend on the call's length or its place in it
 * (the vector tail). */
static void check_swiglu(const char *name) {
    enum { N = 1000 };
    float *g = malloc(N * sizeof *g), *u = malloc(N * sizeof *u), *x = malloc(N * sizeof *x);
    if (!g || !u || !x) abort();
    static const double scale[] = {1e-3, 1, 8, 40, 200};
    for (int i = 0; i < N; i++) {
        x[i] = (float)(urand() * scale[i % 5]);
        u[i] = (float)(urand() * 3);
    }
    x[0] = 0.0f, x[1] = -0.0f, x[2] = 88.0f, x[3] = -88.0f, x[4] = 150.0f, x[5] = -150.0f, x[6] = NAN;
    memcpy(g, x, N * sizeof *g);
    dsa_swiglu(N, g, u);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        if (isnan(x[i])) {
            bad += !isnan(g[i]);
            continue;
        }
        double ref = (double)x[i] / (1 + exp(-(double)x[i])) * u[i], err = fabs(g[i] - ref);
        /* below e^-87.3 the AVX2 exponential is 0, so a result under |x·u|·1.2e-38 may be 0 */
        if (!(err <= 8 * 0x1p-24 * fabs(ref) || err <= 1e-37 + fabs((double)x[i] * u[i]) * 1.2e-38)) {
            if (bad++ < 3) fprintf(stderr, "%s: swiglu(%.9g, %.9g) = %.9g, float64 %.9g\n", name, x[i], u[i], g[i], ref);
        }
    }
    CHECK(bad == 0, "%s: swiglu: %d of %d results off float64", name, bad, N);
    CHECK(signbit(g[1]) != signbit(u[1]) || u[1] == 0, "%s: swiglu(-0) lost its sign", name);
    int diff = 0;
    for (int i = 12; i < 40; i++) { /* one element alone, and at each of the 13 places of a call of 13 */
        float a = x[i], b[13];
        dsa_swiglu(1, &a, u + i);
        for (int at = 0; at < 13; at++) {
            memcpy(b, x + i - at, sizeof b);
            dsa_swiglu(13, b, u + i - at);
            diff += memcmp(&a, &b[at], sizeof a) != 0;
        }
    }
    CHECK(diff == 0, "%s: swiglu: %d elements differ between a call of 1 and a call of 13", name, diff);
    free(g), free(u), free(x);
}

int main(void) {
    check_level(1, "generic");
    dsa_kernels_init(0);
    const char *best = dsa_cpu_name();
    if (strcmp(best, "generic") != 0) check_level(2, "avx2");
    if (strcmp(best, "avx512") == 0) check_level(3, "avx512");
    dsa_kernels_init(0);
    return tu_finish("test_ops");
}
