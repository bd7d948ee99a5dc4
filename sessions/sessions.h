/*
 * Sessions: conversations that survive a restart.  One store is a directory (default $XDG_DATA_HOME/dsachat, else
 * ~/.local/share/dsachat) holding one SQLite database, sessions.db (schema: docs/sessions.md), and one cache file
 * per session, caches/<id>.kv, with the engine state of the conversation's tokens: f16 K/V rows of every layer and
 * the FP8 indexer keys + scales, in fixed blocks of SES_BLOCK_TOKENS tokens, each with an xxh3 checksum, written
 * append-only.
 *
 * Durability: a turn is committed when its blocks are written and fsynced AND the SQLite transaction recording the
 * new committed length (with the turn's messages) has completed.  Opening a cache cuts off whatever lies past the
 * committed length; a cache that fails a check (block checksum, header, checksum chain) or was made by another
 * model, sidecar or attention setting is never used: ses_restore resets it and reports that the caller must
 * re-prefill the transcript.
 *
 * Threads: a ses_store is one SQLite connection; use it (and the ses_session handles opened from it) from one
 * thread at a time -- e.g. a libuv daemon's worker thread, or any thread under the caller's lock.  Different
 * ses_store handles on the same directory may be used concurrently from different threads or processes: SQLite
 * serialises writers (busy timeout 5 s by default, then "database is locked"), and a session's cache file is
 * locked (flock) by whichever handle has it open, so a second ses_open of the same session fails with a clear
 * error instead of interleaving writes.
 *
 * Errors: every function returns 0, or -1 with a one-line message in err (errlen bytes; err may be NULL).
 * Nothing already committed is lost when a call fails (disk full, I/O error, a busy database).
 */
#ifndef DSA_SESSIONS_H
#define DSA_SESSIONS_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "sampler.h"

#define SES_SCHEMA_VERSION 1 /* PRAGMA user_version of sessions.db that this build writes */
#define SES_FILE_VERSION 1   /* version field of the cache file header */
#define SES_BLOCK_TOKENS 64  /* tokens per cache block */

typedef struct ses_store ses_store;
typedef struct ses_session ses_session;

/* ---- the store ------------------------------------------------------------------------------------------ */

/* The default store directory: $XDG_DATA_HOME/dsachat, else $HOME/.local/share/dsachat (malloc'd; NULL when
 * neither variable is set or out of memory). */
char *ses_default_dir(void);

/* Open (creating the directory, database and caches/ when missing) the store in dir (NULL: ses_default_dir()).
 * Migrates an older schema forward; refuses a newer one.  Removes cache files whose session no longer exists
 * (left by a crash inside ses_delete). */
int ses_store_open(const char *dir, ses_store **out, char *err, size_t errlen);
void ses_store_close(ses_store *st);
const char *ses_store_dir(const ses_store *st);
/* How long a write waits for another connection's transaction before failing with "database is locked". */
void ses_store_set_busy_timeout(ses_store *st, int ms);

/* ---- sessions ------------------------------------------------------------------------------------------- */

typedef struct {
    const char *system_prompt; /* NULL or "" for none */
    dsa_sampler_params sampling;
    int n_predict;             /* reply length limit (0: the caller's default) */
    int dsa_k;                 /* top-k of DSA: 0 = the sidecar's default, -1 = dense attention */
} ses_settings;

/* Settings with the sampler defaults, no system prompt, DSA at the sidecar's k. */
void ses_settings_default(ses_settings *s);

typedef struct {
    int64_t id;
    char *name;
    int64_t created_ms, updated_ms;    /* Unix time in milliseconds */
    char *model_fp, *sidecar_fp;       /* of the engine that last committed state; NULL before the first commit */
    ses_settings settings;             /* settings.system_prompt is owned by this struct */
    int n_messages;                    /* all messages, including those dropped from the context */
    int committed_tokens;              /* tokens whose state is committed in the cache file */
    int64_t cache_bytes;               /* committed bytes of the cache file */
    int64_t forked_from, forked_at;    /* source session and message id, 0 when not a fork */
} ses_info;
void ses_info_free(ses_info *info);

