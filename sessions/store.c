/* The session store's database: opening and migrating sessions.db, sessions and messages, export, the
 * context-overflow policy.  The schema is documented in docs/sessions.md; the migrations below are its source. */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

void (*ses_test_hook)(const char *point);

/* migrations[v] takes a database at user_version v to v + 1.  Never edit a shipped entry: append a new one. */
static const char *const migrations[] = {
    /* 0 -> 1 */
    "CREATE TABLE sessions ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  name TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL," /* Unix ms */
    "  updated_at INTEGER NOT NULL,"
    "  model_fp TEXT," /* engine of the last commit */
    "  sidecar_fp TEXT,"
    "  system_prompt TEXT,"
    "  temp REAL NOT NULL, top_k INTEGER NOT NULL, top_p REAL NOT NULL, min_p REAL NOT NULL,"
    "  repeat_penalty REAL NOT NULL, repeat_last_n INTEGER NOT NULL, seed INTEGER NOT NULL,"
    "  n_predict INTEGER NOT NULL DEFAULT 0,"
    "  dsa_k INTEGER NOT NULL DEFAULT 0," /* 0: the sidecar's default, -1: dense */
    "  forked_from INTEGER REFERENCES sessions(id) ON DELETE SET NULL,"
    "  forked_at INTEGER" /* message id in the source */
    ");"
    "CREATE TABLE messages ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,"
    "  seq INTEGER NOT NULL,"
    "  role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),"
    "  content TEXT NOT NULL,"
    "  tok_start INTEGER, tok_end INTEGER," /* span in the session's token sequence; NULL: unknown */
    "  in_context INTEGER NOT NULL DEFAULT 1,"
    "  truncated INTEGER NOT NULL DEFAULT 0,"
    "  created_at INTEGER NOT NULL,"
    "  n_prompt INTEGER NOT NULL DEFAULT 0, n_gen INTEGER NOT NULL DEFAULT 0,"
    "  prefill_ms REAL NOT NULL DEFAULT 0, gen_ms REAL NOT NULL DEFAULT 0,"
    "  UNIQUE (session_id, seq)"
    ");"
    "CREATE TABLE caches ("
    "  session_id INTEGER PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,"
    "  file TEXT NOT NULL," /* relative to the store directory */
    "  block_tokens INTEGER NOT NULL,"
    "  committed_tokens INTEGER NOT NULL,"
    "  file_bytes INTEGER NOT NULL," /* end of the last committed record; 0: no header yet */
    "  chain TEXT NOT NULL,"         /* xxh3-64 chain over the committed records, 16 hex digits */
    "  model_fp TEXT, sidecar_fp TEXT, attn TEXT,"
    "  updated_at INTEGER NOT NULL"
    ");"
    "CREATE TABLE events ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,"
    "  at INTEGER NOT NULL,"
    "  kind TEXT NOT NULL," /* 'overflow', 'rebuild', 'fork' */
    "  detail TEXT"         /* JSON */
    ");"
    "CREATE INDEX events_session ON events(session_id);",
};
#define N_MIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))
_Static_assert(N_MIGRATIONS == SES_SCHEMA_VERSION, "SES_SCHEMA_VERSION must count the migrations");

int64_t ses_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int ses_dberr(ses_store *st, const char *what, char *err, size_t errlen) {
    return ses_errf(err, errlen, "%s/sessions.db: %s: %s", st->dir, what, sqlite3_errmsg(st->db));
}

static int exec(ses_store *st, const char *sql, const char *what, char *err, size_t errlen) {
    if (sqlite3_exec(st->db, sql, NULL, NULL, NULL) != SQLITE_OK) return ses_dberr(st, what, err, errlen);
    return 0;
}

int ses_begin(ses_store *st, char *err, size_t errlen) { return exec(st, "BEGIN IMMEDIATE", "begin", err, errlen); }
int ses_commit(ses_store *st, char *err, size_t errlen) {
    if (exec(st, "COMMIT", "commit", err, errlen)) {
        ses_rollback(st);
        return -1;
    }
    return 0;
}
void ses_rollback(ses_store *st) {
    if (!sqlite3_get_autocommit(st->db)) sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
}

static int prep(ses_store *st, const char *sql, sqlite3_stmt **s, char *err, size_t errlen) {
    if (sqlite3_prepare_v2(st->db, sql, -1, s, NULL) != SQLITE_OK) return ses_dberr(st, "prepare", err, errlen);
    return 0;
}

/* Step a statement that returns no rows, finalize it. */
static int step_done(ses_store *st, sqlite3_stmt *s, const char *what, char *err, size_t errlen) {
    int rc = sqlite3_step(s);
    int r = rc == SQLITE_DONE ? 0 : ses_dberr(st, what, err, errlen);
    sqlite3_finalize(s);
    return r;
}

static char *dupstr(const unsigned char *s) { return s ? strdup((const char *)s) : NULL; }

