// Attention over the f16 KV cache: split-K decode over the selected or causal positions, and a tiled (flash)
// kernel on tensor cores for dense causal prefill.  CPU counterparts: dsa_attn_scores_f16(_idx), softmax and
// dsa_attn_sum_f16(_idx) (engine: attention_part).
#include "cuda.h"
#include "internal.cuh"
#include "common.cuh"
#include "attn.cuh"

namespace {

// ---- attention (split-K over positions, grouped-query) --------------------------------------------------------

// Block (chunk, KV head, row): attn_chunk (attn.cuh) with 128 threads.
template <int D>
__global__ void __launch_bounds__(128) k_attn(Shape s, const float *__restrict__ q, int ldq,
                                              const RowDev *__restrict__ rows, const SeqDev *__restrict__ seqs,
                                              int layer, const int32_t *__restrict__ sel, int ldi,
                                              const int *__restrict__ cnt, float *__restrict__ part, int maxch,
                                              int *__restrict__ counter, float *__restrict__ att,
                                              __half *__restrict__ att_h) {
    attn_chunk<D, 128>(s, q, ldq, rows, seqs, layer, sel, ldi, cnt, part, maxch, counter, att, att_h, blockIdx.x,
                       blockIdx.y, blockIdx.z);
}

// ---- flash attention: PTX primitives (sm_80 and newer: compiled only there) ------------------------------------

#if __CUDA_ARCH__ >= 800
// Four 8×8 f16 matrices from shared memory; lanes 8j..8j+7 give the row addresses of matrix j (16-byte aligned).
__device__ __forceinline__ void fa_ldsm4(uint32_t r[4], const void *p) {
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}
// The same, each matrix transposed.
__device__ __forceinline__ void fa_ldsm4t(uint32_t r[4], const void *p) {
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}
// 16 bytes global → shared, asynchronously; zeros (nothing read) when !ok.
__device__ __forceinline__ void fa_cp16(void *dst, const void *src, bool ok) {
    unsigned a = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(a), "l"(src), "r"(ok ? 16 : 0) : "memory");
}
__device__ __forceinline__ void fa_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}
// Wait until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void fa_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
// (x0, x1) → f16x2 (x0 in the low half) rounded to nearest, and the rounded values added to sum.
__device__ __forceinline__ uint32_t fa_pack(float x0, float x1, float &sum) {
    __half2 h = __floats2half2_rn(x0, x1);
    float2 f = __half22float2(h);
    sum += f.x + f.y;
    return *reinterpret_cast<uint32_t *>(&h);
}
// (x0, x1) as hi + lo f16x2 pairs: hi = f16(x), lo = f16(x - hi), so hi + lo keeps ~22 bits of x.
__device__ __forceinline__ void fa_split(float x0, float x1, uint32_t &hi, uint32_t &lo) {
    __half2 h = __floats2half2_rn(x0, x1);
    float2 f = __half22float2(h);
    __half2 l = __floats2half2_rn(x0 - f.x, x1 - f.y);
    hi = *reinterpret_cast<uint32_t *>(&h), lo = *reinterpret_cast<uint32_t *>(&l);
}

#endif

// ---- flash attention (dense causal prefill) ---------------------------------------------------------------------

constexpr int FA_V = 16; // query vectors per block: one m16 tile of (row, head) pairs of one KV head
constexpr int FA_C = 32; // keys per warp per step (a chunk)

// A warp's shared memory: its K and V chunks, FA_C rows of D halves each padded by 8 halves (16 bytes, so that the
// 8 row addresses of an ldmatrix fall in distinct banks); at the end, the warp's partial result
// ([FA_V][D + 4] weighted sums, FA_V maxima, FA_V sums, f32).
__host__ __device__ constexpr int fa_ld(int D) { return D + 8; }
__host__ __device__ constexpr size_t fa_warp_bytes(int D) { return (size_t)2 * FA_C * fa_ld(D) * sizeof(uint16_t); }
static_assert(fa_warp_bytes(64) >= (FA_V * (64 + 4) + 2 * FA_V) * sizeof(float), "partials fit");
static_assert(fa_warp_bytes(128) >= (FA_V * (128 + 4) + 2 * FA_V) * sizeof(float), "partials fit");

#if __CUDA_ARCH__ >= 800
// Keys k0..k0+FA_C-1 of one KV head (rows KV halves apart) into a warp's chunk buffer; keys past pmax are zeros.
template <int D>
__device__ __forceinline__ void fa_load(uint16_t *dst, const uint16_t *src, int KV, int k0, int pmax, int lane) {
    constexpr int P = D / 8; // 16-byte pieces per key
#pragma unroll
    for (int i = lane; i < FA_C * P; i += 32) {
        int key = i / P, part = i % P;
        bool ok = k0 + key <= pmax;
        fa_cp16(dst + key * fa_ld(D) + part * 8, ok ? src + (size_t)(k0 + key) * KV + part * 8 : src, ok);
    }
}

