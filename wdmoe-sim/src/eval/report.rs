//! Reports of `wdmoe eval`: a table, CSV, JSON (`{"rows": […], …}`) and an
//! SVG of the accuracy–latency trade-off (the paper's Table I and Fig. 3 in
//! shape: the metric against the simulated latency per token, one point per θ).

use std::fmt::Write;

use serde::Serialize;

use super::choice::ChoiceRow;
use super::perplexity::PerplexityRow;
use super::RoutingRow;

/// A row of an evaluation report.
pub trait EvalRow: Serialize {
    /// θ of the row.
    fn theta(&self) -> f64;
    /// Routing columns.
    fn routing(&self) -> &RoutingRow;
    /// The headline metric: name, value, and a 95 % interval when there is one.
    fn metric(&self) -> (&'static str, f64, Option<(f64, f64)>);
    /// Metric columns for the table (header, cell).
    fn table_cells(&self) -> Vec<(&'static str, String)>;
    /// Metric columns for CSV (header, value).
    fn csv_cells(&self) -> Vec<(&'static str, String)>;
}

impl EvalRow for PerplexityRow {
    fn theta(&self) -> f64 {
        self.theta
    }
    fn routing(&self) -> &RoutingRow {
        &self.routing
    }
    fn metric(&self) -> (&'static str, f64, Option<(f64, f64)>) {
        ("perplexity", self.perplexity, None)
    }
    fn table_cells(&self) -> Vec<(&'static str, String)> {
        vec![
            ("perplexity", format!("{:.3}", self.perplexity)),
            ("tokens scored", self.tokens_scored.to_string()),
        ]
    }
    fn csv_cells(&self) -> Vec<(&'static str, String)> {
        vec![
            ("perplexity", self.perplexity.to_string()),
            ("nll_per_token", self.nll_per_token.to_string()),
            ("tokens_scored", self.tokens_scored.to_string()),
            ("windows", self.windows.to_string()),
        ]
    }
}

impl EvalRow for ChoiceRow {
    fn theta(&self) -> f64 {
        self.theta
    }
    fn routing(&self) -> &RoutingRow {
        &self.routing
    }
    fn metric(&self) -> (&'static str, f64, Option<(f64, f64)>) {
        (
            "accuracy",
            self.acc,
            Some((self.acc_ci95_lo, self.acc_ci95_hi)),
        )
    }
    fn table_cells(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "acc [95 % CI]",
                format!(
                    "{:.3} [{:.2}, {:.2}]",
                    self.acc, self.acc_ci95_lo, self.acc_ci95_hi
                ),
            ),
            (
                "acc_norm [95 % CI]",
                format!(
                    "{:.3} [{:.2}, {:.2}]",
                    self.acc_norm, self.acc_norm_ci95_lo, self.acc_norm_ci95_hi
                ),
            ),
            ("items", self.items.to_string()),
        ]
    }
    fn csv_cells(&self) -> Vec<(&'static str, String)> {
        vec![
            ("items", self.items.to_string()),
            ("acc", self.acc.to_string()),
            ("acc_ci95_lo", self.acc_ci95_lo.to_string()),
            ("acc_ci95_hi", self.acc_ci95_hi.to_string()),
            ("acc_norm", self.acc_norm.to_string()),
            ("acc_norm_ci95_lo", self.acc_norm_ci95_lo.to_string()),
            ("acc_norm_ci95_hi", self.acc_norm_ci95_hi.to_string()),
        ]
    }
}

/// An evaluation: its settings and one row per θ.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport<R> {
    /// `perplexity` or `choice`.
    pub task: String,
    /// Checkpoint directory.
    pub model: String,
    /// The data file.
    pub data: String,
    /// Experts taken by router weight.
    pub k: usize,
    /// Most drops per token and layer.
    pub max_drops: usize,
    /// Where the latencies came from.
    pub latency_source: String,
    /// Run seed.
    pub seed: u64,
    /// One row per θ.
    pub rows: Vec<R>,
}

fn routing_cells(r: &RoutingRow) -> [String; 6] {
    [
        format!("{:.3}", r.experts_per_token),
        format!("{:.3}", r.kept_weight),
        format!("{:.3}", r.wdmoe_latency_s_per_token * 1e3),
        format!("{:.3}", r.top_k_latency_s_per_token * 1e3),
        format!("{:.1}", r.latency_reduction_pct),
        format!("{:.1}", r.compute_s),
    ]
}

