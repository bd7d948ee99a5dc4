// Host emulation of kernels/cuda's decode step (prep.py + cuda_emu.h: the sources compiled unchanged but for
// shared memory and inline PTX).  One step of n rows, each a token of its own sequence, over two layers with seeded
// random weights and caches, five ways:
//   shipped   the launch sequence model.cu records for a decode graph, with the kernels a GPU run has checked
//             (f32 GEMV, per-key f32 index scores, the global-memory top-k, split-K attention);
//   optin     the same sequence with the opt-in kernels (DSA_CUDA_GEMV=mma, DSA_CUDA_SELECT=new);
//   persist   the persistent kernel (cu_decode: every phase in one cooperative launch);
//   qgraph, qpersist   optin and persist with the weights kept quantised (DSA_CUDA_QUANT; the f16 copies hold the
//             same weights exactly, so they compare with shipped);
// and compares what they leave: the hidden states, the K/V and FP8 key rows written, every layer's selection, and
// nothing written anywhere else in the caches.  persist must match optin (qpersist qgraph) to f32 rounding (the
// same device code but for the attention's block size) and select exactly alike in layer 0; all must match shipped
// within the tensor-core GEMV's error.  Then the tiled prefill attention (DSA_CUDA_FLASH) against the split-K
// kernel on a causal block.  Shapes: the default model's (quantised; not quick: f16 too), heads of 128 (not quick).
//
//   test_decode [quick]     (EMU_SMS / EMU_PER_SM set the emulated device's multiprocessors and its occupancy)
#include "cuda_emu.h"
#include "src/internal.cuh"
#include <vector>
#include <random>
#include <string>
#include <algorithm>
#include <set>
#include <stdarg.h>

cudaStream_t dsa_cu_stream(void) { return 0; }

static std::mt19937_64 R64(777);
static double unif(double a, double b) { return a + (b - a) * (R64() >> 11) * (1.0 / 9007199254740992.0); }
static double gauss() { double u = unif(1e-12, 1), v = unif(0, 1); return sqrt(-2 * log(u)) * cos(2 * M_PI * v); }
static uint16_t f2h(float f) { return __half_as_ushort(__float2half_rn(f)); }
static double h2d(uint16_t h) { __half x; x.x = h; return __half2float(x); }
template <class T> static T *dev(size_t n) { return (T *)emu_galloc(n * sizeof(T)); }
template <class T> static T *dev_from(const std::vector<T> &v) { T *p = dev<T>(v.size()); memcpy(p, v.data(), v.size() * sizeof(T)); return p; }
static std::vector<float> randv(size_t n, double sd, double mean = 0) { std::vector<float> v(n); for (auto &x : v) x = mean + sd * gauss(); return v; }
static std::vector<uint16_t> randh(size_t n, double sd) { std::vector<uint16_t> v(n); for (auto &x : v) x = f2h(sd * gauss()); return v; }
static int grid_round(int len) { int g = 256; while (g < len) g *= 2; return g; } // as model.cu's

