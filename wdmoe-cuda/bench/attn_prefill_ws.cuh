// EXPERIMENT, not in the model (bench only; runs L1-L4 of 2026-12-02 in
// BENCHMARKS.md: 0.112-0.118 ms at 2,048 tokens against 0.088 for
// attn_prefill_h128 in the same call, every variant below correct).
//
// Prefill attention, warp-specialized FA3-style (sm_90a only): the
// algorithm of attn_prefill.cuh's wgmma path (same fragments, masks,
// online softmax and output staging, its helpers reused) with 128 query
// rows a block split over two consumer warpgroups that share every K/V
// tile, a producer warpgroup that fills a ring of STAGES K/V tiles ahead of
// them, the two consumers taking turns on the tensor cores (PINGPONG: one's
// softmax runs while the other's products do) and, with OVERLAP, the
// softmax of S(i) running while P(i - 1) V(i - 1) is in flight. Included by
// attn_prefill_bench.cu after model.cu.
//
// Block (h, y): head h, query tile qt = gridDim.y - 1 - y of 128 rows
// (heaviest first, as attn_prefill.cuh), 384 threads: warps 0-3 consumer
// warpgroup 0 (rows qt·128 + 0..63), warps 4-7 consumer warpgroup 1 (rows
// + 64..127), warps 8-11 the producer. setmaxnreg moves registers from
// the producer (40) to the consumers (232): each SM sub-partition holds
// one warp of each warpgroup and 16,384 registers. Dynamic shared memory
// attn_prefill_ws_smem<HD, BKV, STAGES>(): STAGES (K, V) tile pairs in
// attn_prefill.cuh's 128-byte-swizzle layout; the mbarriers are static.
//
// Producer: producer warp w owns stage w (STAGES = 4) and fills it with
// tiles w, w + 4, ... of the block's key range once both warpgroups
// released what it held (empty barrier: one arrive per consumer warp after
// its products on the tile completed); cp.async of 16-byte pieces, keys
// past the block's last query zero-filled (the cache past start + T may
// hold anything, NaN included). A tile is published (full barrier: one
// arrive per lane of the warp) once the lane's copies completed
// (cp.async.wait_group) and were fenced to the async proxy. (The first
// version, all 128 producer threads on every tile, published one tile
// behind the issue, 3 stages: 0.098 ms under ncu, also slower.)
//
// Consumer warpgroup w, phase i = 0..tiles (tiles + 1 phases):
//   wait tile i (full), wait its turn (named barrier 1 + w),
//   issue S(i) = Q K(i)^T and O += P(i - 1) V(i - 1) as one wgmma group,
//   hand the turn to the other warpgroup (named barrier 2 - w),
//   wait the group(s), release tile i - 1 (empty), softmax of S(i) -> P(i).
// The softmax's rescale of O lands after P(i - 1) V(i - 1) and before
// P(i) V(i), as the online softmax needs. A warpgroup that sees nothing of
// a tile (rows past T, keys past its last row or before its window) skips
// its products but keeps the turn protocol and the releases. Warpgroup 1
// starts by handing the turn to 0 and skips its last hand-over, so each
// named barrier completes exactly as often as it is waited on.
#pragma once

// Dynamic shared memory: the stages and 1024 bytes of alignment slack.
template <int HD, int BKV, int STAGES>
constexpr int attn_prefill_ws_smem() {
    return STAGES * 2 * (HD / 64) * BKV * 128 + 1024;
}

#define ATTN_WS_PRODUCER_REGS 40
#define ATTN_WS_CONSUMER_REGS 232

#ifdef ATTN_PREFILL_WGMMA

