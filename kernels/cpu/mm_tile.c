/*
 * Tile kernels, plain C: a panel of weight rows times many activation rows (the mm_pack / mm_tile traits).
 *
 * Why tiles.  vec_dot takes one weight row and one activation row, so a prefill of n tokens unpacks every weight
 * block n times, and every call ends in a horizontal sum.  A tile instead unpacks a few weight rows once (mm_pack,
 * into a panel that stays in L1) and then runs every activation row past it (mm_tile).  The SIMD versions
 * (mm_tile_avx2.c, mm_tile_avx512.c) transpose the panel so that each vector lane is one weight row: the byte
 * products of lane i are weight row i's, an activation value is broadcast to all lanes, and a vector of results is
 * a row of Y, stored as it is: no horizontal sums and one float scale multiply per block for 8 or 16 rows at once.
 *
 * The contract every implementation keeps, so that they all give the same bits (and a result never depends on how
 * many activation rows, weight rows or threads a call had).  For one weight row w and one activation row a:
 *
 *   legacy types (q4_0, q4_1, q8_0; a in q8_1), for each block b in order:
 *       dot   = Σ q·a.qs over the 32 elements, exactly, in integers  (q = the signed quant: q4_0 q-8, q8_0 q)
 *       accd  = fma((float)dot, d_b * a_b.d, accd)
 *       accm  = fma(m_b, a_b.s, accm)                      q4_1 only (its minimum)
 *     y = accd + accm (q4_1), accd (the others)
 *   q4_K, q5_K (a in q8_K), for each super-block in order:
 *       sumi  = Σ_j sc_j · Σ q·a.qs over sub-block j,  summ = Σ_j mn_j · (a.bsums[2j] + a.bsums[2j+1])  (integers)
 *       accd  = fma((float)sumi, d * a.d, accd),  accm = fma((float)summ, dmin * a.d, accm)
 *     y = accd - accm
 *   q6_K: sumi = Σ_g sc_g · Σ (q-32)·a.qs over group g of 16;  accd = fma((float)sumi, d * a.d, accd);  y = accd
 *
 * accd and accm start at +0, every product and fma is rounded once to float (round to nearest even), the integer
 * sums cannot overflow (q6_K's largest: 16 · 128 · 16 · 32 · 127 < 2^31).  The two accumulators keep the rounding
 * of the scaled part and the minimum part apart, as vec_dot's bounds assume (tests/test_quant.c).
 *
 * The plain-C panels below are 8 rows of unpacked quants in element order; the SIMD files have their own layouts.
 * These tiles are the reference the SIMD ones are tested against (tests/test_matmul.c), not a fast path: without
 * FMA hardware fmaf is a library call, so the generic level keeps calling vec_dot.
 *
 * Speed (bench/bench_quant.c, Xeon Sapphire Rapids, 1 thread, 576 columns, 64 activation rows; ns per weight row
 * per activation row, vec_dot in brackets): q4_1 AVX-512 3-5 (25-34), AVX2 7-10 (41); q8_0 AVX-512 4-7 (35),
 * AVX2 14-22 (34-41); q4_K/q5_K/q6_K at 1024 columns AVX-512 7-10 (44-48), AVX2 17 (47-64).
 */
#include "quant_impl.h"

#include <math.h>
#include <string.h>

#define NR DSA_MM_NR_REF

void dsa_q8_1_sums(const void *a, int64_t n, int32_t *sums) {
    const dsa_block_q8_1 *b = a;
    for (int64_t i = 0; i < n / DSA_QK; i++) {
        int s = 0;
        for (int j = 0; j < DSA_QK; j++) s += b[i].qs[j];
        sums[i] = s;
    }
}

/* ---- legacy types ---------------------------------------------------------------------------------------- */

typedef struct {
    int8_t q[NR][DSA_QK]; /* signed quants in element order */
    float d[NR], m[NR];
} panel_legacy;
_Static_assert(sizeof(panel_legacy) == DSA_MM_PANEL_LEGACY_REF, "panel size in quant_impl.h");

