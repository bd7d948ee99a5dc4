/*
 * dsa — the offline multi-tool over the engine: info, tokenize, generate, logits, chat, bench.
 *
 * Humans get plain text; with --json every subcommand prints exactly one JSON object on stdout.  Errors are one
 * line on stderr ("dsa: …") and a non-zero exit: 1 for failures, 2 for usage errors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dsa_tool.h"
#ifdef DSA_HAVE_CUDA
#include "../kernels/cuda/cuda.h"
#endif

#ifndef DSA_VERSION
#define DSA_VERSION "dev"
#endif


__attribute__((format(printf, 2, 3), noreturn)) void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("dsa: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- text helpers ---------------------------------------------------------------------------------------- */


void buf_put(buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) die(1, "out of memory");
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

/* JSON strings must be valid UTF-8: invalid bytes (a token that is half a character) become U+FFFD. */
json_t *json_text(const char *s, size_t n) {
    buf b = {0};
    buf_put(&b, "", 0);
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        int len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        int ok = len > 0 && i + len <= n && !(len == 2 && c < 0xC2);
        for (int k = 1; ok && k < len; k++) ok = ((unsigned char)s[i + k] & 0xC0) == 0x80;
        if (ok && len == 3) {
            unsigned c1 = (unsigned char)s[i + 1];
            ok = !(c == 0xE0 && c1 < 0xA0) && !(c == 0xED && c1 >= 0xA0);
        }
        if (ok && len == 4) {
            unsigned c1 = (unsigned char)s[i + 1];
            ok = !(c == 0xF0 && c1 < 0x90) && !(c == 0xF4 && c1 >= 0x90) && c <= 0xF4;
        }
        if (ok) {
            buf_put(&b, s + i, (size_t)len);
            i += (size_t)len;
        } else {
            buf_put(&b, "\xEF\xBF\xBD", 3);
            i++;
        }
    }
    json_t *j = json_stringn(b.p, b.n);
    free(b.p);
    return j;
}

void print_json(json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    if (!s) die(1, "cannot encode JSON output");
    puts(s);
    free(s);
    json_decref(j);
}

static char *read_all(FILE *f) {
    buf b = {0};
    char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) buf_put(&b, tmp, n);
    if (ferror(f)) die(1, "reading standard input: %s", strerror(errno));
    if (!b.p) buf_put(&b, "", 0);
    return b.p;
}

/* PROMPT or "-" (standard input) */
static char *prompt_arg(int argc, char **argv, int i, const char *cmd) {
    if (i >= argc) die(2, "%s: missing text (give it as an argument, or - for standard input)", cmd);
    if (i + 1 < argc) die(2, "%s: unexpected argument '%s' (quote the text)", cmd, argv[i + 1]);
    if (!strcmp(argv[i], "-")) return read_all(stdin);
    char *s = strdup(argv[i]);
    if (!s) die(1, "out of memory");
    return s;
}

/* ---- model loading --------------------------------------------------------------------------------------- */

const char *cache_dir(void) {
    static char path[4096];
    const char *c = getenv("XDG_CACHE_HOME");
    if (c && *c) snprintf(path, sizeof path, "%s/dsachat", c);
    else snprintf(path, sizeof path, "%s/.cache/dsachat", getenv("HOME") ? getenv("HOME") : ".");
    return path;
}

const char *default_model(void) {
    static char path[4096 + 64];
    snprintf(path, sizeof path, "%s/models/%s", cache_dir(), DEFAULT_MODEL_FILE);
    return path;
}

int tty_progress;

static void load_progress(float f, void *ud) {
    if (tty_progress) fprintf(stderr, "\rloading %s … %3d%%%s", (const char *)ud, (int)(f * 100), f >= 1 ? "\r\033[K" : "");
}

static void prefill_progress(int done, int total, void *ud) {
    double *t0 = ud;
    if (!tty_progress || total < 512) return;
    double el = now_s() - *t0;
    fprintf(stderr, "\rprefill %d/%d tokens (%.0f tok/s)%s", done, total, el > 0 ? done / el : 0.0,
            done == total ? "\r\033[K" : "");
}

static dsa_indexer *g_ix;
static char g_ix_path[4096];
const dsa_indexer *tool_indexer(void) { return g_ix; }

/* The model, and unless --dense its DSA indexer: --indexer FILE, else the sidecar beside the model or the one
 * shipped for it.  Without one the tool says so once and attends densely. */
dsa_model *load_model(const opts *o) {
    const char *path = o->model ? o->model : default_model();
    if (access(path, R_OK) != 0) {
        if (o->model) die(1, "cannot read model %s: %s", path, strerror(errno));
        die(1, "default model not found at %s: run scripts/fetch-model.sh (or pass -m FILE)", path);
    }
    if (o->dense && (o->indexer || o->topk_dsa)) die(2, "--dense turns DSA off: it does not go with --indexer or --topk");
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    char err[1024];
    dsa_model *m;
    if (dsa_model_load(path, &m, load_progress, (void *)base, err, sizeof err)) die(1, "%s", err);
    if (!o->dense) {
        char *ip = o->indexer ? strdup(o->indexer) : dsa_indexer_default_path(path);
        if (ip) snprintf(g_ix_path, sizeof g_ix_path, "%s", ip);
        if (ip && dsa_indexer_load(ip, m, &g_ix, err, sizeof err)) {
            if (o->indexer) die(1, "%s", err);
            fprintf(stderr, "dsa: ignoring the default indexer: %s\n", err);
        } else if (!ip) {
            if (o->topk_dsa) die(1, "--topk: no DSA indexer for %s (pass --indexer FILE or train one with 'dsa train-indexer')", base);
            if (tty_progress)
                fprintf(stderr, "dsa: no DSA indexer for %s: attending densely (train one with 'dsa train-indexer')\n", base);
        }
        free(ip);
    }
    return m;
}

dsa_ctx *new_ctx(dsa_model *m, const opts *o) {
    char err[512];
    dsa_ctx *c;
    if (dsa_ctx_new(m, o->n_ctx, o->threads, &c, err, sizeof err)) die(1, "%s", err);
    if (g_ix && dsa_ctx_set_sparse(c, g_ix, DSA_SEL_INDEXER, o->topk_dsa, err, sizeof err)) die(1, "%s", err);
    dsa_ctx_set_dense_layers(c, o->dense_layers);
    if (dsa_ctx_set_backend(c, o->backend, err, sizeof err)) die(1, "%s", err);
    return c;
}

