#include "dsa_tool.h"
int cmd_eval(const opts *o, int argc, char **argv) {
    (void)o, (void)argc, (void)argv;
    die(1, "eval: not written yet");
}
