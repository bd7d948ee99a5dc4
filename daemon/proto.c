/*
 * dsachatd protocol v1: request parser and reply builders (see proto.h; the contract is man/dsachat-protocol.7).
 *
 * A line goes through four gates, cheapest and most fundamental first, and the first that fails names the error:
 *   1. length      (line_too_long: the framing layer has already dropped the rest of the line)
 *   2. UTF-8       (bad_utf8: checked here, byte by byte, before jansson sees the bytes, so that every string
 *                   jansson hands back -- and every string we echo -- is known to be valid)
 *   3. JSON        (bad_json: syntax, a NUL byte, a value that is not an object, duplicate keys)
 *   4. the request (unknown_op / bad_request: the op, then each of its parameters, in the documented order)
 * Once gate 3 has passed, the id is known, so every later error can be echoed with it.
 */
#include "proto.h"

#include <float.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- names ---------------------------------------------------------------------------------------------- */

static const char *const code_names[] = {
    [PE_OK] = "ok",
    [PE_BAD_JSON] = "bad_json",
    [PE_BAD_UTF8] = "bad_utf8",
    [PE_LINE_TOO_LONG] = "line_too_long",
    [PE_BAD_REQUEST] = "bad_request",
    [PE_UNKNOWN_OP] = "unknown_op",
    [PE_NO_SESSION] = "no_session",
    [PE_AMBIGUOUS] = "ambiguous",
    [PE_BUSY] = "busy",
    [PE_CONTEXT_FULL] = "context_full",
    [PE_SHUTTING_DOWN] = "shutting_down",
    [PE_OVERLOADED] = "overloaded",
    [PE_FORBIDDEN] = "forbidden",
    [PE_INTERNAL] = "internal",
};

const char *proto_code_name(proto_code c) {
    if ((unsigned)c >= sizeof code_names / sizeof code_names[0]) return "internal";
    return code_names[c];
}

/* The parameters an op reads; everything else in the object is ignored. */
enum {
    P_SESSION = 1 << 0,      /* "session": required */
    P_NAME = 1 << 1,         /* "name": optional, non-empty */
    P_NAME_REQ = 1 << 2,     /* "name": required, non-empty */
    P_SYSTEM = 1 << 3,       /* "system": optional string ("" = none) */
    P_SETTINGS = 1 << 4,     /* "settings": optional object, all eight fields */
    P_TEXT = 1 << 5,         /* "text": required, non-empty */
    P_SAMPLING = 1 << 6,     /* "sampling": optional object, the six sampler fields */
    P_MAX_TOKENS = 1 << 7,   /* "max_tokens": optional integer */
    P_FORMAT = 1 << 8,       /* "format": required, "json" | "markdown" */
    P_MESSAGE = 1 << 9,      /* "message": optional message id */
    P_PROTOCOL = 1 << 10,    /* "protocol": optional integer */
};

/* In proto_op order, so that ops[op - 1] describes op. */
static const struct {
    const char *name;
    proto_op op;
    unsigned params;
} ops[PROTO_OP_COUNT] = {
    {"hello", OP_HELLO, P_PROTOCOL},
    {"model.info", OP_MODEL_INFO, 0},
    {"daemon.stats", OP_DAEMON_STATS, 0},
    {"daemon.shutdown", OP_DAEMON_SHUTDOWN, 0},
    {"session.create", OP_SESSION_CREATE, P_NAME | P_SYSTEM | P_SETTINGS},
    {"session.list", OP_SESSION_LIST, 0},
    {"session.get", OP_SESSION_GET, P_SESSION},
    {"session.rename", OP_SESSION_RENAME, P_SESSION | P_NAME_REQ},
    {"session.delete", OP_SESSION_DELETE, P_SESSION},
    {"session.fork", OP_SESSION_FORK, P_SESSION | P_MESSAGE | P_NAME},
    {"session.history", OP_SESSION_HISTORY, P_SESSION},
    {"session.export", OP_SESSION_EXPORT, P_SESSION | P_FORMAT},
    {"session.set", OP_SESSION_SET, P_SESSION | P_SYSTEM | P_SETTINGS},
    {"chat.send", OP_CHAT_SEND, P_SESSION | P_TEXT | P_SAMPLING | P_MAX_TOKENS},
    {"chat.cancel", OP_CHAT_CANCEL, P_SESSION},
};

const char *proto_op_name(proto_op op) {
    if (op < OP_HELLO || op > OP_CHAT_CANCEL) return NULL;
    return ops[op - 1].name;
}

