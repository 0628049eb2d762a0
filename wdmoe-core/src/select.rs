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

macro_rules! const_policy {
    ($t:ty) => {
        impl Policy<$t> {
            /// [`Policy::new`] as a `const fn`, for a policy in a `static`
            /// (firmware: validated at compile time, no start-up code):
            ///
            /// ```
            /// use wdmoe_core::select::Policy;
            #[doc = concat!("static POLICY: Policy<", stringify!($t), "> = match Policy::<", stringify!($t), ">::const_new(2, 0.2, 1) {")]
            ///     Ok(p) => p,
            ///     Err(_) => panic!("bad policy"), // a compile-time error
            /// };
            /// assert_eq!(POLICY.k(), 2);
            /// ```
            pub const fn const_new(k: usize, theta: $t, max_drops: usize) -> Result<Self, Error> {
                if k == 0 {
                    return Err(Error::KOutOfRange);
                }
                // `is_nan` is const only from Rust 1.83 (the MSRV is 1.82).
                #[allow(clippy::eq_op)]
                let nan = theta != theta;
                if nan {
                    return Err(Error::NaN("theta"));
                }
                if theta < 0.0 || theta > 0.5 {
                    return Err(Error::ThetaOutOfRange);
                }
                Ok(Self {
                    k,
                    theta,
                    max_drops,
                })
            }
        }
    };
}
const_policy!(f32);
const_policy!(f64);

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
    /// The owned selection from [`select_into`]'s output.
    fn from_parts<I: ExpertIndex>(info: &SelectionInfo<F>, e: &[I], w: &[F], d: &[I]) -> Self {
        let mut out = Self {
            experts: Vec::new(),
            weights: Vec::new(),
            kappa: info.kappa,
            dropped: Vec::new(),
            fallback: info.fallback,
        };
        for (&q, &x) in e.iter().zip(w).take(info.n_experts) {
            // Cannot fail: n_experts ≤ k ≤ n ≤ N.
            let _ = out.experts.push(q.to_usize());
            let _ = out.weights.push(x);
        }
        for &q in d.iter().take(info.n_dropped) {
            let _ = out.dropped.push(q.to_usize());
        }
        out
    }
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

/// `p[q]` without a panic path (the callers only pass `q < p.len()`; an
/// out-of-range index reads 0, which no caller relies on).
#[inline(always)]
fn at<T: Copy + Default>(p: &[T], q: usize) -> T {
    match p.get(q) {
        Some(&v) => v,
        None => T::default(),
    }
}

/// Numerically stable softmax of `logits` into `out` (same length).
fn softmax<F: Float>(logits: &[F], out: &mut [F]) {
    let mut max = at(logits, 0);
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
    let (pa, pb) = (at(p, a), at(p, b));
    pa > pb || (pa == pb && a < b)
}

/// The `out.len()` experts of largest probability, in rank order, into
/// `out`. O(n·k), no scratch: the j-th is the best of those ranking after
/// the (j−1)-th (the order is strict and total).
fn top_k_indices<F: Float, I: ExpertIndex>(p: &[F], out: &mut [I]) {
    let mut prev: Option<usize> = None;
    for o in out.iter_mut() {
        let mut best: Option<usize> = None;
        for q in 0..p.len() {
            if prev.is_some_and(|r| !ranks_before(p, r, q)) {
                continue;
            }
            if best.is_none_or(|b| ranks_before(p, q, b)) {
                best = Some(q);
            }
        }
        let b = best.unwrap_or(0);
        *o = I::from_usize(b);
        prev = Some(b);
    }
}

