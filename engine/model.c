/*
 * The transformer forward pass, llama2.c-style: everything a token goes through is in dsa_ctx_eval and the few
 * static functions above it.
 *
 *   x = embed(token)
 *   per layer:  h = RMSNorm(x)·attn_norm
 *               q, k, v = Wq h (+bq), Wk h (+bk), Wv h (+bv);  RoPE(q, k);  K/V cache ← k, v (f16)
 *               x += Wo · softmax(q·Kᵀ/√d) V            (grouped-query: query head h reads KV head h/(H/H_kv))
 *               h = RMSNorm(x)·ffn_norm
 *               x += Wdown · (silu(Wgate h) ⊙ Wup h)
 *   logits = Wout · RMSNorm(x)·output_norm              (Wout = token_embd when the model ties them)
 *
 * A batch of tokens (prefill) goes through the same code as one token (decode): the matmuls take n rows.
 */
#include "model.h"
#include "dsa.h"
#include "util.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>
#ifdef DSA_HAVE_CUDA
#include "../kernels/cuda/cuda.h"
#endif

#define MAX_BATCH 256
#define SPLIT_ROWS 4 /* batches of fewer rows (decode) spread each row's attention over the threads */
#define SEL_GROUP 4 /* prefill rows whose index scores are computed together (select_rows_indexer) */

typedef struct {
    enum dsa_type type;
    const void *data;
    int64_t rows, cols;
} wmat;

typedef struct {
    float *attn_norm, *ffn_norm;
    float *bq, *bk, *bv; /* qwen2 only */
    wmat wq, wk, wv, wo, gate, up, down;
} layer;

struct dsa_model {
    char *path;
    gguf_file *g;
    dsa_hparams hp;
    dsa_tokenizer *tok;
    dsa_chat_template chat;
    char chat_err[256];
    wmat embd, output;
    float *output_norm;
    float *rope_freq; /* rope_dim/2 inverse frequencies, double-derived */
    layer *layers;
    char fingerprint[40]; /* xxh3-64 of the file: what an indexer sidecar names as its base */
#ifdef DSA_HAVE_CUDA
    dsa_gpu_model *gpu;   /* the weights on the device, made at the first CUDA context */
#endif
};

struct dsa_ctx {
    dsa_model *m;
    dsa_pool *pool;
    int own_pool;      /* 0: the pool is shared (dsa_ctx_new_shared) and outlives the context */
    int n_ctx, pos;
    int kv_dim;
    uint16_t *kc, *vc; /* [layer][n_ctx][kv_dim] f16 */
    size_t kv_bytes;
    /* batch scratch */
    float *x, *xb, *xb2, *q, *k, *v, *att, *hb, *hb2, *cos, *sin;
    float *scores;     /* [threads][query heads per KV head][n_ctx] */
    float *ascores;    /* [SPLIT_ROWS - 1][heads][n_ctx]: a decode step's attention scores, shared by the threads */
    void *mmscratch;
    size_t mmscratch_size;
    /* DeepSeek Sparse Attention (dsa_ctx_set_sparse) */
    const dsa_indexer *ix;
    dsa_select_mode mode;
    int topk;
    int dense_layers;  /* leading layers that attend densely; -1: the indexer's */
    uint8_t *ik;       /* [layer][n_ctx][d] FP8 e4m3 indexer keys */
    float *iks;        /* [layer][n_ctx] their scales */
    float *iproj;      /* [batch][rows] W·h */
    float *iq, *iw;    /* [batch][H·d], [batch][H] */
    int32_t *sel;      /* [batch][topk] selected positions, ascending */
    int *sel_n;        /* [batch]: how many, or -1 for dense (the context is not longer than k) */
    uint64_t *tkscratch; /* [threads][n_ctx] */
    float *scores2;    /* [threads][SEL_GROUP][n_ctx] */
    dsa_layer_hook hook;
    void *hook_ud;
    float *pcap;       /* [batch][n_ctx] attention probabilities summed over heads / heads (capture on) */
    double idx_sec;
#ifdef DSA_HAVE_CUDA
    dsa_gpu_ctx *gpu;  /* set: the context runs on CUDA and its caches live there */
#endif
};

/* ---- loading ------------------------------------------------------------------------------------------- */

static int get_u32(const gguf_file *g, const char *arch, const char *suffix, uint32_t *out, int required,
                   char *err, size_t errlen) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (gguf_get_u32(g, key, out) == 0) return 0;
    if (!required) return 1;
    if (gguf_find(g, key)) return errf(err, errlen, "metadata %s has the wrong type", key);
    return errf(err, errlen, "missing metadata %s", key);
}

static int get_mat(const gguf_file *g, const char *name, int64_t cols, int64_t rows, wmat *w, int optional,
                   char *err, size_t errlen) {
    const gguf_tensor *t = gguf_find_tensor(g, name);
    if (!t) {
        if (optional) {
            w->data = NULL;
            return 0;
        }
        return errf(err, errlen, "missing tensor %s", name);
    }
    if (t->n_dims > 2 || t->ne[0] != cols || t->ne[1] != rows)
        return errf(err, errlen, "tensor %s has shape [%lld, %lld], expected [%lld, %lld]", name,
                    (long long)t->ne[0], (long long)t->ne[1], (long long)cols, (long long)rows);
    w->type = (enum dsa_type)t->type;
    w->data = t->data;
    w->rows = rows;
    w->cols = cols;
    return 0;
}

/* Small vectors (norms, biases) are dequantised to f32 once. */
static int get_vec(const gguf_file *g, const char *name, int64_t n, float **out, int optional, char *err,
                   size_t errlen) {
    wmat w = {0};
    *out = NULL;
    if (get_mat(g, name, n, 1, &w, optional, err, errlen)) return -1;
    if (!w.data) return 0;
    float *v = malloc((size_t)n * sizeof *v);
    if (!v) return errf(err, errlen, "out of memory");
    dsa_traits_ref(w.type)->to_float(w.data, v, n);
    *out = v;
    return 0;
}

static int load_hparams(dsa_model *m, char *err, size_t errlen) {
    const gguf_file *g = m->g;
    dsa_hparams *hp = &m->hp;
    dsa_str a;
    if (gguf_get_str(g, "general.architecture", &a)) return errf(err, errlen, "missing general.architecture");
    char arch[32];
    if (a.len >= sizeof arch) a.len = sizeof arch - 1;
    memcpy(arch, a.ptr, a.len);
    arch[a.len] = 0;
    for (char *p = arch; *p; p++)
        if ((unsigned char)*p < 0x20) *p = '?';
    if (!strcmp(arch, "llama")) hp->arch = DSA_ARCH_LLAMA;
    else if (!strcmp(arch, "qwen2")) hp->arch = DSA_ARCH_QWEN2;
    else return errf(err, errlen, "unsupported architecture '%s' (supported: llama, qwen2)", arch);

    uint32_t v;
    if (get_u32(g, arch, "block_count", &v, 1, err, errlen)) return -1;
    hp->n_layer = (int)v;
    if (get_u32(g, arch, "embedding_length", &v, 1, err, errlen)) return -1;
    hp->n_embd = (int)v;
    if (get_u32(g, arch, "feed_forward_length", &v, 1, err, errlen)) return -1;
    hp->n_ff = (int)v;
    if (get_u32(g, arch, "attention.head_count", &v, 1, err, errlen)) return -1;
    hp->n_head = (int)v;
    hp->n_head_kv = hp->n_head;
    if (get_u32(g, arch, "attention.head_count_kv", &v, 0, err, errlen) == 0) hp->n_head_kv = (int)v;
    hp->n_ctx_train = 2048;
    if (get_u32(g, arch, "context_length", &v, 0, err, errlen) == 0) hp->n_ctx_train = (int)v;
    if (hp->n_layer < 1 || hp->n_layer > 1024 || hp->n_embd < 1 || hp->n_embd > 65536 || hp->n_ff < 1 ||
        hp->n_ff > 1 << 20 || hp->n_head < 1 || hp->n_head > 1024 || hp->n_head_kv < 1 ||
        hp->n_head % hp->n_head_kv || hp->n_embd % hp->n_head || hp->n_ctx_train < 1)
        return errf(err, errlen, "implausible hyperparameters (layers %d, embd %d, ff %d, heads %d/%d)", hp->n_layer,
                    hp->n_embd, hp->n_ff, hp->n_head, hp->n_head_kv);
    hp->head_dim = hp->n_embd / hp->n_head;
    if (get_u32(g, arch, "attention.key_length", &v, 0, err, errlen) == 0 && (int)v != hp->head_dim)
        return errf(err, errlen, "unsupported attention.key_length %u (expected embd/heads = %d)", v, hp->head_dim);
    hp->rope_dim = hp->head_dim;
    if (get_u32(g, arch, "rope.dimension_count", &v, 0, err, errlen) == 0) hp->rope_dim = (int)v;
    if (hp->rope_dim < 2 || hp->rope_dim > hp->head_dim || hp->rope_dim % 2)
        return errf(err, errlen, "implausible rope.dimension_count %d (head dim %d)", hp->rope_dim, hp->head_dim);
    char key[128];
    hp->rope_base = 10000.0f;
    snprintf(key, sizeof key, "%s.rope.freq_base", arch);
    gguf_get_f32(g, key, &hp->rope_base);
    hp->norm_eps = 1e-5f;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", arch);
    gguf_get_f32(g, key, &hp->norm_eps);
    if (!(hp->rope_base > 1.0f) || !(hp->norm_eps > 0.0f) || !(hp->norm_eps < 1.0f))
        return errf(err, errlen, "implausible rope base %g or norm epsilon %g", hp->rope_base, hp->norm_eps);
    dsa_str st;
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    if (gguf_get_str(g, key, &st) == 0 && !dsa_str_eq(st, "none"))
        return errf(err, errlen, "unsupported rope scaling '%.*s' (supported: none)", (int)(st.len > 32 ? 32 : st.len),
                    st.ptr);
    hp->rope_neox = hp->arch == DSA_ARCH_QWEN2;
    hp->n_vocab = dsa_tok_n_vocab(m->tok);
    return 0;
}

