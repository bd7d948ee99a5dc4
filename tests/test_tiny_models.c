/*
 * The engine on small synthetic models that exercise what the real default model (SmolLM2-135M: llama, tied, Q4_1)
 * never does -- tests/fixtures/tiny/, made by scripts/ref/make_tiny_models.py with their float64 reference logits:
 *
 *   qwen2-f32f16  qwen2: NeoX RoPE pairing, q/k/v biases, rope base 1e6, untied output, GQA 4/2, F32 + F16 weights,
 *                 pre-tokenizer "qwen2", ChatML template
 *   llama-mixq    llama: rope_freqs.weight (Llama-3.1 divisors), tied output with a Q6_K token_embd, weights in
 *                 Q4_0 Q4_1 Q8_0 Q4_K Q5_K Q6_K BF16, Q/K/V of one layer in three types with three activation types;
 *                 GQA 8/2; pre-tokenizer "llama-bpe", Llama-3 template
 *   llama-mqa     llama: one KV head, partial RoPE (8 of 16 dims), F16 + F32, untied, pre "gpt2", no chat template
 *
 * For each: the hyperparameters the engine derives; the tokenizer (ids equal to HF tokenizers' on the same vocabulary,
 * BOS/EOS/end-of-generation ids); the chat template family, its rendering (equal to jinja2's) and the ids of the
 * rendered prompt; then the forward pass on token sequences of 1, 7 and 40 tokens (every position) and 300 tokens
 * (last position; longer than the 256-token prefill batch):
 *   - batch logits vs the float64 reference: max |delta| <= the model's bound, and the same argmax wherever the
 *     reference's top1 - top2 gap exceeds twice the bound (with every logit within the bound no other argmax is
 *     possible there, so this only restates the bound where it matters most);
 *   - the same sequence token by token, and as two prefill chunks, against the batch: the KV cache must give the
 *     same logits whichever way the tokens came in (see INCR_TOL);
 *   - truncating the cache and evaluating the tail again gives the same last logits.
 *
 * Bounds (max |logit - float64 reference|; the logits have std ~1.2, see "logit_std" in the fixtures):
 *   - float weights (F32/F16/BF16 only): the engine computes in f32 with f32 activations, so its only sizeable
 *     rounding is the f16 KV cache (relative 2^-11 per element).  The generator's float64 emulation of that rounding
 *     ("noise_max_abs" in the fixtures) lands 0.0007-0.0028 from the reference on these models, the engine
 *     0.0007-0.0031 (every kernel level).  FLOAT_TOL = 0.01 is ~3x that.
 *   - quantised weights: the engine rounds the input of every quantised matmul to 8 bits (blocks of 32 for Q4_0/
 *     Q4_1/Q8_0, of 256 for the K-quants), as llama.cpp does.  The float64 emulation of that rounding lands up to
 *     0.111 from the reference on llama-mixq, the engine up to 0.123 (AVX2/AVX-512) and 0.134 (plain C): two
 *     implementations of 8-bit activations differ by a fresh draw of that noise (tests/test_forward.c).
 *     QUANT_TOL = 0.35 is ~2.6x the worst.
 *   What bugs do here (measured by breaking one line at a time in a scratch copy of engine/model.c): swapped RoPE
 *   pairing 3.7-5.9, no q/k/v biases 3.4 (no k bias alone 1.3), rope_freqs ignored 3.4 or multiplied 4.6, wrong GQA
 *   head mapping 5.8-6.4, output.weight ignored 6.7-6.9, rope base ignored 2.6-3.3, RoPE at the batch-relative
 *   position 1.6-3.0, rope.dimension_count ignored 0.16 (llama-mqa: 16x its bound), attention scaled by
 *   1/sqrt(rope_dim) 0.71.  Each failed the test; so did the pre-tokenizer, ignore_merges and chat-trim mutations
 *   of the tokenizer checks.  The measured numbers are printed on every run.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "testutil.h"

#define FLOAT_TOL 0.01
#define QUANT_TOL 0.35
/* Batch vs token-by-token vs chunked prefill vs re-evaluation after a truncate: the same weights and the same cached
 * K/V.  Measured: bit-identical (the matmul kernels fix each output's order of operations whatever the number of
 * rows); 1e-4 leaves room for a kernel that sums in another order for other batch sizes, and is 4 orders of
 * magnitude below what a cache-position bug does (RoPE at batch-relative positions: 3.8-4.4). */
