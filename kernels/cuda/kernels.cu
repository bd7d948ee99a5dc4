// The CUDA kernels of the forward pass.  Each one names its plain-C counterpart in kernels/cpu or engine/, which
// tests/test_cuda.c compares it with.  Numerics follow the CPU code where that is cheap (RoPE angles in double, the
// indexer key path with explicit round-to-nearest products so that nvcc contracts nothing into an FMA the CPU
// does not have); matrix products and reductions sum in a different order, so they agree to rounding, not to bits.
#include "cuda.h"
#include "internal.cuh"
#include "common.cuh"
#include "attn.cuh"
#include "select.cuh"

#include <cooperative_groups.h>

#include <math.h>

namespace {


// ---- matrix × few vectors -------------------------------------------------------------------------------------

// Two weight rows per warp, lanes across the columns with 16-byte loads, n <= R input rows (in shared memory when
// RMSNorm is fused, else read through the cache).  A warp issues all its loads of a unit (up to PRE per row) before
// the first multiply, and the loads of its first unit before the block's RMSNorm: the weights' latency from HBM
// overlaps the rest.
constexpr int PRE = 6; // 16-byte loads per lane per row held in registers (f16: 1536 columns, f32: 768)

template <typename WT> struct Vec;
template <> struct Vec<__half> {
    static constexpr int N = 8;
    __device__ static void unpack(const uint4 &u, float *f) {
        const __half2 *h = reinterpret_cast<const __half2 *>(&u);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 t = __half22float2(h[i]);
            f[2 * i] = t.x, f[2 * i + 1] = t.y;
        }
    }
};
template <> struct Vec<float> {
    static constexpr int N = 4;
    __device__ static void unpack(const uint4 &u, float *f) {
        f[0] = __uint_as_float(u.x), f[1] = __uint_as_float(u.y), f[2] = __uint_as_float(u.z),
        f[3] = __uint_as_float(u.w);
    }
};

template <typename WT>
__device__ __forceinline__ void preload(const WT *w0, const WT *w1, int cols, int lane, uint4 *a, uint4 *b) {
    constexpr int N = Vec<WT>::N;
#pragma unroll
    for (int k = 0; k < PRE; k++) {
        int c = (lane + 32 * k) * N;
        if (c < cols) {
            a[k] = __ldg(reinterpret_cast<const uint4 *>(w0 + c));
            if (w1) b[k] = __ldg(reinterpret_cast<const uint4 *>(w1 + c));
        }
    }
}

// Where column c of an input row sits in shared memory when the rows are staged swizzled (k_gemv_q): the 16-byte
// groups of each 32 columns permuted by the 32-column block's index, so that lanes reading the same group of
// consecutive blocks hit different banks.  Needs cols % 32 == 0.
__device__ __forceinline__ int swz(int c) { return c ^ (((c >> 5) & 7) << 2); }

template <int R, typename WT, bool SW = false>
__device__ __forceinline__ void fma_chunk(const float *wa, const float *wb, bool two, const float *xin, int cols, int c,
                                          int n, float *acc0, float *acc1) {
    constexpr int N = Vec<WT>::N;
#pragma unroll
    for (int r = 0; r < R; r++) {
        if (r < n) {
            const float *xr = xin + (size_t)r * cols;
#pragma unroll
            for (int q = 0; q < N / 4; q++) {
                float4 x = *reinterpret_cast<const float4 *>(xr + (SW ? swz(c + 4 * q) : c + 4 * q));
                acc0[r] += wa[4 * q] * x.x + wa[4 * q + 1] * x.y + wa[4 * q + 2] * x.z + wa[4 * q + 3] * x.w;
                if (two) acc1[r] += wb[4 * q] * x.x + wb[4 * q + 1] * x.y + wb[4 * q + 2] * x.z + wb[4 * q + 3] * x.w;
            }
        }
    }
}

// Σ over the columns of w0·x and w1·x for every input row, summed across the warp (every lane gets the sums).
template <int R, typename WT, bool SW = false>
__device__ __forceinline__ void dot2(const uint4 *a, const uint4 *b, const WT *w0, const WT *w1, const float *xin,
                                     int cols, int n, int lane, float *acc0, float *acc1) {
    constexpr int N = Vec<WT>::N;
    bool two = w1 != nullptr;
#pragma unroll
    for (int k = 0; k < PRE; k++) {
        int c = (lane + 32 * k) * N;
        if (c < cols) {
            float wa[N], wb[N];
            Vec<WT>::unpack(a[k], wa);
            if (two) Vec<WT>::unpack(b[k], wb);
            fma_chunk<R, WT, SW>(wa, wb, two, xin, cols, c, n, acc0, acc1);
        }
    }
    for (int c = (lane + 32 * PRE) * N; c < cols; c += 32 * N) { // wider rows than the registers hold
        float wa[N], wb[N];
        Vec<WT>::unpack(__ldg(reinterpret_cast<const uint4 *>(w0 + c)), wa);
        if (two) Vec<WT>::unpack(__ldg(reinterpret_cast<const uint4 *>(w1 + c)), wb);
        fma_chunk<R, WT, SW>(wa, wb, two, xin, cols, c, n, acc0, acc1);
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        acc0[r] = warp_sum(acc0[r]);
        acc1[r] = warp_sum(acc1[r]);
    }
}

// The two rows a QKV pair unit works on: RoPE partners (a, b) of one q or k head, or two plain rows (the unrotated
// dims, V).  rot is the frequency index, or -1.
__device__ __forceinline__ void qkv_pair(const Shape &s, int u, int *a, int *b, int *rot) {
    int half = s.D / 2, heads = s.H + s.KVH;
    if (u < heads * half) {
        int h = u / half, i = u % half, base = h < s.H ? h * s.D : s.E + (h - s.H) * s.D, rh = s.rope_dim / 2;
        if (i < rh) {
            *rot = i;
            *a = base + (s.rope_neox ? i : 2 * i);
            *b = base + (s.rope_neox ? i + rh : 2 * i + 1);
        } else {
            *rot = -1;
            *a = base + s.rope_dim + 2 * (i - rh);
            *b = *a + 1;
        }
    } else {
        int j = u - heads * half, KV = s.KVH * s.D;
        *rot = -1;
        *a = s.E + KV + 2 * j;
        *b = *a + 1;
    }
}

enum { GEMV_PLAIN = 0, GEMV_SWIGLU = 1, GEMV_QKV = 2 };

struct GemvArgs {
    const __half *Wa; // f16 matrix: rows_a outputs (SWIGLU: 2·rows_a rows, gate then up)
    int rows_a;
    QMat qa;          // ... or, when qa.type, the same matrix quantised (k_gemv_q)
    const float *Wb; // optional f32 matrix of rows_b rows over the same input (the indexer's projection)
    int rows_b;
    int cols;
    const float *X;
    int n;
    const float *norm;
    float eps;
    float *Ya, *Yb;
    int accumulate, mode;
    // GEMV_QKV: biases, RoPE and the K/V append of each row's sequence
    const float *bias;
    Shape s;
    const RowDev *rows;
    const SeqDev *seqs;
    int layer;
    const float *freq;
};

// A warp's units of work in the "a" matrix: SwiGLU (gate, up) pairs, or pairs of rows; the f32 matrix's pairs follow.
__host__ __device__ __forceinline__ int gemv_units_a(const GemvArgs &g) {
    return g.mode == GEMV_SWIGLU ? g.rows_a : (g.rows_a + 1) / 2;
}

