/*
 * Session resume vs re-prefill: time to first token of a conversation of N tokens (default 4000 and 8000), once
 * by prefilling the transcript from scratch, once by restoring a committed session cache (sessions/), plus the
 * cache's bytes on disk per token (also when the transcript is committed in 120-token turns, each re-writing the
 * partial block it ends in).  "Cold" resumes drop the cache file from the page cache first
 * (posix_fadvise DONTNEED on the synced file), "warm" ones read it from memory.  Context creation is outside both
 * timings (a daemon keeps its contexts).  The first token's logits of the two paths are compared bit for bit.
 *
 *   bench_sessions [-m MODEL] [--sizes 4000,8000] [--threads N] [--dir STORE] [--reps R] [--json]
 */
#define _GNU_SOURCE
#include "bench_util.h"

#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dsa.h"
#include "model.h"
#include "sessions.h"

static void die(const char *what, const char *err) {
    fprintf(stderr, "bench_sessions: %s: %s\n", what, err);
    exit(1);
}

/* A chat transcript rendered with the model's template, cut to n tokens. */
static int32_t *transcript(dsa_model *m, int n) {
    static const char *words[] = {"the", "cache", "holds", "every", "token", "of", "a", "long", "conversation",
                                  "so", "that", "resuming", "it", "costs", "a", "read", "instead", "of", "a",
                                  "prefill", "sparse", "attention", "keeps", "decoding", "fast", "while", "memory",
                                  "grows", "with", "context", "and", "the", "indexer", "scores", "keys"};
    const int nw = (int)(sizeof words / sizeof *words);
    const dsa_chat_template *ct = dsa_model_chat(m, NULL);
    int cap = 64, k = 0;
    dsa_chat_msg *msgs = malloc((size_t)cap * sizeof *msgs);
    msgs[k++] = (dsa_chat_msg){"system", strdup("You are a helpful assistant.")};
    uint64_t s = 42;
    dsa_ids ids = {0};
    for (;;) {
        ids.n = 0;
        char *p = dsa_chat_render(ct, msgs, k, 0);
        if (!p || dsa_tok_encode(dsa_model_tok(m), p, strlen(p), 1, &ids)) die("transcript", "out of memory");
        free(p);
        if ((int)ids.n >= n) break;
        char text[2048];
        size_t len = 0;
        for (int w = 0; w < 120; w++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            len += (size_t)snprintf(text + len, sizeof text - len, "%s%s", w ? " " : "", words[(s >> 33) % nw]);
        }
        if (k == cap) msgs = realloc(msgs, (size_t)(cap *= 2) * sizeof *msgs);
        msgs[k] = (dsa_chat_msg){k % 2 ? "user" : "assistant", strdup(text)};
        k++;
    }
    for (int i = 0; i < k; i++) free((char *)msgs[i].content);
    free(msgs);
    return ids.ids;
}

