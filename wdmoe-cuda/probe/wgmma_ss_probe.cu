// Does the packed GEMM's gated tile (gemm_packed.cuh: two consumer
// warpgroups of 64 weight rows, 128 tokens, W1 and W3 per k16 step) keep the
// tensor cores busier with the weights as a shared-memory operand (wgmma SS)
// than from registers loaded by ld.shared (wgmma RS, the production kernel)?
// Shared-memory resident (no global traffic, no mbarriers): the loop alone.
// Not part of the build; on the GPU machine:
//
//   nvcc -O3 -std=c++17 --use_fast_math -gencode=arch=compute_90a,code=sm_90a -o ss_probe wgmma_ss_probe.cu && ./ss_probe
//
// Modes: 0 RS as production (fragments by ld.shared, two register sets,
// one wgmma group per half stage); 1 SS, weights converted in place to
// core matrices by stmatrix (LBO 128 = along k, SBO 512 = 8-row groups);
// 2 SS with LBO and SBO swapped (which reading of the descriptor matches
// RS); 3 RS with the fragments loaded once (no ld.shared in the loop: the
// register operand's own bound); 4 and 5: 0 and 1 with one consumer
// warpgroup (can one warpgroup alone keep the tensor cores busy?); 6 and 7:
// 1 and 5 with three warps of the idle warpgroup converting 32 KB a stage
// of fragment tiles to core matrices in a scratch region (does the
// conversion's shared-memory traffic slow the tensor cores?).
// Measured (H200, runs M2/M3, BENCHMARKS.md "Runs M1–M6"): modes 0, 1, 3
// and 5 at 100 % of the tensor rate, 4 at 83.4 %, 6 and 7 at 98.2 % with the
// conversion reaching 0.45 / 0.22 of the stages; 2 gives wrong sums. (Modes
// 6-7: the conversion warps, at 40 registers, spill 8 bytes.) M6: modes 8
// and 9 at 80.1 %, 10 and 11 at 97.8-98.0 %; 12 and 13 not run yet.
// Modes 8-11: tiles of 64 stages (k = 4,096), each ended by the gated
// epilogue, the two warpgroups' epilogues at once or half a tile apart,
// RS (8, 9) and SS (10, 11): what letting the warpgroups drift buys; 12:
// 8 with the accumulate flag a constant 1 (wrong sums, timing only); 13: 0
// with the flag chosen at run time every stage (always accumulate).
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <cmath>
#include <vector>
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include "../kernels/wgmma_ra.cuh"  // lds128, wgmma_ra_n128 (RS)
#include "../kernels/wgmma_ss.cuh"  // wgmma_n128 (SS)

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); exit(1); } } while (0)

constexpr int STAGES = 4, X_BYTES = 128 * 64 * 2, W_BYTES = 4 * 8 * 2 * 512, STAGE_BYTES = X_BYTES + W_BYTES;
constexpr int SMEM = STAGES * STAGE_BYTES + 1024 + 32768;  // (+ the conversion's scratch, modes 6-7)

#ifdef WDMOE_SM90A
__device__ __forceinline__ void stmatrix4(uint32_t addr, const uint4& v) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(v.x), "r"(v.y),
                 "r"(v.z), "r"(v.w)
                 : "memory");
}
#endif

// Consumer warpgroups of a mode (modes 4, 5 and 7: one).
__host__ __device__ constexpr int consumer_wgs(int mode) { return (mode == 4 || mode == 5 || mode == 7) ? 1 : 2; }

template <int MODE>
__host__ __device__ constexpr bool ss_mode() { return MODE == 1 || MODE == 2 || MODE == 5 || MODE == 6 || MODE == 7 || MODE == 10 || MODE == 11; }

