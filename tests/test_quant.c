/*
 * Tensor type kernels (kernels/cpu/quant*.c):
 *  1. the plain-C dequantisers reproduce the gguf package's numpy dequantiser bit for bit
 *     (fixtures from scripts/ref/make_quant_fixtures.py);
 *  2. every vec_dot, at every SIMD level this CPU has, agrees with the plain-C one, and the plain-C one agrees
 *     with a float64 dot product of the dequantised weights and activations;
 *  3. activation quantisation (q8_1, q8_K) round-trips within half a step, its s/bsums fields are right, and
 *     the SIMD versions produce the same bytes;
 *  4. edge cases: all-zero blocks, extreme quant values, a single block, odd block counts, unaligned rows;
 *  5. half-float conversion on all 65536 patterns and on float rounding boundaries; traits, names, dispatch.
 *
 * Bounds.  A float sum of T terms (blocks) carries at most about (T + c)·ε·M of rounding, where ε = 2^-24 and M
 * is the sum of the magnitudes of everything added (for types with a minimum, the scaled part and the minimum
 * part count separately: they are summed apart and may cancel).  c = 8 covers the few roundings inside each
 * block term.  Plain C vs float64: (T + 8)·ε·M.  SIMD vs plain C: both are off by that much, so 2·(T + 8)·ε·M.
 */
#include "kernels.h"
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_X86 1
#endif

static const enum dsa_type WTYPES[] = {DSA_F32,  DSA_F16,  DSA_BF16, DSA_Q4_0, DSA_Q4_1, DSA_Q5_0,
                                       DSA_Q5_1, DSA_Q8_0, DSA_Q4_K, DSA_Q5_K, DSA_Q6_K};
#define NWTYPES (int)(sizeof WTYPES / sizeof WTYPES[0])
static const char *const LEVELS[4] = {"", "generic", "avx2", "avx512"};
static int g_max_level; /* highest level this CPU runs */
static double g_worst[DSA_TYPE_COUNT][2]; /* largest error/bound seen: [0] plain C vs float64, [1] SIMD vs C */

/* ---- random numbers (splitmix64: small, and the same on every platform) --------------------------------- */
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) { return tu_splitmix(&g_rng); }
static float uniform(float lo, float hi) { return lo + (hi - lo) * (float)(rnd() >> 40) * 0x1p-24f; }

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static float f16_scale(void) { return uniform(1, 2) * ldexpf(1, (int)(rnd() % 7) - 10); } /* 2^-10 .. 2^-3 */

/* Byte offsets of the f16 scale (d) fields and of the signed-or-not minimum fields inside each block. */
static int d_offset(enum dsa_type t) { return t == DSA_Q6_K ? 208 : 0; }
static int m_offset(enum dsa_type t) {
    return t == DSA_Q4_1 || t == DSA_Q5_1 || t == DSA_Q4_K || t == DSA_Q5_K ? 2 : -1;
}
/* Bytes [lo, hi) of a block that hold quants (zeroing them leaves only the block's minimum), for bounds. */
static void quant_bytes(enum dsa_type t, int *lo, int *hi) {
    *lo = *hi = 0;
    if (t == DSA_Q4_1) *lo = 4, *hi = 20;
    if (t == DSA_Q5_1) *lo = 4, *hi = 24; /* qh and qs */
    if (t == DSA_Q4_K) *lo = 16, *hi = 144;
    if (t == DSA_Q5_K) *lo = 16, *hi = 176;
}

/* A random row of n weights of type t: random bytes, then finite scales. */
static void random_weights(enum dsa_type t, uint8_t *w, int64_t n) {
    const dsa_type_traits *tt = dsa_traits_ref(t);
    size_t size = dsa_row_size(t, n);
    for (size_t i = 0; i < size; i++) w[i] = (uint8_t)rnd();
    for (int64_t i = 0; i < n; i++) {
        float v = uniform(-1, 1);
        uint32_t u;
        memcpy(&u, &v, 4);
        if (t == DSA_F32) memcpy(w + 4 * i, &v, 4);
        if (t == DSA_F16) put16(w + 2 * i, dsa_f32_to_f16(v));
        if (t == DSA_BF16) put16(w + 2 * i, (uint16_t)(u >> 16));
    }
    if (tt->blck == 1) return;
    for (int64_t b = 0; b < n / tt->blck; b++) {
        uint8_t *blk = w + b * tt->type_size;
        put16(blk + d_offset(t), dsa_f32_to_f16(f16_scale()));
        if (m_offset(t) >= 0)
            put16(blk + m_offset(t), dsa_f32_to_f16(t == DSA_Q4_1   ? -uniform(0, 1) * f16_scale() * 8
                                                     : t == DSA_Q5_1 ? -uniform(0, 1) * f16_scale() * 16
                                                                     : f16_scale()));
    }
}

