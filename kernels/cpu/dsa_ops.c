/*
 * The lightning indexer's kernels: FP8 e4m3 keys, the Hadamard rotation, the index score and top-k selection.
 * Plain C here; dsa_ops_avx2.c and dsa_ops_avx512.c have the SIMD index scores that dsa_indexer_scores picks when
 * the CPU has them.
 */
#include "kernels.h"
#include "ops_impl.h"

#include <math.h>
#include <string.h>

/* ---- FP8 e4m3 ------------------------------------------------------------------------------------------ */

float dsa_fp8_to_f32(uint8_t v) {
    int e = (v >> 3) & 15, m = v & 7;
    float a = e ? ldexpf(1.0f + m / 8.0f, e - 7) : ldexpf((float)m, -9);
    return v & 0x80 ? -a : a;
}

uint8_t dsa_f32_to_fp8(float x) {
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (!(a == a)) return 0; /* NaN: never produced by our rows; map to zero rather than to e4m3's NaN code */
    if (a >= DSA_FP8_MAX) return sign | 0x7E;
    if (a < 0x1p-6f) {
        /* subnormal range: steps of 2^-9; a round up to 8 steps lands on the smallest normal, code 0x08 */
        return sign | (uint8_t)nearbyintf(a * 512.0f);
    }
    int E;
    float m = frexpf(a, &E);                    /* a = m·2^E, m in [0.5, 1) */
    int ex = E - 1;                             /* a = (2m)·2^ex, ex in [-6, 8] */
    int mant = (int)nearbyintf((2.0f * m - 1.0f) * 8.0f); /* ties to even under the default rounding mode */
    if (mant == 8) mant = 0, ex++;
    int code = ((ex + 7) << 3) | mant;
    if (code > 0x7E) code = 0x7E;
    return sign | (uint8_t)code;
}

void dsa_fp8_quant_row(int n, const float *x, uint8_t *q, float *scale) {
    float amax = 0;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > amax) amax = a;
    }
    if (!(amax > 0) || !isfinite(amax)) {
        memset(q, 0, (size_t)n);
        *scale = 0;
        return;
    }
    float s = amax / DSA_FP8_MAX, inv = DSA_FP8_MAX / amax;
    for (int i = 0; i < n; i++) q[i] = dsa_f32_to_fp8(x[i] * inv);
    *scale = s;
}

/* ---- Hadamard -------------------------------------------------------------------------------------------- */

void dsa_hadamard(int n, float *x) {
    for (int h = 1; h < n; h <<= 1)
        for (int i = 0; i < n; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    float s = 1.0f / sqrtf((float)n);
    for (int i = 0; i < n; i++) x[i] *= s;
}

/* ---- index scores ---------------------------------------------------------------------------------------- */

static int use_avx2(void) { return strcmp(dsa_cpu_name(), "generic") != 0; }

/* Plain C, one query. */
static void scores_c(int n, int H, int d, const uint8_t *K8, const float *kscale, const float *q, const float *w,
                     float *out) {
    float k[256 * 2];
    float *kf = d <= 512 ? k : NULL;
    for (int s = 0; s < n; s++) {
        const uint8_t *ks = K8 + (size_t)s * d;
        float acc = 0;
        if (kf) {
            for (int i = 0; i < d; i++) kf[i] = dsa_fp8_to_f32(ks[i]);
            for (int j = 0; j < H; j++) {
                float dot = 0;
                for (int i = 0; i < d; i++) dot += q[j * d + i] * kf[i];
                if (dot > 0) acc += w[j] * dot;
            }
        } else {
            for (int j = 0; j < H; j++) {
                float dot = 0;
                for (int i = 0; i < d; i++) dot += q[j * d + i] * dsa_fp8_to_f32(ks[i]);
                if (dot > 0) acc += w[j] * dot;
            }
        }
        out[s] = kscale[s] * acc;
    }
}

void dsa_indexer_scores_rows(int R, const int *n, int H, int d, const uint8_t *K8, const float *kscale,
                             const float *q, const float *w, float *out, size_t ldo) {
#if defined(__x86_64__)
    if (!strcmp(dsa_cpu_name(), "avx512") && d % 16 == 0 && d <= 256) {
        dsa_indexer_scores_rows_avx512(R, n, H, d, K8, kscale, q, w, out, ldo);
        return;
    }
    if (use_avx2() && d % 8 == 0 && d <= 256) {
        dsa_indexer_scores_rows_avx2(R, n, H, d, K8, kscale, q, w, out, ldo);
        return;
    }
#endif
    for (int r = 0; r < R; r++)
        scores_c(n[r], H, d, K8, kscale, q + (size_t)r * H * d, w + (size_t)r * H, out + (size_t)r * ldo);
}

/* One query is the rows version with one row: the same code, so the same bits. */
void dsa_indexer_scores(int n, int H, int d, const uint8_t *K8, const float *kscale, const float *q, const float *w,
                        float *out) {
    dsa_indexer_scores_rows(1, &n, H, d, K8, kscale, q, w, out, 0);
}

/* ---- top-k ------------------------------------------------------------------------------------------------- */

/* A key whose unsigned order is (score, index): scores map to integers that sort like the floats (NaN lowest),
 * and the index in the low half makes every key distinct, so "the k largest keys" is one fixed set.  No branches:
 * signs are as likely as not. */
static inline uint32_t rank_hi(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u << 1) ? u : 0;                           /* -0 ties with +0 */
    uint32_t key = u ^ ((uint32_t)((int32_t)u >> 31) | 0x80000000u);
    return (u & 0x7FFFFFFFu) > 0x7F800000u ? 0 : key; /* NaN lowest */
}
static inline uint64_t rank_key(float f, uint32_t i) { return (uint64_t)rank_hi(f) << 32 | i; }

