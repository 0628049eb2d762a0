//! The slice-based selection (`select_into`, `top_k_into`) that firmware and
//! the C ABI use, and the `const` policy constructors: the same decisions as
//! the owned API, on caller memory, with nothing written on an error.

use proptest::prelude::*;
use wdmoe_core::select::{self, Policy, SelectionInfo};
use wdmoe_core::Error;

#[test]
fn const_new_validates_like_new() {
    for k in [0usize, 1, 2, 8] {
        for theta in [-0.1_f64, 0.0, 0.2, 0.5, 0.6, f64::NAN, f64::INFINITY] {
            for max_drops in [0usize, 1, 3] {
                assert_eq!(
                    Policy::<f64>::const_new(k, theta, max_drops),
                    Policy::new(k, theta, max_drops),
                    "k {k}, theta {theta}"
                );
                let t = theta as f32;
                assert_eq!(
                    Policy::<f32>::const_new(k, t, max_drops),
                    Policy::new(k, t, max_drops)
                );
            }
        }
    }
    // In a static, as firmware holds it.
    static P: Policy<f32> = match Policy::<f32>::const_new(2, 0.2, 1) {
        Ok(p) => p,
        Err(_) => panic!(),
    };
    assert_eq!((P.k(), P.theta(), P.max_drops()), (2, 0.2, 1));
}

#[test]
fn select_into_on_exact_buffers_with_small_indices() {
    // The select() doctest: expert 1 is dropped (κ = 0.14154 ≤ 0.2).
    let policy = Policy::new(2, 0.2_f64, 1).unwrap();
    let z = [0.5, 1.0, -2.0, 0.0];
    let t = [0.010, 0.100, 0.010, 0.010];
    let (mut p, mut e, mut w, mut d) = ([0.0; 4], [9_u8; 2], [9.0; 2], [9_u8; 2]);
    let info = select::select_into(&policy, &z, &t, &mut p, &mut e, &mut w, &mut d).unwrap();
    assert_eq!(
        (info.n_experts, info.n_dropped, info.fallback),
        (1, 1, false)
    );
    assert!((info.kappa.unwrap() - 0.141_536_674_488_652_6).abs() < 1e-12);
    assert_eq!((e[0], w[0], d[0]), (0, 1.0, 1));
    // softmax: p1 = e^1 / (e^0.5 + e^1 + e^-2 + 1) = 0.494023020677
    assert!((p[1] - 0.494_023_020_677_160_1).abs() < 1e-12);
}

#[test]
fn select_into_refuses_short_buffers_and_writes_nothing_on_error() {
    let policy = Policy::new(2, 0.2_f32, 1).unwrap();
    let z = [0.5_f32, 1.0, -2.0, 0.0];
    let t = [0.010_f32, 0.100, 0.010, 0.010];
    let mut p = [7.0_f32; 4];
    let (mut e, mut w, mut d) = ([7_u16; 2], [7.0_f32; 2], [7_u16; 2]);
    let untouched = |p: &[f32], e: &[u16], w: &[f32], d: &[u16]| {
        p.iter().all(|&x| x == 7.0)
            && e.iter().all(|&x| x == 7)
            && w.iter().all(|&x| x == 7.0)
            && d.iter().all(|&x| x == 7)
    };
    // probs shorter than n; outputs shorter than k.
    let r = select::select_into(&policy, &z, &t, &mut p[..3], &mut e, &mut w, &mut d);
    assert_eq!(r, Err(Error::CapacityExceeded));
    let r = select::select_into(&policy, &z, &t, &mut p, &mut e[..1], &mut w, &mut d);
    assert_eq!(r, Err(Error::CapacityExceeded));
    // Every latency +inf: refused before anything is written.
    let inf = [f32::INFINITY; 4];
    let r = select::select_into(&policy, &z, &inf, &mut p, &mut e, &mut w, &mut d);
    assert_eq!(r, Err(Error::NoReachableExpert));
    let r = select::select_into(&policy, &z, &t[..3], &mut p, &mut e, &mut w, &mut d);
    assert_eq!(r, Err(Error::LengthMismatch));
    assert!(untouched(&p, &e, &w, &d));
    // More experts than u8 can number.
    let z = [0.0_f32; 257];
    let t = [1.0_f32; 257];
    let mut p = [0.0_f32; 257];
    let (mut e, mut w, mut d) = ([0_u8; 2], [0.0_f32; 2], [0_u8; 2]);
    let r = select::select_into(&policy, &z, &t, &mut p, &mut e, &mut w, &mut d);
    assert_eq!(r, Err(Error::CapacityExceeded));
    let (mut e, mut d) = ([0_u16; 2], [0_u16; 2]);
    let info = select::select_into(&policy, &z, &t, &mut p, &mut e, &mut w, &mut d).unwrap();
    assert_eq!((info.n_experts, e), (2, [0, 1])); // ties: lower index first
}