#endif

// Block (tile of FA_V query vectors, KV head g): the vectors are the (row, query head) pairs v = r·G + i of the
// group's G heads, 16 consecutive ones, rows at positions rows[0].pos + r.  Each of the block's KS warps holds all
// 16 (q as hi + lo f16 A fragments in registers) and streams every KS-th 32-key chunk of the causal prefix
// (0..the block's last position) through its own shared memory with cp.async (K and V in separate groups, so one
// loads while the other is used): S = Q·Kᵀ (two MMAs per k-step: q's hi and lo parts), the causal mask on the
// chunks that reach past the first vector's position, online softmax in f32 (base 2, running max and sum), P
// rounded to f16, O += P·V.  The warps' partial (max, sum, O) are merged through shared memory at the end.
// CPU: dsa_attn_scores_f16, softmax and dsa_attn_sum_f16 per row and head (engine: attention_part, dense).
template <int D>
__global__ void __launch_bounds__(256) k_flash_attn(Shape s, const float *__restrict__ q, int ldq,
                                                    const RowDev *__restrict__ rows, int n,
                                                    const SeqDev *__restrict__ seqs, int layer,
                                                    float *__restrict__ att, __half *__restrict__ att_h) {
#if __CUDA_ARCH__ >= 800
    constexpr int LD = fa_ld(D), NK = D / 16, ND = D / 8, OLD = D + 4;
    constexpr float SL2 = (D == 64 ? 0.125f : 0.08838834764831845f) * 1.4426950408889634f; // log2(e)/sqrt(D)
    extern __shared__ __align__(16) unsigned char fa_smem[];
    const int KS = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
    const int G = s.H / s.KVH, g = blockIdx.y, KV = s.KVH * D, nv = n * G, v0 = blockIdx.x * FA_V;
    const RowDev r0 = rows[0];
    const SeqDev sq = seqs[r0.seq];
    const int pmax = r0.pos + min(v0 + FA_V - 1, nv - 1) / G; // the block's last position
    const int pmin = r0.pos + v0 / G;                          // keys up to it are visible to all 16 vectors
    const int va = v0 + gq, vb = va + 8;                        // this lane's vectors: fragment rows gq, gq + 8
    const int posa = va < nv ? r0.pos + va / G : pmax, posb = vb < nv ? r0.pos + vb / G : pmax;

    // q as A fragments (k-step kk: a0 row gq cols 16kk+2tq+{0,1}; a1 row gq+8; a2, a3 the same 8 columns on)
    uint32_t qh[NK][4], ql[NK][4];
    {
        const float *qa = va < nv ? q + (size_t)(va / G) * ldq + (size_t)(g * G + va % G) * D : nullptr;
        const float *qb = vb < nv ? q + (size_t)(vb / G) * ldq + (size_t)(g * G + vb % G) * D : nullptr;
#pragma unroll
        for (int kk = 0; kk < NK; kk++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float *p = (i & 1) ? qb : qa;
                int c = kk * 16 + (i >> 1) * 8 + 2 * tq;
                fa_split(p ? p[c] : 0.f, p ? p[c + 1] : 0.f, qh[kk][i], ql[kk][i]);
            }
    }

    unsigned char *wsm = fa_smem + (size_t)warp * fa_warp_bytes(D);
    uint16_t *Ks = reinterpret_cast<uint16_t *>(wsm), *Vs = Ks + FA_C * LD;
    const size_t lb = (size_t)layer * sq.n_ctx * KV + (size_t)g * D;
    const uint16_t *Kg = sq.kc + lb, *Vg = sq.vc + lb;
    const int nc = pmax / FA_C + 1; // chunks of the block's prefix

    float o[ND][4], m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
#pragma unroll
    for (int j = 0; j < ND; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    int c = warp;
    if (c < nc) fa_load<D>(Ks, Kg, KV, c * FA_C, pmax, lane);
    fa_commit();
    if (c < nc) fa_load<D>(Vs, Vg, KV, c * FA_C, pmax, lane);
    fa_commit();
    for (; c < nc; c += KS) {
        const int k0 = c * FA_C;
        fa_wait<1>(); // this chunk's K (its V may still be in flight)
        __syncwarp();
        // S = Q·Kᵀ: n-tile j holds keys k0+8j..k0+8j+7 (c0, c1: row gq, keys 8j+2tq+{0,1}; c2, c3: row gq+8)
        float sc[4][4];
#pragma unroll
        for (int j = 0; j < 4; j++) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll
        for (int kp = 0; kp < NK / 2; kp++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                uint32_t b[4]; // b0, b1 of k-step 2kp, then of 2kp+1: K rows 8j.., columns 32kp + 8·(lane/8)
                fa_ldsm4(b, Ks + (j * 8 + (lane & 7)) * LD + kp * 32 + (lane >> 3) * 8);
                mma_16816(sc[j], ql[2 * kp], b[0], b[1]);
                mma_16816(sc[j], qh[2 * kp], b[0], b[1]);
                mma_16816(sc[j], ql[2 * kp + 1], b[2], b[3]);
                mma_16816(sc[j], qh[2 * kp + 1], b[2], b[3]);
            }
        __syncwarp(); // every lane is done with Ks
        if (c + KS < nc) fa_load<D>(Ks, Kg, KV, (c + KS) * FA_C, pmax, lane);
        fa_commit();

        // online softmax in base 2; a row sees key p when p <= its position
        const bool mask = k0 + FA_C - 1 > pmin;
        float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float x = sc[j][e] * SL2;
                if (mask && k0 + j * 8 + 2 * tq + (e & 1) > (e < 2 ? posa : posb)) x = -INFINITY;
                sc[j][e] = x;
                if (e < 2) mx_a = fmaxf(mx_a, x);
                else mx_b = fmaxf(mx_b, x);
            }
#pragma unroll
        for (int sh = 1; sh < 4; sh <<= 1) {
            mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, sh));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, sh));
        }
        const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
        const float ba = mn_a == -INFINITY ? 0.f : mn_a, bb = mn_b == -INFINITY ? 0.f : mn_b; // all masked so far
        const float al_a = exp2f(m_a - ba), al_b = exp2f(m_b - bb);
        m_a = mn_a, m_b = mn_b;
        l_a *= al_a, l_b *= al_b;
