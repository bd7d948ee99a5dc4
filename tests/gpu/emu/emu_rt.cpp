// Fiber runtime: hand-rolled x86-64 context switch, per-block barrier, per-warp barrier, shared memory arenas.
#include "shim.h"
#include "emu_rt.h"
#include <sys/mman.h>
#include <unistd.h>
#include <vector>
#include <string>
#include <map>
#include <random>
#include <algorithm>

extern "C" void emu_switch(void **save_sp, void *new_sp);
asm(R"(
.text
.globl emu_switch
.type emu_switch,@function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
)");

enum { RUN, BLOCKBAR, WARPBAR, DONE };
struct EmuFiber {
    EmuFiberPub pub; // first: threadIdx
    void *sp;
    int state, shfl_phase;
    char *stack;
};
EmuFiber *emu_cur;
uint3 blockIdx, gridDim, blockDim;
static const int NTH = 256, STK = 256 * 1024;
static EmuFiber fib[NTH];
static void *sched_sp;
static std::vector<int> ready;
static int block_arrived, warp_arrived[8], ndone;
static std::mt19937 rng;
static int policy; // 0 FIFO, 1 LIFO, 2 random
static const std::function<void()> *body;
static char *dyn_base;
static std::map<std::string, std::pair<char *, size_t>> statics;
static char shfl_slots[8][2][32][16];
long emu_switches;

void emu_fail(const char *msg) { fprintf(stderr, "EMU FAIL: %s (block %u thread %u)\n", msg, blockIdx.x, emu_cur ? emu_cur->pub.tid.x : 0); exit(3); }

