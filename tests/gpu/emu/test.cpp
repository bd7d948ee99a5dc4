// Host emulation test: gemv_q_call path (gemv_phase<NT,true> -> gemv_q_units<8NT,QT,1>) vs k_gemv_q path
// (k_gemv_q<R(n),QT> -> gemv_q_units<R,QT,2>), bitwise, and both vs a double reference on the dequantised weights.
#include "cuda_emu.h"
#include "src/kernels.cu" // kernels/cuda/kernels.cu as prep.py leaves it: its device code in this file's reach
#include <vector>
#include <random>
#include <string>

cudaStream_t dsa_cu_stream(void) { return 0; }

static std::mt19937_64 R64(12345);
static double unif(double a, double b) { return a + (b - a) * (R64() >> 11) * (1.0 / 9007199254740992.0); }
static double gauss() { double u = unif(1e-12, 1), v = unif(0, 1); return sqrt(-2 * log(u)) * cos(2 * M_PI * v); }
static uint16_t f2h(float f) { return __half_as_ushort(__float2half_rn(f)); }
static double h2d(uint16_t h) { __half x; x.x = h; return __half2float(x); }
static const uint32_t SENT = 0x7fc0dead;
static float sentf() { float f; memcpy(&f, &SENT, 4); return f; }

struct Case { const char *name; int mode, rows_a, cols, rows_b, norm, bias, acc, neox, rope_dim = 64; };
struct Buf {
    std::vector<float> Ya, Yb; std::vector<uint16_t> kc[2], vc[2];
};
struct Setup {
    GemvArgs g; Case c; int n, QT, rows_q, nb;
    std::vector<double> Wd; // dequantised
    Buf init;
    float *Ya, *Yb; uint16_t *kc[2], *vc[2]; size_t cache_len;
    SeqDev *seqs; RowDev *rows; Shape s;
    std::vector<float> X, nrm, bias, freq, Wb; std::vector<RowDev> rw;
};
static const int NCTX = 512, LAYER = 1;

