//! Scenarios: a base station, `N` devices (expert `q` of every MoE layer lives
//! on device `q`), the radio, the channel, the router, the workload and the
//! policies to compare. Read from TOML ([`Scenario::from_toml_str`]),
//! validated after parsing ([`Scenario::validate`]); a validated scenario is
//! always simulable.
//!
//! # Defaults, and why
//! [`Scenario::default`] is the paper's setup (§IV-A): 8 devices, carrier
//! 3.5 GHz, base-station power 10 W, device power 0.2 W, 100 MHz split
//! evenly, the paper's free-space path loss with Rayleigh fading drawn per
//! token, Mixtral 8x7B (32 layers, `m = 4096`, `m_h = 14336`, top-2).
//! What the paper does not give, and what this crate chose:
//!
//! | parameter | default | reason |
//! |---|---|---|
//! | `n0_dbm_per_hz` | −174 dBm/Hz | thermal noise at 290 K (docs/SPEC.md) |
//! | `noise_figure_db` | 7 dB | a typical handset receiver (3GPP UE noise figure 7–9 dB); the paper's formula has none, set 0 to match it literally |
//! | `min_snr_db` | −7 dB | an SNR floor: below the lowest 5G NR CQI (QPSK, code rate 78/1024, usable down to about −6.7 dB) a link carries nothing and its device is unreachable for that token; without it the paper's Rayleigh + Shannon model gives plain top-k an infinite mean latency (see [`crate::channel`]); `-inf` restores the literal model |
//! | `bits_per_element` ε | 16 | fp16 hidden states (docs/SPEC.md) |
//! | `eta_flops` η | 4 | FLOPs of SiLU per element (docs/SPEC.md) |
//! | devices | two each of four presets (Jetson AGX Orin, Snapdragon 8 Gen 3 phone, Apple M2, mid-range phone) at 50 m … 600 m, see [`default_devices`] | real device classes over a 600 m macro cell; their memory bandwidths differ 6×, and that spread, not the radio, sets WDMoE's reduction: `wdmoe sensitivity` shows it against the spread and the radius |
//! | device model | roofline (`model.compute_model`), see [`crate::device`] | one token through one expert is memory-bound on every device; a batch reads the weights once; the paper's literal `F / C_q` is selectable |
//! | `bs_tx_power_w` | 10 W per device link | the paper's 10 W read as each link's power; 1.25 models a base station splitting 10 W over 8 links |
//! | replications × prompts × tokens | 10 × 100 × 128 | t intervals over every random draw, a few seconds on a laptop |
//! | fading time | redrawn every token (`coherence_tokens = 1`) and every 5 layers within a token (`fading_layers = 5`) | at ~8 ms per layer, 5 layers are ~41 ms, a pedestrian's coherence time at 3.5 GHz (~44 ms at 3 km/h, Doppler ≈ 10 Hz); one draw per token (~0.26 s, the paper's reading, `fading_layers = 0`) would hold it 6× too long |
//! | `ar1_rho` | 0.9 | AR(1) option: a nearly static device (Jakes correlation `J0(2π f_D τ)` = 0.9 for `f_D·τ` ≈ 0.1) |
//! | `rician_k_db` | 9 dB | Rician option: the mean K-factor of 3GPP TR 38.901 UMa/UMi in LOS |
//! | `bs_height_m`, `ut_height_m` | 25 m, 1.5 m | 3GPP UMa defaults (set `bs_height_m = 10` for UMi) and a handheld device |
//! | outages | none | the fault model is opt-in: `[[channel.outages]]` or `[channel.random_outages]` |
//! | synthetic router | spread 1.3, layer bias 0.3, stickiness 0.3 | a median `w2/w1` near 0.5 and a mean top-1 weight (of the top-2) near 0.67; the distribution is printed with every run, see [`crate::router`] |
//!
//! The full default file, every key with its unit and reason, is
//! [`DEFAULT_FILE`], printed by `wdmoe scenario --print-default`.

mod channel;
mod devices;
mod model;
mod policies;
mod radio;
mod router;
mod toml_keys;

