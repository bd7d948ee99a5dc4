// The model on the GPU: weights uploaded once, per-sequence caches, and the forward pass over rows that may belong
// to different sequences.  Decode steps (one row per sequence, at most 16) replay a captured CUDA graph: every
// value that changes from step to step (tokens, positions, which caches) sits in a small parameter block that the
// graph itself copies from pinned host memory, so one graph serves every step of the same shape.
#include "cuda.h"
#include "internal.cuh"

#include <cublas_v2.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_ROWS 256 // rows per forward call (the engine's prefill batch)
#define GEMV_ROWS 16 // rows of logits per call
#define BLAS_WS (32u << 20)
#define MAX_GRAPHS 48

static cudaStream_t g_stream;

cudaStream_t dsa_cu_stream(void) {
    if (!g_stream) cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking);
    return g_stream;
}

struct GLayer {
    __half *wqkv, *wo, *wgu, *wdown;
    float *bqkv, *attn_norm, *ffn_norm;
    QMat qqkv, qwo, qgu, qdown; // DSA_CUDA_QUANT: the same matrices quantised (type QW_NONE: not kept)
};

struct Graph {
    int n, grid_len, has_ix, sel_on, n_out;
    cudaGraphExec_t exec;
};

struct dsa_gpu_model {
    Shape s;
    int n_layer;
    char device[256];
    cublasHandle_t blas;
    float *rope_freq;
    GLayer *L;
    __half *embd, *output;
    QMat qout; // DSA_CUDA_QUANT: the output projection quantised
    int quant; // DSA_CUDA_QUANT=1
    int quant_mats;     // matrices kept quantised ...
    size_t quant_bytes; // ... and their bytes
    float *output_norm;
    size_t weight_bytes;
    // indexer
    const void *ix_key;
    float *ixW, *ixln, *ix_freq;
    // scratch, sized for MAX_ROWS rows and contexts up to grid_cap positions
    int grid_cap;
    float *x, *qkv, *att, *gu, *hb, *xn, *ixproj, *iq, *iw, *scores, *part, *xo, *logits;
    __half *xh;
    int32_t *sel;
    int *cnt, *which, *counter;
    void *blas_ws;
    int debug_sel;        // keep every layer's selection of the last call (tests)
    int32_t *sel_log;     // [layer][MAX_ROWS][sel_ld]
    int *cnt_log;         // [layer][MAX_ROWS]
    int sel_ld;
    // step parameters: pinned host copy and device copy (rows, then sequences, then output rows)
    void *par_h, *par_d;
    float *logits_h; // pinned: GEMV_ROWS × n_vocab
    RowDev *rows_d;
    SeqDev *seqs_d;
    Graph graphs[MAX_GRAPHS];
    int n_graphs;
    // DSA_CUDA_PROFILE: device time of each call (events) against its wall time, printed when the model is freed
    int profile;
    cudaEvent_t ev0, ev1;
    double prof_gpu_ms[3], prof_wall_ms[3]; // [0] direct launches, [1] graph replays, [2] persistent steps
    long prof_calls[3];
    int prof_graph;
    int ix_ctx_count;
    int flash;    // dense prefill through the tiled attention kernel (DSA_CUDA_FLASH=1)
    int persist;  // decode steps as one persistent kernel: 0 no, 1 steps without selection, 2 all (DSA_CUDA_PERSIST)
    DecodeLayer *dlayers; // its per-layer weights (device), made at its first use
    int dlayers_ix;       // ... with the indexer's projection
    int gemv_max; // up to this many rows the matrices go through our GEMV kernels, above it through cuBLAS
};

struct dsa_gpu_ctx {
    dsa_gpu_model *g;
    int n_ctx;
    SeqDev sd;
};

#define PAR_BYTES (MAX_ROWS * (sizeof(RowDev) + sizeof(SeqDev) + sizeof(int)))

static int fail(char *err, size_t errlen, const char *what, cudaError_t e) {
    snprintf(err, errlen, "CUDA: %s: %s", what, cudaGetErrorString(e));
    return -1;
}

extern "C" int dsa_cuda_devices(char *name, size_t name_len, size_t *mem_bytes, char *why, size_t why_len) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
        if (why && why_len) snprintf(why, why_len, "%s", e != cudaSuccess ? cudaGetErrorString(e) : "no device");
        return 0;
    }
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, 0) == cudaSuccess) {
        if (name && name_len) snprintf(name, name_len, "%s", p.name);
        if (mem_bytes) *mem_bytes = p.totalGlobalMem;
    }
    return n;
}

// ---- device memory helpers (tests, benchmarks) ---------------------------------------------------------------------

