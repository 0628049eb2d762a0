//! The WDMoE expert-selection policy: weight-to-latency ratio (eq. 9), κ
//! (eq. 10) and Algorithm 1, exactly as docs/SPEC.md defines it; plus plain top-k
//! routing (Mixtral) on the same inputs for comparison.
//!
//! Capacities are const generics: a [`Selection<F, N>`] holds at most `N`
//! experts and lives on the stack; nothing allocates.

use heapless::Vec;

use crate::{Error, Float};

/// The selection policy's parameters, validated: `k ≥ 1` experts by router
/// weight, drop threshold `θ ∈ [0, 0.5]`, and at most `max_drops` drops per
/// token (the paper's single step is 1).
///
/// ```
/// use wdmoe_core::{Error, select::Policy};
/// let p = Policy::new(2, 0.2_f64, 1).unwrap();
/// assert_eq!((p.k(), p.theta(), p.max_drops()), (2, 0.2, 1));
/// assert_eq!(Policy::new(0, 0.2_f64, 1), Err(Error::KOutOfRange));
/// assert_eq!(Policy::new(2, 0.6_f64, 1), Err(Error::ThetaOutOfRange));
/// assert_eq!(Policy::new(2, f64::NAN, 1), Err(Error::NaN("theta")));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy<F> {
    k: usize,
    theta: F,
    max_drops: usize,
}

impl<F: Float> Policy<F> {
    /// Validated constructor. `k ≤ n` is checked per decision, since `n` is
    /// the length of the logits.
    pub fn new(k: usize, theta: F, max_drops: usize) -> Result<Self, Error> {
        if k == 0 {
            return Err(Error::KOutOfRange);
        }
        if theta.is_nan() {
            return Err(Error::NaN("theta"));
        }
        if !(theta >= F::ZERO && theta <= F::HALF) {
            return Err(Error::ThetaOutOfRange);
        }
        Ok(Self {
            k,
            theta,
            max_drops,
        })
    }
    /// Experts taken by router weight before any drop.
    pub fn k(&self) -> usize {
        self.k
    }
    /// The drop threshold θ: the lowest-WLR expert is dropped while κ ≤ θ.
    pub fn theta(&self) -> F {
        self.theta
    }
    /// Most experts dropped per token.
    pub fn max_drops(&self) -> usize {
        self.max_drops
    }
}

/// Result of one routing decision for one token in one layer.
///
/// Invariants (checked by property tests): at least one expert; experts are
/// distinct, in descending router probability (ties: lower index first);
/// weights are ≥ 0 and sum to 1; `0 ≤ κ ≤ 0.5`.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection<F, const N: usize> {
    experts: Vec<usize, N>,
    weights: Vec<F, N>,
    kappa: Option<F>,
    dropped: Vec<usize, N>,
    fallback: bool,
}

impl<F: Float, const N: usize> Selection<F, N> {
    /// The experts that serve the token, in descending router probability.
    pub fn experts(&self) -> &[usize] {
        &self.experts
    }
    /// Their combine weights (renormalised router probabilities), summing to 1.
    pub fn weights(&self) -> &[F] {
        &self.weights
    }
    /// κ of the first drop test (eq. 10); `None` when no test ran (one
    /// candidate left, or `max_drops = 0`, or plain top-k).
    pub fn kappa(&self) -> Option<F> {
        self.kappa
    }
    /// Every top-k expert not in the output, unreachable ones included, in
    /// top-k order.
    pub fn dropped(&self) -> &[usize] {
        &self.dropped
    }
    /// `true` when every top-k device was unreachable and the best reachable
    /// expert by router weight serves the token instead.
    pub fn fallback(&self) -> bool {
        self.fallback
    }
    /// Equation (7) for this selection: the slowest selected expert \[s\].
    pub fn token_latency_s(&self, latency_s: &[F]) -> Result<F, Error> {
        crate::latency::token_latency_s(latency_s, &self.experts)
    }
}

/// Numerically stable softmax of `logits` into `out` (same length).
fn softmax<F: Float>(logits: &[F], out: &mut [F]) {
    let mut max = logits[0];
    for &z in logits {
        max = max.max_of(z);
    }
    let mut sum = F::ZERO;
    for (o, &z) in out.iter_mut().zip(logits) {
        *o = (z - max).exp();
        sum += *o;
    }
    // sum ≥ 1 (the maximum contributes e^0 = 1), so the division is safe.
    for o in out.iter_mut() {
        *o = *o / sum;
    }
}

/// `true` when expert `a` ranks before `b` by router probability (ties: lower index first).
#[inline]
fn ranks_before<F: Float>(p: &[F], a: usize, b: usize) -> bool {
    p[a] > p[b] || (p[a] == p[b] && a < b)
}

/// The `k` experts of largest probability, in rank order. O(n·k), no heap.
fn top_k_indices<F: Float, const N: usize>(p: &[F], k: usize) -> Vec<usize, N> {
    let mut taken = [false; N];
    let mut out = Vec::new();
    for _ in 0..k {
        let mut best: Option<usize> = None;
        for (q, &is_taken) in taken.iter().enumerate().take(p.len()) {
            if is_taken {
                continue;
            }
            best = match best {
                Some(b) if !ranks_before(p, q, b) => Some(b),
                _ => Some(q),
            };
        }
        if let Some(b) = best {
            taken[b] = true;
            // Cannot fail: k ≤ n ≤ N is checked by the callers.
            let _ = out.push(b);
        }
    }
    out
}