static const int NL = 2, NCTX = 640, VOC = 1000;
struct Model {
    Shape s;
    bool quant; // the layers' matrices are kept quantised too (the f16 copies hold their dequantised weights)
    DecodeLayer L[NL];
    DecodeLayer *Ld;
    __half *embd;
    float *rope_freq, *ixln, *ix_freq;
};
// A rows × cols matrix of random Q4_1 or Q8_0 blocks in the kernels' layout (internal.cuh, QMat), and its weights
// dequantised into f16 (what the engine uploads as the f16 copy).  The scales are powers of two and Q4_1's minimum
// an integer multiple of its scale, so that every weight is exact in f16: the quantised and the f16 runs then
// multiply by the same weights, and any difference is the kernels' own.
static QMat random_q(int type, int rows, int cols, const __half **f16) {
    size_t nb = (size_t)rows * (cols / 32);
    QMat q;
    q.type = type;
    uint8_t *qs = dev<uint8_t>(nb * (type == QW_Q4_1 ? 16 : 32));
    uint16_t *sc = dev<uint16_t>(nb * (type == QW_Q4_1 ? 2 : 1));
    std::vector<uint16_t> w((size_t)rows * cols);
    for (size_t b = 0; b < nb; b++) {
        uint16_t *o = &w[b * 32]; // the blocks are row after row, so block b holds weights 32b .. 32b + 31
        if (type == QW_Q4_1) {
            uint16_t d = f2h(ldexpf(1, -8 - (int)(R64() % 3))), m = f2h(-(float)h2d(d) * (float)(4 + R64() % 9));
            sc[2 * b] = d, sc[2 * b + 1] = m;
            for (int i = 0; i < 4; i++) {
                uint32_t wd = (uint32_t)R64();
                memcpy(qs + 16 * b + 4 * i, &wd, 4);
                for (int k = 0; k < 8; k++) o[8 * i + k] = f2h((float)(h2d(d) * ((wd >> (4 * k)) & 15) + h2d(m)));
            }
        } else {
            uint16_t d = f2h(ldexpf(1, -10 - (int)(R64() % 2)));
            sc[b] = d;
            for (int j = 0; j < 32; j++) {
                int8_t v = (int8_t)(R64() & 255);
                qs[32 * b + j] = (uint8_t)v;
                o[j] = f2h((float)(h2d(d) * v));
            }
        }
    }
    q.qs = qs, q.sc = sc;
    *f16 = (const __half *)dev_from(w);
    return q;
}
static Model make_model(const Shape &s, bool quant) {
    Model m;
    m.s = s, m.quant = quant;
    int E = s.E, F = s.F, Q = E + 2 * s.KVH * s.D;
    for (int l = 0; l < NL; l++) {
        DecodeLayer &L = m.L[l];
        L = DecodeLayer{};
        if (quant) { // both types in each layer, each matrix of another type in the other layer
            int t0 = l ? QW_Q8_0 : QW_Q4_1, t1 = l ? QW_Q4_1 : QW_Q8_0;
            L.qqkv = random_q(t0, Q, E, &L.wqkv), L.qwo = random_q(t1, E, E, &L.wo);
            L.qgu = random_q(t0, 2 * F, E, &L.wgu), L.qdown = random_q(t1, E, F, &L.wdown);
        } else {
            L.wqkv = (const __half *)dev_from(randh((size_t)Q * E, 0.05));
            L.wo = (const __half *)dev_from(randh((size_t)E * E, 0.03));
            L.wgu = (const __half *)dev_from(randh((size_t)2 * F * E, 0.05));
            L.wdown = (const __half *)dev_from(randh((size_t)E * F, 0.02));
        }
        L.bqkv = l == 0 ? dev_from(randv(Q, 0.2)) : nullptr; // one layer with biases, one without
        L.attn_norm = dev_from(randv(E, 0.2, 1));
        L.ffn_norm = dev_from(randv(E, 0.2, 1));
        L.wix = dev_from(randv((size_t)s.ix_rows * E, 0.05));
    }
    m.Ld = dev<DecodeLayer>(NL);
    memcpy(m.Ld, m.L, sizeof m.L);
    m.embd = (__half *)dev_from(randh((size_t)VOC * E, 1));
    std::vector<float> fr(s.rope_dim / 2), ifr(std::max(s.ix_rope_dim / 2, 1)), ln((size_t)NL * 2 * s.ixd);
    for (size_t i = 0; i < fr.size(); i++) fr[i] = powf(10000.f, -2.f * i / s.rope_dim);
    for (size_t i = 0; i < ifr.size(); i++) ifr[i] = powf(10000.f, -2.f * i / std::max(s.ix_rope_dim, 2));
    for (int l = 0; l < NL; l++)
        for (int i = 0; i < s.ixd; i++) ln[(size_t)l * 2 * s.ixd + i] = 1 + 0.2 * gauss(), ln[(size_t)l * 2 * s.ixd + s.ixd + i] = 0.1 * gauss();
    m.rope_freq = dev_from(fr), m.ix_freq = dev_from(ifr), m.ixln = dev_from(ln);
    return m;
}

