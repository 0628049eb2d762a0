// Device helpers that more than one kernel file uses (included by
// ffn_decode.cu, ffn_prefill.cu and router.cu; one copy per translation
// unit, internal linkage).
#pragma once

namespace {

// Programmatic dependent launch (sm_90): let the next kernel in the stream
// start launching, and wait for the previous one (no-ops without the launch
// attribute, and compiled out for the compute_80 PTX).
__device__ __forceinline__ void griddep_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void griddep_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// The rotate-half RoPE of the pair (x1, x2) = (x[i], x[i + hd/2]) by the
// angle whose (cos, sin) is c: the one definition of the rotation (rope_kv,
// attn_fwd_rope and the q|k|v GEMM's RoPE epilogue), with explicit rounding
// so that ptxas cannot contract it into fused multiply-adds differently in
// different kernels (the fused paths stay bitwise equal to rope_kv, cache
// and output).
__device__ __forceinline__ float2 rope_rotate(float x1, float x2, float2 c) {
    return make_float2(__fsub_rn(__fmul_rn(x1, c.x), __fmul_rn(x2, c.y)),
                       __fadd_rn(__fmul_rn(x2, c.x), __fmul_rn(x1, c.y)));
}

// A 16-byte read-only load that ptxas keeps where it is written (asm
// volatile statements keep their order): a batch of them is in flight
// before the first use, where plain loads could be sunk to their uses.
__device__ __forceinline__ uint4 ld_nc_v4(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

}  // namespace
