/*
 * The session store (sessions/) on a tiny model with a random DSA indexer (tests/fixtures/tiny/qwen2-f32f16: real
 * forward passes in milliseconds; tests/test_sessions_resume.c does the same on the real default model):
 *   - the database: WAL, foreign keys, schema version, a newer schema refused; readable with plain SQLite;
 *   - create / list / get / rename / settings / delete (the cache file goes too), messages, JSON + Markdown export;
 *   - commit + restore across store handles: the next token's logits are bit-identical to the uninterrupted run's,
 *     over several turns, a rewrite from the middle of a block (regeneration), and a restore of a shorter prefix;
 *   - bytes past the committed length are cut off and the cache is still used;
 *   - corruption: a flipped byte in a block, a truncated header, a wrong magic, a cache of another model, another
 *     sidecar, a missing file -> restore reports a rebuild (never reuses), and a re-prefill + commit works again;
 *   - fork at a message: the prefix's state, equal to a fresh prefill of it;
 *   - the context-overflow policy: oldest turns dropped after the system prompt, spans moved, event recorded;
 *   - a write error (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC) -> a clear error, the previous commit intact;
 *   - two processes: a session open in one cannot be opened or deleted by the other; a held write transaction
 *     gives "database is locked" after the busy timeout, and the write succeeds once it is released.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "sessions_util.h"

#define N_CTX 512
static char err[1024];

#define OK(call) CHECK((call) == 0, "%s", err)

/* Evaluate ids into c (appending); logits of the last token into out (may be NULL). */
static void eval(dsa_ctx *c, const int32_t *ids, int n, float *out) {
    if (dsa_ctx_eval(c, ids, n, out, 0, NULL, NULL, err, sizeof err)) {
        fprintf(stderr, "eval: %s\n", err);
        exit(1);
    }
}

static int64_t file_size(const char *dir, int64_t id) {
    char p[4200];
    snprintf(p, sizeof p, "%s/caches/%lld.kv", dir, (long long)id);
    struct stat sb;
    return stat(p, &sb) ? -1 : (int64_t)sb.st_size;
}

static void cache_file(const char *dir, int64_t id, char *p, size_t n) {
    snprintf(p, n, "%s/caches/%lld.kv", dir, (long long)id);
}

/* Restore session id of store st into a fresh context and return the logits of `next` evaluated after it. */
static int restore_logits(ses_store *st, st_engine *e, int64_t id, const int32_t *want, int n_want, int32_t next,
                          float *logits, ses_restore_info *info) {
    ses_session *s;
    if (ses_open(st, id, &s, err, sizeof err)) return -1;
    dsa_ctx *c = st_ctx(e, N_CTX);
    int r = ses_restore(s, c, &e->fp, want, n_want, info, err, sizeof err);
    if (!r) eval(c, &next, 1, logits);
    dsa_ctx_free(c);
    ses_close(s);
    return r;
}

static void test_database(void) {
    char *dir = st_tmpdir("ses-db");
    ses_store *st;
    OK(ses_store_open(dir, &st, err, sizeof err));
    ses_store_close(st);
    /* the same file through plain SQLite */
    char p[4200];
    snprintf(p, sizeof p, "%s/sessions.db", dir);
    sqlite3 *db;
    CHECK(sqlite3_open(p, &db) == SQLITE_OK, "sqlite3_open");
    sqlite3_stmt *s;
    const char *q[][2] = {{"PRAGMA journal_mode", "wal"}, {"PRAGMA user_version", "1"},
                          {"SELECT group_concat(name, ',') FROM (SELECT name FROM sqlite_master WHERE type = 'table'"
                           " AND name NOT LIKE 'sqlite_%' ORDER BY name)",
                           "caches,events,messages,sessions"}};
    for (int i = 0; i < 3; i++) {
        CHECK(sqlite3_prepare_v2(db, q[i][0], -1, &s, NULL) == SQLITE_OK, "%s", sqlite3_errmsg(db));
        CHECK(sqlite3_step(s) == SQLITE_ROW, "%s", q[i][0]);
        const char *v = (const char *)sqlite3_column_text(s, 0);
        CHECK(v && !strcmp(v, q[i][1]), "%s gave %s, expected %s", q[i][0], v ? v : "NULL", q[i][1]);
        sqlite3_finalize(s);
    }
    /* a database from a newer build is refused, and left alone */
    CHECK(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL) == SQLITE_OK, "set user_version");
    sqlite3_close(db);
    CHECK(ses_store_open(dir, &st, err, sizeof err) == -1 && strstr(err, "newer"), "newer schema: %s", err);
    CHECK(sqlite3_open(p, &db) == SQLITE_OK, "reopen");
    CHECK(sqlite3_exec(db, "PRAGMA user_version = 1", NULL, NULL, NULL) == SQLITE_OK, "reset user_version");
    sqlite3_close(db);
    OK(ses_store_open(dir, &st, err, sizeof err));
    /* foreign keys are on: a message for a session that does not exist is refused */
    ses_message m = {.role = "user", .content = "x", .tok_start = -1, .tok_end = -1};
    CHECK(ses_append_message(st, 12345, &m, NULL, err, sizeof err) == -1 && strstr(err, "no session"), "%s", err);
    ses_store_close(st);
    st_rmdir(dir);
}