// The sequences of a step (one row each) and their caches, with a snapshot to start every run from.
struct Step {
    int n, grid_len, sel_ld;
    std::vector<RowDev> rw;
    std::vector<SeqDev> sq; // host copy
    RowDev *rows;
    SeqDev *seqs;
    size_t kv_len, ik_len;
    std::vector<std::vector<uint16_t>> kc0, vc0;
    std::vector<std::vector<uint8_t>> ik0;
    std::vector<std::vector<float>> iks0;
};
static Step make_step(const Shape &s, int n, int flavour) {
    Step st;
    st.n = n;
    int KV = s.KVH * s.D, maxlen = 0, maxk = 0;
    st.kv_len = (size_t)NL * NCTX * KV, st.ik_len = (size_t)NL * NCTX * s.ixd;
    for (int r = 0; r < n; r++) {
        // kinds of sequence: selecting in every layer; dense in layer 0 only; dense (not sparse); sparse with a
        // topk above its length (never selects); the position spread over the context
        int kind = (r + flavour) % 4, pos = (int)(unif(0, 1) * (NCTX - 40)) + 20;
        if (r == 0) pos = NCTX - 1; // one row at the end of the context
        SeqDev q = {};
        q.n_ctx = NCTX;
        q.sparse = kind != 2;
        q.topk = kind == 0 ? 64 : kind == 1 ? 96 : kind == 3 ? NCTX : 64;
        q.dense_layers = kind == 1 ? 1 : 0;
        q.kc = dev<uint16_t>(st.kv_len), q.vc = dev<uint16_t>(st.kv_len);
        q.ik = dev<uint8_t>(st.ik_len), q.iks = dev<float>((size_t)NL * NCTX);
        std::vector<uint16_t> k = randh(st.kv_len, 1), v = randh(st.kv_len, 1);
        std::vector<uint8_t> ik(st.ik_len);
        for (auto &b : ik) b = (uint8_t)((R64() % 0x70) | (R64() & 0x80)); // finite e4m3 codes, either sign
        std::vector<float> iks((size_t)NL * NCTX);
        for (auto &x : iks) x = unif(0.002, 0.02);
        memcpy(q.kc, k.data(), k.size() * 2), memcpy(q.vc, v.data(), v.size() * 2);
        memcpy(q.ik, ik.data(), ik.size()), memcpy(q.iks, iks.data(), iks.size() * 4);
        st.kc0.push_back(k), st.vc0.push_back(v), st.ik0.push_back(ik), st.iks0.push_back(iks);
        st.sq.push_back(q);
        st.rw.push_back(RowDev{(int)(R64() % VOC), pos, r});
        maxlen = std::max(maxlen, pos + 1), maxk = std::max(maxk, q.topk);
    }
    st.grid_len = grid_round(maxlen);
    st.sel_ld = maxk;
    st.rows = dev_from(st.rw), st.seqs = dev_from(st.sq);
    return st;
}
static void restore(Step &st) {
    for (int r = 0; r < st.n; r++) {
        const SeqDev &q = st.sq[r];
        memcpy(q.kc, st.kc0[r].data(), st.kv_len * 2), memcpy(q.vc, st.vc0[r].data(), st.kv_len * 2);
        memcpy(q.ik, st.ik0[r].data(), st.ik_len), memcpy(q.iks, st.iks0[r].data(), st.iks0[r].size() * 4);
    }
}
static bool selects(const SeqDev &q, int l, int len) { return q.sparse && q.ik && l >= q.dense_layers && len > q.topk; }

