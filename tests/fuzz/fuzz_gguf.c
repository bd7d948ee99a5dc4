/*
 * libFuzzer target for the GGUF reader: parse the input, then walk everything the parser vouched for
 * (every key, every string of every string array, every numeric array element, every tensor's bytes), so
 * a bound the parser forgot to check shows up as an ASan report here.
 *
 *   cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DDSA_FUZZ=ON -DDSA_CUDA=OFF
 *   cmake --build build-fuzz --target fuzz_gguf
 *   build-fuzz/tests/fuzz_gguf -runs=1000000 tests/fuzz/corpus/gguf
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    gguf_file *f;
    char err[512];
    /* a private copy, so reads past `size` hit ASan's redzone instead of the fuzzer's neighbouring bytes */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) return 0;
    memcpy(copy, data, size);
    if (gguf_parse(copy, size, &f, err, sizeof err) == 0) {
        volatile unsigned sink = 0;
        for (uint64_t i = 0; i < f->n_kv; i++) {
            const gguf_kv *kv = &f->kv[i];
            for (uint64_t k = 0; k < kv->key.len; k++) sink += (unsigned char)kv->key.ptr[k];
            if (kv->type == GGUF_ARRAY && kv->arr_type == GGUF_STRING && kv->arr_n < (1u << 20)) {
                dsa_str *s = malloc((kv->arr_n ? kv->arr_n : 1) * sizeof *s);
                if (s && gguf_arr_strs(kv, s) == 0)
                    for (uint64_t j = 0; j < kv->arr_n; j++)
                        if (s[j].len) sink += (unsigned char)s[j].ptr[s[j].len - 1];
                free(s);
            } else if (kv->type == GGUF_ARRAY) {
                for (uint64_t j = 0; j < kv->arr_n && j < 4096; j++) sink += (unsigned)gguf_arr_int(kv, j);
            }
        }
        dsa_str s;
        if (gguf_get_str(f, "general.architecture", &s) == 0 && s.len) sink += (unsigned char)s.ptr[s.len - 1];
        for (uint64_t i = 0; i < f->n_tensors; i++) {
            const gguf_tensor *t = &f->tensors[i];
            if (t->nbytes) sink += ((const uint8_t *)t->data)[0] + ((const uint8_t *)t->data)[t->nbytes - 1];
        }
        (void)sink;
        gguf_close(f);
    } else if (!memchr(err, 0, sizeof err) || strchr(err, '\n')) {
        abort(); /* the error must be one terminated line */
    }
    free(copy);
    return 0;
}