static void encode(const dsa_tokenizer *t, const char *text, int special, dsa_ids *ids) {
    if (dsa_tok_encode(t, text, strlen(text), special, ids)) die(1, "out of memory while tokenizing");
}

/* The prompt's ids: raw text (with BOS when the model asks for it), or one chat turn in the model's template. */
static void prompt_ids(dsa_model *m, const opts *o, const char *text, dsa_ids *ids) {
    const dsa_tokenizer *tok = dsa_model_tok(m);
    if (!o->chat) {
        if (dsa_tok_add_bos(tok) && dsa_tok_bos(tok) >= 0) dsa_ids_push(ids, dsa_tok_bos(tok));
        encode(tok, text, !o->no_special, ids);
        return;
    }
    const char *cerr;
    const dsa_chat_template *ct = dsa_model_chat(m, &cerr);
    if (!ct->kind) die(1, "--chat: %s", cerr);
    dsa_chat_msg msgs[2];
    int n = 0;
    if (o->system) msgs[n++] = (dsa_chat_msg){"system", o->system};
    msgs[n++] = (dsa_chat_msg){"user", text};
    char *p = dsa_chat_render(ct, msgs, n, 1);
    if (!p) die(1, "out of memory");
    encode(tok, p, 1, ids);
    free(p);
}

/* ---- generation ------------------------------------------------------------------------------------------- */

typedef struct {
    dsa_ids out;
    buf text;
    int prompt_tokens;
    double prefill_s, decode_s;
    const char *stop;
} gen_result;

/* Evaluate ids (after the first `keep` already in the cache), then sample up to n tokens. */
static void generate(dsa_model *m, dsa_ctx *c, const opts *o, const dsa_ids *ids, int keep, int stream,
                     gen_result *r) {
    const dsa_hparams *hp = dsa_model_hparams(m);
    const dsa_tokenizer *tok = dsa_model_tok(m);
    char err[512];
    float *logits = malloc((size_t)hp->n_vocab * sizeof *logits);
    dsa_sampler *s = dsa_sampler_new(&o->sp, hp->n_vocab);
    if (!logits || !s) die(1, "out of memory");
    for (size_t i = 0; i < ids->n; i++) dsa_sampler_accept(s, ids->ids[i]);

    memset(r, 0, sizeof *r);
    r->prompt_tokens = (int)ids->n;
    int n_new = (int)ids->n - keep;
    dsa_ctx_truncate(c, keep);
    if (n_new <= 0) die(1, "empty prompt: nothing to evaluate");
    double t0 = now_s();
    if (dsa_ctx_eval(c, ids->ids + keep, n_new, logits, 0, prefill_progress, &t0, err, sizeof err))
        die(1, "%s", err);
    r->prefill_s = now_s() - t0;

    dsa_detok dt = {0};
    char piece[512];
    r->stop = "length";
    double t1 = now_s();
    for (int i = 0; i < o->n_predict; i++) {
        int32_t id = dsa_sampler_sample(s, logits);
        if (dsa_tok_is_eog(tok, id)) {
            r->stop = "eos";
            break;
        }
        dsa_sampler_accept(s, id);
        dsa_ids_push(&r->out, id);
        size_t n = dsa_detok_push(tok, &dt, id, piece, sizeof piece);
        buf_put(&r->text, piece, n);
        if (stream && n) {
            fwrite(piece, 1, n, stdout);
            fflush(stdout);
        }
        if (i + 1 == o->n_predict) break;
        if (dsa_ctx_pos(c) >= dsa_ctx_n_ctx(c)) {
            r->stop = "context";
            break;
        }
        if (dsa_ctx_eval(c, &id, 1, logits, 0, NULL, NULL, err, sizeof err)) die(1, "%s", err);
    }
    size_t n = dsa_detok_flush(&dt, piece, sizeof piece);
    buf_put(&r->text, piece, n);
    if (stream && n) fwrite(piece, 1, n, stdout);
    if (!r->text.p) buf_put(&r->text, "", 0);
    r->decode_s = now_s() - t1;
    free(logits);
    dsa_sampler_free(s);
}

static json_t *stats_json(const gen_result *r) {
    int ng = (int)r->out.n;
    return json_pack("{s:i,s:i,s:f,s:f,s:f,s:f,s:s}", "prompt_tokens", r->prompt_tokens, "gen_tokens", ng,
                     "prefill_s", r->prefill_s, "decode_s", r->decode_s, "prefill_tok_s",
                     r->prefill_s > 0 ? r->prompt_tokens / r->prefill_s : 0.0, "decode_tok_s",
                     r->decode_s > 0 && ng > 1 ? (ng - 1) / r->decode_s : 0.0, "stop", r->stop);
}

/* Fit the prompt into the context, leaving room for n_predict tokens: an error unless --truncate. */
static void fit_prompt(const opts *o, dsa_ids *ids, int n_ctx) {
    int room = n_ctx - (o->n_predict > 0 ? o->n_predict : 0);
    if ((int)ids->n <= room) return;
    if (!o->truncate || room <= 0)
        die(1, "prompt of %zu tokens + %d to generate does not fit the context of %d (use --ctx N, a smaller -n, "
               "or --truncate to keep the end of the prompt)", ids->n, o->n_predict, n_ctx);
    memmove(ids->ids, ids->ids + (ids->n - (size_t)room), (size_t)room * sizeof *ids->ids);
    ids->n = (size_t)room;
}

/* ---- subcommands ---------------------------------------------------------------------------------------- */

static int cmd_tokenize(const opts *o, char *text) {
    dsa_model *m = load_model(o);
    const dsa_tokenizer *tok = dsa_model_tok(m);
    dsa_ids ids = {0};
    encode(tok, text, !o->no_special, &ids);
    if (o->json) {
        json_t *a = json_array();
        for (size_t i = 0; i < ids.n; i++) json_array_append_new(a, json_integer(ids.ids[i]));
        print_json(json_pack("{s:o}", "ids", a));
    } else {
        for (size_t i = 0; i < ids.n; i++) {
            size_t n;
            const char *p = dsa_tok_piece(tok, ids.ids[i], &n);
            json_t *s = json_text(p, n);
            char *q = json_dumps(s, JSON_ENCODE_ANY);
            printf("%6d %s\n", ids.ids[i], q ? q : "?");
            free(q);
            json_decref(s);
        }
    }
    dsa_ids_free(&ids);
    dsa_model_free(m);
    return 0;
}