static void test_crud(void) {
    char *dir = st_tmpdir("ses-crud");
    ses_store *st;
    OK(ses_store_open(dir, &st, err, sizeof err));
    ses_settings set;
    ses_settings_default(&set);
    set.system_prompt = "Be brief.";
    set.sampling.temp = 0.5f;
    set.dsa_k = 64;
    int64_t a, b;
    OK(ses_create(st, "first", &set, &a, err, sizeof err));
    OK(ses_create(st, NULL, NULL, &b, err, sizeof err));
    ses_info in;
    OK(ses_get(st, a, &in, err, sizeof err));
    CHECK(!strcmp(in.name, "first") && in.settings.system_prompt && !strcmp(in.settings.system_prompt, "Be brief."),
          "get: %s", in.name);
    CHECK(in.settings.sampling.temp == 0.5f && in.settings.dsa_k == 64 && in.n_messages == 1, "settings");
    ses_info_free(&in);
    OK(ses_get(st, b, &in, err, sizeof err));
    char want[64];
    snprintf(want, sizeof want, "Session %lld", (long long)b);
    CHECK(!strcmp(in.name, want) && !in.settings.system_prompt && in.n_messages == 0, "default name %s", in.name);
    ses_info_free(&in);
    OK(ses_rename(st, b, "second", err, sizeof err));
    CHECK(ses_rename(st, 999, "x", err, sizeof err) == -1 && strstr(err, "no session 999"), "%s", err);
    CHECK(ses_get(st, 999, &in, err, sizeof err) == -1 && strstr(err, "no session"), "%s", err);
    ses_info *list;
    int n;
    OK(ses_list(st, &list, &n, err, sizeof err));
    CHECK(n == 2 && list[0].id == b && !strcmp(list[0].name, "second"), "list: %d, first %lld", n,
          n ? (long long)list[0].id : -1LL);
    ses_list_free(list, n);

    /* messages and export (UTF-8, quotes and newlines survive JSON) */
    ses_message u = {.role = "user", .content = "Hello \"quoted\"\nand ünïcode", .tok_start = 5, .tok_end = 20};
    ses_message r = {.role = "assistant", .content = "Hi.", .tok_start = 20, .tok_end = 30, .truncated = 1,
                     .stats = {.n_prompt = 20, .n_gen = 10, .prefill_ms = 1.5, .gen_ms = 2.5}};
    int64_t mid;
    OK(ses_append_message(st, a, &u, &mid, err, sizeof err));
    OK(ses_append_message(st, a, &r, NULL, err, sizeof err));
    ses_message bad = {.role = "robot", .content = "x", .tok_start = -1};
    CHECK(ses_append_message(st, a, &bad, NULL, err, sizeof err) == -1 && strstr(err, "robot"), "%s", err);
    ses_message *ms;
    OK(ses_messages(st, a, &ms, &n, err, sizeof err));
    CHECK(n == 3 && ms[1].id == mid && ms[1].seq == 1 && ms[2].truncated && ms[2].stats.n_gen == 10 &&
              ms[1].tok_start == 5 && ms[1].tok_end == 20 && ms[0].tok_start == -1,
          "messages: %d", n);
    ses_messages_free(ms, n);
    char *js;
    OK(ses_export(st, a, SES_EXPORT_JSON, &js, err, sizeof err));
    json_error_t je;
    json_t *j = json_loads(js ? js : "", 0, &je);
    CHECK(j, "export is not JSON: %s", je.text);
    if (j) {
        json_t *arr = json_object_get(j, "messages");
        CHECK(json_array_size(arr) == 3, "exported messages");
        const char *c1 = json_string_value(json_object_get(json_array_get(arr, 1), "content"));
        CHECK(c1 && !strcmp(c1, u.content), "content round trip: %s", c1 ? c1 : "NULL");
        CHECK(json_is_true(json_object_get(json_array_get(arr, 2), "truncated")), "truncated flag");
        CHECK(!strcmp(json_string_value(json_object_get(j, "name")), "first"), "name");
        json_decref(j);
    }
    free(js);
    char *md;
    OK(ses_export(st, a, SES_EXPORT_MARKDOWN, &md, err, sizeof err));
    CHECK(md && strstr(md, "# first") && strstr(md, "## System\n\nBe brief.") && strstr(md, "## User\n\nHello") &&
              strstr(md, "## Assistant\n\nHi.") && strstr(md, "cut off"),
          "markdown:\n%s", md ? md : "");
    free(md);

    /* delete removes the row, the messages and the cache file */
    st_engine e;
    st_engine_load(&e, NULL);
    dsa_ctx *c = st_ctx(&e, N_CTX);
    int32_t ids[40];
    for (int i = 0; i < 40; i++) ids[i] = st_token(1, i);
    eval(c, ids, 40, NULL);
    ses_session *s;
    OK(ses_open(st, a, &s, err, sizeof err));
    OK(ses_commit_turn(s, c, &e.fp, ids, 40, NULL, 0, err, sizeof err));
    CHECK(ses_delete(st, a, err, sizeof err) == -1 && strstr(err, "open elsewhere"), "delete while open: %s", err);
    ses_close(s);
    CHECK(file_size(dir, a) > 0, "cache file exists");
    OK(ses_delete(st, a, err, sizeof err));
    CHECK(file_size(dir, a) == -1, "cache file removed");
    CHECK(ses_get(st, a, &in, err, sizeof err) == -1, "deleted session still there");
    CHECK(ses_delete(st, a, err, sizeof err) == -1 && strstr(err, "no session"), "%s", err);
    /* an orphaned cache file (a crash inside delete) goes at the next open */
    char p[4200];
    cache_file(dir, 777, p, sizeof p);
    FILE *f = fopen(p, "w");
    if (f) fclose(f);
    ses_store_close(st);
    OK(ses_store_open(dir, &st, err, sizeof err));
    CHECK(access(p, F_OK) != 0, "orphan cache file was not removed");
    OK(ses_list(st, &list, &n, err, sizeof err));
    CHECK(n == 1, "one session left, %d", n);
    ses_list_free(list, n);
    dsa_ctx_free(c);
    st_engine_free(&e);
    ses_store_close(st);
    st_rmdir(dir);
}

