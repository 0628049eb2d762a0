// Decode attention over the fp16 KV cache (attn_fwd; attn_fwd_rope with
// RoPE and the cache write fused in for one token) and the merge of its
// key splits (attn_combine); AttnParams, which the prefill kernels
// (attn_prefill.cuh) take too. Included by model.cu (after the warp
// helpers and rope_rotate).
#pragma once

// Attention of T queries at positions start..start+T over the cached keys
// (causal; with window > 0 only the last `window` positions). Grid
// (KVH, T, splits); block: one warp per query head of the group (G = H/KVH
// warps), so each key/value tile is loaded once for the G heads that share
// it. Split s takes keys [lo + s·split_len, lo + (s+1)·split_len) of the
// token's range [lo, pos]; with one split the kernel writes the output
// (fp16, [T][H hd]); with more it writes (max, sum, acc[hd]) partials
// that attn_combine merges, or (attn_fwd_rope_cluster, sm_90) the splits
// of a KV head are one thread-block cluster that merges them itself, as
// attn_combine would (attn_cluster_merge). Online softmax in fp32; hd
// even, hd <= 256.
constexpr int ATT_TILE = 32;
constexpr int ATT_MAX_HD = 256;

struct AttnParams {
    const float* q;         // [T][H][hd] fp32 (rotated, unless rope_q)
    const __half* k_cache;  // [KVH][max_seq][hd]
    const __half* v_cache;  // [KVH][max_seq][hd]
    float* part;            // [T][H][splits][hd + 2] (splits > 1)
    __half* out;            // [T][H hd] (splits == 1)
    int T, start, H, KVH, hd, max_seq, window, split_len;
    float scale;
    // Prefill attention only: q not rotated yet; rotated as it is loaded
    // with this (cos, sin) table ([positions][hd/2]); null: q is rotated.
    const float2* rope_q;
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
// by attn_combine or the cluster's merge (all splits read it).
struct AttnRope {
    const float2* rope;  // [positions][hd/2] (cos, sin)
    float* qkv;          // the row q points at, writable (zeroed once read)
};

// Thread-block clusters (sm_90; the compute_80 PTX has none, and never
// launches attn_fwd_rope_cluster): a shared-memory address of this block
// mapped into block `rank` of the cluster, a load from such an address, and
// the two halves of the cluster-wide barrier (arrive with release, wait
// with acquire: shared-memory accesses before a block's arrive happen
// before every block's accesses after its wait; all threads of every block
// take part).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint32_t cluster_map(uint32_t smem, uint32_t rank) {
    uint32_t r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(smem), "r"(rank));
    return r;
}
__device__ __forceinline__ float ld_cluster(uint32_t a) {
    float v;
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(a));
    return v;
}
__device__ __forceinline__ void cluster_arrive() {
    asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() {
    asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}
#endif

// One warp's split partial of its head: (max, sum, acc[0..hd)) at dst
// (shared memory for the cluster merge, global for attn_combine), acc
// spread over the lanes as attn_fwd_body keeps it (element lane + 32 i).
__device__ __forceinline__ void store_partial(float* dst, float m, float l, const float* acc, int hd) {
    constexpr int MAXD = ATT_MAX_HD / 32;
    const int lane = threadIdx.x & 31;
    if (lane == 0) {
        dst[0] = m;
        dst[1] = l;
    }
#pragma unroll
    for (int i = 0; i < MAXD; ++i) {
        const int d = lane + 32 * i;
        if (d < hd) dst[2 + d] = acc[i];
    }
}

// The most splits a cluster merges (8: the portable cluster size).
constexpr int ATT_CLUSTER_MAX = 8;

// attn_fwd_rope_cluster's merge (T = 1, splits = S, 2 <= S <=
// ATT_CLUSTER_MAX blocks of one cluster, block rank s = split s): every
// block leaves its G heads' partials (max, sum, acc[hd]) in its own shared
// memory `pm` ([G][hd + 2] floats); after a cluster barrier each block
// computes its share of the G·hd outputs (element e = s·blockDim + tid +
// k·S·blockDim, at most hd/64 per thread) from the S blocks' partials, read
// through distributed shared memory, with attn_combine's operations in
// attn_combine's order (the same bits). It then arrives at the second
// barrier (it has read its peers' shared memory) before its global stores,
// so that the arrive's release does not wait for them: the outputs and its
// share of the group's q heads in the raw q|k|v row, zeroed (every split
// read them before the first barrier). Waiting on that second barrier
// keeps the block's shared memory alive until its peers have read it.
template <int HD>
__device__ __forceinline__ void attn_cluster_merge(const AttnParams& p, const AttnRope& r, float* pm, float m,
                                                   float l, const float* acc) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr int MAXE = ATT_MAX_HD / 64;  // G hd outputs over >= 2 blocks of G warps
    const int G = p.H / p.KVH, hd = HD > 0 ? HD : p.hd, kvh = blockIdx.x, s = blockIdx.z, S = gridDim.z;
    store_partial(pm + (threadIdx.x >> 5) * (hd + 2), m, l, acc, hd);
    cluster_arrive();
    cluster_wait();
    const int n = G * hd, e0 = s * blockDim.x + threadIdx.x, stride = S * blockDim.x;
    const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(pm));
    uint32_t peer[ATT_CLUSTER_MAX];
