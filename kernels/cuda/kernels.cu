// The CUDA kernels of the forward pass.  Each one names its plain-C counterpart in kernels/cpu or engine/, which
// tests/test_cuda.c compares it with.  Numerics follow the CPU code where that is cheap (RoPE angles in double, the
// indexer key path with explicit round-to-nearest products so that nvcc contracts nothing into an FMA the CPU
// does not have); matrix products and reductions sum in a different order, so they agree to rounding, not to bits.
#include "cuda.h"
#include "internal.cuh"

#include <math.h>

namespace {

constexpr int CH = 64;     // attention positions per block (split-K chunk)
constexpr int GMAX = 8;    // query heads per KV head, at most
constexpr int TOPK_THREADS = 1024;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ double block_sum_d(double v, double *red) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads(); // red may still be read from a previous call
    if (lane == 0) red[w] = v;
    __syncthreads();
    double t = 0;
    for (int i = 0; i < nw; i++) t += red[i];
    return t;
}

__device__ __forceinline__ bool row_selects(const SeqDev &sq, int layer, int len) {
    return sq.sparse && sq.ik && layer >= sq.dense_layers && len > sq.topk;
}

// FP8 e4m3 → f32: the byte's bits placed in an f16 and scaled by 2^8 (exact).  CPU: dsa_fp8_to_f32.
__device__ __forceinline__ float fp8_to_f32_unscaled(unsigned b) {
    unsigned short h = (unsigned short)(((b & 0x80u) << 8) | ((b & 0x7Fu) << 7));
    return __half2float(__ushort_as_half(h)); // times 256 = the value
}

// f32 → FP8 e4m3, saturating, round to nearest even.  CPU: dsa_f32_to_fp8 (bit for bit).
__device__ uint8_t f32_to_fp8(float x) {
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (!(a == a)) return 0;
    if (a >= 448.0f) return sign | 0x7E;
    if (a < 0x1p-6f) return sign | (uint8_t)rintf(a * 512.0f);
    int E;
    float m = frexpf(a, &E);
    int ex = E - 1;
    int mant = (int)rintf(__fmul_rn(__fsub_rn(2.0f * m, 1.0f), 8.0f));
    if (mant == 8) mant = 0, ex++;
    int code = ((ex + 7) << 3) | mant;
    if (code > 0x7E) code = 0x7E;
    return sign | (uint8_t)code;
}

// ---- matrix × few vectors -------------------------------------------------------------------------------------

template <typename WT> struct WLoad;
template <> struct WLoad<__half> {
    static constexpr int N = 8; // elements per 16-byte load
    __device__ static void get(const __half *p, float *f) {
        uint4 u = *reinterpret_cast<const uint4 *>(p);
        const __half2 *h = reinterpret_cast<const __half2 *>(&u);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 t = __half22float2(h[i]);
            f[2 * i] = t.x, f[2 * i + 1] = t.y;
        }
    }
};
template <> struct WLoad<float> {
    static constexpr int N = 4;
    __device__ static void get(const float *p, float *f) {
        float4 u = *reinterpret_cast<const float4 *>(p);
        f[0] = u.x, f[1] = u.y, f[2] = u.z, f[3] = u.w;
    }
};

