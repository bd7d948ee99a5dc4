/*
 * AVX-512 VNNI tile kernels (see mm_tile.c for what a tile is and the float sequence every version keeps).
 *
 * A panel is 16 weight rows, one per 32-bit lane of a zmm register.  For each block, the panel holds the unpacked
 * quants as 8 vectors: vector k has, in lane i, the 4 bytes of elements 4k..4k+3 of weight row i.  One vpdpbusd
 * with activation bytes 4k..4k+3 broadcast to every lane (an embedded broadcast from memory: no shuffle at all)
 * then adds those 4 products to each row's sum, and 8 of them give 16 complete block dot products, in the lanes
 * where the results belong.  What remains per block and activation row is one int->float conversion, one scale
 * multiply and one fma for all 16 rows.
 *
 * vpdpbusd multiplies unsigned by signed bytes.  q4 quants are unsigned already (q4_0's -8 is taken off
 * afterwards, as 8 · Σ a); q8_0's are stored + 128 and 128 · Σ a is taken off: both from the block sums asum.
 * Packing loads each of the 16 rows' blocks and transposes them with shuffles, so that vector c holds dword c of
 * every row (it gathered each column with vpgatherdd before 2026-12-07: twice as slow on an AMD EPYC).
 */
#include "quant_impl.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__) && \
    defined(__F16C__)

#define NR 16
#ifndef DSA_MM_TR512 /* activation rows per pass over the panel (measured: bench_quant) */
#define DSA_MM_TR512 8
#endif
#define TR DSA_MM_TR512

typedef struct {
    uint8_t q[8][NR][4]; /* chunk k (elements 4k..4k+3), lane i, 4 bytes */
    float d[NR], m[NR];
} panel16;
_Static_assert(sizeof(panel16) == DSA_MM_PANEL16_LEGACY, "panel size in quant_impl.h");

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

static inline __mmask16 lanes(int rows) { return rows >= NR ? (__mmask16)0xffff : (__mmask16)((1u << rows) - 1); }

/* ---- legacy types -------------------------------------------------------------------------------------------- */

/* Unpacked element e (0..31) of a legacy block, as the unsigned byte the panel holds. */
static int legacy_byte(const uint8_t *b, enum dsa_type kind, int e) {
    if (kind == DSA_Q8_0) return (b[2 + e] + 128) & 255;
    const uint8_t *qs = b + (kind == DSA_Q4_1 ? 4 : 2);
    return e < 16 ? qs[e] & 15 : qs[e - 16] >> 4;
}

/* 16 bytes of each of 16 rows (at b, ws apart) as z[j] = [row j | row j+4 | row j+8 | row j+12]. */
static inline void load16x16(const uint8_t *b, size_t ws, __m512i z[4]) {
    for (int j = 0; j < 4; j++) {
        __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(b + (size_t)j * ws)));
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(b + (size_t)(j + 4) * ws)), 1);
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(b + (size_t)(j + 8) * ws)), 2);
        z[j] = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(b + (size_t)(j + 12) * ws)), 3);
    }
}

/* 4×4 dwords in each 128-bit lane of load16x16's z: g[c] = dword c of rows 0..15, row i in lane i. */
static inline void transpose4x16(const __m512i z[4], __m512i g[4]) {
    __m512i t0 = _mm512_unpacklo_epi32(z[0], z[1]), t1 = _mm512_unpackhi_epi32(z[0], z[1]);
    __m512i t2 = _mm512_unpacklo_epi32(z[2], z[3]), t3 = _mm512_unpackhi_epi32(z[2], z[3]);
    g[0] = _mm512_unpacklo_epi64(t0, t2), g[1] = _mm512_unpackhi_epi64(t0, t2);
    g[2] = _mm512_unpacklo_epi64(t1, t3), g[3] = _mm512_unpackhi_epi64(t1, t3);
}

/* Dword c (0..3) of 16 rows' 16 bytes at b (ws apart), row i in lane i (the compiler drops the other three). */
static inline __m512i dword16(const uint8_t *b, size_t ws, int c) {
    __m512i z[4], g[4];
    load16x16(b, ws, z);
    transpose4x16(z, g);
    return g[c];
}

/* 64 bytes of each of 16 rows transposed: g[c] = dword c (0..15) of rows 0..15, row i in lane i.  Unpacks make
 * 4×4 blocks inside each 128-bit lane (vector 4q+j: dword 4L+j of rows 4q..4q+3 in lane L), then two rounds of
 * 128-bit shuffles transpose the lanes. */
