/*
 * Matrix multiply and the tile kernels it uses for many activation rows (kernels/cpu/matmul.c, mm_tile*.c):
 *  1. tiles: for every type that has them, at every SIMD level this CPU has, pack + tile give the same bits as
 *     the plain-C tile (mm_tile.c states the float sequence all of them keep), whatever the number of activation
 *     rows per call or weight rows per panel; they agree with vec_dot and with a float64 dot product within the
 *     rounding bounds test_quant.c uses, and never write outside their rows of Y;
 *  2. dsa_matmul with n = 1, 3, 4, 5, 17, 256 activation rows, 1 and 2 threads, at every level: within the bound of
 *     a float64 product (3 bounds where a SIMD vec_dot does the work: it is within 2 of plain C), identical Y for
 *     any thread count and (tiles) any n, the padding of Y untouched;
 *     dsa_matmul_n with outputs of mixed types.
 *
 * Bounds (as in test_quant.c).  With T the number of blocks in a row, ε = 2^-24 and M the sum of the magnitudes of
 * the products (for types with a minimum, the scaled part and the minimum part counted apart), a result is within
 * (T + 8)·ε·M of the float64 dot product of the dequantised weights and the dequantised 8-bit activations, and two
 * implementations within 2·(T + 8)·ε·M of each other.
 */
#include "kernels.h"
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* every weight type the kernels know, so a new type is covered here without editing this file */
static enum dsa_type WTYPES[DSA_TYPE_COUNT];
static int NWTYPES;
static const char *const LEVELS[4] = {"", "generic", "avx2", "avx512"};
static int g_max_level = 1;

/* ---- random data (splitmix64) ------------------------------------------------------------------------------- */
static uint64_t g_rng = 0x2545f4914f6cdd1dull;
static uint64_t rnd(void) { return tu_splitmix(&g_rng); }
static float uniform(float lo, float hi) { return lo + (hi - lo) * (float)(rnd() >> 40) * 0x1p-24f; }
static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static float f16_scale(void) { return uniform(1, 2) * ldexpf(1, (int)(rnd() % 7) - 10); }

static int d_offset(enum dsa_type t) { return t == DSA_Q6_K ? 208 : 0; }
static int m_offset(enum dsa_type t) {
    return t == DSA_Q4_1 || t == DSA_Q5_1 || t == DSA_Q4_K || t == DSA_Q5_K ? 2 : -1;
}
/* bytes [lo, hi) of a block that hold quants: zeroed, only the block's minimum is left */
static void quant_bytes(enum dsa_type t, int *lo, int *hi) {
    *lo = *hi = 0;
    if (t == DSA_Q4_1) *lo = 4, *hi = 20;
    if (t == DSA_Q4_K) *lo = 16, *hi = 144;
    if (t == DSA_Q5_K) *lo = 16, *hi = 176;
}

/* rows × n random weights of type t, rows ws bytes apart */
static void random_weights(enum dsa_type t, uint8_t *w, size_t ws, int rows, int n) {
    const dsa_type_traits *tt = dsa_traits_ref(t);
    for (int r = 0; r < rows; r++) {
        uint8_t *row = w + (size_t)r * ws;
        for (size_t i = 0; i < dsa_row_size(t, n); i++) row[i] = (uint8_t)rnd();
        for (int i = 0; i < n && tt->blck == 1; i++) {
            float v = uniform(-1, 1);
            uint32_t u;
            memcpy(&u, &v, 4);
            if (t == DSA_F32) memcpy(row + 4 * i, &v, 4);
            if (t == DSA_F16) put16(row + 2 * i, dsa_f32_to_f16(v));
            if (t == DSA_BF16) put16(row + 2 * i, (uint16_t)(u >> 16));
        }
        for (int b = 0; b < n / tt->blck && tt->blck > 1; b++) {
            uint8_t *blk = row + (size_t)b * tt->type_size;
            put16(blk + d_offset(t), dsa_f32_to_f16(f16_scale()));
            if (m_offset(t) >= 0)
                put16(blk + m_offset(t), dsa_f32_to_f16(t == DSA_Q4_1 ? -uniform(0, 1) * f16_scale() * 8 : f16_scale()));
        }
    }
}

