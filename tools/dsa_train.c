/*
 * dsa train-indexer: the dense warm-up (and optionally the sparse stage) of a DSA lightning indexer for a model,
 * with a progress bar, a CSV loss log, a PNG loss plot (gnuplot) and resumable checkpoints.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dsa_tool.h"

typedef struct {
    FILE *csv;
    double max_seconds;
    long max_tokens;
} train_ui;

static char *with_suffix(const char *path, const char *suffix) {
    size_t n = strlen(path);
    if (n > 5 && !strcmp(path + n - 5, ".gguf")) n -= 5;
    char *p = malloc(n + strlen(suffix) + 1);
    if (!p) die(1, "out of memory");
    memcpy(p, path, n);
    strcpy(p + n, suffix);
    return p;
}

static void fmt_time(double s, char *out, size_t n) {
    if (s < 0 || s > 1e7) snprintf(out, n, "--:--");
    else if (s >= 3600) snprintf(out, n, "%d:%02d:%02d", (int)s / 3600, (int)s / 60 % 60, (int)s % 60);
    else snprintf(out, n, "%02d:%02d", (int)s / 60, (int)s % 60);
}

static void on_report(const dsa_train_report *r, void *ud) {
    train_ui *ui = ud;
    if (ui->csv) {
        fprintf(ui->csv, "%ld,%ld,%.1f,%.5f,", r->seq, r->tokens, r->elapsed, r->loss);
        if (r->heldout_loss >= 0) fprintf(ui->csv, "%.5f", r->heldout_loss);
        for (int l = 0; l < r->n_layer; l++) fprintf(ui->csv, ",%.5f", r->layer_loss[l]);
        fputc('\n', ui->csv);
        fflush(ui->csv);
    }
    double f = 0;
    if (ui->max_tokens > 0) f = (double)r->tokens / ui->max_tokens;
    if (ui->max_seconds > 0 && r->elapsed / ui->max_seconds > f) f = r->elapsed / ui->max_seconds;
    if (f > 1) f = 1;
    double rate = r->elapsed > 0 ? r->tokens / r->elapsed : 0;
    char el[32], eta[32], held[48] = "";
    fmt_time(r->elapsed, el, sizeof el);
    fmt_time(f > 0 ? r->elapsed * (1 - f) / f : -1, eta, sizeof eta);
    if (r->heldout_loss >= 0) snprintf(held, sizeof held, " held-out %.4f", r->heldout_loss);
    if (tty_progress) {
        char bar[31];
        int w = (int)(f * 30);
        for (int i = 0; i < 30; i++) bar[i] = i < w ? '#' : '.';
        bar[30] = 0;
        fprintf(stderr, "\r\033[K[%s] %3.0f%% seq %ld  KL %.4f%s  %.0f tok/s  %s  ETA %s", bar, f * 100, r->seq,
                r->loss, held, rate, el, eta);
        if (r->final) fputc('\n', stderr);
    } else if (r->final || r->seq % 10 == 0 || r->heldout_loss >= 0) {
        fprintf(stderr, "seq %ld tokens %ld KL %.4f%s %.0f tok/s elapsed %s ETA %s\n", r->seq, r->tokens, r->loss, held,
                rate, el, eta);
    }
}

/* The loss curve as a PNG: gnuplot reads the CSV (training KL per sequence and the held-out points). */
static void plot(const char *csv, const char *png) {
    char script[] = "/tmp/dsa-plot-XXXXXX";
    int fd = mkstemp(script);
    if (fd < 0) return;
    FILE *f = fdopen(fd, "w");
    fprintf(f,
            "set terminal png size 900,540\nset output '%s'\nset datafile separator ','\n"
            "set key autotitle columnhead\nset xlabel 'training tokens'\nset ylabel 'KL(p || softmax(I)), nats'\n"
            "set title 'DSA indexer warm-up'\nset grid\nset logscale y\n"
            "plot '%s' using 2:4 with lines title 'training (mean over layers)', "
            "'' using 2:($5 > 0 ? $5 : 1/0) with linespoints pt 7 title 'held-out'\n",
            png, csv);
    fclose(f);
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", 1);
        if (devnull >= 0) dup2(devnull, 2);
        execlp("gnuplot", "gnuplot", script, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    if (pid > 0) waitpid(pid, &st, 0);
    unlink(script);
    if (pid < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fprintf(stderr, "dsa: could not draw %s (is gnuplot installed? apt-get install gnuplot-nox)\n", png);
}

int cmd_train(const opts *o_) {
    opts o = *o_;
    o.dense = 1; /* the model is frozen and attends densely: the targets are its real attention */
    o.indexer = NULL;
    int topk = o.topk_dsa > 0 ? o.topk_dsa : 512;
    o.topk_dsa = 0;
    dsa_model *m = load_model(&o);
    const dsa_hparams *hp = dsa_model_hparams(m);
    char dcorp[4200], dheld[4200];
    snprintf(dcorp, sizeof dcorp, "%s/corpus/train", cache_dir());
    snprintf(dheld, sizeof dheld, "%s/corpus/heldout", cache_dir());
    struct stat sb;
    const char *corpus = o.corpus ? o.corpus : dcorp;
    const char *held = o.heldout ? o.heldout : (stat(dheld, &sb) == 0 ? dheld : NULL);
    if (o.heldout && !strcmp(o.heldout, "none")) held = NULL;
    char *out = o.out ? strdup(o.out) : with_suffix(dsa_model_path(m), ".dsa.gguf");
    char *ckpt = o.checkpoint ? strdup(o.checkpoint) : with_suffix(out, ".ckpt");
    char *log = o.log ? strdup(o.log) : with_suffix(out, ".train.csv");
    char *png = o.plot ? strdup(o.plot) : with_suffix(out, ".train.png");
    if (!out || !ckpt || !log || !png) die(1, "out of memory");
    if (o.max_tokens <= 0 && o.minutes <= 0)
        die(2, "train-indexer: say how long to train with --tokens N or --minutes M");

    buf cmdline = {0};
    buf_put(&cmdline, "dsa", 3);
    for (int i = 1; i < o.argc; i++) {
        buf_put(&cmdline, " ", 1);
        buf_put(&cmdline, o.argv[i], strlen(o.argv[i]));
    }
    dsa_train_opts to = {0};
    to.corpus = corpus;
    to.heldout = held;
    to.out = out;
    to.checkpoint = ckpt;
    to.init = o.init;
    to.command = cmdline.p;
    to.hp.n_head = o.heads;
    to.hp.head_dim = o.dim;
    to.hp.rope_dim = o.rope_dims;
    to.hp.rope_base = hp->rope_base;
    to.hp.top_k = topk;
    to.hp.norm_eps = 1e-6f;
    to.hp.dense_layers = o.dense_layers > 0 ? o.dense_layers : 0;
    to.seq_len = o.seq_len;
    to.rows_per_step = o.rows;
    to.max_tokens = o.max_tokens;
    to.max_seconds = o.minutes * 60;
    to.lr = (float)o.lr;
    to.sparse_k = o.sparse_stage ? topk : 0;
    to.seed = o.sp.seed ? o.sp.seed : 1;
    to.n_threads = o.threads;
    to.checkpoint_every = o.ckpt_every;
    to.heldout_every = o.heldout_every;
    char err[1024];
    if (dsa_indexer_hp_check(&to.hp, err, sizeof err)) die(2, "%s", err);

    /* the log continues when a checkpoint is resumed, and starts over otherwise */
    int resume = stat(ckpt, &sb) == 0;
    int log_has_rows = resume && stat(log, &sb) == 0 && sb.st_size > 0;
    FILE *csv = fopen(log, resume ? "a" : "w");
    if (!csv) die(1, "%s: %s", log, strerror(errno));
    if (!log_has_rows) {
        fprintf(csv, "seq,tokens,elapsed_s,train_kl,heldout_kl");
        for (int l = 0; l < hp->n_layer; l++) fprintf(csv, ",kl_layer%d", l);
        fputc('\n', csv);
    }
    if (!o.json)
        fprintf(stderr,
                "training a DSA indexer for %s: %d heads × %d dims (RoPE on %d), k %d, sequences of %d tokens, "
                "%d query rows per step%s%s\n  corpus %s%s%s\n  writes %s (checkpoint %s, log %s)\n",
                dsa_model_path(m), o.heads, o.dim, o.rope_dims, topk, o.seq_len, o.rows,
                o.sparse_stage ? ", sparse stage" : "", resume ? ", resuming" : "", corpus, held ? ", held-out " : "",
                held ? held : "", out, ckpt, log);
    train_ui ui = {csv, to.max_seconds, to.max_tokens};
    double t0 = now_s();
    int rc = dsa_train_indexer(m, &to, on_report, &ui, err, sizeof err);
    fclose(csv);
    if (rc) die(1, "train-indexer: %s", err);
    plot(log, png);
    if (o.json)
        print_json(json_pack("{s:s,s:s,s:s,s:f}", "indexer", out, "log", log, "plot", png, "seconds", now_s() - t0));
    else
        fprintf(stderr, "wrote %s (loss log %s, plot %s)\n", out, log, png);
    free(cmdline.p);
    free(out), free(ckpt), free(log), free(png);
    dsa_model_free(m);
    return 0;
}