/* Several turns committed from one run, restored in another store handle: bit-identical next-token logits. */
static void test_resume(void) {
    char *dir = st_tmpdir("ses-resume");
    st_engine e;
    st_engine_load(&e, NULL);
    int nv = dsa_model_hparams(e.m)->n_vocab;
    float *la = malloc((size_t)nv * 4), *lb = malloc((size_t)nv * 4);
    enum { N = 300 };
    int32_t ids[N + 1];
    for (int i = 0; i <= N; i++) ids[i] = st_token(2, i);
    ses_store *st;
    OK(ses_store_open(dir, &st, err, sizeof err));
    int64_t id;
    OK(ses_create(st, "resume", NULL, &id, err, sizeof err));
    ses_session *s;
    OK(ses_open(st, id, &s, err, sizeof err));
    dsa_ctx *c = st_ctx(&e, N_CTX);
    /* turns ending inside blocks and on a block boundary */
    const int ends[] = {37, 64, 150, 200, N};
    int prev = 0;
    for (int t = 0; t < 5; t++) {
        eval(c, ids + prev, ends[t] - prev, NULL);
        ses_message m = {.role = t % 2 ? "assistant" : "user", .content = "turn", .tok_start = prev,
                         .tok_end = ends[t]};
        OK(ses_commit_turn(s, c, &e.fp, ids, ends[t], &m, 1, err, sizeof err));
        prev = ends[t];
    }
    int nt;
    const int32_t *tk = ses_tokens(s, &nt);
    CHECK(nt == N && tk && !memcmp(tk, ids, N * sizeof *ids), "ses_tokens: %d", nt);
    ses_close(s);
    /* the uninterrupted run's next token */
    eval(c, ids + N, 1, la);
    ses_store_close(st);

    OK(ses_store_open(dir, &st, err, sizeof err));
    ses_restore_info info;
    OK(restore_logits(st, &e, id, ids, N, ids[N], lb, &info));
    CHECK(info.reused == N && info.to_prefill == 0 && !info.rebuilt, "restore: reused %d rebuilt %d (%s)", info.reused,
          info.rebuilt, info.reason);
    CHECK(!memcmp(la, lb, (size_t)nv * 4), "logits after restore differ from the uninterrupted run");
    /* want = NULL: everything committed */
    OK(restore_logits(st, &e, id, NULL, 0, ids[N], lb, &info));
    CHECK(info.reused == N && !memcmp(la, lb, (size_t)nv * 4), "restore of all committed tokens");
    ses_check_report rep;
    OK(ses_check(st, id, &rep, err, sizeof err));
    CHECK(rep.ok && rep.committed == N && rep.n_records == 8, "check: ok %d committed %d records %d (%s)", rep.ok,
          rep.committed, rep.n_records, rep.problem);

    /* a restore that diverges at 170 (the caller regenerates the reply from there): the common prefix only */
    int32_t alt[N];
    memcpy(alt, ids, sizeof alt);
    for (int i = 170; i < N; i++) alt[i] = st_token(3, i);
    dsa_ctx *c2 = st_ctx(&e, N_CTX);
    OK(ses_open(st, id, &s, err, sizeof err));
    OK(ses_restore(s, c2, &e.fp, alt, N, &info, err, sizeof err));
    CHECK(info.reused == 170 && info.to_prefill == N - 170 && dsa_ctx_pos(c2) == 170, "diverged restore: %d",
          info.reused);
    eval(c2, alt + 170, N - 170, NULL);
    /* commit the rewritten tail: the blocks from 128 on are appended again */
    OK(ses_commit_turn(s, c2, &e.fp, alt, N, NULL, 0, err, sizeof err));
    ses_close(s);
    dsa_ctx *ref = st_ctx(&e, N_CTX);
    eval(ref, alt, N, NULL);
    eval(ref, &ids[N], 1, la);
    OK(restore_logits(st, &e, id, alt, N, ids[N], lb, &info));
    CHECK(info.reused == N && !memcmp(la, lb, (size_t)nv * 4), "after a rewrite: reused %d", info.reused);
    OK(ses_check(st, id, &rep, err, sizeof err));
    CHECK(rep.ok && rep.n_records == 11, "check after rewrite: %d records (%s)", rep.n_records, rep.problem);

    /* a shorter commit (the caller dropped the last 50 tokens): no new records, restore gives the prefix */
    OK(ses_open(st, id, &s, err, sizeof err));
    OK(ses_commit_turn(s, c2, &e.fp, alt, 250, NULL, 0, err, sizeof err));
    ses_close(s);
    dsa_ctx_truncate(ref, 250);
    eval(ref, &ids[N], 1, la);
    OK(restore_logits(st, &e, id, NULL, 0, ids[N], lb, &info));
    CHECK(info.reused == 250 && !memcmp(la, lb, (size_t)nv * 4), "after shortening: reused %d", info.reused);

    /* junk past the committed end (a crash mid-commit) is cut off; the cache is still used */
    char p[4200];
    cache_file(dir, id, p, sizeof p);
    int64_t before = file_size(dir, id);
    FILE *f = fopen(p, "ab");
    char junk[10000];
    memset(junk, 0xAB, sizeof junk);
    fwrite(junk, 1, sizeof junk, f);
    fclose(f);
    OK(restore_logits(st, &e, id, NULL, 0, ids[N], lb, &info));
    CHECK(info.reused == 250 && !info.rebuilt && !memcmp(la, lb, (size_t)nv * 4), "restore with a junk tail");
    CHECK(file_size(dir, id) == before, "the junk tail was not cut: %lld vs %lld", (long long)file_size(dir, id),
          (long long)before);
    dsa_ctx_free(c2);
    dsa_ctx_free(ref);
    dsa_ctx_free(c);
    ses_store_close(st);
    free(la), free(lb);
    st_engine_free(&e);
    st_rmdir(dir);
}

