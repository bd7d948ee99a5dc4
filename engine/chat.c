/*
 * Chat templates.  A GGUF carries its chat template as Jinja text (tokenizer.chat_template); rather than
 * embedding a Jinja interpreter we recognise the family and render it in C:
 *
 *   ChatML  (SmolLM2, Qwen2.x):  <|im_start|>{role}\n{content}<|im_end|>\n ...  [<|im_start|>assistant\n]
 *   Llama-3 (Llama 3.x):         <|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|> ...
 *                                [<|start_header_id|>assistant<|end_header_id|>\n\n]
 *
 * ChatML templates often insert a default system message when the conversation does not start with one;
 * its text is read from the template itself.  For Llama-3 the template's leading bos_token is left out:
 * the tokenizer adds BOS itself (tokenizer.ggml.add_bos_token), as llama.cpp does.
 */
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *find(const char *s, size_t n, const char *needle) {
    size_t m = strlen(needle);
    for (size_t i = 0; m <= n && i <= n - m; i++)
        if (memcmp(s + i, needle, m) == 0) return s + i;
    return NULL;
}

const char *dsa_chat_kind_name(dsa_chat_kind k) {
    switch (k) {
    case DSA_CHAT_CHATML: return "chatml";
    case DSA_CHAT_LLAMA3: return "llama3";
    }
    return "unknown";
}

/* Unescape a Jinja string literal's body s[0..n) (\n, \t, \r, \\, \', \"); NULL on OOM. */
static char *unescape(const char *s, size_t n) {
    char *out = malloc(n + 1), *o = out;
    if (!out) return NULL;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\\' && i + 1 < n) {
            c = s[++i];
            c = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
        }
        *o++ = c;
    }
    *o = 0;
    return out;
}

/* Is s[0..n) plain literal text: no quote that could close the literal, no Jinja delimiter? */
static int plain_literal(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\') {
            i++;
            continue;
        }
        if (s[i] == '\'' || s[i] == '"' || s[i] == '{' || s[i] == '}') return 0;
    }
    return 1;
}

/* The default system prompt of a ChatML template: the first literal "<|im_start|>system\n TEXT <|im_end|>"
 * in which TEXT is plain text (not an expression such as messages[0]['content']).  The newline may be a
 * real one or the two characters \n of a Jinja escape.  0 (found or not), -1 on OOM. */
static int chatml_default_system(const char *tmpl, size_t len, char **out) {
    static const char head[] = "<|im_start|>system";
    const char *end = tmpl + len;
    *out = NULL;
    for (const char *p = find(tmpl, len, head); p; p = find(p + 1, (size_t)(end - p - 1), head)) {
        const char *q = p + sizeof head - 1;
        if (q < end && *q == '\n') q++;
        else if (end - q >= 2 && q[0] == '\\' && q[1] == 'n') q += 2;
        else continue;
        const char *e = find(q, (size_t)(end - q), "<|im_end|>");
        if (!e || e == q || !plain_literal(q, (size_t)(e - q))) continue;
        *out = unescape(q, (size_t)(e - q));
        return *out ? 0 : -1;
    }
    return 0;
}

int dsa_chat_detect(const char *tmpl, size_t len, dsa_chat_template *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    if (!tmpl) len = 0;
    if (len && find(tmpl, len, "<|im_start|>")) {
        out->kind = DSA_CHAT_CHATML;
        if (chatml_default_system(tmpl, len, &out->default_system)) {
            if (err && errlen) snprintf(err, errlen, "out of memory reading the chat template");
            return -1;
        }
        return 0;
    }
    if (len && find(tmpl, len, "<|start_header_id|>")) {
        out->kind = DSA_CHAT_LLAMA3;
        return 0;
    }
    /* first ~40 characters, on one line, cut at a character boundary */
    char snip[64];
    size_t n = 0;
    for (size_t i = 0; i < len && n < 40; i++) {
        unsigned char c = (unsigned char)tmpl[i];
        snip[n++] = c < 0x20 || c == 0x7F ? ' ' : (char)c;
    }
    while (n > 0 && n < len && ((unsigned char)tmpl[n] & 0xC0) == 0x80) n--; /* don't split a character */
    snip[n] = 0;
    if (err && errlen)
        snprintf(err, errlen, "unrecognised chat template (%s%s)", len ? snip : "empty", n < len ? "..." : "");
    return -1;
}

