/* The cache file format (internal.h has the byte layout): encoding the header and records, and the check that a
 * file holds exactly what the database says was committed. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "internal.h"

static const char MAGIC[8] = {'D', 'S', 'A', 'S', 'E', 'S', 'K', 'V'};
static const char REC_MAGIC[4] = {'D', 'S', 'A', 'B'};

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static uint64_t get64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static size_t pad8(size_t n) { return (n + 7) & ~(size_t)7; }

void ses_rec_offsets(const ses_layout *L, int n, ses_rec_off *o) {
    size_t un = (size_t)n;
    o->ids = 0;
    o->layer0 = pad8(un * 4);
    o->k = 0;
    o->v = pad8(un * (size_t)L->kv_dim * 2);
    o->scale = 2 * o->v;
    o->key = o->scale + (L->index_dim ? pad8(un * 4) : 0);
    o->layer_stride = o->key + pad8(un * (size_t)L->index_dim);
    o->payload = o->layer0 + (size_t)L->n_layer * o->layer_stride;
}

size_t ses_rec_size(size_t payload) { return (SES_REC_HEADER + payload + SES_ALIGN - 1) / SES_ALIGN * SES_ALIGN; }

int ses_rec_tokens(const ses_cache_view *v, int64_t off) { return (int)get32(v->map + off + 8); }

void ses_header_encode(const ses_layout *L, uint8_t hdr[SES_HEADER_BYTES], uint64_t *hash) {
    memset(hdr, 0, SES_HEADER_BYTES);
    memcpy(hdr, MAGIC, 8);
    put32(hdr + 8, SES_FILE_VERSION);
    put32(hdr + 12, SES_HEADER_BYTES);
    put32(hdr + 16, (uint32_t)L->block_tokens);
    put32(hdr + 20, (uint32_t)L->n_layer);
    put32(hdr + 24, (uint32_t)L->kv_dim);
    put32(hdr + 28, (uint32_t)L->index_dim);
    put32(hdr + 32, 1);                    /* K/V: f16 */
    put32(hdr + 36, L->index_dim ? 2 : 0); /* indexer keys: fp8 e4m3 */
    put32(hdr + 40, L->index_dim ? 3 : 0); /* their scales: f32 */
    put64(hdr + 48, (uint64_t)L->session);
    memcpy(hdr + 56, L->attn, strnlen(L->attn, sizeof L->attn - 1));
    memcpy(hdr + 96, L->model_fp, strnlen(L->model_fp, 63));
    memcpy(hdr + 160, L->sidecar_fp, strnlen(L->sidecar_fp, 63));
    uint64_t h = XXH3_64bits(hdr, SES_HEADER_BYTES - 8);
    put64(hdr + SES_HEADER_BYTES - 8, h);
    if (hash) *hash = h;
}

/* Decode a header; 0, or 1 with the problem. */
static int header_decode(const uint8_t *hdr, ses_layout *L, uint64_t *hash, char *problem, size_t plen) {
    if (memcmp(hdr, MAGIC, 8)) return ses_errf(problem, plen, "not a dsachat cache (bad magic)"), 1;
    uint64_t h = XXH3_64bits(hdr, SES_HEADER_BYTES - 8);
    if (h != get64(hdr + SES_HEADER_BYTES - 8)) return ses_errf(problem, plen, "header checksum mismatch"), 1;
    if (get32(hdr + 8) != SES_FILE_VERSION)
        return ses_errf(problem, plen, "cache file version %u (this build reads %d)", get32(hdr + 8), SES_FILE_VERSION),
               1;
    if (get32(hdr + 12) != SES_HEADER_BYTES || get32(hdr + 32) != 1)
        return ses_errf(problem, plen, "unsupported header size or K/V type"), 1;
    memset(L, 0, sizeof *L);
    L->block_tokens = (int)get32(hdr + 16);
    L->n_layer = (int)get32(hdr + 20);
    L->kv_dim = (int)get32(hdr + 24);
    L->index_dim = (int)get32(hdr + 28);
    if (L->block_tokens < 1 || L->block_tokens > 65536 || L->n_layer < 1 || L->n_layer > 4096 || L->kv_dim < 1 ||
        L->kv_dim > (1 << 20) || L->index_dim < 0 || L->index_dim > (1 << 16))
        return ses_errf(problem, plen, "header layout out of range"), 1;
    if (get32(hdr + 36) != (L->index_dim ? 2u : 0u) || get32(hdr + 40) != (L->index_dim ? 3u : 0u))
        return ses_errf(problem, plen, "unsupported indexer key types"), 1;
    L->session = (int64_t)get64(hdr + 48);
    memcpy(L->attn, hdr + 56, sizeof L->attn - 1);
    memcpy(L->model_fp, hdr + 96, 63);
    memcpy(L->sidecar_fp, hdr + 160, 63);
    *hash = h;
    return 0;
}

uint64_t ses_chain_next(uint64_t chain, const uint8_t rec_header[SES_REC_HEADER]) {
    /* the record header covers its payload's checksum, so chaining the headers chains the data */
    return XXH3_64bits_withSeed(rec_header, SES_REC_HEADER, chain);
}

