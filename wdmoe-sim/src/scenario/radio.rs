//! `[radio]`: carrier, powers, bandwidth and its allocation, noise.

use super::{check_positive, check_range, ScenarioError};
use serde::{Deserialize, Serialize};

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

impl RadioConfig {
    /// Checks the radio's keys.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let r = self;
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
        Ok(())
    }
}
