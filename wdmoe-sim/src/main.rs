//! `wdmoe`: the WDMoE simulator's command line.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use wdmoe_sim::progress::Progress;
use wdmoe_sim::scenario::{Accounting, Scenario};
use wdmoe_sim::sim::{RunReport, Simulation};
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
        /// Print the default scenario (the paper's setup) as TOML.
        #[arg(long)]
        print_default: bool,
        /// Check a scenario file and print it with every default filled in.
        #[arg(long)]
        check: Option<PathBuf>,
    },
    /// The selection policy over JSON lines on stdin (one decision per line).
    Select,
    /// Text from a Mixtral checkpoint (CPU), WDMoE choosing the experts.
    Generate(wdmoe_sim::generate_cli::GenerateArgs),
    /// Accuracy per θ: perplexity or multiple-choice accuracy of a checkpoint (CPU).
    Eval(wdmoe_sim::eval_cli::EvalArgs),
    /// Router statistics of a recorded trace next to the synthetic router's.
    RouterStats(wdmoe_sim::router_stats::RouterStatsArgs),
    /// How WDMoE's latency gain depends on the spread of device latencies:
    /// scales the cell radius and the devices' compute spread.
    Sensitivity {
        /// Cell radii in metres (distance of the farthest device).
        #[arg(long, value_delimiter = ',', default_values_t = [150.0, 300.0, 600.0, 1000.0, 1500.0])]
        radii_m: Vec<f64>,
        /// Compute spreads α: `C_q ← g·(C_q/g)^α` around the geometric mean g
        /// (0: identical devices, 1: the scenario's).
        #[arg(long, value_delimiter = ',', default_values_t = [0.0, 0.5, 1.0, 1.5])]
        compute_spreads: Vec<f64>,
        /// Start from this scenario file instead of the paper's setup.
        #[arg(long)]
        scenario: Option<PathBuf>,
        #[command(flatten)]
        run: RunArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum AccountingArg {
    Sequential,
    Batched,
}

#[derive(Args)]
struct RunArgs {
    /// Seed of every random stream (default: the scenario's, 1).
    #[arg(long)]
    seed: Option<u64>,
    /// Monte-Carlo prompts (default: the scenario's, 200).
    #[arg(long)]
    prompts: Option<usize>,
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
    /// Worker threads (default: all cores); results do not depend on it.
    #[arg(long)]
    threads: Option<usize>,
    /// Write the table as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the latency / kept-weight plot as SVG.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Write CSV, JSON and SVG into this folder (NAME.csv, NAME.json, NAME.svg).
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bar and no "wrote FILE" lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
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
            let text = std::fs::read_to_string(&scenario)
                .map_err(|e| format!("cannot read {}: {e}", scenario.display()))?;
            let s = Scenario::from_toml_str(&text)
                .map_err(|e| format!("{}: {e}", scenario.display()))?;
            let title = format!("WDMoE sweep: {}", scenario.display());
            simulate(s, &run, "sweep", &title)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Scenario {
            print_default,
            check,
        } => {
            if let Some(path) = check {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let s = Scenario::from_toml_str(&text)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                print!("{}", s.to_toml_string());
                Ok(ExitCode::SUCCESS)
            } else if print_default {
                print!("{}", default_file());
                Ok(ExitCode::SUCCESS)
            } else {
                Err("nothing to do: pass --print-default or --check FILE".into())
            }
        }
        Cmd::Sensitivity {
            radii_m,
            compute_spreads,
            scenario,
            run,
        } => {
            let base = match scenario {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    Scenario::from_toml_str(&text)
                        .map_err(|e| format!("{}: {e}", path.display()))?
                }
                None => Scenario::paper(),
            };
            sensitivity(base, &radii_m, &compute_spreads, &run)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Generate(a) => {
            wdmoe_sim::generate_cli::run(&a, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Eval(a) => {
            wdmoe_sim::eval_cli::run(&a, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::RouterStats(a) => {
            wdmoe_sim::router_stats::run(&a, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Select => {
            let stdin = std::io::stdin();
            let stdout = std::io::stdout();
            let failed =
                select_cli::run(stdin.lock(), stdout.lock()).map_err(|e| format!("select: {e}"))?;
            Ok(if failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn default_file() -> String {
    format!(
        "# wdmoe scenario: the paper's setup (WDMoE §IV-A) with this project's documented defaults.\n\
         # Every key is optional; a missing key keeps the value shown here. Units are in the names.\n\
         # path_loss: free_space | uma | umi; fading: rayleigh | rician | none; time_model: block | ar1\n\
         # allocation: even | min_max; accounting: sequential | batched; router kind: synthetic | trace\n\
         # Scheduled outages: [[channel.outages]] device = 3, start_token = 10, tokens = 20\n\
         # radio.min_snr_db = -inf disables the SNR floor (the paper's literal Shannon model)\n\n{}",
        Scenario::default().to_toml_string()
    )
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn apply(s: &mut Scenario, a: &RunArgs) {
    if let Some(v) = a.seed {
        s.seed = v;
    }
    if let Some(v) = a.prompts {
        s.prompts = v;
    }
    if let Some(v) = a.tokens {
        s.prompt_tokens = v;
    }
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

fn run_sim(sim: &Simulation, a: &RunArgs, progress: &Progress) -> Result<RunReport, String> {
    let go = || sim.run(&|| progress.tick());
    match a.threads {
        Some(t) => rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build()
            .map_err(|e| format!("thread pool: {e}"))?
            .install(go),
        None => go(),
    }
    .map_err(|e| e.to_string())
}

fn sensitivity(
    base: Scenario,
    radii_m: &[f64],
    spreads: &[f64],
    a: &RunArgs,
) -> Result<(), String> {
    let mut radius = Vec::new();
    for &r in radii_m {
        let s = wdmoe_sim::sim::scale_cell(&base, r).map_err(|e| e.to_string())?;
        radius.push((format!("{r} m"), s));
    }
    let mut compute = Vec::new();
    for &alpha in spreads {
        let s = wdmoe_sim::sim::scale_compute_spread(&base, alpha).map_err(|e| e.to_string())?;
        compute.push((format!("α = {alpha}"), s));
    }
    let t1 = sensitivity_table("cell radius (farthest device)", radius, a)?;
    let t2 = sensitivity_table("compute spread α: C_q ← g·(C_q/g)^α", compute, a)?;
    print!("{t1}\n{t2}");
    println!("device latency: eq. (6) per token and layer, no fading, fastest … slowest device; reductions of the mean prompt latency vs plain top-k (θ = 0)");
    Ok(())
}

fn sensitivity_table(
    what: &str,
    variants: Vec<(String, Scenario)>,
    a: &RunArgs,
) -> Result<String, String> {
    let mut rows = Vec::new();
    for (label, mut s) in variants {
        apply(&mut s, a);
        s.policies.weight_only_betas.clear();
        s.policies.channel_only = false;
        let sim = Simulation::new(s).map_err(|e| e.to_string())?;
        let progress = Progress::new(&label, sim.scenario().prompts, !a.quiet);
        let report = run_sim(&sim, a, &progress)?;
        progress.finish();
        let ch = sim.channel();
        let lat: Vec<f64> = (0..sim.scenario().n_experts())
            .map(|q| ch.nominal_latency_s(q))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let lo = lat.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = lat.iter().cloned().fold(0.0, f64::max);
        rows.push((label, lo, hi, report));
    }
    let mut out = String::new();
    let Some((_, _, _, first)) = rows.first() else {
        return Ok(out);
    };
    out.push_str(&format!(
        "WDMoE latency reduction vs {what} | {} | {} prompts × {} tokens | seed {}\n",
        first.accounting, first.prompts, first.prompt_tokens, first.seed
    ));
    let thetas: Vec<String> = first
        .rows
        .iter()
        .skip(1)
        .map(|x| format!("{:>8}", format!("θ={}", x.parameter.unwrap_or(0.0))))
        .collect();
    out.push_str(&format!(
        "{:>10}  {:>20}  {:>12}  {}\n",
        "",
        "device latency ms",
        "top-k mean s",
        thetas.join("  ")
    ));
    for (label, lo, hi, rep) in &rows {
        let red: Vec<String> = rep
            .rows
            .iter()
            .skip(1)
            .map(|x| format!("{:>6.1} %", x.reduction_pct))
            .collect();
        out.push_str(&format!(
            "{:>10}  {:>20}  {:>12.3}  {}\n",
            label,
            format!("{:.2} … {:.2}", lo * 1e3, hi * 1e3),
            rep.rows[0].mean_s,
            red.join("  ")
        ));
    }
    Ok(out)
}

fn simulate(mut s: Scenario, a: &RunArgs, name: &str, title: &str) -> Result<RunReport, String> {
    apply(&mut s, a);
    let sim = Simulation::new(s).map_err(|e| e.to_string())?;
    let progress = Progress::new(name, sim.scenario().prompts, !a.quiet);
    let report = run_sim(&sim, a, &progress)?;
    progress.finish();
    print!("{}", report::table(&report, Some(title)));
    let mut outputs: Vec<(PathBuf, String)> = Vec::new();
    if let Some(dir) = &a.out {
        outputs.push((dir.join(format!("{name}.csv")), report::csv(&report)));
        outputs.push((dir.join(format!("{name}.json")), report::json(&report)));
        outputs.push((dir.join(format!("{name}.svg")), report::svg(&report)));
    }
    if let Some(p) = &a.csv {
        outputs.push((p.clone(), report::csv(&report)));
    }
    if let Some(p) = &a.json {
        outputs.push((p.clone(), report::json(&report)));
    }
    if let Some(p) = &a.svg {
        outputs.push((p.clone(), report::svg(&report)));
    }
    for (p, text) in &outputs {
        write_file(p, text)?;
        if !a.quiet {
            eprintln!("wrote {}", p.display());
        }
    }
    Ok(report)
}
