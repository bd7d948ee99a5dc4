/*
 * dsa eval: how much DeepSeek Sparse Attention costs in quality, on held-out long texts.
 *
 *  (a) perplexity, dense vs DSA, over the positions t >= k of the first C tokens of each text (one run at the
 *      largest context serves every smaller one: a causal model's prediction at t does not see past t);
 *  (b) attention-mass recall per layer: the share of the dense attention probability (summed over heads,
 *      normalised) that the selected set covers, measured on the dense run's own states;
 *  (c) the same for baselines with the same k: oracle top-k of the true probabilities, a sliding window with 4
 *      sink tokens, and random positions (whose expected recall is k / (t+1));
 *  (d) passkey retrieval, dense vs DSA: a number hidden in filler text, asked for at the end.
 *
 * One JSON object on stdout (--json) or a human summary; scripts/dsa-report.py turns the JSON into docs/.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dsa_tool.h"

#define MAXC 8 /* contexts */
#define MAXK 8 /* k values */
enum { M_INDEXER, M_ORACLE, M_WINDOW, M_RANDOM, NMETH };
static const char *meth_name[NMETH] = {"indexer", "oracle", "window", "random"};

static int parse_list(const char *s, int *out, int max, const char *what) {
    int n = 0;
    const char *p = s;
    while (*p) {
        char *e;
        long v = strtol(p, &e, 10);
        if (e == p || v < 1 || v > (1 << 20) || n == max) die(2, "%s: '%s' is not a list of up to %d sizes", what, s, max);
        out[n++] = (int)v;
        p = *e == ',' ? e + 1 : e;
        if (*e && *e != ',') die(2, "%s: '%s' is not a comma-separated list", what, s);
    }
    for (int i = 1; i < n; i++)
        if (out[i] <= out[i - 1]) die(2, "%s: sizes must increase", what);
    return n;
}

/* ---- texts ------------------------------------------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    buf b = {0};
    char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) buf_put(&b, tmp, n);
    fclose(f);
    *len = b.n;
    return b.p;
}

typedef struct {
    char *name;
    int32_t *ids;
} text;

/* n documents of at least need tokens, spread over the directory's name order. */
static int load_texts(const char *dir, const dsa_tokenizer *tok, int need, int n, text *out) {
    DIR *d = opendir(dir);
    if (!d) die(1, "%s: %s (build the corpus with scripts/make-corpus.sh, or pass --texts DIR)", dir, strerror(errno));
    char **names = NULL;
    int nn = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 5 || strcmp(e->d_name + l - 4, ".txt")) continue;
        if (nn == cap) {
            cap = cap ? 2 * cap : 64;
            names = realloc(names, (size_t)cap * sizeof *names);
            if (!names) die(1, "out of memory");
        }
        names[nn++] = strdup(e->d_name);
    }
    closedir(d);
    if (nn) qsort(names, (size_t)nn, sizeof *names, cmp_str);
    /* every long-enough document, then n of them spread evenly over the list (the names start with the source
     * family, so this mixes manuals, books and pages rather than taking the first family) */
    text *all = calloc((size_t)(nn ? nn : 1), sizeof *all);
    int na = 0;
    for (int i = 0; i < nn; i++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        size_t len;
        char *s = slurp(path, &len);
        if (!s) continue;
        dsa_ids ids = {0};
        int rc = dsa_tok_encode(tok, s, len, 0, &ids);
        free(s);
        if (rc == 0 && (int)ids.n >= need) {
            all[na].name = strdup(names[i]);
            all[na].ids = ids.ids;
            na++;
        } else {
            dsa_ids_free(&ids);
        }
    }
    int got = na < n ? na : n;
    for (int i = 0; i < na; i++) {
        int pick = -1;
        for (int g = 0; g < got; g++)
            if ((long)g * na / got == i) pick = g;
        if (pick >= 0) out[pick] = all[i];
        else free(all[i].name), free(all[i].ids);
    }
    free(all);
    for (int i = 0; i < nn; i++) free(names[i]);
    free(names);
    return got;
}

/* ---- recall, measured inside the dense run ---------------------------------------------------------------- */

typedef struct {
    dsa_ctx *c;
    const dsa_indexer *ix;
    int nc, nk, stride;
    const int *ctxs, *ks;
    int layer, pos0, n;
    const float *q, *probs;
    /* sums[layer][ctx][k][method], rows[ctx][k] (counted on layer 0) */
    double *sums;
    long *rows;
    float *scratch;      /* threads × n_ctx: index scores */
    int32_t *idx;        /* threads × n_ctx */
    uint64_t *tk;        /* threads × n_ctx */
    double *part;        /* threads × nc × nk × NMETH */
    long *part_rows;     /* threads × nc × nk */
} recall_state;

