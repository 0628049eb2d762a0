// The dense parts of the Mixtral decoder on the GPU (wdmoe_cuda::model):
// embedding rows, residual add + RMSNorm, the fp16 GEMV of the attention
// projections and lm_head, rotary embedding with the KV-cache write, and
// attention over the fp16 KV cache (split-KV "flash decoding" with grouped
// query heads sharing each key/value tile). The MoE step is wdmoe_cuda::moe.
//
// Conventions: the residual stream is fp32 [T][d]; matrix inputs are fp16;
// every accumulation is fp32. Shapes and alignment are checked on the host
// (src/model/kernels.rs) before each launch.

#include <cuda_fp16.h>
#include <stdint.h>

#include "common.cuh"

namespace {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

}  // namespace

// resid[t][0..d) = table[tokens[t]][0..d) (widened). One block per token;
// each thread issues all its loads (up to BATCH) before its stores, so that
// a row costs one memory round trip instead of one per element. A token
// outside 0..vocab (argmax_rows' -1 for a NaN row, when a pipelined decode
// step embeds the previous step's argmax on the device) reads row 0: the
// host reports the NaN and discards the step.
extern "C" __global__ void embed_rows(const __half* __restrict__ table, const int* __restrict__ tokens, int vocab,
                                      int d, float* __restrict__ resid) {
    griddep_wait();
    griddep_launch_dependents();
    constexpr int BATCH = 8;
    const int tok = tokens[blockIdx.x];
    const long long row = tok >= 0 && tok < vocab ? tok : 0;
    const __half* src = table + row * d;
    float* dst = resid + (long long)blockIdx.x * d;
    for (int i0 = threadIdx.x; i0 < d; i0 += BATCH * blockDim.x) {
        __half v[BATCH];
#pragma unroll
        for (int j = 0; j < BATCH; ++j) {
            const int i = i0 + j * blockDim.x;
            v[j] = i < d ? src[i] : __float2half_rn(0.f);
        }
#pragma unroll
        for (int j = 0; j < BATCH; ++j) {
            const int i = i0 + j * blockDim.x;
            if (i < d) dst[i] = __half2float(v[j]);
        }
    }
}

// A prompt's MoE step whose combine is deferred to the next norm (the
// add_rmsnorm_combine kernels): add[t][i] = sum_j w[t][j] ys[slot[t][j]][i]
// over the top-k slots of token t (slot < 0 or >= ys_rows skipped), summed
// in combine_rows_f32's order, so that the residual gets the same bits
// without the sum's round trip through memory (fp32 rows, written then read).
struct CombineSrc {
    const __half* ys;
    long long ys_rows;
    const int* slot;
    const float* w;
    int topk;
};

// Per row t (one block each): if `add` is not null (or, COMBINE, the
// deferred combine `cs` above), resid[t] += add[t] (written back); then
// out[t] = w ⊙ resid[t] / sqrt(mean(resid[t]²) + eps) in fp16 — Hugging
// Face's MixtralRMSNorm in fp32, rounded once.
// `out_stride` is the row pitch of out (elements).
//
// Rows of up to NORM_REGS x blockDim elements stay in registers: each
// thread loads its elements of w before waiting for the previous kernel
// (they never depend on it) and those of resid and add all at once, one
// memory round trip each, instead of one per element; longer rows loop.
// Either way each thread sums its squares in the same order (elements
// threadIdx.x, + blockDim, ...), so the result is the same bits.
//
// Two shapes: add_rmsnorm (1024 threads, NORM_REGS = 8 elements each in
// registers) for a few rows, where one block's latency is the cost, and
// add_rmsnorm_rows (256 threads, 16 each) for many rows, where more blocks
// per SM keep more loads in flight (1024-thread blocks ran a 2,048-row
// prompt at 39 µs per launch on an H200); there rows of up to 4,096
// 16-byte aligned elements take add_rmsnorm_vec4 below instead.
// A norm's wait for the kernel before it (which writes the residual). With
// `early` the next kernel (a GEMV or GEMM, the router) may launch first and
// start loading its weights meanwhile; it waits for this one before
// reading x.
__device__ __forceinline__ void norm_wait(int early) {
    if (early) {
        griddep_launch_dependents();
        griddep_wait();
    } else {
        griddep_wait();
        griddep_launch_dependents();
    }
}

