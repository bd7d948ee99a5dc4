/*
 * AVX2 tile kernels (see mm_tile.c for what a tile is and the float sequence every version keeps).
 *
 * A panel is 8 weight rows, one per 32-bit lane of a ymm register; for each block, vector k holds in lane i the 4
 * bytes of elements 4k..4k+3 of weight row i (the layout of mm_tile_avx512.c at half the width).  Without VNNI the
 * byte products go through pmaddubsw (unsigned × signed bytes, adjacent pairs summed to 16 bits), with the
 * activation bytes 4k..4k+3 broadcast to every lane.  Quants are kept at 4 bits so that the 16-bit sums of a whole
 * block cannot saturate (a pair is at most 2·15·127, eight of them 30480 < 32767), and one pmaddwd per block and
 * activation row widens them to 32 bits:
 *   q4_0, q4_1: the nibbles (q4_0's -8 is taken off afterwards as 8 · Σ a, from the block sums asum);
 *   q8_0:       q + 128 split into its high and low nibble, each summed as above, 16 · high + low - 128 · Σ a.
 * Packing loads the 8 rows' blocks and transposes them with unpack shuffles (no gathers: slow on many AVX2 CPUs).
 */
#include "quant_impl.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#define NR 8
#ifndef DSA_MM_TR256 /* activation rows per pass over the panel (16 ymm registers; measured: bench_quant) */
#define DSA_MM_TR256 4
#endif
#define TR DSA_MM_TR256

typedef struct {
    uint8_t q[8][NR][4]; /* chunk k (elements 4k..4k+3), lane i, 4 bytes: nibbles */
    float d[NR], m[NR];
} panel8;
typedef struct {
    uint8_t q[8][NR][4], qh[8][NR][4]; /* q8_0: low and high nibbles of q + 128 */
    float d[NR];
    float pad[NR]; /* keeps the panel a multiple of 64 bytes */
} panel8x;
_Static_assert(sizeof(panel8) == DSA_MM_PANEL8_LEGACY && sizeof(panel8x) == DSA_MM_PANEL8_Q8_0,
               "panel sizes in quant_impl.h");

static inline int32_t rd32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}
static inline float rdf(const uint8_t *p) {
    float v;
    memcpy(&v, p, 4);
    return v;
}

/* ---- packing ------------------------------------------------------------------------------------------------- */

/* Transpose 4×4 dwords in each 128-bit half: y[p] = [row p | row p+4] in, out[c] = dword c of rows 0..7. */
static inline void transpose4(const __m256i y[4], __m256i out[4]) {
    __m256i t0 = _mm256_unpacklo_epi32(y[0], y[1]), t1 = _mm256_unpackhi_epi32(y[0], y[1]);
    __m256i t2 = _mm256_unpacklo_epi32(y[2], y[3]), t3 = _mm256_unpackhi_epi32(y[2], y[3]);
    out[0] = _mm256_unpacklo_epi64(t0, t2), out[1] = _mm256_unpackhi_epi64(t0, t2);
    out[2] = _mm256_unpacklo_epi64(t1, t3), out[3] = _mm256_unpackhi_epi64(t1, t3);
}

/* 32 bytes of 8 rows (at b, ws apart) transposed: g[c] = dword c of rows 0..7. */
static inline void transpose8(const uint8_t *b, size_t ws, __m256i g[8]) {
    __m256i r[8], t[8], u[8];
    for (int j = 0; j < 8; j++) r[j] = _mm256_loadu_si256((const __m256i *)(b + j * ws));
    for (int j = 0; j < 8; j += 2)
        t[j] = _mm256_unpacklo_epi32(r[j], r[j + 1]), t[j + 1] = _mm256_unpackhi_epi32(r[j], r[j + 1]);
    for (int h = 0; h < 8; h += 4) { /* rows h..h+3: [c0 | c4], [c1 | c5], [c2 | c6], [c3 | c7] */
        u[h] = _mm256_unpacklo_epi64(t[h], t[h + 2]), u[h + 1] = _mm256_unpackhi_epi64(t[h], t[h + 2]);
        u[h + 2] = _mm256_unpacklo_epi64(t[h + 1], t[h + 3]), u[h + 3] = _mm256_unpackhi_epi64(t[h + 1], t[h + 3]);
    }
    for (int c = 0; c < 4; c++) {
        g[c] = _mm256_permute2x128_si256(u[c], u[c + 4], 0x20);
        g[c + 4] = _mm256_permute2x128_si256(u[c], u[c + 4], 0x31);
    }
}

/* 16 bytes of 8 rows transposed: g[c] = dword c of rows 0..7. */
static inline void transpose4x8(const uint8_t *b, size_t ws, __m256i g[4]) {
    __m256i y[4];
    for (int p = 0; p < 4; p++) y[p] = _mm256_loadu2_m128i((const __m128i *)(b + (p + 4) * ws), (const __m128i *)(b + p * ws));
    transpose4(y, g);
}

