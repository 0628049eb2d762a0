//! Routers: where the router logits of every token and MoE layer come from.
//!
//! One trait, [`Router`], three sources:
//! * (a) [`SyntheticRouter`], a Mixtral-like model (below);
//! * (b) [`TraceRouter`], recorded logits replayed from a `.npy` file
//!   ([`crate::trace`] documents the format);
//! * (c) live router output from executing a real MoE layer. **Hook:**
//!   implement [`Router`] for a type that runs the model's gate on each
//!   token's hidden state at every layer (the `layer` module's
//!   `cpu::router_logits`, or its GPU executor behind the `cuda` feature,
//!   computes exactly these logits from router weights and hidden states) and
//!   writes the `layers × experts` logits in [`RouterStream::next_token`];
//!   pass it to [`crate::sim::Simulation::with_router`]. Nothing else in the
//!   simulator changes.
//!
//! # The synthetic router
//! Logit of expert `q` at layer `l` for token `j`:
//! `z_{j,l,q} = b_{l,q} + spread · ε_{j,l,q}`, where `b_{l,q} ~ N(0,
//! layer_bias_std²)` is drawn once per run (each layer prefers some experts,
//! as trained routers do) and `ε` is a unit-variance AR(1) process along the
//! tokens, `ε_j = ρ ε_{j−1} + √(1−ρ²) u_j`, `u ~ N(0, 1)` with `ρ =
//! stickiness`: consecutive tokens often pick the same experts, as the
//! Mixtral paper reports (§5, "consecutive tokens are often assigned the
//! same experts"). `spread` sets how peaked the weights are: the ratio
//! `w2/w1 = e^{z_2 − z_1}` of the top-2 weights is what WDMoE's κ trades
//! against latency (with equal latencies and k = 2, WDMoE drops the second
//! expert when `w2/w1 ≤ θ/(1−θ)`: 0.11 at θ = 0.1, 0.25 at θ = 0.2, 0.43 at
//! θ = 0.3). [`RouterSummary`] prints the distribution a setting implies.

use crate::rng::{self, Rng, Stream};
use crate::trace::Trace;
use std::fmt;

/// A source of router logits for a run. `Sync` so prompts run in parallel.
pub trait Router: Send + Sync {
    /// Number of MoE layers it produces per token.
    fn n_layers(&self) -> usize;
    /// Number of experts.
    fn n_experts(&self) -> usize;
    /// One line describing the source, for reports.
    fn describe(&self) -> String;
    /// The logit stream of prompt `prompt`; `rng` is that prompt's router
    /// stream (derived from the run seed and the prompt index).
    fn start_prompt(&self, prompt: u64, rng: Rng) -> Box<dyn RouterStream + '_>;
}

/// The logits of one prompt, token after token.
pub trait RouterStream {
    /// Writes the next token's logits, layer-major: `out\[l * n + q\]` is the
    /// logit of expert `q` at layer `l` (`out.len() = layers × experts`).
    fn next_token(&mut self, out: &mut [f64]);
}

/// The synthetic Mixtral-like router (see the module docs).
#[derive(Debug, Clone)]
pub struct SyntheticRouter {
    layers: usize,
    experts: usize,
    spread: f64,
    stickiness: f64,
    bias: Vec<f64>,
}

impl SyntheticRouter {
    /// A router for `layers × experts`, with the per-layer biases drawn from
    /// the run `seed` (the same for every prompt).
    pub fn new(
        layers: usize,
        experts: usize,
        spread: f64,
        layer_bias_std: f64,
        stickiness: f64,
        seed: u64,
    ) -> Self {
        let mut r = rng::stream(seed, 0, Stream::RouterLayers);
        let bias = (0..layers * experts)
            .map(|_| layer_bias_std * rng::normal(&mut r))
            .collect();
        Self {
            layers,
            experts,
            spread,
            stickiness,
            bias,
        }
    }
}

struct SyntheticStream<'a> {
    r: &'a SyntheticRouter,
    rng: Rng,
    eps: Vec<f64>,
    started: bool,
}

impl RouterStream for SyntheticStream<'_> {
    fn next_token(&mut self, out: &mut [f64]) {
        let rho = self.r.stickiness;
        let w = (1.0 - rho * rho).sqrt();
        let started = self.started;
        let step = |e: &mut f64, u: f64| *e = if started { rho * *e + w * u } else { u };
        // Box–Muller gives normals in pairs: use both.
        for pair in self.eps.chunks_mut(2) {
            let (a, b) = rng::normal_pair(&mut self.rng);
            step(&mut pair[0], a);
            if let Some(e) = pair.get_mut(1) {
                step(e, b);
            }
        }
        self.started = true;
        for ((o, &b), &e) in out.iter_mut().zip(&self.r.bias).zip(&self.eps) {
            *o = b + self.r.spread * e;
        }
    }
}

impl Router for SyntheticRouter {
    fn n_layers(&self) -> usize {
        self.layers
    }
    fn n_experts(&self) -> usize {
        self.experts
    }
    fn describe(&self) -> String {
        format!(
            "synthetic Mixtral-like router: spread {}, stickiness {}",
            self.spread, self.stickiness
        )
    }
    fn start_prompt(&self, _prompt: u64, rng: Rng) -> Box<dyn RouterStream + '_> {
        Box::new(SyntheticStream {
            r: self,
            rng,
            eps: vec![0.0; self.layers * self.experts],
            started: false,
        })
    }
}

