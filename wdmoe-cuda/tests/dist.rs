//! GPU tests of the expert-parallel MoE step (feature `nccl`, 2 CUDA GPUs):
//! two ranks as two threads of this process (one GPU and one NCCL
//! communicator each; `wdmoe dist` runs the same code as two processes).
//! No test waits on the other rank's thread unboundedly (`recv_timeout`);
//! the failure runs of whole processes (a rank that dies or stalls) are in
//! wdmoe-sim's tests/dist_cli.rs and run-gpu-dist.sh.
//!
//! Reference: the single-GPU `MoeLayer` with the same random weights and
//! input. The distributed step rounds each expert's output row to fp16
//! before the weighted fp32 combine (it travels as fp16), where the
//! single-GPU decode path combines in the down kernel's fp32 epilogue, so
//! the two agree within fp16 rounding, not bit for bit: the bound is
//! ‖dist − ref‖/‖ref‖ ≤ 2e-3 (about 4x the fp16 unit roundoff 4.9e-4, as in
//! tests/gpu.rs) and every element within 4e-3·max|ref|; NaN fails.
#![cfg(feature = "nccl")]

use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wdmoe_core::select::Policy;
use wdmoe_cuda::dist::{
    layer_seed, random_source, DeviceRank, DistMoe, LinkRates, Links, LocalExperts, Placement,
};
use wdmoe_cuda::moe::MoeLayer;
use wdmoe_cuda::nccl::{Comm, UniqueId, ABORT_WAIT};
use wdmoe_cuda::{f16, Error, Gpu};

const M: usize = 512;
const M_H: usize = 1024;
const E: usize = 8;
const MAX_TOKENS: usize = 48;

fn seed() -> u64 {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {s:#x}");
    s
}

fn gpu(ordinal: u32) -> Gpu {
    Gpu::new(ordinal).expect("these tests need 2 CUDA GPUs (run with --include-ignored only there)")
}

/// How the device rank's thread ended: `serve`'s result (or a setup error),
/// and the seconds `serve` took.
type Served = (Result<wdmoe_cuda::dist::ServeStats, Error>, f64);

/// The longest a test waits for a setup step or the other rank's thread.
const SETUP: Duration = Duration::from_secs(60);

/// Rank 1 on GPU 1 in a thread: joins, connects to the BS, loads its
/// experts, serves until stop (idle `timeout`); sends how it ended (before
/// dropping anything).
fn device_thread(
    placement: Placement,
    seed: u64,
    id_rx: mpsc::Receiver<String>,
    timeout: Duration,
) -> mpsc::Receiver<Served> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let gpu = gpu(1);
        let setup = || -> Result<DeviceRank, Error> {
            let id = UniqueId::from_hex(&id_rx.recv().expect("id from rank 0"))?;
            let mut comm = Comm::init_rank(&gpu, 2, 1, &id)?;
            comm.connect(&gpu, &[0], SETUP)?;
            let local = LocalExperts::load(
                &gpu,
                &placement,
                1,
                1,
                M,
                M_H,
                MAX_TOKENS,
                &mut random_source(M, M_H, seed),
            )?;
            let mut dev = DeviceRank::new(&gpu, comm, placement, local, MAX_TOKENS)?;
            dev.set_timeout(timeout);
            Ok(dev)
        };
        match setup() {
            Ok(mut dev) => {
                let t0 = Instant::now();
                let r = dev.serve(&gpu);
                let failed = r.is_err();
                let _ = tx.send((r, t0.elapsed().as_secs_f64()));
                if failed {
                    // As `wdmoe dist`'s ranks do after a failure: the GPU
                    // state is left to the process exit. Here also because
                    // NCCL frees an aborted rank's resources only when the
                    // last communicator of this process goes (the BS's,
                    // later): this GPU's context must outlive that.
                    std::mem::forget((dev, gpu));
                }
            }
            Err(e) => {
                let _ = tx.send((Err(e), 0.0));
            }
        }
    });
    rx
}