// The weight rows of unit u: the f32 matrix's pair, a SwiGLU (gate, up) pair, a QKV RoPE pair, or a plain pair.
struct Unit {
    int isb, a, b, rot; // rows (b < 0: none); rot: RoPE frequency index or -1
};
__device__ __forceinline__ Unit unit_rows(const GemvArgs &g, int u, int units_a) {
    Unit t = {0, 0, -1, -1};
    if (u >= units_a) {
        t.isb = 1;
        t.a = 2 * (u - units_a);
        t.b = t.a + 1 < g.rows_b ? t.a + 1 : -1;
    } else if (g.mode == GEMV_SWIGLU) {
        t.a = u, t.b = u + g.rows_a;
    } else if (g.mode == GEMV_QKV) {
        qkv_pair(g.s, u, &t.a, &t.b, &t.rot);
    } else {
        t.a = 2 * u;
        t.b = t.a + 1 < g.rows_a ? t.a + 1 : -1;
    }
    return t;
}

// The results y0, y1 of input row r for weight rows a and b (b < 0: none) of a unit: written plainly or added
// (GEMV_PLAIN), as silu(gate)·up (GEMV_SWIGLU: a is the unit), or with bias and RoPE into q or the sequence's K/V
// cache (GEMV_QKV).
__device__ __forceinline__ void store_pair(const GemvArgs &g, int r, int a, int b, int rot, float y0, float y1) {
    if (g.mode == GEMV_SWIGLU) {
        g.Ya[(size_t)r * g.rows_a + a] = y0 / (1.0f + expf(-y0)) * y1;
        return;
    }
    if (g.mode == GEMV_QKV) {
        if (g.bias) y0 += g.bias[a], y1 += g.bias[b];
        RowDev rw = g.rows[r];
        if (rot >= 0) { // angles in double, products rounded as the CPU's
            double ang = (double)rw.pos * g.freq[rot];
            float cs = (float)cos(ang), sn = (float)sin(ang);
            float t0 = __fsub_rn(__fmul_rn(y0, cs), __fmul_rn(y1, sn));
            float t1 = __fadd_rn(__fmul_rn(y0, sn), __fmul_rn(y1, cs));
            y0 = t0, y1 = t1;
        }
        if (a < g.s.E) { // query
            g.Ya[(size_t)r * g.rows_a + a] = y0;
            g.Ya[(size_t)r * g.rows_a + b] = y1;
        } else { // key or value row: into the sequence's f16 cache
            SeqDev sq = g.seqs[rw.seq];
            int KV = g.s.KVH * g.s.D, isv = a >= g.s.E + KV, d0 = a - g.s.E - (isv ? KV : 0);
            uint16_t *dst = (isv ? sq.vc : sq.kc) + ((size_t)g.layer * sq.n_ctx + rw.pos) * KV;
            dst[d0] = __half_as_ushort(__float2half_rn(y0));
            dst[d0 + (b - a)] = __half_as_ushort(__float2half_rn(y1));
        }
        return;
    }
    float *y = g.Ya + (size_t)r * g.rows_a;
    y[a] = g.accumulate ? y[a] + y0 : y0;
    if (b >= 0) y[b] = g.accumulate ? y[b] + y1 : y1;
}

// The n input rows into shared memory (blocks of 256 threads), RMSNorm'd when g.norm is set; SW: at the swizzled
// positions swz(c).
template <bool SW> __device__ __forceinline__ void stage_x(const GemvArgs &g, float *xs, float *red) {
    int cols = g.cols, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int r = 0; r < g.n; r++) {
        float sc = 1;
        if (g.norm) {
            float ss = 0;
            for (int c = threadIdx.x; c < cols; c += blockDim.x) {
                float v = g.X[(size_t)r * cols + c];
                ss += v * v;
            }
            ss = warp_sum(ss);
            if (lane == 0) red[warp] = ss;
            __syncthreads();
            float tot = 0;
#pragma unroll
            for (int w = 0; w < 8; w++) tot += red[w];
            sc = 1.0f / sqrtf(tot / cols + g.eps);
        }
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            float v = g.X[(size_t)r * cols + c];
            xs[r * cols + (SW ? swz(c) : c)] = g.norm ? __fmul_rn(__fmul_rn(v, sc), g.norm[c]) : v;
        }
        __syncthreads(); // red is reused by the next row
    }
}

// A unit's sums for every input row: the f32 matrix's rows into Yb, the others through store_pair.
template <int R>
__device__ __forceinline__ void store_units(const GemvArgs &g, const Unit &t, int n, const float *acc0,
                                            const float *acc1) {
#pragma unroll
    for (int r = 0; r < R; r++) {
        if (r >= n) break;
        if (t.isb) {
            g.Yb[(size_t)r * g.rows_b + t.a] = acc0[r];
            if (t.b >= 0) g.Yb[(size_t)r * g.rows_b + t.b] = acc1[r];
        } else {
            store_pair(g, r, t.a, t.b, t.rot, acc0[r], acc1[r]);
        }
    }
}

template <int R>
__global__ void __launch_bounds__(256) k_gemv(GemvArgs g) {
    extern __shared__ float xs[];
    __shared__ float red[8];
    int cols = g.cols, n = g.n;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int units_a = gemv_units_a(g), units = units_a + (g.rows_b + 1) / 2;
    int u = blockIdx.x * 8 + warp;
    uint4 pa[PRE], pb[PRE];
    Unit t = {0, 0, -1, -1};
    if (u < units) { // the first unit's weights are on their way before the input is ready
        t = unit_rows(g, u, units_a);
        if (t.isb) preload<float>(g.Wb + (size_t)t.a * cols, t.b >= 0 ? g.Wb + (size_t)t.b * cols : nullptr, cols, lane, pa, pb);
        else preload<__half>(g.Wa + (size_t)t.a * cols, t.b >= 0 ? g.Wa + (size_t)t.b * cols : nullptr, cols, lane, pa, pb);
    }
    const float *xin = g.X;
    if (g.norm) {
        stage_x<false>(g, xs, red);
        xin = xs;
    }
    for (bool first = true; u < units; u += gridDim.x * 8, first = false) {
        if (!first) {
            t = unit_rows(g, u, units_a);
            if (t.isb) preload<float>(g.Wb + (size_t)t.a * cols, t.b >= 0 ? g.Wb + (size_t)t.b * cols : nullptr, cols, lane, pa, pb);
            else preload<__half>(g.Wa + (size_t)t.a * cols, t.b >= 0 ? g.Wa + (size_t)t.b * cols : nullptr, cols, lane, pa, pb);
        }
        float acc0[R], acc1[R];
#pragma unroll
        for (int r = 0; r < R; r++) acc0[r] = acc1[r] = 0;
        if (t.isb) {
            dot2<R, float>(pa, pb, g.Wb + (size_t)t.a * cols, t.b >= 0 ? g.Wb + (size_t)t.b * cols : nullptr, xin, cols,
                           n, lane, acc0, acc1);
            if (lane == 0) store_units<R>(g, t, n, acc0, acc1);
            continue;
        }
        dot2<R, __half>(pa, pb, g.Wa + (size_t)t.a * cols, t.b >= 0 ? g.Wa + (size_t)t.b * cols : nullptr, xin, cols, n,
                        lane, acc0, acc1);
        if (lane == 0) store_units<R>(g, t, n, acc0, acc1);
    }
}

// k_gemv or k_gemv_q over all of g's units (8 warps a block, at most 4 blocks an SM; the warps stride over the
// rest), with smem bytes of dynamic shared memory, opted in to once per kernel (smem_set) above the default 48 KiB.
int launch_units(void (*kernel)(GemvArgs), size_t smem, size_t &smem_set, const GemvArgs &g) {
    if (smem > smem_set) {
        if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)
            return -1;
        smem_set = smem;
    }
    int units = gemv_units_a(g) + (g.rows_b + 1) / 2;
    int blocks = (units + 7) / 8, cap = sms() * 4;
    if (blocks > cap) blocks = cap;
    return launch(kernel, dim3(blocks), dim3(256), smem, g);
}

