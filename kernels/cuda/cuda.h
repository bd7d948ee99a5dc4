/*
 * kernels/cuda — the NVIDIA backend (built when nvcc is found; see DSA_CUDA in CMakeLists.txt).
 *
 * Two levels:
 *  - kernels (dsa_cuk_*): one launch each, on device pointers, on the backend's stream.  Each has a plain-C
 *    counterpart in kernels/cpu (named beside it) that tests/test_cuda.c compares it with on random data.
 *  - the model (dsa_gpu_*): weights uploaded once (f16, dequantised from whatever the GGUF holds; the indexer in
 *    f32), per-sequence caches (K/V f16, indexer keys FP8 e4m3 + f32 scale, the same layout as the CPU backend's),
 *    and a forward pass over n rows that may belong to different sequences (batched decode).  engine/model.c is
 *    the only caller.
 *
 * Every function returns 0, or -1 with one line in err.  A dsa_gpu_model and its contexts are used by one thread
 * at a time (the engine's callers already serialise evaluation per model).
 */
#ifndef DSA_CUDA_H
#define DSA_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices (0 when there is no driver or no device); the first one's name and memory go to
 * name/mem_bytes when count > 0.  why (may be NULL) gets the CUDA runtime's reason when the count is 0. */
int dsa_cuda_devices(char *name, size_t name_len, size_t *mem_bytes, char *why, size_t why_len);

/* ---- device memory, for tests and benchmarks ---------------------------------------------------------------- */

void *dsa_cuda_alloc(size_t bytes);                 /* cudaMalloc; NULL on failure */
void dsa_cuda_free(void *p);
int dsa_cuda_put(void *dst, const void *src, size_t bytes); /* host → device, synchronous */
int dsa_cuda_get(void *dst, const void *src, size_t bytes); /* device → host, synchronous */
int dsa_cuda_fill(void *dst, int byte, size_t bytes);       /* poison outputs before a test */
int dsa_cuda_copy_d2d(void *dst, const void *src, size_t bytes); /* asynchronous, on the backend's stream */
int dsa_cuda_sync(char *err, size_t errlen);                /* wait for the stream; report a kernel fault */
/* Events on the backend's stream, for benchmarks: the milliseconds fn(ud) took, median of reps after warm-up. */
double dsa_cuda_time_ms(void (*fn)(void *), void *ud, int warmup, int reps);

/* ---- kernels (device pointers; asynchronous: dsa_cuda_sync reports a fault) ----------------------------------- */

/* The GEMV kernels below run on tensor cores (sm_80 and newer: f16 weights against the inputs split into two f16
 * parts) or as f32 dot products; want 1 or 0 asks for one or the other, -1 keeps the choice.  Returns whether the
 * tensor-core kernel is in use (0 when the device has none). */
int dsa_cuk_gemv_mma(int want);
/* Y[r][o] = Σ_c W[o][c]·X[r][c] (+ Y[r][o] when accumulate), W rows×cols f16, X n×cols f32, n <= 16.
 * With norm != NULL, X is first RMS-normalised per row and multiplied by norm (cols floats).
 * CPU counterpart: dsa_matmul over DSA_F16 (kernels/cpu/matmul.c) and the engine's rmsnorm. */
int dsa_cuk_gemv_f16(const uint16_t *W, int rows, int cols, const float *X, int n, const float *norm, float eps,
                     float *Y, int accumulate);
/* SwiGLU form: W holds 2·rows rows (gate, then up); Y[r][o] = silu(gate·x)·(up·x).  CPU: the engine's FFN. */
int dsa_cuk_gemv_swiglu(const uint16_t *W, int rows, int cols, const float *X, int n, const float *norm, float eps,
                        float *Y);
/* Weights kept quantised (DSA_CUDA_QUANT=1, docs/cuda.md): a matrix of the GGUF's Q4_1 (type 3) or Q8_0 (type 8)
 * blocks, row after row, cols a multiple of 32.  dsa_cuda_q_bytes: the size of its GPU copy (0: type or shape not
 * supported); dsa_cuda_q_repack: that copy made in host memory at dst (the kernels' layout, internal.cuh QMat).
 * dsa_cuk_gemv_q: dsa_cuk_gemv_f16 / dsa_cuk_gemv_swiglu (swiglu 1) on such a copy in device memory.
 * CPU: the type's dequantisation (dsa_traits) and a dot product. */
