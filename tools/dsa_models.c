/*
 * dsa slice-model and dsa synth-model: small or synthetic models of a real model's shape.
 *
 * A GPU test machine receives at most 64 MiB of files, so the default model (98 MB) cannot travel there.
 * slice-model keeps a model's first N layers, byte for byte (about 35 MB for N = 2, most of it the embedding), with
 * its indexer sidecar cut to match; synth-model makes a model of the same shape and the same tensor types (so it
 * runs at the same speed) from seeded pseudo-random values, at any depth, so the small sliced file grows back into
 * a full-depth model on the far side.
 *
 * Both copy every metadata key of the source (tokenizer, chat template, …) except <arch>.block_count and
 * general.name, and write GGUF v3 to OUT.tmp, fsync it and rename it over OUT.  gguf_writer keeps every tensor in
 * memory and writes only the value types it makes itself, so the writer here is its own: the source's key/value
 * bytes are copied as they are, and tensor data is streamed straight from the source's mapping (slice) or from the
 * generator (synth).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dsa_tool.h"

/* ---- the tensors to write ----------------------------------------------------------------------------------- */

enum fill { FILL_COPY, FILL_MATRIX, FILL_NORM, FILL_BIAS };

typedef struct {
    char name[256];
    const gguf_tensor *src; /* the source tensor: its bytes (FILL_COPY) or its type and shape */
    enum fill fill;
    uint64_t offset; /* in the data section */
} out_tensor;

typedef struct {
    out_tensor *t;
    int n, cap;
} tensor_list;

static void tl_add(tensor_list *l, const char *name, const gguf_tensor *src, enum fill fill) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        l->t = realloc(l->t, (size_t)l->cap * sizeof *l->t);
        if (!l->t) die(1, "out of memory");
    }
    out_tensor *t = &l->t[l->n++];
    memset(t, 0, sizeof *t);
    size_t n = strlen(name);
    if (n >= sizeof t->name) die(1, "tensor name %s is too long", name);
    memcpy(t->name, name, n + 1);
    t->src = src;
    t->fill = fill;
}

/* The layer of a tensor named blk.L.*, with the rest of its name in *rest; -1 for other tensors. */
static int tensor_layer(const gguf_tensor *t, const char **rest, char *scratch, size_t n) {
    snprintf(scratch, n, "%.*s", (int)t->name.len, t->name.ptr);
    if (strncmp(scratch, "blk.", 4)) return -1;
    char *e;
    long l = strtol(scratch + 4, &e, 10);
    if (e == scratch + 4 || *e != '.' || l < 0 || l > 1 << 20) return -1;
    *rest = e + 1;
    return (int)l;
}

/* The source's tensors in the order they are written: those before the first layer (token_embd), the layers
 * 0..n_out-1 (layer l is the source's layer min(l, n_src-1), renamed), then the rest (output_norm, output).
 * synth: how each one is filled; otherwise every one is copied. */
static void plan_tensors(const gguf_file *g, int n_src, int n_out, int synth, tensor_list *out) {
    char nm[256];
    const char *rest = NULL;
    uint64_t first_blk = g->n_tensors;
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (tensor_layer(&g->tensors[i], &rest, nm, sizeof nm) >= 0) {
            first_blk = i;
            break;
        }
    for (int pass = 0; pass < 3; pass++) {
        if (pass == 1) {
            for (int l = 0; l < n_out; l++) {
                int from = l < n_src ? l : n_src - 1;
                for (uint64_t i = 0; i < g->n_tensors; i++) {
                    const gguf_tensor *t = &g->tensors[i];
                    if (tensor_layer(t, &rest, nm, sizeof nm) != from) continue;
                    char name[300];
                    snprintf(name, sizeof name, "blk.%d.%s", l, rest);
                    enum fill f = FILL_COPY;
                    if (synth)
                        f = strstr(rest, "norm") ? FILL_NORM : strstr(rest, ".bias") ? FILL_BIAS
                            : t->ne[1] > 1                                          ? FILL_MATRIX
                                                                                    : FILL_BIAS;
                    tl_add(out, name, t, f);
                }
            }
            continue;
        }
        for (uint64_t i = pass == 0 ? 0 : first_blk; i < (pass == 0 ? first_blk : g->n_tensors); i++) {
            const gguf_tensor *t = &g->tensors[i];
            if (tensor_layer(t, &rest, nm, sizeof nm) >= 0) continue;
            enum fill f = FILL_COPY;
            /* rope_freqs holds RoPE frequency factors, not weights: a synthetic model keeps them */
            if (synth && strcmp(nm, "rope_freqs.weight") && strncmp(nm, "rope_", 5))
                f = strstr(nm, "norm") ? FILL_NORM : t->ne[1] > 1 ? FILL_MATRIX : FILL_BIAS;
            tl_add(out, nm, t, f);
        }
    }
}

