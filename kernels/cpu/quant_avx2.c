/*
 * AVX2 + FMA + F16C kernels (this file is compiled with -mavx2 -mfma -mf16c; quant.c only calls into it after
 * checking the CPU).  Same results as the plain-C reference in quant.c up to the order of float additions;
 * quantisation (from_float) is bit-identical.
 *
 * The integer core of every quantised dot product is pmaddubsw: unsigned 8-bit weights times signed 8-bit
 * activations, adjacent pairs summed to 16 bits.  It saturates only above 32767, which needs both operands near
 * their limits: |pair| <= 2*63*127 for the K-quants and 2*128*127 for q8_0, because activation quants are never
 * -128 (quant_impl.h).  pmaddwd then sums pairs of those to 32 bits, optionally times a 16-bit scale.
 */
#include "quant_impl.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

static inline int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* ---- float weights --------------------------------------------------------------------------------------- */

float dsa_vec_dot_f32_avx2(int n, const void *vw, const void *va) {
    const float *w = vw, *a = va;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++)
            acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8 * k), _mm256_loadu_ps(a + i + 8 * k), acc[k]);
    for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(a + i), acc[0]);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) sum += w[i] * a[i];
    return sum;
}

float dsa_vec_dot_f16_avx2(int n, const void *vw, const void *va) {
    const uint8_t *w = vw;
    const float *a = va;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++) {
            __m256 x = _mm256_cvtph_ps(ld128(w + 2 * (i + 8 * k)));
            acc[k] = _mm256_fmadd_ps(x, _mm256_loadu_ps(a + i + 8 * k), acc[k]);
        }
    for (; i + 8 <= n; i += 8)
        acc[0] = _mm256_fmadd_ps(_mm256_cvtph_ps(ld128(w + 2 * i)), _mm256_loadu_ps(a + i), acc[0]);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) sum += _cvtsh_ss(dsa_rd16(w + 2 * i)) * a[i];
    return sum;
}

float dsa_vec_dot_bf16_avx2(int n, const void *vw, const void *va) {
    const uint8_t *w = vw;
    const float *a = va;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) { /* bf16 is the top half of a float: widen and shift */
        __m256 w0 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(ld128(w + 2 * i)), 16));
        __m256 w1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(ld128(w + 2 * i + 16)), 16));
        acc0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(a + i), acc0);
        acc1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(a + i + 8), acc1);
    }
    float sum = hsum_ps(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) sum += dsa_bf16_to_f32(dsa_rd16(w + 2 * i)) * a[i];
    return sum;
}

/* ---- legacy quants against q8_1 ----------------------------------------------------------------------------
 * Two blocks per iteration (scales2 converts both blocks' scales at once), each into its own accumulator to hide
 * the cvt -> fma latency; an odd last block goes through the plain-C kernel. */

/* 16 bytes of packed nibbles -> 32 bytes: the low nibbles first, then the high ones (the q4 element order). */
static inline __m256i unpack_nibbles(const uint8_t *p) {
    __m128i x = ld128(p);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(x, 4), x), _mm256_set1_epi8(15));
}

/* Σ u·s over each group of four bytes -> 8 int32 */
static inline __m256i dot_us8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

static inline __m256i dot_q4_1(const uint8_t *blk, const int8_t *ys) {
    return dot_us8(unpack_nibbles(blk + 4), ld256(ys));
}
DSA_VEC_DOT_LEGACY(dsa_vec_dot_q4_1_avx2, DSA_Q4_1, DSA_BS_Q4_1, dot_q4_1, hsum_ps, 1)

/* Σ (q-8)·y as pmaddubsw(q, y) - pmaddubsw(8, y): both halves stay exact in 16 bits. */
static inline __m256i dot_q4_0(const uint8_t *blk, const int8_t *ys) { /* quants after the f16 d */
    const uint8_t *qs = blk + 2;
    __m256i y = ld256(ys);
    __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(unpack_nibbles(qs), y),
                                 _mm256_maddubs_epi16(_mm256_set1_epi8(8), y));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

DSA_VEC_DOT_LEGACY(dsa_vec_dot_q4_0_avx2, DSA_Q4_0, DSA_BS_Q4_0, dot_q4_0, hsum_ps, 0)