extern "C" void *dsa_cuda_alloc(size_t bytes) {
    void *p = NULL;
    return cudaMalloc(&p, bytes ? bytes : 1) == cudaSuccess ? p : NULL;
}
extern "C" void dsa_cuda_free(void *p) { cudaFree(p); }
extern "C" int dsa_cuda_put(void *dst, const void *src, size_t bytes) {
    cudaStream_t st = dsa_cu_stream();
    if (cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, st) != cudaSuccess) return -1;
    return cudaStreamSynchronize(st) == cudaSuccess ? 0 : -1;
}
extern "C" int dsa_cuda_get(void *dst, const void *src, size_t bytes) {
    if (cudaStreamSynchronize(dsa_cu_stream()) != cudaSuccess) return -1;
    return cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost) == cudaSuccess ? 0 : -1;
}
extern "C" int dsa_cuda_fill(void *dst, int byte, size_t bytes) {
    return cudaMemsetAsync(dst, byte, bytes, dsa_cu_stream()) == cudaSuccess ? 0 : -1;
}
extern "C" int dsa_cuda_copy_d2d(void *dst, const void *src, size_t bytes) {
    return cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, dsa_cu_stream()) == cudaSuccess ? 0 : -1;
}
extern "C" int dsa_cuda_sync(char *err, size_t errlen) {
    cudaError_t e = cudaStreamSynchronize(dsa_cu_stream());
    if (e == cudaSuccess) e = cudaGetLastError();
    if (e != cudaSuccess) return fail(err, errlen, "kernel", e);
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

extern "C" double dsa_cuda_time_ms(void (*fn)(void *), void *ud, int warmup, int reps) {
    cudaStream_t st = dsa_cu_stream();
    for (int i = 0; i < warmup; i++) fn(ud);
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    double *t = (double *)malloc(sizeof(double) * (reps > 0 ? reps : 1));
    for (int i = 0; i < reps; i++) {
        cudaEventRecord(a, st);
        fn(ud);
        cudaEventRecord(b, st);
        cudaEventSynchronize(b);
        float ms = 0;
        cudaEventElapsedTime(&ms, a, b);
        t[i] = ms;
    }
    qsort(t, reps, sizeof *t, cmp_double);
    double med = reps > 0 ? t[reps / 2] : 0;
    free(t);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return med;
}

static int grid_round(int len) {
    int g = 256;
    while (g < len) g *= 2;
    return g;
}

// ---- kernels on device pointers (tests) ----------------------------------------------------------------------------

extern "C" int dsa_cuk_gemv_mma(int want) { return cu_gemv_mma(want); }
extern "C" int dsa_cuk_select_new(int want) { return cu_select_new(want); }

extern "C" int dsa_cuk_gemv_f16(const uint16_t *W, int rows, int cols, const float *X, int n, const float *norm,
                                float eps, float *Y, int accumulate) {
    return cu_gemv_f16((const __half *)W, rows, cols, X, n, norm, eps, Y, accumulate, 0);
}

extern "C" int dsa_cuk_gemv_swiglu(const uint16_t *W, int rows, int cols, const float *X, int n, const float *norm,
                                   float eps, float *Y) {
    return cu_gemv_f16((const __half *)W, rows, cols, X, n, norm, eps, Y, 0, 1);
}

// ---- weights kept quantised (DSA_CUDA_QUANT) --------------------------------------------------------------------

// ggml's type ids (the numbers in GGUF tensor tables) of the quantised types the kernels read
static int qw_type(int ggml_type) { return ggml_type == 3 ? QW_Q4_1 : ggml_type == 8 ? QW_Q8_0 : 0; }

// Where a matrix's scales (sc) start: after its repacked blocks (qs), 16 or 32 bytes each, so 16-byte aligned.
static size_t q_sc_offset(int qt, int rows, int cols) { return (size_t)rows * (cols / 32) * (qt == QW_Q4_1 ? 16 : 32); }

extern "C" size_t dsa_cuda_q_bytes(int type, int rows, int cols) {
    int qt = qw_type(type);
    if (!qt || rows <= 0 || cols <= 0 || cols % 32) return 0;
    return q_sc_offset(qt, rows, cols) + (size_t)rows * (cols / 32) * (qt == QW_Q4_1 ? 4 : 2);
}

extern "C" int dsa_cuda_q_repack(int type, const void *blocks, int rows, int cols, void *dst) {
    int qt = qw_type(type);
    if (!dsa_cuda_q_bytes(type, rows, cols)) return -1;
    size_t nblk = (size_t)rows * (cols / 32);
    const uint8_t *src = (const uint8_t *)blocks;
    uint8_t *qs = (uint8_t *)dst, *sc = qs + q_sc_offset(qt, rows, cols);
    for (size_t i = 0; i < nblk; i++) {
        if (qt == QW_Q4_1) { // GGUF: f16 d, f16 m, 16 bytes: weight j in the low nibble of byte j, j + 16 in its high
            const uint8_t *b = src + 20 * i;
            uint8_t *o = qs + 16 * i;
            memset(o, 0, 16);
            for (int j = 0; j < 32; j++) {
                unsigned q = j < 16 ? b[4 + j] & 15u : b[4 + j - 16] >> 4;
                int w = j / 8, k = j % 8; // nibble k of little-endian word w
                o[4 * w + k / 2] |= (uint8_t)(q << (4 * (k & 1)));
            }
            memcpy(sc + 4 * i, b, 4); // half2 (d, m)
        } else { // GGUF: f16 d, 32 signed bytes
            const uint8_t *b = src + 34 * i;
            memcpy(qs + 32 * i, b + 2, 32);
            memcpy(sc + 2 * i, b, 2);
        }
    }
    return 0;
}

static QMat qmat_at(int type, const void *base, int rows, int cols) {
    QMat q = {};
    q.type = qw_type(type);
    q.qs = (const uint8_t *)base;
    q.sc = (const uint8_t *)base + q_sc_offset(q.type, rows, cols);
    return q;
}

extern "C" int dsa_cuk_gemv_q(int type, const void *Wq, int rows, int cols, const float *X, int n, const float *norm,
                              float eps, float *Y, int accumulate, int swiglu) {
    if (!dsa_cuda_q_bytes(type, rows, cols)) return -1;
    QMat q = qmat_at(type, Wq, swiglu ? 2 * rows : rows, cols);
    return cu_gemv_f16(NULL, rows, cols, X, n, norm, eps, Y, accumulate, swiglu, &q);
}

extern "C" int dsa_cuk_gemv_f32(const float *W, int rows, int cols, const float *X, int n, const float *norm,
                                float eps, float *Y) {
    return cu_gemv_f32(W, rows, cols, X, n, norm, eps, Y);
}

// One sequence whose index-key cache is k8/kscale (layer 0) and n rows at positions len[r]-1.
// Rows for the kernel tests and benchmarks: positions len[r]-1 (host array) of one sequence, or, with
// row_keys > 0, of n sequences whose index-key caches lie row_keys key slots apart.
struct dsa_cuk_rows {
    int n, n_ctx;
    RowDev *rows;
    SeqDev *seqs;
    float *part;
    int *counter;
};

extern "C" dsa_cuk_rows *dsa_cuk_rows_new(int n, const int *len, int n_ctx, int topk, const uint8_t *k8,
                                          const float *kscale, size_t row_keys, int d, const uint16_t *K,
                                          const uint16_t *V, int KVH, int D) {
    if (n < 1 || n > MAX_ROWS) return NULL;
    RowDev hr[MAX_ROWS];
    SeqDev sd[MAX_ROWS];
    int ns = row_keys ? n : 1;
    for (int r = 0; r < n; r++) hr[r] = RowDev{0, len[r] - 1, row_keys ? r : 0};
    for (int i = 0; i < ns; i++)
        sd[i] = SeqDev{(uint16_t *)K, (uint16_t *)V, k8 ? (uint8_t *)k8 + i * row_keys * d : NULL,
                       kscale ? (float *)kscale + i * row_keys : NULL, n_ctx, 1, topk, 0};
    dsa_cuk_rows *t = (dsa_cuk_rows *)calloc(1, sizeof *t);
    if (!t) return NULL;
    t->n = n, t->n_ctx = n_ctx;
    int grid_len = grid_round(n_ctx);
    Shape s = {KVH * D, 0, KVH, KVH > 0 ? KVH : 1, D > 0 ? D : 64, 0, 0, 0, 0.f, 0, 0, 0, 0, 0.f};
    t->rows = (RowDev *)dsa_cuda_alloc(sizeof hr);
    t->seqs = (SeqDev *)dsa_cuda_alloc(sizeof sd);
    t->part = (float *)dsa_cuda_alloc(cu_attention_part_floats(s, n, grid_len) * 4);
    t->counter = (int *)dsa_cuda_alloc((size_t)n * (KVH > 0 ? KVH : 1) * 4);
    if (!t->rows || !t->seqs || !t->part || !t->counter || dsa_cuda_put(t->rows, hr, (size_t)n * sizeof(RowDev)) ||
        dsa_cuda_put(t->seqs, sd, (size_t)ns * sizeof(SeqDev)) ||
        dsa_cuda_fill(t->counter, 0, (size_t)n * (KVH > 0 ? KVH : 1) * 4)) {
        dsa_cuk_rows_free(t);
        return NULL;
    }
    return t;
}

extern "C" void dsa_cuk_rows_free(dsa_cuk_rows *t) {
    if (!t) return;
    dsa_cuda_free(t->rows), dsa_cuda_free(t->seqs), dsa_cuda_free(t->part), dsa_cuda_free(t->counter);
    free(t);
}

extern "C" int dsa_cuk_index_scores(const dsa_cuk_rows *t, int H, int d, const float *q, const float *w, float *out,
                                    int ld) {
    return cu_index_scores(H, d, t->rows, t->n, t->seqs, 0, q, w, grid_round(t->n_ctx), out, ld);
}

extern "C" int dsa_cuk_topk(const dsa_cuk_rows *t, const float *score, int ld, int32_t *idx, int ldi, int *cnt) {
    return cu_topk(t->rows, t->n, t->seqs, 0, score, ld, idx, ldi, cnt);
}

extern "C" int dsa_cuk_attention(const dsa_cuk_rows *t, int H, int KVH, int D, const float *q, const int32_t *sel,
                                 int ldi, const int *cnt, float *out) {
    Shape s = {H * D, 0, H, KVH, D, 0, 0, 0, 0.f, 0, 0, 0, 0, 0.f};
    return cu_attention(s, q, H * D, t->rows, t->n, t->seqs, 0, sel, ldi, cnt, grid_round(t->n_ctx), t->part,
                        t->counter, out, NULL);
}

extern "C" int dsa_cuk_flash_attention(const dsa_cuk_rows *t, int H, int KVH, int D, const float *q, float *out) {
    Shape s = {H * D, 0, H, KVH, D, 0, 0, 0, 0.f, 0, 0, 0, 0, 0.f};
    return cu_flash_attention(s, q, H * D, t->rows, t->n, t->seqs, 0, out, NULL);
}

// The matrix-product ceiling the benchmarks compare with: cuBLAS as prefill calls it (f16 in, f32 out and
// accumulation).  Its handle lives as long as the process.
extern "C" int dsa_cuda_gemm_f16(const uint16_t *W, int rows, int cols, const uint16_t *X, int n, float *Y) {
    static cublasHandle_t h;
    if (!h && (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS || cublasSetStream(h, dsa_cu_stream()) != CUBLAS_STATUS_SUCCESS))
        return h = NULL, -1;
    float alpha = 1.0f, beta = 0.0f;
    return cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols, &alpha, W, CUDA_R_16F, cols, X, CUDA_R_16F, cols,
                        &beta, Y, CUDA_R_32F, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS
               ? 0
               : -1;
}

extern "C" int dsa_cuk_fp8_quant(int n, int d, const float *x, uint8_t *q, float *scale) {
    return cu_fp8_quant(n, d, x, q, scale);
}

// ---- the model -------------------------------------------------------------------------------------------------------

static void free_scratch(dsa_gpu_model *g) {
    void *bufs[] = {g->x, g->qkv, g->att, g->gu, g->hb, g->xn, g->ixproj, g->iq, g->iw, g->scores, g->part, g->xo,
                    g->logits, g->xh, g->sel, g->cnt, g->sel_log, g->cnt_log, g->counter};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) cudaFree(bufs[i]);
    g->x = g->qkv = g->att = g->gu = g->hb = g->xn = g->ixproj = g->iq = g->iw = g->scores = g->part = g->xo = NULL;
    g->logits = NULL;
    g->xh = NULL;
    g->sel = g->sel_log = NULL;
    g->cnt = g->cnt_log = g->counter = NULL;
    for (int i = 0; i < g->n_graphs; i++) cudaGraphExecDestroy(g->graphs[i].exec);
    g->n_graphs = 0;
    g->grid_cap = 0;
}