/* activations whose size changes from block to block, with outliers */
static void random_acts(float *x, int n) {
    for (int i = 0; i < n; i++) x[i] = uniform(-1, 1) * ldexpf(1, (int)((i / 32 + rnd() % 3) % 9) - 4);
    for (int i = 0; i < n / 50; i++) x[rnd() % (uint64_t)n] *= 20;
}

/* ---- the float64 reference ----------------------------------------------------------------------------------- */

typedef struct {
    double exact, tol; /* float64 product, and its bound (T + 8)·ε·M */
} ref_dot;

/* For weight rows W (rows × n, type t, ws apart) and activations X (nact × n floats): wf / zf the dequantised
 * rows and their minimum parts, af the activations as the kernels see them (quantised, then dequantised). */
static ref_dot *reference(enum dsa_type t, const uint8_t *W, size_t ws, int rows, const float *X, int nact, int n) {
    const dsa_type_traits *tt = dsa_traits_ref(t), *at = dsa_traits_ref(tt->act);
    float *wf = malloc(sizeof(float) * (size_t)rows * n), *zf = calloc((size_t)rows * n, sizeof(float));
    float *af = malloc(sizeof(float) * (size_t)nact * n);
    void *qa = malloc(dsa_row_size(tt->act, n));
    uint8_t *wz = malloc(dsa_row_size(t, n));
    int lo, hi;
    quant_bytes(t, &lo, &hi);
    for (int r = 0; r < rows; r++) {
        tt->to_float(W + (size_t)r * ws, wf + (size_t)r * n, n);
        if (!hi) continue;
        memcpy(wz, W + (size_t)r * ws, dsa_row_size(t, n));
        for (int b = 0; b < n / tt->blck; b++) memset(wz + (size_t)b * tt->type_size + lo, 0, (size_t)(hi - lo));
        tt->to_float(wz, zf + (size_t)r * n, n);
    }
    for (int c = 0; c < nact; c++) {
        at->from_float(X + (size_t)c * n, qa, n);
        at->to_float(qa, af + (size_t)c * n, n);
    }
    int terms = tt->blck == 1 ? n : n / tt->blck;
    ref_dot *out = malloc(sizeof *out * (size_t)rows * nact);
    for (int c = 0; c < nact; c++)
        for (int r = 0; r < rows; r++) {
            const float *w = wf + (size_t)r * n, *z = zf + (size_t)r * n, *a = af + (size_t)c * n;
            double e = 0, mag = 0;
            for (int i = 0; i < n; i++) {
                e += (double)w[i] * a[i];
                mag += (fabs((double)w[i] - z[i]) + fabs((double)z[i])) * fabs((double)a[i]);
            }
            out[(size_t)c * rows + r] = (ref_dot){e, (terms + 8) * 0x1p-24 * mag};
        }
    free(wf), free(zf), free(af), free(qa), free(wz);
    return out;
}

static int level_ok(int level) {
    dsa_kernels_init(level);
    return strcmp(dsa_cpu_name(), LEVELS[level]) == 0;
}

/* ---- 1. tile kernels ------------------------------------------------------------------------------------------ */

/* Y (nact × rows, ldy apart) through traits tt's tiles, nact_call activation rows per mm_tile call and at most
 * rows_pack weight rows per panel. */
static void tile_product(const dsa_type_traits *tt, const uint8_t *W, size_t ws, int rows, const void *A, size_t as,
                         const int32_t *S, int nact, int n, float *Y, size_t ldy, int nact_call, int rows_pack) {
    size_t psize = (size_t)(n / tt->blck) * tt->mm_panel_blk;
    void *panel = aligned_alloc(64, (psize + 63) / 64 * 64);
    int nbs = n / DSA_QK;
    for (int i0 = 0; i0 < rows; i0 += rows_pack) {
        int nr = rows - i0 < rows_pack ? rows - i0 : rows_pack;
        tt->mm_pack(n, W + (size_t)i0 * ws, ws, nr, panel);
        for (int c = 0; c < nact; c += nact_call) {
            int na = nact - c < nact_call ? nact - c : nact_call;
            tt->mm_tile(n, panel, (const char *)A + (size_t)c * as, as, S ? S + (size_t)c * nbs : NULL, na,
                        Y + (size_t)c * ldy + i0, ldy, nr);
        }
    }
    free(panel);
}

