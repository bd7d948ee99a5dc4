/*
 * The worker: the one thread that owns the model, the session store and every context.  It takes requests from a
 * queue, answers the quick ones at once (session bookkeeping goes through SQLite here, never on the loop), and
 * runs generations in rounds: a round prefills one chunk of one waiting prompt, then advances every decoding
 * session by one token (one batched step on CUDA).  A session whose connection's output queue is full is skipped
 * until it drains; a session whose connection is gone is cancelled.  Every finished reply (done, cancelled, cut
 * off by shutdown) is committed to the store before its "done" goes out.
 */
#define _GNU_SOURCE
#include "d_internal.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dsa.h"
#include "model.h"
#include "sampler.h"
#include "sessions.h"

#define PREFILL_CHUNK 128 /* tokens of one prompt per round: other sessions keep streaming during a long prefill */
#define PREFILL_EVENT_S 0.25 /* a long prefill reports its progress ("prefill" events) at most this often */
#define DEFAULT_MAX_TOKENS 512

typedef struct gen gen;

/* A session whose context is in memory. */
typedef struct sess {
    int64_t id;
    ses_session *ss;
    dsa_ctx *c;
    int dsa_k;              /* the setting the context was made with */
    int32_t *toks;          /* the tokens whose state the context holds (dsa_ctx_pos of them) */
    int n_toks, cap_toks;
    int restored;           /* the store has been asked for its cached state */
    uint64_t used;          /* LRU clock */
    gen *g;                 /* the generation in progress, or NULL */
    struct sess *next;
} sess;

struct gen {
    sess *s;
    d_conn conn;
    json_t *id;
    int64_t user_msg;
    dsa_sampler *smp;
    int max_tokens;
    int32_t *prompt;
    int n_prompt, at;       /* prompt tokens; the next position to prefill */
    int reused, history_dropped, rebuilt, phase; /* phase 0: prefill, 1: decode */
    float *logits;
    int32_t *out;
    int n_out, cap_out;
    char *text;
    size_t n_text, cap_text;
    dsa_detok dt;
    double t0, t_first, t_prefilled, t_progress; /* t_progress: the last prefill event (or t0) */
    int cancel;             /* 1: chat.cancel or the client left, 2: shutdown */
    int dsa_on, k;
};

typedef struct job {
    d_conn conn;
    proto_request *req; /* NULL: a parse error to send (id, code, msg) */
    json_t *id;
    proto_code code;
    char *msg;
    struct job *next;
} job;

static struct {
    d_options o;
    dsa_model *m;
    dsa_indexer *ix;
    char *ix_path;
    dsa_pool *pool;
    ses_store *st;
    ses_engine_fp fp;
    int n_ctx, n_vocab;
    json_t *model_info;
    sess *open;
    uint64_t clock;
    float *batch_logits;    /* D_MAX_CONN × n_vocab, for batched steps */
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *head, *tail;
    int stop;               /* under mu */
    int wake;               /* under mu: something to look at without a job */
    double t_start;
    long n_requests, n_errors, tok_gen, tok_prefill, tok_reused;
    int queued;
} W = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- replies ------------------------------------------------------------------------------------------------ */

static void reply_error(d_conn c, const json_t *id, proto_code code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void reply_error(d_conn c, const json_t *id, proto_code code, const char *fmt, ...) {
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    W.n_errors++;
    char *line = proto_error_line(id, code, msg);
    if (line) d_emit(c, line);
}

static void reply_ok(d_conn c, const json_t *id, json_t *fields) {
    char *line = proto_ok_line(id, fields);
    if (line) d_emit(c, line);
}

static void event(d_conn c, const json_t *id, const char *ev, json_t *fields) {
    char *line = proto_event_line(id, ev, fields);
    if (line) d_emit(c, line);
}

/* A JSON string from bytes that may hold invalid UTF-8 (a model can emit half a character): bad bytes become
 * U+FFFD. */
static json_t *json_text(const char *s, size_t n) {
    if (proto_utf8_valid(s, n)) return json_stringn(s, n);
    char *o = malloc(n * 3 + 1);
    if (!o) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        size_t len = 1;
        unsigned char b = (unsigned char)s[i];
        if (b >= 0xF0) len = 4;
        else if (b >= 0xE0) len = 3;
        else if (b >= 0xC0) len = 2;
        if (b < 0x80 || (i + len <= n && proto_utf8_valid(s + i, len))) {
            memcpy(o + k, s + i, len);
            k += len, i += len;
        } else {
            memcpy(o + k, "\xEF\xBF\xBD", 3);
            k += 3, i += 1;
        }
    }
    json_t *j = json_stringn(o, k);
    free(o);
    return j;
}

/* ---- JSON views of store objects ---------------------------------------------------------------------------- */

/* A setting kept as a float, shown as the decimal it was given as (0.7, not 0.699999988079071). */
static double dec(float x) {
    char b[32];
    snprintf(b, sizeof b, "%.7g", (double)x);
    return strtod(b, NULL);
}

static json_t *settings_json(const ses_settings *s) {
    return json_pack("{s:f,s:f,s:i,s:f,s:I,s:f,s:i,s:i}", "temp", dec(s->sampling.temp), "top_p",
                     dec(s->sampling.top_p), "top_k", s->sampling.top_k, "min_p", dec(s->sampling.min_p), "seed",
                     (json_int_t)s->sampling.seed, "repeat_penalty", dec(s->sampling.repeat_penalty), "max_tokens",
                     s->n_predict > 0 ? s->n_predict : DEFAULT_MAX_TOKENS, "dsa_k", s->dsa_k);
}