/* Each corruption: restore reports a rebuild and reuses nothing; a re-prefill and commit then work again. */
typedef enum { FLIP_BLOCK, TRUNC_HEADER, BAD_MAGIC, OTHER_MODEL, OTHER_SIDECAR, MISSING_FILE, FLIP_HEADER } damage;

static void test_corruption(void) {
    static const char *names[] = {"flipped byte in a block", "truncated header", "wrong magic", "another model",
                                  "another sidecar", "missing file", "flipped byte in the header"};
    static const char *reasons[] = {"checksum", "file is", "magic", "another model", "sidecar", "file is", "header"};
    st_engine e, other;
    st_engine_load(&e, NULL);
    st_engine_load(&other, "llama-mqa");
    enum { N = 150 };
    int32_t ids[N];
    for (int i = 0; i < N; i++) ids[i] = st_token(4, i);
    int nv = dsa_model_hparams(e.m)->n_vocab;
    float *la = malloc((size_t)nv * 4), *lb = malloc((size_t)nv * 4);
    dsa_ctx *c = st_ctx(&e, N_CTX);
    eval(c, ids, N, NULL);
    dsa_ctx *ref = st_ctx(&e, N_CTX);
    eval(ref, ids, N - 1, NULL);
    eval(ref, ids + N - 1, 1, la);
    for (int d = FLIP_BLOCK; d <= FLIP_HEADER; d++) {
        char *dir = st_tmpdir("ses-corrupt");
        ses_store *st;
        OK(ses_store_open(dir, &st, err, sizeof err));
        int64_t id;
        OK(ses_create(st, names[d], NULL, &id, err, sizeof err));
        ses_session *s;
        OK(ses_open(st, id, &s, err, sizeof err));
        OK(ses_commit_turn(s, c, &e.fp, ids, N, NULL, 0, err, sizeof err));
        ses_close(s);
        char p[4200];
        cache_file(dir, id, p, sizeof p);
        int fd = open(p, O_RDWR);
        uint8_t byte;
        off_t at = d == FLIP_BLOCK ? 4096 + 64 + 4 * 64 + 1000 : d == BAD_MAGIC ? 0 : 200;
        switch ((damage)d) {
        case FLIP_BLOCK:
        case BAD_MAGIC:
        case FLIP_HEADER:
            CHECK(pread(fd, &byte, 1, at) == 1, "read");
            byte ^= 0x10;
            CHECK(pwrite(fd, &byte, 1, at) == 1, "write");
            break;
        case TRUNC_HEADER: CHECK(ftruncate(fd, 100) == 0, "truncate"); break;
        case MISSING_FILE: CHECK(unlink(p) == 0, "unlink"); break;
        default: break;
        }
        close(fd);
        ses_engine_fp fp = e.fp;
        if (d == OTHER_SIDECAR) snprintf(fp.sidecar_fp, sizeof fp.sidecar_fp, "another-sidecar");
        ses_restore_info info;
        ses_check_report rep;
        if (d != OTHER_MODEL && d != OTHER_SIDECAR) {
            OK(ses_check(st, id, &rep, err, sizeof err));
            CHECK(!rep.ok, "%s: check passed", names[d]);
        }
        OK(ses_open(st, id, &s, err, sizeof err));
        if (d == OTHER_MODEL) {
            /* another model's engine opening this session: the cache is not for it */
            dsa_ctx *oc = st_ctx(&other, N_CTX);
            OK(ses_restore(s, oc, &other.fp, ids, N, &info, err, sizeof err));
            dsa_ctx_free(oc);
        } else {
            dsa_ctx *c2 = st_ctx(&e, N_CTX);
            OK(ses_restore(s, c2, &fp, ids, N, &info, err, sizeof err));
            CHECK(dsa_ctx_pos(c2) == 0, "%s: position %d after a rebuild", names[d], dsa_ctx_pos(c2));
            dsa_ctx_free(c2);
        }
        CHECK(info.rebuilt && info.reused == 0 && info.to_prefill == N && strstr(info.reason, reasons[d]),
              "%s: rebuilt %d reused %d reason '%s'", names[d], info.rebuilt, info.reused, info.reason);
        /* the caller re-prefills and commits; the session works again */
        dsa_ctx *c3 = st_ctx(&e, N_CTX);
        eval(c3, ids, N, NULL);
        OK(ses_commit_turn(s, c3, &e.fp, ids, N, NULL, 0, err, sizeof err));
        dsa_ctx_free(c3);
        ses_close(s);
        OK(restore_logits(st, &e, id, ids, N - 1, ids[N - 1], lb, &info));
        CHECK(info.reused == N - 1 && !info.rebuilt && !memcmp(la, lb, (size_t)nv * 4), "%s: after the rebuild",
              names[d]);
        OK(ses_check(st, id, &rep, err, sizeof err));
        CHECK(rep.ok, "%s: check after the rebuild: %s", names[d], rep.problem);
        /* the rebuild is on record */
        char *js;
        OK(ses_export(st, id, SES_EXPORT_JSON, &js, err, sizeof err));
        free(js);
        char q[4200];
        snprintf(q, sizeof q, "%s/sessions.db", dir);
        sqlite3 *db;
        sqlite3_stmt *qs;
        int events = -1;
        if (sqlite3_open(q, &db) == SQLITE_OK &&
            sqlite3_prepare_v2(db, "SELECT count(*) FROM events WHERE kind = 'rebuild'", -1, &qs, NULL) == SQLITE_OK) {
            if (sqlite3_step(qs) == SQLITE_ROW) events = sqlite3_column_int(qs, 0);
            sqlite3_finalize(qs);
        }
        sqlite3_close(db);
        CHECK(events == 1, "%s: %d rebuild events", names[d], events);
        ses_store_close(st);
        st_rmdir(dir);
    }
    dsa_ctx_free(c);
    dsa_ctx_free(ref);
    free(la), free(lb);
    st_engine_free(&other);
    st_engine_free(&e);
}

