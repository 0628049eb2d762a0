//! From prompt outcomes to a run's table: streaming totals, percentiles,
//! intervals over prompts or over replications.

use super::{is_paper_setup, PromptOutcome, Simulation};
use crate::scenario::{Accounting, Scenario};
use crate::{router::RouterSummary, stats};
use serde::Serialize;

/// Half-width of the normal-approximation 95 % confidence interval of the
/// mean of `v`: `1.96 · sd / √n` (0 for fewer than two values).
pub(super) fn ci95(v: &[f64]) -> f64 {
    let n = v.len();
    if n < 2 {
        return 0.0;
    }
    let m = stats::mean(v);
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1) as f64;
    1.96 * (var / n as f64).sqrt()
}

/// Student's t quantile `t_{0.975, df}` for a two-sided 95 % interval
/// (1.96 above 30 degrees of freedom).
pub(super) fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => 0.0,
        d if d <= 30 => T[d - 1],
        _ => 1.96,
    }
}

/// Half-width of the 95 % t interval of the mean of `v` (0 for fewer than
/// two values).
pub(super) fn t_ci95(v: &[f64]) -> f64 {
    let n = v.len();
    if n < 2 {
        return 0.0;
    }
    let m = stats::mean(v);
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1) as f64;
    t975(n - 1) * (var / n as f64).sqrt()
}

/// One row of a run's table: a policy's statistics over all prompts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyRow {
    /// Label, e.g. `WDMoE θ=0.2`.
    pub name: String,
    /// `wdmoe`, `weight_only` or `channel_only`.
    pub family: String,
    /// θ or β.
    pub parameter: Option<f64>,
    /// Mean prompt latency \[s\].
    pub mean_s: f64,
    /// Median prompt latency \[s\].
    pub p50_s: f64,
    /// 95th percentile \[s\].
    pub p95_s: f64,
    /// 99th percentile \[s\].
    pub p99_s: f64,
    /// Reduction of the mean latency against the first row \[%\].
    pub reduction_pct: f64,
    /// Half-width of the 95 % confidence interval of `reduction_pct` \[%\]:
    /// with two or more replications, the t interval over the replications'
    /// reductions (every random draw redrawn); with one, the normal
    /// interval over the per-prompt differences to the first row (token and
    /// fading noise only, not the router's layer structure). 0 for the first
    /// row. [`RunReport::interval`] says which.
    pub reduction_ci95_pct: f64,
    /// Half-width of the 95 % confidence interval of `mean_s` \[s\], on the
    /// same basis as `reduction_ci95_pct`.
    pub mean_ci95_s: f64,
    /// Mean serving experts per token and layer.
    pub experts_per_token: f64,
    /// Fraction of top-k expert slots not served (dropped or unreachable).
    pub drop_rate: f64,
    /// Mean fraction of the plain top-k router weight kept.
    pub kept_weight: f64,
    /// Decisions that fell back to a non-top-k expert.
    pub fallbacks: u64,
    /// Mean prefill latency \[s\].
    pub mean_prefill_s: f64,
    /// Mean decode latency \[s\].
    pub mean_decode_s: f64,
}

/// A run's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// Run seed.
    pub seed: u64,
    /// Prompts simulated per replication.
    pub prompts: usize,
    /// Independent replications of every random draw.
    pub replications: usize,
    /// What the ± intervals cover: `replications` (t interval over the
    /// replications) or `prompts` (one replication: per-prompt noise only).
    pub interval: String,
    /// The run is the paper's setup (the default scenario with sequential
    /// accounting and no decode; only seed, prompts, prompt tokens and
    /// replications may differ), so the paper's reported reductions may be
    /// shown beside it.
    pub paper_comparable: bool,
    /// Devices that cannot hold their experts: `"#q name: M GB < N GB"`.
    pub memory_shortfalls: Vec<String>,
    /// Prefill tokens per prompt.
    pub prompt_tokens: u32,
    /// Decode tokens per prompt.
    pub decode_tokens: u32,
    /// Accounting used for every latency of the table.
    pub accounting: Accounting,
    /// Router description.
    pub router: String,
    /// The w2/w1 distribution the router implies (what the run assumes).
    pub router_summary: RouterSummary,
    /// One row per policy; the first is the reduction baseline.
    pub rows: Vec<PolicyRow>,
    /// The full scenario that produced the report (for reproducibility).
    pub scenario: Scenario,
    /// Slots where the fault model or the SNR floor kept a device up.
    pub suppressed_outages: u64,
    /// Fraction of device-slots whose link was below the SNR floor.
    pub link_outage_rate: f64,
}

/// Streaming totals of a run: each prompt's latency per policy (for
/// percentiles and paired intervals) and sums of everything else.
pub(super) struct Accumulator {
    pols: Vec<PolicyAcc>,
    prompts: usize,
    suppressed: u64,
    link_outages: u64,
    device_slots: u64,
}

#[derive(Default, Clone)]
struct PolicyAcc {
    lat: Vec<f64>,
    decisions: u64,
    experts: u64,
    dropped: u64,
    kept_weight: f64,
    fallbacks: u64,
    prefill_s: f64,
    decode_s: f64,
}

