/* Private to sessions/: the store handle, the database helpers and the cache file format that store.c, cache.c and
 * session.c share. */
#ifndef DSA_SESSIONS_INTERNAL_H
#define DSA_SESSIONS_INTERNAL_H

#include <sqlite3.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#include "sessions.h"

struct ses_store {
    sqlite3 *db;
    char *dir;      /* the store directory */
    char *cachedir; /* dir/caches */
};

__attribute__((format(printf, 3, 4), unused)) static int ses_errf(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (err && errlen) vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

int64_t ses_now_ms(void);
/* The error of the last failed call on st->db as "<dir>/sessions.db: <what>: <sqlite message>"; returns -1. */
int ses_dberr(ses_store *st, const char *what, char *err, size_t errlen);
/* BEGIN IMMEDIATE / COMMIT (rolls back when it fails) / ROLLBACK (never fails visibly). */
int ses_begin(ses_store *st, char *err, size_t errlen);
int ses_commit(ses_store *st, char *err, size_t errlen);
void ses_rollback(ses_store *st);
/* Path of a session's cache file (malloc'd). */
char *ses_cache_path(const ses_store *st, int64_t id);
/* 1 if the session exists, 0 if not, -1 on error. */
int ses_exists(ses_store *st, int64_t id, char *err, size_t errlen);

/* The cache row of a session. */
typedef struct {
    int committed;      /* tokens */
    int64_t file_bytes; /* end of the last committed record (0: no header written yet) */
    uint64_t chain;     /* checksum chain after the last committed record */
    int block_tokens;
} ses_cache_row;
int ses_cache_row_get(ses_store *st, int64_t id, ses_cache_row *row, char *err, size_t errlen);
/* Inside a transaction: record a new committed state (and the engine fingerprints when fp is not NULL). */
int ses_cache_row_set(ses_store *st, int64_t id, const ses_cache_row *row, const ses_engine_fp *fp, const char *attn,
                      char *err, size_t errlen);
/* Inside a transaction: append a message (next seq). */
int ses_message_insert(ses_store *st, int64_t id, const ses_message *m, int64_t *msg_id, char *err, size_t errlen);
/* Inside a transaction: a new session and its (empty) cache row. */
int ses_create_in_tx(ses_store *st, const char *name, const ses_settings *set, int64_t *id_out, char *err,
                     size_t errlen);
int ses_event(ses_store *st, int64_t id, const char *kind, const char *detail, char *err, size_t errlen);
int ses_touch(ses_store *st, int64_t id, char *err, size_t errlen);

/* ---- the cache file (cache.c) ----------------------------------------------------------------------------

   Header: SES_HEADER_BYTES at offset 0, little-endian:
     0 magic "DSASESKV"  8 u32 version  12 u32 header_bytes  16 u32 block_tokens  20 u32 n_layer  24 u32 kv_dim
     28 u32 index_dim  32 u32 dtype_kv (1 = f16)  36 u32 dtype_ikey (2 = fp8 e4m3, 0 none)  40 u32 dtype_iscale
     (3 = f32, 0 none)  44 u32 reserved  48 i64 session id  56 char attn[40]  96 char model_fp[64]
     160 char sidecar_fp[64]  ... zeros ...  4088 u64 xxh3-64 of bytes [0, 4088)
   Records, from offset SES_HEADER_BYTES, each SES_ALIGN-aligned:
     0 magic "DSAB"  4 u32 block index  8 u32 n_tokens (1..block_tokens)  12 u32 reserved  16 u64 payload bytes
     24 u64 xxh3-64 of the payload  32..56 zeros  56 u64 xxh3-64 of bytes [0, 56)
     payload at +64: ids (n i32), then per layer K (n × kv_dim f16), V (same), scales (n f32), keys (n × index_dim
     bytes), each section padded to 8 bytes; the record is padded with zeros to SES_ALIGN.
   A later record for the same block index supersedes an earlier one. */

#define SES_HEADER_BYTES 4096
#define SES_REC_HEADER 64
#define SES_ALIGN 4096

typedef struct {
    int block_tokens, n_layer, kv_dim, index_dim;
    int64_t session;
    char attn[40];
    char model_fp[64], sidecar_fp[64];
} ses_layout;

/* Offsets inside a record's payload for n tokens: ids at 0; layer l at layer0 + l * layer_stride, inside it K at k,
 * V at v, scales at scale, keys at key; payload bytes in all. */
typedef struct {
    size_t ids, layer0, layer_stride, k, v, scale, key, payload;
} ses_rec_off;
void ses_rec_offsets(const ses_layout *L, int n, ses_rec_off *o);
/* Bytes a record of payload bytes occupies (header + payload, padded). */
size_t ses_rec_size(size_t payload);

/* The committed state of an opened file: the latest record of each block. */
typedef struct {
    const uint8_t *map;  /* mmap of [0, map_len) */
    size_t map_len;
    ses_layout L;
    int n_blocks;        /* blocks covering the committed tokens */
    int64_t *block_off;  /* offset of each block's latest record */
    int32_t *ids;        /* committed ids */
    int n_ids;
    int n_records;
    uint64_t header_hash;
} ses_cache_view;

void ses_header_encode(const ses_layout *L, uint8_t hdr[SES_HEADER_BYTES], uint64_t *hash);
/* Map fd and check it against row: header, every record up to row->file_bytes (record and payload checksums, the
 * chain), coverage of the committed tokens.  Returns 0 (valid: *v filled), 1 (invalid: problem says why), -1 (an
 * I/O error: err). */
int ses_cache_load(int fd, const ses_cache_row *row, ses_cache_view *v, char *problem, size_t plen, char *err,
                   size_t errlen);
void ses_cache_view_free(ses_cache_view *v);
/* Tokens in the record at off of a mapped view. */
int ses_rec_tokens(const ses_cache_view *v, int64_t off);
uint64_t ses_chain_next(uint64_t chain, const uint8_t rec_header[SES_REC_HEADER]);
/* Write the full buffer at off (retrying short writes); -1 with err naming path on failure. */
int ses_pwrite_all(int fd, const void *buf, size_t n, int64_t off, const char *path, char *err, size_t errlen);
/* Fill the record header of buf (SES_REC_HEADER + payload, payload already written), zero the padding and return
 * the record's size. */
size_t ses_rec_finish(uint8_t *buf, int block, int n, size_t payload);

#endif