/// Rank 0 on `g0`: makes the id, hands it to the device thread, joins and
/// connects to rank 1.
fn bs_comm(g0: &Gpu, id_tx: mpsc::Sender<String>) -> Comm {
    let id = UniqueId::new().unwrap();
    id_tx.send(id.to_hex()).unwrap();
    let mut comm = Comm::init_rank(g0, 2, 0, &id).unwrap();
    comm.connect(g0, &[1], SETUP).unwrap();
    comm
}

fn rand_x(n: usize, seed: u64) -> Vec<f16> {
    let mut s = seed | 1;
    (0..n * M)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            f16::from_f32(((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32)
        })
        .collect()
}

fn compare(dist: &[f32], reference: &[f32], what: &str) {
    assert_eq!(dist.len(), reference.len());
    let (mut num, mut den, mut max_ref, mut max_err, mut same) =
        (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0);
    for (&d, &r) in dist.iter().zip(reference) {
        assert!(
            d.is_finite() && r.is_finite(),
            "{what}: NaN/inf ({d} vs {r})"
        );
        let e = (d as f64 - r as f64).abs();
        num += e * e;
        den += (r as f64) * (r as f64);
        max_ref = max_ref.max((r as f64).abs());
        max_err = max_err.max(e);
        same += (d.to_bits() == r.to_bits()) as usize;
    }
    let rel = (num / den.max(1e-30)).sqrt();
    eprintln!(
        "{what}: rel err {rel:.2e}, max err {max_err:.2e} (max |ref| {max_ref:.3}), {same}/{} bit-identical",
        dist.len()
    );
    assert!(
        max_ref > 1e-2,
        "{what}: reference is ~0 ({max_ref}): the test would not see a wrong result"
    );
    assert!(rel <= 2e-3, "{what}: relative error {rel}");
    assert!(max_err <= 4e-3 * max_ref, "{what}: max error {max_err}");
}

/// The distributed layer against `MoeLayer` for `spec`, at 1, 4 and 40
/// tokens, θ = 0 (plain top-2) and θ = 0.5 (one expert dropped per token).
fn matches_single_gpu(spec: &str) {
    let s = seed();
    let placement = Placement::parse(spec, E, 2).unwrap();
    let (id_tx, id_rx) = mpsc::channel();
    let dev = device_thread(placement.clone(), s, id_rx, Duration::from_secs(60));
    let g0 = gpu(0);
    let comm = bs_comm(&g0, id_tx);
    let local = LocalExperts::load(
        &g0,
        &placement,
        0,
        1,
        M,
        M_H,
        MAX_TOKENS,
        &mut random_source(M, M_H, s),
    )
    .unwrap();
    let mut dist = DistMoe::new(&g0, comm, placement.clone(), local, MAX_TOKENS).unwrap();
    let mut layer = MoeLayer::random(g0, M, M_H, E, MAX_TOKENS, layer_seed(s, 0)).unwrap();
    let latency_s: Vec<f64> = (0..E).map(|q| 1e-3 * (1.0 + q as f64)).collect();
    for &n in &[1usize, 4, 40] {
        for &theta in &[0.0, 0.5] {
            let policy = Policy::new(2, theta, 1).unwrap();
            let x = rand_x(n, s ^ (n as u64) << 20);
            layer.set_input(&x, n).unwrap();
            let step = layer.step(n, &policy, &latency_s).unwrap();
            let reference = layer.output(n).unwrap();
            let gpu = layer.gpu();
            let x_dev = gpu.upload(&x).unwrap();
            let mut acc = gpu.alloc::<f32>(n * M).unwrap();
            gpu.fill_u16(&mut acc, 0x7E00).unwrap(); // NaN poison
            let groups = &step.routing.groups;
            let rows: usize = groups.iter().map(Vec::len).sum();
            if theta > 0.0 {
                assert_eq!(rows, n, "θ = 0.5 drops one of two experts of every token");
            } else {
                assert_eq!(rows, 2 * n);
            }
            let st = dist
                .step_timed(gpu, 0, &x_dev, n, groups, None, &mut acc)
                .unwrap();
            assert_eq!(st.rows.iter().sum::<usize>(), rows);
            let out = gpu.download(&acc).unwrap();
            compare(&out, &reference, &format!("{spec} n={n} θ={theta}"));
        }
    }
    // Emulated links: rank 1 holds 2 ms down and 3 ms up for one row.
    let gpu = layer.gpu();
    let rates: Vec<LinkRates> = (0..E)
        .map(|_| LinkRates {
            down_bps: 65_536.0 / 2e-3,
            up_bps: 65_536.0 / 3e-3,
        })
        .collect();
    let links = Links {
        rates: &rates,
        payload_bits: 65_536.0,
    };
    let groups: Vec<Vec<(usize, f32)>> = (0..E)
        .map(|q| if q == 1 { vec![(0, 1.0)] } else { vec![] })
        .collect();
    let x_dev = gpu.upload(&rand_x(1, s)).unwrap();
    let mut acc = gpu.alloc::<f32>(M).unwrap();
    let st = dist
        .step_timed(gpu, 0, &x_dev, 1, &groups, Some(links), &mut acc)
        .unwrap();
    eprintln!(
        "{spec}: 1 row with 2 + 3 ms airtime: step {:.3} ms",
        st.time_s * 1e3
    );
    let (down, up) = st.hold_s[1];
    assert!(
        (down - 2e-3).abs() < 1e-9 && (up - 3e-3).abs() < 1e-9,
        "{down} {up}"
    );
    assert_eq!(
        st.hold_s[0],
        (0.0, 0.0),
        "the BS's experts serve nothing here"
    );
    assert!(
        st.time_s >= 5e-3 && st.time_s < 5e-3 + 50e-3,
        "{}",
        st.time_s
    );
    dist.stop(gpu).unwrap();
    let (served, _) = dev
        .recv_timeout(SETUP)
        .expect("the device rank ends after stop");
    let stats = served.unwrap();
    assert_eq!(stats.steps, 7, "6 compared steps and the link step");
}

