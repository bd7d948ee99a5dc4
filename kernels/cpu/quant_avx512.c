/*
 * AVX-512 kernels (compiled with F, BW, VL, DQ, VNNI).  quant.c dispatches a type here only where this measured
 * faster than quant_avx2.c (bench/bench_quant.c; today: every quantised weight type, not the float ones).
 *
 * What pays is VNNI and the AVX-512 mask registers on 256-bit vectors, not 512-bit registers:
 *  - vpdpbusd does unsigned × signed byte products and their 32-bit sums in one instruction (AVX2 needs pmaddubsw
 *    + pmaddwd) and never saturates;
 *  - vpdpwssd fuses pmaddwd and the following add, which the K-quants use to apply their sub-block scales;
 *  - these loops are bound by the vector ports, and while 512-bit instructions run, Intel cores lose one of their
 *    three (port 1): 512-bit versions of the q4_1 and q8_0 loops measured slower than these.
 * Blocks are read with unaligned loads and broadcasts; nothing here assumes any alignment.
 */
#include "quant_impl.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__) && \
    defined(__F16C__)

static inline __m256i dpbusd(__m256i u, __m256i s) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s); }

/* ---- legacy quants against q8_1 ----------------------------------------------------------------------------
 * Two blocks per iteration, as in quant_avx2.c (scales2 in quant_impl.h). */

/* q4 nibbles without a shift: the block's 16 bytes in both halves of a register, the low half masked to the low
 * nibbles (elements 0..15), the high half to the high nibbles (16..31), which are then 16 × their value.
 * vpdpbusd sums them into 32 bits without overflow, and the high four float lanes are scaled by 1/16 at the end
 * (exactly: a power of two). */
static inline __m256i q4_x16(const uint8_t *p) {
    const __m256i mask = _mm256_setr_epi64x(0x0f0f0f0f0f0f0f0fll, 0x0f0f0f0f0f0f0f0fll,
                                            (long long)0xf0f0f0f0f0f0f0f0ull, (long long)0xf0f0f0f0f0f0f0f0ull);
    return _mm256_and_si256(_mm256_broadcastsi128_si256(ld128(p)), mask);
}

static inline float hsum_x16(__m256 acc) {
    return hsum_ps(_mm256_mul_ps(acc, _mm256_setr_ps(1, 1, 1, 1, 1.0f / 16, 1.0f / 16, 1.0f / 16, 1.0f / 16)));
}

static inline __m256i dot_q4_1(const uint8_t *blk, const int8_t *ys) { return dpbusd(q4_x16(blk + 4), ld256(ys)); }
DSA_VEC_DOT_LEGACY(dsa_vec_dot_q4_1_avx512, DSA_Q4_1, DSA_BS_Q4_1, dot_q4_1, hsum_x16, 1)

/* Σ (q-8)·y = Σ q·y - Σ 8·y, the 8 also ×16 in the high half */
static inline __m256i dot_q4_0(const uint8_t *blk, const int8_t *ys) { /* quants after the f16 d */
    const uint8_t *qs = blk + 2;
    const __m256i eight = _mm256_setr_epi64x(0x0808080808080808ll, 0x0808080808080808ll,
                                             (long long)0x8080808080808080ull, (long long)0x8080808080808080ull);
    __m256i y = ld256(ys);
    return _mm256_sub_epi32(dpbusd(q4_x16(qs), y), dpbusd(eight, y));
}

DSA_VEC_DOT_LEGACY(dsa_vec_dot_q4_0_avx512, DSA_Q4_0, DSA_BS_Q4_0, dot_q4_0, hsum_x16, 0)

