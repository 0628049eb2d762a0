//! GPU tests of device-side routing at prefill sizes (kernels/moe_route.cu,
//! `moe::device_route`, `MoeLayer::set_device_routing`): the counting sort
//! and the gather against a CPU reference on random selections, the grouped
//! GEMMs on device row offsets against the host-count launch, and the
//! device-routed layer step against the host-routed one (same selections,
//! outputs within the fp16 bound of tests/gpu.rs), including a forced
//! mismatch that must be caught and re-run. Ignored by default (they need a
//! CUDA GPU, the grouped path compute capability 9.0); run with
//! `--include-ignored` on a GPU machine (see wdmoe-cuda/gpu-build.sh).

mod common;

use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use wdmoe_core::select::Policy;
use wdmoe_cuda::moe::device_route::{counting_sort, gather_sorted, sel_width, SortTables};
use wdmoe_cuda::moe::{MoeLayer, RowTables};
use wdmoe_cuda::{
    f16, ffn_grouped, ffn_grouped_device, DeviceBuffer, Gpu, PrefillConfig, PrefillWeights,
    PrefillWorkspace,
};

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Random `sel` rows (count, k experts, k weight bits) for `tokens` tokens:
/// 0..=k distinct experts each (count 0 now and then), drawn from the
/// experts `allowed` admits (so some experts get no token).
fn random_sel(
    rng: &mut SmallRng,
    tokens: usize,
    e: usize,
    k: usize,
    allowed: impl Fn(usize) -> bool,
) -> Vec<i32> {
    let sw = sel_width(k);
    let pool: Vec<usize> = (0..e).filter(|&q| allowed(q)).collect();
    let mut sel = vec![-9i32; tokens * sw];
    for t in 0..tokens {
        let row = &mut sel[t * sw..(t + 1) * sw];
        let n = if rng.gen_range(0..50) == 0 {
            0
        } else {
            rng.gen_range(1..=k.min(pool.len()))
        };
        let mut picked: Vec<usize> = Vec::new();
        while picked.len() < n {
            let q = pool[rng.gen_range(0..pool.len())];
            if !picked.contains(&q) {
                picked.push(q);
            }
        }
        row[0] = n as i32;
        for (i, &q) in picked.iter().enumerate() {
            row[1 + i] = q as i32;
            row[1 + k + i] = rng.gen_range(0.01f32..1.0).to_bits() as i32;
        }
    }
    sel
}

/// The CPU reference of the sort: per expert its (token, weight) pairs in
/// token order, encoded by the host's RowTables.
fn reference_tables(sel: &[i32], tokens: usize, e: usize, k: usize) -> RowTables {
    let sw = sel_width(k);
    let mut groups = vec![Vec::new(); e];
    for t in 0..tokens {
        let row = &sel[t * sw..(t + 1) * sw];
        for i in 0..row[0] as usize {
            groups[row[1 + i] as usize].push((t, f32::from_bits(row[1 + k + i] as u32)));
        }
    }
    RowTables::new(tokens, &groups).unwrap()
}