#pragma unroll
    for (int j = 0; j < ATT_CLUSTER_MAX; ++j)
        if (j < S) peer[j] = cluster_map(base, j);
    __half res[MAXE];
#pragma unroll
    for (int k = 0; k < MAXE; ++k) {
        const int e = e0 + k * stride;
        if (e < n) {
            const int hh = e / hd, d = e % hd;
            const uint32_t off = hh * (hd + 2) * 4;
            // The 3 S loads first: one distributed-shared-memory round trip.
            float ms[ATT_CLUSTER_MAX], ls[ATT_CLUSTER_MAX], as[ATT_CLUSTER_MAX];
#pragma unroll
            for (int j = 0; j < ATT_CLUSTER_MAX; ++j)
                if (j < S) {
                    ms[j] = ld_cluster(peer[j] + off);
                    ls[j] = ld_cluster(peer[j] + off + 4);
                    as[j] = ld_cluster(peer[j] + off + 8 + 4 * d);
                }
            // attn_combine's arithmetic, split by split in order.
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < ATT_CLUSTER_MAX; ++j)
                if (j < S) mx = fmaxf(mx, ms[j]);
            float lsum = 0.f;
#pragma unroll
            for (int j = 0; j < ATT_CLUSTER_MAX; ++j)
                if (j < S && ms[j] != -INFINITY) lsum += __expf(ms[j] - mx) * ls[j];
            const float inv = 1.0f / lsum;
            float v = 0.f;
#pragma unroll
            for (int j = 0; j < ATT_CLUSTER_MAX; ++j)
                if (j < S && ms[j] != -INFINITY) v = fmaf(__expf(ms[j] - mx), as[j], v);
            res[k] = __float2half_rn(v * inv);
        }
    }
    cluster_arrive();
    float* qrow = r.qkv + (long long)kvh * G * hd;
    __half* o = p.out + (long long)kvh * G * hd;
#pragma unroll
    for (int k = 0; k < MAXE; ++k) {
        const int e = e0 + k * stride;
        if (e < n) {
            o[e] = res[k];
            qrow[e] = 0.f;
        }
    }
    cluster_wait();
#else
    __trap();
#endif
}

// HD > 0: the head size as a constant (p.hd == HD, checked by the host), so
// that the element indices' divisions by hd and hd/2 become shifts (for hd
// 128 they were ~40 instructions each, on the path after the wait); the
// same arithmetic otherwise (the same bits).
template <bool ROPE, bool CLUSTER = false, int HD = 0>
__device__ __forceinline__ void attn_fwd_body(const AttnParams& p, const AttnRope& r) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    if (!ROPE) {
        griddep_wait();
        griddep_launch_dependents();
    }
    const int G = p.H / p.KVH, hd = HD > 0 ? HD : p.hd, kvh = blockIdx.x, t = blockIdx.y, s = blockIdx.z;
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
        // The next kernel (the o GEMV, or attn_combine) may launch now and
        // load its weights; it waits for this one before reading its output
        // (0.013 ms per token faster than launching it after the wait, run
        // C6).
        griddep_launch_dependents();
        griddep_wait();
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
    if (CLUSTER) {
        attn_cluster_merge<HD>(p, r, reinterpret_cast<float*>(vs + ATT_TILE * hd), m, l, acc);
    } else if (splits == 1) {
        const float inv = 1.0f / l;
        __half* o = p.out + ((long long)t * p.H + h) * hd;
#pragma unroll
        for (int i = 0; i < MAXD; ++i) {
            const int d = lane + 32 * i;
            if (d < hd) o[d] = __float2half_rn(acc[i] * inv);
        }
    } else {
        store_partial(p.part + (((long long)t * p.H + h) * splits + s) * (hd + 2), m, l, acc, hd);
    }
}

extern "C" __global__ void __launch_bounds__(512) attn_fwd(const AttnParams p) {
    attn_fwd_body<false>(p, AttnRope{nullptr, nullptr});
}
extern "C" __global__ void __launch_bounds__(512) attn_fwd_rope(const AttnParams p, const float2* __restrict__ rope,
                                                                float* qkv) {
    attn_fwd_body<true>(p, AttnRope{rope, qkv});
}
// attn_fwd_rope with its splits merged in a cluster (sm_90; launched with
// cluster dimensions (1, 1, splits), 2 <= splits <= ATT_CLUSTER_MAX, T = 1,
// and G (hd + 2) floats more dynamic shared memory for the partials): no
// attn_combine, and `part` is not used.
extern "C" __global__ void __launch_bounds__(512) attn_fwd_rope_cluster(const AttnParams p,
                                                                        const float2* __restrict__ rope, float* qkv) {
    attn_fwd_body<true, true>(p, AttnRope{rope, qkv});
}
// The two decode kernels above for head size 128 (p.hd == 128).
extern "C" __global__ void __launch_bounds__(512) attn_fwd_rope_hd128(const AttnParams p,
                                                                     const float2* __restrict__ rope, float* qkv) {
    attn_fwd_body<true, false, 128>(p, AttnRope{rope, qkv});
}
extern "C" __global__ void __launch_bounds__(512) attn_fwd_rope_cluster_hd128(const AttnParams p,
                                                                              const float2* __restrict__ rope,
                                                                              float* qkv) {
    attn_fwd_body<true, true, 128>(p, AttnRope{rope, qkv});
}


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