// Scratch that depends on the longest context evaluated so far; graphs hold its pointers, so growing it drops them.
static int ensure_scratch(dsa_gpu_model *g, int grid_len, int topk, char *err, size_t errlen) {
    if (g->grid_cap >= grid_len && g->sel_ld >= topk && g->x) return 0;
    if (grid_len < g->grid_cap) grid_len = g->grid_cap;
    if (topk < g->sel_ld) topk = g->sel_ld;
    free_scratch(g);
    const Shape &s = g->s;
    size_t R = MAX_ROWS, KV = (size_t)s.KVH * s.D;
    size_t wide = (size_t)(s.F > s.E ? s.F : s.E);
    cudaError_t e = cudaSuccess;
#define ALLOC(p, bytes) if (e == cudaSuccess) e = cudaMalloc((void **)&(p), (size_t)(bytes) + 4)
    ALLOC(g->x, R * s.E * 4);
    ALLOC(g->xo, GEMV_ROWS * (size_t)s.E * 4);
    ALLOC(g->qkv, R * (s.E + 2 * KV) * 4);
    ALLOC(g->att, R * s.E * 4);
    ALLOC(g->gu, R * 2 * s.F * 4);
    ALLOC(g->hb, R * s.F * 4);
    ALLOC(g->xn, R * s.E * 4);
    ALLOC(g->xh, R * wide * 2);
    ALLOC(g->logits, GEMV_ROWS * (size_t)s.V * 4);
    ALLOC(g->cnt, R * 4);
    ALLOC(g->counter, R * s.KVH * 4);
    if (e == cudaSuccess) e = cudaMemsetAsync(g->counter, 0, R * s.KVH * 4, dsa_cu_stream());
    if (s.ixH) {
        ALLOC(g->ixproj, R * s.ix_rows * 4);
        ALLOC(g->iq, R * s.ixH * s.ixd * 4);
        ALLOC(g->iw, R * s.ixH * 4);
        ALLOC(g->scores, R * (size_t)grid_len * 4);
        ALLOC(g->sel, R * (size_t)(topk > 0 ? topk : 1) * 4);
        if (g->debug_sel) {
            ALLOC(g->sel_log, (size_t)g->n_layer * R * (topk > 0 ? topk : 1) * 4);
            ALLOC(g->cnt_log, (size_t)g->n_layer * R * 4);
            if (e == cudaSuccess) e = cudaMemsetAsync(g->cnt_log, 0xFF, (size_t)g->n_layer * R * 4, dsa_cu_stream());
        }
    }
    ALLOC(g->part, cu_attention_part_floats(s, MAX_ROWS, grid_len) * 4);
#undef ALLOC
    if (e != cudaSuccess) {
        free_scratch(g);
        return fail(err, errlen, "scratch for the forward pass", e);
    }
    g->grid_cap = grid_len;
    g->sel_ld = topk;
    return 0;
}

