//! `wdmoe eval perplexity` and `wdmoe eval choice`: the accuracy of a
//! Mixtral checkpoint for each θ, with the routing and the simulated
//! wireless latency of the same run (see [`crate::eval`]).
//!
//! Output goes through [`crate::output`]: the table (or JSON) is buffered on
//! stdout; the `--out` files and the `--record-trace` file are checked
//! before the model is loaded and written atomically, all or none, before
//! the table is printed, so a closed pipe (a quiet exit) loses no file and a
//! full disk is an error (exit 2). Input files are bounded before they are
//! read: a scenario [`MAX_FILE_BYTES`], a `--text`, `--ids` or `--tasks`
//! file [`MAX_DATA_BYTES`].

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::eval::choice::{self, ChoiceItem, Continuation};
use crate::eval::perplexity;
use crate::eval::report::{self, EvalReport, EvalRow};
use crate::eval::{LatencySource, RoutingTotals};
use crate::generate_cli::{check_device, Device};
use crate::model::{Backend, CpuBackend, FixedLatency, Model, MoeConfig, ScenarioLatency};
use crate::output::{self, CliError, OutputFiles, Stdout};
use crate::progress::Progress;
use crate::scenario::{Scenario, MAX_FILE_BYTES};
use crate::trace::TraceRecorder;

/// Default perplexity window \[tokens\] (the tiny model's card).
pub const DEFAULT_WINDOW: usize = 256;

/// The largest `--text`, `--ids` or `--tasks` file read \[bytes\]: 16 MiB,
/// about 4 million tokens of English text (or ~3 million token ids), far
/// more than a CPU evaluation gets through in a session (the tiny model
/// scores the 60 kB held-out text, ~14k tokens, in about a minute per θ),
/// while its tokens take well under a GiB. Larger sets: split the file or
/// use `--limit` on a cut of it.
pub const MAX_DATA_BYTES: u64 = 16 << 20;

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
    /// Text file (at most 16 MiB), tokenised as [bos] + encode(text), no other special token (needs tokenizer.json).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    pub text: Option<PathBuf>,
    /// File of whitespace-separated token ids (at most 16 MiB), scored as given (no bos added).
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
    /// Task file (at most 16 MiB), JSON Lines: {"context": str, "choices": [str, …], "label": int}
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

/// Reads a scenario file (at most [`MAX_FILE_BYTES`]), or the default
/// scenario (the paper's setup).
pub fn load_scenario(path: Option<&Path>) -> Result<Scenario, String> {
    match path {
        Some(p) => {
            let text = output::read_bounded(p, MAX_FILE_BYTES).map_err(|e| e.to_string())?;
            Scenario::from_toml_str(&text).map_err(|err| format!("{}: {err}", p.display()))
        }
        None => Ok(Scenario::default()),
    }
}

/// Reads a `--text`, `--ids` or `--tasks` file (at most [`MAX_DATA_BYTES`]).
fn read(path: &Path) -> Result<String, String> {
    output::read_bounded(path, MAX_DATA_BYTES).map_err(|e| e.to_string())
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
    /// The whole model on the GPU (`--device cuda`); the CPU `model` then
    /// only gives the tokenizer and the config.
    #[cfg(feature = "cuda")]
    gpu: Option<crate::model::gpu::GpuBackend>,
    k: usize,
    seed: u64,
    scenario: Scenario,
    files: Files,
}

/// The output files, registered (paths checked) before any work.
struct Files {
    set: OutputFiles,
    /// Indices of eval-TASK.csv, .json, .svg.
    out: Option<[usize; 3]>,
    trace: Option<usize>,
}

impl Files {
    fn check(c: &CommonArgs, task: &str) -> Result<Self, CliError> {
        let mut set = OutputFiles::default();
        let out = match &c.out {
            Some(dir) => {
                let mut add = |ext: &str| set.add(&dir.join(format!("eval-{task}.{ext}")));
                Some([add("csv")?, add("json")?, add("svg")?])
            }
            None => None,
        };
        let trace = match &c.record_trace {
            Some(p) => Some(set.add(p)?),
            None => None,
        };
        Ok(Self { set, out, trace })
    }
}

fn setup(c: &CommonArgs, task: &str) -> Result<Setup, CliError> {
    check_device(c.device)?;
    if c.theta.is_empty() {
        return Err("--theta: give at least one θ".into());
    }
    let files = Files::check(c, task)?;
    let scenario = load_scenario(c.scenario.as_deref())?;
    let model = Model::load(&c.model).map_err(|e| e.to_string())?;
    #[cfg(feature = "cuda")]
    let gpu = match c.device {
        Device::Cuda => Some(crate::generate_cli::load_gpu(&c.model, c.quiet)?),
        Device::Cpu => None,
    };
    let k = c.k.unwrap_or(model.config().num_experts_per_tok);
    for &t in &c.theta {
        MoeConfig::wdmoe(k, t, c.max_drops).map_err(|e| format!("--theta {t}: {e}"))?;
    }
    let seed = c.seed.unwrap_or(scenario.seed);
    Ok(Setup {
        model,
        #[cfg(feature = "cuda")]
        gpu,
        k,
        seed,
        scenario,
        files,
    })
}