/// Replays recorded logits. Prompt `p` with `T` tokens reads trace tokens
/// `p·T, p·T + 1, …` (modulo the trace length): consecutive prompts walk
/// through the trace, wrapping around.
#[derive(Debug, Clone)]
pub struct TraceRouter {
    trace: Trace,
    tokens_per_prompt: u64,
}

impl TraceRouter {
    /// A router replaying `trace` for prompts of `tokens_per_prompt` tokens.
    pub fn new(trace: Trace, tokens_per_prompt: u64) -> Self {
        Self {
            trace,
            tokens_per_prompt,
        }
    }
}

struct TraceStream<'a> {
    t: &'a Trace,
    next: u64,
}

impl RouterStream for TraceStream<'_> {
    fn next_token(&mut self, out: &mut [f64]) {
        let tok = (self.next % self.t.tokens() as u64) as usize;
        let n = self.t.experts();
        for (l, chunk) in out.chunks_exact_mut(n).enumerate() {
            chunk.copy_from_slice(self.t.logits(tok, l));
        }
        self.next = self.next.wrapping_add(1);
    }
}

impl Router for TraceRouter {
    fn n_layers(&self) -> usize {
        self.trace.layers()
    }
    fn n_experts(&self) -> usize {
        self.trace.experts()
    }
    fn describe(&self) -> String {
        format!(
            "recorded router trace: {} tokens × {} layers × {} experts",
            self.trace.tokens(),
            self.trace.layers(),
            self.trace.experts()
        )
    }
    fn start_prompt(&self, prompt: u64, _rng: Rng) -> Box<dyn RouterStream + '_> {
        let start = prompt.wrapping_mul(self.tokens_per_prompt) % self.trace.tokens() as u64;
        Box::new(TraceStream {
            t: &self.trace,
            next: start,
        })
    }
}

/// What a router implies for the top-2 weights, so users see what they assume.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RouterSummary {
    /// Token-layer samples the summary is computed from.
    pub samples: usize,
    /// Quantiles (10, 25, 50, 75, 90 %) of `w2/w1`, the ratio of the second
    /// to the first top-k weight.
    pub ratio_quantiles: [f64; 5],
    /// Mean top-1 weight renormalised over the top-2.
    pub mean_w1: f64,
    /// Fraction of token-layers with `w2/w1 ≤ θ/(1−θ)` for θ = 0.1, 0.2,
    /// 0.3: the drop rate WDMoE would have with equal latencies.
    pub below_threshold: [f64; 3],
    /// Fraction of consecutive token pairs (same layer) with the same top-1 expert.
    pub top1_repeat: f64,
}

impl RouterSummary {
    /// Samples `prompts × tokens` tokens of `router` (all layers), seeded.
    pub fn compute(router: &dyn Router, prompts: u64, tokens: usize, seed: u64) -> Self {
        let (l, n) = (router.n_layers(), router.n_experts());
        let mut ratios = Vec::new();
        let mut w1_sum = 0.0;
        let (mut rep, mut pairs) = (0u64, 0u64);
        let mut buf = vec![0.0; l * n];
        let mut prev_top = vec![usize::MAX; l];
        for p in 0..prompts {
            let mut s = router.start_prompt(p, rng::stream(seed, p, Stream::Router));
            prev_top.iter_mut().for_each(|t| *t = usize::MAX);
            for _ in 0..tokens {
                s.next_token(&mut buf);
                for (li, z) in buf.chunks_exact(n).enumerate() {
                    let Ok(sel) = crate::policy::top_k_dyn(z, 2.min(n)) else {
                        continue;
                    };
                    let (e, w) = sel;
                    let ratio = if w.len() > 1 { w[1] / w[0] } else { 0.0 };
                    ratios.push(ratio);
                    w1_sum += w[0];
                    if prev_top[li] != usize::MAX {
                        pairs += 1;
                        rep += (prev_top[li] == e[0]) as u64;
                    }
                    prev_top[li] = e[0];
                }
            }
        }
        ratios.sort_by(f64::total_cmp);
        let q = |f: f64| crate::stats::percentile_sorted(&ratios, f);
        let below = |th: f64| {
            let cut = th / (1.0 - th);
            ratios.iter().filter(|&&r| r <= cut).count() as f64 / ratios.len().max(1) as f64
        };
        Self {
            samples: ratios.len(),
            ratio_quantiles: [q(10.0), q(25.0), q(50.0), q(75.0), q(90.0)],
            mean_w1: w1_sum / ratios.len().max(1) as f64,
            below_threshold: [below(0.1), below(0.2), below(0.3)],
            top1_repeat: rep as f64 / pairs.max(1) as f64,
        }
    }
}

impl fmt::Display for RouterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = &self.ratio_quantiles;
        writeln!(
            f,
            "router: w2/w1 quantiles p10 {:.2} | p25 {:.2} | p50 {:.2} | p75 {:.2} | p90 {:.2}; mean top-1 weight {:.3}",
            q[0], q[1], q[2], q[3], q[4], self.mean_w1
        )?;
        write!(
            f,
            "        w2/w1 <= θ/(1-θ) (drops at equal latency): θ=0.1 {:.1} %, θ=0.2 {:.1} %, θ=0.3 {:.1} %; same top-1 as previous token {:.1} %",
            100.0 * self.below_threshold[0],
            100.0 * self.below_threshold[1],
            100.0 * self.below_threshold[2],
            100.0 * self.top1_repeat
        )
    }
}