template <int R> int launch_gemv_r(const GemvArgs &g) {
    static size_t smem_set = 48 * 1024;
    return launch_units(k_gemv<R>, g.norm ? (size_t)g.n * g.cols * sizeof(float) : 0, smem_set, g);
}

// ---- matrix × few vectors, weights quantised (DSA_CUDA_QUANT=1) ------------------------------------------------
//
// k_gemv with the "a" matrix read as the GGUF's blocks of 32 weights (QMat, repacked at upload): each lane takes
// whole blocks (lane, lane + 32, ...) with one or two 16-byte loads plus its scales, and the input rows wait in
// shared memory at swizzled positions, so the eight float4 reads of a block by consecutive lanes are free of bank
// conflicts.  Per block and input row: Σ q·x and (Q4_1) Σ x in f32, then d·Σq·x + m·Σx.  The weights' integers are
// made f32 exactly (magic-number adds); the f32 matrix of the same launch (the indexer's projection) goes as in
// k_gemv, reading the swizzled rows.  Numerics as k_gemv's, on the exact dequantised weights (d·q + m in f32, where
// the f16 copy rounds it).
constexpr int QPRE = 2; // blocks of 32 weights per lane per row held in registers (2048 columns)

struct QBlk {
    uint4 a, b; // Q4_1: a (32 nibbles); Q8_0: a, b (32 bytes)
    float d, m;
};

template <int QT> __device__ __forceinline__ QBlk qload(const QMat &W, int nb, int row, int blk) {
    QBlk t;
    size_t i = (size_t)row * nb + blk;
    if (QT == QW_Q4_1) {
        t.a = __ldg(reinterpret_cast<const uint4 *>(W.qs) + i);
        t.b = t.a;
        float2 dm = __half22float2(__ldg(reinterpret_cast<const __half2 *>(W.sc) + i));
        t.d = dm.x, t.m = dm.y;
    } else {
        const uint4 *p = reinterpret_cast<const uint4 *>(W.qs) + 2 * i;
        t.a = __ldg(p), t.b = __ldg(p + 1);
        t.d = __half2float(__ldg(reinterpret_cast<const __half *>(W.sc) + i)), t.m = 0;
    }
    return t;
}

__device__ __forceinline__ unsigned word(const uint4 &u, int i) {
    return i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w;
}
// Nibble k of w (0..15) and signed byte k of w (-128..127) as f32, exactly.
__device__ __forceinline__ float nib(unsigned w, int k) {
    return __uint_as_float(0x4B000000u | ((w >> (4 * k)) & 15u)) - 8388608.0f;
}
__device__ __forceinline__ float sbyte(unsigned w, int k) {
    return __uint_as_float(0x4B000000u | (((w >> (8 * k)) & 255u) ^ 0x80u)) - 8388736.0f;
}

// Block blk of the unit's rows (A, and B when two) times every input row.
template <int R, int QT>
__device__ __forceinline__ void qfma(const QBlk &A, const QBlk &B, bool two, const float *xs, int cols, int blk, int n,
                                     float *acc0, float *acc1) {
    int sw = blk & 7;
#pragma unroll
    for (int r = 0; r < R; r++) {
        if (r < n) {
            const float *xr = xs + (size_t)r * cols + 32 * blk;
            float qa = 0, qb = 0, sx = 0;
#pragma unroll
            for (int q = 0; q < 8; q++) { // weights 4q..4q+3 of the block
                float4 x = *reinterpret_cast<const float4 *>(xr + 4 * (q ^ sw));
                float wa[4], wb[4];
                if (QT == QW_Q4_1) {
                    unsigned ua = word(A.a, q >> 1) >> (16 * (q & 1)), ub = word(B.a, q >> 1) >> (16 * (q & 1));
#pragma unroll
                    for (int e = 0; e < 4; e++) wa[e] = nib(ua, e), wb[e] = nib(ub, e);
                    sx += (x.x + x.y) + (x.z + x.w);
                } else {
                    unsigned ua = word(q < 4 ? A.a : A.b, q & 3), ub = word(q < 4 ? B.a : B.b, q & 3);
#pragma unroll
                    for (int e = 0; e < 4; e++) wa[e] = sbyte(ua, e), wb[e] = sbyte(ub, e);
                }
                qa += wa[0] * x.x + wa[1] * x.y + wa[2] * x.z + wa[3] * x.w;
                if (two) qb += wb[0] * x.x + wb[1] * x.y + wb[2] * x.z + wb[3] * x.w;
            }
            acc0[r] += QT == QW_Q4_1 ? A.d * qa + A.m * sx : A.d * qa;
            if (two) acc1[r] += QT == QW_Q4_1 ? B.d * qb + B.m * sx : B.d * qb;
        }
    }
}

template <int QT, int QP>
__device__ __forceinline__ void qpreload(const QMat &W, int nb, const Unit &t, int lane, QBlk *a, QBlk *b) {
#pragma unroll
    for (int k = 0; k < QP; k++) {
        int blk = lane + 32 * k;
        if (blk < nb) {
            a[k] = qload<QT>(W, nb, t.a, blk);
            if (t.b >= 0) b[k] = qload<QT>(W, nb, t.b, blk);
        }
    }
}

template <int R, int QT, int QP>
__device__ __forceinline__ void qdot2(const QBlk *a, const QBlk *b, const QMat &W, int nb, const Unit &t,
                                      const float *xs, int cols, int n, int lane, float *acc0, float *acc1) {
    bool two = t.b >= 0;
#pragma unroll
    for (int k = 0; k < QP; k++) {
        int blk = lane + 32 * k;
        if (blk < nb) qfma<R, QT>(a[k], b[k], two, xs, cols, blk, n, acc0, acc1);
    }
    for (int blk = lane + 32 * QP; blk < nb; blk += 32) { // wider rows than the registers hold
        QBlk ta = qload<QT>(W, nb, t.a, blk), tb = two ? qload<QT>(W, nb, t.b, blk) : ta;
        qfma<R, QT>(ta, tb, two, xs, cols, blk, n, acc0, acc1);
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        acc0[r] = warp_sum(acc0[r]);
        acc1[r] = warp_sum(acc1[r]);
    }
}

// k_gemv_q's body, which the persistent kernel's GEMV phases share: all of g's units, a warp each, striding over the
// grid, with QP blocks per lane and row loaded ahead; xs holds n·cols floats of shared memory, red 8.  It writes xs
// at once: the caller makes sure that no thread of the block still reads it.
template <int R, int QT, int QP>
__device__ __forceinline__ void gemv_q_units(const GemvArgs &g, float *xs, float *red) {
    int cols = g.cols, n = g.n, nb = cols >> 5;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int units_a = gemv_units_a(g), units = units_a + (g.rows_b + 1) / 2;
    int u = blockIdx.x * 8 + warp;
    QBlk pa[QP], pb[QP];
    Unit t = {0, 0, -1, -1};
    if (u < units) { // the first unit's blocks are on their way before the input is ready
        t = unit_rows(g, u, units_a);
        if (!t.isb) qpreload<QT, QP>(g.qa, nb, t, lane, pa, pb);
    }
    stage_x<true>(g, xs, red);
    for (bool first = true; u < units; u += gridDim.x * 8, first = false) {
        if (!first) {
            t = unit_rows(g, u, units_a);
            if (!t.isb) qpreload<QT, QP>(g.qa, nb, t, lane, pa, pb);
        }
        float acc0[R], acc1[R];
#pragma unroll
        for (int r = 0; r < R; r++) acc0[r] = acc1[r] = 0;
        if (t.isb) {
            uint4 fa[PRE], fb[PRE];
            const float *w0 = g.Wb + (size_t)t.a * cols, *w1 = t.b >= 0 ? g.Wb + (size_t)t.b * cols : nullptr;
            preload<float>(w0, w1, cols, lane, fa, fb);
            dot2<R, float, true>(fa, fb, w0, w1, xs, cols, n, lane, acc0, acc1);
            if (lane == 0) store_units<R>(g, t, n, acc0, acc1);
            continue;
        }
        qdot2<R, QT, QP>(pa, pb, g.qa, nb, t, xs, cols, n, lane, acc0, acc1);
        if (lane == 0) store_units<R>(g, t, n, acc0, acc1);
    }
}