// One warp per output row (grid-stride), lanes across the columns with 16-byte loads; the n <= R input rows sit
// in shared memory when RMSNorm is fused (norm != NULL), else they are read through the cache.  SWIGLU: rows is
// F, W holds 2F rows (gate, then up), and the output is silu(gate)·up.  CPU: dsa_matmul + rmsnorm.
template <int R, typename WT, bool SWIGLU>
__global__ void __launch_bounds__(256) k_gemv(const WT *__restrict__ W, int rows, int cols,
                                              const float *__restrict__ X, int n, const float *__restrict__ norm,
                                              float eps, const float *__restrict__ bias, float *__restrict__ Y,
                                              int accumulate) {
    extern __shared__ float xs[];
    __shared__ double red[32];
    const float *xin = X;
    if (norm) {
        for (int r = 0; r < n; r++) {
            double ss = 0;
            for (int c = threadIdx.x; c < cols; c += blockDim.x) {
                double v = X[(size_t)r * cols + c];
                ss += v * v;
            }
            ss = block_sum_d(ss, red);
            float s = (float)(1.0 / sqrt(ss / cols + eps));
            for (int c = threadIdx.x; c < cols; c += blockDim.x)
                xs[r * cols + c] = __fmul_rn(__fmul_rn(X[(size_t)r * cols + c], s), norm[c]);
        }
        __syncthreads();
        xin = xs;
    }
    constexpr int N = WLoad<WT>::N;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = blockIdx.x * 8 + warp; o < rows; o += gridDim.x * 8) {
        float acc[R], acc2[R];
#pragma unroll
        for (int r = 0; r < R; r++) acc[r] = acc2[r] = 0;
        const WT *w = W + (size_t)o * cols;
        const WT *w2 = SWIGLU ? W + (size_t)(o + rows) * cols : w;
#pragma unroll 2
        for (int c = lane * N; c < cols; c += 32 * N) {
            float wf[N], wf2[N];
            WLoad<WT>::get(w + c, wf);
            if (SWIGLU) WLoad<WT>::get(w2 + c, wf2);
#pragma unroll
            for (int r = 0; r < R; r++) {
                if (r < n) {
                    const float *x = xin + (size_t)r * cols + c;
#pragma unroll
                    for (int i = 0; i < N; i++) {
                        acc[r] += wf[i] * x[i];
                        if (SWIGLU) acc2[r] += wf2[i] * x[i];
                    }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r >= n) break;
            float a = warp_sum(acc[r]);
            if (SWIGLU) {
                float u = warp_sum(acc2[r]);
                a = a / (1.0f + expf(-a)) * u;
            }
            if (lane == 0) {
                if (bias) a += bias[o];
                float *y = Y + (size_t)r * rows + o;
                *y = accumulate ? *y + a : a;
            }
        }
    }
}

int g_sms = 0;
int sms(void) {
    if (!g_sms) {
        int dev = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&g_sms, cudaDevAttrMultiProcessorCount, dev);
        if (g_sms <= 0) g_sms = 32;
    }
    return g_sms;
}

template <typename WT, bool SWIGLU, int R>
int launch_gemv_r(const WT *W, int rows, int cols, const float *X, int n, const float *norm, float eps,
                  const float *bias, float *Y, int accumulate) {
    size_t smem = norm ? (size_t)n * cols * sizeof(float) : 0;
    static size_t smem_set = 48 * 1024;
    if (smem > smem_set) {
        if (cudaFuncSetAttribute(k_gemv<R, WT, SWIGLU>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) !=
            cudaSuccess)
            return -1;
        smem_set = smem;
    }
    int blocks = (rows + 7) / 8, cap = sms() * 4;
    if (blocks > cap) blocks = cap;
    k_gemv<R, WT, SWIGLU><<<blocks, 256, smem, dsa_cu_stream()>>>(W, rows, cols, X, n, norm, eps, bias, Y, accumulate);
    return cudaPeekAtLastError() == cudaSuccess ? 0 : -1;
}

template <typename WT, bool SWIGLU>
int launch_gemv(const WT *W, int rows, int cols, const float *X, int n, const float *norm, float eps,
                const float *bias, float *Y, int accumulate) {
    if (n < 1 || n > 16 || cols % WLoad<WT>::N) return -1;
    if (n == 1) return launch_gemv_r<WT, SWIGLU, 1>(W, rows, cols, X, n, norm, eps, bias, Y, accumulate);
    if (n == 2) return launch_gemv_r<WT, SWIGLU, 2>(W, rows, cols, X, n, norm, eps, bias, Y, accumulate);
    if (n <= 4) return launch_gemv_r<WT, SWIGLU, 4>(W, rows, cols, X, n, norm, eps, bias, Y, accumulate);
    if (n <= 8) return launch_gemv_r<WT, SWIGLU, 8>(W, rows, cols, X, n, norm, eps, bias, Y, accumulate);
    return launch_gemv_r<WT, SWIGLU, 16>(W, rows, cols, X, n, norm, eps, bias, Y, accumulate);
}

// ---- small per-row kernels ------------------------------------------------------------------------------------

__global__ void k_embed(const __half *__restrict__ embd, int E, const RowDev *__restrict__ rows,
                        float *__restrict__ x) {
    int r = blockIdx.x;
    const __half *e = embd + (size_t)rows[r].tok * E;
    for (int i = threadIdx.x; i < E; i += blockDim.x) x[(size_t)r * E + i] = __half2float(e[i]);
}

