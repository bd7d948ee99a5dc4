/*
 * Private to kernels/cpu: the byte layouts of the weight blocks, small helpers shared by the plain-C and the SIMD
 * files, and the SIMD entry points that quant.c puts into the dispatch tables.
 *
 * Weight blocks come straight from the mmapped GGUF file, packed and at any alignment (a Q4_1 block is 20 bytes,
 * Q8_0 34, Q6_K 210), so they are read as bytes: never through a struct pointer.  Offsets below are ggml's.
 *
 *   Q4_0  18 B: f16 d | u8 qs[16]                      x = d * (q - 8); q[j] = qs[j] & 15, q[j+16] = qs[j] >> 4
 *   Q4_1  20 B: f16 d | f16 m | u8 qs[16]              x = d * q + m   (nibbles as Q4_0)
 *   Q5_0  22 B: f16 d | u8 qh[4] | u8 qs[16]           x = d * (q - 16); q as Q4_0 plus a fifth bit: bit j of
 *                                                      the little-endian word qh is bit 4 of element j
 *   Q5_1  24 B: f16 d | f16 m | u8 qh[4] | u8 qs[16]   x = d * q + m   (quants as Q5_0)
 *   Q8_0  34 B: f16 d | i8 qs[32]                      x = d * q
 *   Q4_K 144 B: f16 d | f16 dmin | u8 scales[12] | u8 qs[128]
 *         8 sub-blocks of 32; sub-block j has a 6-bit scale sc[j] and min mn[j] packed in scales[] (see
 *         dsa_kscales); x = d*sc[j] * q - dmin*mn[j]; 32-byte chunk c of qs holds sub-block 2c in its low
 *         nibbles and 2c+1 in its high nibbles.
 *   Q5_K 176 B: f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128]
 *         as Q4_K with a fifth bit: bit j of qh[l] is bit 4 of element l of sub-block j.
 *   Q6_K 210 B: u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d
 *         x = d*scales[i/16] * (q - 32), q 6 bits.  Each half h (128 elements) uses ql[64h..], qh[32h..]:
 *         element 32k+l of the half (k = 0..3, l = 0..31) takes its low nibble from ql[64h + l + 32*(k&1)]
 *         (low nibble for k < 2, high for k >= 2) and its top two bits from qh[32h + l] >> 2k.
 *
 * Activation blocks (dsa_block_q8_1, dsa_block_q8_k) are ours and declared in kernels.h.  Their qs are always in
 * [-127, 127] (never -128): the SIMD dot products rely on it (sign tricks, pmaddubsw without saturation).
 */
#ifndef DSA_QUANT_IMPL_H
#define DSA_QUANT_IMPL_H

#include "kernels.h"

#include <string.h>

enum {
    DSA_BS_Q4_0 = 18,
    DSA_BS_Q4_1 = 20,
    DSA_BS_Q5_0 = 22,
    DSA_BS_Q5_1 = 24,
    DSA_BS_Q8_0 = 34,
    DSA_BS_Q4_K = 144,
    DSA_BS_Q5_K = 176,
    DSA_BS_Q6_K = 210,
};

static inline uint16_t dsa_rd16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Activations whose largest magnitude is below this quantise to an all-zero block (d = 0): 127/amax would
 * overflow for the smallest subnormals, and such values cannot matter next to any real weight. */
#define DSA_ACT_TINY 0x1p-100f

/* Unpack the 12 bytes of Q4_K/Q5_K scales into eight 6-bit scales and eight 6-bit mins, four bytes to a word:
 * out[0] = sc[0..3], out[1] = sc[4..7], out[2] = mn[0..3], out[3] = mn[4..7].
 * Bytes 0-3 hold the low 6 bits of sc[0..3], bytes 4-7 those of mn[0..3]; bytes 8-11 hold the low 4 bits of
 * sc[4..7] (low nibble) and of mn[4..7] (high nibble), whose top 2 bits sit in the spare top bits of bytes 0-7. */