static int cmd_generate(const opts *o, char *text) {
    dsa_model *m = load_model(o);
    dsa_ctx *c = new_ctx(m, o);
    dsa_ids ids = {0};
    prompt_ids(m, o, text, &ids);
    fit_prompt(o, &ids, dsa_ctx_n_ctx(c));
    gen_result r;
    generate(m, c, o, &ids, 0, !o->json, &r);
    if (o->json) {
        json_t *a = json_array();
        for (size_t i = 0; i < r.out.n; i++) json_array_append_new(a, json_integer(r.out.ids[i]));
        print_json(json_pack("{s:o,s:o,s:o}", "ids", a, "text", json_text(r.text.p, r.text.n), "stats",
                             stats_json(&r)));
    } else {
        putchar('\n');
        if (isatty(2))
            fprintf(stderr, "[%d prompt tokens, %.1f tok/s prefill; %zu generated, %.1f tok/s decode; stop: %s]\n",
                    r.prompt_tokens, r.prefill_s > 0 ? r.prompt_tokens / r.prefill_s : 0.0, r.out.n,
                    r.decode_s > 0 && r.out.n > 1 ? (r.out.n - 1) / r.decode_s : 0.0, r.stop);
    }
    dsa_ids_free(&r.out);
    free(r.text.p);
    dsa_ids_free(&ids);
    dsa_ctx_free(c);
    dsa_model_free(m);
    return 0;
}

static int cmd_logits(const opts *o, char *text) {
    dsa_model *m = load_model(o);
    dsa_ctx *c = new_ctx(m, o);
    const dsa_hparams *hp = dsa_model_hparams(m);
    const dsa_tokenizer *tok = dsa_model_tok(m);
    dsa_ids ids = {0};
    prompt_ids(m, o, text, &ids);
    opts o2 = *o;
    o2.n_predict = 0;
    fit_prompt(&o2, &ids, dsa_ctx_n_ctx(c));
    float *lg = malloc((size_t)hp->n_vocab * sizeof *lg);
    char err[512];
    double t0 = now_s();
    if (!lg) die(1, "out of memory");
    if (dsa_ctx_eval(c, ids.ids, (int)ids.n, lg, 0, prefill_progress, &t0, err, sizeof err)) die(1, "%s", err);
    int top = o->top > 0 ? o->top : 10;
    if (top > hp->n_vocab) top = hp->n_vocab;
    json_t *a = json_array();
    for (int k = 0; k < top; k++) {
        int best = -1;
        for (int i = 0; i < hp->n_vocab; i++)
            if (best < 0 || lg[i] > lg[best]) best = i;
        size_t n;
        const char *p = dsa_tok_piece(tok, best, &n);
        if (o->json)
            json_array_append_new(a, json_pack("{s:i,s:f,s:o}", "id", best, "logit", (double)lg[best], "text",
                                               json_text(p, n)));
        else {
            json_t *s = json_text(p, n);
            char *q = json_dumps(s, JSON_ENCODE_ANY);
            printf("%6d %10.4f %s\n", best, lg[best], q ? q : "?");
            free(q);
            json_decref(s);
        }
        lg[best] = -INFINITY;
    }
    if (o->json) print_json(json_pack("{s:o,s:i}", "top", a, "prompt_tokens", (int)ids.n));
    else json_decref(a);
    free(lg);
    dsa_ids_free(&ids);
    dsa_ctx_free(c);
    dsa_model_free(m);
    return 0;
}

static int cmd_info(const opts *o) {
    dsa_model *m = load_model(o);
    const dsa_hparams *hp = dsa_model_hparams(m);
    const gguf_file *g = dsa_model_gguf(m);
    const dsa_tokenizer *tok = dsa_model_tok(m);
    const char *cerr;
    const dsa_chat_template *ct = dsa_model_chat(m, &cerr);
    uint64_t counts[DSA_TYPE_COUNT] = {0}, params = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor *t = &g->tensors[i];
        counts[t->type]++;
        params += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
    }
    dsa_str name = {"", 0};
    gguf_get_str(g, "general.name", &name);
    json_t *types = json_object();
    for (int t = 0; t < DSA_TYPE_COUNT; t++)
        if (counts[t]) json_object_set_new(types, dsa_type_name(t), json_integer((json_int_t)counts[t]));
    json_t *j = json_pack(
        "{s:s,s:o,s:s,s:i,s:I,s:I,s:I,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:f,s:f,s:b,s:b,s:o,s:i,s:i,s:i,s:s,s:s}",
        "path", dsa_model_path(m), "name", json_text(name.ptr, name.len), "arch",
        hp->arch == DSA_ARCH_QWEN2 ? "qwen2" : "llama", "gguf_version", (int)g->version, "file_bytes",
        (json_int_t)g->size, "tensors", (json_int_t)g->n_tensors, "params", (json_int_t)params, "n_layer",
        hp->n_layer, "n_embd", hp->n_embd, "n_ff", hp->n_ff, "n_head", hp->n_head, "n_head_kv", hp->n_head_kv,
        "head_dim", hp->head_dim, "n_vocab", hp->n_vocab, "n_ctx_train", hp->n_ctx_train, "rope_dim", hp->rope_dim,
        "rope_base", (double)hp->rope_base, "norm_eps", (double)hp->norm_eps, "rope_neox", hp->rope_neox,
        "tied_output", hp->tied_output, "tensor_types", types, "bos", dsa_tok_bos(tok), "eos", dsa_tok_eos(tok),
        "add_bos", dsa_tok_add_bos(tok), "chat_template", ct->kind ? dsa_chat_kind_name(ct->kind) : "none",
        "cpu", dsa_cpu_name());
    char cuda[256] = "not built (nvcc was not found at build time)";
#ifdef DSA_HAVE_CUDA
    {
        char dev[128] = "", why[128] = "";
        size_t mem = 0;
        int nd = dsa_cuda_devices(dev, sizeof dev, &mem, why, sizeof why);
        if (nd > 0) snprintf(cuda, sizeof cuda, "%d device(s): %s, %.0f GiB", nd, dev, mem / 1073741824.0);
        else snprintf(cuda, sizeof cuda, "built, no usable device (%s)", why);
    }
