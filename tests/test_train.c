/*
 * The lightning indexer's math: the engine's per-token projection and index scores against a float64
 * re-implementation of the formula; the trainer's gradients against finite differences (dense warm-up and sparse
 * stage); Adam on a teacher's targets lowers the loss; a sidecar survives a save/load round trip.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dsa.h"
#include "testutil.h"
#include "train.h"

static uint64_t rng = 7;
static double urand(void) { return (double)(tu_splitmix(&rng) >> 11) * 0x1p-53; }
static float frand(void) { return (float)(urand() * 2 - 1); }

/* ---- float64 reference of the indexer's forward ------------------------------------------------------------ */

static void had64(int n, double *x) {
    for (int h = 1; h < n; h <<= 1)
        for (int i = 0; i < n; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                double a = x[j], b = x[j + h];
                x[j] = a + b, x[j + h] = a - b;
            }
    for (int i = 0; i < n; i++) x[i] /= sqrt((double)n);
}

static void rope64(double *x, int rd, double base, int pos) {
    for (int i = 0; i < rd / 2; i++) {
        double th = pos * pow(base, -2.0 * i / rd), c = cos(th), s = sin(th);
        double a = x[i], b = x[i + rd / 2];
        x[i] = a * c - b * s, x[i + rd / 2] = a * s + b * c;
    }
}

/* q (H·d), k (d), w (H) of one token, all float64 */
static void ref_project(const dsa_indexer *ix, int l, const float *h, int pos, double *q, double *k, double *w) {
    int H = ix->hp.n_head, d = ix->hp.head_dim, E = ix->n_embd, R = ix->rows;
    const float *W = ix->W + (size_t)l * R * E;
    double p[1024];
    for (int r = 0; r < R; r++) {
        double s = 0;
        for (int e = 0; e < E; e++) s += (double)W[(size_t)r * E + e] * h[e];
        p[r] = s;
    }
    double mean = 0, var = 0;
    for (int i = 0; i < d; i++) mean += p[H * d + i];
    mean /= d;
    for (int i = 0; i < d; i++) var += (p[H * d + i] - mean) * (p[H * d + i] - mean);
    var /= d;
    const float *g = ix->ln + (size_t)l * 2 * d;
    for (int i = 0; i < d; i++) k[i] = (p[H * d + i] - mean) / sqrt(var + ix->hp.norm_eps) * g[i] + g[d + i];
    rope64(k, ix->hp.rope_dim, ix->hp.rope_base, pos);
    had64(d, k);
    for (int j = 0; j < H; j++) {
        for (int i = 0; i < d; i++) q[j * d + i] = p[j * d + i];
        rope64(q + j * d, ix->hp.rope_dim, ix->hp.rope_base, pos);
        had64(d, q + j * d);
        w[j] = p[H * d + d + j] / sqrt((double)H * d);
    }
}

static void test_forward_vs_ref(void) {
    dsa_indexer_hp hp = {4, 32, 16, 10000.0f, 8, 1e-6f, 0};
    dsa_indexer *ix;
    char err[256];
    int E = 96, n = 300, l = 1;
    CHECK(dsa_indexer_alloc(&hp, 2, E, 3, &ix, err, sizeof err) == 0, "%s", err);
    for (int i = 0; i < 2 * 2 * hp.head_dim; i++) ix->ln[i] = 1.0f + 0.3f * frand(); /* gain and bias not trivial */
    float *h = malloc((size_t)n * E * sizeof *h), *P = malloc((size_t)ix->rows * sizeof *P);
    uint8_t *k8 = malloc((size_t)n * hp.head_dim);
    float *ks = malloc((size_t)n * sizeof *ks), *out = malloc((size_t)n * sizeof *out);
    float q[128], k[32], w[4];
    double rq[128], rk[32], rw[4];
    double (*refk)[32] = malloc((size_t)n * sizeof *refk);
    for (int i = 0; i < n * E; i++) h[i] = frand() * 2;
    double max_qerr = 0;
    for (int t = 0; t < n; t++) {
        for (int r = 0; r < ix->rows; r++) {
            double s = 0;
            for (int e = 0; e < E; e++) s += (double)ix->W[((size_t)l * ix->rows + r) * E + e] * h[(size_t)t * E + e];
            P[r] = (float)s;
        }
        dsa_indexer_project(ix, l, P, t, q, k, w);
        ref_project(ix, l, h + (size_t)t * E, t, rq, rk, rw);
        for (int i = 0; i < 128; i++) max_qerr = fmax(max_qerr, fabs(q[i] - rq[i]) / (1 + fabs(rq[i])));
        for (int i = 0; i < 32; i++) max_qerr = fmax(max_qerr, fabs(k[i] - rk[i]) / (1 + fabs(rk[i])));
        for (int j = 0; j < 4; j++) max_qerr = fmax(max_qerr, fabs(w[j] - rw[j]) / (1 + fabs(rw[j])));
        dsa_fp8_quant_row(hp.head_dim, k, k8 + (size_t)t * hp.head_dim, ks + t);
        memcpy(refk[t], rk, sizeof rk);
    }
    CHECK(max_qerr < 1e-4, "projection differs from the float64 reference by %g", max_qerr);
    /* index scores of the last token against every key: FP8 keys carry a relative error of at most 2^-4 each */
    dsa_indexer_scores(n, hp.n_head, hp.head_dim, k8, ks, q, w, out);
    int bad = 0;
    for (int s = 0; s < n; s++) {
        double ref = 0, bound = 0;
        for (int j = 0; j < 4; j++) {
            double dot = 0, mag = 0;
            for (int i = 0; i < 32; i++) dot += rq[j * 32 + i] * refk[s][i], mag += fabs(rq[j * 32 + i] * refk[s][i]);
            if (dot > 0) ref += rw[j] * dot;
            bound += fabs(rw[j]) * mag;
        }
        if (fabs(out[s] - ref) > bound * 0.0625 + 1e-5) bad++;
    }
    CHECK(bad == 0, "%d of %d index scores outside the FP8 error bound", bad, n);
    free(h), free(P), free(k8), free(ks), free(out), free(refk);
    dsa_indexer_free(ix);
}