/* ---- UTF-8 ---------------------------------------------------------------------------------------------- */

/* Length (1..4) of the valid UTF-8 sequence at p (avail > 0 bytes), or 0.  The second byte's range is what rules
 * out overlongs (E0 80..9F, F0 80..8F), surrogates (ED A0..BF) and code points past U+10FFFF (F4 90..); C0, C1
 * and F5..FF never start a sequence. */
static size_t utf8_seq(const unsigned char *p, size_t avail) {
    unsigned c = p[0], lo = 0x80, hi = 0xBF;
    size_t n;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c == 0xE0) n = 3, lo = 0xA0;
    else if (c == 0xED) n = 3, hi = 0x9F;
    else if (c >= 0xE1 && c <= 0xEF) n = 3;
    else if (c == 0xF0) n = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) n = 4;
    else if (c == 0xF4) n = 4, hi = 0x8F;
    else return 0;
    if (avail < n || p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if ((p[i] & 0xC0) != 0x80) return 0;
    return n;
}

/* Offset of the first byte that does not start a valid sequence, or n when s[0..n) is all valid. */
static size_t utf8_bad_at(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        /* Requests are mostly ASCII: skip eight bytes at a time while no high bit is set. */
        if (n - i >= 8) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (!(w & 0x8080808080808080ull)) {
                i += 8;
                continue;
            }
        }
        size_t k = utf8_seq(p + i, n - i);
        if (!k) return i;
        i += k;
    }
    return n;
}

int proto_utf8_valid(const char *s, size_t n) { return utf8_bad_at(s, n) == n; }

/* ---- errors --------------------------------------------------------------------------------------------- */

/* Make s one clean line: control characters become spaces (a quoted op or a jansson message may carry a decoded
 * "\n"), and bytes that do not start a valid UTF-8 sequence are dropped (snprintf's "%.64s" may cut a character in
 * two; whatever followed it, such as a closing quote, stays). */
static void one_line(char *s) {
    size_t n = strlen(s), o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq((const unsigned char *)s + i, n - i);
        if (!k) {
            i++;
            continue;
        }
        if (k == 1 && ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)) s[i] = ' ';
        memmove(s + o, s + i, k);
        o += k;
        i += k;
    }
    s[o] = 0;
}

/* Write a message and return -1, so that a check reads `return fail(msg, msglen, ...)`. */
static int fail(char *msg, size_t msglen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *msg, size_t msglen, const char *fmt, ...) {
    if (msg && msglen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, msglen, fmt, ap);
        va_end(ap);
        one_line(msg);
    }
    return -1;
}

/* ---- parameters ----------------------------------------------------------------------------------------- */

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* A string parameter: *out NULL when absent and optional. */
static int get_string(const json_t *root, const char *key, int required, int nonempty, const char **out,
                      char *msg, size_t msglen) {
    const json_t *v = json_object_get(root, key);
    *out = NULL;
    if (!v) return required ? fail(msg, msglen, "%s: missing (a string)", key) : 0;
    if (!json_is_string(v)) return fail(msg, msglen, "%s: must be a string, not %s", key, type_name(v));
    if (nonempty && json_string_length(v) == 0) return fail(msg, msglen, "%s: must not be empty", key);
    *out = json_string_value(v);
    return 0;
}

/* An optional integer parameter in lo..hi (range: the same in words, for the message); *has tells whether it was
 * given. */
static int get_int(const json_t *root, const char *key, int64_t lo, int64_t hi, const char *range, int64_t *out,
                   int *has, char *msg, size_t msglen) {
    const json_t *v = json_object_get(root, key);
    *has = 0;
    if (!v) return 0;
    if (!json_is_integer(v)) return fail(msg, msglen, "%s: must be %s, not %s", key, range, type_name(v));
    if (json_integer_value(v) < lo || json_integer_value(v) > hi)
        return fail(msg, msglen, "%s: must be %s", key, range);
    *out = json_integer_value(v);
    *has = 1;
    return 0;
}

/* "session": an integer id (ids start at 1, so 0 and negatives can only be mistakes) or an exact name. */
static int get_session(const json_t *root, proto_request *req, char *msg, size_t msglen) {
    const json_t *v = json_object_get(root, "session");
    if (!v) return fail(msg, msglen, "session: missing (an integer id or a name)");
    if (json_is_integer(v)) {
        if (json_integer_value(v) < 1) return fail(msg, msglen, "session: an id must be an integer >= 1");
        req->session_id = json_integer_value(v);
    } else if (json_is_string(v)) {
        if (json_string_length(v) == 0) return fail(msg, msglen, "session: a name must not be empty");
        req->session_name = json_string_value(v);
    } else {
        return fail(msg, msglen, "session: must be an integer id or a name, not %s", type_name(v));
    }
    req->has_session = 1;
    return 0;
}

