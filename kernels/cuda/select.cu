// The lightning indexer's scores and the per-row top-k selection.  CPU counterparts: dsa_indexer_scores, dsa_topk.
#include "cuda.h"
#include "internal.cuh"
#include "common.cuh"
#include "select.cuh"

namespace {

constexpr int TOPK_THREADS = 1024;
constexpr int IX_WARPS = 4; // warps per block of the tensor-core index-score kernel

// ---- the lightning indexer's scores: one thread per key (devices below sm_80, or more than 8 heads) -------------

// out[r][s] = scale[s]·Σ_j w_j·ReLU(q_j·k(s)).  CPU: dsa_indexer_scores.
template <int D>
__global__ void __launch_bounds__(256) k_index_scores(int H, const RowDev *__restrict__ rows,
                                                      const SeqDev *__restrict__ seqs, int layer,
                                                      const float *__restrict__ iq, const float *__restrict__ iw,
                                                      float *__restrict__ out, int ld) {
    extern __shared__ float qs[]; // H·D, then H
    int r = blockIdx.y;
    RowDev rw = rows[r];
    SeqDev sq = seqs[rw.seq];
    int len = rw.pos + 1;
    if (!row_selects(sq, layer, len)) return;
    int s0 = blockIdx.x * blockDim.x;
    if (s0 >= len) return;
    for (int i = threadIdx.x; i < H * D; i += blockDim.x) qs[i] = iq[(size_t)r * H * D + i];
    for (int j = threadIdx.x; j < H; j += blockDim.x) qs[H * D + j] = iw[(size_t)r * H + j];
    __syncthreads();
    int s = s0 + threadIdx.x;
    if (s >= len) return;
    size_t slot = (size_t)layer * sq.n_ctx + s;
    const uint4 *kp = reinterpret_cast<const uint4 *>(sq.ik + slot * D);
    float kf[D];
#pragma unroll
    for (int v = 0; v < D / 16; v++) {
        uint4 u = kp[v];
        unsigned w4[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 16; i++) kf[v * 16 + i] = fp8_to_f32_unscaled((w4[i / 4] >> (8 * (i % 4))) & 0xFFu);
    }
    float acc = 0;
    for (int j = 0; j < H; j++) {
        const float *q = qs + j * D;
        float dot = 0;
#pragma unroll
        for (int i = 0; i < D; i++) dot += q[i] * kf[i];
        dot *= 256.0f;
        if (dot > 0) acc += qs[H * D + j] * dot;
    }
    out[(size_t)r * ld + s] = sq.iks[slot] * acc;
}

// Each warp scores TPW tiles of 16 keys from key (blockIdx.x·IX_WARPS + warp)·16·TPW of row blockIdx.y.
template <int D, int TPW>
__global__ void __launch_bounds__(IX_WARPS * 32) k_index_scores_tc(int H, const RowDev *__restrict__ rows,
                                                                   const SeqDev *__restrict__ seqs, int layer,
                                                                   const float *__restrict__ iq,
                                                                   const float *__restrict__ iw,
                                                                   float *__restrict__ out, int ld) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    ix_scores_warp<D, TPW>(H, rows, seqs, layer, iq, iw, out, ld, blockIdx.y,
                           (blockIdx.x * IX_WARPS + (threadIdx.x >> 5)) * TPW * 16);
#else
    (void)H, (void)rows, (void)seqs, (void)layer, (void)iq, (void)iw, (void)out, (void)ld;
#endif
}

