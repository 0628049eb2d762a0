// The packed-weights grouped GEMM (sm_90a): the expert FFN at prefill sizes
// straight from the decode packing (`pack_tiles` in ffn_decode.cu: 16x16
// tiles in mma A-fragment order), so that a model whose experts fit the GPU
// once (Mixtral 8x7B on one H200) need not hold a second, prefill layout.
// Included by ffn_prefill.cu (its module).
//
// "Swapped" GEMM: out[token][row] = sum_k W[row][k] x[token][k], with the
// weights as the wgmma A operand taken from registers (each warp's 16 rows x
// 16 k are exactly one packed tile: 512 contiguous bytes, 16 per lane) and
// the tokens as the B operand (N = BN tokens, K-major, 128-byte swizzle,
// loaded by TMA as the grouped GEMM loads its A). One block: 128 rows of W
// (two consumer warpgroups of 64) by BN tokens of one group (expert); a
// producer thread streams, per stage of 64 k, the tokens' box (TMA) and the
// block's weight tiles (1-D bulk copies of whole packed runs) into shared
// memory, where each warp reads its fragments (ld.shared, 16 bytes per lane,
// conflict-free) into registers double-buffered across wgmma groups (a group
// stays in flight while the next one's fragments load).
//
// Registers: setmaxnreg gives each consumer thread 232 (the producer keeps
// 40); ptxas allocates the consumer branch against that, not against the 168
// of the 384-thread launch bound. Accumulators take BN/2 fp32 per matrix: the
// wide tiles (gated BN = 128: 2 x 64; plain/pairs BN = 256: 128) fit with no
// spills (ptxas -v: 0 bytes stack; SASS: no LDL/STL, R190 / R205 highest).
// Gated at BN = 128 issues one wgmma group per half stage (KS = 2 k16 steps,
// fragments of 2 k16 x 2 matrices per buffer): with whole-stage groups the
// two buffers (64 registers) do not fit and ptxas serializes the wgmmas
// (C7512). The wide tiles halve the shared-memory and L2 traffic per flop of
// the 64 / 128-token ones: at Mixtral size, 512 rows per expert (H200 at
// its 700 W cap, ~1350 MHz under load), gate/up 485 -> 593 TFLOP/s, down
// 507 -> 613 (cuBLAS in the same run: 721 / 704); 4096 rows: 484 -> 588,
// 463 -> 608. At 64 rows per expert the 64-token tiles stay (DRAM-bound).
//
// Epilogue (fp16 out): a thread's accumulators hold 2 tokens x 1 feature per
// pair, and the output is token-major, so each element used to go out as
// one 2-byte store with its own address and silu (2 MUFU). Now lanes l and
// l^4 (neighbouring features) swap halves with one shuffle and each stores
// 2 features of one token as a half2 (half the stores and address math),
// and the gated silu of the two tokens shares one reciprocal (3 MUFU per
// pair, not 4; the epilogue is MUFU-bound). Both wide tiles stay spill-free
// (SASS: R221 / R208 highest; since the pair's small tiles, the 256-token
// H16 instantiations keep 8 bytes of stack, stored and loaded outside the
// k loop: tile setup and epilogue). Same run, old -> new epilogue interleaved
// (packed_stage_timing_mixtral, best of rounds): 512 rows per expert gate/up
// 1575 -> 1539 us (611 -> 625 TFLOP/s; medians 596 -> 607), down 741 ->
// 740 us (649 -> 650); 4096 rows gate/up 12426 -> 12346 us (619 -> 623;
// medians 605 -> 616), down 6030 -> 6018 us (638 -> 639). (The old
// epilogue was taken out once that comparison was recorded.)
//
// The q|k|v projection (PO_F32, one matrix of 6144 x 4096, 2,048 tokens)
// takes the same wide tile as the FFN down (BN = 256, 4 stages; SASS R205
// highest, no spills): 615 -> 693 TFLOP/s (167.7 -> 148.7 us, medians of
// rounds in one call, tests/gpu_packed.rs packed_f32_timing_qkv; cuBLAS
// F.linear with fp16 out in the same call 530). The pick (pick_bn, one
// group: the widest tile with two waves) takes it above ~1,280 tokens.
//
// Tried and not kept (branch gemm-speed-clusters): 2-block clusters that
// share the weight stage of two token tiles (or the token box of two row
// blocks) by multicast. Equal to the single-block kernels within the noise
// of a 700 W-capped H200 (512 rows per expert: gate/up 692 vs 720 best,
// down 653 vs 734; 4096 rows: medians 1-5 % better, bests 1-3 % worse).
// A cluster-scope release (`mbarrier.arrive.release.cluster`) compiles to
// MEMBAR.ALL.GPU per arrive and cost 35 %; the plain remote arrive does not.
//
// Tiles run token tile fastest, so the blocks that read the same weights
// (an expert with more than BN tokens) run at the same time and share them
// in L2: the weights come from DRAM about once per step at any token count.
// A launch's last wave, where it holds at most PackedParams::sk % of the
// blocks, is shared out by k blocks over all of them (stream-K:
// stream_k.cuh, which says what it gains and costs).
//
// KIND: PK_GATED (W1|W3 tiles interleaved: two accumulators, epilogue
// h = silu(g) * u), PK_PLAIN (one 16-row tile per unit) or PK_PAIRS (32-row
// units of two 16-row tiles, the decode W2 layout). OUT: PO_H16 (fp16
// store: h, or the expert outputs), PO_F32 (fp32 store), PO_F32_ADD (fp32
// out += result: a residual) or PO_QKV_ROPE (the q|k|v projection with
// RoPE and the KV-cache write, below), the last three for the model's
// attention projections (PK_PLAIN). EXT > 0: the extended tiles of a
// plain/extended pair of launches (below). The wgmma wrappers with A from
// registers are in wgmma_ra.cuh.