/* The fields of a settings object, their types and ranges: integers in ilo..ihi (compared as integers: seed's
 * bound does not fit a double), reals in [lo, hi], or (lo, hi] with lo_open. */
static const struct {
    const char *key;
    unsigned bit;
    int integer;
    long long ilo, ihi;
    double lo, hi;
    int lo_open;
    const char *range; /* for the message */
} setting_fields[] = {
    {"temp", PS_TEMP, 0, 0, 0, 0, 10, 0, "a number in 0..10"},
    {"top_p", PS_TOP_P, 0, 0, 0, 0, 1, 1, "a number in (0, 1]"},
    {"top_k", PS_TOP_K, 1, 0, INT_MAX, 0, 0, 0, "an integer >= 0"},
    {"min_p", PS_MIN_P, 0, 0, 0, 0, 1, 0, "a number in 0..1"},
    {"seed", PS_SEED, 1, 0, INT64_MAX, 0, 0, 0, "an integer >= 0"},
    {"repeat_penalty", PS_REPEAT, 0, 0, 0, 0, DBL_MAX, 1, "a number > 0"},
    {"max_tokens", PS_MAX_TOKENS, 1, 1, PROTO_MAX_TOKENS, 0, 0, 0, "an integer in 1..65536"},
    {"dsa_k", PS_DSA_K, 1, -1, INT_MAX, 0, 0, 0, "an integer >= -1 (-1 dense, 0 default, > 0 top-k)"},
};
#define N_SETTING_FIELDS ((int)(sizeof setting_fields / sizeof setting_fields[0]))

static int setting_in_range(int f, const json_t *v) {
    if (setting_fields[f].integer)
        return json_is_integer(v) && json_integer_value(v) >= setting_fields[f].ilo &&
               json_integer_value(v) <= setting_fields[f].ihi;
    if (!json_is_number(v)) return 0;
    double d = json_number_value(v);
    if (setting_fields[f].lo_open ? d <= setting_fields[f].lo : d < setting_fields[f].lo) return 0;
    return d <= setting_fields[f].hi;
}

static void setting_store(proto_settings *s, unsigned bit, const json_t *v) {
    double d = json_number_value(v);
    json_int_t i = json_is_integer(v) ? json_integer_value(v) : 0;
    switch (bit) {
    case PS_TEMP: s->temp = d; break;
    case PS_TOP_P: s->top_p = d; break;
    case PS_TOP_K: s->top_k = (int)i; break;
    case PS_MIN_P: s->min_p = d; break;
    case PS_SEED: s->seed = (uint64_t)i; break;
    case PS_REPEAT: s->repeat_penalty = d; break;
    case PS_MAX_TOKENS: s->max_tokens = (int)i; break;
    case PS_DSA_K: s->dsa_k = (int)i; break;
    }
    s->has |= bit;
}

/* An optional settings object under key, reading the fields in mask (the others are ignored, as anywhere). */
static int get_settings(const json_t *root, const char *key, unsigned mask, proto_settings *s, char *msg,
                        size_t msglen) {
    const json_t *obj = json_object_get(root, key);
    if (!obj) return 0;
    if (!json_is_object(obj)) return fail(msg, msglen, "%s: must be an object, not %s", key, type_name(obj));
    for (int f = 0; f < N_SETTING_FIELDS; f++) {
        if (!(setting_fields[f].bit & mask)) continue;
        const json_t *v = json_object_get(obj, setting_fields[f].key);
        if (!v) continue;
        if (!setting_in_range(f, v)) {
            int wrong_type = setting_fields[f].integer ? !json_is_integer(v) : !json_is_number(v);
            return fail(msg, msglen, "%s.%s: must be %s%s%s", key, setting_fields[f].key, setting_fields[f].range,
                        wrong_type ? ", not " : "", wrong_type ? type_name(v) : "");
        }
        setting_store(s, setting_fields[f].bit, v);
    }
    return 0;
}