static inline void dsa_kscales_packed(const uint8_t *s, uint32_t out[4]) {
    uint32_t w[3];
    memcpy(w, s, sizeof w);
    out[0] = w[0] & 0x3f3f3f3fu;
    out[2] = w[1] & 0x3f3f3f3fu;
    out[1] = (w[2] & 0x0f0f0f0fu) | ((w[0] >> 2) & 0x30303030u);
    out[3] = ((w[2] >> 4) & 0x0f0f0f0fu) | ((w[1] >> 2) & 0x30303030u);
}

static inline void dsa_kscales(const uint8_t *s, uint8_t sc[8], uint8_t mn[8]) {
    uint32_t p[4];
    dsa_kscales_packed(s, p);
    memcpy(sc, p, 8);
    memcpy(mn, p + 2, 8);
}

/* The integer core of the plain-C kernels (quant.c, mm_tile.c): the compiler vectorises these loops (separate
 * loops, fixed counts) even at the generic level.  The element order of a q4 block: the 16 low nibbles, then the
 * 16 high ones, minus an offset. */
static inline int dsa_dot_i8(const int8_t *x, const int8_t *y, int n) {
    int s = 0;
    for (int j = 0; j < n; j++) s += x[j] * y[j];
    return s;
}

static inline void dsa_unpack_q4(const uint8_t *qs, int8_t q[32], int offset) {
    for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)((qs[j] & 15) - offset);
        q[j + 16] = (int8_t)((qs[j] >> 4) - offset);
    }
}

/* The 32 quants of a Q5_0 (offset 16) or Q5_1 (offset 0) block (qh: its 4 bytes of fifth bits, qs: its nibbles),
 * eight at a time in 64-bit words, as without AVX2 a loop over bits does not vectorise and costs four times this.
 * Bit i of qh[k] is spread to byte i of a word (multiply, mask; adding 0x7f then sets a byte's top bit iff the
 * byte is nonzero, never carrying out of it).  A quant is then its nibble | 16 if the bit is set (offset 0), or
 * (q - 16 as a byte) its nibble | 0xf0 if the bit is clear (offset 16).  Bytes are assembled explicitly, so this
 * does not depend on the host's byte order. */
static inline uint64_t dsa_ld64_le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << 8 * i;
    return v;
}

static inline void dsa_unpack_q5(const uint8_t *qh, const uint8_t *qs, int8_t q[32], int offset) {
    const uint64_t nib = 0x0f0f0f0f0f0f0f0full, top = 0x8080808080808080ull;
    for (int k = 0; k < 4; k++) {
        uint64_t bits = ((uint64_t)qh[k] * 0x0101010101010101ull) & 0x8040201008040201ull;
        uint64_t set = (bits + 0x7f7f7f7f7f7f7f7full) & top;
        uint64_t hi = offset ? ((set ^ top) >> 3) * 15 : set >> 3;
        uint64_t w = dsa_ld64_le(qs + 8 * (k & 1));
        w = (k < 2 ? w & nib : (w >> 4) & nib) | hi;
        for (int i = 0; i < 8; i++) q[8 * k + i] = (int8_t)(uint8_t)(w >> 8 * i);
    }
}

/* The 32 quants of sub-block j (0..7) of a Q4_K (qh == NULL) or Q5_K super-block, unsigned. */
static inline void dsa_unpack_q45_k(const uint8_t *qs, const uint8_t *qh, int j, int8_t q[32]) {
    const uint8_t *p = qs + 32 * (j / 2);
    int shift = 4 * (j & 1);
    for (int l = 0; l < 32; l++) {
        int v = (p[l] >> shift) & 15;
        if (qh) v |= ((qh[l] >> j) & 1) << 4;
        q[l] = (int8_t)v;
    }
}

/* The 256 quants of a Q6_K super-block, minus 32. */
static inline void dsa_unpack_q6_k(const uint8_t *b, int8_t q[256]) {
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < 32; l++) {
                int lo = (ql[l + 32 * (k & 1)] >> (4 * (k >> 1))) & 15, hi = (qh[l] >> (2 * k)) & 3;
                q[128 * h + 32 * k + l] = (int8_t)((lo | hi << 4) - 32);
            }
    }
}