// What a run leaves.
struct Out {
    std::vector<float> x;
    std::vector<std::vector<uint16_t>> knew, vnew; // [row] the new K/V rows, layer after layer
    std::vector<std::vector<uint8_t>> iknew;
    std::vector<std::vector<float>> iksnew;
    std::vector<std::vector<int>> sel[NL]; // [layer][row], sorted; empty with cnt -1
    std::vector<int> cnt[NL];
    long stray = 0; // cache entries changed outside the new rows
};
struct Scratch {
    float *x, *qkv, *att, *hb, *ixproj, *iq, *iw, *part, *scores;
    int *counter, *cnt;
    int32_t *sel;
};
static Scratch make_scratch(const Shape &s, const Step &st) {
    Scratch b;
    int n = st.n, Q = s.E + 2 * s.KVH * s.D;
    b.x = dev<float>((size_t)n * s.E), b.qkv = dev<float>((size_t)n * Q), b.att = dev<float>((size_t)n * s.E);
    b.hb = dev<float>((size_t)n * s.F), b.ixproj = dev<float>((size_t)n * s.ix_rows);
    b.iq = dev<float>((size_t)n * s.ixH * s.ixd), b.iw = dev<float>((size_t)n * s.ixH);
    b.part = dev<float>(cu_attention_part_floats(s, n, st.grid_len));
    b.scores = dev<float>((size_t)n * st.grid_len);
    b.counter = dev<int>((size_t)n * s.KVH);
    memset(b.counter, 0, (size_t)n * s.KVH * 4);
    b.cnt = dev<int>((size_t)NL * n), b.sel = dev<int32_t>((size_t)NL * n * st.sel_ld);
    return b;
}
static void poison_scratch(const Shape &s, const Step &st, Scratch &b) {
    int n = st.n, Q = s.E + 2 * s.KVH * s.D;
    emu_poison(b.x, (size_t)n * s.E * 4), emu_poison(b.qkv, (size_t)n * Q * 4), emu_poison(b.att, (size_t)n * s.E * 4);
    emu_poison(b.hb, (size_t)n * s.F * 4), emu_poison(b.ixproj, (size_t)n * s.ix_rows * 4);
    emu_poison(b.iq, (size_t)n * s.ixH * s.ixd * 4), emu_poison(b.iw, (size_t)n * s.ixH * 4);
    emu_poison(b.part, cu_attention_part_floats(s, n, st.grid_len) * 4), emu_poison(b.scores, (size_t)n * st.grid_len * 4);
    emu_poison(b.cnt, (size_t)NL * n * 4), emu_poison(b.sel, (size_t)NL * n * st.sel_ld * 4);
}

static void die(const char *what) { fprintf(stderr, "FAIL: %s was refused\n", what); exit(2); }

