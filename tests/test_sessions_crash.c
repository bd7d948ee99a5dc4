/*
 * Crash injection: a child process appends turns to sessions of a store -- each turn puts engine-shaped synthetic
 * state (st_fill: K/V f16 rows and FP8 indexer keys + scales of a tiny model's context, written with
 * dsa_ctx_cache_put) for its new tokens into a real dsa_ctx and commits it with two messages through
 * ses_commit_turn, exactly as the daemon will -- and is SIGKILLed, ITERS times:
 *   - odd iterations: by the parent, after a random delay (inside record writes, fsyncs, SQLite commits, ...);
 *   - even iterations: by itself, at a random one of the commit's steps (after a record write, between the fsync
 *     and the database transaction, after the transaction but before it told the parent).
 * After each kill the parent opens the store and every session the child touched: each passes ses_check, restores
 * without a rebuild, holds exactly the state of its committed turns (bit for bit, every layer, every position), and
 * its turn count is what the child acknowledged, or one more (killed between the commit and the acknowledgement).
 * At the end every session of the store is checked again.
 */
#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include "sessions_util.h"

#define ITERS 220
#define N_CTX 512
#define MAX_SESSIONS 4096

static char err[1024];
static uint64_t rng = 12345;
static int hook_countdown; /* the child dies at this hook call (0: never) */
static int hook_kills[3];  /* by point, seen by the parent through the exit status + pipe */

/* Turn k of session id: its length, and the stream seed of its tokens and state. */
static int turn_len(int64_t id, int k) { return 5 + (int)(st_mix((uint64_t)id, (uint64_t)k) % 120); }
static uint64_t seed_of(int64_t id) { return st_mix(0xC0FFEE, (uint64_t)id); }

static void die_at_hook(const char *point) {
    if (hook_countdown > 0 && --hook_countdown == 0) {
        /* tell the parent where (one byte; the pipe is fd 3 in the child, see child()) */
        char c = point[0];
        if (write(3, &c, 1) < 0) _exit(9);
        raise(SIGKILL);
    }
}

/* The child: append turns forever (until killed).  After each commit: "A <id> <turns>\n" on fd 3. */
static void child(const char *dir, st_engine *e) {
    ses_test_hook = die_at_hook;
    ses_store *st;
    if (ses_store_open(dir, &st, err, sizeof err)) {
        fprintf(stderr, "child: %s\n", err);
        _exit(2);
    }
    dsa_ctx *c = st_ctx(e, N_CTX);
    for (;;) {
        ses_info *list;
        int n;
        if (ses_list(st, &list, &n, err, sizeof err)) _exit(3);
        int64_t id = 0;
        int turns = 0;
        for (int i = 0; i < n; i++)
            if (list[i].id > id) {
                id = list[i].id;
                turns = list[i].n_messages / 2;
            }
        ses_list_free(list, n);
        int pos = 0;
        for (int k = 0; k < turns; k++) pos += turn_len(id, k);
        if (!id || pos + turn_len(id, turns) > N_CTX) {
            if (ses_create(st, NULL, NULL, &id, err, sizeof err)) _exit(4);
            turns = 0;
            pos = 0;
        }
        int len = turn_len(id, turns);
        uint64_t seed = seed_of(id);
        int32_t ids[N_CTX];
        for (int t = 0; t < pos + len; t++) ids[t] = st_token(seed, t);
        dsa_ctx_truncate(c, 0);
        st_fill(c, seed, 0, pos + len);
        char u[64], a[64];
        snprintf(u, sizeof u, "user %lld:%d", (long long)id, turns);
        snprintf(a, sizeof a, "assistant %lld:%d", (long long)id, turns);
        int mid = pos + len / 2;
        ses_message m[2] = {{.role = "user", .content = u, .tok_start = pos, .tok_end = mid},
                            {.role = "assistant", .content = a, .tok_start = mid, .tok_end = pos + len}};
        ses_session *s;
        if (ses_open(st, id, &s, err, sizeof err) ||
            ses_commit_turn(s, c, &e->fp, ids, pos + len, m, 2, err, sizeof err)) {
            fprintf(stderr, "child: %s\n", err);
            _exit(5);
        }
        ses_close(s);
        char line[64];
        int k = snprintf(line, sizeof line, "A %lld %d\n", (long long)id, turns + 1);
        if (write(3, line, (size_t)k) != k) _exit(6);
    }
}

