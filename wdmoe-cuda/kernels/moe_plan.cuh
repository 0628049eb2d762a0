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