/* The first dword of 8 rows' blocks at b (ws apart): f16 d in its low half, f16 m (q4_1) in its high half. */
static inline void scales8(const uint8_t *b, size_t ws, float *d, float *m) {
    __m256i y[4];
    for (int p = 0; p < 4; p++) y[p] = _mm256_loadu2_m128i((const __m128i *)(b + (p + 4) * ws), (const __m128i *)(b + p * ws));
    __m256i t0 = _mm256_unpacklo_epi32(y[0], y[1]), t2 = _mm256_unpacklo_epi32(y[2], y[3]);
    __m256i dm = _mm256_unpacklo_epi64(t0, t2); /* lane i: row i's first dword */
    const __m256i lo = _mm256_set1_epi32(0xffff);
    /* words per 128-bit half: d0..d3 m0..m3 | d4..d7 m4..m7, then d0..d7 | m0..m7 */
    __m256i w = _mm256_packus_epi32(_mm256_and_si256(dm, lo), _mm256_srli_epi32(dm, 16));
    w = _mm256_permute4x64_epi64(w, _MM_SHUFFLE(3, 1, 2, 0));
    _mm256_store_ps(d, _mm256_cvtph_ps(_mm256_castsi256_si128(w)));
    if (m) _mm256_store_ps(m, _mm256_cvtph_ps(_mm256_extracti128_si256(w, 1)));
}

/* Unpacked element e (0..31) of a legacy block as the panel holds it (q8_0: q + 128, split later). */
static int legacy_byte(const uint8_t *b, enum dsa_type kind, int e) {
    if (kind == DSA_Q8_0) return (b[2 + e] + 128) & 255;
    const uint8_t *qs = b + (kind == DSA_Q4_1 ? 4 : 2);
    return e < 16 ? qs[e] & 15 : qs[e - 16] >> 4;
}

/* A last panel of fewer than 8 rows: byte by byte (the vector loads would read past the matrix). */
static void pack8_partial(int nb, const uint8_t *w, size_t ws, int rows, void *panel, enum dsa_type kind) {
    const int bs = kind == DSA_Q4_0 ? DSA_BS_Q4_0 : kind == DSA_Q4_1 ? DSA_BS_Q4_1 : DSA_BS_Q8_0;
    const size_t pb = kind == DSA_Q8_0 ? sizeof(panel8x) : sizeof(panel8);
    memset(panel, 0, (size_t)nb * pb);
    for (int i = 0; i < nb; i++) {
        uint8_t *p = (uint8_t *)panel + (size_t)i * pb;
        for (int l = 0; l < NR; l++)
            for (int e = 0; e < DSA_QK; e++) {
                int v = l < rows ? legacy_byte(w + (size_t)l * ws + (size_t)i * bs, kind, e) : kind == DSA_Q8_0 ? 128 : 0;
                if (kind == DSA_Q8_0) {
                    ((panel8x *)p)->q[e / 4][l][e % 4] = (uint8_t)(v & 15);
                    ((panel8x *)p)->qh[e / 4][l][e % 4] = (uint8_t)(v >> 4);
                } else {
                    ((panel8 *)p)->q[e / 4][l][e % 4] = (uint8_t)v;
                }
            }
        for (int l = 0; l < rows; l++) {
            const uint8_t *b = w + (size_t)l * ws + (size_t)i * bs;
            if (kind == DSA_Q8_0) {
                ((panel8x *)p)->d[l] = dsa_f16_to_f32(dsa_rd16(b));
            } else {
                ((panel8 *)p)->d[l] = dsa_f16_to_f32(dsa_rd16(b));
                ((panel8 *)p)->m[l] = kind == DSA_Q4_1 ? dsa_f16_to_f32(dsa_rd16(b + 2)) : 0;
            }
        }
    }
}