// CPU: dsa_topk.
__global__ void __launch_bounds__(TOPK_THREADS) k_topk(const RowDev *__restrict__ rows,
                                                       const SeqDev *__restrict__ seqs, int layer,
                                                       const float *__restrict__ score, int ld,
                                                       int32_t *__restrict__ idx, int ldi, int *__restrict__ cnt) {
    __shared__ TopkShared sm;
    const int r = blockIdx.x;
    const RowDev rw = rows[r];
    const SeqDev sq = seqs[rw.seq];
    const int len = rw.pos + 1;
    if (!row_selects(sq, layer, len)) {
        if (threadIdx.x == 0) cnt[r] = -1;
        return;
    }
    const float *sc = score + (size_t)r * ld;
    int32_t *out = idx + (size_t)r * ldi;
    if (len <= 4 * TOPK_THREADS) topk_row<4, TOPK_THREADS>(sc, len, sq.topk, out, cnt + r, sm);
    else if (len <= 8 * TOPK_THREADS) topk_row<8, TOPK_THREADS>(sc, len, sq.topk, out, cnt + r, sm);
    else if (len <= 16 * TOPK_THREADS) topk_row<16, TOPK_THREADS>(sc, len, sq.topk, out, cnt + r, sm);
    else topk_row<0, TOPK_THREADS>(sc, len, sq.topk, out, cnt + r, sm);
}

// ---- the shipped top-k (the register top-k of select.cuh is opt-in until a GPU run has checked it) -----------


// Exclusive prefix sum over the block (TOPK_THREADS threads); *total gets the sum.
__device__ int block_scan(int v, int *wsum, int *total) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    __syncthreads();
    if (lane == 31) wsum[w] = x;
    __syncthreads();
    if (w == 0) {
        int t = lane < (int)(blockDim.x >> 5) ? wsum[lane] : 0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            int y = __shfl_up_sync(0xffffffffu, t, o);
            if (lane >= o) t += y;
        }
        wsum[lane] = t; // inclusive over warps
    }
    __syncthreads();
    *total = wsum[(blockDim.x >> 5) - 1];
    return x - v + (w ? wsum[w - 1] : 0);
}

// One block per row: four 8-bit radix passes over global memory find the k-th largest key exactly, then one pass writes the selected
// positions in ascending order (ties at the threshold go to the later positions).  CPU: dsa_topk.
__global__ void __launch_bounds__(TOPK_THREADS) k_topk_global(const RowDev *__restrict__ rows,
                                                       const SeqDev *__restrict__ seqs, int layer,
                                                       const float *__restrict__ score, int ld,
                                                       int32_t *__restrict__ idx, int ldi, int *__restrict__ cnt) {
    __shared__ unsigned hist[256];
    __shared__ unsigned s_pref;
    __shared__ int s_need;
    __shared__ int wsum[32];
    int r = blockIdx.x;
    RowDev rw = rows[r];
    SeqDev sq = seqs[rw.seq];
    int len = rw.pos + 1;
    if (!row_selects(sq, layer, len)) {
        if (threadIdx.x == 0) cnt[r] = -1;
        return;
    }
    int k = sq.topk;
    const float *sc = score + (size_t)r * ld;
    unsigned pref = 0, mask = 0;
    int need = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < len; i += blockDim.x) {
            unsigned u = rank_key(sc[i]);
            if ((u & mask) == pref) atomicAdd(&hist[(u >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int c = 0, b = 255;
            for (; b > 0; b--) {
                if (c + (int)hist[b] >= need) break;
                c += (int)hist[b];
            }
            s_need = need - c;
            s_pref = pref | ((unsigned)b << shift);
        }
        __syncthreads();
        pref = s_pref;
        need = s_need;
        mask |= 255u << shift;
        __syncthreads();
    }
    // pref is the k-th largest key; take every key above it and the last `need` keys equal to it
    int per = (len + blockDim.x - 1) / blockDim.x, i0 = threadIdx.x * per, i1 = min(len, i0 + per);
    int gt = 0, eq = 0;
    for (int i = i0; i < i1; i++) {
        unsigned u = rank_key(sc[i]);
        gt += u > pref;
        eq += u == pref;
    }
    int eq_total;
    int eq_before = block_scan(eq, wsum, &eq_total);
    int eq_after = eq_total - eq_before - eq;
    int take = need - eq_after;
    take = take < 0 ? 0 : take > eq ? eq : take;
    int total;
    int off = block_scan(gt + take, wsum, &total);
    int skip = eq - take;
    int32_t *out = idx + (size_t)r * ldi;
    for (int i = i0; i < i1; i++) {
        unsigned u = rank_key(sc[i]);
        if (u > pref) out[off++] = i;
        else if (u == pref) {
            if (skip > 0) skip--;
            else out[off++] = i;
        }
    }
    if (threadIdx.x == 0) cnt[r] = total;
}

// ---- launchers --------------------------------------------------------------------------------------------------

// Whether the tensor-core kernels run here: a device of sm_80 or newer running code compiled for it (a device
// that JIT-compiles the compute_70 PTX gets the kernels without their bodies).  Asked once.
int g_tc = -1;
bool tc_ready(void) {
    if (g_tc < 0) {
        int dev = 0, major = 0;
        cudaFuncAttributes fa;
        g_tc = cudaGetDevice(&dev) == cudaSuccess &&
               cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 8 &&
               cudaFuncGetAttributes(&fa, k_index_scores_tc<64, 1>) == cudaSuccess && fa.ptxVersion >= 80;
        if (!g_tc) cudaGetLastError(); // a refused query leaves nothing behind
    }
    return g_tc;
}

// The tensor-core scores and the register top-k were written without a GPU at hand: opt-in (cu_select_new) until a
// GPU run has checked them.
int g_select_new = 0;

template <int D>
int launch_index_scores_tc(int H, const RowDev *rows, int n, const SeqDev *seqs, int layer, const float *iq,
                           const float *iw, int grid_len, float *out, int ld) {
    // 4 tiles per warp (a block per 256 keys) when that still fills the chip twice over, else 1 (more, shorter
    // blocks: the batch-1 decode case)
    const int tpw = (long)n * ((grid_len + 255) / 256) >= 2L * sms() ? 4 : 1, per = IX_WARPS * 16 * tpw;
    dim3 grid((grid_len + per - 1) / per, n), block(IX_WARPS * 32);
    return tpw == 4 ? launch(k_index_scores_tc<D, 4>, grid, block, 0, H, rows, seqs, layer, iq, iw, out, ld)
                    : launch(k_index_scores_tc<D, 1>, grid, block, 0, H, rows, seqs, layer, iq, iw, out, ld);
}

} // namespace

