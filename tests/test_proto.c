/*
 * The protocol parser and reply builders (daemon/proto.c), against man/dsachat-protocol.7:
 *   - every op's happy path, with its parameters read back (and parameters of other ops ignored);
 *   - every error the parser can give: line_too_long (at the 1 MiB bound exactly), bad_utf8 (overlongs, surrogates,
 *     > U+10FFFF, truncated and stray bytes; the validator is also compared exhaustively over all 1-3 byte
 *     sequences with an independent decoder), bad_json (syntax, scalars, arrays, NUL, duplicate keys, huge
 *     integers), bad_request (each required field missing, each wrong type, each range bound on both sides),
 *     unknown_op; every message is one line of UTF-8 naming the field;
 *   - the id: echoed as given (integers, reals, strings, null, objects, arrays), absent when absent, and handed
 *     back on bad_request / unknown_op but not when the line could not be read;
 *   - the reply builders: each line parses back with jansson, ends with exactly one newline, keeps the envelope's
 *     keys first and its own, and makes any error message one valid UTF-8 line.
 */
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "testutil.h"

static char msg[512];

/* Parse a NUL-terminated line. */
static int parse(const char *line, proto_request *r, proto_code *code, json_t **id) {
    return proto_parse(line, strlen(line), r, code, msg, sizeof msg, id);
}

/* Is s one line of valid UTF-8 without control characters? */
static int one_line(const char *s) {
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) return 0;
    return proto_utf8_valid(s, strlen(s));
}

/* Expect success; the caller frees *r. */
static int ok_req(const char *line, proto_request *r, proto_op op) {
    proto_code code;
    json_t *id = (json_t *)1;
    int rc = proto_parse(line, strlen(line), r, &code, msg, sizeof msg, &id);
    CHECK(rc == 0, "%s: %s %s", line, proto_code_name(code), msg);
    CHECK(id == NULL, "%s: id_out set on success", line);
    if (rc) return -1;
    CHECK(r->op == op, "%s: op %d, want %d", line, r->op, op);
    return 0;
}

/* Expect error `want` whose message contains `needle` (NULL: any); returns the id handed back (or NULL). */
static json_t *err_req(const char *line, size_t len, proto_code want, const char *needle) {
    proto_request r;
    proto_code code = PE_OK;
    json_t *id = (json_t *)1;
    memset(msg, 'x', sizeof msg);
    int rc = proto_parse(line, len, &r, &code, msg, sizeof msg, &id);
    CHECK(rc == -1, "%.80s: parsed, want %s", line, proto_code_name(want));
    CHECK(code == want, "%.80s: %s (%s), want %s", line, proto_code_name(code), msg, proto_code_name(want));
    CHECK(memchr(msg, 0, sizeof msg) && one_line(msg) && msg[0], "%.80s: message not one line: %s", line, msg);
    if (needle) CHECK(strstr(msg, needle), "%.80s: message \"%s\" lacks \"%s\"", line, msg, needle);
    CHECK(r.root == NULL && r.id == NULL && r.op == 0, "%.80s: req not zeroed", line);
    if (id == (json_t *)1) {
        CHECK(0, "%.80s: id_out untouched", line);
        id = NULL;
    }
    return id;
}

/* err_req for a NUL-terminated line, dropping the id. */
static void err_line(const char *line, proto_code want, const char *needle) {
    json_decref(err_req(line, strlen(line), want, needle));
}

/* ---- names ---------------------------------------------------------------------------------------------- */

static void test_names(void) {
    static const char *const codes[] = {"ok", "bad_json", "bad_utf8", "line_too_long", "bad_request", "unknown_op",
                                        "no_session", "ambiguous", "busy", "context_full", "shutting_down",
                                        "overloaded", "forbidden", "internal"};
    for (int c = PE_OK; c <= PE_INTERNAL; c++)
        CHECK(!strcmp(proto_code_name((proto_code)c), codes[c]), "code %d: %s", c, proto_code_name((proto_code)c));
    CHECK(!strcmp(proto_code_name((proto_code)99), "internal"), "unknown code");

    static const char *const names[] = {"hello", "model.info", "daemon.stats", "daemon.shutdown", "session.create",
                                        "session.list", "session.get", "session.rename", "session.delete",
                                        "session.fork", "session.history", "session.export", "session.set",
                                        "chat.send", "chat.cancel"};
    CHECK(PROTO_OP_COUNT == 15, "op count");
    for (int op = OP_HELLO; op <= OP_CHAT_CANCEL; op++)
        CHECK(proto_op_name((proto_op)op) && !strcmp(proto_op_name((proto_op)op), names[op - 1]), "op %d: %s", op,
              proto_op_name((proto_op)op));
    CHECK(proto_op_name((proto_op)0) == NULL && proto_op_name((proto_op)16) == NULL, "unknown op names");
}

/* ---- happy paths ---------------------------------------------------------------------------------------- */