#pragma once

enum { PK_GATED = 0, PK_PLAIN = 1, PK_PAIRS = 2 };
enum { PO_H16 = 0, PO_F32 = 1, PO_F32_ADD = 2, PO_QKV_ROPE = 3 };

// Problem description, passed by value (kernel parameter space).
struct PackedParams {
    unsigned long long w[MAX_GROUPS];  // per group: its packed matrix (16-byte aligned)
    long long unit_stride;  // uint4 between row units at one k tile
    long long kt_stride;    // uint4 between k tiles of one unit
    void* out;              // [max_rows][ldo] (fp16 or fp32, OUT): out[token row][feature]
    const int* dev_rows;    // groups + 1 row offsets on the device, or null
    int k;                  // reduction length, k % 64 == 0
    int n_rows;             // rows of W (output features), % 16 == 0
    int groups;             // 1..MAX_GROUPS
    int ldo;                // output row stride, elements
    int max_rows;           // token rows the tensor map and the output hold
    int kmajor;             // 1: the units of one k tile are contiguous
    int row_start[MAX_GROUPS + 1];  // host row offsets (dev_rows null)
    int splits;             // slices of k (> 1 only with PO_F32_ADD: atomic adds)
    int ext_cols;           // > 0: the token tiles of a plain/extended pair of launches (below)
    // Fitted token tiles (fit_hi > 0): each group's tiles take the width
    // fit_tiles gives it, one launch per width (below); follower = 1: not
    // the first launch of such a chain.
    int fit_lo, fit_hi, follower;
    // PO_QKV_ROPE (the model's q|k|v projection of a prompt chunk, rows =
    // (heads + 2 kv_heads) x 128: one head per row block): q, not rotated,
    // into q_out ([tokens][heads 128] fp32; the prefill attention rotates it
    // as it loads it), k rotated and v into this layer's
    // cache ([kv_heads][max_seq][128] fp16) at positions start + token;
    // rope: [positions][64] (cos, sin) fp32 pairs.
    unsigned long long q_out, k_cache, v_cache, rope;
    int start, heads, kv_heads, max_seq;
    // Stream-K for the last partial wave (stream_k.cuh; fp16 outputs of
    // whole 128-row blocks, one k slice) where it holds at most sk % of a
    // wave (0: never), with a workspace region (sk_ws: a float4 slot per
    // block) and its flags (sk_sem: an int per block, zero between
    // launches).
    unsigned long long sk_ws, sk_sem;
    int sk;
    // A pair's small tiles (pair_small = S > 0; pair_bn: the pair's plain
    // width; small_cost4: their cost per column in quarters of the plain
    // tiles'): a group whose last rows fit one S-token tile at less cost
    // gives them to it (pair_big_rows, below). Every launch of such a pair
    // takes them; small_run = 1: the launch of the small tiles.
    int pair_bn, pair_small, small_run, small_cost4;
};
static_assert(sizeof(PackedParams) == 936, "mirrored by prefill::packed_launch::PackedParams (size asserted there too)");

#include "wgmma_ra.cuh"
#include "stream_k.cuh"

// The two consumer warpgroups (256 threads) meet: named barrier 1 (the
// producer warp never joins it).
__device__ __forceinline__ void consumer_sync() { asm volatile("bar.sync 1, 256;" ::: "memory"); }

// f(float4 of a[i..i+3], c0 + i / 4) -> the new a[i..i+3], for every i (N %
// 4 == 0): the accumulators pass by value, so their indices stay constants
// (and the array in registers) even where f is not inlined.
template <int N, typename F>
__device__ __forceinline__ void chunks4(float (&a)[N], int c0, F&& f) {
    static_assert(N % 4 == 0, "float4 chunks");
#pragma unroll
    for (int i = 0; i < N; i += 4) {
        const float4 r = f(make_float4(a[i], a[i + 1], a[i + 2], a[i + 3]), c0 + i / 4);
        a[i] = r.x;
        a[i + 1] = r.y;
        a[i + 2] = r.z;
        a[i + 3] = r.w;
    }
}

// Extended tiles among a group's ntt token tiles of bn + xc columns at
// most (r rows): as many as the rows past ntt plain tiles need.
__device__ __forceinline__ int ext_tiles(int r, int ntt, int bn, int xc) {
    const int extra = r - ntt * bn;
    return (xc > 0 && extra > 0) ? (extra + xc - 1) / xc : 0;
}

// Columns the tensor cores run for r rows on tiles of bn tokens extended
// by up to xc (a pair's plain and extended tiles, below).
__device__ __forceinline__ int pair_cols(int r, int bn, int xc) {
    if (r <= 0) return 0;
    const int ntt = (r + bn + xc - 1) / (bn + xc);
    return ntt * bn + ext_tiles(r, ntt, bn, xc) * xc;
}

