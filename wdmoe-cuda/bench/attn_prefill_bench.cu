// Standalone check and timing of the prefill attention kernels
// (kernels/attn_prefill.cuh) against an fp64 reference kernel, with the
// previous kernel (bench/attn_prefill_old.cuh) as a baseline variant and
// the warp-specialized experiment (bench/attn_prefill_ws.cuh, not in the
// model: slower, see its header).
//
// Build and run on a GPU machine (sm_90a; use -arch=sm_80 on Ampere), from
// the repository root:
//   nvcc -O3 -std=c++17 -lineinfo --use_fast_math \
//        -gencode=arch=compute_90a,code=sm_90a -Xptxas -v \
//        -I wdmoe-cuda/kernels -I wdmoe-cuda/bench \
//        -o attn_bench wdmoe-cuda/bench/attn_prefill_bench.cu
//   ./attn_bench check   # every variant on every case against the reference
//   ./attn_bench time    # old vs new variants (cudaEvents, median)
//   ./attn_bench small   # production kernels on small cases (for
//                        # compute-sanitizer --tool racecheck / memcheck)
//   ./attn_bench prof    # one launch of each hd-128 variant at T = 2048 (ncu)
//   ./attn_bench         # check, then time
// bench/attn_sdpa.py times torch's scaled_dot_product_attention at the
// same shapes. Each check poisons the output (NaN) and a guard region past
// it before the launch, fills the cache past start+T with NaN (never to be
// read), and fails on any non-finite output, a touched guard, or an
// absolute error >= 2e-3 (the Rust test's tolerance).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "model.cu"
#include "attn_prefill_ws.cuh"  // the warp-specialized experiment (bench only)
namespace oldk {
#include "attn_prefill_old.cuh"
}

#define CK(x)                                                                              \
    do {                                                                                   \
        cudaError_t e_ = (x);                                                              \
        if (e_ != cudaSuccess) {                                                           \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(2);                                                                       \
        }                                                                                  \
    } while (0)

// Other shapes of the new kernel (the production ones are attn_prefill_h64/h128).
// attn_var: the mma.sync path (what the compute_80 PTX runs); attn_wg: the
// wgmma path (sm_90a only).
template <int HD, int NW, int BKV, int MINB, int PIPE, bool SK>
__global__ void __launch_bounds__(NW * 32, MINB) attn_var(const AttnParams p) {
    attn_prefill_body<HD, NW, BKV, PIPE, SK>(p);
}
template <int HD, int BKV, int MINB, int PIPE, bool SK>
__global__ void __launch_bounds__(128, MINB) attn_wg(const AttnParams p) {
#ifdef ATTN_PREFILL_WGMMA
    attn_prefill_wg_body<HD, BKV, PIPE, SK>(p);
#else
    __trap();
#endif
}

// fp64 reference: block (t, h); scores of keys [lo, pos] in shared memory.
__global__ void attn_ref(const float* q, const __half* kc, const __half* vc, float* out, int T, int start, int H,
                         int KVH, int hd, int max_seq, int window, double scale) {
    extern __shared__ double sc[];
    __shared__ double mx_s, sum_s;
    const int t = blockIdx.x, h = blockIdx.y, kvh = h / (H / KVH);
    const int pos = start + t, lo = window > 0 ? max(0, pos + 1 - window) : 0, n = pos - lo + 1;
    const float* qr = q + ((long long)t * H + h) * hd;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const __half* kr = kc + ((long long)kvh * max_seq + lo + j) * hd;
        double acc = 0;
        for (int d = 0; d < hd; ++d) acc += (double)qr[d] * (double)__half2float(kr[d]);
        sc[j] = acc * scale;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double m = -INFINITY;
        for (int j = 0; j < n; ++j) m = fmax(m, sc[j]);
        mx_s = m;
    }
    __syncthreads();
    for (int j = threadIdx.x; j < n; j += blockDim.x) sc[j] = exp(sc[j] - mx_s);
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0;
        for (int j = 0; j < n; ++j) s += sc[j];
        sum_s = s;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        double acc = 0;
        for (int j = 0; j < n; ++j) acc += sc[j] * (double)__half2float(vc[((long long)kvh * max_seq + lo + j) * hd + d]);
        out[((long long)t * H + h) * hd + d] = (float)(acc / sum_s);
    }
}

struct Variant {
    const char* name;
    int hd, bq, threads, smem;  // smem: dynamic shared memory bytes
    void (*fn)(AttnParams);
    bool old;
};