/* ---- pseudo-random values -------------------------------------------------------------------------------- */

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Roughly N(0, 1): the sum of four 16-bit uniforms (Irwin–Hall), centred and scaled to unit variance. */
static float gauss(uint64_t *s) {
    uint64_t r = splitmix(s);
    double u = (double)(r & 0xffff) + (double)((r >> 16) & 0xffff) + (double)((r >> 32) & 0xffff) + (double)(r >> 48);
    return (float)((u / 65536.0 - 2.0) * 1.7320508075688772);
}

/* FNV-1a of a name: each tensor gets its own stream, whatever the order it is written in. */
static uint64_t name_hash(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

#define MATRIX_STD 0.02f
#define NORM_NOISE 0.01f
#define BIAS_STD 0.02f

static void fill_row(enum fill f, uint64_t *s, float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float g = gauss(s);
        x[i] = f == FILL_NORM ? 1.0f + NORM_NOISE * g : f == FILL_BIAS ? BIAS_STD * g : MATRIX_STD * g;
    }
}

/* ---- quantisers (the kernels dequantise every weight type but quantise only activations) -------------------
 * Simple round-to-nearest versions of ggml's reference quantisers, in the block layouts kernels/cpu/quant.c
 * reads. */

static void put_f16(uint8_t *p, float v) {
    uint16_t h = dsa_f32_to_f16(v);
    memcpy(p, &h, 2);
}
static float f16r(float v) { return dsa_f16_to_f32(dsa_f32_to_f16(v)); }
static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Legacy block of 32: offset-free (q4_1, q5_1: min + d·q) or symmetric (q4_0, q5_0: d·(q - 2^(bits-1))). */
static void quant_legacy(const float *x, uint8_t *b, int bits, int with_min) {
    int nq = (1 << bits) - 1;
    uint8_t q[32];
    if (with_min) {
        float mn = x[0], mx = x[0];
        for (int j = 1; j < 32; j++) mn = fminf(mn, x[j]), mx = fmaxf(mx, x[j]);
        float d = f16r((mx - mn) / nq), m = f16r(mn);
        float id = d ? 1.0f / d : 0;
        put_f16(b, d);
        put_f16(b + 2, m);
        for (int j = 0; j < 32; j++) q[j] = (uint8_t)clampi((int)lrintf((x[j] - m) * id), 0, nq);
        b += 4;
    } else {
        float amax = 0, vmax = 0;
        for (int j = 0; j < 32; j++)
            if (fabsf(x[j]) > amax) amax = fabsf(x[j]), vmax = x[j];
        int off = 1 << (bits - 1);
        float d = f16r(vmax / -off), id = d ? 1.0f / d : 0;
        put_f16(b, d);
        for (int j = 0; j < 32; j++) q[j] = (uint8_t)clampi((int)lrintf(x[j] * id) + off, 0, nq);
        b += 2;
    }
    if (bits == 5) {
        uint32_t qh = 0;
        for (int j = 0; j < 32; j++) qh |= (uint32_t)(q[j] >> 4) << j;
        for (int k = 0; k < 4; k++) b[k] = (uint8_t)(qh >> 8 * k);
        b += 4;
    }
    for (int j = 0; j < 16; j++) b[j] = (uint8_t)((q[j] & 15) | (q[j + 16] & 15) << 4);
}

static void quant_q8_0(const float *x, uint8_t *b) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = f16r(amax / 127), id = d ? 1.0f / d : 0;
    put_f16(b, d);
    for (int j = 0; j < 32; j++) b[2 + j] = (uint8_t)(int8_t)clampi((int)lrintf(x[j] * id), -127, 127);
}