static sess *find_open(int64_t id) {
    for (sess *s = W.open; s; s = s->next)
        if (s->id == id) return s;
    return NULL;
}

static json_t *session_json(const ses_info *in) {
    sess *s = find_open(in->id);
    json_t *j = json_pack("{s:I,s:s,s:I,s:I,s:i,s:i,s:b,s:o}", "id", (json_int_t)in->id, "name",
                          in->name ? in->name : "", "created_ms", (json_int_t)in->created_ms, "updated_ms",
                          (json_int_t)in->updated_ms, "messages", in->n_messages, "tokens", in->committed_tokens,
                          "generating", s && s->g, "settings", settings_json(&in->settings));
    json_object_set_new(j, "system", in->settings.system_prompt && *in->settings.system_prompt
                                         ? json_string(in->settings.system_prompt)
                                         : json_null());
    json_object_set_new(j, "forked_from", in->forked_from ? json_integer(in->forked_from) : json_null());
    return j;
}

static json_t *message_json(const ses_message *m) {
    json_t *j = json_pack("{s:I,s:s,s:o,s:I,s:b,s:b}", "id", (json_int_t)m->id, "role", m->role, "content",
                          json_text(m->content ? m->content : "", m->content ? strlen(m->content) : 0), "created_ms",
                          (json_int_t)m->created_ms, "truncated", m->truncated, "in_context", m->in_context);
    json_object_set_new(j, "tokens", m->tok_start >= 0 ? json_integer(m->tok_end - m->tok_start) : json_null());
    if (!strcmp(m->role, "assistant"))
        json_object_set_new(j, "stats", json_pack("{s:i,s:i,s:f,s:f}", "prompt_tokens", m->stats.n_prompt,
                                                  "generated_tokens", m->stats.n_gen, "prefill_ms",
                                                  m->stats.prefill_ms, "decode_ms", m->stats.gen_ms));
    return j;
}

/* ---- sessions in memory ------------------------------------------------------------------------------------ */

static void sess_close(sess *s) {
    sess **pp = &W.open;
    while (*pp && *pp != s) pp = &(*pp)->next;
    if (*pp) *pp = s->next;
    ses_close(s->ss);
    dsa_ctx_free(s->c);
    free(s->toks);
    free(s);
}

/* Make room: close idle sessions beyond the limit, least recently used first. */
static void sess_evict(int keep) {
    for (;;) {
        int n = 0;
        sess *lru = NULL;
        for (sess *s = W.open; s; s = s->next) {
            n++;
            if (!s->g && (!lru || s->used < lru->used)) lru = s;
        }
        if (n <= keep || !lru) return;
        sess_close(lru);
    }
}

/* The attention a session's setting asks for: dense (-1, --dense, or no indexer), else DSA at k (0: default). */
static void sparse_mode(int dsa_k, dsa_select_mode *mode, int *k) {
    int dense = W.o.dense || dsa_k < 0 || !W.ix;
    *mode = dense ? DSA_SEL_DENSE : DSA_SEL_INDEXER;
    *k = dense ? 0 : dsa_k;
}

/* The in-memory session for id, opened (and its context made) when needed. */
static sess *sess_get(int64_t id, int dsa_k, char *err, size_t errlen) {
    sess *s = find_open(id);
    if (s && s->dsa_k != dsa_k && !s->g) { /* the attention setting changed: a context of the new kind */
        sess_close(s);
        s = NULL;
    }
    if (s) {
        s->used = ++W.clock;
        return s;
    }
    sess_evict(W.o.max_open - 1);
    s = calloc(1, sizeof *s);
    if (!s) return snprintf(err, errlen, "out of memory"), NULL;
    s->id = id;
    s->dsa_k = dsa_k;
    dsa_select_mode mode;
    int k;
    sparse_mode(dsa_k, &mode, &k);
    dsa_backend be = DSA_BACKEND_AUTO;
    if (W.o.backend) dsa_backend_parse(W.o.backend, &be);
    if (ses_open(W.st, id, &s->ss, err, errlen) || dsa_ctx_new_shared(W.m, W.n_ctx, W.pool, &s->c, err, errlen) ||
        (W.ix && dsa_ctx_set_sparse(s->c, W.ix, mode, k, err, errlen)) ||
        dsa_ctx_set_backend(s->c, be, err, errlen)) {
        if (s->ss) ses_close(s->ss);
        dsa_ctx_free(s->c);
        free(s);
        return NULL;
    }
    s->used = ++W.clock;
    s->next = W.open;
    W.open = s;
    return s;
}

static int toks_set(sess *s, const int32_t *ids, int n) {
    if (n > s->cap_toks) {
        int cap = n + 1024;
        int32_t *t = realloc(s->toks, (size_t)cap * sizeof *t);
        if (!t) return -1;
        s->toks = t, s->cap_toks = cap;
    }
    if (n) memmove(s->toks, ids, (size_t)n * sizeof *ids);
    s->n_toks = n;
    return 0;
}

/* ---- requests ----------------------------------------------------------------------------------------------- */

/* Refuse a request on a session that is generating (an error reply sent): 1, else 0. */
static int busy(d_conn c, const proto_request *r, int64_t id) {
    sess *s = find_open(id);
    if (!s || !s->g) return 0;
    reply_error(c, r->id, PE_BUSY, "session %lld is generating a reply (cancel it or wait)", (long long)id);
    return 1;
}