/* id_out may be NULL.  name NULL: "Session <id>".  A system prompt in the settings becomes the first message. */
int ses_create(ses_store *st, const char *name, const ses_settings *set, int64_t *id_out, char *err, size_t errlen);
/* All sessions, most recently updated first: *out is an array of *n (free with ses_list_free). */
int ses_list(ses_store *st, ses_info **out, int *n, char *err, size_t errlen);
void ses_list_free(ses_info *list, int n);
int ses_get(ses_store *st, int64_t id, ses_info *out, char *err, size_t errlen);
int ses_rename(ses_store *st, int64_t id, const char *name, char *err, size_t errlen);
int ses_set_settings(ses_store *st, int64_t id, const ses_settings *set, char *err, size_t errlen);
/* Removes the session, its messages and its cache file.  Fails while a handle has the session open. */
int ses_delete(ses_store *st, int64_t id, char *err, size_t errlen);

/* ---- messages ------------------------------------------------------------------------------------------- */

typedef struct {
    int n_prompt, n_gen;        /* tokens prefilled for this reply, tokens generated */
    double prefill_ms, gen_ms;
} ses_gen_stats;

typedef struct {
    int64_t id;                 /* output only */
    int seq;                    /* output only: 0, 1, 2 ... within the session */
    const char *role;           /* "system", "user" or "assistant" */
    const char *content;
    int tok_start, tok_end;     /* the message's span [start, end) in the session's token sequence; -1 unknown */
    int in_context;             /* output only: 0 once the overflow policy dropped it */
    int truncated;              /* a reply that was cut off (length limit, cancelled, context full) */
    int64_t created_ms;         /* output only */
    ses_gen_stats stats;        /* assistant messages; zeros otherwise */
} ses_message;

/* The messages of a session in order (*out: *n entries, strings owned by the array; ses_messages_free). */
int ses_messages(ses_store *st, int64_t id, ses_message **out, int *n, char *err, size_t errlen);
void ses_messages_free(ses_message *msgs, int n);
/* Append one message without touching the cache (e.g. the user's message before the reply starts). */
int ses_append_message(ses_store *st, int64_t id, const ses_message *m, int64_t *msg_id, char *err, size_t errlen);

/* Record where a message lies in the session's token sequence (the overflow policy needs every in-context
 * message's span; a system prompt set by ses_create gets its span once the caller has rendered it). */
int ses_message_set_span(ses_store *st, int64_t msg_id, int tok_start, int tok_end, char *err, size_t errlen);

typedef enum { SES_EXPORT_JSON = 0, SES_EXPORT_MARKDOWN = 1 } ses_export_format;
/* The transcript as one malloc'd NUL-terminated string. */
int ses_export(ses_store *st, int64_t id, ses_export_format fmt, char **out, char *err, size_t errlen);

/* The context-overflow policy.  When the in-context messages' tokens plus reserve no longer fit n_ctx, drop the
 * oldest turns (a user message and the replies up to the next user message) after the leading system messages,
 * never the last message, until they fit.  The dropped messages stay in the transcript with in_context = 0; the
 * spans of the kept ones move down by the tokens freed; an "overflow" event is recorded.  The caller re-renders the
 * in-context messages and re-prefills from first_pos (ses_restore with the new ids reuses the system prompt's
 * state).  Nothing to drop: n_dropped = 0.  Fails when even the last message alone does not fit. */
typedef struct {
    int n_dropped;
    int64_t *dropped;           /* message ids (malloc'd; ses_overflow_free) */
    int tokens_freed;
    int first_pos;              /* position of the first dropped token: everything before it is unchanged */
    int tokens_after;           /* in-context tokens after the drop */
} ses_overflow;
int ses_overflow_apply(ses_store *st, int64_t id, int n_ctx, int reserve, ses_overflow *out, char *err,
                       size_t errlen);
void ses_overflow_free(ses_overflow *o);

/* ---- engine state --------------------------------------------------------------------------------------- */

