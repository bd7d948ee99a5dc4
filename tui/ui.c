/*
 * The curses client: a transcript with scrollback, a session sidebar, a multi-line input editor and a status bar,
 * driven by one poll(2) loop over the terminal, the daemon's socket and (while it starts) the daemon's output.
 *
 * The daemon owns the state (sessions, transcripts, settings); this file keeps a copy of what it shows and asks
 * the daemon again whenever that copy may be stale (after a reply, a switch, a reconnection).  Requests are sent
 * without waiting: each one's id goes into a small table saying what its reply is for, and the chat stream of the
 * reply being generated is recognised by its id.  Layout (widths, wrapping) comes from text.c, so that the lines
 * laid out are exactly the cells ncursesw draws.
 */
#define _GNU_SOURCE
#include <curses.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <wchar.h>

#include "text.h"
#include "tui.h"

/* ---- state ------------------------------------------------------------------------------------------------ */

enum role { R_USER, R_ASSISTANT, R_SYSTEM, R_INFO, R_ERROR };
enum conn_state { C_DOWN, C_SPAWNING, C_UP };
enum kind { K_NONE, K_HELLO, K_LIST, K_OPEN, K_HISTORY, K_CREATE, K_RENAME, K_DELETE, K_SET, K_EXPORT, K_STATS,
            K_CANCEL, K_FORK };

/* One display line of the transcript. */
typedef struct tline {
    int msg;     /* -1: a blank line */
    int header;  /* the role line */
    int hang;    /* extra columns before a wrapped paragraph's later lines */
    size_t start, end;
    int md;      /* Markdown: the inline state at the line's start (TX_MD_BOLD, TX_MD_CODE) and MD_BLOCK, MD_HEAD */
} tline;

enum { MD_BLOCK = 4, MD_HEAD = 8 }; /* a line of a code block (or its fence), of a heading */

typedef struct msg {
    enum role role;
    char *text;
    size_t len, cap;
    int truncated, streaming, dropped;
    /* its display lines, laid out for lay_w columns and the first lay_len bytes: a draw lays out again only what
     * changed (the reply streaming in, everything after a resize), so a long transcript costs nothing per token */
    tline *lay;
    int nlay, caplay, lay_w;
    size_t lay_len;
} msg;

typedef struct sess {
    long long id;
    char *name;
    long long messages;
    int generating;
} sess;

typedef struct pending {
    long long id;
    enum kind kind;
    char *arg; /* K_EXPORT: the file; K_OPEN: "initial" when it is the first open */
} pending;

#define MAX_PENDING 64

static struct ui {
    const dc_opts *o;
    char *sock;
    const char *first_session; /* -s */
    int first_asked;           /* ... has been asked for */
    int first_named;           /* ... is a name (not an id): created if no session has it */
    int quit;

    /* the connection */
    dc_conn *conn;
    enum conn_state state;
    dc_spawn spawn;
    int spawned_once;       /* a start was tried since the last connection */
    long long retry_at;     /* when C_DOWN: the next attempt */
    int was_up;             /* connected before (so this is a reconnection) */
    int daemon_loading;     /* a daemon started elsewhere holds the socket's lock but does not listen yet */
    char after_load[256];   /* a note to show once the next transcript is loaded (it replaces the screen's) */
    pending pend[MAX_PENDING];
    int npend;

    /* the model (hello) */
    char model[160], backend[16];
    long long n_ctx;
    int has_dsa;
    long long dsa_default_k;

    /* the session shown */
    long long sid;
    char *sname;
    long long dsa_k; /* its settings' dsa_k */
    long long ctx_used;
    double tok_s;
    sess *sessions;
    int nsessions;
    int sidebar;

    /* the transcript */
    msg *msgs;
    int nmsgs, capmsgs;
    long long chat_id; /* the chat.send streaming, or -1 */
    long long chat_sid; /* its session */
    long long pre_done, pre_total; /* its prompt's evaluation so far ("prefill" events), until the first token */
    int pasting;       /* inside a bracketed paste: Enter is a new line */
    int scroll;        /* lines scrolled back from the bottom */

    /* the input editor */
    char *in;
    size_t in_len, in_cap, cur;
    char **hist;
    int nhist, hist_pos;
    char *hist_saved;
    int in_top; /* first input line shown */

    /* one-shot states */
    int quit_armed;      /* Ctrl-C pressed once while idle */
    int confirm_delete;  /* /delete waits for y */
    char notice[256];    /* a transient line in the status bar */
    long long notice_until;
    int spinner;
} U;

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void die_oom(void) {
    endwin();
    fprintf(stderr, "dsachat: out of memory\n");
    exit(1);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) die_oom();
    return q;
}

static char *xstrdup(const char *s) {
    char *p = strdup(s ? s : "");
    if (!p) die_oom();
    return p;
}

/* ---- the transcript ------------------------------------------------------------------------------------------ */

static msg *msg_add(enum role role, const char *text) {
    if (U.nmsgs == U.capmsgs) {
        U.capmsgs = U.capmsgs ? U.capmsgs * 2 : 32;
        U.msgs = xrealloc(U.msgs, sizeof *U.msgs * (size_t)U.capmsgs);
    }
    msg *m = &U.msgs[U.nmsgs++];
    memset(m, 0, sizeof *m);
    m->role = role;
    m->len = strlen(text);
    m->cap = m->len + 1;
    m->text = xrealloc(NULL, m->cap);
    memcpy(m->text, text, m->len + 1);
    U.scroll = 0;
    return m;
}

static void msg_append(msg *m, const char *t) {
    size_t n = strlen(t);
    if (m->len + n + 1 > m->cap) {
        while (m->len + n + 1 > m->cap) m->cap *= 2;
        m->text = xrealloc(m->text, m->cap);
    }
    memcpy(m->text + m->len, t, n + 1);
    m->len += n;
}

static void msg_free(msg *m) {
    free(m->text);
    free(m->lay);
}

static void clear_transcript(void) {
    for (int i = 0; i < U.nmsgs; i++) msg_free(&U.msgs[i]);
    U.nmsgs = 0;
    U.scroll = 0;
}

static void info(enum role role, const char *fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    msg_add(role, buf);
}

static void notice(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(U.notice, sizeof U.notice, fmt, ap);
    va_end(ap);
    U.notice_until = now_ms() + 4000;
}

/* ---- requests ------------------------------------------------------------------------------------------------ */

static void disconnected(const char *why);

/* Send {"op":op, ...params}; its reply goes to kind.  0, or -1 when not connected. */
static int request(enum kind kind, const char *op, json_t *params, const char *arg) {
    if (U.state != C_UP || U.npend == MAX_PENDING) {
        json_decref(params);
        if (U.state != C_UP) notice("not connected to dsachatd");
        return -1;
    }
    json_t *req = params ? params : json_object();
    json_object_set_new(req, "op", json_string(op));
    char err[300];
    long long id = dc_send(U.conn, req, err, sizeof err);
    if (id < 0) {
        disconnected(err);
        return -1;
    }
    U.pend[U.npend++] = (pending){id, kind, arg ? xstrdup(arg) : NULL};
    return 0;
}

static int take_pending(long long id, pending *out) {
    for (int i = 0; i < U.npend; i++) {
        if (U.pend[i].id == id) {
            *out = U.pend[i];
            U.pend[i] = U.pend[--U.npend];
            return 1;
        }
    }
    return 0;
}

