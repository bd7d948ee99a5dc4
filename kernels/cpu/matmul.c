/*
 * Matrix multiply for weights in any supported type: Y[j][i] = W[i]·X[j].
 *
 * Activations are first quantised to the weight type's activation type (Q8_1 or Q8_K, as llama.cpp does), so
 * the inner loop is an integer dot product.  Several weight matrices that read the same input (Q, K and V;
 * gate and up) go in one call: the input is quantised once and one dispatch splits the rows of all of them, which
 * halves the thread hand-offs of a decode step.  Within a thread, rows are walked in tiles so a tile of W stays
 * in L1 while every activation row streams past it.
 */
#include "kernels.h"

#include <string.h>

#define ROW_TILE 16
#define MAX_OUTS 4

size_t dsa_matmul_scratch(enum dsa_type wt, int64_t cols, int n) {
    const dsa_type_traits *tr = dsa_traits(wt);
    if (!tr) return 0;
    return (size_t)n * dsa_row_size(tr->act, cols) + 64;
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
} mm_job;

static void quantise_part(void *arg, int ith, int nth) {
    mm_job *j = arg;
    for (int r = ith; r < j->n; r += nth)
        j->at->from_float(j->X + (size_t)r * j->cols, (char *)j->A + r * j->arow, j->cols);
}

static void dot_part(void *arg, int ith, int nth) {
    mm_job *j = arg;
    int64_t total = j->tiles[j->n_outs];
    int64_t t0 = total * ith / nth, t1 = total * (ith + 1) / nth;
    int ncols = (int)j->cols;
    for (int o = 0; o < j->n_outs; o++) {
        int64_t a = t0 > j->tiles[o] ? t0 : j->tiles[o], b = t1 < j->tiles[o + 1] ? t1 : j->tiles[o + 1];
        if (a >= b) continue;
        const dsa_mm_out *out = &j->outs[o];
        const dsa_type_traits *tr = dsa_traits(out->type);
        size_t wrow = dsa_row_size(out->type, j->cols);
        int64_t r0 = (a - j->tiles[o]) * ROW_TILE, r1 = (b - j->tiles[o]) * ROW_TILE;
        if (r1 > out->rows) r1 = out->rows;
        for (int64_t i0 = r0; i0 < r1; i0 += ROW_TILE) {
            int64_t i1 = i0 + ROW_TILE < r1 ? i0 + ROW_TILE : r1;
            for (int c = 0; c < j->n; c++) {
                const char *x = j->A + c * j->arow;
                float *y = out->Y + (size_t)c * out->ldy;
                for (int64_t i = i0; i < i1; i++) y[i] = tr->vec_dot(ncols, (const char *)out->W + i * wrow, x);
            }
        }
    }
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
    for (int o = 0; o < n_outs; o++) j.tiles[o + 1] = j.tiles[o] + (outs[o].rows + ROW_TILE - 1) / ROW_TILE;
    enum dsa_type act = dsa_traits(outs[0].type)->act;
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
