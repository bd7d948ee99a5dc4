/*
 * The indexer's warm-up trainer: forward and backward of one layer's indexer by hand, Adam, and the loop that
 * feeds it a corpus through the frozen model (see train.h).
 *
 * Shapes for one step (m query rows t0..t1-1, keys 0..t1-1, H heads of dim d, rows R = H·d + d + H):
 *   P  = h Wᵀ                      t1 × R     projection (q part used for the m query rows only)
 *   K̃  = Had(RoPE(LN(P_k)))         t1 × d
 *   Q̃_j = Had(RoPE(P_qj))           m × d      per head j
 *   A_j = Q̃_j K̃ᵀ                    m × t1
 *   I   = Σ_j w_j ReLU(A_j)          m × t1     (s <= t only)
 * backward:  dI = softmax(I) - p (per row, / m);  G_j = dI · w_j · [A_j > 0];  dw_j = Σ_s dI ReLU(A_j)
 *            dQ̃_j = G_j K̃;  dK̃ = Σ_j G_jᵀ Q̃_j;  back through Had (its own transpose), RoPE (rotate back), LN;
 *            dW = dPᵀ h.
 * The big products go to BLAS (sgemm); the row-wise parts run on the engine's thread pool.
 */
#include "train.h"
#include "util.h"

#include <cblas.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

struct dsa_train_ws {
    const dsa_indexer *ix;
    dsa_pool *pool;
    int max_len, max_rows;
    float *P, *dP;         /* max_len × R */
    float *K, *dK;         /* max_len × d: K̃ and its gradient */
    float *xhat, *rstd;    /* LayerNorm: normalised input (max_len × d), 1/σ (max_len) */
    float *Q, *dQ;         /* H × max_rows × d */
    float *w, *dw;         /* max_rows × H */
    float *A;              /* H × max_rows × max_len: A_j, then G_j */
    float *lg;             /* max_rows × max_len: logits I, then dI */
    double *row_loss;      /* max_rows */
    int32_t *sel;          /* threads × max_len */
    uint64_t *tk;          /* threads × max_len */
    float *gln_part;       /* threads × 2d */
};

dsa_train_ws *dsa_train_ws_new(const dsa_indexer *ix, int max_len, int max_rows, dsa_pool *pool) {
    openblas_set_num_threads(1);
    dsa_train_ws *ws = calloc(1, sizeof *ws);
    if (!ws) return NULL;
    size_t L = (size_t)max_len, M = (size_t)max_rows, R = (size_t)ix->rows, d = (size_t)ix->hp.head_dim,
           H = (size_t)ix->hp.n_head, nth = (size_t)dsa_pool_size(pool);
    ws->ix = ix;
    ws->pool = pool;
    ws->max_len = max_len;
    ws->max_rows = max_rows;
    ws->P = malloc(L * R * sizeof(float));
    ws->dP = malloc(L * R * sizeof(float));
    ws->K = malloc(L * d * sizeof(float));
    ws->dK = malloc(L * d * sizeof(float));
    ws->xhat = malloc(L * d * sizeof(float));
    ws->rstd = malloc(L * sizeof(float));
    ws->Q = malloc(H * M * d * sizeof(float));
    ws->dQ = malloc(H * M * d * sizeof(float));
    ws->w = malloc(M * H * sizeof(float));
    ws->dw = malloc(M * H * sizeof(float));
    ws->A = malloc(H * M * L * sizeof(float));
    ws->lg = malloc(M * L * sizeof(float));
    ws->row_loss = malloc(M * sizeof(double));
    ws->sel = malloc(nth * L * sizeof(int32_t));
    ws->tk = malloc(nth * L * sizeof(uint64_t));
    ws->gln_part = malloc(nth * 2 * d * sizeof(float));
    if (!ws->P || !ws->dP || !ws->K || !ws->dK || !ws->xhat || !ws->rstd || !ws->Q || !ws->dQ || !ws->w || !ws->dw ||
        !ws->A || !ws->lg || !ws->row_loss || !ws->sel || !ws->tk || !ws->gln_part) {
        dsa_train_ws_free(ws);
        return NULL;
    }
    return ws;
}

void dsa_train_ws_free(dsa_train_ws *ws) {
    if (!ws) return;
    free(ws->P), free(ws->dP), free(ws->K), free(ws->dK), free(ws->xhat), free(ws->rstd), free(ws->Q);
    free(ws->dQ), free(ws->w), free(ws->dw), free(ws->A), free(ws->lg), free(ws->row_loss);
    free(ws->sel), free(ws->tk), free(ws->gln_part);
    free(ws);
}