namespace {

__device__ __forceinline__ void attn_bar_sync(int id, int threads) {
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void attn_bar_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace

template <int HD, int BKV, int STAGES, bool PINGPONG = true, bool OVERLAP = true>
__device__ __forceinline__ void attn_prefill_ws_body(const AttnParams& p) {
    constexpr int BQ = 128, NC = 256;       // query rows; consumer threads
    constexpr int HALF = BKV * 128;         // bytes of one 64-column half of a tile
    constexpr int TILE = (HD / 64) * HALF;  // bytes of one K or V tile
    constexpr int KP = HD + 8;              // pitch (halfs) of the output staging
    static_assert(HD % 64 == 0 && BKV == 64, "wgmma path shapes");
    static_assert(STAGES == 4, "one stage per producer warp");
    static_assert(BQ * KP * 2 <= STAGES * 2 * TILE, "the output staging reuses the stages");
    extern __shared__ __align__(128) unsigned char attn_ws_raw[];
    __shared__ __align__(8) uint64_t attn_ws_bars[2 * STAGES];  // full[s], empty[s]
    const uint32_t raw_u32 = smem_addr(attn_ws_raw);
    const uint32_t sbase = (raw_u32 + 1023) & ~1023u;
    unsigned char* sgen = attn_ws_raw + (sbase - raw_u32);
    const uint32_t full0 = smem_addr(&attn_ws_bars[0]), empty0 = smem_addr(&attn_ws_bars[STAGES]);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(full0 + 8 * s, 32);        // the lanes of the stage's producer warp
            mbar_init(empty0 + 8 * s, NC / 32);  // one arrive per consumer warp
        }
    }
    __syncthreads();
    griddep_wait();
    griddep_launch_dependents();
    const AttnBlock blk(p, BQ, BKV, HD);
    const int h = blk.h, q0 = blk.q0, last = blk.last, first = blk.first, tiles = blk.tiles;

    if (warp >= NC / 32) {
        // Producer warpgroup (its registers go to the consumers): warp pw
        // owns stage pw and fills it with tiles pw, pw + 4, ..., lane l
        // copying piece l % CPR of rows l / CPR + RS·it; each warp waits for
        // its own tile only, so four tiles are in flight.
        setmaxnreg_dec<ATTN_WS_PRODUCER_REGS>();
        constexpr int CPR = HD / 8, RS = 32 / CPR;
        static_assert(32 % CPR == 0 && BKV % RS == 0, "staging shape");
        const __half *kc = blk.kc, *vc = blk.vc;
        const int pw = warp - NC / 32, prow = lane / CPR, piece = lane % CPR;
        auto stage = [&](const __half* src, unsigned char* dst, int kt0) {
            const bool whole = kt0 + BKV - 1 <= last;
#pragma unroll 8
            for (int it = 0; it < BKV / RS; ++it) {
                const int r = prow + it * RS;
                const bool ok = whole || kt0 + r <= last;
                cp_async16(dst + (piece / 8) * HALF + r * 128 + (((piece % 8) ^ (r & 7)) << 4),
                           ok ? src + (long long)(kt0 + r) * HD + piece * 8 : src, ok ? 16 : 0);
            }
        };
        unsigned char* kdst = sgen + (2 * pw) * TILE;
        for (int i = pw, n = 0; i < tiles; i += STAGES, ++n) {
            if (n > 0) mbar_wait(empty0 + 8 * pw, (n - 1) & 1);  // both warpgroups done with tile i - 4
            const int kt0 = first + i * BKV;
            stage(kc, kdst, kt0);
            stage(vc, kdst + TILE, kt0);
            cp_async_commit();
            cp_async_wait<0>();
            fence_proxy_async_smem();
            mbar_arrive(full0 + 8 * pw);
        }
        return;
    }