extern "C" int dsa_gpu_model_new(const dsa_gpu_shape *sh, dsa_gpu_model **out, char *err, size_t errlen) {
    *out = NULL;
    int nd = 0;
    cudaError_t e = cudaGetDeviceCount(&nd);
    if (e != cudaSuccess || nd <= 0) {
        snprintf(err, errlen, "no usable CUDA device (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        return -1;
    }
    if (sh->head_dim != 64 && sh->head_dim != 128) {
        snprintf(err, errlen, "the CUDA backend supports head dims 64 and 128 (model: %d)", sh->head_dim);
        return -1;
    }
    if (sh->n_head % sh->n_head_kv || sh->n_head / sh->n_head_kv > 8 || sh->n_embd % 8 || sh->n_ff % 8 ||
        sh->rope_dim / 2 > 256) {
        snprintf(err, errlen, "the CUDA backend does not support this shape (heads %d/%d, embd %d, ff %d)", sh->n_head,
                 sh->n_head_kv, sh->n_embd, sh->n_ff);
        return -1;
    }
    dsa_gpu_model *g = (dsa_gpu_model *)calloc(1, sizeof *g);
    if (!g) return snprintf(err, errlen, "out of memory"), -1;
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, 0) == cudaSuccess) snprintf(g->device, sizeof g->device, "%s", p.name);
    g->n_layer = sh->n_layer;
    g->s = Shape{sh->n_embd, sh->n_ff, sh->n_head, sh->n_head_kv, sh->head_dim, sh->n_vocab, sh->rope_dim,
                 sh->rope_neox, sh->norm_eps, 0, 0, 0, 0, 0.f};
    g->L = (GLayer *)calloc((size_t)sh->n_layer, sizeof *g->L);
    if (!g->L || !dsa_cu_stream()) {
        dsa_gpu_model_free(g);
        return snprintf(err, errlen, "out of memory"), -1;
    }
    // cuBLAS gets a workspace of its own, so that calls captured in a graph allocate nothing
    if (cublasCreate(&g->blas) != CUBLAS_STATUS_SUCCESS || cublasSetStream(g->blas, dsa_cu_stream()) != CUBLAS_STATUS_SUCCESS ||
        cudaMalloc(&g->blas_ws, BLAS_WS) != cudaSuccess ||
        cublasSetWorkspace(g->blas, g->blas_ws, BLAS_WS) != CUBLAS_STATUS_SUCCESS) {
        dsa_gpu_model_free(g);
        return snprintf(err, errlen, "cuBLAS could not be initialised"), -1;
    }
    size_t half = (size_t)sh->rope_dim / 2;
    if ((e = cudaMalloc((void **)&g->rope_freq, half * 4)) != cudaSuccess ||
        (e = cudaMemcpy(g->rope_freq, sh->rope_freq, half * 4, cudaMemcpyHostToDevice)) != cudaSuccess ||
        (e = cudaMallocHost(&g->par_h, PAR_BYTES)) != cudaSuccess || (e = cudaMalloc(&g->par_d, PAR_BYTES)) != cudaSuccess ||
        (e = cudaMallocHost((void **)&g->logits_h, (size_t)GEMV_ROWS * sh->n_vocab * 4)) != cudaSuccess) {
        dsa_gpu_model_free(g);
        return fail(err, errlen, "model setup", e);
    }
    // Kernels written without a GPU at hand stay opt-in until a GPU run has checked them (docs/cuda.md):
    // DSA_CUDA_GEMV=mma takes decode batches of up to 16 rows through the tensor-core GEMV (sm_80+) instead of the
    // f32 kernel (up to 2 rows) and cuBLAS; DSA_CUDA_FLASH=1 takes dense prefill through the tiled attention kernel.
    // DSA_CUDA_SELECT=new: the index scores on tensor cores and the top-k from registers.
    const char *gv = getenv("DSA_CUDA_GEMV"), *fl = getenv("DSA_CUDA_FLASH"), *se = getenv("DSA_CUDA_SELECT");
    cu_select_new(se && !strcmp(se, "new"));
    if (cu_gemv_mma(gv && !strcmp(gv, "mma") ? 1 : 0) == 0 && gv && !strcmp(gv, "mma"))
        fprintf(stderr, "dsa: CUDA: DSA_CUDA_GEMV=mma: no tensor-core code for this device; the f32 GEMV runs\n");
    // DSA_CUDA_QUANT=1: the decode GEMV reads the GGUF's Q4_1/Q8_0 blocks (k_gemv_q, up to 16 rows) instead of the
    // f16 copies, which prefill's cuBLAS keeps using; the measured choice between the two (docs/cuda.md).
    const char *qe = getenv("DSA_CUDA_QUANT");
    g->quant = qe && !strcmp(qe, "1");
    g->gemv_max = (cu_gemv_mma(-1) || g->quant) ? GEMV_ROWS : 2;
    // ... as far as k_gemv can stage that many RMSNorm'd input rows (E columns) in shared memory, with room for its
    // static shared memory (the other kernels fall back to k_gemv per call where theirs does not fit)
    while (g->gemv_max > 2 && g->gemv_max * (size_t)sh->n_embd * sizeof(float) + 1024 > cu_smem_optin())
        g->gemv_max /= 2;
    g->flash = fl && !strcmp(fl, "1");
    // DSA_CUDA_PERSIST=1 takes decode steps through the persistent kernel (=dense: only steps without selection).
    const char *pe = getenv("DSA_CUDA_PERSIST");
    g->persist = !pe ? 0 : !strcmp(pe, "1") ? 2 : !strcmp(pe, "dense") ? 1 : 0;
    if (getenv("DSA_CUDA_PROFILE")) {
        g->profile = 1;
        cudaEventCreate(&g->ev0);
        cudaEventCreate(&g->ev1);
    }
    g->rows_d = (RowDev *)g->par_d;
    g->seqs_d = (SeqDev *)((char *)g->par_d + MAX_ROWS * sizeof(RowDev));
    g->which = (int *)((char *)g->seqs_d + MAX_ROWS * sizeof(SeqDev));
    *out = g;
    return 0;
}

extern "C" void dsa_gpu_model_free(dsa_gpu_model *g) {
    if (!g) return;
    cudaStreamSynchronize(dsa_cu_stream());
    static const char *prof_what[3] = {"direct calls", "graph replays", "persistent decode steps"};
    for (int k = 0; k < 3; k++)
        if (g->profile && g->prof_calls[k])
            fprintf(stderr, "cuda profile: %ld %s: device %.1f us, wall %.1f us per call\n", g->prof_calls[k],
                    prof_what[k], 1000 * g->prof_gpu_ms[k] / g->prof_calls[k],
                    1000 * g->prof_wall_ms[k] / g->prof_calls[k]);
    free_scratch(g);
    if (g->L)
        for (int l = 0; l < g->n_layer; l++) {
            GLayer *L = &g->L[l];
            cudaFree(L->wqkv), cudaFree(L->wo), cudaFree(L->wgu), cudaFree(L->wdown);
            cudaFree(L->bqkv), cudaFree(L->attn_norm), cudaFree(L->ffn_norm);
            cudaFree((void *)L->qqkv.qs), cudaFree((void *)L->qwo.qs), cudaFree((void *)L->qgu.qs);
            cudaFree((void *)L->qdown.qs);
        }
    free(g->L);
    cudaFree(g->embd);
    if (g->output != g->embd) cudaFree(g->output);
    cudaFree((void *)g->qout.qs);
    cudaFree(g->output_norm);
    cudaFree(g->rope_freq);
    cudaFree(g->ixW), cudaFree(g->ixln), cudaFree(g->ix_freq);
    cudaFree(g->dlayers);
    cudaFreeHost(g->par_h);
    cudaFreeHost(g->logits_h);
    cudaFree(g->par_d);
    if (g->blas) cublasDestroy(g->blas);
    cudaFree(g->blas_ws);
    free(g);
}

static cudaError_t upload(void **dst, const void *src, size_t bytes, size_t *total) {
    cudaError_t e = cudaMalloc(dst, bytes);
    if (e == cudaSuccess) e = cudaMemcpy(*dst, src, bytes, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) *total += bytes;
    return e;
}