// A pair's small tile (s tokens): a group of n rows gives its last min(n,
// s) rows to one where the rest's plain and extended columns plus s at
// c4 / 4 of their cost per column (default 5 / 4: a narrower tile's
// weights pass through shared memory once per fewer tokens) come under
// the columns of n rows on plain and extended tiles alone. An expert of
// 30 rows then runs 128 columns instead of 256, one of 311 runs 256 + 128
// instead of 512. Returns the rows the plain and extended tiles take (n:
// no small tile). The host mirrors the rule:
// prefill::packed_launch::pair_split.
__device__ __forceinline__ int pair_big_rows(int n, int bn, int xc, int s, int c4) {
    const int rest = n > s ? n - s : 0;
    return 4 * pair_cols(rest, bn, xc) + c4 * s < 4 * pair_cols(n, bn, xc) ? rest : n;
}

// Fitted token tiles, a chain of launches. A group of n rows takes
// t = ceil(n / hi) tiles of ceil(n / t) tokens rounded up to 8, at least lo
// (then t = ceil(n / lo)): an expert of 520 rows takes 4 tiles of 136
// instead of 5 of 128. Each launch of the chain is one width's
// instantiation and runs the groups of that width. The first launch waits
// for the inputs before it lets the next one start; the others skip that
// wait (the inputs are ready) and wait for their predecessor before they
// exit, so that the next kernel sees every launch's output. A column costs
// about the same at every width (H200, E1: 4 tiles of 144 at 576 rows per
// expert 1,785 us against 5 of 128 1,947; 4 of 160 at 640 rows 1,962
// against 5 of 128 1,978), so the chain gains what the padding cost (the
// host mirrors the rule: prefill::packed_launch::fit_tiles).
__device__ __forceinline__ int2 fit_tiles(int n, int lo, int hi) {
    if (n <= 0) return make_int2(0, lo);
    int t = (n + hi - 1) / hi;
    int w = ((n + t - 1) / t + 7) / 8 * 8;
    if (w < lo) {
        w = lo;
        t = (n + lo - 1) / lo;
    }
    return make_int2(t, w);
}

