//! How far is WDMoE from optimal? The exact selection frontier and joint
//! bandwidth allocation as references, on the *same* channel and router
//! draws as the simulator's policies: every prompt of every replication,
//! visited and drawn by the simulator itself ([`Simulation::fold_prompts`],
//! [`crate::sim::PromptDraws`]: channel slot per token, the fading's moves
//! within a token every `channel.fading_layers` layers, the compute model's
//! per-token expert time in eq. 6, each replication's seed and router), so
//! every number here is on the tokens the `run` table is on, and a policy's
//! `mean_s` here is its `run` mean (sequential accounting).
//!
//! **Replications**: all of them, like [`Simulation::run`]; means are over
//! `prompts × replications` prompts, so they cover every random draw (the
//! synthetic router's layer structure included), not one replication's.
//!
//! Per token and layer, the exact selector ([`exact`]) builds the staircase
//! of non-dominated expert subsets (at most `k` experts, latency eq. 7 vs
//! kept router weight) and answers:
//!
//! * **primal, per-token ρ**: the fastest subset keeping `≥ ρ` of the plain
//!   top-k router weight; sweeping ρ gives one curve;
//! * **dual, per-token budget**: the heaviest subset whose latency is within
//!   a budget `B` \[s\] (the same for every token; a token whose fastest
//!   expert exceeds it is served by that expert alone); sweeping `B` gives
//!   another;
//! * **Lagrangian**: the subset minimising `latency − λ·kept`. Summed over
//!   all tokens it minimises `mean latency − λ·D·mean kept` (`D` decisions
//!   per prompt), so sweeping λ traces the exact lower frontier of *mean*
//!   prompt latency against *mean* kept weight: for every λ and every
//!   per-token policy P, `L_P ≥ L_λ + λ·D·(K_P − K_λ)`. That is the
//!   frontier the report measures distances to ("latency at equal kept
//!   weight": linear interpolation between frontier points, achievable by
//!   mixing the two neighbours' rules, so the gaps are never overstated);
//! * **matched**: for each token, the fastest subset keeping at least what
//!   the policy kept *on that token*: the same kept weight token by token.
//!
//! Latency is accounted sequentially (eq. 8: prompt = Σ tokens Σ layers of
//! the token latency), whatever the scenario's `accounting`. The draws are
//! still the scenario's: with batched accounting the whole prefill sees one
//! channel slot, so a policy's `mean_s` here is the run's sequential sum on
//! those draws (`sequential_prefill_s + decode_s`), not its batched latency.
//!
//! **Joint bandwidth** ([`joint_bw`]): with [`Allocation::MinMaxSelected`]
//! the whole band is shared by the selected devices only, min–max
//! ([`wdmoe_core::bandwidth::min_max`]), for the simulator's policies (their
//! selection unchanged, made on the even-split latencies as WDMoE does) and
//! for the exact selector, which then searches exhaustively over the subsets.
//!
//! **Candidates** (both passes): the `k'` heaviest reachable experts
//! ([`FrontierConfig::k_prime`], default 8: every expert of the paper's
//! 8-expert model, an exhaustive search). For more experts this is the
//! documented bound: router weight concentrates on the top few experts, and
//! `k' = k` restricts the selector to drops, WDMoE's own action space. The
//! even-split search is exact over its candidates at any size (`O(k' log k'
//! + k'·k)`); the joint one enumerates `Σ_{i≤k} C(k', i)` subsets.
//!
//! **Where it lives**: here in wdmoe-sim, not in wdmoe-core. The even-split
//! exact selector is cheap (`O(n log n + n·k)`, see [`exact`]) but needs a
//! sort and a staircase buffer, and the joint one calls `min_max` per subset;
//! the base station runs WDMoE's rule, and this is its offline reference.

mod aggregate;
pub mod exact;
pub mod joint_bw;
pub mod report;

pub use aggregate::{frontier_at, frontier_bound};
pub use joint_bw::Allocation;

use crate::policy::{self, Decision};
use crate::scenario::Scenario;
use crate::sim::{PromptDraws, SimError, Simulation};
use aggregate::{finish, PromptAcc};
use exact::{Candidate, Staircase};
use joint_bw::JointAllocator;
use serde::Serialize;
use wdmoe_core::latency;

