/*
 * Byte-level BPE tokenizer (GPT-2 family) built from a GGUF file's tokenizer.* metadata.
 *
 * Encoding runs in three steps:
 *   1. with parse_special, the text is cut at special-token texts (leftmost, longest match first);
 *   2. every plain segment is split into words by the pre-tokenizer named by tokenizer.ggml.pre: one or two
 *      PCRE2 regexes applied in stages (each stage splits the pieces of the previous one; both the matches
 *      and the unmatched gaps between them go on to the next stage, as in HF's "isolated" split);
 *   3. every word is mapped byte by byte to the byte tokens and merged by BPE, always the pair with the
 *      lowest merge rank first (leftmost on ties), using a binary heap so that long words stay O(n log n).
 *
 * Invalid UTF-8: PCRE2 runs with PCRE2_MATCH_INVALID_UTF, so an invalid byte never matches any pattern
 * item and ends up in a gap of the last stage; such gaps are cut so that every invalid byte is a word of its
 * own (one byte token).  Since every byte has a token, decode(encode(s)) == s for any byte string.
 *
 * The tokenizer is immutable after dsa_tok_load: encoding keeps its scratch state on the caller's side, so
 * one tokenizer can serve several threads at once.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

#define MAX_STAGES 2
#define MAX_EOG 8
#define MAX_ENTRIES (1 << 24) /* tokens or merges: far above any real vocabulary, keeps sizes in range */

/* ---- pre-tokenizer regexes ------------------------------------------------------------------------------ */

/* GPT-2's pattern (HF ByteLevel pre-tokenizer with use_regex). */
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
/* Llama-3's pattern.  The original starts with (?i:'s|'t|…); the case-insensitive group is spelled out
 * so that Unicode case folding (e.g. U+017F LATIN SMALL LETTER LONG S) cannot make "'ſ" a contraction. */
#define RE_CONTRACTIONS "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define RE_LLAMA3                                                                                          \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|" \
                    "\\s+(?!\\S)|\\s+"
/* Qwen2's pattern: Llama-3's with single digits. */
#define RE_QWEN2                                                                                           \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"     \
                    "\\s+(?!\\S)|\\s+"

typedef struct {
    const char *name;
    const char *stages[MAX_STAGES];
    int ignore_merges; /* a word that is itself a token is taken whole (Llama-3's tokenizer.json) */
    int add_bos;       /* default when tokenizer.ggml.add_bos_token is absent */
} pre_spec;

static const pre_spec pre_specs[] = {
    {"smollm", {"\\p{N}", RE_GPT2}, 0, 0},
    {"gpt-2", {RE_GPT2, NULL}, 0, 0}, /* the name llama.cpp's converter writes */
    {"gpt2", {RE_GPT2, NULL}, 0, 0},
    {"default", {RE_GPT2, NULL}, 0, 0},
    {"llama-bpe", {RE_LLAMA3, NULL}, 1, 1},
    {"llama3", {RE_LLAMA3, NULL}, 1, 1},
    {"qwen2", {RE_QWEN2, NULL}, 0, 0},
};
#define N_PRE (sizeof pre_specs / sizeof pre_specs[0])

/* ---- the tokenizer -------------------------------------------------------------------------------------- */

typedef struct {
    int32_t left, right; /* left < 0: empty slot */
    int32_t rank, id;
} merge_slot;

struct dsa_tokenizer {
    int32_t n;
    uint8_t *type;
    char *text;          /* vocabulary strings as stored in the GGUF, back to back */
    uint32_t *text_off;  /* n + 1 offsets */
    char *piece;         /* the bytes each token stands for */
    uint32_t *piece_off; /* n + 1 offsets */
    int32_t *tok_tab;    /* open addressing: text -> id (-1 empty) */
    uint32_t tok_mask;
    merge_slot *mtab; /* open addressing: (left, right) -> rank, merged id */
    uint32_t mmask;
    int32_t byte_tok[256]; /* the token of each single byte */
    int32_t *spec;         /* special tokens, by first byte, longest first */
    int32_t spec_start[257];
    int32_t eog[MAX_EOG];
    int neog;
    int32_t bos, eos;
    int add_bos, ignore_merges;
    int nstages;
    pcre2_code *re[MAX_STAGES];
};

