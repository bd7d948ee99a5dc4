// Fiber runtime: hand-rolled x86-64 context switch; blocks of up to 1024 threads, one after another, or (a
// cooperative launch) all of the grid's at once with grid-wide barriers; block, warp and grid barriers that count
// the threads still running; warp collectives (shuffles, votes, tensor-core MMA, ldmatrix) through per-warp slots;
// shared memory poisoned and ending at a guard page.
#include "shim.h"
#include "emu_rt.h"
#include <sys/mman.h>
#include <signal.h>
#include <unistd.h>
#include <vector>
#include <deque>
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

namespace {
enum { RUN, WAIT, DONE };
const int MAXT = 1024, STK = 256 * 1024, SLOT = 64;

struct Bar { int arrived = 0, members = 0; };
struct Pending { void *dst; const void *src; bool ok; long group; };
struct Block { // one resident block's state
    Bar bar, warp[MAXT / 32];
    char *dyn = nullptr; // dynamic shared memory, right before a guard page
    char *dyn_map = nullptr;
    size_t dyn_map_sz = 0;
    std::map<std::string, std::pair<char *, size_t>> statics;
    char slots[MAXT / 32][2][32][SLOT]; // warp collectives, double-buffered by phase
    int slot_tag[MAXT / 32][2][32];
    float warp_out[MAXT / 32][2][32][4]; // a warp collective's results, computed once for all lanes
    int warp_done[MAXT / 32][2];
};
} // namespace

struct EmuFiber {
    EmuFiberPub pub; // first: threadIdx, blockIdx
    void *sp;
    int state, phase, blk;
    Bar *waiting;
    char *stack;
    std::vector<Pending> cp; // cp.async copies not yet done
    long cp_groups;
};
EmuFiber *emu_cur;
float emu_f16_table[65536];
static struct F16Table {
    F16Table() {
        for (int i = 0; i < 65536; i++) {
            uint16_t h = (uint16_t)i;
            _Float16 f;
            memcpy(&f, &h, 2);
            emu_f16_table[i] = (float)f;
        }
    }
} f16_table_init;
uint3 gridDim, blockDim;
long emu_switches;
void emu_poison(void *p, size_t bytes) { // a NaN in every f32
    const uint32_t q = 0x7fc0dead;
    for (size_t i = 0; i + 4 <= bytes; i += 4) memcpy((char *)p + i, &q, 4);
}

