/*
 * dsachatd's private header.  Two threads:
 *   the loop (d_server.c)   libuv: the socket, connections, framing, backpressure, signals; never blocks;
 *   the worker (d_worker.c) owns the model, the session store and every context; runs requests and generations.
 * They talk through two queues: requests go loop → worker (d_submit), reply lines go worker → loop (d_emit, which
 * wakes the loop with uv_async_send).  A connection is named by a handle (slot | generation << 16) so that the worker
 * never touches the loop's structures: it asks d_conn_alive / d_conn_paused, which read atomics.
 */
#ifndef DSA_DAEMON_INTERNAL_H
#define DSA_DAEMON_INTERNAL_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"

#define D_MAX_CONN 256              /* connections at once; one more is told "overloaded" and closed */
#define D_QUEUE_HIGH (1u << 20)     /* output bytes queued on a connection before its generations pause */
#define D_QUEUE_LOW (256u << 10)    /* ... and resume */
#define D_PENDING_HIGH 64           /* requests of one connection not yet through: stop reading it */
#define D_FLUSH_MS 2000             /* at shutdown, how long clients get to read what is queued for them */

typedef uint32_t d_conn;            /* slot | generation << 16; 0 is never a live connection */

typedef struct {
    const char *model, *indexer, *store, *socket, *log_file, *config, *backend;
    int threads, n_ctx, foreground, max_open, dense;
} d_options;

/* ---- log (d_main.c) ---- */
void d_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void d_log_reopen(void);

/* ---- the loop (d_server.c) ---- */
int d_server_listen(const char *path, char *err, size_t errlen);
int d_server_run(void); /* until the worker is done and every client flushed */

/* ---- connections, as the worker sees them (d_server.c) ---- */
int d_conn_alive(d_conn c);
int d_conn_paused(d_conn c);
/* Queue a reply line (malloc'd, newline-terminated; ownership passes) for connection c; dropped if c is gone. */
void d_emit(d_conn c, char *line);
/* The worker is through with one request of c (for chat.send: after its "done").  A client that half-closed its
 * socket is closed once every request of it is through and written. */
void d_done(d_conn c);
/* The worker finished shutting down (all sessions committed): the loop may stop. */
void d_worker_done(void);
/* Begin the shutdown (daemon.shutdown): safe from any thread. */
void d_request_shutdown(void);
int d_clients(void);

/* ---- the worker (d_worker.c) ---- */
int d_worker_start(const d_options *o, char *err, size_t errlen); /* loads the model and the store */
/* Hand a parsed request to the worker (ownership of req passes). */
void d_submit(d_conn c, proto_request *req);
/* A request that failed to parse: the worker sends the error, so that replies keep the order of the requests.
 * id is a new reference or NULL (it passes to the worker). */
void d_submit_error(d_conn c, json_t *id, proto_code code, const char *msg);
/* The connection went away: cancel its generations. */
void d_conn_closed(d_conn c);
/* Stop: every generation ends at its next token, sessions are committed, then d_worker_done(). */
void d_worker_stop(void);
void d_worker_join(void);
/* A connection's queue drained below the low mark: its generations may continue. */
void d_worker_wake(void);

#endif