static inline __attribute__((always_inline)) void pack8_legacy(int n, const void *vw, size_t ws, int rows,
                                                               void *panel, enum dsa_type kind) {
    const uint8_t *w = vw;
    const int nb = n / DSA_QK, bs = kind == DSA_Q4_0 ? DSA_BS_Q4_0 : kind == DSA_Q4_1 ? DSA_BS_Q4_1 : DSA_BS_Q8_0;
    if (rows < NR) {
        pack8_partial(nb, w, ws, rows, panel, kind);
        return;
    }
    const __m256i m4 = _mm256_set1_epi8(15);
    /* The rows three panels ahead, a slice per block, into L2: decode packs every panel for one activation row
     * (see avx512).  At the AVX2 level on an AMD EPYC, a streaming Q4_1 GEMV of 576 columns, 1 / 2 threads: the
     * next panel into L1 11 / 20 GB/s; two panels ahead into L2 17.6 / 27; three 18 / 29; four 17 / 27. */
    const uint8_t *ahead = w + 3 * NR * ws;
    for (int i = 0; i < nb; i++) {
        const uint8_t *b = w + (size_t)i * bs;
        for (size_t o = (size_t)i * NR * bs; o < (size_t)(i + 1) * NR * bs; o += 64)
            _mm_prefetch((const char *)ahead + o, _MM_HINT_T1);
        if (kind == DSA_Q8_0) {
            panel8x *p = (panel8x *)panel + i;
            scales8(b, ws, p->d, NULL);
            __m256i g[8];
            transpose8(b + 2, ws, g);
            for (int c = 0; c < 8; c++) {
                __m256i v = _mm256_xor_si256(g[c], _mm256_set1_epi8((char)0x80));
                _mm256_store_si256((__m256i *)p->q[c], _mm256_and_si256(v, m4));
                _mm256_store_si256((__m256i *)p->qh[c], _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
            }
        } else {
            panel8 *p = (panel8 *)panel + i;
            scales8(b, ws, p->d, kind == DSA_Q4_1 ? p->m : NULL);
            const uint8_t *qs = b + (kind == DSA_Q4_1 ? 4 : 2);
            __m256i y[4], g[4];
            for (int j = 0; j < 4; j++)
                y[j] = _mm256_loadu2_m128i((const __m128i *)(qs + (j + 4) * ws), (const __m128i *)(qs + j * ws));
            transpose4(y, g);
            for (int c = 0; c < 4; c++) { /* bytes 4c..4c+3: elements 4c.. (low nibbles) and 16+4c.. (high) */
                _mm256_store_si256((__m256i *)p->q[c], _mm256_and_si256(g[c], m4));
                _mm256_store_si256((__m256i *)p->q[c + 4], _mm256_and_si256(_mm256_srli_epi16(g[c], 4), m4));
            }
            if (kind != DSA_Q4_1) memset(p->m, 0, sizeof p->m);
        }
    }
}

void dsa_mm_pack_q4_0_avx2(int n, const void *w, size_t ws, int rows, void *p) { pack8_legacy(n, w, ws, rows, p, DSA_Q4_0); }
void dsa_mm_pack_q4_1_avx2(int n, const void *w, size_t ws, int rows, void *p) { pack8_legacy(n, w, ws, rows, p, DSA_Q4_1); }
void dsa_mm_pack_q8_0_avx2(int n, const void *w, size_t ws, int rows, void *p) { pack8_legacy(n, w, ws, rows, p, DSA_Q8_0); }

/* ---- tiles ---------------------------------------------------------------------------------------------------- */

static inline void store8(float *y, __m256 v, int rows) {
    if (rows >= NR) {
        _mm256_storeu_ps(y, v);
    } else {
        __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(rows), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        _mm256_maskstore_ps(y, mask, v);
    }
}

/* R activation rows against one panel; shift: the offset taken off as Σ a << shift (q4_0: 3, q8_0: 7);
 * has_m: q4_1's minimum; split: q8_0's two nibble halves. */
static inline __attribute__((always_inline)) void tile8_legacy_r(int nb, const uint8_t *P, const uint8_t *a,
                                                                 size_t as, const int32_t *asum, float *y,
                                                                 size_t ldy, int rows, const int R,
                                                                 const int has_m, const int shift, const int split) {
    const size_t pb = split ? sizeof(panel8x) : sizeof(panel8);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 accd[8];
    for (int r = 0; r < R; r++) accd[r] = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const uint8_t *p = P + (size_t)i * pb;
        const uint8_t *ab = a + (size_t)i * sizeof(dsa_block_q8_1);
        __m256i s[8], sh[8];
        for (int k = 0; k < 8; k++) {
            __m256i w = _mm256_load_si256((const __m256i *)(p + 32 * k));
            __m256i wh = split ? _mm256_load_si256((const __m256i *)(p + 256 + 32 * k)) : w;
            for (int r = 0; r < R; r++) {
                __m256i x = _mm256_set1_epi32(rd32(ab + (size_t)r * as + offsetof(dsa_block_q8_1, qs) + 4 * k));
                __m256i v = _mm256_maddubs_epi16(w, x);
                s[r] = k ? _mm256_add_epi16(s[r], v) : v;
                if (split) {
                    __m256i vh = _mm256_maddubs_epi16(wh, x);
                    sh[r] = k ? _mm256_add_epi16(sh[r], vh) : vh;
                }
            }
        }
        __m256 d = _mm256_load_ps((const float *)(p + (split ? offsetof(panel8x, d) : offsetof(panel8, d))));
        for (int r = 0; r < R; r++) {
            __m256i dot = _mm256_madd_epi16(s[r], ones);
            if (split) dot = _mm256_add_epi32(dot, _mm256_madd_epi16(sh[r], _mm256_set1_epi16(16)));
            if (shift) dot = _mm256_sub_epi32(dot, _mm256_set1_epi32(asum[(size_t)r * nb + i] * (1 << shift)));
            __m256 sc = _mm256_mul_ps(d, _mm256_set1_ps(rdf(ab + (size_t)r * as)));
            accd[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), sc, accd[r]);
        }
    }
    if (has_m) {
        __m256 accm[8];
        for (int r = 0; r < R; r++) accm[r] = _mm256_setzero_ps();
        for (int i = 0; i < nb; i++) {
            __m256 m = _mm256_load_ps(((const panel8 *)P)[i].m);
            const uint8_t *ab = a + (size_t)i * sizeof(dsa_block_q8_1) + offsetof(dsa_block_q8_1, s);
            for (int r = 0; r < R; r++) accm[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(rdf(ab + (size_t)r * as)), accm[r]);
        }
        for (int r = 0; r < R; r++) accd[r] = _mm256_add_ps(accd[r], accm[r]);
    }
    for (int r = 0; r < R; r++) store8(y + (size_t)r * ldy, accd[r], rows);
}