char *ses_default_dir(void) {
    const char *x = getenv("XDG_DATA_HOME"), *h = getenv("HOME");
    char buf[4096];
    if (x && *x == '/')
        snprintf(buf, sizeof buf, "%s/dsachat", x);
    else if (h && *h)
        snprintf(buf, sizeof buf, "%s/.local/share/dsachat", h);
    else
        return NULL;
    return strdup(buf);
}

static int mkdir_p(const char *path, char *err, size_t errlen) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return ses_errf(err, errlen, "path too long: %s", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || !*p) {
            char c = *p;
            *p = 0;
            if (mkdir(buf, 0700) && errno != EEXIST)
                return ses_errf(err, errlen, "cannot create %s: %s", buf, strerror(errno));
            *p = c;
            if (!c) break;
        }
    }
    return 0;
}

char *ses_cache_path(const ses_store *st, int64_t id) {
    size_t n = strlen(st->cachedir) + 32;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%lld.kv", st->cachedir, (long long)id);
    return p;
}

static int migrate(ses_store *st, char *err, size_t errlen) {
    if (ses_begin(st, err, errlen)) return -1;
    sqlite3_stmt *s;
    if (prep(st, "PRAGMA user_version", &s, err, errlen)) goto fail;
    int v = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int(s, 0) : -1;
    sqlite3_finalize(s);
    if (v < 0) {
        ses_dberr(st, "reading the schema version", err, errlen);
        goto fail;
    }
    if (v > N_MIGRATIONS) {
        ses_errf(err, errlen, "%s/sessions.db has schema version %d, newer than this build's %d: upgrade dsachat",
                 st->dir, v, N_MIGRATIONS);
        goto fail;
    }
    if (v == N_MIGRATIONS) {
        ses_rollback(st);
        return 0;
    }
    for (; v < N_MIGRATIONS; v++) {
        char what[64];
        snprintf(what, sizeof what, "migrating the schema from version %d", v);
        if (exec(st, migrations[v], what, err, errlen)) goto fail;
    }
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", N_MIGRATIONS);
    if (exec(st, sql, "setting the schema version", err, errlen)) goto fail;
    return ses_commit(st, err, errlen);
fail:
    ses_rollback(st);
    return -1;
}

/* Cache files whose session is gone (a crash between ses_delete's transaction and its unlink).  The directory is
 * listed before the database is asked, and a session's row is committed before its file is created, so a file that
 * another process is creating right now always finds its row. */
static int sweep_orphans(ses_store *st, char *err, size_t errlen) {
    DIR *d = opendir(st->cachedir);
    if (!d) return ses_errf(err, errlen, "cannot read %s: %s", st->cachedir, strerror(errno));
    int64_t *ids = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end;
        long long id = strtoll(e->d_name, &end, 10);
        if (end == e->d_name || strcmp(end, ".kv") || id <= 0) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            int64_t *p = realloc(ids, cap * sizeof *ids);
            if (!p) {
                closedir(d);
                free(ids);
                return ses_errf(err, errlen, "out of memory");
            }
            ids = p;
        }
        ids[n++] = id;
    }
    closedir(d);
    int r = 0;
    for (size_t i = 0; i < n && !r; i++) {
        int ex = ses_exists(st, ids[i], err, errlen);
        if (ex < 0) r = -1;
        if (ex == 0) {
            char *p = ses_cache_path(st, ids[i]);
            if (p) unlink(p);
            free(p);
        }
    }
    free(ids);
    return r;
}

