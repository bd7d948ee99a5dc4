// The lightning indexer's scores and the per-row top-k selection.  CPU counterparts: dsa_indexer_scores, dsa_topk.
#include "cuda.h"
#include "internal.cuh"
#include "common.cuh"

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

// ---- PTX helpers (sm_80+ device code only: the compute_70 PTX and the host pass never see them) ---------------
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800

// prmt.b32 d, x, 0, sel: each selector nibble picks a byte of x (0-3) or zero (4-7); with the nibble's 8 bit set
// the picked byte's sign bit is replicated over the whole byte.
__device__ __forceinline__ uint32_t prmt_x0(uint32_t x, uint32_t sel) {
    uint32_t d;
    asm("prmt.b32 %0, %1, 0, %2;" : "=r"(d) : "r"(x), "r"(sel));
    return d;
}

// c += A·B on tensor cores: A 16×16 f16 (row), B 16×8 f16 (col), c 16×8 f32, in the PTX ISA's fragment layouts.
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

#endif

// ---- the lightning indexer's scores on tensor cores (sm_80+, H <= 8) ------------------------------------------
//
// One warp scores tiles of 16 keys: C (16 keys × 8 heads, f32) = A (16 keys × 16 dims) · B (16 dims × 8 heads) per
// k-step, A the FP8 bytes placed in f16 bits (exact, 2^-8 times the value, as fp8_to_f32_unscaled) and B the query
// split into hi = f16(q·2^p) and lo = f16(q·2^p − hi), two MMAs per k-step (the product is exact to ~2^-22; 2^p
// puts each head's largest |q| in [2^14, 2^15) so that neither part leaves f16's normal range).  The dot product may
// visit the dims in any order as long as A and B agree: lane (g = lane/4, t = lane%4) loads its share of key rows g
// and g+8 with 16-byte loads (word w of the share at byte ix_word_off(t, w)), and k-step w takes word w: logical
// columns 2t, 2t+1 of the k-step are the word's bytes 0, 1 and columns 2t+8, 2t+9 its bytes 2, 3.  B is built from
// the same dims of q.  C's quad (lanes 4g..4g+3) holds heads 2t, 2t+1 of keys g and g+8: ReLU, weights, a sum over
// the quad, the key's scale.

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
// Byte offset in a key row of word w (4 bytes) of lane t's share.  Loads: D = 32, 8 bytes at 8t; D >= 64, 16 bytes
// at 16t of every 64.
template <int D>
__device__ __forceinline__ int ix_word_off(int t, int w) {
    return D >= 64 ? (w >> 2) * 64 + t * 16 + (w & 3) * 4 : t * 8 + w * 4;
}

// FP8 e4m3 bytes 0, 1 (lo) or 2, 3 (hi) of x → f16x2 (first byte in the low half) with the bits placed as
// fp8_to_f32_unscaled does: sign to bit 15, the other seven bits to bits 13..7.  prmt spreads the two bytes into
// the halves' low bytes, each followed by a byte of its sign; << 7 moves that sign byte's bit 0 to bit 15; the mask
// drops the byte's own sign (now bit 14) and what spilled over from the lower half.
__device__ __forceinline__ uint32_t fp8x2_lo_to_f16x2(uint32_t x) { return (prmt_x0(x, 0x9180u) << 7) & 0xBF80BF80u; }
__device__ __forceinline__ uint32_t fp8x2_hi_to_f16x2(uint32_t x) { return (prmt_x0(x, 0xB3A2u) << 7) & 0xBF80BF80u; }

// This lane's share (D/4 bytes as D/16 words) of one key row; zeros past len.
template <int D>
__device__ __forceinline__ void ix_load_share(const uint8_t *__restrict__ row, int t, bool valid,
                                              uint32_t (&w)[D / 16]) {
    if (!valid) {
#pragma unroll
        for (int i = 0; i < D / 16; i++) w[i] = 0;
        return;
    }
    if constexpr (D == 32) {
        uint2 v = __ldg(reinterpret_cast<const uint2 *>(row + 8 * t));
        w[0] = v.x, w[1] = v.y;
    } else {
#pragma unroll
        for (int c = 0; c < D / 64; c++) {
            uint4 v = __ldg(reinterpret_cast<const uint4 *>(row + 64 * c + 16 * t));
            w[4 * c] = v.x, w[4 * c + 1] = v.y, w[4 * c + 2] = v.z, w[4 * c + 3] = v.w;
        }
    }
}

__device__ __forceinline__ uint32_t pack_half2(__half lo, __half hi) {
    return (uint32_t)__half_as_ushort(lo) | ((uint32_t)__half_as_ushort(hi) << 16);
}

#endif

