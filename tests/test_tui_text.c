/*
 * dsachat's text layout (tui/text.c), which the TUI draws with: UTF-8 decoding (invalid bytes as U+FFFD), display
 * widths with wcwidth semantics (wide CJK and emoji 2, combining marks 0), cursor and word motions that never split
 * a character or strip a combining mark from its base, and word wrapping:
 *   - fixed cases: ASCII at several widths, words longer than the line, CJK and emoji that do not fit at a line's
 *     end, a combining mark at a full line's end, leading blanks kept, blanks at a break dropped, empty text;
 *   - properties over 20000 random paragraphs built from ASCII words, CJK, emoji, combining sequences, invalid
 *     bytes and blank runs, at widths 1..30: every line fits (unless it is one character wider than the width),
 *     starts and ends on cluster boundaries, reports its true width, is not empty, and the lines cover the text
 *     in order with only blanks between them; no line could have taken the next word (greedy);
 *   - Markdown highlighting: which bytes are markup, the inline state a text leaves (the same when it is scanned
 *     in pieces, as a wrapped paragraph's lines are), fences and headings.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "text.h"

static int nwrap(const char *s, int width, tx_line **lines) { return tx_wrap(s, strlen(s), width, lines); }

/* The wrapped lines of s joined with '|'. */
static const char *wrapped(const char *s, int width) {
    static char out[1024];
    tx_line *L;
    int n = nwrap(s, width, &L);
    out[0] = 0;
    for (int i = 0; i < n; i++) {
        if (i) strcat(out, "|");
        strncat(out, s + L[i].start, L[i].end - L[i].start);
    }
    free(L);
    return out;
}

