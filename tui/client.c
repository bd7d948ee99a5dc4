/* The protocol client: socket path, connection, line framing, requests by id, and starting the daemon. */
#define _GNU_SOURCE
#include "client.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct dc_conn {
    int fd;
    long long next_id;
    char *buf;         /* received bytes not yet handed out: buf[start..len) */
    size_t start, len, cap;
};

static void seterr(char *err, size_t n, const char *fmt, ...) {
    if (!err || !n) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
}

char *dc_socket_path(const char *opt) {
    char *p = NULL;
    if (opt) return strdup(opt);
    const char *r = getenv("XDG_RUNTIME_DIR");
    if (r && *r == '/') {
        if (asprintf(&p, "%s/dsachat/dsachatd.sock", r) < 0) return NULL;
    } else if (asprintf(&p, "/tmp/dsachat-%d/dsachatd.sock", (int)getuid()) < 0) {
        return NULL;
    }
    return p;
}

dc_conn *dc_connect(const char *path, int *missing, char *err, size_t errlen) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (missing) *missing = 0;
    if (strlen(path) >= sizeof sa.sun_path) {
        seterr(err, errlen, "socket path too long: %s", path);
        return NULL;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        seterr(err, errlen, "socket: %s", strerror(errno));
        return NULL;
    }
    while (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        if (errno == EINTR) continue;
        int e = errno;
        if (missing) *missing = e == ENOENT || e == ECONNREFUSED;
        seterr(err, errlen, "cannot connect to %s: %s", path, strerror(e));
        close(fd);
        return NULL;
    }
    dc_conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    c->fd = fd;
    c->next_id = 1;
    return c;
}

void dc_close(dc_conn *c) {
    if (!c) return;
    close(c->fd);
    free(c->buf);
    free(c);
}

int dc_fd(const dc_conn *c) { return c->fd; }

static int write_all(int fd, const char *p, size_t n, char *err, size_t errlen) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) {
            seterr(err, errlen, "cannot write to the daemon: %s", strerror(errno));
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

long long dc_send(dc_conn *c, json_t *req, char *err, size_t errlen) {
    long long id = c->next_id++;
    if (!req || json_object_set_new(req, "id", json_integer(id))) {
        json_decref(req);
        seterr(err, errlen, "out of memory");
        return -1;
    }
    char *s = json_dumps(req, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(req);
    if (!s) {
        seterr(err, errlen, "cannot encode the request (invalid UTF-8?)");
        return -1;
    }
    size_t n = strlen(s);
    s[n] = '\n'; /* json_dumps leaves room for exactly the NUL: write the NUL's place as the newline */
    int rc = write_all(c->fd, s, n + 1, err, errlen);
    free(s);
    return rc ? -1 : id;
}

int dc_fill(dc_conn *c, char *err, size_t errlen) {
    if (c->start > 0 && c->start == c->len) c->start = c->len = 0;
    if (c->cap - c->len < 65536) {
        if (c->start > 0) { /* slide what is left to the front before growing */
            memmove(c->buf, c->buf + c->start, c->len - c->start);
            c->len -= c->start;
            c->start = 0;
        }
        if (c->cap - c->len < 65536) {
            size_t cap = c->cap ? c->cap * 2 : 131072;
            char *b = realloc(c->buf, cap);
            if (!b) {
                seterr(err, errlen, "out of memory");
                return -1;
            }
            c->buf = b;
            c->cap = cap;
        }
    }
    for (;;) {
        ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            seterr(err, errlen, "cannot read from the daemon: %s", strerror(errno));
            return -1;
        }
        if (r == 0) {
            seterr(err, errlen, "the daemon closed the connection");
            return 0;
        }
        c->len += (size_t)r;
        return 1;
    }
}

json_t *dc_next(dc_conn *c, int *bad) {
    while (c->start < c->len) {
        char *p = c->buf + c->start, *nl = memchr(p, '\n', c->len - c->start);
        if (!nl) return NULL;
        size_t n = (size_t)(nl - p);
        c->start += n + 1;
        json_t *o = json_loadb(p, n, JSON_REJECT_DUPLICATES, NULL);
        if (o && json_is_object(o)) return o;
        json_decref(o);
        if (bad) (*bad)++;
    }
    return NULL;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

json_t *dc_wait(dc_conn *c, int timeout_ms, char *err, size_t errlen) {
    long long deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        json_t *o = dc_next(c, NULL);
        if (o) return o;
        int left = -1;
        if (deadline >= 0) {
            long long l = deadline - now_ms();
            if (l <= 0) {
                seterr(err, errlen, "no answer from the daemon after %d ms", timeout_ms);
                return NULL;
            }
            left = l > INT_MAX ? INT_MAX : (int)l;
        }
        struct pollfd pf = {.fd = c->fd, .events = POLLIN};
        int r = poll(&pf, 1, left);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            seterr(err, errlen, "poll: %s", strerror(errno));
            return NULL;
        }
        if (r == 0) continue;
        if (dc_fill(c, err, errlen) <= 0) return NULL;
    }
}

