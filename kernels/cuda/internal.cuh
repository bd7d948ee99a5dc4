// Private to kernels/cuda: the state the kernels read per sequence and per row, and the launchers model.cu uses.
#ifndef DSA_CUDA_INTERNAL_CUH
#define DSA_CUDA_INTERNAL_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>

// One sequence's caches and switches, as the kernels see them.
struct SeqDev {
    uint16_t *kc, *vc; // [layer][n_ctx][kv_dim] f16
    uint8_t *ik;       // [layer][n_ctx][d] FP8 e4m3 indexer keys, or NULL
    float *iks;        // [layer][n_ctx]
    int n_ctx;
    int sparse;        // select by the indexer ...
    int topk;          // ... the topk best ...
    int dense_layers;  // ... in layers >= dense_layers
};

// One row of a step: a token of a sequence at a position.
struct RowDev {
    int tok, pos, seq;
};

// Model shape the kernels need.
struct Shape {
    int E, F, H, KVH, D, V, rope_dim, rope_neox;
    float eps;
    int ixH, ixd, ix_rope_dim, ix_rows;
    float ix_eps;
};

cudaStream_t dsa_cu_stream(void);
// The most shared memory a block may opt in to on the current device (bytes; asked once).
size_t cu_smem_optin(void);

#define CU_CHECK(call, err, errlen)                                                                               \
    do {                                                                                                          \
        cudaError_t e_ = (call);                                                                                  \
        if (e_ != cudaSuccess) {                                                                                  \
            snprintf(err, errlen, "CUDA: %s (%s:%d)", cudaGetErrorString(e_), __FILE__, __LINE__);                \
            return -1;                                                                                            \
        }                                                                                                         \
    } while (0)

// Launchers (asynchronous on dsa_cu_stream; return 0 or -1 when the launch itself was refused).
// The GEMV kernels below take up to 16 input rows: as f32 dot products, or, after cu_gemv_mma(1) on a device of
// sm_80 or newer, on tensor cores.  cu_gemv_mma(1 or 0) asks for one or the other (-1: keep); returns whether the
// tensor-core kernel is now in use.
int cu_gemv_mma(int want);
// A weight matrix kept quantised on the device (DSA_CUDA_QUANT=1): the GGUF's blocks of 32 weights, repacked so
// that a lane's 16-byte loads hold whole blocks.  qs: row after row, Q4_1 16 bytes a block (weight 8i + k of the
// block in nibble k of 32-bit word i), Q8_0 32 bytes a block (in order); sc: row after row, Q4_1 one half2 (d, m)
// a block (w = d·q + m), Q8_0 one half d a block (w = d·q).  type QW_NONE: the f16 matrix is used.
enum { QW_NONE = 0, QW_Q4_1 = 1, QW_Q8_0 = 2 };
struct QMat {
    int type;
    const uint8_t *qs;
    const void *sc;
};
// W (f16), or q when q && q->type (decode GEMV on the quantised blocks; cols a multiple of 32), except where the
// quantised kernel cannot stage the n input rows in shared memory: then W.
int cu_gemv_f16(const __half *W, int rows, int cols, const float *X, int n, const float *norm, float eps, float *Y,
                int accumulate, int swiglu, const QMat *q = nullptr);
int cu_gemv_f32(const float *W, int rows, int cols, const float *X, int n, const float *norm, float eps, float *Y);
// The attention block's projections of n <= 16 rows in one launch: RMSNorm, Wqkv (biases, RoPE; K and V straight
// into each row's sequence cache, q into qkv) and, when Wix is set, the indexer's f32 projection into ixproj.
int cu_gemv_qkv(const Shape &s, const __half *Wqkv, const float *bias, const float *Wix, const float *X, int n,
                const float *norm, const RowDev *rows, const SeqDev *seqs, int layer, const float *freq, float *qkv,
                float *ixproj, const QMat *q = nullptr);
