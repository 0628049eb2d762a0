//! The one owner of a prompt's random draws: which channel slot each token
//! sees, when the fading moves on within a token, which router stream and
//! seed a prompt of a replication uses. The simulator's engine, the frontier
//! study ([`crate::frontier`]) and `wdmoe generate`'s simulated latencies
//! ([`crate::model::ScenarioLatency`]) all step through these, so they see
//! the same latencies and logits for the same (replication, prompt, token,
//! layer).
//!
//! Schedule ([`ChannelSchedule`]): token `j` is channel slot `j`, except a
//! batched prefill, which is slot 0 for all its tokens (one transmission);
//! within a token the fading moves on every `channel.fading_layers` layers
//! by `fading_layers / layers` of a slot (not within a batched prefill).

use super::{SimError, Simulation};
use crate::channel::{ChannelModel, ChannelRealisation};
use crate::rng::{self, Stream};
use crate::router::{Router, RouterStream};
use crate::scenario::{Accounting, Scenario};
use wdmoe_core::latency::DeviceLink;
use wdmoe_core::Error;

/// When the channel of a prompt moves (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelSchedule {
    layers: usize,
    fading_layers: usize,
    /// Tokens `0..batched_prefill` share slot 0 (0: sequential accounting).
    batched_prefill: u32,
}

impl ChannelSchedule {
    /// The schedule of scenario `s` (its layers, `channel.fading_layers`,
    /// accounting and prefill length).
    pub fn of(s: &Scenario) -> Self {
        Self::for_prompt(s, s.model.layers as usize, s.prompt_tokens)
    }

    /// The schedule the simulator would use for scenario `s` with `layers`
    /// layers per token and a prefill of `prompt_tokens` tokens (a model
    /// whose shape is not the scenario's, e.g. `wdmoe generate`'s).
    pub fn for_prompt(s: &Scenario, layers: usize, prompt_tokens: u32) -> Self {
        Self {
            layers,
            fading_layers: s.channel.fading_layers as usize,
            batched_prefill: if s.accounting == Accounting::Batched {
                prompt_tokens
            } else {
                0
            },
        }
    }

    /// Layers per token.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Whether token `token` is part of a batched prefill.
    pub fn in_batched_prefill(&self, token: u32) -> bool {
        token < self.batched_prefill
    }

    /// The channel slot of token `token`.
    pub fn slot(&self, token: u32) -> u32 {
        if self.in_batched_prefill(token) {
            0
        } else {
            token
        }
    }

    /// Whether the fading moves on when token `token` reaches layer `layer`.
    pub fn refades(&self, token: u32, layer: usize) -> bool {
        self.fading_layers > 0
            && layer > 0
            && layer % self.fading_layers == 0
            && !self.in_batched_prefill(token)
    }

    /// The fraction of a slot the fading moves by at each within-token update.
    fn fading_fraction(&self) -> f64 {
        self.fading_layers as f64 / self.layers.max(1) as f64
    }
}

/// A prompt's channel token by token and layer by layer, as the simulator
/// charges it: [`TokenChannel::token`] then [`TokenChannel::layer`] for
/// layers `0, 1, …` of that token, tokens in increasing order.
#[derive(Debug)]
pub struct TokenChannel<'a> {
    chan: ChannelRealisation<'a>,
    schedule: ChannelSchedule,
    lat: Vec<f64>,
    token: u32,
    started: bool,
    slots: u64,
    all_up: bool,
}

impl<'a> TokenChannel<'a> {
    /// The channel of prompt `prompt` in a run (replication) seeded with
    /// `seed`: `channel` realised from the prompt's channel stream
    /// ([`Stream::Channel`]), stepped through `schedule`.
    pub fn for_prompt(
        channel: &'a ChannelModel,
        schedule: ChannelSchedule,
        seed: u64,
        prompt: u64,
    ) -> Result<Self, Error> {
        let chan = channel.realise(rng::stream(seed, prompt, Stream::Channel))?;
        Ok(Self {
            chan,
            schedule,
            lat: vec![f64::INFINITY; channel.n_devices()],
            token: 0,
            started: false,
            slots: 0,
            all_up: true,
        })
    }

    /// The schedule.
    pub fn schedule(&self) -> &ChannelSchedule {
        &self.schedule
    }

    /// Moves to token `token` (layer 0); returns whether the latencies changed.
    pub fn token(&mut self, token: u32) -> Result<bool, Error> {
        let slot = self.schedule.slot(token);
        let moved = !self.started || slot != self.schedule.slot(self.token);
        self.started = true;
        self.token = token;
        if moved {
            self.chan.latency_at(slot, &mut self.lat)?;
            self.after_change();
        }
        Ok(moved)
    }

