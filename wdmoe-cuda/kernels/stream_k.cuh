// Stream-K for the last partial wave of the packed GEMM (gemm_packed.cuh):
// which tiles and k blocks a block runs, and how the pieces of a split tile
// meet. Included by gemm_packed.cuh (after hopper.cuh).
//
// A persistent launch of G blocks over T tiles used to run tiles b, b + G,
// ... in every block b: with T = W G + R (0 < R < G) its last wave holds R
// tiles and G - R multiprocessors idle for a whole tile. At a 2,048-token
// prompt that is up to a down tile (~190 us) per launch of the
// plain/extended pair and ~60 us per launch of gate/up's chain of fitted
// widths, because each launch of a pair or a chain starts on the
// multiprocessors its predecessor's last wave leaves. With stream-K on
// (PackedParams::sk: a share of G; the last wave is split only while R is
// at most that share, because a split tile costs each piece a pipeline
// fill and a workspace round trip, and the token tiles that share an
// expert's weights then read them at different times, from DRAM twice:
// a nearly full wave loses more that way than its tail costs, BENCHMARKS.md
// runs G1-G12):
//   - the first W G tiles run whole, as before (b + i G for i < W: blocks
//     that read the same weights still run together);
//   - the k blocks of the last R tiles (R K of them, K = k / 64) are cut
//     into equal ranges, one per block (at least SK_MIN_ITERS k blocks a
//     range: the first min(G, R K / SK_MIN_ITERS) blocks take them), so
//     every block ends at about the same time. A range is shorter than a
//     tile, so a block has at most two pieces: the end of one tile and the
//     start of the next.
// A tile cut into pieces meets in fp32, in the block that holds its first
// k blocks (the tile's "head": that block's last unit, so it is usually
// the last to get there). Each later piece is the first unit of its block:
// the block stores its accumulators in its slot of the workspace and
// raises the slot's flag. The head's block waits for the later pieces'
// flags, adds them to its accumulators in k order (the same bits whatever
// the timing), lowers the flags for the next launch and runs the
// epilogue. A later piece waits for nothing, and every block of the launch
// has started before any later launch's block can (each executes
// griddepcontrol.launch_dependents first), so the head's wait cannot
// deadlock. The workspace and the flags belong to the host's
// `prefill::stream_k` (two regions, for the overlapping launches of a
// chain); a split tile differs from a whole one only in the order of its
// fp32 additions.
#pragma once

// Least k blocks (of 64) in a stream-K range: shorter pieces cost a
// pipeline fill and a workspace round trip for little work.
#define SK_MIN_ITERS 4
// Float4 chunks of accumulators per consumer thread that a slot holds: the
// widest instantiation (gated 160 tokens: 2 x 80 floats).
#define SK_CHUNKS 40

// The launch's split (the same in every thread; kept in shared memory by
// the caller): whole waves, the split tiles' k blocks and the blocks that
// share them.
// (G: the launch's blocks, gridDim.x.)
struct SkSplit {
    int K;           // k blocks per tile
    int waves, dp;   // whole waves (tiles b + i G, i < waves); tiles before the split ones
    int sk_blocks;   // blocks with a range of the split tiles' k blocks (the first ones)
    int iters;       // k blocks of the split tiles (< G K)
    int on;          // 0: every tile whole (t = b, b + G, ... < the launch's tiles)

    // Of `total` tiles; max_pct: split the last wave only while it holds
    // at most that share of G tiles (0: never).
    __device__ __forceinline__ void init(int total, int kblocks, int max_pct) {
        const int G = gridDim.x;
        K = kblocks;
        const int R = total % G;
        on = R > 0 && R * 100 <= G * max_pct;
        waves = total / G;
        dp = waves * G;
        iters = R * K;
        int nb = iters / SK_MIN_ITERS;
        sk_blocks = nb < 1 ? 1 : (nb > G ? G : nb);
    }
    // First k block (of the split tiles') of block bb's range.
    // (32-bit arithmetic throughout: bb iters and (x + 1) sk_blocks stay
    // below G^2 K, which the host keeps under 2^30 (stream_k_share); a 64-bit
    // division is a call, which would spill the accumulators around it.)
    __device__ __forceinline__ int start(int bb) const { return bb * iters / sk_blocks; }
    // The block whose range holds k block x of the split tiles.
    __device__ __forceinline__ int owner(int x) const {
        return ((x + 1) * sk_blocks + iters - 1) / iters - 1;
    }
    // Blocks that hold pieces of split tile s: [first, last].
    __device__ __forceinline__ int2 holders(int s) const { return make_int2(owner(s * K), owner((s + 1) * K - 1)); }
};

