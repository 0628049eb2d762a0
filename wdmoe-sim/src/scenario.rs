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
//! | fading time | redrawn every token (`coherence_tokens = 1`), held over the token's layers | the paper's reading (docs/SPEC.md); a token through 32 layers takes ~0.26 s, longer than a pedestrian's coherence time at 3.5 GHz (~44 ms at 3 km/h, Doppler ≈ 10 Hz) |
//! | `ar1_rho` | 0.9 | AR(1) option: a nearly static device (Jakes correlation `J0(2π f_D τ)` = 0.9 for `f_D·τ` ≈ 0.1) |
//! | `rician_k_db` | 9 dB | Rician option: the mean K-factor of 3GPP TR 38.901 UMa/UMi in LOS |
//! | `bs_height_m`, `ut_height_m` | 25 m, 1.5 m | 3GPP UMa defaults (set `bs_height_m = 10` for UMi) and a handheld device |
//! | outages | none | the fault model is opt-in: `[[channel.outages]]` or `[channel.random_outages]` |
//! | synthetic router | spread 1.3, layer bias 0.3, stickiness 0.3 | a median `w2/w1` near 0.5 and a mean top-1 weight (of the top-2) near 0.67; the distribution is printed with every run, see [`crate::router`] |
//!
//! The full default file, every key with its unit and reason, is
//! [`DEFAULT_FILE`], printed by `wdmoe scenario --print-default`.

use serde::{Deserialize, Serialize};
use std::fmt;

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

fn err(key: impl Into<String>, reason: impl Into<String>) -> ScenarioError {
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

/// The MoE model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Number of MoE layers `b` (Mixtral 8x7B: 32).
    pub layers: u32,
    /// Hidden size `m` \[elements per token\] (Mixtral: 4096).
    pub hidden: u32,
    /// Expert hidden size `m_h` (Mixtral: 14336).
    pub ffn_hidden: u32,
    /// Experts taken by router weight, `k` (Mixtral: 2).
    pub top_k: usize,
    /// ε, bits per transmitted element (16 for fp16).
    pub bits_per_element: f64,
    /// η, FLOPs of the activation per element.
    pub eta_flops: f64,
    /// Bits per expert weight in the devices' memory (16 for fp16): sets the
    /// bytes the roofline model reads per expert and the memory check.
    pub weight_bits: f64,
    /// How a device's expert time is computed: `roofline` or the paper's
    /// literal `paper` ([`crate::device`]).
    pub compute_model: crate::device::ComputeModel,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            layers: 32,
            hidden: 4096,
            ffn_hidden: 14336,
            top_k: 2,
            bits_per_element: 16.0,
            eta_flops: 4.0,
            weight_bits: 16.0,
            compute_model: crate::device::ComputeModel::Roofline,
        }
    }
}

/// Bandwidth allocation rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Allocation {
    /// The paper's even split: `total / N` per device.
    #[default]
    Even,
    /// Fixed shares: device `q` gets `total × bandwidth_share_q / Σ shares`.
    Shares,
    /// The core's min–max allocation (`wdmoe_core::bandwidth::min_max`) over
    /// all devices, once per prompt on its large-scale channel (path loss and
    /// shadowing, no fast fading): the slowest device is made as fast as it
    /// can be. It equalises the devices' latencies, which removes most of the
    /// heterogeneity WDMoE exploits — an ablation, not the paper's setup.
    MinMax,
}

/// The radio: carrier, base-station power, bandwidth, noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RadioConfig {
    /// Carrier frequency \[GHz\] (paper: 3.5).
    pub carrier_ghz: f64,
    /// Base-station transmit power per device link \[W\] (paper: 10).
    pub bs_tx_power_w: f64,
    /// Total bandwidth \[Hz\] (paper: 100 MHz).
    pub total_bandwidth_hz: f64,
    /// How the total bandwidth is shared.
    pub allocation: Allocation,
    /// Thermal noise power spectral density \[dBm/Hz\].
    pub n0_dbm_per_hz: f64,
    /// Receiver noise figure \[dB\].
    pub noise_figure_db: f64,
    /// SNR floor \[dB\]: a link below it carries nothing, so its device is
    /// unreachable for that token (link adaptation has no scheme that low).
    /// `-inf` disables the floor (the paper's literal Shannon rate).
    pub min_snr_db: f64,
}

