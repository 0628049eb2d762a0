//! The accuracy side of WDMoE's trade-off: perplexity and multiple-choice
//! accuracy of a Mixtral checkpoint (the CPU [`crate::model`]) for each θ,
//! next to the routing and the simulated wireless latency of the same run.
//!
//! | module | what |
//! |---|---|
//! | [`perplexity`] | perplexity over non-overlapping windows of a token stream |
//! | [`choice`] | log-likelihood multiple choice (lm-evaluation-harness's acc and acc_norm), the JSONL format |
//! | [`report`] | table, CSV, JSON and the accuracy–latency SVG |
//!
//! Latencies: either fixed per expert ([`LatencySource::Fixed`]) or a
//! scenario's channel ([`LatencySource::Channel`]); sequence `s` of an
//! evaluation (window `s` of a perplexity run, item `s` of a choice run)
//! draws its channel from the stream `(seed, s)`, position by position, so
//! every θ sees the same latencies and results depend on the seed alone.

use serde::Serialize;

use crate::channel::ChannelModel;
use crate::model::{
    ExpertLatency, FixedLatency, ForwardOutput, GenerationSummary, ModelError, ScenarioLatency,
};
use crate::scenario::Scenario;
use crate::sim::ChannelSchedule;
use crate::trace::TraceRecorder;

pub mod choice;
pub mod perplexity;
pub mod report;

/// Where the experts' latencies come from in an evaluation.
#[derive(Debug)]
pub enum LatencySource<'a> {
    /// The same latencies \[s\] for every token and layer.
    Fixed(FixedLatency),
    /// A scenario's channel, drawn per sequence and position from `seed`.
    Channel {
        /// The channel model (one device per expert).
        model: &'a ChannelModel,
        /// How the channel steps through the layers of a token (the
        /// simulator's schedule for this model; sequential accounting).
        schedule: ChannelSchedule,
        /// Run seed.
        seed: u64,
    },
}

impl<'a> LatencySource<'a> {
    /// `scenario`'s channel (`model`, built by
    /// [`ScenarioLatency::channel_for`]) for a model of `layers` layers,
    /// accounted sequentially (eq. 8: every scored token is its own channel
    /// slot, whatever the scenario's `accounting`; there is no batched
    /// prefill in a scoring pass), with the fading moving every
    /// `channel.fading_layers` layers as the simulator moves it. Sequence
    /// `s` sees the simulator's prompt `s` of a run seeded with `seed`.
    pub fn channel(model: &'a ChannelModel, scenario: &Scenario, layers: usize, seed: u64) -> Self {
        LatencySource::Channel {
            model,
            schedule: ChannelSchedule::for_prompt(scenario, layers, 0),
            seed,
        }
    }

    /// The latencies of sequence `sequence` (window or item index).
    pub fn for_sequence(&self, sequence: u64) -> Result<Box<dyn ExpertLatency + '_>, ModelError> {
        Ok(match self {
            LatencySource::Fixed(f) => Box::new(f.clone()),
            LatencySource::Channel {
                model,
                schedule,
                seed,
            } => Box::new(ScenarioLatency::new(model, *schedule, *seed, sequence)?),
        })
    }
}

/// Routing and simulated latency totals of an evaluation run, per θ.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoutingRow {
    /// Tokens run through the model (scored or not).
    pub tokens_processed: u64,
    /// Mean experts serving a token in a layer.
    pub experts_per_token: f64,
    /// Mean router weight kept (of plain top-k's renormalised weights).
    pub kept_weight: f64,
    /// Fraction of token-layer decisions with a drop.
    pub drop_rate: f64,
    /// Simulated expert latency per token, all layers (eq. 7 summed over the
    /// layers, eq. 8), under WDMoE \[s\].
    pub wdmoe_latency_s_per_token: f64,
    /// The same had plain top-k served the same router logits \[s\].
    pub top_k_latency_s_per_token: f64,
    /// `100 · (1 − WDMoE / top-k)`.
    pub latency_reduction_pct: f64,
    /// Host compute time of the run \[s\].
    pub compute_s: f64,
}