static int load_weights(dsa_model *m, char *err, size_t errlen) {
    const gguf_file *g = m->g;
    const dsa_hparams *hp = &m->hp;
    int64_t E = hp->n_embd, F = hp->n_ff, KV = (int64_t)hp->n_head_kv * hp->head_dim, V = hp->n_vocab;
    if (get_mat(g, "token_embd.weight", E, V, &m->embd, 0, err, errlen)) return -1;
    if (get_mat(g, "output.weight", E, V, &m->output, 1, err, errlen)) return -1;
    m->hp.tied_output = m->output.data == NULL;
    if (m->hp.tied_output) m->output = m->embd;
    if (get_vec(g, "output_norm.weight", E, &m->output_norm, 0, err, errlen)) return -1;

    /* Llama 3.1+ files carry per-dimension frequency divisors (rope_freqs.weight); apply them if present. */
    int half = hp->rope_dim / 2;
    float *factors = NULL;
    if (get_vec(g, "rope_freqs.weight", half, &factors, 1, err, errlen)) return -1;
    m->rope_freq = malloc((size_t)half * sizeof *m->rope_freq);
    if (!m->rope_freq) return errf(err, errlen, "out of memory");
    for (int i = 0; i < half; i++) {
        double f = pow((double)hp->rope_base, -2.0 * i / hp->rope_dim);
        if (factors) f /= factors[i];
        m->rope_freq[i] = (float)f;
    }
    free(factors);

    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) return errf(err, errlen, "out of memory");
    for (int l = 0; l < hp->n_layer; l++) {
        layer *L = &m->layers[l];
        char n[96];
#define NAME(s) (snprintf(n, sizeof n, "blk.%d.%s", l, s), n)
        if (get_vec(g, NAME("attn_norm.weight"), E, &L->attn_norm, 0, err, errlen) ||
            get_vec(g, NAME("ffn_norm.weight"), E, &L->ffn_norm, 0, err, errlen) ||
            get_mat(g, NAME("attn_q.weight"), E, E, &L->wq, 0, err, errlen) ||
            get_mat(g, NAME("attn_k.weight"), E, KV, &L->wk, 0, err, errlen) ||
            get_mat(g, NAME("attn_v.weight"), E, KV, &L->wv, 0, err, errlen) ||
            get_mat(g, NAME("attn_output.weight"), E, E, &L->wo, 0, err, errlen) ||
            get_mat(g, NAME("ffn_gate.weight"), E, F, &L->gate, 0, err, errlen) ||
            get_mat(g, NAME("ffn_up.weight"), E, F, &L->up, 0, err, errlen) ||
            get_mat(g, NAME("ffn_down.weight"), F, E, &L->down, 0, err, errlen))
            return -1;
        int biased = hp->arch == DSA_ARCH_QWEN2;
        if (get_vec(g, NAME("attn_q.bias"), E, &L->bq, !biased, err, errlen) ||
            get_vec(g, NAME("attn_k.bias"), KV, &L->bk, !biased, err, errlen) ||
            get_vec(g, NAME("attn_v.bias"), KV, &L->bv, !biased, err, errlen))
            return -1;
#undef NAME
    }
    return 0;
}

/* The weights go into huge pages (gguf_open_ex) unless DSA_MMAP is set to something other than 0, or the copy
 * would take more than a quarter of the machine's memory: then the file is mapped, which costs no memory of its
 * own. */
static int weights_in_huge_pages(const char *path) {
    const char *e = getenv("DSA_MMAP");
    if (e && *e && strcmp(e, "0")) return 0;
    struct stat st;
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    return stat(path, &st) == 0 && pages > 0 && psz > 0 && (double)st.st_size <= (double)pages * (double)psz / 4;
}

int dsa_model_load(const char *path, dsa_model **out, void (*progress)(float, void *), void *ud, char *err,
                   size_t errlen) {
    *out = NULL;
    dsa_kernels_init(0);
    dsa_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) {
        free(m);
        return errf(err, errlen, "out of memory");
    }
    char e[512];
    if (gguf_open_ex(path, weights_in_huge_pages(path) ? GGUF_OPEN_HUGE : 0, &m->g, err, errlen)) goto fail_quiet;
    if (progress) progress(0.1f, ud);
    if (dsa_tok_load(m->g, &m->tok, e, sizeof e)) {
        errf(err, errlen, "%s: %s", path, e);
        goto fail_quiet;
    }
    if (progress) progress(0.3f, ud);
    if (load_hparams(m, e, sizeof e) || load_weights(m, e, sizeof e)) {
        errf(err, errlen, "%s: %s", path, e);
        goto fail_quiet;
    }
    dsa_str tmpl;
    if (gguf_get_str(m->g, "tokenizer.chat_template", &tmpl) == 0) {
        if (dsa_chat_detect(tmpl.ptr, (size_t)tmpl.len, &m->chat, m->chat_err, sizeof m->chat_err))
            m->chat.kind = 0;
    } else {
        snprintf(m->chat_err, sizeof m->chat_err, "the model has no chat template (tokenizer.chat_template)");
    }
    /* Touch the weights now so the first token does not pay for page faults one by one. */
    madvise((void *)m->g->base, m->g->size, MADV_WILLNEED);
    snprintf(m->fingerprint, sizeof m->fingerprint, "xxh3-64:%016llx",
             (unsigned long long)XXH3_64bits(m->g->base, m->g->size));
    if (progress) progress(1.0f, ud);
    *out = m;
    return 0;
fail_quiet:
    dsa_model_free(m);
    return -1;
}

void dsa_model_free(dsa_model *m) {
    if (!m) return;
    if (m->layers)
        for (int l = 0; l < m->hp.n_layer; l++) {
            layer *L = &m->layers[l];
            free(L->attn_norm);
            free(L->ffn_norm);
            free(L->bq);
            free(L->bk);
            free(L->bv);
        }
    free(m->layers);
#ifdef DSA_HAVE_CUDA
    dsa_gpu_model_free(m->gpu);
#endif
    free(m->output_norm);
    free(m->rope_freq);
    dsa_chat_template_free(&m->chat);
    dsa_tok_free(m->tok);
    gguf_close(m->g);
    free(m->path);
    free(m);
}

const dsa_hparams *dsa_model_hparams(const dsa_model *m) { return &m->hp; }
const dsa_tokenizer *dsa_model_tok(const dsa_model *m) { return m->tok; }
const gguf_file *dsa_model_gguf(const dsa_model *m) { return m->g; }
const char *dsa_model_path(const dsa_model *m) { return m->path; }
const char *dsa_model_fingerprint(dsa_model *m) { return m->fingerprint; }
const dsa_chat_template *dsa_model_chat(const dsa_model *m, const char **chat_err) {
    if (chat_err) *chat_err = m->chat.kind ? NULL : m->chat_err;
    return &m->chat;
}

/* ---- contexts ------------------------------------------------------------------------------------------ */