fn check_logits<F: Float, const N: usize>(logits: &[F], k: usize) -> Result<(), Error> {
    let n = logits.len();
    if n == 0 {
        return Err(Error::Empty);
    }
    if n > N {
        return Err(Error::CapacityExceeded);
    }
    if k == 0 || k > n {
        return Err(Error::KOutOfRange);
    }
    for &z in logits {
        crate::error::finite(z, "logits")?;
    }
    Ok(())
}

fn renormalised<F: Float, const N: usize>(p: &[F], experts: &[usize]) -> Vec<F, N> {
    let mut sum = F::ZERO;
    for &q in experts {
        sum += p[q];
    }
    let mut w = Vec::new();
    for &q in experts {
        // sum == 0 only when every survivor's probability underflowed: share equally.
        let v = if sum > F::ZERO {
            p[q] / sum
        } else {
            F::ONE / F::from_u32(experts.len() as u32)
        };
        let _ = w.push(v);
    }
    w
}

/// Plain top-k routing (Mixtral): the `k` experts of largest router
/// probability, weights renormalised over them, latencies ignored.
///
/// ```
/// use wdmoe_core::select::top_k;
/// let s = top_k::<f64, 8>(&[0.0, 2.0, 1.0, -1.0], 2).unwrap();
/// assert_eq!(s.experts(), &[1, 2]);
/// // e^2 / (e^2 + e^1) = 1 / (1 + e^-1) = 0.7310585786
/// assert!((s.weights()[0] - 0.7310585786300049).abs() < 1e-15);
/// ```
pub fn top_k<F: Float, const N: usize>(logits: &[F], k: usize) -> Result<Selection<F, N>, Error> {
    check_logits::<F, N>(logits, k)?;
    let n = logits.len();
    let mut p = [F::ZERO; N];
    softmax(logits, &mut p[..n]);
    let experts = top_k_indices::<F, N>(&p[..n], k);
    let weights = renormalised(&p[..n], &experts);
    Ok(Selection {
        experts,
        weights,
        kappa: None,
        dropped: Vec::new(),
        fallback: false,
    })
}

/// Equation (9): weight-to-latency ratio `w_q / t_q` of every expert, into
/// `out` [1/s]. An unreachable expert (`t = +∞`) has WLR 0.
///
/// ```
/// let mut wlr = [0.0_f64; 3];
/// wdmoe_core::select::wlr(&[0.5, 0.3, 0.2], &[0.1, 0.3, f64::INFINITY], &mut wlr).unwrap();
/// assert_eq!(wlr, [5.0, 1.0, 0.0]);
/// ```
pub fn wlr<F: Float>(weights: &[F], latency_s: &[F], out: &mut [F]) -> Result<(), Error> {
    if weights.len() != latency_s.len() || weights.len() != out.len() {
        return Err(Error::LengthMismatch);
    }
    for ((o, &w), &t) in out.iter_mut().zip(weights).zip(latency_s) {
        let w = crate::error::non_negative(w, "weights")?;
        check_latency(t)?;
        *o = w / t;
    }
    Ok(())
}

/// Equation (10): `κ = min WLR / (min WLR + max WLR)` over the given experts'
/// weights and latencies; `0 ≤ κ ≤ 0.5`. Computed scale-free (weights and
/// latencies are normalised first), so it neither overflows nor depends on
/// units. When every WLR is 0 the experts are indistinguishable and κ = 0.5.
///
/// ```
/// // WLR = 0.6/0.2 = 3 and 0.4/0.8 = 0.5 → κ = 0.5 / 3.5 = 1/7
/// let k = wdmoe_core::select::kappa(&[0.6_f64, 0.4], &[0.2, 0.8]).unwrap();
/// assert!((k - 1.0 / 7.0).abs() < 1e-15);
/// ```
pub fn kappa<F: Float>(weights: &[F], latency_s: &[F]) -> Result<F, Error> {
    if weights.len() != latency_s.len() {
        return Err(Error::LengthMismatch);
    }
    if weights.is_empty() {
        return Err(Error::Empty);
    }
    let mut w_max = F::ZERO;
    let mut t_min = F::INFINITY;
    for (&w, &t) in weights.iter().zip(latency_s) {
        w_max = w_max.max_of(crate::error::non_negative(w, "weights")?);
        t_min = t_min.min_of(check_latency(t)?);
    }
    let (mut lo, mut hi) = (F::INFINITY, F::ZERO);
    for (&w, &t) in weights.iter().zip(latency_s) {
        let r = scaled_wlr(w, w_max, t, t_min);
        lo = lo.min_of(r);
        hi = hi.max_of(r);
    }
    Ok(kappa_of(lo, hi))
}

#[inline]
fn kappa_of<F: Float>(lo: F, hi: F) -> F {
    if hi > F::ZERO {
        lo / (lo + hi)
    } else {
        F::HALF
    }
}