/* Every parameter of the op, in the documented order (so the first problem reported is the first one listed). */
static int get_params(const json_t *root, unsigned params, proto_request *req, char *msg, size_t msglen) {
    int64_t v;
    int has;
    if ((params & P_SESSION) && get_session(root, req, msg, msglen)) return -1;
    if ((params & P_PROTOCOL)) {
        if (get_int(root, "protocol", 1, INT_MAX, "an integer >= 1", &v, &has, msg, msglen)) return -1;
        req->protocol = has ? (int)v : 0;
    }
    if ((params & P_MESSAGE)) {
        if (get_int(root, "message", 1, INT64_MAX, "a message id (an integer >= 1)", &v, &has, msg, msglen)) return -1;
        req->has_message = has;
        req->message = has ? v : 0;
    }
    if ((params & (P_NAME | P_NAME_REQ)) && get_string(root, "name", !!(params & P_NAME_REQ), 1, &req->name, msg,
                                                        msglen))
        return -1;
    if ((params & P_TEXT) && get_string(root, "text", 1, 1, &req->text, msg, msglen)) return -1;
    if ((params & P_SYSTEM) && get_string(root, "system", 0, 0, &req->system, msg, msglen)) return -1;
    if ((params & P_FORMAT)) {
        if (get_string(root, "format", 1, 0, &req->format, msg, msglen)) return -1;
        if (strcmp(req->format, "json") && strcmp(req->format, "markdown"))
            return fail(msg, msglen, "format: must be \"json\" or \"markdown\"");
    }
    if ((params & P_SETTINGS) && get_settings(root, "settings", ~0u, &req->settings, msg, msglen)) return -1;
    if ((params & P_SAMPLING) &&
        get_settings(root, "sampling", PS_TEMP | PS_TOP_P | PS_TOP_K | PS_MIN_P | PS_SEED | PS_REPEAT,
                     &req->settings, msg, msglen))
        return -1;
    if ((params & P_MAX_TOKENS)) {
        if (get_int(root, "max_tokens", 1, PROTO_MAX_TOKENS, "an integer in 1..65536", &v, &has, msg, msglen))
            return -1;
        if (has) {
            req->settings.max_tokens = (int)v;
            req->settings.has |= PS_MAX_TOKENS;
        }
    }
    return 0;
}

/* ---- the parser ----------------------------------------------------------------------------------------- */

int proto_line_blank(const char *line, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r') return 0;
    return 1;
}

