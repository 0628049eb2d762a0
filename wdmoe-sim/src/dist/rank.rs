//! One rank of `wdmoe dist` (feature `dist`): GPU, NCCL id exchange,
//! communicator and its connection to every peer (setup bounded by a
//! watchdog), experts, then the base station's driver (rank 0) or a
//! device's serve loop.
//!
//! # When a peer fails
//!
//! Every wait of a rank is bounded by `--timeout-s`: setup by the watchdog
//! (the process exits with code 3), every transfer by `Comm::wait`, which
//! then aborts NCCL (bounded too, `wdmoe_cuda::nccl`). A rank that times
//! out returns an error naming itself and what it waited for, e.g. `rank 1:
//! timed out after 5.0 s waiting for the next header from the BS (rank 1 of
//! 2; communicator aborted)`, and exits with code 2, leaving its GPU state
//! to the process exit ([`leave_to_exit`]). The launcher (`launch`) then
//! stops the other ranks. So a peer that dies ends the run at once or
//! within `--timeout-s`, and one that stalls (alive, silent) within
//! `--timeout-s` plus the launcher's grace (`min(--timeout-s, 10 s)`).
//!
//! # Test hooks (never set in normal runs)
//!
//! Two environment variables make a rank fail on purpose, to show the
//! above on real GPUs (`wdmoe-cuda/run-gpu-dist.sh`, step "failures";
//! `wdmoe-sim/tests/dist_cli.rs`). Each names one rank; unset, or naming
//! another rank, they do nothing.
//!
//! * `WDMOE_DIST_TEST_DIE=r`: rank r exits (code 7) right after
//!   `ncclCommInitRank`, before the connection handshake;
//! * `WDMOE_DIST_TEST_STALL=r`: rank r completes setup (connected, experts
//!   loaded) and then stalls instead of stepping or serving: alive, sending
//!   nothing ([`stall_hook`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wdmoe_core::select::Policy;
use wdmoe_cuda::dist::{
    random_source, DeviceRank, DistMoe, LinkRates, Links, LocalExperts, Placement,
};
use wdmoe_cuda::moe::route_tokens;
use wdmoe_cuda::nccl::{Comm, UniqueId};
use wdmoe_cuda::{f16, Gpu};

use super::report::{DistReport, LayerRecord};
use super::DistArgs;
use crate::output;
use crate::scenario::{Accounting, Scenario, MAX_FILE_BYTES};
use crate::sim::Simulation;

/// CUDA devices visible to this process.
pub fn visible_gpus() -> Result<usize, String> {
    use wdmoe_cuda::cust;
    cust::init(cust::CudaFlags::empty())
        .and_then(|()| cust::device::Device::num_devices())
        .map(|n| n as usize)
        .map_err(|e| format!("no usable CUDA driver ({e:?}): a distributed run needs GPUs"))
}

/// The scenario of the run: the file's or the paper's, with the run's
/// layers, tokens (sequential, eq. 8), shape and seed.
pub fn scenario_of(a: &DistArgs) -> Result<Scenario, String> {
    let mut s = match &a.scenario {
        Some(p) => {
            let text = output::read_bounded(p, MAX_FILE_BYTES).map_err(|e| e.to_string())?;
            Scenario::from_toml_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => Scenario::paper(),
    };
    let u32_of =
        |v: usize, what: &str| u32::try_from(v).map_err(|_| format!("--{what} {v} is too large"));
    s.model.layers = u32_of(a.layers, "layers")?;
    s.model.hidden = u32_of(a.m, "m")?;
    s.model.ffn_hidden = u32_of(a.m_h, "m-h")?;
    s.prompt_tokens = a.tokens;
    s.decode_tokens = 0;
    s.accounting = Accounting::Sequential;
    s.seed = a.seed;
    Ok(s)
}

/// Exits the process if `done` is not set within `limit` (NCCL setup blocks
/// with no timeout of its own when a peer never joins).
fn watchdog(rank: usize, what: &'static str, limit: Duration) -> Arc<AtomicBool> {
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if flag.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !flag.load(Ordering::Acquire) {
            eprintln!(
                "rank {rank}: {what} did not finish in {:.0} s (did another rank fail?); exiting",
                limit.as_secs_f64()
            );
            std::process::exit(3);
        }
    });
    done
}

