/*
 * kernels/cpu — the CPU compute layer: tensor type traits (dequantise, quantise activations, dot products),
 * the thread pool and the matrix multiply built on them.
 *
 * Every type has a plain-C implementation (dsa_traits_ref) that the SIMD paths (dsa_traits, chosen at run time
 * from what the CPU supports) are tested against.  Nothing here knows about models, files or sockets.
 */
#ifndef DSA_KERNELS_H
#define DSA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* Type ids are ggml's, so they match the numbers stored in GGUF tensor tables. */
enum dsa_type {
    DSA_F32 = 0,
    DSA_F16 = 1,
    DSA_Q4_0 = 2,
    DSA_Q4_1 = 3,
    DSA_Q5_0 = 6,
    DSA_Q5_1 = 7,
    DSA_Q8_0 = 8,
    DSA_Q8_1 = 9,  /* activation type for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights: see dsa_block_q8_1 */
    DSA_Q4_K = 12,
    DSA_Q5_K = 13,
    DSA_Q6_K = 14,
    DSA_Q8_K = 15, /* activation type for the K-quants */
    DSA_BF16 = 30,
    DSA_TYPE_COUNT = 40
};

#define DSA_QK 32   /* weights per block of the legacy quants */
#define DSA_QK_K 256 /* weights per super-block of the K-quants */

/* Activation blocks (our own in-memory layouts: they are never stored in files). */
typedef struct {
    float d;            /* scale: x ≈ d * qs */
    float s;            /* d * Σ qs — lets Q4_1 fold its per-block minimum in with one multiply */
    int8_t qs[DSA_QK];
} dsa_block_q8_1;

typedef struct {
    float d;
    int8_t qs[DSA_QK_K];
    int16_t bsums[DSA_QK_K / 16]; /* Σ qs over each group of 16 */
} dsa_block_q8_k;

typedef struct {
    const char *name;
    int blck;              /* elements per block */
    size_t type_size;      /* bytes per block */
    int is_weight;         /* supported as a weight type (loadable from GGUF) */
    enum dsa_type act;     /* type the activations are converted to for vec_dot */
    /* dst[0..n) = float value of src; n is a multiple of blck */
    void (*to_float)(const void *src, float *dst, int64_t n);
    /* quantise n floats (a multiple of blck) to this type; set for activation types (F32, Q8_1, Q8_K) */
    void (*from_float)(const float *src, void *dst, int64_t n);
    /* Σ w[i]*a[i] over n elements: w in this type, a in traits->act */
    float (*vec_dot)(int n, const void *w, const void *a);

    /* Tile kernels, for many activation rows at once (prefill); optional: NULL where a type has none, and
     * dsa_matmul then calls vec_dot for every (weight row, activation row) pair.
     * mm_pack rearranges `rows` (1..mm_nr) weight rows of n elements, w_stride bytes apart, into a panel of
     * n / blck * mm_panel_blk bytes (64-byte aligned) in which each weight block is unpacked once; rows past
     * `rows` are zero.  mm_tile multiplies a panel with nact activation rows of type act (a_stride bytes apart;
     * for q8_1, asum holds the Σ qs of each block, see dsa_q8_1_sums) and writes y[r*ldy + i] for r < nact,
     * i < rows.  Each output is one fixed sequence of float operations (see mm_tile.c), whatever nact, rows,
     * threads or SIMD level: every implementation of a type gives the same bits.  They agree with vec_dot
     * within its rounding bounds, not bit for bit (vec_dot sums in another order). */
    int mm_nr;           /* weight rows per panel: 8 or 16 */
    int mm_min_rows;     /* dsa_matmul takes the tiles from this many activation rows up (below, packing a panel
                            for so few rows costs more than vec_dot saves: measured, bench/bench_quant.c) */
    size_t mm_panel_blk; /* panel bytes per weight block */
    void (*mm_pack)(int n, const void *w, size_t w_stride, int rows, void *panel);
    void (*mm_tile)(int n, const void *panel, const void *a, size_t a_stride, const int32_t *asum, int nact,
                    float *y, size_t ldy, int rows);
    /* Optional: pack + tile for one activation row and a whole panel's mm_nr weight rows, fused (the packed
     * values go to the products block by block instead of into a whole panel), the same bits as mm_pack +
     * mm_tile; dsa_matmul calls it for decode. */
    void (*mm_gemv)(int n, const void *w, size_t w_stride, const void *a, const int32_t *asum, float *y);
} dsa_type_traits;

