/*
 * The forward pass against two independent yardsticks (tests/fixtures/forward.json, made by
 * scripts/ref/make_forward_fixtures.py):
 *
 *   1. a float64 numpy reference (scripts/ref/forward_ref.py), at the last position of every prompt:
 *      max |logit - reference| over the whole vocabulary <= LOGIT_TOL, and the same argmax (see NEAR_TIE);
 *   2. llama.cpp on the same GGUF: teacher-forced argmax at every position of every prompt, and its 64-token
 *      greedy continuation of every prompt.
 *
 * Why the llama.cpp checks look the way they do (measured with the fixture's prompts, llama.cpp 0.3.36 via
 * llama-cpp-python, 2 threads):
 *   - llama.cpp rounds the input of every quantised matmul to 8-bit blocks (Q8_0/Q8_1) and keeps K/V in f16.  On
 *     SmolLM2-135M that noise moves the logits by 0.2-0.35 RMS and up to ~1 at a last position (up to 3.9 at
 *     some position) away from the float64 reference.  A float64 emulation of that rounding (forward_ref.py
 *     emulate_q8) lands at the same distance from the reference AND from llama.cpp: two implementations with
 *     8-bit activations differ by a fresh draw of that noise, however carefully either is written (measured
 *     once: a 1e-7 relative change of the embeddings alone moves the emulated logits by 0.33 RMS).  The numbers below come
 *     from `scripts/ref/forward_ref.py --noise tests/fixtures/forward.json`.
 *   - So argmax disagreements with llama.cpp happen, but only where llama.cpp's own top1 - top2 gap is small:
 *     the exact float64 reference agrees with llama.cpp's teacher-forced argmax at 96.2% of all positions, the
 *     8-bit emulation at 95.6%, and every disagreement of either sits at a llama.cpp gap below 0.44.  Greedy
 *     continuations equal llama.cpp's in full for only 3 (reference) and 5 (emulation) of the 11 prompts, and
 *     every divergence starts at a step where llama.cpp's gap is below 0.34.
 *   Hence NEAR_TIE = 0.5: argmax agreement with llama.cpp is required (>= 99%) at positions where llama.cpp's
 *   gap is >= NEAR_TIE, all-position agreement must stay above TF_AGREE_ALL_MIN, and a greedy continuation
 *   counts as matching when it equals llama.cpp's or first differs at a step where llama.cpp's gap is below
 *   NEAR_TIE (at least GREEDY_MATCH_MIN of the prompts).  The strict numbers are printed too.
 *   The same holds for the last-position argmax against the reference: for 4 of the 11 prompts the reference's
 *   own top1 - top2 gap there is below NEAR_TIE (code_c: 0.07, where llama.cpp picks the other token), and for
 *   those our pick only has to be within NEAR_TIE of the reference's best logit.
 *   What a real bug looks like, for scale: RoPE with the NeoX pairing gives max |d| ~15 vs the reference,
 *   rope base 10000 instead of 100000 gives ~3.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "testutil.h"

/* Max |logit - reference| at the last position.  llama.cpp's own worst case over the fixture's prompts
 * (fixture "summary.last_max_abs") is 1.0534 (the 8-bit emulation's: 1.024); we allow 1.5x llama.cpp's. */
#define LLAMACPP_LAST_MAX 1.0534
#define LOGIT_TOL (1.5 * LLAMACPP_LAST_MAX)

#define NEAR_TIE 0.5          /* top1 - top2 gap below which an argmax may legitimately go either way */
#define TF_AGREE_MIN 0.99     /* teacher-forced agreement with llama.cpp where its gap >= NEAR_TIE */
#define TF_AGREE_ALL_MIN 0.94 /* ... over all positions (float64 reference: 0.962, 8-bit emulation: 0.956) */
#define GREEDY_MATCH_MIN 0.8  /* fraction of prompts whose greedy continuation matches (see above) */
#define CHUNK 256             /* teacher-forcing batch: CHUNK * n_vocab floats of logits at a time */

/* ---- small helpers --------------------------------------------------------------------------------------- */

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static double jnum_at(json_t *arr, int i) {
    return json_number_value(json_array_get(arr, (size_t)i));
}

/* ---- the test --------------------------------------------------------------------------------------------- */