/* signed × signed: |x| (|-128| = 128 as a byte) times y with x's sign */
static inline __m256i dot_q8_0(const uint8_t *blk, const int8_t *ys) {
    __m256i x = ld256(blk + 2), y = ld256(ys);
    return dpbusd(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

DSA_VEC_DOT_LEGACY(dsa_vec_dot_q8_0_avx512, DSA_Q8_0, DSA_BS_Q8_0, dot_q8_0, hsum_ps, 0)

/* ---- K-quants against q8_K -----------------------------------------------------------------------------------
 * As in quant_avx2.c, but vpdpwssd applies each sub-block's scale and accumulates in one instruction.  It has a
 * latency of several cycles, so the sums run in two independent chains. */

/* Q4_K and Q5_K (five: the fifth bit of each quant from Q5_K's 32 qh bytes). */
static inline float dot_q45_k(int n, const uint8_t *b, const dsa_block_q8_k *a, int five) {
    const __m256i m4 = _mm256_set1_epi8(15), sixteen = _mm256_set1_epi8(16);
    __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    for (int i = 0; i < n / DSA_QK_K; i++, b += five ? DSA_BS_Q5_K : DSA_BS_Q4_K) {
        uint32_t p[4];
        dsa_kscales_packed(b + 4, p);
        __m256i sc16 = kscales16(p), mins = kmins(p, &a[i]);
        const uint8_t *qs = b + (five ? 48 : 16);
        __m256i h = five ? ld256(b + 16) : _mm256_setzero_si256();
        __m256i sumi0 = _mm256_setzero_si256(), sumi1 = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) { /* chunk c: sub-blocks 2c (low nibbles) and 2c+1 (high nibbles) */
            __m256i q = ld256(qs + 32 * c);
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (five) { /* add 16 where bit 2c (for lo) or 2c+1 (for hi) of qh is set, through mask registers */
                __mmask32 k0 = _mm256_test_epi8_mask(h, _mm256_set1_epi8((char)(1 << 2 * c)));
                __mmask32 k1 = _mm256_test_epi8_mask(h, _mm256_set1_epi8((char)(2 << 2 * c)));
                lo = _mm256_mask_add_epi8(lo, k0, lo, sixteen);
                hi = _mm256_mask_add_epi8(hi, k1, hi, sixteen);
            }
            __m256i s0 = _mm256_shuffle_epi8(sc16, pick_words(2 * c, 2 * c));
            __m256i s1 = _mm256_shuffle_epi8(sc16, pick_words(2 * c + 1, 2 * c + 1));
            sumi0 = _mm256_dpwssd_epi32(sumi0, _mm256_maddubs_epi16(lo, ld256(a[i].qs + 64 * c)), s0);
            sumi1 = _mm256_dpwssd_epi32(sumi1, _mm256_maddubs_epi16(hi, ld256(a[i].qs + 64 * c + 32)), s1);
        }
        float d = _cvtsh_ss(dsa_rd16(b)) * a[i].d, dmin = _cvtsh_ss(dsa_rd16(b + 2)) * a[i].d;
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(sumi0, sumi1)), _mm256_set1_ps(d), acc);
        accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mins), _mm256_set1_ps(dmin), accm);
    }
    return hsum_ps(_mm256_sub_ps(acc, accm));
}

float dsa_vec_dot_q4_k_avx512(int n, const void *w, const void *a) { return dot_q45_k(n, w, a, 0); }
float dsa_vec_dot_q5_k_avx512(int n, const void *w, const void *a) { return dot_q45_k(n, w, a, 1); }

float dsa_vec_dot_q6_k_avx512(int n, const void *vw, const void *va) {
    const uint8_t *b = vw;
    const dsa_block_q8_k *a = va;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / DSA_QK_K; i++, b += DSA_BS_Q6_K) {
        __m256i sc16 = _mm256_cvtepi8_epi16(ld128(b + 192)); /* the 16 scales: groups 0..7 | 8..15 */
        /* q - 32: start from -32·Σ_g sc[g]·bsums[g] */
        __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(sc16, ld256(a[i].bsums)), 5);
        __m256i sumi0 = _mm256_sub_epi32(_mm256_setzero_si256(), off), sumi1 = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            /* this half's 8 scales in both 128-bit halves */
            __m256i sch = h ? _mm256_permute2x128_si256(sc16, sc16, 0x11) : _mm256_permute2x128_si256(sc16, sc16, 0);
            __m256i q[4];
            q6_chunks(b + 64 * h, b + 128 + 32 * h, q);
            const int8_t *y = a[i].qs + 128 * h;
            for (int k = 0; k < 4; k += 2) { /* chunk k: group 2k in the low 128 bits of the products, 2k+1 high */
                __m256i s0 = _mm256_shuffle_epi8(sch, pick_words(2 * k, 2 * k + 1));
                __m256i s1 = _mm256_shuffle_epi8(sch, pick_words(2 * k + 2, 2 * k + 3));
                sumi0 = _mm256_dpwssd_epi32(sumi0, _mm256_maddubs_epi16(q[k], ld256(y + 32 * k)), s0);
                sumi1 = _mm256_dpwssd_epi32(sumi1, _mm256_maddubs_epi16(q[k + 1], ld256(y + 32 * k + 32)), s1);
            }
        }
        float d = _cvtsh_ss(dsa_rd16(b + 208)) * a[i].d;
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(sumi0, sumi1)), _mm256_set1_ps(d), acc);
    }
    return hsum_ps(acc);
}

#endif
