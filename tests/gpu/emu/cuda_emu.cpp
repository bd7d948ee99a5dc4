// What cuda_emu.h declares and does not define inline: the device PTX, the runtime, cuBLAS.
#include "cuda_emu.h"
#include "cublas_v2.h"
#include <time.h>
#include <vector>

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

static double h2d(uint16_t h) { return emu_f16_table[h]; }
static uint16_t half_of(uint32_t w, int hi) { return hi ? (uint16_t)(w >> 16) : (uint16_t)w; }

struct MmaIn { uint32_t a[4], b[2]; float c[4]; };
void emu_mma_16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    MmaIn me = {{a[0], a[1], a[2], a[3]}, {b0, b1}, {c[0], c[1], c[2], c[3]}};
    emu_warp_done(emu_shfl_phase()) = 0; // no lane still reads this phase's results (emu_collective)
    emu_collective(&me, sizeof me, 0x6000, [&](auto slot) {
        int ph = emu_shfl_phase();
        float(*out)[4] = emu_warp_out(ph);
        if (!emu_warp_done(ph)) { // the first lane past the barrier works out every lane's D = A·B + C
            float A[16][16], B[16][8];
            for (int l = 0; l < 32; l++) {
                const MmaIn *m = (const MmaIn *)slot(l);
                int g = l >> 2, t = l & 3;
                for (int i = 0; i < 4; i++) // a[i]: row g + 8(i&1), columns 2t + 8(i>>1) + {0, 1}
                    for (int h = 0; h < 2; h++)
                        A[g + 8 * (i & 1)][2 * t + 8 * (i >> 1) + h] = emu_f16_table[half_of(m->a[i], h)];
                for (int i = 0; i < 2; i++) // b[i]: column g, rows 2t + 8i + {0, 1}
                    for (int h = 0; h < 2; h++) B[2 * t + 8 * i + h][g] = emu_f16_table[half_of(m->b[i], h)];
            }
            for (int l = 0; l < 32; l++) {
                const MmaIn *m = (const MmaIn *)slot(l);
                int g = l >> 2, t = l & 3;
                for (int i = 0; i < 4; i++) { // c[i]: row g + 8(i >= 2), column 2t + (i&1)
                    int r = g + 8 * (i >= 2), n = 2 * t + (i & 1);
                    double sum = m->c[i]; // products exact, the sum in double, rounded once
                    for (int k = 0; k < 16; k++) sum += (double)A[r][k] * B[k][n];
                    out[l][i] = (float)sum;
                }
            }
            emu_warp_done(ph) = 1;
        }
        int lane = threadIdx.x & 31;
        for (int i = 0; i < 4; i++) c[i] = out[lane][i];
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

// ---- the runtime ---------------------------------------------------------------------------------------------

static cudaError_t last_error = cudaSuccess;
void emu_set_error(cudaError_t e) { last_error = e; }
extern "C" const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument (emulated)";
    case cudaErrorMemoryAllocation: return "out of memory (emulated)";
    case cudaErrorCooperativeLaunchTooLarge: return "too many blocks in cooperative launch (emulated)";
    default: return "emulated CUDA error";
    }
}
extern "C" cudaError_t cudaGetLastError(void) { cudaError_t e = last_error; last_error = cudaSuccess; return e; }
extern "C" cudaError_t cudaGetDevice(int *d) { *d = 0; return cudaSuccess; }
extern "C" cudaError_t cudaGetDeviceCount(int *n) { *n = 1; return cudaSuccess; }
extern "C" cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int) {
    switch (a) {
    case cudaDevAttrComputeCapabilityMajor: *v = 9; break;
    case cudaDevAttrCooperativeLaunch: *v = 1; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = EMU_OPTIN; break;
    case cudaDevAttrMultiProcessorCount: *v = emu_env("EMU_SMS", 2); break;
    default: return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int) {
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "host emulator (sm_90, %d SMs)", emu_env("EMU_SMS", 2));
    p->totalGlobalMem = (size_t)16 << 30, p->major = 9, p->minor = 0, p->multiProcessorCount = emu_env("EMU_SMS", 2);
    return cudaSuccess;
}

// Device memory: emu_galloc's (between guard pages), poisoned as cudaMalloc's memory is undefined.
cudaError_t cudaMalloc(void **p, size_t bytes) {
    char *b = (char *)emu_galloc(bytes);
    if (!b) return emu_set_error(cudaErrorMemoryAllocation), cudaErrorMemoryAllocation;
    emu_poison(b, bytes);
    *p = b;
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) {
    if (p && !emu_gfree(p)) emu_fail("cudaFree of a pointer cudaMalloc did not return");
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void **p, size_t bytes) { *p = calloc(1, bytes ? bytes : 1); return *p ? cudaSuccess : cudaErrorMemoryAllocation; }
cudaError_t cudaFreeHost(void *p) { free(p); return cudaSuccess; }