static inline void transpose16x16(const uint8_t *b, size_t ws, __m512i g[16]) {
    __m512i a[16], t[16];
    for (int i = 0; i < 16; i++) a[i] = _mm512_loadu_si512((const void *)(b + (size_t)i * ws));
    for (int i = 0; i < 16; i += 2)
        t[i] = _mm512_unpacklo_epi32(a[i], a[i + 1]), t[i + 1] = _mm512_unpackhi_epi32(a[i], a[i + 1]);
    for (int q = 0; q < 16; q += 4) {
        a[q] = _mm512_unpacklo_epi64(t[q], t[q + 2]), a[q + 1] = _mm512_unpackhi_epi64(t[q], t[q + 2]);
        a[q + 2] = _mm512_unpacklo_epi64(t[q + 1], t[q + 3]), a[q + 3] = _mm512_unpackhi_epi64(t[q + 1], t[q + 3]);
    }
    for (int j = 0; j < 4; j++) {
        __m512i c0 = _mm512_shuffle_i32x4(a[j], a[4 + j], _MM_SHUFFLE(2, 0, 2, 0));
        __m512i c1 = _mm512_shuffle_i32x4(a[j], a[4 + j], _MM_SHUFFLE(3, 1, 3, 1));
        __m512i c2 = _mm512_shuffle_i32x4(a[8 + j], a[12 + j], _MM_SHUFFLE(2, 0, 2, 0));
        __m512i c3 = _mm512_shuffle_i32x4(a[8 + j], a[12 + j], _MM_SHUFFLE(3, 1, 3, 1));
        g[j] = _mm512_shuffle_i32x4(c0, c2, _MM_SHUFFLE(2, 0, 2, 0));
        g[8 + j] = _mm512_shuffle_i32x4(c0, c2, _MM_SHUFFLE(3, 1, 3, 1));
        g[4 + j] = _mm512_shuffle_i32x4(c1, c3, _MM_SHUFFLE(2, 0, 2, 0));
        g[12 + j] = _mm512_shuffle_i32x4(c1, c3, _MM_SHUFFLE(3, 1, 3, 1));
    }
}

/* 32 bytes of each of 16 rows transposed: g[c] = dword c (0..7) of rows 0..15.  Each 256-bit half does what
 * mm_tile_avx2.c's transpose8 does (rows 0..7 in the low half, 8..15 in the high), and a two-source permute then
 * puts each dword's four 128-bit pieces in row order. */
static inline void transpose8x16(const uint8_t *b, size_t ws, __m512i g[8]) {
    __m512i r[8], t[8], u[8];
    for (int j = 0; j < 8; j++)
        r[j] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(b + (size_t)j * ws))),
                                  _mm256_loadu_si256((const __m256i *)(b + (size_t)(j + 8) * ws)), 1);
    for (int j = 0; j < 8; j += 2)
        t[j] = _mm512_unpacklo_epi32(r[j], r[j + 1]), t[j + 1] = _mm512_unpackhi_epi32(r[j], r[j + 1]);
    for (int h = 0; h < 8; h += 4) { /* per 128-bit lane of rows h..h+3 (and h+8..h+11): [c0 | c4], [c1 | c5] ... */
        u[h] = _mm512_unpacklo_epi64(t[h], t[h + 2]), u[h + 1] = _mm512_unpackhi_epi64(t[h], t[h + 2]);
        u[h + 2] = _mm512_unpacklo_epi64(t[h + 1], t[h + 3]), u[h + 3] = _mm512_unpackhi_epi64(t[h + 1], t[h + 3]);
    }
    const __m512i lo = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), hi = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    for (int c = 0; c < 4; c++) {
        g[c] = _mm512_permutex2var_epi64(u[c], lo, u[c + 4]);
        g[c + 4] = _mm512_permutex2var_epi64(u[c], hi, u[c + 4]);
    }
}

/* Packing loads each row's block and transposes 16 rows with shuffles.  (It used to gather a 4-byte column of 16
 * rows at a time; gathers cost twice the whole decode GEMV on an AMD EPYC with AVX-512: bench_quant, A=1.) */
static inline __attribute__((always_inline)) void pack16_legacy(int n, const void *w, size_t ws, int rows,
                                                                void *panel, enum dsa_type kind) {
    panel16 *P = panel;
    const int nb = n / DSA_QK, bs = kind == DSA_Q4_0 ? DSA_BS_Q4_0 : kind == DSA_Q4_1 ? DSA_BS_Q4_1 : DSA_BS_Q8_0;
    if (rows < NR) { /* a last panel of fewer rows: byte by byte (the vector loads would read past the matrix) */
        memset(P, 0, (size_t)nb * sizeof *P);
        for (int i = 0; i < nb; i++)
            for (int l = 0; l < NR; l++) {
                if (l >= rows) { /* absent rows: zero weights (q8_0 stores q + 128) */
                    for (int e = 0; e < DSA_QK; e++) P[i].q[e / 4][l][e % 4] = kind == DSA_Q8_0 ? 128 : 0;
                    continue;
                }
                const uint8_t *b = (const uint8_t *)w + (size_t)l * ws + (size_t)i * bs;
                for (int e = 0; e < DSA_QK; e++) P[i].q[e / 4][l][e % 4] = (uint8_t)legacy_byte(b, kind, e);
                P[i].d[l] = dsa_f16_to_f32(dsa_rd16(b));
                P[i].m[l] = kind == DSA_Q4_1 ? dsa_f16_to_f32(dsa_rd16(b + 2)) : 0;
            }
        return;
    }
    const __m512i m4 = _mm512_set1_epi8(15);
    /* The panel after next (where a matrix's rows are contiguous) is fetched into L2 a slice per block, so that
     * decode, which packs every panel for one activation row, streams from memory.  Measured on an AMD EPYC
     * (Zen 4), Q4_1 576 columns, 256 MB of weights, 1 / 2 threads: no prefetch 7.3 / 13 GB/s; the next panel into
     * L1 10.3 / 20; into L2 14.5 / 22; the panel after next into L2 16.5 / 29; three panels ahead 16.4 / 25. */
    const uint8_t *ahead = (const uint8_t *)w + 2 * NR * ws;
    for (int i = 0; i < nb; i++) {
        const uint8_t *b = (const uint8_t *)w + (size_t)i * bs;
        panel16 *p = &P[i];
        for (size_t o = (size_t)i * NR * bs; o < (size_t)(i + 1) * NR * bs; o += 64)
            _mm_prefetch((const char *)ahead + o, _MM_HINT_T1);
        __m512i dm = dword16(b, ws, 0); /* f16 d | f16 m (q4_1) or the first quants */
        _mm512_store_ps(p->d, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm)));
        if (kind == DSA_Q4_1) _mm512_store_ps(p->m, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16))));
        if (kind == DSA_Q8_0) {
            __m512i g[8];
            transpose8x16(b + 2, ws, g);
            for (int c = 0; c < 8; c++) _mm512_store_si512(p->q[c], _mm512_xor_si512(g[c], _mm512_set1_epi8((char)0x80)));
        } else {
            __m512i z[4], g[4];
            load16x16(b + (kind == DSA_Q4_1 ? 4 : 2), ws, z);
            transpose4x16(z, g);
            for (int c = 0; c < 4; c++) { /* bytes 4c..4c+3: elements 4c.. (low nibbles) and 16+4c.. (high) */
                _mm512_store_si512(p->q[c], _mm512_and_si512(g[c], m4));
                _mm512_store_si512(p->q[c + 4], _mm512_and_si512(_mm512_srli_epi16(g[c], 4), m4));
            }
        }
    }
}

