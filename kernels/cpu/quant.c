/*
 * Tensor types: the plain-C reference for every type (dequantise, quantise activations, dot products), the
 * traits tables and the run-time choice between the reference, AVX2 and AVX-512 kernels.
 *
 * The reference is written to be obviously right first (every SIMD kernel is tested against it, and it against
 * the gguf Python package's dequantiser: tests/test_quant.c), and then so that a compiler can vectorise its
 * integer loops, as it is all that CPUs without AVX2 get.  Block layouts: quant_impl.h.
 *
 * Dot products work on quantised activations: a row of floats is quantised once (from_float of the weight's
 * activation type) and then dotted with every weight row, so the inner loops are integer multiply-adds with one
 * float scale per block.  For each block b of 32 (or sub-block of a K-quant super-block):
 *     Σ w·a = d_w·d_a·Σ q_w·q_a  (+ m_w·d_a·Σ q_a  for types with a minimum: that is why q8_1 carries s and
 *                                    q8_k carries bsums).
 */
#include "quant_impl.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef DSA_X86
#include <cpuid.h>
#endif

/* ---- half and bfloat16 ------------------------------------------------------------------------------------ */

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

float dsa_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) /* inf, or nan with its payload kept (as numpy does; no quieting) */
        return f32_from_bits(sign | 0x7f800000u | (man << 13));
    if (exp != 0) /* normal: rebias the exponent from 15 to 127 */
        return f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
    /* zero or subnormal: man * 2^-24, exact in float */
    return f32_from_bits(sign | f32_bits((float)man * 0x1p-24f));
}

uint16_t dsa_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) /* nan: keep it a quiet nan with the top of its payload */
        return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff));
    if (ax >= 0x477ff000u) /* >= 65520 (65504 + half an ulp, a tie that rounds to even = up): inf */
        return sign | 0x7c00;
    if (ax >= 0x38800000u) { /* >= 2^-14: normal; rebias and round the 13 dropped bits to nearest even */
        uint32_t r = ax - (112u << 23);
        return (uint16_t)(sign | ((r + 0xfffu + ((r >> 13) & 1)) >> 13));
    }
    if (ax <= 0x33000000u) /* <= 2^-25: rounds to zero (2^-25 itself is a tie, and 0 is even) */
        return sign;
    /* subnormal half: the result is round(value / 2^-24) = m >> shift, m the 24-bit significand */
    uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++; /* may carry into the smallest normal: still right */
    return (uint16_t)(sign | q);
}

float dsa_bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

static float f16_at(const uint8_t *p) { return dsa_f16_to_f32(dsa_rd16(p)); }

/* ---- to_float -------------------------------------------------------------------------------------------
 * Each value is computed with the same float operations in the same order as gguf's numpy dequantiser, so the
 * results are bit-identical.  Every product below is exact in float (an f16 scale times a small integer fits in
 * 24 bits), so a compiler that fuses a multiply and an add cannot change the result either. */

static void to_float_f32(const void *src, float *dst, int64_t n) { memcpy(dst, src, (size_t)n * sizeof(float)); }

static void to_float_f16(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    for (int64_t i = 0; i < n; i++) dst[i] = f16_at(p + 2 * i);
}

static void to_float_bf16(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    for (int64_t i = 0; i < n; i++) dst[i] = dsa_bf16_to_f32(dsa_rd16(p + 2 * i));
}

static void to_float_q4_0(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / DSA_QK; i++, b += DSA_BS_Q4_0, dst += DSA_QK) {
        float d = f16_at(b);
        int8_t q[DSA_QK];
        dsa_unpack_q4(b + 2, q, 8);
        for (int j = 0; j < DSA_QK; j++) dst[j] = d * (float)q[j];
    }
}

static void to_float_q4_1(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / DSA_QK; i++, b += DSA_BS_Q4_1, dst += DSA_QK) {
        float d = f16_at(b), m = f16_at(b + 2);
        int8_t q[DSA_QK];
        dsa_unpack_q4(b + 4, q, 0);
        for (int j = 0; j < DSA_QK; j++) dst[j] = d * (float)q[j] + m;
    }
}