/* Q5_0/Q5_1: the fifth bits (4 bytes, bit k = element k) as 0 or 16 in byte k.  Byte k takes qh byte k/8 (every
 * 128-bit half of the broadcast holds all four bytes, so pshufb can reach them) and tests its bit k%8. */
static inline __m256i q5_high(const uint8_t *qh) {
    uint32_t h;
    memcpy(&h, qh, 4);
    const __m256i which = _mm256_setr_epi64x(0, 0x0101010101010101ll, 0x0202020202020202ll, 0x0303030303030303ll);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i x = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)h), which), bit);
    return _mm256_and_si256(_mm256_cmpeq_epi8(x, bit), _mm256_set1_epi8(16));
}

/* the 32 unsigned 5-bit quants of a block, in element order */
static inline __m256i unpack_q5(const uint8_t *qh, const uint8_t *qs) {
    return _mm256_or_si256(unpack_nibbles(qs), q5_high(qh));
}

/* Σ (q-16)·y as pmaddubsw(q, y) - pmaddubsw(16, y): |pairs| <= 2·31·127, exact in 16 bits. */
static inline __m256i dot_q5_0(const uint8_t *b, const int8_t *ys) {
    __m256i y = ld256(ys);
    __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(unpack_q5(b + 2, b + 6), y),
                                 _mm256_maddubs_epi16(_mm256_set1_epi8(16), y));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

/* scales2: the junk half is qh's first two bytes */
DSA_VEC_DOT_LEGACY(dsa_vec_dot_q5_0_avx2, DSA_Q5_0, DSA_BS_Q5_0, dot_q5_0, hsum_ps, 0)

static inline __m256i dot_q5_1(const uint8_t *blk, const int8_t *ys) {
    return dot_us8(unpack_q5(blk + 4, blk + 8), ld256(ys));
}
DSA_VEC_DOT_LEGACY(dsa_vec_dot_q5_1_avx2, DSA_Q5_1, DSA_BS_Q5_1, dot_q5_1, hsum_ps, 1)

/* Signed times signed: move the weight's sign onto the activation; |w| is then a valid unsigned operand
 * (|-128| = 128 as a byte). */
static inline __m256i dot_q8_0(const uint8_t *blk, const int8_t *ys) {
    __m256i x = ld256(blk + 2), y = ld256(ys);
    return dot_us8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

DSA_VEC_DOT_LEGACY(dsa_vec_dot_q8_0_avx2, DSA_Q8_0, DSA_BS_Q8_0, dot_q8_0, hsum_ps, 0)

/* ---- K-quants against q8_K ---------------------------------------------------------------------------------
 * Per super-block the integer sum Σ_j sc[j]·Σ q·y is built in 32-bit lanes (pmaddubsw, then pmaddwd by the
 * sub-block's scale broadcast to 16-bit words), converted once and scaled by d·a.d. */

/* Q4_K and Q5_K (five: the fifth bit of each quant from Q5_K's 32 qh bytes). */
static inline float dot_q45_k(int n, const uint8_t *b, const dsa_block_q8_k *a, int five) {
    const __m256i m4 = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    for (int i = 0; i < n / DSA_QK_K; i++, b += five ? DSA_BS_Q5_K : DSA_BS_Q4_K) {
        uint32_t p[4];
        dsa_kscales_packed(b + 4, p);
        __m256i sc16 = kscales16(p), mins = kmins(p, &a[i]);
        const uint8_t *qs = b + (five ? 48 : 16);
        __m256i h = five ? ld256(b + 16) : _mm256_setzero_si256();
        __m256i sumi = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) { /* chunk c: sub-blocks 2c (low nibbles) and 2c+1 (high nibbles) */
            __m256i q = ld256(qs + 32 * c);
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (five) { /* bit 2c of qh -> bit 4 of lo, bit 2c+1 -> bit 4 of hi (shifts stay inside bytes) */
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(h, one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 1), one), 4));
                h = _mm256_srli_epi16(h, 2);
            }
            __m256i s0 = _mm256_shuffle_epi8(sc16, pick_words(2 * c, 2 * c));
            __m256i s1 = _mm256_shuffle_epi8(sc16, pick_words(2 * c + 1, 2 * c + 1));
            __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, ld256(a[i].qs + 64 * c)), s0);
            __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, ld256(a[i].qs + 64 * c + 32)), s1);
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        float d = _cvtsh_ss(dsa_rd16(b)) * a[i].d, dmin = _cvtsh_ss(dsa_rd16(b + 2)) * a[i].d;
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(d), acc);
        accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mins), _mm256_set1_ps(dmin), accm);
    }
    return hsum_ps(_mm256_sub_ps(acc, accm));
}