// The block's sum of each thread's v (warps first, then warp 0 over the
// warps' sums), returned to every thread; red: 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* red) {
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        float x = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
        x = warp_sum(x);
        if (threadIdx.x == 0) red[0] = x;
    }
    __syncthreads();
    return red[0];
}

template <int NORM_REGS, bool COMBINE = false>
__device__ __forceinline__ void add_rmsnorm_body(float* __restrict__ resid, const float* __restrict__ add,
                                                 const float* __restrict__ w, float eps, int d,
                                                 __half* __restrict__ out, int out_stride, int early,
                                                 const CombineSrc cs = CombineSrc{}) {
    __shared__ float red[32];
    const int bd = blockDim.x;
    const bool in_regs = d <= NORM_REGS * bd;
    float wv[NORM_REGS], v[NORM_REGS];
    if (in_regs) {
#pragma unroll
        for (int j = 0; j < NORM_REGS; ++j) {
            const int i = threadIdx.x + j * bd;
            wv[j] = i < d ? w[i] : 0.f;
        }
    }
    norm_wait(early);
    float* r = resid + (long long)blockIdx.x * d;
    const float* a = add ? add + (long long)blockIdx.x * d : nullptr;
    // (COMBINE: the token's top-k slots and weights)
    const int* cslot = COMBINE ? cs.slot + (long long)blockIdx.x * cs.topk : nullptr;
    const float* cw = COMBINE ? cs.w + (long long)blockIdx.x * cs.topk : nullptr;
    // Element i of the combined experts' outputs (combine_body's order: 0,
    // then w y of each slot).
    auto combined = [&](int i) {
        float acc = 0.f;
        for (int q = 0; q < cs.topk; ++q) {
            const int sl = cslot[q];
            if (sl < 0 || sl >= cs.ys_rows) continue;
            const float wt = cw[q];
            acc += wt * __half2float(cs.ys[(long long)sl * d + i]);
        }
        return acc;
    };
    float ss = 0.f;
    if (in_regs) {
#pragma unroll
        for (int j = 0; j < NORM_REGS; ++j) {
            const int i = threadIdx.x + j * bd;
            v[j] = i < d ? r[i] : 0.f;
        }
        if (COMBINE || a) {
            float av[NORM_REGS];
            if constexpr (COMBINE) {
                // One slot at a time, its elements all loaded before the sums.
#pragma unroll
                for (int j = 0; j < NORM_REGS; ++j) av[j] = 0.f;
                for (int q = 0; q < cs.topk; ++q) {
                    const int sl = cslot[q];
                    if (sl < 0 || sl >= cs.ys_rows) continue;
                    const float wt = cw[q];
                    const __half* y = cs.ys + (long long)sl * d;
                    float yv[NORM_REGS];
#pragma unroll
                    for (int j = 0; j < NORM_REGS; ++j) {
                        const int i = threadIdx.x + j * bd;
                        yv[j] = i < d ? __half2float(y[i]) : 0.f;
                    }
#pragma unroll
                    for (int j = 0; j < NORM_REGS; ++j) av[j] += wt * yv[j];
                }
            } else {
#pragma unroll
                for (int j = 0; j < NORM_REGS; ++j) {
                    const int i = threadIdx.x + j * bd;
                    av[j] = i < d ? a[i] : 0.f;
                }
            }
#pragma unroll
            for (int j = 0; j < NORM_REGS; ++j) {
                const int i = threadIdx.x + j * bd;
                v[j] += av[j];
                if (i < d) r[i] = v[j];
            }
        }
#pragma unroll
        for (int j = 0; j < NORM_REGS; ++j)
            if (threadIdx.x + j * bd < d) ss = fmaf(v[j], v[j], ss);
    } else {
        for (int i = threadIdx.x; i < d; i += bd) {
            float x = r[i];
            if (COMBINE || a) {
                x += COMBINE ? combined(i) : a[i];
                r[i] = x;
            }
            ss = fmaf(x, x, ss);
        }
    }
    const float inv = 1.0f / sqrtf(block_sum(ss, red) / (float)d + eps);
    __half* o = out + (long long)blockIdx.x * out_stride;
    if (in_regs) {
#pragma unroll
        for (int j = 0; j < NORM_REGS; ++j) {
            const int i = threadIdx.x + j * bd;
            if (i < d) o[i] = __float2half_rn(wv[j] * (v[j] * inv));
        }
    } else {
        for (int i = threadIdx.x; i < d; i += bd) o[i] = __float2half_rn(w[i] * (r[i] * inv));
    }
}

