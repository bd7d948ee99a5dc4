/*
 * DeepSeek Sparse Attention kernels (kernels/cpu/dsa_ops.c, dsa_ops_avx2.c, and the _idx attention ops of ops.c /
 * ops_avx2.c), at every kernel level this CPU runs (generic, avx2, avx512):
 *  1. FP8 e4m3: dsa_fp8_to_f32 on the 254 non-NaN codes and dsa_f32_to_fp8 on 2000 floats (ties, subnormals,
 *     ±0, values near and above 448) equal PyPI ml_dtypes' float8_e4m3fn (round to nearest even; where ml_dtypes
 *     gives NaN for overflow we expect ±448), fixture tests/fixtures/fp8_e4m3.json from
 *     scripts/ref/make_fp8_fixtures.py; dsa_fp8_quant_row round-trips within the e4m3 bound (below).
 *  2. dsa_hadamard is orthonormal and equals the float64 Sylvester-matrix product, n = 1 .. 256.
 *  3. dsa_indexer_scores equals a float64 indexer within float rounding.
 *  4. dsa_topk equals the first k of a full sort by (score desc, index desc), NaN lowest, then sorted ascending.
 *  5. dsa_attn_scores_f16_idx / dsa_attn_sum_f16_idx: idx = 0..n-1 gives the contiguous ops' bits; a random
 *     subset of a strided f16 cache, through softmax, equals float64 attention over those rows.
 *
 * Bounds.  ε = 2^-24.
 *  - quant_row: y = x·(448/amax) (two float roundings), code = e4m3(y), value = scale·e4m3(code) with
 *    scale = amax/448 (one rounding).  RNE on a 3-bit mantissa is off by at most half a step, 2^-4·2^⌊log2|y|⌋
 *    ≤ 2^-4·|y| in the normal range (|y| ≥ 2^-6); in the subnormal range the step is 2^-9, so at most 2^-10
 *    absolutely, i.e. 2^-10·scale in x's units.  The float roundings add ≤ 3ε·|x|.  So
 *    |scale·e4m3(code) - x| ≤ 2^-4·|x| + 3ε|x| (|x| ≥ 2^-6·scale) and ≤ 2^-10·scale + 3ε|x| (below).
 *  - indexer: each dot of d products carries ≤ (d+1)ε·Σ_i|q_i k_i|; the head sum, w·dot, kscale· and the ·256 of
 *    the AVX2 path add a few more: |out - ref| ≤ (d + H + 4)·ε·kscale·Σ_j |w_j|·Σ_i |q_ji·k_si|.  A missing ReLU
 *    or a wrong factor is off by a sizeable fraction of that magnitude, far above the bound.
 */
#include "kernels.h"
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const LEVELS[4] = {"", "generic", "avx2", "avx512"};
static const char *g_lv; /* name of the level being tested, for messages */

static uint64_t g_rng = 0x2545f4914f6cdd1dull;
static uint64_t rnd(void) { return tu_splitmix(&g_rng); }
static double urand(void) { return (double)(rnd() >> 11) * 0x1.0p-53; }    /* [0, 1) */
static double srand1(void) { return 2.0 * urand() - 1.0; }                  /* [-1, 1) */
static int irand(int n) { return (int)(rnd() % (uint64_t)n); }              /* [0, n) */

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

