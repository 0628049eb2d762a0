// Device-side routing of the grouped (prefill) MoE step, any token count: no
// host round trip between the router and the combine.
//
//   (router.cu's router_softmax first: the logits and probabilities, the
//   same kernel and so the same bits as the host-routed step's router)
//   route_policy  one warp per token: wdmoe-core's softmax and `select`
//                 (the port in policy.cuh, shared with router.cu's decode
//                 plan) on the logits; the token's choice to `sel`;
//   route_count   per tile of ROUTE_TILE tokens, how many rows each expert
//                 gets (a histogram);
//   route_scatter per tile, the scans of the counts (the row offsets of
//                 each expert and of the tile's first row of it), then per
//                 token and chosen expert its row in expert order (tokens in
//                 token order within an expert: a stable counting sort), the
//                 row -> token table and the combine tables;
//   route_gather  the token rows of x in that order, up to the device's row
//                 count.
// The grouped GEMMs (ffn_prefill.cu) then read the row offsets from device
// memory, and combine_rows_f32 the combine tables. The encoding is the one
// the host builds from wdmoe-core's groups (RowTables in src/moe/encode.rs):
// for the same selections the tables are equal entry for entry.
//
// (The counting sort follows the idea of vLLM's moe_align_block_size:
// histogram, scan, scatter; written for this layout, not copied.)

#include <cuda_fp16.h>
#include <stdint.h>

#include "common.cuh"
#include "moe_plan.cuh"
#include "policy.cuh"

namespace {

// Token t's `sel` row (count, k experts, k weight bits), its first
// SEL_REGS experts and weights in registers: loaded at once (one memory
// round trip where reading entries as they are needed took several);
// entries past SEL_REGS (k > SEL_REGS) are read from the row when asked.
constexpr int SEL_REGS = 4;
struct SelRow {
    const int* row;  // null past `tokens`
    int k, ns;       // ns: the count clamped to 0..k
    int q[SEL_REGS];
    float w[SEL_REGS];
};

__device__ __forceinline__ SelRow load_sel_row(const int* __restrict__ sel, int sw, int k, int t, int tokens) {
    SelRow s;
    s.row = nullptr;
    s.k = k;
    s.ns = 0;
#pragma unroll
    for (int i = 0; i < SEL_REGS; ++i) {
        s.q[i] = -1;
        s.w[i] = 0.f;
    }
    if (t < tokens) {
        s.row = sel + (size_t)t * sw;
        const int n0 = s.row[0];
#pragma unroll
        for (int i = 0; i < SEL_REGS; ++i)
            if (i < k) {
                s.q[i] = s.row[1 + i];
                s.w[i] = __int_as_float(s.row[1 + k + i]);
            }
        s.ns = n0 < 0 ? 0 : (n0 > k ? k : n0);
    }
    return s;
}

// The experts a row chose, as a bit mask (experts outside [0, e) ignored).
__device__ __forceinline__ unsigned long long chosen_mask(const SelRow& s, int e) {
    unsigned long long mask = 0ull;
#pragma unroll
    for (int i = 0; i < SEL_REGS; ++i)
        if (i < s.ns && s.q[i] >= 0 && s.q[i] < e) mask |= 1ull << s.q[i];
    for (int i = SEL_REGS; i < s.ns; ++i) {
        const int q = s.row[1 + i];
        if (q >= 0 && q < e) mask |= 1ull << q;
    }
    return mask;
}

// The weight of expert q in a row: the entry of the row naming q (the first
// among the row's count), 0 if none.
__device__ __forceinline__ float chosen_weight(const SelRow& s, int q) {
    // (no early return from the unrolled loop: ptxas then indexed w in
    // local memory)
    float wt = 0.f;
    bool found = false;
#pragma unroll
    for (int i = 0; i < SEL_REGS; ++i)
        if (!found && i < s.ns && s.q[i] == q) {
            wt = s.w[i];
            found = true;
        }
    for (int i = SEL_REGS; !found && i < s.ns; ++i)
        if (s.row[1 + i] == q) {
            wt = __int_as_float(s.row[1 + s.k + i]);
            found = true;
        }
    return wt;
}

__device__ __forceinline__ unsigned lanemask_lt() {
    unsigned m;
    asm("mov.u32 %0, %%lanemask_lt;" : "=r"(m));
    return m;
}

}  // namespace

