// The lightning indexer's scores and the per-row top-k selection.  CPU counterparts: dsa_indexer_scores, dsa_topk.
#include "cuda.h"
#include "internal.cuh"
#include "common.cuh"

namespace {

constexpr int TOPK_THREADS = 1024;

// ---- the lightning indexer's scores ---------------------------------------------------------------------------

// One thread per key: out[r][s] = scale[s]·Σ_j w_j·ReLU(q_j·k(s)).  CPU: dsa_indexer_scores.
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

// ---- top-k by radix select ------------------------------------------------------------------------------------

__device__ __forceinline__ unsigned rank_key(float f) {
    if (f == 0) f = 0.0f;
    unsigned u = __float_as_uint(f);
    if (f != f) return 0;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

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

// One block per row: four 8-bit radix passes find the k-th largest key exactly, then one pass writes the selected
// positions in ascending order (ties at the threshold go to the later positions).  CPU: dsa_topk.
__global__ void __launch_bounds__(TOPK_THREADS) k_topk(const RowDev *__restrict__ rows,
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

} // namespace

int cu_index_scores(int H, int d, const RowDev *rows, int n, const SeqDev *seqs, int layer, const float *iq,
                    const float *iw, int grid_len, float *out, int ld) {
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
    return launch(k_topk, dim3(n), dim3(TOPK_THREADS), 0, rows, seqs, layer, score, ld, idx, ldi, cnt);
}