static json_t *sref(void) { return json_integer(U.sid); }

static void open_session(json_t *ref, const char *tag) {
    request(K_OPEN, "session.get", json_pack("{so}", "session", ref), tag);
}

/* ---- the connection -------------------------------------------------------------------------------------------- */

static void on_connected(void) {
    U.state = C_UP;
    U.spawned_once = 0;
    if (U.was_up) snprintf(U.after_load, sizeof U.after_load, "reconnected to dsachatd");
    U.was_up = 1;
    request(K_HELLO, "hello", json_pack("{si}", "protocol", DC_PROTOCOL), NULL);
    request(K_LIST, "session.list", NULL, NULL);
    if (U.sid > 0) open_session(sref(), "reopen");
}

static void try_connect(void) {
    char err[300];
    int missing = 0;
    U.conn = dc_connect(U.sock, &missing, err, sizeof err);
    U.daemon_loading = 0;
    if (U.conn) {
        on_connected();
        return;
    }
    if (missing && dc_daemon_starting(U.sock)) { /* someone else's start: wait for it to listen */
        U.state = C_DOWN;
        U.retry_at = now_ms() + 200;
        U.daemon_loading = 1;
        return;
    }
    if (missing && !U.o->no_spawn && !U.spawned_once) {
        U.spawned_once = 1;
        if (dc_spawn_start(&U.spawn, U.sock, U.o, err, sizeof err) == 0) {
            U.state = C_SPAWNING;
            return;
        }
        info(R_ERROR, "cannot start dsachatd: %s", err);
    }
    U.state = C_DOWN;
    U.retry_at = now_ms() + 1000;
}

static void disconnected(const char *why) {
    if (U.conn) dc_close(U.conn);
    U.conn = NULL;
    for (int i = 0; i < U.npend; i++) free(U.pend[i].arg);
    U.npend = 0;
    if (U.chat_id >= 0 && U.nmsgs > 0 && U.msgs[U.nmsgs - 1].streaming) {
        U.msgs[U.nmsgs - 1].streaming = 0;
        U.msgs[U.nmsgs - 1].truncated = 1;
    }
    U.chat_id = -1;
    info(R_ERROR, "lost the connection to dsachatd (%s); reconnecting every second, your input is kept", why);
    U.state = C_DOWN;
    U.retry_at = now_ms() + 1000;
}

static void spawn_step(void) {
    char err[600];
    int r = dc_spawn_step(&U.spawn, err, sizeof err);
    if (r == 1) return;
    if (r < 0) info(R_ERROR, "cannot start dsachatd: %s", err);
    U.state = C_DOWN;
    try_connect(); /* (even after a failure: another client may have started it) */
}

/* ---- replies ---------------------------------------------------------------------------------------------------- */

static long long jint(const json_t *o, const char *k, long long dflt) {
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? (long long)json_integer_value(v) : dflt;
}

static const char *jstr(const json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

static void set_model(const json_t *m, const char *backend) {
    const char *name = jstr(m, "name");
    snprintf(U.model, sizeof U.model, "%s", name ? name : "?");
    char *dot = strstr(U.model, ".gguf");
    if (dot) *dot = 0;
    snprintf(U.backend, sizeof U.backend, "%s", backend ? backend : jstr(m, "backend") ? jstr(m, "backend") : "?");
    U.n_ctx = jint(m, "n_ctx", 0);
    json_t *dsa = json_object_get(m, "dsa");
    U.has_dsa = json_is_object(dsa) && json_is_true(json_object_get(dsa, "enabled"));
    U.dsa_default_k = jint(dsa, "k", 0);
}

static void set_sessions(const json_t *arr) {
    for (int i = 0; i < U.nsessions; i++) free(U.sessions[i].name);
    U.nsessions = (int)json_array_size(arr);
    U.sessions = xrealloc(U.sessions, sizeof *U.sessions * (size_t)U.nsessions);
    for (int i = 0; i < U.nsessions; i++) {
        json_t *s = json_array_get(arr, (size_t)i);
        U.sessions[i] = (sess){jint(s, "id", 0), xstrdup(jstr(s, "name")), jint(s, "messages", 0),
                               json_is_true(json_object_get(s, "generating"))};
    }
}

/* Show session s (an object from the daemon): its name and settings now, its transcript when history comes. */
static void show_session(const json_t *s, int fetch_history) {
    long long id = jint(s, "id", 0);
    if (id != U.sid) U.ctx_used = jint(s, "tokens", 0), U.tok_s = 0;
    U.sid = id;
    free(U.sname);
    U.sname = xstrdup(jstr(s, "name"));
    U.dsa_k = jint(json_object_get(s, "settings"), "dsa_k", 0);
    if (fetch_history) request(K_HISTORY, "session.history", json_pack("{so}", "session", sref()), NULL);
}

static void flush_after_load(void) {
    if (U.after_load[0]) info(R_INFO, "%s", U.after_load);
    U.after_load[0] = 0;
}

static void on_history(const json_t *r) {
    clear_transcript();
    const json_t *s = json_object_get(r, "session");
    show_session(s, 0);
    const char *sys = jstr(s, "system");
    if (sys && *sys) msg_add(R_SYSTEM, sys);
    json_t *m;
    size_t i;
    json_array_foreach(json_object_get(r, "messages"), i, m) {
        const char *role = jstr(m, "role");
        enum role ro = role && !strcmp(role, "user") ? R_USER : role && !strcmp(role, "assistant") ? R_ASSISTANT : R_SYSTEM;
        msg *x = msg_add(ro, jstr(m, "content") ? jstr(m, "content") : "");
        x->truncated = json_is_true(json_object_get(m, "truncated"));
        x->dropped = json_is_false(json_object_get(m, "in_context"));
    }
    if (json_is_true(json_object_get(s, "generating")))
        info(R_INFO, "(another client is generating a reply in this session)");
    flush_after_load();
}

static void on_list(const json_t *r) {
    set_sessions(json_object_get(r, "sessions"));
    if (U.sid > 0) return;
    /* nothing shown yet: the session asked for, else the most recent, else a new one */
    if (U.first_session && !U.first_asked) {
        json_t *ref = dc_session_ref(U.first_session);
        U.first_named = json_is_string(ref);
        U.first_asked = 1;
        open_session(ref, "initial");
    } else if (U.nsessions > 0) {
        open_session(json_integer(U.sessions[0].id), NULL);
    } else {
        request(K_CREATE, "session.create", NULL, NULL);
    }
}

static int write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    int bad = fputs(text, f) < 0;
    bad |= fclose(f) != 0;
    return bad ? -1 : 0;
}

static void on_stats(const json_t *r) {
    info(R_INFO, "daemon: %s, up %.0f s, %lld clients, %lld sessions open, %lld generating; tokens: %lld generated, "
         "%lld prefilled, %lld reused from caches; %lld requests, %lld errors",
         jstr(r, "version") ? jstr(r, "version") : "?", json_number_value(json_object_get(r, "uptime_s")),
         jint(r, "clients", 0), jint(r, "sessions_open", 0), jint(r, "generating", 0), jint(r, "tokens_generated", 0),
         jint(r, "tokens_prefilled", 0), jint(r, "tokens_reused", 0), jint(r, "requests", 0), jint(r, "errors", 0));
    info(R_INFO, "session %lld \"%s\": context %lld/%lld tokens, last reply %.1f tok/s", U.sid, U.sname ? U.sname : "",
         U.ctx_used, U.n_ctx, U.tok_s);
}