/* A name from the file, shortened and made printable for a one-line message. */
static const char *printable(dsa_str s, char *buf, size_t cap) {
    size_t n = s.len < cap - 1 ? (size_t)s.len : cap - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        buf[i] = c < 0x20 || c == 0x7F ? '?' : (char)c;
    }
    buf[n] = 0;
    return buf;
}

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int dsa_ids_push(dsa_ids *v, int32_t id) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int32_t *p = realloc(v->ids, cap * sizeof *p);
        if (!p) return -1;
        v->ids = p;
        v->cap = cap;
    }
    v->ids[v->n++] = id;
    return 0;
}

void dsa_ids_free(dsa_ids *v) {
    free(v->ids);
    v->ids = NULL;
    v->n = v->cap = 0;
}

/* ---- UTF-8 and the GPT-2 byte mapping ---------------------------------------------------------------- */

/* Length of the UTF-8 character at s[0..n): 1..4 when it is whole and valid, 0 when s[0] starts no valid
 * character, -1 when s is a valid but unfinished prefix (more bytes could complete it). */
static int utf8_char(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    int need;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c < 0x80) return 1;
    if (c < 0xC2) return 0;
    if (c < 0xE0) need = 1;
    else if (c < 0xF0) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;       /* no overlong forms */
        else if (c == 0xED) hi = 0x9F;  /* no surrogates */
    } else if (c < 0xF5) {
        need = 3;
        if (c == 0xF0) lo = 0x90;
        else if (c == 0xF4) hi = 0x8F; /* <= U+10FFFF */
    } else
        return 0;
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n) return -1;
        unsigned b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b & 0xC0) != 0x80) return 0;
    }
    return need + 1;
}

/* Decode one valid character (utf8_char() > 0 already checked). */
static uint32_t utf8_cp(const unsigned char *s, int len) {
    if (len == 1) return s[0];
    uint32_t cp = s[0] & (0x7F >> len);
    for (int i = 1; i < len; i++) cp = cp << 6 | (s[i] & 0x3F);
    return cp;
}

static int utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    out[0] = (char)(0xE0 | cp >> 12); /* the byte mapping never goes beyond U+0143 */
    out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100.. in
 * byte order.  Every mapped code point is below 0x144. */
static uint32_t byte_cp(int b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return (uint32_t)b;
    int k = 0;
    for (int i = 0; i < b; i++)
        if (!((i >= 0x21 && i <= 0x7E) || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE && i <= 0xFF))) k++;
    return 0x100 + (uint32_t)k;
}

/* ---- hash tables ------------------------------------------------------------------------------------- */

