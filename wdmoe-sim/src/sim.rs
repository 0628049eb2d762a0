//! The Monte-Carlo engine: prompts × tokens × layers × policies, with the
//! latency accounting of the scenario.
//!
//! For each prompt (in parallel, each with its own seeded streams): the
//! channel is realised; for each token the channel gives every device's
//! latency (eq. 6) at the token's slot and the router gives the logits of
//! every layer; at each layer every policy decides on *the same* logits and
//! latencies, and its token latency (eq. 7, the slowest serving device) is
//! accumulated:
//!
//! * **sequential** (eq. 8): prompt latency = Σ tokens Σ layers token latency;
//! * **batched prefill** (docs/SPEC.md): the prefill is one channel slot, and
//!   per layer the devices work in parallel on all the tokens routed to them
//!   ([`wdmoe_core::latency::batched_layer_latency_s`]); the prompt latency
//!   is Σ layers of that, plus the decode tokens one after another.
//!
//! Decode tokens (after the prefill, one by one) are accounted sequentially
//! in both modes.

use crate::channel::ChannelModel;
use crate::device::ComputeModel;
use crate::policy::{self, ChannelOnly, Decision, SelectionPolicy, Wdmoe, WeightOnly};
use crate::rng::{self, Stream};
use crate::router::{Router, RouterSummary, SyntheticRouter, TraceRouter};
use crate::scenario::{Accounting, RouterKind, Scenario, ScenarioError};
use crate::stats;
use crate::trace::{Trace, TraceError};
use rayon::prelude::*;
use serde::Serialize;
use std::fmt;
use wdmoe_core::latency;

/// Why a simulation could not be built or run.
#[derive(Debug, Clone, PartialEq)]
pub enum SimError {
    /// The scenario is invalid.
    Scenario(ScenarioError),
    /// The router trace is invalid.
    Trace(TraceError),
    /// The core rejected a value (should not happen for a validated scenario).
    Core(wdmoe_core::Error),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::Scenario(e) => write!(f, "scenario: {e}"),
            SimError::Trace(e) => write!(f, "{e}"),
            SimError::Core(e) => write!(f, "model: {e}"),
        }
    }
}

impl std::error::Error for SimError {}

impl From<ScenarioError> for SimError {
    fn from(e: ScenarioError) -> Self {
        SimError::Scenario(e)
    }
}
impl From<TraceError> for SimError {
    fn from(e: TraceError) -> Self {
        SimError::Trace(e)
    }
}
impl From<wdmoe_core::Error> for SimError {
    fn from(e: wdmoe_core::Error) -> Self {
        SimError::Core(e)
    }
}

/// `s` with its device distances scaled by one factor so that the farthest
/// device sits at `radius_m` \[m\] (the spread of the cell, for sensitivity
/// studies).
///
/// ```
/// use wdmoe_sim::{scenario::Scenario, sim::scale_cell};
/// let s = scale_cell(&Scenario::paper(), 300.0).unwrap();
/// assert_eq!(s.devices.last().unwrap().distance_m, 300.0);
/// assert_eq!(s.devices[0].distance_m, 25.0);
/// ```
pub fn scale_cell(s: &Scenario, radius_m: f64) -> Result<Scenario, ScenarioError> {
    let far = s
        .devices
        .iter()
        .map(|d| d.distance_2d_m())
        .fold(0.0, f64::max);
    if !(radius_m.is_finite() && radius_m > 0.0) {
        return Err(ScenarioError {
            key: "radius_m".into(),
            reason: format!("must be finite and > 0 (got {radius_m})"),
        });
    }
    let mut out = s.clone();
    if far > 0.0 {
        for d in &mut out.devices {
            d.distance_m *= radius_m / far;
            if let Some(p) = &mut d.position_m {
                p[0] *= radius_m / far;
                p[1] *= radius_m / far;
            }
        }
    }
    out.validate()?;
    Ok(out)
}