extern "C" int dsa_gpu_set_layer(dsa_gpu_model *g, int l, const dsa_gpu_layer *w, char *err, size_t errlen) {
    const Shape &s = g->s;
    size_t E = s.E, F = s.F, KV = (size_t)s.KVH * s.D, Q = E + 2 * KV;
    GLayer *L = &g->L[l];
    cudaError_t e;
    if ((e = upload((void **)&L->wqkv, w->wqkv, Q * E * 2, &g->weight_bytes)) != cudaSuccess ||
        (e = upload((void **)&L->wo, w->wo, E * E * 2, &g->weight_bytes)) != cudaSuccess ||
        (e = upload((void **)&L->wgu, w->wgu, 2 * F * E * 2, &g->weight_bytes)) != cudaSuccess ||
        (e = upload((void **)&L->wdown, w->wdown, E * F * 2, &g->weight_bytes)) != cudaSuccess ||
        (e = upload((void **)&L->attn_norm, w->attn_norm, E * 4, &g->weight_bytes)) != cudaSuccess ||
        (e = upload((void **)&L->ffn_norm, w->ffn_norm, E * 4, &g->weight_bytes)) != cudaSuccess ||
        (w->bqkv && (e = upload((void **)&L->bqkv, w->bqkv, Q * 4, &g->weight_bytes)) != cudaSuccess))
        return fail(err, errlen, "uploading the weights", e);
    return 0;
}

// One matrix's quantised copy on the device (type 0 or a shape the kernels do not take: none, the f16 copy serves).
static int upload_q(dsa_gpu_model *g, QMat *q, const dsa_gpu_qmat *w, int rows, int cols, char *err, size_t errlen) {
    size_t bytes = dsa_cuda_q_bytes(w->type, rows, cols);
    if (!bytes || !w->blocks) return 0;
    if (q->qs) return snprintf(err, errlen, "CUDA: quantised weights uploaded twice"), -1; // set once, as the f16 ones
    void *h = malloc(bytes), *d = NULL;
    if (!h) return snprintf(err, errlen, "out of memory"), -1;
    dsa_cuda_q_repack(w->type, w->blocks, rows, cols, h);
    cudaError_t e = upload(&d, h, bytes, &g->weight_bytes);
    free(h);
    if (e != cudaSuccess) {
        cudaFree(d);
        return fail(err, errlen, "uploading the quantised weights", e);
    }
    *q = qmat_at(w->type, d, rows, cols);
    g->quant_mats++, g->quant_bytes += bytes;
    return 0;
}

extern "C" int dsa_gpu_wants_quant(const dsa_gpu_model *g) { return g->quant; }

extern "C" int dsa_gpu_set_layer_q(dsa_gpu_model *g, int l, const dsa_gpu_layer_q *w, char *err, size_t errlen) {
    const Shape &s = g->s;
    int E = s.E, F = s.F, Q = E + 2 * s.KVH * s.D;
    GLayer *L = &g->L[l];
    return upload_q(g, &L->qqkv, &w->qkv, Q, E, err, errlen) || upload_q(g, &L->qwo, &w->wo, E, E, err, errlen) ||
                   upload_q(g, &L->qgu, &w->gu, 2 * F, E, err, errlen) ||
                   upload_q(g, &L->qdown, &w->down, E, F, err, errlen)
               ? -1
               : 0;
}

extern "C" int dsa_gpu_set_output_q(dsa_gpu_model *g, const dsa_gpu_qmat *out, char *err, size_t errlen) {
    if (upload_q(g, &g->qout, out, g->s.V, g->s.E, err, errlen)) return -1;
    // the last upload of a model: say what the measurement runs on
    fprintf(stderr, "dsa: CUDA: DSA_CUDA_QUANT=1: %d matrices kept quantised (%.1f MB), read by the decode GEMV\n",
            g->quant_mats, g->quant_bytes / 1e6);
    return 0;
}

extern "C" int dsa_gpu_set_embd(dsa_gpu_model *g, const uint16_t *embd, const uint16_t *output, const float *output_norm,
                                char *err, size_t errlen) {
    size_t n = (size_t)g->s.V * g->s.E * 2;
    cudaError_t e;
    if ((e = upload((void **)&g->embd, embd, n, &g->weight_bytes)) != cudaSuccess ||
        (output && (e = upload((void **)&g->output, output, n, &g->weight_bytes)) != cudaSuccess) ||
        (e = upload((void **)&g->output_norm, output_norm, (size_t)g->s.E * 4, &g->weight_bytes)) != cudaSuccess)
        return fail(err, errlen, "uploading the embeddings", e);
    if (!output) g->output = g->embd;
    return 0;
}

extern "C" int dsa_gpu_set_indexer(dsa_gpu_model *g, const void *key, const dsa_gpu_indexer *ix, char *err,
                                   size_t errlen) {
    if (key == g->ix_key) return 0;
    if (g->ix_ctx_count > 0) {
        snprintf(err, errlen, "the GPU model already serves another indexer to %d context(s)", g->ix_ctx_count);
        return -1;
    }
    if (ix->head_dim != 32 && ix->head_dim != 64 && ix->head_dim != 128) {
        snprintf(err, errlen, "the CUDA indexer supports head dims 32, 64 and 128 (sidecar: %d)", ix->head_dim);
        return -1;
    }
    cudaStreamSynchronize(dsa_cu_stream());
    cudaFree(g->ixW), cudaFree(g->ixln), cudaFree(g->ix_freq);
    g->ixW = g->ixln = g->ix_freq = NULL;
    int rows = ix->n_head * ix->head_dim + ix->head_dim + ix->n_head;
    size_t wbytes = (size_t)g->n_layer * rows * g->s.E * 4, junk = 0;
    cudaError_t e;
    if ((e = upload((void **)&g->ixW, ix->W, wbytes, &junk)) != cudaSuccess ||
        (e = upload((void **)&g->ixln, ix->ln, (size_t)g->n_layer * 2 * ix->head_dim * 4, &junk)) != cudaSuccess ||
        (e = upload((void **)&g->ix_freq, ix->rope_freq, (size_t)(ix->rope_dim / 2 ? ix->rope_dim / 2 : 1) * 4, &junk)) !=
            cudaSuccess)
        return fail(err, errlen, "uploading the indexer", e);
    g->s.ixH = ix->n_head;
    g->s.ixd = ix->head_dim;
    g->s.ix_rope_dim = ix->rope_dim;
    g->s.ix_rows = rows;
    g->s.ix_eps = ix->norm_eps;
    g->ix_key = key;
    cudaFree(g->dlayers); // they point at the indexer's projection
    g->dlayers = NULL;
    free_scratch(g); // the indexer's scratch joins at the next call
    return 0;
}

extern "C" int dsa_gpu_debug_selection(dsa_gpu_model *g, int on) {
    cudaStreamSynchronize(dsa_cu_stream());
    g->debug_sel = on;
    free_scratch(g);
    return 0;
}

extern "C" int dsa_gpu_selection(dsa_gpu_model *g, int layer, int row, int32_t *idx, int *cnt) {
    if (!g->sel_log || layer < 0 || layer >= g->n_layer || row < 0 || row >= MAX_ROWS) return -1;
    if (dsa_cuda_get(cnt, g->cnt_log + (size_t)layer * MAX_ROWS + row, sizeof *cnt) || *cnt > g->sel_ld) return -1;
    if (*cnt > 0 && dsa_cuda_get(idx, g->sel_log + ((size_t)layer * MAX_ROWS + row) * g->sel_ld, (size_t)*cnt * 4))
        return -1;
    return 0;
}