/* Q4_K / Q5_K super-block of 256: 8 sub-blocks, value = d·sc[j]·q - dmin·mn[j], 6-bit sc and mn. */
static void quant_q45_k(const float *x, uint8_t *b, int five) {
    int nq = five ? 31 : 15;
    float scale[8], minv[8], smax = 0, mmax = 0;
    for (int j = 0; j < 8; j++) {
        float mn = 0, mx = 0; /* the range always includes 0, so the minimum subtracted is >= 0 */
        for (int l = 0; l < 32; l++) mn = fminf(mn, x[32 * j + l]), mx = fmaxf(mx, x[32 * j + l]);
        scale[j] = (mx - mn) / nq;
        minv[j] = -mn;
        smax = fmaxf(smax, scale[j]);
        mmax = fmaxf(mmax, minv[j]);
    }
    float d = f16r(smax / 63), dmin = f16r(mmax / 63);
    uint8_t sc[8], mn[8];
    for (int j = 0; j < 8; j++) {
        sc[j] = (uint8_t)(d ? clampi((int)ceilf(scale[j] / d), 0, 63) : 0); /* round up: the range still fits */
        mn[j] = (uint8_t)(dmin ? clampi((int)lrintf(minv[j] / dmin), 0, 63) : 0);
    }
    put_f16(b, d);
    put_f16(b + 2, dmin);
    uint8_t *s = b + 4;
    for (int i = 0; i < 4; i++) {
        s[i] = (uint8_t)(sc[i] | (sc[4 + i] >> 4) << 6);
        s[4 + i] = (uint8_t)(mn[i] | (mn[4 + i] >> 4) << 6);
        s[8 + i] = (uint8_t)((sc[4 + i] & 15) | (mn[4 + i] & 15) << 4);
    }
    uint8_t *qh = five ? b + 16 : NULL, *qs = b + (five ? 48 : 16);
    memset(qs, 0, 128);
    if (qh) memset(qh, 0, 32);
    for (int j = 0; j < 8; j++) {
        float ds = d * sc[j], dm = dmin * mn[j], id = ds ? 1.0f / ds : 0;
        for (int l = 0; l < 32; l++) {
            int q = clampi((int)lrintf((x[32 * j + l] + dm) * id), 0, nq);
            qs[32 * (j / 2) + l] |= (uint8_t)((q & 15) << 4 * (j & 1));
            if (qh) qh[l] |= (uint8_t)((q >> 4) << j);
        }
    }
}

/* Q6_K super-block of 256: 16 groups of 16, value = d·sc[g]·(q - 32), 8-bit signed sc. */
static void quant_q6_k(const float *x, uint8_t *b) {
    float gs[16], amax = 0;
    for (int g = 0; g < 16; g++) {
        float m = 0;
        for (int l = 0; l < 16; l++) m = fmaxf(m, fabsf(x[16 * g + l]));
        gs[g] = m / 31;
        amax = fmaxf(amax, gs[g]);
    }
    float d = f16r(amax / 127);
    int8_t *sc = (int8_t *)(b + 192);
    for (int g = 0; g < 16; g++) sc[g] = (int8_t)(d ? clampi((int)ceilf(gs[g] / d), 0, 127) : 0);
    put_f16(b + 208, d);
    memset(b, 0, 192);
    for (int e = 0; e < 256; e++) {
        float ds = d * sc[e / 16];
        int q = clampi((int)lrintf(ds ? x[e] / ds : 0), -32, 31) + 32;
        int h = e / 128, k = (e % 128) / 32, l = e % 32;
        b[64 * h + l + 32 * (k & 1)] |= (uint8_t)((q & 15) << 4 * (k >> 1));
        b[128 + 32 * h + l] |= (uint8_t)((q >> 4) << 2 * k);
    }
}

/* n floats (a multiple of the type's block) into dst; 0, or -1 for a type we cannot write. */
static int quantize_row(enum dsa_type t, const float *x, void *dst, int64_t n) {
    uint8_t *b = dst;
    const dsa_type_traits *tr = dsa_traits_ref(t);
    if (!tr || n % tr->blck) return -1;
    switch (t) {
    case DSA_F32: memcpy(dst, x, (size_t)n * sizeof *x); return 0;
    case DSA_F16: dsa_f32_to_f16_row((int)n, x, dst); return 0;
    case DSA_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, &x[i], 4);
            uint16_t h = (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16); /* nearest, ties to even (finite x) */
            memcpy(b + 2 * i, &h, 2);
        }
        return 0;
    default: break;
    }
    for (int64_t i = 0; i < n; i += tr->blck, x += tr->blck, b += tr->type_size) {
        switch (t) {
        case DSA_Q4_0: quant_legacy(x, b, 4, 0); break;
        case DSA_Q4_1: quant_legacy(x, b, 4, 1); break;
        case DSA_Q5_0: quant_legacy(x, b, 5, 0); break;
        case DSA_Q5_1: quant_legacy(x, b, 5, 1); break;
        case DSA_Q8_0: quant_q8_0(x, b); break;
        case DSA_Q4_K: quant_q45_k(x, b, 0); break;
        case DSA_Q5_K: quant_q45_k(x, b, 1); break;
        case DSA_Q6_K: quant_q6_k(x, b); break;
        default: return -1;
        }
    }
    return 0;
}