static int ctx_new(dsa_model *m, int n_ctx, int n_threads, dsa_pool *pool, dsa_ctx **out, char *err, size_t errlen) {
    *out = NULL;
    const dsa_hparams *hp = &m->hp;
    if (n_ctx <= 0) n_ctx = hp->n_ctx_train;
    if (n_ctx > (1 << 22)) return errf(err, errlen, "context of %d tokens is too large", n_ctx);
    dsa_ctx *c = calloc(1, sizeof *c);
    if (!c) return errf(err, errlen, "out of memory");
    c->m = m;
    c->n_ctx = n_ctx;
    c->dense_layers = -1;
    c->kv_dim = hp->n_head_kv * hp->head_dim;
    c->own_pool = pool == NULL;
    c->pool = pool ? pool : dsa_pool_new(n_threads);
    int nth = dsa_pool_size(c->pool);
    c->kv_bytes = (size_t)hp->n_layer * n_ctx * c->kv_dim * sizeof(uint16_t);
    /* calloc of a large block maps zero pages lazily: a long context costs memory only as it fills */
    c->kc = calloc(1, c->kv_bytes);
    c->vc = calloc(1, c->kv_bytes);
    size_t B = MAX_BATCH, E = (size_t)hp->n_embd, F = (size_t)hp->n_ff;
    c->x = malloc(B * E * sizeof(float));
    c->xb = malloc(B * E * sizeof(float));
    c->xb2 = malloc(B * E * sizeof(float));
    c->q = malloc(B * E * sizeof(float));
    c->k = malloc(B * c->kv_dim * sizeof(float));
    c->v = malloc(B * c->kv_dim * sizeof(float));
    c->att = malloc(B * E * sizeof(float));
    c->hb = malloc(B * F * sizeof(float));
    c->hb2 = malloc(B * F * sizeof(float));
    c->cos = malloc(B * (size_t)hp->rope_dim / 2 * sizeof(float));
    c->sin = malloc(B * (size_t)hp->rope_dim / 2 * sizeof(float));
    c->scores = malloc((size_t)nth * (hp->n_head / hp->n_head_kv) * n_ctx * sizeof(float));
    c->ascores = malloc((size_t)(SPLIT_ROWS - 1) * hp->n_head * n_ctx * sizeof(float));
    /* one scratch serves every matmul: big enough for the widest input in either activation type */
    int64_t wide = (int64_t)((F > E ? F : E) + DSA_QK_K - 1) / DSA_QK_K * DSA_QK_K;
    size_t s1 = dsa_matmul_scratch(DSA_Q4_0, wide, MAX_BATCH), s2 = dsa_matmul_scratch(DSA_Q4_K, wide, MAX_BATCH),
           s3 = dsa_matmul_scratch(DSA_F32, E, MAX_BATCH); /* the indexer's f32 projection */
    c->mmscratch_size = s1 > s2 ? s1 : s2;
    if (s3 > c->mmscratch_size) c->mmscratch_size = s3;
    c->mmscratch = malloc(c->mmscratch_size);
    if (!c->pool || !c->kc || !c->vc || !c->x || !c->xb || !c->xb2 || !c->q || !c->k || !c->v || !c->att || !c->hb ||
        !c->hb2 || !c->cos || !c->sin || !c->scores || !c->ascores || !c->mmscratch) {
        dsa_ctx_free(c);
        return errf(err, errlen, "out of memory for a context of %d tokens", n_ctx);
    }
    *out = c;
    return 0;
}

int dsa_ctx_new(dsa_model *m, int n_ctx, int n_threads, dsa_ctx **out, char *err, size_t errlen) {
    return ctx_new(m, n_ctx, n_threads, NULL, out, err, errlen);
}

int dsa_ctx_new_shared(dsa_model *m, int n_ctx, dsa_pool *pool, dsa_ctx **out, char *err, size_t errlen) {
    if (!pool) return errf(err, errlen, "no thread pool");
    return ctx_new(m, n_ctx, 0, pool, out, err, errlen);
}

void dsa_ctx_free(dsa_ctx *c) {
    if (!c) return;
#ifdef DSA_HAVE_CUDA
    dsa_gpu_ctx_free(c->gpu);
#endif
    if (c->own_pool) dsa_pool_free(c->pool);
    free(c->kc);
    free(c->vc);
    free(c->x);
    free(c->xb);
    free(c->xb2);
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->att);
    free(c->hb);
    free(c->hb2);
    free(c->cos);
    free(c->sin);
    free(c->scores);
    free(c->ascores);
    free(c->mmscratch);
    free(c->ik);
    free(c->iks);
    free(c->iproj);
    free(c->iq);
    free(c->iw);
    free(c->sel);
    free(c->sel_n);
    free(c->tkscratch);
    free(c->scores2);
    free(c->pcap);
    free(c);
}

int dsa_ctx_n_ctx(const dsa_ctx *c) { return c->n_ctx; }
int dsa_ctx_pos(const dsa_ctx *c) { return c->pos; }
dsa_pool *dsa_ctx_pool(dsa_ctx *c) { return c->pool; }
dsa_model *dsa_ctx_model(const dsa_ctx *c) { return c->m; }
void dsa_ctx_truncate(dsa_ctx *c, int n_pos) {
    if (n_pos >= 0 && n_pos < c->pos) c->pos = n_pos;
}

/* ---- sparse attention: switches and state ------------------------------------------------------------------ */

/* ---- the CUDA backend: uploading the model, keeping a context's GPU twin in step ------------------------------ */

#ifdef DSA_HAVE_CUDA
/* Rows of a weight matrix as f16 (dequantised row by row), appended at dst. */
static void to_f16(const wmat *w, uint16_t *dst, float *row) {
    const dsa_type_traits *t = dsa_traits_ref(w->type);
    size_t rs = dsa_row_size(w->type, w->cols);
    for (int64_t r = 0; r < w->rows; r++) {
        t->to_float((const char *)w->data + (size_t)r * rs, row, w->cols);
        dsa_f32_to_f16_row((int)w->cols, row, dst + (size_t)r * w->cols);
    }
}

/* DSA_CUDA_QUANT=1: matrices stacked from parts of one type (Q4_1 or Q8_0) also go up as their GGUF blocks, row
 * after row, for the decode GEMV; parts of mixed or other types keep the f16 copy only (type 0). */
static dsa_gpu_qmat gpu_qmat(const wmat *const *parts, int n, void **keep) {
    dsa_gpu_qmat q = {0, NULL};
    enum dsa_type t = parts[0]->type;
    if (t != DSA_Q4_1 && t != DSA_Q8_0) return q;
    size_t bytes = 0;
    for (int i = 0; i < n; i++) {
        if (parts[i]->type != t) return q;
        bytes += (size_t)parts[i]->rows * dsa_row_size(t, parts[i]->cols);
    }
    if (n == 1) return (dsa_gpu_qmat){(int)t, parts[0]->data};
    char *buf = malloc(bytes);
    if (!buf) return q;
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        size_t b = (size_t)parts[i]->rows * dsa_row_size(t, parts[i]->cols);
        memcpy(buf + off, parts[i]->data, b);
        off += b;
    }
    *keep = buf;
    return (dsa_gpu_qmat){(int)t, buf};
}

static int gpu_model_quant(dsa_model *m, dsa_gpu_model *g, char *err, size_t errlen) {
    for (int l = 0; l < m->hp.n_layer; l++) {
        const layer *L = &m->layers[l];
        const wmat *qkv[3] = {&L->wq, &L->wk, &L->wv}, *gu[2] = {&L->gate, &L->up}, *wo = &L->wo, *down = &L->down;
        void *k1 = NULL, *k2 = NULL;
        dsa_gpu_layer_q q = {gpu_qmat(qkv, 3, &k1), gpu_qmat(&wo, 1, NULL), gpu_qmat(gu, 2, &k2), gpu_qmat(&down, 1, NULL)};
        int rc = dsa_gpu_set_layer_q(g, l, &q, err, errlen);
        free(k1);
        free(k2);
        if (rc) return -1;
    }
    const wmat *out = m->hp.tied_output ? &m->embd : &m->output;
    dsa_gpu_qmat qo = gpu_qmat(&out, 1, NULL);
    return dsa_gpu_set_output_q(g, &qo, err, errlen);
}

static int gpu_model(dsa_model *m, char *err, size_t errlen) {
    if (m->gpu) return 0;
    const dsa_hparams *hp = &m->hp;
    dsa_gpu_shape sh = {hp->n_layer, hp->n_embd, hp->n_ff, hp->n_head, hp->n_head_kv, hp->head_dim, hp->n_vocab,
                        hp->rope_dim, hp->rope_neox, hp->norm_eps, m->rope_freq};
    dsa_gpu_model *g;
    if (dsa_gpu_model_new(&sh, &g, err, errlen)) return -1;
    size_t E = (size_t)hp->n_embd, F = (size_t)hp->n_ff, KV = (size_t)hp->n_head_kv * hp->head_dim, Q = E + 2 * KV;
    size_t per_layer = Q * E + E * E + 3 * F * E, big = (size_t)hp->n_vocab * E;
    if (big < per_layer) big = per_layer;
    uint16_t *buf = malloc(big * sizeof *buf);
    float *row = malloc((F > E ? F : E) * sizeof *row), *bias = malloc(Q * sizeof *bias);
    int rc = -1;
    if (!buf || !row || !bias) {
        errf(err, errlen, "out of memory");
        goto done;
    }
    for (int l = 0; l < hp->n_layer; l++) {
        const layer *L = &m->layers[l];
        uint16_t *wqkv = buf, *wo, *wgu, *wdown;
        to_f16(&L->wq, wqkv, row);
        to_f16(&L->wk, wqkv + E * E, row);
        to_f16(&L->wv, wqkv + (E + KV) * E, row);
        wo = wqkv + Q * E;
        to_f16(&L->wo, wo, row);
        wgu = wo + E * E;
        to_f16(&L->gate, wgu, row);
        to_f16(&L->up, wgu + F * E, row);
        wdown = wgu + 2 * F * E;
        to_f16(&L->down, wdown, row);
        if (L->bq) {
            memcpy(bias, L->bq, E * sizeof *bias);
            memcpy(bias + E, L->bk, KV * sizeof *bias);
            memcpy(bias + E + KV, L->bv, KV * sizeof *bias);
        }
        dsa_gpu_layer gl = {wqkv, L->bq ? bias : NULL, wo, wgu, wdown, L->attn_norm, L->ffn_norm};
        if (dsa_gpu_set_layer(g, l, &gl, err, errlen)) goto done;
    }
    to_f16(&m->embd, buf, row);
    if (hp->tied_output) {
        if (dsa_gpu_set_embd(g, buf, NULL, m->output_norm, err, errlen)) goto done;
    } else {
        uint16_t *out = malloc((size_t)hp->n_vocab * E * sizeof *out);
        if (!out) {
            errf(err, errlen, "out of memory");
            goto done;
        }
        to_f16(&m->output, out, row);
        int r2 = dsa_gpu_set_embd(g, buf, out, m->output_norm, err, errlen);
        free(out);
        if (r2) goto done;
    }
    if (dsa_gpu_wants_quant(g) && gpu_model_quant(m, g, err, errlen)) goto done;
    m->gpu = g;
    g = NULL;
    rc = 0;
done:
    dsa_gpu_model_free(g);
    free(buf);
    free(row);
    free(bias);
    return rc;
}

