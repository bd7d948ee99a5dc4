/*
 * Tokenizer against an independent reference (tests/fixtures/tokenizer.json, made by
 * scripts/ref/make_tokenizer_fixtures.py with HF tokenizers and cross-checked with llama.cpp):
 *   - every fixture string gives exactly the reference ids (SmolLM2's "smollm" pre-tokenizer, and the same
 *     vocabulary re-labelled "gpt2", "llama-bpe" and "qwen2" through a GGUF rebuilt in memory);
 *   - decode(encode(s)) == s for the fixtures and for random byte strings, invalid UTF-8 included (minus
 *     the bytes the vocabulary has no token for, which are dropped);
 *   - the streaming decoder's output adds up to the whole decode and never splits a character of valid text;
 *   - special tokens are recognised only with parse_special;
 *   - unsupported tokenizer models and pre-tokenizers fail with a clear message.
 */
#include "testutil.h"
#include "tokenizer.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static gguf_file *model;
static dsa_tokenizer *tok;
static int covered[256]; /* bytes the vocabulary has a token for */

/* ---- small helpers -------------------------------------------------------------------------------------- */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} bytes;

static void put(bytes *b, const void *s, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        unsigned char *q = realloc(b->p, cap);
        if (!q) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
        b->p = q;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
}

/* Whole-string UTF-8 validity (same rules as the tokenizer: no overlongs, surrogates, > U+10FFFF). */
static int utf8_valid(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t need;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c < 0xC2 || c > 0xF4) return 0;
        need = c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
        if (i + need >= n) return 0; /* truncated */
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        i += need + 1;
    }
    return 1;
}

/* decode(ids) by concatenating pieces */
static void decode_all(const dsa_ids *ids, bytes *out) {
    out->n = 0;
    for (size_t i = 0; i < ids->n; i++) {
        size_t len;
        const char *p = dsa_tok_piece(tok, ids->ids[i], &len);
        put(out, p, len);
    }
}

static void drop_uncovered(const char *s, size_t n, bytes *out) {
    out->n = 0;
    for (size_t i = 0; i < n; i++)
        if (covered[(unsigned char)s[i]]) put(out, s + i, 1);
}

static void show(const char *s, size_t n) {
    fputs("  text: \"", stderr);
    for (size_t i = 0; i < n && i < 200; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') fputc(c, stderr);
        else fprintf(stderr, "\\x%02x", c);
    }
    fputs(n > 200 ? "...\"\n" : "\"\n", stderr);
}

/* ---- properties checked on every string ------------------------------------------------------------------ */

/* decode(encode(s)) == s minus uncovered bytes; the stream decoder agrees and keeps characters whole. */
static void check_roundtrip(const char *s, size_t n, int special) {
    dsa_ids ids = {0};
    bytes dec = {0}, want = {0}, stream = {0};
    CHECK(dsa_tok_encode(tok, s, n, special, &ids) == 0, "encode failed");
    decode_all(&ids, &dec);
    drop_uncovered(s, n, &want);
    int ok = dec.n == want.n && (dec.n == 0 || memcmp(dec.p, want.p, dec.n) == 0);
    CHECK(ok, "decode(encode(s)) != s (special=%d, %zu vs %zu bytes)", special, dec.n, want.n);
    if (!ok) show(s, n);

    int valid = utf8_valid(dec.p, dec.n), chunks_ok = 1;
    dsa_detok st = {0};
    char out[512];
    for (size_t i = 0; i < ids.n; i++) {
        size_t k = dsa_detok_push(tok, &st, ids.ids[i], out, sizeof out);
        if (valid && !utf8_valid((unsigned char *)out, k)) chunks_ok = 0;
        put(&stream, out, k);
    }
    size_t k = dsa_detok_flush(&st, out, sizeof out);
    CHECK(!valid || k == 0, "valid text left %zu bytes held back", k);
    put(&stream, out, k);
    CHECK(chunks_ok, "stream decoder emitted a partial character");
    ok = stream.n == dec.n && (dec.n == 0 || memcmp(stream.p, dec.p, dec.n) == 0);
    CHECK(ok, "stream decode differs from decode (%zu vs %zu bytes)", stream.n, dec.n);
    if (!chunks_ok || !ok) show(s, n);
    dsa_ids_free(&ids);
    free(dec.p);
    free(want.p);
    free(stream.p);
}