static void test_fork(void) {
    char *dir = st_tmpdir("ses-fork");
    st_engine e;
    st_engine_load(&e, NULL);
    int nv = dsa_model_hparams(e.m)->n_vocab;
    float *la = malloc((size_t)nv * 4), *lb = malloc((size_t)nv * 4);
    enum { N = 260 };
    int32_t ids[N];
    for (int i = 0; i < N; i++) ids[i] = st_token(5, i);
    ses_store *st;
    OK(ses_store_open(dir, &st, err, sizeof err));
    ses_settings set;
    ses_settings_default(&set);
    set.system_prompt = "sys";
    int64_t id;
    OK(ses_create(st, "source", &set, &id, err, sizeof err));
    ses_session *s;
    OK(ses_open(st, id, &s, err, sizeof err));
    dsa_ctx *c = st_ctx(&e, N_CTX);
    eval(c, ids, N, NULL);
    /* messages: user [0,100) assistant [100,150) user [150,200) assistant [200,260); spans 150 and 200 fall inside
     * blocks, 128 would be a boundary */
    ses_message m[4] = {{.role = "user", .content = "u1", .tok_start = 0, .tok_end = 100},
                        {.role = "assistant", .content = "a1", .tok_start = 100, .tok_end = 150},
                        {.role = "user", .content = "u2", .tok_start = 150, .tok_end = 200},
                        {.role = "assistant", .content = "a2", .tok_start = 200, .tok_end = N}};
    OK(ses_commit_turn(s, c, &e.fp, ids, N, m, 4, err, sizeof err));
    ses_message *ms;
    int n;
    OK(ses_messages(st, id, &ms, &n, err, sizeof err));
    CHECK(n == 5, "5 messages with the system prompt, %d", n);
    int64_t at = n == 5 ? ms[2].id : 0; /* a1 */
    ses_messages_free(ms, n);
    int64_t fid;
    OK(ses_fork(s, at, NULL, &fid, err, sizeof err));
    CHECK(ses_fork(s, 99999, NULL, NULL, err, sizeof err) == -1 && strstr(err, "no message"), "%s", err);
    ses_close(s);
    ses_info in;
    OK(ses_get(st, fid, &in, err, sizeof err));
    CHECK(in.n_messages == 3 && in.committed_tokens == 150 && in.forked_from == id && in.forked_at == at &&
              strstr(in.name, "(fork)") && in.settings.system_prompt && !strcmp(in.settings.system_prompt, "sys"),
          "fork: %d messages, %d tokens, name %s", in.n_messages, in.committed_tokens, in.name);
    ses_info_free(&in);
    ses_check_report rep;
    OK(ses_check(st, fid, &rep, err, sizeof err));
    CHECK(rep.ok && rep.committed == 150, "fork check: %s", rep.problem);
    /* the fork's state is the prefix's: equal to a fresh prefill of ids[0..150) */
    dsa_ctx *ref = st_ctx(&e, N_CTX);
    eval(ref, ids, 150, NULL);
    eval(ref, &ids[150], 1, la);
    ses_restore_info info;
    OK(restore_logits(st, &e, fid, ids, 150, ids[150], lb, &info));
    CHECK(info.reused == 150 && !info.rebuilt && !memcmp(la, lb, (size_t)nv * 4), "fork restore: %d", info.reused);
    /* the source is untouched */
    OK(ses_check(st, id, &rep, err, sizeof err));
    CHECK(rep.ok && rep.committed == N, "source after fork");
    /* the fork goes its own way: a different reply appended to it leaves the source alone */
    dsa_ctx_free(c);
    dsa_ctx_free(ref);
    ses_store_close(st);
    free(la), free(lb);
    st_engine_free(&e);
    st_rmdir(dir);
}

