//! Times the prefill (tensor-core) expert FFN against the decode kernels over
//! token counts (Mixtral sizes, fp16, CUDA events, median, weights rotated
//! over 4 experts so L2 never holds them), sweeps the GEMM shapes, and times
//! a grouped 8-expert top-2 MoE layer (router on the GPU, top-2 on the host,
//! gather, grouped FFN, weighted combine) against the sum of the
//! single-expert times for the same token counts. Run beside
//! torch_baseline.py in the same call (wdmoe-cuda/run-gpu.sh).
//!
//!   prefill_bench [--tokens 16,32,64,128,256,512,1024,4096,8192] [--layer 512,4096]
//!                 [--iters 20] [--sweep] [--experts 8] [--json PATH]

use std::time::Instant;

use wdmoe_cuda::cust::memory::{CopyDestination, LockedBuffer};
use wdmoe_cuda::{
    combine_rows, f16, ffn_decode, ffn_grouped, ffn_prefill, gather_rows, DecodeConfig,
    ExpertWeights, FfnWorkspace, GemmConfig, Gpu, PrefillConfig, PrefillWeights, PrefillWorkspace,
    Result, Router,
};

mod common;
use common::{arg, arg_list, median, time};

const M: usize = 4096;
const MH: usize = 14336;
const ROT: usize = 4;

fn tflops(t: usize, ms: f32) -> f64 {
    2.0 * t as f64 * 3.0 * (M * MH) as f64 / (ms as f64 * 1e-3) / 1e12
}