#define VAR(HD, NW, BKV, MINB, PIPE, SK)                                                                   \
    Variant {                                                                                              \
        "mma_w" #NW "k" #BKV "m" #MINB "p" #PIPE "s" #SK "_h" #HD, HD, 16 * NW, 32 * NW,                   \
            PIPE ? attn_prefill_smem<HD, BKV, PIPE>() : 0, attn_var<HD, NW, BKV, MINB, PIPE, SK>, false    \
    }
#define WG(HD, BKV, MINB, PIPE, SK)                                                                       \
    Variant {                                                                                             \
        "wg_k" #BKV "m" #MINB "p" #PIPE "s" #SK "_h" #HD, HD, 64, 128, PIPE ? 4 * (HD / 64) * BKV * 128 + 1024 : 0, \
            attn_wg<HD, BKV, MINB, PIPE, SK>, false                                                       \
    }

template <int HD, int BKV, int ST, bool PP, bool OV>
__global__ void __launch_bounds__(ATTN_WS_THREADS, 1) attn_ws(const AttnParams p) {
#ifdef ATTN_PREFILL_WGMMA
    attn_prefill_ws_body<HD, BKV, ST, PP, OV>(p);
#else
    __trap();
#endif
}
#define WS(HD, ST, PP, OV)                                                                                 \
    Variant {                                                                                              \
        "ws_pp" #PP "_ov" #OV "_h" #HD, HD, 128, ATTN_WS_THREADS, attn_prefill_ws_smem<HD, 64, ST>(),         \
            attn_ws<HD, 64, ST, PP, OV>, false                                                             \
    }

static std::vector<Variant> variants(bool prod_only) {
    std::vector<Variant> v;
    v.push_back({"new_h128", 128, ATTN_PREFILL_BQ, 32 * ATTN_PREFILL_NW, 0, attn_prefill_h128, false});
    v.push_back({"new_h64", 64, ATTN_PREFILL_BQ, 32 * ATTN_PREFILL_NW, 0, attn_prefill_h64, false});
    v.push_back(VAR(128, 4, 64, 3, 0, true));  // the mma.sync path of attn_prefill_h128
    v.push_back(VAR(64, 4, 64, 3, 0, true));   // the mma.sync path of attn_prefill_h64
    if (prod_only) return v;
    v.push_back(WS(128, 4, true, true));
    v.push_back(WS(64, 4, true, true));
    v.push_back(WS(128, 4, true, false));
    v.push_back(WS(128, 4, false, true));
    v.push_back(WS(128, 4, false, false));
    v.push_back({"old_h128", 128, 64, 128, 0, oldk::attn_prefill_old_h128, true});
    v.push_back({"old_h64", 64, 64, 128, 0, oldk::attn_prefill_old_h64, true});
    v.push_back(VAR(64, 4, 64, 4, 0, true));
    v.push_back(WG(128, 64, 2, 0, true));
    v.push_back(WG(128, 64, 3, 0, false));
    v.push_back(WG(128, 64, 3, 1, true));
    v.push_back(WG(64, 64, 4, 0, true));
    for (const Variant& x : v)
        if (x.smem > 48 * 1024) CK(cudaFuncSetAttribute(x.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, x.smem));
    return v;
}

struct Case {
    int T, start, window, hd, H, KVH, max_seq;
    float qmul;
};

struct Bufs {
    float *q = nullptr, *ref = nullptr;
    __half *k = nullptr, *v = nullptr, *out = nullptr;
    size_t out_n = 0;
    static constexpr size_t GUARD = 4096;
};

static uint16_t h_bits(float f) {
    __half h = __float2half(f);
    uint16_t b;
    memcpy(&b, &h, 2);
    return b;
}