static void test_ops(void) {
    proto_request r;

    if (!ok_req("{\"op\":\"hello\"}", &r, OP_HELLO)) {
        CHECK(r.protocol == 0 && r.id == NULL && r.root, "hello bare");
        proto_request_free(&r);
        CHECK(r.root == NULL, "free zeroes");
    }
    if (!ok_req("{\"op\":\"hello\",\"id\":1,\"protocol\":1}", &r, OP_HELLO)) {
        CHECK(r.protocol == 1 && json_integer_value(r.id) == 1, "hello protocol");
        proto_request_free(&r);
    }
    if (!ok_req("{\"protocol\":7,\"op\":\"hello\"}", &r, OP_HELLO)) { /* a newer client: the daemon answers 1 */
        CHECK(r.protocol == 7, "hello newer");
        proto_request_free(&r);
    }
    const struct {
        const char *op;
        proto_op want;
    } bare[] = {{"model.info", OP_MODEL_INFO},
                {"daemon.stats", OP_DAEMON_STATS},
                {"daemon.shutdown", OP_DAEMON_SHUTDOWN},
                {"session.list", OP_SESSION_LIST},
                {"session.create", OP_SESSION_CREATE}};
    for (size_t i = 0; i < sizeof bare / sizeof bare[0]; i++) {
        char line[128];
        snprintf(line, sizeof line, "{\"op\":\"%s\"}", bare[i].op);
        if (!ok_req(line, &r, bare[i].want)) {
            CHECK(!r.has_session && !r.name && !r.text && !r.system && !r.format && !r.settings.has, "%s", line);
            proto_request_free(&r);
        }
    }

    if (!ok_req("{\"op\":\"session.create\",\"name\":\"Gr\xc3\xbc\xc3\x9f" "e\",\"system\":\"Be brief.\","
                "\"settings\":{\"temp\":0.7,\"top_p\":1,\"top_k\":40,\"min_p\":0,\"seed\":9007199254740993,"
                "\"repeat_penalty\":1.1,\"max_tokens\":65536,\"dsa_k\":-1}}",
                &r, OP_SESSION_CREATE)) {
        proto_settings *s = &r.settings;
        CHECK(r.name && !strcmp(r.name, "Gr\xc3\xbc\xc3\x9f" "e"), "create name");
        CHECK(r.system && !strcmp(r.system, "Be brief."), "create system");
        CHECK(s->has == (PS_TEMP | PS_TOP_P | PS_TOP_K | PS_MIN_P | PS_SEED | PS_REPEAT | PS_MAX_TOKENS | PS_DSA_K),
              "has %#x", s->has);
        CHECK(s->temp == 0.7 && s->top_p == 1.0 && s->top_k == 40 && s->min_p == 0.0 && s->repeat_penalty == 1.1,
              "reals");
        CHECK(s->seed == 9007199254740993ull && s->max_tokens == 65536 && s->dsa_k == -1, "ints");
        proto_request_free(&r);
    }
    /* the system prompt may be empty (no system prompt), settings may be empty and partial */
    if (!ok_req("{\"op\":\"session.create\",\"system\":\"\",\"settings\":{}}", &r, OP_SESSION_CREATE)) {
        CHECK(r.system && !r.system[0] && r.settings.has == 0, "empty system/settings");
        proto_request_free(&r);
    }
    if (!ok_req("{\"op\":\"session.set\",\"session\":3,\"settings\":{\"dsa_k\":0,\"seed\":0}}", &r, OP_SESSION_SET)) {
        CHECK(r.has_session && r.session_id == 3 && !r.session_name && !r.system, "set session");
        CHECK(r.settings.has == (PS_DSA_K | PS_SEED) && r.settings.dsa_k == 0 && r.settings.seed == 0, "set settings");
        proto_request_free(&r);
    }
    if (!ok_req("{\"op\":\"session.set\",\"session\":\"work\",\"system\":\"x\"}", &r, OP_SESSION_SET)) {
        CHECK(r.has_session && r.session_id == 0 && !strcmp(r.session_name, "work") && !strcmp(r.system, "x"), "set");
        proto_request_free(&r);
    }

    const struct {
        const char *op;
        proto_op want;
    } one[] = {{"session.get", OP_SESSION_GET},
               {"session.delete", OP_SESSION_DELETE},
               {"session.history", OP_SESSION_HISTORY},
               {"chat.cancel", OP_CHAT_CANCEL},
               {"session.fork", OP_SESSION_FORK}};
    for (size_t i = 0; i < sizeof one / sizeof one[0]; i++) {
        char line[160];
        snprintf(line, sizeof line, "{\"op\":\"%s\",\"session\":9223372036854775807,\"id\":\"a\"}", one[i].op);
        if (!ok_req(line, &r, one[i].want)) {
            CHECK(r.has_session && r.session_id == INT64_MAX && !r.session_name, "%s", line);
            CHECK(!r.has_message && !r.name, "%s", line);
            proto_request_free(&r);
        }
        snprintf(line, sizeof line, "{\"op\":\"%s\",\"session\":\"my chat \xe2\x82\xac\"}", one[i].op);
        if (!ok_req(line, &r, one[i].want)) {
            CHECK(r.has_session && r.session_name && !strcmp(r.session_name, "my chat \xe2\x82\xac"), "%s", line);
            proto_request_free(&r);
        }
    }
    if (!ok_req("{\"op\":\"session.rename\",\"session\":1,\"name\":\"n\"}", &r, OP_SESSION_RENAME)) {
        CHECK(r.session_id == 1 && !strcmp(r.name, "n"), "rename");
        proto_request_free(&r);
    }
    if (!ok_req("{\"op\":\"session.fork\",\"session\":2,\"message\":17,\"name\":\"branch\"}", &r, OP_SESSION_FORK)) {
        CHECK(r.session_id == 2 && r.has_message && r.message == 17 && !strcmp(r.name, "branch"), "fork");
        proto_request_free(&r);
    }
    if (!ok_req("{\"op\":\"session.export\",\"session\":2,\"format\":\"json\"}", &r, OP_SESSION_EXPORT)) {
        CHECK(!strcmp(r.format, "json"), "export json");
        proto_request_free(&r);
    }
    if (!ok_req("{\"op\":\"session.export\",\"session\":2,\"format\":\"markdown\"}", &r, OP_SESSION_EXPORT)) {
        CHECK(!strcmp(r.format, "markdown"), "export markdown");
        proto_request_free(&r);
    }
    if (!ok_req("{\"op\":\"chat.send\",\"session\":4,\"text\":\"Hi \\u00e9\\ud83d\\ude00\"}", &r, OP_CHAT_SEND)) {
        CHECK(r.session_id == 4 && !strcmp(r.text, "Hi \xc3\xa9\xf0\x9f\x98\x80") && r.settings.has == 0, "send");
        proto_request_free(&r);
    }
    /* sampling takes the six sampler fields only (max_tokens and dsa_k in it are ignored, as unknown fields are);
     * chat.send's own max_tokens counts */
    if (!ok_req("{\"op\":\"chat.send\",\"session\":4,\"text\":\"x\",\"max_tokens\":1,\"sampling\":{\"temp\":0,"
                "\"top_k\":0,\"seed\":5,\"top_p\":0.5,\"min_p\":1,\"repeat_penalty\":0.5,\"max_tokens\":9,\"dsa_k\":7,"
                "\"bogus\":[]}}",
                &r, OP_CHAT_SEND)) {
        proto_settings *s = &r.settings;
        CHECK(s->has == (PS_TEMP | PS_TOP_P | PS_TOP_K | PS_MIN_P | PS_SEED | PS_REPEAT | PS_MAX_TOKENS), "has %#x",
              s->has);
        CHECK(s->max_tokens == 1 && s->dsa_k == 0 && s->seed == 5 && s->temp == 0 && s->top_p == 0.5 &&
                  s->min_p == 1 && s->repeat_penalty == 0.5,
              "sampling values");
        proto_request_free(&r);
    }
    /* unknown and other ops' fields are ignored, whatever their type */
    if (!ok_req("{\"op\":\"session.list\",\"session\":[],\"text\":5,\"settings\":\"no\",\"x\":{\"y\":[1,2]}}", &r,
                OP_SESSION_LIST)) {
        CHECK(!r.has_session && !r.text && !r.settings.has, "ignored fields");
        proto_request_free(&r);
    }
    if (!ok_req("{\"op\":\"chat.send\",\"session\":1,\"text\":\"t\",\"settings\":{\"temp\":\"hot\"},\"format\":1}",
                &r, OP_CHAT_SEND)) {
        CHECK(!r.settings.has && !r.format, "chat.send ignores settings/format");
        proto_request_free(&r);
    }
    /* whitespace around the object, a trailing CR, an escaped op */
    if (!ok_req(" \t{ \"op\" : \"hel\\u006co\" }\t \r", &r, OP_HELLO)) proto_request_free(&r);
    /* a line without a terminating NUL: only len bytes are read */
    {
        const char buf[] = "{\"op\":\"hello\"}GARBAGE";
        proto_code code;
        CHECK(proto_parse(buf, 14, &r, &code, msg, sizeof msg, NULL) == 0, "len-bounded: %s", msg);
        proto_request_free(&r);
    }
    proto_request_free(NULL);
}

