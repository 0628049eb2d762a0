// Hopper (sm_90a) building blocks shared by the tensor-core kernels of
// ffn_prefill.cu (the grouped TMA/wgmma GEMM and the packed-weights GEMM of
// gemm_packed.cuh): mbarriers, bulk and tensor copies, wgmma fences and
// descriptors, register reallocation. Internal linkage (one copy per
// translation unit).
#pragma once

#include <stdint.h>

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WDMOE_SM90A 1
#endif

// CUtensorMap (cuda.h): 128 opaque bytes, built on the host by
// cuTensorMapEncodeTiled, passed by value as a __grid_constant__ parameter.
struct alignas(64) TensorMap {
    unsigned long long opaque[16];
};

namespace {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

#ifdef WDMOE_SM90A
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
// Releasing a stage that a warp read with plain shared-memory loads (the
// packed GEMM's weight fragments): every lane arrives itself, so the empty
// barrier counts threads, not warps. An arrive (.release, .cta) orders only
// the arriving thread's own accesses (PTX memory model), and racecheck
// (compute-sanitizer 2025.3) credits an mbarrier with exactly that: a
// __syncwarp or a named barrier before one lane's arrive is correct by the
// model, yet racecheck reports the producer's next bulk copy into the stage
// against the other lanes' loads (probe/racecheck_probe.cu, run K2: 1 hazard
// with one arrive per warp after __syncwarp, bar.sync or a proxy fence; 0
// with one arrive per lane). Stages read only by wgmma (async proxy) keep
// one arrive per warp.
template <bool PER_LANE>
__device__ __forceinline__ void stage_release(uint32_t bar, int lane) {
    if (PER_LANE || lane == 0) mbar_arrive(bar);
}
// The empty barrier's count for `warps` consumer warps releasing that way.
template <bool PER_LANE>
__device__ constexpr uint32_t stage_arrivals(int warps) {
    return PER_LANE ? 32 * warps : warps;
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    uint32_t done;
    do {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    } while (!done);
}
// 2-D bulk tensor copy global -> shared, completing on `bar` (transaction bytes).
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const TensorMap* map, int c0, int c1, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
            dst),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}
// 1-D bulk copy global -> shared of `bytes` (multiple of 16, both addresses
// 16-byte aligned), completing on `bar` (transaction bytes).
__device__ __forceinline__ void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(src)), "r"(bytes), "r"(bar)
                 : "memory");
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
template <int R>
__device__ __forceinline__ void setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(R));
}
template <int R>
__device__ __forceinline__ void setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(R));
}
// Shared memory this thread wrote through the generic proxy (stores, a
// completed cp.async), made visible to the async proxy (wgmma, bulk
// copies) once the readers pass the next barrier.
__device__ __forceinline__ void fence_proxy_async_smem() {
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
// Shared-memory matrix descriptor (byte offsets encoded >> 4): lbo, the
// leading byte offset (without swizzle, K-major: the next core matrix along
// k), sbo, the stride byte offset (the next 8-row group), and the layout:
// 128-byte swizzle (sw128) or none (core matrices of 8 rows x 16 contiguous
// bytes).
__device__ __forceinline__ uint64_t smem_desc_lbo_sbo(uint32_t addr, uint32_t lbo, uint32_t sbo, bool sw128) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
           ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32) | ((uint64_t)(sw128 ? 1 : 0) << 62);
}
// K-major, 128-byte swizzle, 8-row groups 1024 bytes apart, leading byte
// offset unused (16: encoded 1): the TMA boxes of the GEMMs.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr) { return smem_desc_lbo_sbo(addr, 16, 1024, true); }
// A consumer warp with nothing to compute for `n` stages of a tile still
// releases each one once its data arrived (the producer refills it): the
// stage ring's (stage, phase) advance as if it had consumed them.
template <int STAGES, bool PER_LANE>
__device__ __forceinline__ void pass_stages(int n, uint32_t bar_full, uint32_t bar_empty, int& stage,
                                            uint32_t& phase, int lane) {
    for (int i = 0; i < n; ++i) {
        mbar_wait(bar_full + 8 * stage, phase);
        stage_release<PER_LANE>(bar_empty + 8 * stage, lane);
        if (++stage == STAGES) {
            stage = 0;
            phase ^= 1;
        }
    }
}
#endif  // WDMOE_SM90A

}  // namespace
