// MoE router (gating network) for decode: logits = x G^T, then a softmax over
// the experts, for each token. x: [T][m] fp16, G: [E][m] fp16 (row-major),
// logits/probs: [T][E] fp32. One block per token, one warp per expert (strided),
// 16-byte loads, fp32 accumulation; the softmax is done by the first warp.
// Needs m % 8 == 0 and 16-byte aligned rows (checked on the host).

#include <cuda_fp16.h>
#include <stdint.h>

#include "common.cuh"
#include "moe_plan.cuh"
#include "policy.cuh"

// mma.sync m16n8k16 (fp16 in, fp32 accumulate): c += A B, A's fragment
// a0..a3 (rows gid / gid + 8, k 2 tig.. / 2 tig + 8..), B's b0, b1.
__device__ __forceinline__ void mma_16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// sl[0..e) = the logits of token `tok` (dynamic shared memory: e logits,
// then e x S partial sums). S warps per expert (S = warps / e, at least 1)
// each take every S-th 16-byte chunk of the row: with 1 token the dot
// products are latency-bound, so more warps per expert shorten the kernel.
// Ends with __syncthreads(). With WAIT (a kernel launched with programmatic
// dependent launch) each lane first prefetches its chunks of G into L1 (G
// never depends on an earlier kernel: the prefetch overlaps the kernel
// before, which writes x), then waits for that kernel (griddepcontrol.wait).
template <bool WAIT>
__device__ __forceinline__ void router_logits(const __half* __restrict__ x, const __half* __restrict__ g, int m,
                                              int e, int tok, float* sl) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int S = warps >= e ? warps / e : 1;
    float* part = sl + e;
    if (WAIT) {
        if (warp < S * ((warps >= e) ? e : warps)) {
            const int slice = warp % S;
            for (int q = warp / S; q < e; q += (warps >= e) ? e : warps) {
                const uint4* gr = reinterpret_cast<const uint4*>(g + (size_t)q * m);
                for (int c = lane + 32 * slice; c < m / 8; c += 32 * S)
                    asm volatile("prefetch.global.L1 [%0];" ::"l"(gr + c));
            }
        }
        griddep_wait();
    }
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
    // Dynamic shared memory: see router_logits.
    extern __shared__ float sl[];
    const bool pf_block = (int)blockIdx.x >= tokens;
    const int tok = pf_block ? 0 : blockIdx.x;
    if (zero && !pf_block)
        for (int i = threadIdx.x; i < zero_cols; i += blockDim.x) zero[(size_t)tok * zero_cols + i] = 0.f;
    router_logits<false>(x, g, m, e, tok, sl);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
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

// router_softmax for many tokens (a prompt chunk; no prefetch blocks): 8
// tokens per block (router_block_logits below), so that a block reads G
// once instead of each token's block reading all of G from L2 (one
// 1024-thread block per token ran a 2,048-token chunk at 45 µs per layer on
// an H200). e <= ROUTER_ROWS_MAX_E. The logits are the same dot products
// as router_softmax's, summed in another order (fp32).
constexpr int ROUTER_ROWS_MAX_E = 8;

