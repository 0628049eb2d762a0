// The slot kernels of the device-planned MoE step (kernels/ffn_decode.cu's
// GEMVs, gemv_tile and gemv_tile_rows, with their expert and tokens from a
// plan that router_policy built on the device). Included by ffn_decode.cu
// (one module) after those templates.
#pragma once

// Slot kernels of the device-planned MoE step: the same GEMVs, but the
// expert (its packed weights) and the tokens come from slot `slot` of a plan
// that router_policy built on the device, so that the host can launch every
// kernel of a step before the plan exists (no host round trip).
//
// Memory ordering: router_policy writes the plan, then (after a fence)
// `seq` into the word after the slots (the plan's ready flag), then lets its
// dependents launch. Each slot kernel's thread 0 waits (acquire) until the
// flag holds this step's `seq`, usually at once, so the first slot kernel
// need not wait for the router grid to complete and every kernel can read
// its slot (ld.global.cg) before its own griddepcontrol.wait, keeping the
// pre-wait weight loads; if the flag does not come (it always does), the
// kernel falls back to waiting for its predecessor grid. An unused slot's
// kernels wait before exiting, so that the completion of every kernel
// implies that of the one before it (the router's zeroing of the
// accumulator, read by the down kernels, included).
//
// One launch may serve several slots (grid z = slots from `slot` on): slot
// `slot + z` then has rows z*zrows .. of h (the gate/up kernel's output, the
// down kernel's input; zrows 0 for a launch of one slot), and the down
// kernels of all slots add into out_acc atomically.
#define WDMOE_SLOT_PROLOGUE(DOWN)                                                                           \
    __shared__ TokList st;                                                                                  \
    __shared__ unsigned long long sw;                                                                       \
    __shared__ int sT;                                                                                      \
    slot += (int)blockIdx.z;                                                                                \
    if (DOWN)                                                                                               \
        x += (size_t)blockIdx.z * zrows * ldx;                                                              \
    else                                                                                                    \
        out += (size_t)blockIdx.z * zrows * ldo;                                                            \
    if (threadIdx.x == 0) {                                                                                 \
        const unsigned* flag = reinterpret_cast<const unsigned*>(plan + WDMOE_MAX_SLOTS);                   \
        int spins = 0;                                                                                      \
        while (ld_acquire(flag) != seq && ++spins < (1 << 22)) __nanosleep(64);                             \
        if (spins >= (1 << 22)) griddep_wait();                                                             \
    }                                                                                                       \
    __syncthreads();                                                                                        \
    if (threadIdx.x < sizeof(TokList) / 4)                                                                  \
        reinterpret_cast<int*>(&st)[threadIdx.x] =                                                          \
            __ldcg(reinterpret_cast<const int*>(&plan[slot].toks) + threadIdx.x);                           \
    if (threadIdx.x == 0) {                                                                                 \
        sw = __ldcg(DOWN ? &plan[slot].w2 : &plan[slot].w13);                                               \
        sT = __ldcg(&plan[slot].T);                                                                         \
    }                                                                                                       \
    __syncthreads();                                                                                        \
    if (DOWN && threadIdx.x == 0) st.gather = 0; /* h rows are compact */                                  \
    if (sw == 0ull || sT < 1 || sT > 16) {                                                                  \
        griddep_launch_dependents();                                                                        \
        griddep_wait();                                                                                     \
        return;                                                                                             \
    }                                                                                                       \
    __syncthreads();

// Parameters of every slot kernel.
#define WDMOE_SLOT_PARAMS                                                                                   \
    const Slot *__restrict__ plan, int slot, unsigned seq, const __half *__restrict__ x, int ldx,            \
        int k_tiles, long long rt_stride, long long kt_stride, int splits, float *__restrict__ partial,     \
        unsigned *__restrict__ counters, __half *__restrict__ out, int ldo, float *__restrict__ out_acc,    \
        int n_rows, int zrows