static void on_reply(const pending *p, const json_t *r) {
    if (dc_err_code(r)) {
        if (p->kind == K_OPEN && p->arg && !strcmp(p->arg, "reopen")) { /* the session went away meanwhile */
            U.sid = 0;
            clear_transcript();
            request(K_LIST, "session.list", NULL, NULL);
        } else if (p->kind == K_OPEN && p->arg && !strcmp(p->arg, "initial")) {
            if (U.first_named && !strcmp(dc_err_code(r), "no_session")) { /* -s NAME: a new session of that name */
                request(K_CREATE, "session.create", json_pack("{ss}", "name", U.first_session), NULL);
                return;
            }
            /* shown once the session opened instead has loaded (loading clears the screen) */
            snprintf(U.after_load, sizeof U.after_load, "-s %s: %s", U.first_session, dc_err_message(r));
            request(K_LIST, "session.list", NULL, NULL);
        } else if (p->kind != K_CANCEL) {
            info(R_ERROR, "%s: %s", dc_err_code(r), dc_err_message(r));
        }
        return;
    }
    switch (p->kind) {
    case K_HELLO:
        if (jint(r, "protocol", 1) != DC_PROTOCOL)
            info(R_ERROR, "the daemon speaks protocol %lld, this client %d", jint(r, "protocol", 0), DC_PROTOCOL);
        set_model(json_object_get(r, "model"), jstr(r, "backend"));
        break;
    case K_LIST: on_list(r); break;
    case K_OPEN: show_session(json_object_get(r, "session"), 1); break;
    case K_HISTORY: on_history(r); break;
    case K_CREATE:
        clear_transcript();
        show_session(json_object_get(r, "session"), 0);
        flush_after_load();
        info(R_INFO, "new session \"%s\"", U.sname);
        request(K_LIST, "session.list", NULL, NULL);
        break;
    case K_FORK: /* the copy opens, with the transcript so far; p->arg is the source's name */
        snprintf(U.after_load, sizeof U.after_load, "forked \"%s\" into \"%s\"", p->arg ? p->arg : "",
                 jstr(json_object_get(r, "session"), "name") ? jstr(json_object_get(r, "session"), "name") : "");
        show_session(json_object_get(r, "session"), 1);
        request(K_LIST, "session.list", NULL, NULL);
        break;
    case K_RENAME:
        show_session(json_object_get(r, "session"), 0);
        info(R_INFO, "renamed to \"%s\"", U.sname);
        request(K_LIST, "session.list", NULL, NULL);
        break;
    case K_DELETE:
        snprintf(U.after_load, sizeof U.after_load, "deleted session \"%s\"", p->arg ? p->arg : "");
        U.sid = 0;
        request(K_LIST, "session.list", NULL, NULL);
        break;
    case K_SET: {
        const json_t *s = json_object_get(r, "session");
        show_session(s, 0);
        char set[512] = "";
        const char *k;
        json_t *v;
        json_object_foreach(json_object_get(s, "settings"), k, v) {
            size_t l = strlen(set);
            if (json_is_number(v)) snprintf(set + l, sizeof set - l, "%s%s %g", l ? ", " : "", k, json_number_value(v));
        }
        const char *sys = jstr(s, "system");
        info(R_INFO, "settings: %s; system prompt: %s", set, sys && *sys ? sys : "(none)");
        break;
    }
    case K_EXPORT:
        if (write_file(p->arg, jstr(r, "text") ? jstr(r, "text") : ""))
            info(R_ERROR, "cannot write %s: %s", p->arg, strerror(errno));
        else info(R_INFO, "exported the transcript to %s", p->arg);
        break;
    case K_STATS: on_stats(r); break;
    case K_CANCEL:
    case K_NONE: break;
    }
}

/* An event or the error of the chat.send streaming. */
static void on_chat(const json_t *m) {
    msg *last = U.nmsgs ? &U.msgs[U.nmsgs - 1] : NULL;
    if (dc_err_code(m)) {
        if (last && last->streaming) U.nmsgs--, msg_free(last);
        info(R_ERROR, "%s: %s", dc_err_code(m), dc_err_message(m));
        U.chat_id = -1;
        return;
    }
    const char *ev = jstr(m, "event");
    int shown = last && last->streaming; /* (not when another session is shown meanwhile) */
    if (ev && !strcmp(ev, "prefill")) {
        U.pre_done = jint(m, "done", 0);
        U.pre_total = jint(m, "total", 0);
    } else if (ev && !strcmp(ev, "token")) {
        U.pre_total = 0;
        const char *t = jstr(m, "text");
        if (t && shown) msg_append(last, t);
    } else if (ev && !strcmp(ev, "done")) {
        const char *stop = jstr(m, "stop");
        json_t *st = json_object_get(m, "stats");
        U.chat_id = -1;
        if (U.chat_sid == U.sid) {
            U.ctx_used = jint(st, "context_used", U.ctx_used);
            if (json_is_number(json_object_get(st, "tok_s"))) U.tok_s = json_number_value(json_object_get(st, "tok_s"));
        }
        if (shown) {
            last->streaming = 0;
            last->truncated = !stop || strcmp(stop, "eos");
            if (stop && strcmp(stop, "eos"))
                info(R_INFO, "(reply %s)", !strcmp(stop, "length") ? "stopped at max_tokens" : stop);
            if (jint(st, "history_dropped", 0) > 0)
                info(R_INFO, "(%lld old messages left the context)", jint(st, "history_dropped", 0));
        }
        if (json_is_false(json_object_get(m, "stored")))
            info(R_ERROR, "the turn was not stored: %s", jstr(m, "store_error") ? jstr(m, "store_error") : "?");
        request(K_LIST, "session.list", NULL, NULL);
    }
}

static void on_message(const json_t *m) {
    long long id = dc_id(m);
    pending p;
    if (id >= 0 && id == U.chat_id) {
        on_chat(m);
    } else if (id >= 0 && take_pending(id, &p)) {
        on_reply(&p, m);
        free(p.arg);
    } else if (dc_err_code(m)) {
        info(R_ERROR, "%s: %s", dc_err_code(m), dc_err_message(m));
    }
}

static void read_socket(void) {
    char err[300];
    int r = dc_fill(U.conn, err, sizeof err);
    if (r <= 0) {
        disconnected(r == 0 ? "the daemon went away" : err);
        return;
    }
    json_t *m;
    while (U.conn && (m = dc_next(U.conn, NULL))) {
        on_message(m);
        json_decref(m);
    }
}

/* ---- commands ---------------------------------------------------------------------------------------------------- */