impl Accumulator {
    pub(super) fn new(policies: usize) -> Self {
        Self {
            pols: vec![PolicyAcc::default(); policies],
            prompts: 0,
            suppressed: 0,
            link_outages: 0,
            device_slots: 0,
        }
    }

    pub(super) fn add(&mut self, o: &PromptOutcome) {
        for (a, p) in self.pols.iter_mut().zip(&o.policies) {
            a.lat.push(p.latency_s);
            a.decisions += p.decisions;
            a.experts += p.experts;
            a.dropped += p.dropped;
            a.kept_weight += p.kept_weight;
            a.fallbacks += p.fallbacks;
            a.prefill_s += p.prefill_s;
            a.decode_s += p.decode_s;
        }
        self.prompts += 1;
        self.suppressed += o.suppressed_outages;
        self.link_outages += o.link_outages;
        self.device_slots += o.device_slots;
    }
}

impl Simulation {
    /// Aggregates per-prompt outcomes (in prompt order, one replication)
    /// into a table.
    pub fn aggregate(&self, outcomes: &[PromptOutcome]) -> RunReport {
        let mut acc = Accumulator::new(self.policies.len());
        for o in outcomes {
            acc.add(o);
        }
        self.report(&acc, 1)
    }

    pub(super) fn report(&self, acc: &Accumulator, replications: usize) -> RunReport {
        let s = &self.scenario;
        let k = s.model.top_k as f64;
        let total = acc.prompts;
        let per_rep = (total / replications.max(1)).max(1);
        let by_rep = replications >= 2 && total == per_rep * replications;
        let rep_means = |lat: &[f64]| -> Vec<f64> {
            lat.chunks(per_rep).map(stats::mean).collect::<Vec<f64>>()
        };
        let mut rows: Vec<PolicyRow> = Vec::with_capacity(self.policies.len());
        let base_lat = acc.pols.first().map(|p| p.lat.as_slice()).unwrap_or(&[]);
        let base_mean = stats::mean(base_lat);
        let base_rep = rep_means(base_lat);
        for (pi, pol) in self.policies.iter().enumerate() {
            let pa = &acc.pols[pi];
            let mean_s = stats::mean(&pa.lat);
            let mut sorted = pa.lat.clone();
            sorted.sort_by(f64::total_cmp);
            let decisions = (pa.decisions as f64).max(1.0);
            let prompts = total.max(1) as f64;
            let reduction_pct = if base_mean > 0.0 {
                100.0 * (1.0 - mean_s / base_mean)
            } else {
                0.0
            };
            let (mean_ci95_s, reduction_ci95_pct) = if by_rep {
                let means = rep_means(&pa.lat);
                let reds: Vec<f64> = means
                    .iter()
                    .zip(&base_rep)
                    .map(|(m, b)| if *b > 0.0 { 100.0 * (1.0 - m / b) } else { 0.0 })
                    .collect();
                (t_ci95(&means), if pi == 0 { 0.0 } else { t_ci95(&reds) })
            } else {
                let diffs: Vec<f64> = base_lat.iter().zip(&pa.lat).map(|(a, b)| a - b).collect();
                (
                    ci95(&sorted),
                    if base_mean > 0.0 {
                        100.0 * ci95(&diffs) / base_mean
                    } else {
                        0.0
                    },
                )
            };
            rows.push(PolicyRow {
                name: pol.name(),
                family: pol.family().to_string(),
                parameter: pol.parameter(),
                mean_s,
                p50_s: stats::percentile_sorted(&sorted, 50.0),
                p95_s: stats::percentile_sorted(&sorted, 95.0),
                p99_s: stats::percentile_sorted(&sorted, 99.0),
                reduction_pct,
                reduction_ci95_pct,
                mean_ci95_s,
                experts_per_token: pa.experts as f64 / decisions,
                drop_rate: pa.dropped as f64 / (k * decisions),
                kept_weight: pa.kept_weight / decisions,
                fallbacks: pa.fallbacks,
                mean_prefill_s: pa.prefill_s / prompts,
                mean_decode_s: pa.decode_s / prompts,
            });
        }
        RunReport {
            seed: s.seed,
            prompts: if by_rep { per_rep } else { total },
            replications: if by_rep { replications } else { 1 },
            interval: if by_rep { "replications" } else { "prompts" }.to_string(),
            paper_comparable: is_paper_setup(s),
            memory_shortfalls: crate::device::memory_shortfalls(s)
                .into_iter()
                .map(|(q, name, gb)| {
                    format!(
                        "#{q} {name}: {gb} GB < {:.1} GB",
                        crate::device::experts_bytes(s) / 1e9
                    )
                })
                .collect(),
            prompt_tokens: s.prompt_tokens,
            decode_tokens: s.decode_tokens,
            accounting: s.accounting,
            router: self.router.describe(),
            router_summary: self.router_summary(),
            rows,
            scenario: s.clone(),
            suppressed_outages: acc.suppressed,
            link_outage_rate: acc.link_outages as f64 / acc.device_slots.max(1) as f64,
        }
    }
}
