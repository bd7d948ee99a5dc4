/*
 * The lightning indexer's weights: creating, loading and saving the sidecar, and the per-token projection.
 *
 * Sidecar layout (GGUF v3, general.architecture = "dsa-indexer"):
 *   dsa.indexer.{head_count, key_length, rope.dimension_count, rope.freq_base, top_k, layer_norm_epsilon,
 *                block_count, embedding_length, dense_layers (optional, default 0)}
 *   dsa.base.fingerprint   "xxh3-64:…" of the base model file; dsa.base.name its file name
 *   dsa.provenance         how it was trained (free text)
 *   blk.N.idx_proj.weight   [n_embd, H·d + d + H]  Wq, Wk, Ww stacked (see dsa.h), F16 or F32
 *   blk.N.idx_k_norm.weight [d], blk.N.idx_k_norm.bias [d]
 */
#include "dsa.h"
#include "util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int dsa_indexer_hp_check(const dsa_indexer_hp *hp, char *err, size_t errlen) {
    int d = hp->head_dim;
    if (hp->n_head < 1 || hp->n_head > 64)
        return errf(err, errlen, "indexer head count %d out of range (1..64)", hp->n_head);
    if (d < 8 || d > 256 || (d & (d - 1)))
        return errf(err, errlen, "indexer key length %d must be a power of two in 8..256", d);
    if (hp->rope_dim < 0 || hp->rope_dim > d || hp->rope_dim % 2)
        return errf(err, errlen, "indexer RoPE dims %d must be even and at most the key length %d", hp->rope_dim, d);
    if (hp->rope_dim && !(hp->rope_base > 1.0f))
        return errf(err, errlen, "indexer RoPE base %g must be > 1", hp->rope_base);
    if (hp->top_k < 1) return errf(err, errlen, "indexer top-k %d must be positive", hp->top_k);
    if (hp->dense_layers < 0 || hp->dense_layers > 4096)
        return errf(err, errlen, "indexer dense layers %d out of range", hp->dense_layers);
    if (!(hp->norm_eps > 0 && hp->norm_eps < 1)) return errf(err, errlen, "indexer norm epsilon %g out of range", hp->norm_eps);
    return 0;
}

static dsa_indexer *alloc_indexer(const dsa_indexer_hp *hp, int n_layer, int n_embd) {
    dsa_indexer *ix = calloc(1, sizeof *ix);
    if (!ix) return NULL;
    ix->hp = *hp;
    ix->n_layer = n_layer;
    ix->n_embd = n_embd;
    ix->rows = DSA_INDEXER_ROWS(hp);
    ix->W = calloc((size_t)n_layer * ix->rows * n_embd, sizeof(float));
    ix->ln = calloc((size_t)n_layer * 2 * hp->head_dim, sizeof(float));
    int half = hp->rope_dim / 2;
    ix->rope_freq = malloc((size_t)(half ? half : 1) * sizeof(float));
    if (!ix->W || !ix->ln || !ix->rope_freq) {
        dsa_indexer_free(ix);
        return NULL;
    }
    for (int i = 0; i < half; i++) ix->rope_freq[i] = (float)pow((double)hp->rope_base, -2.0 * i / hp->rope_dim);
    return ix;
}

void dsa_indexer_free(dsa_indexer *ix) {
    if (!ix) return;
    free(ix->W);
    free(ix->ln);
    free(ix->rope_freq);
    free(ix->provenance);
    free(ix);
}

static void set_base_name(dsa_indexer *ix, const char *path) {
    const char *b = strrchr(path, '/');
    snprintf(ix->base_name, sizeof ix->base_name, "%s", b ? b + 1 : path);
}

int dsa_indexer_alloc(const dsa_indexer_hp *hp, int n_layer, int n_embd, uint64_t seed, dsa_indexer **out,
                      char *err, size_t errlen) {
    *out = NULL;
    if (dsa_indexer_hp_check(hp, err, errlen)) return -1;
    if (n_layer < 1 || n_embd < 1) return errf(err, errlen, "indexer shape %d × %d out of range", n_layer, n_embd);
    dsa_indexer *ix = alloc_indexer(hp, n_layer, n_embd);
    if (!ix) return errf(err, errlen, "out of memory");
    /* Uniform in ±sqrt(3/n_embd): unit-variance outputs for unit-variance inputs (LeCun); the LayerNorm starts as
     * the identity. */
    uint64_t s = seed;
    float a = sqrtf(3.0f / n_embd);
    size_t nw = (size_t)ix->n_layer * ix->rows * ix->n_embd;
    for (size_t i = 0; i < nw; i++) ix->W[i] = a * (float)((double)(dsa_splitmix(&s) >> 11) * 0x1p-53 * 2.0 - 1.0);
    int d = hp->head_dim;
    for (int l = 0; l < ix->n_layer; l++)
        for (int i = 0; i < d; i++) ix->ln[(size_t)l * 2 * d + i] = 1.0f;
    *out = ix;
    return 0;
}