/* Check one session: 0 and *turns, or -1 (a failed check was reported). */
static int verify(ses_store *st, st_engine *e, dsa_ctx *c, int64_t id, int *turns) {
    ses_check_report rep;
    if (ses_check(st, id, &rep, err, sizeof err)) {
        CHECK(0, "session %lld: check: %s", (long long)id, err);
        return -1;
    }
    CHECK(rep.ok, "session %lld: %s", (long long)id, rep.problem);
    ses_message *m;
    int n;
    if (ses_messages(st, id, &m, &n, err, sizeof err)) {
        CHECK(0, "messages: %s", err);
        return -1;
    }
    int bad = n % 2, pos = 0;
    for (int i = 0; i + 1 < n && !bad; i += 2) {
        char u[64], a[64];
        snprintf(u, sizeof u, "user %lld:%d", (long long)id, i / 2);
        snprintf(a, sizeof a, "assistant %lld:%d", (long long)id, i / 2);
        int len = turn_len(id, i / 2);
        bad = strcmp(m[i].content, u) || strcmp(m[i + 1].content, a) || m[i].tok_start != pos ||
              m[i + 1].tok_end != pos + len;
        pos += len;
    }
    ses_messages_free(m, n);
    CHECK(!bad, "session %lld: messages are not whole turns in order (%d)", (long long)id, n);
    CHECK(rep.committed == pos, "session %lld: %d tokens committed, its %d turns have %d", (long long)id,
          rep.committed, n / 2, pos);
    /* it opens, restores without a rebuild, and holds exactly the turns' state */
    ses_session *s;
    ses_restore_info info;
    if (ses_open(st, id, &s, err, sizeof err) || ses_restore(s, c, &e->fp, NULL, 0, &info, err, sizeof err)) {
        CHECK(0, "session %lld: restore: %s", (long long)id, err);
        return -1;
    }
    int nt;
    const int32_t *tk = ses_tokens(s, &nt);
    int ids_ok = nt == pos;
    for (int t = 0; t < nt && ids_ok; t++) ids_ok = tk[t] == st_token(seed_of(id), t);
    ses_close(s);
    CHECK(!info.rebuilt && info.reused == pos, "session %lld: rebuilt %d (%s), reused %d of %d", (long long)id,
          info.rebuilt, info.reason, info.reused, pos);
    CHECK(ids_ok, "session %lld: wrong token ids", (long long)id);
    CHECK(st_verify(c, seed_of(id), pos), "session %lld: the restored state differs from the committed turns",
          (long long)id);
    *turns = n / 2;
    return bad ? -1 : 0;
}