/* ---- the id --------------------------------------------------------------------------------------------- */

static void test_ids(void) {
    const char *ids[] = {"1", "-5", "0", "1.5", "\"abc\"", "\"\"", "null", "true", "{\"a\":[1,{\"b\":null}]}", "[]",
                         "\"\xe2\x82\xac\"", "9223372036854775807", "-9223372036854775808",
                         /* reals come back exactly, with all their digits */
                         "0.30000000000000004", "1.059223372036854775807", "-1e-300", "[0.1,{\"x\":2.5e300}]"};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        char line[256];
        json_error_t je;
        json_t *want = json_loads(ids[i], JSON_DECODE_ANY, &je);
        CHECK(want, "%s: %s", ids[i], je.text);

        proto_request r;
        snprintf(line, sizeof line, "{\"id\":%s,\"op\":\"session.list\"}", ids[i]);
        if (!ok_req(line, &r, OP_SESSION_LIST)) {
            CHECK(r.id && json_equal(r.id, want), "%s: id", line);
            char *reply = proto_ok_line(r.id, NULL);
            json_t *back = reply ? json_loads(reply, 0, &je) : NULL;
            CHECK(back && json_equal(json_object_get(back, "id"), want), "%s: echo %s", line, reply);
            json_decref(back);
            free(reply);
            proto_request_free(&r);
        }
        /* after an error the id still comes back: unknown_op, bad_request */
        snprintf(line, sizeof line, "{\"op\":\"nope\",\"id\":%s}", ids[i]);
        json_t *id = err_req(line, strlen(line), PE_UNKNOWN_OP, "nope");
        CHECK(id && json_equal(id, want), "%s: id on unknown_op", line);
        json_decref(id);
        snprintf(line, sizeof line, "{\"op\":\"session.get\",\"id\":%s}", ids[i]);
        id = err_req(line, strlen(line), PE_BAD_REQUEST, "session");
        CHECK(id && json_equal(id, want), "%s: id on bad_request", line);
        json_decref(id);
        json_decref(want);
    }
    /* no id: none handed back; an unreadable line: none either, even if an "id" is visible in it */
    CHECK(err_req("{\"op\":\"nope\"}", 13, PE_UNKNOWN_OP, NULL) == NULL, "no id");
    CHECK(err_req("{\"id\":1,\"op\":\"hello\"", 20, PE_BAD_JSON, NULL) == NULL, "bad_json id");
    CHECK(err_req("{\"id\":1,\"op\":\"\xff\"}", 17, PE_BAD_UTF8, NULL) == NULL, "bad_utf8 id");
    /* id_out may be NULL */
    proto_request r;
    proto_code code;
    CHECK(proto_parse("{\"id\":1}", 8, &r, &code, NULL, 0, NULL) == -1 && code == PE_BAD_REQUEST, "NULL id_out/msg");
}

/* ---- errors --------------------------------------------------------------------------------------------- */

