/*
 * dsachatd protocol v1: the request parser and the reply builders (the contract is man/dsachat-protocol.7).
 *
 * One request is one line of UTF-8 JSON, an object with "op", an optional "id" and the op's parameters.  This
 * library turns such a line into a proto_request, checking everything that can be checked without the daemon's
 * state (JSON, UTF-8, the op, each parameter's presence, type and range), and builds the reply lines.  It knows
 * nothing about sockets, sessions or the engine, so the framing layer, the worker and the fuzzer can all use it.
 *
 * Strictness: parameters an op does not take are ignored, but a parameter it does take must have exactly the
 * documented type (an integer written as 2.0 is not an integer; null is not "absent", except for "id").  Object
 * keys must be unique.  Messages name the offending field ("settings.temp: must be a number in 0..10").
 */
#ifndef DSA_PROTO_H
#define DSA_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define PROTO_VERSION 1
#define PROTO_MAX_LINE (1u << 20)          /* bytes, newline excluded */
#define PROTO_MAX_TOKENS 65536             /* max_tokens: 1..PROTO_MAX_TOKENS */

typedef enum {
    OP_HELLO = 1, OP_MODEL_INFO, OP_DAEMON_STATS, OP_DAEMON_SHUTDOWN, OP_SESSION_CREATE, OP_SESSION_LIST,
    OP_SESSION_GET, OP_SESSION_RENAME, OP_SESSION_DELETE, OP_SESSION_FORK, OP_SESSION_HISTORY,
    OP_SESSION_EXPORT, OP_SESSION_SET, OP_CHAT_SEND, OP_CHAT_CANCEL
} proto_op;
#define PROTO_OP_COUNT 15

typedef enum {
    PE_OK = 0, PE_BAD_JSON, PE_BAD_UTF8, PE_LINE_TOO_LONG, PE_BAD_REQUEST, PE_UNKNOWN_OP, PE_NO_SESSION,
    PE_AMBIGUOUS, PE_BUSY, PE_CONTEXT_FULL, PE_SHUTTING_DOWN, PE_OVERLOADED, PE_FORBIDDEN, PE_INTERNAL
} proto_code;

/* "bad_json", "bad_utf8", ... exactly as on the wire; "ok" for PE_OK, "internal" for anything unknown. */
const char *proto_code_name(proto_code c);
/* "hello", "session.create", ...; NULL for anything unknown. */
const char *proto_op_name(proto_op op);

/* Which fields of proto_settings were given. */
enum { PS_TEMP = 1, PS_TOP_P = 2, PS_TOP_K = 4, PS_MIN_P = 8, PS_SEED = 16, PS_REPEAT = 32, PS_MAX_TOKENS = 64,
       PS_DSA_K = 128 };
typedef struct {
    unsigned has;                       /* PS_* bits of the fields present; the others are 0 */
    double temp, top_p, min_p, repeat_penalty;
    int top_k;
    uint64_t seed;
    int max_tokens;
    int dsa_k;                          /* -1 dense, 0 the sidecar's default, > 0 a top-k */
} proto_settings;

typedef struct {
    proto_op op;
    json_t *root;               /* the parsed object (owned) */
    json_t *id;                 /* borrowed from root, NULL when absent (a JSON null id is a json null, not NULL) */
    int has_session; int64_t session_id; const char *session_name; /* "session": integer id (>= 1) or a name */
    const char *name, *text, *system, *format;  /* NULL when absent; borrowed from root */
    int has_message; int64_t message;           /* session.fork's "message" (>= 1) */
    int protocol;               /* hello's, 0 when absent */
    proto_settings settings;    /* "settings" (session.create/set) or "sampling" (chat.send; PS_TEMP..PS_REPEAT)
                                   plus chat.send's "max_tokens" (PS_MAX_TOKENS) */
} proto_request;

/* Parse one line (no newline; a trailing '\r' is whitespace to JSON and so tolerated).  0: *req filled (free with
 * proto_request_free).  -1: *code and msg (one line, UTF-8, msglen bytes; msg may be NULL) tell why, *req is
 * zeroed, and *id_out (may be NULL) gets a new reference to the request's "id" when it could be read (else NULL).
 * Codes: PE_LINE_TOO_LONG, PE_BAD_UTF8, PE_BAD_JSON (also: a NUL byte, a non-object, duplicate keys, an integer
 * outside int64), PE_BAD_REQUEST, PE_UNKNOWN_OP. */
int proto_parse(const char *line, size_t len, proto_request *req, proto_code *code, char *msg, size_t msglen,
                json_t **id_out);
void proto_request_free(proto_request *req);

/* A line of only spaces, tabs and '\r': the framing layer ignores it instead of parsing it. */
int proto_line_blank(const char *line, size_t len);

/* Reply lines: malloc'd, newline-terminated, UTF-8, compact JSON, keys in the order shown; NULL only when out of
 * memory.  id NULL omits "id"; a JSON null id is echoed as null; the id is only read, and echoed exactly (reals
 * with all 17 digits).  Keys of fields that would clash with the envelope ("id", "ok", "event", "error") are
 * dropped.  Reals in fields are written with 15 significant digits. */
char *proto_error_line(const json_t *id, proto_code code, const char *msg); /* msg: any bytes, made one UTF-8 line */
char *proto_ok_line(const json_t *id, json_t *fields /* stolen; may be NULL */);  /* {"id":..,"ok":true,...fields} */
char *proto_event_line(const json_t *id, const char *event, json_t *fields /* stolen; may be NULL */);
                                                                            /* {"id":..,"event":..,...fields} */

/* Is s[0..n) valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF)? */
int proto_utf8_valid(const char *s, size_t n);

#endif