static float f_of_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint32_t bits_of_f(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* ---- 1. FP8 e4m3 ------------------------------------------------------------------------------------------ */

static void test_fp8_fixture(const json_t *fx) {
    const json_t *dec = json_object_get(fx, "decode"), *enc = json_object_get(fx, "encode");
    CHECK(json_array_size(dec) == 254, "fixture: %zu decodings, want 254", json_array_size(dec));
    CHECK(json_array_size(enc) >= 1900, "fixture: only %zu encodings", json_array_size(enc));
    CHECK(json_array_size(json_object_get(fx, "saturated")) > 0, "fixture: no saturating inputs");
    size_t i;
    json_t *e;
    int bad = 0;
    json_array_foreach(dec, i, e) {
        int code = (int)json_integer_value(json_array_get(e, 0));
        double want = json_number_value(json_array_get(e, 1));
        float got = dsa_fp8_to_f32((uint8_t)code);
        int ok = code != 0x7F && code != 0xFF && (double)got == want && !signbit(got) == !(code & 0x80);
        if (!ok && bad++ < 5) CHECK(ok, "%s: fp8_to_f32(0x%02X) = %.9g, ml_dtypes %.9g", g_lv, code, got, want);
    }
    CHECK(bad == 0, "%s: %d of %zu decodings differ from ml_dtypes", g_lv, bad, json_array_size(dec));
    bad = 0;
    int ties = 0, sub = 0, sat = 0;
    json_array_foreach(enc, i, e) {
        uint32_t b = (uint32_t)json_integer_value(json_array_get(e, 0));
        int want = (int)json_integer_value(json_array_get(e, 1));
        float x = f_of_bits(b);
        int got = dsa_f32_to_fp8(x);
        if (got != want && bad++ < 5)
            CHECK(got == want, "%s: f32_to_fp8(%.9g = 0x%08X) = 0x%02X, ml_dtypes (saturated) 0x%02X", g_lv, x, b, got,
                  want);
        /* what the fixture covers: exact ties (x halfway between the two neighbours of its code), subnormals */
        float ax = fabsf(x);
        if (ax < 0x1p-6f && ax > 0) sub++;
        if (ax > 448) sat++;
        if (ax < 448 && want != 0x7F && want != 0xFF) {
            double v = fabs(dsa_fp8_to_f32((uint8_t)want)), up = fabs(dsa_fp8_to_f32((uint8_t)((want & 0x7F) + 1)));
            double dn = (want & 0x7F) ? fabs(dsa_fp8_to_f32((uint8_t)((want & 0x7F) - 1))) : 0;
            if (ax == (v + up) / 2 || ax == (v + dn) / 2) ties++;
        }
    }
    CHECK(bad == 0, "%s: %d of %zu encodings differ from ml_dtypes", g_lv, bad, json_array_size(enc));
    CHECK(ties >= 200 && sub >= 50 && sat >= 20, "fixture covers too little: %d ties, %d subnormals, %d > 448", ties,
          sub, sat);
}

/* Round trip of dsa_fp8_quant_row within the bound derived at the top. */
static void test_fp8_quant_row(void) {
    static const int ns[] = {1, 2, 7, 64, 128, 300, 1024};
    double worst = 0;
    int tiny = 0, normal = 0;
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
        for (int rep = 0; rep < 20; rep++) {
            int n = ns[ni];
            float *x = xmalloc((size_t)n * sizeof *x);
            uint8_t *q = xmalloc((size_t)n);
            double big = ldexp(1.0, irand(40) - 20); /* row magnitude 2^-20 .. 2^19 */
            for (int i = 0; i < n; i++) {
                /* a wide dynamic range inside the row: some elements 2^-16 below the largest */
                x[i] = (float)(srand1() * big * ldexp(1.0, -irand(17)));
                if (rep % 5 == 0 && i % 7 == 3) x[i] = (i & 8) ? -0.0f : 0.0f;
            }
            float amax = 0;
            for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
            float scale = -1;
            dsa_fp8_quant_row(n, x, q, &scale);
            CHECK(scale == amax / DSA_FP8_MAX, "%s: n=%d scale %.9g, want max|x|/448 = %.9g", g_lv, n, scale,
                  amax / DSA_FP8_MAX);
            for (int i = 0; i < n; i++) {
                double v = (double)scale * dsa_fp8_to_f32(q[i]), ax = fabs(x[i]);
                double err = fabs(v - x[i]);
                double bound = (ax >= 0x1p-6 * scale ? 0x1p-4 * ax : 0x1p-10 * scale) + 3 * 0x1p-24 * ax;
                if (ax >= 0x1p-6 * scale) normal++;
                else tiny++;
                if (err / bound > worst) worst = err / bound;
                if (err > bound)
                    CHECK(err <= bound, "%s: n=%d x[%d]=%.9g -> code 0x%02X -> %.9g (scale %.9g), error %.3g > %.3g",
                          g_lv, n, i, x[i], q[i], v, scale, err, bound);
                if (x[i] == 0) CHECK((q[i] & 0x7F) == 0, "%s: zero encodes to 0x%02X", g_lv, q[i]);
            }
            free(x), free(q);
        }
    CHECK(tiny > 500 && normal > 5000, "quant_row test covers too little: %d tiny, %d normal", tiny, normal);
    CHECK(worst > 0.5, "quant_row errors suspiciously small (%.3f of the bound): is the test live?", worst);

    /* all-zero rows (±0) give scale 0 and zero codes */
    float z[37];
    uint8_t q[37];
    for (int i = 0; i < 37; i++) z[i] = (i & 1) ? -0.0f : 0.0f;
    memset(q, 0x55, sizeof q);
    float scale = -1;
    dsa_fp8_quant_row(37, z, q, &scale);
    CHECK(scale == 0, "%s: all-zero row gives scale %g", g_lv, scale);
    int nz = 0;
    for (int i = 0; i < 37; i++) nz += (q[i] & 0x7F) != 0;
    CHECK(nz == 0, "%s: all-zero row has %d nonzero codes", g_lv, nz);
    /* the largest element uses the top code exactly */
    float r[5] = {1.5f, -3.0f, 0.25f, 2.0f, 1e-3f};
    dsa_fp8_quant_row(5, r, q, &scale);
    CHECK(q[1] == 0xFE && fabs((double)scale * dsa_fp8_to_f32(q[1]) + 3.0) <= 3 * 0x1p-23,
          "%s: max element -3 -> code 0x%02X, value %.9g", g_lv, q[1], (double)scale * dsa_fp8_to_f32(q[1]));
}

/* ---- 2. Hadamard ---------------------------------------------------------------------------------------------- */

static int popcount(unsigned v) {
    int c = 0;
    for (; v; v &= v - 1) c++;
    return c;
}

static void test_hadamard(void) {
    for (int n = 1; n <= 256; n *= 2) {
        double s = 1.0 / sqrt((double)n);
        float *x = xmalloc((size_t)n * sizeof *x), *y = xmalloc((size_t)n * sizeof *y);
        double worst_col = 0, worst_inv = 0;
        /* H e_i = column i of the Sylvester matrix / sqrt(n); H H e_i = e_i */
        for (int i = 0; i < n; i++) {
            for (int r = 0; r < n; r++) x[r] = r == i;
            dsa_hadamard(n, x);
            for (int r = 0; r < n; r++) {
                double want = (popcount((unsigned)(r & i)) & 1 ? -s : s);
                worst_col = fmax(worst_col, fabs(x[r] - want));
            }
            dsa_hadamard(n, x);
            for (int r = 0; r < n; r++) worst_inv = fmax(worst_inv, fabs(x[r] - (r == i)));
        }
        CHECK(worst_col <= 1e-6 * s, "%s: n=%d H e_i off the Sylvester column by %.3g", g_lv, n, worst_col);
        CHECK(worst_inv <= 1e-6, "%s: n=%d H·H e_i off e_i by %.3g", g_lv, n, worst_inv);
        /* random vectors: the float64 matrix product, the norm, and H·H x = x */
        double worst_prod = 0, worst_norm = 0, worst_back = 0;
        for (int rep = 0; rep < 10; rep++) {
            double nx = 0;
            for (int r = 0; r < n; r++) {
                x[r] = y[r] = (float)(srand1() * ldexp(1.0, irand(8) - 4));
                nx += (double)x[r] * x[r];
            }
            nx = sqrt(nx);
            dsa_hadamard(n, y);
            double ny = 0;
            for (int r = 0; r < n; r++) {
                double want = 0;
                for (int c = 0; c < n; c++) want += (popcount((unsigned)(r & c)) & 1 ? -1.0 : 1.0) * x[c];
                want *= s;
                worst_prod = fmax(worst_prod, fabs(y[r] - want) / nx);
                ny += (double)y[r] * y[r];
            }
            worst_norm = fmax(worst_norm, fabs(sqrt(ny) - nx) / nx);
            dsa_hadamard(n, y);
            for (int r = 0; r < n; r++) worst_back = fmax(worst_back, fabs(y[r] - x[r]) / nx);
        }
        CHECK(worst_prod <= 1e-6, "%s: n=%d H x off the float64 product by %.3g·|x|", g_lv, n, worst_prod);
        CHECK(worst_norm <= 1e-6, "%s: n=%d norm changed by %.3g relative", g_lv, n, worst_norm);
        CHECK(worst_back <= 1e-6, "%s: n=%d H·H x off x by %.3g·|x|", g_lv, n, worst_back);
        free(x), free(y);
    }
}

/* ---- 3. indexer scores ---------------------------------------------------------------------------------------- */

static void test_indexer(void) {
    static const int hd[][2] = {{1, 8}, {4, 32}, {8, 64}, {4, 24}, {2, 16}, {3, 128}};
    static const int ns[] = {1, 7, 100, 1000};
    for (size_t c = 0; c < sizeof hd / sizeof hd[0]; c++)
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
            int H = hd[c][0], d = hd[c][1], n = ns[ni];
            uint8_t *K8 = xmalloc((size_t)n * d);
            float *ks = xmalloc((size_t)n * sizeof *ks), *out = xmalloc((size_t)n * sizeof *out);
            float *q = xmalloc((size_t)H * d * sizeof *q), *w = xmalloc((size_t)H * sizeof *w);
            float *row = xmalloc((size_t)d * sizeof *row);
            for (int s = 0; s < n; s++) {
                if (s % 2) { /* a quantised key row, as the engine stores them */
                    for (int i = 0; i < d; i++) row[i] = (float)(srand1() * 3);
                    dsa_fp8_quant_row(d, row, K8 + (size_t)s * d, &ks[s]);
                } else { /* random codes (no NaN codes) with a random scale; some rows of zero scale */
                    for (int i = 0; i < d; i++) {
                        uint8_t b;
                        do b = (uint8_t)rnd(); while ((b & 0x7F) == 0x7F);
                        K8[(size_t)s * d + i] = b;
                    }
                    ks[s] = s % 10 == 4 ? 0.0f : (float)(urand() * 0.02);
                }
            }
            for (int i = 0; i < H * d; i++) q[i] = (float)srand1();
            for (int j = 0; j < H; j++) w[j] = (float)(srand1() * 2);
            dsa_indexer_scores(n, H, d, K8, ks, q, w, out);
            double worst = 0;
            int relu_hits = 0, bad = 0;
            for (int s = 0; s < n; s++) {
                double ref = 0, mag = 0;
                for (int j = 0; j < H; j++) {
                    double dot = 0, m = 0;
                    for (int i = 0; i < d; i++) {
                        double t = (double)q[j * d + i] * dsa_fp8_to_f32(K8[(size_t)s * d + i]);
                        dot += t;
                        m += fabs(t);
                    }
                    if (dot > 0) ref += w[j] * dot;
                    else relu_hits++;
                    mag += fabs(w[j]) * m;
                }
                ref *= ks[s];
                mag *= ks[s];
                double bound = (d + H + 4) * 0x1p-24 * mag;
                double err = fabs(out[s] - ref);
                if (bound > 0 && err / bound > worst) worst = err / bound;
                if (!(err <= bound) && bad++ < 3)
                    CHECK(err <= bound, "%s: H=%d d=%d n=%d: out[%d] = %.9g, float64 %.9g (bound %.3g)", g_lv, H, d, n,
                          s, out[s], ref, bound);
            }
            CHECK(bad == 0, "%s: H=%d d=%d n=%d: %d of %d scores off (worst %.2f of the bound)", g_lv, H, d, n, bad, n,
                  worst);
            /* a key's score is the same bits whatever the call's start and length: a decode step splits the keys
             * across threads, a prefill row takes them all, and both must select the same positions */
            float *part = xmalloc((size_t)n * sizeof *part);
            int moved = 0;
            for (int rep = 0; rep < 6; rep++) {
                int s0 = irand(n), len = 1 + irand(n - s0);
                dsa_indexer_scores(len, H, d, K8 + (size_t)s0 * d, ks + s0, q, w, part);
                for (int s = 0; s < len; s++) moved += memcmp(&part[s], &out[s0 + s], sizeof *part) != 0;
            }
            CHECK(moved == 0, "%s: H=%d d=%d n=%d: %d scores changed bits with the call's start or length", g_lv, H, d,
                  n, moved);
            /* several queries at once (a prefill's consecutive rows): each row the bits of its own call */
            for (int R = 1; R <= 5; R++) {
                int lens[5];
                float *qs = xmalloc((size_t)R * H * d * sizeof *qs), *ws = xmalloc((size_t)R * H * sizeof *ws);
                size_t ldo = (size_t)n + 3;
                float *outs = xmalloc((size_t)R * ldo * sizeof *outs), *one = xmalloc((size_t)n * sizeof *one);
                for (int r = 0; r < R; r++) {
                    lens[r] = r == 0 ? n : irand(n + 1); /* the longest first or not, some empty */
                    for (int i = 0; i < H * d; i++) qs[(size_t)r * H * d + i] = (float)srand1();
                    for (int j = 0; j < H; j++) ws[(size_t)r * H + j] = (float)(srand1() * 2);
                }
                if (R > 2) lens[0] = irand(n + 1), lens[R - 1] = n;
                for (size_t i = 0; i < (size_t)R * ldo; i++) outs[i] = -12345.0f;
                dsa_indexer_scores_rows(R, lens, H, d, K8, ks, qs, ws, outs, ldo);
                int diff = 0, stray = 0;
                for (int r = 0; r < R; r++) {
                    dsa_indexer_scores(lens[r], H, d, K8, ks, qs + (size_t)r * H * d, ws + (size_t)r * H, one);
                    for (int s2 = 0; s2 < lens[r]; s2++) diff += memcmp(&one[s2], &outs[(size_t)r * ldo + s2], 4) != 0;
                    for (size_t s2 = (size_t)lens[r]; s2 < ldo; s2++) stray += outs[(size_t)r * ldo + s2] != -12345.0f;
                }
                CHECK(diff == 0 && stray == 0, "%s: H=%d d=%d n=%d, %d rows at once: %d scores differ from one row's "
                      "call, %d written past a row's end", g_lv, H, d, n, R, diff, stray);
                free(qs), free(ws), free(outs), free(one);
            }
            free(part);
            if (n >= 100) CHECK(relu_hits > 0, "H=%d d=%d: no negative dot, ReLU untested", H, d);
            free(K8), free(ks), free(out), free(q), free(w), free(row);
        }
}