// The logits of a block's ROUTER_ROWS_WARPS tokens t0.. (router_softmax_rows'
// and router_policy_rows' order) on tensor cores: mma.sync m16n8k16 with G's
// rows as A (experts 0..7; rows 8..15 zero) and the tokens' x rows as B (8
// tokens), fp32 accumulators; the reduction length split over the block's
// warps by 32-column chunks (chunk c to warp c % 8), each lane loading 16
// contiguous bytes of its G row and its token's x row per chunk (the same k
// permutation for A and B: halves 0..3 feed the first k16 step, 4..7 the
// second), and the warps' partial sums added in warp order through shared
// memory. On return (after a __syncthreads) lg[t][q] holds token t0 + t's
// logit of expert q < e. One warp per token did 16 FMAs and 8 conversions
// per element of x: 25 µs for a 2,048-token prompt on an H200, issue-bound.
constexpr int ROUTER_ROWS_WARPS = 8;
struct RouterRowsSmem {
    float part[ROUTER_ROWS_WARPS][ROUTER_ROWS_MAX_E][ROUTER_ROWS_WARPS];
    float lg[ROUTER_ROWS_WARPS][ROUTER_ROWS_MAX_E];
};
__device__ __forceinline__ void router_block_logits(const __half* __restrict__ x, const __half* __restrict__ g,
                                                    int m, int e, int t0, int tokens, RouterRowsSmem& sm) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gid = lane >> 2, tig = lane & 3;
    const int tok = t0 + gid;
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    const __half* grow = g + (size_t)gid * m;
    const __half* xrow = x + (size_t)tok * m;
    const bool g_ok = gid < e, x_ok = tok < tokens;
    float c[4] = {0.f, 0.f, 0.f, 0.f};
    const int nch = (m + 31) / 32;
    // (columns col..col+7 lie in the row whenever col < m: m % 8 == 0)
#pragma unroll 4
    for (int ch = warp; ch < nch; ch += ROUTER_ROWS_WARPS) {
        const int col = ch * 32 + tig * 8;
        const uint4 a = g_ok && col < m ? ld_nc_v4(reinterpret_cast<const uint4*>(grow + col)) : zero;
        const uint4 b = x_ok && col < m ? ld_nc_v4(reinterpret_cast<const uint4*>(xrow + col)) : zero;
        mma_16816(c, a.x, 0u, a.y, 0u, b.x, b.y);
        mma_16816(c, a.z, 0u, a.w, 0u, b.z, b.w);
    }
    // c[0], c[1]: expert gid, tokens 2 tig and 2 tig + 1 (c[2], c[3]: the
    // zero rows).
    sm.part[warp][gid][2 * tig] = c[0];
    sm.part[warp][gid][2 * tig + 1] = c[1];
    __syncthreads();
    if (threadIdx.x < ROUTER_ROWS_MAX_E * ROUTER_ROWS_WARPS) {
        const int q = threadIdx.x / ROUTER_ROWS_WARPS, t = threadIdx.x % ROUTER_ROWS_WARPS;
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < ROUTER_ROWS_WARPS; ++w) v += sm.part[w][q][t];
        sm.lg[t][q] = v;
    }
    __syncthreads();
}

// Lane 0 writes token tok's logits and fp32 softmax (router_softmax's).
__device__ __forceinline__ void router_warp_store(const float (&acc)[ROUTER_ROWS_MAX_E], int e, int tok, int lane,
                                                  float* __restrict__ logits, float* __restrict__ probs) {
    float mx = -INFINITY;
#pragma unroll
    for (int q = 0; q < ROUTER_ROWS_MAX_E; ++q)
        if (q < e) mx = fmaxf(mx, acc[q]);
    float sum = 0.f;
#pragma unroll
    for (int q = 0; q < ROUTER_ROWS_MAX_E; ++q)
        if (q < e) sum += __expf(acc[q] - mx);
    if (lane == 0) {
#pragma unroll
        for (int q = 0; q < ROUTER_ROWS_MAX_E; ++q) {
            if (q >= e) break;
            logits[(size_t)tok * e + q] = acc[q];
            probs[(size_t)tok * e + q] = __expf(acc[q] - mx) / sum;
        }
    }
}

extern "C" __global__ void __launch_bounds__(32 * ROUTER_ROWS_WARPS) router_softmax_rows(
    const __half* __restrict__ x, const __half* __restrict__ g, int m, int e, float* __restrict__ logits,
    float* __restrict__ probs, float* __restrict__ zero, int zero_cols, int tokens) {
    __shared__ RouterRowsSmem sm;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int t0 = blockIdx.x * ROUTER_ROWS_WARPS;
    if (zero)
        for (int i = threadIdx.x; i < ROUTER_ROWS_WARPS * zero_cols; i += blockDim.x) {
            const int tok = t0 + i / zero_cols;
            if (tok < tokens) zero[(size_t)tok * zero_cols + i % zero_cols] = 0.f;
        }
    if (e < 1 || e > ROUTER_ROWS_MAX_E || blockDim.x != 32 * ROUTER_ROWS_WARPS) return;  // uniform
    router_block_logits(x, g, m, e, t0, tokens, sm);
    const int tok = t0 + warp;
    if (tok >= tokens) return;
    float acc[ROUTER_ROWS_MAX_E];
#pragma unroll
    for (int q = 0; q < ROUTER_ROWS_MAX_E; ++q) acc[q] = sm.lg[warp][q];
    router_warp_store(acc, e, tok, lane, logits, probs);
}