static void to_float_q5_0(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / DSA_QK; i++, b += DSA_BS_Q5_0, dst += DSA_QK) {
        float d = f16_at(b);
        int8_t q[DSA_QK];
        dsa_unpack_q5(b + 2, b + 6, q, 16);
        for (int j = 0; j < DSA_QK; j++) dst[j] = d * (float)q[j];
    }
}

static void to_float_q5_1(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / DSA_QK; i++, b += DSA_BS_Q5_1, dst += DSA_QK) {
        float d = f16_at(b), m = f16_at(b + 2);
        int8_t q[DSA_QK];
        dsa_unpack_q5(b + 4, b + 8, q, 0);
        for (int j = 0; j < DSA_QK; j++) dst[j] = d * (float)q[j] + m;
    }
}

static void to_float_q8_0(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / DSA_QK; i++, b += DSA_BS_Q8_0, dst += DSA_QK) {
        float d = f16_at(b);
        for (int j = 0; j < DSA_QK; j++) dst[j] = (float)(int8_t)b[2 + j] * d;
    }
}

static void to_float_q45_k(const void *src, float *dst, int64_t n, int five) {
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / DSA_QK_K; i++, b += five ? DSA_BS_Q5_K : DSA_BS_Q4_K) {
        float d = f16_at(b), dmin = f16_at(b + 2);
        uint8_t sc[8], mn[8];
        dsa_kscales(b + 4, sc, mn);
        for (int j = 0; j < 8; j++, dst += 32) {
            int8_t q[32];
            dsa_unpack_q45_k(b + (five ? 48 : 16), five ? b + 16 : NULL, j, q);
            float ds = d * (float)sc[j], dm = dmin * (float)mn[j];
            for (int l = 0; l < 32; l++) dst[l] = ds * (float)q[l] - dm;
        }
    }
}

static void to_float_q4_k(const void *src, float *dst, int64_t n) { to_float_q45_k(src, dst, n, 0); }
static void to_float_q5_k(const void *src, float *dst, int64_t n) { to_float_q45_k(src, dst, n, 1); }

static void to_float_q6_k(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / DSA_QK_K; i++, b += DSA_BS_Q6_K, dst += DSA_QK_K) {
        const int8_t *sc = (const int8_t *)(b + 192);
        float d = f16_at(b + 208);
        int8_t q[DSA_QK_K];
        dsa_unpack_q6_k(b, q);
        for (int e = 0; e < DSA_QK_K; e++) dst[e] = d * (float)sc[e / 16] * (float)q[e];
    }
}

static void to_float_q8_1(const void *src, float *dst, int64_t n) {
    const dsa_block_q8_1 *b = src;
    for (int64_t i = 0; i < n / DSA_QK; i++)
        for (int j = 0; j < DSA_QK; j++) dst[i * DSA_QK + j] = b[i].d * (float)b[i].qs[j];
}

static void to_float_q8_k(const void *src, float *dst, int64_t n) {
    const dsa_block_q8_k *b = src;
    for (int64_t i = 0; i < n / DSA_QK_K; i++)
        for (int j = 0; j < DSA_QK_K; j++) dst[i * DSA_QK_K + j] = b[i].d * (float)b[i].qs[j];
}

/* ---- from_float (activations) ------------------------------------------------------------------------------
 * Symmetric 8-bit: d = max|x| / 127, q = round-to-nearest-even(x * (127 / max|x|)).  The SIMD versions compute
 * the same float products and round the same way (cvtps2dq), so they give identical blocks. */

static void from_float_f32(const float *src, void *dst, int64_t n) { memcpy(dst, src, (size_t)n * sizeof(float)); }

static float amax_of(const float *x, int n) {
    float m = 0;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > m) m = a;
    }
    return m;
}

static void from_float_q8_1(const float *x, void *dst, int64_t n) {
    dsa_block_q8_1 *y = dst;
    for (int64_t i = 0; i < n / DSA_QK; i++, x += DSA_QK) {
        float amax = amax_of(x, DSA_QK);
        memset(&y[i], 0, sizeof y[i]);
        if (amax < DSA_ACT_TINY) continue;
        float id = 127.0f / amax;
        int sum = 0;
        for (int j = 0; j < DSA_QK; j++) {
            y[i].qs[j] = (int8_t)lrintf(x[j] * id);
            sum += y[i].qs[j];
        }
        y[i].d = amax / 127.0f;
        y[i].s = y[i].d * (float)sum;
    }
}