void dsa_mm_pack_q4_0_avx512(int n, const void *w, size_t ws, int rows, void *p) {
    pack16_legacy(n, w, ws, rows, p, DSA_Q4_0);
}
void dsa_mm_pack_q4_1_avx512(int n, const void *w, size_t ws, int rows, void *p) {
    pack16_legacy(n, w, ws, rows, p, DSA_Q4_1);
}
void dsa_mm_pack_q8_0_avx512(int n, const void *w, size_t ws, int rows, void *p) {
    pack16_legacy(n, w, ws, rows, p, DSA_Q8_0);
}

/* R activation rows (a, as bytes apart; their block sums asum, nb apart) against one panel.  shift: the offset
 * taken off as Σ a << shift (q4_0: 3, q8_0: 7); has_m: q4_1's minimum. */
static inline __attribute__((always_inline)) void tile16_legacy_r(int nb, const panel16 *P, const uint8_t *a,
                                                                  size_t as, const int32_t *asum, float *y,
                                                                  size_t ldy, __mmask16 km, const int R,
                                                                  const int has_m, const int shift) {
    __m512 accd[8];
    for (int r = 0; r < R; r++) accd[r] = _mm512_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const panel16 *p = &P[i];
        const uint8_t *ab = a + (size_t)i * sizeof(dsa_block_q8_1);
        __m512i s0[8], s1[8]; /* two chains: vpdpbusd's latency */
        for (int k = 0; k < 8; k += 2) {
            __m512i w0 = _mm512_load_si512(p->q[k]), w1 = _mm512_load_si512(p->q[k + 1]);
            for (int r = 0; r < R; r++) {
                const uint8_t *qs = ab + (size_t)r * as + offsetof(dsa_block_q8_1, qs) + 4 * k;
                __m512i x0 = _mm512_set1_epi32(rd32(qs)), x1 = _mm512_set1_epi32(rd32(qs + 4));
                s0[r] = _mm512_dpbusd_epi32(k ? s0[r] : _mm512_setzero_si512(), w0, x0);
                s1[r] = _mm512_dpbusd_epi32(k ? s1[r] : _mm512_setzero_si512(), w1, x1);
            }
        }
        __m512 d = _mm512_load_ps(p->d);
        for (int r = 0; r < R; r++) {
            __m512i dot = _mm512_add_epi32(s0[r], s1[r]);
            if (shift) dot = _mm512_sub_epi32(dot, _mm512_set1_epi32(asum[(size_t)r * nb + i] * (1 << shift)));
            __m512 sc = _mm512_mul_ps(d, _mm512_set1_ps(rdf(ab + (size_t)r * as)));
            accd[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, accd[r]);
        }
    }
    if (has_m) {
        __m512 accm[8];
        for (int r = 0; r < R; r++) accm[r] = _mm512_setzero_ps();
        for (int i = 0; i < nb; i++) {
            __m512 m = _mm512_load_ps(P[i].m);
            const uint8_t *ab = a + (size_t)i * sizeof(dsa_block_q8_1) + offsetof(dsa_block_q8_1, s);
            for (int r = 0; r < R; r++) accm[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(rdf(ab + (size_t)r * as)), accm[r]);
        }
        for (int r = 0; r < R; r++) accd[r] = _mm512_add_ps(accd[r], accm[r]);
    }
    for (int r = 0; r < R; r++) _mm512_mask_storeu_ps(y + (size_t)r * ldy, km, accd[r]);
}