#define INCR_TOL 1e-4
#define N_CTX 512

typedef struct {
    const char *json;
    double tol;
} model_case;

static const model_case CASES[] = {
    {"tiny/qwen2-f32f16.json", FLOAT_TOL},
    {"tiny/llama-mixq.json", QUANT_TOL},
    {"tiny/llama-mqa.json", FLOAT_TOL},
};

/* ---- helpers --------------------------------------------------------------------------------------------------- */

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d; /* NaN propagates as "larger" */
    }
    return m;
}

static int ids_equal(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

static void print_ids(const char *label, const int32_t *ids, size_t n) {
    fprintf(stderr, "  %s:", label);
    for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
    fputc('\n', stderr);
}

static const char *jstr(const json_t *o, const char *key) {
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

static long long jint(const json_t *o, const char *key) { return json_integer_value(json_object_get(o, key)); }

/* ---- the parts ------------------------------------------------------------------------------------------------- */

static void check_hparams(const char *name, const dsa_model *m, const json_t *h) {
    const dsa_hparams *hp = dsa_model_hparams(m);
    const char *arch = jstr(h, "arch");
    dsa_arch want = !strcmp(arch, "qwen2") ? DSA_ARCH_QWEN2 : DSA_ARCH_LLAMA;
    CHECK(hp->arch == want, "%s: arch %d, expected %s", name, (int)hp->arch, arch);
#define HP_INT(field)                                                                                   \
    CHECK(hp->field == jint(h, #field), "%s: " #field " %d, expected %lld", name, (int)hp->field, \
          jint(h, #field))
    HP_INT(n_layer);
    HP_INT(n_embd);
    HP_INT(n_ff);
    HP_INT(n_head);
    HP_INT(n_head_kv);
    HP_INT(head_dim);
    HP_INT(rope_dim);
    HP_INT(n_vocab);
    HP_INT(rope_neox);
    HP_INT(tied_output);
    HP_INT(n_ctx_train);
#undef HP_INT
    double base = json_number_value(json_object_get(h, "rope_base"));
    double eps = json_number_value(json_object_get(h, "norm_eps"));
    CHECK(fabs(hp->rope_base - base) <= 1e-6 * base, "%s: rope_base %g, expected %g", name, hp->rope_base, base);
    CHECK(fabs(hp->norm_eps - eps) <= 1e-6 * eps, "%s: norm_eps %g, expected %g", name, hp->norm_eps, eps);
}

static void check_tokenizer(const char *name, const dsa_tokenizer *tok, const json_t *t) {
    CHECK(dsa_tok_bos(tok) == jint(t, "bos"), "%s: bos %d, expected %lld", name, dsa_tok_bos(tok), jint(t, "bos"));
    CHECK(dsa_tok_eos(tok) == jint(t, "eos"), "%s: eos %d, expected %lld", name, dsa_tok_eos(tok), jint(t, "eos"));
    CHECK(dsa_tok_add_bos(tok) == jint(t, "add_bos"), "%s: add_bos %d, expected %lld", name, dsa_tok_add_bos(tok),
          jint(t, "add_bos"));
    int n_eog;
    int32_t *eog = tu_json_ids(json_object_get(t, "eog"), &n_eog);
    int n_found = 0;
    for (int32_t id = 0; id < dsa_tok_n_vocab(tok); id++) {
        int want = 0;
        for (int i = 0; i < n_eog; i++) want |= eog[i] == id;
        n_found += want;
        CHECK(dsa_tok_is_eog(tok, id) == want, "%s: token %d is_eog %d, expected %d", name, id,
              dsa_tok_is_eog(tok, id), want);
    }
    CHECK(n_found == n_eog, "%s: %d of %d end-of-generation ids are in the vocabulary", name, n_found, n_eog);
    free(eog);

    const json_t *cases = json_object_get(t, "cases");
    for (size_t c = 0; c < json_array_size(cases); c++) {
        const json_t *tc = json_array_get(cases, c);
        const char *text = jstr(tc, "text");
        int n_want;
        int32_t *want = tu_json_ids(json_object_get(tc, "ids"), &n_want);
        dsa_ids got = {0};
        CHECK(dsa_tok_encode(tok, text, strlen(text), 0, &got) == 0, "%s: encode failed", name);
        int ok = ids_equal(got.ids, got.n, want, (size_t)n_want);
        CHECK(ok, "%s (pre %s): tokenization of \"%s\" differs from HF tokenizers'", name, jstr(t, "pre"), text);
        if (!ok) {
            print_ids("engine", got.ids, got.n);
            print_ids("HF    ", want, (size_t)n_want);
        }
        /* and back */
        char back[512];
        size_t blen = 0;
        for (size_t i = 0; i < got.n; i++) {
            size_t l;
            const char *p = dsa_tok_piece(tok, got.ids[i], &l);
            if (blen + l < sizeof back) memcpy(back + blen, p, l);
            blen += l;
        }
        CHECK(blen == strlen(text) && memcmp(back, text, blen) == 0, "%s: pieces of \"%s\" do not spell it", name,
              text);
        dsa_ids_free(&got);
        free(want);
    }
}

static void check_chat(const char *name, const dsa_model *m, const json_t *ch) {
    const char *chat_err = NULL;
    const dsa_chat_template *t = dsa_model_chat(m, &chat_err);
    const char *kind = json_string_value(json_object_get(ch, "kind"));
    if (!kind) {
        CHECK(t->kind == 0, "%s: chat template kind %d, expected none", name, (int)t->kind);
        CHECK(chat_err && strstr(chat_err, "no chat template"), "%s: chat error '%s'", name,
              chat_err ? chat_err : "(null)");
        return;
    }
    dsa_chat_kind want_kind = !strcmp(kind, "chatml") ? DSA_CHAT_CHATML : DSA_CHAT_LLAMA3;
    CHECK(t->kind == want_kind, "%s: chat template kind %d (%s), expected %s (%s)", name, (int)t->kind,
          dsa_chat_kind_name(t->kind), kind, chat_err ? chat_err : "");
    if (t->kind != want_kind) return;
    const json_t *msgs = json_object_get(ch, "messages");
    int n = (int)json_array_size(msgs);
    dsa_chat_msg mv[8];
    if (n > 8) n = 8;
    for (int i = 0; i < n; i++)
        mv[i] = (dsa_chat_msg){jstr(json_array_get(msgs, (size_t)i), "role"),
                               jstr(json_array_get(msgs, (size_t)i), "content")};
    char *text = dsa_chat_render(t, mv, n, (int)jint(ch, "add_generation_prompt"));
    CHECK(text && !strcmp(text, jstr(ch, "text")), "%s: chat rendering differs from jinja2's:\n--- engine\n%s\n--- "
          "jinja2\n%s", name, text ? text : "(null)", jstr(ch, "text"));
    int n_want;
    int32_t *want = tu_json_ids(json_object_get(ch, "ids"), &n_want);
    dsa_ids got = {0};
    const char *src = jstr(ch, "text"); /* the ids of the expected text, whatever the rendering did */
    CHECK(dsa_tok_encode(dsa_model_tok(m), src, strlen(src), 1, &got) == 0, "%s: encode failed", name);
    int ok = ids_equal(got.ids, got.n, want, (size_t)n_want);
    CHECK(ok, "%s: ids of the rendered chat (special tokens parsed) differ from HF tokenizers'", name);
    if (!ok) {
        print_ids("engine", got.ids, got.n);
        print_ids("HF    ", want, (size_t)n_want);
    }
    dsa_ids_free(&got);
    free(want);
    free(text);
}

typedef struct {
    double ref_max, incr_max, chunk_max, trunc_max;
    int top1_checked, top1_bad;
} fwd_stats;

static int eval(dsa_ctx *c, const int32_t *ids, int n, float *logits, int all) {
    char err[256];
    int rc = dsa_ctx_eval(c, ids, n, logits, all, NULL, NULL, err, sizeof err);
    CHECK(rc == 0, "eval of %d tokens: %s", n, err);
    return rc;
}

static void check_sequence(const char *name, dsa_model *m, const json_t *sq, double tol, fwd_stats *st) {
    const char *sname = jstr(sq, "name");
    int n, V = dsa_model_hparams(m)->n_vocab;
    int32_t *ids = tu_json_ids(json_object_get(sq, "ids"), &n);
    int ref_all = (int)jint(sq, "all_logits"), ref_rows = ref_all ? n : 1;
    size_t nref = 0;
    float *ref = tu_b64_floats(jstr(sq, "logits_b64"), &nref);
    CHECK(n > 0 && ref && nref == (size_t)ref_rows * V, "%s/%s: reference logits: %zu floats, expected %d x %d", name,
          sname, nref, ref_rows, V);
    if (n <= 0 || !ref || nref != (size_t)ref_rows * V) {
        free(ref);
        free(ids);
        return;
    }
    char err[256];
    dsa_ctx *c = NULL;
    CHECK(dsa_ctx_new(m, N_CTX, 2, &c, err, sizeof err) == 0, "%s: ctx: %s", name, err);
    if (!c) abort();
    /* full: every position's logits from one call (past the 256-token prefill batch for the long sequence) */
    float *full = calloc((size_t)n * V, sizeof *full), *one = malloc((size_t)V * sizeof *one),
          *chunk = malloc((size_t)n * V * sizeof *chunk);
    if (!full || !one || !chunk) abort();
    const float *last = full + (size_t)(n - 1) * V;
#define NOTE(field, d) \
    if ((d) > st->field || isnan(d)) st->field = (d)

    /* 1. the whole sequence at once, against the reference (every position, or the last one) */
    if (eval(c, ids, n, full, 1) == 0) {
        CHECK(dsa_ctx_pos(c) == n, "%s/%s: pos %d after %d tokens", name, sname, dsa_ctx_pos(c), n);
        for (int r = 0; r < ref_rows; r++) {
            int row = ref_all ? r : n - 1;
            const float *e = full + (size_t)row * V, *f = ref + (size_t)r * V;
            double d = max_abs_diff(e, f, (size_t)V);
            NOTE(ref_max, d);
            CHECK(d <= tol, "%s/%s: position %d: max |logit - reference| = %.5f > %.5f", name, sname, row, d, tol);
            if (tu_top_gap(f, V) > 2 * tol) {
                st->top1_checked++;
                int ok = tu_argmax(e, V) == tu_argmax(f, V);
                st->top1_bad += !ok;
                CHECK(ok, "%s/%s: position %d: argmax %d, reference %d (reference gap %.4f)", name, sname, row,
                      tu_argmax(e, V), tu_argmax(f, V), tu_top_gap(f, V));
            }
        }
    }

    /* 2. the same with only the last position's logits */
    dsa_ctx_truncate(c, 0);
    CHECK(dsa_ctx_pos(c) == 0, "%s/%s: truncate(0) left pos %d", name, sname, dsa_ctx_pos(c));
    if (eval(c, ids, n, one, 0) == 0) {
        double d = max_abs_diff(one, last, (size_t)V);
        NOTE(incr_max, d);
        CHECK(d <= INCR_TOL, "%s/%s: last-position logits differ from all-position ones by %.3g", name, sname, d);
    }

    /* 3. token by token from an emptied cache: every step against the batch */
    dsa_ctx_truncate(c, 0);
    for (int t = 0; t < n; t++) {
        if (eval(c, ids + t, 1, one, 0)) break;
        double d = max_abs_diff(one, full + (size_t)t * V, (size_t)V);
        NOTE(incr_max, d);
        CHECK(d <= INCR_TOL, "%s/%s: token-by-token position %d differs from the batch by %.3g", name, sname, t, d);
    }

    if (n > 1) {
        /* 4. two prefill chunks, the second with every position's logits */
        int k = n / 3 > 0 ? n / 3 : 1;
        dsa_ctx_truncate(c, 0);
        if (eval(c, ids, k, NULL, 0) == 0 && eval(c, ids + k, n - k, chunk, 1) == 0)
            for (int r = k; r < n; r++) {
                double d = max_abs_diff(chunk + (size_t)(r - k) * V, full + (size_t)r * V, (size_t)V);
                NOTE(chunk_max, d);
                CHECK(d <= INCR_TOL, "%s/%s: chunked prefill (%d + %d) row %d differs from the batch by %.3g", name,
                      sname, k, n - k, r, d);
            }
        /* 5. forget the tail and evaluate it again */
        int keep = 2 * n / 3;
        dsa_ctx_truncate(c, keep);
        CHECK(dsa_ctx_pos(c) == keep, "%s/%s: truncate(%d) left pos %d", name, sname, keep, dsa_ctx_pos(c));
        if (eval(c, ids + keep, n - keep, one, 0) == 0) {
            double d = max_abs_diff(one, last, (size_t)V);
            NOTE(trunc_max, d);
            CHECK(d <= INCR_TOL, "%s/%s: re-evaluating after truncate(%d): last row differs by %.3g", name, sname,
                  keep, d);
        }
    }
#undef NOTE
    printf("  %-18s %-6s %3d tokens: max |d| vs reference %.5f (emulated engine rounding %.5f); vs the batch: "
           "token by token %.2g, chunked %.2g, after truncate %.2g\n",
           name, sname, n, st->ref_max, json_number_value(json_object_get(sq, "noise_max_abs")), st->incr_max,
           st->chunk_max, st->trunc_max);
    dsa_ctx_free(c);
    free(full);
    free(one);
    free(chunk);
    free(ref);
    free(ids);
}

static void check_model(const model_case *mc) {
    json_t *fx = tu_load_json(mc->json);
    const char *file = jstr(fx, "model");
    char rel[256];
    snprintf(rel, sizeof rel, "tiny/%s", file);
    const char *path = tu_fixture(rel);
    dsa_model *m = NULL;
    char err[512];
    int rc = dsa_model_load(path, &m, NULL, NULL, err, sizeof err);
    CHECK(rc == 0, "%s: load: %s (the fixtures are made by scripts/ref/make_tiny_models.py)", file, err);
    if (rc) {
        json_decref(fx);
        return;
    }
    check_hparams(file, m, json_object_get(fx, "hparams"));
    check_tokenizer(file, dsa_model_tok(m), json_object_get(fx, "tokenizer"));
    check_chat(file, m, json_object_get(fx, "chat"));
    const json_t *seqs = json_object_get(fx, "sequences");
    CHECK(json_array_size(seqs) >= 3, "%s: %zu sequences in the fixture", file, json_array_size(seqs));
    fwd_stats total = {0};
    for (size_t i = 0; i < json_array_size(seqs); i++) {
        fwd_stats st = {0};
        check_sequence(file, m, json_array_get(seqs, i), mc->tol, &st);
        if (st.ref_max > total.ref_max) total.ref_max = st.ref_max;
        if (st.incr_max > total.incr_max) total.incr_max = st.incr_max;
        if (st.chunk_max > total.incr_max) total.incr_max = st.chunk_max;
        if (st.trunc_max > total.incr_max) total.incr_max = st.trunc_max;
        total.top1_checked += st.top1_checked;
        total.top1_bad += st.top1_bad;
    }
    printf("%s: max |d| vs reference %.5f (bound %.3g); argmax checked at %d positions, %d differ; batch vs "
           "incremental %.2g (bound %.0e)\n",
           file, total.ref_max, mc->tol, total.top1_checked, total.top1_bad, total.incr_max, INCR_TOL);
    /* the fixtures have 10 (llama-mixq, whose bound is wide) to 49 such positions: some must be there */
    CHECK(total.top1_checked >= 5, "%s: only %d positions have a clear argmax", file, total.top1_checked);
    dsa_model_free(m);
    json_decref(fx);
}

int main(void) {
    /* Every kernel level this CPU has (plain C, AVX2, AVX-512: dsa_model_load picks the level from DSA_CPU), unless
     * the caller chose one. */
    static const char *const levels[] = {"generic", "avx2", "avx512"};
    const char *fixed = getenv("DSA_CPU");
    int n_levels = fixed && *fixed ? 1 : 3;
    char done[3][16] = {{0}};
    for (int l = 0; l < n_levels; l++) {
        if (n_levels > 1) setenv("DSA_CPU", levels[l], 1);
        dsa_kernels_init(0);
        const char *name = dsa_cpu_name();
        int seen = 0;
        for (int k = 0; k < l; k++) seen |= !strcmp(done[k], name);
        if (seen) continue; /* the CPU lacks this level: it fell back to one already run */
        snprintf(done[l], sizeof done[l], "%s", name);
        printf("== kernels: %s\n", name);
        for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) check_model(&CASES[i]);
    }
    return tu_finish("test_tiny_models");
}