// add_rmsnorm_body for the many-row kernels where every row is 16-byte
// aligned and d <= 4 VEC4_GROUPS x blockDim: thread i takes the 4-element
// groups i, i + blockDim, ... (fp32 as float4, fp16 as 4 halves in 8
// bytes), a quarter of the load and store instructions of the scalar body
// (whose 2-byte loads of the experts' rows fetch 64 bytes a warp). Each
// element is computed as there (its add, the combine's slots in order, its
// output); only the squares are summed in another order, so its bits may
// differ from the scalar body's in the last place of the scale.
constexpr int VEC4_GROUPS = 4;
template <bool COMBINE>
__device__ __forceinline__ bool norm_vec4_ok(const float* resid, const float* add, const float* w, int d,
                                             const __half* out, int out_stride, const CombineSrc& cs) {
    auto al = [](const void* q, unsigned a) { return (reinterpret_cast<uintptr_t>(q) & (a - 1)) == 0; };
    return d % 4 == 0 && d <= 4 * VEC4_GROUPS * (int)blockDim.x && out_stride % 4 == 0 && al(resid, 16) &&
           al(w, 16) && (add == nullptr || al(add, 16)) && al(out, 8) && (!COMBINE || al(cs.ys, 8));
}

__device__ __forceinline__ float4 half4_to_float4(uint2 u) {
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
    const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
    return make_float4(a.x, a.y, b.x, b.y);
}

template <bool COMBINE>
__device__ __forceinline__ void add_rmsnorm_vec4(float* __restrict__ resid, const float* __restrict__ add,
                                                 const float* __restrict__ w, float eps, int d,
                                                 __half* __restrict__ out, int out_stride, int early,
                                                 const CombineSrc& cs) {
    __shared__ float red[32];
    const int bd = blockDim.x, d4 = d / 4;
    const float4 zero4 = make_float4(0.f, 0.f, 0.f, 0.f);
    float4 wv[VEC4_GROUPS], v[VEC4_GROUPS];
#pragma unroll
    for (int j = 0; j < VEC4_GROUPS; ++j) {
        const int i = threadIdx.x + j * bd;
        wv[j] = i < d4 ? reinterpret_cast<const float4*>(w)[i] : zero4;
    }
    norm_wait(early);
    float4* r = reinterpret_cast<float4*>(resid + (long long)blockIdx.x * d);
#pragma unroll
    for (int j = 0; j < VEC4_GROUPS; ++j) {
        const int i = threadIdx.x + j * bd;
        v[j] = i < d4 ? r[i] : zero4;
    }
    if (COMBINE || add) {
        float4 av[VEC4_GROUPS];
        if constexpr (COMBINE) {
            const int* cslot = cs.slot + (long long)blockIdx.x * cs.topk;
            const float* cw = cs.w + (long long)blockIdx.x * cs.topk;
#pragma unroll
            for (int j = 0; j < VEC4_GROUPS; ++j) av[j] = zero4;
            for (int q = 0; q < cs.topk; ++q) {
                const int sl = cslot[q];
                if (sl < 0 || sl >= cs.ys_rows) continue;
                const float wt = cw[q];
                const uint2* y = reinterpret_cast<const uint2*>(cs.ys + (long long)sl * d);
                uint2 yv[VEC4_GROUPS];
#pragma unroll
                for (int j = 0; j < VEC4_GROUPS; ++j) {
                    const int i = threadIdx.x + j * bd;
                    yv[j] = i < d4 ? y[i] : make_uint2(0u, 0u);
                }
#pragma unroll
                for (int j = 0; j < VEC4_GROUPS; ++j) {
                    const float4 f = half4_to_float4(yv[j]);
                    av[j].x += wt * f.x;
                    av[j].y += wt * f.y;
                    av[j].z += wt * f.z;
                    av[j].w += wt * f.w;
                }
            }
        } else {
            const float4* a = reinterpret_cast<const float4*>(add + (long long)blockIdx.x * d);
#pragma unroll
            for (int j = 0; j < VEC4_GROUPS; ++j) {
                const int i = threadIdx.x + j * bd;
                av[j] = i < d4 ? a[i] : zero4;
            }
        }
#pragma unroll
        for (int j = 0; j < VEC4_GROUPS; ++j) {
            const int i = threadIdx.x + j * bd;
            v[j].x += av[j].x;
            v[j].y += av[j].y;
            v[j].z += av[j].z;
            v[j].w += av[j].w;
            if (i < d4) r[i] = v[j];
        }
    }
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < VEC4_GROUPS; ++j) {
        ss = fmaf(v[j].x, v[j].x, ss);
        ss = fmaf(v[j].y, v[j].y, ss);
        ss = fmaf(v[j].z, v[j].z, ss);
        ss = fmaf(v[j].w, v[j].w, ss);
    }
    const float inv = 1.0f / sqrtf(block_sum(ss, red) / (float)d + eps);
    uint2* o = reinterpret_cast<uint2*>(out + (long long)blockIdx.x * out_stride);