template <int R, int QT>
__global__ void __launch_bounds__(256) k_gemv_q(GemvArgs g) {
    extern __shared__ float xs[];
    __shared__ float red[8];
    gemv_q_units<R, QT, QPRE>(g, xs, red);
}

template <int R, int QT> int launch_gemv_q_r(const GemvArgs &g) {
    static size_t smem_set = 48 * 1024;
    return launch_units(k_gemv_q<R, QT>, (size_t)g.n * g.cols * sizeof(float), smem_set, g);
}

template <int QT> int launch_gemv_q(const GemvArgs &g) {
    int n = g.n;
    if (n == 1) return launch_gemv_q_r<1, QT>(g);
    if (n == 2) return launch_gemv_q_r<2, QT>(g);
    if (n <= 4) return launch_gemv_q_r<4, QT>(g);
    if (n <= 8) return launch_gemv_q_r<8, QT>(g);
    return launch_gemv_q_r<16, QT>(g);
}

// ---- matrix × up to 16 vectors on tensor cores ------------------------------------------------------------------
//
// One block per tile of 16 weight rows; its 8 warps split the columns (32-column steps w, w + 8, ...), each warp
// issuing mma.m16n8k16 with the tile as A (f16 straight from memory, exact) and the input rows as B, then the
// block sums the warps' parts in a fixed order (deterministic).  The inputs (RMSNorm fused) go to shared memory as
// hi = f16(x) and lo = f16(x - hi) and both are multiplied, so the products keep ~22 bits of x, like the f32 path.
// A dot product may visit the columns in any order as long as A and B agree: lane (p, t) = (lane / 4, lane % 4)
// loads 8 consecutive columns 8t..8t+7 of a step with one 16-byte load, and k-step kk of the two in a step takes
// columns 8t + 4kk + {0, 1} as the fragment's k = 2t, 2t + 1 and 8t + 4kk + {2, 3} as k = 2t + 8, 2t + 9, for A
// and B alike.  Rows p and p + 8 of a tile are a pair (RoPE partners, gate and up), so each lane's outputs carry
// both halves of a pair and the epilogue needs no exchange.  Fallback (below sm_80): k_gemv.
constexpr int MMV_WARPS = 8;
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800 // the host pass and sm_80+ see the kernel
#define MMV_ARCH 1
#else
#define MMV_ARCH 0
#endif
#if MMV_ARCH
constexpr int MMV_KMAX = 8; // 32-column steps a warp holds in registers at once (cols <= 2048 in one pass)
#endif

// Tiles of 16 weight rows of the f16 matrix.
__host__ __device__ __forceinline__ int mmv_tiles(const GemvArgs &g) {
    if (g.mode == GEMV_PLAIN) return (g.rows_a + 15) / 16;
    return ((g.mode == GEMV_SWIGLU ? g.rows_a : g.rows_a / 2) + 7) / 8;
}

#if MMV_ARCH
// The weight rows of tile rows p and p + 8 (-1: past the matrix), and the RoPE frequency index of a QKV pair.
__device__ __forceinline__ void mmv_rows(const GemvArgs &g, int tile, int p, int *ra, int *rb, int *rot) {
    *rot = -1;
    if (g.mode == GEMV_PLAIN) {
        int r0 = 16 * tile + p, r1 = r0 + 8;
        *ra = r0 < g.rows_a ? r0 : -1;
        *rb = r1 < g.rows_a ? r1 : -1;
        return;
    }
    int u = 8 * tile + p, units = g.mode == GEMV_SWIGLU ? g.rows_a : g.rows_a / 2;
    if (u >= units) {
        *ra = *rb = -1;
    } else if (g.mode == GEMV_SWIGLU) {
        *ra = u, *rb = u + g.rows_a;
    } else {
        qkv_pair(g.s, u, ra, rb, rot);
    }
}

#endif

// Shared memory of a block: the f16 inputs (hi, lo), NP rows of stride halves each, then the warps' partial sums.
// A row's stride is an odd number of 64-byte units, so that the 8 rows a quarter-warp reads fall in distinct banks.
__host__ __device__ __forceinline__ int mmv_stride(int cols) {
    int steps = (cols + 31) / 32;
    return (steps + (steps % 2 ? 2 : 1)) * 32;
}
__host__ __device__ __forceinline__ size_t mmv_smem(int cols, int NP) {
    return (size_t)2 * NP * mmv_stride(cols) * 2 + (size_t)MMV_WARPS * 16 * NP * 4;
}

