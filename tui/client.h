/*
 * The client side of dsachatd's socket protocol (man/dsachat-protocol.7): finding the socket, connecting,
 * starting the daemon when it is not running, and newline-delimited JSON requests and replies.
 *
 * This is all that dsachat(1) knows about the daemon: it never links the engine.  A connection is a blocking Unix
 * stream socket; requests get integer ids (1, 2, ...) so that replies and chat events can be told apart; the reader
 * frames lines into a buffer and hands out one parsed object at a time.  Every function reports failure through its
 * return value and a one-line message in the caller's buffer.
 */
#ifndef DSACHAT_CLIENT_H
#define DSACHAT_CLIENT_H

#include <stddef.h>
#include <sys/types.h>
#include <jansson.h>

#define DC_PROTOCOL 1

/* How to reach (and if need be start) the daemon; filled by main.c. */
typedef struct dc_opts {
    const char *socket;  /* --socket, or NULL for the default */
    int no_spawn;        /* --no-spawn: never start dsachatd */
    char **dargs;        /* extra arguments for dsachatd (--daemon-arg, $DSACHAT_DAEMON_ARGS) */
    int ndargs;
} dc_opts;

typedef struct dc_conn dc_conn;

/* The socket path, as the daemon resolves it: opt, else $XDG_RUNTIME_DIR/dsachat/dsachatd.sock when
 * XDG_RUNTIME_DIR is absolute, else /tmp/dsachat-$UID/dsachatd.sock.  malloc'd; NULL when out of memory. */
char *dc_socket_path(const char *opt);

/* Connect to path.  NULL with a message in err; *missing (may be NULL) is set to 1 when nobody listens there (no
 * socket, or a stale one), which is when starting the daemon makes sense. */
dc_conn *dc_connect(const char *path, int *missing, char *err, size_t errlen);
void dc_close(dc_conn *c);
int dc_fd(const dc_conn *c);

/* Send req (consumed, whatever happens) with a fresh integer id added; returns the id, or -1 with a message. */
long long dc_send(dc_conn *c, json_t *req, char *err, size_t errlen);

/* Read what the socket has (one read(2), which blocks only when nothing is there): 1 when bytes came, 0 at the end
 * of the connection, -1 on an error (message in err). */
int dc_fill(dc_conn *c, char *err, size_t errlen);

/* The next complete line as a JSON object, or NULL when no complete line is buffered.  A line that is not a JSON
 * object is skipped (*bad is incremented when bad is not NULL). */
json_t *dc_next(dc_conn *c, int *bad);

/* Wait up to timeout_ms (-1: forever) for the next object; NULL with a message on timeout, EOF or error. */
json_t *dc_wait(dc_conn *c, int timeout_ms, char *err, size_t errlen);

/* Send {"op":op, ...params} (params consumed, may be NULL) and wait for the reply with its id (lines with other
 * ids are dropped).  Returns the reply (which may be an error reply), or NULL with a message when the connection
 * failed. */
json_t *dc_call(dc_conn *c, const char *op, json_t *params, int timeout_ms, char *err, size_t errlen);

/* The id of a line (-1 when absent or not an integer); its error code and message (NULL when not an error). */
long long dc_id(const json_t *msg);
const char *dc_err_code(const json_t *msg);
const char *dc_err_message(const json_t *msg);

/* A session reference as the protocol takes it: an integer id when s is all digits, else the name. */
json_t *dc_session_ref(const char *s);

/* ---- starting the daemon ------------------------------------------------------------------------------------ */

/* A `dsachatd` being started: it goes to the background once it listens and exits 0, or prints why not and
 * exits 1.  Its stdout and stderr come back through fd. */
typedef struct dc_spawn {
    pid_t pid;
    int fd;          /* read end of its output; -1 once closed */
    char out[512];   /* what it printed (the first 511 bytes) */
    size_t nout;
} dc_spawn;

/* The dsachatd to run: the one next to this executable (/proc/self/exe), else "dsachatd" from PATH.  malloc'd. */
char *dc_daemon_binary(void);

/* Start `dsachatd -s SOCKET [dargs...]`.  0, or -1 with a message. */
int dc_spawn_start(dc_spawn *sp, const char *sock, const dc_opts *o, char *err, size_t errlen);
/* Read its output; when it has closed it, reap it.  1 while it runs, 0 when it exited 0, -1 when it failed (a
 * message in err). */
int dc_spawn_step(dc_spawn *sp, char *err, size_t errlen);
/* Stop waiting: close fd and reap it if it has exited (without blocking). */
void dc_spawn_abandon(dc_spawn *sp);

/* Whether a daemon holds the socket's lock (SOCKET.lock, dsachatd(8)): it is running, or loading its model and
 * about to listen. */
int dc_daemon_starting(const char *sock);

/* Connect, starting the daemon (and waiting for it) when nobody listens and o->no_spawn is not set.  NULL with a
 * message. */
dc_conn *dc_connect_or_spawn(const dc_opts *o, char *err, size_t errlen);

#endif