/* ---- gradients ------------------------------------------------------------------------------------------------ */

typedef struct {
    dsa_indexer *ix;
    dsa_train_ws *ws;
    float *h, *p, *gW, *gln;
    int L, t0, t1, k;
} setup;

static double loss_at(setup *s) {
    memset(s->gW, 0, (size_t)s->ix->rows * s->ix->n_embd * sizeof(float));
    memset(s->gln, 0, 2 * (size_t)s->ix->hp.head_dim * sizeof(float));
    return dsa_indexer_loss_grad(s->ix, 0, s->h, s->t0, s->t1, s->p, (size_t)s->L, s->k, s->gW, s->gln, s->ws);
}

static void random_targets(float *p, int t0, int t1, int L) {
    for (int t = t0; t < t1; t++) {
        float *row = p + (size_t)(t - t0) * L;
        double sum = 0;
        for (int s = 0; s <= t; s++) sum += row[s] = (float)(urand() * urand() * urand());
        for (int s = 0; s <= t; s++) row[s] = (float)(row[s] / sum);
    }
}

static void test_gradients(int sparse_k) {
    dsa_indexer_hp hp = {2, 16, 8, 10000.0f, 8, 1e-6f, 0};
    int E = 24, L = 48;
    setup s = {0};
    char err[256];
    CHECK(dsa_indexer_alloc(&hp, 1, E, 11, &s.ix, err, sizeof err) == 0, "%s", err);
    for (int i = 0; i < 2 * hp.head_dim; i++) s.ix->ln[i] = 1.0f + 0.5f * frand();
    dsa_pool *pool = dsa_pool_new(2);
    s.L = L, s.t0 = 20, s.t1 = L, s.k = sparse_k;
    s.ws = dsa_train_ws_new(s.ix, L, L, pool);
    s.h = malloc((size_t)L * E * sizeof(float));
    s.p = malloc((size_t)L * L * sizeof(float));
    size_t nW = (size_t)s.ix->rows * E;
    s.gW = malloc(nW * sizeof(float));
    s.gln = malloc(2 * (size_t)hp.head_dim * sizeof(float));
    float *g = malloc(nW * sizeof(float)), gl[32];
    for (int i = 0; i < L * E; i++) s.h[i] = frand() * 1.5f;
    random_targets(s.p, s.t0, s.t1, L);
    double f0 = loss_at(&s);
    CHECK(isfinite(f0) && f0 > 0, "loss %g", f0);
    memcpy(g, s.gW, nW * sizeof(float));
    memcpy(gl, s.gln, 2 * (size_t)hp.head_dim * sizeof(float));
    /* central differences on a sample of the weights and every LayerNorm parameter */
    int checked = 0, bad = 0;
    double worst = 0;
    for (int trial = 0; trial < 80 + 2 * hp.head_dim; trial++) {
        float *x, an;
        if (trial < 80) {
            size_t i = tu_splitmix(&rng) % nW;
            x = s.ix->W + i, an = g[i];
        } else {
            int i = trial - 80;
            x = s.ix->ln + i, an = gl[i];
        }
        float x0 = *x, eps = 2e-3f;
        *x = x0 + eps;
        double fp = loss_at(&s);
        *x = x0 - eps;
        double fm = loss_at(&s);
        *x = x0;
        double num = (fp - fm) / (2 * eps);
        double err_abs = fabs(num - an), tol = 2e-3 * fabs(num) + 2e-4;
        if (err_abs > worst) worst = err_abs;
        checked++;
        if (err_abs > tol) {
            bad++;
            if (bad <= 5) fprintf(stderr, "  %s trial %d: analytic %g numeric %g\n", sparse_k ? "sparse" : "dense", trial, an, num);
        }
    }
    /* a kink of ReLU or a change of the selected set inside ±eps can spoil one or two samples */
    CHECK(bad <= 2, "%s: %d of %d gradient entries disagree with finite differences (worst %g)",
          sparse_k ? "sparse stage" : "dense warm-up", bad, checked, worst);
    dsa_train_ws_free(s.ws);
    dsa_pool_free(pool);
    free(s.h), free(s.p), free(s.gW), free(s.gln), free(g);
    dsa_indexer_free(s.ix);
}

