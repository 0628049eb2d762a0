//! Per-prompt sums and the run's averages: curve points, the policies
//! against the references, the frontier's interpolation and certified bound.

use super::{CurvePoint, FrontierConfig, FrontierReport, PolicyPoint};
use crate::sim::Simulation;

/// Sums over one prompt for one curve point or policy.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Acc {
    pub(super) latency_s: f64,
    pub(super) kept: f64,
    pub(super) experts: u64,
    pub(super) infeasible: u64,
}

impl Acc {
    pub(super) fn add(&mut self, latency_s: f64, kept: f64, experts: usize, feasible: bool) {
        self.latency_s += latency_s;
        self.kept += kept;
        self.experts += experts as u64;
        self.infeasible += !feasible as u64;
    }
    fn merge(&mut self, o: &Acc) {
        self.latency_s += o.latency_s;
        self.kept += o.kept;
        self.experts += o.experts;
        self.infeasible += o.infeasible;
    }
}

/// Per policy and prompt: even and joint latency, kept weight, and the
/// matched exact selections.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct PolicyAcc {
    pub(super) even: Acc,
    pub(super) joint: Acc,
    pub(super) matched_even: Acc,
    pub(super) matched_joint: Acc,
    /// Tokens where the matched exact selector was slower than the policy
    /// (must stay 0: a bug in one of them otherwise).
    pub(super) violations: u64,
}