    // Consumers.
    setmaxnreg_inc<ATTN_WS_CONSUMER_REGS>();
    const int wg = warp >> 2;
    const int g4 = lane >> 2, c2 = (lane & 3) * 2;
    const int gr0 = q0 + wg * 64;     // the warpgroup's first row
    const int wr0 = q0 + warp * 16;   // the warp's first row
    const AttnRows rw(p, wr0, g4, last);
    // The keys any row of the warpgroup sees ([g_lo_min, g_hi_max]).
    const bool g_live = gr0 < p.T;
    const int g_hi_max = min(p.start + gr0 + 63, last);
    const int g_lo_min = p.window > 0 ? p.start + gr0 + 1 - p.window : 0;
    uint32_t qa[HD / 16][4];
    attn_load_q<HD>(p, h, rw.r0, rw.r1, c2, qa);
    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
    const float sl2 = p.scale * 1.4426950408889634f;
    uint32_t pa[BKV / 16][4];
    bool prev_any = false;
    int prev_s = 0;
    if (PINGPONG && wg == 1) attn_bar_arrive(1, NC);  // warpgroup 0 goes first
    for (int i = 0; i <= tiles; ++i) {
        const int s = i % STAGES;
        const int kt0 = first + i * BKV, kt1 = kt0 + BKV - 1;
        const bool any = i < tiles && g_live && kt0 <= g_hi_max && kt1 >= g_lo_min;
        if (i < tiles) mbar_wait(full0 + 8 * s, (i / STAGES) & 1);
        if (PINGPONG) attn_bar_sync(1 + wg, NC);  // this warpgroup's turn
        float sc[BKV / 8][4];
        uint32_t pn[BKV / 16][4];  // P(i), written while P(i - 1) V(i - 1) may still read pa
        float corr0 = 1.f, corr1 = 1.f;
        const bool all = rw.all(kt0, kt1);
        auto softmax = [&]() {
            if (all)
                attn_softmax_p<BKV, false>(sc, kt0, c2, rw, sl2, m0, m1, l0, l1, pn, corr0, corr1);
            else
                attn_softmax_p<BKV, true>(sc, kt0, c2, rw, sl2, m0, m1, l0, l1, pn, corr0, corr1);
        };
        // Each combination in its own branch with its own fence, commits and
        // waits (ptxas serializes wgmma behind a fence it has to insert
        // where one path holds products and another not: C7520). With
        // OVERLAP the softmax of S(i) runs while P(i - 1) V(i - 1) is in
        // flight (two commit groups), O rescaled once that completed.
        const bool turn = PINGPONG && (wg == 0 || i < tiles);
        if (any && prev_any) {
            wgmma_fence();
            attn_wg_qk<HD, BKV>(sc, qa, sbase + (2 * s) * TILE);
            wgmma_commit();
            attn_wg_pv<HD, BKV>(o, pa, sbase + (2 * prev_s + 1) * TILE);
            wgmma_commit();
            if (turn) attn_bar_arrive(2 - wg, NC);  // the other's turn
            if (OVERLAP) {
                wgmma_wait<1>();
                softmax();
                wgmma_wait<0>();
            } else {
                wgmma_wait<0>();
                softmax();
            }
        } else if (any) {
            wgmma_fence();
            attn_wg_qk<HD, BKV>(sc, qa, sbase + (2 * s) * TILE);
            wgmma_commit();
            if (turn) attn_bar_arrive(2 - wg, NC);
            wgmma_wait<0>();
            softmax();
        } else if (prev_any) {
            wgmma_fence();
            attn_wg_pv<HD, BKV>(o, pa, sbase + (2 * prev_s + 1) * TILE);
            wgmma_commit();
            if (turn) attn_bar_arrive(2 - wg, NC);
            wgmma_wait<0>();
        } else if (turn) {
            attn_bar_arrive(2 - wg, NC);
        }
        if (i > 0 && lane == 0) mbar_arrive(empty0 + 8 * prev_s);  // tile i - 1 read (async proxy only)
        if (any) {
            attn_rescale<HD, true>(o, corr0, corr1);
#pragma unroll
            for (int j = 0; j < BKV / 16; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) pa[j][e] = pn[j][e];
        }
        prev_any = any;
        prev_s = s;
    }
    float i0, i1;
    attn_inv_sums(l0, l1, i0, i1);
    attn_bar_sync(3, NC);  // both warpgroups are done with the stages
    __half(*os)[KP] = reinterpret_cast<__half(*)[KP]>(sgen);
    attn_store_out<HD, KP>(p, h, warp, lane, g4, c2, wr0, o, i0, i1, os);
}

#endif  // ATTN_PREFILL_WGMMA

#define ATTN_WS_STAGES 4
#define ATTN_WS_THREADS 384
