// The device PTX and runtime pieces of cuda_emu.h that are not inline.
#include "cuda_emu.h"

int emu_policy = 0;
unsigned emu_seed = 1;
long emu_launches = 0;

int emu_env(const char *name, int dflt) {
    const char *v = getenv(name);
    return v && *v ? atoi(v) : dflt;
}
std::map<const void *, int> &emu_smem_limits() {
    static std::map<const void *, int> m;
    return m;
}

static double h2d(uint16_t h) { __half x; x.x = h; return __half2float(x); }
static uint16_t half_of(uint32_t w, int hi) { return hi ? (uint16_t)(w >> 16) : (uint16_t)w; }

struct MmaIn { uint32_t a[4], b[2]; };
void emu_mma_16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    MmaIn me = {{a[0], a[1], a[2], a[3]}, {b0, b1}};
    emu_collective(&me, sizeof me, 0x6000, [&](auto slot) {
        auto A = [&](int r, int k) { // A[r][k]: lane 4(r%8) + (k%8)/2, register (r >= 8) + 2(k >= 8), half k&1
            const MmaIn *m = (const MmaIn *)slot(4 * (r % 8) + (k % 8) / 2);
            return h2d(half_of(m->a[(r >= 8) + 2 * (k >= 8)], k & 1));
        };
        auto B = [&](int k, int n) { // B[k][n]: lane 4n + (k%8)/2, register k >= 8, half k&1
            const MmaIn *m = (const MmaIn *)slot(4 * n + (k % 8) / 2);
            return h2d(half_of(m->b[k >= 8], k & 1));
        };
        int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
        for (int i = 0; i < 4; i++) {
            int r = g + 8 * (i >= 2), n = 2 * t + (i & 1);
            double s = c[i];
            for (int k = 0; k < 16; k++) s += A(r, k) * B(k, n);
            c[i] = (float)s;
        }
    });
}

void emu_ldsm4(uint32_t *r, const void *p, bool trans) {
    if ((uintptr_t)p % 16) emu_fail("ldmatrix row address not 16-byte aligned");
    emu_collective(&p, sizeof p, trans ? 0x7001 : 0x7000, [&](auto slot) {
        int lane = threadIdx.x & 31;
        for (int j = 0; j < 4; j++) {
            auto row = [&](int i) { return *(const uint16_t *const *)slot(8 * j + i); };
            uint16_t lo, hi;
            if (!trans) lo = row(lane / 4)[2 * (lane % 4)], hi = row(lane / 4)[2 * (lane % 4) + 1];
            else lo = row(2 * (lane % 4))[lane / 4], hi = row(2 * (lane % 4) + 1)[lane / 4];
            r[j] = (uint32_t)lo | (uint32_t)hi << 16;
        }
    });
}
