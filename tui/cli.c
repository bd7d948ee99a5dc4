/*
 * The subcommands for scripts: send, ls, history, rm.  No curses, no TTY needed: results go to stdout (plain text,
 * or one JSON object with --json), errors are one line on stderr, and the exit status says what happened (tui.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tui.h"

#define TIMEOUT_MS 60000 /* for replies that are not chat streams */

static int usage_err(const char *cmd, const char *what) {
    fprintf(stderr, "dsachat %s: %s (see dsachat --help)\n", cmd, what);
    return DC_EXIT_USAGE;
}

static dc_conn *connect_daemon(const dc_opts *o) {
    char err[600];
    dc_conn *c = dc_connect_or_spawn(o, err, sizeof err);
    if (!c) fprintf(stderr, "dsachat: %s\n", err);
    return c;
}

/* A reply: NULL (connection failed) or an error reply are reported and give the exit status; 0 for success. */
static int check_reply(const json_t *r, const char *err) {
    if (!r) {
        fprintf(stderr, "dsachat: %s\n", err);
        return DC_EXIT_CONNECT;
    }
    if (dc_err_code(r)) {
        fprintf(stderr, "dsachat: %s: %s\n", dc_err_code(r), dc_err_message(r));
        return DC_EXIT_DAEMON;
    }
    return 0;
}

/* Print obj as one JSON line on stdout (members id and ok dropped). */
static void print_json(json_t *obj) {
    json_object_del(obj, "id");
    json_object_del(obj, "ok");
    if (json_dumpf(obj, stdout, JSON_COMPACT | JSON_REAL_PRECISION(15)) == 0) putchar('\n');
}

static char *read_stdin(void) {
    size_t n = 0, cap = 4096;
    char *s = malloc(cap);
    while (s) {
        if (n + 1 >= cap) {
            char *t = realloc(s, cap *= 2);
            if (!t) break;
            s = t;
        }
        size_t r = fread(s + n, 1, cap - n - 1, stdin);
        n += r;
        if (r == 0) {
            if (ferror(stdin)) break;
            s[n] = 0;
            return s;
        }
    }
    free(s);
    return NULL;
}

static int parse_num(const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* ---- send ------------------------------------------------------------------------------------------------------ */

typedef struct send_args {
    const char *session, *new_name, *system, *text;
    int new_session, json, max_tokens;
    double temp;
    int have_temp;
} send_args;

static int send_parse(int argc, char **argv, send_args *a) {
    int npos = 0;
    const char *pos[2] = {0};
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        double v;
        if (!strcmp(s, "--json")) {
            a->json = 1;
        } else if ((!strcmp(s, "-s") || !strcmp(s, "--session")) && i + 1 < argc) {
            a->session = argv[++i];
        } else if (!strcmp(s, "--new")) {
            a->new_session = 1;
        } else if (!strncmp(s, "--new=", 6)) {
            a->new_session = 1;
            a->new_name = s + 6;
        } else if (!strcmp(s, "--system") && i + 1 < argc) {
            a->system = argv[++i];
        } else if (!strcmp(s, "--temp") && i + 1 < argc) {
            if (parse_num(argv[++i], 0, 10, &a->temp)) return usage_err("send", "--temp: a number in 0..10");
            a->have_temp = 1;
        } else if ((!strcmp(s, "-n") || !strcmp(s, "--max-tokens")) && i + 1 < argc) {
            if (parse_num(argv[++i], 1, 65536, &v) || v != (int)v)
                return usage_err("send", "--max-tokens: an integer in 1..65536");
            a->max_tokens = (int)v;
        } else if (!strcmp(s, "--")) {
            while (++i < argc && npos < 2) pos[npos++] = argv[i];
            if (i < argc) return usage_err("send", "too many arguments");
        } else if (s[0] == '-' && s[1]) {
            char m[200];
            snprintf(m, sizeof m, "unknown option or missing value: %s", s);
            return usage_err("send", m);
        } else if (npos < 2) {
            pos[npos++] = s;
        } else {
            return usage_err("send", "too many arguments");
        }
    }
    /* --new NAME TEXT: with two arguments after --new, the first is the name */
    if (npos == 2 && a->new_session && !a->new_name) {
        a->new_name = pos[0];
        pos[0] = pos[1];
        npos = 1;
    }
    if (npos == 2) return usage_err("send", "too many arguments");
    if (a->session && a->new_session) return usage_err("send", "-s and --new exclude each other");
    if (a->new_name && !*a->new_name) return usage_err("send", "--new: the name is empty");
    a->text = npos ? pos[0] : "-";
    return 0;
}