pub use channel::{
    ChannelConfig, Fading, Outage, PathLoss, RandomOutages, TimeModel, DEFAULT_FADING_LAYERS,
};
pub use devices::{default_devices, Device};
pub use model::ModelConfig;
pub use policies::PoliciesConfig;
pub use radio::{Allocation, RadioConfig};
pub use router::{RouterConfig, RouterKind};

use serde::{Deserialize, Serialize};
use std::fmt;
use toml_keys::key_at_span;

/// The most experts (devices) a scenario may have.
pub const MAX_EXPERTS: usize = 1024;

/// The largest scenario file read \[bytes\]: 1 MiB, room for
/// [`MAX_EXPERTS`] devices with every key spelled out.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The most policy rows × prompts a run keeps latencies for (8 bytes each,
/// 256 MiB): each prompt's latency per policy is kept for exact percentiles
/// and paired intervals; everything else is summed as the prompts finish.
pub const MAX_PROMPT_POLICY_CELLS: u64 = 1 << 25;

/// A scenario error: the offending key (a TOML path such as
/// `devices\[2\].distance_m`) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    /// The TOML key path, or `"<file>"` for a syntax error.
    pub key: String,
    /// Why the value is rejected.
    pub reason: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl std::error::Error for ScenarioError {}

pub(crate) fn err(key: impl Into<String>, reason: impl Into<String>) -> ScenarioError {
    ScenarioError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// How the prompt latency is accounted (docs/SPEC.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Accounting {
    /// The paper's eq. (8): every token through every layer, one after another.
    #[default]
    Sequential,
    /// Batched prefill: per layer, all prompt tokens routed to a device travel
    /// in one transmission, devices work in parallel, the slowest device sets
    /// the layer's latency; the whole prefill sees one channel realisation.
    /// Decode tokens are still one after another.
    Batched,
}

impl fmt::Display for Accounting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accounting::Sequential => "sequential (eq. 8)",
            Accounting::Batched => "batched prefill (docs/SPEC.md)",
        })
    }
}

/// A complete scenario. Every field has a default, so a TOML file names only
/// what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// Seed of every random stream of the run.
    pub seed: u64,
    /// Monte-Carlo prompts per replication.
    pub prompts: usize,
    /// Independent replications of every random draw (router layer
    /// structure, channel, fading, outages): replication `r` reruns the
    /// prompts with seed [`crate::rng::replication_seed`]`(seed, r)`; the
    /// intervals of the table are over replications.
    pub replications: usize,
    /// Tokens per prompt (prefill).
    pub prompt_tokens: u32,
    /// Tokens generated one by one after the prefill (decode phase).
    pub decode_tokens: u32,
    /// Latency accounting of the prefill.
    pub accounting: Accounting,
    /// The MoE model.
    pub model: ModelConfig,
    /// The radio.
    pub radio: RadioConfig,
    /// The devices; expert `q` lives on device `q`, so there are as many
    /// experts as devices.
    pub devices: Vec<Device>,
    /// The channel.
    pub channel: ChannelConfig,
    /// The router.
    pub router: RouterConfig,
    /// The policies compared.
    pub policies: PoliciesConfig,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            seed: 1,
            prompts: DEFAULT_PROMPTS,
            replications: DEFAULT_REPLICATIONS,
            prompt_tokens: 128,
            decode_tokens: 0,
            accounting: Accounting::Sequential,
            model: ModelConfig::default(),
            radio: RadioConfig::default(),
            devices: default_devices(),
            channel: ChannelConfig::default(),
            router: RouterConfig::default(),
            policies: PoliciesConfig::default(),
        }
    }
}

/// Default prompts per replication.
pub const DEFAULT_PROMPTS: usize = 100;

/// Default replications: enough for a t interval (9 degrees of freedom)
/// over the draws that dominate the spread (the router's layer structure).
pub const DEFAULT_REPLICATIONS: usize = 10;

/// The smallest device distance accepted \[m\].
pub const MIN_DISTANCE_M: f64 = 0.01;

