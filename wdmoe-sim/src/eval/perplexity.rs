//! Perplexity of a token stream under a routing policy.
//!
//! # Protocol
//! The stream (for text: `[bos] + encode(text)`, the BOS once at the start
//! as documents were trained, `encode` adding no special token; for
//! `--ids`: the ids exactly as given) is cut into non-overlapping windows of
//! `window` tokens, the last one possibly shorter. Each window is run on its
//! own (an empty KV cache, no context from the previous window) and scores
//! its own next-token predictions: a window of `n` tokens scores `n − 1`
//! tokens (its first token is context only; a window of one token scores
//! nothing). Perplexity = `exp(mean NLL)` over every scored token, the
//! log-softmax taken in f64. This is Hugging Face's
//! `model(x, labels=x).loss` per window, weighted by the tokens scored, the
//! protocol of the tiny model's card.

use serde::Serialize;

use super::{log_softmax_at, LatencySource, RoutingRow, RoutingTotals};
use crate::model::{Backend, Logits, MixtralConfig, MoeConfig};
use crate::progress::Progress;

/// One θ's perplexity and routing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PerplexityRow {
    /// WDMoE threshold θ (0: plain top-k).
    pub theta: f64,
    /// `exp(nll_per_token)`.
    pub perplexity: f64,
    /// Mean negative log-likelihood per scored token \[nats\].
    pub nll_per_token: f64,
    /// Tokens scored.
    pub tokens_scored: u64,
    /// Windows run.
    pub windows: usize,
    /// Routing and simulated latency.
    #[serde(flatten)]
    pub routing: RoutingRow,
}

/// The windows of `ids`: `window`-token chunks, the last possibly shorter.
pub fn windows(ids: &[u32], window: usize) -> impl Iterator<Item = &[u32]> {
    ids.chunks(window.max(1))
}

/// Checks a window size against the model and the stream.
pub fn check_window(config: &MixtralConfig, ids: &[u32], window: usize) -> Result<(), String> {
    if window < 2 {
        return Err(format!(
            "--window {window}: a window needs at least 2 tokens to score one"
        ));
    }
    let max = config.max_position_embeddings;
    if window > max {
        return Err(format!(
            "--window {window} exceeds the model's max_position_embeddings = {max}"
        ));
    }
    if ids.len() < 2 {
        return Err(format!(
            "the token stream has {} token(s); at least 2 are needed to score one",
            ids.len()
        ));
    }
    Ok(())
}

/// Perplexity of `ids` under `moe` (see the module docs for the protocol).
/// `totals` accumulates the routing (and records the router logits when it
/// has a recorder); `progress` ticks once per window.
pub fn perplexity(
    model: &mut dyn Backend,
    ids: &[u32],
    window: usize,
    moe: &MoeConfig,
    latency: &LatencySource<'_>,
    totals: &mut RoutingTotals,
    progress: &Progress,
) -> Result<PerplexityRow, String> {
    check_window(model.config(), ids, window)?;
    let v = model.config().vocab_size;
    let mut nll = 0.0f64;
    let mut scored = 0u64;
    let mut n_windows = 0;
    for (s, w) in windows(ids, window).enumerate() {
        let mut lat = latency.for_sequence(s as u64).map_err(|e| e.to_string())?;
        model.truncate(0);
        let out = model
            .forward(w, moe, lat.as_mut(), Logits::All)
            .map_err(|e| format!("window {s} (tokens {}..): {e}", s * window))?;
        totals.add(&out)?;
        for (i, &next) in w.iter().enumerate().skip(1) {
            nll -= log_softmax_at(&out.logits[(i - 1) * v..i * v], next);
            scored += 1;
        }
        n_windows += 1;
        progress.tick();
    }
    let nll_per_token = nll / scored.max(1) as f64;
    Ok(PerplexityRow {
        theta: moe.policy.theta(),
        perplexity: nll_per_token.exp(),
        nll_per_token,
        tokens_scored: scored,
        windows: n_windows,
        routing: totals.row(),
    })
}

/// Number of windows [`perplexity`] runs (for progress bars).
pub fn n_windows(ids_len: usize, window: usize) -> usize {
    ids_len.div_ceil(window.max(1))
}