#[test]
#[ignore = "needs 2 CUDA GPUs"]
fn dist_layer_matches_single_gpu_all_experts_on_the_device() {
    matches_single_gpu("1:0-7");
}

#[test]
#[ignore = "needs 2 CUDA GPUs"]
fn dist_layer_matches_single_gpu_experts_shared_with_the_bs() {
    matches_single_gpu("0:0,2,4,6;1:1,3,5,7");
}

/// The BS joins and connects, then stalls (alive, sending nothing): the
/// device rank's wait for the next header must end at its 2 s deadline with
/// a timeout naming it and what it waited for, the communicator aborted
/// within `ABORT_WAIT`. (Before `Comm::connect` existed this hung: the
/// device rank's first receive opened NCCL's connection to the BS inside
/// `ncclGroupEnd`, which blocks on the host until the BS takes part.)
#[test]
#[ignore = "needs 2 CUDA GPUs"]
fn a_device_rank_whose_bs_never_sends_times_out_and_aborts() {
    const IDLE: Duration = Duration::from_secs(2);
    let placement = Placement::parse("1:0-7", E, 2).unwrap();
    let (id_tx, id_rx) = mpsc::channel();
    let dev = device_thread(placement, 1, id_rx, IDLE);
    let g0 = gpu(0);
    let mut comm = bs_comm(&g0, id_tx);
    let bound = IDLE + ABORT_WAIT + SETUP;
    let (r, serve_s) = dev
        .recv_timeout(bound)
        .unwrap_or_else(|_| panic!("the device rank did not return within {bound:?}: a hang"));
    eprintln!("device rank: {r:?} after {serve_s:.2} s of serve");
    match &r {
        Err(Error::Timeout { op, waited_s }) => {
            assert!(
                op.contains("the next header from the BS") && op.contains("rank 1 of 2"),
                "{op}"
            );
            assert!(
                op.contains("communicator aborted") && !op.contains("still running"),
                "the abort must finish within {ABORT_WAIT:?}: {op}"
            );
            assert!((2.0..2.5).contains(waited_s), "waited {waited_s} s");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        serve_s >= 2.0 && serve_s < 2.0 + ABORT_WAIT.as_secs_f64(),
        "serve took {serve_s} s"
    );
    // The BS's communicator: its peer aborted; abort it too (bounded).
    let t0 = Instant::now();
    let finished = comm.abort();
    eprintln!(
        "BS abort: finished {finished} after {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        finished,
        "the BS's abort did not finish within {ABORT_WAIT:?}"
    );
}
