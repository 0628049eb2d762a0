//! Outputs: the text table, CSV, JSON and an SVG plot (written by hand).
//! Every output states the latency accounting it uses.

use crate::sim::{PolicyRow, RunReport};
use std::fmt::Write as _;

/// The paper's reported latency reductions against Mixtral (θ = 0), for the
/// "paper" column: `Some(text)` for θ = 0.2 and 0.3, the values it reports.
///
/// θ = 0.2: MMLU 25.59 %, PIQA 20.08 %, ARC-e 25.33 %, ARC-c 16.2 %,
/// HumanEval 37.54 %, GSM-8K 30.21 %, BoolQ 21.86 % (mean 25.26 %).
/// θ = 0.3: 1.65× faster on PIQA, i.e. a 39.4 % reduction.
pub fn paper_reduction(theta: f64) -> Option<&'static str> {
    if theta == 0.0 {
        Some("baseline (Mixtral)")
    } else if (theta - 0.2).abs() < 1e-12 {
        Some("16.2–37.5 % (mean 25.3 %)")
    } else if (theta - 0.3).abs() < 1e-12 {
        Some("39.4 % (PIQA, 1.65×)")
    } else if (theta - 0.1).abs() < 1e-12 {
        Some("not reported")
    } else {
        None
    }
}

/// The mean of the paper's seven θ = 0.2 reductions \[%\].
pub const PAPER_MEAN_REDUCTION_THETA_02_PCT: f64 =
    (25.59 + 20.08 + 25.33 + 16.2 + 37.54 + 30.21 + 21.86) / 7.0;

fn paper_cell(r: &PolicyRow) -> &'static str {
    match (r.family.as_str(), r.parameter) {
        ("wdmoe", Some(t)) => paper_reduction(t).unwrap_or(""),
        _ => "",
    }
}

/// The workload in words: `R replications × P prompts × T prompt tokens (+ D decode tokens)`.
pub fn workload(r: &RunReport) -> String {
    format!(
        "{} replication{} × {} prompts × {} prompt tokens{}",
        r.replications,
        if r.replications == 1 { "" } else { "s" },
        r.prompts,
        r.prompt_tokens,
        if r.decode_tokens > 0 {
            format!(" + {} decode tokens", r.decode_tokens)
        } else {
            String::new()
        }
    )
}

/// What the ± of the table covers, in words.
pub fn interval_note(r: &RunReport) -> String {
    if r.interval == "replications" {
        format!(
            "±: 95 % t interval over {} independent replications (every random draw redrawn: router layer structure, channel, fading, outages)",
            r.replications
        )
    } else {
        "±: 95 % interval over the prompts of one replication (token and fading noise only; use --replications R >= 2 for intervals over every random draw)".to_string()
    }
}

/// The device model of a run, in words.
pub fn device_note(r: &RunReport) -> String {
    match r.scenario.model.compute_model {
        crate::device::ComputeModel::Roofline => format!(
            "devices: roofline, expert time for n tokens = max(n·FLOPs / peak, {:.0} MB of weights / memory bandwidth) + link terms",
            crate::device::expert_weight_bytes(&r.scenario) / 1e6
        ),
        crate::device::ComputeModel::Paper => {
            "devices: the paper's eq. (6), expert time = n·FLOPs / C_q (no weight reading) + link terms".to_string()
        }
    }
}