/* After dsa_ctx_set_sparse: the GPU twin gets the indexer's key cache and the selection switches. */
static int gpu_sync_sparse(dsa_ctx *c, char *err, size_t errlen) {
    if (c->mode != DSA_SEL_DENSE && c->mode != DSA_SEL_INDEXER)
        return errf(err, errlen, "the CUDA backend selects by the indexer only (not the oracle/window/random baselines)");
    int want_ix = c->ix != NULL, have_ix = dsa_gpu_ctx_has_indexer(c->gpu);
    if (want_ix) {
        const dsa_indexer *ix = c->ix;
        dsa_gpu_indexer gi = {ix->hp.n_head, ix->hp.head_dim, ix->hp.rope_dim, ix->hp.norm_eps, ix->W, ix->ln,
                              ix->rope_freq};
        if (dsa_gpu_indexer_key(c->m->gpu) != ix && have_ix) {
            dsa_gpu_ctx_free(c->gpu); /* let go of the old indexer before uploading the new one */
            c->gpu = NULL;
            have_ix = 0;
        }
        if (dsa_gpu_set_indexer(c->m->gpu, ix, &gi, err, errlen)) return -1;
    }
    if (!c->gpu || want_ix != have_ix) {
        if (c->pos > 0) return errf(err, errlen, "attach the indexer before the first token");
        dsa_gpu_ctx_free(c->gpu);
        c->gpu = NULL;
        if (dsa_gpu_ctx_new(c->m->gpu, c->n_ctx, want_ix, &c->gpu, err, errlen)) return -1;
    }
    int dl = c->dense_layers >= 0 ? c->dense_layers : c->ix ? c->ix->hp.dense_layers : 0;
    dsa_gpu_ctx_config(c->gpu, c->mode == DSA_SEL_INDEXER, c->topk, dl);
    return 0;
}
#endif

int dsa_backend_parse(const char *name, dsa_backend *out) {
    if (!strcmp(name, "auto")) *out = DSA_BACKEND_AUTO;
    else if (!strcmp(name, "cpu")) *out = DSA_BACKEND_CPU;
    else if (!strcmp(name, "cuda")) *out = DSA_BACKEND_CUDA;
    else return -1;
    return 0;
}

int dsa_ctx_set_backend(dsa_ctx *c, dsa_backend b, char *err, size_t errlen) {
    if (c->pos > 0) return errf(err, errlen, "choose the backend before the first token");
#ifdef DSA_HAVE_CUDA
    if (b == DSA_BACKEND_CPU) {
        dsa_gpu_ctx_free(c->gpu);
        c->gpu = NULL;
        return 0;
    }
    if (c->gpu) return 0;
    if (b == DSA_BACKEND_AUTO && (dsa_cuda_devices(NULL, 0, NULL, NULL, 0) <= 0 || c->mode > DSA_SEL_INDEXER))
        return 0;
    char e[256];
    if (gpu_model(c->m, e, sizeof e) || gpu_sync_sparse(c, e, sizeof e)) {
        dsa_gpu_ctx_free(c->gpu);
        c->gpu = NULL;
        if (b == DSA_BACKEND_AUTO) return 0; /* auto falls back to the CPU */
        return errf(err, errlen, "CUDA backend: %s", e);
    }
    return 0;
#else
    if (b == DSA_BACKEND_CUDA) return errf(err, errlen, "this build has no CUDA backend (nvcc was not found)");
    return 0;
#endif
}

int dsa_ctx_keep_selection(dsa_ctx *c, int on) {
#ifdef DSA_HAVE_CUDA
    if (c->gpu) return dsa_gpu_debug_selection(c->m->gpu, on);
#endif
    (void)c, (void)on;
    return -1;
}

int dsa_ctx_selection(dsa_ctx *c, int l, int row, int32_t *idx, int *cnt) {
#ifdef DSA_HAVE_CUDA
    if (c->gpu) return dsa_gpu_selection(c->m->gpu, l, row, idx, cnt);
#endif
    (void)c, (void)l, (void)row, (void)idx, (void)cnt;
    return -1;
}

const char *dsa_ctx_backend_name(const dsa_ctx *c) {
#ifdef DSA_HAVE_CUDA
    if (c->gpu) return "cuda";
#endif
    (void)c;
    return "cpu";
}

int dsa_ctx_set_sparse(dsa_ctx *c, const dsa_indexer *ix, dsa_select_mode mode, int k, char *err, size_t errlen) {
    const dsa_hparams *hp = &c->m->hp;
    if (mode < DSA_SEL_DENSE || mode > DSA_SEL_RANDOM) return errf(err, errlen, "unknown selection mode %d", mode);
    if (mode == DSA_SEL_INDEXER && !ix) return errf(err, errlen, "sparse attention by the indexer needs an indexer");
    if (ix && (ix->n_layer != hp->n_layer || ix->n_embd != hp->n_embd))
        return errf(err, errlen, "the indexer does not fit this model (%d layers of %d, model %d of %d)", ix->n_layer,
                    ix->n_embd, hp->n_layer, hp->n_embd);
    if (ix != c->ix && c->pos > 0)
        return errf(err, errlen, "attach the indexer before the first token (%d already evaluated)", c->pos);
    if (k <= 0) k = ix ? ix->hp.top_k : 0;
    if (mode != DSA_SEL_DENSE && k <= 0) return errf(err, errlen, "top-k must be positive");
    if (k > c->n_ctx) k = c->n_ctx;
    int nth = dsa_pool_size(c->pool);
    size_t B = MAX_BATCH;
    if (ix != c->ix) {
        free(c->ik), free(c->iks), free(c->iproj), free(c->iq), free(c->iw);
        c->ik = NULL, c->iks = NULL, c->iproj = NULL, c->iq = NULL, c->iw = NULL;
        c->ix = NULL;
        if (ix) {
            size_t d = (size_t)ix->hp.head_dim, H = (size_t)ix->hp.n_head;
            c->ik = calloc((size_t)hp->n_layer * c->n_ctx, d);
            c->iks = calloc((size_t)hp->n_layer * c->n_ctx, sizeof(float));
            c->iproj = malloc(B * ix->rows * sizeof(float));
            c->iq = malloc(B * H * d * sizeof(float));
            c->iw = malloc(B * H * sizeof(float));
            if (!c->ik || !c->iks || !c->iproj || !c->iq || !c->iw) return errf(err, errlen, "out of memory");
            c->ix = ix;
        }
    }
    free(c->sel), free(c->sel_n), free(c->tkscratch), free(c->scores2);
    c->sel = NULL, c->sel_n = NULL, c->tkscratch = NULL, c->scores2 = NULL;
    c->mode = DSA_SEL_DENSE;
    c->topk = k;
    if (mode != DSA_SEL_DENSE) {
        c->sel = malloc(B * (size_t)k * sizeof *c->sel);
        c->sel_n = malloc(B * sizeof *c->sel_n);
        c->tkscratch = malloc((size_t)nth * c->n_ctx * sizeof *c->tkscratch);
        c->scores2 = malloc((size_t)nth * SEL_GROUP * c->n_ctx * sizeof *c->scores2);
        if (!c->sel || !c->sel_n || !c->tkscratch || !c->scores2) return errf(err, errlen, "out of memory");
    }
    c->mode = mode;
#ifdef DSA_HAVE_CUDA
    if (c->gpu && gpu_sync_sparse(c, err, errlen)) return -1;
#endif
    return 0;
}