static int ids_equal(const dsa_ids *got, const json_t *want) {
    if (got->n != json_array_size(want)) return 0;
    for (size_t i = 0; i < got->n; i++)
        if (got->ids[i] != (int32_t)json_integer_value(json_array_get(want, i))) return 0;
    return 1;
}

static void show_ids(const char *label, const dsa_ids *got, const json_t *want) {
    fprintf(stderr, "  got ");
    for (size_t i = 0; i < got->n && i < 40; i++) fprintf(stderr, " %d", got->ids[i]);
    fprintf(stderr, "\n  want");
    for (size_t i = 0; i < json_array_size(want) && i < 40; i++)
        fprintf(stderr, " %lld", (long long)json_integer_value(json_array_get(want, i)));
    fprintf(stderr, "  (%s)\n", label);
}

/* Every case of a fixture list against tokenizer t. */
static int check_cases(const dsa_tokenizer *t, const json_t *cases, const char *label) {
    size_t i;
    json_t *c;
    int bad = 0;
    json_array_foreach(cases, i, c) {
        const char *s = json_string_value(json_object_get(c, "text"));
        size_t n = json_string_length(json_object_get(c, "text"));
        int special = json_is_true(json_object_get(c, "special"));
        json_t *want = json_object_get(c, "ids");
        dsa_ids ids = {0};
        CHECK(s && want, "%s: malformed case %zu", label, i);
        if (!s || !want) continue;
        CHECK(dsa_tok_encode(t, s, n, special, &ids) == 0, "%s: encode failed", label);
        int ok = ids_equal(&ids, want);
        CHECK(ok, "%s: case %zu (special=%d) differs from the reference", label, i, special);
        if (!ok) {
            show(s, n);
            show_ids(label, &ids, want);
            bad++;
        }
        dsa_ids_free(&ids);
    }
    return bad;
}

/* ---- a GGUF with the model's vocabulary but other tokenizer settings, built in memory -------------------- */

static void put_u32(bytes *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(bytes *b, uint64_t v) { put(b, &v, 8); }
static void put_gstr(bytes *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}

/* The model's tokenizer.* keys (minus the overridden ones) plus model and pre; keys with a NULL value are
 * left out.  Parse it and load a tokenizer: 0 or -1 with err. */
static int variant(const char *model_name, const char *pre, const char *drop, dsa_tokenizer **out, char *err,
                   size_t errlen) {
    bytes b = {0};
    uint64_t nkv = 0;
    for (uint64_t i = 0; i < model->n_kv; i++) {
        const gguf_kv *kv = &model->kv[i];
        if (kv->key.len < 10 || memcmp(kv->key.ptr, "tokenizer.", 10) != 0) continue;
        if (dsa_str_eq(kv->key, "tokenizer.ggml.model") || dsa_str_eq(kv->key, "tokenizer.ggml.pre")) continue;
        if (drop && dsa_str_eq(kv->key, drop)) continue;
        put_u64(&b, kv->key.len);
        put(&b, kv->key.ptr, kv->key.len);
        put_u32(&b, kv->type);
        /* an array's value starts with its element type and count, 12 bytes before the first element */
        put(&b, kv->type == GGUF_ARRAY ? kv->data - 12 : kv->data, kv->nbytes);
        nkv++;
    }
    const char *keys[2] = {"tokenizer.ggml.model", "tokenizer.ggml.pre"};
    const char *vals[2] = {model_name, pre};
    for (int k = 0; k < 2; k++) {
        if (!vals[k]) continue;
        put_gstr(&b, keys[k]);
        put_u32(&b, GGUF_STRING);
        put_gstr(&b, vals[k]);
        nkv++;
    }
    bytes file = {0};
    put(&file, "GGUF", 4);
    put_u32(&file, 3);
    put_u64(&file, 0);
    put_u64(&file, nkv);
    put(&file, b.p, b.n);
    free(b.p);
    gguf_file *f;
    int rc = gguf_parse(file.p, file.n, &f, err, errlen);
    if (rc == 0) {
        rc = dsa_tok_load(f, out, err, errlen);
        gguf_close(f);
    }
    free(file.p);
    return rc;
}

static void test_variants(const json_t *fx) {
    const json_t *vars = json_object_get(fx, "variants");
    const char *pre;
    json_t *cases;
    CHECK(json_object_size(vars) == 3, "fixture lacks the pre-tokenizer variants");
    json_object_foreach((json_t *)vars, pre, cases) {
        char err[256];
        dsa_tokenizer *t;
        int rc = variant("gpt2", pre, NULL, &t, err, sizeof err);
        CHECK(rc == 0, "variant %s: %s", pre, err);
        if (rc) continue;
        int bad = check_cases(t, cases, pre);
        printf("pre-tokenizer %-9s: %zu cases, %d differ\n", pre, json_array_size(cases), bad);
        dsa_tok_free(t);
    }
}

/* GPT-2's byte -> character mapping, for building a vocabulary from scratch. */
static uint32_t byte_cp(int b) {
    int keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    if (keep) return (uint32_t)b;
    int k = 0;
    for (int i = 0; i < b; i++) k += !((i >= 0x21 && i <= 0x7E) || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE && i <= 0xFF));
    return 0x100 + (uint32_t)k;
}

