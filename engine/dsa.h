/*
 * DeepSeek Sparse Attention for a model that never had it: the lightning indexer's weights (a sidecar GGUF beside
 * the base model), its per-token projection, and the switches a context uses to attend over a selected set.
 *
 * Per layer, from the attention-normed hidden state h (n_embd):
 *   q_j = Hadamard(RoPE(Wq_j·h))          j < H heads of dim d      (RoPE on the first rope_dim dims, NeoX halves)
 *   k   = Hadamard(RoPE(LayerNorm(Wk·h)))                           (one key per token, stored FP8 e4m3 + scale)
 *   w_j = (Ww·h)_j · H^-1/2 · d^-1/2
 *   I(t,s) = Σ_j w_j(t) · ReLU(q_j(t)·k(s)),   and attention at t runs over the top-k s ≤ t by I(t,s).
 */
#ifndef DSA_DSA_H
#define DSA_DSA_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct {
    int n_head;      /* H_I */
    int head_dim;    /* d_I: a power of two (the Hadamard transform) */
    int rope_dim;    /* leading dims of q and k that RoPE rotates (even, <= head_dim) */
    float rope_base;
    int top_k;       /* default k */
    float norm_eps;  /* of the key's LayerNorm */
    int dense_layers; /* the first dense_layers layers keep dense attention (their attention is too diffuse for any
                         k-subset: see docs/dsa-report.md); 0 = DSA everywhere */
} dsa_indexer_hp;

/* The weights of all layers.  Row layout of a layer's projection W (rows × n_embd, f32):
 * rows [0, H·d) are Wq (head-major), [H·d, H·d + d) Wk, [H·d + d, H·d + d + H) Ww. */
typedef struct {
    dsa_indexer_hp hp;
    int n_layer, n_embd, rows;
    float *W;    /* n_layer × rows × n_embd */
    float *ln;   /* n_layer × 2·d: LayerNorm gain, then bias */
    float *rope_freq; /* rope_dim/2 */
    char base_fingerprint[64]; /* the base model this was trained for */
    char base_name[128];       /* its file name, for messages */
    char *provenance;          /* free text: command, corpus, steps, loss (may be NULL) */
} dsa_indexer;

#define DSA_INDEXER_ROWS(hp) ((hp)->n_head * (hp)->head_dim + (hp)->head_dim + (hp)->n_head)

/* A fresh indexer with small random weights (the trainer's start). 0 or -1 with err. */
int dsa_indexer_new(const dsa_indexer_hp *hp, const dsa_model *m, uint64_t seed, dsa_indexer **out, char *err,
                    size_t errlen);
/* The same for any shape, with no base model recorded (tests). */
int dsa_indexer_alloc(const dsa_indexer_hp *hp, int n_layer, int n_embd, uint64_t seed, dsa_indexer **out,
                      char *err, size_t errlen);
/* Load a sidecar; refuses one made for another base model (fingerprint) or with shapes that do not fit. */
int dsa_indexer_load(const char *path, const dsa_model *m, dsa_indexer **out, char *err, size_t errlen);
/* Write a sidecar (F16 weights unless f32 is set) atomically. */
int dsa_indexer_save(const dsa_indexer *ix, const char *path, int f32, char *err, size_t errlen);
void dsa_indexer_free(dsa_indexer *ix);
/* Check hyperparameters; 0 or -1 with err. */
int dsa_indexer_hp_check(const dsa_indexer_hp *hp, char *err, size_t errlen);

/* The sidecar dsa and the daemon use when none is named: <model minus .gguf>.dsa.gguf beside the model, else the
 * one shipped for it in the data directory.  Returns a malloc'd path or NULL when there is none. */
char *dsa_indexer_default_path(const char *model_path);

/* "xxh3-64:<16 hex digits>" of the whole model file, computed once per model. */
const char *dsa_model_fingerprint(dsa_model *m);