#define TILE16_LEGACY(name, has_m, shift)                                                                           \
    void name(int n, const void *panel, const void *va, size_t as, const int32_t *asum, int nact, float *y,        \
              size_t ldy, int rows) {                                                                               \
        const int nb = n / DSA_QK;                                                                                  \
        const __mmask16 km = lanes(rows);                                                                           \
        const uint8_t *a = va;                                                                                      \
        int r = 0;                                                                                                  \
        for (; r + TR <= nact; r += TR)                                                                             \
            tile16_legacy_r(nb, panel, a + (size_t)r * as, as, asum ? asum + (size_t)r * nb : NULL,                \
                            y + (size_t)r * ldy, ldy, km, TR, has_m, shift);                                        \
        const uint8_t *ar = a + (size_t)r * as;                                                                     \
        const int32_t *sr = asum ? asum + (size_t)r * nb : NULL;                                                    \
        float *yr = y + (size_t)r * ldy;                                                                            \
        switch (nact - r) {                                                                                         \
        case 7: if (7 < TR) tile16_legacy_r(nb, panel, ar, as, sr, yr, ldy, km, 7, has_m, shift); break;            \
        case 6: if (6 < TR) tile16_legacy_r(nb, panel, ar, as, sr, yr, ldy, km, 6, has_m, shift); break;            \
        case 5: if (5 < TR) tile16_legacy_r(nb, panel, ar, as, sr, yr, ldy, km, 5, has_m, shift); break;            \
        case 4: if (4 < TR) tile16_legacy_r(nb, panel, ar, as, sr, yr, ldy, km, 4, has_m, shift); break;            \
        case 3: if (3 < TR) tile16_legacy_r(nb, panel, ar, as, sr, yr, ldy, km, 3, has_m, shift); break;            \
        case 2: if (2 < TR) tile16_legacy_r(nb, panel, ar, as, sr, yr, ldy, km, 2, has_m, shift); break;            \
        case 1: if (1 < TR) tile16_legacy_r(nb, panel, ar, as, sr, yr, ldy, km, 1, has_m, shift); break;            \
        default: break;                                                                                             \
        }                                                                                                           \
    }

TILE16_LEGACY(dsa_mm_tile_q4_0_avx512, 0, 3)
TILE16_LEGACY(dsa_mm_tile_q4_1_avx512, 1, 0)
TILE16_LEGACY(dsa_mm_tile_q8_0_avx512, 0, 7)

/* One activation row against 16 weight rows straight from their blocks (decode): pack16_legacy's vectors go to
 * the products without being stored in a panel, and the float sequence of tile16_legacy_r with R = 1 is kept
 * (the minimum's chain runs beside the scale's instead of after it, each in its own order). */
static inline __attribute__((always_inline)) void gemv16_legacy(int n, const uint8_t *w, size_t ws, const uint8_t *a,
                                                                const int32_t *asum, float *y, enum dsa_type kind) {
    const int nb = n / DSA_QK, bs = kind == DSA_Q4_0 ? DSA_BS_Q4_0 : kind == DSA_Q4_1 ? DSA_BS_Q4_1 : DSA_BS_Q8_0;
    const int shift = kind == DSA_Q4_0 ? 3 : kind == DSA_Q8_0 ? 7 : 0;
    const __m512i m4 = _mm512_set1_epi8(15);
    const uint8_t *ahead = w + 2 * NR * ws; /* as pack16_legacy */
    __m512 accd = _mm512_setzero_ps(), accm = _mm512_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const uint8_t *b = w + (size_t)i * bs, *ab = a + (size_t)i * sizeof(dsa_block_q8_1);
        const uint8_t *qa = ab + offsetof(dsa_block_q8_1, qs);
        for (size_t o = (size_t)i * NR * bs; o < (size_t)(i + 1) * NR * bs; o += 64)
            _mm_prefetch((const char *)ahead + o, _MM_HINT_T1);
        __m512i dm = dword16(b, ws, 0);
        __m512i s0, s1;
        if (kind == DSA_Q8_0) {
            __m512i g[8];
            transpose8x16(b + 2, ws, g);
            const __m512i x80 = _mm512_set1_epi8((char)0x80);
            s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(g[0], x80), _mm512_set1_epi32(rd32(qa)));
            s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(g[1], x80), _mm512_set1_epi32(rd32(qa + 4)));
            for (int c = 2; c < 8; c += 2) {
                s0 = _mm512_dpbusd_epi32(s0, _mm512_xor_si512(g[c], x80), _mm512_set1_epi32(rd32(qa + 4 * c)));
                s1 = _mm512_dpbusd_epi32(s1, _mm512_xor_si512(g[c + 1], x80), _mm512_set1_epi32(rd32(qa + 4 * c + 4)));
            }
        } else {
            __m512i z[4], g[4];
            load16x16(b + (kind == DSA_Q4_1 ? 4 : 2), ws, z);
            transpose4x16(z, g);
            /* chunk c (c < 4): low nibbles, elements 4c..; chunk c + 4: high nibbles, elements 16 + 4c.. */
            s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(g[0], m4), _mm512_set1_epi32(rd32(qa)));
            s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(_mm512_srli_epi16(g[0], 4), m4),
                                     _mm512_set1_epi32(rd32(qa + 16)));
            for (int c = 1; c < 4; c++) {
                s0 = _mm512_dpbusd_epi32(s0, _mm512_and_si512(g[c], m4), _mm512_set1_epi32(rd32(qa + 4 * c)));
                s1 = _mm512_dpbusd_epi32(s1, _mm512_and_si512(_mm512_srli_epi16(g[c], 4), m4),
                                         _mm512_set1_epi32(rd32(qa + 16 + 4 * c)));
            }
        }
        __m512i dot = _mm512_add_epi32(s0, s1); /* integer sums: the order of the products does not matter */
        if (shift) dot = _mm512_sub_epi32(dot, _mm512_set1_epi32(asum[i] * (1 << shift)));
        __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm));
        __m512 sc = _mm512_mul_ps(d, _mm512_set1_ps(rdf(ab)));
        accd = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, accd);
        if (kind == DSA_Q4_1) {
            __m512 m = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16)));
            accm = _mm512_fmadd_ps(m, _mm512_set1_ps(rdf(ab + offsetof(dsa_block_q8_1, s))), accm);
        }
    }
    if (kind == DSA_Q4_1) accd = _mm512_add_ps(accd, accm);
    _mm512_storeu_ps(y, accd);
}