static void test_bad_json(void) {
    const char *lines[] = {"",        "   ",       "{",          "}",         "{\"op\":\"hello\"",
                           "{\"op\"}", "{op:1}",    "{'op':1}",   "[1,2]",     "[]",
                           "\"hello\"", "42",       "null",       "true",      "{\"op\":\"hello\"} {}",
                           "{\"op\":\"hello\",}", "{\"op\":\"hello\"}x", "{\"a\":01}", "{\"a\":+1}", "{\"a\":.5}",
                           "{\"a\":NaN}", "{\"a\":1e999}", "{\"a\":99999999999999999999}", "{\"a\":\"\\x\"}",
                           "{\"a\":\"\\u00\"}", "{\"a\":\"\\ud800\"}", "{\"a\":\"\\udc00\\ud800\"}",
                           "{\"a\":\"\\u0000\"}", "{\"a\":\"tab\there\"}", "{\"op\":1,\"op\":2}",
                           "{\"op\":\"hello\",\"op\":\"hello\"}", "{\"a\":[1,2}", "\xef\xbb\xbf{\"op\":\"hello\"}"};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) err_line(lines[i], PE_BAD_JSON, NULL);
    err_line("[1]", PE_BAD_JSON, "object");
    err_line("{\"op\":\"a\",\"op\":\"b\"}", PE_BAD_JSON, "duplicate");
    /* a NUL byte inside the line */
    const char nul[] = "{\"op\":\"hello\"}\0";
    json_decref(err_req(nul, sizeof nul - 1, PE_BAD_JSON, "NUL"));
    const char nul2[] = "{\"op\":\"he\0llo\"}";
    json_decref(err_req(nul2, sizeof nul2 - 1, PE_BAD_JSON, "byte 9"));
    /* nesting deeper than jansson's limit is bad_json, not a crash */
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 16);
    memcpy(deep, "{\"a\":", 5);
    memset(deep + 5, '[', depth);
    memset(deep + 5 + depth, ']', depth);
    strcpy(deep + 5 + 2 * depth, "}");
    err_line(deep, PE_BAD_JSON, NULL);
    free(deep);
}

/* An independent reference: decode the sequence, then check minimality and range. */
static int ref_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i], cp, len;
        if (c < 0x80) { i++; continue; }
        else if ((c & 0xE0) == 0xC0) len = 2, cp = c & 0x1F;
        else if ((c & 0xF0) == 0xE0) len = 3, cp = c & 0x0F;
        else if ((c & 0xF8) == 0xF0) len = 4, cp = c & 0x07;
        else return 0;
        if (i + len > n) return 0;
        for (unsigned k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        static const unsigned min[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += len;
    }
    return 1;
}

/* 1 (and a note of the first few) when the validator and the reference disagree on b[0..n). */
static int disagree(const unsigned char *b, size_t n) {
    static int shown;
    if (proto_utf8_valid((const char *)b, n) == ref_valid(b, n)) return 0;
    if (shown++ < 5) {
        fprintf(stderr, "UTF-8 verdict differs on");
        for (size_t i = 0; i < n; i++) fprintf(stderr, " %02x", b[i]);
        fputc('\n', stderr);
    }
    return 1;
}

