/*
 * The loop: a libuv event loop on the Unix socket.  It frames lines, parses them (daemon/proto.c), hands requests to
 * the worker, and writes the worker's reply lines back.  Nothing here blocks: a request that needs the model or the
 * store goes to the worker, and even a malformed line's error goes through the worker's queue so that replies keep
 * the order of the requests.
 *
 * Backpressure: every connection counts the bytes it has queued for writing.  Over D_QUEUE_HIGH the connection is
 * paused: the loop stops reading its requests and the worker stops generating for it; under D_QUEUE_LOW it resumes.
 * A client that never reads costs at most about D_QUEUE_HIGH plus one line.
 */
#define _GNU_SOURCE
#include "d_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

typedef struct {
    uv_pipe_t h;
    int slot;
    d_conn id;
    char *buf;          /* the partial line */
    size_t n, cap;
    size_t scanned;     /* buf[0..scanned) holds no newline */
    int skipping;       /* inside a line over the limit: drop bytes up to its newline */
    size_t queued;      /* bytes handed to uv_write and not yet written */
    int pending;        /* requests handed to the worker and not through yet */
    int eof;            /* the client half-closed: answer what it asked, then close */
    int reading, closing;
} conn;

typedef struct {
    uv_write_t w;
    conn *c;
    size_t len;
    char *line;
} wreq;

typedef struct out_line {
    d_conn c;
    char *line;
    struct out_line *next;
} out_line;

static uv_loop_t *L;
static uv_pipe_t server;
static uv_async_t out_async, shutdown_async, done_async;
static uv_signal_t sig_term, sig_int, sig_hup;
static uv_timer_t flush_timer;
static int worker_done;
static conn *conns[D_MAX_CONN];
static _Atomic uint32_t conn_gen[D_MAX_CONN]; /* the live connection's id per slot, 0 when free */
static _Atomic int conn_paused[D_MAX_CONN];
static _Atomic int n_clients;
static uint32_t next_gen = 1;
static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static out_line *out_head, *out_tail;
static int shutting_down, server_open;

/* ---- what the worker may ask ---------------------------------------------------------------------------------- */

int d_conn_alive(d_conn c) {
    int slot = (int)(c & 0xFFFF);
    return c && slot < D_MAX_CONN && atomic_load(&conn_gen[slot]) == c;
}

int d_conn_paused(d_conn c) {
    int slot = (int)(c & 0xFFFF);
    return d_conn_alive(c) && atomic_load(&conn_paused[slot]);
}

int d_clients(void) { return atomic_load(&n_clients); }

void d_emit(d_conn c, char *line) {
    out_line *o = malloc(sizeof *o);
    if (!o) {
        free(line);
        return;
    }
    o->c = c, o->line = line, o->next = NULL; /* line NULL: d_done */
    pthread_mutex_lock(&out_mu);
    if (out_tail) out_tail->next = o;
    else out_head = o;
    out_tail = o;
    pthread_mutex_unlock(&out_mu);
    uv_async_send(&out_async);
}

void d_done(d_conn c) { d_emit(c, NULL); }

void d_request_shutdown(void) { uv_async_send(&shutdown_async); }
void d_worker_done(void) { uv_async_send(&done_async); }

/* ---- connections ------------------------------------------------------------------------------------------------ */

static void close_handles(void);

static void on_closed(uv_handle_t *h) {
    conn *c = h->data;
    free(c->buf);
    free(c);
    if (worker_done && atomic_load(&n_clients) == 0) close_handles();
}

static void conn_close(conn *c) {
    if (c->closing) return;
    c->closing = 1;
    atomic_store(&conn_gen[c->slot], 0);
    atomic_store(&conn_paused[c->slot], 0);
    conns[c->slot] = NULL;
    atomic_fetch_sub(&n_clients, 1);
    d_conn_closed(c->id);
    uv_close((uv_handle_t *)&c->h, on_closed);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
    (void)hint;
    conn *c = h->data;
    if (c->cap - c->n < 65536) {
        size_t cap = c->cap ? c->cap * 2 : 131072;
        char *p = realloc(c->buf, cap);
        if (!p) {
            *b = uv_buf_init(NULL, 0);
            return;
        }
        c->buf = p, c->cap = cap;
    }
    *b = uv_buf_init(c->buf + c->n, (unsigned)(c->cap - c->n));
}