// Extended token tiles, a pair of launches. With p.ext_cols = X > 0 a
// group of r rows takes ceil(r / (BN + X)) token tiles, the first ones
// extended by X columns until the rows fit. An expert of 520 rows then
// takes two down tiles (256 + 32 and 232 tokens) instead of three (256,
// 256, 8): the weights, the streamed operand, go through shared memory
// twice instead of three times, and the tensor cores run 12.5 % more
// columns on one tile instead of a whole third tile.
//   - The plain instantiation (EXT = 0) runs the plain tiles only. It waits
//     for its inputs before it lets the next launch start.
//   - The extended one (EXT = X) runs the extended tiles only: a second,
//     narrow wgmma on the same weight fragments and a second token box. It
//     is launched right after the plain one and starts on the SMs the plain
//     tiles leave (its inputs are ready: the plain launch waited for them);
//     it waits for the plain launch at its end, so that the next kernel
//     sees both outputs.
// With p.pair_small > 0 a third launch (an S-token instantiation, small_run
// = 1) runs the small tiles (pair_big_rows); the host puts it first, so
// that its few tiles do not run alone at the end (any order works: the
// first launch waits for the inputs, each later one for its predecessor).
// Each instantiation keeps one k loop: with both widths in one kernel (a
// branch per tile) ptxas serialized the wgmmas (C7512), and with a
// predicated second wgmma too (C7520).
template <int BN, int STAGES, int KIND, int OUT, int EXT>
__device__ __forceinline__ void gemm_packed_body(const TensorMap& tx, const TensorMap& tx_ext, const PackedParams& p) {
#ifdef WDMOE_SM90A
    static_assert(EXT == 0 || OUT == PO_H16, "extended tiles store through the fp16 pair epilogue");
    // A launch of a chain of fitted widths (no extended tiles then).
    const bool fit = EXT == 0 && p.fit_hi > 0 && p.fit_lo > 0;
    // Columns of the extended tiles; 0: every tile plain (one launch).
    const int xc = EXT > 0 ? EXT : (p.ext_cols > 0 && !fit ? p.ext_cols : 0);
    // A later launch of a pair or a chain: its inputs are ready (the first
    // launch waited for them), and it waits for its predecessor at its end.
    const bool follower = EXT > 0 || p.follower;
    constexpr int NMAT = KIND == PK_PLAIN ? 1 : 2;    // tiles per unit and k tile
    constexpr int UB = KIND == PK_PAIRS ? 4 : 8;      // units per block (128 rows)
    constexpr int NM = KIND == PK_GATED ? 2 : 1;      // fragments per warp and k16
    constexpr int TILE = 512;                         // bytes of one packed 16x16 tile
    // k16 steps per wgmma group: a whole stage, or half of one where two
    // accumulators of 128 tokens leave too few registers for two stages of
    // fragments (ptxas would serialize the wgmmas, C7512).
    constexpr int KS = (NM == 2 && BN >= 128) ? 2 : BK / 16;
    constexpr int X_BYTES = BN * BK * 2;
    constexpr int XE_BYTES = EXT * BK * 2;  // an extended tile's second token box
    constexpr int W_BYTES = (BK / 16) * UB * NMAT * TILE;
    constexpr int STAGE_BYTES = X_BYTES + XE_BYTES + W_BYTES;
    static_assert(X_BYTES % 1024 == 0 && XE_BYTES % 1024 == 0,
                  "token boxes must keep the 1024-byte swizzle alignment");
    extern __shared__ __align__(1024) uint8_t smem_raw[];
    const uint32_t sbase = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const uint32_t bar_full = sbase + STAGES * STAGE_BYTES;
    const uint32_t bar_empty = bar_full + STAGES * 8;
    // PO_QKV_ROPE: the consumers' exchange of a 32-token batch of the tile
    // (both halves of each head), after the barriers.
    float* const xch = reinterpret_cast<float*>(smem_raw + (bar_empty + STAGES * 8 - smem_u32(smem_raw)));
    const int wg = threadIdx.x / 128;
    const int tid = threadIdx.x % 128;
    const int units = KIND == PK_PAIRS ? p.n_rows / 32 : p.n_rows / 16;
    const int row_blocks = (units + UB - 1) / UB;
    const int groups = p.groups < 1 ? 1 : (p.groups > MAX_GROUPS ? MAX_GROUPS : p.groups);
    const int splits = (OUT == PO_F32_ADD && p.splits > 1) ? p.splits : 1;
    // per group: its first row, its first tile of this launch, and the
    // rows its plain and extended tiles take (big_rows)
    __shared__ int s_row[MAX_GROUPS + 1], s_tile[MAX_GROUPS + 1], s_big[MAX_GROUPS];
    // The tiles' split (stream_k.cuh): whole waves, then (stream-K) each
    // block's range of the last partial wave's k blocks. Producer and
    // consumers walk the same units (SkWalk).
    const int sk_pct = OUT == PO_H16 && p.sk_ws != 0 && splits == 1 && p.n_rows % 128 == 0 ? p.sk : 0;
    __shared__ SkSplit s_split;
    // A pair with small tiles: the rows of a group of n that its plain and
    // extended tiles take (n without small tiles).
    // (fp16 outputs of the down GEMM's kinds only: no cost elsewhere)
    const bool small = OUT == PO_H16 && KIND != PK_GATED && !fit && p.pair_small > 0;
    const bool small_run = small && p.small_run;
    auto big_rows = [&](int n) { return small ? pair_big_rows(n, p.pair_bn, xc, p.pair_small, p.small_cost4) : n; };
    // This launch's token tiles of a group of n rows: (how many, the first
    // one's index in the group). A pair's extended tiles come first in a
    // group, its small tile last; a chain's launch takes the groups of its
    // width.
    // (nb: big_rows(n))
    auto launch_tiles = [&](int n, int nb) {
        if (fit) {
            const int2 tw = fit_tiles(n, p.fit_lo, p.fit_hi);
            return make_int2(tw.y == BN ? tw.x : 0, 0);
        }
        if (small_run) return make_int2(nb < n ? 1 : 0, 0);
        n = nb;
        const int ntt = (n + BN + xc - 1) / (BN + xc);
        const int n_ext = ext_tiles(n, ntt, BN, xc);
        return EXT > 0 ? make_int2(n_ext, 0) : make_int2(ntt - n_ext, n_ext);
    };
    // The offsets come from the previous kernel; the plain launch of a pair
    // also waits for the tokens before the extended one may start.
    if (!follower && (p.dev_rows || xc > 0 || fit)) griddep_wait();
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(bar_full + 8 * s, 1);
            mbar_init(bar_empty + 8 * s, stage_arrivals<true>(8));  // 2 consumer warpgroups x 4 warps
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        int prev = 0, tiles = 0;
        s_row[0] = 0;
        s_tile[0] = 0;
        for (int g = 1; g <= groups; ++g) {
            int r = p.dev_rows ? p.dev_rows[g] : p.row_start[g];
            r = r < prev ? prev : (r > p.max_rows ? p.max_rows : r);
            const int nb = big_rows(r - prev);
            tiles += launch_tiles(r - prev, nb).x * row_blocks * splits;
            s_big[g - 1] = nb;
            s_row[g] = r;
            s_tile[g] = tiles;
            prev = r;
        }
        s_split.init(tiles, p.k / BK, sk_pct);
    }
    __syncthreads();
    const int total_tiles = s_tile[groups];
    griddep_launch_dependents();
    const int kblocks = p.k / BK;
    // tile t -> (group, row block, k slice, token tile), token tile fastest
    // (then the slice), so that the blocks reading the same weights run
    // together; slice sp covers k blocks kb0..kb1. The token tile starts at
    // row x0 of the group (past the extended tiles before it).
    auto map = [&](int t, int& g, int& rb, int& x0, int& kb0, int& kb1) {
        g = 0;
        while (g + 1 < groups && t >= s_tile[g + 1]) ++g;
        const int local = t - s_tile[g];
        const int n = s_row[g + 1] - s_row[g];
        // (not 0 tiles: t lies in the group)
        const int nb = small ? s_big[g] : n;
        const int2 lt = launch_tiles(n, nb);
        const int tt = local % lt.x + lt.y;
        // past the extended tiles before it (a plain tile: all n_ext = lt.y;
        // a small tile: past the group's plain and extended tiles)
        x0 = small_run ? nb : tt * BN + (EXT > 0 ? tt : lt.y) * xc;
        const int rest = local / lt.x;
        const int sp = rest % splits;
        rb = rest / splits;
        kb0 = (int)((long long)kblocks * sp / splits);
        kb1 = (int)((long long)kblocks * (sp + 1) / splits);
    };

    if (wg == 0) {
        setmaxnreg_dec<40>();
        if (tid == 0) {
            if (!follower) griddep_wait();  // (a follower's inputs are ready)
            int stage = 0;
            uint32_t phase = 0;
            SkWalk walk;
            int t, ukb0, ukb1;
            bool piece;
            while (walk.template next<OUT == PO_H16>(s_split, total_tiles, t, ukb0, ukb1, piece)) {
                int g, rb, x0, kb0, kb1;
                map(t, g, rb, x0, kb0, kb1);
                if (OUT == PO_H16 && piece) kb0 = ukb0, kb1 = ukb1;
                const int xrow = s_row[g] + x0;
                const int u0 = rb * UB;
                const int ub = units - u0 < UB ? units - u0 : UB;
                const uint4* w = reinterpret_cast<const uint4*>(p.w[g]);
                for (int kb = kb0; kb < kb1; ++kb) {
                    mbar_wait(bar_empty + 8 * stage, phase ^ 1);
                    const uint32_t full = bar_full + 8 * stage;
                    const uint32_t sx = sbase + stage * STAGE_BYTES;
                    const uint32_t sw = sx + X_BYTES + XE_BYTES;
                    mbar_expect_tx(full, X_BYTES + XE_BYTES + (BK / 16) * ub * NMAT * TILE);
                    tma_load_2d(sx, &tx, kb * BK, xrow, full);
                    if (EXT > 0) tma_load_2d(sx + X_BYTES, &tx_ext, kb * BK, xrow + BN, full);
                    if (p.kmajor) {
                        // One run per k tile: the block's units, contiguous.
                        for (int kk = 0; kk < BK / 16; ++kk)
                            bulk_load(sw + kk * UB * NMAT * TILE,
                                      w + (long long)(kb * 4 + kk) * p.kt_stride + (long long)u0 * p.unit_stride,
                                      ub * NMAT * TILE, full);
                    } else {
                        // One run per unit: its 4 k tiles, contiguous.
                        for (int u = 0; u < ub; ++u)
                            bulk_load(sw + u * (BK / 16) * NMAT * TILE,
                                      w + (long long)(u0 + u) * p.unit_stride + (long long)(kb * 4) * p.kt_stride,
                                      (BK / 16) * NMAT * TILE, full);
                    }
                    if (++stage == STAGES) {
                        stage = 0;
                        phase ^= 1;
                    }
                }
            }
        }
    } else {
        setmaxnreg_inc<232>();
        const int c = wg - 1;  // rows c*64 .. c*64+63 of the block
        const int warp = tid / 32, lane = tid % 32;
        const int t16 = c * 4 + warp;  // this warp's 16-row tile in the block
        // Byte offset of fragment (kk, matrix m) of this warp in a stage's weights.
        const int unit = KIND == PK_PAIRS ? t16 >> 1 : t16;
        auto frag_off = [&](int kk, int m) {
            const int mat = KIND == PK_PAIRS ? (t16 & 1) : m;
            const int run = p.kmajor ? (kk * UB + unit) : (unit * (BK / 16) + kk);
            return (run * NMAT + mat) * TILE + lane * 16;
        };
        constexpr int EA = EXT > 0 ? EXT / 2 : 1;  // extension accumulators per matrix
        float d0[BN / 2], d1[NM == 2 ? BN / 2 : 1];
        float e0[EA], e1[NM == 2 ? EA : 1];
        uint4 a0[BK / 16][NM], a1[BK / 16][NM];
        int stage = 0;
        uint32_t phase = 0;
        SkWalk walk;
        int t, ukb0, ukb1;
        bool piece;
        while (walk.template next<OUT == PO_H16>(s_split, total_tiles, t, ukb0, ukb1, piece)) {
            int g, rb, x0, kb0, kb1;
            map(t, g, rb, x0, kb0, kb1);
            if (OUT == PO_H16 && piece) kb0 = ukb0, kb1 = ukb1;
            if (rb * 128 + c * 64 >= p.n_rows) {
                // All 64 rows of this warpgroup lie past the end of W.
                pass_stages<STAGES, true>(kb1 - kb0, bar_full, bar_empty, stage, phase, lane);
                continue;
            }
            int prev = -1;
            // One wgmma group per KS k16 steps (both fragment buffers
            // alternate between groups): a group stays in flight while
            // the next one's fragments load.
            auto issue = [&](uint4 (&a)[BK / 16][NM], uint32_t sx, uint32_t sw, int kb, int h) {
#pragma unroll
                for (int kk = h * KS; kk < h * KS + KS; ++kk)
#pragma unroll
                    for (int m = 0; m < NM; ++m) a[kk][m] = lds128(sw + frag_off(kk, m));
                wgmma_fence();
                const uint64_t db = smem_desc(sx);
#pragma unroll
                for (int kk = h * KS; kk < h * KS + KS; ++kk) {
                    const int acc = (kb > kb0 || kk > 0) ? 1 : 0;
                    // +32 bytes along k per step of 16 (descriptor units of 16 bytes)
                    RegAcc<BN>::mma(d0, a[kk][0], db + 2 * kk, acc);
                    if constexpr (NM == 2) RegAcc<BN>::mma(d1, a[kk][NM - 1], db + 2 * kk, acc);
                    if constexpr (EXT > 0) {
                        using X = RegAcc<EXT>;
                        const uint64_t de = smem_desc(sx + X_BYTES);
                        X::mma(e0, a[kk][0], de + 2 * kk, acc);
                        if constexpr (NM == 2) X::mma(e1, a[kk][NM - 1], de + 2 * kk, acc);
                    }
                }
                wgmma_commit();
                wgmma_wait<1>();  // the previous group (and its fragments) is done
                // ... and with it the previous stage's last group.
                if (h == 0 && prev >= 0) stage_release<true>(bar_empty + 8 * prev, lane);
            };
            auto run_stage = [&](uint4 (&a)[BK / 16][NM], int kb) {
                mbar_wait(bar_full + 8 * stage, phase);
                const uint32_t sx = sbase + stage * STAGE_BYTES;
                const uint32_t sw = sx + X_BYTES + XE_BYTES;
                if constexpr (KS == BK / 16) {
                    issue(a, sx, sw, kb, 0);
                } else {
                    issue(a0, sx, sw, kb, 0);
                    issue(a1, sx, sw, kb, 1);
                }
                prev = stage;
                if (++stage == STAGES) {
                    stage = 0;
                    phase ^= 1;
                }
            };
            int kb = kb0;
            for (; kb + 1 < kb1; kb += 2) {
                run_stage(a0, kb);
                run_stage(a1, kb + 1);
            }
            if (kb < kb1) run_stage(a0, kb);
            wgmma_wait<0>();
            if (prev >= 0) stage_release<true>(bar_empty + 8 * prev, lane);
            if constexpr (OUT == PO_H16) {
                // A piece of a split tile (stream_k.cuh): the block that
                // holds the tile's first k blocks adds the later pieces and
                // runs the epilogue; the others leave theirs in the
                // workspace and go on.
                if (piece) {
                    static_assert(NM * (BN + EXT) / 8 <= SK_CHUNKS, "a workspace slot holds the accumulators");
                    const int2 h = s_split.holders(t - s_split.dp);
                    const int ctid = threadIdx.x - 128;
                    float4* ws = reinterpret_cast<float4*>(p.sk_ws);
                    int* flags = reinterpret_cast<int*>(p.sk_sem);
                    auto sync = [] { consumer_sync(); };
                    // Every float4 chunk of the accumulators through f(value, chunk).
                    auto each4 = [&](auto&& f) {
                        chunks4(d0, 0, f);
                        if constexpr (NM == 2) chunks4(d1, BN / 8, f);
                        if constexpr (EXT > 0) {
                            chunks4(e0, NM * BN / 8, f);
                            if constexpr (NM == 2) chunks4(e1, NM * BN / 8 + EA / 4, f);
                        }
                    };
                    if ((int)blockIdx.x != h.x) {
                        // A later piece: to the workspace; the head's block stores the tile.
                        each4([&](float4 v, int c) {
                            sk_put(ws, c, ctid, v);
                            return v;
                        });
                        sk_publish(flags, ctid, sync);
                        continue;
                    }
                    sk_wait(h, flags, ctid, sync);
                    for (int bb = h.x + 1; bb <= h.y; ++bb)
                        each4([&](float4 v, int c) { return sk_add(ws, bb, c, ctid, v); });
                    sk_reset(h, flags, ctid, sync);
                }
            }

            // Epilogue from the accumulators: per 8-token block j, rows
            // r, r+8 (features) by tokens 8j + 2q + {0,1}.
            // The rows this tile's group stores: its plain and extended
            // tiles' where a small tile takes the rest.
            const int rows_g = small && !small_run ? s_big[g] : s_row[g + 1] - s_row[g];
            if constexpr (OUT == PO_QKV_ROPE) {
                // The block's 128 rows are one head.
                const int head = rb;
                const int feat = t16 * 16 + lane / 4;  // + 8h
                const int q2 = (lane % 4) * 2;
                // q and v leave unrotated, straight from the accumulators:
                // each token's 8 features (f, f + 8 of the thread's two
                // rows) at out + (row0 + token) * stride, converted by cvt.
                auto store_rows = [&](auto* out, long long row0, long long stride, auto cvt) {
#pragma unroll
                    for (int jb = 0; jb < BN / 8; ++jb)
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            const int col = x0 + 8 * jb + q2 + e;  // token within the group
                            if (col >= rows_g) continue;
                            auto* r = out + (row0 + s_row[g] + col) * stride;
#pragma unroll
                            for (int h = 0; h < 2; ++h) r[8 * h] = cvt(d0[4 * jb + 2 * h + e]);
                        }
                };
                if (head < p.heads) {
                    // q: fp32 (the prefill attention rotates it as it loads
                    // it: AttnParams::rope_q); 32 bytes of 4 tokens a store.
                    store_rows(reinterpret_cast<float*>(p.q_out) + (long long)head * 128 + feat, 0,
                               (long long)p.heads * 128, [](float x) { return x; });
                    continue;
                }
                if (head >= p.heads + p.kv_heads) {
                    // v: fp16 into the cache at positions start + token.
                    store_rows(reinterpret_cast<__half*>(p.v_cache) +
                                   (long long)(head - p.heads - p.kv_heads) * p.max_seq * 128 + feat,
                               p.start, 128, [](float x) { return __float2half_rn(x); });
                    continue;
                }
                // k: RoPE pairs feature i (warpgroup 0) with i + 64
                // (warpgroup 1), so each 32-token batch goes through shared
                // memory (token-major, 132 floats a token: the stores from
                // the fragments are conflict-free), then every consumer
                // thread takes one pair of 4 tokens, rotates it and stores
                // coalesced fp16 rows of the cache.
                constexpr int TB = 32, XS = 132;
                const int ctid = threadIdx.x - 128;  // 0..255 over both consumer warpgroups
                const float2* rope = reinterpret_cast<const float2*>(p.rope);
                const int j = ctid % 64;  // this thread's pair
                // (cos, sin) of this thread's pair at the 8 tokens it takes
                // of batch bb (tokens past the group clamped to its last):
                // loaded a batch ahead, so that their latency hides behind
                // the previous batch's stores.
                auto load_cs = [&](int bb, float2 (&c)[TB / 4]) {
#pragma unroll
                    for (int it = 0; it < TB / 4; ++it) {
                        int col = x0 + bb * TB + it * 4 + ctid / 64;
                        col = col < rows_g ? col : rows_g - 1;
                        c[it] = __ldg(&rope[(long long)(p.start + s_row[g] + col) * 64 + j]);
                    }
                };
                float2 cs[TB / 4];
                load_cs(0, cs);
                // (unrolled: the accumulators are indexed by b)
#pragma unroll
                for (int b = 0; b < BN / TB; ++b) {
                    if (x0 + b * TB >= rows_g) break;  // (uniform in the block)
#pragma unroll
                    for (int jj = 0; jj < TB / 8; ++jj)
#pragma unroll
                        for (int h = 0; h < 2; ++h)
#pragma unroll
                            for (int e = 0; e < 2; ++e)
                                xch[(8 * jj + q2 + e) * XS + feat + 8 * h] = d0[4 * (b * (TB / 8) + jj) + 2 * h + e];
                    // (after the stash: this batch's accumulators are free)
                    const bool more = b + 1 < BN / TB && x0 + (b + 1) * TB < rows_g;
                    float2 cn[TB / 4];
                    if (more) load_cs(b + 1, cn);
                    consumer_sync();
#pragma unroll
                    for (int it = 0; it < TB / 4; ++it) {
                        const int tl = it * 4 + ctid / 64;
                        const int col = x0 + b * TB + tl;  // token within the group
                        if (col < rows_g) {
                            const int tok = s_row[g] + col, pos = p.start + tok;
                            const float x1 = xch[tl * XS + j], x2 = xch[tl * XS + j + 64];
                            const float2 y = rope_rotate(x1, x2, cs[it]);
                            __half* k = reinterpret_cast<__half*>(p.k_cache) +
                                        ((long long)(head - p.heads) * p.max_seq + pos) * 128;
                            k[j] = __float2half_rn(y.x);
                            k[j + 64] = __float2half_rn(y.y);
                        }
                    }
                    if (more)
#pragma unroll
                        for (int it = 0; it < TB / 4; ++it) cs[it] = cn[it];
                    consumer_sync();  // the batch is read before the next one lands
                }
                continue;
            }
            if constexpr (OUT == PO_H16) {
                // fp16 pairs of features: lanes l and l^4 hold neighbouring
                // features for the same two tokens; one shuffle swaps
                // halves so that the even-feature lane holds features
                // (f, f+1) of token 2q and the odd one those of token
                // 2q+1, and each stores them as one 4-byte half2 (ldo even).
                const int fi = lane >> 2;
                const int odd = fi & 1;
                const uint32_t sel = odd ? 0x3276u : 0x5410u;
                const int row = rb * 128 + t16 * 16 + (fi & ~1);  // + 8h
                const bool ok0 = row < p.n_rows, ok1 = row + 8 < p.n_rows;
                const long long step = 8LL * p.ldo;
                // Columns [cb, cb + width of acc) of the tile, from
                // accumulators q0 (and q1: the up matrix, gated).
                auto store = [&](auto& q0, auto& q1, int cb) {
                    constexpr int NB = sizeof(q0) / sizeof(float) / 4;  // 8-token blocks
                    const int col0 = cb + (lane % 4) * 2 + odd;         // + 8j, token within the group
                    __half* base = reinterpret_cast<__half*>(p.out) + (long long)(s_row[g] + col0) * p.ldo + row;
#pragma unroll
                    for (int j = 0; j < NB; ++j) {
                        uint32_t w[2];
#pragma unroll
                        for (int h = 0; h < 2; ++h) {
                            float o0 = q0[4 * j + 2 * h], o1 = q0[4 * j + 2 * h + 1];
                            if constexpr (NM == 2) {
                                // silu(g) u for both tokens with one reciprocal:
                                // 1/a = b/(ab), 1/b = a/(ab); g >= -40 keeps ab
                                // finite (silu there is 0 in fp16 anyway).
                                const float a = 1.0f + __expf(-fmaxf(o0, -40.0f));
                                const float b = 1.0f + __expf(-fmaxf(o1, -40.0f));
                                const float rab = __fdividef(1.0f, a * b);
                                o0 = o0 * (b * rab) * q1[4 * j + 2 * h];
                                o1 = o1 * (a * rab) * q1[4 * j + 2 * h + 1];
                            }
                            const __half2 hv = __floats2half2_rn(o0, o1);
                            const uint32_t mine = *reinterpret_cast<const uint32_t*>(&hv);
                            const uint32_t theirs = __shfl_xor_sync(0xffffffffu, mine, 4);
                            w[h] = __byte_perm(mine, theirs, sel);
                        }
                        if (col0 + 8 * j < rows_g) {
                            uint32_t* o = reinterpret_cast<uint32_t*>(base + j * step);
                            if (ok0) o[0] = w[0];
                            if (ok1) o[4] = w[1];
                        }
                    }
                };
                store(d0, d1, x0);
                if constexpr (EXT > 0) store(e0, e1, x0 + BN);
                continue;
            }
            const int r = rb * 128 + t16 * 16 + lane / 4;
            const int q2 = (lane % 4) * 2;

#pragma unroll
            for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int col = x0 + 8 * j + q2 + e;  // token within the group
                    if (col >= rows_g) continue;
                    const long long orow = (long long)(s_row[g] + col) * p.ldo;
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int row = r + 8 * h;
                        if (row >= p.n_rows) continue;
                        // (fp32 outputs: the projections, one matrix)
                        const float o = d0[4 * j + 2 * h + e];
                        if constexpr (OUT == PO_F32) {
                            reinterpret_cast<float*>(p.out)[orow + row] = o;
                        } else {
                            // k slices of one output add up here.
                            atomicAdd(reinterpret_cast<float*>(p.out) + orow + row, o);
                        }
                    }
                }
            }
        }
    }
    // A follower completes after its predecessor (whose outputs the next
    // kernel reads too).
    if (follower) griddep_wait();
