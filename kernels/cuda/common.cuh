// Private to kernels/cuda: device helpers that more than one translation unit uses (each gets its own copy).
#ifndef DSA_CUDA_COMMON_CUH
#define DSA_CUDA_COMMON_CUH

#include "internal.cuh"

#include <math.h>

namespace {

template <typename... KArgs, typename... Args>
int launch(void (*k)(KArgs...), dim3 grid, dim3 block, size_t smem, Args... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = dsa_cu_stream();
    return cudaLaunchKernelEx(&cfg, k, args...) == cudaSuccess ? 0 : -1;
}

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

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800 // sm_80+ code (and the host pass, which only parses it)
// c += A·B on tensor cores: A 16×16 f16 (row), B 16×8 f16 (col), c 16×8 f32, in the PTX ISA's fragment layouts
// ("Matrix Fragments for mma.m16n8k16 with floating point type").
__device__ __forceinline__ void mma_16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
#ifdef __CUDA_ARCH__
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    (void)c, (void)a, (void)b0, (void)b1;
#endif
}
#endif

} // namespace

#endif