// RMSNorm of each row into f16 (for cuBLAS) and optionally f32.  CPU: the engine's rmsnorm.
__global__ void k_rmsnorm_h(const float *__restrict__ x, const float *__restrict__ w, int E, float eps,
                            __half *__restrict__ xh, float *__restrict__ xn) {
    __shared__ double red[32];
    int r = blockIdx.x;
    const float *xr = x + (size_t)r * E;
    double ss = 0;
    for (int i = threadIdx.x; i < E; i += blockDim.x) ss += (double)xr[i] * xr[i];
    ss = block_sum_d(ss, red);
    float s = (float)(1.0 / sqrt(ss / E + eps));
    for (int i = threadIdx.x; i < E; i += blockDim.x) {
        float v = __fmul_rn(__fmul_rn(xr[i], s), w[i]);
        xh[(size_t)r * E + i] = __float2half_rn(v);
        if (xn) xn[(size_t)r * E + i] = v;
    }
}

__global__ void k_swiglu_h(const float *__restrict__ gu, int F, __half *__restrict__ hb) {
    int r = blockIdx.y;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= F) return;
    float g = gu[(size_t)r * 2 * F + i], u = gu[(size_t)r * 2 * F + F + i];
    hb[(size_t)r * F + i] = __float2half_rn(g / (1.0f + expf(-g)) * u);
}

__global__ void k_gather(const float *__restrict__ x, int E, const int *__restrict__ which, float *__restrict__ out) {
    int r = blockIdx.x;
    for (int i = threadIdx.x; i < E; i += blockDim.x) out[(size_t)r * E + i] = x[(size_t)which[r] * E + i];
}

// Biases, RoPE on q and k (angles in double, as the CPU), and the new K/V rows into the sequence's f16 cache.
// CPU: the per-token loop of eval_batch (rope, dsa_f32_to_f16_row).
__global__ void k_rope_kv(Shape s, float *__restrict__ qkv, const float *__restrict__ bias,
                          const RowDev *__restrict__ rows, const SeqDev *__restrict__ seqs, int layer,
                          const float *__restrict__ freq) {
    __shared__ float cs[256], sn[256];
    int r = blockIdx.x;
    RowDev rw = rows[r];
    SeqDev sq = seqs[rw.seq];
    int KV = s.KVH * s.D, W = s.E + 2 * KV, half = s.rope_dim / 2;
    float *v = qkv + (size_t)r * W;
    if (bias) {
        for (int i = threadIdx.x; i < W; i += blockDim.x) v[i] += bias[i];
        __syncthreads();
    }
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        double a = (double)rw.pos * freq[i];
        cs[i] = (float)cos(a);
        sn[i] = (float)sin(a);
    }
    __syncthreads();
    int heads = s.H + s.KVH;
    for (int t = threadIdx.x; t < heads * half; t += blockDim.x) {
        int h = t / half, i = t % half;
        float *x = v + (h < s.H ? h * s.D : s.E + (h - s.H) * s.D);
        int a = s.rope_neox ? i : 2 * i, b = s.rope_neox ? i + half : 2 * i + 1;
        float x0 = x[a], x1 = x[b];
        x[a] = __fsub_rn(__fmul_rn(x0, cs[i]), __fmul_rn(x1, sn[i]));
        x[b] = __fadd_rn(__fmul_rn(x0, sn[i]), __fmul_rn(x1, cs[i]));
    }
    __syncthreads();
    size_t slot = ((size_t)layer * sq.n_ctx + rw.pos) * KV;
    for (int i = threadIdx.x; i < KV; i += blockDim.x) {
        sq.kc[slot + i] = __half_as_ushort(__float2half_rn(v[s.E + i]));
        sq.vc[slot + i] = __half_as_ushort(__float2half_rn(v[s.E + KV + i]));
    }
}

