// MoE router (gating network) for decode: logits = x G^T, then a softmax over
// the experts, for each token. x: [T][m] fp16, G: [E][m] fp16 (row-major),
// logits/probs: [T][E] fp32. One block per token, one warp per expert (strided),
// 16-byte loads, fp32 accumulation; the softmax is done by the first warp.
// Needs m % 8 == 0 and 16-byte aligned rows (checked on the host).

#include <cuda_fp16.h>
#include <stdint.h>

// If `zero` is not null, block `tok` also zeroes zero[tok][0..zero_cols) (the
// MoE layer's fp32 combine accumulator, so that no separate memset is needed).
//
// Blocks with blockIdx.x >= tokens (launched only when pf_bases is not null)
// are L2-prefetch blocks: each recomputes token 0's logits, takes the
// arg-max expert q, and prefetches its share of [pf_bases[q], + pf_bytes)
// into L2, so that the expert most likely to run first finds the start of
// its (k-major packed) weights in L2 while the host runs the policy.
extern "C" __global__ void router_softmax(const __half* __restrict__ x, const __half* __restrict__ g, int m, int e,
                                          float* __restrict__ logits, float* __restrict__ probs,
                                          float* __restrict__ zero, int zero_cols, int tokens,
                                          const unsigned long long* __restrict__ pf_bases, long long pf_bytes) {
    extern __shared__ float sl[];  // e logits
    const bool pf_block = (int)blockIdx.x >= tokens;
    const int tok = pf_block ? 0 : blockIdx.x;
    if (zero && !pf_block)
        for (int i = threadIdx.x; i < zero_cols; i += blockDim.x) zero[(size_t)tok * zero_cols + i] = 0.f;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)tok * m);
    for (int q = warp; q < e; q += warps) {
        const uint4* gr = reinterpret_cast<const uint4*>(g + (size_t)q * m);
        float acc = 0.f;
        for (int c = lane; c < m / 8; c += 32) {
            uint4 xv = __ldg(xr + c), gv = __ldg(gr + c);
            const __half2* xh = reinterpret_cast<const __half2*>(&xv);
            const __half2* gh = reinterpret_cast<const __half2*>(&gv);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                float2 a = __half22float2(xh[j]), b = __half22float2(gh[j]);
                acc = fmaf(a.x, b.x, acc);
                acc = fmaf(a.y, b.y, acc);
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0) sl[q] = acc;
    }
    __syncthreads();
    if (pf_block) {
        __shared__ int best;
        if (threadIdx.x == 0) {
            int q0 = 0;
            for (int q = 1; q < e; ++q)
                if (sl[q] > sl[q0]) q0 = q;
            best = q0;
        }
        __syncthreads();
        const char* base = reinterpret_cast<const char*>(pf_bases[best]);
        const long long nb = gridDim.x - tokens, b = blockIdx.x - tokens;
        const long long lines = pf_bytes / 128;
        const long long l0 = lines * b / nb, l1 = lines * (b + 1) / nb;
        for (long long l = l0 + threadIdx.x; l < l1; l += blockDim.x)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(base + l * 128));
        return;
    }
    if (warp == 0) {
        float mx = -INFINITY;
        for (int q = lane; q < e; q += 32) mx = fmaxf(mx, sl[q]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        float sum = 0.f;
        for (int q = lane; q < e; q += 32) sum += __expf(sl[q] - mx);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        for (int q = lane; q < e; q += 32) {
            logits[(size_t)tok * e + q] = sl[q];
            probs[(size_t)tok * e + q] = __expf(sl[q] - mx) / sum;
        }
    }
}

// out[i] = half(in[i]) for the layer output (fp32 accumulator -> fp16).
extern "C" __global__ void f32_to_f16(const float* __restrict__ in, __half* __restrict__ out, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        out[i] = __float2half_rn(in[i]);
}