/// What to sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrontierConfig {
    /// Per-token kept-weight floors ρ of the primal (each in `\[0, 1\]`).
    pub rhos: Vec<f64>,
    /// Dual per-token latency budgets, in units of
    /// [`FrontierReport::lambda_scale_s`] (> 0).
    pub budgets: Vec<f64>,
    /// Lagrange multipliers in units of [`FrontierReport::lambda_scale_s`]
    /// (≥ 0; `+∞` = keep the most weight).
    pub lambda_factors: Vec<f64>,
    /// The exact selectors search the subsets of the `k'` heaviest reachable
    /// experts (`k ≤ k' ≤ 63`; every subset when `k' ≥ n`; `k' = k`: drops
    /// only, WDMoE's own action space).
    pub k_prime: usize,
    /// Bandwidth allocation of the joint pass (`None`: no joint pass).
    pub joint: Option<Allocation>,
}

impl Default for FrontierConfig {
    fn default() -> Self {
        let mut lambda_factors = vec![0.0];
        // 0.1 … 100 × the nominal latency, 10 per decade: dense where the
        // policies sit (kept 0.8 … 1).
        lambda_factors.extend((0..=30).map(|i| 10f64.powf(-1.0 + i as f64 / 10.0)));
        lambda_factors.push(f64::INFINITY);
        Self {
            rhos: (0..=20).map(|i| i as f64 / 20.0).collect(),
            budgets: vec![
                0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0,
            ],
            lambda_factors,
            k_prime: 8,
            joint: Some(Allocation::MinMaxSelected),
        }
    }
}

impl FrontierConfig {
    fn validate(&self, k: usize) -> Result<(), SimError> {
        let bad = |key: &str, reason: String| {
            Err(SimError::Scenario(crate::scenario::ScenarioError {
                key: format!("frontier.{key}"),
                reason,
            }))
        };
        for &r in &self.rhos {
            if !(0.0..=1.0).contains(&r) {
                return bad("rhos", format!("each must be in [0, 1] (got {r})"));
            }
        }
        for &b in &self.budgets {
            if !(b.is_finite() && b > 0.0) {
                return bad("budgets", format!("each must be finite and > 0 (got {b})"));
            }
        }
        for &l in &self.lambda_factors {
            if l.is_nan() || l < 0.0 {
                return bad("lambda_factors", format!("each must be >= 0 (got {l})"));
            }
        }
        if self.k_prime < k || self.k_prime > 63 {
            return bad(
                "k_prime",
                format!("must be in [k, 63] = [{k}, 63] (got {})", self.k_prime),
            );
        }
        Ok(())
    }
}

/// One point of a curve, averaged over the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurvePoint {
    /// ρ, budget \[s\] or λ \[s\] (λ: `null` in JSON for `+∞`).
    pub parameter: f64,
    /// Mean prompt latency \[s\] (sequential, eq. 8).
    pub mean_s: f64,
    /// Mean kept fraction of the plain top-k router weight.
    pub kept_weight: f64,
    /// Mean serving experts per token and layer.
    pub experts_per_token: f64,
    /// Decisions where the constraint could not be met (primal: a top-k
    /// device down; dual: budget below the fastest expert).
    pub infeasible: u64,
}

/// A simulator policy against the references.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyPoint {
    /// The policy's label, e.g. `WDMoE θ=0.2`.
    pub name: String,
    /// `wdmoe`, `weight_only` or `channel_only`.
    pub family: String,
    /// θ or β.
    pub parameter: Option<f64>,
    /// Mean prompt latency \[s\] with the scenario's bandwidth (even split).
    pub mean_s: f64,
    /// Mean kept weight.
    pub kept_weight: f64,
    /// Mean serving experts per token and layer.
    pub experts_per_token: f64,
    /// The exact selector keeping, token by token, at least the policy's
    /// kept weight: mean prompt latency \[s\].
    pub matched_s: f64,
    /// `100·(mean_s − matched_s)/mean_s` \[%\].
    pub matched_gap_pct: f64,
    /// The (Lagrangian) frontier's latency at the policy's mean kept weight
    /// \[s\] (interpolated; `None` outside the frontier's range).
    pub frontier_s: Option<f64>,
    /// `100·(mean_s − frontier_s)/mean_s` \[%\].
    pub frontier_gap_pct: Option<f64>,
    /// Certified lower bound of the frontier at the policy's kept weight \[s\]:
    /// `max_λ L_λ + λ·D·(K − K_λ)`; `mean_s` below it would be a bug.
    pub frontier_bound_s: f64,
    /// Tokens where the matched exact selector was slower (must be 0).
    pub violations: u64,
    /// With the joint allocation: the policy's selection, the band shared
    /// min–max by its selected devices: mean prompt latency \[s\].
    pub joint_s: Option<f64>,
    /// The joint exact selector matched token by token \[s\].
    pub joint_matched_s: Option<f64>,
    /// The joint frontier's latency at the policy's mean kept weight \[s\].
    pub joint_frontier_s: Option<f64>,
    /// Certified lower bound of the joint frontier there \[s\].
    pub joint_frontier_bound_s: Option<f64>,
}

