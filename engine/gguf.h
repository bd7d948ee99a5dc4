/*
 * GGUF reader (versions 2 and 3, little-endian).
 *
 * The file is mapped read-only; every key, string and tensor points into the mapping, so strings are NOT
 * NUL-terminated (use dsa_str).  gguf_parse() validates every count, length and offset against the buffer
 * before anything is allocated from it: a hostile file gets a one-line error, never a crash.
 */
#ifndef DSA_GGUF_H
#define DSA_GGUF_H

#include <stddef.h>
#include <stdint.h>

enum gguf_vtype {
    GGUF_UINT8 = 0, GGUF_INT8 = 1, GGUF_UINT16 = 2, GGUF_INT16 = 3, GGUF_UINT32 = 4, GGUF_INT32 = 5,
    GGUF_FLOAT32 = 6, GGUF_BOOL = 7, GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_UINT64 = 10, GGUF_INT64 = 11,
    GGUF_FLOAT64 = 12, GGUF_VTYPE_COUNT = 13
};

typedef struct {
    const char *ptr; /* not NUL-terminated */
    uint64_t len;
} dsa_str;

typedef struct {
    dsa_str key;
    uint32_t type;     /* enum gguf_vtype */
    uint32_t arr_type; /* element type when type == GGUF_ARRAY */
    uint64_t arr_n;    /* element count when type == GGUF_ARRAY */
    const uint8_t *data; /* the value's bytes in the file (for arrays: the first element) */
    uint64_t nbytes;     /* bytes the value occupies in the file */
} gguf_kv;

#define GGUF_MAX_DIMS 4

typedef struct {
    dsa_str name;
    uint32_t n_dims;
    int64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the contiguous (row) dimension; unused dims are 1 */
    uint32_t type;             /* ggml type id (enum dsa_type) */
    uint64_t offset;           /* relative to the data section */
    const void *data;          /* into the mapping */
    uint64_t nbytes;
} gguf_tensor;

typedef struct {
    const uint8_t *base; /* mapping (or caller's buffer) */
    size_t size;
    int mapped;          /* base is gguf_open's: the file's mapping, or (map set) a private copy */
    void *map;           /* the copy's whole allocation (map_len bytes; base is inside it), or NULL */
    size_t map_len;
    uint32_t version;
    uint64_t n_kv, n_tensors;
    gguf_kv *kv;
    gguf_tensor *tensors;
    uint64_t alignment;
    uint64_t data_offset;
} gguf_file;

/* Map and parse path.  0 on success; -1 with a one-line message in err. */
int gguf_open(const char *path, gguf_file **out, char *err, size_t errlen);
/* gguf_open, with GGUF_OPEN_HUGE: read the file into private memory that the kernel backs with 2 MiB pages
 * (transparent huge pages, asked for with madvise) instead of mapping its 4 KiB pages of page cache, when the
 * kernel has them (else, or when the copy cannot be made, the file is mapped as by gguf_open).  A pass over the
 * weights then misses the TLB once per 2 MiB, not once per 4 KiB, and the hardware prefetchers, which stop at page
 * boundaries, keep streaming: the forward pass of a small model reads all of it for every token. */
#define GGUF_OPEN_HUGE 1
int gguf_open_ex(const char *path, int flags, gguf_file **out, char *err, size_t errlen);
/* Whether this kernel gives transparent huge pages to memory that asks for them (madvise or always). */
int gguf_huge_pages_available(void);
/* Parse an in-memory buffer (not copied: it must outlive the result).  Used by gguf_open and the fuzzer. */
int gguf_parse(const void *buf, size_t size, gguf_file **out, char *err, size_t errlen);
void gguf_close(gguf_file *f);

const gguf_kv *gguf_find(const gguf_file *f, const char *key);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);
const char *gguf_vtype_name(uint32_t t);

/* Typed getters: 0 on success, -1 if the key is missing or has an incompatible type.
 * Integer getters accept any integer type whose value fits. */
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out);
int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out);
int gguf_get_f32(const gguf_file *f, const char *key, float *out);
int gguf_get_bool(const gguf_file *f, const char *key, int *out);
int gguf_get_str(const gguf_file *f, const char *key, dsa_str *out);

/* Array access. gguf_arr_strs fills out[0..kv->arr_n) for a string array (already validated). */
int gguf_arr_strs(const gguf_kv *kv, dsa_str *out);
/* Integer/float element i of a numeric array, converted. */
int64_t gguf_arr_int(const gguf_kv *kv, uint64_t i);
double gguf_arr_float(const gguf_kv *kv, uint64_t i);

/* ---- writer (gguf_write.c): the small files we produce ourselves (indexer sidecars, trainer checkpoints) ----
 * Values and tensor data are copied in; gguf_writer_save writes version 3 to path.tmp, fsyncs it and renames it
 * over path, so a crash leaves either the old file or the new one.  Every call returns 0 or -1 (out of memory,
 * or for save an I/O error in err). */
typedef struct gguf_writer gguf_writer;
gguf_writer *gguf_writer_new(void);
void gguf_writer_free(gguf_writer *w);
int gguf_w_str(gguf_writer *w, const char *key, const char *val);
int gguf_w_u32(gguf_writer *w, const char *key, uint32_t val);
int gguf_w_u64(gguf_writer *w, const char *key, uint64_t val);
int gguf_w_f32(gguf_writer *w, const char *key, float val);
/* ne[0] is the row length; type is a ggml type id (F32 and F16 are what we write) */
int gguf_w_tensor(gguf_writer *w, const char *name, uint32_t type, int n_dims, const int64_t *ne, const void *data,
                  size_t nbytes);
int gguf_writer_save(const gguf_writer *w, const char *path, char *err, size_t errlen);

/* Compare a dsa_str with a C string. */
int dsa_str_eq(dsa_str s, const char *c);

#endif
