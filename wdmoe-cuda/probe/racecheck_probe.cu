// What compute-sanitizer's racecheck models of the mbarrier hand-off between
// consumers that read a stage with plain shared loads and a producer that
// refills it with a 1-D bulk copy (cp.async.bulk), the pattern of the packed
// GEMM (gemm_packed.cuh), with the kernels' own helpers (hopper.cuh,
// wgmma_ra.cuh). Not part of the build; on the GPU machine
// (wdmoe-cuda/README.md):
//
//   nvcc -arch=sm_90a -lineinfo -o probe racecheck_probe.cu   (sm_90a: hopper.cuh's helpers)
//   compute-sanitizer --tool racecheck ./probe V     (V = variant, below)
//
// One block: warp 0's lane 0 produces, warps 1..2 consume; STAGES stages of
// 2 warps x 32 lanes x 16 bytes; ITERS refills. The kernel checks the sum it
// read against the host's, so a variant that races visibly also fails.
// Measured (NOTES.md, fourteenth session, run K2; compute-sanitizer
// 2025.3.1, H200): 1 hazard for variants 0, 1, 3, 5 and 6, 0 for 2 and 4.
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cuda_runtime.h>

// The kernels' own helpers: lds128 (the packed GEMM's fragment load) and,
// through hopper.cuh, the mbarriers, the bulk copy and the stage release.
#include "../kernels/wgmma_ra.cuh"

[[maybe_unused]] constexpr int STAGES = 2, ITERS = 16, CWARPS = 2;
constexpr int STAGE_BYTES = CWARPS * 32 * 16;

// Variants of the consumer's release (and, 5, the producer's refill):
// 0 lane 0 arrives (count 2)            1 __syncwarp, lane 0 arrives (count 2)
// 2 every lane arrives (count 64)       3 __syncwarp, proxy fence, lane 0 arrives
// 4 every lane: proxy fence, arrive     5 as 1, producer proxy-fences before the copy
// 6 as 0 with bar.sync of the consumers (named barrier 1) before lane 0 of warp 1 arrives (count 1)
__global__ void probe(const uint4* src, unsigned long long* out, int v) {
#ifdef WDMOE_SM90A  // (hopper.cuh: the helpers exist in the sm_90a pass only)
    __shared__ alignas(128) unsigned char buf[STAGES][STAGE_BYTES];
    __shared__ alignas(8) uint64_t bars[2 * STAGES];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint32_t full = smem_u32(&bars[0]), empty = smem_u32(&bars[STAGES]);
    const uint32_t count = v == 2 || v == 4 ? stage_arrivals<true>(CWARPS) : v == 6 ? 1 : stage_arrivals<false>(CWARPS);
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; ++s) mbar_init(full + 8 * s, 1), mbar_init(empty + 8 * s, count);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    int stage = 0;
    uint32_t phase = 0;
    if (warp == 0) {
        if (lane == 0)
            for (int it = 0; it < ITERS; ++it) {
                mbar_wait(empty + 8 * stage, phase ^ 1);
                if (v == 5) fence_proxy_async_smem();
                mbar_expect_tx(full + 8 * stage, STAGE_BYTES);
                bulk_load(smem_u32(buf[stage]), src + (size_t)it * STAGE_BYTES / 16, STAGE_BYTES, full + 8 * stage);
                if (++stage == STAGES) stage = 0, phase ^= 1;
            }
        return;
    }
    unsigned long long sum = 0;
    for (int it = 0; it < ITERS; ++it) {
        mbar_wait(full + 8 * stage, phase);
        const uint4 x = lds128(smem_u32(buf[stage]) + ((warp - 1) * 32 + lane) * 16);
        sum += (unsigned long long)x.x + x.y + x.z + x.w;
        const uint32_t e = empty + 8 * stage;
        switch (v) {
            case 0: stage_release<false>(e, lane); break;
            case 1: case 5: __syncwarp(); if (lane == 0) mbar_arrive(e); break;
            case 2: stage_release<true>(e, lane); break;
            case 3: __syncwarp(); fence_proxy_async_smem(); if (lane == 0) mbar_arrive(e); break;
            case 4: fence_proxy_async_smem(); mbar_arrive(e); break;
            case 6:
                asm volatile("bar.sync 1, %0;" ::"n"(CWARPS * 32) : "memory");
                if (warp == 1 && lane == 0) mbar_arrive(e);
                break;
        }
        if (++stage == STAGES) stage = 0, phase ^= 1;
    }
    atomicAdd(out, sum);
#endif
}

int main(int argc, char** argv) {
    const int v = argc > 1 ? atoi(argv[1]) : 1;
    const int blocks = 4;
    const size_t words = (size_t)ITERS * STAGE_BYTES / 4;
    unsigned* h = (unsigned*)malloc(words * 4);
    unsigned long long want = 0;
    for (size_t i = 0; i < words; ++i) h[i] = (unsigned)(i * 2654435761u) >> 8, want += h[i];
    want *= blocks;
    void* d;
    unsigned long long* o;
    cudaMalloc(&d, words * 4);
    cudaMalloc(&o, 8);
    cudaMemcpy(d, h, words * 4, cudaMemcpyHostToDevice);
    cudaMemset(o, 0, 8);
    probe<<<blocks, 32 * (1 + CWARPS)>>>((const uint4*)d, o, v);
    unsigned long long got = 0;
    cudaError_t e = cudaMemcpy(&got, o, 8, cudaMemcpyDeviceToHost);
    printf("variant %d: %s, sum %s\n", v, cudaGetErrorString(e), got == want ? "ok" : "WRONG");
    return got == want && e == cudaSuccess ? 0 : 1;
}