template <int MODE>
__global__ void __launch_bounds__(384, 1) probe(const uint4* src, float* out, long long* cycles, int nit) {
#ifdef WDMOE_SM90A
    extern __shared__ __align__(1024) uint8_t smem_raw[];
    const uint32_t sbase = (smem_u32(smem_raw) + 1023u) & ~1023u;
    uint8_t* sp = smem_raw + (sbase - smem_u32(smem_raw));
    for (int i = threadIdx.x; i < STAGES * STAGE_BYTES / 16; i += blockDim.x)
        reinterpret_cast<uint4*>(sp)[i] = src[i];
    if (threadIdx.x == 0) *reinterpret_cast<volatile int*>(sp + STAGES * STAGE_BYTES + 32768 - 16) = 0;
    __syncthreads();
    const int wg = threadIdx.x / 128, tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32;
    const int c = wg - 1, t16 = c * 4 + warp;
    if (wg > 0 && ss_mode<MODE>()) {
        // In place, per 1 KB block (k16 step kk, unit t16): both matrices'
        // fragment tiles -> offsets h*512 + m*256 + khalf*128 + row*16.
        for (int s = 0; s < STAGES; ++s)
            for (int kk = 0; kk < 4; ++kk) {
                const uint32_t blk = sbase + s * STAGE_BYTES + X_BYTES + (kk * 8 + t16) * 1024;
                const uint4 f0 = lds128(blk + lane * 16), f1 = lds128(blk + 512 + lane * 16);
                const int i = lane / 8, r = lane % 8;
                const uint32_t a = blk + (i & 1) * 512 + (i >> 1) * 128 + r * 16;
                stmatrix4(a, f0);
                stmatrix4(a + 256, f1);
            }
        fence_proxy_async_smem();
    }
    __syncthreads();
    if (wg == 0) {
        setmaxnreg_dec<40>();
        if ((MODE == 6 || MODE == 7) && warp > 0) {
            // The conversion's shared-memory traffic beside the consumers:
            // warps 1..3 turn a stage's 32 KB of weights (32 blocks of 1 KB)
            // into core matrices each stage, in place in a scratch region
            // the consumers do not read (timing only).
            const uint32_t scratch = sbase + STAGES * STAGE_BYTES;
            volatile int* stop = reinterpret_cast<volatile int*>(sp + STAGES * STAGE_BYTES + 32768 - 16);
            long long n = 0;
            for (; *stop == 0; ++n)
                for (int b = warp - 1; b < 31; b += 3) {  // (block 31 holds the flag)
                    const uint32_t blk = scratch + b * 1024;
                    const uint4 f0 = lds128(blk + lane * 16), f1 = lds128(blk + 512 + lane * 16);
                    const int i = lane / 8, r = lane % 8;
                    const uint32_t a = blk + (i & 1) * 512 + (i >> 1) * 128 + r * 16;
                    stmatrix4(a, f0);
                    stmatrix4(a + 256, f1);
                }
            if (lane == 0 && warp == 1) cycles[gridDim.x * 2 + blockIdx.x] = n;  // stages converted
        }
        return;
    }
    setmaxnreg_inc<232>();
    if (consumer_wgs(MODE) == 1 && wg == 2) return;  // one consumer warpgroup
    float d0[64], d1[64];  // (the first wgmma overwrites them: scale_d = 0, as in production)
    uint4 a0[4][2], a1[4][2];
    auto frag = [&](int s, int kk, int m) {
        return sbase + s * STAGE_BYTES + X_BYTES + ((kk * 8 + t16) * 2 + m) * 512 + lane * 16;
    };
    if (MODE == 3) {
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
#pragma unroll
            for (int m = 0; m < 2; ++m) a0[kk][m] = a1[kk][m] = lds128(frag(0, kk, m));
    }
    long long t0 = clock64();
    int stage = 0;
    auto issue = [&](uint4 (&a)[4][2], int h, bool first) {
        const uint32_t sx = sbase + stage * STAGE_BYTES;
        const uint64_t db = smem_desc(sx);
        if (!ss_mode<MODE>() && MODE != 3) {
#pragma unroll
            for (int kk = 2 * h; kk < 2 * h + 2; ++kk)
#pragma unroll
                for (int m = 0; m < 2; ++m) a[kk][m] = lds128(frag(stage, kk, m));
        }
        wgmma_fence();
#pragma unroll
        for (int kk = 2 * h; kk < 2 * h + 2; ++kk) {
            const int acc = MODE == 12 ? 1 : (!first || kk > 0) ? 1 : 0;
            if (!ss_mode<MODE>()) {
                wgmma_ra_n128(d0, a[kk][0], db + 2 * kk, acc);
                wgmma_ra_n128(d1, a[kk][1], db + 2 * kk, acc);
            } else {
                const uint32_t wa = sx + X_BYTES + (kk * 8 + c * 4) * 1024;
                const uint32_t lbo = MODE != 2 ? 128 : 512, sbo = MODE != 2 ? 512 : 128;
                wgmma_n128(d0, smem_desc_lbo_sbo(wa, lbo, sbo, false), db + 2 * kk, acc);
                wgmma_n128(d1, smem_desc_lbo_sbo(wa + 256, lbo, sbo, false), db + 2 * kk, acc);
            }
        }
        wgmma_commit();
        wgmma_wait<1>();
    };
    // Modes 8-11: tiles of TS stages (k = 4,096), each ended by the gated
    // epilogue (silu(g) u, half2 pairs swapped between lanes, 4-byte
    // stores), both warpgroups at once (lockstep) or the second one half a
    // tile later (staggered).
    constexpr bool TILES = MODE >= 8 && MODE != 13;
    constexpr int TS = 64;
    const int shift = (MODE == 9 || MODE == 11) && c == 1 ? TS / 2 : 0;
    uint32_t* epi = reinterpret_cast<uint32_t*>(out + 256 * 128) + ((size_t)blockIdx.x * 256 + c * 128 + tid) * 32;
    auto epilogue = [&] {
        const uint32_t sel = (lane >> 2) & 1 ? 0x3276u : 0x5410u;
#pragma unroll
        for (int j = 0; j < 64; j += 2) {
            const float a = 1.0f + __expf(-fmaxf(d0[j], -40.0f)), b = 1.0f + __expf(-fmaxf(d0[j + 1], -40.0f));
            const float rab = __fdividef(1.0f, a * b);
            const __half2 hv = __floats2half2_rn(d0[j] * (b * rab) * d1[j], d0[j + 1] * (a * rab) * d1[j + 1]);
            const uint32_t mine = *reinterpret_cast<const uint32_t*>(&hv);
            epi[j / 2] = __byte_perm(mine, __shfl_xor_sync(0xffffffffu, mine, 4), sel);
        }
    };
    for (int it = 0; it < nit; ++it) {
        const bool first = TILES ? (it + shift) % TS == 0 || it == 0 : MODE == 13 ? it == 0 || it == nit + 7 : it == 0;
        issue(a0, 0, first);  // (the two register sets alternate, as in production)
        issue(a1, 1, first);
        if (++stage == STAGES) stage = 0;
        if (TILES && (it + shift) % TS == TS - 1) {
            wgmma_wait<0>();
            epilogue();
        }
    }
    wgmma_wait<0>();
    long long t1 = clock64();
    if (tid == 0) cycles[blockIdx.x * 2 + c] = t1 - t0;
    if (tid == 0 && c == 0) *reinterpret_cast<volatile int*>(sp + STAGES * STAGE_BYTES + 32768 - 16) = 1;
    if (blockIdx.x == 0) {
        float* o = out + (size_t)(c * 128 + tid) * 128;
#pragma unroll
        for (int i = 0; i < 64; ++i) o[i] = d0[i], o[64 + i] = d1[i];
    }
#endif
}