/* Decode's fused pack + tile (mm_gemv), run on every whole panel of the rows for each activation row: how many of
 * its outputs differ in their bits from want (nact × rows, ldy apart).  0 where the traits have no mm_gemv. */
static int gemv_diffs(const dsa_type_traits *tt, const uint8_t *W, size_t ws, int rows, const void *A, size_t as,
                      const int32_t *S, int nact, int n, const float *want, size_t ldy) {
    if (!tt->mm_gemv) return 0;
    int diff = 0;
    for (int c = 0; c < nact; c++)
        for (int i0 = 0; i0 + tt->mm_nr <= rows; i0 += tt->mm_nr) {
            float y[16];
            tt->mm_gemv(n, W + (size_t)i0 * ws, ws, (const char *)A + (size_t)c * as,
                        S ? S + (size_t)c * (n / DSA_QK) : NULL, y);
            for (int r = 0; r < tt->mm_nr; r++) diff += memcmp(&y[r], &want[(size_t)c * ldy + i0 + r], 4) != 0;
        }
    return diff;
}

static void check_tiles(enum dsa_type t, int n, int rows, int nact) {
    const dsa_type_traits *rt = dsa_traits_ref(t), *ra = dsa_traits_ref(rt->act);
    const char *tn = dsa_type_name(t);
    size_t ws = dsa_row_size(t, n) + 3; /* rows at odd distances, as a real matrix's never are: no alignment */
    uint8_t *W = malloc(ws * (size_t)rows + 1);
    float *X = malloc(sizeof(float) * (size_t)nact * n);
    size_t as = dsa_row_size(rt->act, n);
    char *A = malloc(as * (size_t)nact);
    int32_t *S = malloc(sizeof(int32_t) * (size_t)nact * (size_t)(n / DSA_QK) + 4);
    size_t ldy = (size_t)rows + 5;
    float *want = malloc(sizeof(float) * ldy * nact), *got = malloc(sizeof(float) * ldy * nact);
    random_weights(t, W + 1, ws, rows, n);
    for (int c = 0; c < nact; c++) {
        random_acts(X + (size_t)c * n, n);
        ra->from_float(X + (size_t)c * n, A + (size_t)c * as, n);
        if (rt->act == DSA_Q8_1) dsa_q8_1_sums(A + (size_t)c * as, n, S + (size_t)c * (n / DSA_QK));
    }
    const int32_t *sums = rt->act == DSA_Q8_1 ? S : NULL;
    ref_dot *ref = reference(t, W + 1, ws, rows, X, nact, n);

    /* plain C: against float64 and vec_dot */
    memset(want, 0x7f, sizeof(float) * ldy * nact);
    tile_product(rt, W + 1, ws, rows, A, as, sums, nact, n, want, ldy, nact, rt->mm_nr);
    int bad64 = 0, badvd = 0, badpad = 0;
    for (int c = 0; c < nact; c++) {
        for (int r = 0; r < rows; r++) {
            float y = want[(size_t)c * ldy + r];
            const ref_dot *e = &ref[(size_t)c * rows + r];
            float v = rt->vec_dot(n, W + 1 + (size_t)r * ws, A + (size_t)c * as);
            if (!(fabs(y - e->exact) <= e->tol)) {
                if (bad64++ < 3)
                    fprintf(stderr, "%s n=%d [%d][%d]: tile %.9g, float64 %.9g (bound %.3g)\n", tn, n, c, r, y, e->exact,
                            e->tol);
            }
            if (!(fabs(y - v) <= 2 * e->tol)) {
                if (badvd++ < 3)
                    fprintf(stderr, "%s n=%d [%d][%d]: tile %.9g, vec_dot %.9g (bound %.3g)\n", tn, n, c, r, y, v,
                            2 * e->tol);
            }
        }
        for (size_t r = (size_t)rows; r < ldy; r++) {
            uint32_t u;
            memcpy(&u, &want[(size_t)c * ldy + r], 4);
            badpad += u != 0x7f7f7f7fu;
        }
    }
    CHECK(bad64 == 0, "%s n=%d rows=%d nact=%d: %d plain-C tile results outside the float64 bound", tn, n, rows, nact,
          bad64);
    CHECK(badvd == 0, "%s n=%d rows=%d nact=%d: %d plain-C tile results too far from vec_dot", tn, n, rows, nact,
          badvd);
    CHECK(badpad == 0, "%s n=%d: plain-C tile wrote %d floats outside its rows", tn, n, badpad);

    /* every level, and different splits: the same bits */
    for (int level = 1; level <= g_max_level; level++) {
        dsa_kernels_init(level);
        const dsa_type_traits *st = dsa_traits(t);
        if (!st->mm_tile) { /* the generic level calls vec_dot: the plain-C tiles are only the reference */
            CHECK(level == 1, "%s at %s: no tiles", tn, LEVELS[level]);
            continue;
        }
        CHECK(st->mm_pack && (st->mm_nr == 8 || st->mm_nr == 16) && st->mm_panel_blk % 64 == 0 &&
                  st->mm_min_rows >= 1 && st->mm_min_rows <= 4,
              "%s at %s: tile traits", tn, LEVELS[level]);
        const int splits[][2] = {{nact, st->mm_nr}, {1, st->mm_nr}, {3, st->mm_nr}, {nact, 1}, {5, st->mm_nr - 3}};
        for (size_t s = 0; s < sizeof splits / sizeof splits[0]; s++) {
            memset(got, 0x7f, sizeof(float) * ldy * nact);
            tile_product(st, W + 1, ws, rows, A, as, sums, nact, n, got, ldy, splits[s][0], splits[s][1]);
            int diff = 0, first = -1;
            for (size_t i = 0; i < ldy * nact; i++)
                if (memcmp(&got[i], &want[i], 4)) diff++, first = first < 0 ? (int)i : first;
            CHECK(diff == 0, "%s n=%d at %s (%d act rows per call, %d weight rows per panel): %d of %zu differ from "
                  "plain C, first [%d]: %.9g vs %.9g", tn, n, LEVELS[level], splits[s][0], splits[s][1], diff,
                  ldy * nact, first, first >= 0 ? got[first] : 0, first >= 0 ? want[first] : 0);
        }
        int gd = gemv_diffs(st, W + 1, ws, rows, A, as, sums, nact, n, want, ldy);
        CHECK(gd == 0, "%s n=%d at %s: %d one-row products (mm_gemv) differ from plain C", tn, n, LEVELS[level], gd);
    }
    free(W), free(X), free(A), free(S), free(want), free(got), free(ref);
}