static void from_float_q8_k(const float *x, void *dst, int64_t n) {
    dsa_block_q8_k *y = dst;
    for (int64_t i = 0; i < n / DSA_QK_K; i++, x += DSA_QK_K) {
        float amax = amax_of(x, DSA_QK_K);
        memset(&y[i], 0, sizeof y[i]);
        if (amax < DSA_ACT_TINY) continue;
        float id = 127.0f / amax;
        for (int j = 0; j < DSA_QK_K; j++) {
            y[i].qs[j] = (int8_t)lrintf(x[j] * id);
            y[i].bsums[j / 16] = (int16_t)(y[i].bsums[j / 16] + y[i].qs[j]);
        }
        y[i].d = amax / 127.0f;
    }
}

/* ---- vec_dot ----------------------------------------------------------------------------------------------- */

static float vec_dot_f32(int n, const void *vw, const void *va) {
    const float *w = vw, *a = va;
    float sum = 0;
    for (int i = 0; i < n; i++) sum += w[i] * a[i];
    return sum;
}

static float vec_dot_f16(int n, const void *vw, const void *va) {
    const uint8_t *w = vw;
    const float *a = va;
    float sum = 0;
    for (int i = 0; i < n; i++) sum += f16_at(w + 2 * i) * a[i];
    return sum;
}

static float vec_dot_bf16(int n, const void *vw, const void *va) {
    const uint8_t *w = vw;
    const float *a = va;
    float sum = 0;
    for (int i = 0; i < n; i++) sum += dsa_bf16_to_f32(dsa_rd16(w + 2 * i)) * a[i];
    return sum;
}

static float vec_dot_q4_0(int n, const void *vw, const void *va) {
    const uint8_t *b = vw;
    const dsa_block_q8_1 *a = va;
    float sum = 0;
    for (int i = 0; i < n / DSA_QK; i++, b += DSA_BS_Q4_0) {
        int8_t q[DSA_QK];
        dsa_unpack_q4(b + 2, q, 8);
        sum += f16_at(b) * a[i].d * (float)dsa_dot_i8(q, a[i].qs, DSA_QK);
    }
    return sum;
}

static float vec_dot_q4_1(int n, const void *vw, const void *va) {
    const uint8_t *b = vw;
    const dsa_block_q8_1 *a = va;
    float sum = 0;
    for (int i = 0; i < n / DSA_QK; i++, b += DSA_BS_Q4_1) {
        int8_t q[DSA_QK];
        dsa_unpack_q4(b + 4, q, 0);
        sum += f16_at(b) * a[i].d * (float)dsa_dot_i8(q, a[i].qs, DSA_QK) + f16_at(b + 2) * a[i].s;
    }
    return sum;
}

static float vec_dot_q5_0(int n, const void *vw, const void *va) {
    const uint8_t *b = vw;
    const dsa_block_q8_1 *a = va;
    float sum = 0;
    for (int i = 0; i < n / DSA_QK; i++, b += DSA_BS_Q5_0) {
        int8_t q[DSA_QK];
        dsa_unpack_q5(b + 2, b + 6, q, 16);
        sum += f16_at(b) * a[i].d * (float)dsa_dot_i8(q, a[i].qs, DSA_QK);
    }
    return sum;
}

static float vec_dot_q5_1(int n, const void *vw, const void *va) {
    const uint8_t *b = vw;
    const dsa_block_q8_1 *a = va;
    float sum = 0;
    for (int i = 0; i < n / DSA_QK; i++, b += DSA_BS_Q5_1) {
        int8_t q[DSA_QK];
        dsa_unpack_q5(b + 4, b + 8, q, 0);
        sum += f16_at(b) * a[i].d * (float)dsa_dot_i8(q, a[i].qs, DSA_QK) + f16_at(b + 2) * a[i].s;
    }
    return sum;
}

static float vec_dot_q8_0(int n, const void *vw, const void *va) {
    const uint8_t *b = vw;
    const dsa_block_q8_1 *a = va;
    float sum = 0;
    for (int i = 0; i < n / DSA_QK; i++, b += DSA_BS_Q8_0) {
        sum += f16_at(b) * a[i].d * (float)dsa_dot_i8((const int8_t *)(b + 2), a[i].qs, DSA_QK);
    }
    return sum;
}