/// WLR scaled by `t_min / w_max`: in [0, 1], so it cannot overflow.
#[inline]
fn scaled_wlr<F: Float>(w: F, w_max: F, t: F, t_min: F) -> F {
    let w = if w_max > F::ZERO { w / w_max } else { F::ZERO };
    if t_min.is_pos_inf() {
        return F::ZERO;
    }
    w / (t / t_min)
}

#[inline]
fn check_latency<F: Float>(t: F) -> Result<F, Error> {
    if t.is_nan() {
        Err(Error::NaN("latency_s"))
    } else if t > F::ZERO {
        Ok(t)
    } else {
        Err(Error::LatencyNotPositive)
    }
}

/// Algorithm 1, the WDMoE selection policy, exactly as docs/SPEC.md defines it.
///
/// `logits`: router logits of all `n` experts (finite); `latency_s`: each
/// expert's latency for this token \[s\] (eq. 6), `> 0`, `+∞` for an
/// unreachable device. `n ≤ N`.
///
/// 1. `p = softmax(logits)`; 2. S = top-k by `p`; 3. unreachable experts
///    leave S (if none is left: the best reachable expert, flagged
///    `fallback`; none reachable: [`Error::NoReachableExpert`]);
/// 4. up to `max_drops` times while |S| > 1: if κ ≤ θ drop the lowest-WLR
///    expert (ties: lower `p`, then higher index), else stop;
/// 5. weights `p_q / Σ_S p`.
///
/// ```
/// use wdmoe_core::select::{select, Policy};
/// let policy = Policy::new(2, 0.2_f64, 1).unwrap();
/// // Expert 1 has the largest weight but its device is 10x slower.
/// let logits = [0.5, 1.0, -2.0, 0.0];
/// let latency_s = [0.010, 0.100, 0.010, 0.010];
/// let s = select::<f64, 8>(&policy, &logits, &latency_s).unwrap();
/// // p1/p0 = e^0.5 = 1.6487; WLR1/WLR0 = 1.6487 / 10 → κ = 0.16487/1.16487 = 0.1415 ≤ 0.2
/// assert_eq!(s.experts(), &[0]);
/// assert_eq!(s.weights(), &[1.0]);
/// assert_eq!(s.dropped(), &[1]);
/// assert!((s.kappa().unwrap() - 0.14154).abs() < 1e-5);
/// assert!(!s.fallback());
/// ```
pub fn select<F: Float, const N: usize>(
    policy: &Policy<F>,
    logits: &[F],
    latency_s: &[F],
) -> Result<Selection<F, N>, Error> {
    check_logits::<F, N>(logits, policy.k)?;
    let n = logits.len();
    if latency_s.len() != n {
        return Err(Error::LengthMismatch);
    }
    for &t in latency_s {
        check_latency(t)?;
    }
    let mut p = [F::ZERO; N];
    let p = &mut p[..n];
    softmax(logits, p);
    let top = top_k_indices::<F, N>(p, policy.k);

    // Step 3: unreachable experts leave S; fall back if none is left.
    let mut s: Vec<usize, N> = Vec::new();
    for &q in &top {
        if latency_s[q].is_finite() {
            let _ = s.push(q);
        }
    }
    let mut fallback = false;
    if s.is_empty() {
        let mut best: Option<usize> = None;
        for (q, t) in latency_s.iter().enumerate() {
            if t.is_finite() && best.is_none_or(|b| ranks_before(p, q, b)) {
                best = Some(q);
            }
        }
        let _ = s.push(best.ok_or(Error::NoReachableExpert)?);
        fallback = true;
    }

    // Step 4: drop while κ ≤ θ. WLRs are scaled by t_min / p_max of S (a
    // common factor, so κ is unchanged) to stay within [0, 1].
    let mut kappa = None;
    let mut p_max = F::ZERO;
    let mut t_min = F::INFINITY;
    for &q in &s {
        p_max = p_max.max_of(p[q]);
        t_min = t_min.min_of(latency_s[q]);
    }
    for _ in 0..policy.max_drops {
        if s.len() <= 1 {
            break;
        }
        let (mut lo, mut hi, mut worst) = (F::INFINITY, F::ZERO, 0usize);
        for (i, &q) in s.iter().enumerate() {
            let r = scaled_wlr(p[q], p_max, latency_s[q], t_min);
            hi = hi.max_of(r);
            let w = s[worst];
            // Lowest WLR; ties: lower p, then higher index.
            if i == 0 || r < lo || (r == lo && (p[q] < p[w] || (p[q] == p[w] && q > w))) {
                lo = r;
                worst = i;
            }
        }
        let k = kappa_of(lo, hi);
        kappa.get_or_insert(k);
        if k <= policy.theta {
            s.remove(worst);
        } else {
            break;
        }
    }

    let mut dropped = Vec::new();
    for &q in &top {
        if !s.contains(&q) {
            let _ = dropped.push(q);
        }
    }
    let weights = renormalised(p, &s);
    Ok(Selection {
        experts: s,
        weights,
        kappa,
        dropped,
        fallback,
    })
}