static void recall_rows(void *arg, int ith, int nth) {
    recall_state *rs = arg;
    dsa_ctx *c = rs->c;
    int n_ctx = dsa_ctx_n_ctx(c);
    float *isc = rs->scratch + (size_t)ith * n_ctx;
    int32_t *idx = rs->idx + (size_t)ith * n_ctx;
    uint64_t *tk = rs->tk + (size_t)ith * n_ctx;
    double *part = rs->part + (size_t)ith * rs->nc * rs->nk * NMETH;
    long *prow = rs->part_rows + (size_t)ith * rs->nc * rs->nk;
    const uint8_t *k8;
    const float *ks8, *iq, *iw;
    dsa_ctx_index_keys(c, rs->layer, &k8, &ks8);
    dsa_ctx_index_queries(c, &iq, &iw);
    int H_I = rs->ix->hp.n_head, d_I = rs->ix->hp.head_dim;
    /* rows are strided by position so every batch contributes evenly; the threads take every nth of them */
    int cnt = 0;
    for (int r = 0; r < rs->n; r++) {
        int t = rs->pos0 + r, len = t + 1;
        if (t % rs->stride || len <= rs->ks[0]) continue;
        if (cnt++ % nth != ith) continue;
        /* the dense run's own probabilities, captured by the forward pass */
        const float *p = rs->probs + (size_t)r * n_ctx;
        dsa_indexer_scores(len, H_I, d_I, k8, ks8, iq + (size_t)r * H_I * d_I, iw + (size_t)r * H_I, isc);
        for (int ki = 0; ki < rs->nk; ki++) {
            int k = rs->ks[ki];
            if (len <= k) continue;
            double rec[NMETH] = {0};
            int m = dsa_topk(len, isc, k, idx, tk);
            for (int i = 0; i < m; i++) rec[M_INDEXER] += p[idx[i]];
            m = dsa_topk(len, p, k, idx, tk);
            for (int i = 0; i < m; i++) rec[M_ORACLE] += p[idx[i]];
            for (int s = 0; s < 4 && s < k; s++) rec[M_WINDOW] += p[s];
            for (int s = len - (k - (k < 4 ? k : 4)); s < len; s++) rec[M_WINDOW] += p[s];
            rec[M_RANDOM] = (double)k / len; /* the expectation of a uniformly random k-subset */
            for (int ci = 0; ci < rs->nc; ci++) {
                if (t >= rs->ctxs[ci]) continue;
                for (int mm = 0; mm < NMETH; mm++) part[(ci * rs->nk + ki) * NMETH + mm] += rec[mm];
                if (rs->layer == 0) prow[ci * rs->nk + ki]++;
            }
        }
    }
}

static void recall_hook(void *ud, int layer, int pos0, int n, const float *h, const float *q) {
    (void)h;
    recall_state *rs = ud;
    rs->layer = layer, rs->pos0 = pos0, rs->n = n, rs->q = q, rs->probs = dsa_ctx_batch_probs(rs->c);
    dsa_pool *pool = dsa_ctx_pool(rs->c);
    int nth = dsa_pool_size(pool), cells = rs->nc * rs->nk;
    memset(rs->part, 0, (size_t)nth * cells * NMETH * sizeof *rs->part);
    memset(rs->part_rows, 0, (size_t)nth * cells * sizeof *rs->part_rows);
    dsa_pool_run(pool, recall_rows, rs);
    for (int t = 0; t < nth; t++)
        for (int i = 0; i < cells; i++) {
            for (int mm = 0; mm < NMETH; mm++)
                rs->sums[((size_t)layer * cells + i) * NMETH + mm] += rs->part[((size_t)t * cells + i) * NMETH + mm];
            rs->rows[i] += rs->part_rows[(size_t)t * cells + i];
        }
}

/* ---- perplexity runs ------------------------------------------------------------------------------------- */