static void test_overflow(void) {
    char *dir = st_tmpdir("ses-overflow");
    ses_store *st;
    OK(ses_store_open(dir, &st, err, sizeof err));
    int64_t id;
    OK(ses_create(st, "long", NULL, &id, err, sizeof err));
    /* system [0,30) then turns of 100 tokens: u [30,80) a [80,130) u [130,180) a [180,230) u [230,280) */
    ses_message sys = {.role = "system", .content = "sys", .tok_start = 0, .tok_end = 30};
    OK(ses_append_message(st, id, &sys, NULL, err, sizeof err));
    int pos = 30;
    for (int i = 0; i < 5; i++) {
        ses_message m = {.role = i % 2 ? "assistant" : "user", .content = i % 2 ? "a" : "u", .tok_start = pos,
                         .tok_end = pos + 50};
        OK(ses_append_message(st, id, &m, NULL, err, sizeof err));
        pos += 50;
    }
    ses_overflow o;
    OK(ses_overflow_apply(st, id, 512, 64, &o, err, sizeof err));
    CHECK(o.n_dropped == 0 && o.tokens_after == 280, "fits: dropped %d", o.n_dropped);
    ses_overflow_free(&o);
    /* 280 + 64 > 300: the first turn (u, a) goes */
    OK(ses_overflow_apply(st, id, 300, 64, &o, err, sizeof err));
    CHECK(o.n_dropped == 2 && o.tokens_freed == 100 && o.first_pos == 30 && o.tokens_after == 180,
          "overflow: dropped %d freed %d first %d after %d", o.n_dropped, o.tokens_freed, o.first_pos, o.tokens_after);
    ses_overflow_free(&o);
    ses_message *ms;
    int n;
    OK(ses_messages(st, id, &ms, &n, err, sizeof err));
    CHECK(n == 6 && ms[0].in_context && !ms[1].in_context && !ms[2].in_context && ms[3].in_context &&
              ms[3].tok_start == 30 && ms[5].tok_end == 180,
          "after overflow: spans %d..%d", n == 6 ? ms[3].tok_start : -1, n == 6 ? ms[5].tok_end : -1);
    ses_messages_free(ms, n);
    /* too small for even the last message */
    CHECK(ses_overflow_apply(st, id, 60, 20, &o, err, sizeof err) == -1 && strstr(err, "does not fit"), "%s", err);
    /* nothing changed by the failed call */
    OK(ses_messages(st, id, &ms, &n, err, sizeof err));
    CHECK(n == 6 && ms[3].in_context && ms[3].tok_start == 30, "a failed overflow changed the messages");
    ses_messages_free(ms, n);
    char *md;
    OK(ses_export(st, id, SES_EXPORT_MARKDOWN, &md, err, sizeof err));
    CHECK(md && strstr(md, "dropped from the context"), "export marks dropped messages");
    free(md);
    ses_store_close(st);
    st_rmdir(dir);
}