static Setup make(const Case &c, int QT, int n) {
    Setup S; S.c = c; S.n = n; S.QT = QT;
    Shape s = {576, 1536, 9, 3, 64, 0, c.rope_dim, c.neox, 1e-5f, 4, 64, 64, 260, 1e-6f};
    S.s = s;
    int cols = c.cols, rows_q = c.mode == GEMV_SWIGLU ? 2 * c.rows_a : c.rows_a, nb = cols / 32;
    S.rows_q = rows_q; S.nb = nb;
    S.Wd.assign((size_t)rows_q * cols, 0);
    QMat q; q.type = QT;
    size_t nbl = (size_t)rows_q * nb;
    uint8_t *qs = (uint8_t *)emu_galloc(nbl * (QT == QW_Q4_1 ? 16 : 32));
    void *sc = emu_galloc(nbl * (QT == QW_Q4_1 ? 4 : 2));
    for (size_t i = 0; i < nbl * (QT == QW_Q4_1 ? 16 : 32); i++) qs[i] = R64() & 255;
    for (size_t b = 0; b < nbl; b++) {
        size_t row = b / nb, blk = b % nb;
        double *w = &S.Wd[row * cols + blk * 32];
        if (QT == QW_Q4_1) {
            uint16_t d = f2h(unif(0.002, 0.02)), m = f2h(-8 * h2d(d) * unif(0.6, 1.4));
            ((uint16_t *)sc)[2 * b] = d, ((uint16_t *)sc)[2 * b + 1] = m;
            const uint8_t *p = qs + 16 * b;
            for (int i = 0; i < 4; i++) {
                uint32_t wd = p[4 * i] | p[4 * i + 1] << 8 | p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
                for (int k = 0; k < 8; k++) w[8 * i + k] = h2d(d) * ((wd >> (4 * k)) & 15) + h2d(m);
            }
        } else {
            uint16_t d = f2h(unif(0.0005, 0.005));
            ((uint16_t *)sc)[b] = d;
            for (int j = 0; j < 32; j++) w[j] = h2d(d) * (int8_t)qs[32 * b + j];
        }
    }
    q.qs = qs, q.sc = sc;
    GemvArgs g = {};
    g.Wa = nullptr, g.rows_a = c.rows_a, g.qa = q, g.rows_b = c.rows_b, g.cols = cols, g.n = n, g.eps = s.eps;
    g.accumulate = c.acc, g.mode = c.mode, g.s = s, g.layer = LAYER;
    S.X.resize((size_t)n * cols);
    for (auto &v : S.X) v = gauss() * unif(0.2, 3);
    float *X = (float *)emu_galloc(S.X.size() * 4); memcpy(X, S.X.data(), S.X.size() * 4); g.X = X;
    if (c.norm) {
        S.nrm.resize(cols); for (auto &v : S.nrm) v = unif(0.5, 1.5);
        float *p = (float *)emu_galloc(cols * 4); memcpy(p, S.nrm.data(), cols * 4); g.norm = p;
    }
    if (c.rows_b) {
        S.Wb.resize((size_t)c.rows_b * cols); for (auto &v : S.Wb) v = gauss() * 0.05;
        float *p = (float *)emu_galloc(S.Wb.size() * 4); memcpy(p, S.Wb.data(), S.Wb.size() * 4); g.Wb = p;
        S.Yb = (float *)emu_galloc((size_t)n * c.rows_b * 4);
        S.init.Yb.assign((size_t)n * c.rows_b, sentf());
    } else S.Yb = nullptr;
    g.Yb = S.Yb;
    S.Ya = (float *)emu_galloc((size_t)n * c.rows_a * 4); g.Ya = S.Ya;
    S.init.Ya.resize((size_t)n * c.rows_a);
    for (auto &v : S.init.Ya) v = c.acc ? (float)gauss() : sentf();
    if (c.mode == GEMV_QKV) {
        if (c.bias) {
            S.bias.resize(c.rows_a); for (auto &v : S.bias) v = gauss() * 0.3;
            float *p = (float *)emu_galloc(c.rows_a * 4); memcpy(p, S.bias.data(), c.rows_a * 4); g.bias = p;
        }
        S.freq.resize(s.rope_dim / 2);
        for (int i = 0; i < s.rope_dim / 2; i++) S.freq[i] = powf(10000.f, -2.f * i / s.rope_dim);
        float *fr = (float *)emu_galloc(S.freq.size() * 4); memcpy(fr, S.freq.data(), S.freq.size() * 4); g.freq = fr;
        int KV = s.KVH * s.D;
        S.cache_len = (size_t)2 * NCTX * KV;
        SeqDev *sq = (SeqDev *)emu_galloc(2 * sizeof(SeqDev));
        for (int z = 0; z < 2; z++) {
            S.kc[z] = (uint16_t *)emu_galloc(S.cache_len * 2), S.vc[z] = (uint16_t *)emu_galloc(S.cache_len * 2);
            S.init.kc[z].assign(S.cache_len, 0x7fff), S.init.vc[z].assign(S.cache_len, 0x7fff);
            sq[z] = SeqDev{S.kc[z], S.vc[z], nullptr, nullptr, NCTX, 0, 0, 0};
        }
        S.seqs = sq; g.seqs = sq;
        static const int pos[8] = {5, 17, 300, 0, 511, 42, 301, 6};
        for (int r = 0; r < n; r++) S.rw.push_back(RowDev{(int)(R64() % 1000), pos[r / 2], r % 2});
        RowDev *rp = (RowDev *)emu_galloc(n * sizeof(RowDev)); memcpy(rp, S.rw.data(), n * sizeof(RowDev));
        g.rows = rp;
    }
    S.g = g;
    return S;
}
static void reset(Setup &S) {
    memcpy(S.Ya, S.init.Ya.data(), S.init.Ya.size() * 4);
    if (S.Yb) memcpy(S.Yb, S.init.Yb.data(), S.init.Yb.size() * 4);
    if (S.c.mode == GEMV_QKV) for (int z = 0; z < 2; z++) {
        memcpy(S.kc[z], S.init.kc[z].data(), S.cache_len * 2); memcpy(S.vc[z], S.init.vc[z].data(), S.cache_len * 2);
    }
}
static Buf snap(const Setup &S) {
    Buf b;
    b.Ya.assign(S.Ya, S.Ya + S.init.Ya.size());
    if (S.Yb) b.Yb.assign(S.Yb, S.Yb + S.init.Yb.size());
    if (S.c.mode == GEMV_QKV) for (int z = 0; z < 2; z++) {
        b.kc[z].assign(S.kc[z], S.kc[z] + S.cache_len); b.vc[z].assign(S.vc[z], S.vc[z] + S.cache_len);
    }
    return b;
}
static bool same(const Buf &a, const Buf &b) {
    auto eq = [](const void *x, const void *y, size_t n) { return n == 0 || memcmp(x, y, n) == 0; };
    bool ok = a.Ya.size() == b.Ya.size() && eq(a.Ya.data(), b.Ya.data(), a.Ya.size() * 4) &&
              a.Yb.size() == b.Yb.size() && eq(a.Yb.data(), b.Yb.data(), a.Yb.size() * 4);
    for (int z = 0; z < 2; z++) ok = ok && a.kc[z] == b.kc[z] && a.vc[z] == b.vc[z];
    return ok;
}

