/* Text layout without curses: see text.h. */
#define _XOPEN_SOURCE 700
#include "text.h"

#include <langinfo.h>
#include <locale.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

static int locale_is_utf8(void) {
    const char *cs = nl_langinfo(CODESET);
    return cs && (!strcmp(cs, "UTF-8") || !strcmp(cs, "utf8"));
}

int tx_locale_init(void) {
    if (setlocale(LC_CTYPE, "") && locale_is_utf8()) return 0;
    if (setlocale(LC_CTYPE, "C.UTF-8") && locale_is_utf8()) return 0;
    if (setlocale(LC_CTYPE, "C.utf8") && locale_is_utf8()) return 0;
    return -1;
}

int tx_decode(const char *s, size_t n, uint32_t *cp) {
    const unsigned char *u = (const unsigned char *)s;
    uint32_t c = u[0], min;
    int len;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) len = 2, c &= 0x1f, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef) len = 3, c &= 0x0f, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4) len = 4, c &= 0x07, min = 0x10000;
    else goto bad;
    if ((size_t)len > n) goto bad;
    for (int i = 1; i < len; i++) {
        if ((u[i] & 0xc0) != 0x80) goto bad;
        c = c << 6 | (u[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) goto bad;
    *cp = c;
    return len;
bad:
    *cp = 0xfffd;
    return 1;
}

int tx_cpwidth(uint32_t cp) {
    if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0)) return 1; /* drawn as U+FFFD */
    int w = wcwidth((wchar_t)cp);
    return w < 0 ? 1 : w > 2 ? 2 : w;
}

uint32_t tx_glyph(uint32_t cp) {
    if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0)) return 0xfffd;
    return wcwidth((wchar_t)cp) < 0 ? 0xfffd : cp;
}

int tx_width(const char *s, size_t n) {
    int w = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += (size_t)tx_decode(s + i, n - i, &cp);
        w += tx_cpwidth(cp);
    }
    return w;
}

/* The end of the character cluster at off: the character and the zero-width ones after it. */
static size_t cluster_end(const char *s, size_t n, size_t off) {
    uint32_t cp;
    off += (size_t)tx_decode(s + off, n - off, &cp);
    while (off < n) {
        int l = tx_decode(s + off, n - off, &cp);
        if (tx_cpwidth(cp) != 0) break;
        off += (size_t)l;
    }
    return off;
}

size_t tx_next(const char *s, size_t n, size_t off) { return off >= n ? n : cluster_end(s, n, off); }

size_t tx_prev(const char *s, size_t n, size_t off) {
    if (off > n) off = n;
    while (off > 0) {
        size_t p = off - 1;
        while (p > 0 && ((unsigned char)s[p] & 0xc0) == 0x80 && off - p < 4) p--;
        uint32_t cp;
        /* p must be where a whole character ends at off; else the byte before off stands alone */
        if ((size_t)tx_decode(s + p, n - p, &cp) != off - p) p = off - 1, tx_decode(s + p, n - p, &cp);
        off = p;
        if (tx_cpwidth(cp) != 0 || off == 0) break;
    }
    return off;
}

