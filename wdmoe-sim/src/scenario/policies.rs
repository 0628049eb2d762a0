//! `[policies]`: the policies compared in one run.

use super::{check_range, err, ScenarioError, MAX_EXPERTS};
use serde::{Deserialize, Serialize};

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

impl PoliciesConfig {
    /// Checks the policies' keys.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let p = self;
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
        Ok(())
    }

    /// Rows of a run's table: WDMoE thresholds, weight-only thresholds and
    /// channel-only.
    pub fn rows(&self) -> usize {
        self.thetas.len() + self.weight_only_betas.len() + self.channel_only as usize
    }
}