#define TILE8_LEGACY(name, has_m, shift, split)                                                                    \
    void name(int n, const void *panel, const void *va, size_t as, const int32_t *asum, int nact, float *y,        \
              size_t ldy, int rows) {                                                                               \
        const int nb = n / DSA_QK;                                                                                  \
        const uint8_t *a = va;                                                                                      \
        int r = 0;                                                                                                  \
        for (; r + TR <= nact; r += TR)                                                                             \
            tile8_legacy_r(nb, panel, a + (size_t)r * as, as, asum ? asum + (size_t)r * nb : NULL,                  \
                           y + (size_t)r * ldy, ldy, rows, TR, has_m, shift, split);                                \
        const uint8_t *ar = a + (size_t)r * as;                                                                     \
        const int32_t *sr = asum ? asum + (size_t)r * nb : NULL;                                                    \
        float *yr = y + (size_t)r * ldy;                                                                            \
        switch (nact - r) {                                                                                         \
        case 7: if (7 < TR) tile8_legacy_r(nb, panel, ar, as, sr, yr, ldy, rows, 7, has_m, shift, split); break;    \
        case 6: if (6 < TR) tile8_legacy_r(nb, panel, ar, as, sr, yr, ldy, rows, 6, has_m, shift, split); break;    \
        case 5: if (5 < TR) tile8_legacy_r(nb, panel, ar, as, sr, yr, ldy, rows, 5, has_m, shift, split); break;    \
        case 4: if (4 < TR) tile8_legacy_r(nb, panel, ar, as, sr, yr, ldy, rows, 4, has_m, shift, split); break;    \
        case 3: if (3 < TR) tile8_legacy_r(nb, panel, ar, as, sr, yr, ldy, rows, 3, has_m, shift, split); break;    \
        case 2: if (2 < TR) tile8_legacy_r(nb, panel, ar, as, sr, yr, ldy, rows, 2, has_m, shift, split); break;    \
        case 1: if (1 < TR) tile8_legacy_r(nb, panel, ar, as, sr, yr, ldy, rows, 1, has_m, shift, split); break;    \
        default: break;                                                                                             \
        }                                                                                                           \
    }

TILE8_LEGACY(dsa_mm_tile_q4_0_avx2, 0, 3, 0)
TILE8_LEGACY(dsa_mm_tile_q4_1_avx2, 1, 0, 0)
TILE8_LEGACY(dsa_mm_tile_q8_0_avx2, 0, 7, 1)

/* One activation row against 8 weight rows straight from their blocks (decode): pack8_legacy's vectors go to the
 * products without being stored in a panel, and the float sequence of tile8_legacy_r with R = 1 is kept (the
 * minimum's chain runs beside the scale's instead of after it, each in its own order).  The 16-bit sums are
 * exact (see the top of the file), so adding the chunks in another order gives the same integers. */
static inline __attribute__((always_inline)) void gemv8_legacy(int n, const uint8_t *w, size_t ws, const uint8_t *a,
                                                               const int32_t *asum, float *y, enum dsa_type kind) {
    const int nb = n / DSA_QK, bs = kind == DSA_Q4_0 ? DSA_BS_Q4_0 : kind == DSA_Q4_1 ? DSA_BS_Q4_1 : DSA_BS_Q8_0;
    const int shift = kind == DSA_Q4_0 ? 3 : kind == DSA_Q8_0 ? 7 : 0;
    const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    const uint8_t *ahead = w + 3 * NR * ws; /* as pack8_legacy */
    __m256 accd = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    _Alignas(32) float d[NR], m[NR];
    for (int i = 0; i < nb; i++) {
        const uint8_t *b = w + (size_t)i * bs, *ab = a + (size_t)i * sizeof(dsa_block_q8_1);
        const uint8_t *qa = ab + offsetof(dsa_block_q8_1, qs);
        for (size_t o = (size_t)i * NR * bs; o < (size_t)(i + 1) * NR * bs; o += 64)
            _mm_prefetch((const char *)ahead + o, _MM_HINT_T1);
        scales8(b, ws, d, kind == DSA_Q4_1 ? m : NULL);
        __m256i dot;
        if (kind == DSA_Q8_0) {
            __m256i g[8], s = _mm256_setzero_si256(), sh = _mm256_setzero_si256();
            transpose8(b + 2, ws, g);
            for (int c = 0; c < 8; c++) {
                __m256i v = _mm256_xor_si256(g[c], _mm256_set1_epi8((char)0x80));
                __m256i x = _mm256_set1_epi32(rd32(qa + 4 * c));
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_and_si256(v, m4), x));
                sh = _mm256_add_epi16(sh, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), x));
            }
            dot = _mm256_add_epi32(_mm256_madd_epi16(s, ones), _mm256_madd_epi16(sh, _mm256_set1_epi16(16)));
        } else {
            __m256i g[4], s = _mm256_setzero_si256();
            transpose4x8(b + (kind == DSA_Q4_1 ? 4 : 2), ws, g);
            for (int c = 0; c < 4; c++) { /* bytes 4c..4c+3: elements 4c.. (low nibbles) and 16+4c.. (high) */
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_and_si256(g[c], m4),
                                                             _mm256_set1_epi32(rd32(qa + 4 * c))));
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(g[c], 4), m4),
                                                             _mm256_set1_epi32(rd32(qa + 16 + 4 * c))));
            }
            dot = _mm256_madd_epi16(s, ones);
        }
        if (shift) dot = _mm256_sub_epi32(dot, _mm256_set1_epi32(asum[i] * (1 << shift)));
        __m256 sc = _mm256_mul_ps(_mm256_load_ps(d), _mm256_set1_ps(rdf(ab)));
        accd = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), sc, accd);
        if (kind == DSA_Q4_1)
            accm = _mm256_fmadd_ps(_mm256_load_ps(m), _mm256_set1_ps(rdf(ab + offsetof(dsa_block_q8_1, s))), accm);
    }
    if (kind == DSA_Q4_1) accd = _mm256_add_ps(accd, accm);
    _mm256_storeu_ps(y, accd);
}

