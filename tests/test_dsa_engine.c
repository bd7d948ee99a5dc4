/*
 * DeepSeek Sparse Attention in the forward pass of the real default model, with a random indexer:
 *   - while the context is no longer than k, DSA is dense attention bit for bit (prefill and decode);
 *   - with k smaller than the context, a token's logits are the same whether it was prefilled in a batch or
 *     decoded alone (each query selects its own set, from index keys that do not depend on the batching);
 *   - with k smaller than the context the logits do change (the selection is really used), and the window mode
 *     with k >= context is dense again;
 *   - a batched step over several contexts (dsa_ctx_eval_batch) gives the bits of one step per context;
 *   - the sidecar: save/load round trip (f32 exact, f16 within its rounding), refusal for another base model,
 *     clear errors for a truncated file and for a GGUF that is not a sidecar.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dsa.h"
#include "testutil.h"
#include "train.h"

static dsa_model *m;
static dsa_indexer *ix;

static float *run(dsa_select_mode mode, int k, const int32_t *ids, int n, int one_by_one, int with_ix) {
    char err[512];
    dsa_ctx *c;
    const dsa_hparams *hp = dsa_model_hparams(m);
    CHECK(dsa_ctx_new(m, 512, 2, &c, err, sizeof err) == 0, "%s", err);
    CHECK(dsa_ctx_set_sparse(c, with_ix ? ix : NULL, mode, k, err, sizeof err) == 0, "%s", err);
    float *lg = malloc((size_t)n * hp->n_vocab * sizeof *lg);
    if (one_by_one) {
        for (int i = 0; i < n; i++)
            CHECK(dsa_ctx_eval(c, ids + i, 1, lg + (size_t)i * hp->n_vocab, 0, NULL, NULL, err, sizeof err) == 0, "%s", err);
    } else {
        CHECK(dsa_ctx_eval(c, ids, n, lg, 1, NULL, NULL, err, sizeof err) == 0, "%s", err);
    }
    dsa_ctx_free(c);
    return lg;
}

static int same_bits(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof *a) == 0; }

static void test_forward(void) {
    const dsa_hparams *hp = dsa_model_hparams(m);
    size_t V = (size_t)hp->n_vocab;
    int n = 300;
    int32_t ids[300];
    uint64_t s = 5;
    for (int i = 0; i < n; i++) ids[i] = (int32_t)(tu_splitmix(&s) % (uint64_t)hp->n_vocab);

    float *dense = run(DSA_SEL_DENSE, 0, ids, n, 0, 0);
    float *dsa_big = run(DSA_SEL_INDEXER, 300, ids, n, 0, 1);
    CHECK(same_bits(dense, dsa_big, (size_t)n * V), "DSA with k = context differs from dense attention");
    float *win_big = run(DSA_SEL_WINDOW, 512, ids, n, 0, 0);
    CHECK(same_bits(dense, win_big, (size_t)n * V), "window with k > context differs from dense attention");

    float *sp_batch = run(DSA_SEL_INDEXER, 64, ids, n, 0, 1);
    float *sp_one = run(DSA_SEL_INDEXER, 64, ids, n, 1, 1);
    CHECK(same_bits(sp_batch, sp_one, (size_t)n * V), "DSA k=64: prefill and one-token decode give different logits");
    /* positions up to k are dense; beyond they must differ from dense somewhere */
    CHECK(same_bits(sp_batch, dense, 64 * V), "DSA k=64: the first 64 positions should be dense");
    double maxd = 0;
    for (size_t i = 64 * V; i < (size_t)n * V; i++) maxd = fmax(maxd, fabs(sp_batch[i] - dense[i]));
    CHECK(maxd > 1e-3, "DSA k=64 past position 64 equals dense (max |delta| %g): the selection is not used", maxd);

    /* the oracle keeps the positions with the most attention: its logits must be much closer to dense than
     * random positions with the same k */
    float *orc = run(DSA_SEL_ORACLE, 64, ids, n, 0, 1), *rnd = run(DSA_SEL_RANDOM, 64, ids, n, 0, 0);
    double od = 0, rd = 0;
    for (size_t i = 64 * V; i < (size_t)n * V; i++) od += fabs(orc[i] - dense[i]), rd += fabs(rnd[i] - dense[i]);
    CHECK(od < 0.5 * rd, "oracle k=64: mean |delta| vs dense %g, random %g", od / ((n - 64) * V), rd / ((n - 64) * V));
    free(rnd);
    free(dense), free(dsa_big), free(win_big), free(sp_batch), free(sp_one), free(orc);
}

