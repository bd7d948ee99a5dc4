/*
 * GGUF reader: well-formed files of both versions parse with every value type readable; malformed and hostile
 * ones (every truncation, impossible counts and lengths, bad offsets, unknown types…) give a one-line error and
 * never a crash.  Files are built here byte by byte, so each case says exactly what is wrong with it.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "kernels.h"
#include "testutil.h"

typedef struct {
    uint8_t *p;
    size_t n, cap;
} wbuf;

static void put(wbuf *b, const void *s, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void u8(wbuf *b, uint8_t v) { put(b, &v, 1); }
static void u32(wbuf *b, uint32_t v) { put(b, &v, 4); }
static void u64(wbuf *b, uint64_t v) { put(b, &v, 8); }
static void str(wbuf *b, const char *s) {
    u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void key(wbuf *b, const char *k, uint32_t type) {
    str(b, k);
    u32(b, type);
}
static void pad(wbuf *b, size_t a) {
    while (b->n % a) u8(b, 0);
}

/* A small valid file: one key of every type, a string array, a nested array, two tensors (f32 and q4_1). */
static wbuf make_file(uint32_t version) {
    wbuf b = {0};
    put(&b, "GGUF", 4);
    u32(&b, version);
    u64(&b, 2);  /* tensors */
    u64(&b, 17); /* kvs */
    key(&b, "t.u8", GGUF_UINT8); u8(&b, 200);
    key(&b, "t.i8", GGUF_INT8); u8(&b, (uint8_t)-5);
    key(&b, "t.u16", GGUF_UINT16); { uint16_t v = 60000; put(&b, &v, 2); }
    key(&b, "t.i16", GGUF_INT16); { int16_t v = -300; put(&b, &v, 2); }
    key(&b, "t.u32", GGUF_UINT32); u32(&b, 4000000000u);
    key(&b, "t.i32", GGUF_INT32); { int32_t v = -70000; put(&b, &v, 4); }
    key(&b, "t.f32", GGUF_FLOAT32); { float v = 1.5f; put(&b, &v, 4); }
    key(&b, "t.bool", GGUF_BOOL); u8(&b, 1);
    key(&b, "t.str", GGUF_STRING); str(&b, "héllo");
    key(&b, "t.u64", GGUF_UINT64); u64(&b, 1ull << 40);
    key(&b, "t.i64", GGUF_INT64); u64(&b, (uint64_t)-12345);
    key(&b, "t.f64", GGUF_FLOAT64); { double v = -2.25; put(&b, &v, 8); }
    key(&b, "t.strs", GGUF_ARRAY); u32(&b, GGUF_STRING); u64(&b, 3); str(&b, "a"); str(&b, ""); str(&b, "ccc");
    key(&b, "t.ints", GGUF_ARRAY); u32(&b, GGUF_INT32); u64(&b, 2); u32(&b, 7); u32(&b, (uint32_t)-8);
    key(&b, "t.nest", GGUF_ARRAY); u32(&b, GGUF_ARRAY); u64(&b, 1); u32(&b, GGUF_UINT8); u64(&b, 2); u8(&b, 1); u8(&b, 2);
    key(&b, "t.empty", GGUF_STRING); str(&b, "");
    key(&b, "general.alignment", GGUF_UINT32); u32(&b, 64);
    /* tensors */
    str(&b, "a.weight"); u32(&b, 2); u64(&b, 4); u64(&b, 2); u32(&b, DSA_F32); u64(&b, 0);
    str(&b, "b.weight"); u32(&b, 1); u64(&b, 64); u32(&b, DSA_Q4_1); u64(&b, 64);
    pad(&b, 64);
    for (int i = 0; i < 8; i++) { float v = (float)i; put(&b, &v, 4); }
    pad(&b, 64);
    for (int i = 0; i < 40; i++) u8(&b, (uint8_t)i); /* 2 q4_1 blocks of 20 bytes */
    return b;
}

static int parses(const void *p, size_t n, char *err, size_t errlen) {
    gguf_file *f;
    int r = gguf_parse(p, n, &f, err, errlen);
    if (r == 0) gguf_close(f);
    return r == 0;
}