/* The session to talk to: created (--new), named (-s), or the most recently updated one (a new one if none).
 * --system is set on an existing one first. */
static json_t *send_session(dc_conn *c, const send_args *a, int *rc) {
    char err[600];
    json_t *r, *ref = NULL;
    if (a->session) {
        ref = dc_session_ref(a->session);
    } else if (!a->new_session) {
        r = dc_call(c, "session.list", NULL, TIMEOUT_MS, err, sizeof err);
        if ((*rc = check_reply(r, err))) {
            json_decref(r);
            return NULL;
        }
        json_t *first = json_array_get(json_object_get(r, "sessions"), 0);
        if (first) ref = json_incref(json_object_get(first, "id"));
        json_decref(r);
    }
    if (ref && a->system) {
        r = dc_call(c, "session.set", json_pack("{sOss}", "session", ref, "system", a->system), TIMEOUT_MS, err,
                    sizeof err);
        *rc = check_reply(r, err);
        json_decref(r);
        if (*rc) {
            json_decref(ref);
            return NULL;
        }
    }
    if (ref) return ref;
    json_t *p = json_object();
    if (a->new_name) json_object_set_new(p, "name", json_string(a->new_name));
    if (a->system) json_object_set_new(p, "system", json_string(a->system));
    r = dc_call(c, "session.create", p, TIMEOUT_MS, err, sizeof err);
    if ((*rc = check_reply(r, err)) == 0) ref = json_incref(json_object_get(json_object_get(r, "session"), "id"));
    json_decref(r);
    return ref;
}

/* Append t to the growing string *buf. */
static int buf_add(char **buf, size_t *len, size_t *cap, const char *t) {
    size_t n = strlen(t);
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *len + n + 1) c *= 2;
        char *b = realloc(*buf, c);
        if (!b) return -1;
        *buf = b;
        *cap = c;
    }
    memcpy(*buf + *len, t, n + 1);
    *len += n;
    return 0;
}

