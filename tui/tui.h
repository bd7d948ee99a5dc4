/* Internal to dsachat: what main.c dispatches to. */
#ifndef DSACHAT_TUI_H
#define DSACHAT_TUI_H

#include "client.h"

/* Exit statuses of the subcommands (dsachat(1), EXIT STATUS). */
enum {
    DC_EXIT_OK = 0,
    DC_EXIT_DAEMON = 1,  /* the daemon answered with an error */
    DC_EXIT_USAGE = 2,
    DC_EXIT_CONNECT = 3, /* no daemon, and none could be started */
    DC_EXIT_CUT = 4,     /* the reply stopped for another reason than eos or length */
};

/* The subcommands (cli.c): argv[0] is the subcommand's name. */
int cli_send(const dc_opts *o, int argc, char **argv);
int cli_ls(const dc_opts *o, int argc, char **argv);
int cli_history(const dc_opts *o, int argc, char **argv);
int cli_rm(const dc_opts *o, int argc, char **argv);

/* The curses client (ui.c); session is the one to open first (NULL: the most recent). */
int ui_main(const dc_opts *o, const char *session);

#endif