pub(crate) fn check_finite(key: &str, v: f64) -> Result<f64, ScenarioError> {
    if v.is_nan() {
        Err(err(key, "is NaN"))
    } else if !v.is_finite() {
        Err(err(key, format!("must be finite (got {v})")))
    } else {
        Ok(v)
    }
}

pub(crate) fn check_positive(key: &str, v: f64) -> Result<(), ScenarioError> {
    if check_finite(key, v)? <= 0.0 {
        return Err(err(key, format!("must be > 0 (got {v})")));
    }
    Ok(())
}

pub(crate) fn check_range(
    key: &str,
    v: f64,
    lo: f64,
    hi: f64,
    hi_open: bool,
) -> Result<(), ScenarioError> {
    let v = check_finite(key, v)?;
    if v < lo || v > hi || (hi_open && v == hi) {
        let close = if hi_open { ")" } else { "]" };
        return Err(err(key, format!("must be in [{lo}, {hi}{close} (got {v})")));
    }
    Ok(())
}

/// `wdmoe scenario --print-default`: the default scenario as TOML, every
/// key with its unit and the reason for its value. It parses to
/// [`Scenario::default`] (a test checks it, and that every key is in it).
pub const DEFAULT_FILE: &str = include_str!("../default_scenario.toml");

/// Command-line overrides of a scenario's run size (each `None` keeps the
/// scenario's value); one place for every subcommand that runs scenarios.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunOverrides {
    /// [`Scenario::seed`].
    pub seed: Option<u64>,
    /// [`Scenario::prompts`].
    pub prompts: Option<usize>,
    /// [`Scenario::replications`].
    pub replications: Option<usize>,
    /// [`Scenario::prompt_tokens`].
    pub prompt_tokens: Option<u32>,
}

impl Scenario {
    /// Applies `o` (not validated: call [`Scenario::validate`] after).
    pub fn apply_run_overrides(&mut self, o: RunOverrides) {
        if let Some(v) = o.seed {
            self.seed = v;
        }
        if let Some(v) = o.prompts {
            self.prompts = v;
        }
        if let Some(v) = o.replications {
            self.replications = v;
        }
        if let Some(v) = o.prompt_tokens {
            self.prompt_tokens = v;
        }
    }

    /// The paper's setup with this crate's documented defaults; the same as
    /// [`Scenario::default`].
    pub fn paper() -> Self {
        Self::default()
    }

