// Prefill-path kernels for the WDMoE expert FFN, y = W2 (silu(W1 x) * (W3 x)),
// on Hopper tensor cores (sm_90a): hundreds to thousands of tokens per expert,
// where the FFN is compute-bound.
//
// One GEMM kernel, C[rows, n] = A[rows, k] . B[n, k]^T (both operands K-major
// fp16, fp32 accumulate), used twice per FFN:
//   1. gate/up: A = tokens x, B = W13 with W1 and W3 interleaved in blocks of
//      8 rows (`interleave8`), epilogue h = silu(g) * u straight from the
//      accumulators (the [rows, 2 m_h] product never reaches device memory);
//   2. down: A = h, B = W2, epilogue fp16 store (or fp32 split-K partials,
//      summed by `splitk_reduce`, when the output tiles alone are too few).
//
// Design (read, not copied: fast.cu's stepwise Hopper GEMMs, CUTLASS 57, the
// ThunderKittens H100 GEMM):
//   * tile widths BN = 128, 224 (gate/up only: 128 tiles of 2 x 14336 fill one
//     wave of 132 SMs) or 256;
//   * 3 warpgroups per block: one producer (one thread issues the bulk tensor
//     copies, TMA) and two consumers (64 rows each of a 128 x BN tile, one
//     wgmma m64nBNk16 per 16 of k from shared memory, 128-byte swizzle);
//   * STAGES shared-memory stages, each guarded by a "full" mbarrier (TMA
//     transaction bytes) and an "empty" mbarrier (consumer warps arrive once
//     the wgmma reading the stage has retired: one wgmma group stays in flight);
//   * setmaxnreg moves registers from the producer to the consumers;
//   * persistent grid: one block per SM walks the tile list (tile = blockIdx.x
//     + i * gridDim.x), m-tiles fastest so concurrent blocks share weight tiles;
//   * groups: the rows of A are the tokens of up to MAX_GROUPS experts sorted
//     by expert (grouped MoE, one launch for all experts); B stacks the
//     experts' weights [groups * n, k]. A single expert is one group.
// Rows past a group's end and columns past n are computed but never stored;
// a consumer whose 64 rows all lie past the end skips its wgmma.

#include <cuda_fp16.h>
#include <stdint.h>

#include "common.cuh"

#include "hopper.cuh"

#define MAX_GROUPS 64

// Problem description, passed by value (kernel parameter space).
struct GemmParams {
    int n;            // output columns per group (B rows per group)
    int k;            // reduction length
    int n_tiles;      // ceil(n / BN)
    int splits;       // split-K slices (>1 only with the partial epilogue)
    int groups;       // number of groups (experts), 1..MAX_GROUPS
    int total_tiles;  // tile_start[groups]
    int ldo;          // output row stride, elements
    int group_m;      // m-tiles per raster block (>= 1): tiles run in blocks of
                      // group_m m-tiles x all n-tiles, m fastest inside a block
    void* out;        // fp16 h / fp16 y / fp32 partials [splits][rows][ldo]
    long long split_stride;  // elements between split slices of the partials
    int row_start[MAX_GROUPS + 1];   // prefix sums of rows per group
    int tile_start[MAX_GROUPS + 1];  // prefix sums of tiles per group
    // Device-side schedule (device-routed MoE step): when not null, the
    // groups' row prefix sums are read from here (groups + 1 ints, written
    // by the previous kernel: read after griddepcontrol.wait), clamped to
    // [0, max_rows] and made non-decreasing, and the tile prefix sums are
    // computed from them; row_start, tile_start and total_tiles above are
    // then unused (the host launches for the worst case; blocks with no
    // tile exit).
    const int* dev_rows;
    int max_rows;  // rows the A tensor map and the output hold
    int pad_;
};

enum { MODE_SWIGLU = 0, MODE_STORE = 1, MODE_PARTIAL = 2 };