/* ---- 4. top-k ------------------------------------------------------------------------------------------------- */

static const float *g_sc;
/* (score desc, index desc), NaN lowest; -0 == +0 as floats, so they tie and the later index wins */
static int cmp_rank(const void *pa, const void *pb) {
    int a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    float x = g_sc[a], y = g_sc[b];
    int xn = x != x, yn = y != y;
    if (xn != yn) return xn ? 1 : -1;
    if (!xn && x != y) return x > y ? -1 : 1;
    return a > b ? -1 : (a < b);
}
static int cmp_i32(const void *pa, const void *pb) {
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    return (a > b) - (a < b);
}

/* Returns 1 when dsa_topk(n, sc, k) is the expected set; describes the first difference in msg. */
static int topk_case(int n, const float *sc, int k, char *msg, size_t msz) {
    int32_t *ord = xmalloc((size_t)n * sizeof *ord), *idx = xmalloc(((size_t)n + 6) * sizeof *idx);
    uint64_t *scratch = xmalloc((size_t)n * sizeof *scratch);
    for (int i = 0; i < n; i++) ord[i] = i;
    g_sc = sc;
    qsort(ord, (size_t)n, sizeof *ord, cmp_rank);
    int want = k < 0 ? 0 : k < n ? k : n;
    qsort(ord, (size_t)want, sizeof *ord, cmp_i32);
    for (int i = 0; i < n + 6; i++) idx[i] = -7;
    int got = dsa_topk(n, sc, k, idx, scratch);
    int ok = got == want;
    if (!ok) snprintf(msg, msz, "n=%d k=%d: returned %d, want %d", n, k, got, want);
    for (int i = 0; ok && i < want; i++) {
        if (i > 0 && !(idx[i] > idx[i - 1]))
            ok = 0, snprintf(msg, msz, "n=%d k=%d: idx not ascending at %d (%d, %d)", n, k, i, idx[i - 1], idx[i]);
        else if (idx[i] != ord[i])
            ok = 0, snprintf(msg, msz, "n=%d k=%d: idx[%d] = %d (score %g), want %d (score %g)", n, k, i, idx[i],
                             idx[i] >= 0 && idx[i] < n ? sc[idx[i]] : 0.0, ord[i], sc[ord[i]]);
    }
    for (int i = want; ok && i < n + 6; i++)
        if (idx[i] != -7) ok = 0, snprintf(msg, msz, "n=%d k=%d: wrote idx[%d] past the %d results", n, k, i, want);
    free(ord), free(idx), free(scratch);
    return ok;
}