/* ---- the writer ---------------------------------------------------------------------------------------------- */

typedef struct {
    FILE *f;
    const char *path;
    int failed;
} wfile;

static void wr(wfile *w, const void *p, size_t n) {
    if (!w->failed && n && fwrite(p, 1, n, w->f) != n) w->failed = errno ? errno : EIO;
}
static void wr_u32(wfile *w, uint32_t v) { wr(w, &v, 4); }
static void wr_u64(wfile *w, uint64_t v) { wr(w, &v, 8); }
static void wr_str(wfile *w, const char *s, size_t n) {
    wr_u64(w, n);
    wr(w, s, n);
}
static void wr_pad(wfile *w, uint64_t *pos, uint64_t align) {
    static const char zeros[4096];
    uint64_t pad = (align - *pos % align) % align;
    for (uint64_t k = pad; k;) {
        size_t c = k > sizeof zeros ? sizeof zeros : (size_t)k;
        wr(w, zeros, c);
        k -= c;
    }
    *pos += pad;
}

typedef struct {
    const gguf_file *g;
    const char *block_count_key; /* "<arch>.block_count" */
    uint32_t n_layer;
    const char *name; /* general.name */
    tensor_list *tensors;
    uint64_t seed;
    const char *what; /* for progress */
} model_plan;

static uint64_t kv_value_size(const gguf_kv *kv) { return kv->nbytes; }
static const uint8_t *kv_value(const gguf_kv *kv) { return kv->type == GGUF_ARRAY ? kv->data - 12 : kv->data; }