#pragma unroll
        for (int j = 0; j < ND; j++) o[j][0] *= al_a, o[j][1] *= al_a, o[j][2] *= al_b, o[j][3] *= al_b;
        uint32_t p[4][2]; // P in f16 (the sums take the same rounded values): [j][0] row gq, [j][1] row gq+8
#pragma unroll
        for (int j = 0; j < 4; j++) {
            p[j][0] = fa_pack(exp2f(sc[j][0] - ba), exp2f(sc[j][1] - ba), l_a);
            p[j][1] = fa_pack(exp2f(sc[j][2] - bb), exp2f(sc[j][3] - bb), l_b);
        }

        fa_wait<1>(); // this chunk's V (the next K may still be in flight)
        __syncwarp();
        // O += P·V: S's C fragments of n-tiles 2kk, 2kk+1 are P's A fragment of k-step kk (keys 16kk..16kk+15)
#pragma unroll
        for (int kk = 0; kk < 2; kk++) {
            const uint32_t a[4] = {p[2 * kk][0], p[2 * kk][1], p[2 * kk + 1][0], p[2 * kk + 1][1]};
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                uint32_t b[4]; // transposed: b0, b1 of n-tile 2dp (V columns 16dp..), then of 2dp+1
                fa_ldsm4t(b, Vs + (kk * 16 + (lane & 7) + (lane & 8)) * LD + dp * 16 + (lane >> 4) * 8);
                mma_16816(o[2 * dp], a, b[0], b[1]);
                mma_16816(o[2 * dp + 1], a, b[2], b[3]);
            }
        }
        __syncwarp(); // every lane is done with Vs
        if (c + KS < nc) fa_load<D>(Vs, Vg, KV, (c + KS) * FA_C, pmax, lane);
        fa_commit();
    }
    fa_wait<0>();
    __syncwarp();

    // the warp's partial result into its own buffer, then all warps' merged per (vector, column)
#pragma unroll
    for (int sh = 1; sh < 4; sh <<= 1) {
        l_a += __shfl_xor_sync(0xffffffffu, l_a, sh);
        l_b += __shfl_xor_sync(0xffffffffu, l_b, sh);
    }
    float *pw = reinterpret_cast<float *>(wsm);
