// Shared layouts of the decode MoE step (included by ffn_decode.cu and
// router.cu; mirrored by #[repr(C)] structs in src/ffn.rs and src/router.rs).
#pragma once

// The tokens of one decode launch (at most 16). gather: B rows are x[idx[n]]
// (else x[n]); the combine epilogue writes row idx[t] (else t) with weight
// w[t] (else 1).
struct TokList {
    int gather;
    int scatter;
    int idx[16];
    float w[16];
};

// Most experts (and so slots) of a device-planned step.
#define WDMOE_MAX_SLOTS 64

// One slot of a device-built plan (router_policy): the packed weights of the
// expert that runs in this slot and its tokens. w13 == 0: the slot is unused
// this step (its kernels exit).
struct Slot {
    unsigned long long w13;  // packed W1|W3 (ExpertWeights::w13)
    unsigned long long w2;   // packed W2
    int expert;              // router index of the expert, -1 when unused
    int T;                   // tokens (1..16)
    TokList toks;            // gather = scatter = 1, idx = token rows, w = combine weights
};

// A 1-token plan's candidates (router_policy, before its policy runs): the
// packed W1|W3 of the token's top-k experts by logit in index order, w13[z]
// for plan slot z (0: none), then seq. The policy keeps a subset of the
// top-k (wdmoe-core's contract), and the 1-token plan puts a kept expert in
// the slot of its candidate position (a dropped candidate's slot is
// unused), so a gate/up kernel can stream its candidate's weights while the
// policy runs. Lives after the plan's slots, its ready flag and a pad word.
// verdict[z] (written with the plan, a hint for the streaming kernels):
// seq when slot z runs its candidate, seq | SPEC_DROPPED when it does not
// (dropped, or the rare layout where the plan put another expert there).
struct SpecPlan {
    unsigned long long w13[WDMOE_MAX_SLOTS];
    unsigned seq;
    unsigned pad;
    unsigned verdict[WDMOE_MAX_SLOTS];
};
#define WDMOE_SPEC_DROPPED 0x80000000u

__device__ __forceinline__ SpecPlan* spec_plan(Slot* plan) {
    return reinterpret_cast<SpecPlan*>(reinterpret_cast<unsigned*>(plan + WDMOE_MAX_SLOTS) + 2);
}
__device__ __forceinline__ const SpecPlan* spec_plan(const Slot* plan) {
    return reinterpret_cast<const SpecPlan*>(reinterpret_cast<const unsigned*>(plan + WDMOE_MAX_SLOTS) + 2);
}