int ses_store_open(const char *dir, ses_store **out, char *err, size_t errlen) {
    *out = NULL;
    ses_store *st = calloc(1, sizeof *st);
    if (!st) return ses_errf(err, errlen, "out of memory");
    st->dir = dir ? strdup(dir) : ses_default_dir();
    if (!st->dir) {
        free(st);
        return ses_errf(err, errlen, dir ? "out of memory" : "no store directory: set XDG_DATA_HOME or HOME");
    }
    size_t n = strlen(st->dir) + 16;
    char *db = malloc(n);
    st->cachedir = malloc(n);
    if (!db || !st->cachedir) {
        free(db);
        ses_store_close(st);
        return ses_errf(err, errlen, "out of memory");
    }
    snprintf(db, n, "%s/sessions.db", st->dir);
    snprintf(st->cachedir, n, "%s/caches", st->dir);
    if (mkdir_p(st->cachedir, err, errlen)) goto fail;
    if (sqlite3_open_v2(db, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        ses_errf(err, errlen, "cannot open %s: %s", db, st->db ? sqlite3_errmsg(st->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(st->db, 5000);
    sqlite3_extended_result_codes(st->db, 1);
    /* WAL: readers never block the writer; synchronous=FULL: a COMMIT that returned survives power loss, which is
     * what "committed" promises. */
    if (exec(st, "PRAGMA journal_mode = WAL", "setting WAL mode", err, errlen) ||
        exec(st, "PRAGMA synchronous = FULL", "setting synchronous", err, errlen) ||
        exec(st, "PRAGMA foreign_keys = ON", "enabling foreign keys", err, errlen) || migrate(st, err, errlen) ||
        sweep_orphans(st, err, errlen))
        goto fail;
    free(db);
    *out = st;
    return 0;
fail:
    free(db);
    ses_store_close(st);
    return -1;
}

void ses_store_close(ses_store *st) {
    if (!st) return;
    if (st->db) sqlite3_close(st->db);
    free(st->dir);
    free(st->cachedir);
    free(st);
}

const char *ses_store_dir(const ses_store *st) { return st->dir; }
void ses_store_set_busy_timeout(ses_store *st, int ms) { sqlite3_busy_timeout(st->db, ms); }

/* ---- sessions ----------------------------------------------------------------------------------------------- */

void ses_settings_default(ses_settings *s) {
    memset(s, 0, sizeof *s);
    dsa_sampler_defaults(&s->sampling);
}

int ses_exists(ses_store *st, int64_t id, char *err, size_t errlen) {
    sqlite3_stmt *s;
    if (prep(st, "SELECT 1 FROM sessions WHERE id = ?", &s, err, errlen)) return -1;
    sqlite3_bind_int64(s, 1, id);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc == SQLITE_ROW) return 1;
    if (rc == SQLITE_DONE) return 0;
    return ses_dberr(st, "looking up a session", err, errlen);
}

static int no_session(int64_t id, char *err, size_t errlen) {
    return ses_errf(err, errlen, "no session %lld", (long long)id);
}

static void bind_settings(sqlite3_stmt *s, int i, const ses_settings *set) {
    if (set->system_prompt && *set->system_prompt)
        sqlite3_bind_text(s, i, set->system_prompt, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, i);
    const dsa_sampler_params *p = &set->sampling;
    sqlite3_bind_double(s, i + 1, p->temp);
    sqlite3_bind_int(s, i + 2, p->top_k);
    sqlite3_bind_double(s, i + 3, p->top_p);
    sqlite3_bind_double(s, i + 4, p->min_p);
    sqlite3_bind_double(s, i + 5, p->repeat_penalty);
    sqlite3_bind_int(s, i + 6, p->repeat_last_n);
    sqlite3_bind_int64(s, i + 7, (int64_t)p->seed);
    sqlite3_bind_int(s, i + 8, set->n_predict);
    sqlite3_bind_int(s, i + 9, set->dsa_k);
}

int ses_create_in_tx(ses_store *st, const char *name, const ses_settings *set, int64_t *id_out, char *err,
                     size_t errlen) {
    ses_settings def;
    if (!set) {
        ses_settings_default(&def);
        set = &def;
    }
    sqlite3_stmt *s;
    int64_t now = ses_now_ms();
    if (prep(st,
             "INSERT INTO sessions (name, created_at, updated_at, system_prompt, temp, top_k, top_p, min_p,"
             " repeat_penalty, repeat_last_n, seed, n_predict, dsa_k) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
             &s, err, errlen))
        return -1;
    sqlite3_bind_text(s, 1, name ? name : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 2, now);
    sqlite3_bind_int64(s, 3, now);
    bind_settings(s, 4, set);
    if (step_done(st, s, "creating a session", err, errlen)) return -1;
    int64_t id = sqlite3_last_insert_rowid(st->db);
    if (!name) {
        if (prep(st, "UPDATE sessions SET name = 'Session ' || id WHERE id = ?", &s, err, errlen)) return -1;
        sqlite3_bind_int64(s, 1, id);
        if (step_done(st, s, "naming a session", err, errlen)) return -1;
    }
    if (prep(st,
             "INSERT INTO caches (session_id, file, block_tokens, committed_tokens, file_bytes, chain, updated_at)"
             " VALUES (?, ?, ?, 0, 0, '0000000000000000', ?)",
             &s, err, errlen))
        return -1;
    char file[64];
    snprintf(file, sizeof file, "caches/%lld.kv", (long long)id);
    sqlite3_bind_int64(s, 1, id);
    sqlite3_bind_text(s, 2, file, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(s, 3, SES_BLOCK_TOKENS);
    sqlite3_bind_int64(s, 4, now);
    if (step_done(st, s, "creating a cache record", err, errlen)) return -1;
    if (set->system_prompt && *set->system_prompt) {
        ses_message m = {.role = "system", .content = set->system_prompt, .tok_start = -1, .tok_end = -1};
        if (ses_message_insert(st, id, &m, NULL, err, errlen)) return -1;
    }
    *id_out = id;
    return 0;
}

int ses_create(ses_store *st, const char *name, const ses_settings *set, int64_t *id_out, char *err, size_t errlen) {
    int64_t id;
    if (ses_begin(st, err, errlen)) return -1;
    if (ses_create_in_tx(st, name, set, &id, err, errlen)) {
        ses_rollback(st);
        return -1;
    }
    if (ses_commit(st, err, errlen)) return -1;
    if (id_out) *id_out = id;
    return 0;
}

#define INFO_COLS                                                                                                 \
    "s.id, s.name, s.created_at, s.updated_at, s.model_fp, s.sidecar_fp, s.system_prompt, s.temp, s.top_k,"      \
    " s.top_p, s.min_p, s.repeat_penalty, s.repeat_last_n, s.seed, s.n_predict, s.dsa_k,"                         \
    " (SELECT count(*) FROM messages m WHERE m.session_id = s.id), c.committed_tokens, c.file_bytes,"           \
    " coalesce(s.forked_from, 0), coalesce(s.forked_at, 0) FROM sessions s JOIN caches c ON c.session_id = s.id"

static int read_info(sqlite3_stmt *s, ses_info *o) {
    memset(o, 0, sizeof *o);
    o->id = sqlite3_column_int64(s, 0);
    o->name = dupstr(sqlite3_column_text(s, 1));
    o->created_ms = sqlite3_column_int64(s, 2);
    o->updated_ms = sqlite3_column_int64(s, 3);
    o->model_fp = dupstr(sqlite3_column_text(s, 4));
    o->sidecar_fp = dupstr(sqlite3_column_text(s, 5));
    o->settings.system_prompt = dupstr(sqlite3_column_text(s, 6));
    dsa_sampler_params *p = &o->settings.sampling;
    p->temp = (float)sqlite3_column_double(s, 7);
    p->top_k = sqlite3_column_int(s, 8);
    p->top_p = (float)sqlite3_column_double(s, 9);
    p->min_p = (float)sqlite3_column_double(s, 10);
    p->repeat_penalty = (float)sqlite3_column_double(s, 11);
    p->repeat_last_n = sqlite3_column_int(s, 12);
    p->seed = (uint64_t)sqlite3_column_int64(s, 13);
    o->settings.n_predict = sqlite3_column_int(s, 14);
    o->settings.dsa_k = sqlite3_column_int(s, 15);
    o->n_messages = sqlite3_column_int(s, 16);
    o->committed_tokens = sqlite3_column_int(s, 17);
    o->cache_bytes = sqlite3_column_int64(s, 18);
    o->forked_from = sqlite3_column_int64(s, 19);
    o->forked_at = sqlite3_column_int64(s, 20);
    if (!o->name || (sqlite3_column_type(s, 6) != SQLITE_NULL && !o->settings.system_prompt)) return -1;
    return 0;
}

void ses_info_free(ses_info *info) {
    if (!info) return;
    free(info->name);
    free(info->model_fp);
    free(info->sidecar_fp);
    free((char *)info->settings.system_prompt);
    memset(info, 0, sizeof *info);
}

int ses_get(ses_store *st, int64_t id, ses_info *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    sqlite3_stmt *s;
    if (prep(st, "SELECT " INFO_COLS " WHERE s.id = ?", &s, err, errlen)) return -1;
    sqlite3_bind_int64(s, 1, id);
    int rc = sqlite3_step(s), r = 0;
    if (rc == SQLITE_ROW) {
        if (read_info(s, out)) {
            ses_info_free(out);
            r = ses_errf(err, errlen, "out of memory");
        }
    } else {
        r = rc == SQLITE_DONE ? no_session(id, err, errlen) : ses_dberr(st, "reading a session", err, errlen);
    }
    sqlite3_finalize(s);
    return r;
}

int ses_list(ses_store *st, ses_info **out, int *n, char *err, size_t errlen) {
    *out = NULL;
    *n = 0;
    sqlite3_stmt *s;
    if (prep(st, "SELECT " INFO_COLS " ORDER BY s.updated_at DESC, s.id DESC", &s, err, errlen)) return -1;
    ses_info *v = NULL;
    int cnt = 0, cap = 0, rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (cnt == cap) {
            cap = cap ? 2 * cap : 16;
            ses_info *p = realloc(v, (size_t)cap * sizeof *v);
            if (!p) goto oom;
            v = p;
        }
        if (read_info(s, &v[cnt])) {
            ses_info_free(&v[cnt]);
            goto oom;
        }
        cnt++;
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) {
        ses_list_free(v, cnt);
        return ses_dberr(st, "listing sessions", err, errlen);
    }
    *out = v;
    *n = cnt;
    return 0;
oom:
    sqlite3_finalize(s);
    ses_list_free(v, cnt);
    return ses_errf(err, errlen, "out of memory");
}

void ses_list_free(ses_info *list, int n) {
    for (int i = 0; i < n; i++) ses_info_free(&list[i]);
    free(list);
}

/* Run an UPDATE of one session's row; "no session" when it matched nothing. */
static int update_one(ses_store *st, sqlite3_stmt *s, int64_t id, const char *what, char *err, size_t errlen) {
    if (step_done(st, s, what, err, errlen)) return -1;
    if (sqlite3_changes(st->db) == 0) return no_session(id, err, errlen);
    return 0;
}

int ses_rename(ses_store *st, int64_t id, const char *name, char *err, size_t errlen) {
    if (!name) return ses_errf(err, errlen, "rename: no name given");
    sqlite3_stmt *s;
    if (prep(st, "UPDATE sessions SET name = ?, updated_at = ? WHERE id = ?", &s, err, errlen)) return -1;
    sqlite3_bind_text(s, 1, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 2, ses_now_ms());
    sqlite3_bind_int64(s, 3, id);
    return update_one(st, s, id, "renaming a session", err, errlen);
}

int ses_set_settings(ses_store *st, int64_t id, const ses_settings *set, char *err, size_t errlen) {
    sqlite3_stmt *s;
    if (prep(st,
             "UPDATE sessions SET system_prompt = ?, temp = ?, top_k = ?, top_p = ?, min_p = ?, repeat_penalty = ?,"
             " repeat_last_n = ?, seed = ?, n_predict = ?, dsa_k = ?, updated_at = ? WHERE id = ?",
             &s, err, errlen))
        return -1;
    bind_settings(s, 1, set);
    sqlite3_bind_int64(s, 11, ses_now_ms());
    sqlite3_bind_int64(s, 12, id);
    return update_one(st, s, id, "changing settings", err, errlen);
}

int ses_touch(ses_store *st, int64_t id, char *err, size_t errlen) {
    sqlite3_stmt *s;
    if (prep(st, "UPDATE sessions SET updated_at = ? WHERE id = ?", &s, err, errlen)) return -1;
    sqlite3_bind_int64(s, 1, ses_now_ms());
    sqlite3_bind_int64(s, 2, id);
    return update_one(st, s, id, "updating a session", err, errlen);
}

int ses_delete(ses_store *st, int64_t id, char *err, size_t errlen) {
    /* Take the file's lock so that a session someone has open is not pulled from under them. */
    ses_session *h = NULL;
    if (ses_open(st, id, &h, err, errlen)) return -1;
    char *path = ses_cache_path(st, id);
    if (!path) {
        ses_close(h);
        return ses_errf(err, errlen, "out of memory");
    }
    sqlite3_stmt *s;
    int r = prep(st, "DELETE FROM sessions WHERE id = ?", &s, err, errlen);
    if (!r) {
        sqlite3_bind_int64(s, 1, id);
        r = update_one(st, s, id, "deleting a session", err, errlen);
    }
    /* The row is gone: unlink while still holding the lock (a crash before this leaves an orphan that the next
     * ses_store_open removes). */
    if (!r && unlink(path) && errno != ENOENT)
        r = ses_errf(err, errlen, "session deleted, but its cache %s stays: %s", path, strerror(errno));
    ses_close(h);
    free(path);
    return r;
}

/* ---- messages ----------------------------------------------------------------------------------------------- */

static int valid_role(const char *r) {
    return r && (!strcmp(r, "system") || !strcmp(r, "user") || !strcmp(r, "assistant"));
}

int ses_message_insert(ses_store *st, int64_t id, const ses_message *m, int64_t *msg_id, char *err, size_t errlen) {
    if (!valid_role(m->role))
        return ses_errf(err, errlen, "message role '%s' is not system, user or assistant", m->role ? m->role : "");
    sqlite3_stmt *s;
    if (prep(st,
             "INSERT INTO messages (session_id, seq, role, content, tok_start, tok_end, truncated, created_at,"
             " n_prompt, n_gen, prefill_ms, gen_ms) VALUES (?1,"
             " (SELECT coalesce(max(seq) + 1, 0) FROM messages WHERE session_id = ?1), ?,?,?,?,?,?,?,?,?,?)",
             &s, err, errlen))
        return -1;
    sqlite3_bind_int64(s, 1, id);
    sqlite3_bind_text(s, 2, m->role, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, m->content ? m->content : "", -1, SQLITE_TRANSIENT);
    if (m->tok_start >= 0 && m->tok_end >= m->tok_start) {
        sqlite3_bind_int(s, 4, m->tok_start);
        sqlite3_bind_int(s, 5, m->tok_end);
    } else {
        sqlite3_bind_null(s, 4);
        sqlite3_bind_null(s, 5);
    }
    sqlite3_bind_int(s, 6, m->truncated ? 1 : 0);
    sqlite3_bind_int64(s, 7, ses_now_ms());
    sqlite3_bind_int(s, 8, m->stats.n_prompt);
    sqlite3_bind_int(s, 9, m->stats.n_gen);
    sqlite3_bind_double(s, 10, m->stats.prefill_ms);
    sqlite3_bind_double(s, 11, m->stats.gen_ms);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) {
        if (rc == SQLITE_CONSTRAINT_FOREIGNKEY) return no_session(id, err, errlen);
        return ses_dberr(st, "adding a message", err, errlen);
    }
    if (msg_id) *msg_id = sqlite3_last_insert_rowid(st->db);
    return ses_touch(st, id, err, errlen);
}

int ses_append_message(ses_store *st, int64_t id, const ses_message *m, int64_t *msg_id, char *err, size_t errlen) {
    if (ses_begin(st, err, errlen)) return -1;
    if (ses_message_insert(st, id, m, msg_id, err, errlen)) {
        ses_rollback(st);
        return -1;
    }
    return ses_commit(st, err, errlen);
}

int ses_message_set_span(ses_store *st, int64_t msg_id, int tok_start, int tok_end, char *err, size_t errlen) {
    sqlite3_stmt *s;
    if (prep(st, "UPDATE messages SET tok_start = ?, tok_end = ? WHERE id = ?", &s, err, errlen)) return -1;
    sqlite3_bind_int(s, 1, tok_start);
    sqlite3_bind_int(s, 2, tok_end);
    sqlite3_bind_int64(s, 3, msg_id);
    return step_done(st, s, "setting a message's token span", err, errlen);
}

int ses_messages(ses_store *st, int64_t id, ses_message **out, int *n, char *err, size_t errlen) {
    *out = NULL;
    *n = 0;
    int ex = ses_exists(st, id, err, errlen);
    if (ex <= 0) return ex < 0 ? -1 : no_session(id, err, errlen);
    sqlite3_stmt *s;
    if (prep(st,
             "SELECT id, seq, role, content, coalesce(tok_start, -1), coalesce(tok_end, -1), in_context, truncated,"
             " created_at, n_prompt, n_gen, prefill_ms, gen_ms FROM messages WHERE session_id = ? ORDER BY seq",
             &s, err, errlen))
        return -1;
    sqlite3_bind_int64(s, 1, id);
    ses_message *v = NULL;
    int cnt = 0, cap = 0, rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (cnt == cap) {
            cap = cap ? 2 * cap : 16;
            ses_message *p = realloc(v, (size_t)cap * sizeof *v);
            if (!p) goto oom;
            v = p;
        }
        ses_message *m = &v[cnt];
        memset(m, 0, sizeof *m);
        m->id = sqlite3_column_int64(s, 0);
        m->seq = sqlite3_column_int(s, 1);
        m->role = dupstr(sqlite3_column_text(s, 2));
        m->content = dupstr(sqlite3_column_text(s, 3));
        cnt++;
        if (!m->role || !m->content) goto oom;
        m->tok_start = sqlite3_column_int(s, 4);
        m->tok_end = sqlite3_column_int(s, 5);
        m->in_context = sqlite3_column_int(s, 6);
        m->truncated = sqlite3_column_int(s, 7);
        m->created_ms = sqlite3_column_int64(s, 8);
        m->stats.n_prompt = sqlite3_column_int(s, 9);
        m->stats.n_gen = sqlite3_column_int(s, 10);
        m->stats.prefill_ms = sqlite3_column_double(s, 11);
        m->stats.gen_ms = sqlite3_column_double(s, 12);
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) {
        ses_messages_free(v, cnt);
        return ses_dberr(st, "reading messages", err, errlen);
    }
    *out = v;
    *n = cnt;
    return 0;
oom:
    sqlite3_finalize(s);
    ses_messages_free(v, cnt);
    return ses_errf(err, errlen, "out of memory");
}

void ses_messages_free(ses_message *msgs, int n) {
    for (int i = 0; i < n; i++) {
        free((char *)msgs[i].role);
        free((char *)msgs[i].content);
    }
    free(msgs);
}

int ses_event(ses_store *st, int64_t id, const char *kind, const char *detail, char *err, size_t errlen) {
    sqlite3_stmt *s;
    if (prep(st, "INSERT INTO events (session_id, at, kind, detail) VALUES (?, ?, ?, ?)", &s, err, errlen)) return -1;
    sqlite3_bind_int64(s, 1, id);
    sqlite3_bind_int64(s, 2, ses_now_ms());
    sqlite3_bind_text(s, 3, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, detail, -1, SQLITE_TRANSIENT);
    return step_done(st, s, "recording an event", err, errlen);
}

/* ---- the cache row ------------------------------------------------------------------------------------------ */

int ses_cache_row_get(ses_store *st, int64_t id, ses_cache_row *row, char *err, size_t errlen) {
    sqlite3_stmt *s;
    if (prep(st, "SELECT committed_tokens, file_bytes, chain, block_tokens FROM caches WHERE session_id = ?", &s, err,
             errlen))
        return -1;
    sqlite3_bind_int64(s, 1, id);
    int rc = sqlite3_step(s), r = 0;
    if (rc == SQLITE_ROW) {
        row->committed = sqlite3_column_int(s, 0);
        row->file_bytes = sqlite3_column_int64(s, 1);
        const unsigned char *c = sqlite3_column_text(s, 2);
        row->chain = c ? strtoull((const char *)c, NULL, 16) : 0;
        row->block_tokens = sqlite3_column_int(s, 3);
    } else {
        r = rc == SQLITE_DONE ? no_session(id, err, errlen) : ses_dberr(st, "reading a cache record", err, errlen);
    }
    sqlite3_finalize(s);
    return r;
}

int ses_cache_row_set(ses_store *st, int64_t id, const ses_cache_row *row, const ses_engine_fp *fp, const char *attn,
                      char *err, size_t errlen) {
    sqlite3_stmt *s;
    if (prep(st,
             "UPDATE caches SET committed_tokens = ?, file_bytes = ?, chain = ?, updated_at = ?,"
             " model_fp = coalesce(?, model_fp), sidecar_fp = coalesce(?, sidecar_fp), attn = coalesce(?, attn)"
             " WHERE session_id = ?",
             &s, err, errlen))
        return -1;
    char chain[17];
    snprintf(chain, sizeof chain, "%016llx", (unsigned long long)row->chain);
    sqlite3_bind_int(s, 1, row->committed);
    sqlite3_bind_int64(s, 2, row->file_bytes);
    sqlite3_bind_text(s, 3, chain, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 4, ses_now_ms());
    if (fp) {
        sqlite3_bind_text(s, 5, fp->model_fp, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(s, 6, fp->sidecar_fp, -1, SQLITE_TRANSIENT);
    }
    if (attn) sqlite3_bind_text(s, 7, attn, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 8, id);
    if (update_one(st, s, id, "recording the committed cache length", err, errlen)) return -1;
    if (!fp) return 0;
    if (prep(st, "UPDATE sessions SET model_fp = ?, sidecar_fp = ?, updated_at = ? WHERE id = ?", &s, err, errlen))
        return -1;
    sqlite3_bind_text(s, 1, fp->model_fp, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 2, fp->sidecar_fp, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 3, ses_now_ms());
    sqlite3_bind_int64(s, 4, id);
    return update_one(st, s, id, "recording the engine of a session", err, errlen);
}

/* ---- export ------------------------------------------------------------------------------------------------- */

static const char *fmt_time(int64_t ms, char *buf, size_t n) {
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

static char *export_json(const ses_info *in, const ses_message *m, int n) {
    char t1[32], t2[32];
    const dsa_sampler_params *p = &in->settings.sampling;
    json_t *msgs = json_array();
    json_t *root = json_pack(
        "{s:I, s:s, s:s, s:s, s:s?, s:s?, s:{s:s?, s:f, s:i, s:f, s:f, s:f, s:i, s:I, s:i, s:i}, s:i, s:o}", "id",
        (json_int_t)in->id, "name", in->name, "created", fmt_time(in->created_ms, t1, sizeof t1), "updated",
        fmt_time(in->updated_ms, t2, sizeof t2), "model_fingerprint", in->model_fp, "sidecar_fingerprint",
        in->sidecar_fp, "settings", "system_prompt", in->settings.system_prompt, "temp", (double)p->temp, "top_k",
        p->top_k, "top_p", (double)p->top_p, "min_p", (double)p->min_p, "repeat_penalty", (double)p->repeat_penalty,
        "repeat_last_n", p->repeat_last_n, "seed", (json_int_t)p->seed, "n_predict", in->settings.n_predict, "dsa_k",
        in->settings.dsa_k, "committed_tokens", in->committed_tokens, "messages", msgs);
    if (!root) return NULL;
    for (int i = 0; i < n; i++) {
        json_t *o = json_pack("{s:I, s:s, s:s, s:s, s:b, s:b}", "id", (json_int_t)m[i].id, "role", m[i].role,
                              "content", m[i].content, "created", fmt_time(m[i].created_ms, t1, sizeof t1),
                              "in_context", m[i].in_context, "truncated", m[i].truncated);
        if (!o) goto fail;
        if (m[i].tok_start >= 0 && json_object_set_new(o, "tokens", json_pack("[i, i]", m[i].tok_start, m[i].tok_end)))
            goto fail_o;
        if (!strcmp(m[i].role, "assistant") &&
            json_object_set_new(o, "stats",
                                json_pack("{s:i, s:i, s:f, s:f}", "n_prompt", m[i].stats.n_prompt, "n_gen",
                                          m[i].stats.n_gen, "prefill_ms", m[i].stats.prefill_ms, "gen_ms",
                                          m[i].stats.gen_ms)))
            goto fail_o;
        if (json_array_append_new(msgs, o)) goto fail;
        continue;
    fail_o:
        json_decref(o);
        goto fail;
    }
    char *s = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    return s;
fail:
    json_decref(root);
    return NULL;
}

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (b->n + n + 1 > cap) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static char *export_md(const ses_info *in, const ses_message *m, int n) {
    sbuf b = {0};
    char t1[32], line[256];
    sb_str(&b, "# ");
    sb_str(&b, in->name);
    snprintf(line, sizeof line, "\n\n_Session %lld, created %s", (long long)in->id,
             fmt_time(in->created_ms, t1, sizeof t1));
    sb_str(&b, line);
    snprintf(line, sizeof line, ", updated %s._\n", fmt_time(in->updated_ms, t1, sizeof t1));
    sb_str(&b, line);
    for (int i = 0; i < n; i++) {
        const char *r = m[i].role;
        sb_str(&b, !strcmp(r, "system") ? "\n## System" : !strcmp(r, "user") ? "\n## User" : "\n## Assistant");
        if (!m[i].in_context) sb_str(&b, " _(dropped from the context)_");
        sb_str(&b, "\n\n");
        sb_str(&b, m[i].content);
        if (m[i].truncated) sb_str(&b, "\n\n_(reply cut off)_");
        sb_str(&b, "\n");
    }
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

int ses_export(ses_store *st, int64_t id, ses_export_format fmt, char **out, char *err, size_t errlen) {
    *out = NULL;
    ses_info in;
    ses_message *m;
    int n;
    if (ses_get(st, id, &in, err, errlen)) return -1;
    if (ses_messages(st, id, &m, &n, err, errlen)) {
        ses_info_free(&in);
        return -1;
    }
    *out = fmt == SES_EXPORT_MARKDOWN ? export_md(&in, m, n) : export_json(&in, m, n);
    ses_info_free(&in);
    ses_messages_free(m, n);
    return *out ? 0 : ses_errf(err, errlen, "out of memory while exporting session %lld", (long long)id);
}

/* ---- the context-overflow policy ---------------------------------------------------------------------------- */

int ses_overflow_apply(ses_store *st, int64_t id, int n_ctx, int reserve, ses_overflow *out, char *err,
                       size_t errlen) {
    memset(out, 0, sizeof *out);
    ses_message *m = NULL;
    int n = 0, *ix = NULL;
    if (ses_begin(st, err, errlen)) return -1;
    if (ses_messages(st, id, &m, &n, err, errlen)) goto fail;
    /* The in-context messages, in order; each must know its span. */
    ix = malloc((size_t)(n ? n : 1) * sizeof *ix);
    if (!ix) {
        ses_errf(err, errlen, "out of memory");
        goto fail;
    }
    int k = 0, total = 0;
    for (int i = 0; i < n; i++) {
        if (!m[i].in_context) continue;
        if (m[i].tok_start < 0) {
            ses_errf(err, errlen, "session %lld: message %lld has no token span", (long long)id, (long long)m[i].id);
            goto fail;
        }
        ix[k++] = i;
        if (m[i].tok_end > total) total = m[i].tok_end;
    }
    int first = 0; /* the leading system messages stay */
    while (first < k && !strcmp(m[ix[first]].role, "system")) first++;
    int drop_end = first; /* messages ix[first .. drop_end) are dropped */
    int freed = 0;
    while (total - freed + reserve > n_ctx) {
        if (drop_end >= k - 1) {
            ses_errf(err, errlen, "the last message (%d tokens) does not fit the context of %d tokens with %d reserved",
                     k ? m[ix[k - 1]].tok_end - m[ix[k - 1]].tok_start : 0, n_ctx, reserve);
            goto fail;
        }
        /* one turn: the message at drop_end and everything up to the next user message */
        int j = drop_end + 1;
        while (j < k - 1 && strcmp(m[ix[j]].role, "user")) j++;
        drop_end = j;
        freed = m[ix[drop_end]].tok_start - m[ix[first]].tok_start;
    }
    out->first_pos = first < k ? m[ix[first]].tok_start : total;
    if (drop_end > first) {
        out->dropped = malloc((size_t)(drop_end - first) * sizeof *out->dropped);
        if (!out->dropped) {
            ses_errf(err, errlen, "out of memory");
            goto fail;
        }
        sqlite3_stmt *s;
        for (int i = first; i < drop_end; i++) {
            if (prep(st, "UPDATE messages SET in_context = 0, tok_start = NULL, tok_end = NULL WHERE id = ?", &s, err,
                     errlen))
                goto fail;
            sqlite3_bind_int64(s, 1, m[ix[i]].id);
            if (step_done(st, s, "dropping a message", err, errlen)) goto fail;
            out->dropped[out->n_dropped++] = m[ix[i]].id;
        }
        for (int i = drop_end; i < k; i++) {
            if (prep(st, "UPDATE messages SET tok_start = tok_start - ?1, tok_end = tok_end - ?1 WHERE id = ?2", &s,
                     err, errlen))
                goto fail;
            sqlite3_bind_int(s, 1, freed);
            sqlite3_bind_int64(s, 2, m[ix[i]].id);
            if (step_done(st, s, "moving a message", err, errlen)) goto fail;
        }
        out->tokens_freed = freed;
        char detail[256];
        snprintf(detail, sizeof detail,
                 "{\"dropped_messages\":%d,\"tokens_freed\":%d,\"first_pos\":%d,\"tokens_before\":%d,\"n_ctx\":%d}",
                 out->n_dropped, freed, out->first_pos, total, n_ctx);
        if (ses_event(st, id, "overflow", detail, err, errlen) || ses_touch(st, id, err, errlen)) goto fail;
    }
    out->tokens_after = total - freed;
    free(ix);
    ses_messages_free(m, n);
    if (ses_commit(st, err, errlen)) {
        ses_overflow_free(out);
        return -1;
    }
    return 0;
fail:
    ses_overflow_free(out);
    free(ix);
    ses_messages_free(m, n);
    ses_rollback(st);
    return -1;
}

void ses_overflow_free(ses_overflow *o) {
    free(o->dropped);
    memset(o, 0, sizeof *o);
}