/* dsa_ctx_eval_batch on the CPU: contexts alike go through the weights together, each row over its own cache; the
 * logits must be the bits of one step per context (the matmuls give each row the same bits at any batch size). */
static void test_batch_sessions(dsa_select_mode mode, int k) {
    char err[512];
    const dsa_hparams *hp = dsa_model_hparams(m);
    size_t V = (size_t)hp->n_vocab;
    enum { N = 3, STEPS = 3 };
    int len[N] = {100, 150, 80};
    dsa_ctx *a[N], *b[N];
    int32_t ids[200], step[N];
    uint64_t s = 77;
    for (int i = 0; i < 200; i++) ids[i] = (int32_t)(tu_splitmix(&s) % (uint64_t)hp->n_vocab);
    float *la = malloc(N * V * sizeof *la), *lb = malloc(N * V * sizeof *lb);
    for (int i = 0; i < N; i++) {
        CHECK(dsa_ctx_new(m, 512, 2, &a[i], err, sizeof err) == 0 && dsa_ctx_new(m, 512, 2, &b[i], err, sizeof err) == 0,
              "%s", err);
        CHECK(dsa_ctx_set_sparse(a[i], ix, mode, k, err, sizeof err) == 0, "%s", err);
        CHECK(dsa_ctx_set_sparse(b[i], ix, mode, k, err, sizeof err) == 0, "%s", err);
        CHECK(dsa_ctx_eval(a[i], ids + i * 7, len[i], NULL, 0, NULL, NULL, err, sizeof err) == 0, "%s", err);
        CHECK(dsa_ctx_eval(b[i], ids + i * 7, len[i], NULL, 0, NULL, NULL, err, sizeof err) == 0, "%s", err);
        step[i] = ids[150 + i];
    }
    int same = 1;
    for (int t = 0; t < STEPS; t++) {
        for (int i = 0; i < N; i++)
            CHECK(dsa_ctx_eval(a[i], &step[i], 1, la + i * V, 0, NULL, NULL, err, sizeof err) == 0, "%s", err);
        CHECK(dsa_ctx_eval_batch(b, step, N, lb, err, sizeof err) == 0, "%s", err);
        same &= same_bits(la, lb, N * V);
        for (int i = 0; i < N; i++) {
            CHECK(dsa_ctx_pos(a[i]) == dsa_ctx_pos(b[i]), "context %d at %d, batched at %d", i, dsa_ctx_pos(a[i]),
                  dsa_ctx_pos(b[i]));
            step[i] = tu_argmax(la + i * V, (int)V);
        }
    }
    CHECK(same, "mode %d k %d: a batched step over %d contexts differs from one step per context", mode, k, N);
    for (int i = 0; i < N; i++) dsa_ctx_free(a[i]), dsa_ctx_free(b[i]);
    free(la);
    free(lb);
}