static uint32_t hash_bytes(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static uint32_t hash_pair(int32_t a, int32_t b) {
    uint64_t x = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (uint32_t)x;
}

static uint32_t table_size(uint64_t n) {
    uint32_t sz = 16;
    while (sz < 2 * n) sz *= 2;
    return sz;
}

static const char *tok_text(const dsa_tokenizer *t, int32_t id, size_t *len) {
    *len = t->text_off[id + 1] - t->text_off[id];
    return t->text + t->text_off[id];
}

static int32_t find_text(const dsa_tokenizer *t, const char *s, size_t n) {
    for (uint32_t i = hash_bytes(s, n) & t->tok_mask;; i = (i + 1) & t->tok_mask) {
        int32_t id = t->tok_tab[i];
        if (id < 0) return -1;
        size_t len;
        const char *p = tok_text(t, id, &len);
        if (len == n && memcmp(p, s, n) == 0) return id;
    }
}

/* Later duplicates win, as in llama.cpp's text -> id map. */
static void insert_text(dsa_tokenizer *t, int32_t id) {
    size_t n;
    const char *s = tok_text(t, id, &n);
    for (uint32_t i = hash_bytes(s, n) & t->tok_mask;; i = (i + 1) & t->tok_mask) {
        int32_t old = t->tok_tab[i];
        if (old >= 0) {
            size_t len;
            const char *p = tok_text(t, old, &len);
            if (len != n || memcmp(p, s, n) != 0) continue;
        }
        t->tok_tab[i] = id;
        return;
    }
}

static const merge_slot *find_merge(const dsa_tokenizer *t, int32_t a, int32_t b) {
    for (uint32_t i = hash_pair(a, b) & t->mmask;; i = (i + 1) & t->mmask) {
        const merge_slot *m = &t->mtab[i];
        if (m->left < 0) return NULL;
        if (m->left == a && m->right == b) return m;
    }
}

/* The first (lowest-ranked) merge of a pair wins. */
static void insert_merge(dsa_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t id) {
    for (uint32_t i = hash_pair(a, b) & t->mmask;; i = (i + 1) & t->mmask) {
        merge_slot *m = &t->mtab[i];
        if (m->left == a && m->right == b) return;
        if (m->left < 0) {
            *m = (merge_slot){a, b, rank, id};
            return;
        }
    }
}

/* ---- loading ------------------------------------------------------------------------------------------- */

static int load_texts(dsa_tokenizer *t, const gguf_file *f, char *err, size_t errlen) {
    const gguf_kv *kv = gguf_find(f, "tokenizer.ggml.tokens");
    if (!kv || kv->type != GGUF_ARRAY || kv->arr_type != GGUF_STRING || kv->arr_n == 0)
        return fail(err, errlen, "tokenizer.ggml.tokens is missing or not a string array");
    if (kv->arr_n > MAX_ENTRIES)
        return fail(err, errlen, "too many tokens (%llu)", (unsigned long long)kv->arr_n);
    t->n = (int32_t)kv->arr_n;
    dsa_str *s = malloc((size_t)t->n * sizeof *s);
    t->text_off = malloc(((size_t)t->n + 1) * sizeof *t->text_off);
    if (!s || !t->text_off) {
        free(s);
        return fail(err, errlen, "out of memory loading the vocabulary");
    }
    if (gguf_arr_strs(kv, s) != 0) {
        free(s);
        return fail(err, errlen, "tokenizer.ggml.tokens: bad string array");
    }
    uint64_t total = 0;
    for (int32_t i = 0; i < t->n; i++) total += s[i].len;
    if (total > 0xFFFFFFFFu / 8) { /* 512 MiB: offsets stay 32-bit */
        free(s);
        return fail(err, errlen, "vocabulary text too large");
    }
    t->text = malloc(total ? total : 1);
    if (!t->text) {
        free(s);
        return fail(err, errlen, "out of memory loading the vocabulary");
    }
    uint32_t off = 0;
    for (int32_t i = 0; i < t->n; i++) {
        t->text_off[i] = off;
        if (s[i].len) memcpy(t->text + off, s[i].ptr, s[i].len);
        off += (uint32_t)s[i].len;
    }
    t->text_off[t->n] = off;
    free(s);
    return 0;
}

static int load_types(dsa_tokenizer *t, const gguf_file *f, char *err, size_t errlen) {
    t->type = malloc((size_t)t->n);
    if (!t->type) return fail(err, errlen, "out of memory loading token types");
    memset(t->type, TT_NORMAL, (size_t)t->n);
    const gguf_kv *kv = gguf_find(f, "tokenizer.ggml.token_type");
    if (!kv) return 0;
    int integer = kv->type == GGUF_ARRAY && kv->arr_type <= GGUF_INT64 && kv->arr_type != GGUF_FLOAT32 &&
                  kv->arr_type != GGUF_BOOL && kv->arr_type != GGUF_STRING && kv->arr_type != GGUF_ARRAY;
    if (!integer || kv->arr_n != (uint64_t)t->n)
        return fail(err, errlen, "tokenizer.ggml.token_type must be an integer array of %d entries", t->n);
    for (int32_t i = 0; i < t->n; i++) {
        int64_t v = gguf_arr_int(kv, (uint64_t)i);
        t->type[i] = (uint8_t)(v >= TT_NORMAL && v <= TT_BYTE ? v : TT_NORMAL);
    }
    return 0;
}

static int build_text_table(dsa_tokenizer *t, char *err, size_t errlen) {
    uint32_t sz = table_size((uint64_t)t->n);
    t->tok_tab = malloc((size_t)sz * sizeof *t->tok_tab);
    if (!t->tok_tab) return fail(err, errlen, "out of memory building the vocabulary index");
    memset(t->tok_tab, 0xFF, (size_t)sz * sizeof *t->tok_tab);
    t->tok_mask = sz - 1;
    for (int32_t i = 0; i < t->n; i++) insert_text(t, i);
    return 0;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The bytes token id stands for, written to out (room for its text length); returns the count. */
static size_t decode_token(const dsa_tokenizer *t, int32_t id, int16_t *cp_byte, char *out) {
    size_t n;
    const unsigned char *s = (const unsigned char *)tok_text(t, id, &n);
    int ty = t->type[id];
    if (ty == TT_CONTROL || ty == TT_USER) {
        memcpy(out, s, n);
        return n;
    }
    if (ty == TT_BYTE && n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && hexval(s[3]) >= 0 &&
        hexval(s[4]) >= 0) {
        out[0] = (char)(hexval(s[3]) * 16 + hexval(s[4]));
        return 1;
    }
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        int k = utf8_char(s + i, n - i);
        if (k <= 0) { /* not UTF-8: copy the byte */
            out[o++] = (char)s[i++];
            continue;
        }
        uint32_t cp = utf8_cp(s + i, k);
        if (cp < 0x144 && cp_byte[cp] >= 0) out[o++] = (char)cp_byte[cp];
        else {
            memcpy(out + o, s + i, (size_t)k);
            o += (size_t)k;
        }
        i += (size_t)k;
    }
    return o;
}

static int build_bytes_and_pieces(dsa_tokenizer *t, char *err, size_t errlen) {
    int16_t cp_byte[0x144];
    for (int i = 0; i < 0x144; i++) cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        uint32_t cp = byte_cp(b);
        char u[4];
        int k = utf8_put(cp, u);
        cp_byte[cp] = (int16_t)b;
        t->byte_tok[b] = find_text(t, u, (size_t)k); /* -1: the byte is dropped (see bpe_word) */
    }
    /* A decoded piece is never longer than the token's text. */
    t->piece = malloc(t->text_off[t->n] ? t->text_off[t->n] : 1);
    t->piece_off = malloc(((size_t)t->n + 1) * sizeof *t->piece_off);
    if (!t->piece || !t->piece_off) return fail(err, errlen, "out of memory decoding the vocabulary");
    uint32_t off = 0;
    for (int32_t i = 0; i < t->n; i++) {
        t->piece_off[i] = off;
        off += (uint32_t)decode_token(t, i, cp_byte, t->piece + off);
    }
    t->piece_off[t->n] = off;
    return 0;
}