#else
    __trap();  // sm_90a only; the host never launches these elsewhere
#endif
}

// Shared memory: 1024 bytes of alignment slack + the stages + 2 mbarriers
// per stage (the host mirrors it: prefill::packed::packed_smem_bytes).
// Every instantiation takes the second token map (box of EXT rows; the
// host passes the first one again where EXT is 0).
#define PACKED_KERNEL_X(NAME, BN, STAGES, KIND, OUT, EXT)                                                   \
    extern "C" __global__ void __launch_bounds__(384, 1)                                                    \
        NAME(const __grid_constant__ TensorMap tx, const __grid_constant__ TensorMap tx_ext,               \
             const __grid_constant__ PackedParams p) {                                                      \
        gemm_packed_body<BN, STAGES, KIND, OUT, EXT>(tx, tx_ext, p);                                        \
    }
#define PACKED_KERNEL(NAME, BN, STAGES, KIND, OUT) PACKED_KERNEL_X(NAME, BN, STAGES, KIND, OUT, 0)

// Extended tiles (BN + EXT tokens at most) for the FFN down's widest width.
PACKED_KERNEL_X(packed_pairs_n256x32, 256, 4, PK_PAIRS, PO_H16, 32)
PACKED_KERNEL_X(packed_plain_n256x32, 256, 4, PK_PLAIN, PO_H16, 32)

