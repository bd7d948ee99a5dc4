/*
 * GGUF reader.  Layout (v2/v3, little-endian):
 *   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv | kv* | tensor_info* | pad to alignment | data
 *   kv          = string key | u32 type | value
 *   string      = u64 len | bytes
 *   array       = u32 elem_type | u64 n | n values
 *   tensor_info = string name | u32 n_dims | u64 ne[n_dims] | u32 type | u64 offset (relative to data)
 *
 * Parsing is a cursor over the buffer whose every read checks the bytes remaining first.  Counts taken from the
 * file are checked against what the remaining bytes could possibly hold before anything is allocated from them,
 * so a hostile header cannot ask for a huge allocation.
 */
#include "gguf.h"

#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../kernels/cpu/kernels.h"

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_ARRAY_DEPTH 4
#define GGUF_MAX_NAME 65535 /* keys and tensor names: generous, but bounded */

typedef struct {
    const uint8_t *p, *end;
    const uint8_t *base;
    char *err;
    size_t errlen;
} cursor;

__attribute__((format(printf, 2, 3))) static int fail(cursor *c, const char *fmt, ...) {
    if (c->err && c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        int n = snprintf(c->err, c->errlen, "malformed GGUF at byte %zu: ", (size_t)(c->p - c->base));
        if (n > 0 && (size_t)n < c->errlen) vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static size_t left(const cursor *c) { return (size_t)(c->end - c->p); }

static int rd(cursor *c, void *dst, size_t n, const char *what) {
    if (left(c) < n) return fail(c, "truncated while reading %s (need %zu bytes, %zu left)", what, n, left(c));
    memcpy(dst, c->p, n);
    c->p += n;
    return 0;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what) { return rd(c, v, 4, what); }
static int rd_u64(cursor *c, uint64_t *v, const char *what) { return rd(c, v, 8, what); }

static int rd_str(cursor *c, dsa_str *s, const char *what) {
    uint64_t n = 0;
    if (rd_u64(c, &n, what)) return -1;
    if (n > left(c)) return fail(c, "%s length %llu exceeds the %zu bytes left", what, (unsigned long long)n, left(c));
    s->ptr = (const char *)c->p;
    s->len = n;
    c->p += n;
    return 0;
}

static const char *const vtype_names[GGUF_VTYPE_COUNT] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array",
    "uint64", "int64", "float64"};

const char *gguf_vtype_name(uint32_t t) { return t < GGUF_VTYPE_COUNT ? vtype_names[t] : "invalid"; }

static size_t scalar_size(uint32_t t) {
    switch (t) {
    case GGUF_UINT8: case GGUF_INT8: case GGUF_BOOL: return 1;
    case GGUF_UINT16: case GGUF_INT16: return 2;
    case GGUF_UINT32: case GGUF_INT32: case GGUF_FLOAT32: return 4;
    case GGUF_UINT64: case GGUF_INT64: case GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

/* Skip over one value of type t, validating it.  depth bounds array nesting. */
static int skip_value(cursor *c, uint32_t t, int depth) {
    size_t sz = scalar_size(t);
    if (sz) {
        if (left(c) < sz) return fail(c, "truncated %s value", gguf_vtype_name(t));
        if (t == GGUF_BOOL && *c->p > 1) return fail(c, "bool value %u is not 0 or 1", *c->p);
        c->p += sz;
        return 0;
    }
    if (t == GGUF_STRING) {
        dsa_str s;
        return rd_str(c, &s, "string value");
    }
    if (t != GGUF_ARRAY) return fail(c, "unknown value type %u", t);
    if (depth >= GGUF_MAX_ARRAY_DEPTH) return fail(c, "arrays nested deeper than %d", GGUF_MAX_ARRAY_DEPTH);
    uint32_t et = 0;
    uint64_t n = 0;
    if (rd_u32(c, &et, "array type") || rd_u64(c, &n, "array length")) return -1;
    if (et >= GGUF_VTYPE_COUNT) return fail(c, "unknown array element type %u", et);
    size_t esz = scalar_size(et);
    if (esz) {
        if (n > left(c) / esz)
            return fail(c, "array of %llu %s exceeds the %zu bytes left", (unsigned long long)n,
                        gguf_vtype_name(et), left(c));
        if (et == GGUF_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (c->p[i] > 1) return fail(c, "bool array element %llu is not 0 or 1", (unsigned long long)i);
        c->p += n * esz;
        return 0;
    }
    /* strings and nested arrays take at least 8 bytes each: bound n before looping */
    if (n > left(c) / 8)
        return fail(c, "array of %llu %s exceeds the %zu bytes left", (unsigned long long)n, gguf_vtype_name(et),
                    left(c));
    for (uint64_t i = 0; i < n; i++)
        if (skip_value(c, et, depth + 1)) return -1;
    return 0;
}

int dsa_str_eq(dsa_str s, const char *c) {
    size_t n = strlen(c);
    return s.len == n && memcmp(s.ptr, c, n) == 0;
}

static int str_cmp(const void *a, const void *b) {
    const dsa_str *x = a, *y = b;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return memcmp(x->ptr, y->ptr, x->len);
}

/* Names must be unique.  Sorting a copy keeps this O(n log n) even for a hostile file with 10^6 entries. */
static int find_dup(cursor *c, const void *items, uint64_t n, size_t stride, size_t off, const char *what) {
    if (n < 2) return 0;
    dsa_str *v = malloc(n * sizeof *v);
    if (!v) return fail(c, "out of memory");
    for (uint64_t i = 0; i < n; i++) memcpy(&v[i], (const char *)items + i * stride + off, sizeof *v);
    qsort(v, n, sizeof *v, str_cmp);
    for (uint64_t i = 1; i < n; i++)
        if (str_cmp(&v[i - 1], &v[i]) == 0) {
            int r = fail(c, "duplicate %s '%.*s'", what, (int)(v[i].len > 200 ? 200 : v[i].len), v[i].ptr);
            free(v);
            return r;
        }
    free(v);
    return 0;
}

static int parse(gguf_file *f, cursor *c) {
    char magic[4];
    if (rd(c, magic, 4, "magic")) return -1;
    if (memcmp(magic, "GGUF", 4) != 0) return fail(c, "not a GGUF file (bad magic)");
    if (rd_u32(c, &f->version, "version")) return -1;
    if (f->version == 1) return fail(c, "GGUF version 1 is not supported (supported: 2, 3)");
    if (f->version != 2 && f->version != 3) {
        uint32_t sw = __builtin_bswap32(f->version);
        if (sw == 2 || sw == 3) return fail(c, "big-endian GGUF is not supported");
        return fail(c, "unsupported GGUF version %u (supported: 2, 3)", f->version);
    }
    if (rd_u64(c, &f->n_tensors, "tensor count") || rd_u64(c, &f->n_kv, "metadata count")) return -1;
    /* a kv is at least 8 (key len) + 4 (type) + 1 bytes; a tensor info at least 8 + 4 + 4 + 8 */
    if (f->n_kv > left(c) / 13)
        return fail(c, "metadata count %llu is impossible for a file of %zu bytes", (unsigned long long)f->n_kv,
                    f->size);
    if (f->n_tensors > left(c) / 24)
        return fail(c, "tensor count %llu is impossible for a file of %zu bytes", (unsigned long long)f->n_tensors,
                    f->size);

    f->kv = calloc(f->n_kv ? f->n_kv : 1, sizeof *f->kv);
    f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *f->tensors);
    if (!f->kv || !f->tensors) return fail(c, "out of memory");

    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        gguf_kv *kv = &f->kv[i];
        if (rd_str(c, &kv->key, "metadata key")) return -1;
        if (kv->key.len == 0 || kv->key.len > GGUF_MAX_NAME)
            return fail(c, "metadata key %llu has length %llu", (unsigned long long)i,
                        (unsigned long long)kv->key.len);
        if (rd_u32(c, &kv->type, "metadata type")) return -1;
        if (kv->type >= GGUF_VTYPE_COUNT)
            return fail(c, "metadata '%.*s' has unknown type %u", (int)kv->key.len, kv->key.ptr, kv->type);
        const uint8_t *start = c->p;
        if (kv->type == GGUF_ARRAY) {
            /* peek the header so callers get the element type and count without reparsing */
            cursor pk = *c;
            if (rd_u32(&pk, &kv->arr_type, "array type") || rd_u64(&pk, &kv->arr_n, "array length")) return -1;
            kv->data = pk.p;
        } else {
            kv->data = c->p;
        }
        if (skip_value(c, kv->type, 0)) return -1;
        kv->nbytes = (uint64_t)(c->p - start);
        if (dsa_str_eq(kv->key, "general.alignment")) {
            uint32_t a;
            if (kv->type != GGUF_UINT32) return fail(c, "general.alignment must be uint32");
            memcpy(&a, kv->data, 4);
            if (a == 0 || (a & (a - 1)) || a > (1u << 20))
                return fail(c, "general.alignment %u is not a power of two up to 1 MiB", a);
            f->alignment = a;
        }
    }

    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (rd_str(c, &t->name, "tensor name")) return -1;
        if (t->name.len == 0 || t->name.len > GGUF_MAX_NAME)
            return fail(c, "tensor %llu has a name of length %llu", (unsigned long long)i,
                        (unsigned long long)t->name.len);
        if (rd_u32(c, &t->n_dims, "tensor dims")) return -1;
        if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS)
            return fail(c, "tensor '%.*s' has %u dimensions (1..%d allowed)", (int)t->name.len, t->name.ptr,
                        t->n_dims, GGUF_MAX_DIMS);
        uint64_t nel = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            uint64_t ne = 0;
            if (rd_u64(c, &ne, "tensor shape")) return -1;
            if (ne == 0 || ne > ((uint64_t)1 << 40))
                return fail(c, "tensor '%.*s' dimension %u is %llu", (int)t->name.len, t->name.ptr, d,
                            (unsigned long long)ne);
            if (nel > UINT64_MAX / ne)
                return fail(c, "tensor '%.*s' element count overflows", (int)t->name.len, t->name.ptr);
            nel *= ne;
            t->ne[d] = (int64_t)ne;
        }
        if (rd_u32(c, &t->type, "tensor type") || rd_u64(c, &t->offset, "tensor offset")) return -1;
        const dsa_type_traits *tr = t->type < DSA_TYPE_COUNT ? dsa_traits_ref((enum dsa_type)t->type) : NULL;
        if (!tr || !tr->is_weight)
            return fail(c, "tensor '%.*s' has unsupported type %u (%s) (supported: f32, f16, bf16, q8_0, q4_0, "
                           "q4_1, q5_0, q5_1, q4_k, q5_k, q6_k)",
                        (int)t->name.len, t->name.ptr, t->type, dsa_type_name((int)t->type));
        if (t->ne[0] % tr->blck)
            return fail(c, "tensor '%.*s' row of %lld is not a multiple of the %s block size %d", (int)t->name.len,
                        t->name.ptr, (long long)t->ne[0], tr->name, tr->blck);
        uint64_t nblocks = nel / (uint64_t)tr->blck;
        if (nblocks > UINT64_MAX / tr->type_size)
            return fail(c, "tensor '%.*s' byte size overflows", (int)t->name.len, t->name.ptr);
        t->nbytes = nblocks * tr->type_size;
        if (t->offset % f->alignment)
            return fail(c, "tensor '%.*s' offset %llu is not aligned to %llu", (int)t->name.len, t->name.ptr,
                        (unsigned long long)t->offset, (unsigned long long)f->alignment);
    }

    if (find_dup(c, f->kv, f->n_kv, sizeof *f->kv, offsetof(gguf_kv, key), "metadata key") ||
        find_dup(c, f->tensors, f->n_tensors, sizeof *f->tensors, offsetof(gguf_tensor, name), "tensor name"))
        return -1;

    uint64_t hdr = (uint64_t)(c->p - c->base);
    f->data_offset = (hdr + f->alignment - 1) / f->alignment * f->alignment;
    if (f->data_offset > f->size && f->n_tensors)
        return fail(c, "data section starts at %llu, past the end of the file (%zu bytes)",
                    (unsigned long long)f->data_offset, f->size);
    uint64_t avail = f->size > f->data_offset ? f->size - f->data_offset : 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (t->offset > avail || t->nbytes > avail - t->offset)
            return fail(c, "tensor '%.*s' (%llu bytes at data offset %llu) extends past the end of the file",
                        (int)t->name.len, t->name.ptr, (unsigned long long)t->nbytes, (unsigned long long)t->offset);
        t->data = c->base + f->data_offset + t->offset;
    }
    return 0;
}

