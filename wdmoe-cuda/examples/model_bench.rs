//! Times the whole model on one GPU (`GpuModel`, random fp16 weights at
//! Mixtral 8x7B's shapes or fewer layers): prefill of each prompt length
//! (one warm-up, then the median of `--iters` runs, wall and GPU time) and
//! greedy decode after a `--decode-prompt` (128) token prompt (ms per
//! token; also with the device plans checked after each token, with CUDA
//! events around each MoE step, and with one launch pair per plan slot, for
//! comparison), against two
//! floors measured in the same
//! call: the weight bytes read once at the read rate of a 2 GiB probe, and
//! the FLOPs (projections, causal attention, the experts the tokens select,
//! the router, lm_head of the last position). Run beside
//! mixtral_model_baseline.py in the same call (wdmoe-cuda/run-gpu-model.sh
//! bench); HF and cuBLAS figures come from there.
//!
//!   model_bench [--layers 32] [--prompts 128,2048] [--iters 3] [--decode 32]
//!               [--chunk 2048] [--json PATH]
//!
//! `WDMOE_ROWS_ALL=1` also prints every layer's rows per expert of each
//! prompt's last forward (the tile rules' input).

use std::time::Instant;

use wdmoe_core::select::Policy;
use wdmoe_cuda::model::{ExpertLayout, GpuModel, ModelOptions, ModelShape, Output};
use wdmoe_cuda::{elapsed_ms, f16, Gpu, Result};