void dsa_mm_gemv_q4_0_avx512(int n, const void *w, size_t ws, const void *a, const int32_t *asum, float *y) {
    gemv16_legacy(n, w, ws, a, asum, y, DSA_Q4_0);
}
void dsa_mm_gemv_q4_1_avx512(int n, const void *w, size_t ws, const void *a, const int32_t *asum, float *y) {
    gemv16_legacy(n, w, ws, a, asum, y, DSA_Q4_1);
}
void dsa_mm_gemv_q8_0_avx512(int n, const void *w, size_t ws, const void *a, const int32_t *asum, float *y) {
    gemv16_legacy(n, w, ws, a, asum, y, DSA_Q8_0);
}

/* ---- K-quants -------------------------------------------------------------------------------------------------
 * Per super-block: the unsigned quants as 64 chunks of 4 elements (q4_K 0..15, q5_K 0..31, q6_K 0..63), and per
 * lane the integer scales.  A sub-block's (q6_K: group's) vpdpbusd sum is multiplied by its scale with vpmulld and
 * added up in 32 bits, exactly as the plain-C sumi.  The mins (q4_K, q5_K) and q6_K's -32 offset are Σ of a 16-bit
 * weight-side value times the activation's 16-bit bsums: vpdpwssd of (mn_j, mn_j) against (bsums[2j], bsums[2j+1])
 * gives mn_j · (bsums[2j] + bsums[2j+1]); of (sc_2t, sc_2t+1) against (bsums[2t], bsums[2t+1]) gives q6_K's
 * Σ sc_g · bsums_g two groups at a time. */

typedef struct {
    uint8_t q[64][NR][4]; /* chunk k: elements 4k..4k+3 of the super-block */
    int32_t sc[16][NR];   /* q4_K, q5_K: sc_j (j < 8); q6_K: sc_g */
    int32_t mn[8][NR];    /* q4_K, q5_K: mn_j in both 16-bit halves; q6_K: (sc_2t, sc_2t+1) as 16-bit pairs */
    float d[NR], dmin[NR];
} panel16k;
_Static_assert(sizeof(panel16k) == DSA_MM_PANEL16_K, "panel size in quant_impl.h");

/* 32-bit lane values: byte j of v (unsigned), or sign-extended */
static inline __m512i byte_u(__m512i v, int j) { return _mm512_and_si512(_mm512_srli_epi32(v, 8 * j), _mm512_set1_epi32(255)); }
static inline __m512i byte_s(__m512i v, int j) { return _mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 8 * j), 24); }

static void pack16_k_scalar(int nb, const uint8_t *w, size_t ws, int rows, panel16k *P, enum dsa_type kind);

