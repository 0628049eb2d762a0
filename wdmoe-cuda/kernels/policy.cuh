// The WDMoE selection policy on the device: a line-by-line port of
// wdmoe-core's `select` for f64 (docs/SPEC.md, Algorithm 1), bit-identical
// to the host (see router.cu). Included by router.cu (the device-planned
// decode step, policy_probe) and moe_route.cu (device routing at prefill
// sizes); one copy per translation unit, internal linkage. The rule exists
// here once on the GPU; wdmoe-core is its authority (the host checks every
// device-routed step against it).
#pragma once

#include "moe_plan.cuh"

// Policy inputs (by value). lat: per-expert latencies in seconds, used when
// lat_host is null (else lat_host[tok * e + q], page-locked host memory).
struct PolicyArgs {
    int k;
    int max_drops;
    double theta;
    double lat[WDMOE_MAX_SLOTS];
    // Speculative L2 prefetch while the policy runs: n_pf byte ranges
    // (offset, length; multiples of 16) of the packed W1|W3 of token 0's
    // lowest-index top-k candidate (slot 0's expert unless the policy drops
    // it), the ranges the first slot kernel reads first.
    int n_pf;
    int profile;  // nonzero: %globaltimer stamps into the report (block 0, 1 token)
    long long pf_off[8];
    long long pf_len[8];
};

namespace {

__device__ __forceinline__ unsigned long long globaltimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}

// exp(x) computed exactly as wdmoe-core computes it on the host (the libm
// crate's f64 exp: the FreeBSD msun algorithm, argument reduction by
// k ln2 with a two-part ln2 and a degree-5 rational approximation), every
// operation with explicit round-to-nearest intrinsics so that no multiply-add
// is contracted into an fma: the same bits as the host for every result in
// the normal range (softmax arguments are <= 0 and never near underflow).
__device__ double exp_host(double x) {
    const double LN2HI = 6.93147180369123816490e-01, LN2LO = 1.90821492927058770002e-10,
                 INVLN2 = 1.44269504088896338700e+00, P1 = 1.66666666666666019037e-01,
                 P2 = -2.77777777770155933842e-03, P3 = 6.61375632143793436117e-05,
                 P4 = -1.65339022054652515390e-06, P5 = 4.13813679705723846039e-08;
    unsigned hx = (unsigned)__double2hiint(x);
    const int sign = (int)(hx >> 31);
    hx &= 0x7fffffffu;
    if (hx >= 0x4086232bu) {  // |x| >= 708.39
        if (isnan(x)) return x;
        if (x > 709.782712893383973096) return (double)INFINITY;
        if (x < -745.13321910194110842) return 0.0;
    }
    double hi, lo;
    int k;
    if (hx > 0x3fd62e42u) {  // |x| > 0.5 ln2
        if (hx >= 0x3ff0a2b2u)
            k = (int)__dadd_rn(__dmul_rn(INVLN2, x), sign ? -0.5 : 0.5);
        else
            k = 1 - sign - sign;
        hi = __dsub_rn(x, __dmul_rn((double)k, LN2HI));
        lo = __dmul_rn((double)k, LN2LO);
        x = __dsub_rn(hi, lo);
    } else if (hx > 0x3e300000u) {  // |x| > 2^-28
        k = 0;
        hi = x;
        lo = 0.0;
    } else {
        return __dadd_rn(1.0, x);
    }
    const double xx = __dmul_rn(x, x);
    double poly = __dadd_rn(P4, __dmul_rn(xx, P5));
    poly = __dadd_rn(P3, __dmul_rn(xx, poly));
    poly = __dadd_rn(P2, __dmul_rn(xx, poly));
    poly = __dadd_rn(P1, __dmul_rn(xx, poly));
    const double c = __dsub_rn(x, __dmul_rn(xx, poly));
    const double q = __ddiv_rn(__dmul_rn(x, c), __dsub_rn(2.0, c));
    const double y = __dadd_rn(1.0, __dadd_rn(__dsub_rn(q, lo), hi));
    if (k == 0) return y;
    // y * 2^k: exact while the result is normal (k >= -1021; y < 2), as
    // the host's scalbn.
    if (k >= -1021 && k <= 1023) return __dmul_rn(y, __hiloint2double((k + 1023) << 20, 0));
    return ldexp(y, k);
}

__device__ __forceinline__ bool ranks_before(const double* p, int a, int b) {
    return p[a] > p[b] || (p[a] == p[b] && a < b);
}

__device__ __forceinline__ double scaled_wlr(double w, double w_max, double t, double t_min) {
    const double ws = w_max > 0.0 ? w / w_max : 0.0;
    if (t_min == (double)INFINITY) return 0.0;
    return ws / (t / t_min);
}

