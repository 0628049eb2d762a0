//! The MoE block of a decoder layer: router logits, then the layer executor
//! ([`crate::layer::cpu::forward_from_logits`]: the WDMoE policy of
//! wdmoe-core per token, the experts, the weighted combine), with the
//! per-token wireless latencies of the experts and the routing record.

use wdmoe_core::select::Policy;

use super::ModelError;
use crate::channel::ChannelModel;
use crate::layer::{cpu, MoeWeights, TokenSelection};
use crate::scenario::Scenario;
use crate::sim::{ChannelSchedule, TokenChannel};

/// How the MoE layers route: the WDMoE policy (k, θ, max drops). θ = 0 is
/// plain top-k (Mixtral's routing) whenever every expert is reachable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoeConfig {
    /// The selection policy of every layer.
    pub policy: Policy<f64>,
}

impl MoeConfig {
    /// Plain top-`k` routing (θ = 0).
    pub fn top_k(k: usize) -> Result<Self, ModelError> {
        Self::wdmoe(k, 0.0, 0)
    }

    /// WDMoE with `k` experts by weight, threshold `theta`, at most `max_drops` drops.
    pub fn wdmoe(k: usize, theta: f64, max_drops: usize) -> Result<Self, ModelError> {
        let policy = Policy::new(k, theta, max_drops)
            .map_err(|e| ModelError::Settings(format!("policy k={k}, θ={theta}: {e:?}")))?;
        Ok(MoeConfig { policy })
    }
}

/// Where the experts' per-token latencies come from: the latency \[s\] of
/// every expert (device) for the token at `position` in decoder `layer`
/// (`+∞`: unreachable).
pub trait ExpertLatency {
    /// Writes the latencies into `latency_s` (one per expert).
    fn latency_s(
        &mut self,
        position: usize,
        layer: usize,
        latency_s: &mut [f64],
    ) -> Result<(), ModelError>;
}

/// The same latency per expert for every token and layer.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedLatency {
    latency_s: Vec<f64>,
}

impl FixedLatency {
    /// Latencies \[s\], one per expert; each > 0 (or `+∞`), not NaN.
    pub fn new(latency_s: Vec<f64>) -> Result<Self, ModelError> {
        if latency_s.is_empty() || latency_s.iter().any(|t| t.is_nan() || *t <= 0.0) {
            return Err(ModelError::Settings(format!(
                "latencies must be > 0 seconds, one per expert: {latency_s:?}"
            )));
        }
        Ok(FixedLatency { latency_s })
    }

    /// Equal latencies (1 s) for `n_experts`: the policy then only sees the
    /// router weights (for perplexity runs without a channel).
    pub fn uniform(n_experts: usize) -> Self {
        FixedLatency {
            latency_s: vec![1.0; n_experts.max(1)],
        }
    }
}

impl ExpertLatency for FixedLatency {
    fn latency_s(&mut self, _: usize, _: usize, out: &mut [f64]) -> Result<(), ModelError> {
        if out.len() != self.latency_s.len() {
            return Err(ModelError::Settings(format!(
                "{} latencies given for {} experts",
                self.latency_s.len(),
                out.len()
            )));
        }
        out.copy_from_slice(&self.latency_s);
        Ok(())
    }
}

/// Latencies of a simulated wireless deployment: the scenario's channel
/// (expert q on device q) exactly as the simulator charges it: the same
/// realisation (seed, sequence = prompt index), one channel slot per token
/// position (a batched prefill: one slot), and the fading moving on every
/// `channel.fading_layers` layers within a token
/// ([`crate::sim::TokenChannel`], the simulator's own stepping); eq. (6)
/// with the scenario's compute model. Every position's latencies (all its
/// layers) are drawn once, in order, and kept, so layers and re-runs of a
/// position see the same.
#[derive(Debug)]
pub struct ScenarioLatency<'a> {
    chan: TokenChannel<'a>,
    n: usize,
    layers: usize,
    /// `[position][layer][device]`, positions `0..len/(layers·n)` drawn so far.
    drawn: Vec<f64>,
}

impl<'a> ScenarioLatency<'a> {
    /// The channel of `channel`'s scenario drawn for sequence `sequence` of
    /// a run seeded with `seed` (the simulator's prompt `sequence` of
    /// replication 0), stepped through `schedule` (see
    /// [`ChannelSchedule::for_prompt`]: the model's layers, the prompt length).
    pub fn new(
        channel: &'a ChannelModel,
        schedule: ChannelSchedule,
        seed: u64,
        sequence: u64,
    ) -> Result<Self, ModelError> {
        let layers = schedule.layers();
        let chan = TokenChannel::for_prompt(channel, schedule, seed, sequence)
            .map_err(|e| ModelError::Latency(format!("channel: {e:?}")))?;
        Ok(ScenarioLatency {
            chan,
            n: channel.n_devices(),
            layers,
            drawn: Vec::new(),
        })
    }

    /// Checks that `scenario` has one device per expert and builds its channel model.
    pub fn channel_for(scenario: &Scenario, n_experts: usize) -> Result<ChannelModel, ModelError> {
        if scenario.n_experts() != n_experts {
            return Err(ModelError::Latency(format!(
                "the scenario has {} devices, the model {n_experts} experts per layer",
                scenario.n_experts()
            )));
        }
        ChannelModel::new(scenario).map_err(|e| ModelError::Latency(format!("channel: {e:?}")))
    }
}

