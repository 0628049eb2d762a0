//! The `wdmoe select` line protocol: one routing decision per JSON line.
//!
//! The full protocol, as printed by `wdmoe select --help`, is [`HELP`].
//! In short, an input line (keys other than these are an error):
//! `{"logits":\[…\], "latency_s":\[…\], "k":2, "theta":0.2, "max_drops":1}` —
//! `logits`: router logits (finite numbers), `latency_s`: each device's
//! latency \[s\] (> 0), or the string `"inf"` for an unreachable device,
//! `k` ≥ 1, `theta` ∈ \[0, 0.5\], `max_drops` ≥ 0 (default 1); `"inf"` may
//! also be spelled `"+inf"` or `"infinity"`, in any case. Up to
//! [`crate::scenario::MAX_EXPERTS`] experts, lines up to
//! [`MAX_LINE_BYTES`] bytes.
//!
//! Output: exactly one line per input line, in order, blank lines included:
//! `{"experts":\[…\],"weights":\[…\],"kappa":0.14|null,"dropped":\[…\],"fallback":false}`
//! or `{"error":"line N: field `k`: …"}`. [`process_line`] never panics.
//!
//! ```
//! use wdmoe_sim::select_cli::process_line;
//! let out = process_line(r#"{"logits":[0.5,1.0,-2.0,0.0],"latency_s":[0.01,0.1,0.01,"inf"],"k":2,"theta":0.2}"#);
//! assert_eq!(out, Ok(r#"{"experts":[0],"weights":[1.0],"kappa":0.14153667448865265,"dropped":[1],"fallback":false}"#.to_string()));
//! assert!(process_line("{}").unwrap_err().starts_with(r#"{"error":"field `logits`"#));
//! ```

use crate::policy::{select_dyn, Decision};
use crate::scenario::MAX_EXPERTS;
use serde::Serialize;
use serde_json::{Map, Value};
use std::io::{self, Read, Write};
use wdmoe_core::select::Policy;

/// The longest input line accepted \[bytes\], newline excluded: 1 MiB, room
/// for [`MAX_EXPERTS`] experts with full-precision numbers (~50 kB). A longer
/// line is answered with an error line and skipped without being stored.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The protocol, printed by `wdmoe select --help`.
pub const HELP: &str = "\
The WDMoE selection policy (wdmoe-core) over JSON lines: one request per input
line on stdin, exactly one answer line per input line on stdout, in order.

Request (one JSON object per line; other keys are an error):
  {\"logits\":[0.5,1.0,-2.0,0.0], \"latency_s\":[0.01,0.1,0.01,\"inf\"], \"k\":2, \"theta\":0.2, \"max_drops\":1}
  logits     router logits of every expert, finite numbers (1..=1024 experts)
  latency_s  each expert's device latency [s], > 0, one per logit; the string
             \"inf\" (also \"+inf\", \"infinity\", any case) marks an unreachable device
  k          experts taken by router weight, 1..=number of experts
  theta      WDMoE threshold, in [0, 0.5] (0: plain top-k)
  max_drops  at most this many of the top-k dropped per token (optional, default 1)

Answer:
  {\"experts\":[0],\"weights\":[1.0],\"kappa\":0.1415,\"dropped\":[1],\"fallback\":false}
  experts    the serving experts; weights: their renormalised router weights;
  kappa      the weight-to-latency ratio that decided (null when none did);
  dropped    top-k experts not serving; fallback: true when every top-k device
             was unreachable and the fastest reachable expert serves instead.
  or, for a bad line (blank lines included):
  {\"error\":\"line 3: field `k`: expected an integer >= 0, got -1\"}

Limits: a line longer than 1 MiB is answered with an error and skipped.
Output is buffered and flushed whenever the input has no complete line
waiting, so a program that writes one request and waits gets its answer.
Exit status: 0 when every line was decided, 1 when some line failed, 2 on an
I/O error; a closed stdout ends the command quietly.";

#[derive(Serialize)]
struct Response<'a> {
    experts: &'a [usize],
    weights: &'a [f64],
    kappa: Option<f64>,
    dropped: &'a [usize],
    fallback: bool,
}

#[derive(Serialize)]
struct ErrorResponse<'a> {
    error: &'a str,
}

fn error_line(msg: &str) -> String {
    serde_json::to_string(&ErrorResponse { error: msg })
        .unwrap_or_else(|_| r#"{"error":"unprintable error"}"#.to_string())
}

/// Decides one JSON line. `Ok` holds the decision line, `Err` the
/// `{"error":…}` line; both are one line of JSON without a newline.
pub fn process_line(line: &str) -> Result<String, String> {
    decide(line).map_err(|e| error_line(&e))
}

/// Like [`process_line`], the error naming the input line number `line_no`
/// (1-based).
pub fn process_numbered_line(line: &str, line_no: u64) -> Result<String, String> {
    decide(line).map_err(|e| error_line(&format!("line {line_no}: {e}")))
}

const KEYS: [&str; 5] = ["logits", "latency_s", "k", "theta", "max_drops"];

fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 24 {
        format!("{}…", s.chars().take(24).collect::<String>())
    } else {
        s
    }
}

fn array<'a>(o: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], String> {
    match o.get(key) {
        None => Err(format!("field `{key}`: missing")),
        Some(Value::Array(a)) if a.len() > MAX_EXPERTS => Err(format!(
            "field `{key}`: {} experts is more than the supported {MAX_EXPERTS}",
            a.len()
        )),
        Some(Value::Array(a)) => Ok(a),
        Some(v) => Err(format!(
            "field `{key}`: expected an array, got {}",
            shown(v)
        )),
    }
}

