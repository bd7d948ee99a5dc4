/*
 * GGUF writer for the files dsachat makes itself: an indexer sidecar or a trainer checkpoint is a few metadata
 * values and a few dozen tensors, so everything is buffered in memory and written in one pass.
 */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ALIGN 32

typedef struct {
    char *bytes;
    size_t len, cap;
} buf;

typedef struct {
    char *name;
    uint32_t type;
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    void *data;
    size_t nbytes;
} wtensor;

struct gguf_writer {
    buf kv; /* serialised key/value pairs */
    uint64_t n_kv;
    wtensor *t;
    int n_t, cap_t;
    int oom;
};

static int put(buf *b, const void *p, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + n) cap *= 2;
        char *nb = realloc(b->bytes, cap);
        if (!nb) return -1;
        b->bytes = nb;
        b->cap = cap;
    }
    memcpy(b->bytes + b->len, p, n);
    b->len += n;
    return 0;
}

static int put_u32(buf *b, uint32_t v) { return put(b, &v, 4); }
static int put_u64(buf *b, uint64_t v) { return put(b, &v, 8); }
static int put_s(buf *b, const char *s) {
    uint64_t n = strlen(s);
    return put_u64(b, n) || put(b, s, n);
}

gguf_writer *gguf_writer_new(void) { return calloc(1, sizeof(gguf_writer)); }

void gguf_writer_free(gguf_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n_t; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    free(w->t);
    free(w->kv.bytes);
    free(w);
}

static int kv_head(gguf_writer *w, const char *key, uint32_t type) {
    if (put_s(&w->kv, key) || put_u32(&w->kv, type)) return w->oom = -1;
    w->n_kv++;
    return 0;
}

int gguf_w_str(gguf_writer *w, const char *key, const char *val) {
    if (kv_head(w, key, GGUF_STRING) || put_s(&w->kv, val)) return w->oom = -1;
    return 0;
}
int gguf_w_u32(gguf_writer *w, const char *key, uint32_t val) {
    if (kv_head(w, key, GGUF_UINT32) || put_u32(&w->kv, val)) return w->oom = -1;
    return 0;
}
int gguf_w_u64(gguf_writer *w, const char *key, uint64_t val) {
    if (kv_head(w, key, GGUF_UINT64) || put_u64(&w->kv, val)) return w->oom = -1;
    return 0;
}
int gguf_w_f32(gguf_writer *w, const char *key, float val) {
    if (kv_head(w, key, GGUF_FLOAT32) || put(&w->kv, &val, 4)) return w->oom = -1;
    return 0;
}

int gguf_w_tensor(gguf_writer *w, const char *name, uint32_t type, int n_dims, const int64_t *ne, const void *data,
                  size_t nbytes) {
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS) return -1;
    if (w->n_t == w->cap_t) {
        int cap = w->cap_t ? 2 * w->cap_t : 64;
        wtensor *nt = realloc(w->t, (size_t)cap * sizeof *nt);
        if (!nt) return w->oom = -1;
        w->t = nt;
        w->cap_t = cap;
    }
    wtensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->data = malloc(nbytes ? nbytes : 1);
    if (!t->name || !t->data) {
        free(t->name);
        free(t->data);
        return w->oom = -1;
    }
    memcpy(t->data, data, nbytes);
    t->type = type;
    t->n_dims = n_dims;
    for (int i = 0; i < GGUF_MAX_DIMS; i++) t->ne[i] = i < n_dims ? ne[i] : 1;
    t->nbytes = nbytes;
    w->n_t++;
    return 0;
}

static int write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t k = write(fd, c, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

int gguf_writer_save(const gguf_writer *w, const char *path, char *err, size_t errlen) {
    if (w->oom) {
        snprintf(err, errlen, "%s: out of memory while building the file", path);
        return -1;
    }
    buf h = {0};
    int bad = put(&h, "GGUF", 4) || put_u32(&h, 3) || put_u64(&h, (uint64_t)w->n_t) || put_u64(&h, w->n_kv) ||
              put(&h, w->kv.bytes ? w->kv.bytes : "", w->kv.len);
    uint64_t off = 0;
    for (int i = 0; i < w->n_t && !bad; i++) {
        const wtensor *t = &w->t[i];
        bad = put_s(&h, t->name) || put_u32(&h, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims && !bad; d++) bad = put_u64(&h, (uint64_t)t->ne[d]);
        bad = bad || put_u32(&h, t->type) || put_u64(&h, off);
        off += (t->nbytes + ALIGN - 1) / ALIGN * ALIGN;
    }
    static const char zeros[ALIGN];
    if (!bad && h.len % ALIGN) bad = put(&h, zeros, ALIGN - h.len % ALIGN);
    if (bad) {
        free(h.bytes);
        snprintf(err, errlen, "%s: out of memory while building the file", path);
        return -1;
    }
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 5);
    if (!tmp) {
        free(h.bytes);
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp", 5);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int rc = fd < 0 ? -1 : write_all(fd, h.bytes, h.len);
    for (int i = 0; i < w->n_t && rc == 0; i++) {
        const wtensor *t = &w->t[i];
        rc = write_all(fd, t->data, t->nbytes);
        if (rc == 0 && t->nbytes % ALIGN) rc = write_all(fd, zeros, ALIGN - t->nbytes % ALIGN);
    }
    int e = errno;
    if (fd >= 0) {
        if (rc == 0 && fsync(fd)) rc = -1, e = errno;
        if (close(fd) && rc == 0) rc = -1, e = errno;
    }
    if (rc == 0 && rename(tmp, path)) rc = -1, e = errno;
    if (rc) {
        snprintf(err, errlen, "%s: cannot write: %s", path, strerror(e));
        if (fd >= 0) unlink(tmp);
    }
    free(tmp);
    free(h.bytes);
    return rc;
}
