/*
 * Small vector ops for attention over the f16 KV cache.  The plain-C versions are the reference; the AVX2+F16C
 * ones (ops_avx2.c) are chosen at run time.
 */
#include "kernels.h"


void dsa_axpy_f16_avx2(int n, float a, const uint16_t *x, float *y);
float dsa_dot_f16_avx2(int n, const uint16_t *x, const float *y);
void dsa_f32_to_f16_row_avx2(int n, const float *src, uint16_t *dst);

static int have_avx2 = -1;

static int use_avx2(void) {
    if (have_avx2 < 0) {
#if defined(__x86_64__)
        __builtin_cpu_init();
        have_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c") && dsa_cpu_name()[0] != 'g'; /* DSA_CPU=generic wins */
#else
        have_avx2 = 0;
#endif
    }
    return have_avx2;
}

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