namespace {

constexpr int BK = 64;   // k per stage: 64 fp16 = one 128-byte swizzle row

#include "wgmma_ss.cuh"  // the wgmma wrappers, both operands from shared memory (Acc<BN>)

struct Tile {
    int group, row0, rows, col0, kb0, kb1, split;
};

template <int BM>
__device__ __forceinline__ Tile map_tile(const GemmParams& p, const int* row_start, const int* tile_start, int t,
                                         int kblocks, int bn) {
    int g = 0;
    while (g + 1 < p.groups && t >= tile_start[g + 1]) ++g;
    int local = t - tile_start[g];
    int rows = row_start[g + 1] - row_start[g];
    int mt = (rows + BM - 1) / BM;
    // Split slowest; inside a split, blocks of group_m m-tiles x all n-tiles
    // (m fastest inside a block), so that the A rows of a block and the B
    // columns of a wave stay in L2 while the wave runs.
    const int per_split = mt * p.n_tiles;
    int s = local / per_split;
    int r = local - s * per_split;
    const int gm = p.group_m;
    int mb = r / (gm * p.n_tiles);
    int m0 = mb * gm;
    int gmb = min(gm, mt - m0);
    int rr = r - mb * gm * p.n_tiles;
    int m = m0 + rr % gmb;
    int n = rr / gmb;
    Tile tl;
    tl.group = g;
    tl.row0 = m * BM;  // within the group
    tl.rows = rows;
    tl.col0 = n * bn;
    tl.split = s;
    tl.kb0 = (int)((long long)s * kblocks / p.splits);
    tl.kb1 = (int)((long long)(s + 1) * kblocks / p.splits);
    return tl;
}

}  // namespace