static const char *help_text[] = {
    "Keys:",
    "  Enter sends the message; Alt-Enter (Esc Enter) or Ctrl-J adds a new line",
    "  Up/Down move between input lines, and from the first/last one walk the messages sent",
    "  Ctrl-A/Ctrl-E start/end of line; Ctrl-K/Ctrl-U delete to its end/start; Ctrl-W the word before",
    "  Alt-B/Alt-F a word left/right, Alt-D delete the word after; Ctrl-B/Ctrl-F/Ctrl-D a character",
    "  PgUp/PgDn and the mouse wheel scroll the transcript; Home/End go to its top/bottom when the input is "
    "empty (Alt-< and Alt-> always)",
    "  Tab or F2 shows/hides the session list; Ctrl-L redraws",
    "  Ctrl-C cancels the reply being generated; pressed twice while idle, quits",
    "Commands:",
    "  /new [NAME]   /sessions   /switch NAME|ID   /rename NAME   /delete (asks)",
    "  /fork [NAME]   a new session holding this conversation so far, to take another way from here",
    "  /system [TEXT] sets the system prompt (without TEXT: removes it)",
    "  /set temp|top_p|top_k|min_p|seed|repeat_penalty|max_tokens VALUE",
    "  /dsa on|off|k=N   sparse attention for this session",
    "  /export FILE   the transcript as Markdown (JSON when FILE ends in .json)",
    "  /copy [code]   the last reply (or its last code block) to the clipboard, through the terminal",
    "  /stats   /help   /quit",
};

static void cmd_set(const char *args) {
    char key[32];
    double v;
    char *end;
    if (sscanf(args, "%31s", key) != 1) {
        info(R_ERROR, "usage: /set temp|top_p|top_k|min_p|seed|repeat_penalty|max_tokens VALUE");
        return;
    }
    const char *val = args + strspn(args, " ") + strlen(key);
    val += strspn(val, " ");
    errno = 0;
    v = strtod(val, &end);
    if (!*val || *end || errno) {
        info(R_ERROR, "/set %s: give a number", key);
        return;
    }
    static const char *ints[] = {"top_k", "seed", "max_tokens"}, *reals[] = {"temp", "top_p", "min_p", "repeat_penalty"};
    json_t *j = NULL;
    for (int i = 0; i < 3; i++)
        if (!strcmp(key, ints[i])) j = json_integer((json_int_t)v);
    for (int i = 0; i < 4; i++)
        if (!strcmp(key, reals[i])) j = json_real(v);
    if (!j) {
        info(R_ERROR, "/set: unknown setting \"%s\" (temp, top_p, top_k, min_p, seed, repeat_penalty, max_tokens)", key);
        return;
    }
    if (json_is_integer(j) && v != (double)(json_int_t)v) {
        json_decref(j);
        info(R_ERROR, "/set %s: give an integer", key);
        return;
    }
    request(K_SET, "session.set", json_pack("{sos{so}}", "session", sref(), "settings", key, j), NULL);
}

static void cmd_dsa(const char *a) {
    long long k;
    json_t *v = NULL;
    if (!strcmp(a, "on")) v = json_integer(0);
    else if (!strcmp(a, "off")) v = json_integer(-1);
    else if (sscanf(a, "k=%lld", &k) == 1 && k > 0) v = json_integer(k);
    if (!v) {
        info(R_ERROR, "usage: /dsa on|off|k=N");
        return;
    }
    if (!U.has_dsa && U.model[0]) info(R_INFO, "(this model has no DSA indexer: it attends densely anyway)");
    request(K_SET, "session.set", json_pack("{sos{so}}", "session", sref(), "settings", "dsa_k", v), NULL);
}

static void cmd_sessions(void) {
    if (U.nsessions == 0) info(R_INFO, "no sessions");
    for (int i = 0; i < U.nsessions; i++)
        info(R_INFO, "%s %lld  %s  (%lld messages)%s", U.sessions[i].id == U.sid ? "*" : " ", U.sessions[i].id,
             U.sessions[i].name, U.sessions[i].messages, U.sessions[i].generating ? " generating" : "");
    request(K_LIST, "session.list", NULL, NULL);
}

/* Put s[0..n) on the clipboard through the terminal: the OSC 52 sequence, which most terminals honour (xterm
 * with allowWindowOps, kitty, WezTerm, foot, iTerm2, Windows Terminal; tmux with set-clipboard on) and the
 * others ignore.  0, or -1 when the terminal cannot be written. */
static int osc52(const char *s, size_t n) {
    char *o = xrealloc(NULL, 8 + (n + 2) / 3 * 4 + 1);
    memcpy(o, "\033]52;c;", 7);
    size_t len = 7 + tx_base64(s, n, o + 7);
    o[len++] = '\a';
    refresh(); /* curses's own output first */
    int rc = 0;
    for (size_t off = 0; off < len;) {
        ssize_t w = write(STDOUT_FILENO, o + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            rc = -1;
            break;
        }
        off += (size_t)w;
    }
    free(o);
    return rc;
}

/* /copy: the last reply; /copy code: the last fenced code block of the replies. */
static void cmd_copy(const char *arg) {
    int code = !strcmp(arg, "code");
    if (*arg && !code) {
        info(R_ERROR, "usage: /copy [code]");
        return;
    }
    for (int i = U.nmsgs - 1; i >= 0; i--) {
        const msg *m = &U.msgs[i];
        size_t a = 0, b = m->len;
        if (m->role != R_ASSISTANT || !m->len || (code && !tx_md_last_block(m->text, m->len, &a, &b))) continue;
        if (osc52(m->text + a, b - a)) info(R_ERROR, "/copy: cannot write to the terminal: %s", strerror(errno));
        else info(R_INFO, "copied %s (%zu bytes) to the clipboard through the terminal (OSC 52)",
                  code ? "the last code block" : "the last reply", b - a);
        return;
    }
    info(R_ERROR, "/copy: %s", code ? "no reply holds a code block (between ``` lines)" : "no reply yet");
}

/* A line starting with '/'. */
static void command(char *line) {
    char *cmd = line + 1, *arg = cmd + strcspn(cmd, " ");
    if (*arg) *arg++ = 0;
    arg += strspn(arg, " ");
    size_t n = strlen(arg);
    while (n && arg[n - 1] == ' ') arg[--n] = 0;
    if (!strcmp(cmd, "quit") || !strcmp(cmd, "q")) {
        U.quit = 1;
    } else if (!strcmp(cmd, "help")) {
        for (size_t i = 0; i < sizeof help_text / sizeof *help_text; i++) info(R_INFO, "%s", help_text[i]);
    } else if (!strcmp(cmd, "new")) {
        request(K_CREATE, "session.create", *arg ? json_pack("{ss}", "name", arg) : NULL, NULL);
    } else if (!strcmp(cmd, "sessions")) {
        cmd_sessions();
    } else if (!strcmp(cmd, "switch") && *arg) {
        open_session(dc_session_ref(arg), NULL);
    } else if (!strcmp(cmd, "rename") && *arg) {
        request(K_RENAME, "session.rename", json_pack("{soss}", "session", sref(), "name", arg), NULL);
    } else if (!strcmp(cmd, "delete")) {
        U.confirm_delete = 1;
        info(R_INFO, "Delete session \"%s\" and its transcript? Press y to delete, any other key to keep it.",
             U.sname ? U.sname : "?");
    } else if (!strcmp(cmd, "system")) {
        request(K_SET, "session.set", json_pack("{soss}", "session", sref(), "system", arg), NULL);
    } else if (!strcmp(cmd, "set")) {
        cmd_set(arg);
    } else if (!strcmp(cmd, "dsa")) {
        cmd_dsa(arg);
    } else if (!strcmp(cmd, "export") && *arg) {
        size_t l = strlen(arg);
        const char *fmt = l > 5 && !strcmp(arg + l - 5, ".json") ? "json" : "markdown";
        request(K_EXPORT, "session.export", json_pack("{soss}", "session", sref(), "format", fmt), arg);
    } else if (!strcmp(cmd, "stats")) {
        request(K_STATS, "daemon.stats", NULL, NULL);
    } else if (!strcmp(cmd, "copy")) {
        cmd_copy(arg);
    } else if (!strcmp(cmd, "fork")) {
        request(K_FORK, "session.fork", *arg ? json_pack("{soss}", "session", sref(), "name", arg)
                                              : json_pack("{so}", "session", sref()), U.sname);
    } else {
        info(R_ERROR, "unknown command or missing argument: /%s (/help lists them)", cmd);
    }
}