/* Evaluate ids[0..n) with the given selection; nll[t] = -log p(ids[t+1] | ids[..t]) for t < n-1. */
static void run_nll(dsa_model *m, const opts *o, const dsa_indexer *ix, dsa_select_mode mode, int k, const int32_t *ids,
                    int n, double *nll, recall_state *rs) {
    char err[512];
    dsa_ctx *c;
    if (dsa_ctx_new(m, n, o->threads, &c, err, sizeof err)) die(1, "%s", err);
    if (dsa_ctx_set_sparse(c, ix, mode, k, err, sizeof err)) die(1, "%s", err);
    dsa_ctx_set_dense_layers(c, o->dense_layers);
    if (rs) {
        rs->c = c;
        if (dsa_ctx_capture_probs(c, 1)) die(1, "out of memory");
        dsa_ctx_set_layer_hook(c, recall_hook, rs);
    }
    int V = dsa_model_hparams(m)->n_vocab, B = 256;
    float *lg = malloc((size_t)B * V * sizeof *lg);
    if (!lg) die(1, "out of memory");
    for (int off = 0; off < n; off += B) {
        int b = n - off < B ? n - off : B;
        if (dsa_ctx_eval(c, ids + off, b, lg, 1, NULL, NULL, err, sizeof err)) die(1, "%s", err);
        for (int i = 0; i < b; i++) {
            int t = off + i;
            if (t + 1 >= n) break;
            const float *l = lg + (size_t)i * V;
            float mx = l[0];
            for (int v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
            double z = 0;
            for (int v = 0; v < V; v++) z += exp((double)l[v] - mx);
            nll[t] = log(z) + mx - l[ids[t + 1]];
        }
        if (tty_progress) fprintf(stderr, "\r\033[K  %s k=%d: %d/%d tokens", mode == DSA_SEL_DENSE ? "dense" : meth_name[mode - 1], k, off + b, n);
    }
    if (tty_progress) fputs("\r\033[K", stderr);
    free(lg);
    dsa_ctx_free(c);
}

/* ---- passkey ------------------------------------------------------------------------------------------------ */

static int passkey_trial(dsa_model *m, const opts *o, const dsa_indexer *ix, dsa_select_mode mode, int k,
                         const int32_t *ids, int n, const char *key, char *answer, size_t alen) {
    char err[512];
    dsa_ctx *c;
    if (dsa_ctx_new(m, n + 16, o->threads, &c, err, sizeof err)) die(1, "%s", err);
    if (dsa_ctx_set_sparse(c, ix, mode, k, err, sizeof err)) die(1, "%s", err);
    dsa_ctx_set_dense_layers(c, o->dense_layers);
    const dsa_hparams *hp = dsa_model_hparams(m);
    float *lg = malloc((size_t)hp->n_vocab * sizeof *lg);
    if (!lg) die(1, "out of memory");
    if (dsa_ctx_eval(c, ids, n, lg, 0, NULL, NULL, err, sizeof err)) die(1, "%s", err);
    buf out = {0};
    buf_put(&out, "", 0);
    for (int i = 0; i < 8; i++) {
        int best = 0;
        for (int v = 1; v < hp->n_vocab; v++) best = lg[v] > lg[best] ? v : best;
        if (dsa_tok_is_eog(dsa_model_tok(m), best)) break;
        size_t pl = 0;
        const char *piece = dsa_tok_piece(dsa_model_tok(m), best, &pl);
        if (piece && pl) buf_put(&out, piece, pl);
        int32_t id = best;
        if (dsa_ctx_eval(c, &id, 1, lg, 0, NULL, NULL, err, sizeof err)) die(1, "%s", err);
    }
    snprintf(answer, alen, "%s", out.p);
    int ok = strstr(out.p, key) != NULL;
    free(out.p);
    free(lg);
    dsa_ctx_free(c);
    return ok;
}

/* A prompt of about n tokens: filler, the key at depth (0..1), filler, the question. */
static int32_t *passkey_prompt(const dsa_tokenizer *tok, int n, double depth, const char *key, int *len) {
    static const char *filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
    static const char *head = "There is an important pass key hidden inside a lot of irrelevant text. Find it and "
                              "memorize it. I will quiz you about the pass key.\n\n";
    char keyline[160], tail[] = "\n\nWhat is the pass key? The pass key is";
    snprintf(keyline, sizeof keyline, "The pass key is %s. Remember it. %s is the pass key. ", key, key);
    dsa_ids h = {0}, f = {0}, kl = {0}, tl = {0};
    dsa_tok_encode(tok, head, strlen(head), 0, &h);
    dsa_tok_encode(tok, filler, strlen(filler), 0, &f);
    dsa_tok_encode(tok, keyline, strlen(keyline), 0, &kl);
    dsa_tok_encode(tok, tail, strlen(tail), 0, &tl);
    int room = n - (int)(h.n + kl.n + tl.n);
    int reps = room / (int)f.n, before = (int)(reps * depth + 0.5);
    dsa_ids all = {0};
    if (dsa_tok_bos(tok) >= 0 && dsa_tok_add_bos(tok)) dsa_ids_push(&all, dsa_tok_bos(tok));
    for (size_t i = 0; i < h.n; i++) dsa_ids_push(&all, h.ids[i]);
    for (int r = 0; r < reps; r++) {
        if (r == before)
            for (size_t i = 0; i < kl.n; i++) dsa_ids_push(&all, kl.ids[i]);
        for (size_t i = 0; i < f.n; i++) dsa_ids_push(&all, f.ids[i]);
    }
    if (before >= reps)
        for (size_t i = 0; i < kl.n; i++) dsa_ids_push(&all, kl.ids[i]);
    for (size_t i = 0; i < tl.n; i++) dsa_ids_push(&all, tl.ids[i]);
    dsa_ids_free(&h), dsa_ids_free(&f), dsa_ids_free(&kl), dsa_ids_free(&tl);
    *len = (int)all.n;
    return all.ids;
}

/* ---- the command ------------------------------------------------------------------------------------------- */

int cmd_eval(const opts *o_) {
    opts o = *o_;
    if (o.dense) die(2, "eval compares dense attention with DSA: drop --dense");
    dsa_model *m = load_model(&o);
    const dsa_indexer *ix = tool_indexer();
    if (!ix) die(1, "eval needs a DSA indexer (--indexer FILE, or train one with 'dsa train-indexer')");
    const dsa_hparams *hp = dsa_model_hparams(m);
    int ctxs[MAXC], ks[MAXK];
    int nc = parse_list(o.contexts ? o.contexts : "1024,2048,4096,8192", ctxs, MAXC, "--contexts");
    int nk = parse_list(o.ks ? o.ks : "128,256,512,1024", ks, MAXK, "--ks");
    int C = ctxs[nc - 1];
    if (C > hp->n_ctx_train)
        fprintf(stderr, "dsa: warning: context %d is past the model's trained context (%d)\n", C, hp->n_ctx_train);
    char dheld[4200];
    snprintf(dheld, sizeof dheld, "%s/corpus/heldout", cache_dir());
    const char *dir = o.texts ? o.texts : dheld;
    text *texts = calloc((size_t)o.n_texts, sizeof *texts);
    int nt = load_texts(dir, dsa_model_tok(m), C + 1, o.n_texts, texts);
    if (nt == 0) die(1, "%s: no document has %d tokens", dir, C + 1);
    if (nt < o.n_texts) fprintf(stderr, "dsa: only %d documents in %s have %d tokens\n", nt, dir, C + 1);
    /* the baselines' perplexity runs at one k: a sixteenth of the largest context (the rule) */
    int kb = -1;
    for (int i = 0; i < nk; i++)
        if (kb < 0 || abs(ks[i] - C / 16) < abs(ks[kb] - C / 16)) kb = i;

    double t_start = now_s();
    int cells = nc * nk;
    recall_state rs = {0};
    int nth = 0;
    {
        dsa_pool *probe = dsa_pool_new(o.threads);
        nth = dsa_pool_size(probe);
        dsa_pool_free(probe);
    }
    rs.ix = ix, rs.nc = nc, rs.nk = nk, rs.ctxs = ctxs, rs.ks = ks, rs.stride = 4;
    rs.sums = calloc((size_t)hp->n_layer * cells * NMETH, sizeof *rs.sums);
    rs.rows = calloc((size_t)cells, sizeof *rs.rows);
    rs.scratch = malloc((size_t)nth * C * sizeof *rs.scratch);
    rs.idx = malloc((size_t)nth * C * sizeof *rs.idx);
    rs.tk = malloc((size_t)nth * C * sizeof *rs.tk);
    rs.part = malloc((size_t)nth * cells * NMETH * sizeof *rs.part);
    rs.part_rows = malloc((size_t)nth * cells * sizeof *rs.part_rows);
    /* nll[text][run][t]: run 0 dense, 1..nk DSA at each k, then oracle, window, random at ks[kb] */
    int nruns = 1 + nk + 3;
    double *nll = malloc((size_t)nt * nruns * C * sizeof *nll);
    if (!rs.sums || !rs.rows || !rs.scratch || !rs.idx || !rs.tk || !rs.part || !rs.part_rows || !nll)
        die(1, "out of memory");
    for (int ti = 0; ti < nt; ti++) {
        fprintf(stderr, "text %d/%d: %s (%d tokens)\n", ti + 1, nt, texts[ti].name, C);
        double *base = nll + (size_t)ti * nruns * C;
        run_nll(m, &o, ix, DSA_SEL_DENSE, 0, texts[ti].ids, C, base, &rs);
        for (int ki = 0; ki < nk; ki++)
            run_nll(m, &o, ix, DSA_SEL_INDEXER, ks[ki], texts[ti].ids, C, base + (size_t)(1 + ki) * C, NULL);
        for (int b = 0; b < 3; b++)
            run_nll(m, &o, ix, (dsa_select_mode)(DSA_SEL_ORACLE + b), ks[kb], texts[ti].ids, C,
                    base + (size_t)(1 + nk + b) * C, NULL);
    }

    json_t *J = json_object();
    json_object_set_new(J, "model", json_string(dsa_model_path(m)));
    json_object_set_new(J, "indexer", json_pack("{s:i,s:i,s:i,s:i,s:i,s:s}", "heads", ix->hp.n_head, "dim",
                                                 ix->hp.head_dim, "rope_dims", ix->hp.rope_dim, "top_k", ix->hp.top_k,
                                                 "dense_layers", o.dense_layers >= 0 ? o.dense_layers : ix->hp.dense_layers,
                                                 "provenance", ix->provenance ? ix->provenance : ""));
    json_object_set_new(J, "trained_context", json_integer(hp->n_ctx_train));
    json_t *jt = json_array();
    for (int ti = 0; ti < nt; ti++) json_array_append_new(jt, json_string(texts[ti].name));
    json_object_set_new(J, "texts", jt);
    json_object_set_new(J, "threads", json_integer(nth));
    json_object_set_new(J, "cpu", json_string(dsa_cpu_name()));

    /* (a) and the baselines' perplexity */
    json_t *jp = json_array(), *jd = json_array();
    for (int ci = 0; ci < nc; ci++) {
        double s = 0;
        int cnt = 0;
        for (int ti = 0; ti < nt; ti++)
            for (int t = 0; t < ctxs[ci] - 1; t++) s += nll[(size_t)ti * nruns * C + t], cnt++;
        json_array_append_new(jd, json_pack("{s:i,s:f}", "context", ctxs[ci], "ppl", exp(s / cnt)));
        for (int ki = 0; ki < nk; ki++) {
            if (ks[ki] >= ctxs[ci] - 1) continue;
            double sr[1 + MAXK + 3] = {0};
            int n = 0;
            for (int ti = 0; ti < nt; ti++) {
                const double *b = nll + (size_t)ti * nruns * C;
                for (int t = ks[ki]; t < ctxs[ci] - 1; t++) {
                    sr[0] += b[t];
                    sr[1] += b[(size_t)(1 + ki) * C + t];
                    for (int bb = 0; bb < 3; bb++) sr[2 + bb] += b[(size_t)(1 + nk + bb) * C + t];
                    n++;
                }
            }
            json_t *row = json_pack("{s:i,s:i,s:i,s:f,s:f}", "context", ctxs[ci], "k", ks[ki], "positions", n, "dense",
                                    exp(sr[0] / n), "dsa", exp(sr[1] / n));
            json_object_set_new(row, "dsa_vs_dense_pct", json_real(100 * (exp((sr[1] - sr[0]) / n) - 1)));
            if (ki == kb)
                for (int bb = 0; bb < 3; bb++) json_object_set_new(row, meth_name[1 + bb], json_real(exp(sr[2 + bb] / n)));
            json_array_append_new(jp, row);
        }
    }
    json_object_set_new(J, "dense_ppl", jd);
    json_object_set_new(J, "ppl", jp);

    /* (b), (c) */
    json_t *jr = json_array();
    for (int ci = 0; ci < nc; ci++)
        for (int ki = 0; ki < nk; ki++) {
            long rows = rs.rows[ci * nk + ki];
            if (!rows) continue;
            json_t *row = json_pack("{s:i,s:i,s:I}", "context", ctxs[ci], "k", ks[ki], "rows", (json_int_t)rows);
            for (int mm = 0; mm < NMETH; mm++) {
                json_t *pl = json_array();
                double mean = 0;
                for (int l = 0; l < hp->n_layer; l++) {
                    double v = rs.sums[((size_t)l * cells + ci * nk + ki) * NMETH + mm] / rows;
                    mean += v / hp->n_layer;
                    json_array_append_new(pl, json_real(v));
                }
                json_object_set_new(row, meth_name[mm], json_real(mean));
                if (mm == M_INDEXER || mm == M_ORACLE) {
                    char key[32];
                    snprintf(key, sizeof key, "%s_per_layer", meth_name[mm]);
                    json_object_set_new(row, key, pl);
                } else {
                    json_decref(pl);
                }
            }
            json_array_append_new(jr, row);
        }
    json_object_set_new(J, "recall", jr);

    /* (d) */
    json_t *jk = json_array();
    int kdef = o.topk_dsa > 0 ? o.topk_dsa : ix->hp.top_k;
    static const char *keys[] = {"68142", "30759", "91427", "52806", "17394", "84051", "26938", "73615"};
    for (int ci = 0; ci < nc && o.passkey_trials > 0; ci++) {
        if (ctxs[ci] < 2048) continue;
        int okd = 0, oks = 0;
        json_t *trials = json_array();
        for (int tr = 0; tr < o.passkey_trials; tr++) {
            double depth = o.passkey_trials == 1 ? 0.5 : 0.1 + 0.8 * tr / (o.passkey_trials - 1);
            const char *key = keys[(ci * 3 + tr) % 8];
            int n;
            int32_t *ids = passkey_prompt(dsa_model_tok(m), ctxs[ci] - 16, depth, key, &n);
            char ad[256], as[256];
            int d = passkey_trial(m, &o, ix, DSA_SEL_DENSE, 0, ids, n, key, ad, sizeof ad);
            int s = passkey_trial(m, &o, ix, DSA_SEL_INDEXER, kdef, ids, n, key, as, sizeof as);
            okd += d, oks += s;
            json_array_append_new(trials, json_pack("{s:f,s:s,s:o,s:o,s:b,s:b}", "depth", depth, "key", key, "dense_answer",
                                                    json_text(ad, strlen(ad)), "dsa_answer", json_text(as, strlen(as)),
                                                    "dense_ok", d, "dsa_ok", s));
            free(ids);
            fprintf(stderr, "passkey %d tokens depth %.2f: dense %s, DSA %s\n", n, depth, d ? "found" : "missed",
                    s ? "found" : "missed");
        }
        json_array_append_new(jk, json_pack("{s:i,s:i,s:i,s:i,s:i,s:o}", "context", ctxs[ci], "k", kdef, "trials",
                                            o.passkey_trials, "dense", okd, "dsa", oks, "detail", trials));
    }
    json_object_set_new(J, "passkey", jk);
    json_object_set_new(J, "seconds", json_real(now_s() - t_start));

    if (o.json) {
        print_json(J);
    } else {
        printf("perplexity over positions >= k (mean over %d texts):\n", nt);
        size_t i;
        json_t *v;
        json_array_foreach(jp, i, v) printf("  context %5d k %4d: dense %.3f  DSA %.3f (%+.2f%%)\n",
                                            (int)json_integer_value(json_object_get(v, "context")),
                                            (int)json_integer_value(json_object_get(v, "k")),
                                            json_real_value(json_object_get(v, "dense")),
                                            json_real_value(json_object_get(v, "dsa")),
                                            json_real_value(json_object_get(v, "dsa_vs_dense_pct")));
        printf("attention-mass recall (mean over layers):\n");
        json_array_foreach(jr, i, v) printf("  context %5d k %4d: indexer %.3f  oracle %.3f  window+sink %.3f  random %.3f\n",
                                            (int)json_integer_value(json_object_get(v, "context")),
                                            (int)json_integer_value(json_object_get(v, "k")),
                                            json_real_value(json_object_get(v, "indexer")),
                                            json_real_value(json_object_get(v, "oracle")),
                                            json_real_value(json_object_get(v, "window")),
                                            json_real_value(json_object_get(v, "random")));
        json_array_foreach(jk, i, v) printf("passkey at %d: dense %d/%d, DSA %d/%d\n",
                                            (int)json_integer_value(json_object_get(v, "context")),
                                            (int)json_integer_value(json_object_get(v, "dense")), o.passkey_trials,
                                            (int)json_integer_value(json_object_get(v, "dsa")), o.passkey_trials);
        json_decref(J);
    }
    for (int ti = 0; ti < nt; ti++) free(texts[ti].name), free(texts[ti].ids);
    free(texts), free(nll), free(rs.sums), free(rs.rows), free(rs.scratch), free(rs.idx), free(rs.tk), free(rs.part);
    free(rs.part_rows);
    dsa_model_free(m);
    return 0;
}
