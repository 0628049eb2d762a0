// Prefill attention on tensor cores (fp16 in, fp32 accumulate): the causal
// attention of T >= 16 queries of one chunk (positions start..start+T-1)
// over the cache, FlashAttention-2 style. Included by model.cu (after
// AttnParams and griddep_*). Kernels attn_prefill_h64 / attn_prefill_h128
// (at the end): on sm_90a the wgmma path (attn_prefill_wg_body), elsewhere
// (the compute_80 PTX) the mma.sync m16n8k16 path (attn_prefill_body); one
// launch for both: grid (H, ceil(T / 64)), 128 threads, static shared memory
// (33 / 34 KiB at hd 128), <= 168 registers (3 blocks a multiprocessor).
//
// Common to both paths:
// - Block (h, y): head h, query tile qt = gridDim.y - 1 - y of 64 rows, so
//   the heaviest blocks (causal: most keys) of every head start first and
//   the light ones fill the tail of the last wave. 4 warps, 16 rows each.
// - The block walks the keys its queries see ([first, last]: the first
//   query's window start, or 0, to the last query's position) in tiles of
//   64 keys, one K and one V buffer in shared memory filled by cp.async
//   and interleaved (keys past `last` zero-filled, never read):
//     wait K(i), barrier -> issue V(i) -> S = Q K(i)^T, softmax
//     wait V(i), barrier -> issue K(i+1) -> O += P V(i)
//   so that V(i) lands while S is computed and K(i+1) while P V runs (the
//   other two resident blocks fill the gaps).
// - Q's A fragments (m16n8k16 layout, each warp's 16 rows) are converted
//   once from the fp32 queries and held in registers.
// - Each warp classifies each tile for its 16 rows: all keys visible (no
//   mask: the interior of the causal triangle) or not (per-element mask:
//   the diagonal, the window edge, keys past `last`; the mma.sync path also
//   skips the tile when none is visible).
// - Online softmax in fp32 on the raw scores (attn_softmax): p =
//   exp2(s·scale·log2e - m·scale·log2e), one FMA and one ex2 an element;
//   the row sums stay per thread and are summed over the quad at the end;
//   O is rescaled only when some row of the warp has a new maximum (corr
//   exactly 1 otherwise). P is rounded to fp16 as the A operand of O += P V.
// - O / l goes through shared memory (the tile buffers) to 16-byte
//   coalesced stores. Output [T][H hd] fp16, like attn_fwd. A row that saw
//   no key (impossible: every query sees itself) would get 0, not NaN.
// mma.sync path: K and V tiles [64][HD + 8] halfs (padded pitch: the
// ldmatrix rows hit distinct banks); K's B fragments by ldmatrix, V's by
// ldmatrix.trans. wgmma path: see attn_prefill_wg_body below.
// The template parameters beyond the production ones (PIPE 1: K and V
// double-buffered in dynamic shared memory; other warp counts and tile
// sizes) are for bench/attn_prefill_bench.cu.
#pragma once

