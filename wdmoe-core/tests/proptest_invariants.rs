//! Property tests of wdmoe-core's invariants, each in `f64` and in `f32`
//! (the `invariants!` macro instantiates every property for both).
//!
//! Input ranges: logits are drawn on a 1/8 grid in [-20, 20] and latencies in
//! [1e-4, 10] s (or `+inf`, unreachable). On that grid every sum and
//! difference of logits is exact in both precisions, and multiplying a
//! latency by a power of two is exact, so the shift and scale properties can
//! demand *identical* results: no rounding can flip a decision. The range
//! also keeps softmax probabilities far from underflow (e^-40 ≈ 4e-18 is a
//! normal `f32`), which the θ = 0 property needs: a probability that
//! underflows to 0 has WLR 0 and is dropped even at θ = 0 (κ = 0 ≤ θ), which
//! is docs/SPEC.md's rule, not a bug. The no-panic property uses arbitrary bit
//! patterns instead (NaN, ±inf, subnormals, huge values).

use proptest::prelude::*;
use wdmoe_core::bandwidth;
use wdmoe_core::latency::{DeviceLink, LatencyModel};
use wdmoe_core::link::shannon_rate_bps;
use wdmoe_core::select::{self, Policy, Selection};
use wdmoe_core::{Error, Float};

/// Capacity of the selections in these tests.
const N: usize = 32;

fn worst_latency<F: Float>(latency_s: &[F], experts: &[usize]) -> F {
    experts
        .iter()
        .map(|&q| latency_s[q])
        .fold(F::ZERO, |a, b| a.max_of(b))
}

/// The invariants every successful selection satisfies.
fn check_selection<F: Float>(s: &Selection<F, N>, n: usize, k: usize) -> Result<(), TestCaseError> {
    let e = s.experts();
    prop_assert!(!e.is_empty(), "no expert");
    prop_assert!(e.len() <= k);
    prop_assert_eq!(e.len(), s.weights().len());
    for (i, &q) in e.iter().enumerate() {
        prop_assert!(q < n);
        prop_assert!(!e[..i].contains(&q), "duplicate expert {}", q);
        prop_assert!(
            !s.dropped().contains(&q),
            "expert {} both kept and dropped",
            q
        );
    }
    let mut sum = 0.0;
    for &w in s.weights() {
        prop_assert!(w >= F::ZERO && w.is_finite(), "bad weight {}", w);
        sum += w.to_f64();
    }
    let tol = 8.0 * F::EPSILON.to_f64() * e.len() as f64;
    prop_assert!((sum - 1.0).abs() <= tol, "weights sum to {}", sum);
    if let Some(kappa) = s.kappa() {
        prop_assert!(kappa >= F::ZERO && kappa <= F::HALF, "kappa {}", kappa);
    }
    Ok(())
}

fn grid_logit<F: Float>() -> impl Strategy<Value = F> + Clone {
    (-160i32..=160).prop_map(|i| F::from_f64(i as f64 / 8.0))
}

fn latency<F: Float>() -> impl Strategy<Value = F> + Clone {
    prop_oneof![
        4 => (1e-4f64..10.0).prop_map(F::from_f64),
        1 => Just(F::INFINITY),
    ]
}

fn finite_latency<F: Float>() -> impl Strategy<Value = F> + Clone {
    (1e-4f64..10.0).prop_map(F::from_f64)
}

/// `(logits, latency_s, k)` with `1 ≤ k ≤ n ≤ 16`.
fn decision<F: Float>(
    lat: impl Strategy<Value = F> + Clone,
) -> impl Strategy<Value = (Vec<F>, Vec<F>, usize)> {
    (1usize..=16).prop_flat_map(move |n| {
        (
            proptest::collection::vec(grid_logit::<F>(), n),
            proptest::collection::vec(lat.clone(), n),
            1..=n,
        )
    })
}

/// Distinct logits (a shuffled subset of the grid), so no probability ties.
fn distinct_decision<F: Float>() -> impl Strategy<Value = (Vec<F>, Vec<F>, usize, Vec<usize>)> {
    (2usize..=16).prop_flat_map(|n| {
        (
            proptest::sample::subsequence((-160i32..=160).collect::<Vec<_>>(), n)
                .prop_shuffle()
                .prop_map(|v| v.into_iter().map(|i| F::from_f64(i as f64 / 8.0)).collect()),
            proptest::collection::vec(latency::<F>(), n),
            1..=n,
            Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
        )
    })
}

