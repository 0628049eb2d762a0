//! `wdmoe dist`: the MoE layers run expert-parallel on several GPUs through
//! NCCL, with the wireless links emulated, and measured against the latency
//! model.
//!
//! One command starts every rank ([`launch`]): `wdmoe dist --gpus N …`
//! re-runs this binary N times with the rank in its environment; rank 0 (the
//! base station) writes the NCCL unique id to a file in a fresh temporary
//! folder, the others read it; each rank runs on GPU `rank`. Rank 0 steps
//! through the scenario's draws (its synthetic router's logits and the
//! channel per token and layer, `sim::draws`), routes each token with
//! wdmoe-core's policy, and runs every layer's MoE through
//! `wdmoe_cuda::dist::DistMoe` on random hidden states; device ranks serve
//! their experts and hold each transfer for its airtime (eq. 2–3 rates).
//! The report ([`report`]) sets measured against modeled latency.
//!
//! Needs the `dist` feature (wdmoe-cuda with NCCL); without it `wdmoe dist`
//! says so. The launcher itself ([`launch`]) and the report need no GPU.
//!
//! Failures end the run with exit code 2 and a message, never a hang: too
//! many GPUs or a placement that leaves an expert nowhere (checked before
//! any rank starts); a rank that dies (the launcher stops the others after
//! a grace of min(`--timeout-s`, 10 s)); a rank that stalls, alive but
//! silent (its peers time out after `--timeout-s`, each naming the rank
//! and what it waited for, then the launcher stops the stalled one). The
//! ranks' side of this is in `rank` (feature `dist`), with the test hooks
//! `WDMOE_DIST_TEST_DIE` / `WDMOE_DIST_TEST_STALL` that show it on GPUs.

pub mod launch;
#[cfg(feature = "dist")]
mod model;
#[cfg(feature = "dist")]
mod rank;
pub mod report;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::output::CliError;