static void yield_blocked(int st) {
    emu_cur->state = st;
    emu_switches++;
    emu_switch(&emu_cur->sp, sched_sp);
}
static void release(int lo, int hi, int st) {
    std::vector<int> w;
    for (int i = lo; i < hi; i++) if (fib[i].state == st) fib[i].state = RUN, w.push_back(i);
    if (policy == 2) std::shuffle(w.begin(), w.end(), rng);
    ready.insert(ready.end(), w.begin(), w.end());
}
// A barrier over fibers lo..hi-1 (count of them arrived so far in *arrived), waiting in state st.
static void barrier(int *arrived, int lo, int hi, int st) {
    if (++*arrived < hi - lo) return yield_blocked(st);
    *arrived = 0;
    emu_cur->state = st;
    release(lo, hi, st);
    // the last arriver keeps going only after everyone was made ready: it goes through the scheduler too
    for (size_t i = 0; i < ready.size(); i++) if (ready[i] == (int)(emu_cur - fib)) { ready.erase(ready.begin() + i); break; }
    ready.push_back(emu_cur - fib);
    yield_blocked(RUN);
}
void emu_syncthreads() { barrier(&block_arrived, 0, NTH, BLOCKBAR); }
void emu_warp_barrier() {
    int w = emu_cur->pub.tid.x >> 5;
    barrier(&warp_arrived[w], 32 * w, 32 * w + 32, WARPBAR);
}
void *emu_shfl_slot(int ph, int lane) { return shfl_slots[emu_cur->pub.tid.x >> 5][ph][lane]; }
int &emu_shfl_phase() { return emu_cur->shfl_phase; }
void *emu_dyn_smem() { return dyn_base; }
void *emu_static_smem(const char *key, size_t bytes) {
    auto it = statics.find(key);
    if (it == statics.end()) {
        // its own pages, the buffer right before a guard page
        size_t pg = 4096, tot = (bytes + pg - 1) / pg * pg + pg;
        char *m = (char *)mmap(0, tot, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        mprotect(m + tot - pg, pg, PROT_NONE);
        char *b = m + tot - pg - bytes;
        for (size_t i = 0; i + 4 <= bytes; i += 4) { uint32_t p = 0x7fc0dead; memcpy(b + i, &p, 4); }
        it = statics.emplace(key, std::make_pair(b, bytes)).first;
    }
    if (it->second.second != bytes) emu_fail("static smem size");
    return it->second.first;
}

static void fiber_main() {
    (*body)();
    emu_cur->state = DONE;
    ndone++;
    emu_switch(&emu_cur->sp, sched_sp);
    abort();
}

void *emu_galloc(size_t bytes) { // global memory: the buffer ends right before a guard page (16-byte aligned)
    size_t pg = 4096, b16 = (bytes + 15) / 16 * 16, tot = (b16 + pg - 1) / pg * pg + 2 * pg;
    char *m = (char *)mmap(0, tot, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    mprotect(m, pg, PROT_NONE);
    mprotect(m + tot - pg, pg, PROT_NONE);
    return m + tot - pg - b16;
}

void emu_launch(int grid, size_t dyn, int pol, unsigned seed, const std::function<void()> &f) {
    policy = pol; rng.seed(seed); body = &f;
    static char *dyn_map; static size_t dyn_map_sz;
    size_t pg = 4096, tot = (dyn + pg - 1) / pg * pg + pg;
    if (dyn_map) munmap(dyn_map, dyn_map_sz);
    dyn_map = (char *)mmap(0, tot, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    dyn_map_sz = tot;
    mprotect(dyn_map + tot - pg, pg, PROT_NONE);
    dyn_base = dyn_map + tot - pg - dyn;
    if ((uintptr_t)dyn_base % 16) emu_fail("dyn smem alignment");
    if (!fib[0].stack) for (int i = 0; i < NTH; i++) fib[i].stack = (char *)malloc(STK);
    gridDim = {(unsigned)grid, 1, 1}; blockDim = {NTH, 1, 1};
    std::vector<int> order(grid);
    for (int i = 0; i < grid; i++) order[i] = i;
    if (pol == 2) std::shuffle(order.begin(), order.end(), rng);
    if (pol == 1) std::reverse(order.begin(), order.end());
    for (int bi : order) {
        blockIdx = {(unsigned)bi, 0, 0};
        for (size_t i = 0; i + 4 <= dyn; i += 4) { uint32_t p = 0x7fc0dead; memcpy(dyn_base + i, &p, 4); }
        for (auto &s : statics) for (size_t i = 0; i + 4 <= s.second.second; i += 4) { uint32_t p = 0x7fc0dead; memcpy(s.second.first + i, &p, 4); }
        memset(shfl_slots, 0xff, sizeof shfl_slots);
        block_arrived = ndone = 0; memset(warp_arrived, 0, sizeof warp_arrived);
        ready.clear();
        for (int i = 0; i < NTH; i++) {
            EmuFiber &F = fib[i];
            F.pub.tid = {(unsigned)i, 0, 0}; F.state = RUN; F.shfl_phase = 0;
            uintptr_t top = ((uintptr_t)(F.stack + STK)) & ~(uintptr_t)15;
            uint64_t *s = (uint64_t *)top;
            s[-1] = 0; s[-2] = (uint64_t)(uintptr_t)&fiber_main;
            for (int k = 3; k <= 8; k++) s[-k] = 0;
            uint32_t fp[2] = {0x1F80, 0x037F}; memcpy(&s[-9], fp, 8);
            F.sp = &s[-9];
            ready.push_back(i);
        }
        if (pol == 2) std::shuffle(ready.begin(), ready.end(), rng);
        if (pol == 1) std::reverse(ready.begin(), ready.end());
        while (!ready.empty()) {
            int k;
            if (pol == 1) { k = ready.back(); ready.pop_back(); }
            else if (pol == 2) { size_t j = rng() % ready.size(); k = ready[j]; ready[j] = ready.back(); ready.pop_back(); }
            else { k = ready.front(); ready.erase(ready.begin()); }
            emu_cur = &fib[k];
            emu_switch(&sched_sp, fib[k].sp);
            emu_cur = nullptr;
        }
        if (ndone != NTH) { fprintf(stderr, "EMU FAIL: deadlock in block %d: %d of %d threads done, %d at __syncthreads\n", bi, ndone, NTH, block_arrived); exit(3); }
    }
}
