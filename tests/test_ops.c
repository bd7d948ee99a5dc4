/*
 * Attention ops over an f16 cache (kernels/cpu/ops.c): at every kernel level, scores and the weighted V sum
 * equal a float64 computation within float rounding, and a row's result does not depend on how many rows the
 * call covered (the header promises it; prefill and decode rely on it).
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
        free(K), free(V), free(q), free(sc), free(sc5), free(o), free(o5), free(w);
    }
}

int main(void) {
    check_level(1, "generic");
    dsa_kernels_init(0);
    const char *best = dsa_cpu_name();
    if (strcmp(best, "generic") != 0) check_level(2, "avx2");
    if (strcmp(best, "avx512") == 0) check_level(3, "avx512");
    return tu_finish("test_ops");
}