// PRE: gemv_tile's (1, or 2: two groups of U k-tiles loaded before the
// wait for the previous kernel).
#define WDMOE_GEMV_SLOT_PRE(NAME, NT, NMAT, U, GATED, DOWN, PRE)                                            \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                                 \
        WDMOE_SLOT_PARAMS) {                                                                                \
        WDMOE_SLOT_PROLOGUE(DOWN)                                                                           \
        gemv_tile<NT, NMAT, U, GATED, false, PRE>(reinterpret_cast<const uint4*>(sw), x, ldx, st, sT,        \
                                                  k_tiles, rt_stride, kt_stride, splits, partial, counters, \
                                                  out, ldo, out_acc, n_rows);                               \
    }
#define WDMOE_GEMV_SLOT(NAME, NT, NMAT, U, GATED, DOWN) WDMOE_GEMV_SLOT_PRE(NAME, NT, NMAT, U, GATED, DOWN, 1)

// The 1-token gate/up slot kernels (SpecPlan): thread 0 waits for the
// slot's candidate (published before the router's policy runs) or for the
// plan itself, whichever comes first; with a candidate the block streams it
// at once (gemv_tile's SPEC) and, should the plan put another expert in the
// slot (never expected: the plan keeps a subset of the candidates in their
// slots), runs that one as the plain slot kernel does.
#define WDMOE_GEMV_SLOT_SPEC(NAME, U)                                                                       \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                                 \
        WDMOE_SLOT_PARAMS) {                                                                                \
        {                                                                                                   \
            const int zslot = slot + (int)blockIdx.z;                                                       \
            __shared__ unsigned long long s_cand;                                                           \
            if (threadIdx.x == 0) {                                                                         \
                const SpecPlan* sp = spec_plan(plan);                                                       \
                const unsigned* flag = reinterpret_cast<const unsigned*>(plan + WDMOE_MAX_SLOTS);           \
                unsigned long long cand = 0ull;                                                             \
                for (int spins = 0; spins < (1 << 22); ++spins) {                                           \
                    if (ld_acquire(&sp->seq) == seq) {                                                      \
                        cand = __ldcg(&sp->w13[zslot]);                                                     \
                        break;                                                                              \
                    }                                                                                       \
                    if (ld_acquire(flag) == seq) break;                                                     \
                    __nanosleep(64);                                                                        \
                }                                                                                           \
                s_cand = cand;                                                                              \
            }                                                                                               \
            __syncthreads();                                                                                \
            if (s_cand != 0ull) {                                                                           \
                TokList one;                                                                                \
                one.gather = 1;                                                                             \
                one.scatter = 1;                                                                            \
                one.idx[0] = 0;                                                                             \
                one.w[0] = 1.f;                                                                             \
                if (gemv_tile<1, 2, U, true, true>(reinterpret_cast<const uint4*>(s_cand), x, ldx, one, 1,   \
                                                   k_tiles, rt_stride, kt_stride, splits, partial, counters, \
                                                   out + (size_t)blockIdx.z * zrows * ldo, ldo, out_acc,     \
                                                   n_rows, plan, zslot, seq))                               \
                    return;                                                                                 \
                __syncthreads();                                                                            \
            }                                                                                               \
        }                                                                                                   \
        WDMOE_SLOT_PROLOGUE(false)                                                                          \
        gemv_tile<1, 2, U, true>(reinterpret_cast<const uint4*>(sw), x, ldx, st, sT, k_tiles, rt_stride,    \
                                 kt_stride, splits, partial, counters, out, ldo, out_acc, n_rows);          \
    }

WDMOE_GEMV_SLOT_SPEC(slot_gated_spec_u4, 4)
WDMOE_GEMV_SLOT_SPEC(slot_gated_spec_u8, 8)

#define WDMOE_GEMV_R_SLOT(NAME, NT, NMAT, R, U, GATED, DOWN)                                                \
    extern "C" __global__ void __launch_bounds__(256, 2) NAME(                                              \
        WDMOE_SLOT_PARAMS) {                                                                                \
        WDMOE_SLOT_PROLOGUE(DOWN)                                                                           \
        gemv_tile_rows<NT, NMAT, R, U, GATED>(reinterpret_cast<const uint4*>(sw), x, ldx, st, sT, k_tiles,  \
                                              rt_stride, kt_stride, splits, partial, counters, out, ldo,    \
                                              out_acc, n_rows);                                             \
    }