/* RoPE on NeoX halves of the first rope_dim dims; dir = -1 rotates back (the transpose, for the gradient). */
static void rope_dir(float *x, const dsa_indexer *ix, int pos, int dir) {
    int half = ix->hp.rope_dim / 2;
    for (int i = 0; i < half; i++) {
        double a = (double)pos * ix->rope_freq[i];
        float c = (float)cos(a), s = dir * (float)sin(a);
        float x0 = x[i], x1 = x[i + half];
        x[i] = x0 * c - x1 * s;
        x[i + half] = x0 * s + x1 * c;
    }
}

/* C (M×N, row-major) = alpha·op(A)·op(B) + beta·C, with the M rows split across the engine's pool and BLAS itself
 * single-threaded: two thread pools spinning on two cores cost more than they give. */
typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc;
    float alpha, beta;
    const float *A, *B;
    float *C;
} sgemm_job;

static void sgemm_part(void *arg, int ith, int nth) {
    sgemm_job *j = arg;
    int per = (j->M + nth - 1) / nth, m0 = ith * per, m1 = m0 + per > j->M ? j->M : m0 + per;
    if (m1 <= m0) return;
    /* rows m0..m1 of op(A): A itself when not transposed, else columns m0..m1 of A */
    const float *A = j->ta ? j->A + m0 : j->A + (size_t)m0 * j->lda;
    cblas_sgemm(CblasRowMajor, j->ta ? CblasTrans : CblasNoTrans, j->tb ? CblasTrans : CblasNoTrans, m1 - m0, j->N,
                j->K, j->alpha, A, j->lda, j->B, j->ldb, j->beta, j->C + (size_t)m0 * j->ldc, j->ldc);
}

static void par_sgemm(dsa_pool *pool, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc) {
    sgemm_job j = {ta, tb, M, N, K, lda, ldb, ldc, alpha, beta, A, B, C};
    dsa_pool_run(pool, sgemm_part, &j);
}

typedef struct {
    dsa_train_ws *ws;
    int layer, t0, t1, sparse_k;
    const float *p;
    size_t p_stride;
    float *gln;
} step_job;

/* Keys of positions 0..t1-1 (forward): LN, RoPE, Hadamard; keeps x̂ and 1/σ for the backward pass. */
static void keys_fwd(void *arg, int ith, int nth) {
    step_job *j = arg;
    dsa_train_ws *ws = j->ws;
    const dsa_indexer *ix = ws->ix;
    int H = ix->hp.n_head, d = ix->hp.head_dim, R = ix->rows;
    const float *g = ix->ln + (size_t)j->layer * 2 * d, *b = g + d;
    for (int s = ith; s < j->t1; s += nth) {
        const float *kr = ws->P + (size_t)s * R + H * d;
        double mean = 0, var = 0;
        for (int i = 0; i < d; i++) mean += kr[i];
        mean /= d;
        for (int i = 0; i < d; i++) var += (kr[i] - mean) * (kr[i] - mean);
        float rs = (float)(1.0 / sqrt(var / d + ix->hp.norm_eps));
        float *xh = ws->xhat + (size_t)s * d, *k = ws->K + (size_t)s * d;
        ws->rstd[s] = rs;
        for (int i = 0; i < d; i++) {
            xh[i] = (float)(kr[i] - mean) * rs;
            k[i] = xh[i] * g[i] + b[i];
        }
        if (ix->hp.rope_dim) rope_dir(k, ix, s, 1);
        dsa_hadamard(d, k);
    }
}

/* Queries and weights of the m rows. */
static void queries_fwd(void *arg, int ith, int nth) {
    step_job *j = arg;
    dsa_train_ws *ws = j->ws;
    const dsa_indexer *ix = ws->ix;
    int H = ix->hp.n_head, d = ix->hp.head_dim, R = ix->rows, m = j->t1 - j->t0;
    float c = 1.0f / sqrtf((float)H * d);
    for (int r = ith; r < m; r += nth) {
        const float *pr = ws->P + (size_t)(j->t0 + r) * R;
        for (int h = 0; h < H; h++) {
            float *q = ws->Q + ((size_t)h * m + r) * d;
            memcpy(q, pr + h * d, (size_t)d * sizeof *q);
            if (ix->hp.rope_dim) rope_dir(q, ix, j->t0 + r, 1);
            dsa_hadamard(d, q);
            ws->w[(size_t)r * H + h] = pr[H * d + d + h] * c;
        }
    }
}