/* Activations whose size changes from block to block (so blocks get different d), with some outliers. */
static void random_acts(float *x, int n) {
    for (int i = 0; i < n; i++) x[i] = uniform(-1, 1) * ldexpf(1, (i / 32) % 9 - 4);
    for (int i = 0; i < n / 50; i++) x[rnd() % (uint64_t)n] *= 20;
}

static int level_ok(int level) {
    dsa_kernels_init(level);
    return strcmp(dsa_cpu_name(), LEVELS[level]) == 0;
}

/* ---- 1. dequantisers against gguf ----------------------------------------------------------------------- */

static void test_fixtures(void) {
    for (int k = 0; k < NWTYPES; k++) {
        enum dsa_type t = WTYPES[k];
        char name[32];
        snprintf(name, sizeof name, "quant/%s.bin", dsa_type_name(t));
        for (char *c = name; *c; c++) *c = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
        FILE *f = fopen(tu_fixture(name), "rb");
        CHECK(f != NULL, "fixture %s missing (scripts/ref/make_quant_fixtures.py)", tu_fixture(name));
        if (!f) continue;
        char magic[4];
        uint32_t h[5];
        int ok = fread(magic, 1, 4, f) == 4 && fread(h, 4, 5, f) == 5 && !memcmp(magic, "DSQF", 4) && h[0] == 1;
        CHECK(ok && h[1] == (uint32_t)t && h[4] == h[2] * dsa_row_size(t, h[3]), "%s: bad header", name);
        if (!ok || h[1] != (uint32_t)t || h[4] != h[2] * dsa_row_size(t, h[3])) {
            fclose(f);
            continue;
        }
        uint32_t rows = h[2], cols = h[3];
        uint8_t *raw = malloc(h[4]);
        float *want = malloc(sizeof(float) * rows * cols), *got = malloc(sizeof(float) * rows * cols);
        CHECK(fread(raw, 1, h[4], f) == h[4] && fread(want, sizeof(float), (size_t)rows * cols, f) == rows * cols,
              "%s: short file", name);
        fclose(f);
        size_t rs = dsa_row_size(t, cols);
        for (uint32_t r = 0; r < rows; r++) dsa_traits_ref(t)->to_float(raw + r * rs, got + r * cols, cols);
        int bad = 0, first = -1;
        for (size_t i = 0; i < (size_t)rows * cols; i++)
            if (memcmp(&got[i], &want[i], 4)) bad++, first = first < 0 ? (int)i : first;
        CHECK(bad == 0, "%s: %d of %u values differ from gguf, first [%d]: %.9g vs %.9g", name, bad, rows * cols,
              first, first >= 0 ? got[first] : 0, first >= 0 ? want[first] : 0);
        /* the dispatched to_float is the same function at every level */
        CHECK(dsa_traits(t)->to_float == dsa_traits_ref(t)->to_float, "%s: to_float", name);
        free(raw), free(want), free(got);
    }
}

/* ---- 2. dot products ------------------------------------------------------------------------------------- */

