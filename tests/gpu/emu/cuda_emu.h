// The part of the CUDA runtime, device library and cuBLAS that kernels/cuda uses, for compiling it unchanged (but
// for the rewrites of prep.py) on the host: launches run on the fiber emulator (emu_rt.cpp), device memory is host
// memory, graphs are recorded work, cuBLAS's GEMMs run on the host (cuda_emu.cpp).  The "device" is an sm_90 part
// with EMU_SMS multiprocessors (default 2), EMU_PER_SM blocks of the persistent kernel each (default 2) and 227 KB
// of opt-in shared memory a block.
#pragma once
#include "shim.h"
#include "emu_rt.h"
#include <tuple>
#include <type_traits>
#include <map>

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
static inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }
static inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline __half __ushort_as_half(unsigned short u) { __half h; h.x = u; return h; }
static inline __half2 __floats2half2_rn(float a, float b) { return __half2{__float2half_rn(a), __float2half_rn(b)}; }
static inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
static inline int atomicAdd(int *p, int v) { int o = *p; *p = o + v; return o; }
static inline unsigned atomicAdd(unsigned *p, unsigned v) { unsigned o = *p; *p = o + v; return o; }
static inline void __threadfence() {}
template <class A, class B> static inline auto min(A a, B b) -> decltype(a + b) { return b < a ? b : a; }
template <class A, class B> static inline auto max(A a, B b) -> decltype(a + b) { return a < b ? b : a; }

// ---- device PTX the sources use in inline assembly (prep.py routes it here) ------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32, c += A·B, fragments as in the PTX ISA: lane (g, t) = (lane/4,
// lane%4) holds A rows g and g+8, columns 2t, 2t+1 (a[0], a[1]) and 2t+8, 2t+9 (a[2], a[3]); B column g, rows
// 2t, 2t+1 (b0) and 2t+8, 2t+9 (b1); C rows g and g+8, columns 2t, 2t+1.  Products exact, the sum in double,
// rounded once to f32 (the hardware's sum order and rounding are its own: the tests compare with tolerances).
void emu_mma_16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1);
// ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: lanes 8j..8j+7 give the row addresses of matrix j.
void emu_ldsm4(uint32_t *r, const void *p, bool trans);
// cp.async of 16 bytes (zeros when !ok), done no earlier than the wait that covers its group.
void emu_cp_async(void *dst, const void *src, bool ok);
void emu_cp_commit();
void emu_cp_wait(int n);
static inline uint32_t emu_prmt(uint32_t x, uint32_t y, uint32_t sel) { // prmt.b32 default mode
    uint8_t b[8];
    for (int i = 0; i < 4; i++) b[i] = x >> (8 * i), b[4 + i] = y >> (8 * i);
    uint32_t d = 0;
    for (int i = 0; i < 4; i++) {
        unsigned n = (sel >> (4 * i)) & 15;
        uint8_t v = b[n & 7];
        if (n & 8) v = (v & 0x80) ? 0xff : 0;
        d |= (uint32_t)v << (8 * i);
    }
    return d;
}
void emu_grid_sync();
namespace cooperative_groups {
struct grid_group { void sync() { emu_grid_sync(); } };
static inline grid_group this_grid() { return grid_group{}; }
}