fn owned_eq(
    info: &SelectionInfo<f64>,
    e: &[u32],
    w: &[f64],
    d: &[u32],
    s: &select::Selection<f64, 64>,
) {
    let e: Vec<usize> = e[..info.n_experts].iter().map(|&q| q as usize).collect();
    let d: Vec<usize> = d[..info.n_dropped].iter().map(|&q| q as usize).collect();
    assert_eq!(&e[..], s.experts());
    assert_eq!(&d[..], s.dropped());
    assert_eq!(&w[..info.n_experts], s.weights());
    assert_eq!(info.kappa, s.kappa());
    assert_eq!(info.fallback, s.fallback());
}

proptest! {
    /// On buffers of exactly n and k entries, `select_into` and
    /// `top_k_into` decide what `select` and `top_k` decide, errors included.
    #[test]
    fn into_forms_equal_the_owned_forms(
        zt in (1usize..=64).prop_flat_map(|n| (
            proptest::collection::vec(-8.0f64..8.0, n),
            proptest::collection::vec(prop_oneof![4 => 1e-3f64..1.0, 1 => Just(f64::INFINITY)], n),
            1..=n,
        )),
        theta in 0.0f64..0.5,
        max_drops in 0usize..4,
    ) {
        let (z, t, k) = zt;
        let n = z.len();
        let policy = Policy::new(k, theta, max_drops).unwrap();
        let (mut p, mut e, mut w, mut d) = (vec![0.0; n], vec![0_u32; k], vec![0.0; k], vec![0_u32; k]);
        let into = select::select_into(&policy, &z, &t, &mut p, &mut e, &mut w, &mut d);
        match (into, select::select::<f64, 64>(&policy, &z, &t)) {
            (Ok(info), Ok(s)) => owned_eq(&info, &e, &w, &d, &s),
            (a, b) => prop_assert_eq!(a.err(), b.err()),
        }
        let into = select::top_k_into(&z, k, &mut p, &mut e, &mut w, &mut d).unwrap();
        let s = select::top_k::<f64, 64>(&z, k).unwrap();
        owned_eq(&into, &e, &w, &d, &s);
    }
}

/// The selection as it was implemented before the slice-based rewrite
/// (heapless vectors, a `taken` array, `Vec::remove`), kept as the oracle:
/// the rewrite must decide exactly the same, bit for bit.
mod former {
    use wdmoe_core::select::Policy;
    use wdmoe_core::Error;

    pub struct Sel {
        pub experts: Vec<usize>,
        pub weights: Vec<f64>,
        pub kappa: Option<f64>,
        pub dropped: Vec<usize>,
        pub fallback: bool,
    }

    fn ranks_before(p: &[f64], a: usize, b: usize) -> bool {
        p[a] > p[b] || (p[a] == p[b] && a < b)
    }

    fn scaled_wlr(w: f64, w_max: f64, t: f64, t_min: f64) -> f64 {
        let w = if w_max > 0.0 { w / w_max } else { 0.0 };
        if t_min == f64::INFINITY {
            return 0.0;
        }
        w / (t / t_min)
    }