// The indexer's q, w and FP8 key of each row from its projection.  CPU: dsa_indexer_project + dsa_fp8_quant_row.
__global__ void k_ix_project(Shape s, const float *__restrict__ proj, const float *__restrict__ ln,
                             const float *__restrict__ freq, const RowDev *__restrict__ rows,
                             const SeqDev *__restrict__ seqs, int layer, float *__restrict__ iq,
                             float *__restrict__ iw) {
    extern __shared__ float buf[]; // (H+1)·d
    __shared__ double red[32];
    __shared__ float cs[128], sn[128];
    int r = blockIdx.x, H = s.ixH, d = s.ixd, half = s.ix_rope_dim / 2, nv = H + 1;
    RowDev rw = rows[r];
    SeqDev sq = seqs[rw.seq];
    const float *p = proj + (size_t)r * s.ix_rows;
    for (int i = threadIdx.x; i < nv * d; i += blockDim.x) buf[i] = p[i];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        double a = (double)rw.pos * freq[i];
        cs[i] = (float)cos(a);
        sn[i] = (float)sin(a);
    }
    __syncthreads();
    // LayerNorm of the key (vector H), statistics in double as on the CPU
    float *k = buf + H * d;
    double sum = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) sum += k[i];
    double mean = block_sum_d(sum, red) / d;
    double var = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) var += (k[i] - mean) * (k[i] - mean);
    var = block_sum_d(var, red);
    float rs = (float)(1.0 / sqrt(var / d + s.ix_eps));
    const float *g = ln + (size_t)layer * 2 * d, *b = g + d;
    __syncthreads();
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        k[i] = __fadd_rn(__fmul_rn(__fmul_rn((float)(k[i] - mean), rs), g[i]), b[i]);
    __syncthreads();
    for (int t = threadIdx.x; t < nv * half; t += blockDim.x) {
        float *x = buf + (t / half) * d;
        int i = t % half;
        float x0 = x[i], x1 = x[i + half];
        x[i] = __fsub_rn(__fmul_rn(x0, cs[i]), __fmul_rn(x1, sn[i]));
        x[i + half] = __fadd_rn(__fmul_rn(x0, sn[i]), __fmul_rn(x1, cs[i]));
    }
    __syncthreads();
    for (int h = 1; h < d; h <<= 1) { // Hadamard butterflies, stage by stage as dsa_hadamard
        for (int t = threadIdx.x; t < nv * d / 2; t += blockDim.x) {
            float *x = buf + (t / (d / 2)) * d;
            int u = t % (d / 2), j = (u / h) * 2 * h + u % h;
            float a = x[j], c = x[j + h];
            x[j] = __fadd_rn(a, c);
            x[j + h] = __fsub_rn(a, c);
        }
        __syncthreads();
    }
    float hs = 1.0f / sqrtf((float)d);
    for (int i = threadIdx.x; i < nv * d; i += blockDim.x) buf[i] = __fmul_rn(buf[i], hs);
    __syncthreads();
    for (int i = threadIdx.x; i < H * d; i += blockDim.x) iq[(size_t)r * H * d + i] = buf[i];
    float ws = 1.0f / sqrtf((float)H * d);
    for (int j = threadIdx.x; j < H; j += blockDim.x) iw[(size_t)r * H + j] = __fmul_rn(p[nv * d + j], ws);
    if (!sq.ik) return;
    // FP8 key with a per-token scale
    __shared__ float am[32];
    float amax = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) amax = fmaxf(amax, fabsf(k[i]));
    amax = warp_max(amax);
    if ((threadIdx.x & 31) == 0) am[threadIdx.x >> 5] = amax;
    __syncthreads();
    amax = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) amax = fmaxf(amax, am[w]);
    size_t slot = (size_t)layer * sq.n_ctx + rw.pos;
    uint8_t *q8 = sq.ik + slot * d;
    if (!(amax > 0) || !isfinite(amax)) {
        for (int i = threadIdx.x; i < d; i += blockDim.x) q8[i] = 0;
        if (threadIdx.x == 0) sq.iks[slot] = 0;
        return;
    }
    float inv = 448.0f / amax;
    for (int i = threadIdx.x; i < d; i += blockDim.x) q8[i] = f32_to_fp8(__fmul_rn(k[i], inv));
    if (threadIdx.x == 0) sq.iks[slot] = amax / 448.0f;
}

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

// ---- attention (split-K over positions, grouped-query) --------------------------------------------------------

// Partial results of one (row, KV head, chunk): G maxima, G sums, G·D weighted values.
__host__ __device__ constexpr int part_stride(int D) { return 2 * GMAX + GMAX * D; }