#endif
    json_object_set_new(j, "cuda", json_string(cuda));
    char dsa_line[4600];
    if (g_ix) {
        json_object_set_new(j, "dsa", json_pack("{s:s,s:i,s:i,s:i,s:i,s:s,s:s}", "indexer", g_ix_path, "heads",
                                                g_ix->hp.n_head, "dim", g_ix->hp.head_dim, "rope_dims", g_ix->hp.rope_dim,
                                                "top_k", o->topk_dsa > 0 ? o->topk_dsa : g_ix->hp.top_k, "fingerprint",
                                                dsa_model_fingerprint(m), "provenance",
                                                g_ix->provenance ? g_ix->provenance : ""));
        snprintf(dsa_line, sizeof dsa_line, "on, k %d: %s (%d heads × %d dims, RoPE on %d)",
                 o->topk_dsa > 0 ? o->topk_dsa : g_ix->hp.top_k, g_ix_path, g_ix->hp.n_head, g_ix->hp.head_dim,
                 g_ix->hp.rope_dim);
    } else {
        json_object_set_new(j, "dsa", json_null());
        snprintf(dsa_line, sizeof dsa_line, "%s", o->dense ? "off (--dense)" : "off: no indexer for this model");
    }
    if (o->json) {
        print_json(j);
    } else {
        printf("model      %s\n", dsa_model_path(m));
        printf("name       %.*s\n", (int)name.len, name.ptr);
        printf("arch       %s, GGUF v%u, %.1f MB, %llu tensors, %.1fM parameters\n",
               hp->arch == DSA_ARCH_QWEN2 ? "qwen2" : "llama", g->version, g->size / 1e6,
               (unsigned long long)g->n_tensors, params / 1e6);
        printf("layers     %d, embd %d, ff %d, heads %d (kv %d) × %d\n", hp->n_layer, hp->n_embd, hp->n_ff,
               hp->n_head, hp->n_head_kv, hp->head_dim);
        printf("rope       %d dims, base %g, %s pairs\n", hp->rope_dim, hp->rope_base,
               hp->rope_neox ? "neox (i, i+d/2)" : "adjacent");
        printf("context    %d (trained)\n", hp->n_ctx_train);
        printf("vocab      %d, bos %d, eos %d%s\n", hp->n_vocab, dsa_tok_bos(tok), dsa_tok_eos(tok),
               dsa_tok_add_bos(tok) ? ", adds bos" : "");
        printf("chat       %s\n", ct->kind ? dsa_chat_kind_name(ct->kind) : cerr);
        printf("output     %s\n", hp->tied_output ? "tied to token_embd" : "separate");
        printf("types     ");
        for (int t = 0; t < DSA_TYPE_COUNT; t++)
            if (counts[t]) printf(" %s×%llu", dsa_type_name(t), (unsigned long long)counts[t]);
        printf("\ncpu        %s\n", dsa_cpu_name());
        printf("cuda       %s\n", cuda);
        printf("dsa        %s\n", dsa_line);
        printf("fingerprint %s\n", dsa_model_fingerprint(m));
        json_decref(j);
    }
    dsa_model_free(m);
    return 0;
}

/* Interactive multi-turn chat: the conversation is re-rendered each turn and only the new tokens are evaluated
 * (the KV cache keeps the common prefix). */
static int cmd_chat(const opts *o) {
    dsa_model *m = load_model(o);
    const dsa_tokenizer *tok = dsa_model_tok(m);
    const char *cerr;
    const dsa_chat_template *ct = dsa_model_chat(m, &cerr);
    if (!ct->kind) die(1, "chat: %s", cerr);
    dsa_ctx *c = new_ctx(m, o);
    int cap = 64, n = 0;
    dsa_chat_msg *msgs = malloc((size_t)cap * sizeof *msgs);
    if (!msgs) die(1, "out of memory");
    if (o->system) msgs[n++] = (dsa_chat_msg){"system", strdup(o->system)};
    dsa_ids cached = {0};
    int tty = isatty(0) && isatty(1);
    if (tty)
        fprintf(stderr, "dsachat — %s. Type a message; /reset starts over, /quit (or Ctrl-D) leaves.\n",
                strrchr(dsa_model_path(m), '/') ? strrchr(dsa_model_path(m), '/') + 1 : dsa_model_path(m));
    char *line = NULL;
    size_t lcap = 0;
    for (;;) {
        if (tty) fputs("\n\033[1myou>\033[0m ", stdout), fflush(stdout);
        ssize_t len = getline(&line, &lcap, stdin);
        if (len < 0) break;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len) continue;
        if (!strcmp(line, "/quit") || !strcmp(line, "/exit")) break;
        if (!strcmp(line, "/reset")) {
            for (int i = o->system ? 1 : 0; i < n; i++) free((char *)msgs[i].content);
            n = o->system ? 1 : 0;
            cached.n = 0;
            dsa_ctx_truncate(c, 0);
            fputs("(conversation cleared)\n", stderr);
            continue;
        }
        if (n + 2 > cap) {
            cap *= 2;
            dsa_chat_msg *q = realloc(msgs, (size_t)cap * sizeof *msgs);
            if (!q) die(1, "out of memory");
            msgs = q;
        }
        msgs[n++] = (dsa_chat_msg){"user", strdup(line)};
        char *p = dsa_chat_render(ct, msgs, n, 1);
        if (!p) die(1, "out of memory");
        dsa_ids ids = {0};
        encode(tok, p, 1, &ids);
        free(p);
        if ((int)ids.n + o->n_predict > dsa_ctx_n_ctx(c)) {
            fprintf(stderr, "(the conversation no longer fits the context of %d tokens: /reset to start over)\n",
                    dsa_ctx_n_ctx(c));
            free((char *)msgs[--n].content);
            dsa_ids_free(&ids);
            continue;
        }
        size_t keep = 0;
        while (keep < cached.n && keep < ids.n && keep < (size_t)dsa_ctx_pos(c) && cached.ids[keep] == ids.ids[keep])
            keep++;
        if (keep == ids.n) keep--; /* always evaluate at least the last token to get logits */
        if (tty) fputs("\033[1mbot>\033[0m ", stdout);
        gen_result r;
        generate(m, c, o, &ids, (int)keep, 1, &r);
        putchar('\n');
        fflush(stdout);
        msgs[n++] = (dsa_chat_msg){"assistant", strdup(r.text.p)};
        /* what the cache now holds: the prompt plus the generated ids that were evaluated */
        cached.n = 0;
        for (size_t i = 0; i < ids.n; i++) dsa_ids_push(&cached, ids.ids[i]);
        for (size_t i = 0; i < r.out.n && (int)cached.n < dsa_ctx_pos(c); i++) dsa_ids_push(&cached, r.out.ids[i]);
        if (tty)
            fprintf(stderr, "\033[2m[%zu tokens, %.1f tok/s]\033[0m\n", r.out.n,
                    r.decode_s > 0 && r.out.n > 1 ? (r.out.n - 1) / r.decode_s : 0.0);
        dsa_ids_free(&r.out);
        free(r.text.p);
        dsa_ids_free(&ids);
    }
    free(line);
    for (int i = 0; i < n; i++) free((char *)msgs[i].content);
    free(msgs);
    dsa_ids_free(&cached);
    dsa_ctx_free(c);
    dsa_model_free(m);
    return 0;
}

