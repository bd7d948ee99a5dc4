/* Small helpers shared by the C tests: a check macro that counts failures, the model and fixture paths. */
#ifndef DSA_TESTUTIL_H
#define DSA_TESTUTIL_H

#include <stdint.h>
#include <stdio.h>
#include <jansson.h>

#include "kernels.h"

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
/* base64 of little-endian float32 (as the fixture scripts write logits) -> malloc'd floats, *n the count;
 * NULL when malformed. */
float *tu_b64_floats(const char *b64, size_t *n);
/* A JSON array of integers -> malloc'd ids, *n the count. */
int32_t *tu_json_ids(const json_t *arr, int *n);
/* Index of the largest of x[0..n) (the first on ties), and top1 - top2. */
int tu_argmax(const float *x, int n);
double tu_top_gap(const float *x, int n);

/* splitmix64: the tests' random numbers, the same on every platform; advances *state. */
uint64_t tu_splitmix(uint64_t *state);

/* Every type the kernels accept as a weight (traits is_weight), in type-id order; returns the count. */
int tu_weight_types(enum dsa_type out[DSA_TYPE_COUNT]);

/* Print a summary and return the process exit code (0 when no check failed). */
int tu_finish(const char *name);

#endif
