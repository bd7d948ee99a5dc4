/*
 * Byte-level BPE tokenizer built from GGUF metadata (tokenizer.ggml.model = "gpt2"), with the pre-tokenizer
 * named by tokenizer.ggml.pre, and chat templates (ChatML, Llama-3) recognised from tokenizer.chat_template.
 *
 * Pre-tokenizers (PCRE2 regexes, Unicode properties): "smollm" (digits one by one, then GPT-2's regex),
 * "gpt-2"/"gpt2"/"default" (GPT-2's regex; no tokenizer.ggml.pre means "default"), "llama-bpe"/"llama3"
 * (Llama-3's regex; a word that is itself a token is not merged), "qwen2" (Qwen2's regex).  No Unicode
 * normalisation is applied (llama.cpp applies none either).
 *
 * A tokenizer is immutable once loaded: any number of threads may encode with it at the same time.
 */
#ifndef DSA_TOKENIZER_H
#define DSA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

typedef struct dsa_tokenizer dsa_tokenizer;

/* A growable id vector. */
typedef struct {
    int32_t *ids;
    size_t n, cap;
} dsa_ids;
int dsa_ids_push(dsa_ids *v, int32_t id); /* 0 or -1 (out of memory) */
void dsa_ids_free(dsa_ids *v);

/* Build from the GGUF's tokenizer.* keys.  0, or -1 with a one-line message (e.g. "unsupported tokenizer
 * model 'llama' (supported: gpt2)"). */
int dsa_tok_load(const gguf_file *f, dsa_tokenizer **out, char *err, size_t errlen);
void dsa_tok_free(dsa_tokenizer *t);

int32_t dsa_tok_n_vocab(const dsa_tokenizer *t);
int32_t dsa_tok_bos(const dsa_tokenizer *t); /* -1 if none */
int32_t dsa_tok_eos(const dsa_tokenizer *t);
int dsa_tok_add_bos(const dsa_tokenizer *t); /* tokenizer.ggml.add_bos_token */
/* End of generation: eos, tokenizer.ggml.eot/eom_token_id, and the control tokens <|im_end|>, <|eot_id|>,
 * <|eom_id|>, <|endoftext|>, <|end_of_text|> when the vocabulary has them. */
int dsa_tok_is_eog(const dsa_tokenizer *t, int32_t id);
/* Id of the token whose text is exactly s (special tokens included), or -1.  The text is the vocabulary's
 * spelling as stored in the GGUF: byte-level for ordinary tokens ("Ġhello" for " hello"). */
int32_t dsa_tok_lookup(const dsa_tokenizer *t, const char *s);

/* Append the ids of text[0..len) to out (never a BOS: see dsa_tok_add_bos).  parse_special: recognise the
 * texts of control and user-defined tokens (e.g. "<|im_start|>") as those tokens, longest match first;
 * otherwise they are ordinary text.
 * Invalid UTF-8: every byte that is not part of a valid character is a word of its own and becomes its byte
 * token, so decode(encode(s)) == s for every byte string -- except bytes the vocabulary has no token for,
 * which are dropped, as HF tokenizers and llama.cpp drop them (SmolLM2 lacks 21: 0x04 0x06 0x13 0x14 0x16
 * 0x1d 0xc0 0xc1 0xf1 0xf2 0xf5..0xff).  0, or -1 on out-of-memory (out is then left as it was). */
int dsa_tok_encode(const dsa_tokenizer *t, const char *text, size_t len, int parse_special, dsa_ids *out);

/* The bytes a token stands for (byte-level mapping undone; special tokens give their text).  An invalid id
 * gives "" with *len = 0. */
const char *dsa_tok_piece(const dsa_tokenizer *t, int32_t id, size_t *len);

/* Streaming decoder: feed ids one by one; bytes of a UTF-8 character split across tokens are held back until
 * the character is whole.  A byte sequence that can never become valid UTF-8 is passed through as is. */
typedef struct {
    unsigned char pend[8];
    int npend;
} dsa_detok;
/* Writes the completed bytes into out (cap >= 8 + longest token; with less, the excess is lost); returns
 * the number of bytes written.  An invalid id adds nothing.  Start from a zeroed dsa_detok. */
size_t dsa_detok_push(const dsa_tokenizer *t, dsa_detok *st, int32_t id, char *out, size_t cap);
/* Whatever is still held back (an incomplete character at the end). */
size_t dsa_detok_flush(dsa_detok *st, char *out, size_t cap);

/* ---- chat templates ------------------------------------------------------------------------------------ */
typedef enum { DSA_CHAT_CHATML = 1, DSA_CHAT_LLAMA3 = 2 } dsa_chat_kind;

typedef struct {
    const char *role; /* "system", "user", "assistant" */
    const char *content;
} dsa_chat_msg;

typedef struct {
    dsa_chat_kind kind;
    char *default_system; /* the template's own default system prompt, or NULL */
} dsa_chat_template;

/* Recognise the family of a GGUF chat template.  0, or -1 with "unrecognised chat template (…)" in err. */
int dsa_chat_detect(const char *tmpl, size_t len, dsa_chat_template *out, char *err, size_t errlen);
void dsa_chat_template_free(dsa_chat_template *t);
const char *dsa_chat_kind_name(dsa_chat_kind k);

/* Render messages to prompt text (malloc'd, NUL-terminated; special tokens as text, so encode it with
 * parse_special = 1).  When the first message is not a system message and the template has a default
 * system prompt, it is inserted (not for an empty conversation, as in SmolLM2's template).
 * add_generation_prompt appends the assistant header.  Llama-3: the template's leading bos_token is not
 * rendered (encode adds no BOS; the caller adds it when dsa_tok_add_bos says so) and contents are trimmed
 * as the template's |trim does.  NULL role/content count as "".  NULL on OOM. */
char *dsa_chat_render(const dsa_chat_template *t, const dsa_chat_msg *msgs, int n, int add_generation_prompt);

#endif
