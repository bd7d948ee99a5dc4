/* Private to engine/: small helpers every engine file uses (the one-line error, the clock, splitmix64). */
#ifndef DSA_ENGINE_UTIL_H
#define DSA_ENGINE_UTIL_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

/* Format a one-line error into err (when given) and return -1, so that `return errf(...)` reads as the failure. */
__attribute__((format(printf, 3, 4), unused)) static int errf(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (err && errlen) vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* Monotonic seconds. */
static inline double dsa_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* splitmix64: advances *s, returns 64 well-mixed bits. */
static inline uint64_t dsa_splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

#endif