/* Per row: logits, loss, dI, dw and G_j (in place of A_j). */
static void rows_part(void *arg, int ith, int nth) {
    step_job *j = arg;
    dsa_train_ws *ws = j->ws;
    const dsa_indexer *ix = ws->ix;
    int H = ix->hp.n_head, m = j->t1 - j->t0, t1 = j->t1;
    int32_t *sel = ws->sel + (size_t)ith * ws->max_len;
    uint64_t *tk = ws->tk + (size_t)ith * ws->max_len;
    float inv_m = 1.0f / m;
    for (int r = ith; r < m; r += nth) {
        int len = j->t0 + r + 1;
        float *lg = ws->lg + (size_t)r * t1;
        const float *w = ws->w + (size_t)r * H;
        const float *p = j->p + (size_t)r * j->p_stride;
        for (int s = 0; s < len; s++) lg[s] = 0;
        for (int h = 0; h < H; h++) {
            const float *a = ws->A + ((size_t)h * m + r) * t1;
            for (int s = 0; s < len; s++) lg[s] += a[s] > 0 ? w[h] * a[s] : 0.0f;
        }
        /* the set the loss runs over: every s <= t, or the top-k of I in the sparse stage */
        int n = len;
        int sparse = j->sparse_k > 0 && len > j->sparse_k;
        if (sparse) n = dsa_topk(len, lg, j->sparse_k, sel, tk);
        double psum = 0;
        for (int i = 0; i < n; i++) psum += p[sparse ? sel[i] : i];
        float *dI = lg; /* overwritten in place: dI for s in the set, 0 elsewhere */
        if (!(psum > 0)) {
            for (int s = 0; s < len; s++) dI[s] = 0;
            ws->row_loss[r] = 0;
        } else {
            double mx = -INFINITY;
            for (int i = 0; i < n; i++) {
                double v = lg[sparse ? sel[i] : i];
                if (v > mx) mx = v;
            }
            double z = 0;
            for (int i = 0; i < n; i++) z += exp(lg[sparse ? sel[i] : i] - mx);
            double lz = mx + log(z), loss = 0;
            /* the softmax and the loss, then dI; the selected indices are ascending, so writing dI in place
             * behind the read position is safe, and positions outside the set are cleared afterwards */
            float *tmp = (float *)tk; /* n floats; the top-k scratch is free again */
            for (int i = 0; i < n; i++) {
                int s = sparse ? sel[i] : i;
                double pt = p[s] / psum, lq = lg[s] - lz;
                if (pt > 0) loss += pt * (log(pt) - lq);
                tmp[i] = (float)((exp(lq) - pt) * inv_m);
            }
            for (int s = 0; s < len; s++) dI[s] = 0;
            for (int i = 0; i < n; i++) dI[sparse ? sel[i] : i] = tmp[i];
            ws->row_loss[r] = loss;
        }
        for (int h = 0; h < H; h++) {
            float *a = ws->A + ((size_t)h * m + r) * t1;
            double dw = 0;
            for (int s = 0; s < len; s++) {
                if (a[s] > 0) {
                    dw += (double)dI[s] * a[s];
                    a[s] = dI[s] * w[h];
                } else {
                    a[s] = 0;
                }
            }
            for (int s = len; s < t1; s++) a[s] = 0;
            ws->dw[(size_t)r * H + h] = (float)dw;
        }
    }
}

/* dP for the query rows: back through Hadamard and RoPE; and the w part. */
static void queries_bwd(void *arg, int ith, int nth) {
    step_job *j = arg;
    dsa_train_ws *ws = j->ws;
    const dsa_indexer *ix = ws->ix;
    int H = ix->hp.n_head, d = ix->hp.head_dim, R = ix->rows, m = j->t1 - j->t0;
    float c = 1.0f / sqrtf((float)H * d);
    for (int r = ith; r < m; r += nth) {
        float *dp = ws->dP + (size_t)(j->t0 + r) * R;
        for (int h = 0; h < H; h++) {
            float *g = dp + h * d;
            memcpy(g, ws->dQ + ((size_t)h * m + r) * d, (size_t)d * sizeof *g);
            dsa_hadamard(d, g);
            if (ix->hp.rope_dim) rope_dir(g, ix, j->t0 + r, -1);
            dp[H * d + d + h] = ws->dw[(size_t)r * H + h] * c;
        }
    }
}

/* dP for the keys: back through Hadamard, RoPE and the LayerNorm (its gain and bias gradients per thread). */
static void keys_bwd(void *arg, int ith, int nth) {
    step_job *j = arg;
    dsa_train_ws *ws = j->ws;
    const dsa_indexer *ix = ws->ix;
    int H = ix->hp.n_head, d = ix->hp.head_dim, R = ix->rows;
    const float *g = ix->ln + (size_t)j->layer * 2 * d;
    float *gp = ws->gln_part + (size_t)ith * 2 * d;
    memset(gp, 0, 2 * (size_t)d * sizeof *gp);
    float v[256];
    for (int s = ith; s < j->t1; s += nth) {
        memcpy(v, ws->dK + (size_t)s * d, (size_t)d * sizeof *v);
        dsa_hadamard(d, v);
        if (ix->hp.rope_dim) rope_dir(v, ix, s, -1);
        const float *xh = ws->xhat + (size_t)s * d;
        double m1 = 0, m2 = 0;
        for (int i = 0; i < d; i++) {
            gp[i] += v[i] * xh[i];
            gp[d + i] += v[i];
            float dx = v[i] * g[i];
            m1 += dx;
            m2 += dx * xh[i];
        }
        m1 /= d, m2 /= d;
        float *dp = ws->dP + (size_t)s * R + H * d;
        for (int i = 0; i < d; i++) dp[i] = (float)((v[i] * g[i] - m1 - xh[i] * m2) * ws->rstd[s]);
    }
}

