//! `[channel]`: path loss, shadowing, fading and its time model, outages.

use super::RadioConfig;
use super::{check_range, err, ScenarioError};
use serde::{Deserialize, Serialize};

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

/// Default `channel.fading_layers`: at the default scenario's ~8 ms per
/// layer, 5 layers are ~41 ms, a pedestrian's coherence time at 3.5 GHz
/// (~44 ms at 3 km/h, Doppler ≈ 10 Hz).
pub const DEFAULT_FADING_LAYERS: u32 = 5;

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
    /// Within a token, the fading moves on every `fading_layers` layers
    /// (block: a fresh draw; AR(1): `ρ^(fading_layers / layers)`); 0 holds it
    /// over the whole token. Not within a batched prefill (one channel draw).
    pub fading_layers: u32,
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
            fading_layers: DEFAULT_FADING_LAYERS,
            ar1_rho: 0.9,
            outages: Vec::new(),
            random_outages: RandomOutages::default(),
        }
    }
}

impl ChannelConfig {
    /// Checks the channel's keys against `n` devices and the radio (the
    /// 3GPP models hold for 0.5–100 GHz).
    pub fn validate(&self, n: usize, radio: &RadioConfig) -> Result<(), ScenarioError> {
        let c = self;
        if c.path_loss != PathLoss::FreeSpace {
            check_range("radio.carrier_ghz", radio.carrier_ghz, 0.5, 100.0, false)
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
        if c.fading_layers > 10_000 {
            return Err(err("channel.fading_layers", "must be <= 10000"));
        }
        if c.time_model == TimeModel::Block && c.coherence_tokens > 1 && c.fading_layers > 0 {
            return Err(err(
                "channel.fading_layers",
                format!(
                    "redraws the fading within a token, which contradicts coherence_tokens = {} \
                     (set fading_layers = 0 to hold it over several tokens)",
                    c.coherence_tokens
                ),
            ));
        }
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
        Ok(())
    }
}