/* A commit that cannot write (RLIMIT_FSIZE: EFBIG) fails with a clear error and leaves the last commit intact. */
static void test_write_error(void) {
    char *dir = st_tmpdir("ses-full");
    st_engine e;
    st_engine_load(&e, NULL);
    enum { N = 200 };
    int32_t ids[N];
    for (int i = 0; i < N; i++) ids[i] = st_token(6, i);
    ses_store *st;
    OK(ses_store_open(dir, &st, err, sizeof err));
    int64_t id;
    OK(ses_create(st, "full", NULL, &id, err, sizeof err));
    ses_session *s;
    OK(ses_open(st, id, &s, err, sizeof err));
    dsa_ctx *c = st_ctx(&e, N_CTX);
    eval(c, ids, N, NULL);
    OK(ses_commit_turn(s, c, &e.fp, ids, 100, NULL, 0, err, sizeof err));
    ses_close(s);
    ses_store_close(st);
    int64_t size = file_size(dir, id);
    int pfd[2];
    CHECK(pipe(pfd) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {.rlim_cur = (rlim_t)size + 4096, .rlim_max = RLIM_INFINITY};
        setrlimit(RLIMIT_FSIZE, &rl);
        char e2[512] = "";
        ses_store *st2;
        ses_session *s2;
        int r = ses_store_open(dir, &st2, e2, sizeof e2) || ses_open(st2, id, &s2, e2, sizeof e2) ? 2
                : ses_commit_turn(s2, c, &e.fp, ids, N, NULL, 0, e2, sizeof e2) ? 1
                                                                                  : 0;
        if (write(pfd[1], e2, strlen(e2)) < 0) _exit(3);
        _exit(r);
    }
    close(pfd[1]);
    char msg[512] = "";
    ssize_t k = read(pfd[0], msg, sizeof msg - 1);
    msg[k > 0 ? k : 0] = 0;
    close(pfd[0]);
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1, "the commit did not fail (status %d)", status);
    CHECK(strstr(msg, "writing") && strstr(msg, "File too large"), "error: %s", msg);
    OK(ses_store_open(dir, &st, err, sizeof err));
    ses_check_report rep;
    OK(ses_check(st, id, &rep, err, sizeof err));
    CHECK(rep.ok && rep.committed == 100, "after the failed commit: ok %d committed %d (%s)", rep.ok, rep.committed,
          rep.problem);
    /* and with room again the same commit goes through */
    OK(ses_open(st, id, &s, err, sizeof err));
    OK(ses_commit_turn(s, c, &e.fp, ids, N, NULL, 0, err, sizeof err));
    ses_close(s);
    OK(ses_check(st, id, &rep, err, sizeof err));
    CHECK(rep.ok && rep.committed == N, "after the retry");
    dsa_ctx_free(c);
    ses_store_close(st);
    st_engine_free(&e);
    st_rmdir(dir);
}