static void test_utf8(void) {
    /* exhaustive: every 1-, 2- and 3-byte string */
    unsigned char b[4];
    int bad = 0;
    for (unsigned x = 0; x < 256; x++) {
        b[0] = (unsigned char)x;
        bad += disagree(b, 1);
        for (unsigned y = 0; y < 256; y++) {
            b[1] = (unsigned char)y;
            bad += disagree(b, 2);
            for (unsigned z = 0; z < 256; z++) {
                b[2] = (unsigned char)z;
                bad += disagree(b, 3);
            }
        }
    }
    /* 4 bytes: every lead and second byte, with random tails (mostly continuation bytes) */
    uint64_t st = 42;
    for (unsigned x = 0xE0; x < 256; x++)
        for (unsigned y = 0; y < 256; y++)
            for (int t = 0; t < 8; t++) {
                uint64_t r = tu_splitmix(&st);
                b[0] = (unsigned char)x;
                b[1] = (unsigned char)y;
                b[2] = (unsigned char)(t < 6 ? 0x80 | (r & 0x3F) : r);
                b[3] = (unsigned char)(t < 6 ? 0x80 | ((r >> 8) & 0x3F) : r >> 8);
                bad += disagree(b, 4);
            }
    /* every code point, encoded, is valid unless it is a surrogate */
    for (unsigned cp = 0; cp <= 0x10FFFF; cp++) {
        unsigned char e[4];
        size_t n;
        if (cp < 0x80) {
            e[0] = (unsigned char)cp, n = 1;
        } else if (cp < 0x800) {
            e[0] = (unsigned char)(0xC0 | cp >> 6), n = 2;
        } else if (cp < 0x10000) {
            e[0] = (unsigned char)(0xE0 | cp >> 12), n = 3;
        } else {
            e[0] = (unsigned char)(0xF0 | cp >> 18), n = 4;
        }
        for (size_t k = 1; k < n; k++) e[k] = (unsigned char)(0x80 | ((cp >> (6 * (n - 1 - k))) & 0x3F));
        int want = !(cp >= 0xD800 && cp <= 0xDFFF);
        if (proto_utf8_valid((char *)e, n) != want && bad++ < 5) fprintf(stderr, "code point U+%04X\n", cp);
    }
    CHECK(bad == 0, "%d UTF-8 verdicts differ from the reference", bad);
    /* the ASCII fast path (8 bytes at a time) across long runs */
    char run[64];
    for (int pos = 0; pos < 40; pos++) {
        memset(run, 'a', sizeof run);
        run[pos] = (char)0x80;
        CHECK(!proto_utf8_valid(run, 40), "stray continuation at %d of 40", pos);
        CHECK(proto_utf8_valid(run, (size_t)pos), "prefix of %d", pos);
    }
    CHECK(proto_utf8_valid("", 0), "empty");

    /* and through the parser: before jansson, with the offset of the bad byte */
    const struct {
        const char *bytes;
        const char *what;
    } cases[] = {
        {"\xc0\xaf", "overlong 2-byte '/'"},        {"\xc1\xbf", "overlong 2-byte"},
        {"\xe0\x80\xaf", "overlong 3-byte"},        {"\xe0\x9f\xbf", "overlong 3-byte, top"},
        {"\xf0\x80\x80\xaf", "overlong 4-byte"},    {"\xf0\x8f\xbf\xbf", "overlong 4-byte, top"},
        {"\xed\xa0\x80", "surrogate D800"},         {"\xed\xbf\xbf", "surrogate DFFF"},
        {"\xed\xa0\xbd\xed\xb8\x80", "CESU pair"}, {"\xf4\x90\x80\x80", "U+110000"},
        {"\xf5\x80\x80\x80", "F5 lead"},            {"\xff", "FF"},
        {"\xfe", "FE"},                             {"\x80", "stray continuation"},
        {"\xbf", "stray continuation BF"},          {"\xc3", "truncated 2-byte"},
        {"\xe2\x82", "truncated 3-byte"},           {"\xf0\x9f\x98", "truncated 4-byte"},
        {"\xc3x", "2-byte, bad continuation"},      {"\xe2\x28\xa1", "3-byte, bad continuation"},
        {"\xf0\x9f\x28\x80", "4-byte, bad third"},  {"\xf8\x88\x80\x80\x80", "5-byte form"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char line[128];
        /* inside a string, where jansson would otherwise see it, and after the object (truncated at the end) */
        int n = snprintf(line, sizeof line, "{\"op\":\"chat.send\",\"session\":1,\"text\":\"%s\"}", cases[i].bytes);
        json_decref(err_req(line, (size_t)n, PE_BAD_UTF8, "byte 38"));
        CHECK(strstr(msg, "UTF-8"), "%s: %s", cases[i].what, msg);
        n = snprintf(line, sizeof line, "{\"op\":\"hello\"}%s", cases[i].bytes);
        json_decref(err_req(line, (size_t)n, PE_BAD_UTF8, "byte 14"));
    }
    /* the largest and the edge code points are fine */
    proto_request r;
    if (!ok_req("{\"op\":\"chat.send\",\"session\":1,\"text\":\"\xf4\x8f\xbf\xbf\xed\x9f\xbf\xee\x80\x80\xc2\x80\"}",
                &r, OP_CHAT_SEND))
        proto_request_free(&r);
}

static void test_line_too_long(void) {
    /* exactly PROTO_MAX_LINE bytes parses (padding is JSON whitespace); one more is line_too_long */
    size_t n = PROTO_MAX_LINE + 1;
    char *line = malloc(n + 1);
    const char *req = "{\"op\":\"hello\",\"id\":7}";
    memset(line, ' ', n);
    memcpy(line, req, strlen(req));
    line[n] = 0;
    proto_request r;
    proto_code code;
    json_t *id;
    CHECK(proto_parse(line, PROTO_MAX_LINE, &r, &code, msg, sizeof msg, &id) == 0, "1 MiB line: %s", msg);
    proto_request_free(&r);
    CHECK(err_req(line, n, PE_LINE_TOO_LONG, "1048576") == NULL, "too long: no id");
    /* the length is checked first: a too-long line is not even looked at */
    line[5] = (char)0xff;
    CHECK(err_req(line, n, PE_LINE_TOO_LONG, NULL) == NULL, "too long, bad UTF-8");
    CHECK(err_req(line, PROTO_MAX_LINE, PE_BAD_UTF8, "byte 5") == NULL, "bad UTF-8 within the limit");
    free(line);
}

static void test_bad_request(void) {
    /* op */
    err_line("{}", PE_BAD_REQUEST, "op: missing");
    err_line("{\"id\":1}", PE_BAD_REQUEST, "op: missing");
    err_line("{\"op\":1}", PE_BAD_REQUEST, "op: must be a string, not an integer");
    err_line("{\"op\":null}", PE_BAD_REQUEST, "op: must be a string, not null");
    err_line("{\"op\":[\"hello\"]}", PE_BAD_REQUEST, "op: must be a string");
    err_line("{\"op\":{}}", PE_BAD_REQUEST, "op: must be a string");

    /* "session" for every op that needs it: missing, each wrong type, an id out of range, an empty name */
    const char *sess_ops[] = {"session.get", "session.rename", "session.delete", "session.fork", "session.history",
                              "session.export", "session.set", "chat.send", "chat.cancel"};
    const struct {
        const char *val, *needle;
    } bad_sess[] = {{NULL, "session: missing"},
                    {"null", "session: must be an integer id or a name, not null"},
                    {"1.0", "not a real number"},
                    {"true", "not a boolean"},
                    {"[1]", "not an array"},
                    {"{\"id\":1}", "not an object"},
                    {"0", "session: an id must be an integer >= 1"},
                    {"-3", "session: an id must be an integer >= 1"},
                    {"\"\"", "session: a name must not be empty"}};
    for (size_t i = 0; i < sizeof sess_ops / sizeof sess_ops[0]; i++)
        for (size_t j = 0; j < sizeof bad_sess / sizeof bad_sess[0]; j++) {
            char line[256];
            /* the op's other required fields are valid, so that the session is what fails */
            if (bad_sess[j].val)
                snprintf(line, sizeof line,
                         "{\"op\":\"%s\",\"session\":%s,\"name\":\"n\",\"text\":\"t\",\"format\":\"json\"}",
                         sess_ops[i], bad_sess[j].val);
            else
                snprintf(line, sizeof line, "{\"op\":\"%s\",\"name\":\"n\",\"text\":\"t\",\"format\":\"json\"}",
                         sess_ops[i]);
            err_line(line, PE_BAD_REQUEST, bad_sess[j].needle);
        }

    /* required strings */
    err_line("{\"op\":\"session.rename\",\"session\":1}", PE_BAD_REQUEST, "name: missing");
    err_line("{\"op\":\"session.rename\",\"session\":1,\"name\":\"\"}", PE_BAD_REQUEST, "name: must not be empty");
    err_line("{\"op\":\"session.rename\",\"session\":1,\"name\":5}", PE_BAD_REQUEST, "name: must be a string");
    err_line("{\"op\":\"session.rename\",\"session\":1,\"name\":null}", PE_BAD_REQUEST, "name: must be a string");
    err_line("{\"op\":\"chat.send\",\"session\":1}", PE_BAD_REQUEST, "text: missing");
    err_line("{\"op\":\"chat.send\",\"session\":1,\"text\":\"\"}", PE_BAD_REQUEST, "text: must not be empty");
    err_line("{\"op\":\"chat.send\",\"session\":1,\"text\":[\"a\"]}", PE_BAD_REQUEST, "text: must be a string");
    err_line("{\"op\":\"chat.send\",\"session\":1,\"text\":null}", PE_BAD_REQUEST, "text: must be a string");
    err_line("{\"op\":\"session.export\",\"session\":1}", PE_BAD_REQUEST, "format: missing");
    err_line("{\"op\":\"session.export\",\"session\":1,\"format\":\"JSON\"}", PE_BAD_REQUEST, "format: must be");
    err_line("{\"op\":\"session.export\",\"session\":1,\"format\":\"\"}", PE_BAD_REQUEST, "format: must be");
    err_line("{\"op\":\"session.export\",\"session\":1,\"format\":\"html\"}", PE_BAD_REQUEST, "\"markdown\"");
    err_line("{\"op\":\"session.export\",\"session\":1,\"format\":1}", PE_BAD_REQUEST, "format: must be a string");
    /* optional strings and integers: present means well-typed */
    err_line("{\"op\":\"session.create\",\"name\":\"\"}", PE_BAD_REQUEST, "name: must not be empty");
    err_line("{\"op\":\"session.create\",\"name\":1}", PE_BAD_REQUEST, "name: must be a string");
    err_line("{\"op\":\"session.create\",\"system\":false}", PE_BAD_REQUEST, "system: must be a string");
    err_line("{\"op\":\"session.create\",\"system\":null}", PE_BAD_REQUEST, "system: must be a string, not null");
    err_line("{\"op\":\"session.set\",\"session\":1,\"system\":7}", PE_BAD_REQUEST, "system: must be a string");
    err_line("{\"op\":\"session.fork\",\"session\":1,\"name\":\"\"}", PE_BAD_REQUEST, "name: must not be empty");
    err_line("{\"op\":\"session.fork\",\"session\":1,\"message\":0}", PE_BAD_REQUEST, "message: must be");
    err_line("{\"op\":\"session.fork\",\"session\":1,\"message\":-1}", PE_BAD_REQUEST, "message: must be");
    err_line("{\"op\":\"session.fork\",\"session\":1,\"message\":\"3\"}", PE_BAD_REQUEST, "message: must be");
    err_line("{\"op\":\"session.fork\",\"session\":1,\"message\":3.0}", PE_BAD_REQUEST, "not a real number");
    err_line("{\"op\":\"hello\",\"protocol\":\"1\"}", PE_BAD_REQUEST, "protocol: must be an integer");
    err_line("{\"op\":\"hello\",\"protocol\":0}", PE_BAD_REQUEST, "protocol: must be an integer >= 1");
    err_line("{\"op\":\"hello\",\"protocol\":1.5}", PE_BAD_REQUEST, "protocol:");
    err_line("{\"op\":\"hello\",\"protocol\":4294967296}", PE_BAD_REQUEST, "protocol:");
    err_line("{\"op\":\"chat.send\",\"session\":1,\"text\":\"t\",\"max_tokens\":0}", PE_BAD_REQUEST,
             "max_tokens: must be an integer in 1..65536");
    err_line("{\"op\":\"chat.send\",\"session\":1,\"text\":\"t\",\"max_tokens\":65537}", PE_BAD_REQUEST,
             "max_tokens:");
    err_line("{\"op\":\"chat.send\",\"session\":1,\"text\":\"t\",\"max_tokens\":\"5\"}", PE_BAD_REQUEST,
             "max_tokens:");
    /* the first problem in the documented order is the one reported */
    err_line("{\"op\":\"chat.send\",\"text\":\"\"}", PE_BAD_REQUEST, "session: missing");
    err_line("{\"op\":\"chat.send\",\"session\":1,\"text\":\"\",\"max_tokens\":0}", PE_BAD_REQUEST, "text:");

    /* settings objects: each field's wrong types and both sides of each bound, in settings and in sampling */
    const struct {
        const char *field, *val;
        int ok;
    } fields[] = {
        {"temp", "0", 1},           {"temp", "10", 1},          {"temp", "10.0001", 0},  {"temp", "-0.1", 0},
        {"temp", "\"0.7\"", 0},     {"temp", "null", 0},        {"temp", "true", 0},     {"top_p", "1", 1},
        {"top_p", "1e-9", 1},       {"top_p", "0", 0},          {"top_p", "0.0", 0},     {"top_p", "1.01", 0},
        {"top_p", "[]", 0},         {"top_k", "0", 1},          {"top_k", "2147483647", 1},
        {"top_k", "2147483648", 0}, {"top_k", "-1", 0},         {"top_k", "40.0", 0},    {"top_k", "\"40\"", 0},
        {"min_p", "0", 1},          {"min_p", "1", 1},          {"min_p", "-0.01", 0},   {"min_p", "1.5", 0},
        {"min_p", "{}", 0},         {"seed", "0", 1},           {"seed", "9223372036854775807", 1},
        {"seed", "-1", 0},          {"seed", "1.0", 0},         {"seed", "\"1\"", 0},    {"repeat_penalty", "1", 1},
        {"repeat_penalty", "1e-300", 1}, {"repeat_penalty", "1e300", 1}, {"repeat_penalty", "0", 0},
        {"repeat_penalty", "-1", 0}, {"repeat_penalty", "false", 0},
    };
    const char *objs[][2] = {{"session.create", "settings"}, {"session.set", "settings"}, {"chat.send", "sampling"}};
    for (size_t o = 0; o < 3; o++)
        for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
            char line[256], needle[64];
            snprintf(line, sizeof line, "{\"op\":\"%s\",\"session\":1,\"text\":\"t\",\"%s\":{\"%s\":%s}}", objs[o][0],
                     objs[o][1], fields[i].field, fields[i].val);
            snprintf(needle, sizeof needle, "%s.%s: must be", objs[o][1], fields[i].field);
            if (fields[i].ok) {
                proto_request r;
                if (!ok_req(line, &r, o == 0 ? OP_SESSION_CREATE : o == 1 ? OP_SESSION_SET : OP_CHAT_SEND)) {
                    CHECK(r.settings.has != 0, "%s: nothing set", line);
                    proto_request_free(&r);
                }
            } else {
                err_line(line, PE_BAD_REQUEST, needle);
            }
        }
    /* max_tokens and dsa_k exist in settings (not in sampling) */
    const struct {
        const char *val;
        int ok;
    } mt[] = {{"1", 1}, {"65536", 1}, {"0", 0}, {"65537", 0}, {"1.0", 0}, {"\"9\"", 0}}, dk[] = {
        {"-1", 1}, {"0", 1}, {"2048", 1}, {"-2", 0}, {"2147483648", 0}, {"0.5", 0}, {"null", 0}};
    for (size_t i = 0; i < sizeof mt / sizeof mt[0]; i++) {
        char line[128];
        snprintf(line, sizeof line, "{\"op\":\"session.create\",\"settings\":{\"max_tokens\":%s}}", mt[i].val);
        if (mt[i].ok) {
            proto_request r;
            if (!ok_req(line, &r, OP_SESSION_CREATE)) {
                CHECK(r.settings.has == PS_MAX_TOKENS && r.settings.max_tokens == atoi(mt[i].val), "%s", line);
                proto_request_free(&r);
            }
        } else {
            err_line(line, PE_BAD_REQUEST, "settings.max_tokens: must be an integer in 1..65536");
        }
    }
    for (size_t i = 0; i < sizeof dk / sizeof dk[0]; i++) {
        char line[128];
        snprintf(line, sizeof line, "{\"op\":\"session.set\",\"session\":1,\"settings\":{\"dsa_k\":%s}}", dk[i].val);
        if (dk[i].ok) {
            proto_request r;
            if (!ok_req(line, &r, OP_SESSION_SET)) {
                CHECK(r.settings.has == PS_DSA_K && r.settings.dsa_k == atoi(dk[i].val), "%s", line);
                proto_request_free(&r);
            }
        } else {
            err_line(line, PE_BAD_REQUEST, "settings.dsa_k: must be an integer >= -1");
        }
    }
    err_line("{\"op\":\"session.create\",\"settings\":[]}", PE_BAD_REQUEST,
             "settings: must be an object, not an array");
    err_line("{\"op\":\"session.set\",\"session\":1,\"settings\":null}", PE_BAD_REQUEST, "settings: must be an object");
    err_line("{\"op\":\"chat.send\",\"session\":1,\"text\":\"t\",\"sampling\":1}", PE_BAD_REQUEST,
             "sampling: must be an object, not an integer");
    /* the wrong type is named */
    err_line("{\"op\":\"session.create\",\"settings\":{\"top_k\":1.5}}", PE_BAD_REQUEST, "not a real number");
    err_line("{\"op\":\"session.create\",\"settings\":{\"temp\":\"x\"}}", PE_BAD_REQUEST, "not a string");
}