/* mm_tile.c: the plain-C tile kernels (the mm_pack / mm_tile traits of dsa_traits_ref) */
#define DSA_MM_NR_REF 8
#define DSA_MM_PANEL_LEGACY_REF 320 /* 8 rows × (32 quants + d + m) */
#define DSA_MM_PANEL_K_REF 2304     /* 8 rows × (256 quants + 16 scales + 8 mins + d + dmin) */
#define DSA_MM_PACK_DECL(t) void dsa_mm_pack_##t(int n, const void *w, size_t w_stride, int rows, void *panel);
#define DSA_MM_TILE_DECL(t)                                                                                       \
    void dsa_mm_tile_##t(int n, const void *panel, const void *a, size_t a_stride, const int32_t *asum, int nact, \
                         float *y, size_t ldy, int rows);
#define DSA_MM_GEMV_DECL(t) \
    void dsa_mm_gemv_##t(int n, const void *w, size_t w_stride, const void *a, const int32_t *asum, float *y);
DSA_MM_PACK_DECL(q4_0_ref) DSA_MM_PACK_DECL(q4_1_ref) DSA_MM_PACK_DECL(q8_0_ref)
DSA_MM_PACK_DECL(q4_k_ref) DSA_MM_PACK_DECL(q5_k_ref) DSA_MM_PACK_DECL(q6_k_ref)
DSA_MM_TILE_DECL(q4_0_ref) DSA_MM_TILE_DECL(q4_1_ref) DSA_MM_TILE_DECL(q45_k_ref) DSA_MM_TILE_DECL(q6_k_ref)

/* The SIMD kernels; a type they lack (or an odd last block) is left to the plain-C one, dsa_traits_ref(). */
#if defined(__x86_64__) || defined(__i386__)
#define DSA_X86 1

/* quant_avx2.c: AVX2 + FMA + F16C */
float dsa_vec_dot_f32_avx2(int n, const void *w, const void *a);
float dsa_vec_dot_f16_avx2(int n, const void *w, const void *a);
float dsa_vec_dot_bf16_avx2(int n, const void *w, const void *a);
float dsa_vec_dot_q4_0_avx2(int n, const void *w, const void *a);
float dsa_vec_dot_q4_1_avx2(int n, const void *w, const void *a);
float dsa_vec_dot_q5_0_avx2(int n, const void *w, const void *a);
float dsa_vec_dot_q5_1_avx2(int n, const void *w, const void *a);
float dsa_vec_dot_q8_0_avx2(int n, const void *w, const void *a);
float dsa_vec_dot_q4_k_avx2(int n, const void *w, const void *a);
float dsa_vec_dot_q5_k_avx2(int n, const void *w, const void *a);
float dsa_vec_dot_q6_k_avx2(int n, const void *w, const void *a);
void dsa_quantize_q8_1_avx2(const float *x, void *y, int64_t n);
void dsa_quantize_q8_k_avx2(const float *x, void *y, int64_t n);

/* mm_tile_avx2.c */
#define DSA_MM_PANEL8_LEGACY 320 /* 8 rows × (32 nibbles + d + m) */
#define DSA_MM_PANEL8_Q8_0 576   /* 8 rows × (2 × 32 nibbles + d + padding) */
DSA_MM_PACK_DECL(q4_0_avx2) DSA_MM_PACK_DECL(q4_1_avx2) DSA_MM_PACK_DECL(q8_0_avx2)
DSA_MM_TILE_DECL(q4_0_avx2) DSA_MM_TILE_DECL(q4_1_avx2) DSA_MM_TILE_DECL(q8_0_avx2)
DSA_MM_GEMV_DECL(q4_0_avx2) DSA_MM_GEMV_DECL(q4_1_avx2) DSA_MM_GEMV_DECL(q8_0_avx2)
#define DSA_MM_PANEL8_K 2880 /* 8 rows × (256 quants + 16 scales + 8 min pairs + d + dmin) */
DSA_MM_PACK_DECL(q4_k_avx2) DSA_MM_PACK_DECL(q5_k_avx2) DSA_MM_PACK_DECL(q6_k_avx2)
DSA_MM_TILE_DECL(q4_k_avx2) DSA_MM_TILE_DECL(q5_k_avx2) DSA_MM_TILE_DECL(q6_k_avx2)
DSA_MM_GEMV_DECL(q4_k_avx2) DSA_MM_GEMV_DECL(q5_k_avx2) DSA_MM_GEMV_DECL(q6_k_avx2)