// wdmoe-core's softmax (f64) of e logits into p, serially (policy_probe).
__device__ void softmax_host(const float* logits, int e, double* p) {
    double mx = (double)logits[0];
    for (int q = 0; q < e; ++q)
        if ((double)logits[q] > mx) mx = (double)logits[q];
    double sum = 0.0;
    for (int q = 0; q < e; ++q) {
        p[q] = exp_host(__dsub_rn((double)logits[q], mx));
        sum += p[q];
    }
    for (int q = 0; q < e; ++q) p[q] = p[q] / sum;
}

// wdmoe-core `select` (f64) for one token from its softmax probabilities p:
// experts into s (in the order the policy keeps them), renormalised weights
// into w; returns their count, 0 if no expert is reachable.
__device__ int select_from_probs(const double* p, int e, const PolicyArgs& pa, const double* lat, int* top,
                                 int* s, double* w) {
    // Top-k by probability (ties: lower index first).
    unsigned long long taken = 0ull;
    int nt = 0;
    for (int i = 0; i < pa.k; ++i) {
        int best = -1;
        for (int q = 0; q < e; ++q) {
            if (taken >> q & 1ull) continue;
            if (best < 0 || ranks_before(p, q, best)) best = q;
        }
        if (best >= 0) {
            taken |= 1ull << best;
            top[nt++] = best;
        }
    }
    // Step 3: unreachable experts (infinite latency) leave S; fallback.
    int ns = 0;
    for (int i = 0; i < nt; ++i)
        if (isfinite(lat[top[i]])) s[ns++] = top[i];
    if (ns == 0) {
        int best = -1;
        for (int q = 0; q < e; ++q)
            if (isfinite(lat[q]) && (best < 0 || ranks_before(p, q, best))) best = q;
        if (best < 0) return 0;
        s[ns++] = best;
    }
    // Step 4: drop the lowest-WLR expert while kappa <= theta.
    double p_max = 0.0, t_min = (double)INFINITY;
    for (int i = 0; i < ns; ++i) {
        if (p[s[i]] > p_max) p_max = p[s[i]];
        if (lat[s[i]] < t_min) t_min = lat[s[i]];
    }
    for (int d = 0; d < pa.max_drops; ++d) {
        if (ns <= 1) break;
        double lo = (double)INFINITY, hi = 0.0;
        int worst = 0;
        for (int i = 0; i < ns; ++i) {
            const int q = s[i];
            const double r = scaled_wlr(p[q], p_max, lat[q], t_min);
            if (r > hi) hi = r;
            const int wq = s[worst];
            if (i == 0 || r < lo || (r == lo && (p[q] < p[wq] || (p[q] == p[wq] && q > wq)))) {
                lo = r;
                worst = i;
            }
        }
        const double kappa = hi > 0.0 ? lo / (lo + hi) : 0.5;
        if (kappa <= pa.theta) {
            for (int i = worst; i + 1 < ns; ++i) s[i] = s[i + 1];
            --ns;
        } else {
            break;
        }
    }
    double total = 0.0;
    for (int i = 0; i < ns; ++i) total += p[s[i]];
    for (int i = 0; i < ns; ++i) w[i] = total > 0.0 ? p[s[i]] / total : 1.0 / (double)ns;
    return ns;
}