// Block vb of a launch of tiles + f32 blocks (256 threads; smem: mmv_smem, or n·cols floats for an f32 block).  The
// whole block calls it with the same vb; it starts with a barrier, so that a persistent block may call it again
// for its next vb while shared memory is still being read.
template <int NT> // tiles of 8 input rows: 1 (n <= 8) or 2 (n <= 16)
__device__ void mmv_block(const GemvArgs &g, int tiles, int vb, unsigned char *smem) {
#if MMV_ARCH
    constexpr int NP = 8 * NT;
    const int cols = g.cols, n = g.n, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (vb >= tiles) { // the f32 matrix (the indexer's projection): two rows per warp, as k_gemv
        float *xs = reinterpret_cast<float *>(smem);
        int u = (vb - tiles) * 8 + warp, ub = (g.rows_b + 1) / 2;
        uint4 pa[PRE], pb[PRE];
        int a = 2 * u, b = 2 * u + 1 < g.rows_b ? 2 * u + 1 : -1;
        if (u < ub) preload<float>(g.Wb + (size_t)a * cols, b >= 0 ? g.Wb + (size_t)b * cols : nullptr, cols, lane, pa, pb);
        for (int r = warp; r < n; r += MMV_WARPS) {
            const float *x = g.X + (size_t)r * cols;
            float sc = 1;
            if (g.norm) {
                float ss = 0;
                for (int c = lane; c < cols; c += 32) ss += x[c] * x[c];
                sc = 1.0f / sqrtf(warp_sum(ss) / cols + g.eps);
            }
            for (int c = lane; c < cols; c += 32)
                xs[(size_t)r * cols + c] = g.norm ? __fmul_rn(__fmul_rn(x[c], sc), g.norm[c]) : x[c];
        }
        __syncthreads();
        if (u >= ub) return;
        float acc0[NP], acc1[NP];
#pragma unroll
        for (int r = 0; r < NP; r++) acc0[r] = acc1[r] = 0;
        dot2<NP, float>(pa, pb, g.Wb + (size_t)a * cols, b >= 0 ? g.Wb + (size_t)b * cols : nullptr, xs, cols, n, lane,
                        acc0, acc1);
        if (lane == 0)
#pragma unroll
            for (int r = 0; r < NP; r++) {
                if (r >= n) break;
                g.Yb[(size_t)r * g.rows_b + a] = acc0[r];
                if (b >= 0) g.Yb[(size_t)r * g.rows_b + b] = acc1[r];
            }
        return;
    }
    const int tile = vb, p = lane >> 2, t = lane & 3, steps = (cols + 31) / 32, stride = mmv_stride(cols);
    __half *xh = reinterpret_cast<__half *>(smem), *xl = xh + NP * stride;
    float *red = reinterpret_cast<float *>(xl + NP * stride); // [warp][16 tile rows][NP]
    int ra, rb, rot;
    mmv_rows(g, tile, p, &ra, &rb, &rot);
    const __half *wa = ra >= 0 ? g.Wa + (size_t)ra * cols : nullptr, *wb = rb >= 0 ? g.Wa + (size_t)rb * cols : nullptr;
    uint4 A0[MMV_KMAX], A1[MMV_KMAX];
    auto load = [&](int base) { // this warp's steps base + warp + 8j
#pragma unroll
        for (int j = 0; j < MMV_KMAX; j++) {
            int c = (base + warp + MMV_WARPS * j) * 32 + 8 * t;
            A0[j] = wa && c < cols ? __ldg(reinterpret_cast<const uint4 *>(wa + c)) : make_uint4(0, 0, 0, 0);
            A1[j] = wb && c < cols ? __ldg(reinterpret_cast<const uint4 *>(wb + c)) : make_uint4(0, 0, 0, 0);
        }
    };
    __shared__ int xexp[NP]; // input row r is staged times 2^xexp[r]
    load(0); // the weights are on their way before the inputs are ready
    for (int r = warp; r < NP; r += MMV_WARPS) {
        __half *dh = xh + r * stride, *dl = xl + r * stride;
        const float *x = g.X + (size_t)r * cols;
        float sc = 1;
        if (g.norm && r < n) {
            float ss = 0;
            for (int c = lane; c < cols; c += 32) ss += x[c] * x[c];
            sc = 1.0f / sqrtf(warp_sum(ss) / cols + g.eps);
        }
        float mx = 0;
        for (int c = lane; r < n && c < cols; c += 32) mx = fmaxf(mx, fabsf(g.norm ? x[c] * sc * g.norm[c] : x[c]));
        int e = 0; // 2^e puts the row's largest |v| in [2^14, 2^15): hi below f16's overflow, lo above its subnormals
        if (r < n && (mx = warp_max(mx)) > 0 && mx <= 3.4e38f) frexpf(mx, &e), e = 15 - e;
        if (lane == 0) xexp[r] = e;
        for (int c = lane; c < stride; c += 32) {
            float v = 0;
            if (r < n && c < cols) v = ldexpf(g.norm ? __fmul_rn(__fmul_rn(x[c], sc), g.norm[c]) : x[c], e);
            __half h = __float2half_rn(v);
            dh[c] = h;
            dl[c] = __float2half_rn(v - __half2float(h));
        }
    }
    __syncthreads();
    float acc[NT][4];
#pragma unroll
    for (int i = 0; i < NT; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0;
    for (int base = 0; base < steps; base += MMV_WARPS * MMV_KMAX) {
        if (base) load(base);
#pragma unroll
        for (int j = 0; j < MMV_KMAX; j++) {
            int st = base + warp + MMV_WARPS * j;
            if (st >= steps) break;
            const unsigned *a0 = reinterpret_cast<const unsigned *>(&A0[j]);
            const unsigned *a1 = reinterpret_cast<const unsigned *>(&A1[j]);
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                size_t off = (size_t)(nt * 8 + p) * stride + st * 32 + 8 * t;
                uint4 H = *reinterpret_cast<const uint4 *>(xh + off), L = *reinterpret_cast<const uint4 *>(xl + off);
                const unsigned *h = reinterpret_cast<const unsigned *>(&H), *l = reinterpret_cast<const unsigned *>(&L);
#pragma unroll
                for (int kk = 0; kk < 2; kk++) {
                    const uint32_t a[4] = {a0[2 * kk], a1[2 * kk], a0[2 * kk + 1], a1[2 * kk + 1]};
                    mma_16816(acc[nt], a, h[2 * kk], h[2 * kk + 1]);
                    mma_16816(acc[nt], a, l[2 * kk], l[2 * kk + 1]);
                }
            }
        }
    }
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        int c = nt * 8 + 2 * t;
        red[(warp * 16 + p) * NP + c] = acc[nt][0];
        red[(warp * 16 + p) * NP + c + 1] = acc[nt][1];
        red[(warp * 16 + p + 8) * NP + c] = acc[nt][2];
        red[(warp * 16 + p + 8) * NP + c + 1] = acc[nt][3];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < 8 * NP; e += blockDim.x) {
        int pp = e / NP, r = e % NP;
        if (r >= n) continue;
        mmv_rows(g, tile, pp, &ra, &rb, &rot);
        if (ra < 0) continue;
        float y0 = 0, y1 = 0;
#pragma unroll
        for (int w = 0; w < MMV_WARPS; w++) {
            y0 += red[(w * 16 + pp) * NP + r];
            y1 += red[(w * 16 + pp + 8) * NP + r];
        }
        store_pair(g, r, ra, rb, rot, ldexpf(y0, -xexp[r]), ldexpf(y1, -xexp[r]));
    }
#else
    (void)g, (void)tiles, (void)vb, (void)smem;
#endif
}

template <int NT> __global__ void __launch_bounds__(256) k_mmv(GemvArgs g, int tiles) {
    extern __shared__ __align__(16) unsigned char smem[];
    mmv_block<NT>(g, tiles, blockIdx.x, smem);
}

int g_mmv = 0; // the tensor-core GEMV in use (cu_gemv_mma)