static void test_tiles(void) {
    for (int k = 0; k < NWTYPES; k++) {
        enum dsa_type t = WTYPES[k];
        const dsa_type_traits *rt = dsa_traits_ref(t);
        if (!rt->mm_tile) { /* only float types and the Q5 legacy quants go through vec_dot at every size */
            CHECK(rt->blck == 1 || t == DSA_Q5_0 || t == DSA_Q5_1, "%s has no plain-C tile", dsa_type_name(t));
            continue;
        }
        int qk = rt->blck;
        const int sizes[] = {qk, 3 * qk, 576, 1536, 4096};
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            if (sizes[s] % qk) continue;
            check_tiles(t, sizes[s], 37, 13);
        }
        check_tiles(t, 2 * qk, 16, 8);
        check_tiles(t, 2 * qk, 1, 1);
    }
}

/* Quants at their extremes against activations at ±127, and all-zero blocks (test_quant.c does the same for
 * vec_dot): saturation or a wrong offset shows here. */
static void test_tile_extremes(void) {
    const int n = 512, rows = 19, nact = 3;
    for (int k = 0; k < NWTYPES; k++) {
        enum dsa_type t = WTYPES[k];
        const dsa_type_traits *rt = dsa_traits_ref(t), *ra = dsa_traits_ref(rt->act);
        if (!rt->mm_tile) continue;
        size_t ws = dsa_row_size(t, n), as = dsa_row_size(rt->act, n);
        uint8_t *W = malloc(ws * rows);
        float *X = malloc(sizeof(float) * n * nact), *want = malloc(sizeof(float) * rows * nact),
              *got = malloc(sizeof(float) * rows * nact);
        char *A = malloc(as * nact);
        int32_t *S = malloc(sizeof(int32_t) * (n / DSA_QK) * nact);
        for (int pattern = 0; pattern < 5; pattern++) {
            int fill = t == DSA_Q8_0 ? (pattern & 1 ? 0x7f : 0x80) : t == DSA_Q4_0 && !(pattern & 1) ? 0x00 : 0xff;
            memset(W, pattern == 4 ? 0 : fill, ws * rows);
            for (int r = 0; r < rows && pattern < 4; r++)
                for (int b = 0; b < n / rt->blck; b++) {
                    uint8_t *blk = W + (size_t)r * ws + (size_t)b * rt->type_size;
                    if (t == DSA_Q6_K && pattern >= 2) memset(blk + 192, 0x80, 16);
                    put16(blk + d_offset(t), dsa_f32_to_f16(0.01f));
                    if (m_offset(t) >= 0) put16(blk + m_offset(t), dsa_f32_to_f16(0.02f));
                }
            for (int c = 0; c < nact; c++) {
                for (int i = 0; i < n; i++) X[c * n + i] = pattern & 2 ? (i & 1 ? 1.0f : -1.0f) : c == 2 ? 0 : 1.0f;
                ra->from_float(X + c * n, A + c * as, n);
                if (rt->act == DSA_Q8_1) dsa_q8_1_sums(A + c * as, n, S + c * (n / DSA_QK));
            }
            const int32_t *sums = rt->act == DSA_Q8_1 ? S : NULL;
            tile_product(rt, W, ws, rows, A, as, sums, nact, n, want, rows, nact, rt->mm_nr);
            ref_dot *ref = reference(t, W, ws, rows, X, nact, n);
            int bad = 0;
            for (int i = 0; i < rows * nact; i++) {
                int c = i / rows, r = i % rows;
                bad += !(fabs(want[i] - ref[i].exact) <= ref[i].tol);
                if (pattern == 4 || (c == 2 && !(pattern & 2))) bad += want[i] != 0; /* zero weights or acts: 0 */
                (void)r;
            }
            CHECK(bad == 0, "%s extreme pattern %d: %d plain-C tile results wrong", dsa_type_name(t), pattern, bad);
            for (int level = 2; level <= g_max_level; level++) {
                dsa_kernels_init(level);
                if (!dsa_traits(t)->mm_tile) continue;
                tile_product(dsa_traits(t), W, ws, rows, A, as, sums, nact, n, got, rows, nact, dsa_traits(t)->mm_nr);
                CHECK(memcmp(got, want, sizeof(float) * rows * nact) == 0, "%s extreme pattern %d at %s: differs from "
                      "plain C", dsa_type_name(t), pattern, LEVELS[level]);
                int gd = gemv_diffs(dsa_traits(t), W, ws, rows, A, as, sums, nact, n, want, rows);
                CHECK(gd == 0, "%s extreme pattern %d at %s: %d mm_gemv results differ from plain C", dsa_type_name(t),
                      pattern, LEVELS[level], gd);
            }
            free(ref);
        }
        free(W), free(X), free(want), free(got), free(A), free(S);
    }
}