/* kind: DSA_Q4_0, DSA_Q4_1 or DSA_Q8_0 */
static void pack_legacy(int n, const void *w, size_t ws, int rows, void *panel, enum dsa_type kind) {
    panel_legacy *P = panel;
    int bs = kind == DSA_Q4_0 ? DSA_BS_Q4_0 : kind == DSA_Q4_1 ? DSA_BS_Q4_1 : DSA_BS_Q8_0;
    memset(P, 0, (size_t)(n / DSA_QK) * sizeof *P);
    for (int l = 0; l < rows; l++)
        for (int i = 0; i < n / DSA_QK; i++) {
            const uint8_t *b = (const uint8_t *)w + (size_t)l * ws + (size_t)i * bs;
            P[i].d[l] = dsa_f16_to_f32(dsa_rd16(b));
            if (kind == DSA_Q4_1) P[i].m[l] = dsa_f16_to_f32(dsa_rd16(b + 2));
            if (kind == DSA_Q8_0) memcpy(P[i].q[l], b + 2, DSA_QK);
            else dsa_unpack_q4(b + (kind == DSA_Q4_1 ? 4 : 2), P[i].q[l], kind == DSA_Q4_0 ? 8 : 0);
        }
}

static void tile_legacy(int n, const void *panel, const void *va, size_t as, int nact, float *y, size_t ldy,
                        int rows, int has_m) {
    const panel_legacy *P = panel;
    for (int r = 0; r < nact; r++) {
        const dsa_block_q8_1 *a = (const void *)((const char *)va + (size_t)r * as);
        for (int l = 0; l < rows; l++) {
            float accd = 0, accm = 0;
            for (int i = 0; i < n / DSA_QK; i++) {
                int dot = dsa_dot_i8(P[i].q[l], a[i].qs, DSA_QK);
                accd = fmaf((float)dot, P[i].d[l] * a[i].d, accd);
                if (has_m) accm = fmaf(P[i].m[l], a[i].s, accm);
            }
            y[(size_t)r * ldy + l] = has_m ? accd + accm : accd;
        }
    }
}

void dsa_mm_pack_q4_0_ref(int n, const void *w, size_t ws, int rows, void *p) { pack_legacy(n, w, ws, rows, p, DSA_Q4_0); }
void dsa_mm_pack_q4_1_ref(int n, const void *w, size_t ws, int rows, void *p) { pack_legacy(n, w, ws, rows, p, DSA_Q4_1); }
void dsa_mm_pack_q8_0_ref(int n, const void *w, size_t ws, int rows, void *p) { pack_legacy(n, w, ws, rows, p, DSA_Q8_0); }

void dsa_mm_tile_q4_0_ref(int n, const void *p, const void *a, size_t as, const int32_t *asum, int nact, float *y,
                      size_t ldy, int rows) {
    (void)asum;
    tile_legacy(n, p, a, as, nact, y, ldy, rows, 0);
}
void dsa_mm_tile_q4_1_ref(int n, const void *p, const void *a, size_t as, const int32_t *asum, int nact, float *y,
                      size_t ldy, int rows) {
    (void)asum;
    tile_legacy(n, p, a, as, nact, y, ldy, rows, 1);
}

/* ---- K-quants ------------------------------------------------------------------------------------------------ */

typedef struct {
    int8_t q[NR][DSA_QK_K]; /* q4_K, q5_K: unsigned quants; q6_K: q - 32 */
    int8_t sc[NR][16];      /* q4_K, q5_K: the 8 sub-block scales; q6_K: the 16 group scales */
    uint8_t mn[NR][8];      /* q4_K, q5_K: the 8 sub-block mins */
    float d[NR], dmin[NR];
} panel_k;
_Static_assert(sizeof(panel_k) == DSA_MM_PANEL_K_REF, "panel size in quant_impl.h");

