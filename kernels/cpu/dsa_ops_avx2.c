/* AVX2+F16C index score (see dsa_indexer_scores), 8 keys at a time.  An e4m3 byte becomes an f16 with the same bits
 * moved: sign to bit 15, exponent and mantissa shifted left by 7.  That f16 is the e4m3 value times 2^-8 exactly
 * (normal and subnormal alike: e4m3's exponent bias is 7, f16's 15), so the 2^8 goes into the per-key scale.
 *
 * A block of 8 keys is converted once into an L1 buffer; then for each head, each key's products go into one
 * vector of 8 partial sums, and the 8 keys' vectors are reduced together by a transposing tree instead of 8
 * horizontal sums.  Every key goes through the same operations wherever it sits in a block, and a last partial
 * block is run zero-padded through the same code, so a key's score does not depend on n or on where the call
 * starts (dsa_ops_avx512.c does the same with 16 keys). */
#include "kernels.h"
#include "ops_impl.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

static inline __m256 ld_fp8(const uint8_t *p) {
    __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)p));
    __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x80)), 8),
                             _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x7F)), 7));
    return _mm256_cvtph_ps(h);
}

/* 16 e4m3 bytes → 16 floats (times 2^-8) into dst: (b << 7) puts the magnitude in place and the sign at bit 14;
 * adding that bit to itself carries it to bit 15 and clears bit 14. */
static inline void ld_fp8x16(const uint8_t *p, float *dst) {
    __m256i t = _mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p)), 7);
    t = _mm256_add_epi16(t, _mm256_and_si256(t, _mm256_set1_epi16(0x4000)));
    _mm256_store_ps(dst, _mm256_cvtph_ps(_mm256_castsi256_si128(t)));
    _mm256_store_ps(dst + 8, _mm256_cvtph_ps(_mm256_extracti128_si256(t, 1)));
}

/* P[2e + L] holds key 4L + e's 8 partial sums; returns the 8 sums in key order.  Each key's partials are added in
 * the same tree whatever its place: lanes i + 4, then i + 2, then i + 1. */
static inline __m256 reduce8(const __m256 *P) {
    __m256 s[4], t[2];
    for (int m = 0; m < 4; m++)
        s[m] = _mm256_add_ps(_mm256_permute2f128_ps(P[2 * m], P[2 * m + 1], 0x20),
                             _mm256_permute2f128_ps(P[2 * m], P[2 * m + 1], 0x31));
    for (int m = 0; m < 2; m++)
        t[m] = _mm256_add_ps(_mm256_shuffle_ps(s[2 * m], s[2 * m + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm256_shuffle_ps(s[2 * m], s[2 * m + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm256_add_ps(_mm256_shuffle_ps(t[0], t[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm256_shuffle_ps(t[0], t[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* 8 keys (K8: 8 rows of d = 8·nc bytes) → kf: 8·d floats, 32-byte aligned. */
static inline __attribute__((always_inline)) void convert8(const int nc, const uint8_t *K8, float *kf) {
    const int d = 8 * nc;
    for (int i = 0; i < 8; i++) {
        int c = 0;
        for (; c + 2 <= nc; c += 2) ld_fp8x16(K8 + (size_t)i * d + 8 * c, kf + i * d + 8 * c);
        if (c < nc) _mm256_store_ps(kf + i * d + 8 * c, ld_fp8(K8 + (size_t)i * d + 8 * c));
    }
}

/* The 8 converted keys in kf → their 8 scores for one query (q: H·d, w: H). */
static inline __attribute__((always_inline)) void heads8(const int nc, int H, const float *kf, const float *kscale,
                                                         const float *q, const float *w, float *out) {
    const int d = 8 * nc;
    __m256 acc = _mm256_setzero_ps(), zero = _mm256_setzero_ps();
    for (int j = 0; j < H; j++) {
        const float *qj = q + (size_t)j * d;
        __m256 P[8];
        for (int i = 0; i < 8; i++) {
            const float *k = kf + i * d;
            __m256 p = _mm256_mul_ps(_mm256_load_ps(k), _mm256_loadu_ps(qj));
            for (int c = 1; c < nc; c++) p = _mm256_fmadd_ps(_mm256_load_ps(k + 8 * c), _mm256_loadu_ps(qj + 8 * c), p);
            P[(i & 3) * 2 + (i >> 2)] = p;
        }
        acc = _mm256_fmadd_ps(_mm256_max_ps(reduce8(P), zero), _mm256_set1_ps(w[j]), acc);
    }
    _mm256_storeu_ps(out, _mm256_mul_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(kscale), _mm256_set1_ps(256.0f))));
}

/* R queries (see dsa_indexer_scores_rows); R = 1 is dsa_indexer_scores.  A block past the last key of every row
 * is zero-padded; a row shorter than a block's end gets only its own keys' scores. */
static inline __attribute__((always_inline)) void scores(const int nc, int R, const int *n, int H,
                                                         const uint8_t *K8, const float *kscale, const float *q,
                                                         const float *w, float *out, size_t ldo) {
    const int d = 8 * nc;
    _Alignas(32) float kf[8 * 256];
    int nmax = 0;
    for (int r = 0; r < R; r++) nmax = n[r] > nmax ? n[r] : nmax;
    for (int s = 0; s < nmax; s += 8) {
        const uint8_t *kb = K8 + (size_t)s * d;
        const float *sb = kscale + s;
        _Alignas(32) uint8_t pad[8 * 256];
        float spad[8], ob[8];
        if (s + 8 > nmax) {
            memset(pad, 0, sizeof pad);
            memset(spad, 0, sizeof spad);
            memcpy(pad, kb, (size_t)(nmax - s) * d);
            memcpy(spad, sb, (size_t)(nmax - s) * sizeof *spad);
            kb = pad, sb = spad;
        }
        convert8(nc, kb, kf);
        for (int r = 0; r < R; r++) {
            int m = n[r] - s;
            if (m <= 0) continue;
            float *o = out + (size_t)r * ldo + s;
            if (m >= 8) heads8(nc, H, kf, sb, q + (size_t)r * H * d, w + (size_t)r * H, o);
            else {
                heads8(nc, H, kf, sb, q + (size_t)r * H * d, w + (size_t)r * H, ob);
                memcpy(o, ob, (size_t)m * sizeof *ob);
            }
        }
    }
}

/* d is a multiple of 8, at most 256. */
void dsa_indexer_scores_rows_avx2(int R, const int *n, int H, int d, const uint8_t *K8, const float *kscale,
                                  const float *q, const float *w, float *out, size_t ldo) {
    if (d == 64) scores(8, R, n, H, K8, kscale, q, w, out, ldo); /* the shipped indexer's head: constants unroll */
    else scores(d / 8, R, n, H, K8, kscale, q, w, out, ldo);
}
#endif