/* One super-block of 16 rows (at b, ws apart) into its panel entry p. */
static inline __attribute__((always_inline)) void pack16_k_block(const uint8_t *b, size_t ws, panel16k *p,
                                                                 enum dsa_type kind) {
    const __m512i m4 = _mm512_set1_epi8(15), m2 = _mm512_set1_epi8(3);
    const __m512i one = _mm512_set1_epi8(1), lo16 = _mm512_set1_epi32(0xffff);
    /* The block's dwords for the 16 rows, transposed as pack16_legacy does (dword c of row i in lane i of D[c]):
     * q4_K 0..35, q5_K 0..43, q6_K 0..51 (its d, bytes 208..209, apart). */
    __m512i D[52];
#define G(off) D[(off) / 4]
    transpose16x16(b, ws, D);
    transpose16x16(b + 64, ws, D + 16);
    if (kind == DSA_Q4_K) {
        __m512i z[4];
        load16x16(b + 128, ws, z);
        transpose4x16(z, D + 32);
    } else if (kind == DSA_Q5_K) { /* bytes 112..175 (the block's end): dwords 28..43, 28..31 again */
        transpose16x16(b + 112, ws, D + 28);
    } else {
        transpose16x16(b + 128, ws, D + 32);
    }
    if (kind == DSA_Q6_K) {
        __m512i z[4];
        load16x16(b + 192, ws, z);
        transpose4x16(z, D + 48);
        /* bytes 206..209: the last two scales and d (d at 208 ends the block) */
        __m512i dd = dword16(b + 194, ws, 3);
        _mm512_store_ps(p->d, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dd, 16))));
        __m512i sc4[4];
        for (int t = 0; t < 4; t++) sc4[t] = G(192 + 4 * t);
        for (int g = 0; g < 16; g++) _mm512_store_si512(p->sc[g], byte_s(sc4[g / 4], g % 4));
        for (int t = 0; t < 8; t++) {
            __m512i a0 = byte_s(sc4[t / 2], 2 * (t % 2)), a1 = byte_s(sc4[t / 2], 2 * (t % 2) + 1);
            _mm512_store_si512(p->mn[t], _mm512_or_si512(_mm512_and_si512(a0, lo16), _mm512_slli_epi32(a1, 16)));
        }
        for (int h = 0; h < 2; h++)
            for (int l4 = 0; l4 < 8; l4++) { /* elements 128h + 32k + 4·l4 .. +3, k = 0..3 */
                __m512i qa = G(64 * h + 4 * l4), qb = G(64 * h + 32 + 4 * l4), qh = G(128 + 32 * h + 4 * l4);
                __m512i lo[4] = {qa, qb, _mm512_srli_epi16(qa, 4), _mm512_srli_epi16(qb, 4)};
                for (int k = 0; k < 4; k++) {
                    __m512i hi = _mm512_and_si512(_mm512_srli_epi16(qh, 2 * k), m2);
                    __m512i q = _mm512_or_si512(_mm512_and_si512(lo[k], m4), _mm512_slli_epi16(hi, 4));
                    _mm512_store_si512(p->q[32 * h + 8 * k + l4], q);
                }
            }
        return;
    }
    __m512i dm = G(0);
    _mm512_store_ps(p->d, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm)));
    _mm512_store_ps(p->dmin, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16))));
    /* the 6-bit scales and mins, as dsa_kscales_packed does it, 16 rows at once */
    __m512i s0 = G(4), s1 = G(8), s2 = G(12);
    const __m512i m6 = _mm512_set1_epi8(0x3f), m30 = _mm512_set1_epi8(0x30), m0f = _mm512_set1_epi8(0x0f);
    __m512i sc03 = _mm512_and_si512(s0, m6), mn03 = _mm512_and_si512(s1, m6);
    __m512i sc47 = _mm512_or_si512(_mm512_and_si512(s2, m0f), _mm512_and_si512(_mm512_srli_epi32(s0, 2), m30));
    __m512i mn47 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(s2, 4), m0f),
                                   _mm512_and_si512(_mm512_srli_epi32(s1, 2), m30));
    for (int j = 0; j < 8; j++) {
        _mm512_store_si512(p->sc[j], byte_u(j < 4 ? sc03 : sc47, j % 4));
        __m512i mn = byte_u(j < 4 ? mn03 : mn47, j % 4);
        _mm512_store_si512(p->mn[j], _mm512_or_si512(mn, _mm512_slli_epi32(mn, 16)));
    }
    const int qoff = kind == DSA_Q5_K ? 48 : 16;
    __m512i qh[8];
    if (kind == DSA_Q5_K)
        for (int c = 0; c < 8; c++) qh[c] = G(16 + 4 * c);
    for (int cc = 0; cc < 4; cc++)    /* 32-byte chunk cc: sub-blocks 2cc (low nibbles) and 2cc+1 (high) */
        for (int l4 = 0; l4 < 8; l4++) { /* its bytes 4·l4 .. +3 */
            __m512i g = G(qoff + 32 * cc + 4 * l4);
            __m512i lo = _mm512_and_si512(g, m4), hi = _mm512_and_si512(_mm512_srli_epi16(g, 4), m4);
            if (kind == DSA_Q5_K) { /* bit j of qh[l] is bit 4 of element l of sub-block j */
                lo = _mm512_or_si512(lo, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh[l4], 2 * cc), one), 4));
                hi = _mm512_or_si512(hi, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh[l4], 2 * cc + 1), one), 4));
            }
            _mm512_store_si512(p->q[16 * cc + l4], lo);
            _mm512_store_si512(p->q[16 * cc + 8 + l4], hi);
        }
#undef G
}

static inline __attribute__((always_inline)) void pack16_k(int n, const void *vw, size_t ws, int rows, void *panel,
                                                           enum dsa_type kind) {
    const uint8_t *w = vw;
    panel16k *P = panel;
    const int nb = n / DSA_QK_K, bs = kind == DSA_Q4_K ? DSA_BS_Q4_K : kind == DSA_Q5_K ? DSA_BS_Q5_K : DSA_BS_Q6_K;
    if (rows < NR) { /* a last panel of fewer rows: byte by byte (the vector loads would read past the matrix) */
        pack16_k_scalar(nb, w, ws, rows, P, kind);
        return;
    }
    const uint8_t *ahead = w + 2 * NR * ws; /* prefetch the panel after next into L2, as pack16_legacy */
    for (int i = 0; i < nb; i++) {
        for (size_t o = (size_t)i * NR * bs; o < (size_t)(i + 1) * NR * bs; o += 64)
            _mm_prefetch((const char *)ahead + o, _MM_HINT_T1);
        pack16_k_block(w + (size_t)i * bs, ws, &P[i], kind);
    }
}