/* Weight rows 2 GB apart (an offset a 32-bit index cannot hold): the same bits as the rows next to each other.
 * One row (a partial panel, packed byte by byte) and 16 rows (full panels, packed with vector loads; each row's
 * page is the only memory mapped there, so a load past a row's blocks faults). */
static void test_far_rows(void) {
    const int nact = 3, NR = 16;
    const size_t far = (size_t)1 << 31;
    uint8_t *base = mmap(NULL, far * NR, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) { /* e.g. under ulimit -v: the rest of the suite still runs */
        fprintf(stderr, "test_far_rows skipped: no %zu GB of address space to reserve\n", far * NR >> 30);
        return;
    }
    for (int k = 0; k < NWTYPES; k++) {
        enum dsa_type t = WTYPES[k];
        const dsa_type_traits *rt = dsa_traits_ref(t), *ra = dsa_traits_ref(rt->act);
        if (!rt->mm_tile) continue;
        const int n = 2 * rt->blck;
        size_t ws = dsa_row_size(t, n), as = dsa_row_size(rt->act, n);
        uint8_t *W = malloc(ws * NR);
        float *X = malloc(sizeof(float) * n * nact), want[3 * 16], got[3 * 16];
        char *A = malloc(as * nact);
        int32_t *S = malloc(sizeof(int32_t) * (n / DSA_QK) * nact);
        random_weights(t, W, ws, NR, n);
        size_t page = (size_t)sysconf(_SC_PAGESIZE), span = (ws + page - 1) / page * page;
        for (int r = 0; r < NR; r++) {
            /* the row ends exactly at the end of its mapped page(s) */
            uint8_t *row = base + (size_t)r * far + span - ws;
            CHECK(mprotect(base + (size_t)r * far, span, PROT_READ | PROT_WRITE) == 0, "mprotect");
            memcpy(row, W + (size_t)r * ws, ws);
        }
        for (int c = 0; c < nact; c++) {
            random_acts(X + c * n, n);
            ra->from_float(X + c * n, A + c * as, n);
            if (rt->act == DSA_Q8_1) dsa_q8_1_sums(A + c * as, n, S + c * (n / DSA_QK));
        }
        const int32_t *sums = rt->act == DSA_Q8_1 ? S : NULL;
        for (int rows = 1; rows <= NR; rows += NR - 1) {
            tile_product(rt, W, ws, rows, A, as, sums, nact, n, want, rows, nact, rt->mm_nr);
            for (int level = 2; level <= g_max_level; level++) {
                dsa_kernels_init(level);
                const dsa_type_traits *st = dsa_traits(t);
                if (!st->mm_tile) continue;
                tile_product(st, base + span - ws, far, rows, A, as, sums, nact, n, got, rows, nact, st->mm_nr);
                CHECK(memcmp(got, want, sizeof(float) * rows * nact) == 0, "%s at %s: %d rows 2 GB apart differ",
                      dsa_type_name(t), LEVELS[level], rows);
                int gd = gemv_diffs(st, base + span - ws, far, rows, A, as, sums, nact, n, want, rows);
                CHECK(gd == 0, "%s at %s: %d mm_gemv results of rows 2 GB apart differ", dsa_type_name(t),
                      LEVELS[level], gd);
            }
        }
        for (int r = 0; r < NR; r++) mprotect(base + (size_t)r * far, span, PROT_NONE);
        free(W), free(X), free(A), free(S);
    }
    munmap(base, far * NR);
}