// Block (chunk, KV head, row): scores of the group's query heads over CH positions (the row's selected positions,
// or its causal prefix), their softmax within the chunk, and the weighted sum of V.  CPU: attention_part with
// dsa_attn_scores_f16(_idx), softmax and dsa_attn_sum_f16(_idx).
template <int D>
__global__ void __launch_bounds__(128) k_attn(Shape s, const float *__restrict__ q, int ldq,
                                              const RowDev *__restrict__ rows, const SeqDev *__restrict__ seqs,
                                              int layer, const int32_t *__restrict__ sel, int ldi,
                                              const int *__restrict__ cnt, float *__restrict__ part, int maxch) {
    constexpr int LPP = D / 8, PPW = 32 / LPP, NH = 128 / D;
    __shared__ int pos_s[CH];
    __shared__ float sc[GMAX][CH];
    __shared__ float red[NH][GMAX][D];
    __shared__ float ml[2][GMAX];
    int c = blockIdx.x, g = blockIdx.y, r = blockIdx.z;
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
    for (int i = threadIdx.x; i < np; i += blockDim.x) pos_s[i] = nsel >= 0 ? sel[(size_t)r * ldi + p0 + i] : p0 + i;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane / LPP, li = lane % LPP;
    float scale = 1.0f / sqrtf((float)D);
    float qr[GMAX][8];
#pragma unroll
    for (int gi = 0; gi < GMAX; gi++)
#pragma unroll
        for (int e = 0; e < 8; e++) qr[gi][e] = gi < G ? q[(size_t)r * ldq + (g * G + gi) * D + li * 8 + e] : 0.f;
    __syncthreads();
    for (int base = warp * PPW; base < np; base += 4 * PPW) {
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
    for (int gi = warp; gi < G; gi += 4) {
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
}

// Merge the chunks of each (row, query head): the flash-decoding combine.
template <int D>
__global__ void k_attn_combine(Shape s, const RowDev *__restrict__ rows, const int *__restrict__ cnt,
                               const float *__restrict__ part, int maxch, float *__restrict__ att,
                               __half *__restrict__ att_h) {
    int h = blockIdx.x, r = blockIdx.y, dd = threadIdx.x;
    int G = s.H / s.KVH, g = h / G, gi = h % G;
    int len = rows[r].pos + 1;
    int nsel = cnt ? cnt[r] : -1;
    int total = nsel >= 0 ? nsel : len;
    int nch = (total + CH - 1) / CH;
    const float *p = part + ((size_t)r * s.KVH + g) * maxch * part_stride(D);
    float M = -INFINITY;
    for (int c = 0; c < nch; c++) M = fmaxf(M, p[(size_t)c * part_stride(D) + gi]);
    float L = 0, o = 0;
    for (int c = 0; c < nch; c++) {
        const float *pc = p + (size_t)c * part_stride(D);
        float f = expf(pc[gi] - M);
        L += pc[GMAX + gi] * f;
        o += pc[2 * GMAX + gi * D + dd] * f;
    }
    float v = o / L;
    att[(size_t)r * s.E + h * D + dd] = v;
    if (att_h) att_h[(size_t)r * s.E + h * D + dd] = __float2half_rn(v);
}

__global__ void k_fp8_quant(int d, const float *__restrict__ x, uint8_t *__restrict__ q, float *__restrict__ scale) {
    int r = blockIdx.x;
    __shared__ float am[32];
    const float *xr = x + (size_t)r * d;
    float a = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) a = fmaxf(a, fabsf(xr[i]));
    a = warp_max(a);
    if ((threadIdx.x & 31) == 0) am[threadIdx.x >> 5] = a;
    __syncthreads();
    float amax = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) amax = fmaxf(amax, am[w]);
    if (!(amax > 0) || !isfinite(amax)) {
        for (int i = threadIdx.x; i < d; i += blockDim.x) q[(size_t)r * d + i] = 0;
        if (threadIdx.x == 0) scale[r] = 0;
        return;
    }
    float inv = 448.0f / amax;
    for (int i = threadIdx.x; i < d; i += blockDim.x) q[(size_t)r * d + i] = f32_to_fp8(__fmul_rn(xr[i], inv));
    if (threadIdx.x == 0) scale[r] = amax / 448.0f;
}

int ok(void) { return cudaPeekAtLastError() == cudaSuccess ? 0 : -1; }

} // namespace

// ---- launchers ----------------------------------------------------------------------------------------------------

int cu_gemv_f16(const __half *W, int rows, int cols, const float *X, int n, const float *norm, float eps,
                const float *bias, float *Y, int accumulate, int swiglu) {
    if (swiglu) return launch_gemv<__half, true>(W, rows, cols, X, n, norm, eps, bias, Y, accumulate);
    return launch_gemv<__half, false>(W, rows, cols, X, n, norm, eps, bias, Y, accumulate);
}

int cu_gemv_f32(const float *W, int rows, int cols, const float *X, int n, const float *norm, float eps, float *Y) {
    return launch_gemv<float, false>(W, rows, cols, X, n, norm, eps, NULL, Y, 0);
}

int cu_embed(const __half *embd, int E, const RowDev *rows, int n, float *x) {
    k_embed<<<n, 256, 0, dsa_cu_stream()>>>(embd, E, rows, x);
    return ok();
}