/* The session a request names (id, or exact name); 0 with *id, or an error reply already sent. */
static int resolve(d_conn c, const proto_request *r, int64_t *id) {
    char err[256];
    if (!r->session_name) { /* the parser guarantees a session: an id, or a name */
        ses_info in;
        if (ses_get(W.st, r->session_id, &in, err, sizeof err)) {
            reply_error(c, r->id, PE_NO_SESSION, "no session %lld", (long long)r->session_id);
            return -1;
        }
        ses_info_free(&in);
        *id = r->session_id;
        return 0;
    }
    ses_info *list;
    int n, hits = 0;
    if (ses_list(W.st, &list, &n, err, sizeof err)) {
        reply_error(c, r->id, PE_INTERNAL, "%s", err);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (list[i].name && !strcmp(list[i].name, r->session_name)) *id = list[i].id, hits++;
    ses_list_free(list, n);
    if (hits == 1) return 0;
    if (hits) reply_error(c, r->id, PE_AMBIGUOUS, "%d sessions are named \"%s\": use the id", hits, r->session_name);
    else reply_error(c, r->id, PE_NO_SESSION, "no session named \"%s\"", r->session_name);
    return -1;
}

static void apply_settings(ses_settings *s, const proto_settings *p) {
    if (p->has & PS_TEMP) s->sampling.temp = (float)p->temp;
    if (p->has & PS_TOP_P) s->sampling.top_p = (float)p->top_p;
    if (p->has & PS_TOP_K) s->sampling.top_k = p->top_k;
    if (p->has & PS_MIN_P) s->sampling.min_p = (float)p->min_p;
    if (p->has & PS_SEED) s->sampling.seed = p->seed;
    if (p->has & PS_REPEAT) s->sampling.repeat_penalty = (float)p->repeat_penalty;
    if (p->has & PS_MAX_TOKENS) s->n_predict = p->max_tokens;
    if (p->has & PS_DSA_K) s->dsa_k = p->dsa_k;
}

static void reply_session(d_conn c, const json_t *rid, int64_t id) {
    char err[256];
    ses_info in;
    if (ses_get(W.st, id, &in, err, sizeof err)) {
        reply_error(c, rid, PE_INTERNAL, "%s", err);
        return;
    }
    reply_ok(c, rid, json_pack("{s:o}", "session", session_json(&in)));
    ses_info_free(&in);
}

static json_t *stats_json(void) {
    int open = 0, generating = 0;
    for (sess *s = W.open; s; s = s->next) open++, generating += s->g != NULL;
    return json_pack("{s:s,s:f,s:i,s:i,s:i,s:i,s:I,s:I,s:I,s:I,s:I}", "version", "dsachatd " DSA_VERSION, "uptime_s",
                     now_s() - W.t_start, "clients", d_clients(), "sessions_open", open, "generating", generating,
                     "queued", W.queued, "tokens_generated", (json_int_t)W.tok_gen, "tokens_prefilled",
                     (json_int_t)W.tok_prefill, "tokens_reused", (json_int_t)W.tok_reused, "requests",
                     (json_int_t)W.n_requests, "errors", (json_int_t)W.n_errors);
}

/* Tokens of a rendered conversation (with BOS when the model wants one). */
static int render(const dsa_chat_msg *msgs, int n, int gen_prompt, dsa_ids *ids) {
    const dsa_tokenizer *tok = dsa_model_tok(W.m);
    const dsa_chat_template *ct = dsa_model_chat(W.m, NULL);
    char *p = dsa_chat_render(ct, msgs, n, gen_prompt);
    if (!p) return -1;
    ids->n = 0;
    if (dsa_tok_add_bos(tok) && dsa_tok_bos(tok) >= 0) dsa_ids_push(ids, dsa_tok_bos(tok));
    int rc = dsa_tok_encode(tok, p, strlen(p), 1, ids);
    free(p);
    return rc;
}

static void gen_free(gen *g) {
    if (!g) return;
    json_decref(g->id);
    dsa_sampler_free(g->smp);
    free(g->prompt);
    free(g->logits);
    free(g->out);
    free(g->text);
    free(g);
}

/* 1 when a generation started (its finish() reports the request through), else 0. */
static int chat_send(d_conn c, const proto_request *r) {
    char err[512];
    int64_t id;
    if (resolve(c, r, &id) || busy(c, r, id)) return 0;
    ses_info in;
    if (ses_get(W.st, id, &in, err, sizeof err)) {
        reply_error(c, r->id, PE_INTERNAL, "%s", err);
        return 0;
    }
    ses_settings set = in.settings;
    set.system_prompt = NULL;
    apply_settings(&set, &r->settings);
    int max_tokens = set.n_predict > 0 ? set.n_predict : DEFAULT_MAX_TOKENS;
    int dsa_k = in.settings.dsa_k;
    ses_info_free(&in);
    double t0 = now_s();
    sess *s = sess_get(id, dsa_k, err, sizeof err);
    if (!s) {
        reply_error(c, r->id, PE_INTERNAL, "%s", err);
        return 0;
    }
    gen *g = calloc(1, sizeof *g);
    ses_message *msgs = NULL;
    dsa_chat_msg *cm = NULL;
    dsa_ids ids = {0}, prev = {0};
    int nm = 0;
    if (!g) goto oom;
    g->t0 = g->t_progress = t0;
    /* the transcript in context, the new message at its end: drop old turns while it does not fit */
    for (int round = 0;; round++) {
        ses_messages_free(msgs, nm);
        free(cm);
        msgs = NULL, cm = NULL;
        if (ses_messages(W.st, id, &msgs, &nm, err, sizeof err)) {
            reply_error(c, r->id, PE_INTERNAL, "%s", err);
            goto fail;
        }
        cm = malloc((size_t)(nm + 1) * sizeof *cm);
        if (!cm) goto oom;
        int k = 0;
        for (int i = 0; i < nm; i++)
            if (msgs[i].in_context) cm[k++] = (dsa_chat_msg){msgs[i].role, msgs[i].content};
        /* spans the store does not know yet (a system prompt given at create): the overflow policy needs them */
        for (int i = 0, j = 0; i < nm; i++) {
            if (!msgs[i].in_context) continue;
            if (msgs[i].tok_start < 0 && strcmp(msgs[i].role, "assistant")) {
                dsa_ids a = {0}, b = {0};
                if (render(cm, j, 0, &a) == 0 && render(cm, j + 1, 0, &b) == 0 &&
                    ses_message_set_span(W.st, msgs[i].id, j ? (int)a.n : 0, (int)b.n, err, sizeof err) == 0)
                    msgs[i].tok_start = j ? (int)a.n : 0, msgs[i].tok_end = (int)b.n;
                dsa_ids_free(&a);
                dsa_ids_free(&b);
            }
            j++;
        }
        cm[k] = (dsa_chat_msg){"user", r->text};
        if (render(cm, k + 1, 1, &ids) || render(cm, k, 0, &prev)) goto oom;
        if ((int)ids.n + max_tokens <= W.n_ctx || round > 0) break;
        /* Too long: the oldest turns after the system prompt leave the context (they stay in the transcript).
         * Enough of them that a quarter of the context is free afterwards: each overflow re-reads what follows
         * the dropped turns, and dropping only what this turn needs would make every later turn overflow and
         * re-read almost the whole context again.  When the last turn alone leaves no such room, only what this
         * turn needs. */
        ses_overflow ov;
        int need = (int)ids.n - (int)prev.n + max_tokens;
        if (ses_overflow_apply(W.st, id, W.n_ctx, need + W.n_ctx / 4, &ov, err, sizeof err) &&
            ses_overflow_apply(W.st, id, W.n_ctx, need, &ov, err, sizeof err)) {
            reply_error(c, r->id, PE_CONTEXT_FULL, "the conversation does not fit the context of %d tokens: %s",
                        W.n_ctx, err);
            goto fail;
        }
        g->history_dropped = ov.n_dropped;
        ses_overflow_free(&ov);
    }
    if ((int)ids.n + 1 > W.n_ctx) {
        reply_error(c, r->id, PE_CONTEXT_FULL, "the message needs %zu tokens; the context holds %d", ids.n, W.n_ctx);
        goto fail;
    }
    if ((int)ids.n + max_tokens > W.n_ctx) max_tokens = W.n_ctx - (int)ids.n; /* the reply gets what is left */
    /* the user's message is stored before the reply starts: it survives a crash of the reply */
    ses_message um = {.role = "user", .content = r->text, .tok_start = (int)prev.n, .tok_end = (int)ids.n};
    if (ses_append_message(W.st, id, &um, &g->user_msg, err, sizeof err)) {
        reply_error(c, r->id, PE_INTERNAL, "%s", err);
        goto fail;
    }
    /* what the context can keep: the cached state of the longest common prefix */
    int reuse = 0;
    if (!s->restored) {
        ses_restore_info ri;
        if (ses_restore(s->ss, s->c, &W.fp, ids.ids, (int)ids.n, &ri, err, sizeof err)) {
            reply_error(c, r->id, PE_INTERNAL, "%s", err);
            goto fail;
        }
        s->restored = 1;
        reuse = ri.reused;
        g->rebuilt = ri.rebuilt;
        if (ri.rebuilt) d_log("session %lld: cache rebuilt (%s)", (long long)id, ri.reason);
    } else {
        int lim = s->n_toks < dsa_ctx_pos(s->c) ? s->n_toks : dsa_ctx_pos(s->c);
        while (reuse < lim && reuse < (int)ids.n && s->toks[reuse] == ids.ids[reuse]) reuse++;
    }
    if (reuse >= (int)ids.n) reuse = (int)ids.n - 1; /* the last prompt token is evaluated again for its logits */
    dsa_ctx_truncate(s->c, reuse);
    if (toks_set(s, ids.ids, reuse)) goto oom;
    dsa_sampler_params sp = set.sampling;
    g->smp = dsa_sampler_new(&sp, W.n_vocab);
    g->logits = malloc((size_t)W.n_vocab * sizeof *g->logits);
    if (!g->smp || !g->logits) goto oom;
    for (size_t i = 0; i < ids.n; i++) dsa_sampler_accept(g->smp, ids.ids[i]);
    g->s = s;
    g->conn = c;
    g->id = r->id ? json_incref(r->id) : NULL;
    g->max_tokens = max_tokens;
    g->prompt = ids.ids;
    g->n_prompt = (int)ids.n;
    ids.ids = NULL;
    g->at = reuse;
    g->reused = reuse;
    g->dsa_on = dsa_ctx_select_mode(s->c) == DSA_SEL_INDEXER;
    g->k = g->dsa_on ? dsa_ctx_topk(s->c) : 0;
    s->g = g;
    W.tok_reused += reuse;
    event(c, r->id, "start", json_pack("{s:I,s:I}", "session", (json_int_t)id, "message", (json_int_t)g->user_msg));
    ses_messages_free(msgs, nm);
    free(cm);
    dsa_ids_free(&prev);
    return 1;
oom:
    reply_error(c, r->id, PE_INTERNAL, "out of memory");
fail:
    ses_messages_free(msgs, nm);
    free(cm);
    dsa_ids_free(&ids);
    dsa_ids_free(&prev);
    gen_free(g);
    return 0;
}

/* 1 when the request goes on (a generation), 0 when it is through. */
static int handle(d_conn c, proto_request *r) {
    char err[512];
    int64_t id;
    W.n_requests++;
    switch (r->op) {
    case OP_HELLO: {
        json_t *f = json_pack("{s:i,s:s,s:O,s:O}", "protocol", PROTO_VERSION, "daemon", "dsachatd " DSA_VERSION,
                              "model", W.model_info, "backend", json_object_get(W.model_info, "backend"));
        reply_ok(c, r->id, f);
        break;
    }
    case OP_MODEL_INFO: reply_ok(c, r->id, json_deep_copy(W.model_info)); break;
    case OP_DAEMON_STATS: reply_ok(c, r->id, stats_json()); break;
    case OP_DAEMON_SHUTDOWN:
        reply_ok(c, r->id, NULL);
        d_log("shutdown requested by a client");
        d_request_shutdown();
        break;
    case OP_SESSION_CREATE: {
        ses_settings set;
        ses_settings_default(&set);
        set.system_prompt = r->system;
        apply_settings(&set, &r->settings);
        if (ses_create(W.st, r->name, &set, &id, err, sizeof err)) {
            reply_error(c, r->id, PE_INTERNAL, "%s", err);
            break;
        }
        reply_session(c, r->id, id);
        break;
    }
    case OP_SESSION_LIST: {
        ses_info *list;
        int n;
        if (ses_list(W.st, &list, &n, err, sizeof err)) {
            reply_error(c, r->id, PE_INTERNAL, "%s", err);
            break;
        }
        json_t *a = json_array();
        for (int i = 0; i < n; i++) json_array_append_new(a, session_json(&list[i]));
        ses_list_free(list, n);
        reply_ok(c, r->id, json_pack("{s:o}", "sessions", a));
        break;
    }
    case OP_SESSION_GET:
        if (!resolve(c, r, &id)) reply_session(c, r->id, id);
        break;
    case OP_SESSION_RENAME:
        if (resolve(c, r, &id)) break;
        if (ses_rename(W.st, id, r->name, err, sizeof err)) reply_error(c, r->id, PE_INTERNAL, "%s", err);
        else reply_session(c, r->id, id);
        break;
    case OP_SESSION_SET: {
        if (resolve(c, r, &id)) break;
        ses_info in;
        if (ses_get(W.st, id, &in, err, sizeof err)) {
            reply_error(c, r->id, PE_INTERNAL, "%s", err);
            break;
        }
        ses_settings set = in.settings;
        if (r->system) set.system_prompt = r->system;
        apply_settings(&set, &r->settings);
        int rc = ses_set_settings(W.st, id, &set, err, sizeof err);
        ses_info_free(&in);
        if (rc) reply_error(c, r->id, PE_INTERNAL, "%s", err);
        else reply_session(c, r->id, id);
        break;
    }
    case OP_SESSION_DELETE: {
        if (resolve(c, r, &id) || busy(c, r, id)) break;
        sess *s = find_open(id);
        if (s) sess_close(s);
        if (ses_delete(W.st, id, err, sizeof err)) reply_error(c, r->id, PE_INTERNAL, "%s", err);
        else reply_ok(c, r->id, NULL);
        break;
    }
    case OP_SESSION_FORK: {
        if (resolve(c, r, &id) || busy(c, r, id)) break;
        sess *s = find_open(id);
        int64_t at = r->has_message ? r->message : 0, nid;
        if (!at) { /* default: the last message */
            ses_message *m;
            int n;
            if (ses_messages(W.st, id, &m, &n, err, sizeof err) == 0) {
                at = n ? m[n - 1].id : 0;
                ses_messages_free(m, n);
            }
        }
        ses_session *ss = s ? s->ss : NULL;
        int opened = 0;
        if (!ss && ses_open(W.st, id, &ss, err, sizeof err) == 0) opened = 1;
        if (!ss || ses_fork(ss, at, r->name, &nid, err, sizeof err)) reply_error(c, r->id, PE_BAD_REQUEST, "%s", err);
        else reply_session(c, r->id, nid);
        if (opened) ses_close(ss);
        break;
    }
    case OP_SESSION_HISTORY: {
        if (resolve(c, r, &id)) break;
        ses_message *m;
        int n;
        ses_info in;
        if (ses_messages(W.st, id, &m, &n, err, sizeof err) || ses_get(W.st, id, &in, err, sizeof err)) {
            reply_error(c, r->id, PE_INTERNAL, "%s", err);
            break;
        }
        json_t *a = json_array();
        for (int i = 0; i < n; i++) json_array_append_new(a, message_json(&m[i]));
        ses_messages_free(m, n);
        reply_ok(c, r->id, json_pack("{s:o,s:o}", "session", session_json(&in), "messages", a));
        ses_info_free(&in);
        break;
    }
    case OP_SESSION_EXPORT: {
        if (resolve(c, r, &id)) break;
        int md = !strcmp(r->format, "markdown");
        char *text;
        if (ses_export(W.st, id, md ? SES_EXPORT_MARKDOWN : SES_EXPORT_JSON, &text, err, sizeof err)) {
            reply_error(c, r->id, PE_INTERNAL, "%s", err);
            break;
        }
        reply_ok(c, r->id, json_pack("{s:s,s:o}", "format", md ? "markdown" : "json", "text",
                                    json_text(text, strlen(text))));
        free(text);
        break;
    }
    case OP_CHAT_SEND: return chat_send(c, r);
    case OP_CHAT_CANCEL: {
        if (resolve(c, r, &id)) break;
        sess *s = find_open(id);
        int on = s && s->g && !s->g->cancel;
        if (on) s->g->cancel = 1;
        reply_ok(c, r->id, json_pack("{s:b}", "cancelled", on));
        break;
    }
    default: reply_error(c, r->id, PE_UNKNOWN_OP, "unknown op"); break;
    }
    return 0;
}

/* ---- generation --------------------------------------------------------------------------------------------- */

static int text_put(gen *g, const char *p, size_t n) {
    if (g->n_text + n + 1 > g->cap_text) {
        size_t cap = (g->n_text + n + 1) * 2;
        char *t = realloc(g->text, cap);
        if (!t) return -1;
        g->text = t, g->cap_text = cap;
    }
    memcpy(g->text + g->n_text, p, n);
    g->n_text += n;
    g->text[g->n_text] = 0;
    return 0;
}

/* The reply ends: the rest of the text out, the turn committed, "done" with the numbers. */
static void finish(gen *g, const char *stop) {
    sess *s = g->s;
    char piece[64], err[512];
    size_t n = dsa_detok_flush(&g->dt, piece, sizeof piece);
    int alive = d_conn_alive(g->conn);
    if (n) {
        text_put(g, piece, n);
        if (alive) event(g->conn, g->id, "token", json_pack("{s:o}", "text", json_text(piece, n)));
    }
    double t_end = now_s(), prefill_ms = ((g->t_prefilled ? g->t_prefilled : t_end) - g->t0) * 1e3;
    double decode_ms = g->t_prefilled ? (t_end - g->t_prefilled) * 1e3 : 0;
    int pos = dsa_ctx_pos(s->c);
    /* the context holds the prompt and the reply's tokens up to the last one evaluated */
    int stored = 1;
    ses_message am = {.role = "assistant", .content = g->text ? g->text : "", .tok_start = g->n_prompt,
                      .tok_end = g->n_prompt + g->n_out, .truncated = strcmp(stop, "eos") != 0,
                      .stats = {g->n_prompt - g->reused, g->n_out, prefill_ms, decode_ms}};
    int64_t amsg = 0;
    if (ses_commit_turn(s->ss, s->c, &W.fp, s->toks, pos < s->n_toks ? pos : s->n_toks, &am, 1, err, sizeof err)) {
        d_log("session %lld: the reply could not be stored: %s", (long long)s->id, err);
        stored = 0;
    } else {
        ses_message *m;
        int nm;
        if (ses_messages(W.st, s->id, &m, &nm, err, sizeof err) == 0) {
            amsg = nm ? m[nm - 1].id : 0;
            ses_messages_free(m, nm);
        }
    }
    if (alive) {
        json_t *st = json_pack("{s:i,s:i,s:i,s:i,s:f,s:f,s:f,s:f,s:b,s:i,s:i,s:i,s:i,s:b}", "prompt_tokens", g->n_prompt,
                               "reused_tokens", g->reused, "prefilled_tokens", g->n_prompt - g->reused,
                               "generated_tokens", g->n_out, "prefill_ms", prefill_ms, "decode_ms", decode_ms, "tok_s",
                               decode_ms > 0 && g->n_out > 1 ? (g->n_out - 1) / (decode_ms / 1e3) : 0.0, "ttft_ms",
                               g->t_first ? (g->t_first - g->t0) * 1e3 : 0.0, "dsa", g->dsa_on, "k", g->k,
                               "context_used", pos, "context_max", W.n_ctx, "history_dropped", g->history_dropped,
                               "rebuilt", g->rebuilt);
        json_t *f = json_pack("{s:I,s:s,s:o,s:b}", "message", (json_int_t)amsg, "stop", stop, "stats", st, "stored",
                              stored);
        if (!stored) json_object_set_new(f, "store_error", json_string(err));
        event(g->conn, g->id, "done", f);
    }
    d_done(g->conn);
    s->g = NULL;
    s->used = ++W.clock;
    gen_free(g);
}

/* One token of g: sample from its logits, stream the piece; returns 1 when the token must be evaluated next. */
static int sample_one(gen *g, int32_t *tok) {
    sess *s = g->s;
    if (g->cancel || !d_conn_alive(g->conn)) {
        finish(g, g->cancel == 2 ? "shutdown" : "cancelled");
        return 0;
    }
    int32_t id = dsa_sampler_sample(g->smp, g->logits);
    if (!g->t_first) g->t_first = now_s();
    if (dsa_tok_is_eog(dsa_model_tok(W.m), id)) {
        finish(g, "eos");
        return 0;
    }
    dsa_sampler_accept(g->smp, id);
    if (g->n_out == g->cap_out) {
        int cap = g->cap_out ? 2 * g->cap_out : 64;
        int32_t *o = realloc(g->out, (size_t)cap * sizeof *o);
        if (!o) {
            finish(g, "error");
            return 0;
        }
        g->out = o, g->cap_out = cap;
    }
    g->out[g->n_out++] = id;
    W.tok_gen++;
    char piece[512];
    size_t n = dsa_detok_push(dsa_model_tok(W.m), &g->dt, id, piece, sizeof piece);
    if (n) {
        text_put(g, piece, n);
        event(g->conn, g->id, "token", json_pack("{s:o}", "text", json_text(piece, n)));
    }
    if (g->n_out >= g->max_tokens) {
        finish(g, "length");
        return 0;
    }
    if (dsa_ctx_pos(s->c) >= W.n_ctx) {
        finish(g, "context");
        return 0;
    }
    *tok = id;
    return 1;
}

/* One round; returns whether anything ran. */
static int step(void) {
    char err[512];
    int did = 0;
    /* a chunk of one waiting prompt (the least recently served session first) */
    sess *p = NULL;
    for (sess *s = W.open; s; s = s->next)
        if (s->g && s->g->phase == 0 && (!p || s->used < p->used)) p = s;
    if (p) {
        gen *g = p->g;
        if (g->cancel || !d_conn_alive(g->conn)) {
            finish(g, g->cancel == 2 ? "shutdown" : "cancelled");
            return 1;
        }
        int n = g->n_prompt - g->at < PREFILL_CHUNK ? g->n_prompt - g->at : PREFILL_CHUNK;
        int last = g->at + n == g->n_prompt;
        if (dsa_ctx_eval(p->c, g->prompt + g->at, n, last ? g->logits : NULL, 0, NULL, NULL, err, sizeof err)) {
            d_log("session %lld: %s", (long long)p->id, err);
            finish(g, "error");
            return 1;
        }
        toks_set(p, g->prompt, g->at + n);
        g->at += n;
        W.tok_prefill += n;
        p->used = ++W.clock;
        if (last) g->phase = 1, g->t_prefilled = now_s();
        else if (now_s() - g->t_progress >= PREFILL_EVENT_S) {
            g->t_progress = now_s();
            event(g->conn, g->id, "prefill",
                  json_pack("{s:i,s:i}", "done", g->at - g->reused, "total", g->n_prompt - g->reused));
        }
        did = 1;
    }
    /* one token of every decoding session whose client keeps up */
    dsa_ctx *cs[D_MAX_CONN];
    gen *gs[D_MAX_CONN];
    int32_t ids[D_MAX_CONN];
    int n = 0;
    for (sess *s = W.open, *next; s; s = next) {
        next = s->next; /* finish() may not free s, but stay safe */
        gen *g = s->g;
        if (!g || g->phase != 1) continue;
        if (!g->cancel && d_conn_alive(g->conn) && d_conn_paused(g->conn)) continue;
        did = 1;
        int32_t tok;
        if (!sample_one(g, &tok)) continue;
        if (n == D_MAX_CONN) continue;
        cs[n] = s->c, gs[n] = g, ids[n] = tok, n++;
    }
    if (n) {
        if (dsa_ctx_eval_batch(cs, ids, n, W.batch_logits, err, sizeof err)) {
            d_log("decode step: %s", err);
            for (int i = 0; i < n; i++) finish(gs[i], "error");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            gen *g = gs[i];
            memcpy(g->logits, W.batch_logits + (size_t)i * W.n_vocab, (size_t)W.n_vocab * sizeof *g->logits);
            sess *s = g->s;
            if (s->n_toks >= s->cap_toks) {
                int32_t *t = realloc(s->toks, (size_t)(s->cap_toks + 1024) * sizeof *t);
                if (!t) continue;
                s->toks = t, s->cap_toks += 1024;
            }
            s->toks[s->n_toks++] = ids[i];
        }
    }
    return did;
}

static void *worker_main(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&W.mu);
        int busy = 0;
        for (sess *s = W.open; s; s = s->next)
            if (s->g && (s->g->phase == 0 || s->g->cancel || !d_conn_alive(s->g->conn) || !d_conn_paused(s->g->conn)))
                busy = 1;
        while (!W.head && !W.stop && !W.wake && !busy) pthread_cond_wait(&W.cv, &W.mu);
        W.wake = 0;
        job *j = W.head;
        W.head = W.tail = NULL;
        int stop = W.stop;
        pthread_mutex_unlock(&W.mu);
        while (j) {
            job *next = j->next;
            W.queued--;
            if (!j->req) {
                W.n_requests++;
                reply_error(j->conn, j->id, j->code, "%s", j->msg ? j->msg : "bad request");
                d_done(j->conn);
                json_decref(j->id);
                free(j->msg);
            } else {
                int goes_on = 0;
                if (stop && j->req->op != OP_DAEMON_STATS && j->req->op != OP_HELLO)
                    reply_error(j->conn, j->req->id, PE_SHUTTING_DOWN, "the daemon is stopping");
                else
                    goes_on = handle(j->conn, j->req);
                if (!goes_on) d_done(j->conn);
                proto_request_free(j->req);
                free(j->req);
            }
            free(j);
            j = next;
        }
        if (stop) break;
        step();
    }
    /* shutting down: every reply ends where it is, every session is committed and closed */
    for (sess *s = W.open; s; s = s->next)
        if (s->g) s->g->cancel = 2;
    while (W.open) {
        sess *s = W.open;
        if (s->g) finish(s->g, "shutdown");
        sess_close(s);
    }
    ses_store_close(W.st);
    W.st = NULL;
    d_log("worker stopped: every session committed");
    d_worker_done();
    return NULL;
}