static void send_chat(const char *text) {
    if (U.state != C_UP || U.sid <= 0) {
        notice("not connected: the message stays in the input");
        return;
    }
    json_t *req = json_pack("{sssoss}", "op", "chat.send", "session", sref(), "text", text);
    if (!req) {
        notice("the message is not valid UTF-8");
        return;
    }
    char err[300];
    long long id = dc_send(U.conn, req, err, sizeof err);
    if (id < 0) {
        disconnected(err);
        return;
    }
    msg_add(R_USER, text);
    msg_add(R_ASSISTANT, "")->streaming = 1;
    U.chat_id = id;
    U.chat_sid = U.sid;
    U.pre_done = U.pre_total = 0;
}

/* ---- the input editor ---------------------------------------------------------------------------------------------- */

static void in_set(const char *s) {
    size_t n = strlen(s);
    if (n + 1 > U.in_cap) U.in_cap = n + 64, U.in = xrealloc(U.in, U.in_cap);
    memcpy(U.in, s, n + 1);
    U.in_len = U.cur = n;
}

static void in_insert(const char *s, size_t n) {
    if (U.in_len + n + 1 > U.in_cap) {
        while (U.in_len + n + 1 > U.in_cap) U.in_cap = U.in_cap ? U.in_cap * 2 : 256;
        U.in = xrealloc(U.in, U.in_cap);
    }
    memmove(U.in + U.cur + n, U.in + U.cur, U.in_len - U.cur + 1);
    memcpy(U.in + U.cur, s, n);
    U.in_len += n;
    U.cur += n;
}

static void in_delete(size_t from, size_t to) {
    if (from >= to) return;
    memmove(U.in + from, U.in + to, U.in_len - to + 1);
    U.in_len -= to - from;
    U.cur = from;
}

static size_t line_start(size_t off) {
    while (off > 0 && U.in[off - 1] != '\n') off--;
    return off;
}

static size_t line_end(size_t off) {
    while (off < U.in_len && U.in[off] != '\n') off++;
    return off;
}

static void history_add(const char *s) {
    if (U.nhist > 0 && !strcmp(U.hist[U.nhist - 1], s)) return;
    U.hist = xrealloc(U.hist, sizeof *U.hist * (size_t)(U.nhist + 1));
    U.hist[U.nhist++] = xstrdup(s);
}

static void history_move(int d) {
    int to = U.hist_pos + d;
    if (to < 0 || to > U.nhist) return;
    if (U.hist_pos == U.nhist) {
        free(U.hist_saved);
        U.hist_saved = xstrdup(U.in ? U.in : "");
    }
    U.hist_pos = to;
    in_set(to == U.nhist ? U.hist_saved : U.hist[to]);
}

static void submit(void) {
    if (!U.in || U.in_len == 0) return;
    char *line = xstrdup(U.in);
    if (line[0] == '/' && line[1] != '/') {
        history_add(line);
        in_set("");
        command(line);
    } else if (U.chat_id >= 0) {
        notice("a reply is still coming (Ctrl-C cancels it)");
    } else if (U.state != C_UP) {
        notice("not connected: the message stays in the input");
    } else {
        history_add(line);
        in_set("");
        send_chat(line[0] == '/' ? line + 1 : line); /* "//x" sends "/x" */
    }
    U.hist_pos = U.nhist;
    free(line);
}

/* The input laid out in width columns: lines as offsets into U.in. */
typedef struct in_line {
    size_t start, end;
} in_line;

static int input_layout(int width, in_line **out) {
    int n = 0, cap = 8;
    in_line *v = xrealloc(NULL, sizeof *v * (size_t)cap);
    size_t p = 0;
    for (;;) {
        size_t e = line_end(p);
        tx_line *L;
        int k = tx_wrap(U.in + p, e - p, width, &L);
        if (k < 0) die_oom();
        for (int i = 0; i < k; i++) {
            if (n == cap) v = xrealloc(v, sizeof *v * (size_t)(cap *= 2));
            /* a line owns the blanks after it, so that a cursor on them has a place */
            size_t end = i + 1 < k ? p + L[i + 1].start : e;
            v[n++] = (in_line){p + L[i].start, end};
        }
        free(L);
        if (e >= U.in_len) break;
        p = e + 1;
    }
    *out = v;
    return n;
}

static int cursor_line(const in_line *v, int n) {
    int li = 0;
    for (int i = 0; i < n; i++)
        if (v[i].start <= U.cur) li = i;
    return li;
}

/* Up/Down inside the input: to the same column of the line above/below; 0 when there is none. */
static int input_vertical(int d, int width) {
    in_line *v;
    int n = input_layout(width, &v), li = cursor_line(v, n), to = li + d;
    if (to < 0 || to >= n) {
        free(v);
        return 0;
    }
    int col = tx_width(U.in + v[li].start, U.cur - v[li].start);
    size_t p = v[to].start, e = v[to].end;
    if (e > p && to + 1 < n && v[to + 1].start == e && U.in[e - 1] != '\n') e = tx_prev(U.in, U.in_len, e);
    while (p < e && U.in[p] != '\n') {
        size_t q = tx_next(U.in, U.in_len, p);
        if (tx_width(U.in + v[to].start, q - v[to].start) > col) break;
        p = q;
    }
    U.cur = p;
    free(v);
    return 1;
}

/* ---- drawing ------------------------------------------------------------------------------------------------------ */

enum { P_USER = 1, P_ASSIST, P_INFO, P_ERROR, P_STATUS, P_SIDE, P_SEL, P_CODE };

/* Draw s[0..n) at the cursor, at most maxcols columns, glyphs as text.c decides.  With md ≥ 0 (a line's tline.md)
 * Markdown is highlighted: bold spans and headings bold, code spans and code blocks in their colour, the markup
 * itself dimmed (backticks in the code colour); with md < 0 the attributes are left as the caller set them. */
static int draw_run(const char *s, size_t n, int maxcols, int md) {
    int cols = 0, mark = 0; /* mark: bytes of markup still to draw */
    attr_t cur = A_NORMAL;
    if (md >= 0) attrset(cur);
    for (size_t i = 0; i < n;) {
        if (md >= 0) {
            if (!mark && !(md & MD_BLOCK) && (mark = tx_md_mark(s + i, n - i, md)))
                md ^= mark == 1 ? TX_MD_CODE : TX_MD_BOLD;
            attr_t a = A_NORMAL;
            if (md & (TX_MD_BOLD | MD_HEAD)) a |= A_BOLD;
            if (md & (TX_MD_CODE | MD_BLOCK) || (mark && s[i] == '`')) a |= COLOR_PAIR(P_CODE);
            if (mark) a |= A_DIM, mark--;
            if (a != cur) attrset(cur = a);
        }
        uint32_t cp;
        i += (size_t)tx_decode(s + i, n - i, &cp);
        int w = tx_cpwidth(cp);
        if (cols + w > maxcols) break;
        wchar_t wc[2] = {(wchar_t)tx_glyph(cp), 0};
        if (w == 0 && cols == 0) continue; /* a mark with nothing to sit on */
        addnwstr(wc, 1);
        cols += w;
    }
    if (md >= 0) attrset(A_NORMAL);
    return cols;
}