/* Best implementation for this CPU (after dsa_kernels_init), or the plain-C one. NULL for unknown types. */
const dsa_type_traits *dsa_traits(enum dsa_type t);
const dsa_type_traits *dsa_traits_ref(enum dsa_type t);

/* Choose SIMD paths from the CPU's features.  level: 0 = auto, 1 = plain C only, 2 = at most AVX2,
 * 3 = at most AVX-512.  Environment DSA_CPU=generic|avx2|avx512 overrides auto.  Safe to call again. */
void dsa_kernels_init(int level);
const char *dsa_cpu_name(void); /* "avx512", "avx2" or "generic" */

/* sums[b] = Σ qs of q8_1 block b, for the n / 32 blocks of a row: the asum that mm_tile takes for q8_1. */
void dsa_q8_1_sums(const void *a, int64_t n, int32_t *sums);

/* Bytes of a row of n elements of type t (n must be a multiple of its block size). */
size_t dsa_row_size(enum dsa_type t, int64_t n);
const char *dsa_type_name(int t); /* "q4_1", …; "unknown" */

/* half / bfloat16 conversion */
float dsa_f16_to_f32(uint16_t h);
uint16_t dsa_f32_to_f16(float f);
float dsa_bf16_to_f32(uint16_t h);

/* ---- thread pool ---------------------------------------------------------------------------------- */
typedef struct dsa_pool dsa_pool;
/* n_threads includes the calling thread; <= 0 means all online CPUs. */
dsa_pool *dsa_pool_new(int n_threads);
void dsa_pool_free(dsa_pool *p);
int dsa_pool_size(const dsa_pool *p);
/* Run fn(arg, ith, nth) on every thread (ith in [0,nth)) and wait for all. */
void dsa_pool_run(dsa_pool *p, void (*fn)(void *arg, int ith, int nth), void *arg);

/* ---- matrix multiply -------------------------------------------------------------------------------- */
/* Y[j][i] = Σ_k W[i][k] * X[j][k] for i < rows, j < n: W is rows×cols of type wt (row-major, GGUF layout),
 * X is n×cols floats, Y is n×rows floats (row stride ldy).  Activations are quantised to the weight's
 * activation type into scratch (see dsa_matmul_scratch).  Threads split the rows; Y does not depend on how many
 * threads there are, and where the type has tile kernels (from mm_min_rows rows up) not on n either. */
size_t dsa_matmul_scratch(enum dsa_type wt, int64_t cols, int n);
void dsa_matmul(dsa_pool *p, enum dsa_type wt, const void *W, int64_t rows, int64_t cols,
                const float *X, int n, float *Y, int64_t ldy, void *scratch);

/* Several products that read the same X (Q, K, V; gate, up): X is quantised once and one dispatch covers the
 * rows of all of them.  Each output: W of type `type`, rows×cols, written to Y with row stride ldy. */
typedef struct {
    enum dsa_type type;
    const void *W;
    int64_t rows;
    float *Y;
    int64_t ldy;
} dsa_mm_out;
void dsa_matmul_n(dsa_pool *p, const dsa_mm_out *outs, int n_outs, int64_t cols, const float *X, int n,
                  void *scratch);

/* ---- small vector ops used by attention and the norms (ops.c; SIMD where the CPU has it) -------------- */
/* y[i] += a * x[i] for f16 x */
void dsa_axpy_f16(int n, float a, const uint16_t *x, float *y);
/* Σ x[i]*y[i] for f16 x, f32 y */
float dsa_dot_f16(int n, const uint16_t *x, const float *y);
/* Attention over an f16 cache, one call per query head: out[s] = scale · K_s·q for s < n, and o = Σ_s w[s]·V_s
 * (o is overwritten).  Row s of K/V starts at K + s·stride.  Each output is summed in the same order whatever n
 * is, so a token's attention does not depend on how many tokens were evaluated with it. */
void dsa_attn_scores_f16(int n, int d, const uint16_t *K, size_t stride, const float *q, float scale, float *out);
void dsa_attn_sum_f16(int n, int d, const float *w, const uint16_t *V, size_t stride, float *o);
/* Attention of G query heads that share one KV head (grouped-query attention) over the rows idx[0..n) of the
 * cache (rows 0..n-1 when idx is NULL): for each head g, scores of q + g·d, dsa_softmax, the weighted sum of V
 * into o + g·d; p + g·pstride holds head g's probabilities afterwards.  Each head gets the bits of
 * dsa_attn_scores_f16(_idx) + dsa_softmax + dsa_attn_sum_f16(_idx); each K and V row is read and converted once
 * for all G. */