int main(int argc, char **argv) {
    const char *model = NULL, *sizes = "4000,8000", *dir = NULL;
    int threads = 0, json = 0, reps = 3;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--sizes") && i + 1 < argc) sizes = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json")) json = 1;
        else {
            fprintf(stderr, "usage: bench_sessions [-m MODEL] [--sizes N,N] [--threads N] [--dir STORE] [--reps R] [--json]\n");
            return 2;
        }
    }
    char path[4096], tmpdir[] = "/tmp/bench_sessions.XXXXXX", err[1024];
    if (!model) {
        const char *c = getenv("XDG_CACHE_HOME");
        if (c && *c) snprintf(path, sizeof path, "%s/dsachat/models/SmolLM2-135M-Instruct.Q4_1.gguf", c);
        else snprintf(path, sizeof path, "%s/.cache/dsachat/models/SmolLM2-135M-Instruct.Q4_1.gguf", getenv("HOME"));
        model = path;
    }
    int own_dir = !dir;
    if (!dir && !(dir = mkdtemp(tmpdir))) die("mkdtemp", "failed");
    dsa_model *m;
    if (dsa_model_load(model, &m, NULL, NULL, err, sizeof err)) die("model", err);
    char *ixp = dsa_indexer_default_path(model);
    dsa_indexer *ix = NULL;
    if (ixp && dsa_indexer_load(ixp, m, &ix, err, sizeof err)) die("indexer", err);
    ses_engine_fp fp;
    if (ses_engine_fp_init(&fp, m, ix ? ixp : NULL, err, sizeof err)) die("fingerprint", err);
    ses_store *st;
    if (ses_store_open(dir, &st, err, sizeof err)) die("store", err);
    int nv = dsa_model_hparams(m)->n_vocab;
    float *la = malloc((size_t)nv * sizeof *la), *lb = malloc((size_t)nv * sizeof *lb);
    json_t *rows = json_array();
    if (!json)
        printf("%-7s %12s %12s %12s %9s %9s %11s %11s %9s\n", "tokens", "prefill ms", "resume cold", "resume warm",
               "x cold", "x warm", "bytes/token", "(by turns)", "commit ms");
    for (const char *p = sizes; *p;) {
        int n = (int)strtol(p, (char **)&p, 10);
        if (*p == ',') p++;
        if (n < 2) die("--sizes", "sizes must be >= 2");
        int32_t *ids = transcript(m, n);
        /* re-prefill */
        dsa_ctx *c;
        if (dsa_ctx_new(m, n + 64, threads, &c, err, sizeof err)) die("context", err);
        if (ix && dsa_ctx_set_sparse(c, ix, DSA_SEL_INDEXER, 0, err, sizeof err)) die("sparse", err);
        double t0 = now();
        if (dsa_ctx_eval(c, ids, n, la, 0, NULL, NULL, err, sizeof err)) die("prefill", err);
        double prefill = now() - t0;
        int64_t id;
        ses_session *s;
        if (ses_create(st, NULL, NULL, &id, err, sizeof err) || ses_open(st, id, &s, err, sizeof err)) die("session", err);
        ses_message msg = {.role = "user", .content = "(benchmark transcript)", .tok_start = 0, .tok_end = n};
        t0 = now();
        if (ses_commit_turn(s, c, &fp, ids, n, &msg, 1, err, sizeof err)) die("commit", err);
        double commit = now() - t0;
        ses_close(s);
        /* the same transcript committed turn by turn (120 tokens a turn): the partial blocks written again */
        int64_t id2;
        if (ses_create(st, NULL, NULL, &id2, err, sizeof err) || ses_open(st, id2, &s, err, sizeof err)) die("session", err);
        for (int t = 120;; t += 120) {
            if (ses_commit_turn(s, c, &fp, ids, t < n ? t : n, NULL, 0, err, sizeof err)) die("commit", err);
            if (t >= n) break;
        }
        ses_close(s);
        ses_check_report rep2;
        if (ses_check(st, id2, &rep2, err, sizeof err) || !rep2.ok) die("check", rep2.problem[0] ? rep2.problem : err);
        dsa_ctx_free(c);
        ses_check_report rep;
        if (ses_check(st, id, &rep, err, sizeof err) || !rep.ok) die("check", rep.problem[0] ? rep.problem : err);
        /* resume */
        double best[2] = {1e9, 1e9};
        int same = 1;
        for (int cold = 1; cold >= 0; cold--)
            for (int r = 0; r < reps; r++) {
                if (dsa_ctx_new(m, n + 64, threads, &c, err, sizeof err)) die("context", err);
                if (ix && dsa_ctx_set_sparse(c, ix, DSA_SEL_INDEXER, 0, err, sizeof err)) die("sparse", err);
                if (cold) {
                    char *f = malloc(strlen(dir) + 64);
                    sprintf(f, "%s/caches/%lld.kv", dir, (long long)id);
                    int fd = open(f, O_RDONLY);
                    if (fd >= 0) posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), close(fd);
                    free(f);
                }
                t0 = now();
                ses_restore_info info;
                if (ses_open(st, id, &s, err, sizeof err) ||
                    ses_restore(s, c, &fp, ids, n, &info, err, sizeof err))
                    die("restore", err);
                if (info.reused != n) die("restore", info.rebuilt ? info.reason : "not everything was reused");
                dsa_ctx_truncate(c, n - 1); /* the last token again, for its logits */
                if (dsa_ctx_eval(c, ids + n - 1, 1, lb, 0, NULL, NULL, err, sizeof err)) die("eval", err);
                double t = now() - t0;
                ses_close(s);
                if (t < best[cold]) best[cold] = t;
                same &= !memcmp(la, lb, (size_t)nv * sizeof *la);
                dsa_ctx_free(c);
            }
        double bpt = (double)rep.bytes_on_disk / n, bpt_turns = (double)rep2.bytes_on_disk / n;
        if (json)
            json_array_append_new(rows, json_pack("{s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:I, s:b}", "tokens", n,
                                                  "prefill_ms", prefill * 1e3, "resume_cold_ms", best[1] * 1e3,
                                                  "resume_warm_ms", best[0] * 1e3, "commit_ms", commit * 1e3,
                                                  "speedup_cold", prefill / best[1], "bytes_per_token", bpt,
                                                  "bytes_per_token_120_token_turns", bpt_turns,
                                                  "file_bytes", (json_int_t)rep.file_bytes, "logits_identical", same));
        else
            printf("%-7d %12.1f %12.1f %12.1f %8.1fx %8.1fx %11.0f %11.0f %9.1f%s\n", n, prefill * 1e3, best[1] * 1e3,
                   best[0] * 1e3, prefill / best[1], prefill / best[0], bpt, bpt_turns, commit * 1e3,
                   same ? "" : "  (LOGITS DIFFER)");
        free(ids);
    }
    if (json) {
        json_t *o = json_pack("{s:s, s:s, s:o}", "model", model, "attention", ix ? "dsa" : "dense", "rows", rows);
        char *txt = json_dumps(o, JSON_INDENT(2));
        puts(txt);
        free(txt);
        json_decref(o);
    } else {
        json_decref(rows);
    }
    ses_store_close(st);
    if (own_dir) { /* the temporary store goes (hundreds of MB) */
        char cmd[256];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "bench_sessions: could not remove %s\n", dir);
    }
    free(la);
    free(lb);
    free(ixp);
    dsa_indexer_free(ix);
    dsa_model_free(m);
    return 0;
}
