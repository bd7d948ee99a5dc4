#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int tu_failures, tu_checks;

const char *tu_model_path(void) {
    static char buf[4096];
    const char *p = getenv("DSA_MODEL");
    if (p && *p) return p;
    const char *cache = getenv("XDG_CACHE_HOME");
    if (cache && *cache)
        snprintf(buf, sizeof buf, "%s/dsachat/models/SmolLM2-135M-Instruct.Q4_1.gguf", cache);
    else
        snprintf(buf, sizeof buf, "%s/.cache/dsachat/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                 getenv("HOME") ? getenv("HOME") : ".");
    if (access(buf, R_OK) != 0) {
        fprintf(stderr, "default model not found at %s: run scripts/fetch-model.sh first\n", buf);
        exit(1);
    }
    return buf;
}

const char *tu_fixture(const char *name) {
    static char buf[4096];
    const char *d = getenv("DSA_FIXTURES");
    snprintf(buf, sizeof buf, "%s/%s", d && *d ? d : "tests/fixtures", name);
    return buf;
}

json_t *tu_load_json(const char *name) {
    json_error_t e;
    json_t *j = json_load_file(tu_fixture(name), 0, &e);
    if (!j) {
        fprintf(stderr, "fixture %s: %s (line %d)\n", tu_fixture(name), e.text, e.line);
        exit(1);
    }
    return j;
}

int tu_finish(const char *name) {
    printf("%s: %d checks, %d failed\n", name, tu_checks, tu_failures);
    return tu_failures ? 1 : 0;
}