dsa_select_mode dsa_ctx_select_mode(const dsa_ctx *c) { return c->mode; }
void dsa_ctx_set_dense_layers(dsa_ctx *c, int n) {
    c->dense_layers = n < 0 ? -1 : n;
#ifdef DSA_HAVE_CUDA
    if (c->gpu) {
        int dl = c->dense_layers >= 0 ? c->dense_layers : c->ix ? c->ix->hp.dense_layers : 0;
        dsa_gpu_ctx_config(c->gpu, c->mode == DSA_SEL_INDEXER, c->topk, dl);
    }
#endif
}
int dsa_ctx_topk(const dsa_ctx *c) { return c->topk; }
int dsa_ctx_dense_layers(const dsa_ctx *c) {
    return c->dense_layers >= 0 ? c->dense_layers : c->ix ? c->ix->hp.dense_layers : 0;
}
int dsa_ctx_kv_dim(const dsa_ctx *c) { return c->kv_dim; }
void dsa_ctx_kv(const dsa_ctx *c, int l, const uint16_t **K, const uint16_t **V) {
    *K = c->kc + (size_t)l * c->n_ctx * c->kv_dim;
    *V = c->vc + (size_t)l * c->n_ctx * c->kv_dim;
}
void dsa_ctx_index_keys(const dsa_ctx *c, int l, const uint8_t **k8, const float **scale) {
    if (!c->ix) {
        *k8 = NULL, *scale = NULL;
        return;
    }
    *k8 = c->ik + (size_t)l * c->n_ctx * c->ix->hp.head_dim;
    *scale = c->iks + (size_t)l * c->n_ctx;
}
void dsa_ctx_index_queries(const dsa_ctx *c, const float **q, const float **w) {
    *q = c->ix ? c->iq : NULL;
    *w = c->ix ? c->iw : NULL;
}
int dsa_ctx_capture_probs(dsa_ctx *c, int on) {
    free(c->pcap);
    c->pcap = NULL;
    if (on && !(c->pcap = malloc((size_t)MAX_BATCH * c->n_ctx * sizeof *c->pcap))) return -1;
    return 0;
}
const float *dsa_ctx_batch_probs(const dsa_ctx *c) { return c->pcap; }
void dsa_ctx_set_layer_hook(dsa_ctx *c, dsa_layer_hook fn, void *ud) {
    c->hook = fn;
    c->hook_ud = ud;
}
double dsa_ctx_indexer_seconds(const dsa_ctx *c) { return c->idx_sec; }
int dsa_ctx_index_dim(const dsa_ctx *c) { return c->ix ? c->ix->hp.head_dim : 0; }

static int cache_range(const dsa_ctx *c, int l, int t0, int n, char *err, size_t errlen) {
    if (l < 0 || l >= c->m->hp.n_layer) return errf(err, errlen, "layer %d out of range", l);
    if (t0 < 0 || n < 0 || n > c->n_ctx - t0)
        return errf(err, errlen, "positions %d..%d outside the context of %d", t0, t0 + n, c->n_ctx);
    return 0;
}

int dsa_ctx_cache_get(const dsa_ctx *c, int l, int t0, int n, uint16_t *K, uint16_t *V, uint8_t *k8, float *scale,
                      char *err, size_t errlen) {
    if (cache_range(c, l, t0, n, err, errlen)) return -1;
#ifdef DSA_HAVE_CUDA
    if (c->gpu) return dsa_gpu_cache_io(c->gpu, 0, l, t0, n, K, V, k8, scale, err, errlen);
#endif
    size_t row = (size_t)l * c->n_ctx + t0, kv = (size_t)c->kv_dim;
    if (K) memcpy(K, c->kc + row * kv, (size_t)n * kv * sizeof *K);
    if (V) memcpy(V, c->vc + row * kv, (size_t)n * kv * sizeof *V);
    if (c->ix) {
        size_t d = (size_t)c->ix->hp.head_dim;
        if (k8) memcpy(k8, c->ik + row * d, (size_t)n * d);
        if (scale) memcpy(scale, c->iks + row, (size_t)n * sizeof *scale);
    }
    return 0;
}

int dsa_ctx_cache_put(dsa_ctx *c, int l, int t0, int n, const uint16_t *K, const uint16_t *V, const uint8_t *k8,
                      const float *scale, char *err, size_t errlen) {
    if (cache_range(c, l, t0, n, err, errlen)) return -1;
#ifdef DSA_HAVE_CUDA
    if (c->gpu) return dsa_gpu_cache_io(c->gpu, 1, l, t0, n, (void *)K, (void *)V, (void *)k8, (void *)scale, err, errlen);
#endif
    size_t row = (size_t)l * c->n_ctx + t0, kv = (size_t)c->kv_dim;
    if (K) memcpy(c->kc + row * kv, K, (size_t)n * kv * sizeof *K);
    if (V) memcpy(c->vc + row * kv, V, (size_t)n * kv * sizeof *V);
    if (c->ix) {
        size_t d = (size_t)c->ix->hp.head_dim;
        if (k8) memcpy(c->ik + row * d, k8, (size_t)n * d);
        if (scale) memcpy(c->iks + row, scale, (size_t)n * sizeof *scale);
    }
    return 0;
}

int dsa_ctx_set_pos(dsa_ctx *c, int n_pos, char *err, size_t errlen) {
    if (n_pos < 0 || n_pos > c->n_ctx) return errf(err, errlen, "position %d outside the context of %d", n_pos, c->n_ctx);
    c->pos = n_pos;
    return 0;
}
void dsa_ctx_reset_timers(dsa_ctx *c) { c->idx_sec = 0; }

/* ---- the forward pass ---------------------------------------------------------------------------------- */

static void rmsnorm(float *o, const float *x, const float *w, int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float s = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++) o[i] = x[i] * s * w[i];
}

/* Rotate one head's first rope_dim dims.  llama GGUFs store Q/K rows permuted so that "normal" RoPE (adjacent
 * pairs) computes what the original model's NeoX-style rotation did; qwen2 GGUFs keep NeoX pairing. */
static void rope(float *x, const float *cs, const float *sn, int rope_dim, int neox) {
    int half = rope_dim / 2;
    for (int i = 0; i < half; i++) {
        int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        float x0 = x[a], x1 = x[b];
        x[a] = x0 * cs[i] - x1 * sn[i];
        x[b] = x0 * sn[i] + x1 * cs[i];
    }
}

static void matmul(dsa_ctx *c, const wmat *w, const float *X, int n, float *Y) {
    dsa_matmul(c->pool, w->type, w->data, w->rows, w->cols, X, n, Y, w->rows, c->mmscratch);
}

typedef struct {
    dsa_ctx *c;
    dsa_ctx *const *rc; /* a step of several sequences: row t is the next token of rc[t] (NULL: rows of c) */
    int layer, n, pos0;
    int sparse;       /* this layer selects (c->sel is set and the layer is not one of the dense ones) */
    const float *pre; /* one-token decode: the index scores, already computed by all threads (index_scores_split) */
} att_job;

/* Row t's context and position: a sequence's consecutive tokens, or one token of each of several sequences. */
static inline dsa_ctx *row_ctx(const att_job *j, int t) { return j->rc ? j->rc[t] : j->c; }
static inline int row_pos(const att_job *j, int t) { return j->rc ? j->rc[t]->pos : j->pos0 + t; }

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* One-token decode: the index scores of the token against all keys, a slice of keys per thread.  Every score is
 * computed exactly as select_part would, so decode and prefill still select the same sets. */
static void index_scores_split(void *arg, int ith, int nth) {
    att_job *j = arg;
    dsa_ctx *c = j->c;
    const dsa_indexer_hp *ih = &c->ix->hp;
    int len = row_pos(j, 0) + 1, per = (len + nth - 1) / nth, s0 = ith * per, s1 = s0 + per < len ? s0 + per : len;
    if (s1 <= s0) return;
    const uint8_t *k8;
    const float *ks;
    dsa_ctx_index_keys(row_ctx(j, 0), j->layer, &k8, &ks);
    dsa_indexer_scores(s1 - s0, ih->n_head, ih->head_dim, k8 + (size_t)s0 * ih->head_dim, ks + s0, c->iq, c->iw,
                       c->scores2 + s0);
}

/* The indexer's selection for a prefill: groups of SEL_GROUP consecutive rows per task, their scores in one pass
 * over the keys (dsa_indexer_scores_rows: the bits each row's own call would give, so decode selects alike). */