    /// Moves the current token to layer `layer` (`1, 2, …` after
    /// [`TokenChannel::token`]; layer 0 is a no-op); returns whether the
    /// latencies changed.
    pub fn layer(&mut self, layer: usize) -> Result<bool, Error> {
        if !self.schedule.refades(self.token, layer) {
            return Ok(false);
        }
        let slot = self.schedule.slot(self.token);
        self.chan
            .refade(slot, self.schedule.fading_fraction(), &mut self.lat)?;
        self.after_change();
        Ok(true)
    }

    fn after_change(&mut self) {
        self.slots += 1;
        self.all_up = self.lat.iter().all(|t| t.is_finite());
    }

    /// Each device's latency \[s\] now (`+∞`: unreachable), eq. (6).
    pub fn latency_s(&self) -> &[f64] {
        &self.lat
    }

    /// Whether every device is reachable now.
    pub fn all_up(&self) -> bool {
        self.all_up
    }

    /// The reachable devices' links now (see [`ChannelRealisation::links`]).
    pub fn links(&self) -> impl Iterator<Item = (usize, &DeviceLink<f64>)> {
        self.chan.links()
    }

    /// Each device's bandwidth \[Hz\] in this prompt (see
    /// [`ChannelRealisation::bandwidth_hz`]).
    pub fn bandwidth_hz(&self) -> &[f64] {
        self.chan.bandwidth_hz()
    }

    /// Channel draws so far (slots plus within-token updates).
    pub fn channel_draws(&self) -> u64 {
        self.slots
    }

    /// See [`ChannelRealisation::suppressed_outages`].
    pub fn suppressed_outages(&self) -> u64 {
        self.chan.suppressed_outages()
    }

    /// See [`ChannelRealisation::link_outages`].
    pub fn link_outages(&self) -> u64 {
        self.chan.link_outages()
    }
}

/// One replication of a simulation: its seed and router (a synthetic
/// router's layer structure is redrawn for replications `1..`).
pub struct Replication<'s> {
    sim: &'s Simulation,
    index: u64,
    seed: u64,
    own: Option<Box<dyn Router>>,
}

impl<'s> Replication<'s> {
    pub(super) fn new(sim: &'s Simulation, index: u64) -> Self {
        Self {
            sim,
            index,
            seed: rng::replication_seed(sim.scenario().seed, index),
            own: sim.replica_router(index),
        }
    }

    /// Its index (0: the run seed itself).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Its seed ([`rng::replication_seed`]).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Its router.
    pub fn router(&self) -> &dyn Router {
        self.own.as_deref().unwrap_or(self.sim.router())
    }

    /// The draws of prompt `prompt` of this replication.
    pub fn prompt(&self, prompt: u64) -> Result<PromptDraws<'_>, SimError> {
        let s = self.sim.scenario();
        let n = s.n_experts();
        Ok(PromptDraws {
            channel: TokenChannel::for_prompt(
                self.sim.channel(),
                ChannelSchedule::of(s),
                self.seed,
                prompt,
            )?,
            router: self
                .router()
                .start_prompt(prompt, rng::stream(self.seed, prompt, Stream::Router)),
            logits: vec![0.0; s.model.layers as usize * n],
            n,
            tokens: s.total_tokens(),
            next: 0,
        })
    }
}

/// The draws of one prompt: per token the router's logits of every layer,
/// per layer the devices' latencies. Step with [`PromptDraws::next_token`],
/// then [`PromptDraws::layer`] for layers `0..layers`.
pub struct PromptDraws<'r> {
    channel: TokenChannel<'r>,
    router: Box<dyn RouterStream + 'r>,
    logits: Vec<f64>,
    n: usize,
    tokens: u32,
    next: u32,
}

impl<'r> PromptDraws<'r> {
    /// Moves to the next token (its layer 0): `Some(token index)`, or `None`
    /// after the prompt's last token.
    pub fn next_token(&mut self) -> Result<Option<u32>, SimError> {
        if self.next >= self.tokens {
            return Ok(None);
        }
        let j = self.next;
        self.next += 1;
        self.channel.token(j)?;
        self.router.next_token(&mut self.logits);
        Ok(Some(j))
    }

    /// Moves the current token to layer `layer`: returns whether the
    /// latencies changed, then read [`PromptDraws::logits`] and
    /// [`PromptDraws::channel`].
    pub fn layer(&mut self, layer: usize) -> Result<bool, SimError> {
        Ok(self.channel.layer(layer)?)
    }

    /// The current token's router logits at layer `layer`.
    pub fn logits(&self, layer: usize) -> &[f64] {
        &self.logits[layer * self.n..(layer + 1) * self.n]
    }

    /// The channel now.
    pub fn channel(&self) -> &TokenChannel<'r> {
        &self.channel
    }

    /// Layers per token.
    pub fn layers(&self) -> usize {
        self.channel.schedule.layers
    }
}