int main(void) {
    char *dir = st_tmpdir("ses-crash");
    st_engine e;
    st_engine_load(&e, NULL);
    dsa_ctx *c = st_ctx(&e, N_CTX);
    static int known[MAX_SESSIONS]; /* verified turns per session id */
    int64_t max_id = 0;
    int timer_kills = 0, self_kills = 0, acks_total = 0, unacked_commits = 0;
    double t_start = (double)clock() / CLOCKS_PER_SEC;
    struct timespec w0;
    clock_gettime(CLOCK_MONOTONIC, &w0);
    for (int it = 0; it < ITERS && !tu_failures; it++) {
        int pfd[2];
        if (pipe(pfd)) {
            perror("pipe");
            return 1;
        }
        int self = it % 2 == 0;
        /* hook calls per commit: 1-8 writes, one fsync, one commit; aim anywhere in the first few commits */
        int countdown = self ? 1 + (int)(tu_splitmix(&rng) % 24) : 0;
        useconds_t delay = (useconds_t)(tu_splitmix(&rng) % 60000);
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) {
            close(pfd[0]);
            if (dup2(pfd[1], 3) < 0) _exit(7);
            hook_countdown = countdown;
            child(dir, &e);
        }
        close(pfd[1]);
        if (!self) {
            usleep(delay);
            kill(pid, SIGKILL);
        }
        int status;
        waitpid(pid, &status, 0);
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "iteration %d: the child was not killed (status %d)",
              it, status);
        /* what the child acknowledged */
        char buf[65536];
        size_t len = 0;
        ssize_t k;
        while ((k = read(pfd[0], buf + len, sizeof buf - 1 - len)) > 0) len += (size_t)k;
        buf[len] = 0;
        close(pfd[0]);
        static int acked[MAX_SESSIONS];
        int64_t lo = max_id ? max_id : 1, hi = max_id;
        char where = 0;
        for (char *p = buf; *p;) {
            long long id;
            int turns, used;
            if (sscanf(p, "A %lld %d\n%n", &id, &turns, &used) == 2 && id > 0 && id < MAX_SESSIONS) {
                acked[id] = turns;
                if (id > hi) hi = id;
                acks_total++;
                p += used;
            } else {
                where = *p++;
            }
        }
        if (self) {
            self_kills++;
            hook_kills[where == 'w' ? 0 : where == 'f' ? 1 : 2] += where != 0;
        } else {
            timer_kills++;
        }
        /* every session the child could have touched: the last one before, and any it created */
        ses_store *st;
        if (ses_store_open(dir, &st, err, sizeof err)) {
            CHECK(0, "iteration %d: open: %s", it, err);
            break;
        }
        ses_info *list;
        int n;
        if (ses_list(st, &list, &n, err, sizeof err)) {
            CHECK(0, "list: %s", err);
            break;
        }
        int extra = 0;
        for (int i = 0; i < n; i++) {
            int64_t id = list[i].id;
            if (id < lo) continue;
            if (id >= MAX_SESSIONS) {
                CHECK(0, "too many sessions");
                break;
            }
            int turns;
            if (verify(st, &e, c, id, &turns)) continue;
            CHECK(turns >= known[id], "session %lld lost turns: %d < %d", (long long)id, turns, known[id]);
            CHECK(turns >= acked[id], "session %lld: %d turns, %d acknowledged", (long long)id, turns, acked[id]);
            extra += turns - (acked[id] > known[id] ? acked[id] : known[id]);
            known[id] = turns;
            if (id > max_id) max_id = id;
        }
        CHECK(extra <= 1, "iteration %d: %d committed turns beyond the acknowledged ones", it, extra);
        unacked_commits += extra;
        ses_list_free(list, n);
        ses_store_close(st);
    }
    /* the whole store, once more */
    ses_store *st;
    int n_sessions = 0, turns_total = 0;
    if (ses_store_open(dir, &st, err, sizeof err) == 0) {
        ses_info *list;
        int n;
        if (ses_list(st, &list, &n, err, sizeof err) == 0) {
            for (int i = 0; i < n; i++) {
                int turns;
                if (verify(st, &e, c, list[i].id, &turns) == 0) {
                    CHECK(turns == known[list[i].id], "session %lld changed", (long long)list[i].id);
                    turns_total += turns;
                }
            }
            n_sessions = n;
            ses_list_free(list, n);
        }
        ses_store_close(st);
    } else {
        CHECK(0, "final open: %s", err);
    }
    struct timespec w1;
    clock_gettime(CLOCK_MONOTONIC, &w1);
    printf("%d kills (%d by timer, %d at a commit step: %d after a write, %d after the fsync, %d after the commit), "
           "%d sessions, %d turns, %d acknowledged, %d committed but unacknowledged; %.1f s (%.1f s CPU in the parent)\n",
           timer_kills + self_kills, timer_kills, self_kills, hook_kills[0], hook_kills[1], hook_kills[2], n_sessions,
           turns_total, acks_total, unacked_commits,
           (double)(w1.tv_sec - w0.tv_sec) + (w1.tv_nsec - w0.tv_nsec) * 1e-9,
           (double)clock() / CLOCKS_PER_SEC - t_start);
    CHECK(timer_kills + self_kills >= 200, "only %d kills", timer_kills + self_kills);
    CHECK(hook_kills[0] > 0 && hook_kills[1] > 0 && hook_kills[2] > 0, "not every commit step was hit");
    CHECK(turns_total > 0, "no turns committed at all");
    dsa_ctx_free(c);
    st_engine_free(&e);
    st_rmdir(dir);
    return tu_finish("test_sessions_crash");
}