void dsa_chat_template_free(dsa_chat_template *t) {
    if (!t) return;
    free(t->default_system);
    t->default_system = NULL;
}

/* ---- rendering ----------------------------------------------------------------------------------------- */

typedef struct {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

static void put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void puts_(sbuf *b, const char *s) { put(b, s ? s : "", s ? strlen(s) : 0); }

/* Length of the Python-whitespace character (str.isspace, as Jinja's trim uses) at s[0..n), or 0. */
static size_t space_len(const unsigned char *s, size_t n) {
    if (s[0] == ' ' || (s[0] >= 0x09 && s[0] <= 0x0D) || (s[0] >= 0x1C && s[0] <= 0x1F)) return 1;
    if (n >= 2 && s[0] == 0xC2 && (s[1] == 0x85 || s[1] == 0xA0)) return 2;
    if (n < 3) return 0;
    uint32_t cp = (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
    if ((s[0] & 0xF0) != 0xE0 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
    if (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
        cp == 0x205F || cp == 0x3000)
        return 3;
    return 0;
}

/* Jinja's |trim: strip leading and trailing whitespace. */
static void put_trimmed(sbuf *b, const char *str) {
    const unsigned char *s = (const unsigned char *)(str ? str : "");
    size_t n = strlen((const char *)s), a = 0, k;
    while (a < n && (k = space_len(s + a, n - a)) > 0) a += k;
    size_t e = n;
    for (;;) { /* strip one trailing whitespace character at a time */
        size_t cut = 0;
        for (size_t w = 1; w <= 3 && w <= e - a; w++)
            if (space_len(s + e - w, w) == w) {
                cut = w;
                break;
            }
        if (!cut) break;
        e -= cut;
    }
    put(b, (const char *)s + a, e - a);
}

static void render_chatml(sbuf *b, const dsa_chat_template *t, const dsa_chat_msg *m, int n, int gen) {
    if (n > 0 && t->default_system && strcmp(m[0].role ? m[0].role : "", "system") != 0) {
        puts_(b, "<|im_start|>system\n");
        puts_(b, t->default_system);
        puts_(b, "<|im_end|>\n");
    }
    for (int i = 0; i < n; i++) {
        puts_(b, "<|im_start|>");
        puts_(b, m[i].role);
        puts_(b, "\n");
        puts_(b, m[i].content);
        puts_(b, "<|im_end|>\n");
    }
    if (gen) puts_(b, "<|im_start|>assistant\n");
}

static void render_llama3(sbuf *b, const dsa_chat_template *t, const dsa_chat_msg *m, int n, int gen) {
    if (n > 0 && t->default_system && strcmp(m[0].role ? m[0].role : "", "system") != 0) {
        puts_(b, "<|start_header_id|>system<|end_header_id|>\n\n");
        put_trimmed(b, t->default_system);
        puts_(b, "<|eot_id|>");
    }
    for (int i = 0; i < n; i++) {
        puts_(b, "<|start_header_id|>");
        puts_(b, m[i].role);
        puts_(b, "<|end_header_id|>\n\n");
        put_trimmed(b, m[i].content);
        puts_(b, "<|eot_id|>");
    }
    if (gen) puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

char *dsa_chat_render(const dsa_chat_template *t, const dsa_chat_msg *msgs, int n, int add_generation_prompt) {
    sbuf b = {0};
    put(&b, "", 0); /* an empty rendering is still a string */
    if (t->kind == DSA_CHAT_LLAMA3) render_llama3(&b, t, msgs, n, add_generation_prompt);
    else render_chatml(&b, t, msgs, n, add_generation_prompt);
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}