static int load_merges(dsa_tokenizer *t, const gguf_file *f, char *err, size_t errlen) {
    const gguf_kv *kv = gguf_find(f, "tokenizer.ggml.merges");
    if (!kv || kv->type != GGUF_ARRAY || kv->arr_type != GGUF_STRING)
        return fail(err, errlen, "tokenizer.ggml.merges is missing or not a string array");
    if (kv->arr_n > MAX_ENTRIES)
        return fail(err, errlen, "too many merges (%llu)", (unsigned long long)kv->arr_n);
    size_t n = (size_t)kv->arr_n;
    dsa_str *s = malloc((n ? n : 1) * sizeof *s);
    uint32_t sz = table_size(kv->arr_n);
    t->mtab = malloc((size_t)sz * sizeof *t->mtab);
    char *buf = malloc(t->text_off[t->n] + 1); /* a merged text longer than every token cannot be one */
    if (!s || !t->mtab || !buf) {
        free(s);
        free(buf);
        return fail(err, errlen, "out of memory loading merges");
    }
    t->mmask = sz - 1;
    for (uint32_t i = 0; i < sz; i++) t->mtab[i].left = -1;
    if (gguf_arr_strs(kv, s) != 0) {
        free(s);
        free(buf);
        return fail(err, errlen, "tokenizer.ggml.merges: bad string array");
    }
    for (size_t i = 0; i < n; i++) {
        const char *m = s[i].ptr;
        size_t len = (size_t)s[i].len, sp = 1;
        while (sp < len && m[sp] != ' ') sp++;
        if (sp >= len || len - 1 > t->text_off[t->n]) continue; /* malformed: ignored, like unknown parts */
        int32_t a = find_text(t, m, sp), b = find_text(t, m + sp + 1, len - sp - 1);
        memcpy(buf, m, sp);
        memcpy(buf + sp, m + sp + 1, len - sp - 1);
        int32_t ab = find_text(t, buf, len - 1);
        if (a >= 0 && b >= 0 && ab >= 0) insert_merge(t, a, b, (int32_t)i, ab);
    }
    free(s);
    free(buf);
    return 0;
}