float dsa_vec_dot_q4_k_avx2(int n, const void *w, const void *a) { return dot_q45_k(n, w, a, 0); }
float dsa_vec_dot_q5_k_avx2(int n, const void *w, const void *a) { return dot_q45_k(n, w, a, 1); }

float dsa_vec_dot_q6_k_avx2(int n, const void *vw, const void *va) {
    const uint8_t *b = vw;
    const dsa_block_q8_k *a = va;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / DSA_QK_K; i++, b += DSA_BS_Q6_K) {
        __m256i sc16 = _mm256_cvtepi8_epi16(ld128(b + 192)); /* the 16 scales: groups 0..7 | 8..15 */
        /* q - 32: subtract 32·Σ_g sc[g]·bsums[g] once instead of per element */
        __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(sc16, ld256(a[i].bsums)), 5);
        __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(), off);
        for (int h = 0; h < 2; h++) {
            /* this half's 8 scales in both 128-bit halves */
            __m256i sch = h ? _mm256_permute2x128_si256(sc16, sc16, 0x11) : _mm256_permute2x128_si256(sc16, sc16, 0);
            __m256i q[4];
            q6_chunks(b + 64 * h, b + 128 + 32 * h, q);
            for (int k = 0; k < 4; k++) { /* chunk k: group 2k in the low 128 bits of the products, 2k+1 high */
                __m256i s = _mm256_shuffle_epi8(sch, pick_words(2 * k, 2 * k + 1));
                __m256i p = _mm256_maddubs_epi16(q[k], ld256(a[i].qs + 128 * h + 32 * k));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s));
            }
        }
        float d = _cvtsh_ss(dsa_rd16(b + 208)) * a[i].d;
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(d), acc);
    }
    return hsum_ps(acc);
}

/* ---- activations --------------------------------------------------------------------------------------------- */

/* Quantise 32 floats with the factor id (the same float products and round-to-nearest-even as the C code) and
 * store them; *s0 and *s1 get the sums of the first and the last 16 quants. */
static inline void quant32(const float *x, __m256 id, int8_t *out, int *s0, int *s1) {
    __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), id));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8), id));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 16), id));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 24), id));
    *s0 = hsum_epi32(_mm256_add_epi32(i0, i1));
    *s1 = hsum_epi32(_mm256_add_epi32(i2, i3));
    /* the packs work within 128-bit lanes: the dwords come out as 0 2 4 6 1 3 5 7, put them back */
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)out, p);
}

static inline float amax_ps(const float *x, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) /* maxps returns its second operand when one is nan: skip nans, as C does */
        m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), m);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

void dsa_quantize_q8_1_avx2(const float *x, void *vy, int64_t n) {
    dsa_block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / DSA_QK; i++, x += DSA_QK) {
        float amax = amax_ps(x, DSA_QK);
        if (amax < DSA_ACT_TINY) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        int s0, s1;
        quant32(x, _mm256_set1_ps(127.0f / amax), y[i].qs, &s0, &s1);
        y[i].d = amax / 127.0f;
        y[i].s = y[i].d * (float)(s0 + s1);
    }
}

void dsa_quantize_q8_k_avx2(const float *x, void *vy, int64_t n) {
    dsa_block_q8_k *y = vy;
    for (int64_t i = 0; i < n / DSA_QK_K; i++, x += DSA_QK_K) {
        float amax = amax_ps(x, DSA_QK_K);
        if (amax < DSA_ACT_TINY) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        __m256 id = _mm256_set1_ps(127.0f / amax);
        for (int j = 0; j < DSA_QK_K / 32; j++) {
            int s0, s1;
            quant32(x + 32 * j, id, y[i].qs + 32 * j, &s0, &s1);
            y[i].bsums[2 * j] = (int16_t)s0;
            y[i].bsums[2 * j + 1] = (int16_t)s1;
        }
        y[i].d = amax / 127.0f;
    }
}

#endif