static int draw_text(const char *s, size_t n, int maxcols) { return draw_run(s, n, maxcols, -1); }

static void draw_str(int y, int x, const char *s, int maxcols) {
    move(y, x);
    draw_text(s, strlen(s), maxcols);
}

static int nT; /* display lines of the whole transcript */

static void tpush(msg *to, int m, int header, int hang, size_t s, size_t e, int md) {
    if (to->nlay == to->caplay)
        to->caplay = to->caplay ? to->caplay * 2 : 8, to->lay = xrealloc(to->lay, sizeof *to->lay * (size_t)to->caplay);
    to->lay[to->nlay++] = (tline){m, header, hang, s, e, md};
}

/* Markdown is highlighted in what the user and the model wrote, not in the client's own notes. */
static int has_md(const msg *m) { return m->role == R_USER || m->role == R_ASSISTANT; }

/* How far a wrapped paragraph's later lines are indented: as far as its first line is (an indented list in a
 * reply stays one block), and for an indented note two columns more, so that they do not read as the next note
 * (the /help lines).  Nothing when that would take more than half the width. */
static int hang_of(const msg *m, size_t p, size_t e, int width) {
    size_t b = p;
    while (b < e && m->text[b] == ' ') b++;
    int h = (int)(b - p);
    if (h > 0 && (m->role == R_INFO || m->role == R_ERROR)) h += 2;
    return h <= width / 2 ? h : 0;
}

/* Message i's display lines for width columns, laid out again only when the width or the text changed. */
static void layout_msg(int i, int width) {
    msg *m = &U.msgs[i];
    if (m->lay && m->lay_w == width && m->lay_len == m->len) return;
    m->nlay = 0;
    m->lay_w = width;
    m->lay_len = m->len;
    int indent = m->role == R_INFO || m->role == R_ERROR ? 0 : 2;
    if (indent) tpush(m, i, 1, 0, 0, 0, 0);
    size_t p = 0;
    int block = 0; /* inside a fenced code block */
    for (;;) {
        size_t e = p;
        while (e < m->len && m->text[e] != '\n') e++;
        /* the paragraph's kind; its inline state runs on through its wrapped lines (none in a code block) */
        int kind = has_md(m) ? tx_md_para(m->text + p, e - p) : 0, fence = kind == TX_MD_FENCE;
        int md = block || fence ? MD_BLOCK : kind == TX_MD_HEADING ? MD_HEAD : 0, inl = !(md & MD_BLOCK) && has_md(m);
        tx_line *L;
        int k = tx_wrap(m->text + p, e - p, width - indent, &L), hang = 0;
        if (k < 0) die_oom();
        size_t q = p; /* where the lines of L start */
        if (k > 1 && (hang = hang_of(m, p, e, width - indent)) > 0) { /* the first line as it is, the rest */
            tpush(m, i, 0, 0, p + L[0].start, p + L[0].end, md);          /* wrapped again, narrower */
            if (inl) md = tx_md_scan(m->text + p + L[0].start, L[0].end - L[0].start, md);
            q = p + L[1].start;
            free(L);
            if ((k = tx_wrap(m->text + q, e - q, width - indent - hang, &L)) < 0) die_oom();
        }
        for (int j = 0; j < k; j++) {
            tpush(m, i, 0, hang, q + L[j].start, q + L[j].end, md);
            if (inl) md = tx_md_scan(m->text + q + L[j].start, L[j].end - L[j].start, md);
        }
        free(L);
        if (fence) block = !block;
        if (e >= m->len) break;
        p = e + 1;
    }
    if (indent) tpush(m, -1, 0, 0, 0, 0, 0);
}

static void layout_transcript(int width) {
    nT = 0;
    for (int i = 0; i < U.nmsgs; i++) {
        layout_msg(i, width);
        nT += U.msgs[i].nlay;
    }
}

static const char *role_name(const msg *m) {
    switch (m->role) {
    case R_USER: return "you";
    case R_ASSISTANT: return "assistant";
    case R_SYSTEM: return "system prompt";
    default: return "";
    }
}

static void draw_transcript(int top, int left, int height, int width) {
    static int last_n, last_width;
    layout_transcript(width);
    if (U.scroll > 0 && width == last_width && nT > last_n) U.scroll += nT - last_n; /* keep a scrolled view still */
    last_n = nT, last_width = width;
    int maxscroll = nT > height ? nT - height : 0;
    if (U.scroll > maxscroll) U.scroll = maxscroll;
    if (U.scroll < 0) U.scroll = 0;
    int first = nT - height - U.scroll;
    if (first < 0) first = 0;
    /* the message holding line `first`, found from the end (the view is usually there) */
    int mi = U.nmsgs - 1, at = nT; /* at: the line after message mi */
    while (mi > 0 && at - U.msgs[mi].nlay > first) at -= U.msgs[mi--].nlay;
    int off = mi >= 0 ? first - (at - U.msgs[mi].nlay) : 0;
    for (int y = 0; y < height && first + y < nT; y++, off++) {
        while (off >= U.msgs[mi].nlay) mi++, off = 0;
        tline *l = &U.msgs[mi].lay[off];
        if (l->msg < 0) continue;
        msg *m = &U.msgs[l->msg];
        int pair = m->role == R_USER ? P_USER : m->role == R_ASSISTANT ? P_ASSIST : m->role == R_ERROR ? P_ERROR : P_INFO;
        if (l->header) {
            attron(A_BOLD | COLOR_PAIR(pair));
            char h[96];
            snprintf(h, sizeof h, "%s%s%s%s", role_name(m), m->streaming ? " …" : "", m->truncated ? " [cut off]" : "",
                     m->dropped ? " (out of context)" : "");
            draw_str(top + y, left, h, width);
            attroff(A_BOLD | COLOR_PAIR(pair));
            continue;
        }
        int indent = m->role == R_INFO || m->role == R_ERROR ? 0 : 2;
        if (m->role != R_ASSISTANT && m->role != R_USER) attron(COLOR_PAIR(pair));
        move(top + y, left + indent + l->hang);
        draw_run(m->text + l->start, l->end - l->start, width - indent - l->hang, has_md(m) ? l->md : -1);
        if (m->role != R_ASSISTANT && m->role != R_USER) attroff(COLOR_PAIR(pair));
    }
    if (U.scroll > 0) {
        char s[48];
        snprintf(s, sizeof s, " ↓ %d more lines (End) ", U.scroll);
        attron(A_REVERSE);
        draw_str(top + height - 1, left + (width > 34 ? width - 34 : 0), s, 34);
        attroff(A_REVERSE);
    }
}

