//! `wdmoe frontier`: the exact selection frontier and joint bandwidth
//! allocation against WDMoE's θ sweep and the baselines ([`crate::frontier`]).

use crate::frontier::{self, report, Allocation, FrontierConfig};
use crate::progress::Progress;
use crate::scenario::Scenario;
use crate::sim::Simulation;
use std::path::{Path, PathBuf};

/// Prompts of the default (paper) scenario in `wdmoe frontier`: the joint
/// pass solves a min–max allocation per subset and slot, so the default run
/// is smaller than `reproduce`'s 200 × 128.
pub const DEFAULT_PROMPTS: usize = 32;
/// Tokens per prompt of the default scenario in `wdmoe frontier`.
pub const DEFAULT_TOKENS: u32 = 32;

/// Arguments of `wdmoe frontier`.
#[derive(Debug, clap::Args)]
pub struct FrontierArgs {
    /// Scenario file (default: the paper's setup with 32 prompts × 32 tokens).
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Write frontier.csv, frontier.json and frontier.svg into this folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of every random stream (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Monte-Carlo prompts.
    #[arg(long)]
    pub prompts: Option<usize>,
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
    /// Worker threads (default: all cores); results do not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bar and no "wrote FILE" lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The scenario `a` asks for.
pub fn scenario(a: &FrontierArgs) -> Result<Scenario, String> {
    let mut s = match &a.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Scenario::from_toml_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => {
            let mut s = Scenario::paper();
            s.prompts = DEFAULT_PROMPTS;
            s.prompt_tokens = DEFAULT_TOKENS;
            s
        }
    };
    if let Some(v) = a.seed {
        s.seed = v;
    }
    if let Some(v) = a.prompts {
        s.prompts = v;
    }
    if let Some(v) = a.tokens {
        s.prompt_tokens = v;
    }
    s.validate().map_err(|e| format!("scenario: {e}"))?;
    Ok(s)
}

/// Runs `wdmoe frontier`: prints the table, writes the files.
pub fn run(a: &FrontierArgs) -> Result<(), String> {
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
        ));
    }
    if s.accounting == crate::scenario::Accounting::Batched && !a.quiet {
        eprintln!("note: the frontier accounts latency sequentially (eq. 8); the scenario's batched accounting is not used");
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
            .num_threads(t.max(1))
            .build()
            .map_err(|e| format!("thread pool: {e}"))?
            .install(go),
        None => go(),
    }
    .map_err(|e| e.to_string())?;
    progress.finish();
    print!("{}", report::table(&r, Some(&title)));
    if let Some(dir) = &a.out {
        for (name, text) in [
            ("frontier.csv", report::csv(&r)),
            ("frontier.json", report::json(&r)),
            ("frontier.svg", report::svg(&r)),
        ] {
            let p = dir.join(name);
            write_file(&p, &text)?;
            if !a.quiet {
                eprintln!("wrote {}", p.display());
            }
        }
    }
    Ok(())
}