/* The indexer's q (H·d), k (d) and w (H) for one token at position pos from its projection row p (rows floats,
 * the output of W·h).  p is scratch afterwards.  With q NULL only k is made (w is not touched), and only p's key
 * part (floats H·d .. H·d+d-1) is read. */
void dsa_indexer_project(const dsa_indexer *ix, int layer, float *p, int pos, float *q, float *k, float *w);

/* ---- contexts --------------------------------------------------------------------------------------------- */

typedef enum {
    DSA_SEL_DENSE = 0,   /* full causal attention */
    DSA_SEL_INDEXER = 1, /* DSA: top-k by the lightning indexer */
    DSA_SEL_ORACLE = 2,  /* top-k by the true attention probability summed over heads (a quality bound) */
    DSA_SEL_WINDOW = 3,  /* the first 4 tokens (sinks) and the last k-4 */
    DSA_SEL_RANDOM = 4   /* k positions drawn at random (fixed per position and layer) */
} dsa_select_mode;

/* Attach an indexer (may be NULL for the baselines that need none) and choose how attention selects its KV.
 * The indexer's keys are computed for every token evaluated while it is attached, so attach it before the first
 * token.  k <= 0 takes the indexer's default.  0 or -1 with err. */
int dsa_ctx_set_sparse(dsa_ctx *c, const dsa_indexer *ix, dsa_select_mode mode, int k, char *err, size_t errlen);
dsa_select_mode dsa_ctx_select_mode(const dsa_ctx *c);
/* Override the indexer's dense_layers (n >= 0) or go back to it (n < 0). */
void dsa_ctx_set_dense_layers(dsa_ctx *c, int n);
int dsa_ctx_dense_layers(const dsa_ctx *c); /* the leading layers that attend densely, as in effect */
int dsa_ctx_topk(const dsa_ctx *c);

/* Caches, for the trainer, the evaluator and the session store: K/V rows of a layer (kv_dim halfs apart) and the
 * indexer keys (d bytes apart, one f32 scale per token); NULL when no indexer is attached. */
int dsa_ctx_kv_dim(const dsa_ctx *c);
void dsa_ctx_kv(const dsa_ctx *c, int layer, const uint16_t **K, const uint16_t **V);
void dsa_ctx_index_keys(const dsa_ctx *c, int layer, const uint8_t **k8, const float **scale);

/* Called after each layer's attention for each batch: h is the n × n_embd attention-normed input, q the n × n_embd
 * queries after RoPE, for positions pos0 .. pos0+n-1 (the KV cache already holds them). */
/* Inside a layer hook: the indexer's queries (n × H·d) and weights (n × H) of the batch, NULL without an indexer. */
void dsa_ctx_index_queries(const dsa_ctx *c, const float **q, const float **w);
/* Capture the attention probabilities (mean over heads) of each batch, for the trainer's targets and the recall
 * measurement: inside a layer hook dsa_ctx_batch_probs gives n rows of n_ctx floats, row r valid for positions
 * 0 .. pos0+r (zero where a sparse selection left a position out).  0, or -1 out of memory. */
int dsa_ctx_capture_probs(dsa_ctx *c, int on);
const float *dsa_ctx_batch_probs(const dsa_ctx *c);
typedef void (*dsa_layer_hook)(void *ud, int layer, int pos0, int n, const float *h, const float *q);
void dsa_ctx_set_layer_hook(dsa_ctx *c, dsa_layer_hook fn, void *ud);

/* Tests of the CUDA backend: keep every layer's selection of the next evaluations (on), and read the positions a
 * row of the last evaluation attended to in a layer (cnt -1: densely).  -1 on the CPU backend. */
int dsa_ctx_keep_selection(dsa_ctx *c, int on);
int dsa_ctx_selection(dsa_ctx *c, int layer, int row, int32_t *idx, int *cnt);

/* Wall time spent on index scores and selection (projection included) since the last reset, in seconds. */
double dsa_ctx_indexer_seconds(const dsa_ctx *c);
void dsa_ctx_reset_timers(dsa_ctx *c);

#endif
