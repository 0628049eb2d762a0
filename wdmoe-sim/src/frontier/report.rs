//! Outputs of the frontier study: text table, CSV, JSON and an SVG plot of
//! mean prompt latency against mean kept router weight.

use super::{CurvePoint, FrontierReport, PolicyPoint};
use crate::report::{esc, nice_ceil};
use std::fmt::Write as _;

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or_else(|| "–".to_string(), f)
}

fn lambda_label(p: f64) -> String {
    if p.is_infinite() {
        "∞".into()
    } else {
        format!("{:.3} ms", p * 1e3)
    }
}

/// Aligned columns: the first left-aligned, the rest right-aligned.
fn columns(head: &[&str], rows: &[Vec<String>], out: &mut String) {
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            let pad = " ".repeat(w - c.chars().count());
            if i == 0 {
                let _ = write!(s, "{c}{pad}");
            } else {
                let _ = write!(s, "  {pad}{c}");
            }
        }
        let _ = writeln!(out, "{}", s.trim_end());
    };
    line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// The text table: the policies against the references, then the curves.
pub fn table(r: &FrontierReport, title: Option<&str>) -> String {
    let mut s = String::new();
    if let Some(t) = title {
        let _ = writeln!(s, "{t}");
    }
    let _ = writeln!(
        s,
        "latency accounting: sequential (eq. 8) | {} replications × {} prompts × {} tokens × {} layers | {} experts, top-{} | seed {}",
        r.replications, r.prompts, r.tokens, r.layers, r.experts, r.k, r.seed
    );
    let _ = writeln!(s, "{}", r.router);
    let _ = writeln!(
        s,
        "kept weight: fraction of the plain top-k router weight kept; exact selector over every subset of ≤ {} of the {} heaviest reachable experts",
        r.k, r.k_prime
    );
    if let Some(a) = r.joint {
        let _ = writeln!(
            s,
            "joint bandwidth: {a} (wdmoe_core::bandwidth::min_max, cached per slot: {} solves)",
            r.min_max_solves
        );
    }
    let _ = writeln!(s);
    let joint = r.joint.is_some();
    let mut head = vec![
        "policy",
        "mean s",
        "kept",
        "experts/tok",
        "exact, same kept per token",
        "frontier, same mean kept",
        "bound s",
    ];
    if joint {
        head.extend([
            "+ min-max bw s",
            "exact + min-max, same kept",
            "joint frontier",
        ]);
    }
    let rows: Vec<Vec<String>> = r
        .policies
        .iter()
        .map(|p: &PolicyPoint| {
            let gap = |x: f64| format!("{x:.3} s ({:+.1} %)", -100.0 * (p.mean_s - x) / p.mean_s);
            let mut v = vec![
                p.name.clone(),
                format!("{:.3}", p.mean_s),
                format!("{:.3}", p.kept_weight),
                format!("{:.3}", p.experts_per_token),
                gap(p.matched_s),
                opt(p.frontier_s, gap),
                format!("{:.3}", p.frontier_bound_s),
            ];
            if joint {
                v.push(opt(p.joint_s, gap));
                v.push(opt(p.joint_matched_s, gap));
                v.push(opt(p.joint_frontier_s, gap));
            }
            v
        })
        .collect();
    columns(&head, &rows, &mut s);
    let _ = writeln!(
        s,
        "(s: mean prompt latency; % against the policy's own mean with the even split; the frontier at\n \
         equal mean kept weight is interpolated between λ points (achievable), the bound certifies it from below)\n"
    );
    let _ = writeln!(
        s,
        "frontier: min Σ (latency − λ·kept) per token, λ in units of {:.3} ms (mean nominal device latency)",
        r.lambda_scale_s * 1e3
    );
    let mut head = vec!["λ", "kept", "mean s", "experts/tok"];
    if joint {
        head.extend(["joint kept", "joint s", "joint experts/tok"]);
    }
    let rows: Vec<Vec<String>> = r
        .frontier_even
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = vec![
                lambda_label(c.parameter),
                format!("{:.4}", c.kept_weight),
                format!("{:.3}", c.mean_s),
                format!("{:.3}", c.experts_per_token),
            ];
            if let Some(j) = r.frontier_joint.get(i) {
                v.push(format!("{:.4}", j.kept_weight));
                v.push(format!("{:.3}", j.mean_s));
                v.push(format!("{:.3}", j.experts_per_token));
            }
            v
        })
        .collect();
    columns(&head, &rows, &mut s);
    let _ = writeln!(
        s,
        "\nprimal: fastest subset keeping ≥ ρ of the top-k weight on every token (infeasible: a top-k device down)"
    );
    let mut head = vec!["ρ", "kept", "mean s", "infeasible"];
    if joint {
        head.extend(["joint kept", "joint s"]);
    }
    let rows: Vec<Vec<String>> = r
        .primal_even
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = vec![
                format!("{:.2}", c.parameter),
                format!("{:.4}", c.kept_weight),
                format!("{:.3}", c.mean_s),
                c.infeasible.to_string(),
            ];
            if let Some(j) = r.primal_joint.get(i) {
                v.push(format!("{:.4}", j.kept_weight));
                v.push(format!("{:.3}", j.mean_s));
            }
            v
        })
        .collect();
    columns(&head, &rows, &mut s);
    let _ = writeln!(
        s,
        "\ndual: heaviest subset within the latency budget on every token (infeasible: the fastest expert is over it)"
    );
    let rows: Vec<Vec<String>> = r
        .dual_even
        .iter()
        .map(|c| {
            vec![
                format!("{:.3} ms", c.parameter * 1e3),
                format!("{:.4}", c.kept_weight),
                format!("{:.3}", c.mean_s),
                format!("{:.3}", c.experts_per_token),
                c.infeasible.to_string(),
            ]
        })
        .collect();
    columns(
        &["budget", "kept", "mean s", "experts/tok", "infeasible"],
        &rows,
        &mut s,
    );
    s
}