/* Q4_K and Q5_K: Σ_j d·sc[j]·Σ q·a - dmin·mn[j]·Σ a over the 8 sub-blocks; Σ a comes from the bsums. */
static float vec_dot_q45_k(int n, const void *vw, const void *va, int five) {
    const uint8_t *b = vw;
    const dsa_block_q8_k *a = va;
    float sum = 0;
    for (int i = 0; i < n / DSA_QK_K; i++, b += five ? DSA_BS_Q5_K : DSA_BS_Q4_K) {
        uint8_t sc[8], mn[8];
        dsa_kscales(b + 4, sc, mn);
        int sumi = 0, summ = 0;
        for (int j = 0; j < 8; j++) {
            int8_t q[32];
            dsa_unpack_q45_k(b + (five ? 48 : 16), five ? b + 16 : NULL, j, q);
            sumi += sc[j] * dsa_dot_i8(q, a[i].qs + 32 * j, 32);
            summ += mn[j] * (a[i].bsums[2 * j] + a[i].bsums[2 * j + 1]);
        }
        sum += a[i].d * (f16_at(b) * (float)sumi - f16_at(b + 2) * (float)summ);
    }
    return sum;
}

static float vec_dot_q4_k(int n, const void *w, const void *a) { return vec_dot_q45_k(n, w, a, 0); }
static float vec_dot_q5_k(int n, const void *w, const void *a) { return vec_dot_q45_k(n, w, a, 1); }

static float vec_dot_q6_k(int n, const void *vw, const void *va) {
    const uint8_t *b = vw;
    const dsa_block_q8_k *a = va;
    float sum = 0;
    for (int i = 0; i < n / DSA_QK_K; i++, b += DSA_BS_Q6_K) {
        const int8_t *sc = (const int8_t *)(b + 192);
        int8_t q[DSA_QK_K];
        dsa_unpack_q6_k(b, q);
        int sumi = 0;
        for (int g = 0; g < 16; g++) sumi += sc[g] * dsa_dot_i8(q + 16 * g, a[i].qs + 16 * g, 16); /* one scale per 16 */
        sum += a[i].d * f16_at(b + 208) * (float)sumi;
    }
    return sum;
}

/* ---- traits -------------------------------------------------------------------------------------------- */

#define TYPE(nm, bl, size, weight, at, tf, ff, vd)                                                               \
    .name = nm, .blck = bl, .type_size = size, .is_weight = weight, .act = at, .to_float = tf, .from_float = ff, \
    .vec_dot = vd
#define TILES(t, panel)                                                                                           \
    .mm_nr = DSA_MM_NR_REF, .mm_min_rows = 1, .mm_panel_blk = panel, .mm_pack = dsa_mm_pack_##t##_ref