// Each warp scores TPW tiles of 16 keys from key (blockIdx.x·IX_WARPS + warp)·16·TPW of row blockIdx.y; all of its
// key loads are issued before the first MMA.
template <int D, int TPW>
__global__ void __launch_bounds__(IX_WARPS * 32) k_index_scores_tc(int H, const RowDev *__restrict__ rows,
                                                                   const SeqDev *__restrict__ seqs, int layer,
                                                                   const float *__restrict__ iq,
                                                                   const float *__restrict__ iw,
                                                                   float *__restrict__ out, int ld) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr int NW = D / 16; // words of a key row per lane = k-steps
    const int r = blockIdx.y;
    const RowDev rw = rows[r];
    const SeqDev sq = seqs[rw.seq];
    const int len = rw.pos + 1;
    if (!row_selects(sq, layer, len)) return;
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int s0 = (blockIdx.x * IX_WARPS + (threadIdx.x >> 5)) * TPW * 16;
    if (s0 >= len) return; // the whole warp
    const size_t slot0 = (size_t)layer * sq.n_ctx;
    const uint8_t *kc = sq.ik + slot0 * D;

    uint32_t ka[TPW][NW], kb[TPW][NW]; // keys s0 + 16i + g and s0 + 16i + g + 8
#pragma unroll
    for (int i = 0; i < TPW; i++) {
        int sa = s0 + 16 * i + g, sb = sa + 8;
        ix_load_share<D>(kc + (size_t)sa * D, t, sa < len, ka[i]);
        ix_load_share<D>(kc + (size_t)sb * D, t, sb < len, kb[i]);
    }
    float scl[TPW]; // lane t = 0 writes key g of each tile, t = 1 key g + 8
#pragma unroll
    for (int i = 0; i < TPW; i++) {
        int s = s0 + 16 * i + g + 8 * (t & 1);
        scl[i] = t < 2 && s < len ? __ldg(sq.iks + slot0 + s) : 0.0f;
    }

    // head g's query dims of this lane's share (zeros past H), its largest |q| over the quad, and 2^p
    float q[4 * NW];
    const float *qh = iq + ((size_t)r * H + g) * D;
#pragma unroll
    for (int w = 0; w < NW; w++) {
        float4 f = g < H ? __ldg(reinterpret_cast<const float4 *>(qh + ix_word_off<D>(t, w)))
                         : make_float4(0.f, 0.f, 0.f, 0.f);
        q[4 * w] = f.x, q[4 * w + 1] = f.y, q[4 * w + 2] = f.z, q[4 * w + 3] = f.w;
    }
    float amax = 0;
#pragma unroll
    for (int i = 0; i < 4 * NW; i++) amax = fmaxf(amax, fabsf(q[i]));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    // amax in [2^(E-127), 2^(E-126)) for a normal amax with biased exponent E: p = 141 - E
    int ex = (int)(__float_as_uint(amax) >> 23);
    int p = amax > 0 && ex < 255 ? min(max(141 - ex, -100), 100) : 0;
    const float sp = __uint_as_float((uint32_t)(127 + p) << 23);
    uint32_t bh[NW][2], bl[NW][2];
#pragma unroll
    for (int w = 0; w < NW; w++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float x0 = q[4 * w + 2 * h] * sp, x1 = q[4 * w + 2 * h + 1] * sp;
            __half h0 = __float2half_rn(x0), h1 = __float2half_rn(x1);
            bh[w][h] = pack_half2(h0, h1);
            bl[w][h] = pack_half2(__float2half_rn(x0 - __half2float(h0)), __float2half_rn(x1 - __half2float(h1)));
        }
    // this lane's C columns are heads 2t and 2t+1: weight · 2^(8 - p) of each (lane 4n holds head n's p)
    const int pa = __shfl_sync(0xffffffffu, p, 8 * t), pb = __shfl_sync(0xffffffffu, p, 8 * t + 4);
    const float fa = 2 * t < H ? __ldg(iw + (size_t)r * H + 2 * t) * __uint_as_float((uint32_t)(135 - pa) << 23) : 0.f;
    const float fb =
        2 * t + 1 < H ? __ldg(iw + (size_t)r * H + 2 * t + 1) * __uint_as_float((uint32_t)(135 - pb) << 23) : 0.f;

    float *o = out + (size_t)r * ld;