static void select_rows_indexer(att_job *j, int ith, int nth) {
    dsa_ctx *c = j->c;
    const dsa_indexer_hp *ih = &c->ix->hp;
    int k = c->topk, Hd = ih->n_head * ih->head_dim;
    float *sc = c->scores2 + (size_t)ith * SEL_GROUP * c->n_ctx;
    const uint8_t *k8;
    const float *ks;
    dsa_ctx_index_keys(c, j->layer, &k8, &ks);
    for (int t0 = ith * SEL_GROUP; t0 < j->n; t0 += nth * SEL_GROUP) {
        int rows[SEL_GROUP], lens[SEL_GROUP], R = 0;
        for (int t = t0; t < t0 + SEL_GROUP && t < j->n; t++) {
            int len = row_pos(j, t) + 1;
            if (len <= k) c->sel_n[t] = -1; /* attends densely, bit for bit the dense path */
            else rows[R] = t, lens[R++] = len;
        }
        if (!R) continue;
        /* rows[] are consecutive, so their queries and weights are too */
        dsa_indexer_scores_rows(R, lens, ih->n_head, ih->head_dim, k8, ks, c->iq + (size_t)rows[0] * Hd,
                                c->iw + (size_t)rows[0] * ih->n_head, sc, (size_t)c->n_ctx);
        for (int r = 0; r < R; r++)
            c->sel_n[rows[r]] = dsa_topk(lens[r], sc + (size_t)r * c->n_ctx, k, c->sel + (size_t)rows[r] * k,
                                         c->tkscratch + (size_t)ith * c->n_ctx);
    }
}

/* One token per task: which positions its attention reads.  The set is shared by all heads (DeepSeek's choice;
 * with GQA it is also what keeps the gathered KV rows few).  While the causal prefix is no longer than k the
 * token attends densely, bit for bit the dense path. */
static void select_part(void *arg, int ith, int nth) {
    att_job *j = arg;
    dsa_ctx *c = j->c;
    const dsa_hparams *hp = &c->m->hp;
    int k = c->topk;
    if (c->mode == DSA_SEL_INDEXER && !j->pre && !j->rc) {
        select_rows_indexer(j, ith, nth);
        return;
    }
    float *sc = c->scores2 + (size_t)ith * SEL_GROUP * c->n_ctx;
    for (int t = ith; t < j->n; t += nth) {
        int len = row_pos(j, t) + 1;
        int32_t *idx = c->sel + (size_t)t * k;
        if (len <= k) {
            c->sel_n[t] = -1;
            continue;
        }
        switch (c->mode) {
        case DSA_SEL_INDEXER: {
            const dsa_indexer_hp *ih = &c->ix->hp;
            const uint8_t *k8;
            const float *ks;
            dsa_ctx_index_keys(row_ctx(j, t), j->layer, &k8, &ks);
            if (!j->pre)
                dsa_indexer_scores(len, ih->n_head, ih->head_dim, k8, ks, c->iq + (size_t)t * ih->n_head * ih->head_dim,
                                   c->iw + (size_t)t * ih->n_head, sc);
            c->sel_n[t] = dsa_topk(len, j->pre ? j->pre : sc, k, idx, c->tkscratch + (size_t)ith * c->n_ctx);
            break;
        }
        case DSA_SEL_ORACLE: {
            /* the true attention probability summed over heads, which is what the indexer is trained towards */
            int D = hp->head_dim, group = hp->n_head / hp->n_head_kv;
            float *p = c->scores + (size_t)ith * group * c->n_ctx;
            const uint16_t *K = c->kc + (size_t)j->layer * c->n_ctx * c->kv_dim;
            memset(sc, 0, (size_t)len * sizeof *sc);
            for (int h = 0; h < hp->n_head; h++) {
                dsa_attn_scores_f16(len, D, K + (h / group) * D, (size_t)c->kv_dim,
                                    c->q + (size_t)t * hp->n_embd + h * D, 1.0f / sqrtf((float)D), p);
                dsa_softmax(len, p);
                for (int s = 0; s < len; s++) sc[s] += p[s];
            }
            c->sel_n[t] = dsa_topk(len, sc, k, idx, c->tkscratch + (size_t)ith * c->n_ctx);
            break;
        }
        case DSA_SEL_WINDOW: {
            int sinks = k < 4 ? k : 4, m = 0;
            for (int s = 0; s < sinks; s++) idx[m++] = s;
            for (int s = len - (k - sinks); s < len; s++) idx[m++] = s;
            c->sel_n[t] = m;
            break;
        }
        case DSA_SEL_RANDOM: {
            uint64_t seed = mix64(((uint64_t)row_pos(j, t) << 16) ^ (uint64_t)j->layer ^ 0x5DEECE66Dull);
            for (int s = 0; s < len; s++) sc[s] = (float)(mix64(seed + (uint64_t)s) >> 40);
            c->sel_n[t] = dsa_topk(len, sc, k, idx, c->tkscratch + (size_t)ith * c->n_ctx);
            break;
        }
        default:
            c->sel_n[t] = -1;
        }
    }
}

/* Row t's attention span: its selected positions (*idx set) or its causal prefix (*idx NULL). */
static int att_span(const att_job *j, int t, const int32_t **idx) {
    const dsa_ctx *c = j->c;
    if (j->sparse && c->sel_n[t] >= 0) {
        *idx = c->sel + (size_t)t * c->topk;
        return c->sel_n[t];
    }
    *idx = NULL;
    return row_pos(j, t) + 1;
}

/* Prefill and batches of SPLIT_ROWS rows or more: a (token, KV head) pair per task, whose query heads convert each
 * K/V row once (dsa_attn_heads_f16).  With the probabilities captured (dsa_ctx_capture_probs) a task is a whole
 * token, so that one thread sums its heads.  The arithmetic of each (token, head) is the same either way, and the
 * same as in the split decode below. */
static void attention_part(void *arg, int ith, int nth) {
    att_job *j = arg;
    dsa_ctx *c = j->c;
    const dsa_hparams *hp = &c->m->hp;
    int H = hp->n_head, D = hp->head_dim, group = hp->n_head / hp->n_head_kv;
    float scale = 1.0f / sqrtf((float)D), inv_h = 1.0f / H;
    float *sc = c->scores + (size_t)ith * group * c->n_ctx;
    int per_token = c->pcap != NULL;
    int span = per_token ? H : group, tasks = j->n * (H / span);
    for (int task = ith; task < tasks; task += nth) {
        int t = task / (H / span), h0 = task % (H / span) * span, h1 = h0 + span;
        const int32_t *idx;
        int len = att_span(j, t, &idx);
        const dsa_ctx *rcx = row_ctx(j, t);
        const uint16_t *K = rcx->kc + (size_t)j->layer * rcx->n_ctx * rcx->kv_dim;
        const uint16_t *V = rcx->vc + (size_t)j->layer * rcx->n_ctx * rcx->kv_dim;
        if (!per_token) {
            int kvh = h0 / group;
            dsa_attn_heads_f16(group, len, D, K + kvh * D, V + kvh * D, (size_t)c->kv_dim, idx,
                               c->q + (size_t)t * hp->n_embd + h0 * D, scale, sc, (size_t)c->n_ctx,
                               c->att + (size_t)t * hp->n_embd + h0 * D);
            continue;
        }
        float *pc = c->pcap + (size_t)t * c->n_ctx;
        memset(pc, 0, (size_t)(row_pos(j, t) + 1) * sizeof *pc);
        for (int h = h0; h < h1; h++) {
            int kvh = h / group;
            const float *q = c->q + (size_t)t * hp->n_embd + h * D;
            float *o = c->att + (size_t)t * hp->n_embd + h * D;
            dsa_attn_scores_f16_idx(len, D, K + kvh * D, (size_t)c->kv_dim, idx, q, scale, sc);
            dsa_softmax(len, sc);
            dsa_attn_sum_f16_idx(len, D, sc, V + kvh * D, (size_t)c->kv_dim, idx, o);
            for (int i = 0; i < len; i++) pc[idx ? idx[i] : i] += sc[i] * inv_h;
        }
    }
}

/* Decode (fewer than SPLIT_ROWS rows, no capture, several threads): a row's attention is spread over all the
 * threads in two passes, with the bits attention_part would give it.  First the scores, with the row's span cut
 * into slices (a task: one slice, every head) into c->ascores; then per (row, KV head, 32 dims) the softmax of the
 * group's heads, which each such task redoes from the shared scores in its own buffer, and their weighted sum over
 * those dims of V. */
static int att_slice(int len, int nth) {
    int sl = (len + 4 * nth - 1) / (4 * nth); /* about 4 slices per thread */
    sl = (sl + 7) / 8 * 8;
    return sl < 32 ? 32 : sl;
}