/* What a cache is valid for (with the context's attention mode and top-k, read at commit/restore time). */
typedef struct {
    char model_fp[64];   /* dsa_model_fingerprint */
    char sidecar_fp[64]; /* "xxh3-64:..." of the sidecar file, or "none" without an indexer */
} ses_engine_fp;
/* sidecar_path NULL: no indexer. */
int ses_engine_fp_init(ses_engine_fp *fp, dsa_model *m, const char *sidecar_path, char *err, size_t errlen);
/* "xxh3-64:<16 hex digits>" of a whole file. */
int ses_file_fingerprint(const char *path, char out[64], char *err, size_t errlen);

/* Open a session's cache for restore and commit; locks it against other handles (another process or another
 * ses_store of this one): "session 3 is open elsewhere" when taken.  The cache is read and checked lazily, by the
 * first ses_restore, ses_commit_turn or ses_fork. */
int ses_open(ses_store *st, int64_t id, ses_session **out, char *err, size_t errlen);
void ses_close(ses_session *s);
int64_t ses_session_id(const ses_session *s);

typedef struct {
    int reused;        /* positions restored into the context from the cache */
    int to_prefill;    /* n_want - reused: what the caller must still evaluate */
    int committed;     /* tokens committed in the cache (after a reset: 0) */
    int rebuilt;       /* 1 when the cache could not be used and was reset */
    char reason[256];  /* why, when rebuilt */
} ses_restore_info;

/* Fill context c (any position; it is overwritten) with the cached state of the longest common prefix of the
 * committed tokens and want[0..n_want) (want NULL: all committed tokens), and set its position there.  The next
 * token's logits are then bit-identical to the uninterrupted run's.  When everything is reused and the caller needs
 * the last token's logits, dsa_ctx_truncate(c, n_want - 1) and evaluate that token again.  A cache that is corrupt
 * or belongs to another model/sidecar/attention setting/layout is reset (info->rebuilt, info->reason; an event
 * "rebuild" is recorded) and nothing is reused: the caller re-prefills, never runs on wrong state.  Returns -1 only
 * for errors the caller must see (I/O, database). */
int ses_restore(ses_session *s, dsa_ctx *c, const ses_engine_fp *fp, const int32_t *want, int n_want,
                ses_restore_info *info, char *err, size_t errlen);

/* Commit a turn: c holds the state of ids[0..n) (n <= dsa_ctx_pos(c)); the blocks from the first position that
 * differs from the committed tokens are appended to the cache file and fsynced, then one SQLite transaction appends
 * msgs[0..n_msgs) (may be 0) and records the new committed length n.  On failure nothing changes: the previous
 * commit stays intact. */
int ses_commit_turn(ses_session *s, dsa_ctx *c, const ses_engine_fp *fp, const int32_t *ids, int n,
                    const ses_message *msgs, int n_msgs, char *err, size_t errlen);

/* The committed token ids (valid until the next call on s; NULL with *n = 0 before the cache is loaded). */
const int32_t *ses_tokens(const ses_session *s, int *n);

/* A new session with the messages up to and including message at_msg and the cached state of their tokens (whole
 * blocks are copied with copy_file_range, which shares them on reflink-capable file systems). */
int ses_fork(ses_session *src, int64_t at_msg, const char *name, int64_t *new_id, char *err, size_t errlen);

/* ---- integrity ------------------------------------------------------------------------------------------ */

typedef struct {
    int ok;               /* 1: the cache matches the database and every committed block's checksum */
    int committed;        /* committed tokens */
    int n_records;        /* records up to the committed length (superseded ones included) */
    int64_t file_bytes;   /* committed bytes */
    int64_t bytes_on_disk; /* blocks the file occupies */
    char problem[256];    /* the first problem found, when !ok */
} ses_check_report;
/* Check one session's cache against the database without an engine; modifies nothing.  Takes a shared lock:
 * "open elsewhere" while a handle has the session open. */
int ses_check(ses_store *st, int64_t id, ses_check_report *r, char *err, size_t errlen);

/* ---- testing -------------------------------------------------------------------------------------------- */

/* Called (when set) at the steps of a commit: "write" (after each record is written), "fsync" (after the file is
 * synced, before the database transaction), "commit" (after the transaction).  For crash-injection tests. */
extern void (*ses_test_hook)(const char *point);

#endif