// model.cu's record() for a decode step of n <= 16 rows (no cuBLAS: every GEMV through the GEMV kernels).
static void run_graph(const Model &m, const Step &st, Scratch &b, bool quant) {
    const Shape &s = m.s;
    int n = st.n, E = s.E, F = s.F, Q = E + 2 * s.KVH * s.D;
    if (cu_embed(m.embd, E, st.rows, n, b.x)) die("cu_embed");
    for (int l = 0; l < NL; l++) {
        const DecodeLayer &L = m.L[l];
        if (cu_gemv_qkv(s, L.wqkv, L.bqkv, L.wix, b.x, n, L.attn_norm, st.rows, st.seqs, l, m.rope_freq, b.qkv,
                        b.ixproj, quant ? &L.qqkv : nullptr))
            die("cu_gemv_qkv");
        if (cu_ix_project(s, b.ixproj, m.ixln, m.ix_freq, st.rows, n, st.seqs, l, b.iq, b.iw)) die("cu_ix_project");
        int sel_on = 0;
        for (int r = 0; r < n; r++) sel_on |= selects(st.sq[r], l, st.rw[r].pos + 1);
        int32_t *sel = b.sel + (size_t)l * n * st.sel_ld;
        int *cnt = b.cnt + (size_t)l * n;
        if (sel_on) {
            if (cu_index_scores(s.ixH, s.ixd, st.rows, n, st.seqs, l, b.iq, b.iw, st.grid_len, b.scores, st.grid_len) ||
                cu_topk(st.rows, n, st.seqs, l, b.scores, st.grid_len, sel, st.sel_ld, cnt))
                die("the selection");
        } else {
            for (int r = 0; r < n; r++) cnt[r] = -1; // record()'s memset of the log
        }
        if (cu_attention(s, b.qkv, Q, st.rows, n, st.seqs, l, sel, st.sel_ld, sel_on ? cnt : nullptr, st.grid_len,
                         b.part, b.counter, b.att, nullptr))
            die("cu_attention");
        if (cu_gemv_f16(L.wo, E, E, b.att, n, nullptr, s.eps, b.x, 1, 0, quant ? &L.qwo : nullptr) ||
            cu_gemv_f16(L.wgu, F, E, b.x, n, L.ffn_norm, s.eps, b.hb, 0, 1, quant ? &L.qgu : nullptr) ||
            cu_gemv_f16(L.wdown, E, F, b.hb, n, nullptr, s.eps, b.x, 1, 0, quant ? &L.qdown : nullptr))
            die("the FFN GEMVs");
    }
}
// model.cu's persistent_step().
static void run_persist(const Model &m, const Step &st, Scratch &b, bool quant) {
    DecodeArgs a = {};
    a.s = m.s, a.n_layer = NL, a.n = st.n, a.grid_len = st.grid_len, a.quant = quant, a.L = m.Ld;
    a.rows = st.rows, a.seqs = st.seqs, a.embd = m.embd, a.output = nullptr, a.output_norm = nullptr;
    a.rope_freq = m.rope_freq, a.ixln = m.ixln, a.ix_freq = m.ix_freq, a.x = b.x, a.qkv = b.qkv, a.att = b.att;
    a.hb = b.hb, a.ixproj = b.ixproj, a.iq = b.iq, a.iw = b.iw, a.part = b.part, a.counter = b.counter;
    a.scores = b.scores, a.score_ld = st.grid_len, a.sel_ld = st.sel_ld, a.sel = b.sel, a.cnt = b.cnt;
    a.sel_layer = (size_t)st.n * st.sel_ld, a.cnt_layer = st.n;
    if (cu_decode(a)) die("cu_decode");
}

static Out collect(const Shape &s, const Step &st, const Scratch &b) {
    Out o;
    int n = st.n, KV = s.KVH * s.D;
    o.x.assign(b.x, b.x + (size_t)n * s.E);
    for (int r = 0; r < n; r++) {
        const SeqDev &q = st.sq[r];
        int pos = st.rw[r].pos;
        std::vector<uint16_t> kn, vn;
        std::vector<uint8_t> ikn;
        std::vector<float> iksn;
        for (int l = 0; l < NL; l++) {
            size_t at = ((size_t)l * NCTX + pos) * KV, ia = ((size_t)l * NCTX + pos) * s.ixd;
            kn.insert(kn.end(), q.kc + at, q.kc + at + KV), vn.insert(vn.end(), q.vc + at, q.vc + at + KV);
            ikn.insert(ikn.end(), q.ik + ia, q.ik + ia + s.ixd);
            iksn.push_back(q.iks[(size_t)l * NCTX + pos]);
        }
        o.knew.push_back(kn), o.vnew.push_back(vn), o.iknew.push_back(ikn), o.iksnew.push_back(iksn);
        for (int l = 0; l < NL; l++)
            for (int p = 0; p < NCTX; p++) {
                if (p == pos) continue;
                size_t at = ((size_t)l * NCTX + p) * KV, ia = ((size_t)l * NCTX + p) * s.ixd;
                o.stray += memcmp(q.kc + at, st.kc0[r].data() + at, KV * 2) != 0;
                o.stray += memcmp(q.vc + at, st.vc0[r].data() + at, KV * 2) != 0;
                o.stray += memcmp(q.ik + ia, st.ik0[r].data() + ia, s.ixd) != 0;
                o.stray += memcmp(&q.iks[(size_t)l * NCTX + p], &st.iks0[r][(size_t)l * NCTX + p], 4) != 0;
            }
    }
    for (int l = 0; l < NL; l++) {
        o.sel[l].resize(n), o.cnt[l].resize(n);
        for (int r = 0; r < n; r++) {
            int c = b.cnt[(size_t)l * n + r];
            o.cnt[l][r] = c;
            if (c > 0 && c <= st.sel_ld) {
                const int32_t *p = b.sel + ((size_t)l * n + r) * st.sel_ld;
                o.sel[l][r].assign(p, p + c);
            }
        }
    }
    return o;
}