#pragma unroll
    for (int j = 0; j < ND; j++) {
        pw[gq * OLD + j * 8 + 2 * tq] = o[j][0], pw[gq * OLD + j * 8 + 2 * tq + 1] = o[j][1];
        pw[(gq + 8) * OLD + j * 8 + 2 * tq] = o[j][2], pw[(gq + 8) * OLD + j * 8 + 2 * tq + 1] = o[j][3];
    }
    if (tq == 0) {
        pw[FA_V * OLD + gq] = m_a, pw[FA_V * OLD + gq + 8] = m_b;
        pw[FA_V * OLD + FA_V + gq] = l_a, pw[FA_V * OLD + FA_V + gq + 8] = l_b;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < FA_V * D; e += blockDim.x) {
        const int row = e / D, d = e % D, v = v0 + row;
        if (v >= nv) break; // e only grows
        float M = -INFINITY, L = 0.f, acc = 0.f;
        for (int w = 0; w < KS; w++)
            M = fmaxf(M, reinterpret_cast<const float *>(fa_smem + (size_t)w * fa_warp_bytes(D))[FA_V * OLD + row]);
        for (int w = 0; w < KS; w++) {
            const float *pp = reinterpret_cast<const float *>(fa_smem + (size_t)w * fa_warp_bytes(D));
            const float f = exp2f(pp[FA_V * OLD + row] - M); // 0 for a warp that saw none of this row's keys
            L += pp[FA_V * OLD + FA_V + row] * f;
            acc += pp[row * OLD + d] * f;
        }
        const float val = acc / L;
        const size_t at = (size_t)(v / G) * s.E + (size_t)(g * G + v % G) * D + d;
        att[at] = val;
        if (att_h) att_h[at] = __float2half_rn(val);
    }
#else
    (void)s, (void)q, (void)ldq, (void)rows, (void)n, (void)seqs, (void)layer, (void)att, (void)att_h;
#endif
}

} // namespace

size_t cu_attention_part_floats(const Shape &s, int n, int grid_len) {
    int maxch = (grid_len + CH - 1) / CH;
    return (size_t)n * s.KVH * maxch * part_stride(s.D);
}

int cu_attention(const Shape &s, const float *q, int ldq, const RowDev *rows, int n, const SeqDev *seqs, int layer,
                 const int32_t *sel, int ldi, const int *cnt, int grid_len, float *part, int *counter, float *att,
                 __half *att_h) {
    if (s.H % s.KVH || s.H / s.KVH > GMAX) return -1;
    int maxch = (grid_len + CH - 1) / CH;
    dim3 grid(maxch, s.KVH, n);
    if (s.D == 64)
        return launch(k_attn<64>, grid, dim3(128), 0, s, q, ldq, rows, seqs, layer, sel, ldi, cnt, part, maxch, counter,
                      att, att_h);
    if (s.D == 128)
        return launch(k_attn<128>, grid, dim3(128), 0, s, q, ldq, rows, seqs, layer, sel, ldi, cnt, part, maxch, counter,
                      att, att_h);
    return -1;
}


// Warps a block of k_flash_attn<D> may have here (8 or 4), or 0 where the device would run a build of it without
// the body (below sm_80: the PTX of the oldest architecture) or has too little shared memory.  Found once; lifts
// the dynamic shared memory limit to that many warps' buffers.
template <int D> static int fa_max_warps(void) {
    static int ks = -1;
    if (ks < 0) {
        int dev = 0, major = 0, optin = 0;
        cudaFuncAttributes fa;
        ks = 0;
        if (cudaGetDevice(&dev) == cudaSuccess &&
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 8 &&
            cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) == cudaSuccess &&
            cudaFuncGetAttributes(&fa, k_flash_attn<D>) == cudaSuccess && fa.ptxVersion >= 80) {
            int k = (size_t)optin >= 8 * fa_warp_bytes(D) ? 8 : (size_t)optin >= 4 * fa_warp_bytes(D) ? 4 : 0;
            if (k && cudaFuncSetAttribute(k_flash_attn<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          (int)(k * fa_warp_bytes(D))) == cudaSuccess)
                ks = k;
        }
        if (!ks) cudaGetLastError(); // clear what a refused query left
    }
    return ks;
}

int cu_flash_attention(const Shape &s, const float *q, int ldq, const RowDev *rows, int n, const SeqDev *seqs, int layer,
                       float *att, __half *att_h) {
    if (n < 1 || s.KVH < 1 || s.H % s.KVH || s.H / s.KVH > GMAX || (s.D != 64 && s.D != 128)) return -1;
    int ksmax = s.D == 64 ? fa_max_warps<64>() : fa_max_warps<128>();
    if (!ksmax) return -1;
    int tiles = (n * (s.H / s.KVH) + FA_V - 1) / FA_V;
    // 8 warps a block (each a 32-key chunk at a time) while the grid alone would leave SMs with one block or none;
    // 4 once there are enough blocks to put several on every SM
    int ks = tiles * s.KVH >= 2 * sms() ? 4 : 8;
    if (ks > ksmax) ks = ksmax;
    dim3 grid(tiles, s.KVH), block(32 * ks);
    if (s.D == 64)
        return launch(k_flash_attn<64>, grid, block, ks * fa_warp_bytes(64), s, q, ldq, rows, n, seqs, layer, att,
                      att_h);
    return launch(k_flash_attn<128>, grid, block, ks * fa_warp_bytes(128), s, q, ldq, rows, n, seqs, layer, att,
                  att_h);
}
