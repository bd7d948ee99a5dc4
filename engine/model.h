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

#endif
