//! `wdmoe sensitivity`: how WDMoE's reduction depends on the cell radius and
//! on how different the devices' compute is, side by side, as a table, CSV
//! or JSON.

use crate::scenario::Scenario;
use crate::sim::{self, RunReport, SimError, Simulation};
use serde::Serialize;
use std::fmt::Write as _;

/// One variant of the base scenario and what its run gave.
#[derive(Debug, Clone, Serialize)]
pub struct SensitivityRow {
    /// `radius_m` or `compute_spread`.
    pub study: String,
    /// The radius \[m\] or the spread exponent α.
    pub value: f64,
    /// Fastest device's nominal latency per token and layer \[s\] (eq. 6,
    /// no fading, even bandwidth split).
    pub device_latency_min_s: f64,
    /// Slowest device's nominal latency \[s\].
    pub device_latency_max_s: f64,
    /// The run (policies: the scenario's θ list only).
    pub report: RunReport,
}

/// A study: the rows of both variations.
#[derive(Debug, Clone, Serialize)]
pub struct Sensitivity {
    /// Rows in the order radii, then spreads.
    pub rows: Vec<SensitivityRow>,
}

/// Runs the base scenario at each cell radius \[m\] and each compute
/// spread α (see [`sim::scale_cell`], [`sim::scale_compute_spread`]), with
/// the scenario's θ list and no baselines. `run` runs one simulation (so the
/// caller chooses threads and progress).
pub fn study(
    base: &Scenario,
    radii_m: &[f64],
    spreads: &[f64],
    run: &mut dyn FnMut(&str, &Simulation) -> Result<RunReport, SimError>,
) -> Result<Sensitivity, SimError> {
    let mut variants = Vec::new();
    for &r in radii_m {
        variants.push(("radius_m", r, sim::scale_cell(base, r)?));
    }
    for &a in spreads {
        variants.push(("compute_spread", a, sim::scale_compute_spread(base, a)?));
    }
    let mut rows = Vec::new();
    for (study, value, mut s) in variants {
        s.policies.weight_only_betas.clear();
        s.policies.channel_only = false;
        let sim = Simulation::new(s)?;
        let label = match study {
            "radius_m" => format!("{value} m"),
            _ => format!("α = {value}"),
        };
        let report = run(&label, &sim)?;
        let ch = sim.channel();
        let lat: Vec<f64> = (0..sim.scenario().n_experts())
            .map(|q| ch.nominal_latency_s(q))
            .collect::<Result<_, _>>()?;
        rows.push(SensitivityRow {
            study: study.to_string(),
            value,
            device_latency_min_s: lat.iter().cloned().fold(f64::INFINITY, f64::min),
            device_latency_max_s: lat.iter().cloned().fold(0.0, f64::max),
            report,
        });
    }
    Ok(Sensitivity { rows })
}

fn reduction_cell(x: &crate::sim::PolicyRow) -> String {
    if x.reduction_ci95_pct > 0.0 {
        format!("{:.1} ± {:.1} %", x.reduction_pct, x.reduction_ci95_pct)
    } else {
        format!("{:.1} %", x.reduction_pct)
    }
}

/// The two text tables.
pub fn table(s: &Sensitivity) -> String {
    let mut out = String::new();
    for (study, what) in [
        ("radius_m", "cell radius (farthest device)"),
        (
            "compute_spread",
            "compute spread α: device speed ← g·(speed/g)^α",
        ),
    ] {
        let rows: Vec<&SensitivityRow> = s.rows.iter().filter(|r| r.study == study).collect();
        let Some(first) = rows.first() else { continue };
        let r0 = &first.report;
        let _ = writeln!(
            out,
            "WDMoE latency reduction vs {what} | {} | {} | seed {}",
            r0.accounting,
            crate::report::workload(r0),
            r0.seed
        );
        let thetas: Vec<String> = r0
            .rows
            .iter()
            .skip(1)
            .map(|x| format!("{:>14}", format!("θ={}", x.parameter.unwrap_or(0.0))))
            .collect();
        let _ = writeln!(
            out,
            "{:>10}  {:>20}  {:>12}  {}",
            "",
            "device latency ms",
            "top-k mean s",
            thetas.join("  ")
        );
        for r in rows {
            let red: Vec<String> = r
                .report
                .rows
                .iter()
                .skip(1)
                .map(|x| format!("{:>14}", reduction_cell(x)))
                .collect();
            let label = match study {
                "radius_m" => format!("{} m", r.value),
                _ => format!("α = {}", r.value),
            };
            let _ = writeln!(
                out,
                "{:>10}  {:>20}  {:>12.3}  {}",
                label,
                format!(
                    "{:.2} … {:.2}",
                    r.device_latency_min_s * 1e3,
                    r.device_latency_max_s * 1e3
                ),
                r.report.rows[0].mean_s,
                red.join("  ")
            );
        }
        out.push('\n');
    }
    out.push_str("device latency: eq. (6) per token and layer, no fading, fastest … slowest device; reductions of the mean prompt latency vs plain top-k (θ = 0), ± the 95 % interval\n");
    out
}

/// CSV: one line per variant and θ.
pub fn csv(s: &Sensitivity) -> String {
    let mut out = String::from(
        "study,value,device_latency_min_s,device_latency_max_s,policy,theta,mean_s,reduction_pct,reduction_ci95_pct,replications,prompts,seed\n",
    );
    for r in &s.rows {
        for x in &r.report.rows {
            let _ = writeln!(
                out,
                "{},{},{},{},\"{}\",{},{},{},{},{},{},{}",
                r.study,
                r.value,
                r.device_latency_min_s,
                r.device_latency_max_s,
                x.name,
                x.parameter.unwrap_or(0.0),
                x.mean_s,
                x.reduction_pct,
                x.reduction_ci95_pct,
                r.report.replications,
                r.report.prompts,
                r.report.seed
            );
        }
    }
    out
}

/// Pretty JSON of the whole study (every run's report included).
pub fn json(s: &Sensitivity) -> String {
    serde_json::to_string_pretty(s).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