namespace {

__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte asynchronous copy global -> shared; src_bytes 0 zero-fills.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// 2^x on the special-function unit (ex2.approx.ftz: 2^-inf = +0).
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Four 8x8 fp16 matrices from shared memory (lanes 8i..8i+7 give matrix
// i's row addresses), as mma fragments; _trans transposes each.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

// S = Q K^T of one warp (16 query rows x BKV keys) by mma.sync: B
// fragments of two 8-key n-tiles per ldmatrix.x4 (K rows are the mma's B
// columns) from a [BKV][HD + 8] tile.
template <int HD, int BKV>
__device__ __forceinline__ void attn_qk_mma(float (&s)[BKV / 8][4], const uint32_t (&qa)[HD / 16][4],
                                            const __half (*ks)[HD + 8], int lane) {
#pragma unroll
    for (int nt = 0; nt < BKV / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
    const int krow = (lane & 7) + ((lane >> 4) << 3);
    const int kcol = ((lane >> 3) & 1) * 8;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
#pragma unroll
        for (int np = 0; np < BKV / 16; ++np) {
            uint32_t r[4];
            ldmatrix_x4(r, &ks[np * 16 + krow][kk * 16 + kcol]);
            mma_16816(s[2 * np], qa[kk], r[0], r[1]);
            mma_16816(s[2 * np + 1], qa[kk], r[2], r[3]);
        }
    }
}

// A block's share of the work: head h (kv head kvh, its cache rows kc /
// vc), query tile qt = gridDim.y - 1 - blockIdx.y of BQ rows from chunk row
// q0 (the heaviest tiles of every head first), and the keys its queries
// see: [first, last], from the first query's window start (or 0) to the
// last query's position, in `tiles` tiles of BKV keys.
struct AttnBlock {
    int h, q0, last, first, tiles;
    const __half* kc;
    const __half* vc;
    __device__ __forceinline__ AttnBlock(const AttnParams& p, int BQ, int BKV, int HD) {
        h = blockIdx.x;
        const int kvh = h / (p.H / p.KVH);
        q0 = (gridDim.y - 1 - blockIdx.y) * BQ;
        last = p.start + min(q0 + BQ, p.T) - 1;
        first = p.window > 0 ? max(0, p.start + q0 + 1 - p.window) : 0;
        tiles = (last - first) / BKV + 1;
        kc = p.k_cache + (long long)kvh * p.max_seq * HD;
        vc = p.v_cache + (long long)kvh * p.max_seq * HD;
    }
};

// A warp's 16 query rows from chunk row wr0 (this thread's r0 = wr0 + g4
// and r1 = r0 + 8) and the keys they see: the row at position pos sees
// [lo, hi] (hi = pos capped at `last`, the block's last query position, for
// rows past T; lo the window's start or 0); every row of the warp sees
// [w_lo_max, w_hi_min], some row sees [w_lo_min, w_hi_max].
struct AttnRows {
    int r0, r1, lo0, hi0, lo1, hi1, w_lo_min, w_lo_max, w_hi_min, w_hi_max;
    __device__ __forceinline__ AttnRows(const AttnParams& p, int wr0, int g4, int last) {
        r0 = wr0 + g4;
        r1 = r0 + 8;
        const int pos0 = p.start + r0, pos1 = pos0 + 8;
        hi0 = min(pos0, last);
        hi1 = min(pos1, last);
        lo0 = p.window > 0 ? pos0 + 1 - p.window : 0;
        lo1 = p.window > 0 ? pos1 + 1 - p.window : 0;
        w_hi_min = min(p.start + wr0, last);
        w_hi_max = min(p.start + wr0 + 15, last);
        w_lo_min = p.window > 0 ? p.start + wr0 + 1 - p.window : 0;
        w_lo_max = p.window > 0 ? p.start + wr0 + 16 - p.window : 0;
    }
    // Whether every row of the warp sees every key of [kt0, kt1] (no mask).
    __device__ __forceinline__ bool all(int kt0, int kt1) const { return kt1 <= w_hi_min && kt0 >= w_lo_max; }
};

// The softmax step of one warp's tile of scores s (C fragments: rows g4 and
// g4 + 8, keys kt0 + 8 nt + c2 + {0, 1}) but O's rescale: the mask (MASK:
// key kpos is seen by the row at pos when lo <= kpos <= hi), the
// online-softmax update of m and l, P (fp16 A fragments) for P V, and the
// rows' corrections (corr0, corr1) for attn_rescale (the warp-specialized
// experiment rescales only once the previous P V it overlaps completed).
template <int BKV, bool MASK>
__device__ __forceinline__ void attn_softmax_p(float (&s)[BKV / 8][4], int kt0, int c2, const AttnRows& rw, float sl2,
                                               float& m0, float& m1, float& l0, float& l1,
                                               uint32_t (&pa)[BKV / 16][4], float& corr0, float& corr1) {
    if (MASK) {
#pragma unroll
        for (int nt = 0; nt < BKV / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int kpos = kt0 + nt * 8 + c2 + e;
                if (kpos < rw.lo0 || kpos > rw.hi0) s[nt][e] = -INFINITY;
                if (kpos < rw.lo1 || kpos > rw.hi1) s[nt][2 + e] = -INFINITY;
            }
        }
    }
    // Row maxima (a tree, for latency) with the running maximum.
    float t0[BKV / 8], t1[BKV / 8];
#pragma unroll
    for (int nt = 0; nt < BKV / 8; ++nt) {
        t0[nt] = fmaxf(s[nt][0], s[nt][1]);
        t1[nt] = fmaxf(s[nt][2], s[nt][3]);
    }
#pragma unroll
    for (int w = BKV / 16; w >= 1; w /= 2) {
#pragma unroll
        for (int j = 0; j < w; ++j) {
            t0[j] = fmaxf(t0[j], t0[j + w]);
            t1[j] = fmaxf(t1[j], t1[j + w]);
        }
    }
    float mx0 = fmaxf(m0, t0[0]), mx1 = fmaxf(m1, t1[0]);
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    // Exponents against the scaled new maximum; a row with no key yet keeps
    // m = -inf and takes base 0 (p = 0, corr = 0: no NaN). __fmul_rn keeps
    // m·sl2 rounded the same way in corr as in the base (corr exactly 1
    // when the maximum holds).
    const float b0 = mx0 == -INFINITY ? 0.f : __fmul_rn(mx0, sl2);
    const float b1 = mx1 == -INFINITY ? 0.f : __fmul_rn(mx1, sl2);
    corr0 = fast_exp2(__fmul_rn(m0, sl2) - b0);
    corr1 = fast_exp2(__fmul_rn(m1, sl2) - b1);
    m0 = mx0;
    m1 = mx1;
#pragma unroll
    for (int nt = 0; nt < BKV / 8; ++nt) {
        const float p00 = fast_exp2(fmaf(s[nt][0], sl2, -b0)), p01 = fast_exp2(fmaf(s[nt][1], sl2, -b0));
        const float p10 = fast_exp2(fmaf(s[nt][2], sl2, -b1)), p11 = fast_exp2(fmaf(s[nt][3], sl2, -b1));
        t0[nt] = p00 + p01;
        t1[nt] = p10 + p11;
        // C fragment of n-tile nt -> A fragment of k chunk nt/2.
        pa[nt / 2][(nt & 1) * 2 + 0] = pack_half2(p00, p01);
        pa[nt / 2][(nt & 1) * 2 + 1] = pack_half2(p10, p11);
    }
#pragma unroll
    for (int w = BKV / 16; w >= 1; w /= 2) {
#pragma unroll
        for (int j = 0; j < w; ++j) {
            t0[j] += t0[j + w];
            t1[j] += t1[j + w];
        }
    }
    l0 = l0 * corr0 + t0[0];
    l1 = l1 * corr1 + t1[0];
}

// O *= corr, skipped when no row of the warp has a new maximum (then every
// corr is exactly 1).
template <int HD, bool SKIP_RESCALE>
__device__ __forceinline__ void attn_rescale(float (&o)[HD / 8][4], float corr0, float corr1) {
    if (!SKIP_RESCALE || __any_sync(0xffffffffu, corr0 != 1.f || corr1 != 1.f)) {
#pragma unroll
        for (int dt = 0; dt < HD / 8; ++dt) {
            o[dt][0] *= corr0;
            o[dt][1] *= corr0;
            o[dt][2] *= corr1;
            o[dt][3] *= corr1;
        }
    }
}

// The whole softmax step: attn_softmax_p, then O rescaled.
template <int HD, int BKV, bool MASK, bool SKIP_RESCALE>
__device__ __forceinline__ void attn_softmax(float (&s)[BKV / 8][4], int kt0, int c2, const AttnRows& rw, float sl2,
                                             float& m0, float& m1, float& l0, float& l1,
                                             float (&o)[HD / 8][4], uint32_t (&pa)[BKV / 16][4]) {
    float corr0, corr1;
    attn_softmax_p<BKV, MASK>(s, kt0, c2, rw, sl2, m0, m1, l0, l1, pa, corr0, corr1);
    attn_rescale<HD, SKIP_RESCALE>(o, corr0, corr1);
}

// After the last tile: the row sums l (per thread) summed over the quad, as
// the factors 1 / l that scale O (0 for a row that saw nothing).
__device__ __forceinline__ void attn_inv_sums(float l0, float l1, float& i0, float& i1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    i0 = l0 > 0.f ? 1.0f / l0 : 0.f;
    i1 = l1 > 0.f ? 1.0f / l1 : 0.f;
}

// Q's A fragments (16 rows x HD) of this thread's rows r0 and r0 + 8 (chunk
// indices; rows past T zero) from the fp32 q of head h, rotated (RoPE,
// rope_rotate: the bits rope_kv and the q|k|v epilogue give) here where
// p.rope_q is set. The thread holds both halves of each pair it loads:
// feature i in chunk kk < HD/32 and i + HD/2 in chunk kk + HD/32.
template <int HD>
__device__ __forceinline__ void attn_load_q(const AttnParams& p, int h, int r0, int r1, int c2,
                                            uint32_t (&qa)[HD / 16][4]) {
    const float* qr0 = p.q + ((long long)r0 * p.H + h) * HD;
    const float* qr1 = p.q + ((long long)r1 * p.H + h) * HD;
    const bool v0 = r0 < p.T, v1 = r1 < p.T;
    auto ld = [](bool v, const float* row, int k) {
        return v ? *reinterpret_cast<const float2*>(row + k) : make_float2(0.f, 0.f);
    };
    if (p.rope_q == nullptr) {
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
            const int k = kk * 16 + c2;
            const float2 a = ld(v0, qr0, k), b = ld(v1, qr1, k);
            const float2 c = ld(v0, qr0, k + 8), d = ld(v1, qr1, k + 8);
            qa[kk][0] = pack_half2(a.x, a.y);
            qa[kk][1] = pack_half2(b.x, b.y);
            qa[kk][2] = pack_half2(c.x, c.y);
            qa[kk][3] = pack_half2(d.x, d.y);
        }
        return;
    }
    constexpr int HALF = HD / 2, PK = HD / 32;  // pairs; chunk offset of a pair's second half
    // (cos, sin) of pairs i, i + 1 at a row's position (16 bytes: i even).
    const float4* cs0 = reinterpret_cast<const float4*>(p.rope_q + (long long)(p.start + (v0 ? r0 : 0)) * HALF);
    const float4* cs1 = reinterpret_cast<const float4*>(p.rope_q + (long long)(p.start + (v1 ? r1 : 0)) * HALF);
#pragma unroll
    for (int kk = 0; kk < PK; ++kk) {
        // Features i, i + 1 and i + 8, i + 9 of chunk kk and of chunk kk + PK.
        const int k = kk * 16 + c2;
        float2 x[2][2][2];  // [row][first / second half][+0 / +8]
#pragma unroll
        for (int part = 0; part < 2; ++part) {
            const int kp = k + part * HALF;
            x[0][part][0] = ld(v0, qr0, kp);
            x[1][part][0] = ld(v1, qr1, kp);
            x[0][part][1] = ld(v0, qr0, kp + 8);
            x[1][part][1] = ld(v1, qr1, kp + 8);
        }
#pragma unroll
        for (int row = 0; row < 2; ++row) {
            const float4* cs = row == 0 ? cs0 : cs1;
#pragma unroll
            for (int o = 0; o < 2; ++o) {
                const float4 c = __ldg(cs + (k + 8 * o) / 2);  // pairs k + 8o, k + 8o + 1
                float2& lo = x[row][0][o];
                float2& hi = x[row][1][o];
                const float2 y0 = rope_rotate(lo.x, hi.x, make_float2(c.x, c.y));
                const float2 y1 = rope_rotate(lo.y, hi.y, make_float2(c.z, c.w));
                lo = make_float2(y0.x, y1.x);
                hi = make_float2(y0.y, y1.y);
            }
        }
#pragma unroll
        for (int part = 0; part < 2; ++part) {
            uint32_t(&f)[4] = qa[kk + part * PK];
            f[0] = pack_half2(x[0][part][0].x, x[0][part][0].y);
            f[1] = pack_half2(x[1][part][0].x, x[1][part][0].y);
            f[2] = pack_half2(x[0][part][1].x, x[0][part][1].y);
            f[3] = pack_half2(x[1][part][1].x, x[1][part][1].y);
        }
    }
}