double dsa_indexer_loss_grad(const dsa_indexer *ix, int layer, const float *h, int t0, int t1, const float *p,
                             size_t p_stride, int sparse_k, float *gW, float *gln, dsa_train_ws *ws) {
    int H = ix->hp.n_head, d = ix->hp.head_dim, R = ix->rows, E = ix->n_embd, m = t1 - t0;
    if (m <= 0 || t1 > ws->max_len || m > ws->max_rows) return NAN;
    const float *W = ix->W + (size_t)layer * R * E;
    step_job j = {ws, layer, t0, t1, sparse_k, p, p_stride, gln};
    /* forward */
    dsa_pool *pl = ws->pool;
    par_sgemm(pl, 0, 1, t1, R, E, 1.0f, h, E, W, E, 0.0f, ws->P, R);
    dsa_pool_run(ws->pool, keys_fwd, &j);
    dsa_pool_run(ws->pool, queries_fwd, &j);
    for (int hh = 0; hh < H; hh++)
        par_sgemm(pl, 0, 1, m, t1, d, 1.0f, ws->Q + (size_t)hh * m * d, d, ws->K, d, 0.0f, ws->A + (size_t)hh * m * t1, t1);
    dsa_pool_run(ws->pool, rows_part, &j);
    /* backward */
    memset(ws->dK, 0, (size_t)t1 * d * sizeof(float));
    for (int hh = 0; hh < H; hh++) {
        const float *G = ws->A + (size_t)hh * m * t1;
        par_sgemm(pl, 0, 0, m, d, t1, 1.0f, G, t1, ws->K, d, 0.0f, ws->dQ + (size_t)hh * m * d, d);
        par_sgemm(pl, 1, 0, t1, d, m, 1.0f, G, t1, ws->Q + (size_t)hh * m * d, d, 1.0f, ws->dK, d);
    }
    memset(ws->dP, 0, (size_t)t1 * R * sizeof(float));
    dsa_pool_run(ws->pool, queries_bwd, &j);
    dsa_pool_run(ws->pool, keys_bwd, &j);
    int nth = dsa_pool_size(ws->pool);
    for (int t = 0; t < nth; t++)
        for (int i = 0; i < 2 * d; i++) gln[i] += ws->gln_part[(size_t)t * 2 * d + i];
    par_sgemm(pl, 1, 0, R, E, t1, 1.0f, ws->dP, R, h, E, 1.0f, gW, E);
    double loss = 0;
    for (int r = 0; r < m; r++) loss += ws->row_loss[r];
    return loss / m;
}

/* ---- targets ------------------------------------------------------------------------------------------------ */

typedef struct {
    dsa_ctx *c;
    int layer, t0, t1;
    const float *q;
    float *p;
    size_t p_stride;
    float *scratch; /* threads × t1 */
} target_job;

static void target_part(void *arg, int ith, int nth) {
    target_job *j = arg;
    const dsa_hparams *hp = dsa_model_hparams(dsa_ctx_model(j->c));
    int D = hp->head_dim, group = hp->n_head / hp->n_head_kv, kvd = dsa_ctx_kv_dim(j->c);
    float scale = 1.0f / sqrtf((float)D), inv_h = 1.0f / hp->n_head;
    const uint16_t *K, *V;
    dsa_ctx_kv(j->c, j->layer, &K, &V);
    float *sc = j->scratch + (size_t)ith * j->t1;
    for (int t = j->t0 + ith; t < j->t1; t += nth) {
        int len = t + 1;
        float *p = j->p + (size_t)(t - j->t0) * j->p_stride;
        memset(p, 0, (size_t)len * sizeof *p);
        for (int h = 0; h < hp->n_head; h++) {
            dsa_attn_scores_f16(len, D, K + (h / group) * D, (size_t)kvd, j->q + (size_t)(t - j->t0) * hp->n_embd + h * D,
                                scale, sc);
            float mx = -INFINITY, sum = 0;
            for (int s = 0; s < len; s++)
                if (sc[s] > mx) mx = sc[s];
            for (int s = 0; s < len; s++) sum += sc[s] = expf(sc[s] - mx);
            float k = inv_h / sum;
            for (int s = 0; s < len; s++) p[s] += sc[s] * k;
        }
    }
}