static int32_t get_id(const dsa_tokenizer *t, const gguf_file *f, const char *key) {
    int64_t v;
    if (gguf_get_i64(f, key, &v) != 0 || v < 0 || v >= t->n) return -1;
    return (int32_t)v;
}

static int is_special_type(int ty) { return ty == TT_CONTROL || ty == TT_USER; }

typedef struct {
    unsigned char first;
    uint32_t len;
    int32_t id;
} special_key;

static int cmp_special(const void *pa, const void *pb) {
    const special_key *a = pa, *b = pb;
    if (a->first != b->first) return a->first < b->first ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* Special tokens grouped by first byte, longest first, so that the first hit is the longest match. */
static int build_specials(dsa_tokenizer *t, char *err, size_t errlen) {
    int32_t n = 0;
    for (int32_t i = 0; i < t->n; i++)
        if (is_special_type(t->type[i]) && t->text_off[i + 1] > t->text_off[i]) n++;
    special_key *keys = malloc((size_t)(n ? n : 1) * sizeof *keys);
    t->spec = malloc((size_t)(n ? n : 1) * sizeof *t->spec);
    if (!keys || !t->spec) {
        free(keys);
        return fail(err, errlen, "out of memory indexing special tokens");
    }
    n = 0;
    for (int32_t i = 0; i < t->n; i++) {
        size_t len;
        const char *s = tok_text(t, i, &len);
        if (is_special_type(t->type[i]) && len > 0) keys[n++] = (special_key){(unsigned char)s[0], (uint32_t)len, i};
    }
    qsort(keys, (size_t)n, sizeof *keys, cmp_special);
    int32_t k = 0;
    for (int c = 0; c < 256; c++) {
        t->spec_start[c] = k;
        for (; k < n && keys[k].first == c; k++) t->spec[k] = keys[k].id;
    }
    t->spec_start[256] = n;
    free(keys);
    return 0;
}

static void add_eog(dsa_tokenizer *t, int32_t id) {
    if (id < 0 || t->neog == MAX_EOG) return;
    for (int i = 0; i < t->neog; i++)
        if (t->eog[i] == id) return;
    t->eog[t->neog++] = id;
}

static void build_eog(dsa_tokenizer *t, const gguf_file *f) {
    static const char *const names[] = {"<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>",
                                        "<|eom_id|>"};
    add_eog(t, t->eos);
    add_eog(t, get_id(t, f, "tokenizer.ggml.eot_token_id"));
    add_eog(t, get_id(t, f, "tokenizer.ggml.eom_token_id"));
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        int32_t id = find_text(t, names[i], strlen(names[i]));
        if (id >= 0 && t->type[id] == TT_CONTROL) add_eog(t, id);
    }
}

static int compile_pre(dsa_tokenizer *t, const gguf_file *f, char *err, size_t errlen) {
    dsa_str name = {"default", 7};
    const gguf_kv *kv = gguf_find(f, "tokenizer.ggml.pre");
    if (kv && gguf_get_str(f, "tokenizer.ggml.pre", &name) != 0)
        return fail(err, errlen, "tokenizer.ggml.pre is not a string");
    const pre_spec *ps = NULL;
    for (size_t i = 0; i < N_PRE && !ps; i++)
        if (dsa_str_eq(name, pre_specs[i].name)) ps = &pre_specs[i];
    if (!ps) {
        char list[160] = "";
        for (size_t i = 0; i < N_PRE; i++) {
            size_t l = strlen(list);
            snprintf(list + l, sizeof list - l, "%s%s", i ? ", " : "", pre_specs[i].name);
        }
        char shown[65];
        return fail(err, errlen, "unsupported pre-tokenizer '%s' (supported: %s)",
                    printable(name, shown, sizeof shown), list);
    }
    t->ignore_merges = ps->ignore_merges;
    int b;
    t->add_bos = gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &b) == 0 ? b : ps->add_bos;
    for (int i = 0; i < MAX_STAGES && ps->stages[i]; i++) {
        int code;
        PCRE2_SIZE off;
        t->re[i] = pcre2_compile((PCRE2_SPTR)ps->stages[i], PCRE2_ZERO_TERMINATED,
                                 PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &code, &off, NULL);
        if (!t->re[i]) {
            PCRE2_UCHAR msg[120];
            pcre2_get_error_message(code, msg, sizeof msg);
            return fail(err, errlen, "pre-tokenizer '%s': regex error at %zu: %s", ps->name, (size_t)off,
                        (const char *)msg);
        }
        pcre2_jit_compile(t->re[i], PCRE2_JIT_COMPLETE); /* optional: the interpreter is the fallback */
        t->nstages = i + 1;
    }
    return 0;
}