static int is_word(const char *s, size_t n, size_t off) {
    unsigned char c = (unsigned char)s[off];
    (void)n;
    return c >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

size_t tx_word_left(const char *s, size_t n, size_t off) {
    while (off > 0) {
        size_t p = tx_prev(s, n, off);
        if (is_word(s, n, p)) break;
        off = p;
    }
    while (off > 0) {
        size_t p = tx_prev(s, n, off);
        if (!is_word(s, n, p)) break;
        off = p;
    }
    return off;
}

size_t tx_word_right(const char *s, size_t n, size_t off) {
    while (off < n && !is_word(s, n, off)) off = tx_next(s, n, off);
    while (off < n && is_word(s, n, off)) off = tx_next(s, n, off);
    return off;
}

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\n'; }

size_t tx_rubout_left(const char *s, size_t n, size_t off) {
    while (off > 0 && is_blank(s[off - 1])) off--;
    while (off > 0 && !is_blank(s[off - 1])) off = tx_prev(s, n, off);
    return off;
}

/* ---- wrapping --------------------------------------------------------------------------------------------- */

typedef struct lines {
    tx_line *v;
    int n, cap;
} lines;

static int push(lines *L, size_t start, size_t end, int cols) {
    if (L->n == L->cap) {
        int cap = L->cap ? L->cap * 2 : 8;
        tx_line *v = realloc(L->v, sizeof *v * (size_t)cap);
        if (!v) return -1;
        L->v = v;
        L->cap = cap;
    }
    L->v[L->n++] = (tx_line){start, end, cols};
    return 0;
}

static size_t skip_blanks(const char *s, size_t n, size_t off) {
    while (off < n && (s[off] == ' ' || s[off] == '\t') && cluster_end(s, n, off) == off + 1) off++;
    return off;
}

int tx_wrap(const char *s, size_t n, int width, tx_line **out) {
    lines L = {0};
    if (width < 1) width = 1;
    size_t start = 0, i = 0, brk_end = 0, brk_next = 0;
    int cols = 0, have_brk = 0, ended = 0, seen = 0;
    while (i < n) {
        uint32_t cp;
        tx_decode(s + i, n - i, &cp);
        size_t j = cluster_end(s, n, i);
        int blank = (cp == ' ' || cp == '\t') && j == i + 1, w = tx_cpwidth(cp); /* a blank with a mark: no blank */
        if (cols + w <= width) {
            if (blank && seen) have_brk = 1, brk_end = i, brk_next = j; /* (leading blanks are no break) */
            seen |= !blank;
            cols += w;
            i = j;
            continue;
        }
        /* the character does not fit: end the line at the last blank, or here */
        size_t end = i, next = i;
        if (blank) {
            next = skip_blanks(s, n, i);
        } else if (have_brk) {
            end = brk_end, next = skip_blanks(s, n, brk_next);
        } else if (cols == 0) {
            end = next = j; /* wider than the whole line: alone on it */
        }
        while (seen && end > start && (s[end - 1] == ' ' || s[end - 1] == '\t')) end--; /* (a line of blanks stays) */
        if (push(&L, start, end, tx_width(s + start, end - start))) goto oom;
        start = i = next;
        cols = 0, have_brk = 0, seen = 0;
        if (start == n) {
            ended = 1;
            break;
        }
    }
    if (!ended && push(&L, start, n, cols)) goto oom;
    *out = L.v;
    return L.n;
oom:
    free(L.v);
    *out = NULL;
    return -1;
}

int tx_md_mark(const char *s, size_t n, int st) {
    if (n && s[0] == '`') return 1;
    if (!(st & TX_MD_CODE) && n >= 2 && s[0] == '*' && s[1] == '*') return 2;
    return 0;
}

int tx_md_scan(const char *s, size_t n, int st) {
    for (size_t i = 0; i < n;) {
        int k = tx_md_mark(s + i, n - i, st);
        if (!k) {
            i++;
            continue;
        }
        st ^= k == 1 ? TX_MD_CODE : TX_MD_BOLD;
        i += (size_t)k;
    }
    return st;
}

int tx_md_para(const char *s, size_t n) {
    size_t b = 0;
    while (b < n && b < 3 && s[b] == ' ') b++;
    if (n - b >= 3 && !memcmp(s + b, "```", 3)) return TX_MD_FENCE;
    size_t h = b;
    while (h < n && h - b < 7 && s[h] == '#') h++;
    if (h > b && h - b <= 6 && h < n && s[h] == ' ') return TX_MD_HEADING;
    return 0;
}

int tx_md_last_block(const char *s, size_t n, size_t *start, size_t *end) {
    int found = 0, open = 0;
    size_t body = 0;
    for (size_t p = 0; p <= n;) {
        size_t e = p;
        while (e < n && s[e] != '\n') e++;
        if (tx_md_para(s + p, e - p) == TX_MD_FENCE) {
            if (!open) body = e < n ? e + 1 : n;
            else *start = body, *end = p > body ? p - 1 : body, found = 1;
            open = !open;
        }
        if (e >= n) break;
        p = e + 1;
    }
    if (open) *start = body, *end = n, found = 1;
    return found;
}

size_t tx_base64(const char *s, size_t n, char *out) {
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)u[i] << 16 | (i + 1 < n ? (unsigned)u[i + 1] << 8 : 0) | (i + 2 < n ? u[i + 2] : 0);
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
        out[o++] = i + 1 < n ? b64[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? b64[v & 63] : '=';
    }
    return o;
}