/// `s` with its devices' speeds spread by exponent `alpha` around their
/// geometric mean `g`: each device's speed `v_q` (memory bandwidth under the
/// roofline model, `C_q` under the paper's) becomes `g · (v_q / g)^alpha`,
/// its peak rate scaled by the same factor (0: identical devices, 1:
/// unchanged, 2: the log-spread doubled). For sensitivity studies.
///
/// ```
/// use wdmoe_sim::{scenario::Scenario, sim::scale_compute_spread};
/// let s = scale_compute_spread(&Scenario::paper(), 0.0).unwrap();
/// let b0 = s.devices[0].memory_bandwidth_gbps.unwrap();
/// assert!(s.devices.iter().all(|d| (d.memory_bandwidth_gbps.unwrap() - b0).abs() < 1e-9));
/// ```
pub fn scale_compute_spread(s: &Scenario, alpha: f64) -> Result<Scenario, ScenarioError> {
    if !(alpha.is_finite() && alpha >= 0.0) {
        return Err(ScenarioError {
            key: "alpha".into(),
            reason: format!("must be finite and >= 0 (got {alpha})"),
        });
    }
    s.validate()?;
    let model = s.model.compute_model;
    let figures: Vec<crate::device::DeviceCompute> = s
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| crate::device::resolve(d, i, model))
        .collect::<Result<_, _>>()?;
    let speed = |c: &crate::device::DeviceCompute| c.bandwidth_bytes_per_s.unwrap_or(c.flops_per_s);
    let n = s.devices.len().max(1) as f64;
    let g = (figures.iter().map(|c| speed(c).ln()).sum::<f64>() / n).exp();
    let mut out = s.clone();
    for (d, c) in out.devices.iter_mut().zip(&figures) {
        let v = speed(c);
        let f = g * (v / g).powf(alpha) / v;
        match c.bandwidth_bytes_per_s {
            Some(b) => {
                d.peak_tflops = Some(c.flops_per_s * f / 1e12);
                d.memory_bandwidth_gbps = Some(b * f / 1e9);
            }
            None => {
                if d.compute_tflops.is_some() {
                    d.compute_tflops = Some(c.flops_per_s * f / 1e12);
                } else {
                    d.peak_tflops = Some(c.flops_per_s * f / 1e12);
                }
            }
        }
    }
    out.validate()?;
    Ok(out)
}

/// Whether `s` is the paper's setup: [`Scenario::paper`] up to the seed,
/// the number of prompts and replications and the prompt length, with
/// sequential accounting (eq. 8) and no decode tokens.
///
/// ```
/// use wdmoe_sim::{scenario::Scenario, sim::is_paper_setup};
/// let mut s = Scenario::paper();
/// s.prompts = 7;
/// assert!(is_paper_setup(&s));
/// s.radio.noise_figure_db = 0.0;
/// assert!(!is_paper_setup(&s));
/// ```
pub fn is_paper_setup(s: &Scenario) -> bool {
    let mut p = Scenario::paper();
    p.seed = s.seed;
    p.prompts = s.prompts;
    p.replications = s.replications;
    p.prompt_tokens = s.prompt_tokens;
    p == *s
}

/// Half-width of the normal-approximation 95 % confidence interval of the
/// mean of `v`: `1.96 · sd / √n` (0 for fewer than two values).
fn ci95(v: &[f64]) -> f64 {
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
fn t975(df: usize) -> f64 {
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
fn t_ci95(v: &[f64]) -> f64 {
    let n = v.len();
    if n < 2 {
        return 0.0;
    }
    let m = stats::mean(v);
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1) as f64;
    t975(n - 1) * (var / n as f64).sqrt()
}

/// One policy's totals over one prompt.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PolicyPromptStats {
    /// Prompt latency \[s\] under the scenario's accounting (prefill + decode).
    pub latency_s: f64,
    /// Prefill latency \[s\] under the scenario's accounting.
    pub prefill_s: f64,
    /// Decode latency \[s\] (tokens one after another).
    pub decode_s: f64,
    /// Prefill latency \[s\] summed sequentially (eq. 8) on the same draws.
    pub sequential_prefill_s: f64,
    /// Token-layer decisions.
    pub decisions: u64,
    /// Serving experts summed over decisions.
    pub experts: u64,
    /// Top-k experts not serving the token, summed over decisions.
    pub dropped: u64,
    /// Plain top-k router weight kept, summed over decisions (each in `\[0, 1\]`).
    pub kept_weight: f64,
    /// Decisions that fell back to a non-top-k expert.
    pub fallbacks: u64,
    /// Per token: its latency summed over layers \[s\] (eq. 7, 8), only when
    /// recorded ([`Simulation::simulate_prompt`] with `record_tokens`).
    pub token_latency_s: Vec<f64>,
}