/// One θ's evaluation: the model, θ's policy, the latencies, the totals.
type EachTheta<'a, R> = dyn FnMut(&mut dyn Backend, &MoeConfig, &LatencySource<'_>, &mut RoutingTotals) -> Result<R, String>
    + 'a;

/// Runs one evaluation per θ; `each` runs θ's evaluation with its totals
/// (the first θ's recording the trace when asked). Writes the files, then
/// the table or JSON on `out`.
fn per_theta<R: EvalRow>(
    c: &CommonArgs,
    #[allow(unused_mut)] mut s: Setup,
    task: &str,
    data: &Path,
    out: &mut Stdout,
    each: &mut EachTheta<'_, R>,
) -> Result<(), CliError> {
    let e = s.model.config().num_local_experts;
    let channel;
    let (latency, source) = match &c.latency_s {
        Some(l) => {
            if l.len() != e {
                return Err(format!(
                    "--latency-s has {} values, the model has {e} experts per layer",
                    l.len()
                )
                .into());
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
    let mut cpu = CpuBackend::new(&s.model);
    #[cfg(feature = "cuda")]
    let backend: &mut dyn Backend = match s.gpu.as_mut() {
        Some(g) => g,
        None => &mut cpu,
    };
    #[cfg(not(feature = "cuda"))]
    let backend: &mut dyn Backend = &mut cpu;
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
        rows.push(each(backend, &moe, &latency, &mut totals)?);
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
    let mut files = s.files;
    if let Some([csv, json, svg]) = files.out {
        files.set.set_contents(csv, report::csv(&rep).into_bytes());
        files
            .set
            .set_contents(json, report::json(&rep).into_bytes());
        files.set.set_contents(svg, report::svg(&rep).into_bytes());
    }
    let mut trace_note = None;
    if let (Some(i), Some(t)) = (files.trace, &trace) {
        files
            .set
            .set_contents(i, t.to_npy_bytes().map_err(|e| e.to_string())?);
        trace_note = Some(format!("({} tokens at θ = {})", t.tokens(), c.theta[0]));
    }
    // Files first: a closed stdout must not lose them.
    files.set.commit(!c.quiet)?;
    if let (Some(n), false) = (trace_note, c.quiet) {
        output::note(&format!("the trace holds the router logits {n}"));
    }
    if c.json {
        let text = serde_json::to_string(&rep).map_err(|e| e.to_string())?;
        out.line(&text)?;
    } else {
        out.write_str(&report::table(&rep))?;
    }
    out.flush()
}

fn run_perplexity(a: &PerplexityArgs, out: &mut Stdout) -> Result<(), CliError> {
    let c = &a.common;
    let s = setup(c, "perplexity")?;
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
    perplexity::check_window(s.model.config(), &ids, window)?;
    let v = s.model.config().vocab_size;
    if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= v) {
        return Err(format!(
            "{}: token {} is id {id}, outside the vocabulary ({v})",
            data.display(),
            i + 1
        )
        .into());
    }
    let n = perplexity::n_windows(ids.len(), window);
    per_theta(
        c,
        s,
        "perplexity",
        &data,
        out,
        &mut |model, moe, lat, totals| {
            let label = format!("perplexity θ={}", moe.policy.theta());
            let progress = Progress::new(&label, n, !c.quiet);
            let r = perplexity::perplexity(model, &ids, window, moe, lat, totals, &progress);
            progress.finish();
            r
        },
    )
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

fn run_choice(a: &ChoiceArgs, out: &mut Stdout) -> Result<(), CliError> {
    let c = &a.common;
    let s = setup(c, "choice")?;
    let items = load_items(&s.model, &a.tasks, a.limit, a.continuation)?;
    per_theta(
        c,
        s,
        "choice",
        &a.tasks,
        out,
        &mut |model, moe, lat, totals| {
            let label = format!("choice θ={}", moe.policy.theta());
            let progress = Progress::new(&label, items.len(), !c.quiet);
            let r = choice::evaluate(model, &items, moe, lat, totals, &progress);
            progress.finish();
            r.map(|(row, _)| row)
        },
    )
}

/// Runs `wdmoe eval`, writing the table or the JSON object to `out` (see
/// the module doc for the files and the errors).
pub fn run(a: &EvalArgs, out: &mut Stdout) -> Result<(), CliError> {
    match &a.task {
        EvalTask::Perplexity(p) => run_perplexity(p, out),
        EvalTask::Choice(ch) => run_choice(ch, out),
    }
}
