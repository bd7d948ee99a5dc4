/* Private to tools/: what the dsa subcommands in several files share (dsa.c has main and the common helpers). */
#ifndef DSA_TOOL_H
#define DSA_TOOL_H

#include <jansson.h>
#include <stddef.h>

#include "dsa.h"
#include "model.h"
#include "sampler.h"
#include "train.h"

#define DEFAULT_MODEL_FILE "SmolLM2-135M-Instruct.Q4_1.gguf"

typedef struct {
    const char *model;
    const char *indexer;
    const char *system;
    int dense, topk_dsa, n_predict, chat, threads, json, top, n_ctx, no_special, truncate;
    int prompt_tokens, gen_tokens, reps;
    dsa_backend backend;
    int batch; /* bench: sequences decoded together */
    dsa_sampler_params sp;
    /* train-indexer */
    const char *corpus, *heldout, *out, *checkpoint, *init, *log, *plot;
    int heads, dim, rope_dims, seq_len, rows, sparse_stage, ckpt_every, heldout_every;
    int dense_layers; /* -1: the sidecar's */
    long max_tokens;
    double minutes, lr;
    /* eval and bench */
    const char *contexts, *ks, *texts, *report;
    int n_texts, passkey_trials;
    /* slice-model and synth-model */
    const char *like, *indexer_out;
    int layers; /* 0: not given */
    char **argv; /* the command line, for provenance */
    int argc;
} opts;

typedef struct {
    char *p;
    size_t n, cap;
} buf;

extern int tty_progress;
__attribute__((format(printf, 2, 3), noreturn)) void die(int code, const char *fmt, ...);
double now_s(void);
void buf_put(buf *b, const char *s, size_t n);
json_t *json_text(const char *s, size_t n);
void print_json(json_t *j);
const char *default_model(void);
const char *cache_dir(void); /* $XDG_CACHE_HOME/dsachat or ~/.cache/dsachat */
dsa_model *load_model(const opts *o);
/* The indexer load_model attached for o (NULL: dense) */
const dsa_indexer *tool_indexer(void);
dsa_ctx *new_ctx(dsa_model *m, const opts *o);
int parse_int(const char *s, const char *what, int lo, int hi);
float parse_float(const char *s, const char *what, float lo, float hi);

int cmd_train(const opts *o);
int cmd_eval(const opts *o);
/* dsa_models.c: small or synthetic models of a real model's shape (for GPU test machines) */
int cmd_slice_model(const opts *o);
int cmd_synth_model(const opts *o);

#endif
