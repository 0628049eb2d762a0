//! Selection policies, behind one trait, all compared on the same draws:
//!
//! | policy | rule |
//! |---|---|
//! | [`Wdmoe`] | Algorithm 1 of the paper ([`wdmoe_core::select::select`]); θ = 0 is plain top-k (Mixtral) |
//! | [`WeightOnly`] | "Not All Experts are Equal": drop every non-first top-k expert whose weight is below β × the first's |
//! | [`ChannelOnly`] | drop the slowest of the top-k, weights ignored |
//!
//! Every policy starts from the core's reachable top-k (an unreachable device
//! is never sent a token; if every top-k device is unreachable the best
//! reachable expert serves the token and the decision is flagged `fallback`),
//! so every token is served by at least one expert and every policy's set is
//! a subset of plain top-k's.

use wdmoe_core::select::{self, Policy, Selection};
use wdmoe_core::Error;

/// One routing decision for one token at one layer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// Serving experts, in descending router weight.
    pub experts: Vec<usize>,
    /// Their combine weights (sum 1).
    pub weights: Vec<f64>,
    /// κ of WDMoE's first drop test (eq. 10), if one ran.
    pub kappa: Option<f64>,
    /// Top-k experts not serving the token (dropped or unreachable).
    pub dropped: Vec<usize>,
    /// `true` when every top-k device was unreachable.
    pub fallback: bool,
}

impl Decision {
    fn fill<const N: usize>(&mut self, s: &Selection<f64, N>) {
        self.experts.clear();
        self.experts.extend_from_slice(s.experts());
        self.weights.clear();
        self.weights.extend_from_slice(s.weights());
        self.kappa = s.kappa();
        self.dropped.clear();
        self.dropped.extend_from_slice(s.dropped());
        self.fallback = s.fallback();
    }

    /// Removes the serving expert at position `i` (it joins `dropped`) and
    /// renormalises the remaining weights.
    fn drop_at(&mut self, i: usize) {
        let q = self.experts.remove(i);
        self.weights.remove(i);
        self.dropped.push(q);
        let sum: f64 = self.weights.iter().sum();
        if sum > 0.0 {
            self.weights.iter_mut().for_each(|w| *w /= sum);
        }
    }
}

fn select_n<const N: usize>(
    policy: &Policy<f64>,
    logits: &[f64],
    latency_s: &[f64],
    out: &mut Decision,
) -> Result<(), Error> {
    let s = select::select::<f64, N>(policy, logits, latency_s)?;
    out.fill(&s);
    Ok(())
}

/// The core's Algorithm 1 ([`wdmoe_core::select::select`]) for any number of
/// experts up to [`crate::scenario::MAX_EXPERTS`], with the stack capacity
/// picked from `logits.len()`.
pub fn select_dyn(
    policy: &Policy<f64>,
    logits: &[f64],
    latency_s: &[f64],
    out: &mut Decision,
) -> Result<(), Error> {
    match logits.len() {
        0..=8 => select_n::<8>(policy, logits, latency_s, out),
        9..=16 => select_n::<16>(policy, logits, latency_s, out),
        17..=64 => select_n::<64>(policy, logits, latency_s, out),
        65..=256 => select_n::<256>(policy, logits, latency_s, out),
        _ => select_n::<1024>(policy, logits, latency_s, out),
    }
}

fn top_k_n<const N: usize>(logits: &[f64], k: usize) -> Result<(Vec<usize>, Vec<f64>), Error> {
    let s = select::top_k::<f64, N>(logits, k)?;
    Ok((s.experts().to_vec(), s.weights().to_vec()))
}

/// Plain top-k ([`wdmoe_core::select::top_k`]), latencies ignored: the
/// experts and their renormalised weights.
pub fn top_k_dyn(logits: &[f64], k: usize) -> Result<(Vec<usize>, Vec<f64>), Error> {
    match logits.len() {
        0..=8 => top_k_n::<8>(logits, k),
        9..=16 => top_k_n::<16>(logits, k),
        17..=64 => top_k_n::<64>(logits, k),
        65..=256 => top_k_n::<256>(logits, k),
        _ => top_k_n::<1024>(logits, k),
    }
}

/// A selection policy: router logits and per-device latencies \[s\] (eq. 6,
/// `+∞` unreachable) in, a [`Decision`] out.
pub trait SelectionPolicy: Send + Sync {
    /// A short label for tables, e.g. `WDMoE θ=0.2`.
    fn name(&self) -> String;
    /// The family: `wdmoe`, `weight_only` or `channel_only`.
    fn family(&self) -> &'static str;
    /// The policy's parameter (θ or β), if any.
    fn parameter(&self) -> Option<f64>;
    /// Decides which experts serve a token at one layer.
    fn decide(&self, logits: &[f64], latency_s: &[f64], out: &mut Decision) -> Result<(), Error>;
    /// The same decision, given `base`: the core's reachable top-k for the
    /// same inputs ([`reachable_top_k`]), which the engine computes once per
    /// token and layer. Policies that start from it override this to save
    /// the work; the default ignores `base`.
    fn decide_from_base(
        &self,
        logits: &[f64],
        latency_s: &[f64],
        base: &Decision,
        out: &mut Decision,
    ) -> Result<(), Error> {
        let _ = base;
        self.decide(logits, latency_s, out)
    }
}