impl Default for RadioConfig {
    fn default() -> Self {
        Self {
            carrier_ghz: 3.5,
            bs_tx_power_w: 10.0,
            total_bandwidth_hz: 100e6,
            allocation: Allocation::Even,
            n0_dbm_per_hz: -174.0,
            noise_figure_db: 7.0,
            min_snr_db: -7.0,
        }
    }
}

/// One device: it hosts expert `q` of every MoE layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// A label for tables.
    #[serde(default)]
    pub name: String,
    /// 2-D distance to the base station \[m\]; give this or `position_m`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub distance_m: f64,
    /// Position `[x, y]` \[m\] with the base station at the origin; an
    /// alternative to `distance_m`. Exactly two numbers.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "two_numbers"
    )]
    pub position_m: Option<[f64; 2]>,
    /// Uplink transmit power \[W\] (paper: 0.2).
    #[serde(default = "default_device_power")]
    pub tx_power_w: f64,
    /// A named device ([`crate::device::PRESETS`]) filling `peak_tflops`,
    /// `memory_bandwidth_gbps` and `memory_gb`; keys given here override it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub preset: String,
    /// Peak dense fp16 rate \[TFLOP/s\] (10^12 FLOP/s), for the roofline model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_tflops: Option<f64>,
    /// Memory bandwidth \[GB/s\] (10^9 byte/s), for the roofline model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bandwidth_gbps: Option<f64>,
    /// Memory \[GB\] (10^9 byte): a run reports a device smaller than its experts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_gb: Option<f64>,
    /// The paper's `C_q` \[TFLOP/s\] (`model.compute_model = "paper"` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_tflops: Option<f64>,
    /// Bandwidth weight for `allocation = "shares"`: the device gets
    /// `total_bandwidth_hz × share / Σ shares` (default 1: the even split).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub bandwidth_share: f64,
}

impl Device {
    /// Device preset `preset` ([`crate::device::PRESETS`]) at `distance_m`
    /// \[m\], with the paper's 0.2 W and an equal bandwidth share.
    pub fn at(distance_m: f64, preset: &str) -> Self {
        Self {
            name: preset.to_string(),
            distance_m,
            position_m: None,
            tx_power_w: 0.2,
            preset: preset.to_string(),
            peak_tflops: None,
            memory_bandwidth_gbps: None,
            memory_gb: None,
            compute_tflops: None,
            bandwidth_share: 1.0,
        }
    }

    /// A roofline device at `distance_m` \[m\] with a peak rate
    /// \[TFLOP/s\] and a memory bandwidth \[GB/s\].
    pub fn roofline(distance_m: f64, peak_tflops: f64, memory_bandwidth_gbps: f64) -> Self {
        Self {
            name: String::new(),
            preset: String::new(),
            peak_tflops: Some(peak_tflops),
            memory_bandwidth_gbps: Some(memory_bandwidth_gbps),
            ..Self::at(distance_m, "")
        }
    }

    /// A device of the paper's model at `distance_m` \[m\] with `C_q` =
    /// `compute_tflops` \[TFLOP/s\] (needs `model.compute_model = "paper"`).
    pub fn paper(distance_m: f64, compute_tflops: f64) -> Self {
        Self {
            name: String::new(),
            preset: String::new(),
            compute_tflops: Some(compute_tflops),
            ..Self::at(distance_m, "")
        }
    }

    /// 2-D distance to the base station \[m\], from `position_m` when given.
    pub fn distance_2d_m(&self) -> f64 {
        match self.position_m {
            Some([x, y]) => x.hypot(y),
            None => self.distance_m,
        }
    }
}

/// `[x, y]`, exactly two numbers (a third is an error, not dropped).
fn two_numbers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<[f64; 2]>, D::Error> {
    let v: Vec<f64> = Vec::deserialize(d)?;
    match v[..] {
        [x, y] => Ok(Some([x, y])),
        _ => Err(serde::de::Error::custom(format!(
            "position_m must be [x, y], two numbers (got {})",
            v.len()
        ))),
    }
}

fn default_device_power() -> f64 {
    0.2
}