void dsa_mm_gemv_q4_0_avx2(int n, const void *w, size_t ws, const void *a, const int32_t *asum, float *y) {
    gemv8_legacy(n, w, ws, a, asum, y, DSA_Q4_0);
}
void dsa_mm_gemv_q4_1_avx2(int n, const void *w, size_t ws, const void *a, const int32_t *asum, float *y) {
    gemv8_legacy(n, w, ws, a, asum, y, DSA_Q4_1);
}
void dsa_mm_gemv_q8_0_avx2(int n, const void *w, size_t ws, const void *a, const int32_t *asum, float *y) {
    gemv8_legacy(n, w, ws, a, asum, y, DSA_Q8_0);
}

/* ---- K-quants -------------------------------------------------------------------------------------------------
 * The panel of mm_tile_avx512.c at 8 lanes.  pmaddubsw pairs stay exact in 16 bits over as many chunks as the
 * quants allow (q4_K: 8 chunks, 2·15·127·8 = 30480; q5_K: 4; q6_K: 2), then pmaddwd against the scale held in both
 * halves of each lane's dword multiplies and widens in one step. */

typedef struct {
    uint8_t q[64][NR][4]; /* chunk k: elements 4k..4k+3 of the super-block, unsigned */
    int32_t sc[16][NR];   /* the scale of sub-block j (q6_K: group g) in both 16-bit halves */
    int32_t mn[8][NR];    /* q4_K, q5_K: mn_j in both halves; q6_K: (sc_2t, sc_2t+1) */
    float d[NR], dmin[NR];
} panel8k;
_Static_assert(sizeof(panel8k) == DSA_MM_PANEL8_K, "panel size in quant_impl.h");

static inline __m256i byte_u8(__m256i v, int j) { return _mm256_and_si256(_mm256_srli_epi32(v, 8 * j), _mm256_set1_epi32(255)); }
static inline __m256i byte_s8(__m256i v, int j) { return _mm256_srai_epi32(_mm256_slli_epi32(v, 24 - 8 * j), 24); }
static inline __m256i dup16(__m256i v) { /* low 16 bits of each dword into both halves */
    v = _mm256_and_si256(v, _mm256_set1_epi32(0xffff));
    return _mm256_or_si256(v, _mm256_slli_epi32(v, 16));
}

static void pack8_k_partial(int nb, const uint8_t *w, size_t ws, int rows, panel8k *P, enum dsa_type kind) {
    const int bs = kind == DSA_Q4_K ? DSA_BS_Q4_K : kind == DSA_Q5_K ? DSA_BS_Q5_K : DSA_BS_Q6_K;
    memset(P, 0, (size_t)nb * sizeof *P);
    for (int l = 0; l < rows; l++)
        for (int i = 0; i < nb; i++) {
            const uint8_t *b = w + (size_t)l * ws + (size_t)i * bs;
            panel8k *p = &P[i];
            int8_t q[DSA_QK_K];
            if (kind == DSA_Q6_K) {
                dsa_unpack_q6_k(b, q);
                for (int e = 0; e < DSA_QK_K; e++) p->q[e / 4][l][e % 4] = (uint8_t)(q[e] + 32);
                const int8_t *sc = (const int8_t *)(b + 192);
                for (int g = 0; g < 16; g++) p->sc[g][l] = (int32_t)((uint32_t)(uint16_t)sc[g] * 0x10001u);
                for (int t = 0; t < 8; t++) p->mn[t][l] = (int32_t)((uint32_t)(uint16_t)sc[2 * t] | (uint32_t)(uint16_t)sc[2 * t + 1] << 16);
                p->d[l] = dsa_f16_to_f32(dsa_rd16(b + 208));
                continue;
            }
            int five = kind == DSA_Q5_K;
            uint8_t sc[8], mn[8];
            dsa_kscales(b + 4, sc, mn);
            for (int j = 0; j < 8; j++) {
                dsa_unpack_q45_k(b + (five ? 48 : 16), five ? b + 16 : NULL, j, q + 32 * j);
                p->sc[j][l] = sc[j] * 0x10001;
                p->mn[j][l] = mn[j] * 0x10001;
            }
            for (int e = 0; e < DSA_QK_K; e++) p->q[e / 4][l][e % 4] = (uint8_t)q[e];
            p->d[l] = dsa_f16_to_f32(dsa_rd16(b));
            p->dmin[l] = dsa_f16_to_f32(dsa_rd16(b + 2));
        }
}