/* Stream the reply of request id: tokens to stdout as they come (or collected for --json). */
static int send_stream(dc_conn *c, long long id, const send_args *a, json_t *session) {
    char err[600];
    char *acc = NULL;
    size_t alen = 0, acap = 0;
    int rc = DC_EXIT_CUT, at_bol = 1;
    int progress = isatty(2), shown = 0; /* a long prompt's progress on the terminal, erased at the first token */
    json_t *sid = json_incref(session);
    for (;;) {
        json_t *m = dc_wait(c, -1, err, sizeof err);
        const char *ev = m ? json_string_value(json_object_get(m, "event")) : NULL;
        if (shown && (!ev || strcmp(ev, "prefill"))) {
            fputs("\r\033[K", stderr);
            shown = 0;
        }
        if (!m) {
            fprintf(stderr, "dsachat: %s before the reply was done\n", err);
            break;
        }
        if (dc_id(m) != id) {
            json_decref(m);
            continue;
        }
        if (dc_err_code(m)) {
            rc = check_reply(m, err);
            json_decref(m);
            break;
        }
        if (ev && !strcmp(ev, "prefill") && progress) {
            json_int_t done = json_integer_value(json_object_get(m, "done")),
                       total = json_integer_value(json_object_get(m, "total"));
            if (total > 0) {
                fprintf(stderr, "\rdsachat: reading the prompt, %lld of %lld tokens (%lld%%)", (long long)done,
                        (long long)total, (long long)(done * 100 / total));
                shown = 1;
            }
        } else if (ev && !strcmp(ev, "start") && json_object_get(m, "session")) {
            json_decref(sid);
            sid = json_incref(json_object_get(m, "session")); /* the id, also when -s gave a name */
        } else if (ev && !strcmp(ev, "token")) {
            const char *t = json_string_value(json_object_get(m, "text"));
            if (t && *t) {
                if (a->json) {
                    if (buf_add(&acc, &alen, &acap, t)) {
                        fprintf(stderr, "dsachat: out of memory\n");
                        json_decref(m);
                        break;
                    }
                } else {
                    fputs(t, stdout);
                    fflush(stdout);
                    at_bol = t[strlen(t) - 1] == '\n';
                }
            }
        } else if (ev && !strcmp(ev, "done")) {
            const char *stop = json_string_value(json_object_get(m, "stop"));
            rc = stop && (!strcmp(stop, "eos") || !strcmp(stop, "length")) ? DC_EXIT_OK : DC_EXIT_CUT;
            if (a->json) {
                json_t *out = json_pack("{sOsO?sssO?sO?}", "session", sid, "message", json_object_get(m, "message"),
                                        "text", acc ? acc : "", "stop", json_object_get(m, "stop"), "stats",
                                        json_object_get(m, "stats"));
                if (out) print_json(out);
                json_decref(out);
            } else if (!at_bol) {
                putchar('\n');
            }
            if (rc) fprintf(stderr, "dsachat: the reply was cut off (%s)\n", stop ? stop : "?");
            json_decref(m);
            break;
        }
        json_decref(m);
    }
    fflush(stdout);
    json_decref(sid);
    free(acc);
    return rc;
}

int cli_send(const dc_opts *o, int argc, char **argv) {
    send_args a = {0};
    int rc = send_parse(argc, argv, &a);
    if (rc) return rc;
    char *owned = NULL;
    const char *text = a.text;
    if (!strcmp(text, "-")) {
        owned = read_stdin();
        if (!owned) {
            fprintf(stderr, "dsachat send: cannot read the standard input: %s\n", strerror(errno));
            return DC_EXIT_USAGE;
        }
        size_t n = strlen(owned);
        while (n && (owned[n - 1] == '\n' || owned[n - 1] == '\r')) owned[--n] = 0;
        text = owned;
    }
    if (!*text) {
        free(owned);
        return usage_err("send", "the message is empty");
    }
    json_t *textj = json_string(text);
    free(owned);
    if (!textj) return usage_err("send", "the message is not valid UTF-8");
    dc_conn *c = connect_daemon(o);
    if (!c) {
        json_decref(textj);
        return DC_EXIT_CONNECT;
    }
    json_t *session = send_session(c, &a, &rc);
    if (!session) {
        json_decref(textj);
        dc_close(c);
        return rc;
    }
    json_t *req = json_pack("{sssOso}", "op", "chat.send", "session", session, "text", textj);
    if (a.have_temp) json_object_set_new(req, "sampling", json_pack("{sf}", "temp", a.temp));
    if (a.max_tokens) json_object_set_new(req, "max_tokens", json_integer(a.max_tokens));
    char err[600];
    long long id = dc_send(c, req, err, sizeof err);
    if (id < 0) {
        fprintf(stderr, "dsachat: %s\n", err);
        rc = DC_EXIT_CONNECT;
    } else {
        rc = send_stream(c, id, &a, session);
    }
    json_decref(session);
    dc_close(c);
    return rc;
}

/* ---- ls, history, rm ---------------------------------------------------------------------------------------- */