// router_softmax_rows, then wdmoe-core's softmax and `select` per token by
// the same warp (policy.cuh's token_policy, as moe_route.cu's route_policy
// runs it on the logits this kernel would have written: the same bits),
// one launch instead of two for a prompt's device-routed step. lat: per
// token latencies ([tokens][e] f64) or null for pa.lat; sel rows of sw =
// 1 + 2 pa.k ints as route_policy writes them.
extern "C" __global__ void __launch_bounds__(32 * ROUTER_ROWS_WARPS)
    router_policy_rows(const __half* __restrict__ x, const __half* __restrict__ g, int m, int e,
                       float* __restrict__ logits, float* __restrict__ probs, int tokens, const PolicyArgs pa,
                       const double* __restrict__ lat, int* __restrict__ sel, int sw) {
    __shared__ float sl[ROUTER_ROWS_WARPS][WDMOE_MAX_SLOTS];
    __shared__ double s_p[ROUTER_ROWS_WARPS][WDMOE_MAX_SLOTS], s_lat[ROUTER_ROWS_WARPS][WDMOE_MAX_SLOTS],
        s_w[ROUTER_ROWS_WARPS][WDMOE_MAX_SLOTS], s_total[ROUTER_ROWS_WARPS];
    __shared__ int s_top[ROUTER_ROWS_WARPS][WDMOE_MAX_SLOTS], s_s[ROUTER_ROWS_WARPS][WDMOE_MAX_SLOTS],
        s_sel[ROUTER_ROWS_WARPS][1 + 2 * WDMOE_MAX_SLOTS];
    __shared__ RouterRowsSmem sm;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (e < 1 || e > ROUTER_ROWS_MAX_E || blockDim.x != 32 * ROUTER_ROWS_WARPS) return;  // uniform
    router_block_logits(x, g, m, e, blockIdx.x * ROUTER_ROWS_WARPS, tokens, sm);
    const int tok = blockIdx.x * ROUTER_ROWS_WARPS + warp;
    if (tok >= tokens) return;
    float acc[ROUTER_ROWS_MAX_E];
#pragma unroll
    for (int q = 0; q < ROUTER_ROWS_MAX_E; ++q) acc[q] = sm.lg[warp][q];
    router_warp_store(acc, e, tok, lane, logits, probs);
#pragma unroll
    for (int q = 0; q < ROUTER_ROWS_MAX_E; ++q)
        if (q < e && lane == q) {
            sl[warp][q] = acc[q];
            s_lat[warp][q] = lat ? lat[(size_t)tok * e + q] : pa.lat[q];
        }
    __syncwarp();
    token_policy(sl[warp], e, pa, s_lat[warp], lane, s_p[warp], &s_total[warp], s_top[warp], s_s[warp], s_w[warp],
                 s_sel[warp], nullptr);
    int* out = sel + (size_t)tok * sw;
    const int k = (sw - 1) / 2;
    const int ns = s_sel[warp][0] < k ? s_sel[warp][0] : k;
    if (lane == 0) out[0] = ns;
    for (int i = lane; i < ns; i += 32) {
        out[1 + i] = s_sel[warp][1 + i];
        out[1 + k + i] = s_sel[warp][1 + WDMOE_MAX_SLOTS + i];
    }
}