/* The same panel byte by byte (a last panel of fewer than 16 rows). */
static void pack16_k_scalar(int nb, const uint8_t *w, size_t ws, int rows, panel16k *P, enum dsa_type kind) {
    const int bs = kind == DSA_Q4_K ? DSA_BS_Q4_K : kind == DSA_Q5_K ? DSA_BS_Q5_K : DSA_BS_Q6_K;
    memset(P, 0, (size_t)nb * sizeof *P);
    for (int l = 0; l < rows; l++)
        for (int i = 0; i < nb; i++) {
            const uint8_t *b = w + (size_t)l * ws + (size_t)i * bs;
            panel16k *p = &P[i];
            int8_t q[DSA_QK_K];
            if (kind == DSA_Q6_K) {
                dsa_unpack_q6_k(b, q);
                for (int e = 0; e < DSA_QK_K; e++) p->q[e / 4][l][e % 4] = (uint8_t)(q[e] + 32);
                const int8_t *sc = (const int8_t *)(b + 192);
                for (int g = 0; g < 16; g++) p->sc[g][l] = sc[g];
                for (int t = 0; t < 8; t++) p->mn[t][l] = (int32_t)((uint32_t)(uint16_t)sc[2 * t] | (uint32_t)(uint16_t)sc[2 * t + 1] << 16);
                p->d[l] = dsa_f16_to_f32(dsa_rd16(b + 208));
                continue;
            }
            int five = kind == DSA_Q5_K;
            uint8_t sc[8], mn[8];
            dsa_kscales(b + 4, sc, mn);
            for (int j = 0; j < 8; j++) {
                dsa_unpack_q45_k(b + (five ? 48 : 16), five ? b + 16 : NULL, j, q + 32 * j);
                p->sc[j][l] = sc[j];
                p->mn[j][l] = mn[j] | mn[j] << 16;
            }
            for (int e = 0; e < DSA_QK_K; e++) p->q[e / 4][l][e % 4] = (uint8_t)q[e];
            p->d[l] = dsa_f16_to_f32(dsa_rd16(b));
            p->dmin[l] = dsa_f16_to_f32(dsa_rd16(b + 2));
        }
}

void dsa_mm_pack_q4_k_avx512(int n, const void *w, size_t ws, int rows, void *p) { pack16_k(n, w, ws, rows, p, DSA_Q4_K); }
void dsa_mm_pack_q5_k_avx512(int n, const void *w, size_t ws, int rows, void *p) { pack16_k(n, w, ws, rows, p, DSA_Q5_K); }
void dsa_mm_pack_q6_k_avx512(int n, const void *w, size_t ws, int rows, void *p) { pack16_k(n, w, ws, rows, p, DSA_Q6_K); }

#define TRK TR

/* One super-block of a K panel against R activation rows (q8_K, as bytes apart): accd += the scaled sums, and
 * (q4_K, q5_K) accm += the mins' part, each a chain of its own in block order. */
static inline __attribute__((always_inline)) void tile16_k_block(const panel16k *p, const uint8_t *ab, size_t as,
                                                                 const int R, const int six, __m512 *accd,
                                                                 __m512 *accm) {
    enum { QS = offsetof(dsa_block_q8_k, qs), BSUMS = offsetof(dsa_block_q8_k, bsums) };
    __m512i sumi[8];
    if (six) { /* start from -32 · Σ_g sc_g · bsums_g */
        for (int r = 0; r < R; r++) {
            __m512i off = _mm512_setzero_si512();
            for (int t = 0; t < 8; t++)
                off = _mm512_dpwssd_epi32(off, _mm512_load_si512(p->mn[t]),
                                          _mm512_set1_epi32(rd32(ab + (size_t)r * as + BSUMS + 4 * t)));
            sumi[r] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(off, 5));
        }
    } else {
        for (int r = 0; r < R; r++) sumi[r] = _mm512_setzero_si512();
    }
    const int groups = six ? 16 : 8, per = six ? 4 : 8; /* chunks per scale */
    for (int g = 0; g < groups; g++) {
        __m512i s[8];
        for (int c = 0; c < per; c++) {
            int k = g * per + c;
            __m512i wq = _mm512_load_si512(p->q[k]);
            for (int r = 0; r < R; r++) {
                __m512i x = _mm512_set1_epi32(rd32(ab + (size_t)r * as + QS + 4 * k));
                s[r] = _mm512_dpbusd_epi32(c ? s[r] : _mm512_setzero_si512(), wq, x);
            }
        }
        __m512i sc = _mm512_load_si512(p->sc[g]);
        for (int r = 0; r < R; r++) sumi[r] = _mm512_add_epi32(sumi[r], _mm512_mullo_epi32(s[r], sc));
    }
    __m512 d = _mm512_load_ps(p->d);
    for (int r = 0; r < R; r++) {
        __m512 sc = _mm512_mul_ps(d, _mm512_set1_ps(rdf(ab + (size_t)r * as)));
        accd[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[r]), sc, accd[r]);
    }
    if (!six) { /* the mins: accm += (float)summ · (dmin · a.d); the caller takes accm from accd at the end */
        __m512 dmin = _mm512_load_ps(p->dmin);
        for (int r = 0; r < R; r++) {
            __m512i summ = _mm512_setzero_si512();
            for (int j = 0; j < 8; j++)
                summ = _mm512_dpwssd_epi32(summ, _mm512_load_si512(p->mn[j]),
                                           _mm512_set1_epi32(rd32(ab + (size_t)r * as + BSUMS + 4 * j)));
            __m512 sc = _mm512_mul_ps(dmin, _mm512_set1_ps(rdf(ab + (size_t)r * as)));
            accm[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(summ), sc, accm[r]);
        }
    }
}