/// The frontier study of one scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrontierReport {
    /// Run seed.
    pub seed: u64,
    /// Prompts simulated per replication.
    pub prompts: usize,
    /// Replications (means are over `prompts × replications` prompts).
    pub replications: usize,
    /// Tokens per prompt (prefill + decode, accounted sequentially).
    pub tokens: u32,
    /// Layers.
    pub layers: u32,
    /// Experts (= devices).
    pub experts: usize,
    /// Experts per token of plain top-k.
    pub k: usize,
    /// Candidates of the exact selectors: the `k'` heaviest reachable experts.
    pub k_prime: usize,
    /// Router description.
    pub router: String,
    /// The unit of λ: the mean of the devices' nominal latencies \[s\].
    pub lambda_scale_s: f64,
    /// Decisions (token-layer steps) per prompt, `D`.
    pub decisions_per_prompt: f64,
    /// The joint pass's allocation, if any.
    pub joint: Option<Allocation>,
    /// Primal, per-token ρ, even split.
    pub primal_even: Vec<CurvePoint>,
    /// Primal, per-token ρ, joint allocation.
    pub primal_joint: Vec<CurvePoint>,
    /// Dual, per-token latency budget \[s\], even split.
    pub dual_even: Vec<CurvePoint>,
    /// The frontier (Lagrangian λ sweep), even split; λ ascending, kept and
    /// latency non-decreasing.
    pub frontier_even: Vec<CurvePoint>,
    /// The frontier with the joint allocation.
    pub frontier_joint: Vec<CurvePoint>,
    /// The simulator's policies against the references.
    pub policies: Vec<PolicyPoint>,
    /// `min_max` solves (cache misses) over the run.
    pub min_max_solves: u64,
    /// The scenario (for reproducibility).
    pub scenario: Scenario,
}

/// Runs the frontier study on `sim`'s scenario, channel, router and policies
/// (prompts in parallel; identical results on any thread count).
/// `progress` is called once per finished prompt.
///
/// ```
/// use wdmoe_sim::frontier::{self, FrontierConfig};
/// use wdmoe_sim::{scenario::Scenario, sim::Simulation};
/// let mut s = Scenario::paper();
/// (s.prompts, s.prompt_tokens, s.model.layers) = (2, 2, 2);
/// let sim = Simulation::new(s).unwrap();
/// let r = frontier::run(&sim, &FrontierConfig::default(), &|| {}).unwrap();
/// let wd = &r.policies[2];
/// assert_eq!(wd.name, "WDMoE θ=0.2");
/// // No per-token policy is below the exact frontier, nor slower than the
/// // exact selector keeping its weight token by token.
/// assert!(wd.mean_s >= wd.frontier_bound_s && wd.matched_s <= wd.mean_s);
/// assert_eq!(wd.violations, 0);
/// ```
pub fn run(
    sim: &Simulation,
    cfg: &FrontierConfig,
    progress: &(dyn Fn() + Sync),
) -> Result<FrontierReport, SimError> {
    let s = sim.scenario();
    cfg.validate(s.model.top_k)?;
    let n = s.n_experts();
    let lambda_scale_s = (0..n)
        .map(|q| sim.channel().nominal_latency_s(q))
        .sum::<Result<f64, _>>()?
        / n as f64;
    let mut total = PromptAcc::new(cfg, sim.policies().len());
    sim.fold_prompts(
        &|_, _, draws| simulate_prompt(sim, cfg, lambda_scale_s, draws),
        &mut |p| total.merge(&p),
        progress,
    )?;
    Ok(finish(sim, cfg, lambda_scale_s, &total))
}