/* Targets from a teacher indexer's own softmax: a student trained by Adam on them must get much closer. */
static void test_training_lowers_loss(void) {
    dsa_indexer_hp hp = {2, 16, 8, 10000.0f, 8, 1e-6f, 0};
    int E = 32, L = 64;
    char err[256];
    dsa_indexer *teacher, *student;
    CHECK(dsa_indexer_alloc(&hp, 1, E, 100, &teacher, err, sizeof err) == 0, "%s", err);
    CHECK(dsa_indexer_alloc(&hp, 1, E, 200, &student, err, sizeof err) == 0, "%s", err);
    for (size_t i = 0; i < (size_t)teacher->rows * E; i++) teacher->W[i] *= 4; /* peaked targets */
    dsa_pool *pool = dsa_pool_new(2);
    dsa_train_ws *ws = dsa_train_ws_new(teacher, L, L, pool);
    float *h = malloc((size_t)L * E * sizeof(float)), *p = malloc((size_t)L * L * sizeof(float));
    for (int i = 0; i < L * E; i++) h[i] = frand();
    /* the teacher's distribution: its index scores through the engine's projection, softmaxed */
    float P[128], q[32], k[16], w[2], sc[64];
    float (*K)[16] = malloc((size_t)L * sizeof *K);
    float (*Q)[32] = malloc((size_t)L * sizeof *Q), (*Wt)[2] = malloc((size_t)L * sizeof *Wt);
    for (int t = 0; t < L; t++) {
        for (int r = 0; r < teacher->rows; r++) {
            double s = 0;
            for (int e = 0; e < E; e++) s += (double)teacher->W[(size_t)r * E + e] * h[(size_t)t * E + e];
            P[r] = (float)s;
        }
        dsa_indexer_project(teacher, 0, P, t, q, k, w);
        memcpy(K[t], k, sizeof k), memcpy(Q[t], q, sizeof q), memcpy(Wt[t], w, sizeof w);
    }
    for (int t = 0; t < L; t++) {
        double mx = -1e30, z = 0;
        for (int s = 0; s <= t; s++) {
            double v = 0;
            for (int j = 0; j < 2; j++) {
                double dot = 0;
                for (int i = 0; i < 16; i++) dot += Q[t][j * 16 + i] * K[s][i];
                if (dot > 0) v += Wt[t][j] * dot;
            }
            sc[s] = (float)v;
            if (v > mx) mx = v;
        }
        for (int s = 0; s <= t; s++) z += exp(sc[s] - mx);
        for (int s = 0; s <= t; s++) p[(size_t)t * L + s] = (float)(exp(sc[s] - mx) / z);
    }
    size_t nW = (size_t)student->rows * E;
    float *gW = calloc(nW, sizeof(float)), *mo = calloc(nW, sizeof(float)), *ve = calloc(nW, sizeof(float));
    float gln[32];
    double first = 0, last = 0;
    for (int step = 1; step <= 150; step++) {
        memset(gW, 0, nW * sizeof(float));
        memset(gln, 0, sizeof gln);
        double f = dsa_indexer_loss_grad(student, 0, h, 0, L, p, (size_t)L, 0, gW, gln, ws);
        if (step == 1) first = f;
        last = f;
        for (size_t i = 0; i < nW; i++) {
            mo[i] = 0.9f * mo[i] + 0.1f * gW[i];
            ve[i] = 0.999f * ve[i] + 0.001f * gW[i] * gW[i];
            double mh = mo[i] / (1 - pow(0.9, step)), vh = ve[i] / (1 - pow(0.999, step));
            student->W[i] -= (float)(1e-2 * mh / (sqrt(vh) + 1e-8));
        }
    }
    CHECK(last < 0.3 * first, "Adam on a teacher's targets: KL %g -> %g", first, last);
    dsa_train_ws_free(ws);
    dsa_pool_free(pool);
    free(h), free(p), free(K), free(Q), free(Wt), free(gW), free(mo), free(ve);
    dsa_indexer_free(teacher);
    dsa_indexer_free(student);
}

int main(void) {
    dsa_kernels_init(0);
    test_forward_vs_ref();
    test_gradients(0);
    test_gradients(12);
    test_training_lowers_loss();
    return tu_finish("test_train");
}
