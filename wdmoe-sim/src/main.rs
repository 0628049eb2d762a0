//! `wdmoe`: the WDMoE simulator's command line.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use wdmoe_sim::output::{self, CliError, OutputFiles, Stdout};
use wdmoe_sim::progress::Progress;
use wdmoe_sim::scenario::{Accounting, RunOverrides, Scenario, MAX_FILE_BYTES};
use wdmoe_sim::sim::{RunReport, SimError, Simulation};
use wdmoe_sim::{report, select_cli};

#[derive(Parser)]
#[command(
    name = "wdmoe",
    version,
    about = "WDMoE: wireless distributed MoE latency simulator"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The paper's latency study (8 devices, 3.5 GHz, 10 W / 0.2 W, 100 MHz
    /// even split, Rayleigh, Mixtral 32 layers) for θ ∈ {0, 0.1, 0.2, 0.3}.
    Reproduce(RunArgs),
    /// Any scenario from a TOML file (start from `wdmoe scenario --print-default`).
    Sweep {
        /// The scenario file.
        #[arg(long)]
        scenario: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Scenario files.
    Scenario {
        /// Print the default scenario (the paper's setup) as TOML, every key
        /// with its unit and the reason for its value.
        #[arg(long)]
        print_default: bool,
        /// Check a scenario file and print it with every default filled in.
        #[arg(long)]
        check: Option<PathBuf>,
    },
    /// The selection policy over JSON lines on stdin (one answer line per input line).
    #[command(long_about = select_cli::HELP)]
    Select,
    /// Text from a Mixtral checkpoint (CPU), WDMoE choosing the experts.
    Generate(wdmoe_sim::generate_cli::GenerateArgs),
    /// How far WDMoE is from optimal: the exact per-token selector's
    /// latency–kept-weight frontier and joint bandwidth allocation, on the
    /// same draws as WDMoE's θ sweep and the baselines.
    Frontier(wdmoe_sim::frontier_cli::FrontierArgs),
    /// Accuracy per θ: perplexity or multiple-choice accuracy of a checkpoint (CPU).
    Eval(wdmoe_sim::eval_cli::EvalArgs),
    /// Experts on several GPUs through NCCL, the wireless links emulated,
    /// latency measured against the model (feature `dist`; one command
    /// starts all ranks).
    ///
    /// A rank that dies or stalls ends the run with a message naming it and
    /// exit code 2, never a hang: its peers time out after --timeout-s, and
    /// the launcher stops the rest.
    Dist(wdmoe_sim::dist::DistArgs),
    /// Router statistics of a recorded trace next to the synthetic router's.
    RouterStats(wdmoe_sim::router_stats::RouterStatsArgs),
    /// How WDMoE's latency gain depends on the spread of device latencies:
    /// scales the cell radius and the devices' compute spread.
    Sensitivity {
        /// Cell radii in metres (distance of the farthest device).
        #[arg(long, value_delimiter = ',', default_values_t = [150.0, 300.0, 600.0, 1000.0, 1500.0])]
        radii_m: Vec<f64>,
        /// Device spreads α: each device's speed v (memory bandwidth, or C_q
        /// under the paper model) becomes g·(v/g)^α around the geometric mean
        /// g (0: identical devices, 1: the scenario's, 2: the spread squared).
        #[arg(long, value_delimiter = ',', default_values_t = [0.0, 0.5, 1.0, 1.5, 2.0])]
        compute_spreads: Vec<f64>,
        /// Start from this scenario file instead of the paper's setup.
        #[arg(long)]
        scenario: Option<PathBuf>,
        #[command(flatten)]
        sim: SimArgs,
        #[command(flatten)]
        out: SensitivityOut,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum AccountingArg {
    Sequential,
    Batched,
}

/// The most worker threads `--threads` accepts.
const MAX_THREADS: u64 = 1024;

#[derive(Args)]
struct SimArgs {
    /// Seed of every random stream (default: the scenario's, 1).
    #[arg(long)]
    seed: Option<u64>,
    /// Monte-Carlo prompts per replication (default: the scenario's, 100).
    #[arg(long)]
    prompts: Option<usize>,
    /// Independent replications of every random draw (router layer
    /// structure, channel, fading, outages); the ± intervals are over them
    /// (default: the scenario's, 10; 1 gives per-prompt intervals only).
    #[arg(long)]
    replications: Option<usize>,
    /// Prefill tokens per prompt (default: the scenario's, 128).
    #[arg(long)]
    tokens: Option<u32>,
    /// Decode tokens generated one by one after the prefill (default: 0).
    #[arg(long)]
    decode_tokens: Option<u32>,
    /// Latency accounting: the paper's sequential eq. (8) (default) or batched prefill.
    #[arg(long, value_enum)]
    accounting: Option<AccountingArg>,
    /// WDMoE drops per token (the paper: 1).
    #[arg(long)]
    max_drops: Option<usize>,
    /// Worker threads, 1..=1024 (default: all cores); results do not depend on it.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_THREADS))]
    threads: Option<u64>,
    /// No progress bar and no "wrote FILE" lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    sim: SimArgs,
    /// Write the table as CSV (checked before the run, written atomically).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write the report as JSON (checked before the run, written atomically).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the latency / kept-weight plot as SVG (checked before the run, written atomically).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Write CSV, JSON and SVG into this folder (NAME.csv, NAME.json, NAME.svg).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct SensitivityOut {
    /// Write the study as CSV (one line per variant and θ).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write the study as JSON (every run's report).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write sensitivity.csv and sensitivity.json into this folder.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    output::finish(run(cli))
}

fn read_scenario(path: &Path) -> Result<Scenario, CliError> {
    let text = output::read_bounded(path, MAX_FILE_BYTES)?;
    Ok(Scenario::from_toml_str(&text).map_err(|e| format!("{}: {e}", path.display()))?)
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.cmd {
        Cmd::Reproduce(args) => {
            let s = Scenario::paper();
            simulate(
                s,
                &args,
                "reproduce",
                "WDMoE reproduction: the paper's setup (§IV-A)",
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sweep { scenario, run } => {
            let s = read_scenario(&scenario)?;
            let title = format!("WDMoE sweep: {}", scenario.display());
            simulate(s, &run, "sweep", &title)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Scenario {
            print_default,
            check,
        } => {
            let mut out = Stdout::new();
            if let Some(path) = check {
                let s = read_scenario(&path)?;
                // Everything `sweep` builds before its run (channel, router,
                // the trace file), so a checked file runs.
                Simulation::new(s.clone()).map_err(|e| format!("{}: {e}", path.display()))?;
                out.write_str(&s.to_toml_string())?;
            } else if print_default {
                out.write_str(wdmoe_sim::scenario::DEFAULT_FILE)?;
            } else {
                return Err("nothing to do: pass --print-default or --check FILE".into());
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sensitivity {
            radii_m,
            compute_spreads,
            scenario,
            sim,
            out,
        } => {
            let base = match scenario {
                Some(path) => read_scenario(&path)?,
                None => Scenario::paper(),
            };
            sensitivity(base, &radii_m, &compute_spreads, &sim, &out)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Generate(a) => {
            wdmoe_sim::generate_cli::run(&a, &mut Stdout::new())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Frontier(a) => {
            wdmoe_sim::frontier_cli::run(&a)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Eval(a) => {
            wdmoe_sim::eval_cli::run(&a, &mut Stdout::new())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Dist(a) => {
            wdmoe_sim::dist::run(&a)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::RouterStats(a) => {
            wdmoe_sim::router_stats::run(&a, &mut Stdout::new())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Select => {
            let mut out = Stdout::new();
            let stdin = std::io::stdin();
            let failed = select_cli::run(stdin.lock(), out.writer()).map_err(|e| {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    CliError::BrokenPipe
                } else {
                    CliError::Msg(format!("select: {e}"))
                }
            })?;
            Ok(if failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn apply(s: &mut Scenario, a: &SimArgs) {
    s.apply_run_overrides(RunOverrides {
        seed: a.seed,
        prompts: a.prompts,
        replications: a.replications,
        prompt_tokens: a.tokens,
    });
    if let Some(v) = a.decode_tokens {
        s.decode_tokens = v;
    }
    if let Some(v) = a.accounting {
        s.accounting = match v {
            AccountingArg::Sequential => Accounting::Sequential,
            AccountingArg::Batched => Accounting::Batched,
        };
    }
    if let Some(v) = a.max_drops {
        s.policies.max_drops = v;
    }
}

fn run_sim(sim: &Simulation, a: &SimArgs, progress: &Progress) -> Result<RunReport, SimError> {
    let go = || sim.run(&|| progress.tick());
    match a.threads {
        Some(t) => match rayon::ThreadPoolBuilder::new()
            .num_threads(t as usize)
            .build()
        {
            Ok(pool) => pool.install(go),
            // No pool of that size (e.g. a thread limit): run on the global
            // one, and say so (results do not depend on the thread count).
            Err(e) => {
                output::note(&format!(
                    "note: cannot start {t} threads ({e}); using the default pool"
                ));
                go()
            }
        },
        None => go(),
    }
}

fn sensitivity(
    base: Scenario,
    radii_m: &[f64],
    spreads: &[f64],
    a: &SimArgs,
    o: &SensitivityOut,
) -> Result<(), CliError> {
    let mut base = base;
    apply(&mut base, a);
    base.validate().map_err(|e| e.to_string())?;
    let mut files = OutputFiles::default();
    let mut kinds = Vec::new();
    if let Some(dir) = &o.out {
        kinds.push((files.add(&dir.join("sensitivity.csv"))?, "csv"));
        kinds.push((files.add(&dir.join("sensitivity.json"))?, "json"));
    }
    if let Some(p) = &o.csv {
        kinds.push((files.add(p)?, "csv"));
    }
    if let Some(p) = &o.json {
        kinds.push((files.add(p)?, "json"));
    }
    let study = wdmoe_sim::sensitivity::study(&base, radii_m, spreads, &mut |label, sim| {
        let progress = Progress::new(label, sim.total_prompts(), !a.quiet);
        let r = run_sim(sim, a, &progress);
        progress.finish();
        r
    })
    .map_err(|e| e.to_string())?;
    for (i, kind) in kinds {
        let text = match kind {
            "csv" => wdmoe_sim::sensitivity::csv(&study),
            _ => wdmoe_sim::sensitivity::json(&study),
        };
        files.set_contents(i, text.into_bytes());
    }
    files.commit(!a.quiet)?;
    let mut out = Stdout::new();
    out.write_str(&wdmoe_sim::sensitivity::table(&study))?;
    out.flush()
}

fn simulate(mut s: Scenario, a: &RunArgs, name: &str, title: &str) -> Result<(), CliError> {
    apply(&mut s, &a.sim);
    let sim = Simulation::new(s).map_err(|e| e.to_string())?;
    // Every output path is checked before the run.
    let mut files = OutputFiles::default();
    let mut kinds = Vec::new();
    if let Some(dir) = &a.out {
        for ext in ["csv", "json", "svg"] {
            kinds.push((files.add(&dir.join(format!("{name}.{ext}")))?, ext));
        }
    }
    for (p, ext) in [(&a.csv, "csv"), (&a.json, "json"), (&a.svg, "svg")] {
        if let Some(p) = p {
            kinds.push((files.add(p)?, ext));
        }
    }
    let progress = Progress::new(name, sim.total_prompts(), !a.sim.quiet);
    let report = run_sim(&sim, &a.sim, &progress).map_err(|e| e.to_string())?;
    progress.finish();
    for (i, ext) in kinds {
        let text = match ext {
            "csv" => report::csv(&report),
            "json" => report::json(&report),
            _ => report::svg(&report),
        };
        files.set_contents(i, text.into_bytes());
    }
    // Files first: a closed stdout must not lose them.
    files.commit(!a.sim.quiet)?;
    let mut out = Stdout::new();
    out.write_str(&report::table(&report, Some(title)))?;
    out.flush()
}
