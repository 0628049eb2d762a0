//! Inputs the fuzzers (`fuzz/`, issue 5) found in the simulator's parsers,
//! kept as ordinary tests.

use wdmoe_core::select::{select, Policy};
use wdmoe_sim::select_cli::process_line;

/// The fuzz seed `experts_256` (and the mutation of it that found the
/// issue below): 256 experts, top-8, repeated drops. Logits are printed with
/// Rust's shortest round-trip formatting, so some read `1.1400000000000001`.
fn line_256() -> (String, Vec<f64>, Vec<f64>) {
    let z: Vec<f64> = (0..256)
        .map(|i| ((i * 37) % 512) as f64 / 100.0 - 2.56)
        .collect();
    let t: Vec<f64> = (0..256)
        .map(|i| {
            if i % 29 == 0 {
                f64::INFINITY
            } else {
                (1 + (i * 13) % 97) as f64 * 1e-4
            }
        })
        .collect();
    let zs: Vec<String> = z.iter().map(|v| format!("{v}")).collect();
    let ts: Vec<String> = t
        .iter()
        .map(|v| {
            if v.is_finite() {
                format!("{v}")
            } else {
                "\"inf\"".into()
            }
        })
        .collect();
    let line = format!(
        r#"{{"logits":[{}],"latency_s":[{}],"k":8,"theta":0.3,"max_drops":4}}"#,
        zs.join(","),
        ts.join(",")
    );
    (line, z, t)
}

/// The weights printed by `process_line`, read back exactly (`str::parse`).
fn printed_weights(out: &str) -> Vec<f64> {
    let w = out
        .split("\"weights\":[")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap();
    w.split(',').map(|x| x.parse().unwrap()).collect()
}

fn printed_experts(out: &str) -> Vec<usize> {
    let e = out
        .split("\"experts\":[")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap();
    e.split(',').map(|x| x.parse().unwrap()).collect()
}

/// select_jsonl: a 256-expert line decides like wdmoe-core on the same
/// numbers (experts exactly, weights to a few ulp).
#[test]
fn select_line_with_256_experts_matches_the_core() {
    let (line, z, t) = line_256();
    let out = process_line(&line).unwrap();
    let s = select::<f64, 256>(&Policy::new(8, 0.3, 4).unwrap(), &z, &t).unwrap();
    assert_eq!(printed_experts(&out), s.experts());
    for (a, b) in printed_weights(&out).iter().zip(s.weights()) {
        assert!((a - b).abs() <= 4.0 * f64::EPSILON * b, "{a} vs {b}");
    }
}

/// select_jsonl (fuzz finding, fixed): serde_json's default float parser is
/// not correctly rounded: it read `1.1400000000000001` as `1.14`, the
/// neighbouring double, so `wdmoe select` decided on numbers a unit in the
/// last place away from the ones given. wdmoe-sim now enables serde_json's
/// `float_roundtrip` feature; this test keeps it that way.
#[test]
fn select_line_reads_numbers_exactly() {
    let (line, z, t) = line_256();
    assert!(line.contains("1.1400000000000001"));
    let out = process_line(&line).unwrap();
    let s = select::<f64, 256>(&Policy::new(8, 0.3, 4).unwrap(), &z, &t).unwrap();
    assert_eq!(printed_weights(&out), s.weights());
}
