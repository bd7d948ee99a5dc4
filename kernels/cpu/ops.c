/*
 * Small vector ops for attention over the f16 KV cache.  The plain-C versions are the reference; the AVX2+F16C
 * ones (ops_avx2.c) are chosen at run time.
 */
#include "kernels.h"

#include <string.h>


void dsa_axpy_f16_avx2(int n, float a, const uint16_t *x, float *y);
float dsa_dot_f16_avx2(int n, const uint16_t *x, const float *y);
void dsa_f32_to_f16_row_avx2(int n, const float *src, uint16_t *dst);

/* The quant dispatcher already decided what this CPU runs (and honours DSA_CPU=generic); every CPU it calls
 * "avx2" or "avx512" has F16C too.  A benign race: every thread computes the same value. */
static _Atomic int have_avx2 = -1;

static int use_avx2(void) {
    int v = have_avx2;
    if (v < 0) have_avx2 = v = strcmp(dsa_cpu_name(), "generic") != 0;
    return v;
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