// ---- the runtime API -----------------------------------------------------------------------------------------
#include "cuda_runtime_api.h" // the part C code may call too
int emu_env(const char *name, int dflt);
static const int EMU_OPTIN = 232448, EMU_SM_SMEM = 233472;
struct cudaFuncAttributes { int ptxVersion, binaryVersion; };
template <class F> cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, F) {
    a->ptxVersion = a->binaryVersion = 90;
    return cudaSuccess;
}
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
std::map<const void *, int> &emu_smem_limits(); // per kernel: the dynamic shared memory it may be launched with
template <class F> cudaError_t cudaFuncSetAttribute(F f, cudaFuncAttribute, int v) {
    if (v < 0 || v > EMU_OPTIN) return cudaErrorInvalidValue;
    emu_smem_limits()[(const void *)f] = v;
    return cudaSuccess;
}
template <class F> cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *n, F, int threads, size_t smem) {
    int k = emu_env("EMU_PER_SM", 2);
    while (k > 0 && ((size_t)k * (smem + 1024) > (size_t)EMU_SM_SMEM || k * threads > 2048)) k--;
    *n = k;
    return cudaSuccess;
}
enum cudaLaunchAttributeID { cudaLaunchAttributeCooperative = 2 };
struct cudaLaunchAttribute { cudaLaunchAttributeID id; struct { int cooperative; } val; };
struct cudaLaunchConfig_t {
    dim3 gridDim, blockDim;
    size_t dynamicSmemBytes;
    cudaStream_t stream;
    cudaLaunchAttribute *attrs;
    unsigned numAttrs;
};
// Memory, streams, events and graphs.  Device memory is host memory (each allocation ends at a guard page); there
// is one stream in effect and work runs when it is issued, except while a stream is being captured: then launches,
// copies, fills and GEMMs are recorded, and a graph launch runs them again in order (copies read their source then).
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };
enum { cudaStreamNonBlocking = 1 };
enum cudaStreamCaptureMode { cudaStreamCaptureModeThreadLocal = 1 };
struct cudaDeviceProp { char name[256]; size_t totalGlobalMem; int major, minor, multiProcessorCount; };
typedef struct EmuEvent *cudaEvent_t;
typedef struct EmuGraph *cudaGraph_t;
typedef struct EmuGraph *cudaGraphExec_t;
cudaError_t cudaMalloc(void **p, size_t bytes);
template <class T> cudaError_t cudaMalloc(T **p, size_t bytes) { return cudaMalloc((void **)p, bytes); }
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
template <class T> cudaError_t cudaMallocHost(T **p, size_t bytes) { return cudaMallocHost((void **)p, bytes); }
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind k);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind k, cudaStream_t s);
cudaError_t cudaMemsetAsync(void *dst, int byte, size_t bytes, cudaStream_t s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int dev);
cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode m);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *x, cudaGraph_t g, unsigned long long flags);
cudaError_t cudaGraphLaunch(cudaGraphExec_t x, cudaStream_t s);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t x);
// Run f now, or record it into the graph being captured.
void emu_issue(std::function<void()> f);
void emu_set_error(cudaError_t e);

// How the next launches are scheduled (tests vary it): 0 FIFO, 1 LIFO, 2 random, seeded.
extern int emu_policy;
extern unsigned emu_seed;
extern long emu_launches;
template <typename... KA, typename... A>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t *cfg, void (*k)(KA...), A... args) {
    bool coop = false;
    for (unsigned i = 0; i < cfg->numAttrs; i++)
        if (cfg->attrs[i].id == cudaLaunchAttributeCooperative && cfg->attrs[i].val.cooperative) coop = true;
    size_t lim = 48 * 1024;
    auto it = emu_smem_limits().find((const void *)k);
    if (it != emu_smem_limits().end()) lim = it->second;
    if (cfg->dynamicSmemBytes > lim) { // as the device: the attribute was not raised
        emu_set_error(cudaErrorInvalidValue);
        return cudaErrorInvalidValue;
    }
    const dim3 &g = cfg->gridDim, &b = cfg->blockDim;
    if (coop) {
        int per = 0;
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per, k, (int)(b.x * b.y * b.z), cfg->dynamicSmemBytes);
        if ((long)g.x * g.y * g.z > (long)per * emu_env("EMU_SMS", 2)) {
            emu_set_error(cudaErrorCooperativeLaunchTooLarge);
            return cudaErrorCooperativeLaunchTooLarge;
        }
    }
    std::tuple<std::decay_t<KA>...> t(args...);
    uint3 gg{g.x, g.y, g.z}, bb{b.x, b.y, b.z};
    size_t dyn = cfg->dynamicSmemBytes;
    emu_issue([=] {
        emu_launches++;
        emu_launch3(gg, bb, dyn, coop, emu_policy, emu_seed++, [&] { std::apply(k, t); });
    });
    return cudaSuccess;
}