    pub fn select(policy: &Policy<f64>, logits: &[f64], latency_s: &[f64]) -> Result<Sel, Error> {
        let n = logits.len();
        let k = policy.k();
        if n == 0 {
            return Err(Error::Empty);
        }
        if k == 0 || k > n {
            return Err(Error::KOutOfRange);
        }
        if latency_s.len() != n {
            return Err(Error::LengthMismatch);
        }
        for &t in latency_s {
            if t.is_nan() {
                return Err(Error::NaN("latency_s"));
            }
            if t <= 0.0 {
                return Err(Error::LatencyNotPositive);
            }
        }
        let max = logits.iter().cloned().fold(logits[0], f64::max);
        let mut p: Vec<f64> = logits.iter().map(|&z| libm::exp(z - max)).collect();
        let sum: f64 = p.iter().fold(0.0, |a, &b| a + b);
        p.iter_mut().for_each(|x| *x /= sum);
        let mut taken = vec![false; n];
        let mut top = Vec::new();
        for _ in 0..k {
            let mut best: Option<usize> = None;
            for (q, &is_taken) in taken.iter().enumerate() {
                if is_taken {
                    continue;
                }
                best = match best {
                    Some(b) if !ranks_before(&p, q, b) => Some(b),
                    _ => Some(q),
                };
            }
            taken[best.unwrap()] = true;
            top.push(best.unwrap());
        }
        let mut s: Vec<usize> = top
            .iter()
            .copied()
            .filter(|&q| latency_s[q].is_finite())
            .collect();
        let mut fallback = false;
        if s.is_empty() {
            let mut best: Option<usize> = None;
            for (q, t) in latency_s.iter().enumerate() {
                if t.is_finite() && best.is_none_or(|b| ranks_before(&p, q, b)) {
                    best = Some(q);
                }
            }
            s.push(best.ok_or(Error::NoReachableExpert)?);
            fallback = true;
        }
        let mut kappa = None;
        let p_max = s.iter().map(|&q| p[q]).fold(0.0, f64::max);
        let t_min = s
            .iter()
            .map(|&q| latency_s[q])
            .fold(f64::INFINITY, f64::min);
        for _ in 0..policy.max_drops() {
            if s.len() <= 1 {
                break;
            }
            let (mut lo, mut hi, mut worst) = (f64::INFINITY, 0.0_f64, 0usize);
            for (i, &q) in s.iter().enumerate() {
                let r = scaled_wlr(p[q], p_max, latency_s[q], t_min);
                hi = hi.max(r);
                let w = s[worst];
                if i == 0 || r < lo || (r == lo && (p[q] < p[w] || (p[q] == p[w] && q > w))) {
                    lo = r;
                    worst = i;
                }
            }
            let kk = if hi > 0.0 { lo / (lo + hi) } else { 0.5 };
            kappa.get_or_insert(kk);
            if kk <= policy.theta() {
                s.remove(worst);
            } else {
                break;
            }
        }
        let dropped = top.iter().copied().filter(|q| !s.contains(q)).collect();
        let sum: f64 = s.iter().fold(0.0, |a, &q| a + p[q]);
        let weights = s
            .iter()
            .map(|&q| {
                if sum > 0.0 {
                    p[q] / sum
                } else {
                    1.0 / s.len() as f64
                }
            })
            .collect();
        Ok(Sel {
            experts: s,
            weights,
            kappa,
            dropped,
            fallback,
        })
    }
}

proptest! {
    /// Bit-for-bit the decisions of the former implementation, on logits
    /// and latencies from small grids (ties in probability and in WLR are
    /// common) with unreachable devices.
    #[test]
    fn select_decides_as_before(
        zt in (1usize..=24).prop_flat_map(|n| (
            proptest::collection::vec((-6i32..6).prop_map(|x| x as f64 * 0.5), n),
            proptest::collection::vec(
                prop_oneof![4 => (1i32..6).prop_map(|x| x as f64 * 1e-3), 1 => Just(f64::INFINITY)],
                n,
            ),
            1..=n.min(6),
        )),
        theta in prop_oneof![Just(0.0), Just(0.5), 0.0f64..0.5],
        max_drops in 0usize..5,
    ) {
        let (z, t, k) = zt;
        let policy = Policy::new(k, theta, max_drops).unwrap();
        let new = select::select::<f64, 24>(&policy, &z, &t);
        match (new, former::select(&policy, &z, &t)) {
            (Ok(s), Ok(o)) => {
                prop_assert_eq!(s.experts(), &o.experts[..]);
                prop_assert_eq!(s.dropped(), &o.dropped[..]);
                prop_assert_eq!(s.weights(), &o.weights[..]);
                prop_assert_eq!(s.kappa(), o.kappa);
                prop_assert_eq!(s.fallback(), o.fallback);
            }
            (a, b) => prop_assert_eq!(a.err(), b.err()),
        }
    }
}