int dsa_indexer_new(const dsa_indexer_hp *hp, const dsa_model *m, uint64_t seed, dsa_indexer **out, char *err,
                    size_t errlen) {
    const dsa_hparams *mh = dsa_model_hparams(m);
    if (dsa_indexer_alloc(hp, mh->n_layer, mh->n_embd, seed, out, err, errlen)) return -1;
    snprintf((*out)->base_fingerprint, sizeof (*out)->base_fingerprint, "%s", dsa_model_fingerprint((dsa_model *)m));
    set_base_name(*out, dsa_model_path(m));
    return 0;
}

static int get_u(const gguf_file *g, const char *key, int *out, char *err, size_t errlen) {
    uint32_t v;
    if (gguf_get_u32(g, key, &v)) return errf(err, errlen, "missing or mistyped %s", key);
    if (v > (1u << 30)) return errf(err, errlen, "%s = %u is out of range", key, v);
    *out = (int)v;
    return 0;
}

static int get_f(const gguf_file *g, const char *key, float *out, char *err, size_t errlen) {
    if (gguf_get_f32(g, key, out)) return errf(err, errlen, "missing or mistyped %s", key);
    return 0;
}

/* A tensor of exactly ne0 × ne1 elements, F32 or F16, converted into dst. */
static int get_tensor(const gguf_file *g, const char *name, int64_t ne0, int64_t ne1, float *dst, char *err,
                      size_t errlen) {
    const gguf_tensor *t = gguf_find_tensor(g, name);
    if (!t) return errf(err, errlen, "missing tensor %s", name);
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1)
        return errf(err, errlen, "tensor %s has shape [%lld, %lld], expected [%lld, %lld]", name, (long long)t->ne[0],
                    (long long)t->ne[1], (long long)ne0, (long long)ne1);
    if (t->type != DSA_F32 && t->type != DSA_F16)
        return errf(err, errlen, "tensor %s has type %s (expected f32 or f16)", name, dsa_type_name((int)t->type));
    dsa_traits_ref((enum dsa_type)t->type)->to_float(t->data, dst, ne0 * ne1);
    for (int64_t i = 0; i < ne0 * ne1; i++)
        if (!isfinite(dst[i])) return errf(err, errlen, "tensor %s holds a non-finite value", name);
    return 0;
}