/* Write the model file; 0, or -1 with a message in err (no temporary file is left behind). */
static int write_model(const model_plan *p, const char *path, char *err, size_t errlen) {
    const gguf_file *g = p->g;
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 5);
    if (!tmp) die(1, "out of memory");
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp", 5);
    wfile w = {fopen(tmp, "wb"), tmp, 0};
    if (!w.f) {
        snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
        free(tmp);
        return -1;
    }
    int has_name = gguf_find(g, "general.name") != NULL;
    tensor_list *tl = p->tensors;
    /* header */
    wr(&w, "GGUF", 4);
    wr_u32(&w, 3);
    wr_u64(&w, (uint64_t)tl->n);
    wr_u64(&w, g->n_kv + (has_name ? 0 : 1));
    uint64_t pos = 24;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const gguf_kv *kv = &g->kv[i];
        wr_str(&w, kv->key.ptr, kv->key.len);
        pos += 8 + kv->key.len + 4;
        if (dsa_str_eq(kv->key, p->block_count_key)) {
            wr_u32(&w, GGUF_UINT32);
            wr_u32(&w, p->n_layer);
            pos += 4;
        } else if (dsa_str_eq(kv->key, "general.name")) {
            wr_u32(&w, GGUF_STRING);
            wr_str(&w, p->name, strlen(p->name));
            pos += 8 + strlen(p->name);
        } else {
            wr_u32(&w, kv->type);
            wr(&w, kv_value(kv), kv_value_size(kv));
            pos += kv_value_size(kv);
        }
    }
    if (!has_name) {
        wr_str(&w, "general.name", 12);
        wr_u32(&w, GGUF_STRING);
        wr_str(&w, p->name, strlen(p->name));
        pos += 8 + 12 + 4 + 8 + strlen(p->name);
    }
    uint64_t off = 0;
    for (int i = 0; i < tl->n; i++) {
        out_tensor *t = &tl->t[i];
        const gguf_tensor *s = t->src;
        t->offset = off;
        wr_str(&w, t->name, strlen(t->name));
        wr_u32(&w, s->n_dims);
        for (uint32_t d = 0; d < s->n_dims; d++) wr_u64(&w, (uint64_t)s->ne[d]);
        wr_u32(&w, s->type);
        wr_u64(&w, off);
        pos += 8 + strlen(t->name) + 4 + 8ull * s->n_dims + 4 + 8;
        off += (s->nbytes + g->alignment - 1) / g->alignment * g->alignment;
    }
    wr_pad(&w, &pos, g->alignment);
    /* data */
    float *x = NULL;
    uint8_t *row = NULL;
    size_t xcap = 0, rcap = 0;
    for (int i = 0; i < tl->n && !w.failed; i++) {
        out_tensor *t = &tl->t[i];
        const gguf_tensor *s = t->src;
        if (t->fill == FILL_COPY) {
            wr(&w, s->data, s->nbytes);
        } else {
            int64_t ne0 = s->ne[0], rows = s->ne[1] * s->ne[2] * s->ne[3];
            size_t rb = dsa_row_size((enum dsa_type)s->type, ne0);
            if ((size_t)ne0 > xcap && !(x = realloc(x, (xcap = (size_t)ne0) * sizeof *x))) die(1, "out of memory");
            if (rb > rcap && !(row = realloc(row, rcap = rb))) die(1, "out of memory");
            uint64_t st = p->seed ^ name_hash(t->name);
            splitmix(&st);
            for (int64_t r = 0; r < rows; r++) {
                fill_row(t->fill, &st, x, ne0);
                if (quantize_row((enum dsa_type)s->type, x, row, ne0)) {
                    snprintf(err, errlen, "%s: cannot make tensor %s of type %s", path, t->name,
                             dsa_type_name((int)s->type));
                    fclose(w.f);
                    unlink(tmp);
                    free(tmp);
                    free(x);
                    free(row);
                    return -1;
                }
                wr(&w, row, rb);
            }
        }
        pos += s->nbytes;
        if (i + 1 < tl->n) wr_pad(&w, &pos, g->alignment);
        if (tty_progress) fprintf(stderr, "\r%s: writing %s … %3d%%\033[K", p->what, path, (i + 1) * 100 / tl->n);
    }
    if (tty_progress) fputs("\r\033[K", stderr);
    free(x);
    free(row);
    int e = w.failed;
    if (!e && fflush(w.f)) e = errno;
    if (!e && fsync(fileno(w.f))) e = errno;
    if (fclose(w.f) && !e) e = errno;
    if (!e && rename(tmp, path)) e = errno;
    if (e) {
        snprintf(err, errlen, "%s: cannot write: %s", path, strerror(e));
        unlink(tmp);
    }
    free(tmp);
    return e ? -1 : 0;
}

/* ---- shared steps -------------------------------------------------------------------------------------------- */

static void load_progress_cb(float f, void *ud) {
    if (tty_progress)
        fprintf(stderr, "\rloading %s … %3d%%%s", (const char *)ud, (int)(f * 100), f >= 1 ? "\r\033[K" : "");
}

static dsa_model *load_any(const char *path) {
    if (access(path, R_OK) != 0) die(1, "cannot read model %s: %s", path, strerror(errno));
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    char err[1024];
    dsa_model *m;
    if (dsa_model_load(path, &m, load_progress_cb, (void *)base, err, sizeof err)) die(1, "%s", err);
    return m;
}

