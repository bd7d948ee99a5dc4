/*
 * bench_cuda: each CUDA kernel's time against its floor (bytes it must move over the measured HBM bandwidth).
 * Prints one JSON object (the numbers tests/gpu/run.sh puts in the GPU summary).  Exit 77 without a device.
 *
 *   bench_cuda [--json]
 *
 * Inputs are random (never zeros) and rotate among enough copies to overflow the L2 cache where the kernel
 * streams from HBM.  Times are medians of CUDA-event timings after warm-up.
 */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#ifndef DSA_HAVE_CUDA
int main(void) {
    fprintf(stderr, "bench_cuda: built without CUDA\n");
    return 77;
}
#else
#include "../kernels/cuda/cuda.h"

static uint64_t rs = 0x9E3779B97F4A7C15ull;
static float frand(void) {
    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
    return (float)((rs >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static void *dev_random(size_t bytes, int kind) { /* kind 0: f32 in [-1,1), 1: f16, 2: bytes */
    void *h = malloc(bytes), *d = dsa_cuda_alloc(bytes);
    if (!h || !d) {
        fprintf(stderr, "bench_cuda: out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    if (kind == 0)
        for (size_t i = 0; i < bytes / 4; i++) ((float *)h)[i] = frand();
    else if (kind == 1)
        for (size_t i = 0; i < bytes / 2; i++) {
            float f = frand() * 0.05f;
            dsa_f32_to_f16_row(1, &f, (uint16_t *)h + i);
        }
    else
        for (size_t i = 0; i < bytes; i++) ((uint8_t *)h)[i] = (uint8_t)((rs = rs * 6364136223846793005ull + 1) >> 56) & 0x77;
    dsa_cuda_put(d, h, bytes);
    free(h);
    return d;
}

/* ---- the copy ceiling ---- */
typedef struct {
    void *a, *b;
    size_t bytes;
} copy_job;
static void run_copy(void *u) {
    copy_job *j = u;
    dsa_cuda_copy_d2d(j->b, j->a, j->bytes);
}

/* ---- index scores: B rows, each its own sequence of L keys ---- */
#define SETS 8
typedef struct {
    int B, L, H, d, set;
    dsa_cuk_rows *rows[SETS];
    float *q, *w, *out;
} score_job;
static void run_scores(void *u) {
    score_job *j = u;
    dsa_cuk_index_scores(j->rows[j->set++ % SETS], j->H, j->d, j->q, j->w, j->out, j->L);
}
/* SETS calls back to back, one per buffer set, each into its own output (the top-k inputs below) */
static float *score_outs[SETS];
static void run_scores_b2b(void *u) {
    score_job *j = u;
    for (int s = 0; s < SETS; s++) dsa_cuk_index_scores(j->rows[s], j->H, j->d, j->q, j->w, score_outs[s], j->L);
}

typedef struct {
    int rows, cols, n, set;
    uint16_t *W[4];
    float *x, *y, *norm;
} gemv_job;
static void run_gemv(void *u) {
    gemv_job *j = u;
    int s = j->set++ % 4;
    dsa_cuk_gemv_f16(j->W[s], j->rows, j->cols, j->x, j->n, j->norm, 1e-5f, j->y, 0);
}

typedef struct {
    int m;
    uint16_t *a, *b;
    float *c;
    int rc;
} gemm_job;
static void run_gemm(void *u) {
    gemm_job *j = u;
    j->rc |= dsa_cuda_gemm_f16(j->a, j->m, j->m, j->b, j->m, j->c);
}

/* prefill attention: the last 256 rows of an 8K prompt, each over its causal prefix, per-row kernel or tiled */
typedef struct {
    int flash, rc;
    dsa_cuk_rows *rows;
    float *q, *out;
    int *cnt;
} prefill_attn_job;
static void run_prefill_attn(void *u) {
    prefill_attn_job *j = u;
    j->rc |= j->flash ? dsa_cuk_flash_attention(j->rows, 9, 3, 64, j->q, j->out)
                      : dsa_cuk_attention(j->rows, 9, 3, 64, j->q, NULL, 0, j->cnt, j->out);
}

/* ---- a decode step's matrix products: 30 layers of the default shape, then the logits; f16 or quantised ---- */
#define STEP_LAYERS 30
enum { SE = 576, SF = 1536, SQKV = 960, SV = 49152 };
typedef struct {
    int n, quant, rc; /* rc: any launch refused */
    void *qkv[STEP_LAYERS], *wo[STEP_LAYERS], *gu[STEP_LAYERS], *down[STEP_LAYERS], *out; /* f16 or repacked blocks */
    float *x, *y, *h, *logits, *norm;
} step_job;
static void run_step(void *u) {
    step_job *j = u;
    int rc = 0;
    for (int l = 0; l < STEP_LAYERS; l++) {
        if (j->quant) {
            rc |= dsa_cuk_gemv_q(DSA_Q4_1, j->qkv[l], SQKV, SE, j->x, j->n, j->norm, 1e-5f, j->y, 0, 0);
            rc |= dsa_cuk_gemv_q(DSA_Q4_1, j->wo[l], SE, SE, j->y, j->n, NULL, 1e-5f, j->x, 1, 0);
            rc |= dsa_cuk_gemv_q(DSA_Q4_1, j->gu[l], SF, SE, j->x, j->n, j->norm, 1e-5f, j->h, 0, 1);
            rc |= dsa_cuk_gemv_q(DSA_Q4_1, j->down[l], SE, SF, j->h, j->n, NULL, 1e-5f, j->x, 1, 0);
        } else {
            rc |= dsa_cuk_gemv_f16(j->qkv[l], SQKV, SE, j->x, j->n, j->norm, 1e-5f, j->y, 0);
            rc |= dsa_cuk_gemv_f16(j->wo[l], SE, SE, j->y, j->n, NULL, 1e-5f, j->x, 1);
            rc |= dsa_cuk_gemv_swiglu(j->gu[l], SF, SE, j->x, j->n, j->norm, 1e-5f, j->h);
            rc |= dsa_cuk_gemv_f16(j->down[l], SE, SF, j->h, j->n, NULL, 1e-5f, j->x, 1);
        }
    }
    if (j->quant) rc |= dsa_cuk_gemv_q(DSA_Q8_0, j->out, SV, SE, j->x, j->n, j->norm, 1e-5f, j->logits, 0, 0);
    else rc |= dsa_cuk_gemv_f16(j->out, SV, SE, j->x, j->n, j->norm, 1e-5f, j->logits, 0);
    j->rc |= rc;
}

/* The step timed, after one untimed run whose launches and kernels must all have succeeded: -1 otherwise (err says
 * why), so that a refused or faulting kernel is never timed as a fast one. */
static double time_step(step_job *j, char *err, size_t errlen) {
    j->rc = 0;
    run_step(j);
    if (j->rc) return snprintf(err, errlen, "a launch was refused"), -1;
    if (dsa_cuda_sync(err, errlen)) return -1;
    double ms = dsa_cuda_time_ms(run_step, j, 2, 20);
    if (j->rc) return snprintf(err, errlen, "a launch was refused"), -1;
    return dsa_cuda_sync(err, errlen) ? -1 : ms;
}

/* A rows × cols matrix of random GGUF blocks of type (Q4_1: d ~ 0.003, m ~ -0.02; Q8_0: d ~ 0.0004), repacked and
 * in device memory. */
static void *dev_qrandom(int type, int rows, int cols) {
    size_t rsz = dsa_row_size(type, cols), qb = dsa_cuda_q_bytes(type, rows, cols);
    uint8_t *B = malloc((size_t)rows * rsz), *Q = malloc(qb);
    void *d = dsa_cuda_alloc(qb);
    if (!B || !Q || !d) {
        fprintf(stderr, "bench_cuda: out of memory (%zu bytes)\n", qb);
        exit(1);
    }
    int bsz = type == DSA_Q4_1 ? 20 : 34;
    for (size_t b = 0; b < (size_t)rows * cols / 32; b++) {
        uint8_t *blk = B + b * bsz;
        float dm[2] = {type == DSA_Q4_1 ? 0.003f : 0.0004f, -0.02f};
        dsa_f32_to_f16_row(type == DSA_Q4_1 ? 2 : 1, dm, (uint16_t *)blk);
        for (int i = type == DSA_Q4_1 ? 4 : 2; i < bsz; i++) blk[i] = (uint8_t)((rs = rs * 6364136223846793005ull + 1) >> 56);
    }
    dsa_cuda_q_repack(type, B, rows, cols, Q);
    dsa_cuda_put(d, Q, qb);
    free(B), free(Q);
    return d;
}

typedef struct {
    int L, k;
    dsa_cuk_rows *rows;
    float *score;
    int *cnt;
    int32_t *idx;
} topk_job;
static void run_topk(void *u) {
    topk_job *j = u;
    dsa_cuk_topk(j->rows, j->score, j->L, j->idx, j->k, j->cnt);
}
static void run_topk_b2b(void *u) {
    topk_job *j = u;
    for (int s = 0; s < SETS; s++) dsa_cuk_topk(j->rows, score_outs[s], j->L, j->idx, j->k, j->cnt);
}

typedef struct {
    int H, KVH, D, k;
    dsa_cuk_rows *rows;
    float *q, *out;
    int *cnt;
    int32_t *sel;
} attn_job;
static void run_attn(void *u) {
    attn_job *j = u;
    dsa_cuk_attention(j->rows, j->H, j->KVH, j->D, j->q, j->sel, j->k, j->cnt, j->out);
}

int main(void) {
    char name[128], why[128];
    size_t mem;
    if (dsa_cuda_devices(name, sizeof name, &mem, why, sizeof why) <= 0) {
        fprintf(stderr, "bench_cuda: no usable device (%s)\n", why);
        return 77;
    }
    json_t *J = json_object();
    json_object_set_new(J, "device", json_string(name));

    /* HBM ceiling: a 2 GiB device-to-device copy, bytes read + written */
    copy_job cj = {dsa_cuda_alloc(1u << 31), dsa_cuda_alloc(1u << 31), 1u << 31};
    dsa_cuda_fill(cj.a, 0x3c, cj.bytes);
    double ms = dsa_cuda_time_ms(run_copy, &cj, 3, 10);
    double hbm = 2.0 * cj.bytes / (ms * 1e-3); /* bytes/s */
    json_object_set_new(J, "hbm_copy_GBps", json_real(hbm / 1e9));
    dsa_cuda_free(cj.a), dsa_cuda_free(cj.b);

    /* matrix-product ceiling: 8192³ through cuBLAS, f16 in, f32 out (random data) */
    gemm_job gm = {8192, dev_random((size_t)8192 * 8192 * 2, 1), dev_random((size_t)8192 * 8192 * 2, 1),
                   dsa_cuda_alloc((size_t)8192 * 8192 * 4), 0};
    run_gemm(&gm);
    char gerr[256] = "";
    double tflops = 0;
    if (!gm.rc && !dsa_cuda_sync(gerr, sizeof gerr)) {
        ms = dsa_cuda_time_ms(run_gemm, &gm, 3, 10);
        if (!gm.rc && !dsa_cuda_sync(gerr, sizeof gerr)) tflops = 2.0 * 8192 * 8192 * 8192 / (ms * 1e-3) / 1e12;
    }
    json_object_set_new(J, "gemm_f16_TFLOPs", json_real(tflops));
    dsa_cuda_free(gm.a), dsa_cuda_free(gm.b), dsa_cuda_free(gm.c);

    /* indexer scores at 8K context × batch 16: 16 sequences × 8192 keys × (64 B + 4 B scale) + 4 B score out */
    score_job sj = {16, 8192, 4, 64, 0, {0}, 0, 0, 0};
    int lens[16];
    for (int i = 0; i < 16; i++) lens[i] = sj.L;
    for (int s = 0; s < SETS; s++) {
        uint8_t *k8 = dev_random((size_t)sj.B * sj.L * sj.d, 2);
        float *ks = dev_random((size_t)sj.B * sj.L * 4, 0);
        sj.rows[s] = dsa_cuk_rows_new(sj.B, lens, sj.L, 0, k8, ks, (size_t)sj.L, sj.d, NULL, NULL, 0, 0);
    }
    sj.q = dev_random((size_t)sj.B * sj.H * sj.d * 4, 0);
    sj.w = dev_random((size_t)sj.B * sj.H * 4, 0);
    sj.out = dsa_cuda_alloc((size_t)sj.B * sj.L * 4);
    double bytes = (double)sj.B * sj.L * (sj.d + 4 + 4);
    const char *one_call = "one call between CUDA events (launch latency included), median of 50";
    const char *b2b = "8 calls back to back over the 8 buffer sets between one pair of CUDA events, divided by 8 "
                      "(launch latency overlapped with the previous call), median of 20";
    for (int s = 0; s < SETS; s++) score_outs[s] = dsa_cuda_alloc((size_t)sj.B * sj.L * 4);
    topk_job tj = {8192, 512, dsa_cuk_rows_new(16, lens, 8192, 512, (uint8_t *)sj.q, NULL, 0, 64, NULL, NULL, 0, 0),
                   sj.out, dsa_cuda_alloc(64), dsa_cuda_alloc((size_t)16 * 512 * 4)};
    /* the shipped kernels, then the new ones (tensor-core scores, register top-k; keys ending in _new) */
    for (int nw = 0; nw < 2; nw++) {
        if (dsa_cuk_select_new(nw) != nw) break;
        char key[64];
        const char *sfx = nw ? "_new" : "";
        ms = dsa_cuda_time_ms(run_scores, &sj, 5, 50);
        snprintf(key, sizeof key, "index_scores_8k_b16%s", sfx);
        json_object_set_new(J, key, json_pack("{s:f,s:f,s:f,s:s}", "ms", ms, "GBps", bytes / (ms * 1e-3) / 1e9,
                                              "hbm_fraction", bytes / (ms * 1e-3) / hbm, "timing", one_call));
        ms = dsa_cuda_time_ms(run_scores_b2b, &sj, 2, 20) / SETS;
        snprintf(key, sizeof key, "index_scores_8k_b16_b2b%s", sfx);
        json_object_set_new(J, key, json_pack("{s:f,s:f,s:f,s:i,s:s}", "ms", ms, "GBps", bytes / (ms * 1e-3) / 1e9,
                                              "hbm_fraction", bytes / (ms * 1e-3) / hbm, "calls", SETS, "timing", b2b));
        /* top-k 512 of 8192 for 16 rows (the scores come from L2) */
        ms = dsa_cuda_time_ms(run_topk, &tj, 5, 50);
        snprintf(key, sizeof key, "topk_512_of_8k_b16%s", sfx);
        json_object_set_new(J, key, json_pack("{s:f,s:f,s:s}", "ms", ms, "byte_floor_ms", /* scores in, positions out */
                                              (16.0 * 8192 * 4 + 16.0 * 512 * 4) / hbm * 1e3, "timing", one_call));
        /* back to back over the 8 sets' scores (written by the calls above) */
        ms = dsa_cuda_time_ms(run_topk_b2b, &tj, 2, 20) / SETS;
        snprintf(key, sizeof key, "topk_512_of_8k_b16_b2b%s", sfx);
        json_object_set_new(J, key, json_pack("{s:f,s:i,s:s}", "ms", ms, "calls", SETS, "timing", b2b));
    }
    dsa_cuk_select_new(0);

    /* GEMV: the output projection (49152 × 576 f16, 56.6 MB), 1 and 16 rows */
    gemv_job gj = {49152, 576, 1, 0, {0}, 0, 0, 0};
    for (int s = 0; s < 4; s++) gj.W[s] = dev_random((size_t)gj.rows * gj.cols * 2, 1);
    gj.x = dev_random((size_t)16 * gj.cols * 4, 0);
    gj.norm = dev_random((size_t)gj.cols * 4, 0);
    gj.y = dsa_cuda_alloc((size_t)16 * gj.rows * 4);
    for (int mma = 0; mma < 2; mma++) { /* the f32 kernel, then the tensor-core one (gemv_49152x576_mma) */
        if (dsa_cuk_gemv_mma(mma) != mma) break;
        json_t *gv = json_array();
        int ns[] = {1, 4, 16};
        for (int i = 0; i < 3; i++) {
            gj.n = ns[i];
            ms = dsa_cuda_time_ms(run_gemv, &gj, 5, 50);
            double b = (double)gj.rows * gj.cols * 2;
            json_array_append_new(gv, json_pack("{s:i,s:f,s:f,s:f}", "rows_in", gj.n, "ms", ms, "GBps",
                                                b / (ms * 1e-3) / 1e9, "hbm_fraction", b / (ms * 1e-3) / hbm));
        }
        json_object_set_new(J, mma ? "gemv_49152x576_mma" : "gemv_49152x576", gv);
    }
    dsa_cuk_gemv_mma(0);

    /* The measured choice of the weights' form (docs/cuda.md): a decode step's matrix products (30 layers of the
     * default shape, then the logits) with f16 weights (k_gemv, the shipped decode GEMV; the engine uses cuBLAS
     * above 2 rows) against the GGUF's blocks (Q4_1 layers, Q8_0 logits) read by k_gemv_q, 1, 2 and 16 rows; 121
     * launches back to back between one pair of events.  f16 on tensor cores too where the device has them
     * (f16_mma). */
    {
        step_job f = {0}, q = {0};
        for (int l = 0; l < STEP_LAYERS; l++) {
            f.qkv[l] = dev_random((size_t)SQKV * SE * 2, 1), f.wo[l] = dev_random((size_t)SE * SE * 2, 1);
            f.gu[l] = dev_random((size_t)2 * SF * SE * 2, 1), f.down[l] = dev_random((size_t)SE * SF * 2, 1);
            q.qkv[l] = dev_qrandom(DSA_Q4_1, SQKV, SE), q.wo[l] = dev_qrandom(DSA_Q4_1, SE, SE);
            q.gu[l] = dev_qrandom(DSA_Q4_1, 2 * SF, SE), q.down[l] = dev_qrandom(DSA_Q4_1, SE, SF);
        }
        f.out = dev_random((size_t)SV * SE * 2, 1);
        q.out = dev_qrandom(DSA_Q8_0, SV, SE);
        q.quant = 1;
        float *x = dev_random((size_t)16 * SF * 4, 0);
        float *y = dev_random((size_t)16 * SQKV * 4, 0), *h = dev_random((size_t)16 * SF * 4, 0);
        float *lg = dsa_cuda_alloc((size_t)16 * SV * 4), *nm = dev_random((size_t)SF * 4, 0);
        f.x = q.x = x, f.y = q.y = y, f.h = q.h = h, f.logits = q.logits = lg, f.norm = q.norm = nm;
        double per_layer = (double)SQKV * SE + SE * SE + 2.0 * SF * SE + SE * SF;
        double fbytes = (STEP_LAYERS * per_layer + (double)SV * SE) * 2;
        double qbytes = STEP_LAYERS * (dsa_cuda_q_bytes(DSA_Q4_1, SQKV, SE) + dsa_cuda_q_bytes(DSA_Q4_1, SE, SE) +
                                       dsa_cuda_q_bytes(DSA_Q4_1, 2 * SF, SE) + dsa_cuda_q_bytes(DSA_Q4_1, SE, SF)) +
                        (double)dsa_cuda_q_bytes(DSA_Q8_0, SV, SE);
        json_t *arr = json_array();
        int ns[] = {1, 2, 16};
        for (int i = 0; i < 3; i++) {
            char ferr[256] = "", qerr[256] = "", merr[256] = "";
            f.n = q.n = ns[i];
            double fm = time_step(&f, ferr, sizeof ferr), qm = time_step(&q, qerr, sizeof qerr), mm = -1;
            if (dsa_cuk_gemv_mma(1) == 1) mm = time_step(&f, merr, sizeof merr);
            dsa_cuk_gemv_mma(0);
            if (fm <= 0 || qm <= 0) { /* say what failed instead of timing it */
                json_array_append_new(arr, json_pack("{s:i,s:s,s:s}", "rows_in", ns[i], "f16_error", ferr, "quant_error",
                                                     qerr));
                fprintf(stderr, "bench_cuda: decode matmuls, %d rows: f16: %s; quantised: %s\n", ns[i],
                        fm > 0 ? "ok" : ferr, qm > 0 ? "ok" : qerr);
                continue;
            }
            json_t *o = json_pack("{s:i,s:f,s:f,s:f,s:f,s:f,s:f,s:f}", "rows_in", ns[i], "f16_ms", fm, "quant_ms", qm,
                                  "quant_speedup", fm / qm, "f16_GBps", fbytes / (fm * 1e-3) / 1e9, "quant_GBps",
                                  qbytes / (qm * 1e-3) / 1e9, "f16_floor_ms", fbytes / hbm * 1e3, "quant_floor_ms",
                                  qbytes / hbm * 1e3);
            if (mm > 0) json_object_set_new(o, "f16_mma_ms", json_real(mm));
            else if (merr[0]) json_object_set_new(o, "f16_mma_error", json_string(merr));
            json_array_append_new(arr, o);
        }
        json_object_set_new(J, "decode_matmuls_f16_vs_quant",
                            json_pack("{s:o,s:f,s:f,s:s}", "runs", arr, "f16_MB", fbytes / 1e6, "quant_MB", qbytes / 1e6,
                                      "timing", "30 layers (QKV, Wo, gate/up + SwiGLU, down) and the logits, 121 "
                                                "launches back to back between one pair of CUDA events, median of 20"));
        for (int l = 0; l < STEP_LAYERS; l++) {
            dsa_cuda_free(f.qkv[l]), dsa_cuda_free(f.wo[l]), dsa_cuda_free(f.gu[l]), dsa_cuda_free(f.down[l]);
            dsa_cuda_free(q.qkv[l]), dsa_cuda_free(q.wo[l]), dsa_cuda_free(q.gu[l]), dsa_cuda_free(q.down[l]);
        }
        dsa_cuda_free(f.out), dsa_cuda_free(q.out), dsa_cuda_free(x), dsa_cuda_free(y), dsa_cuda_free(h);
        dsa_cuda_free(lg), dsa_cuda_free(nm);
    }

    /* prefill attention, dense: the last 256 rows of an 8K prompt (positions 7936..8191, 9/3 heads × 64), the
     * per-row split-K kernel against the tiled one, each against its floors (FLOPs over the cuBLAS ceiling above,
     * K/V bytes over HBM) */
    {
        int n = 256, L = 8192, plens[256], pcnt[256];
        for (int r = 0; r < n; r++) plens[r] = L - n + r + 1, pcnt[r] = -1;
        uint16_t *PK = dev_random((size_t)L * 3 * 64 * 2, 1), *PV = dev_random((size_t)L * 3 * 64 * 2, 1);
        prefill_attn_job pj = {0, 0, dsa_cuk_rows_new(n, plens, L, 0, NULL, NULL, 0, 0, PK, PV, 3, 64),
                               dev_random((size_t)n * 9 * 64 * 4, 0), dsa_cuda_alloc((size_t)n * 9 * 64 * 4),
                               dsa_cuda_alloc(sizeof pcnt)};
        dsa_cuda_put(pj.cnt, pcnt, sizeof pcnt);
        double flops = 0, kvbytes = 2.0 * L * 3 * 64 * 2;
        for (int r = 0; r < n; r++) flops += 4.0 * plens[r] * 9 * 64; /* q·k and p·v, 2 FLOPs a multiply-add */
        json_t *pa = json_pack("{s:i,s:i,s:f,s:f}", "rows", n, "context", L, "flop_floor_ms",
                               tflops > 0 ? flops / (tflops * 1e12) * 1e3 : 0.0, "byte_floor_ms", kvbytes / hbm * 1e3);
        for (int fl = 0; fl < 2 && pj.rows; fl++) {
            char perr[256] = "";
            pj.flash = fl, pj.rc = 0;
            run_prefill_attn(&pj);
            if (pj.rc || dsa_cuda_sync(perr, sizeof perr)) {
                json_object_set_new(pa, fl ? "tiled_error" : "per_row_error",
                                    json_string(pj.rc ? "refused (below sm_80 for the tiled kernel)" : perr));
                continue;
            }
            ms = dsa_cuda_time_ms(run_prefill_attn, &pj, 3, 20);
            json_object_set_new(pa, fl ? "tiled_ms" : "per_row_ms", json_real(ms));
            json_object_set_new(pa, fl ? "tiled_TFLOPs" : "per_row_TFLOPs", json_real(flops / (ms * 1e-3) / 1e12));
        }
        json_object_set_new(J, "prefill_attention_8k_256rows", pa);
        dsa_cuk_rows_free(pj.rows);
        dsa_cuda_free(PK), dsa_cuda_free(PV), dsa_cuda_free(pj.q), dsa_cuda_free(pj.out), dsa_cuda_free(pj.cnt);
    }

    /* attention over 8K positions, 16 rows, 9/3 heads × 64: dense vs 512 selected */
    attn_job aj = {9, 3, 64, 512, NULL, 0, 0, 0, 0};
    uint16_t *K = dev_random((size_t)8192 * 3 * 64 * 2, 1), *V = dev_random((size_t)8192 * 3 * 64 * 2, 1);
    aj.rows = dsa_cuk_rows_new(16, lens, 8192, 0, NULL, NULL, 0, 0, K, V, 3, 64);
    aj.q = dev_random((size_t)16 * aj.H * aj.D * 4, 0);
    aj.out = dsa_cuda_alloc((size_t)16 * aj.H * aj.D * 4);
    int32_t *sel = malloc((size_t)16 * 512 * 4);
    int cnt[16];
    for (int r = 0; r < 16; r++) {
        cnt[r] = 512;
        for (int i = 0; i < 512; i++) sel[r * 512 + i] = i * 16 + r;
    }
    aj.sel = dsa_cuda_alloc((size_t)16 * 512 * 4);
    dsa_cuda_put(aj.sel, sel, (size_t)16 * 512 * 4);
    int dense[16];
    for (int r = 0; r < 16; r++) dense[r] = -1;
    int *dcnt = dsa_cuda_alloc(sizeof cnt), *ddense = dsa_cuda_alloc(sizeof dense);
    dsa_cuda_put(dcnt, cnt, sizeof cnt);
    dsa_cuda_put(ddense, dense, sizeof dense);
    aj.cnt = ddense;
    double dms = dsa_cuda_time_ms(run_attn, &aj, 5, 50);
    aj.cnt = dcnt;
    double sms = dsa_cuda_time_ms(run_attn, &aj, 5, 50);
    /* floor: every K/V row of the 8K positions read once (dense: the rows share one sequence; sparse: the 16 rows'
     * 512 positions are disjoint and cover it) */
    double kv_floor = 2.0 * 8192 * 3 * 64 * 2 / hbm * 1e3;
    json_object_set_new(J, "attention_8k_b16", json_pack("{s:f,s:f,s:f,s:f}", "dense_ms", dms, "sparse_512_ms", sms,
                                                         "speedup", dms / sms, "byte_floor_ms", kv_floor));
    free(sel);
    char *s = json_dumps(J, JSON_INDENT(2));
    puts(s);
    free(s);
    json_decref(J);
    return 0;
}
#endif