/* ---- the queue ---------------------------------------------------------------------------------------------- */

static void enqueue(job *j) {
    pthread_mutex_lock(&W.mu);
    if (W.tail) W.tail->next = j;
    else W.head = j;
    W.tail = j;
    W.queued++;
    pthread_cond_signal(&W.cv);
    pthread_mutex_unlock(&W.mu);
}

void d_submit(d_conn c, proto_request *req) {
    job *j = calloc(1, sizeof *j);
    if (!j) {
        proto_request_free(req);
        free(req);
        return;
    }
    j->conn = c, j->req = req;
    enqueue(j);
}

void d_submit_error(d_conn c, json_t *id, proto_code code, const char *msg) {
    job *j = calloc(1, sizeof *j);
    if (!j) {
        json_decref(id);
        return;
    }
    j->conn = c, j->id = id, j->code = code, j->msg = strdup(msg);
    enqueue(j);
}

void d_worker_wake(void) {
    pthread_mutex_lock(&W.mu);
    W.wake = 1;
    pthread_cond_signal(&W.cv);
    pthread_mutex_unlock(&W.mu);
}

void d_conn_closed(d_conn c) {
    (void)c; /* the worker sees d_conn_alive turn false at its next look */
    d_worker_wake();
}

void d_worker_stop(void) {
    pthread_mutex_lock(&W.mu);
    W.stop = 1;
    pthread_cond_signal(&W.cv);
    pthread_mutex_unlock(&W.mu);
}