void dsa_attn_heads_f16(int G, int n, int d, const uint16_t *K, const uint16_t *V, size_t stride, const int32_t *idx,
                        const float *q, float scale, float *p, size_t pstride, float *o);
/* dsa_attn_heads_f16's two halves, for a caller that splits one row's attention over threads: the scores of the G
 * heads over the rows idx[0..n) (out + g·ps), and the sum of the rows weighted by w + g·ps into o + g·os.  A slice
 * of the positions (K, idx or out offset) or of the dims (V, o offset; d a multiple of 8) gives each score and
 * each output the bits of the whole call: every output is its own sequence of operations. */
void dsa_attn_scores_f16_g(int G, int n, int d, const uint16_t *K, size_t stride, const int32_t *idx, const float *q,
                           float scale, float *out, size_t ps);
void dsa_attn_sum_f16_g(int G, int n, int d, const float *w, size_t ps, const uint16_t *V, size_t stride,
                        const int32_t *idx, float *o, size_t os);
/* dst[i] = f16(src[i]) */
void dsa_f32_to_f16_row(int n, const float *src, uint16_t *dst);
/* x = softmax(x[0..n)) in place (n ≥ 1).  With AVX2 the exponentials come from a polynomial (Cephes' expf: within
 * 2 ulp of exp over the range a softmax uses; below e^-87.3 they are 0) eight at a time; the plain-C version calls
 * expf.  The result depends only on x and n. */
void dsa_softmax(int n, float *x);
/* SwiGLU's gate: g[i] = silu(g[i]) · u[i], silu(x) = x · σ(x), σ made from e^-|x| (so no exponential overflows;
 * Cephes' polynomial with AVX2, expf in plain C).  Each result depends only on g[i] and u[i], whatever n. */
void dsa_swiglu(int n, float *g, const float *u);

/* Sparse attention: the same two ops over the rows idx[0..n) of the cache (row s at K + idx[s]·stride).  With the
 * indices 0..n-1 they give exactly the bits of the contiguous versions. */
void dsa_attn_scores_f16_idx(int n, int d, const uint16_t *K, size_t stride, const int32_t *idx, const float *q,
                             float scale, float *out);
void dsa_attn_sum_f16_idx(int n, int d, const float *w, const uint16_t *V, size_t stride, const int32_t *idx,
                          float *o);

/* ---- DeepSeek Sparse Attention: the lightning indexer's kernels (dsa_ops.c) --------------------------- */
/* FP8 e4m3 (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities; largest finite 448).
 * A row is stored as bytes plus one f32 scale: x[i] ≈ scale · e4m3(q[i]), scale = max|x| / 448 (0 for an all-zero
 * row).  Rounding is to nearest, ties to even, so the relative error of each element is at most 2^-4. */
#define DSA_FP8_MAX 448.0f
float dsa_fp8_to_f32(uint8_t v);
uint8_t dsa_f32_to_fp8(float x); /* saturates at ±448 */
void dsa_fp8_quant_row(int n, const float *x, uint8_t *q, float *scale);

/* In-place fast Walsh–Hadamard transform scaled by n^-1/2 (orthonormal, its own inverse); n a power of two. */
void dsa_hadamard(int n, float *x);

/* The lightning indexer's score of query t against keys s < n:
 *   out[s] = kscale[s] · Σ_j w[j] · ReLU(q[j]·k8[s])      (j < H heads of dim d; k8 row s at K8 + s·d bytes)
 * which is Σ_j w[j]·ReLU(q[j]·k(s)) for the dequantised key k(s) = kscale[s]·e4m3(k8[s]), since kscale ≥ 0. */
void dsa_indexer_scores(int n, int H, int d, const uint8_t *K8, const float *kscale, const float *q, const float *w,
                        float *out);
/* The same for R queries over one set of keys (consecutive rows of a prefill): query r (q + r·H·d, w + r·H) against
 * keys s < n[r], into out + r·ldo.  Each score is the bits dsa_indexer_scores gives; the keys are converted from FP8
 * once for all R rows. */
void dsa_indexer_scores_rows(int R, const int *n, int H, int d, const uint8_t *K8, const float *kscale,
                             const float *q, const float *w, float *out, size_t ldo);

/* Top-k selection in O(n): writes the indices of the k highest scores to idx in ascending order and returns how
 * many (min(k, n)).  Ties go to the later index, NaN ranks lowest, so the set is one fixed function of the
 * scores.  scratch holds n uint64_t. */
int dsa_topk(int n, const float *score, int k, int32_t *idx, uint64_t *scratch);

#endif