#pragma unroll
    for (int i = 0; i < TPW; i++) {
        if (s0 + 16 * i >= len) break; // the whole warp
        float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int w = 0; w < NW; w++) {
            const uint32_t a[4] = {fp8x2_lo_to_f16x2(ka[i][w]), fp8x2_lo_to_f16x2(kb[i][w]),
                                   fp8x2_hi_to_f16x2(ka[i][w]), fp8x2_hi_to_f16x2(kb[i][w])};
            mma_16816(c, a, bh[w][0], bh[w][1]);
            mma_16816(c, a, bl[w][0], bl[w][1]);
        }
        float va = fa * fmaxf(c[0], 0.f) + fb * fmaxf(c[1], 0.f); // key g
        float vb = fa * fmaxf(c[2], 0.f) + fb * fmaxf(c[3], 0.f); // key g + 8
        va += __shfl_xor_sync(0xffffffffu, va, 1);
        vb += __shfl_xor_sync(0xffffffffu, vb, 1);
        va += __shfl_xor_sync(0xffffffffu, va, 2);
        vb += __shfl_xor_sync(0xffffffffu, vb, 2);
        int s = s0 + 16 * i + g + 8 * (t & 1);
        if (t < 2 && s < len) o[s] = scl[i] * (t ? vb : va);
    }
#else
    (void)H, (void)rows, (void)seqs, (void)layer, (void)iq, (void)iw, (void)out, (void)ld;
#endif
}

// ---- top-k by radix select ------------------------------------------------------------------------------------
//
// One block of 1024 threads per row.  Keys are the scores mapped to unsigned integers that sort like the floats
// (NaN lowest, -0 == +0); rows of up to 16K keys are read once into registers (thread t holds keys [tP, tP+P)),
// longer rows are re-read from global memory in every pass.  Up to four 8-bit passes find the class of keys that
// holds the k-th largest (a histogram by shared atomics; warp 0 finds the bin by a suffix sum over lanes); a pass
// whose bin holds exactly the keys still needed ends the search early (all of them are taken).  Then one block scan
// of (above, equal) counts gives each thread its place in the output: the thread ranges are contiguous and in
// order, so the output is ascending; of the keys in the class the last `need` ones are taken (ties to the later
// index).

struct TopkShared {
    alignas(16) unsigned hist[2][256]; // one pass counts into one while the other is cleared
    unsigned long long wsum[32];
    unsigned pref;
    int need, done;
};

__device__ __forceinline__ unsigned rank_key(float f) {
    if (f == 0) f = 0.0f;
    unsigned u = __float_as_uint(f);
    if (f != f) return 0;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Warp 0, once hist holds the counts of digit (key >> shift) & 255 of the keys that match pref above it: the bin of
// the need-th largest of them, as sm.pref (pref with the bin's digit), sm.need (how many keys of that bin are
// still needed) and sm.done (the bin holds exactly that many).  Lane l sums bins 8l..8l+7; the suffix sum over
// lanes finds the lane, the lane walks its bins from the top.
__device__ void topk_pick_bin(const unsigned *hist, unsigned pref, int need, int shift, TopkShared &sm) {
    const int lane = threadIdx.x & 31;
    const uint4 *h4 = reinterpret_cast<const uint4 *>(hist);
    const uint4 v0 = h4[2 * lane], v1 = h4[2 * lane + 1];
    const unsigned h[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
    unsigned sum = 0;
#pragma unroll
    for (int j = 0; j < 8; j++) sum += h[j];
    unsigned suf = sum; // keys in bins >= 8·lane
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        unsigned y = __shfl_down_sync(0xffffffffu, suf, o);
        if (lane + o < 32) suf += y;
    }
    // the highest lane whose suffix reaches need (lane 0's is every counted key, which is at least need)
    unsigned ball = __ballot_sync(0xffffffffu, suf >= (unsigned)need);
    if (lane == 31 - __clz(ball)) {
        unsigned c = suf - sum; // keys in the bins above this lane's
        int b = 0;
        unsigned hb = h[0];
#pragma unroll
        for (int j = 7; j >= 0; j--) {
            if (c + h[j] >= (unsigned)need) {
                b = j, hb = h[j];
                break;
            }
            c += h[j];
        }
        sm.pref = pref | ((unsigned)(8 * lane + b) << shift);
        sm.need = need - (int)c;
        sm.done = hb == (unsigned)(need - (int)c);
    }
}

// Exclusive prefix sum over the block (TOPK_THREADS threads); *total gets the sum.  Called once per block.
__device__ unsigned long long block_scan64(unsigned long long v, unsigned long long *wsum, unsigned long long *total) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = TOPK_THREADS / 32;
    unsigned long long x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        unsigned long long y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) wsum[w] = x;
    __syncthreads();
    if (w == 0) {
        unsigned long long s = lane < nw ? wsum[lane] : 0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            unsigned long long y = __shfl_up_sync(0xffffffffu, s, o);
            if (lane >= o) s += y;
        }
        wsum[lane] = s; // inclusive over warps
    }
    __syncthreads();
    *total = wsum[nw - 1];
    return x - v + (w ? wsum[w - 1] : 0);
}

