/*
 * Sampler.  Order (llama.cpp's default chain, minus what we do not offer): repetition penalty → top-k →
 * temperature → softmax → top-p → min-p → draw.  temp == 0 is greedy argmax on the penalised logits.
 * The PRNG is xoshiro256** seeded through splitmix64, so a seed gives the same stream on every machine.
 */
#include "sampler.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    float l;
    int32_t id;
} cand;

struct dsa_sampler {
    dsa_sampler_params p;
    int n_vocab;
    uint64_t s[4];
    int32_t *recent; /* ring of the last repeat_last_n ids */
    int n_recent, head;
    cand *c;         /* candidates, best first */
    float *prob;
};

void dsa_sampler_defaults(dsa_sampler_params *p) {
    p->temp = 0.7f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->min_p = 0.05f;
    p->repeat_penalty = 1.1f;
    p->repeat_last_n = 64;
    p->seed = 0x5EEDull;
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next_u64(dsa_sampler *s) {
    uint64_t *st = s->s, r = rotl(st[1] * 5, 7) * 9, t = st[1] << 17;
    st[2] ^= st[0];
    st[3] ^= st[1];
    st[1] ^= st[2];
    st[0] ^= st[3];
    st[2] ^= t;
    st[3] = rotl(st[3], 45);
    return r;
}

static double next_unit(dsa_sampler *s) { return (double)(next_u64(s) >> 11) * 0x1.0p-53; }

dsa_sampler *dsa_sampler_new(const dsa_sampler_params *p, int n_vocab) {
    dsa_sampler *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = *p;
    if (s->p.repeat_last_n < 0) s->p.repeat_last_n = 0;
    s->n_vocab = n_vocab;
    uint64_t seed = p->seed;
    for (int i = 0; i < 4; i++) s->s[i] = dsa_splitmix(&seed);
    s->recent = malloc(((size_t)s->p.repeat_last_n + 1) * sizeof *s->recent);
    s->c = malloc((size_t)n_vocab * sizeof *s->c);
    s->prob = malloc((size_t)n_vocab * sizeof *s->prob);
    if (!s->recent || !s->c || !s->prob) {
        dsa_sampler_free(s);
        return NULL;
    }
    return s;
}

void dsa_sampler_free(dsa_sampler *s) {
    if (!s) return;
    free(s->recent);
    free(s->c);
    free(s->prob);
    free(s);
}

void dsa_sampler_accept(dsa_sampler *s, int32_t id) {
    int n = s->p.repeat_last_n;
    if (n == 0) return;
    s->recent[s->head] = id;
    s->head = (s->head + 1) % n;
    if (s->n_recent < n) s->n_recent++;
}

/* better first: higher logit, then lower id, so results never depend on the sort's order */
static int better(cand a, cand b) { return a.l > b.l || (a.l == b.l && a.id < b.id); }

static int cand_cmp(const void *a, const void *b) {
    cand x = *(const cand *)a, y = *(const cand *)b;
    return better(x, y) ? -1 : better(y, x) ? 1 : 0;
}

/* Keep the k best of c[0..n) in c[0..k), sorted: a min-heap of size k makes it O(n log k). */
static void top_k_sorted(cand *c, int n, int k) {
    for (int i = 1; i < k; i++) /* heapify c[0..k) with the worst on top */
        for (int j = i; j > 0 && better(c[(j - 1) / 2], c[j]); j = (j - 1) / 2) {
            cand t = c[j]; c[j] = c[(j - 1) / 2]; c[(j - 1) / 2] = t;
        }
    for (int i = k; i < n; i++) {
        if (!better(c[i], c[0])) continue;
        c[0] = c[i];
        for (int j = 0;;) { /* sift down */
            int a = 2 * j + 1, b = a + 1, w = j;
            if (a < k && better(c[w], c[a])) w = a;
            if (b < k && better(c[w], c[b])) w = b;
            if (w == j) break;
            cand t = c[j]; c[j] = c[w]; c[w] = t;
            j = w;
        }
    }
    qsort(c, (size_t)k, sizeof *c, cand_cmp);
}

int32_t dsa_sampler_sample(dsa_sampler *s, float *logits) {
    int V = s->n_vocab;
    const dsa_sampler_params *p = &s->p;
    if (p->repeat_penalty != 1.0f && s->n_recent) {
        /* each distinct recent id is penalised once: positive logits divided, negative multiplied */
        for (int i = 0; i < s->n_recent; i++) {
            int32_t id = s->recent[i];
            if (id < 0 || id >= V) continue;
            int seen = 0;
            for (int j = 0; j < i; j++) seen |= s->recent[j] == id;
            if (seen) continue;
            logits[id] = logits[id] > 0 ? logits[id] / p->repeat_penalty : logits[id] * p->repeat_penalty;
        }
    }
    if (p->temp <= 0.0f) {
        int32_t best = 0;
        for (int i = 1; i < V; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }

    int n = p->top_k > 0 && p->top_k < V ? p->top_k : V;
    for (int i = 0; i < V; i++) s->c[i] = (cand){logits[i], i};
    top_k_sorted(s->c, V, n);

    double mx = s->c[0].l / p->temp, sum = 0;
    for (int i = 0; i < n; i++) {
        double e = exp(s->c[i].l / p->temp - mx);
        s->prob[i] = (float)e;
        sum += e;
    }
    for (int i = 0; i < n; i++) s->prob[i] = (float)(s->prob[i] / sum);

    if (p->top_p < 1.0f) { /* smallest prefix whose mass reaches top_p */
        double cum = 0;
        for (int i = 0; i < n; i++) {
            cum += s->prob[i];
            if (cum >= p->top_p) {
                n = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0.0f) { /* drop tokens less likely than min_p × the best one */
        float floor = p->min_p * s->prob[0];
        int k = 1;
        while (k < n && s->prob[k] >= floor) k++;
        n = k;
    }
    double total = 0;
    for (int i = 0; i < n; i++) total += s->prob[i];
    double r = next_unit(s) * total, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += s->prob[i];
        if (r < acc) return s->c[i].id;
    }
    return s->c[n - 1].id;
}
