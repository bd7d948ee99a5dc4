/*
 * Text layout for dsachat without curses: UTF-8 decoding, display widths, cursor motions and word wrapping.
 *
 * Widths follow wcwidth(3) in a UTF-8 locale, which is what ncursesw and the terminal use, so that a line laid out
 * here fills exactly the columns it is drawn in: wide CJK characters and emoji take 2 columns, combining marks and
 * other zero-width characters 0, and a character the terminal cannot show (a control character, an invalid byte,
 * an unassigned code point) is drawn as U+FFFD in 1 column.  Call tx_locale_init() once before anything else.
 * Offsets are byte offsets into the UTF-8 text; none of these functions splits a character, nor separates a
 * combining mark from the character it follows.
 */
#ifndef DSACHAT_TEXT_H
#define DSACHAT_TEXT_H

#include <stddef.h>
#include <stdint.h>

/* Make LC_CTYPE a UTF-8 locale (the environment's, else C.UTF-8).  0 when it is one, -1 when none was found. */
int tx_locale_init(void);

/* Decode the character at s[0..n) (n >= 1) into *cp; returns its length in bytes.  A byte that does not start a
 * valid UTF-8 sequence (stray, overlong, surrogate, > U+10FFFF, truncated) decodes as U+FFFD of length 1. */
int tx_decode(const char *s, size_t n, uint32_t *cp);

/* Columns of one character: 0, 1 or 2; and what to draw for it (U+FFFD for what cannot be shown). */
int tx_cpwidth(uint32_t cp);
uint32_t tx_glyph(uint32_t cp);

/* Columns of s[0..n). */
int tx_width(const char *s, size_t n);

/* The next / previous character boundary from off, keeping zero-width characters with the one before them. */
size_t tx_next(const char *s, size_t n, size_t off);
size_t tx_prev(const char *s, size_t n, size_t off);
/* Word motions (a word is letters and digits, any non-ASCII character counting as a letter): the start of the word
 * before off, the end of the word after off; and the start of the blank-delimited word before off (Ctrl-W). */
size_t tx_word_left(const char *s, size_t n, size_t off);
size_t tx_word_right(const char *s, size_t n, size_t off);
size_t tx_rubout_left(const char *s, size_t n, size_t off);

/* One display line of a wrapped paragraph: the bytes [start, end) shown in cols columns. */
typedef struct tx_line {
    size_t start, end;
    int cols;
} tx_line;

/* Wrap the paragraph s[0..n) (it should hold no newline) to width columns (>= 1): lines break after blanks where
 * they can, inside a word longer than the line where they must, and the blanks at a break are not shown.  A
 * character wider than the width gets a line of its own.  *lines (malloc'd) receives the lines; returns their
 * number (at least 1: an empty paragraph is one empty line), or -1 when out of memory. */
int tx_wrap(const char *s, size_t n, int width, tx_line **lines);

/* Markdown highlighting.  The markup stays in the text (drawn dimmed), so the layout is the text's own; these say
 * how to style it.  The inline state at a point of a paragraph (a line of the text; each starts with none): */
enum { TX_MD_BOLD = 1, TX_MD_CODE = 2 };
/* Bytes of markup at s[0..n) in state st: 1 for a backtick (it opens or closes code), 2 for "**" outside code
 * (bold), else 0. */
int tx_md_mark(const char *s, size_t n, int st);
/* The inline state after s[0..n), from st. */
int tx_md_scan(const char *s, size_t n, int st);
/* What a paragraph is: TX_MD_FENCE for a line starting with ``` (it opens or closes a code block, and is code
 * itself), TX_MD_HEADING for "# " to "###### ", else 0; up to 3 leading blanks, as in Markdown. */
enum { TX_MD_FENCE = 1, TX_MD_HEADING = 2 };
int tx_md_para(const char *s, size_t n);
/* The last fenced code block of s[0..n): its lines between the fences (without them, and without the newline
 * before the closing fence) as s[*start, *end); a block left open runs to the end.  0 when s has none. */
int tx_md_last_block(const char *s, size_t n, size_t *start, size_t *end);
/* s[0..n) in base64 (RFC 4648, padded) into out, which holds 4·⌈n/3⌉ bytes; returns that length. */
size_t tx_base64(const char *s, size_t n, char *out);

#endif
