/* Helpers the session-store tests share (tests/test_sessions*.c): temporary stores, a tiny model with a random DSA
 * indexer attached (fast engine state of the real shape: K/V f16 rows and FP8 indexer keys + scales), and
 * deterministic synthetic state written into a context through the engine's own state functions. */
#ifndef DSA_TEST_SESSIONS_UTIL_H
#define DSA_TEST_SESSIONS_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dsa.h"
#include "model.h"
#include "sessions.h"
#include "testutil.h"

/* A fresh empty directory under $TMPDIR (removed by st_rmdir). */
static inline char *st_tmpdir(const char *tag) {
    const char *t = getenv("TMPDIR");
    char *p = malloc(4096);
    snprintf(p, 4096, "%s/dsachat-%s.XXXXXX", t && *t ? t : "/tmp", tag);
    if (!p || !mkdtemp(p)) {
        perror("mkdtemp");
        exit(1);
    }
    return p;
}

static inline void st_rmdir(char *dir) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
    free(dir);
}

/* A tiny model from tests/fixtures/tiny (NULL name: qwen2-f32f16) with a random indexer to attach. */
typedef struct {
    dsa_model *m;
    dsa_indexer *ix;
    ses_engine_fp fp;
} st_engine;

static inline void st_engine_load(st_engine *e, const char *name) {
    char err[512], path[256];
    snprintf(path, sizeof path, "tiny/%s.gguf", name ? name : "qwen2-f32f16");
    if (dsa_model_load(tu_fixture(path), &e->m, NULL, NULL, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    dsa_indexer_hp hp = {.n_head = 2, .head_dim = 16, .rope_dim = 8, .rope_base = 10000.0f, .top_k = 16,
                         .norm_eps = 1e-6f, .dense_layers = 0};
    const dsa_hparams *mh = dsa_model_hparams(e->m);
    if (dsa_indexer_alloc(&hp, mh->n_layer, mh->n_embd, 7, &e->ix, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    memset(&e->fp, 0, sizeof e->fp);
    snprintf(e->fp.model_fp, sizeof e->fp.model_fp, "%s", dsa_model_fingerprint(e->m));
    snprintf(e->fp.sidecar_fp, sizeof e->fp.sidecar_fp, "test-indexer-seed-7");
}

static inline void st_engine_free(st_engine *e) {
    dsa_indexer_free(e->ix);
    dsa_model_free(e->m);
}

/* A context with the indexer attached (DSA, k = 16: sparse beyond 16 tokens). */
static inline dsa_ctx *st_ctx(st_engine *e, int n_ctx) {
    char err[512];
    dsa_ctx *c;
    if (dsa_ctx_new(e->m, n_ctx, 1, &c, err, sizeof err) ||
        dsa_ctx_set_sparse(c, e->ix, DSA_SEL_INDEXER, 16, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    return c;
}

static inline uint64_t st_mix(uint64_t a, uint64_t b) {
    uint64_t s = a * 0x9E3779B97F4A7C15ull ^ b;
    return tu_splitmix(&s);
}

/* The synthetic token id at position t of a stream named by seed. */
static inline int32_t st_token(uint64_t seed, int t) { return (int32_t)(st_mix(seed, (uint64_t)t) % 250); }

/* Synthetic state of positions [t0, t0+n) of a stream: every element a function of (seed, token, layer, index). */
static inline void st_fill(dsa_ctx *c, uint64_t seed, int t0, int n) {
    int L = dsa_model_hparams(dsa_ctx_model(c))->n_layer, kv = dsa_ctx_kv_dim(c), d = dsa_ctx_index_dim(c);
    uint16_t *K = malloc((size_t)n * kv * 2), *V = malloc((size_t)n * kv * 2);
    uint8_t *k8 = malloc((size_t)n * d + 1);
    float *sc = malloc((size_t)n * sizeof *sc);
    char err[256];
    for (int l = 0; l < L; l++) {
        for (int i = 0; i < n; i++) {
            uint64_t h = st_mix(seed ^ (uint64_t)l << 40, (uint64_t)(t0 + i));
            for (int j = 0; j < kv; j++) {
                K[(size_t)i * kv + j] = (uint16_t)(st_mix(h, (uint64_t)j) & 0x3bff);
                V[(size_t)i * kv + j] = (uint16_t)(st_mix(h, (uint64_t)j + 100000) & 0x3bff);
            }
            for (int j = 0; j < d; j++) k8[(size_t)i * d + j] = (uint8_t)st_mix(h, (uint64_t)j + 200000);
            sc[i] = (float)(h % 1000) / 997.0f;
        }
        if (dsa_ctx_cache_put(c, l, t0, n, K, V, k8, sc, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            exit(1);
        }
    }
    free(K), free(V), free(k8), free(sc);
    if (t0 + n > dsa_ctx_pos(c) && dsa_ctx_set_pos(c, t0 + n, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
}

/* 1 when positions [0, n) of c hold exactly st_fill's state for seed (filled from position 0). */
static inline int st_verify(dsa_ctx *c, uint64_t seed, int n) {
    int ok = 1, L = dsa_model_hparams(dsa_ctx_model(c))->n_layer, kv = dsa_ctx_kv_dim(c), d = dsa_ctx_index_dim(c);
    size_t nn = (size_t)(n ? n : 1);
    uint16_t *K = malloc(nn * kv * 2), *V = malloc(nn * kv * 2);
    uint8_t *k8 = malloc(nn * d + 1);
    float *s = malloc(nn * 4);
    char err[256];
    for (int l = 0; l < L && ok; l++) {
        if (dsa_ctx_cache_get(c, l, 0, n, K, V, k8, s, err, sizeof err)) ok = 0;
        for (int i = 0; i < n && ok; i++) {
            uint64_t h = st_mix(seed ^ (uint64_t)l << 40, (uint64_t)i);
            for (int j = 0; j < kv; j++)
                if (K[(size_t)i * kv + j] != (uint16_t)(st_mix(h, (uint64_t)j) & 0x3bff) ||
                    V[(size_t)i * kv + j] != (uint16_t)(st_mix(h, (uint64_t)j + 100000) & 0x3bff))
                    ok = 0;
            for (int j = 0; j < d; j++)
                if (k8[(size_t)i * d + j] != (uint8_t)st_mix(h, (uint64_t)j + 200000)) ok = 0;
            if (d && s[i] != (float)(h % 1000) / 997.0f) ok = 0;
        }
    }
    free(K), free(V), free(k8), free(s);
    return ok;
}

#endif