/// The outcome of one prompt, every policy on the same draws.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromptOutcome {
    /// Per policy, in [`Simulation::policies`] order.
    pub policies: Vec<PolicyPromptStats>,
    /// Slots where the fault model kept a device up so one stayed reachable.
    pub suppressed_outages: u64,
    /// Device-slots below the SNR floor (unreachable).
    pub link_outages: u64,
    /// Device-slots simulated (devices × channel slots).
    pub device_slots: u64,
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
struct Accumulator {
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
    fn new(policies: usize) -> Self {
        Self {
            pols: vec![PolicyAcc::default(); policies],
            prompts: 0,
            suppressed: 0,
            link_outages: 0,
            device_slots: 0,
        }
    }

    fn add(&mut self, o: &PromptOutcome) {
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

/// What [`Simulation::run_decisions`] did, for throughput benchmarks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThroughputSample {
    /// Token-layer steps simulated (each runs every policy).
    pub token_layers: u64,
    /// Policy decisions made (`token_layers × policies`).
    pub decisions: u64,
    /// Sum of all token latencies \[s\], so the work cannot be optimised away.
    pub checksum: f64,
}

/// A validated scenario with its channel, router and policies, ready to run.
pub struct Simulation {
    scenario: Scenario,
    channel: ChannelModel,
    router: Box<dyn Router>,
    /// Whether replications 1.. redraw the router (a synthetic router's
    /// layer structure); false when the router has no random draw of its
    /// own (a trace, a caller-supplied router).
    synthetic_replicas: bool,
    policies: Vec<Box<dyn SelectionPolicy>>,
}

impl fmt::Debug for Simulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulation")
            .field("scenario", &self.scenario)
            .field("router", &self.router.describe())
            .field(
                "policies",
                &self.policies.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Simulation {
    /// Validates `scenario`, builds its router (reading the trace file for a
    /// trace router) and its policies.
    ///
    /// ```
    /// use wdmoe_sim::{scenario::Scenario, sim::Simulation};
    /// let mut s = Scenario::paper();
    /// s.prompts = 4;
    /// s.prompt_tokens = 8;
    /// let report = Simulation::new(s).unwrap().run(&|| {}).unwrap();
    /// assert_eq!(report.rows[0].name, "WDMoE θ=0 (top-k)");
    /// assert!(report.rows[2].mean_s <= report.rows[0].mean_s);
    /// ```
    pub fn new(scenario: Scenario) -> Result<Self, SimError> {
        scenario.validate()?;
        let router: Box<dyn Router> = match scenario.router.kind {
            RouterKind::Synthetic => Self::synthetic_router(&scenario, scenario.seed),
            RouterKind::Trace => {
                let t = Trace::from_path(std::path::Path::new(&scenario.router.trace_path))?;
                Box::new(TraceRouter::new(t, scenario.total_tokens() as u64))
            }
        };
        let synthetic = scenario.router.kind == RouterKind::Synthetic;
        let mut sim = Self::with_router(scenario, router)?;
        sim.synthetic_replicas = synthetic;
        Ok(sim)
    }

    fn synthetic_router(s: &Scenario, seed: u64) -> Box<dyn Router> {
        Box::new(SyntheticRouter::new(
            s.model.layers as usize,
            s.n_experts(),
            s.router.spread,
            s.router.layer_bias_std,
            s.router.stickiness,
            seed,
        ))
    }

    /// Like [`Simulation::new`] with a caller-supplied router (e.g. a live
    /// layer, see [`crate::router`]); its layers and experts must match the
    /// scenario's.
    pub fn with_router(scenario: Scenario, router: Box<dyn Router>) -> Result<Self, SimError> {
        scenario.validate()?;
        if router.n_experts() != scenario.n_experts() {
            return Err(SimError::Scenario(ScenarioError {
                key: "devices".into(),
                reason: format!(
                    "the router has {} experts but the scenario has {} devices (one expert per device)",
                    router.n_experts(),
                    scenario.n_experts()
                ),
            }));
        }
        if router.n_layers() != scenario.model.layers as usize {
            return Err(SimError::Scenario(ScenarioError {
                key: "model.layers".into(),
                reason: format!(
                    "the router has {} layers but model.layers = {}",
                    router.n_layers(),
                    scenario.model.layers
                ),
            }));
        }
        let channel = ChannelModel::new(&scenario)?;
        let k = scenario.model.top_k;
        let mut policies: Vec<Box<dyn SelectionPolicy>> = Vec::new();
        for &t in &scenario.policies.thetas {
            policies.push(Box::new(Wdmoe::new(k, t, scenario.policies.max_drops)?));
        }
        for &b in &scenario.policies.weight_only_betas {
            policies.push(Box::new(WeightOnly::new(k, b)?));
        }
        if scenario.policies.channel_only {
            policies.push(Box::new(ChannelOnly::new(k)?));
        }
        Ok(Self {
            scenario,
            channel,
            router,
            synthetic_replicas: false,
            policies,
        })
    }

    /// The router of replication `r` when it differs from replication 0's
    /// (built on demand: one replication's router is alive at a time).
    fn replica_router(&self, r: u64) -> Option<Box<dyn Router>> {
        (r > 0 && self.synthetic_replicas).then(|| {
            Self::synthetic_router(&self.scenario, rng::replication_seed(self.scenario.seed, r))
        })
    }

    /// Prompts over all replications (`prompts × replications`).
    pub fn total_prompts(&self) -> usize {
        self.scenario.prompts * self.scenario.replications
    }

    /// The scenario.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// The channel model.
    pub fn channel(&self) -> &ChannelModel {
        &self.channel
    }

    /// The router.
    pub fn router(&self) -> &dyn Router {
        self.router.as_ref()
    }

    /// The policies, in table order.
    pub fn policies(&self) -> &[Box<dyn SelectionPolicy>] {
        &self.policies
    }

    /// The w2/w1 distribution the router implies (sampled with the run seed).
    pub fn router_summary(&self) -> RouterSummary {
        let tokens = (self.scenario.total_tokens() as usize).min(256);
        RouterSummary::compute(self.router.as_ref(), 16, tokens, self.scenario.seed)
    }

    /// Simulates prompt `prompt` (its streams derive from the run seed and
    /// `prompt` alone). With `record_tokens`, each policy's per-token
    /// latency is kept.
    pub fn simulate_prompt(
        &self,
        prompt: u64,
        record_tokens: bool,
    ) -> Result<PromptOutcome, SimError> {
        self.simulate(self.router.as_ref(), 0, prompt, record_tokens, u64::MAX)
            .map(|(o, _)| o)
    }

    /// Like [`Simulation::simulate_prompt`] in replication `replication`
    /// (its seed is [`rng::replication_seed`]`(seed, replication)`).
    pub fn simulate_replication_prompt(
        &self,
        replication: u64,
        prompt: u64,
    ) -> Result<PromptOutcome, SimError> {
        let own = self.replica_router(replication);
        let router = own.as_deref().unwrap_or(self.router.as_ref());
        self.simulate(router, replication, prompt, false, u64::MAX)
            .map(|(o, _)| o)
    }

    /// Core loop; stops after `max_token_layers` token-layer steps.
    fn simulate(
        &self,
        router: &dyn Router,
        replication: u64,
        prompt: u64,
        record_tokens: bool,
        max_token_layers: u64,
    ) -> Result<(PromptOutcome, u64), SimError> {
        let s = &self.scenario;
        let seed = rng::replication_seed(s.seed, replication);
        let n = s.n_experts();
        let layers = s.model.layers as usize;
        let k = s.model.top_k;
        let np = self.policies.len();
        let batched = s.accounting == Accounting::Batched;
        let mut chan = self
            .channel
            .realise(rng::stream(seed, prompt, Stream::Channel))?;
        let mut router = router.start_prompt(prompt, rng::stream(seed, prompt, Stream::Router));
        let mut logits = vec![0.0; layers * n];
        let mut lat = vec![0.0; n];
        let mut stats = vec![PolicyPromptStats::default(); np];
        // Batched prefill: tokens per (policy, layer, expert).
        let mut counts = if batched {
            vec![0u32; np * layers * n]
        } else {
            Vec::new()
        };
        let mut prefill_lat = vec![0.0; n];
        let mut dec = Decision::default();
        let mut base = Decision::default();
        let (mut ref_e, mut ref_w) = (Vec::new(), Vec::new());
        let mut all_up = true;
        let mut steps = 0u64;
        let mut slots = 0u64;
        let mut token_sum = vec![0.0; np];
        'tokens: for j in 0..s.total_tokens() {
            let prefill = j < s.prompt_tokens;
            let slot = if batched && prefill { 0 } else { j };
            if j == 0 || slot != 0 {
                chan.latency_at(slot, &mut lat)?;
                slots += 1;
                all_up = lat.iter().all(|t| t.is_finite());
                if j == 0 {
                    prefill_lat.copy_from_slice(&lat);
                }
            }
            router.next_token(&mut logits);
            token_sum.iter_mut().for_each(|t| *t = 0.0);
            for (l, z) in logits.chunks_exact(n).enumerate() {
                if steps >= max_token_layers {
                    break 'tokens;
                }
                steps += 1;
                // The reachable top-k, shared by the policies; the plain top-k
                // (for the kept weight) is the same unless a device is down.
                policy::reachable_top_k(k, z, &lat, &mut base)?;
                if all_up {
                    ref_e.clone_from(&base.experts);
                    ref_w.clone_from(&base.weights);
                } else {
                    (ref_e, ref_w) = policy::top_k_dyn(z, k)?;
                }
                for (pi, pol) in self.policies.iter().enumerate() {
                    pol.decide_from_base(z, &lat, &base, &mut dec)?;
                    let t = latency::token_latency_s(&lat, &dec.experts)?;
                    let st = &mut stats[pi];
                    token_sum[pi] += t;
                    if prefill {
                        st.sequential_prefill_s += t;
                        if batched {
                            let base = (pi * layers + l) * n;
                            for &q in &dec.experts {
                                counts[base + q] += 1;
                            }
                        }
                    } else {
                        st.decode_s += t;
                    }
                    st.decisions += 1;
                    st.experts += dec.experts.len() as u64;
                    st.dropped += dec.dropped.len() as u64;
                    st.fallbacks += dec.fallback as u64;
                    let mut kept = 0.0;
                    for &q in &dec.experts {
                        if let Some(i) = ref_e.iter().position(|&e| e == q) {
                            kept += ref_w[i];
                        }
                    }
                    st.kept_weight += kept;
                }
            }
            if record_tokens {
                for (st, &t) in stats.iter_mut().zip(&token_sum) {
                    st.token_latency_s.push(t);
                }
            }
        }
        for (pi, st) in stats.iter_mut().enumerate() {
            st.prefill_s = if batched {
                let mut sum = 0.0;
                for l in 0..layers {
                    let base = (pi * layers + l) * n;
                    sum += self.batched_layer_s(&counts[base..base + n], &prefill_lat)?;
                }
                sum
            } else {
                st.sequential_prefill_s
            };
            st.latency_s = st.prefill_s + st.decode_s;
        }
        Ok((
            PromptOutcome {
                policies: stats,
                suppressed_outages: chan.suppressed_outages(),
                link_outages: chan.link_outages(),
                device_slots: slots * n as u64,
            },
            steps,
        ))
    }

    /// One layer of a batched prefill \[s\]: device `q` gets `counts[q]`
    /// tokens in one transmission and works on them in one pass; the slowest
    /// device sets the layer. Paper model: `max_q n_q · t_q` (wdmoe-core's
    /// [`latency::batched_layer_latency_s`]); roofline: `max_q n_q · link_q +
    /// compute_q(n_q)`, the weights read once per layer
    /// ([`crate::device::DeviceCompute::expert_time_s`]), where `link_q` is
    /// the per-token link part of eq. (6).
    fn batched_layer_s(&self, counts: &[u32], lat: &[f64]) -> Result<f64, SimError> {
        if self.scenario.model.compute_model == ComputeModel::Paper {
            return Ok(latency::batched_layer_latency_s(counts, lat)?);
        }
        let mut worst = 0.0_f64;
        for (q, (&n, &t)) in counts.iter().zip(lat).enumerate() {
            if n == 0 {
                continue;
            }
            let link = (t - self.channel.compute_time_s(q, 1)).max(0.0);
            worst = worst.max(n as f64 * link + self.channel.compute_time_s(q, n));
        }
        Ok(worst)
    }

    /// Runs every prompt of every replication (in parallel with rayon;
    /// results are identical on any thread count) and aggregates the table.
    /// `progress` is called once per finished prompt, from any thread.
    /// Memory: each prompt's latency per policy (8 bytes) is kept; the rest
    /// is summed as chunks of prompts finish.
    pub fn run(&self, progress: &(dyn Fn() + Sync)) -> Result<RunReport, SimError> {
        const CHUNK: u64 = 1024;
        let s = &self.scenario;
        let mut acc = Accumulator::new(self.policies.len());
        for rep in 0..s.replications as u64 {
            let own = self.replica_router(rep);
            let router = own.as_deref().unwrap_or(self.router.as_ref());
            let mut start = 0u64;
            while start < s.prompts as u64 {
                let end = (start + CHUNK).min(s.prompts as u64);
                let outcomes: Vec<PromptOutcome> = (start..end)
                    .into_par_iter()
                    .map(|p| {
                        let r = self
                            .simulate(router, rep, p, false, u64::MAX)
                            .map(|(o, _)| o);
                        progress();
                        r
                    })
                    .collect::<Result<_, _>>()?;
                for o in &outcomes {
                    acc.add(o);
                }
                start = end;
            }
        }
        Ok(self.report(&acc, s.replications.max(1)))
    }

    /// Aggregates per-prompt outcomes (in prompt order, one replication)
    /// into a table.
    pub fn aggregate(&self, outcomes: &[PromptOutcome]) -> RunReport {
        let mut acc = Accumulator::new(self.policies.len());
        for o in outcomes {
            acc.add(o);
        }
        self.report(&acc, 1)
    }

    fn report(&self, acc: &Accumulator, replications: usize) -> RunReport {
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

    /// Throughput helper for benchmarks: simulates `token_layers` token-layer
    /// steps on this thread (prompt after prompt, every policy at each step)
    /// and reports how many policy decisions that was. Time it to get
    /// decisions per second per core.
    ///
    /// ```
    /// use wdmoe_sim::{scenario::Scenario, sim::Simulation};
    /// let sim = Simulation::new(Scenario::paper()).unwrap();
    /// let t = sim.run_decisions(1000).unwrap();
    /// assert_eq!(t.token_layers, 1000);
    /// assert_eq!(t.decisions, 1000 * sim.policies().len() as u64);
    /// ```
    pub fn run_decisions(&self, token_layers: u64) -> Result<ThroughputSample, SimError> {
        let mut done = 0u64;
        let mut checksum = 0.0;
        let mut prompt = 0u64;
        while done < token_layers {
            let (o, steps) =
                self.simulate(self.router.as_ref(), 0, prompt, false, token_layers - done)?;
            done += steps;
            checksum += o.policies.iter().map(|p| p.latency_s).sum::<f64>();
            prompt += 1;
            if steps == 0 {
                break;
            }
        }
        Ok(ThroughputSample {
            token_layers: done,
            decisions: done * self.policies.len() as u64,
            checksum,
        })
    }
}
