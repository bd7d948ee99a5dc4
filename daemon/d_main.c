/*
 * dsachatd: keeps the model resident and serves chat sessions over a Unix socket (man dsachatd(8); the protocol is
 * man dsachat-protocol(7)).  This file: options and the config file, the socket directory, the one-instance lock,
 * going to the background, the log.
 */
#define _GNU_SOURCE
#include "d_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MODEL_FILE "SmolLM2-135M-Instruct.Q4_1.gguf"

/* ---- the log ------------------------------------------------------------------------------------------------- */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static FILE *log_fp;
static const char *log_path;

void d_log(const char *fmt, ...) {
    char ts[32];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    localtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%d %H:%M:%S", &tm);
    pthread_mutex_lock(&log_mu);
    FILE *f = log_fp ? log_fp : stderr;
    fprintf(f, "%s.%03ld dsachatd[%d]: ", ts, now.tv_nsec / 1000000, (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
    fflush(f);
    pthread_mutex_unlock(&log_mu);
}

void d_log_reopen(void) {
    if (!log_path) return;
    pthread_mutex_lock(&log_mu);
    FILE *f = fopen(log_path, "a");
    if (f) {
        if (log_fp) fclose(log_fp);
        log_fp = f;
    }
    pthread_mutex_unlock(&log_mu);
}

/* ---- options ----------------------------------------------------------------------------------------------- */

static void usage(FILE *f) {
    fprintf(f,
            "usage: dsachatd [options]\n"
            "Keeps a chat model resident and serves sessions over a Unix socket (man dsachatd, dsachat-protocol).\n"
            "\n"
            "  -f, --foreground     stay in the foreground, log to stderr (default: go to the background)\n"
            "  -s, --socket PATH    socket (default $XDG_RUNTIME_DIR/dsachat/dsachatd.sock,\n"
            "                       else /tmp/dsachat-$UID/dsachatd.sock)\n"
            "  -m, --model FILE     GGUF chat model (default: the cached SmolLM2-135M-Instruct)\n"
            "      --indexer FILE   DSA indexer sidecar (default: <model>.dsa.gguf, else the shipped one)\n"
            "      --dense          dense attention (DSA off)\n"
            "      --store DIR      session store (default $XDG_DATA_HOME/dsachat)\n"
            "  -t, --threads N      compute threads (default: all cores)\n"
            "      --ctx N          context per session in tokens (default: the model's)\n"
            "      --max-open N     sessions kept in memory when idle (default 16)\n"
            "      --backend B      auto, cpu or cuda (default auto)\n"
            "      --log-file FILE  log here (default in the background: dsachatd.log beside the socket)\n"
            "      --config FILE    options file (default $XDG_CONFIG_HOME/dsachat/dsachatd.conf)\n"
            "  -h, --help           this text\n"
            "      --version        the version\n");
}

static char *xstrdup(const char *s) {
    char *p = strdup(s);
    if (!p) {
        fprintf(stderr, "dsachatd: out of memory\n");
        exit(1);
    }
    return p;
}

static int parse_num(const char *v, const char *what, int lo, int hi) {
    char *e;
    errno = 0;
    long x = strtol(v, &e, 10);
    if (errno || e == v || *e || x < lo || x > hi) {
        fprintf(stderr, "dsachatd: %s: '%s' is not a number in %d..%d\n", what, v, lo, hi);
        exit(2);
    }
    return (int)x;
}

/* One option by its long name; from the command line or the config file (where = "" or "FILE:LINE: "). */
static void set_opt(d_options *o, const char *name, const char *v, const char *where) {
    if (!strcmp(name, "socket")) o->socket = xstrdup(v);
    else if (!strcmp(name, "model")) o->model = xstrdup(v);
    else if (!strcmp(name, "indexer")) o->indexer = xstrdup(v);
    else if (!strcmp(name, "store")) o->store = xstrdup(v);
    else if (!strcmp(name, "log-file")) o->log_file = xstrdup(v);
    else if (!strcmp(name, "backend")) o->backend = xstrdup(v);
    else if (!strcmp(name, "threads")) o->threads = parse_num(v, "--threads", 1, 1024);
    else if (!strcmp(name, "ctx")) o->n_ctx = parse_num(v, "--ctx", 64, 1 << 22);
    else if (!strcmp(name, "max-open")) o->max_open = parse_num(v, "--max-open", 1, 4096);
    else if (!strcmp(name, "dense")) o->dense = !v || !*v || strcmp(v, "0");
    else if (!strcmp(name, "foreground")) o->foreground = !v || !*v || strcmp(v, "0");
    else {
        fprintf(stderr, "dsachatd: %sunknown option '%s'\n", where, name);
        exit(2);
    }
}

/* key = value lines; # comments; the command line wins over the file. */
static void read_config(d_options *o, const char *path, int required) {
    FILE *f = fopen(path, "r");
    if (!f) {
        if (required || errno != ENOENT) {
            fprintf(stderr, "dsachatd: %s: %s\n", path, strerror(errno));
            exit(2);
        }
        return;
    }
    char line[4096], where[PATH_MAX + 32];
    for (int ln = 1; fgets(line, sizeof line, f); ln++) {
        char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        size_t len = strlen(p);
        while (len && strchr(" \t\r\n", p[len - 1])) p[--len] = 0;
        if (!*p || *p == '#') continue;
        snprintf(where, sizeof where, "%s:%d: ", path, ln);
        char *key = p, *val = "", *eq = strchr(p, '=');
        if (eq) {
            *eq = 0;
            val = eq + 1;
            while (*val == ' ' || *val == '\t') val++;
            for (size_t k = strlen(key); k && (key[k - 1] == ' ' || key[k - 1] == '\t');) key[--k] = 0;
        }
        set_opt(o, key, val, where);
    }
    fclose(f);
}

static char *path_join(const char *a, const char *b) {
    char *p;
    if (asprintf(&p, "%s/%s", a, b) < 0) {
        fprintf(stderr, "dsachatd: out of memory\n");
        exit(1);
    }
    return p;
}

static char *default_model(void) {
    const char *x = getenv("XDG_CACHE_HOME"), *h = getenv("HOME");
    char *p;
    if (x && *x) p = path_join(x, "dsachat/models/" DEFAULT_MODEL_FILE);
    else p = path_join(h ? h : "/", ".cache/dsachat/models/" DEFAULT_MODEL_FILE);
    return p;
}

static char *default_socket(void) {
    const char *r = getenv("XDG_RUNTIME_DIR");
    if (r && *r == '/') return path_join(r, "dsachat/dsachatd.sock");
    char *p;
    if (asprintf(&p, "/tmp/dsachat-%d/dsachatd.sock", (int)getuid()) < 0) exit(1);
    return p;
}

/* The socket's directory: made 0700 if missing; an existing one must be ours and closed to others. */
static void socket_dir(const char *sock) {
    char *dir = xstrdup(sock), *slash = strrchr(dir, '/');
    if (!slash || slash == dir) {
        free(dir);
        return;
    }
    *slash = 0;
    if (mkdir(dir, 0700) && errno != EEXIST) {
        /* a missing parent (e.g. $XDG_RUNTIME_DIR/dsachat under a missing runtime dir) */
        fprintf(stderr, "dsachatd: cannot create %s: %s\n", dir, strerror(errno));
        exit(1);
    }
    struct stat st;
    if (stat(dir, &st) || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "dsachatd: %s is not a directory\n", dir);
        exit(1);
    }
    if (st.st_uid != getuid()) {
        fprintf(stderr, "dsachatd: %s belongs to uid %d, not to us: refusing to put the socket there\n", dir,
                (int)st.st_uid);
        exit(1);
    }
    if ((st.st_mode & 077) && chmod(dir, 0700)) {
        fprintf(stderr, "dsachatd: cannot make %s private (0700): %s\n", dir, strerror(errno));
        exit(1);
    }
    free(dir);
}

/* ---- main ---------------------------------------------------------------------------------------------------- */

/* Static, so that what the options point to stays reachable whichever way main returns (LeakSanitizer). */
static d_options o;
static char *lock_path;

int main(int argc, char **argv) {
    o.max_open = 16;
    const char *config = NULL;
    enum { O_INDEXER = 256, O_STORE, O_LOG, O_CONFIG, O_CTX, O_MAXOPEN, O_BACKEND, O_DENSE, O_VERSION };
    static const struct option lo[] = {
        {"foreground", no_argument, 0, 'f'}, {"socket", required_argument, 0, 's'},
        {"model", required_argument, 0, 'm'}, {"indexer", required_argument, 0, O_INDEXER},
        {"store", required_argument, 0, O_STORE}, {"threads", required_argument, 0, 't'},
        {"log-file", required_argument, 0, O_LOG}, {"config", required_argument, 0, O_CONFIG},
        {"ctx", required_argument, 0, O_CTX}, {"max-open", required_argument, 0, O_MAXOPEN},
        {"backend", required_argument, 0, O_BACKEND}, {"dense", no_argument, 0, O_DENSE},
        {"help", no_argument, 0, 'h'}, {"version", no_argument, 0, O_VERSION}, {0, 0, 0, 0}};
    /* the config file first (its name may come from the command line), then the command line over it */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc) config = argv[i + 1];
        else if (!strncmp(argv[i], "--config=", 9)) config = argv[i] + 9;
    }
    if (config) {
        read_config(&o, config, 1);
    } else {
        const char *x = getenv("XDG_CONFIG_HOME"), *h = getenv("HOME");
        char *p = x && *x ? path_join(x, "dsachat/dsachatd.conf") : h ? path_join(h, ".config/dsachat/dsachatd.conf") : NULL;
        if (p) read_config(&o, p, 0);
        free(p);
    }
    int c;
    while ((c = getopt_long(argc, argv, "fs:m:t:h", lo, NULL)) != -1) {
        switch (c) {
        case 'f': o.foreground = 1; break;
        case 's': set_opt(&o, "socket", optarg, ""); break;
        case 'm': set_opt(&o, "model", optarg, ""); break;
        case 't': set_opt(&o, "threads", optarg, ""); break;
        case O_INDEXER: set_opt(&o, "indexer", optarg, ""); break;
        case O_STORE: set_opt(&o, "store", optarg, ""); break;
        case O_LOG: set_opt(&o, "log-file", optarg, ""); break;
        case O_CONFIG: break;
        case O_CTX: set_opt(&o, "ctx", optarg, ""); break;
        case O_MAXOPEN: set_opt(&o, "max-open", optarg, ""); break;
        case O_BACKEND: set_opt(&o, "backend", optarg, ""); break;
        case O_DENSE: o.dense = 1; break;
        case 'h': usage(stdout); return 0;
        case O_VERSION: printf("dsachatd %s\n", DSA_VERSION); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "dsachatd: unexpected argument '%s' (see dsachatd --help)\n", argv[optind]);
        return 2;
    }
    if (!o.model) o.model = default_model();
    if (access(o.model, R_OK)) {
        fprintf(stderr, "dsachatd: model %s: %s%s\n", o.model, strerror(errno),
                errno == ENOENT ? " (scripts/fetch-model.sh downloads the default one)" : "");
        return 1;
    }
    if (!o.socket) o.socket = default_socket();
    if (strlen(o.socket) >= 100) { /* sockaddr_un's limit, with room */
        fprintf(stderr, "dsachatd: socket path too long (%zu bytes): %s\n", strlen(o.socket), o.socket);
        return 2;
    }
    socket_dir(o.socket);

    /* one daemon per socket: the lock is held for the process's life; whoever holds it owns the socket path,
     * so a socket file found there now is a stale one from a crash */
    if (asprintf(&lock_path, "%s.lock", o.socket) < 0) return 1;
    int lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB)) {
        fprintf(stderr, "dsachatd: %s\n", lock_fd < 0 ? strerror(errno) : "another dsachatd is serving this socket");
        fprintf(stderr, "dsachatd: socket %s\n", o.socket);
        return 1;
    }
    if (unlink(o.socket) == 0) fprintf(stderr, "dsachatd: removed a stale socket %s\n", o.socket);

    int ready[2] = {-1, -1};
    if (!o.foreground) {
        if (!o.log_file) {
            char *dir = xstrdup(o.socket), *slash = strrchr(dir, '/');
            if (slash) *slash = 0;
            o.log_file = path_join(slash ? dir : ".", "dsachatd.log");
            free(dir);
        }
        /* the parent returns once the child listens (or says why it could not), so that a client may connect
         * right after `dsachatd` returns */
        if (pipe(ready)) return 1;
        pid_t pid = fork();
        if (pid < 0) {
            perror("dsachatd: fork");
            return 1;
        }
        if (pid > 0) {
            close(ready[1]);
            char msg[1024];
            ssize_t n = read(ready[0], msg, sizeof msg - 1);
            if (n > 0 && msg[0] == 'R') return 0;
            if (n > 0) msg[n] = 0, fprintf(stderr, "dsachatd: %s\n", msg + 1);
            else fprintf(stderr, "dsachatd: the daemon exited while starting (see %s)\n", o.log_file);
            return 1;
        }
        close(ready[0]);
        setsid();
        int dn = open("/dev/null", O_RDWR);
        if (dn >= 0) dup2(dn, 0), dup2(dn, 1), dup2(dn, 2), close(dn);
    }
    if (o.log_file) {
        log_path = o.log_file;
        d_log_reopen();
        if (!log_fp) fprintf(stderr, "dsachatd: cannot open the log %s: %s\n", o.log_file, strerror(errno));
    }
    signal(SIGPIPE, SIG_IGN);
    d_log("dsachatd %s starting, socket %s", DSA_VERSION, o.socket);
    char err[1024];
    /* the loop's handles exist before the worker can post to them; connections are accepted once the loop runs */
    if (d_server_listen(o.socket, err, sizeof err) || d_worker_start(&o, err, sizeof err)) {
        unlink(o.socket);
        d_log("error: %s", err);
        if (ready[1] >= 0) {
            char msg[1100];
            int n = snprintf(msg, sizeof msg, "E%s", err);
            ssize_t w = write(ready[1], msg, (size_t)n);
            (void)w;
        } else {
            fprintf(stderr, "dsachatd: %s\n", err);
        }
        return 1;
    }
    d_log("ready: listening on %s", o.socket);
    if (ready[1] >= 0) {
        ssize_t w = write(ready[1], "R", 1);
        (void)w;
        close(ready[1]);
    }
    int rc = d_server_run();
    d_worker_join();
    unlink(o.socket);
    d_log("stopped");
    close(lock_fd);
    return rc;
}