void dsa_train_target(dsa_ctx *c, int layer, const float *q, int t0, int t1, float *p, size_t p_stride) {
    int nth = dsa_pool_size(dsa_ctx_pool(c));
    float *scratch = malloc((size_t)nth * t1 * sizeof *scratch);
    if (!scratch) {
        for (int t = t0; t < t1; t++) memset(p + (size_t)(t - t0) * p_stride, 0, (size_t)(t + 1) * sizeof *p);
        return;
    }
    target_job j = {c, layer, t0, t1, q, p, p_stride, scratch};
    dsa_pool_run(dsa_ctx_pool(c), target_part, &j);
    free(scratch);
}

/* ---- the corpus: documents in a fixed shuffled order, tokenised as they are reached -------------------------- */

typedef struct {
    char **paths;
    int n, next;
    const dsa_tokenizer *tok;
    dsa_ids cur;
    size_t off;
} corpus;

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void corpus_free(corpus *c) {
    for (int i = 0; i < c->n; i++) free(c->paths[i]);
    free(c->paths);
    dsa_ids_free(&c->cur);
    memset(c, 0, sizeof *c);
}

static int corpus_open(corpus *c, const char *dir, const dsa_tokenizer *tok, uint64_t seed, char *err, size_t errlen) {
    memset(c, 0, sizeof *c);
    c->tok = tok;
    DIR *d = opendir(dir);
    if (!d) return errf(err, errlen, "%s: %s", dir, strerror(errno));
    struct dirent *e;
    int cap = 0;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".txt")) continue;
        if (c->n == cap) {
            cap = cap ? 2 * cap : 256;
            char **np = realloc(c->paths, (size_t)cap * sizeof *np);
            if (!np) break;
            c->paths = np;
        }
        size_t len = strlen(dir) + n + 2;
        if (!(c->paths[c->n] = malloc(len))) break;
        snprintf(c->paths[c->n++], len, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    if (!c->n) {
        corpus_free(c);
        return errf(err, errlen, "%s: no .txt documents (build the corpus with scripts/make-corpus.sh)", dir);
    }
    qsort(c->paths, (size_t)c->n, sizeof *c->paths, cmp_str);
    uint64_t s = seed;
    for (int i = c->n - 1; i > 0; i--) {
        int j = (int)(dsa_splitmix(&s) % (uint64_t)(i + 1));
        char *t = c->paths[i];
        c->paths[i] = c->paths[j];
        c->paths[j] = t;
    }
    return 0;
}

/* Load the next document's tokens (wrapping around the list); each document ends with the end-of-text token. */
static int corpus_next_doc(corpus *c, char *err, size_t errlen) {
    for (int tries = 0; tries < c->n; tries++) {
        const char *path = c->paths[c->next];
        c->next = (c->next + 1) % c->n;
        FILE *f = fopen(path, "rb");
        if (!f) return errf(err, errlen, "%s: %s", path, strerror(errno));
        struct stat st;
        char *buf = NULL;
        size_t len = 0;
        if (fstat(fileno(f), &st) == 0 && st.st_size > 0 && (buf = malloc((size_t)st.st_size)))
            len = fread(buf, 1, (size_t)st.st_size, f);
        fclose(f);
        c->cur.n = 0;
        c->off = 0;
        int rc = buf ? dsa_tok_encode(c->tok, buf, len, 1, &c->cur) : 0;
        free(buf);
        if (rc) return errf(err, errlen, "%s: cannot tokenise", path);
        if (c->cur.n == 0) continue;
        if (dsa_ids_push(&c->cur, dsa_tok_eos(c->tok))) return errf(err, errlen, "out of memory");
        return 0;
    }
    return errf(err, errlen, "the corpus has no text");
}

static int corpus_fill(corpus *c, int32_t *ids, int n, char *err, size_t errlen) {
    for (int i = 0; i < n;) {
        if (c->off >= c->cur.n && corpus_next_doc(c, err, errlen)) return -1;
        size_t take = c->cur.n - c->off;
        if (take > (size_t)(n - i)) take = (size_t)(n - i);
        memcpy(ids + i, c->cur.ids + c->off, take * sizeof *ids);
        c->off += take;
        i += (int)take;
    }
    return 0;
}

/* ---- the run ------------------------------------------------------------------------------------------------- */

typedef struct {
    int n_layer, L, E;
    dsa_ctx *c;
    float *h; /* [layer][L][E] the attention-normed inputs */
    float *p; /* [layer][L][L] the targets: the forward pass's own attention probabilities, mean over heads */
} capture;