/* R activation rows (q8_K) against one K panel.  six: q6_K (16 groups of 16, -32 offset); else q4_K/q5_K. */
static inline __attribute__((always_inline)) void tile16_k_r(int nb, const panel16k *P, const uint8_t *a, size_t as,
                                                             float *y, size_t ldy, __mmask16 km, const int R,
                                                             const int six) {
    __m512 accd[8], accm[8];
    for (int r = 0; r < R; r++) accd[r] = accm[r] = _mm512_setzero_ps();
    for (int i = 0; i < nb; i++) tile16_k_block(&P[i], a + (size_t)i * sizeof(dsa_block_q8_k), as, R, six, accd, accm);
    if (!six)
        for (int r = 0; r < R; r++) accd[r] = _mm512_sub_ps(accd[r], accm[r]);
    for (int r = 0; r < R; r++) _mm512_mask_storeu_ps(y + (size_t)r * ldy, km, accd[r]);
}

/* One activation row against 16 rows of K-quant weights (decode): each super-block is packed into an L1 buffer
 * and multiplied at once, instead of the whole panel being packed and then read back. */
static inline __attribute__((always_inline)) void gemv16_k(int n, const uint8_t *w, size_t ws, const uint8_t *a,
                                                           float *y, enum dsa_type kind) {
    const int nb = n / DSA_QK_K, bs = kind == DSA_Q4_K ? DSA_BS_Q4_K : kind == DSA_Q5_K ? DSA_BS_Q5_K : DSA_BS_Q6_K;
    const int six = kind == DSA_Q6_K;
    const uint8_t *ahead = w + 2 * NR * ws; /* as pack16_k */
    _Alignas(64) panel16k p; /* the pack stores and the tile loads it with aligned vector moves */
    __m512 accd = _mm512_setzero_ps(), accm = _mm512_setzero_ps();
    for (int i = 0; i < nb; i++) {
        for (size_t o = (size_t)i * NR * bs; o < (size_t)(i + 1) * NR * bs; o += 64)
            _mm_prefetch((const char *)ahead + o, _MM_HINT_T1);
        pack16_k_block(w + (size_t)i * bs, ws, &p, kind);
        tile16_k_block(&p, a + (size_t)i * sizeof(dsa_block_q8_k), 0, 1, six, &accd, &accm);
    }
    if (!six) accd = _mm512_sub_ps(accd, accm);
    _mm512_storeu_ps(y, accd);
}

void dsa_mm_gemv_q4_k_avx512(int n, const void *w, size_t ws, const void *a, const int32_t *asum, float *y) {
    (void)asum;
    gemv16_k(n, w, ws, a, y, DSA_Q4_K);
}
void dsa_mm_gemv_q5_k_avx512(int n, const void *w, size_t ws, const void *a, const int32_t *asum, float *y) {
    (void)asum;
    gemv16_k(n, w, ws, a, y, DSA_Q5_K);
}
void dsa_mm_gemv_q6_k_avx512(int n, const void *w, size_t ws, const void *a, const int32_t *asum, float *y) {
    (void)asum;
    gemv16_k(n, w, ws, a, y, DSA_Q6_K);
}

#define TILE16_K(name, six)                                                                                         \
    void name(int n, const void *panel, const void *va, size_t as, const int32_t *asum, int nact, float *y,        \
              size_t ldy, int rows) {                                                                               \
        (void)asum;                                                                                                 \
        const int nb = n / DSA_QK_K;                                                                                \
        const __mmask16 km = lanes(rows);                                                                           \
        const uint8_t *a = va;                                                                                      \
        int r = 0;                                                                                                  \
        for (; r + TRK <= nact; r += TRK)                                                                           \
            tile16_k_r(nb, panel, a + (size_t)r * as, as, y + (size_t)r * ldy, ldy, km, TRK, six);                  \
        const uint8_t *ar = a + (size_t)r * as;                                                                     \
        float *yr = y + (size_t)r * ldy;                                                                            \
        switch (nact - r) {                                                                                         \
        case 7: if (7 < TRK) tile16_k_r(nb, panel, ar, as, yr, ldy, km, 7, six); break;                             \
        case 6: if (6 < TRK) tile16_k_r(nb, panel, ar, as, yr, ldy, km, 6, six); break;                             \
        case 5: if (5 < TRK) tile16_k_r(nb, panel, ar, as, yr, ldy, km, 5, six); break;                             \
        case 4: if (4 < TRK) tile16_k_r(nb, panel, ar, as, yr, ldy, km, 4, six); break;                             \
        case 3: if (3 < TRK) tile16_k_r(nb, panel, ar, as, yr, ldy, km, 3, six); break;                             \
        case 2: if (2 < TRK) tile16_k_r(nb, panel, ar, as, yr, ldy, km, 2, six); break;                             \
        case 1: if (1 < TRK) tile16_k_r(nb, panel, ar, as, yr, ldy, km, 1, six); break;                             \
        default: break;                                                                                             \
        }                                                                                                           \
    }

TILE16_K(dsa_mm_tile_q45_k_avx512, 0)
TILE16_K(dsa_mm_tile_q6_k_avx512, 1)

#endif