/// The report as an aligned text table.
pub fn table<R: EvalRow>(r: &EvalReport<R>) -> String {
    let mut head: Vec<String> = vec!["θ".into()];
    if let Some(first) = r.rows.first() {
        head.extend(first.table_cells().into_iter().map(|(h, _)| h.to_string()));
    }
    head.extend(
        [
            "experts/token",
            "kept weight",
            "WDMoE ms/token",
            "top-k ms/token",
            "reduction %",
            "CPU s",
        ]
        .map(String::from),
    );
    let mut rows: Vec<Vec<String>> = vec![head];
    for x in &r.rows {
        let mut c = vec![format!("{}", x.theta())];
        c.extend(x.table_cells().into_iter().map(|(_, v)| v));
        c.extend(routing_cells(x.routing()));
        rows.push(c);
    }
    let n = rows[0].len();
    let width: Vec<usize> = (0..n)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut s = format!(
        "wdmoe eval {}: {} on {} | k = {}, max drops {} | latencies: {}\n",
        r.task, r.model, r.data, r.k, r.max_drops, r.latency_source
    );
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&width)
            .map(|(c, &w)| format!("{:>w$}", c, w = w))
            .collect();
        let _ = writeln!(s, "{}", cells.join("  "));
    }
    s.push_str(
        "latency: simulated expert round trips per token, summed over the layers (eq. 7-8); reduction vs plain top-k on the same router logits\n",
    );
    s
}

/// The rows as CSV.
pub fn csv<R: EvalRow>(r: &EvalReport<R>) -> String {
    let mut s = String::new();
    let mut head = vec!["theta".to_string()];
    if let Some(first) = r.rows.first() {
        head.extend(first.csv_cells().into_iter().map(|(h, _)| h.to_string()));
    }
    head.extend(
        [
            "tokens_processed",
            "experts_per_token",
            "kept_weight",
            "drop_rate",
            "wdmoe_latency_s_per_token",
            "top_k_latency_s_per_token",
            "latency_reduction_pct",
            "compute_s",
        ]
        .map(String::from),
    );
    let _ = writeln!(s, "{}", head.join(","));
    for x in &r.rows {
        let g = x.routing();
        let mut c = vec![x.theta().to_string()];
        c.extend(x.csv_cells().into_iter().map(|(_, v)| v));
        c.extend([
            g.tokens_processed.to_string(),
            g.experts_per_token.to_string(),
            g.kept_weight.to_string(),
            g.drop_rate.to_string(),
            g.wdmoe_latency_s_per_token.to_string(),
            g.top_k_latency_s_per_token.to_string(),
            g.latency_reduction_pct.to_string(),
            g.compute_s.to_string(),
        ]);
        let _ = writeln!(s, "{}", c.join(","));
    }
    s
}