// A thread's walk over its block's units (producer and consumers each keep
// one): tile t, its k blocks [kb0, kb1), and whether it is a piece of a
// split tile (else the whole tile: kb0, kb1 are left to the caller, whose
// map gives all K k blocks or its own slice of k). Whole tiles are b, b +
// G, ... < total, then (stream-K on, SK true) the block's range of the
// split tiles' k blocks.
struct SkWalk {
    int i = 0;   // whole tiles walked
    int it = -1; // next k block of this block's range (-1: not started)
    template <bool SK>
    __device__ __forceinline__ bool next(const SkSplit& sp, int total, int& t, int& kb0, int& kb1, bool& piece) {
        piece = false;
        if (!SK || !sp.on || i < sp.waves) {
            // (kb0, kb1 untouched: the caller's own split of k, all K here)
            t = blockIdx.x + i * gridDim.x;
            ++i;
            return t < total;
        }
        kb0 = 0;
        kb1 = sp.K;
        const int b = blockIdx.x;
        if (b >= sp.sk_blocks) return false;
        if (it < 0) it = sp.start(b);
        const int end = sp.start(b + 1);
        if (it >= end) return false;
        const int s = it / sp.K;
        kb0 = it - s * sp.K;
        kb1 = min(sp.K, kb0 + (end - it));
        t = sp.dp + s;
        const int2 h = sp.holders(s);
        piece = h.x != h.y;
        it += kb1 - kb0;
        return true;
    }
};

#ifdef WDMOE_SM90A
namespace {
__device__ __forceinline__ int ld_acquire_gpu(const int* p) {
    int v;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_release_gpu(int* p, int v) {
    asm volatile("st.release.gpu.global.s32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
}  // namespace

// The meeting of a split tile's pieces (above), for the 256 consumer
// threads of a block (ctid 0..255; `sync` is their named barrier). A later
// piece: sk_put each float4 chunk of its accumulators into the block's
// slot, then sk_publish. The head: sk_wait for the later pieces, sk_add
// each one's chunks in k order, then sk_reset. (Steps rather than one
// function over the accumulators: they stay in registers only while every
// index into them is a constant.)
constexpr int SK_SLOT = SK_CHUNKS * 256;  // float4 a workspace slot (one per block)

__device__ __forceinline__ void sk_put(float4* ws, int c, int ctid, float4 v) {
    __stcg(ws + (int)blockIdx.x * SK_SLOT + c * 256 + ctid, v);
}
template <typename Sync>
__device__ __forceinline__ void sk_publish(int* flags, int ctid, Sync sync) {
    sync();  // every thread stored its chunks
    if (ctid == 0) {
        __threadfence();
        st_release_gpu(flags + blockIdx.x, 1);
    }
}
template <typename Sync>
__device__ __forceinline__ void sk_wait(int2 h, const int* flags, int ctid, Sync sync) {
    if (ctid == 0)
        for (int bb = h.x + 1; bb <= h.y; ++bb)
            while (ld_acquire_gpu(flags + bb) == 0) {
            }
    sync();
}
__device__ __forceinline__ float4 sk_add(const float4* ws, int bb, int c, int ctid, float4 v) {
    const float4 p = __ldcg(ws + bb * SK_SLOT + c * 256 + ctid);
    v.x += p.x;
    v.y += p.y;
    v.z += p.z;
    v.w += p.w;
    return v;
}
template <typename Sync>
__device__ __forceinline__ void sk_reset(int2 h, int* flags, int ctid, Sync sync) {
    sync();  // every thread read the slots
    if (ctid == 0) {
        for (int bb = h.x + 1; bb <= h.y; ++bb) flags[bb] = 0;
        __threadfence();
    }
}
#endif  // WDMOE_SM90A