int dsa_indexer_load(const char *path, const dsa_model *m_, dsa_indexer **out, char *err, size_t errlen) {
    *out = NULL;
    dsa_model *m = (dsa_model *)m_; /* the fingerprint is computed lazily */
    gguf_file *g = NULL;
    char e[512];
    if (gguf_open(path, &g, err, errlen)) return -1;
    dsa_indexer *ix = NULL;
    dsa_str s;
    if (gguf_get_str(g, "general.architecture", &s) || !dsa_str_eq(s, "dsa-indexer")) {
        errf(e, sizeof e, "not an indexer sidecar (general.architecture is not \"dsa-indexer\")");
        goto fail;
    }
    dsa_indexer_hp hp = {0};
    int n_layer = 0, n_embd = 0;
    if (get_u(g, "dsa.indexer.head_count", &hp.n_head, e, sizeof e) ||
        get_u(g, "dsa.indexer.key_length", &hp.head_dim, e, sizeof e) ||
        get_u(g, "dsa.indexer.rope.dimension_count", &hp.rope_dim, e, sizeof e) ||
        get_f(g, "dsa.indexer.rope.freq_base", &hp.rope_base, e, sizeof e) ||
        get_u(g, "dsa.indexer.top_k", &hp.top_k, e, sizeof e) ||
        get_f(g, "dsa.indexer.layer_norm_epsilon", &hp.norm_eps, e, sizeof e) ||
        get_u(g, "dsa.indexer.block_count", &n_layer, e, sizeof e) ||
        get_u(g, "dsa.indexer.embedding_length", &n_embd, e, sizeof e))
        goto fail;
    if (gguf_find(g, "dsa.indexer.dense_layers") && get_u(g, "dsa.indexer.dense_layers", &hp.dense_layers, e, sizeof e))
        goto fail;
    if (dsa_indexer_hp_check(&hp, e, sizeof e)) goto fail;
    dsa_str fp;
    if (gguf_get_str(g, "dsa.base.fingerprint", &fp)) {
        errf(e, sizeof e, "missing dsa.base.fingerprint");
        goto fail;
    }
    const char *mine = dsa_model_fingerprint(m);
    if (!dsa_str_eq(fp, mine)) {
        dsa_str bn = {"?", 1};
        gguf_get_str(g, "dsa.base.name", &bn);
        errf(e, sizeof e, "made for another base model (%.*s, %.*s), not %s (%s); train one with 'dsa train-indexer'",
             (int)(bn.len > 80 ? 80 : bn.len), bn.ptr, (int)(fp.len > 40 ? 40 : fp.len), fp.ptr,
             dsa_model_path(m), mine);
        goto fail;
    }
    const dsa_hparams *mh = dsa_model_hparams(m);
    if (n_layer != mh->n_layer || n_embd != mh->n_embd) {
        errf(e, sizeof e, "has %d layers of width %d, the model %d of width %d", n_layer, n_embd, mh->n_layer,
             mh->n_embd);
        goto fail;
    }
    ix = alloc_indexer(&hp, n_layer, n_embd);
    if (!ix) {
        errf(e, sizeof e, "out of memory");
        goto fail;
    }
    snprintf(ix->base_fingerprint, sizeof ix->base_fingerprint, "%s", mine);
    set_base_name(ix, dsa_model_path(m));
    if (gguf_get_str(g, "dsa.provenance", &s) == 0 && (ix->provenance = malloc(s.len + 1))) {
        memcpy(ix->provenance, s.ptr, s.len);
        ix->provenance[s.len] = 0;
    }
    int d = hp.head_dim;
    for (int l = 0; l < n_layer; l++) {
        char n[96];
        snprintf(n, sizeof n, "blk.%d.idx_proj.weight", l);
        if (get_tensor(g, n, n_embd, ix->rows, ix->W + (size_t)l * ix->rows * n_embd, e, sizeof e)) goto fail;
        snprintf(n, sizeof n, "blk.%d.idx_k_norm.weight", l);
        if (get_tensor(g, n, d, 1, ix->ln + (size_t)l * 2 * d, e, sizeof e)) goto fail;
        snprintf(n, sizeof n, "blk.%d.idx_k_norm.bias", l);
        if (get_tensor(g, n, d, 1, ix->ln + (size_t)l * 2 * d + d, e, sizeof e)) goto fail;
    }
    gguf_close(g);
    *out = ix;
    return 0;
fail:
    errf(err, errlen, "%s: %s", path, e);
    dsa_indexer_free(ix);
    gguf_close(g);
    return -1;
}

int dsa_indexer_save(const dsa_indexer *ix, const char *path, int f32, char *err, size_t errlen) {
    gguf_writer *w = gguf_writer_new();
    if (!w) return errf(err, errlen, "out of memory");
    const dsa_indexer_hp *hp = &ix->hp;
    int bad = gguf_w_str(w, "general.architecture", "dsa-indexer") ||
              gguf_w_str(w, "general.name", "DeepSeek Sparse Attention lightning indexer") ||
              gguf_w_u32(w, "dsa.indexer.head_count", (uint32_t)hp->n_head) ||
              gguf_w_u32(w, "dsa.indexer.key_length", (uint32_t)hp->head_dim) ||
              gguf_w_u32(w, "dsa.indexer.rope.dimension_count", (uint32_t)hp->rope_dim) ||
              gguf_w_f32(w, "dsa.indexer.rope.freq_base", hp->rope_base) ||
              gguf_w_u32(w, "dsa.indexer.top_k", (uint32_t)hp->top_k) ||
              gguf_w_f32(w, "dsa.indexer.layer_norm_epsilon", hp->norm_eps) ||
              gguf_w_u32(w, "dsa.indexer.block_count", (uint32_t)ix->n_layer) ||
              gguf_w_u32(w, "dsa.indexer.embedding_length", (uint32_t)ix->n_embd) ||
              gguf_w_u32(w, "dsa.indexer.dense_layers", (uint32_t)hp->dense_layers) ||
              gguf_w_str(w, "dsa.base.fingerprint", ix->base_fingerprint) ||
              gguf_w_str(w, "dsa.base.name", ix->base_name) ||
              gguf_w_str(w, "dsa.provenance", ix->provenance ? ix->provenance : "");
    int d = hp->head_dim;
    size_t nproj = (size_t)ix->rows * ix->n_embd;
    uint16_t *h = f32 ? NULL : malloc(nproj * sizeof *h);
    if (!f32 && !h) bad = 1;
    for (int l = 0; l < ix->n_layer && !bad; l++) {
        char n[96];
        const float *W = ix->W + (size_t)l * nproj;
        int64_t ne[2] = {ix->n_embd, ix->rows};
        snprintf(n, sizeof n, "blk.%d.idx_proj.weight", l);
        if (f32) bad = gguf_w_tensor(w, n, DSA_F32, 2, ne, W, nproj * sizeof(float));
        else {
            dsa_f32_to_f16_row((int)nproj, W, h);
            bad = gguf_w_tensor(w, n, DSA_F16, 2, ne, h, nproj * sizeof *h);
        }
        int64_t nd[1] = {d};
        snprintf(n, sizeof n, "blk.%d.idx_k_norm.weight", l);
        bad = bad || gguf_w_tensor(w, n, DSA_F32, 1, nd, ix->ln + (size_t)l * 2 * d, d * sizeof(float));
        snprintf(n, sizeof n, "blk.%d.idx_k_norm.bias", l);
        bad = bad || gguf_w_tensor(w, n, DSA_F32, 1, nd, ix->ln + (size_t)l * 2 * d + d, d * sizeof(float));
    }
    free(h);
    if (bad) {
        gguf_writer_free(w);
        return errf(err, errlen, "%s: out of memory", path);
    }
    int rc = gguf_writer_save(w, path, err, errlen);
    gguf_writer_free(w);
    return rc;
}