extern "C" const void *dsa_gpu_indexer_key(const dsa_gpu_model *g) { return g->ix_key; }
extern "C" size_t dsa_gpu_weight_bytes(const dsa_gpu_model *g) { return g->weight_bytes; }
extern "C" const char *dsa_gpu_device_name(const dsa_gpu_model *g) { return g->device; }

extern "C" int dsa_gpu_ctx_new(dsa_gpu_model *g, int n_ctx, int with_indexer, dsa_gpu_ctx **out, char *err,
                               size_t errlen) {
    *out = NULL;
    if (with_indexer && !g->ix_key) return snprintf(err, errlen, "no indexer uploaded"), -1;
    dsa_gpu_ctx *c = (dsa_gpu_ctx *)calloc(1, sizeof *c);
    if (!c) return snprintf(err, errlen, "out of memory"), -1;
    c->g = g;
    c->n_ctx = n_ctx;
    size_t slots = (size_t)g->n_layer * n_ctx, KV = (size_t)g->s.KVH * g->s.D;
    cudaError_t e;
    if ((e = cudaMalloc((void **)&c->sd.kc, slots * KV * 2)) != cudaSuccess ||
        (e = cudaMalloc((void **)&c->sd.vc, slots * KV * 2)) != cudaSuccess ||
        (with_indexer && ((e = cudaMalloc((void **)&c->sd.ik, slots * g->s.ixd)) != cudaSuccess ||
                          (e = cudaMalloc((void **)&c->sd.iks, slots * 4)) != cudaSuccess))) {
        dsa_gpu_ctx_free(c);
        snprintf(err, errlen, "CUDA: no device memory for a context of %d tokens (%s)", n_ctx, cudaGetErrorString(e));
        return -1;
    }
    c->sd.n_ctx = n_ctx;
    c->sd.topk = 0;
    if (with_indexer) g->ix_ctx_count++;
    *out = c;
    return 0;
}

extern "C" void dsa_gpu_ctx_free(dsa_gpu_ctx *c) {
    if (!c) return;
    cudaStreamSynchronize(dsa_cu_stream());
    if (c->sd.ik) c->g->ix_ctx_count--;
    cudaFree(c->sd.kc), cudaFree(c->sd.vc), cudaFree(c->sd.ik), cudaFree(c->sd.iks);
    free(c);
}

extern "C" void dsa_gpu_ctx_config(dsa_gpu_ctx *c, int sparse, int topk, int dense_layers) {
    c->sd.sparse = sparse && c->sd.ik;
    c->sd.topk = topk;
    c->sd.dense_layers = dense_layers;
}

extern "C" int dsa_gpu_ctx_has_indexer(const dsa_gpu_ctx *c) { return c && c->sd.ik != NULL; }

extern "C" int dsa_gpu_cache_io(dsa_gpu_ctx *c, int dir, int l, int t0, int n, void *K, void *V, void *k8, void *scale,
                                char *err, size_t errlen) {
    const Shape &s = c->g->s;
    size_t KV = (size_t)s.KVH * s.D, row = (size_t)l * c->n_ctx + t0;
    cudaMemcpyKind kind = dir ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
    cudaError_t e = cudaStreamSynchronize(dsa_cu_stream());
#define IO(dev, host, bytes)                                                                                          \
    if (e == cudaSuccess && (host)) e = dir ? cudaMemcpy(dev, host, bytes, kind) : cudaMemcpy(host, dev, bytes, kind)
    IO(c->sd.kc + row * KV, K, (size_t)n * KV * 2);
    IO(c->sd.vc + row * KV, V, (size_t)n * KV * 2);
    if (c->sd.ik) {
        IO(c->sd.ik + row * s.ixd, k8, (size_t)n * s.ixd);
        IO(c->sd.iks + row, scale, (size_t)n * 4);
    }
#undef IO
    if (e != cudaSuccess) return fail(err, errlen, dir ? "writing the cache" : "reading the cache", e);
    return 0;
}

// ---- the forward pass --------------------------------------------------------------------------------------------------

// Y[n][rows] (+)= X[n][cols]·Wᵀ with W rows×cols f16 and X f16, f32 out and accumulation.
static int gemm(dsa_gpu_model *g, const __half *W, int rows, int cols, const __half *X, int n, float *Y, int accumulate) {
    float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    cublasStatus_t st = cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols, &alpha, W, CUDA_R_16F, cols, X,
                                     CUDA_R_16F, cols, &beta, Y, CUDA_R_32F, rows, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT);
    return st == CUBLAS_STATUS_SUCCESS ? 0 : -1;
}

static int sgemm(dsa_gpu_model *g, const float *W, int rows, int cols, const float *X, int n, float *Y) {
    float alpha = 1.0f, beta = 0.0f;
    return cublasSgemm(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols, &alpha, W, cols, X, cols, &beta, Y, rows) ==
                   CUBLAS_STATUS_SUCCESS
               ? 0
               : -1;
}

