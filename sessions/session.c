/* Session handles: the engine state of a conversation in its cache file -- restore, commit, fork, check.
 *
 * The commit protocol (docs/sessions.md has the argument in full): new records go after the committed end of the
 * file (never over committed bytes), then fdatasync, then one SQLite transaction records the new committed length,
 * the checksum chain and the turn's messages.  A crash before the transaction completes leaves the database at the
 * previous commit, and the next open cuts the file back to it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "dsa.h"
#include "internal.h"

struct ses_session {
    ses_store *st;
    int64_t id;
    int fd;
    char *path;
    int loaded;        /* row and v describe the committed state */
    ses_cache_row row;
    ses_cache_view v;  /* v.map may be NULL after a commit: remapped on demand */
    char problem[256]; /* non-empty: the committed cache is unusable (why) */
    uint8_t *buf;      /* one record */
    size_t buf_cap;
};

static void hook(const char *point) {
    if (ses_test_hook) ses_test_hook(point);
}

int ses_file_fingerprint(const char *path, char out[64], char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ses_errf(err, errlen, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb)) {
        close(fd);
        return ses_errf(err, errlen, "cannot stat %s: %s", path, strerror(errno));
    }
    uint64_t h = XXH3_64bits(NULL, 0);
    if (sb.st_size > 0) {
        void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            close(fd);
            return ses_errf(err, errlen, "cannot map %s: %s", path, strerror(errno));
        }
        h = XXH3_64bits(p, (size_t)sb.st_size);
        munmap(p, (size_t)sb.st_size);
    }
    close(fd);
    snprintf(out, 64, "xxh3-64:%016llx", (unsigned long long)h);
    return 0;
}

int ses_engine_fp_init(ses_engine_fp *fp, dsa_model *m, const char *sidecar_path, char *err, size_t errlen) {
    memset(fp, 0, sizeof *fp);
    snprintf(fp->model_fp, sizeof fp->model_fp, "%s", dsa_model_fingerprint(m));
    if (!sidecar_path) {
        snprintf(fp->sidecar_fp, sizeof fp->sidecar_fp, "none");
        return 0;
    }
    return ses_file_fingerprint(sidecar_path, fp->sidecar_fp, err, errlen);
}

/* The layout a context's state has, with the fingerprints it is valid for. */
static void ctx_layout(const ses_session *s, dsa_ctx *c, const ses_engine_fp *fp, ses_layout *L) {
    memset(L, 0, sizeof *L);
    L->block_tokens = SES_BLOCK_TOKENS;
    L->n_layer = dsa_model_hparams(dsa_ctx_model(c))->n_layer;
    L->kv_dim = dsa_ctx_kv_dim(c);
    L->index_dim = dsa_ctx_index_dim(c);
    L->session = s->id;
    dsa_select_mode mode = dsa_ctx_select_mode(c);
    if (mode == DSA_SEL_DENSE)
        snprintf(L->attn, sizeof L->attn, "dense");
    else if (mode == DSA_SEL_INDEXER)
        snprintf(L->attn, sizeof L->attn, "dsa:k=%d,dense_layers=%d", dsa_ctx_topk(c), dsa_ctx_dense_layers(c));
    else
        snprintf(L->attn, sizeof L->attn, "select%d:k=%d", (int)mode, dsa_ctx_topk(c));
    snprintf(L->model_fp, sizeof L->model_fp, "%s", fp->model_fp);
    snprintf(L->sidecar_fp, sizeof L->sidecar_fp, "%s", fp->sidecar_fp);
}

/* Why a cache made with layout a cannot serve b, or NULL when it can. */
static const char *layout_mismatch(const ses_layout *a, const ses_layout *b) {
    if (strcmp(a->model_fp, b->model_fp)) return "it was made for another model";
    if (strcmp(a->sidecar_fp, b->sidecar_fp)) return "it was made with another DSA sidecar";
    if (strcmp(a->attn, b->attn)) return "it was made with another attention setting";
    if (a->n_layer != b->n_layer || a->kv_dim != b->kv_dim || a->index_dim != b->index_dim)
        return "its layer/head layout differs";
    if (a->block_tokens != b->block_tokens) return "its block size differs";
    if (a->session != b->session) return "it belongs to another session";
    return NULL;
}