// NC consumer warpgroups: tiles of BM = 64 * NC rows by BN columns.
template <int BN, int STAGES, int MODE, int NC>
__device__ __forceinline__ void gemm_tn_body(const TensorMap& ta, const TensorMap& tb, const GemmParams& p) {
#ifdef WDMOE_SM90A
    constexpr int BM = 64 * NC;
    // Registers per consumer thread after setmaxnreg (the producer keeps 40;
    // (40 + NC * R) * 128 <= 65536). ptxas itself compiles every region under
    // the launch bounds' entry cap (168 at 384 threads, 128 at 512).
    constexpr int CONSUMER_REGS = NC == 2 ? 232 : 152;
    constexpr int A_BYTES = BM * BK * 2;
    constexpr int B_BYTES = BN * BK * 2;
    constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
    extern __shared__ __align__(1024) uint8_t smem_raw[];
    const uint32_t sbase = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const uint32_t bar_full = sbase + STAGES * STAGE_BYTES;
    const uint32_t bar_empty = bar_full + STAGES * 8;
    const int wg = threadIdx.x / 128;
    const int tid = threadIdx.x % 128;
    // The schedule (row and tile prefix sums per group) in shared memory:
    // from the parameters, or computed from the device's row offsets.
    __shared__ int s_row[MAX_GROUPS + 1], s_tile[MAX_GROUPS + 1];
    if (p.dev_rows) griddep_wait();  // written by the previous kernel
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(bar_full + 8 * s, 1);
            mbar_init(bar_empty + 8 * s, stage_arrivals<false>(4 * NC));  // NC consumer warpgroups x 4 warps
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        const int groups = p.groups < 1 ? 1 : (p.groups > MAX_GROUPS ? MAX_GROUPS : p.groups);
        if (p.dev_rows) {
            int prev = 0, tiles = 0;
            s_row[0] = 0;
            s_tile[0] = 0;
            for (int g = 1; g <= groups; ++g) {
                int r = p.dev_rows[g];
                r = r < prev ? prev : (r > p.max_rows ? p.max_rows : r);
                tiles += (r - prev + BM - 1) / BM * p.n_tiles * p.splits;
                s_row[g] = r;
                s_tile[g] = tiles;
                prev = r;
            }
        } else {
            for (int g = 0; g <= groups; ++g) {
                s_row[g] = p.row_start[g];
                s_tile[g] = p.tile_start[g];
            }
        }
    }
    __syncthreads();
    const int total_tiles = s_tile[p.groups < 1 ? 1 : (p.groups > MAX_GROUPS ? MAX_GROUPS : p.groups)];
    // Launched with programmatic dependent launch: let the next kernel's
    // blocks get ready as ours retire; all global memory this grid touches
    // is read (TMA) or written (epilogue) only after the producer thread's
    // griddepcontrol.wait, i.e. after the previous kernel completed.
    griddep_launch_dependents();
    const int kblocks = (p.k + BK - 1) / BK;

    if (wg == 0) {
        setmaxnreg_dec<40>();
        if (tid == 0) {
            griddep_wait();
            int stage = 0;
            uint32_t phase = 0;
            for (int t = blockIdx.x; t < total_tiles; t += gridDim.x) {
                const Tile tl = map_tile<BM>(p, s_row, s_tile, t, kblocks, BN);
                const int a_row = s_row[tl.group] + tl.row0;
                const int b_row = tl.group * p.n + tl.col0;
                for (int kb = tl.kb0; kb < tl.kb1; ++kb) {
                    mbar_wait(bar_empty + 8 * stage, phase ^ 1);
                    const uint32_t full = bar_full + 8 * stage;
                    const uint32_t sa = sbase + stage * STAGE_BYTES;
                    mbar_expect_tx(full, STAGE_BYTES);
                    tma_load_2d(sa, &ta, kb * BK, a_row, full);
                    tma_load_2d(sa + A_BYTES, &tb, kb * BK, b_row, full);
                    if (++stage == STAGES) {
                        stage = 0;
                        phase ^= 1;
                    }
                }
            }
        }
    } else {
        setmaxnreg_inc<CONSUMER_REGS>();
        const int c = wg - 1;  // rows c*64 .. c*64+63 of the tile
        const int warp = tid / 32, lane = tid % 32;
        float d[BN / 2];
        int stage = 0;
        uint32_t phase = 0;
        for (int t = blockIdx.x; t < total_tiles; t += gridDim.x) {
            const Tile tl = map_tile<BM>(p, s_row, s_tile, t, kblocks, BN);
            if (tl.row0 + c * 64 >= tl.rows) {
                // All 64 rows of this consumer lie past the group's end (few
                // tokens): no wgmma, no epilogue; just pass the stages on.
                pass_stages<STAGES, false>(tl.kb1 - tl.kb0, bar_full, bar_empty, stage, phase, lane);
                continue;
            }
            int prev = -1;
            for (int kb = tl.kb0; kb < tl.kb1; ++kb) {
                mbar_wait(bar_full + 8 * stage, phase);
                const uint32_t sa = sbase + stage * STAGE_BYTES + c * (64 * 128);
                const uint32_t sb = sbase + stage * STAGE_BYTES + A_BYTES;
                const uint64_t da = smem_desc(sa), db = smem_desc(sb);
                wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < BK / 16; ++kk) {
                    // +32 bytes along k per step of 16 (descriptor units of 16 bytes)
                    Acc<BN>::mma(d, da + 2 * kk, db + 2 * kk, (kb > tl.kb0 || kk > 0) ? 1 : 0);
                }
                wgmma_commit();
                wgmma_wait<1>();
                if (prev >= 0) stage_release<false>(bar_empty + 8 * prev, lane);
                prev = stage;
                if (++stage == STAGES) {
                    stage = 0;
                    phase ^= 1;
                }
            }
            wgmma_wait<0>();
            if (prev >= 0) stage_release<false>(bar_empty + 8 * prev, lane);

            // Epilogue straight from the accumulators: thread holds, for each
            // 8-column block j, rows r and r+8, columns 8j + 2q + {0,1}.
            const int r = tl.row0 + c * 64 + warp * 16 + lane / 4;  // row within the group
            const int q2 = (lane % 4) * 2;
            const long long grow = s_row[tl.group];
#pragma unroll
            for (int half_ = 0; half_ < 2; ++half_) {
                const int row = r + 8 * half_;
                if (row >= tl.rows) continue;
                const long long orow = (grow + row) * (long long)p.ldo;
                if (MODE == MODE_SWIGLU) {
                    __half* out = reinterpret_cast<__half*>(p.out);
#pragma unroll
                    for (int j = 0; j < BN / 16; ++j) {
                        const int col = tl.col0 / 2 + 8 * j + q2;  // column of h
                        if (col >= p.n / 2) continue;
                        const float g0 = d[(2 * j) * 4 + 2 * half_], g1 = d[(2 * j) * 4 + 2 * half_ + 1];
                        const float u0 = d[(2 * j + 1) * 4 + 2 * half_], u1 = d[(2 * j + 1) * 4 + 2 * half_ + 1];
                        const float h0 = g0 / (1.0f + __expf(-g0)) * u0;
                        const float h1 = g1 / (1.0f + __expf(-g1)) * u1;
                        *reinterpret_cast<__half2*>(out + orow + col) = __floats2half2_rn(h0, h1);
                    }
                } else if (MODE == MODE_STORE) {
                    __half* out = reinterpret_cast<__half*>(p.out);
#pragma unroll
                    for (int j = 0; j < BN / 8; ++j) {
                        const int col = tl.col0 + 8 * j + q2;
                        if (col >= p.n) continue;
                        *reinterpret_cast<__half2*>(out + orow + col) =
                            __floats2half2_rn(d[4 * j + 2 * half_], d[4 * j + 2 * half_ + 1]);
                    }
                } else {
                    float* out = reinterpret_cast<float*>(p.out) + (long long)tl.split * p.split_stride;
#pragma unroll
                    for (int j = 0; j < BN / 8; ++j) {
                        const int col = tl.col0 + 8 * j + q2;
                        if (col >= p.n) continue;
                        *reinterpret_cast<float2*>(out + orow + col) =
                            make_float2(d[4 * j + 2 * half_], d[4 * j + 2 * half_ + 1]);
                    }
                }
            }
        }
    }