/// Accumulates the routing of forward calls ([`GenerationSummary::add`]
/// owns the accounting) and, optionally, records the router logits.
#[derive(Debug, Default)]
pub struct RoutingTotals {
    summary: GenerationSummary,
    tokens: u64,
    compute_s: f64,
    /// Router logits of every token run, when recording.
    pub recorder: Option<TraceRecorder>,
}

impl RoutingTotals {
    /// Totals that also record the router logits into `recorder`.
    pub fn new(recorder: Option<TraceRecorder>) -> Self {
        Self {
            recorder,
            ..Self::default()
        }
    }

    /// Adds one forward call.
    pub fn add(&mut self, out: &ForwardOutput) -> Result<(), String> {
        self.summary.add(out);
        self.tokens += out.routing.first().map_or(0, |r| r.selections.len()) as u64;
        self.compute_s += out.compute_s;
        if let Some(r) = &mut self.recorder {
            let per_layer: Vec<&[f64]> = out
                .routing
                .iter()
                .map(|l| l.router_logits.as_slice())
                .collect();
            r.push_tokens(&per_layer).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The row's routing columns.
    pub fn row(&self) -> RoutingRow {
        let s = &self.summary;
        let per_token = |x: f64| x / self.tokens.max(1) as f64;
        RoutingRow {
            tokens_processed: self.tokens,
            experts_per_token: s.experts_per_token,
            kept_weight: s.kept_weight,
            drop_rate: s.drops as f64 / s.decisions.max(1) as f64,
            wdmoe_latency_s_per_token: per_token(s.wdmoe_latency_s),
            top_k_latency_s_per_token: per_token(s.top_k_latency_s),
            latency_reduction_pct: s.latency_reduction_pct,
            compute_s: self.compute_s,
        }
    }
}

/// `log p(token)` under `logits` (one row), in f64: `z_t − logsumexp(z)`.
pub fn log_softmax_at(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let sum: f64 = logits.iter().map(|&z| (z as f64 - max).exp()).sum();
    logits[token as usize] as f64 - max - sum.ln()
}

/// Wilson score interval at 95 % for `hits` of `n` (`[0, 1]` when `n = 0`).
///
/// ```
/// let (lo, hi) = wdmoe_sim::eval::wilson_95(49, 141);
/// assert!((lo - 0.2737).abs() < 1e-3 && (hi - 0.4291).abs() < 1e-3);
/// ```
pub fn wilson_95(hits: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let (n, p) = (n as f64, hits as f64 / n as f64);
    let d = 1.0 + z * z / n;
    let c = (p + z * z / (2.0 * n)) / d;
    let h = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / d;
    // The ends are exact at 0 and n hits (no rounding past p).
    let lo = if hits == 0 {
        0.0
    } else {
        (c - h).clamp(0.0, p)
    };
    let hi = if hits as f64 >= n {
        1.0
    } else {
        (c + h).clamp(p, 1.0)
    };
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_matches_direct_formula() {
        let z = [1.0f32, 2.0, 3.0];
        let denom = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((log_softmax_at(&z, 0) - (1.0 - denom)).abs() < 1e-12);
        assert!((log_softmax_at(&z, 2) - (3.0 - denom)).abs() < 1e-12);
        // Large logits do not overflow.
        let big = [1000.0f32, 1000.0];
        assert!((log_softmax_at(&big, 1) + 2f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn wilson_interval() {
        assert_eq!(wilson_95(0, 0), (0.0, 1.0));
        let (lo, hi) = wilson_95(0, 10);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.2775).abs() < 1e-3);
        let (lo, hi) = wilson_95(50, 100);
        assert!((lo - 0.4038).abs() < 1e-3 && (hi - 0.5962).abs() < 1e-3);
    }
}