// Every launch of one forward call over n rows (parameters already in g->rows_d / g->seqs_d / g->which).  The same
// sequence of launches is what a decode graph captures.
// Layers below flash_until attend through the tiled prefill kernel (the rows are consecutive positions of one
// sequence and no row selects there).
static int record(dsa_gpu_model *g, int n, int grid_len, int has_ix, int sel_on, int n_out, float *logits_d,
                  int flash_until) {
    const Shape &s = g->s;
    int E = s.E, F = s.F, KV = s.KVH * s.D, Q = E + 2 * KV, blas = n > g->gemv_max;
    float eps = s.eps;
    RowDev *rows = g->rows_d;
    SeqDev *seqs = g->seqs_d;
    if (cu_embed(g->embd, E, rows, n, g->x)) return -1;
    // the tests' per-layer log of a call where no row selects: -1 everywhere (k_topk writes it where rows may select,
    // k_decode in every layer), not the last call's counts
    if (g->cnt_log && !sel_on &&
        cudaMemsetAsync(g->cnt_log, 0xFF, (size_t)g->n_layer * MAX_ROWS * sizeof(int), dsa_cu_stream()) != cudaSuccess)
        return -1;
    for (int l = 0; l < g->n_layer; l++) {
        const GLayer *L = &g->L[l];
        const float *Wix = has_ix ? g->ixW + (size_t)l * s.ix_rows * E : NULL;
        if (blas) {
            if (cu_rmsnorm_h(g->x, L->attn_norm, E, eps, n, g->xh, has_ix ? g->xn : NULL) ||
                gemm(g, L->wqkv, Q, E, g->xh, n, g->qkv, 0) ||
                cu_rope_kv(s, g->qkv, L->bqkv, rows, n, seqs, l, g->rope_freq) ||
                (has_ix && sgemm(g, Wix, s.ix_rows, E, g->xn, n, g->ixproj)))
                return -1;
        } else if (cu_gemv_qkv(s, L->wqkv, L->bqkv, Wix, g->x, n, L->attn_norm, rows, seqs, l, g->rope_freq, g->qkv,
                               g->ixproj, &L->qqkv)) {
            return -1;
        }
        int32_t *sel = g->sel;
        int *cnt = NULL;
        if (has_ix) {
            if (cu_ix_project(s, g->ixproj, g->ixln, g->ix_freq, rows, n, seqs, l, g->iq, g->iw)) return -1;
            if (sel_on) {
                cnt = g->cnt;
                if (g->sel_log) {
                    sel = g->sel_log + (size_t)l * MAX_ROWS * g->sel_ld;
                    cnt = g->cnt_log + (size_t)l * MAX_ROWS;
                }
                if (cu_index_scores(s.ixH, s.ixd, rows, n, seqs, l, g->iq, g->iw, grid_len, g->scores, g->grid_cap) ||
                    cu_topk(rows, n, seqs, l, g->scores, g->grid_cap, sel, g->sel_ld, cnt))
                    return -1;
            }
        }
        int flashed = l < flash_until && !cu_flash_attention(s, g->qkv, Q, rows, n, seqs, l, g->att, blas ? g->xh : NULL);
        if (l < flash_until && !flashed) { // not on this device or shape: the per-row kernel, and say so once
            cudaGetLastError();
            fprintf(stderr, "dsa: CUDA: DSA_CUDA_FLASH: the tiled attention kernel cannot run here; prefill uses the "
                            "per-row kernel\n");
            g->flash = 0;
            flash_until = 0;
        }
        if (!flashed && cu_attention(s, g->qkv, Q, rows, n, seqs, l, sel, g->sel_ld, cnt, grid_len, g->part,
                                     g->counter, g->att, blas ? g->xh : NULL))
            return -1;
        if (blas) {
            if (gemm(g, L->wo, E, E, g->xh, n, g->x, 1) || cu_rmsnorm_h(g->x, L->ffn_norm, E, eps, n, g->xh, NULL) ||
                gemm(g, L->wgu, 2 * F, E, g->xh, n, g->gu, 0) || cu_swiglu_h(g->gu, F, n, g->xh) ||
                gemm(g, L->wdown, E, F, g->xh, n, g->x, 1))
                return -1;
        } else if (cu_gemv_f16(L->wo, E, E, g->att, n, NULL, eps, g->x, 1, 0, &L->qwo) ||
                   cu_gemv_f16(L->wgu, F, E, g->x, n, L->ffn_norm, eps, g->hb, 0, 1, &L->qgu) ||
                   cu_gemv_f16(L->wdown, E, F, g->hb, n, NULL, eps, g->x, 1, 0, &L->qdown)) {
            return -1;
        }
    }
    if (n_out > 0) {
        if (cu_gather_rows(g->x, E, g->which, n_out, g->xo)) return -1;
        if (n_out > g->gemv_max) {
            if (cu_rmsnorm_h(g->xo, g->output_norm, E, eps, n_out, g->xh, NULL) ||
                gemm(g, g->output, s.V, E, g->xh, n_out, logits_d, 0))
                return -1;
        } else if (cu_gemv_f16(g->output, s.V, E, g->xo, n_out, g->output_norm, eps, logits_d, 0, 0, &g->qout)) {
            return -1;
        }
    }
    return 0;
}

// One decode step as the persistent kernel (parameters already in the pinned block); 1 when it ran, 0 when the
// kernel cannot be used here (the caller takes the usual path), -1 on a CUDA error.
static int persistent_step(dsa_gpu_model *g, int n, int grid_len, int has_ix, char *err, size_t errlen) {
    const Shape &s = g->s;
    cudaError_t e;
    if (!g->dlayers || g->dlayers_ix != has_ix) {
        cudaFree(g->dlayers);
        g->dlayers = NULL;
        DecodeLayer *h = (DecodeLayer *)calloc((size_t)g->n_layer, sizeof *h);
        if (!h) return snprintf(err, errlen, "out of memory"), -1;
        for (int l = 0; l < g->n_layer; l++) {
            const GLayer *L = &g->L[l];
            h[l] = DecodeLayer{L->wqkv, L->wo, L->wgu, L->wdown, L->bqkv, L->attn_norm, L->ffn_norm,
                               has_ix ? g->ixW + (size_t)l * s.ix_rows * s.E : NULL, L->qqkv, L->qwo, L->qgu,
                               L->qdown};
        }
        size_t bytes = (size_t)g->n_layer * sizeof *h;
        if ((e = cudaMalloc((void **)&g->dlayers, bytes)) != cudaSuccess ||
            (e = cudaMemcpyAsync(g->dlayers, h, bytes, cudaMemcpyHostToDevice, dsa_cu_stream())) != cudaSuccess ||
            (e = cudaStreamSynchronize(dsa_cu_stream())) != cudaSuccess) {
            free(h);
            cudaFree(g->dlayers);
            g->dlayers = NULL;
            return fail(err, errlen, "the persistent kernel's layers", e);
        }
        free(h);
        g->dlayers_ix = has_ix;
    }
    DecodeArgs a = {};
    a.s = s, a.n_layer = g->n_layer, a.n = n, a.grid_len = grid_len, a.quant = g->quant, a.L = g->dlayers;
    a.rows = g->rows_d;
    a.seqs = g->seqs_d, a.embd = g->embd, a.output = g->output, a.output_norm = g->output_norm;
    a.rope_freq = g->rope_freq, a.ixln = g->ixln, a.ix_freq = g->ix_freq, a.x = g->x, a.qkv = g->qkv, a.att = g->att;
    a.hb = g->hb, a.ixproj = g->ixproj, a.iq = g->iq, a.iw = g->iw, a.part = g->part;
    a.counter = g->counter;
    a.scores = g->scores, a.score_ld = g->grid_cap, a.sel_ld = g->sel_ld, a.sel = g->sel, a.cnt = g->cnt;
    if (g->sel_log) // every layer's selection kept for the tests
        a.sel = g->sel_log, a.cnt = g->cnt_log, a.sel_layer = (size_t)MAX_ROWS * g->sel_ld, a.cnt_layer = MAX_ROWS;
    cudaStream_t st = dsa_cu_stream();
    if ((e = cudaMemcpyAsync(g->par_d, g->par_h, PAR_BYTES, cudaMemcpyHostToDevice, st)) != cudaSuccess)
        return fail(err, errlen, "step parameters", e);
    if (cu_decode(a)) {
        cudaGetLastError(); // a refused launch leaves nothing behind
        return 0;
    }
    if (cu_gemv_f16(g->output, s.V, s.E, g->x, n, g->output_norm, s.eps, g->logits, 0, 0, &g->qout))
        return fail(err, errlen, "the logits", cudaGetLastError());
    if ((e = cudaMemcpyAsync(g->logits_h, g->logits, (size_t)n * s.V * 4, cudaMemcpyDeviceToHost, st)) != cudaSuccess)
        return fail(err, errlen, "reading the logits", e);
    return 1;
}