#else
    __trap();  // sm_90a only; the host never launches these elsewhere
#endif
}

// Shared memory each instantiation needs (host mirrors this: 1024 for the
// alignment of the swizzled stages + stages + 2 mbarriers per stage).
#define GEMM_KERNEL(NAME, BN, STAGES, MODE, NC)                                                             \
    extern "C" __global__ void __launch_bounds__(128 * (NC + 1), 1)                                         \
        NAME(const __grid_constant__ TensorMap ta, const __grid_constant__ TensorMap tb,                    \
             const __grid_constant__ GemmParams p) {                                                        \
        gemm_tn_body<BN, STAGES, MODE, NC>(ta, tb, p);                                                      \
    }

// 128-row tiles (2 consumer warpgroups).
GEMM_KERNEL(gemm_swiglu_n256, 256, 4, MODE_SWIGLU, 2)
GEMM_KERNEL(gemm_swiglu_n224, 224, 5, MODE_SWIGLU, 2)
GEMM_KERNEL(gemm_swiglu_n128, 128, 6, MODE_SWIGLU, 2)
GEMM_KERNEL(gemm_store_n256, 256, 4, MODE_STORE, 2)
GEMM_KERNEL(gemm_store_n128, 128, 6, MODE_STORE, 2)
GEMM_KERNEL(gemm_partial_n256, 256, 4, MODE_PARTIAL, 2)
GEMM_KERNEL(gemm_partial_n128, 128, 6, MODE_PARTIAL, 2)
// 192-row tiles (3 consumer warpgroups, at most 128 registers per thread
// under the 512-thread launch bound: n <= 192).
GEMM_KERNEL(gemm_swiglu_n192_m192, 192, 4, MODE_SWIGLU, 3)
GEMM_KERNEL(gemm_store_n192_m192, 192, 4, MODE_STORE, 3)
GEMM_KERNEL(gemm_partial_n192_m192, 192, 4, MODE_PARTIAL, 3)

// The packed-weights GEMM (the decode layout at prefill sizes).
#include "gemm_packed.cuh"

// out[r][c] = sum_s ws[s][r][c] (fp32 partials of split-K) as fp16; 4 columns
// per thread (n % 4 == 0).
extern "C" __global__ void splitk_reduce(const float* __restrict__ ws, int splits, long long split_stride,
                                         long long rows, int n, __half* __restrict__ out) {
    griddep_wait();  // the partials come from the GEMM launched just before
    const long long total = rows * (n / 4);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long e = i * 4;
        float4 acc = *reinterpret_cast<const float4*>(ws + e);
        for (int s = 1; s < splits; ++s) {
            const float4 v = *reinterpret_cast<const float4*>(ws + s * split_stride + e);
            acc.x += v.x;
            acc.y += v.y;
            acc.z += v.z;
            acc.w += v.w;
        }
        __half2 lo = __floats2half2_rn(acc.x, acc.y), hi = __floats2half2_rn(acc.z, acc.w);
        uint2 packed;
        packed.x = *reinterpret_cast<uint32_t*>(&lo);
        packed.y = *reinterpret_cast<uint32_t*>(&hi);
        *reinterpret_cast<uint2*>(out + e) = packed;
    }
}