/* Decode speed at long contexts, dense vs DSA in one run: the cache is filled once (random tokens, DSA prefill),
 * then the same gen_tokens are decoded after it twice, attending densely and sparsely.  The indexer's share is the
 * time its projection, scores and top-k take out of the DSA decode. */
static int bench_contexts(const opts *o) {
    int ctxs[16], nc = 0;
    for (const char *p = o->contexts; *p && nc < 16;) {
        char *e;
        long v = strtol(p, &e, 10);
        if (e == p || v < 16 || v > (1 << 22)) die(2, "--contexts: '%s' is not a list of sizes", o->contexts);
        ctxs[nc++] = (int)v;
        p = *e == ',' ? e + 1 : e;
        if (*e && *e != ',') die(2, "--contexts: '%s' is not a comma-separated list", o->contexts);
    }
    dsa_model *m = load_model(o);
    const dsa_indexer *ix = tool_indexer();
    if (!ix) die(1, "bench --contexts compares dense with DSA and needs an indexer (--indexer FILE)");
    const dsa_hparams *hp = dsa_model_hparams(m);
    int B = o->batch;
    float *lg = malloc((size_t)B * hp->n_vocab * sizeof *lg);
    dsa_ctx **cs = calloc((size_t)B, sizeof *cs);
    int32_t *step = malloc((size_t)B * sizeof *step);
    if (!lg || !cs || !step) die(1, "out of memory");
    json_t *rows = json_array();
    char err[512];
    int nthreads = 0;
    const char *backend = "cpu";
    for (int ci = 0; ci < nc; ci++) {
        int C = ctxs[ci];
        opts o2 = *o;
        o2.n_ctx = C + o->gen_tokens + 1;
        for (int b = 0; b < B; b++) cs[b] = new_ctx(m, &o2);
        dsa_ctx *c = cs[0];
        int k = dsa_ctx_topk(c);
        nthreads = dsa_pool_size(dsa_ctx_pool(c));
        backend = dsa_ctx_backend_name(c);
        int gpu = !strcmp(backend, "cuda");
        int32_t *ids = malloc((size_t)C * sizeof *ids);
        if (!ids) die(1, "out of memory");
        uint64_t x = 42;
        for (int i = 0; i < C; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            ids[i] = (int32_t)((x >> 33) % (uint64_t)hp->n_vocab);
        }
        /* prefill: every sequence of the batch gets the same prompt; the first one is timed (in both modes on a
         * GPU, where it is cheap; the CPU times the DSA prefill only) */
        double pre_s[2] = {0, 0};
        for (int mode = gpu ? 0 : 1; mode < 2; mode++) {
            if (dsa_ctx_set_sparse(c, ix, mode ? DSA_SEL_INDEXER : DSA_SEL_DENSE, k, err, sizeof err)) die(1, "%s", err);
            dsa_ctx_truncate(c, 0);
            if (gpu && dsa_ctx_eval(c, ids, C < 64 ? C : 64, lg, 0, NULL, NULL, err, sizeof err)) die(1, "%s", err);
            dsa_ctx_truncate(c, 0);
            double t0 = now_s();
            if (dsa_ctx_eval(c, ids, C, lg, 0, NULL, NULL, err, sizeof err)) die(1, "%s", err);
            pre_s[mode] = now_s() - t0;
        }
        for (int b = 1; b < B; b++)
            if (dsa_ctx_eval(cs[b], ids, C, lg, 0, NULL, NULL, err, sizeof err)) die(1, "%s", err);
        double tok_s[2] = {0, 0}, share = 0;
        for (int r = 0; r < o->reps; r++)
            for (int mode = 0; mode < 2; mode++) {
                for (int b = 0; b < B; b++) {
                    if (dsa_ctx_set_sparse(cs[b], ix, mode ? DSA_SEL_INDEXER : DSA_SEL_DENSE, k, err, sizeof err))
                        die(1, "%s", err);
                    dsa_ctx_truncate(cs[b], C);
                    step[b] = ids[C - 1];
                }
                dsa_ctx_reset_timers(c);
                double t0 = now_s();
                for (int i = 0; i < o->gen_tokens; i++) {
                    if (dsa_ctx_eval_batch(cs, step, B, lg, err, sizeof err)) die(1, "%s", err);
                    for (int b = 0; b < B; b++) {
                        const float *l = lg + (size_t)b * hp->n_vocab;
                        int best = 0;
                        for (int v = 1; v < hp->n_vocab; v++) best = l[v] > l[best] ? v : best;
                        step[b] = best;
                    }
                }
                double el = now_s() - t0, ts = (double)o->gen_tokens * B / el;
                if (ts > tok_s[mode]) tok_s[mode] = ts; /* best of reps: the machine is shared */
                if (mode) share = dsa_ctx_indexer_seconds(c) / el;
            }
        json_t *row = json_pack("{s:i,s:i,s:i,s:f,s:f,s:f,s:f}", "context", C, "k", k, "batch", B, "dense_tok_s",
                                tok_s[0], "dsa_tok_s", tok_s[1], "speedup", tok_s[1] / tok_s[0], "indexer_share", share);
        if (pre_s[0] > 0) json_object_set_new(row, "dense_prefill_tok_s", json_real(C / pre_s[0]));
        json_object_set_new(row, "dsa_prefill_tok_s", json_real(C / pre_s[1]));
        json_array_append_new(rows, row);
        if (!o->json) {
            printf("context %5d, batch %d: decode dense %.1f tok/s, DSA (k %d) %.1f tok/s, %.2fx", C, B, tok_s[0], k,
                   tok_s[1], tok_s[1] / tok_s[0]);
            if (!gpu) printf("; indexer %.0f%% of DSA decode", share * 100);
            if (pre_s[0] > 0) printf("; prefill dense %.0f tok/s", C / pre_s[0]);
            printf("; prefill DSA %.0f tok/s\n", C / pre_s[1]);
        }
        free(ids);
        for (int b = 0; b < B; b++) dsa_ctx_free(cs[b]);
    }
    if (o->json) {
        json_t *j = json_pack("{s:i,s:i,s:s,s:s,s:o}", "threads", nthreads, "gen_tokens", o->gen_tokens, "cpu",
                              dsa_cpu_name(), "backend", backend, "contexts", rows);
        json_object_set_new(j, "indexer", json_pack("{s:i,s:i,s:i}", "heads", ix->hp.n_head, "dim", ix->hp.head_dim,
                                                   "rope_dims", ix->hp.rope_dim));
        print_json(j);
    } else {
        json_decref(rows);
    }
    free(lg);
    free(cs);
    free(step);
    dsa_model_free(m);
    return 0;
}