fn one() -> f64 {
    1.0
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// The default eight devices over a macro cell of 600 m radius, each a
/// preset of [`crate::device::PRESETS`] (sources there):
///
/// | # | preset | memory bandwidth | peak fp16 | memory | one token through one expert | distance |
/// |---|---|---|---|---|---|---|
/// | 0 | `jetson-agx-orin-64gb` (edge box) | 204.8 GB/s | 42.5 TFLOP/s | 64 GB | 1.72 ms | 50 m |
/// | 1 | `snapdragon-8-gen-3` (flagship phone) | 76.8 GB/s | 5 TFLOP/s | 16 GB | 4.59 ms | 120 m |
/// | 2 | `apple-m2` (tablet) | 100 GB/s | 3.6 TFLOP/s | 24 GB | 3.52 ms | 190 m |
/// | 3 | `phone-midrange` | 34.1 GB/s | 2 TFLOP/s | 12 GB | 10.3 ms | 260 m |
/// | 4 | `jetson-agx-orin-64gb` | 204.8 GB/s | 42.5 TFLOP/s | 64 GB | 1.72 ms | 330 m |
/// | 5 | `snapdragon-8-gen-3` | 76.8 GB/s | 5 TFLOP/s | 16 GB | 4.59 ms | 400 m |
/// | 6 | `apple-m2` | 100 GB/s | 3.6 TFLOP/s | 24 GB | 3.52 ms | 500 m |
/// | 7 | `phone-midrange` at the cell edge | 34.1 GB/s | 2 TFLOP/s | 12 GB | 10.3 ms | 600 m |
///
/// **Compute** (roofline, [`crate::device`]): one token through one expert
/// reads its 352 MB of fp16 weights for 352 MFLOP, so every device here is
/// memory-bound for one token (the time column: weights / bandwidth), while
/// moving its 64 kbit each way over 12.5 MHz takes 0.3–1 ms: the devices'
/// memory bandwidths, spread 6× here, are the main source of latency spread;
/// the radio adds distance and fading. This spread is a choice, and it sets
/// the result: `wdmoe sensitivity` shows the reduction with identical
/// devices (α = 0) and with the spread halved and doubled.
///
/// **Memory**: each device holds one expert of all 32 layers (11.3 GB in
/// fp16); all eight have room. Presets that do not (`jetson-orin-nano-8gb`,
/// `apple-a17-pro`) are reported by every run that uses them.
///
/// **Distances** are spread evenly from near the mast to the edge of a 600 m
/// macro cell; with the paper's link budget the radio is fast at any of
/// them, so the radius moves the reduction little (see `wdmoe sensitivity`).
pub fn default_devices() -> Vec<Device> {
    let d = [
        ("edge-box", 50.0, "jetson-agx-orin-64gb"),
        ("phone-flagship", 120.0, "snapdragon-8-gen-3"),
        ("tablet", 190.0, "apple-m2"),
        ("phone-midrange", 260.0, "phone-midrange"),
        ("edge-box", 330.0, "jetson-agx-orin-64gb"),
        ("phone-flagship", 400.0, "snapdragon-8-gen-3"),
        ("tablet", 500.0, "apple-m2"),
        ("phone-midrange", 600.0, "phone-midrange"),
    ];
    d.iter()
        .map(|&(name, distance_m, preset)| Device {
            name: name.to_string(),
            ..Device::at(distance_m, preset)
        })
        .collect()
}

/// Large-scale path-loss model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PathLoss {
    /// The paper's `32.4 + 20 log10(f_GHz) + 20 log10(d_m)` (always LOS, no shadowing).
    #[default]
    FreeSpace,
    /// 3GPP TR 38.901 Urban Macro, with LOS probability and log-normal shadowing.
    Uma,
    /// 3GPP TR 38.901 Urban Micro street canyon, with LOS probability and shadowing.
    Umi,
}

/// Small-scale fading distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Fading {
    /// `|h|² ~ Exp(1)` (the paper).
    #[default]
    Rayleigh,
    /// Rician with K-factor `rician_k_db` (a LOS component plus scattering).
    Rician,
    /// No fading, `|h|² = 1`.
    None,
}

/// How fading evolves from token to token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimeModel {
    /// Block fading: a fresh independent draw every `coherence_tokens` tokens
    /// (1 = every token, the paper's reading).
    #[default]
    Block,
    /// Correlated fading: the scattered component follows a complex AR(1)
    /// process `h ← ρ h + √(1−ρ²) w` from token to token.
    Ar1,
}

/// A scheduled outage: device `device` is unreachable for `tokens` tokens
/// starting at token `start_token` (prefill and decode tokens count alike).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// Device index (0-based).
    pub device: usize,
    /// First token of the outage.
    pub start_token: u32,
    /// Length \[tokens\].
    pub tokens: u32,
}