static void put_cp(bytes *b, uint32_t cp);

/* A vocabulary of the 256 byte tokens, then "bc" (256), "abc" (257), the user-defined "<x" (258) and the
 * control token "<xy>" (259); one merge "b c". */
static int mini(const char *pre, dsa_tokenizer **out) {
    bytes kv = {0}, file = {0};
    put_gstr(&kv, "tokenizer.ggml.model");
    put_u32(&kv, GGUF_STRING);
    put_gstr(&kv, "gpt2");
    put_gstr(&kv, "tokenizer.ggml.pre");
    put_u32(&kv, GGUF_STRING);
    put_gstr(&kv, pre);
    put_gstr(&kv, "tokenizer.ggml.tokens");
    put_u32(&kv, GGUF_ARRAY);
    put_u32(&kv, GGUF_STRING);
    put_u64(&kv, 260);
    for (int b = 0; b < 256; b++) {
        bytes t = {0};
        put_cp(&t, byte_cp(b));
        put_u64(&kv, t.n);
        put(&kv, t.p, t.n);
        free(t.p);
    }
    put_gstr(&kv, "bc");
    put_gstr(&kv, "abc");
    put_gstr(&kv, "<x");
    put_gstr(&kv, "<xy>");
    put_gstr(&kv, "tokenizer.ggml.token_type");
    put_u32(&kv, GGUF_ARRAY);
    put_u32(&kv, GGUF_INT32);
    put_u64(&kv, 260);
    for (int i = 0; i < 260; i++) put_u32(&kv, i == 258 ? 4 : i == 259 ? 3 : 1);
    put_gstr(&kv, "tokenizer.ggml.merges");
    put_u32(&kv, GGUF_ARRAY);
    put_u32(&kv, GGUF_STRING);
    put_u64(&kv, 1);
    put_gstr(&kv, "b c");
    put(&file, "GGUF", 4);
    put_u32(&file, 3);
    put_u64(&file, 0);
    put_u64(&file, 5);
    put(&file, kv.p, kv.n);
    free(kv.p);
    char err[256];
    gguf_file *f;
    int rc = gguf_parse(file.p, file.n, &f, err, sizeof err);
    if (rc == 0) {
        rc = dsa_tok_load(f, out, err, sizeof err);
        gguf_close(f);
    }
    CHECK(rc == 0, "mini vocabulary (%s): %s", pre, err);
    free(file.p);
    return rc;
}