/* Checks one weight row w (n elements of type t) against activations x at every level. */
static void check_dot(enum dsa_type t, const uint8_t *w, const float *x, int n, const char *what) {
    const dsa_type_traits *rt = dsa_traits_ref(t), *ra = dsa_traits_ref(rt->act);
    size_t asz = dsa_row_size(rt->act, n) + 64, wsz = dsa_row_size(t, n);
    void *qa_ref = malloc(asz), *qa = malloc(asz);
    float *wf = malloc(sizeof(float) * n), *zf = malloc(sizeof(float) * n), *af = malloc(sizeof(float) * n);
    uint8_t *wz = malloc(wsz + 1);

    ra->from_float(x, qa_ref, n);
    rt->to_float(w, wf, n);
    ra->to_float(qa_ref, af, n);
    /* the block minima alone: the same blocks with their quants zeroed */
    int lo, hi;
    quant_bytes(t, &lo, &hi);
    memset(zf, 0, sizeof(float) * n);
    if (hi) {
        memcpy(wz, w, wsz);
        for (int b = 0; b < n / rt->blck; b++) memset(wz + b * rt->type_size + lo, 0, (size_t)(hi - lo));
        rt->to_float(wz, zf, n);
    }
    double exact = 0, mag = 0;
    for (int i = 0; i < n; i++) {
        exact += (double)wf[i] * af[i];
        mag += (fabs((double)wf[i] - zf[i]) + fabs((double)zf[i])) * fabs((double)af[i]);
    }
    int terms = rt->blck == 1 ? n : n / rt->blck;
    double tol = (terms + 8) * 0x1p-24 * mag;

    float r = rt->vec_dot(n, w, qa_ref);
    if (tol > 0) g_worst[t][0] = fmax(g_worst[t][0], fabs(r - exact) / tol);
    CHECK(fabs(r - exact) <= tol, "%s %s n=%d: plain C %.9g vs float64 %.9g (bound %.3g)", dsa_type_name(t), what,
          n, r, exact, tol);
    for (int level = 1; level <= g_max_level; level++) {
        dsa_kernels_init(level);
        const dsa_type_traits *st = dsa_traits(t), *sa = dsa_traits(rt->act);
        memset(qa, 0x5a, asz);
        sa->from_float(x, qa, n);
        CHECK(memcmp(qa, qa_ref, dsa_row_size(rt->act, n)) == 0, "%s %s n=%d: %s from_float differs",
              dsa_type_name(rt->act), what, n, LEVELS[level]);
        float v = st->vec_dot(n, w, qa);
        if (tol > 0) g_worst[t][1] = fmax(g_worst[t][1], fabs(v - r) / (2 * tol));
        CHECK(fabs(v - r) <= 2 * tol, "%s %s n=%d: %s %.9g vs plain C %.9g (bound %.3g)", dsa_type_name(t), what, n,
              LEVELS[level], v, r, 2 * tol);
        if (level == 1) CHECK(v == r, "%s: generic level is not the reference", dsa_type_name(t));
    }
    free(qa_ref), free(qa), free(wf), free(zf), free(af), free(wz);
}

static void test_dots(void) {
    for (int k = 0; k < NWTYPES; k++) {
        enum dsa_type t = WTYPES[k];
        int blck = dsa_traits_ref(t)->blck, qk = blck == 1 ? 32 : blck;
        /* one block, odd block counts (the SIMD loops take two at a time), SmolLM2's widths, Qwen2.5-0.5B's
         * (896: where Q4_K_M/Q5_K_M files fall back to q5_0/q5_1), a long row */
        int sizes[] = {blck, qk, 3 * qk, 5 * qk, 576, 896, 1536, 4096, 1, 7, 33};
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            int n = sizes[s];
            if (n % blck) continue;
            uint8_t *buf = malloc(dsa_row_size(t, n) + 1);
            /* quantised rows start at an odd address, as they may in an mmapped file */
            uint8_t *w = t == DSA_F32 ? buf : buf + 1;
            float *x = malloc(sizeof(float) * n);
            for (int rep = 0; rep < 3; rep++) {
                random_weights(t, w, n);
                random_acts(x, n);
                check_dot(t, w, x, n, "random");
            }
            free(buf), free(x);
        }
    }
}

/* Quants at their extremes (all bits set, or the most negative q8_0) against activations at ±127: where
 * pmaddubsw would saturate if any kernel paired them wrongly. */