static std::vector<std::function<void()>> *capturing; // the graph being captured
struct EmuGraph { std::vector<std::function<void()>> work; };
void emu_issue(std::function<void()> f) {
    if (capturing) capturing->push_back(std::move(f));
    else f();
}
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind) {
    if (capturing) return cudaErrorStreamCaptureUnsupported; // a synchronous copy would end the capture
    memmove(dst, src, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
    emu_issue([=] { memmove(dst, src, bytes); });
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *dst, int byte, size_t bytes, cudaStream_t) {
    emu_issue([=] { memset(dst, byte, bytes); });
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) { *s = 1; return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) {
    if (capturing) return cudaErrorStreamCaptureUnsupported;
    return cudaSuccess;
}
struct EmuEvent { double t; };
static double now_ms() { timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6; }
cudaError_t cudaEventCreate(cudaEvent_t *e) { *e = new EmuEvent{0}; return cudaSuccess; }
cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) { emu_issue([e] { e->t = now_ms(); }); return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) { *ms = (float)(b->t - a->t); return cudaSuccess; }
cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode) {
    if (capturing) return cudaErrorStreamCaptureUnsupported;
    capturing = new std::vector<std::function<void()>>;
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t *g) {
    if (!capturing) return cudaErrorInvalidValue;
    *g = new EmuGraph{std::move(*capturing)};
    delete capturing;
    capturing = nullptr;
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *x, cudaGraph_t g, unsigned long long) { *x = new EmuGraph(*g); return cudaSuccess; }
cudaError_t cudaGraphLaunch(cudaGraphExec_t x, cudaStream_t) {
    for (auto &f : x->work) emu_issue(f);
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) { delete g; return cudaSuccess; }
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t x) { delete x; return cudaSuccess; }

// ---- cuBLAS: column-major C = α·op(A)·op(B) + β·C, f32 accumulation (in double here) ---------------------------
struct EmuBlas { int dummy; };
cublasStatus_t cublasCreate(cublasHandle_t *h) { *h = new EmuBlas{0}; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasDestroy(cublasHandle_t h) { delete h; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetWorkspace(cublasHandle_t, void *, size_t) { return CUBLAS_STATUS_SUCCESS; }
// op(X)[i][p] of an X stored column-major with leading dimension ld, as floats (rows × k of op(X)).
static std::vector<float> op_rows(const void *X, cudaDataType t, cublasOperation_t op, int rows, int k, int ld) {
    std::vector<float> o((size_t)rows * k);
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < k; p++) {
            size_t at = op == CUBLAS_OP_T ? (size_t)p + (size_t)i * ld : (size_t)i + (size_t)p * ld;
            o[(size_t)i * k + p] = t == CUDA_R_16F ? h2d(((const uint16_t *)X)[at]) : ((const float *)X)[at];
        }
    return o;
}
static void gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha, const void *A,
                 cudaDataType at, int lda, const void *B, cudaDataType bt, int ldb, float beta, float *C, int ldc) {
    std::vector<float> a = op_rows(A, at, ta, m, k, lda); // op(A): m × k
    // op(B) is k × n; its columns are the rows of op(B)ᵀ, which is B read with the opposite op
    std::vector<float> b = op_rows(B, bt, tb == CUBLAS_OP_T ? CUBLAS_OP_N : CUBLAS_OP_T, n, k, ldb);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            const float *x = &a[(size_t)i * k], *y = &b[(size_t)j * k];
            double s = 0;
            for (int p = 0; p < k; p++) s += (double)x[p] * y[p];
            float &c = C[(size_t)i + (size_t)j * ldc];
            c = (float)(alpha * s + (beta != 0 ? (double)beta * c : 0.0));
        }
}
cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType at, int lda, const void *B, cudaDataType bt,
                            int ldb, const void *beta, void *C, cudaDataType ct, int ldc, cublasComputeType_t,
                            cublasGemmAlgo_t) {
    if (ct != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    float al = *(const float *)alpha, be = *(const float *)beta;
    emu_issue([=] { gemm(ta, tb, m, n, k, al, A, at, lda, B, bt, ldb, be, (float *)C, ldc); });
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc) {
    float al = *alpha, be = *beta;
    emu_issue([=] { gemm(ta, tb, m, n, k, al, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, be, C, ldc); });
    return CUBLAS_STATUS_SUCCESS;
}