int cu_rmsnorm_h(const float *x, const float *w, int E, float eps, int n, __half *xh, float *xn) {
    k_rmsnorm_h<<<n, 256, 0, dsa_cu_stream()>>>(x, w, E, eps, xh, xn);
    return ok();
}

int cu_swiglu_h(const float *gu, int F, int n, __half *hb) {
    k_swiglu_h<<<dim3((F + 255) / 256, n), 256, 0, dsa_cu_stream()>>>(gu, F, hb);
    return ok();
}

int cu_gather_rows(const float *x, int E, const int *which, int n, float *out) {
    k_gather<<<n, 256, 0, dsa_cu_stream()>>>(x, E, which, out);
    return ok();
}

int cu_rope_kv(const Shape &s, float *qkv, const float *bias, const float *, const RowDev *rows, int n,
               const SeqDev *seqs, int layer, const float *rope_freq) {
    if (s.rope_dim / 2 > 256) return -1;
    k_rope_kv<<<n, 128, 0, dsa_cu_stream()>>>(s, qkv, bias, rows, seqs, layer, rope_freq);
    return ok();
}

int cu_ix_project(const Shape &s, float *proj, const float *ln, const float *rope_freq, const RowDev *rows, int n,
                  const SeqDev *seqs, int layer, float *iq, float *iw) {
    if (s.ix_rope_dim / 2 > 128) return -1;
    size_t smem = (size_t)(s.ixH + 1) * s.ixd * sizeof(float);
    k_ix_project<<<n, 128, smem, dsa_cu_stream()>>>(s, proj, ln, rope_freq, rows, seqs, layer, iq, iw);
    return ok();
}

int cu_index_scores(int H, int d, const RowDev *rows, int n, const SeqDev *seqs, int layer, const float *iq,
                    const float *iw, int grid_len, float *out, int ld) {
    dim3 grid((grid_len + 255) / 256, n);
    size_t smem = (size_t)(H * d + H) * sizeof(float);
    cudaStream_t st = dsa_cu_stream();
    switch (d) {
    case 32: k_index_scores<32><<<grid, 256, smem, st>>>(H, rows, seqs, layer, iq, iw, out, ld); break;
    case 64: k_index_scores<64><<<grid, 256, smem, st>>>(H, rows, seqs, layer, iq, iw, out, ld); break;
    case 128: k_index_scores<128><<<grid, 256, smem, st>>>(H, rows, seqs, layer, iq, iw, out, ld); break;
    default: return -1;
    }
    return ok();
}

int cu_topk(const RowDev *rows, int n, const SeqDev *seqs, int layer, const float *score, int ld, int32_t *idx,
            int ldi, int *cnt) {
    k_topk<<<n, TOPK_THREADS, 0, dsa_cu_stream()>>>(rows, seqs, layer, score, ld, idx, ldi, cnt);
    return ok();
}

size_t cu_attention_part_floats(const Shape &s, int n, int grid_len) {
    int maxch = (grid_len + CH - 1) / CH;
    return (size_t)n * s.KVH * maxch * part_stride(s.D);
}

int cu_attention(const Shape &s, const float *q, int ldq, const RowDev *rows, int n, const SeqDev *seqs, int layer,
                 const int32_t *sel, int ldi, const int *cnt, int grid_len, float *part, float *att, __half *att_h) {
    if (s.H % s.KVH || s.H / s.KVH > GMAX) return -1;
    int maxch = (grid_len + CH - 1) / CH;
    dim3 grid(maxch, s.KVH, n);
    cudaStream_t st = dsa_cu_stream();
    if (s.D == 64) {
        k_attn<64><<<grid, 128, 0, st>>>(s, q, ldq, rows, seqs, layer, sel, ldi, cnt, part, maxch);
        k_attn_combine<64><<<dim3(s.H, n), 64, 0, st>>>(s, rows, cnt, part, maxch, att, att_h);
    } else if (s.D == 128) {
        k_attn<128><<<grid, 128, 0, st>>>(s, q, ldq, rows, seqs, layer, sel, ldi, cnt, part, maxch);
        k_attn_combine<128><<<dim3(s.H, n), 128, 0, st>>>(s, rows, cnt, part, maxch, att, att_h);
    } else {
        return -1;
    }
    return ok();
}

int cu_fp8_quant(int n, int d, const float *x, uint8_t *q, float *scale) {
    k_fp8_quant<<<n, 64, 0, dsa_cu_stream()>>>(d, x, q, scale);
    return ok();
}