/* mm_tile_avx512.c */
#define DSA_MM_PANEL16_LEGACY 640 /* 16 rows × (32 quants + d + m) */
DSA_MM_PACK_DECL(q4_0_avx512) DSA_MM_PACK_DECL(q4_1_avx512) DSA_MM_PACK_DECL(q8_0_avx512)
DSA_MM_TILE_DECL(q4_0_avx512) DSA_MM_TILE_DECL(q4_1_avx512) DSA_MM_TILE_DECL(q8_0_avx512)
DSA_MM_GEMV_DECL(q4_0_avx512) DSA_MM_GEMV_DECL(q4_1_avx512) DSA_MM_GEMV_DECL(q8_0_avx512)
#define DSA_MM_PANEL16_K 5760 /* 16 rows × (256 quants + 16 scales + 8 min pairs + d + dmin) */
DSA_MM_PACK_DECL(q4_k_avx512) DSA_MM_PACK_DECL(q5_k_avx512) DSA_MM_PACK_DECL(q6_k_avx512)
DSA_MM_TILE_DECL(q45_k_avx512) DSA_MM_TILE_DECL(q6_k_avx512)
DSA_MM_GEMV_DECL(q4_k_avx512) DSA_MM_GEMV_DECL(q5_k_avx512) DSA_MM_GEMV_DECL(q6_k_avx512)

/* quant_avx512.c: AVX-512 F/BW/VL/DQ + VNNI */
float dsa_vec_dot_q4_0_avx512(int n, const void *w, const void *a);
float dsa_vec_dot_q4_1_avx512(int n, const void *w, const void *a);
float dsa_vec_dot_q8_0_avx512(int n, const void *w, const void *a);
float dsa_vec_dot_q4_k_avx512(int n, const void *w, const void *a);
float dsa_vec_dot_q5_k_avx512(int n, const void *w, const void *a);
float dsa_vec_dot_q6_k_avx512(int n, const void *w, const void *a);
#endif

/* ---- helpers for the two SIMD files (both are compiled with at least AVX2, FMA and F16C) ------------------ */
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

static inline __m256i ld256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline __m128i ld128(const void *p) { return _mm_loadu_si128((const __m128i *)p); }

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 lane(__m256 v, int i) { return _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(i)); }

/* The scales of two legacy blocks (Q4_0, Q4_1, Q8_0) at b and b + bs, with their activation blocks a[0], a[1],
 * from one conversion and one multiply: the first 4 bytes of a weight block are f16 d and (for Q4_1) f16 m -- for
 * the other types the second half is a junk value that is never used -- and the first 8 bytes of an activation
 * block are float d and s:
 *     [d0·a0.d, m0·a0.s, d0·a0.d, m0·a0.s,  d1·a1.d, m1·a1.s, d1·a1.d, m1·a1.s]
 * Block 0's scale is lane 0, block 1's lane 4; Σ m·s is half the sum of the odd lanes.  (memcpy: any alignment;
 * the compiler turns these into broadcast loads.) */
static inline __m256 scales2(const uint8_t *b, int bs, const dsa_block_q8_1 *a) {
    uint32_t h0, h1;
    uint64_t a0, a1;
    memcpy(&h0, b, 4), memcpy(&h1, b + bs, 4);
    memcpy(&a0, &a[0].d, 8), memcpy(&a1, &a[1].d, 8);
    __m128i h = _mm_blend_epi32(_mm_set1_epi32((int)h0), _mm_set1_epi32((int)h1), 0xc);
    __m256i ds = _mm256_blend_epi32(_mm256_set1_epi64x((long long)a0), _mm256_set1_epi64x((long long)a1), 0xf0);
    return _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_castsi256_ps(ds));
}