static const dsa_type_traits REF[DSA_TYPE_COUNT] = {
    [DSA_F32] = {TYPE("f32", 1, 4, 1, DSA_F32, to_float_f32, from_float_f32, vec_dot_f32)},
    [DSA_F16] = {TYPE("f16", 1, 2, 1, DSA_F32, to_float_f16, NULL, vec_dot_f16)},
    [DSA_BF16] = {TYPE("bf16", 1, 2, 1, DSA_F32, to_float_bf16, NULL, vec_dot_bf16)},
    [DSA_Q4_0] = {TYPE("q4_0", DSA_QK, DSA_BS_Q4_0, 1, DSA_Q8_1, to_float_q4_0, NULL, vec_dot_q4_0),
                  TILES(q4_0, DSA_MM_PANEL_LEGACY_REF), .mm_tile = dsa_mm_tile_q4_0_ref},
    [DSA_Q4_1] = {TYPE("q4_1", DSA_QK, DSA_BS_Q4_1, 1, DSA_Q8_1, to_float_q4_1, NULL, vec_dot_q4_1),
                  TILES(q4_1, DSA_MM_PANEL_LEGACY_REF), .mm_tile = dsa_mm_tile_q4_1_ref},
    /* Q5_0/Q5_1 have no tile kernels: dsa_matmul calls vec_dot for them at every batch size. */
    [DSA_Q5_0] = {TYPE("q5_0", DSA_QK, DSA_BS_Q5_0, 1, DSA_Q8_1, to_float_q5_0, NULL, vec_dot_q5_0)},
    [DSA_Q5_1] = {TYPE("q5_1", DSA_QK, DSA_BS_Q5_1, 1, DSA_Q8_1, to_float_q5_1, NULL, vec_dot_q5_1)},
    [DSA_Q8_0] = {TYPE("q8_0", DSA_QK, DSA_BS_Q8_0, 1, DSA_Q8_1, to_float_q8_0, NULL, vec_dot_q8_0),
                  TILES(q8_0, DSA_MM_PANEL_LEGACY_REF), .mm_tile = dsa_mm_tile_q4_0_ref /* same sums, unpacked */},
    [DSA_Q8_1] = {TYPE("q8_1", DSA_QK, sizeof(dsa_block_q8_1), 0, DSA_Q8_1, to_float_q8_1, from_float_q8_1, NULL)},
    [DSA_Q4_K] = {TYPE("q4_K", DSA_QK_K, DSA_BS_Q4_K, 1, DSA_Q8_K, to_float_q4_k, NULL, vec_dot_q4_k),
                  TILES(q4_k, DSA_MM_PANEL_K_REF), .mm_tile = dsa_mm_tile_q45_k_ref},
    [DSA_Q5_K] = {TYPE("q5_K", DSA_QK_K, DSA_BS_Q5_K, 1, DSA_Q8_K, to_float_q5_k, NULL, vec_dot_q5_k),
                  TILES(q5_k, DSA_MM_PANEL_K_REF), .mm_tile = dsa_mm_tile_q45_k_ref},
    [DSA_Q6_K] = {TYPE("q6_K", DSA_QK_K, DSA_BS_Q6_K, 1, DSA_Q8_K, to_float_q6_k, NULL, vec_dot_q6_k),
                  TILES(q6_k, DSA_MM_PANEL_K_REF), .mm_tile = dsa_mm_tile_q6_k_ref},
    [DSA_Q8_K] = {TYPE("q8_K", DSA_QK_K, sizeof(dsa_block_q8_k), 0, DSA_Q8_K, to_float_q8_k, from_float_q8_k, NULL)},
};

/* One table per level (1 generic, 2 avx2, 3 avx512), built once and then only read; g_level picks the one
 * dsa_traits answers from, so switching levels never changes a table another thread is reading. */
static dsa_type_traits g_tab[4][DSA_TYPE_COUNT];
static pthread_once_t g_build_once = PTHREAD_ONCE_INIT;
static pthread_once_t g_auto_once = PTHREAD_ONCE_INIT;
static _Atomic(int) g_level; /* 0 until chosen */
static const char *const LEVEL_NAME[4] = {"generic", "generic", "avx2", "avx512"};

#ifdef DSA_X86
typedef struct {
    enum dsa_type t;
    int nr, min_rows;
    size_t panel_blk;
    void (*pack)(int, const void *, size_t, int, void *);
    void (*tile)(int, const void *, const void *, size_t, const int32_t *, int, float *, size_t, int);
    void (*gemv)(int, const void *, size_t, const void *, const int32_t *, float *);
} tile_impl;

static void set_tiles(dsa_type_traits *t, const tile_impl *impl, size_t count) {
    for (size_t i = 0; i < count; i++) {
        dsa_type_traits *tt = &t[impl[i].t];
        tt->mm_nr = impl[i].nr, tt->mm_min_rows = impl[i].min_rows, tt->mm_panel_blk = impl[i].panel_blk;
        tt->mm_pack = impl[i].pack, tt->mm_tile = impl[i].tile, tt->mm_gemv = impl[i].gemv;
    }
}
#endif