static void pause_reading(conn *c) {
    if (c->reading) uv_read_stop((uv_stream_t *)&c->h), c->reading = 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b);
static void drain_lines(conn *c);
static void more_lines(conn *c);
static void resume_reading(conn *c) {
    if (!c->reading && !c->closing && !c->eof && !shutting_down) {
        c->reading = 1;
        uv_read_start((uv_stream_t *)&c->h, on_alloc, on_read);
    }
}

static void maybe_close(conn *c) {
    if (c->eof && !c->pending && !c->queued) conn_close(c);
}

/* Flow control.  Generations pause on output queued for writing; reading pauses too on requests the worker has
 * not got through, so that a client that pipelines requests without reading its replies is bounded as well. */
static void flow(conn *c) {
    if (c->closing) return;
    int paused = atomic_load(&conn_paused[c->slot]);
    if (!paused && c->queued > D_QUEUE_HIGH) atomic_store(&conn_paused[c->slot], paused = 1);
    else if (paused && c->queued < D_QUEUE_LOW) {
        atomic_store(&conn_paused[c->slot], paused = 0);
        d_worker_wake();
    }
    if (paused || c->pending >= D_PENDING_HIGH) pause_reading(c);
    else if (c->pending < D_PENDING_HIGH / 2) resume_reading(c);
}

static void on_written(uv_write_t *w, int status) {
    wreq *r = (wreq *)w;
    conn *c = r->c;
    c->queued -= r->len;
    free(r->line);
    free(r);
    if (c->closing) return;
    if (status < 0) { /* the client is gone: its generations stop */
        conn_close(c);
        return;
    }
    flow(c);
    more_lines(c);
    maybe_close(c);
}

static void write_line(conn *c, char *line) {
    wreq *r = malloc(sizeof *r);
    if (!r) {
        free(line);
        return;
    }
    r->c = c, r->line = line, r->len = strlen(line);
    uv_buf_t b = uv_buf_init(line, (unsigned)r->len);
    c->queued += r->len;
    if (uv_write(&r->w, (uv_stream_t *)&c->h, &b, 1, on_written)) {
        c->queued -= r->len;
        free(line);
        free(r);
        return;
    }
    flow(c);
}

static void on_out(uv_async_t *a) {
    (void)a;
    pthread_mutex_lock(&out_mu);
    out_line *o = out_head;
    out_head = out_tail = NULL;
    pthread_mutex_unlock(&out_mu);
    while (o) {
        out_line *next = o->next;
        int slot = (int)(o->c & 0xFFFF);
        conn *c = slot < D_MAX_CONN ? conns[slot] : NULL;
        if (!c || c->id != o->c || c->closing) {
            free(o->line);
        } else if (o->line) {
            write_line(c, o->line);
        } else {
            c->pending--;
            flow(c);
            more_lines(c);
            maybe_close(c);
        }
        free(o);
        o = next;
    }
}

/* One complete line (no newline). */
static void on_line(conn *c, char *line, size_t len) {
    if (len && line[len - 1] == '\r') len--;
    size_t i = 0;
    while (i < len && (line[i] == ' ' || line[i] == '\t')) i++;
    if (i == len) return; /* blank lines are ignored */
    proto_request *req = calloc(1, sizeof *req);
    proto_code code;
    char msg[512];
    json_t *id = NULL;
    if (!req) return;
    c->pending++;
    flow(c);
    if (proto_parse(line, len, req, &code, msg, sizeof msg, &id)) {
        free(req);
        d_submit_error(c->id, id, code, msg);
        return;
    }
    if (shutting_down) {
        d_submit_error(c->id, req->id ? json_incref(req->id) : NULL, PE_SHUTTING_DOWN, "the daemon is stopping");
        proto_request_free(req);
        free(req);
        return;
    }
    d_submit(c->id, req);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    (void)b;
    conn *c = s->data;
    if (nread == UV_EOF) { /* a half-close: the client still reads its replies */
        c->eof = 1;
        pause_reading(c);
        maybe_close(c);
        return;
    }
    if (nread < 0) {
        conn_close(c);
        return;
    }
    c->n += (size_t)nread;
    drain_lines(c);
}