static float draw_score(int mode) {
    static const float small[] = {-1.0f, 0.5f, 2.0f, 3.0f, 3.0f, -0.0f, 0.0f, 0x1p-149f, -0x1p-149f};
    int r = irand(100);
    switch (mode) {
    case 0: /* few distinct values: many exact ties */
        return small[irand(sizeof small / sizeof small[0])];
    case 1: /* ties plus NaN, ±inf, ±0 */
        if (r < 8) return NAN;
        if (r < 12) return -NAN;
        if (r < 18) return INFINITY;
        if (r < 24) return -INFINITY;
        if (r < 34) return -0.0f;
        if (r < 44) return 0.0f;
        return small[irand(4)];
    case 2: /* mostly distinct values of both signs, some ties */
        if (r < 5) return 1.0f;
        if (r < 8) return NAN;
        return (float)(srand1() * 100);
    default: /* all NaN, all infinities, ... */
        return r < 50 ? NAN : (r < 75 ? INFINITY : -INFINITY);
    }
}

static void test_topk(void) {
    static const char *const modes[] = {"small set", "nan/inf/±0", "distinct", "nan/inf only"};
    int sizes[40], ns = 0;
    for (int n = 1; n <= 10; n++) sizes[ns++] = n;
    static const int more[] = {16, 31, 32, 33, 63, 100, 257, 1000, 4095, 5000};
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) sizes[ns++] = more[i];
    for (int i = 0; i < 8; i++) sizes[ns++] = 1 + irand(5000);
    char msg[256];
    for (int mode = 0; mode < 4; mode++) {
        int cases = 0, bad = 0;
        char first[256] = "";
        for (int si = 0; si < ns; si++) {
            int n = sizes[si];
            float *sc = xmalloc((size_t)n * sizeof *sc);
            for (int rep = 0; rep < (n < 100 ? 4 : 1); rep++) {
                for (int i = 0; i < n; i++) sc[i] = draw_score(mode);
                int ks[] = {0, 1, 2, n - 1, n, n + 5, 1 + irand(n), irand(n + 1), n / 2, -1};
                for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
                    cases++;
                    if (!topk_case(n, sc, ks[ki], msg, sizeof msg) && bad++ == 0) snprintf(first, sizeof first, "%s", msg);
                }
            }
            free(sc);
        }
        CHECK(bad == 0, "%s: top-k, %s scores: %d of %d cases wrong; first: %s", g_lv, modes[mode], bad, cases, first);
    }

    /* ±0 are equal scores: the later index wins the tie whatever the signs */
    float z[4] = {0.0f, -0.0f, 1.0f, -1.0f};
    CHECK(topk_case(4, z, 2, msg, sizeof msg), "%s: top-k, +0 then -0 (equal scores: the later index must win): %s", g_lv, msg);
    float z2[4] = {-0.0f, 0.0f, 1.0f, -1.0f};
    CHECK(topk_case(4, z2, 2, msg, sizeof msg), "%s: top-k, -0 then +0 (equal scores: the later index must win): %s", g_lv, msg);
    /* NaN ranks below -inf */
    float nn[3] = {NAN, -INFINITY, NAN};
    CHECK(topk_case(3, nn, 1, msg, sizeof msg) && topk_case(3, nn, 2, msg, sizeof msg), "%s: top-k NaN: %s", g_lv,
          msg);

    /* the sizes a long context selects in (k a small part of n, where dsa_topk guesses a floor from a sample of
     * the scores): patterns that make the guess too high (a stride matching the sample's), ties across the floor */
    static const char *const pat[] = {"distinct", "strided highs", "8 values", "ascending", "negative highs"};
    static const int pn[] = {2048, 3000, 8192, 16385};
    static const int pk[] = {1, 100, 512, 1500, 2048};
    for (int p = 0; p < 5; p++) {
        int cases = 0, bad = 0;
        char first[256] = "";
        for (size_t ni = 0; ni < sizeof pn / sizeof pn[0]; ni++) {
            int n = pn[ni], step = n >> 10;
            float *sc = xmalloc((size_t)n * sizeof *sc);
            for (int i = 0; i < n; i++)
                sc[i] = p == 0   ? (float)srand1()
                        : p == 1 ? (i % step == 0 ? 10.0f + (float)urand() : (float)srand1())
                        : p == 2 ? (float)(irand(8) - 4)
                        : p == 3 ? (float)i * 1e-3f
                                 : (i % 7 == 0 ? -1.0f - (float)urand() : -100.0f - (float)urand());
            for (size_t ki = 0; ki < sizeof pk / sizeof pk[0]; ki++) {
                cases++;
                if (!topk_case(n, sc, pk[ki], msg, sizeof msg) && bad++ == 0) snprintf(first, sizeof first, "%s", msg);
            }
            free(sc);
        }
        CHECK(bad == 0, "%s: top-k, %s: %d of %d cases wrong; first: %s", g_lv, pat[p], bad, cases, first);
    }

    /* adversarial orders, large n: correct and fast (an O(n^2) selection takes minutes here) */
    const int N = 300000;
    float *sc = xmalloc((size_t)N * sizeof *sc);
    static const char *const adv[] = {"ascending", "descending", "all equal", "organ pipe", "all NaN"};
    for (int a = 0; a < 5; a++) {
        for (int i = 0; i < N; i++)
            sc[i] = a == 0 ? (float)i : a == 1 ? (float)(N - i) : a == 2 ? 1.0f : a == 3 ? (float)(i < N / 2 ? i : N - i)
                                                                                         : NAN;
        int ks[] = {1, N / 2, N - 1, 1000};
        for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
            clock_t t0 = clock();
            int ok = topk_case(N, sc, ks[ki], msg, sizeof msg); /* includes two qsorts */
            double sec = (double)(clock() - t0) / CLOCKS_PER_SEC;
            CHECK(ok, "%s: top-k %s: %s", g_lv, adv[a], msg);
            CHECK(sec < 5.0, "%s: top-k %s n=%d k=%d took %.2f s", g_lv, adv[a], N, ks[ki], sec);
        }
    }
    free(sc);
}