// ---- the two paths
static void path_a(Setup &S, int B, int pol, unsigned seed) { // k_decode's gemv_phase<NT, true> (it reads the type)
    GemvArgs g = S.g;
    std::function<void()> f;
    if (g.n <= 8) f = [&] { gemv_phase<1, true>(g, (unsigned char *)emu_dyn_smem()); };
    else f = [&] { gemv_phase<2, true>(g, (unsigned char *)emu_dyn_smem()); };
    emu_launch(B, (size_t)g.n * g.cols * 4, pol, seed, f);
}
template <int QT> static void path_b(Setup &S, int B, int pol, unsigned seed) { // launch_gemv_q's choice of R
    GemvArgs g = S.g;
    int n = g.n;
    std::function<void()> f;
    if (n == 1) f = [&] { k_gemv_q<1, QT>(g); };
    else if (n == 2) f = [&] { k_gemv_q<2, QT>(g); };
    else if (n <= 4) f = [&] { k_gemv_q<4, QT>(g); };
    else if (n <= 8) f = [&] { k_gemv_q<8, QT>(g); };
    else f = [&] { k_gemv_q<16, QT>(g); };
    emu_launch(B, (size_t)g.n * g.cols * 4, pol, seed, f);
}

// ---- reference (double, dequantised weights), independent of the source's pairing code
struct Err { double abs = 0, rel = 0, hrel = 0; long bad = 0, nonsent = 0; };
static Err check(const Setup &S, const Buf &o) {
    const Case &c = S.c; int n = S.n, cols = c.cols; const Shape &s = S.s;
    std::vector<double> xn((size_t)n * cols);
    for (int r = 0; r < n; r++) {
        double ss = 0; for (int j = 0; j < cols; j++) ss += (double)S.X[r * cols + j] * S.X[r * cols + j];
        double sc = c.norm ? 1 / sqrt(ss / cols + s.eps) : 1;
        for (int j = 0; j < cols; j++) xn[r * cols + j] = c.norm ? S.X[r * cols + j] * sc * S.nrm[j] : S.X[r * cols + j];
    }
    auto dot = [&](int r, int row) { double a = 0; for (int j = 0; j < cols; j++) a += S.Wd[(size_t)row * cols + j] * xn[r * cols + j]; return a; };
    size_t NA = (size_t)n * c.rows_a;
    std::vector<double> refA(NA, 0); std::vector<char> wrA(NA, 0);
    std::vector<double> refC[2][2]; std::vector<char> wrC[2][2]; // [k/v][seq]
    for (int kv = 0; kv < 2; kv++) for (int z = 0; z < 2; z++) refC[kv][z].assign(S.cache_len, 0), wrC[kv][z].assign(S.cache_len, 0);
    int KV = s.KVH * s.D;
    std::vector<double> refB((size_t)n * c.rows_b);
    for (int r = 0; r < n; r++) {
        for (int b = 0; b < c.rows_b; b++) { double a = 0; for (int j = 0; j < cols; j++) a += (double)S.Wb[(size_t)b * cols + j] * xn[r * cols + j]; refB[(size_t)r * c.rows_b + b] = a; }
        if (c.mode == GEMV_PLAIN) for (int a = 0; a < c.rows_a; a++) refA[r * c.rows_a + a] = (c.acc ? S.init.Ya[r * c.rows_a + a] : 0) + dot(r, a), wrA[r * c.rows_a + a] = 1;
        if (c.mode == GEMV_SWIGLU) for (int a = 0; a < c.rows_a; a++) { double gt = dot(r, a), up = dot(r, a + c.rows_a); refA[r * c.rows_a + a] = gt / (1 + exp(-gt)) * up; wrA[r * c.rows_a + a] = 1; }
        if (c.mode == GEMV_QKV) {
            std::vector<double> y(c.rows_a);
            for (int a = 0; a < c.rows_a; a++) y[a] = dot(r, a) + (c.bias ? S.bias[a] : 0);
            int rh = s.rope_dim / 2;
            for (int h = 0; h < s.H + s.KVH; h++) { // RoPE the q and k heads' first rope_dim dims
                double *hd = &y[h < s.H ? h * s.D : s.E + (h - s.H) * s.D];
                for (int i = 0; i < rh; i++) {
                    int a = s.rope_neox ? i : 2 * i, b = s.rope_neox ? i + rh : 2 * i + 1;
                    double ang = (double)S.rw[r].pos * (double)S.freq[i], y0 = hd[a], y1 = hd[b];
                    hd[a] = y0 * cos(ang) - y1 * sin(ang), hd[b] = y0 * sin(ang) + y1 * cos(ang);
                }
            }
            for (int a = 0; a < c.rows_a; a++) {
                if (a < s.E) { refA[r * c.rows_a + a] = y[a]; wrA[r * c.rows_a + a] = 1; continue; }
                int isv = a >= s.E + KV, d0 = a - s.E - (isv ? KV : 0);
                size_t idx = ((size_t)LAYER * NCTX + S.rw[r].pos) * KV + d0;
                refC[isv][S.rw[r].seq][idx] = y[a]; wrC[isv][S.rw[r].seq][idx] = 1;
            }
        }
    }
    Err e; double mA = 0, mB = 0, eA = 0, eB = 0;
    for (size_t i = 0; i < NA; i++) {
        if (!wrA[i]) { if (memcmp(&o.Ya[i], &S.init.Ya[i], 4)) e.nonsent++; continue; }
        double d = fabs(o.Ya[i] - refA[i]); if (!(d == d)) d = INFINITY;
        eA = std::max(eA, d); mA = std::max(mA, fabs(refA[i]));
    }
    for (size_t i = 0; i < refB.size(); i++) {
        double d = fabs(o.Yb[i] - refB[i]); if (!(d == d)) d = INFINITY;
        eB = std::max(eB, d); mB = std::max(mB, fabs(refB[i]));
    }
    e.abs = std::max(eA, eB);
    e.rel = std::max(mA > 0 ? eA / mA : 0, mB > 0 ? eB / mB : 0);
    if (c.mode == GEMV_QKV) for (int kv = 0; kv < 2; kv++) for (int z = 0; z < 2; z++) {
        const std::vector<uint16_t> &got = kv ? o.vc[z] : o.kc[z];
        for (size_t i = 0; i < S.cache_len; i++) {
            if (!wrC[kv][z][i]) { if (got[i] != 0x7fff) e.nonsent++; continue; }
            double ref = refC[kv][z][i], d = fabs(h2d(got[i]) - ref);
            if (!(d == d)) d = INFINITY;
            // f16 rounding: at most half an f16 ulp (2^-11 relative; 2^-25 absolute in the subnormals) beyond f32's error
            double tol = std::max(fabs(ref) * (1.0 / 2048) * (1 + 1e-3), std::pow(2.0, -25)) + 1e-5 * std::max(mA, 1.0);
            if (d > tol) e.bad++;
            e.hrel = std::max(e.hrel, d / std::max(fabs(ref), 1e-3));
        }
    }
    return e;
}