/// Counting sort and gather on the GPU against the CPU reference: random
/// selections at token counts around the tile size and at prefill sizes,
/// 3, 8 and 64 experts, top-1/2/4, experts with no token; tables poisoned
/// first so that an entry left unwritten shows.
#[test]
#[ignore = "needs a CUDA GPU"]
fn counting_sort_matches_cpu_reference() {
    let gpu = gpu();
    let s = seed();
    let mut rng = SmallRng::seed_from_u64(s);
    let m = 64;
    let cases: [(usize, usize, usize); 9] = [
        (1, 8, 2),
        (255, 8, 2),
        (256, 8, 2),
        (257, 3, 1),
        (1000, 8, 2),
        (1000, 64, 4),
        (4096, 8, 2),
        (4096, 64, 2),
        (777, 5, 5),
    ];
    for (n, (tokens, e, k)) in cases.into_iter().enumerate() {
        // Every other case leaves the upper experts (or expert 0) empty.
        let allowed = |q: usize| match n % 3 {
            0 => q < e.div_ceil(2),
            1 => q != 0,
            _ => true,
        };
        let sel = random_sel(&mut rng, tokens, e, k, allowed);
        let sw = sel_width(k);
        let reference = reference_tables(&sel, tokens, e, k);
        let rows = reference.rows();
        let sel_d = gpu.upload(&sel).unwrap();
        let mut t = SortTables::new(&gpu, tokens, e, tokens * k).unwrap();
        gpu.fill_u16(&mut t.idx, 0xBEEF).unwrap();
        gpu.fill_u16(&mut t.slot, 0xBEEF).unwrap();
        gpu.fill_u16(&mut t.wts, NAN16).unwrap();
        counting_sort(&gpu, &sel_d, sw, tokens, &mut t).unwrap();
        let offsets = gpu.download(&t.offsets).unwrap();
        let counts: Vec<usize> = offsets.windows(2).map(|w| (w[1] - w[0]) as usize).collect();
        assert_eq!(offsets[0], 0);
        assert_eq!(counts, reference.counts, "case {n}: counts");
        assert!(
            counts.contains(&0) || n % 3 == 2,
            "case {n}: an empty expert"
        );
        let idx = gpu.download(&t.idx).unwrap();
        assert_eq!(&idx[..rows], &reference.idx[..], "case {n}: row tokens");
        assert_eq!(
            gpu.download(&t.slot).unwrap(),
            reference.slot,
            "case {n}: slots"
        );
        let wts = gpu.download(&t.wts).unwrap();
        let bits = |v: &[f32]| v.iter().map(|w| w.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&wts), bits(&reference.wts), "case {n}: weights");
        // The gather: rows in that order, exactly, and nothing past them.
        let x_host: Vec<f16> = (0..tokens * m)
            .map(|i| f16::from_f32(((i * 7919 + s as usize) % 2001) as f32 / 1000.0 - 1.0))
            .collect();
        let x = gpu.upload(&x_host).unwrap();
        let cap = tokens * k;
        let mut xs = gpu.alloc::<f16>(cap * m).unwrap();
        gpu.fill_u16(&mut xs, NAN16).unwrap();
        gather_sorted(&gpu, &x, tokens, &t, cap, m, &mut xs).unwrap();
        let xs = gpu.download(&xs).unwrap();
        for (r, &tok) in reference.idx.iter().enumerate() {
            let tok = tok as usize;
            assert!(
                xs[r * m..(r + 1) * m]
                    .iter()
                    .zip(&x_host[tok * m..(tok + 1) * m])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "case {n}: row {r} is not token {tok}"
            );
        }
        assert!(
            xs[rows * m..].iter().all(|v| v.to_bits() == NAN16),
            "case {n}: rows past the count were written"
        );
        eprintln!(
            "sort case {n}: {tokens} tokens, {e} experts, top-{k}: {rows} rows, counts {counts:?}"
        );
    }
}

