// CUDA shim for host emulation: each CUDA thread is a fiber (emu_rt.cpp), blocks of 256 run one after another.
#pragma once
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(n)
#define __align__(n) __attribute__((aligned(n)))

struct uint3 { unsigned x, y, z; };
struct float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct __half { uint16_t x; };
struct alignas(4) __half2 { __half x, y; };
typedef int cudaStream_t; // unused
struct uint2 { unsigned x, y; };

struct EmuFiber;
extern EmuFiber *emu_cur;
struct EmuFiberPub { uint3 tid, bid; };
#define threadIdx (((EmuFiberPub *)emu_cur)->tid)
#define blockIdx (((EmuFiberPub *)emu_cur)->bid)
extern uint3 gridDim, blockDim;

void emu_syncthreads();
void emu_warp_barrier();
void emu_warp_full(const char *what);
void *emu_dyn_smem();
void *emu_static_smem(const char *key, size_t bytes);
void *emu_shfl_slot(int phase_sel, int lane); // per warp exchange slot (64 bytes)
int &emu_shfl_tag(int phase_sel, int lane);
int &emu_shfl_phase();
float (*emu_warp_out(int phase_sel))[4]; // per warp: 32 lanes' results of a collective computed once
int &emu_warp_done(int phase_sel);
void emu_fail(const char *msg);
#define __syncthreads() emu_syncthreads()

// A warp collective: every lane puts n bytes at mine (and what it asks, tag) in its slot; after the warp's
// barrier f(slot) runs, slot(l) being lane l's bytes; all lanes must ask alike (same tag).  Slots are
// double-buffered, so that no second barrier is needed before the next collective.
template <typename F> inline void emu_collective(const void *mine, size_t n, int tag, F f) {
    if (n > 64) emu_fail("slot");
    emu_warp_full("warp collective (full mask) with lanes that have returned");
    int lane = threadIdx.x & 31, &ph = emu_shfl_phase(), p = ph;
    memcpy(emu_shfl_slot(p, lane), mine, n);
    emu_shfl_tag(p, lane) = tag;
    emu_warp_barrier();
    if (emu_shfl_tag(p, (lane + 1) & 31) != tag) // around the ring: all lanes asked alike
        emu_fail("the lanes of a warp ask different collectives at once");
    f([p](int l) { return (const void *)emu_shfl_slot(p, l); });
    ph ^= 1;
}
// Each lane gets lane src(lane)'s v (its own where src is outside the warp).
template <typename T, typename S> inline T emu_xchg(T v, int tag, S src) {
    T r = v;
    emu_collective(&v, sizeof v, tag, [&](auto slot) {
        int sl = src(threadIdx.x & 31);
        if (sl >= 0 && sl < 32) memcpy(&r, slot(sl), sizeof r);
    });
    return r;
}
static inline void emu_mask(unsigned mask) { if (mask != 0xffffffffu) emu_fail("partial warp mask"); }
template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int o) {
    emu_mask(mask);
    return emu_xchg(v, 0x1000 + o, [o](int l) { return l ^ o; });
}
template <typename T> inline T __shfl_up_sync(unsigned mask, T v, unsigned d) {
    emu_mask(mask);
    return emu_xchg(v, 0x2000 + (int)d, [d](int l) { return l - (int)d; });
}
template <typename T> inline T __shfl_down_sync(unsigned mask, T v, unsigned d) {
    emu_mask(mask);
    return emu_xchg(v, 0x3000 + (int)d, [d](int l) { return l + (int)d; });
}
template <typename T> inline T __shfl_sync(unsigned mask, T v, int src) {
    emu_mask(mask);
    int s = src & 31; // each lane may name its own source
    return emu_xchg(v, 0x4000, [s](int) { return s; });
}
static inline unsigned __ballot_sync(unsigned mask, int pred) {
    emu_mask(mask);
    int p = pred != 0;
    unsigned b = 0;
    emu_collective(&p, sizeof p, 0x5000, [&](auto slot) {
        for (int l = 0; l < 32; l++) b |= (unsigned)(*(const int *)slot(l) != 0) << l;
    });
    return b;
}
static inline void __syncwarp(unsigned mask = 0xffffffffu) { emu_mask(mask); emu_warp_barrier(); }

extern float emu_f16_table[65536]; // every f16's value (emu_rt.cpp): the conversion without F16C is a libgcc call
static inline float __half2float(__half h) { return emu_f16_table[h.x]; }
static inline __half __float2half_rn(float f) { _Float16 h = (_Float16)f; __half r; memcpy(&r.x, &h, 2); return r; }
static inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
static inline unsigned short __half_as_ushort(__half h) { return h.x; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
template <typename T> static inline T __ldg(const T *p) { return *p; }
template <typename T> static inline T __ldcg(const T *p) { return *p; }