static void test_decode_width(void) {
    uint32_t cp;
    CHECK(tx_decode("A", 1, &cp) == 1 && cp == 'A', "ascii");
    CHECK(tx_decode("é", 2, &cp) == 2 && cp == 0xe9, "2-byte");
    CHECK(tx_decode("你", 3, &cp) == 3 && cp == 0x4f60, "3-byte");
    CHECK(tx_decode("😀", 4, &cp) == 4 && cp == 0x1f600, "4-byte");
    const char *bad[] = {"\xff", "\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe4\xbd", "\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(tx_decode(bad[i], strlen(bad[i]), &cp) == 1 && cp == 0xfffd, "invalid sequence %zu", i);
    CHECK(tx_width("hello", 5) == 5, "ascii width");
    CHECK(tx_width("你好", 6) == 4, "CJK are wide: %d", tx_width("你好", 6));
    CHECK(tx_width("😀", 4) == 2, "emoji are wide: %d", tx_width("😀", 4));
    CHECK(tx_width("e\xcc\x81", 3) == 1, "a combining acute accent is zero-width");
    CHECK(tx_width("\xe1\x84\x80\xe1\x85\xa1", 6) == 2, "a Hangul jamo sequence: wide + zero-width");
    CHECK(tx_width("\xff\x01\t", 3) == 3, "invalid byte and controls: one column each");
    CHECK(tx_glyph(0x07) == 0xfffd && tx_glyph('a') == 'a' && tx_glyph(0x4f60) == 0x4f60, "glyphs");
    CHECK(tx_width("", 0) == 0, "empty");
}

static void test_motion(void) {
    const char *s = "ae\xcc\x81x你😀";
    size_t n = strlen(s);
    CHECK(tx_next(s, n, 0) == 1, "next a");
    CHECK(tx_next(s, n, 1) == 4, "next keeps the accent with e: %zu", tx_next(s, n, 1));
    CHECK(tx_next(s, n, 4) == 5 && tx_next(s, n, 5) == 8 && tx_next(s, n, 8) == 12 && tx_next(s, n, 12) == 12,
          "next over x, CJK, emoji, end");
    CHECK(tx_prev(s, n, 12) == 8 && tx_prev(s, n, 8) == 5 && tx_prev(s, n, 5) == 4, "prev over emoji, CJK, x");
    CHECK(tx_prev(s, n, 4) == 1, "prev skips the accent to its base: %zu", tx_prev(s, n, 4));
    CHECK(tx_prev(s, n, 1) == 0 && tx_prev(s, n, 0) == 0, "prev to the start");
    const char *b = "ab\xff" "c";
    CHECK(tx_prev(b, 4, 3) == 2 && tx_next(b, 4, 2) == 3, "an invalid byte is one character");
    const char *w = "hello, big world";
    size_t wn = strlen(w);
    CHECK(tx_word_left(w, wn, wn) == 11, "word left");
    CHECK(tx_word_left(w, wn, 11) == 7, "word left over blank");
    CHECK(tx_word_left(w, wn, 7) == 0, "word left over comma");
    CHECK(tx_word_right(w, wn, 0) == 5 && tx_word_right(w, wn, 5) == 10, "word right");
    CHECK(tx_rubout_left(w, wn, wn) == 11 && tx_rubout_left(w, wn, 7) == 0, "Ctrl-W: blank-delimited words");
    CHECK(tx_word_left("日本 語", strlen("日本 語"), strlen("日本 語")) == 7, "non-ASCII counts as a word");
}

static void test_wrap_cases(void) {
    CHECK(!strcmp(wrapped("hello world foo", 11), "hello world|foo"), "%s", wrapped("hello world foo", 11));
    CHECK(!strcmp(wrapped("hello world foo", 5), "hello|world|foo"), "%s", wrapped("hello world foo", 5));
    CHECK(!strcmp(wrapped("hello world foo", 100), "hello world foo"), "fits");
    CHECK(!strcmp(wrapped("abcdefghij", 4), "abcd|efgh|ij"), "long word: %s", wrapped("abcdefghij", 4));
    CHECK(!strcmp(wrapped("a abcdefghij", 4), "a|abcd|efgh|ij"), "%s", wrapped("a abcdefghij", 4));
    CHECK(!strcmp(wrapped("你好世界", 5), "你好|世界"), "CJK: a wide char never straddles: %s", wrapped("你好世界", 5));
    CHECK(!strcmp(wrapped("你好世界", 4), "你好|世界"), "%s", wrapped("你好世界", 4));
    CHECK(!strcmp(wrapped("你好", 1), "你|好"), "wider than the width: alone: %s", wrapped("你好", 1));
    CHECK(!strcmp(wrapped("😀😀😀", 5), "😀😀|😀"), "emoji: %s", wrapped("😀😀😀", 5));
    CHECK(!strcmp(wrapped("ab 你好", 4), "ab|你好"), "%s", wrapped("ab 你好", 4));
    CHECK(!strcmp(wrapped("cafe\xcc\x81 bar", 4), "cafe\xcc\x81|bar"), "a combining mark at a full line's end stays: %s",
          wrapped("cafe\xcc\x81 bar", 4));
    CHECK(!strcmp(wrapped("abcde\xcc\x81" "f", 5), "abcde\xcc\x81|f"), "combining mark not split off: %s",
          wrapped("abcde\xcc\x81" "f", 5));
    CHECK(!strcmp(wrapped("  indented", 20), "  indented"), "leading blanks kept");
    CHECK(!strcmp(wrapped(" 好世", 3), " 好|世"), "a leading blank is no place to break: %s", wrapped(" 好世", 3));
    CHECK(!strcmp(wrapped("     x", 3), "   |x"), "a line of blanks is not emptied: %s", wrapped("     x", 3));
    CHECK(!strcmp(wrapped("one    two", 5), "one|two"), "blanks at a break dropped: %s", wrapped("one    two", 5));
    tx_line *L;
    int n = nwrap("", 10, &L);
    CHECK(n == 1 && L[0].start == 0 && L[0].end == 0 && L[0].cols == 0, "empty text is one empty line");
    free(L);
    n = nwrap("ab 你好 😀x", 7, &L);
    CHECK(n == 2 && L[0].cols == 7 && L[1].cols == 3, "cols: n=%d %d %d", n, n > 0 ? L[0].cols : -1,
          n > 1 ? L[1].cols : -1);
    free(L);
}

/* ---- properties ----------------------------------------------------------------------------------------------- */

static const char *pieces[] = {"a", "word", "longerwordthanmost", " ", " ", "  ", "你", "好世", "😀", "🎉x",
                               "e\xcc\x81", "\xcc\x81", "\xff", "z", "é", "\t", "ok,", "\xe1\x84\x80\xe1\x85\xa1"};

/* The characters of a line that take columns. */
static int visible(const char *s, tx_line l) {
    int k = 0;
    for (size_t p = l.start; p < l.end; p = tx_next(s, l.end, p)) k += tx_width(s + p, tx_next(s, l.end, p) - p) > 0;
    return k;
}

static int is_boundary(const char *s, size_t n, size_t off) {
    /* a cluster boundary: reachable by tx_next from 0 */
    size_t p = 0;
    while (p < off) p = tx_next(s, n, p);
    return p == off;
}

static void test_wrap_properties(void) {
    uint64_t rng = 42;
    char s[512];
    for (int iter = 0; iter < 20000; iter++) {
        size_t n = 0;
        int np = (int)(tu_splitmix(&rng) % 24);
        for (int k = 0; k < np; k++) {
            const char *p = pieces[tu_splitmix(&rng) % (sizeof pieces / sizeof *pieces)];
            if (n + strlen(p) >= sizeof s) break;
            memcpy(s + n, p, strlen(p));
            n += strlen(p);
        }
        s[n] = 0;
        int width = 1 + (int)(tu_splitmix(&rng) % 30);
        tx_line *L;
        int nl = tx_wrap(s, n, width, &L);
        CHECK(nl >= 1, "at least one line");
        if (nl < 1) return;
        size_t prev_end = 0;
        int bad = 0;
        for (int i = 0; i < nl && !bad; i++) {
            tx_line l = L[i];
            int w = tx_width(s + l.start, l.end - l.start);
            bad |= l.start > l.end || l.end > n || l.start < prev_end;
            bad |= w != l.cols;
            bad |= l.cols > width && visible(s, l) != 1; /* too wide, and not a lone character */
            bad |= !is_boundary(s, n, l.start) || !is_boundary(s, n, l.end);
            bad |= l.start == l.end && n > 0; /* no empty line, except for an empty paragraph */
            for (size_t k = prev_end; k < l.start && !bad; k++) bad |= s[k] != ' ' && s[k] != '\t';
            /* greedy: what starts the next line (its whole first word after a blank break, its first character
             * after a break inside a word) would not have fit on this one */
            if (i + 1 < nl && !bad) {
                tx_line m = L[i + 1];
                int gap = tx_width(s + l.end, m.start - l.end);
                size_t e = gap ? m.start : tx_next(s, n, m.start);
                while (gap && e < n && !((s[e] == ' ' || s[e] == '\t') && tx_next(s, n, e) == e + 1))
                    e = tx_next(s, n, e); /* (a blank carrying a combining mark is no blank) */
                if (e > m.start) bad |= l.cols + gap + tx_width(s + m.start, e - m.start) <= width;
            }
            prev_end = l.end;
        }
        for (size_t k = prev_end; k < n && !bad; k++) bad |= s[k] != ' ' && s[k] != '\t';
        CHECK(!bad, "wrap property broken for \"%s\" at width %d", s, width);
        free(L);
        if (bad) return;
    }
}

/* Markdown highlighting: which bytes are markup, the inline state after a text, what a paragraph is. */
static void test_markdown(void) {
    CHECK(tx_md_mark("`x", 2, 0) == 1 && tx_md_mark("`x", 2, TX_MD_CODE) == 1, "a backtick opens and closes code");
    CHECK(tx_md_mark("**x", 3, 0) == 2 && tx_md_mark("**x", 3, TX_MD_BOLD) == 2, "** opens and closes bold");
    CHECK(tx_md_mark("**x", 3, TX_MD_CODE) == 0, "** inside code is text");
    CHECK(tx_md_mark("*x", 2, 0) == 0 && tx_md_mark("*", 1, 0) == 0 && tx_md_mark("", 0, 0) == 0, "a lone *");
    const char *s = "a **b** `c **d` e **f";
    CHECK(tx_md_scan(s, strlen(s), 0) == TX_MD_BOLD, "state after '%s': %d", s, tx_md_scan(s, strlen(s), 0));
    CHECK(tx_md_scan("`**`", 4, 0) == 0, "bold marks inside code do not count");
    CHECK(tx_md_scan("**a `b", 6, 0) == (TX_MD_BOLD | TX_MD_CODE), "bold and code at once");
    /* the state runs through a paragraph's lines: scanning it in pieces gives the state of one scan */
    const char *p = "one **two three** four `five six` seven **eight";
    size_t n = strlen(p);
    int bad = 0;
    for (size_t cut = 0; cut <= n; cut++) {
        int part = tx_md_scan(p + cut, n - cut, tx_md_scan(p, cut, 0));
        int at_mark = cut > 0 && p[cut - 1] == '*' && p[cut] == '*'; /* a cut inside "**" splits the mark */
        bad += !at_mark && part != tx_md_scan(p, n, 0);
    }
    CHECK(bad == 0, "%d cuts changed the state", bad);
    CHECK(tx_md_para("```c", 4) == TX_MD_FENCE && tx_md_para("   ```", 6) == TX_MD_FENCE, "fences");
    CHECK(tx_md_para("    ```", 7) == 0 && tx_md_para("``", 2) == 0 && tx_md_para("a ```", 5) == 0, "not fences");
    CHECK(tx_md_para("# T", 3) == TX_MD_HEADING && tx_md_para("###### T", 8) == TX_MD_HEADING, "headings");
    CHECK(tx_md_para("####### T", 9) == 0 && tx_md_para("#T", 2) == 0 && tx_md_para("#", 1) == 0 &&
              tx_md_para("", 0) == 0,
          "not headings");
}

/* /copy's helpers: the last fenced block of a reply, base64 (RFC 4648's test vectors). */
static const char *last_block(const char *s) {
    static char out[256];
    size_t a, b;
    if (!tx_md_last_block(s, strlen(s), &a, &b)) return "(none)";
    snprintf(out, sizeof out, "%.*s", (int)(b - a), s + a);
    return out;
}

static void test_copy_helpers(void) {
    static const struct {
        const char *in, *want;
    } blocks[] = {
        {"no code here", "(none)"},
        {"Use:\n```c\nint x;\nreturn x;\n```\nDone.", "int x;\nreturn x;"},
        {"```\na\n```\nthen\n```py\nb = 1\n```", "b = 1"},
        {"```\n```", ""},
        {"text\n```sh\nls -l\nrm x", "ls -l\nrm x"}, /* left open: to the end */
        {"```", ""},
        {"say ```inline``` only", "(none)"}, /* a fence must start its line */
        {"  ```\n  indented\n  ```", "  indented"},
    };
    for (size_t i = 0; i < sizeof blocks / sizeof *blocks; i++)
        CHECK(!strcmp(last_block(blocks[i].in), blocks[i].want), "last block of '%s': '%s', want '%s'", blocks[i].in,
              last_block(blocks[i].in), blocks[i].want);
    static const char *b64[][2] = {{"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},        {"foo", "Zm9v"},
                                   {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}};
    for (size_t i = 0; i < sizeof b64 / sizeof *b64; i++) {
        char out[16];
        size_t n = tx_base64(b64[i][0], strlen(b64[i][0]), out);
        CHECK(n == strlen(b64[i][1]) && !memcmp(out, b64[i][1], n), "base64 of '%s'", b64[i][0]);
    }
    char hi[3] = {(char)0xff, (char)0xfe, (char)0x80}, out[4];
    CHECK(tx_base64(hi, 3, out) == 4 && !memcmp(out, "//6A", 4), "base64 of high bytes: %.4s", out);
}

int main(void) {
    if (tx_locale_init()) {
        fprintf(stderr, "test_tui_text: no UTF-8 locale (C.UTF-8) on this system\n");
        return 77;
    }
    test_decode_width();
    test_motion();
    test_wrap_cases();
    test_wrap_properties();
    test_markdown();
    test_copy_helpers();
    return tu_finish("test_tui_text");
}