impl PolicyAcc {
    fn merge(&mut self, o: &PolicyAcc) {
        self.even.merge(&o.even);
        self.joint.merge(&o.joint);
        self.matched_even.merge(&o.matched_even);
        self.matched_joint.merge(&o.matched_joint);
        self.violations += o.violations;
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct PromptAcc {
    pub(super) decisions: u64,
    pub(super) primal_even: Vec<Acc>,
    pub(super) primal_joint: Vec<Acc>,
    pub(super) dual_even: Vec<Acc>,
    pub(super) lagr_even: Vec<Acc>,
    pub(super) lagr_joint: Vec<Acc>,
    pub(super) policies: Vec<PolicyAcc>,
    pub(super) solves: u64,
}

impl PromptAcc {
    pub(super) fn new(cfg: &FrontierConfig, np: usize) -> Self {
        let j = if cfg.joint.is_some() { 1 } else { 0 };
        Self {
            decisions: 0,
            primal_even: vec![Acc::default(); cfg.rhos.len()],
            primal_joint: vec![Acc::default(); cfg.rhos.len() * j],
            dual_even: vec![Acc::default(); cfg.budgets.len()],
            lagr_even: vec![Acc::default(); cfg.lambda_factors.len()],
            lagr_joint: vec![Acc::default(); cfg.lambda_factors.len() * j],
            policies: vec![PolicyAcc::default(); np],
            solves: 0,
        }
    }
    pub(super) fn merge(&mut self, o: &PromptAcc) {
        self.decisions += o.decisions;
        let m = |a: &mut Vec<Acc>, b: &Vec<Acc>| a.iter_mut().zip(b).for_each(|(x, y)| x.merge(y));
        m(&mut self.primal_even, &o.primal_even);
        m(&mut self.primal_joint, &o.primal_joint);
        m(&mut self.dual_even, &o.dual_even);
        m(&mut self.lagr_even, &o.lagr_even);
        m(&mut self.lagr_joint, &o.lagr_joint);
        self.policies
            .iter_mut()
            .zip(&o.policies)
            .for_each(|(x, y)| x.merge(y));
        self.solves += o.solves;
    }
}

fn point(a: &Acc, parameter: f64, prompts: f64, decisions: f64) -> CurvePoint {
    CurvePoint {
        parameter,
        mean_s: a.latency_s / prompts,
        kept_weight: a.kept / decisions,
        experts_per_token: a.experts as f64 / decisions,
        infeasible: a.infeasible,
    }
}

/// The frontier's latency at mean kept weight `kept` \[s\]: linear
/// interpolation between the neighbouring points (`curve` by kept weight,
/// ascending); below the first point its latency; `None` above the last.
pub fn frontier_at(curve: &[CurvePoint], kept: f64) -> Option<f64> {
    let first = curve.first()?;
    if kept <= first.kept_weight {
        return Some(first.mean_s);
    }
    for w in curve.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if kept <= b.kept_weight {
            let span = b.kept_weight - a.kept_weight;
            if span <= 0.0 {
                return Some(b.mean_s);
            }
            return Some(a.mean_s + (b.mean_s - a.mean_s) * (kept - a.kept_weight) / span);
        }
    }
    let last = curve.last()?;
    // Rounding: the heaviest point's kept weight, up to the sums' precision.
    (kept <= last.kept_weight * (1.0 + 1e-12)).then_some(last.mean_s)
}

/// Certified lower bound of the frontier at mean kept weight `kept`:
/// `max over finite λ of L_λ + λ·D·(kept − K_λ)` \[s\].
pub fn frontier_bound(curve: &[CurvePoint], decisions_per_prompt: f64, kept: f64) -> f64 {
    curve
        .iter()
        .filter(|c| c.parameter.is_finite())
        .map(|c| c.mean_s + c.parameter * decisions_per_prompt * (kept - c.kept_weight))
        .fold(f64::NEG_INFINITY, f64::max)
}

pub(super) fn finish(
    sim: &Simulation,
    cfg: &FrontierConfig,
    lambda_scale_s: f64,
    t: &PromptAcc,
) -> FrontierReport {
    let s = sim.scenario();
    let prompts = sim.total_prompts().max(1) as f64;
    let decisions = t.decisions.max(1) as f64;
    let curve = |accs: &[Acc], params: &[f64]| -> Vec<CurvePoint> {
        accs.iter()
            .zip(params)
            .map(|(a, &p)| point(a, p, prompts, decisions))
            .collect()
    };
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
    let frontier_even = curve(&t.lagr_even, &lambdas);
    let frontier_joint = curve(&t.lagr_joint, &lambdas);
    let dpp = decisions / prompts;
    let policies = sim
        .policies()
        .iter()
        .zip(&t.policies)
        .map(|(pol, a)| {
            let e = point(&a.even, 0.0, prompts, decisions);
            let m = point(&a.matched_even, 0.0, prompts, decisions);
            let f = frontier_at(&frontier_even, e.kept_weight);
            let gap = |x: f64| 100.0 * (e.mean_s - x) / e.mean_s;
            let joint = cfg.joint.is_some();
            PolicyPoint {
                name: pol.name(),
                family: pol.family().to_string(),
                parameter: pol.parameter(),
                mean_s: e.mean_s,
                kept_weight: e.kept_weight,
                experts_per_token: e.experts_per_token,
                matched_s: m.mean_s,
                matched_gap_pct: gap(m.mean_s),
                frontier_s: f,
                frontier_gap_pct: f.map(gap),
                frontier_bound_s: frontier_bound(&frontier_even, dpp, e.kept_weight),
                violations: a.violations,
                joint_s: joint.then(|| a.joint.latency_s / prompts),
                joint_matched_s: joint.then(|| a.matched_joint.latency_s / prompts),
                joint_frontier_s: if joint {
                    frontier_at(&frontier_joint, e.kept_weight)
                } else {
                    None
                },
                joint_frontier_bound_s: joint
                    .then(|| frontier_bound(&frontier_joint, dpp, e.kept_weight)),
            }
        })
        .collect();
    FrontierReport {
        seed: s.seed,
        prompts: s.prompts,
        replications: s.replications,
        tokens: s.total_tokens(),
        layers: s.model.layers,
        experts: s.n_experts(),
        k: s.model.top_k,
        k_prime: cfg.k_prime.min(s.n_experts()),
        router: sim.router().describe(),
        lambda_scale_s,
        decisions_per_prompt: dpp,
        joint: cfg.joint,
        primal_even: curve(&t.primal_even, &cfg.rhos),
        primal_joint: curve(&t.primal_joint, &cfg.rhos),
        dual_even: curve(
            &t.dual_even,
            &cfg.budgets
                .iter()
                .map(|b| b * lambda_scale_s)
                .collect::<Vec<_>>(),
        ),
        frontier_even,
        frontier_joint,
        policies,
        min_max_solves: t.solves,
        scenario: s.clone(),
    }
}