/* Llama-3 takes a word that is a token whole (ignore_merges); the GPT-2 family merges it. */
static void test_ignore_merges(void) {
    static const struct {
        const char *pre;
        int n;
        int32_t ids[2];
    } want[] = {{"llama-bpe", 1, {257}}, {"llama3", 1, {257}}, {"gpt2", 2, {'a', 256}}, {"qwen2", 2, {'a', 256}}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        dsa_tokenizer *t;
        if (mini(want[i].pre, &t)) continue;
        dsa_ids v = {0};
        CHECK(dsa_tok_encode(t, "abc", 3, 0, &v) == 0 && v.n == (size_t)want[i].n && v.ids[0] == want[i].ids[0] &&
                  (v.n < 2 || v.ids[1] == want[i].ids[1]),
              "%s: \"abc\" gave %zu ids", want[i].pre, v.n);
        dsa_ids_free(&v);
        dsa_tok_free(t);
    }
}

/* Special texts: longest match first, user-defined ones too, and only with parse_special. */
static void test_special_longest(void) {
    dsa_tokenizer *t;
    if (mini("gpt2", &t)) return;
    const char *s = "<xy>z<x<xy";
    dsa_ids v = {0};
    CHECK(dsa_tok_encode(t, s, strlen(s), 1, &v) == 0 && v.n == 5 && v.ids[0] == 259 && v.ids[1] == 'z' &&
              v.ids[2] == 258 && v.ids[3] == 258 && v.ids[4] == 'y',
          "special matching: %zu ids", v.n);
    v.n = 0;
    CHECK(dsa_tok_encode(t, s, strlen(s), 0, &v) == 0 && v.n == strlen(s), "as text: %zu ids", v.n);
    for (size_t i = 0; i < v.n; i++) CHECK(v.ids[i] < 256, "special token %d without parse_special", v.ids[i]);
    CHECK(!dsa_tok_is_eog(t, 259) && dsa_tok_eos(t) == -1 && dsa_tok_bos(t) == -1, "no eos/bos");
    dsa_ids_free(&v);
    dsa_tok_free(t);
}

/* Invalid bytes are words of their own, so they never merge with their neighbours. */
static void test_invalid_utf8(void) {
    static const char s[] = "a\xe4\xb8" "b \xff\xfe";
    dsa_ids v = {0};
    int32_t a = dsa_tok_lookup(tok, "a"), b = dsa_tok_lookup(tok, "b"), sp = dsa_tok_lookup(tok, "Ġ");
    int32_t e4 = dsa_tok_lookup(tok, "ä"), b8 = dsa_tok_lookup(tok, "¸"); /* bytes 0xe4 and 0xb8 */
    CHECK(dsa_tok_encode(tok, s, sizeof s - 1, 0, &v) == 0, "encode");
    /* 0xff and 0xfe have no token in SmolLM2's vocabulary: dropped */
    CHECK(v.n == 5 && v.ids[0] == a && v.ids[1] == e4 && v.ids[2] == b8 && v.ids[3] == b && v.ids[4] == sp,
          "invalid UTF-8: %zu ids", v.n);
    dsa_ids_free(&v);
}

static void test_errors(void) {
    char err[256] = "";
    dsa_tokenizer *t = NULL;
    CHECK(variant("llama", "smollm", NULL, &t, err, sizeof err) == -1 && !t, "model 'llama' accepted");
    CHECK(strcmp(err, "unsupported tokenizer model 'llama' (supported: gpt2)") == 0, "message: %s", err);
    CHECK(variant("gpt2", "deepseek-coder", NULL, &t, err, sizeof err) == -1 && !t, "unknown pre accepted");
    CHECK(strstr(err, "unsupported pre-tokenizer 'deepseek-coder'") && strstr(err, "smollm") &&
              strstr(err, "llama-bpe") && strstr(err, "qwen2") && !strchr(err, '\n'),
          "message: %s", err);
    CHECK(variant(NULL, "smollm", NULL, &t, err, sizeof err) == -1 && strstr(err, "tokenizer.ggml.model"),
          "missing model: %s", err);
    CHECK(variant("gpt2", "smollm", "tokenizer.ggml.merges", &t, err, sizeof err) == -1 &&
              strstr(err, "merges"),
          "missing merges: %s", err);
    CHECK(variant("gpt2", "smollm", "tokenizer.ggml.tokens", &t, err, sizeof err) == -1 &&
              strstr(err, "tokens"),
          "missing tokens: %s", err);
    /* no pre name, or an alias: the GPT-2 pattern */
    static const char *const ok[] = {NULL, "gpt2", "default", "llama3"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        CHECK(variant("gpt2", ok[i], NULL, &t, err, sizeof err) == 0, "pre %s: %s", ok[i] ? ok[i] : "(none)", err);
        dsa_tok_free(t);
        t = NULL;
    }
}