/* One super-block of 8 rows (at b, ws apart) into its panel entry p. */
static inline __attribute__((always_inline)) void pack8_k_block(const uint8_t *b, size_t ws, panel8k *p,
                                                                enum dsa_type kind) {
    const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    if (kind == DSA_Q6_K) {
        __m256i s4[4], e4[4];
        transpose4x8(b + 192, ws, s4); /* the 16 scales */
        transpose4x8(b + 194, ws, e4); /* its last dword: scales 14, 15 and d */
        _mm256_store_ps(p->d, _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64(
            _mm256_packus_epi32(_mm256_srli_epi32(e4[3], 16), _mm256_setzero_si256()), _MM_SHUFFLE(3, 1, 2, 0)))));
        for (int g = 0; g < 16; g++) _mm256_store_si256((__m256i *)p->sc[g], dup16(byte_s8(s4[g / 4], g % 4)));
        for (int t = 0; t < 8; t++) {
            __m256i a0 = byte_s8(s4[t / 2], 2 * (t % 2)), a1 = byte_s8(s4[t / 2], 2 * (t % 2) + 1);
            _mm256_store_si256((__m256i *)p->mn[t],
                               _mm256_or_si256(_mm256_and_si256(a0, _mm256_set1_epi32(0xffff)), _mm256_slli_epi32(a1, 16)));
        }
        for (int h = 0; h < 2; h++) {
            __m256i qa[8], qb[8], qh[8];
            transpose8(b + 64 * h, ws, qa);
            transpose8(b + 64 * h + 32, ws, qb);
            transpose8(b + 128 + 32 * h, ws, qh);
            for (int l4 = 0; l4 < 8; l4++) {
                __m256i lo[4] = {qa[l4], qb[l4], _mm256_srli_epi16(qa[l4], 4), _mm256_srli_epi16(qb[l4], 4)};
                for (int k = 0; k < 4; k++) {
                    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh[l4], 2 * k), m2);
                    __m256i q = _mm256_or_si256(_mm256_and_si256(lo[k], m4), _mm256_slli_epi16(hi, 4));
                    _mm256_store_si256((__m256i *)p->q[32 * h + 8 * k + l4], q);
                }
            }
        }
        return;
    }
    __m256i hd[4]; /* dword 0: f16 d | f16 dmin; 1..3: the 12 bytes of scales */
    transpose4x8(b, ws, hd);
    __m256i dm = hd[0];
    __m256i wds = _mm256_permute4x64_epi64(
        _mm256_packus_epi32(_mm256_and_si256(dm, _mm256_set1_epi32(0xffff)), _mm256_srli_epi32(dm, 16)),
        _MM_SHUFFLE(3, 1, 2, 0));
    _mm256_store_ps(p->d, _mm256_cvtph_ps(_mm256_castsi256_si128(wds)));
    _mm256_store_ps(p->dmin, _mm256_cvtph_ps(_mm256_extracti128_si256(wds, 1)));
    const __m256i m6 = _mm256_set1_epi8(0x3f), m30 = _mm256_set1_epi8(0x30), m0f = _mm256_set1_epi8(0x0f);
    __m256i s0 = hd[1], s1 = hd[2], s2 = hd[3];
    __m256i sc03 = _mm256_and_si256(s0, m6), mn03 = _mm256_and_si256(s1, m6);
    __m256i sc47 = _mm256_or_si256(_mm256_and_si256(s2, m0f), _mm256_and_si256(_mm256_srli_epi32(s0, 2), m30));
    __m256i mn47 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(s2, 4), m0f),
                                   _mm256_and_si256(_mm256_srli_epi32(s1, 2), m30));
    for (int j = 0; j < 8; j++) {
        _mm256_store_si256((__m256i *)p->sc[j], dup16(byte_u8(j < 4 ? sc03 : sc47, j % 4)));
        _mm256_store_si256((__m256i *)p->mn[j], dup16(byte_u8(j < 4 ? mn03 : mn47, j % 4)));
    }
    const int qoff = kind == DSA_Q5_K ? 48 : 16;
    __m256i qh[8];
    if (kind == DSA_Q5_K) transpose8(b + 16, ws, qh);
    for (int cc = 0; cc < 4; cc++) { /* 32-byte chunk cc: sub-blocks 2cc (low nibbles) and 2cc+1 (high) */
        __m256i g[8];
        transpose8(b + qoff + 32 * cc, ws, g);
        for (int l4 = 0; l4 < 8; l4++) {
            __m256i lo = _mm256_and_si256(g[l4], m4), hi = _mm256_and_si256(_mm256_srli_epi16(g[l4], 4), m4);
            if (kind == DSA_Q5_K) { /* bit j of qh[l] is bit 4 of element l of sub-block j */
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh[l4], 2 * cc), one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh[l4], 2 * cc + 1), one), 4));
            }
            _mm256_store_si256((__m256i *)p->q[16 * cc + l4], lo);
            _mm256_store_si256((__m256i *)p->q[16 * cc + 8 + l4], hi);
        }
    }
}

