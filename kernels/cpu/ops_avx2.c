/* AVX2 + F16C versions of ops.c (this file is compiled with -mavx2 -mfma -mf16c). */
#include "kernels.h"
#include "ops_impl.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>
#include <string.h>

void dsa_axpy_f16_avx2(int n, float a, const uint16_t *x, float *y) {
    __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 vx = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, vx, _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++) y[i] += a * dsa_f16_to_f32(x[i]);
}

float dsa_dot_f16_avx2(int n, const uint16_t *x, const float *y) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))), _mm256_loadu_ps(y + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i + 8))),
                             _mm256_loadu_ps(y + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))), _mm256_loadu_ps(y + i), s0);
    s0 = _mm256_add_ps(s0, s1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    float s = _mm_cvtss_f32(h);
    for (; i < n; i++) s += dsa_f16_to_f32(x[i]) * y[i];
    return s;
}

void dsa_f32_to_f16_row_avx2(int n, const float *src, uint16_t *dst) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = dsa_f32_to_f16(src[i]);
}

/* e^x for x ≤ 0 (a softmax's x − max, SwiGLU's −|x|), Cephes' expf: x = n·ln2 + r with |r| ≤ ln2/2 (ln2 in two parts, so r is
 * exact), e^r by a degree-7 polynomial, 2^n put into the exponent.  Below −87.3 (where 2^n would leave the normal
 * range) the result is 0; a NaN stays NaN. */
static inline __m256 exp_neg(__m256 x) {
    __m256 lo = _mm256_set1_ps(-87.33654f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(lo, x); /* (NaN passes: max returns its second operand when one is NaN) */
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

void dsa_softmax_avx2(int n, float *x) {
    int i = 0;
    __m256 m8 = _mm256_set1_ps(-INFINITY);
    for (; i + 8 <= n; i += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(x + i));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    float mx = _mm_cvtss_f32(h);
    for (; i < n; i++)
        if (x[i] > mx) mx = x[i];
    /* the last partial group of 8 goes through the same code, padded with −∞ (e^−∞ = 0) */
    __m256 vm = _mm256_set1_ps(mx), sum = _mm256_setzero_ps();
    for (i = 0; i < n; i += 8) {
        float t[8];
        int k = n - i < 8 ? n - i : 8;
        const float *src = x + i;
        if (k < 8) {
            for (int j = 0; j < 8; j++) t[j] = j < k ? x[i + j] : -INFINITY;
            src = t;
        }
        __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(src), vm));
        sum = _mm256_add_ps(sum, e);
        if (k == 8) _mm256_storeu_ps(x + i, e);
        else {
            _mm256_storeu_ps(t, e);
            memcpy(x + i, t, (size_t)k * sizeof *t);
        }
    }
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    __m256 inv = _mm256_set1_ps(1.0f / _mm_cvtss_f32(s4));
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    for (; i < n; i++) x[i] *= _mm_cvtss_f32(_mm256_castps256_ps128(inv));
}

void dsa_swiglu_avx2(int n, float *g, const float *u) {
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f), zero = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) {
        /* the last partial group of 8 goes through the same code, padded with zeros */
        int k = n - i < 8 ? n - i : 8;
        float tg[8], tu[8];
        const float *gs = g + i, *us = u + i;
        if (k < 8) {
            for (int j = 0; j < 8; j++) tg[j] = j < k ? g[i + j] : 0, tu[j] = j < k ? u[i + j] : 0;
            gs = tg, us = tu;
        }
        __m256 x = _mm256_loadu_ps(gs);
        __m256 e = exp_neg(_mm256_or_ps(x, sign)); /* e^-|x| */
        __m256 num = _mm256_blendv_ps(e, one, _mm256_cmp_ps(x, zero, _CMP_GE_OQ));
        __m256 r = _mm256_mul_ps(_mm256_mul_ps(x, _mm256_div_ps(num, _mm256_add_ps(one, e))), _mm256_loadu_ps(us));
        if (k == 8) {
            _mm256_storeu_ps(g + i, r);
        } else {
            _mm256_storeu_ps(tg, r);
            memcpy(g + i, tg, (size_t)k * sizeof *tg);
        }
    }
}