fn theta<F: Float>() -> impl Strategy<Value = F> {
    (0.0f64..=0.5).prop_map(|t| F::from_f64(t).min_of(F::HALF))
}

/// Any bit pattern: NaN, ±inf, subnormals, zero, huge values.
fn any_bits<F: Float>() -> impl Strategy<Value = F> {
    prop_oneof![
        any::<u64>().prop_map(|b| F::from_f64(f64::from_bits(b))),
        any::<u32>().prop_map(|b| F::from_f64(f32::from_bits(b) as f64)),
        Just(F::from_f64(f64::NAN)),
        Just(F::INFINITY),
        Just(-F::INFINITY),
        Just(F::ZERO),
        Just(F::from_f64(f64::MIN_POSITIVE / 4.0)),
        Just(F::from_f64(1e-45)),
        (-1e3f64..1e3).prop_map(F::from_f64),
    ]
}

fn device<F: Float>() -> impl Strategy<Value = DeviceLink<F>> {
    (
        0.1f64..20.0,
        -14.0f64..-6.0,
        0.01f64..1.0,
        -14.0f64..-6.0,
        11.0f64..13.5,
    )
        .prop_map(|(pd, gd, pu, gu, c)| {
            DeviceLink::new(
                F::from_f64(pd),
                F::from_f64(10f64.powf(gd)),
                F::from_f64(pu),
                F::from_f64(10f64.powf(gu)),
                F::from_f64(10f64.powf(c)),
            )
            .unwrap()
        })
}

fn model<F: Float>() -> LatencyModel<F> {
    // Mixtral: 65,536 bit, 352,393,216 FLOP; N0 = -174 dBm/Hz.
    LatencyModel::new(
        F::from_f64(65_536.0),
        F::from_f64(352_393_216.0),
        F::from_f64(3.981e-21),
    )
    .unwrap()
}