mod common;
use common::{arg, arg_list};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| arg(&args, k);
    let num = |k: &str, d: usize| get(k).map_or(d, |v| v.parse().expect("a number"));
    let prompts = arg_list(&args, "--prompts", "128,2048");
    let iters = num("--iters", 3).max(1);
    let decode = num("--decode", 32);
    // Decode starts after a prompt of this many tokens (128: as the HF
    // baseline's decode does).
    let decode_prompt = num("--decode-prompt", 128).max(1);
    let shape = ModelShape {
        layers: num("--layers", 32),
        ..ModelShape::mixtral_8x7b()
    };
    let longest = prompts
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(decode_prompt);
    let opts = ModelOptions {
        max_seq: longest + decode + 1,
        layout: ExpertLayout::DecodeOnly,
        prefill_chunk: num("--chunk", longest),
    };
    let gpu = std::sync::Arc::new(Gpu::new(0)?);
    // Read rate of this call: a 2 GiB probe, median of 5.
    let rate = {
        let buf = gpu.alloc::<f16>(1 << 30)?;
        let mut scratch = gpu.alloc::<f32>(1 << 16)?;
        let mut v = Vec::new();
        for _ in 0..6 {
            let s = gpu.record()?;
            gpu.read_probe(&buf, &mut scratch)?;
            let e = gpu.record()?;
            v.push(elapsed_ms(&s, &e)? as f64);
        }
        v.sort_by(f64::total_cmp);
        (2usize << 30) as f64 / (v[3] * 1e-3)
    };
    let t0 = Instant::now();
    let mut model = GpuModel::random(gpu.clone(), shape, opts, 7, &mut |_, _| {})?;
    eprintln!(
        "{}: {} layers built in {:.1} s; read rate {:.2} TB/s; {:.1} GB in use",
        gpu.info().name,
        shape.layers,
        t0.elapsed().as_secs_f64(),
        rate / 1e12,
        model.memory_used_bytes()?.0 as f64 / 1e9
    );
    let e = shape.experts;
    let policy = Policy::new(2, 0.0, 1).expect("top-2");
    let (m, mh, l) = (
        shape.hidden as f64,
        shape.intermediate as f64,
        shape.layers as f64,
    );
    let hd = (shape.heads * shape.head_dim) as f64;
    let mut rows = Vec::new();
    let mut rng = 0x2545F4914F6CDD1Du64;
    for &t in &prompts {
        let tokens: Vec<u32> = (0..t)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % shape.vocab as u64) as u32
            })
            .collect();
        let lat = vec![1.0; t * shape.layers * e];
        let mut wall = Vec::new();
        let mut dev = Vec::new();
        let mut check = Vec::new();
        let mut enq = Vec::new();
        // Rows per expert (token, expert pairs) of each layer, of the last
        // forward.
        let mut counts: Vec<Vec<usize>> = Vec::new();
        for i in 0..=iters {
            model.truncate(0);
            let s = Instant::now();
            let out = model.forward(&tokens, Output::LastArgmax, &policy, &lat)?;
            if i > 0 {
                wall.push(s.elapsed().as_secs_f64());
                dev.push(out.gpu_time_s);
                check.push(out.route_check_s);
                enq.push(out.enqueue_s);
            }
            if i == iters {
                counts = out
                    .layers
                    .iter()
                    .map(|r| {
                        let mut c = vec![0usize; e];
                        for sel in &r.selections {
                            for &q in sel.experts() {
                                c[q] += 1;
                            }
                        }
                        c
                    })
                    .collect();
            }
        }
        // Experts with at least one token, per layer (read once each).
        let experts_read = counts
            .iter()
            .map(|c| c.iter().filter(|&&n| n > 0).count() as f64)
            .sum::<f64>()
            / l;
        if !counts.is_empty() {
            // What the grouped GEMMs' token tiles are cut from.
            let (lo, hi) = counts
                .iter()
                .flatten()
                .fold((usize::MAX, 0), |(a, b), &c| (a.min(c), b.max(c)));
            println!("ROWS prefill {t} tokens: rows per expert {lo}..{hi}; layers 0, 1, 15, last: {:?} {:?} {:?} {:?}",
                counts[0], counts[1.min(counts.len() - 1)], counts[15.min(counts.len() - 1)], counts[counts.len() - 1]);
            // (every layer's, for the tile rules' column counts)
            if std::env::var_os("WDMOE_ROWS_ALL").is_some() {
                println!("ROWS_ALL prefill {t} tokens: {counts:?}");
            }
        }
        wall.sort_by(f64::total_cmp);
        dev.sort_by(f64::total_cmp);
        check.sort_by(f64::total_cmp);
        enq.sort_by(f64::total_cmp);
        let q = enq[enq.len() / 2];
        let (w, d, c) = (
            wall[wall.len() / 2],
            dev[dev.len() / 2],
            check[check.len() / 2],
        );
        let tf = t as f64;
        let flops = l
            * (2.0 * tf * (shape.qkv_width() as f64 * m + m * hd)
                + 2.0 * hd * tf * tf
                + 2.0 * tf * 2.0 * 3.0 * m * mh
                + 2.0 * tf * m * e as f64)
            + 2.0 * m * shape.vocab as f64;
        let bytes = shape.decode_floor_bytes(experts_read);
        let floor = bytes / rate;
        println!(
            "MODEL prefill {t} tokens: wall {:.2} ms, GPU {:.2} ms, host: checks {:.2} ms, enqueue {:.2} ms; read floor {:.2} ms ({:.2} experts/layer read) -> GPU {:.2}x the floor; {:.0} TFLOP/s",
            w * 1e3,
            d * 1e3,
            c * 1e3,
            q * 1e3,
            floor * 1e3,
            experts_read,
            d / floor,
            flops / d / 1e12
        );
        rows.push(format!(
            "{{\"prompt\":{t},\"wall_ms\":{:.3},\"gpu_ms\":{:.3},\"floor_ms\":{:.3},\"tflops\":{:.1}}}",
            w * 1e3,
            d * 1e3,
            floor * 1e3,
            flops / d / 1e12
        ));
    }
    if decode > 1 {
        // The default (`decode_greedy`: the next step enqueued before this
        // one completes), then comparisons in the same call, each changing
        // one thing: one `forward` call per token (no step ahead, as before
        // run A2); each layer's device plan checked after the whole token
        // instead of two layers after its enqueue; CUDA events around each
        // MoE step (as before run Z1); each plan slot in its own two
        // launches.
        // (name, pipelined, overlapped checks, MoE step events, merged slots)
        let variants: [(&str, bool, bool, bool, bool); 5] = [
            ("default", true, true, false, true),
            ("one forward call per token", false, true, false, true),
            ("checks after the token", true, false, false, true),
            ("MoE step events", true, true, true, true),
            ("slots one by one", true, true, false, false),
        ];
        let floor = shape.decode_floor_bytes(2.0) / rate;
        for (name, pipelined, overlap, events, merge) in variants {
            model.set_overlap_checks(overlap);
            model.set_moe_timing(events);
            model.set_merge_slots(merge);
            model.truncate(0);
            let lat = vec![1.0; shape.layers * e];
            let prompt: Vec<u32> = (1..=decode_prompt as u32).collect();
            let plat = vec![1.0; prompt.len() * shape.layers * e];
            let out = model.forward(&prompt, Output::LastArgmax, &policy, &plat)?;
            let mut id = out.argmax.unwrap_or(0);
            let (mut wall, mut dev) = (0.0, 0.0);
            let mut fixed = |_: usize, _: usize, out: &mut [f64]| {
                out.fill(1.0);
                Ok(())
            };
            for i in 0..decode {
                let s = Instant::now();
                let out = if pipelined {
                    model.decode_greedy(id, &policy, &mut fixed)?
                } else {
                    model.forward(&[id], Output::LastArgmax, &policy, &lat)?
                };
                if i > 0 {
                    wall += s.elapsed().as_secs_f64();
                    dev += out.gpu_time_s;
                }
                id = out.argmax.unwrap_or(0);
            }
            let n = (decode - 1) as f64;
            println!(
                "MODEL decode ({name}): {:.3} ms/token wall, {:.3} ms GPU; floor {:.3} ms -> GPU {:.2}x, wall {:.2}x",
                wall / n * 1e3,
                dev / n * 1e3,
                floor * 1e3,
                dev / n / floor,
                wall / n / floor
            );
            rows.push(format!(
                "{{\"decode\":\"{name}\",\"decode_wall_ms\":{:.4},\"decode_gpu_ms\":{:.4},\"decode_floor_ms\":{:.4}}}",
                wall / n * 1e3,
                dev / n * 1e3,
                floor * 1e3
            ));
        }
        model.set_overlap_checks(true);
        model.set_moe_timing(false);
        model.set_merge_slots(true);
    }
    if let Some(p) = get("--json") {
        let j = format!(
            "{{\"device\":\"{}\",\"layers\":{},\"read_TBps\":{:.3},\"rows\":[{}]}}\n",
            gpu.info().name,
            shape.layers,
            rate / 1e12,
            rows.join(",")
        );
        std::fs::write(&p, j).map_err(|err| wdmoe_cuda::Error::Unsupported {
            op: "model_bench",
            detail: format!("writing {p}: {err}"),
        })?;
    }
    Ok(())
}