size_t ses_rec_finish(uint8_t *buf, int block, int n, size_t payload) {
    memset(buf, 0, SES_REC_HEADER);
    memcpy(buf, REC_MAGIC, 4);
    put32(buf + 4, (uint32_t)block);
    put32(buf + 8, (uint32_t)n);
    put64(buf + 16, payload);
    put64(buf + 24, XXH3_64bits(buf + SES_REC_HEADER, payload));
    put64(buf + 56, XXH3_64bits(buf, 56));
    size_t total = SES_REC_HEADER + payload, padded = ses_rec_size(payload);
    memset(buf + total, 0, padded - total);
    return padded;
}

int ses_pwrite_all(int fd, const void *buf, size_t n, int64_t off, const char *path, char *err, size_t errlen) {
    const uint8_t *p = buf;
    while (n) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR) continue;
            return ses_errf(err, errlen, "writing %s: %s", path, strerror(errno));
        }
        if (w == 0) return ses_errf(err, errlen, "writing %s: no progress", path);
        p += w;
        n -= (size_t)w;
        off += w;
    }
    return 0;
}

void ses_cache_view_free(ses_cache_view *v) {
    if (v->map) munmap((void *)v->map, v->map_len);
    free(v->block_off);
    free(v->ids);
    memset(v, 0, sizeof *v);
}

int ses_cache_load(int fd, const ses_cache_row *row, ses_cache_view *v, char *problem, size_t plen, char *err,
                   size_t errlen) {
    memset(v, 0, sizeof *v);
    struct stat sb;
    if (fstat(fd, &sb)) return ses_errf(err, errlen, "stat: %s", strerror(errno));
    if (row->file_bytes < SES_HEADER_BYTES)
        return ses_errf(problem, plen, "no committed header (%lld bytes)", (long long)row->file_bytes), 1;
    if (sb.st_size < row->file_bytes)
        return ses_errf(problem, plen, "the file is %lld bytes, %lld committed", (long long)sb.st_size,
                        (long long)row->file_bytes),
               1;
    v->map_len = (size_t)row->file_bytes;
    void *map = mmap(NULL, v->map_len, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        v->map_len = 0;
        return ses_errf(err, errlen, "mmap: %s", strerror(errno));
    }
    v->map = map;
    int bad = 1;
    if (header_decode(v->map, &v->L, &v->header_hash, problem, plen)) goto out;
    if (v->L.block_tokens != row->block_tokens) {
        ses_errf(problem, plen, "block size %d in the file, %d in the database", v->L.block_tokens, row->block_tokens);
        goto out;
    }
    int B = v->L.block_tokens;
    v->n_blocks = (row->committed + B - 1) / B;
    v->block_off = malloc((size_t)(v->n_blocks ? v->n_blocks : 1) * sizeof *v->block_off);
    v->ids = malloc((size_t)(row->committed ? row->committed : 1) * sizeof *v->ids);
    if (!v->block_off || !v->ids) {
        bad = -1;
        ses_errf(err, errlen, "out of memory");
        goto out;
    }
    for (int b = 0; b < v->n_blocks; b++) v->block_off[b] = -1;
    uint64_t chain = v->header_hash;
    int64_t off = SES_HEADER_BYTES;
    while (off < row->file_bytes) {
        const uint8_t *r = v->map + off;
        if (row->file_bytes - off < SES_REC_HEADER || memcmp(r, REC_MAGIC, 4) || XXH3_64bits(r, 56) != get64(r + 56)) {
            ses_errf(problem, plen, "bad record header at offset %lld", (long long)off);
            goto out;
        }
        uint32_t blk = get32(r + 4), n = get32(r + 8);
        uint64_t payload = get64(r + 16);
        ses_rec_off o;
        if (n < 1 || n > (uint32_t)B || blk > (1u << 24)) {
            ses_errf(problem, plen, "record at offset %lld: block %u with %u tokens", (long long)off, blk, n);
            goto out;
        }
        ses_rec_offsets(&v->L, (int)n, &o);
        if (payload != o.payload || ses_rec_size(payload) > (uint64_t)(row->file_bytes - off)) {
            ses_errf(problem, plen, "record at offset %lld: a payload of %llu bytes does not fit", (long long)off,
                     (unsigned long long)payload);
            goto out;
        }
        if (XXH3_64bits(r + SES_REC_HEADER, payload) != get64(r + 24)) {
            ses_errf(problem, plen, "block %u (record at offset %lld): checksum mismatch", blk, (long long)off);
            goto out;
        }
        chain = ses_chain_next(chain, r);
        if (blk < (uint32_t)v->n_blocks) v->block_off[blk] = off;
        v->n_records++;
        off += (int64_t)ses_rec_size(payload);
    }
    if (chain != row->chain) {
        ses_errf(problem, plen, "checksum chain %016llx, the database recorded %016llx", (unsigned long long)chain,
                 (unsigned long long)row->chain);
        goto out;
    }
    for (int b = 0; b < v->n_blocks; b++) {
        int need = row->committed - b * B < B ? row->committed - b * B : B;
        if (v->block_off[b] < 0 || ses_rec_tokens(v, v->block_off[b]) < need) {
            ses_errf(problem, plen, "block %d is missing or short", b);
            goto out;
        }
        memcpy(v->ids + (size_t)b * B, v->map + v->block_off[b] + SES_REC_HEADER, (size_t)need * sizeof *v->ids);
    }
    v->n_ids = row->committed;
    bad = 0;
out:
    if (bad) {
        ses_cache_view_free(v);
        return bad;
    }
    return 0;
}