/// Checks the logits against a capacity `cap` and `k`.
fn check_logits<F: Float>(logits: &[F], k: usize, cap: usize) -> Result<(), Error> {
    let n = logits.len();
    if n == 0 {
        return Err(Error::Empty);
    }
    if n > cap {
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

/// Renormalised probabilities of `experts` into `w` (same length).
fn renormalise<F: Float, I: ExpertIndex>(p: &[F], experts: &[I], w: &mut [F]) {
    let mut sum = F::ZERO;
    for &q in experts {
        sum += at(p, q.to_usize());
    }
    for (v, &q) in w.iter_mut().zip(experts) {
        // sum == 0 only when every survivor's probability underflowed: share equally.
        *v = if sum > F::ZERO {
            at(p, q.to_usize()) / sum
        } else {
            F::ONE / F::from_u32(experts.len() as u32)
        };
    }
}

/// The index type of the slice-based API's expert arrays ([`select_into`],
/// [`top_k_into`]): `u8`, `u16`, `u32` or `usize`. Sealed.
pub trait ExpertIndex: sealed::Sealed + Copy + Default + PartialEq + core::fmt::Debug {
    /// Most experts the type can number (indices `0..MAX_EXPERTS`).
    const MAX_EXPERTS: usize;
    /// From an index `< MAX_EXPERTS` (checked by the callers).
    fn from_usize(q: usize) -> Self;
    /// To `usize`.
    fn to_usize(self) -> usize;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! expert_index {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl ExpertIndex for $t {
            const MAX_EXPERTS: usize = if (<$t>::MAX as u128) < usize::MAX as u128 {
                <$t>::MAX as usize + 1
            } else {
                usize::MAX
            };
            #[inline(always)]
            fn from_usize(q: usize) -> Self {
                q as $t
            }
            #[inline(always)]
            fn to_usize(self) -> usize {
                self as usize
            }
        }
    )*};
}
expert_index!(u8, u16, u32, usize);

/// What [`select_into`] / [`top_k_into`] wrote besides the arrays: how many
/// experts serve and how many were dropped, κ, the fallback flag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelectionInfo<F> {
    /// Valid entries of `experts` and `weights` (≥ 1).
    pub n_experts: usize,
    /// Valid entries of `dropped`.
    pub n_dropped: usize,
    /// κ of the first drop test (eq. 10); `None` when no test ran.
    pub kappa: Option<F>,
    /// `true` when every top-k device was unreachable and the best reachable
    /// expert serves instead.
    pub fallback: bool,
}

/// Experts, weights, dropped.
type Outputs<'a, F, I> = (&'a mut [I], &'a mut [F], &'a mut [I]);

/// Output slices of the slice-based API, each checked to hold ≥ `k`.
fn outputs<'a, F, I>(
    k: usize,
    experts: &'a mut [I],
    weights: &'a mut [F],
    dropped: &'a mut [I],
) -> Result<Outputs<'a, F, I>, Error> {
    match (
        experts.get_mut(..k),
        weights.get_mut(..k),
        dropped.get_mut(..k),
    ) {
        (Some(e), Some(w), Some(d)) => Ok((e, w, d)),
        _ => Err(Error::CapacityExceeded),
    }
}

/// Plain top-k routing on caller memory, the slice-based form of [`top_k`]:
/// `probs` (≥ n entries) receives the router probabilities; `experts`,
/// `weights` (≥ k entries each) the result; `dropped` (≥ k) is scratch here
/// (nothing is dropped). Too short a slice, or more experts than `I`
/// numbers, is [`Error::CapacityExceeded`].
///
/// ```
/// use wdmoe_core::select::top_k_into;
/// let (mut p, mut e, mut w, mut d) = ([0.0_f32; 4], [0_u16; 2], [0.0_f32; 2], [0_u16; 2]);
/// let info = top_k_into(&[0.0, 2.0, 1.0, -1.0], 2, &mut p, &mut e, &mut w, &mut d).unwrap();
/// assert_eq!((info.n_experts, e), (2, [1, 2]));
/// ```
pub fn top_k_into<F: Float, I: ExpertIndex>(
    logits: &[F],
    k: usize,
    probs: &mut [F],
    experts: &mut [I],
    weights: &mut [F],
    dropped: &mut [I],
) -> Result<SelectionInfo<F>, Error> {
    check_logits(logits, k, probs.len().min(I::MAX_EXPERTS))?;
    let (experts, weights, _) = outputs(k, experts, weights, dropped)?;
    let p = probs
        .get_mut(..logits.len())
        .ok_or(Error::CapacityExceeded)?;
    softmax(logits, p);
    top_k_indices(p, experts);
    renormalise(p, experts, weights);
    Ok(SelectionInfo {
        n_experts: k,
        n_dropped: 0,
        kappa: None,
        fallback: false,
    })
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
    check_logits(logits, k, N)?;
    let mut p = [F::ZERO; N];
    let mut e = [0usize; N];
    let mut w = [F::ZERO; N];
    let mut d = [0usize; N];
    let info = top_k_into(logits, k, &mut p, &mut e, &mut w, &mut d)?;
    Ok(Selection::from_parts(&info, &e, &w, &d))
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
    check_logits(logits, policy.k, N)?;
    let mut p = [F::ZERO; N];
    let mut e = [0usize; N];
    let mut w = [F::ZERO; N];
    let mut d = [0usize; N];
    let info = select_into(policy, logits, latency_s, &mut p, &mut e, &mut w, &mut d)?;
    Ok(Selection::from_parts(&info, &e, &w, &d))
}