int cu_embed(const __half *embd, int E, const RowDev *rows, int n, float *x);
int cu_rmsnorm_h(const float *x, const float *w, int E, float eps, int n, __half *xh, float *xn);
int cu_swiglu_h(const float *gu, int F, int n, __half *hb);
int cu_gather_rows(const float *x, int E, const int *which, int n, float *out);
int cu_rope_kv(const Shape &s, float *qkv, const float *bias, const RowDev *rows, int n,
               const SeqDev *seqs, int layer, const float *rope_freq);
int cu_ix_project(const Shape &s, float *proj, const float *ln, const float *rope_freq, const RowDev *rows, int n,
                  const SeqDev *seqs, int layer, float *iq, float *iw);
// The index scores on tensor cores (sm_80+) and the top-k from registers after cu_select_new(1); the per-key f32
// scores and the global-memory top-k otherwise (-1: keep).  Returns the setting.
int cu_select_new(int want);
int cu_index_scores(int H, int d, const RowDev *rows, int n, const SeqDev *seqs, int layer, const float *iq,
                    const float *iw, int grid_len, float *out, int ld);
int cu_topk(const RowDev *rows, int n, const SeqDev *seqs, int layer, const float *score, int ld, int32_t *idx,
            int ldi, int *cnt);
// counter: n × KVH ints, zero before the first launch (each launch leaves them zero again).
int cu_attention(const Shape &s, const float *q, int ldq, const RowDev *rows, int n, const SeqDev *seqs, int layer,
                 const int32_t *sel, int ldi, const int *cnt, int grid_len, float *part, int *counter, float *att,
                 __half *att_h);
size_t cu_attention_part_floats(const Shape &s, int n, int grid_len);
// Dense causal attention of n rows that are consecutive positions rows[0].pos, rows[0].pos + 1, ... of the sequence
// rows[0].seq (the caller guarantees it), each over its causal prefix: a tiled kernel for prefill.  att n × E
// (att_h, when set, the same in f16).  -1 (nothing launched) where the device (below sm_80) or the shape is not
// supported; the caller then uses cu_attention.
int cu_flash_attention(const Shape &s, const float *q, int ldq, const RowDev *rows, int n, const SeqDev *seqs, int layer,
                       float *att, __half *att_h);
int cu_fp8_quant(int n, int d, const float *x, uint8_t *q, float *scale);

// The persistent decode step: every layer of n <= 16 rows (one token per sequence) in one cooperative launch,
// grid-wide barriers between the phases (QKV; in layers where a row selects, the indexer's vectors, the scores and
// the top-k; the attention chunks, with the indexer's key where no row selects; Wo; gate/up; down), leaving the last
// hidden states in x (the logits are a GEMV launch of their own, wide enough to keep HBM busy).  The phases are the
// same device code as the kernels above (the tensor-core GEMV, or k_gemv_q's body for matrices kept quantised;
// ix_vec64, attn_chunk).
struct DecodeLayer {
    const __half *wqkv, *wo, *wgu, *wdown;
    const float *bqkv, *attn_norm, *ffn_norm, *wix; // wix: the indexer's f32 projection, or NULL
    QMat qqkv, qwo, qgu, qdown; // with DecodeArgs.quant: the matrices kept quantised (type QW_NONE: read f16)
};
struct DecodeArgs {
    Shape s;
    int n_layer, n, grid_len; // grid_len: as for cu_attention (the part buffer's size)
    int quant;                // the GEMV phases read the layers' quantised matrices (DSA_CUDA_QUANT)
    int maxch;                // set by cu_decode
    const DecodeLayer *L; // device array of n_layer
    const RowDev *rows;
    const SeqDev *seqs;
    const __half *embd, *output;
    const float *output_norm, *rope_freq, *ixln, *ix_freq;
    float *x, *qkv, *att, *hb, *ixproj, *iq, *iw, *part;
    int *counter;
    // the selection, in layers where a row selects: scores (score_ld floats a row), the positions (sel_ld a row)
    // and their counts; with sel_layer / cnt_layer > 0 each layer's go that far apart (kept for the tests)
    float *scores;
    int score_ld, sel_ld;
    int32_t *sel;
    int *cnt;
    size_t sel_layer, cnt_layer;
};
// -1 (nothing launched) where the device, the shape or the occupancy does not allow it.
int cu_decode(const DecodeArgs &a);

#endif