static void draw_sidebar(int height, int width) {
    attron(COLOR_PAIR(P_SIDE) | A_BOLD);
    draw_str(0, 0, "Sessions", width);
    attroff(COLOR_PAIR(P_SIDE) | A_BOLD);
    for (int i = 0; i < U.nsessions && i + 1 < height; i++) {
        char line[256];
        snprintf(line, sizeof line, "%s%s%s", U.sessions[i].id == U.sid ? "▸ " : "  ", U.sessions[i].name,
                 U.sessions[i].generating ? " …" : "");
        if (U.sessions[i].id == U.sid) attron(A_BOLD | COLOR_PAIR(P_SEL));
        draw_str(i + 1, 0, line, width);
        if (U.sessions[i].id == U.sid) attroff(A_BOLD | COLOR_PAIR(P_SEL));
    }
    for (int y = 0; y < height; y++) mvaddch(y, width, ACS_VLINE);
}

/* Whether a request of this kind is waiting for its reply. */
static int awaiting(enum kind k) {
    for (int i = 0; i < U.npend; i++)
        if (U.pend[i].kind == k) return 1;
    return 0;
}

static void draw_status(int y, int width) {
    static const char spin[] = "|/-\\";
    char dsa[48], conn[64], tps[32], s[512];
    if (!U.model[0]) snprintf(dsa, sizeof dsa, "DSA ?");
    else if (!U.has_dsa) snprintf(dsa, sizeof dsa, "DSA n/a");
    else if (U.dsa_k < 0) snprintf(dsa, sizeof dsa, "DSA off");
    else snprintf(dsa, sizeof dsa, "DSA on k=%lld", U.dsa_k > 0 ? U.dsa_k : U.dsa_default_k);
    /* "connected" once the daemon has said what it runs and a session is shown, so that the bar is complete */
    int settled = !awaiting(K_HELLO) && U.model[0] && U.sname;
    if (U.state == C_UP && !settled) snprintf(conn, sizeof conn, "connecting…");
    else if (U.state == C_UP) snprintf(conn, sizeof conn, "%s", U.chat_id >= 0 ? "generating…" : "connected");
    else if (U.state == C_SPAWNING || U.daemon_loading)
        snprintf(conn, sizeof conn, "starting dsachatd, loading the model %c", spin[U.spinner & 3]);
    else snprintf(conn, sizeof conn, "disconnected, reconnecting…");
    if (U.chat_id >= 0 && U.pre_total > 0) /* a long prompt being read: how much of it (fits a narrow bar) */
        snprintf(tps, sizeof tps, "reading %lld%%", U.pre_done * 100 / U.pre_total);
    else if (U.tok_s > 0) snprintf(tps, sizeof tps, "%.1f tok/s", U.tok_s);
    else snprintf(tps, sizeof tps, "- tok/s");
    if (U.notice_until > now_ms()) snprintf(s, sizeof s, " %s ", U.notice);
    else snprintf(s, sizeof s, " [%s] %s %s │ ctx %lld/%lld │ %s │ %s │ %s ", U.sname ? U.sname : "-",
                  U.model[0] ? U.model : "?", U.backend[0] ? U.backend : "", U.ctx_used, U.n_ctx, dsa, tps, conn);
    attron(COLOR_PAIR(P_STATUS) | A_REVERSE);
    mvhline(y, 0, ' ', width);
    draw_str(y, 0, s, width);
    attroff(COLOR_PAIR(P_STATUS) | A_REVERSE);
}

static void draw(void) {
    erase();
    int rows = LINES, cols = COLS;
    if (rows < 6 || cols < 24) {
        draw_str(0, 0, "terminal too small", cols);
        refresh();
        return;
    }
    int iw = cols - 3; /* "> " and a column for the cursor at a full line's end */
    in_line *v;
    int n = input_layout(iw, &v), li = cursor_line(v, n);
    int ih = n < rows / 3 ? n : rows / 3;
    if (ih < 1) ih = 1;
    if (li < U.in_top) U.in_top = li;
    if (li >= U.in_top + ih) U.in_top = li - ih + 1;
    if (U.in_top > n - ih) U.in_top = n - ih > 0 ? n - ih : 0;
    int status_y = rows - 1, input_y = status_y - ih, sep_y = input_y - 1, th = sep_y;
    int sbw = U.sidebar && cols >= 60 ? (cols / 4 < 28 ? cols / 4 : 28) : 0;
    if (sbw) draw_sidebar(th, sbw);
    int left = sbw ? sbw + 2 : 0;
    draw_transcript(0, left, th, cols - left);
    mvhline(sep_y, 0, ACS_HLINE, cols);
    if (U.confirm_delete) {
        attron(A_BOLD | COLOR_PAIR(P_ERROR));
        draw_str(sep_y, 2, " delete this session? y/n ", cols - 4);
        attroff(A_BOLD | COLOR_PAIR(P_ERROR));
    } else if (U.quit_armed) {
        draw_str(sep_y, 2, " press Ctrl-C again to quit ", cols - 4);
    } else if (cols >= 50) {
        draw_str(sep_y, cols - 40, " Tab: sessions  /help: keys, commands ", 40);
    }
    int cy = input_y, cx = 2;
    for (int i = 0; i < ih && U.in_top + i < n; i++) {
        in_line l = v[U.in_top + i];
        size_t e = l.end;
        if (e > l.start && U.in[e - 1] == '\n') e--;
        mvaddstr(input_y + i, 0, U.in_top + i == 0 ? "> " : "  ");
        move(input_y + i, 2);
        draw_text(U.in + l.start, e - l.start, iw + 1);
        if (U.in_top + i == li) {
            size_t c = U.cur < e ? U.cur : e;
            cy = input_y + i;
            cx = 2 + tx_width(U.in + l.start, c - l.start);
            if (cx > cols - 1) cx = cols - 1;
        }
    }
    if (n == 0 || U.in_len == 0) mvaddstr(input_y, 0, "> ");
    free(v);
    draw_status(status_y, cols);
    move(cy, cx);
    refresh();
}

/* ---- keys -------------------------------------------------------------------------------------------------------------- */

static void scroll_by(int d) {
    U.scroll += d;
    if (U.scroll < 0) U.scroll = 0;
}

static int page(void) { return LINES > 8 ? LINES - 6 : 2; }

static void ctrl_c(void) {
    if (U.chat_id >= 0) {
        request(K_CANCEL, "chat.cancel", json_pack("{sI}", "session", (json_int_t)U.chat_sid), NULL);
        notice("cancelling the reply");
        return;
    }
    if (U.quit_armed) U.quit = 1;
    else U.quit_armed = 1;
}

static void key_alt(wint_t ch) {
    switch (ch) {
    case 'b': case 'B': U.cur = tx_word_left(U.in, U.in_len, U.cur); break;
    case 'f': case 'F': U.cur = tx_word_right(U.in, U.in_len, U.cur); break;
    case 'd': case 'D': in_delete(U.cur, tx_word_right(U.in, U.in_len, U.cur)); break;
    case '\r': case '\n': in_insert("\n", 1); break;
    case '<': U.scroll = 1 << 30; break;
    case '>': U.scroll = 0; break;
    default: break;
    }
}

/* After ESC: Alt-x, or the bracketed-paste marks ESC [200~ and ESC [201~ (the terminal sends them around pasted
 * text, so that the newlines in it do not send the message). */
static void key_escape(void) {
    wint_t c[5];
    int n = 0;
    timeout(60);
    while (n < 5 && get_wch(&c[n]) == OK) {
        n++;
        if (c[0] != '[' || c[n - 1] == '~') break;
    }
    nodelay(stdscr, TRUE);
    if (n == 5 && c[1] == '2' && c[2] == '0' && (c[3] == '0' || c[3] == '1') && c[4] == '~') U.pasting = c[3] == '0';
    else if (n >= 1 && c[0] != '[') key_alt(c[0]);
}