template <int NT> int launch_mmv_t(const GemvArgs &g) {
    constexpr int NP = 8 * NT;
    int tiles = mmv_tiles(g), bblocks = (g.rows_b + 1) / 2;
    bblocks = (bblocks + MMV_WARPS - 1) / MMV_WARPS;
    size_t smem = mmv_smem(g.cols, NP), sb = (size_t)g.n * g.cols * sizeof(float);
    if (bblocks && sb > smem) smem = sb;
    static size_t smem_set = 48 * 1024;
    if (smem > smem_set) {
        if (cudaFuncSetAttribute(k_mmv<NT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)
            return -1;
        smem_set = smem;
    }
    return launch(k_mmv<NT>, dim3(tiles + bblocks), dim3(256), smem, g, tiles);
}

int launch_mmv(const GemvArgs &g) { return g.n <= 8 ? launch_mmv_t<1>(g) : launch_mmv_t<2>(g); }

bool mmv_on(void) { return g_mmv == 1; }

bool mmv_fits(const GemvArgs &g) { // launch_mmv's shared memory fits the device (else the f32 kernel takes it)
    return mmv_smem(g.cols, g.n <= 8 ? 8 : 16) + 1024 <= cu_smem_optin(); // + its static shared memory
}

// A device of sm_80 or newer running code compiled for it: a device that JIT-compiles the compute_75 PTX gets
// k_mmv and k_decode without their bodies.  Asked once.
bool mmv_capable(void) {
    static int cap = -1;
    if (cap < 0) {
        int dev = 0, major = 0;
        cudaFuncAttributes fa;
        cap = cudaGetDevice(&dev) == cudaSuccess &&
              cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 8 &&
              cudaFuncGetAttributes(&fa, k_mmv<1>) == cudaSuccess && fa.ptxVersion >= 80;
        if (!cap) cudaGetLastError(); // a refused query leaves nothing behind
    }
    return cap == 1;
}

int launch_gemv(const GemvArgs &g) {
    int n = g.n;
    if (n < 1 || n > 16 || g.cols % 8 || (g.mode == GEMV_QKV && (g.rows_a % 2 || g.s.D % 2 || g.s.rope_dim % 2)))
        return -1;
    // the quantised copy where its kernel can stage the input rows (n·cols floats, beside its static shared
    // memory), else the f16 matrix beside it
    if (g.qa.type && g.cols % 32 == 0 && (size_t)n * g.cols * sizeof(float) + 1024 <= cu_smem_optin())
        return g.qa.type == QW_Q4_1 ? launch_gemv_q<QW_Q4_1>(g) : launch_gemv_q<QW_Q8_0>(g);
    if (!g.Wa && g.rows_a) return -1;
    if (mmv_on() && mmv_fits(g)) return launch_mmv(g);
    if (n == 1) return launch_gemv_r<1>(g);
    if (n == 2) return launch_gemv_r<2>(g);
    if (n <= 4) return launch_gemv_r<4>(g);
    if (n <= 8) return launch_gemv_r<8>(g);
    return launch_gemv_r<16>(g);
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

// The same for d = 64 with no block-wide barrier: one warp per vector (H query heads, then the key), two elements
// per lane (e and e + 32), the Hadamard butterflies through shuffles.  Same operations, same order as the CPU.
// Vector w (0..H-1: query heads, H: the key) of row r, by one warp; buf is the warp's 64 floats of shared memory.
__device__ void ix_vec64(const Shape &s, const float *__restrict__ proj, const float *__restrict__ ln,
                         const float *__restrict__ freq, const RowDev *__restrict__ rows,
                         const SeqDev *__restrict__ seqs, int layer, float *__restrict__ iq, float *__restrict__ iw,
                         int r, int w, float *buf) {
    int H = s.ixH, half = s.ix_rope_dim / 2, l = threadIdx.x & 31;
    RowDev rw = rows[r];
    const float *p = proj + (size_t)r * s.ix_rows;
    float x0 = p[w * 64 + l], x1 = p[w * 64 + l + 32];
    bool key = w == H;
    if (key) { // LayerNorm, statistics in double as on the CPU
        double mean = warp_sum_d((double)x0 + (double)x1) / 64;
        double var = warp_sum_d((x0 - mean) * (x0 - mean) + (x1 - mean) * (x1 - mean));
        float rs = (float)(1.0 / sqrt(var / 64 + s.ix_eps));
        const float *g = ln + (size_t)layer * 128, *b = g + 64;
        x0 = __fadd_rn(__fmul_rn(__fmul_rn((float)(x0 - mean), rs), g[l]), b[l]);
        x1 = __fadd_rn(__fmul_rn(__fmul_rn((float)(x1 - mean), rs), g[l + 32]), b[l + 32]);
    }
    if (half > 0) { // RoPE on dims i and i + half, through the warp's row of shared memory
        buf[l] = x0, buf[l + 32] = x1;
        __syncwarp();
        if (l < half) {
            double ang = (double)rw.pos * freq[l];
            float cs = (float)cos(ang), sn = (float)sin(ang);
            float a = buf[l], c = buf[l + half];
            buf[l] = __fsub_rn(__fmul_rn(a, cs), __fmul_rn(c, sn));
            buf[l + half] = __fadd_rn(__fmul_rn(a, sn), __fmul_rn(c, cs));
        }
        __syncwarp();
        x0 = buf[l], x1 = buf[l + 32];
    }
#pragma unroll
    for (int h = 1; h < 32; h <<= 1) {
        float y0 = __shfl_xor_sync(0xffffffffu, x0, h), y1 = __shfl_xor_sync(0xffffffffu, x1, h);
        bool lo = (l & h) == 0;
        x0 = lo ? __fadd_rn(x0, y0) : __fsub_rn(y0, x0);
        x1 = lo ? __fadd_rn(x1, y1) : __fsub_rn(y1, x1);
    }
    float t0 = __fadd_rn(x0, x1), t1 = __fsub_rn(x0, x1);
    x0 = __fmul_rn(t0, 0.125f), x1 = __fmul_rn(t1, 0.125f);
    if (!key) {
        iq[(size_t)r * H * 64 + w * 64 + l] = x0;
        iq[(size_t)r * H * 64 + w * 64 + l + 32] = x1;
        return;
    }
    float ws = 1.0f / sqrtf((float)H * 64);
    if (l < H) iw[(size_t)r * H + l] = __fmul_rn(p[(H + 1) * 64 + l], ws);
    SeqDev sq = seqs[rw.seq];
    if (!sq.ik) return;
    float amax = warp_max(fmaxf(fabsf(x0), fabsf(x1)));
    size_t slot = (size_t)layer * sq.n_ctx + rw.pos;
    uint8_t *q8 = sq.ik + slot * 64;
    if (!(amax > 0) || !isfinite(amax)) {
        q8[l] = q8[l + 32] = 0;
        if (l == 0) sq.iks[slot] = 0;
        return;
    }
    float inv = 448.0f / amax;
    q8[l] = f32_to_fp8(__fmul_rn(x0, inv));
    q8[l + 32] = f32_to_fp8(__fmul_rn(x1, inv));
    if (l == 0) sq.iks[slot] = amax / 448.0f;
}

__global__ void k_ix_project64(Shape s, const float *__restrict__ proj, const float *__restrict__ ln,
                               const float *__restrict__ freq, const RowDev *__restrict__ rows,
                               const SeqDev *__restrict__ seqs, int layer, float *__restrict__ iq,
                               float *__restrict__ iw) {
    __shared__ float buf[32][64];
    int w = threadIdx.x >> 5;
    ix_vec64(s, proj, ln, freq, rows, seqs, layer, iq, iw, blockIdx.x, w, buf[w]);
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




// ---- the persistent decode step ---------------------------------------------------------------------------------

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
// Every block of a GEMV launch, spread over the persistent grid.
template <int NT> __device__ void gemv_all(const GemvArgs &g, unsigned char *smem) {
    int tiles = mmv_tiles(g), total = tiles + ((g.rows_b + 1) / 2 + MMV_WARPS - 1) / MMV_WARPS;
    for (int vb = blockIdx.x; vb < total; vb += gridDim.x) mmv_block<NT>(g, tiles, vb, smem);
}

// k_gemv_q's body for the persistent kernel, as a function of its own so that its registers are allocated apart from
// the rest of k_decode's (inlined, k_decode spilled), with one block per lane and row loaded ahead (the default model's
// rows hold at most 48 blocks, so a lane has at most two).
// Its shared memory is declared here, not passed in, so that the compiler knows its reads for shared ones.
template <int R, int QT> __device__ __noinline__ void gemv_q_call(const GemvArgs &g) {
    extern __shared__ __align__(16) float qxs[]; // the kernel's dynamic shared memory
    __shared__ float qred[8];
    gemv_q_units<R, QT, 1>(g, qxs, qred);
}

// A GEMV phase: with QW (DSA_CUDA_QUANT), a matrix kept quantised goes through k_gemv_q's body, the others (and all
// without QW) through the tensor-core GEMV.  Every phase follows a grid-wide barrier, so shared memory is free.
template <int NT, bool QW> __device__ __forceinline__ void gemv_phase(const GemvArgs &g, unsigned char *smem) {
    if (QW && g.qa.type == QW_Q4_1) gemv_q_call<8 * NT, QW_Q4_1>(g);
    else if (QW && g.qa.type == QW_Q8_0) gemv_q_call<8 * NT, QW_Q8_0>(g);
    else gemv_all<NT>(g, smem);
}
#endif

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
// A hint that L2 should hold bytes at p: the grid's threads split it into 128-byte lines.
__device__ __forceinline__ void l2_prefetch(const void *p, size_t bytes) {
    const char *c = static_cast<const char *>(p);
    for (size_t off = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 128; off < bytes;
         off += (size_t)gridDim.x * blockDim.x * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(c + off));
}

// The bytes a GEMV phase reads of a matrix of rows × cols: its quantised blocks and scales (QW and kept so), else
// its f16 weights.
template <bool QW> __device__ __forceinline__ void prefetch_mat(const __half *w, const QMat &q, size_t rows, size_t cols) {
    if (QW && q.type) {
        size_t nb = rows * (cols / 32);
        l2_prefetch(q.qs, nb * (q.type == QW_Q4_1 ? 16 : 32));
        l2_prefetch(q.sc, nb * (q.type == QW_Q4_1 ? 4 : 2));
    } else {
        l2_prefetch(w, rows * cols * 2);
    }
}

// The matrices of layer l (about 7 MB in f16 for the default model, 2.5 MB quantised; an H200's L2 holds 60 MB),
// fetched into L2 while the layer before it runs, so that the GEMV phases wait on L2 rather than HBM.
template <bool QW> __device__ __forceinline__ void prefetch_layer(const DecodeArgs &a, int l) {
    const Shape &s = a.s;
    size_t E = s.E, F = s.F, Q = E + 2 * (size_t)s.KVH * s.D;
    const DecodeLayer L = a.L[l];
    prefetch_mat<QW>(L.wqkv, L.qqkv, Q, E);
    prefetch_mat<QW>(L.wo, L.qwo, E, E);
    prefetch_mat<QW>(L.wgu, L.qgu, 2 * F, E);
    prefetch_mat<QW>(L.wdown, L.qdown, E, F);
}
#endif

template <int NT, int D, bool QW>
__global__ void __launch_bounds__(256) k_decode(DecodeArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ TopkShared topk_sm;
    cooperative_groups::grid_group grid = cooperative_groups::this_grid();
    const Shape s = a.s;
    const int E = s.E, n = a.n, KV = s.KVH * s.D, Q = E + 2 * KV;
    prefetch_layer<QW>(a, 0);
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n * E; i += gridDim.x * blockDim.x)
        a.x[i] = __half2float(a.embd[(size_t)a.rows[i / E].tok * E + i % E]);
    grid.sync();
    for (int l = 0; l < a.n_layer; l++) {
        // read where a phase needs it, not held in registers across the layer (held, the quantised matrices'
        // fields made the kernel spill more)
        const DecodeLayer &L = a.L[l];
        if (l + 1 < a.n_layer) prefetch_layer<QW>(a, l + 1);
        GemvArgs g = {};
        g.Wa = L.wqkv, g.rows_a = Q, g.Wb = L.wix, g.rows_b = L.wix ? s.ix_rows : 0, g.cols = E, g.X = a.x, g.n = n;
        g.norm = L.attn_norm, g.eps = s.eps, g.Ya = a.qkv, g.Yb = a.ixproj, g.mode = GEMV_QKV, g.bias = L.bqkv;
        g.s = s, g.rows = a.rows, g.seqs = a.seqs, g.layer = l, g.freq = a.rope_freq, g.qa = L.qqkv;
        gemv_phase<NT, QW>(g, smem);
        grid.sync();
        // Does a row select in this layer, and how many positions does the widest row attend?  (Every block
        // works it out alike.)
        int sel_on = 0, need = 1;
        for (int r = 0; r < n; r++) {
            RowDev rw = a.rows[r];
            SeqDev sq = a.seqs[rw.seq];
            int len = rw.pos + 1, sl = row_selects(sq, l, len);
            sel_on |= sl;
            need = max(need, sl ? sq.topk : len);
        }
        int32_t *sel = a.sel ? a.sel + (size_t)l * a.sel_layer : nullptr;
        int *cnt = a.cnt ? a.cnt + (size_t)l * a.cnt_layer : nullptr;
        int ixt = L.wix ? n : 0;
        if (!sel_on && cnt && a.cnt_layer) // the tests' per-layer log: -1 (no selection), as k_topk leaves it
            for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < n; r += gridDim.x * blockDim.x) cnt[r] = -1;
        if (sel_on) {
            // the indexer's queries, weights and key (a row per block, a vector per warp), the scores of every
            // key (16 per warp task), the top-k of each selecting row (a row per block)
            for (int vb = blockIdx.x; vb < n; vb += gridDim.x) {
                __syncthreads();
                for (int w = threadIdx.x >> 5; w <= s.ixH; w += 8)
                    ix_vec64(s, a.ixproj, a.ixln, a.ix_freq, a.rows, a.seqs, l, a.iq, a.iw, vb, w,
                             reinterpret_cast<float *>(smem) + 64 * (threadIdx.x >> 5));
            }
            grid.sync();
            int tiles = (a.grid_len + 15) / 16;
            for (int wt = blockIdx.x * 8 + (threadIdx.x >> 5); wt < n * tiles; wt += gridDim.x * 8)
                ix_scores_warp<64, 1>(s.ixH, a.rows, a.seqs, l, a.iq, a.iw, a.scores, a.score_ld, wt / tiles,
                                      wt % tiles * 16);
            grid.sync();
            for (int r = blockIdx.x; r < n; r += gridDim.x) {
                __syncthreads(); // topk's shared memory may still be read by this block's previous row
                RowDev rw = a.rows[r];
                SeqDev sq = a.seqs[rw.seq];
                int len = rw.pos + 1;
                if (!row_selects(sq, l, len)) {
                    if (threadIdx.x == 0) cnt[r] = -1;
                    continue;
                }
                const float *sc = a.scores + (size_t)r * a.score_ld;
                int32_t *out = sel + (size_t)r * a.sel_ld;
                if (len <= 16 * 256) topk_row<16, 256>(sc, len, sq.topk, out, cnt + r, topk_sm);
                else if (len <= 32 * 256) topk_row<32, 256>(sc, len, sq.topk, out, cnt + r, topk_sm);
                else topk_row<0, 256>(sc, len, sq.topk, out, cnt + r, topk_sm);
            }
            grid.sync();
            ixt = 0;
        }
        // without selection, the indexer's key into the FP8 cache rides with the attention tasks (its queries are
        // not needed); then the attention over each row's selection or causal prefix
        int chunks = (need + CH - 1) / CH, tasks = ixt + n * s.KVH * chunks;
        for (int vb = blockIdx.x; vb < tasks; vb += gridDim.x) {
            if (vb < ixt) {
                __syncthreads(); // smem may still be read by this block's previous task
                if (threadIdx.x < 32)
                    ix_vec64(s, a.ixproj, a.ixln, a.ix_freq, a.rows, a.seqs, l, a.iq, a.iw, vb, s.ixH,
                             reinterpret_cast<float *>(smem));
                continue;
            }
            int t = vb - ixt, c = t % chunks, kh = t / chunks % s.KVH, r = t / (chunks * s.KVH);
            attn_chunk<D, 256>(s, a.qkv, Q, a.rows, a.seqs, l, sel_on ? sel : nullptr, a.sel_ld,
                               sel_on ? cnt : nullptr, a.part, a.maxch, a.counter, a.att, nullptr, c, kh, r);
        }
        grid.sync();
        g = GemvArgs{};
        g.Wa = L.wo, g.rows_a = E, g.cols = E, g.X = a.att, g.n = n, g.Ya = a.x, g.accumulate = 1, g.mode = GEMV_PLAIN;
        g.qa = L.qwo;
        gemv_phase<NT, QW>(g, smem);
        grid.sync();
        g = GemvArgs{};
        g.Wa = L.wgu, g.rows_a = s.F, g.cols = E, g.X = a.x, g.n = n, g.norm = L.ffn_norm, g.eps = s.eps, g.Ya = a.hb;
        g.mode = GEMV_SWIGLU, g.qa = L.qgu;
        gemv_phase<NT, QW>(g, smem);
        grid.sync();
        g = GemvArgs{};
        g.Wa = L.wdown, g.rows_a = E, g.cols = s.F, g.X = a.hb, g.n = n, g.Ya = a.x, g.accumulate = 1, g.mode = GEMV_PLAIN;
        g.qa = L.qdown;
        gemv_phase<NT, QW>(g, smem);
        if (l + 1 < a.n_layer) grid.sync();
    }
#else
    (void)a;
#endif
}

template <int NT, int D, bool QW> int launch_decode(const DecodeArgs &a) {
    constexpr int NP = 8 * NT;
    const Shape &s = a.s;
    // the tensor-core GEMV's staging, or n rows of f32 input (the indexer's projection; with QW every quantised
    // phase, of E or F columns)
    size_t smem = mmv_smem(s.E, NP), sf = mmv_smem(s.F, NP);
    size_t sb = (size_t)a.n * (QW && s.F > s.E ? s.F : s.E) * sizeof(float);
    if (sf > smem) smem = sf;
    if (sb > smem) smem = sb;
    static size_t smem_set = 48 * 1024, smem_asked = 0; // the attribute set; the size per_sm was worked out for
    static int per_sm = -1;
    if (smem != smem_asked) {
        if (smem > smem_set) {
            if (cudaFuncSetAttribute(k_decode<NT, D, QW>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) !=
                cudaSuccess)
                return -1;
            smem_set = smem;
        }
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k_decode<NT, D, QW>, 256, smem) != cudaSuccess)
            per_sm = 0;
        smem_asked = smem;
    }
    if (per_sm < 1) return -1;
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeCooperative;
    attr[0].val.cooperative = 1;
    cfg.gridDim = dim3(sms() * (per_sm < 2 ? per_sm : 2)), cfg.blockDim = dim3(256), cfg.dynamicSmemBytes = smem;
    cfg.stream = dsa_cu_stream(), cfg.attrs = attr, cfg.numAttrs = 1;
    return cudaLaunchKernelEx(&cfg, k_decode<NT, D, QW>, a) == cudaSuccess ? 0 : -1;
}

} // namespace

