/*
 * Byte-level BPE tokenizer built from GGUF metadata (tokenizer.ggml.model = "gpt2"), with the pre-tokenizer
 * named by tokenizer.ggml.pre, and chat templates (ChatML, Llama-3) recognised from tokenizer.chat_template.
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
/* End of generation: eos, eot (<|im_end|>, <|eot_id|>, …). */
int dsa_tok_is_eog(const dsa_tokenizer *t, int32_t id);
/* Id of the token whose text is exactly s (special tokens included), or -1. */
int32_t dsa_tok_lookup(const dsa_tokenizer *t, const char *s);

/* Append the ids of text[0..len) to out.  parse_special: recognise special/control token texts
 * (e.g. "<|im_start|>") as those tokens; otherwise they are ordinary text.
 * Invalid UTF-8 bytes are tokenised as their own byte tokens (byte-level BPE covers all 256 bytes), so
 * decode(encode(s)) == s for every byte string.  0, or -1 on out-of-memory. */
int dsa_tok_encode(const dsa_tokenizer *t, const char *text, size_t len, int parse_special, dsa_ids *out);

/* The bytes a token stands for (byte-level mapping undone; special tokens give their text). */
const char *dsa_tok_piece(const dsa_tokenizer *t, int32_t id, size_t *len);

/* Streaming decoder: feed ids one by one; bytes of a UTF-8 character split across tokens are held back until
 * the character is whole.  A byte sequence that can never become valid UTF-8 is passed through as is. */
typedef struct {
    unsigned char pend[8];
    int npend;
} dsa_detok;
/* Writes the completed bytes into out (cap >= 8 + longest token); returns the number of bytes written. */
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
 * system prompt, it is inserted.  add_generation_prompt appends the assistant header.  NULL on OOM. */
char *dsa_chat_render(const dsa_chat_template *t, const dsa_chat_msg *msgs, int n, int add_generation_prompt);

#endif