static inline __m256 ld_f16(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

static inline float hsum(__m256 v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* ROW(s): row s of the cache, or row idx[s] when the caller gave an index list (sparse attention). */
#define ROW(base, s) ((base) + (size_t)(idx ? idx[s] : (s)) * stride)

/* Heads of 64: each K row converted once for the G query heads q + 64·g, scores into out + g·ps.  The one-head
 * kernel is this with G = 1 (constant, so q stays in registers), which is what gives the grouped version (below)
 * the same bits. */
static inline __attribute__((always_inline)) void scores64(int G, int n, const uint16_t *K, size_t stride,
                                                           const int32_t *idx, const float *restrict q, float scale,
                                                           float *restrict out, size_t ps) {
    for (int s = 0; s < n; s++) {
        const uint16_t *k = ROW(K, s);
        __m256 k0 = ld_f16(k), k1 = ld_f16(k + 8), k2 = ld_f16(k + 16), k3 = ld_f16(k + 24), k4 = ld_f16(k + 32),
               k5 = ld_f16(k + 40), k6 = ld_f16(k + 48), k7 = ld_f16(k + 56);
        for (int g = 0; g < G; g++) {
            const float *qg = q + (size_t)g * 64;
            __m256 a = _mm256_mul_ps(k0, _mm256_loadu_ps(qg)), b = _mm256_mul_ps(k1, _mm256_loadu_ps(qg + 8));
            a = _mm256_fmadd_ps(k2, _mm256_loadu_ps(qg + 16), a);
            b = _mm256_fmadd_ps(k3, _mm256_loadu_ps(qg + 24), b);
            a = _mm256_fmadd_ps(k4, _mm256_loadu_ps(qg + 32), a);
            b = _mm256_fmadd_ps(k5, _mm256_loadu_ps(qg + 40), b);
            a = _mm256_fmadd_ps(k6, _mm256_loadu_ps(qg + 48), a);
            b = _mm256_fmadd_ps(k7, _mm256_loadu_ps(qg + 56), b);
            out[(size_t)g * ps + s] = hsum(_mm256_add_ps(a, b)) * scale;
        }
    }
}

/* d is a multiple of 8.  Heads of 64 keep q in registers for the whole pass over the keys. */
void dsa_attn_scores_f16_avx2(int n, int d, const uint16_t *K, size_t stride, const int32_t *idx, const float *q,
                              float scale, float *out) {
    if (d == 64) {
        scores64(1, n, K, stride, idx, q, scale, out, 0);
        return;
    }
    for (int s = 0; s < n; s++) {
        const uint16_t *k = ROW(K, s);
        __m256 a = _mm256_setzero_ps();
        for (int i = 0; i < d; i += 8) a = _mm256_fmadd_ps(ld_f16(k + i), _mm256_loadu_ps(q + i), a);
        out[s] = hsum(a) * scale;
    }
}

/* o = Σ_s w[s]·V_s, 64 dims at a time held in registers across all rows. */
void dsa_attn_sum_f16_avx2(int n, int d, const float *w, const uint16_t *V, size_t stride, const int32_t *idx,
                           float *o) {
    int i = 0;
    for (; i + 64 <= d; i += 64) {
        __m256 o0 = _mm256_setzero_ps(), o1 = o0, o2 = o0, o3 = o0, o4 = o0, o5 = o0, o6 = o0, o7 = o0;
        for (int s = 0; s < n; s++) {
            const uint16_t *v = ROW(V, s) + i;
            __m256 a = _mm256_set1_ps(w[s]);
            o0 = _mm256_fmadd_ps(a, ld_f16(v), o0);
            o1 = _mm256_fmadd_ps(a, ld_f16(v + 8), o1);
            o2 = _mm256_fmadd_ps(a, ld_f16(v + 16), o2);
            o3 = _mm256_fmadd_ps(a, ld_f16(v + 24), o3);
            o4 = _mm256_fmadd_ps(a, ld_f16(v + 32), o4);
            o5 = _mm256_fmadd_ps(a, ld_f16(v + 40), o5);
            o6 = _mm256_fmadd_ps(a, ld_f16(v + 48), o6);
            o7 = _mm256_fmadd_ps(a, ld_f16(v + 56), o7);
        }
        _mm256_storeu_ps(o + i, o0);
        _mm256_storeu_ps(o + i + 8, o1);
        _mm256_storeu_ps(o + i + 16, o2);
        _mm256_storeu_ps(o + i + 24, o3);
        _mm256_storeu_ps(o + i + 32, o4);
        _mm256_storeu_ps(o + i + 40, o5);
        _mm256_storeu_ps(o + i + 48, o6);
        _mm256_storeu_ps(o + i + 56, o7);
    }
    for (; i < d; i += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int s = 0; s < n; s++) acc = _mm256_fmadd_ps(_mm256_set1_ps(w[s]), ld_f16(ROW(V, s) + i), acc);
        _mm256_storeu_ps(o + i, acc);
    }
}

/* Grouped-query versions: each K (V) row is converted once and used by all G heads; every head's arithmetic is
 * the one-head kernel's above, operation for operation, so the bits are the same. */
void dsa_attn_scores_f16_g_avx2(int G, int n, int d, const uint16_t *K, size_t stride, const int32_t *idx,
                                const float *q, float scale, float *out, size_t ps) {
    if (d == 64) {
        scores64(G, n, K, stride, idx, q, scale, out, ps);
        return;
    }
    for (int g = 0; g < G; g++) dsa_attn_scores_f16_avx2(n, d, K, stride, idx, q + (size_t)g * d, scale, out + (size_t)g * ps);
}

void dsa_attn_sum_f16_g_avx2(int G, int n, int d, const float *w, size_t ps, const uint16_t *V, size_t stride,
                             const int32_t *idx, float *o, size_t os) {
    if (d % 32) {
        for (int g = 0; g < G; g++) dsa_attn_sum_f16_avx2(n, d, w + (size_t)g * ps, V, stride, idx, o + (size_t)g * os);
        return;
    }
    /* 32 dims at a time: 4 accumulators per head for up to 3 heads and the 4 converted V registers fit the 16 */
    for (int g0 = 0; g0 < G; g0 += 3) {
        int gn = G - g0 < 3 ? G - g0 : 3;
        for (int half = 0; half < d; half += 32) {
            __m256 acc[3][4];
            for (int g = 0; g < 3; g++)
                for (int c = 0; c < 4; c++) acc[g][c] = _mm256_setzero_ps();
            for (int s = 0; s < n; s++) {
                const uint16_t *v = ROW(V, s) + half;
                __m256 v0 = ld_f16(v), v1 = ld_f16(v + 8), v2 = ld_f16(v + 16), v3 = ld_f16(v + 24);
                for (int g = 0; g < gn; g++) {
                    __m256 a = _mm256_set1_ps(w[(size_t)(g0 + g) * ps + s]);
                    acc[g][0] = _mm256_fmadd_ps(a, v0, acc[g][0]);
                    acc[g][1] = _mm256_fmadd_ps(a, v1, acc[g][1]);
                    acc[g][2] = _mm256_fmadd_ps(a, v2, acc[g][2]);
                    acc[g][3] = _mm256_fmadd_ps(a, v3, acc[g][3]);
                }
            }
            for (int g = 0; g < gn; g++)
                for (int c = 0; c < 4; c++) _mm256_storeu_ps(o + (size_t)(g0 + g) * os + half + 8 * c, acc[g][c]);
        }
    }
}
#endif
