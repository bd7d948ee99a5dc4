/*
 * Resume equality on the real default model (SmolLM2-135M-Instruct, its shipped DSA sidecar): a two-turn chat in
 * the model's template -- prompt prefill, greedy replies token by token, the second turn re-rendered and only its
 * new tokens evaluated -- committed to a session after each turn.  Then a new process (fork: fresh store handle,
 * fresh context, nothing shared but the files) opens the store, restores the session and evaluates the next token:
 * its logits must be bit-identical to those of the uninterrupted run.  Done with DSA (top-k 64, so the later
 * tokens really attend sparsely) and with dense attention.  A restore into a context of another attention setting
 * must refuse the cache (rebuild) rather than reuse it.
 */
#include <signal.h>
#include <sys/wait.h>

#include "sessions_util.h"

#define N_CTX 1024
static char err[1024];

static void eval(dsa_ctx *c, const int32_t *ids, int n, float *out) {
    if (dsa_ctx_eval(c, ids, n, out, 0, NULL, NULL, err, sizeof err)) {
        fprintf(stderr, "eval: %s\n", err);
        exit(1);
    }
}

static void render(dsa_model *m, const dsa_chat_msg *msgs, int n, dsa_ids *ids) {
    const dsa_chat_template *ct = dsa_model_chat(m, NULL);
    char *p = dsa_chat_render(ct, msgs, n, 1);
    ids->n = 0;
    if (!p || dsa_tok_encode(dsa_model_tok(m), p, strlen(p), 1, ids)) exit(1);
    free(p);
}

/* Greedy reply of up to n tokens after logits (of the last evaluated token): appends to ids every token it
 * evaluates; the text goes to out. */
static void reply(dsa_ctx *c, float *logits, int n, dsa_ids *ids, char *out, size_t cap) {
    dsa_model *m = dsa_ctx_model(c);
    const dsa_tokenizer *tok = dsa_model_tok(m);
    int nv = dsa_model_hparams(m)->n_vocab;
    size_t len = 0;
    out[0] = 0;
    for (int i = 0; i < n; i++) {
        int32_t t = tu_argmax(logits, nv);
        if (dsa_tok_is_eog(tok, t)) break;
        size_t pl;
        const char *piece = dsa_tok_piece(tok, t, &pl);
        if (len + pl + 1 < cap) {
            memcpy(out + len, piece, pl);
            out[len += pl] = 0;
        }
        dsa_ids_push(ids, t);
        eval(c, &t, 1, logits);
    }
}

static dsa_ctx *new_ctx(dsa_model *m, const dsa_indexer *ix, int k) {
    dsa_ctx *c;
    if (dsa_ctx_new(m, N_CTX, 0, &c, err, sizeof err) ||
        (ix && dsa_ctx_set_sparse(c, ix, DSA_SEL_INDEXER, k, err, sizeof err))) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    return c;
}

