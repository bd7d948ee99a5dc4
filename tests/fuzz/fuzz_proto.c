/*
 * libFuzzer target for the protocol parser (daemon/proto.c): any bytes go to proto_parse as one line.  On success,
 * touch every string the request lends out and round-trip its id through all three reply builders (the echo must
 * parse back equal); on failure, the message must be one terminated line of UTF-8, and any id handed back must
 * round-trip through an error line.  So a bound the parser forgot, a leak, or a reply that is not one valid JSON
 * line shows up here.
 *
 *   cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DDSA_FUZZ=ON -DDSA_CUDA=OFF
 *   cmake --build build-fuzz --target fuzz_proto
 *   build-fuzz/tests/fuzz_proto -runs=1000000 -max_len=4096 $(mktemp -d) tests/fuzz/corpus/proto
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* line must be one newline-terminated UTF-8 JSON object whose "id" equals id (absent when id is NULL). */
static void check_line(char *line, const json_t *id) {
    if (!line) abort();
    size_t n = strlen(line);
    if (n < 3 || line[n - 1] != '\n' || memchr(line, '\n', n - 1) || !proto_utf8_valid(line, n)) abort();
    json_error_t je;
    json_t *o = json_loadb(line, n, 0, &je);
    if (!json_is_object(o)) abort();
    const json_t *echo = json_object_get(o, "id");
    if (id ? !json_equal(echo, (json_t *)id) : echo != NULL) abort();
    json_decref(o);
    free(line);
}

static void touch(const char *s) {
    volatile size_t sink = s ? strlen(s) : 0;
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* a private copy, so reads past `size` hit ASan's redzone instead of the fuzzer's neighbouring bytes */
    char *copy = malloc(size ? size : 1);
    if (!copy) return 0;
    memcpy(copy, data, size);
    proto_request req;
    proto_code code;
    char msg[256];
    json_t *id = NULL;
    if (proto_parse(copy, size, &req, &code, msg, sizeof msg, &id) == 0) {
        if (code != PE_OK || id || !req.root || !proto_op_name(req.op)) abort();
        touch(req.session_name), touch(req.name), touch(req.text), touch(req.system), touch(req.format);
        if (req.has_session && !req.session_name && req.session_id < 1) abort();
        if ((req.settings.has & PS_MAX_TOKENS) && (req.settings.max_tokens < 1 || req.settings.max_tokens > 65536))
            abort();
        check_line(proto_ok_line(req.id, json_pack("{s:s}", "op", proto_op_name(req.op))), req.id);
        check_line(proto_event_line(req.id, "token", json_pack("{s:s?}", "text", req.text)), req.id);
        char *text = malloc(size + 1); /* the same bytes as an error message: any bytes must make a clean line */
        if (!text) abort();
        memcpy(text, data, size);
        text[size] = 0;
        check_line(proto_error_line(req.id, PE_BUSY, text), req.id);
        free(text);
        proto_request_free(&req);
    } else {
        if (code == PE_OK || req.root || !memchr(msg, 0, sizeof msg) || !msg[0]) abort();
        for (const char *p = msg; *p; p++)
            if ((unsigned char)*p < 0x20) abort(); /* one line */
        if (!proto_utf8_valid(msg, strlen(msg))) abort();
        if (id && code != PE_BAD_REQUEST && code != PE_UNKNOWN_OP) abort(); /* an id only once the JSON was read */
        check_line(proto_error_line(id, code, msg), id);
        json_decref(id);
    }
    free(copy);
    return 0;
}
