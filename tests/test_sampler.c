/*
 * Sampler: greedy and its tie rule, each filter (top-k, top-p, min-p) never lets through a token it should drop,
 * the repetition penalty follows llama.cpp's rule, a seed reproduces its stream, and draws follow the softmax
 * (a chi-square check at a fixed seed, so the test is deterministic).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"
#include "testutil.h"

#define V 8

static dsa_sampler_params params(float temp, int top_k, float top_p, float min_p, float rep, uint64_t seed) {
    dsa_sampler_params p;
    dsa_sampler_defaults(&p);
    p.temp = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.repeat_penalty = rep;
    p.seed = seed;
    return p;
}

static const float base[V] = {1.0f, 3.0f, 2.5f, 3.0f, -1.0f, 0.5f, 2.0f, -4.0f};

static int32_t draw(dsa_sampler *s) {
    float l[V];
    memcpy(l, base, sizeof l);
    return dsa_sampler_sample(s, l);
}

/* counts of n draws */
static void histogram(const dsa_sampler_params *p, int n, int *count) {
    dsa_sampler *s = dsa_sampler_new(p, V);
    memset(count, 0, V * sizeof *count);
    for (int i = 0; i < n; i++) count[draw(s)]++;
    dsa_sampler_free(s);
}

int main(void) {
    int count[V];

    /* greedy: argmax, the lower id on ties (ids 1 and 3 both have 3.0) */
    dsa_sampler_params p = params(0, 0, 1, 0, 1, 1);
    dsa_sampler *s = dsa_sampler_new(&p, V);
    CHECK(draw(s) == 1, "greedy picks the lowest id among equal maxima");
    dsa_sampler_free(s);

    /* top-k = 1 at any temperature is greedy */
    p = params(1.5f, 1, 1, 0, 1, 2);
    histogram(&p, 500, count);
    CHECK(count[1] == 500, "top-k 1 always gives the argmax (%d)", count[1]);

    /* top-k = 3 only ever gives the three best: 1, 3, 2 */
    p = params(2.0f, 3, 1, 0, 1, 3);
    histogram(&p, 3000, count);
    CHECK(count[1] + count[3] + count[2] == 3000 && count[1] && count[3] && count[2], "top-k 3 kept {1,3,2}");

    /* top-p: at temp 1 the probabilities are softmax(base); the nucleus is the smallest best-first prefix whose
     * mass reaches top_p, computed here from the same numbers */
    {
        double z = 0, pr[V];
        for (int i = 0; i < V; i++) z += exp(base[i]);
        for (int i = 0; i < V; i++) pr[i] = exp(base[i]) / z;
        int order[V] = {1, 3, 2, 6, 0, 5, 4, 7};
        double cum = 0;
        int keep = 0;
        while (cum < 0.8) cum += pr[order[keep++]];
        p = params(1.0f, 0, 0.8f, 0, 1, 4);
        histogram(&p, 5000, count);
        int outside = 0;
        for (int k = keep; k < V; k++) outside += count[order[k]];
        CHECK(outside == 0, "top-p 0.8 let %d draws outside its %d-token nucleus", outside, keep);
        for (int k = 0; k < keep; k++) CHECK(count[order[k]] > 0, "nucleus token %d never drawn", order[k]);

        /* min-p 0.3: tokens below 0.3 × p(best) never appear */
        p = params(1.0f, 0, 1, 0.3f, 1, 5);
        histogram(&p, 5000, count);
        for (int i = 0; i < V; i++)
            if (pr[i] < 0.3 * pr[1]) CHECK(count[i] == 0, "min-p let token %d through (%d)", i, count[i]);
            else CHECK(count[i] > 0, "min-p dropped token %d", i);

        /* no filters: the draws follow softmax(logits / T) (chi-square, 7 dof; 30 is far beyond p = 0.001) */
        p = params(1.0f, 0, 1, 0, 1, 6);
        int n = 20000;
        histogram(&p, n, count);
        double chi = 0;
        for (int i = 0; i < V; i++) {
            double e = n * pr[i];
            if (e >= 5) chi += (count[i] - e) * (count[i] - e) / e;
        }
        CHECK(chi < 30, "draws do not follow softmax: chi-square %.1f", chi);
        /* temperature 0.5 sharpens: the top two get more than at T=1 */
        int c1 = count[1] + count[3];
        p = params(0.5f, 0, 1, 0, 1, 6);
        histogram(&p, n, count);
        CHECK(count[1] + count[3] > c1, "lower temperature did not sharpen (%d vs %d)", count[1] + count[3], c1);
    }

    /* same seed → same stream; another seed → another stream */
    {
        p = params(1.0f, 0, 1, 0, 1, 42);
        dsa_sampler *a = dsa_sampler_new(&p, V), *b = dsa_sampler_new(&p, V);
        p.seed = 43;
        dsa_sampler *c = dsa_sampler_new(&p, V);
        int same = 1, diff = 0;
        for (int i = 0; i < 200; i++) {
            int32_t x = draw(a), y = draw(b), z = draw(c);
            same &= x == y;
            diff |= x != z;
        }
        CHECK(same, "the same seed gave different streams");
        CHECK(diff, "seeds 42 and 43 gave the same 200 draws");
        dsa_sampler_free(a);
        dsa_sampler_free(b);
        dsa_sampler_free(c);
    }

    /* repetition penalty: positive logits are divided, negative multiplied, each recent id once */
    {
        p = params(0, 0, 1, 0, 2.0f, 1);
        p.repeat_last_n = 4;
        s = dsa_sampler_new(&p, V);
        dsa_sampler_accept(s, 1);
        dsa_sampler_accept(s, 1);
        dsa_sampler_accept(s, 4);
        float l[V];
        memcpy(l, base, sizeof l);
        int32_t id = dsa_sampler_sample(s, l);
        CHECK(l[1] == 1.5f, "penalised positive logit %g, want 1.5 (once, not twice)", l[1]);
        CHECK(l[4] == -2.0f, "penalised negative logit %g, want -2", l[4]);
        CHECK(id == 3, "after penalising id 1 the greedy pick is 3 (got %d)", id);
        /* the window slides: after 4 more accepts id 1 is no longer penalised */
        for (int i = 0; i < 4; i++) dsa_sampler_accept(s, 7);
        memcpy(l, base, sizeof l);
        CHECK(dsa_sampler_sample(s, l) == 1 && l[1] == 3.0f, "penalty outlived its window");
        dsa_sampler_free(s);
    }
    return tu_finish("test_sampler");
}