int main(void) {
    json_t *fx = tu_load_json("forward.json");
    const char *mpath = tu_model_path();
    const char *fx_model = json_string_value(json_object_get(json_object_get(fx, "model"), "file"));
    if (!fx_model || strcmp(fx_model, base_name(mpath)) != 0) {
        fprintf(stderr, "forward.json was made for %s, but the model is %s: point DSA_MODEL at that model\n",
                fx_model ? fx_model : "?", mpath);
        return 1;
    }

    char err[512];
    dsa_model *m = NULL;
    if (dsa_model_load(mpath, &m, NULL, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "load %s: %s\n", mpath, err);
        return 1;
    }
    const dsa_hparams *hp = dsa_model_hparams(m);
    const int V = hp->n_vocab;
    if (V != (int)json_integer_value(json_object_get(json_object_get(fx, "model"), "n_vocab"))) {
        fprintf(stderr, "model has %d tokens, the fixture's %d\n", V,
                (int)json_integer_value(json_object_get(json_object_get(fx, "model"), "n_vocab")));
        return 1;
    }

    json_t *prompts = json_object_get(fx, "prompts");
    const int n_prompts = (int)json_array_size(prompts);
    CHECK(n_prompts >= 10, "fixture has %d prompts", n_prompts);

    /* One context big enough for the longest prompt plus its continuation; reused through dsa_ctx_truncate. */
    int n_ctx = 0;
    for (int p = 0; p < n_prompts; p++) {
        json_t *pr = json_array_get(prompts, (size_t)p);
        int need = (int)json_array_size(json_object_get(pr, "ids")) +
                   (int)json_array_size(json_object_get(pr, "llamacpp_greedy"));
        if (need > n_ctx) n_ctx = need;
    }
    dsa_ctx *c = NULL;
    if (dsa_ctx_new(m, n_ctx, 0, &c, err, sizeof err) != 0) {
        fprintf(stderr, "ctx (%d positions): %s\n", n_ctx, err);
        return 1;
    }

    float *logits = malloc((size_t)CHUNK * (size_t)V * sizeof *logits);
    float *last = malloc((size_t)V * sizeof *last);
    float *ref = malloc((size_t)V * sizeof *ref);
    if (!logits || !last || !ref) abort();

    double worst = 0.0;
    long tf_total = 0, tf_agree = 0, dec_total = 0, dec_agree = 0;
    int greedy_equal = 0, greedy_match = 0;

    printf("LOGIT_TOL %.4f (1.5 x llama.cpp's max |d| vs float64, %.4f); NEAR_TIE %.2f\n", LOGIT_TOL,
           LLAMACPP_LAST_MAX, NEAR_TIE);
    for (int p = 0; p < n_prompts; p++) {
        json_t *pr = json_array_get(prompts, (size_t)p);
        const char *name = json_string_value(json_object_get(pr, "name"));
        int n = 0, n_tf = 0, n_greedy = 0;
        int32_t *ids = tu_json_ids(json_object_get(pr, "ids"), &n);
        int32_t *tf = tu_json_ids(json_object_get(pr, "llamacpp_tf_top1"), &n_tf);
        int32_t *greedy = tu_json_ids(json_object_get(pr, "llamacpp_greedy"), &n_greedy);
        json_t *tf_gap = json_object_get(pr, "llamacpp_tf_margin");
        json_t *g_gap = json_object_get(pr, "llamacpp_greedy_margin");
        int well_formed = name && n > 0 && n_tf == n && (int)json_array_size(tf_gap) == n && n_greedy > 0 &&
                          (int)json_array_size(g_gap) == n_greedy;
        CHECK(well_formed, "prompt %d: malformed fixture record", p);
        if (!well_formed) goto next;

        /* Reference logits of the last position. */
        const char *b64 = json_string_value(json_object_get(pr, "ref_last_logits_b64"));
        size_t nref = 0;
        float *dec = b64 ? tu_b64_floats(b64, &nref) : NULL;
        CHECK(dec && nref == (size_t)V, "%s: reference logits decode to %zu floats, want %d", name, nref, V);
        if (!dec || nref != (size_t)V) {
            free(dec);
            goto next;
        }
        memcpy(ref, dec, (size_t)V * sizeof *ref);
        free(dec);

        /* Teacher forcing: all positions, CHUNK at a time, argmax of every row against llama.cpp's. */
        dsa_ctx_truncate(c, 0);
        CHECK(dsa_ctx_pos(c) == 0, "%s: truncate(0) left %d positions", name, dsa_ctx_pos(c));
        int agree = 0, ok = 1;
        for (int i = 0; i < n && ok; i += CHUNK) {
            int k = n - i < CHUNK ? n - i : CHUNK;
            if (dsa_ctx_eval(c, ids + i, k, logits, 1, NULL, NULL, err, sizeof err) != 0) {
                CHECK(0, "%s: eval of positions %d..%d: %s", name, i, i + k - 1, err);
                ok = 0;
                break;
            }
            for (int r = 0; r < k; r++) {
                int a = tu_argmax(logits + (size_t)r * (size_t)V, V);
                double gap = jnum_at(tf_gap, i + r);
                int decisive = gap >= NEAR_TIE;
                dec_total += decisive;
                if (a == tf[i + r]) {
                    agree++;
                    dec_agree += decisive;
                } else if (decisive) {
                    printf("  %s: position %d: argmax %d, llama.cpp %d with a clear gap %.4f\n", name, i + r, a,
                           (int)tf[i + r], gap);
                }
            }
            if (i + k == n) memcpy(last, logits + (size_t)(k - 1) * (size_t)V, (size_t)V * sizeof *last);
        }
        if (!ok) goto next;
        CHECK(dsa_ctx_pos(c) == n, "%s: %d positions cached after eval, want %d", name, dsa_ctx_pos(c), n);
        tf_total += n;
        tf_agree += agree;

        /* Last position vs the float64 reference: every logit within LOGIT_TOL; the same argmax, unless the
         * reference itself has a near-tie there, in which case our pick must be within NEAR_TIE of its best. */
        double maxd = 0.0;
        int at = 0;
        for (int i = 0; i < V; i++) {
            double d = fabs((double)last[i] - (double)ref[i]);
            if (!(d <= maxd)) { /* also catches NaN */
                maxd = isnan(d) ? INFINITY : d;
                at = i;
            }
        }
        if (maxd > worst) worst = maxd;
        int top_ours = tu_argmax(last, V), top_ref = tu_argmax(ref, V);
        double ref_gap = tu_top_gap(ref, V);
        CHECK(maxd <= LOGIT_TOL, "%s: max |logit - reference| %.4f at id %d exceeds %.4f", name, maxd, at,
              LOGIT_TOL);
        if (ref_gap >= NEAR_TIE)
            CHECK(top_ours == top_ref, "%s: last-position argmax %d, reference %d (reference gap %.4f)", name,
                  top_ours, top_ref, ref_gap);
        else
            CHECK((double)ref[top_ours] >= (double)ref[top_ref] - NEAR_TIE,
                  "%s: last-position argmax %d is %.4f below the reference's best %d", name, top_ours,
                  (double)ref[top_ref] - (double)ref[top_ours], top_ref);

        /* Greedy continuation: argmax, fed back one token at a time, never stopped early (as the fixture). */
        int diverged = -1;
        int32_t tok = top_ours;
        for (int s = 0; s < n_greedy; s++) {
            if (tok != greedy[s]) {
                diverged = s;
                break;
            }
            if (s + 1 == n_greedy) break;
            if (dsa_ctx_eval(c, &tok, 1, last, 0, NULL, NULL, err, sizeof err) != 0) {
                CHECK(0, "%s: greedy step %d: %s", name, s, err);
                diverged = s;
                break;
            }
            tok = tu_argmax(last, V);
        }
        const char *verdict = "equal";
        if (diverged < 0) {
            greedy_equal++;
            greedy_match++;
        } else {
            double gap = jnum_at(g_gap, diverged);
            verdict = gap < NEAR_TIE ? "differs at a near-tie" : "DIFFERS";
            greedy_match += gap < NEAR_TIE;
            printf("  %s: greedy continuation differs at token %d: ours %d, llama.cpp %d (llama.cpp gap %.4f)\n",
                   name, diverged, (int)tok, (int)greedy[diverged], gap);
        }
        printf("%-16s T=%5d  max|d| vs float64 %.4f  top1 %s (ref gap %.3f)  tf agree %d/%d  greedy %s\n", name,
               n, maxd, top_ours == top_ref ? "equal" : "differs", ref_gap, agree, n, verdict);
    next:
        free(ids);
        free(tf);
        free(greedy);
    }

    double rate = tf_total ? (double)tf_agree / (double)tf_total : 0.0;
    double dec_rate = dec_total ? (double)dec_agree / (double)dec_total : 0.0;
    int greedy_need = (int)ceil(GREEDY_MATCH_MIN * n_prompts - 1e-9);
    printf("max |d logit| vs float64 reference: %.4f (bound %.4f)\n", worst, LOGIT_TOL);
    printf("teacher-forced argmax agreement with llama.cpp: %ld/%ld = %.2f%% of all positions, "
           "%ld/%ld = %.2f%% where llama.cpp's gap >= %.2f\n",
           tf_agree, tf_total, 100.0 * rate, dec_agree, dec_total, 100.0 * dec_rate, NEAR_TIE);
    printf("greedy continuations equal to llama.cpp's: %d/%d; equal up to a near-tie: %d/%d (need %d)\n",
           greedy_equal, n_prompts, greedy_match, n_prompts, greedy_need);
    CHECK(dec_total > 0 && dec_rate >= TF_AGREE_MIN, "teacher-forced agreement at clear positions %.4f < %.2f",
          dec_rate, TF_AGREE_MIN);
    CHECK(rate >= TF_AGREE_ALL_MIN, "teacher-forced agreement over all positions %.4f < %.2f", rate,
          TF_AGREE_ALL_MIN);
    CHECK(greedy_match >= greedy_need, "only %d of %d greedy continuations match llama.cpp's", greedy_match,
          n_prompts);

    free(logits);
    free(last);
    free(ref);
    dsa_ctx_free(c);
    dsa_model_free(m);
    json_decref(fx);
    return tu_finish("test_forward");
}