macro_rules! invariants {
    ($modname:ident, $F:ty) => {
        mod $modname {
            use super::*;
            type F = $F;

            proptest! {
                // 256 cases by default; PROPTEST_CASES=n for a deeper run.
                #![proptest_config(ProptestConfig::default())]

                /// 0 ≤ κ ≤ 0.5 for any weights ≥ 0 and latencies > 0 (or +inf).
                #[test]
                fn kappa_in_range(
                    wt in (1usize..=16).prop_flat_map(|n| (
                        proptest::collection::vec((0.0f64..1.0).prop_map(F::from_f64), n),
                        proptest::collection::vec(latency::<F>(), n),
                    ))
                ) {
                    let (w, t) = wt;
                    let k = select::kappa(&w, &t).unwrap();
                    prop_assert!((0.0..=0.5).contains(&k.to_f64()), "kappa {}", k);
                }

                /// At least one expert whenever one is reachable; weights ≥ 0,
                /// summing to 1; κ in range; experts a subset of top-k unless
                /// fallback; `dropped` = top-k minus the output.
                #[test]
                fn selection_invariants(
                    (z, t, k) in decision::<F>(latency::<F>()),
                    th in theta::<F>(),
                    max_drops in 0usize..4,
                ) {
                    let policy = Policy::new(k, th, max_drops).unwrap();
                    let top = select::top_k::<F, N>(&z, k).unwrap();
                    check_selection(&top, z.len(), k)?;
                    match select::select::<F, N>(&policy, &z, &t) {
                        Ok(s) => {
                            check_selection(&s, z.len(), k)?;
                            prop_assert!(s.experts().iter().all(|&q| t[q].is_finite()));
                            if s.fallback() {
                                prop_assert_eq!(s.experts().len(), 1);
                                prop_assert!(top.experts().iter().all(|&q| !t[q].is_finite()));
                            } else {
                                prop_assert!(s.experts().iter().all(|q| top.experts().contains(q)));
                            }
                            let mut all: Vec<usize> = s.experts().to_vec();
                            all.extend_from_slice(s.dropped());
                            if !s.fallback() {
                                all.sort_unstable();
                                let mut want = top.experts().to_vec();
                                want.sort_unstable();
                                prop_assert_eq!(all, want);
                            }
                            prop_assert!(s.experts().len() + max_drops >= top.experts().len()
                                - top.experts().iter().filter(|&&q| !t[q].is_finite()).count());
                        }
                        Err(e) => {
                            prop_assert_eq!(e, Error::NoReachableExpert);
                            prop_assert!(t.iter().all(|x| !x.is_finite()));
                        }
                    }
                }

                /// The per-token latency (eq. 7) after selection never exceeds
                /// plain top-k's.
                #[test]
                fn never_slower_than_top_k(
                    (z, t, k) in decision::<F>(latency::<F>()),
                    th in theta::<F>(),
                    max_drops in 0usize..4,
                ) {
                    let policy = Policy::new(k, th, max_drops).unwrap();
                    let top = select::top_k::<F, N>(&z, k).unwrap();
                    if let Ok(s) = select::select::<F, N>(&policy, &z, &t) {
                        let ts = worst_latency(&t, s.experts());
                        let tt = worst_latency(&t, top.experts());
                        prop_assert!(ts <= tt, "selection {} > top-k {}", ts, tt);
                    }
                }

                /// Raising θ never raises the latency nor adds experts (the
                /// experts at the larger θ are a subset).
                #[test]
                fn theta_monotone(
                    (z, t, k) in decision::<F>(latency::<F>()),
                    a in theta::<F>(),
                    b in theta::<F>(),
                    max_drops in 0usize..4,
                ) {
                    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                    let s_lo = select::select::<F, N>(&Policy::new(k, lo, max_drops).unwrap(), &z, &t);
                    let s_hi = select::select::<F, N>(&Policy::new(k, hi, max_drops).unwrap(), &z, &t);
                    match (s_lo, s_hi) {
                        (Ok(s_lo), Ok(s_hi)) => {
                            prop_assert!(s_hi.experts().len() <= s_lo.experts().len());
                            prop_assert!(s_hi.experts().iter().all(|q| s_lo.experts().contains(q)));
                            prop_assert!(worst_latency(&t, s_hi.experts()) <= worst_latency(&t, s_lo.experts()));
                        }
                        (Err(a), Err(b)) => prop_assert_eq!(a, b),
                        (a, b) => prop_assert!(false, "{:?} vs {:?}", a, b),
                    }
                }

                /// θ = 0 with every device reachable is plain top-k.
                #[test]
                fn theta_zero_is_top_k(
                    (z, t, k) in decision::<F>(finite_latency::<F>()),
                    max_drops in 0usize..4,
                ) {
                    let s = select::select::<F, N>(&Policy::new(k, F::ZERO, max_drops).unwrap(), &z, &t).unwrap();
                    let top = select::top_k::<F, N>(&z, k).unwrap();
                    prop_assert_eq!(s.experts(), top.experts());
                    prop_assert_eq!(s.weights(), top.weights());
                    prop_assert!(s.dropped().is_empty());
                    prop_assert!(!s.fallback());
                }

                /// Shifting every logit by one constant (softmax) or scaling
                /// every latency by one factor (κ is a ratio) changes nothing.
                /// Shifts on the 1/8 grid and power-of-two scales are exact.
                #[test]
                fn shift_and_scale_invariant(
                    (z, t, k) in decision::<F>(latency::<F>()),
                    th in theta::<F>(),
                    max_drops in 0usize..4,
                    shift in (-80i32..=80).prop_map(|i| F::from_f64(i as f64 / 8.0)),
                    scale_exp in -8i32..=8,
                ) {
                    let policy = Policy::new(k, th, max_drops).unwrap();
                    let base = select::select::<F, N>(&policy, &z, &t);
                    let z2: Vec<F> = z.iter().map(|&x| x + shift).collect();
                    let s = F::from_f64(2f64.powi(scale_exp));
                    let t2: Vec<F> = t.iter().map(|&x| x * s).collect();
                    prop_assert_eq!(&select::select::<F, N>(&policy, &z2, &t), &base);
                    prop_assert_eq!(&select::select::<F, N>(&policy, &z, &t2), &base);
                    prop_assert_eq!(&select::select::<F, N>(&policy, &z2, &t2), &base);
                }

                /// Relabelling the experts relabels the result (distinct
                /// logits, so no ties; weights compared to rounding, since the
                /// softmax sum is accumulated in a different order).
                #[test]
                fn relabelling_equivariant(
                    (z, t, k, perm) in distinct_decision::<F>(),
                    th in theta::<F>(),
                    max_drops in 0usize..4,
                ) {
                    let policy = Policy::new(k, th, max_drops).unwrap();
                    // Expert q of the original is expert perm[q] of the relabelled.
                    let n = z.len();
                    let mut z2 = vec![F::ZERO; n];
                    let mut t2 = vec![F::ZERO; n];
                    for q in 0..n {
                        z2[perm[q]] = z[q];
                        t2[perm[q]] = t[q];
                    }
                    let a = select::select::<F, N>(&policy, &z, &t);
                    let b = select::select::<F, N>(&policy, &z2, &t2);
                    match (a, b) {
                        (Ok(a), Ok(b)) => {
                            let mapped: Vec<usize> = a.experts().iter().map(|&q| perm[q]).collect();
                            prop_assert_eq!(&mapped[..], b.experts());
                            let mapped: Vec<usize> = a.dropped().iter().map(|&q| perm[q]).collect();
                            prop_assert_eq!(&mapped[..], b.dropped());
                            prop_assert_eq!(a.fallback(), b.fallback());
                            for (x, y) in a.weights().iter().zip(b.weights()) {
                                prop_assert!((x.to_f64() - y.to_f64()).abs() <= 16.0 * F::EPSILON.to_f64());
                            }
                        }
                        (Err(a), Err(b)) => prop_assert_eq!(a, b),
                        (a, b) => prop_assert!(false, "{:?} vs {:?}", a, b),
                    }
                }

                /// Rates grow with power, gain and bandwidth (doubling each;
                /// up to rounding when the rate saturates at low SNR).
                #[test]
                fn rate_monotone(
                    b in 3.0f64..9.0, p in -3.0f64..1.5, g in -16.0f64..-5.0, n0 in -22.0f64..-19.0,
                ) {
                    let f = |x: f64| F::from_f64(10f64.powf(x));
                    let (b, p, g, n0) = (f(b), f(p), f(g), f(n0));
                    let two = F::from_f64(2.0);
                    let r = shannon_rate_bps(b, p, g, n0).unwrap();
                    let slack = F::ONE - F::from_f64(4.0) * F::EPSILON;
                    prop_assert!(r > F::ZERO);
                    prop_assert!(shannon_rate_bps(b, two * p, g, n0).unwrap() > r);
                    prop_assert!(shannon_rate_bps(b, p, two * g, n0).unwrap() > r);
                    prop_assert!(shannon_rate_bps(two * b, p, g, n0).unwrap() >= r * slack);
                }

                /// No panic on any input: every entry point returns Ok or Err,
                /// and an Ok selection satisfies the invariants.
                #[test]
                fn never_panics(
                    zt in (0usize..=40).prop_flat_map(|n| (
                        proptest::collection::vec(any_bits::<F>(), n),
                        proptest::collection::vec(any_bits::<F>(), n),
                    )),
                    extra_t in proptest::collection::vec(any_bits::<F>(), 0..3),
                    k in 0usize..20,
                    th in any_bits::<F>(),
                    max_drops in 0usize..40,
                ) {
                    let (z, mut t) = zt;
                    if !extra_t.is_empty() && t.len() % 2 == 1 {
                        t.extend_from_slice(&extra_t); // sometimes mismatched lengths
                    }
                    let n = z.len();
                    if let Ok(policy) = Policy::new(k, th, max_drops) {
                        if let Ok(s) = select::select::<F, N>(&policy, &z, &t) {
                            check_selection(&s, n, k)?;
                        }
                    }
                    if let Ok(s) = select::top_k::<F, N>(&z, k) {
                        check_selection(&s, n, k)?;
                    }
                    if let Ok(kp) = select::kappa(&z, &t) {
                        prop_assert!((0.0..=0.5).contains(&kp.to_f64()), "kappa {}", kp);
                    }
                    let mut out = vec![F::ZERO; t.len()];
                    let _ = select::wlr(&z, &t, &mut out);
                    let _ = wdmoe_core::latency::batched_layer_latency_s(&[1u32; 3][..n.min(3)], &t[..n.min(3).min(t.len())]);
                    let _ = wdmoe_core::latency::sequential_prompt_latency_s(&t);
                    let _ = wdmoe_core::latency::token_latency_s(&t, &[0, 1, 2][..k.min(3)]);
                    let a = z.first().copied().unwrap_or(F::ONE);
                    let b = t.first().copied().unwrap_or(F::ONE);
                    let _ = shannon_rate_bps(a, b, th, a);
                    let _ = wdmoe_core::link::free_space_path_loss_db(a, b);
                    let _ = wdmoe_core::link::db_to_linear(a);
                    let _ = wdmoe_core::link::linear_to_db(a);
                    let _ = wdmoe_core::link::w_to_dbm(b);
                    let _ = wdmoe_core::link::dbm_to_w(b);
                    let _ = wdmoe_core::link::channel_power_gain(a, b);
                    let _ = wdmoe_core::link::noise_power_w(a, b, th);
                    let _ = wdmoe_core::latency::expert_latency_s(a, b, th, a, b);
                    if let Ok(m) = wdmoe_core::link::Uma::new(a, b) {
                        let _ = m.path_loss_db(th, a, true);
                        let _ = m.los_probability(b);
                    }
                    if let Ok(m) = wdmoe_core::link::UmiStreetCanyon::new(a, b) {
                        let _ = m.path_loss_db(th, a, false);
                        let _ = m.los_probability(b);
                    }
                    if let (Ok(m), Ok(d)) = (
                        LatencyModel::new(a, b, th),
                        DeviceLink::new(a, b, th, a, b),
                    ) {
                        let _ = m.expert_latency_s(&d, th);
                        let _ = m.latency_floor_s(&d);
                        let mut bw = [F::ZERO; 2];
                        let _ = bandwidth::min_max(&m, &[d, d], th, &mut bw);
                        let _ = bandwidth::even_split(th, &mut bw);
                    }
                }

                /// At the C ABI's capacity (256 experts, DeepSeek-size
                /// routers): the invariants hold and the latency never
                /// exceeds top-k's.
                #[test]
                fn invariants_at_256_experts(
                    zt in (1usize..=256).prop_flat_map(|n| (
                        proptest::collection::vec(grid_logit::<F>(), n),
                        proptest::collection::vec(latency::<F>(), n),
                        1..=n.min(8),
                    )),
                    th in theta::<F>(),
                    max_drops in 0usize..4,
                ) {
                    let (z, t, k) = zt;
                    let policy = Policy::new(k, th, max_drops).unwrap();
                    let top = select::top_k::<F, 256>(&z, k).unwrap();
                    match select::select::<F, 256>(&policy, &z, &t) {
                        Ok(s) => {
                            prop_assert!(!s.experts().is_empty());
                            let sum: f64 = s.weights().iter().map(|w| w.to_f64()).sum();
                            prop_assert!((sum - 1.0).abs() <= 64.0 * F::EPSILON.to_f64());
                            prop_assert!(worst_latency(&t, s.experts()) <= worst_latency(&t, top.experts()));
                        }
                        Err(e) => {
                            prop_assert_eq!(e, Error::NoReachableExpert);
                            prop_assert!(t.iter().all(|x| !x.is_finite()));
                        }
                    }
                }

                /// The min–max allocation hands out the total and its largest
                /// latency is never above the even split's.
                #[test]
                fn min_max_beats_even_split(
                    devs in proptest::collection::vec(device::<F>(), 1..=8),
                    total in 6.0f64..8.5,
                ) {
                    let m = model::<F>();
                    let total = F::from_f64(10f64.powf(total));
                    let n = devs.len();
                    let mut even = vec![F::ZERO; n];
                    bandwidth::even_split(total, &mut even).unwrap();
                    let even_worst = devs
                        .iter()
                        .zip(&even)
                        .map(|(d, &b)| m.expert_latency_s(d, b).unwrap())
                        .fold(F::ZERO, |a, b| a.max_of(b));
                    let mut b = vec![F::ZERO; n];
                    let worst = bandwidth::min_max(&m, &devs, total, &mut b).unwrap();
                    prop_assert!(worst <= even_worst, "min-max {} > even {}", worst, even_worst);
                    let sum: f64 = b.iter().map(|x| x.to_f64()).sum();
                    let tol = 16.0 * F::EPSILON.to_f64() * n as f64;
                    prop_assert!((sum / total.to_f64() - 1.0).abs() <= tol, "sum {} vs {}", sum, total);
                    prop_assert!(b.iter().all(|&x| x >= F::ZERO));
                    // The returned value is the largest latency of the allocation.
                    let actual = devs
                        .iter()
                        .zip(&b)
                        .map(|(d, &x)| m.expert_latency_s(d, x).unwrap())
                        .fold(F::ZERO, |a, b| a.max_of(b));
                    prop_assert_eq!(actual, worst);
                }
            }
        }
    };
}

invariants!(in_f64, f64);
invariants!(in_f32, f32);
