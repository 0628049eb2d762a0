//! The selection policy (docs/SPEC.md, "The selection policy, exactly") on any
//! input: every success satisfies the spec's invariants, every failure is an
//! `Error` value, and a valid input never fails.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wdmoe_core::select::{kappa, select, top_k, wlr, Policy, Selection};
use wdmoe_fuzz::{FuzzFloat, SelectInput, CAPACITY};

fn is_subsequence(sub: &[usize], of: &[usize]) -> bool {
    let mut it = of.iter();
    sub.iter().all(|x| it.any(|y| y == x))
}

fn distinct(xs: &[usize]) -> bool {
    xs.iter().enumerate().all(|(i, x)| !xs[..i].contains(x))
}

fn check_weights<F: FuzzFloat, const N: usize>(s: &Selection<F, N>) {
    assert_eq!(s.weights().len(), s.experts().len());
    let mut sum = 0.0;
    let mut prev = f64::INFINITY;
    for &w in s.weights() {
        let w = w.to_f64();
        assert!(w.is_finite() && w >= 0.0, "weight {w}");
        // Experts come in descending router probability, so do their weights.
        assert!(
            w <= prev,
            "weights not in descending order: {:?}",
            s.weights()
        );
        prev = w;
        sum += w;
    }
    assert!((sum - 1.0).abs() <= F::SUM_TOL, "weights sum to {sum}");
}

fn run<F: FuzzFloat>(inp: &SelectInput) {
    let logits: Vec<F> = inp.logits.iter().map(|&x| F::from_num(x)).collect();
    let lat: Vec<F> = inp.latency_s.iter().map(|&x| F::from_num(x)).collect();
    let theta = F::from_num(inp.theta);
    let n = logits.len();
    let k = inp.k;

    // The helpers of eq. (9) and (10) on the raw values.
    if let Ok(kp) = kappa(&logits, &lat) {
        let kp = kp.to_f64();
        assert!((0.0..=0.5).contains(&kp), "kappa() = {kp}");
    }
    let mut out = vec![F::ZERO; n];
    if wlr(&logits, &lat, &mut out).is_ok() {
        assert!(out.iter().all(|r| !r.is_nan() && r.to_f64() >= 0.0));
    }

    let logits_ok =
        n > 0 && n <= CAPACITY && k >= 1 && k <= n && logits.iter().all(|z| z.is_finite());
    let top = match top_k::<F, CAPACITY>(&logits, k) {
        Ok(t) => {
            assert!(logits_ok, "top_k accepted invalid input");
            assert_eq!(t.experts().len(), k);
            assert!(distinct(t.experts()) && t.experts().iter().all(|&q| q < n));
            assert!(t.dropped().is_empty() && t.kappa().is_none() && !t.fallback());
            check_weights(&t);
            t
        }
        Err(e) => {
            assert!(!logits_ok, "top_k rejected valid input: {e}");
            assert!(!e.to_string().is_empty());
            return;
        }
    };

    let theta_ok = !theta.is_nan() && theta >= F::ZERO && theta <= F::HALF;
    let policy = match Policy::new(k, theta, inp.max_drops) {
        Ok(p) => {
            assert!(theta_ok, "Policy::new accepted theta {theta}");
            p
        }
        Err(e) => {
            assert!(!theta_ok, "Policy::new rejected theta {theta}: {e}");
            return;
        }
    };

    let reachable = |q: usize| lat[q].is_finite();
    let lat_ok =
        lat.len() == n && lat.iter().all(|&t| !t.is_nan() && t > F::ZERO) && (0..n).any(reachable);
    let s = match select::<F, CAPACITY>(&policy, &logits, &lat) {
        Ok(s) => s,
        Err(e) => {
            assert!(!lat_ok, "select rejected valid input: {e}");
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert!(lat_ok, "select accepted invalid latencies");

    let experts = s.experts();
    let top = top.experts();
    let reachable_top = top.iter().filter(|&&q| reachable(q)).count();
    assert!(!experts.is_empty(), "no expert");
    assert!(distinct(experts) && experts.iter().all(|&q| q < n));
    assert!(
        experts.iter().all(|&q| reachable(q)),
        "unreachable expert selected"
    );
    check_weights(&s);
    if let Some(kp) = s.kappa() {
        let kp = kp.to_f64();
        assert!((0.0..=0.5).contains(&kp), "kappa {kp}");
    }
    assert_eq!(
        s.kappa().is_some(),
        inp.max_drops > 0 && reachable_top >= 2,
        "kappa presence"
    );
    assert!(distinct(s.dropped()));
    assert!(
        is_subsequence(s.dropped(), top),
        "dropped ⊄ top-k (in order)"
    );
    assert!(s.dropped().iter().all(|q| !experts.contains(q)));
    assert_eq!(s.fallback(), reachable_top == 0, "fallback flag");
    if s.fallback() {
        assert_eq!(experts.len(), 1);
        assert_eq!(s.dropped(), top);
        let e = experts[0];
        // The best reachable expert by router weight (ties: lower index).
        for q in (0..n).filter(|&q| reachable(q)) {
            assert!(
                !(logits[q] > logits[e] && q < e),
                "fallback {e} but {q} ranks before"
            );
        }
    } else {
        assert!(is_subsequence(experts, top), "experts ⊄ top-k (in order)");
        assert_eq!(experts.len() + s.dropped().len(), k);
        assert!(
            experts.len() + inp.max_drops >= reachable_top,
            "too many drops"
        );
        // Eq. (7) after selection never exceeds plain top-k's.
        let t_sel = s.token_latency_s(&lat).unwrap();
        let t_top = wdmoe_core::latency::token_latency_s(&lat, top).unwrap();
        assert!(t_sel <= t_top);
    }

    // Raising θ or max_drops only removes experts (the drop order is fixed).
    for (th, md) in [
        (F::HALF, inp.max_drops),
        (theta, inp.max_drops.saturating_add(1)),
    ] {
        let p2 = Policy::new(k, th, md).unwrap();
        let s2 = select::<F, CAPACITY>(&p2, &logits, &lat).unwrap();
        assert!(
            s2.experts().iter().all(|q| experts.contains(q)),
            "θ {th} / max_drops {md} added experts: {:?} vs {:?}",
            s2.experts(),
            experts
        );
    }
}

fuzz_target!(|inp: SelectInput| {
    if inp.f32 {
        run::<f32>(&inp);
    } else {
        run::<f64>(&inp);
    }
});