/* ---- special tokens ------------------------------------------------------------------------------------- */

static void test_specials(void) {
    static const char *const texts[] = {"<|im_start|>", "<|im_end|>", "<|endoftext|>", "<file_sep>",
                                        "<jupyter_output>", "<empty_output>"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        const char *s = texts[i];
        int32_t id = dsa_tok_lookup(tok, s);
        dsa_ids a = {0}, b = {0};
        CHECK(id >= 0 && id < 17, "lookup(%s) = %d", s, id);
        CHECK(dsa_tok_encode(tok, s, strlen(s), 1, &a) == 0 && a.n == 1 && a.ids[0] == id,
              "%s with parse_special: %zu ids", s, a.n);
        CHECK(dsa_tok_encode(tok, s, strlen(s), 0, &b) == 0 && b.n > 1, "%s as text: %zu ids", s, b.n);
        for (size_t k = 0; k < b.n; k++) CHECK(b.ids[k] >= 17, "%s as text gave control token %d", s, b.ids[k]);
        dsa_ids_free(&a);
        dsa_ids_free(&b);
    }
    /* longest match wins, and specials split words apart */
    const char *s = "x<|im_start|>user\nhi<|im_end|>";
    dsa_ids v = {0};
    CHECK(dsa_tok_encode(tok, s, strlen(s), 1, &v) == 0, "encode");
    int n_ctl = 0;
    for (size_t k = 0; k < v.n; k++) n_ctl += v.ids[k] < 17;
    CHECK(n_ctl == 2 && v.ids[1] == 1 && v.ids[v.n - 1] == 2, "chat line: %d control tokens", n_ctl);
    dsa_ids_free(&v);
    CHECK(dsa_tok_lookup(tok, "<|not a token|>") == -1, "lookup of a non-token");
    CHECK(dsa_tok_lookup(tok, "hello") >= 17, "lookup of a normal token");
}

static void test_properties(void) {
    CHECK(dsa_tok_n_vocab(tok) == 49152, "n_vocab %d", dsa_tok_n_vocab(tok));
    CHECK(dsa_tok_bos(tok) == 1, "bos %d", dsa_tok_bos(tok));
    CHECK(dsa_tok_eos(tok) == 2, "eos %d", dsa_tok_eos(tok));
    CHECK(dsa_tok_add_bos(tok) == 0, "add_bos");
    CHECK(dsa_tok_is_eog(tok, 2), "<|im_end|> ends generation");
    CHECK(dsa_tok_is_eog(tok, 0), "<|endoftext|> ends generation");
    CHECK(!dsa_tok_is_eog(tok, 1) && !dsa_tok_is_eog(tok, 3) && !dsa_tok_is_eog(tok, 100), "not eog");
    size_t len;
    const char *p = dsa_tok_piece(tok, dsa_tok_lookup(tok, "Ġhello"), &len);
    CHECK(len == 6 && memcmp(p, " hello", 6) == 0, "piece of Ġhello");
    p = dsa_tok_piece(tok, 2, &len);
    CHECK(len == 10 && memcmp(p, "<|im_end|>", 10) == 0, "piece of a control token");
    p = dsa_tok_piece(tok, -5, &len);
    CHECK(len == 0, "piece of an invalid id");
    p = dsa_tok_piece(tok, 49152, &len);
    CHECK(len == 0, "piece of an out-of-range id");
    int n_cov = 0;
    for (int b = 0; b < 256; b++) n_cov += covered[b];
    /* SmolLM2's vocabulary lacks 21 byte tokens (e.g. 0x04, 0xc0, 0xf5-0xff); HF and llama.cpp drop them too */
    CHECK(n_cov == 235, "%d bytes covered", n_cov);
}