/* ---- 2. dsa_matmul ------------------------------------------------------------------------------------------ */

static void check_matmul(enum dsa_type t, int rows, int cols, dsa_pool *p1, dsa_pool *p2) {
    static const int NS[] = {256, 1, 3, 4, 5, 17};
    const int nmax = 256;
    const char *tn = dsa_type_name(t);
    size_t ws = dsa_row_size(t, cols);
    uint8_t *W = malloc(ws * (size_t)rows);
    float *X = malloc(sizeof(float) * (size_t)nmax * cols);
    random_weights(t, W, ws, rows, cols);
    for (int c = 0; c < nmax; c++) random_acts(X + (size_t)c * cols, cols);
    ref_dot *ref = reference(t, W, ws, rows, X, nmax, cols);
    int64_t ldy = rows + 7;
    float *full = malloc(sizeof(float) * (size_t)ldy * nmax), *Y = malloc(sizeof(float) * (size_t)ldy * nmax);
    void *scratch = malloc(dsa_matmul_scratch(t, cols, nmax));
    const dsa_type_traits *tt = dsa_traits(t);
    for (size_t k = 0; k < sizeof NS / sizeof NS[0]; k++) {
        int n = NS[k];
        int has_tiles = tt->mm_tile != NULL && n >= tt->mm_min_rows;
        /* tiles and plain C are within the bound of float64; SIMD vec_dot within 2 bounds of plain C (test_quant.c) */
        double k_tol = has_tiles || !strcmp(dsa_cpu_name(), "generic") ? 1 : 3;
        for (int th = 1; th <= 2; th++) {
            memset(Y, 0x7f, sizeof(float) * (size_t)ldy * nmax);
            dsa_matmul(th == 1 ? p1 : p2, t, W, rows, cols, X, n, Y, ldy, scratch);
            int bad = 0, pad = 0, diff = 0;
            for (int c = 0; c < n; c++) {
                for (int r = 0; r < rows; r++) {
                    float y = Y[(size_t)c * ldy + r];
                    const ref_dot *e = &ref[(size_t)c * rows + r];
                    if (!(fabs(y - e->exact) <= k_tol * e->tol) && bad++ < 3)
                        fprintf(stderr, "%s %s n=%d threads=%d [%d][%d]: %.9g, float64 %.9g (bound %.3g)\n", tn,
                                dsa_cpu_name(), n, th, c, r, y, e->exact, k_tol * e->tol);
                }
                for (int64_t r = rows; r < ldy; r++) {
                    uint32_t u;
                    memcpy(&u, &Y[(size_t)c * ldy + r], 4);
                    pad += u != 0x7f7f7f7fu;
                }
            }
            for (size_t i = (size_t)n * ldy; i < (size_t)nmax * ldy; i++) {
                uint32_t u;
                memcpy(&u, &Y[i], 4);
                pad += u != 0x7f7f7f7fu;
            }
            CHECK(bad == 0, "%s at %s, %dx%d, n=%d, %d threads: %d results outside the float64 bound", tn,
                  dsa_cpu_name(), rows, cols, n, th, bad);
            CHECK(pad == 0, "%s at %s, n=%d, %d threads: %d floats written outside Y's rows", tn, dsa_cpu_name(), n, th,
                  pad);
            if (k == 0 && th == 1) {
                memcpy(full, Y, sizeof(float) * (size_t)ldy * nmax);
                continue;
            }
            /* 2 threads: the same bits as 1; with tiles, any n: the same bits as n = 256 */
            if (th == 2 || has_tiles)
                for (int c = 0; c < n; c++)
                    diff += memcmp(Y + (size_t)c * ldy, full + (size_t)c * ldy, sizeof(float) * (size_t)rows) != 0;
            if (th == 2 && !has_tiles) { /* vec_dot: compare with this n on 1 thread */
                float *Y1 = malloc(sizeof(float) * (size_t)ldy * n);
                dsa_matmul(p1, t, W, rows, cols, X, n, Y1, ldy, scratch);
                diff = 0;
                for (int c = 0; c < n; c++)
                    diff += memcmp(Y + (size_t)c * ldy, Y1 + (size_t)c * ldy, sizeof(float) * (size_t)rows) != 0;
                free(Y1);
            }
            CHECK(diff == 0, "%s at %s, n=%d, %d threads: %d rows of Y differ from %s", tn, dsa_cpu_name(), n, th,
                  diff, has_tiles ? "n=256 on 1 thread" : "1 thread");
        }
    }
    free(W), free(X), free(ref), free(full), free(Y), free(scratch);
}