static void test_unknown_op(void) {
    const char *ops[] = {"", "HELLO", "hello ", " hello", "chat", "chat.sendx", "session", "session.", "daemon.kill",
                         "model_info", "hello\\u0000x"};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        char line[128];
        snprintf(line, sizeof line, "{\"op\":\"%s\"}", ops[i]);
        /* "\u0000" is refused by jansson before the op is looked at */
        err_line(line, strstr(ops[i], "\\u0000") ? PE_BAD_JSON : PE_UNKNOWN_OP,
                 strstr(ops[i], "\\u0000") ? NULL : "unknown op");
    }
    /* the op is quoted in the message, as one line and cut short */
    err_line("{\"op\":\"bad\\nop\\u2028\"}", PE_UNKNOWN_OP, "unknown op \"bad op\xe2\x80\xa8\"");
    char line[400];
    snprintf(line, sizeof line, "{\"op\":\"%0300d\"}", 0);
    err_line(line, PE_UNKNOWN_OP, "unknown op");
    CHECK(strlen(msg) < 100, "long op not cut: %zu", strlen(msg));
    /* a multi-byte character straddling the cut is dropped whole; the closing quote stays */
    char op[200] = {0}, want[200] = "unknown op \"";
    for (int i = 0; i < 22; i++) strcat(op, "\xe2\x82\xac");
    memcpy(want + strlen(want), op, 63);
    strcat(want, "\"");
    snprintf(line, sizeof line, "{\"op\":\"%s\"}", op);
    err_line(line, PE_UNKNOWN_OP, "unknown op");
    CHECK(!strcmp(msg, want), "cut op: %s", msg);
    /* a tiny message buffer still gets a terminated, valid line */
    proto_request r;
    proto_code code;
    char small[13];
    CHECK(proto_parse(line, strlen(line), &r, &code, small, sizeof small, NULL) == -1 && code == PE_UNKNOWN_OP,
          "small buffer");
    CHECK(memchr(small, 0, sizeof small) && one_line(small), "small buffer message: %s", small);
    CHECK(!strcmp(small, "unknown op \""), "small buffer message: %s", small);
}