static void attn_scores_part(void *arg, int ith, int nth) {
    att_job *j = arg;
    dsa_ctx *c = j->c;
    const dsa_hparams *hp = &c->m->hp;
    int H = hp->n_head, D = hp->head_dim, group = hp->n_head / hp->n_head_kv;
    float scale = 1.0f / sqrtf((float)D);
    int len[SPLIT_ROWS], sl[SPLIT_ROWS], ns[SPLIT_ROWS], T = 0;
    const int32_t *idx[SPLIT_ROWS];
    for (int t = 0; t < j->n; t++) {
        len[t] = att_span(j, t, &idx[t]);
        sl[t] = att_slice(len[t], nth);
        ns[t] = (len[t] + sl[t] - 1) / sl[t];
        T += ns[t];
    }
    int a = (int)((int64_t)T * ith / nth), b = (int)((int64_t)T * (ith + 1) / nth), task = 0;
    for (int t = 0; t < j->n; t++)
        for (int s = 0; s < ns[t]; s++, task++) {
            if (task < a || task >= b) continue;
            int s0 = s * sl[t], m = len[t] - s0 < sl[t] ? len[t] - s0 : sl[t];
            const dsa_ctx *rcx = row_ctx(j, t);
            const uint16_t *K = rcx->kc + (size_t)j->layer * rcx->n_ctx * rcx->kv_dim;
            if (!idx[t]) K += (size_t)s0 * c->kv_dim;
            for (int kvh = 0; kvh < hp->n_head_kv; kvh++)
                dsa_attn_scores_f16_g(group, m, D, K + kvh * D, (size_t)c->kv_dim, idx[t] ? idx[t] + s0 : NULL,
                                      c->q + (size_t)t * hp->n_embd + kvh * group * D, scale,
                                      c->ascores + ((size_t)t * H + kvh * group) * c->n_ctx + s0, (size_t)c->n_ctx);
        }
}

static void attn_sum_part(void *arg, int ith, int nth) {
    att_job *j = arg;
    dsa_ctx *c = j->c;
    const dsa_hparams *hp = &c->m->hp;
    int H = hp->n_head, D = hp->head_dim, group = hp->n_head / hp->n_head_kv;
    int dw = D % 32 ? D : 32, per_row = hp->n_head_kv * (D / dw), T = j->n * per_row;
    float *p = c->scores + (size_t)ith * group * c->n_ctx;
    for (int task = (int)((int64_t)T * ith / nth); task < (int)((int64_t)T * (ith + 1) / nth); task++) {
        int t = task / per_row, kvh = task % per_row / (D / dw), d0 = task % (D / dw) * dw;
        const int32_t *idx;
        int len = att_span(j, t, &idx);
        for (int g = 0; g < group; g++) {
            memcpy(p + (size_t)g * c->n_ctx, c->ascores + ((size_t)t * H + kvh * group + g) * c->n_ctx,
                   (size_t)len * sizeof *p);
            dsa_softmax(len, p + (size_t)g * c->n_ctx);
        }
        const dsa_ctx *rcx = row_ctx(j, t);
        const uint16_t *V = rcx->vc + (size_t)j->layer * rcx->n_ctx * rcx->kv_dim;
        dsa_attn_sum_f16_g(group, len, dw, p, (size_t)c->n_ctx, V + kvh * D + d0, (size_t)c->kv_dim, idx,
                           c->att + (size_t)t * hp->n_embd + kvh * group * D + d0, (size_t)D);
    }
}

/* The per-row work between the matrix products, rows ith, ith + nth, ... of a batch on each thread (run_rows). */
typedef struct {
    float *x;         /* the residual stream, rows × E */
    const float *add; /* added to x first, when set (a product's output) */
    float *out;       /* rmsnorm(x) · w, when w is set */
    const float *w;
    int rows, E;
    float eps;
} norm_job;
static void norm_part(void *arg, int ith, int nth) {
    const norm_job *j = arg;
    for (int t = ith; t < j->rows; t += nth) {
        float *x = j->x + (size_t)t * j->E;
        if (j->add) {
            const float *a = j->add + (size_t)t * j->E;
            for (int i = 0; i < j->E; i++) x[i] += a[i];
        }
        if (j->w) rmsnorm(j->out + (size_t)t * j->E, x, j->w, j->E, j->eps);
    }
}

/* SwiGLU's gate. */
typedef struct {
    float *g;
    const float *u;
    int rows, ff;
} swiglu_job;
static void swiglu_part(void *arg, int ith, int nth) {
    const swiglu_job *j = arg;
    for (int t = ith; t < j->rows; t += nth) dsa_swiglu(j->ff, j->g + (size_t)t * j->ff, j->u + (size_t)t * j->ff);
}

/* A one-row batch (decode) runs such work on the calling thread: handing it over costs more than it takes. */
static void run_rows(dsa_ctx *c, void (*fn)(void *, int, int), void *job, int n) {
    if (n == 1) fn(job, 0, 1);
    else dsa_pool_run(c->pool, fn, job);
}

/* n rows through the model: consecutive tokens of c, or (rc set) the next token of each of the contexts rc[0..n),
 * which then share c's scratch and thread pool and get their logits row by row (all_logits). */
static void eval_batch(dsa_ctx *c, dsa_ctx *const *rc, const int32_t *ids, int n, float *logits, int all_logits) {
    const dsa_model *m = c->m;
    const dsa_hparams *hp = &m->hp;
    int E = hp->n_embd, KV = c->kv_dim, D = hp->head_dim, half = hp->rope_dim / 2;
    const dsa_type_traits *et = dsa_traits_ref(m->embd.type);
    size_t erow = dsa_row_size(m->embd.type, E);

    for (int t = 0; t < n; t++) {
        et->to_float((const char *)m->embd.data + (size_t)ids[t] * erow, c->x + (size_t)t * E, E);
        int p = rc ? rc[t]->pos : c->pos + t;
        for (int i = 0; i < half; i++) {
            /* the angle in double: positions reach 10^5, where a float product loses digits */
            double a = (double)p * m->rope_freq[i];
            c->cos[t * half + i] = (float)cos(a);
            c->sin[t * half + i] = (float)sin(a);
        }
    }

    for (int l = 0; l < hp->n_layer; l++) {
        const layer *L = &m->layers[l];
        /* the previous layer's FFN output joins the residual here, in the same pass as this layer's norm */
        norm_job nj = {c->x, l ? c->xb2 : NULL, c->xb, L->attn_norm, n, E, hp->norm_eps};
        run_rows(c, norm_part, &nj, n);
        dsa_mm_out qkv[3] = {{L->wq.type, L->wq.data, L->wq.rows, c->q, E},
                             {L->wk.type, L->wk.data, L->wk.rows, c->k, KV},
                             {L->wv.type, L->wv.data, L->wv.rows, c->v, KV}};
        dsa_matmul_n(c->pool, qkv, 3, E, c->xb, n, c->mmscratch);
        for (int t = 0; t < n; t++) {
            dsa_ctx *R = rc ? rc[t] : c;
            int pos = rc ? R->pos : c->pos + t;
            uint16_t *kc = R->kc + ((size_t)l * R->n_ctx + pos) * KV, *vc = R->vc + ((size_t)l * R->n_ctx + pos) * KV;
            float *q = c->q + (size_t)t * E, *k = c->k + (size_t)t * KV, *v = c->v + (size_t)t * KV;
            if (L->bq) {
                for (int i = 0; i < E; i++) q[i] += L->bq[i];
                for (int i = 0; i < KV; i++) k[i] += L->bk[i];
                for (int i = 0; i < KV; i++) v[i] += L->bv[i];
            }
            for (int h = 0; h < hp->n_head; h++) rope(q + h * D, c->cos + t * half, c->sin + t * half, hp->rope_dim, hp->rope_neox);
            for (int h = 0; h < hp->n_head_kv; h++) rope(k + h * D, c->cos + t * half, c->sin + t * half, hp->rope_dim, hp->rope_neox);
            dsa_f32_to_f16_row(KV, k, kc);
            dsa_f32_to_f16_row(KV, v, vc);
        }
        int dl = c->dense_layers >= 0 ? c->dense_layers : c->ix ? c->ix->hp.dense_layers : 0;
        att_job aj = {c, rc, l, n, c->pos, c->sel != NULL && l >= dl, NULL};
        if (c->ix) {
            /* the lightning indexer: its keys join the cache for every token, whatever the mode */
            double t0 = dsa_now();
            const dsa_indexer *ix = c->ix;
            int R = ix->rows, Hd = ix->hp.n_head * ix->hp.head_dim, d = ix->hp.head_dim;
            /* Queries and weights only where a row selects (or a layer hook may read them): while every row's
             * prefix is within k, only the key rows of the projection (d of its R) are multiplied.  Each row of an
             * f32 product is its own dot product, so the keys are the same bits either way. */
            int need_q = c->hook != NULL;
            for (int t = 0; t < n && !need_q; t++) need_q = c->mode == DSA_SEL_INDEXER && aj.sparse && row_pos(&aj, t) + 1 > c->topk;
            const float *W = ix->W + (size_t)l * R * E;
            if (need_q)
                dsa_matmul(c->pool, DSA_F32, W, R, E, c->xb, n, c->iproj, R, c->mmscratch);
            else
                dsa_matmul(c->pool, DSA_F32, W + (size_t)Hd * E, d, E, c->xb, n, c->iproj + Hd, R, c->mmscratch);
            float kbuf[256];
            for (int t = 0; t < n; t++) {
                dsa_ctx *rt = rc ? rc[t] : c;
                int pos = row_pos(&aj, t);
                size_t slot = (size_t)l * rt->n_ctx + pos;
                dsa_indexer_project(ix, l, c->iproj + (size_t)t * R, pos, need_q ? c->iq + (size_t)t * Hd : NULL, kbuf,
                                    c->iw + (size_t)t * ix->hp.n_head);
                dsa_fp8_quant_row(d, kbuf, rt->ik + slot * d, rt->iks + slot);
            }
            if (c->mode == DSA_SEL_INDEXER && aj.sparse) {
                if (n == 1 && row_pos(&aj, 0) + 1 > c->topk) {
                    /* scores into the first thread's row of scores2, which select_part then only ranks */
                    dsa_pool_run(c->pool, index_scores_split, &aj);
                    aj.pre = c->scores2;
                }
                dsa_pool_run(c->pool, select_part, &aj);
                aj.pre = NULL;
            }
            c->idx_sec += dsa_now() - t0;
        }
        if (aj.sparse && c->mode != DSA_SEL_INDEXER) dsa_pool_run(c->pool, select_part, &aj);
        if (n < SPLIT_ROWS && !c->pcap && dsa_pool_size(c->pool) > 1) {
            dsa_pool_run(c->pool, attn_scores_part, &aj);
            dsa_pool_run(c->pool, attn_sum_part, &aj);
        } else {
            dsa_pool_run(c->pool, attention_part, &aj);
        }
        if (c->hook) c->hook(c->hook_ud, l, c->pos, n, c->xb, c->q);
        matmul(c, &L->wo, c->att, n, c->xb2);
        nj = (norm_job){c->x, c->xb2, c->xb, L->ffn_norm, n, E, hp->norm_eps};
        run_rows(c, norm_part, &nj, n);
        dsa_mm_out gu[2] = {{L->gate.type, L->gate.data, L->gate.rows, c->hb, hp->n_ff},
                            {L->up.type, L->up.data, L->up.rows, c->hb2, hp->n_ff}};
        dsa_matmul_n(c->pool, gu, 2, E, c->xb, n, c->mmscratch);
        swiglu_job sj = {c->hb, c->hb2, n, hp->n_ff};
        run_rows(c, swiglu_part, &sj, n);
        matmul(c, &L->down, c->hb, n, c->xb2); /* added to x by the next layer's norm pass, or just below */
    }
    norm_job last = {c->x, c->xb2, NULL, NULL, n, E, hp->norm_eps};
    run_rows(c, norm_part, &last, n);
    if (rc)
        for (int t = 0; t < n; t++) rc[t]->pos++;
    else
        c->pos += n;

    if (!logits) return;
    int first = all_logits ? 0 : n - 1;
    for (int t = first; t < n; t++)
        rmsnorm(c->xb + (size_t)(t - first) * E, c->x + (size_t)t * E, m->output_norm, E, hp->norm_eps);
    matmul(c, &m->output, c->xb, n - first, logits);
}