int main(int argc, char** argv) {
    const int nit = argc > 1 ? atoi(argv[1]) : 4096;
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device %s, %d SMs, stages per block %d\n", prop.name, sms, nit);
    std::vector<__half> h(STAGES * STAGE_BYTES / 2);
    srand(12345);
    for (auto& x : h) x = __float2half((rand() / (float)RAND_MAX * 2.f - 1.f) * 0.25f);
    uint4* src;
    float* out;
    long long* cyc;
    CK(cudaMalloc(&src, STAGES * STAGE_BYTES));
    CK(cudaMalloc(&out, 256 * 128 * sizeof(float) + (size_t)sms * 256 * 32 * 4));  // (+ the epilogues' stores, modes 8-11)
    CK(cudaMalloc(&cyc, sms * 3 * sizeof(long long)));
    CK(cudaMemcpy(src, h.data(), STAGES * STAGE_BYTES, cudaMemcpyHostToDevice));
    constexpr int NMODES = 14;
    void (*ks[NMODES])(const uint4*, float*, long long*, int) = {probe<0>, probe<1>, probe<2>, probe<3>,
                                                                 probe<4>, probe<5>, probe<6>, probe<7>,
                                                                 probe<8>, probe<9>, probe<10>, probe<11>, probe<12>, probe<13>};
    const char* names[NMODES] = {"RS, ld.shared fragments (production)", "SS, core matrices LBO 128 / SBO 512",
                                 "SS, LBO 512 / SBO 128 (swapped)", "RS, fragments loaded once (bound)",
                                 "RS as 0, one consumer warpgroup", "SS as 1, one consumer warpgroup",
                                 "SS as 1 + conversion traffic (3 warps)", "SS as 5 + conversion traffic (3 warps)",
                                 "RS, tiles + epilogue, lockstep", "RS, tiles + epilogue, staggered",
                                 "SS, tiles + epilogue, lockstep", "SS, tiles + epilogue, staggered",
                                 "RS as 8, scale-d constant 1 (timing only)", "RS as 0, scale-d chosen at run time"};
    std::vector<float> ref(256 * 128), got(256 * 128);
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int m = 0; m < NMODES; ++m) {
        CK(cudaFuncSetAttribute(ks[m], cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM));
        // correctness (a short run: mode 0's result is the reference)
        CK(cudaMemset(out, 0xff, 256 * 128 * sizeof(float)));
        ks[m]<<<1, 384, SMEM>>>(src, out, cyc, 8);
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(got.data(), out, got.size() * 4, cudaMemcpyDeviceToHost));
        if (m == 0) ref = got;
        double md = 0, mr = 0;
        int nan = 0;
        const size_t nchk = consumer_wgs(m) == 1 ? 128 * 128 : got.size();  // (one warpgroup: its 64 rows)
        for (size_t i = 0; i < nchk; ++i) {
            if (got[i] != got[i]) ++nan;
            md = fmax(md, fabs((double)got[i] - ref[i]));
            mr = fmax(mr, fabs((double)ref[i]));
        }
        // (not compared: 3, one stage's fragments; 8-12, whose timed runs' tiles
        // restart the sums, and 12's accumulate flag is wrong on purpose)
        const bool checked = !(m == 3 || (m >= 8 && m != 13));
        const bool same = nan == 0 && md == 0.0;
        // timing: every SM, median of 5
        std::vector<float> ts;
        std::vector<long long> cy(sms * 3);
        for (int r = 0; r < 6; ++r) {
            CK(cudaEventRecord(e0));
            ks[m]<<<sms, 384, SMEM>>>(src, out, cyc, nit);
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            CK(cudaGetLastError());
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            if (r > 0) ts.push_back(ms);
        }
        std::sort(ts.begin(), ts.end());
        CK(cudaMemcpy(cy.data(), cyc, cy.size() * 8, cudaMemcpyDeviceToHost));
        const int wgs = consumer_wgs(m);
        const double flop = (double)sms * nit * wgs * 8 * 64 * 128 * 16 * 2;  // 8 wgmma m64n128k16 per stage and warpgroup
        const double ideal = 512.0 * wgs;  // cycles per stage at 2,048 fp16 FMA per cycle and SM
        std::vector<long long> cyv;
        for (int i = 0; i < sms; ++i)
            for (int w = 0; w < wgs; ++w) cyv.push_back(cy[i * 2 + w]);
        std::sort(cyv.begin(), cyv.end());
        const double cps = (double)cyv[cyv.size() / 2] / nit;  // cycles per stage, median warpgroup
        if (m == 6 || m == 7) {
            std::vector<long long> cv(cy.begin() + sms * 2, cy.begin() + sms * 3);
            std::sort(cv.begin(), cv.end());
            printf("        conversion warps (at their own pace until the consumers finish): %.2f conversions of 31 KB per consumer stage (median block)\n", (double)cv[sms / 2] / nit);
        }
        printf("mode %d %-40s check %s (max |diff| %.3g of %.3g, NaN %d)  %.3f ms  %.0f TFLOP/s  %.0f cycles/stage = %.1f %% of %.0f\n",
               m, names[m], !checked ? "n/a" : (same ? "bitwise = RS" : "DIFFERS"), md, mr, nan, ts[ts.size() / 2],
               flop / ts[ts.size() / 2] / 1e9, cps, 100.0 * ideal / cps, ideal);
    }
    return 0;
}