// The warp's 16 output rows (o scaled by 1/l per row) as fp16, staged in
// shared memory `os` (a [rows][KP] view, free after the last tile), then
// stored in 16-byte pieces of whole rows: rows wr0.. < T of head h.
template <int HD, int KP>
__device__ __forceinline__ void attn_store_out(const AttnParams& p, int h, int warp, int lane, int g4, int c2,
                                               int wr0, const float (&o)[HD / 8][4], float i0, float i1,
                                               __half (*os)[KP]) {
#pragma unroll
    for (int dt = 0; dt < HD / 8; ++dt) {
        const int d = dt * 8 + c2;
        *reinterpret_cast<__half2*>(&os[warp * 16 + g4][d]) = __floats2half2_rn(o[dt][0] * i0, o[dt][1] * i0);
        *reinterpret_cast<__half2*>(&os[warp * 16 + g4 + 8][d]) = __floats2half2_rn(o[dt][2] * i1, o[dt][3] * i1);
    }
    __syncwarp();
#pragma unroll
    for (int it = 0; it < HD / 16; ++it) {
        const int c = lane + it * 32;
        const int row = c / (HD / 8), d = (c % (HD / 8)) * 8;
        const int r = wr0 + row;
        if (r < p.T)
            *reinterpret_cast<uint4*>(p.out + ((long long)r * p.H + h) * HD + d) =
                *reinterpret_cast<const uint4*>(&os[warp * 16 + row][d]);
    }
}

}  // namespace