static void expect_error(const wbuf *b, const char *want, const char *what) {
    char err[512] = "";
    int ok = parses(b->p, b->n, err, sizeof err);
    CHECK(!ok, "%s: parsed but should not", what);
    CHECK(strstr(err, want) != NULL, "%s: error '%s' does not mention '%s'", what, err, want);
    CHECK(strchr(err, '\n') == NULL, "%s: error is not one line", what);
}

static void test_valid(uint32_t version) {
    wbuf b = make_file(version);
    gguf_file *f;
    char err[512];
    int r = gguf_parse(b.p, b.n, &f, err, sizeof err);
    CHECK(r == 0, "v%u: %s", version, err);
    if (r) return;
    CHECK(f->version == version, "version");
    CHECK(f->n_kv == 17 && f->n_tensors == 2, "counts");
    CHECK(f->alignment == 64, "alignment %llu", (unsigned long long)f->alignment);
    uint32_t u;
    int64_t i;
    float x;
    int bo;
    dsa_str s;
    CHECK(gguf_get_u32(f, "t.u8", &u) == 0 && u == 200, "u8");
    CHECK(gguf_get_i64(f, "t.i8", &i) == 0 && i == -5, "i8");
    CHECK(gguf_get_u32(f, "t.u16", &u) == 0 && u == 60000, "u16");
    CHECK(gguf_get_i64(f, "t.i16", &i) == 0 && i == -300, "i16");
    CHECK(gguf_get_u32(f, "t.u32", &u) == 0 && u == 4000000000u, "u32");
    CHECK(gguf_get_i64(f, "t.i32", &i) == 0 && i == -70000, "i32");
    CHECK(gguf_get_u32(f, "t.i32", &u) != 0, "negative value must not read as u32");
    CHECK(gguf_get_f32(f, "t.f32", &x) == 0 && x == 1.5f, "f32");
    CHECK(gguf_get_bool(f, "t.bool", &bo) == 0 && bo == 1, "bool");
    CHECK(gguf_get_str(f, "t.str", &s) == 0 && dsa_str_eq(s, "héllo"), "str");
    CHECK(gguf_get_str(f, "t.empty", &s) == 0 && s.len == 0, "empty str");
    CHECK(gguf_get_i64(f, "t.u64", &i) == 0 && i == (1ll << 40), "u64");
    CHECK(gguf_get_u32(f, "t.u64", &u) != 0, "u64 too big for u32");
    CHECK(gguf_get_i64(f, "t.i64", &i) == 0 && i == -12345, "i64");
    CHECK(gguf_get_f32(f, "t.f64", &x) == 0 && x == -2.25f, "f64");
    CHECK(gguf_get_str(f, "t.u8", &s) != 0, "type mismatch must fail");
    CHECK(gguf_get_u32(f, "missing", &u) != 0, "missing key");
    const gguf_kv *kv = gguf_find(f, "t.strs");
    CHECK(kv && kv->type == GGUF_ARRAY && kv->arr_type == GGUF_STRING && kv->arr_n == 3, "string array header");
    if (kv) {
        dsa_str v[3];
        CHECK(gguf_arr_strs(kv, v) == 0 && dsa_str_eq(v[0], "a") && v[1].len == 0 && dsa_str_eq(v[2], "ccc"),
              "string array values");
    }
    kv = gguf_find(f, "t.ints");
    CHECK(kv && gguf_arr_int(kv, 0) == 7 && gguf_arr_int(kv, 1) == -8, "int array values");
    kv = gguf_find(f, "t.nest");
    CHECK(kv && kv->arr_type == GGUF_ARRAY && kv->arr_n == 1, "nested array");
    const gguf_tensor *t = gguf_find_tensor(f, "a.weight");
    CHECK(t && t->ne[0] == 4 && t->ne[1] == 2 && t->type == DSA_F32 && t->nbytes == 32, "tensor a");
    if (t) {
        float v[8];
        memcpy(v, t->data, sizeof v);
        CHECK(v[0] == 0 && v[7] == 7, "tensor a data");
        CHECK(((uintptr_t)t->data - (uintptr_t)b.p) % 64 == 0, "tensor a aligned");
    }
    t = gguf_find_tensor(f, "b.weight");
    CHECK(t && t->ne[0] == 64 && t->nbytes == 40 && ((const uint8_t *)t->data)[39] == 39, "tensor b");
    CHECK(gguf_find_tensor(f, "nope") == NULL, "missing tensor");
    gguf_close(f);

    /* every strict prefix of the file is an error, never a crash */
    int bad = 0;
    for (size_t n = 0; n < b.n; n++) {
        char e[512] = "";
        uint8_t *copy = malloc(n ? n : 1); /* exact-size copy: ASan catches any over-read */
        memcpy(copy, b.p, n);
        if (parses(copy, n, e, sizeof e) || !e[0]) bad++;
        free(copy);
    }
    CHECK(bad == 0, "v%u: %d truncations parsed or gave no message", version, bad);
    free(b.p);
}