    /// Parses and validates a TOML scenario. Never panics: a syntax error, an
    /// unknown key, a wrong type or an invalid value is an error naming the
    /// key and the reason.
    ///
    /// ```
    /// use wdmoe_sim::scenario::Scenario;
    /// let s = Scenario::from_toml_str("prompts = 10\n[radio]\ncarrier_ghz = 3.5\n").unwrap();
    /// assert_eq!(s.prompts, 10);
    /// let e = Scenario::from_toml_str("[radio]\ncarrier_ghz = -1.0\n").unwrap_err();
    /// assert_eq!(e.key, "radio.carrier_ghz");
    /// let e = Scenario::from_toml_str("[radio]\ncarrier = 3.5\n").unwrap_err();
    /// assert!(e.to_string().contains("unknown field `carrier`"));
    /// ```
    pub fn from_toml_str(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| {
            let mut reason = e.message().to_string();
            if let Some(span) = e.span() {
                let line = text.as_bytes()[..span.start.min(text.len())]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1;
                reason = format!("{reason} (line {line})");
            }
            let key = key_at_span(text, e.span());
            err(key, reason)
        })?;
        s.validate()?;
        Ok(s)
    }

    /// Serialises to TOML (the format [`Scenario::from_toml_str`] reads).
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot serialise: {e}\n"))
    }

    /// Number of experts (= devices).
    pub fn n_experts(&self) -> usize {
        self.devices.len()
    }

    /// Total tokens per prompt (prefill + decode).
    pub fn total_tokens(&self) -> u32 {
        self.prompt_tokens.saturating_add(self.decode_tokens)
    }

    /// Checks every value; the first problem is returned with its key.
    /// Each section checks its own keys ([`ModelConfig::validate`],
    /// [`RadioConfig::validate`], [`Device::validate`],
    /// [`ChannelConfig::validate`], [`RouterConfig::validate`],
    /// [`PoliciesConfig::validate`]); this adds the workload, what spans
    /// sections, the memory bounds and the derived quantities.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.prompts == 0 {
            return Err(err("prompts", "must be >= 1"));
        }
        if self.prompts > 10_000_000 {
            return Err(err("prompts", "must be <= 10000000"));
        }
        if self.replications == 0 || self.replications > 1000 {
            return Err(err(
                "replications",
                format!("must be in 1..=1000 (got {})", self.replications),
            ));
        }
        if self.prompt_tokens == 0 {
            return Err(err("prompt_tokens", "must be >= 1"));
        }
        if self.prompt_tokens > 1_000_000 {
            return Err(err(
                "prompt_tokens",
                format!("must be <= 1000000 (got {})", self.prompt_tokens),
            ));
        }
        if self.prompt_tokens as u64 + self.decode_tokens as u64 > 1_000_000 {
            return Err(err(
                "decode_tokens",
                format!(
                    "prompt_tokens + decode_tokens must be <= 1000000 (got {} + {})",
                    self.prompt_tokens, self.decode_tokens
                ),
            ));
        }
        let m = &self.model;
        m.validate()?;
        let n = self.devices.len();
        if n == 0 {
            return Err(err("devices", "at least one device is needed"));
        }
        if n > MAX_EXPERTS {
            return Err(err(
                "devices",
                format!("at most {MAX_EXPERTS} devices (got {n})"),
            ));
        }
        self.radio.validate()?;
        for (i, d) in self.devices.iter().enumerate() {
            d.validate(i, m.compute_model)?;
        }
        if m.top_k == 0 || m.top_k > n {
            return Err(err(
                "model.top_k",
                format!(
                    "must be in 1..={n} (the number of devices), got {}",
                    m.top_k
                ),
            ));
        }
        if m.layers as usize * n > 1 << 20 {
            return Err(err(
                "model.layers",
                format!(
                    "model.layers × devices must be <= {} (got {} × {n})",
                    1 << 20,
                    m.layers
                ),
            ));
        }
        self.channel.validate(n, &self.radio)?;
        self.router.validate()?;
        self.policies.validate()?;
        let rows = self.policies.rows() as u64;
        if self.prompts as u64 * self.replications as u64 * rows > MAX_PROMPT_POLICY_CELLS {
            return Err(err(
                "prompts",
                format!(
                    "prompts × replications × policies must be <= {MAX_PROMPT_POLICY_CELLS} \
                     (got {} × {} × {rows}): each prompt's latency per policy is kept for percentiles",
                    self.prompts, self.replications
                ),
            ));
        }
        let cells = rows * m.layers as u64 * n as u64;
        if self.accounting == Accounting::Batched && cells > 1 << 24 {
            return Err(err(
                "model.layers",
                format!(
                    "with batched accounting, policies × model.layers × devices must be <= {} \
                     (got {rows} × {} × {n}): each worker counts tokens per policy, layer and device",
                    1 << 24,
                    m.layers
                ),
            ));
        }
        self.check_derived()
    }

    /// The quantities the run derives (payload, FLOPs, noise, each device's
    /// latency per token and layer) must be finite and positive, so that a
    /// validated scenario runs.
    fn check_derived(&self) -> Result<(), ScenarioError> {
        let ch = crate::channel::ChannelModel::new(self)
            .map_err(|e| err("model", format!("derived quantities out of range: {e}")))?;
        for q in 0..self.devices.len() {
            let key = format!("devices[{q}]");
            let t = ch
                .nominal_latency_s(q)
                .map_err(|e| err(key.clone(), format!("derived latency out of range: {e}")))?;
            if !(t.is_finite() && t > 0.0 && t < 1e9) {
                return Err(err(
                    key,
                    format!(
                        "its latency per token and layer (eq. 6, no fading) is {t} s, \
                         not a finite positive number below 1e9 s: check distance_m, tx_power_w and compute"
                    ),
                ));
            }
        }
        Ok(())
    }
}