/* The vec_dot of the legacy types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), shared by the AVX2 and AVX-512 files, which
 * differ only in DOT (8 int32 lane sums of one block's quants times an activation block's, given the block's
 * start) and HSUM (the AVX-512 Q4 DOTs weigh their high half ×16).  Two blocks per step into two accumulators;
 * an odd last block goes to the plain-C reference.  MIN (Q4_1, Q5_1) adds Σ m·s: scales2's odd lanes hold every
 * m·s twice, which movehdup doubles again, hence the 0.25. */
#define DSA_VEC_DOT_LEGACY(fname, T, BS, DOT, HSUM, MIN)                                                          \
    float fname(int n, const void *vw, const void *va) {                                                         \
        const uint8_t *b = vw;                                                                                   \
        const dsa_block_q8_1 *a = va;                                                                            \
        const int nb = n / DSA_QK;                                                                               \
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), accm = _mm256_setzero_ps();               \
        int i = 0;                                                                                               \
        for (; i + 2 <= nb; i += 2, b += 2 * (BS)) {                                                             \
            __m256 sc = scales2(b, (BS), &a[i]);                                                                 \
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(DOT(b, a[i].qs)), lane(sc, 0), acc0);                      \
            acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(DOT(b + (BS), a[i + 1].qs)), lane(sc, 4), acc1);           \
            if (MIN) accm = _mm256_add_ps(accm, sc);                                                             \
        }                                                                                                        \
        float sum = HSUM(_mm256_add_ps(acc0, acc1));                                                             \
        if (MIN) sum += 0.25f * hsum_ps(_mm256_movehdup_ps(accm));                                               \
        if (i < nb) sum += dsa_traits_ref(T)->vec_dot(DSA_QK, b, &a[i]);                                         \
        return sum;                                                                                              \
    }

/* pshufb control: 16-bit word w0 of a 128-bit half to every word of the low half, word w1 to the high half */
static inline __m256i pick_words(int w0, int w1) {
    long long lo = 0x0100010001000100ll + 0x0202020202020202ll * w0;
    long long hi = 0x0100010001000100ll + 0x0202020202020202ll * w1;
    return _mm256_setr_epi64x(lo, lo, hi, hi);
}

/* Q4_K/Q5_K: the eight 6-bit scales as 16-bit words, in both 128-bit halves (for pick_words), and each min
 * times the bsums of its sub-block: Σ of the result = Σ_j mn[j]·(bsums[2j] + bsums[2j+1]). */
static inline __m256i kscales16(const uint32_t p[4]) {
    __m128i sc8 = _mm_cvtsi64_si128((long long)((uint64_t)p[1] << 32 | p[0]));
    return _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sc8));
}

static inline __m256i kmins(const uint32_t p[4], const dsa_block_q8_k *a) {
    __m128i mn8 = _mm_cvtsi64_si128((long long)((uint64_t)p[3] << 32 | p[2]));
    return _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn8, mn8)), ld256(a->bsums));
}

/* Q6_K: the 128 unsigned 6-bit quants of half a super-block (ql: 64 bytes, qh: 32) as four 32-byte chunks in
 * element order.  The two high bits of chunk k are bits 2k, 2k+1 of qh: masked first, the shifts that move them
 * to bits 4, 5 never cross a byte. */
static inline void q6_chunks(const uint8_t *ql, const uint8_t *qh, __m256i q[4]) {
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256i A = ld256(ql), B = ld256(ql + 32), H = ld256(qh);
    __m256i hi0 = _mm256_slli_epi16(_mm256_and_si256(H, _mm256_set1_epi8(0x03)), 4);
    __m256i hi1 = _mm256_slli_epi16(_mm256_and_si256(H, _mm256_set1_epi8(0x0c)), 2);
    __m256i hi2 = _mm256_and_si256(H, _mm256_set1_epi8(0x30));
    __m256i hi3 = _mm256_srli_epi16(_mm256_and_si256(H, _mm256_set1_epi8((char)0xc0)), 2);
    q[0] = _mm256_or_si256(_mm256_and_si256(A, m4), hi0);
    q[1] = _mm256_or_si256(_mm256_and_si256(B, m4), hi1);
    q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(A, 4), m4), hi2);
    q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(B, 4), m4), hi3);
}
#endif

#endif