/* Patch a little-endian u32/u64 at the offset where `after` ends (first occurrence). */
static size_t find(const wbuf *b, const char *needle) {
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= b->n; i++)
        if (!memcmp(b->p + i, needle, n)) return i + n;
    abort();
}

static void test_malformed(void) {
    wbuf b;
#define CASE(setup, want)                                                                                   \
    do {                                                                                                    \
        b = make_file(3);                                                                                   \
        setup;                                                                                              \
        expect_error(&b, want, #setup);                                                                     \
        free(b.p);                                                                                          \
    } while (0)
    uint64_t big = UINT64_MAX / 2;
    uint32_t v32;
    CASE(memcpy(b.p, "GGUX", 4), "bad magic");
    CASE((v32 = 1, memcpy(b.p + 4, &v32, 4)), "version 1");
    CASE((v32 = 7, memcpy(b.p + 4, &v32, 4)), "unsupported GGUF version 7");
    CASE((v32 = 0x03000000, memcpy(b.p + 4, &v32, 4)), "big-endian");
    CASE(memcpy(b.p + 8, &big, 8), "tensor count");
    CASE(memcpy(b.p + 16, &big, 8), "metadata count");
    CASE(memcpy(b.p + 24, &big, 8), "exceeds");                                /* first key's length */
    CASE((v32 = 99, memcpy(b.p + find(&b, "t.u8"), &v32, 4)), "unknown type 99");
    CASE(b.p[find(&b, "t.bool") + 4] = 2, "bool value 2");
    CASE(memcpy(b.p + find(&b, "t.str") + 4, &big, 8), "exceeds");             /* string length */
    CASE(memcpy(b.p + find(&b, "t.strs") + 8, &big, 8), "array of");           /* array count */
    CASE((v32 = 77, memcpy(b.p + find(&b, "t.strs") + 4, &v32, 4)), "unknown array element type 77");
    CASE(memcpy(b.p + find(&b, "t.i8") - 4, "t.u8", 4), "duplicate metadata key 't.u8'");
    CASE((v32 = 48, memcpy(b.p + find(&b, "general.alignment") + 4, &v32, 4)), "power of two");
    CASE((v32 = 0, memcpy(b.p + find(&b, "a.weight"), &v32, 4)), "0 dimensions");
    CASE((v32 = 5, memcpy(b.p + find(&b, "a.weight"), &v32, 4)), "5 dimensions");
    CASE(memcpy(b.p + find(&b, "a.weight") + 4, &big, 8), "dimension 0");
    CASE((v32 = 10, memcpy(b.p + find(&b, "b.weight") + 12, &v32, 4)), "unsupported type 10");
    CASE((v32 = 31337, memcpy(b.p + find(&b, "b.weight") + 12, &v32, 4)), "unsupported type 31337");
    CASE((v32 = 63, memcpy(b.p + find(&b, "b.weight") + 4, &v32, 4)), "not a multiple");
    CASE((big = 65, memcpy(b.p + find(&b, "b.weight") + 16, &big, 8)), "not aligned");
    CASE((big = 1 << 20, memcpy(b.p + find(&b, "b.weight") + 16, &big, 8)), "past the end");
    CASE(memcpy(b.p + find(&b, "b.weight") - 8, "a", 1), "duplicate tensor name");
    CASE(b.n -= 1, "past the end");
    /* names from the file stay on one line in the message */
    CASE((memcpy(b.p + find(&b, "b.weight") - 8, "\n", 1), v32 = 31337,
          memcpy(b.p + find(&b, "\n.weight") + 12, &v32, 4)), "unsupported type");
#undef CASE

    /* arrays nested deeper than the reader allows */
    b = (wbuf){0};
    put(&b, "GGUF", 4); u32(&b, 3); u64(&b, 0); u64(&b, 1);
    key(&b, "deep", GGUF_ARRAY);
    for (int i = 0; i < 10; i++) { u32(&b, GGUF_ARRAY); u64(&b, 1); }
    u32(&b, GGUF_UINT8); u64(&b, 1); u8(&b, 0);
    expect_error(&b, "nested deeper", "deep nesting");
    free(b.p);

    /* a count that claims more strings than bytes left must fail before allocating or looping */
    b = (wbuf){0};
    put(&b, "GGUF", 4); u32(&b, 2); u64(&b, 0); u64(&b, 1);
    key(&b, "many", GGUF_ARRAY); u32(&b, GGUF_STRING); u64(&b, 1ull << 60);
    expect_error(&b, "array of", "huge string array");
    free(b.p);

    /* empty and tiny inputs */
    char err[256];
    CHECK(!parses("", 0, err, sizeof err), "empty buffer");
    CHECK(!parses("GGUF", 4, err, sizeof err), "magic only");
}

/* The real model: it parses, and a header cut anywhere is an error. */
static void test_real_model(void) {
    gguf_file *f;
    char err[512];
    int r = gguf_open(tu_model_path(), &f, err, sizeof err);
    CHECK(r == 0, "open real model: %s", err);
    if (r) return;
    CHECK(f->version == 3 && f->n_tensors == 272 && f->n_kv == 33, "real model counts v%u %llu %llu", f->version,
          (unsigned long long)f->n_tensors, (unsigned long long)f->n_kv);
    const gguf_kv *tok = gguf_find(f, "tokenizer.ggml.tokens");
    CHECK(tok && tok->arr_n == 49152, "vocab array");
    size_t hdr = f->data_offset;
    uint64_t x = 1;
    int bad = 0;
    for (int k = 0; k < 300; k++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        size_t n = (size_t)((x >> 20) % hdr);
        gguf_file *g;
        char e[512] = "";
        if (gguf_parse(f->base, n, &g, e, sizeof e) == 0) {
            gguf_close(g);
            bad++;
        } else if (!e[0]) {
            bad++;
        }
    }
    CHECK(bad == 0, "%d truncated headers of the real model parsed", bad);

    /* read into huge pages: the same bytes and the same parse, in read-only memory aligned to 2 MiB (or, where the
     * kernel has no transparent huge pages, the file's mapping as before) */
    gguf_file *h;
    r = gguf_open_ex(tu_model_path(), GGUF_OPEN_HUGE, &h, err, sizeof err);
    CHECK(r == 0, "open real model into huge pages: %s", err);
    if (r == 0) {
        int huge = gguf_huge_pages_available();
        CHECK(h->mapped && (h->map != NULL) == huge, "huge pages %s, but the file is %s",
              huge ? "available" : "absent", h->map ? "copied" : "mapped");
        if (huge) CHECK(((uintptr_t)h->base & (((uintptr_t)2 << 20) - 1)) == 0, "the copy is not 2 MiB aligned");
        CHECK(h->size == f->size && memcmp(h->base, f->base, f->size) == 0, "the copy's bytes differ from the file's");
        int same = h->n_tensors == f->n_tensors && h->n_kv == f->n_kv && h->data_offset == f->data_offset;
        for (uint64_t i = 0; same && i < f->n_tensors; i++)
            same = (const uint8_t *)h->tensors[i].data - h->base == (const uint8_t *)f->tensors[i].data - f->base &&
                   h->tensors[i].nbytes == f->tensors[i].nbytes;
        CHECK(same, "the copy parses differently from the mapping");
        gguf_close(h);
    }
    gguf_close(f);

    CHECK(gguf_open("/nonexistent/model.gguf", &f, err, sizeof err) != 0 && strstr(err, "No such file"),
          "missing file: %s", err);
    CHECK(gguf_open("/", &f, err, sizeof err) != 0 && strstr(err, "not a regular file"), "directory: %s", err);
}

int main(void) {
    test_valid(2);
    test_valid(3);
    test_malformed();
    test_real_model();
    return tu_finish("test_gguf");
}