static int fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int r = fsync(fd);
    close(fd);
    return r;
}

int ses_open(ses_store *st, int64_t id, ses_session **out, char *err, size_t errlen) {
    *out = NULL;
    int ex = ses_exists(st, id, err, errlen);
    if (ex <= 0) return ex < 0 ? -1 : ses_errf(err, errlen, "no session %lld", (long long)id);
    ses_session *s = calloc(1, sizeof *s);
    if (!s) return ses_errf(err, errlen, "out of memory");
    s->fd = -1;
    if (!(s->path = ses_cache_path(st, id))) {
        free(s);
        return ses_errf(err, errlen, "out of memory");
    }
    s->st = st;
    s->id = id;
    s->fd = open(s->path, O_RDWR | O_CLOEXEC);
    int created = 0;
    if (s->fd < 0 && errno == ENOENT) {
        s->fd = open(s->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        created = 1;
    }
    if (s->fd < 0) {
        ses_errf(err, errlen, "cannot open %s: %s", s->path, strerror(errno));
        goto fail;
    }
    if (flock(s->fd, LOCK_EX | LOCK_NB)) {
        if (errno == EWOULDBLOCK)
            ses_errf(err, errlen, "session %lld is open elsewhere (another process or store handle)", (long long)id);
        else
            ses_errf(err, errlen, "cannot lock %s: %s", s->path, strerror(errno));
        goto fail;
    }
    if (created && fsync_dir(st->cachedir)) {
        ses_errf(err, errlen, "cannot sync %s: %s", st->cachedir, strerror(errno));
        goto fail;
    }
    *out = s;
    return 0;
fail:
    ses_close(s);
    return -1;
}

void ses_close(ses_session *s) {
    if (!s) return;
    ses_cache_view_free(&s->v);
    if (s->fd >= 0) close(s->fd);
    free(s->path);
    free(s->buf);
    free(s);
}

int64_t ses_session_id(const ses_session *s) { return s->id; }

const int32_t *ses_tokens(const ses_session *s, int *n) {
    *n = s->loaded && !s->problem[0] ? s->v.n_ids : 0;
    return *n ? s->v.ids : NULL;
}

/* Read the committed state: cut the file back to the committed length, then check it.  An unusable cache sets
 * s->problem (the caller resets it); -1 only for I/O and database errors. */
static int load(ses_session *s, char *err, size_t errlen) {
    if (s->loaded) return 0;
    ses_cache_view_free(&s->v);
    s->problem[0] = 0;
    if (ses_cache_row_get(s->st, s->id, &s->row, err, errlen)) return -1;
    struct stat sb;
    if (fstat(s->fd, &sb)) return ses_errf(err, errlen, "cannot stat %s: %s", s->path, strerror(errno));
    if (sb.st_size > s->row.file_bytes && ftruncate(s->fd, (off_t)s->row.file_bytes))
        return ses_errf(err, errlen, "cannot cut %s back to its committed length: %s", s->path, strerror(errno));
    if (s->row.file_bytes > 0) {
        int r = ses_cache_load(s->fd, &s->row, &s->v, s->problem, sizeof s->problem, err, errlen);
        if (r < 0) return -1;
        if (r == 0 && s->v.L.session != s->id)
            snprintf(s->problem, sizeof s->problem, "it belongs to session %lld", (long long)s->v.L.session);
    } else if (s->row.committed > 0) {
        snprintf(s->problem, sizeof s->problem, "%d tokens committed but no header", s->row.committed);
    }
    s->loaded = 1;
    return 0;
}

/* Forget the cache: the database first (committed = 0, in its own transaction, with a "rebuild" event), then the
 * file.  A crash in between leaves a database that promises nothing and a file the next open cuts to nothing. */
static int reset(ses_session *s, const char *why, char *err, size_t errlen) {
    ses_cache_row row = {.committed = 0, .file_bytes = 0, .chain = 0, .block_tokens = SES_BLOCK_TOKENS};
    char detail[400], clean[300];
    snprintf(clean, sizeof clean, "%s", why);
    for (char *p = clean; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) *p = '\'';
    snprintf(detail, sizeof detail, "{\"reason\":\"%s\",\"tokens\":%d}", clean, s->row.committed);
    if (ses_begin(s->st, err, errlen)) return -1;
    if (ses_cache_row_set(s->st, s->id, &row, NULL, NULL, err, errlen) ||
        ses_event(s->st, s->id, "rebuild", detail, err, errlen)) {
        ses_rollback(s->st);
        return -1;
    }
    if (ses_commit(s->st, err, errlen)) return -1;
    ses_cache_view_free(&s->v);
    s->row = row;
    s->problem[0] = 0;
    s->loaded = 1;
    if (ftruncate(s->fd, 0)) return ses_errf(err, errlen, "cannot truncate %s: %s", s->path, strerror(errno));
    return 0;
}

/* Map the committed bytes (after a commit dropped the mapping). */
static int remap(ses_session *s, char *err, size_t errlen) {
    if (s->v.map || s->row.file_bytes == 0) return 0;
    void *p = mmap(NULL, (size_t)s->row.file_bytes, PROT_READ, MAP_SHARED, s->fd, 0);
    if (p == MAP_FAILED) return ses_errf(err, errlen, "cannot map %s: %s", s->path, strerror(errno));
    s->v.map = p;
    s->v.map_len = (size_t)s->row.file_bytes;
    return 0;
}

static int common_prefix(const int32_t *a, int na, const int32_t *b, int nb) {
    int n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

int ses_restore(ses_session *s, dsa_ctx *c, const ses_engine_fp *fp, const int32_t *want, int n_want,
                ses_restore_info *info, char *err, size_t errlen) {
    memset(info, 0, sizeof *info);
    if (!want) n_want = -1;
    if (load(s, err, errlen)) return -1;
    ses_layout L;
    ctx_layout(s, c, fp, &L);
    const char *why = s->problem[0] ? s->problem : NULL;
    if (!why && s->row.file_bytes > 0 && s->v.n_ids > 0) why = layout_mismatch(&s->v.L, &L);
    if (why) {
        info->rebuilt = 1;
        snprintf(info->reason, sizeof info->reason, "the cache of session %lld was not used: %.200s", (long long)s->id,
                 why);
        if (reset(s, why, err, errlen)) return -1;
    }
    int n = s->v.n_ids;
    int p = n_want < 0 ? n : common_prefix(s->v.ids, n, want, n_want);
    if (p > dsa_ctx_n_ctx(c)) p = dsa_ctx_n_ctx(c);
    if (p > 0 && remap(s, err, errlen)) return -1;
    int B = s->v.L.block_tokens;
    for (int b = 0; b * B < p; b++) {
        int t0 = b * B, cnt = p - t0 < B ? p - t0 : B;
        ses_rec_off o;
        ses_rec_offsets(&s->v.L, ses_rec_tokens(&s->v, s->v.block_off[b]), &o);
        const uint8_t *pl = s->v.map + s->v.block_off[b] + SES_REC_HEADER;
        for (int l = 0; l < L.n_layer; l++) {
            const uint8_t *ly = pl + o.layer0 + (size_t)l * o.layer_stride;
            if (dsa_ctx_cache_put(c, l, t0, cnt, (const uint16_t *)(ly + o.k), (const uint16_t *)(ly + o.v),
                                  L.index_dim ? ly + o.key : NULL, L.index_dim ? (const float *)(ly + o.scale) : NULL,
                                  err, errlen))
                return -1;
        }
    }
    if (dsa_ctx_set_pos(c, p, err, errlen)) return -1;
    info->reused = p;
    info->to_prefill = n_want < 0 ? 0 : n_want - p;
    info->committed = s->row.committed;
    return 0;
}

static int ensure_buf(ses_session *s, const ses_layout *L, char *err, size_t errlen) {
    ses_rec_off o;
    ses_rec_offsets(L, L->block_tokens, &o);
    size_t need = ses_rec_size(o.payload);
    if (need <= s->buf_cap) return 0;
    uint8_t *p = realloc(s->buf, need);
    if (!p) return ses_errf(err, errlen, "out of memory (%zu bytes for a cache block)", need);
    s->buf = p;
    s->buf_cap = need;
    return 0;
}

/* Append the records of the blocks covering tokens [p, n) (each with its block's tokens from the block start) from
 * a context.  Advances *off and *chain; fills block_off. */
static int write_from_ctx(ses_session *s, dsa_ctx *c, const ses_layout *L, const int32_t *ids, int p, int n,
                          int64_t *off, uint64_t *chain, int64_t *block_off, char *err, size_t errlen) {
    int B = L->block_tokens;
    for (int b = p / B; b * B < n; b++) {
        int t0 = b * B, cnt = n - t0 < B ? n - t0 : B;
        ses_rec_off o;
        ses_rec_offsets(L, cnt, &o);
        uint8_t *pl = s->buf + SES_REC_HEADER;
        memset(pl, 0, o.payload); /* the padding between sections is part of the checksum */
        memcpy(pl + o.ids, ids + t0, (size_t)cnt * sizeof *ids);
        for (int l = 0; l < L->n_layer; l++) {
            uint8_t *ly = pl + o.layer0 + (size_t)l * o.layer_stride;
            if (dsa_ctx_cache_get(c, l, t0, cnt, (uint16_t *)(ly + o.k), (uint16_t *)(ly + o.v),
                                  L->index_dim ? ly + o.key : NULL, L->index_dim ? (float *)(ly + o.scale) : NULL, err,
                                  errlen))
                return -1;
        }
        size_t sz = ses_rec_finish(s->buf, b, cnt, o.payload);
        if (ses_pwrite_all(s->fd, s->buf, sz, *off, s->path, err, errlen)) return -1;
        *chain = ses_chain_next(*chain, s->buf);
        block_off[b] = *off;
        *off += (int64_t)sz;
        hook("write");
    }
    return 0;
}

static int sync_file(ses_session *s, char *err, size_t errlen) {
    if (fdatasync(s->fd)) return ses_errf(err, errlen, "syncing %s: %s", s->path, strerror(errno));
    hook("fsync");
    return 0;
}

/* Record the new committed state with msgs in one transaction. */
static int record(ses_session *s, const ses_cache_row *row, const ses_engine_fp *fp, const char *attn,
                  const ses_message *msgs, int n_msgs, char *err, size_t errlen) {
    if (ses_begin(s->st, err, errlen)) return -1;
    for (int i = 0; i < n_msgs; i++)
        if (ses_message_insert(s->st, s->id, &msgs[i], NULL, err, errlen)) goto fail;
    if (ses_cache_row_set(s->st, s->id, row, fp, attn, err, errlen)) goto fail;
    if (ses_commit(s->st, err, errlen)) return -1;
    hook("commit");
    return 0;
fail:
    ses_rollback(s->st);
    return -1;
}

int ses_commit_turn(ses_session *s, dsa_ctx *c, const ses_engine_fp *fp, const int32_t *ids, int n,
                    const ses_message *msgs, int n_msgs, char *err, size_t errlen) {
    if (n < 0 || n > dsa_ctx_pos(c))
        return ses_errf(err, errlen, "commit of %d tokens, but the context holds %d", n, dsa_ctx_pos(c));
    if (load(s, err, errlen)) return -1;
    ses_layout L;
    ctx_layout(s, c, fp, &L);
    const char *why = s->problem[0] ? s->problem : NULL;
    if (!why && s->row.file_bytes > 0) why = layout_mismatch(&s->v.L, &L);
    if (why && reset(s, why, err, errlen)) return -1;
    if (ensure_buf(s, &L, err, errlen)) return -1;

    int B = L.block_tokens, nb = (n + B - 1) / B;
    int p = common_prefix(s->v.ids, s->v.n_ids, ids, n);
    int64_t *block_off = malloc((size_t)(nb ? nb : 1) * sizeof *block_off);
    int32_t *new_ids = malloc((size_t)(n ? n : 1) * sizeof *new_ids);
    if (!block_off || !new_ids) {
        free(block_off);
        free(new_ids);
        return ses_errf(err, errlen, "out of memory");
    }
    for (int b = 0; b < nb; b++) block_off[b] = b < s->v.n_blocks ? s->v.block_off[b] : -1;
    if (n) memcpy(new_ids, ids, (size_t)n * sizeof *ids);

    ses_cache_row row = s->row;
    int64_t off;
    uint64_t chain;
    if (row.file_bytes == 0) { /* a fresh file: the header first */
        uint8_t hdr[SES_HEADER_BYTES];
        ses_header_encode(&L, hdr, &chain);
        if (ftruncate(s->fd, 0)) {
            ses_errf(err, errlen, "cannot truncate %s: %s", s->path, strerror(errno));
            goto fail;
        }
        if (ses_pwrite_all(s->fd, hdr, sizeof hdr, 0, s->path, err, errlen)) goto fail;
        off = SES_HEADER_BYTES;
        p = 0;
    } else {
        /* whatever a failed commit left past the committed end goes first */
        if (ftruncate(s->fd, (off_t)row.file_bytes)) {
            ses_errf(err, errlen, "cannot truncate %s: %s", s->path, strerror(errno));
            goto fail;
        }
        off = row.file_bytes;
        chain = row.chain;
    }
    if (write_from_ctx(s, c, &L, ids, p, n, &off, &chain, block_off, err, errlen) || sync_file(s, err, errlen))
        goto fail;
    row.committed = n;
    row.file_bytes = off;
    row.chain = chain;
    row.block_tokens = B;
    if (record(s, &row, fp, L.attn, msgs, n_msgs, err, errlen)) goto fail;

    /* committed: the in-memory view follows (the mapping is redone when a restore or fork needs it) */
    if (s->v.map) munmap((void *)s->v.map, s->v.map_len);
    s->v.map = NULL;
    s->v.map_len = 0;
    free(s->v.block_off);
    free(s->v.ids);
    s->v.block_off = block_off;
    s->v.ids = new_ids;
    s->v.n_blocks = nb;
    s->v.n_ids = n;
    s->v.L = L;
    s->row = row;
    return 0;
fail:
    /* best effort: leave the file at its committed length (the next commit or open cuts it anyway) */
    if (ftruncate(s->fd, (off_t)s->row.file_bytes)) { /* the error that matters is already in err */
    }
    free(block_off);
    free(new_ids);
    return -1;
}

/* ---- fork --------------------------------------------------------------------------------------------------- */

static int copy_range(int in, int64_t in_off, int out, int64_t out_off, size_t n, const char *path, char *err,
                      size_t errlen) {
    loff_t a = in_off, b = out_off;
    while (n) {
        ssize_t w = copy_file_range(in, &a, out, &b, n, 0);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        n -= (size_t)w;
    }
    if (!n) return 0;
    /* no copy_file_range here (or it stopped short): read and write */
    uint8_t tmp[1 << 16];
    while (n) {
        size_t k = n < sizeof tmp ? n : sizeof tmp;
        ssize_t r = pread(in, tmp, k, a);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return ses_errf(err, errlen, "reading the source cache: %s", r ? strerror(errno) : "short file");
        if (ses_pwrite_all(out, tmp, (size_t)r, b, path, err, errlen)) return -1;
        a += r;
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Write the first k committed tokens of src into dst's (empty) file and record them. */
static int fork_cache(ses_session *src, ses_session *dst, int k, char *err, size_t errlen) {
    if (remap(src, err, errlen)) return -1;
    ses_layout L = src->v.L;
    L.session = dst->id;
    uint64_t chain;
    uint8_t hdr[SES_HEADER_BYTES];
    ses_header_encode(&L, hdr, &chain);
    if (ftruncate(dst->fd, 0)) return ses_errf(err, errlen, "cannot truncate %s: %s", dst->path, strerror(errno));
    if (ses_pwrite_all(dst->fd, hdr, sizeof hdr, 0, dst->path, err, errlen)) return -1;
    if (ensure_buf(dst, &L, err, errlen)) return -1;
    int64_t off = SES_HEADER_BYTES;
    int B = L.block_tokens;
    for (int b = 0; b * B < k; b++) {
        int t0 = b * B, cnt = k - t0 < B ? k - t0 : B;
        const uint8_t *rec = src->v.map + src->v.block_off[b];
        int nrec = ses_rec_tokens(&src->v, src->v.block_off[b]);
        ses_rec_off so, o;
        ses_rec_offsets(&L, nrec, &so);
        size_t sz;
        if (nrec == cnt) { /* the whole record: copy its bytes (shared on reflink file systems) */
            sz = ses_rec_size(so.payload);
            if (copy_range(src->fd, src->v.block_off[b], dst->fd, off, sz, dst->path, err, errlen)) return -1;
            chain = ses_chain_next(chain, rec);
        } else { /* the first cnt tokens of a longer record, laid out again */
            ses_rec_offsets(&L, cnt, &o);
            uint8_t *pl = dst->buf + SES_REC_HEADER;
            const uint8_t *spl = rec + SES_REC_HEADER;
            memset(pl, 0, o.payload);
            memcpy(pl + o.ids, spl + so.ids, (size_t)cnt * 4);
            for (int l = 0; l < L.n_layer; l++) {
                uint8_t *ly = pl + o.layer0 + (size_t)l * o.layer_stride;
                const uint8_t *sly = spl + so.layer0 + (size_t)l * so.layer_stride;
                size_t kv = (size_t)cnt * L.kv_dim * 2;
                memcpy(ly + o.k, sly + so.k, kv);
                memcpy(ly + o.v, sly + so.v, kv);
                if (L.index_dim) {
                    memcpy(ly + o.scale, sly + so.scale, (size_t)cnt * 4);
                    memcpy(ly + o.key, sly + so.key, (size_t)cnt * L.index_dim);
                }
            }
            sz = ses_rec_finish(dst->buf, b, cnt, o.payload);
            if (ses_pwrite_all(dst->fd, dst->buf, sz, off, dst->path, err, errlen)) return -1;
            chain = ses_chain_next(chain, dst->buf);
        }
        off += (int64_t)sz;
    }
    if (sync_file(dst, err, errlen)) return -1;
    ses_cache_row row = {.committed = k, .file_bytes = off, .chain = chain, .block_tokens = B};
    ses_engine_fp fp;
    snprintf(fp.model_fp, sizeof fp.model_fp, "%s", L.model_fp);
    snprintf(fp.sidecar_fp, sizeof fp.sidecar_fp, "%s", L.sidecar_fp);
    return record(dst, &row, &fp, L.attn, NULL, 0, err, errlen);
}

int ses_fork(ses_session *src, int64_t at_msg, const char *name, int64_t *new_id, char *err, size_t errlen) {
    ses_store *st = src->st;
    if (load(src, err, errlen)) return -1;
    ses_message *m;
    int nm, at = -1;
    if (ses_messages(st, src->id, &m, &nm, err, errlen)) return -1;
    for (int i = 0; i < nm; i++)
        if (m[i].id == at_msg) at = i;
    if (at < 0) {
        ses_messages_free(m, nm);
        return ses_errf(err, errlen, "session %lld has no message %lld", (long long)src->id, (long long)at_msg);
    }
    /* the cached prefix: up to the end of the last in-context message at or before at_msg */
    int k = 0;
    for (int i = at; i >= 0; i--)
        if (m[i].in_context && m[i].tok_end >= 0) {
            k = m[i].tok_end;
            break;
        }
    int seq = m[at].seq;
    ses_messages_free(m, nm);
    if (src->problem[0] || k > src->v.n_ids) k = 0;

    ses_info in;
    if (ses_get(st, src->id, &in, err, errlen)) return -1;
    char nm_buf[300];
    if (!name) {
        snprintf(nm_buf, sizeof nm_buf, "%.280s (fork)", in.name);
        name = nm_buf;
    }
    int64_t id = 0;
    if (ses_begin(st, err, errlen)) goto fail_info;
    /* the session row without a system message of its own: the messages are copied below */
    ses_settings set = in.settings;
    set.system_prompt = NULL;
    if (ses_create_in_tx(st, name, &set, &id, err, errlen)) goto fail;
    static const char *const sql[] = {
        "UPDATE sessions SET system_prompt = (SELECT system_prompt FROM sessions WHERE id = ?1), forked_from = ?1,"
        " forked_at = ?3 WHERE id = ?2",
        "INSERT INTO messages (session_id, seq, role, content, tok_start, tok_end, in_context, truncated, created_at,"
        " n_prompt, n_gen, prefill_ms, gen_ms) SELECT ?2, seq, role, content, tok_start, tok_end, in_context,"
        " truncated, created_at, n_prompt, n_gen, prefill_ms, gen_ms FROM messages WHERE session_id = ?1 AND"
        " seq <= ?4 ORDER BY seq",
        "INSERT INTO events (session_id, at, kind, detail) VALUES (?2, ?5, 'fork', json_object('from', ?1,"
        " 'message', ?3, 'tokens', ?6))",
    };
    for (size_t i = 0; i < sizeof sql / sizeof *sql; i++) {
        sqlite3_stmt *s;
        if (sqlite3_prepare_v2(st->db, sql[i], -1, &s, NULL) != SQLITE_OK) {
            ses_dberr(st, "forking", err, errlen);
            goto fail;
        }
        sqlite3_bind_int64(s, 1, src->id);
        sqlite3_bind_int64(s, 2, id);
        sqlite3_bind_int64(s, 3, at_msg);
        sqlite3_bind_int(s, 4, seq);
        sqlite3_bind_int64(s, 5, ses_now_ms());
        sqlite3_bind_int(s, 6, k);
        int rc = sqlite3_step(s);
        sqlite3_finalize(s);
        if (rc != SQLITE_DONE) {
            ses_dberr(st, "forking", err, errlen);
            goto fail;
        }
    }
    if (ses_commit(st, err, errlen)) goto fail_info;
    ses_info_free(&in);
    /* The new session exists with an empty cache; now its prefix (a failure here leaves a fork that re-prefills). */
    if (k > 0) {
        ses_session *dst;
        if (ses_open(st, id, &dst, err, errlen)) return -1;
        int r = fork_cache(src, dst, k, err, errlen);
        ses_close(dst);
        if (r) return -1;
    }
    if (new_id) *new_id = id;
    return 0;
fail:
    ses_rollback(st);
fail_info:
    ses_info_free(&in);
    return -1;
}

/* ---- check -------------------------------------------------------------------------------------------------- */

int ses_check(ses_store *st, int64_t id, ses_check_report *r, char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    int ex = ses_exists(st, id, err, errlen);
    if (ex <= 0) return ex < 0 ? -1 : ses_errf(err, errlen, "no session %lld", (long long)id);
    char *path = ses_cache_path(st, id);
    if (!path) return ses_errf(err, errlen, "out of memory");
    ses_cache_row row;
    if (ses_cache_row_get(st, id, &row, err, errlen)) {
        free(path);
        return -1;
    }
    r->committed = row.committed;
    r->file_bytes = row.file_bytes;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        free(path);
        if (e != ENOENT)
            return ses_errf(err, errlen, "cannot open the cache of session %lld: %s", (long long)id, strerror(e));
        r->ok = row.file_bytes == 0 && row.committed == 0;
        if (!r->ok) snprintf(r->problem, sizeof r->problem, "the cache file is missing");
        return 0;
    }
    free(path);
    if (flock(fd, LOCK_SH | LOCK_NB)) {
        close(fd);
        return ses_errf(err, errlen, "session %lld is open elsewhere", (long long)id);
    }
    struct stat sb;
    if (!fstat(fd, &sb)) r->bytes_on_disk = (int64_t)sb.st_blocks * 512;
    if (row.file_bytes == 0) {
        r->ok = row.committed == 0;
        if (!r->ok) snprintf(r->problem, sizeof r->problem, "%d tokens committed but no header", row.committed);
        close(fd);
        return 0;
    }
    ses_cache_view v;
    int rc = ses_cache_load(fd, &row, &v, r->problem, sizeof r->problem, err, errlen);
    close(fd);
    if (rc < 0) return -1;
    if (rc == 0) {
        r->ok = v.L.session == id;
        r->n_records = v.n_records;
        if (!r->ok) snprintf(r->problem, sizeof r->problem, "the header names session %lld", (long long)v.L.session);
        ses_cache_view_free(&v);
    }
    return 0;
}
