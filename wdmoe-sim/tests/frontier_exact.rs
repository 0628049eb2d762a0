//! The exact per-token selector (`frontier::exact::Staircase`) against
//! brute force over every subset on random small cases, and a worked
//! example. The frontier study on simulator runs is in tests/frontier.rs.

use proptest::prelude::*;
use wdmoe_sim::frontier::exact::{Candidate, Staircase};

// ---------------------------------------------------------------- brute force

/// Every non-empty subset of at most `k` candidates: (max latency, weight).
fn subsets(cands: &[Candidate], k: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for mask in 1u32..(1u32 << cands.len()) {
        if mask.count_ones() as usize > k {
            continue;
        }
        let (mut t, mut w) = (0.0_f64, 0.0);
        for (i, c) in cands.iter().enumerate() {
            if mask >> i & 1 == 1 {
                t = t.max(c.latency_s);
                w += c.weight;
            }
        }
        out.push((t, w));
    }
    out
}

fn cands_strategy() -> impl Strategy<Value = (Vec<Candidate>, usize)> {
    (1usize..=8, 1usize..=3).prop_flat_map(|(n, k)| {
        (
            prop::collection::vec((0.001f64..1.0, 1usize..40), n),
            Just(k.min(n)),
        )
            .prop_map(|(v, k)| {
                // Weights in descending order (the router's rank); latencies on a
                // coarse grid so that ties happen.
                let mut w: Vec<f64> = v.iter().map(|x| x.0).collect();
                w.sort_by(|a, b| b.total_cmp(a));
                let top: f64 = w[..k].iter().sum();
                let cands = w
                    .iter()
                    .zip(&v)
                    .enumerate()
                    .map(|(q, (&wq, &(_, t)))| Candidate {
                        expert: q,
                        weight: wq / top,
                        latency_s: t as f64 * 1e-3,
                    })
                    .collect();
                (cands, k)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Primal, dual and Lagrangian answers of the staircase equal brute force
    /// over every subset; the two builders agree.
    #[test]
    fn staircase_matches_brute_force((cands, k) in cands_strategy(), rho in 0.0f64..=1.0, budget_ms in 0.5f64..45.0, lambda_ms in 0.0f64..100.0) {
        let mut st = Staircase::default();
        st.from_max_latency(&cands, k);
        let all = subsets(&cands, k);
        // Primal.
        let need = rho * (1.0 - 1e-12);
        let want = all.iter().filter(|s| s.1 >= need).map(|s| s.0).fold(f64::INFINITY, f64::min);
        let (step, ok) = st.min_latency(rho).unwrap();
        if want.is_finite() {
            prop_assert!(ok);
            prop_assert_eq!(step.latency_s, want);
        } else {
            prop_assert!(!ok);
        }
        // Dual.
        let budget = budget_ms * 1e-3;
        let best_w = all.iter().filter(|s| s.0 <= budget).map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
        let (step, ok) = st.max_weight(budget).unwrap();
        if best_w.is_finite() {
            prop_assert!(ok);
            prop_assert!((step.weight - best_w).abs() <= 1e-12, "{} vs {}", step.weight, best_w);
            prop_assert!(step.latency_s <= budget);
        } else {
            prop_assert!(!ok);
        }
        // Lagrangian.
        let l = lambda_ms * 1e-3;
        let best = all.iter().map(|s| s.0 - l * s.1).fold(f64::INFINITY, f64::min);
        let step = st.min_lagrangian(l).unwrap();
        prop_assert!((step.latency_s - l * step.weight - best).abs() <= 1e-12);
        // The exhaustive builder with the same (max) latency: the same staircase.
        let mut ex = Staircase::default();
        ex.from_subsets(&cands, k, |e| -> Result<f64, ()> {
            Ok(e.iter().map(|&q| cands[q].latency_s).fold(0.0, f64::max))
        }).unwrap();
        prop_assert_eq!(ex.steps().len(), st.steps().len());
        for (a, b) in ex.steps().iter().zip(st.steps()) {
            prop_assert_eq!(a.latency_s, b.latency_s);
            prop_assert!((a.weight - b.weight).abs() <= 1e-12);
            // Each step's members really have that latency and weight.
            let t = st.members(b).iter().map(|&q| cands[q].latency_s).fold(0.0, f64::max);
            let w: f64 = st.members(b).iter().map(|&q| cands[q].weight).sum();
            prop_assert_eq!(t, b.latency_s);
            prop_assert!((w - b.weight).abs() <= 1e-12);
            prop_assert!(st.members(b).len() <= k);
        }
    }

    /// Primal and dual agree at every frontier point: the primal's answer at
    /// ρ is the dual's at that answer's latency, and back.
    #[test]
    fn primal_and_dual_agree((cands, k) in cands_strategy(), rho in 0.0f64..=1.0) {
        let mut st = Staircase::default();
        st.from_max_latency(&cands, k);
        let (p, _) = st.min_latency(rho).unwrap();
        let (d, ok) = st.max_weight(p.latency_s).unwrap();
        prop_assert!(ok);
        prop_assert_eq!(d, p);
        let (p2, ok) = st.min_latency(d.weight).unwrap();
        prop_assert!(ok);
        prop_assert_eq!(p2, d);
        // The staircase is strictly increasing in both.
        for w in st.steps().windows(2) {
            prop_assert!(w[0].latency_s < w[1].latency_s && w[0].weight < w[1].weight);
        }
    }
}

#[test]
fn rho_one_is_top_k_and_small_rho_is_the_fastest_expert() {
    // Weights 0.5, 0.3, 0.15, 0.05 (top-2 sum 0.8); latencies 4, 9, 1, 2 ms.
    let raw = [(0.5, 4e-3), (0.3, 9e-3), (0.15, 1e-3), (0.05, 2e-3)];
    let cands: Vec<Candidate> = raw
        .iter()
        .enumerate()
        .map(|(q, &(w, t))| Candidate {
            expert: q,
            weight: w / 0.8,
            latency_s: t,
        })
        .collect();
    let mut st = Staircase::default();
    st.from_max_latency(&cands, 2);
    let (s, ok) = st.min_latency(1.0).unwrap();
    assert!(ok);
    assert_eq!(st.members(s), &[0, 1]);
    assert_eq!(s.latency_s, 9e-3);
    // ρ = 0.8: 0.64 needed of the 0.8: {0, 2} keeps 0.65/0.8 = 0.8125 at 4 ms.
    let (s, _) = st.min_latency(0.8).unwrap();
    assert_eq!(st.members(s), &[0, 2]);
    assert_eq!(s.latency_s, 4e-3);
    assert!((s.weight - 0.8125).abs() < 1e-15);
    // ρ = 0.2 (0.16): expert 2 alone (0.15) is not enough, {2, 3} = 0.2 at 2 ms.
    let (s, _) = st.min_latency(0.2).unwrap();
    assert_eq!(st.members(s), &[2, 3]);
    assert_eq!(s.latency_s, 2e-3);
    // ρ = 0: the fastest expert.
    let (s, _) = st.min_latency(0.0).unwrap();
    assert_eq!(st.members(s), &[2]);
}
