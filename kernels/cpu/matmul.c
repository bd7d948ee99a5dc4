/*
 * Matrix multiply for weights in any supported type: Y[j][i] = W[i]·X[j].
 *
 * Activations are first quantised to the weight type's activation type (Q8_1 or Q8_K, as llama.cpp does), so
 * the inner loop is an integer dot product.  Several weight matrices that read the same input (Q, K and V;
 * gate and up) go in one call: the input is quantised once and one dispatch splits the rows of all of them, which
 * halves the thread hand-offs of a decode step.
 *
 * Types with tile kernels (traits mm_pack / mm_tile, mm_tile.c) take the tile path: a thread packs a few weight
 * rows into a panel (each block unpacked once, into L1) and runs every activation row past it; the others call
 * vec_dot per pair of rows, walking the rows in tiles so a tile of W stays in L1 while the activation rows stream
 * past it.  Either way each output is computed by one thread in a fixed order, so Y does not depend on the number
 * of threads, and with tiles not on the number of rows either (mm_tile.c) from mm_min_rows rows up.
 */
#include "kernels.h"

#include <stdlib.h>
#include <string.h>

#define ROW_TILE 16 /* threads split the rows in multiples of this (a multiple of every mm_nr) */
#define MAX_OUTS 4
#define PANEL_STACK (32 * 1024) /* panels up to this size (SmolLM2: 31 KB) live on the stack, larger on the heap */

/* The block sums that q8_1 tiles need sit after the quantised rows (their rows are a multiple of 8 bytes). */
static size_t sums_size(enum dsa_type act, int64_t cols, int n) {
    return act == DSA_Q8_1 ? (size_t)n * (size_t)(cols / DSA_QK) * sizeof(int32_t) : 0;
}

size_t dsa_matmul_scratch(enum dsa_type wt, int64_t cols, int n) {
    const dsa_type_traits *tr = dsa_traits(wt);
    if (!tr) return 0;
    return (size_t)n * dsa_row_size(tr->act, cols) + sums_size(tr->act, cols, n) + 64;
}

typedef struct {
    const dsa_mm_out *outs;
    int n_outs;
    int64_t tiles[MAX_OUTS + 1]; /* prefix sums of row tiles */
    const dsa_type_traits *at;
    int64_t cols;
    const float *X;
    int n;
    const char *A;
    size_t arow;
    int32_t *S;                        /* q8_1 block sums for the tiles, or NULL */
    const dsa_type_traits *tr[MAX_OUTS]; /* looked up once: both phases see the same SIMD level */
    int use_tiles[MAX_OUTS];
} mm_job;

static void quantise_part(void *arg, int ith, int nth) {
    mm_job *j = arg;
    for (int r = ith; r < j->n; r += nth) {
        char *a = (char *)j->A + r * j->arow;
        j->at->from_float(j->X + (size_t)r * j->cols, a, j->cols);
        if (j->S) dsa_q8_1_sums(a, j->cols, j->S + (size_t)r * (size_t)(j->cols / DSA_QK));
    }
}

/* Rows [r0, r1) of one output through the tile kernels. */
static void tile_rows(const mm_job *j, const dsa_mm_out *out, const dsa_type_traits *tr, int64_t r0, int64_t r1,
                      void *panel) {
    size_t wrow = dsa_row_size(out->type, j->cols);
    for (int64_t i0 = r0; i0 < r1; i0 += tr->mm_nr) {
        int rows = r1 - i0 < tr->mm_nr ? (int)(r1 - i0) : tr->mm_nr;
        if (j->n == 1 && tr->mm_gemv && rows == tr->mm_nr) { /* decode: pack and tile fused, the same bits */
            tr->mm_gemv((int)j->cols, (const char *)out->W + i0 * wrow, wrow, j->A, j->S, out->Y + i0);
            continue;
        }
        tr->mm_pack((int)j->cols, (const char *)out->W + i0 * wrow, wrow, rows, panel);
        tr->mm_tile((int)j->cols, panel, j->A, j->arow, j->S, j->n, out->Y + i0, (size_t)out->ldy, rows);
    }
}