/// The report as one JSON object with its `rows`.
pub fn json<R: EvalRow>(r: &EvalReport<R>) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// The last component of a path (for the plot's subtitle).
fn base(p: &str) -> String {
    std::path::Path::new(p)
        .file_name()
        .map_or(p.to_string(), |f| f.to_string_lossy().into_owned())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The accuracy–latency trade-off: the metric (with its 95 % interval when
/// it has one) against the simulated latency per token, one point per θ,
/// the plain top-k latency as a dashed line.
pub fn svg<R: EvalRow>(r: &EvalReport<R>) -> String {
    let (w, h) = (720.0, 440.0);
    let (l, rt, t, b) = (80.0, 40.0, 60.0, 70.0);
    let (pw, ph) = (w - l - rt, h - t - b);
    let name = r.rows.first().map_or("metric", |x| x.metric().0);
    // (latency ms, metric, its interval, θ) per row.
    type Point = (f64, f64, Option<(f64, f64)>, f64);
    let pts: Vec<Point> = r
        .rows
        .iter()
        .map(|x| {
            let (_, v, ci) = x.metric();
            (
                x.routing().wdmoe_latency_s_per_token * 1e3,
                v,
                ci,
                x.theta(),
            )
        })
        .collect();
    let top_k = r
        .rows
        .iter()
        .map(|x| x.routing().top_k_latency_s_per_token * 1e3)
        .fold(0.0_f64, f64::max);
    let x_max = pts.iter().map(|p| p.0).fold(top_k, f64::max).max(1e-12) * 1.1;
    let (mut y_lo, mut y_hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in &pts {
        let (a, c) = p.2.unwrap_or((p.1, p.1));
        y_lo = y_lo.min(a.min(p.1));
        y_hi = y_hi.max(c.max(p.1));
    }
    if !y_lo.is_finite() || !y_hi.is_finite() {
        (y_lo, y_hi) = (0.0, 1.0);
    }
    let pad = ((y_hi - y_lo) * 0.15).max(y_hi.abs() * 0.01).max(1e-9);
    let (y_lo, y_hi) = ((y_lo - pad).max(0.0), y_hi + pad);
    let px = |x: f64| l + pw * x / x_max;
    let py = |y: f64| t + ph - ph * (y - y_lo) / (y_hi - y_lo);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">WDMoE: {name} vs simulated latency per token</text>"#,
        w / 2.0
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="42" text-anchor="middle" fill="#555" font-size="11">{} | {} | k = {} | {}</text>"##,
        w / 2.0,
        esc(&base(&r.model)),
        esc(&base(&r.data)),
        r.k,
        esc(&r.latency_source)
    );
    let _ = writeln!(
        s,
        r#"<path d="M{l} {t} V{y0} H{x1}" fill="none" stroke="black"/>"#,
        y0 = t + ph,
        x1 = l + pw
    );
    for i in 0..=5 {
        let f = i as f64 / 5.0;
        let (xv, yv) = (x_max * f, y_lo + (y_hi - y_lo) * f);
        let _ = writeln!(
            s,
            r##"<line x1="{l}" x2="{x2}" y1="{y}" y2="{y}" stroke="#eee"/><text x="{tx}" y="{ty}" text-anchor="end">{yv:.3}</text>"##,
            x2 = l + pw,
            y = py(yv),
            tx = l - 6.0,
            ty = py(yv) + 4.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{x}" y="{y}" text-anchor="middle">{xv:.2}</text>"#,
            x = px(xv),
            y = t + ph + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">simulated expert latency per token [ms] (all layers, eq. 7-8)</text>"#,
        l + pw / 2.0,
        h - 24.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(22 {}) rotate(-90)" text-anchor="middle">{name}</text>"#,
        t + ph / 2.0
    );
    if top_k > 0.0 {
        let _ = writeln!(
            s,
            r##"<line x1="{x}" x2="{x}" y1="{t}" y2="{y}" stroke="#888" stroke-dasharray="5 4"/><text x="{tx}" y="{ty}" fill="#555" text-anchor="end">plain top-{k}</text>"##,
            x = px(top_k),
            y = t + ph,
            tx = px(top_k) - 4.0,
            ty = t + 12.0,
            k = r.k
        );
    }
    let path: Vec<String> = pts
        .iter()
        .map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#2c7fb8" stroke-width="2"/>"##,
        path.join(" ")
    );
    for (x, y, ci, th) in &pts {
        if let Some((a, c)) = ci {
            let _ = writeln!(
                s,
                r##"<line x1="{x}" x2="{x}" y1="{y1}" y2="{y2}" stroke="#2c7fb8"/>"##,
                x = px(*x),
                y1 = py(*a),
                y2 = py(*c)
            );
        }
        let _ = writeln!(
            s,
            r##"<circle cx="{cx}" cy="{cy}" r="4" fill="#2c7fb8"/><text x="{tx}" y="{ty}">θ={th}</text>"##,
            cx = px(*x),
            cy = py(*y),
            tx = px(*x) + 6.0,
            ty = py(*y) - 6.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(theta: f64, ppl: f64, lat_s: f64) -> PerplexityRow {
        PerplexityRow {
            theta,
            perplexity: ppl,
            nll_per_token: ppl.ln(),
            tokens_scored: 10,
            windows: 1,
            routing: RoutingRow {
                tokens_processed: 11,
                experts_per_token: 2.0 - theta,
                kept_weight: 1.0 - theta / 2.0,
                drop_rate: theta,
                wdmoe_latency_s_per_token: lat_s,
                top_k_latency_s_per_token: 0.02,
                latency_reduction_pct: 100.0 * (1.0 - lat_s / 0.02),
                compute_s: 0.5,
            },
        }
    }

    fn report(rows: Vec<PerplexityRow>) -> EvalReport<PerplexityRow> {
        EvalReport {
            task: "perplexity".into(),
            model: "dir/m".into(),
            data: "a<b>.txt".into(),
            k: 2,
            max_drops: 1,
            latency_source: "fixed".into(),
            seed: 1,
            rows,
        }
    }

    #[test]
    fn table_csv_json_svg() {
        let r = report(vec![row(0.0, 10.0, 0.02), row(0.2, 11.0, 0.015)]);
        let t = table(&r);
        assert!(t.contains("11.000") && t.contains("25.0"), "{t}");
        let c = csv(&r);
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].split(',').count(), lines[0].split(',').count());
        assert!(lines[2].starts_with("0.2,11,"), "{c}");
        let j: serde_json::Value = serde_json::from_str(&json(&r)).unwrap();
        assert_eq!(j["rows"][1]["latency_reduction_pct"], 25.0);
        let s = svg(&r);
        assert!(s.contains("θ=0.2") && s.contains("a&lt;b&gt;.txt") && s.ends_with("</svg>\n"));
        // An empty report still renders (no NaN coordinates).
        let e = svg(&report(Vec::new()));
        assert!(!e.contains("NaN") && e.ends_with("</svg>\n"));
        assert_eq!(csv(&report(Vec::new())).lines().count(), 1);
    }
}