// The differences between two runs: in layer 0 (the same inputs, so the same code must give the same bits) and
// over both layers (layer 1 starts from hidden states that may differ by rounding).
struct Diff {
    double x = 0, kv = 0;       // worst row's normwise relative error of x; of the new K/V rows
    double overlap = 1;         // the least share of one row's selection that the other run selected too
    long kv0 = 0, ik0 = 0;      // layer 0: K/V halves, FP8 key bytes and scales that differ
    long ik = 0;                // FP8 key bytes and scales that differ, all layers
    long sel0 = 0, seldiff = 0; // rows whose selections differ at all: in layer 0, in any layer
    long cnt = 0, order = 0;    // rows whose selection count differs; selections not ascending and distinct
    long nan = 0;
};
static double relerr(const float *a, const float *b, size_t n, long *nan) {
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        if (!(a[i] == a[i]) || !(b[i] == b[i])) { ++*nan; continue; }
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), m += (double)b[i] * b[i];
    }
    return m > 0 ? sqrt(d / m) : sqrt(d);
}
static Diff compare(const Shape &s, const Step &st, const Out &a, const Out &b) {
    Diff d;
    size_t KV = (size_t)s.KVH * s.D;
    for (int r = 0; r < st.n; r++) {
        d.x = std::max(d.x, relerr(&a.x[(size_t)r * s.E], &b.x[(size_t)r * s.E], s.E, &d.nan));
        std::vector<float> ka, kb;
        for (size_t i = 0; i < a.knew[r].size(); i++) {
            ka.push_back(h2d(a.knew[r][i])), kb.push_back(h2d(b.knew[r][i]));
            ka.push_back(h2d(a.vnew[r][i])), kb.push_back(h2d(b.vnew[r][i]));
            if (i < KV) d.kv0 += (a.knew[r][i] != b.knew[r][i]) + (a.vnew[r][i] != b.vnew[r][i]);
        }
        d.kv = std::max(d.kv, relerr(ka.data(), kb.data(), ka.size(), &d.nan));
        for (size_t i = 0; i < a.iknew[r].size(); i++) {
            bool ne = a.iknew[r][i] != b.iknew[r][i];
            d.ik += ne, d.ik0 += ne && i < (size_t)s.ixd;
        }
        for (int l = 0; l < NL; l++) {
            bool ne = memcmp(&a.iksnew[r][l], &b.iksnew[r][l], 4) != 0;
            d.ik += ne, d.ik0 += ne && l == 0;
        }
        for (int l = 0; l < NL; l++) {
            d.cnt += a.cnt[l][r] != b.cnt[l][r];
            for (const Out *o : {&a, &b}) {
                const std::vector<int> &v = o->sel[l][r];
                for (size_t i = 1; i < v.size(); i++) d.order += v[i] <= v[i - 1];
            }
            const std::vector<int> &x = a.sel[l][r], &y = b.sel[l][r];
            d.sel0 += l == 0 && x != y, d.seldiff += x != y;
            if (x.empty() && y.empty()) continue;
            std::set<int> sy(y.begin(), y.end());
            long both = 0;
            for (int p : x) both += sy.count(p);
            d.overlap = std::min(d.overlap, (double)both / std::max(x.size(), y.size()));
        }
    }
    return d;
}
// The selection a step makes: the rows and layers that select, against the expected count (topk).
static std::string sel_summary(const Step &st, const Out &o, long *bad) {
    int sel = 0, dense = 0;
    for (int l = 0; l < NL; l++)
        for (int r = 0; r < st.n; r++) {
            bool on = selects(st.sq[r], l, st.rw[r].pos + 1);
            if (on) sel++, *bad += o.cnt[l][r] != st.sq[r].topk;
            else dense++, *bad += o.cnt[l][r] != -1;
        }
    char b[64];
    snprintf(b, sizeof b, "%d selecting, %d dense", sel, dense);
    return b;
}

