//! Helpers shared by the examples: timing (CUDA events, medians) and
//! command-line flags.
#![allow(dead_code)] // each example uses a part

use wdmoe_cuda::{elapsed_ms, Gpu, Result};

/// Median of `v` (sorted in place; NaN-free by construction: event times).
pub fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median over `iters` runs of `f(i)` timed between two CUDA events, in
/// milliseconds, after 3 warm-up runs.
pub fn time<F: FnMut(usize) -> Result<()>>(gpu: &Gpu, iters: usize, mut f: F) -> Result<f32> {
    for i in 0..3 {
        f(i)?;
    }
    let mut v = Vec::with_capacity(iters.max(1));
    for i in 0..iters.max(1) {
        let s = gpu.record()?;
        f(i)?;
        let e = gpu.record()?;
        v.push(elapsed_ms(&s, &e)?);
    }
    Ok(median(v))
}

/// The value after flag `k` on the command line, if any.
pub fn arg(args: &[String], k: &str) -> Option<String> {
    args.iter()
        .position(|a| a == k)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The comma-separated numbers after flag `k`, else `default`'s.
pub fn arg_list(args: &[String], k: &str, default: &str) -> Vec<usize> {
    arg(args, k)
        .unwrap_or_else(|| default.into())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("a number"))
        .collect()
}