size_t dsa_cuda_q_bytes(int type, int rows, int cols);
int dsa_cuda_q_repack(int type, const void *blocks, int rows, int cols, void *dst);
int dsa_cuk_gemv_q(int type, const void *Wq, int rows, int cols, const float *X, int n, const float *norm, float eps,
                   float *Y, int accumulate, int swiglu);
/* The same with f32 weights (the indexer's projection). */
int dsa_cuk_gemv_f32(const float *W, int rows, int cols, const float *X, int n, const float *norm, float eps,
                     float *Y);
/* Rows for the per-sequence kernels: row r is the token at position len[r]-1 (len: a host array) of one sequence
 * whose caches are K/V (n_ctx × KVH·D f16, may be NULL) and k8/kscale (FP8 index keys, may be NULL) at layer 0, or,
 * with row_keys > 0, row r has its own index keys row_keys slots after row r-1's (one sequence per row).  A row
 * selects (top-k, index scores) when its length exceeds topk.  NULL on failure. */
typedef struct dsa_cuk_rows dsa_cuk_rows;
dsa_cuk_rows *dsa_cuk_rows_new(int n, const int *len, int n_ctx, int topk, const uint8_t *k8, const float *kscale,
                               size_t row_keys, int d, const uint16_t *K, const uint16_t *V, int KVH, int D);
void dsa_cuk_rows_free(dsa_cuk_rows *t);
/* The index-score and top-k kernels below: the tensor-core scores and the register top-k (want 1), or the per-key
 * scores and the global-memory top-k (want 0, the default); -1 keeps the choice.  Returns it. */
int dsa_cuk_select_new(int want);
/* Index scores out[r][s] = scale[s]·Σ_j w[r][j]·ReLU(q[r][j]·k8[s]) for s < len[r], from query rows of H·d and H
 * floats.  CPU counterpart: dsa_indexer_scores. */
int dsa_cuk_index_scores(const dsa_cuk_rows *t, int H, int d, const float *q, const float *w, float *out, int ld);
/* Per row, the topk largest of score[r][0..len[r]) by (score, index) — NaN lowest, -0 == +0, ties to the later
 * index — as ascending positions in idx[r][0..k); cnt[r] = k, or -1 when len[r] <= k (attend densely).
 * CPU counterpart: dsa_topk. */
int dsa_cuk_topk(const dsa_cuk_rows *t, const float *score, int ld, int32_t *idx, int ldi, int *cnt);
/* Attention of the rows' queries (H heads of D) over the selected positions sel[r][0..cnt[r]) when cnt[r] >= 0, else
 * the causal prefix; cnt may be NULL (all dense).  out n × H·D.
 * CPU: dsa_attn_scores_f16(_idx), softmax, dsa_attn_sum_f16(_idx). */
int dsa_cuk_attention(const dsa_cuk_rows *t, int H, int KVH, int D, const float *q, const int32_t *sel, int ldi,
                      const int *cnt, float *out);
/* Dense causal attention of a prefill block: the rows are consecutive positions len[0]-1, len[0], ... of one
 * sequence (dsa_cuk_rows_new with row_keys 0), each over its causal prefix; out n × H·D.  A tiled kernel (tensor
 * cores, sm_80 and newer); -1 where the device or the shape has none, and the caller uses dsa_cuk_attention.
 * CPU: dsa_attn_scores_f16, softmax, dsa_attn_sum_f16. */
int dsa_cuk_flash_attention(const dsa_cuk_rows *t, int H, int KVH, int D, const float *q, float *out);
/* Y (n × rows, f32) = X (n × cols) · Wᵀ (rows × cols), f16 in, through cuBLAS as prefill calls it: the
 * benchmarks' matrix-product ceiling. */
int dsa_cuda_gemm_f16(const uint16_t *W, int rows, int cols, const uint16_t *X, int n, float *Y);
/* FP8 e4m3 with a per-row scale (saturating, round to nearest even).  CPU counterpart: dsa_fp8_quant_row. */
int dsa_cuk_fp8_quant(int n, int d, const float *x, uint8_t *q, float *scale);

/* ---- the model ----------------------------------------------------------------------------------------------- */

typedef struct {
    int n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_vocab, rope_dim, rope_neox;
    float norm_eps;
    const float *rope_freq; /* rope_dim/2 */
} dsa_gpu_shape;

typedef struct {
    const uint16_t *wqkv;  /* (E + 2·KV) × E f16: Wq, Wk, Wv stacked */
    const float *bqkv;     /* E + 2·KV, or NULL */
    const uint16_t *wo;    /* E × E */
    const uint16_t *wgu;   /* 2F × E: Wgate then Wup */
    const uint16_t *wdown; /* E × F */
    const float *attn_norm, *ffn_norm;
} dsa_gpu_layer;

