//! The `wdmoe select` line protocol (`wdmoe_sim::select_cli`) on any bytes:
//! `process_line` never panics and answers one line of JSON — a decision
//! that satisfies docs/SPEC.md's invariants and equals wdmoe-core's policy on the
//! same request, or `{"error":"…"}`; `run` over many lines answers every
//! line (blank lines with an error) and counts the failures.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wdmoe_core::select::{select, Policy};
use wdmoe_sim::select_cli::{process_line, run};

/// The request as wdmoe-core sees it, when the line is one.
fn request(line: &str) -> Option<(Vec<f64>, Vec<f64>, usize, f64, usize)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let o = v.as_object()?;
    let logits: Vec<f64> = o
        .get("logits")?
        .as_array()?
        .iter()
        .map(Value::as_f64)
        .collect::<Option<_>>()?;
    let lat: Vec<f64> = o
        .get("latency_s")?
        .as_array()?
        .iter()
        .map(|x| match x {
            Value::String(_) => Some(f64::INFINITY),
            x => x.as_f64(),
        })
        .collect::<Option<_>>()?;
    let k = o.get("k")?.as_u64()? as usize;
    let theta = o.get("theta")?.as_f64()?;
    let max_drops = o.get("max_drops").map_or(Some(1), Value::as_u64)? as usize;
    Some((logits, lat, k, theta, max_drops))
}

fn check_line(line: &str) -> bool {
    let out = process_line(line);
    let text = match &out {
        Ok(s) | Err(s) => s,
    };
    assert!(!text.contains('\n'), "answer spans lines: {text:?}");
    let v: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}"));
    let o = v.as_object().expect("answer is an object");
    match out {
        Err(_) => {
            assert_eq!(o.len(), 1, "{text}");
            assert!(o["error"].is_string(), "{text}");
            false
        }
        Ok(_) => {
            let experts: Vec<usize> = o["experts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            let weights: Vec<f64> = o["weights"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let dropped: Vec<usize> = o["dropped"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            assert!(
                !experts.is_empty() && experts.len() == weights.len(),
                "{text}"
            );
            let sum: f64 = weights.iter().sum();
            assert!(
                (sum - 1.0).abs() < 1e-9 && weights.iter().all(|&w| w >= 0.0),
                "{text}"
            );
            if let Some(k) = o["kappa"].as_f64() {
                assert!((0.0..=0.5).contains(&k), "{text}");
            } else {
                assert!(o["kappa"].is_null(), "{text}");
            }
            // Differential: the same request through wdmoe-core directly.
            let (z, t, k, theta, md) = request(line).expect("an accepted line is a request");
            let policy = Policy::new(k, theta, md).expect("accepted policy");
            let s = select::<f64, 1024>(&policy, &z, &t).expect("accepted decision");
            assert_eq!(s.experts(), &experts[..], "{line} -> {text}");
            assert_eq!(s.dropped(), &dropped[..], "{line} -> {text}");
            assert_eq!(o["fallback"].as_bool(), Some(s.fallback()), "{text}");
            // serde_json's default float parser (no `float_roundtrip`) may be
            // one ulp off when reading the printed weights back.
            assert!(
                s.weights()
                    .iter()
                    .zip(&weights)
                    .all(|(a, b)| (a - b).abs() <= 4.0 * f64::EPSILON * a.abs().max(b.abs())),
                "{text}"
            );
            true
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Every line on its own...
    let mut expected = Vec::new();
    let mut raws: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    // A final newline ends the last line; it does not start another.
    if raws.last().is_some_and(|l| l.is_empty()) {
        raws.pop();
    }
    for raw in raws {
        match std::str::from_utf8(raw) {
            Ok(s) if s.len() > wdmoe_sim::select_cli::MAX_LINE_BYTES => expected.push(false),
            Ok(s) if s.trim().is_empty() => expected.push(false),
            Ok(s) => expected.push(check_line(s.trim())),
            Err(_) => expected.push(false),
        }
    }
    // ...and the whole input through the command's loop.
    let mut out = Vec::new();
    let failed = run(data, &mut out).expect("writing to a Vec cannot fail");
    let text = String::from_utf8(out).expect("answers are UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), expected.len(), "one answer per line");
    assert_eq!(failed as usize, expected.iter().filter(|ok| !**ok).count());
    for (line, ok) in lines.iter().zip(&expected) {
        assert_eq!(!line.starts_with(r#"{"error":"#), *ok, "{line}");
    }
});