#ifdef DSA_HAVE_CUDA
#define GPU_ROWS 256     /* rows per call (kernels/cuda/model.cu MAX_ROWS) */
#define GPU_OUT_ROWS 16  /* rows of logits per call */

static int gpu_eval(dsa_ctx *c, const int32_t *ids, int n, float *logits, int all_logits,
                    void (*progress)(int, int, void *), void *ud, char *err, size_t errlen) {
    if (c->hook || c->pcap) return errf(err, errlen, "layer hooks and probability capture need the CPU backend");
    int V = c->m->hp.n_vocab;
    dsa_gpu_ctx *cs[GPU_ROWS];
    int pos[GPU_ROWS], outr[GPU_OUT_ROWS];
    for (int i = 0; i < GPU_ROWS; i++) cs[i] = c->gpu;
    for (int done = 0; done < n;) {
        /* all logits: 16 rows a call (the logits projection reads the rows in one pass); else 256 */
        int cap = logits && all_logits ? GPU_OUT_ROWS : GPU_ROWS;
        int b = n - done < cap ? n - done : cap, n_out = 0;
        for (int t = 0; t < b; t++) pos[t] = c->pos + t;
        float *lg = NULL;
        if (logits && all_logits) {
            for (int t = 0; t < b; t++) outr[n_out++] = t;
            lg = logits + (size_t)done * V;
        } else if (logits && done + b == n) {
            outr[n_out++] = b - 1;
            lg = logits;
        }
        if (dsa_gpu_eval(cs, ids + done, pos, b, outr, n_out, lg, err, errlen)) return -1;
        c->pos += b;
        done += b;
        if (progress) progress(done, n, ud);
    }
    return 0;
}
#endif

int dsa_ctx_eval_batch(dsa_ctx *const *cs, const int32_t *ids, int n, float *logits, char *err, size_t errlen) {
    if (n <= 0) return errf(err, errlen, "nothing to evaluate");
    const dsa_model *m = cs[0]->m;
    int V = m->hp.n_vocab;
    for (int i = 0; i < n; i++) {
        if (cs[i]->m != m) return errf(err, errlen, "contexts of different models in one batch");
        if (cs[i]->pos >= cs[i]->n_ctx)
            return errf(err, errlen, "context full: %d tokens in the cache + 1 new > context size %d", cs[i]->pos,
                        cs[i]->n_ctx);
        if (ids[i] < 0 || ids[i] >= V) return errf(err, errlen, "token id %d out of range (vocabulary of %d)", ids[i], V);
        for (int j = 0; j < i; j++)
            if (cs[j] == cs[i]) return errf(err, errlen, "a context appears twice in one batch");
    }
#ifdef DSA_HAVE_CUDA
    int on_gpu = cs[0]->gpu != NULL;
    for (int i = 1; i < n; i++)
        if ((cs[i]->gpu != NULL) != on_gpu) return errf(err, errlen, "contexts of different backends in one batch");
    if (on_gpu) {
        for (int i = 0; i < n; i++)
            if (cs[i]->hook || cs[i]->pcap)
                return errf(err, errlen, "layer hooks and probability capture need the CPU backend");
        dsa_gpu_ctx *gc[GPU_OUT_ROWS];
        int pos[GPU_OUT_ROWS], outr[GPU_OUT_ROWS];
        for (int done = 0; done < n;) {
            int b = n - done < GPU_OUT_ROWS ? n - done : GPU_OUT_ROWS;
            for (int i = 0; i < b; i++) {
                gc[i] = cs[done + i]->gpu;
                pos[i] = cs[done + i]->pos;
                outr[i] = i;
            }
            if (dsa_gpu_eval(gc, ids + done, pos, b, outr, logits ? b : 0, logits ? logits + (size_t)done * V : NULL,
                             err, errlen))
                return -1;
            for (int i = 0; i < b; i++) cs[done + i]->pos++;
            done += b;
        }
        return 0;
    }
#endif
    /* On the CPU, contexts alike in shape and attention go through the weights together: one pass over every
     * matrix for all n tokens, each row attending over its own cache. */
    const dsa_ctx *a = cs[0];
    int together = n > 1 && n <= MAX_BATCH && logits && (a->mode == DSA_SEL_DENSE || a->mode == DSA_SEL_INDEXER);
    for (int i = 0; i < n && together; i++) {
        const dsa_ctx *b = cs[i];
        together = b->ix == a->ix && b->mode == a->mode && b->topk == a->topk && b->n_ctx == a->n_ctx &&
                   dsa_ctx_dense_layers(b) == dsa_ctx_dense_layers(a) && !b->hook && !b->pcap;
    }
    if (together) {
        eval_batch(cs[0], cs, ids, n, logits, 1);
        return 0;
    }
    for (int i = 0; i < n; i++)
        if (dsa_ctx_eval(cs[i], ids + i, 1, logits ? logits + (size_t)i * V : NULL, 0, NULL, NULL, err, errlen))
            return -1;
    return 0;
}

int dsa_ctx_eval(dsa_ctx *c, const int32_t *ids, int n, float *logits, int all_logits,
                 void (*progress)(int, int, void *), void *ud, char *err, size_t errlen) {
    const dsa_hparams *hp = &c->m->hp;
    if (n <= 0) return errf(err, errlen, "nothing to evaluate");
    if (n > c->n_ctx - c->pos)
        return errf(err, errlen, "context full: %d tokens in the cache + %d new > context size %d", c->pos, n,
                    c->n_ctx);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= hp->n_vocab)
            return errf(err, errlen, "token id %d out of range (vocabulary of %d)", ids[i], hp->n_vocab);
#ifdef DSA_HAVE_CUDA
    if (c->gpu) return gpu_eval(c, ids, n, logits, all_logits, progress, ud, err, errlen);
#endif
    for (int done = 0; done < n;) {
        int b = n - done < MAX_BATCH ? n - done : MAX_BATCH;
        int last = done + b == n;
        float *lg = NULL;
        if (logits && all_logits) lg = logits + (size_t)done * hp->n_vocab;
        else if (logits && last) lg = logits;
        eval_batch(c, NULL, ids + done, b, lg, all_logits);
        done += b;
        if (progress) progress(done, n, ud);
    }
    return 0;
}
