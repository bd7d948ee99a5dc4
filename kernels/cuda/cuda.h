/*
 * kernels/cuda — the NVIDIA backend (built when nvcc is found; see DSA_CUDA in CMakeLists.txt).
 * So far it only reports the devices; the model's kernels arrive with the CUDA backend issue.
 */
#ifndef DSA_CUDA_H
#define DSA_CUDA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices (0 when there is no driver or no device); the first one's name and memory go to
 * name/mem_bytes when count > 0.  why (may be NULL) gets the CUDA runtime's reason when the count is 0. */
int dsa_cuda_devices(char *name, size_t name_len, size_t *mem_bytes, char *why, size_t why_len);

#ifdef __cplusplus
}
#endif

#endif