// One row's top k: P keys per thread in registers (len <= P·TOPK_THREADS), or P = 0: read from global memory.
template <int P>
__device__ void topk_row(const float *__restrict__ sc, int len, int k, int32_t *__restrict__ out,
                         int *__restrict__ cnt, TopkShared &sm) {
    const int tid = threadIdx.x;
    unsigned u[P > 0 ? P : 1];
    int base, nv; // this thread's keys are [base, base + nv)
    if constexpr (P > 0) {
        base = tid * P;
        nv = min(max(len - base, 0), P);
        const bool vec = (reinterpret_cast<uintptr_t>(sc) & 15) == 0;
#pragma unroll
        for (int j = 0; j < P; j += 4) {
            if (vec && j + 4 <= nv) {
                float4 f = __ldg(reinterpret_cast<const float4 *>(sc + base + j));
                u[j] = rank_key(f.x), u[j + 1] = rank_key(f.y), u[j + 2] = rank_key(f.z), u[j + 3] = rank_key(f.w);
            } else {
#pragma unroll
                for (int e = 0; e < 4; e++) u[j + e] = j + e < nv ? rank_key(sc[base + j + e]) : 0u;
            }
        }
    } else {
        int per = (len + TOPK_THREADS - 1) / TOPK_THREADS;
        base = tid * per;
        nv = min(max(len - base, 0), per);
        u[0] = 0;
    }

    if (tid < 256) sm.hist[0][tid] = 0;
    __syncthreads();
    unsigned pref = 0, mask = 0;
    int need = k;
    for (int pass = 0; pass < 4; pass++) {
        const int shift = 24 - 8 * pass;
        unsigned *h = sm.hist[pass & 1];
        if (tid < 256) sm.hist[(pass + 1) & 1][tid] = 0; // last read before the previous pass's second barrier
        if constexpr (P > 0) {
#pragma unroll
            for (int j = 0; j < P; j++)
                if (j < nv && (u[j] & mask) == pref) atomicAdd(&h[(u[j] >> shift) & 255u], 1u);
        } else {
            for (int i = tid; i < len; i += TOPK_THREADS) {
                unsigned x = rank_key(sc[i]);
                if ((x & mask) == pref) atomicAdd(&h[(x >> shift) & 255u], 1u);
            }
        }
        __syncthreads();
        if (tid < 32) topk_pick_bin(h, pref, need, shift, sm);
        __syncthreads();
        pref = sm.pref, need = sm.need, mask |= 255u << shift;
        if (sm.done) break;
    }

    // the selection: every key whose class (its bits under mask) is above pref, and the last `need` of class pref
    int gt = 0, eq = 0;
    if constexpr (P > 0) {
#pragma unroll
        for (int j = 0; j < P; j++)
            if (j < nv) {
                unsigned m = u[j] & mask;
                gt += m > pref;
                eq += m == pref;
            }
    } else {
        for (int i = base; i < base + nv; i++) {
            unsigned m = rank_key(sc[i]) & mask;
            gt += m > pref;
            eq += m == pref;
        }
    }
    unsigned long long tot;
    unsigned long long pre = block_scan64(((unsigned long long)gt << 32) | (unsigned)eq, sm.wsum, &tot);
    // of the class, the first `drop` keys (in index order) stay out
    const int eq_before = (int)(unsigned)pre, drop = (int)(unsigned)tot - need;
    int off = (int)(pre >> 32) + max(eq_before - drop, 0);
    int skip = min(max(drop - eq_before, 0), eq);
    if constexpr (P > 0) {
#pragma unroll
        for (int j = 0; j < P; j++)
            if (j < nv) {
                unsigned m = u[j] & mask;
                if (m > pref) out[off++] = base + j;
                else if (m == pref) {
                    if (skip > 0) skip--;
                    else out[off++] = base + j;
                }
            }
    } else {
        for (int i = base; i < base + nv; i++) {
            unsigned m = rank_key(sc[i]) & mask;
            if (m > pref) out[off++] = i;
            else if (m == pref) {
                if (skip > 0) skip--;
                else out[off++] = i;
            }
        }
    }
    if (tid == 0) *cnt = (int)(tot >> 32) + need;
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
    if (len <= 4 * TOPK_THREADS) topk_row<4>(sc, len, sq.topk, out, cnt + r, sm);
    else if (len <= 8 * TOPK_THREADS) topk_row<8>(sc, len, sq.topk, out, cnt + r, sm);
    else if (len <= 16 * TOPK_THREADS) topk_row<16>(sc, len, sq.topk, out, cnt + r, sm);
    else topk_row<0>(sc, len, sq.topk, out, cnt + r, sm);
}

// ---- the shipped top-k (opt out of the new one above until a GPU run has checked it) --------------------------


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