int cu_index_scores(int H, int d, const RowDev *rows, int n, const SeqDev *seqs, int layer, const float *iq,
                    const float *iw, int grid_len, float *out, int ld) {
    if (g_select_new && H >= 1 && H <= 8 && (d == 32 || d == 64 || d == 128) && tc_ready()) {
        switch (d) {
        case 32: return launch_index_scores_tc<32>(H, rows, n, seqs, layer, iq, iw, grid_len, out, ld);
        case 64: return launch_index_scores_tc<64>(H, rows, n, seqs, layer, iq, iw, grid_len, out, ld);
        default: return launch_index_scores_tc<128>(H, rows, n, seqs, layer, iq, iw, grid_len, out, ld);
        }
    }
    dim3 grid((grid_len + 255) / 256, n);
    size_t smem = (size_t)(H * d + H) * sizeof(float);
    switch (d) {
    case 32: return launch(k_index_scores<32>, grid, dim3(256), smem, H, rows, seqs, layer, iq, iw, out, ld);
    case 64: return launch(k_index_scores<64>, grid, dim3(256), smem, H, rows, seqs, layer, iq, iw, out, ld);
    case 128: return launch(k_index_scores<128>, grid, dim3(256), smem, H, rows, seqs, layer, iq, iw, out, ld);
    default: return -1;
    }
}

int cu_topk(const RowDev *rows, int n, const SeqDev *seqs, int layer, const float *score, int ld, int32_t *idx,
            int ldi, int *cnt) {
    return launch(g_select_new ? k_topk : k_topk_global, dim3(n), dim3(TOPK_THREADS), 0, rows, seqs, layer, score, ld,
                  idx, ldi, cnt);
}

int cu_select_new(int want) {
    if (want >= 0) g_select_new = want != 0;
    return g_select_new;
}