int dsa_tok_load(const gguf_file *f, dsa_tokenizer **out, char *err, size_t errlen) {
    *out = NULL;
    dsa_str model;
    if (gguf_get_str(f, "tokenizer.ggml.model", &model) != 0)
        return fail(err, errlen, "tokenizer.ggml.model is missing");
    if (!dsa_str_eq(model, "gpt2")) {
        char shown[65];
        return fail(err, errlen, "unsupported tokenizer model '%s' (supported: gpt2)",
                    printable(model, shown, sizeof shown));
    }
    dsa_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return fail(err, errlen, "out of memory");
    if (load_texts(t, f, err, errlen) || load_types(t, f, err, errlen) || build_text_table(t, err, errlen))
        goto bad;
    t->bos = get_id(t, f, "tokenizer.ggml.bos_token_id");
    t->eos = get_id(t, f, "tokenizer.ggml.eos_token_id");
    if (build_bytes_and_pieces(t, err, errlen) || load_merges(t, f, err, errlen) ||
        build_specials(t, err, errlen) || compile_pre(t, f, err, errlen))
        goto bad;
    build_eog(t, f);
    *out = t;
    return 0;
bad:
    dsa_tok_free(t);
    return -1;
}

void dsa_tok_free(dsa_tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < MAX_STAGES; i++) pcre2_code_free(t->re[i]);
    free(t->type);
    free(t->text);
    free(t->text_off);
    free(t->piece);
    free(t->piece_off);
    free(t->tok_tab);
    free(t->mtab);
    free(t->spec);
    free(t);
}

int32_t dsa_tok_n_vocab(const dsa_tokenizer *t) { return t->n; }
int32_t dsa_tok_bos(const dsa_tokenizer *t) { return t->bos; }
int32_t dsa_tok_eos(const dsa_tokenizer *t) { return t->eos; }
int dsa_tok_add_bos(const dsa_tokenizer *t) { return t->add_bos; }

int dsa_tok_is_eog(const dsa_tokenizer *t, int32_t id) {
    for (int i = 0; i < t->neog; i++)
        if (t->eog[i] == id) return 1;
    return 0;
}

int32_t dsa_tok_lookup(const dsa_tokenizer *t, const char *s) { return find_text(t, s, strlen(s)); }

const char *dsa_tok_piece(const dsa_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n) {
        *len = 0;
        return "";
    }
    *len = t->piece_off[id + 1] - t->piece_off[id];
    return t->piece + t->piece_off[id];
}

/* ---- encoding ------------------------------------------------------------------------------------------ */

typedef struct {
    int32_t id; /* -1 once merged into its left neighbour */
    int32_t prev, next;
} symbol;

typedef struct {
    int32_t rank, left, right;
    int32_t lid, rid; /* the ids the pair had when queued: a changed symbol makes the entry stale */
    int32_t id;       /* the merged token */
} candidate;

typedef struct {
    const dsa_tokenizer *t;
    dsa_ids *out;
    pcre2_match_data *md[MAX_STAGES];
    symbol *sym;
    size_t sym_cap;
    candidate *heap;
    size_t heap_n, heap_cap;
    char *buf;
    size_t buf_cap;
} encoder;

/* Room for need elements of elem bytes in p (capacity *cap): the buffer, possibly moved, or NULL on OOM
 * (p is then still valid). */
static void *grow(void *p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return p;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(p, c * elem);
    if (q) *cap = c;
    return q;
}