int main(int argc, char **argv) {
    int quick = argc > 1 && !strcmp(argv[1], "quick");
    const Case cases[] = {
        {"QKV+bias,ix260,neox0", GEMV_QKV, 960, 576, 260, 1, 1, 0, 0},
        {"QKV nobias,ix259,neox1", GEMV_QKV, 960, 576, 259, 1, 0, 0, 1},
        {"PLAIN acc Wo 576x576", GEMV_PLAIN, 576, 576, 0, 0, 0, 1, 0},
        {"SWIGLU 2x1536x576 norm", GEMV_SWIGLU, 1536, 576, 0, 1, 0, 0, 0},
        {"PLAIN acc down 576x1536", GEMV_PLAIN, 576, 1536, 0, 0, 0, 1, 0},
        {"PLAIN 575x576 (odd, set)", GEMV_PLAIN, 575, 576, 0, 0, 0, 0, 0},
        {"QKV+bias,ix260,rope_dim32", GEMV_QKV, 960, 576, 260, 1, 1, 0, 0, 32},
    };
    const int ns[] = {1, 3, 8, 9, 16};
    int fails = 0, total = 0;
    unsigned seed = 1;
    printf("%-5s %-26s %3s | %-63s | %-6s %-9s %-9s %-9s %s\n", "QT", "case", "n", "runs (path:B:sched)", "bitid", "maxabs", "maxrel", "f16rel", "verdict");
    for (int QT : {QW_Q4_1, QW_Q8_0})
        for (const Case &c : cases)
            for (int n : ns) {
                if (quick && n != 1 && n != 9) continue;
                Setup S = make(c, QT, n);
                int units = (c.mode == GEMV_SWIGLU ? c.rows_a : (c.rows_a + 1) / 2) + (c.rows_b + 1) / 2;
                int Bcap = std::min((units + 7) / 8, 4 * 2);
                struct Run { char p; int B; } runs[] = {{'a', 2}, {'a', 3}, {'a', 5}, {'b', 3}, {'b', Bcap}, {'a', (units + 7) / 8 + 2}, {'a', 264}};
                Buf first; bool bitid = true; Err worst; std::string desc;
                for (int k = 0; k < 7; k++) {
                    reset(S);
                    int pol = k % 3;
                    if (runs[k].p == 'a') path_a(S, runs[k].B, pol, seed++);
                    else QT == QW_Q4_1 ? path_b<QW_Q4_1>(S, runs[k].B, pol, seed++) : path_b<QW_Q8_0>(S, runs[k].B, pol, seed++);
                    Buf o = snap(S);
                    if (k == 0) first = o; else if (!same(first, o)) bitid = false;
                    Err e = check(S, o);
                    worst.abs = std::max(worst.abs, e.abs), worst.rel = std::max(worst.rel, e.rel), worst.hrel = std::max(worst.hrel, e.hrel);
                    worst.bad += e.bad, worst.nonsent += e.nonsent;
                    char b[32]; snprintf(b, sizeof b, "%c:%d:%s ", runs[k].p, runs[k].B, pol == 0 ? "fifo" : pol == 1 ? "lifo" : "rand");
                    desc += b;
                }
                bool ok = bitid && worst.rel <= 1e-5 && worst.bad == 0 && worst.nonsent == 0;
                total++; fails += !ok;
                char hr[16] = "-"; if (c.mode == GEMV_QKV) snprintf(hr, sizeof hr, "%.2e", worst.hrel);
                printf("%-5s %-26s %3d | %-63s | %-6s %-9.2e %-9.2e %-9s %s%s\n", QT == 1 ? "Q4_1" : "Q8_0", c.name, n, desc.c_str(),
                       bitid ? "yes" : "NO", worst.abs, worst.rel, hr, ok ? "PASS" : "FAIL",
                       worst.bad ? " (f16 cache out of tol)" : worst.nonsent ? " (wrote outside its outputs)" : "");
                fflush(stdout);
            }
    printf("%d of %d cases failed; %ld fiber switches\n", fails, total, emu_switches);
    return fails ? 1 : 0;
}