/// The grouped GEMMs reading the row offsets from device memory (launched
/// for the worst case) equal the launch with host counts for the same
/// shapes, bit for bit, with empty groups and a row capacity above the rows.
#[test]
#[ignore = "needs a CUDA GPU"]
fn grouped_gemm_on_device_offsets_equals_host_counts() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    let s = seed();
    let (m, m_h, e) = (256usize, 512usize, 6usize);
    let raw: Vec<(DeviceBuffer<f16>, DeviceBuffer<f16>, DeviceBuffer<f16>)> = (0..e as u64)
        .map(|q| {
            let mut a = gpu.alloc::<f16>(m * m_h).unwrap();
            let mut b = gpu.alloc::<f16>(m * m_h).unwrap();
            let mut c = gpu.alloc::<f16>(m * m_h).unwrap();
            gpu.fill_uniform(&mut a, s ^ (q << 8) ^ 1, 0.1).unwrap();
            gpu.fill_uniform(&mut b, s ^ (q << 8) ^ 2, 0.1).unwrap();
            gpu.fill_uniform(&mut c, s ^ (q << 8) ^ 3, 0.07).unwrap();
            (a, b, c)
        })
        .collect();
    let refs: Vec<_> = raw.iter().map(|(a, b, c)| (&**a, &**b, &**c)).collect();
    let w = PrefillWeights::pack(&gpu, &refs, m, m_h).unwrap();
    for counts in [
        vec![130usize, 0, 7, 300, 0, 64],
        vec![0, 0, 0, 0, 0, 900],
        vec![1, 2, 3, 4, 5, 6],
    ] {
        let rows: usize = counts.iter().sum();
        // Above the rows, within the 1024 rows the split-K buffer holds.
        let cap = rows + 100;
        let mut x = gpu.alloc::<f16>(cap * m).unwrap();
        gpu.fill_uniform(&mut x, s ^ 77, 1.0).unwrap();
        let mut ws = PrefillWorkspace::new(&gpu, m, m_h, cap).unwrap();
        // One shape for both launches (the device launch would otherwise
        // model the counts as `cap` rows spread evenly).
        let cfg = PrefillConfig::auto(gpu.info(), &counts, m, m_h, &ws);
        let mut y_host = gpu.alloc::<f16>(cap * m).unwrap();
        let mut y_dev = gpu.alloc::<f16>(cap * m).unwrap();
        gpu.fill_u16(&mut y_host, NAN16).unwrap();
        gpu.fill_u16(&mut y_dev, NAN16).unwrap();
        ffn_grouped(&gpu, &w, &x, &counts, &mut y_host, &mut ws, Some(&cfg)).unwrap();
        let mut offsets = vec![0i32];
        for c in &counts {
            offsets.push(offsets.last().unwrap() + *c as i32);
        }
        let off = gpu.upload(&offsets).unwrap();
        ffn_grouped_device(&gpu, &w, &x, &off, cap, &mut y_dev, &mut ws, Some(&cfg)).unwrap();
        let (a, b) = (
            gpu.download(&y_host).unwrap(),
            gpu.download(&y_dev).unwrap(),
        );
        let same = a[..rows * m]
            .iter()
            .zip(&b[..rows * m])
            .filter(|(p, q)| p.to_bits() == q.to_bits())
            .count();
        assert!(
            b[..rows * m].iter().all(|v| v.is_finite()),
            "{counts:?}: unwritten rows"
        );
        assert_eq!(same, rows * m, "{counts:?} {cfg:?}: bitwise equal rows");
        // And with the shapes chosen for the capacity (no cfg): same FFN,
        // other tiling, within the fp16 bound.
        gpu.fill_u16(&mut y_dev, NAN16).unwrap();
        ffn_grouped_device(&gpu, &w, &x, &off, cap, &mut y_dev, &mut ws, None).unwrap();
        let b = gpu.download(&y_dev).unwrap();
        let to64 = |v: &[f16]| v.iter().map(|h| h.to_f64()).collect::<Vec<_>>();
        let err = rel_err(&to64(&b[..rows * m]), &to64(&a[..rows * m]));
        eprintln!(
            "device offsets {counts:?}: {cfg:?} bitwise equal; auto shapes rel err {err:.2e}"
        );
        assert!(err <= BOUND, "{counts:?}: rel err {err:.3e}");
    }
}

/// The layer of the step tests: small dims (fast), 8 experts, up to 4096
/// tokens.
fn layer(gpu: Gpu, s: u64) -> MoeLayer {
    let mut l = MoeLayer::random(gpu, 512, 1024, 8, 4096, s).unwrap();
    l.set_random_input(s ^ 0x5eed).unwrap();
    l
}

/// Per-token latencies in [5, 50] ms (seeded): WDMoE drops experts.
fn token_latencies(rng: &mut SmallRng, tokens: usize, e: usize) -> Vec<f64> {
    (0..tokens * e)
        .map(|_| rng.gen_range(0.005..0.05))
        .collect()
}