/// Random outages: at each token, each reachable device fails with
/// probability `probability_per_token` and stays unreachable for
/// `duration_tokens` tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RandomOutages {
    /// Probability per device and token that an outage starts, in `\[0, 1\]`.
    pub probability_per_token: f64,
    /// Outage length \[tokens\], ≥ 1.
    pub duration_tokens: u32,
}

impl Default for RandomOutages {
    fn default() -> Self {
        Self {
            probability_per_token: 0.0,
            duration_tokens: 16,
        }
    }
}

/// The channel model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelConfig {
    /// Path-loss model.
    pub path_loss: PathLoss,
    /// Base-station height \[m\] (3GPP models only; UMa 25, UMi 10).
    pub bs_height_m: f64,
    /// Device height \[m\] (3GPP models only; 1.5..=22.5).
    pub ut_height_m: f64,
    /// Draw LOS/NLOS and log-normal shadowing per prompt (3GPP models only).
    pub shadowing: bool,
    /// Small-scale fading distribution.
    pub fading: Fading,
    /// Rician K-factor \[dB\] (Rician fading only).
    pub rician_k_db: f64,
    /// Token-to-token evolution of the fading.
    pub time_model: TimeModel,
    /// Coherence time \[tokens\] of block fading, ≥ 1.
    pub coherence_tokens: u32,
    /// AR(1) correlation ρ between consecutive tokens, in `[0, 1)`.
    pub ar1_rho: f64,
    /// Scheduled outages.
    pub outages: Vec<Outage>,
    /// Random outages.
    pub random_outages: RandomOutages,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            path_loss: PathLoss::FreeSpace,
            bs_height_m: 25.0,
            ut_height_m: 1.5,
            shadowing: true,
            fading: Fading::Rayleigh,
            rician_k_db: 9.0,
            time_model: TimeModel::Block,
            coherence_tokens: 1,
            ar1_rho: 0.9,
            outages: Vec::new(),
            random_outages: RandomOutages::default(),
        }
    }
}

/// Where the router logits come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RouterKind {
    /// The synthetic Mixtral-like router of [`crate::router::SyntheticRouter`].
    #[default]
    Synthetic,
    /// Recorded logits from a `.npy` file ([`crate::router::TraceRouter`]).
    Trace,
}

/// The router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Synthetic or recorded.
    pub kind: RouterKind,
    /// Synthetic: standard deviation of the per-token logit noise [logit
    /// units]; larger spreads give more peaked weights (smaller `w2/w1`).
    pub spread: f64,
    /// Synthetic: standard deviation of the fixed per-layer, per-expert logit
    /// bias (expert popularity differs from layer to layer).
    pub layer_bias_std: f64,
    /// Synthetic: correlation of a layer's logits between consecutive
    /// tokens, in `[0, 1)` (Mixtral's consecutive tokens often share experts).
    pub stickiness: f64,
    /// Trace: path of the `.npy` file, shape `\[tokens, layers, experts\]`.
    pub trace_path: String,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            kind: RouterKind::Synthetic,
            spread: 1.3,
            layer_bias_std: 0.3,
            stickiness: 0.3,
            trace_path: String::new(),
        }
    }
}

/// The policies compared in one run (the θ = 0 WDMoE row is plain top-k).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoliciesConfig {
    /// WDMoE thresholds θ, each in `\[0, 0.5\]`; the first is the baseline of
    /// the "reduction" column (put 0 first to compare against Mixtral).
    pub thetas: Vec<f64>,
    /// WDMoE drops per token (the paper's single step: 1).
    pub max_drops: usize,
    /// Weight-only skipping thresholds β in `\[0, 1\]`: drop every non-first
    /// top-k expert whose weight is below β times the first's.
    pub weight_only_betas: Vec<f64>,
    /// Also run channel-only: always drop the slowest of the top-k.
    pub channel_only: bool,
}

