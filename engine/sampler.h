/*
 * Token sampler: repetition penalty, then temperature (0 = greedy), top-k, top-p, min-p; seeded PRNG so the
 * same seed gives the same text.
 */
#ifndef DSA_SAMPLER_H
#define DSA_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    float temp;       /* 0: greedy (argmax, lowest id on ties) */
    int top_k;        /* 0: off */
    float top_p;      /* 1: off */
    float min_p;      /* 0: off */
    float repeat_penalty; /* 1: off; applied to the last repeat_last_n tokens (llama.cpp's rule) */
    int repeat_last_n;
    uint64_t seed;
} dsa_sampler_params;

void dsa_sampler_defaults(dsa_sampler_params *p);

typedef struct dsa_sampler dsa_sampler;
dsa_sampler *dsa_sampler_new(const dsa_sampler_params *p, int n_vocab);
void dsa_sampler_free(dsa_sampler *s);
/* Note that id was emitted or fed (for the repetition penalty). */
void dsa_sampler_accept(dsa_sampler *s, int32_t id);
/* Pick the next token from logits[0..n_vocab) (logits are modified). */
int32_t dsa_sampler_sample(dsa_sampler *s, float *logits);

#endif
