// Private to kernels/cuda: one split-K attention task (chunk c of CH positions, KV head g, row r) as a device
// function of NT threads, for the attention kernel (NT = 128) and the persistent decode kernel (NT = 256).
// CPU: attention_part with dsa_attn_scores_f16(_idx), softmax and dsa_attn_sum_f16(_idx).
#ifndef DSA_CUDA_ATTN_CUH
#define DSA_CUDA_ATTN_CUH

#include "common.cuh"

namespace {

constexpr int CH = 64;     // attention positions per task (split-K chunk)
constexpr int GMAX = 8;    // query heads per KV head, at most

// Partial results of one (row, KV head, chunk): G maxima, G sums, G·D weighted values.
__host__ __device__ constexpr int part_stride(int D) { return 2 * GMAX + GMAX * D; }

// Scores of the group's query heads over the chunk's positions (the row's selected positions, or its causal
// prefix), their softmax within the chunk, and the weighted sum of V into part; the last chunk of (row, KV head) to
// finish merges all of them (flash-decoding's combine) into att (and att_h) and re-arms the counter.
template <int D, int NT>
__device__ void attn_chunk(const Shape &s, const float *__restrict__ q, int ldq, const RowDev *__restrict__ rows,
                           const SeqDev *__restrict__ seqs, int layer, const int32_t *__restrict__ sel, int ldi,
                           const int *__restrict__ cnt, float *__restrict__ part, int maxch, int *__restrict__ counter,
                           float *__restrict__ att, __half *__restrict__ att_h, int c, int g, int r) {
    constexpr int LPP = D / 8, PPW = 32 / LPP, NH = NT / D, NW = NT / 32;
    __syncthreads(); // a persistent block may come here again while the last task still reads shared memory
    __shared__ int pos_s[CH];
    __shared__ float sc[GMAX][CH];
    __shared__ float red[NH][GMAX][D];
    __shared__ float ml[2][GMAX];
    RowDev rw = rows[r];
    SeqDev sq = seqs[rw.seq];
    int len = rw.pos + 1;
    int nsel = cnt ? cnt[r] : -1;
    int total = nsel >= 0 ? nsel : len;
    int p0 = c * CH;
    if (p0 >= total) return;
    int np = min(CH, total - p0);
    int G = s.H / s.KVH, KV = s.KVH * D;
    const uint16_t *K = sq.kc + (size_t)layer * sq.n_ctx * KV + g * D;
    const uint16_t *V = sq.vc + (size_t)layer * sq.n_ctx * KV + g * D;
    for (int i = threadIdx.x; i < np; i += NT) pos_s[i] = nsel >= 0 ? sel[(size_t)r * ldi + p0 + i] : p0 + i;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane / LPP, li = lane % LPP;
    float scale = 1.0f / sqrtf((float)D);
    float qr[GMAX][8];
#pragma unroll
    for (int gi = 0; gi < GMAX; gi++)
#pragma unroll
        for (int e = 0; e < 8; e++) qr[gi][e] = gi < G ? q[(size_t)r * ldq + (g * G + gi) * D + li * 8 + e] : 0.f;
    __syncthreads();
    for (int base = warp * PPW; base < np; base += NW * PPW) {
        int pi = base + sub;
        bool ok = pi < np;
        float kf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (ok) {
            uint4 u = *reinterpret_cast<const uint4 *>(K + (size_t)pos_s[pi] * KV + li * 8);
            const __half2 *h = reinterpret_cast<const __half2 *>(&u);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float2 t = __half22float2(h[i]);
                kf[2 * i] = t.x, kf[2 * i + 1] = t.y;
            }
        }
#pragma unroll
        for (int gi = 0; gi < GMAX; gi++) {
            if (gi >= G) break;
            float d = 0;
#pragma unroll
            for (int e = 0; e < 8; e++) d += qr[gi][e] * kf[e];
#pragma unroll
            for (int o = LPP / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
            if (ok && li == 0) sc[gi][pi] = d * scale;
        }
    }
    __syncthreads();
    for (int gi = warp; gi < G; gi += NW) {
        float m = -INFINITY;
        for (int i = lane; i < np; i += 32) m = fmaxf(m, sc[gi][i]);
        m = warp_max(m);
        float l = 0;
        for (int i = lane; i < np; i += 32) {
            float p = expf(sc[gi][i] - m);
            sc[gi][i] = p;
            l += p;
        }
        l = warp_sum(l);
        if (lane == 0) ml[0][gi] = m, ml[1][gi] = l;
    }
    __syncthreads();
    int dd = threadIdx.x % D, hh = threadIdx.x / D;
    float acc[GMAX];
#pragma unroll
    for (int gi = 0; gi < GMAX; gi++) acc[gi] = 0;
    for (int i = hh; i < np; i += NH) {
        float v = __half2float(__ushort_as_half(V[(size_t)pos_s[i] * KV + dd]));
#pragma unroll
        for (int gi = 0; gi < GMAX; gi++)
            if (gi < G) acc[gi] += sc[gi][i] * v;
    }
#pragma unroll
    for (int gi = 0; gi < GMAX; gi++) red[hh][gi][dd] = acc[gi];
    __syncthreads();
    float *out = part + (((size_t)r * s.KVH + g) * maxch + c) * part_stride(D);
    if (hh == 0) {
        for (int gi = 0; gi < G; gi++) {
            float a = 0;
            for (int j = 0; j < NH; j++) a += red[j][gi][dd];
            out[2 * GMAX + gi * D + dd] = a;
        }
    }
    if (threadIdx.x < G) {
        out[threadIdx.x] = ml[0][threadIdx.x];
        out[GMAX + threadIdx.x] = ml[1][threadIdx.x];
    }
    // The last chunk of this (row, KV head) to finish merges all of them (flash-decoding's combine), then re-arms
    // the counter for the next launch.
    __shared__ int last;
    __threadfence();
    __syncthreads();
    int nch = (total + CH - 1) / CH;
    if (threadIdx.x == 0) last = atomicAdd(&counter[r * s.KVH + g], 1) == nch - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const float *p = part + ((size_t)r * s.KVH + g) * maxch * part_stride(D);
    for (int t = threadIdx.x; t < G * D; t += NT) {
        int gi = t / D, d = t % D;
        float M = -INFINITY;
        for (int cc = 0; cc < nch; cc++) M = fmaxf(M, __ldcg(p + (size_t)cc * part_stride(D) + gi));
        float L = 0, o = 0;
        for (int cc = 0; cc < nch; cc++) {
            const float *pc = p + (size_t)cc * part_stride(D);
            float f = expf(__ldcg(pc + gi) - M);
            L += __ldcg(pc + GMAX + gi) * f;
            o += __ldcg(pc + 2 * GMAX + gi * D + d) * f;
        }
        float v = o / L;
        size_t at = (size_t)r * s.E + (g * G + gi) * D + d;
        att[at] = v;
        if (att_h) att_h[at] = __float2half_rn(v);
    }
    if (threadIdx.x == 0) counter[r * s.KVH + g] = 0;
}

} // namespace

#endif