/* The element a full ascending sort of a[0..n) would put at m (0 ≤ m < n), by radix selection: count the values
 * of one 8-bit digit among the remaining keys, keep those in the bucket where position m falls, and go on with
 * the next 8 bits until one key remains.  The first digit starts at the highest bit in which the keys differ (from
 * their OR and AND), so no pass is spent on the top bits that scores of one sign and a few exponents share.  The
 * keys here are distinct (an index in the low half), so the answer is one key.  No data-dependent branches, unlike
 * a quickselect, whose comparisons of random scores mispredict half the time; the counts go to two tables in turn,
 * so runs of one digit value do not chain their increments.  a is reordered (each pass moves its survivors to the
 * front). */
static uint64_t kth_key(uint64_t *a, int n, int m) {
    uint64_t or_ = 0, and_ = ~(uint64_t)0;
    for (int i = 0; i < n; i++) or_ |= a[i], and_ &= a[i];
    if (or_ == and_) return a[0];
    int top = 63 - __builtin_clzll(or_ ^ and_);
    for (int shift = top >= 7 ? top - 7 : 0;; shift = shift >= 8 ? shift - 8 : 0) {
        int h0[256] = {0}, h1[256] = {0};
        int i = 0;
        for (; i + 1 < n; i += 2) {
            h0[(a[i] >> shift) & 255]++;
            h1[(a[i + 1] >> shift) & 255]++;
        }
        if (i < n) h0[(a[i] >> shift) & 255]++;
        uint64_t b = 0;
        while (m >= h0[b] + h1[b]) m -= h0[b] + h1[b], b++;
        int kept = 0;
        for (i = 0; i < n; i++) {
            uint64_t x = a[i];
            a[kept] = x;
            kept += ((x >> shift) & 255) == b;
        }
        n = kept;
        if (n == 1 || shift == 0) return a[m];
    }
}

/* A lower bound for the k-th largest key, guessed from a strided sample of about 1024 scores: the sample's r-th
 * largest, with r a quarter more than its share of k and a margin, so that usually a little more than k keys reach
 * it.  0 when n or k makes the guess pointless. */
static uint32_t sample_floor(int n, const float *score, int k, uint64_t *scratch) {
    if (n < 2048 || k > n / 4) return 0;
    int step = n >> 10, m = n / step;
    int r = (int)((double)k * m / n * 1.25) + 8;
    if (r >= m) return 0;
    for (int i = 0; i < m; i++) scratch[i] = (uint64_t)rank_hi(score[(size_t)i * step]) << 32 | (uint32_t)i;
    return (uint32_t)(kth_key(scratch, m, m - r) >> 32);
}

/* The keys of the scores whose score half reaches floor, in index order, into out; returns how many. */
static int gather_keys(int n, const float *score, uint32_t floor, uint64_t *out) {
#if defined(__x86_64__)
    if (!strcmp(dsa_cpu_name(), "avx512")) return dsa_topk_gather_avx512(n, score, floor, out);
#endif
    int c = 0;
    for (int i = 0; i < n; i++) {
        uint32_t h = rank_hi(score[i]);
        if (h >= floor) out[c++] = (uint64_t)h << 32 | (uint32_t)i;
    }
    return c;
}

/* The indices whose key reaches thr, ascending, into idx; returns how many. */
static int emit_keys(int n, const float *score, uint64_t thr, int32_t *idx) {
#if defined(__x86_64__)
    if (!strcmp(dsa_cpu_name(), "avx512")) return dsa_topk_emit_avx512(n, score, thr, idx);
#endif
    int m = 0;
    for (int i = 0; i < n; i++)
        if (rank_key(score[i], (uint32_t)i) >= thr) idx[m++] = i;
    return m;
}

int dsa_topk(int n, const float *score, int k, int32_t *idx, uint64_t *scratch) {
    if (k <= 0 || n <= 0) return 0;
    if (k >= n) {
        for (int i = 0; i < n; i++) idx[i] = i;
        return n;
    }
    /* The k largest keys are among those whose score half reaches a floor that at least k keys reach: select
     * among those few instead of all n.  Where the floor lets fewer than k through, select among all. */
    uint32_t floor = sample_floor(n, score, k, scratch);
    int c = gather_keys(n, score, floor, scratch);
    if (c < k) c = gather_keys(n, score, 0, scratch);
    return emit_keys(n, score, kth_key(scratch, c, c - k), idx);
}
