//! Distributed MoE layer on 2 GPUs (feature `nccl`): NCCL's own
//! point-to-point bandwidth on this machine, then the time of one MoE layer
//! (Mixtral size, random weights, all 8 experts on GPU 1, the BS on GPU 0)
//! against the same layer on one GPU, and the transfer share of it.
//!
//!   dist_bench [--tokens 1,16,128,512] [--iters 20] [--json PATH]
//!
//! Two ranks as two threads of this process (one GPU and communicator
//! each). Times are CUDA events on GPU 0, medians over `--iters`.

use std::sync::mpsc;
use std::time::Duration;

use wdmoe_core::select::Policy;
use wdmoe_cuda::dist::{layer_seed, random_source, DeviceRank, DistMoe, LocalExperts, Placement};
use wdmoe_cuda::moe::MoeLayer;
use wdmoe_cuda::nccl::{self, Comm, UniqueId};
use wdmoe_cuda::{elapsed_ms, f16, Gpu, Result};

mod common;
use common::{arg, median};

const M: usize = 4096;
const MH: usize = 14336;
const E: usize = 8;
/// Transfer sizes of the point-to-point sweep, in bytes.
const P2P_BYTES: [usize; 7] = [
    8 << 10,
    64 << 10,
    512 << 10,
    4 << 20,
    32 << 20,
    128 << 20,
    512 << 20,
];
const SEED: u64 = 0x5eed;

