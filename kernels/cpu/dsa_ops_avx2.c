/* AVX2+F16C index score (see dsa_indexer_scores).  An e4m3 byte becomes an f16 with the same bits moved: sign to
 * bit 15, exponent and mantissa shifted left by 7.  That f16 is the e4m3 value times 2^-8 exactly (normal and
 * subnormal alike: e4m3's exponent bias is 7, f16's 15), so the 2^8 goes into the per-key scale. */
#include "kernels.h"
#include "ops_impl.h"

#if defined(__x86_64__)
#include <immintrin.h>

static inline __m256 ld_fp8(const uint8_t *p) {
    __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)p));
    __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x80)), 8),
                             _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x7F)), 7));
    return _mm256_cvtph_ps(h);
}

static inline float hsum(__m256 v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* d is a multiple of 8, at most 256. */
void dsa_indexer_scores_avx2(int n, int H, int d, const uint8_t *K8, const float *kscale, const float *q,
                             const float *w, float *out) {
    int nc = d / 8;
    __m256 kf[32];
    for (int s = 0; s < n; s++) {
        const uint8_t *ks = K8 + (size_t)s * d;
        for (int c = 0; c < nc; c++) kf[c] = ld_fp8(ks + 8 * c);
        float acc = 0;
        for (int j = 0; j < H; j++) {
            const float *qj = q + (size_t)j * d;
            __m256 a = _mm256_mul_ps(kf[0], _mm256_loadu_ps(qj));
            for (int c = 1; c < nc; c++) a = _mm256_fmadd_ps(kf[c], _mm256_loadu_ps(qj + 8 * c), a);
            float dot = hsum(a);
            if (dot > 0) acc += w[j] * dot;
        }
        out[s] = kscale[s] * 256.0f * acc;
    }
}
#endif
