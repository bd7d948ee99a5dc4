/* Private to kernels/cpu: the AVX2+F16C attention ops (ops_avx2.c) that ops.c dispatches to, and the SIMD index
 * scores (dsa_ops_avx2.c, dsa_ops_avx512.c) that dsa_ops.c dispatches to. */
#ifndef DSA_OPS_IMPL_H
#define DSA_OPS_IMPL_H

#include <stddef.h>
#include <stdint.h>

void dsa_axpy_f16_avx2(int n, float a, const uint16_t *x, float *y);
float dsa_dot_f16_avx2(int n, const uint16_t *x, const float *y);
void dsa_f32_to_f16_row_avx2(int n, const float *src, uint16_t *dst);
void dsa_softmax_avx2(int n, float *x);
void dsa_swiglu_avx2(int n, float *g, const float *u);
/* idx: NULL for rows 0..n-1, else the rows to read */
void dsa_attn_scores_f16_avx2(int n, int d, const uint16_t *K, size_t stride, const int32_t *idx, const float *q,
                              float scale, float *out);
void dsa_attn_sum_f16_avx2(int n, int d, const float *w, const uint16_t *V, size_t stride, const int32_t *idx,
                           float *o);
/* the same for G heads at once (q: G·d contiguous; out, w: G rows of stride ps; o: G rows of stride os); d a
 * multiple of 8 */
void dsa_attn_scores_f16_g_avx2(int G, int n, int d, const uint16_t *K, size_t stride, const int32_t *idx,
                                const float *q, float scale, float *out, size_t ps);
void dsa_attn_sum_f16_g_avx2(int G, int n, int d, const float *w, size_t ps, const uint16_t *V, size_t stride,
                             const int32_t *idx, float *o, size_t os);
/* dsa_indexer_scores_rows (one query is R = 1); d a multiple of 8 (avx2) or 16 (avx512), at most 256 */
void dsa_indexer_scores_rows_avx2(int R, const int *n, int H, int d, const uint8_t *K8, const float *kscale,
                                  const float *q, const float *w, float *out, size_t ldo);
void dsa_indexer_scores_rows_avx512(int R, const int *n, int H, int d, const uint8_t *K8, const float *kscale,
                                    const float *q, const float *w, float *out, size_t ldo);
/* dsa_topk's two passes over the scores (dsa_ops.c has them in C, and the rank keys they compare) */
int dsa_topk_gather_avx512(int n, const float *score, uint32_t floor, uint64_t *out);
int dsa_topk_emit_avx512(int n, const float *score, uint64_t thr, int32_t *idx);

#endif