fn integer(o: &Map<String, Value>, key: &str, default: Option<usize>) -> Result<usize, String> {
    match (o.get(key), default) {
        (None, Some(d)) => Ok(d),
        (None, None) => Err(format!("field `{key}`: missing")),
        (Some(v), _) => v
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| format!("field `{key}`: expected an integer >= 0, got {}", shown(v))),
    }
}

fn decide(line: &str) -> Result<String, String> {
    if line.trim().is_empty() {
        return Err("blank line: expected a JSON request".into());
    }
    let v: Value = serde_json::from_str(line).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        format!("not valid JSON at column {}: {msg}", e.column())
    })?;
    let Value::Object(o) = v else {
        return Err(format!(
            "expected a JSON object with fields {}, got {}",
            KEYS.join(", "),
            shown(&v)
        ));
    };
    if let Some(k) = o.keys().find(|k| !KEYS.contains(&k.as_str())) {
        let k: String = k.chars().take(24).collect();
        return Err(format!(
            "unknown field `{k}` (expected {})",
            KEYS.join(", ")
        ));
    }
    let mut logits = Vec::new();
    for (i, x) in array(&o, "logits")?.iter().enumerate() {
        match x.as_f64() {
            Some(z) => logits.push(z),
            None => {
                return Err(format!(
                    "field `logits[{i}]`: expected a number, got {}",
                    shown(x)
                ))
            }
        }
    }
    let mut lat = Vec::new();
    for (i, x) in array(&o, "latency_s")?.iter().enumerate() {
        lat.push(match x {
            Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
            Value::String(s)
                if ["inf", "+inf", "infinity", "+infinity"]
                    .iter()
                    .any(|w| s.eq_ignore_ascii_case(w)) =>
            {
                f64::INFINITY
            }
            other => {
                return Err(format!(
                    "field `latency_s[{i}]`: {} is not a number nor \"inf\"",
                    shown(other)
                ))
            }
        });
    }
    let k = integer(&o, "k", None)?;
    let theta = match o.get("theta") {
        None => return Err("field `theta`: missing".into()),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| format!("field `theta`: expected a number, got {}", shown(v)))?,
    };
    let max_drops = integer(&o, "max_drops", Some(1))?;
    if lat.len() != logits.len() {
        return Err(format!(
            "field `latency_s`: {} entries but `logits` has {}",
            lat.len(),
            logits.len()
        ));
    }
    let policy = Policy::new(k, theta, max_drops).map_err(|e| {
        let field = match e {
            wdmoe_core::Error::KOutOfRange => "k",
            wdmoe_core::Error::ThetaOutOfRange | wdmoe_core::Error::NaN(_) => "theta",
            _ => "max_drops",
        };
        format!("field `{field}`: {e}")
    })?;
    let mut d = Decision::default();
    select_dyn(&policy, &logits, &lat, &mut d).map_err(|e| {
        let field = match e {
            wdmoe_core::Error::KOutOfRange => "k",
            wdmoe_core::Error::Empty | wdmoe_core::Error::CapacityExceeded => "logits",
            wdmoe_core::Error::NaN(w) | wdmoe_core::Error::NotFinite(w) if w.contains("logit") => {
                "logits"
            }
            _ => "latency_s",
        };
        format!("field `{field}`: {e}")
    })?;
    serde_json::to_string(&Response {
        experts: &d.experts,
        weights: &d.weights,
        kappa: d.kappa,
        dropped: &d.dropped,
        fallback: d.fallback,
    })
    .map_err(|e| format!("cannot encode the result: {e}"))
}

/// Runs the protocol over `input`, writing exactly one line per input line
/// to `output` (a final line without a newline counts; blank lines get an
/// error line). Returns the number of lines that failed. A line that is not
/// UTF-8 or longer than [`MAX_LINE_BYTES`] is answered with an error line;
/// an over-long line is skipped without being stored. `output` is flushed
/// whenever no complete input line is waiting, so an interactive client
/// gets each answer before it sends the next request.
///
/// An I/O error keeps its kind (a closed output is
/// [`io::ErrorKind::BrokenPipe`]) and says whether reading the input or
/// writing the output failed.
pub fn run<R: Read, W: Write>(input: R, output: W) -> io::Result<u64> {
    run_inner(input, output).map_err(|(what, e)| io::Error::new(e.kind(), format!("{what}: {e}")))
}

