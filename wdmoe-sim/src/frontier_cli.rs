//! `wdmoe frontier`: the exact selection frontier and joint bandwidth
//! allocation against WDMoE's θ sweep and the baselines ([`crate::frontier`]).

use crate::frontier::{self, report, Allocation, FrontierConfig};
use crate::output::{self, CliError, OutputFiles, Stdout};
use crate::progress::Progress;
use crate::scenario::{RunOverrides, Scenario, MAX_FILE_BYTES};
use crate::sim::Simulation;
use std::path::PathBuf;

/// Prompts per replication of the default (paper) scenario in `wdmoe
/// frontier` (with its 10 replications, 320 prompts): the joint pass solves
/// a min–max allocation per subset and channel draw, so the default run is
/// smaller than `reproduce`'s.
pub const DEFAULT_PROMPTS: usize = 32;
/// Tokens per prompt of the default scenario in `wdmoe frontier`.
pub const DEFAULT_TOKENS: u32 = 32;

/// Arguments of `wdmoe frontier`.
#[derive(Debug, clap::Args)]
pub struct FrontierArgs {
    /// Scenario file (default: the paper's setup with 32 prompts × 32 tokens
    /// per replication).
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Write frontier.csv, frontier.json and frontier.svg into this folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of every random stream (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Monte-Carlo prompts per replication.
    #[arg(long)]
    pub prompts: Option<usize>,
    /// Independent replications of every random draw (default: the
    /// scenario's); the means are over prompts × replications, as in `run`.
    #[arg(long)]
    pub replications: Option<usize>,
    /// Prefill tokens per prompt (decode tokens, if any, follow; all are
    /// accounted sequentially).
    #[arg(long)]
    pub tokens: Option<u32>,
    /// Candidates of the exact selector: the k' heaviest reachable experts
    /// (exhaustive when k' ≥ the number of experts; k' = k: drops only).
    #[arg(long, default_value_t = 8)]
    pub k_prime: usize,
    /// Skip the joint bandwidth pass (even split only).
    #[arg(long)]
    pub no_joint: bool,
    /// Worker threads, 1..=1024 (default: all cores); results do not depend on it.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub threads: Option<u64>,
    /// No progress bar and no "wrote FILE" lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// The scenario `a` asks for.
pub fn scenario(a: &FrontierArgs) -> Result<Scenario, CliError> {
    let mut s = match &a.scenario {
        Some(path) => {
            let text = output::read_bounded(path, MAX_FILE_BYTES)?;
            Scenario::from_toml_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => {
            let mut s = Scenario::paper();
            s.prompts = DEFAULT_PROMPTS;
            s.prompt_tokens = DEFAULT_TOKENS;
            s
        }
    };
    s.apply_run_overrides(RunOverrides {
        seed: a.seed,
        prompts: a.prompts,
        replications: a.replications,
        prompt_tokens: a.tokens,
    });
    s.validate().map_err(|e| format!("scenario: {e}"))?;
    Ok(s)
}

/// Runs `wdmoe frontier`: checks the output paths, runs, writes the files
/// (atomically, all or none), then prints the table (buffered; a closed
/// pipe ends quietly, after the files are written).
pub fn run(a: &FrontierArgs) -> Result<(), CliError> {
    let s = scenario(a)?;
    let title = match &a.scenario {
        Some(p) => format!("WDMoE frontier: {}", p.display()),
        None => "WDMoE frontier: the paper's setup (§IV-A)".to_string(),
    };
    let k = s.model.top_k;
    if a.k_prime < k || a.k_prime > 63 {
        return Err(format!(
            "--k-prime: must be in [k, 63] = [{k}, 63] (got {})",
            a.k_prime
        )
        .into());
    }
    // Every output path is checked before the run.
    let mut files = OutputFiles::default();
    let mut kinds = Vec::new();
    if let Some(dir) = &a.out {
        for name in ["frontier.csv", "frontier.json", "frontier.svg"] {
            kinds.push((files.add(&dir.join(name))?, name));
        }
    }
    if s.accounting == crate::scenario::Accounting::Batched && !a.quiet {
        output::note("note: the frontier accounts latency sequentially (eq. 8) on the scenario's draws (the batched prefill's one channel slot); the batched accounting itself is not used");
    }
    let sim = Simulation::new(s).map_err(|e| e.to_string())?;
    let cfg = FrontierConfig {
        k_prime: a.k_prime,
        joint: (!a.no_joint).then_some(Allocation::MinMaxSelected),
        ..FrontierConfig::default()
    };
    let progress = Progress::new("frontier", sim.total_prompts(), !a.quiet);
    let go = || frontier::run(&sim, &cfg, &|| progress.tick());
    let r = match a.threads {
        Some(t) => rayon::ThreadPoolBuilder::new()
            .num_threads(t as usize)
            .build()
            .map_err(|e| format!("thread pool: {e}"))?
            .install(go),
        None => go(),
    }
    .map_err(|e| e.to_string())?;
    progress.finish();
    for (i, name) in kinds {
        let text = match name {
            "frontier.csv" => report::csv(&r),
            "frontier.json" => report::json(&r),
            _ => report::svg(&r),
        };
        files.set_contents(i, text.into_bytes());
    }
    // Files first: a closed stdout must not lose them.
    files.commit(!a.quiet)?;
    let mut out = Stdout::new();
    out.write_str(&report::table(&r, Some(&title)))?;
    out.flush()
}