/* Two processes on one store. */
static void test_two_processes(void) {
    char *dir = st_tmpdir("ses-two");
    ses_store *st;
    OK(ses_store_open(dir, &st, err, sizeof err));
    int64_t id;
    OK(ses_create(st, "shared", NULL, &id, err, sizeof err));
    int go[2], back[2];
    CHECK(pipe(go) == 0 && pipe(back) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        /* the other process: hold the session open, then hold a write transaction */
        close(go[1]);
        close(back[0]);
        char e2[512], b;
        ses_store *st2;
        ses_session *s2;
        if (ses_store_open(dir, &st2, e2, sizeof e2) || ses_open(st2, id, &s2, e2, sizeof e2)) _exit(2);
        if (write(back[1], "o", 1) != 1 || read(go[0], &b, 1) != 1) _exit(3);
        ses_close(s2);
        sqlite3 *db;
        char p[4200];
        snprintf(p, sizeof p, "%s/sessions.db", dir);
        if (sqlite3_open(p, &db) != SQLITE_OK || sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
            _exit(4);
        if (write(back[1], "t", 1) != 1 || read(go[0], &b, 1) != 1) _exit(5);
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
        sqlite3_close(db);
        ses_store_close(st2);
        if (write(back[1], "d", 1) != 1) _exit(6);
        _exit(0);
    }
    close(go[0]);
    close(back[1]);
    char b = 0;
    CHECK(read(back[0], &b, 1) == 1 && b == 'o', "child did not open the session");
    ses_session *s;
    CHECK(ses_open(st, id, &s, err, sizeof err) == -1 && strstr(err, "open elsewhere"), "open: %s", err);
    CHECK(ses_delete(st, id, err, sizeof err) == -1 && strstr(err, "open elsewhere"), "delete: %s", err);
    ses_check_report rep;
    CHECK(ses_check(st, id, &rep, err, sizeof err) == -1 && strstr(err, "open elsewhere"), "check: %s", err);
    /* reads and other sessions are fine meanwhile */
    ses_info *list;
    int n;
    OK(ses_list(st, &list, &n, err, sizeof err));
    ses_list_free(list, n);
    int64_t other;
    OK(ses_create(st, "other", NULL, &other, err, sizeof err));
    CHECK(write(go[1], "c", 1) == 1, "write");
    CHECK(read(back[0], &b, 1) == 1 && b == 't', "child did not take the write lock");
    /* the child's open now closed: ours works */
    OK(ses_open(st, id, &s, err, sizeof err));
    ses_close(s);
    ses_store_set_busy_timeout(st, 200);
    CHECK(ses_rename(st, id, "x", err, sizeof err) == -1 && strstr(err, "locked"), "busy: %s", err);
    ses_info in;
    OK(ses_get(st, id, &in, err, sizeof err)); /* WAL: reading while the other holds the write lock */
    CHECK(!strcmp(in.name, "shared"), "name %s", in.name);
    ses_info_free(&in);
    CHECK(write(go[1], "c", 1) == 1, "write");
    CHECK(read(back[0], &b, 1) == 1 && b == 'd', "child did not finish");
    ses_store_set_busy_timeout(st, 5000);
    OK(ses_rename(st, id, "renamed", err, sizeof err));
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    close(go[1]);
    close(back[0]);
    ses_store_close(st);
    st_rmdir(dir);
}

int main(void) {
    test_database();
    test_crud();
    test_resume();
    test_corruption();
    test_fork();
    test_overflow();
    test_write_error();
    test_two_processes();
    return tu_finish("test_sessions");
}