/// The text table. `title` is printed above it, when given.
pub fn table(r: &RunReport, title: Option<&str>) -> String {
    let mut s = String::new();
    if let Some(t) = title {
        let _ = writeln!(s, "{t}");
    }
    let _ = writeln!(
        s,
        "latency accounting: {} | {} | seed {}",
        r.accounting,
        workload(r),
        r.seed
    );
    let _ = writeln!(s, "{}", r.router);
    let _ = writeln!(s, "{}", r.router_summary);
    let decode = r.decode_tokens > 0;
    let mut head = vec!["policy", "mean s", "p50 s", "p95 s", "p99 s"];
    if decode {
        head.extend(["prefill s", "decode s"]);
    }
    head.extend([
        "reduction",
        "experts/tok",
        "drop rate",
        "kept weight",
        "fallbacks",
    ]);
    let paper = r.paper_comparable;
    if paper {
        head.push("paper reduction");
    }
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|x| {
            let mut v = vec![
                x.name.clone(),
                format!("{:.3}", x.mean_s),
                format!("{:.3}", x.p50_s),
                format!("{:.3}", x.p95_s),
                format!("{:.3}", x.p99_s),
            ];
            if decode {
                v.push(format!("{:.3}", x.mean_prefill_s));
                v.push(format!("{:.3}", x.mean_decode_s));
            }
            v.extend([
                if x.reduction_ci95_pct > 0.0 {
                    format!("{:.1} ± {:.1} %", x.reduction_pct, x.reduction_ci95_pct)
                } else {
                    format!("{:.1} %", x.reduction_pct)
                },
                format!("{:.3}", x.experts_per_token),
                format!("{:.1} %", 100.0 * x.drop_rate),
                format!("{:.3}", x.kept_weight),
                x.fallbacks.to_string(),
            ]);
            if paper {
                v.push(paper_cell(x).to_string());
            }
            v
        })
        .collect();
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String], s: &mut String| {
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            let pad = w - c.chars().count();
            if i == 0 || i == cells.len() - 1 {
                let _ = write!(s, "{c}{}", " ".repeat(pad));
            } else {
                let _ = write!(s, "{}{c}", " ".repeat(pad));
            }
            if i + 1 < cells.len() {
                s.push_str("  ");
            }
        }
        let trimmed = s.trim_end().len();
        s.truncate(trimmed);
        s.push('\n');
    };
    let head: Vec<String> = head.into_iter().map(String::from).collect();
    line(&head, &mut s);
    let total: usize = width.iter().sum::<usize>() + 2 * (width.len() - 1);
    let _ = writeln!(s, "{}", "-".repeat(total));
    for row in &rows {
        line(row, &mut s);
    }
    let _ = writeln!(s, "{}", interval_note(r));
    let _ = writeln!(
        s,
        "links below the SNR floor: {:.3} % of device-slots (unreachable for that token)",
        100.0 * r.link_outage_rate
    );
    let _ = writeln!(s, "{}", device_note(r));
    if !r.memory_shortfalls.is_empty() {
        let _ = writeln!(
            s,
            "WARNING: devices that cannot hold their experts (streaming them from storage is not modelled): {}",
            r.memory_shortfalls.join("; ")
        );
    }
    if r.suppressed_outages > 0 {
        let _ = writeln!(
            s,
            "outages: {} slots where every device would have been down kept one up",
            r.suppressed_outages
        );
    }
    s
}

/// CSV with a header line; latencies in seconds, rates as fractions.
pub fn csv(r: &RunReport) -> String {
    let mut s = String::from(
        "policy,family,parameter,accounting,prompts,prompt_tokens,decode_tokens,seed,mean_s,mean_ci95_s,p50_s,p95_s,p99_s,reduction_pct,reduction_ci95_pct,experts_per_token,drop_rate,kept_weight,fallbacks,mean_prefill_s,mean_decode_s,paper_reduction\n",
    );
    let acc = match r.accounting {
        crate::scenario::Accounting::Sequential => "sequential",
        crate::scenario::Accounting::Batched => "batched",
    };
    for x in &r.rows {
        let _ = writeln!(
            s,
            "\"{}\",{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},\"{}\"",
            x.name,
            x.family,
            x.parameter.map_or(String::new(), |p| p.to_string()),
            acc,
            r.prompts,
            r.prompt_tokens,
            r.decode_tokens,
            r.seed,
            x.mean_s,
            x.mean_ci95_s,
            x.p50_s,
            x.p95_s,
            x.p99_s,
            x.reduction_pct,
            x.reduction_ci95_pct,
            x.experts_per_token,
            x.drop_rate,
            x.kept_weight,
            x.fallbacks,
            x.mean_prefill_s,
            x.mean_decode_s,
            if r.paper_comparable {
                paper_cell(x)
            } else {
                ""
            }
        );
    }
    s
}