static int cand_less(const candidate *a, const candidate *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->left < b->left;
}

static int heap_push(encoder *e, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return 0;
    const merge_slot *m = find_merge(e->t, e->sym[left].id, e->sym[right].id);
    if (!m) return 0;
    candidate *h = grow(e->heap, &e->heap_cap, e->heap_n + 1, sizeof *h);
    if (!h) return -1;
    e->heap = h;
    candidate c = {m->rank, left, right, e->sym[left].id, e->sym[right].id, m->id};
    size_t i = e->heap_n++;
    while (i > 0 && cand_less(&c, &e->heap[(i - 1) / 2])) {
        e->heap[i] = e->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    e->heap[i] = c;
    return 0;
}

static candidate heap_pop(encoder *e) {
    candidate top = e->heap[0], last = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && cand_less(&e->heap[c + 1], &e->heap[c])) c++;
        if (!cand_less(&e->heap[c], &last)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = last;
    return top;
}

/* Llama-3 style: a word that is a token is not merged.  Looks the word up in its byte-mapped spelling. */
static int32_t whole_word(encoder *e, const unsigned char *s, size_t n) {
    char *b = grow(e->buf, &e->buf_cap, 2 * n, 1);
    if (!b) return -2;
    e->buf = b;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) o += (size_t)utf8_put(byte_cp(s[i]), e->buf + o);
    return find_text(e->t, e->buf, o);
}

static int bpe_word(encoder *e, const char *word, size_t n) {
    const dsa_tokenizer *t = e->t;
    const unsigned char *s = (const unsigned char *)word;
    if (n == 0) return 0;
    if (t->ignore_merges) {
        int32_t id = whole_word(e, s, n);
        if (id == -2) return -1;
        if (id >= 0) return dsa_ids_push(e->out, id);
    }
    symbol *sym = n <= INT32_MAX / 2 ? grow(e->sym, &e->sym_cap, n, sizeof *sym) : NULL;
    if (!sym) return -1;
    e->sym = sym;
    /* One symbol per byte.  A byte the vocabulary has no token for is left out, so its neighbours may
     * merge across it: HF tokenizers' BPE does the same (llama.cpp drops it too, after merging). */
    int32_t ns = 0;
    for (size_t i = 0; i < n; i++)
        if (t->byte_tok[s[i]] >= 0) {
            e->sym[ns] = (symbol){t->byte_tok[s[i]], ns - 1, ns + 1};
            ns++;
        }
    if (ns == 0) return 0;
    e->sym[ns - 1].next = -1;
    e->heap_n = 0;
    for (int32_t i = 0; i + 1 < ns; i++)
        if (heap_push(e, i, i + 1)) return -1;
    while (e->heap_n) {
        candidate c = heap_pop(e);
        symbol *l = &e->sym[c.left], *r = &e->sym[c.right];
        if (l->id != c.lid || r->id != c.rid || l->next != c.right) continue; /* stale */
        l->id = c.id;
        r->id = -1;
        l->next = r->next;
        if (r->next >= 0) e->sym[r->next].prev = c.left;
        if (heap_push(e, l->prev, c.left) || heap_push(e, c.left, l->next)) return -1;
    }
    for (int32_t i = 0; i >= 0; i = e->sym[i].next)
        if (dsa_ids_push(e->out, e->sym[i].id)) return -1;
    return 0;
}

/* A gap of the last stage: only bytes no pattern item matched, i.e. invalid UTF-8.  Each invalid byte is a
 * word of its own; a valid run (which the supported patterns never leave unmatched) stays one word. */
static int last_gap(encoder *e, const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        int k;
        while (j < n && (k = utf8_char((const unsigned char *)s + j, n - j)) > 0) j += (size_t)k;
        if (j > i && bpe_word(e, s + i, j - i)) return -1;
        if (j < n && bpe_word(e, s + j, 1)) return -1;
        i = j < n ? j + 1 : n;
    }
    return 0;
}

static int split(encoder *e, int stage, const char *s, size_t n);

static int gap(encoder *e, int stage, const char *s, size_t n) {
    if (n == 0) return 0;
    return stage + 1 < e->t->nstages ? split(e, stage + 1, s, n) : last_gap(e, s, n);
}