static void build_tables(void) {
    for (int l = 1; l <= 3; l++) {
        memcpy(g_tab[l], REF, sizeof REF);
        /* The plain-C tiles are the reference the SIMD ones are tested against, not a fast path: their fmaf is a
         * library call without FMA hardware, and vec_dot is faster there.  A level uses tiles only where it has
         * SIMD ones. */
        for (int i = 0; i < DSA_TYPE_COUNT; i++) {
            g_tab[l][i].mm_nr = g_tab[l][i].mm_min_rows = 0, g_tab[l][i].mm_panel_blk = 0;
            g_tab[l][i].mm_pack = NULL, g_tab[l][i].mm_tile = NULL;
        }
    }
#ifdef DSA_X86
    /* min_rows = 1 everywhere: a token's logits must not depend on whether it was prefilled in a batch or decoded
     * alone (the tiles and vec_dot round differently).  For the legacy types one row is also faster through a
     * panel, as packing prefetches the next one; a K-quant panel costs 12-38% more than vec_dot for one row
     * (measured 2026-11-28), which we pay for that consistency. */
    static const tile_impl tiles2[] = {
        {DSA_Q4_0, 8, 1, DSA_MM_PANEL8_LEGACY, dsa_mm_pack_q4_0_avx2, dsa_mm_tile_q4_0_avx2, dsa_mm_gemv_q4_0_avx2},
        {DSA_Q4_1, 8, 1, DSA_MM_PANEL8_LEGACY, dsa_mm_pack_q4_1_avx2, dsa_mm_tile_q4_1_avx2, dsa_mm_gemv_q4_1_avx2},
        {DSA_Q8_0, 8, 1, DSA_MM_PANEL8_Q8_0, dsa_mm_pack_q8_0_avx2, dsa_mm_tile_q8_0_avx2, dsa_mm_gemv_q8_0_avx2},
        {DSA_Q4_K, 8, 1, DSA_MM_PANEL8_K, dsa_mm_pack_q4_k_avx2, dsa_mm_tile_q4_k_avx2, dsa_mm_gemv_q4_k_avx2},
        {DSA_Q5_K, 8, 1, DSA_MM_PANEL8_K, dsa_mm_pack_q5_k_avx2, dsa_mm_tile_q5_k_avx2, dsa_mm_gemv_q5_k_avx2},
        {DSA_Q6_K, 8, 1, DSA_MM_PANEL8_K, dsa_mm_pack_q6_k_avx2, dsa_mm_tile_q6_k_avx2, dsa_mm_gemv_q6_k_avx2},
    };
    static const tile_impl tiles3[] = {
        {DSA_Q4_0, 16, 1, DSA_MM_PANEL16_LEGACY, dsa_mm_pack_q4_0_avx512, dsa_mm_tile_q4_0_avx512, dsa_mm_gemv_q4_0_avx512},
        {DSA_Q4_1, 16, 1, DSA_MM_PANEL16_LEGACY, dsa_mm_pack_q4_1_avx512, dsa_mm_tile_q4_1_avx512, dsa_mm_gemv_q4_1_avx512},
        {DSA_Q8_0, 16, 1, DSA_MM_PANEL16_LEGACY, dsa_mm_pack_q8_0_avx512, dsa_mm_tile_q8_0_avx512, dsa_mm_gemv_q8_0_avx512},
        {DSA_Q4_K, 16, 1, DSA_MM_PANEL16_K, dsa_mm_pack_q4_k_avx512, dsa_mm_tile_q45_k_avx512, dsa_mm_gemv_q4_k_avx512},
        {DSA_Q5_K, 16, 1, DSA_MM_PANEL16_K, dsa_mm_pack_q5_k_avx512, dsa_mm_tile_q45_k_avx512, dsa_mm_gemv_q5_k_avx512},
        {DSA_Q6_K, 16, 1, DSA_MM_PANEL16_K, dsa_mm_pack_q6_k_avx512, dsa_mm_tile_q6_k_avx512, dsa_mm_gemv_q6_k_avx512},
    };
    set_tiles(g_tab[2], tiles2, sizeof tiles2 / sizeof tiles2[0]);
    set_tiles(g_tab[3], tiles2, sizeof tiles2 / sizeof tiles2[0]);
    set_tiles(g_tab[3], tiles3, sizeof tiles3 / sizeof tiles3[0]);
    for (int l = 2; l <= 3; l++) {
        dsa_type_traits *t = g_tab[l];
        t[DSA_F32].vec_dot = dsa_vec_dot_f32_avx2;
        t[DSA_F16].vec_dot = dsa_vec_dot_f16_avx2;
        t[DSA_BF16].vec_dot = dsa_vec_dot_bf16_avx2;
        t[DSA_Q4_0].vec_dot = dsa_vec_dot_q4_0_avx2;
        t[DSA_Q4_1].vec_dot = dsa_vec_dot_q4_1_avx2;
        t[DSA_Q5_0].vec_dot = dsa_vec_dot_q5_0_avx2; /* also at the AVX-512 level: no VNNI version yet */
        t[DSA_Q5_1].vec_dot = dsa_vec_dot_q5_1_avx2;
        t[DSA_Q8_0].vec_dot = dsa_vec_dot_q8_0_avx2;
        t[DSA_Q4_K].vec_dot = dsa_vec_dot_q4_k_avx2;
        t[DSA_Q5_K].vec_dot = dsa_vec_dot_q5_k_avx2;
        t[DSA_Q6_K].vec_dot = dsa_vec_dot_q6_k_avx2;
        t[DSA_Q8_1].from_float = dsa_quantize_q8_1_avx2;
        t[DSA_Q8_K].from_float = dsa_quantize_q8_k_avx2;
    }
    /* Only where AVX-512 measured faster than AVX2 (bench/bench_quant.c); the rest stay on AVX2. */
    dsa_type_traits *t = g_tab[3];
    t[DSA_Q4_0].vec_dot = dsa_vec_dot_q4_0_avx512;
    t[DSA_Q4_1].vec_dot = dsa_vec_dot_q4_1_avx512;
    t[DSA_Q8_0].vec_dot = dsa_vec_dot_q8_0_avx512;
    t[DSA_Q4_K].vec_dot = dsa_vec_dot_q4_k_avx512;
    t[DSA_Q5_K].vec_dot = dsa_vec_dot_q5_k_avx512;
    t[DSA_Q6_K].vec_dot = dsa_vec_dot_q6_k_avx512;
#endif
}