/* Prefill a prompt of random tokens and decode greedily: the numbers bench/vs_llamacpp.py compares. */
static int cmd_bench(const opts *o) {
    if (o->contexts) return bench_contexts(o);
    dsa_model *m = load_model(o);
    const dsa_hparams *hp = dsa_model_hparams(m);
    opts o2 = *o;
    if (o2.n_ctx <= 0) o2.n_ctx = o->prompt_tokens + o->gen_tokens + 16;
    dsa_ctx *c = new_ctx(m, &o2);
    float *lg = malloc((size_t)hp->n_vocab * sizeof *lg);
    int32_t *ids = malloc((size_t)(o->prompt_tokens > 0 ? o->prompt_tokens : 1) * sizeof *ids);
    if (!lg || !ids) die(1, "out of memory");
    uint64_t x = 42;
    for (int i = 0; i < o->prompt_tokens; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((x >> 33) % (uint64_t)hp->n_vocab);
    }
    char err[512];
    json_t *runs = json_array();
    double best_p = 0, best_d = 0, sum_p = 0, sum_d = 0;
    for (int r = 0; r < o->reps; r++) {
        dsa_ctx_truncate(c, 0);
        double t0 = now_s();
        if (o->prompt_tokens > 0 && dsa_ctx_eval(c, ids, o->prompt_tokens, lg, 0, NULL, NULL, err, sizeof err))
            die(1, "%s", err);
        double t1 = now_s();
        int32_t id = ids[0];
        dsa_ctx_truncate(c, 0);
        if (dsa_ctx_eval(c, &id, 1, lg, 0, NULL, NULL, err, sizeof err)) die(1, "%s", err);
        double t2 = now_s();
        for (int i = 0; i < o->gen_tokens; i++) {
            int best = 0;
            for (int k = 1; k < hp->n_vocab; k++)
                if (lg[k] > lg[best]) best = k;
            id = best;
            if (dsa_ctx_eval(c, &id, 1, lg, 0, NULL, NULL, err, sizeof err)) die(1, "%s", err);
        }
        double t3 = now_s();
        double pt = o->prompt_tokens > 0 ? o->prompt_tokens / (t1 - t0) : 0, dt = o->gen_tokens / (t3 - t2);
        sum_p += pt;
        sum_d += dt;
        if (pt > best_p) best_p = pt;
        if (dt > best_d) best_d = dt;
        json_array_append_new(runs, json_pack("{s:f,s:f}", "prefill_tok_s", pt, "decode_tok_s", dt));
        if (!o->json)
            printf("run %d: prefill %d tokens %.1f tok/s, decode %d tokens %.1f tok/s\n", r + 1, o->prompt_tokens, pt,
                   o->gen_tokens, dt);
    }
    if (o->json)
        print_json(json_pack("{s:i,s:i,s:i,s:s,s:f,s:f,s:o}", "threads", dsa_pool_size(dsa_ctx_pool(c)),
                             "prompt_tokens", o->prompt_tokens, "gen_tokens", o->gen_tokens, "cpu", dsa_cpu_name(),
                             "prefill_tok_s", sum_p / o->reps, "decode_tok_s", sum_d / o->reps, "runs", runs));
    else
        json_decref(runs);
    free(lg);
    free(ids);
    dsa_ctx_free(c);
    dsa_model_free(m);
    return 0;
}

/* ---- command line ----------------------------------------------------------------------------------------- */

static void usage(FILE *f) {
    fputs("usage: dsa [options] COMMAND [ARGS]\n"
          "\n"
          "commands:\n"
          "  info                 show the model's architecture, tokenizer and tensor types\n"
          "  tokenize TEXT|-      print the token ids of TEXT (- reads standard input)\n"
          "  generate PROMPT|-    continue PROMPT (or answer it as a chat turn with --chat)\n"
          "  logits PROMPT|-      print the most likely next tokens (--top N)\n"
          "  chat                 interactive multi-turn chat in the terminal\n"
          "  bench                prefill and decode speed (--prompt-tokens, --gen-tokens, --reps)\n"
          "  slice-model          -m MODEL --layers N -o OUT.gguf [--indexer SIDECAR --indexer-out OUT.dsa.gguf]:\n"
          "                       the model's first N layers, byte for byte (a small file for GPU test machines)\n"
          "  synth-model          --like MODEL [--layers N] [--seed S] -o OUT.gguf [--indexer-out OUT.dsa.gguf]:\n"
          "                       MODEL's shape and tensor types, seeded random weights (any depth)\n"
          "\n"
          "options:\n"
          "  -m, --model FILE     GGUF model (default: the cached SmolLM2-135M-Instruct)\n"
          "      --indexer FILE   DSA indexer sidecar (default: <model>.dsa.gguf, else the shipped one)\n"
          "      --dense          dense attention (DSA off)\n"
          "      --topk K         DSA top-k (default: the sidecar's)\n"
          "  -n N                 tokens to generate (default 256)\n"
          "      --temp T         temperature, 0 = greedy (default 0.7)\n"
          "      --top-k K        sample from the K most likely tokens (default 40, 0 = all)\n"
          "      --top-p P        nucleus sampling (default 0.95)\n"
          "      --min-p P        drop tokens below P × the best one's probability (default 0.05)\n"
          "      --repeat-penalty R  penalise the last 64 tokens (default 1.1, 1 = off)\n"
          "      --seed S         random seed (default fixed: same seed, same text)\n"
          "      --chat           wrap the prompt in the model's chat template\n"
          "      --system TEXT    system prompt for --chat and chat (default: the template's own)\n"
          "      --ctx N          context size in tokens (default: the model's)\n"
          "      --truncate       keep the end of a prompt that does not fit instead of failing\n"
          "      --no-special     treat special-token text like <|im_start|> as plain text\n"
          "  -t, --threads N      threads (default: all cores)\n"
          "  --backend B          auto (CUDA when a GPU is usable), cpu or cuda\n"
          "      --top N          logits: how many (default 10)\n"
          "      --json           print one JSON object\n"
          "  -h, --help           this help;  -V, --version  the version\n",
          f);
}