static json_t *load_object(const char *line, size_t len, proto_code *code, char *msg, size_t msglen) {
    json_error_t je;
    if (len > PROTO_MAX_LINE) {
        *code = PE_LINE_TOO_LONG;
        fail(msg, msglen, "line longer than %u bytes", PROTO_MAX_LINE);
        return NULL;
    }
    size_t bad = utf8_bad_at(line, len);
    if (bad < len) {
        *code = PE_BAD_UTF8;
        fail(msg, msglen, "invalid UTF-8 at byte %zu", bad);
        return NULL;
    }
    /* jansson would stop at a NUL with a puzzling "end of file expected"; say what it is. */
    const char *nul = memchr(line, 0, len);
    if (nul) {
        *code = PE_BAD_JSON;
        fail(msg, msglen, "NUL byte at byte %zu", (size_t)(nul - line));
        return NULL;
    }
    /* DECODE_ANY so that a scalar parses and gets the clearer "not an object" below; duplicate keys would make
     * the request mean whatever the last one says, which is never what a sender of two meant. */
    json_t *root = json_loadb(line, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        *code = PE_BAD_JSON;
        fail(msg, msglen, "invalid JSON at byte %d: %s", je.position, je.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        *code = PE_BAD_JSON;
        fail(msg, msglen, "a request must be a JSON object, not %s", type_name(root));
        json_decref(root);
        return NULL;
    }
    return root;
}

int proto_parse(const char *line, size_t len, proto_request *req, proto_code *code, char *msg, size_t msglen,
                json_t **id_out) {
    memset(req, 0, sizeof *req);
    if (id_out) *id_out = NULL;
    if (msg && msglen) msg[0] = 0;
    *code = PE_OK;

    json_t *root = load_object(line, len, code, msg, msglen);
    if (!root) return -1;
    req->root = root;
    req->id = json_object_get(root, "id");

    const json_t *op = json_object_get(root, "op");
    if (!op) {
        *code = PE_BAD_REQUEST;
        fail(msg, msglen, "op: missing (a string such as \"hello\")");
        goto fail;
    }
    if (!json_is_string(op)) {
        *code = PE_BAD_REQUEST;
        fail(msg, msglen, "op: must be a string, not %s", type_name(op));
        goto fail;
    }
    int found = -1;
    for (int i = 0; i < PROTO_OP_COUNT; i++)
        if (json_string_length(op) == strlen(ops[i].name) && !strcmp(json_string_value(op), ops[i].name)) found = i;
    if (found < 0) {
        *code = PE_UNKNOWN_OP;
        fail(msg, msglen, "unknown op \"%.64s\"", json_string_value(op));
        goto fail;
    }
    req->op = ops[found].op;
    if (get_params(root, ops[found].params, req, msg, msglen)) {
        *code = PE_BAD_REQUEST;
        goto fail;
    }
    return 0;

fail:
    if (id_out && req->id) *id_out = json_incref(req->id);
    json_decref(root);
    memset(req, 0, sizeof *req);
    return -1;
}

void proto_request_free(proto_request *req) {
    if (!req) return;
    json_decref(req->root);
    memset(req, 0, sizeof *req);
}

/* ---- replies -------------------------------------------------------------------------------------------- */

/* The growing buffer a reply line is written into, always with a spare byte for the terminating NUL. */
typedef struct {
    char *p;
    size_t n, cap;
} dumpbuf;

static int dump_cb(const char *s, size_t n, void *data) {
    dumpbuf *b = data;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->n + n + 1 > cap) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

/* Is k one of the envelope's own keys, which fields must not replace? */
static int reserved_key(const char *k) {
    return !strcmp(k, "id") || !strcmp(k, "ok") || !strcmp(k, "event") || !strcmp(k, "error");
}

/* {"id":id, key:val, ...fields} as one line.  val and fields are stolen (fields may be NULL).
 * The id is written on its own with every digit a real needs to round-trip, since the client matches replies by
 * it; the rest is written with 15 significant digits, so that a temperature of 0.7 reads 0.7, not
 * 0.69999999999999996. */
static char *envelope(const json_t *id, const char *key, json_t *val, json_t *fields) {
    json_t *o = json_object();
    char *line = NULL;
    dumpbuf b = {0};
    if (!o || !val || json_object_set(o, key, val)) goto done;
    if (json_is_object(fields)) {
        const char *k;
        json_t *v;
        json_object_foreach(fields, k, v) {
            if (!reserved_key(k) && json_object_set(o, k, v)) goto done;
        }
    }
    if (dump_cb("{", 1, &b)) goto done;
    if (id && (dump_cb("\"id\":", 5, &b) || json_dump_callback(id, dump_cb, &b, JSON_COMPACT | JSON_ENCODE_ANY) ||
               dump_cb(",", 1, &b)))
        goto done;
    /* JSON_EMBED: the members without their braces, which we wrote ourselves */
    if (json_dump_callback(o, dump_cb, &b, JSON_COMPACT | JSON_EMBED | JSON_REAL_PRECISION(15)) ||
        dump_cb("}\n", 2, &b))
        goto done;
    b.p[b.n] = 0; /* dump_cb keeps a spare byte */
    line = b.p;
    b.p = NULL;
done:
    free(b.p);
    json_decref(o);
    json_decref(val);
    json_decref(fields);
    return line;
}

/* A copy of any bytes as one line of valid UTF-8: control characters become spaces, bytes that do not start a
 * valid sequence become '?'.  The daemon passes engine and store messages through here, and those may quote
 * file names or model strings. */
static char *clean_copy(const char *s) {
    size_t n = strlen(s);
    char *out = malloc(n + 1);
    if (!out) return NULL;
    size_t i = 0, o = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t k = utf8_seq((const unsigned char *)s + i, n - i);
        if (!k) {
            out[o++] = '?';
            i++;
        } else if (k == 1) {
            out[o++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
            i++;
        } else {
            memcpy(out + o, s + i, k);
            o += k;
            i += k;
        }
    }
    out[o] = 0;
    return out;
}

char *proto_error_line(const json_t *id, proto_code code, const char *msg) {
    char *m = clean_copy(msg ? msg : "");
    if (!m) return NULL;
    json_t *err = json_pack("{s:s, s:s}", "code", proto_code_name(code), "message", m);
    free(m);
    return envelope(id, "error", err, NULL);
}

char *proto_ok_line(const json_t *id, json_t *fields) { return envelope(id, "ok", json_true(), fields); }

char *proto_event_line(const json_t *id, const char *event, json_t *fields) {
    return envelope(id, "event", json_string(event ? event : ""), fields);
}