fn simulate_prompt(
    sim: &Simulation,
    cfg: &FrontierConfig,
    lambda_scale_s: f64,
    mut draws: PromptDraws<'_>,
) -> Result<PromptAcc, SimError> {
    let s = sim.scenario();
    let n = s.n_experts();
    let k = s.model.top_k;
    let layers = s.model.layers as usize;
    let pols = sim.policies();
    let mut acc = PromptAcc::new(cfg, pols.len());
    let model = sim.channel().latency_model();
    let mut alloc = cfg
        .joint
        .map(|a| JointAllocator::new(model, s.radio.total_bandwidth_hz, n, a));
    let lambdas: Vec<f64> = cfg
        .lambda_factors
        .iter()
        .map(|&f| {
            if f.is_infinite() {
                f
            } else {
                f * lambda_scale_s
            }
        })
        .collect();
    let mut base = Decision::default();
    let mut dec = Decision::default();
    let mut cands: Vec<Candidate> = Vec::with_capacity(n);
    let mut weight_of = vec![0.0; n];
    let mut even = Staircase::default();
    let mut joint = Staircase::default();
    while draws.next_token()?.is_some() {
        // A new token may be a new slot (the allocator keeps its cache when
        // nothing changed, e.g. within a batched prefill).
        let mut fresh = true;
        for l in 0..layers {
            // The channel moves with the token and within it, as the
            // simulator's does (one schedule: `sim::ChannelSchedule`).
            fresh |= draws.layer(l)?;
            let (z, chan) = (draws.logits(l), draws.channel());
            let lat = chan.latency_s();
            if let Some(a) = alloc.as_mut().filter(|_| fresh) {
                a.set_slot(lat, chan.links())?;
            }
            fresh = false;
            acc.decisions += 1;
            policy::reachable_top_k(k, z, lat, &mut base)?;
            // Every expert by router rank, with its probability.
            let (rank, prob) = policy::top_k_dyn(z, n)?;
            let w_top: f64 = prob[..k].iter().sum();
            cands.clear();
            for (&q, &p) in rank.iter().zip(&prob) {
                // w_top ≥ k/n·... > 0: the top-k of a softmax never sums to 0.
                weight_of[q] = p / w_top;
                if lat[q].is_finite() {
                    cands.push(Candidate {
                        expert: q,
                        weight: weight_of[q],
                        latency_s: lat[q],
                    });
                }
            }
            // The k' heaviest reachable experts are the candidates of both passes.
            let m = cands.len().min(cfg.k_prime);
            even.from_max_latency(&cands[..m], k);
            if even.steps().is_empty() {
                return Err(SimError::Core(wdmoe_core::Error::NoReachableExpert));
            }
            for (a, &rho) in acc.primal_even.iter_mut().zip(&cfg.rhos) {
                if let Some((st, ok)) = even.min_latency(rho) {
                    a.add(st.latency_s, st.weight, even.members(st).len(), ok);
                }
            }
            for (a, &b) in acc.dual_even.iter_mut().zip(&cfg.budgets) {
                if let Some((st, ok)) = even.max_weight(b * lambda_scale_s) {
                    a.add(st.latency_s, st.weight, even.members(st).len(), ok);
                }
            }
            for (a, &l) in acc.lagr_even.iter_mut().zip(&lambdas) {
                if let Some(st) = even.min_lagrangian(l) {
                    a.add(st.latency_s, st.weight, even.members(st).len(), true);
                }
            }
            if let Some(al) = alloc.as_mut() {
                joint.from_subsets(&cands[..m], k, |ex| al.latency_s(ex))?;
                for (a, &rho) in acc.primal_joint.iter_mut().zip(&cfg.rhos) {
                    if let Some((st, ok)) = joint.min_latency(rho) {
                        a.add(st.latency_s, st.weight, joint.members(st).len(), ok);
                    }
                }
                for (a, &l) in acc.lagr_joint.iter_mut().zip(&lambdas) {
                    if let Some(st) = joint.min_lagrangian(l) {
                        a.add(st.latency_s, st.weight, joint.members(st).len(), true);
                    }
                }
            }
            for (pa, pol) in acc.policies.iter_mut().zip(pols) {
                pol.decide_from_base(z, lat, &base, &mut dec)?;
                // The policies' sets lie within the reachable top-k, hence within
                // the k ≥ k heaviest reachable; checked, not assumed.
                let within = dec
                    .experts
                    .iter()
                    .all(|q| cands[..m].iter().any(|c| c.expert == *q));
                let t = latency::token_latency_s(lat, &dec.experts)?;
                let kept: f64 = dec.experts.iter().map(|&q| weight_of[q]).sum();
                pa.even.add(t, kept, dec.experts.len(), true);
                if let Some((st, _)) = even.min_latency(kept) {
                    pa.matched_even
                        .add(st.latency_s, st.weight, even.members(st).len(), true);
                    pa.violations += (within && st.latency_s > t) as u64;
                }
                if let Some(al) = alloc.as_mut() {
                    let tj = al.latency_s(&dec.experts)?;
                    pa.joint.add(tj, kept, dec.experts.len(), true);
                    if let Some((st, _)) = joint.min_latency(kept) {
                        pa.matched_joint.add(
                            st.latency_s,
                            st.weight,
                            joint.members(st).len(),
                            true,
                        );
                        pa.violations += (within && st.latency_s > tj) as u64;
                    }
                }
            }
        }
    }
    acc.solves = alloc.as_ref().map_or(0, |a| a.solves());
    Ok(acc)
}