static void run(const char *dir, dsa_model *m, const dsa_indexer *ix, const ses_engine_fp *fp) {
    const char *mode = ix ? "dsa" : "dense";
    int nv = dsa_model_hparams(m)->n_vocab;
    float *logits = malloc((size_t)nv * 4), *la = malloc((size_t)nv * 4), *lb = malloc((size_t)nv * 4);
    ses_store *st;
    if (ses_store_open(dir, &st, err, sizeof err)) {
        CHECK(0, "%s", err);
        return;
    }
    ses_settings set;
    ses_settings_default(&set);
    set.system_prompt = "You are a helpful assistant who answers in full sentences.";
    int64_t id;
    ses_session *s;
    if (ses_create(st, mode, &set, &id, err, sizeof err) || ses_open(st, id, &s, err, sizeof err)) {
        CHECK(0, "%s", err);
        return;
    }
    dsa_ctx *c = new_ctx(m, ix, 64);
    dsa_chat_msg msgs[5] = {{"system", set.system_prompt},
                            {"user", "Explain in a few sentences why the sky is blue, and what makes sunsets red."}};
    char r1[4096], r2[4096];
    dsa_ids ids = {0};
    /* turn 1 */
    render(m, msgs, 2, &ids);
    int p1 = (int)ids.n;
    eval(c, ids.ids, p1, logits);
    reply(c, logits, 48, &ids, r1, sizeof r1);
    int n1 = dsa_ctx_pos(c);
    ses_message t1[2] = {{.role = "user", .content = msgs[1].content, .tok_start = 0, .tok_end = p1},
                         {.role = "assistant", .content = r1, .tok_start = p1, .tok_end = n1}};
    CHECK(ses_commit_turn(s, c, fp, ids.ids, n1, t1, 2, err, sizeof err) == 0, "commit 1: %s", err);
    /* turn 2: the conversation re-rendered; the cache keeps the common prefix */
    msgs[2] = (dsa_chat_msg){"assistant", r1};
    msgs[3] = (dsa_chat_msg){"user", "Now say the same thing about the colour of the sea."};
    dsa_ids ids2 = {0};
    render(m, msgs, 4, &ids2);
    int keep = 0;
    while (keep < n1 && keep < (int)ids2.n && ids.ids[keep] == ids2.ids[keep]) keep++;
    dsa_ctx_truncate(c, keep);
    eval(c, ids2.ids + keep, (int)ids2.n - keep, logits);
    int p2 = (int)ids2.n;
    reply(c, logits, 32, &ids2, r2, sizeof r2);
    int n2 = dsa_ctx_pos(c);
    ses_message t2[2] = {{.role = "user", .content = msgs[3].content, .tok_start = n1, .tok_end = p2},
                         {.role = "assistant", .content = r2, .tok_start = p2, .tok_end = n2}};
    CHECK(ses_commit_turn(s, c, fp, ids2.ids, n2, t2, 2, err, sizeof err) == 0, "commit 2: %s", err);
    ses_close(s);
    ses_store_close(st);
    CHECK(n2 > 64 + 64, "%s: only %d tokens: DSA would not be sparse", mode, n2);
    /* the uninterrupted run's next token */
    int32_t next = tu_argmax(logits, nv);
    eval(c, &next, 1, la);
    dsa_ctx_free(c);

    /* a new process resumes */
    int pfd[2];
    if (pipe(pfd)) exit(1);
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        ses_store *st2;
        ses_session *s2;
        ses_restore_info info;
        dsa_ctx *c2 = new_ctx(m, ix, 64);
        if (ses_store_open(dir, &st2, err, sizeof err) || ses_open(st2, id, &s2, err, sizeof err) ||
            ses_restore(s2, c2, fp, ids2.ids, n2, &info, err, sizeof err)) {
            fprintf(stderr, "child: %s\n", err);
            _exit(2);
        }
        if (info.reused != n2 || info.rebuilt) {
            fprintf(stderr, "child: reused %d of %d, rebuilt %d (%s)\n", info.reused, n2, info.rebuilt, info.reason);
            _exit(3);
        }
        eval(c2, &next, 1, lb);
        size_t want = (size_t)nv * 4;
        if (write(pfd[1], lb, want) != (ssize_t)want) _exit(4);
        _exit(0);
    }
    close(pfd[1]);
    size_t got = 0, want = (size_t)nv * 4;
    ssize_t k;
    while (got < want && (k = read(pfd[0], (char *)lb + got, want - got)) > 0) got += (size_t)k;
    close(pfd[0]);
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0 && got == want, "%s: the resuming process failed (%d)", mode,
          status);
    if (got == want) {
        int diff = 0;
        float maxd = 0;
        for (int i = 0; i < nv; i++)
            if (memcmp(&la[i], &lb[i], 4)) {
                diff++;
                float d = la[i] > lb[i] ? la[i] - lb[i] : lb[i] - la[i];
                if (d > maxd) maxd = d;
            }
        CHECK(diff == 0, "%s: %d of %d logits differ after the resume (max |delta| %g)", mode, diff, nv, maxd);
        printf("%s: %d tokens over two turns resumed in a new process, next-token logits bit-identical: %s\n", mode,
               n2, diff ? "no" : "yes");
    }
    /* another attention setting: the cache must not be used */
    if (ix) {
        if (ses_store_open(dir, &st, err, sizeof err) || ses_open(st, id, &s, err, sizeof err)) {
            CHECK(0, "%s", err);
        } else {
            dsa_ctx *c3 = new_ctx(m, ix, 128);
            ses_restore_info info;
            CHECK(ses_restore(s, c3, fp, ids2.ids, n2, &info, err, sizeof err) == 0, "%s", err);
            CHECK(info.rebuilt && info.reused == 0 && strstr(info.reason, "attention"), "k=128 on a k=64 cache: %s",
                  info.reason);
            dsa_ctx_free(c3);
            ses_close(s);
            ses_store_close(st);
        }
    }
    dsa_ids_free(&ids);
    dsa_ids_free(&ids2);
    free(logits), free(la), free(lb);
}

int main(void) {
    const char *path = tu_model_path();
    dsa_model *m;
    if (dsa_model_load(path, &m, NULL, NULL, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    char *ixp = dsa_indexer_default_path(path);
    dsa_indexer *ix = NULL;
    if (!ixp || dsa_indexer_load(ixp, m, &ix, err, sizeof err)) {
        fprintf(stderr, "the default model's DSA sidecar: %s\n", ixp ? err : "not found");
        return 1;
    }
    ses_engine_fp fp_dsa, fp_dense;
    if (ses_engine_fp_init(&fp_dsa, m, ixp, err, sizeof err) || ses_engine_fp_init(&fp_dense, m, NULL, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    CHECK(!strncmp(fp_dsa.sidecar_fp, "xxh3-64:", 8) && !strcmp(fp_dense.sidecar_fp, "none"), "fingerprints");
    char *dir = st_tmpdir("ses-resume-real");
    run(dir, m, ix, &fp_dsa);
    run(dir, m, NULL, &fp_dense);
    st_rmdir(dir);
    free(ixp);
    dsa_indexer_free(ix);
    dsa_model_free(m);
    return tu_finish("test_sessions_resume");
}