// Slot kernels for plans of 9-16 tokens whose slots mostly hold <= 8: one
// launch shape (that of the 1-8-token kernels, shared memory for two
// n-tiles), one n-tile when the slot has <= 8 tokens, two otherwise.
#define WDMOE_GEMV_SLOT_DUAL(NAME, NMAT, U, GATED, DOWN)                                                    \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                                 \
        WDMOE_SLOT_PARAMS) {                                                                                \
        WDMOE_SLOT_PROLOGUE(DOWN)                                                                           \
        if (sT <= 8)                                                                                        \
            gemv_tile<1, NMAT, U, GATED>(reinterpret_cast<const uint4*>(sw), x, ldx, st, sT, k_tiles,       \
                                         rt_stride, kt_stride, splits, partial, counters, out, ldo, out_acc, \
                                         n_rows);                                                           \
        else                                                                                                \
            gemv_tile<2, NMAT, U, GATED>(reinterpret_cast<const uint4*>(sw), x, ldx, st, sT, k_tiles,       \
                                         rt_stride, kt_stride, splits, partial, counters, out, ldo, out_acc, \
                                         n_rows);                                                           \
    }

WDMOE_GEMV_SLOT_DUAL(slot_gated_dual_u4, 2, 4, true, false)
WDMOE_GEMV_SLOT_DUAL(slot_gated_dual_u8, 2, 8, true, false)
WDMOE_GEMV_SLOT_DUAL(slot_plain_dual_u4, 1, 4, false, true)
WDMOE_GEMV_SLOT_DUAL(slot_plain_dual_u8, 1, 8, false, true)
WDMOE_GEMV_SLOT_DUAL(slot_pair_dual_u4, 2, 4, false, true)
WDMOE_GEMV_SLOT_DUAL(slot_pair_dual_u8, 2, 8, false, true)

WDMOE_GEMV_SLOT(slot_gated_nt1_u4, 1, 2, 4, true, false)
WDMOE_GEMV_SLOT(slot_gated_nt2_u4, 2, 2, 4, true, false)
WDMOE_GEMV_SLOT(slot_gated_nt1_u8, 1, 2, 8, true, false)
WDMOE_GEMV_SLOT(slot_gated_nt2_u8, 2, 2, 8, true, false)
WDMOE_GEMV_SLOT(slot_plain_nt1_u4, 1, 1, 4, false, true)
WDMOE_GEMV_SLOT(slot_plain_nt2_u4, 2, 1, 4, false, true)
WDMOE_GEMV_SLOT(slot_plain_nt1_u8, 1, 1, 8, false, true)
WDMOE_GEMV_SLOT(slot_plain_nt2_u8, 2, 1, 8, false, true)
WDMOE_GEMV_SLOT(slot_pair_nt1_u4, 1, 2, 4, false, true)
WDMOE_GEMV_SLOT(slot_pair_nt2_u4, 2, 2, 4, false, true)
WDMOE_GEMV_SLOT(slot_pair_nt1_u8, 1, 2, 8, false, true)
WDMOE_GEMV_SLOT(slot_pair_nt2_u8, 2, 2, 8, false, true)
// The 1-8-token down kernel (32-row tiles, unroll 4: the default shape)
// with PRE = 2.
WDMOE_GEMV_SLOT_PRE(slot_pair_nt1_u4_p2, 1, 2, 4, false, true, 2)
WDMOE_GEMV_R_SLOT(slot_gated_r2_nt1_u2, 1, 2, 2, 2, true, false)
WDMOE_GEMV_R_SLOT(slot_gated_r2_nt2_u2, 2, 2, 2, 2, true, false)
WDMOE_GEMV_R_SLOT(slot_plain_r2_nt1_u2, 1, 1, 2, 2, false, true)
WDMOE_GEMV_R_SLOT(slot_plain_r2_nt2_u2, 2, 1, 2, 2, false, true)
WDMOE_GEMV_R_SLOT(slot_pair_r2_nt1_u2, 1, 2, 2, 2, false, true)
WDMOE_GEMV_R_SLOT(slot_pair_r2_nt2_u2, 2, 2, 2, 2, false, true)