static void pack_k(int n, const void *w, size_t ws, int rows, void *panel, enum dsa_type kind) {
    panel_k *P = panel;
    int bs = kind == DSA_Q4_K ? DSA_BS_Q4_K : kind == DSA_Q5_K ? DSA_BS_Q5_K : DSA_BS_Q6_K;
    memset(P, 0, (size_t)(n / DSA_QK_K) * sizeof *P);
    for (int l = 0; l < rows; l++)
        for (int i = 0; i < n / DSA_QK_K; i++) {
            const uint8_t *b = (const uint8_t *)w + (size_t)l * ws + (size_t)i * bs;
            if (kind == DSA_Q6_K) {
                dsa_unpack_q6_k(b, P[i].q[l]);
                memcpy(P[i].sc[l], b + 192, 16);
                P[i].d[l] = dsa_f16_to_f32(dsa_rd16(b + 208));
                continue;
            }
            int five = kind == DSA_Q5_K;
            uint8_t sc[8];
            dsa_kscales(b + 4, sc, P[i].mn[l]);
            for (int j = 0; j < 8; j++) {
                P[i].sc[l][j] = (int8_t)sc[j]; /* 6 bits: fits */
                dsa_unpack_q45_k(b + (five ? 48 : 16), five ? b + 16 : NULL, j, P[i].q[l] + 32 * j);
            }
            P[i].d[l] = dsa_f16_to_f32(dsa_rd16(b));
            P[i].dmin[l] = dsa_f16_to_f32(dsa_rd16(b + 2));
        }
}

static void tile_k(int n, const void *panel, const void *va, size_t as, int nact, float *y, size_t ldy, int rows,
                   int six) {
    const panel_k *P = panel;
    for (int r = 0; r < nact; r++) {
        const dsa_block_q8_k *a = (const void *)((const char *)va + (size_t)r * as);
        for (int l = 0; l < rows; l++) {
            float accd = 0, accm = 0;
            for (int i = 0; i < n / DSA_QK_K; i++) {
                int sumi = 0, summ = 0;
                if (six) {
                    for (int g = 0; g < 16; g++)
                        sumi += P[i].sc[l][g] * dsa_dot_i8(P[i].q[l] + 16 * g, a[i].qs + 16 * g, 16);
                } else {
                    for (int j = 0; j < 8; j++) {
                        sumi += P[i].sc[l][j] * dsa_dot_i8(P[i].q[l] + 32 * j, a[i].qs + 32 * j, 32);
                        summ += P[i].mn[l][j] * (a[i].bsums[2 * j] + a[i].bsums[2 * j + 1]);
                    }
                }
                accd = fmaf((float)sumi, P[i].d[l] * a[i].d, accd);
                if (!six) accm = fmaf((float)summ, P[i].dmin[l] * a[i].d, accm);
            }
            y[(size_t)r * ldy + l] = six ? accd : accd - accm;
        }
    }
}

void dsa_mm_pack_q4_k_ref(int n, const void *w, size_t ws, int rows, void *p) { pack_k(n, w, ws, rows, p, DSA_Q4_K); }
void dsa_mm_pack_q5_k_ref(int n, const void *w, size_t ws, int rows, void *p) { pack_k(n, w, ws, rows, p, DSA_Q5_K); }
void dsa_mm_pack_q6_k_ref(int n, const void *w, size_t ws, int rows, void *p) { pack_k(n, w, ws, rows, p, DSA_Q6_K); }

void dsa_mm_tile_q45_k_ref(int n, const void *p, const void *a, size_t as, const int32_t *asum, int nact, float *y,
                       size_t ldy, int rows) {
    (void)asum;
    tile_k(n, p, a, as, nact, y, ldy, rows, 0);
}
void dsa_mm_tile_q6_k_ref(int n, const void *p, const void *a, size_t as, const int32_t *asum, int nact, float *y,
                      size_t ldy, int rows) {
    (void)asum;
    tile_k(n, p, a, as, nact, y, ldy, rows, 1);
}