// select_from_probs by warp 0 for e <= 32, the same result in fewer
// dependent steps: ranks computed by all lanes at once (lane q: how many
// experts rank before q), the WLR of each member of S by its own lane (they
// do not change between drop rounds: p_max and t_min are fixed), the drop
// rounds and order-dependent sums by lane 0 in the host's order, the weight
// divisions by one lane each; its own scalars in shared memory are per
// warp, so that each warp of a block may run a token. p, lat: shared; sc: shared scratch of
// 3 x WDMOE_MAX_SLOTS ints (order, then r as doubles); out: a `sel` row.
__device__ void select_warp(const double* p, const double* lat, int e, const PolicyArgs& pa, int lane, int* order,
                            double* r, int* out) {
    // (one slot per warp: a block may run one token per warp)
    __shared__ double sh_pmax[32], sh_tmin[32], sh_total[32];
    __shared__ int sh_ns[32];
    const int wi = threadIdx.x >> 5;
    double& s_pmax = sh_pmax[wi];
    double& s_tmin = sh_tmin[wi];
    double& s_total = sh_total[wi];
    int& s_ns = sh_ns[wi];
    if (lane < e) {
        int rank = 0;
        for (int j = 0; j < e; ++j) rank += ranks_before(p, j, lane);
        if (rank < pa.k) order[rank] = lane;
    }
    __syncwarp();
    if (lane == 0) {
        int ns = 0;
        for (int i = 0; i < pa.k; ++i)
            if (isfinite(lat[order[i]])) order[ns++] = order[i];
        if (ns == 0) {
            int best = -1;
            for (int q = 0; q < e; ++q)
                if (isfinite(lat[q]) && (best < 0 || ranks_before(p, q, best))) best = q;
            if (best >= 0) order[ns++] = best;
        }
        double p_max = 0.0, t_min = (double)INFINITY;
        for (int i = 0; i < ns; ++i) {
            if (p[order[i]] > p_max) p_max = p[order[i]];
            if (lat[order[i]] < t_min) t_min = lat[order[i]];
        }
        s_ns = ns;
        s_pmax = p_max;
        s_tmin = t_min;
    }
    __syncwarp();
    int ns = s_ns;
    if (lane < ns) r[lane] = scaled_wlr(p[order[lane]], s_pmax, lat[order[lane]], s_tmin);
    __syncwarp();
    if (lane == 0) {
        for (int d = 0; d < pa.max_drops; ++d) {
            if (ns <= 1) break;
            double lo = (double)INFINITY, hi = 0.0;
            int worst = 0;
            for (int i = 0; i < ns; ++i) {
                const int q = order[i], wq = order[worst];
                if (r[i] > hi) hi = r[i];
                if (i == 0 || r[i] < lo || (r[i] == lo && (p[q] < p[wq] || (p[q] == p[wq] && q > wq)))) {
                    lo = r[i];
                    worst = i;
                }
            }
            const double kappa = hi > 0.0 ? lo / (lo + hi) : 0.5;
            if (kappa <= pa.theta) {
                for (int i = worst; i + 1 < ns; ++i) {
                    order[i] = order[i + 1];
                    r[i] = r[i + 1];
                }
                --ns;
            } else {
                break;
            }
        }
        double total = 0.0;
        for (int i = 0; i < ns; ++i) total += p[order[i]];
        s_total = total;
        s_ns = ns;
        out[0] = ns;
    }
    __syncwarp();
    ns = s_ns;
    if (lane < ns) {
        const int q = order[lane];
        const double w = s_total > 0.0 ? p[q] / s_total : 1.0 / (double)ns;
        out[1 + lane] = q;
        out[1 + WDMOE_MAX_SLOTS + lane] = __float_as_int(__double2float_rn(w));
    }
    __syncwarp();
}

// One token's policy by one warp (all 32 lanes converged; no block-wide
// barrier): wdmoe-core's softmax (f64: exp(z - max) per expert in parallel,
// summed by lane 0 in expert order, as on the host) of the e logits `sl`
// into `p`, then `select` with latencies `lat` (seconds, +inf unreachable).
// The choice goes to `sel`, a row of 1 + 2 WDMOE_MAX_SLOTS ints: count,
// experts in the order the policy keeps them, fp32 weights as bits (count 0
// when a logit is not finite, k is out of 1..=e, or no expert is
// reachable). sl, lat, p (e doubles), total (one double), top, s, w
// (WDMOE_MAX_SLOTS each) and sel are shared memory of the calling block.
// stamp: when not null, lane 0 writes %globaltimer there between the
// softmax and the policy (profiling). Ends with __syncwarp().
__device__ __forceinline__ void token_policy(const float* sl, int e, const PolicyArgs& pa, const double* lat, int lane, double* p,
                             double* total, int* top, int* s, double* w, int* sel, unsigned long long* stamp) {
    float mx = -INFINITY;
    bool finite = true;
    for (int q = lane; q < e; q += 32) {
        mx = fmaxf(mx, sl[q]);
        finite = finite && isfinite(sl[q]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    finite = __all_sync(0xffffffffu, finite);
    for (int q = lane; q < e; q += 32) p[q] = exp_host(__dsub_rn((double)sl[q], (double)mx));
    __syncwarp();
    if (lane == 0) {
        double t = 0.0;
        for (int q = 0; q < e; ++q) t += p[q];
        *total = t;
    }
    __syncwarp();
    for (int q = lane; q < e; q += 32) p[q] = p[q] / *total;
    __syncwarp();
    if (stamp && lane == 0) *stamp = globaltimer();
    const bool ok = finite && pa.k >= 1 && pa.k <= e;
    if (ok && e <= 32) {
        select_warp(p, lat, e, pa, lane, top, w, sel);
    } else if (lane == 0) {
        int ns = 0;
        if (ok) {
            ns = select_from_probs(p, e, pa, lat, top, s, w);
            for (int i = 0; i < ns; ++i) {
                sel[1 + i] = s[i];
                sel[1 + WDMOE_MAX_SLOTS + i] = __float_as_int(__double2float_rn(w[i]));
            }
        }
        sel[0] = ns;
    }
    __syncwarp();
}

}  // namespace