/// The reachable top-k: the `k` experts of largest router weight minus
/// unreachable ones (fallback to the best reachable expert if none is left),
/// weights renormalised — [`wdmoe_core::select::select`] with θ = 0 and no
/// drop test. Every policy here starts from it.
pub fn reachable_top_k(
    k: usize,
    logits: &[f64],
    latency_s: &[f64],
    out: &mut Decision,
) -> Result<(), Error> {
    select_dyn(&Policy::new(k, 0.0, 0)?, logits, latency_s, out)
}

/// WDMoE, Algorithm 1 with threshold θ and up to `max_drops` drops (θ = 0:
/// plain top-k, Mixtral).
#[derive(Debug, Clone, Copy)]
pub struct Wdmoe {
    policy: Policy<f64>,
}

impl Wdmoe {
    /// Validated: `k ≥ 1`, `θ ∈ \[0, 0.5\]`.
    pub fn new(k: usize, theta: f64, max_drops: usize) -> Result<Self, Error> {
        Ok(Self {
            policy: Policy::new(k, theta, max_drops)?,
        })
    }
}

impl SelectionPolicy for Wdmoe {
    fn name(&self) -> String {
        if self.policy.theta() == 0.0 {
            "WDMoE θ=0 (top-k)".into()
        } else {
            format!("WDMoE θ={}", self.policy.theta())
        }
    }
    fn family(&self) -> &'static str {
        "wdmoe"
    }
    fn parameter(&self) -> Option<f64> {
        Some(self.policy.theta())
    }
    fn decide(&self, logits: &[f64], latency_s: &[f64], out: &mut Decision) -> Result<(), Error> {
        select_dyn(&self.policy, logits, latency_s, out)
    }
}

/// Weight-only skipping: of the reachable top-k, drop every expert after the
/// first whose weight is below `β ×` the first's (for k = 2: drop the second
/// when `w2/w1 < β`).
#[derive(Debug, Clone, Copy)]
pub struct WeightOnly {
    base: Policy<f64>,
    beta: f64,
}

impl WeightOnly {
    /// Validated: `k ≥ 1`, `β ∈ \[0, 1\]`.
    pub fn new(k: usize, beta: f64) -> Result<Self, Error> {
        if beta.is_nan() {
            return Err(Error::NaN("beta"));
        }
        if !(0.0..=1.0).contains(&beta) {
            return Err(Error::OutOfRange("beta (0..=1)"));
        }
        Ok(Self {
            base: Policy::new(k, 0.0, 0)?,
            beta,
        })
    }
}

impl SelectionPolicy for WeightOnly {
    fn name(&self) -> String {
        format!("weight-only β={}", self.beta)
    }
    fn family(&self) -> &'static str {
        "weight_only"
    }
    fn parameter(&self) -> Option<f64> {
        Some(self.beta)
    }
    fn decide(&self, logits: &[f64], latency_s: &[f64], out: &mut Decision) -> Result<(), Error> {
        select_dyn(&self.base, logits, latency_s, out)?;
        self.apply(out);
        Ok(())
    }
    fn decide_from_base(
        &self,
        _logits: &[f64],
        _latency_s: &[f64],
        base: &Decision,
        out: &mut Decision,
    ) -> Result<(), Error> {
        out.clone_from(base);
        self.apply(out);
        Ok(())
    }
}

impl WeightOnly {
    fn apply(&self, out: &mut Decision) {
        let mut i = 1;
        while i < out.experts.len() {
            if out.weights[i] < self.beta * out.weights[0] {
                out.drop_at(i);
            } else {
                i += 1;
            }
        }
    }
}

/// Channel-only: of the reachable top-k, always drop the slowest expert
/// (ties: the lower weight), weights ignored.
#[derive(Debug, Clone, Copy)]
pub struct ChannelOnly {
    base: Policy<f64>,
}

impl ChannelOnly {
    /// Validated: `k ≥ 1`.
    pub fn new(k: usize) -> Result<Self, Error> {
        Ok(Self {
            base: Policy::new(k, 0.0, 0)?,
        })
    }
}

impl SelectionPolicy for ChannelOnly {
    fn name(&self) -> String {
        "channel-only".into()
    }
    fn family(&self) -> &'static str {
        "channel_only"
    }
    fn parameter(&self) -> Option<f64> {
        None
    }
    fn decide(&self, logits: &[f64], latency_s: &[f64], out: &mut Decision) -> Result<(), Error> {
        select_dyn(&self.base, logits, latency_s, out)?;
        Self::apply(latency_s, out);
        Ok(())
    }
    fn decide_from_base(
        &self,
        _logits: &[f64],
        latency_s: &[f64],
        base: &Decision,
        out: &mut Decision,
    ) -> Result<(), Error> {
        out.clone_from(base);
        Self::apply(latency_s, out);
        Ok(())
    }
}

impl ChannelOnly {
    fn apply(latency_s: &[f64], out: &mut Decision) {
        if out.experts.len() > 1 {
            let mut worst = 0;
            for (i, &q) in out.experts.iter().enumerate() {
                // Experts are in descending weight, so `>=` picks the lower weight on ties.
                if latency_s[q] >= latency_s[out.experts[worst]] {
                    worst = i;
                }
            }
            out.drop_at(worst);
        }
    }
}