// PIPE 0: one K and one V buffer, interleaved (V(i) lands during S(i), K(i+1)
// during P V(i)); two barriers a tile; static shared memory.
// PIPE 1: two stages of K and V (tile i+1 lands during all of tile i); one
// barrier a tile; dynamic shared memory attn_prefill_smem<HD, BKV, 1>().
template <int HD, int BKV, int PIPE>
constexpr int attn_prefill_smem() {
    return (PIPE ? 4 : 2) * BKV * (HD + 8) * 2;
}

// The mma.sync path (sm_80+), NW warps of 16 query rows (production: NW 4,
// BKV 64, PIPE 0, SKIP_RESCALE).
template <int HD, int NW, int BKV, int PIPE, bool SKIP_RESCALE>
__device__ __forceinline__ void attn_prefill_body(const AttnParams& p) {
    constexpr int BQ = 16 * NW, NT = 32 * NW;
    constexpr int KP = HD + 8;  // row pitch (halfs): conflict-free ldmatrix rows
    static_assert(BQ <= 2 * BKV, "the output staging reuses the first two buffers");
    static_assert(BKV % 16 == 0 && HD % 16 == 0, "tile shapes");
    // Buffers of BKV rows: PIPE 0: [0] K, [1] V; PIPE 1: [2s] K, [2s+1] V of stage s.
    __half(*kv)[BKV][KP];
    if constexpr (PIPE == 0) {
        __shared__ __align__(128) __half kv_static[2][BKV][KP];
        kv = kv_static;
    } else {
        extern __shared__ __align__(128) unsigned char attn_smem[];
        kv = reinterpret_cast<__half(*)[BKV][KP]>(attn_smem);
    }
    griddep_wait();
    griddep_launch_dependents();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g4 = lane >> 2, c2 = (lane & 3) * 2;
    const AttnBlock blk(p, BQ, BKV, HD);
    const int h = blk.h, q0 = blk.q0, last = blk.last, first = blk.first, tiles = blk.tiles;
    const __half *kc = blk.kc, *vc = blk.vc;
    // Stage BKV rows from key kt0 of `src` into buffer kv[b]: 16 bytes per
    // cp.async, thread t copying column piece t % (HD / 8) of rows t / (HD /
    // 8) + RS·it (one base address, constant offsets); in the tile that
    // holds `last`, keys past it are zero-filled (src-size 0, address in
    // bounds). The caller commits.
    constexpr int CPR = HD / 8, RS = NT / CPR;  // pieces a row, rows a pass
    static_assert(NT % CPR == 0 && BKV % RS == 0, "staging shape");
    const int srow = threadIdx.x / CPR, scol = (threadIdx.x % CPR) * 8;
    auto stage = [&](const __half* src, int b, int kt0) {
        const __half* g = src + (long long)(kt0 + srow) * HD + scol;
        __half* d = &kv[b][srow][scol];
        if (kt0 + BKV - 1 <= last) {
#pragma unroll
            for (int it = 0; it < BKV / RS; ++it) cp_async16(d + it * RS * KP, g + it * RS * HD, 16);
        } else {
#pragma unroll
            for (int it = 0; it < BKV / RS; ++it) {
                const bool ok = kt0 + srow + it * RS <= last;
                cp_async16(d + it * RS * KP, ok ? g + it * RS * HD : src, ok ? 16 : 0);
            }
        }
    };
    stage(kc, 0, first);
    if (PIPE) stage(vc, 1, first);
    cp_async_commit();
    // This warp's rows (chunk index), this thread's two of them, and the
    // key range each sees: [lo, hi], hi capped at `last` (rows past T).
    const int wr0 = q0 + warp * 16;
    const AttnRows rw(p, wr0, g4, last);
    const bool warp_live = wr0 < p.T;
    // Q's A fragments (16 rows x HD) from the fp32 q (rotated here with
    // p.rope_q), rows past T zero.
    uint32_t qa[HD / 16][4];
    attn_load_q<HD>(p, h, rw.r0, rw.r1, c2, qa);
    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
    const float sl2 = p.scale * 1.4426950408889634f;  // scores to log2 units
    const int vrow = (lane & 7) + (((lane >> 3) & 1) << 3);
    const int vcol = (lane >> 4) * 8;
    for (int i = 0; i < tiles; ++i) {
        const int kt0 = first + i * BKV, kt1 = kt0 + BKV - 1;
        const int kb = PIPE ? 2 * (i & 1) : 0, vb = kb + 1;  // this tile's K and V buffers
        cp_async_wait<0>();
        // PIPE 0: K(i) in place, every warp done with V(i-1). PIPE 1: K(i)
        // and V(i) in place, every warp done with tile i-1's buffers.
        __syncthreads();
        if (PIPE) {
            if (i + 1 < tiles) {
                stage(kc, 2 - kb, kt0 + BKV);
                stage(vc, 3 - kb, kt0 + BKV);
                cp_async_commit();
            }
        } else {
            stage(vc, 1, kt0);
            cp_async_commit();
        }
        const bool any = warp_live && kt0 <= rw.w_hi_max && kt1 >= rw.w_lo_min;
        const bool all = rw.all(kt0, kt1);
        uint32_t pa[BKV / 16][4];
        if (any) {
            float s[BKV / 8][4];
            attn_qk_mma<HD, BKV>(s, qa, kv[kb], lane);
            if (all)
                attn_softmax<HD, BKV, false, SKIP_RESCALE>(s, kt0, c2, rw, sl2, m0, m1, l0, l1, o, pa);
            else
                attn_softmax<HD, BKV, true, SKIP_RESCALE>(s, kt0, c2, rw, sl2, m0, m1, l0, l1, o, pa);
        }
        if (!PIPE) {
            cp_async_wait<0>();
            __syncthreads();  // V(i) in place; every warp is done with K(i)
            if (i + 1 < tiles) {
                stage(kc, 0, kt0 + BKV);
                cp_async_commit();
            }
        }
        if (any) {
            // O += P V: B[k = key][n = d] by ldmatrix.trans of V's rows, two
            // 8-column n-tiles per x4.
#pragma unroll
            for (int kc2 = 0; kc2 < BKV / 16; ++kc2) {
#pragma unroll
                for (int dp = 0; dp < HD / 16; ++dp) {
                    uint32_t r[4];
                    ldmatrix_x4_trans(r, &kv[vb][kc2 * 16 + vrow][dp * 16 + vcol]);
                    mma_16816(o[2 * dp], pa[kc2], r[0], r[1]);
                    mma_16816(o[2 * dp + 1], pa[kc2], r[2], r[3]);
                }
            }
        }
    }
    float i0, i1;  // O / l per row
    attn_inv_sums(l0, l1, i0, i1);
    // Stage the warp's 16 output rows as fp16 in the (now free) first two
    // buffers, rows [warp·16, warp·16 + 16) of a [BQ][KP] view, then store
    // 16-byte pieces of whole rows.
    __syncthreads();  // every warp is done with the last tile
    __half(*os)[KP] = kv[0];
    attn_store_out<HD, KP>(p, h, warp, lane, g4, c2, wr0, o, i0, i1, os);
}

