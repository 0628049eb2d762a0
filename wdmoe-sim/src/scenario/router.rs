//! `[router]`: where the router logits come from.

use super::{check_range, err, ScenarioError};
use serde::{Deserialize, Serialize};

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

impl RouterConfig {
    /// Checks the router's keys.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let ro = self;
        check_range("router.spread", ro.spread, 0.0, 1e3, false)?;
        check_range("router.layer_bias_std", ro.layer_bias_std, 0.0, 1e3, false)?;
        check_range("router.stickiness", ro.stickiness, 0.0, 1.0, true)?;
        if ro.kind == RouterKind::Trace && ro.trace_path.is_empty() {
            return Err(err("router.trace_path", "a trace router needs a file path"));
        }
        Ok(())
    }
}
