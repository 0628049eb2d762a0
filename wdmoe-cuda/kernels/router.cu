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
// are L2-prefetch blocks: each recomputes token 0's logits, takes its top-2
// experts q, and prefetches its share of [pf_bases[q], + pf_bytes) into L2
// (one bulk prefetch per block on sm_90), so that the experts most likely to
// run find the start of their (k-major packed) weights in L2 while the host
// runs the policy.
extern "C" __global__ void router_softmax(const __half* __restrict__ x, const __half* __restrict__ g, int m, int e,
                                          float* __restrict__ logits, float* __restrict__ probs,
                                          float* __restrict__ zero, int zero_cols, int tokens,
                                          const unsigned long long* __restrict__ pf_bases, long long pf_bytes) {
    // Dynamic shared memory: e logits, then e x S partial sums. S warps per
    // expert (S = warps / e, at least 1) each take every S-th 16-byte chunk
    // of the row: with 1 token the dot products are latency-bound, so more
    // warps per expert shorten the kernel.
    extern __shared__ float sl[];
    const bool pf_block = (int)blockIdx.x >= tokens;
    const int tok = pf_block ? 0 : blockIdx.x;
    if (zero && !pf_block)
        for (int i = threadIdx.x; i < zero_cols; i += blockDim.x) zero[(size_t)tok * zero_cols + i] = 0.f;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int S = warps >= e ? warps / e : 1;
    float* part = sl + e;
    const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)tok * m);
    if (warp < S * ((warps >= e) ? e : warps)) {
        const int slice = warp % S;
        for (int q = warp / S; q < e; q += (warps >= e) ? e : warps) {
            const uint4* gr = reinterpret_cast<const uint4*>(g + (size_t)q * m);
            float acc = 0.f;
            for (int c = lane + 32 * slice; c < m / 8; c += 32 * S) {
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
    if (pf_block) {
        // Token 0's top-2 experts by logit; the prefetch blocks split between
        // them (even blocks the first, odd the second), each block one slice
        // of the first pf_bytes of that expert's weights.
        __shared__ int best[2];
        if (threadIdx.x == 0) {
            int q0 = 0, q1 = e > 1 ? 1 : 0;
            if (e > 1 && sl[q1] > sl[q0]) { q0 = 1; q1 = 0; }
            for (int q = 2; q < e; ++q) {
                if (sl[q] > sl[q0]) { q1 = q0; q0 = q; }
                else if (sl[q] > sl[q1]) q1 = q;
            }
            best[0] = q0;
            best[1] = q1;
        }
        __syncthreads();
        const long long nb = gridDim.x - tokens, b = blockIdx.x - tokens;
        const int ways = (e > 1 && nb > 1) ? 2 : 1;
        const long long per = nb / ways, bb = b / ways;
        if (bb >= per) return;
        const char* base = reinterpret_cast<const char*>(pf_bases[best[b % ways]]);
        // 16-byte aligned slices (pf_bytes is a multiple of 128).
        const long long chunks = pf_bytes / 16;
        const long long c0 = chunks * bb / per, c1 = chunks * (bb + 1) / per;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        // One bulk L2 prefetch per block (sm_90): issued and forgotten, the
        // block exits at once and the copy engine fills L2 meanwhile.
        if (threadIdx.x == 0 && c1 > c0)
            asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(base + c0 * 16),
                         "r"((unsigned)((c1 - c0) * 16))
                         : "memory");
#else
        for (long long l = c0 / 8 + threadIdx.x; l < c1 / 8; l += blockDim.x)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(base + l * 128));
#endif
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