/* Q, K, V-like outputs of different types and row counts in one call: the same bits as one call each. */
static void check_matmul_n(dsa_pool *p) {
    const int cols = 512, n = 9;
    const struct { enum dsa_type t; int rows; } spec[] = {
        {DSA_Q4_1, 40}, {DSA_Q8_0, 24}, {DSA_Q4_K, 17}, {DSA_Q4_0, 33}, {DSA_F32, 5}, {DSA_Q6_K, 16}};
    enum { NO = sizeof spec / sizeof spec[0] };
    uint8_t *W[NO];
    float *Y[NO], *Y1[NO];
    dsa_mm_out outs[NO];
    float *X = malloc(sizeof(float) * n * cols);
    for (int c = 0; c < n; c++) random_acts(X + c * cols, cols);
    size_t scratch_size = 0;
    for (int o = 0; o < NO; o++) {
        size_t ws = dsa_row_size(spec[o].t, cols);
        W[o] = malloc(ws * spec[o].rows);
        random_weights(spec[o].t, W[o], ws, spec[o].rows, cols);
        Y[o] = malloc(sizeof(float) * n * (spec[o].rows + 1));
        Y1[o] = malloc(sizeof(float) * n * (spec[o].rows + 1));
        memset(Y[o], 0, sizeof(float) * n * (spec[o].rows + 1));
        memset(Y1[o], 0, sizeof(float) * n * (spec[o].rows + 1));
        outs[o] = (dsa_mm_out){spec[o].t, W[o], spec[o].rows, Y[o], spec[o].rows + 1};
        size_t s = dsa_matmul_scratch(spec[o].t, cols, n);
        if (s > scratch_size) scratch_size = s;
    }
    void *scratch = malloc(scratch_size);
    dsa_matmul_n(p, outs, NO, cols, X, n, scratch);
    int diff = 0;
    for (int o = 0; o < NO; o++) {
        dsa_matmul(p, spec[o].t, W[o], spec[o].rows, cols, X, n, Y1[o], spec[o].rows + 1, scratch);
        diff += memcmp(Y[o], Y1[o], sizeof(float) * n * (spec[o].rows + 1)) != 0;
    }
    CHECK(diff == 0, "dsa_matmul_n at %s: %d outputs differ from dsa_matmul", dsa_cpu_name(), diff);
    for (int o = 0; o < NO; o++) free(W[o]), free(Y[o]), free(Y1[o]);
    free(X), free(scratch);
}