int parse_int(const char *s, const char *what, int lo, int hi) {
    char *e;
    errno = 0;
    long v = strtol(s, &e, 10);
    if (errno || *e || e == s || v < lo || v > hi) die(2, "%s: '%s' is not an integer in [%d, %d]", what, s, lo, hi);
    return (int)v;
}

float parse_float(const char *s, const char *what, float lo, float hi) {
    char *e;
    errno = 0;
    float v = strtof(s, &e);
    if (errno || *e || e == s || !(v >= lo && v <= hi)) die(2, "%s: '%s' is not a number in [%g, %g]", what, s, lo, hi);
    return v;
}

int main(int argc, char **argv) {
    opts o = {0};
    o.n_predict = 256;
    o.prompt_tokens = 512;
    o.gen_tokens = 128;
    o.reps = 1;
    o.batch = 1;
    dsa_sampler_defaults(&o.sp);
    enum { O_INDEXER = 256, O_DENSE, O_TOPK, O_TEMP, O_SEED, O_CHAT, O_SYSTEM, O_JSON, O_TOP, O_CTX, O_TOPK_S, O_TOPP,
           O_MINP, O_REP, O_NOSPECIAL, O_TRUNC, O_PTOK, O_GTOK, O_REPS, O_CORPUS, O_HELDOUT, O_CKPT, O_INIT, O_LOG,
           O_PLOT, O_HEADS, O_DIM, O_ROPED, O_SEQLEN, O_ROWS, O_SPARSE, O_CKEVERY, O_HEVERY, O_TOKENS, O_MINUTES,
           O_LR, O_DLAYERS, O_CONTEXTS, O_KS, O_TEXTS, O_NTEXTS, O_PASSKEY, O_REPORT, O_LAYERS, O_LIKE, O_IXOUT,
           O_BACKEND, O_BATCH };
    static const struct option lo[] = {
        {"model", required_argument, 0, 'm'},    {"indexer", required_argument, 0, O_INDEXER},
        {"dense", no_argument, 0, O_DENSE},       {"topk", required_argument, 0, O_TOPK},
        {"temp", required_argument, 0, O_TEMP},  {"seed", required_argument, 0, O_SEED},
        {"chat", no_argument, 0, O_CHAT},         {"system", required_argument, 0, O_SYSTEM},
        {"threads", required_argument, 0, 't'},  {"json", no_argument, 0, O_JSON},
        {"backend", required_argument, 0, O_BACKEND}, {"batch", required_argument, 0, O_BATCH},
        {"top", required_argument, 0, O_TOP},    {"ctx", required_argument, 0, O_CTX},
        {"top-k", required_argument, 0, O_TOPK_S}, {"top-p", required_argument, 0, O_TOPP},
        {"min-p", required_argument, 0, O_MINP}, {"repeat-penalty", required_argument, 0, O_REP},
        {"no-special", no_argument, 0, O_NOSPECIAL}, {"truncate", no_argument, 0, O_TRUNC},
        {"prompt-tokens", required_argument, 0, O_PTOK}, {"gen-tokens", required_argument, 0, O_GTOK},
        {"reps", required_argument, 0, O_REPS},  {"help", no_argument, 0, 'h'},
        {"corpus", required_argument, 0, O_CORPUS}, {"heldout", required_argument, 0, O_HELDOUT},
        {"out", required_argument, 0, 'o'},      {"checkpoint", required_argument, 0, O_CKPT},
        {"init", required_argument, 0, O_INIT},  {"log", required_argument, 0, O_LOG},
        {"plot", required_argument, 0, O_PLOT},  {"heads", required_argument, 0, O_HEADS},
        {"dim", required_argument, 0, O_DIM},    {"rope-dims", required_argument, 0, O_ROPED},
        {"seq-len", required_argument, 0, O_SEQLEN}, {"rows", required_argument, 0, O_ROWS},
        {"sparse-stage", no_argument, 0, O_SPARSE}, {"checkpoint-every", required_argument, 0, O_CKEVERY},
        {"heldout-every", required_argument, 0, O_HEVERY}, {"tokens", required_argument, 0, O_TOKENS},
        {"minutes", required_argument, 0, O_MINUTES}, {"lr", required_argument, 0, O_LR},
        {"dense-layers", required_argument, 0, O_DLAYERS},
        {"contexts", required_argument, 0, O_CONTEXTS}, {"ks", required_argument, 0, O_KS},
        {"texts", required_argument, 0, O_TEXTS}, {"n-texts", required_argument, 0, O_NTEXTS},
        {"passkey-trials", required_argument, 0, O_PASSKEY}, {"report", required_argument, 0, O_REPORT},
        {"layers", required_argument, 0, O_LAYERS}, {"like", required_argument, 0, O_LIKE},
        {"indexer-out", required_argument, 0, O_IXOUT},
        {"version", no_argument, 0, 'V'},        {0, 0, 0, 0}};
    /* options may come before or after the command (GNU getopt permutes) */
    int ch;
    opterr = 0;
    o.argc = argc;
    o.argv = argv;
    o.heads = 4, o.dim = 64, o.rope_dims = 32, o.seq_len = 2048, o.rows = 512, o.lr = 1e-3;
    o.dense_layers = -1;
    o.ckpt_every = 10, o.heldout_every = 25, o.n_texts = 4, o.passkey_trials = 5;
    while ((ch = getopt_long(argc, argv, "m:n:t:o:hV", lo, NULL)) != -1) {
        switch (ch) {
        case 'o': o.out = optarg; break;
        case O_CORPUS: o.corpus = optarg; break;
        case O_HELDOUT: o.heldout = optarg; break;
        case O_CKPT: o.checkpoint = optarg; break;
        case O_INIT: o.init = optarg; break;
        case O_LOG: o.log = optarg; break;
        case O_PLOT: o.plot = optarg; break;
        case O_HEADS: o.heads = parse_int(optarg, "--heads", 1, 64); break;
        case O_DIM: o.dim = parse_int(optarg, "--dim", 8, 256); break;
        case O_ROPED: o.rope_dims = parse_int(optarg, "--rope-dims", 0, 256); break;
        case O_SEQLEN: o.seq_len = parse_int(optarg, "--seq-len", 16, 65536); break;
        case O_ROWS: o.rows = parse_int(optarg, "--rows", 1, 65536); break;
        case O_SPARSE: o.sparse_stage = 1; break;
        case O_CKEVERY: o.ckpt_every = parse_int(optarg, "--checkpoint-every", 0, 1 << 30); break;
        case O_HEVERY: o.heldout_every = parse_int(optarg, "--heldout-every", 0, 1 << 30); break;
        case O_TOKENS: o.max_tokens = parse_int(optarg, "--tokens", 0, 2000000000); break;
        case O_MINUTES: o.minutes = parse_float(optarg, "--minutes", 0, 1e6f); break;
        case O_LR: o.lr = parse_float(optarg, "--lr", 0, 1); break;
        case O_DLAYERS: o.dense_layers = parse_int(optarg, "--dense-layers", 0, 4096); break;
        case O_CONTEXTS: o.contexts = optarg; break;
        case O_KS: o.ks = optarg; break;
        case O_TEXTS: o.texts = optarg; break;
        case O_NTEXTS: o.n_texts = parse_int(optarg, "--n-texts", 1, 10000); break;
        case O_PASSKEY: o.passkey_trials = parse_int(optarg, "--passkey-trials", 0, 1000); break;
        case O_REPORT: o.report = optarg; break;
        case O_LAYERS: o.layers = parse_int(optarg, "--layers", 1, 4096); break;
        case O_LIKE: o.like = optarg; break;
        case O_IXOUT: o.indexer_out = optarg; break;
        case 'm': o.model = optarg; break;
        case 'n': o.n_predict = parse_int(optarg, "-n", 0, 1 << 22); break;
        case 't': o.threads = parse_int(optarg, "--threads", 1, 256); break;
        case O_BACKEND:
            if (dsa_backend_parse(optarg, &o.backend)) die(2, "--backend: '%s' is not auto, cpu or cuda", optarg);
            break;
        case O_BATCH: o.batch = parse_int(optarg, "--batch", 1, 256); break;
        case O_INDEXER: o.indexer = optarg; break;
        case O_DENSE: o.dense = 1; break;
        case O_TOPK: o.topk_dsa = parse_int(optarg, "--topk", 1, 1 << 22); break;
        case O_TEMP: o.sp.temp = parse_float(optarg, "--temp", 0, 100); break;
        case O_SEED: {
            char *e;
            errno = 0;
            o.sp.seed = strtoull(optarg, &e, 10);
            if (errno || *e || e == optarg) die(2, "--seed: '%s' is not a non-negative integer", optarg);
            break;
        }
        case O_CHAT: o.chat = 1; break;
        case O_SYSTEM: o.system = optarg; break;
        case O_JSON: o.json = 1; break;
        case O_TOP: o.top = parse_int(optarg, "--top", 1, 1 << 20); break;
        case O_CTX: o.n_ctx = parse_int(optarg, "--ctx", 16, 1 << 22); break;
        case O_TOPK_S: o.sp.top_k = parse_int(optarg, "--top-k", 0, 1 << 22); break;
        case O_TOPP: o.sp.top_p = parse_float(optarg, "--top-p", 0, 1); break;
        case O_MINP: o.sp.min_p = parse_float(optarg, "--min-p", 0, 1); break;
        case O_REP: o.sp.repeat_penalty = parse_float(optarg, "--repeat-penalty", 0.01f, 100); break;
        case O_NOSPECIAL: o.no_special = 1; break;
        case O_TRUNC: o.truncate = 1; break;
        case O_PTOK: o.prompt_tokens = parse_int(optarg, "--prompt-tokens", 0, 1 << 20); break;
        case O_GTOK: o.gen_tokens = parse_int(optarg, "--gen-tokens", 1, 1 << 20); break;
        case O_REPS: o.reps = parse_int(optarg, "--reps", 1, 1000); break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("dsa %s\n", DSA_VERSION); return 0;
        case '?':
        default:
            if (optopt && optopt < 256) die(2, "option -%c: unknown or missing its argument (see dsa --help)", optopt);
            die(2, "option %s: unknown or missing its argument (see dsa --help)", argv[optind - 1]);
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    tty_progress = isatty(2);
    const char *cmd = argv[optind];
    if (!strcmp(cmd, "train-indexer") && !getenv("OPENBLAS_CORETYPE")) {
        /* OpenBLAS picks its kernels when it loads, from the CPU model; on CPUs newer than it knows (or behind a
         * hypervisor that hides the model) it falls back to SSE3 code several times slower.  Tell it what we
         * measured ourselves and start again. */
        dsa_kernels_init(0);
        const char *core = !strcmp(dsa_cpu_name(), "avx512") ? "SkylakeX" : !strcmp(dsa_cpu_name(), "avx2") ? "Haswell" : NULL;
        if (core && setenv("OPENBLAS_CORETYPE", core, 1) == 0) execv("/proc/self/exe", argv);
    }
    if (!strcmp(cmd, "info")) return cmd_info(&o);
    int (*with_text)(const opts *, char *) = !strcmp(cmd, "tokenize") ? cmd_tokenize
                                            : !strcmp(cmd, "generate") ? cmd_generate
                                            : !strcmp(cmd, "logits")   ? cmd_logits
                                                                       : NULL;
    if (with_text) {
        char *text = prompt_arg(argc, argv, optind + 1, cmd);
        int rc = with_text(&o, text);
        free(text);
        return rc;
    }
    if (!strcmp(cmd, "chat")) return cmd_chat(&o);
    if (!strcmp(cmd, "bench")) return cmd_bench(&o);
    if (!strcmp(cmd, "train-indexer")) return cmd_train(&o);
    if (!strcmp(cmd, "eval")) return cmd_eval(&o);
    if (!strcmp(cmd, "slice-model")) return cmd_slice_model(&o);
    if (!strcmp(cmd, "synth-model")) return cmd_synth_model(&o);
    die(2, "unknown command '%s' (commands: info, tokenize, generate, logits, chat, bench, train-indexer, eval, "
           "slice-model, synth-model)", cmd);
    return 2;
}