static Bufs make(const Case& c, std::mt19937& rng) {
    Bufs b;
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const size_t qn = (size_t)c.T * c.H * c.hd, kn = (size_t)c.KVH * c.max_seq * c.hd;
    std::vector<float> q(qn);
    for (auto& x : q) x = u(rng) * c.qmul;
    std::vector<uint16_t> k(kn), v(kn);
    const uint16_t nan = 0x7e00;
    for (int kh = 0; kh < c.KVH; ++kh)
        for (int s = 0; s < c.max_seq; ++s)
            for (int d = 0; d < c.hd; ++d) {
                const size_t i = ((size_t)kh * c.max_seq + s) * c.hd + d;
                const bool used = s < c.start + c.T;
                k[i] = used ? h_bits(u(rng)) : nan;
                v[i] = used ? h_bits(u(rng)) : nan;
            }
    CK(cudaMalloc(&b.q, qn * 4));
    CK(cudaMalloc(&b.ref, qn * 4));
    CK(cudaMalloc(&b.k, kn * 2));
    CK(cudaMalloc(&b.v, kn * 2));
    b.out_n = qn;
    CK(cudaMalloc(&b.out, (qn + Bufs::GUARD) * 2));
    CK(cudaMemcpy(b.q, q.data(), qn * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(b.k, k.data(), kn * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(b.v, v.data(), kn * 2, cudaMemcpyHostToDevice));
    return b;
}

static void release(Bufs& b) {
    cudaFree(b.q);
    cudaFree(b.ref);
    cudaFree(b.k);
    cudaFree(b.v);
    cudaFree(b.out);
}

static AttnParams params(const Case& c, const Bufs& b) {
    AttnParams p{};
    p.q = b.q;
    p.k_cache = b.k;
    p.v_cache = b.v;
    p.part = nullptr;
    p.out = b.out;
    p.T = c.T;
    p.start = c.start;
    p.H = c.H;
    p.KVH = c.KVH;
    p.hd = c.hd;
    p.max_seq = c.max_seq;
    p.window = c.window;
    p.split_len = 0;
    p.scale = powf((float)c.hd, -0.5f);
    return p;
}

static void launch(const Variant& v, const AttnParams& p) {
    const int nq = (p.T + v.bq - 1) / v.bq;
    if (v.old)
        v.fn<<<dim3(nq, p.H), v.threads>>>(p);
    else
        v.fn<<<dim3(p.H, nq), v.threads, v.smem>>>(p);
}

static void reference(const Case& c, const Bufs& b) {
    const int maxn = c.start + c.T;
    CK(cudaFuncSetAttribute(attn_ref, cudaFuncAttributeMaxDynamicSharedMemorySize, (maxn + 8) * 8));
    attn_ref<<<dim3(c.T, c.H), 128, (maxn + 8) * 8>>>(b.q, b.k, b.v, b.ref, c.T, c.start, c.H, c.KVH, c.hd, c.max_seq,
                                                 c.window, 1.0 / sqrt((double)c.hd));
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
}

// Runs v once on poisoned output; returns false on a failure.
static bool check(const Variant& v, const Case& c, const Bufs& b, const std::vector<float>& ref, double& max_abs,
                  double& max_rel) {
    std::vector<uint16_t> poison(b.out_n + Bufs::GUARD, 0x7e01);
    CK(cudaMemcpy(b.out, poison.data(), poison.size() * 2, cudaMemcpyHostToDevice));
    launch(v, params(c, b));
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<uint16_t> got(poison.size());
    CK(cudaMemcpy(got.data(), b.out, got.size() * 2, cudaMemcpyDeviceToHost));
    max_abs = 0;
    double max_ref = 0;
    size_t bad = 0, nonfinite = 0, guard = 0;
    for (size_t i = 0; i < b.out_n; ++i) {
        __half h;
        memcpy(&h, &got[i], 2);
        const float g = __half2float(h);
        if (!std::isfinite(g)) {
            ++nonfinite;
            continue;
        }
        const double d = fabs((double)g - ref[i]);
        max_abs = std::max(max_abs, d);
        max_ref = std::max(max_ref, (double)fabs(ref[i]));
        if (d >= 2e-3) ++bad;
    }
    for (size_t i = b.out_n; i < got.size(); ++i) guard += got[i] != 0x7e01;
    max_rel = max_ref > 0 ? max_abs / max_ref : max_abs;
    const bool ok = bad == 0 && nonfinite == 0 && guard == 0;
    printf("  %-22s T=%4d start=%4d win=%4d hd=%3d H=%2d/%d qmul=%g: max_abs %.3e max_abs/max|ref| %.3e%s",
           v.name, c.T, c.start, c.window, c.hd, c.H, c.KVH, c.qmul, max_abs, max_rel, ok ? "  ok\n" : "  FAIL");
    if (!ok) printf(" (bad %zu, non-finite/unwritten %zu, guard touched %zu)\n", bad, nonfinite, guard);
    return ok;
}

static int run_checks(bool prod_only, bool small) {
    std::mt19937 rng(1234);
    std::vector<Case> cases;
    if (small) {
        cases = {{100, 37, 40, 128, 8, 2, 300, 1.f}, {17, 0, 0, 64, 8, 2, 64, 1.f}, {70, 5, 0, 128, 4, 4, 100, 4.f}};
    } else {
        for (int hd : {128, 64}) {
            const int H = hd == 128 ? 32 : 8, KVH = hd == 128 ? 8 : 2;
            // The Rust test's prefill cases (max_seq 300).
            cases.push_back({19, 0, 0, hd, H, KVH, 300, 1.f});
            cases.push_back({64, 0, 0, hd, H, KVH, 300, 1.f});
            cases.push_back({130, 37, 0, hd, H, KVH, 300, 1.f});
            cases.push_back({100, 150, 40, hd, H, KVH, 300, 1.f});
            cases.push_back({200, 0, 70, hd, H, KVH, 300, 1.f});
            // More: the long prefill, odd sizes, a chunk after history,
            // windows across tiles, peaked softmax (large q).
            cases.push_back({2048, 0, 0, hd, H, KVH, 2048, 1.f});
            cases.push_back({333, 77, 100, hd, H, KVH, 512, 1.f});
            cases.push_back({17, 0, 0, hd, H, KVH, 64, 1.f});
            cases.push_back({512, 1536, 0, hd, H, KVH, 2100, 1.f});
            cases.push_back({1000, 300, 129, hd, H, KVH, 1400, 1.f});
            cases.push_back({777, 0, 0, hd, H, KVH, 800, 6.f});
            cases.push_back({300, 64, 64, hd, H, KVH, 400, 6.f});
        }
    }
    int fails = 0;
    for (const Case& c : cases) {
        Bufs b = make(c, rng);
        reference(c, b);
        std::vector<float> ref(b.out_n);
        CK(cudaMemcpy(ref.data(), b.ref, ref.size() * 4, cudaMemcpyDeviceToHost));
        for (const Variant& v : variants(prod_only)) {
            if (v.hd != c.hd) continue;
            double a, r;
            fails += !check(v, c, b, ref, a, r);
        }
        release(b);
    }
    printf("checks: %d failure(s)\n", fails);
    return fails;
}

static double median(std::vector<double> x) {
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
}

static void run_timing() {
    std::mt19937 rng(99);
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    std::vector<Case> cases = {{2048, 0, 0, 128, 32, 8, 4096, 1.f},
                               {512, 0, 0, 128, 32, 8, 4096, 1.f},
                               {128, 0, 0, 128, 32, 8, 4096, 1.f},
                               {512, 1536, 0, 128, 32, 8, 4096, 1.f},
                               {2048, 2048, 0, 128, 32, 8, 4096, 1.f},
                               {2048, 0, 4096, 64, 8, 2, 4096, 1.f}};
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    printf("%-22s %5s %5s %4s %10s %9s\n", "variant", "T", "start", "hd", "ms", "TFLOP/s");
    for (const Case& c : cases) {
        Bufs b = make(c, rng);
        const AttnParams p = params(c, b);
        const double flops = 4.0 * c.hd * c.H * ((double)c.T * c.start + (double)c.T * c.T / 2);
        for (const Variant& v : variants(false)) {
            if (v.hd != c.hd) continue;
            const int batch = 10;
            for (int i = 0; i < 5; ++i) launch(v, p);
            CK(cudaDeviceSynchronize());
            std::vector<double> ms;
            for (int r = 0; r < 25; ++r) {
                CK(cudaEventRecord(e0));
                for (int i = 0; i < batch; ++i) launch(v, p);
                CK(cudaEventRecord(e1));
                CK(cudaEventSynchronize(e1));
                float t;
                CK(cudaEventElapsedTime(&t, e0, e1));
                ms.push_back(t / batch);
            }
            CK(cudaGetLastError());
            const double m = median(ms);
            printf("%-22s %5d %5d %4d %10.4f %9.1f\n", v.name, c.T, c.start, c.hd, m, flops / (m * 1e-3) / 1e12);
        }
        release(b);
    }
}

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "all";
    int fails = 0;
    if (mode == "small") return run_checks(true, true) ? 1 : 0;
    if (mode == "prof") {  // one launch of each production kernel at T = 2048 (for ncu)
        std::mt19937 rng(5);
        const Case c{2048, 0, 0, 128, 32, 8, 2048, 1.f};
        Bufs b = make(c, rng);
        for (const Variant& v : variants(false))
            if (v.hd == 128 && (strcmp(v.name, "new_h128") == 0 || strcmp(v.name, "ws_pptrue_ovtrue_h128") == 0))
                launch(v, params(c, b));
        CK(cudaDeviceSynchronize());
        release(b);
        return 0;
    }
    if (mode == "check" || mode == "all") fails = run_checks(false, false);
    if (mode == "time" || mode == "all") run_timing();
    return fails ? 1 : 0;
}