static void test_matmul(void) {
    dsa_pool *p1 = dsa_pool_new(1), *p2 = dsa_pool_new(2);
    CHECK(p1 && p2 && dsa_pool_size(p1) == 1 && dsa_pool_size(p2) == 2, "thread pools");
    for (int level = 1; level <= g_max_level; level++) {
        dsa_kernels_init(level);
        for (int k = 0; k < NWTYPES; k++) {
            enum dsa_type t = WTYPES[k];
            int blck = dsa_traits_ref(t)->blck;
            /* rows: two threads' shares and a last panel of 5; cols: SmolLM2's width where the type allows it */
            check_matmul(t, 37, blck == DSA_QK_K ? 512 : 576, p1, p2);
        }
        check_matmul(DSA_Q4_1, 100, 1536, p1, p2);
        /* rows long enough that a panel no longer fits dsa_matmul's stack buffer */
        check_matmul(DSA_Q4_0, 21, 4096, p1, p2);
        check_matmul(DSA_Q6_K, 21, 4096, p1, p2);
        check_matmul_n(p1);
        check_matmul_n(p2);
    }
    dsa_pool_free(p1);
    dsa_pool_free(p2);
}

int main(void) {
    NWTYPES = tu_weight_types(WTYPES);
    for (int l = 2; l <= 3; l++)
        if (level_ok(l)) g_max_level = l;
    printf("SIMD levels tested: generic%s%s\n", g_max_level >= 2 ? " avx2" : "", g_max_level >= 3 ? " avx512" : "");
    test_tiles();
    test_tile_extremes();
    test_far_rows();
    test_matmul();
    dsa_kernels_init(0);
    return tu_finish("test_matmul");
}
