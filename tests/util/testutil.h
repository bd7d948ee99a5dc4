/* Small helpers shared by the C tests: a check macro that counts failures, the model and fixture paths. */
#ifndef DSA_TESTUTIL_H
#define DSA_TESTUTIL_H

#include <stdio.h>
#include <jansson.h>

extern int tu_failures;
extern int tu_checks;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        tu_checks++;                                                                       \
        if (!(cond)) {                                                                     \
            tu_failures++;                                                                 \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);      \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
        }                                                                                  \
    } while (0)

/* Path of the default model ($DSA_MODEL or the cache); exits 1 with the set-up command when it is missing. */
const char *tu_model_path(void);
/* Path of a file under tests/fixtures ($DSA_FIXTURES); static buffer. */
const char *tu_fixture(const char *name);
/* Load a JSON fixture; exits 1 on error. */
json_t *tu_load_json(const char *name);
/* Print a summary and return the process exit code (0 when no check failed). */
int tu_finish(const char *name);

#endif