// out[i] = half(in[i]) for the layer output (fp32 accumulator -> fp16).
extern "C" __global__ void f32_to_f16(const float* __restrict__ in, __half* __restrict__ out, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        out[i] = __float2half_rn(in[i]);
}

// ---------------------------------------------------------------------------
// The device-planned decode step: router + softmax + the WDMoE selection
// policy per token + the expert plan, in one kernel, so that the host can
// launch the whole step at once (the slot kernels of ffn_decode.cu read the
// plan). The policy is a line-by-line port of wdmoe-core's `select` for
// f64 (docs/SPEC.md, Algorithm 1): the host runs wdmoe-core on the same logits
// while the experts run and compares (wdmoe-sim's GpuLayer), re-running the
// experts with its own plan on any difference, so wdmoe-core stays the
// authority. Arithmetic: f64 as on the host, exp bit-identical to the
// host's (exp_host), divisions and additions only elsewhere (nothing the
// compiler could contract into an fma): the same bits as wdmoe-core. The
// policy itself (PolicyArgs, exp_host, select_warp, token_policy) is in
// policy.cuh, shared with moe_route.cu.

// What router_policy reports to the host (page-locked host memory, written
// last by the last block; seq is written after everything else, with
// release semantics at system scope: the host polls it).
struct PlanReport {
    unsigned seq;
    int err;       // 0, or 1 + the first token whose policy failed (non-finite logits, no reachable expert)
    int n_active;  // slots used
    int pad;
    Slot slot[WDMOE_MAX_SLOTS];
    // %globaltimer (ns) at points of block 0 (profiling): entry, logits,
    // f64 softmax, policy, last-block decision, selections gathered, plan
    // written, end.
    unsigned long long stamp[8];
};

namespace {

// The plan's ready flag (the word after the slots) := seq, after the
// warp's plan writes (the slot kernels acquire it).
__device__ __forceinline__ void publish_plan(Slot* plan, unsigned seq, int lane) {
    __threadfence();
    __syncwarp();
    if (lane == 0) {
        unsigned* flag = reinterpret_cast<unsigned*>(plan + WDMOE_MAX_SLOTS);
        asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(flag), "r"(seq) : "memory");
    }
}

// The report's sequence number := seq, after everything the warp (and, for
// several tokens, every block: they emit before counting in) wrote to the
// host: the host polls it instead of waiting on an event after the kernel.
__device__ __forceinline__ void publish_report(PlanReport* report, unsigned seq, int lane) {
    __threadfence_system();
    __syncwarp();
    if (lane == 0) asm volatile("st.release.sys.u32 [%0], %1;" ::"l"(&report->seq), "r"(seq) : "memory");
}


}  // namespace