/* Refuse to write over the input (it is mapped while we read it). */
static void check_distinct(const char *in, const char *out, const char *cmd) {
    struct stat a, b;
    if (stat(in, &a) == 0 && stat(out, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        die(2, "%s: the output %s is the input file", cmd, out);
}

static const char *arch_key(const gguf_file *g, char *out, size_t n) {
    dsa_str a;
    if (gguf_get_str(g, "general.architecture", &a) || a.len > 64) die(1, "the model has no general.architecture");
    snprintf(out, n, "%.*s.block_count", (int)a.len, a.ptr);
    return out;
}

static void source_name(const gguf_file *g, const char *path, char *out, size_t n) {
    dsa_str s;
    if (gguf_get_str(g, "general.name", &s) == 0) snprintf(out, n, "%.*s", (int)(s.len > 200 ? 200 : s.len), s.ptr);
    else snprintf(out, n, "%s", strrchr(path, '/') ? strrchr(path, '/') + 1 : path);
    /* what an earlier slice-model or synth-model appended */
    char *c = strstr(out, " (first ");
    if (c) *c = 0;
    if ((c = strstr(out, " (synthetic: "))) *c = 0;
}

static void set_base(dsa_indexer *ix, dsa_model *m) {
    snprintf(ix->base_fingerprint, sizeof ix->base_fingerprint, "%s", dsa_model_fingerprint(m));
    const char *p = dsa_model_path(m);
    snprintf(ix->base_name, sizeof ix->base_name, "%s", strrchr(p, '/') ? strrchr(p, '/') + 1 : p);
}

/* Append a line of how the sidecar was made to its provenance. */
static void add_provenance(dsa_indexer *ix, const char *what) {
    const char *old = ix->provenance && *ix->provenance ? ix->provenance : NULL;
    size_t len = (old ? strlen(old) + 2 : 0) + strlen(what) + 1;
    char *p = malloc(len);
    if (!p) die(1, "out of memory");
    snprintf(p, len, "%s%s%s", old ? old : "", old ? "; " : "", what);
    free(ix->provenance);
    ix->provenance = p;
}

/* Save ix for model m and check the engine accepts the pair. */
static void save_indexer(dsa_indexer *ix, dsa_model *m, const char *path, int f32) {
    char err[1024];
    if (dsa_indexer_save(ix, path, f32, err, sizeof err)) die(1, "%s", err);
    dsa_indexer *back;
    if (dsa_indexer_load(path, m, &back, err, sizeof err)) die(1, "the sidecar just written does not load: %s", err);
    dsa_indexer_free(back);
}

static void print_result(const opts *o, const char *cmd, dsa_model *m, const char *ix_path) {
    struct stat st;
    long long mb = stat(dsa_model_path(m), &st) == 0 ? (long long)st.st_size : -1;
    long long ib = ix_path && stat(ix_path, &st) == 0 ? (long long)st.st_size : -1;
    const dsa_hparams *hp = dsa_model_hparams(m);
    if (o->json) {
        json_t *j = json_pack("{s:s,s:i,s:I,s:s}", "model", dsa_model_path(m), "n_layer", hp->n_layer, "model_bytes",
                              (json_int_t)mb, "fingerprint", dsa_model_fingerprint(m));
        if (ix_path)
            json_object_set_new(j, "indexer", json_pack("{s:s,s:I}", "path", ix_path, "bytes", (json_int_t)ib));
        else json_object_set_new(j, "indexer", json_null());
        print_json(j);
    } else {
        printf("%s: %s (%d layers, %.1f MB, %s)\n", cmd, dsa_model_path(m), hp->n_layer, mb / 1e6,
               dsa_model_fingerprint(m));
        if (ix_path) printf("%s: %s (%.2f MB)\n", cmd, ix_path, ib / 1e6);
    }
}

/* ---- slice-model --------------------------------------------------------------------------------------------- */

int cmd_slice_model(const opts *o) {
    if (!o->out) die(2, "slice-model: -o OUT.gguf is required");
    if (o->layers <= 0) die(2, "slice-model: --layers N is required");
    if (o->indexer_out && !o->indexer) die(2, "slice-model: --indexer-out needs --indexer SIDECAR");
    if (o->indexer && !o->indexer_out) die(2, "slice-model: --indexer needs --indexer-out OUT.dsa.gguf");
    const char *in = o->model ? o->model : default_model();
    check_distinct(in, o->out, "slice-model");
    if (o->indexer_out) check_distinct(o->indexer, o->indexer_out, "slice-model");
    dsa_model *m = load_any(in);
    const dsa_hparams *hp = dsa_model_hparams(m);
    if (o->layers > hp->n_layer)
        die(2, "slice-model: --layers %d: the model has %d layers", o->layers, hp->n_layer);
    char err[1024];
    dsa_indexer *ix = NULL;
    int ix_f32 = 0;
    if (o->indexer) {
        if (access(o->indexer, R_OK) != 0) die(1, "cannot read indexer %s: %s", o->indexer, strerror(errno));
        if (dsa_indexer_load(o->indexer, m, &ix, err, sizeof err)) die(1, "%s", err);
        gguf_file *ig;
        if (gguf_open(o->indexer, &ig, err, sizeof err)) die(1, "%s", err);
        const gguf_tensor *t = gguf_find_tensor(ig, "blk.0.idx_proj.weight");
        ix_f32 = t && t->type == DSA_F32;
        gguf_close(ig);
    }
    const gguf_file *g = dsa_model_gguf(m);
    tensor_list tl = {0};
    plan_tensors(g, hp->n_layer, o->layers, 0, &tl);
    char key[96], src[256], name[320];
    source_name(g, in, src, sizeof src);
    snprintf(name, sizeof name, "%s (first %d layers)", src, o->layers);
    model_plan p = {g, arch_key(g, key, sizeof key), (uint32_t)o->layers, name, &tl, 0, "slice-model"};
    if (write_model(&p, o->out, err, sizeof err)) die(1, "%s", err);
    free(tl.t);
    dsa_model *nm = load_any(o->out);
    if (ix) {
        ix->n_layer = o->layers; /* the weights are layer-major: the first layers are a prefix */
        set_base(ix, nm);
        char what[4200];
        snprintf(what, sizeof what, "cut to its first %d layers by dsa slice-model for %s", o->layers, o->out);
        add_provenance(ix, what);
        save_indexer(ix, nm, o->indexer_out, ix_f32);
        dsa_indexer_free(ix);
    }
    print_result(o, "slice-model", nm, o->indexer_out);
    dsa_model_free(nm);
    dsa_model_free(m);
    return 0;
}

/* ---- synth-model --------------------------------------------------------------------------------------------- */

int cmd_synth_model(const opts *o) {
    if (!o->out) die(2, "synth-model: -o OUT.gguf is required");
    if (o->indexer) die(2, "synth-model: --indexer does not apply (--indexer-out writes a random sidecar)");
    const char *in = o->like ? o->like : o->model ? o->model : default_model();
    check_distinct(in, o->out, "synth-model");
    double t0 = now_s();
    dsa_model *m = load_any(in);
    const dsa_hparams *hp = dsa_model_hparams(m);
    int n_layer = o->layers > 0 ? o->layers : hp->n_layer;
    const gguf_file *g = dsa_model_gguf(m);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor *t = &g->tensors[i];
        float x[256];
        char q[1024];
        const dsa_type_traits *tr = dsa_traits_ref((enum dsa_type)t->type);
        if (!tr || tr->blck > 256 || quantize_row((enum dsa_type)t->type, memset(x, 0, sizeof x), q, tr->blck))
            die(1, "synth-model: %.*s: cannot write tensors of type %s", (int)t->name.len, t->name.ptr,
                dsa_type_name((int)t->type));
    }
    tensor_list tl = {0};
    plan_tensors(g, hp->n_layer, n_layer, 1, &tl);
    uint64_t seed = o->sp.seed;
    char key[96], src[256], name[400];
    source_name(g, in, src, sizeof src);
    snprintf(name, sizeof name, "%s (synthetic: random weights, seed %llu, %d layers)", src, (unsigned long long)seed,
             n_layer);
    char err[1024];
    model_plan p = {g, arch_key(g, key, sizeof key), (uint32_t)n_layer, name, &tl, seed, "synth-model"};
    if (write_model(&p, o->out, err, sizeof err)) die(1, "%s", err);
    free(tl.t);
    dsa_model *nm = load_any(o->out);
    if (o->indexer_out) {
        dsa_indexer_hp ih = {0};
        ih.n_head = o->heads;
        ih.head_dim = o->dim;
        ih.rope_dim = o->rope_dims;
        ih.rope_base = dsa_model_hparams(nm)->rope_base; /* as train-indexer does */
        ih.top_k = o->topk_dsa > 0 ? o->topk_dsa : 512;
        ih.norm_eps = 1e-6f;
        ih.dense_layers = o->dense_layers > 0 ? o->dense_layers : 0;
        dsa_indexer *ix;
        if (dsa_indexer_new(&ih, nm, seed ^ 0x1D3E7ull, &ix, err, sizeof err)) die(2, "synth-model: %s", err);
        char what[128];
        snprintf(what, sizeof what, "random weights (untrained) from dsa synth-model, seed %llu",
                 (unsigned long long)seed);
        add_provenance(ix, what);
        save_indexer(ix, nm, o->indexer_out, 0);
        dsa_indexer_free(ix);
    }
    print_result(o, "synth-model", nm, o->indexer_out);
    if (tty_progress) fprintf(stderr, "synth-model: %.1f s\n", now_s() - t0);
    dsa_model_free(nm);
    dsa_model_free(m);
    return 0;
}