/// The device-routed grouped step equals the host-routed one at 17, 512,
/// 1000 and 4096 tokens, top-2 (per-expert latencies) and WDMoE θ = 0.2
/// (per-token latencies): wdmoe-core's check finds the same selections
/// (no re-run), the groups are equal, the outputs agree within the fp16
/// bound, the probabilities are equal (same router kernel); with the check off the
/// device's own groups and token latencies are wdmoe-core's.
#[test]
#[ignore = "needs a CUDA GPU"]
fn device_routed_step_equals_host_routed_step() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    let s = seed();
    let mut rng = SmallRng::seed_from_u64(s ^ 1);
    let mut l = layer(gpu, s);
    let e = l.experts();
    let top2 = Policy::new(2, 0.0, 1).unwrap();
    let wdmoe = Policy::new(2, 0.2, 1).unwrap();
    let mut dropped = 0usize;
    for n in [17usize, 512, 1000, 4096] {
        assert!(l.uses_prefill(n), "{n} tokens on the grouped path");
        for (name, policy) in [("top-2", &top2), ("wdmoe 0.2", &wdmoe)] {
            let lat: Vec<f64> = if name == "top-2" {
                vec![0.01; e]
            } else {
                token_latencies(&mut rng, n, e)
            };
            l.set_device_routing(false);
            assert!(!l.uses_device_routing(n, &lat));
            let host = l.step(n, policy, &lat).unwrap();
            let out_host = l.output(n).unwrap();
            l.set_device_routing(true);
            l.set_route_check_every(1);
            assert!(l.uses_device_routing(n, &lat));
            let before = l.device_policy_mismatches();
            let dev = l.step(n, policy, &lat).unwrap();
            let out_dev = l.output(n).unwrap();
            assert_eq!(
                l.device_policy_mismatches(),
                before,
                "{name} at {n}: the device's selections differ from wdmoe-core's"
            );
            assert_eq!(dev.routing.groups, host.routing.groups, "{name} at {n}");
            assert_eq!(dev.routing.selections, host.routing.selections);
            let err = rel_err(&widen(&out_dev), &widen(&out_host));
            let perr = rel_err(&dev.probs, &host.probs);
            let rows: usize = dev.routing.groups.iter().map(Vec::len).sum();
            dropped += 2 * n - rows;
            eprintln!(
                "{name} at {n} tokens: {rows} rows, output rel err {err:.2e}, probs {perr:.2e}, step {:.1} us (host-routed {:.1} us), check {:.1} us",
                dev.time_s * 1e6,
                host.time_s * 1e6,
                l.last_route_check_s() * 1e6
            );
            assert!(err <= BOUND, "{name} at {n}: rel err {err:.3e}");
            assert_eq!(
                dev.probs, host.probs,
                "{name} at {n}: the same router kernel"
            );
            assert!(l.last_route_check_s() > 0.0);
            // Unchecked: the device's groups and eq. 7 latencies.
            l.set_route_check_every(0);
            let unchecked = l.step(n, policy, &lat).unwrap();
            assert!(unchecked.routing.selections.is_empty());
            assert_eq!(unchecked.routing.groups, host.routing.groups);
            assert_eq!(
                unchecked.routing.token_latency_s,
                host.routing.token_latency_s
            );
            assert_eq!(l.last_route_check_s(), 0.0);
            let out_unchecked = l.output(n).unwrap();
            assert!(out_unchecked
                .iter()
                .zip(&out_dev)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
    assert!(dropped > 0, "WDMoE θ = 0.2 dropped no expert: a weak test");
    // Every 3rd step checked: steps 1 and 4 of 4.
    l.set_route_check_every(3);
    let checked: Vec<bool> = (0..4)
        .map(|_| {
            let r = l.step(512, &top2, &[0.01; 8]).unwrap();
            !r.routing.selections.is_empty()
        })
        .collect();
    assert_eq!(
        checked.iter().filter(|c| **c).count(),
        1 + usize::from(checked[3])
    );
    assert_eq!(l.device_policy_mismatches(), 0);
}

/// A device policy forced to differ (top-1 instead of top-2, the decode
/// path's test hook): the check catches it, the step is re-run with
/// wdmoe-core's plan, and the output is the host-routed step's, bit for
/// bit; with the check off, the device's (top-1) plan stands.
#[test]
#[ignore = "needs a CUDA GPU"]
fn forced_mismatch_is_rerun_with_wdmoe_cores_plan() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    let s = seed();
    let mut l = layer(gpu, s);
    let policy = Policy::new(2, 0.0, 1).unwrap();
    let lat = [0.01f64; 8];
    for n in [512usize, 1000] {
        l.set_device_routing(false);
        let host = l.step(n, &policy, &lat).unwrap();
        let out_host = l.output(n).unwrap();
        l.set_device_routing(true);
        l.set_route_check_every(1);
        l.skew_device_policy(true);
        let before = l.device_policy_mismatches();
        let dev = l.step(n, &policy, &lat).unwrap();
        let out_dev = l.output(n).unwrap();
        assert_eq!(l.device_policy_mismatches(), before + 1, "at {n}");
        assert_eq!(dev.routing.groups, host.routing.groups);
        assert!(
            out_dev
                .iter()
                .zip(&out_host)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "at {n}: the re-run is not the host-routed step"
        );
        eprintln!(
            "forced mismatch at {n}: re-run, step {:.1} us (host-routed {:.1} us)",
            dev.time_s * 1e6,
            host.time_s * 1e6
        );
        // Unchecked: top-1 rows stand (what the check protects against).
        l.set_route_check_every(0);
        let skewed = l.step(n, &policy, &lat).unwrap();
        let rows: usize = skewed.routing.groups.iter().map(Vec::len).sum();
        assert_eq!(rows, n, "top-1 on the device");
        assert_eq!(l.device_policy_mismatches(), before + 1);
        let err = rel_err(&widen(&l.output(n).unwrap()), &widen(&out_host));
        assert!(err > 10.0 * BOUND, "top-1 vs top-2 outputs: {err:.2e}");
        l.skew_device_policy(false);
    }
}