static inline __attribute__((always_inline)) void pack8_k(int n, const void *vw, size_t ws, int rows, void *panel,
                                                          enum dsa_type kind) {
    const uint8_t *w = vw;
    panel8k *P = panel;
    const int nb = n / DSA_QK_K, bs = kind == DSA_Q4_K ? DSA_BS_Q4_K : kind == DSA_Q5_K ? DSA_BS_Q5_K : DSA_BS_Q6_K;
    if (rows < NR) {
        pack8_k_partial(nb, w, ws, rows, P, kind);
        return;
    }
    const uint8_t *ahead = w + 3 * NR * ws; /* as pack8_legacy */
    for (int i = 0; i < nb; i++) {
        for (size_t o = (size_t)i * NR * bs; o < (size_t)(i + 1) * NR * bs; o += 64)
            _mm_prefetch((const char *)ahead + o, _MM_HINT_T1);
        pack8_k_block(w + (size_t)i * bs, ws, &P[i], kind);
    }
}

void dsa_mm_pack_q4_k_avx2(int n, const void *w, size_t ws, int rows, void *p) { pack8_k(n, w, ws, rows, p, DSA_Q4_K); }
void dsa_mm_pack_q5_k_avx2(int n, const void *w, size_t ws, int rows, void *p) { pack8_k(n, w, ws, rows, p, DSA_Q5_K); }
void dsa_mm_pack_q6_k_avx2(int n, const void *w, size_t ws, int rows, void *p) { pack8_k(n, w, ws, rows, p, DSA_Q6_K); }

#ifndef DSA_MM_TRK256
#define DSA_MM_TRK256 4
#endif
#define TRK DSA_MM_TRK256

/* One super-block of a K panel against R activation rows (q8_K, as bytes apart): accd += the scaled sums, and
 * (q4_K, q5_K) accm += the mins' part, each a chain of its own in block order.  kind: which K-quant (the 16-bit
 * run length and the scale layout follow from it). */
static inline __attribute__((always_inline)) void tile8_k_block(const panel8k *p, const uint8_t *ab, size_t as,
                                                                const int R, const enum dsa_type kind, __m256 *accd,
                                                                __m256 *accm) {
    enum { QS = offsetof(dsa_block_q8_k, qs), BSUMS = offsetof(dsa_block_q8_k, bsums) };
    const int six = kind == DSA_Q6_K;
    const int run = kind == DSA_Q4_K ? 8 : kind == DSA_Q5_K ? 4 : 2; /* chunks summed in 16 bits */
    const int per = six ? 4 : 8;                                       /* chunks per scale */
    __m256i sumi[8];
    for (int r = 0; r < R; r++) {
        sumi[r] = _mm256_setzero_si256();
        if (six) { /* -32 · Σ_g sc_g · bsums_g */
            __m256i off = _mm256_setzero_si256();
            for (int t = 0; t < 8; t++)
                off = _mm256_add_epi32(off, _mm256_madd_epi16(_mm256_load_si256((const __m256i *)p->mn[t]),
                                                              _mm256_set1_epi32(rd32(ab + (size_t)r * as + BSUMS + 4 * t))));
            sumi[r] = _mm256_sub_epi32(sumi[r], _mm256_slli_epi32(off, 5));
        }
    }
    for (int k0 = 0; k0 < 64; k0 += run) {
        __m256i s16[8];
        for (int c = 0; c < run; c++) {
            __m256i wq = _mm256_load_si256((const __m256i *)p->q[k0 + c]);
            for (int r = 0; r < R; r++) {
                __m256i x = _mm256_set1_epi32(rd32(ab + (size_t)r * as + QS + 4 * (k0 + c)));
                __m256i v = _mm256_maddubs_epi16(wq, x);
                s16[r] = c ? _mm256_add_epi16(s16[r], v) : v;
            }
        }
        __m256i sc = _mm256_load_si256((const __m256i *)p->sc[k0 / per]);
        for (int r = 0; r < R; r++) sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(s16[r], sc));
    }
    __m256 d = _mm256_load_ps(p->d);
    for (int r = 0; r < R; r++) {
        __m256 sc = _mm256_mul_ps(d, _mm256_set1_ps(rdf(ab + (size_t)r * as)));
        accd[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[r]), sc, accd[r]);
    }
    if (!six) { /* the mins: accm += (float)summ · (dmin · a.d); the caller takes accm from accd at the end */
        __m256 dmin = _mm256_load_ps(p->dmin);
        for (int r = 0; r < R; r++) {
            __m256i summ = _mm256_setzero_si256();
            for (int j = 0; j < 8; j++)
                summ = _mm256_add_epi32(summ, _mm256_madd_epi16(_mm256_load_si256((const __m256i *)p->mn[j]),
                                                                _mm256_set1_epi32(rd32(ab + (size_t)r * as + BSUMS + 4 * j))));
            __m256 sc = _mm256_mul_ps(dmin, _mm256_set1_ps(rdf(ab + (size_t)r * as)));
            accm[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(summ), sc, accm[r]);
        }
    }
}

