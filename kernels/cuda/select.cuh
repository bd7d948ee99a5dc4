// Private to kernels/cuda: the device code of the indexer's tensor-core scores and of the register top-k, for
// their kernels (select.cu) and the persistent decode kernel (kernels.cu).
#ifndef DSA_CUDA_SELECT_CUH
#define DSA_CUDA_SELECT_CUH

#include "common.cuh"

namespace {

// ---- PTX helpers (sm_80+ device code only: the older PTX and the host pass never see them) ------------------
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800

// prmt.b32 d, x, 0, sel: each selector nibble picks a byte of x (0-3) or zero (4-7); with the nibble's 8 bit set
// the picked byte's sign bit is replicated over the whole byte.
__device__ __forceinline__ uint32_t prmt_x0(uint32_t x, uint32_t sel) {
    uint32_t d;
    asm("prmt.b32 %0, %1, 0, %2;" : "=r"(d) : "r"(x), "r"(sel));
    return d;
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
        uint2 v = __ldcg(reinterpret_cast<const uint2 *>(row + 8 * t));
        w[0] = v.x, w[1] = v.y;
    } else {
#pragma unroll
        for (int c = 0; c < D / 64; c++) {
            uint4 v = __ldcg(reinterpret_cast<const uint4 *>(row + 64 * c + 16 * t));
            w[4 * c] = v.x, w[4 * c + 1] = v.y, w[4 * c + 2] = v.z, w[4 * c + 3] = v.w;
        }
    }
}

__device__ __forceinline__ uint32_t pack_half2(__half lo, __half hi) {
    return (uint32_t)__half_as_ushort(lo) | ((uint32_t)__half_as_ushort(hi) << 16);
}

// Keys s0 .. s0 + 16·TPW - 1 of row r, by one warp (all 32 lanes; no block-wide barrier); all of its key loads
// are issued before the first MMA.
template <int D, int TPW>
__device__ void ix_scores_warp(int H, const RowDev *__restrict__ rows, const SeqDev *__restrict__ seqs, int layer,
                               const float *__restrict__ iq, const float *__restrict__ iw, float *__restrict__ out,
                               int ld, int r, int s0) {
    constexpr int NW = D / 16; // words of a key row per lane = k-steps
    const RowDev rw = rows[r];
    const SeqDev sq = seqs[rw.seq];
    const int len = rw.pos + 1;
    if (!row_selects(sq, layer, len)) return;
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
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
        scl[i] = t < 2 && s < len ? __ldcg(sq.iks + slot0 + s) : 0.0f;
    }

    // head g's query dims of this lane's share (zeros past H), its largest |q| over the quad, and 2^p
    float q[4 * NW];
    const float *qh = iq + ((size_t)r * H + g) * D;
#pragma unroll
    for (int w = 0; w < NW; w++) {
        float4 f = g < H ? __ldcg(reinterpret_cast<const float4 *>(qh + ix_word_off<D>(t, w)))
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
    const float fa = 2 * t < H ? __ldcg(iw + (size_t)r * H + 2 * t) * __uint_as_float((uint32_t)(135 - pa) << 23) : 0.f;
    const float fb =
        2 * t + 1 < H ? __ldcg(iw + (size_t)r * H + 2 * t + 1) * __uint_as_float((uint32_t)(135 - pb) << 23) : 0.f;

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
}

#endif

// ---- top-k by radix select ------------------------------------------------------------------------------------
//
// One block of NT threads per row (1024 in k_topk, 256 in the persistent decode kernel).  Keys are the scores mapped to unsigned integers that sort like the floats
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

// Exclusive prefix sum over the block (NT threads); *total gets the sum.  Called once per block.
template <int NT>
__device__ unsigned long long block_scan64(unsigned long long v, unsigned long long *wsum, unsigned long long *total) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = NT / 32;
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

// One row's top k: P keys per thread in registers (len <= P·NT), or P = 0: read from global memory.
template <int P, int NT>
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
                float4 f = __ldcg(reinterpret_cast<const float4 *>(sc + base + j));
                u[j] = rank_key(f.x), u[j + 1] = rank_key(f.y), u[j + 2] = rank_key(f.z), u[j + 3] = rank_key(f.w);
            } else {
#pragma unroll
                for (int e = 0; e < 4; e++) u[j + e] = j + e < nv ? rank_key(sc[base + j + e]) : 0u;
            }
        }
    } else {
        int per = (len + NT - 1) / NT;
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
            for (int i = tid; i < len; i += NT) {
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
    unsigned long long pre = block_scan64<NT>(((unsigned long long)gt << 32) | (unsigned)eq, sm.wsum, &tot);
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

} // namespace

#endif
