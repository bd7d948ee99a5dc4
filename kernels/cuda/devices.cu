// Device discovery for the CUDA backend.
#include "cuda.h"

#include <cuda_runtime.h>
#include <stdio.h>

extern "C" int dsa_cuda_devices(char *name, size_t name_len, size_t *mem_bytes, char *why, size_t why_len) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
        if (why && why_len) snprintf(why, why_len, "%s", e != cudaSuccess ? cudaGetErrorString(e) : "no device");
        return 0;
    }
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, 0) == cudaSuccess) {
        if (name && name_len) snprintf(name, name_len, "%s", p.name);
        if (mem_bytes) *mem_bytes = p.totalGlobalMem;
    }
    return n;
}