static int piece(encoder *e, int stage, const char *s, size_t n) {
    return stage + 1 < e->t->nstages ? split(e, stage + 1, s, n) : bpe_word(e, s, n);
}

/* Cut s by the stage's regex; matches and gaps both go on to the next stage. */
static int split(encoder *e, int stage, const char *s, size_t n) {
    size_t pos = 0, done = 0;
    while (pos < n) {
        int rc = pcre2_match(e->t->re[stage], (PCRE2_SPTR)s, n, pos, 0, e->md[stage], NULL);
        if (rc < 0) break; /* no more matches (or a matching error): the rest is a gap */
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md[stage]);
        size_t a = ov[0], b = ov[1];
        if (b <= a) { /* an empty match: step over one character */
            int k = utf8_char((const unsigned char *)s + a, n - a);
            pos = a + (k > 0 ? (size_t)k : 1);
            continue;
        }
        if (gap(e, stage, s + done, a - done) || piece(e, stage, s + a, b - a)) return -1;
        done = pos = b;
    }
    return gap(e, stage, s + done, n - done);
}

/* The special token that starts s (longest first), or -1. */
static int32_t match_special(const dsa_tokenizer *t, const char *s, size_t n, size_t *len) {
    unsigned c = (unsigned char)s[0];
    for (int32_t k = t->spec_start[c]; k < t->spec_start[c + 1]; k++) {
        size_t l;
        const char *p = tok_text(t, t->spec[k], &l);
        if (l <= n && memcmp(p, s, l) == 0) {
            *len = l;
            return t->spec[k];
        }
    }
    return -1;
}

static int encode_text(encoder *e, const char *text, size_t len, int parse_special) {
    size_t start = 0;
    if (parse_special && e->t->spec_start[256] > 0) {
        for (size_t i = 0; i < len;) {
            size_t l;
            int32_t id = match_special(e->t, text + i, len - i, &l);
            if (id < 0) {
                i++;
                continue;
            }
            if ((i > start && split(e, 0, text + start, i - start)) || dsa_ids_push(e->out, id)) return -1;
            i += l;
            start = i;
        }
    }
    return len > start ? split(e, 0, text + start, len - start) : 0;
}

int dsa_tok_encode(const dsa_tokenizer *t, const char *text, size_t len, int parse_special, dsa_ids *out) {
    encoder e = {.t = t, .out = out};
    size_t n0 = out->n;
    int rc = 0;
    for (int i = 0; i < t->nstages; i++)
        if (!(e.md[i] = pcre2_match_data_create_from_pattern(t->re[i], NULL))) rc = -1;
    if (rc == 0 && len) rc = encode_text(&e, text, len, parse_special);
    for (int i = 0; i < t->nstages; i++) pcre2_match_data_free(e.md[i]);
    free(e.sym);
    free(e.heap);
    free(e.buf);
    if (rc) out->n = n0;
    return rc;
}

/* ---- streaming decode ------------------------------------------------------------------------------------ */

size_t dsa_detok_push(const dsa_tokenizer *t, dsa_detok *st, int32_t id, char *out, size_t cap) {
    size_t plen;
    const char *p = dsa_tok_piece(t, id, &plen);
    size_t n = 0;
    /* pend + piece, as much as fits (cap >= 8 + the longest token always fits) */
    for (int i = 0; i < st->npend && n < cap; i++) out[n++] = (char)st->pend[i];
    size_t take = plen < cap - n ? plen : cap - n;
    if (take) memcpy(out + n, p, take);
    n += take;
    /* everything up to a trailing unfinished (but so far valid) character goes out */
    size_t i = 0;
    while (i < n) {
        int k = utf8_char((const unsigned char *)out + i, n - i);
        if (k < 0) break;
        i += k > 0 ? (size_t)k : 1;
    }
    st->npend = (int)(n - i);
    if (n > i) memcpy(st->pend, out + i, n - i);
    return i;
}

size_t dsa_detok_flush(dsa_detok *st, char *out, size_t cap) {
    size_t n = (size_t)st->npend < cap ? (size_t)st->npend : cap;
    if (n) memcpy(out, st->pend, n);
    st->npend = 0;
    return n;
}
