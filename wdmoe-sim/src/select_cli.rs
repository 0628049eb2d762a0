//! The `wdmoe select` line protocol: one routing decision per JSON line.
//!
//! Input line (keys other than these are an error):
//! `{"logits":\[…\], "latency_s":\[…\], "k":2, "theta":0.2, "max_drops":1}` —
//! `logits`: router logits (finite numbers), `latency_s`: each device's
//! latency \[s\] (> 0), or the string `"inf"` for an unreachable device,
//! `k` ≥ 1, `theta` ∈ \[0, 0.5\], `max_drops` ≥ 0 (default 1); `"inf"` may
//! also be spelled `"+inf"` or `"infinity"`, in any case. Up to
//! [`crate::scenario::MAX_EXPERTS`] experts.
//!
//! Output line: `{"experts":\[…\],"weights":\[…\],"kappa":0.14|null,"dropped":\[…\],"fallback":false}`
//! or `{"error":"…"}`. [`process_line`] never panics.
//!
//! ```
//! use wdmoe_sim::select_cli::process_line;
//! let out = process_line(r#"{"logits":[0.5,1.0,-2.0,0.0],"latency_s":[0.01,0.1,0.01,"inf"],"k":2,"theta":0.2}"#);
//! assert_eq!(out, Ok(r#"{"experts":[0],"weights":[1.0],"kappa":0.14153667448865265,"dropped":[1],"fallback":false}"#.to_string()));
//! assert!(process_line("{}").unwrap_err().starts_with(r#"{"error":"#));
//! ```

use crate::policy::{select_dyn, Decision};
use crate::scenario::MAX_EXPERTS;
use serde::{Deserialize, Serialize};
use wdmoe_core::select::Policy;

#[derive(Deserialize)]
#[serde(untagged)]
enum Latency {
    Num(f64),
    Str(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    logits: Vec<f64>,
    latency_s: Vec<Latency>,
    k: usize,
    theta: f64,
    #[serde(default = "one")]
    max_drops: usize,
}

fn one() -> usize {
    1
}

#[derive(Serialize)]
struct Response<'a> {
    experts: &'a [usize],
    weights: &'a [f64],
    kappa: Option<f64>,
    dropped: &'a [usize],
    fallback: bool,
}

#[derive(Serialize)]
struct ErrorResponse {
    error: String,
}

fn error_line(msg: String) -> String {
    serde_json::to_string(&ErrorResponse { error: msg })
        .unwrap_or_else(|_| r#"{"error":"unprintable error"}"#.to_string())
}

/// Decides one JSON line. `Ok` holds the decision line, `Err` the
/// `{"error":…}` line; both are one line of JSON without a newline.
pub fn process_line(line: &str) -> Result<String, String> {
    decide(line).map_err(error_line)
}

fn decide(line: &str) -> Result<String, String> {
    let req: Request = serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))?;
    if req.logits.len() > MAX_EXPERTS {
        return Err(format!(
            "{} experts is more than the supported {MAX_EXPERTS}",
            req.logits.len()
        ));
    }
    let mut lat = Vec::with_capacity(req.latency_s.len());
    for (i, l) in req.latency_s.iter().enumerate() {
        lat.push(match l {
            Latency::Num(v) => *v,
            Latency::Str(s)
                if ["inf", "+inf", "infinity", "+infinity"]
                    .iter()
                    .any(|w| s.eq_ignore_ascii_case(w)) =>
            {
                f64::INFINITY
            }
            Latency::Str(s) => {
                let shown: String = s.chars().take(20).collect();
                return Err(format!(
                    "latency_s[{i}]: \"{shown}\" is not a number nor \"inf\""
                ));
            }
        });
    }
    if lat.len() != req.logits.len() {
        return Err(format!(
            "logits has {} entries but latency_s has {}",
            req.logits.len(),
            lat.len()
        ));
    }
    let policy = Policy::new(req.k, req.theta, req.max_drops).map_err(|e| e.to_string())?;
    let mut d = Decision::default();
    select_dyn(&policy, &req.logits, &lat, &mut d).map_err(|e| e.to_string())?;
    serde_json::to_string(&Response {
        experts: &d.experts,
        weights: &d.weights,
        kappa: d.kappa,
        dropped: &d.dropped,
        fallback: d.fallback,
    })
    .map_err(|e| format!("cannot encode the result: {e}"))
}

/// Runs the protocol over `input`, writing one line per non-blank input line
/// to `output`. Returns the number of lines that failed. Blank lines are
/// skipped; a line that is not UTF-8 is reported as an error line.
pub fn run<R: std::io::BufRead, W: std::io::Write>(
    mut input: R,
    mut output: W,
) -> std::io::Result<u64> {
    let mut failed = 0;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        let line = match std::str::from_utf8(&buf) {
            Ok(s) => s.trim(),
            Err(_) => {
                failed += 1;
                writeln!(output, "{}", error_line("line is not valid UTF-8".into()))?;
                continue;
            }
        };
        if line.is_empty() {
            continue;
        }
        match process_line(line) {
            Ok(s) => writeln!(output, "{s}")?,
            Err(s) => {
                failed += 1;
                writeln!(output, "{s}")?;
            }
        }
    }
    output.flush()?;
    Ok(failed)
}
