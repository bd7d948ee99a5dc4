/*
 * The transformer: weights (read-only, mapped from the GGUF) and per-sequence contexts (KV cache + scratch).
 * Architectures: "llama" (SmolLM, Llama 3.x) and "qwen2" (q/k/v biases, NeoX RoPE pairing).
 */
#ifndef DSA_MODEL_H
#define DSA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "tokenizer.h"
#include "../kernels/cpu/kernels.h"

typedef enum { DSA_ARCH_LLAMA = 1, DSA_ARCH_QWEN2 = 2 } dsa_arch;

typedef struct {
    dsa_arch arch;
    int n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_vocab, n_ctx_train;
    int rope_dim;        /* dims rotated per head */
    float rope_base, norm_eps;
    int rope_neox;       /* 1: pair i with i + rope_dim/2 (qwen2); 0: adjacent pairs (llama GGUF layout) */
    int tied_output;     /* output projection is token_embd */
} dsa_hparams;

typedef struct dsa_model dsa_model;
typedef struct dsa_ctx dsa_ctx;

/* Load a model.  progress (may be NULL) is called with a fraction in [0,1].  0, or -1 with one line in err. */
int dsa_model_load(const char *path, dsa_model **out, void (*progress)(float, void *), void *ud,
                   char *err, size_t errlen);
void dsa_model_free(dsa_model *m);
const dsa_hparams *dsa_model_hparams(const dsa_model *m);
const dsa_tokenizer *dsa_model_tok(const dsa_model *m);
const gguf_file *dsa_model_gguf(const dsa_model *m);
const char *dsa_model_path(const dsa_model *m);
/* The chat template of the model (kind 0 when the model has none or it is not recognised: see chat_err). */
const dsa_chat_template *dsa_model_chat(const dsa_model *m, const char **chat_err);

/* A sequence: n_ctx positions of f16 KV cache.  n_threads <= 0: all cores. */
int dsa_ctx_new(dsa_model *m, int n_ctx, int n_threads, dsa_ctx **out, char *err, size_t errlen);
/* The same on a thread pool shared with other contexts (a server's many sessions evaluated one at a time): the pool
 * is borrowed, and must outlive the context; contexts sharing a pool must not be evaluated concurrently. */
int dsa_ctx_new_shared(dsa_model *m, int n_ctx, dsa_pool *pool, dsa_ctx **out, char *err, size_t errlen);
void dsa_ctx_free(dsa_ctx *c);
int dsa_ctx_n_ctx(const dsa_ctx *c);
int dsa_ctx_pos(const dsa_ctx *c);           /* tokens in the cache */
void dsa_ctx_truncate(dsa_ctx *c, int n_pos); /* forget positions >= n_pos */
dsa_pool *dsa_ctx_pool(dsa_ctx *c);
dsa_model *dsa_ctx_model(const dsa_ctx *c);

/* Run ids[0..n) at positions pos..pos+n-1, appending to the KV cache.  Prefill is processed in batches.
 * logits: NULL, or n_vocab floats for the last token (all_logits = 0) or n*n_vocab floats (all_logits = 1).
 * progress (may be NULL) gets (done, total) tokens.  0, or -1 with err (e.g. context full). */
int dsa_ctx_eval(dsa_ctx *c, const int32_t *ids, int n, float *logits, int all_logits,
                 void (*progress)(int, int, void *), void *ud, char *err, size_t errlen);

/* Where a context runs.  AUTO is CUDA when the build has it and a device is usable, else the CPU.  The CUDA
 * backend holds the weights as f16 (dequantised once, at the first CUDA context of a model) and the caches on the
 * device; it supports dense attention and DSA by the indexer (not the oracle/window/random baselines, the layer
 * hook or the probability capture, which stay on the CPU). */
typedef enum { DSA_BACKEND_AUTO = 0, DSA_BACKEND_CPU = 1, DSA_BACKEND_CUDA = 2 } dsa_backend;
int dsa_backend_parse(const char *name, dsa_backend *out); /* "auto", "cpu", "cuda": 0, else -1 */
/* Move a context to a backend before its first token.  0, or -1 with err (e.g. CUDA asked for and none usable). */
int dsa_ctx_set_backend(dsa_ctx *c, dsa_backend b, char *err, size_t errlen);
const char *dsa_ctx_backend_name(const dsa_ctx *c); /* "cpu" or "cuda" */
/* One decode step for n sequences at once: token ids[i] appended to cs[i], logits n × n_vocab (may be NULL).  On
 * CUDA the n rows go through the weights together; on the CPU it is n single steps.  All contexts share one model
 * and one backend.  0, or -1 with err (nothing is appended then). */
int dsa_ctx_eval_batch(dsa_ctx *const *cs, const int32_t *ids, int n, float *logits, char *err, size_t errlen);

/* The per-token state of a sequence, for the session store: whatever backend holds it, positions [t0, t0+n) of
 * layer l copy out of (get) or into (put) the caller's buffers: K and V rows of dsa_ctx_kv_dim halfs each (f16),
 * and, when an indexer is attached (dsa_ctx_index_dim > 0), its FP8 e4m3 keys (index_dim bytes per token) and
 * their f32 scales; k8/scale may be NULL to skip them.  put does not move the position: after every layer is
 * written, dsa_ctx_set_pos makes the positions count, and the next token's logits are then bit-identical to those
 * of the run that produced the state.  0, or -1 with err. */
int dsa_ctx_cache_get(const dsa_ctx *c, int l, int t0, int n, uint16_t *K, uint16_t *V, uint8_t *k8, float *scale,
                      char *err, size_t errlen);
int dsa_ctx_cache_put(dsa_ctx *c, int l, int t0, int n, const uint16_t *K, const uint16_t *V, const uint8_t *k8,
                      const float *scale, char *err, size_t errlen);
int dsa_ctx_set_pos(dsa_ctx *c, int n_pos, char *err, size_t errlen);
int dsa_ctx_index_dim(const dsa_ctx *c); /* d_I of the attached indexer, 0 without one */

#endif