fn num(x: f64) -> String {
    if x.is_finite() {
        x.to_string()
    } else {
        "inf".into()
    }
}

fn onum(x: Option<f64>) -> String {
    x.map_or(String::new(), num)
}

/// CSV, one row per curve point and per policy (`series`: `frontier_even`,
/// `frontier_joint`, `primal_even`, `primal_joint`, `dual_even`, `policy`).
pub fn csv(r: &FrontierReport) -> String {
    let mut s = String::from(
        "series,name,parameter,mean_s,kept_weight,experts_per_token,infeasible,matched_s,frontier_s,frontier_bound_s,joint_s,joint_matched_s,joint_frontier_s,joint_frontier_bound_s,violations\n",
    );
    let curves: [(&str, &[CurvePoint]); 5] = [
        ("frontier_even", &r.frontier_even),
        ("frontier_joint", &r.frontier_joint),
        ("primal_even", &r.primal_even),
        ("primal_joint", &r.primal_joint),
        ("dual_even", &r.dual_even),
    ];
    for (name, c) in curves {
        for p in c {
            let _ = writeln!(
                s,
                "{name},,{},{},{},{},{},,,,,,,,",
                num(p.parameter),
                p.mean_s,
                p.kept_weight,
                p.experts_per_token,
                p.infeasible
            );
        }
    }
    for p in &r.policies {
        let _ = writeln!(
            s,
            "policy,\"{}\",{},{},{},{},0,{},{},{},{},{},{},{},{}",
            p.name,
            onum(p.parameter),
            p.mean_s,
            p.kept_weight,
            p.experts_per_token,
            p.matched_s,
            onum(p.frontier_s),
            p.frontier_bound_s,
            onum(p.joint_s),
            onum(p.joint_matched_s),
            onum(p.joint_frontier_s),
            onum(p.joint_frontier_bound_s),
            p.violations
        );
    }
    s
}