// One block of 32 threads per token (below the token counts where
// router.cu's router_policy_rows runs the policy in the router's launch):
// the token's logits (logits[tok], fp32, written by the router kernel,
// router.cu's router_softmax, just before) and latencies
// (lat[tok * e + q] in device memory, or pa.lat[q] when lat is null), then
// wdmoe-core's softmax and `select` (token_policy); the choice to
// sel[tok * sw ..]: count, then pa.k experts, then pa.k fp32 weight bits
// (sw = 1 + 2 pa.k; count 0: the policy failed for this token, see
// token_policy). e <= WDMOE_MAX_SLOTS.
extern "C" __global__ void route_policy(const float* __restrict__ logits, int e, int tokens, const PolicyArgs pa,
                                        const double* __restrict__ lat, int* __restrict__ sel, int sw) {
    __shared__ float sl[WDMOE_MAX_SLOTS];
    __shared__ double s_p[WDMOE_MAX_SLOTS], s_lat[WDMOE_MAX_SLOTS], s_w[WDMOE_MAX_SLOTS], s_total;
    __shared__ int s_top[WDMOE_MAX_SLOTS], s_s[WDMOE_MAX_SLOTS], s_sel[1 + 2 * WDMOE_MAX_SLOTS];
    const int tok = blockIdx.x, lane = threadIdx.x;
    if (tok >= tokens || e < 1 || e > WDMOE_MAX_SLOTS || blockDim.x != 32) return;  // uniform per block
    for (int q = lane; q < e; q += 32) {
        sl[q] = logits[(size_t)tok * e + q];
        s_lat[q] = lat ? lat[(size_t)tok * e + q] : pa.lat[q];
    }
    __syncwarp();
    token_policy(sl, e, pa, s_lat, lane, s_p, &s_total, s_top, s_s, s_w, s_sel, nullptr);
    int* out = sel + (size_t)tok * sw;
    const int k = (sw - 1) / 2;
    const int ns = s_sel[0] < k ? s_sel[0] : k;
    if (lane == 0) out[0] = ns;
    for (int i = lane; i < ns; i += 32) {
        out[1 + i] = s_sel[1 + i];
        out[1 + k + i] = s_sel[1 + WDMOE_MAX_SLOTS + i];
    }
}

// Tokens per tile of the counting sort (one thread per token: the block
// size of route_count and route_scatter).
#define ROUTE_TILE 256

// The per-warp counts of a tile's tokens per expert: s_warp[w][q] = the
// tokens of warp w that chose q (ballots; no atomics).
__device__ __forceinline__ void tile_warp_counts(unsigned long long mask, int e, int (*s_warp)[WDMOE_MAX_SLOTS]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int q = 0; q < e; ++q) {
        const unsigned b = __ballot_sync(0xffffffffu, (mask >> q) & 1ull);
        if (lane == 0) s_warp[warp][q] = __popc(b);
    }
}

// Histogram: counts[b * e + q] = tokens of tile b (tokens b * ROUTE_TILE ..)
// that chose expert q. Block b = tile b, blockDim = ROUTE_TILE. Lets
// route_scatter (launched as its programmatic dependent) start at once.
extern "C" __global__ void __launch_bounds__(ROUTE_TILE)
    route_count(const int* __restrict__ sel, int sw, int tokens, int e, int* __restrict__ counts) {
    __shared__ int s_warp[ROUTE_TILE / 32][WDMOE_MAX_SLOTS];
    griddep_launch_dependents();
    if (e < 1 || e > WDMOE_MAX_SLOTS || blockDim.x != ROUTE_TILE) return;  // uniform
    const int t = blockIdx.x * ROUTE_TILE + threadIdx.x;
    tile_warp_counts(chosen_mask(load_sel_row(sel, sw, (sw - 1) / 2, t, tokens), e), e, s_warp);
    __syncthreads();
    for (int q = threadIdx.x; q < e; q += blockDim.x) {
        int n = 0;
        for (int v = 0; v < ROUTE_TILE / 32; ++v) n += s_warp[v][q];
        counts[(size_t)blockIdx.x * e + q] = n;
    }
}