/* ---- 5. sparse attention --------------------------------------------------------------------------------------- */

static void test_sparse_attention(void) {
    static const int dims[] = {64, 32, 8, 128, 20};
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        int d = dims[di];
        const int L = 700, heads = 3;
        size_t stride = (size_t)d * heads + 8; /* [pos][kv_head][dim] cache, padded */
        uint16_t *Kc = xmalloc((size_t)L * stride * sizeof *Kc), *Vc = xmalloc((size_t)L * stride * sizeof *Vc);
        for (size_t i = 0; i < (size_t)L * stride; i++) {
            Kc[i] = dsa_f32_to_f16((float)(srand1() * 2));
            Vc[i] = dsa_f32_to_f16((float)srand1());
        }
        const uint16_t *K = Kc + d, *V = Vc + d; /* head 1 */
        float *q = xmalloc((size_t)d * sizeof *q), *w = xmalloc((size_t)L * sizeof *w);
        float *a = xmalloc((size_t)L * sizeof *a), *b = xmalloc((size_t)L * sizeof *b);
        float *oa = xmalloc((size_t)d * sizeof *oa), *ob = xmalloc((size_t)d * sizeof *ob);
        int32_t *idx = xmalloc((size_t)L * sizeof *idx);
        for (int i = 0; i < d; i++) q[i] = (float)(srand1() * 2);
        float scale = 1.0f / sqrtf((float)d);

        /* idx = 0..n-1: the contiguous ops' bits */
        static const int ns[] = {1, 5, 64, 333, 700};
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
            int n = ns[ni];
            for (int s = 0; s < n; s++) idx[s] = s, w[s] = (float)(urand() / n);
            dsa_attn_scores_f16(n, d, K, stride, q, scale, a);
            dsa_attn_scores_f16_idx(n, d, K, stride, idx, q, scale, b);
            CHECK(memcmp(a, b, (size_t)n * sizeof *a) == 0, "%s: d=%d n=%d: scores_idx(0..n-1) != scores", g_lv, d, n);
            for (int i = 0; i < d; i++) oa[i] = 1e30f, ob[i] = -1e30f;
            dsa_attn_sum_f16(n, d, w, V, stride, oa);
            dsa_attn_sum_f16_idx(n, d, w, V, stride, idx, ob);
            CHECK(memcmp(oa, ob, (size_t)d * sizeof *oa) == 0, "%s: d=%d n=%d: sum_idx(0..n-1) != sum", g_lv, d, n);
        }

        /* a random sorted subset: scores, softmax (float, as the engine does), weighted sum vs float64 */
        float *full = xmalloc((size_t)L * sizeof *full);
        dsa_attn_scores_f16(L, d, K, stride, q, scale, full);
        double worst = 0;
        for (int rep = 0; rep < 12; rep++) {
            int n = 0;
            double keep = rep < 4 ? 0.02 : rep < 8 ? 0.3 : 0.9;
            for (int s = 0; s < L; s++)
                if (urand() < keep) idx[n++] = s;
            if (n == 0) idx[n++] = irand(L);
            for (int i = 0; i < n; i++) b[i] = NAN;
            dsa_attn_scores_f16_idx(n, d, K, stride, idx, q, scale, b);
            int same = 1;
            for (int i = 0; i < n; i++) same &= bits_of_f(b[i]) == bits_of_f(full[idx[i]]);
            CHECK(same, "%s: d=%d: a selected row's score differs from its contiguous score", g_lv, d);
            float mx = -INFINITY, sum = 0;
            for (int i = 0; i < n; i++) mx = fmaxf(mx, b[i]);
            for (int i = 0; i < n; i++) sum += (a[i] = expf(b[i] - mx));
            for (int i = 0; i < n; i++) a[i] /= sum;
            for (int i = 0; i < d; i++) oa[i] = NAN;
            dsa_attn_sum_f16_idx(n, d, a, V, stride, idx, oa);

            double *p = xmalloc((size_t)n * sizeof *p), dmx = -INFINITY, dsum = 0;
            for (int s = 0; s < n; s++) {
                double t = 0;
                for (int i = 0; i < d; i++) t += (double)dsa_f16_to_f32(K[(size_t)idx[s] * stride + i]) * q[i];
                p[s] = t / sqrt((double)d);
                dmx = fmax(dmx, p[s]);
            }
            for (int s = 0; s < n; s++) dsum += (p[s] = exp(p[s] - dmx));
            for (int i = 0; i < d; i++) {
                double ref = 0, mag = 0;
                for (int s = 0; s < n; s++) {
                    double t = p[s] / dsum * dsa_f16_to_f32(V[(size_t)idx[s] * stride + i]);
                    ref += t;
                    mag += fabs(t);
                }
                double err = fabs(oa[i] - ref) / (1e-5 * mag);
                if (!(err <= worst)) worst = err; /* NaN propagates */
            }
            free(p);
        }
        CHECK(worst <= 1.0, "%s: d=%d: sparse attention off float64 by %.3g of 1e-5 relative", g_lv, d, worst);
        free(Kc), free(Vc), free(q), free(w), free(a), free(b), free(oa), free(ob), free(idx), free(full);
    }
}

static void check_level(int level, const json_t *fx) {
    dsa_kernels_init(level);
    g_lv = LEVELS[level];
    CHECK(strcmp(dsa_cpu_name(), g_lv) == 0, "asked for %s, running %s", g_lv, dsa_cpu_name());
    test_fp8_fixture(fx);
    test_fp8_quant_row();
    test_hadamard();
    test_indexer();
    test_topk();
    test_sparse_attention();
}

int main(void) {
    json_t *fx = tu_load_json("fp8_e4m3.json");
    dsa_kernels_init(0);
    const char *best = dsa_cpu_name();
    check_level(1, fx);
    if (strcmp(best, "generic") != 0) check_level(2, fx);
    if (strcmp(best, "avx512") == 0) check_level(3, fx);
    json_decref(fx);
    dsa_kernels_init(0);
    return tu_finish("test_dsa_ops");
}