#pragma unroll
    for (int j = 0; j < VEC4_GROUPS; ++j) {
        const int i = threadIdx.x + j * bd;
        if (i < d4) {
            const __half2 lo = __floats2half2_rn(wv[j].x * (v[j].x * inv), wv[j].y * (v[j].y * inv));
            const __half2 hi = __floats2half2_rn(wv[j].z * (v[j].z * inv), wv[j].w * (v[j].w * inv));
            o[i] = make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
        }
    }
}

extern "C" __global__ void __launch_bounds__(1024) add_rmsnorm(float* __restrict__ resid, const float* __restrict__ add,
                                                               const float* __restrict__ w, float eps, int d,
                                                               __half* __restrict__ out, int out_stride, int early) {
    add_rmsnorm_body<8>(resid, add, w, eps, d, out, out_stride, early);
}
extern "C" __global__ void __launch_bounds__(256) add_rmsnorm_rows(float* __restrict__ resid,
                                                                   const float* __restrict__ add,
                                                                   const float* __restrict__ w, float eps, int d,
                                                                   __half* __restrict__ out, int out_stride, int early) {
    if (norm_vec4_ok<false>(resid, add, w, d, out, out_stride, CombineSrc{}))
        add_rmsnorm_vec4<false>(resid, add, w, eps, d, out, out_stride, early, CombineSrc{});
    else
        add_rmsnorm_body<16>(resid, add, w, eps, d, out, out_stride, early);
}
// The same with the deferred combine of a prompt's MoE step as `add`.
extern "C" __global__ void __launch_bounds__(1024) add_rmsnorm_combine(float* __restrict__ resid, const CombineSrc cs,
                                                                       const float* __restrict__ w, float eps, int d,
                                                                       __half* __restrict__ out, int out_stride,
                                                                       int early) {
    add_rmsnorm_body<8, true>(resid, nullptr, w, eps, d, out, out_stride, early, cs);
}
extern "C" __global__ void __launch_bounds__(256) add_rmsnorm_combine_rows(float* __restrict__ resid,
                                                                          const CombineSrc cs,
                                                                          const float* __restrict__ w, float eps,
                                                                          int d, __half* __restrict__ out,
                                                                          int out_stride, int early) {
    if (norm_vec4_ok<true>(resid, nullptr, w, d, out, out_stride, cs))
        add_rmsnorm_vec4<true>(resid, nullptr, w, eps, d, out, out_stride, early, cs);
    else
        add_rmsnorm_body<16, true>(resid, nullptr, w, eps, d, out, out_stride, early, cs);
}