impl Default for PoliciesConfig {
    fn default() -> Self {
        Self {
            thetas: vec![0.0, 0.1, 0.2, 0.3],
            max_drops: 1,
            weight_only_betas: vec![0.25, 0.5],
            channel_only: true,
        }
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

fn check_finite(key: &str, v: f64) -> Result<f64, ScenarioError> {
    if v.is_nan() {
        Err(err(key, "is NaN"))
    } else if !v.is_finite() {
        Err(err(key, format!("must be finite (got {v})")))
    } else {
        Ok(v)
    }
}

fn check_positive(key: &str, v: f64) -> Result<(), ScenarioError> {
    if check_finite(key, v)? <= 0.0 {
        return Err(err(key, format!("must be > 0 (got {v})")));
    }
    Ok(())
}

fn check_range(key: &str, v: f64, lo: f64, hi: f64, hi_open: bool) -> Result<(), ScenarioError> {
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
pub const DEFAULT_FILE: &str = include_str!("default_scenario.toml");

impl Scenario {
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
        if m.layers == 0 || m.layers > 10_000 {
            return Err(err("model.layers", "must be in 1..=10000"));
        }
        if m.hidden == 0 || m.hidden > 1 << 20 {
            return Err(err("model.hidden", "must be in 1..=1048576"));
        }
        if m.ffn_hidden == 0 || m.ffn_hidden > 1 << 22 {
            return Err(err("model.ffn_hidden", "must be in 1..=4194304"));
        }
        check_positive("model.bits_per_element", m.bits_per_element)?;
        check_range(
            "model.bits_per_element",
            m.bits_per_element,
            0.0,
            64.0,
            false,
        )?;
        check_range("model.eta_flops", m.eta_flops, 0.0, 1e3, false)?;
        check_range("model.weight_bits", m.weight_bits, 1.0, 64.0, false)?;
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
        let r = &self.radio;
        check_range("radio.carrier_ghz", r.carrier_ghz, 1e-3, 1e3, false)?;
        check_positive("radio.carrier_ghz", r.carrier_ghz)?;
        check_positive("radio.bs_tx_power_w", r.bs_tx_power_w)?;
        check_range("radio.bs_tx_power_w", r.bs_tx_power_w, 0.0, 1e6, false)?;
        check_positive("radio.total_bandwidth_hz", r.total_bandwidth_hz)?;
        check_range(
            "radio.total_bandwidth_hz",
            r.total_bandwidth_hz,
            0.0,
            1e12,
            false,
        )?;
        check_range("radio.n0_dbm_per_hz", r.n0_dbm_per_hz, -250.0, 0.0, false)?;
        check_range(
            "radio.noise_figure_db",
            r.noise_figure_db,
            0.0,
            100.0,
            false,
        )?;
        if r.min_snr_db != f64::NEG_INFINITY {
            check_range("radio.min_snr_db", r.min_snr_db, -100.0, 100.0, false)?;
        }
        for (i, d) in self.devices.iter().enumerate() {
            if let Some([x, y]) = d.position_m {
                check_finite(&format!("devices[{i}].position_m[0]"), x)?;
                check_finite(&format!("devices[{i}].position_m[1]"), y)?;
                if d.distance_m != 0.0 {
                    return Err(err(
                        format!("devices[{i}].position_m"),
                        "give distance_m or position_m, not both",
                    ));
                }
                let r = x.hypot(y);
                if !(MIN_DISTANCE_M..=1e7).contains(&r) {
                    return Err(err(
                        format!("devices[{i}].position_m"),
                        format!(
                            "distance to the base station must be in [{MIN_DISTANCE_M}, 1e7] m (got {r})"
                        ),
                    ));
                }
            } else {
                check_positive(&format!("devices[{i}].distance_m"), d.distance_m).map_err(|e| {
                    err(
                        e.key,
                        format!("{} (give distance_m or position_m)", e.reason),
                    )
                })?;
                check_range(
                    &format!("devices[{i}].distance_m"),
                    d.distance_m,
                    MIN_DISTANCE_M,
                    1e7,
                    false,
                )?;
            }
            check_positive(&format!("devices[{i}].tx_power_w"), d.tx_power_w)?;
            check_range(
                &format!("devices[{i}].tx_power_w"),
                d.tx_power_w,
                0.0,
                1e6,
                false,
            )?;
            check_range(
                &format!("devices[{i}].bandwidth_share"),
                d.bandwidth_share,
                0.0,
                1e9,
                false,
            )?;
            check_positive(&format!("devices[{i}].bandwidth_share"), d.bandwidth_share)?;
            for (key, v, lo, hi) in [
                ("peak_tflops", d.peak_tflops, 1e-9, 1e6),
                ("memory_bandwidth_gbps", d.memory_bandwidth_gbps, 1e-6, 1e7),
                ("memory_gb", d.memory_gb, 1e-6, 1e9),
                ("compute_tflops", d.compute_tflops, 1e-9, 1e6),
            ] {
                if let Some(v) = v {
                    check_range(&format!("devices[{i}].{key}"), v, lo, hi, false)?;
                }
            }
            crate::device::resolve(d, i, m.compute_model)?;
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
        let c = &self.channel;
        if c.path_loss != PathLoss::FreeSpace {
            check_range("radio.carrier_ghz", r.carrier_ghz, 0.5, 100.0, false)
                .map_err(|e| err(e.key, format!("{} for a 3GPP path-loss model", e.reason)))?;
            check_range("channel.bs_height_m", c.bs_height_m, 1.0, 1000.0, false)?;
            if c.bs_height_m <= 1.0 {
                return Err(err("channel.bs_height_m", "must exceed 1 m"));
            }
            check_range("channel.ut_height_m", c.ut_height_m, 1.5, 22.5, false)?;
        }
        check_range("channel.rician_k_db", c.rician_k_db, -50.0, 50.0, false)?;
        if c.coherence_tokens == 0 {
            return Err(err("channel.coherence_tokens", "must be >= 1"));
        }
        check_range("channel.ar1_rho", c.ar1_rho, 0.0, 1.0, true)?;
        for (i, o) in c.outages.iter().enumerate() {
            if o.device >= n {
                return Err(err(
                    format!("channel.outages[{i}].device"),
                    format!("must be < {n} (the number of devices), got {}", o.device),
                ));
            }
        }
        check_range(
            "channel.random_outages.probability_per_token",
            c.random_outages.probability_per_token,
            0.0,
            1.0,
            false,
        )?;
        if c.random_outages.duration_tokens == 0 {
            return Err(err(
                "channel.random_outages.duration_tokens",
                "must be >= 1",
            ));
        }
        let ro = &self.router;
        check_range("router.spread", ro.spread, 0.0, 1e3, false)?;
        check_range("router.layer_bias_std", ro.layer_bias_std, 0.0, 1e3, false)?;
        check_range("router.stickiness", ro.stickiness, 0.0, 1.0, true)?;
        if ro.kind == RouterKind::Trace && ro.trace_path.is_empty() {
            return Err(err("router.trace_path", "a trace router needs a file path"));
        }
        let p = &self.policies;
        if p.thetas.is_empty() {
            return Err(err("policies.thetas", "at least one threshold is needed"));
        }
        for (i, &t) in p.thetas.iter().enumerate() {
            check_range(&format!("policies.thetas[{i}]"), t, 0.0, 0.5, false)?;
        }
        if p.max_drops > MAX_EXPERTS {
            return Err(err(
                "policies.max_drops",
                format!("must be <= {MAX_EXPERTS}"),
            ));
        }
        for (i, &b) in p.weight_only_betas.iter().enumerate() {
            check_range(
                &format!("policies.weight_only_betas[{i}]"),
                b,
                0.0,
                1.0,
                false,
            )?;
        }
        if p.thetas.len() + p.weight_only_betas.len() > 64 {
            return Err(err("policies", "at most 64 policies per run"));
        }
        let rows = (p.thetas.len() + p.weight_only_betas.len() + p.channel_only as usize) as u64;
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

/// Best-effort TOML key path at a byte span: the enclosing `\[table\]` header
/// plus the key on that line.
fn key_at_span(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return "<file>".to_string();
    };
    let start = span.start.min(text.len());
    // Back up to a char boundary.
    let mut start = start;
    while start > 0 && !text.is_char_boundary(start) {
        start -= 1;
    }
    let before = &text[..start];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[line_start..line_end].trim();
    let mut table = String::new();
    for l in before[..line_start].lines().rev() {
        let l = l.trim();
        if l.starts_with('[') {
            table = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            break;
        }
    }
    if !line.starts_with('[') && !line.contains('=') {
        return "<file>".to_string();
    }
    let key = if line.starts_with('[') {
        line.trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_string()
    } else {
        let k = line.split('=').next().unwrap_or("").trim().to_string();
        if table.is_empty() {
            k
        } else if k.is_empty() {
            table
        } else {
            format!("{table}.{k}")
        }
    };
    if key.is_empty() {
        "<file>".to_string()
    } else {
        key
    }
}
