/*
 * The lightning indexer's warm-up trainer (DeepSeek-V3.2-Exp §2.1).  The model is frozen; each layer's indexer
 * learns from that layer's own inputs to match the layer's attention:
 *
 *   dense warm-up   L = Σ_t KL( p(t,:) ‖ softmax(I(t,:)) ),   p(t,s) = (1/heads) Σ_h softmax_s(q_h(t)·K_h(s)/√D)
 *   sparse stage    the same KL over the selected set S_t = top-k of I(t,:) only (both sides renormalised on S_t)
 *
 * with Adam.  The keys are trained in f32 (the FP8 rounding of the stored keys is left out of the gradient).
 */
#ifndef DSA_TRAIN_H
#define DSA_TRAIN_H

#include "dsa.h"

/* ---- one layer's loss and gradient (the testable core) ------------------------------------------------------- */
typedef struct dsa_train_ws dsa_train_ws;
/* Scratch for sequences of up to max_len tokens and steps of up to max_rows query rows. */
dsa_train_ws *dsa_train_ws_new(const dsa_indexer *ix, int max_len, int max_rows, dsa_pool *pool);
void dsa_train_ws_free(dsa_train_ws *ws);

/* Mean over the query rows t in [t0, t1) of the KL above, for layer `layer`; h holds the attention-normed inputs of
 * positions 0 .. t1-1 (n_embd floats each); p row t-t0 (p_stride floats apart) holds the target over s <= t.
 * sparse_k > 0 takes the sparse-stage loss with that k.  Adds the gradient of the returned mean to gW
 * (rows × n_embd) and gln (2·d).  Rows whose target puts no mass on the selected set are skipped. */
double dsa_indexer_loss_grad(const dsa_indexer *ix, int layer, const float *h, int t0, int t1, const float *p,
                             size_t p_stride, int sparse_k, float *gW, float *gln, dsa_train_ws *ws);

/* The target rows t in [t0, t1) for one layer of a context that has evaluated positions 0 .. t1-1: q holds the
 * model's queries (after RoPE, n_embd floats per row, row t-t0 for position t), the keys come from c's cache. */
void dsa_train_target(dsa_ctx *c, int layer, const float *q, int t0, int t1, float *p, size_t p_stride);

/* ---- the whole run ------------------------------------------------------------------------------------------ */
typedef struct {
    const char *corpus;      /* directory of .txt documents (the training split) */
    const char *heldout;     /* directory of held-out documents for the held-out loss (may be NULL) */
    const char *out;         /* the sidecar to write */
    const char *checkpoint;  /* resumed from when it exists; written every checkpoint_every sequences */
    const char *init;        /* start from this sidecar instead of random weights (e.g. before the sparse stage) */
    const char *command;     /* the command line, recorded in the sidecar's provenance */
    dsa_indexer_hp hp;
    int seq_len, rows_per_step;
    long max_tokens;         /* stop after this many training tokens (0: no limit) */
    double max_seconds;      /* stop after this much time (0: no limit) */
    float lr;
    int sparse_k;            /* 0: dense warm-up; > 0: the sparse stage with this k */
    uint64_t seed;
    int n_threads, checkpoint_every, heldout_every;
} dsa_train_opts;

typedef struct {
    long seq, tokens, total_tokens; /* sequences and tokens done (total_tokens: the target, or 0) */
    double elapsed, loss;           /* seconds so far; mean KL of the last sequence over all layers */
    double heldout_loss;            /* last held-out KL, or < 0 when not measured at this report */
    const double *layer_loss;       /* per layer, last sequence */
    int n_layer;
    int final;                      /* 1 on the last report */
} dsa_train_report;

/* Train; report (may be NULL) is called after every sequence.  0, or -1 with err. */
int dsa_train_indexer(dsa_model *m, const dsa_train_opts *o, void (*report)(const dsa_train_report *, void *),
                      void *ud, char *err, size_t errlen);

#endif
