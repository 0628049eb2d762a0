//! Times the decode kernels on the GPU with CUDA events and prints a table:
//! the measured device-to-device copy rate, a sweep of launch shapes per
//! kernel, and the expert FFN (auto shape and best shape) for 1-16 tokens,
//! as time, effective weight bandwidth and fraction of the copy rate.
//! Weights: 4 Mixtral experts (m=4096, m_h=14336, fp16, random), rotated so
//! the L2 never holds them.
//!
//!   decode_bench [--tokens 1,2,4,8,16] [--iters 30] [--json PATH] [--sweep PATH] [--quick]
//!
//! `--quick`: no sweep; whole-FFN A/B of a few 9-16-token shapes instead.

use std::fmt::Write as _;

use wdmoe_cuda::cust::memory::AsyncCopyDestination;
use wdmoe_cuda::{
    f16, ffn_decode, ffn_stage, DecodeConfig, DownLayout, ExpertWeights, FfnWorkspace, Gpu,
    KernelConfig, Result, Stage,
};

mod common;
use common::{arg, time};

const M: usize = 4096;
const MH: usize = 14336;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| arg(&args, k);
    let tokens: Vec<usize> = get("--tokens")
        .unwrap_or_else(|| "1,2,4,8,16".into())
        .split(',')
        .map(|s| s.parse().expect("token count"))
        .collect();
    let iters: usize = get("--iters").map_or(30, |s| s.parse().expect("iters"));
    let gpu = Gpu::new(0)?;
    let info = gpu.info().clone();
    println!(
        "device {} cc {}.{} SMs {} L2 {} MB cubin {}",
        info.name,
        info.cc.0,
        info.cc.1,
        info.sm_count,
        info.l2_bytes >> 20,
        info.cubin
    );
    let mut json = String::new();
    write!(json, "{{\"device\":\"{}\"", info.name).unwrap();

    // Device-to-device copy rate (bytes read + written), 1 GiB.
    let n = 1usize << 29;
    let a = gpu.alloc::<f16>(n)?;
    let mut b = gpu.alloc::<f16>(n)?;
    let copy_ms = time(&gpu, 10, |_| {
        // SAFETY: a and b are distinct device buffers of n elements that
        // outlive the copy (we synchronise on the end event before dropping).
        unsafe { b.async_copy_from(&a, gpu.stream()) }.map_err(|error| {
            wdmoe_cuda::Error::cuda("cuMemcpyDtoDAsync", format!("{n} x f16"), error)
        })
    })?;
    // Read-only ceiling: stream the 1 GiB buffer once with 16-byte loads.
    let mut scratch = gpu.alloc::<f32>(info.sm_count as usize * 8)?;
    let read_ms = time(&gpu, 10, |_| gpu.read_probe(&a, &mut scratch))?;
    let read_tbps = (n * 2) as f64 / (read_ms as f64 * 1e-3) / 1e12;
    println!("read probe {read_tbps:.3} TB/s ({read_ms:.3} ms for 1 GiB)");
    write!(json, ",\"read_TBps\":{read_tbps:.4}").unwrap();
    drop((a, b));
    let copy_tbps = 2.0 * (n * 2) as f64 / (copy_ms as f64 * 1e-3) / 1e12;
    println!("copy {copy_tbps:.3} TB/s ({copy_ms:.3} ms for 2 x 1 GiB)");
    write!(json, ",\"copy_TBps\":{copy_tbps:.4}").unwrap();

    // 4 experts per W2 layout (32-row and 16-row tiles), random weights.
    let make = |layout: DownLayout, k_major: bool| -> Result<Vec<ExpertWeights>> {
        let mut w1 = gpu.alloc::<f16>(M * MH)?;
        let mut w3 = gpu.alloc::<f16>(M * MH)?;
        let mut w2 = gpu.alloc::<f16>(M * MH)?;
        (0..4u64)
            .map(|i| {
                gpu.fill_uniform(&mut w1, 11 + 10 * i, 0.02)?;
                gpu.fill_uniform(&mut w3, 12 + 10 * i, 0.02)?;
                gpu.fill_uniform(&mut w2, 13 + 10 * i, 0.02)?;
                let e = ExpertWeights::pack_opts(&gpu, &w1, &w3, &w2, M, MH, layout, k_major)?;
                gpu.sync()?;
                Ok(e)
            })
            .collect()
    };
    let experts = make(DownLayout::Pairs32, false)?;
    let experts16 = make(DownLayout::Tiles16, false)?;
    let experts_km = make(DownLayout::Pairs32, true)?;
    let wbytes = experts[0].bytes() as f64;
    let mut ws = FfnWorkspace::new(&gpu, M, MH)?;
    let mut x = gpu.alloc::<f16>(16 * M)?;
    gpu.fill_uniform(&mut x, 5, 1.0)?;
    let mut out = gpu.alloc::<f16>(16 * M)?;
    let auto = DecodeConfig::auto(&info, M, MH);
    let auto16 = DecodeConfig::auto_layout(&info, M, MH, DownLayout::Tiles16);
    println!("auto config {auto:?}; 16-row W2 tiles: {auto16:?}");

    // Sweep shapes per stage.
    let mut shapes = Vec::new();
    for warps in [1u32, 2, 4, 8] {
        for splits in [1u32, 2, 3, 4, 6, 8] {
            for unroll in [4u32, 8] {
                shapes.push(KernelConfig {
                    warps,
                    splits,
                    unroll,
                    rows: 1,
                });
            }
        }
    }
    let mut sweep_log = String::new();
    json.push_str(",\"ffn\":[");
    if args.iter().any(|a| a == "--quick") {
        // A/B of whole-FFN shapes (k-major packing, 32-row W2), no sweep:
        // "r1" = the shapes before v8 (one row unit per warp at 9-16 tokens).
        let sm = info.sm_count;
        let gu = |w, s, u, r| KernelConfig {
            warps: w,
            splits: s,
            unroll: u,
            rows: r,
        };
        let r1 = DecodeConfig {
            gate_up_wide: auto.gate_up,
            down_wide: KernelConfig::auto(sm, M / 32, MH / 16, 8, 4, 14),
            ..auto
        };
        let with = |g: KernelConfig, d: KernelConfig| DecodeConfig {
            gate_up_wide: g,
            down_wide: d,
            ..auto
        };
        let cands = [
            ("r1", r1),
            ("auto", auto),
            ("gu_r2", with(auto.gate_up_wide, r1.down_wide)),
            ("dn_r2", with(r1.gate_up_wide, auto.down_wide)),
            ("gu3", with(gu(3, 1, 2, 2), auto.down_wide)),
            ("gu2s2", with(gu(2, 2, 2, 2), auto.down_wide)),
            ("dn8s2", with(auto.gate_up_wide, gu(8, 2, 2, 2))),
            ("dn4s8", with(auto.gate_up_wide, gu(4, 8, 2, 2))),
            ("dn8s3", with(auto.gate_up_wide, gu(8, 3, 2, 2))),
            ("dn6s4", with(auto.gate_up_wide, gu(6, 4, 2, 2))),
            ("dn8s5", with(auto.gate_up_wide, gu(8, 5, 2, 2))),
            ("r1_again", r1),
            ("auto_again", auto),
        ];
        for (ti, &t) in tokens.iter().enumerate() {
            let mut row = String::new();
            // Each kernel alone (no PDL overlap), k-major experts.
            let stages = [
                (Stage::GateUp, r1.gate_up_wide),
                (Stage::GateUp, auto.gate_up_wide),
                (Stage::GateUp, gu(3, 1, 2, 2)),
                (Stage::Down, r1.down_wide),
                (Stage::Down, auto.down_wide),
                (Stage::Down, gu(8, 3, 2, 2)),
            ];
            for (stage, k) in stages.iter().filter(|_| t > 8) {
                let ms = time(&gpu, iters, |i| {
                    ffn_stage(
                        &gpu,
                        &experts_km[i % 4],
                        &x,
                        t,
                        &mut out,
                        &mut ws,
                        k,
                        *stage,
                    )
                })?;
                println!("stage T={t:>2} {stage:?} {k:?}: {:.1} us", ms * 1e3);
            }
            // 1-8 tokens: the same question for the narrow shapes.
            let narrow = |g: KernelConfig, d: KernelConfig| DecodeConfig {
                gate_up: g,
                down: d,
                ..auto
            };
            let cands_narrow = [
                ("auto", auto),
                ("n_gu_r2", narrow(gu(4, 1, 2, 2), auto.down)),
                ("n_gu3_r2", narrow(gu(3, 1, 2, 2), auto.down)),
                ("n_dn_r2s2", narrow(auto.gate_up, gu(8, 2, 2, 2))),
                ("n_dn_r2s4", narrow(auto.gate_up, gu(8, 4, 2, 2))),
                ("n_both", narrow(gu(4, 1, 2, 2), gu(8, 2, 2, 2))),
                ("auto_again", auto),
            ];
            let list: &[(&str, DecodeConfig)] = if t > 8 { &cands } else { &cands_narrow };
            for (name, cfg) in list {
                let ms = time(&gpu, iters, |i| {
                    ffn_decode(&gpu, &experts_km[i % 4], &x, t, &mut out, &mut ws, cfg)
                })?;
                let tbps = wbytes / (ms as f64 * 1e-3) / 1e12;
                let (g, d) = if t > 8 {
                    (cfg.gate_up_wide, cfg.down_wide)
                } else {
                    (cfg.gate_up, cfg.down)
                };
                println!(
                    "quick T={t:>2} {name:>10}: {:8.1} us  {tbps:.3} TB/s  {:.1}% of copy  {g:?} / {d:?}",
                    ms * 1e3,
                    100.0 * tbps / copy_tbps,
                );
                write!(row, "\"{name}_us\":{:.2},", ms * 1e3).unwrap();
            }
            write!(
                json,
                "{}{{\"tokens\":{t},{}}}",
                if ti > 0 { "," } else { "" },
                row.trim_end_matches(',')
            )
            .unwrap();
        }
        json.push_str("]}");
        if let Some(p) = get("--json") {
            std::fs::write(p, &json).expect("write json");
        }
        println!("{json}");
        return Ok(());
    }
    for (ti, &t) in tokens.iter().enumerate() {
        let mut best = [
            (f32::MAX, auto.gate_up),
            (f32::MAX, auto.down),
            (f32::MAX, auto16.down),
            (f32::MAX, auto.gate_up),
            (f32::MAX, auto.down),
        ];
        for (si, (stage, set)) in [
            (Stage::GateUp, &experts),
            (Stage::Down, &experts),
            (Stage::Down, &experts16),
            (Stage::GateUp, &experts_km),
            (Stage::Down, &experts_km),
        ]
        .into_iter()
        .enumerate()
        {
            let mut line = String::new();
            for k in &shapes {
                let ms = time(&gpu, iters.min(15), |i| {
                    ffn_stage(
                        &gpu,
                        &set[i % 4],
                        &x,
                        t.min(16),
                        &mut out,
                        &mut ws,
                        k,
                        stage,
                    )
                })?;
                if ms < best[si].0 {
                    best[si] = (ms, *k);
                }
                write!(
                    line,
                    " {}/{}/{}:{:.1}",
                    k.warps,
                    k.splits,
                    k.unroll,
                    ms * 1e3
                )
                .unwrap();
            }
            let frac = if si == 0 || si == 3 {
                2.0 / 3.0
            } else {
                1.0 / 3.0
            };
            let msg = format!(
                "T={t:>2} {stage:?}{} best {:?} {:.1} us = {:.3} TB/s   sweep(w/s/u:us){line}",
                ["", "", "16", "km", "km"][si],
                best[si].1,
                best[si].0 * 1e3,
                wbytes * frac / (best[si].0 as f64 * 1e-3) / 1e12
            );
            println!("{}", msg.split("   sweep").next().unwrap_or(""));
            sweep_log.push_str(&msg);
            sweep_log.push('\n');
        }
        let tuned = DecodeConfig {
            gate_up: best[0].1,
            down: best[1].1,
            gate_up_wide: best[0].1,
            down_wide: best[1].1,
        };
        let mut row = String::new();
        let tuned16 = DecodeConfig {
            gate_up: best[0].1,
            down: best[2].1,
            gate_up_wide: best[0].1,
            down_wide: best[2].1,
        };
        for (name, cfg, set) in [
            ("auto", auto, &experts),
            ("tuned", tuned, &experts),
            ("auto16", auto16, &experts16),
            ("tuned16", tuned16, &experts16),
            ("auto_km", auto, &experts_km),
            (
                "tuned_km",
                DecodeConfig {
                    gate_up: best[3].1,
                    down: best[4].1,
                    gate_up_wide: best[3].1,
                    down_wide: best[4].1,
                },
                &experts_km,
            ),
        ] {
            let ms = time(&gpu, iters, |i| {
                ffn_decode(&gpu, &set[i % 4], &x, t, &mut out, &mut ws, &cfg)
            })?;
            let tbps = wbytes / (ms as f64 * 1e-3) / 1e12;
            println!(
                "expert FFN T={t:>2} {name:>5}: {:8.1} us  {tbps:.3} TB/s  {:.1}% of copy  cfg {cfg:?}",
                ms * 1e3,
                100.0 * tbps / copy_tbps
            );
            write!(
                row,
                "\"{name}_us\":{:.2},\"{name}_TBps\":{tbps:.4},",
                ms * 1e3
            )
            .unwrap();
        }
        // Back to back: 20 calls between two events (launches overlap
        // through programmatic dependent launch), per call.
        let b2b = time(&gpu, 9, |i| {
            for j in 0..20 {
                ffn_decode(&gpu, &experts[(i + j) % 4], &x, t, &mut out, &mut ws, &auto)?;
            }
            Ok(())
        })? / 20.0;
        println!(
            "expert FFN T={t:>2}  b2b : {:8.1} us  {:.3} TB/s (auto, 20 calls back to back)",
            b2b * 1e3,
            wbytes / (b2b as f64 * 1e-3) / 1e12
        );
        write!(row, "\"b2b_us\":{:.2},", b2b * 1e3).unwrap();
        write!(
            json,
            "{}{{\"tokens\":{t},{row}\"gate_up\":[{},{},{}],\"down\":[{},{},{}]}}",
            if ti > 0 { "," } else { "" },
            tuned.gate_up.warps,
            tuned.gate_up.splits,
            tuned.gate_up.unroll,
            tuned.down.warps,
            tuned.down.splits,
            tuned.down.unroll
        )
        .unwrap();
    }
    json.push_str("]}");
    if let Some(p) = get("--sweep") {
        std::fs::write(p, &sweep_log).expect("write sweep log");
    }
    if let Some(p) = get("--json") {
        std::fs::write(p, &json).expect("write json");
    }
    println!("{json}");
    Ok(())
}