int gguf_parse(const void *buf, size_t size, gguf_file **out, char *err, size_t errlen) {
    *out = NULL;
    gguf_file *f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    f->base = buf;
    f->size = size;
    cursor c = {buf, (const uint8_t *)buf + size, buf, err, errlen};
    if (parse(f, &c)) {
        /* names in the message come from the file: keep the error on one printable line */
        for (char *q = err; errlen && *q; q++)
            if ((unsigned char)*q < 0x20 || *q == 0x7f) *q = '?';
        gguf_close(f);
        return -1;
    }
    *out = f;
    return 0;
}

int gguf_huge_pages_available(void) {
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f) return 0;
    char line[128] = "";
    int ok = fgets(line, sizeof line, f) && (strstr(line, "[always]") || strstr(line, "[madvise]"));
    fclose(f);
    return ok;
}

#define HUGE_PAGE ((size_t)2 << 20)

/* The file's size bytes read into anonymous memory aligned to a huge page and advised to use them, then made
 * read-only.  NULL (errno set) when that fails; the caller maps the file instead. */
static const uint8_t *read_huge(int fd, size_t size, void **map, size_t *map_len) {
    size_t body = (size + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE, len = body + HUGE_PAGE;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    uint8_t *a = (uint8_t *)(((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
    madvise(a, body, MADV_HUGEPAGE);
    for (size_t off = 0; off < size;) {
        size_t want = size - off < ((size_t)64 << 20) ? size - off : ((size_t)64 << 20);
        ssize_t got = pread(fd, a + off, want, (off_t)off);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            int e = got < 0 ? errno : EIO; /* 0: the file shrank under us */
            munmap(p, len);
            errno = e;
            return NULL;
        }
        off += (size_t)got;
    }
    mprotect(a, body, PROT_READ);
    *map = p;
    *map_len = len;
    return a;
}

int gguf_open_ex(const char *path, int flags, gguf_file **out, char *err, size_t errlen) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    if (st.st_size < 8) {
        snprintf(err, errlen, "%s: not a GGUF file (only %lld bytes)", path, (long long)st.st_size);
        close(fd);
        return -1;
    }
    void *map = NULL;
    size_t map_len = 0;
    const uint8_t *m = NULL;
    if ((flags & GGUF_OPEN_HUGE) && gguf_huge_pages_available()) m = read_huge(fd, (size_t)st.st_size, &map, &map_len);
    if (!m) {
        void *fm = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (fm == MAP_FAILED) {
            snprintf(err, errlen, "%s: mmap: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
        m = fm;
    }
    close(fd);
    char e2[512];
    if (gguf_parse(m, (size_t)st.st_size, out, e2, sizeof e2)) {
        snprintf(err, errlen, "%s: %s", path, e2);
        if (map) munmap(map, map_len);
        else munmap((void *)m, (size_t)st.st_size);
        return -1;
    }
    (*out)->mapped = 1;
    (*out)->map = map;
    (*out)->map_len = map_len;
    return 0;
}

int gguf_open(const char *path, gguf_file **out, char *err, size_t errlen) {
    return gguf_open_ex(path, 0, out, err, errlen);
}

void gguf_close(gguf_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_len);
    else if (f->mapped) munmap((void *)f->base, f->size);
    free(f->kv);
    free(f->tensors);
    free(f);
}

const gguf_kv *gguf_find(const gguf_file *f, const char *key) {
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (dsa_str_eq(f->kv[i].key, key)) return &f->kv[i];
    return NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (dsa_str_eq(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

/* Scalar of integer type t at p, as int64 (uint64 values above INT64_MAX are reported as not fitting). */
static int int_at(uint32_t t, const uint8_t *p, int64_t *v) {
    switch (t) {
    case GGUF_UINT8: *v = *p; return 0;
    case GGUF_INT8: *v = (int8_t)*p; return 0;
    case GGUF_BOOL: *v = *p; return 0;
    case GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); *v = x; return 0; }
    case GGUF_INT16: { int16_t x; memcpy(&x, p, 2); *v = x; return 0; }
    case GGUF_UINT32: { uint32_t x; memcpy(&x, p, 4); *v = x; return 0; }
    case GGUF_INT32: { int32_t x; memcpy(&x, p, 4); *v = x; return 0; }
    case GGUF_INT64: { int64_t x; memcpy(&x, p, 8); *v = x; return 0; }
    case GGUF_UINT64: {
        uint64_t x;
        memcpy(&x, p, 8);
        if (x > INT64_MAX) return -1;
        *v = (int64_t)x;
        return 0;
    }
    default: return -1;
    }
}

static int float_at(uint32_t t, const uint8_t *p, double *v) {
    if (t == GGUF_FLOAT32) { float x; memcpy(&x, p, 4); *v = x; return 0; }
    if (t == GGUF_FLOAT64) { memcpy(v, p, 8); return 0; }
    int64_t i;
    if (t != GGUF_BOOL && int_at(t, p, &i) == 0) { *v = (double)i; return 0; }
    return -1;
}

int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out) {
    const gguf_kv *kv = gguf_find(f, key);
    if (!kv || kv->type == GGUF_BOOL) return -1;
    return int_at(kv->type, kv->data, out);
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out) {
    int64_t v;
    if (gguf_get_i64(f, key, &v) || v < 0 || v > UINT32_MAX) return -1;
    *out = (uint32_t)v;
    return 0;
}

int gguf_get_f32(const gguf_file *f, const char *key, float *out) {
    const gguf_kv *kv = gguf_find(f, key);
    double v;
    if (!kv || float_at(kv->type, kv->data, &v)) return -1;
    *out = (float)v;
    return 0;
}

int gguf_get_bool(const gguf_file *f, const char *key, int *out) {
    const gguf_kv *kv = gguf_find(f, key);
    if (!kv || kv->type != GGUF_BOOL) return -1;
    *out = kv->data[0] != 0;
    return 0;
}

int gguf_get_str(const gguf_file *f, const char *key, dsa_str *out) {
    const gguf_kv *kv = gguf_find(f, key);
    if (!kv || kv->type != GGUF_STRING) return -1;
    uint64_t n = 0;
    memcpy(&n, kv->data, 8);
    out->ptr = (const char *)kv->data + 8;
    out->len = n;
    return 0;
}

int gguf_arr_strs(const gguf_kv *kv, dsa_str *out) {
    if (kv->type != GGUF_ARRAY || kv->arr_type != GGUF_STRING) return -1;
    const uint8_t *p = kv->data; /* validated by the parser: every length fits */
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        uint64_t n;
        memcpy(&n, p, 8);
        out[i].ptr = (const char *)p + 8;
        out[i].len = n;
        p += 8 + n;
    }
    return 0;
}

int64_t gguf_arr_int(const gguf_kv *kv, uint64_t i) {
    int64_t v = 0;
    size_t sz = scalar_size(kv->arr_type);
    if (kv->type != GGUF_ARRAY || !sz || i >= kv->arr_n) return 0;
    if (int_at(kv->arr_type, kv->data + i * sz, &v)) {
        double d;
        if (float_at(kv->arr_type, kv->data + i * sz, &d) == 0) v = (int64_t)d;
    }
    return v;
}

double gguf_arr_float(const gguf_kv *kv, uint64_t i) {
    double v = 0;
    size_t sz = scalar_size(kv->arr_type);
    if (kv->type != GGUF_ARRAY || !sz || i >= kv->arr_n) return 0;
    float_at(kv->arr_type, kv->data + i * sz, &v);
    return v;
}