// One block per token (tokens <= 16). Each block: logits (to logits_host,
// page-locked), softmax (probs), zeroes its row of `zero`, runs the policy
// (warp 0: the exps in parallel, the sum and the selection by lane 0 in
// wdmoe-core's order) and stores its choice in `sel` ([tokens][SEL] ints:
// count, experts, fp32 weights as bits). The last block to finish (counter,
// reset by it) builds the plan: one slot per expert that serves a token, in
// expert order, tokens in token order, written to plan[0..n_slots) (unused
// slots get w13 = 0), then lets the slot kernels launch, then copies the
// plan and the header into `report` (host memory; its seq, written last
// after a system-scope fence, tells the polling host the report and every
// block's logits are there).
extern "C" __global__ void router_policy(const __half* __restrict__ x, const __half* __restrict__ g, int m, int e,
                                         float* __restrict__ logits_host, float* __restrict__ probs,
                                         float* __restrict__ zero, int zero_cols, int tokens, const PolicyArgs pa,
                                         const double* __restrict__ lat_host,
                                         const unsigned long long* __restrict__ wtab, Slot* __restrict__ plan,
                                         int n_slots, int* __restrict__ sel, unsigned* __restrict__ counter,
                                         PlanReport* __restrict__ report, unsigned seq) {
    constexpr int SEL = 1 + 2 * WDMOE_MAX_SLOTS;
    extern __shared__ float sl[];
    __shared__ double sp_prob[WDMOE_MAX_SLOTS], s_total;
    __shared__ int s_sel[16 * SEL];
    __shared__ Slot sp[WDMOE_MAX_SLOTS];
    __shared__ int s_cnt[WDMOE_MAX_SLOTS], s_at[WDMOE_MAX_SLOTS], s_err, s_active;
    __shared__ int sh_top[WDMOE_MAX_SLOTS], sh_s[WDMOE_MAX_SLOTS];
    __shared__ double sh_w[WDMOE_MAX_SLOTS], sh_lat[WDMOE_MAX_SLOTS];
    __shared__ unsigned long long s_wtab[2 * WDMOE_MAX_SLOTS];
    __shared__ unsigned long long st[8];
    const int tok = blockIdx.x;
    if (threadIdx.x == 0) if (pa.profile) st[0] = globaltimer();
    // Latencies and the weight table are cold in L2: issue their loads
    // first, store them to shared memory after the logits.
    double lat_r = 0.0;
    unsigned long long wt_r = 0ull;
    const int me = (int)threadIdx.x;
    if (me < e) lat_r = lat_host ? lat_host[(size_t)tok * e + me] : pa.lat[me];
    if (me < 2 * e) wt_r = wtab[me];
    // (the accumulator row is zeroed by warps 1.. after the logits, off the critical path)
    router_logits<true>(x, g, m, e, tok, sl);
    if (me < e) sh_lat[me] = lat_r;
    if (me < 2 * e) s_wtab[me] = wt_r;
    __syncthreads();
    if (threadIdx.x == 0) if (pa.profile) st[1] = globaltimer();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (warp == 1 && tok == 0 && pa.n_pf > 0) {
        // Token 0's lowest-index top-k candidate by logit (ties: lower index).
        if (lane == 0) {
            unsigned long long taken = 0ull;
            int qmin = e;
            for (int i = 0; i < pa.k && i < e; ++i) {
                int best = -1;
                for (int q = 0; q < e; ++q)
                    if (!(taken >> q & 1ull) && (best < 0 || sl[q] > sl[best])) best = q;
                taken |= 1ull << best;
                qmin = best < qmin ? best : qmin;
            }
            s_at[0] = qmin;
        }
        __syncwarp();
        const char* base = reinterpret_cast<const char*>(s_wtab[2 * s_at[0]]);
        // Each range in 1 MB pieces, one bulk prefetch per lane and piece.
        for (int r = 0; r < pa.n_pf && r < 8; ++r) {
            const long long len = pa.pf_len[r], pieces = (len + (1 << 20) - 1) >> 20;
            for (long long i = lane; i < pieces; i += 32) {
                const long long off = pa.pf_off[r] + (i << 20);
                const long long n = len - (i << 20) < (1 << 20) ? len - (i << 20) : (1 << 20);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
                asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(base + off), "r"((unsigned)n)
                             : "memory");
#else
                for (long long l = 0; l < n; l += 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(base + off + l));
#endif
            }
        }
    }
    int* my_sel = s_sel;  // this block's selection (row 0; rows of all tokens once gathered)
    // From here on warp 0 alone (no block-wide barriers): softmax, policy,
    // and in the last block the plan.
    if (warp != 0) {
        // Zero this token's accumulator row (read only by the down kernels,
        // which start after the router grid completed), then exit.
        for (int i = threadIdx.x - 32; i < zero_cols; i += blockDim.x - 32) zero[(size_t)tok * zero_cols + i] = 0.f;
        return;
    }
    if (blockDim.x == 32)
        for (int i = lane; i < zero_cols; i += 32) zero[(size_t)tok * zero_cols + i] = 0.f;
    // This token's logits (host) and probabilities: written off the critical
    // path (after the trigger, or before a non-last block exits).
    auto emit = [&]() {
        for (int q = lane; q < e; q += 32) {
            logits_host[(size_t)tok * e + q] = sl[q];
            probs[(size_t)tok * e + q] = (float)sp_prob[q];
        }
    };
    constexpr int SELW = 1 + 2 * WDMOE_MAX_SLOTS;
    const int n_all = n_slots < WDMOE_MAX_SLOTS ? n_slots : WDMOE_MAX_SLOTS;
    // One token: its top-k experts by logit (ties: lower index first) are
    // published as the plan's candidates before the policy runs, and the
    // slot kernels may launch: the gate/up kernels stream their candidate's
    // weights while the policy decides (SpecPlan, moe_plan.cuh).
    unsigned long long cmask = 0ull;
    if (tokens == 1) {
        for (int q0 = 0; q0 < e; q0 += 32) {
            const int q = q0 + lane;
            bool c = false;
            if (q < e) {
                const float v = sl[q];
                int r = 0;
                for (int j = 0; j < e; ++j) r += (sl[j] > v) || (sl[j] == v && j < q);
                c = r < pa.k;
            }
            cmask |= (unsigned long long)__ballot_sync(0xffffffffu, c) << q0;
        }
        SpecPlan* sp = spec_plan(plan);
        for (int q0 = 0; q0 < e; q0 += 32) {
            const int q = q0 + lane;
            if (q < e && (cmask >> q & 1ull)) {
                const int pos = __popcll(cmask & ((1ull << q) - 1ull));
                if (pos < n_all) sp->w13[pos] = s_wtab[2 * q];
            }
        }
        for (int i = __popcll(cmask) + lane; i < n_all; i += 32) sp->w13[i] = 0ull;
        __threadfence();
        __syncwarp();
        if (lane == 0) asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(&sp->seq), "r"(seq) : "memory");
        griddep_launch_dependents();
    }
    token_policy(sl, e, pa, sh_lat, lane, sp_prob, &s_total, sh_top, sh_s, sh_w, my_sel,
                 pa.profile ? &st[2] : nullptr);
    if (pa.profile && lane == 0) st[3] = globaltimer();
    if (tokens == 1) {
        // One token: its kept experts (a subset of the candidates) go to
        // their candidates' slots (a dropped candidate's slot is unused);
        // should a kept expert not be a candidate, the kept experts in index
        // order are the slots (a candidate's kernel then finds another
        // expert in its slot and runs that one). The report lists them in
        // index order either way. Only the fields the slot kernels and the
        // report read are written.
        const int ns = my_sel[0];
        int at = 0, q = 0;
        float w = 0.f;
        if (lane < ns) {
            q = my_sel[1 + lane];
            for (int j = 0; j < ns; ++j) at += my_sel[1 + j] < q;
            w = __int_as_float(my_sel[1 + WDMOE_MAX_SLOTS + lane]);
        }
        const bool in_c = __all_sync(0xffffffffu, lane >= ns || (cmask >> q & 1ull));
        const int at_plan = in_c ? __popcll(cmask & ((1ull << q) - 1ull)) : at;
        unsigned long long used = 0ull;
        for (int j = 0; j < ns; ++j) used |= 1ull << __shfl_sync(0xffffffffu, at_plan, j);
        auto put = [&](Slot* o) {
            o->w13 = s_wtab[2 * q];
            o->w2 = s_wtab[2 * q + 1];
            o->expert = q;
            o->T = 1;
            o->toks.gather = 1;
            o->toks.scatter = 1;
            o->toks.idx[0] = 0;
            o->toks.w[0] = w;
        };
        if (lane < ns) put(plan + at_plan);
        for (int i = lane; i < n_all; i += 32)
            if (!(used >> i & 1ull)) {
                plan[i].w13 = 0ull;
                plan[i].w2 = 0ull;
                plan[i].T = 0;
            }
        // Tell each candidate's streaming kernel at once whether its slot
        // runs it (a hint: they check the plan itself at the end).
        SpecPlan* spv = spec_plan(plan);
        for (int i = lane; i < n_all; i += 32) {
            const unsigned v = in_c && (used >> i & 1ull) ? seq : (seq | WDMOE_SPEC_DROPPED);
            asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(&spv->verdict[i]), "r"(v) : "memory");
        }
        __syncwarp();
        publish_plan(plan, seq, lane);
        if (pa.profile && lane == 0) st[6] = globaltimer();
        // (its dependents were let launch with the candidates, above)
        emit();
        if (lane < ns) put(report->slot + at);
        if (lane == 0) {
            report->err = ns == 0 ? 1 : 0;
            report->n_active = ns;
            if (pa.profile) {
                st[4] = st[5] = st[3];
                st[7] = globaltimer();
                for (int i = 0; i < 8; ++i) report->stamp[i] = st[i];
            }
        }
        publish_report(report, seq, lane);
        return;
    }
    {
        // Publish this block's selection; the last-arriving block gathers all.
        int* gsel = sel + (size_t)tok * SELW;
        const int ns = my_sel[0];
        for (int i = lane; i < SELW; i += 32)
            if (i == 0 || (i <= ns) || (i > WDMOE_MAX_SLOTS && i <= WDMOE_MAX_SLOTS + ns)) gsel[i] = my_sel[i];
        // The logits go to the host before this block counts in, so that
        // the report's seq (written by the last block) follows them all.
        emit();
        __threadfence_system();
        __syncwarp();
        unsigned last = 0u;
        if (lane == 0) last = atomicAdd(counter, 1u) == (unsigned)tokens - 1 ? 1u : 0u;
        if (!__shfl_sync(0xffffffffu, last, 0)) return;
        __threadfence();
        for (int t = 0; t < tokens; ++t) {
            const int* src = sel + (size_t)t * SELW;
            const int nst = __ldcg(src);
            for (int i = lane; i < SELW; i += 32)
                if (i == 0 || (i <= nst) || (i > WDMOE_MAX_SLOTS && i <= WDMOE_MAX_SLOTS + nst))
                    s_sel[t * SELW + i] = __ldcg(src + i);
        }
        if (lane == 0) *counter = 0u;  // ready for the next step
        __syncwarp();
    }
    if (lane == 0) if (pa.profile) st[4] = globaltimer();
    // Expert q's token count (lane q), then slot positions (prefix sums).
    for (int q = lane; q < e; q += 32) {
        int cnt = 0;
        for (int t = 0; t < tokens; ++t) {
            const int* ts = s_sel + t * SELW;
            for (int i = 0; i < ts[0]; ++i) cnt += ts[1 + i] == q;
        }
        s_cnt[q] = cnt;
    }
    __syncwarp();
    if (lane == 0) {
        int err = 0, n = 0;
        for (int t = 0; t < tokens && !err; ++t)
            if (s_sel[t * SELW] == 0) err = 1 + t;
        for (int q = 0; q < e; ++q) {
            s_at[q] = s_cnt[q] > 0 ? n : -1;
            n += s_cnt[q] > 0;
            if (s_cnt[q] > 16) err = -1;  // cannot happen for tokens <= 16
        }
        if (n > n_slots) err = -1;  // cannot happen for n_slots = min(e, tokens * k)
        if (err) {
            n = 0;
            for (int q = 0; q < e; ++q) s_at[q] = -1;
        }
        s_err = err;
        s_active = n;
        if (pa.profile) st[5] = globaltimer();
    }
    __syncwarp();
    const int n_used = s_active;
    // Lane q fills expert q's slot; lanes past the used slots clear the rest.
    for (int q = lane; q < e; q += 32) {
        const int at = s_at[q];
        if (at < 0) continue;
        Slot& o = sp[at];
        int c = 0;
        for (int t = 0; t < tokens; ++t) {
            const int* ts = s_sel + t * SELW;
            for (int i = 0; i < ts[0]; ++i)
                if (ts[1 + i] == q) {
                    o.toks.idx[c] = t;
                    o.toks.w[c] = __int_as_float(ts[1 + WDMOE_MAX_SLOTS + i]);
                    ++c;
                }
        }
        for (int j = c; j < 16; ++j) {
            o.toks.idx[j] = 0;
            o.toks.w[j] = 0.f;
        }
        o.w13 = s_wtab[2 * q];
        o.w2 = s_wtab[2 * q + 1];
        o.expert = q;
        o.T = c;
        o.toks.gather = 1;
        o.toks.scatter = 1;
    }
    for (int i = n_used + lane; i < n_all; i += 32) {
        Slot& o = sp[i];
        o.w13 = 0ull;
        o.w2 = 0ull;
        o.expert = -1;
        o.T = 0;
        o.toks.gather = 0;
        o.toks.scatter = 0;
        for (int j = 0; j < 16; ++j) {
            o.toks.idx[j] = 0;
            o.toks.w[j] = 0.f;
        }
    }
    __syncwarp();
    const int words = (int)(sizeof(Slot) / 4) * n_all;
    const int* src = reinterpret_cast<const int*>(sp);
    int* dplan = reinterpret_cast<int*>(plan);
    for (int i = lane; i < words; i += 32) dplan[i] = src[i];
    __syncwarp();
    publish_plan(plan, seq, lane);
    if (lane == 0) if (pa.profile) st[6] = globaltimer();
    // The plan is published: the slot kernels may launch (they acquire the
    // flag before reading it).
    griddep_launch_dependents();
    int* hrep = reinterpret_cast<int*>(report->slot);
    for (int i = lane; i < words; i += 32) hrep[i] = src[i];
    if (lane == 0) {
        report->err = s_err;
        report->n_active = n_used;
        if (pa.profile) st[7] = globaltimer();
    }
    publish_report(report, seq, lane);
}