// ---- launchers ----------------------------------------------------------------------------------------------------

size_t cu_smem_optin(void) {
    static int optin = -1;
    int dev = 0;
    if (optin < 0 && (cudaGetDevice(&dev) != cudaSuccess ||
                      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess))
        optin = 0;
    return (size_t)optin;
}

int cu_gemv_mma(int want) {
    if (want >= 0) g_mmv = want && mmv_capable();
    return g_mmv;
}

int cu_decode(const DecodeArgs &a) {
    const Shape &s = a.s;
    int attr = 0, dev = 0;
    cudaGetDevice(&dev);
    if (cudaDeviceGetAttribute(&attr, cudaDevAttrCooperativeLaunch, dev) != cudaSuccess || !attr || !mmv_capable())
        return -1;
    if (a.n < 1 || a.n > 16 || s.E % 8 || s.F % 8 || s.H % s.KVH || s.H / s.KVH > GMAX || s.D % 2 || s.rope_dim % 2 ||
        (s.ixH && (s.ixd != 64 || s.ixH > 8)))
        return -1;
    DecodeArgs b = a;
    b.maxch = (a.grid_len + CH - 1) / CH;
    if (s.D == 64 && !a.quant) return b.n <= 8 ? launch_decode<1, 64, false>(b) : launch_decode<2, 64, false>(b);
    if (s.D == 64) return b.n <= 8 ? launch_decode<1, 64, true>(b) : launch_decode<2, 64, true>(b);
    // quantised phases only for heads of 64 (the default model's; each variant of this kernel costs minutes of build)
    if (s.D == 128 && !a.quant) return b.n <= 8 ? launch_decode<1, 128, false>(b) : launch_decode<2, 128, false>(b);
    return -1;
}

