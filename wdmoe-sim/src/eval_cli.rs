//! `wdmoe eval perplexity` and `wdmoe eval choice`: the accuracy of a
//! Mixtral checkpoint for each θ, with the routing and the simulated
//! wireless latency of the same run (see [`crate::eval`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::eval::choice::{self, ChoiceItem, Continuation};
use crate::eval::perplexity;
use crate::eval::report::{self, EvalReport, EvalRow};
use crate::eval::{LatencySource, RoutingTotals};
use crate::generate_cli::{check_device, Device};
use crate::model::{FixedLatency, Model, MoeConfig, ScenarioLatency};
use crate::progress::Progress;
use crate::scenario::Scenario;
use crate::trace::TraceRecorder;

/// Default perplexity window \[tokens\] (the tiny model's card).
pub const DEFAULT_WINDOW: usize = 256;

/// `wdmoe eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// The evaluation.
    #[command(subcommand)]
    pub task: EvalTask,
}

/// The evaluations.
#[derive(Debug, Clone, Subcommand)]
pub enum EvalTask {
    /// Perplexity over non-overlapping windows of a text or token stream, per θ.
    Perplexity(PerplexityArgs),
    /// Multiple-choice accuracy by log-likelihood (acc, acc_norm), per θ.
    Choice(ChoiceArgs),
}

/// Flags of `wdmoe eval perplexity`.
#[derive(Debug, Clone, Args)]
pub struct PerplexityArgs {
    /// Text file, tokenised as [bos] + encode(text), no other special token (needs tokenizer.json).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    pub text: Option<PathBuf>,
    /// Whitespace-separated token ids, scored as given (no bos added).
    #[arg(long)]
    pub ids: Option<PathBuf>,
    /// Window length in tokens (each window scores window − 1 tokens);
    /// default 256, or the model's max_position_embeddings when smaller.
    #[arg(long)]
    pub window: Option<usize>,
    /// At most this many windows (the first ones).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Settings shared with `eval choice`.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Flags of `wdmoe eval choice`.
#[derive(Debug, Clone, Args)]
pub struct ChoiceArgs {
    /// Task file, JSON Lines: {"context": str, "choices": [str, …], "label": int}
    /// (or context_ids / choices_ids for a model without a tokenizer).
    #[arg(long)]
    pub tasks: PathBuf,
    /// At most this many items (the first ones).
    #[arg(long)]
    pub limit: Option<usize>,
    /// How a text choice is tokenised: on its own (the tiny model's card;
    /// byte-level BPE) or split off encode(context + choice)
    /// (lm-evaluation-harness; SentencePiece tokenizers such as Mixtral's).
    #[arg(long, value_enum, default_value_t = Continuation::Separate)]
    pub continuation: Continuation,
    /// Settings shared with `eval perplexity`.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Flags of both evaluations.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Checkpoint directory in the Hugging Face layout.
    #[arg(long)]
    pub model: PathBuf,
    /// WDMoE thresholds θ, comma-separated (0: plain top-k).
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 0.1, 0.2, 0.3])]
    pub theta: Vec<f64>,
    /// Experts taken by router weight (default: the config's num_experts_per_tok).
    #[arg(long)]
    pub k: Option<usize>,
    /// Most experts dropped per token and layer.
    #[arg(long, default_value_t = 1)]
    pub max_drops: usize,
    /// Fixed per-expert latencies in seconds, comma-separated (instead of a scenario).
    #[arg(long, value_delimiter = ',', conflicts_with = "scenario")]
    pub latency_s: Option<Vec<f64>>,
    /// Scenario file for the experts' latencies (default: the paper's setup).
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Seed of the channel (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Print one JSON object {"rows": […], …} instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write eval-TASK.csv, .json and .svg (accuracy vs latency) into this folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the router logits of every token run at the first θ, float32
    /// [tokens, layers, experts] .npy (the format of `wdmoe sweep`'s trace router).
    #[arg(long)]
    pub record_trace: Option<PathBuf>,
    /// No progress bar and no "wrote FILE" lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Reads a scenario file, or the default scenario (the paper's setup).
pub fn load_scenario(path: Option<&Path>) -> Result<Scenario, String> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|err| format!("cannot read {}: {err}", p.display()))?;
            Scenario::from_toml_str(&text).map_err(|err| format!("{}: {err}", p.display()))
        }
        None => Ok(Scenario::default()),
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Parses whitespace-separated token ids (`path` names the file in errors).
pub fn parse_ids(text: &str, path: &Path) -> Result<Vec<u32>, String> {
    text.split_whitespace()
        .enumerate()
        .map(|(i, w)| {
            w.parse::<u32>().map_err(|_| {
                format!(
                    "{}: entry {} `{}` is not a token id",
                    path.display(),
                    i + 1,
                    w.chars().take(20).collect::<String>()
                )
            })
        })
        .collect()
}