/* ---- blank lines ---------------------------------------------------------------------------------------- */

static void test_blank(void) {
    CHECK(proto_line_blank("", 0), "empty");
    CHECK(proto_line_blank(" \t\r", 3), "spaces");
    CHECK(!proto_line_blank(" x", 2), "x");
    CHECK(!proto_line_blank("\0", 1), "NUL");
    CHECK(!proto_line_blank("\n", 1), "newline is the framer's");
}

/* ---- reply builders ------------------------------------------------------------------------------------- */

/* Check that line is one newline-terminated JSON object; return it parsed (NULL on failure). */
static json_t *reply(char *line) {
    CHECK(line, "builder returned NULL");
    if (!line) return NULL;
    size_t n = strlen(line);
    CHECK(n >= 2 && line[n - 1] == '\n' && !memchr(line, '\n', n - 1), "not one line: %s", line);
    CHECK(proto_utf8_valid(line, n), "not UTF-8: %s", line);
    json_error_t je;
    json_t *o = json_loads(line, 0, &je);
    CHECK(json_is_object(o), "%s: %s", line, je.text);
    free(line);
    return o;
}

static void test_builders(void) {
    json_t *id = json_pack("{s:[i,s]}", "k", 1, "v");
    json_t *o;

    /* ok: id first, then ok, then the fields in order; a reserved key in fields is dropped */
    char *line = proto_ok_line(id, json_pack("{s:i,s:s,s:b,s:i,s:n}", "protocol", 1, "daemon", "dsachatd 0.1.0",
                                              "ok", 0, "id", 99, "x", "y"));
    const char *head =
        "{\"id\":{\"k\":[1,\"v\"]},\"ok\":true,\"protocol\":1,\"daemon\":\"dsachatd 0.1.0\",\"x\":null}\n";
    CHECK(line && !strcmp(line, head), "ok line: %s", line);
    o = reply(line);
    CHECK(json_equal(json_object_get(o, "id"), id) && json_is_true(json_object_get(o, "ok")) &&
              json_integer_value(json_object_get(o, "protocol")) == 1 && json_is_null(json_object_get(o, "x")),
          "ok fields");
    json_decref(o);

    /* no id: no "id" key; a null id: "id":null; no fields */
    line = proto_ok_line(NULL, NULL);
    CHECK(line && !strcmp(line, "{\"ok\":true}\n"), "bare ok: %s", line);
    free(line);
    json_t *null = json_null();
    line = proto_ok_line(null, NULL);
    CHECK(line && !strcmp(line, "{\"id\":null,\"ok\":true}\n"), "null id: %s", line);
    free(line);
    /* fields that are not an object are dropped (and still released) */
    line = proto_ok_line(NULL, json_pack("[i]", 1));
    CHECK(line && !strcmp(line, "{\"ok\":true}\n"), "array fields: %s", line);
    free(line);

    /* events */
    json_t *num = json_integer(12);
    line = proto_event_line(num, "token", json_pack("{s:s}", "text", "caf\xc3\xa9 \xf0\x9f\x98\x80\n\"q\""));
    CHECK(line && !strcmp(line, "{\"id\":12,\"event\":\"token\","
                                "\"text\":\"caf\xc3\xa9 \xf0\x9f\x98\x80\\n\\\"q\\\"\"}\n"),
          "token line: %s", line);
    o = reply(line);
    CHECK(!strcmp(json_string_value(json_object_get(o, "text")), "caf\xc3\xa9 \xf0\x9f\x98\x80\n\"q\""), "text back");
    json_decref(o);
    line = proto_event_line(num, "done",
                            json_pack("{s:i,s:s,s:{s:f,s:b,s:f},s:s}", "message", 8, "stop", "eos", "stats", "tok_s",
                                      123.456, "dsa", 1, "temp", 0.7, "event", "bogus"));
    CHECK(line && strstr(line, "\"tok_s\":123.456,") && strstr(line, "\"temp\":0.7}"), "reals short: %s", line);
    o = reply(line);
    CHECK(!strcmp(json_string_value(json_object_get(o, "event")), "done") &&
              json_integer_value(json_object_get(o, "id")) == 12 &&
              json_real_value(json_object_get(json_object_get(o, "stats"), "tok_s")) == 123.456,
          "done back");
    json_decref(o);
    line = proto_event_line(NULL, "start", NULL);
    CHECK(line && !strcmp(line, "{\"event\":\"start\"}\n"), "start: %s", line);
    free(line);

    /* errors: every code; a message with a newline, control bytes and invalid UTF-8 becomes one clean line */
    for (int c = PE_BAD_JSON; c <= PE_INTERNAL; c++) {
        o = reply(proto_error_line(id, (proto_code)c, "m"));
        json_t *e = json_object_get(o, "error");
        CHECK(json_equal(json_object_get(o, "id"), id) && !json_object_get(o, "ok"), "error envelope");
        CHECK(!strcmp(json_string_value(json_object_get(e, "code")), proto_code_name((proto_code)c)) &&
                  !strcmp(json_string_value(json_object_get(e, "message")), "m") && json_object_size(o) == 2,
              "error %d", c);
        json_decref(o);
    }
    line = proto_error_line(NULL, PE_INTERNAL, "disk\nfull\t\x01 \xff\xc3(caf\xc3\xa9)\xed\xa0\x80");
    CHECK(line && !strcmp(line, "{\"error\":{\"code\":\"internal\","
                                "\"message\":\"disk full   ?" "?(caf\xc3\xa9)?" "??\"}}\n"),
          "cleaned: %s", line);
    free(line);
    line = proto_error_line(NULL, PE_BUSY, NULL);
    CHECK(line && !strcmp(line, "{\"error\":{\"code\":\"busy\",\"message\":\"\"}}\n"), "NULL msg: %s", line);
    free(line);

    /* a parser error reply, end to end */
    proto_request r;
    proto_code code;
    json_t *rid;
    CHECK(parse("{\"op\":\"chat.send\",\"id\":\"c1\",\"session\":1}", &r, &code, &rid) == -1, "send without text");
    o = reply(proto_error_line(rid, code, msg));
    CHECK(!strcmp(json_string_value(json_object_get(o, "id")), "c1") &&
              !strcmp(json_string_value(json_object_get(json_object_get(o, "error"), "code")), "bad_request") &&
              strstr(json_string_value(json_object_get(json_object_get(o, "error"), "message")), "text"),
          "end to end");
    json_decref(o);
    json_decref(rid);

    json_decref(num);
    json_decref(null);
    json_decref(id);
}

int main(void) {
    test_names();
    test_ops();
    test_ids();
    test_bad_json();
    test_utf8();
    test_line_too_long();
    test_bad_request();
    test_unknown_op();
    test_blank();
    test_builders();
    return tu_finish("test_proto");
}
