//! `[model]`: the MoE model and the device compute model.

use super::{check_positive, check_range, err, ScenarioError};
use serde::{Deserialize, Serialize};

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

impl ModelConfig {
    /// Checks the model's own keys (`model.top_k` against the devices is
    /// checked by [`super::Scenario::validate`]).
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let m = self;
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
        Ok(())
    }
}