// Test entry: the device policy for `n` independent cases (one warp each,
// blockDim 32): logits [n][e], lat [n][e]; out [n][1 + WDMOE_MAX_SLOTS]
// (count, experts), wout [n][WDMOE_MAX_SLOTS] (f64 weights). e <= 32 takes
// router_policy's warp path (select_warp, fp32 weights widened back), larger
// e the serial one (select_from_probs, f64 weights).
extern "C" __global__ void policy_probe(const float* __restrict__ logits, const double* __restrict__ lat, int e,
                                        int n, const PolicyArgs pa, int* __restrict__ out,
                                        double* __restrict__ wout) {
    const int c = blockIdx.x, lane = threadIdx.x;
    if (c >= n || e < 1 || e > WDMOE_MAX_SLOTS) return;
    __shared__ double p[WDMOE_MAX_SLOTS], lt[WDMOE_MAX_SLOTS], w[WDMOE_MAX_SLOTS];
    __shared__ int s[WDMOE_MAX_SLOTS], top[WDMOE_MAX_SLOTS], row[1 + 2 * WDMOE_MAX_SLOTS];
    __shared__ int ok;
    const float* lg = logits + (size_t)c * e;
    if (lane == 0) {
        ok = pa.k >= 1 && pa.k <= e;
        for (int q = 0; ok && q < e; ++q) ok = isfinite(lg[q]);
        if (ok) softmax_host(lg, e, p);
        for (int q = 0; q < e; ++q) lt[q] = lat[(size_t)c * e + q];
    }
    __syncwarp();
    int* o = out + (size_t)c * (1 + WDMOE_MAX_SLOTS);
    double* ow = wout + (size_t)c * WDMOE_MAX_SLOTS;
    if (!ok) {
        if (lane == 0) o[0] = 0;
        return;
    }
    if (e <= 32) {
        select_warp(p, lt, e, pa, lane, top, w, row);
        if (lane == 0) {
            o[0] = row[0];
            for (int i = 0; i < row[0]; ++i) {
                o[1 + i] = row[1 + i];
                ow[i] = (double)__int_as_float(row[1 + WDMOE_MAX_SLOTS + i]);
            }
        }
    } else if (lane == 0) {
        const int ns = select_from_probs(p, e, pa, lt, top, s, w);
        o[0] = ns;
        for (int i = 0; i < ns; ++i) {
            o[1 + i] = s[i];
            ow[i] = w[i];
        }
    }
}