static void dot_part(void *arg, int ith, int nth) {
    mm_job *j = arg;
    int64_t total = j->tiles[j->n_outs];
    int64_t t0 = total * ith / nth, t1 = total * (ith + 1) / nth;
    int ncols = (int)j->cols;
    _Alignas(64) unsigned char stack_panel[PANEL_STACK];
    void *heap_panel = NULL;
    size_t heap_size = 0;
    for (int o = 0; o < j->n_outs; o++) {
        int64_t a = t0 > j->tiles[o] ? t0 : j->tiles[o], b = t1 < j->tiles[o + 1] ? t1 : j->tiles[o + 1];
        if (a >= b) continue;
        const dsa_mm_out *out = &j->outs[o];
        const dsa_type_traits *tr = j->tr[o];
        size_t wrow = dsa_row_size(out->type, j->cols);
        int64_t r0 = (a - j->tiles[o]) * ROW_TILE, r1 = (b - j->tiles[o]) * ROW_TILE;
        if (r1 > out->rows) r1 = out->rows;
        if (j->use_tiles[o]) {
            size_t psize = (size_t)(j->cols / tr->blck) * tr->mm_panel_blk;
            void *panel = stack_panel;
            if (psize > sizeof stack_panel && psize > heap_size) {
                free(heap_panel);
                heap_size = (psize + 63) / 64 * 64;
                heap_panel = aligned_alloc(64, heap_size);
                if (!heap_panel) heap_size = 0;
            }
            if (psize > sizeof stack_panel) panel = heap_panel;
            if (panel) {
                tile_rows(j, out, tr, r0, r1, panel);
                continue;
            }
            /* out of memory for a panel: vec_dot below still gives Y, within the same bounds though not the
             * same bits */
        }
        for (int64_t i0 = r0; i0 < r1; i0 += ROW_TILE) {
            int64_t i1 = i0 + ROW_TILE < r1 ? i0 + ROW_TILE : r1;
            for (int c = 0; c < j->n; c++) {
                const char *x = j->A + c * j->arow;
                float *y = out->Y + (size_t)c * out->ldy;
                for (int64_t i = i0; i < i1; i++) y[i] = tr->vec_dot(ncols, (const char *)out->W + i * wrow, x);
            }
        }
    }
    free(heap_panel);
}

void dsa_matmul_n(dsa_pool *p, const dsa_mm_out *outs, int n_outs, int64_t cols, const float *X, int n,
                  void *scratch) {
    /* outputs whose weights want different activation types cannot share the quantised input */
    if (n_outs > MAX_OUTS) {
        dsa_matmul_n(p, outs, MAX_OUTS, cols, X, n, scratch);
        dsa_matmul_n(p, outs + MAX_OUTS, n_outs - MAX_OUTS, cols, X, n, scratch);
        return;
    }
    for (int o = 1; o < n_outs; o++)
        if (dsa_traits(outs[o].type)->act != dsa_traits(outs[0].type)->act) {
            dsa_matmul_n(p, outs, o, cols, X, n, scratch);
            dsa_matmul_n(p, outs + o, n_outs - o, cols, X, n, scratch);
            return;
        }
    mm_job j;
    memset(&j, 0, sizeof j);
    j.outs = outs;
    j.n_outs = n_outs;
    int any_tiles = 0;
    for (int o = 0; o < n_outs; o++) {
        j.tr[o] = dsa_traits(outs[o].type);
        j.use_tiles[o] = j.tr[o]->mm_tile != NULL && n >= j.tr[o]->mm_min_rows;
        any_tiles |= j.use_tiles[o];
    }
    for (int o = 0; o < n_outs; o++) j.tiles[o + 1] = j.tiles[o] + (outs[o].rows + ROW_TILE - 1) / ROW_TILE;
    enum dsa_type act = j.tr[0]->act;
    j.at = dsa_traits(act);
    j.cols = cols;
    j.X = X;
    j.n = n;
    if (act == DSA_F32) {
        j.A = (const char *)X; /* float weights take float activations as they are */
        j.arow = (size_t)cols * sizeof(float);
    } else {
        j.A = scratch;
        j.arow = dsa_row_size(act, cols);
        if (act == DSA_Q8_1 && any_tiles) j.S = (int32_t *)((char *)scratch + (size_t)n * j.arow);
        if (n == 1)
            quantise_part(&j, 0, 1);
        else
            dsa_pool_run(p, quantise_part, &j);
    }
    dsa_pool_run(p, dot_part, &j);
}

void dsa_matmul(dsa_pool *p, enum dsa_type wt, const void *W, int64_t rows, int64_t cols, const float *X, int n,
                float *Y, int64_t ldy, void *scratch) {
    dsa_mm_out o = {wt, W, rows, Y, ldy};
    dsa_matmul_n(p, &o, 1, cols, X, n, scratch);
}