// ---------------------------------------------------------------------------
// The sm_90a path: the same algorithm with both products on wgmma (one
// warpgroup = the block's 4 warps, m64 = its 64 query rows, each warp's 16
// rows as in the mma.sync path, so the fragments and the softmax are the
// same). K and V tiles live in shared memory in the wgmma 128-byte-swizzle
// layout: per 64-column half of the head, BKV rows of 128 bytes, 16-byte
// piece c of row r at piece c ^ (r & 7), each half 1024-byte aligned.
//   S = Q K^T: m64nBKVk16, A = Q's fragments (registers), B = the K tile,
//     K-major (descriptor start +32 bytes per 16 columns, +BKV·128 bytes
//     per half; 8-row groups 1024 bytes apart).
//   O += P V: m64nHDk16, A = P's fragments (registers), B = the V tile,
//     MN-major (transposed): 16 keys = two 8-row groups 1024 bytes apart
//     (stride byte offset), the halves BKV·128 bytes apart (leading byte
//     offset), descriptor start +2048 bytes per 16 keys.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ATTN_PREFILL_WGMMA 1

#include "wgmma_ra.cuh"  // RegAcc; hopper.cuh's wgmma fence, commit and wait

namespace {

// wgmma m64nNk16 with A (64 x 16) from registers (each warp: the m16n8k16
// A fragment of its 16 rows, wgmma_ra.cuh), B by descriptor, TB = 1 for an
// MN-major (transposed) B; acc = 0 overwrites the accumulators.
template <int N, int TB>
__device__ __forceinline__ void attn_wg_mma(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc, int acc) {
    RegAcc<N>::template mma<TB>(d, make_uint4(a[0], a[1], a[2], a[3]), desc, acc);
}

// Issues S = Q K^T of the warpgroup's 64 rows over the K tile at shared
// address k (the caller fences, commits and waits).
template <int HD, int BKV>
__device__ __forceinline__ void attn_wg_qk(float (&s)[BKV / 8][4], const uint32_t (&qa)[HD / 16][4], uint32_t k) {
    constexpr int HALF = BKV * 128;
    const uint64_t dk = smem_desc_lbo_sbo(k, 16, 1024, true);
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk)
        attn_wg_mma<BKV, 0>(reinterpret_cast<float(&)[BKV / 2]>(s), qa[kk],
                            dk + (((kk / 4) * HALF + (kk % 4) * 32) >> 4), kk > 0);
}
// Issues O += P V over the V tile at shared address v.
template <int HD, int BKV>
__device__ __forceinline__ void attn_wg_pv(float (&o)[HD / 8][4], const uint32_t (&pa)[BKV / 16][4], uint32_t v) {
    constexpr int HALF = BKV * 128;
    const uint64_t dv = smem_desc_lbo_sbo(v, HALF, 1024, true);
#pragma unroll
    for (int j = 0; j < BKV / 16; ++j)
        attn_wg_mma<HD, 1>(reinterpret_cast<float(&)[HD / 2]>(o), pa[j], dv + ((j * 2048) >> 4), 1);
}

}  // namespace