json_t *dc_call(dc_conn *c, const char *op, json_t *params, int timeout_ms, char *err, size_t errlen) {
    json_t *req = params ? params : json_object();
    if (!req || json_object_set_new(req, "op", json_string(op))) {
        json_decref(req);
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    long long id = dc_send(c, req, err, errlen);
    if (id < 0) return NULL;
    for (;;) {
        json_t *o = dc_wait(c, timeout_ms, err, errlen);
        if (!o || dc_id(o) == id) return o;
        json_decref(o);
    }
}

long long dc_id(const json_t *msg) {
    json_t *id = json_object_get(msg, "id");
    return json_is_integer(id) ? (long long)json_integer_value(id) : -1;
}

const char *dc_err_code(const json_t *msg) {
    json_t *e = json_object_get(msg, "error");
    if (!e) return NULL;
    const char *s = json_string_value(json_object_get(e, "code"));
    return s ? s : "internal";
}

const char *dc_err_message(const json_t *msg) {
    json_t *e = json_object_get(msg, "error");
    if (!e) return NULL;
    const char *s = json_string_value(json_object_get(e, "message"));
    return s ? s : "(no message)";
}

json_t *dc_session_ref(const char *s) {
    int digits = *s != 0 && strlen(s) < 19;
    for (const char *p = s; *p && digits; p++) digits = *p >= '0' && *p <= '9';
    return digits ? json_integer(strtoll(s, NULL, 10)) : json_string(s);
}

/* ---- starting the daemon ------------------------------------------------------------------------------------ */

char *dc_daemon_binary(void) {
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = 0;
        char *slash = strrchr(self, '/');
        if (slash) {
            char *p = NULL;
            *slash = 0;
            if (asprintf(&p, "%s/dsachatd", self) >= 0) {
                if (access(p, X_OK) == 0) return p;
                free(p);
            }
        }
    }
    return strdup("dsachatd");
}