extern "C" int dsa_gpu_eval(dsa_gpu_ctx *const *cs, const int32_t *ids, const int *pos, int n, const int *out_rows,
                            int n_out, float *logits, char *err, size_t errlen) {
    if (n < 1 || n > MAX_ROWS) return snprintf(err, errlen, "CUDA: %d rows in one call (1..%d)", n, MAX_ROWS), -1;
    if (n_out > GEMV_ROWS)
        return snprintf(err, errlen, "CUDA: logits of %d rows in one call (at most %d)", n_out, GEMV_ROWS), -1;
    dsa_gpu_model *g = cs[0]->g;
    RowDev *hr = (RowDev *)g->par_h;
    SeqDev *hs = (SeqDev *)((char *)g->par_h + MAX_ROWS * sizeof(RowDev));
    int *hw = (int *)((char *)hs + MAX_ROWS * sizeof(SeqDev));
    int n_seq = 0, max_len = 0, has_ix = 0, topk = 0, distinct = 1, sel_on = 0;
    cudaError_t e = cudaStreamSynchronize(dsa_cu_stream()); // the pinned block may still be read by the last call
    if (e != cudaSuccess) return fail(err, errlen, "a previous call", e);
    for (int r = 0; r < n; r++) {
        const dsa_gpu_ctx *c = cs[r];
        if (c->g != g) return snprintf(err, errlen, "CUDA: rows of contexts of different models"), -1;
        if (pos[r] < 0 || pos[r] >= c->n_ctx) return snprintf(err, errlen, "CUDA: position %d out of range", pos[r]), -1;
        int si = -1;
        for (int j = 0; j < n_seq; j++)
            if (hs[j].kc == c->sd.kc) si = j;
        if (si < 0) {
            si = n_seq++;
            hs[si] = c->sd;
            if (c->sd.ik) has_ix = 1;
            if (c->sd.sparse && c->sd.topk > topk) topk = c->sd.topk;
        } else {
            distinct = 0;
        }
        hr[r] = RowDev{ids[r], pos[r], si};
        if (pos[r] + 1 > max_len) max_len = pos[r] + 1;
        if (c->sd.sparse && pos[r] + 1 > c->sd.topk) sel_on = 1; // some layer of this row selects
    }
    for (int i = 0; i < n_out; i++) hw[i] = out_rows[i];
    // a prefill block of one sequence attends densely through the tiled kernel in the layers where no row selects
    int flash_until = 0;
    if (n_seq == 1 && n > GEMV_ROWS && g->flash) {
        int consecutive = 1;
        for (int r = 1; r < n; r++) consecutive &= pos[r] == pos[0] + r;
        const SeqDev &sd = hs[0];
        if (consecutive) flash_until = sd.sparse && sd.ik && max_len > sd.topk ? sd.dense_layers : g->n_layer;
    }
    int grid_len = grid_round(max_len);
    if (ensure_scratch(g, grid_len, topk, err, errlen)) return -1;
    cudaStream_t st = dsa_cu_stream();
    struct timespec tw0;
    clock_gettime(CLOCK_MONOTONIC, &tw0);
    // the parameter block and the launches: one persistent kernel or a graph replay for decode steps, issued
    // directly otherwise
    int use_graph = distinct && n <= GEMV_ROWS && !getenv("DSA_CUDA_NO_GRAPH");
    int ran = 0;
    if (use_graph && g->persist > sel_on && n_out == n) {
        int in_order = 1;
        for (int i = 0; i < n; i++) in_order &= out_rows[i] == i;
        if (in_order) {
            if (g->profile) cudaEventRecord(g->ev0, st);
            ran = persistent_step(g, n, grid_len, has_ix, err, errlen);
            if (ran < 0) return -1;
            if (ran && g->profile) cudaEventRecord(g->ev1, st);
            if (ran) {
                g->prof_graph = 2;
            } else { // not on this device or shape: the graph path from now on, and say so once
                fprintf(stderr, "dsa: CUDA: DSA_CUDA_PERSIST: the persistent decode kernel cannot run here (%d rows); "
                                "decode steps replay graphs instead\n", n);
                g->persist = 0;
            }
        }
    }
    if (!ran && use_graph) {
        Graph *gr = NULL;
        for (int i = 0; i < g->n_graphs; i++)
            if (g->graphs[i].n == n && g->graphs[i].grid_len == grid_len && g->graphs[i].has_ix == has_ix &&
                g->graphs[i].sel_on == sel_on && g->graphs[i].n_out == n_out)
                gr = &g->graphs[i];
        if (!gr) {
            if (g->n_graphs == MAX_GRAPHS) {
                cudaGraphExecDestroy(g->graphs[0].exec);
                memmove(g->graphs, g->graphs + 1, sizeof(Graph) * (MAX_GRAPHS - 1));
                g->n_graphs--;
            }
            cudaGraph_t graph;
            if ((e = cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal)) != cudaSuccess)
                return fail(err, errlen, "graph capture", e);
            cudaMemcpyAsync(g->par_d, g->par_h, PAR_BYTES, cudaMemcpyHostToDevice, st);
            int rc = record(g, n, grid_len, has_ix, sel_on, n_out, g->logits, 0);
            if (n_out) cudaMemcpyAsync(g->logits_h, g->logits, (size_t)n_out * g->s.V * 4, cudaMemcpyDeviceToHost, st);
            e = cudaStreamEndCapture(st, &graph);
            if (rc || e != cudaSuccess) return fail(err, errlen, "graph capture", e != cudaSuccess ? e : cudaErrorLaunchFailure);
            gr = &g->graphs[g->n_graphs];
            e = cudaGraphInstantiate(&gr->exec, graph, 0);
            cudaGraphDestroy(graph);
            if (e != cudaSuccess) return fail(err, errlen, "graph instantiation", e);
            gr->n = n, gr->grid_len = grid_len, gr->has_ix = has_ix, gr->sel_on = sel_on, gr->n_out = n_out;
            g->n_graphs++;
        }
        if (g->profile) cudaEventRecord(g->ev0, st);
        if ((e = cudaGraphLaunch(gr->exec, st)) != cudaSuccess) return fail(err, errlen, "graph launch", e);
        if (g->profile) cudaEventRecord(g->ev1, st);
        g->prof_graph = 1;
    } else if (!ran) {
        if (g->profile) cudaEventRecord(g->ev0, st);
        g->prof_graph = 0;
        if ((e = cudaMemcpyAsync(g->par_d, g->par_h, PAR_BYTES, cudaMemcpyHostToDevice, st)) != cudaSuccess)
            return fail(err, errlen, "step parameters", e);
        if (record(g, n, grid_len, has_ix, sel_on, n_out, g->logits, flash_until))
            return fail(err, errlen, "a launch", cudaGetLastError());
        if (n_out && (e = cudaMemcpyAsync(g->logits_h, g->logits, (size_t)n_out * g->s.V * 4, cudaMemcpyDeviceToHost,
                                          st)) != cudaSuccess)
            return fail(err, errlen, "reading the logits", e);
        if (g->profile) cudaEventRecord(g->ev1, st);
    }
    if ((e = cudaStreamSynchronize(st)) != cudaSuccess) return fail(err, errlen, "the forward pass", e);
    if (g->profile) {
        float ms = 0;
        cudaEventElapsedTime(&ms, g->ev0, g->ev1);
        struct timespec tw1;
        clock_gettime(CLOCK_MONOTONIC, &tw1);
        int k = g->prof_graph;
        g->prof_gpu_ms[k] += ms;
        g->prof_wall_ms[k] += (tw1.tv_sec - tw0.tv_sec) * 1e3 + (tw1.tv_nsec - tw0.tv_nsec) / 1e6;
        g->prof_calls[k]++;
    }
    // the logits come back through pinned memory (a graph can copy only there); the caller's buffer is any memory
    if (n_out) memcpy(logits, g->logits_h, (size_t)n_out * g->s.V * 4);
    return 0;
}