static void test_extremes(void) {
    const int n = 512;
    float *x = malloc(sizeof(float) * n);
    for (int k = 0; k < NWTYPES; k++) {
        enum dsa_type t = WTYPES[k];
        const dsa_type_traits *tt = dsa_traits_ref(t);
        if (tt->blck == 1) continue;
        uint8_t *w = malloc(dsa_row_size(t, n) + 1) + 1;
        for (int pattern = 0; pattern < 4; pattern++) {
            /* all-zero q4_0/q5_0 quants are the most negative (-8, -16) */
            int fill = t == DSA_Q8_0                                        ? (pattern & 1 ? 0x7f : 0x80)
                       : (t == DSA_Q4_0 || t == DSA_Q5_0) && !(pattern & 1) ? 0x00
                                                                            : 0xff;
            memset(w, fill, dsa_row_size(t, n));
            if (t == DSA_Q6_K && pattern >= 2) /* scales of -128 */
                for (int b = 0; b < n / 256; b++) memset(w + b * tt->type_size + 192, 0x80, 16);
            for (int b = 0; b < n / tt->blck; b++) {
                put16(w + b * tt->type_size + d_offset(t), dsa_f32_to_f16(0.01f));
                if (m_offset(t) >= 0) put16(w + b * tt->type_size + m_offset(t), dsa_f32_to_f16(0.02f));
            }
            for (int i = 0; i < n; i++) x[i] = pattern & 2 ? (i & 1 ? 1.0f : -1.0f) : 1.0f;
            check_dot(t, w, x, n, "extreme-quants");
        }
        /* all-zero weights and activations: exactly zero at every level, no nan from 0/0 */
        memset(w, 0, dsa_row_size(t, n));
        memset(x, 0, sizeof(float) * n);
        for (int level = 1; level <= g_max_level; level++) {
            dsa_kernels_init(level);
            const dsa_type_traits *st = dsa_traits(t), *sa = dsa_traits(st->act);
            void *qa = malloc(dsa_row_size(st->act, n));
            sa->from_float(x, qa, n);
            float v = st->vec_dot(n, w, qa);
            CHECK(v == 0, "%s zero blocks at %s: %g", dsa_type_name(t), LEVELS[level],
                  v);
            random_acts(x, n); /* zero weights, real activations */
            sa->from_float(x, qa, n);
            CHECK(st->vec_dot(n, w, qa) == 0, "%s zero weights at %s", dsa_type_name(t), LEVELS[level]);
            memset(x, 0, sizeof(float) * n);
            free(qa);
        }
        free(w - 1);
    }
    free(x);
}

/* ---- 3. activation quantisation ----------------------------------------------------------------------- */

static void test_from_float(void) {
    const int n = 1024;
    float *x = malloc(sizeof(float) * n), *back = malloc(sizeof(float) * n);
    for (int pass = 0; pass < 4; pass++) {
        random_acts(x, n);
        memset(x, 0, 32 * sizeof(float));            /* an all-zero block */
        x[40] = 3.5f;                                 /* a block with one value */
        for (int i = 33; i < 64; i++) x[i] = i == 40 ? x[i] : 0;
        for (int i = 64; i < 96; i++) x[i] = 1e-35f; /* below DSA_ACT_TINY: quantises to zero */
        x[100] = pass == 3 ? 3e38f : x[100];          /* the largest floats */
        for (int level = 1; level <= g_max_level; level++) {
            dsa_kernels_init(level);
            const char *lv = LEVELS[level];
            /* q8_1 */
            dsa_block_q8_1 *y = malloc(sizeof *y * (n / 32));
            dsa_traits(DSA_Q8_1)->from_float(x, y, n);
            dsa_traits_ref(DSA_Q8_1)->to_float(y, back, n);
            int bad = 0;
            for (int b = 0; b < n / 32; b++) {
                int sum = 0, qmax = 0;
                for (int j = 0; j < 32; j++) {
                    sum += y[b].qs[j];
                    qmax = abs(y[b].qs[j]) > qmax ? abs(y[b].qs[j]) : qmax;
                    if (y[b].qs[j] == -128) bad++;
                    if (!(fabsf(back[32 * b + j] - x[32 * b + j]) <= y[b].d * (0.5f + 1e-4f)) && b != 2) bad++;
                }
                if (y[b].s != y[b].d * (float)sum) bad++;
                if (b == 0 || b == 2) bad += y[b].d != 0 || qmax != 0;
                else bad += qmax != 127;
            }
            CHECK(bad == 0, "q8_1 from_float at %s pass %d: %d problems", lv, pass, bad);
            CHECK(y[1].qs[8] == 127 && y[1].d == 3.5f / 127, "q8_1 single value at %s", lv);
            free(y);
            /* q8_K */
            dsa_block_q8_k *z = malloc(sizeof *z * (n / 256));
            dsa_traits(DSA_Q8_K)->from_float(x, z, n);
            dsa_traits_ref(DSA_Q8_K)->to_float(z, back, n);
            bad = 0;
            for (int b = 0; b < n / 256; b++) {
                for (int g = 0; g < 16; g++) {
                    int sum = 0;
                    for (int j = 0; j < 16; j++) sum += z[b].qs[16 * g + j];
                    bad += z[b].bsums[g] != sum;
                }
                for (int j = 0; j < 256; j++) {
                    bad += z[b].qs[j] == -128;
                    bad += !(fabsf(back[256 * b + j] - x[256 * b + j]) <= z[b].d * (0.5f + 1e-4f));
                }
            }
            CHECK(bad == 0, "q8_K from_float at %s pass %d: %d problems", lv, pass, bad);
            free(z);
        }
    }
    free(x), free(back);
}