static void capture_hook(void *ud, int layer, int pos0, int n, const float *h, const float *q) {
    (void)q;
    capture *cp = ud;
    memcpy(cp->h + ((size_t)layer * cp->L + pos0) * cp->E, h, (size_t)n * cp->E * sizeof(float));
    const float *pr = dsa_ctx_batch_probs(cp->c);
    for (int r = 0; r < n; r++)
        memcpy(cp->p + ((size_t)layer * cp->L + pos0 + r) * cp->L, pr + (size_t)r * dsa_ctx_n_ctx(cp->c),
               (size_t)(pos0 + r + 1) * sizeof(float));
}

typedef struct {
    float *mW, *vW, *mln, *vln; /* Adam moments, same layout as the indexer */
    long step;                  /* sequences trained on; the Adam step count is derived from it */
    long seq, tokens;
    double elapsed;
} adam_state;

static void adam_update(float *x, float *g, float *mo, float *ve, size_t n, float lr, long t) {
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    float c1 = 1.0f - powf(b1, (float)t), c2 = 1.0f - powf(b2, (float)t);
    for (size_t i = 0; i < n; i++) {
        mo[i] = b1 * mo[i] + (1 - b1) * g[i];
        ve[i] = b2 * ve[i] + (1 - b2) * g[i] * g[i];
        x[i] -= lr * (mo[i] / c1) / (sqrtf(ve[i] / c2) + eps);
    }
}

static int save_checkpoint(const char *path, const dsa_indexer *ix, const adam_state *st, char *err, size_t errlen) {
    gguf_writer *w = gguf_writer_new();
    if (!w) return errf(err, errlen, "out of memory");
    size_t nW = (size_t)ix->rows * ix->n_embd, nl = 2 * (size_t)ix->hp.head_dim;
    int bad = gguf_w_str(w, "general.architecture", "dsa-indexer-checkpoint") ||
              gguf_w_u32(w, "ckpt.head_count", (uint32_t)ix->hp.n_head) ||
              gguf_w_u32(w, "ckpt.key_length", (uint32_t)ix->hp.head_dim) ||
              gguf_w_u32(w, "ckpt.rope_dim", (uint32_t)ix->hp.rope_dim) ||
              gguf_w_str(w, "ckpt.base_fingerprint", ix->base_fingerprint) ||
              gguf_w_u64(w, "ckpt.step", (uint64_t)st->step) || gguf_w_u64(w, "ckpt.seq", (uint64_t)st->seq) ||
              gguf_w_u64(w, "ckpt.tokens", (uint64_t)st->tokens) ||
              gguf_w_u64(w, "ckpt.elapsed_ms", (uint64_t)(st->elapsed * 1000));
    struct {
        const char *name;
        const float *p;
        size_t n;
    } t[] = {{"W", ix->W, nW}, {"ln", ix->ln, nl}, {"mW", st->mW, nW}, {"vW", st->vW, nW}, {"mln", st->mln, nl},
             {"vln", st->vln, nl}};
    for (size_t i = 0; i < sizeof t / sizeof *t && !bad; i++) {
        int64_t ne[2] = {(int64_t)t[i].n, ix->n_layer};
        bad = gguf_w_tensor(w, t[i].name, DSA_F32, 2, ne, t[i].p, t[i].n * ix->n_layer * sizeof(float));
    }
    int rc = bad ? errf(err, errlen, "out of memory") : gguf_writer_save(w, path, err, errlen);
    gguf_writer_free(w);
    return rc;
}

static int load_checkpoint(const char *path, dsa_indexer *ix, adam_state *st, char *err, size_t errlen) {
    gguf_file *g;
    if (gguf_open(path, &g, err, errlen)) return -1;
    uint32_t H = 0, d = 0, rd = 0;
    int64_t step = 0, seq = 0, tokens = 0, ms = 0;
    dsa_str fp;
    int rc = 0;
    if (gguf_get_u32(g, "ckpt.head_count", &H) || gguf_get_u32(g, "ckpt.key_length", &d) ||
        gguf_get_u32(g, "ckpt.rope_dim", &rd) || gguf_get_str(g, "ckpt.base_fingerprint", &fp) ||
        gguf_get_i64(g, "ckpt.step", &step) || gguf_get_i64(g, "ckpt.seq", &seq) ||
        gguf_get_i64(g, "ckpt.tokens", &tokens) || gguf_get_i64(g, "ckpt.elapsed_ms", &ms))
        rc = errf(err, errlen, "%s: not a trainer checkpoint", path);
    else if ((int)H != ix->hp.n_head || (int)d != ix->hp.head_dim || (int)rd != ix->hp.rope_dim)
        rc = errf(err, errlen, "%s: made with --heads %u --dim %u --rope-dims %u; pass the same to resume", path, H, d, rd);
    else if (!dsa_str_eq(fp, ix->base_fingerprint))
        rc = errf(err, errlen, "%s: made for another base model", path);
    size_t nW = (size_t)ix->rows * ix->n_embd, nl = 2 * (size_t)ix->hp.head_dim;
    struct {
        const char *name;
        float *p;
        size_t n;
    } t[] = {{"W", ix->W, nW}, {"ln", ix->ln, nl}, {"mW", st->mW, nW}, {"vW", st->vW, nW}, {"mln", st->mln, nl},
             {"vln", st->vln, nl}};
    for (size_t i = 0; i < sizeof t / sizeof *t && !rc; i++) {
        const gguf_tensor *gt = gguf_find_tensor(g, t[i].name);
        if (!gt || gt->type != DSA_F32 || gt->ne[0] != (int64_t)t[i].n || gt->ne[1] != ix->n_layer)
            rc = errf(err, errlen, "%s: tensor %s is missing or has the wrong shape", path, t[i].name);
        else memcpy(t[i].p, gt->data, t[i].n * ix->n_layer * sizeof(float));
    }
    if (!rc) {
        st->step = step, st->seq = seq, st->tokens = tokens, st->elapsed = ms / 1000.0;
    }
    gguf_close(g);
    return rc;
}