/// `wdmoe dist` arguments (the same for every rank).
#[derive(Args, Debug, Clone)]
pub struct DistArgs {
    /// GPUs (= ranks, one process each): rank 0 is the base station, 1.. devices.
    #[arg(long)]
    pub gpus: usize,
    /// Run a whole Mixtral (random fp16 weights of this config's shape:
    /// `mixtral-8x7b` or a checkpoint directory's config.json): rank 0 holds
    /// embeddings, attention, routers and lm_head and decodes greedily,
    /// every layer's experts on their ranks. Without it, rank 0 drives the
    /// MoE layers alone on the scenario's synthetic router.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// With --model: prompt tokens (random ids from --seed).
    #[arg(long, default_value_t = 32)]
    pub prompt_tokens: usize,
    /// With --model: tokens to generate.
    #[arg(long, default_value_t = 16)]
    pub new_tokens: usize,
    /// With --model: rank 0 also runs the same model with every expert on
    /// its own GPU and compares (needs the room for all experts there).
    #[arg(long)]
    pub check_single_gpu: bool,
    /// With --model DIR: the checkpoint's weights (safetensors, each rank
    /// reading what it holds) instead of random ones.
    #[arg(long)]
    pub checkpoint: bool,
    /// Which rank hosts which expert: `RANK:EXPERTS;…` (e.g. `1:0-3;2:4-7`),
    /// `spread` (round-robin over the device ranks) or `spread-bs` (the BS too).
    #[arg(long, default_value = "spread")]
    pub placement: String,
    /// MoE layers (random experts per layer).
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Tokens, one after another (decode: one token per step, eq. 8).
    #[arg(long, default_value_t = 8)]
    pub tokens: u32,
    /// Hidden size m.
    #[arg(long, default_value_t = 4096)]
    pub m: usize,
    /// Expert hidden size m_h.
    #[arg(long, default_value_t = 14336)]
    pub m_h: usize,
    /// WDMoE threshold θ (0: plain top-k).
    #[arg(long, default_value_t = 0.2)]
    pub theta: f64,
    /// Experts per token before drops.
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    /// Drops per token.
    #[arg(long, default_value_t = 1)]
    pub max_drops: usize,
    /// Scenario file (default: the paper's setup); its devices are the experts' links.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Seed of the draws and of the random weights.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Do not emulate the links (no airtime holds).
    #[arg(long)]
    pub no_links: bool,
    /// Longest wait for a peer, in seconds: the setup (NCCL and the
    /// connection to every peer), and every step's transfers, also a device
    /// rank's wait for the BS's first step (while the BS loads its part of
    /// the model). Past it the rank aborts NCCL, names what it waited for,
    /// and exits 2; the launcher then stops the other ranks (after
    /// min(this, 10 s)) and exits 2. A rank that dies or stalls (alive,
    /// silent) thus ends the run with a message, never a hang.
    #[arg(long, default_value_t = 120.0)]
    pub timeout_s: f64,
    /// Write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the per-layer records as CSV.
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

/// Runs `wdmoe dist`: the launcher, or (with `WDMOE_DIST_RANK` set) one rank.
pub fn run(a: &DistArgs) -> Result<(), CliError> {
    if !(a.timeout_s.is_finite() && a.timeout_s > 0.0) {
        return Err(format!(
            "--timeout-s {}: must be a positive number of seconds",
            a.timeout_s
        )
        .into());
    }
    if let Ok(rank) = std::env::var(launch::ENV_RANK) {
        return run_rank(a, &rank);
    }
    prepare(a)?;
    let program = std::env::current_exe()
        .map_err(|e| format!("dist: cannot find this program to start the ranks: {e}"))?;
    let spec = launch::LaunchSpec {
        program,
        args: std::env::args().skip(1).collect(),
        world: a.gpus,
        env: vec![("WDMOE_DIST_TIMEOUT_S".into(), a.timeout_s.to_string())],
        grace: Duration::from_secs_f64(a.timeout_s.min(10.0)),
        timeout: None,
    };
    launch::launch(&spec).map_err(|e| CliError::Msg(e.to_string()))
}

/// The launcher's checks before starting anything: GPUs and placement.
#[cfg(feature = "dist")]
fn prepare(a: &DistArgs) -> Result<(), CliError> {
    let visible = rank::visible_gpus().map_err(|e| format!("dist: {e}"))?;
    launch::check_gpus(a.gpus, visible).map_err(|e| format!("dist: {e}"))?;
    let n = rank::scenario_of(a)
        .map_err(|e| format!("dist: {e}"))?
        .n_experts();
    wdmoe_cuda::dist::Placement::parse(&a.placement, n, a.gpus)
        .map_err(|e| format!("dist: --placement: {e}"))?;
    Ok(())
}

#[cfg(not(feature = "dist"))]
fn prepare(_: &DistArgs) -> Result<(), CliError> {
    Err(NO_FEATURE.into())
}

#[cfg(not(feature = "dist"))]
const NO_FEATURE: &str = "wdmoe was built without the `dist` feature (NCCL): build it with \
     `cargo build --release -p wdmoe-sim --features dist` (see wdmoe-sim/README.md, \"Experts on several GPUs\")";

fn run_rank(a: &DistArgs, rank: &str) -> Result<(), CliError> {
    let parse = |v: &str, what: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("dist: {what} {v:?} is not a number"))
    };
    let rank = parse(rank, launch::ENV_RANK)?;
    let world = parse(
        &std::env::var(launch::ENV_WORLD).unwrap_or_default(),
        launch::ENV_WORLD,
    )?;
    let id_file = std::env::var_os(launch::ENV_ID_FILE)
        .map(PathBuf::from)
        .ok_or_else(|| format!("dist: rank {rank}: {} is not set", launch::ENV_ID_FILE))?;
    if rank >= world || world != a.gpus {
        return Err(format!("dist: rank {rank} of {world} ranks, --gpus {}", a.gpus).into());
    }
    rank_body(a, rank, world, &id_file)
}

#[cfg(feature = "dist")]
fn rank_body(
    a: &DistArgs,
    rank: usize,
    world: usize,
    id_file: &std::path::Path,
) -> Result<(), CliError> {
    rank::main(a, rank, world, id_file).map_err(|e| CliError::Msg(format!("rank {rank}: {e}")))
}

#[cfg(not(feature = "dist"))]
fn rank_body(_: &DistArgs, _: usize, _: usize, _: &std::path::Path) -> Result<(), CliError> {
    Err(NO_FEATURE.into())
}