PACKED_KERNEL(packed_gated_n128, 128, 4, PK_GATED, PO_H16)
PACKED_KERNEL(packed_gated_n136, 136, 4, PK_GATED, PO_H16)
PACKED_KERNEL(packed_gated_n144, 144, 4, PK_GATED, PO_H16)
PACKED_KERNEL(packed_gated_n152, 152, 4, PK_GATED, PO_H16)
PACKED_KERNEL(packed_gated_n160, 160, 4, PK_GATED, PO_H16)
PACKED_KERNEL(packed_gated_n64, 64, 5, PK_GATED, PO_H16)
PACKED_KERNEL(packed_gated_n32, 32, 5, PK_GATED, PO_H16)
PACKED_KERNEL(packed_plain_n256, 256, 4, PK_PLAIN, PO_H16)
PACKED_KERNEL(packed_plain_n128, 128, 6, PK_PLAIN, PO_H16)
PACKED_KERNEL(packed_plain_n64, 64, 8, PK_PLAIN, PO_H16)
PACKED_KERNEL(packed_plain_n32, 32, 8, PK_PLAIN, PO_H16)
PACKED_KERNEL(packed_pairs_n256, 256, 4, PK_PAIRS, PO_H16)
PACKED_KERNEL(packed_pairs_n128, 128, 6, PK_PAIRS, PO_H16)
PACKED_KERNEL(packed_pairs_n64, 64, 8, PK_PAIRS, PO_H16)
PACKED_KERNEL(packed_pairs_n32, 32, 8, PK_PAIRS, PO_H16)
// The model's attention projections: q|k|v stored as fp32, o added into the
// fp32 residual.
PACKED_KERNEL(packed_f32_n256, 256, 4, PK_PLAIN, PO_F32)
PACKED_KERNEL(packed_f32_n128, 128, 6, PK_PLAIN, PO_F32)
PACKED_KERNEL(packed_f32_n64, 64, 8, PK_PLAIN, PO_F32)
PACKED_KERNEL(packed_f32_n32, 32, 8, PK_PLAIN, PO_F32)
// The q|k|v projection of prompt chunks with RoPE and the cache write in its
// epilogue (PO_QKV_ROPE; 4 stages at 256 tokens leave room for the 16.5 KB
// exchange).
PACKED_KERNEL(packed_qkv_n256, 256, 4, PK_PLAIN, PO_QKV_ROPE)
PACKED_KERNEL(packed_qkv_n128, 128, 6, PK_PLAIN, PO_QKV_ROPE)
PACKED_KERNEL(packed_qkv_n64, 64, 8, PK_PLAIN, PO_QKV_ROPE)
PACKED_KERNEL(packed_qkv_n32, 32, 8, PK_PLAIN, PO_QKV_ROPE)
PACKED_KERNEL(packed_f32add_n128, 128, 6, PK_PLAIN, PO_F32_ADD)
PACKED_KERNEL(packed_f32add_n64, 64, 8, PK_PLAIN, PO_F32_ADD)
PACKED_KERNEL(packed_f32add_n32, 32, 8, PK_PLAIN, PO_F32_ADD)