int cu_gemv_f16(const __half *W, int rows, int cols, const float *X, int n, const float *norm, float eps, float *Y,
                int accumulate, int swiglu, const QMat *q) {
    GemvArgs g = {};
    if (q) g.qa = *q;
    g.Wa = W, g.rows_a = rows, g.cols = cols, g.X = X, g.n = n, g.norm = norm, g.eps = eps, g.Ya = Y;
    g.accumulate = accumulate, g.mode = swiglu ? GEMV_SWIGLU : GEMV_PLAIN;
    return launch_gemv(g);
}

int cu_gemv_f32(const float *W, int rows, int cols, const float *X, int n, const float *norm, float eps, float *Y) {
    GemvArgs g = {};
    g.Wb = W, g.rows_b = rows, g.cols = cols, g.X = X, g.n = n, g.norm = norm, g.eps = eps, g.Yb = Y;
    return launch_gemv(g);
}

int cu_gemv_qkv(const Shape &s, const __half *Wqkv, const float *bias, const float *Wix, const float *X, int n,
                const float *norm, const RowDev *rows, const SeqDev *seqs, int layer, const float *freq, float *qkv,
                float *ixproj, const QMat *q) {
    GemvArgs g = {};
    if (q) g.qa = *q;
    g.Wa = Wqkv, g.rows_a = s.E + 2 * s.KVH * s.D, g.Wb = Wix, g.rows_b = Wix ? s.ix_rows : 0, g.cols = s.E;
    g.X = X, g.n = n, g.norm = norm, g.eps = s.eps, g.Ya = qkv, g.Yb = ixproj, g.mode = GEMV_QKV;
    g.bias = bias, g.s = s, g.rows = rows, g.seqs = seqs, g.layer = layer, g.freq = freq;
    return launch_gemv(g);
}

int cu_embed(const __half *embd, int E, const RowDev *rows, int n, float *x) {
    return launch(k_embed, dim3(n), dim3(256), 0, embd, E, rows, x);
}

int cu_rmsnorm_h(const float *x, const float *w, int E, float eps, int n, __half *xh, float *xn) {
    return launch(k_rmsnorm_h, dim3(n), dim3(256), 0, x, w, E, eps, xh, xn);
}

int cu_swiglu_h(const float *gu, int F, int n, __half *hb) {
    return launch(k_swiglu_h, dim3((F + 255) / 256, n), dim3(256), 0, gu, F, hb);
}

int cu_gather_rows(const float *x, int E, const int *which, int n, float *out) {
    return launch(k_gather, dim3(n), dim3(256), 0, x, E, which, out);
}

int cu_rope_kv(const Shape &s, float *qkv, const float *bias, const RowDev *rows, int n,
               const SeqDev *seqs, int layer, const float *rope_freq) {
    if (s.rope_dim / 2 > 256) return -1;
    return launch(k_rope_kv, dim3(n), dim3(128), 0, s, qkv, bias, rows, seqs, layer, rope_freq);
}

int cu_ix_project(const Shape &s, float *proj, const float *ln, const float *rope_freq, const RowDev *rows, int n,
                  const SeqDev *seqs, int layer, float *iq, float *iw) {
    if (s.ix_rope_dim / 2 > 128) return -1;
    if (s.ixd == 64 && s.ixH < 32) {
        return launch(k_ix_project64, dim3(n), dim3(32 * (s.ixH + 1)), 0, s, (const float *)proj, ln, rope_freq, rows,
                      seqs, layer, iq, iw);
    }
    size_t smem = (size_t)(s.ixH + 1) * s.ixd * sizeof(float);
    return launch(k_ix_project, dim3(n), dim3(128), smem, s, (const float *)proj, ln, rope_freq, rows, seqs, layer, iq,
                  iw);
}

int cu_fp8_quant(int n, int d, const float *x, uint8_t *q, float *scale) {
    return launch(k_fp8_quant, dim3(n), dim3(64), 0, d, x, q, scale);
}