static inline __attribute__((always_inline)) void tile8_k_r(int nb, const panel8k *P, const uint8_t *a, size_t as,
                                                            float *y, size_t ldy, int rows, const int R,
                                                            const enum dsa_type kind) {
    __m256 accd[8], accm[8];
    for (int r = 0; r < R; r++) accd[r] = accm[r] = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) tile8_k_block(&P[i], a + (size_t)i * sizeof(dsa_block_q8_k), as, R, kind, accd, accm);
    if (kind != DSA_Q6_K)
        for (int r = 0; r < R; r++) accd[r] = _mm256_sub_ps(accd[r], accm[r]);
    for (int r = 0; r < R; r++) store8(y + (size_t)r * ldy, accd[r], rows);
}

/* One activation row against 8 rows of K-quant weights (decode): each super-block is packed into an L1 buffer and
 * multiplied at once, instead of the whole panel being packed and then read back. */
static inline __attribute__((always_inline)) void gemv8_k(int n, const uint8_t *w, size_t ws, const uint8_t *a,
                                                          float *y, enum dsa_type kind) {
    const int nb = n / DSA_QK_K, bs = kind == DSA_Q4_K ? DSA_BS_Q4_K : kind == DSA_Q5_K ? DSA_BS_Q5_K : DSA_BS_Q6_K;
    const uint8_t *ahead = w + 3 * NR * ws; /* as pack8_k */
    _Alignas(32) panel8k p; /* the pack stores and the tile loads it with aligned vector moves */
    __m256 accd = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        for (size_t o = (size_t)i * NR * bs; o < (size_t)(i + 1) * NR * bs; o += 64)
            _mm_prefetch((const char *)ahead + o, _MM_HINT_T1);
        pack8_k_block(w + (size_t)i * bs, ws, &p, kind);
        tile8_k_block(&p, a + (size_t)i * sizeof(dsa_block_q8_k), 0, 1, kind, &accd, &accm);
    }
    if (kind != DSA_Q6_K) accd = _mm256_sub_ps(accd, accm);
    _mm256_storeu_ps(y, accd);
}

void dsa_mm_gemv_q4_k_avx2(int n, const void *w, size_t ws, const void *a, const int32_t *asum, float *y) {
    (void)asum;
    gemv8_k(n, w, ws, a, y, DSA_Q4_K);
}
void dsa_mm_gemv_q5_k_avx2(int n, const void *w, size_t ws, const void *a, const int32_t *asum, float *y) {
    (void)asum;
    gemv8_k(n, w, ws, a, y, DSA_Q5_K);
}
void dsa_mm_gemv_q6_k_avx2(int n, const void *w, size_t ws, const void *a, const int32_t *asum, float *y) {
    (void)asum;
    gemv8_k(n, w, ws, a, y, DSA_Q6_K);
}

#define TILE8_K(name, kind)                                                                                         \
    void name(int n, const void *panel, const void *va, size_t as, const int32_t *asum, int nact, float *y,        \
              size_t ldy, int rows) {                                                                               \
        (void)asum;                                                                                                 \
        const int nb = n / DSA_QK_K;                                                                                \
        const uint8_t *a = va;                                                                                      \
        int r = 0;                                                                                                  \
        for (; r + TRK <= nact; r += TRK)                                                                           \
            tile8_k_r(nb, panel, a + (size_t)r * as, as, y + (size_t)r * ldy, ldy, rows, TRK, kind);                \
        const uint8_t *ar = a + (size_t)r * as;                                                                     \
        float *yr = y + (size_t)r * ldy;                                                                            \
        switch (nact - r) {                                                                                         \
        case 7: if (7 < TRK) tile8_k_r(nb, panel, ar, as, yr, ldy, rows, 7, kind); break;                           \
        case 6: if (6 < TRK) tile8_k_r(nb, panel, ar, as, yr, ldy, rows, 6, kind); break;                           \
        case 5: if (5 < TRK) tile8_k_r(nb, panel, ar, as, yr, ldy, rows, 5, kind); break;                           \
        case 4: if (4 < TRK) tile8_k_r(nb, panel, ar, as, yr, ldy, rows, 4, kind); break;                           \
        case 3: if (3 < TRK) tile8_k_r(nb, panel, ar, as, yr, ldy, rows, 3, kind); break;                           \
        case 2: if (2 < TRK) tile8_k_r(nb, panel, ar, as, yr, ldy, rows, 2, kind); break;                           \
        case 1: if (1 < TRK) tile8_k_r(nb, panel, ar, as, yr, ldy, rows, 1, kind); break;                           \
        default: break;                                                                                             \
        }                                                                                                           \
    }

TILE8_K(dsa_mm_tile_q4_k_avx2, DSA_Q4_K)
TILE8_K(dsa_mm_tile_q5_k_avx2, DSA_Q5_K)
TILE8_K(dsa_mm_tile_q6_k_avx2, DSA_Q6_K)

#endif