/// Pretty JSON of the whole report (`+∞` λ is `null`).
pub fn json(r: &FrontierReport) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Mean prompt latency against mean kept weight: the frontiers (even split,
/// joint bandwidth) as lines, the per-token ρ and β curves dashed / dotted,
/// the simulator's policies as markers (filled: even split; hollow: the same
/// selection with min–max bandwidth).
pub fn svg(r: &FrontierReport) -> String {
    let (w, h) = (760.0, 500.0);
    let (l, rt, t, b) = (80.0, 70.0, 60.0, 110.0);
    let (pw, ph) = (w - l - rt, h - t - b);
    let mut all_kept: Vec<f64> = Vec::new();
    let mut all_lat: Vec<f64> = Vec::new();
    for c in [
        &r.frontier_even,
        &r.frontier_joint,
        &r.primal_even,
        &r.dual_even,
    ] {
        all_kept.extend(c.iter().map(|p| p.kept_weight));
        all_lat.extend(c.iter().map(|p| p.mean_s));
    }
    for p in &r.policies {
        all_kept.push(p.kept_weight);
        all_lat.push(p.mean_s);
        all_lat.extend(p.joint_s);
    }
    let k_min = all_kept.iter().cloned().fold(1.0_f64, f64::min);
    let x_min = ((k_min * 10.0).floor() / 10.0).clamp(0.0, 0.9);
    let y_max = nice_ceil(all_lat.iter().cloned().fold(1e-12_f64, f64::max) * 1.05);
    let x = |k: f64| l + pw * (k - x_min) / (1.0 - x_min);
    let y = |v: f64| t + ph - ph * v / y_max;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">Latency–kept-weight frontier: WDMoE and baselines vs the exact selector</text>"#,
        w / 2.0
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="42" text-anchor="middle" fill="#555">sequential | {} replications × {} prompts × {} tokens × {} layers | {} experts, top-{} | seed {}</text>"##,
        w / 2.0,
        r.replications,
        r.prompts,
        r.tokens,
        r.layers,
        r.experts,
        r.k,
        r.seed
    );
    let _ = writeln!(
        s,
        r#"<path d="M{l} {t} V{y0} H{x1}" fill="none" stroke="black"/>"#,
        y0 = t + ph,
        x1 = l + pw
    );
    for i in 0..=5 {
        let v = y_max * i as f64 / 5.0;
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{l}" x2="{x2}" y1="{yy}" y2="{yy}" stroke="#ddd"/><text x="{tx}" y="{ty}" text-anchor="end">{v:.2}</text>"##,
            x2 = l + pw,
            tx = l - 6.0,
            ty = yy + 4.0
        );
    }
    let steps = ((1.0 - x_min) * 10.0).round() as usize;
    for i in 0..=steps {
        let k = x_min + i as f64 / 10.0;
        let _ = writeln!(
            s,
            r##"<line x1="{xx}" x2="{xx}" y1="{t}" y2="{y0}" stroke="#eee"/><text x="{xx}" y="{ty}" text-anchor="middle">{k:.1}</text>"##,
            xx = x(k),
            y0 = t + ph,
            ty = t + ph + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate(22 {}) rotate(-90)" text-anchor="middle">mean prompt latency [s]</text>"#,
        t + ph / 2.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">mean router weight kept (fraction of plain top-k)</text>"#,
        l + pw / 2.0,
        t + ph + 34.0
    );
    let line = |c: &[CurvePoint], color: &str, dash: &str, s: &mut String| {
        if c.is_empty() {
            return;
        }
        let pts: Vec<String> = c
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.kept_weight), y(p.mean_s)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
            pts.join(" ")
        );
    };
    line(&r.frontier_even, "#2e86c1", "none", &mut s);
    line(&r.frontier_joint, "#27ae60", "none", &mut s);
    line(&r.primal_even, "#2e86c1", "6,4", &mut s);
    line(&r.dual_even, "#2e86c1", "2,3", &mut s);
    for p in &r.policies {
        let (cx, cy) = (x(p.kept_weight), y(p.mean_s));
        let (color, shape) = match p.family.as_str() {
            "wdmoe" => ("#c0392b", "circle"),
            "weight_only" => ("#e67e22", "square"),
            _ => ("#8e44ad", "triangle"),
        };
        let mark = |cx: f64, cy: f64, fill: &str| match shape {
            "circle" => format!(
                r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="5" fill="{fill}" stroke="{color}" stroke-width="2"/>"#
            ),
            "square" => format!(
                r#"<rect x="{:.1}" y="{:.1}" width="9" height="9" fill="{fill}" stroke="{color}" stroke-width="2"/>"#,
                cx - 4.5,
                cy - 4.5
            ),
            _ => format!(
                r#"<path d="M{:.1} {:.1} L{:.1} {:.1} L{:.1} {:.1} Z" fill="{fill}" stroke="{color}" stroke-width="2"/>"#,
                cx,
                cy - 6.0,
                cx - 5.5,
                cy + 4.0,
                cx + 5.5,
                cy + 4.0
            ),
        };
        let _ = writeln!(s, "{}", mark(cx, cy, color));
        if let Some(j) = p.joint_s {
            let _ = writeln!(s, "{}", mark(cx, y(j), "white"));
        }
        // WDMoE labels left of the marker, the others right of it.
        let (lx, anchor) = if p.family == "wdmoe" {
            (cx - 8.0, "end")
        } else {
            (cx + 7.0, "start")
        };
        let label = match (p.family.as_str(), p.parameter) {
            ("wdmoe", Some(th)) => format!("θ={th}"),
            ("weight_only", Some(b)) => format!("β={b}"),
            _ => "ch".to_string(),
        };
        let _ = writeln!(
            s,
            r##"<text x="{lx:.1}" y="{:.1}" text-anchor="{anchor}" fill="{color}" font-size="10">{}</text>"##,
            cy - 6.0,
            esc(&label)
        );
    }
    let ly = h - 40.0;
    let legend: [(&str, &str, &str); 4] = [
        ("#2e86c1", "none", "frontier (exact, even split)"),
        ("#27ae60", "none", "frontier (exact + min-max bandwidth)"),
        ("#2e86c1", "6,4", "exact, per-token ρ"),
        ("#2e86c1", "2,3", "exact, per-token latency budget"),
    ];
    for (i, (color, dash, text)) in legend.iter().enumerate() {
        let lx = l + (i % 2) as f64 * 330.0;
        let yy = ly + (i / 2) as f64 * 16.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" x2="{x2}" y1="{y1}" y2="{y1}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{tx}" y="{yy}">{text}</text>"#,
            x2 = lx + 24.0,
            y1 = yy - 4.0,
            tx = lx + 30.0
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{l}" y="{}" fill="#555">● WDMoE θ  ■ weight-only β  ▲ channel-only   filled: even split; hollow: same selection, min-max bandwidth</text>"##,
        ly + 32.0
    );
    s.push_str("</svg>\n");
    s
}
