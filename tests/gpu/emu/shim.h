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

struct EmuFiber;
extern EmuFiber *emu_cur;
struct EmuFiberPub { uint3 tid; };
#define threadIdx (((EmuFiberPub *)emu_cur)->tid)
extern uint3 blockIdx, gridDim, blockDim;

void emu_syncthreads();
void emu_warp_barrier();
void *emu_dyn_smem();
void *emu_static_smem(const char *key, size_t bytes);
void *emu_shfl_slot(int phase_sel, int lane); // per warp exchange slot
int &emu_shfl_phase();
void emu_fail(const char *msg);
#define __syncthreads() emu_syncthreads()

template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int o) {
    if (mask != 0xffffffffu) emu_fail("shfl mask");
    int lane = threadIdx.x & 31, &ph = emu_shfl_phase();
    memcpy(emu_shfl_slot(ph, lane), &v, sizeof v);
    ((int *)emu_shfl_slot(ph, lane))[2] = o; // every lane must ask the same offset
    emu_warp_barrier();
    T r;
    memcpy(&r, emu_shfl_slot(ph, lane ^ o), sizeof r);
    if (((int *)emu_shfl_slot(ph, lane ^ o))[2] != o) emu_fail("shfl offsets differ within the warp");
    ph ^= 1;
    return r;
}

static inline float __half2float(__half h) { _Float16 f; memcpy(&f, &h.x, 2); return (float)f; }
static inline __half __float2half_rn(float f) { _Float16 h = (_Float16)f; __half r; memcpy(&r.x, &h, 2); return r; }
static inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
static inline unsigned short __half_as_ushort(__half h) { return h.x; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
template <typename T> static inline T __ldg(const T *p) { return *p; }
template <typename T> static inline T __ldcg(const T *p) { return *p; }
