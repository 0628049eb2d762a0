//! How a router's logits look: the statistics that matter to WDMoE, for a
//! recorded trace of a trained model and for the synthetic router, side by
//! side (`wdmoe router-stats`).
//!
//! Per token and layer: the top-2 weight ratio `w2/w1` (what κ trades
//! against latency; [`RouterSummary`] gives its quantiles, the mean top-1
//! weight, the equal-latency drop rates and the top-1 repeat rate), the
//! entropy of the softmax over all experts (nats, and as a fraction of
//! `ln E`), and two correlations: of a token's logits at layer `l` and
//! `l + 1` (expert `q` of every layer sits on device `q`, so this is how
//! alike the layers' device choices are), and of a layer's logits at
//! neighbouring tokens (Pearson over the experts, averaged), with the rate
//! at which the top-1 expert repeats across layers.

use serde::Serialize;

use crate::output::{CliError, Stdout};
use crate::rng::{self, Stream};
use crate::router::{Router, RouterSummary};

/// Statistics of a router over `prompts × tokens` tokens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouterStats {
    /// What was measured.
    pub source: String,
    /// The top-2 summary (w2/w1 quantiles, mean w1, drop rates, top-1 repeat).
    pub summary: RouterSummary,
    /// Mean entropy of the softmax over all experts \[nats\].
    pub entropy_nats: f64,
    /// `entropy_nats / ln E` (1: uniform).
    pub entropy_frac: f64,
    /// Mean Pearson correlation of a token's logits at layers `l` and `l + 1`.
    pub layer_corr: f64,
    /// Fraction of (token, l) with the same top-1 expert at `l` and `l + 1`.
    pub layer_top1_same: f64,
    /// Mean Pearson correlation of a layer's logits at tokens `j` and `j + 1`.
    pub token_corr: f64,
}

fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    let d = (saa * sbb).sqrt();
    (d > 0.0).then(|| sab / d)
}

fn argmax(z: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in z.iter().enumerate() {
        if v > z[best] {
            best = i;
        }
    }
    best
}

fn entropy(z: &[f64]) -> f64 {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|&v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    -e.iter()
        .map(|&x| {
            let p = x / s;
            if p > 0.0 {
                p * p.ln()
            } else {
                0.0
            }
        })
        .sum::<f64>()
}

#[derive(Default)]
struct Mean {
    sum: f64,
    n: u64,
}

impl Mean {
    fn add(&mut self, x: f64) {
        self.sum += x;
        self.n += 1;
    }
    fn get(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.sum / self.n as f64
        }
    }
}

impl RouterStats {
    /// Samples `prompts × tokens` tokens of `router` (all layers), seeded;
    /// neighbouring-token statistics stay within a prompt.
    pub fn compute(router: &dyn Router, prompts: u64, tokens: usize, seed: u64) -> Self {
        let (l, n) = (router.n_layers(), router.n_experts());
        let (mut ent, mut lc, mut ls, mut tc) = (
            Mean::default(),
            Mean::default(),
            Mean::default(),
            Mean::default(),
        );
        let mut buf = vec![0.0; l * n];
        let mut prev = vec![0.0; l * n];
        for p in 0..prompts {
            let mut s = router.start_prompt(p, rng::stream(seed, p, Stream::Router));
            for j in 0..tokens {
                s.next_token(&mut buf);
                for li in 0..l {
                    let z = &buf[li * n..(li + 1) * n];
                    ent.add(entropy(z));
                    if li + 1 < l {
                        let z2 = &buf[(li + 1) * n..(li + 2) * n];
                        if let Some(c) = pearson(z, z2) {
                            lc.add(c);
                        }
                        ls.add((argmax(z) == argmax(z2)) as u8 as f64);
                    }
                    if j > 0 {
                        if let Some(c) = pearson(z, &prev[li * n..(li + 1) * n]) {
                            tc.add(c);
                        }
                    }
                }
                prev.copy_from_slice(&buf);
            }
        }
        let entropy_nats = ent.get();
        Self {
            source: router.describe(),
            summary: RouterSummary::compute(router, prompts, tokens, seed),
            entropy_nats,
            entropy_frac: entropy_nats / (n.max(2) as f64).ln(),
            layer_corr: lc.get(),
            layer_top1_same: ls.get(),
            token_corr: tc.get(),
        }
    }
}

/// A side-by-side table of routers' statistics (one column each).
pub fn table(cols: &[(&str, &RouterStats)]) -> String {
    type Cell = fn(&RouterStats) -> String;
    let rows: [(&str, Cell); 12] = [
        ("w2/w1 p10", |s| {
            format!("{:.3}", s.summary.ratio_quantiles[0])
        }),
        ("w2/w1 p50", |s| {
            format!("{:.3}", s.summary.ratio_quantiles[2])
        }),
        ("w2/w1 p90", |s| {
            format!("{:.3}", s.summary.ratio_quantiles[4])
        }),
        ("mean top-1 weight (of top-2)", |s| {
            format!("{:.3}", s.summary.mean_w1)
        }),
        ("drops at equal latency θ=0.1", |s| {
            format!("{:.1} %", 100.0 * s.summary.below_threshold[0])
        }),
        ("drops at equal latency θ=0.2", |s| {
            format!("{:.1} %", 100.0 * s.summary.below_threshold[1])
        }),
        ("drops at equal latency θ=0.3", |s| {
            format!("{:.1} %", 100.0 * s.summary.below_threshold[2])
        }),
        ("softmax entropy / ln E", |s| {
            format!("{:.3}", s.entropy_frac)
        }),
        ("corr. of logits, layer l vs l+1", |s| {
            format!("{:.3}", s.layer_corr)
        }),
        ("same top-1, layer l vs l+1", |s| {
            format!("{:.1} %", 100.0 * s.layer_top1_same)
        }),
        ("corr. of logits, token j vs j+1", |s| {
            format!("{:.3}", s.token_corr)
        }),
        ("same top-1, token j vs j+1", |s| {
            format!("{:.1} %", 100.0 * s.summary.top1_repeat)
        }),
    ];
    let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = cols
        .iter()
        .map(|(name, _)| name.chars().count().max(10))
        .collect();
    let mut out = format!("{:<w0$}", "");
    for ((name, _), w) in cols.iter().zip(&widths) {
        out.push_str(&format!("  {:>w$}", name, w = w));
    }
    out.push('\n');
    for (label, f) in rows {
        out.push_str(&format!("{:<w0$}", label));
        for ((_, s), w) in cols.iter().zip(&widths) {
            out.push_str(&format!("  {:>w$}", f(s), w = w));
        }
        out.push('\n');
    }
    out
}