typedef struct {
    int n_head, head_dim, rope_dim;
    float norm_eps;
    const float *W;         /* n_layer × rows × E, rows = H·d + d + H */
    const float *ln;        /* n_layer × 2d */
    const float *rope_freq; /* rope_dim/2 */
} dsa_gpu_indexer;

typedef struct dsa_gpu_model dsa_gpu_model;
typedef struct dsa_gpu_ctx dsa_gpu_ctx;

int dsa_gpu_model_new(const dsa_gpu_shape *s, dsa_gpu_model **out, char *err, size_t errlen);
void dsa_gpu_model_free(dsa_gpu_model *g);
int dsa_gpu_set_layer(dsa_gpu_model *g, int l, const dsa_gpu_layer *w, char *err, size_t errlen);
/* token_embd (n_vocab × E f16), the output projection (NULL when tied to token_embd), output_norm. */
int dsa_gpu_set_embd(dsa_gpu_model *g, const uint16_t *embd, const uint16_t *output, const float *output_norm,
                     char *err, size_t errlen);
/* DSA_CUDA_QUANT=1 (a measurement of quantised against f16 weights): whether the model wants the quantised
 * copies.  Then the decode GEMV (up to 16 rows) reads them where given, and prefill's cuBLAS keeps the f16 ones.
 * A matrix of type 0 (or one dsa_cuda_q_bytes refuses) keeps its f16 copy. */
typedef struct {
    int type;           /* ggml type id: 3 Q4_1, 8 Q8_0; 0 none */
    const void *blocks; /* the GGUF's blocks, row after row (the rows of dsa_gpu_layer's stacked matrices) */
} dsa_gpu_qmat;
typedef struct {
    dsa_gpu_qmat qkv, wo, gu, down;
} dsa_gpu_layer_q;
int dsa_gpu_wants_quant(const dsa_gpu_model *g);
int dsa_gpu_set_layer_q(dsa_gpu_model *g, int l, const dsa_gpu_layer_q *w, char *err, size_t errlen);
int dsa_gpu_set_output_q(dsa_gpu_model *g, const dsa_gpu_qmat *out, char *err, size_t errlen);
/* Upload an indexer (one per model at a time; key identifies it, so a second attach of the same one is free). */
int dsa_gpu_set_indexer(dsa_gpu_model *g, const void *key, const dsa_gpu_indexer *ix, char *err, size_t errlen);
const void *dsa_gpu_indexer_key(const dsa_gpu_model *g);
size_t dsa_gpu_weight_bytes(const dsa_gpu_model *g);
/* Tests: keep every layer's top-k selection of the last dsa_gpu_eval; read row `row`'s set of a layer (cnt -1:
 * the row attended densely). */
int dsa_gpu_debug_selection(dsa_gpu_model *g, int on);
int dsa_gpu_selection(dsa_gpu_model *g, int layer, int row, int32_t *idx, int *cnt);
const char *dsa_gpu_device_name(const dsa_gpu_model *g);

/* A sequence of n_ctx positions; with_indexer allocates its FP8 key cache. */
int dsa_gpu_ctx_new(dsa_gpu_model *g, int n_ctx, int with_indexer, dsa_gpu_ctx **out, char *err, size_t errlen);
void dsa_gpu_ctx_free(dsa_gpu_ctx *c);
/* sparse: select top-k by the indexer in layers >= dense_layers (needs with_indexer). */
void dsa_gpu_ctx_config(dsa_gpu_ctx *c, int sparse, int topk, int dense_layers);
int dsa_gpu_ctx_has_indexer(const dsa_gpu_ctx *c);
/* Copy positions [t0, t0+n) of layer l out (dir 0) or in (dir 1); NULL buffers are skipped. */
int dsa_gpu_cache_io(dsa_gpu_ctx *c, int dir, int l, int t0, int n, void *K, void *V, void *k8, void *scale,
                     char *err, size_t errlen);

/* Evaluate rows: row r is token ids[r] of sequence cs[r] at position pos[r].  Rows of one sequence must be
 * consecutive positions in order.  logits: NULL, or n_out × n_vocab floats for the rows listed in out_rows
 * (ascending).  Decode steps (every row a different sequence, n <= 16) replay a captured CUDA graph. */
int dsa_gpu_eval(dsa_gpu_ctx *const *cs, const int32_t *ids, const int *pos, int n, const int *out_rows, int n_out,
                 float *logits, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