static void key_function(int k) {
    int iw = COLS - 3;
    switch (k) {
    case KEY_LEFT: U.cur = tx_prev(U.in, U.in_len, U.cur); break;
    case KEY_RIGHT: U.cur = tx_next(U.in, U.in_len, U.cur); break;
    case KEY_UP: if (!input_vertical(-1, iw)) history_move(-1); break;
    case KEY_DOWN: if (!input_vertical(1, iw)) history_move(1); break;
    case KEY_PPAGE: scroll_by(page()); break;
    case KEY_NPAGE: scroll_by(-page()); break;
    case KEY_HOME: if (U.in_len == 0) U.scroll = 1 << 30; else U.cur = line_start(U.cur); break;
    case KEY_END: if (U.in_len == 0) U.scroll = 0; else U.cur = line_end(U.cur); break;
    case KEY_BACKSPACE: in_delete(tx_prev(U.in, U.in_len, U.cur), U.cur); break;
    case KEY_DC: in_delete(U.cur, tx_next(U.in, U.in_len, U.cur)); break;
    case KEY_ENTER: submit(); break;
    case KEY_F(2): U.sidebar = !U.sidebar; break;
    case KEY_RESIZE: break; /* draw() lays everything out again */
    case KEY_MOUSE: {
        MEVENT me;
        if (getmouse(&me) == OK) {
            if (me.bstate & BUTTON4_PRESSED) scroll_by(3);
#ifdef BUTTON5_PRESSED
            else if (me.bstate & BUTTON5_PRESSED) scroll_by(-3);
#endif
        }
        break;
    }
    default: break;
    }
}

static void key_char(wint_t ch) {
    switch (ch) {
    case 1: U.cur = line_start(U.cur); break;                  /* Ctrl-A */
    case 2: U.cur = tx_prev(U.in, U.in_len, U.cur); break;     /* Ctrl-B */
    case 3: ctrl_c(); return;                                   /* Ctrl-C */
    case 4: in_delete(U.cur, tx_next(U.in, U.in_len, U.cur)); break; /* Ctrl-D */
    case 5: U.cur = line_end(U.cur); break;                    /* Ctrl-E */
    case 6: U.cur = tx_next(U.in, U.in_len, U.cur); break;     /* Ctrl-F */
    case 8: case 127: in_delete(tx_prev(U.in, U.in_len, U.cur), U.cur); break;
    case 9: U.sidebar = !U.sidebar; break;                     /* Tab */
    case 10: in_insert("\n", 1); break;                        /* Ctrl-J */
    case 11: in_delete(U.cur, line_end(U.cur)); break;         /* Ctrl-K */
    case 12: clearok(curscr, TRUE); break;                     /* Ctrl-L */
    case 13:                                                    /* Enter */
        if (U.pasting) in_insert("\n", 1);
        else submit();
        break;
    case 21: in_delete(line_start(U.cur), U.cur); break;       /* Ctrl-U */
    case 23: in_delete(tx_rubout_left(U.in, U.in_len, U.cur), U.cur); break; /* Ctrl-W */
    case 27: key_escape(); break;                               /* Alt-x arrives as ESC x */
    default:
        if (ch >= 32 && ch != 127) {
            char mb[8];
            mbstate_t st = {0};
            size_t n = wcrtomb(mb, (wchar_t)ch, &st);
            if (n != (size_t)-1) in_insert(mb, n);
        }
    }
    U.quit_armed = 0;
}

static void on_key(int r, wint_t ch) {
    if (U.confirm_delete && !(r == KEY_CODE_YES && (ch == KEY_RESIZE || ch == KEY_MOUSE))) {
        U.confirm_delete = 0;
        if (r == OK && (ch == 'y' || ch == 'Y')) {
            request(K_DELETE, "session.delete", json_pack("{so}", "session", sref()), U.sname);
        } else {
            info(R_INFO, "kept the session");
        }
        return;
    }
    if (r == KEY_CODE_YES) {
        if (ch != KEY_RESIZE && ch != KEY_MOUSE) U.quit_armed = 0;
        key_function((int)ch);
    } else {
        key_char(ch);
    }
}

/* ---- main loop ---------------------------------------------------------------------------------------------------- */

static void start_curses(void) {
    initscr();
    raw();
    noecho();
    nonl();
    keypad(stdscr, TRUE);
    nodelay(stdscr, TRUE);
    set_escdelay(25);
    mousemask(BUTTON4_PRESSED
#ifdef BUTTON5_PRESSED
                  | BUTTON5_PRESSED
#endif
              ,
              NULL);
    if (has_colors()) {
        start_color();
        use_default_colors();
        init_pair(P_USER, COLOR_GREEN, -1);
        init_pair(P_ASSIST, COLOR_CYAN, -1);
        init_pair(P_INFO, COLOR_YELLOW, -1);
        init_pair(P_ERROR, COLOR_RED, -1);
        init_pair(P_STATUS, COLOR_BLUE, -1);
        init_pair(P_SIDE, COLOR_MAGENTA, -1);
        init_pair(P_SEL, COLOR_GREEN, -1);
        init_pair(P_CODE, COLOR_YELLOW, -1);
    }
}

int ui_main(const dc_opts *o, const char *session) {
    if (tx_locale_init()) {
        fprintf(stderr, "dsachat: no UTF-8 locale (set LANG, e.g. LANG=C.UTF-8)\n");
        return 1;
    }
    U.o = o;
    U.first_session = session;
    U.chat_id = -1;
    U.sidebar = 1;
    U.sock = dc_socket_path(o->socket);
    if (!U.sock) return 1;
    in_set("");
    start_curses();
    fputs("\033[?2004h", stdout); /* bracketed paste */
    fflush(stdout);
    info(R_INFO, "dsachat: /help lists the keys and commands");
    try_connect();
    while (!U.quit) {
        draw();
        struct pollfd pf[2] = {{.fd = 0, .events = POLLIN}, {.fd = -1, .events = POLLIN}};
        if (U.state == C_UP) pf[1].fd = dc_fd(U.conn);
        else if (U.state == C_SPAWNING) pf[1].fd = U.spawn.fd;
        int r = poll(pf, 2, U.state == C_UP && U.notice_until == 0 ? 1000 : 250);
        if (r < 0 && errno != EINTR) break;
        if (r > 0 && (pf[0].revents & (POLLHUP | POLLERR | POLLNVAL))) break; /* the terminal went away */
        wint_t ch;
        int k;
        while ((k = get_wch(&ch)) != ERR && !U.quit) on_key(k, ch);
        if (r > 0 && pf[1].revents && U.state == C_UP) read_socket();
        else if (r > 0 && pf[1].revents && U.state == C_SPAWNING) spawn_step();
        if (U.notice_until && U.notice_until <= now_ms()) U.notice_until = 0;
        U.spinner++;
        if (U.state == C_DOWN && now_ms() >= U.retry_at) try_connect();
    }
    fputs("\033[?2004l", stdout);
    fflush(stdout);
    endwin();
    if (U.state == C_SPAWNING) dc_spawn_abandon(&U.spawn);
    if (U.conn) dc_close(U.conn);
    return 0;
}
