/*
 * Small vector ops for attention over the f16 KV cache.  The plain-C versions are the reference; the AVX2+F16C
 * ones (ops_avx2.c) are chosen at run time.
 */
#include "kernels.h"
#include "ops_impl.h"

#include <math.h>
#include <string.h>

/* The quant dispatcher decides what this CPU runs (it honours DSA_CPU and dsa_kernels_init, which the tests use to
 * switch levels); every CPU it calls "avx2" or "avx512" has F16C too.  Asked once per call, not cached, so a
 * level switch reaches these ops as well. */
static int use_avx2(void) { return strcmp(dsa_cpu_name(), "generic") != 0; }

void dsa_axpy_f16(int n, float a, const uint16_t *x, float *y) {
#if defined(__x86_64__)
    if (use_avx2()) {
        dsa_axpy_f16_avx2(n, a, x, y);
        return;
    }
#endif
    for (int i = 0; i < n; i++) y[i] += a * dsa_f16_to_f32(x[i]);
}

float dsa_dot_f16(int n, const uint16_t *x, const float *y) {
#if defined(__x86_64__)
    if (use_avx2()) return dsa_dot_f16_avx2(n, x, y);
#endif
    float s = 0;
    for (int i = 0; i < n; i++) s += dsa_f16_to_f32(x[i]) * y[i];
    return s;
}

void dsa_f32_to_f16_row(int n, const float *src, uint16_t *dst) {
#if defined(__x86_64__)
    if (use_avx2()) {
        dsa_f32_to_f16_row_avx2(n, src, dst);
        return;
    }
#endif
    for (int i = 0; i < n; i++) dst[i] = dsa_f32_to_f16(src[i]);
}

void dsa_softmax(int n, float *x) {
#if defined(__x86_64__)
    if (use_avx2()) {
        dsa_softmax_avx2(n, x);
        return;
    }
#endif
    float mx = -INFINITY;
    for (int s = 0; s < n; s++)
        if (x[s] > mx) mx = x[s];
    float sum = 0;
    for (int s = 0; s < n; s++) {
        x[s] = expf(x[s] - mx);
        sum += x[s];
    }
    float inv = 1.0f / sum;
    for (int s = 0; s < n; s++) x[s] *= inv;
}

void dsa_swiglu(int n, float *g, const float *u) {
#if defined(__x86_64__)
    if (use_avx2()) {
        dsa_swiglu_avx2(n, g, u);
        return;
    }
#endif
    for (int i = 0; i < n; i++) {
        float x = g[i], e = expf(-fabsf(x));
        float s = (x >= 0 ? 1.0f : e) / (1.0f + e);
        g[i] = x * s * u[i];
    }
}

static void scores(int n, int d, const uint16_t *K, size_t stride, const int32_t *idx, const float *q, float scale,
                   float *out) {
#if defined(__x86_64__)
    if (use_avx2() && d % 8 == 0) {
        dsa_attn_scores_f16_avx2(n, d, K, stride, idx, q, scale, out);
        return;
    }
#endif
    for (int s = 0; s < n; s++) out[s] = dsa_dot_f16(d, K + (size_t)(idx ? idx[s] : s) * stride, q) * scale;
}

static void wsum(int n, int d, const float *w, const uint16_t *V, size_t stride, const int32_t *idx, float *o) {
#if defined(__x86_64__)
    if (use_avx2() && d % 8 == 0) {
        dsa_attn_sum_f16_avx2(n, d, w, V, stride, idx, o);
        return;
    }
#endif
    memset(o, 0, (size_t)d * sizeof *o);
    for (int s = 0; s < n; s++) dsa_axpy_f16(d, w[s], V + (size_t)(idx ? idx[s] : s) * stride, o);
}

void dsa_attn_scores_f16_g(int G, int n, int d, const uint16_t *K, size_t stride, const int32_t *idx, const float *q,
                           float scale, float *out, size_t ps) {
#if defined(__x86_64__)
    if (use_avx2() && d % 8 == 0) {
        dsa_attn_scores_f16_g_avx2(G, n, d, K, stride, idx, q, scale, out, ps);
        return;
    }
#endif
    for (int g = 0; g < G; g++) scores(n, d, K, stride, idx, q + (size_t)g * d, scale, out + (size_t)g * ps);
}

void dsa_attn_sum_f16_g(int G, int n, int d, const float *w, size_t ps, const uint16_t *V, size_t stride,
                        const int32_t *idx, float *o, size_t os) {
#if defined(__x86_64__)
    if (use_avx2() && d % 8 == 0) {
        dsa_attn_sum_f16_g_avx2(G, n, d, w, ps, V, stride, idx, o, os);
        return;
    }
#endif
    for (int g = 0; g < G; g++) wsum(n, d, w + (size_t)g * ps, V, stride, idx, o + (size_t)g * os);
}

void dsa_attn_heads_f16(int G, int n, int d, const uint16_t *K, const uint16_t *V, size_t stride, const int32_t *idx,
                        const float *q, float scale, float *p, size_t pstride, float *o) {
    dsa_attn_scores_f16_g(G, n, d, K, stride, idx, q, scale, p, pstride);
    for (int g = 0; g < G; g++) dsa_softmax(n, p + (size_t)g * pstride);
    dsa_attn_sum_f16_g(G, n, d, p, pstride, V, stride, idx, o, (size_t)d);
}

void dsa_attn_scores_f16(int n, int d, const uint16_t *K, size_t stride, const float *q, float scale, float *out) {
    scores(n, d, K, stride, NULL, q, scale, out);
}

void dsa_attn_sum_f16(int n, int d, const float *w, const uint16_t *V, size_t stride, float *o) {
    wsum(n, d, w, V, stride, NULL, o);
}

void dsa_attn_scores_f16_idx(int n, int d, const uint16_t *K, size_t stride, const int32_t *idx, const float *q,
                             float scale, float *out) {
    scores(n, d, K, stride, idx, q, scale, out);
}

void dsa_attn_sum_f16_idx(int n, int d, const float *w, const uint16_t *V, size_t stride, const int32_t *idx,
                          float *o) {
    wsum(n, d, w, V, stride, idx, o);
}