// Scatter (same grid as route_count, blockDim = ROUTE_TILE; launched as
// route_count's programmatic dependent: it waits for the counts). Each
// block first scans the counts itself (tiles x e ints): expert q's first
// row (an exclusive scan over experts of the totals; block 0 writes them
// to offsets, with offsets[e] = all rows) plus the rows of q in the tiles
// before this one. Then for token t and each expert q it chose, its row r
// = that base + the tokens before t in the tile that chose q (tokens in
// order within an expert: a stable counting sort): idx[r] = t; and for the
// j-th of t's experts in expert order slot[t * e + j] = r, w[t * e + j] =
// its weight, the rest of t's e entries -1 and 0 (the host's RowTables
// encoding), written from shared memory with consecutive threads on
// consecutive entries (a thread per token writing its own row took a
// 32-byte sector per entry and warp). rows_cap: entries of idx (rows >=
// rows_cap are never written).
extern "C" __global__ void __launch_bounds__(ROUTE_TILE)
    route_scatter(const int* __restrict__ sel, int sw, int tokens, int e, const int* __restrict__ counts,
                  int tiles, int* __restrict__ offsets, int* __restrict__ idx, int rows_cap,
                  int* __restrict__ slot, float* __restrict__ w) {
    __shared__ int s_warp[ROUTE_TILE / 32][WDMOE_MAX_SLOTS];
    __shared__ int s_base[WDMOE_MAX_SLOTS], s_total[WDMOE_MAX_SLOTS + 1];
    __shared__ int s_slot[ROUTE_TILE][SEL_REGS], s_ns[ROUTE_TILE];
    __shared__ float s_wt[ROUTE_TILE][SEL_REGS];
    if (e < 1 || e > WDMOE_MAX_SLOTS || blockDim.x != ROUTE_TILE) return;  // uniform
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int k = (sw - 1) / 2;
    const int c0 = blockIdx.x * ROUTE_TILE, t = c0 + threadIdx.x;
    // (the selections are older than route_count: read before the wait)
    const SelRow sr = load_sel_row(sel, sw, k, t, tokens);
    const unsigned long long mask = chosen_mask(sr, e);
    tile_warp_counts(mask, e, s_warp);
    griddep_wait();
    for (int q = threadIdx.x; q < e; q += blockDim.x) {
        int before = 0, total = 0;
        for (int b = 0; b < tiles; ++b) {
            const int n = counts[(size_t)b * e + q];
            before += b < (int)blockIdx.x ? n : 0;
            total += n;
        }
        s_base[q] = before;
        s_total[q] = total;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int run = 0;
        for (int q = 0; q < e; ++q) {
            const int n = s_total[q];
            s_total[q] = run;  // now expert q's first row
            run += n;
        }
        s_total[e] = run;
    }
    // Per expert: the rows of the warps before each (an exclusive scan over
    // the warps, in place).
    if (threadIdx.x < e) {
        int run = 0;
        for (int v = 0; v < ROUTE_TILE / 32; ++v) {
            const int n = s_warp[v][threadIdx.x];
            s_warp[v][threadIdx.x] = run;
            run += n;
        }
    }
    __syncthreads();
    if (blockIdx.x == 0)
        for (int q = threadIdx.x; q <= e; q += blockDim.x) offsets[q] = s_total[q];
    // The token's rows and weights in expert order: the first SEL_REGS to
    // shared memory (written out below), any more (k > SEL_REGS) straight
    // to its slot and weight rows.
    int j = 0;
    for (int q = 0; q < e; ++q) {
        const unsigned b = __ballot_sync(0xffffffffu, (mask >> q) & 1ull);
        if (!((mask >> q) & 1ull)) continue;
        int r = s_total[q] + s_base[q] + s_warp[warp][q] + __popc(b & lanemask_lt());
        if (r >= 0 && r < rows_cap) {
            idx[r] = t;
        } else {
            r = -1;  // cannot happen: rows <= tokens x k <= rows_cap
        }
        const float wt = chosen_weight(sr, q);
        if (j < SEL_REGS) {
            s_slot[threadIdx.x][j] = r;
            s_wt[threadIdx.x][j] = wt;
        } else {
            slot[(size_t)t * e + j] = r;
            w[(size_t)t * e + j] = wt;
        }
        ++j;
    }
    s_ns[threadIdx.x] = j;
    __syncthreads();
    const int n_tok = min(ROUTE_TILE, tokens - c0);
    for (int i = threadIdx.x; i < n_tok * e; i += blockDim.x) {
        const int tl = i / e, jj = i % e, ns = s_ns[tl];
        if (jj >= ns) {
            slot[(size_t)c0 * e + i] = -1;
            w[(size_t)c0 * e + i] = 0.f;
        } else if (jj < SEL_REGS) {
            slot[(size_t)c0 * e + i] = s_slot[tl][jj];
            w[(size_t)c0 * e + i] = s_wt[tl][jj];
        }
    }
}

// xs[r] = x[idx[r]] for the rows r < min(offsets[e], rows_cap) (rows of m
// fp16, m % 8 == 0; an index outside [0, x_rows) gives zeros): the token rows
// in expert order, as many as the device's counting sort produced.
extern "C" __global__ void route_gather(const __half* __restrict__ x, const int* __restrict__ idx,
                                        const int* __restrict__ offsets, int e, __half* __restrict__ xs,
                                        int rows_cap, int m, long long x_rows) {
    int rows = offsets[e];
    rows = rows < 0 ? 0 : (rows > rows_cap ? rows_cap : rows);
    const long long per = m / 8, total = (long long)rows * per;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long r = i / per, c = i % per;
        const long long src = idx[r];
        reinterpret_cast<uint4*>(xs)[i] = (src >= 0 && src < x_rows)
                                              ? reinterpret_cast<const uint4*>(x + src * m)[c]
                                              : make_uint4(0, 0, 0, 0);
    }
}