static void free4(void *a, void *b, void *c, void *d) {
    free(a), free(b), free(c), free(d);
}

int dsa_train_indexer(dsa_model *m, const dsa_train_opts *o, void (*report)(const dsa_train_report *, void *),
                      void *ud, char *err, size_t errlen) {
    const dsa_hparams *mh = dsa_model_hparams(m);
    int L = o->seq_len, rows = o->rows_per_step > 0 ? o->rows_per_step : L, E = mh->n_embd, NL = mh->n_layer;
    if (L < 16 || L > (1 << 16)) return errf(err, errlen, "sequence length %d out of range (16..65536)", L);
    if (rows > L) rows = L;
    dsa_indexer *ix = NULL;
    if (o->init) {
        if (dsa_indexer_load(o->init, m, &ix, err, errlen)) return -1;
    } else if (dsa_indexer_new(&o->hp, m, o->seed, &ix, err, errlen)) {
        return -1;
    }
    dsa_ctx *c = NULL;
    dsa_train_ws *ws = NULL;
    corpus cor = {0}, held = {0};
    capture cp = {NL, L, E, NULL, NULL, NULL};
    adam_state st = {0};
    float *gW = NULL, *gln = NULL;
    int32_t *ids = NULL, *hids = NULL;
    double *layer_loss = NULL;
    int rc = -1;
    char e[512];
    size_t nW = (size_t)ix->rows * E, nl = 2 * (size_t)ix->hp.head_dim;
    if (dsa_ctx_new(m, L, o->n_threads, &c, err, errlen)) goto done;
    ws = dsa_train_ws_new(ix, L, rows, dsa_ctx_pool(c));
    cp.h = malloc((size_t)NL * L * E * sizeof(float));
    cp.p = malloc((size_t)NL * L * L * sizeof(float));
    gW = malloc(nW * sizeof(float));
    gln = malloc(nl * sizeof(float));
    ids = malloc((size_t)L * sizeof *ids);
    hids = malloc((size_t)L * sizeof *hids);
    layer_loss = calloc((size_t)NL, sizeof *layer_loss);
    st.mW = calloc(nW * NL, sizeof(float));
    st.vW = calloc(nW * NL, sizeof(float));
    st.mln = calloc(nl * NL, sizeof(float));
    st.vln = calloc(nl * NL, sizeof(float));
    if (!ws || !cp.h || !cp.p || !gW || !gln || !ids || !hids || !layer_loss || !st.mW || !st.vW || !st.mln ||
        !st.vln) {
        errf(err, errlen, "out of memory for training sequences of %d tokens", L);
        goto done;
    }
    if (o->checkpoint) {
        struct stat sb;
        if (stat(o->checkpoint, &sb) == 0 && load_checkpoint(o->checkpoint, ix, &st, err, errlen)) goto done;
    }
    if (corpus_open(&cor, o->corpus, dsa_model_tok(m), o->seed, err, errlen)) goto done;
    /* resuming: replay the stream up to where the checkpoint stopped */
    for (long s = 0; s < st.seq; s++)
        if (corpus_fill(&cor, ids, L, err, errlen)) goto done;
    int have_held = 0;
    if (o->heldout) {
        if (corpus_open(&held, o->heldout, dsa_model_tok(m), 1, err, errlen)) goto done;
        if (corpus_fill(&held, hids, L, err, errlen)) goto done;
        have_held = 1;
    }
    cp.c = c;
    if (dsa_ctx_capture_probs(c, 1)) {
        errf(err, errlen, "out of memory");
        goto done;
    }
    dsa_ctx_set_layer_hook(c, capture_hook, &cp);
    double t_start = dsa_now() - st.elapsed;
    long total = o->max_tokens;
    for (;;) {
        int last = (o->max_tokens > 0 && st.tokens + L > o->max_tokens) ||
                   (o->max_seconds > 0 && dsa_now() - t_start >= o->max_seconds);
        if (last) break;
        if (corpus_fill(&cor, ids, L, err, errlen)) goto done;
        dsa_ctx_truncate(c, 0);
        if (dsa_ctx_eval(c, ids, L, NULL, 0, NULL, NULL, e, sizeof e)) {
            errf(err, errlen, "forward pass: %s", e);
            goto done;
        }
        st.step++;
        double sum = 0;
        for (int l = 0; l < NL; l++) {
            double ll = 0;
            int steps = 0;
            const float *hl = cp.h + (size_t)l * L * E, *pl = cp.p + (size_t)l * L * L;
            /* the first query rows see only a handful of keys: the chunks start at the end so each one is a
             * full step, and one Adam step per chunk (per layer, all chunks taken in the same order) */
            for (int t1 = L; t1 > 0; t1 -= rows) {
                int t0 = t1 - rows < 0 ? 0 : t1 - rows;
                memset(gW, 0, nW * sizeof *gW);
                memset(gln, 0, nl * sizeof *gln);
                ll += dsa_indexer_loss_grad(ix, l, hl, t0, t1, pl + (size_t)t0 * L, (size_t)L, o->sparse_k, gW, gln, ws) *
                      (t1 - t0);
                steps += t1 - t0;
                long t = (st.step - 1) * ((L + rows - 1) / rows) + (L - t1) / rows + 1;
                adam_update(ix->W + (size_t)l * nW, gW, st.mW + (size_t)l * nW, st.vW + (size_t)l * nW, nW, o->lr, t);
                adam_update(ix->ln + (size_t)l * nl, gln, st.mln + (size_t)l * nl, st.vln + (size_t)l * nl, nl, o->lr, t);
            }
            layer_loss[l] = ll / steps;
            sum += layer_loss[l];
        }
        st.seq++;
        st.tokens += L;
        st.elapsed = dsa_now() - t_start;
        double hl_loss = -1;
        int done_now = (o->max_tokens > 0 && st.tokens + L > o->max_tokens) ||
                       (o->max_seconds > 0 && st.elapsed >= o->max_seconds);
        if (have_held && ((o->heldout_every > 0 && st.seq % o->heldout_every == 0) || done_now)) {
            /* held-out KL: the same loss on a sequence no step ever trains on (gradients go to scratch) */
            dsa_ctx_truncate(c, 0);
            if (dsa_ctx_eval(c, hids, L, NULL, 0, NULL, NULL, e, sizeof e)) {
                errf(err, errlen, "forward pass: %s", e);
                goto done;
            }
            double hs = 0;
            for (int l = 0; l < NL; l++) {
                int t0 = L - rows;
                hs += dsa_indexer_loss_grad(ix, l, cp.h + (size_t)l * L * E, t0, L, cp.p + ((size_t)l * L + t0) * L,
                                            (size_t)L, o->sparse_k, gW, gln, ws);
            }
            hl_loss = hs / NL;
            st.elapsed = dsa_now() - t_start;
        }
        if (o->checkpoint && ((o->checkpoint_every > 0 && st.seq % o->checkpoint_every == 0) || done_now))
            if (save_checkpoint(o->checkpoint, ix, &st, err, errlen)) goto done;
        if (report) {
            dsa_train_report r = {st.seq, st.tokens, total, st.elapsed, sum / NL, hl_loss, layer_loss, NL, done_now};
            report(&r, ud);
        }
        if (done_now) break;
    }
    {
        char prov[2048];
        time_t now = time(NULL);
        struct tm tmv;
        gmtime_r(&now, &tmv);
        char date[32];
        strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &tmv);
        double last = 0;
        for (int l = 0; l < NL; l++) last += layer_loss[l];
        snprintf(prov, sizeof prov,
                 "dense warm-up%s (DeepSeek-V3.2-Exp eq. %d); %ld sequences of %d tokens (%ld tokens) from %s; "
                 "Adam lr %g, %d query rows per step; final training KL %.4f; %.0f s; %s; command: %s",
                 o->sparse_k ? " then sparse stage" : "", o->sparse_k ? 4 : 3, st.seq, L, st.tokens, o->corpus,
                 (double)o->lr, rows, last / NL, st.elapsed, date, o->command ? o->command : "?");
        free(ix->provenance);
        ix->provenance = strdup(prov);
    }
    if (dsa_indexer_save(ix, o->out, 0, err, errlen)) goto done;
    rc = 0;
done:
    corpus_free(&cor);
    corpus_free(&held);
    dsa_train_ws_free(ws);
    dsa_ctx_free(c);
    free4(cp.h, cp.p, gW, gln);
    free4(ids, hids, layer_loss, NULL);
    free4(st.mW, st.vW, st.mln, st.vln);
    dsa_indexer_free(ix);
    return rc;
}