/// Pretty JSON of the whole report.
pub fn json(r: &RunReport) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The paper's Fig. 3 in shape, for any number of θ values: mean prompt
/// latency against θ (left axis \[s\], points with 95 % interval bars, on a
/// numeric θ axis), the kept router weight (right axis), the baselines
/// (weight-only and channel-only rows) as labelled horizontal lines, and —
/// only beside the paper's setup — the paper's reported reductions.
pub fn svg(r: &RunReport) -> String {
    let rows: Vec<&PolicyRow> = r.rows.iter().filter(|x| x.family == "wdmoe").collect();
    let baselines: Vec<&PolicyRow> = r.rows.iter().filter(|x| x.family != "wdmoe").collect();
    let (w, h) = (980.0, 500.0);
    let (l, rt, t, b) = (80.0, 300.0, 70.0, 100.0);
    let pw = w - l - rt;
    let ph = h - t - b;
    let max_lat = rows
        .iter()
        .chain(&baselines)
        .map(|x| x.mean_s + x.mean_ci95_s)
        .fold(0.0_f64, f64::max)
        .max(1e-12);
    let y_max = nice_ceil(max_lat * 1.05);
    let thetas: Vec<f64> = rows.iter().map(|x| x.parameter.unwrap_or(0.0)).collect();
    let th_lo = thetas
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
    let th_hi = thetas.iter().cloned().fold(0.0_f64, f64::max);
    let th_hi = if th_hi > th_lo { nice_ceil(th_hi) } else { 0.5 };
    let xs = |th: f64| l + pw * (th - th_lo) / (th_hi - th_lo);
    let ys = |v: f64| t + ph - ph * v / y_max;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">WDMoE: mean prompt latency and kept router weight vs threshold θ</text>"#,
        l + pw / 2.0
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="42" text-anchor="middle" fill="#555">{} | {} | seed {}</text>"##,
        l + pw / 2.0,
        esc(&r.accounting.to_string()),
        esc(&workload(r)),
        r.seed
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="58" text-anchor="middle" fill="#555" font-size="11">{}</text>"##,
        l + pw / 2.0,
        esc(&device_note(r))
    );
    // Grid, axes, ticks.
    for i in 0..=5 {
        let v = y_max * i as f64 / 5.0;
        let y = ys(v);
        let _ = writeln!(
            s,
            r##"<line x1="{l}" x2="{x2}" y1="{y}" y2="{y}" stroke="#e5e5e5"/><text x="{tx}" y="{ty}" text-anchor="end">{}</text>"##,
            fmt_tick(v),
            x2 = l + pw,
            tx = l - 6.0,
            ty = y + 4.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{tx}" y="{ty}" fill="#c0392b">{kw:.1}</text>"##,
            tx = l + pw + 6.0,
            ty = y + 4.0,
            kw = i as f64 / 5.0
        );
    }
    let n_xt = 5;
    for i in 0..=n_xt {
        let th = th_lo + (th_hi - th_lo) * i as f64 / n_xt as f64;
        let x = xs(th);
        let _ = writeln!(
            s,
            r##"<line x1="{x}" x2="{x}" y1="{y0}" y2="{y1}" stroke="black"/><text x="{x}" y="{ty}" text-anchor="middle">{}</text>"##,
            fmt_tick(th),
            y0 = t + ph,
            y1 = t + ph + 5.0,
            ty = t + ph + 19.0
        );
    }
    let _ = writeln!(
        s,
        r#"<path d="M{l} {t} V{y0} H{x1} V{t}" fill="none" stroke="black"/>"#,
        y0 = t + ph,
        x1 = l + pw
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">WDMoE threshold θ (0: plain top-k, Mixtral)</text>"#,
        l + pw / 2.0,
        t + ph + 38.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(22 {}) rotate(-90)" text-anchor="middle">mean prompt latency [s]</text>"#,
        t + ph / 2.0
    );
    let _ = writeln!(
        s,
        r##"<text transform="translate({} {}) rotate(90)" text-anchor="middle" fill="#c0392b">router weight kept (fraction of top-k)</text>"##,
        l + pw + 36.0,
        t + ph / 2.0
    );
    // Baselines: horizontal dashed lines, labelled at the right.
    let grays = ["#7f8c8d", "#8e44ad", "#16a085", "#d35400"];
    for (i, x) in baselines.iter().enumerate() {
        let y = ys(x.mean_s);
        let c = grays[i % grays.len()];
        let _ = writeln!(
            s,
            r##"<line x1="{l}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" stroke="{c}" stroke-dasharray="6,4" stroke-width="1.5"/><text x="{tx}" y="{ty:.1}" fill="{c}" font-size="11">{} {:.2} s (−{:.1} %)</text>"##,
            esc(&x.name),
            x.mean_s,
            x.reduction_pct,
            x2 = l + pw,
            tx = l + pw + 56.0,
            ty = y + 4.0
        );
    }
    // Latency: line, points, interval bars.
    let pts: Vec<(f64, f64)> = rows
        .iter()
        .map(|x| (xs(x.parameter.unwrap_or(0.0)), ys(x.mean_s)))
        .collect();
    if pts.len() > 1 {
        let d: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#2e86c1" stroke-width="2"/>"##,
            d.join(" ")
        );
    }
    let few = rows.len() <= 8;
    let cap = if few { 6.0 } else { 2.5 };
    for (x, (cx, cy)) in rows.iter().zip(&pts) {
        let (lo, hi) = (ys(x.mean_s - x.mean_ci95_s), ys(x.mean_s + x.mean_ci95_s));
        let _ = writeln!(
            s,
            r##"<path d="M{cx:.1} {lo:.1} V{hi:.1} M{a:.1} {lo:.1} H{z:.1} M{a:.1} {hi:.1} H{z:.1}" stroke="#1b4f72" stroke-width="1.2" fill="none"/><circle cx="{cx:.1}" cy="{cy:.1}" r="{r}" fill="#2e86c1"/>"##,
            a = cx - cap,
            z = cx + cap,
            r = if few { 4.0 } else { 2.5 }
        );
        if few {
            let lab = if x.parameter.unwrap_or(0.0) == 0.0 {
                format!("{:.2} s", x.mean_s)
            } else if x.reduction_ci95_pct > 0.0 {
                format!("−{:.1} ± {:.1} %", x.reduction_pct, x.reduction_ci95_pct)
            } else {
                format!("−{:.1} %", x.reduction_pct)
            };
            let _ = writeln!(
                s,
                r#"<text x="{cx:.1}" y="{ly:.1}" text-anchor="middle" font-size="11">{lab}</text>"#,
                ly = hi - 6.0
            );
        }
    }
    // Kept weight.
    let kp: Vec<(f64, f64)> = rows
        .iter()
        .map(|x| (xs(x.parameter.unwrap_or(0.0)), t + ph - ph * x.kept_weight))
        .collect();
    if kp.len() > 1 {
        let d: Vec<String> = kp.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#c0392b" stroke-width="2"/>"##,
            d.join(" ")
        );
    }
    for (x, y) in &kp {
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="5" height="5" fill="#c0392b"/>"##,
            x - 2.5,
            y - 2.5
        );
    }
    // The paper's reductions, only beside the paper's setup: θ = 0.2 (mean
    // of 7 benchmarks) and θ = 0.3 (PIQA, 1.65× faster).
    let paper_base = rows
        .iter()
        .find(|x| x.parameter == Some(0.0))
        .map(|x| x.mean_s)
        .filter(|_| r.paper_comparable);
    if let Some(base) = paper_base {
        for (theta, pct) in [
            (0.2, PAPER_MEAN_REDUCTION_THETA_02_PCT),
            (0.3, 100.0 * (1.0 - 1.0 / 1.65)),
        ] {
            if !thetas.iter().any(|p| (p - theta).abs() < 1e-12) {
                continue;
            }
            let (cx, y) = (xs(theta), ys(base * (1.0 - pct / 100.0)));
            let _ = writeln!(
                s,
                r#"<path d="M{a:.1} {y:.1} L{cx:.1} {y1:.1} L{z:.1} {y:.1} Z" fill="black"/>"#,
                a = cx - 6.0,
                z = cx + 6.0,
                y1 = y + 9.0
            );
        }
    }
    // Legend.
    let ly = h - 30.0;
    let _ = writeln!(
        s,
        r##"<line x1="{l}" x2="{x2}" y1="{y}" y2="{y}" stroke="#2e86c1" stroke-width="2"/><circle cx="{cx}" cy="{y}" r="4" fill="#2e86c1"/><text x="{tx}" y="{ty}">WDMoE mean latency, bars: 95 % interval ({})</text>"##,
        if r.interval == "replications" {
            format!("{} replications", r.replications)
        } else {
            "over prompts".to_string()
        },
        x2 = l + 24.0,
        cx = l + 12.0,
        y = ly - 4.0,
        tx = l + 30.0,
        ty = ly
    );
    let _ = writeln!(
        s,
        r##"<line x1="{x1}" x2="{x2}" y1="{y}" y2="{y}" stroke="#c0392b" stroke-width="2"/><text x="{tx}" y="{ty}">kept router weight</text>"##,
        x1 = l + 420.0,
        x2 = l + 444.0,
        y = ly - 4.0,
        tx = l + 450.0,
        ty = ly
    );
    let ly2 = h - 12.0;
    let _ = writeln!(
        s,
        r##"<line x1="{l}" x2="{x2}" y1="{y}" y2="{y}" stroke="#7f8c8d" stroke-dasharray="6,4" stroke-width="1.5"/><text x="{tx}" y="{ty}">baselines on the same draws (labelled at the right)</text>"##,
        x2 = l + 24.0,
        y = ly2 - 4.0,
        tx = l + 30.0,
        ty = ly2
    );
    if paper_base.is_some() {
        let _ = writeln!(
            s,
            r#"<path d="M{a} {y0} L{c} {y1} L{z} {y0} Z" fill="black"/><text x="{tx}" y="{ty}">paper's reported latency (θ=0.2: mean of 7 benchmarks, θ=0.3: PIQA)</text>"#,
            a = l + 426.0,
            c = l + 432.0,
            z = l + 438.0,
            y0 = ly2 - 9.0,
            y1 = ly2,
            tx = l + 450.0,
            ty = ly2
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A tick label: up to 3 significant decimals, no trailing zeros.
fn fmt_tick(v: f64) -> String {
    let t = format!("{v:.3}");
    let t = t.trim_end_matches('0').trim_end_matches('.');
    if t.is_empty() || t == "-0" {
        "0".into()
    } else {
        t.to_string()
    }
}

/// The smallest of 1, 2, 2.5, 5 × 10^k that is ≥ `x` (> 0).
pub(crate) fn nice_ceil(x: f64) -> f64 {
    let e = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * e >= x {
            return m * e;
        }
    }
    10.0 * e
}