fn run_inner<R: Read, W: Write>(
    mut input: R,
    mut output: W,
) -> Result<u64, (&'static str, io::Error)> {
    let w = |e: io::Error| ("cannot write the answers (stdout)", e);
    let mut failed = 0u64;
    let mut line_no = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    // Bytes of the current line dropped because it is too long.
    let mut skipping = false;
    let mut eof = false;
    let mut answer = |line: &[u8], too_long: bool, out: &mut W, failed: &mut u64| {
        line_no += 1;
        let res = if too_long {
            Err(error_line(&format!(
                "line {line_no}: longer than {MAX_LINE_BYTES} bytes, skipped"
            )))
        } else {
            match std::str::from_utf8(line) {
                Ok(s) => process_numbered_line(s.trim(), line_no),
                Err(_) => Err(error_line(&format!("line {line_no}: not valid UTF-8"))),
            }
        };
        match res {
            Ok(s) => writeln!(out, "{s}"),
            Err(s) => {
                *failed += 1;
                writeln!(out, "{s}")
            }
        }
    };
    loop {
        // Answer every complete line in the buffer.
        let mut start = 0;
        while let Some(i) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + i];
            if skipping || line.len() > MAX_LINE_BYTES {
                skipping = false;
                answer(&[], true, &mut output, &mut failed).map_err(w)?;
            } else {
                answer(line, false, &mut output, &mut failed).map_err(w)?;
            }
            start += i + 1;
        }
        buf.drain(..start);
        if !skipping && buf.len() > MAX_LINE_BYTES {
            skipping = true;
        }
        if skipping {
            buf.clear();
        }
        if eof {
            if skipping {
                answer(&[], true, &mut output, &mut failed).map_err(w)?;
            } else if !buf.is_empty() {
                let line = std::mem::take(&mut buf);
                answer(&line, false, &mut output, &mut failed).map_err(w)?;
            }
            break;
        }
        // Nothing complete is waiting: let the client see the answers.
        output.flush().map_err(w)?;
        let n = loop {
            match input.read(&mut chunk) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(("cannot read the requests (stdin)", e)),
            }
        };
        if n == 0 {
            eof = true;
        } else {
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    output.flush().map_err(w)?;
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(input: &[u8]) -> (Vec<String>, u64) {
        let mut out = Vec::new();
        let failed = run(input, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        (text.lines().map(String::from).collect(), failed)
    }

    const GOOD: &str = r#"{"logits":[1,0],"latency_s":[1,1],"k":1,"theta":0}"#;

    #[test]
    fn one_answer_per_line_blank_lines_included() {
        let input = format!("{GOOD}\n\n{GOOD}\n   \n{GOOD}");
        let (lines, failed) = answers(input.as_bytes());
        assert_eq!(lines.len(), 5);
        assert_eq!(failed, 2);
        assert!(lines[1].contains("line 2: blank line"), "{}", lines[1]);
        assert!(lines[3].contains("line 4: blank line"), "{}", lines[3]);
        assert!(lines[4].starts_with(r#"{"experts":[0]"#));
    }

    #[test]
    fn errors_name_the_field_and_line() {
        let input = format!(
            "{GOOD}\n{}\n{}\n{}\n{}\n",
            r#"{"logits":[1,0],"latency_s":[1,1],"k":-1,"theta":0}"#,
            r#"{"logits":[1,"a"],"latency_s":[1,1],"k":1,"theta":0}"#,
            r#"{"logits":[1,0],"latency_s":[1,"x"],"k":1,"theta":0}"#,
            r#"{"logits":[1,0],"latency_s":[1,1],"k":1,"theta":0.9}"#,
        );
        let (lines, failed) = answers(input.as_bytes());
        assert_eq!(failed, 4);
        assert!(lines[1].contains("line 2: field `k`"), "{}", lines[1]);
        assert!(
            lines[2].contains("line 3: field `logits[1]`"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].contains("line 4: field `latency_s[1]`"),
            "{}",
            lines[3]
        );
        assert!(lines[4].contains("line 5: field `theta`"), "{}", lines[4]);
    }

    #[test]
    fn over_long_lines_are_skipped_not_stored() {
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let input = format!("{long}\n{GOOD}\n{long}");
        let (lines, failed) = answers(input.as_bytes());
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(failed, 2);
        assert!(lines[0].contains("line 1: longer than"), "{}", lines[0]);
        assert!(lines[1].starts_with(r#"{"experts""#));
        assert!(lines[2].contains("line 3: longer than"), "{}", lines[2]);
    }
}
