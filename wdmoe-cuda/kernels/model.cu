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

// The rotate-half RoPE of the pair (x1, x2) = (x[i], x[i + hd/2]) by the
// angle whose (cos, sin) is c: the one definition of the rotation (rope_kv
// and attn_fwd_rope), with explicit rounding so that ptxas cannot contract
// it into fused multiply-adds differently in different kernels (the fused
// decode path stays bitwise equal to rope_kv, cache and output).
__device__ __forceinline__ float2 rope_rotate(float x1, float x2, float2 c) {
    return make_float2(__fsub_rn(__fmul_rn(x1, c.x), __fmul_rn(x2, c.y)),
                       __fadd_rn(__fmul_rn(x2, c.x), __fmul_rn(x1, c.y)));
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

// Per row t (one block each): if `add` is not null, resid[t] += add[t]
// (written back); then out[t] = w ⊙ resid[t] / sqrt(mean(resid[t]²) + eps)
// in fp16 — Hugging Face's MixtralRMSNorm in fp32, rounded once.
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
// add_rmsnorm_rows (256 threads, 16 each) for many rows, where 8 blocks
// per SM keep more loads in flight (1024-thread blocks ran a 2,048-row
// prompt at 39 µs per launch on an H200).
template <int NORM_REGS>
__device__ __forceinline__ void add_rmsnorm_body(float* __restrict__ resid, const float* __restrict__ add,
                                                 const float* __restrict__ w, float eps, int d,
                                                 __half* __restrict__ out, int out_stride) {
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
    griddep_wait();
    griddep_launch_dependents();
    float* r = resid + (long long)blockIdx.x * d;
    const float* a = add ? add + (long long)blockIdx.x * d : nullptr;
    float ss = 0.f;
    if (in_regs) {
#pragma unroll
        for (int j = 0; j < NORM_REGS; ++j) {
            const int i = threadIdx.x + j * bd;
            v[j] = i < d ? r[i] : 0.f;
        }
        if (a) {
            float av[NORM_REGS];
#pragma unroll
            for (int j = 0; j < NORM_REGS; ++j) {
                const int i = threadIdx.x + j * bd;
                av[j] = i < d ? a[i] : 0.f;
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
            if (a) {
                x += a[i];
                r[i] = x;
            }
            ss = fmaf(x, x, ss);
        }
    }
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float x = threadIdx.x < (bd >> 5) ? red[threadIdx.x] : 0.f;
        x = warp_sum(x);
        if (threadIdx.x == 0) red[0] = x;
    }
    __syncthreads();
    const float inv = 1.0f / sqrtf(red[0] / (float)d + eps);
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

extern "C" __global__ void __launch_bounds__(1024) add_rmsnorm(float* __restrict__ resid, const float* __restrict__ add,
                                                               const float* __restrict__ w, float eps, int d,
                                                               __half* __restrict__ out, int out_stride) {
    add_rmsnorm_body<8>(resid, add, w, eps, d, out, out_stride);
}
extern "C" __global__ void __launch_bounds__(256) add_rmsnorm_rows(float* __restrict__ resid,
                                                                   const float* __restrict__ add,
                                                                   const float* __restrict__ w, float eps, int d,
                                                                   __half* __restrict__ out, int out_stride) {
    add_rmsnorm_body<16>(resid, add, w, eps, d, out, out_stride);
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

// Attention of T queries at positions start..start+T over the cached keys
// (causal; with window > 0 only the last `window` positions). Grid
// (KVH, T, splits); block: one warp per query head of the group (G = H/KVH
// warps), so each key/value tile is loaded once for the G heads that share
// it. Split s takes keys [lo + s·split_len, lo + (s+1)·split_len) of the
// token's range [lo, pos]; with one split the kernel writes the output
// (fp16, [T][H hd]); with more it writes (max, sum, acc[hd]) partials
// that attn_combine merges. Online softmax in fp32; hd even, hd <= 256.
constexpr int ATT_TILE = 32;
constexpr int ATT_MAX_HD = 256;

struct AttnParams {
    const float* q;         // [T][H][hd] fp32 (rotated)
    const __half* k_cache;  // [KVH][max_seq][hd]
    const __half* v_cache;  // [KVH][max_seq][hd]
    float* part;            // [T][H][splits][hd + 2] (splits > 1)
    __half* out;            // [T][H hd] (splits == 1)
    int T, start, H, KVH, hd, max_seq, window, split_len;
    float scale;
};

// Decode with RoPE fused in (ROPE, one query: T = 1): q points at the raw
// q|k|v row of the token ([(H + 2 KVH) hd] fp32, straight from the q|k|v
// projection) and `rope` at the (cos, sin) table. Each block rotates its
// group's queries itself; the block whose keys end at the token's position
// rotates the new key, writes it and the new value into the cache and uses
// them from registers; the cached keys (earlier positions, written by
// earlier calls) are loaded before the wait for the previous kernel, so
// their latency hides behind its tail. The row is consumed as rope_kv
// consumes it (left zero for the next projection to accumulate into): k
// and v by the block that reads them, q by that block with one split, else
// by attn_combine (all splits read it).
struct AttnRope {
    const float2* rope;  // [positions][hd/2] (cos, sin)
    float* qkv;          // the row q points at, writable (zeroed once read)
};

template <bool ROPE>
__device__ __forceinline__ void attn_fwd_body(const AttnParams& p, const AttnRope& r) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    if (!ROPE) {
        griddep_wait();
        griddep_launch_dependents();
    }
    const int G = p.H / p.KVH, hd = p.hd, kvh = blockIdx.x, t = blockIdx.y, s = blockIdx.z;
    const int splits = gridDim.z;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int kpitch = hd + 2;  // halfs; (hd+2)/2 odd when hd % 4 == 0: lanes hit distinct banks
    float* qs = reinterpret_cast<float*>(smem_raw);                      // [G][hd]
    __half* ks = reinterpret_cast<__half*>(qs + G * hd);                 // [TILE][hd+2]
    __half* vs = ks + ATT_TILE * kpitch;                                 // [TILE][hd]
    const int h = kvh * G + w;
    const int pos = p.start + t;
    const int lo = p.window > 0 ? max(0, pos + 1 - p.window) : 0;
    const int a = lo + s * p.split_len;
    const int b = min(pos + 1, lo + (s + 1) * p.split_len);
    // ROPE: keys below `cached` come from the cache; key pos (in this
    // block's range when b == pos + 1) from the q|k|v row.
    const int cached = ROPE ? pos : b;
    const int half = hd / 2;
    // Global loads in batches of ATT_BATCH per thread before their shared
    // stores: one memory round trip per batch, not per element (the
    // kernel's latency at short contexts). The first batch of the first
    // key/value tile is issued before the queries' loads, so that both take
    // one round trip (a decode split is one tile: hd 128, 4 heads a group).
    constexpr int ATT_BATCH = 16;
    const __half* kc = p.k_cache + (long long)kvh * p.max_seq * hd;
    const __half* vc = p.v_cache + (long long)kvh * p.max_seq * hd;
    __half2 kv[ATT_BATCH], vv[ATT_BATCH];
    auto load_kv = [&](int t0, int nk, int i0) {
#pragma unroll
        for (int u = 0; u < ATT_BATCH; ++u) {
            const int i = i0 + u * blockDim.x;
            if (i < nk * (hd / 2)) {
                const int j = i / (hd / 2), d2 = i % (hd / 2);
                if (!ROPE || t0 + j < cached) {
                    kv[u] = reinterpret_cast<const __half2*>(kc + (long long)(t0 + j) * hd)[d2];
                    vv[u] = reinterpret_cast<const __half2*>(vc + (long long)(t0 + j) * hd)[d2];
                }
            }
        }
    };
    auto store_kv = [&](int t0, int nk, int i0) {
#pragma unroll
        for (int u = 0; u < ATT_BATCH; ++u) {
            const int i = i0 + u * blockDim.x;
            if (i < nk * (hd / 2)) {
                const int j = i / (hd / 2), d2 = i % (hd / 2);
                if (!ROPE || t0 + j < cached) {
                    reinterpret_cast<__half2*>(ks + j * kpitch)[d2] = kv[u];
                    reinterpret_cast<__half2*>(vs + j * hd)[d2] = vv[u];
                }
            }
        }
    };
    if (a < b) load_kv(a, min(ATT_TILE, b - a), threadIdx.x);
    // ROPE: the new key and value (thread j < hd/2 takes the pair j, j +
    // hd/2), rotated and rounded as rope_kv writes them to the cache.
    const bool has_new = ROPE && a <= pos && pos < b;
    __half kn1, kn2, vn1, vn2;
    if (ROPE) {
        const float2* cs = r.rope + (long long)pos * half;
        // Each thread's rotation factors, then the previous kernel (the
        // q|k|v projection) completes.
        constexpr int QP = ATT_MAX_HD / 64;  // pairs per thread: G hd/2 over G warps
        float2 c[QP];
#pragma unroll
        for (int u = 0; u < QP; ++u) {
            const int i = threadIdx.x + u * blockDim.x;
            if (i < G * half) c[u] = cs[i % half];
        }
        float2 cn = make_float2(0.f, 0.f);
        if (has_new && threadIdx.x < half) cn = cs[threadIdx.x];
        griddep_wait();
        griddep_launch_dependents();
        float* row = r.qkv + (long long)t * (p.H + 2 * p.KVH) * hd;
        float* qrow = row + (long long)kvh * G * hd;
        float x1[QP], x2[QP];
#pragma unroll
        for (int u = 0; u < QP; ++u) {
            const int i = threadIdx.x + u * blockDim.x;
            if (i < G * half) {
                const int hh = i / half, j = i % half;
                x1[u] = qrow[hh * hd + j];
                x2[u] = qrow[hh * hd + j + half];
            }
        }
        float k1 = 0.f, k2 = 0.f, v1 = 0.f, v2 = 0.f;
        float* krow = row + (long long)(p.H + kvh) * hd;
        float* vrow = row + (long long)(p.H + p.KVH + kvh) * hd;
        if (has_new && threadIdx.x < half) {
            const int j = threadIdx.x;
            k1 = krow[j];
            k2 = krow[j + half];
            v1 = vrow[j];
            v2 = vrow[j + half];
        }
#pragma unroll
        for (int u = 0; u < QP; ++u) {
            const int i = threadIdx.x + u * blockDim.x;
            if (i < G * half) {
                const int hh = i / half, j = i % half;
                const float2 y = rope_rotate(x1[u], x2[u], c[u]);
                qs[hh * hd + j] = y.x;
                qs[hh * hd + j + half] = y.y;
                if (splits == 1) {
                    qrow[hh * hd + j] = 0.f;
                    qrow[hh * hd + j + half] = 0.f;
                }
            }
        }
        if (has_new && threadIdx.x < half) {
            const int j = threadIdx.x;
            const float2 y = rope_rotate(k1, k2, cn);
            kn1 = __float2half_rn(y.x);
            kn2 = __float2half_rn(y.y);
            vn1 = __float2half_rn(v1);
            vn2 = __float2half_rn(v2);
            // The cache's only writer at pos (other blocks read positions < pos).
            __half* kd = const_cast<__half*>(p.k_cache) + ((long long)kvh * p.max_seq + pos) * hd;
            __half* vd = const_cast<__half*>(p.v_cache) + ((long long)kvh * p.max_seq + pos) * hd;
            kd[j] = kn1;
            kd[j + half] = kn2;
            vd[j] = vn1;
            vd[j + half] = vn2;
            krow[j] = krow[j + half] = 0.f;
            vrow[j] = vrow[j + half] = 0.f;
        }
    } else {
        for (int i0 = threadIdx.x; i0 < G * hd; i0 += ATT_BATCH * blockDim.x) {
            float v[ATT_BATCH];
#pragma unroll
            for (int u = 0; u < ATT_BATCH; ++u) {
                const int i = i0 + u * blockDim.x;
                v[u] = i < G * hd ? p.q[((long long)t * p.H + kvh * G) * hd + i] : 0.f;
            }
#pragma unroll
            for (int u = 0; u < ATT_BATCH; ++u) {
                const int i = i0 + u * blockDim.x;
                if (i < G * hd) qs[i] = v[u];
            }
        }
    }
    constexpr int MAXD = ATT_MAX_HD / 32;
    float acc[MAXD];
#pragma unroll
    for (int i = 0; i < MAXD; ++i) acc[i] = 0.f;
    float m = -INFINITY, l = 0.f;
    for (int t0 = a; t0 < b; t0 += ATT_TILE) {
        const int nk = min(ATT_TILE, b - t0);
        __syncthreads();
        for (int i0 = threadIdx.x; i0 < nk * (hd / 2); i0 += ATT_BATCH * blockDim.x) {
            if (t0 != a || i0 != (int)threadIdx.x) load_kv(t0, nk, i0);  // else loaded above
            store_kv(t0, nk, i0);
        }
        if (has_new && pos < t0 + nk && threadIdx.x < half) {
            const int j = threadIdx.x, row = pos - t0;
            ks[row * kpitch + j] = kn1;
            ks[row * kpitch + j + half] = kn2;
            vs[row * hd + j] = vn1;
            vs[row * hd + j + half] = vn2;
        }
        __syncthreads();
        float sc = -INFINITY;
        if (lane < nk) {
            const float* qh = qs + w * hd;
            const __half2* kr = reinterpret_cast<const __half2*>(ks + lane * kpitch);
            float dot = 0.f;
            for (int d2 = 0; d2 < hd / 2; ++d2) {
                const float2 kf = __half22float2(kr[d2]);
                dot = fmaf(qh[2 * d2], kf.x, dot);
                dot = fmaf(qh[2 * d2 + 1], kf.y, dot);
            }
            sc = dot * p.scale;
        }
        const float mn = fmaxf(m, warp_max(sc));  // finite: the tile has a key
        const float pr = lane < nk ? __expf(sc - mn) : 0.f;
        const float corr = __expf(m - mn);        // 0 on the first tile (m = -inf)
        l = l * corr + warp_sum(pr);
#pragma unroll
        for (int i = 0; i < MAXD; ++i) acc[i] *= corr;
        for (int j = 0; j < nk; ++j) {
            const float pj = __shfl_sync(0xffffffffu, pr, j);
            const __half* vr = vs + j * hd;
#pragma unroll
            for (int i = 0; i < MAXD; ++i) {
                const int d = lane + 32 * i;
                if (d < hd) acc[i] = fmaf(pj, __half2float(vr[d]), acc[i]);
            }
        }
        m = mn;
    }
    if (splits == 1) {
        const float inv = 1.0f / l;
        __half* o = p.out + ((long long)t * p.H + h) * hd;
#pragma unroll
        for (int i = 0; i < MAXD; ++i) {
            const int d = lane + 32 * i;
            if (d < hd) o[d] = __float2half_rn(acc[i] * inv);
        }
    } else {
        float* pp = p.part + (((long long)t * p.H + h) * splits + s) * (hd + 2);
        if (lane == 0) {
            pp[0] = m;
            pp[1] = l;
        }
#pragma unroll
        for (int i = 0; i < MAXD; ++i) {
            const int d = lane + 32 * i;
            if (d < hd) pp[2 + d] = acc[i];
        }
    }
}

extern "C" __global__ void __launch_bounds__(512) attn_fwd(const AttnParams p) {
    attn_fwd_body<false>(p, AttnRope{nullptr, nullptr});
}
extern "C" __global__ void __launch_bounds__(512) attn_fwd_rope(const AttnParams p, const float2* __restrict__ rope,
                                                                float* qkv) {
    attn_fwd_body<true>(p, AttnRope{rope, qkv});
}

// Prefill attention on tensor cores (attn_prefill_h64, attn_prefill_h128).
#include "attn_prefill.cuh"

// Merges the split partials of attn_fwd: grid (H, T), out [T][H hd] fp16.
// zero_q (attn_fwd_rope with several splits, else null): the raw q|k|v
// rows (row pitch qkv_row floats), whose q heads every split read; block
// (h, t) leaves head h of row t zero.
extern "C" __global__ void attn_combine(const float* __restrict__ part, int splits, int H, int hd,
                                        __half* __restrict__ out, float* __restrict__ zero_q, int qkv_row) {
    griddep_wait();
    griddep_launch_dependents();
    const int h = blockIdx.x, t = blockIdx.y;
    if (zero_q)
        for (int d = threadIdx.x; d < hd; d += blockDim.x) zero_q[(long long)t * qkv_row + (long long)h * hd + d] = 0.f;
    const float* pp = part + ((long long)t * H + h) * splits * (hd + 2);
    float mx = -INFINITY;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, pp[s * (hd + 2)]);
    float l = 0.f;
    for (int s = 0; s < splits; ++s) {
        const float ms = pp[s * (hd + 2)];
        if (ms != -INFINITY) l += __expf(ms - mx) * pp[s * (hd + 2) + 1];
    }
    const float inv = 1.0f / l;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float v = 0.f;
        for (int s = 0; s < splits; ++s) {
            const float ms = pp[s * (hd + 2)];
            if (ms != -INFINITY) v = fmaf(__expf(ms - mx), pp[s * (hd + 2) + 2 + d], v);
        }
        out[((long long)t * H + h) * hd + d] = __float2half_rn(v * inv);
    }
}

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