/* ---- random byte strings -------------------------------------------------------------------------------- */

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static void put_cp(bytes *b, uint32_t cp) {
    unsigned char u[4];
    size_t n;
    if (cp < 0x80) u[0] = (unsigned char)cp, n = 1;
    else if (cp < 0x800) u[0] = (unsigned char)(0xC0 | cp >> 6), u[1] = (unsigned char)(0x80 | (cp & 0x3F)), n = 2;
    else if (cp < 0x10000) {
        u[0] = (unsigned char)(0xE0 | cp >> 12);
        u[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        u[2] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (unsigned char)(0xF0 | cp >> 18);
        u[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
        u[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        u[3] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    put(b, u, n);
}

/* A random fragment: words, spaces, digits, multi-byte characters, broken sequences, special texts. */
static void random_fragment(bytes *b) {
    static const char *const words[] = {"hello", " world", "'s", "'ll", " ", "  ", "\n", "\t", "\r\n", "<|im_start|>",
                                        "<|im_end|>", "<|im", "|>", "123", "9", ".", "...", "don't", " I"};
    uint32_t r = rnd() % 10;
    if (r < 3) {
        const char *w = words[rnd() % (sizeof words / sizeof words[0])];
        put(b, w, strlen(w));
    } else if (r < 6) { /* a valid code point outside the surrogates */
        static const uint32_t lim[] = {0x80, 0x800, 0x10000, 0x110000};
        uint32_t cp = rnd() % lim[rnd() % 4];
        if (cp >= 0xD800 && cp < 0xE000) cp -= 0x800;
        put_cp(b, cp);
    } else if (r < 8) { /* a truncated multi-byte character */
        bytes t = {0};
        put_cp(&t, 0x800 + rnd() % 0x10F000 % 0x100000);
        put(b, t.p, 1 + rnd() % (t.n - 1));
        free(t.p);
    } else { /* any byte */
        unsigned char c = (unsigned char)rnd();
        put(b, &c, 1);
    }
}

static void test_random(void) {
    bytes b = {0};
    for (int i = 0; i < 3000; i++) {
        b.n = 0;
        if (i % 3 == 0) {
            size_t n = rnd() % 48;
            for (size_t k = 0; k < n; k++) {
                unsigned char c = (unsigned char)rnd();
                put(&b, &c, 1);
            }
        } else {
            size_t n = rnd() % 24;
            for (size_t k = 0; k < n; k++) random_fragment(&b);
        }
        check_roundtrip(b.n ? (const char *)b.p : "", b.n, i & 1);
    }
    /* long runs stress the regex and the merge heap */
    static const char *const runs[] = {" ", "a", "\n", "9", "é", "=", "\xff", "\xe4\xb8"};
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        b.n = 0;
        for (int k = 0; k < 20000; k++) put(&b, runs[r], strlen(runs[r]));
        check_roundtrip((const char *)b.p, b.n, 0);
    }
    free(b.p);
}

int main(void) {
    char err[256];
    if (gguf_open(tu_model_path(), &model, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (dsa_tok_load(model, &tok, err, sizeof err)) {
        fprintf(stderr, "tokenizer: %s\n", err);
        return 1;
    }
    for (int c = 0; c < 256; c++) {
        dsa_ids v = {0};
        char s = (char)c;
        covered[c] = dsa_tok_encode(tok, &s, 1, 0, &v) == 0 && v.n == 1;
        dsa_ids_free(&v);
    }
    test_properties();
    json_t *fx = tu_load_json("tokenizer.json");
    json_t *cases = json_object_get(fx, "cases");
    CHECK(json_array_size(cases) >= 250, "only %zu fixture strings", json_array_size(cases));
    int bad = check_cases(tok, cases, "smollm");
    printf("pre-tokenizer %-9s: %zu cases, %d differ\n", "smollm", json_array_size(cases), bad);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        check_roundtrip(json_string_value(json_object_get(c, "text")),
                        json_string_length(json_object_get(c, "text")), 0);
        check_roundtrip(json_string_value(json_object_get(c, "text")),
                        json_string_length(json_object_get(c, "text")), 1);
    }
    test_variants(fx);
    test_specials();
    test_errors();
    test_ignore_merges();
    test_special_longest();
    test_invalid_utf8();
    test_random();
    json_decref(fx);
    dsa_tok_free(tok);
    gguf_close(model);
    return tu_finish("test_tokenizer");
}