static int fails = 0;
static void verdict(bool ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf(" %s\n", ok ? "PASS" : "FAIL");
    fflush(stdout);
    fails += !ok;
}

// Same code, or close: the strict check (persist against its graph counterpart).  The persistent kernel runs the
// same device code but for the attention's block size (256 threads instead of 128: its sums run in another order),
// so layer 0 writes the same bits and selects alike, and the rest agrees to f32 rounding carried through a layer.
static bool strict(const Diff &d) {
    return d.nan == 0 && d.kv0 == 0 && d.ik0 == 0 && d.sel0 == 0 && d.x <= 1e-5 && d.kv <= 1e-4 && d.cnt == 0 &&
           d.overlap >= 0.98 && d.order == 0;
}
// Against shipped: the tensor-core GEMV and index scores round otherwise (to about 1e-6 here), which may move a
// key across a row's selection threshold; where that happened the attention differs by that key's weight.
static bool loose(const Diff &d) {
    return d.nan == 0 && d.x <= (d.seldiff ? 2e-2 : 1e-4) && d.kv <= 1e-3 && d.cnt == 0 && d.overlap >= 0.95 &&
           d.order == 0;
}

static void decode_case(const Model &m, int n, int flavour) {
    const Shape &s = m.s;
    Step st = make_step(s, n, flavour);
    Scratch b = make_scratch(s, st);
    struct Run { const char *name; bool persist, optin, quant; } runs[] = {
        {"shipped", false, false, false}, {"optin", false, true, false}, {"persist", true, true, false},
        {"qgraph", false, true, true}, {"qpersist", true, true, true}};
    int nrun = m.quant ? 5 : 3;
    Out o[5];
    long bad = 0, stray = 0;
    std::string sum;
    for (int k = 0; k < nrun; k++) {
        restore(st);
        poison_scratch(s, st, b);
        emu_policy = (n + k) % 3;
        cu_gemv_mma(runs[k].optin);
        cu_select_new(runs[k].optin);
        if (runs[k].persist) run_persist(m, st, b, runs[k].quant);
        else run_graph(m, st, b, runs[k].quant);
        o[k] = collect(s, st, b);
        std::string su = sel_summary(st, o[k], &bad);
        if (!k) sum = su;
        stray += o[k].stray;
    }
    printf("decode %s D=%d n=%-2d (%s, grid_len %d)\n", m.quant ? "quantised" : "f16", s.D, n, sum.c_str(), st.grid_len);
    struct Pair { int a, b; bool strict; } pairs[] = {{2, 1, true}, {2, 0, false}, {1, 0, false}, {4, 3, true}, {4, 0, false}};
    bool ok = bad == 0 && stray == 0;
    for (const Pair &p : pairs) {
        if (p.a >= nrun) continue;
        Diff d = compare(s, st, o[p.a], o[p.b]);
        bool good = p.strict ? strict(d) : loose(d);
        ok = ok && good;
        printf("  %-8s ~ %-8s x %.1e kv %.1e key bytes %ld, selections %.3f (layer 0: %ld halves, %ld key bytes, %ld "
               "selections differ)%s\n", runs[p.a].name, runs[p.b].name, d.x, d.kv, d.ik, d.overlap, d.kv0, d.ik0,
               d.sel0, good ? "" : "  <-- out of bounds");
    }
    verdict(ok, "  counts off %ld, stray cache writes %ld;", bad, stray);
}