/// The NCCL id: rank 0 makes it and writes it (temporary name, then
/// rename); the others wait for the file.
fn exchange_id(rank: usize, id_file: &Path, limit: Duration) -> Result<UniqueId, String> {
    if rank == 0 {
        let id = UniqueId::new().map_err(|e| e.to_string())?;
        let tmp = id_file.with_extension("tmp");
        std::fs::write(&tmp, id.to_hex())
            .and_then(|()| std::fs::rename(&tmp, id_file))
            .map_err(|e| format!("writing the NCCL id to {}: {e}", id_file.display()))?;
        return Ok(id);
    }
    let t0 = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(id_file) {
            return UniqueId::from_hex(&text).map_err(|e| e.to_string());
        }
        if t0.elapsed() > limit {
            return Err(format!(
                "no NCCL id from rank 0 in {} after {:.0} s",
                id_file.display(),
                limit.as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One rank, start to end.
pub fn main(a: &DistArgs, rank: usize, world: usize, id_file: &Path) -> Result<(), String> {
    let limit = Duration::from_secs_f64(a.timeout_s);
    let scenario = scenario_of(a)?;
    let n_experts = scenario.n_experts();
    let placement = Placement::parse(&a.placement, n_experts, world)
        .map_err(|e| format!("--placement: {e}"))?;
    // An Arc (the whole model's BS shares it), made first so that it is
    // dropped last.
    let gpu = Arc::new(Gpu::new(rank as u32).map_err(|e| format!("GPU {rank}: {e}"))?);
    let id = exchange_id(rank, id_file, limit)?;
    let done = watchdog(
        rank,
        "NCCL setup (ncclCommInitRank, then the connection to every peer)",
        limit,
    );
    let mut comm = Comm::init_rank(&gpu, world, rank, &id).map_err(|e| e.to_string())?;
    if test_hook("WDMOE_DIST_TEST_DIE", rank) {
        eprintln!("rank {rank}: exiting on purpose (WDMOE_DIST_TEST_DIE)");
        std::process::exit(7);
    }
    // The BS talks with every device rank, a device rank with the BS only.
    // Connecting now (NCCL would at the first transfer, blocking the host
    // there until the peer takes part) keeps every later wait bounded.
    let peers: Vec<usize> = if rank == 0 {
        (1..world).collect()
    } else {
        vec![0]
    };
    comm.connect(&gpu, &peers, limit)
        .map_err(|e| format!("connecting to ranks {peers:?}: {e}"))?;
    done.store(true, Ordering::Release);
    let model_shape = match a.model {
        Some(_) => Some(super::model::shape(a)?),
        None => None,
    };
    let (max_tokens, local) = match &model_shape {
        Some(s) => (
            super::model::CHUNK,
            super::model::rank_experts(a, &gpu, &placement, rank, s)?,
        ),
        None => (
            1,
            LocalExperts::load(
                &gpu,
                &placement,
                rank,
                a.layers,
                a.m,
                a.m_h,
                1,
                &mut random_source(a.m, a.m_h, a.seed),
            )
            .map_err(|e| format!("loading experts: {e}"))?,
        ),
    };
    eprintln!(
        "rank {rank}: {} on GPU {rank}, experts {:?} of {} layers",
        gpu.info().name,
        placement.experts_on(rank),
        model_shape.map_or(a.layers, |s| s.layers)
    );
    if rank != 0 {
        let mut dev =
            DeviceRank::new(&gpu, comm, placement, local, max_tokens).map_err(|e| e.to_string())?;
        dev.set_timeout(limit);
        stall_hook(rank, limit);
        return match dev.serve(&gpu) {
            Ok(stats) => {
                eprintln!(
                    "rank {rank}: served {} steps, {} rows",
                    stats.steps, stats.rows
                );
                Ok(())
            }
            Err(e) => {
                leave_to_exit((dev, gpu));
                Err(e.to_string())
            }
        };
    }
    let mut dist =
        DistMoe::new(&gpu, comm, placement, local, max_tokens).map_err(|e| e.to_string())?;
    dist.set_timeout(limit);
    stall_hook(rank, limit);
    let r = match model_shape {
        Some(s) => super::model::base_station(a, gpu.clone(), &mut dist, s, world),
        None => base_station(a, &gpu, &mut dist, scenario, world).map(|r| (r, String::new())),
    };
    let r = finish(a, &gpu, &mut dist, r);
    if r.is_err() {
        leave_to_exit((dist, gpu));
    }
    r
}

/// Whether test hook `var` (see the module docs) names `rank`.
fn test_hook(var: &str, rank: usize) -> bool {
    names_rank(std::env::var(var).ok().as_deref(), rank)
}

/// Whether a test hook's value names `rank` (a rank number, surrounding
/// whitespace allowed; anything else names no rank).
fn names_rank(value: Option<&str>, rank: usize) -> bool {
    value
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|r| r == rank)
}

/// Test hook `WDMOE_DIST_TEST_STALL` (module docs): if it names `rank`,
/// stalls instead of returning: alive, its communicator connected, sending
/// and receiving nothing, as a hung or overloaded peer would. Its peers
/// time out after `limit` and exit; the launcher then kills this process.
/// Should nothing stop it, it exits by itself (code 9) after 4 × `limit` +
/// 30 s: longer than a peer's timeout plus the launcher's grace, so the
/// peers' timeout is what the run shows, and a stalled rank never lingers.
fn stall_hook(rank: usize, limit: Duration) {
    if !test_hook("WDMOE_DIST_TEST_STALL", rank) {
        return;
    }
    let max = limit
        .saturating_mul(4)
        .saturating_add(Duration::from_secs(30));
    eprintln!(
        "rank {rank}: stalling on purpose (WDMOE_DIST_TEST_STALL): alive, sending nothing, \
         for up to {:.0} s",
        max.as_secs_f64()
    );
    std::thread::sleep(max);
    eprintln!("rank {rank}: was not stopped while stalled (WDMOE_DIST_TEST_STALL); exiting");
    std::process::exit(9);
}

/// After a failed step: the rank's GPU state (communicator, buffers, the
/// context) is left to the process exit, which follows the error message,
/// instead of being dropped here. The communicator is aborted already (its
/// kernels end); but should an abort not have finished in time
/// (`wdmoe_cuda::nccl::ABORT_WAIT`), freeing device memory or destroying
/// the context would wait for a transfer kernel that never ends (both
/// synchronize with the device), and the rank would hang before it could
/// report. The driver frees everything when the process exits.
fn leave_to_exit<T>(state: T) {
    std::mem::forget(state);
}

/// Rank 0's end: stop the device ranks, print and write the report; on an
/// error abort the communicator.
fn finish(
    a: &DistArgs,
    gpu: &Gpu,
    dist: &mut DistMoe,
    r: Result<(DistReport, String), String>,
) -> Result<(), String> {
    match r {
        Ok((report, text)) => {
            dist.stop(gpu).map_err(|e| e.to_string())?;
            print!("{text}{}", report.table());
            if let Some(p) = &a.json {
                output::write_atomic(p, report.json().as_bytes()).map_err(|e| e.to_string())?;
            }
            if let Some(p) = &a.csv {
                output::write_atomic(p, report.csv().as_bytes()).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        Err(e) => {
            dist.abort();
            Err(e)
        }
    }
}

/// Per expert (device q) the downlink and uplink rates of its link on
/// channel `ch` (eq. 2–3); experts without a link get 0.
pub(super) fn link_rates(
    model: &wdmoe_core::latency::LatencyModel<f64>,
    ch: &crate::sim::TokenChannel,
    rates: &mut [LinkRates],
) -> Result<(), String> {
    rates.iter_mut().for_each(|r| {
        *r = LinkRates {
            down_bps: 0.0,
            up_bps: 0.0,
        }
    });
    for (q, dev) in ch.links() {
        let (d, u) = model
            .rates_bps(dev, ch.bandwidth_hz()[q])
            .map_err(|e| format!("link of device {q}: {e}"))?;
        rates[q] = LinkRates {
            down_bps: d,
            up_bps: u,
        };
    }
    Ok(())
}

/// Rank 0's driver: the scenario's draws token by token and layer by layer,
/// routed with wdmoe-core's policy, every layer's MoE through `dist`.
fn base_station(
    a: &DistArgs,
    gpu: &Gpu,
    dist: &mut DistMoe,
    scenario: Scenario,
    world: usize,
) -> Result<DistReport, String> {
    let e_str = |e: wdmoe_cuda::Error| e.to_string();
    let sim = Simulation::new(scenario).map_err(|e| e.to_string())?;
    let n = sim.scenario().n_experts();
    let policy = Policy::new(a.k, a.theta, a.max_drops).map_err(|e| format!("policy: {e}"))?;
    let model = *sim.channel().latency_model();
    let mut x = gpu.alloc::<f16>(a.m).map_err(e_str)?;
    let mut acc = gpu.alloc::<f32>(a.m).map_err(e_str)?;
    // Warm-up (not recorded): every expert of every layer once, so NCCL's
    // connections and the kernels are set up before anything is timed.
    let all: Vec<Vec<(usize, f32)>> = (0..n).map(|_| vec![(0, 1.0 / n as f32)]).collect();
    gpu.fill_uniform(&mut x, a.seed, 1.0).map_err(e_str)?;
    for l in 0..a.layers {
        dist.step_timed(gpu, l, &x, 1, &all, None, &mut acc)
            .map_err(e_str)?;
    }
    let rep = sim.replication(0);
    let mut draws = rep.prompt(0).map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    let mut rates = vec![
        LinkRates {
            down_bps: 0.0,
            up_bps: 0.0
        };
        n
    ];
    while let Some(j) = draws.next_token().map_err(|e| e.to_string())? {
        for l in 0..a.layers {
            draws.layer(l).map_err(|e| e.to_string())?;
            let logits: Vec<f32> = draws.logits(l).iter().map(|&v| v as f32).collect();
            let ch = draws.channel();
            let routing = route_tokens(&logits, 1, n, &policy, ch.latency_s()).map_err(e_str)?;
            link_rates(&model, ch, &mut rates)?;
            let links = (!a.no_links).then_some(Links {
                rates: &rates,
                payload_bits: model.payload_bits(),
            });
            let seed = a.seed ^ ((j as u64) << 32 | l as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            gpu.fill_uniform(&mut x, seed, 1.0).map_err(e_str)?;
            let st = dist
                .step_timed(gpu, l, &x, 1, &routing.groups, links, &mut acc)
                .map_err(e_str)?;
            records.push(LayerRecord {
                token: j,
                layer: l,
                experts: routing.selections[0].experts().len(),
                modeled_s: routing.token_latency_s[0],
                airtime_s: st.hold_s.iter().map(|h| h.0 + h.1).fold(0.0, f64::max),
                measured_s: st.time_s,
            });
        }
    }
    Ok(DistReport {
        machine: format!("{world} x {}", gpu.info().name),
        placement: dist.placement().spec(),
        shape: (a.m, a.m_h),
        links: !a.no_links,
        layers: records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_hook_names_one_rank_or_none() {
        assert!(names_rank(Some("0"), 0));
        assert!(names_rank(Some(" 1\n"), 1));
        assert!(!names_rank(Some("1"), 0));
        assert!(!names_rank(Some("01x"), 1));
        assert!(!names_rank(Some(""), 0));
        assert!(!names_rank(None, 0));
    }
}
