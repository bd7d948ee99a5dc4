/*
 * dsachat: the chat client of dsachatd.  Without a subcommand it is the curses TUI (ui.c); with one (send, ls,
 * history, rm) it is a non-interactive client for scripts (cli.c).  Either way it only speaks the socket protocol
 * (client.c) and starts the daemon when none is running.
 */
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tui.h"

#ifndef DSA_VERSION
#define DSA_VERSION "0"
#endif

static void usage(FILE *f) {
    fprintf(f,
            "usage: dsachat [options] [-s SESSION]          the chat TUI (-s NAME: that session, new if none has\n"
            "                                               the name)\n"
            "       dsachat [options] send [-s SESSION | --new [NAME]] [--system TEXT] [--temp T]\n"
            "                              [-n|--max-tokens N] [--json] [TEXT | -]\n"
            "       dsachat [options] ls [--json]\n"
            "       dsachat [options] history SESSION [--json]\n"
            "       dsachat [options] rm SESSION [--json]\n"
            "options:\n"
            "  --socket PATH       the daemon's socket (default $XDG_RUNTIME_DIR/dsachat/dsachatd.sock,\n"
            "                      else /tmp/dsachat-$UID/dsachatd.sock)\n"
            "  --no-spawn          never start dsachatd; fail (exit 3) when it is not running\n"
            "  --daemon-arg ARG    pass ARG to dsachatd when starting it (repeatable; also $DSACHAT_DAEMON_ARGS)\n"
            "  -h, --help          this help;  --version  the version\n"
            "exit status: 0 ok, 1 the daemon answered with an error, 2 usage, 3 no daemon (and none could be\n"
            "started), 4 the reply was cut off.  man dsachat has the keys and commands of the TUI.\n");
}

/* $DSACHAT_DAEMON_ARGS split on blanks into *store (the words point into *copy, for the caller to free). */
static int add_env_dargs(dc_opts *o, char ***store, char **copy) {
    const char *env = getenv("DSACHAT_DAEMON_ARGS");
    if (!env || !*env) return 0;
    char *save = NULL;
    if (!(*copy = strdup(env))) return -1;
    for (char *t = strtok_r(*copy, " \t\n", &save); t; t = strtok_r(NULL, " \t\n", &save)) {
        char **a = realloc(*store, sizeof **store * (size_t)(o->ndargs + 1));
        if (!a) return -1;
        *store = a;
        a[o->ndargs++] = t;
    }
    o->dargs = *store;
    return 0;
}

int main(int argc, char **argv) {
    setlocale(LC_ALL, "");
    dc_opts o = {0};
    char **dargs = NULL, *env_copy = NULL;
    const char *session = NULL;
    int rc = 0, i = 1;
    if (add_env_dargs(&o, &dargs, &env_copy)) {
        fprintf(stderr, "dsachat: out of memory\n");
        rc = 1;
        goto out;
    }
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--socket") && i + 1 < argc) {
            o.socket = argv[++i];
        } else if (!strncmp(a, "--socket=", 9)) {
            o.socket = a + 9;
        } else if (!strcmp(a, "--no-spawn")) {
            o.no_spawn = 1;
        } else if (!strcmp(a, "--daemon-arg") && i + 1 < argc) {
            char **d = realloc(dargs, sizeof *dargs * (size_t)(o.ndargs + 1));
            if (!d) {
                fprintf(stderr, "dsachat: out of memory\n");
                rc = 1;
                goto out;
            }
            dargs = d;
            dargs[o.ndargs++] = argv[++i];
            o.dargs = dargs;
        } else if ((!strcmp(a, "-s") || !strcmp(a, "--session")) && i + 1 < argc) {
            session = argv[++i];
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            rc = 0;
            goto out;
        } else if (!strcmp(a, "--version")) {
            printf("dsachat %s\n", DSA_VERSION);
            rc = 0;
            goto out;
        } else {
            fprintf(stderr, "dsachat: unknown option or missing value: %s (see dsachat --help)\n", a);
            rc = DC_EXIT_USAGE;
            goto out;
        }
    }
    if (i == argc) {
        if (!isatty(0) || !isatty(1)) {
            fprintf(stderr, "dsachat: the TUI needs a terminal; for scripts see the subcommands (dsachat --help)\n");
            rc = DC_EXIT_USAGE;
        } else {
            rc = ui_main(&o, session);
        }
    } else if (session) {
        fprintf(stderr, "dsachat: -s before a subcommand: give it after it (dsachat send -s SESSION)\n");
        rc = DC_EXIT_USAGE;
    } else if (!strcmp(argv[i], "send")) {
        rc = cli_send(&o, argc - i, argv + i);
    } else if (!strcmp(argv[i], "ls")) {
        rc = cli_ls(&o, argc - i, argv + i);
    } else if (!strcmp(argv[i], "history")) {
        rc = cli_history(&o, argc - i, argv + i);
    } else if (!strcmp(argv[i], "rm")) {
        rc = cli_rm(&o, argc - i, argv + i);
    } else {
        fprintf(stderr, "dsachat: unknown command '%s' (send, ls, history, rm; see dsachat --help)\n", argv[i]);
        rc = DC_EXIT_USAGE;
    }
out:
    free(dargs);
    free(env_copy);
    return rc;
}