// W13 for the gate/up GEMM: rows 16j..16j+7 = W1 rows 8j..8j+7, rows
// 16j+8..16j+15 = W3 rows 8j..8j+7 (m_h % 8 == 0, cols % 8 == 0).
extern "C" __global__ void interleave8(const __half* __restrict__ w1, const __half* __restrict__ w3,
                                       __half* __restrict__ dst, int m_h, int cols) {
    const long long chunks_per_row = cols / 8;
    const long long total = 2LL * m_h * chunks_per_row;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long drow = i / chunks_per_row, ch = i % chunks_per_row;
        const long long j = drow / 16, w = drow % 16;
        const long long srow = 8 * j + (w % 8);
        const __half* src = (w < 8 ? w1 : w3) + srow * cols + ch * 8;
        reinterpret_cast<uint4*>(dst)[i] = *reinterpret_cast<const uint4*>(src);
    }
}

// xs[i] = x[idx[i]] (rows of m fp16, m % 8 == 0): tokens sorted by expert.
// An index outside [0, x_rows) gives a row of zeros (never a stray read).
extern "C" __global__ void gather_rows(const __half* __restrict__ x, const int* __restrict__ idx,
                                       __half* __restrict__ xs, int rows, int m, long long x_rows) {
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

// out[t] = sum_j w[t][j] * ys[slot[t][j]] over the top-k slots of token t
// (slot < 0 or >= ys_rows: skipped; < 0 marks e.g. an expert the policy
// dropped), fp32 sum, written as fp16 (combine_rows) or fp32
// (combine_rows_f32). Tokens with no slot get 0.
__device__ __forceinline__ void store8(__half* out, long long i, const float (&acc)[8]) {
    uint4 o;
    __half2* oh = reinterpret_cast<__half2*>(&o);
#pragma unroll
    for (int q = 0; q < 4; ++q) oh[q] = __floats2half2_rn(acc[2 * q], acc[2 * q + 1]);
    reinterpret_cast<uint4*>(out)[i] = o;
}
__device__ __forceinline__ void store8(float* out, long long i, const float (&acc)[8]) {
    reinterpret_cast<float4*>(out)[2 * i] = make_float4(acc[0], acc[1], acc[2], acc[3]);
    reinterpret_cast<float4*>(out)[2 * i + 1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
}
template <typename T>
__device__ __forceinline__ void combine_body(const __half* __restrict__ ys, long long ys_rows,
                                             const int* __restrict__ slot, const float* __restrict__ w, int topk,
                                             int tokens, int m, T* __restrict__ out) {
    const long long per = m / 8, total = (long long)tokens * per;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long t = i / per, c = i % per;
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int j = 0; j < topk; ++j) {
            const int s = slot[t * topk + j];
            if (s < 0 || s >= ys_rows) continue;
            const float wt = w[t * topk + j];
            const uint4 v = reinterpret_cast<const uint4*>(ys + (long long)s * m)[c];
            const __half2* h = reinterpret_cast<const __half2*>(&v);
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const float2 f = __half22float2(h[q]);
                acc[2 * q] += wt * f.x;
                acc[2 * q + 1] += wt * f.y;
            }
        }
        store8(out, i, acc);
    }
}
extern "C" __global__ void combine_rows(const __half* __restrict__ ys, long long ys_rows,
                                        const int* __restrict__ slot, const float* __restrict__ w, int topk,
                                        int tokens, int m, __half* __restrict__ out) {
    combine_body(ys, ys_rows, slot, w, topk, tokens, m, out);
}
extern "C" __global__ void combine_rows_f32(const __half* __restrict__ ys, long long ys_rows,
                                            const int* __restrict__ slot, const float* __restrict__ w, int topk,
                                            int tokens, int m, float* __restrict__ out) {
    combine_body(ys, ys_rows, slot, w, topk, tokens, m, out);
}