static void test_sidecar(void) {
    char err[1024], path[256], path16[256];
    snprintf(path, sizeof path, "/tmp/dsa-test-%d.dsa.gguf", (int)getpid());
    snprintf(path16, sizeof path16, "/tmp/dsa-test-%d-f16.dsa.gguf", (int)getpid());
    CHECK(dsa_indexer_save(ix, path, 1, err, sizeof err) == 0, "%s", err);
    CHECK(dsa_indexer_save(ix, path16, 0, err, sizeof err) == 0, "%s", err);
    dsa_indexer *a = NULL, *b = NULL;
    CHECK(dsa_indexer_load(path, m, &a, err, sizeof err) == 0, "%s", err);
    CHECK(dsa_indexer_load(path16, m, &b, err, sizeof err) == 0, "%s", err);
    if (a && b) {
        size_t n = (size_t)ix->n_layer * ix->rows * ix->n_embd;
        CHECK(memcmp(a->W, ix->W, n * sizeof(float)) == 0, "f32 sidecar does not round-trip");
        double worst = 0;
        for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs(b->W[i] - ix->W[i]) / (fabs(ix->W[i]) + 1e-4));
        CHECK(worst <= 1.0 / 1024, "f16 sidecar off by %g relative", worst);
        CHECK(a->hp.n_head == ix->hp.n_head && a->hp.head_dim == ix->hp.head_dim && a->hp.top_k == ix->hp.top_k &&
                  a->hp.rope_dim == ix->hp.rope_dim,
              "hyperparameters do not round-trip");
        CHECK(!strcmp(a->base_fingerprint, dsa_model_fingerprint(m)), "fingerprint %s", a->base_fingerprint);
    }
    dsa_indexer_free(a), dsa_indexer_free(b);

    /* another base model: the tiny llama fixture */
    dsa_model *other = NULL;
    CHECK(dsa_model_load(tu_fixture("tiny/llama-mqa.gguf"), &other, NULL, NULL, err, sizeof err) == 0, "%s", err);
    if (other) {
        dsa_indexer *x = NULL;
        CHECK(dsa_indexer_load(path, other, &x, err, sizeof err) != 0 && strstr(err, "another base model"),
              "loading against another model: '%s'", err);
        dsa_model_free(other);
    }
    /* a truncated sidecar and a model file given as a sidecar */
    FILE *f = fopen(path, "r+");
    if (f) {
        CHECK(ftruncate(fileno(f), 4000) == 0, "truncate");
        fclose(f);
    }
    dsa_indexer *x = NULL;
    CHECK(dsa_indexer_load(path, m, &x, err, sizeof err) != 0 && strlen(err) > 10, "truncated sidecar accepted");
    CHECK(dsa_indexer_load(tu_model_path(), m, &x, err, sizeof err) != 0 && strstr(err, "not an indexer"),
          "a model file as a sidecar: '%s'", err);
    unlink(path), unlink(path16);
    char *dp = dsa_indexer_default_path("/nonexistent/dir/model.gguf");
    CHECK(dp == NULL || strstr(dp, "indexers/model.dsa.gguf") == NULL || access(dp, R_OK) == 0,
          "default path %s", dp ? dp : "(none)");
    free(dp);
}

/* The probabilities the forward pass captures equal the trainer's own recomputation of the targets. */
typedef struct {
    dsa_ctx *c;
    double worst;
    int rows;
} cap_state;

static void cap_hook(void *ud, int layer, int pos0, int n, const float *h, const float *q) {
    (void)h;
    cap_state *st = ud;
    if (layer % 7) return;
    int nc = dsa_ctx_n_ctx(st->c);
    float *p = malloc((size_t)n * nc * sizeof *p);
    dsa_train_target(st->c, layer, q, pos0, pos0 + n, p, (size_t)nc);
    const float *pr = dsa_ctx_batch_probs(st->c);
    for (int r = 0; r < n; r++) {
        double sum = 0;
        for (int s = 0; s <= pos0 + r; s++) {
            st->worst = fmax(st->worst, fabs(p[(size_t)r * nc + s] - pr[(size_t)r * nc + s]));
            sum += pr[(size_t)r * nc + s];
        }
        st->worst = fmax(st->worst, fabs(sum - 1));
        st->rows++;
    }
    free(p);
}

static void test_capture(void) {
    char err[512];
    dsa_ctx *c;
    CHECK(dsa_ctx_new(m, 400, 2, &c, err, sizeof err) == 0, "%s", err);
    CHECK(dsa_ctx_capture_probs(c, 1) == 0, "capture");
    cap_state st = {c, 0, 0};
    dsa_ctx_set_layer_hook(c, cap_hook, &st);
    int32_t ids[300];
    uint64_t s = 17;
    for (int i = 0; i < 300; i++) ids[i] = (int32_t)(tu_splitmix(&s) % 49152);
    CHECK(dsa_ctx_eval(c, ids, 300, NULL, 0, NULL, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(st.rows == 300 * 5 && st.worst < 1e-5, "captured probabilities vs recomputed targets: %d rows, worst %g",
          st.rows, st.worst);
    dsa_ctx_free(c);
}

int main(void) {
    char err[512];
    if (dsa_model_load(tu_model_path(), &m, NULL, NULL, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    dsa_indexer_hp hp = {4, 32, 16, 100000.0f, 64, 1e-6f, 0};
    CHECK(dsa_indexer_new(&hp, m, 9, &ix, err, sizeof err) == 0, "%s", err);
    test_forward();
    test_batch_sessions(DSA_SEL_INDEXER, 64);
    test_batch_sessions(DSA_SEL_DENSE, 0);
    test_capture();
    test_sidecar();
    dsa_indexer_free(ix);
    dsa_model_free(m);
    return tu_finish("test_dsa_engine");
}