void d_worker_join(void) {
    pthread_join(W.th, NULL);
    json_decref(W.model_info);
    dsa_indexer_free(W.ix);
    free(W.ix_path);
    dsa_pool_free(W.pool);
    free(W.batch_logits);
    dsa_model_free(W.m);
    memset(&W.m, 0, sizeof W.m);
}

/* ---- start-up ----------------------------------------------------------------------------------------------- */

static void load_progress(float f, void *ud) {
    (void)ud;
    static int last = -1;
    int pct = (int)(f * 100);
    if (pct / 25 != last / 25) d_log("loading the model: %d%%", pct);
    last = pct;
}

int d_worker_start(const d_options *o, char *err, size_t errlen) {
    W.o = *o;
    W.t_start = now_s();
    d_log("model %s", o->model);
    if (dsa_model_load(o->model, &W.m, load_progress, NULL, err, errlen)) return -1;
    const dsa_hparams *hp = dsa_model_hparams(W.m);
    const char *cerr;
    if (!dsa_model_chat(W.m, &cerr)->kind) {
        snprintf(err, errlen, "%s: %s (the daemon serves chat models)", o->model, cerr);
        return -1;
    }
    W.n_vocab = hp->n_vocab;
    W.n_ctx = o->n_ctx > 0 ? o->n_ctx : hp->n_ctx_train;
    if (!o->dense) {
        W.ix_path = o->indexer ? strdup(o->indexer) : dsa_indexer_default_path(o->model);
        if (W.ix_path && dsa_indexer_load(W.ix_path, W.m, &W.ix, err, errlen)) return -1;
        if (W.ix) d_log("DSA indexer %s (k %d)", W.ix_path, W.ix->hp.top_k);
        else d_log("no DSA indexer for this model: dense attention");
    }
    if (ses_engine_fp_init(&W.fp, W.m, W.ix ? W.ix_path : NULL, err, errlen)) return -1;
    W.pool = dsa_pool_new(o->threads);
    W.batch_logits = malloc((size_t)D_MAX_CONN * W.n_vocab * sizeof *W.batch_logits);
    if (!W.pool || !W.batch_logits) return snprintf(err, errlen, "out of memory"), -1;
    if (ses_store_open(o->store, &W.st, err, errlen)) return -1;
    d_log("store %s", ses_store_dir(W.st));
    /* which backend a context gets: ask one */
    dsa_ctx *probe;
    dsa_backend be = DSA_BACKEND_AUTO;
    if (o->backend && dsa_backend_parse(o->backend, &be)) return snprintf(err, errlen, "--backend: '%s' is not auto, cpu or cuda", o->backend), -1;
    if (dsa_ctx_new_shared(W.m, 16, W.pool, &probe, err, errlen)) return -1;
    int rc = dsa_ctx_set_backend(probe, be, err, errlen);
    const char *backend = dsa_ctx_backend_name(probe);
    dsa_ctx_free(probe);
    if (rc) return -1;
    const char *path = dsa_model_path(W.m), *base = strrchr(path, '/');
    json_t *dsa = W.ix ? json_pack("{s:b,s:i,s:s,s:i,s:i,s:i}", "enabled", 1, "k", W.ix->hp.top_k, "indexer", W.ix_path,
                                   "heads", W.ix->hp.n_head, "dim", W.ix->hp.head_dim, "dense_layers",
                                   W.ix->hp.dense_layers)
                       : json_null();
    W.model_info = json_pack("{s:s,s:s,s:s,s:s,s:i,s:i,s:i,s:i,s:s,s:s,s:o}", "name", base ? base + 1 : path, "path",
                             path, "fingerprint", dsa_model_fingerprint(W.m), "arch",
                             hp->arch == DSA_ARCH_QWEN2 ? "qwen2" : "llama", "n_layer", hp->n_layer, "n_embd",
                             hp->n_embd, "n_vocab", hp->n_vocab, "n_ctx", W.n_ctx, "chat_template",
                             dsa_chat_kind_name(dsa_model_chat(W.m, NULL)->kind), "backend", backend, "dsa", dsa);
    d_log("backend %s, context %d tokens per session, %d thread(s)", backend, W.n_ctx, dsa_pool_size(W.pool));
    if (pthread_create(&W.th, NULL, worker_main, NULL)) return snprintf(err, errlen, "cannot start the worker"), -1;
    return 0;
}