/* ---- 5. half floats ----------------------------------------------------------------------------------- */

#ifdef HAVE_X86
__attribute__((target("f16c"))) static float hw_f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f) {
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
#endif

/* Independent reference: the value of a half from its fields, in double. */
static double half_value(uint16_t h) {
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e ? ldexp(1024 + m, e - 25) : ldexp(m, -24);
    return h & 0x8000 ? -v : v;
}

/* Independent reference rounding: the nearest finite half (ties to even mantissa), inf past 65520. */
static uint16_t half_nearest(float f) {
    double a = fabs((double)f);
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    if (a >= 65520) return sign | 0x7c00;
    int lo = 0, hi = 0x7bff; /* the largest half <= a */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (half_value((uint16_t)mid) <= a) lo = mid;
        else hi = mid - 1;
    }
    if (lo == 0x7bff) return sign | 0x7bff;
    double dl = a - half_value((uint16_t)lo), dh = half_value((uint16_t)(lo + 1)) - a;
    int r = dl < dh || (dl == dh && !(lo & 1)) ? lo : lo + 1;
    return (uint16_t)(sign | r);
}

static void test_f16(void) {
    int bad = 0, bad_round = 0, bad_hw = 0;
    int hw = 0;
#ifdef HAVE_X86
    unsigned a, b, c, d;
    hw = __builtin_cpu_supports("avx") && __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
#endif
    for (uint32_t h = 0; h < 65536; h++) {
        float f = dsa_f16_to_f32((uint16_t)h);
        uint32_t fb;
        memcpy(&fb, &f, 4);
        int e = (h >> 10) & 31, m = h & 1023;
        if (e == 31) { /* inf and nan: exponent all ones, payload kept */
            bad += fb != (((h & 0x8000u) << 16) | 0x7f800000u | ((uint32_t)m << 13));
            uint16_t r = dsa_f32_to_f16(f);
            if (m) bad_round += (r & 0x7c00) != 0x7c00 || !(r & 0x3ff) || (r & 0x8000) != (h & 0x8000);
            else bad_round += r != h;
        } else {
            double v = half_value((uint16_t)h);
            bad += (double)f != v || !signbit(f) != !signbit(v);
            bad_round += dsa_f32_to_f16(f) != h;
        }
#ifdef HAVE_X86
        if (hw) {
            float g = hw_f16_to_f32((uint16_t)h);
            bad_hw += isnan(g) ? !isnan(f) : memcmp(&f, &g, 4) != 0;
        }
#endif
    }
    CHECK(bad == 0, "f16 -> f32: %d of 65536 patterns wrong", bad);
    CHECK(bad_round == 0, "f32 -> f16 -> round trip: %d patterns wrong", bad_round);
    CHECK(bad_hw == 0, "f16 -> f32 differs from vcvtph2ps on %d patterns", bad_hw);

    /* rounding: boundaries, then random floats over the whole range */
    const float edges[] = {65504.0f, 65519.99f, 65520.0f, 1e30f, 0x1p-24f, 0x1p-25f, 0x1.000002p-25f, 0x1.8p-24f,
                           0x1.ffcp-15f, 0x1.ffep-15f, 0x1p-14f, 0x1.002p0f, 0x1.006p0f, 0x1.001p0f, 1e-10f, 0.0f,
                           1.0f / 3, 2049.0f, 2051.0f, -0.0f, -65520.0f};
    int bad_edge = 0;
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        for (int s = 0; s < 2; s++) {
            float f = s ? -edges[i] : edges[i];
            uint16_t got = dsa_f32_to_f16(f), want = half_nearest(f);
            if (got != want) bad_edge++, fprintf(stderr, "f32_to_f16(%a) = %04x, want %04x\n", f, got, want);
        }
    CHECK(bad_edge == 0, "f32 -> f16 at rounding boundaries: %d wrong", bad_edge);
    /* every tie between two adjacent finite halves (subnormal ones too) goes to the even one, and a float just
     * either side of it to the nearer one */
    int bad_tie = 0;
    for (uint16_t h = 0; h < 0x7bff; h++) {
        float mid = (float)((half_value(h) + half_value((uint16_t)(h + 1))) / 2); /* exact: 12 significant bits */
        uint16_t even = h & 1 ? (uint16_t)(h + 1) : h;
        bad_tie += dsa_f32_to_f16(mid) != even || dsa_f32_to_f16(-mid) != (even | 0x8000);
        bad_tie += dsa_f32_to_f16(nextafterf(mid, 1e9f)) != h + 1 || dsa_f32_to_f16(nextafterf(mid, 0)) != h;
    }
    CHECK(bad_tie == 0, "f32 -> f16 at the 31743 ties: %d wrong", bad_tie);
    int bad_rand = 0;
    bad_hw = 0;
    for (int i = 0; i < 300000; i++) {
        uint32_t u = (uint32_t)rnd();
        if (i & 1) u = (u & 0x80ffffffu) | ((uint32_t)(100 + rnd() % 50) << 23); /* near half's range */
        float f;
        memcpy(&f, &u, 4);
        uint16_t got = dsa_f32_to_f16(f);
        if (isnan(f)) {
            bad_rand += (got & 0x7c00) != 0x7c00 || !(got & 0x3ff);
            continue;
        }
        bad_rand += got != half_nearest(f);
#ifdef HAVE_X86
        if (hw) bad_hw += got != hw_f32_to_f16(f);
#endif
    }
    CHECK(bad_rand == 0, "f32 -> f16 on random floats: %d wrong", bad_rand);
    CHECK(bad_hw == 0, "f32 -> f16 differs from vcvtps2ph on %d floats", bad_hw);
    CHECK(dsa_bf16_to_f32(0x3f80) == 1.0f && dsa_bf16_to_f32(0xc040) == -3.0f && isinf(dsa_bf16_to_f32(0x7f80)),
          "bf16");
}