struct Setup {
    model: Model,
    k: usize,
    seed: u64,
    scenario: Scenario,
}

fn setup(c: &CommonArgs) -> Result<Setup, String> {
    check_device(c.device)?;
    if c.theta.is_empty() {
        return Err("--theta: give at least one θ".into());
    }
    let scenario = load_scenario(c.scenario.as_deref())?;
    let model = Model::load(&c.model).map_err(|e| e.to_string())?;
    let k = c.k.unwrap_or(model.config().num_experts_per_tok);
    for &t in &c.theta {
        MoeConfig::wdmoe(k, t, c.max_drops).map_err(|e| format!("--theta {t}: {e}"))?;
    }
    let seed = c.seed.unwrap_or(scenario.seed);
    Ok(Setup {
        model,
        k,
        seed,
        scenario,
    })
}

/// Runs one evaluation per θ; `each` runs θ's evaluation with its totals
/// (the first θ's recording the trace when asked).
fn per_theta<R: EvalRow>(
    c: &CommonArgs,
    s: &Setup,
    task: &str,
    data: &Path,
    out: &mut dyn Write,
    each: &mut dyn FnMut(&MoeConfig, &LatencySource<'_>, &mut RoutingTotals) -> Result<R, String>,
) -> Result<(), String> {
    let e = s.model.config().num_local_experts;
    let channel;
    let (latency, source) = match &c.latency_s {
        Some(l) => {
            if l.len() != e {
                return Err(format!(
                    "--latency-s has {} values, the model has {e} experts per layer",
                    l.len()
                ));
            }
            let f = FixedLatency::new(l.clone()).map_err(|e| e.to_string())?;
            (LatencySource::Fixed(f), "fixed --latency-s".to_string())
        }
        None => {
            channel = ScenarioLatency::channel_for(&s.scenario, e).map_err(|e| e.to_string())?;
            let name = c
                .scenario
                .as_ref()
                .map_or("the default scenario".into(), |p| p.display().to_string());
            (
                LatencySource::channel(
                    &channel,
                    &s.scenario,
                    s.model.config().num_hidden_layers,
                    s.seed,
                ),
                format!("{name}, drawn per token from seed {}", s.seed),
            )
        }
    };
    let mut rows = Vec::new();
    let mut trace = None;
    for (i, &theta) in c.theta.iter().enumerate() {
        let moe = MoeConfig::wdmoe(s.k, theta, c.max_drops).map_err(|e| e.to_string())?;
        let rec = match (&c.record_trace, i) {
            (Some(_), 0) => {
                let cfg = s.model.config();
                Some(
                    TraceRecorder::new(cfg.num_hidden_layers, cfg.num_local_experts)
                        .map_err(|e| e.to_string())?,
                )
            }
            _ => None,
        };
        let mut totals = RoutingTotals::new(rec);
        rows.push(each(&moe, &latency, &mut totals)?);
        if i == 0 {
            trace = totals.recorder.take();
        }
    }
    let rep = EvalReport {
        task: task.into(),
        model: c.model.display().to_string(),
        data: data.display().to_string(),
        k: s.k,
        max_drops: c.max_drops,
        latency_source: source,
        seed: s.seed,
        rows,
    };
    let w = |r: std::io::Result<()>| r.map_err(|err| format!("writing the output: {err}"));
    if c.json {
        let text = serde_json::to_string(&rep).map_err(|e| e.to_string())?;
        w(writeln!(out, "{text}"))?;
    } else {
        w(write!(out, "{}", report::table(&rep)))?;
    }
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    if let Some(dir) = &c.out {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        files.push((dir.join(format!("eval-{task}.csv")), report::csv(&rep)));
        files.push((dir.join(format!("eval-{task}.json")), report::json(&rep)));
        files.push((dir.join(format!("eval-{task}.svg")), report::svg(&rep)));
    }
    for (p, text) in &files {
        std::fs::write(p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        if !c.quiet {
            eprintln!("wrote {}", p.display());
        }
    }
    if let (Some(p), Some(t)) = (&c.record_trace, trace) {
        t.write(p).map_err(|e| e.to_string())?;
        if !c.quiet {
            eprintln!(
                "wrote {} ({} tokens at θ = {})",
                p.display(),
                t.tokens(),
                c.theta[0]
            );
        }
    }
    Ok(())
}

fn run_perplexity(a: &PerplexityArgs, out: &mut dyn Write) -> Result<(), String> {
    let c = &a.common;
    let s = setup(c)?;
    let (mut ids, data) = match (&a.ids, &a.text) {
        (Some(p), _) => (parse_ids(&read(p)?, p)?, p.clone()),
        (None, Some(p)) => {
            let text = read(p)?;
            let tok = s.model.tokenizer().ok_or_else(|| {
                format!(
                    "--text needs {}; give --ids instead",
                    c.model.join("tokenizer.json").display()
                )
            })?;
            let mut ids: Vec<u32> = s.model.config().bos_token_id.into_iter().collect();
            ids.extend(
                tok.encode_plain(&text)
                    .map_err(|e| format!("{}: {e}", p.display()))?,
            );
            (ids, p.clone())
        }
        (None, None) => return Err("give --text or --ids".into()),
    };
    let window = a
        .window
        .unwrap_or(DEFAULT_WINDOW.min(s.model.config().max_position_embeddings));
    if let Some(n) = a.limit {
        ids.truncate(n.saturating_mul(window));
    }
    perplexity::check_window(&s.model, &ids, window)?;
    let v = s.model.config().vocab_size;
    if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= v) {
        return Err(format!(
            "{}: token {} is id {id}, outside the vocabulary ({v})",
            data.display(),
            i + 1
        ));
    }
    let n = perplexity::n_windows(ids.len(), window);
    per_theta(c, &s, "perplexity", &data, out, &mut |moe, lat, totals| {
        let label = format!("perplexity θ={}", moe.policy.theta());
        let progress = Progress::new(&label, n, !c.quiet);
        let r = perplexity::perplexity(&s.model, &ids, window, moe, lat, totals, &progress);
        progress.finish();
        r
    })
}

/// Reads and tokenises a choice task file, keeping the first `limit` items.
pub fn load_items(
    model: &Model,
    path: &Path,
    limit: Option<usize>,
    split: Continuation,
) -> Result<Vec<ChoiceItem>, String> {
    let mut items = choice::parse_items(&read(path)?, path, model, split)?;
    if let Some(n) = limit {
        items.truncate(n.max(1));
    }
    Ok(items)
}

fn run_choice(a: &ChoiceArgs, out: &mut dyn Write) -> Result<(), String> {
    let c = &a.common;
    let s = setup(c)?;
    let items = load_items(&s.model, &a.tasks, a.limit, a.continuation)?;
    per_theta(c, &s, "choice", &a.tasks, out, &mut |moe, lat, totals| {
        let label = format!("choice θ={}", moe.policy.theta());
        let progress = Progress::new(&label, items.len(), !c.quiet);
        let r = choice::evaluate(&s.model, &items, moe, lat, totals, &progress);
        progress.finish();
        r.map(|(row, _)| row)
    })
}

/// Runs `wdmoe eval`, writing the table or the JSON object to `out`.
pub fn run(a: &EvalArgs, out: &mut dyn Write) -> Result<(), String> {
    match &a.task {
        EvalTask::Perplexity(p) => run_perplexity(p, out),
        EvalTask::Choice(ch) => run_choice(ch, out),
    }
}