char *dsa_indexer_default_path(const char *model_path) {
    size_t n = strlen(model_path);
    const char *base = strrchr(model_path, '/');
    base = base ? base + 1 : model_path;
    size_t bn = strlen(base);
    if (bn > 5 && !strcmp(base + bn - 5, ".gguf")) bn -= 5;
    char *p = malloc(n + 16);
    if (!p) return NULL;
    snprintf(p, n + 16, "%.*s.dsa.gguf", (int)(n - (strlen(base) - bn)), model_path);
    if (access(p, R_OK) == 0) return p;
    free(p);
    const char *dir = getenv("DSACHAT_DATA_DIR");
#ifdef DSA_DATA_DIR
    if (!dir || !*dir) dir = DSA_DATA_DIR;
#endif
    if (!dir || !*dir) return NULL;
    size_t len = strlen(dir) + bn + 32;
    if (!(p = malloc(len))) return NULL;
    snprintf(p, len, "%s/indexers/%.*s.dsa.gguf", dir, (int)bn, base);
    if (access(p, R_OK) == 0) return p;
    free(p);
    return NULL;
}

/* ---- the per-token projection ---------------------------------------------------------------------------- */

/* Rotate dims i and i + rope_dim/2 (NeoX halves, "non-interleaved") by pos·freq[i]. */
static void rope_half(float *x, int rope_dim, const float *freq, int pos) {
    int half = rope_dim / 2;
    for (int i = 0; i < half; i++) {
        double a = (double)pos * freq[i];
        float c = (float)cos(a), s = (float)sin(a);
        float x0 = x[i], x1 = x[i + half];
        x[i] = x0 * c - x1 * s;
        x[i + half] = x0 * s + x1 * c;
    }
}

void dsa_indexer_project(const dsa_indexer *ix, int layer, float *p, int pos, float *q, float *k, float *w) {
    const dsa_indexer_hp *hp = &ix->hp;
    int H = hp->n_head, d = hp->head_dim;
    const float *g = ix->ln + (size_t)layer * 2 * d, *b = g + d;
    float *kr = p + H * d, *wr = kr + d;
    double mean = 0, var = 0;
    for (int i = 0; i < d; i++) mean += kr[i];
    mean /= d;
    for (int i = 0; i < d; i++) var += (kr[i] - mean) * (kr[i] - mean);
    float rs = (float)(1.0 / sqrt(var / d + hp->norm_eps));
    for (int i = 0; i < d; i++) k[i] = (float)(kr[i] - mean) * rs * g[i] + b[i];
    if (hp->rope_dim) rope_half(k, hp->rope_dim, ix->rope_freq, pos);
    dsa_hadamard(d, k);
    if (!q) return;
    for (int j = 0; j < H; j++) {
        float *qj = q + (size_t)j * d;
        memcpy(qj, p + (size_t)j * d, (size_t)d * sizeof *qj);
        if (hp->rope_dim) rope_half(qj, hp->rope_dim, ix->rope_freq, pos);
        dsa_hadamard(d, qj);
    }
    float ws = 1.0f / sqrtf((float)H * d);
    for (int j = 0; j < H; j++) w[j] = wr[j] * ws;
}
