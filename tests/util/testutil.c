#include "testutil.h"

#include <math.h>
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

static int b64val(int ch) {
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+') return 62;
    if (ch == '/') return 63;
    return -1;
}

float *tu_b64_floats(const char *s, size_t *n) {
    size_t len = strlen(s), cap = len / 4 * 3 + 3, nb = 0;
    uint8_t *b = malloc(cap);
    if (!b) abort();
    uint32_t acc = 0;
    int bits = 0;
    for (; *s && *s != '='; s++) {
        int v = b64val((unsigned char)*s);
        if (v < 0 || nb >= cap) {
            free(b);
            return NULL;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            b[nb++] = (uint8_t)(acc >> bits);
        }
    }
    if (nb % 4) {
        free(b);
        return NULL;
    }
    *n = nb / 4;
    float *f = malloc((*n ? *n : 1) * sizeof *f);
    if (!f) abort();
    for (size_t i = 0; i < *n; i++) { /* little-endian on every host */
        uint32_t u = (uint32_t)b[4 * i] | (uint32_t)b[4 * i + 1] << 8 | (uint32_t)b[4 * i + 2] << 16 |
                     (uint32_t)b[4 * i + 3] << 24;
        memcpy(&f[i], &u, sizeof u);
    }
    free(b);
    return f;
}

int32_t *tu_json_ids(const json_t *arr, int *n) {
    *n = (int)json_array_size(arr);
    int32_t *ids = malloc((size_t)(*n ? *n : 1) * sizeof *ids);
    if (!ids) abort();
    for (int i = 0; i < *n; i++) ids[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    return ids;
}

int tu_argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

double tu_top_gap(const float *x, int n) {
    int a = tu_argmax(x, n);
    double second = -INFINITY;
    for (int i = 0; i < n; i++)
        if (i != a && x[i] > second) second = x[i];
    return (double)x[a] - second;
}

int tu_weight_types(enum dsa_type out[DSA_TYPE_COUNT]) {
    int n = 0;
    for (int t = 0; t < DSA_TYPE_COUNT; t++) {
        const dsa_type_traits *tr = dsa_traits_ref((enum dsa_type)t);
        if (tr && tr->is_weight) out[n++] = (enum dsa_type)t;
    }
    return n;
}

uint64_t tu_splitmix(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