/// Algorithm 1 on caller memory, the slice-based form of [`select`] (which
/// wraps it; the C ABI calls it directly): `probs` (≥ n entries) receives the
/// router probabilities; `experts`, `weights` and `dropped` (≥ k entries
/// each: every output expert is one of the top k) the result, of the
/// lengths in the returned [`SelectionInfo`]. Working memory beyond the
/// slices: a few scalars. On an error nothing is written. Too short a slice, or more experts than `I`
/// numbers, is [`Error::CapacityExceeded`]; every other error is
/// [`select`]'s.
///
/// ```
/// use wdmoe_core::select::{select_into, Policy};
/// let policy = Policy::new(2, 0.2_f32, 1).unwrap();
/// let (mut p, mut e, mut w, mut d) = ([0.0_f32; 4], [0_u16; 2], [0.0_f32; 2], [0_u16; 2]);
/// let info = select_into(&policy, &[0.5, 1.0, -2.0, 0.0], &[0.010, 0.100, 0.010, 0.010],
///                        &mut p, &mut e, &mut w, &mut d).unwrap();
/// assert_eq!((info.n_experts, e[0], w[0]), (1, 0, 1.0));
/// assert_eq!((info.n_dropped, d[0]), (1, 1));
/// ```
pub fn select_into<F: Float, I: ExpertIndex>(
    policy: &Policy<F>,
    logits: &[F],
    latency_s: &[F],
    probs: &mut [F],
    experts: &mut [I],
    weights: &mut [F],
    dropped: &mut [I],
) -> Result<SelectionInfo<F>, Error> {
    let k = policy.k;
    check_logits(logits, k, probs.len().min(I::MAX_EXPERTS))?;
    let n = logits.len();
    if latency_s.len() != n {
        return Err(Error::LengthMismatch);
    }
    let mut reachable = false;
    for &t in latency_s {
        reachable |= check_latency(t)?.is_finite();
    }
    if !reachable {
        // Checked here so that nothing is written on any error.
        return Err(Error::NoReachableExpert);
    }
    let (s, weights, top) = outputs(k, experts, weights, dropped)?;
    let p = probs.get_mut(..n).ok_or(Error::CapacityExceeded)?;
    softmax(logits, p);
    let p = &*p;
    // `top` (the caller's `dropped`) holds the top-k until step 5.
    top_k_indices(p, top);

    // Step 3: unreachable experts leave S; fall back if none is left.
    let mut len = 0usize;
    for &q in top.iter() {
        if at(latency_s, q.to_usize()).is_finite() {
            if let Some(slot) = s.get_mut(len) {
                *slot = q;
            }
            len += 1;
        }
    }
    let mut fallback = false;
    if len == 0 {
        let mut best: Option<usize> = None;
        for (q, t) in latency_s.iter().enumerate() {
            if t.is_finite() && best.is_none_or(|b| ranks_before(p, q, b)) {
                best = Some(q);
            }
        }
        let b = best.ok_or(Error::NoReachableExpert)?;
        if let Some(slot) = s.get_mut(0) {
            *slot = I::from_usize(b);
        }
        len = 1;
        fallback = true;
    }

    // Step 4: drop while κ ≤ θ. WLRs are scaled by t_min / p_max of S (a
    // common factor, so κ is unchanged) to stay within [0, 1].
    let mut kappa = None;
    let mut p_max = F::ZERO;
    let mut t_min = F::INFINITY;
    for &q in s.iter().take(len) {
        p_max = p_max.max_of(at(p, q.to_usize()));
        t_min = t_min.min_of(at(latency_s, q.to_usize()));
    }
    for _ in 0..policy.max_drops {
        if len <= 1 {
            break;
        }
        let (mut lo, mut hi, mut worst) = (F::INFINITY, F::ZERO, 0usize);
        let mut w = 0usize; // expert index of `worst`
        for (i, &q) in s.iter().take(len).enumerate() {
            let q = q.to_usize();
            let (pq, pw) = (at(p, q), at(p, w));
            let r = scaled_wlr(pq, p_max, at(latency_s, q), t_min);
            hi = hi.max_of(r);
            // Lowest WLR; ties: lower p, then higher index.
            if i == 0 || r < lo || (r == lo && (pq < pw || (pq == pw && q > w))) {
                lo = r;
                worst = i;
                w = q;
            }
        }
        let k = kappa_of(lo, hi);
        kappa.get_or_insert(k);
        if k <= policy.theta {
            // Remove entry `worst`, keeping the order.
            for i in worst + 1..len {
                let q = at(s, i);
                if let Some(slot) = s.get_mut(i - 1) {
                    *slot = q;
                }
            }
            len -= 1;
        } else {
            break;
        }
    }
    let s = s.get(..len).unwrap_or(&[]);

    // Step 5: dropped = top-k \ S, in top-k order (compacted in place).
    let mut n_dropped = 0usize;
    for j in 0..top.len() {
        let q = at(top, j);
        if !s.contains(&q) {
            if let Some(slot) = top.get_mut(n_dropped) {
                *slot = q;
            }
            n_dropped += 1;
        }
    }
    renormalise(p, s, weights);
    Ok(SelectionInfo {
        n_experts: len,
        n_dropped,
        kappa,
        fallback,
    })
}