/* Parse "[--json] [SESSION]" (need_session: exactly one SESSION). */
static int simple_args(int argc, char **argv, int need_session, int *json, const char **session) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            *json = 1;
        } else if (argv[i][0] == '-' && argv[i][1] && strcmp(argv[i], "--")) {
            char m[200];
            snprintf(m, sizeof m, "unknown option %s", argv[i]);
            return usage_err(argv[0], m);
        } else if (!strcmp(argv[i], "--") && i + 1 < argc) {
            if (!need_session || *session || i + 2 != argc) return usage_err(argv[0], "too many arguments");
            *session = argv[++i];
        } else if (need_session && !*session) {
            *session = argv[i];
        } else {
            return usage_err(argv[0], "too many arguments");
        }
    }
    if (need_session && (!*session || !**session)) return usage_err(argv[0], "which session? (an id or a name)");
    return 0;
}

/* One request whose reply is printed by show (or as JSON). */
static int one_call(const dc_opts *o, const char *op, json_t *params, int json, void (*show)(json_t *)) {
    dc_conn *c = connect_daemon(o);
    if (!c) {
        json_decref(params);
        return DC_EXIT_CONNECT;
    }
    char err[600];
    json_t *r = dc_call(c, op, params, TIMEOUT_MS, err, sizeof err);
    int rc = check_reply(r, err);
    if (!rc) {
        if (json) print_json(r);
        else show(r);
    }
    json_decref(r);
    dc_close(c);
    fflush(stdout);
    return rc;
}

static const char *str_or(const json_t *o, const char *key, const char *dflt) {
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : dflt;
}

static void show_ls(json_t *r) {
    json_t *s;
    size_t i;
    json_array_foreach(json_object_get(r, "sessions"), i, s) {
        if (i == 0) printf("%-5s %-24s %5s %7s  %s\n", "ID", "NAME", "MSGS", "TOKENS", "UPDATED");
        time_t t = (time_t)(json_integer_value(json_object_get(s, "updated_ms")) / 1000);
        struct tm tm;
        char when[32] = "?";
        if (localtime_r(&t, &tm)) strftime(when, sizeof when, "%Y-%m-%d %H:%M", &tm);
        printf("%-5lld %-24s %5lld %7lld  %s%s\n", (long long)json_integer_value(json_object_get(s, "id")),
               str_or(s, "name", "?"), (long long)json_integer_value(json_object_get(s, "messages")),
               (long long)json_integer_value(json_object_get(s, "tokens")), when,
               json_is_true(json_object_get(s, "generating")) ? "  (generating)" : "");
    }
}

static void show_history(json_t *r) {
    json_t *m;
    size_t i;
    const char *sys = json_string_value(json_object_get(json_object_get(r, "session"), "system"));
    if (sys && *sys) printf("system: %s\n\n", sys);
    json_array_foreach(json_object_get(r, "messages"), i, m) {
        const char *content = str_or(m, "content", "");
        printf("%s%s: %s%s\n\n", json_is_false(json_object_get(m, "in_context")) ? "(out of context) " : "",
               str_or(m, "role", "?"), content, json_is_true(json_object_get(m, "truncated")) ? " [cut off]" : "");
    }
}

static void show_rm(json_t *r) { (void)r; }

int cli_ls(const dc_opts *o, int argc, char **argv) {
    int json = 0;
    const char *s = NULL;
    int rc = simple_args(argc, argv, 0, &json, &s);
    return rc ? rc : one_call(o, "session.list", NULL, json, show_ls);
}

int cli_history(const dc_opts *o, int argc, char **argv) {
    int json = 0;
    const char *s = NULL;
    int rc = simple_args(argc, argv, 1, &json, &s);
    return rc ? rc : one_call(o, "session.history", json_pack("{so}", "session", dc_session_ref(s)), json, show_history);
}

int cli_rm(const dc_opts *o, int argc, char **argv) {
    int json = 0;
    const char *s = NULL;
    int rc = simple_args(argc, argv, 1, &json, &s);
    if (rc) return rc;
    rc = one_call(o, "session.delete", json_pack("{so}", "session", dc_session_ref(s)), 0, show_rm);
    if (!rc && json) {
        json_t *out = json_pack("{so}", "deleted", dc_session_ref(s));
        print_json(out);
        json_decref(out);
    }
    return rc;
}