/* Highest level this CPU (and OS: __builtin_cpu_supports checks the saved register state too) can run. */
static int cpu_level(void) {
#ifdef DSA_X86
    __builtin_cpu_init();
    unsigned a, b, c, d;
    int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c)) return 1;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vnni"))
        return 3;
    return 2;
#else
    return 1;
#endif
}

static int choose_level(int level) {
    if (level <= 0) {
        level = 3;
        const char *env = getenv("DSA_CPU");
        if (env && *env) {
            if (!strcmp(env, "generic")) level = 1;
            else if (!strcmp(env, "avx2")) level = 2;
            else if (!strcmp(env, "avx512")) level = 3;
            else fprintf(stderr, "dsa: ignoring DSA_CPU=%s (want generic, avx2 or avx512)\n", env);
        }
    }
    if (level > 3) level = 3;
    int max = cpu_level();
    return level < max ? level : max;
}

void dsa_kernels_init(int level) {
    pthread_once(&g_build_once, build_tables);
    atomic_store(&g_level, choose_level(level));
}

static void auto_init(void) {
    pthread_once(&g_build_once, build_tables);
    int expected = 0; /* an explicit dsa_kernels_init that got here first wins */
    atomic_compare_exchange_strong(&g_level, &expected, choose_level(0));
}

static int active_level(void) {
    int l = atomic_load_explicit(&g_level, memory_order_acquire);
    if (!l) {
        pthread_once(&g_auto_once, auto_init);
        l = atomic_load(&g_level);
    }
    return l;
}

const dsa_type_traits *dsa_traits_ref(enum dsa_type t) {
    return (unsigned)t < DSA_TYPE_COUNT && REF[t].name ? &REF[t] : NULL;
}

const dsa_type_traits *dsa_traits(enum dsa_type t) {
    if (!dsa_traits_ref(t)) return NULL;
    return &g_tab[active_level()][t];
}

const char *dsa_cpu_name(void) { return LEVEL_NAME[active_level()]; }

size_t dsa_row_size(enum dsa_type t, int64_t n) {
    const dsa_type_traits *tt = dsa_traits_ref(t);
    return tt ? (size_t)(n / tt->blck) * tt->type_size : 0;
}

const char *dsa_type_name(int t) {
    const dsa_type_traits *tt = dsa_traits_ref((enum dsa_type)t);
    return tt ? tt->name : "unknown";
}