/// The sends (rank 0) or receives (rank 1) of the sweep, the same sequence
/// on both ranks; rank 0 returns the median ms per transfer of each size.
fn p2p_sweep(gpu: &Gpu, comm: &mut Comm, iters: usize) -> Result<Vec<f32>> {
    let mut buf = gpu.alloc::<f16>(P2P_BYTES[P2P_BYTES.len() - 1] / 2)?;
    let mut out = Vec::new();
    let t = Duration::from_secs(60);
    for &bytes in &P2P_BYTES {
        let n = bytes / 2;
        let mut times = Vec::new();
        for i in 0..3 + iters {
            let s = gpu.record()?;
            if comm.rank() == 0 {
                comm.group(|c| c.send(gpu, &buf.index(..n), 1))?;
            } else {
                let mut v = buf.index(..n);
                comm.group(|c| c.recv(gpu, &mut v, 0))?;
            }
            let e = gpu.record()?;
            comm.wait(gpu, "p2p sweep", t)?;
            if i >= 3 {
                times.push(elapsed_ms(&s, &e)?);
            }
        }
        out.push(median(times));
    }
    let _ = &mut buf;
    Ok(out)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| arg(&args, k);
    let tokens: Vec<usize> = get("--tokens")
        .unwrap_or_else(|| "1,16,128,512".into())
        .split(',')
        .map(|s| s.parse().expect("token count"))
        .collect();
    let iters: usize = get("--iters").map_or(20, |s| s.parse().expect("iters"));
    let max_tokens = tokens.iter().copied().max().unwrap_or(1);
    let placement = Placement::parse("1:0-7", E, 2)?;
    println!("NCCL version {}", nccl::version()?);

    let (id_tx, id_rx) = mpsc::channel::<String>();
    let dev_placement = placement.clone();
    let device = std::thread::spawn(move || -> Result<()> {
        let gpu = Gpu::new(1)?;
        let id = UniqueId::from_hex(&id_rx.recv().expect("id"))?;
        let mut comm = Comm::init_rank(&gpu, 2, 1, &id)?;
        comm.connect(&gpu, &[0], Duration::from_secs(60))?;
        p2p_sweep(&gpu, &mut comm, iters)?;
        let local = LocalExperts::load(
            &gpu,
            &dev_placement,
            1,
            1,
            M,
            MH,
            max_tokens * 2,
            &mut random_source(M, MH, SEED),
        )?;
        let mut rank = DeviceRank::new(&gpu, comm, dev_placement, local, max_tokens)?;
        let stats = rank.serve(&gpu)?;
        println!("device rank: {} steps, {} rows", stats.steps, stats.rows);
        Ok(())
    });

    let gpu = Gpu::new(0)?;
    println!("GPU 0: {}", gpu.info().name);
    let id = UniqueId::new()?;
    id_tx.send(id.to_hex()).expect("device thread");
    let mut comm = Comm::init_rank(&gpu, 2, 0, &id)?;
    comm.connect(&gpu, &[1], Duration::from_secs(60))?;
    let p2p = p2p_sweep(&gpu, &mut comm, iters)?;
    println!("\nNCCL send/recv GPU 0 -> GPU 1 (median of {iters}):");
    println!("{:>12} {:>10} {:>10}", "bytes", "µs", "GB/s");
    let mut json = String::from("{\"p2p\":[");
    for (i, (&b, &ms)) in P2P_BYTES.iter().zip(&p2p).enumerate() {
        let gbs = b as f64 / (ms as f64 * 1e-3) / 1e9;
        println!("{b:>12} {:>10.1} {gbs:>10.1}", ms * 1e3);
        json += &format!(
            "{}{{\"bytes\":{b},\"us\":{:.2},\"gb_s\":{gbs:.2}}}",
            if i > 0 { "," } else { "" },
            ms * 1e3
        );
    }
    let big_gbs = P2P_BYTES[P2P_BYTES.len() - 1] as f64 / (p2p[p2p.len() - 1] as f64 * 1e-3) / 1e9;
    let small_us = p2p[0] as f64 * 1e3;

    let local = LocalExperts::load(
        &gpu,
        &placement,
        0,
        1,
        M,
        MH,
        1,
        &mut random_source(M, MH, SEED),
    )?;
    let mut dist = DistMoe::new(&gpu, comm, placement, local, max_tokens)?;
    let mut layer = MoeLayer::random(gpu, M, MH, E, max_tokens, layer_seed(SEED, 0))?;
    layer.set_expert_timing(false);
    let policy = Policy::new(2, 0.0, 1).map_err(wdmoe_cuda::Error::Policy)?;
    let lat = vec![1e-3; E];
    println!(
        "\nMoE layer m={M} m_h={MH}, top-2 of 8, experts on GPU 1 (median of {iters}), \
         transfer estimate = 2 · rows · m · 2 B / {big_gbs:.0} GB/s + 3 · {small_us:.0} µs.\n\
         1 GPU: MoeLayer::step (router, policy, experts, combine); 2 GPUs: DistMoe::step \
         (gather, header, rows out, experts on GPU 1, rows back, combine; no router)."
    );
    println!(
        "{:>7} {:>6} {:>12} {:>12} {:>12} {:>14}",
        "tokens", "rows", "1 GPU µs", "2 GPUs µs", "extra µs", "transfer est µs"
    );
    json += "],\"layer\":[";
    for (i, &n) in tokens.iter().enumerate() {
        layer.set_random_input(SEED ^ n as u64)?;
        let mut one = Vec::new();
        let mut two = Vec::new();
        let mut rows = 0;
        let g = layer.gpu();
        let mut x = g.alloc::<f16>(n * M)?;
        g.fill_uniform(&mut x, SEED ^ n as u64, 1.0)?;
        let mut acc = g.alloc::<f32>(n * M)?;
        for it in 0..3 + iters {
            let st = layer.step(n, &policy, &lat)?;
            // The same routing for the distributed step.
            let groups = &st.routing.groups;
            rows = groups.iter().map(Vec::len).sum::<usize>();
            let d = dist.step_timed(layer.gpu(), 0, &x, n, groups, None, &mut acc)?;
            if it >= 3 {
                one.push((st.time_s * 1e6) as f32);
                two.push((d.time_s * 1e6) as f32);
            }
        }
        let (a, b) = (median(one) as f64, median(two) as f64);
        let est = 2.0 * (rows * M * 2) as f64 / (big_gbs * 1e9) * 1e6 + 3.0 * small_us;
        println!(
            "{n:>7} {rows:>6} {a:>12.1} {b:>12.1} {:>12.1} {est:>14.1}",
            b - a
        );
        json += &format!(
            "{}{{\"tokens\":{n},\"rows\":{rows},\"one_gpu_us\":{a:.1},\"two_gpus_us\":{b:.1},\"transfer_est_us\":{est:.1}}}",
            if i > 0 { "," } else { "" }
        );
    }
    json += "]}";
    dist.stop(layer.gpu())?;
    device.join().expect("device thread")?;
    if let Some(p) = get("--json") {
        std::fs::write(&p, &json).expect("write --json");
        println!("wrote {p}");
    }
    Ok(())
}
