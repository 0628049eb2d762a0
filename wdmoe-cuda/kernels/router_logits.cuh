// The router's logits for one token (included by router.cu and moe_route.cu;
// one copy per translation unit, internal linkage).
#pragma once

#include <cuda_fp16.h>

namespace {

// sl[0..e) = the logits of token `tok` (dynamic shared memory: e logits,
// then e x S partial sums). S warps per expert (S = warps / e, at least 1)
// each take every S-th 16-byte chunk of the row: with 1 token the dot
// products are latency-bound, so more warps per expert shorten the kernel.
// Ends with __syncthreads().
__device__ __forceinline__ void router_logits(const __half* __restrict__ x, const __half* __restrict__ g, int m,
                                              int e, int tok, float* sl) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int S = warps >= e ? warps / e : 1;
    float* part = sl + e;
    const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)tok * m);
    if (warp < S * ((warps >= e) ? e : warps)) {
        const int slice = warp % S;
        for (int q = warp / S; q < e; q += (warps >= e) ? e : warps) {
            const uint4* gr = reinterpret_cast<const uint4*>(g + (size_t)q * m);
            float acc = 0.f;
            // 4 chunks per lane in flight at once: x and G are cold in L2
            // after a step's expert weights streamed through it, so the
            // loads are DRAM latency-bound (Mixtral: 4 chunks per lane).
            constexpr int B = 4;
            for (int c0 = lane + 32 * slice; c0 < m / 8; c0 += B * 32 * S) {
                uint4 xv[B], gv[B];
#pragma unroll
                for (int b = 0; b < B; ++b) {
                    const int c = c0 + b * 32 * S;
                    xv[b] = c < m / 8 ? __ldg(xr + c) : make_uint4(0u, 0u, 0u, 0u);
                    gv[b] = c < m / 8 ? __ldg(gr + c) : make_uint4(0u, 0u, 0u, 0u);
                }
#pragma unroll
                for (int b = 0; b < B; ++b) {
                    const __half2* xh = reinterpret_cast<const __half2*>(&xv[b]);
                    const __half2* gh = reinterpret_cast<const __half2*>(&gv[b]);
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        float2 a = __half22float2(xh[j]), bb = __half22float2(gh[j]);
                        acc = fmaf(a.x, bb.x, acc);
                        acc = fmaf(a.y, bb.y, acc);
                    }
                }
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
            if (lane == 0) part[q * S + slice] = acc;
        }
    }
    __syncthreads();
    for (int q = threadIdx.x; q < e; q += blockDim.x) {
        float v = 0.f;
        for (int s2 = 0; s2 < S; ++s2) v += part[q * S + s2];
        sl[q] = v;
    }
    __syncthreads();
}

}  // namespace