template <int HD, int BKV, int PIPE, bool SKIP_RESCALE>
__device__ __forceinline__ void attn_prefill_wg_body(const AttnParams& p) {
    constexpr int BQ = 64, NT = 128;  // one warpgroup
    constexpr int HALF = BKV * 128;         // bytes of one 64-column half of a tile
    constexpr int TILE = (HD / 64) * HALF;  // bytes of one K or V tile
    constexpr int NBUF = PIPE ? 4 : 2;
    constexpr int KP = HD + 8;  // pitch (halfs) of the output staging
    static_assert(HD % 64 == 0 && BKV == 64, "wgmma path shapes");
    static_assert(BQ * KP * 2 <= NBUF * TILE, "the output staging reuses the tiles");
    // Buffers (1024-byte aligned by hand): PIPE 0: [0] K, [1] V; PIPE 1:
    // [2s] K, [2s+1] V of stage s.
    unsigned char* raw;
    if constexpr (PIPE == 0) {
        __shared__ __align__(1024) unsigned char attn_wg_static[2 * TILE + 1024];
        raw = attn_wg_static;
    } else {
        extern __shared__ __align__(128) unsigned char attn_smem[];
        raw = attn_smem;
    }
    const uint32_t raw_u32 = smem_addr(raw);
    const uint32_t sbase = (raw_u32 + 1023) & ~1023u;
    unsigned char* sgen = raw + (sbase - raw_u32);
    griddep_wait();
    griddep_launch_dependents();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g4 = lane >> 2, c2 = (lane & 3) * 2;
    const AttnBlock blk(p, BQ, BKV, HD);
    const int h = blk.h, q0 = blk.q0, last = blk.last, first = blk.first, tiles = blk.tiles;
    const __half *kc = blk.kc, *vc = blk.vc;
    // Staging: thread t copies 16-byte piece t % (HD / 8) of rows t / (HD /
    // 8) + RS·it into the swizzled layout (RS is a multiple of 8, so the
    // swizzle row r & 7 is the thread's constant); keys past `last`
    // zero-filled. The caller commits.
    constexpr int CPR = HD / 8, RS = NT / CPR;
    static_assert(RS % 8 == 0 && BKV % RS == 0, "staging shape");
    const int srow = threadIdx.x / CPR, spiece = threadIdx.x % CPR;
    const int sdst = (spiece / 8) * HALF + srow * 128 + (((spiece % 8) ^ (srow & 7)) << 4);
    auto stage = [&](const __half* src, int b, int kt0) {
        const __half* g = src + (long long)(kt0 + srow) * HD + spiece * 8;
        unsigned char* d = sgen + b * TILE + sdst;
        if (kt0 + BKV - 1 <= last) {
#pragma unroll
            for (int it = 0; it < BKV / RS; ++it) cp_async16(d + it * RS * 128, g + it * RS * HD, 16);
        } else {
#pragma unroll
            for (int it = 0; it < BKV / RS; ++it) {
                const bool ok = kt0 + srow + it * RS <= last;
                cp_async16(d + it * RS * 128, ok ? g + it * RS * HD : src, ok ? 16 : 0);
            }
        }
    };
    stage(kc, 0, first);
    if (PIPE) stage(vc, 1, first);
    cp_async_commit();
    const int wr0 = q0 + warp * 16;
    const AttnRows rw(p, wr0, g4, last);
    uint32_t qa[HD / 16][4];
    attn_load_q<HD>(p, h, rw.r0, rw.r1, c2, qa);
    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
    const float sl2 = p.scale * 1.4426950408889634f;
    for (int i = 0; i < tiles; ++i) {
        const int kt0 = first + i * BKV, kt1 = kt0 + BKV - 1;
        const int kb = PIPE ? 2 * (i & 1) : 0, vb = kb + 1;
        cp_async_wait<0>();
        fence_proxy_async_smem();
        __syncthreads();  // as in attn_prefill_body (every warp's wgmma on the old buffers has completed)
        if (PIPE) {
            if (i + 1 < tiles) {
                stage(kc, 2 - kb, kt0 + BKV);
                stage(vc, 3 - kb, kt0 + BKV);
                cp_async_commit();
            }
        } else {
            stage(vc, 1, kt0);
            cp_async_commit();
        }
        // S = Q K^T for the warpgroup's 64 rows.
        float s[BKV / 8][4];
        wgmma_fence();
        attn_wg_qk<HD, BKV>(s, qa, sbase + kb * TILE);
        wgmma_commit();
        wgmma_wait<0>();
        uint32_t pa[BKV / 16][4];
        if (rw.all(kt0, kt1))
            attn_softmax<HD, BKV, false, SKIP_RESCALE>(s, kt0, c2, rw, sl2, m0, m1, l0, l1, o, pa);
        else
            attn_softmax<HD, BKV, true, SKIP_RESCALE>(s, kt0, c2, rw, sl2, m0, m1, l0, l1, o, pa);
        if (!PIPE) {
            cp_async_wait<0>();
            fence_proxy_async_smem();
            __syncthreads();  // V(i) in place; every warp's S wgmma (reads of K(i)) has completed
            if (i + 1 < tiles) {
                stage(kc, 0, kt0 + BKV);
                cp_async_commit();
            }
        }
        // O += P V.
        wgmma_fence();
        attn_wg_pv<HD, BKV>(o, pa, sbase + vb * TILE);
        wgmma_commit();
        wgmma_wait<0>();
    }
    float i0, i1;
    attn_inv_sums(l0, l1, i0, i1);
    __syncthreads();  // every warp is done with the last tile
    __half(*os)[KP] = reinterpret_cast<__half(*)[KP]>(sgen);
    attn_store_out<HD, KP>(p, h, warp, lane, g4, c2, wr0, o, i0, i1, os);
}
#endif  // sm_90a

// The kernels: the wgmma path where compiled for sm_90a, the mma.sync path
// otherwise (the compute_80 PTX); the same launch either way: grid (H,
// ceil(T / ATTN_PREFILL_BQ)), 4 warps, static shared memory, at most 168
// registers (3 blocks a multiprocessor).
#define ATTN_PREFILL_NW 4
#define ATTN_PREFILL_BQ (16 * ATTN_PREFILL_NW)
extern "C" __global__ void __launch_bounds__(32 * ATTN_PREFILL_NW, 3) attn_prefill_h64(const AttnParams p) {
#ifdef ATTN_PREFILL_WGMMA
    attn_prefill_wg_body<64, 64, 0, true>(p);
#else
    attn_prefill_body<64, ATTN_PREFILL_NW, 64, 0, true>(p);
#endif
}
extern "C" __global__ void __launch_bounds__(32 * ATTN_PREFILL_NW, 3) attn_prefill_h128(const AttnParams p) {
#ifdef ATTN_PREFILL_WGMMA
    attn_prefill_wg_body<128, 64, 0, true>(p);
#else
    attn_prefill_body<128, ATTN_PREFILL_NW, 64, 0, true>(p);
#endif
}