/// Deterministic xorshift for the routing draw.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| arg(&args, k);
    let list = |k: &str, d: &str| arg_list(&args, k, d);
    let tokens = list("--tokens", "16,32,64,128,256,512,1024,4096,8192");
    let layer = list("--layer", "512,4096");
    let iters: usize = get("--iters").map_or(20, |s| s.parse().expect("iters"));
    let sweep = args.iter().any(|a| a == "--sweep");
    let gpu = Gpu::new(0)?;
    let info = gpu.info().clone();
    println!(
        "device {} SMs {} cubin {}",
        info.name, info.sm_count, info.cubin
    );
    let max_t = tokens.iter().copied().max().unwrap_or(1);
    let max_rows = max_t.max(2 * layer.iter().copied().max().unwrap_or(0));

    // 4 experts for rotation (decode + prefill layouts).
    let s1 = 1.7 / (M as f32).sqrt();
    let s2 = 1.7 / (MH as f32).sqrt();
    let mut raw = Vec::new();
    // --experts N: prefill experts stacked (default 8 for the layer; 4 is
    // enough without --layer). The decode experts are the first 4.
    let n_exp: u64 = get("--experts").map_or(8, |v| v.parse().expect("experts"));
    for e in 0..n_exp.max(ROT as u64) {
        let mut a = gpu.alloc::<f16>(M * MH)?;
        let mut b = gpu.alloc::<f16>(M * MH)?;
        let mut c = gpu.alloc::<f16>(M * MH)?;
        gpu.fill_uniform(&mut a, 11 + 3 * e, s1)?;
        gpu.fill_uniform(&mut b, 12 + 3 * e, s1)?;
        gpu.fill_uniform(&mut c, 13 + 3 * e, s2)?;
        raw.push((a, b, c));
    }
    let refs: Vec<_> = raw.iter().map(|(a, b, c)| (&**a, &**b, &**c)).collect();
    let pw = PrefillWeights::pack(&gpu, &refs, M, MH)?;
    let dw: Vec<ExpertWeights> = raw[..ROT]
        .iter()
        .map(|(a, b, c)| ExpertWeights::pack(&gpu, a, b, c, M, MH))
        .collect::<Result<_>>()?;
    drop(refs);
    drop(raw);
    let dcfg = DecodeConfig::auto(&info, M, MH);
    let mut dws = FfnWorkspace::new(&gpu, M, MH)?;
    let mut pws = PrefillWorkspace::new(&gpu, M, MH, max_rows)?;
    let mut x = gpu.alloc::<f16>(max_rows * M)?;
    gpu.fill_uniform(&mut x, 99, 1.0)?;
    let mut y = gpu.alloc::<f16>(max_rows * M)?;
    let mut json = String::from("{\n \"expert_ffn\": [\n");
    // Warm-up (~50 ms of both paths): the first timed size otherwise pays
    // for the clocks ramping up from idle (seen: +12 % on the first size).
    for i in 0..200 {
        ffn_decode(&gpu, &dw[i % ROT], &x, 16, &mut y, &mut dws, &dcfg)?;
        ffn_prefill(&gpu, &pw, i % ROT, &x, 64, &mut y, &mut pws, None)?;
    }
    gpu.sync()?;

    println!(
        "\n{:>6} {:>10} {:>10} {:>8} {:>8} {:>9}  config",
        "tokens", "decode_us", "prefill_us", "TFLOP/s", "TB/s", "faster"
    );
    for (ti, &t) in tokens.iter().enumerate() {
        let dec = if t <= 256 {
            Some(time(&gpu, iters, |i| {
                ffn_decode(&gpu, &dw[i % ROT], &x, t, &mut y, &mut dws, &dcfg)
            })?)
        } else {
            None
        };
        let cfg = PrefillConfig::auto(&info, &[t], M, MH, &pws);
        let pre = time(&gpu, iters, |i| {
            ffn_prefill(&gpu, &pw, i % ROT, &x, t, &mut y, &mut pws, None)
        })?;
        let tbps = (3 * M * MH * 2) as f64 / (pre as f64 * 1e-3) / 1e12;
        let faster = match dec {
            Some(d) if d < pre => "decode",
            _ => "prefill",
        };
        println!(
            "{t:>6} {:>10} {:>10.1} {:>8.1} {:>8.2} {:>9}  {cfg:?}",
            dec.map_or("-".into(), |d| format!("{:.1}", d * 1e3)),
            pre * 1e3,
            tflops(t, pre),
            tbps,
            faster
        );
        json.push_str(&format!(
            "  {{\"tokens\": {t}, \"decode_us\": {}, \"prefill_us\": {:.1}, \"TFLOPs\": {:.1}, \"config\": \"{cfg:?}\"}}{}\n",
            dec.map_or("null".into(), |d| format!("{:.1}", d * 1e3)),
            pre * 1e3,
            tflops(t, pre),
            if ti + 1 < tokens.len() { "," } else { "" }
        ));
        if sweep {
            let mut line = format!("   sweep T={t}:");
            for (bg, bd, s) in [
                (256, 256, 1),
                (128, 128, 1),
                (224, 128, 1),
                (224, 256, 1),
                (224, 128, 2),
                (224, 128, 4),
                (256, 128, 4),
                (224, 256, 4),
                (224, 256, 8),
                (192, 192, 1),
                (192, 256, 1),
                (256, 192, 1),
                (224, 192, 4),
            ] {
                // bn 192: 192 x 192 tiles (three consumer warpgroups).
                let bm = |bn: u32| if bn == 192 { 192 } else { 128 };
                let c = PrefillConfig {
                    gate_up: GemmConfig {
                        bm: bm(bg),
                        bn: bg,
                        splits: 1,
                    },
                    down: GemmConfig {
                        bm: bm(bd),
                        bn: bd,
                        splits: s,
                    },
                };
                if s > 1 && s as usize * t * M > 8 * t.min(1024) * M {
                    continue;
                }
                let ms = time(&gpu, iters.min(10), |i| {
                    ffn_prefill(&gpu, &pw, i % ROT, &x, t, &mut y, &mut pws, Some(&c))
                })?;
                line.push_str(&format!(" g{bg}/d{bd}x{s} {:.1}", ms * 1e3));
            }
            println!("{line}");
        }
    }
    json.push_str(" ],\n \"moe_layer\": [\n");

    // Grouped top-2 layer over the 8 experts.
    let e_n = 8usize;
    let mut g = vec![f16::ZERO; e_n * M];
    let mut rng = Rng(0x9E3779B97F4A7C15);
    for v in g.iter_mut() {
        *v = f16::from_f32(((rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.05);
    }
    let router = Router::from_host(&gpu, &g, e_n, M)?;
    let mut logits = gpu.alloc::<f32>(max_rows * e_n)?;
    let mut probs = gpu.alloc::<f32>(max_rows * e_n)?;
    let idx_d = gpu.alloc::<i32>(max_rows * 2)?;
    let slot_d = gpu.alloc::<i32>(max_rows * 2)?;
    let w_d = gpu.alloc::<f32>(max_rows * 2)?;
    let mut xs = gpu.alloc::<f16>(max_rows * 2 * M)?;
    let mut ys = gpu.alloc::<f16>(max_rows * 2 * M)?;
    let mut probs_h = ce(LockedBuffer::new(&0f32, max_rows * e_n))?;
    println!(
        "\n{:>6} {:>10} {:>11} {:>11} {:>7}  counts",
        "tokens", "layer_us", "grouped_us", "sum_single", "ratio"
    );
    for (li, &n) in layer.iter().enumerate() {
        let mut counts = vec![0usize; e_n];
        // One full layer: returns counts (same every run: same x).
        // Phase times of the last run (host clock): route+sync, host top-2
        // and grouping, uploads, gather+FFN+combine+sync.
        let mut phases = [0f32; 4];
        let mut run_layer = |counts: &mut Vec<usize>| -> Result<()> {
            let t0 = Instant::now();
            router.route(&gpu, &x, n, &mut logits, &mut probs)?;
            gpu.sync()?;
            let t1 = Instant::now();
            ce(probs.index(0..n * e_n).copy_to(&mut probs_h[..n * e_n]))?;
            let mut pairs: Vec<(u32, u32, f32)> = Vec::with_capacity(2 * n);
            for t in 0..n {
                let p = &probs_h[t * e_n..(t + 1) * e_n];
                let (mut a, mut b) = (0, 1);
                if p[b] > p[a] {
                    std::mem::swap(&mut a, &mut b);
                }
                for q in 2..e_n {
                    if p[q] > p[a] {
                        b = a;
                        a = q;
                    } else if p[q] > p[b] {
                        b = q;
                    }
                }
                let s = p[a] + p[b];
                pairs.push((a as u32, t as u32, p[a] / s));
                pairs.push((b as u32, t as u32, p[b] / s));
            }
            // Counting sort by expert (stable in token order): O(n).
            counts.iter_mut().for_each(|c| *c = 0);
            for &(e, _, _) in &pairs {
                counts[e as usize] += 1;
            }
            let mut next: Vec<usize> = counts
                .iter()
                .scan(0, |acc, &c| {
                    let s = *acc;
                    *acc += c;
                    Some(s)
                })
                .collect();
            let mut idx = vec![0i32; 2 * n];
            let mut slot = vec![-1i32; 2 * n];
            let mut wts = vec![0f32; 2 * n];
            for &(e, t, w) in &pairs {
                let row = next[e as usize];
                next[e as usize] += 1;
                idx[row] = t as i32;
                let j = if slot[2 * t as usize] < 0 { 0 } else { 1 };
                slot[2 * t as usize + j] = row as i32;
                wts[2 * t as usize + j] = w;
            }
            let t2 = Instant::now();
            ce(idx_d.index(0..2 * n).copy_from(&idx[..]))?;
            ce(slot_d.index(0..2 * n).copy_from(&slot[..]))?;
            ce(w_d.index(0..2 * n).copy_from(&wts[..]))?;
            let t3 = Instant::now();
            gather_rows(&gpu, &x, &idx_d.index(0..2 * n), M, &mut xs)?;
            ffn_grouped(&gpu, &pw, &xs, counts, &mut ys, &mut pws, None)?;
            combine_rows(&gpu, &ys, &slot_d, &w_d, 2, n, M, &mut y)?;
            gpu.sync()?;
            let t4 = Instant::now();
            for (p, (a, b)) in phases
                .iter_mut()
                .zip([(t0, t1), (t1, t2), (t2, t3), (t3, t4)])
            {
                *p = (b - a).as_secs_f32() * 1e6;
            }
            Ok(())
        };
        for _ in 0..2 {
            run_layer(&mut counts)?;
        }
        let mut v = Vec::new();
        for _ in 0..iters.min(10) {
            let t0 = Instant::now();
            run_layer(&mut counts)?;
            v.push(t0.elapsed().as_secs_f32() * 1e3);
        }
        let layer_ms = median(v);
        let grouped = time(&gpu, iters.min(10), |_| {
            ffn_grouped(&gpu, &pw, &xs, &counts, &mut ys, &mut pws, None)
        })?;
        if sweep {
            let mut line = format!("   grouped sweep N={n}:");
            for (bg, bd, sp) in [
                (224, 256, 1),
                (224, 256, 2),
                (224, 128, 1),
                (224, 128, 2),
                (256, 256, 1),
                (256, 256, 2),
                (128, 128, 1),
                (192, 192, 1),
                (192, 256, 2),
                (192, 192, 2),
            ] {
                if sp > 1 && 2 * n * sp as usize > 8 * 1024 {
                    continue; // beyond the workspace's split-K buffer
                }
                let bm = |bn: u32| if bn == 192 { 192 } else { 128 };
                let c = PrefillConfig {
                    gate_up: GemmConfig {
                        bm: bm(bg),
                        bn: bg,
                        splits: 1,
                    },
                    down: GemmConfig {
                        bm: bm(bd),
                        bn: bd,
                        splits: sp,
                    },
                };
                let ms = time(&gpu, iters.min(10), |_| {
                    ffn_grouped(&gpu, &pw, &xs, &counts, &mut ys, &mut pws, Some(&c))
                })?;
                line.push_str(&format!(" g{bg}/d{bd}x{sp} {:.1}", ms * 1e3));
            }
            println!("{line}");
        }
        let mut sum = 0.0;
        for (e, &c) in counts.iter().enumerate() {
            if c > 0 {
                sum += time(&gpu, iters.min(10), |_| {
                    ffn_prefill(&gpu, &pw, e, &xs, c, &mut ys, &mut pws, None)
                })?;
            }
        }
        println!(
            "{n:>6} {:>10.1} {:>11.1} {:>11.1} {:>7.3}  {counts:?}",
            layer_ms * 1e3,
            grouped * 1e3,
            sum * 1e3,
            grouped / sum
        );
        println!(
            "       layer phases (us): route+sync {:.0}, host top-2 {:.0}, uploads {:.0}, gather+ffn+combine {:.0}; {:?}",
            phases[0],
            phases[1],
            phases[2],
            phases[3],
            PrefillConfig::auto(&info, &counts, M, MH, &pws)
        );
        json.push_str(&format!(
            "  {{\"tokens\": {n}, \"layer_us\": {:.1}, \"grouped_us\": {:.1}, \"sum_single_us\": {:.1}, \"counts\": {counts:?}}}{}\n",
            layer_ms * 1e3,
            grouped * 1e3,
            sum * 1e3,
            if li + 1 < layer.len() { "," } else { "" }
        ));
    }
    json.push_str(" ]\n}\n");
    if let Some(p) = get("--json") {
        std::fs::write(p, json).expect("write json");
    }
    Ok(())
}

fn ce<T>(r: std::result::Result<T, wdmoe_cuda::cust::error::CudaError>) -> Result<T> {
    r.map_err(|error| wdmoe_cuda::Error::cuda("copy", "", error))
}