impl ExpertLatency for ScenarioLatency<'_> {
    fn latency_s(
        &mut self,
        position: usize,
        layer: usize,
        out: &mut [f64],
    ) -> Result<(), ModelError> {
        let (n, layers) = (self.n, self.layers);
        if out.len() != n {
            return Err(ModelError::Latency(format!(
                "{n} devices for {} experts",
                out.len()
            )));
        }
        if layer >= layers {
            return Err(ModelError::Latency(format!(
                "layer {layer} of a {layers}-layer schedule"
            )));
        }
        let per = layers * n;
        let err = |e: wdmoe_core::Error| ModelError::Latency(format!("channel: {e:?}"));
        while self.drawn.len() <= position * per {
            let token = u32::try_from(self.drawn.len() / per)
                .map_err(|_| ModelError::Latency(format!("position {position} is too large")))?;
            self.chan.token(token).map_err(err)?;
            for l in 0..layers {
                self.chan.layer(l).map_err(err)?;
                self.drawn.extend_from_slice(self.chan.latency_s());
            }
        }
        let at = position * per + layer * n;
        out.copy_from_slice(&self.drawn[at..at + n]);
        Ok(())
    }
}

/// The routing of one decoder layer for the tokens of one forward call.
#[derive(Debug, Clone)]
pub struct LayerRouting {
    /// Router logits, `[n_tokens][n_experts]` (f32 products, f64).
    pub router_logits: Vec<f64>,
    /// The experts' latencies the policy saw, `[n_tokens][n_experts]` \[s\].
    pub latency_s: Vec<f64>,
    /// The policy's decision per token (experts, combine weights, dropped, κ).
    pub selections: Vec<TokenSelection>,
    /// Router weight kept per token: the sum of the plain top-k's
    /// renormalised weights over the experts that served (1 when none was
    /// dropped).
    pub kept_weight: Vec<f64>,
    /// Eq. (7) per token under the policy \[s\]: the slowest serving expert.
    pub token_latency_s: Vec<f64>,
    /// Eq. (7) per token had plain top-k served it (θ = 0, same k; only
    /// unreachable experts are left out) \[s\].
    pub top_k_latency_s: Vec<f64>,
    /// Measured time of the MoE step (router, policy, experts) \[s\]: host
    /// time on the CPU backend; on the GPU backend the GPU time of the
    /// layer's timed steps (steps on the device, decode and prompt, are
    /// not timed: they add 0, see wdmoe-cuda's `GpuModel::set_moe_timing`).
    pub compute_s: f64,
}

/// One MoE block for `n` tokens at positions `start..start+n`.
pub(crate) fn moe_block(
    layer: usize,
    w: &MoeWeights,
    x: &[f32],
    n: usize,
    start: usize,
    cfg: &MoeConfig,
    latency: &mut dyn ExpertLatency,
) -> Result<(Vec<f32>, LayerRouting), ModelError> {
    let t0 = std::time::Instant::now();
    let e = w.n_experts();
    let err = |source| ModelError::Layer { layer, source };
    let mut lat = vec![0.0; n * e];
    for (t, row) in lat.chunks_exact_mut(e).enumerate() {
        latency.latency_s(start + t, layer, row)?;
    }
    let logits = cpu::router_logits(w, x, n);
    let out = cpu::forward_from_logits(w, x, n, &logits, &cfg.policy, &lat).map_err(err)?;
    let routing = layer_routing(
        layer,
        &cfg.policy,
        logits,
        lat,
        out.selections,
        out.token_latency_s,
        t0.elapsed().as_secs_f64(),
    )?;
    Ok((out.out, routing))
}

/// The routing record of one layer from what its step decided (`logits`
/// and `latency_s` `[n][experts]`, one selection and eq. (7) latency per
/// token): adds the kept router weight and plain top-k's latency per token.
/// Shared by the CPU block and the GPU model.
pub(crate) fn layer_routing(
    layer: usize,
    policy: &Policy<f64>,
    logits: Vec<f64>,
    latency_s: Vec<f64>,
    selections: Vec<TokenSelection>,
    token_latency_s: Vec<f64>,
    compute_s: f64,
) -> Result<LayerRouting, ModelError> {
    let n = selections.len();
    let e = logits.len().checked_div(n).unwrap_or(0);
    let err = |source| ModelError::Layer { layer, source };
    let pol = |e| err(crate::layer::LayerError::Policy(e));
    let base = Policy::new(policy.k(), 0.0, 0).map_err(pol)?;
    let mut kept_weight = Vec::with_capacity(n);
    let mut top_k_latency_s = Vec::with_capacity(n);
    for (t, sel) in selections.iter().enumerate() {
        let z = &logits[t * e..(t + 1) * e];
        let l = &latency_s[t * e..(t + 1) * e];
        let plain: TokenSelection = wdmoe_core::select::top_k(z, policy.k()).map_err(pol)?;
        let kept: f64 = plain
            .experts()
            .iter()
            .zip(plain.weights())
            .filter(|(q, _)| sel.experts().contains(q))
            .map(|(_, w)| w)
            .sum();
        kept_weight.push(kept);
        let reach: TokenSelection = wdmoe_core::select::select(&base, z, l).map_err(pol)?;
        top_k_latency_s.push(reach.token_latency_s(l).map_err(pol)?);
    }
    Ok(LayerRouting {
        router_logits: logits,
        latency_s,
        selections,
        kept_weight,
        token_latency_s,
        top_k_latency_s,
        compute_s,
    })
}