namespace {
std::vector<EmuFiber> fib;
std::vector<Block *> blocks; // slots, reused from launch to launch
void *sched_sp;
std::deque<int> ready;
std::mt19937 rng;
int policy; // 0 FIFO, 1 LIFO, 2 random
bool coop;
Bar grid_bar;
int nthreads, nfib; // threads per block; the threads of the blocks resident at once
const std::function<void()> *body;


void yield_blocked(Bar *b) {
    emu_cur->state = WAIT;
    emu_cur->waiting = b;
    emu_switches++;
    emu_switch(&emu_cur->sp, sched_sp);
}
// Make every fiber waiting on b runnable (in a random order under policy 2).
void release(Bar *b, int lo, int hi) {
    std::vector<int> w;
    for (int i = lo; i < hi; i++)
        if (fib[i].state == WAIT && fib[i].waiting == b) fib[i].state = RUN, fib[i].waiting = nullptr, w.push_back(i);
    if (policy == 2) std::shuffle(w.begin(), w.end(), rng);
    ready.insert(ready.end(), w.begin(), w.end());
}
void bar_range(Bar *b, int *lo, int *hi) {
    const Block &B = *blocks[emu_cur->blk];
    int b0 = emu_cur->blk * nthreads;
    if (b == &grid_bar) *lo = 0, *hi = nfib;
    else if (b == &B.bar) *lo = b0, *hi = b0 + nthreads;
    else { int w = int(b - B.warp); *lo = b0 + 32 * w, *hi = std::min(b0 + 32 * w + 32, b0 + nthreads); }
}
// Arrive at barrier b: wait until all of its members still running have arrived.
void barrier(Bar *b) {
    if (++b->arrived < b->members) return yield_blocked(b);
    b->arrived = 0;
    int lo, hi;
    bar_range(b, &lo, &hi);
    release(b, lo, hi);
    // the last arriver goes on only after the others were made ready: it goes through the scheduler too
    ready.push_back(int(emu_cur - fib.data()));
    emu_cur->state = RUN;
    emu_switches++;
    emu_switch(&emu_cur->sp, sched_sp);
}
// A member left (its thread returned): a barrier its remaining members all wait at opens.
void leave(Bar *b) {
    b->members--;
    int lo, hi;
    bar_range(b, &lo, &hi);
    if (b->members > 0 && b->arrived == b->members) b->arrived = 0, release(b, lo, hi);
}
Block &cur_block() { return *blocks[emu_cur->blk]; }
int warp_of() { return emu_cur->pub.tid.x >> 5; }

void cp_complete(EmuFiber &f, long upto) { // every copy of a group below upto
    size_t k = 0;
    for (size_t i = 0; i < f.cp.size(); i++) {
        Pending &p = f.cp[i];
        if (p.group < upto) {
            if (p.ok) memcpy(p.dst, p.src, 16);
            else memset(p.dst, 0, 16);
        } else f.cp[k++] = p;
    }
    f.cp.resize(k);
}

void fiber_main() {
    (*body)();
    EmuFiber &f = *emu_cur;
    cp_complete(f, 1L << 62);
    f.state = DONE;
    leave(&cur_block().warp[warp_of()]);
    leave(&cur_block().bar);
    if (coop) leave(&grid_bar);
    emu_switch(&f.sp, sched_sp);
    abort();
}

void set_dyn(Block &B, size_t dyn) {
    size_t pg = 4096, tot = (dyn + 15 + pg - 1) / pg * pg + pg;
    if (tot > B.dyn_map_sz) {
        if (B.dyn_map) munmap(B.dyn_map, B.dyn_map_sz);
        B.dyn_map = (char *)mmap(0, tot, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        B.dyn_map_sz = tot;
        mprotect(B.dyn_map + tot - pg, pg, PROT_NONE);
    }
    size_t d16 = (dyn + 15) / 16 * 16; // the base 16-byte aligned, as on the device
    B.dyn = B.dyn_map + B.dyn_map_sz - pg - d16;
    emu_poison(B.dyn, d16);
}

// Start the fibers of block slot s as block bi.
void start_block(int s, uint3 bi, size_t dyn) {
    Block &B = *blocks[s];
    B.bar = Bar{0, nthreads};
    for (int w = 0; w < (nthreads + 31) / 32; w++) B.warp[w] = Bar{0, std::min(32, nthreads - 32 * w)};
    set_dyn(B, dyn);
    for (auto &st : B.statics) emu_poison(st.second.first, st.second.second);
    memset(B.slots, 0xff, sizeof B.slots);
    memset(B.slot_tag, 0xff, sizeof B.slot_tag);
    std::vector<int> mine;
    for (int i = 0; i < nthreads; i++) {
        int k = s * nthreads + i;
        EmuFiber &F = fib[k];
        F.pub.tid = {(unsigned)(i % blockDim.x), (unsigned)(i / blockDim.x % blockDim.y),
                     (unsigned)(i / (blockDim.x * blockDim.y))};
        F.pub.bid = bi;
        F.state = RUN, F.phase = 0, F.blk = s, F.waiting = nullptr, F.cp.clear(), F.cp_groups = 0;
        if (!F.stack) F.stack = (char *)mmap(0, STK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        uintptr_t top = ((uintptr_t)(F.stack + STK)) & ~(uintptr_t)15;
        uint64_t *sp = (uint64_t *)top;
        sp[-1] = 0, sp[-2] = (uint64_t)(uintptr_t)&fiber_main;
        for (int j = 3; j <= 8; j++) sp[-j] = 0;
        uint32_t fp[2] = {0x1F80, 0x037F};
        memcpy(&sp[-9], fp, 8);
        F.sp = &sp[-9];
        mine.push_back(k);
    }
    if (policy == 2) std::shuffle(mine.begin(), mine.end(), rng);
    if (policy == 1) std::reverse(mine.begin(), mine.end());
    ready.insert(ready.end(), mine.begin(), mine.end());
}

void run_ready(const char *what) {
    while (!ready.empty()) {
        int k;
        if (policy == 1) { k = ready.back(); ready.pop_back(); }
        else if (policy == 2) { size_t j = rng() % ready.size(); k = ready[j]; ready[j] = ready.back(); ready.pop_back(); }
        else { k = ready.front(); ready.pop_front(); }
        emu_cur = &fib[k];
        emu_switch(&sched_sp, fib[k].sp);
        emu_cur = nullptr;
    }
    for (int i = 0; i < nfib; i++)
        if (fib[i].state != DONE) {
            const EmuFiber &f = fib[i];
            int at_block = 0, at_warp = 0, at_grid = 0;
            for (int j = 0; j < nfib; j++)
                if (const EmuFiber &g = fib[j]; g.state == WAIT) {
                    Block &B = *blocks[g.blk];
                    at_grid += g.waiting == &grid_bar, at_block += g.waiting == &B.bar;
                    at_warp += g.waiting != &grid_bar && g.waiting != &B.bar;
                }
            fprintf(stderr, "EMU FAIL: deadlock in %s (block %u,%u,%u thread %u): threads waiting at __syncthreads %d, "
                            "at a warp barrier or collective %d, at grid.sync %d\n",
                    what, f.pub.bid.x, f.pub.bid.y, f.pub.bid.z, f.pub.tid.x, at_block, at_warp, at_grid);
            exit(3);
        }
}
} // namespace

void emu_fail(const char *msg) {
    if (emu_cur)
        fprintf(stderr, "EMU FAIL: %s (block %u,%u,%u thread %u)\n", msg, emu_cur->pub.bid.x, emu_cur->pub.bid.y,
                emu_cur->pub.bid.z, emu_cur->pub.tid.x);
    else fprintf(stderr, "EMU FAIL: %s\n", msg);
    exit(3);
}
void emu_syncthreads() { barrier(&cur_block().bar); }
void emu_warp_barrier() { barrier(&cur_block().warp[warp_of()]); }
void emu_grid_sync() {
    if (!coop) emu_fail("grid.sync() in a launch that is not cooperative");
    barrier(&grid_bar);
}
void emu_warp_full(const char *what) { // a warp collective with the full mask: every lane must still run
    if (cur_block().warp[warp_of()].members != 32) emu_fail(what);
}
void *emu_shfl_slot(int ph, int lane) { return cur_block().slots[warp_of()][ph][lane]; }
int &emu_shfl_tag(int ph, int lane) { return cur_block().slot_tag[warp_of()][ph][lane]; }
int &emu_shfl_phase() { return emu_cur->phase; }
float (*emu_warp_out(int ph))[4] { return cur_block().warp_out[warp_of()][ph]; }
int &emu_warp_done(int ph) { return cur_block().warp_done[warp_of()][ph]; }
void *emu_dyn_smem() { return cur_block().dyn; }
void *emu_static_smem(const char *key, size_t bytes) {
    Block &B = cur_block();
    std::string k = std::string(key) + "#" + std::to_string(bytes); // a template's instantiations differ in size
    auto it = B.statics.find(k);
    if (it == B.statics.end()) {
        size_t b16 = (bytes + 15) / 16 * 16;
        char *b = (char *)emu_galloc(b16);
        emu_poison(b, b16);
        it = B.statics.emplace(k, std::make_pair(b, b16)).first;
    }
    if (it->second.second < bytes) emu_fail("static shared memory size");
    return it->second.first;
}

void emu_cp_async(void *dst, const void *src, bool ok) {
    if ((uintptr_t)dst % 16 || (ok && (uintptr_t)src % 16)) emu_fail("cp.async of 16 bytes not 16-byte aligned");
    emu_cur->cp.push_back(Pending{dst, src, ok, emu_cur->cp_groups});
}
void emu_cp_commit() { emu_cur->cp_groups++; }
void emu_cp_wait(int n) { cp_complete(*emu_cur, emu_cur->cp_groups - n); }

static std::map<void *, std::pair<char *, size_t>> &mappings() { // emu_galloc's buffers: their mmap
    static std::map<void *, std::pair<char *, size_t>> m;
    return m;
}
void *emu_galloc(size_t bytes) { // pages of its own, the buffer (16-byte aligned) between two guard pages
    size_t pg = 4096, b16 = (bytes + 15) / 16 * 16, tot = (b16 + pg - 1) / pg * pg + 2 * pg;
    char *m = (char *)mmap(0, tot, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    mprotect(m, pg, PROT_NONE);
    mprotect(m + tot - pg, pg, PROT_NONE);
    char *b = m + tot - pg - b16;
    mappings()[b] = {m, tot};
    return b;
}
bool emu_gfree(void *p) {
    auto it = mappings().find(p);
    if (it == mappings().end()) return false;
    munmap(it->second.first, it->second.second);
    mappings().erase(it);
    return true;
}

// A load or store outside every buffer (a guard page, or a wild pointer): say which thread, then die.
static void on_fault(int sig, siginfo_t *si, void *) {
    char b[200];
    int n = emu_cur ? snprintf(b, sizeof b, "EMU FAIL: memory fault at %p (past a buffer's end, or a wild pointer) in "
                                            "block %u,%u,%u thread %u\n", si->si_addr, emu_cur->pub.bid.x,
                               emu_cur->pub.bid.y, emu_cur->pub.bid.z, emu_cur->pub.tid.x)
                    : snprintf(b, sizeof b, "EMU FAIL: memory fault at %p outside the kernels\n", si->si_addr);
    if (write(2, b, n) < 0) {}
    signal(sig, SIG_DFL);
    raise(sig);
}
static void catch_faults() {
    static bool done;
    if (done) return;
    done = true;
    static char alt[64 * 1024]; // the fault may come with a fiber's stack in a bad state
    stack_t ss = {};
    ss.ss_sp = alt, ss.ss_size = sizeof alt;
    sigaltstack(&ss, nullptr);
    struct sigaction sa = {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
}

void emu_launch3(uint3 grid, uint3 block, size_t dyn, bool cooperative, int pol, unsigned seed,
                 const std::function<void()> &f) {
    catch_faults();
    policy = pol;
    rng.seed(seed);
    body = &f;
    coop = cooperative;
    gridDim = grid, blockDim = block;
    nthreads = int(block.x * block.y * block.z);
    if (nthreads < 1 || nthreads > MAXT) emu_fail("block size");
    int nblocks = int(grid.x * grid.y * grid.z), nres = coop ? nblocks : 1; // blocks resident at once
    while ((int)blocks.size() < nres) blocks.push_back(new Block);
    nfib = nres * nthreads;
    if ((int)fib.size() < nfib) fib.resize(nfib); // between launches only: emu_cur is null
    std::vector<uint3> order;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) order.push_back(uint3{x, y, z});
    if (pol == 2) std::shuffle(order.begin(), order.end(), rng);
    if (pol == 1) std::reverse(order.begin(), order.end());
    ready.clear();
    if (coop) {
        grid_bar = Bar{0, nblocks * nthreads};
        for (int s = 0; s < nblocks; s++) start_block(s, order[s], dyn);
        run_ready("a cooperative launch");
    } else {
        for (const uint3 &bi : order) {
            start_block(0, bi, dyn);
            run_ready("a block");
        }
    }
}

void emu_launch(int grid, size_t dyn, int pol, unsigned seed, const std::function<void()> &f) {
    emu_launch3(uint3{(unsigned)grid, 1, 1}, uint3{256, 1, 1}, dyn, false, pol, seed, f);
}