/// Flags of `wdmoe router-stats`.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterStatsArgs {
    /// A recorded trace (`--record-trace` of `wdmoe generate` / `wdmoe eval`).
    #[arg(long)]
    pub trace: std::path::PathBuf,
    /// Tokens per prompt: neighbouring-token statistics stay within a prompt.
    #[arg(long, default_value_t = 128)]
    pub tokens_per_prompt: usize,
    /// Take the synthetic router's settings from this scenario (default: the paper's setup).
    #[arg(long)]
    pub scenario: Option<std::path::PathBuf>,
    /// Seed of the synthetic router (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `wdmoe router-stats`: the trace against the scenario's synthetic
/// router with the trace's layers and experts, over as many tokens. The
/// trace is bounded ([`crate::trace::MAX_TRACE_FILE_BYTES`]), the scenario
/// too ([`crate::scenario::MAX_FILE_BYTES`]); the table is buffered on
/// `out` ([`crate::output`]: a closed pipe ends quietly, a full disk is an
/// error).
pub fn run(a: &RouterStatsArgs, out: &mut Stdout) -> Result<(), CliError> {
    let trace = crate::trace::Trace::from_path(&a.trace).map_err(|e| e.to_string())?;
    let scenario = crate::eval_cli::load_scenario(a.scenario.as_deref())?;
    let seed = a.seed.unwrap_or(scenario.seed);
    let t = a.tokens_per_prompt.clamp(1, trace.tokens());
    let prompts = (trace.tokens() / t) as u64;
    let (layers, experts) = (trace.layers(), trace.experts());
    let rec = RouterStats::compute(
        &crate::router::TraceRouter::new(trace, t as u64),
        prompts,
        t,
        seed,
    );
    let r = &scenario.router;
    let synth = crate::router::SyntheticRouter::new(
        layers,
        experts,
        r.spread,
        r.layer_bias_std,
        r.stickiness,
        seed,
    );
    let syn = RouterStats::compute(&synth, prompts, t, seed);
    if a.json {
        let j = serde_json::json!({ "trace": rec, "synthetic": syn });
        out.line(&j.to_string())?;
    } else {
        out.line(&format!(
            "router statistics over {prompts} prompts × {t} tokens, {layers} layers × {experts} experts\n\
             trace: {} | synthetic: {}",
            a.trace.display(),
            syn.source
        ))?;
        out.write_str(&table(&[("trace", &rec), ("synthetic", &syn)]))?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{SyntheticRouter, TraceRouter};
    use crate::trace::Trace;

    #[test]
    fn stats_of_a_constant_trace() {
        // Two layers with the same logits, every token the same: full
        // correlation across layers and tokens, top-1 always repeats.
        let z = [2.0, 0.0, 1.0, -1.0];
        let data: Vec<f64> = (0..6).flat_map(|_| z.iter().chain(&z).copied()).collect();
        let t = Trace::new(6, 2, 4, data).unwrap();
        let s = RouterStats::compute(&TraceRouter::new(t, 3), 2, 3, 1);
        assert!((s.layer_corr - 1.0).abs() < 1e-12);
        assert!((s.token_corr - 1.0).abs() < 1e-12);
        assert_eq!(s.layer_top1_same, 1.0);
        assert_eq!(s.summary.top1_repeat, 1.0);
        // w2/w1 = e^(1-2).
        assert!((s.summary.ratio_quantiles[2] - (-1f64).exp()).abs() < 1e-12);
        let e: f64 = entropy(&z);
        assert!((s.entropy_nats - e).abs() < 1e-12 && e > 0.0 && e < 4f64.ln());
    }

    #[test]
    fn synthetic_router_stickiness_shows_in_token_corr() {
        let sticky = SyntheticRouter::new(4, 8, 1.3, 0.0, 0.9, 7);
        let loose = SyntheticRouter::new(4, 8, 1.3, 0.0, 0.0, 7);
        let a = RouterStats::compute(&sticky, 4, 64, 1);
        let b = RouterStats::compute(&loose, 4, 64, 1);
        assert!(a.token_corr > 0.8, "{}", a.token_corr);
        assert!(b.token_corr.abs() < 0.1, "{}", b.token_corr);
        // Independent layers (no bias): about 1/8 share the top-1.
        assert!((b.layer_top1_same - 0.125).abs() < 0.05);
        assert!(table(&[("a", &a), ("b", &b)]).contains("same top-1"));
    }
}
