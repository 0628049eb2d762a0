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
use crate::rng;
use crate::router::{Router, RouterSummary, SyntheticRouter, TraceRouter};
use crate::scenario::{Accounting, RouterKind, Scenario, ScenarioError};

mod aggregate;
mod draws;
mod variants;

use crate::trace::{Trace, TraceError};
use aggregate::Accumulator;
pub use aggregate::{PolicyRow, RunReport};
pub use draws::{ChannelSchedule, PromptDraws, Replication, TokenChannel};
use rayon::prelude::*;
use serde::Serialize;
use std::fmt;
pub use variants::{is_paper_setup, scale_cell, scale_compute_spread};
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

    /// Replication `r` of this simulation: its seed and router, and the
    /// draws of each of its prompts ([`Replication::prompt`]).
    pub fn replication(&self, r: u64) -> Replication<'_> {
        Replication::new(self, r)
    }

    /// Simulates prompt `prompt` (its streams derive from the run seed and
    /// `prompt` alone). With `record_tokens`, each policy's per-token
    /// latency is kept.
    pub fn simulate_prompt(
        &self,
        prompt: u64,
        record_tokens: bool,
    ) -> Result<PromptOutcome, SimError> {
        let rep = self.replication(0);
        let (o, _) = self.simulate(rep.prompt(prompt)?, record_tokens, u64::MAX)?;
        Ok(o)
    }

    /// Like [`Simulation::simulate_prompt`] in replication `replication`
    /// (its seed is [`rng::replication_seed`]`(seed, replication)`).
    pub fn simulate_replication_prompt(
        &self,
        replication: u64,
        prompt: u64,
    ) -> Result<PromptOutcome, SimError> {
        let rep = self.replication(replication);
        let (o, _) = self.simulate(rep.prompt(prompt)?, false, u64::MAX)?;
        Ok(o)
    }

    /// Every prompt of every replication, the way [`Simulation::run`] visits
    /// them: `each(replication, prompt, draws)` on rayon's threads, in chunks
    /// of prompts, and `merge` of the results in (replication, prompt) order
    /// on this thread (results identical on any thread count; memory bounded
    /// by a chunk). `progress` is called once per finished prompt.
    pub fn fold_prompts<T: Send>(
        &self,
        each: &(dyn Fn(&Replication<'_>, u64, PromptDraws<'_>) -> Result<T, SimError> + Sync),
        merge: &mut dyn FnMut(T),
        progress: &(dyn Fn() + Sync),
    ) -> Result<(), SimError> {
        const CHUNK: u64 = 1024;
        let s = &self.scenario;
        for r in 0..s.replications as u64 {
            let rep = self.replication(r);
            let mut start = 0u64;
            while start < s.prompts as u64 {
                let end = (start + CHUNK).min(s.prompts as u64);
                let outcomes: Vec<T> = (start..end)
                    .into_par_iter()
                    .map(|p| {
                        let out = rep.prompt(p).and_then(|d| each(&rep, p, d));
                        progress();
                        out
                    })
                    .collect::<Result<_, _>>()?;
                outcomes.into_iter().for_each(&mut *merge);
                start = end;
            }
        }
        Ok(())
    }

    /// Core loop; stops after `max_token_layers` token-layer steps.
    fn simulate(
        &self,
        mut draws: PromptDraws<'_>,
        record_tokens: bool,
        max_token_layers: u64,
    ) -> Result<(PromptOutcome, u64), SimError> {
        let s = &self.scenario;
        let n = s.n_experts();
        let layers = s.model.layers as usize;
        let k = s.model.top_k;
        let np = self.policies.len();
        let batched = s.accounting == Accounting::Batched;
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
        let mut steps = 0u64;
        let mut token_sum = vec![0.0; np];
        'tokens: while let Some(j) = draws.next_token()? {
            let prefill = j < s.prompt_tokens;
            if j == 0 {
                prefill_lat.copy_from_slice(draws.channel().latency_s());
            }
            token_sum.iter_mut().for_each(|t| *t = 0.0);
            for l in 0..layers {
                if steps >= max_token_layers {
                    break 'tokens;
                }
                steps += 1;
                draws.layer(l)?;
                let z = draws.logits(l);
                let lat = draws.channel().latency_s();
                // The reachable top-k, shared by the policies; the plain top-k
                // (for the kept weight) is the same unless a device is down.
                policy::reachable_top_k(k, z, lat, &mut base)?;
                if draws.channel().all_up() {
                    ref_e.clone_from(&base.experts);
                    ref_w.clone_from(&base.weights);
                } else {
                    (ref_e, ref_w) = policy::top_k_dyn(z, k)?;
                }
                for (pi, pol) in self.policies.iter().enumerate() {
                    pol.decide_from_base(z, lat, &base, &mut dec)?;
                    let t = latency::token_latency_s(lat, &dec.experts)?;
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
        let chan = draws.channel();
        Ok((
            PromptOutcome {
                policies: stats,
                suppressed_outages: chan.suppressed_outages(),
                link_outages: chan.link_outages(),
                device_slots: chan.channel_draws() * n as u64,
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
        let mut acc = Accumulator::new(self.policies.len());
        self.fold_prompts(
            &|_, _, d| self.simulate(d, false, u64::MAX).map(|(o, _)| o),
            &mut |o| acc.add(&o),
            progress,
        )?;
        Ok(self.report(&acc, self.scenario.replications.max(1)))
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
        let rep = self.replication(0);
        while done < token_layers {
            let draws = rep.prompt(prompt)?;
            let (o, steps) = self.simulate(draws, false, token_layers - done)?;
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