/* Hand the complete lines in the buffer to the worker while the connection may go on: a flood of pipelined
 * requests waits in this buffer (and in the socket behind it) while the client does not read its replies. */
static void drain_lines(conn *c) {
    size_t from = 0;
    int stopped = 0;
    for (size_t i = c->scanned; i < c->n; i++) {
        if (c->buf[i] != '\n') continue;
        if (c->skipping) c->skipping = 0; /* the end of an over-long line */
        else on_line(c, c->buf + from, i - from);
        from = i + 1;
        if (c->closing || atomic_load(&conn_paused[c->slot]) || c->pending >= D_PENDING_HIGH) {
            stopped = 1;
            break;
        }
    }
    memmove(c->buf, c->buf + from, c->n - from);
    c->n -= from;
    c->scanned = stopped ? 0 : c->n; /* without complete lines left, the next read scans only its new bytes */
    if (stopped) return;
    if (c->n > PROTO_MAX_LINE) { /* no newline within the limit: answer now, drop the rest of the line */
        if (!c->skipping) {
            c->pending++;
            d_submit_error(c->id, NULL, PE_LINE_TOO_LONG, "a request line is longer than 1 MiB; it was skipped");
        }
        c->skipping = 1;
    }
    if (c->skipping) c->n = c->scanned = 0;
    if (c->cap > (4u << 20) && c->n < 65536) { /* give back a buffer grown by a long line */
        char *p = realloc(c->buf, 131072);
        if (p) c->buf = p, c->cap = 131072;
    }
}

/* Lines left in the buffer by a pause go on once the connection may take requests again. */
static void more_lines(conn *c) {
    if (!c->closing && c->n && !atomic_load(&conn_paused[c->slot]) && c->pending < D_PENDING_HIGH / 2) drain_lines(c);
}

/* A client this daemon will not serve: one error line straight to the socket, then close. */
static void refuse(conn *c, proto_code code, const char *msg) {
    uv_os_fd_t fd;
    char *line = proto_error_line(NULL, code, msg);
    if (line && uv_fileno((uv_handle_t *)&c->h, &fd) == 0) {
        ssize_t w = write(fd, line, strlen(line));
        (void)w;
    }
    free(line);
    uv_close((uv_handle_t *)&c->h, on_closed);
}

static void on_connection(uv_stream_t *srv, int status) {
    if (status < 0) return;
    conn *c = calloc(1, sizeof *c);
    if (!c) return;
    uv_pipe_init(L, &c->h, 0);
    c->h.data = c;
    if (uv_accept(srv, (uv_stream_t *)&c->h)) {
        uv_close((uv_handle_t *)&c->h, on_closed);
        return;
    }
    uv_os_fd_t fd;
    struct ucred cr = {0};
    socklen_t cl = sizeof cr;
    if (uv_fileno((uv_handle_t *)&c->h, &fd) || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) ||
        cr.uid != getuid()) {
        d_log("refused a connection from uid %d", (int)cr.uid);
        refuse(c, PE_FORBIDDEN, "this daemon serves its own user only");
        return;
    }
    if (shutting_down) {
        refuse(c, PE_SHUTTING_DOWN, "the daemon is stopping");
        return;
    }
    int slot = -1;
    for (int i = 0; i < D_MAX_CONN && slot < 0; i++)
        if (!conns[i]) slot = i;
    if (slot < 0) {
        refuse(c, PE_OVERLOADED, "too many clients");
        return;
    }
    next_gen = next_gen % 0xFFFF + 1;
    c->slot = slot;
    c->id = (d_conn)slot | (d_conn)next_gen << 16;
    conns[slot] = c;
    atomic_store(&conn_gen[slot], c->id);
    atomic_store(&conn_paused[slot], 0);
    atomic_fetch_add(&n_clients, 1);
    resume_reading(c);
}