/* ---- traits and dispatch ----------------------------------------------------------------------------- */

static void test_traits(void) {
    /* dsa_traits works before anybody calls dsa_kernels_init */
    CHECK(dsa_traits(DSA_Q4_1) != NULL && dsa_traits(DSA_Q4_1)->vec_dot != NULL, "lazy init");
    static const struct { enum dsa_type t; const char *name; int blck, size; enum dsa_type act; int tiles; } want[] = {
        {DSA_F32, "f32", 1, 4, DSA_F32, 0},         {DSA_F16, "f16", 1, 2, DSA_F32, 0},
        {DSA_BF16, "bf16", 1, 2, DSA_F32, 0},       {DSA_Q4_0, "q4_0", 32, 18, DSA_Q8_1, 1},
        {DSA_Q4_1, "q4_1", 32, 20, DSA_Q8_1, 1},    {DSA_Q5_0, "q5_0", 32, 22, DSA_Q8_1, 0},
        {DSA_Q5_1, "q5_1", 32, 24, DSA_Q8_1, 0},    {DSA_Q8_0, "q8_0", 32, 34, DSA_Q8_1, 1},
        {DSA_Q4_K, "q4_K", 256, 144, DSA_Q8_K, 1}, {DSA_Q5_K, "q5_K", 256, 176, DSA_Q8_K, 1},
        {DSA_Q6_K, "q6_K", 256, 210, DSA_Q8_K, 1},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const dsa_type_traits *t = dsa_traits_ref(want[i].t);
        CHECK(t && !strcmp(t->name, want[i].name) && t->blck == want[i].blck && (int)t->type_size == want[i].size &&
                  t->is_weight && t->act == want[i].act && t->to_float && t->vec_dot,
              "traits of %s", want[i].name);
        CHECK(!strcmp(dsa_type_name(want[i].t), want[i].name), "name of %s", want[i].name);
        /* tile kernels (tests/test_matmul.c): a plain-C one for every quantised weight type but q5_0/q5_1 (which
         * dsa_matmul runs through vec_dot at every batch size), none for floats */
        CHECK(!want[i].tiles ? t && !t->mm_tile && !t->mm_pack
                                : t && t->mm_tile && t->mm_pack && t->mm_nr > 0 && t->mm_min_rows >= 1 &&
                                      t->mm_panel_blk > 0,
              "tile traits of %s", want[i].name);
    }
    CHECK(!dsa_traits_ref(DSA_Q8_1)->mm_tile && !dsa_traits_ref(DSA_Q8_K)->mm_tile, "activation types have no tiles");
    CHECK(dsa_row_size(DSA_Q4_1, 576) == 360 && dsa_row_size(DSA_Q8_0, 576) == 612 &&
              dsa_row_size(DSA_Q5_0, 896) == 616 && dsa_row_size(DSA_Q5_1, 896) == 672 &&
              dsa_row_size(DSA_Q6_K, 512) == 420 && dsa_row_size(DSA_Q8_1, 64) == 2 * sizeof(dsa_block_q8_1),
          "row sizes");
    CHECK(dsa_traits(DSA_Q8_1)->from_float && dsa_traits(DSA_Q8_K)->from_float && dsa_traits(DSA_F32)->from_float &&
              !dsa_traits(DSA_Q8_1)->is_weight && !dsa_traits(DSA_Q8_1)->vec_dot,
          "activation types");
    CHECK(dsa_traits((enum dsa_type)5) == NULL && dsa_traits_ref((enum dsa_type)99) == NULL &&
              dsa_traits((enum dsa_type)-1) == NULL && !strcmp(dsa_type_name(10), "unknown") &&
              !strcmp(dsa_type_name(-3), "unknown"),
          "unknown types");

    /* the levels this CPU has; a forced level above them falls back, never crashes */
    g_max_level = 1;
    for (int l = 2; l <= 3; l++)
        if (level_ok(l)) g_max_level = l;
    CHECK(level_ok(1), "generic level");
    dsa_kernels_init(3);
    CHECK(!strcmp(dsa_cpu_name(), LEVELS[g_max_level]), "init(3) gives %s", dsa_cpu_name());
    setenv("DSA_CPU", "generic", 1);
    dsa_kernels_init(0);
    CHECK(!strcmp(dsa_cpu_name(), "generic") && dsa_traits(DSA_Q4_1)->vec_dot == dsa_traits_ref(DSA_Q4_1)->vec_dot,
          "DSA_CPU=generic gives %s", dsa_cpu_name());
    setenv("DSA_CPU", "avx2", 1);
    dsa_kernels_init(0);
    CHECK(!strcmp(dsa_cpu_name(), LEVELS[g_max_level < 2 ? g_max_level : 2]), "DSA_CPU=avx2 gives %s", dsa_cpu_name());
    dsa_kernels_init(1); /* an explicit level beats the environment */
    CHECK(!strcmp(dsa_cpu_name(), "generic"), "init(1) with DSA_CPU=avx2 gives %s", dsa_cpu_name());
    unsetenv("DSA_CPU");
    dsa_kernels_init(0);
    CHECK(!strcmp(dsa_cpu_name(), LEVELS[g_max_level]), "auto gives %s", dsa_cpu_name());
    printf("SIMD levels tested: generic%s%s\n", g_max_level >= 2 ? " avx2" : "", g_max_level >= 3 ? " avx512" : "");
}

int main(void) {
    { /* the list this test was written for is exactly what the traits table marks as weights */
        enum dsa_type all[DSA_TYPE_COUNT];
        int n = tu_weight_types(all), same = n == NWTYPES;
        for (int k = 0; same && k < NWTYPES; k++) {
            int found = 0;
            for (int i = 0; i < n; i++) found |= all[i] == WTYPES[k];
            same = found;
        }
        CHECK(same, "the traits table has %d weight types, this test covers %d: update WTYPES", n, NWTYPES);
    }
    test_traits();
    test_f16();
    test_fixtures();
    test_dots();
    test_extremes();
    test_from_float();
    printf("largest error / bound (C vs float64, SIMD vs C):");
    for (int k = 0; k < NWTYPES; k++)
        printf(" %s %.2f %.2f", dsa_type_name(WTYPES[k]), g_worst[WTYPES[k]][0], g_worst[WTYPES[k]][1]);
    printf("\n");
    dsa_kernels_init(0);
    return tu_finish("test_quant");
}