int dc_spawn_start(dc_spawn *sp, const char *sock, const dc_opts *o, char *err, size_t errlen) {
    memset(sp, 0, sizeof *sp);
    sp->fd = -1;
    char *bin = dc_daemon_binary();
    char **argv = calloc((size_t)o->ndargs + 4, sizeof *argv);
    int p[2];
    if (!bin || !argv) {
        free(bin);
        free(argv);
        seterr(err, errlen, "out of memory");
        return -1;
    }
    if (pipe2(p, O_CLOEXEC)) {
        seterr(err, errlen, "pipe: %s", strerror(errno));
        free(bin);
        free(argv);
        return -1;
    }
    int k = 0;
    argv[k++] = bin;
    argv[k++] = "-s";
    argv[k++] = (char *)sock;
    for (int i = 0; i < o->ndargs; i++) argv[k++] = o->dargs[i];
    argv[k] = NULL;
    pid_t pid = fork();
    if (pid < 0) {
        seterr(err, errlen, "fork: %s", strerror(errno));
        close(p[0]);
        close(p[1]);
        free(bin);
        free(argv);
        return -1;
    }
    if (pid == 0) {
        int dn = open("/dev/null", O_RDONLY);
        if (dn >= 0) dup2(dn, 0);
        dup2(p[1], 1);
        dup2(p[1], 2);
        signal(SIGINT, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        execvp(bin, argv);
        dprintf(2, "cannot run %s: %s", bin, strerror(errno));
        _exit(127);
    }
    close(p[1]);
    free(bin);
    free(argv);
    sp->pid = pid;
    sp->fd = p[0];
    return 0;
}

/* The daemon's last message line (it prints "dsachatd: why"), trimmed. */
static const char *spawn_message(dc_spawn *sp) {
    sp->out[sp->nout] = 0;
    while (sp->nout && (sp->out[sp->nout - 1] == '\n' || sp->out[sp->nout - 1] == ' ')) sp->out[--sp->nout] = 0;
    char *nl = strrchr(sp->out, '\n');
    return nl ? nl + 1 : sp->out;
}

int dc_spawn_step(dc_spawn *sp, char *err, size_t errlen) {
    if (sp->fd >= 0) {
        char tmp[256];
        ssize_t r = read(sp->fd, tmp, sizeof tmp);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) return 1;
        if (r > 0) {
            size_t room = sizeof sp->out - 1 - sp->nout, m = (size_t)r < room ? (size_t)r : room;
            memcpy(sp->out + sp->nout, tmp, m);
            sp->nout += m;
            return 1;
        }
        close(sp->fd);
        sp->fd = -1;
    }
    int st;
    pid_t w;
    while ((w = waitpid(sp->pid, &st, 0)) < 0 && errno == EINTR) {}
    sp->pid = 0;
    if (w < 0) {
        seterr(err, errlen, "waitpid: %s", strerror(errno));
        return -1;
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return 0;
    const char *m = spawn_message(sp);
    if (*m) seterr(err, errlen, "%s", m);
    else if (WIFEXITED(st)) seterr(err, errlen, "dsachatd exited with status %d", WEXITSTATUS(st));
    else seterr(err, errlen, "dsachatd was killed by signal %d", WTERMSIG(st));
    return -1;
}

void dc_spawn_abandon(dc_spawn *sp) {
    if (sp->fd >= 0) close(sp->fd);
    sp->fd = -1;
    if (sp->pid > 0) waitpid(sp->pid, NULL, WNOHANG);
    sp->pid = 0;
}

int dc_daemon_starting(const char *sock) {
    char *lock = NULL;
    if (asprintf(&lock, "%s.lock", sock) < 0) return 0;
    int fd = open(lock, O_RDONLY | O_CLOEXEC), held = 0;
    free(lock);
    if (fd < 0) return 0;
    if (flock(fd, LOCK_SH | LOCK_NB)) held = errno == EWOULDBLOCK;
    close(fd); /* (releases the lock if we got it) */
    return held;
}

dc_conn *dc_connect_or_spawn(const dc_opts *o, char *err, size_t errlen) {
    char *path = dc_socket_path(o->socket);
    if (!path) {
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    int missing = 0;
    dc_conn *c = dc_connect(path, &missing, err, errlen);
    if (c || !missing || o->no_spawn) {
        free(path);
        return c;
    }
    dc_spawn sp;
    char serr[512] = "";
    int rc = 0;
    if (!dc_daemon_starting(path)) {
        rc = dc_spawn_start(&sp, path, o, serr, sizeof serr);
        while (rc == 0 && (rc = dc_spawn_step(&sp, serr, sizeof serr)) == 1) {}
    }
    /* even when this start failed, another client may have started one on the same socket meanwhile: wait while
     * a daemon holds the socket's lock without listening yet (it is loading the model) */
    long long give_up = now_ms() + 120000;
    while (!(c = dc_connect(path, NULL, err, errlen)) && dc_daemon_starting(path) && now_ms() < give_up) {
        struct timespec ts = {0, 100 * 1000000};
        nanosleep(&ts, NULL);
    }
    if (!c && rc) seterr(err, errlen, "cannot start dsachatd: %s", serr);
    free(path);
    return c;
}
