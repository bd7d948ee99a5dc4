/* AVX-512 index score (see dsa_indexer_scores), 16 keys at a time.
 *
 * An e4m3 byte becomes an f16 with the same bits moved, as in dsa_ops_avx2.c: the f16 is the e4m3 value times
 * 2^-8, and the 2^8 goes into the per-key scale.  A block of 16 keys is converted once into an L1 buffer; then
 * for each head, each key's d products go into one vector of 16 partial sums, and the 16 keys' vectors are
 * reduced together by a transposing tree (2 shuffles and an add per pair of vectors) instead of 16 horizontal
 * sums.  Every key goes through the same sequence of operations wherever it sits in a block, and a last partial
 * block is run zero-padded through the same code: a key's score does not depend on n or on where the call
 * starts, so a decode step that splits the keys across threads gets the bits a prefill row gets.  A prefill
 * scores several consecutive rows against one conversion of each block (dsa_indexer_scores_rows). */
#include "kernels.h"
#include "ops_impl.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

/* 16 e4m3 bytes → 16 floats (times 2^-8).  (b << 7) puts the magnitude in place and the sign at bit 14; adding
 * that bit to itself carries it to bit 15 and clears bit 14. */
static inline __m512 ld_fp8x16(const uint8_t *p) {
    __m256i t = _mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p)), 7);
    return _mm512_cvtph_ps(_mm256_add_epi16(t, _mm256_and_si256(t, _mm256_set1_epi16(0x4000))));
}

/* P[4e + L] holds key 4L + e's 16 partial sums; returns the 16 sums in key order.  Each key's 16 partials are
 * added in the same tree whatever its place: lanes i + 8, then i + 4, then i + 2, then i + 1. */
