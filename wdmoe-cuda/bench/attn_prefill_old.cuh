// Baseline for bench/attn_prefill_bench.cu: the prefill attention kernel as of
// commit 9b51806 (before the 64-key-tile rewrite), kernels renamed
// attn_prefill_old_h64/h128 and included inside a namespace by the bench.
// Prefill attention on tensor cores (mma.sync m16n8k16, fp16 in, fp32
// accumulate; sm_80+): the attention of T >= 16 queries of one chunk over
// the cache, FlashAttention-2 style. Included by model.cu (after AttnParams
// and the warp helpers).
//
// Grid (ceil(T / 64), H); block 4 warps, each 16 query rows of one head.
// The block walks the keys its 64 queries see (causal, and with window > 0
// only the last `window` positions of each query) in tiles of 32, K and V
// rows double-buffered in shared memory by cp.async (the next tile loads
// while this one computes); the mma B operands come by ldmatrix (plain for
// K, transposed for V; padded pitches, no bank conflicts); S = Q K^T with
// Q's A fragments held in registers for the whole block, the mask, the
// online softmax of each row in fp32 (quad shuffles), P rounded to fp16 as
// the A operand of O += P V. Output [T][H hd] fp16, like attn_fwd.
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

}  // namespace

template <int HD>
__device__ __forceinline__ void attn_prefill_body(const AttnParams& p) {
    constexpr int BQ = 64, BKV = 32;
    constexpr int KP = HD + 8;  // row pitch (halfs): conflict-free ldmatrix rows
    // Two stages of K and V rows (cp.async double buffer).
    __shared__ __align__(128) __half ks[2][BKV][KP];
    __shared__ __align__(128) __half vs[2][BKV][KP];
    griddep_wait();
    griddep_launch_dependents();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int h = blockIdx.y, G = p.H / p.KVH, kvh = h / G;
    const int q0 = blockIdx.x * BQ;
    const int g4 = lane >> 2, c2 = (lane & 3) * 2;
    // This thread's two query rows (chunk index) and their positions.
    const int r0 = q0 + warp * 16 + g4, r1 = r0 + 8;
    const int pos0 = p.start + r0, pos1 = p.start + r1;
    // Q's A fragments (16 rows x HD) from the fp32 rotated q, rows past T zero.
    uint32_t qa[HD / 16][4];
    {
        const float* qr0 = p.q + ((long long)r0 * p.H + h) * HD;
        const float* qr1 = p.q + ((long long)r1 * p.H + h) * HD;
        const bool v0 = r0 < p.T, v1 = r1 < p.T;
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
            const int k = kk * 16 + c2;
            float2 a = v0 ? *reinterpret_cast<const float2*>(qr0 + k) : make_float2(0.f, 0.f);
            float2 b = v1 ? *reinterpret_cast<const float2*>(qr1 + k) : make_float2(0.f, 0.f);
            float2 c = v0 ? *reinterpret_cast<const float2*>(qr0 + k + 8) : make_float2(0.f, 0.f);
            float2 d = v1 ? *reinterpret_cast<const float2*>(qr1 + k + 8) : make_float2(0.f, 0.f);
            qa[kk][0] = pack_half2(a.x, a.y);
            qa[kk][1] = pack_half2(b.x, b.y);
            qa[kk][2] = pack_half2(c.x, c.y);
            qa[kk][3] = pack_half2(d.x, d.y);
        }
    }
    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
    // Keys of the block: from the first query's window start to the last
    // query's position.
    const int last = p.start + min(q0 + BQ, p.T) - 1;
    const int first = p.window > 0 ? max(0, p.start + q0 + 1 - p.window) : 0;
    const __half* kc = p.k_cache + (long long)kvh * p.max_seq * HD;
    const __half* vc = p.v_cache + (long long)kvh * p.max_seq * HD;
    const int lo0 = p.window > 0 ? pos0 + 1 - p.window : 0;
    const int lo1 = p.window > 0 ? pos1 + 1 - p.window : 0;
    const int tiles = (last - first) / BKV + 1;
    // Stage tile `i` into buffer `b`: 16 bytes per cp.async, keys past
    // `last` zero-filled (src-size 0, the address kept in bounds).
    auto stage = [&](int i, int b) {
        const int kt0 = first + i * BKV;
        for (int c = threadIdx.x; c < BKV * (HD / 8); c += blockDim.x) {
            const int j = c / (HD / 8), d = (c % (HD / 8)) * 8;
            const int key = kt0 + j;
            const int ok = key <= last ? 16 : 0;
            const long long off = (long long)(ok ? key : first) * HD + d;
            cp_async16(&ks[b][j][d], kc + off, ok);
            cp_async16(&vs[b][j][d], vc + off, ok);
        }
        cp_async_commit();
    };
    stage(0, 0);
    for (int i = 0; i < tiles; ++i) {
        const int b = i & 1;
        const int kt0 = first + i * BKV;
        if (i + 1 < tiles) {
            stage(i + 1, b ^ 1);  // the buffer tile i-1 used: freed by the barrier below
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        // S = Q K^T for this warp's 16 rows x 32 keys: B fragments of two
        // 8-key n-tiles per ldmatrix.x4 (K rows are the mma's B columns).
        float s[BKV / 8][4];
#pragma unroll
        for (int nt = 0; nt < BKV / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
        for (int np = 0; np < BKV / 16; ++np) {
            const int row = np * 16 + (lane & 7) + ((lane >> 4) << 3);
            const int colo = ((lane >> 3) & 1) * 8;
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk) {
                uint32_t r[4];
                ldmatrix_x4(r, &ks[b][row][kk * 16 + colo]);
                mma_16816(s[2 * np], qa[kk], r[0], r[1]);
                mma_16816(s[2 * np + 1], qa[kk], r[2], r[3]);
            }
        }
        // Scale and mask: key position kpos is seen by the row at position
        // pos when lo <= kpos <= pos.
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < BKV / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int kpos = kt0 + nt * 8 + c2 + e;
                const bool in = kpos <= last;
                s[nt][e] = (in && kpos <= pos0 && kpos >= lo0) ? s[nt][e] * p.scale : -INFINITY;
                s[nt][2 + e] = (in && kpos <= pos1 && kpos >= lo1) ? s[nt][2 + e] * p.scale : -INFINITY;
                mx0 = fmaxf(mx0, s[nt][e]);
                mx1 = fmaxf(mx1, s[nt][2 + e]);
            }
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
        // A row with no key yet keeps m = -inf: exponents against 0 then
        // give p = 0 and no NaN.
        const float b0 = n0 == -INFINITY ? 0.f : n0, b1 = n1 == -INFINITY ? 0.f : n1;
        const float corr0 = __expf(m0 - b0), corr1 = __expf(m1 - b1);
        m0 = n0;
        m1 = n1;
        float sum0 = 0.f, sum1 = 0.f;
        uint32_t pa[BKV / 16][4];
#pragma unroll
        for (int nt = 0; nt < BKV / 8; ++nt) {
            const float p00 = __expf(s[nt][0] - b0), p01 = __expf(s[nt][1] - b0);
            const float p10 = __expf(s[nt][2] - b1), p11 = __expf(s[nt][3] - b1);
            sum0 += p00 + p01;
            sum1 += p10 + p11;
            // C fragment of n-tile nt -> A fragment of k chunk nt/2.
            pa[nt / 2][(nt & 1) * 2 + 0] = pack_half2(p00, p01);
            pa[nt / 2][(nt & 1) * 2 + 1] = pack_half2(p10, p11);
        }
        sum0 += __shfl_xor_sync(0xffffffffu, sum0, 1);
        sum0 += __shfl_xor_sync(0xffffffffu, sum0, 2);
        sum1 += __shfl_xor_sync(0xffffffffu, sum1, 1);
        sum1 += __shfl_xor_sync(0xffffffffu, sum1, 2);
        l0 = l0 * corr0 + sum0;
        l1 = l1 * corr1 + sum1;
#pragma unroll
        for (int dt = 0; dt < HD / 8; ++dt) {
            o[dt][0] *= corr0;
            o[dt][1] *= corr0;
            o[dt][2] *= corr1;
            o[dt][3] *= corr1;
        }
        // O += P V: B[k = key][n = d] by ldmatrix.trans of V's rows, two
        // 8-column n-tiles per x4.
#pragma unroll
        for (int kc2 = 0; kc2 < BKV / 16; ++kc2) {
            const int row = kc2 * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
            const int colo = (lane >> 4) * 8;
#pragma unroll
            for (int dp = 0; dp < HD / 16; ++dp) {
                uint32_t r[4];
                ldmatrix_x4_trans(r, &vs[b][row][dp * 16 + colo]);
                mma_16816(o[2 * dp], pa[kc2], r[0], r[1]);
                mma_16816(o[2 * dp + 1], pa[kc2], r[2], r[3]);
            }
        }
        __syncthreads();  // buffer b is refilled by the next iteration's stage
    }
    const float i0 = 1.0f / l0, i1 = 1.0f / l1;
#pragma unroll
    for (int dt = 0; dt < HD / 8; ++dt) {
        const int d = dt * 8 + c2;
        if (r0 < p.T)
            *reinterpret_cast<__half2*>(p.out + ((long long)r0 * p.H + h) * HD + d) =
                __floats2half2_rn(o[dt][0] * i0, o[dt][1] * i0);
        if (r1 < p.T)
            *reinterpret_cast<__half2*>(p.out + ((long long)r1 * p.H + h) * HD + d) =
                __floats2half2_rn(o[dt][2] * i1, o[dt][3] * i1);
    }
}

__global__ void __launch_bounds__(128) attn_prefill_old_h64(const AttnParams p) { attn_prefill_body<64>(p); }
__global__ void __launch_bounds__(128) attn_prefill_old_h128(const AttnParams p) { attn_prefill_body<128>(p); }
