/*
 * Matrix multiply for weights in any supported type: Y[j][i] = W[i]·X[j].
 *
 * Activations are first quantised to the weight type's activation type (Q8_1 or Q8_K, as llama.cpp does), so
 * the inner loop is an integer dot product.  Threads split the weight rows; within a thread, rows are walked in
 * tiles so a tile of W stays in L1 while every activation row streams past it.
 */
#include "kernels.h"

#include <string.h>

#define ROW_TILE 16

size_t dsa_matmul_scratch(enum dsa_type wt, int64_t cols, int n) {
    const dsa_type_traits *tr = dsa_traits(wt);
    if (!tr) return 0;
    return (size_t)n * dsa_row_size(tr->act, cols) + 64;
}

typedef struct {
    const dsa_type_traits *tr, *at;
    const char *W;
    int64_t rows, cols;
    const float *X;
    int n;
    float *Y;
    int64_t ldy;
    char *A;
    size_t wrow, arow;
} mm_job;

static void quantise_part(void *arg, int ith, int nth) {
    mm_job *j = arg;
    for (int r = ith; r < j->n; r += nth) j->at->from_float(j->X + (size_t)r * j->cols, j->A + r * j->arow, j->cols);
}

static void dot_part(void *arg, int ith, int nth) {
    mm_job *j = arg;
    /* split rows in tile-aligned chunks so neighbouring threads do not share cache lines of Y */
    int64_t tiles = (j->rows + ROW_TILE - 1) / ROW_TILE;
    int64_t t0 = tiles * ith / nth, t1 = tiles * (ith + 1) / nth;
    int64_t r0 = t0 * ROW_TILE, r1 = t1 * ROW_TILE < j->rows ? t1 * ROW_TILE : j->rows;
    int ncols = (int)j->cols;
    for (int64_t i0 = r0; i0 < r1; i0 += ROW_TILE) {
        int64_t i1 = i0 + ROW_TILE < r1 ? i0 + ROW_TILE : r1;
        for (int c = 0; c < j->n; c++) {
            const char *a = j->A + c * j->arow;
            float *y = j->Y + (size_t)c * j->ldy;
            for (int64_t i = i0; i < i1; i++) y[i] = j->tr->vec_dot(ncols, j->W + i * j->wrow, a);
        }
    }
}

void dsa_matmul(dsa_pool *p, enum dsa_type wt, const void *W, int64_t rows, int64_t cols, const float *X, int n,
                float *Y, int64_t ldy, void *scratch) {
    mm_job j;
    j.tr = dsa_traits(wt);
    j.at = dsa_traits(j.tr->act);
    j.W = W;
    j.rows = rows;
    j.cols = cols;
    j.X = X;
    j.n = n;
    j.Y = Y;
    j.ldy = ldy;
    j.wrow = dsa_row_size(wt, cols);
    j.arow = dsa_row_size(j.tr->act, cols);
    if (j.tr->act == DSA_F32) {
        j.A = (char *)X; /* float weights take float activations as they are */
        j.arow = (size_t)cols * sizeof(float);
    } else {
        j.A = scratch;
        if (n == 1)
            quantise_part(&j, 0, 1);
        else
            dsa_pool_run(p, quantise_part, &j);
    }
    dsa_pool_run(p, dot_part, &j);
}