// Dense causal prefill of n consecutive positions of one sequence: the tiled kernel against the split-K one.
static void flash_case(const Shape &s, int n, int p0) {
    int KV = s.KVH * s.D, Q = s.E + 2 * KV;
    SeqDev q = {};
    q.n_ctx = NCTX;
    size_t kvl = (size_t)NL * NCTX * KV;
    q.kc = dev_from(randh(kvl, 1)), q.vc = dev_from(randh(kvl, 1));
    SeqDev *seqs = dev_from(std::vector<SeqDev>{q});
    std::vector<RowDev> rw;
    for (int r = 0; r < n; r++) rw.push_back(RowDev{0, p0 + r, 0});
    RowDev *rows = dev_from(rw);
    float *qv = dev_from(randv((size_t)n * Q, 1.5));
    int grid_len = grid_round(p0 + n);
    float *part = dev<float>(cu_attention_part_floats(s, n, grid_len));
    int *counter = dev<int>((size_t)n * s.KVH);
    memset(counter, 0, (size_t)n * s.KVH * 4);
    float *a0 = dev<float>((size_t)n * s.E), *a1 = dev<float>((size_t)n * s.E);
    __half *h1 = dev<__half>((size_t)n * s.E);
    emu_poison(a0, (size_t)n * s.E * 4), emu_poison(a1, (size_t)n * s.E * 4), emu_poison(h1, (size_t)n * s.E * 2);
    emu_policy = n % 3;
    if (cu_attention(s, qv, Q, rows, n, seqs, 1, nullptr, 0, nullptr, grid_len, part, counter, a0, nullptr))
        die("cu_attention");
    if (cu_flash_attention(s, qv, Q, rows, n, seqs, 1, a1, h1)) die("cu_flash_attention");
    long nan = 0;
    double worst = 0, hworst = 0;
    for (int r = 0; r < n; r++) {
        worst = std::max(worst, relerr(a1 + (size_t)r * s.E, a0 + (size_t)r * s.E, s.E, &nan));
        for (int i = 0; i < s.E; i++) {
            float h = __half2float(h1[(size_t)r * s.E + i]), f = a1[(size_t)r * s.E + i];
            hworst = std::max(hworst, (double)fabsf(h - f) / std::max(fabsf(f), 1e-3f));
        }
    }
    // P is rounded to f16 before P·V (the split-K kernel keeps it in f32): ~2^-11 relative per weight
    verdict(nan == 0 && worst <= 2e-3 && hworst <= 1.0 / 1024, "flash  n=%-2d from position %d: att %.1e against split-K, f16 copy %.1e",
            n, p0, worst, hworst);
}

int main(int argc, char **argv) {
    bool quick = argc > 1 && !strcmp(argv[1], "quick");
    // the default model's shape (SmolLM2-135M) with an indexer of 3 heads of 64, RoPE on half of its dims; and (not
    // quick) heads of 128 with partial RoPE
    Shape s = {576, 1536, 9, 3, 64, VOC, 64, 0, 1e-5f, 3, 64, 32, 0, 1e-6f};
    Shape s128 = {512, 1024, 4, 2, 128, VOC, 64, 1, 1e-5f, 2, 64, 64, 0, 1e-6f};
    s.ix_rows = s.ixH * s.ixd + s.ixd + s.ixH, s128.ix_rows = s128.ixH * s128.ixd + s128.ixd + s128.ixH;
    printf("emulated device: %d multiprocessors, %d persistent blocks each\n", emu_env("EMU_SMS", 2), emu_env("EMU_PER_SM", 2));
    Model mq = make_model(s, true);
    std::vector<int> ns = quick ? std::vector<int>{1, 9} : std::vector<int>{1, 3, 8, 9, 16};
    for (int n : ns) decode_case(mq, n, n);
    flash_case(s, quick ? 20 : 40, 100);
    if (!quick) {
        Model mf = make_model(s, false), m128 = make_model(s128, false);
        for (int n : {2, 16}) decode_case(mf, n, n + 1);
        for (int n : {1, 5, 12}) decode_case(m128, n, n);
        flash_case(s, 7, 0);
        flash_case(s128, 33, 200);
    }
    printf("%d failed; %ld launches, %ld fiber switches\n", fails, emu_launches, emu_switches);
    return fails ? 1 : 0;
}