// y[t][n] = (accumulate ? y[t][n] : 0) + Σ_k W[n][k] x[t][k] for t < T <= NT:
// W [N][K] fp16 row-major (PyTorch's Linear layout), x [T][K] fp16, y fp32
// with row pitch ldy. One warp per output row, 16-byte loads, 16 (NT <= 2)
// or 8 in flight per lane; K % 8 == 0, W and x 16-byte aligned.
template <int NT>
__device__ __forceinline__ void gemv_body(const __half* __restrict__ W, const __half* __restrict__ x, int K, int N,
                                          int T, float* __restrict__ y, int ldy, int accumulate) {
    const int lane = threadIdx.x & 31;
    const int n = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (n >= N) {
        griddep_wait();
        return;
    }
    const uint4* wr = reinterpret_cast<const uint4*>(W + (long long)n * K);
    const uint4* xr = reinterpret_cast<const uint4*>(x);
    const int kc = K / 8;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.f;
    // The weights never depend on earlier kernels: the first batch is
    // loaded before waiting for them (programmatic dependent launch). With
    // few tokens a whole 4096-wide row is one batch per lane (16 loads in
    // flight): one DRAM round trip per warp.
    constexpr int B = NT <= 2 ? 16 : 8;
    uint4 wv[B];
#pragma unroll
    for (int b = 0; b < B; ++b) {
        const int c = lane + b * 32;
        wv[b] = c < kc ? __ldg(wr + c) : make_uint4(0u, 0u, 0u, 0u);
    }
    griddep_wait();
    griddep_launch_dependents();
    for (int c0 = lane; c0 < kc; c0 += B * 32) {
        if (c0 != lane) {
#pragma unroll
            for (int b = 0; b < B; ++b) {
                const int c = c0 + b * 32;
                wv[b] = c < kc ? __ldg(wr + c) : make_uint4(0u, 0u, 0u, 0u);
            }
        }
#pragma unroll
        for (int b = 0; b < B; ++b) {
            const int c = c0 + b * 32;
            if (c >= kc) break;
            const __half2* wh = reinterpret_cast<const __half2*>(&wv[b]);
            float2 wf[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) wf[j] = __half22float2(wh[j]);
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                if (t < T) {
                    const uint4 xv = __ldg(xr + (long long)t * kc + c);
                    const __half2* xh = reinterpret_cast<const __half2*>(&xv);
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const float2 xf = __half22float2(xh[j]);
                        acc[t] = fmaf(wf[j].x, xf.x, acc[t]);
                        acc[t] = fmaf(wf[j].y, xf.y, acc[t]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        if (t < T) {
            const float v = warp_sum(acc[t]);
            if (lane == 0) {
                float* dst = y + (long long)t * ldy + n;
                *dst = accumulate ? *dst + v : v;
            }
        }
    }
}

#define WDMOE_GEMV(NT)                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) gemv_f16_t##NT(const __half* __restrict__ W,             \
                                                                     const __half* __restrict__ x, int K, int N, \
                                                                     int T, float* __restrict__ y, int ldy,      \
                                                                     int accumulate) {                           \
        gemv_body<NT>(W, x, K, N, T, y, ldy, accumulate);                                                       \
    }
WDMOE_GEMV(1)
WDMOE_GEMV(2)
WDMOE_GEMV(4)
WDMOE_GEMV(8)
WDMOE_GEMV(16)

// Rotary embedding and the KV-cache write for T new tokens at positions
// start..start+T. qkv: [T][(H + 2 KVH) hd] fp32 (q heads, then k, then v);
// rope: [positions][hd/2] (cos, sin) pairs, fp32, computed on the host as
// the CPU model does; q_out: [T][H hd] fp32 (rotated); k_cache/v_cache of
// this layer: [KVH][max_seq][hd] fp16. Rotate-half layout: dimension i of
// the first half pairs with i + hd/2. With `consume`, qkv is left zero
// (each value set to 0 once read), so that the next layer's q|k|v
// projection may accumulate into the buffer (the decode GEMV kernels add);
// prompt chunks, whose projection stores, skip those writes.
//
// Grid (T, ceil(pairs / (ROPE_PAIRS blockDim))): a token's (H + 2 KVH)
// hd/2 pairs, flattened (head-major), ROPE_PAIRS per thread, all loaded
// before any is stored. (One block per token and head, 64 threads, ran a
// 2,048-token prompt's 98,304 blocks in 0.21 ms per layer on an H200,
// bound by block scheduling.)
constexpr int ROPE_PAIRS = 4;
extern "C" __global__ void rope_kv(float* __restrict__ qkv, const float2* __restrict__ rope, int start, int H,
                                   int KVH, int hd, int max_seq, float* __restrict__ q_out,
                                   __half* __restrict__ k_cache, __half* __restrict__ v_cache, int consume) {
    griddep_wait();
    griddep_launch_dependents();
    const int t = blockIdx.x, pos = start + t, half = hd / 2;
    const int pairs = (H + 2 * KVH) * half;
    float* row = qkv + (long long)t * (H + 2 * KVH) * hd;
    const float2* cs = rope + (long long)pos * half;
    const int base = blockIdx.y * blockDim.x * ROPE_PAIRS + threadIdx.x;
    float x1[ROPE_PAIRS], x2[ROPE_PAIRS];
    float2 c[ROPE_PAIRS];
#pragma unroll
    for (int u = 0; u < ROPE_PAIRS; ++u) {
        const int i = base + u * blockDim.x;
        if (i < pairs) {
            const int head = i / half, j = i % half;
            x1[u] = row[head * hd + j];
            x2[u] = row[head * hd + j + half];
            c[u] = cs[j];
        }
    }
#pragma unroll
    for (int u = 0; u < ROPE_PAIRS; ++u) {
        const int i = base + u * blockDim.x;
        if (i >= pairs) break;
        // Heads 0..H are q, H..H+KVH are k, the rest v.
        const int head = i / half, j = i % half;
        if (consume) {
            row[head * hd + j] = 0.f;
            row[head * hd + j + half] = 0.f;
        }
        if (head < H) {
            const float2 y = rope_rotate(x1[u], x2[u], c[u]);
            float* q = q_out + ((long long)t * H + head) * hd;
            q[j] = y.x;
            q[j + half] = y.y;
        } else if (head < H + KVH) {
            const float2 y = rope_rotate(x1[u], x2[u], c[u]);
            __half* k = k_cache + ((long long)(head - H) * max_seq + pos) * hd;
            k[j] = __float2half_rn(y.x);
            k[j + half] = __float2half_rn(y.y);
        } else {
            __half* v = v_cache + ((long long)(head - H - KVH) * max_seq + pos) * hd;
            v[j] = __float2half_rn(x1[u]);
            v[j + half] = __float2half_rn(x2[u]);
        }
    }
}

// Decode attention and its split merge (attn_fwd, attn_fwd_rope,
// attn_combine), then prefill attention on tensor cores (attn_prefill_h64,
// attn_prefill_h128).
#include "attn_decode.cuh"
#include "attn_prefill.cuh"

// Row-wise argmax of logits [T][V] fp32 (lowest index on ties; a NaN row
// gives -1). One block per row. host_out (null or page-locked host memory)
// gets a copy, which the host reads once an event after the kernel has
// completed (a pipelined decode step: no copy queued behind the next one).
extern "C" __global__ void __launch_bounds__(1024) argmax_rows(const float* __restrict__ logits, int V,
                                                               int* __restrict__ out, int* host_out) {
    __shared__ float bv[32];
    __shared__ int bi[32];
    __shared__ int nan_seen;
    griddep_wait();
    griddep_launch_dependents();
    if (threadIdx.x == 0) nan_seen = 0;
    __syncthreads();
    const float* r = logits + (long long)blockIdx.x * V;
    float best = -INFINITY;
    int idx = 0x7fffffff;
    // BATCH loads in flight per thread (a 32,000-entry row: 4 round trips
    // instead of 32); the result does not depend on the visiting order.
    constexpr int BATCH = 8;
    for (int i0 = threadIdx.x; i0 < V; i0 += BATCH * blockDim.x) {
        float v[BATCH];
#pragma unroll
        for (int j = 0; j < BATCH; ++j) {
            const int i = i0 + j * blockDim.x;
            v[j] = i < V ? r[i] : -INFINITY;
        }
#pragma unroll
        for (int j = 0; j < BATCH; ++j) {
            const int i = i0 + j * blockDim.x;
            if (i >= V) break;
            if (v[j] != v[j]) nan_seen = 1;
            if (v[j] > best || (v[j] == best && i < idx)) {
                best = v[j];
                idx = i;
            }
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (ov > best || (ov == best && oi < idx)) {
            best = ov;
            idx = oi;
        }
    }
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) {
        bv[w] = best;
        bi[w] = idx;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float b = bv[0];
        int bidx = bi[0];
        for (int i = 1; i < (int)(blockDim.x >> 5); ++i)
            if (bv[i] > b || (bv[i] == b && bi[i] < bidx)) {
                b = bv[i];
                bidx = bi[i];
            }
        const int a = (nan_seen || bidx == 0x7fffffff) ? -1 : bidx;
        out[blockIdx.x] = a;
        if (host_out) host_out[blockIdx.x] = a;
    }
}