static inline __m512 reduce16(const __m512 *P) {
    __m512 s[8], t[4], u[2];
    for (int m = 0; m < 8; m++)
        s[m] = _mm512_add_ps(_mm512_shuffle_f32x4(P[2 * m], P[2 * m + 1], 0x44),
                             _mm512_shuffle_f32x4(P[2 * m], P[2 * m + 1], 0xEE));
    for (int m = 0; m < 4; m++)
        t[m] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * m], s[2 * m + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(s[2 * m], s[2 * m + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    for (int m = 0; m < 2; m++)
        u[m] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * m], t[2 * m + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(t[2 * m], t[2 * m + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* 16 keys (K8: 16 rows of d = 16·nc bytes) → kf: 16·d floats, 64-byte aligned. */
static inline __attribute__((always_inline)) void convert16(const int nc, const uint8_t *K8, float *kf) {
    const int d = 16 * nc;
    for (int i = 0; i < 16; i++)
        for (int c = 0; c < nc; c++) _mm512_store_ps(kf + i * d + 16 * c, ld_fp8x16(K8 + (size_t)i * d + 16 * c));
}

/* The 16 converted keys in kf → their 16 scores for one query (q: H·d, w: H). */
static inline __attribute__((always_inline)) void heads16(const int nc, int H, const float *kf, const float *kscale,
                                                          const float *q, const float *w, float *out) {
    const int d = 16 * nc;
    __m512 acc = _mm512_setzero_ps(), zero = _mm512_setzero_ps();
    for (int j = 0; j < H; j++) {
        __m512 qv[16], P[16];
        for (int c = 0; c < nc; c++) qv[c] = _mm512_loadu_ps(q + (size_t)j * d + 16 * c);
        for (int i = 0; i < 16; i++) {
            const float *k = kf + i * d;
            __m512 p = _mm512_mul_ps(_mm512_load_ps(k), qv[0]);
            for (int c = 1; c < nc; c++) p = _mm512_fmadd_ps(_mm512_load_ps(k + 16 * c), qv[c], p);
            P[(i & 3) * 4 + (i >> 2)] = p;
        }
        acc = _mm512_fmadd_ps(_mm512_max_ps(reduce16(P), zero), _mm512_set1_ps(w[j]), acc);
    }
    _mm512_storeu_ps(out, _mm512_mul_ps(acc, _mm512_mul_ps(_mm512_loadu_ps(kscale), _mm512_set1_ps(256.0f))));
}

/* R queries (see dsa_indexer_scores_rows); R = 1 is dsa_indexer_scores.  A block past the last key of every row
 * is zero-padded; a row shorter than a block's end gets only its own keys' scores (the others' are computed and
 * dropped: a key's score does not depend on its neighbours). */
static inline __attribute__((always_inline)) void scores(const int nc, int R, const int *n, int H,
                                                         const uint8_t *K8, const float *kscale, const float *q,
                                                         const float *w, float *out, size_t ldo) {
    const int d = 16 * nc;
    _Alignas(64) float kf[16 * 256];
    int nmax = 0;
    for (int r = 0; r < R; r++) nmax = n[r] > nmax ? n[r] : nmax;
    for (int s = 0; s < nmax; s += 16) {
        const uint8_t *kb = K8 + (size_t)s * d;
        const float *sb = kscale + s;
        _Alignas(64) uint8_t pad[16 * 256];
        float spad[16], ob[16];
        if (s + 16 > nmax) {
            memset(pad, 0, sizeof pad);
            memset(spad, 0, sizeof spad);
            memcpy(pad, kb, (size_t)(nmax - s) * d);
            memcpy(spad, sb, (size_t)(nmax - s) * sizeof *spad);
            kb = pad, sb = spad;
        }
        convert16(nc, kb, kf);
        for (int r = 0; r < R; r++) {
            int m = n[r] - s;
            if (m <= 0) continue;
            float *o = out + (size_t)r * ldo + s;
            if (m >= 16) heads16(nc, H, kf, sb, q + (size_t)r * H * d, w + (size_t)r * H, o);
            else {
                heads16(nc, H, kf, sb, q + (size_t)r * H * d, w + (size_t)r * H, ob);
                memcpy(o, ob, (size_t)m * sizeof *ob);
            }
        }
    }
}

/* d is a multiple of 16, at most 256. */
void dsa_indexer_scores_rows_avx512(int R, const int *n, int H, int d, const uint8_t *K8, const float *kscale,
                                    const float *q, const float *w, float *out, size_t ldo) {
    if (d == 64) scores(4, R, n, H, K8, kscale, q, w, out, ldo); /* the shipped indexer's head: constants unroll */
    else scores(d / 16, R, n, H, K8, kscale, q, w, out, ldo);
}

/* ---- top-k passes ---------------------------------------------------------------------------------------------- */

/* rank_hi (dsa_ops.c) of 16 scores: an unsigned order that sorts like the floats, -0 = +0, NaN lowest. */
static inline __m512i rank_hi16(__m512 f) {
    __m512i u = _mm512_castps_si512(f);
    u = _mm512_maskz_mov_epi32(_mm512_test_epi32_mask(u, _mm512_set1_epi32(0x7FFFFFFF)), u);
    __m512i key = _mm512_xor_si512(u, _mm512_or_si512(_mm512_srai_epi32(u, 31), _mm512_set1_epi32((int)0x80000000u)));
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)),
                                            _mm512_set1_epi32(0x7F800000));
    return _mm512_maskz_mov_epi32((__mmask16)~nan, key);
}

/* 16 scores from p; the lanes past the last `left` read as NaN (the callers mask them off). */
static inline __m512 ld16(const float *p, int left) {
    if (left >= 16) return _mm512_loadu_ps(p);
    return _mm512_mask_loadu_ps(_mm512_set1_ps(__builtin_nanf("")), (__mmask16)((1u << left) - 1), p);
}

int dsa_topk_gather_avx512(int n, const float *score, uint32_t floor, uint64_t *out) {
    int c = 0;
    __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int i = 0; i < n; i += 16) {
        __m512i h = rank_hi16(ld16(score + i, n - i));
        __mmask16 m = _mm512_cmpge_epu32_mask(h, _mm512_set1_epi32((int)floor));
        if (n - i < 16) m &= (__mmask16)((1u << (n - i)) - 1);
        if (!m) continue;
        __m512i ix = _mm512_add_epi32(lanes, _mm512_set1_epi32(i));
        __m512i lo = _mm512_unpacklo_epi32(ix, h), hi = _mm512_unpackhi_epi32(ix, h); /* (index, key) pairs */
        /* unpack works within 128-bit lanes: lo holds elements 0,1,4,5,8,9,12,13; put them back in order */
        __m512i a = _mm512_permutex2var_epi64(lo, _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), hi);
        __m512i b = _mm512_permutex2var_epi64(lo, _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15), hi);
        /* compress in registers, then a masked store: a compressing store to memory is slow on some cores */
        int ca = __builtin_popcount(m & 0xFF), cb = __builtin_popcount(m >> 8);
        _mm512_mask_storeu_epi64(out + c, (__mmask8)((1u << ca) - 1), _mm512_maskz_compress_epi64((__mmask8)m, a));
        c += ca;
        _mm512_mask_storeu_epi64(out + c, (__mmask8)((1u << cb) - 1), _mm512_maskz_compress_epi64((__mmask8)(m >> 8), b));
        c += cb;
    }
    return c;
}

int dsa_topk_emit_avx512(int n, const float *score, uint64_t thr, int32_t *idx) {
    int c = 0;
    __m512i th = _mm512_set1_epi32((int)(uint32_t)(thr >> 32)), tl = _mm512_set1_epi32((int)(uint32_t)thr);
    __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int i = 0; i < n; i += 16) {
        __m512i h = rank_hi16(ld16(score + i, n - i)), ix = _mm512_add_epi32(lanes, _mm512_set1_epi32(i));
        __mmask16 m = _mm512_cmpgt_epu32_mask(h, th) |
                      (_mm512_cmpeq_epi32_mask(h, th) & _mm512_cmpge_epu32_mask(ix, tl));
        if (n - i < 16) m &= (__mmask16)((1u << (n - i)) - 1);
        int cm = __builtin_popcount(m);
        _mm512_mask_storeu_epi32(idx + c, (__mmask16)((1u << cm) - 1), _mm512_maskz_compress_epi32(m, ix));
        c += cm;
    }
    return c;
}
#endif