/* ---- start and stop ----------------------------------------------------------------------------------------------- */

static void begin_shutdown(void) {
    if (shutting_down) return;
    shutting_down = 1;
    d_log("stopping: no new connections; replies end at their next token; committing every session");
    if (server_open) uv_close((uv_handle_t *)&server, NULL), server_open = 0;
    d_worker_stop();
}

static void on_shutdown(uv_async_t *a) {
    (void)a;
    begin_shutdown();
}

static void on_signal(uv_signal_t *s, int sig) {
    (void)s;
    if (sig == SIGHUP) {
        d_log_reopen();
        d_log("log reopened (SIGHUP)");
        return;
    }
    d_log("%s received", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    begin_shutdown();
}

static void on_flushed(uv_shutdown_t *r, int status) {
    (void)status;
    conn *c = r->handle->data;
    free(r);
    conn_close(c);
}

static void close_all(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* The loop's own handles go last: then uv_run returns. */
static void close_handles(void) {
    static int closed;
    if (closed) return;
    closed = 1;
    uv_handle_t *hs[] = {(uv_handle_t *)&out_async, (uv_handle_t *)&shutdown_async, (uv_handle_t *)&done_async,
                         (uv_handle_t *)&sig_term,  (uv_handle_t *)&sig_int,        (uv_handle_t *)&sig_hup,
                         (uv_handle_t *)&flush_timer};
    for (size_t i = 0; i < sizeof hs / sizeof *hs; i++)
        if (!uv_is_closing(hs[i])) uv_close(hs[i], NULL);
}

/* Clients that did not read what was queued for them in D_FLUSH_MS are closed anyway. */
static void on_flush_timeout(uv_timer_t *t) {
    (void)t;
    for (int i = 0; i < D_MAX_CONN; i++)
        if (conns[i]) conn_close(conns[i]);
    if (atomic_load(&n_clients) == 0) close_handles();
}

/* The worker is done: flush what each client still has coming (for a while), then let the loop end. */
static void on_done(uv_async_t *a) {
    (void)a;
    worker_done = 1;
    on_out(&out_async);
    for (int i = 0; i < D_MAX_CONN; i++) {
        conn *c = conns[i];
        if (!c || c->closing) continue;
        pause_reading(c);
        uv_shutdown_t *r = malloc(sizeof *r);
        if (!r || uv_shutdown(r, (uv_stream_t *)&c->h, on_flushed)) {
            free(r);
            conn_close(c);
        }
    }
    if (atomic_load(&n_clients) == 0) close_handles();
    else uv_timer_start(&flush_timer, on_flush_timeout, D_FLUSH_MS, 0);
}

int d_server_listen(const char *path, char *err, size_t errlen) {
    L = uv_default_loop();
    int rc;
    if ((rc = uv_pipe_init(L, &server, 0)) || (rc = uv_pipe_bind(&server, path))) {
        snprintf(err, errlen, "cannot bind %s: %s", path, uv_strerror(rc));
        return -1;
    }
    server_open = 1;
    chmod(path, 0600);
    if ((rc = uv_listen((uv_stream_t *)&server, 128, on_connection))) {
        snprintf(err, errlen, "cannot listen on %s: %s", path, uv_strerror(rc));
        return -1;
    }
    uv_async_init(L, &out_async, on_out);
    uv_async_init(L, &shutdown_async, on_shutdown);
    uv_async_init(L, &done_async, on_done);
    uv_timer_init(L, &flush_timer);
    uv_signal_init(L, &sig_term);
    uv_signal_init(L, &sig_int);
    uv_signal_init(L, &sig_hup);
    uv_signal_start(&sig_term, on_signal, SIGTERM);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    uv_signal_start(&sig_hup, on_signal, SIGHUP);
    return 0;
}

int d_server_run(void) {
    uv_run(L, UV_RUN_DEFAULT);
    uv_walk(L, close_all, NULL);
    uv_run(L, UV_RUN_DEFAULT);
    uv_loop_close(L);
    return 0;
}
